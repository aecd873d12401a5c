//! Who may talk to us, and how much: the per-source rate limit and the INVITE ACL.
//!
//! Sans-IO like the rest of `sip`: time comes in as `now`, nothing here reads the clock.
//!
//! - [`RateLimiter`]: one token bucket per source (an IPv4 address, or an IPv6 /64, since one
//!   host usually owns a whole /64), `requests_per_second` refill up to `burst`. A source that
//!   runs its bucket dry is *banned* for `ban`: everything it sends is dropped without a reply
//!   (a scanner learns nothing, and an answer would be amplification). The table is bounded:
//!   idle buckets (full again, not banned) are swept oldest-first, and when it is full the
//!   least recently seen source makes room.
//! - [`Acl`]: the networks allowed to send INVITEs; empty allows everyone. IPv4-mapped IPv6
//!   addresses (`::ffff:10.0.0.1`, from dual-stack sockets) match IPv4 networks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Sources kept at most by default.
pub const DEFAULT_MAX_SOURCES: usize = 100_000;
/// Idle buckets swept per check, so one message never pays for a large sweep.
const SWEEP_PER_CHECK: usize = 4;

/// The rate limit's parameters. `per_second == 0` disables it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second (sustained requests per second).
    pub per_second: u32,
    /// Bucket size: requests allowed at once after a quiet period.
    pub burst: u32,
    /// How long a source that exceeded the rate is ignored.
    pub ban: Duration,
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it on.
    Allow,
    /// Drop it silently; `first_of_ban` is true for the message that started the ban (log it).
    Drop { first_of_ban: bool },
}

/// What the limiter reports besides verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitEvent {
    /// A ban is over (or its source was evicted from a full table); `dropped` messages were
    /// dropped during it, the first included.
    BanEnded { source: Source, dropped: u64 },
}

/// Counters for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateStats {
    /// Messages dropped because their source was banned.
    pub dropped: u64,
    /// Bans started.
    pub bans: u64,
    /// Sources evicted while still active because the table was full.
    pub evicted: u64,
}

/// What the rate is counted per: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4(Ipv4Addr),
    /// The upper 64 bits of the address.
    V6(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => v4.fmt(f),
            Self::V6(net) => write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*net) << 64)),
        }
    }
}

/// IPv4-mapped IPv6 as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// The key of this bucket in `RateLimiter::order`.
    stamp: u64,
    banned_until: Option<Instant>,
    dropped: u64,
}

/// Token buckets per source with bans; see the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    max_sources: usize,
    buckets: HashMap<Source, Bucket>,
    /// Sources by last use, oldest first.
    order: BTreeMap<u64, Source>,
    next_stamp: u64,
    /// Bans in start order, which is end order since every ban lasts as long.
    bans: VecDeque<(Instant, Source)>,
    events: VecDeque<LimitEvent>,
    stats: RateStats,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, max_sources: usize) -> Self {
        Self {
            limit,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            bans: VecDeque::new(),
            events: VecDeque::new(),
            stats: RateStats::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.limit.per_second > 0 && self.limit.burst > 0
    }

    /// Sources in the table.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }

    pub fn stats(&self) -> RateStats {
        self.stats
    }

    /// Counts one request from `ip` at `now`.
    pub fn check(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        if !self.enabled() {
            return Verdict::Allow;
        }
        self.handle_timeout(now);
        let source = Source::of(ip);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let burst = f64::from(self.limit.burst);
        let rate = f64::from(self.limit.per_second);
        let verdict = match self.buckets.get_mut(&source) {
            Some(bucket) => {
                self.order.remove(&bucket.stamp);
                bucket.stamp = stamp;
                if bucket.banned_until.is_some() {
                    bucket.dropped += 1;
                    bucket.last = now;
                    Verdict::Drop {
                        first_of_ban: false,
                    }
                } else {
                    let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
                    bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
                    bucket.last = now;
                    if bucket.tokens >= 1.0 {
                        bucket.tokens -= 1.0;
                        Verdict::Allow
                    } else {
                        let until = now + self.limit.ban;
                        bucket.banned_until = Some(until);
                        bucket.dropped = 1;
                        self.bans.push_back((until, source));
                        self.stats.bans += 1;
                        Verdict::Drop { first_of_ban: true }
                    }
                }
            }
            None => {
                if self.buckets.len() >= self.max_sources {
                    self.evict_oldest();
                }
                self.buckets.insert(
                    source,
                    Bucket {
                        tokens: burst - 1.0,
                        last: now,
                        stamp,
                        banned_until: None,
                        dropped: 0,
                    },
                );
                Verdict::Allow
            }
        };
        self.order.insert(stamp, source);
        if verdict != Verdict::Allow {
            self.stats.dropped += 1;
        }
        verdict
    }

    /// Ends the bans that are over and sweeps a few idle buckets. `check` does this too.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(until, source)) = self.bans.front() {
            if until > now {
                break;
            }
            self.bans.pop_front();
            if let Some(bucket) = self.buckets.get_mut(&source)
                && bucket.banned_until == Some(until)
            {
                bucket.banned_until = None;
                bucket.tokens = f64::from(self.limit.burst);
                bucket.last = now;
                self.events.push_back(LimitEvent::BanEnded {
                    source,
                    dropped: std::mem::take(&mut bucket.dropped),
                });
            }
        }
        let refill = Duration::from_secs_f64(
            f64::from(self.limit.burst) / f64::from(self.limit.per_second.max(1)),
        );
        for _ in 0..SWEEP_PER_CHECK {
            let Some((&stamp, &source)) = self.order.first_key_value() else {
                break;
            };
            let idle = self.buckets.get(&source).is_none_or(|b| {
                b.banned_until.is_none() && now.saturating_duration_since(b.last) >= refill
            });
            if !idle {
                break;
            }
            self.order.remove(&stamp);
            self.buckets.remove(&source);
        }
    }

    /// When the next ban ends.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.bans.front().map(|(until, _)| *until)
    }

    pub fn poll_event(&mut self) -> Option<LimitEvent> {
        self.events.pop_front()
    }

    /// Makes room in a full table: the least recently seen source goes, ban and all.
    fn evict_oldest(&mut self) {
        let Some((_, source)) = self.order.pop_first() else {
            return;
        };
        if let Some(bucket) = self.buckets.remove(&source) {
            self.stats.evicted += 1;
            if bucket.banned_until.is_some() {
                self.events.push_back(LimitEvent::BanEnded {
                    source,
                    dropped: bucket.dropped,
                });
            }
        }
    }
}

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mask = |bits: u32, prefix: u8| -> u128 {
            if prefix == 0 {
                0
            } else {
                u128::MAX << (bits - u32::from(prefix))
            }
        };
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let m = mask(32, self.prefix);
                u128::from(net.to_bits()) & m == u128::from(ip.to_bits()) & m
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let m = mask(128, self.prefix);
                net.to_bits() & m == ip.to_bits() & m
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a network: write `10.0.0.0/8`, `192.168.1.20` or `2001:db8::/32`")
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => bits,
        };
        if prefix > bits {
            return Err(format!("`{s}`: the prefix length is at most {bits}"));
        }
        // `::ffff:10.0.0.0/104` is 10.0.0.0/8: match it against IPv4 sources.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let network = Self { addr, prefix };
        if !network.contains(addr) || network.first() != addr {
            return Err(format!(
                "`{s}` has host bits set: did you mean `{}`?",
                network.first_network()
            ));
        }
        Ok(network)
    }
}

impl Network {
    /// The first address of the network.
    fn first(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(v4) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & m))
            }
            IpAddr::V6(v6) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & m))
            }
        }
    }

    fn first_network(&self) -> Network {
        Self {
            addr: self.first(),
            prefix: self.prefix,
        }
    }
}

/// The networks allowed to send INVITEs; empty allows every source.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    networks: Vec<Network>,
}

impl Acl {
    pub fn new(networks: impl IntoIterator<Item = Network>) -> Self {
        Self {
            networks: networks.into_iter().collect(),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.networks.is_empty() || self.networks.iter().any(|n| n.contains(ip))
    }
}

/// Whether a message should be counted by the rate limit: requests and anything that is not
/// clearly a response (`SIP/2.0 ...` first line). Keep-alives (only CR/LF) are not counted.
pub fn counts_as_request(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(bytes.len());
    let rest = bytes.get(start..).unwrap_or_default();
    !rest.is_empty() && !rest.starts_with(b"SIP/2.0 ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(per_second: u32, burst: u32, ban_secs: u64) -> RateLimiter {
        RateLimiter::new(
            RateLimit {
                per_second,
                burst,
                ban: Duration::from_secs(ban_secs),
            },
            DEFAULT_MAX_SOURCES,
        )
    }

    const DROP: Verdict = Verdict::Drop {
        first_of_ban: false,
    };
    const BAN: Verdict = Verdict::Drop { first_of_ban: true };

    #[test]
    fn a_burst_then_the_steady_rate_is_allowed() {
        let mut l = limiter(10, 20, 60);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(l.check(t0, ip("10.0.0.1")), Verdict::Allow);
        }
        // The bucket is empty; 10 per second (one per 100 ms) may go on for ever.
        for n in 1..=100u32 {
            let at = t0 + Duration::from_millis(100) * n;
            assert_eq!(l.check(at, ip("10.0.0.1")), Verdict::Allow, "{n}");
        }
        assert_eq!(l.stats(), RateStats::default());
    }

    #[test]
    fn exceeding_the_rate_bans_until_the_ban_ends() {
        let mut l = limiter(10, 5, 60);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check(t0, ip("10.0.0.1")), Verdict::Allow);
        }
        assert_eq!(l.check(t0, ip("10.0.0.1")), BAN);
        // Banned: dropped even though tokens would have refilled; others are not affected.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(l.check(t1, ip("10.0.0.1")), DROP);
        assert_eq!(l.check(t1, ip("10.0.0.1")), DROP);
        assert_eq!(l.check(t1, ip("10.0.0.2")), Verdict::Allow);
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(l.poll_event(), None);
        // The ban's end is reported once, with the count, and a full bucket returns.
        let end = t0 + Duration::from_secs(60);
        l.handle_timeout(end);
        assert_eq!(
            l.poll_event(),
            Some(LimitEvent::BanEnded {
                source: Source::of(ip("10.0.0.1")),
                dropped: 3
            })
        );
        assert_eq!(l.poll_event(), None);
        for _ in 0..5 {
            assert_eq!(l.check(end, ip("10.0.0.1")), Verdict::Allow);
        }
        assert_eq!(l.check(end, ip("10.0.0.1")), BAN);
        let stats = l.stats();
        assert_eq!((stats.bans, stats.dropped), (2, 4));
    }

    #[test]
    fn a_ban_ends_at_the_next_check_without_a_timer() {
        let mut l = limiter(1, 1, 10);
        let t0 = Instant::now();
        assert_eq!(l.check(t0, ip("10.0.0.1")), Verdict::Allow);
        assert_eq!(l.check(t0, ip("10.0.0.1")), BAN);
        assert_eq!(
            l.check(t0 + Duration::from_secs(10), ip("10.0.0.1")),
            Verdict::Allow
        );
        assert!(matches!(
            l.poll_event(),
            Some(LimitEvent::BanEnded { dropped: 1, .. })
        ));
    }

    #[test]
    fn zero_disables_the_limit() {
        let mut l = limiter(0, 40, 60);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(l.check(t0, ip("10.0.0.1")), Verdict::Allow);
        }
        assert_eq!(l.sources(), 0);
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let mut l = limiter(1, 2, 60);
        let t0 = Instant::now();
        assert_eq!(l.check(t0, ip("2001:db8:1:2::1")), Verdict::Allow);
        assert_eq!(l.check(t0, ip("2001:db8:1:2:ffff::9")), Verdict::Allow);
        assert_eq!(l.check(t0, ip("2001:db8:1:2::77")), BAN);
        // The next /64 is somebody else.
        assert_eq!(l.check(t0, ip("2001:db8:1:3::1")), Verdict::Allow);
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        // A dual-stack socket's ::ffff:a.b.c.d is the IPv4 source, not a /64 of many.
        assert_eq!(l.check(t0, ip("192.0.2.1")), Verdict::Allow);
        assert_eq!(l.check(t0, ip("::ffff:192.0.2.1")), Verdict::Allow);
        assert_eq!(l.check(t0, ip("::ffff:192.0.2.1")), BAN);
        assert_eq!(l.check(t0, ip("::ffff:192.0.2.2")), Verdict::Allow);
    }

    #[test]
    fn the_table_is_bounded_and_idle_sources_are_swept_oldest_first() {
        let mut l = RateLimiter::new(
            RateLimit {
                per_second: 10,
                burst: 10,
                ban: Duration::from_secs(60),
            },
            100,
        );
        let t0 = Instant::now();
        let v4 = |n: u32| IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n));
        // Source 0 gets banned, then a flood of spoofed sources fills the table.
        for _ in 0..10 {
            l.check(t0, v4(0));
        }
        assert_eq!(l.check(t0, v4(0)), BAN);
        for n in 1..1000 {
            assert_eq!(l.check(t0, v4(n)), Verdict::Allow);
            assert!(l.sources() <= 100);
        }
        // The oldest went first: the banned one, whose ban end is reported with its count.
        assert_eq!(l.stats().evicted, 900);
        assert!(matches!(
            l.poll_event(),
            Some(LimitEvent::BanEnded { dropped: 1, .. })
        ));
        // Once idle (bucket full again: 1 s here), sources are swept a few per check.
        let later = t0 + Duration::from_secs(2);
        for n in 0..100 {
            l.check(later, v4(5000 + n));
        }
        assert_eq!(l.sources(), 100);
        assert_eq!(l.stats().evicted, 900, "idle sweeping is not eviction");
        for _ in 0..200 {
            l.check(later + Duration::from_secs(2), v4(5000));
        }
        assert!(l.sources() < 10, "{}", l.sources());
    }

    #[test]
    fn networks_parse_and_match() {
        let n: Network = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.255.0.1")));
        assert!(n.contains(ip("::ffff:10.1.2.3")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(!n.contains(ip("::1")));
        let host: Network = "192.168.1.20".parse().unwrap();
        assert_eq!(host.to_string(), "192.168.1.20/32");
        assert!(host.contains(ip("192.168.1.20")));
        assert!(!host.contains(ip("192.168.1.21")));
        let v6: Network = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let mapped: Network = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, n);
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let all6: Network = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "pbx.example.com",
            "10.0.0",
            "",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
        let err = "10.0.0.1/8".parse::<Network>().unwrap_err();
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn the_acl_allows_its_networks_or_everyone_when_empty() {
        assert!(Acl::default().allows(ip("203.0.113.9")));
        let acl = Acl::new(
            ["10.0.0.0/8", "192.168.1.20", "2001:db8::/32"]
                .into_iter()
                .map(|s| s.parse().unwrap()),
        );
        assert!(acl.allows(ip("10.1.2.3")));
        assert!(acl.allows(ip("::ffff:192.168.1.20")));
        assert!(acl.allows(ip("2001:db8::5")));
        assert!(!acl.allows(ip("192.168.1.21")));
        assert!(!acl.allows(ip("127.0.0.1")));
    }

    #[test]
    fn responses_and_keepalives_are_not_counted() {
        assert!(counts_as_request(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"));
        assert!(counts_as_request(b"garbage"));
        assert!(!counts_as_request(b"SIP/2.0 200 OK\r\n\r\n"));
        assert!(!counts_as_request(b"\r\n\r\n"));
        assert!(!counts_as_request(b""));
    }
}
