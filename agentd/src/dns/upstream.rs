//! The resolver's upstream client. Each forwarded query gets its own socket, so a random source
//! port chosen by the kernel, `connect`ed to the upstream, so the kernel drops datagrams from
//! any other sender, and a random id. A datagram is taken as the reply only if its id and
//! question match the query's; anything else is ignored until the timeout. Over TCP (for the
//! agents' own DNS over TCP) the connection is the upstream's alone, and the id and question are
//! matched the same way.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

use super::wire::{self, Query};

/// Largest reply read (EDNS0 answers above 4,096 bytes are rare; a longer one is truncated and
/// then fails the parse).
const MAX_REPLY: usize = 4096;

/// A random 16-bit query id from the kernel's generator.
pub fn random_id() -> io::Result<u16> {
    let mut bytes = [0u8; 2];
    // SAFETY: writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != 2 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::from_ne_bytes(bytes))
}

/// Sends `message` (the query `query` as received) to `upstream` under a fresh random id and
/// returns the matching reply with the client's id restored.
pub async fn exchange(
    upstream: SocketAddr,
    message: &[u8],
    query: &Query,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    let id = random_id()?;
    socket.send(&wire::with_id(message, id)).await?;
    let wait = async {
        let mut reply = vec![0; MAX_REPLY];
        loop {
            // A refused port on the upstream shows as an error here; keep waiting only for
            // datagrams.
            let len = socket.recv(&mut reply).await?;
            if wire::answers(&reply[..len], id, &query.question) {
                return Ok(wire::with_id(&reply[..len], query.id));
            }
            tracing::debug!(%upstream, "ignoring a datagram that does not answer the query");
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream DNS timed out"))?
}

/// Writes one length-prefixed DNS message (RFC 1035 §4.2.2).
pub async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Reads one length-prefixed DNS message.
pub async fn read_framed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// As [`exchange`], over TCP.
pub async fn exchange_tcp(
    upstream: SocketAddr,
    message: &[u8],
    query: &Query,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let wait = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let id = random_id()?;
        write_framed(&mut stream, &wire::with_id(message, id)).await?;
        loop {
            let reply = read_framed(&mut stream).await?;
            if wire::answers(&reply, id, &query.question) {
                return Ok(wire::with_id(&reply, query.id));
            }
            tracing::debug!(%upstream, "ignoring a message that does not answer the query");
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream DNS timed out"))?
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdSocket;

    use super::*;
    use crate::dns::wire::{
        chain_addresses, parse_query,
        tests::{Rr, query, reply},
    };

    /// An upstream on loopback that, for each query, first sends `before` (given the query's
    /// bytes and the client's address, from its own socket or another one), then the true
    /// reply.
    fn upstream(
        before: impl Fn(&StdSocket, &[u8], SocketAddr) + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<u16>>) {
        let socket = StdSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut buffer = [0u8; 512];
            let (len, client) = socket.recv_from(&mut buffer).unwrap();
            let asked = buffer[..len].to_vec();
            ids.push(u16::from_be_bytes([asked[0], asked[1]]));
            before(&socket, &asked, client);
            std::thread::sleep(Duration::from_millis(50));
            let good = reply(&asked, &[Rr::A("@", [127, 0, 0, 3], 60)]);
            socket.send_to(&good, client).unwrap();
            ids
        });
        (address, handle)
    }

    async fn resolve(upstream: SocketAddr) -> io::Result<Vec<u8>> {
        let message = query(0x5a5a, "allowed.test", 1);
        let parsed = parse_query(&message).unwrap();
        exchange(upstream, &message, &parsed, Duration::from_secs(5)).await
    }

    fn addresses(reply: &[u8]) -> Vec<(std::net::IpAddr, u32)> {
        let message = query(0x5a5a, "allowed.test", 1);
        chain_addresses(reply, &parse_query(&message).unwrap().question).unwrap()
    }

    fn spoofed(asked: &[u8]) -> Vec<u8> {
        reply(asked, &[Rr::A("@", [169, 254, 169, 254], 60)])
    }

    #[tokio::test]
    async fn a_reply_from_another_socket_is_dropped() {
        let (server, done) = upstream(|_, asked, client| {
            // Right id and question, wrong sender.
            let attacker = StdSocket::bind("127.0.0.1:0").unwrap();
            attacker.send_to(&spoofed(asked), client).unwrap();
        });
        let got = resolve(server).await.unwrap();
        assert_eq!(addresses(&got), [("127.0.0.3".parse().unwrap(), 60)]);
        assert_eq!(&got[..2], &[0x5a, 0x5a], "the client's id is restored");
        done.join().unwrap();
    }

    #[tokio::test]
    async fn a_reply_with_the_wrong_id_is_ignored() {
        let (server, done) = upstream(|socket, asked, client| {
            let mut wrong = spoofed(asked);
            wrong[1] ^= 1;
            socket.send_to(&wrong, client).unwrap();
        });
        let got = resolve(server).await.unwrap();
        assert_eq!(addresses(&got), [("127.0.0.3".parse().unwrap(), 60)]);
        let ids = done.join().unwrap();
        assert_ne!(ids[0], 0x5a5a, "the id upstream sees is not the client's");
    }

    #[tokio::test]
    async fn a_reply_to_another_question_is_ignored() {
        let (server, done) = upstream(|socket, asked, client| {
            let id = u16::from_be_bytes([asked[0], asked[1]]);
            let other = reply(
                &query(id, "other.test", 1),
                &[Rr::A("@", [169, 254, 169, 254], 60)],
            );
            socket.send_to(&other, client).unwrap();
            let mut aaaa = query(id, "allowed.test", 28);
            aaaa = reply(&aaaa, &[]);
            socket.send_to(&aaaa, client).unwrap();
        });
        let got = resolve(server).await.unwrap();
        assert_eq!(addresses(&got), [("127.0.0.3".parse().unwrap(), 60)]);
        done.join().unwrap();
    }

    #[tokio::test]
    async fn only_non_answers_until_the_timeout_is_an_error() {
        let socket = StdSocket::bind("127.0.0.1:0").unwrap();
        let server = socket.local_addr().unwrap();
        let spoofer = std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            let (len, client) = socket.recv_from(&mut buffer).unwrap();
            let mut wrong = spoofed(&buffer[..len]);
            wrong[0] ^= 0x80;
            socket.send_to(&wrong, client).unwrap();
        });
        let message = query(1, "allowed.test", 1);
        let parsed = parse_query(&message).unwrap();
        let err = exchange(server, &message, &parsed, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        spoofer.join().unwrap();
    }

    #[test]
    fn ids_are_random() {
        let ids: std::collections::HashSet<u16> = (0..64).map(|_| random_id().unwrap()).collect();
        assert!(ids.len() > 32, "{ids:?}");
    }

    #[tokio::test]
    async fn over_tcp_a_reply_to_another_question_is_ignored() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let done = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let (mut stream, _) = listener.accept().unwrap();
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).unwrap();
            let mut asked = vec![0; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut asked).unwrap();
            let id = u16::from_be_bytes([asked[0], asked[1]]);
            let wrong = reply(
                &query(id, "other.test", 1),
                &[Rr::A("@", [169, 254, 169, 254], 60)],
            );
            let good = reply(&asked, &[Rr::A("@", [127, 0, 0, 3], 60)]);
            for message in [wrong, good] {
                let len = u16::try_from(message.len()).unwrap().to_be_bytes();
                stream.write_all(&len).unwrap();
                stream.write_all(&message).unwrap();
            }
            id
        });
        let message = query(0x5a5a, "allowed.test", 1);
        let parsed = parse_query(&message).unwrap();
        let got = exchange_tcp(server, &message, &parsed, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(addresses(&got), [("127.0.0.3".parse().unwrap(), 60)]);
        assert_eq!(&got[..2], &[0x5a, 0x5a]);
        assert_ne!(done.join().unwrap(), 0x5a5a);
    }
}
