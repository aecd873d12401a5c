#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sip::dialog::EndedBy;

const LOCAL: &str = "127.0.0.1:5060";
const PEER: &str = "127.0.0.2:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Admits everything on port 30000, or refuses with a fixed verdict.
struct Policy {
    verdict: Option<Admit>,
    asked: usize,
}

impl Policy {
    fn accept() -> Self {
        Self {
            verdict: None,
            asked: 0,
        }
    }
    fn refuse(status: u16, reason: &'static str, retry_after: Option<u32>) -> Self {
        Self {
            verdict: Some(Admit::Refuse {
                status,
                reason,
                retry_after,
            }),
            asked: 0,
        }
    }
}

impl Admission for Policy {
    fn admit(&mut self, _invite: &SipMessage, local: SocketAddr, _remote: SocketAddr) -> Admit {
        self.asked += 1;
        self.verdict.clone().unwrap_or(Admit::Accept {
            media: LocalMedia::new(local.ip(), 30000, 1, 1),
        })
    }
}

fn endpoint() -> Endpoint {
    let mut counter = 0u64;
    Endpoint::new(
        EndpointConfig {
            public_host: None,
            codecs: CodecPrefs::default(),
            timers: TimerConfig::default(),
            session_timer: SessionTimerConfig::default(),
            contact_user: "bridge".into(),
            user_agent: "srb-test".into(),
        },
        Box::new(move || {
            counter += 1;
            counter
        }),
    )
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
                   m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fn invite(via: &str, call_id: &str, extra: &str) -> String {
    format!(
        "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:100@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.2:40000>\r\n\
         {extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

fn in_dialog(method: &str, call_id: &str, to_tag: &str, cseq: u32, branch: &str) -> String {
    format!(
        "{method} sip:bridge@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:40000;rport;branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:100@127.0.0.1>;tag={to_tag}\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn feed(ep: &mut Endpoint, now: Instant, flow: Flow, text: &str, policy: &mut Policy) {
    ep.handle_incoming(
        now,
        Incoming {
            flow,
            local: addr(LOCAL),
            remote: addr(PEER),
            bytes: text.as_bytes(),
        },
        policy,
    );
}

fn sent(ep: &mut Endpoint) -> Vec<(Outgoing, SipMessage)> {
    std::iter::from_fn(|| ep.poll_transmit())
        .map(|o| {
            let m = parse(&o.payload).unwrap();
            (o, m)
        })
        .collect()
}

fn events(ep: &mut Endpoint) -> Vec<EndpointEvent> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

fn status(m: &SipMessage) -> u16 {
    m.status_code().unwrap()
}

#[test]
fn options_outside_a_dialog_is_answered_where_the_via_says() {
    let mut ep = endpoint();
    let now = Instant::now();
    let mut policy = Policy::accept();
    // No rport: the reply goes to the source address at the sent-by port (default 5060).
    let options = "OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKo1\r\n\
        Max-Forwards: 70\r\nFrom: <sip:a@192.0.2.2>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\n\
        Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    feed(&mut ep, now, Flow::Udp(0), options, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(out.len(), 1);
    let (o, m) = &out[0];
    assert_eq!(status(m), 200);
    assert_eq!(o.target, Target::Addr(addr("127.0.0.2:5060")));
    assert_eq!(
        (o.transport, o.flow),
        (TransportKind::Udp, Some(Flow::Udp(0)))
    );
    assert_eq!(m.top_via().received(), Some("127.0.0.2"));
    assert!(m.header("Allow").unwrap().contains("INVITE"));
    assert_eq!(m.header("Server"), Some("srb-test"));
    // The same request again gets the same To tag (stateless, derived from the request).
    feed(&mut ep, now, Flow::Udp(0), options, &mut policy);
    let again = sent(&mut ep);
    assert_eq!(again[0].1.to().tag(), m.to().tag());
    assert_eq!(policy.asked, 0);
    assert_eq!(ep.call_count(), 0);

    // With rport: to the source port.
    let with_rport = options.replace(";branch=z9hG4bKo1", ";rport;branch=z9hG4bKo2");
    feed(&mut ep, now, Flow::Udp(0), &with_rport, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(out[0].0.target, Target::Addr(addr(PEER)));
    assert_eq!(out[0].1.top_via().rport(), Some(Some(40000)));
}

#[test]
fn a_call_from_invite_to_bye_and_out_of_the_table() {
    let mut ep = endpoint();
    let t0 = Instant::now();
    let mut policy = Policy::accept();
    let inv = invite(
        "SIP/2.0/UDP 127.0.0.2:40000;rport;branch=z9hG4bKi1",
        "call1",
        "",
    );
    feed(&mut ep, t0, Flow::Udp(0), &inv, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(
        out.iter().map(|(_, m)| status(m)).collect::<Vec<_>>(),
        [100]
    );
    assert_eq!(out[0].0.target, Target::Addr(addr(PEER)));
    let evs = events(&mut ep);
    let EndpointEvent::IncomingCall {
        call,
        dialed,
        caller,
        transport,
        ..
    } = evs[0].clone()
    else {
        panic!("{evs:?}")
    };
    assert_eq!((dialed.as_str(), caller.as_str()), ("100", "alice"));
    assert_eq!(transport, TransportKind::Udp);

    // A retransmitted INVITE is absorbed by the call: 100 again, no second call.
    feed(&mut ep, t0, Flow::Udp(0), &inv, &mut policy);
    assert_eq!(
        sent(&mut ep)
            .iter()
            .map(|(_, m)| status(m))
            .collect::<Vec<_>>(),
        [100]
    );
    assert_eq!((ep.call_count(), policy.asked), (1, 1));
    assert!(events(&mut ep).is_empty());

    ep.ring(t0, call).unwrap();
    ep.answer(t0, call).unwrap();
    let out = sent(&mut ep);
    assert_eq!(
        out.iter().map(|(_, m)| status(m)).collect::<Vec<_>>(),
        [180, 200]
    );
    let ok = &out[1].1;
    let to_tag = ok.to().tag().unwrap().to_owned();
    assert_eq!(ok.contacts()[0].uri.raw, "sip:bridge@127.0.0.1:5060");
    assert_eq!(ok.header("Server"), Some("srb-test"));
    assert!(String::from_utf8_lossy(ok.body()).contains("m=audio 30000 RTP/AVP 0"));

    // The 200 is retransmitted on T1 until the ACK.
    ep.handle_timeout(t0 + Duration::from_millis(500));
    let out = sent(&mut ep);
    assert_eq!(out.len(), 1);
    assert!(out[0].0.retransmission);
    let ack = in_dialog("ACK", "call1", &to_tag, 1, "z9hG4bKa1");
    feed(
        &mut ep,
        t0 + Duration::from_millis(600),
        Flow::Udp(0),
        &ack,
        &mut policy,
    );
    assert!(sent(&mut ep).is_empty());
    assert!(events(&mut ep).iter().any(|e| matches!(
        e,
        EndpointEvent::Dialog {
            event: DialogEvent::Confirmed,
            ..
        }
    )));

    let bye = in_dialog("BYE", "call1", &to_tag, 2, "z9hG4bKb1");
    let t1 = t0 + Duration::from_secs(5);
    feed(&mut ep, t1, Flow::Udp(0), &bye, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(status(&out[0].1), 200);
    assert_eq!(out[0].0.target, Target::Addr(addr(PEER)));
    assert!(events(&mut ep).iter().any(|e| matches!(
        e,
        EndpointEvent::Dialog {
            event: DialogEvent::Ended {
                by: EndedBy::Remote,
                ..
            },
            ..
        }
    )));
    // A retransmitted BYE is still answered from the transaction...
    feed(
        &mut ep,
        t1 + Duration::from_secs(1),
        Flow::Udp(0),
        &bye,
        &mut policy,
    );
    assert_eq!(status(&sent(&mut ep)[0].1), 200);
    assert_eq!(ep.call_count(), 1);
    // ...and once Timer J (64*T1) has run, the call leaves the table and a late BYE gets 481.
    let deadline = ep.poll_timeout().unwrap();
    assert!(deadline <= t1 + Duration::from_secs(33));
    ep.handle_timeout(t1 + Duration::from_secs(33));
    assert_eq!(ep.call_count(), 0);
    assert_eq!(ep.poll_timeout(), None);
    assert_eq!(ep.ring(t1, call), Err(EndpointError::UnknownCall(call)));
    feed(
        &mut ep,
        t1 + Duration::from_secs(34),
        Flow::Udp(0),
        &bye,
        &mut policy,
    );
    assert_eq!(status(&sent(&mut ep)[0].1), 481);
}

#[test]
fn refused_invites_get_a_stateless_final_response() {
    let mut ep = endpoint();
    let now = Instant::now();
    let mut policy = Policy::refuse(503, "Service Unavailable", Some(5));
    let inv = invite(
        "SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bKr1",
        "refused",
        "",
    );
    feed(&mut ep, now, Flow::Udp(0), &inv, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0].1), 503);
    assert_eq!(out[0].1.header("Retry-After"), Some("5"));
    assert_eq!(out[0].1.header("Server"), Some("srb-test"));
    let tag = out[0].1.to().tag().unwrap().to_owned();
    // Same INVITE again: same answer, same tag; no call was created.
    feed(&mut ep, now, Flow::Udp(0), &inv, &mut policy);
    assert_eq!(sent(&mut ep)[0].1.to().tag(), Some(tag.as_str()));
    assert_eq!(ep.call_count(), 0);
    assert!(events(&mut ep).is_empty());
    assert_eq!(ep.stats().refused, 2);

    let mut policy = Policy::refuse(404, "Not Found", None);
    feed(
        &mut ep,
        now,
        Flow::Udp(0),
        &inv.replace("refused", "nobody"),
        &mut policy,
    );
    let out = sent(&mut ep);
    assert_eq!(status(&out[0].1), 404);
    assert_eq!(out[0].1.header("Retry-After"), None);
}

#[test]
fn bodies_we_cannot_answer_are_refused_before_admission() {
    let mut ep = endpoint();
    let now = Instant::now();
    let mut policy = Policy::accept();
    let via = "SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bKu1";
    let unknown_type = invite(via, "ut", "").replace(
        "Content-Type: application/sdp",
        "Content-Type: application/x-foo",
    );
    feed(&mut ep, now, Flow::Udp(0), &unknown_type, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(status(&out[0].1), 415);
    assert_eq!(out[0].1.header("Accept"), Some("application/sdp"));

    let gzip = invite(via, "gz", "Content-Encoding: gzip\r\n");
    feed(&mut ep, now, Flow::Udp(0), &gzip, &mut policy);
    assert_eq!(status(&sent(&mut ep)[0].1), 415);

    let accept_text = invite(via, "acc", "Accept: text/plain\r\n");
    feed(&mut ep, now, Flow::Udp(0), &accept_text, &mut policy);
    assert_eq!(status(&sent(&mut ep)[0].1), 406);

    let accept_any = invite(via, "any", "Accept: text/plain, application/*\r\n");
    feed(&mut ep, now, Flow::Udp(0), &accept_any, &mut policy);
    assert_eq!(status(&sent(&mut ep)[0].1), 100);
    assert_eq!((policy.asked, ep.call_count()), (1, 1));
}

#[test]
fn malformed_requests_get_400_where_addressable_and_responses_are_dropped() {
    let mut ep = endpoint();
    let now = Instant::now();
    let mut policy = Policy::accept();
    // Two CSeq headers: does not parse, but From/To/Call-ID/Via can be salvaged.
    let bad = "OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKm1\r\n\
        From: <sip:a@192.0.2.9>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: bad1\r\n\
        CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    feed(&mut ep, now, Flow::Udp(0), bad, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(status(&out[0].1), 400);
    assert_eq!(out[0].0.target, Target::Addr(addr("127.0.0.2:5070")));
    assert_eq!(out[0].1.top_via().received(), Some("127.0.0.2"));

    let bad_version = bad
        .replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia")
        .replace("CSeq: 2 OPTIONS\r\n", "");
    feed(&mut ep, now, Flow::Udp(0), &bad_version, &mut policy);
    assert_eq!(status(&sent(&mut ep)[0].1), 505);

    // Garbage and a response for no call: nothing sent.
    feed(&mut ep, now, Flow::Udp(0), "\x00\x01 hello", &mut policy);
    let stray = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n\
        From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.2>;tag=2\r\nCall-ID: none\r\n\
        CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
    feed(&mut ep, now, Flow::Udp(0), stray, &mut policy);
    assert!(sent(&mut ep).is_empty());
    let stats = ep.stats();
    assert_eq!(
        (
            stats.malformed,
            stats.malformed_answered,
            stats.stray_responses
        ),
        (3, 2, 1)
    );
}

#[test]
fn tcp_replies_and_our_bye_use_the_calls_connection() {
    let mut ep = endpoint();
    let t0 = Instant::now();
    let mut policy = Policy::accept();
    let inv = invite("SIP/2.0/TCP 127.0.0.2:5060;branch=z9hG4bKt1", "tcp1", "").replace(
        "<sip:alice@127.0.0.2:40000>",
        "<sip:alice@127.0.0.2:5060;transport=tcp>",
    );
    feed(&mut ep, t0, Flow::Tcp(7), &inv, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(
        (out[0].0.transport, out[0].0.flow),
        (TransportKind::Tcp, Some(Flow::Tcp(7)))
    );
    let EndpointEvent::IncomingCall { call, .. } = events(&mut ep)[0].clone() else {
        panic!()
    };
    ep.answer(t0, call).unwrap();
    let out = sent(&mut ep);
    let ok = &out[0].1;
    assert_eq!(
        ok.contacts()[0].uri.raw,
        "sip:bridge@127.0.0.1:5060;transport=tcp"
    );
    let to_tag = ok.to().tag().unwrap().to_owned();
    // The 2xx is retransmitted end to end even over TCP (RFC 3261 13.3.1.4: a proxy on the
    // way may use UDP), over the same connection.
    ep.handle_timeout(t0 + Duration::from_millis(500));
    let out = sent(&mut ep);
    assert_eq!(out.len(), 1);
    assert!(out[0].0.retransmission);
    assert_eq!(out[0].0.flow, Some(Flow::Tcp(7)));
    let ack = in_dialog("ACK", "tcp1", &to_tag, 1, "z9hG4bKta").replace(
        "SIP/2.0/UDP 127.0.0.2:40000;rport",
        "SIP/2.0/TCP 127.0.0.2:5060",
    );
    feed(&mut ep, t0, Flow::Tcp(7), &ack, &mut policy);
    ep.hang_up(t0, call).unwrap();
    let out = sent(&mut ep);
    let (o, bye) = &out[0];
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(bye.header("User-Agent"), Some("srb-test"));
    assert_eq!(o.transport, TransportKind::Tcp);
    assert_eq!(o.flow, Some(Flow::Tcp(7)));
    assert_eq!(o.target, Target::Addr(addr("127.0.0.2:5060")));
    assert!(bye.top_via().transport.eq_ignore_ascii_case("TCP"));
}

#[test]
fn requests_we_send_follow_the_remote_target_and_its_transport() {
    let target = |s: &str| request_target(&Uri::parse(s).unwrap(), TransportKind::Udp);
    assert_eq!(
        target("sip:alice@127.0.0.9:5070;transport=TCP"),
        Some((TransportKind::Tcp, Target::Addr(addr("127.0.0.9:5070"))))
    );
    assert_eq!(
        target("sip:alice@pbx.example.com"),
        Some((
            TransportKind::Udp,
            Target::Host("pbx.example.com".into(), 5060)
        ))
    );
    assert_eq!(
        target("sip:alice@[::1]:5080").unwrap().1,
        Target::Addr(addr("[::1]:5080"))
    );
    // Transports we do not have are unreachable, not quietly TCP on the wrong port.
    assert_eq!(target("sips:alice@127.0.0.9"), None);
    assert_eq!(target("sip:alice@127.0.0.9;transport=tls"), None);
    assert_eq!(target("sip:alice@127.0.0.9;transport=ws"), None);
}

#[test]
fn dialed_and_caller_come_from_the_right_headers() {
    let text = "INVITE sip:%2B4930123@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKd\r\n\
        From: <sip:anon@127.0.0.2>;tag=1\r\nTo: <sip:other@127.0.0.1>\r\nCall-ID: d\r\nCSeq: 1 INVITE\r\n\
        P-Asserted-Identity: <sip:+4989555@127.0.0.2>\r\nContent-Length: 0\r\n\r\n";
    let m = parse(text.as_bytes()).unwrap();
    assert_eq!(dialed(&m), "+4930123");
    assert_eq!(caller(&m), "+4989555");
    let without_pai = parse(
        text.replace("P-Asserted-Identity: <sip:+4989555@127.0.0.2>\r\n", "")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(caller(&without_pai), "anon");
}

mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::sip::message::tests::{apply, mutation, torture_messages};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever arrives over UDP or TCP, the endpoint does not panic, and everything it
        /// sends (replies, and the BYE of a call whose 2xx is never acknowledged) goes back to
        /// the address it came from: a forged message cannot aim the daemon at a third party
        /// named in a Via, Contact or Record-Route.
        #[test]
        fn everything_sent_goes_back_to_the_source(
            pick in any::<usize>(),
            mutations in proptest::collection::vec(mutation(), 0..6),
            tcp in any::<bool>(),
        ) {
            let messages = torture_messages();
            let bytes = apply(messages[pick % messages.len()].clone(), &mutations);
            let mut ep = endpoint();
            let mut policy = Policy::accept();
            let flow = if tcp { Flow::Tcp(1) } else { Flow::Udp(0) };
            let mut now = Instant::now();
            ep.handle_incoming(
                now,
                Incoming { flow, local: addr(LOCAL), remote: addr(PEER), bytes: &bytes },
                &mut policy,
            );
            let check = |ep: &mut Endpoint| -> Result<(), TestCaseError> {
                while let Some(out) = ep.poll_transmit() {
                    match &out.target {
                        Target::Addr(a) => prop_assert_eq!(a.ip(), addr(PEER).ip()),
                        Target::Host(h, _) => prop_assert!(false, "sent to a name: {}", h),
                    }
                    prop_assert_eq!(out.flow, Some(flow));
                }
                Ok(())
            };
            // Answer every call it admitted, then run all its timers to the end.
            while let Some(event) = ep.poll_event() {
                if let EndpointEvent::IncomingCall { call, .. } = event {
                    let _ = ep.ring(now, call);
                    let _ = ep.answer(now, call);
                }
            }
            check(&mut ep)?;
            let mut steps = 0;
            while let Some(at) = ep.poll_timeout() {
                steps += 1;
                prop_assert!(steps < 10_000, "timers never settle");
                now = at;
                ep.handle_timeout(now);
                check(&mut ep)?;
                while ep.poll_event().is_some() {}
            }
            prop_assert_eq!(ep.call_count(), 0);
        }
    }
}

#[test]
fn an_unconfirmed_calls_bye_goes_to_the_source_not_to_the_contact() {
    let mut ep = endpoint();
    let t0 = Instant::now();
    let mut policy = Policy::accept();
    let inv = invite("SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bKs1", "spoof", "")
        .replace(
            "<sip:alice@127.0.0.2:40000>",
            "<sip:x@victim.example:53;transport=tcp>",
        )
        .replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nRecord-Route: <sip:192.0.2.99;lr>\r\n",
        );
    feed(&mut ep, t0, Flow::Udp(0), &inv, &mut policy);
    let EndpointEvent::IncomingCall { call, .. } = events(&mut ep)[0].clone() else {
        panic!()
    };
    ep.ring(t0, call).unwrap();
    ep.answer(t0, call).unwrap();
    sent(&mut ep);
    // No ACK: after 64*T1 the BYE goes to the INVITE's source over its flow.
    let mut byes = Vec::new();
    while let Some(at) = ep.poll_timeout() {
        ep.handle_timeout(at);
        for (out, m) in sent(&mut ep) {
            if m.method() == Some("BYE") {
                byes.push(out);
            }
        }
    }
    assert!(!byes.is_empty());
    for out in &byes {
        assert_eq!(out.target, Target::Addr(addr(PEER)));
        assert_eq!(
            (out.transport, out.flow),
            (TransportKind::Udp, Some(Flow::Udp(0)))
        );
    }
}

#[test]
fn a_new_invite_may_reuse_the_call_id_of_a_refused_one() {
    // RFC 3261 8.1.3.5: after a 488 (or 422, 401...) a UAC retries with the same Call-ID and
    // a higher CSeq; it is a new call, not a request for the refused one.
    let mut ep = endpoint();
    let now = Instant::now();
    let mut policy = Policy::accept();
    let g726 = invite("SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bKg1", "retry", "")
        .replace("RTP/AVP 0 101", "RTP/AVP 2 101");
    feed(&mut ep, now, Flow::Udp(0), &g726, &mut policy);
    // No codec we take: refused with 488 before it is admitted (no ports, no upstream).
    assert!(events(&mut ep).is_empty(), "not a call");
    assert_eq!(policy.asked, 0, "the admission policy was not consulted");
    let refused = sent(&mut ep);
    let last = &refused.last().unwrap().1;
    assert_eq!(status(last), 488);
    assert!(
        last.header("Warning")
            .is_some_and(|w| w.starts_with("305 ")),
        "{:?}",
        last.header("Warning")
    );
    let tag = last.to().tag().unwrap().to_owned();
    // The ACK of the 488 is not answered.
    let ack = g726
        .replace(
            "INVITE sip:100@127.0.0.1 SIP/2.0",
            "ACK sip:100@127.0.0.1 SIP/2.0",
        )
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            "To: <sip:100@127.0.0.1>",
            &format!("To: <sip:100@127.0.0.1>;tag={tag}"),
        );
    feed(&mut ep, now, Flow::Udp(0), &ack, &mut policy);
    assert!(sent(&mut ep).is_empty());

    // RFC 5118's mult-ip-in-sdp even reuses the branch (with another sent-by and CSeq).
    let pcmu = invite("SIP/2.0/UDP 127.0.0.3:40000;branch=z9hG4bKg1", "retry", "")
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE");
    feed(&mut ep, now, Flow::Udp(0), &pcmu, &mut policy);
    assert_eq!(status(&sent(&mut ep)[0].1), 100);
    let EndpointEvent::IncomingCall { call: second, .. } = events(&mut ep)[0].clone() else {
        panic!()
    };
    ep.answer(now, second).unwrap();
    assert_eq!(status(&sent(&mut ep)[0].1), 200);
    assert_eq!(ep.call_count(), 1);
}

#[test]
fn error_replies_are_addressed_even_from_a_via_only_a_lenient_reading_understands() {
    let mut ep = endpoint();
    let now = Instant::now();
    let mut policy = Policy::accept();
    // RFC 4475 3.1.2.16: SIP/7.0 in the request line and in the Via: 505.
    let badvers = "OPTIONS sip:t.watson@example.org SIP/7.0\r\nVia: SIP/7.0/UDP c.example.com;branch=z9hG4bKv\r\n\
        Max-Forwards: 70\r\nFrom: A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\r\n\
        To: T. Watson <sip:t.watson@example.org>\r\nCall-ID: badvers01\r\nCSeq: 8 OPTIONS\r\n\r\n";
    feed(&mut ep, now, Flow::Udp(0), badvers, &mut policy);
    // (Our own parser refuses the reply too: its Via is the client's SIP/7.0 one.)
    let out = ep.poll_transmit().unwrap();
    assert!(out.payload.starts_with(b"SIP/2.0 505 "));
    let text = String::from_utf8_lossy(&out.payload).into_owned();
    assert!(
        text.contains("Via: SIP/7.0/UDP c.example.com;branch=z9hG4bKv;received=127.0.0.2\r\n"),
        "{text}"
    );
    assert_eq!(out.target, Target::Addr(addr("127.0.0.2:5060")));
    // RFC 4475 3.1.2.1: empty Via parameters: 400 at the sent-by's default port.
    let badinv = "INVITE sip:user@example.com SIP/2.0\r\nTo: sip:j.user@example.com\r\n\
        From: sip:caller@example.net;tag=134161461246\r\nMax-Forwards: 7\r\nCall-ID: badinv01\r\n\
        CSeq: 8 INVITE\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\nContent-Length: 0\r\n\r\n";
    feed(&mut ep, now, Flow::Udp(0), badinv, &mut policy);
    let out = ep.poll_transmit().unwrap();
    assert!(out.payload.starts_with(b"SIP/2.0 400 "));
    assert_eq!(out.target, Target::Addr(addr("127.0.0.2:5060")));
    // A TLS Via that came over UDP: answered over UDP at 5060, not TLS's 5061.
    let tls = "OPTIONS sip:u@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.7;branch=z9hG4bKtls\r\n\
        From: <sip:a@192.0.2.7>;tag=1\r\nTo: <sip:u@127.0.0.1>\r\nCall-ID: tls\r\nCSeq: 1 OPTIONS\r\n\
        Content-Length: 0\r\n\r\n";
    feed(&mut ep, now, Flow::Udp(0), tls, &mut policy);
    let out = sent(&mut ep);
    assert_eq!(status(&out[0].1), 200);
    assert_eq!(
        (out[0].0.transport, &out[0].0.target),
        (TransportKind::Udp, &Target::Addr(addr("127.0.0.2:5060")))
    );
}

#[test]
fn awaiting_responses_follows_our_bye_not_the_retransmission_timers() {
    let mut ep = endpoint();
    let t0 = Instant::now();
    let mut policy = Policy::accept();
    let inv = invite(
        "SIP/2.0/UDP 127.0.0.2:40000;rport;branch=z9hG4bKw1",
        "wait",
        "",
    );
    feed(&mut ep, t0, Flow::Udp(0), &inv, &mut policy);
    let EndpointEvent::IncomingCall { call, .. } = events(&mut ep)[0].clone() else {
        panic!()
    };
    ep.answer(t0, call).unwrap();
    let tag = sent(&mut ep)[1].1.to().tag().unwrap().to_owned();
    feed(
        &mut ep,
        t0,
        Flow::Udp(0),
        &in_dialog("ACK", "wait", &tag, 1, "z9hG4bKw2"),
        &mut policy,
    );
    assert!(!ep.awaiting_responses());
    ep.hang_up(t0, call).unwrap();
    let bye = sent(&mut ep)
        .into_iter()
        .find(|(_, m)| m.method() == Some("BYE"))
        .unwrap()
        .1;
    assert!(ep.awaiting_responses());
    let ok = String::from_utf8(build_response(&bye, 200, "OK", None)).unwrap();
    feed(&mut ep, t0, Flow::Udp(0), &ok, &mut policy);
    // Answered: nothing to wait for, though the call still absorbs retransmissions (Timer K).
    assert!(!ep.awaiting_responses());
    assert_eq!(ep.call_count(), 1);
}

#[test]
fn registrations_send_to_their_target_take_their_responses_and_name_the_account_of_calls() {
    use crate::sip::register::{RegisterConfig, Registration, RegistrationEvent};
    let mut ep = endpoint();
    let now = Instant::now();
    let mut n = 0;
    let registration = Registration::new(
        now,
        RegisterConfig {
            registrar: "sip:127.0.0.9:5090".into(),
            aor: "sip:2001@127.0.0.9".into(),
            auth_username: "2001".into(),
            password: "pw".into(),
            contact: "sip:bot2001@127.0.0.1:5060".into(),
            via: "UDP 127.0.0.1:5060".into(),
            expires: 600,
            user_agent: String::new(),
            timers: TimerConfig::default(),
            reliable: false,
        },
        Box::new(move || {
            n += 1;
            n
        }),
    );
    ep.add_registration(
        "pbx".into(),
        "bot2001".into(),
        registration,
        Target::Addr(addr("127.0.0.9:5090")),
        TransportKind::Udp,
        Some(Flow::Udp(0)),
    );
    let out = ep.poll_transmit().unwrap();
    assert_eq!(out.target, Target::Addr(addr("127.0.0.9:5090")));
    assert_eq!(out.flow, Some(Flow::Udp(0)));
    let register = crate::sip::message::parse(&out.payload).unwrap();
    assert_eq!(register.method(), Some("REGISTER"));
    // Its 200 is the registration's, not a stray response.
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=r\r\nCall-ID: {}\r\nCSeq: 1 REGISTER\r\n\
         Expires: 300\r\nContent-Length: 0\r\n\r\n",
        register.header("Via").unwrap(),
        register.header("From").unwrap(),
        register.header("To").unwrap(),
        register.call_id()
    );
    let mut policy = Policy::accept();
    feed(&mut ep, now, Flow::Udp(0), &ok, &mut policy);
    assert_eq!(
        ep.poll_event(),
        Some(EndpointEvent::Registration {
            account: "pbx".into(),
            event: RegistrationEvent::Registered { expires: 300 }
        })
    );
    assert_eq!(ep.stats().stray_responses, 0);
    assert!(matches!(
        ep.registrations().next(),
        Some(("pbx", crate::sip::register::RegState::Registered { .. }))
    ));
    // A call to our Contact came through the account; its dialed number is the To user.
    let via = "SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bKacc1";
    let text = invite(via, "acc-1", "")
        .replacen(
            "INVITE sip:100@127.0.0.1",
            "INVITE sip:bot2001@127.0.0.1:5060",
            1,
        )
        .replace(
            "To: <sip:100@127.0.0.1>",
            "To: <sip:+4930555@pbx.example.com>",
        );
    feed(&mut ep, now, Flow::Udp(0), &text, &mut policy);
    let incoming = std::iter::from_fn(|| ep.poll_event())
        .find(|e| matches!(e, EndpointEvent::IncomingCall { .. }))
        .unwrap();
    let EndpointEvent::IncomingCall {
        account, dialed, ..
    } = incoming
    else {
        unreachable!()
    };
    assert_eq!(account.as_deref(), Some("pbx"));
    assert_eq!(dialed, "+4930555");
    // A direct call: no account, the Request-URI user.
    let text = invite(
        "SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bKacc2",
        "acc-2",
        "",
    );
    feed(&mut ep, now, Flow::Udp(0), &text, &mut policy);
    let EndpointEvent::IncomingCall {
        account, dialed, ..
    } = std::iter::from_fn(|| ep.poll_event())
        .find(|e| matches!(e, EndpointEvent::IncomingCall { .. }))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!((account, dialed.as_str()), (None, "100"));
    // Shutdown: Expires: 0, and the endpoint waits for its answer.
    ep.unregister_all(now);
    let out = std::iter::from_fn(|| ep.poll_transmit())
        .find(|o| o.target == Target::Addr(addr("127.0.0.9:5090")))
        .unwrap();
    let unregister = crate::sip::message::parse(&out.payload).unwrap();
    assert_eq!(unregister.header("Expires"), Some("0"));
    assert!(ep.awaiting_responses());
}
