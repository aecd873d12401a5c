//! SIGHUP reload against the running daemon: routes change for new calls at once, a live call
//! is untouched, an invalid file is refused with a clear log line and the running
//! configuration stays. The daemon listens on port 0 (kept across reloads: `sip.listen` is not
//! reloaded) and the test reads the port from its log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn invite_to(user: &str, me: SocketAddr, to: SocketAddr, call_id: &str) -> String {
    invite("UDP", me, to, call_id).replace("sip:echo@", &format!("sip:{user}@"))
}

fn hup(daemon: &Daemon) {
    let pid = daemon.child.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
}

#[test]
fn sighup_changes_routes_for_new_calls_keeps_live_ones_and_refuses_a_bad_file() {
    // One configuration (one RTP range) before and after: only the routes differ.
    let all_routes = config(&["udp:127.0.0.1:0"], "");
    let only_sales = all_routes.replace(
        "[[routes]]\nprofile = \"echo\"\n",
        "[[routes]]\ndialed = { prefix = \"sales\" }\nprofile = \"echo\"\n",
    );
    assert!(only_sales.contains("prefix = \"sales\""), "{only_sales}");
    let mut daemon = Daemon::start(&only_sales);
    let to = daemon.udp_addr();
    wait_for_200(to);
    let (socket, me) = phone();

    // Before: only "sales..." is routed; a live call to it stays up through the reloads.
    let refused = final_response(&socket, to, &invite_to("support", me, to, "before"));
    assert!(refused.starts_with("SIP/2.0 404"), "{refused}");
    let live = final_response(&socket, to, &invite_to("sales1", me, to, "live"));
    assert!(live.starts_with("SIP/2.0 200"), "{live}");
    let to_header = header(&live, "To").unwrap().to_owned();
    let ack = format!(
        "ACK sip:bridge@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKackl\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=c1\r\nTo: {to_header}\r\nCall-ID: live\r\n\
         CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(ack.as_bytes(), to).unwrap();

    // A default route added: "support" is answered after SIGHUP.
    std::fs::write(&daemon.config_path, &all_routes).unwrap();
    hup(&daemon);
    let deadline = Instant::now() + Duration::from_secs(5);
    let answered = loop {
        let reply = final_response(&socket, to, &invite_to("support", me, to, "after"));
        if reply.starts_with("SIP/2.0 200") || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answered.starts_with("SIP/2.0 200"), "{answered}");

    // A broken file: refused, the running configuration stays.
    std::fs::write(&daemon.config_path, "[sip\nlisten = ").unwrap();
    hup(&daemon);
    std::thread::sleep(Duration::from_millis(500));
    let still = final_response(&socket, to, &invite_to("support", me, to, "still"));
    assert!(still.starts_with("SIP/2.0 200"), "{still}");

    // The call from before the reloads is still there: its BYE is answered 200.
    let bye = format!(
        "BYE sip:bridge@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbyel\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=c1\r\nTo: {to_header}\r\nCall-ID: live\r\n\
         CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let ok = final_response(&socket, to, &bye);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");

    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    assert!(stderr.contains("reload refused"), "{stderr}");
    let live_record = stderr
        .lines()
        .find(|l| l.contains("call record") && l.contains("call_id=live"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        live_record.contains("end_reason=\"caller_bye\""),
        "{live_record}"
    );
}
