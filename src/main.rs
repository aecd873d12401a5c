//! The `sip-realtime-bridge` binary: command line, logging, runtime, signals. Everything else is
//! in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sip_realtime_bridge::config::{self, Config, ConfigError, LogConfig, UpstreamConfig};
use sip_realtime_bridge::fake_realtime::{self, FakeOptions};
use sip_realtime_bridge::io::probe::{ProbeError, probe};
use sip_realtime_bridge::realtime::{self, ConnectTarget, Dialect};
use sip_realtime_bridge::{io, logging};

const EXIT_CODES: &str = "\
Exit codes:
  0  success (run: stopped by SIGTERM or SIGINT; check-config: the configuration is valid)
  1  runtime failure (the daemon could not start or stopped on an error)
  2  command-line usage error
  3  invalid configuration, or a secret it names cannot be read (probe too)
  4  probe: the upstream refused the connection or the session settings

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
    /// Connect to a profile's upstream as a call would, send its session.update and one second
    /// of silence, and report the time to session.updated or the exact error (exit 4).
    Probe {
        /// The profile to probe. Default: the profile of the first route.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },
    /// Run the built-in fake realtime server: a local stand-in for the Realtime API (OpenAI GA
    /// at /v1/realtime, Azure GA at /openai/v1/realtime, Azure preview at /openai/realtime).
    FakeRealtime {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8765")]
        listen: SocketAddr,
        /// Take the server's options (reply, speed, tool script...) from this `kind = "fake"`
        /// upstream of --config. Default: built-in defaults (echo at 4x real time).
        #[arg(long, value_name = "NAME")]
        upstream: Option<String>,
        /// Require clients to present the key held in this environment variable.
        #[arg(long, value_name = "VAR")]
        api_key_env: Option<String>,
        /// Append every client event received to this JSONL file.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 3;
const EXIT_PROBE: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::Probe { profile } => probe_command(&cli.config, profile.as_deref()),
        Command::FakeRealtime {
            listen,
            upstream,
            api_key_env,
            record,
        } => fake_realtime_command(
            &cli.config,
            listen,
            upstream.as_deref(),
            api_key_env.as_deref(),
            record,
        ),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    io::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("srb-worker")
        .build()
        .map_err(|error| {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::from(EXIT_RUNTIME)
        })
}

fn probe_command(path: &Path, profile: Option<&str>) -> ExitCode {
    let config = match load_and_log(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let chosen = match profile {
        Some(name) => config.profiles.iter().find(|(n, _)| n.as_str() == name),
        None => config
            .routes
            .first()
            .and_then(|r| config.profiles.get_key_value(&r.profile)),
    };
    let Some((profile_name, profile)) = chosen else {
        let known: Vec<&str> = config.profiles.keys().map(|n| n.as_str()).collect();
        eprintln!(
            "error: no profile named `{}` (defined: {})",
            profile.unwrap_or_default(),
            known.join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let Some(upstream) = config.upstreams.get(&profile.upstream) else {
        eprintln!("error: profile {profile_name} names no known upstream");
        return ExitCode::from(EXIT_CONFIG);
    };
    let label = format!(
        "profile {profile_name} -> upstream {} ({})",
        profile.upstream,
        upstream.kind()
    );
    // A key that cannot be read is the configuration's problem (exit 3), not the upstream's.
    // Read once, here; the fake has none.
    let key = match upstream
        .api_key()
        .map(config::SecretSource::load)
        .transpose()
    {
        Ok(key) => key,
        Err(error) => {
            eprintln!(
                "probe: {label}: FAILED: cannot read the API key (upstreams.{}.{}): {error}",
                profile.upstream,
                upstream.api_key_field().unwrap_or("api_key_env")
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        // Held until the probe ends: dropping it stops the in-process fake server.
        let mut fake = None;
        let (target, dialect) = match upstream {
            UpstreamConfig::Fake(f) => {
                let handle = fake_realtime::start_loopback(f.options.clone())
                    .await
                    .map_err(|e| format!("cannot start the fake realtime server: {e}"))?;
                let dialect = Dialect::for_upstream(upstream);
                let target = ConnectTarget {
                    url: realtime::fake_url(handle.addr(), dialect),
                    auth_header: None,
                };
                fake = Some(handle);
                (target, dialect)
            }
            real => {
                let Some(key) = &key else {
                    return Err("this upstream has no API key source".into());
                };
                let target =
                    realtime::connect_request(real, Some(key)).map_err(|e| e.to_string())?;
                (target, Dialect::for_upstream(real))
            }
        };
        println!("probe: {label}: connecting to {}", target.url);
        let result = probe(&target, dialect, profile, upstream.connect_timeout()).await;
        drop(fake);
        result.map_err(|e: ProbeError| e.to_string())
    });
    match outcome {
        Ok(report) => {
            for warning in &report.warnings {
                println!(
                    "probe: warning: the service answered the audio with an error: {} ({})",
                    warning.message,
                    warning.code.as_deref().unwrap_or("no code")
                );
            }
            println!(
                "probe: {label}: OK: connected in {} ms, session.updated after {} ms, 1 s of \
                 silence ({} bytes of {}) sent{}",
                report.connect.as_millis(),
                report.ready.as_millis(),
                report.audio_bytes,
                profile.audio_format,
                if report.warnings.is_empty() {
                    " without error"
                } else {
                    ""
                },
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("probe: {label}: FAILED: {error}");
            ExitCode::from(EXIT_PROBE)
        }
    }
}

fn fake_realtime_command(
    path: &Path,
    listen: SocketAddr,
    upstream: Option<&str>,
    api_key_env: Option<&str>,
    record: Option<PathBuf>,
) -> ExitCode {
    let mut options = match upstream {
        None => {
            if let Err(e) = logging::init(&LogConfig::default()) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            FakeOptions::default()
        }
        Some(name) => {
            let config = match load_and_log(path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match config.upstreams.iter().find(|(n, _)| n.as_str() == name) {
                Some((_, UpstreamConfig::Fake(f))) => f.options.clone(),
                Some(_) => {
                    eprintln!("error: upstream {name} is not of kind \"fake\"");
                    return ExitCode::from(EXIT_CONFIG);
                }
                None => {
                    eprintln!("error: no upstream named {name}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
    };
    if let Some(var) = api_key_env {
        match config::SecretSource::Env(var.to_owned()).load() {
            Ok(key) => options.api_key = Some(key.expose().to_owned()),
            Err(e) => {
                eprintln!("error: --api-key-env: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    if record.is_some() {
        options.record = record;
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(fake_realtime::run_cli(listen, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "fake realtime server stopped");
            ExitCode::from(EXIT_RUNTIME)
        }
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

    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(serve(config, path.to_owned()));
    // Blocking work still running (a slow DNS lookup) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "stopped on an error");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Reads and checks the configuration file again for SIGHUP: every problem (syntax, values,
/// unreadable secrets) refuses the reload.
fn load_for_reload(path: &Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let secrets = config.check_secrets();
    if !secrets.is_empty() {
        let problems: Vec<String> = secrets.iter().map(ToString::to_string).collect();
        return Err(problems.join("; "));
    }
    Ok(config)
}

/// Binds the SIP sockets and serves calls until SIGTERM (drain) or SIGINT / a second SIGTERM
/// (stop at once).
async fn serve(config: Config, path: std::path::PathBuf) -> std::io::Result<()> {
    use sip_realtime_bridge::io::sip::Stop;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let listeners = sip_realtime_bridge::io::sip::Listeners::bind(&config).await?;
    tracing::info!("ready");
    // READY=1, STATUS= and STOPPING=1 come from the signalling loop; the watchdog pings from
    // its own task, from READY=1 on.
    let notifier = io::notify::Notifier::from_env();
    let _watchdog = notifier.spawn_watchdog();
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut terms = 0;
        loop {
            let stop = tokio::select! {
                _ = term.recv() => {
                    terms += 1;
                    if terms == 1 {
                        tracing::info!("SIGTERM: draining");
                        Stop::Drain
                    } else {
                        tracing::info!("second SIGTERM: stopping now");
                        Stop::Now
                    }
                }
                _ = int.recv() => { tracing::info!("SIGINT: stopping now"); Stop::Now }
                _ = hup.recv() => {
                    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
                    match load_for_reload(&path) {
                        Ok(config) => Stop::Reload(Box::new(config)),
                        Err(problem) => {
                            tracing::error!(%problem, "reload refused: the running configuration stays");
                            continue;
                        }
                    }
                }
            };
            if stop_tx.send(stop).is_err() {
                return;
            }
        }
    });
    sip_realtime_bridge::io::sip::serve(std::sync::Arc::new(config), listeners, stop_rx, notifier)
        .await
}
