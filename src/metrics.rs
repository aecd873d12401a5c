//! Metrics: a small hand-written registry (counters, gauges, histograms with fixed buckets,
//! labels) rendered in the Prometheus text exposition format 0.0.4, and the daemon's own
//! metrics ([`Metrics`]) with the readiness state the admin endpoint reports.
//!
//! Updates happen once per call end, per registration event and per turn of the signalling
//! loop, never per packet, so one `Mutex` is enough; a scrape holds it while it renders.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::call::{CallEnd, CallRecord};
use crate::sip::register::RegistrationEvent;

/// The `Content-Type` of [`Registry::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label names and values of one series, in the order they are rendered.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Histogram {
    /// Per bucket (upper bounds of the family, then +Inf): observations in that bucket only;
    /// rendering makes them cumulative.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Number(f64),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Upper bounds of the buckets, ascending (histograms only).
    bounds: &'static [f64],
    series: BTreeMap<Labels, Value>,
}

/// Metric families in declaration order, each with its series by labels.
#[derive(Debug, Default)]
pub struct Registry {
    families: Vec<Family>,
}

impl Registry {
    fn declare(&mut self, name: &'static str, help: &'static str, kind: Kind, b: &'static [f64]) {
        debug_assert!(self.families.iter().all(|f| f.name != name), "{name}");
        debug_assert!(b.windows(2).all(|w| matches!(w, [x, y] if x < y)));
        self.families.push(Family {
            name,
            help,
            kind,
            bounds: b,
            series: BTreeMap::new(),
        });
    }

    /// Declares a counter (its name should end in `_total`).
    pub fn counter(&mut self, name: &'static str, help: &'static str) {
        self.declare(name, help, Kind::Counter, &[]);
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str) {
        self.declare(name, help, Kind::Gauge, &[]);
    }

    /// Declares a histogram with these bucket upper bounds (ascending; +Inf is implied).
    pub fn histogram(&mut self, name: &'static str, help: &'static str, bounds: &'static [f64]) {
        self.declare(name, help, Kind::Histogram, bounds);
    }

    fn family(&mut self, name: &str, kind: Kind) -> Option<&mut Family> {
        let family = self.families.iter_mut().find(|f| f.name == name);
        debug_assert!(
            family.as_ref().is_some_and(|f| f.kind == kind),
            "{name} is not a declared {kind:?}"
        );
        family.filter(|f| f.kind == kind)
    }

    /// Adds `by` to a counter series (created at 0).
    pub fn inc(&mut self, name: &str, labels: Labels, by: u64) {
        if let Some(f) = self.family(name, Kind::Counter) {
            let value = f.series.entry(labels).or_insert(Value::Number(0.0));
            if let Value::Number(v) = value {
                *v += by as f64;
            }
        }
    }

    /// Sets a gauge series.
    pub fn set(&mut self, name: &str, labels: Labels, to: f64) {
        if let Some(f) = self.family(name, Kind::Gauge) {
            f.series.insert(labels, Value::Number(to));
        }
    }

    /// Removes a series (of any kind).
    pub fn remove(&mut self, name: &str, labels: &Labels) {
        if let Some(f) = self.families.iter_mut().find(|f| f.name == name) {
            f.series.remove(labels);
        }
    }

    /// Records one observation in a histogram series.
    pub fn observe(&mut self, name: &str, labels: Labels, value: f64) {
        let Some(f) = self.family(name, Kind::Histogram) else {
            return;
        };
        let buckets = f.bounds.len() + 1;
        let bucket = f
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(f.bounds.len());
        let series = f.series.entry(labels).or_insert_with(|| {
            Value::Histogram(Histogram {
                counts: vec![0; buckets],
                sum: 0.0,
                count: 0,
            })
        });
        if let Value::Histogram(h) = series {
            if let Some(c) = h.counts.get_mut(bucket) {
                *c += 1;
            }
            h.sum += value;
            h.count += 1;
        }
    }

    /// The value of a counter or gauge series (tests).
    pub fn value(&self, name: &str, labels: &Labels) -> Option<f64> {
        let f = self.families.iter().find(|f| f.name == name)?;
        match f.series.get(labels)? {
            Value::Number(v) => Some(*v),
            Value::Histogram(_) => None,
        }
    }

    /// Every family in the text exposition format 0.0.4: `# HELP` and `# TYPE` lines, then
    /// the series; histograms as cumulative `_bucket{le="..."}` lines, `_sum` and `_count`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for (labels, value) in &f.series {
                match value {
                    Value::Number(v) => {
                        let _ = writeln!(out, "{}{} {}", f.name, label_set(labels, None), num(*v));
                    }
                    Value::Histogram(h) => {
                        let mut cumulative = 0;
                        let bounds = f.bounds.iter().map(|b| num(*b));
                        let les = bounds.chain(std::iter::once("+Inf".to_owned()));
                        for (le, count) in les.zip(&h.counts) {
                            cumulative += count;
                            let set = label_set(labels, Some(&le));
                            let _ = writeln!(out, "{}_bucket{set} {cumulative}", f.name);
                        }
                        let set = label_set(labels, None);
                        let _ = writeln!(out, "{}_sum{set} {}", f.name, num(h.sum));
                        let _ = writeln!(out, "{}_count{set} {}", f.name, h.count);
                    }
                }
            }
        }
        out
    }
}

/// `{a="x",b="y"}` (with `le` last when given), or nothing for no labels.
fn label_set(labels: &Labels, le: Option<&str>) -> String {
    let pairs = labels
        .iter()
        .map(|(k, v)| (*k, escape_label(v)))
        .chain(le.map(|le| ("le", le.to_owned())));
    let inner: Vec<String> = pairs.map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if inner.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", inner.join(","))
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: integers without a fraction, `+Inf`, `-Inf`, `NaN` as Prometheus spells
/// them.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

fn no_labels() -> Labels {
    Vec::new()
}

pub const ACTIVE_CALLS: &str = "srb_active_calls";
pub const DRAINING: &str = "srb_draining";
pub const CALLS: &str = "srb_calls_total";
pub const SETUP: &str = "srb_call_setup_seconds";
pub const UPSTREAM_CONNECT: &str = "srb_upstream_connect_seconds";
pub const FIRST_AUDIO: &str = "srb_first_model_audio_seconds";
pub const BARGE_INS: &str = "srb_barge_ins_total";
pub const BARGE_IN_REACTION: &str = "srb_barge_in_reaction_seconds";
pub const TRUNCATE_ERRORS: &str = "srb_truncate_errors_total";
pub const UPSTREAM_ERRORS: &str = "srb_upstream_errors_total";
pub const UPSTREAM_EXPIRIES: &str = "srb_upstream_session_expiries_total";
pub const WEBSOCKET_FAILURES: &str = "srb_websocket_failures_total";
pub const RTP_IN: &str = "srb_rtp_packets_received_total";
pub const RTP_OUT: &str = "srb_rtp_packets_sent_total";
pub const RTP_LOST: &str = "srb_rtp_packets_lost_total";
pub const CONCEALED: &str = "srb_rtp_frames_concealed_total";
pub const JITTER: &str = "srb_rtp_jitter_seconds";
pub const REGISTERED: &str = "srb_registered";

const SETUP_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0];
const REACTION_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5];
const JITTER_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16];

struct State {
    registry: Registry,
    /// The configured accounts and whether each is registered now.
    accounts: BTreeMap<String, bool>,
    draining: bool,
}

/// The daemon's metrics and readiness, shared (`Arc<Metrics>`) by the signalling loop, which
/// updates them, and the admin endpoint, which reads them.
pub struct Metrics {
    state: Mutex<State>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        r.gauge(ACTIVE_CALLS, "Calls in progress (ringing or answered).");
        r.gauge(
            DRAINING,
            "1 while the daemon drains (SIGTERM): new calls are refused.",
        );
        r.counter(
            CALLS,
            "Calls ended, by end reason and whether they were answered.",
        );
        r.histogram(
            SETUP,
            "Call set-up time: INVITE admitted to 200 OK (answered calls).",
            SETUP_BUCKETS,
        );
        r.histogram(
            UPSTREAM_CONNECT,
            "Upstream connect time: INVITE admitted to the realtime WebSocket open.",
            SETUP_BUCKETS,
        );
        r.histogram(
            FIRST_AUDIO,
            "Time to first model audio: 200 OK to the first model frame sent as RTP.",
            SETUP_BUCKETS,
        );
        r.counter(BARGE_INS, "Barge-ins: the caller talked over the model.");
        r.histogram(
            BARGE_IN_REACTION,
            "Barge-in reaction: speech_started handed in to playback flushed.",
            REACTION_BUCKETS,
        );
        r.counter(
            TRUNCATE_ERRORS,
            "Truncate requests the upstream answered with an error.",
        );
        r.counter(UPSTREAM_ERRORS, "Error events from the realtime upstream.");
        r.counter(
            UPSTREAM_EXPIRIES,
            "Calls ended because the upstream session reached its maximum duration.",
        );
        r.counter(
            WEBSOCKET_FAILURES,
            "Calls ended by an upstream WebSocket failure, by kind (upstream_failed: refused \
             or not connected before the answer; upstream_closed: closed during the call; \
             upstream_stalled: stopped reading what the bridge sent; answer_timeout: not \
             ready in time).",
        );
        r.counter(RTP_IN, "RTP packets accepted from callers.");
        r.counter(RTP_OUT, "RTP packets sent to callers.");
        r.counter(RTP_LOST, "RTP packets from callers lost (RFC 3550 A.3).");
        r.counter(
            CONCEALED,
            "Caller audio frames concealed (loss, gaps, flushes).",
        );
        r.histogram(
            JITTER,
            "Interarrival jitter of the caller's RTP at the call's end (RFC 3550 A.8).",
            JITTER_BUCKETS,
        );
        r.gauge(
            REGISTERED,
            "1 while the account is registered with its registrar, else 0.",
        );
        r.set(ACTIVE_CALLS, no_labels(), 0.0);
        r.set(DRAINING, no_labels(), 0.0);
        Self {
            state: Mutex::new(State {
                registry: r,
                accounts: BTreeMap::new(),
                draining: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The accounts readiness waits for (at start and after a reload): new ones start as not
    /// registered, removed ones are forgotten, the others keep their state.
    pub fn set_accounts<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut state = self.lock();
        let state = &mut *state;
        let old = std::mem::take(&mut state.accounts);
        for name in names {
            let registered = old.get(name).copied().unwrap_or(false);
            state.accounts.insert(name.to_owned(), registered);
        }
        for name in old.keys() {
            if !state.accounts.contains_key(name) {
                state
                    .registry
                    .remove(REGISTERED, &vec![("account", name.clone())]);
            }
        }
        for (name, registered) in &state.accounts {
            let value = if *registered { 1.0 } else { 0.0 };
            state
                .registry
                .set(REGISTERED, vec![("account", name.clone())], value);
        }
    }

    /// A registration event of `account` (one not configured, say removed by a reload, is
    /// ignored).
    pub fn registration(&self, account: &str, event: &RegistrationEvent) {
        let registered = matches!(event, RegistrationEvent::Registered { .. });
        let mut state = self.lock();
        let Some(slot) = state.accounts.get_mut(account) else {
            return;
        };
        *slot = registered;
        let value = if registered { 1.0 } else { 0.0 };
        state
            .registry
            .set(REGISTERED, vec![("account", account.to_owned())], value);
    }

    /// After each turn of the signalling loop: the calls up, and whether it drains.
    pub fn loop_turn(&self, active_calls: usize, draining: bool) {
        let mut state = self.lock();
        state.draining = draining;
        let draining = if draining { 1.0 } else { 0.0 };
        state.registry.set(DRAINING, no_labels(), draining);
        state
            .registry
            .set(ACTIVE_CALLS, no_labels(), active_calls as f64);
    }

    /// One call's record, when its task has finished.
    pub fn observe_call(&self, record: &CallRecord) {
        let media = record.media.as_ref();
        let mut state = self.lock();
        let r = &mut state.registry;
        let end = record.end.as_str();
        let answered = record.setup.is_some().to_string();
        r.inc(
            CALLS,
            vec![("end_reason", end.to_owned()), ("answered", answered)],
            1,
        );
        if let Some(setup) = record.setup {
            r.observe(SETUP, no_labels(), setup.as_secs_f64());
        }
        if let Some(connect) = record.upstream_connect {
            r.observe(UPSTREAM_CONNECT, no_labels(), connect.as_secs_f64());
        }
        if let Some(first) = record.first_model_audio {
            r.observe(FIRST_AUDIO, no_labels(), first.as_secs_f64());
        }
        r.inc(BARGE_INS, no_labels(), record.barge_ins);
        for reaction in &record.barge_in_reactions {
            r.observe(BARGE_IN_REACTION, no_labels(), reaction.as_secs_f64());
        }
        r.inc(TRUNCATE_ERRORS, no_labels(), record.truncate_errors);
        r.inc(
            UPSTREAM_ERRORS,
            no_labels(),
            record.upstream_errors.len() as u64,
        );
        match record.end {
            CallEnd::UpstreamExpired => r.inc(UPSTREAM_EXPIRIES, no_labels(), 1),
            CallEnd::UpstreamFailed
            | CallEnd::UpstreamClosed
            | CallEnd::UpstreamStalled
            | CallEnd::AnswerTimeout => {
                r.inc(WEBSOCKET_FAILURES, vec![("kind", end.to_owned())], 1);
            }
            _ => {}
        }
        if let Some(media) = media {
            r.inc(RTP_IN, no_labels(), media.received.packets_accepted);
            r.inc(RTP_OUT, no_labels(), media.packets_sent);
            r.inc(RTP_LOST, no_labels(), media.packets_lost.max(0) as u64);
            r.inc(CONCEALED, no_labels(), media.received.frames_concealed);
            // Jitter is in RTP timestamp units: the codec's clock (8 kHz G.711, 48 kHz Opus).
            let clock = record.codec.map_or(8000, |c| c.clock_rate()).max(1);
            if media.received.packets_accepted > 1 {
                let seconds = f64::from(media.received.jitter) / f64::from(clock);
                r.observe(JITTER, no_labels(), seconds);
            }
        }
    }

    /// Ready for calls: not draining and every configured account registered; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.lock();
        if state.draining {
            return Err("draining".to_owned());
        }
        let missing: Vec<&str> = state
            .accounts
            .iter()
            .filter(|(_, registered)| !**registered)
            .map(|(name, _)| name.as_str())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not registered: {}", missing.join(", ")))
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.lock().registry.render()
    }

    /// A counter's or gauge's value (tests).
    pub fn value(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.lock().registry.value(name, labels)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_and_gauges_render_with_help_type_and_escaped_labels() {
        let mut r = Registry::default();
        r.counter("x_total", "Things.\nWith a \\ backslash.");
        r.gauge("g", "A gauge.");
        r.inc("x_total", vec![("a", "q\"uo\\te\nnl".to_owned())], 2);
        r.inc("x_total", vec![("a", "q\"uo\\te\nnl".to_owned())], 3);
        r.set("g", no_labels(), 1.5);
        r.set("g", no_labels(), -2.0);
        assert_eq!(
            r.render(),
            "# HELP x_total Things.\\nWith a \\\\ backslash.\n\
             # TYPE x_total counter\n\
             x_total{a=\"q\\\"uo\\\\te\\nnl\"} 5\n\
             # HELP g A gauge.\n\
             # TYPE g gauge\n\
             g -2\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let mut r = Registry::default();
        r.histogram("h_seconds", "H.", &[0.1, 1.0, 5.0]);
        for v in [0.05, 0.1, 0.7, 3.0, 100.0] {
            r.observe("h_seconds", vec![("k", "v".to_owned())], v);
        }
        assert_eq!(
            r.render(),
            "# HELP h_seconds H.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{k=\"v\",le=\"0.1\"} 2\n\
             h_seconds_bucket{k=\"v\",le=\"1\"} 3\n\
             h_seconds_bucket{k=\"v\",le=\"5\"} 4\n\
             h_seconds_bucket{k=\"v\",le=\"+Inf\"} 5\n\
             h_seconds_sum{k=\"v\"} 103.85\n\
             h_seconds_count{k=\"v\"} 5\n"
        );
    }

    #[test]
    fn an_empty_family_has_only_its_help_and_type() {
        let mut r = Registry::default();
        r.histogram("h", "H.", &[1.0]);
        assert_eq!(r.render(), "# HELP h H.\n# TYPE h histogram\n");
        assert_eq!(num(f64::INFINITY), "+Inf");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(num(0.0025), "0.0025");
    }

    #[test]
    fn readiness_follows_draining_and_every_configured_account() {
        let m = Metrics::new();
        assert_eq!(m.readiness(), Ok(()));
        m.set_accounts(["pbx", "backup"]);
        assert_eq!(m.readiness(), Err("not registered: backup, pbx".into()));
        m.registration("pbx", &RegistrationEvent::Registered { expires: 600 });
        m.registration("backup", &RegistrationEvent::Registered { expires: 600 });
        m.registration("gone", &RegistrationEvent::Registered { expires: 600 });
        assert_eq!(m.readiness(), Ok(()));
        let pbx = vec![("account", "pbx".to_owned())];
        assert_eq!(m.value(REGISTERED, &pbx), Some(1.0));
        assert!(!m.render().contains("gone"));
        m.registration(
            "pbx",
            &RegistrationEvent::Failed {
                status: Some(403),
                reason: "Forbidden".into(),
                retry_in: Duration::from_secs(5),
            },
        );
        assert_eq!(m.value(REGISTERED, &pbx), Some(0.0));
        assert_eq!(m.readiness(), Err("not registered: pbx".into()));
        // A reload drops pbx: its series goes, backup keeps its state.
        m.set_accounts(["backup"]);
        assert_eq!(m.value(REGISTERED, &pbx), None);
        assert_eq!(m.readiness(), Ok(()));
        m.loop_turn(3, true);
        assert_eq!(m.readiness(), Err("draining".into()));
        assert_eq!(m.value(ACTIVE_CALLS, &no_labels()), Some(3.0));
        assert_eq!(m.value(DRAINING, &no_labels()), Some(1.0));
    }
}
