//! Dialog tests on simulated time: every scenario drives a [`UasCall`] with text messages
//! (CRLF, parsed by the message module) and parses back everything it transmits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::sip::message::parse;
use crate::sip::sdp::{Codec, Direction};

const OFFER: &str = "v=0\no=alice 1 1 IN IP4 198.51.100.7\ns=-\nc=IN IP4 198.51.100.7\nt=0 0\n\
m=audio 4000 RTP/AVP 0 8 101\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\na=sendrecv\n";

const ANSWER: &str = "v=0\r\no=- 42 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\na=sendrecv\r\n";

const INVITE_HEAD: &str = "INVITE sip:bot@192.0.2.1 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1
Record-Route: <sip:p1.example.com;lr>
Record-Route: <sip:p2.example.com;lr>
Max-Forwards: 70
From: \"Alice\" <sip:alice@example.com>;tag=alicetag
To: <sip:bot@192.0.2.1>
Call-ID: call-1@198.51.100.7
CSeq: 10 INVITE
Contact: <sip:alice@198.51.100.7:5060>";

/// Headers of a caller that supports session timers and allows UPDATE.
const TIMER_AND_UPDATE: &str = "Supported: timer\nAllow: INVITE, ACK, CANCEL, BYE, UPDATE";

/// A message from `head` (LF line ends, no Content-Length) and an SDP `body` (LF too).
fn sip(head: &str, body: &str) -> SipMessage {
    let body = body.replace('\n', "\r\n");
    let mut text = head.replace('\n', "\r\n");
    if !body.is_empty() {
        text.push_str("\r\nContent-Type: application/sdp");
    }
    text.push_str(&format!("\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    parse(text.as_bytes()).unwrap()
}

fn in_dialog(method: &str, cseq: u32, branch: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("\n{extra}")
    };
    format!(
        "{method} sip:bridge@192.0.2.1:5060 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch={branch}
Max-Forwards: 70
From: \"Alice\" <sip:alice@example.com>;tag=alicetag
To: <sip:bot@192.0.2.1>;tag=uastag
Call-ID: call-1@198.51.100.7
CSeq: {cseq} {method}{extra}"
    )
}

fn ack(cseq: u32) -> String {
    in_dialog("ACK", cseq, &format!("z9hG4bKack{cseq}"), "")
}

fn config() -> UasConfig {
    UasConfig {
        contact: "sip:bridge@192.0.2.1:5060".to_owned(),
        local_tag: "uastag".to_owned(),
        via_sent_by: "192.0.2.1:5060".to_owned(),
        media: LocalMedia::new("192.0.2.1".parse().unwrap(), 20000, 42, 1),
        codecs: CodecPrefs::new([Codec::Pcmu, Codec::Pcma]),
        timers: TimerConfig::default(),
        reliable: false,
        session_timer: SessionTimerConfig::default(),
        user_agent: String::new(),
    }
}

/// One call on a simulated clock, recording what it sends and reports.
struct Rig {
    call: UasCall,
    base: Instant,
    now_ms: u64,
    sent: Vec<(u64, Transmit)>,
    events: Vec<DialogEvent>,
}

impl Rig {
    fn new(invite: SipMessage) -> Self {
        Self::with_config(invite, config())
    }

    fn with_config(invite: SipMessage, config: UasConfig) -> Self {
        let base = Instant::now();
        let call = UasCall::new(base, &invite, config).unwrap();
        let mut rig = Self {
            call,
            base,
            now_ms: 0,
            sent: Vec::new(),
            events: Vec::new(),
        };
        rig.drain();
        rig
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn drain(&mut self) {
        while let Some(t) = self.call.poll_transmit() {
            self.sent.push((self.now_ms, t));
        }
        while let Some(e) = self.call.poll_event() {
            self.events.push(e);
        }
    }

    /// Runs timers up to `ms`.
    fn advance_to(&mut self, ms: u64) {
        while let Some(deadline) = self.call.poll_timeout() {
            if deadline > self.at(ms) {
                break;
            }
            self.now_ms = deadline.duration_since(self.base).as_millis() as u64;
            self.call.handle_timeout(deadline);
            self.drain();
        }
        self.now_ms = ms;
    }

    fn act(&mut self, ms: u64, action: impl FnOnce(&mut UasCall, Instant)) {
        self.advance_to(ms);
        let now = self.at(ms);
        action(&mut self.call, now);
        self.drain();
    }

    fn request(&mut self, ms: u64, message: SipMessage) {
        let raw: Wire = Arc::from(message.to_bytes());
        self.act(ms, |call, now| call.handle_request(now, &message, raw));
    }

    fn response(&mut self, ms: u64, message: SipMessage) {
        self.act(ms, |call, now| call.handle_response(now, &message));
    }

    /// Everything sent so far, parsed, and forgotten.
    fn take(&mut self) -> Vec<(u64, SipMessage, Transmit)> {
        self.sent
            .drain(..)
            .map(|(ms, t)| (ms, parse(&t.payload).unwrap(), t))
            .collect()
    }

    fn take_events(&mut self) -> Vec<DialogEvent> {
        std::mem::take(&mut self.events)
    }

    /// Brings a call to Confirmed with the standard offer; the sent messages are dropped.
    fn confirmed() -> Self {
        let mut rig = Self::new(sip(INVITE_HEAD, OFFER));
        rig.act(0, |c, now| c.answer(now).unwrap());
        rig.request(100, sip(&ack(10), ""));
        rig.take();
        rig.take_events();
        rig
    }
}

fn status_line(m: &SipMessage) -> (u16, String) {
    (m.status_code().unwrap(), m.reason().unwrap().to_owned())
}

fn body(m: &SipMessage) -> String {
    String::from_utf8(m.body().to_vec()).unwrap()
}

fn reply_for(m: &SipMessage, code: u16, method: &str) {
    assert_eq!(m.status_code(), Some(code), "{m}");
    assert_eq!(m.cseq().method, method);
}

fn ok_to(request: &SipMessage) -> SipMessage {
    parse(&build_response(request, 200, "OK", None)).unwrap()
}

#[test]
fn basic_call_from_invite_to_remote_bye() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let trying = &sent[0].1;
    assert_eq!(status_line(trying), (100, "Trying".to_owned()));
    assert_eq!(trying.to().tag(), None);
    assert_eq!(sent[0].2.destination, Destination::ReplyPerVia);

    rig.act(10, |c, now| c.ring(now).unwrap());
    let sent = rig.take();
    let ringing = &sent[0].1;
    assert_eq!(status_line(ringing), (180, "Ringing".to_owned()));
    assert_eq!(ringing.to().tag(), Some("uastag"));
    assert_eq!(
        ringing.header("Contact"),
        Some("<sip:bridge@192.0.2.1:5060>")
    );
    // The dialog-creating responses copy the INVITE's Record-Routes, in order.
    let routes: Vec<String> = ringing
        .record_routes()
        .iter()
        .map(|r| r.uri.raw.clone())
        .collect();
    assert_eq!(routes, ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]);

    rig.act(20, |c, now| c.answer(now).unwrap());
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let ok = &sent[0].1;
    assert_eq!(status_line(ok), (200, "OK".to_owned()));
    assert_eq!(ok.to().tag(), Some("uastag"));
    assert_eq!(ok.from().tag(), Some("alicetag"));
    assert_eq!(ok.call_id(), "call-1@198.51.100.7");
    assert_eq!(ok.cseq().seq, 10);
    assert_eq!(ok.top_via().branch(), Some("z9hG4bKinv1"));
    assert_eq!(ok.content_type().as_deref(), Some("application/sdp"));
    assert_eq!(ok.header("Allow"), Some(ALLOW));
    assert_eq!(body(ok), ANSWER);
    // No Session-Expires in the INVITE: we ask for our default interval and refresh it.
    assert_eq!(ok.header("Session-Expires"), Some("1800;refresher=uas"));
    assert_eq!(ok.header("Require"), None);
    assert_eq!(ok.record_routes().len(), 2);
    let events = rig.take_events();
    assert!(
        matches!(&events[..], [DialogEvent::Answered, DialogEvent::MediaNegotiated(n)] if n.codec == Codec::Pcmu
        && n.telephone_event_pt == Some(101) && n.remote_rtp == "198.51.100.7:4000".parse().unwrap())
    );
    assert_eq!(rig.call.state(), CallState::Answered);

    rig.request(100, sip(&ack(10), ""));
    assert_eq!(rig.take_events(), vec![DialogEvent::Confirmed]);
    assert_eq!(rig.call.state(), CallState::Confirmed);
    rig.advance_to(5000);
    assert!(rig.take().is_empty(), "no 2xx retransmission after the ACK");

    let bye = sip(&in_dialog("BYE", 11, "z9hG4bKbye1", ""), "");
    rig.request(6000, bye.clone());
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    reply_for(&sent[0].1, 200, "BYE");
    assert_eq!(sent[0].1.top_via().branch(), Some("z9hG4bKbye1"));
    assert_eq!(
        rig.take_events(),
        vec![DialogEvent::Ended {
            by: EndedBy::Remote
        }]
    );
    // A retransmitted BYE gets the same 200 from the server transaction.
    rig.request(6500, bye);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].2.retransmission);
    rig.advance_to(60_000);
    assert!(rig.call.is_finished());
}

#[test]
fn two_xx_is_retransmitted_on_t1_doubling_to_t2_until_ack() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.advance_to(16_000);
    let times: Vec<u64> = rig
        .take()
        .into_iter()
        .filter(|(_, m, _)| m.status_code() == Some(200))
        .map(|(ms, _, _)| ms)
        .collect();
    assert_eq!(times, vec![0, 500, 1500, 3500, 7500, 11_500, 15_500]);
    rig.request(16_100, sip(&ack(10), ""));
    rig.advance_to(40_000);
    assert!(rig.take().is_empty());
    assert_eq!(rig.take_events().last(), Some(&DialogEvent::Confirmed));
}

#[test]
fn no_ack_within_64_t1_sends_bye_at_32_s() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.take_events();
    rig.advance_to(32_000);
    let sent = rig.take();
    let times: Vec<u64> = sent
        .iter()
        .filter(|(_, m, _)| m.status_code() == Some(200))
        .map(|(ms, _, _)| *ms)
        .collect();
    assert_eq!(
        times,
        vec![
            0, 500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
        ]
    );
    let (ms, bye, transmit) = sent.last().unwrap();
    assert_eq!(*ms, 32_000);
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(
        transmit.destination,
        Destination::Uri(Uri::parse("sip:p1.example.com;lr").unwrap())
    );
    assert_eq!(
        rig.take_events(),
        vec![
            DialogEvent::AckTimeout,
            DialogEvent::Ended {
                by: EndedBy::AckTimeout
            }
        ]
    );
}

#[test]
fn cancel_before_answer_gets_200_and_the_invite_487() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(10, |c, now| c.ring(now).unwrap());
    rig.take();
    let cancel = "CANCEL sip:bot@192.0.2.1 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1
Max-Forwards: 70
From: \"Alice\" <sip:alice@example.com>;tag=alicetag
To: <sip:bot@192.0.2.1>
Call-ID: call-1@198.51.100.7
CSeq: 10 CANCEL";
    rig.request(2000, sip(cancel, ""));
    let sent = rig.take();
    assert_eq!(sent.len(), 2);
    reply_for(&sent[0].1, 200, "CANCEL");
    assert_eq!(sent[0].1.to().tag(), Some("uastag"));
    let terminated = &sent[1].1;
    assert_eq!(
        status_line(terminated),
        (487, "Request Terminated".to_owned())
    );
    assert_eq!(terminated.cseq().seq, 10);
    assert_eq!(terminated.cseq().method, "INVITE");
    assert_eq!(terminated.top_via().branch(), Some("z9hG4bKinv1"));
    assert_eq!(terminated.to().tag(), Some("uastag"));
    assert_eq!(
        rig.take_events(),
        vec![
            DialogEvent::Cancelled,
            DialogEvent::Ended {
                by: EndedBy::Cancelled
            }
        ]
    );
    assert!(rig.call.answer(rig.at(2100)).is_err());
    // The ACK for the 487 (same branch) stops its retransmission.
    let ack487 = INVITE_HEAD
        .replace("INVITE sip", "ACK sip")
        .replace("10 INVITE", "10 ACK")
        .replace(
            "To: <sip:bot@192.0.2.1>",
            "To: <sip:bot@192.0.2.1>;tag=uastag",
        );
    rig.request(2100, sip(&ack487, ""));
    rig.advance_to(40_000);
    assert!(rig.take().is_empty());
    assert!(rig.call.is_finished());
}

#[test]
fn cancel_after_answer_only_gets_200() {
    let mut rig = Rig::confirmed();
    let cancel = "CANCEL sip:bot@192.0.2.1 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1
From: \"Alice\" <sip:alice@example.com>;tag=alicetag
To: <sip:bot@192.0.2.1>
Call-ID: call-1@198.51.100.7
CSeq: 10 CANCEL";
    rig.request(200, sip(cancel, ""));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    reply_for(&sent[0].1, 200, "CANCEL");
    assert!(rig.take_events().is_empty());
    assert_eq!(rig.call.state(), CallState::Confirmed);
}

#[test]
fn our_bye_uses_next_cseq_route_set_and_remote_target() {
    let mut rig = Rig::confirmed();
    rig.act(1000, |c, now| c.hang_up(now).unwrap());
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let (_, bye, transmit) = &sent[0];
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(
        bye.request_uri().unwrap().raw,
        "sip:alice@198.51.100.7:5060"
    );
    assert_eq!(bye.cseq().seq, 1);
    assert_eq!(bye.from().tag(), Some("uastag"));
    assert_eq!(bye.to().tag(), Some("alicetag"));
    assert_eq!(bye.call_id(), "call-1@198.51.100.7");
    let routes: Vec<String> = bye.routes().iter().map(|r| r.uri.raw.clone()).collect();
    assert_eq!(
        routes,
        vec!["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    );
    assert_eq!(
        transmit.destination,
        Destination::Uri(Uri::parse("sip:p1.example.com;lr").unwrap())
    );
    assert_eq!(
        rig.take_events(),
        vec![DialogEvent::Ended { by: EndedBy::Local }]
    );
    // Retransmitted until its response.
    rig.advance_to(1500);
    assert_eq!(rig.take().len(), 1);
    rig.response(1600, ok_to(bye));
    rig.advance_to(60_000);
    assert!(rig.take().is_empty());
    assert!(rig.call.is_finished());
}

#[test]
fn cseq_of_our_requests_increments() {
    // Session timer with us as refresher: the refresh UPDATE takes CSeq 1, the BYE 2.
    let head = format!("{INVITE_HEAD}\nSession-Expires: 120;refresher=uas\n{TIMER_AND_UPDATE}");
    let mut rig = Rig::new(sip(&head, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.request(100, sip(&ack(10), ""));
    rig.take();
    rig.advance_to(60_000);
    let sent = rig.take();
    let update = &sent.last().unwrap().1;
    assert_eq!(update.method(), Some("UPDATE"));
    assert_eq!(update.cseq().seq, 1);
    assert!(rig.take_events().contains(&DialogEvent::RefreshDue));
    rig.response(60_100, ok_to(update));
    rig.act(61_000, |c, now| c.hang_up(now).unwrap());
    let sent = rig.take();
    assert_eq!(sent[0].1.method(), Some("BYE"));
    assert_eq!(sent[0].1.cseq().seq, 2);
}

fn reinvite(cseq: u32, branch: &str, sdp: &str) -> SipMessage {
    sip(
        &in_dialog(
            "INVITE",
            cseq,
            branch,
            "Contact: <sip:alice@198.51.100.7:5060>",
        ),
        sdp,
    )
}

#[test]
fn reinvite_hold_and_resume() {
    let mut rig = Rig::confirmed();
    let hold = OFFER
        .replace("a=sendrecv", "a=sendonly")
        .replace("o=alice 1 1", "o=alice 1 2");
    rig.request(1000, reinvite(11, "z9hG4bKre1", &hold));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let ok = &sent[0].1;
    reply_for(ok, 200, "INVITE");
    let answer = body(ok);
    assert!(answer.contains("o=- 42 2 IN IP4 192.0.2.1\r\n"), "{answer}");
    assert!(answer.ends_with("a=recvonly\r\n"), "{answer}");
    let events = rig.take_events();
    match &events[..] {
        [DialogEvent::MediaChanged(terms, change)] => {
            assert_eq!(terms.direction, Direction::RecvOnly);
            assert!(change.hold_started);
            assert!(terms.is_hold());
        }
        other => panic!("{other:?}"),
    }
    rig.request(1100, sip(&ack(11), ""));
    rig.take();

    let resume = OFFER.replace("o=alice 1 1", "o=alice 1 3");
    rig.request(5000, reinvite(12, "z9hG4bKre2", &resume));
    let sent = rig.take();
    let answer = body(&sent[0].1);
    assert!(answer.contains("o=- 42 3 IN IP4 192.0.2.1\r\n"), "{answer}");
    assert!(answer.ends_with("a=sendrecv\r\n"), "{answer}");
    match &rig.take_events()[..] {
        [DialogEvent::MediaChanged(terms, change)] => {
            assert_eq!(terms.direction, Direction::SendRecv);
            assert!(change.resumed);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reinvite_with_zero_address_is_hold_and_new_port_moves_remote() {
    let mut rig = Rig::confirmed();
    let hold = OFFER.replace("c=IN IP4 198.51.100.7", "c=IN IP4 0.0.0.0");
    rig.request(1000, reinvite(11, "z9hG4bKre1", &hold));
    rig.request(1100, sip(&ack(11), ""));
    let events = rig.take_events();
    assert!(matches!(&events[..], [DialogEvent::MediaChanged(_, c)] if c.hold_started));
    let moved = OFFER
        .replace("m=audio 4000", "m=audio 5000")
        .replace("0 8 101", "8 101");
    rig.request(2000, reinvite(12, "z9hG4bKre2", &moved));
    let events = rig.take_events();
    match &events[..] {
        [DialogEvent::MediaChanged(terms, change)] => {
            assert!(change.resumed && change.remote_moved && change.codec_changed);
            assert_eq!(terms.codec, Codec::Pcma);
            assert_eq!(terms.remote_rtp, "198.51.100.7:5000".parse().unwrap());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn second_reinvite_while_one_is_pending_gets_491() {
    let mut rig = Rig::confirmed();
    rig.request(1000, reinvite(11, "z9hG4bKre1", OFFER));
    rig.take();
    rig.request(1200, reinvite(12, "z9hG4bKre2", OFFER));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(status_line(&sent[0].1), (491, "Request Pending".to_owned()));
    assert_eq!(sent[0].1.cseq().seq, 12);
}

#[test]
fn update_with_sdp_is_answered_in_its_200() {
    let mut rig = Rig::confirmed();
    let hold = OFFER.replace("a=sendrecv", "a=inactive");
    rig.request(1000, sip(&in_dialog("UPDATE", 11, "z9hG4bKup1", ""), &hold));
    let sent = rig.take();
    reply_for(&sent[0].1, 200, "UPDATE");
    assert!(body(&sent[0].1).ends_with("a=inactive\r\n"));
    assert!(matches!(&rig.take_events()[..], [DialogEvent::MediaChanged(_, c)] if c.hold_started));
}

#[test]
fn options_in_and_out_of_dialog() {
    let mut rig = Rig::confirmed();
    rig.request(1000, sip(&in_dialog("OPTIONS", 11, "z9hG4bKopt1", ""), ""));
    let sent = rig.take();
    let ok = &sent[0].1;
    reply_for(ok, 200, "OPTIONS");
    assert_eq!(ok.header("Allow"), Some(ALLOW));
    assert_eq!(ok.header("Accept"), Some("application/sdp"));
    assert_eq!(ok.header("Supported"), Some("timer"));

    let options = sip(
        "OPTIONS sip:bot@192.0.2.1 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKopt2
From: <sip:monitor@example.com>;tag=m1
To: <sip:bot@192.0.2.1>
Call-ID: ping-1
CSeq: 1 OPTIONS",
        "",
    );
    let OutOfDialog::Reply(bytes) = respond_out_of_dialog(&options, "t1") else {
        panic!("OPTIONS is answered");
    };
    let ok = parse(&bytes).unwrap();
    assert_eq!(status_line(&ok), (200, "OK".to_owned()));
    assert_eq!(ok.to().tag(), Some("t1"));
    assert_eq!(ok.header("Allow"), Some(ALLOW));
    assert_eq!(ok.header("Accept"), Some("application/sdp"));
    assert_eq!(ok.header("Supported"), Some("timer"));
}

#[test]
fn out_of_dialog_routing_results() {
    let invite = sip(INVITE_HEAD, OFFER);
    assert_eq!(respond_out_of_dialog(&invite, "t"), OutOfDialog::NewCall);
    let missing = parse(&not_found(&invite, "t")).unwrap();
    assert_eq!(status_line(&missing), (404, "Not Found".to_owned()));
    let message = sip(
        &in_dialog("MESSAGE", 1, "z9hG4bKm", "").replace(";tag=uastag", ""),
        "",
    );
    let OutOfDialog::Reply(bytes) = respond_out_of_dialog(&message, "t") else {
        panic!()
    };
    let reply = parse(&bytes).unwrap();
    assert_eq!(status_line(&reply), (501, "Not Implemented".to_owned()));
    assert_eq!(reply.header("Allow"), Some(ALLOW));
    let bye = sip(&in_dialog("BYE", 2, "z9hG4bKb", ""), "");
    let OutOfDialog::Reply(bytes) = respond_out_of_dialog(&bye, "t") else {
        panic!()
    };
    assert_eq!(parse(&bytes).unwrap().status_code(), Some(481));
    assert_eq!(
        respond_out_of_dialog(&sip(&ack(3), ""), "t"),
        OutOfDialog::Ignore
    );
}

#[test]
fn unknown_method_in_dialog_gets_501_with_allow() {
    let mut rig = Rig::confirmed();
    rig.request(1000, sip(&in_dialog("PUBLISH", 11, "z9hG4bKp", ""), ""));
    let sent = rig.take();
    assert_eq!(status_line(&sent[0].1), (501, "Not Implemented".to_owned()));
    assert_eq!(sent[0].1.header("Allow"), Some(ALLOW));
}

#[test]
fn cseq_regression_gets_500() {
    let mut rig = Rig::confirmed();
    rig.request(1000, sip(&in_dialog("OPTIONS", 11, "z9hG4bKo1", ""), ""));
    rig.take();
    rig.request(1100, sip(&in_dialog("OPTIONS", 11, "z9hG4bKo2", ""), ""));
    rig.request(1200, sip(&in_dialog("BYE", 5, "z9hG4bKo3", ""), ""));
    let sent = rig.take();
    assert_eq!(sent.len(), 2);
    for (_, m, _) in &sent {
        assert_eq!(status_line(m), (500, "Server Internal Error".to_owned()));
    }
    assert_eq!(rig.call.state(), CallState::Confirmed);
}

#[test]
fn offerless_invite_gets_our_offer_and_the_ack_answers() {
    let mut rig = Rig::new(sip(INVITE_HEAD, ""));
    rig.act(0, |c, now| c.answer(now).unwrap());
    let sent = rig.take();
    let ok = &sent.last().unwrap().1;
    assert_eq!(status_line(ok), (200, "OK".to_owned()));
    let offer = body(ok);
    assert!(
        offer.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"),
        "{offer}"
    );
    assert_eq!(rig.take_events(), vec![DialogEvent::Answered]);
    let answer = "v=0\no=alice 1 1 IN IP4 198.51.100.7\ns=-\nc=IN IP4 198.51.100.7\nt=0 0\n\
m=audio 4000 RTP/AVP 8 101\na=rtpmap:101 telephone-event/8000\na=sendrecv\n";
    rig.request(100, sip(&ack(10), answer));
    match &rig.take_events()[..] {
        [DialogEvent::MediaNegotiated(terms), DialogEvent::Confirmed] => {
            assert_eq!(terms.codec, Codec::Pcma);
            assert_eq!(terms.remote_rtp, "198.51.100.7:4000".parse().unwrap());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn offerless_invite_with_answerless_ack_ends_with_bye() {
    let mut rig = Rig::new(sip(INVITE_HEAD, ""));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.take();
    rig.request(100, sip(&ack(10), ""));
    let sent = rig.take();
    assert_eq!(sent[0].1.method(), Some("BYE"));
    assert_eq!(
        rig.take_events(),
        vec![
            DialogEvent::Answered,
            DialogEvent::Confirmed,
            DialogEvent::Ended {
                by: EndedBy::BadAnswer
            }
        ]
    );
}

#[test]
fn no_common_codec_gets_488_with_warning() {
    let g722 = OFFER.replace("0 8 101", "9 101");
    let mut rig = Rig::new(sip(INVITE_HEAD, &g722));
    rig.take();
    let result = rig.call.answer(rig.at(10));
    assert!(matches!(
        result,
        Err(DialogError::Negotiation(
            NegotiationError::NoCommonCodec { .. }
        ))
    ));
    rig.drain();
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let refusal = &sent[0].1;
    assert_eq!(
        status_line(refusal),
        (488, "Not Acceptable Here".to_owned())
    );
    let warning = refusal.header("Warning").unwrap();
    assert!(
        warning.starts_with("305 sip-realtime-bridge \""),
        "{warning}"
    );
    assert_eq!(
        rig.take_events(),
        vec![DialogEvent::Ended {
            by: EndedBy::Refused { status: 488 }
        }]
    );
}

#[test]
fn session_timer_is_echoed_with_refresher() {
    let head = format!("{INVITE_HEAD}\nSession-Expires: 1800\nSupported: timer");
    let mut rig = Rig::new(sip(&head, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    let ok = rig.take().pop().unwrap().1;
    let expires = ok.session_expires().unwrap();
    assert_eq!(expires.delta, 1800);
    assert_eq!(expires.refresher.as_deref(), Some("uac"));
    assert_eq!(ok.require(), vec!["timer"]);
    assert_eq!(ok.supported(), vec!["timer"]);
}

#[test]
fn session_without_refresh_expires_with_bye() {
    let head = format!("{INVITE_HEAD}\nSession-Expires: 90;refresher=uac\nSupported: timer");
    let mut rig = Rig::new(sip(&head, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.request(100, sip(&ack(10), ""));
    rig.take();
    rig.take_events();
    // A refresh at 40 s restarts the interval.
    rig.request(
        40_000,
        sip(
            &in_dialog(
                "UPDATE",
                11,
                "z9hG4bKup",
                "Session-Expires: 90;refresher=uac\nSupported: timer",
            ),
            "",
        ),
    );
    let ok = rig.take().pop().unwrap().1;
    reply_for(&ok, 200, "UPDATE");
    assert_eq!(ok.session_expires().unwrap().delta, 90);
    rig.advance_to(99_999);
    assert!(rig.take().is_empty());
    // 90 - min(32, 90/3) = 60 s after the refresh.
    rig.advance_to(100_000);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, 100_000);
    assert_eq!(sent[0].1.method(), Some("BYE"));
    assert_eq!(
        rig.take_events(),
        vec![DialogEvent::Ended {
            by: EndedBy::SessionExpired
        }]
    );
}

#[test]
fn session_expires_below_min_se_gets_422() {
    let head = format!("{INVITE_HEAD}\nSession-Expires: 60\nSupported: timer");
    let mut rig = Rig::new(sip(&head, OFFER));
    let sent = rig.take();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].1.status_code(), Some(100));
    let refusal = &sent[1].1;
    assert_eq!(
        status_line(refusal),
        (422, "Session Interval Too Small".to_owned())
    );
    assert_eq!(refusal.min_se(), Some(90));
    assert_eq!(
        rig.take_events(),
        vec![DialogEvent::Ended {
            by: EndedBy::Refused { status: 422 }
        }]
    );
}

#[test]
fn requests_for_another_dialog_get_481() {
    let mut rig = Rig::confirmed();
    let other = in_dialog("BYE", 11, "z9hG4bKx", "").replace("tag=uastag", "tag=other");
    rig.request(1000, sip(&other, ""));
    let sent = rig.take();
    assert_eq!(sent[0].1.status_code(), Some(481));
    assert_eq!(rig.call.state(), CallState::Confirmed);
}

#[test]
fn construction_refuses_non_invites_and_tagged_invites() {
    let bye = sip(&in_dialog("BYE", 1, "z9hG4bKb", ""), "");
    assert_eq!(
        UasCall::new(Instant::now(), &bye, config()).err(),
        Some(DialogError::NotAnInvite)
    );
    let tagged = sip(&in_dialog("INVITE", 1, "z9hG4bKb", ""), "");
    assert_eq!(
        UasCall::new(Instant::now(), &tagged, config()).err(),
        Some(DialogError::AlreadyInDialog)
    );
}

#[test]
fn hang_up_before_the_ack_waits_for_it() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.take();
    rig.act(100, |c, now| c.hang_up(now).unwrap());
    assert!(rig.take().is_empty(), "no BYE before the ACK (RFC 3261 15)");
    rig.request(200, sip(&ack(10), ""));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.method(), Some("BYE"));
    assert_eq!(
        rig.take_events()[2..],
        [
            DialogEvent::Confirmed,
            DialogEvent::Ended { by: EndedBy::Local }
        ]
    );
}

#[test]
fn ack_with_another_to_tag_does_not_confirm() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.take_events();
    rig.request(100, sip(&ack(10).replace("tag=uastag", "tag=other"), ""));
    assert!(rig.take_events().is_empty());
    assert_eq!(rig.call.state(), CallState::Answered);
}

#[test]
fn retransmitted_invite_gets_the_latest_provisional_then_is_absorbed() {
    let invite = sip(INVITE_HEAD, OFFER);
    let mut rig = Rig::new(invite.clone());
    rig.act(10, |c, now| c.ring(now).unwrap());
    rig.take();
    rig.request(500, invite.clone());
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.status_code(), Some(180));
    assert!(sent[0].2.retransmission);
    rig.act(600, |c, now| c.answer(now).unwrap());
    rig.take();
    rig.request(700, invite);
    assert!(
        rig.take().is_empty(),
        "the 2xx is retransmitted on its timer only"
    );
}

#[test]
fn bye_on_the_early_dialog_ends_the_invite_with_487() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(10, |c, now| c.ring(now).unwrap());
    rig.take();
    rig.request(100, sip(&in_dialog("BYE", 11, "z9hG4bKeb", ""), ""));
    let sent = rig.take();
    reply_for(&sent[0].1, 200, "BYE");
    reply_for(&sent[1].1, 487, "INVITE");
    assert_eq!(
        rig.take_events(),
        vec![DialogEvent::Ended {
            by: EndedBy::Remote
        }]
    );
}

#[test]
fn strict_route_goes_in_the_request_uri() {
    let head = INVITE_HEAD
        .replace("<sip:p1.example.com;lr>", "<sip:p1.example.com>")
        .replace("Record-Route: <sip:p2.example.com;lr>\n", "");
    let mut rig = Rig::new(sip(&head, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.request(100, sip(&ack(10), ""));
    rig.take();
    rig.act(200, |c, now| c.hang_up(now).unwrap());
    let (_, bye, transmit) = rig.take().pop().unwrap();
    assert_eq!(bye.request_uri().unwrap().raw, "sip:p1.example.com");
    let routes: Vec<String> = bye.routes().iter().map(|r| r.uri.raw.clone()).collect();
    assert_eq!(routes, vec!["sip:alice@198.51.100.7:5060"]);
    assert_eq!(
        transmit.destination,
        Destination::Uri(Uri::parse("sip:p1.example.com").unwrap())
    );
}

#[test]
fn no_route_set_sends_to_the_remote_target() {
    let head = INVITE_HEAD.replace(
        "Record-Route: <sip:p1.example.com;lr>\nRecord-Route: <sip:p2.example.com;lr>\n",
        "",
    );
    let mut rig = Rig::new(sip(&head, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.request(100, sip(&ack(10), ""));
    rig.take();
    rig.act(200, |c, now| c.hang_up(now).unwrap());
    let (_, bye, transmit) = rig.take().pop().unwrap();
    assert!(bye.routes().is_empty());
    assert_eq!(
        transmit.destination,
        Destination::Uri(Uri::parse("sip:alice@198.51.100.7:5060").unwrap())
    );
}

#[test]
fn update_with_offer_before_the_answer_gets_500_with_retry_after() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(10, |c, now| c.ring(now).unwrap());
    rig.take();
    rig.request(100, sip(&in_dialog("UPDATE", 11, "z9hG4bKu", ""), OFFER));
    let sent = rig.take();
    reply_for(&sent[0].1, 500, "UPDATE");
    // FNV-1a("call-1@198.51.100.7") % 11.
    assert_eq!(sent[0].1.header("Retry-After"), Some("10"));
    assert_eq!(rig.call.state(), CallState::Early);
}

#[test]
fn retry_after_of_the_500_is_spread_over_0_to_10_s_by_call_id() {
    // RFC 3261 14.2: random from 0 to 10 s; here a hash of the Call-ID, so that two calls
    // refused at once do not retry in lockstep, yet one call always names the same delay.
    let values: Vec<u32> = (0..200)
        .map(|n| retry_after_secs(&format!("c{n}")))
        .collect();
    assert!(values.iter().all(|v| *v <= 10));
    for expected in 0..=10 {
        assert!(values.contains(&expected), "{expected} never drawn");
    }
    assert_eq!(retry_after_secs("c0"), 9);
    assert_eq!(retry_after_secs("c6"), 0);
    assert_eq!(retry_after_secs("c0"), retry_after_secs("c0"));

    // The re-INVITE refused before the answer names the same value.
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.take();
    rig.request(100, reinvite(11, "z9hG4bKre", OFFER));
    let sent = rig.take();
    reply_for(&sent[0].1, 500, "INVITE");
    assert_eq!(sent[0].1.header("Retry-After"), Some("10"));
}

#[test]
fn we_refresh_at_half_the_interval_with_update() {
    let head = format!("{INVITE_HEAD}\nSession-Expires: 120;refresher=uas\n{TIMER_AND_UPDATE}");
    let mut rig = Rig::new(sip(&head, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    let ok = rig.take().pop().unwrap().1;
    assert_eq!(ok.header("Session-Expires"), Some("120;refresher=uas"));
    rig.request(100, sip(&ack(10), ""));
    rig.take_events();
    rig.advance_to(59_999);
    assert!(rig.take().is_empty());
    rig.advance_to(60_000);
    let (ms, update, _) = rig.take().pop().unwrap();
    assert_eq!(ms, 60_000);
    assert_eq!(update.method(), Some("UPDATE"));
    assert_eq!(update.header("Session-Expires"), Some("120;refresher=uas"));
    assert!(update.body().is_empty());
    assert_eq!(rig.take_events(), vec![DialogEvent::RefreshDue]);
    let mut reply = String::from_utf8(build_response(&update, 200, "OK", None)).unwrap();
    reply = reply.replace(
        "Content-Length: 0",
        "Session-Expires: 120;refresher=uas\r\nContent-Length: 0",
    );
    rig.response(60_050, parse(reply.as_bytes()).unwrap());
    // The next refresh is half an interval after the 2xx.
    rig.advance_to(120_049);
    assert!(
        rig.take()
            .iter()
            .all(|(_, m, _)| m.method() != Some("UPDATE"))
    );
    rig.advance_to(120_050);
    let sent = rig.take();
    assert_eq!(sent.last().unwrap().1.method(), Some("UPDATE"));
    assert_eq!(sent.last().unwrap().1.cseq().seq, 2);
}

#[test]
fn reliable_transport_still_retransmits_the_2xx() {
    let mut config = config();
    config.reliable = true;
    let mut rig = Rig::with_config(sip(INVITE_HEAD, OFFER), config);
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.advance_to(1000);
    // RFC 3261 13.3.1.4: the 2xx is the UAS core's to retransmit on any transport (the ACK
    // may cross an unreliable hop).
    let times: Vec<u64> = rig
        .take()
        .into_iter()
        .filter(|(_, m, _)| m.status_code() == Some(200))
        .map(|(ms, _, _)| ms)
        .collect();
    assert_eq!(times, vec![0, 500]);
    rig.request(1100, sip(&ack(10), ""));
    rig.request(2000, sip(&in_dialog("BYE", 11, "z9hG4bKb", ""), ""));
    assert_eq!(rig.take().len(), 1);
    // Only Timer L of the INVITE transaction (64*T1, RFC 6026) is left.
    rig.advance_to(31_999);
    assert!(!rig.call.is_finished());
    rig.advance_to(32_000);
    assert!(rig.call.is_finished());
    assert_eq!(rig.call.poll_timeout(), None);
}

/// Inputs for the no-panic property test.
#[derive(Debug, Clone)]
enum Step {
    Request {
        method: usize,
        cseq: u32,
        sdp: usize,
        tagged: bool,
    },
    Garbled(Vec<u8>),
    Response(u16),
    Ring,
    Answer,
    Reject(u16),
    HangUp,
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..8, 0u32..30, 0usize..4, any::<bool>()).prop_map(|(method, cseq, sdp, tagged)| {
            Step::Request {
                method,
                cseq,
                sdp,
                tagged,
            }
        }),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Step::Garbled),
        (100u16..700).prop_map(Step::Response),
        Just(Step::Ring),
        Just(Step::Answer),
        (0u16..800).prop_map(Step::Reject),
        Just(Step::HangUp),
        (0u64..100_000).prop_map(Step::Wait),
    ]
}

proptest! {
    #[test]
    fn no_panic_on_random_in_dialog_traffic(
        caller in 0usize..3,
        steps in proptest::collection::vec(step(), 0..40),
    ) {
        let methods = ["ACK", "BYE", "INVITE", "UPDATE", "OPTIONS", "CANCEL", "INFO", "REFER"];
        let bodies = ["", OFFER, "garbage\n", "v=0\nm=audio 0 RTP/AVP 0\n"];
        // Our default timer (refreshed at 900 s), or a 90 s one that we refresh by UPDATE or by
        // re-INVITE, so that the random responses hit our refreshes too.
        let heads = [
            INVITE_HEAD.to_owned(),
            format!("{INVITE_HEAD}\nSession-Expires: 90;refresher=uas\n{TIMER_AND_UPDATE}"),
            format!("{INVITE_HEAD}\nSession-Expires: 90;refresher=uas\n{CALLER_WITHOUT_UPDATE}"),
        ];
        let mut rig = Rig::new(sip(&heads[caller], ""));
        let mut ms = 0u64;
        let mut last_sent: Option<SipMessage> = None;
        for step in steps {
            ms += 1;
            match step {
                Step::Request { method, cseq, sdp, tagged } => {
                    let method = methods[method];
                    let mut text = in_dialog(method, cseq, &format!("z9hG4bK{cseq}{method}"), "");
                    if !tagged {
                        text = text.replace(";tag=uastag", "");
                    }
                    rig.request(ms, sip(&text, bodies[sdp]));
                }
                Step::Garbled(bytes) => {
                    // Garbled input never reaches a core unparsed; what parses is fed.
                    if let Ok(m) = parse(&bytes) {
                        rig.request(ms, m);
                    }
                }
                Step::Response(code) => {
                    if let Some(request) = &last_sent {
                        let reply = parse(&build_response(request, code, "X", Some("a"))).unwrap();
                        rig.response(ms, reply);
                    }
                }
                Step::Ring => rig.act(ms, |c, now| { let _ = c.ring(now); }),
                Step::Answer => rig.act(ms, |c, now| { let _ = c.answer(now); }),
                Step::Reject(code) => rig.act(ms, |c, now| { let _ = c.reject(now, code, "No"); }),
                Step::HangUp => rig.act(ms, |c, now| { let _ = c.hang_up(now); }),
                Step::Wait(delta) => { ms += delta; rig.advance_to(ms); }
            }
            for (_, m, _) in rig.take() {
                if m.is_request() {
                    last_sent = Some(m);
                }
            }
        }
        let ended = rig.events.iter().filter(|e| matches!(e, DialogEvent::Ended { .. })).count();
        prop_assert!(ended <= 1);
        if ended == 1 {
            let last_is_end = matches!(rig.events.last(), Some(DialogEvent::Ended { .. }));
            prop_assert!(last_is_end, "events after Ended: {:?}", rig.events);
        }
    }
}

#[test]
fn absurd_timer_values_do_not_panic() {
    use crate::sip::transaction::TimerConfig;
    let timers = TimerConfig {
        t1: Duration::MAX,
        t2: Duration::MAX,
        t4: Duration::MAX,
    };
    let t0 = Instant::now();
    let mut config = config();
    config.timers = timers;
    let mut call = UasCall::new(t0, &sip(INVITE_HEAD, OFFER), config).unwrap();
    call.answer(t0).unwrap();
    call.handle_timeout(t0 + Duration::from_secs(3600));
    while call.poll_transmit().is_some() {}
}

#[test]
fn a_bare_cr_in_the_callers_name_cannot_inject_headers_into_our_bye() {
    let head = INVITE_HEAD.replace(
        "From: \"Alice\" <sip:alice@example.com>;tag=alicetag",
        "From: \"Alice\rX-Evil: 1\" <sip:alice@example.com>;tag=alicetag",
    );
    let mut rig = Rig::new(sip(&head, OFFER));
    rig.act(10, |c, now| c.answer(now).unwrap());
    rig.request(20, sip(&ack(10), ""));
    rig.take();
    rig.act(30, |c, now| c.hang_up(now).unwrap());
    let sent = rig.take();
    let bye = sent
        .iter()
        .find(|(_, m, _)| m.method() == Some("BYE"))
        .expect("a BYE");
    let bytes = &bye.2.payload;
    let bare_cr = bytes.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n');
    assert!(!bare_cr, "{}", String::from_utf8_lossy(bytes));
    assert_eq!(bye.1.header("X-Evil"), None);
}

#[test]
fn a_flood_of_in_dialog_requests_keeps_a_bounded_number_of_transactions() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(10, |c, now| c.answer(now).unwrap());
    rig.request(20, sip(&ack(10), ""));
    rig.take();
    for n in 0..200u32 {
        let request = in_dialog("FOO", 11 + n, &format!("z9hG4bKfoo{n}"), "");
        rig.request(30, sip(&request, ""));
    }
    let sent = rig.take();
    // Every request is answered once...
    assert_eq!(sent.len(), 200);
    assert!(sent.iter().all(|(_, m, _)| m.status_code() == Some(501)));
    // ...but only a bounded number of transactions is kept to absorb retransmissions.
    assert!(
        rig.call.servers.len() <= MAX_SERVER_TRANSACTIONS,
        "{}",
        rig.call.servers.len()
    );
}

#[test]
fn a_short_session_interval_from_a_caller_without_timer_support_is_raised_not_refused() {
    // A proxy added Session-Expires for a caller that cannot retry after a 422.
    let head = format!("{INVITE_HEAD}\nSession-Expires: 60");
    let mut rig = Rig::new(sip(&head, OFFER));
    let sent = rig.take();
    assert_eq!(sent.len(), 1, "only the 100, no 422");
    rig.act(10, |c, now| c.answer(now).unwrap());
    let ok = rig.take().pop().unwrap().1;
    assert_eq!(ok.status_code(), Some(200));
    assert_eq!(ok.header("Session-Expires"), Some("90;refresher=uas"));
    assert_eq!(ok.header("Require"), None);
}

#[test]
fn an_update_in_the_early_dialog_starts_no_session_timer() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(10, |c, now| c.ring(now).unwrap());
    rig.take();
    let update = in_dialog(
        "UPDATE",
        11,
        "z9hG4bKearly",
        "Session-Expires: 90;refresher=uac\nSupported: timer",
    );
    rig.request(100, sip(&update, ""));
    let sent = rig.take();
    reply_for(&sent[0].1, 200, "UPDATE");
    assert_eq!(sent[0].1.header("Session-Expires"), None);
    // Nothing fires later: no refresh, and above all no BYE on the early dialog.
    rig.advance_to(200_000);
    assert!(rig.take().iter().all(|(_, m, _)| m.method() != Some("BYE")));
}

#[test]
fn a_required_extension_we_lack_gets_420_with_unsupported() {
    let invite = sip(&format!("{INVITE_HEAD}\nRequire: 100rel, timer"), OFFER);
    let OutOfDialog::Reply(reply) = respond_out_of_dialog(&invite, "t1") else {
        panic!("an INVITE requiring 100rel must not become a call");
    };
    let reply = parse(&reply).unwrap();
    assert_eq!(status_line(&reply), (420, "Bad Extension".to_owned()));
    assert_eq!(reply.header("Unsupported"), Some("100rel"));
    // What we support is fine.
    let invite = sip(&format!("{INVITE_HEAD}\nRequire: timer"), OFFER);
    assert!(matches!(
        respond_out_of_dialog(&invite, "t1"),
        OutOfDialog::NewCall
    ));
}

/// A message from `head` with a body of the given Content-Type (`None`: no Content-Type).
fn sip_typed(head: &str, body: &str, content_type: Option<&str>) -> SipMessage {
    let body = body.replace('\n', "\r\n");
    let mut text = head.replace('\n', "\r\n");
    if let Some(kind) = content_type {
        text.push_str(&format!("\r\nContent-Type: {kind}"));
    }
    text.push_str(&format!("\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    parse(text.as_bytes()).unwrap()
}

#[test]
fn in_dialog_requests_requiring_an_extension_we_lack_get_420() {
    let mut rig = Rig::confirmed();
    let head = in_dialog(
        "INVITE",
        11,
        "z9hG4bKreq",
        "Contact: <sip:alice@198.51.100.7:5060>\nRequire: 100rel, timer, foo",
    );
    rig.request(1000, sip(&head, OFFER));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let refusal = &sent[0].1;
    reply_for(refusal, 420, "INVITE");
    assert_eq!(status_line(refusal), (420, "Bad Extension".to_owned()));
    assert_eq!(refusal.header("Unsupported"), Some("100rel, foo"));
    assert_eq!(refusal.to().tag(), Some("uastag"));
    assert!(rig.take_events().is_empty(), "the media terms stay");
    // A final response to an INVITE: retransmitted (Timer G) until the caller's ACK.
    rig.advance_to(1500);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.status_code(), Some(420));
    assert!(sent[0].2.retransmission);
    let ack420 = in_dialog("ACK", 11, "z9hG4bKreq", "");
    rig.request(1600, sip(&ack420, ""));
    rig.advance_to(10_000);
    assert!(rig.take().is_empty());

    let update = in_dialog("UPDATE", 12, "z9hG4bKupd", "Require: precondition");
    rig.request(11_000, sip(&update, OFFER));
    let sent = rig.take();
    reply_for(&sent[0].1, 420, "UPDATE");
    assert_eq!(sent[0].1.header("Unsupported"), Some("precondition"));
    assert_eq!(rig.call.state(), CallState::Confirmed);
    assert!(rig.take_events().is_empty());

    // Requiring only what we support is fine.
    let update = in_dialog("UPDATE", 13, "z9hG4bKupd2", "Require: timer");
    rig.request(12_000, sip(&update, ""));
    reply_for(&rig.take()[0].1, 200, "UPDATE");
}

#[test]
fn an_offer_that_is_not_sdp_gets_415_with_accept() {
    let mut rig = Rig::confirmed();
    let head = in_dialog(
        "INVITE",
        11,
        "z9hG4bKtxt",
        "Contact: <sip:alice@198.51.100.7:5060>",
    );
    rig.request(1000, sip_typed(&head, "hello", Some("text/plain")));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    reply_for(&sent[0].1, 415, "INVITE");
    assert_eq!(
        status_line(&sent[0].1),
        (415, "Unsupported Media Type".to_owned())
    );
    assert_eq!(sent[0].1.header("Accept"), Some("application/sdp"));
    rig.request(1100, sip(&in_dialog("ACK", 11, "z9hG4bKtxt", ""), ""));

    let update = in_dialog("UPDATE", 12, "z9hG4bKmp", "");
    rig.request(
        2000,
        sip_typed(&update, OFFER, Some("multipart/mixed;boundary=x")),
    );
    let sent = rig.take();
    reply_for(&sent[0].1, 415, "UPDATE");
    assert_eq!(sent[0].1.header("Accept"), Some("application/sdp"));
    assert!(rig.take_events().is_empty());
    assert_eq!(rig.call.state(), CallState::Confirmed);

    // SDP without a Content-Type is still taken (some PBXs omit it).
    let update = in_dialog("UPDATE", 13, "z9hG4bKnoct", "");
    let hold = OFFER.replace("a=sendrecv", "a=sendonly");
    rig.request(3000, sip_typed(&update, &hold, None));
    reply_for(&rig.take()[0].1, 200, "UPDATE");
}

#[test]
fn an_accept_without_sdp_gets_406_when_the_response_must_carry_sdp() {
    let mut rig = Rig::confirmed();
    // A re-INVITE without offer: our 2xx would have to carry an offer.
    let head = in_dialog(
        "INVITE",
        11,
        "z9hG4bKacc",
        "Contact: <sip:alice@198.51.100.7:5060>\nAccept: application/json, text/*",
    );
    rig.request(1000, sip(&head, ""));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    reply_for(&sent[0].1, 406, "INVITE");
    assert_eq!(status_line(&sent[0].1), (406, "Not Acceptable".to_owned()));
    rig.request(1100, sip(&in_dialog("ACK", 11, "z9hG4bKacc", ""), ""));

    // An UPDATE with an offer whose answer the caller would not accept.
    let update = in_dialog(
        "UPDATE",
        12,
        "z9hG4bKacc2",
        "Accept: application/sdp;q=0, text/plain",
    );
    rig.request(2000, sip(&update, OFFER));
    reply_for(&rig.take()[0].1, 406, "UPDATE");
    // An UPDATE without an offer gets no SDP back: its Accept does not matter.
    let update = in_dialog("UPDATE", 13, "z9hG4bKacc3", "Accept: text/plain");
    rig.request(3000, sip(&update, ""));
    reply_for(&rig.take()[0].1, 200, "UPDATE");
    // Wildcards and several Accept lines are fine.
    let update = in_dialog(
        "UPDATE",
        14,
        "z9hG4bKacc4",
        "Accept: text/plain\nAccept: Application/*;q=0.5",
    );
    rig.request(4000, sip(&update, OFFER));
    reply_for(&rig.take()[0].1, 200, "UPDATE");
    assert!(rig.take_events().len() == 1);
}

#[test]
fn check_offer_acceptable_for_initial_invites() {
    let ok = sip(INVITE_HEAD, OFFER);
    assert_eq!(check_offer_acceptable(&ok), None);
    let offerless = sip(INVITE_HEAD, "");
    assert_eq!(check_offer_acceptable(&offerless), None);
    let star = sip(&format!("{INVITE_HEAD}\nAccept: */*"), OFFER);
    assert_eq!(check_offer_acceptable(&star), None);

    let text = sip_typed(INVITE_HEAD, "hi", Some("text/plain"));
    let refusal = check_offer_acceptable(&text).unwrap();
    assert_eq!(
        refusal,
        Refusal {
            status: 415,
            reason: "Unsupported Media Type",
            headers: vec![
                ("Accept", "application/sdp".to_owned()),
                ("Accept-Encoding", "identity".to_owned())
            ],
        }
    );
    let gzip = sip(&format!("{INVITE_HEAD}\nContent-Encoding: gzip"), OFFER);
    assert_eq!(check_offer_acceptable(&gzip).map(|r| r.status), Some(415));
    let identity = sip(&format!("{INVITE_HEAD}\nContent-Encoding: identity"), OFFER);
    assert_eq!(check_offer_acceptable(&identity), None);
    let reply = parse(&refusal.response(&text, "t1")).unwrap();
    assert_eq!(
        status_line(&reply),
        (415, "Unsupported Media Type".to_owned())
    );
    assert_eq!(reply.header("Accept"), Some("application/sdp"));
    assert_eq!(reply.to().tag(), Some("t1"));

    // An offerless INVITE gets our offer in the 2xx: its Accept matters too.
    let json = sip(&format!("{INVITE_HEAD}\nAccept: application/json"), "");
    let refusal = check_offer_acceptable(&json).unwrap();
    assert_eq!((refusal.status, refusal.reason), (406, "Not Acceptable"));
    let empty = sip(&format!("{INVITE_HEAD}\nAccept: "), OFFER);
    assert_eq!(check_offer_acceptable(&empty).map(|r| r.status), Some(406));

    // Other methods are not its business.
    let bye = sip_typed(
        &in_dialog("BYE", 2, "z9hG4bKb", ""),
        "x",
        Some("text/plain"),
    );
    assert_eq!(check_offer_acceptable(&bye), None);
}

#[test]
fn without_session_expires_we_insert_ours_and_refresh() {
    // The caller supports timers but asks for none (RFC 4028 section 9): ours, we refresh,
    // and the caller is told it must honour the timer.
    let mut config = config();
    config.session_timer.session_expires = 300;
    let head = format!("{INVITE_HEAD}\nSupported: timer\nAllow: INVITE, ACK, BYE, UPDATE");
    let mut rig = Rig::with_config(sip(&head, OFFER), config.clone());
    rig.act(0, |c, now| c.answer(now).unwrap());
    let ok = rig.take().pop().unwrap().1;
    assert_eq!(ok.header("Session-Expires"), Some("300;refresher=uas"));
    assert_eq!(ok.require(), vec!["timer"]);
    rig.request(100, sip(&ack(10), ""));
    rig.advance_to(149_999);
    assert!(rig.take().is_empty());
    rig.advance_to(150_000);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].1.header("Session-Expires"),
        Some("300;refresher=uas")
    );

    // A caller without timer support: still ours, we refresh, and no Require: timer.
    let mut rig = Rig::with_config(sip(INVITE_HEAD, OFFER), config.clone());
    rig.act(0, |c, now| c.answer(now).unwrap());
    let ok = rig.take().pop().unwrap().1;
    assert_eq!(ok.header("Session-Expires"), Some("300;refresher=uas"));
    assert_eq!(ok.header("Require"), None);

    // The interval is never below our Min-SE, nor below the caller's.
    config.session_timer.session_expires = 30;
    let mut rig = Rig::with_config(sip(INVITE_HEAD, OFFER), config.clone());
    rig.act(0, |c, now| c.answer(now).unwrap());
    let ok = rig.take().pop().unwrap().1;
    assert_eq!(ok.header("Session-Expires"), Some("90;refresher=uas"));
    let head = format!("{INVITE_HEAD}\nMin-SE: 600");
    let mut rig = Rig::with_config(sip(&head, OFFER), config.clone());
    rig.act(0, |c, now| c.answer(now).unwrap());
    let ok = rig.take().pop().unwrap().1;
    assert_eq!(ok.header("Session-Expires"), Some("600;refresher=uas"));

    // Session timers off: nothing inserted.
    config.session_timer.enabled = false;
    let mut rig = Rig::with_config(sip(INVITE_HEAD, OFFER), config);
    rig.act(0, |c, now| c.answer(now).unwrap());
    let ok = rig.take().pop().unwrap().1;
    assert_eq!(ok.header("Session-Expires"), None);
}

/// A response to `request`: `headers` (LF-separated) and an SDP `sdp` (LF) added.
fn respond(request: &SipMessage, code: u16, reason: &str, headers: &str, sdp: &str) -> SipMessage {
    let base = String::from_utf8(build_response(request, code, reason, None)).unwrap();
    let mut text = base
        .strip_suffix("Content-Length: 0\r\n\r\n")
        .unwrap()
        .to_owned();
    for line in headers.lines().filter(|l| !l.is_empty()) {
        text.push_str(line);
        text.push_str("\r\n");
    }
    let sdp = sdp.replace('\n', "\r\n");
    if !sdp.is_empty() {
        text.push_str("Content-Type: application/sdp\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len()));
    parse(text.as_bytes()).unwrap()
}

/// A confirmed call where we refresh every `interval` seconds (`refresher=uas`); `caller` adds
/// headers to the INVITE (Allow, Supported).
fn refreshing(interval: u32, caller: &str) -> Rig {
    let head = format!("{INVITE_HEAD}\nSession-Expires: {interval};refresher=uas\n{caller}");
    let mut rig = Rig::new(sip(&head, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.request(100, sip(&ack(10), ""));
    rig.take();
    rig.take_events();
    rig
}

/// Runs to `ms` and returns the one request sent then (retransmissions aside).
fn next_request(rig: &mut Rig, ms: u64) -> SipMessage {
    rig.advance_to(ms);
    let sent: Vec<_> = rig
        .take()
        .into_iter()
        .filter(|(_, m, t)| m.is_request() && !t.retransmission)
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, ms);
    sent.into_iter().next().unwrap().1
}

fn requests_sent(rig: &mut Rig) -> Vec<(u64, String)> {
    rig.take()
        .into_iter()
        .filter(|(_, m, t)| m.is_request() && !t.retransmission)
        .map(|(ms, m, _)| (ms, m.method().unwrap().to_owned()))
        .collect()
}

#[test]
fn a_refused_refresh_keeps_the_expiry_and_ends_the_session_with_bye() {
    for code in [500, 488, 403, 503, 480] {
        let mut rig = refreshing(120, TIMER_AND_UPDATE);
        let update = next_request(&mut rig, 60_000);
        assert_eq!(update.method(), Some("UPDATE"));
        rig.response(60_050, respond(&update, code, "No", "", ""));
        // No retry; the session still expires 120 - min(32, 120/3) s after the answer.
        rig.advance_to(87_999);
        assert!(requests_sent(&mut rig).is_empty(), "{code}");
        assert_eq!(rig.call.state(), CallState::Confirmed);
        let bye = next_request(&mut rig, 88_000);
        assert_eq!(bye.method(), Some("BYE"), "{code}");
        assert_eq!(bye.cseq().seq, 2);
        assert_eq!(
            rig.take_events(),
            vec![
                DialogEvent::RefreshDue,
                DialogEvent::Ended {
                    by: EndedBy::SessionExpired
                }
            ],
            "{code}"
        );
    }
}

#[test]
fn a_491_to_our_refresh_is_retried_after_1_s() {
    let mut rig = refreshing(120, TIMER_AND_UPDATE);
    let update = next_request(&mut rig, 60_000);
    rig.response(60_050, respond(&update, 491, "Request Pending", "", ""));
    rig.advance_to(61_049);
    assert!(requests_sent(&mut rig).is_empty());
    let retry = next_request(&mut rig, 61_050);
    assert_eq!(retry.method(), Some("UPDATE"));
    assert_eq!(retry.cseq().seq, 2);
    assert_eq!(retry.header("Session-Expires"), Some("120;refresher=uas"));
    rig.response(61_100, ok_to(&retry));
    // The 2xx restarts the interval: next refresh 60 s later, no expiry at 88 s.
    rig.advance_to(121_099);
    assert!(requests_sent(&mut rig).is_empty());
    assert_eq!(next_request(&mut rig, 121_100).method(), Some("UPDATE"));
    assert_eq!(
        rig.take_events(),
        vec![
            DialogEvent::RefreshDue,
            DialogEvent::RefreshDue,
            DialogEvent::RefreshDue
        ]
    );
}

#[test]
fn a_422_to_our_refresh_is_retried_with_its_min_se() {
    let mut rig = refreshing(120, TIMER_AND_UPDATE);
    let update = next_request(&mut rig, 60_000);
    assert_eq!(update.header("Min-SE"), None);
    let too_small = respond(
        &update,
        422,
        "Session Interval Too Small",
        "Min-SE: 300",
        "",
    );
    rig.response(60_050, too_small);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let retry = &sent[0].1;
    assert_eq!(retry.method(), Some("UPDATE"));
    assert_eq!(retry.cseq().seq, 2);
    assert_eq!(retry.header("Session-Expires"), Some("300;refresher=uas"));
    assert_eq!(retry.min_se(), Some(300));
    rig.response(
        60_100,
        respond(retry, 200, "OK", "Session-Expires: 300;refresher=uas", ""),
    );
    // The longer interval holds: no expiry at 88 s, next refresh 150 s after the 2xx.
    rig.advance_to(210_099);
    assert!(requests_sent(&mut rig).is_empty());
    let next = next_request(&mut rig, 210_100);
    assert_eq!(next.header("Session-Expires"), Some("300;refresher=uas"));
    assert_eq!(next.min_se(), Some(300));

    // A 422 that does not ask for more is a refusal like any other.
    let mut rig = refreshing(120, TIMER_AND_UPDATE);
    let update = next_request(&mut rig, 60_000);
    rig.response(60_050, respond(&update, 422, "Too Small", "Min-SE: 90", ""));
    rig.advance_to(87_999);
    assert!(requests_sent(&mut rig).is_empty());
    assert_eq!(next_request(&mut rig, 88_000).method(), Some("BYE"));
}

#[test]
fn a_refresh_without_response_ends_the_call_with_bye() {
    let mut rig = refreshing(1800, TIMER_AND_UPDATE);
    let update = next_request(&mut rig, 900_000);
    assert_eq!(update.method(), Some("UPDATE"));
    // Timer F: 64*T1 = 32 s of retransmissions, then BYE.
    rig.advance_to(931_999);
    assert!(requests_sent(&mut rig).is_empty());
    let bye = next_request(&mut rig, 932_000);
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(
        rig.take_events(),
        vec![
            DialogEvent::RefreshDue,
            DialogEvent::Ended {
                by: EndedBy::RefreshTimeout
            }
        ]
    );
}

#[test]
fn a_408_or_481_to_our_refresh_ends_the_call() {
    // 408: the request timed out downstream; we send BYE.
    let mut rig = refreshing(120, TIMER_AND_UPDATE);
    let update = next_request(&mut rig, 60_000);
    rig.response(60_050, respond(&update, 408, "Request Timeout", "", ""));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.method(), Some("BYE"));
    assert_eq!(
        rig.take_events()[1..],
        [DialogEvent::Ended {
            by: EndedBy::RefreshTimeout
        }]
    );
    // 481: the dialog is gone at the peer; no BYE for it.
    let mut rig = refreshing(120, TIMER_AND_UPDATE);
    let update = next_request(&mut rig, 60_000);
    rig.response(60_050, respond(&update, 481, "Gone", "", ""));
    rig.advance_to(200_000);
    assert!(requests_sent(&mut rig).is_empty());
    assert_eq!(
        rig.take_events()[1..],
        [DialogEvent::Ended {
            by: EndedBy::DialogGone
        }]
    );
    assert_eq!(rig.call.state(), CallState::Ended);
    assert!(rig.call.is_finished());
}

const CALLER_WITHOUT_UPDATE: &str = "Supported: timer\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS";

#[test]
fn without_update_in_allow_we_refresh_with_a_reinvite_and_ack_its_2xx() {
    let mut rig = refreshing(120, CALLER_WITHOUT_UPDATE);
    rig.advance_to(60_000);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let (_, invite, transmit) = &sent[0];
    assert_eq!(invite.method(), Some("INVITE"));
    assert_eq!(invite.cseq().seq, 1);
    assert_eq!(
        invite.request_uri().unwrap().raw,
        "sip:alice@198.51.100.7:5060"
    );
    assert_eq!(invite.to().tag(), Some("alicetag"));
    assert_eq!(invite.from().tag(), Some("uastag"));
    assert_eq!(invite.routes().len(), 2);
    assert_eq!(
        transmit.destination,
        Destination::Uri(Uri::parse("sip:p1.example.com;lr").unwrap())
    );
    assert_eq!(invite.header("Session-Expires"), Some("120;refresher=uas"));
    assert_eq!(
        invite.header("Contact"),
        Some("<sip:bridge@192.0.2.1:5060>")
    );
    // Our current SDP, unchanged: the same o= version (RFC 3264 section 8).
    assert_eq!(invite.content_type().as_deref(), Some("application/sdp"));
    assert_eq!(body(invite), ANSWER);
    assert_eq!(rig.take_events(), vec![DialogEvent::RefreshDue]);
    // Timer A retransmits it until a response.
    rig.advance_to(60_500);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].2.retransmission);

    // The 2xx answers and moves the remote target.
    let answer = OFFER.replace("o=alice 1 1", "o=alice 1 2");
    let ok = respond(
        invite,
        200,
        "OK",
        "Contact: <sip:alice@198.51.100.9:5070>\nSession-Expires: 120;refresher=uas\nRequire: timer",
        &answer,
    );
    rig.response(60_600, ok.clone());
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let (_, ack, transmit) = &sent[0];
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(ack.cseq().seq, 1);
    assert_eq!(ack.cseq().method, "ACK");
    assert_ne!(ack.top_via().branch(), invite.top_via().branch());
    assert_eq!(
        ack.request_uri().unwrap().raw,
        "sip:alice@198.51.100.9:5070"
    );
    assert_eq!(ack.to().tag(), Some("alicetag"));
    assert_eq!(ack.routes().len(), 2);
    assert!(ack.body().is_empty());
    assert_eq!(
        transmit.destination,
        Destination::Uri(Uri::parse("sip:p1.example.com;lr").unwrap())
    );
    // The same terms: nothing to report.
    assert!(rig.take_events().is_empty());
    // A retransmitted 2xx gets the same ACK again.
    rig.response(61_000, ok);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].2.retransmission);
    assert_eq!(sent[0].2.payload, transmit.payload);

    // The next refresh is 60 s after the 2xx, with the next CSeq and the same SDP.
    rig.advance_to(120_599);
    assert!(requests_sent(&mut rig).is_empty());
    let again = next_request(&mut rig, 120_600);
    assert_eq!(again.method(), Some("INVITE"));
    assert_eq!(again.cseq().seq, 2);
    assert_eq!(
        again.request_uri().unwrap().raw,
        "sip:alice@198.51.100.9:5070"
    );
    assert_eq!(body(&again), ANSWER);
}

#[test]
fn the_refresh_reinvite_carries_the_sdp_we_last_sent() {
    let mut rig = refreshing(120, CALLER_WITHOUT_UPDATE);
    // The caller holds the call by UPDATE; our answer is version 2, recvonly.
    let hold = OFFER.replace("a=sendrecv", "a=sendonly");
    let update = in_dialog(
        "UPDATE",
        11,
        "z9hG4bKhold",
        "Session-Expires: 120;refresher=uas\nSupported: timer",
    );
    rig.request(10_000, sip(&update, &hold));
    let answered = rig.take().pop().unwrap().1;
    reply_for(&answered, 200, "UPDATE");
    let last = body(&answered);
    assert!(last.contains("o=- 42 2 "), "{last}");
    let invite = next_request(&mut rig, 70_000);
    assert_eq!(invite.method(), Some("INVITE"));
    assert_eq!(body(&invite), last);
}

#[test]
fn the_refresh_method_follows_the_peers_allow_and_supported() {
    // No Allow at all: re-INVITE (always allowed).
    let mut rig = refreshing(120, "Supported: timer");
    assert_eq!(next_request(&mut rig, 60_000).method(), Some("INVITE"));
    // No Allow, but UPDATE listed in Supported: UPDATE.
    let mut rig = refreshing(120, "Supported: timer, UPDATE");
    assert_eq!(next_request(&mut rig, 60_000).method(), Some("UPDATE"));
    // An Allow in a later request counts: here an OPTIONS that lists UPDATE.
    let mut rig = refreshing(120, "Supported: timer");
    let options = in_dialog("OPTIONS", 11, "z9hG4bKo", "Allow: INVITE, ACK, BYE, update");
    rig.request(1000, sip(&options, ""));
    rig.take();
    assert_eq!(next_request(&mut rig, 60_000).method(), Some("UPDATE"));
    // ...and one without UPDATE takes it back.
    let mut rig = refreshing(120, TIMER_AND_UPDATE);
    let options = in_dialog("OPTIONS", 11, "z9hG4bKo", "Allow: INVITE, ACK, BYE");
    rig.request(1000, sip(&options, ""));
    rig.take();
    assert_eq!(next_request(&mut rig, 60_000).method(), Some("INVITE"));
}

#[test]
fn a_405_to_our_update_refresh_falls_back_to_a_reinvite() {
    let mut rig = refreshing(120, TIMER_AND_UPDATE);
    let update = next_request(&mut rig, 60_000);
    assert_eq!(update.method(), Some("UPDATE"));
    let refusal = respond(
        &update,
        405,
        "Method Not Allowed",
        "Allow: INVITE, ACK, BYE",
        "",
    );
    rig.response(60_050, refusal);
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.method(), Some("INVITE"));
    assert_eq!(sent[0].1.cseq().seq, 2);
    assert_eq!(body(&sent[0].1), ANSWER);
}

#[test]
fn a_refused_reinvite_refresh_is_acked_by_its_transaction_and_the_session_expires() {
    let mut rig = refreshing(120, CALLER_WITHOUT_UPDATE);
    let invite = next_request(&mut rig, 60_000);
    let refusal = respond(&invite, 488, "Not Acceptable Here", "", "");
    rig.response(60_050, refusal.clone());
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let ack = &sent[0].1;
    assert_eq!(ack.method(), Some("ACK"));
    // RFC 3261 17.1.1.3: same branch, Request-URI and CSeq number as the INVITE.
    assert_eq!(ack.top_via().branch(), invite.top_via().branch());
    assert_eq!(ack.request_uri(), invite.request_uri());
    assert_eq!(ack.cseq().seq, invite.cseq().seq);
    assert_eq!(ack.routes().len(), 2);
    // Its retransmission is ACKed again.
    rig.response(60_500, refusal);
    assert_eq!(rig.take()[0].1.method(), Some("ACK"));
    rig.advance_to(87_999);
    assert!(requests_sent(&mut rig).is_empty());
    assert_eq!(next_request(&mut rig, 88_000).method(), Some("BYE"));
    assert_eq!(
        rig.take_events().last(),
        Some(&DialogEvent::Ended {
            by: EndedBy::SessionExpired
        })
    );

    // A 491 to it: ACK, then a new re-INVITE 1 s later.
    let mut rig = refreshing(120, CALLER_WITHOUT_UPDATE);
    let invite = next_request(&mut rig, 60_000);
    rig.response(60_050, respond(&invite, 491, "Request Pending", "", ""));
    assert_eq!(rig.take()[0].1.method(), Some("ACK"));
    let retry = next_request(&mut rig, 61_050);
    assert_eq!(retry.method(), Some("INVITE"));
    assert_eq!(retry.cseq().seq, 2);
}

#[test]
fn offers_from_the_peer_while_our_reinvite_is_pending_get_491() {
    let mut rig = refreshing(120, CALLER_WITHOUT_UPDATE);
    let invite = next_request(&mut rig, 60_000);
    rig.request(60_100, reinvite(11, "z9hG4bKglare", OFFER));
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(status_line(&sent[0].1), (491, "Request Pending".to_owned()));
    rig.request(
        60_200,
        sip(&in_dialog("UPDATE", 12, "z9hG4bKgl2", ""), OFFER),
    );
    let sent = rig.take();
    reply_for(&sent[0].1, 491, "UPDATE");
    // An UPDATE without an offer is fine.
    rig.request(60_300, sip(&in_dialog("UPDATE", 13, "z9hG4bKgl3", ""), ""));
    reply_for(&rig.take()[0].1, 200, "UPDATE");
    // Once ours is answered, the peer's offers are taken again.
    rig.response(60_400, respond(&invite, 200, "OK", "", OFFER));
    rig.take();
    rig.request(60_500, reinvite(14, "z9hG4bKafter", OFFER));
    reply_for(&rig.take()[0].1, 200, "INVITE");
}

#[test]
fn sip_info_dtmf_relay_becomes_a_digit() {
    let mut rig = Rig::confirmed();
    let head = in_dialog("INFO", 11, "z9hG4bKinfo1", "");
    rig.request(
        1000,
        sip_typed(
            &head,
            "Signal=5\nDuration=160\n",
            Some("application/dtmf-relay"),
        ),
    );
    let sent = rig.take();
    reply_for(&sent[0].1, 200, "INFO");
    let events = rig.take_events();
    let [DialogEvent::Digit(press)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(press.digit.as_char(), '5');
    assert_eq!(press.duration, Duration::from_millis(160));

    // Another body type: 415 naming what we take; a relay body without a signal: 400.
    let head = in_dialog("INFO", 12, "z9hG4bKinfo2", "");
    rig.request(1100, sip_typed(&head, "<xml/>", Some("application/xml")));
    let sent = rig.take();
    reply_for(&sent[0].1, 415, "INFO");
    assert_eq!(sent[0].1.header("Accept"), Some("application/dtmf-relay"));
    let head = in_dialog("INFO", 13, "z9hG4bKinfo3", "");
    rig.request(
        1200,
        sip_typed(&head, "Duration=100\n", Some("application/dtmf-relay")),
    );
    reply_for(&rig.take()[0].1, 400, "INFO");
    // An empty INFO (a keepalive): 200, no digit.
    let head = in_dialog("INFO", 14, "z9hG4bKinfo4", "");
    rig.request(1300, sip_typed(&head, "", None));
    reply_for(&rig.take()[0].1, 200, "INFO");
    assert!(rig.take_events().is_empty());
}

#[test]
fn reject_with_retry_after_names_the_seconds() {
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.take();
    rig.act(50, |c, now| {
        c.reject_with(now, 503, "Service Unavailable", Some(10))
            .unwrap()
    });
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let refusal = &sent[0].1;
    assert_eq!(
        status_line(refusal),
        (503, "Service Unavailable".to_owned())
    );
    assert_eq!(refusal.header("Retry-After"), Some("10"));
    assert_eq!(
        rig.take_events(),
        vec![DialogEvent::Ended { by: EndedBy::Local }]
    );
}

#[test]
fn hang_up_with_reason_puts_the_reason_on_the_bye_also_when_deferred() {
    let reason = "Q.850;cause=41;text=\"RTP timeout\"";
    let mut rig = Rig::confirmed();
    rig.act(1000, |c, now| c.hang_up_with_reason(now, reason).unwrap());
    let sent = rig.take();
    assert_eq!(sent[0].1.method(), Some("BYE"));
    assert_eq!(sent[0].1.header("Reason"), Some(reason));

    // Asked for before the ACK: the BYE that follows the ACK carries it.
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    rig.take();
    rig.act(100, |c, now| {
        c.hang_up_with_reason(now, "SIP;cause=503;text=\"upstream\r\nX: y\"")
            .unwrap()
    });
    rig.request(200, sip(&ack(10), ""));
    let sent = rig.take();
    assert_eq!(sent[0].1.method(), Some("BYE"));
    // Line breaks cannot start a header of their own.
    assert_eq!(
        sent[0].1.header("Reason"),
        Some("SIP;cause=503;text=\"upstream  X: y\"")
    );
    assert_eq!(sent[0].1.header("X"), None);

    // A plain hang-up names no reason.
    let mut rig = Rig::confirmed();
    rig.act(1000, |c, now| c.hang_up(now).unwrap());
    assert_eq!(rig.take()[0].1.header("Reason"), None);
}

#[test]
fn planned_codec_is_the_answer_s_codec_before_the_answer() {
    let rig = Rig::new(sip(INVITE_HEAD, OFFER));
    assert_eq!(rig.call.planned_codec(), Some(Codec::Pcmu));
    let pcma_first = OFFER.replace("0 8 101", "8 0 101");
    let mut config = config();
    config.codecs = CodecPrefs::new([Codec::Pcma, Codec::Pcmu]);
    let rig = Rig::with_config(sip(INVITE_HEAD, &pcma_first), config.clone());
    assert_eq!(rig.call.planned_codec(), Some(Codec::Pcma));
    // No offer: what our offer lists first.
    let rig = Rig::with_config(sip(INVITE_HEAD, ""), config);
    assert_eq!(rig.call.planned_codec(), Some(Codec::Pcma));
    // Nothing in common: none.
    let g722 = OFFER.replace("0 8 101", "9 101");
    let rig = Rig::new(sip(INVITE_HEAD, &g722));
    assert_eq!(rig.call.planned_codec(), None);
    // After the answer: the negotiated codec.
    let mut rig = Rig::new(sip(INVITE_HEAD, OFFER));
    rig.act(0, |c, now| c.answer(now).unwrap());
    assert_eq!(rig.call.planned_codec(), Some(Codec::Pcmu));
}

#[test]
fn blind_transfer_refer_then_notify_progress_to_the_final_status() {
    // Not before the call is confirmed.
    let mut early = Rig::new(sip(INVITE_HEAD, OFFER));
    assert!(early.call.refer(early.at(10), "sip:operator@pbx").is_err());

    let mut rig = Rig::confirmed();
    rig.act(1_000, |c, now| {
        c.refer(now, "sip:operator@pbx.example.com").unwrap()
    });
    let sent = rig.take();
    assert_eq!(sent.len(), 1);
    let refer = &sent[0].1;
    assert_eq!(refer.method(), Some("REFER"));
    assert_eq!(
        refer.header("Refer-To"),
        Some("<sip:operator@pbx.example.com>")
    );
    assert_eq!(refer.header("Referred-By"), Some("<sip:bot@192.0.2.1>"));
    assert_eq!(refer.to().tag(), Some("alicetag"));
    // One at a time.
    assert!(rig.call.refer(rig.at(1_001), "sip:other@pbx").is_err());
    let accepted = parse(&build_response(refer, 202, "Accepted", None)).unwrap();
    rig.response(1_050, accepted);
    assert_eq!(rig.take_events(), vec![DialogEvent::TransferAccepted]);

    let notify = |cseq: u32, frag: &str, state: &str| {
        sip(
            &in_dialog(
                "NOTIFY",
                cseq,
                &format!("z9hG4bKn{cseq}"),
                &format!(
                    "Event: refer\nSubscription-State: {state}\nContent-Type: message/sipfrag"
                ),
            ),
            frag,
        )
    };
    rig.request(
        1_100,
        notify(11, "SIP/2.0 100 Trying\n", "active;expires=60"),
    );
    rig.request(
        2_000,
        notify(12, "SIP/2.0 200 OK\n", "terminated;reason=noresource"),
    );
    assert_eq!(
        rig.take_events(),
        vec![
            DialogEvent::TransferProgress {
                status: 100,
                terminated: false
            },
            DialogEvent::TransferProgress {
                status: 200,
                terminated: true
            },
        ]
    );
    let replies: Vec<u16> = rig
        .take()
        .iter()
        .filter_map(|(_, m, _)| m.status_code())
        .collect();
    assert_eq!(replies, vec![200, 200]);
    // A NOTIFY for another event package is refused.
    rig.request(
        2_100,
        sip(&in_dialog("NOTIFY", 13, "z9hG4bKn13", "Event: dialog"), ""),
    );
    assert_eq!(rig.take()[0].1.status_code(), Some(489));
}

#[test]
fn a_refused_refer_is_reported() {
    let mut rig = Rig::confirmed();
    rig.act(1_000, |c, now| c.refer(now, "sip:nobody@pbx").unwrap());
    let refer = rig.take()[0].1.clone();
    rig.response(
        1_050,
        parse(&build_response(&refer, 403, "Forbidden", None)).unwrap(),
    );
    assert_eq!(
        rig.take_events(),
        vec![DialogEvent::TransferFailed { status: Some(403) }]
    );
    // The call goes on, and another transfer may be tried.
    rig.act(2_000, |c, now| c.refer(now, "sip:operator@pbx").unwrap());
    assert_eq!(rig.take()[0].1.method(), Some("REFER"));
}
