//! What the daemon must do with each torture message received over UDP, and why.
//!
//! The verdicts are the RFCs' (RFC 4475, RFC 5118, with RFC 3261/3264/3581 for what a UAS
//! does), narrowed only where the RFC lets an element choose and the choice is already pinned
//! by the parser tests in `src/sip/message/tests.rs` (e.g. `lwsstart.dat` parses there, so the
//! INVITE is answered, not refused with 400). Where the daemon disagrees, the table keeps the
//! RFC's answer and the test fails.

/// The daemon's expected reaction to one message.
#[derive(Clone, Copy, Debug)]
pub enum Verdict {
    /// The first final response (1xx ignored) carries this status.
    Reply(u16),
    /// The RFC allows any of these statuses.
    ReplyOneOf(&'static [u16]),
    /// The RFC allows a reply with one of these statuses, or none (`insuf.dat` only).
    ReplyOrDrop(&'static [u16]),
    /// Nothing with the message's Call-ID and CSeq comes back.
    Drop,
}

/// A property of the final response beyond its status.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// The header is present and its value contains the text (case-insensitive).
    HeaderContains(&'static str, &'static str),
    /// No value of the header contains the text (case-insensitive).
    HeaderLacks(&'static str, &'static str),
    /// The header is absent.
    NoHeader(&'static str),
}

/// One torture message.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// `rfc4475` or `rfc5118` (directory under tests/data).
    pub set: &'static str,
    /// File name, as in the set's MANIFEST.tsv.
    pub file: &'static str,
    /// What must happen.
    pub verdict: Verdict,
    /// Checks on the final response, if there is one.
    pub checks: &'static [Check],
    /// Why, where it is not obvious from the manifest.
    pub why: &'static str,
}

/// REGISTER at a UA that is not a registrar. RFC 3261 8.2.1 asks for 405 (with Allow) when a
/// UAS recognises a method it does not support, and RFC 4475 3.3.7 calls 405 appropriate for
/// "endpoints choosing not to act as registrars"; RFC 3261 21.5.2 gives 501 to a UAS that "is
/// not capable of supporting it for any user". Both are accepted; Allow is required either way
/// (405 MUST carry it, and it tells the client what it can send instead).
const REGISTER: Verdict = Verdict::ReplyOneOf(&[405, 501]);
const ALLOW: &[Check] = &[Check::HeaderContains("Allow", "INVITE")];
const NONE: &[Check] = &[];

const fn case(set: &'static str, file: &'static str, verdict: Verdict, why: &'static str) -> Case {
    Case {
        set,
        file,
        verdict,
        checks: NONE,
        why,
    }
}

const fn checked(
    set: &'static str,
    file: &'static str,
    verdict: Verdict,
    checks: &'static [Check],
    why: &'static str,
) -> Case {
    Case {
        set,
        file,
        verdict,
        checks,
        why,
    }
}

use Verdict::{Drop, Reply, ReplyOneOf, ReplyOrDrop};

const A: &str = "rfc4475";
const B: &str = "rfc5118";

/// Every file of both manifests, in manifest order.
pub const CASES: &[Case] = &[
    // ---- RFC 4475 3.1.1: valid messages ----
    case(
        A,
        "wsinv.dat",
        ReplyOneOf(&[481, 200]),
        "INVITE with a To tag for a dialog we do not have: RFC 3261 12.2.2 lets a UAS recreate \
         the dialog or refuse with 481",
    ),
    checked(
        A,
        "intmeth.dat",
        Reply(501),
        ALLOW,
        "unknown method: RFC 3261 8.2.1/21.5.2 (RFC 4475 3.1.1.2)",
    ),
    case(A, "esc01.dat", Reply(200), "INVITE offering PCMU: answered"),
    checked(A, "escnull.dat", REGISTER, ALLOW, "REGISTER"),
    checked(
        A,
        "esc02.dat",
        Reply(501),
        ALLOW,
        "method RE%47IST%45R is not REGISTER: unknown method (RFC 4475 3.1.1.5)",
    ),
    case(A, "lwsdisp.dat", Reply(200), "OPTIONS"),
    case(A, "longreq.dat", Reply(200), "INVITE offering PCMU"),
    checked(
        A,
        "dblreq.dat",
        REGISTER,
        ALLOW,
        "the REGISTER only; the INVITE in the trailing octets must never be answered \
         (RFC 4475 3.1.1.8, RFC 3261 18.3)",
    ),
    case(A, "semiuri.dat", Reply(200), "OPTIONS"),
    case(
        A,
        "transports.dat",
        Reply(200),
        "OPTIONS; unknown transports in lower Vias",
    ),
    checked(
        A,
        "mpart01.dat",
        ReplyOneOf(&[405, 501]),
        ALLOW,
        "MESSAGE (RFC 3428), not supported: 405 if recognised, 501 if not (RFC 3261 8.2.1); \
         its Via has rport, so the reply goes to the source port (RFC 3581)",
    ),
    case(
        A,
        "unreason.dat",
        Drop,
        "a response matching no transaction",
    ),
    case(
        A,
        "noreason.dat",
        Drop,
        "a response matching no transaction",
    ),
    // ---- RFC 4475 3.1.2: invalid messages ----
    case(A, "badinv01.dat", Reply(400), "RFC 4475 3.1.2.1"),
    case(
        A,
        "clerr.dat",
        Reply(400),
        "over UDP: 400 (RFC 4475 3.1.2.2)",
    ),
    case(
        A,
        "ncl.dat",
        Reply(400),
        "\"should respond with an error\" (RFC 4475 3.1.2.3)",
    ),
    case(
        A,
        "scalar02.dat",
        Reply(400),
        "CSeq overflow (RFC 4475 3.1.2.4)",
    ),
    case(
        A,
        "scalarlg.dat",
        Drop,
        "a bad response is dropped (RFC 4475 3.1.2.5)",
    ),
    case(
        A,
        "quotbal.dat",
        Reply(400),
        "RFC 4475 3.1.2.6: 400 always reasonable (a liberal element may instead infer the \
         quote; our parser rejects, pinned in message/tests.rs); reply to sent-by port 5050",
    ),
    case(A, "ltgtruri.dat", Reply(400), "RFC 4475 3.1.2.7"),
    case(A, "lwsruri.dat", Reply(400), "RFC 4475 3.1.2.8"),
    case(
        A,
        "lwsstart.dat",
        Reply(200),
        "RFC 4475 3.1.2.9 allows reject or accept; our parser accepts (pinned), so the INVITE \
         is answered",
    ),
    case(
        A,
        "trws.dat",
        Reply(200),
        "RFC 4475 3.1.2.10 allows reject or accept; our parser accepts (pinned)",
    ),
    checked(
        A,
        "escruri.dat",
        Reply(200),
        &[Check::NoHeader("Route")],
        "RFC 4475 3.1.2.11: may be accepted, but the escaped Route must never become a header",
    ),
    case(
        A,
        "baddate.dat",
        Reply(200),
        "RFC 4475 3.1.2.12: better to ignore an unused Date; our parser accepts (pinned)",
    ),
    checked(
        A,
        "regbadct.dat",
        REGISTER,
        ALLOW,
        "RFC 4475 3.1.2.13: parser may infer the brackets (ours does, pinned); then REGISTER",
    ),
    case(
        A,
        "badaspec.dat",
        Reply(200),
        "RFC 4475 3.1.2.14: 400 reasonable, lenient parse allowed; our parser accepts (pinned)",
    ),
    case(A, "baddn.dat", Reply(400), "RFC 4475 3.1.2.15"),
    case(A, "badvers.dat", Reply(505), "RFC 4475 3.1.2.16"),
    case(A, "mismatch01.dat", Reply(400), "RFC 4475 3.1.2.17"),
    case(
        A,
        "mismatch02.dat",
        ReplyOneOf(&[501, 400]),
        "RFC 4475 3.1.2.18: 501 preferred, 400 acceptable",
    ),
    case(
        A,
        "bigcode.dat",
        Drop,
        "a bad response is dropped (RFC 4475 3.1.2.19)",
    ),
    // ---- RFC 4475 3.2: transaction layer ----
    case(
        A,
        "badbranch.dat",
        ReplyOneOf(&[200, 400]),
        "RFC 4475 3.2.1: reject with 400 or fall back to RFC 2543 matching (then OPTIONS: 200)",
    ),
    // ---- RFC 4475 3.3: application layer ----
    case(
        A,
        "insuf.dat",
        ReplyOrDrop(&[400]),
        "RFC 4475 3.3.1: must not break, \"ideally\" 400; without From/To/Call-ID a 400 cannot \
         be a well-formed response (RFC 3261 8.2.6.2), so dropping is acceptable",
    ),
    case(A, "unkscm.dat", Reply(416), "RFC 4475 3.3.2"),
    case(
        A,
        "novelsc.dat",
        Reply(416),
        "RFC 4475 3.3.3: 416 when the scheme is never accepted",
    ),
    checked(
        A,
        "unksm2.dat",
        ReplyOneOf(&[400, 405, 501]),
        ALLOW,
        "RFC 4475 3.3.4: a registrar answers 400; we are no registrar, so the REGISTER rule",
    ),
    checked(
        A,
        "bext01.dat",
        Reply(420),
        &[
            Check::HeaderContains("Unsupported", "nothingSupportsThis"),
            Check::HeaderContains("Unsupported", "nothingSupportsThisEither"),
            Check::HeaderLacks("Unsupported", "noProxiesSupportThis"),
        ],
        "RFC 3261 8.2.2.3: 420 listing the Require tags (a UAS ignores Proxy-Require)",
    ),
    checked(
        A,
        "invut.dat",
        Reply(415),
        &[Check::HeaderContains("Accept", "application/sdp")],
        "RFC 3261 8.2.3 / 21.4.13: 415 with Accept",
    ),
    checked(
        A,
        "regaut01.dat",
        REGISTER,
        ALLOW,
        "RFC 4475 3.3.7: endpoints that are not registrars reject (405 appropriate)",
    ),
    case(A, "multi01.dat", Reply(400), "RFC 4475 3.3.8"),
    case(A, "mcl01.dat", Reply(400), "RFC 4475 3.3.9"),
    case(
        A,
        "bcast.dat",
        Drop,
        "a response matching no transaction (RFC 4475 3.3.10)",
    ),
    case(
        A,
        "zeromf.dat",
        Reply(200),
        "RFC 4475 3.3.11: an endpoint processes it as if Max-Forwards were positive",
    ),
    checked(A, "cparam01.dat", REGISTER, ALLOW, "valid REGISTER"),
    checked(A, "cparam02.dat", REGISTER, ALLOW, "valid REGISTER"),
    checked(A, "regescrt.dat", REGISTER, ALLOW, "valid REGISTER"),
    case(
        A,
        "sdp01.dat",
        ReplyOneOf(&[406, 400]),
        "RFC 4475 3.3.15: 406 (cannot answer in an Accept-able type), 400 also appropriate",
    ),
    case(
        A,
        "inv2543.dat",
        Reply(200),
        "RFC 4475 3.4.1: RFC 2543 syntax (no branch, no From tag, no Max-Forwards, no Contact, \
         no Content-Length) should be accepted",
    ),
    case(
        A,
        "test.dat",
        Drop,
        "not in RFC 4475; no SIP-Version and no Via, so no address to answer (RFC 3261 18.2.2)",
    ),
    // ---- RFC 5118 ----
    checked(B, "ipv6-good", REGISTER, ALLOW, "valid REGISTER"),
    case(
        B,
        "ipv6-bad",
        Reply(400),
        "RFC 5118 4.2: IPv6 reference without brackets in the Request-URI",
    ),
    checked(
        B,
        "port-ambiguous",
        REGISTER,
        ALLOW,
        "valid REGISTER; same branch/sent-by/method as ipv6-good, so RFC 3261 17.2.3 makes it a \
         retransmission and the same final response comes back",
    ),
    checked(B, "port-unambiguous", REGISTER, ALLOW, "as port-ambiguous"),
    case(
        B,
        "via-received-param-with-delim",
        Reply(481),
        "BYE with a To tag for no dialog: RFC 3261 15.1.2",
    ),
    case(B, "via-received-param-no-delim", Reply(200), "OPTIONS"),
    case(
        B,
        "ipv6-in-sdp",
        Reply(488),
        "the only audio format is G726-32 (PT 2), which we do not do: RFC 3261 13.3.1.3 / 21.4.26",
    ),
    case(
        B,
        "mult-ip-in-header",
        Reply(481),
        "BYE for no dialog (RFC 3261 15.1.2); reply to sent-by port 6050",
    ),
    case(
        B,
        "mult-ip-in-sdp",
        Reply(200),
        "INVITE offering PCMU on an IPv4 c= line (video on IPv6 is declined). It reuses \
         ipv6-in-sdp's Call-ID and From tag with a new CSeq and branch: a new INVITE, not a \
         merged request (RFC 3261 8.2.2.2 needs the CSeq to match too), as when a UAC retries \
         a refused INVITE (RFC 3261 8.1.3.5, 22.2)",
    ),
    case(
        B,
        "ipv4-mapped-ipv6",
        Reply(488),
        "only G726-32 offered (488, as ipv6-in-sdp); same Call-ID as ipv6-in-sdp, new CSeq: a \
         new INVITE; reply to sent-by port 19823",
    ),
    case(
        B,
        "ipv6-bug-abnf-3-colons",
        Reply(200),
        "RFC 5118 4.10 allows accepting it; our parser does (pinned)",
    ),
    case(
        B,
        "ipv6-correct-abnf-2-colons",
        Reply(200),
        "OPTIONS; same transaction as the 3-colon one (RFC 3261 17.2.3), 200 again",
    ),
];

/// The Call-ID of the INVITE hidden in `dblreq.dat`'s trailing octets.
pub const DBLREQ_TRAILING_CALL_ID: &str = "dblreq.0ha0isnda977644900765@192.0.2.15";
