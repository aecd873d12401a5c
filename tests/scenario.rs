//! Whole calls on one simulated clock: the SIP endpoint, the call and the fake realtime
//! server's core wired together with no sockets and no real time (`scenario/harness.rs`).
//! Each test runs a call from the INVITE to its end in milliseconds and checks exact packets
//! and events, the failures of a misbehaving upstream among them.
//!
//! | test | what it proves |
//! |---|---|
//! | `a_call_runs_from_invite_to_bye_with_audio_both_ways_and_barge_in` | 100/180/200, the caller's audio reaches the model byte for byte, the model's reply is paced out, barge-in truncates at the frames sent, BYE ends everything |
//! | `an_upstream_that_stops_reading_is_hung_up_within_the_stall_limit_and_rtp_keeps_its_pace` | BYE with `cause=38 "realtime upstream not reading"` within the stall limit plus one keepalive; RTP every 20 ms until then, none after |
//! | `a_fatal_upstream_error_ends_the_call_and_nothing_flows_after_the_bye` | server errors: BYE, the WebSocket closed by us, no RTP after the BYE |
//! | `a_refused_session_setup_is_a_503_and_releases_everything` | an `error` to our `session.update` with the socket left open: 503, the socket closed, one record |
//! | `a_flood_of_model_audio_is_bounded_and_a_barge_in_still_truncates_exactly` | queued audio capped at `limits.max_queued_audio`, memory flat, truncate = frames sent |
//! | `a_close_1001_ends_the_call_as_expired` | the session limit is `upstream_expired`, BYE with its Reason |
//! | `a_refused_invite_opens_no_upstream` | 488 (no codec), 404 (no route), 503 (max_calls): no Connect, no call |
//! | `a_drain_with_a_stuck_upstream_ends_at_its_deadline` | the call hangs up at the drain deadline and its record is out at once, though the upstream reads nothing |
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "scenario/harness.rs"]
mod harness;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use harness::{World, config};
use sip_realtime_bridge::audio::g711;
use sip_realtime_bridge::call::{CallEnd, CallEvent, Input, Signalling};
use sip_realtime_bridge::rtp::packet;

/// 20 ms of a 440 Hz tone at about -10 dBFS in mu-law (speech for the fake's VAD).
fn loud(frame: u64) -> Vec<u8> {
    let pcm: Vec<i16> = (0..160u64)
        .map(|i| {
            let t = (frame * 160 + i) as f64 / 8000.0;
            ((t * 440.0 * std::f64::consts::TAU).sin() * 10_000.0) as i16
        })
        .collect();
    let mut out = Vec::new();
    g711::encode_ulaw_into(&pcm, &mut out);
    out
}

fn silence(_: u64) -> Vec<u8> {
    vec![0xFF; 160]
}

/// Speech for `talk` frames, then silence.
fn turn(talk: u64) -> impl FnMut(u64) -> Vec<u8> {
    move |frame| {
        if frame < talk {
            loud(frame)
        } else {
            silence(frame)
        }
    }
}

fn payload(datagram: &[u8]) -> Vec<u8> {
    packet::parse(datagram).unwrap().payload.to_vec()
}

fn is_model_audio(datagram: &[u8]) -> bool {
    payload(datagram) != vec![0xFF; 160]
}

fn reason(world: &World) -> String {
    let (_, bye) = world.bye_from_bridge().expect("the bridge sent BYE");
    bye.header("Reason").unwrap_or_default().to_owned()
}

/// Connect, answer, ACK: a call under way at about 10 ms.
fn call_up(world: &mut World) {
    world.invite("echo", None);
    world.run_ms(10);
    assert_eq!(world.invite_statuses(), vec![100, 180, 200]);
}

#[test]
fn a_call_runs_from_invite_to_bye_with_audio_both_ways_and_barge_in() {
    let mut world = World::new(config(
        "reply = { kind = \"echo\" }\nspeed = 4.0",
        "audio_format = \"g711_ulaw\"",
        "",
    ));
    call_up(&mut world);
    assert_eq!(world.leg().connects, 1);
    // The caller says something for a second, then listens.
    world.stream(turn(50));
    world.run_ms(3_000);
    let leg = world.leg();
    // Byte for byte, in order: what the phone sent is what the fake read.
    let appended: Vec<u8> = leg
        .link
        .as_ref()
        .unwrap()
        .read
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.append")
        .flat_map(|e| BASE64.decode(e["audio"].as_str().unwrap()).unwrap())
        .collect();
    let sent: Vec<u8> = (0..appended.len() as u64 / 160)
        .flat_map(turn(50))
        .collect();
    assert!(appended.len() >= 140 * 160, "{} bytes", appended.len());
    assert_eq!(appended, sent[..appended.len()]);
    // The fake echoed the turn back: model audio went out, paced at one packet per 20 ms.
    let model: Vec<_> = leg
        .rtp_out
        .iter()
        .filter(|(_, d)| is_model_audio(d))
        .collect();
    assert!(model.len() >= 40, "{} model frames", model.len());
    let slots: Vec<u64> = leg.rtp_out.iter().map(|(at, _)| world.ms(*at)).collect();
    assert!(slots.windows(2).all(|w| w[1] - w[0] == 20), "paced");
    // The caller talks over the next reply: playback stops at once, the truncate says what
    // was sent.
    world.stop_streaming();
    world.stream(turn(25));
    world.run_ms(1_300);
    world.stop_streaming();
    world.stream(turn(50));
    world.run_ms(900);
    let leg = world.leg();
    let barge_ins: Vec<_> = leg
        .events
        .iter()
        .map(|CallEvent::BargeIn(b)| b.clone())
        .collect();
    assert!(!barge_ins.is_empty(), "a barge-in");
    for barge_in in &barge_ins {
        for truncated in &barge_in.truncated {
            assert_eq!(truncated.audio_end_ms, truncated.sent_ms);
            assert_eq!(truncated.sent_ms % 20, 0);
        }
    }
    let truncates: Vec<u64> = leg
        .link
        .as_ref()
        .unwrap()
        .read
        .iter()
        .filter(|e| e["type"] == "conversation.item.truncate")
        .map(|e| e["audio_end_ms"].as_u64().unwrap())
        .collect();
    let told: Vec<u64> = barge_ins
        .iter()
        .flat_map(|b| b.truncated.iter().map(|t| t.audio_end_ms))
        .collect();
    assert_eq!(
        truncates, told,
        "the fake got exactly the truncates reported"
    );
    // The caller hangs up: the WebSocket is closed normally, one record.
    world.bye();
    world.run_ms(100);
    let leg = world.leg();
    assert_eq!(leg.closed_by_us, Some((1000, "call ended")));
    let record = leg.record.as_ref().unwrap();
    assert_eq!(record.end, CallEnd::CallerBye);
    assert!(record.setup.is_some());
    assert_eq!(record.barge_ins as usize, barge_ins.len());
    let sent = leg.rtp_out.len();
    world.run_ms(5_000);
    assert_eq!(world.leg().rtp_out.len(), sent, "no RTP after the end");
}

#[test]
fn an_upstream_that_stops_reading_is_hung_up_within_the_stall_limit_and_rtp_keeps_its_pace() {
    let mut world = World::new(config(
        "fault = { kind = \"stop_reading\", after = \"5s\" }",
        "audio_format = \"g711_ulaw\"",
        "",
    ));
    // Kernel buffers of a few seconds of appends: the writer blocks once they are full.
    world.socket_buffer_frames = 200;
    call_up(&mut world);
    world.stream(silence);
    world.run_ms(120_000);
    let (bye_at, _) = world.bye_from_bridge().expect("the bridge hung up");
    let bye_ms = world.ms(bye_at);
    // Stopped reading at 5 s: the ping after it is unanswered; 30 s later, BYE.
    assert!(
        (5_000 + 30_000..=5_000 + 30_000 + 15_000).contains(&bye_ms),
        "BYE at {bye_ms} ms"
    );
    assert_eq!(
        reason(&world),
        "Q.850;cause=38;text=\"realtime upstream not reading\""
    );
    let leg = world.leg();
    assert_eq!(leg.closed_by_us, Some((1000, "upstream not reading")));
    // RTP to the caller kept its 20 ms pace all along, and stopped with the BYE.
    let slots: Vec<u64> = leg.rtp_out.iter().map(|(at, _)| world.ms(*at)).collect();
    assert!(
        slots.windows(2).all(|w| w[1] - w[0] == 20),
        "RTP kept its pace"
    );
    assert!(*slots.last().unwrap() <= bye_ms);
    assert!(*slots.last().unwrap() + 40 >= bye_ms, "RTP up to the BYE");
    let record = leg.record.as_ref().unwrap();
    assert_eq!(record.end, CallEnd::UpstreamStalled);
    assert_eq!(leg.finished_at, Some(bye_at), "released with the BYE");
    // Caller audio beyond the backlog limit was counted, not kept.
    assert!(record.caller_frames_unsent > 0, "{record:?}");
    assert!(record.upstream_backlog_max <= 1024);
}

#[test]
fn a_fatal_upstream_error_ends_the_call_and_nothing_flows_after_the_bye() {
    let mut world = World::new(config(
        "fault = { kind = \"error_every_event\", after = \"2s\" }",
        "audio_format = \"g711_ulaw\"",
        "",
    ));
    call_up(&mut world);
    world.stream(silence);
    world.run_ms(10_000);
    let (bye_at, _) = world.bye_from_bridge().expect("the bridge hung up");
    assert!(
        (2_000..2_200).contains(&world.ms(bye_at)),
        "BYE at {} ms",
        world.ms(bye_at)
    );
    assert!(
        reason(&world).starts_with("Q.850;cause=38;text=\"realtime upstream closed"),
        "{}",
        reason(&world)
    );
    let leg = world.leg();
    assert_eq!(leg.closed_by_us, Some((1000, "call ended")));
    assert!(
        leg.rtp_out.iter().all(|(at, _)| *at <= bye_at),
        "no RTP after the BYE"
    );
    let record = leg.record.as_ref().unwrap();
    assert_eq!(record.end, CallEnd::UpstreamClosed);
    assert_eq!(leg.finished_at, Some(bye_at));
}

#[test]
fn a_refused_session_setup_is_a_503_and_releases_everything() {
    let mut world = World::new(config("fault = { kind = \"refuse_session\" }", "", ""));
    world.invite("echo", None);
    world.run_ms(100);
    assert_eq!(world.invite_statuses(), vec![100, 180, 503]);
    let refused = world
        .phone
        .received
        .iter()
        .find(|(_, m)| m.status_code() == Some(503))
        .unwrap();
    assert_eq!(refused.1.header("Retry-After"), Some("30"));
    let leg = world.leg();
    // The service left its socket open: the call closed it, and is over.
    assert_eq!(leg.closed_by_us, Some((1000, "call ended")));
    assert!(leg.link.is_none());
    assert_eq!(leg.next, None, "no timer left");
    let record = leg.record.as_ref().unwrap();
    assert_eq!(record.end, CallEnd::UpstreamFailed);
    assert!(record.end_detail.contains("invalid_value"), "{record:?}");
    assert_eq!(record.setup, None, "not answered");
    assert!(leg.rtp_out.is_empty());
}

#[test]
fn a_flood_of_model_audio_is_bounded_and_a_barge_in_still_truncates_exactly() {
    let mut world = World::new(config(
        "fault = { kind = \"flood_audio\", after = \"1s\" }",
        "audio_format = \"g711_ulaw\"",
        "[limits]\nmax_queued_audio = \"20s\"",
    ));
    call_up(&mut world);
    world.stream(silence);
    world.run_ms(6_000);
    let leg = world.leg();
    assert!(
        leg.call.queued_audio_ms() <= 20_000,
        "{}",
        leg.call.queued_audio_ms()
    );
    assert!(leg.call.queued_audio_ms() >= 15_000);
    let heap = leg.call.playout_heap_bytes();
    assert!(heap < 250_000, "{heap} bytes for 20 s of G.711");
    // The caller talks: playback stops, and the truncate is what was played.
    world.stop_streaming();
    world.stream(turn(40));
    world.run_ms(1_000);
    let leg = world.leg();
    let played = leg
        .rtp_out
        .iter()
        .filter(|(_, d)| is_model_audio(d))
        .count() as u64;
    let [CallEvent::BargeIn(barge_in), ..] = leg.events.as_slice() else {
        panic!("no barge-in: {:?}", leg.events)
    };
    let truncated = barge_in.truncated.first().expect("a truncate");
    assert_eq!(truncated.audio_end_ms, truncated.sent_ms);
    // Everything played before the barge-in is what was truncated to (the flood's tone).
    assert!(
        played * 20 >= truncated.sent_ms && played * 20 <= truncated.sent_ms + 40,
        "played {played} frames, truncated at {} ms",
        truncated.sent_ms
    );
    let record = leg.call.is_ended();
    assert!(!record, "the call goes on");
    world.bye();
    world.run_ms(100);
    let record = world.leg().record.as_ref().unwrap();
    assert!(record.model_audio_dropped_ms > 100_000, "{record:?}");
}

#[test]
fn a_close_1001_ends_the_call_as_expired() {
    let mut world = World::new(config("session_max_duration = \"3s\"", "", ""));
    call_up(&mut world);
    world.stream(silence);
    world.run_ms(5_000);
    let leg = world.leg();
    assert_eq!(leg.closed_by_fake.as_ref().map(|(c, _)| *c), Some(1001));
    assert!(leg.closed_by_us.is_none(), "closed by the service");
    assert_eq!(leg.record.as_ref().unwrap().end, CallEnd::UpstreamExpired);
    assert!(
        reason(&world)
            .starts_with("Q.850;cause=16;text=\"realtime session reached its maximum duration"),
        "{}",
        reason(&world)
    );
}

#[test]
fn a_refused_invite_opens_no_upstream() {
    let mut world = World::new(config("", "", "[limits]\nmax_calls = 1"));
    // No codec we take: 488 before admission.
    world.invite(
        "echo",
        Some("m=audio 6000 RTP/AVP 2\r\na=rtpmap:2 G726-32/8000\r\n"),
    );
    world.run_ms(100);
    assert_eq!(world.invite_statuses(), vec![488]);
    assert!(world.legs.is_empty(), "no call");
    assert_eq!(world.admitted, 0);
    // No route: 404.
    world.phone.received.clear();
    world.invite("nobody", None);
    world.run_ms(100);
    assert_eq!(world.invite_statuses(), vec![404]);
    assert!(world.legs.is_empty());
    // A full house: 503, and the call that has the slot keeps it.
    world.phone.received.clear();
    world.invite("echo", None);
    world.run_ms(100);
    assert_eq!(world.legs.len(), 1);
    world.phone.received.clear();
    world.invite("echo", None);
    world.run_ms(100);
    assert_eq!(world.invite_statuses(), vec![503]);
    assert_eq!(world.legs.len(), 1, "no second call");
    assert_eq!(
        world.legs.values().map(|l| l.connects).sum::<usize>(),
        1,
        "one upstream connection in all"
    );
}

#[test]
fn a_drain_with_a_stuck_upstream_ends_at_its_deadline() {
    let mut world = World::new(config(
        "fault = { kind = \"stop_reading\", after = \"1s\" }",
        "audio_format = \"g711_ulaw\"",
        "",
    ));
    world.socket_buffer_frames = 50;
    call_up(&mut world);
    world.stream(silence);
    world.run_ms(2_000);
    let until = world.now + Duration::from_secs(5);
    let now = world.now;
    world
        .leg_mut()
        .call
        .handle_input(now, Input::Drain { until });
    world.pump();
    world.run_ms(4_900);
    assert!(world.bye_from_bridge().is_none(), "the call may go on");
    world.run_ms(200);
    let (bye_at, _) = world.bye_from_bridge().expect("hung up at the deadline");
    assert_eq!(bye_at, until);
    assert_eq!(
        reason(&world),
        "Q.850;cause=16;text=\"bridge shutting down\""
    );
    let leg = world.leg();
    assert_eq!(leg.finished_at, Some(until), "everything released at once");
    assert_eq!(leg.record.as_ref().unwrap().end, CallEnd::Shutdown);
    assert!(
        leg.closed_by_us.is_some(),
        "the stuck WebSocket is closed, not waited for"
    );
    assert!(matches!(
        leg.signalling.last(),
        Some(Signalling::HangUp { .. })
    ));
}
