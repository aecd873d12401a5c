//! Scenario tests with simulated time: exact retransmission schedules, state changes and
//! matching, plus a no-panic property test per machine.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

type Msg = &'static str;

fn wire(text: &str) -> Wire {
    Arc::from(text.as_bytes())
}

/// What the tests need from every machine, so one harness drives them all.
trait Machine {
    fn timeout(&self) -> Option<Instant>;
    fn fire(&mut self, now: Instant);
    fn transmit(&mut self) -> Option<Transmit>;
    fn event(&mut self) -> Option<TxEvent<Msg>>;
    fn terminated(&self) -> bool;
}

macro_rules! machine {
    ($ty:ident, $state:ident) => {
        impl Machine for $ty<Msg> {
            fn timeout(&self) -> Option<Instant> {
                self.poll_timeout()
            }
            fn fire(&mut self, now: Instant) {
                self.handle_timeout(now)
            }
            fn transmit(&mut self) -> Option<Transmit> {
                self.poll_transmit()
            }
            fn event(&mut self) -> Option<TxEvent<Msg>> {
                self.poll_event()
            }
            fn terminated(&self) -> bool {
                self.state() == $state::Terminated
            }
        }
    };
}
machine!(InviteServer, InviteServerState);
machine!(NonInviteServer, NonInviteServerState);
machine!(NonInviteClient, NonInviteClientState);
machine!(InviteClient, InviteClientState);

/// Drives a machine on simulated time (milliseconds since `base`), firing each timer exactly
/// at its deadline, and records everything it sends and reports.
struct Harness<T> {
    machine: T,
    base: Instant,
    now_ms: u64,
    /// (ms, payload, retransmission)
    sent: Vec<(u64, String, bool)>,
    events: Vec<(u64, TxEvent<Msg>)>,
}

impl<T: Machine> Harness<T> {
    fn new(base: Instant, machine: T) -> Self {
        let mut harness = Self {
            machine,
            base,
            now_ms: 0,
            sent: Vec::new(),
            events: Vec::new(),
        };
        harness.drain();
        harness
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn drain(&mut self) {
        while let Some(transmit) = self.machine.transmit() {
            let text = String::from_utf8(transmit.payload.to_vec()).unwrap();
            self.sent.push((self.now_ms, text, transmit.retransmission));
        }
        while let Some(event) = self.machine.event() {
            self.events.push((self.now_ms, event));
        }
    }

    /// Fires every timer due up to `ms`, each at its own deadline.
    fn advance_to(&mut self, ms: u64) {
        let end = self.at(ms);
        while let Some(deadline) = self.machine.timeout() {
            if deadline > end {
                break;
            }
            self.now_ms = u64::try_from((deadline - self.base).as_millis()).unwrap();
            self.machine.fire(deadline);
            assert!(self.machine.timeout().is_none_or(|next| next > deadline));
            self.drain();
        }
        self.now_ms = ms;
    }

    /// Advances to `ms`, then applies `action` at that time.
    fn act(&mut self, ms: u64, action: impl FnOnce(&mut T, Instant)) {
        self.advance_to(ms);
        let now = self.at(ms);
        action(&mut self.machine, now);
        self.drain();
    }

    /// The times of the retransmissions of `payload`.
    fn retransmissions_of(&self, payload: &str) -> Vec<u64> {
        self.sent
            .iter()
            .filter(|(_, text, again)| text == payload && *again)
            .map(|(ms, _, _)| *ms)
            .collect()
    }
}

const UDP: bool = false;
const TCP: bool = true;

fn config() -> TimerConfig {
    TimerConfig::default()
}

/// RFC 3261 17.2.1: Timer G starts at T1 and doubles up to T2; Timer H is 64*T1 = 32 s.
/// Intervals 0.5, 1, 2, 4, 4, ... from the final response at 0.
const G_SCHEDULE_MS: [u64; 10] = [
    500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500,
];

fn invite_server(reliable: bool) -> Harness<InviteServer<Msg>> {
    let base = Instant::now();
    let mut harness = Harness::new(base, InviteServer::new(base, config(), reliable));
    harness.act(0, |m, now| {
        m.send_provisional(now, 100, wire("100")).unwrap()
    });
    harness
}

#[test]
fn invite_server_retransmits_non_2xx_on_timer_g_until_timer_h() {
    let mut h = invite_server(UDP);
    h.act(0, |m, now| m.send_final(now, 486, wire("486")).unwrap());
    assert_eq!(h.machine.state(), InviteServerState::Completed);
    h.advance_to(40_000);
    assert_eq!(h.retransmissions_of("486"), G_SCHEDULE_MS);
    assert_eq!(
        h.events,
        vec![(32_000, TxEvent::Timeout), (32_000, TxEvent::Terminated)]
    );
    assert_eq!(h.machine.state(), InviteServerState::Terminated);
    assert_eq!(h.machine.poll_timeout(), None);
}

#[test]
fn invite_server_ack_stops_retransmissions_and_timer_i_ends_it() {
    let mut h = invite_server(UDP);
    h.act(0, |m, now| m.send_final(now, 486, wire("486")).unwrap());
    // The peer missed the 486 and retransmits its INVITE: answered with the 486 at once.
    h.act(1_000, |m, now| m.handle_request(now));
    h.act(2_000, |m, now| m.handle_ack(now, "ACK"));
    assert_eq!(h.machine.state(), InviteServerState::Confirmed);
    // ACK retransmissions and INVITE retransmissions are absorbed in Confirmed.
    h.act(3_000, |m, now| m.handle_ack(now, "ACK"));
    h.act(3_000, |m, now| m.handle_request(now));
    h.advance_to(40_000);
    assert_eq!(h.retransmissions_of("486"), [500, 1_000, 1_500]);
    // Timer I = T4 = 5 s after the ACK; no event reaches the TU but Terminated.
    assert_eq!(h.events, vec![(7_000, TxEvent::Terminated)]);
}

#[test]
fn invite_server_on_reliable_transport_never_retransmits_and_ack_terminates_at_once() {
    let mut h = invite_server(TCP);
    h.act(0, |m, now| m.send_final(now, 603, wire("603")).unwrap());
    assert_eq!(h.machine.poll_timeout(), Some(h.at(32_000)));
    h.act(10_000, |m, now| m.handle_ack(now, "ACK"));
    assert_eq!(h.machine.state(), InviteServerState::Terminated);
    assert!(h.retransmissions_of("603").is_empty());
    assert_eq!(h.events, vec![(10_000, TxEvent::Terminated)]);

    // Without the ACK, Timer H still fires at 64*T1.
    let mut h = invite_server(TCP);
    h.act(0, |m, now| m.send_final(now, 603, wire("603")).unwrap());
    h.advance_to(40_000);
    assert!(h.retransmissions_of("603").is_empty());
    assert_eq!(
        h.events,
        vec![(32_000, TxEvent::Timeout), (32_000, TxEvent::Terminated)]
    );
}

#[test]
fn invite_server_resends_latest_provisional_for_retransmitted_invite() {
    let base = Instant::now();
    let mut h = Harness::new(base, InviteServer::<Msg>::new(base, config(), UDP));
    // Nothing sent yet: nothing to resend.
    h.act(0, |m, now| m.handle_request(now));
    assert!(h.sent.is_empty());
    h.act(0, |m, now| {
        m.send_provisional(now, 100, wire("100")).unwrap()
    });
    h.act(200, |m, now| {
        m.send_provisional(now, 180, wire("180")).unwrap()
    });
    h.act(700, |m, now| m.handle_request(now));
    assert_eq!(h.retransmissions_of("180"), [700]);
    assert!(h.retransmissions_of("100").is_empty());
    assert_eq!(h.machine.poll_timeout(), None, "Proceeding has no timer");
    assert_eq!(
        h.machine.send_provisional(h.at(800), 200, wire("200")),
        Err(TransactionError::InvalidStatus { status: 200 })
    );
}

#[test]
fn invite_server_accepted_absorbs_invites_passes_acks_and_ends_on_timer_l() {
    let mut h = invite_server(UDP);
    h.act(0, |m, now| m.send_final(now, 200, wire("200")).unwrap());
    assert_eq!(h.machine.state(), InviteServerState::Accepted);
    // RFC 6026: a retransmitted INVITE is neither answered nor passed up.
    h.act(500, |m, now| m.handle_request(now));
    // The TU retransmits its 2xx (RFC 3261 13.3.1.4); the machine passes it on.
    h.act(500, |m, now| m.send_final(now, 200, wire("200")).unwrap());
    h.act(1_000, |m, now| m.handle_ack(now, "ACK-2xx"));
    h.act(1_200, |m, now| m.handle_ack(now, "ACK-2xx again"));
    assert_eq!(
        h.machine.send_final(h.at(1_300), 500, wire("500")),
        Err(TransactionError::ResponseNotAllowed {
            status: 500,
            state: "Accepted"
        })
    );
    h.advance_to(40_000);
    assert_eq!(
        h.sent,
        vec![
            (0, "100".to_owned(), false),
            (0, "200".to_owned(), false),
            (500, "200".to_owned(), true),
        ]
    );
    assert_eq!(
        h.events,
        vec![
            (1_000, TxEvent::AckReceived("ACK-2xx")),
            (1_200, TxEvent::AckReceived("ACK-2xx again")),
            (32_000, TxEvent::Terminated),
        ]
    );
}

#[test]
fn invite_server_timer_l_is_64_t1_on_reliable_transport_too() {
    let mut h = invite_server(TCP);
    h.act(0, |m, now| m.send_final(now, 200, wire("200")).unwrap());
    assert_eq!(h.machine.poll_timeout(), Some(h.at(32_000)));
}

#[test]
fn invite_server_transport_error_terminates() {
    let mut h = invite_server(UDP);
    h.act(0, |m, now| m.send_final(now, 486, wire("486")).unwrap());
    h.act(100, |m, now| m.handle_transport_error(now));
    h.act(200, |m, now| m.handle_transport_error(now));
    assert_eq!(
        h.events,
        vec![(100, TxEvent::TransportError), (100, TxEvent::Terminated)]
    );
    assert_eq!(h.machine.poll_timeout(), None);
}

#[test]
fn invite_server_transport_error_in_accepted_is_reported_but_keeps_absorbing() {
    let mut h = invite_server(UDP);
    h.act(0, |m, now| m.send_final(now, 200, wire("200")).unwrap());
    h.act(100, |m, now| m.handle_transport_error(now));
    assert_eq!(h.machine.state(), InviteServerState::Accepted);
    h.act(600, |m, now| m.handle_request(now));
    h.advance_to(40_000);
    assert_eq!(
        h.sent.len(),
        2,
        "100 and 200, nothing for the retransmitted INVITE"
    );
    assert_eq!(
        h.events,
        vec![
            (100, TxEvent::TransportError),
            (32_000, TxEvent::Terminated)
        ]
    );
}

#[test]
fn invite_client_in_accepted_ignores_transport_errors() {
    let mut h = invite_client(UDP);
    h.act(700, |m, now| m.handle_response(now, 200, "200", ack_for));
    h.act(800, |m, now| m.handle_transport_error(now));
    assert_eq!(h.machine.state(), InviteClientState::Accepted);
    // Before a response a transport error ends the transaction.
    let mut h = invite_client(UDP);
    h.act(100, |m, now| m.handle_transport_error(now));
    assert_eq!(
        h.events,
        vec![(100, TxEvent::TransportError), (100, TxEvent::Terminated)]
    );
    assert_eq!(h.machine.poll_timeout(), None);
}

#[test]
fn non_invite_server_answers_retransmissions_and_ends_on_timer_j() {
    let base = Instant::now();
    let mut h = Harness::new(base, NonInviteServer::<Msg>::new(base, config(), UDP));
    // Trying: nothing to resend, the retransmission is absorbed.
    h.act(100, |m, now| m.handle_request(now));
    assert!(h.sent.is_empty());
    h.act(200, |m, now| {
        m.send_provisional(now, 100, wire("100")).unwrap()
    });
    h.act(300, |m, now| m.handle_request(now));
    h.act(1_000, |m, now| m.send_final(now, 200, wire("200")).unwrap());
    assert_eq!(h.machine.state(), NonInviteServerState::Completed);
    h.act(1_500, |m, now| m.handle_request(now));
    h.act(4_000, |m, now| m.handle_request(now));
    assert!(h.machine.send_final(h.at(5_000), 500, wire("500")).is_err());
    h.advance_to(60_000);
    assert_eq!(h.retransmissions_of("100"), [300]);
    assert_eq!(h.retransmissions_of("200"), [1_500, 4_000]);
    // Timer J = 64*T1 after the final response, no retransmission of its own.
    assert_eq!(h.events, vec![(33_000, TxEvent::Terminated)]);
}

#[test]
fn non_invite_server_on_reliable_transport_terminates_with_the_final_response() {
    let base = Instant::now();
    let mut h = Harness::new(base, NonInviteServer::<Msg>::new(base, config(), TCP));
    h.act(0, |m, now| m.send_final(now, 200, wire("200")).unwrap());
    assert_eq!(h.machine.state(), NonInviteServerState::Terminated);
    assert_eq!(h.sent, vec![(0, "200".to_owned(), false)]);
    assert_eq!(h.events, vec![(0, TxEvent::Terminated)]);
}

fn non_invite_client(reliable: bool) -> Harness<NonInviteClient<Msg>> {
    let base = Instant::now();
    Harness::new(
        base,
        NonInviteClient::new(base, config(), reliable, wire("BYE")),
    )
}

#[test]
fn non_invite_client_timer_e_doubles_to_t2_until_timer_f() {
    let mut h = non_invite_client(UDP);
    assert_eq!(h.sent, vec![(0, "BYE".to_owned(), false)]);
    h.advance_to(40_000);
    // Intervals 0.5, 1, 2, 4, 4, ... (RFC 3261 17.1.2.2), Timer F at 64*T1.
    assert_eq!(h.retransmissions_of("BYE"), G_SCHEDULE_MS);
    assert_eq!(
        h.events,
        vec![(32_000, TxEvent::Timeout), (32_000, TxEvent::Terminated)]
    );
}

#[test]
fn non_invite_client_retransmits_every_t2_after_a_provisional() {
    let mut h = non_invite_client(UDP);
    h.act(1_000, |m, now| m.handle_response(now, 100, "100"));
    assert_eq!(h.machine.state(), NonInviteClientState::Proceeding);
    h.advance_to(40_000);
    // The Timer E armed in Trying (due at 1.5 s) still fires; from then on the interval is
    // T2, not the 2 s Trying would have used.
    assert_eq!(
        h.retransmissions_of("BYE"),
        [
            500, 1_500, 5_500, 9_500, 13_500, 17_500, 21_500, 25_500, 29_500
        ]
    );
    assert_eq!(
        h.events,
        vec![
            (
                1_000,
                TxEvent::Response {
                    status: 100,
                    message: "100"
                }
            ),
            (32_000, TxEvent::Timeout),
            (32_000, TxEvent::Terminated),
        ]
    );
}

#[test]
fn non_invite_client_final_response_stops_retransmission_and_timer_k_ends_it() {
    let mut h = non_invite_client(UDP);
    h.act(2_000, |m, now| m.handle_response(now, 200, "200"));
    assert_eq!(h.machine.state(), NonInviteClientState::Completed);
    // Retransmitted finals and late provisionals are absorbed.
    h.act(3_000, |m, now| m.handle_response(now, 200, "200 again"));
    h.act(3_000, |m, now| m.handle_response(now, 180, "late 180"));
    h.advance_to(40_000);
    assert_eq!(h.retransmissions_of("BYE"), [500, 1_500]);
    assert_eq!(
        h.events,
        vec![
            (
                2_000,
                TxEvent::Response {
                    status: 200,
                    message: "200"
                }
            ),
            (7_000, TxEvent::Terminated),
        ]
    );
}

#[test]
fn non_invite_client_on_reliable_transport_sends_once_and_timer_k_is_zero() {
    let mut h = non_invite_client(TCP);
    assert_eq!(h.machine.poll_timeout(), Some(h.at(32_000)));
    h.act(20_000, |m, now| m.handle_response(now, 404, "404"));
    assert_eq!(h.machine.state(), NonInviteClientState::Terminated);
    assert_eq!(h.sent, vec![(0, "BYE".to_owned(), false)]);
    assert_eq!(
        h.events,
        vec![
            (
                20_000,
                TxEvent::Response {
                    status: 404,
                    message: "404"
                }
            ),
            (20_000, TxEvent::Terminated),
        ]
    );
    // Timer F still bounds a silent peer on TCP.
    let mut h = non_invite_client(TCP);
    h.advance_to(40_000);
    assert_eq!(h.sent.len(), 1);
    assert_eq!(
        h.events,
        vec![(32_000, TxEvent::Timeout), (32_000, TxEvent::Terminated)]
    );
}

fn invite_client(reliable: bool) -> Harness<InviteClient<Msg>> {
    let base = Instant::now();
    Harness::new(
        base,
        InviteClient::new(base, config(), reliable, wire("INVITE")),
    )
}

fn ack_for(response: &Msg) -> Wire {
    wire(&format!("ACK for {response}"))
}

#[test]
fn invite_client_timer_a_doubles_without_cap_until_timer_b() {
    let mut h = invite_client(UDP);
    h.advance_to(40_000);
    // RFC 3261 17.1.1.2: 0.5, 1, 2, 4, 8, 16 s intervals; Timer B at 64*T1.
    assert_eq!(
        h.retransmissions_of("INVITE"),
        [500, 1_500, 3_500, 7_500, 15_500, 31_500]
    );
    assert_eq!(
        h.events,
        vec![(32_000, TxEvent::Timeout), (32_000, TxEvent::Terminated)]
    );
}

#[test]
fn invite_client_provisional_stops_timers_a_and_b() {
    let mut h = invite_client(UDP);
    h.act(1_000, |m, now| m.handle_response(now, 180, "180", ack_for));
    assert_eq!(h.machine.state(), InviteClientState::Proceeding);
    assert_eq!(h.machine.poll_timeout(), None);
    h.advance_to(100_000);
    assert_eq!(h.retransmissions_of("INVITE"), [500]);
    assert_eq!(
        h.events,
        vec![(
            1_000,
            TxEvent::Response {
                status: 180,
                message: "180"
            }
        )]
    );
}

#[test]
fn invite_client_acks_every_final_but_reports_it_once_until_timer_d() {
    let mut h = invite_client(UDP);
    h.act(1_000, |m, now| m.handle_response(now, 180, "180", ack_for));
    h.act(2_000, |m, now| m.handle_response(now, 486, "486", ack_for));
    assert_eq!(h.machine.state(), InviteClientState::Completed);
    // Retransmissions of the 486: the stored ACK is resent; the closure is not called again.
    h.act(2_500, |m, now| {
        m.handle_response(now, 486, "486", |_| panic!("ACK is built once"))
    });
    h.act(3_500, |m, now| {
        m.handle_response(now, 486, "486", |_| panic!("ACK is built once"))
    });
    h.advance_to(60_000);
    assert_eq!(
        h.sent,
        vec![
            (0, "INVITE".to_owned(), false),
            (500, "INVITE".to_owned(), true),
            (2_000, "ACK for 486".to_owned(), false),
            (2_500, "ACK for 486".to_owned(), true),
            (3_500, "ACK for 486".to_owned(), true),
        ]
    );
    // Timer D: 32 s after the final response.
    assert_eq!(
        h.events,
        vec![
            (
                1_000,
                TxEvent::Response {
                    status: 180,
                    message: "180"
                }
            ),
            (
                2_000,
                TxEvent::Response {
                    status: 486,
                    message: "486"
                }
            ),
            (34_000, TxEvent::Terminated),
        ]
    );
}

#[test]
fn invite_client_on_reliable_transport_acks_and_terminates_at_once() {
    let mut h = invite_client(TCP);
    assert_eq!(h.machine.poll_timeout(), Some(h.at(32_000)));
    h.act(3_000, |m, now| m.handle_response(now, 503, "503", ack_for));
    assert_eq!(h.machine.state(), InviteClientState::Terminated);
    assert_eq!(
        h.sent,
        vec![
            (0, "INVITE".to_owned(), false),
            (3_000, "ACK for 503".to_owned(), false),
        ]
    );
    assert_eq!(
        h.events,
        vec![
            (
                3_000,
                TxEvent::Response {
                    status: 503,
                    message: "503"
                }
            ),
            (3_000, TxEvent::Terminated),
        ]
    );
}

#[test]
fn invite_client_accepted_passes_every_2xx_to_the_tu_until_timer_m() {
    let mut h = invite_client(UDP);
    h.act(700, |m, now| m.handle_response(now, 200, "200", ack_for));
    assert_eq!(h.machine.state(), InviteClientState::Accepted);
    h.act(1_200, |m, now| {
        m.handle_response(now, 200, "200 again", ack_for)
    });
    // A non-2xx in Accepted is dropped (RFC 6026 7.2).
    h.act(1_300, |m, now| m.handle_response(now, 500, "500", ack_for));
    h.advance_to(60_000);
    // The machine never sends the ACK for a 2xx: that is the dialog's.
    assert_eq!(
        h.sent,
        vec![
            (0, "INVITE".to_owned(), false),
            (500, "INVITE".to_owned(), true),
        ]
    );
    assert_eq!(
        h.events,
        vec![
            (
                700,
                TxEvent::Response {
                    status: 200,
                    message: "200"
                }
            ),
            (
                1_200,
                TxEvent::Response {
                    status: 200,
                    message: "200 again"
                }
            ),
            (32_700, TxEvent::Terminated),
        ]
    );
}

#[test]
fn larger_t1_scales_every_timer() {
    let slow = TimerConfig {
        t1: Duration::from_secs(1),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
    };
    let base = Instant::now();
    let mut h = Harness::new(
        base,
        NonInviteClient::<Msg>::new(base, slow, UDP, wire("OPTIONS")),
    );
    h.advance_to(100_000);
    // Intervals 1, 2, 4, 4, ... s; Timer F at 64 s.
    let expected: Vec<u64> = [1_000, 3_000]
        .into_iter()
        .chain((7_000..=63_000).step_by(4_000))
        .collect();
    assert_eq!(h.retransmissions_of("OPTIONS"), expected);
    assert_eq!(h.events[0], (64_000, TxEvent::Timeout));
}

fn invite_fields<'a>(method: &'a str, branch: Option<&'a str>) -> RequestFields<'a> {
    RequestFields {
        method,
        request_uri: "sip:bot@192.0.2.10",
        top_via_branch: branch,
        top_via_sent_by: "pbx.example.com:5060",
        top_via: "SIP/2.0/UDP pbx.example.com:5060",
        call_id: "a84b4c76e66710",
        cseq_number: 314_159,
        from_tag: Some("1928301774"),
        to_tag: None,
    }
}

#[test]
fn rfc3261_keys_match_on_branch_sent_by_and_method() {
    let branch = Some("z9hG4bK776asdhds");
    let invite = TransactionKey::server(&invite_fields("INVITE", branch));
    // The ACK for a non-2xx carries the INVITE's branch and a To tag: same transaction.
    let ack = TransactionKey::server(&RequestFields {
        to_tag: Some("a6c85cf"),
        ..invite_fields("ACK", branch)
    });
    assert_eq!(ack, invite);
    // Host names and branch parameters compare case-insensitively.
    let shouted = TransactionKey::server(&RequestFields {
        top_via_sent_by: "PBX.Example.COM:5060",
        ..invite_fields("INVITE", Some("Z9HG4BK776ASDHDS"))
    });
    assert_eq!(shouted, invite);
    // Same branch from another sender is another transaction.
    let elsewhere = TransactionKey::server(&RequestFields {
        top_via_sent_by: "evil.example.net:5060",
        ..invite_fields("INVITE", branch)
    });
    assert_ne!(elsewhere, invite);
    // Only the branch, sent-by and method count: a changed Call-ID does not.
    let other_call_id = TransactionKey::server(&RequestFields {
        call_id: "other",
        ..invite_fields("INVITE", branch)
    });
    assert_eq!(other_call_id, invite);
}

#[test]
fn cancel_is_its_own_transaction_but_finds_its_invite() {
    for branch in [Some("z9hG4bK776asdhds"), None, Some("1234-rfc2543")] {
        let invite = TransactionKey::server(&invite_fields("INVITE", branch));
        let cancel = TransactionKey::server(&invite_fields("CANCEL", branch));
        assert_ne!(cancel, invite);
        assert_eq!(cancel.cancel_target(), Some(invite.clone()));
        assert_eq!(invite.cancel_target(), None);
    }
}

#[test]
fn rfc2543_fallback_matches_ack_to_invite_and_separates_the_rest() {
    for branch in [None, Some("1234-no-cookie")] {
        let invite = TransactionKey::server(&invite_fields("INVITE", branch));
        assert!(matches!(invite, TransactionKey::Rfc2543 { .. }));
        let ack = TransactionKey::server(&RequestFields {
            to_tag: Some("tag-from-our-response"),
            ..invite_fields("ACK", branch)
        });
        assert_eq!(ack, invite);
        let retransmission = TransactionKey::server(&invite_fields("INVITE", branch));
        assert_eq!(retransmission, invite);
        let next_cseq = TransactionKey::server(&RequestFields {
            cseq_number: 314_160,
            ..invite_fields("INVITE", branch)
        });
        assert_ne!(next_cseq, invite);
        let other_via = TransactionKey::server(&RequestFields {
            top_via: "SIP/2.0/UDP proxy.example.com:5060",
            ..invite_fields("INVITE", branch)
        });
        assert_ne!(other_via, invite);
        let other_from = TransactionKey::server(&RequestFields {
            from_tag: Some("x"),
            ..invite_fields("INVITE", branch)
        });
        assert_ne!(other_from, invite);
        // Outside the INVITE/ACK pair the To tag is part of the key.
        let bye = |to_tag| {
            TransactionKey::server(&RequestFields {
                to_tag,
                ..invite_fields("BYE", branch)
            })
        };
        assert_ne!(bye(Some("a")), bye(Some("b")));
        assert_eq!(bye(Some("a")), bye(Some("a")));
    }
}

#[test]
fn client_keys_match_branch_and_cseq_method() {
    let invite = TransactionKey::client("z9hG4bKnashds8", "INVITE");
    assert_eq!(TransactionKey::client("z9hG4bKnashds8", "INVITE"), invite);
    // A response to our CANCEL carries the INVITE's branch but CSeq method CANCEL.
    assert_ne!(TransactionKey::client("z9hG4bKnashds8", "CANCEL"), invite);
    assert_ne!(TransactionKey::client("z9hG4bKother", "INVITE"), invite);
}

#[test]
fn table_is_bounded_rejects_duplicates_and_frees_on_remove() {
    let mut table = TransactionTable::new(2);
    let first = TransactionKey::client("z9hG4bK1", "OPTIONS");
    let second = TransactionKey::client("z9hG4bK2", "OPTIONS");
    let third = TransactionKey::client("z9hG4bK3", "OPTIONS");
    let first_id = table.insert(first.clone()).unwrap();
    assert_eq!(
        table.insert(first.clone()),
        Err(TransactionError::DuplicateKey)
    );
    let second_id = table.insert(second.clone()).unwrap();
    assert_ne!(first_id, second_id);
    assert_eq!(
        table.insert(third.clone()),
        Err(TransactionError::TableFull { capacity: 2 })
    );
    assert_eq!(table.lookup(&first), Some(first_id));
    assert_eq!(table.remove(&first), Some(first_id));
    assert_eq!(table.lookup(&first), None);
    let third_id = table.insert(third.clone()).unwrap();
    assert_ne!(third_id, first_id, "ids are not reused");
    assert_eq!(table.len(), 2);
    assert_eq!(
        TransactionTable::default().capacity(),
        DEFAULT_TABLE_CAPACITY
    );
}

mod property {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Wait(u64),
        Request,
        Ack,
        Provisional(u16),
        Final(u16),
        Response(u16),
        TransportError,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..70_000).prop_map(Op::Wait),
            1 => Just(Op::Request),
            1 => Just(Op::Ack),
            1 => (0u16..800).prop_map(Op::Provisional),
            1 => (0u16..800).prop_map(Op::Final),
            3 => (0u16..800).prop_map(Op::Response),
            1 => Just(Op::TransportError),
        ]
    }

    /// Feeds one non-time input to a machine; inputs it has no use for are no-ops.
    trait Apply: Machine {
        fn apply(&mut self, now: Instant, op: &Op);
    }

    impl Apply for InviteServer<Msg> {
        fn apply(&mut self, now: Instant, op: &Op) {
            match op {
                Op::Request => self.handle_request(now),
                Op::Ack => self.handle_ack(now, "ACK"),
                Op::Provisional(status) => {
                    let _ = self.send_provisional(now, *status, wire("1xx"));
                }
                Op::Final(status) => {
                    let _ = self.send_final(now, *status, wire("final"));
                }
                Op::TransportError => self.handle_transport_error(now),
                Op::Wait(_) | Op::Response(_) => {}
            }
        }
    }

    impl Apply for NonInviteServer<Msg> {
        fn apply(&mut self, now: Instant, op: &Op) {
            match op {
                Op::Request => self.handle_request(now),
                Op::Provisional(status) => {
                    let _ = self.send_provisional(now, *status, wire("1xx"));
                }
                Op::Final(status) => {
                    let _ = self.send_final(now, *status, wire("final"));
                }
                Op::TransportError => self.handle_transport_error(now),
                Op::Wait(_) | Op::Ack | Op::Response(_) => {}
            }
        }
    }

    impl Apply for NonInviteClient<Msg> {
        fn apply(&mut self, now: Instant, op: &Op) {
            match op {
                Op::Response(status) => self.handle_response(now, *status, "response"),
                Op::TransportError => self.handle_transport_error(now),
                _ => {}
            }
        }
    }

    impl Apply for InviteClient<Msg> {
        fn apply(&mut self, now: Instant, op: &Op) {
            match op {
                Op::Response(status) => {
                    self.handle_response(now, *status, "response", |_| wire("ACK"))
                }
                Op::TransportError => self.handle_transport_error(now),
                _ => {}
            }
        }
    }

    fn check<T: Apply>(base: Instant, mut machine: T, ops: &[Op]) {
        let mut now = base;
        let mut terminated_events = 0;
        let mut drain = |machine: &mut T, was_terminated: bool| {
            let mut output = 0;
            while machine.transmit().is_some() {
                output += 1;
            }
            while let Some(event) = machine.event() {
                output += 1;
                if event == TxEvent::Terminated {
                    terminated_events += 1;
                }
            }
            assert!(!was_terminated || output == 0, "a terminated machine spoke");
            assert!(terminated_events <= 1, "Terminated reported twice");
            if machine.terminated() {
                assert_eq!(terminated_events, 1, "terminated without telling the TU");
            }
        };
        drain(&mut machine, false);
        for op in ops {
            let was_terminated = machine.terminated();
            match op {
                Op::Wait(ms) => {
                    now += Duration::from_millis(*ms);
                    machine.fire(now);
                    assert!(
                        machine.timeout().is_none_or(|deadline| deadline > now),
                        "poll_timeout in the past after handle_timeout"
                    );
                }
                other => {
                    machine.apply(now, other);
                    assert!(machine.timeout().is_none_or(|deadline| deadline >= now));
                }
            }
            drain(&mut machine, was_terminated);
            assert!(!was_terminated || machine.terminated(), "left Terminated");
            if machine.terminated() {
                assert_eq!(machine.timeout(), None, "timer armed after termination");
            }
        }
    }

    /// Any timer configuration, including zero and absurdly large values.
    fn any_config() -> impl Strategy<Value = TimerConfig> {
        prop_oneof![
            3 => Just(TimerConfig::default()),
            1 => (0u64..3_000, 0u64..10_000, 0u64..10_000).prop_map(|(t1, t2, t4)| TimerConfig {
                t1: Duration::from_millis(t1),
                t2: Duration::from_millis(t2),
                t4: Duration::from_millis(t4),
            }),
            1 => Just(TimerConfig {
                t1: Duration::MAX,
                t2: Duration::MAX,
                t4: Duration::MAX,
            }),
        ]
    }

    proptest! {
        #[test]
        fn invite_server_never_panics(reliable: bool, config in any_config(), ops in proptest::collection::vec(op(), 0..40)) {
            let base = Instant::now();
            check(base, InviteServer::<Msg>::new(base, config, reliable), &ops);
        }

        #[test]
        fn non_invite_server_never_panics(reliable: bool, config in any_config(), ops in proptest::collection::vec(op(), 0..40)) {
            let base = Instant::now();
            check(base, NonInviteServer::<Msg>::new(base, config, reliable), &ops);
        }

        #[test]
        fn non_invite_client_never_panics(reliable: bool, config in any_config(), ops in proptest::collection::vec(op(), 0..40)) {
            let base = Instant::now();
            check(base, NonInviteClient::<Msg>::new(base, config, reliable, wire("BYE")), &ops);
        }

        #[test]
        fn invite_client_never_panics(reliable: bool, config in any_config(), ops in proptest::collection::vec(op(), 0..40)) {
            let base = Instant::now();
            check(base, InviteClient::<Msg>::new(base, config, reliable, wire("INVITE")), &ops);
        }
    }
}

#[test]
fn oversized_keys_are_refused_so_a_flood_cannot_grow_the_table_without_bound() {
    let mut table = TransactionTable::new(10);
    let long_branch = format!("z9hG4bK{}", "x".repeat(MAX_KEY_BYTES));
    let key = TransactionKey::client(&long_branch, "OPTIONS");
    assert!(key.size() > MAX_KEY_BYTES);
    assert!(matches!(
        table.insert(key),
        Err(TransactionError::KeyTooLarge {
            limit: MAX_KEY_BYTES,
            ..
        })
    ));
    assert!(table.is_empty());
    let fits = TransactionKey::client("z9hG4bKshort", "OPTIONS");
    assert!(table.insert(fits).is_ok());
}
