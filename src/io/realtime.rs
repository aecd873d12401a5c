//! The realtime session shell: one task per call that owns the WebSocket and the sans-IO
//! [`Session`](crate::realtime::Session), and talks to the rest of the call through channels.
//!
//! The loop is the str0m rule made concrete: after every input (a frame, a command, a timer)
//! drain `poll_transmit` to the socket and `poll_event` to the call, then sleep until the next
//! of: a frame, a command, the core's timer, the keepalive tick. The clock is read in [`now`]
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
use crate::realtime::{CallId, ItemId, Session, SessionEvent, SessionStats};

/// What the call asks of its realtime session.
#[derive(Debug)]
pub enum Command {
    AppendAudio(Vec<u8>),
    CommitAudio,
    ClearAudio,
    CreateResponse {
        instructions: Option<String>,
    },
    CancelResponse,
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
    let mut last_heard = Instant::now();
    loop {
        while let Some(text) = session.poll_transmit() {
            if let Err(error) = ws.send(Message::text(text)).await {
                session.handle_closed(now(), None, &format!("send failed: {error}"));
                break;
            }
        }
        while let Some(event) = session.poll_event() {
            // After these the core has nothing more to say and the socket is done with.
            let closed = matches!(
                event,
                SessionEvent::Closed { .. } | SessionEvent::Expired | SessionEvent::SetupFailed(_)
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
                last_heard = Instant::now();
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
                if last_heard.elapsed() > keepalive * 2 {
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
        Command::CancelResponse => session.cancel_response(),
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
