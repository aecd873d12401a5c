//! A call's media sockets; the task that drives them is [`crate::io::call`].

use std::net::SocketAddr;

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
