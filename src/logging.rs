//! Logging: a `tracing` subscriber on standard error.
//!
//! The filter is `RUST_LOG` when it is set, otherwise the configuration's `log.level`. Lines
//! are human-readable by default; `log.format = "json"` writes one JSON object per line for
//! journald and log shippers. Nothing here ever sees a secret value: secrets are
//! [`SecretString`](crate::config::SecretString)s, redacted in `Debug`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("RUST_LOG is not a valid log filter: {0}")]
    BadRustLog(String),
    #[error("log.level is not a valid log filter: {0}")]
    BadLevel(String),
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// The filter in force: `rust_log` (the value of `RUST_LOG`) if given, else the configured level.
pub fn filter(config: &LogConfig, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    match rust_log {
        Some(directives) => EnvFilter::builder()
            .parse(directives)
            .map_err(|e| LoggingError::BadRustLog(e.to_string())),
        None => EnvFilter::builder()
            .parse(config.level.as_str())
            .map_err(|e| LoggingError::BadLevel(e.to_string())),
    }
}

/// Installs the process-wide subscriber.
pub fn init(config: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = filter(config, rust_log.as_deref())?;
    // Colour only for a person at a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_the_configured_level() {
        let config = LogConfig {
            level: "warn".parse().unwrap(),
            format: LogFormat::Text,
        };
        assert_eq!(filter(&config, None).unwrap().to_string(), "warn");
        assert_eq!(
            filter(&config, Some("sip_realtime_bridge=trace"))
                .unwrap()
                .to_string(),
            "sip_realtime_bridge=trace"
        );
        assert!(matches!(
            filter(&config, Some("x=notalevel")),
            Err(LoggingError::BadRustLog(_))
        ));
    }
}
