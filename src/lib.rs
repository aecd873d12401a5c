//! # sip-realtime-bridge
//!
//! A daemon that answers telephone calls over SIP and lets a speech-to-speech model (OpenAI's
//! or Azure OpenAI's Realtime API) talk to the caller: the caller's G.711 or Opus RTP audio goes
//! to the model over a WebSocket, the model's audio comes back as paced RTP, and when the caller
//! talks over the model, playback stops at once and the model is told how much was heard.
//!
//! ## Architecture: sans-IO cores, thin I/O shells
//!
//! Protocol logic lives in *cores* that own state and rules but never touch a socket, a task or
//! the clock: time is an argument (`now`), timers are asked for (`poll_timeout`), output is
//! drained (`poll_transmit` / `poll_event`) after every `handle_*` call. *Shells* own sockets,
//! tasks and timers, and read the clock in exactly one place, so tests drive cores with
//! simulated time and whole-daemon tests run on tokio's paused clock.
//!
//! ## Where each concern lives
//!
//! | module | kind | what it holds |
//! |---|---|---|
//! | [`call`] | core | one call, whole: [`call::Call`] with one way in ([`call::Input`]: datagrams, WebSocket frames, pongs, writer progress, dialog events, drain, webhook answers, time) and one way out ([`call::Output`]: datagrams, WebSocket frames and pings, connect/close, requests for the dialog, webhooks, events, the record, the next timer). Inside: the lifecycle (connect while ringing, 200 only when the session is ready, 503 on failure, greeting, digits, tools, who ends the call and why), the upstream link (keepalive pings, the stall limit, the writer's backlog), the media leg (receiver, DTMF, RTCP, direction, symmetric RTP), the audio bridge (formats, the pacer, the queue limit, barge-in per design section 3), and every deadline in one timer table |
//! | [`config`] | loading | defaults <- TOML file <- `SRB_*` environment; typed, validated; secrets by reference |
//! | [`audio`] | core | G.711 mu-law/A-law, the 8 kHz <-> 24 kHz resampler, Opus (libopus) at 24 kHz, frame constants |
//! | [`fake_realtime`] | core + shell | a protocol-faithful local Realtime API server (both dialects, VAD, barge-in, truncate, tool calls, expiry) for tests, benchmarks and the demo |
//! | [`io`] | shell | tokio I/O: the SIP UDP/TCP transport shell and signalling loop ([`io::sip`]: the endpoint, admission, forwarding between dialogs and calls, drain, reload), the per-call task ([`io::call`]: sockets and the WebSocket's read half into `Input`s, `Output`s onto sockets, WebSocket writes through a bounded queue to a writer task, so nothing waits on the upstream), the WebSocket connect shell, the realtime session driver of `probe`, `probe` |
//! | [`logging`] | shell | `tracing` subscriber: `RUST_LOG` or the configured filter, text or JSON lines |
//! | [`metrics`] | shell | the metrics registry (counters, gauges, histograms, Prometheus text 0.0.4) and readiness, served by [`io::admin`] |
//! | [`realtime`] | core | Realtime API client: dialects and connect URLs, typed events, `session.update` rendering, the session core (setup, response sequencing, output-audio ledger, tool calls) |
//! | [`rtp`] | core | RTP/RTCP: [`rtp::packet`] (header validation), [`rtp::receive`] (A.1 sequence tracking, source latch, reorder, concealment, 20 ms re-framing), [`rtp::playout`] (the paced 20 ms clock with the per-item account barge-in needs), [`rtp::dtmf`] (RFC 4733, SIP INFO), [`rtp::rtcp`] (reports, intervals, RTT), [`rtp::ports`] (port pool with quarantine) |
//! | [`sip`] | core | SIP: [`sip::message`] (framing, lenient parsing, accessors, responses and 400s), [`sip::transaction`] (RFC 3261/6026 transactions and timers), [`sip::dialog`] (the UAS call: answer, CANCEL, BYE, re-INVITE/UPDATE, session timers), [`sip::sdp`] (SDP and RFC 3264 offer/answer), [`sip::endpoint`] (every call behind one front door: Via stamping, reply routing, dispatch by Call-ID, admission, stateless replies, registrations), [`sip::register`] (REGISTER client), [`sip::auth`] (digest) |
//!
//! A call flows: the endpoint admits an INVITE (an answerable offer, route, ACL, capacity, an
//! RTP port; anything refused is refused there and opens nothing upstream) -> the signalling
//! loop ([`io::sip`]) builds a [`call::Call`] and starts its task ([`io::call`]) -> the call
//! asks to ring and to connect -> the session is configured -> the call asks to answer -> the
//! dialog's events (answered, media terms, ACK, digits, BYE) are forwarded to it as they come
//! -> the call carries audio both ways until someone ends it, and whoever that is, the same
//! input closes the WebSocket, stops its timers and writes its one record ("call record" in
//! the log); the task then drops its sockets and the loop returns the ports to the pool.
//! `tests/scenario.rs` runs all of this on one simulated clock, with no sockets.
//!
//! Registration lives beside the calls: [`sip::register`] (one sans-IO client per
//! `[[sip.accounts]]`, digest from [`sip::auth`]) is driven by the endpoint, which routes
//! REGISTER responses to it by Call-ID and names the account of calls sent to its Contact.
//! Transfers are the dialog's REFER/NOTIFY ([`sip::dialog`]) asked for by the call core; tools
//! are decided in [`call::tools`] and webhooks run in [`io::webhook`], spawned by the call task
//! so a slow service never touches the media path.
//!
//! Operations sit in the shells: the signalling loop drains (SIGTERM), reloads (SIGHUP, a new
//! `Arc<Config>` for new calls), rate-limits sources and applies the INVITE ACL
//! ([`sip::limits`]), feeds [`metrics`] from call records and registration events, and tells
//! systemd how it is ([`io::notify`]); [`io::admin`] serves `/metrics`, `/health`, `/ready`.
//! The binary (`src/main.rs`) stays thin: command line, logging, runtime, signals.
//!
//! ## Conventions
//!
//! One `thiserror` enum per module; no `unwrap`, `expect` or slice indexing on data from the
//! network (clippy's `unwrap_used` and `indexing_slicing` are on); no `unsafe`. Secrets are
//! redacted in every `Debug` ([`config::SecretString`]).

pub mod audio;
pub mod call;
pub mod config;
pub mod fake_realtime;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod realtime;
pub mod rtp;
pub mod sip;
