//! A whole daemon on one simulated clock, with no sockets: the SIP [`Endpoint`] with its
//! admission, one [`Call`] per admitted INVITE, a [`FakeSession`] per WebSocket (the fake
//! realtime server's core, fault modes included), a scripted caller (`Phone`) that speaks SIP
//! and RTP, and in between the same plumbing the shells do, modelled as data:
//!
//! - the WebSocket is a queue to the call's writer and a socket buffer of
//!   [`Link::buffer_frames`] frames: what the writer writes lands there, and the fake reads it
//!   while it reads at all (a `stop_reading` fault leaves it there, and a full buffer stops the
//!   writer, as the kernel does); a ping the fake reads is answered with a pong, as its
//!   WebSocket library would;
//! - the fake's sends are delivered to the call at once; its timers run on the same clock,
//!   no more often than every [`FAKE_TICK`] (a flood is "as fast as the socket takes it");
//! - the endpoint's transmits reach the phone, the phone's requests reach the endpoint, the
//!   calls' RTP reaches the phone and the phone's RTP the call.
//!
//! Time only moves in [`World::run_until`], from one deadline of anything to the next, so a
//! five-minute call runs in milliseconds and every assertion sees exact packets and events.
//! Like quinn-proto's `Pair` and str0m's `TestRtc`; the daemon's own shells (`io::sip`,
//! `io::call`) do the same with sockets and tokio.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_realtime_bridge::call::{
    Call, CallEnd, CallEvent, CallInfo, CallLimits, CallRecord, CallSetup, Input, MediaSeeds,
    Output, Signalling, Socket,
};
use sip_realtime_bridge::config::{CodecName, Config};
use sip_realtime_bridge::fake_realtime::{FakeDialect, FakeOptions, FakeSession, Outgoing};
use sip_realtime_bridge::realtime::Dialect;
use sip_realtime_bridge::rtp::packet::{self, RtpHeader};
use sip_realtime_bridge::rtp::playout::RtpStart;
use sip_realtime_bridge::rtp::rtcp::NtpTime;
use sip_realtime_bridge::sip::dialog::SessionTimerConfig;
use sip_realtime_bridge::sip::endpoint::{
    Admission, Admit, CallHandle, Endpoint, EndpointConfig, EndpointEvent, Flow, Incoming, Target,
};
use sip_realtime_bridge::sip::message::{SipMessage, parse};
use sip_realtime_bridge::sip::sdp::{Codec, CodecPrefs, LocalMedia};
use sip_realtime_bridge::sip::transaction::TimerConfig;

/// The bridge's SIP address.
pub const BRIDGE: &str = "127.0.0.1:5060";
/// The phone's SIP address.
pub const PHONE: &str = "127.0.0.2:5070";
/// Where the phone receives RTP.
pub const PHONE_RTP: &str = "127.0.0.2:6000";
/// The fake's timers run at most this often.
pub const FAKE_TICK: Duration = Duration::from_millis(10);

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The configuration of the world's bridge: `extra` TOML after a fake upstream `u` (its keys
/// in `fake`) and a profile `p` on it (its keys in `profile`).
pub fn config(fake: &str, profile: &str, extra: &str) -> Config {
    Config::from_toml(&format!(
        "[upstreams.u]\nkind = \"fake\"\n{fake}\n[profiles.p]\nupstream = \"u\"\n{profile}\n\
         [[routes]]\ndialed = {{ prefix = \"echo\" }}\nprofile = \"p\"\n{extra}\n"
    ))
    .unwrap()
}

/// The admission the daemon's signalling loop does: route, capacity, an RTP port.
struct Admitter<'a> {
    config: &'a Config,
    active: usize,
    next_port: &'a mut u16,
    admitted: &'a mut usize,
}

impl Admission for Admitter<'_> {
    fn admit(&mut self, invite: &SipMessage, local: SocketAddr, _remote: SocketAddr) -> Admit {
        let dialed = sip_realtime_bridge::sip::endpoint::dialed(invite);
        let caller = sip_realtime_bridge::sip::endpoint::caller(invite);
        if self.config.route_via(None, &dialed, &caller).is_none() {
            return Admit::Refuse {
                status: 404,
                reason: "Not Found",
                retry_after: None,
            };
        }
        if self.active >= self.config.limits.max_calls.get() as usize {
            return Admit::Refuse {
                status: 503,
                reason: "Service Unavailable",
                retry_after: Some(5),
            };
        }
        *self.admitted += 1;
        let port = *self.next_port;
        *self.next_port += 2;
        Admit::Accept {
            media: LocalMedia::new(local.ip(), port, 1, 1),
        }
    }
}

/// One frame handed to the call's writer.
#[derive(Clone, Debug)]
pub enum Frame {
    Text(String),
    Ping([u8; 8]),
}

/// The WebSocket between a call and its fake session.
pub struct Link {
    pub fake: FakeSession,
    /// Handed to the writer, not written yet (the writer's queue).
    pub queued: VecDeque<Frame>,
    /// Written, not read by the fake yet (the kernel's buffers).
    pub socket: VecDeque<Frame>,
    /// How many frames the socket buffers hold before the writer blocks.
    pub buffer_frames: usize,
    pub written: u64,
    reported: u64,
    /// Everything the fake read, in order.
    pub read: Vec<serde_json::Value>,
    /// The fake's next timer run.
    next_fake: Option<Instant>,
    last_fake_run: Option<Instant>,
}

/// One call of the world.
pub struct Leg {
    pub call: Call,
    pub next: Option<Instant>,
    pub link: Option<Link>,
    /// WebSockets asked for.
    pub connects: usize,
    /// The close the call asked for, if it did.
    pub closed_by_us: Option<(u16, &'static str)>,
    /// The fake closed it (code, reason).
    pub closed_by_fake: Option<(u16, String)>,
    pub signalling: Vec<Signalling>,
    pub events: Vec<CallEvent>,
    pub record: Option<CallRecord>,
    /// RTP the call sent (not RTCP), and when.
    pub rtp_out: Vec<(Instant, Vec<u8>)>,
    pub rtcp_out: usize,
    /// When the record came out.
    pub finished_at: Option<Instant>,
}

/// A SIP phone on 127.0.0.2, scripted by the test.
pub struct Phone {
    pub received: Vec<(Instant, SipMessage)>,
    /// Answer the bridge's 2xx with an ACK, and its BYE with 200.
    pub auto_ack: bool,
    /// The RTP it streams: the payload for each 20 ms, from `streaming_from`.
    pub stream: Option<Box<dyn FnMut(u64) -> Vec<u8>>>,
    next_rtp: Option<Instant>,
    packets_sent: u64,
    stream_base: u64,
    seq: u16,
    ts: u32,
    /// The call it streams to and the dialog it has.
    pub call_id: String,
    pub to_tag: Option<String>,
    pub bridge_contact: Option<String>,
    invites: u64,
    cseq: u32,
}

/// The whole world. See the module documentation.
pub struct World {
    pub t0: Instant,
    pub now: Instant,
    pub config: Config,
    pub endpoint: Endpoint,
    pub legs: BTreeMap<CallHandle, Leg>,
    pub phone: Phone,
    /// INVITEs the admission policy accepted.
    pub admitted: usize,
    /// Frames the kernel's buffers hold between a call's writer and the fake.
    pub socket_buffer_frames: usize,
    next_port: u16,
    random: u64,
}

impl World {
    pub fn new(config: Config) -> World {
        let t0 = Instant::now();
        let codecs = CodecPrefs::new(config.sip.codecs.iter().map(|c| match c {
            CodecName::Pcmu => Codec::Pcmu,
            CodecName::Pcma => Codec::Pcma,
            CodecName::Opus => Codec::Opus,
        }));
        let mut counter = 0u64;
        let endpoint = Endpoint::new(
            EndpointConfig {
                public_host: None,
                codecs,
                timers: TimerConfig::default(),
                session_timer: SessionTimerConfig {
                    enabled: false,
                    ..SessionTimerConfig::default()
                },
                contact_user: "bridge".into(),
                user_agent: String::new(),
            },
            Box::new(move || {
                counter += 1;
                counter
            }),
        );
        World {
            t0,
            now: t0,
            config,
            endpoint,
            legs: BTreeMap::new(),
            phone: Phone {
                received: Vec::new(),
                auto_ack: true,
                stream: None,
                next_rtp: None,
                packets_sent: 0,
                stream_base: 0,
                seq: 1,
                ts: 0,
                call_id: String::new(),
                to_tag: None,
                bridge_contact: None,
                invites: 0,
                cseq: 1,
            },
            admitted: 0,
            socket_buffer_frames: 2_000,
            next_port: 30_000,
            random: 0,
        }
    }

    pub fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_millis() as u64
    }

    pub fn at_ms(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// The one call (panics unless there is exactly one).
    pub fn leg(&self) -> &Leg {
        assert_eq!(self.legs.len(), 1, "one call");
        self.legs.values().next().unwrap()
    }

    pub fn leg_mut(&mut self) -> &mut Leg {
        assert_eq!(self.legs.len(), 1, "one call");
        self.legs.values_mut().next().unwrap()
    }

    // ---- the phone -------------------------------------------------------------------------

    /// The phone sends an INVITE to `user` offering `rtpmap` (an m= format list and its
    /// attributes, PCMU with telephone-event by default).
    pub fn invite(&mut self, user: &str, offer: Option<&str>) {
        self.phone.invites += 1;
        let n = self.phone.invites;
        let media = offer.unwrap_or(
            "m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n",
        );
        let sdp = format!(
            "v=0\r\no=phone {n} 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
             {media}a=sendrecv\r\n"
        );
        self.phone.call_id = format!("call-{n}@127.0.0.2");
        self.phone.to_tag = None;
        self.phone.cseq = 1;
        let invite = format!(
            "INVITE sip:{user}@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-inv{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@127.0.0.2>;tag=phone{n}\r\n\
             To: <sip:{user}@127.0.0.1>\r\n\
             Call-ID: call-{n}@127.0.0.2\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:alice@127.0.0.2:5070>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        self.send_to_bridge(&invite);
    }

    /// The phone hangs up.
    pub fn bye(&mut self) {
        self.phone.cseq += 1;
        let request = self.in_dialog("BYE", self.phone.cseq);
        self.phone.stream = None;
        self.phone.next_rtp = None;
        self.send_to_bridge(&request);
    }

    /// The phone streams `payload(n)` every 20 ms from now (`n` counts from 0 here); the
    /// RTP stream itself goes on (sequence numbers and timestamps continue).
    pub fn stream(&mut self, payload: impl FnMut(u64) -> Vec<u8> + 'static) {
        self.phone.stream = Some(Box::new(payload));
        self.phone.stream_base = self.phone.packets_sent;
        self.phone.next_rtp = Some(self.now);
    }

    pub fn stop_streaming(&mut self) {
        self.phone.stream = None;
        self.phone.next_rtp = None;
    }

    fn in_dialog(&self, method: &str, cseq: u32) -> String {
        let n = self.phone.invites;
        let target = self
            .phone
            .bridge_contact
            .clone()
            .unwrap_or_else(|| "sip:bridge@127.0.0.1:5060".into());
        let tag = self.phone.to_tag.clone().unwrap_or_default();
        format!(
            "{method} {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-{method}{n}x{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@127.0.0.2>;tag=phone{n}\r\n\
             To: <sip:echo@127.0.0.1>;tag={tag}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            self.phone.call_id
        )
    }

    fn send_to_bridge(&mut self, text: &str) {
        let active = self.legs.values().filter(|l| l.record.is_none()).count();
        let mut admitter = Admitter {
            config: &self.config,
            active,
            next_port: &mut self.next_port,
            admitted: &mut self.admitted,
        };
        self.endpoint.handle_incoming(
            self.now,
            Incoming {
                flow: Flow::Udp(0),
                local: addr(BRIDGE),
                remote: addr(PHONE),
                bytes: text.as_bytes(),
            },
            &mut admitter,
        );
        self.pump();
    }

    /// What the phone does with a message from the bridge.
    fn phone_receives(&mut self, message: SipMessage) {
        let now = self.now;
        let reply = if let Some(status) = message.status_code() {
            let invite = message.cseq().method == "INVITE";
            if invite && (200..300).contains(&status) {
                self.phone.to_tag = message.to().tag().map(str::to_owned);
                self.phone.bridge_contact = message.contacts().first().map(|c| c.uri.raw.clone());
                self.phone.auto_ack.then(|| self.in_dialog("ACK", 1))
            } else if invite && status >= 300 {
                // The ACK of a non-2xx is the transaction's (same branch).
                let n = self.phone.invites;
                let tag = message.to().tag().unwrap_or_default().to_owned();
                Some(format!(
                    "ACK sip:echo@127.0.0.1:5060 SIP/2.0\r\n\
                     Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-inv{n};rport\r\n\
                     Max-Forwards: 70\r\n\
                     From: <sip:alice@127.0.0.2>;tag=phone{n}\r\n\
                     To: <sip:echo@127.0.0.1>;tag={tag}\r\n\
                     Call-ID: {}\r\n\
                     CSeq: 1 ACK\r\n\
                     Content-Length: 0\r\n\r\n",
                    self.phone.call_id
                ))
            } else {
                None
            }
        } else if matches!(message.method(), Some("BYE" | "INFO" | "NOTIFY")) {
            self.phone.stream = None;
            self.phone.next_rtp = None;
            let bytes =
                sip_realtime_bridge::sip::message::build_response(&message, 200, "OK", None);
            Some(String::from_utf8(bytes).unwrap())
        } else {
            None
        };
        self.phone.received.push((now, message));
        if let Some(reply) = reply {
            self.send_to_bridge(&reply);
        }
    }

    /// The responses (status codes) the phone got to its INVITE, in order.
    pub fn invite_statuses(&self) -> Vec<u16> {
        self.phone
            .received
            .iter()
            .filter(|(_, m)| m.cseq().method == "INVITE")
            .filter_map(|(_, m)| m.status_code())
            .collect()
    }

    /// The BYE the bridge sent the phone, and when.
    pub fn bye_from_bridge(&self) -> Option<(Instant, &SipMessage)> {
        self.phone
            .received
            .iter()
            .find(|(_, m)| m.method() == Some("BYE"))
            .map(|(at, m)| (*at, m))
    }

    // ---- the clock ---------------------------------------------------------------------------

    /// Runs everything due up to `until`, in order.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            let next = self.next_deadline();
            let Some(next) = next.filter(|at| *at <= until) else {
                break;
            };
            self.now = self.now.max(next);
            self.fire(self.now);
            self.pump();
        }
        self.now = self.now.max(until);
    }

    pub fn run_ms(&mut self, ms: u64) {
        let until = self.now + Duration::from_millis(ms);
        self.run_until(until);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut all = vec![self.endpoint.poll_timeout(), self.phone.next_rtp];
        for leg in self.legs.values() {
            all.push(leg.next);
            if let Some(link) = &leg.link {
                all.push(link.next_fake);
            }
        }
        all.into_iter().flatten().min()
    }

    fn fire(&mut self, now: Instant) {
        if self.endpoint.poll_timeout().is_some_and(|at| at <= now) {
            self.endpoint.handle_timeout(now);
        }
        if self.phone.next_rtp.is_some_and(|at| at <= now) {
            self.phone_rtp(now);
        }
        for leg in self.legs.values_mut() {
            if leg.next.is_some_and(|at| at <= now) {
                leg.next = None;
                leg.call.handle_input(now, Input::Timeout);
            }
            if let Some(link) = &mut leg.link
                && link.next_fake.is_some_and(|at| at <= now)
            {
                link.next_fake = None;
                link.last_fake_run = Some(now);
                link.fake.handle_timeout(now);
            }
        }
    }

    fn phone_rtp(&mut self, now: Instant) {
        let Some(stream) = &mut self.phone.stream else {
            self.phone.next_rtp = None;
            return;
        };
        let payload = stream(self.phone.packets_sent - self.phone.stream_base);
        self.phone.packets_sent += 1;
        let mut datagram = Vec::new();
        packet::write(
            &RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: self.phone.seq,
                timestamp: self.phone.ts,
                ssrc: 0x5150,
            },
            &payload,
            &mut datagram,
        );
        self.phone.seq = self.phone.seq.wrapping_add(1);
        self.phone.ts = self.phone.ts.wrapping_add(160);
        self.phone.next_rtp = Some(now + Duration::from_millis(20));
        // To every live call (there is one in these scenarios).
        for leg in self.legs.values_mut().filter(|l| l.record.is_none()) {
            leg.call.handle_input(
                now,
                Input::Datagram {
                    socket: Socket::Rtp,
                    from: addr(PHONE_RTP),
                    bytes: &datagram,
                },
            );
        }
    }

    // ---- the plumbing -----------------------------------------------------------------------------

    /// Moves everything that can move until nothing does.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(out) = self.endpoint.poll_transmit() {
                moved = true;
                if out.target == Target::Addr(addr(PHONE))
                    && let Ok(message) = parse(&out.payload)
                {
                    self.phone_receives(message);
                }
            }
            while let Some(event) = self.endpoint.poll_event() {
                moved = true;
                self.endpoint_event(event);
            }
            let handles: Vec<CallHandle> = self.legs.keys().copied().collect();
            for handle in handles {
                moved |= self.pump_leg(handle);
            }
            if !moved {
                return;
            }
        }
    }

    fn endpoint_event(&mut self, event: EndpointEvent) {
        match event {
            EndpointEvent::IncomingCall {
                call,
                call_id,
                dialed,
                caller,
                ..
            } => {
                let route = self.config.route_via(None, &dialed, &caller).unwrap();
                let profile = self.config.profiles.get(&route.profile).unwrap().clone();
                let upstream = self.config.upstreams.get(&profile.upstream).unwrap();
                self.random += 1;
                let setup = CallSetup {
                    info: CallInfo {
                        call_id,
                        route: route.label().to_owned(),
                        profile: route.profile.to_string(),
                        caller,
                        callee: dialed,
                    },
                    profile,
                    dialect: Dialect::for_upstream(upstream),
                    codec: self.endpoint.call(call).and_then(|c| c.planned_codec()),
                    limits: CallLimits::of(&self.config),
                    seeds: MediaSeeds {
                        rtp: RtpStart {
                            ssrc: 0xB21D_0000 + self.random as u32,
                            sequence: 1,
                            timestamp: 0,
                        },
                        rtcp: self.random,
                    },
                    cname: "bridge@scenario".into(),
                    wall_clock: NtpTime(0),
                };
                self.legs.insert(
                    call,
                    Leg {
                        call: Call::new(self.now, setup),
                        next: None,
                        link: None,
                        connects: 0,
                        closed_by_us: None,
                        closed_by_fake: None,
                        signalling: Vec::new(),
                        events: Vec::new(),
                        record: None,
                        rtp_out: Vec::new(),
                        rtcp_out: 0,
                        finished_at: None,
                    },
                );
            }
            EndpointEvent::Dialog { call, event } => {
                if let Some(leg) = self.legs.get_mut(&call) {
                    leg.call.handle_input(self.now, Input::Dialog(event));
                }
            }
            EndpointEvent::Registration { .. } => {}
        }
    }

    /// The call's outputs, its writer, its fake. Returns whether anything moved.
    fn pump_leg(&mut self, handle: CallHandle) -> bool {
        let now = self.now;
        let options = self.fake_options();
        let buffer_frames = self.socket_buffer_frames;
        let Some(leg) = self.legs.get_mut(&handle) else {
            return false;
        };
        let mut moved = false;
        let mut requests = Vec::new();
        let mut open = false;
        loop {
            let Some(output) = leg.call.poll_output() else {
                leg.next = None;
                break;
            };
            if !matches!(output, Output::Timeout { .. }) {
                moved = true;
            }
            match output {
                Output::Timeout { at, .. } => {
                    leg.next = Some(at);
                    break;
                }
                Output::Transmit {
                    socket,
                    to,
                    datagram,
                } => {
                    if socket == Socket::Rtp && !packet::is_rtcp(&datagram) {
                        assert_eq!(to, addr(PHONE_RTP), "RTP goes to the phone");
                        leg.rtp_out.push((now, datagram));
                    } else {
                        leg.rtcp_out += 1;
                    }
                }
                Output::Connect => {
                    leg.connects += 1;
                    leg.link = Some(Link {
                        fake: FakeSession::new(FakeDialect::OpenAiGa, &options, now),
                        queued: VecDeque::new(),
                        socket: VecDeque::new(),
                        buffer_frames,
                        written: 0,
                        reported: 0,
                        read: Vec::new(),
                        next_fake: Some(now),
                        last_fake_run: None,
                    });
                    open = true;
                }
                Output::UpstreamSend(text) => {
                    if let Some(link) = &mut leg.link {
                        link.queued.push_back(Frame::Text(text));
                    }
                }
                Output::UpstreamPing(payload) => {
                    if let Some(link) = &mut leg.link {
                        link.queued.push_back(Frame::Ping(payload));
                    }
                }
                Output::UpstreamClose { code, reason } => {
                    leg.closed_by_us = Some((code, reason));
                    leg.link = None;
                }
                Output::Signalling(request) => {
                    leg.signalling.push(request.clone());
                    requests.push(request);
                }
                Output::Webhook(_) => {}
                Output::Event(event) => leg.events.push(event),
                Output::Finished(record) => {
                    assert!(leg.record.is_none(), "one record per call");
                    leg.record = Some(*record);
                    leg.finished_at = Some(now);
                }
            }
        }
        if open {
            leg.call.handle_input(now, Input::UpstreamOpened);
        }
        let mut fake_closed = None;
        if let Some(link) = &mut leg.link {
            // The writer: what it has into the socket buffers, while they have room.
            while link.socket.len() < link.buffer_frames {
                let Some(frame) = link.queued.pop_front() else {
                    break;
                };
                link.socket.push_back(frame);
                link.written += 1;
            }
            if link.written != link.reported {
                link.reported = link.written;
                moved = true;
                leg.call
                    .handle_input(now, Input::UpstreamWritten(link.written));
            }
            // The fake reads, while it reads at all.
            if link.fake.is_reading(now) {
                while let Some(frame) = link.socket.pop_front() {
                    moved = true;
                    match frame {
                        Frame::Text(text) => {
                            if let Ok(value) = serde_json::from_str(&text) {
                                link.read.push(value);
                            }
                            link.fake.handle_text(now, &text);
                        }
                        // Its WebSocket library answers the ping it reads.
                        Frame::Ping(payload) => {
                            leg.call.handle_input(now, Input::UpstreamPong(&payload));
                        }
                    }
                }
            }
            // What the fake sends arrives at once.
            while let Some(out) = link.fake.poll_transmit() {
                moved = true;
                match out {
                    Outgoing::Text(text) => {
                        leg.call.handle_input(now, Input::UpstreamText(&text));
                    }
                    Outgoing::Close { code, reason } => {
                        leg.call.handle_input(
                            now,
                            Input::UpstreamClosed {
                                code: Some(code),
                                reason: &reason,
                            },
                        );
                        fake_closed = Some((code, reason));
                        break;
                    }
                }
            }
            let floor = link.last_fake_run.map(|at| at + FAKE_TICK);
            link.next_fake = link
                .fake
                .poll_timeout()
                .map(|at| floor.map_or(at, |f| at.max(f)));
        }
        if let Some(closed) = fake_closed {
            leg.closed_by_fake = Some(closed);
            leg.link = None;
        }
        for request in requests {
            self.apply(handle, request);
        }
        moved
    }

    /// A call's request to its dialog, as the signalling loop carries it out.
    fn apply(&mut self, handle: CallHandle, request: Signalling) {
        let now = self.now;
        let result = match request {
            Signalling::Ring => self.endpoint.ring(now, handle),
            Signalling::Answer => self.endpoint.answer(now, handle),
            Signalling::Refuse {
                status,
                reason,
                retry_after,
            } => self
                .endpoint
                .reject_with(now, handle, status, reason, retry_after),
            Signalling::HangUp { reason } => {
                self.endpoint.hang_up_with_reason(now, handle, &reason)
            }
            Signalling::Refer { uri } => self.endpoint.refer(now, handle, &uri),
        };
        if let Err(sip_realtime_bridge::sip::endpoint::EndpointError::UnknownCall(_)) = result
            && let Some(leg) = self.legs.get_mut(&handle)
        {
            leg.call.handle_input(now, Input::Stop(CallEnd::Signalling));
        }
    }

    fn fake_options(&self) -> FakeOptions {
        match self.config.upstreams.values().next() {
            Some(sip_realtime_bridge::config::UpstreamConfig::Fake(fake)) => fake.options.clone(),
            _ => FakeOptions::default(),
        }
    }
}
