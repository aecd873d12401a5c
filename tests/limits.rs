//! `limits.rate` and `sip.allow_invite_from` against the running daemon, on loopback: a flooding
//! source is banned (no answers at all) while another is still served, the ban ends, and
//! INVITEs from outside the ACL get 403. The daemon listens on port 0 of 127.0.0.1 and the test
//! reads the port from its log; the sources are sockets on port 0 of 127.0.0.5-8.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{Daemon, ack_for, config, final_response, invite, options, wait_for_200};

fn socket(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket
}

/// Every response that arrives until the socket is quiet for its read timeout.
fn responses(socket: &UdpSocket) -> Vec<String> {
    let mut buf = [0u8; 8192];
    let mut all = Vec::new();
    while let Ok((len, _)) = socket.recv_from(&mut buf) {
        all.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    all
}

#[test]
fn a_flooding_source_is_banned_others_are_served_and_invites_obey_the_acl() {
    let mut daemon = Daemon::start(&config(
        &["udp:127.0.0.1:0"],
        "allow_invite_from = [\"127.0.0.6\", \"10.0.0.0/8\"]\n\
         [limits]\nrate = { requests_per_second = 1, burst = 5, ban = \"2s\" }\n",
    ));
    let to = daemon.udp_addr();
    wait_for_200(to);

    // A flood of OPTIONS from 127.0.0.5: the burst is answered, then nothing.
    let flooder = socket("127.0.0.5");
    let local = flooder.local_addr().unwrap();
    for n in 0..30 {
        let msg = options(local, &format!("flood{n}"));
        flooder.send_to(msg.as_bytes(), to).unwrap();
    }
    let answered = responses(&flooder);
    assert!(
        (5..=6).contains(&answered.len()),
        "{} answers to 30 OPTIONS",
        answered.len()
    );
    assert!(answered.iter().all(|r| r.starts_with("SIP/2.0 200")));
    flooder
        .send_to(options(local, "during-ban").as_bytes(), to)
        .unwrap();
    assert!(
        responses(&flooder).is_empty(),
        "a banned source got an answer"
    );
    let banned_at = Instant::now();

    // Another address is served meanwhile, calls included.
    let pbx = socket("127.0.0.6");
    let pbx_local = pbx.local_addr().unwrap();
    let ok = final_response(&pbx, to, &options(pbx_local, "other"));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let answer = final_response(&pbx, to, &invite("UDP", pbx_local, to, "allowed-call"));
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    pbx.send_to(
        ack_for(&answer, pbx_local, to, "allowed-call", 1).as_bytes(),
        to,
    )
    .unwrap();

    // An INVITE from outside allow_invite_from is refused; its OPTIONS are not.
    let stranger = socket("127.0.0.7");
    let stranger_local = stranger.local_addr().unwrap();
    let refused = final_response(
        &stranger,
        to,
        &invite("UDP", stranger_local, to, "stranger"),
    );
    assert!(refused.starts_with("SIP/2.0 403"), "{refused}");
    let ok = final_response(&stranger, to, &options(stranger_local, "stranger-options"));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");

    // When the ban is over, the flooder is answered again.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(banned_at.elapsed()));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    let resumed = loop {
        n += 1;
        flooder
            .send_to(options(local, &format!("after{n}")).as_bytes(), to)
            .unwrap();
        if let Some(r) = responses(&flooder).into_iter().next() {
            break r;
        }
        assert!(Instant::now() < deadline, "no answer after the ban");
    };
    assert!(resumed.starts_with("SIP/2.0 200"), "{resumed}");

    let (_, log) = daemon.stop();
    assert_eq!(log.matches("source banned").count(), 1, "{log}");
    assert!(log.contains("source=127.0.0.5"), "{log}");
    assert!(
        log.contains("ban ended") && log.contains("dropped="),
        "{log}"
    );
    assert!(log.contains("allow_invite_from: 403"), "{log}");
}

#[test]
fn a_banned_source_may_still_end_the_calls_it_has() {
    let mut daemon = Daemon::start(&config(
        &["udp:127.0.0.1:0"],
        "[limits]\nrate = { requests_per_second = 1, burst = 5, ban = \"60s\" }\n",
    ));
    let to = daemon.udp_addr();
    wait_for_200(to);
    // A PBX sets up a call, then bursts past the limit and is banned.
    let pbx = socket("127.0.0.8");
    let local = pbx.local_addr().unwrap();
    let answer = final_response(&pbx, to, &invite("UDP", local, to, "banned-call"));
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    pbx.send_to(ack_for(&answer, local, to, "banned-call", 1).as_bytes(), to)
        .unwrap();
    for n in 0..30 {
        pbx.send_to(options(local, &format!("burst{n}")).as_bytes(), to)
            .unwrap();
    }
    responses(&pbx);
    pbx.send_to(options(local, "banned").as_bytes(), to)
        .unwrap();
    assert!(responses(&pbx).is_empty(), "the source is banned");
    // Its BYE for the call it has still reaches the call, which ends now, not at the RTP
    // timeout; the 200 goes back.
    let tag = common::to_tag(&answer);
    let bye = format!(
        "BYE sip:echo@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKbye1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=c1\r\nTo: <sip:echo@{to}>;tag={tag}\r\n\
         Call-ID: banned-call\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let ok = final_response(&pbx, to, &bye);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    // A request for no call of its own stays dropped.
    pbx.send_to(bye.replace("banned-call", "someone-else").as_bytes(), to)
        .unwrap();
    assert!(
        responses(&pbx).is_empty(),
        "a BYE for another Call-ID is dropped"
    );
    let (_, log) = daemon.stop();
    let records: Vec<&str> = log.lines().filter(|l| l.contains("call record")).collect();
    assert_eq!(records.len(), 1, "{log}");
    assert!(records[0].contains("end_reason=\"caller_bye\""), "{log}");
}
