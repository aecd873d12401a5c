//! SDP tests: offers modelled on what real PBXes and phones send, exact answers, the direction
//! table, errors, our own offers, answers to them, and no-panic properties.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;

fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

fn local() -> LocalMedia {
    LocalMedia::new("203.0.113.5".parse().unwrap(), 40000, 1234, 1)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn answer_to(offer_text: &str, prefs: &CodecPrefs) -> Answer {
    answer(&parse(offer_text).unwrap(), &local(), prefs).unwrap()
}

fn g711_pcma_first() -> CodecPrefs {
    CodecPrefs::new([Codec::Pcma, Codec::Pcmu])
}

fn all_codecs_opus_first() -> CodecPrefs {
    CodecPrefs::new([Codec::Opus, Codec::Pcmu, Codec::Pcma])
}

/// Our answer header for `local()`.
const ANSWER_HEAD: &str = "v=0\no=- 1234 1 IN IP4 203.0.113.5\ns=-\nc=IN IP4 203.0.113.5\nt=0 0\n";

const ASTERISK: &str = "v=0
o=- 1696432101 1696432101 IN IP4 192.168.1.10
s=Asterisk
c=IN IP4 192.168.1.10
t=0 0
m=audio 14582 RTP/AVP 0 8 3 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:3 GSM/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
";

const FREESWITCH_OPUS: &str = "v=0
o=FreeSWITCH 1700000000 1700000001 IN IP4 10.0.0.5
s=FreeSWITCH
c=IN IP4 10.0.0.5
t=0 0
m=audio 24580 RTP/AVP 102 9 0 8 101 100
a=rtpmap:102 opus/48000/2
a=fmtp:102 useinbandfec=1; maxaveragebitrate=30000; maxplaybackrate=48000; ptime=20; minptime=10; maxptime=40
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/48000
a=fmtp:101 0-16
a=rtpmap:100 telephone-event/8000
a=fmtp:100 0-16
a=ptime:20
a=sendrecv
a=rtcp:24581 IN IP4 10.0.0.5
";

/// baresip over IPv6, LF-only line ends, rtcp-mux, no ptime.
const BARESIP_IPV6_LF: &str = "v=0
o=- 1407466432 3164379513 IN IP6 2001:db8::10
s=-
c=IN IP6 2001:db8::10
t=0 0
m=audio 10390 RTP/AVP 96 0 8 101
b=AS:128
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=rtcp-mux
a=ssrc:2911563467 cname:a1b2c3
a=sendrecv
a=label:1
";

/// Linphone: session-level attribute, speex, telephone-event at three rates, a=rtcp, video.
const LINPHONE_VIDEO: &str = "v=0
o=alice 3422 1203 IN IP4 192.168.0.21
s=Talk
c=IN IP4 192.168.0.21
t=0 0
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
m=audio 7078 RTP/AVP 96 97 98 0 8 101 99 100
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:97 speex/16000
a=fmtp:97 vbr=on
a=rtpmap:98 speex/8000
a=fmtp:98 vbr=on
a=rtpmap:101 telephone-event/48000
a=rtpmap:99 telephone-event/16000
a=rtpmap:100 telephone-event/8000
a=rtcp:7079
a=rtcp-fb:* trr-int 1000
m=video 9078 RTP/AVP 96 97
a=rtpmap:96 VP8/90000
a=rtpmap:97 H264/90000
a=fmtp:97 profile-level-id=42801F
a=rtcp-fb:* nack pli
";

/// Cisco CUCM: no rtpmap for static types, bandwidth lines, ptime 30, media-level c= that
/// differs from the session-level one.
const CISCO_PTIME30: &str = "v=0
o=CiscoSystemsCCM-SIP 2000 1 IN IP4 10.10.10.1
s=SIP Call
c=IN IP4 10.10.10.1
b=TIAS:64000
b=AS:64
t=0 0
m=audio 16384 RTP/AVP 8 0 18 101
c=IN IP4 10.10.10.50
b=TIAS:64000
a=ptime:30
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
";

/// Polycom: session-level direction, G.722 first, DTMF on 127.
const POLYCOM: &str = "v=0
o=- 1700000600 1700000600 IN IP4 172.16.4.20
s=Polycom IP Phone
c=IN IP4 172.16.4.20
t=0 0
a=sendrecv
m=audio 2222 RTP/AVP 9 0 8 18 127
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:127 telephone-event/8000
";

/// Asterisk putting the call on hold in a re-INVITE.
const ASTERISK_HOLD_SENDONLY: &str = "v=0
o=- 1696432101 1696432102 IN IP4 192.168.1.10
s=Asterisk
c=IN IP4 192.168.1.10
t=0 0
m=audio 14582 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendonly
";

/// RFC 2543-style hold, as older Cisco and Polycom firmware still send it.
const OLD_STYLE_HOLD: &str = "v=0
o=- 1700000600 1700000601 IN IP4 172.16.4.20
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 2222 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
";

/// SRTP only (best-effort SRTP off).
const SAVP_ONLY: &str = "v=0
o=- 5 5 IN IP4 192.168.1.10
s=Asterisk
c=IN IP4 192.168.1.10
t=0 0
m=audio 14000 RTP/SAVP 0 8 101
a=rtpmap:101 telephone-event/8000
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz
";

/// Best-effort SRTP: the same audio as SAVP and as AVP.
const SAVP_THEN_AVP: &str = "v=0
o=- 5 5 IN IP4 192.168.1.10
s=-
c=IN IP4 192.168.1.10
t=0 0
m=audio 14000 RTP/SAVP 0 8 101
a=rtpmap:101 telephone-event/8000
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz
m=audio 14002 RTP/AVP 0 8 101
a=rtpmap:101 telephone-event/8000
";

const G729_ONLY: &str = "v=0
o=- 7 7 IN IP4 192.168.1.10
s=-
c=IN IP4 192.168.1.10
t=0 0
m=audio 14000 RTP/AVP 18 101
a=rtpmap:18 G729/8000
a=rtpmap:101 telephone-event/8000
";

/// Everything sloppy at once: LF only, trailing whitespace, blank and junk lines, no s=/t=,
/// upper-case attribute and codec names, c= after the attributes, ptime written as a decimal.
const SLOPPY: &str = "v=0  \n\
o=pbx 1 1 IN IP4 198.51.100.9\t\n\
\n\
this line is not SDP\n\
x=unknown line type\n\
m=audio 5004 RTP/AVP 8 101   \n\
a=RTPMAP:8 pcma/8000\n\
a=rtpmap:101 TELEPHONE-EVENT/8000\n\
a=X-vendor-thing:42\n\
a=ptime:20.0\n\
c=IN IP4 198.51.100.9\n";

const SAMPLES: &[&str] = &[
    ASTERISK,
    FREESWITCH_OPUS,
    BARESIP_IPV6_LF,
    LINPHONE_VIDEO,
    CISCO_PTIME30,
    POLYCOM,
    ASTERISK_HOLD_SENDONLY,
    OLD_STYLE_HOLD,
    SAVP_ONLY,
    SAVP_THEN_AVP,
    G729_ONLY,
    SLOPPY,
];

// ---- parsing ----

#[test]
fn asterisk_offer_parses_into_the_model() {
    let sdp = parse(&crlf(ASTERISK)).unwrap();
    assert_eq!(sdp.session_name.as_deref(), Some("Asterisk"));
    assert_eq!(sdp.origin.as_ref().unwrap().session_version, "1696432101");
    assert_eq!(
        sdp.connection.unwrap().address,
        "192.168.1.10".parse::<IpAddr>().unwrap()
    );
    let audio = &sdp.media[0];
    assert_eq!(audio.kind, MediaKind::Audio);
    assert_eq!(audio.port, 14582);
    assert_eq!(audio.proto, "RTP/AVP");
    assert_eq!(audio.payload_types().collect::<Vec<_>>(), [0, 8, 3, 101]);
    assert_eq!(audio.rtpmap(3).unwrap().encoding, "GSM");
    assert_eq!(audio.fmtp(101), Some("0-16"));
    assert_eq!(audio.ptime_ms, Some(20));
    assert_eq!(audio.maxptime_ms, Some(150));
    assert_eq!(audio.direction, Some(Direction::SendRecv));
}

#[test]
fn static_payload_types_resolve_without_rtpmap() {
    let sdp = parse(CISCO_PTIME30).unwrap();
    let audio = &sdp.media[0];
    assert!(audio.rtpmaps.iter().all(|map| map.payload_type == 101));
    assert_eq!(audio.rtpmap(8).unwrap().encoding, "PCMA");
    assert_eq!(audio.rtpmap(0).unwrap().encoding, "PCMU");
    assert_eq!(audio.rtpmap(18).unwrap().encoding, "G729");
    assert_eq!(audio.rtpmap(96), None);
}

#[test]
fn media_level_connection_overrides_session_level() {
    let sdp = parse(CISCO_PTIME30).unwrap();
    assert_eq!(
        sdp.connection_for(&sdp.media[0]),
        Some("10.10.10.50".parse().unwrap())
    );
}

#[test]
fn ipv6_lf_only_rtcp_mux_parse() {
    let sdp = parse(BARESIP_IPV6_LF).unwrap();
    let audio = &sdp.media[0];
    assert_eq!(
        sdp.connection_for(audio),
        Some("2001:db8::10".parse().unwrap())
    );
    assert!(audio.rtcp_mux);
    assert_eq!(audio.rtpmap(96).unwrap().channels, Some(2));
}

#[test]
fn rtcp_attribute_with_and_without_address() {
    let sdp = parse(FREESWITCH_OPUS).unwrap();
    assert_eq!(
        sdp.media[0].rtcp,
        Some(RtcpAttribute {
            port: 24581,
            address: Some("10.0.0.5".parse().unwrap())
        })
    );
    let sdp = parse(LINPHONE_VIDEO).unwrap();
    assert_eq!(
        sdp.media[0].rtcp,
        Some(RtcpAttribute {
            port: 7079,
            address: None
        })
    );
}

#[test]
fn sloppy_offer_is_understood() {
    let sdp = parse(SLOPPY).unwrap();
    assert_eq!(sdp.session_name, None);
    let audio = &sdp.media[0];
    assert_eq!(audio.rtpmap(8).unwrap().encoding, "pcma");
    assert_eq!(audio.ptime_ms, Some(20));
    assert_eq!(
        sdp.connection_for(audio),
        Some("198.51.100.9".parse().unwrap())
    );
    let answer = answer_to(SLOPPY, &CodecPrefs::default());
    assert_eq!(answer.negotiated.codec, Codec::Pcma);
    assert_eq!(answer.negotiated.telephone_event_pt, Some(101));
}

#[test]
fn mid_and_multicast_ttl_are_read() {
    let sdp =
        parse("v=0\nc=IN IP4 233.252.0.1/127\nm=audio 5000 RTP/AVP 0\na=mid:audio0\n").unwrap();
    assert_eq!(
        sdp.connection.unwrap().address,
        "233.252.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(sdp.media[0].mid.as_deref(), Some("audio0"));
}

#[test]
fn parse_errors_are_structured() {
    assert_eq!(parse(""), Err(SdpError::MissingVersion));
    assert_eq!(parse("hello world"), Err(SdpError::MissingVersion));
    assert_eq!(
        parse("o=- 1 1 IN IP4 1.2.3.4\nv=0"),
        Err(SdpError::MissingVersion)
    );
    assert_eq!(parse("v=1\n"), Err(SdpError::UnsupportedVersion));
    assert_eq!(
        parse("v=0\r\nc=IN IP4 pbx.example.com\r\n"),
        Err(SdpError::InvalidConnection { line: 2 })
    );
    assert_eq!(
        parse("v=0\nc=IN IP4 1.2.3.4\nm=audio seventy RTP/AVP 0\n"),
        Err(SdpError::InvalidMedia { line: 3 })
    );
    assert_eq!(
        parse("v=0\nm=audio 70000 RTP/AVP 0\n"),
        Err(SdpError::InvalidMedia { line: 2 })
    );
    assert_eq!(
        parse("v=0\nm=audio 7000\n"),
        Err(SdpError::InvalidMedia { line: 2 })
    );
}

#[test]
fn limits_are_enforced() {
    let big = format!("v=0\n{}", "a".repeat(MAX_SDP_BYTES));
    assert!(matches!(parse(&big), Err(SdpError::TooLarge { .. })));
    let many_lines = format!("v=0\n{}", "a=x\n".repeat(MAX_SDP_LINES));
    assert_eq!(
        parse(&many_lines),
        Err(SdpError::TooManyLines { max: MAX_SDP_LINES })
    );
    let many_media = format!("v=0\n{}", "m=audio 1 RTP/AVP 0\n".repeat(MAX_SDP_MEDIA + 1));
    assert_eq!(
        parse(&many_media),
        Err(SdpError::TooManyMedia { max: MAX_SDP_MEDIA })
    );
    let just_enough = format!("v=0\n{}", "m=audio 1 RTP/AVP 0\n".repeat(MAX_SDP_MEDIA));
    assert_eq!(parse(&just_enough).unwrap().media.len(), MAX_SDP_MEDIA);
}

// ---- answering ----

#[test]
fn asterisk_answer_is_byte_exact() {
    let answer = answer_to(&crlf(ASTERISK), &CodecPrefs::default());
    let expected = crlf(&format!(
        "{ANSWER_HEAD}m=audio 40000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"
    ));
    assert_eq!(answer.sdp, expected);
    assert_eq!(
        answer.negotiated,
        Negotiated {
            codec: Codec::Pcmu,
            payload_type: 0,
            clock_rate: 8000,
            channels: 1,
            ptime_ms: 20,
            telephone_event_pt: Some(101),
            remote_rtp: addr("192.168.1.10:14582"),
            remote_rtcp: Some(addr("192.168.1.10:14583")),
            rtcp_mux: false,
            direction: Direction::SendRecv,
        }
    );
}

#[test]
fn our_preference_wins_over_the_offer_order() {
    // The offer lists PCMU first; we are configured to prefer PCMA.
    let answer = answer_to(ASTERISK, &g711_pcma_first());
    assert_eq!(answer.negotiated.codec, Codec::Pcma);
    assert_eq!(answer.negotiated.payload_type, 8);
    assert!(
        answer
            .sdp
            .contains("m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n")
    );
}

#[test]
fn freeswitch_opus_answer_keeps_the_offered_dynamic_payload_types() {
    let answer = answer_to(FREESWITCH_OPUS, &all_codecs_opus_first());
    let expected = crlf(&format!(
        "{ANSWER_HEAD}m=audio 40000 RTP/AVP 102 101
a=rtpmap:102 opus/48000/2
a=rtpmap:101 telephone-event/48000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"
    ));
    assert_eq!(answer.sdp, expected);
    let negotiated = &answer.negotiated;
    assert_eq!(
        (negotiated.codec, negotiated.clock_rate, negotiated.channels),
        (Codec::Opus, 48000, 2)
    );
    assert_eq!(negotiated.remote_rtcp, Some(addr("10.0.0.5:24581")));
}

#[test]
fn opus_is_not_answered_unless_enabled() {
    let answer = answer_to(FREESWITCH_OPUS, &CodecPrefs::default());
    assert_eq!(answer.negotiated.codec, Codec::Pcmu);
    // telephone-event at 8000 Hz goes with G.711, not the 48 kHz one.
    assert_eq!(answer.negotiated.telephone_event_pt, Some(100));
    assert!(
        answer
            .sdp
            .contains("a=rtpmap:100 telephone-event/8000\r\na=fmtp:100 0-16\r\n")
    );
}

#[test]
fn baresip_ipv6_answer_echoes_rtcp_mux_and_omits_unoffered_ptime() {
    let local = LocalMedia::new("2001:db8::1".parse().unwrap(), 40000, 1234, 1);
    let answer = answer(
        &parse(BARESIP_IPV6_LF).unwrap(),
        &local,
        &CodecPrefs::default(),
    )
    .unwrap();
    let expected = crlf(
        "v=0
o=- 1234 1 IN IP6 2001:db8::1
s=-
c=IN IP6 2001:db8::1
t=0 0
m=audio 40000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp-mux
a=sendrecv
",
    );
    assert_eq!(answer.sdp, expected);
    assert_eq!(answer.negotiated.remote_rtp, addr("[2001:db8::10]:10390"));
    assert_eq!(
        answer.negotiated.remote_rtcp,
        Some(addr("[2001:db8::10]:10390"))
    );
    assert!(answer.negotiated.rtcp_mux);
    assert_eq!(answer.negotiated.ptime_ms, 20);
}

#[test]
fn linphone_video_is_rejected_with_port_zero_in_place() {
    let answer = answer_to(LINPHONE_VIDEO, &all_codecs_opus_first());
    let expected = crlf(&format!(
        "{ANSWER_HEAD}m=audio 40000 RTP/AVP 96 101
a=rtpmap:96 opus/48000/2
a=rtpmap:101 telephone-event/48000
a=fmtp:101 0-16
a=sendrecv
m=video 0 RTP/AVP 96 97
"
    ));
    assert_eq!(answer.sdp, expected);
    assert_eq!(
        answer.negotiated.remote_rtcp,
        Some(addr("192.168.0.21:7079"))
    );
}

#[test]
fn rejected_stream_before_the_audio_keeps_its_position() {
    let offer = "v=0\nc=IN IP4 192.0.2.9\nm=video 5000 RTP/AVP 96\nm=image 5002 udptl t38\nm=audio 5004 RTP/AVP 0\n";
    let answer = answer_to(offer, &CodecPrefs::default());
    let body = answer.sdp.split("t=0 0\r\n").nth(1).unwrap();
    assert_eq!(
        body,
        "m=video 0 RTP/AVP 96\r\nm=image 0 udptl t38\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    );
}

#[test]
fn cisco_ptime_30_and_media_level_address() {
    let answer = answer_to(CISCO_PTIME30, &CodecPrefs::default());
    let expected = crlf(&format!(
        "{ANSWER_HEAD}m=audio 40000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:30
a=sendrecv
"
    ));
    assert_eq!(answer.sdp, expected);
    assert_eq!(answer.negotiated.ptime_ms, 30);
    assert_eq!(answer.negotiated.remote_rtp, addr("10.10.10.50:16384"));
}

#[test]
fn polycom_g722_first_gets_our_g711() {
    let answer = answer_to(POLYCOM, &g711_pcma_first());
    assert_eq!(answer.negotiated.codec, Codec::Pcma);
    assert_eq!(answer.negotiated.telephone_event_pt, Some(127));
    assert!(answer.sdp.contains("m=audio 40000 RTP/AVP 8 127\r\n"));
}

#[test]
fn unusable_ptime_falls_back_to_20_and_small_maxptime_is_honoured() {
    for (attributes, expected) in [
        ("a=ptime:25\n", 20),
        ("a=ptime:100\n", 20),
        ("a=ptime:5\n", 20),
        ("a=ptime:60\n", 60),
        ("a=ptime:10\n", 10),
        ("a=maxptime:10\n", 10),
        ("a=maxptime:40\n", 20),
    ] {
        let offer = format!("v=0\nc=IN IP4 192.0.2.9\nm=audio 5004 RTP/AVP 0\n{attributes}");
        let answer = answer_to(&offer, &CodecPrefs::default());
        assert_eq!(answer.negotiated.ptime_ms, expected, "{attributes}");
    }
}

#[test]
fn direction_table_rfc3264_6_1() {
    for (offered, answered) in [
        ("sendrecv", Direction::SendRecv),
        ("sendonly", Direction::RecvOnly),
        ("recvonly", Direction::SendOnly),
        ("inactive", Direction::Inactive),
    ] {
        let offer = format!("v=0\nc=IN IP4 192.0.2.9\nm=audio 5004 RTP/AVP 0\na={offered}\n");
        let answer = answer_to(&offer, &CodecPrefs::default());
        assert_eq!(answer.negotiated.direction, answered, "{offered}");
        assert!(
            answer
                .sdp
                .ends_with(&format!("a={}\r\n", answered.as_str()))
        );
        // The same at session level.
        let offer = format!("v=0\nc=IN IP4 192.0.2.9\na={offered}\nm=audio 5004 RTP/AVP 0\n");
        assert_eq!(
            answer_to(&offer, &CodecPrefs::default())
                .negotiated
                .direction,
            answered
        );
    }
    // No attribute at all means sendrecv.
    let offer = "v=0\nc=IN IP4 192.0.2.9\nm=audio 5004 RTP/AVP 0\n";
    assert_eq!(
        answer_to(offer, &CodecPrefs::default())
            .negotiated
            .direction,
        Direction::SendRecv
    );
}

#[test]
fn media_level_direction_wins_over_session_level() {
    let offer = "v=0\nc=IN IP4 192.0.2.9\na=inactive\nm=audio 5004 RTP/AVP 0\na=sendonly\n";
    let answer = answer_to(offer, &CodecPrefs::default());
    assert_eq!(answer.negotiated.direction, Direction::RecvOnly);
}

#[test]
fn mid_is_echoed() {
    let offer = "v=0\nc=IN IP4 192.0.2.9\nm=audio 5004 RTP/AVP 0\na=mid:0\nm=video 5006 RTP/AVP 96\na=mid:1\n";
    let answer = answer_to(offer, &CodecPrefs::default());
    assert!(answer.sdp.contains(
        "a=rtpmap:0 PCMU/8000\r\na=mid:0\r\na=sendrecv\r\nm=video 0 RTP/AVP 96\r\na=mid:1\r\n"
    ));
}

#[test]
fn answers_are_crlf_only_and_parse_back() {
    for prefs in [CodecPrefs::default(), all_codecs_opus_first()] {
        for sample in SAMPLES {
            let Ok(answer) = answer(&parse(sample).unwrap(), &local(), &prefs) else {
                continue;
            };
            assert!(answer.sdp.ends_with("\r\n"));
            assert_eq!(
                answer.sdp.matches('\n').count(),
                answer.sdp.matches("\r\n").count(),
                "bare LF in {}",
                answer.sdp
            );
            let reparsed = parse(&answer.sdp).unwrap();
            assert_eq!(reparsed.media.len(), parse(sample).unwrap().media.len());
        }
    }
}

#[test]
fn re_answer_keeps_session_id_and_takes_the_next_version() {
    let mut local = local();
    let first = answer(&parse(ASTERISK).unwrap(), &local, &CodecPrefs::default()).unwrap();
    local.bump_version();
    let second = answer(
        &parse(ASTERISK_HOLD_SENDONLY).unwrap(),
        &local,
        &CodecPrefs::default(),
    )
    .unwrap();
    assert!(first.sdp.contains("o=- 1234 1 IN IP4"));
    assert!(second.sdp.contains("o=- 1234 2 IN IP4"));
}

#[test]
fn configured_username_is_used_only_when_it_is_a_token() {
    let mut local = local();
    local.username = "bridge".to_owned();
    assert!(offer(&local, &CodecPrefs::default()).contains("o=bridge 1234 1 "));
    local.username = "two words\r\nm=video".to_owned();
    assert!(offer(&local, &CodecPrefs::default()).contains("o=- 1234 1 "));
}

// ---- refusals ----

#[test]
fn no_common_codec_carries_a_warning() {
    let error = answer(&parse(G729_ONLY).unwrap(), &local(), &CodecPrefs::default()).unwrap_err();
    assert_eq!(
        error,
        NegotiationError::NoCommonCodec {
            offered: vec!["G729/8000".to_owned()]
        }
    );
    assert_eq!(
        error.warning_header(),
        "305 sip-realtime-bridge \"Incompatible media format: offered G729/8000\""
    );
}

#[test]
fn opus_only_offer_without_opus_enabled_is_refused() {
    let offer = "v=0\nc=IN IP4 192.0.2.9\nm=audio 5004 RTP/AVP 111\na=rtpmap:111 OPUS/48000/2\n";
    let error = answer(&parse(offer).unwrap(), &local(), &CodecPrefs::default()).unwrap_err();
    assert!(matches!(error, NegotiationError::NoCommonCodec { .. }));
    // Upper-case OPUS matches once enabled.
    let answer = answer_to(offer, &all_codecs_opus_first());
    assert_eq!(answer.negotiated.codec, Codec::Opus);
}

#[test]
fn warning_text_from_the_wire_is_sanitised() {
    let offer = "v=0\nc=IN IP4 192.0.2.9\nm=audio 5004 RTP/AVP 96\na=rtpmap:96 G\"7\\29/8000\n";
    let error = answer(&parse(offer).unwrap(), &local(), &CodecPrefs::default()).unwrap_err();
    assert_eq!(
        error.warning_header(),
        "305 sip-realtime-bridge \"Incompatible media format: offered G729/8000\""
    );
}

#[test]
fn srtp_only_is_refused_and_best_effort_srtp_falls_back_to_rtp() {
    let error = answer(&parse(SAVP_ONLY).unwrap(), &local(), &CodecPrefs::default()).unwrap_err();
    assert_eq!(
        error,
        NegotiationError::UnsupportedTransport {
            proto: "RTP/SAVP".to_owned()
        }
    );
    assert!(
        error
            .warning_header()
            .starts_with("302 sip-realtime-bridge \"")
    );

    let answer = answer_to(SAVP_THEN_AVP, &CodecPrefs::default());
    assert_eq!(answer.negotiated.remote_rtp, addr("192.168.1.10:14002"));
    assert!(
        answer
            .sdp
            .contains("t=0 0\r\nm=audio 0 RTP/SAVP 0 8 101\r\nm=audio 40000 RTP/AVP 0 101\r\n")
    );
}

#[test]
fn offers_without_usable_audio_are_refused() {
    for offer in [
        "v=0\nc=IN IP4 192.0.2.9\nm=video 5000 RTP/AVP 96\n",
        "v=0\nc=IN IP4 192.0.2.9\nm=audio 0 RTP/AVP 0\n",
        "v=0\n",
    ] {
        let error = answer(&parse(offer).unwrap(), &local(), &CodecPrefs::default()).unwrap_err();
        assert_eq!(error, NegotiationError::NoAudioStream, "{offer}");
        assert_eq!(
            error.warning_header(),
            "304 sip-realtime-bridge \"Media type not available\""
        );
    }
    let no_address = "v=0\nm=audio 5004 RTP/AVP 0\n";
    assert_eq!(
        answer(
            &parse(no_address).unwrap(),
            &local(),
            &CodecPrefs::default()
        ),
        Err(NegotiationError::MissingConnection)
    );
}

// ---- hold, resume and re-offers ----

#[test]
fn sendonly_reinvite_is_hold_and_the_next_sendrecv_resumes() {
    let prefs = CodecPrefs::default();
    let before = answer_to(ASTERISK, &prefs).negotiated;
    let held = answer_to(ASTERISK_HOLD_SENDONLY, &prefs);
    assert!(held.sdp.ends_with("a=ptime:20\r\na=recvonly\r\n"));
    assert!(held.negotiated.is_hold());
    assert!(!before.is_hold());
    let change = held.negotiated.changes_since(&before);
    assert!(change.hold_started && change.direction_changed);
    assert!(!change.remote_moved && !change.codec_changed && !change.resumed);

    let resumed = held.negotiated.clone();
    let back = answer_to(ASTERISK, &prefs).negotiated;
    let change = back.changes_since(&resumed);
    assert!(change.resumed && !change.hold_started);
    assert!(back.changes_since(&before).is_empty());
}

#[test]
fn old_style_hold_by_zero_address() {
    let answer = answer_to(OLD_STYLE_HOLD, &CodecPrefs::default());
    let negotiated = &answer.negotiated;
    assert!(negotiated.is_hold());
    assert_eq!(negotiated.direction, Direction::SendRecv);
    assert_eq!(negotiated.remote_rtp, addr("0.0.0.0:2222"));
    assert_eq!(negotiated.remote_rtcp, None);
    assert!(answer.sdp.ends_with("a=sendrecv\r\n"));
}

#[test]
fn moved_remote_and_codec_change_are_reported() {
    let prefs = CodecPrefs::default();
    let before = answer_to(ASTERISK, &prefs).negotiated;
    let moved = answer_to(&ASTERISK.replace("14582", "16000"), &prefs).negotiated;
    let change = moved.changes_since(&before);
    assert!(change.remote_moved && !change.codec_changed && !change.hold_started);
    let recoded = answer_to(
        &ASTERISK.replace("RTP/AVP 0 8 3 101", "RTP/AVP 8 101"),
        &prefs,
    )
    .negotiated;
    assert!(recoded.changes_since(&before).codec_changed);
}

// ---- our offer and its answer ----

#[test]
fn offer_for_an_offerless_invite_is_byte_exact() {
    let expected = crlf(&format!(
        "{ANSWER_HEAD}m=audio 40000 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"
    ));
    assert_eq!(offer(&local(), &CodecPrefs::default()), expected);

    let expected = crlf(&format!(
        "{ANSWER_HEAD}m=audio 40000 RTP/AVP 111 8 0 101 110
a=rtpmap:111 opus/48000/2
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtpmap:110 telephone-event/48000
a=fmtp:110 0-16
a=ptime:20
a=sendrecv
"
    ));
    let prefs = CodecPrefs::new([Codec::Opus, Codec::Pcma, Codec::Pcmu, Codec::Opus]);
    assert_eq!(offer(&local(), &prefs), expected);
}

#[test]
fn answer_to_our_offer_is_interpreted() {
    let prefs = CodecPrefs::new([Codec::Opus, Codec::Pcma]);
    let ours = parse(&offer(&local(), &prefs)).unwrap();
    let theirs = parse(&crlf(
        "v=0
o=- 99 99 IN IP4 192.168.1.10
s=-
c=IN IP4 192.168.1.10
t=0 0
m=audio 30000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=ptime:30
a=sendonly
",
    ))
    .unwrap();
    let negotiated = negotiate_answer(&ours, &theirs).unwrap();
    assert_eq!(
        negotiated,
        Negotiated {
            codec: Codec::Pcma,
            payload_type: 8,
            clock_rate: 8000,
            channels: 1,
            ptime_ms: 30,
            telephone_event_pt: Some(101),
            remote_rtp: addr("192.168.1.10:30000"),
            remote_rtcp: Some(addr("192.168.1.10:30001")),
            rtcp_mux: false,
            direction: Direction::RecvOnly,
        }
    );
    assert!(negotiated.is_hold());

    // Opus answered on our payload type, without repeating the rtpmap (sloppy but common).
    let theirs = parse("v=0\nc=IN IP4 192.0.2.1\nm=audio 30000 RTP/AVP 111 110\n").unwrap();
    let negotiated = negotiate_answer(&ours, &theirs).unwrap();
    assert_eq!(negotiated.codec, Codec::Opus);
    assert_eq!(negotiated.telephone_event_pt, Some(110));
}

#[test]
fn bad_answers_to_our_offer_are_refused() {
    let ours = parse(&offer(&local(), &CodecPrefs::default())).unwrap();
    let cases = [
        (
            "v=0\nc=IN IP4 192.0.2.1\n",
            NegotiationError::MediaCountMismatch {
                offered: 1,
                answered: 0,
            },
        ),
        (
            "v=0\nc=IN IP4 192.0.2.1\nm=audio 0 RTP/AVP 0\n",
            NegotiationError::AudioRejected,
        ),
        (
            "v=0\nc=IN IP4 192.0.2.1\nm=audio 3000 RTP/AVP 18\n",
            NegotiationError::NoCommonCodec {
                offered: vec!["G729/8000".to_owned()],
            },
        ),
        (
            // Payload type 96 was never offered, whatever it maps to.
            "v=0\nc=IN IP4 192.0.2.1\nm=audio 3000 RTP/AVP 96\na=rtpmap:96 PCMU/8000\n",
            NegotiationError::NoCommonCodec {
                offered: vec!["PCMU/8000".to_owned()],
            },
        ),
        (
            "v=0\nm=audio 3000 RTP/AVP 0\n",
            NegotiationError::MissingConnection,
        ),
    ];
    for (theirs, expected) in cases {
        assert_eq!(
            negotiate_answer(&ours, &parse(theirs).unwrap()),
            Err(expected),
            "{theirs}"
        );
    }
}

#[test]
fn rtcp_mux_is_agreed_only_when_both_sides_have_it() {
    let ours = parse("v=0\nc=IN IP4 192.0.2.2\nm=audio 4000 RTP/AVP 0\na=rtcp-mux\n").unwrap();
    let theirs = parse("v=0\nc=IN IP4 192.0.2.1\nm=audio 3000 RTP/AVP 0\na=rtcp-mux\n").unwrap();
    let negotiated = negotiate_answer(&ours, &theirs).unwrap();
    assert!(negotiated.rtcp_mux);
    assert_eq!(negotiated.remote_rtcp, Some(addr("192.0.2.1:3000")));
    let ours = parse(&offer(&local(), &CodecPrefs::default())).unwrap();
    assert!(!negotiate_answer(&ours, &theirs).unwrap().rtcp_mux);
}

// ---- no panics ----

/// Applies one line-level mutation to `lines`.
fn mutate(lines: &mut Vec<String>, op: u8, at: usize, text: &str) {
    if lines.is_empty() {
        lines.push(text.to_owned());
        return;
    }
    let at = at % lines.len();
    match op % 7 {
        0 => {
            lines.remove(at);
        }
        1 => {
            let line = lines[at].clone();
            lines.insert(at, line);
        }
        2 => {
            let next = (at + 1) % lines.len();
            lines.swap(at, next);
        }
        3 => {
            let line = &mut lines[at];
            let cut = text.len() % (line.len() + 1);
            let cut = (0..=cut).rev().find(|i| line.is_char_boundary(*i)).unwrap();
            line.truncate(cut);
        }
        4 => lines.insert(at, text.to_owned()),
        5 => lines[at] = text.to_owned(),
        _ => {
            // Keep the field type, garble the value: exercises every value parser.
            let kind: String = lines[at].chars().take(2).collect();
            lines[at] = format!("{kind}{text}");
        }
    }
}

fn exercise(text: &str) {
    let Ok(offer_sdp) = parse(text) else {
        return;
    };
    for prefs in [
        CodecPrefs::default(),
        g711_pcma_first(),
        all_codecs_opus_first(),
    ] {
        if let Ok(answer) = answer(&offer_sdp, &local(), &prefs) {
            let reparsed = parse(&answer.sdp).expect("our answer parses");
            assert_eq!(reparsed.media.len(), offer_sdp.media.len());
            assert_eq!(
                answer.sdp.matches('\n').count(),
                answer.sdp.matches("\r\n").count()
            );
        }
        let ours = parse(&offer(&local(), &prefs)).expect("our offer parses");
        let _ = negotiate_answer(&ours, &offer_sdp);
    }
}

proptest! {
    #[test]
    fn random_text_never_panics(text in "\\PC{0,2000}") {
        exercise(&text);
        exercise(&format!("v=0\n{text}"));
    }

    #[test]
    fn random_sdp_like_lines_never_panic(
        lines in proptest::collection::vec("[vosctmab]=[ -~]{0,60}", 0..40)
    ) {
        exercise(&format!("v=0\n{}", lines.join("\n")));
    }

    #[test]
    fn mutated_samples_never_panic(
        sample in 0..SAMPLES.len(),
        mutations in proptest::collection::vec((any::<u8>(), any::<usize>(), "[ -~]{0,40}|\\PC{0,10}"), 1..8),
        crlf_ends in any::<bool>(),
    ) {
        let mut lines: Vec<String> = SAMPLES[sample].lines().map(str::to_owned).collect();
        for (op, at, text) in &mutations {
            mutate(&mut lines, *op, *at, text);
        }
        let joined = lines.join(if crlf_ends { "\r\n" } else { "\n" });
        exercise(&joined);
    }
}
