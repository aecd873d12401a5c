//! Cost of the SIP message layer per message: what an INVITE flood or a busy trunk costs before
//! any call logic runs. A typical PBX INVITE with SDP (about 1 KB) is framed and parsed, and a
//! response is built for it; RFC 4475's `wsinv` (folding, compact forms, odd whitespace) is
//! parsed as a worst case of legal input.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sip_realtime_bridge::sip::message::{build_response, frame_datagram, parse};

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

criterion_group!(benches, message_layer);
criterion_main!(benches);
