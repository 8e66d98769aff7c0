//! The SPIFFE Workload API (`SpiffeWorkloadAPI`) on a unix socket. The caller is pinned at
//! accept by the kernel's record of the connecting process (`identity::attest::Peer`), and
//! every answer is for the agent whose tag that process carries, as the daemon says
//! ([`Ask`]), never for what the caller claims. An untagged caller gets `PermissionDenied`.
//! SVIDs are signed by the control plane (`control::CredentialCall`) for keys made here,
//! cached per agent, renewed at half-life, and streamed to every open `FetchX509SVID`; a
//! stream ends with an error as soon as the agent may no longer hold its SVID. The X.509
//! bundle is the newest the host has (a signing's, or a heartbeat's after a CA rotation), and
//! open streams send it again when it changes. JWT-SVIDs are
//! signed for the audiences asked and cached the same way; the JWT bundle is the control
//! plane's JWKS, refreshed every 30 s.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use agentd_proto::workload::{
    self as api,
    spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, transport::server::Connected};

use super::{
    authority::AuthorityRewriter,
    jwt::{self, JwtBundle, JwtSvid},
    svid::{self, Svid},
};
use crate::{
    clock::boottime_ticks,
    control::{CredentialCall, Reply, ToControl},
    identity::attest::Peer,
};

/// The metadata every Workload API call must carry (the specification's security header).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// How often an open stream asks again whether its agent may still hold the SVID (it also
/// asks at once when the daemon says the standing changed).
const RECHECK: Duration = Duration::from_secs(1);
/// How long a signing may take before the caller is told the control plane is unavailable.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the JWT bundle is served before it is asked for again.
const BUNDLE_REFRESH: Duration = Duration::from_secs(30);
/// JWT-SVIDs kept at once (by agent and audiences); past it, expired ones go, then all.
const MAX_CACHED_JWTS: usize = 1024;

/// The connecting process, pinned at accept (or why it could not be).
#[derive(Clone, Debug)]
pub struct PeerInfo(pub Arc<Result<Peer, String>>);

/// Who a caller is, for the daemon to answer: the agent its process's tag names and whether
/// that agent may hold a credential now.
pub struct Ask {
    pub peer: PeerInfo,
    pub reply: oneshot::Sender<Result<Subject, Status>>,
}

/// The agent a caller belongs to, by its control-plane id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub agent_id: String,
    pub agent_name: String,
}

/// A unix stream with its pinned peer, so that every call on it knows who connected; what
/// the client sends is read through an [`AuthorityRewriter`].
pub struct Pinned {
    stream: UnixStream,
    peer: PeerInfo,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes the server has not read yet, from `read_at`.
    rewritten: Vec<u8>,
    read_at: usize,
}

impl Connected for Pinned {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Pinned {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read_at < this.rewritten.len() {
                let n = buf.remaining().min(this.rewritten.len() - this.read_at);
                buf.put_slice(&this.rewritten[this.read_at..this.read_at + n]);
                this.read_at += n;
                if this.read_at == this.rewritten.len() {
                    this.rewritten.clear();
                    this.read_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The end of the stream.
                return Poll::Ready(Ok(()));
            }
            this.rewriter
                .feed(read.filled(), &mut this.rewritten)
                .map_err(std::io::Error::other)?;
        }
    }
}

impl AsyncWrite for Pinned {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The Workload API service.
#[derive(Clone)]
pub struct WorkloadApi {
    asks: mpsc::Sender<Ask>,
    control: Option<mpsc::Sender<ToControl>>,
    held: Held,
    bundle: Arc<Mutex<Option<(tokio::time::Instant, JwtBundle)>>>,
}

/// The SVIDs the Workload API keeps, shared with the daemon for `agentd status` and metrics.
#[derive(Clone, Default)]
pub struct Held {
    svids: Arc<Mutex<HashMap<String, Svid>>>,
    /// By agent id and its sorted audiences.
    jwts: Arc<Mutex<HashMap<JwtKey, JwtSvid>>>,
    /// Woken when what an agent may hold can have changed (`Held::standing_changed`), so that
    /// open streams ask again at once instead of at their next recheck.
    changes: Arc<tokio::sync::Notify>,
    /// The newest X.509 trust bundle (DER certificates concatenated): from the latest signing
    /// or heartbeat, whichever came last. Every SVID is served with it.
    x509_bundle: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Held {
    /// Tells every open stream that agents' standing may have changed (a decision set
    /// applied, a quarantine): each asks again now whether its agent may still hold its SVID.
    pub fn standing_changed(&self) {
        self.changes.notify_waiters();
    }

    /// The control plane's trust bundle changed (`pem`, from a heartbeat): open `FetchX509SVID`
    /// and `FetchX509Bundles` streams send it now, not with the next SVID. A bundle without a
    /// certificate is refused and the one held stays.
    pub fn set_bundle(&self, pem: &str) -> Result<(), svid::SvidError> {
        let der = svid::der_certificates(pem)?.concat();
        if der.is_empty() {
            return Err(svid::SvidError::Answer(
                "ca_bundle_pem holds no certificate".into(),
            ));
        }
        *locked(&self.x509_bundle) = Some(der);
        self.changes.notify_waiters();
        Ok(())
    }

    /// `svid` with the newest trust bundle.
    fn with_bundle(&self, mut svid: Svid) -> Svid {
        if let Some(bundle) = locked(&self.x509_bundle).as_ref() {
            svid.bundle_der.clone_from(bundle);
        }
        svid
    }

    /// How many are held and not expired at `now` (Unix seconds), and the next X.509 expiry.
    #[must_use]
    pub fn status(&self, now: i64) -> crate::api::SvidStatus {
        let svids = locked(&self.svids);
        let live: Vec<i64> = svids
            .values()
            .map(|svid| svid.not_after)
            .filter(|&not_after| now < not_after)
            .collect();
        let jwts = locked(&self.jwts)
            .values()
            .filter(|jwt| now < jwt.expires_at)
            .count();
        crate::api::SvidStatus {
            x509_svids: live.len() as u64,
            x509_next_expiry: live.iter().min().copied(),
            jwt_svids: jwts as u64,
        }
    }
}

/// A cached JWT-SVID's key: the agent's id and its sorted audiences.
type JwtKey = (String, Vec<String>);

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves the Workload API on `listener` until the task is aborted.
pub async fn serve(
    listener: UnixListener,
    asks: mpsc::Sender<Ask>,
    control: Option<mpsc::Sender<ToControl>>,
    held: Held,
) {
    let service = WorkloadApi {
        asks,
        control,
        held,
        bundle: Arc::default(),
    };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).map(|stream| {
        stream.map(|stream| {
            let accepted_at = boottime_ticks();
            // Pinned before anything is read: the kernel's record, not what it will say.
            let peer = Peer::of(&stream, accepted_at).map_err(|err| err.to_string());
            Pinned {
                stream,
                peer: PeerInfo(Arc::new(peer)),
                rewriter: AuthorityRewriter::default(),
                rewritten: Vec::new(),
                read_at: 0,
            }
        })
    });
    if let Err(err) = tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(service))
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(%err, "the SPIFFE Workload API stopped");
    }
}

fn unix_now() -> i64 {
    crate::clock::unix_ms() / 1000
}

/// The specification's checks on every call: the security header, and a caller this side
/// could pin.
fn caller<T>(request: &Request<T>) -> Result<PeerInfo, Status> {
    let header = request
        .metadata()
        .get(SECURITY_HEADER)
        .and_then(|value| value.to_str().ok());
    if header != Some("true") {
        return Err(Status::invalid_argument(format!(
            "security header missing from request: `{SECURITY_HEADER}: true`"
        )));
    }
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("the connection's peer was not recorded"))
}

impl WorkloadApi {
    async fn subject(&self, peer: &PeerInfo) -> Result<Subject, Status> {
        let (reply, answer) = oneshot::channel();
        self.asks
            .send(Ask {
                peer: peer.clone(),
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("agentd is stopping"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("agentd is stopping"))?
    }

    /// The caller's agent's SVID: the cached one until its half-life, else a new one signed by
    /// the control plane. A cached SVID still valid is served while the control plane cannot
    /// be reached; none is served past its expiry.
    async fn current(&self, peer: &PeerInfo) -> Result<Svid, Status> {
        let subject = self.subject(peer).await?;
        let now = unix_now();
        let cached = self.cached(&subject.agent_id);
        if let Some(svid) = &cached
            && now < svid.renew_at()
        {
            return Ok(self.held.with_bundle(svid.clone()));
        }
        match self.sign(&subject).await {
            Ok(svid) => {
                tracing::info!(agent = %subject.agent_name, spiffe_id = %svid.spiffe_id, not_after = svid.not_after, "X.509-SVID signed");
                *locked(&self.held.x509_bundle) = Some(svid.bundle_der.clone());
                locked(&self.held.svids).insert(subject.agent_id.clone(), svid.clone());
                Ok(svid)
            }
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && cached.as_ref().is_some_and(|svid| now < svid.not_after) =>
            {
                tracing::warn!(agent = %subject.agent_name, %status, "renewing an X.509-SVID; serving the cached one until it expires");
                Ok(self.held.with_bundle(cached.expect("checked above")))
            }
            Err(status) => Err(status),
        }
    }

    fn cached(&self, agent_id: &str) -> Option<Svid> {
        locked(&self.held.svids).get(agent_id).cloned()
    }

    /// Asks the control plane through the host's connection; its refusal (Conditional Access
    /// at issuance) is the caller's, as `PERMISSION_DENIED`.
    async fn ask<T>(&self, call: impl FnOnce(Reply<T>) -> CredentialCall) -> Result<T, Status> {
        let control = self.control.as_ref().ok_or_else(|| {
            Status::unavailable(
                "agentd has no control plane (control_plane.url): no credential can be signed",
            )
        })?;
        let (reply, answer) = oneshot::channel();
        control
            .send(ToControl::Credential(call(reply)))
            .await
            .map_err(|_| Status::unavailable("agentd's control-plane task has stopped"))?;
        tokio::time::timeout(SIGN_TIMEOUT, answer)
            .await
            .map_err(|_| Status::unavailable("the control plane did not answer in time"))?
            .map_err(|_| Status::unavailable("the control plane connection is down"))?
            .map_err(|status| {
                Status::new(
                    if status.code() == tonic::Code::FailedPrecondition {
                        tonic::Code::PermissionDenied
                    } else {
                        status.code()
                    },
                    format!("the control plane: {}", status.message()),
                )
            })
    }

    async fn sign(&self, subject: &Subject) -> Result<Svid, Status> {
        let request = svid::new_request().map_err(|err| Status::internal(err.to_string()))?;
        let answer = self
            .ask(|reply| CredentialCall::Svid {
                agent_id: subject.agent_id.clone(),
                csr_pem: request.csr_pem.clone(),
                reply,
            })
            .await?;
        Svid::complete(&request, &answer).map_err(|err| Status::internal(err.to_string()))
    }

    /// The caller's agent's JWT-SVID for `audience`: a cached one until its half-life, else a
    /// new one; a cached one still valid is served while the control plane cannot be reached.
    async fn jwt_svid(&self, peer: &PeerInfo, audience: Vec<String>) -> Result<JwtSvid, Status> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "audience: at least one non-empty audience is required",
            ));
        }
        if audience.len() > jwt::MAX_AUDIENCES {
            return Err(Status::invalid_argument(format!(
                "audience: {} audiences; at most {}",
                audience.len(),
                jwt::MAX_AUDIENCES
            )));
        }
        let subject = self.subject(peer).await?;
        let mut sorted = audience.clone();
        sorted.sort();
        sorted.dedup();
        let key = (subject.agent_id.clone(), sorted);
        let now = unix_now();
        let cached = locked(&self.held.jwts).get(&key).cloned();
        if let Some(svid) = &cached
            && now < svid.renew_at()
        {
            return Ok(svid.clone());
        }
        let answer = self
            .ask(|reply| CredentialCall::Jwt {
                agent_id: subject.agent_id.clone(),
                audience,
                reply,
            })
            .await;
        match answer {
            Ok(answer) => {
                let svid = JwtSvid::from_answer(answer, now);
                let mut jwts = locked(&self.held.jwts);
                if jwts.len() >= MAX_CACHED_JWTS {
                    jwts.retain(|_, kept| now < kept.expires_at);
                    if jwts.len() >= MAX_CACHED_JWTS {
                        jwts.clear();
                    }
                }
                jwts.insert(key, svid.clone());
                Ok(svid)
            }
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && cached.as_ref().is_some_and(|svid| now < svid.expires_at) =>
            {
                Ok(cached.expect("checked above"))
            }
            Err(status) => Err(status),
        }
    }

    /// The JWT bundle, for a caller its agent's standing allows: the one fetched within 30 s,
    /// else the control plane's now (the last one while it cannot be reached).
    async fn jwt_bundle(&self, peer: &PeerInfo) -> Result<JwtBundle, Status> {
        self.subject(peer).await?;
        let cached = locked(&self.bundle).clone();
        if let Some((fetched, bundle)) = &cached
            && fetched.elapsed() < BUNDLE_REFRESH
        {
            return Ok(bundle.clone());
        }
        match self.ask(|reply| CredentialCall::JwtBundle { reply }).await {
            Ok(answer) => {
                let bundle = JwtBundle::from_answer(&answer)
                    .map_err(|err| Status::internal(err.to_string()))?;
                *locked(&self.bundle) = Some((tokio::time::Instant::now(), bundle.clone()));
                Ok(bundle)
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                cached.map(|(_, bundle)| bundle).ok_or(status)
            }
            Err(status) => Err(status),
        }
    }
}

/// What an open stream sends again whenever it changes.
trait Watched: Clone + PartialEq + Send + Sync + 'static {
    fn fetch(
        api: &WorkloadApi,
        peer: &PeerInfo,
    ) -> impl Future<Output = Result<Self, Status>> + Send;
}

impl Watched for Svid {
    fn fetch(
        api: &WorkloadApi,
        peer: &PeerInfo,
    ) -> impl Future<Output = Result<Self, Status>> + Send {
        api.current(peer)
    }
}

impl Watched for JwtBundle {
    fn fetch(
        api: &WorkloadApi,
        peer: &PeerInfo,
    ) -> impl Future<Output = Result<Self, Status>> + Send {
        api.jwt_bundle(peer)
    }
}

fn x509_response(svid: &Svid) -> api::X509svidResponse {
    api::X509svidResponse {
        svids: vec![api::X509svid {
            spiffe_id: svid.spiffe_id.clone(),
            x509_svid: svid.cert_der.clone(),
            x509_svid_key: svid.key_der.clone(),
            bundle: svid.bundle_der.clone(),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: HashMap::new(),
    }
}

fn bundles_response(svid: &Svid) -> api::X509BundlesResponse {
    api::X509BundlesResponse {
        crl: Vec::new(),
        bundles: HashMap::from([(svid.trust_domain_id.clone(), svid.bundle_der.clone())]),
    }
}

fn jwt_bundles_response(bundle: &JwtBundle) -> api::JwtBundlesResponse {
    api::JwtBundlesResponse {
        bundles: HashMap::from([(bundle.trust_domain_id.clone(), bundle.jwks.clone())]),
    }
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// Sends `make(first)` now and again whenever the value changes; ends with the error once
    /// the caller's agent may no longer hold it, or when the caller goes away.
    fn watch<V: Watched, T: Send + 'static>(
        &self,
        peer: PeerInfo,
        first: V,
        make: fn(&V) -> T,
    ) -> Stream<T> {
        let (tx, rx) = mpsc::channel(2);
        let this = self.clone();
        tokio::spawn(async move {
            if tx.send(Ok(make(&first))).await.is_err() {
                return;
            }
            let mut last = first;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(RECHECK) => {}
                    () = this.held.changes.notified() => {}
                    () = tx.closed() => return,
                }
                match V::fetch(&this, &peer).await {
                    Ok(value) if value == last => {}
                    Ok(value) => {
                        if tx.send(Ok(make(&value))).await.is_err() {
                            return;
                        }
                        last = value;
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream<api::X509svidResponse>;
    type FetchX509BundlesStream = Stream<api::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<api::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<api::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let peer = caller(&request)?;
        let first = self.current(&peer).await?;
        Ok(Response::new(self.watch(peer, first, x509_response)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<api::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let peer = caller(&request)?;
        let first = self.current(&peer).await?;
        Ok(Response::new(self.watch(peer, first, bundles_response)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<api::JwtsvidRequest>,
    ) -> Result<Response<api::JwtsvidResponse>, Status> {
        let peer = caller(&request)?;
        let request = request.into_inner();
        let svid = self.jwt_svid(&peer, request.audience).await?;
        if !request.spiffe_id.is_empty() && request.spiffe_id != svid.spiffe_id {
            return Err(Status::permission_denied(format!(
                "the caller holds {}, not {}",
                svid.spiffe_id, request.spiffe_id
            )));
        }
        Ok(Response::new(api::JwtsvidResponse {
            svids: vec![api::Jwtsvid {
                spiffe_id: svid.spiffe_id,
                svid: svid.token,
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<api::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let peer = caller(&request)?;
        let first = self.jwt_bundle(&peer).await?;
        Ok(Response::new(self.watch(peer, first, jwt_bundles_response)))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<api::ValidateJwtsvidRequest>,
    ) -> Result<Response<api::ValidateJwtsvidResponse>, Status> {
        let peer = caller(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let bundle = self.jwt_bundle(&peer).await?;
        let claims = bundle
            .validate(&request.svid, &request.audience)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        Ok(Response::new(api::ValidateJwtsvidResponse {
            spiffe_id: claims["sub"].as_str().unwrap_or_default().to_owned(),
            claims: Some(jwt::claims_struct(&claims)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(bundle_der: Vec<u8>) -> Svid {
        Svid {
            spiffe_id: "spiffe://t/agent/a".into(),
            trust_domain_id: "spiffe://t".into(),
            cert_der: vec![1],
            key_der: vec![2],
            bundle_der,
            not_before: 0,
            not_after: 1,
        }
    }

    #[test]
    fn a_new_bundle_is_served_with_every_svid_and_a_bundle_without_certificates_is_refused() {
        let held = Held::default();
        assert_eq!(
            held.with_bundle(svid(vec![9])),
            svid(vec![9]),
            "none held yet"
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let two = format!("{}{}", cert.pem(), cert.pem());
        held.set_bundle(&two).unwrap();
        let served = held.with_bundle(svid(vec![9]));
        assert_eq!(
            served.bundle_der,
            [cert.der().to_vec(), cert.der().to_vec()].concat()
        );
        assert_eq!(served.cert_der, [1], "the SVID itself is unchanged");
        let err = held.set_bundle("not a bundle").unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        assert_eq!(
            held.with_bundle(svid(vec![9])).bundle_der,
            served.bundle_der,
            "the bundle held stays"
        );
    }
}
