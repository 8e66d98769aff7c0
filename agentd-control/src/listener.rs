//! The bounded stream of incoming connections the gRPC server serves: at most
//! `max_connections` at once (one over the cap is accepted and closed at once, so that its
//! client fails fast instead of waiting in the backlog), a deadline by which a new connection
//! must have sent its first bytes (a TLS `ClientHello` or the HTTP/2 preface), an idle deadline
//! after that (a connection that carries no call for `idle_timeout` is closed, whatever else it
//! sends: one that finished its TLS handshake and then fell silent, or an HTTP/2 client that
//! answers every keepalive ping and never calls; the calls are counted by
//! [`crate::activity`]), and an accept loop that pauses instead of spinning when the process is
//! out of file descriptors.
//!
//! The TLS handshake itself is bounded by tonic (`ServerTlsConfig::timeout`, set from the same
//! deadline), HTTP/2 keepalive by hyper; see `server.rs`.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::activity::{Connections, Registered};

/// The HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) is 24 bytes; a TLS
/// `ClientHello` is longer. A connection that has sent this many bytes has started speaking.
const FIRST_BYTES: usize = 24;

/// How long the accept loop pauses after an error that accepting again at once would repeat
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// At most one warning per this interval for refused connections and accept errors.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Limits on the server's connections; see docs/control-plane.md, "Connections and shutdown".
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// A new connection must send its first bytes (TLS `ClientHello`, HTTP/2 preface) and
    /// complete its TLS handshake within this time, or it is closed.
    pub handshake_timeout: Duration,
    /// HTTP/2 keepalive: the server pings every connection this often, and closes one whose
    /// peer has not answered within `keepalive_timeout` (a dead or vanished host).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection that carries no call for this long is closed (a watching host always
    /// carries one). Kept longer than `keepalive_interval + keepalive_timeout`
    /// ([`ConnectionLimits::check`]), so that a connection closed as idle is never one the
    /// keepalive was about to judge.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// Refuses limits under which a live client could be closed as idle.
    pub fn check(&self) -> Result<(), String> {
        let floor = self.keepalive_interval + self.keepalive_timeout;
        if self.idle_timeout <= floor {
            return Err(format!(
                "idle timeout {:?} must be longer than the keepalive interval plus its timeout \
                 ({floor:?}): a live client that answers every ping would be closed as idle",
                self.idle_timeout
            ));
        }
        Ok(())
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(2),
        }
    }
}

/// Connections accepted from `listener`, at most `max_connections` open at once.
pub struct BoundedIncoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    max_connections: usize,
    first_bytes_timeout: Duration,
    idle_timeout: Duration,
    pause: Option<Pin<Box<Sleep>>>,
    refused: u64,
    last_warning: Option<Instant>,
    connections: Connections,
}

impl BoundedIncoming {
    pub fn new(listener: TcpListener, limits: &ConnectionLimits) -> Self {
        let max_connections = limits.max_connections;
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            first_bytes_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            pause: None,
            refused: 0,
            last_warning: None,
            connections: Connections::default(),
        }
    }

    /// The calls of the connections accepted here, for [`crate::activity::TrackCalls`].
    pub fn connections(&self) -> Connections {
        self.connections.clone()
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max_connections - self.permits.available_permits()
    }

    fn may_warn(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            return false;
        }
        self.last_warning = Some(now);
        true
    }
}

/// Errors after which accepting again at once would fail the same way and spin.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl Stream for BoundedIncoming {
    type Item = io::Result<BoundedConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, peer)) => {
                    if let Ok(permit) = this.permits.clone().try_acquire_owned() {
                        let _ = stream.set_nodelay(true);
                        return Poll::Ready(Some(Ok(BoundedConnection::new(
                            stream,
                            permit,
                            this.connections.open(peer),
                            this.first_bytes_timeout,
                            this.idle_timeout,
                        ))));
                    }
                    // Closed at once: the client sees the connection end (UNAVAILABLE)
                    // instead of hanging in the backlog.
                    drop(stream);
                    this.refused += 1;
                    if this.may_warn() {
                        tracing::warn!(
                            %peer,
                            max_connections = this.max_connections,
                            refused_so_far = this.refused,
                            "refusing a connection: at the connection cap (--max-connections)"
                        );
                    }
                }
                Err(err) if is_resource_exhaustion(&err) => {
                    if this.may_warn() {
                        tracing::warn!(
                            error = %err,
                            open = this.open(),
                            "accepting a connection failed; pausing the accept loop (raise LimitNOFILE or lower --max-connections)"
                        );
                    }
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                }
                // A connection that went away before it was accepted, and the like.
                Err(err) => tracing::debug!(error = %err, "accepting a connection"),
            }
        }
    }
}

/// An accepted connection: holds its slot under the cap until it is dropped, and fails its
/// reads once the first-bytes deadline passes before the client has sent [`FIRST_BYTES`], or
/// once it has carried no call for the idle timeout after that.
pub struct BoundedConnection {
    stream: TcpStream,
    /// The first-bytes deadline until the client has started speaking, then the idle deadline,
    /// moved on while calls are open and by the end of each.
    deadline: Pin<Box<Sleep>>,
    awaiting: usize,
    idle: Duration,
    registered: Registered,
    _permit: OwnedSemaphorePermit,
}

impl BoundedConnection {
    fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        registered: Registered,
        first_bytes: Duration,
        idle: Duration,
    ) -> Self {
        Self {
            stream,
            deadline: Box::pin(tokio::time::sleep(first_bytes)),
            awaiting: FIRST_BYTES,
            idle,
            registered,
            _permit: permit,
        }
    }

    /// At the deadline: why the connection ends, or `None` after moving the deadline on (a
    /// call is open, or one ended less than the idle timeout ago).
    fn expired(&mut self) -> Option<String> {
        if self.awaiting > 0 {
            return Some("the client sent no TLS ClientHello or HTTP/2 preface in time".to_owned());
        }
        let now = Instant::now();
        let next = match self.registered.calls().idle_since() {
            None => now + self.idle,
            Some(since) if since + self.idle > now => since + self.idle,
            Some(_) => {
                return Some(format!(
                    "the connection carried no call for {:?} (idle timeout)",
                    self.idle
                ));
            }
        };
        self.deadline.as_mut().reset(next);
        None
    }
}

impl AsyncRead for BoundedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 && this.awaiting > 0 {
                    this.awaiting = this.awaiting.saturating_sub(read);
                    if this.awaiting == 0 {
                        // Started speaking: from now on only calls keep the connection.
                        this.deadline.as_mut().reset(Instant::now() + this.idle);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                while this.deadline.as_mut().poll(cx).is_ready() {
                    if let Some(why) = this.expired() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                    }
                }
                Poll::Pending
            }
            ready @ Poll::Ready(Err(_)) => ready,
        }
    }
}

impl AsyncWrite for BoundedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for BoundedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_stream::StreamExt as _;

    use super::*;

    async fn bound(max: usize, timeout: Duration) -> (BoundedIncoming, std::net::SocketAddr) {
        bound_idle(max, timeout, Duration::from_hours(1)).await
    }

    async fn bound_idle(
        max: usize,
        timeout: Duration,
        idle: Duration,
    ) -> (BoundedIncoming, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let limits = ConnectionLimits {
            max_connections: max,
            handshake_timeout: timeout,
            idle_timeout: idle,
            ..ConnectionLimits::default()
        };
        (BoundedIncoming::new(listener, &limits), address)
    }

    #[tokio::test]
    async fn a_connection_that_carries_no_call_is_closed_as_idle_whatever_it_sends() {
        let (mut incoming, address) =
            bound_idle(4, Duration::from_millis(100), Duration::from_millis(400)).await;
        let connections = incoming.connections();
        let mut client = TcpStream::connect(address).await.expect("connect");
        let peer = client.local_addr().expect("client address");
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        let mut connection = incoming.next().await.expect("one").expect("accepted");
        let mut preface = [0; FIRST_BYTES];
        connection.read_exact(&mut preface).await.expect("preface");
        // An open call keeps it past several idle timeouts...
        let call = connections
            .begin(peer)
            .expect("the connection is registered");
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"ping").await.expect("write");
            let mut ping = [0; 4];
            connection
                .read_exact(&mut ping)
                .await
                .expect("a connection with a call is kept");
        }
        drop(call);
        // ...and once it ends, bytes without a call (pings, say) do not: it is closed an idle
        // timeout after the call ended.
        let ended = std::time::Instant::now();
        let err = loop {
            client.write_all(b"ping").await.expect("write");
            match connection.read(&mut [0; 64]).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("idle timeout"), "{err}");
        let after = ended.elapsed();
        assert!(
            after >= Duration::from_millis(350) && after < Duration::from_secs(3),
            "{after:?}"
        );
        drop(connection);
        assert!(connections.is_empty(), "a closed connection is forgotten");
    }

    #[test]
    fn an_idle_timeout_a_live_client_could_reach_is_refused() {
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_secs(40),
            ..ConnectionLimits::default()
        };
        let err = limits.check().unwrap_err();
        assert!(err.contains("idle timeout 40s"), "{err}");
        ConnectionLimits::default()
            .check()
            .expect("the defaults hold");
    }

    #[tokio::test]
    async fn a_silent_connection_fails_its_reads_at_the_deadline() {
        let (mut incoming, address) = bound(4, Duration::from_millis(200)).await;
        let _client = TcpStream::connect(address).await.expect("connect");
        let mut connection = incoming.next().await.expect("one").expect("accepted");
        let started = std::time::Instant::now();
        let err = connection.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_connection_that_speaks_has_no_deadline() {
        let (mut incoming, address) = bound(4, Duration::from_millis(100)).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        let mut connection = incoming.next().await.expect("one").expect("accepted");
        let mut preface = [0; FIRST_BYTES];
        connection.read_exact(&mut preface).await.expect("preface");
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(b"more").await.expect("write");
        let mut more = [0; 4];
        connection
            .read_exact(&mut more)
            .await
            .expect("read after the deadline");
        assert_eq!(&more, b"more");
    }

    #[tokio::test]
    async fn over_the_cap_a_connection_is_closed_at_once_and_its_slot_comes_back() {
        let (mut incoming, address) = bound(1, Duration::from_secs(30)).await;
        let _first = TcpStream::connect(address).await.expect("connect");
        let held = incoming.next().await.expect("one").expect("accepted");
        assert_eq!(incoming.open(), 1);
        let mut second = TcpStream::connect(address).await.expect("connect");
        // The accept loop takes the second connection and closes it.
        let next = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(next.is_err(), "nothing is yielded over the cap");
        let read = tokio::time::timeout(Duration::from_secs(2), second.read(&mut [0; 8]))
            .await
            .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        drop(held);
        assert_eq!(incoming.open(), 0);
        let _third = TcpStream::connect(address).await.expect("connect");
        incoming.next().await.expect("one").expect("accepted again");
    }
}
