//! I/O shells: the tokio side of the daemon. Shells own sockets, tasks and timers, and feed the
//! sans-IO cores; they hold no protocol rules of their own.
//!
//! - [`admin`]: the admin HTTP endpoint (`/metrics`, `/health`, `/ready`).
//! - [`call`]: one task per call that owns its RTP/RTCP sockets and its WebSocket and drives
//!   the call core, the audio bridge and the media cores.
//! - [`media`]: a call's media sockets and settings.
//! - [`sip`]: the SIP sockets (UDP, TCP) and the signalling loop around the sans-IO endpoint.
//! - [`ws`]: the WebSocket connection to a realtime service (TLS, auth, handshake errors).
//! - [`realtime`]: the task that drives one realtime session core over that connection.
//! - [`probe`]: connect, configure, send a second of silence, report: the `probe` command.
//! - [`webhook`]: one HTTP POST of a tool call to its webhook, with a deadline.
//! - [`notify`]: readiness, status and watchdog notifications to systemd (`sd_notify`).

pub mod admin;
pub mod call;
pub mod media;
pub mod notify;
pub mod probe;
pub mod realtime;
pub mod sip;
pub mod webhook;
pub mod ws;

/// Installs rustls' process-wide crypto provider (ring). tokio-tungstenite builds its TLS
/// configuration from it, so without this the first `wss://` connect panics. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all this function wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
