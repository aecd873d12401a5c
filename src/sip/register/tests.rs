//! Registration scenarios against a scripted registrar, on simulated time.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use super::*;
use crate::sip::auth::Challenge;
use crate::sip::message::parse;

fn config() -> RegisterConfig {
    RegisterConfig {
        registrar: "sip:pbx.example.com".into(),
        aor: "sip:2001@pbx.example.com".into(),
        auth_username: "2001".into(),
        password: "s3cret".into(),
        contact: "sip:2001@192.0.2.10:5060".into(),
        via: "UDP 192.0.2.10:5060".into(),
        expires: 600,
        user_agent: "sip-realtime-bridge/test".into(),
        timers: TimerConfig::default(),
        reliable: false,
    }
}

struct Sim {
    reg: Registration,
    t0: Instant,
    now: Instant,
    sent: Vec<SipMessage>,
    events: Vec<RegistrationEvent>,
}

impl Sim {
    fn new() -> Sim {
        let t0 = Instant::now();
        let mut n = 0u64;
        let reg = Registration::new(
            t0,
            config(),
            Box::new(move || {
                n += 1;
                n
            }),
        );
        let mut sim = Sim {
            reg,
            t0,
            now: t0,
            sent: Vec::new(),
            events: Vec::new(),
        };
        sim.drain();
        sim
    }

    fn drain(&mut self) {
        while let Some(t) = self.reg.poll_transmit() {
            self.sent.push(parse(&t.payload).unwrap());
        }
        while let Some(e) = self.reg.poll_event() {
            self.events.push(e);
        }
    }

    fn last(&self) -> &SipMessage {
        self.sent.last().unwrap()
    }

    /// The registrar answers the last REGISTER with `status` and `extra` header lines.
    fn answer(&mut self, ms: u64, status: u16, extra: &str) {
        self.now = self.t0 + Duration::from_millis(ms);
        let request = self.last().clone();
        let mut text = format!("SIP/2.0 {status} Whatever\r\n");
        for name in ["Via", "From", "Call-ID", "CSeq"] {
            text.push_str(&format!("{name}: {}\r\n", request.header(name).unwrap()));
        }
        text.push_str(&format!(
            "To: {};tag=reg1\r\n",
            request.header("To").unwrap()
        ));
        text.push_str(extra);
        text.push_str("Content-Length: 0\r\n\r\n");
        let response = parse(text.as_bytes()).unwrap();
        self.reg.handle_response(self.now, &response);
        self.drain();
    }

    fn run_to(&mut self, ms: u64) {
        let end = self.t0 + Duration::from_millis(ms);
        while let Some(at) = self.reg.poll_timeout() {
            if at > end {
                break;
            }
            self.now = at.max(self.now);
            self.reg.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }
}

const CHALLENGE: &str =
    "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n";

#[test]
fn challenge_answered_then_registered_and_refreshed_at_85_percent() {
    let mut sim = Sim::new();
    assert_eq!(sim.sent.len(), 1);
    let first = sim.last().clone();
    assert_eq!(first.method(), Some("REGISTER"));
    assert_eq!(first.header("Expires"), Some("600"));
    assert_eq!(first.header("Authorization"), None);
    sim.answer(40, 401, CHALLENGE);
    assert_eq!(sim.sent.len(), 2);
    let second = sim.last().clone();
    assert_eq!(second.call_id(), first.call_id(), "same Call-ID");
    assert_eq!(second.cseq().seq, first.cseq().seq + 1);
    let auth = second.header("Authorization").unwrap();
    // The value is the one the digest module computes for these inputs.
    let challenge = Challenge::parse(
        "Digest realm=\"pbx\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"",
        false,
    )
    .unwrap();
    let cnonce = auth
        .split("cnonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(
        auth,
        challenge.answer(
            "2001",
            "s3cret",
            "REGISTER",
            "sip:pbx.example.com",
            1,
            cnonce
        )
    );
    assert!(sim.events.is_empty());
    sim.answer(
        80,
        200,
        "Contact: <sip:2001@192.0.2.10:5060>;expires=300\r\n",
    );
    assert_eq!(
        sim.events,
        vec![RegistrationEvent::Registered { expires: 300 }]
    );
    assert!(matches!(sim.reg.state(), RegState::Registered { .. }));
    // Refresh at 85 % of the granted 300 s (255 s), with the nonce reused (nc 2).
    sim.run_to(80 + 254_999);
    assert_eq!(
        sim.sent.len(),
        2,
        "answered: no retransmission, and no refresh yet"
    );
    sim.run_to(80 + 255_000);
    assert_eq!(sim.sent.len(), 3);
    let refresh = sim.last();
    assert!(
        refresh
            .header("Authorization")
            .unwrap()
            .contains("nc=00000002")
    );
}

#[test]
fn wrong_password_fails_with_back_off_that_doubles_and_resets() {
    let mut sim = Sim::new();
    sim.answer(10, 401, CHALLENGE);
    // The same challenge again for the credentials just sent: refused.
    sim.answer(20, 401, CHALLENGE);
    assert_eq!(
        sim.events,
        vec![RegistrationEvent::Failed {
            status: Some(401),
            reason: "credentials refused".into(),
            retry_in: Duration::from_secs(5),
        }]
    );
    let sent = sim.sent.len();
    sim.run_to(20 + 4_999);
    assert_eq!(sim.sent.len(), sent);
    sim.run_to(20 + 5_000);
    assert_eq!(sim.sent.len(), sent + 1, "retried after 5 s");
    sim.answer(5_100, 503, "");
    let RegistrationEvent::Failed { retry_in, .. } = sim.events.last().unwrap() else {
        panic!()
    };
    assert_eq!(*retry_in, Duration::from_secs(10), "doubled");
    sim.run_to(15_100);
    sim.answer(15_200, 200, "Expires: 120\r\n");
    assert_eq!(
        sim.events.last(),
        Some(&RegistrationEvent::Registered { expires: 120 })
    );
    // Forgotten after a restart: the refresh gets 500, back-off starts from 5 s again.
    sim.run_to(15_200 + 102_000);
    sim.answer(117_300, 500, "");
    let RegistrationEvent::Failed { retry_in, .. } = sim.events.last().unwrap() else {
        panic!()
    };
    assert_eq!(*retry_in, Duration::from_secs(5));
}

#[test]
fn stale_nonce_is_retried_at_once_and_a_proxy_challenge_gets_proxy_authorization() {
    let mut sim = Sim::new();
    sim.answer(
        10,
        407,
        "Proxy-Authenticate: Digest realm=\"proxy\", nonce=\"p1\", qop=\"auth\"\r\n",
    );
    assert!(sim.last().header("Proxy-Authorization").is_some());
    assert!(sim.last().header("Authorization").is_none());
    sim.answer(
        20,
        407,
        "Proxy-Authenticate: Digest realm=\"proxy\", nonce=\"p2\", qop=\"auth\", stale=true\r\n",
    );
    assert!(
        sim.events.is_empty(),
        "stale is no failure: {:?}",
        sim.events
    );
    let value = sim.last().header("Proxy-Authorization").unwrap().to_owned();
    assert!(
        value.contains("nonce=\"p2\"") && value.contains("nc=00000001"),
        "{value}"
    );
}

#[test]
fn interval_too_brief_asks_for_min_expires() {
    let mut sim = Sim::new();
    sim.answer(10, 423, "Min-Expires: 3600\r\n");
    assert_eq!(sim.last().header("Expires"), Some("3600"));
    assert!(sim.events.is_empty());
    sim.answer(20, 200, "Expires: 3600\r\n");
    assert_eq!(
        sim.events,
        vec![RegistrationEvent::Registered { expires: 3600 }]
    );
    // A 423 without Min-Expires is a failure.
    let mut sim = Sim::new();
    sim.answer(10, 423, "");
    assert!(matches!(
        sim.events[0],
        RegistrationEvent::Failed {
            status: Some(423),
            ..
        }
    ));
}

#[test]
fn no_answer_is_a_failure_after_timer_f() {
    let mut sim = Sim::new();
    sim.run_to(31_999);
    assert!(sim.events.is_empty());
    let retransmissions = sim.sent.len();
    assert!(retransmissions > 5, "{retransmissions}");
    sim.run_to(32_000);
    assert!(matches!(
        sim.events[0],
        RegistrationEvent::Failed { status: None, .. }
    ));
}

#[test]
fn unregister_sends_expires_zero_with_credentials_and_ends() {
    let mut sim = Sim::new();
    sim.answer(10, 401, CHALLENGE);
    sim.answer(20, 200, "Expires: 600\r\n");
    sim.events.clear();
    sim.reg.unregister(sim.now);
    sim.drain();
    let request = sim.last();
    assert_eq!(request.header("Expires"), Some("0"));
    assert!(request.header("Authorization").is_some());
    sim.answer(40, 200, "");
    assert_eq!(sim.events, vec![RegistrationEvent::Unregistered]);
    assert_eq!(sim.reg.state(), RegState::Unregistered);
    assert_eq!(sim.reg.poll_timeout(), None, "nothing more to do");
    // Responses to old requests are ignored.
    let mut sim = Sim::new();
    let old = sim.last().clone();
    sim.answer(10, 401, CHALLENGE);
    sim.sent.push(old);
    sim.answer(20, 200, "Expires: 600\r\n");
    assert!(sim.events.is_empty(), "{:?}", sim.events);
}

#[test]
fn a_new_nonce_after_a_registrar_restart_is_answered_and_one_per_attempt_is_bounded() {
    let mut sim = Sim::new();
    sim.answer(10, 401, CHALLENGE);
    sim.answer(20, 200, "Expires: 60\r\n");
    sim.events.clear();
    // The refresh carries credentials for n1; the restarted registrar knows only n2.
    sim.run_to(20 + 51_000);
    assert!(
        sim.last()
            .header("Authorization")
            .unwrap()
            .contains("nonce=\"n1\"")
    );
    sim.answer(
        51_100,
        401,
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n2\", qop=\"auth\"\r\n",
    );
    assert!(
        sim.events.is_empty(),
        "a new nonce is no refusal: {:?}",
        sim.events
    );
    let retry = sim.last().header("Authorization").unwrap().to_owned();
    assert!(
        retry.contains("nonce=\"n2\"") && retry.contains("nc=00000001"),
        "{retry}"
    );
    sim.answer(51_200, 200, "Expires: 60\r\n");
    assert_eq!(
        sim.events,
        vec![RegistrationEvent::Registered { expires: 60 }]
    );

    // A registrar that draws a new nonce for every attempt, with the password wrong: three
    // rounds, then a failure with back-off rather than a loop.
    let mut sim = Sim::new();
    for round in 0..4u64 {
        sim.answer(
            10 + round * 10,
            401,
            &format!("WWW-Authenticate: Digest realm=\"pbx\", nonce=\"r{round}\"\r\n"),
        );
    }
    assert_eq!(sim.sent.len(), 4);
    assert!(matches!(
        sim.events.as_slice(),
        [RegistrationEvent::Failed {
            status: Some(401),
            ..
        }]
    ));
}
