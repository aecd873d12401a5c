//! Message-layer tests: the RFC 4475 / RFC 5118 torture messages against their manifests,
//! accessors on realistic messages, reply building (including injection attempts) and a
//! no-panic property test over random and mutated input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

/// What our parser does with a torture message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Ok,
    Err(fn(&ParseError) -> bool),
}

fn data_dir(set: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(set)
}

/// Our outcome per file. The manifest's verdict constrains it (checked below): `parse` must
/// be Ok, `reject` must be Err, `reject-or-lenient` and `parse (app reject)` may be either,
/// and the choice for each is pinned here.
fn expectation(file: &str) -> Expect {
    use Expect::{Err as E, Ok as O};
    match file {
        // 3.1.2: invalid messages.
        "badinv01.dat" => E(|e| matches!(e, ParseError::InvalidHeader { name: "Via", .. })),
        "clerr.dat" => E(|e| {
            matches!(
                e,
                ParseError::Framing {
                    source: FrameError::ShortBody { .. },
                    ..
                }
            )
        }),
        "ncl.dat" => E(|e| {
            matches!(
                e,
                ParseError::Framing {
                    source: FrameError::InvalidContentLength { .. },
                    ..
                }
            )
        }),
        "scalar02.dat" | "scalarlg.dat" => {
            E(|e| matches!(e, ParseError::InvalidHeader { name: "CSeq", .. }))
        }
        "quotbal.dat" => E(|e| matches!(e, ParseError::InvalidHeader { name: "To", .. })),
        "ltgtruri.dat" | "lwsruri.dat" | "ipv6-bad" => {
            E(|e| matches!(e, ParseError::MalformedRequestUri { .. }))
        }
        "baddn.dat" => E(|e| matches!(e, ParseError::InvalidHeader { name: "From", .. })),
        "badvers.dat" => E(|e| matches!(e, ParseError::UnsupportedVersion { .. })),
        "mismatch01.dat" | "mismatch02.dat" => {
            E(|e| matches!(e, ParseError::CSeqMethodMismatch { .. }))
        }
        "bigcode.dat" => E(|e| matches!(e, ParseError::InvalidStatusCode)),
        "test.dat" => E(|e| matches!(e, ParseError::MalformedStartLine { .. })),
        // 3.3: application-layer rejections the parser makes itself.
        "insuf.dat" => E(|e| matches!(e, ParseError::MissingHeader { .. })),
        "unkscm.dat" | "novelsc.dat" => E(|e| matches!(e, ParseError::UnsupportedUriScheme { .. })),
        "multi01.dat" => E(|e| matches!(e, ParseError::DuplicateHeader { .. })),
        "mcl01.dat" => E(|e| {
            matches!(
                e,
                ParseError::Framing {
                    source: FrameError::ConflictingContentLength { .. },
                    ..
                }
            )
        }),
        // Everything else parses: the well-formed ones, the reject-or-lenient ones we are
        // lenient about (lwsstart, trws, escruri, baddate, regbadct, badaspec), and the
        // application-layer cases left to the UAS (bext01, invut, regaut01, sdp01).
        _ => O,
    }
}

fn manifest(set: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(data_dir(set).join("MANIFEST.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].to_owned(), cols[3].to_owned())
        })
        .collect()
}

fn check_set(set: &str, expected_files: usize) {
    let rows = manifest(set);
    assert_eq!(rows.len(), expected_files, "{set} manifest rows");
    let on_disk = std::fs::read_dir(data_dir(set))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != "MANIFEST.tsv")
        .count();
    assert_eq!(on_disk, expected_files, "{set} files on disk");
    let mut failures = Vec::new();
    for (file, verdict) in rows {
        let bytes = std::fs::read(data_dir(set).join(&file)).unwrap();
        let result = parse(&bytes);
        let expect = expectation(&file);
        // Our pinned expectation must agree with the manifest's vocabulary.
        match (verdict.as_str(), expect) {
            ("parse" | "parse (liberal)" | "parse (semantic issue)", Expect::Ok)
            | ("reject", Expect::Err(_))
            | ("reject-or-lenient" | "parse (app reject)" | "parse (liberal) or reject", _) => {}
            (v, e) => panic!("{file}: expectation {e:?} contradicts manifest verdict {v:?}"),
        }
        let ok = match (expect, &result) {
            (Expect::Ok, Ok(_)) => true,
            (Expect::Err(pred), Err(e)) => pred(e),
            _ => false,
        };
        if !ok {
            failures.push(format!("{file} ({verdict}): got {result:?}"));
        }
        match &result {
            Ok(msg) => check_parsed(&file, msg),
            Err(err) => check_rejected(&file, &bytes, err),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A parsed torture message still yields a well-formed reply that parses back.
fn check_parsed(file: &str, msg: &SipMessage) {
    if msg.is_request() {
        let reply = build_response(msg, 200, "OK", Some("t1"));
        let back = parse(&reply).unwrap_or_else(|e| panic!("{file}: reply does not parse: {e}"));
        assert_eq!(back.status_code(), Some(200));
        assert_eq!(back.call_id(), msg.call_id());
        assert_eq!(back.vias().len(), msg.vias().len(), "{file}");
    }
}

/// A rejected request that names Via, From, To, Call-ID and CSeq gets an addressable error
/// response; a rejected response never does.
fn check_rejected(file: &str, bytes: &[u8], err: &ParseError) {
    let is_response = bytes.starts_with(b"SIP/");
    let reply = build_error_response(err, err.status_code(), "Bad Request");
    if is_response {
        assert!(
            reply.is_none(),
            "{file}: a bad response is dropped, not answered"
        );
        return;
    }
    let Some(salvage) = err.salvage() else {
        return;
    };
    let complete = !salvage.vias.is_empty()
        && salvage.from.is_some()
        && salvage.to.is_some()
        && salvage.call_id.is_some()
        && salvage.cseq.is_some();
    assert_eq!(reply.is_some(), complete, "{file}: {err}");
    if let Some(reply) = reply {
        let text = String::from_utf8(reply.clone()).unwrap();
        assert!(
            text.starts_with(&format!("SIP/2.0 {} ", err.status_code())),
            "{file}"
        );
        assert!(text.contains(&format!(
            "Call-ID: {}\r\n",
            salvage.call_id.as_deref().unwrap()
        )));
        // A bad request's copied headers may themselves be bad (badinv01's Via), so the reply
        // is checked for framing, not re-parsed.
        assert!(frame_datagram(&reply).is_ok(), "{file}");
    }
}

#[test]
fn rfc4475_torture_messages_match_the_manifest() {
    check_set("rfc4475", 50);
}

#[test]
fn rfc5118_ipv6_torture_messages_match_the_manifest() {
    check_set("rfc5118", 12);
}

fn torture(set: &str, file: &str) -> Vec<u8> {
    std::fs::read(data_dir(set).join(file)).unwrap()
}

#[test]
fn tortuous_invite_accessors() {
    let msg = parse(&torture("rfc4475", "wsinv.dat")).unwrap();
    assert_eq!(msg.method(), Some("INVITE"));
    assert_eq!(msg.dialed_user(), Some("vivekg"));
    assert_eq!(msg.to().tag(), Some("1918181833n"));
    assert_eq!(msg.from().tag(), Some("98asjd8"));
    assert_eq!(msg.from().display.as_deref(), Some(r#"J Rosenberg \""#));
    assert_eq!(msg.max_forwards(), Some(68));
    assert_eq!(
        msg.cseq(),
        &CSeq {
            seq: 9,
            method: "INVITE".into()
        }
    );
    let branches: Vec<_> = msg.vias().iter().map(|v| v.branch().unwrap()).collect();
    assert_eq!(branches, ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]);
    assert_eq!(msg.vias()[1].transport, "TCP");
    assert_eq!(msg.contacts().len(), 1);
    assert_eq!(msg.header("s"), Some(""));
    assert_eq!(
        msg.header("NEWFANGLEDHEADER"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(
        msg.routes()[0].uri.host_port.as_ref().unwrap().host,
        "services.example.com"
    );
    assert_eq!(msg.content_length(), 150);
}

#[test]
fn ipv6_accessors() {
    let msg = parse(&torture("rfc5118", "port-unambiguous")).unwrap();
    let hp = msg.request_uri().unwrap().host_port.clone().unwrap();
    assert_eq!((hp.host.as_str(), hp.port), ("[2001:db8::10]", Some(5070)));
    let msg = parse(&torture("rfc5118", "via-received-param-no-delim")).unwrap();
    assert_eq!(msg.top_via().received(), Some("2001:db8::9:255"));
    assert_eq!(msg.top_via().sent_by.host, "[2001:db8::9:1]");
}

#[test]
fn extra_datagram_octets_are_ignored() {
    let msg = parse(&torture("rfc4475", "dblreq.dat")).unwrap();
    assert_eq!(msg.method(), Some("REGISTER"));
    assert!(msg.body().is_empty());
}

#[test]
fn binary_multipart_body_is_framed_exactly() {
    let bytes = torture("rfc4475", "mpart01.dat");
    let msg = parse(&bytes).unwrap();
    let declared: usize = msg.header("Content-Length").unwrap().parse().unwrap();
    assert_eq!(msg.body().len(), declared);
    assert!(bytes.ends_with(msg.body()));
}

const INVITE: &str = "INVITE sip:+4930123456@bridge.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKnashds8;received=198.51.100.7\r\n\
Max-Forwards: 69\r\n\
To: \"Support\" <sip:+4930123456@bridge.example.com>\r\n\
f: Alice <sip:alice@example.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
m: <sip:alice@192.0.2.10:5060;transport=udp>;expires=60, <sips:alice@example.com>\r\n\
Record-Route: <sip:proxy.example.com;lr>\r\n\
Route: <sip:edge.example.com;lr>, <sip:core.example.com;lr>\r\n\
k: timer, 100rel\r\n\
Require: timer\r\n\
x: 1800;refresher=uac\r\n\
Min-SE: 90\r\n\
Expires: 120\r\n\
P-Asserted-Identity: \"Alice\" <sip:+15551234567@example.com>, <tel:+15551234567>\r\n\
c: application/sdp; charset=utf-8\r\n\
l: 118\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n";

#[test]
fn realistic_invite_accessors() {
    let msg = parse(INVITE.as_bytes()).unwrap();
    assert!(msg.is_request());
    assert_eq!(msg.dialed_user(), Some("+4930123456"));
    let top = msg.top_via();
    assert_eq!(
        top.sent_by,
        HostPort {
            host: "192.0.2.10".into(),
            port: Some(5060)
        }
    );
    assert_eq!(
        (top.branch(), top.rport()),
        (Some("z9hG4bK776asdhds"), Some(None))
    );
    assert_eq!(msg.vias()[1].received(), Some("198.51.100.7"));
    assert_eq!(msg.from().display.as_deref(), Some("Alice"));
    assert_eq!(msg.from().uri.user.as_deref(), Some("alice"));
    assert_eq!(msg.to().display.as_deref(), Some("Support"));
    assert_eq!(msg.to().tag(), None);
    assert_eq!(msg.call_id(), "a84b4c76e66710@pc33.example.com");
    assert_eq!(msg.cseq().seq, 314_159);
    assert_eq!(msg.max_forwards(), Some(69));
    let contacts = msg.contacts();
    assert_eq!(contacts.len(), 2);
    assert_eq!(
        contacts[0].uri.raw,
        "sip:alice@192.0.2.10:5060;transport=udp"
    );
    assert_eq!(msg.routes().len(), 2);
    assert_eq!(msg.record_routes().len(), 1);
    assert_eq!(msg.supported(), ["timer", "100rel"]);
    assert_eq!(msg.require(), ["timer"]);
    assert_eq!(
        msg.session_expires(),
        Some(SessionExpires {
            delta: 1800,
            refresher: Some("uac".into())
        })
    );
    assert_eq!(msg.min_se(), Some(90));
    assert_eq!(msg.expires(), Some(120));
    let pai = msg.p_asserted_identity();
    assert_eq!(pai[1].uri.scheme, "tel");
    assert_eq!(msg.content_type().as_deref(), Some("application/sdp"));
    assert_eq!(msg.content_length(), 118);
    assert!(msg.body().starts_with(b"v=0\r\n"));
    assert!(msg.body().ends_with(b"101\r\n"));
    assert_eq!(msg.header("Call-ID"), msg.header("i"));
    assert_eq!(msg.header("content-length"), Some("118"));
}

#[test]
fn normalized_message_is_understood_by_rsip() {
    use rsip::prelude::{HeadersExt, ToTypedHeader, UntypedHeader};
    let msg = parse(INVITE.as_bytes()).unwrap();
    let text = String::from_utf8(msg.to_bytes()).unwrap();
    assert!(text.contains("\r\nContact: <sip:alice@"));
    assert!(!text.contains("\r\nm:"));
    // The gap: on the raw bytes rsip files `i:` as an unknown header.
    let raw = rsip::SipMessage::try_from(INVITE.as_bytes()).unwrap();
    assert!(raw.call_id_header().is_err());
    let rsip_msg = msg.to_rsip().unwrap();
    assert_eq!(rsip_msg.call_id_header().unwrap().value(), msg.call_id());
    // rsip's typed Contact takes one value per header line; the untyped value is all of it.
    assert!(
        rsip_msg
            .contact_header()
            .unwrap()
            .value()
            .starts_with("<sip:alice@192.0.2.10")
    );
    let via = rsip_msg.via_header().unwrap().typed().unwrap();
    assert_eq!(via.branch().unwrap().to_string(), "z9hG4bK776asdhds");
    assert_eq!(rsip_msg.body(), msg.body());
}

#[test]
fn responses_parse() {
    let msg = parse(&torture("rfc4475", "noreason.dat")).unwrap();
    assert_eq!((msg.status_code(), msg.reason()), (Some(100), Some("")));
    let msg = parse(&torture("rfc4475", "unreason.dat")).unwrap();
    assert_eq!(msg.status_code(), Some(200));
    assert!(msg.reason().unwrap().len() > 10);
    assert_eq!(msg.method(), None);
    assert_eq!(msg.cseq().method, "INVITE");
}

#[test]
fn start_line_checks() {
    let base = INVITE.replace("l: 118", "l: 0");
    let body_start = base.find("\r\n\r\n").unwrap() + 4;
    let head = &base[..body_start];
    let with = |a: &str, b: &str| parse(head.replacen(a, b, 1).as_bytes());
    assert!(matches!(
        with("SIP/2.0\r\n", "SIP/3.0\r\n"),
        Err(ParseError::UnsupportedVersion { .. })
    ));
    assert!(
        with(
            "sip:+4930123456@bridge.example.com;user=phone",
            "tel:+4930123456"
        )
        .is_ok()
    );
    assert!(matches!(
        with("sip:+4930123456@bridge.example.com;user=phone", "http://x"),
        Err(ParseError::UnsupportedUriScheme { .. })
    ));
    assert!(matches!(
        with("sip:+4930123456@bridge.example.com;user=phone", "sip:a@b:x"),
        Err(ParseError::MalformedRequestUri { .. })
    ));
    assert!(matches!(
        with("CSeq: 314159 INVITE", "CSeq: 314159 BYE"),
        Err(ParseError::CSeqMethodMismatch { .. })
    ));
    assert!(matches!(
        with("CSeq: 314159 INVITE", "CSeq: 2147483648 INVITE"),
        Err(ParseError::InvalidHeader { name: "CSeq", .. })
    ));
    assert!(matches!(
        with("Max-Forwards: 69", "Max-Forwards: x"),
        Err(ParseError::InvalidHeader {
            name: "Max-Forwards",
            ..
        })
    ));
    assert!(matches!(
        with("i: a84b4c76e66710@pc33.example.com\r\n", ""),
        Err(ParseError::MissingHeader {
            name: "Call-ID",
            ..
        })
    ));
    assert!(matches!(
        with(
            "Max-Forwards: 69\r\n",
            "Max-Forwards: 69\r\nnot a header\r\n"
        ),
        Err(ParseError::MalformedHeaderLine { line: 5, .. })
    ));
    assert!(matches!(
        parse(b"SIP/2.0 20 OK\r\n\r\n"),
        Err(ParseError::InvalidStatusCode)
    ));
    assert!(matches!(
        parse(b"SIP/2.0 700 OK\r\n\r\n"),
        Err(ParseError::InvalidStatusCode)
    ));
}

fn invite() -> SipMessage {
    parse(INVITE.as_bytes()).unwrap()
}

#[test]
fn response_copies_the_request_headers_in_order() {
    let reply = build_response(&invite(), 180, "Ringing", Some("as83kd9"));
    let text = String::from_utf8(reply.clone()).unwrap();
    assert_eq!(
        text,
        "SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKnashds8;received=198.51.100.7\r\n\
From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
To: \"Support\" <sip:+4930123456@bridge.example.com>;tag=as83kd9\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Content-Length: 0\r\n\r\n"
    );
    let back = parse(&reply).unwrap();
    assert_eq!(back.to().tag(), Some("as83kd9"));
    assert_eq!(back.cseq(), invite().cseq());
}

#[test]
fn response_keeps_an_existing_to_tag() {
    let req = parse(&torture("rfc4475", "wsinv.dat")).unwrap();
    let back = parse(&build_response(&req, 200, "OK", Some("other"))).unwrap();
    assert_eq!(back.to().tag(), Some("1918181833n"));
}

#[test]
fn reply_builder_resists_header_injection() {
    let reply = build_response(
        &invite(),
        200,
        "OK\r\nContact: <sip:evil@x>\r\n",
        Some("a\r\nX-Evil: 1"),
    );
    let text = String::from_utf8(reply.clone()).unwrap();
    assert!(!text.contains("\r\nContact"));
    assert!(!text.contains("\r\nX-Evil"));
    let back = parse(&reply).unwrap();
    assert_eq!(back.to().tag(), Some("aX-Evil1"));
    assert_eq!(back.headers().len(), 7);
    // A code outside the status range is clamped rather than rendered malformed.
    assert_eq!(
        parse(&build_response(&invite(), 9999, "x", None))
            .unwrap()
            .status_code(),
        Some(699)
    );

    // Control characters inside salvaged values (a NUL, a bare CR) do not survive either.
    let bad = "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\rInjected: yes\r\n\
To: <sip:a@b>\r\nCall-ID: c\0d\r\nCSeq: 1 BYE\r\n\r\n";
    let err = parse(bad.as_bytes()).unwrap_err();
    let reply = build_bad_request(&err, "Bad\nRequest").unwrap();
    let text = String::from_utf8(reply).unwrap();
    assert!(text.starts_with("SIP/2.0 400 Bad Request\r\n"));
    assert!(!text.contains('\0'));
    assert_eq!(text.matches('\r').count(), text.matches("\r\n").count());
    assert_eq!(text.matches('\n').count(), text.matches("\r\n").count());
}

#[test]
fn bad_request_needs_an_address_and_never_answers_ack() {
    let err = parse(&torture("rfc4475", "insuf.dat")).unwrap_err();
    assert!(
        build_bad_request(&err, "Bad Request").is_none(),
        "no From/To/Call-ID"
    );

    let bad_version = INVITE.replacen("SIP/2.0\r\n", "SIP/2.1\r\n", 1);
    let err = parse(bad_version.as_bytes()).unwrap_err();
    assert_eq!(err.status_code(), 505);
    let reply = build_error_response(&err, err.status_code(), "Version Not Supported").unwrap();
    let back = parse(&reply).unwrap();
    assert_eq!(back.status_code(), Some(505));
    // A stateless To tag, the same for a retransmission.
    let tag = back.to().tag().unwrap().to_owned();
    let again = parse(&build_error_response(&err, 505, "x").unwrap()).unwrap();
    assert_eq!(again.to().tag(), Some(tag.as_str()));

    let ack = "ACK sip:a@b SIP/7.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\n\
To: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n";
    let err = parse(ack.as_bytes()).unwrap_err();
    assert!(err.salvage().is_some());
    assert!(build_bad_request(&err, "Bad Request").is_none());

    let err = parse(&torture("rfc4475", "scalarlg.dat")).unwrap_err();
    assert!(err.salvage().is_none(), "responses are dropped");
}

/// Found by the property test: control characters in values a reply copies used to be
/// accepted, and the sanitized reply then no longer parsed.
#[test]
fn control_characters_in_addressing_headers_are_rejected() {
    let base = INVITE.replace("l: 118", "l: 0");
    let head = &base[..base.find("\r\n\r\n").unwrap() + 4];
    for (from, to) in [
        ("i: a84b4c76e66710", "i: a84b4c76e\0\x0366710"),
        ("<sip:alice@example.com>", "<sip:al\0ice@example.com>"),
        ("tag=1928301774", "tag=19283\x0701774"),
        ("branch=z9hG4bK776asdhds", "branch=z9hG4bK\x00776asdhds"),
    ] {
        let bytes = head.replacen(from, to, 1);
        assert!(parse(bytes.as_bytes()).is_err(), "{to:?}");
    }
}

pub(crate) fn torture_messages() -> Vec<Vec<u8>> {
    ["rfc4475", "rfc5118"]
        .iter()
        .flat_map(|set| {
            manifest(set)
                .into_iter()
                .map(move |(f, _)| torture(set, &f))
        })
        .chain([INVITE.as_bytes().to_vec()])
        .collect()
}

/// Runs everything that takes wire bytes; the property is that none of it panics, and that
/// whatever parses yields a reply that parses.
fn exercise(bytes: &[u8]) {
    let _ = frame_datagram(bytes);
    let mut framer = StreamFramer::new(FramingLimits::default());
    for chunk in bytes.chunks(7) {
        framer.push(chunk);
        while let Ok(Some(_)) = framer.next_message() {}
    }
    match parse(bytes) {
        Ok(msg) => {
            let _ = (
                msg.contacts(),
                msg.routes(),
                msg.session_expires(),
                msg.expires(),
                msg.p_asserted_identity(),
            );
            let _ = msg.to_rsip();
            if msg.is_request() {
                let reply = build_response(&msg, 200, "OK", Some("t"));
                assert!(parse(&reply).is_ok(), "{}", String::from_utf8_lossy(&reply));
            }
        }
        Err(err) => {
            if let Some(reply) = build_bad_request(&err, "Bad Request") {
                assert!(frame_datagram(&reply).is_ok());
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..8),
                Just(b"\r\n".to_vec()),
                Just(b"\r\n ".to_vec()),
                Just(b";".to_vec()),
                Just(b",".to_vec()),
                Just(b"\"".to_vec()),
                Just(b"<".to_vec()),
                Just(b"[".to_vec()),
                Just(b"\r\n\r\n".to_vec()),
            ]
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

pub(crate) fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if let Some(x) = bytes.get_mut(i % len) {
                    *x ^= b;
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::Insert(i, b) => {
                let at = (i % len).min(bytes.len());
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = (i % len).min(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn sip_shaped_random_text_never_panics(
        text in "(INVITE|SIP/2.0|ACK) [ -~]{0,40}\r\n([A-Za-z:; ,<>\"@=\\[\\]0-9./-]{0,60}\r\n){0,8}\r\n[ -~]{0,20}"
    ) {
        exercise(text.as_bytes());
    }

    #[test]
    fn mutated_torture_messages_never_panic(
        pick in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let messages = torture_messages();
        let original = messages[pick % messages.len()].clone();
        exercise(&apply(original, &mutations));
    }
}

fn request_with_via(via: &str) -> SipMessage {
    let text = format!(
        "OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKsecond\r\n\
         From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: stamp\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    parse(text.as_bytes()).unwrap()
}

#[test]
fn received_and_rport_are_stamped_per_rfc_3261_and_3581() {
    let source: std::net::SocketAddr = "127.0.0.7:40123".parse().unwrap();
    // Sent-by names another host, no rport: received only; the reply goes to the sent-by
    // port at the source address.
    let mut m = request_with_via("SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK1");
    m.stamp_received(source);
    assert_eq!(m.top_via().received(), Some("127.0.0.7"));
    assert_eq!(m.top_via().rport(), None);
    assert_eq!(m.top_via().reply_address().to_string(), "127.0.0.7:5060");
    // The second Via is untouched, and the response copies the stamped one.
    let response = String::from_utf8(build_response(&m, 200, "OK", Some("t"))).unwrap();
    assert!(response.contains("Via: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK1;received=127.0.0.7\r\n"));
    assert!(response.contains("Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKsecond\r\n"));

    // rport asked for: received is always added and rport filled in with the source port.
    let mut m = request_with_via("SIP/2.0/UDP 127.0.0.7:5070;rport;branch=z9hG4bK2");
    m.stamp_received(source);
    assert_eq!(m.top_via().received(), Some("127.0.0.7"));
    assert_eq!(m.top_via().rport(), Some(Some(40123)));
    assert_eq!(m.top_via().reply_address().to_string(), "127.0.0.7:40123");

    // Sent-by is the source address and no rport: nothing to add; the sent-by port is used.
    let mut m = request_with_via("SIP/2.0/UDP 127.0.0.7:5070;branch=z9hG4bK3");
    m.stamp_received(source);
    assert_eq!(m.top_via().received(), None);
    assert_eq!(m.top_via().reply_address().to_string(), "127.0.0.7:5070");

    // Over TCP, rport is the client's ephemeral port: a new connection goes to sent-by.
    let mut m = request_with_via("SIP/2.0/TCP 127.0.0.7:5070;rport;branch=z9hG4bK6");
    m.stamp_received(source);
    assert_eq!(m.top_via().rport(), Some(Some(40123)));
    assert_eq!(m.top_via().reply_address().to_string(), "127.0.0.7:5070");

    // A forged received is replaced by the real source.
    let mut m = request_with_via("SIP/2.0/TLS h.example;received=192.0.2.9;branch=z9hG4bK4");
    m.stamp_received(source);
    assert_eq!(m.top_via().received(), Some("127.0.0.7"));
    assert_eq!(m.top_via().reply_address().to_string(), "127.0.0.7:5061");

    // IPv6 source, bracketed in the reply address.
    let mut m = request_with_via("SIP/2.0/UDP [2001:db8::1]:5070;rport;branch=z9hG4bK5");
    m.stamp_received("[::1]:5999".parse().unwrap());
    assert_eq!(m.top_via().reply_address().to_string(), "[::1]:5999");
    assert!(
        m.top_via()
            .reply_address()
            .host
            .parse::<std::net::Ipv6Addr>()
            .is_err()
    );
}

#[test]
fn a_via_line_with_several_values_keeps_the_others() {
    let text = "OPTIONS sip:b@127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKa , SIP/2.0/TCP 192.0.2.3;branch=z9hG4bKb\r\n\
        From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: multi\r\n\
        CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let mut m = parse(text.as_bytes()).unwrap();
    m.stamp_received("127.0.0.1:5999".parse().unwrap());
    assert_eq!(
        m.header("Via").unwrap(),
        "SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKa;received=127.0.0.1, SIP/2.0/TCP 192.0.2.3;branch=z9hG4bKb"
    );
    assert_eq!(m.vias().len(), 2);
    assert_eq!(m.vias()[1].sent_by.host, "192.0.2.3");
    // The stamped message still parses the same way.
    let again = parse(&m.to_bytes()).unwrap();
    assert_eq!(again.top_via(), m.top_via());
}
