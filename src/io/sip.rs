//! The SIP transport shell: UDP and TCP sockets around the sans-IO [`Endpoint`].
//!
//! One task (the *signalling loop*) owns the endpoint: it reads the clock (in one function,
//! `now`), feeds the endpoint what the socket tasks received, runs its timers and sends what
//! it asks for. Between the endpoint and the calls it only forwards: admission (route, ACL,
//! capacity, an RTP port) is the endpoint's [`Admission`] hook; an admitted INVITE becomes a
//! [`Call`] in a task of its own ([`crate::io::call`]); every event of a call's dialog goes to
//! its task as it comes, and every request a call makes (ring, answer, refuse, hang up,
//! refer) goes to the endpoint. The call decides everything else, its own deadlines
//! included (maximum duration, drain). A call leaves the table when its task has ended and
//! its sockets are closed; its RTP ports then go back to the pool.
//!
//! Socket tasks only move bytes:
//!
//! - one receive task per UDP socket (a datagram is a message; RFC 3261 18.3 framing is the
//!   parser's);
//! - one accept task per TCP listener, and per connection a reader (Content-Length framing by
//!   [`StreamFramer`] with size and header-count limits, a partial-message timeout, and a
//!   first-message timeout so idle connections cannot pile up) and a writer fed by a channel.
//!   Connections are reused: responses go back over the connection the request came on, and
//!   requests we send reuse a live connection to the peer before opening a new one.
//!
//! Wildcard listeners (`0.0.0.0`, `[::]`) learn the local address a peer reaches by asking the
//! kernel's routing table (a connected, unused UDP socket), so Contact, Via and SDP name a real
//! address; `sip.public_address` overrides that behind NAT. IPv6 sockets are v6-only, so
//! `0.0.0.0` and `[::]` can both be listened on.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::call::{Call, CallEnd, CallInfo, CallLimits, CallSetup, MediaSeeds, Signalling};
use crate::config::{CodecName, Config, PublicAddress, Transport};
use crate::io::call::{self as call_task, CallReport, CallTask, Upstreams};
use crate::io::media::MediaSockets;
use crate::io::notify::Notifier;
use crate::rtp::playout::RtpStart;
use crate::rtp::ports::{DEFAULT_QUARANTINE, PortPool};
use crate::sip::dialog::{DialogEvent, SessionTimerConfig};
use crate::sip::endpoint::{
    Admission, Admit, CallHandle, Endpoint, EndpointConfig, EndpointEvent, Flow, Incoming,
    Outgoing, Target, TransportKind,
};
use crate::sip::limits::{Acl, DEFAULT_MAX_SOURCES, LimitEvent, RateLimiter, Verdict};
use crate::sip::message::{FramingLimits, SipMessage, StreamFramer};
use crate::sip::register::{RegState, RegisterConfig, Registration, RegistrationEvent};
use crate::sip::sdp::{Codec, CodecPrefs, LocalMedia};
use crate::sip::transaction::{TimerConfig, Wire};

/// Largest UDP datagram read.
const MAX_DATAGRAM: usize = 65_535;
/// A TCP connection that has not completed a message within this time after its first byte
/// (or after connecting, for the first message) is closed.
const PARTIAL_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP connections at once per listener; beyond it new ones are closed at accept.
const MAX_CONNECTIONS: usize = 4096;
/// TCP connections at once from one address, so one host cannot take every slot.
const MAX_CONNECTIONS_PER_IP: usize = 64;
/// A write that makes no progress for this long (the peer stopped reading) closes the
/// connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the peer closes its sending side, how long replies may still be written.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Outbound TCP connect and DNS lookup limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued to one connection's writer before it is considered stuck.
const WRITER_QUEUE: usize = 256;
/// `Retry-After` of the 503 for a full house.
const BUSY_RETRY_AFTER_SECS: u32 = 5;
/// After a shutdown's BYEs, how long to wait for their answers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The clock of the signalling loop: tokio's, so a paused test runtime drives it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The bound SIP sockets.
#[derive(Debug)]
pub struct Listeners {
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
}

impl Listeners {
    /// Binds every `sip.listen` address; the error names the address that failed.
    pub async fn bind(config: &Config) -> io::Result<Self> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for listen in &config.sip.listen {
            let named =
                |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"));
            match listen.transport {
                Transport::Udp => udp.push(Arc::new(bind_udp(listen.addr).map_err(named)?)),
                Transport::Tcp => tcp.push(bind_tcp(listen.addr).map_err(named)?),
            }
        }
        Ok(Self { udp, tcp })
    }

    /// The bound addresses (with the ports the kernel chose for port 0), UDP first.
    pub fn local_addrs(&self) -> Vec<(TransportKind, SocketAddr)> {
        let udp = self
            .udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| (TransportKind::Udp, a));
        let tcp = self
            .tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| (TransportKind::Tcp, a));
        udp.chain(tcp).collect()
    }
}

fn socket_for(addr: SocketAddr, kind: socket2::Type) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, kind, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket_for(addr, socket2::Type::DGRAM)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(addr, socket2::Type::STREAM)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// What socket tasks tell the signalling loop.
enum NetEvent {
    Datagram {
        listener: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Message {
        conn: u64,
        bytes: Vec<u8>,
    },
    Opened {
        conn: u64,
        local: SocketAddr,
        remote: SocketAddr,
        writer: mpsc::Sender<Wire>,
    },
    Closed {
        conn: u64,
    },
}

struct Connection {
    local: SocketAddr,
    remote: SocketAddr,
    writer: mpsc::Sender<Wire>,
}

/// A call the signalling loop keeps, until its task has ended.
struct ActiveCall {
    /// The RTP port, released to the pool (quarantine) when the call's task has ended.
    port: Option<u16>,
    /// The call's task (upstream, media); `None` when it could not start.
    task: Option<CallTask>,
}

/// Admission: routes, capacity, RTP ports.
struct Admitter<'a> {
    config: &'a Config,
    now: Instant,
    stopping: bool,
    active: usize,
    ports: &'a mut PortPool,
    public_ip: Option<IpAddr>,
    /// Media sockets bound for admitted INVITEs, by Call-ID, until their call is registered.
    bound: &'a mut HashMap<String, MediaSockets>,
    /// `sip.allow_invite_from`, and how many INVITEs it refused.
    acl: &'a Acl,
    forbidden: &'a mut u64,
}

impl Admission for Admitter<'_> {
    fn admit(&mut self, invite: &SipMessage, local: SocketAddr, remote: SocketAddr) -> Admit {
        if !self.acl.allows(remote.ip()) {
            *self.forbidden += 1;
            tracing::warn!(call_id = invite.call_id(), %remote, "INVITE from outside sip.allow_invite_from: 403");
            return Admit::Refuse {
                status: 403,
                reason: "Forbidden",
                retry_after: None,
            };
        }
        let account = crate::sip::endpoint::account_for(
            invite,
            self.config
                .sip
                .accounts
                .iter()
                .map(|a| (a.contact_user.as_str(), a.name.as_str())),
        );
        let dialed = crate::sip::endpoint::dialed_via(invite, account.is_some());
        let caller = crate::sip::endpoint::caller(invite);
        if self.stopping {
            tracing::info!(call_id = invite.call_id(), "shutting down: 503");
            return Admit::Refuse {
                status: 503,
                reason: "Service Unavailable",
                retry_after: Some(BUSY_RETRY_AFTER_SECS),
            };
        }
        let Some(route) = self.config.route_via(account, &dialed, &caller) else {
            tracing::info!(call_id = invite.call_id(), %dialed, %caller, ?account, "no route: 404");
            return Admit::Refuse {
                status: 404,
                reason: "Not Found",
                retry_after: None,
            };
        };
        if self.active >= self.config.limits.max_calls.get() as usize {
            tracing::warn!(
                call_id = invite.call_id(),
                active = self.active,
                "max_calls reached: 503"
            );
            return Admit::Refuse {
                status: 503,
                reason: "Service Unavailable",
                retry_after: Some(BUSY_RETRY_AFTER_SECS),
            };
        }
        let Some(media) = bind_media(self.ports, self.now, local.ip()) else {
            tracing::warn!(call_id = invite.call_id(), "RTP port range exhausted: 503");
            return Admit::Refuse {
                status: 503,
                reason: "Service Unavailable",
                retry_after: Some(BUSY_RETRY_AFTER_SECS),
            };
        };
        let port = media.port;
        self.bound.insert(invite.call_id().to_owned(), media);
        tracing::debug!(
            call_id = invite.call_id(),
            route = route.label(),
            rtp_port = port,
            "admitted"
        );
        let session = random_u64() >> 2;
        Admit::Accept {
            media: LocalMedia::new(self.public_ip.unwrap_or(local.ip()), port, session, session),
        }
    }
}

/// Takes a port pair from the pool and binds it on `ip`; ports another process holds are
/// skipped. `None` when the range is exhausted.
fn bind_media(pool: &mut PortPool, now: Instant, ip: IpAddr) -> Option<MediaSockets> {
    // A few attempts: each failed port rests in the pool, so the next one differs.
    for _ in 0..16 {
        let port = pool.allocate(now)?;
        match MediaSockets::bind(ip, port) {
            Ok(sockets) => return Some(sockets),
            Err(_) => pool.unbindable(now, port),
        }
    }
    None
}

pub(crate) fn random_u64() -> u64 {
    // The OS generator; if it fails (it does not on Linux), fall back to the clock and
    // address-space layout, which is still unique enough for tags.
    getrandom::u64().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        t.rotate_left(17) ^ u64::from(std::process::id())
    })
}

/// Runs the SIP side until `shutdown` resolves, then hangs up every call and returns.
pub async fn serve(
    config: Arc<Config>,
    listeners: Listeners,
    mut stop: mpsc::UnboundedReceiver<Stop>,
    notifier: Notifier,
) -> io::Result<()> {
    let (net_tx, mut net_rx) = mpsc::channel::<NetEvent>(4096);
    // Unbounded: a call task never waits for the loop (each call sends a handful).
    let (media_tx, mut media_rx) = mpsc::unbounded_channel::<(CallHandle, CallReport)>();
    let upstreams = Upstreams::start(&config).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    metrics.set_accounts(config.sip.accounts.iter().map(|a| a.name.as_str()));
    let _admin = crate::io::admin::start_logged(&config.admin, Arc::clone(&metrics)).await;
    let conn_ids = Arc::new(AtomicU64::new(1));
    for (kind, addr) in listeners.local_addrs() {
        tracing::info!(transport = kind.name(), %addr, "listening");
    }
    let udp = listeners.udp.clone();
    let udp_addrs: Vec<SocketAddr> = listeners
        .udp
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .collect();
    let tcp_addrs: Vec<SocketAddr> = listeners
        .local_addrs()
        .into_iter()
        .filter(|(kind, _)| *kind == TransportKind::Tcp)
        .map(|(_, addr)| addr)
        .collect();
    for (index, socket) in listeners.udp.iter().enumerate() {
        tokio::spawn(udp_receiver(index, Arc::clone(socket), net_tx.clone()));
    }
    for listener in listeners.tcp {
        tokio::spawn(tcp_acceptor(
            listener,
            net_tx.clone(),
            Arc::clone(&conn_ids),
        ));
    }

    let public_ip = match &config.sip.public_address {
        Some(PublicAddress::Ip(ip)) => Some(*ip),
        // SDP needs an address: a host name is resolved once, at start.
        Some(PublicAddress::Name(name)) => {
            let lookup =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((name.as_str(), 0)))
                    .await;
            match lookup.ok().and_then(Result::ok).and_then(|mut a| a.next()) {
                Some(addr) => {
                    tracing::info!(public_address = %name, ip = %addr.ip(), "public address resolved for SDP");
                    Some(addr.ip())
                }
                None => {
                    return Err(io::Error::other(format!(
                        "sip.public_address {name} does not resolve; SDP needs an address"
                    )));
                }
            }
        }
        None => None,
    };
    let mut endpoint = Endpoint::new(endpoint_config(&config), Box::new(random_u64));
    start_registrations(&config, &udp_addrs, &tcp_addrs, public_ip, &mut endpoint).await;
    notifier.ready();
    let mut state = Loop {
        config: Arc::clone(&config),
        udp,
        net_tx: net_tx.clone(),
        conn_ids,
        connections: HashMap::new(),
        by_remote: HashMap::new(),
        local_ips: HashMap::new(),
        calls: HashMap::new(),
        ports: PortPool::new(
            config.rtp.port_range.first(),
            config.rtp.port_range.last(),
            DEFAULT_QUARANTINE,
        ),
        bound: HashMap::new(),
        public_ip,
        stopping: false,
        cname: format!("bridge@{}", random_u64() as u32),
        media_tx,
        upstreams,
        retired_upstreams: Vec::new(),
        limiter: RateLimiter::new(config.limits.rate.limit(), DEFAULT_MAX_SOURCES),
        acl: Acl::new(config.sip.allow_invite_from.iter().copied()),
        forbidden: 0,
        metrics,
    };
    drop(net_tx);
    let mut status = ServiceStatus::default();
    status.update(&notifier, &state, &endpoint);

    // Draining: new calls refused, live ones let finish until `drain_until`; then (or on a
    // second signal) every call gets a BYE and `hard_stop` bounds the wait for the answers.
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut hard_stop: Option<tokio::time::Instant> = None;
    // Once no call is left: how long de-registrations and BYEs may still be answered.
    let mut answers_until: Option<tokio::time::Instant> = None;
    let mut signals_open = true;
    loop {
        let wake = endpoint.poll_timeout();
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let until = |at: Option<tokio::time::Instant>| async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = net_rx.recv() => match event {
                Some(event) => state.network(&mut endpoint, event),
                None => return Ok(()),
            },
            () = sleep => endpoint.handle_timeout(now()),
            signal = stop.recv(), if signals_open => match signal {
                Some(Stop::Drain) if drain_until.is_none() && hard_stop.is_none() => {
                    let calls = state.calls.len();
                    let timeout = config.limits.drain_timeout;
                    tracing::info!(calls, drain_timeout_s = timeout.as_secs(), "draining: new calls refused, live calls may finish");
                    state.stopping = true;
                    endpoint.set_draining(true);
                    endpoint.unregister_all(now());
                    let until = tokio::time::Instant::now() + timeout;
                    // Each call hangs itself up at the deadline; the loop's own timer below
                    // is the backstop.
                    for call in state.calls.values() {
                        if let Some(task) = &call.task {
                            task.drain(until.into_std());
                        }
                    }
                    drain_until = Some(until + SHUTDOWN_GRACE);
                }
                Some(Stop::Reload(new)) => {
                    if state.stopping {
                        tracing::warn!("reload ignored: stopping");
                    } else {
                        reload(&mut state, &mut endpoint, *new, &udp_addrs, &tcp_addrs).await;
                    }
                }
                Some(_) => {
                    // A second signal, or SIGINT: stop at once (every call still gets its BYE).
                    tracing::info!(calls = state.calls.len(), "stopping now: hanging up every call");
                    stop_now(&mut state, &mut endpoint, &mut hard_stop);
                }
                None => signals_open = false,
            },
            () = until(drain_until), if hard_stop.is_none() => {
                tracing::info!(calls = state.calls.len(), "drain timeout: hanging up the remaining calls");
                stop_now(&mut state, &mut endpoint, &mut hard_stop);
            }
            Some((call, report)) = media_rx.recv() => state.call_report(&mut endpoint, call, report),
            () = until(hard_stop) => return Ok(()),
            () = until(answers_until) => return Ok(()),
        }
        state.drain(&mut endpoint);
        status.update(&notifier, &state, &endpoint);
        state.metrics.loop_turn(state.calls.len(), state.stopping);
        // Stop once every call has ended and every request of ours (BYE, de-registration) has
        // its answer, or the answers' grace ran out; ended calls that only absorb
        // retransmissions (Timer J and friends) are not waited for.
        if state.stopping && state.calls.is_empty() {
            if !endpoint.awaiting_responses() {
                return Ok(());
            }
            answers_until.get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_GRACE);
        }
    }
}

/// What the service manager has been told: the last `STATUS=` line and when, and whether
/// `STOPPING=1` has gone out.
#[derive(Default)]
struct ServiceStatus {
    line: String,
    sent: Option<tokio::time::Instant>,
    stopping: bool,
}

impl ServiceStatus {
    /// Sends `STOPPING=1` once the loop is stopping (draining or stopping at once), and the
    /// status line when it has changed, at most once a second (a change within the second
    /// goes out with a later turn of the loop).
    fn update(&mut self, notifier: &Notifier, state: &Loop, endpoint: &Endpoint) {
        if !notifier.is_enabled() {
            return;
        }
        if state.stopping && !self.stopping {
            self.stopping = true;
            notifier.stopping();
        }
        let now = tokio::time::Instant::now();
        if self
            .sent
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        let (mut registered, mut accounts) = (0, 0);
        for (_, reg) in endpoint.registrations() {
            accounts += 1;
            registered += usize::from(matches!(reg, RegState::Registered { .. }));
        }
        let line = format!(
            "calls: {}, registrations: {registered}/{accounts} registered",
            state.calls.len()
        );
        if self.sent.is_none() || line != self.line {
            notifier.status(&line);
            self.line = line;
            self.sent = Some(now);
        }
    }
}

/// How the daemon is asked to stop, or to reload.
#[derive(Clone, Debug)]
pub enum Stop {
    /// SIGHUP: a new configuration, read and checked by the caller (main), for new calls.
    Reload(Box<Config>),
    /// SIGTERM: refuse new calls (503, OPTIONS too), de-register, let live calls finish up to
    /// `limits.drain_timeout`, then BYE the rest.
    Drain,
    /// A second SIGTERM, or SIGINT: BYE every call now.
    Now,
}

/// Puts `new` in force for new calls: routes, profiles, tools, upstreams and accounts change
/// together; live calls keep what they started with (their profile and upstream connection
/// are theirs). Sockets and the RTP range cannot change without a restart: such changes are
/// named and the running values kept. Upstreams that fail to start refuse the whole reload.
async fn reload(
    state: &mut Loop,
    endpoint: &mut Endpoint,
    mut new: Config,
    udp_addrs: &[SocketAddr],
    tcp_addrs: &[SocketAddr],
) {
    let old = Arc::clone(&state.config);
    let mut kept = Vec::new();
    if new.sip.listen != old.sip.listen {
        kept.push("sip.listen");
        new.sip.listen = old.sip.listen.clone();
    }
    if new.sip.public_address != old.sip.public_address {
        kept.push("sip.public_address");
        new.sip.public_address = old.sip.public_address.clone();
    }
    if new.rtp.port_range != old.rtp.port_range {
        kept.push("rtp.port_range");
        new.rtp.port_range = old.rtp.port_range;
    }
    if new.admin != old.admin {
        kept.push("admin");
        new.admin = old.admin.clone();
    }
    if !kept.is_empty() {
        tracing::warn!(keys = ?kept, "reload: these need a restart; their running values stay");
    }
    let upstreams = match Upstreams::start(&new).await {
        Ok(upstreams) => upstreams,
        Err(error) => {
            tracing::error!(%error, "reload refused: the running configuration stays");
            return;
        }
    };
    // Live calls may still talk to an in-process fake of the old set: it stays up.
    let retired = std::mem::replace(&mut state.upstreams, upstreams);
    state.retired_upstreams.push(retired);
    let now = now();
    // Accounts: removed or changed ones de-register, new or changed ones register.

    for account in &old.sip.accounts {
        if !new.sip.accounts.contains(account) {
            endpoint.remove_registration(now, account.name.as_str());
        }
    }
    let added: Vec<_> = new
        .sip
        .accounts
        .iter()
        .filter(|n| !old.sip.accounts.contains(n))
        .cloned()
        .collect();
    endpoint.set_config(endpoint_config(&new));
    state.acl = Acl::new(new.sip.allow_invite_from.iter().copied());
    // A new rate limit starts with fresh buckets (and no bans); an unchanged one keeps them.
    if new.limits.rate != old.limits.rate {
        state.limiter = RateLimiter::new(new.limits.rate.limit(), DEFAULT_MAX_SOURCES);
    }
    let public_ip = state.public_ip;
    let new = Arc::new(new);
    state.config = Arc::clone(&new);
    (state.metrics).set_accounts(new.sip.accounts.iter().map(|a| a.name.as_str()));
    if !added.is_empty() {
        let mut only_added = (*new).clone();
        only_added.sip.accounts = added;
        start_registrations(&only_added, udp_addrs, tcp_addrs, public_ip, endpoint).await;
    }
    tracing::info!(
        routes = new.routes.len(),
        profiles = new.profiles.len(),
        accounts = new.sip.accounts.len(),
        "configuration reloaded: new calls use it"
    );
}

fn stop_now(
    state: &mut Loop,
    endpoint: &mut Endpoint,
    hard_stop: &mut Option<tokio::time::Instant>,
) {
    state.stopping = true;
    endpoint.set_draining(true);
    endpoint.unregister_all(now());
    state.hang_up_all(endpoint);
    hard_stop.get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_GRACE * 3);
}

/// Registers every `[[sip.accounts]]`: resolves the registrar (or outbound proxy), works out
/// the address our Contact and Via name (the listener of the account's transport and family,
/// its wildcard made concrete towards the registrar, or `public_address`), and hands the
/// registration to the endpoint. An account whose registrar does not resolve is logged and
/// skipped.
async fn start_registrations(
    config: &Config,
    udp_addrs: &[SocketAddr],
    tcp_addrs: &[SocketAddr],
    public_ip: Option<IpAddr>,
    endpoint: &mut Endpoint,
) {
    for account in &config.sip.accounts {
        let (host, port) = account
            .outbound_proxy
            .clone()
            .unwrap_or_else(|| (account.registrar_host.clone(), account.registrar_port));
        let lookup = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let Some(target) = lookup.ok().and_then(Result::ok).and_then(|mut a| a.next()) else {
            tracing::error!(account = %account.name, %host, "registrar does not resolve: not registering");
            continue;
        };
        let (kind, addrs) = match account.transport {
            Transport::Udp => (TransportKind::Udp, udp_addrs),
            Transport::Tcp => (TransportKind::Tcp, tcp_addrs),
        };
        let Some((index, local)) = addrs
            .iter()
            .enumerate()
            .find(|(_, a)| a.is_ipv4() == target.is_ipv4())
        else {
            tracing::error!(account = %account.name, %target, "no listen socket of this transport and address family: not registering");
            continue;
        };
        let ip = public_ip
            .or_else(|| (!local.ip().is_unspecified()).then_some(local.ip()))
            .or_else(|| route_source(target))
            .unwrap_or(local.ip());
        let host_port = match ip {
            IpAddr::V4(v4) => format!("{v4}:{}", local.port()),
            IpAddr::V6(v6) => format!("[{v6}]:{}", local.port()),
        };
        let transport_param = match account.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
        };
        let password = match account.password.load() {
            Ok(password) => password.expose().to_owned(),
            Err(error) => {
                tracing::error!(account = %account.name, %error, "cannot read the password: not registering");
                continue;
            }
        };
        let registrar_host = if account.registrar_host.contains(':') {
            format!("[{}]", account.registrar_host)
        } else {
            account.registrar_host.clone()
        };
        let register = RegisterConfig {
            registrar: format!("sip:{registrar_host}:{}", account.registrar_port),
            aor: format!("sip:{}@{registrar_host}", account.username),
            auth_username: account.auth_username.clone(),
            password,
            contact: format!("sip:{}@{host_port}{transport_param}", account.contact_user),
            via: format!("{} {host_port}", kind.name()),
            expires: account.expires,
            user_agent: config.sip.user_agent.clone(),
            timers: TimerConfig {
                t1: config.sip.t1,
                t2: config.sip.t2,
                ..TimerConfig::default()
            },
            reliable: kind == TransportKind::Tcp,
        };
        tracing::info!(account = %account.name, registrar = %account.registrar, %target, contact = %register.contact, "registering");
        let flow = (kind == TransportKind::Udp).then_some(Flow::Udp(index));
        let registration = Registration::new(now(), register, Box::new(random_u64));
        endpoint.add_registration(
            account.name.to_string(),
            account.contact_user.clone(),
            registration,
            Target::Addr(target),
            kind,
            flow,
        );
    }
}

fn endpoint_config(config: &Config) -> EndpointConfig {
    let codecs = CodecPrefs::new(config.sip.codecs.iter().map(|c| match c {
        CodecName::Pcmu => Codec::Pcmu,
        CodecName::Pcma => Codec::Pcma,
        CodecName::Opus => Codec::Opus,
    }));
    EndpointConfig {
        public_host: config.sip.public_address.as_ref().map(|a| match a {
            PublicAddress::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            other => other.to_string(),
        }),
        codecs,
        timers: TimerConfig {
            t1: config.sip.t1,
            t2: config.sip.t2,
            ..TimerConfig::default()
        },
        session_timer: SessionTimerConfig {
            enabled: config.sip.session_timers,
            min_se: config.sip.min_se,
            session_expires: config.sip.session_expires,
        },
        contact_user: "bridge".to_owned(),
        user_agent: config.sip.user_agent.clone(),
    }
}

struct Loop {
    config: Arc<Config>,
    udp: Vec<Arc<UdpSocket>>,
    net_tx: mpsc::Sender<NetEvent>,
    conn_ids: Arc<AtomicU64>,
    connections: HashMap<u64, Connection>,
    by_remote: HashMap<SocketAddr, u64>,
    /// Local address the kernel uses towards a peer, for wildcard sockets.
    local_ips: HashMap<IpAddr, IpAddr>,
    /// Calls whose task has not ended yet.
    calls: HashMap<CallHandle, ActiveCall>,
    ports: PortPool,
    bound: HashMap<String, MediaSockets>,
    public_ip: Option<IpAddr>,
    /// Shutting down: new calls are refused.
    stopping: bool,
    /// RTCP CNAME of every call.
    cname: String,
    media_tx: mpsc::UnboundedSender<(CallHandle, CallReport)>,
    upstreams: Upstreams,
    /// Upstream sets replaced by reloads, kept for the calls still using them.
    retired_upstreams: Vec<Upstreams>,
    /// `limits.rate`, per source address, in front of the endpoint.
    limiter: RateLimiter,
    /// `sip.allow_invite_from`, applied at admission.
    acl: Acl,
    /// INVITEs refused by the ACL.
    forbidden: u64,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Loop {
    fn network(&mut self, endpoint: &mut Endpoint, event: NetEvent) {
        match event {
            NetEvent::Datagram {
                listener,
                from,
                bytes,
            } => {
                let Some(local) = self.udp.get(listener).and_then(|s| s.local_addr().ok()) else {
                    return;
                };
                if !self.within_rate(endpoint, from, &bytes) {
                    return;
                }
                let local = self.concrete_local(local, from);
                trace_message("recv", TransportKind::Udp, from, &bytes);
                self.incoming(endpoint, Flow::Udp(listener), local, from, &bytes);
            }
            NetEvent::Message { conn, bytes } => {
                let Some(c) = self.connections.get(&conn) else {
                    return;
                };
                let (local, remote) = (c.local, c.remote);
                if !self.within_rate(endpoint, remote, &bytes) {
                    return;
                }
                trace_message("recv", TransportKind::Tcp, remote, &bytes);
                self.incoming(endpoint, Flow::Tcp(conn), local, remote, &bytes);
            }
            NetEvent::Opened {
                conn,
                local,
                remote,
                writer,
            } => {
                tracing::debug!(conn, %remote, "TCP connection open");
                self.by_remote.insert(remote, conn);
                self.connections.insert(
                    conn,
                    Connection {
                        local,
                        remote,
                        writer,
                    },
                );
            }
            NetEvent::Closed { conn } => {
                if let Some(c) = self.connections.remove(&conn) {
                    tracing::debug!(conn, remote = %c.remote, "TCP connection closed");
                    if self.by_remote.get(&c.remote) == Some(&conn) {
                        self.by_remote.remove(&c.remote);
                    }
                }
            }
        }
    }

    /// `limits.rate`: whether a message from `from` goes on to the endpoint. Requests count;
    /// responses (to our own requests) pass. A banned source gets no reply at all, except
    /// for the BYE, CANCEL or ACK of a call it already has.
    fn within_rate(&mut self, endpoint: &Endpoint, from: SocketAddr, bytes: &[u8]) -> bool {
        if !self.limiter.enabled() || !crate::sip::limits::counts_as_request(bytes) {
            return true;
        }
        let verdict = self.limiter.check(now(), from.ip());
        if verdict == (Verdict::Drop { first_of_ban: true }) {
            let source = crate::sip::limits::Source::of(from.ip());
            tracing::warn!(%source, ban = ?self.config.limits.rate.ban, "limits.rate exceeded: source banned, its messages dropped unanswered");
        }
        while let Some(LimitEvent::BanEnded { source, dropped }) = self.limiter.poll_event() {
            tracing::info!(%source, dropped, "ban ended");
        }
        verdict == Verdict::Allow || endpoint.ends_a_live_call(bytes)
    }

    fn incoming(
        &mut self,
        endpoint: &mut Endpoint,
        flow: Flow,
        local: SocketAddr,
        remote: SocketAddr,
        bytes: &[u8],
    ) {
        let active = self.calls.len();
        let now = now();
        let mut admitter = Admitter {
            config: &self.config,
            now,
            stopping: self.stopping,
            active,
            ports: &mut self.ports,
            public_ip: self.public_ip,
            bound: &mut self.bound,
            acl: &self.acl,
            forbidden: &mut self.forbidden,
        };
        endpoint.handle_incoming(
            now,
            Incoming {
                flow,
                local,
                remote,
                bytes,
            },
            &mut admitter,
        );
    }

    /// The concrete local address for a peer when the socket is a wildcard.
    fn concrete_local(&mut self, local: SocketAddr, peer: SocketAddr) -> SocketAddr {
        if !local.ip().is_unspecified() {
            return local;
        }
        if self.local_ips.len() > 10_000 {
            self.local_ips.clear();
        }
        let ip = match self.local_ips.get(&peer.ip()) {
            Some(ip) => *ip,
            None => match route_source(peer) {
                Some(ip) => {
                    self.local_ips.insert(peer.ip(), ip);
                    ip
                }
                // No route back (not cached, so a later message tries again): loopback of
                // the socket's family is wrong too, but never means "hold" like 0.0.0.0.
                None => {
                    tracing::warn!(%peer, "no route to the peer: cannot tell our address");
                    if local.is_ipv4() {
                        IpAddr::from([127, 0, 0, 1])
                    } else {
                        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
                    }
                }
            },
        };
        SocketAddr::new(ip, local.port())
    }

    /// What a call's task asked for, or its end.
    fn call_report(&mut self, endpoint: &mut Endpoint, call: CallHandle, report: CallReport) {
        let now = now();
        let result = match report {
            CallReport::Signalling(Signalling::Ring) => endpoint.ring(now, call),
            CallReport::Signalling(Signalling::Answer) => {
                tracing::debug!(call = %call, "upstream ready: answering");
                endpoint.answer(now, call)
            }
            CallReport::Signalling(Signalling::Refuse {
                status,
                reason,
                retry_after,
            }) => {
                tracing::info!(call = %call, status, "call refused");
                endpoint.reject_with(now, call, status, reason, retry_after)
            }
            CallReport::Signalling(Signalling::HangUp { reason }) => {
                endpoint.hang_up_with_reason(now, call, &reason)
            }
            CallReport::Signalling(Signalling::Refer { uri }) => {
                let result = endpoint.refer(now, call, &uri);
                if result.is_err()
                    && let Some(task) = self.calls.get(&call).and_then(|c| c.task.as_ref())
                {
                    task.dialog(DialogEvent::TransferFailed { status: None });
                }
                result
            }
            CallReport::Finished(record) => {
                call_task::log_record(call, &record);
                self.metrics.observe_call(&record);
                if let Some(active) = self.calls.remove(&call)
                    && let Some(port) = active.port
                {
                    // The call's sockets are closed: the port rests before the next call.
                    self.ports.release(now, port);
                }
                Ok(())
            }
        };
        match result {
            Ok(()) => {}
            // The dialog is gone (it finished its transactions): the call cannot be told by
            // the dialog any more, so it is told here.
            Err(crate::sip::endpoint::EndpointError::UnknownCall(_)) => {
                if let Some(task) = self.calls.get(&call).and_then(|c| c.task.as_ref()) {
                    task.stop(CallEnd::Signalling);
                }
            }
            // A call the caller already ended (a CANCEL racing the answer) is no error.
            Err(error) => tracing::debug!(call = %call, %error, "call request not applied"),
        }
    }

    fn hang_up_all(&mut self, endpoint: &mut Endpoint) {
        let now = now();
        for (handle, call) in &self.calls {
            match &call.task {
                Some(task) => task.stop(CallEnd::Shutdown),
                None => {
                    let header = CallEnd::Shutdown.reason_header("");
                    if let Err(error) = endpoint.hang_up_with_reason(now, *handle, &header) {
                        tracing::debug!(call = %handle, %error, "hang-up");
                    }
                }
            }
        }
    }

    /// Sends what the endpoint has to send and plays the call logic on its events, until
    /// neither has anything left.
    fn drain(&mut self, endpoint: &mut Endpoint) {
        loop {
            let mut busy = false;
            while let Some(out) = endpoint.poll_transmit() {
                busy = true;
                self.send(out);
            }
            while let Some(event) = endpoint.poll_event() {
                busy = true;
                self.call_logic(endpoint, event);
            }
            // Admitted INVITEs that produced no call (not expected) must not hold ports.
            if !busy {
                let now = now();
                for (_, sockets) in self.bound.drain() {
                    self.ports.release(now, sockets.port);
                }
                return;
            }
        }
    }

    fn call_logic(&mut self, endpoint: &mut Endpoint, event: EndpointEvent) {
        let now = now();
        if let EndpointEvent::Registration { account, event } = &event {
            self.metrics.registration(account, event);
        }
        match event {
            EndpointEvent::Registration { account, event } => match event {
                RegistrationEvent::Registered { expires } => {
                    tracing::info!(%account, expires, "registered");
                }
                RegistrationEvent::Failed {
                    status,
                    reason,
                    retry_in,
                } => {
                    tracing::warn!(%account, ?status, %reason, retry_in_s = retry_in.as_secs(), "registration failed");
                }
                RegistrationEvent::Unregistered => tracing::info!(%account, "unregistered"),
            },
            EndpointEvent::IncomingCall {
                call,
                call_id,
                dialed,
                caller,
                account,
                remote,
                transport,
            } => {
                tracing::info!(call = %call, %call_id, %dialed, %caller, ?account, %remote, transport = transport.name(), "incoming call");
                let sockets = self.bound.remove(&call_id);
                let port = sockets.as_ref().map(|s| s.port);
                let task = sockets.and_then(|sockets| {
                    let parties = (account.as_deref(), dialed.as_str(), caller.as_str());
                    self.start_call(endpoint, call, &call_id, parties, sockets)
                });
                if task.is_none()
                    && let Err(error) = endpoint.reject_with(
                        now,
                        call,
                        503,
                        "Service Unavailable",
                        Some(BUSY_RETRY_AFTER_SECS),
                    )
                {
                    tracing::debug!(call = %call, %error, "503 not sent");
                }
                self.calls.insert(call, ActiveCall { port, task });
            }
            EndpointEvent::Dialog { call, event } => {
                match &event {
                    DialogEvent::Ended { by } => tracing::info!(call = %call, ?by, "call ended"),
                    DialogEvent::TransferAccepted
                    | DialogEvent::TransferFailed { .. }
                    | DialogEvent::TransferProgress { .. } => {
                        tracing::info!(call = %call, ?event, "transfer");
                    }
                    DialogEvent::Digit(press) => {
                        tracing::info!(call = %call, digit = %press.digit, "DTMF (SIP INFO)");
                    }
                    other => tracing::debug!(call = %call, event = ?other, "dialog"),
                }
                let Some(active) = self.calls.get(&call) else {
                    return;
                };
                match &active.task {
                    Some(task) => task.dialog(event),
                    // No task (it could not start): the call ends with its dialog.
                    None if matches!(event, DialogEvent::Ended { .. }) => {
                        if let Some(active) = self.calls.remove(&call)
                            && let Some(port) = active.port
                        {
                            self.ports.release(now, port);
                        }
                    }
                    None => {}
                }
            }
        }
    }

    /// Builds the call core for an admitted INVITE and starts its task (which connects the
    /// upstream at once). `None` when it cannot start: the INVITE is refused with 503.
    fn start_call(
        &mut self,
        endpoint: &Endpoint,
        call: CallHandle,
        call_id: &str,
        (account, dialed, caller): (Option<&str>, &str, &str),
        sockets: MediaSockets,
    ) -> Option<CallTask> {
        let config = Arc::clone(&self.config);
        let Some(route) = config.route_via(account, dialed, caller) else {
            tracing::warn!(call = %call, "the route that admitted the call is gone");
            return None;
        };
        let profile = config.profiles.get(&route.profile)?;
        let Some(upstream) = self.upstreams.get(&profile.upstream) else {
            tracing::warn!(call = %call, upstream = %profile.upstream, "upstream not started");
            return None;
        };
        let codec = endpoint.call(call).and_then(|c| c.planned_codec());
        let info = CallInfo {
            call_id: call_id.to_owned(),
            route: route.label().to_owned(),
            profile: route.profile.to_string(),
            caller: caller.to_owned(),
            callee: dialed.to_owned(),
        };
        let first = random_u64();
        let setup = CallSetup {
            info,
            profile: profile.clone(),
            dialect: upstream.dialect,
            codec,
            limits: CallLimits::of(&config),
            seeds: MediaSeeds {
                rtp: RtpStart {
                    ssrc: first as u32,
                    sequence: (first >> 32) as u16,
                    timestamp: random_u64() as u32,
                },
                rtcp: random_u64(),
            },
            cname: self.cname.clone(),
            wall_clock: call_task::wall_clock(),
        };
        let core = Call::new(now(), setup);
        match call_task::spawn(call, core, sockets, upstream.clone(), self.media_tx.clone()) {
            Ok(task) => Some(task),
            Err(error) => {
                tracing::warn!(call = %call, %error, "call task not started");
                None
            }
        }
    }

    fn send(&mut self, out: Outgoing) {
        trace_message(
            if out.retransmission { "resend" } else { "send" },
            out.transport,
            match &out.target {
                Target::Addr(a) => *a,
                Target::Host(..) => SocketAddr::from(([0, 0, 0, 0], 0)),
            },
            &out.payload,
        );
        match (out.transport, out.target) {
            (TransportKind::Udp, Target::Addr(to)) => {
                send_udp(&self.udp, out.flow, to, &out.payload);
            }
            (TransportKind::Tcp, Target::Addr(to)) => {
                let conn = out
                    .flow
                    .and_then(|f| match f {
                        Flow::Tcp(c) if self.connections.contains_key(&c) => Some(c),
                        _ => None,
                    })
                    .or_else(|| self.by_remote.get(&to).copied());
                match conn.and_then(|c| self.connections.get(&c)) {
                    Some(c) => {
                        if c.writer.try_send(out.payload).is_err() {
                            tracing::warn!(remote = %c.remote, "TCP writer stuck or gone: message dropped");
                        }
                    }
                    None => {
                        tokio::spawn(connect_and_send(
                            to,
                            out.payload,
                            self.net_tx.clone(),
                            Arc::clone(&self.conn_ids),
                        ));
                    }
                }
            }
            (TransportKind::Tcp, Target::Host(..)) if matches!(out.flow, Some(Flow::Tcp(c)) if self.connections.contains_key(&c)) =>
            {
                // The call's own connection: no lookup, no new connection (a caller behind NAT
                // with a host name in its Contact is only reachable this way).
                if let Some(Flow::Tcp(c)) = out.flow
                    && let Some(conn) = self.connections.get(&c)
                    && conn.writer.try_send(out.payload).is_err()
                {
                    tracing::warn!(remote = %conn.remote, "TCP writer stuck or gone: message dropped");
                }
            }
            (transport, Target::Host(host, port)) => {
                let udp = self.udp.clone();
                let net_tx = self.net_tx.clone();
                let conn_ids = Arc::clone(&self.conn_ids);
                let flow = out.flow;
                let payload = out.payload;
                let retransmission = out.retransmission;
                tokio::spawn(async move {
                    let lookup = tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio::net::lookup_host((host.as_str(), port)),
                    )
                    .await;
                    let Some(to) = lookup.ok().and_then(Result::ok).and_then(|mut a| a.next())
                    else {
                        if retransmission {
                            tracing::debug!(%host, "cannot resolve: retransmission dropped");
                        } else {
                            tracing::warn!(%host, "cannot resolve: message dropped");
                        }
                        return;
                    };
                    match transport {
                        TransportKind::Udp => send_udp(&udp, flow, to, &payload),
                        TransportKind::Tcp => connect_and_send(to, payload, net_tx, conn_ids).await,
                    }
                });
            }
        }
    }
}

fn send_udp(udp: &[Arc<UdpSocket>], flow: Option<Flow>, to: SocketAddr, payload: &[u8]) {
    let same_family =
        |s: &Arc<UdpSocket>| s.local_addr().is_ok_and(|a| a.is_ipv4() == to.is_ipv4());
    let preferred = match flow {
        Some(Flow::Udp(i)) => udp.get(i).filter(|s| same_family(s)),
        _ => None,
    };
    let Some(socket) = preferred.or_else(|| udp.iter().find(|s| same_family(s))) else {
        tracing::warn!(%to, "no UDP socket of that address family: message dropped");
        return;
    };
    // try_send_to: a full socket buffer drops the datagram, as the network may; the
    // transaction layer retransmits.
    if let Err(error) = socket.try_send_to(payload, to) {
        tracing::debug!(%to, %error, "UDP send failed");
    }
}

/// The local address the kernel would use to reach `peer`.
fn route_source(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(peer).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

fn trace_message(what: &str, transport: TransportKind, peer: SocketAddr, bytes: &[u8]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let first = bytes
            .split(|&b| b == b'\n')
            .find(|l| !l.iter().all(|b| b.is_ascii_whitespace()))
            .unwrap_or_default();
        let first = String::from_utf8_lossy(first);
        tracing::debug!(transport = transport.name(), %peer, "{what} {}", first.trim_end());
        tracing::trace!("{}", String::from_utf8_lossy(bytes));
    }
}

async fn udp_receiver(index: usize, socket: Arc<UdpSocket>, net_tx: mpsc::Sender<NetEvent>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let bytes = buf.get(..len).unwrap_or_default().to_vec();
                let event = NetEvent::Datagram {
                    listener: index,
                    from,
                    bytes,
                };
                if net_tx.send(event).await.is_err() {
                    return;
                }
            }
            // ICMP port unreachable and friends surface here on Linux; they are not fatal.
            Err(error) => tracing::debug!(%error, "UDP receive error"),
        }
    }
}

async fn tcp_acceptor(listener: TcpListener, net_tx: mpsc::Sender<NetEvent>, ids: Arc<AtomicU64>) {
    let per_ip: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let ip = remote.ip();
                {
                    let mut counts = per_ip.lock().unwrap_or_else(|e| e.into_inner());
                    let total: usize = counts.values().sum();
                    let mine = counts.entry(ip).or_default();
                    if total >= MAX_CONNECTIONS || *mine >= MAX_CONNECTIONS_PER_IP {
                        tracing::warn!(%remote, total, from_this_address = *mine, "too many TCP connections: refused");
                        if *mine == 0 {
                            counts.remove(&ip);
                        }
                        continue;
                    }
                    *mine += 1;
                }
                let conn = ids.fetch_add(1, Ordering::Relaxed);
                let per_ip = Arc::clone(&per_ip);
                let net_tx = net_tx.clone();
                tokio::spawn(async move {
                    run_connection(conn, stream, None, net_tx).await;
                    let mut counts = per_ip.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(n) = counts.get_mut(&ip) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            counts.remove(&ip);
                        }
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect_and_send(
    to: SocketAddr,
    payload: Wire,
    net_tx: mpsc::Sender<NetEvent>,
    ids: Arc<AtomicU64>,
) {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(stream)) => {
            let conn = ids.fetch_add(1, Ordering::Relaxed);
            run_connection(conn, stream, Some(payload), net_tx).await;
        }
        Ok(Err(error)) => tracing::info!(%to, %error, "TCP connect failed: message dropped"),
        Err(_) => tracing::info!(%to, "TCP connect timed out: message dropped"),
    }
}

/// Reads framed messages from one connection and writes what the loop queues for it.
async fn run_connection(
    conn: u64,
    stream: TcpStream,
    first: Option<Wire>,
    net_tx: mpsc::Sender<NetEvent>,
) {
    let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    serve_stream(conn, stream, local, remote, first, net_tx).await;
}

/// The connection logic over any byte stream (tests use in-memory pipes).
async fn serve_stream<S>(
    conn: u64,
    stream: S,
    local: SocketAddr,
    remote: SocketAddr,
    first: Option<Wire>,
    net_tx: mpsc::Sender<NetEvent>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Wire>(WRITER_QUEUE);
    if let Some(first) = first {
        let _ = tx.try_send(first);
    }
    let opened = NetEvent::Opened {
        conn,
        local,
        remote,
        writer: tx,
    };
    if net_tx.send(opened).await.is_err() {
        return;
    }
    // The writer ends when the loop drops its sender (the connection was removed), or fails:
    // a write error, or no progress for WRITE_TIMEOUT (a peer that stopped reading). A failed
    // writer closes the whole connection, so the loop stops queueing to it.
    let writer_failed = Arc::new(tokio::sync::Notify::new());
    let failed = Arc::clone(&writer_failed);
    let mut write_task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    failed.notify_one();
                    return;
                }
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut framer = StreamFramer::new(FramingLimits::default());
    let mut buf = vec![0u8; 16 * 1024];
    // A message must be complete within PARTIAL_MESSAGE_TIMEOUT of its first octet (and the
    // first one within that time of the connection opening); the deadline does not move with
    // each read, so trickling one octet at a time does not keep a partial message alive.
    let mut deadline = Some(tokio::time::Instant::now() + PARTIAL_MESSAGE_TIMEOUT);
    let mut peer_closed = false;
    'read: loop {
        let read = async {
            match deadline {
                Some(at) => tokio::time::timeout_at(at, reader.read(&mut buf))
                    .await
                    .ok(),
                None => Some(reader.read(&mut buf).await),
            }
        };
        let read = tokio::select! {
            read = read => read,
            () = writer_failed.notified() => {
                tracing::info!(conn, %remote, "TCP peer does not take our writes: closing");
                break 'read;
            }
        };
        let n = match read {
            None => {
                tracing::info!(conn, %remote, buffered = framer.buffered(), "TCP message incomplete too long: closing");
                break;
            }
            Some(Ok(0)) => {
                peer_closed = true;
                break;
            }
            Some(Err(_)) => break,
            Some(Ok(n)) => n,
        };
        if framer.buffered() == 0 && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + PARTIAL_MESSAGE_TIMEOUT);
        }
        framer.push(buf.get(..n).unwrap_or_default());
        loop {
            match framer.next_message() {
                Ok(Some(bytes)) => {
                    if net_tx
                        .send(NetEvent::Message { conn, bytes })
                        .await
                        .is_err()
                    {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    // RFC 3261 18.3: a stream whose framing is lost cannot be resynchronised.
                    tracing::info!(conn, %remote, %error, "TCP framing error: closing");
                    break 'read;
                }
            }
        }
        deadline = (framer.buffered() > 0).then_some(
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + PARTIAL_MESSAGE_TIMEOUT),
        );
    }
    if peer_closed {
        // A half-close: the peer may still read our replies to what it sent last.
        tokio::time::sleep(HALF_CLOSE_LINGER).await;
    }
    let _ = net_tx.send(NetEvent::Closed { conn }).await;
    // The loop drops its sender on Closed; give the writer a moment to flush, then stop it.
    if tokio::time::timeout(Duration::from_millis(500), &mut write_task)
        .await
        .is_err()
    {
        write_task.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:5060;branch=z9hG4bK1\r\n\
        From: <sip:a@127.0.0.2>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
        Content-Length: 0\r\n\r\n";

    /// Starts the connection logic on one end of a pipe; returns the other end and the
    /// events, with the `Opened` already taken.
    async fn connection() -> (tokio::io::DuplexStream, mpsc::Receiver<NetEvent>) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (tx, mut rx) = mpsc::channel(16);
        let addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        tokio::spawn(serve_stream(9, ours, addr, addr, None, tx));
        assert!(matches!(
            rx.recv().await,
            Some(NetEvent::Opened { conn: 9, .. })
        ));
        (theirs, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn stream_messages_are_cut_by_content_length() {
        let (mut peer, mut rx) = connection().await;
        // Two messages and half of a third in one write, the rest later.
        let mut bytes = format!("{OPTIONS}{OPTIONS}").into_bytes();
        bytes.extend_from_slice(&OPTIONS.as_bytes()[..40]);
        peer.write_all(&bytes).await.unwrap();
        for _ in 0..2 {
            let Some(NetEvent::Message { conn: 9, bytes }) = rx.recv().await else {
                panic!("expected a message")
            };
            assert_eq!(bytes, OPTIONS.as_bytes());
        }
        peer.write_all(&OPTIONS.as_bytes()[40..]).await.unwrap();
        let Some(NetEvent::Message { bytes, .. }) = rx.recv().await else {
            panic!("expected the third message")
        };
        assert_eq!(bytes, OPTIONS.as_bytes());
        // The connection stays open while idle between messages.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_incomplete_message_closes_the_connection_after_the_timeout() {
        let (mut peer, mut rx) = connection().await;
        // RFC 4475 3.1.2.2 over a stream: Content-Length beyond what arrives.
        peer.write_all(
            OPTIONS
                .replace("Content-Length: 0", "Content-Length: 9999")
                .as_bytes(),
        )
        .await
        .unwrap();
        let start = tokio::time::Instant::now();
        let Some(NetEvent::Closed { conn: 9 }) = rx.recv().await else {
            panic!("expected the connection to close")
        };
        assert_eq!(start.elapsed(), PARTIAL_MESSAGE_TIMEOUT);
        // And the peer sees the close.
        let mut buf = [0u8; 16];
        assert_eq!(peer.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_message_is_closed() {
        let (_peer, mut rx) = connection().await;
        let start = tokio::time::Instant::now();
        assert!(matches!(
            rx.recv().await,
            Some(NetEvent::Closed { conn: 9 })
        ));
        assert_eq!(start.elapsed(), PARTIAL_MESSAGE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_framing_error_closes_the_connection_at_once() {
        let (mut peer, mut rx) = connection().await;
        // RFC 4475 3.1.2.3: a negative Content-Length cannot be framed.
        peer.write_all(
            OPTIONS
                .replace("Content-Length: 0", "Content-Length: -999")
                .as_bytes(),
        )
        .await
        .unwrap();
        let start = tokio::time::Instant::now();
        assert!(matches!(
            rx.recv().await,
            Some(NetEvent::Closed { conn: 9 })
        ));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn trickling_octets_does_not_keep_a_partial_message_alive() {
        let (mut peer, mut rx) = connection().await;
        let start = tokio::time::Instant::now();
        // One octet every 10 s: each read would restart a per-read timeout forever.
        let closed = async {
            loop {
                match rx.recv().await {
                    Some(NetEvent::Closed { .. }) | None => return,
                    Some(_) => {}
                }
            }
        };
        let trickle = async {
            for byte in OPTIONS.bytes() {
                if peer.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        };
        tokio::select! {
            () = closed => {}
            () = trickle => panic!("the whole message was accepted"),
        }
        assert_eq!(start.elapsed(), PARTIAL_MESSAGE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_disconnected() {
        // A pipe with a small buffer that the peer never reads.
        let (ours, _theirs) = tokio::io::duplex(1024);
        let (tx, mut rx) = mpsc::channel(16);
        let addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        tokio::spawn(serve_stream(4, ours, addr, addr, None, tx));
        let Some(NetEvent::Opened { writer, .. }) = rx.recv().await else {
            panic!()
        };
        // Keep the reader busy with a valid message so only the writer can close it.
        let start = tokio::time::Instant::now();
        writer.send(Arc::from(vec![b'x'; 4096])).await.unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(NetEvent::Closed { conn: 4 })
        ));
        assert!(start.elapsed() >= WRITE_TIMEOUT && start.elapsed() < PARTIAL_MESSAGE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn replies_still_reach_a_peer_that_half_closed() {
        let (mut peer, mut rx) = {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let (tx, rx) = mpsc::channel(16);
            let addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
            tokio::spawn(serve_stream(5, ours, addr, addr, None, tx));
            (theirs, rx)
        };
        let Some(NetEvent::Opened { writer, .. }) = rx.recv().await else {
            panic!()
        };
        peer.write_all(OPTIONS.as_bytes()).await.unwrap();
        peer.shutdown().await.unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(NetEvent::Message { conn: 5, .. })
        ));
        // The loop answers a moment later; the connection is still there for it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer
            .send(Arc::from(&b"SIP/2.0 200 OK"[..]))
            .await
            .unwrap();
        let mut buf = vec![0u8; 14];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, b"SIP/2.0 200 OK");
        assert!(matches!(
            rx.recv().await,
            Some(NetEvent::Closed { conn: 5 })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn queued_messages_are_written_in_order() {
        let (mut peer, _rx) = {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let (tx, mut rx) = mpsc::channel(16);
            let addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
            tokio::spawn(serve_stream(
                3,
                ours,
                addr,
                addr,
                Some(Arc::from(&b"first"[..])),
                tx,
            ));
            let Some(NetEvent::Opened { writer, .. }) = rx.recv().await else {
                panic!()
            };
            writer.send(Arc::from(&b"-second"[..])).await.unwrap();
            (theirs, rx)
        };
        let mut buf = vec![0u8; 12];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, b"first-second");
    }
}
