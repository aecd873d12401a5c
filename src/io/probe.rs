//! `probe`: the operator's "are my key, deployment and settings right" check.
//!
//! Connects to a profile's upstream exactly as a call would (same connect shell, same session
//! core, same driver), sends the profile's `session.update`, then one second of silence in the
//! profile's audio format, and reports how long each step took or the exact error the service
//! gave. Nothing else is sent: no response is requested, so a probe costs no model output.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::realtime::{Command, run};
use super::ws::{ConnectError, connect};
use crate::config::{AudioFormat, ProfileConfig};
use crate::realtime::{ConnectTarget, Dialect, ServerError, Session, SessionEvent, SetupFailure};

/// How long the probe listens after the silence for an error about it.
const LISTEN_AFTER_AUDIO: Duration = Duration::from_secs(1);
/// Keepalive interval of the probe's session (it never lasts that long).
const KEEPALIVE: Duration = Duration::from_secs(20);

/// What a successful probe measured.
#[derive(Debug)]
pub struct ProbeReport {
    pub connect: Duration,
    pub ready: Duration,
    pub session_id: Option<String>,
    pub expires_at: Option<u64>,
    pub audio_bytes: usize,
    /// Non-fatal errors the service reported about what the probe sent.
    pub warnings: Vec<ServerError>,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(#[from] ConnectError),
    #[error("the service rejected the session settings: {message} (code {code}, field {param})", code = .code.as_deref().unwrap_or("none"), param = .param.as_deref().unwrap_or("not named"))]
    Rejected {
        code: Option<String>,
        message: String,
        param: Option<String>,
    },
    #[error("no {0} from the service in time")]
    SetupTimeout(String),
    #[error("the service closed the session (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    #[error("the service ended the session: {0}")]
    Fatal(String),
}

/// One 20 ms frame of silence in `format`.
pub fn silence_frame(format: AudioFormat) -> Vec<u8> {
    match format {
        AudioFormat::Pcm16 | AudioFormat::Auto => vec![0; 960],
        AudioFormat::G711Ulaw => vec![0xFF; 160],
        AudioFormat::G711Alaw => vec![0xD5; 160],
    }
}

/// Runs the probe against `target` with `profile`.
pub async fn probe(
    target: &ConnectTarget,
    dialect: Dialect,
    profile: &ProfileConfig,
    connect_timeout: Duration,
) -> Result<ProbeReport, ProbeError> {
    let started = Instant::now();
    let ws = connect(target, connect_timeout).await?;
    let connected = started.elapsed();

    let session = Session::new(profile, dialect, Instant::now().into_std())
        .with_setup_timeout(connect_timeout);
    let (commands, command_rx) = mpsc::channel(64);
    let (event_tx, mut events) = mpsc::channel(64);
    let driver = tokio::spawn(run(ws, session, command_rx, event_tx, KEEPALIVE));

    let (session_id, expires_at) = loop {
        match events.recv().await {
            Some(SessionEvent::Ready {
                session_id,
                expires_at,
            }) => break (session_id, expires_at),
            Some(SessionEvent::SetupFailed(SetupFailure::ConfigRejected {
                code,
                message,
                param,
            })) => {
                return Err(ProbeError::Rejected {
                    code,
                    message,
                    param,
                });
            }
            Some(SessionEvent::SetupFailed(SetupFailure::Refused { code, message })) => {
                return Err(ProbeError::Fatal(match code {
                    Some(code) => format!("{message} ({code})"),
                    None => message,
                }));
            }
            Some(SessionEvent::SetupFailed(SetupFailure::SetupTimeout { waiting_for })) => {
                return Err(ProbeError::SetupTimeout(waiting_for.to_string()));
            }
            Some(SessionEvent::Closed { code, reason }) => {
                return Err(ProbeError::Closed { code, reason });
            }
            Some(SessionEvent::Expired) => {
                return Err(ProbeError::Closed {
                    code: Some(1001),
                    reason: "session expired".into(),
                });
            }
            Some(_) => {}
            None => {
                return Err(ProbeError::Closed {
                    code: None,
                    reason: "the session task stopped".into(),
                });
            }
        }
    };
    let ready = started.elapsed();

    let frame = silence_frame(profile.audio_format);
    let mut audio_bytes = 0;
    for _ in 0..50 {
        audio_bytes += frame.len();
        if commands
            .send(Command::AppendAudio(frame.clone()))
            .await
            .is_err()
        {
            break;
        }
    }

    let mut warnings = Vec::new();
    let listen_until = Instant::now() + LISTEN_AFTER_AUDIO;
    while let Ok(event) = tokio::time::timeout_at(listen_until, events.recv()).await {
        match event {
            Some(SessionEvent::Error(e)) if e.fatal => return Err(ProbeError::Fatal(e.message)),
            Some(SessionEvent::Error(e)) => warnings.push(e),
            Some(SessionEvent::Closed { code, reason }) => {
                return Err(ProbeError::Closed { code, reason });
            }
            Some(_) => {}
            None => break,
        }
    }
    let _ = commands.send(Command::Close).await;
    let _ = driver.await;
    Ok(ProbeReport {
        connect: connected,
        ready,
        session_id,
        expires_at,
        audio_bytes,
        warnings,
    })
}
