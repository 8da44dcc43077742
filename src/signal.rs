//! The signals that start the shutdown (`startup::Application::run_until_stopped`
//! says in which order it goes): SIGINT and SIGTERM alike. SIGHUP reloads
//! (`reload`).

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(message = "cannot listen for SIGTERM", %error);
            let _ = interrupt.await;
        }
    }
}
