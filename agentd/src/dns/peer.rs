//! Which socket asked: the kernel's own answer through `NETLINK_SOCK_DIAG`. The resolver knows a
//! query's source address and port; the kernel finds the UDP socket that a datagram from the
//! resolver to that address would reach (the socket the answer goes to), or the TCP socket at
//! the other end of the resolver's connection, and gives its cookie, the same number
//! `bpf_get_socket_cookie` gave the steering hook, which recorded the agent under it in
//! `DNS_ORIGINAL`.
//!
//! A map keyed by source port, written by the hooks, cannot serve: `connect4` runs before a
//! socket has a port, and a connected socket's later sends pass no `sock_addr` hook.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `NETLINK_SOCK_DIAG` (not in the libc crate for Linux).
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
/// `INET_DIAG_NOCOOKIE`: match any socket.
const NO_COOKIE: u32 = !0;

/// `struct inet_diag_sockid`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` + `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}
const _: () = assert!(size_of::<Request>() == 16 + 8 + 48);

fn octets(ip: IpAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// The cookie of the UDP socket at `peer` that a datagram from `local` would reach, or `None`
/// when there is none (it closed).
pub fn udp_cookie(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u64>> {
    // For UDP the kernel looks the socket up as the receiver of a datagram from `src` to `dst`
    // ("src and dst are swapped for historical reasons").
    lookup(libc::IPPROTO_UDP, local, peer)
}

/// The cookie of the TCP socket at `peer` connected to `local`, or `None` when there is none.
pub fn tcp_cookie(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u64>> {
    // For TCP, `src` is the socket's own end.
    lookup(libc::IPPROTO_TCP, peer, local)
}

/// Whether the kernel answers these lookups for UDP and TCP: a pair of loopback sockets of each
/// must be found. Where `inet_diag`, `udp_diag` or `tcp_diag` is a module that cannot be
/// loaded, the kernel finds nothing.
pub fn probe() -> io::Result<()> {
    let missing = |what: &str| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "NETLINK_SOCK_DIAG finds no {what} socket (are inet_diag, udp_diag and tcp_diag loaded?)"
            ),
        )
    };
    let server = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
    if udp_cookie(server.local_addr()?, client.local_addr()?)?.is_none() {
        return Err(missing("UDP"));
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let stream = std::net::TcpStream::connect(listener.local_addr()?)?;
    if tcp_cookie(listener.local_addr()?, stream.local_addr()?)?.is_none() {
        return Err(missing("TCP"));
    }
    Ok(())
}

/// Asks `SOCK_DIAG_BY_FAMILY` for the one socket `(src, dst)` names.
fn lookup(protocol: i32, src: SocketAddr, dst: SocketAddr) -> io::Result<Option<u64>> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Ok(None);
    }
    // SAFETY: a plain socket(2) call; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = Request {
        len: u32::try_from(size_of::<Request>()).expect("a small struct"),
        kind: SOCK_DIAG_BY_FAMILY,
        flags: NLM_F_REQUEST,
        seq: 1,
        family: u8::try_from(if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        })
        .expect("a small constant"),
        protocol: u8::try_from(protocol).expect("a small constant"),
        states: !0,
        id: SockId {
            sport: src.port().to_be_bytes(),
            dport: dst.port().to_be_bytes(),
            src: octets(src.ip()),
            dst: octets(dst.ip()),
            interface: 0,
            cookie: [NO_COOKIE, NO_COOKIE],
        },
        ..Request::default()
    };
    // SAFETY: `request` is plain data of the size given; the kernel (nl_pid 0) is the
    // destination.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = u16::try_from(libc::AF_NETLINK).expect("a small constant");
        libc::sendto(
            fd.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
            (&raw const kernel).cast(),
            u32::try_from(size_of::<libc::sockaddr_nl>()).expect("a small struct"),
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 1024];
    // SAFETY: reads at most the buffer's length.
    let got = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
    parse_reply(&reply[..got])
}

/// The cookie in a `SOCK_DIAG_BY_FAMILY` answer: `inet_diag_msg` after the 16-byte header, its
/// `id.cookie` at offset 4 + 40.
fn parse_reply(reply: &[u8]) -> io::Result<Option<u64>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer");
    let kind = u16::from_ne_bytes(reply.get(4..6).ok_or_else(short)?.try_into().expect("2"));
    if kind == NLMSG_ERROR {
        let code = i32::from_ne_bytes(reply.get(16..20).ok_or_else(short)?.try_into().expect("4"));
        return if code == -libc::ENOENT {
            Ok(None)
        } else {
            Err(io::Error::from_raw_os_error(-code))
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag answer type {kind}"),
        ));
    }
    let word = |at: usize| -> io::Result<u32> {
        Ok(u32::from_ne_bytes(
            reply
                .get(at..at + 4)
                .ok_or_else(short)?
                .try_into()
                .expect("4"),
        ))
    };
    let (low, high) = (word(16 + 4 + 40)?, word(16 + 4 + 44)?);
    Ok(Some(u64::from(low) | (u64::from(high) << 32)))
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream, UdpSocket},
        os::fd::AsRawFd,
    };

    use super::*;

    fn own_cookie(socket: &impl AsRawFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = u32::try_from(size_of::<u64>()).unwrap();
        // SAFETY: SO_COOKIE writes a u64 into the buffer given.
        let ret = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &raw mut len,
            )
        };
        assert_eq!(ret, 0);
        cookie
    }

    #[test]
    fn the_kernel_names_the_socket_that_sent() {
        let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .send_to(b"q", resolver.local_addr().unwrap())
            .unwrap();
        let mut buffer = [0u8; 4];
        let (_, from) = resolver.recv_from(&mut buffer).unwrap();
        let cookie = udp_cookie(resolver.local_addr().unwrap(), from).unwrap();
        assert_eq!(cookie, Some(own_cookie(&client)));
        drop(client);
        assert_eq!(
            udp_cookie(resolver.local_addr().unwrap(), from).unwrap(),
            None
        );
    }

    #[test]
    fn a_connected_socket_is_found_too() {
        let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("0.0.0.0:0").unwrap();
        client.connect(resolver.local_addr().unwrap()).unwrap();
        client.send(b"q").unwrap();
        let mut buffer = [0u8; 4];
        let (_, from) = resolver.recv_from(&mut buffer).unwrap();
        let cookie = udp_cookie(resolver.local_addr().unwrap(), from).unwrap();
        assert_eq!(cookie, Some(own_cookie(&client)));
    }

    #[test]
    fn the_kernel_names_the_tcp_socket_at_the_other_end() {
        let resolver = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = resolver.local_addr().unwrap();
        let client = TcpStream::connect(local).unwrap();
        let (_accepted, from) = resolver.accept().unwrap();
        assert_eq!(tcp_cookie(local, from).unwrap(), Some(own_cookie(&client)));
        let gone: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(tcp_cookie(local, gone).unwrap(), None);
    }

    #[test]
    fn the_probe_passes_where_lookups_work() {
        probe().unwrap();
    }
}
