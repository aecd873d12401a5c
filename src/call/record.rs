//! What a call leaves behind: why it ended ([`CallEnd`], with the RFC 3326 `Reason` our BYE
//! carries), who it was between ([`CallInfo`]), and its one record ([`CallRecord`]): times,
//! barge-ins, audio counters both ways, RTP counters, latency histograms and transcripts. The
//! shell writes it as the "call record" log line and feeds the metrics from it.

use std::fmt::Write as _;
use std::time::Duration;

use crate::rtp::receive::ReceiveStats;
use crate::rtp::rtcp::RtcpStats;
use crate::sip::sdp::Codec;

/// Who the call is between, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    /// The SIP Call-ID.
    pub call_id: String,
    /// The route's label.
    pub route: String,
    /// The profile's name.
    pub profile: String,
    /// P-Asserted-Identity, else From.
    pub caller: String,
    /// Request-URI user, else To.
    pub callee: String,
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnd {
    /// The caller sent BYE.
    CallerBye,
    /// The caller cancelled before the answer (while the upstream was being connected).
    Cancelled,
    /// The upstream could not be connected or refused the session before the answer (503).
    UpstreamFailed,
    /// The upstream was not ready within `answer_timeout` (503).
    AnswerTimeout,
    /// The upstream closed or failed during the call (BYE with a Reason).
    UpstreamClosed,
    /// The upstream ended the session at its maximum duration (BYE with a Reason).
    UpstreamExpired,
    /// The upstream stopped taking what we send (a ping unanswered for
    /// `limits.upstream_stall_timeout`, or its send queue full): BYE with a Reason.
    UpstreamStalled,
    /// No RTP from the caller for `rtp.inactivity_timeout` (BYE with a Reason).
    RtpTimeout,
    /// `limits.max_call_duration` (BYE with a Reason).
    MaxDuration,
    /// The daemon is shutting down (BYE with a Reason, or 503 before the answer).
    Shutdown,
    /// The media could not be set up after the answer (BYE with a Reason).
    MediaFailed,
    /// The SIP side ended it otherwise: no ACK, session timer, refused offer, transport.
    Signalling,
    /// Transferred to a human (REFER accepted and the new call answered): BYE with a Reason.
    Transferred,
    /// The assistant ended the call (`end_call`), after its last words played.
    EndedByAssistant,
}

impl CallEnd {
    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallerBye => "caller_bye",
            Self::Cancelled => "cancelled",
            Self::UpstreamFailed => "upstream_failed",
            Self::AnswerTimeout => "answer_timeout",
            Self::UpstreamClosed => "upstream_closed",
            Self::UpstreamExpired => "upstream_expired",
            Self::UpstreamStalled => "upstream_stalled",
            Self::RtpTimeout => "rtp_timeout",
            Self::MaxDuration => "max_duration",
            Self::Shutdown => "shutdown",
            Self::MediaFailed => "media_failed",
            Self::Signalling => "signalling",
            Self::Transferred => "transferred",
            Self::EndedByAssistant => "ended_by_assistant",
        }
    }

    /// The `Reason` header (RFC 3326) of our BYE when we end an answered call for this reason.
    /// Q.850 causes as PSTN gateways map them: 16 normal clearing, 41 temporary failure, 38
    /// network out of order.
    pub fn reason_header(self, detail: &str) -> String {
        let (cause, text) = match self {
            Self::UpstreamClosed | Self::UpstreamFailed | Self::AnswerTimeout => {
                (38, "realtime upstream closed")
            }
            Self::UpstreamExpired => (16, "realtime session reached its maximum duration"),
            Self::UpstreamStalled => (38, "realtime upstream not reading"),
            Self::RtpTimeout => (41, "RTP timeout"),
            Self::MaxDuration => (16, "maximum call duration reached"),
            Self::Shutdown => (16, "bridge shutting down"),
            Self::MediaFailed => (41, "media setup failed"),
            Self::Transferred => (16, "call transferred"),
            Self::EndedByAssistant => (16, "call ended by the assistant"),
            Self::CallerBye | Self::Cancelled | Self::Signalling => (16, "call ended"),
        };
        let detail: String = detail
            .chars()
            .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
            .take(120)
            .collect();
        if detail.is_empty() {
            format!("Q.850;cause={cause};text=\"{text}\"")
        } else {
            format!("Q.850;cause={cause};text=\"{text}: {detail}\"")
        }
    }
}

/// A latency histogram with buckets 2^(1/8) apart (about 9 % resolution), from 1 µs to about
/// 16 s: fixed size whatever the call's length, and mergeable across calls (the load script
/// adds the buckets of every call's record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
}

const HISTOGRAM_BUCKETS: usize = 8 * 24 + 1;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; HISTOGRAM_BUCKETS],
        }
    }
}

impl LatencyHistogram {
    /// The bucket of `us` microseconds: floor(8 * log2(us + 1)), capped.
    fn bucket(us: u64) -> usize {
        let x = (us as f64 + 1.0).log2() * 8.0;
        (x.floor() as usize).min(HISTOGRAM_BUCKETS - 1)
    }

    /// The upper bound of a bucket, in microseconds.
    pub fn bucket_upper_us(bucket: usize) -> u64 {
        (2f64.powf((bucket as f64 + 1.0) / 8.0) - 1.0).ceil() as u64
    }

    /// Counts one sample.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(count) = self.counts.get_mut(Self::bucket(us)) {
            *count += 1;
        }
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound (µs) of the bucket holding the `q` quantile (0.0-1.0); `None` when
    /// empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::bucket_upper_us(bucket));
            }
        }
        None
    }

    /// The non-empty buckets as `bucket:count` pairs joined by `,` (for the call record).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (bucket, count) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{bucket}:{count}");
        }
        out
    }
}

/// Everything a call's record says: written once, when the call is over
/// ([`Output::Finished`](super::Output::Finished)).
#[derive(Clone, Debug, PartialEq)]
pub struct CallRecord {
    pub info: CallInfo,
    pub codec: Option<Codec>,
    /// The audio format on the WebSocket (after `auto` was resolved).
    pub audio_format: String,
    pub end: CallEnd,
    /// What the upstream or the SIP side said about the end, if anything.
    pub end_detail: String,
    /// INVITE admitted -> answered (None: never answered).
    pub setup: Option<Duration>,
    /// INVITE admitted -> the upstream's WebSocket open (None: it never opened).
    pub upstream_connect: Option<Duration>,
    /// Answered -> the first model audio frame sent as RTP (None: the model never spoke).
    pub first_model_audio: Option<Duration>,
    /// Answered -> ended (zero when never answered).
    pub talk: Duration,
    /// INVITE admitted -> ended.
    pub total: Duration,
    pub barge_ins: u64,
    /// Each barge-in's reaction: the `speech_started` frame handed in -> playback flushed.
    pub barge_in_reactions: Vec<Duration>,
    pub frames_after_barge_in: u64,
    pub truncates: u64,
    pub truncate_errors: u64,
    pub deletes: u64,
    pub late_deltas_dropped: u64,
    pub upstream_errors: Vec<String>,
    pub digits: u64,
    /// Silence frames appended while the caller's RTP paused.
    pub caller_frames_filled: u64,
    /// Caller frames handed to the bridge, appended to the session, dropped before ready.
    pub caller_frames_in: u64,
    pub frames_to_model: u64,
    pub caller_frames_dropped: u64,
    pub model_frames_queued: u64,
    pub model_frames_sent: u64,
    pub latency_in: LatencyHistogram,
    pub latency_out: LatencyHistogram,
    pub caller_transcript: String,
    pub assistant_transcript: String,
    /// Model audio not queued because `limits.max_queued_audio` was full, in ms.
    pub model_audio_dropped_ms: u64,
    /// Audio deltas for items the service never announced, dropped.
    pub unknown_item_deltas: u64,
    /// Caller frames not sent because the upstream was not taking what we sent.
    pub caller_frames_unsent: u64,
    /// The most frames waiting for the upstream's writer at once.
    pub upstream_backlog_max: u64,
    /// The RTP side, once media terms were known.
    pub media: Option<MediaSummary>,
}

/// A call's RTP counters at its end.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaSummary {
    /// The receive path.
    pub received: ReceiveStats,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Packets lost (expected - received, RFC 3550 A.3; negative with duplicates).
    pub packets_lost: i64,
    /// RTCP: loss, jitter and round-trip time both ways.
    pub rtcp: RtcpStats,
}
