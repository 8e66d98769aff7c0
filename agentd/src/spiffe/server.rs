//! The SPIFFE Workload API (`SpiffeWorkloadAPI`) on a unix socket. The caller is pinned at
//! accept by the kernel's record of the connecting process (`identity::attest::Peer`), and
//! every answer is for the agent whose tag that process carries, as the daemon says
//! ([`Ask`]), never for what the caller claims. An untagged caller gets `PermissionDenied`.
//! SVIDs are signed by the control plane (`control::ToControl::SignSvid`) for keys made here,
//! cached per agent, renewed at half-life, and streamed to every open `FetchX509SVID`; a
//! stream ends with an error as soon as the agent may no longer hold its SVID.

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

use super::svid::{self, Svid};
use crate::{clock::boottime_ticks, control::ToControl, identity::attest::Peer};

/// The metadata every Workload API call must carry (the specification's security header).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// How often an open stream asks again whether its agent may still hold the SVID.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a signing may take before the caller is told the control plane is unavailable.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A unix stream with its pinned peer, so that every call on it knows who connected.
pub struct Pinned {
    stream: UnixStream,
    peer: PeerInfo,
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
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
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
    svids: Arc<Mutex<HashMap<String, Svid>>>,
}

/// Serves the Workload API on `listener` until the task is aborted.
pub async fn serve(
    listener: UnixListener,
    asks: mpsc::Sender<Ask>,
    control: Option<mpsc::Sender<ToControl>>,
) {
    let service = WorkloadApi {
        asks,
        control,
        svids: Arc::default(),
    };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).map(|stream| {
        stream.map(|stream| {
            let accepted_at = boottime_ticks();
            // Pinned before anything is read: the kernel's record, not what it will say.
            let peer = Peer::of(&stream, accepted_at).map_err(|err| err.to_string());
            Pinned {
                stream,
                peer: PeerInfo(Arc::new(peer)),
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
            return Ok(svid.clone());
        }
        match self.sign(&subject).await {
            Ok(svid) => {
                tracing::info!(agent = %subject.agent_name, spiffe_id = %svid.spiffe_id, not_after = svid.not_after, "X.509-SVID signed");
                self.svids
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(subject.agent_id.clone(), svid.clone());
                Ok(svid)
            }
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && cached.as_ref().is_some_and(|svid| now < svid.not_after) =>
            {
                tracing::warn!(agent = %subject.agent_name, %status, "renewing an X.509-SVID; serving the cached one until it expires");
                Ok(cached.expect("checked above"))
            }
            Err(status) => Err(status),
        }
    }

    fn cached(&self, agent_id: &str) -> Option<Svid> {
        self.svids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(agent_id)
            .cloned()
    }

    async fn sign(&self, subject: &Subject) -> Result<Svid, Status> {
        let control = self.control.as_ref().ok_or_else(|| {
            Status::unavailable(
                "agentd has no control plane (control_plane.url): no SVID can be signed",
            )
        })?;
        let request = svid::new_request().map_err(|err| Status::internal(err.to_string()))?;
        let (reply, answer) = oneshot::channel();
        control
            .send(ToControl::SignSvid {
                agent_id: subject.agent_id.clone(),
                csr_pem: request.csr_pem.clone(),
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("agentd's control-plane task has stopped"))?;
        let answer = tokio::time::timeout(SIGN_TIMEOUT, answer)
            .await
            .map_err(|_| Status::unavailable("the control plane did not answer in time"))?
            .map_err(|_| Status::unavailable("the control plane connection is down"))?
            .map_err(|status| {
                // The control plane's refusal (Conditional Access at issuance) is the caller's.
                Status::new(
                    if status.code() == tonic::Code::FailedPrecondition {
                        tonic::Code::PermissionDenied
                    } else {
                        status.code()
                    },
                    format!("the control plane: {}", status.message()),
                )
            })?;
        Svid::complete(&request, &answer).map_err(|err| Status::internal(err.to_string()))
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

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// Sends `make(svid)` now and again whenever the SVID changes; ends with the error once
    /// the caller's agent may no longer hold it, or when the caller goes away.
    fn watch<T: Send + 'static>(
        &self,
        peer: PeerInfo,
        first: Svid,
        make: fn(&Svid) -> T,
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
                    () = tx.closed() => return,
                }
                match this.current(&peer).await {
                    Ok(svid) if svid == last => {}
                    Ok(svid) => {
                        if tx.send(Ok(make(&svid))).await.is_err() {
                            return;
                        }
                        last = svid;
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
        caller(&request)?;
        Err(Status::unimplemented(
            "JWT-SVIDs are not served yet (docs/credentials.md, \"Not yet\")",
        ))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<api::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        caller(&request)?;
        Err(Status::unimplemented(
            "JWT bundles are not served yet (docs/credentials.md, \"Not yet\")",
        ))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<api::ValidateJwtsvidRequest>,
    ) -> Result<Response<api::ValidateJwtsvidResponse>, Status> {
        caller(&request)?;
        Err(Status::unimplemented(
            "JWT-SVIDs are not validated yet (docs/credentials.md, \"Not yet\")",
        ))
    }
}
