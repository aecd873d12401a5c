//! The call's view of its WebSocket to the realtime service, sans-IO: whether it is being
//! opened, open or gone, what has been handed to the shell's writer and what the writer has
//! written, and whether the service still reads what we send.
//!
//! ## Why pings measure the service, and writes do not
//!
//! The shell writes through a bounded queue to a writer task of its own, so the task that
//! paces RTP never waits on the socket. A write that completes says only that the kernel took
//! the bytes: a service that stops reading leaves several megabytes of socket buffers (ours
//! and its own) to fill first, a minute or more of caller audio. A WebSocket pong, though, is
//! sent by the service's WebSocket library when it *reads* our ping, and the ping sits behind
//! everything we sent before it: an answered ping proves the service has read our stream up to
//! there. So the call pings every [`KEEPALIVE`], one ping at a time, and a ping left
//! unanswered for `limits.upstream_stall_timeout` ends the call
//! ([`CallEnd::UpstreamStalled`](super::CallEnd::UpstreamStalled)): a service that stopped
//! reading is detected within the stall limit plus one keepalive interval, whether or not it
//! keeps sending. The same limit catches a connection that died without a close.
//!
//! ## The writer's backlog
//!
//! Every frame handed out (text or ping) is counted, and the shell reports how many the writer
//! has written ([`Input::UpstreamWritten`](super::Input::UpstreamWritten)). The difference is
//! the backlog, and it is bounded here rather than by the queue: caller audio is not appended
//! while [`MAX_AUDIO_BACKLOG`] frames wait (the frames are counted as unsent: the service
//! would hear them late anyway), control events (truncates, tool outputs) still go, and a
//! backlog of [`MAX_BACKLOG`] frames ends the call as a stall. The shell's queue holds
//! [`WRITER_QUEUE`] frames, more than the call ever hands out at once, so it is never full.

use std::time::{Duration, Instant};

/// Interval between WebSocket pings.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Caller audio is not appended while this many frames wait for the writer (10 s of audio).
pub const MAX_AUDIO_BACKLOG: u64 = 500;
/// A backlog this long ends the call: the service is not reading.
pub const MAX_BACKLOG: u64 = 1024;
/// Capacity of the shell's queue to the writer: the backlog limit and room to spare.
pub const WRITER_QUEUE: usize = 1024 + 64;

/// Where the WebSocket stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not asked for yet.
    Idle,
    /// The shell was asked to connect.
    Connecting,
    /// Open.
    Open,
    /// Closed by either side, failed, or never opened: nothing more goes out on it.
    Gone,
}

/// What the link decided the call should hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkVerdict {
    /// Nothing wrong.
    Fine,
    /// The service stopped reading: a ping unanswered for the stall limit, or the backlog
    /// limit reached.
    Stalled,
}

/// The link's state. See the module documentation.
#[derive(Debug)]
pub struct UpstreamLink {
    state: LinkState,
    stall_timeout: Duration,
    /// Frames handed to the shell (texts and pings).
    handed_out: u64,
    /// Frames the writer reports written.
    written: u64,
    backlog_max: u64,
    next_ping: u64,
    /// The ping in flight: its number and when it went out.
    ping: Option<(u64, Instant)>,
    /// When the next ping is due.
    keepalive_at: Option<Instant>,
    /// Caller frames not appended because of the backlog.
    audio_unsent: u64,
}

impl UpstreamLink {
    /// A link not yet connected; a ping unanswered for `stall_timeout` is a stall.
    pub fn new(stall_timeout: Duration) -> UpstreamLink {
        UpstreamLink {
            state: LinkState::Idle,
            stall_timeout,
            handed_out: 0,
            written: 0,
            backlog_max: 0,
            next_ping: 0,
            ping: None,
            keepalive_at: None,
            audio_unsent: 0,
        }
    }

    /// Where the WebSocket stands.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Whether frames may go out.
    pub fn is_open(&self) -> bool {
        self.state == LinkState::Open
    }

    /// The shell is asked to connect.
    pub fn connecting(&mut self) {
        if self.state == LinkState::Idle {
            self.state = LinkState::Connecting;
        }
    }

    /// The WebSocket opened at `now`: pings start one keepalive interval later.
    pub fn opened(&mut self, now: Instant) {
        if self.state == LinkState::Connecting {
            self.state = LinkState::Open;
            self.keepalive_at = now.checked_add(KEEPALIVE);
        }
    }

    /// The WebSocket is gone (closed, failed, or closed by us).
    pub fn gone(&mut self) {
        self.state = LinkState::Gone;
        self.ping = None;
        self.keepalive_at = None;
    }

    /// A text frame is handed to the shell.
    pub fn handed_out(&mut self) {
        self.handed_out += 1;
        self.backlog_max = self.backlog_max.max(self.backlog());
    }

    /// The writer has written `total` frames so far.
    pub fn written(&mut self, total: u64) {
        self.written = self.written.max(total.min(self.handed_out));
    }

    /// Frames handed out and not yet written.
    pub fn backlog(&self) -> u64 {
        self.handed_out.saturating_sub(self.written)
    }

    /// The longest backlog seen.
    pub fn backlog_max(&self) -> u64 {
        self.backlog_max
    }

    /// Whether a caller frame may be appended now; counts it as unsent when not.
    pub fn take_audio(&mut self) -> bool {
        if self.is_open() && self.backlog() < MAX_AUDIO_BACKLOG {
            true
        } else {
            if self.is_open() {
                self.audio_unsent += 1;
            }
            false
        }
    }

    /// Caller frames not appended because of the backlog.
    pub fn audio_unsent(&self) -> u64 {
        self.audio_unsent
    }

    /// The payload of the ping to send at `now`, if one is due (one at a time).
    pub fn poll_ping(&mut self, now: Instant) -> Option<[u8; 8]> {
        if !self.is_open() || self.ping.is_some() {
            return None;
        }
        if self.keepalive_at.is_none_or(|at| at > now) {
            return None;
        }
        self.next_ping += 1;
        self.ping = Some((self.next_ping, now));
        self.keepalive_at = None;
        self.handed_out();
        Some(self.next_ping.to_be_bytes())
    }

    /// A pong arrived at `now`: when it answers the ping in flight, the service has read
    /// everything sent before it, and the next ping is due a keepalive interval after that one.
    pub fn pong(&mut self, now: Instant, payload: &[u8]) {
        let Some((number, sent)) = self.ping else {
            return;
        };
        if payload != number.to_be_bytes() {
            return;
        }
        self.ping = None;
        let next = sent.checked_add(KEEPALIVE).unwrap_or(now);
        self.keepalive_at = Some(next.max(now));
    }

    /// Whether the link has stalled at `now`.
    pub fn verdict(&self, now: Instant) -> LinkVerdict {
        if !self.is_open() {
            return LinkVerdict::Fine;
        }
        if self.backlog() >= MAX_BACKLOG {
            return LinkVerdict::Stalled;
        }
        match self.stall_at() {
            Some(at) if at <= now => LinkVerdict::Stalled,
            _ => LinkVerdict::Fine,
        }
    }

    /// When the ping in flight turns into a stall.
    pub fn stall_at(&self) -> Option<Instant> {
        let (_, sent) = self.ping?;
        sent.checked_add(self.stall_timeout)
    }

    /// When the next ping is due.
    pub fn keepalive_at(&self) -> Option<Instant> {
        if self.ping.is_some() {
            None
        } else {
            self.keepalive_at
        }
    }

    /// How long the ping in flight has waited at `now`.
    pub fn ping_age(&self, now: Instant) -> Option<Duration> {
        self.ping
            .map(|(_, sent)| now.saturating_duration_since(sent))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    fn open(t0: Instant) -> UpstreamLink {
        let mut link = UpstreamLink::new(STALL);
        link.connecting();
        link.opened(t0);
        link
    }

    #[test]
    fn pings_go_out_one_at_a_time_every_keepalive_interval() {
        let t0 = Instant::now();
        let mut link = open(t0);
        assert_eq!(link.poll_ping(t0 + Duration::from_secs(14)), None);
        assert_eq!(link.keepalive_at(), Some(t0 + KEEPALIVE));
        let ping = link.poll_ping(t0 + KEEPALIVE).unwrap();
        // While it is in flight, no second one.
        assert_eq!(link.poll_ping(t0 + KEEPALIVE * 3), None);
        assert_eq!(link.stall_at(), Some(t0 + KEEPALIVE + STALL));
        // A pong of something else answers nothing.
        link.pong(t0 + KEEPALIVE, b"other");
        assert!(link.stall_at().is_some());
        link.pong(t0 + KEEPALIVE + Duration::from_secs(1), &ping);
        assert_eq!(link.stall_at(), None);
        assert_eq!(link.keepalive_at(), Some(t0 + KEEPALIVE * 2));
    }

    #[test]
    fn an_unanswered_ping_is_a_stall_at_the_limit_and_not_before() {
        let t0 = Instant::now();
        let mut link = open(t0);
        link.poll_ping(t0 + KEEPALIVE).unwrap();
        let limit = t0 + KEEPALIVE + STALL;
        assert_eq!(
            link.verdict(limit - Duration::from_millis(1)),
            LinkVerdict::Fine
        );
        assert_eq!(link.verdict(limit), LinkVerdict::Stalled);
        // A late pong still saves the call, if it comes before the limit is handled.
        assert_eq!(link.ping_age(limit), Some(STALL));
    }

    #[test]
    fn a_pong_late_but_within_the_limit_survives_and_the_next_ping_waits_its_turn() {
        let t0 = Instant::now();
        let mut link = open(t0);
        let ping = link.poll_ping(t0 + KEEPALIVE).unwrap();
        let late = t0 + KEEPALIVE + Duration::from_secs(29);
        link.pong(late, &ping);
        assert_eq!(link.verdict(late + STALL), LinkVerdict::Fine);
        // Due already (15 s after the ping): the next goes at once.
        assert_eq!(link.keepalive_at(), Some(late));
    }

    #[test]
    fn audio_waits_behind_a_backlog_control_frames_do_not_and_a_long_backlog_is_a_stall() {
        let t0 = Instant::now();
        let mut link = open(t0);
        for _ in 0..MAX_AUDIO_BACKLOG {
            assert!(link.take_audio());
            link.handed_out();
        }
        assert!(!link.take_audio());
        assert_eq!(link.audio_unsent(), 1);
        // The writer catches up: audio flows again.
        link.written(MAX_AUDIO_BACKLOG - 10);
        assert!(link.take_audio());
        // Control frames are still handed out past the audio limit, up to the stall limit.
        link.written(0);
        for _ in MAX_AUDIO_BACKLOG..MAX_BACKLOG {
            link.handed_out();
        }
        assert_eq!(link.backlog(), MAX_BACKLOG - MAX_AUDIO_BACKLOG + 10);
        link.written(0);
        while link.backlog() < MAX_BACKLOG {
            link.handed_out();
        }
        assert_eq!(link.verdict(t0), LinkVerdict::Stalled);
        assert_eq!(link.backlog_max(), MAX_BACKLOG);
        // A writer report beyond what was handed out is clamped.
        link.written(u64::MAX);
        assert_eq!(link.backlog(), 0);
        assert!((WRITER_QUEUE as u64) > MAX_BACKLOG);
    }

    #[test]
    fn nothing_goes_out_before_the_link_opens_or_after_it_is_gone() {
        let t0 = Instant::now();
        let mut link = UpstreamLink::new(STALL);
        assert!(!link.take_audio());
        assert_eq!(link.audio_unsent(), 0);
        link.connecting();
        assert_eq!(link.state(), LinkState::Connecting);
        assert_eq!(link.poll_ping(t0 + KEEPALIVE), None);
        link.opened(t0);
        link.gone();
        assert_eq!(link.poll_ping(t0 + KEEPALIVE), None);
        assert_eq!(link.verdict(t0 + KEEPALIVE + STALL), LinkVerdict::Fine);
        assert!(!link.is_open());
    }
}
