//! Logging: a `tracing` subscriber on standard error.
//!
//! The filter is `RUST_LOG` when it is set, otherwise the configuration's `log.level`. Lines
//! are human-readable by default; `log.format = "json"` writes one JSON object per line for
//! journald and log shippers. Nothing here ever sees a secret value: secrets are
//! [`SecretString`](crate::config::SecretString)s, redacted in `Debug`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFilter, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// The filter in force: `rust_log` (the value of `RUST_LOG`) if given and valid, else the
/// configured level. An invalid `RUST_LOG` (a typo such as `verbose`, which `tracing` alone
/// would take for a target and so log nothing) never silences the daemon: the configured
/// level is used, and the second value is the warning to print.
pub fn filter(config: &LogConfig, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let configured = config.level.as_str();
    let (directives, warning) = match rust_log.map(str::parse::<LogFilter>) {
        None => (configured.to_owned(), None),
        Some(Ok(filter)) => (filter.as_str().to_owned(), None),
        Some(Err(reason)) => (
            configured.to_owned(),
            Some(format!(
                "RUST_LOG is ignored: {reason}; logging at log.level = \"{configured}\" instead"
            )),
        ),
    };
    // Both were checked as log filters; the fallback cannot fail, but is not a panic either.
    let filter = EnvFilter::builder()
        .parse(&directives)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    (filter, warning)
}

/// Installs the process-wide subscriber; a warning about `RUST_LOG` goes to standard error
/// (before the logger exists) and into the log.
pub fn init(config: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (filter, warning) = filter(config, rust_log.as_deref());
    if let Some(warning) = &warning {
        eprintln!("warning: {warning}");
    }
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
    installed.map_err(|_| LoggingError::AlreadyInstalled)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_the_configured_level_unless_it_is_invalid() {
        let config = LogConfig {
            level: "warn".parse().unwrap(),
            format: LogFormat::Text,
        };
        let (f, warning) = filter(&config, None);
        assert_eq!((f.to_string(), warning), ("warn".into(), None));
        let (f, warning) = filter(&config, Some("sip_realtime_bridge=trace"));
        assert_eq!(
            (f.to_string(), warning),
            ("sip_realtime_bridge=trace".into(), None)
        );
        // A typo falls back to the configured level, with a warning that names both.
        for typo in ["verbose", "x=notalevel"] {
            let (f, warning) = filter(&config, Some(typo));
            assert_eq!(f.to_string(), "warn", "{typo}");
            let warning = warning.unwrap();
            assert!(warning.starts_with("RUST_LOG is ignored: "), "{warning}");
            assert!(warning.contains("log.level = \"warn\""), "{warning}");
        }
    }
}
