//! Cost of the SIP message layer per message: what an INVITE flood or a busy trunk costs before
//! any call logic runs. A typical PBX INVITE with SDP (about 1 KB) is framed and parsed, and a
//! response is built for it; RFC 4475's `wsinv` (folding, compact forms, odd whitespace) is
//! parsed as a worst case of legal input.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_realtime_bridge::sip::dialog::SessionTimerConfig;
use sip_realtime_bridge::sip::endpoint::{
    Admission, Admit, Endpoint, EndpointConfig, EndpointEvent, Flow, Incoming,
};
use sip_realtime_bridge::sip::message::{SipMessage, build_response, frame_datagram, parse};
use sip_realtime_bridge::sip::sdp::{CodecPrefs, LocalMedia};
use sip_realtime_bridge::sip::transaction::TimerConfig;

const INVITE: &str = "INVITE sip:+4930123456@192.0.2.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK-524287-1---7e1f0c3ab9d0;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:+4917012345@192.0.2.20:5060>\r\n\
To: <sip:+4930123456@192.0.2.10>\r\n\
From: \"Caller\" <sip:+4917012345@192.0.2.20>;tag=a73kszlfl\r\n\
Call-ID: 8d7b1d6f-6b3a-4c1e-9d7f-3f1b2a6c9e10\r\n\
CSeq: 102 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\r\n\
Supported: timer, replaces\r\n\
Session-Expires: 1800;refresher=uac\r\n\
Min-SE: 90\r\n\
P-Asserted-Identity: <sip:+4917012345@192.0.2.20>\r\n\
User-Agent: PBX\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 231\r\n\
\r\n\
v=0\r\n\
o=- 1700000000 1700000000 IN IP4 192.0.2.20\r\n\
s=call\r\n\
c=IN IP4 192.0.2.20\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 8 0 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

fn invite() -> Vec<u8> {
    let head_and_body = INVITE.as_bytes();
    // Keep the Content-Length honest whatever the SDP above says.
    let split = INVITE.find("\r\n\r\n").unwrap() + 4;
    let body_len = head_and_body.len() - split;
    INVITE
        .replace(
            "Content-Length: 231",
            &format!("Content-Length: {body_len}"),
        )
        .into_bytes()
}

fn message_layer(c: &mut Criterion) {
    let invite = invite();
    let parsed = parse(&invite).unwrap();
    assert_eq!(parsed.method(), Some("INVITE"));
    c.bench_function("frame_invite_udp", |b| {
        b.iter(|| black_box(frame_datagram(black_box(&invite)).unwrap()))
    });
    c.bench_function("parse_invite_with_sdp", |b| {
        b.iter(|| black_box(parse(black_box(&invite)).unwrap()))
    });
    c.bench_function("build_180_for_invite", |b| {
        b.iter(|| {
            black_box(build_response(
                black_box(&parsed),
                180,
                "Ringing",
                Some("bt7x1"),
            ))
        })
    });
    let tortuous = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rfc4475/wsinv.dat"
    ))
    .unwrap();
    assert!(parse(&tortuous).is_ok());
    c.bench_function("parse_rfc4475_wsinv", |b| {
        b.iter(|| black_box(parse(black_box(&tortuous)).unwrap()))
    });
}

struct AcceptAll;

impl Admission for AcceptAll {
    fn admit(&mut self, _: &SipMessage, local: SocketAddr, _: SocketAddr) -> Admit {
        Admit::Accept {
            media: LocalMedia::new(local.ip(), 30000, 1, 1),
        }
    }
}

fn endpoint() -> Endpoint {
    let mut n = 0u64;
    Endpoint::new(
        EndpointConfig {
            public_host: None,
            codecs: CodecPrefs::default(),
            timers: TimerConfig::default(),
            session_timer: SessionTimerConfig::default(),
            contact_user: "bridge".into(),
            user_agent: "sip-realtime-bridge".into(),
        },
        Box::new(move || {
            n += 1;
            n
        }),
    )
}

fn drain(ep: &mut Endpoint) -> usize {
    let mut n = 0;
    while let Some(out) = ep.poll_transmit() {
        n += out.payload.len();
    }
    while ep.poll_event().is_some() {}
    n
}

/// The endpoint end to end: an OPTIONS answered statelessly, and one whole call's signalling
/// (INVITE -> 100, ring, answer -> 180/200, ACK, BYE -> 200, then its timers run out and the
/// call leaves the table).
fn endpoint_layer(c: &mut Criterion) {
    let local: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    let remote: SocketAddr = "192.0.2.20:5060".parse().unwrap();
    let options = b"OPTIONS sip:bridge@192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK-opt;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:lb@192.0.2.20>;tag=lb1\r\nTo: <sip:bridge@192.0.2.10>\r\n\
Call-ID: keepalive-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let mut ep = endpoint();
    let now = Instant::now();
    c.bench_function("endpoint_options_stateless_200", |b| {
        b.iter(|| {
            ep.handle_incoming(
                now,
                Incoming {
                    flow: Flow::Udp(0),
                    local,
                    remote,
                    bytes: black_box(options),
                },
                &mut AcceptAll,
            );
            black_box(drain(&mut ep))
        })
    });

    let invite = invite();
    let mut ep = endpoint();
    let mut i = 0u64;
    let start = Instant::now();
    c.bench_function("endpoint_whole_call_signalling", |b| {
        b.iter(|| {
            i += 1;
            let now = start + Duration::from_secs(i * 100);
            let call_id = format!("bench-{i}");
            let inv = String::from_utf8_lossy(&invite)
                .replace("8d7b1d6f-6b3a-4c1e-9d7f-3f1b2a6c9e10", &call_id);
            let feed = |ep: &mut Endpoint, bytes: &[u8], now| {
                ep.handle_incoming(
                    now,
                    Incoming {
                        flow: Flow::Udp(0),
                        local,
                        remote,
                        bytes,
                    },
                    &mut AcceptAll,
                )
            };
            feed(&mut ep, inv.as_bytes(), now);
            let mut handle = None;
            while let Some(event) = ep.poll_event() {
                if let EndpointEvent::IncomingCall { call, .. } = event {
                    handle = Some(call);
                }
            }
            let call = handle.unwrap();
            ep.ring(now, call).unwrap();
            ep.answer(now, call).unwrap();
            let tag = ep.call(call).unwrap().local_tag().to_owned();
            drain(&mut ep);
            for (method, cseq) in [("ACK", 102), ("BYE", 103)] {
                let msg = format!(
                    "{method} sip:bridge@192.0.2.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK-{method}-{i};rport\r\nMax-Forwards: 70\r\n\
From: \"Caller\" <sip:+4917012345@192.0.2.20>;tag=a73kszlfl\r\nTo: <sip:+4930123456@192.0.2.10>;tag={tag}\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
                );
                feed(&mut ep, msg.as_bytes(), now);
            }
            ep.handle_timeout(now + Duration::from_secs(40));
            let sent = drain(&mut ep);
            assert_eq!(ep.call_count(), 0);
            black_box(sent)
        })
    });
}

criterion_group!(benches, message_layer, endpoint_layer);
criterion_main!(benches);
