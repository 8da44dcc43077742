//! `ticket-ingest check-config` and the `TICKET_INGEST_*` environment layer,
//! through the real binary.

use std::process::{Command, Output};

/// Runs `check-config` with no config file and exactly `env` as the
/// `TICKET_INGEST_*` variables (those of the caller's shell are removed).
fn check_config(env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ticket-ingest"));
    command.args(["--config", "/dev/null", "check-config"]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().to_ascii_uppercase().starts_with("TICKET_INGEST_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run ticket-ingest check-config")
}

#[test]
fn a_misspelled_variable_is_refused_with_exit_code_2_naming_it_and_the_key_meant() {
    let output = check_config(&[("TICKET_INGEST_BATCH_MAX_TICKTS", "5")]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TICKET_INGEST_BATCH_MAX_TICKTS"), "{stderr}");
    assert!(stderr.contains("did you mean TICKET_INGEST_BATCH_MAX_TICKETS"), "{stderr}");
    assert!(stderr.contains("signing_secrets"), "the valid keys are listed: {stderr}");
}

#[test]
fn the_scripts_port_variable_is_not_mistaken_for_a_key() {
    let output = check_config(&[("TICKET_INGEST_PG_PORT", "5500")]);

    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_single_signing_secret_from_the_environment_is_accepted() {
    let output = check_config(&[("TICKET_INGEST_SIGNING_SECRETS", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(r#"signing_secrets = ["***"]"#), "{stdout}");
}

#[test]
fn a_comma_separated_list_of_signing_secrets_is_accepted() {
    let secrets = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_b2xkLXNlY3JldC1rZXktZm9yLXRlc3Rz";
    let output = check_config(&[("TICKET_INGEST_SIGNING_SECRETS", secrets)]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(r#"signing_secrets = ["***", "***"]"#), "{stdout}");
}
