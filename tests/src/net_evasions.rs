//! `agentd-test-helper evade ...`: the network calls an agent could use to get around
//! destination rules (`tests/host/evasion_net.rs`). Each prints one word: `ok`, `eperm` (EPERM
//! exactly) or `error:...`.
//!
//! - `evade socket FAMILY TYPE PROTOCOL`: `socket(2)` with those numbers.
//! - `evade udplite ADDR PORT`: a UDP-Lite datagram (`IPPROTO_UDPLITE`) sent to ADDR:PORT.
//! - `evade ping ADDR`: an ICMP echo request from a ping socket (`SOCK_DGRAM`, ICMP/ICMPv6);
//!   `ok` once the reply arrives, `dropped` when the send succeeded but no reply came within a
//!   second (the kernel does not pass an IPv6 ping's drop on to the caller).
//! - `evade lsrr-cmsg ADDR PORT HOP`: a UDP datagram to ADDR:PORT whose control message
//!   (`IP_RETOPTS`) carries a loose source route through HOP, so that it leaves for HOP.
//! - `evade hold-sockets N ADDR PORT`: N UDP sockets connected to ADDR:PORT, all held open;
//!   `ok`, or the first failure's word and its index (`eperm@16`).
//! - `evade churn-ping N ADDR PORT PING`: a ping socket first, then N UDP sockets each
//!   connected to ADDR:PORT and closed, then an echo request to PING on the first socket.
//! - `evade fragment v4|v6 ADDR`: a later fragment of a UDP datagram (offset 800 bytes, no
//!   transport header) sent to ADDR from a raw socket that writes its own IP header.
//! - `evade source-route v4|v6`: sets a source route on a UDP socket (`IP_OPTIONS` with a loose
//!   source route through 127.0.0.9, or an IPv6 segment routing header through `::1`).

use std::net::{IpAddr, SocketAddr};

/// The outcome word for a syscall's return value.
fn said(ret: i64) -> String {
    if ret >= 0 {
        return "ok".to_owned();
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EPERM) {
        "eperm".to_owned()
    } else {
        format!("error:{err}")
    }
}

/// An address family as a `sockaddr` stores it.
fn family(af: i32) -> libc::sa_family_t {
    libc::sa_family_t::try_from(af).expect("address families fit")
}

/// The size of `T` as a socket call takes it.
fn len_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("small")
}

/// A socket, or the outcome word of its failure.
fn socket(family: i32, kind: i32, protocol: i32) -> Result<std::os::fd::OwnedFd, String> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, kind, protocol) };
    if fd < 0 {
        return Err(said(-1));
    }
    // SAFETY: a descriptor this process just opened and nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// sendto(2) of `payload` to `target` on `fd`.
fn send_to(fd: &std::os::fd::OwnedFd, payload: &[u8], target: SocketAddr) -> String {
    use std::os::fd::AsRawFd as _;
    let ret = match target {
        SocketAddr::V4(v4) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = family(libc::AF_INET);
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            // SAFETY: a valid buffer and address of the length given.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&raw const sin).cast(),
                    len_of::<libc::sockaddr_in>(),
                )
            }
        }
        SocketAddr::V6(v6) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = family(libc::AF_INET6);
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            // SAFETY: as above.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&raw const sin6).cast(),
                    len_of::<libc::sockaddr_in6>(),
                )
            }
        }
    };
    said(ret as i64)
}

/// `ok` when an echo reply arrives on `fd` within a second, else `dropped`.
fn echo_reply(fd: &std::os::fd::OwnedFd) -> String {
    use std::os::fd::AsRawFd as _;
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    let mut reply = [0u8; 64];
    // SAFETY: valid option and buffer pointers of the lengths given.
    let got = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            len_of::<libc::timeval>(),
        );
        libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0)
    };
    if got > 0 { "ok" } else { "dropped" }.to_owned()
}

fn family_of(addr: &IpAddr) -> i32 {
    if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    }
}

fn source_route(family: &str) -> std::io::Result<String> {
    use std::os::fd::AsRawFd as _;
    let (domain, level, name, value): (i32, i32, i32, Vec<u8>) = match family {
        // LSRR (0x83), length 7, pointer 4, one hop: 127.0.0.9; then end of options.
        "v4" => (
            libc::AF_INET,
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            vec![0x83, 7, 4, 127, 0, 0, 9, 0],
        ),
        // A segment routing header (type 4, which the kernel lets any process set): next
        // header, length 4 (40 bytes), type 4, one segment left, last entry 1, flags, tag;
        // then the segments ::1 and ::1.
        "v6" => {
            let mut header = vec![0, 4, 4, 1, 1, 0, 0, 0];
            header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, header)
        }
        other => return Err(std::io::Error::other(format!("unknown family {other}"))),
    };
    let fd = match socket(domain, libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(word) => return Ok(word),
    };
    // SAFETY: a valid buffer of the length given.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            libc::socklen_t::try_from(value.len()).expect("short"),
        )
    };
    Ok(said(i64::from(ret)))
}

/// sendmsg(2) of a datagram to `target` with a loose source route through `hop` in its control
/// message.
fn lsrr_cmsg(target: std::net::SocketAddrV4, hop: std::net::Ipv4Addr) -> String {
    use std::os::fd::AsRawFd as _;
    let fd = match socket(libc::AF_INET, libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(word) => return word,
    };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = family(libc::AF_INET);
    sin.sin_port = target.port().to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes(target.ip().octets());
    let hop = hop.octets();
    // LSRR, length 7, pointer 4, the hop; end of options.
    let options = [0x83, 7, 4, hop[0], hop[1], hop[2], hop[3], 0u8];
    let mut payload = *b"agentd";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // Room for one control message, aligned as the kernel reads it.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(8) } as usize;
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut sin).cast();
    msg.msg_namelen = len_of::<libc::sockaddr_in>();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `control` holds `space` bytes, enough for one header and 8 bytes of data.
    let ret = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_RETOPTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(8) as usize;
        std::ptr::copy_nonoverlapping(options.as_ptr(), libc::CMSG_DATA(cmsg), options.len());
        libc::sendmsg(fd.as_raw_fd(), &raw const msg, 0)
    };
    said(ret as i64)
}

/// The outcome word of a failed standard-library call.
fn word_of(err: &std::io::Error) -> String {
    if err.raw_os_error() == Some(libc::EPERM) {
        "eperm".to_owned()
    } else {
        format!("error:{err}")
    }
}

/// A UDP socket connected to `target`, or the outcome word of its failure.
fn connected_udp(target: SocketAddr) -> Result<std::net::UdpSocket, String> {
    let local = if target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let socket = std::net::UdpSocket::bind(local).map_err(|err| word_of(&err))?;
    socket.connect(target).map_err(|err| word_of(&err))?;
    Ok(socket)
}

/// `hold-sockets`: `count` connected sockets held open at once.
fn hold_sockets(count: usize, target: SocketAddr) -> String {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        match connected_udp(target) {
            Ok(socket) => held.push(socket),
            Err(word) => return format!("{word}@{i}"),
        }
    }
    "ok".to_owned()
}

/// `churn-ping`: whether a ping socket made before `count` other sockets came and went is
/// still judged.
fn churn_ping(count: usize, target: SocketAddr, ping: std::net::Ipv4Addr) -> String {
    let fd = match socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) {
        Ok(fd) => fd,
        Err(word) => return format!("ping-socket:{word}"),
    };
    for i in 0..count {
        if let Err(word) = connected_udp(target) {
            return format!("churn:{word}@{i}");
        }
    }
    match send_to(
        &fd,
        &[8, 0, 0, 0, 0, 0, 0, 1],
        SocketAddr::new(IpAddr::V4(ping), 0),
    ) {
        sent if sent == "ok" => echo_reply(&fd),
        failed => failed,
    }
}

/// `fragment`: a later fragment (offset 100 × 8 bytes, last) of a UDP datagram to `addr`,
/// whose IP header the raw socket's caller writes (`IPPROTO_RAW` implies `IP_HDRINCL`).
fn later_fragment(addr: IpAddr) -> String {
    use std::os::fd::AsRawFd as _;
    let fd = match socket(family_of(&addr), libc::SOCK_RAW, libc::IPPROTO_RAW) {
        Ok(fd) => fd,
        Err(word) => return format!("socket:{word}"),
    };
    let payload = *b"agentd!!";
    let mut packet = Vec::new();
    match addr {
        IpAddr::V4(v4) => {
            // Version 4, 20-byte header; total length and checksum are filled in by the
            // kernel, and so are the id and source when 0. Fragment offset 100, MF clear.
            packet.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x00, 100, 64, 17, 0, 0]);
            packet.extend_from_slice(&[0, 0, 0, 0]);
            packet.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            // Version 6, payload 16 bytes (fragment header + 8), next header 44 (fragment),
            // hop limit 64, source and destination the address itself.
            packet.extend_from_slice(&[0x60, 0, 0, 0, 0, 16, 44, 64]);
            packet.extend_from_slice(&v6.octets());
            packet.extend_from_slice(&v6.octets());
            // Fragment header: next header UDP, offset 100 (in the top 13 bits), M clear.
            packet.extend_from_slice(&[17, 0, 0x03, 0x20, 0x12, 0x34, 0x56, 0x78]);
        }
    }
    packet.extend_from_slice(&payload);
    let target = SocketAddr::new(addr, 0);
    let ret = match target {
        SocketAddr::V4(v4) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = family(libc::AF_INET);
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            // SAFETY: valid buffer and address pointers of the lengths given.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const sin).cast(),
                    len_of::<libc::sockaddr_in>(),
                )
            }
        }
        SocketAddr::V6(v6) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = family(libc::AF_INET6);
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            // SAFETY: as above.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const sin6).cast(),
                    len_of::<libc::sockaddr_in6>(),
                )
            }
        }
    };
    said(ret as i64)
}

/// Runs one `evade` case and prints its outcome.
pub fn evade(args: &[&str]) -> std::io::Result<()> {
    let number = |text: &str| text.parse::<i32>().map_err(std::io::Error::other);
    let word = match args {
        ["socket", family, kind, protocol] => {
            match socket(number(family)?, number(kind)?, number(protocol)?) {
                Ok(_) => "ok".to_owned(),
                Err(word) => word,
            }
        }
        ["udplite", addr, port] => {
            let addr: IpAddr = addr.parse().map_err(std::io::Error::other)?;
            let port: u16 = port.parse().map_err(std::io::Error::other)?;
            match socket(family_of(&addr), libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) {
                Ok(fd) => send_to(&fd, b"agentd", SocketAddr::new(addr, port)),
                Err(word) => word,
            }
        }
        ["ping", addr] => {
            let addr: IpAddr = addr.parse().map_err(std::io::Error::other)?;
            let (protocol, kind) = if addr.is_ipv6() {
                (libc::IPPROTO_ICMPV6, 128)
            } else {
                (libc::IPPROTO_ICMP, 8)
            };
            match socket(family_of(&addr), libc::SOCK_DGRAM, protocol) {
                // An echo request: type, code 0, checksum (the kernel fills it in), id, seq.
                Ok(fd) => {
                    match send_to(&fd, &[kind, 0, 0, 0, 0, 0, 0, 1], SocketAddr::new(addr, 0)) {
                        sent if sent == "ok" => echo_reply(&fd),
                        failed => failed,
                    }
                }
                Err(word) => word,
            }
        }
        ["source-route", family] => source_route(family)?,
        ["hold-sockets", count, addr, port] => {
            let count: usize = count.parse().map_err(std::io::Error::other)?;
            let addr: IpAddr = addr.parse().map_err(std::io::Error::other)?;
            let port: u16 = port.parse().map_err(std::io::Error::other)?;
            hold_sockets(count, SocketAddr::new(addr, port))
        }
        ["churn-ping", count, addr, port, ping] => {
            let count: usize = count.parse().map_err(std::io::Error::other)?;
            let addr: IpAddr = addr.parse().map_err(std::io::Error::other)?;
            let port: u16 = port.parse().map_err(std::io::Error::other)?;
            let ping = ping.parse().map_err(std::io::Error::other)?;
            churn_ping(count, SocketAddr::new(addr, port), ping)
        }
        ["fragment", addr] => later_fragment(addr.parse().map_err(std::io::Error::other)?),
        ["lsrr-cmsg", addr, port, hop] => {
            let addr = addr.parse().map_err(std::io::Error::other)?;
            let port: u16 = port.parse().map_err(std::io::Error::other)?;
            let hop = hop.parse().map_err(std::io::Error::other)?;
            lsrr_cmsg(std::net::SocketAddrV4::new(addr, port), hop)
        }
        _ => {
            return Err(std::io::Error::other(
                "usage: evade socket|udplite|ping|source-route|lsrr-cmsg|hold-sockets|churn-ping|fragment",
            ));
        }
    };
    println!("{word}");
    Ok(())
}
