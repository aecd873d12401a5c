//! A call's media sockets and settings; the task that drives them is [`crate::io::call`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::rtp::receive::ReceiveStats;
use crate::rtp::rtcp::RtcpStats;

/// A call's media sockets: RTP on an even port, RTCP on the one above.
#[derive(Debug)]
pub struct MediaSockets {
    /// The RTP port.
    pub port: u16,
    pub(crate) rtp: std::net::UdpSocket,
    pub(crate) rtcp: std::net::UdpSocket,
}

impl MediaSockets {
    /// Binds RTP on `ip:port` and RTCP on `ip:port+1`.
    pub fn bind(ip: std::net::IpAddr, port: u16) -> std::io::Result<Self> {
        let rtp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
        let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, port.wrapping_add(1)))?;
        Ok(Self { port, rtp, rtcp })
    }
}

/// Media settings of the daemon.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// No RTP for this long: the call is reported inactive (and hung up).
    pub inactivity_timeout: Duration,
    /// RTCP CNAME.
    pub cname: String,
}

/// A call's media counters at its end, for the call's log record.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaSummary {
    /// The receive path.
    pub received: ReceiveStats,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Packets lost (expected - received, RFC 3550 A.3; negative with duplicates).
    pub packets_lost: i64,
    /// RTCP: loss, jitter and round-trip time both ways.
    pub rtcp: RtcpStats,
}
