//! The realtime session shell: one task per call that owns the WebSocket and the sans-IO
//! [`Session`], and talks to the rest of the call through channels.
//!
//! The loop is the str0m rule made concrete: after every input (a frame, a command, a timer)
//! drain `poll_transmit` to the socket and `poll_event` to the call, then sleep until the next
//! of: a frame, a command, the core's timer, the keepalive tick. The clock is read in `now()`
//! only. Keepalive: a ping every `keepalive`; when no frame at all has arrived for two intervals
//! the connection is treated as lost.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::ws::WsStream;
use crate::realtime::{
    CallId, ItemId, ResponseId, ServerError, Session, SessionEvent, SessionStats,
};

/// What the call asks of its realtime session.
#[derive(Debug)]
pub enum Command {
    AppendAudio(Vec<u8>),
    CommitAudio,
    ClearAudio,
    CreateResponse {
        instructions: Option<String>,
    },
    /// Cancel the named response (or whatever is active, with `None`).
    CancelResponse(Option<ResponseId>),
    Truncate {
        item_id: ItemId,
        content_index: u32,
        audio_end_ms: u64,
    },
    DeleteItem {
        item_id: ItemId,
    },
    AddUserText(String),
    SubmitToolOutput {
        call_id: CallId,
        output: String,
    },
    /// Close the session normally (the caller hung up).
    Close,
}

/// How the session task ended, with the session's counters at that moment.
#[derive(Debug)]
pub struct Finished {
    pub ended: Ended,
    pub stats: SessionStats,
}

/// Who ended the session.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// We closed it (a `Close` command, or every command sender dropped).
    Closed,
    /// The service closed it, or it was lost; the session core has reported why.
    Remote,
}

/// The one place this shell reads the clock (tokio's, so a paused test clock applies).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Drives `session` over `ws` until either side closes.
pub async fn run(
    mut ws: WsStream,
    mut session: Session,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<SessionEvent>,
    keepalive: Duration,
) -> Finished {
    let ended = drive(&mut ws, &mut session, &mut commands, &events, keepalive).await;
    Finished {
        ended,
        stats: session.stats(),
    }
}

async fn drive(
    ws: &mut WsStream,
    session: &mut Session,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<SessionEvent>,
    keepalive: Duration,
) -> Ended {
    let mut ping = tokio::time::interval(keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = now();
    loop {
        while let Some(text) = session.poll_transmit() {
            if let Err(error) = ws.send(Message::text(text)).await {
                session.handle_closed(now(), None, &format!("send failed: {error}"));
                break;
            }
        }
        while let Some(event) = session.poll_event() {
            // After these the core has nothing more to say and the socket is done with. A fatal
            // error ends the session in the core; leaving the socket open would only keep a
            // dead session's keepalive going until the call hangs up.
            let closed = matches!(
                event,
                SessionEvent::Closed { .. }
                    | SessionEvent::Expired
                    | SessionEvent::SetupFailed(_)
                    | SessionEvent::Error(ServerError { fatal: true, .. })
            );
            if events.send(event).await.is_err() {
                // Nobody listens any more: the call is gone.
                let _ = ws.close(None).await;
                return Ended::Closed;
            }
            if closed {
                let _ = ws.close(None).await;
                return Ended::Remote;
            }
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            frame = ws.next() => {
                last_heard = now();
                match frame {
                    Some(Ok(Message::Text(text))) => session.handle_text(now(), text.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        session.handle_closed(now(), code, &reason);
                    }
                    // Pings are answered by tungstenite itself; binary frames are not part of
                    // the protocol.
                    Some(Ok(_)) => {}
                    Some(Err(error)) => session.handle_closed(now(), None, &error.to_string()),
                    None => session.handle_closed(now(), None, "connection closed without a close frame"),
                }
            }
            command = commands.recv() => match command {
                Some(Command::Close) | None => {
                    let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "call ended".into() })).await;
                    return Ended::Closed;
                }
                Some(command) => apply(session, command),
            },
            () = sleep_until(deadline) => session.handle_timeout(now()),
            _ = ping.tick() => {
                if now().saturating_duration_since(last_heard) > keepalive * 2 {
                    session.handle_closed(now(), None, "no frame from the service for two keepalive intervals");
                } else if let Err(error) = ws.send(Message::Ping(Vec::new().into())).await {
                    session.handle_closed(now(), None, &format!("ping failed: {error}"));
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

fn apply(session: &mut Session, command: Command) {
    let result = match command {
        Command::AppendAudio(audio) => {
            session.append_audio(&audio);
            Ok(())
        }
        Command::CommitAudio => session.commit_audio(),
        Command::ClearAudio => session.clear_audio(),
        Command::CreateResponse { instructions } => {
            session.create_response(instructions.as_deref())
        }
        Command::CancelResponse(response_id) => session.cancel_response(response_id.as_ref()),
        Command::Truncate {
            item_id,
            content_index,
            audio_end_ms,
        } => session.truncate(&item_id, content_index, audio_end_ms),
        Command::DeleteItem { item_id } => session.delete_item(&item_id),
        Command::AddUserText(text) => session.add_user_text(&text),
        Command::SubmitToolOutput { call_id, output } => {
            session.submit_tool_output(&call_id, output)
        }
        Command::Close => Ok(()),
    };
    if let Err(error) = result {
        tracing::warn!(%error, "realtime command refused");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::realtime::{ConnectTarget, Dialect};
    use tokio::net::TcpListener;
    use tokio_tungstenite::WebSocketStream;

    fn profile() -> crate::config::ProfileConfig {
        let config = Config::from_toml(
            "[upstreams.f]\nkind = \"fake\"\n[profiles.p]\nupstream = \"f\"\n[[routes]]\nprofile = \"p\"\n",
        )
        .unwrap();
        config.profiles.into_values().next().unwrap()
    }

    /// A WebSocket server that accepts one connection and hands it to `behave`.
    async fn server<F, Fut>(behave: F) -> ConnectTarget
    where
        F: FnOnce(WebSocketStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(socket).await.unwrap();
            behave(ws).await;
        });
        ConnectTarget {
            url: format!("ws://{addr}/v1/realtime").parse().unwrap(),
            auth_header: None,
        }
    }

    #[tokio::test]
    async fn a_silent_service_is_declared_lost_after_two_keepalive_intervals() {
        // Upgrades, then neither reads nor writes: no pong ever comes back.
        let target = server(|ws| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(ws);
        })
        .await;
        let ws = super::super::ws::connect(&target, Duration::from_secs(5))
            .await
            .unwrap();
        let session = Session::new(&profile(), Dialect::OpenAiGa, now());
        let (_commands, command_rx) = mpsc::channel(4);
        let (event_tx, mut events) = mpsc::channel(16);
        let keepalive = Duration::from_millis(100);
        let started = Instant::now();
        let finished = run(ws, session, command_rx, event_tx, keepalive).await;
        assert_eq!(finished.ended, Ended::Remote);
        assert!(started.elapsed() >= keepalive * 2);
        let mut closed = None;
        while let Ok(event) = events.try_recv() {
            if let SessionEvent::Closed { reason, .. } = event {
                closed = Some(reason);
            }
        }
        assert_eq!(
            closed.as_deref(),
            Some("no frame from the service for two keepalive intervals")
        );
    }

    #[tokio::test]
    async fn pings_are_sent_and_a_close_frame_is_surfaced_with_its_code() {
        let (seen_tx, mut seen_rx) = mpsc::channel(4);
        let target = server(move |mut ws| async move {
            // Wait for the client's first ping, then close with a code of our own.
            while let Some(Ok(frame)) = ws.next().await {
                if matches!(frame, Message::Ping(_)) {
                    seen_tx.send(()).await.unwrap();
                    let close = CloseFrame {
                        code: CloseCode::Library(4000),
                        reason: "shape disabled".into(),
                    };
                    let _ = ws.close(Some(close)).await;
                    while ws.next().await.is_some() {}
                    return;
                }
            }
        })
        .await;
        let ws = super::super::ws::connect(&target, Duration::from_secs(5))
            .await
            .unwrap();
        let session = Session::new(&profile(), Dialect::OpenAiGa, now());
        let (_commands, command_rx) = mpsc::channel(4);
        let (event_tx, mut events) = mpsc::channel(16);
        let finished = run(ws, session, command_rx, event_tx, Duration::from_millis(50)).await;
        assert_eq!(finished.ended, Ended::Remote);
        assert!(seen_rx.try_recv().is_ok(), "no ping reached the server");
        let mut closed = None;
        while let Ok(event) = events.try_recv() {
            if let SessionEvent::Closed { code, reason } = event {
                closed = Some((code, reason));
            }
        }
        assert_eq!(closed, Some((Some(4000), "shape disabled".to_owned())));
    }

    #[tokio::test]
    async fn a_fatal_error_closes_the_socket() {
        let (closed_tx, mut closed_rx) = mpsc::channel(1);
        let target = server(move |mut ws| async move {
            let created = r#"{"type":"session.created","event_id":"e1","session":{"id":"sess_1","type":"realtime"}}"#;
            ws.send(Message::text(created)).await.unwrap();
            while let Some(Ok(frame)) = ws.next().await {
                let Message::Text(text) = frame else { continue };
                if text.contains("session.update") {
                    let updated = r#"{"type":"session.updated","event_id":"e2","session":{"id":"sess_1","type":"realtime"}}"#;
                    ws.send(Message::text(updated)).await.unwrap();
                    let fatal = r#"{"type":"error","event_id":"e3","error":{"type":"invalid_request_error","code":"invalid_api_key","message":"key revoked"}}"#;
                    ws.send(Message::text(fatal)).await.unwrap();
                    break;
                }
            }
            // The client must close now, without being asked to.
            let closed = loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | None => break true,
                    Some(Ok(_)) => {}
                    Some(Err(_)) => break false,
                }
            };
            closed_tx.send(closed).await.unwrap();
        })
        .await;
        let ws = super::super::ws::connect(&target, Duration::from_secs(5))
            .await
            .unwrap();
        let session = Session::new(&profile(), Dialect::OpenAiGa, now());
        let (_commands, command_rx) = mpsc::channel(4);
        let (event_tx, mut events) = mpsc::channel(16);
        let finished = run(ws, session, command_rx, event_tx, Duration::from_secs(20)).await;
        assert_eq!(finished.ended, Ended::Remote);
        assert_eq!(closed_rx.recv().await, Some(true));
        let mut fatal = None;
        while let Ok(event) = events.try_recv() {
            if let SessionEvent::Error(e) = event {
                fatal = Some(e);
            }
        }
        let fatal = fatal.expect("the fatal error reached the call");
        assert!(fatal.fatal);
        assert_eq!(fatal.code.as_deref(), Some("invalid_api_key"));
    }
}
