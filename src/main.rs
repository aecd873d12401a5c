//! The `sip-realtime-bridge` binary: command line, logging, runtime, signals. Everything else is
//! in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sip_realtime_bridge::config::{self, Config, ConfigError};
use sip_realtime_bridge::logging;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (run: stopped by SIGTERM or SIGINT; check-config: the configuration is valid)
  1  runtime failure (the daemon could not start or stopped on an error)
  2  command-line usage error
  3  invalid configuration, or a secret it names cannot be read

Environment:
  SRB_<KEY>__<SUBKEY>=VALUE  overrides a configuration key (SRB_LIMITS__MAX_CALLS=50)
  RUST_LOG                   log filter, overriding log.level (sip_realtime_bridge=debug)";

#[derive(Parser)]
#[command(name = "sip-realtime-bridge", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Configuration file (TOML); see conf/bridge.toml for every key.
    #[arg(long, short, global = true, value_name = "FILE", default_value = config::DEFAULT_PATH)]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default command).
    Run,
    /// Validate the configuration and print a one-line summary; exit 3 with the key and the
    /// reason when it is invalid. Secrets that cannot be read are reported as warnings.
    CheckConfig,
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
    }
}

fn report_invalid(path: &Path, error: &ConfigError) {
    match error {
        ConfigError::Read { .. } => eprintln!("error: {error}"),
        ConfigError::Invalid(problems) => {
            eprintln!("error: {}: invalid configuration", path.display());
            for p in problems {
                eprintln!("  {p}");
            }
        }
    }
}

fn load_and_log(path: &Path) -> Result<Config, ExitCode> {
    let config = Config::load(path).map_err(|e| {
        report_invalid(path, &e);
        ExitCode::from(EXIT_CONFIG)
    })?;
    logging::init(&config.log).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    tracing::debug!(?config, "effective configuration");
    Ok(config)
}

fn check_config(path: &Path) -> ExitCode {
    let config = match load_and_log(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for problem in config.check_secrets() {
        eprintln!("warning: {problem} (the daemon will not start without it)");
    }
    println!("{}: OK: {}", path.display(), config.summary());
    ExitCode::SUCCESS
}

fn run(path: &Path) -> ExitCode {
    let config = match load_and_log(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secret_problems = config.check_secrets();
    if !secret_problems.is_empty() {
        for problem in &secret_problems {
            tracing::error!(%problem, "cannot read a secret");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    for (name, upstream) in config.routed_upstreams() {
        if let Some(Ok(key)) = upstream.api_key().map(config::SecretSource::load) {
            tracing::trace!(upstream = %name, ?key, "API key readable");
        }
    }
    tracing::info!(
        config = %path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "starting: {}",
        config.summary()
    );

    sip_realtime_bridge::io::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("srb-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "stopped on an error");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Waits for a stop signal. The SIP, RTP and realtime shells attach here as they land.
async fn serve() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::warn!(
        "this build validates its configuration but does not handle calls yet (SIP, RTP and the \
         realtime client are still to land); waiting for SIGTERM"
    );
    tracing::info!("ready");
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); return Ok(()); }
            _ = hup.recv() => tracing::warn!("SIGHUP: configuration reload is not supported yet; ignored"),
        }
    }
}
