//! Calls in flight on each connection, so that the listener can tell a connection that serves
//! calls from one that only answers keepalive pings. Every call (request and response body)
//! holds a [`CallGuard`] on its connection's [`Calls`]; [`TrackCalls`] is the tower layer that
//! takes it, finding the connection by its peer address, which the listener registered at
//! accept ([`Connections::open`]).

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use tokio::time::Instant;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// One connection's calls: how many are open, and when the last one began or ended.
#[derive(Debug)]
pub struct Calls {
    open: AtomicUsize,
    last_change: Mutex<Instant>,
}

impl Calls {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self
            .last_change
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// `None` while a call is open; else since when none has been (the end of the last call,
    /// or the connection's start).
    pub fn idle_since(&self) -> Option<Instant> {
        (self.open.load(Ordering::Acquire) == 0).then(|| {
            *self
                .last_change
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        })
    }

    fn begin(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.touch();
        CallGuard(Arc::clone(self))
    }
}

/// An open call; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard(Arc<Calls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections' calls, by peer address (unique among open TCP connections to one
/// listening address).
#[derive(Clone, Debug, Default)]
pub struct Connections {
    by_peer: Arc<Mutex<HashMap<SocketAddr, Arc<Calls>>>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Calls>>> {
        self.by_peer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection just accepted from `peer`, until the returned handle is dropped.
    pub fn open(&self, peer: SocketAddr) -> Registered {
        let calls = Arc::new(Calls::new());
        self.lock().insert(peer, Arc::clone(&calls));
        Registered {
            connections: self.clone(),
            peer,
            calls,
        }
    }

    /// Begins a call on the connection from `peer`, if it is registered.
    pub fn begin(&self, peer: SocketAddr) -> Option<CallGuard> {
        self.lock().get(&peer).map(Calls::begin)
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// A registered connection; dropping it forgets the connection.
#[derive(Debug)]
pub struct Registered {
    connections: Connections,
    peer: SocketAddr,
    calls: Arc<Calls>,
}

impl Registered {
    pub fn calls(&self) -> &Calls {
        &self.calls
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut by_peer = self.connections.lock();
        // A new connection from the same address may have replaced this one already.
        if by_peer
            .get(&self.peer)
            .is_some_and(|calls| Arc::ptr_eq(calls, &self.calls))
        {
            by_peer.remove(&self.peer);
        }
    }
}

/// The peer address tonic recorded for the request's connection (plain TCP or TLS).
fn peer_of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// The tower layer that holds a [`CallGuard`] for every call, from its request until its
/// response body has been sent or dropped.
#[derive(Clone, Debug)]
pub struct TrackCalls {
    connections: Connections,
}

impl TrackCalls {
    pub fn new(connections: Connections) -> Self {
        Self { connections }
    }
}

impl<S> tower_layer::Layer<S> for TrackCalls {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            connections: self.connections.clone(),
        }
    }
}

/// A service under [`TrackCalls`].
#[derive(Clone, Debug)]
pub struct Tracked<S> {
    inner: S,
    connections: Connections,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Tracked<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Guarded<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = peer_of(&request).and_then(|peer| self.connections.begin(peer));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Guarded {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its call open until it is done or dropped.
#[derive(Debug)]
pub struct Guarded<B> {
    body: B,
    _guard: Option<CallGuard>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_while_no_call_is_open() {
        let connections = Connections::default();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let registered = connections.open(peer);
        let opened = registered.calls().idle_since().expect("idle at first");
        let call = connections.begin(peer).expect("registered");
        assert_eq!(
            registered.calls().idle_since(),
            None,
            "busy while a call is open"
        );
        let second = connections.begin(peer).expect("registered");
        drop(call);
        assert_eq!(registered.calls().idle_since(), None, "one call still open");
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(second);
        let since = registered.calls().idle_since().expect("idle again");
        assert!(since > opened, "idle from the end of the last call");
        drop(registered);
        assert!(connections.is_empty());
        assert!(
            connections.begin(peer).is_none(),
            "a forgotten connection takes no call"
        );
    }
}
