//! End-to-end tests with real peers: the daemon (as an operator runs it) with the in-process fake
//! realtime server as its upstream, called by SIPp and baresip over loopback, and measured from
//! outside: the fake's record of what it received and sent (`record`, `record_audio`), a tcpdump
//! capture of the daemon's RTP, and baresip's recording of what it heard. The daemon's own
//! per-call log record is checked too, but only as secondary evidence, after the external
//! checks.
//!
//! Everything is on 127.0.0.1 and nothing is sent to any other address; no port is fixed, as the
//! host may run other programs: the daemon listens on port 0 and the test reads the port it
//! bound from its log (`tests/e2e/bridge.rs`); its RTP range, SIPp's ports and baresip's (SIP,
//! ctrl_tcp, RTP) are found free at run time (`tests/common/ports.rs`), and baresip is seen
//! holding its ctrl_tcp socket before the test connects to it. So the tests run in parallel.
//! SIPp, baresip and tcpdump (and root, for the capture) are required: without them a test
//! fails with what to install, unless `SRB_SKIP_E2E=1`, which skips it with a message.
//!
//! | test | what it proves |
//! |---|---|
//! | `g711_passthrough_is_byte_exact` | every RTP payload SIPp sent reaches the model unchanged and in order |
//! | `pcm16_tone_keeps_level_and_frequency` | the 8 -> 24 kHz path keeps a tone's level (1 dB) and pitch (1 %) |
//! | `reply_tone_reaches_baresip_clean` | the model's tone is heard whole, at pitch, without clicks or gaps |
//! | `barge_in_stops_playback_within_a_frame` | after speech_started at most one model frame leaves; truncate = frames sent |
//! | `interrupt_response_false_plays_the_whole_reply` | the caller talking over the reply does not cut it |
//! | `cancel_while_the_upstream_connects_gets_487` | CANCEL during the upstream connect ends the INVITE with 487 |
//! | `upstream_401_gets_503_with_retry_after` | a refused upstream becomes 503 + Retry-After |
//! | `upstream_429_passes_its_retry_after_on` | an upstream 429 with Retry-After: 7 becomes 503 with Retry-After: 7 |
//! | `upstream_close_ends_the_call_with_a_reason` | the model side closing (1001) sends BYE with the session-limit Reason, recorded as upstream_expired |
//! | `twenty_calls_for_thirty_seconds_lose_no_frame` | load: every caller frame of 20 calls reaches the model |
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "e2e/bridge.rs"]
mod bridge;
mod common;
#[path = "e2e/support.rs"]
mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bridge::*;
use serde_json::Value;
use support::*;

fn unix_us(line: &Value) -> u64 {
    line["unix_us"].as_u64().expect("unix_us")
}

fn now_unix_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// Where `needle` sits in `haystack`, if it does.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn secs(ms: u64) -> String {
    format!("{ms}")
}

// --- a. G.711 passthrough ------------------------------------------------------------------------

#[test]
fn g711_passthrough_is_byte_exact() {
    if !tools_present("g711_passthrough_is_byte_exact", &[SIPP, TCPDUMP]) {
        return;
    }
    let mut setup = Setup::new();
    setup.fake = "record_audio = true";
    setup.profile = "audio_format = \"g711_ulaw\"".to_owned();
    let bridge = Bridge::start(setup);
    let mut caller = silence_ulaw(300);
    caller.extend(speech_ulaw());
    caller.extend(silence_ulaw(1000));
    bridge.caller_audio(&caller);

    let capture = bridge.capture();
    let run = bridge.sipp(
        "e2e_call",
        &["-m", "1", "-d", "5000"],
        Duration::from_secs(40),
    );
    let datagrams = capture.stop();
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");

    let (sipp_port, bridge_port) = one_call_ports(&run, &report);
    let rtp = call_rtp(&datagrams, sipp_port, bridge_port);
    // What SIPp sent, in sequence order (loopback does not reorder, but be exact about it).
    let mut sent = rtp.to_bridge.clone();
    sent.sort_by_key(|p| p.seq);
    assert!(
        sent.iter()
            .all(|p| p.payload_type == 0 && p.payload.len() == 160),
        "PCMU, 20 ms packets\n{report}"
    );
    let sent: Vec<u8> = sent.iter().flat_map(|p| p.payload.clone()).collect();
    assert_eq!(
        sent.len(),
        caller.len(),
        "SIPp sent the whole caller file once\n{report}"
    );
    assert!(sent == caller, "SIPp sent the file's bytes\n{report}");

    let conns = stopped.record.connections();
    assert_eq!(conns.len(), 1, "one upstream connection\n{report}");
    let conn = *conns.first().unwrap();
    let received = stopped.record.appended_audio(conn);
    let at = find(&received, &sent).unwrap_or_else(|| {
        panic!(
            "the stream SIPp sent ({} bytes) is not in what the fake received ({} bytes) \
             as one piece\n{report}",
            sent.len(),
            received.len()
        )
    });
    let before = &received[..at];
    let after = &received[at + sent.len()..];
    println!(
        "passthrough: {} bytes sent, found whole in {} received ({} before, {} after)",
        sent.len(),
        received.len(),
        before.len(),
        after.len()
    );
    assert!(
        is_silence_ulaw(before) && is_silence_ulaw(after),
        "only silence around the sent stream: {} bytes before, {} after\n{report}",
        before.len(),
        after.len()
    );

    // Secondary: the daemon's own account.
    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    assert_eq!(call["end_reason"], "caller_bye", "{call}");
    assert_eq!(call["codec"], "PCMU", "{call}");
    assert_eq!(call["caller_frames_dropped"], 0, "{call}");
    assert!(
        call["frames_to_model"].as_u64().unwrap() >= (sent.len() / 160) as u64,
        "{call}"
    );
}

// --- b. pcm16: a tone keeps its level and frequency ----------------------------------------------

#[test]
fn pcm16_tone_keeps_level_and_frequency() {
    if !tools_present("pcm16_tone_keeps_level_and_frequency", &[SIPP]) {
        return;
    }
    let mut setup = Setup::new();
    setup.fake = "record_audio = true";
    setup.profile = "audio_format = \"pcm16\"".to_owned();
    let bridge = Bridge::start(setup);
    let tone = ulaw_encode(&sine(1000.0, -10.0, 2000, 8000));
    let mut caller = silence_ulaw(300);
    caller.extend(&tone);
    caller.extend(silence_ulaw(1000));
    bridge.caller_audio(&caller);

    let run = bridge.sipp(
        "e2e_call",
        &["-m", "1", "-d", "4000"],
        Duration::from_secs(40),
    );
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    let conns = stopped.record.connections();
    assert_eq!(conns.len(), 1, "one upstream connection\n{report}");
    let received = pcm16le(&stopped.record.appended_audio(*conns.first().unwrap()));

    // The source as sent: the mu-law tone decoded; both measured away from the edges.
    let source = ulaw_decode(&tone);
    let (start, end) = active_span(&received, 1000)
        .unwrap_or_else(|| panic!("no tone in {} samples at 24 kHz\n{report}", received.len()));
    let length_ms = (end - start) as f64 / 24.0;
    assert!(
        (length_ms - 2000.0).abs() <= 25.0,
        "the whole 2000 ms tone arrived, not {length_ms:.1} ms\n{report}"
    );
    let steady = &received[start + 2400..end - 2400];
    let level = db(rms(steady) / rms(&source[800..source.len() - 800]));
    let hz = frequency(steady, 24_000.0);
    println!("pcm16: level {level:+.2} dB, frequency {hz:.2} Hz, {length_ms:.1} ms");
    assert!(
        level.abs() <= 1.0,
        "RMS {level:+.2} dB from the source\n{report}"
    );
    assert!(
        (hz - 1000.0).abs() <= 10.0,
        "frequency {hz:.2} Hz, not 1000 Hz within 1 %\n{report}"
    );

    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    assert_eq!(call["audio_format"], "pcm16", "{call}");
    assert_eq!(call["caller_frames_dropped"], 0, "{call}");
}

// --- c. the model's tone as baresip hears it -----------------------------------------------------

#[test]
fn reply_tone_reaches_baresip_clean() {
    if !tools_present("reply_tone_reaches_baresip_clean", &[BARESIP]) {
        return;
    }
    let mut setup = Setup::new();
    setup.fake = r#"reply = { kind = "tone", frequency_hz = 440, duration_ms = 1500 }"#;
    // The model speaks first; the caller stays silent (no barge-in).
    setup.profile = "audio_format = \"g711_ulaw\"\ngreeting = \"Say hello.\"".to_owned();
    let bridge = Bridge::start(setup);

    let dir = bridge.dir().to_owned();
    let conf = dir.join("baresip");
    let sounds = dir.join("heard");
    std::fs::create_dir(&conf).unwrap();
    std::fs::create_dir(&sounds).unwrap();
    let silence = dir.join("silence.wav");
    write_wav(&silence, &vec![0; 8000 * 10], 8000);
    let sip = SocketAddr::from((LOCALHOST, common::ports::free_udp_tcp_port()));
    let ctrl_addr = SocketAddr::from((LOCALHOST, common::ports::free_tcp_port()));
    let (rtp_first, rtp_last) = common::ports::free_udp_range(100);
    std::fs::write(
        conf.join("config"),
        format!(
            "poll_method epoll\n\
             sip_listen {sip}\n\
             sip_trans_def udp\n\
             net_interface 127.0.0.1\n\
             audio_source aufile,{silence}\n\
             audio_alert aufile,{silence}\n\
             rtp_ports {rtp_first}-{rtp_last}\n\
             snd_path {sounds}\n\
             module_path {BARESIP_MODULES}\n\
             module g711.so\n\
             module aufile.so\n\
             module sndfile.so\n\
             module_app account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen {ctrl_addr}\n",
            silence = silence.display(),
            sounds = sounds.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("accounts"),
        "<sip:caller@127.0.0.1>;regint=0;audio_codecs=PCMU\n",
    )
    .unwrap();
    std::fs::write(conf.join("contacts"), "").unwrap();
    let baresip_log = dir.join("baresip.log");
    let log = std::fs::File::create(&baresip_log).unwrap();
    let mut baresip = Command::new("baresip")
        .arg("-f")
        .arg(&conf)
        .args(["-4", "-s"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    // Commands go to baresip's own ctrl_tcp socket, never to another program's.
    let baresip_log_text = || std::fs::read_to_string(&baresip_log).unwrap_or_default();
    for (proto, addr) in [
        (common::ports::Proto::Udp, sip),
        (common::ports::Proto::Tcp, ctrl_addr),
    ] {
        common::ports::wait_until_bound(&mut baresip, "baresip", proto, addr, baresip_log_text);
    }
    let mut ctrl = Ctrl::connect(ctrl_addr);
    let dial = format!("sip:echo@127.0.0.1:{}", bridge.sip_port);
    let established = ctrl.command("dial", &dial, "CALL_ESTABLISHED", Duration::from_secs(15));
    // The tone is 1.5 s from the answer; listen for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let closed = established && ctrl.command("hangup", "", "CALL_CLOSED", Duration::from_secs(5));
    ctrl.send("quit", "");
    let baresip_exit = wait_or_kill(&mut baresip, Duration::from_secs(5));
    let stopped = bridge.stop();
    let events: Vec<String> = ctrl.seen.iter().map(ToString::to_string).collect();
    let report = format!(
        "baresip exit {baresip_exit:?}\n--- ctrl_tcp ---\n{}\n--- baresip ---\n{}\n{}",
        events.join("\n"),
        tail(
            &std::fs::read_to_string(&baresip_log).unwrap_or_default(),
            10_000
        ),
        stopped.report()
    );
    assert!(established && closed, "baresip's call failed\n{report}");

    // sndfile writes what baresip sent (-enc) and what it heard (-dec).
    let heard: Vec<PathBuf> = std::fs::read_dir(&sounds)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .collect();
    assert_eq!(
        heard.len(),
        1,
        "one recording of the call: {heard:?}\n{report}"
    );
    let (samples, rate) = read_wav(&heard[0]);
    let rate_f = f64::from(rate);
    let (start, end) = active_span(&samples, 300).unwrap_or_else(|| {
        panic!(
            "baresip heard no tone ({} samples)\n{report}",
            samples.len()
        )
    });
    let tone = &samples[start..end];
    let length_ms = tone.len() as f64 * 1000.0 / rate_f;
    let hz = frequency(tone, rate_f);
    let defects = tone_defects(tone, 440.0, rate_f);
    println!("baresip heard {length_ms:.1} ms at {hz:.2} Hz, {defects:?}, {rate} Hz WAV");
    assert!(
        (length_ms - 1500.0).abs() <= 40.0,
        "tone of {length_ms:.1} ms, not 1500 +/- 40\n{report}"
    );
    assert!(
        (hz - 440.0).abs() <= 4.4,
        "pitch {hz:.2} Hz, not 440 within 1 %\n{report}"
    );
    assert!(
        defects.clean(),
        "clicks or gaps in the tone: {defects:?}\n{report}"
    );
    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
}

/// How far a recorded tone is from a clean sine: its largest sample-to-sample step against the
/// steepest a sine of its peak and frequency takes (plus G.711's quantisation at that level:
/// steps of 256 above 4096), and its longest run of near-zero samples (a sine has at most one
/// per zero crossing at these rates; a longer run is a gap).
#[derive(Debug)]
#[allow(dead_code)] // every field is shown in failure messages, through Debug
struct ToneDefects {
    peak: u16,
    largest_step: i32,
    largest_step_ms: f64,
    allowed_step: f64,
    longest_quiet_run: usize,
}

impl ToneDefects {
    fn clean(&self) -> bool {
        f64::from(self.largest_step) <= self.allowed_step && self.longest_quiet_run < 3
    }
}

fn tone_defects(tone: &[i16], hz: f64, rate: f64) -> ToneDefects {
    let peak = tone.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    let slope = f64::from(peak) * 2.0 * std::f64::consts::PI * hz / rate;
    let (at, largest_step) = tone
        .windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .enumerate()
        .max_by_key(|&(_, d)| d)
        .unwrap_or((0, 0));
    let quiet = i32::from(peak) / 50;
    let (mut longest, mut run) = (0, 0);
    for &s in tone {
        run = if i32::from(s).abs() <= quiet {
            run + 1
        } else {
            0
        };
        longest = longest.max(run);
    }
    ToneDefects {
        peak,
        largest_step,
        largest_step_ms: at as f64 * 1000.0 / rate,
        allowed_step: slope * 1.05 + 2.0 * 256.0,
        longest_quiet_run: longest,
    }
}

/// The measurements themselves must be able to fail: a clean G.711 tone passes, and the same
/// tone with a 20 ms frame dropped (a phase jump), a frame of zeros, or one sample skipped
/// does not.
#[test]
fn tone_analysis_finds_clicks_and_gaps() {
    let clean = ulaw_decode(&ulaw_encode(&sine(440.0, -12.0, 1500, 8000)));
    let defects = tone_defects(&clean, 440.0, 8000.0);
    assert!(defects.clean(), "{defects:?}");
    assert!((frequency(&clean, 8000.0) - 440.0).abs() < 0.1);
    let mut dropped_frame = clean.clone();
    dropped_frame.drain(4003..4163);
    let mut zero_frame = clean.clone();
    zero_frame[4000..4160].fill(0);
    let mut skipped_sample = clean.clone();
    skipped_sample.remove(4001);
    for (name, broken) in [
        ("dropped frame", dropped_frame),
        ("zero frame", zero_frame),
        ("skipped sample", skipped_sample),
    ] {
        let defects = tone_defects(&broken, 440.0, 8000.0);
        assert!(!defects.clean(), "{name} not found: {defects:?}");
    }
    // Level and pitch: -12 dBFS peak is an RMS of 32767 * 10^(-12/20) / sqrt(2).
    let expected = 32767.0 * 10f64.powf(-12.0 / 20.0) / 2f64.sqrt();
    assert!(db(rms(&clean) / expected).abs() < 0.1);
    assert!((frequency(&sine(1010.0, -10.0, 500, 24_000), 24_000.0) - 1010.0).abs() < 0.5);
}

/// The capture parser on a hand-made pcap: an RTP packet over Ethernet/IPv4/UDP, an RTCP packet
/// (skipped as RTP), and a record cut short at the end (ignored).
#[test]
fn pcap_parser_reads_rtp_over_udp() {
    fn frame(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = u16::try_from(20 + 8 + payload.len()).unwrap();
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }
    let mut rtp = vec![0x80, 0x00, 0x12, 0x34, 0, 0, 0, 160, 0xca, 0x11, 0, 0];
    rtp.extend_from_slice(&[0xd5; 160]);
    let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 1];
    let mut pcap = Vec::new();
    for word in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65535, 1] {
        pcap.extend_from_slice(&word.to_le_bytes());
    }
    for (secs, micros, f) in [
        (1_700_000_000_u32, 20_000_u32, frame(6000, 40000, &rtp)),
        (1_700_000_000, 40_000, frame(6001, 40001, &rtcp)),
    ] {
        for word in [secs, micros, f.len() as u32, f.len() as u32] {
            pcap.extend_from_slice(&word.to_le_bytes());
        }
        pcap.extend_from_slice(&f);
    }
    pcap.extend_from_slice(&[1, 2, 3]);
    let datagrams = parse_pcap(&pcap);
    assert_eq!(datagrams.len(), 2);
    assert_eq!(datagrams[0].unix_us, 1_700_000_000_020_000);
    assert_eq!(datagrams[0].src, (LOCALHOST, 6000));
    assert_eq!(datagrams[0].dst, (LOCALHOST, 40000));
    let packets = rtp_packets(&datagrams, |_| true);
    assert_eq!(packets.len(), 1, "RTCP is not RTP");
    assert_eq!(packets[0].seq, 0x1234);
    assert_eq!(packets[0].timestamp, 160);
    assert_eq!(packets[0].ssrc, 0xca11_0000);
    assert_eq!(packets[0].payload, vec![0xd5; 160]);
    assert!(!is_silence_ulaw(&packets[0].payload));
    assert!(is_silence_ulaw(&[0xff, 0x7f]));
}

// --- d. barge-in ---------------------------------------------------------------------------------

/// Model frames: the bridge's non-silent PCMU payloads.
fn model_frames(from_bridge: &[Rtp]) -> Vec<&Rtp> {
    from_bridge
        .iter()
        .filter(|p| !is_silence_ulaw(&p.payload))
        .collect()
}

#[test]
fn barge_in_stops_playback_within_a_frame() {
    if !tools_present("barge_in_stops_playback_within_a_frame", &[SIPP, TCPDUMP]) {
        return;
    }
    let mut setup = Setup::new();
    setup.fake = r#"reply = { kind = "tone", frequency_hz = 440, duration_ms = 10000 }"#;
    setup.profile = "audio_format = \"g711_ulaw\"".to_owned();
    let bridge = Bridge::start(setup);
    // Speech; 0.5 s of silence ends the turn (VAD) and the 10 s reply starts; 2 s into it
    // the caller speaks again.
    let speech = speech_ulaw();
    let mut caller = silence_ulaw(500);
    caller.extend(&speech);
    caller.extend(silence_ulaw(2500));
    caller.extend(&speech);
    caller.extend(silence_ulaw(1500));
    bridge.caller_audio(&caller);
    let call_ms = caller.len() / 8 + 500;

    let capture = bridge.capture();
    let run = bridge.sipp(
        "e2e_call",
        &["-m", "1", "-d", &secs(call_ms as u64)],
        Duration::from_secs(40),
    );
    let datagrams = capture.stop();
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    let (sipp_port, bridge_port) = one_call_ports(&run, &report);
    let rtp = call_rtp(&datagrams, sipp_port, bridge_port);
    let record = &stopped.record;
    let conns = record.connections();
    assert_eq!(conns.len(), 1, "one upstream connection\n{report}");
    let conn = *conns.first().unwrap();

    // The fake's side: the reply, then the caller's speech during it.
    let responses = record.events(conn, "out", "response.created");
    assert!(!responses.is_empty(), "no reply\n{report}");
    let reply_at = unix_us(responses[0]);
    let next_reply_at = responses.get(1).map_or(u64::MAX, |r| unix_us(r));
    let barge = record
        .events(conn, "out", "input_audio_buffer.speech_started")
        .into_iter()
        .find(|e| unix_us(e) > reply_at)
        .unwrap_or_else(|| panic!("no speech_started during the reply\n{report}"));
    let barge_at = unix_us(barge);

    // The capture's side: the model frames of the first reply, before and after the event.
    let frames = model_frames(&rtp.from_bridge);
    // The two clocks agree: the first model frame leaves after the fake created the reply, and
    // soon after (the fake streams faster than real time).
    let first_frame = frames
        .first()
        .unwrap_or_else(|| panic!("no model audio reached SIPp\n{report}"))
        .unix_us;
    assert!(
        first_frame > reply_at && first_frame - reply_at < 1_000_000,
        "first model frame {first_frame} us, reply created {reply_at} us: the capture's and \
         the record's clocks disagree\n{report}"
    );
    let before = frames.iter().filter(|p| p.unix_us <= barge_at).count();
    let after: Vec<&&Rtp> = frames
        .iter()
        .filter(|p| p.unix_us > barge_at && p.unix_us < next_reply_at)
        .collect();
    let late_ms: Vec<f64> = after
        .iter()
        .map(|p| (p.unix_us - barge_at) as f64 / 1000.0)
        .collect();
    let last_before_ms = frames
        .iter()
        .rfind(|p| p.unix_us <= barge_at)
        .map_or(f64::NAN, |p| (barge_at - p.unix_us) as f64 / 1000.0);
    println!(
        "barge-in: {before} model frames before speech_started (the last {last_before_ms:.1} ms \
         before it), {} after (at {late_ms:?} ms)",
        after.len()
    );
    assert!(
        (50..=150).contains(&before),
        "the caller spoke about 2 s into the reply: {before} frames had been played\n{report}"
    );
    assert!(
        after.len() <= 1,
        "{} model frames left the bridge after the fake sent speech_started (at {late_ms:?} ms \
         after it)\n{report}",
        after.len()
    );

    // The truncate: as much as was played, and accepted.
    let sent_ms = (before + after.len()) as i64 * 20;
    let truncates = record.events(conn, "in", "conversation.item.truncate");
    assert_eq!(truncates.len(), 1, "one truncate\n{report}");
    let truncate = truncates[0];
    assert!(
        unix_us(truncate) > barge_at,
        "truncate after the barge-in\n{report}"
    );
    let audio_end_ms = truncate["event"]["audio_end_ms"].as_i64().unwrap();
    assert!(
        (audio_end_ms - sent_ms).abs() <= 20,
        "truncate audio_end_ms {audio_end_ms}, but {sent_ms} ms of model audio were sent\n{report}"
    );
    let reply = record
        .of(conn, "out")
        .filter(|l| unix_us(l) >= unix_us(truncate))
        .find(|l| {
            let kind = l["event"]["type"].as_str().unwrap_or("");
            kind == "error" || kind == "conversation.item.truncated"
        })
        .unwrap_or_else(|| panic!("no answer to the truncate\n{report}"));
    assert_eq!(
        reply["event"]["type"], "conversation.item.truncated",
        "the fake refused the truncate: {}\n{report}",
        reply["event"]
    );
    assert_eq!(
        reply["event"]["item_id"], truncate["event"]["item_id"],
        "{report}"
    );

    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    assert!(call["barge_ins"].as_u64().unwrap() >= 1, "{call}");
    assert!(
        call["frames_after_barge_in"].as_u64().unwrap() <= 1,
        "{call}"
    );
    assert_eq!(call["truncate_errors"], 0, "{call}");
}

// --- e. interrupt_response = false ---------------------------------------------------------------

#[test]
fn interrupt_response_false_plays_the_whole_reply() {
    if !tools_present(
        "interrupt_response_false_plays_the_whole_reply",
        &[SIPP, TCPDUMP],
    ) {
        return;
    }
    let mut setup = Setup::new();
    setup.fake = r#"reply = { kind = "tone", frequency_hz = 440, duration_ms = 10000 }"#;
    // The greeting is the 10 s reply; the caller's turn must neither cut it nor start another.
    setup.profile = "audio_format = \"g711_ulaw\"\ngreeting = \"Say hello.\"\n\
                     turn_detection = { type = \"server_vad\", interrupt_response = false, \
                     create_response = false }"
        .to_owned();
    let bridge = Bridge::start(setup);
    let mut caller = silence_ulaw(2000);
    caller.extend(speech_ulaw());
    caller.extend(silence_ulaw(1000));
    bridge.caller_audio(&caller);

    let capture = bridge.capture();
    let run = bridge.sipp(
        "e2e_call",
        &["-m", "1", "-d", "11500"],
        Duration::from_secs(40),
    );
    let datagrams = capture.stop();
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    let (sipp_port, bridge_port) = one_call_ports(&run, &report);
    let rtp = call_rtp(&datagrams, sipp_port, bridge_port);
    let record = &stopped.record;
    let conns = record.connections();
    assert_eq!(conns.len(), 1, "one upstream connection\n{report}");
    let conn = *conns.first().unwrap();

    let frames = model_frames(&rtp.from_bridge);
    assert!(!frames.is_empty(), "no model audio reached SIPp\n{report}");
    let (first, last) = (frames[0].unix_us, frames[frames.len() - 1].unix_us);
    let spoke = record
        .events(conn, "out", "input_audio_buffer.speech_started")
        .iter()
        .map(|e| unix_us(e))
        .find(|&t| t > first && t < last);
    let gaps = rtp
        .from_bridge
        .iter()
        .filter(|p| p.unix_us > first && p.unix_us < last && is_silence_ulaw(&p.payload))
        .count();
    println!(
        "interrupt_response=false: {} model frames, {gaps} silent frames among them",
        frames.len()
    );
    assert!(
        spoke.is_some(),
        "the fake detected no caller speech during the reply\n{report}"
    );
    assert!(
        frames.len().abs_diff(500) <= 1,
        "{} model frames, not the whole 10 s reply (500)\n{report}",
        frames.len()
    );
    assert_eq!(
        gaps, 0,
        "the reply was not played straight through\n{report}"
    );
    for kind in ["conversation.item.truncate", "response.cancel"] {
        assert!(
            record.events(conn, "in", kind).is_empty(),
            "the bridge sent {kind}\n{report}"
        );
    }

    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    assert_eq!(call["truncates"], 0, "{call}");
}

// --- f. upstream failures ------------------------------------------------------------------------

/// A TCP listener on 127.0.0.1 standing in for a realtime service: each accepted connection
/// is answered by `answer` (on a thread of its own); returns the port and the accept times.
fn stand_in_upstream(
    answer: fn(TcpStream),
) -> (u16, Arc<Mutex<Vec<u64>>>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&accepted);
    // Bounded: the listener lives 30 s at most.
    let thread = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => {
                    seen.lock().unwrap().push(now_unix_us());
                    stream.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || answer(stream));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (port, accepted, thread)
}

/// Reads the upgrade request and never answers (until the peer goes, or 20 s).
fn never_answer(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// Reads the upgrade request and answers `status` (with `headers`) and a JSON `body`.
fn answer_http(mut stream: TcpStream, status: &str, headers: &str, body: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// Answers the upgrade request with 401 and OpenAI's error body.
fn answer_401(stream: TcpStream) {
    let body = r#"{"error":{"message":"Incorrect API key provided: sk-e2e***","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    answer_http(stream, "401 Unauthorized", "", body);
}

/// Answers the upgrade request with 429 and a Retry-After of 7 s.
fn answer_429(stream: TcpStream) {
    let body = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    answer_http(stream, "429 Too Many Requests", "Retry-After: 7\r\n", body);
}

/// A call placed at a daemon whose upstream is a stand-in answering with `answer`: SIPp's
/// run (it expects a 503), what the daemon left, and the stand-in's accept times.
fn call_a_refusing_upstream(answer: fn(TcpStream)) -> (SippRun, Stopped, Vec<u64>) {
    let (port, accepted, _listener) = stand_in_upstream(answer);
    let mut setup = Setup::new();
    setup.upstream = "remote";
    setup.upstreams = openai_upstream(port);
    setup.env = vec![("E2E_API_KEY", "sk-e2e-test-key".to_owned())];
    let bridge = Bridge::start(setup);
    let run = bridge.sipp("e2e_refused", &["-m", "1"], Duration::from_secs(30));
    let stopped = bridge.stop();
    let accepted = accepted.lock().unwrap().clone();
    (run, stopped, accepted)
}

fn openai_upstream(port: u16) -> String {
    format!(
        "[upstreams.remote]\nkind = \"openai\"\napi_key_env = \"E2E_API_KEY\"\n\
         url = \"ws://127.0.0.1:{port}/v1/realtime\"\n"
    )
}

#[test]
fn cancel_while_the_upstream_connects_gets_487() {
    if !tools_present("cancel_while_the_upstream_connects_gets_487", &[SIPP]) {
        return;
    }
    let (port, accepted, _listener) = stand_in_upstream(never_answer);
    let mut setup = Setup::new();
    setup.upstream = "remote";
    setup.upstreams = openai_upstream(port);
    setup.env = vec![("E2E_API_KEY", "sk-e2e-test-key".to_owned())];
    let bridge = Bridge::start(setup);
    let started = now_unix_us();
    let run = bridge.sipp("e2e_cancel", &["-m", "1"], Duration::from_secs(30));
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    assert!(
        run.actions
            .contains("outcome: 200 to the CANCEL, 487 to the INVITE"),
        "{report}"
    );
    // The CANCEL came while the bridge was connecting: the stand-in saw the connection.
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.iter().any(|&t| t >= started),
        "the bridge never connected to its upstream\n{report}"
    );

    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    assert_eq!(call["end_reason"], "cancelled", "{call}");
}

#[test]
fn upstream_401_gets_503_with_retry_after() {
    if !tools_present("upstream_401_gets_503_with_retry_after", &[SIPP]) {
        return;
    }
    let (run, stopped, accepted) = call_a_refusing_upstream(answer_401);
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    assert!(run.actions.contains("503 Retry-After:  30 "), "{report}");
    assert!(
        !accepted.is_empty(),
        "the bridge never connected to its upstream\n{report}"
    );
    assert!(
        !stopped.log.contains("sk-e2e-test-key"),
        "the API key is in the log\n{report}"
    );

    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    assert_eq!(call["end_reason"], "upstream_failed", "{call}");
}

#[test]
fn upstream_429_passes_its_retry_after_on() {
    if !tools_present("upstream_429_passes_its_retry_after_on", &[SIPP]) {
        return;
    }
    let (run, stopped, accepted) = call_a_refusing_upstream(answer_429);
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    assert!(run.actions.contains("503 Retry-After:  7 "), "{report}");
    assert!(!accepted.is_empty(), "{report}");
    let call = stopped.call_record();
    assert_eq!(call["end_reason"], "upstream_failed", "{call}");
    assert_eq!(call["answered"], false, "{call}");
}

#[test]
fn upstream_close_ends_the_call_with_a_reason() {
    if !tools_present("upstream_close_ends_the_call_with_a_reason", &[SIPP]) {
        return;
    }
    let mut setup = Setup::new();
    setup.fake = r#"session_max_duration = "3s""#;
    setup.profile = "audio_format = \"g711_ulaw\"".to_owned();
    let bridge = Bridge::start(setup);
    let mut caller = speech_ulaw();
    caller.extend(silence_ulaw(1000));
    bridge.caller_audio(&caller);
    let run = bridge.sipp("e2e_upstream_drop", &["-m", "1"], Duration::from_secs(30));
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    let reason = run
        .actions
        .lines()
        .find_map(|l| l.strip_prefix("BYE Reason: "))
        .unwrap_or_else(|| panic!("no Reason logged\n{report}"));
    println!("BYE Reason: {reason}");
    // The fake closed the session (1001) before the bridge hung up.
    let conns = stopped.record.connections();
    assert_eq!(conns.len(), 1, "one upstream connection\n{report}");
    let closed = stopped
        .record
        .of(*conns.first().unwrap(), "out")
        .find(|l| l.get("close").is_some())
        .unwrap_or_else(|| panic!("the fake did not close\n{report}"));
    assert_eq!(closed["close"]["code"], 1001, "{report}");

    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    // The session's maximum duration: the daemon names it apart from other closes.
    assert_eq!(call["end_reason"], "upstream_expired", "{call}");
    assert!(
        reason
            .trim()
            .starts_with("Q.850;cause=16;text=\"realtime session reached its maximum duration"),
        "{reason}"
    );
}

// --- g. load -------------------------------------------------------------------------------------

#[test]
fn twenty_calls_for_thirty_seconds_lose_no_frame() {
    if !tools_present(
        "twenty_calls_for_thirty_seconds_lose_no_frame",
        &[SIPP, TCPDUMP],
    ) {
        return;
    }
    const CALLS: usize = 20;
    let mut setup = Setup::new();
    // The audio in full: base64 sizes alone do not give exact byte counts.
    setup.fake = "record_audio = true";
    setup.profile = "audio_format = \"g711_ulaw\"".to_owned();
    let bridge = Bridge::start(setup);
    let mut caller = speech_ulaw();
    caller.extend(silence_ulaw(1000));
    bridge.caller_audio(&caller);

    let capture = bridge.capture();
    let run = bridge.sipp(
        "e2e_load",
        &["-m", "20", "-l", "20", "-r", "20", "-d", "30000"],
        Duration::from_secs(60),
    );
    let datagrams = capture.stop();
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    let calls = media_ports(&parse_trace(&run.messages));
    assert_eq!(calls.len(), CALLS, "calls with media\n{report}");

    // Per call: the frames SIPp sent to the bridge (capture) and the bytes the fake received.
    let mut sent: Vec<usize> = calls
        .iter()
        .map(|(_, sipp_port, bridge_port)| {
            call_rtp(&datagrams, *sipp_port, *bridge_port)
                .to_bridge
                .iter()
                .map(|p| p.payload.len())
                .sum()
        })
        .collect();
    let conns = stopped.record.connections();
    assert_eq!(
        conns.len(),
        CALLS,
        "one upstream connection per call\n{report}"
    );
    let mut received: Vec<usize> = conns
        .iter()
        .map(|&c| stopped.record.appended_audio(c).len())
        .collect();
    // And in order: every call streamed caller.ulaw looped from its start.
    let looped: Vec<u8> = caller.iter().copied().cycle().take(300_000).collect();
    for &c in &conns {
        let audio = stopped.record.appended_audio(c);
        assert!(
            audio[..] == looped[..audio.len().min(looped.len())],
            "connection {c}: the audio is not the caller's stream in order\n{report}"
        );
    }
    sent.sort_unstable();
    received.sort_unstable();
    println!("load: bytes sent per call {sent:?}\nbytes received per call {received:?}");
    // 30 s of 8 kHz mu-law is 240000 bytes; the BYE comes 30 s after the stream started.
    for &bytes in &received {
        assert!(
            (236_000..=244_000).contains(&bytes),
            "a call's model received {bytes} bytes, not 30 s of audio\n{report}"
        );
    }
    // What each call sent arrived, less at most the frames still in flight at the BYE.
    for (s, r) in sent.iter().zip(&received) {
        assert!(
            r <= s && s - r <= 2 * 160,
            "sent {s} bytes, the model received {r}\nsent {sent:?}\nreceived {received:?}\n{report}"
        );
    }

    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let records = call_records(&stopped.log);
    assert_eq!(records.len(), CALLS, "call records\n{report}");
    for call in &records {
        assert_eq!(call["end_reason"], "caller_bye", "{call}");
        assert_eq!(call["caller_frames_dropped"], 0, "{call}");
    }
}
