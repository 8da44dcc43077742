//! Logging through `tracing`: human-readable or JSON lines on stderr,
//! coloured only when stderr is a terminal (a log file or a collector gets
//! plain text).

use std::io::IsTerminal;

use tracing_subscriber::reload::Handle;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Changes the log filter of the running process (SIGHUP reload).
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over
/// `log_level`. A second call (tests) leaves the first subscriber in place
/// and returns `None`.
pub fn init(format: LogFormat, log_level: &str) -> Option<LogLevelSetter> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().ok().map(|()| setter(handle))
        }
        LogFormat::Pretty => {
            let builder = builder.compact().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().ok().map(|()| setter(handle))
        }
    }
}

fn setter<S: 'static>(handle: Handle<EnvFilter, S>) -> LogLevelSetter {
    Box::new(move |level| {
        let filter = EnvFilter::try_new(level).map_err(|error| error.to_string())?;
        handle.reload(filter).map_err(|error| error.to_string())
    })
}
