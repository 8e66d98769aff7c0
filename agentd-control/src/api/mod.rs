//! The gRPC services. Only this module knows protobuf: requests are validated into domain types
//! here (every error names its field), and domain types are converted back for responses.

mod access;
mod audit;
mod auth;
mod authorities;
mod batch;
mod credential;
mod decision;
mod governance;
mod host;
mod limits;
mod policy;
mod refusals;
mod registry;
mod risk;
mod signing_keys;
mod validate;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use prost_types::Timestamp;
use tonic::{Request, Status};

use crate::{
    auth::Method,
    authorities::{Authorities, CaRing},
    clock::{Clock, UnixTime},
    credentials::CredentialOptions,
    error::Error,
    jwt::KeyRing,
    model::Role,
    proto,
    store::{AuditContext, Store, auth::Caller},
    throttle::{AuthThrottle, ThrottleOptions},
    tls::ServerTls,
};

/// How decisions are distributed: see docs/conditional-access.md, "Distribution".
#[derive(Clone, Copy, Debug)]
pub struct DecisionOptions {
    /// Detections count towards an agent's risk for this many seconds.
    pub risk_window_seconds: i64,
    /// How often each watch checks for changes this replica was not told about (other
    /// replicas' writes): a cheap query of the change marker.
    pub poll_interval: Duration,
    /// How often each watch re-evaluates even without any change, for what time alone changes
    /// (time windows, risk leaving the window, access packages expiring).
    pub recheck_interval: Duration,
}

impl Default for DecisionOptions {
    fn default() -> Self {
        Self {
            risk_window_seconds: crate::risk::DEFAULT_RISK_WINDOW_SECONDS,
            poll_interval: Duration::from_secs(1),
            recheck_interval: Duration::from_secs(10),
        }
    }
}

/// The state every service shares: storage, the clock and the CA.
#[derive(Clone)]
pub struct ControlPlane {
    store: Store,
    clock: Arc<dyn Clock>,
    /// The CAs: which signs, which are trusted (`crate::authorities`).
    ca: Arc<CaRing>,
    /// The server's TLS, which follows the CAs (`crate::tls`); `None` in plaintext.
    tls: Option<Arc<ServerTls>>,
    /// Set when the server runs TLS: host-role calls must then also present the host's client
    /// certificate (mTLS), issued by the control-plane CA for the same host id.
    require_host_certificates: bool,
    /// Bumped after every change decisions may depend on; every decision watch of this
    /// replica subscribes.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    decision_options: DecisionOptions,
    /// The decision inputs last loaded, shared by every watch that re-evaluates after the same
    /// change (see `ControlPlane::decision_inputs`).
    inputs: Arc<crate::decisions::InputsCache<decision::SharedSet>>,
    /// Decision versions waiting to be settled, in one transaction per batch.
    settles: Arc<std::sync::Mutex<batch::Queue<decision::Settle, (i64, i64)>>>,
    /// Acknowledgements waiting to be recorded, in one transaction per batch.
    acks: Arc<std::sync::Mutex<batch::Queue<host::Ack, ()>>>,
    /// Failed authentications per source (see `crate::throttle`).
    throttle: Arc<AuthThrottle>,
    /// Set when the server shuts down: every decision watch ends with UNAVAILABLE.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// The trust domain and SVID lifetimes (`crate::credentials`).
    credentials: Arc<CredentialOptions>,
    /// The keys that sign JWT-SVIDs (`crate::jwt`).
    jwt: Arc<KeyRing>,
    /// How many refused signings each host gets audited (`refusals`).
    refusals: Arc<refusals::RefusalBudget>,
}

impl ControlPlane {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        ca: Arc<CaRing>,
        jwt: Arc<KeyRing>,
        require_host_certificates: bool,
        decision_options: DecisionOptions,
    ) -> Self {
        Self {
            store,
            clock,
            ca,
            tls: None,
            jwt,
            require_host_certificates,
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            decision_options,
            inputs: Arc::default(),
            settles: Arc::default(),
            acks: Arc::default(),
            throttle: Arc::new(AuthThrottle::new(ThrottleOptions::default())),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            credentials: Arc::default(),
            refusals: Arc::default(),
        }
    }

    /// The trust domain, SVID lifetimes and JWT issuer.
    #[must_use]
    pub fn credentials(&self) -> &CredentialOptions {
        &self.credentials
    }

    /// The JWT keys this replica publishes and signs with, reloaded from the database.
    #[must_use]
    pub fn jwt_keys(&self) -> &Arc<KeyRing> {
        &self.jwt
    }

    /// Loads the JWT keys and the CAs again, and lets the server's TLS follow the CAs (a new
    /// server certificate when another CA signs, the trusted CAs for client certificates).
    /// `Server::serve` does it every `credential_reload`; rotations and retirements at once.
    pub async fn reload_credentials(&self) -> crate::error::Result<()> {
        self.jwt.reload(&self.store).await?;
        let authorities = self.ca.reload(&self.store).await?;
        if let Some(tls) = &self.tls
            && tls.follow(&authorities, self.now())?
        {
            tracing::info!(
                signer = authorities.signer_id(self.now()),
                trusted = authorities.certificates().count(),
                "the server's TLS follows the certificate authorities"
            );
        }
        Ok(())
    }

    /// The same, serving TLS with `tls`.
    #[must_use]
    pub fn with_tls(mut self, tls: Arc<ServerTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The same, with this trust domain and these SVID lifetimes.
    #[must_use]
    pub fn with_credentials(mut self, options: CredentialOptions) -> Self {
        self.credentials = Arc::new(options);
        self
    }

    /// The same, with this throttle on failed authentication.
    #[must_use]
    pub fn with_auth_throttle(mut self, options: ThrottleOptions) -> Self {
        self.throttle = Arc::new(AuthThrottle::new(options));
        self
    }

    /// Ends every decision watch of this replica, and refuses new ones, with UNAVAILABLE, on
    /// which hosts reconnect (to another replica where there is one). Called when the server
    /// begins to shut down.
    pub fn stop_watches(&self) {
        self.stopping.send_replace(true);
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Refuses the call when its source is blocked for failed authentications.
    fn check_throttle(&self, peer: Option<SocketAddr>) -> Result<(), Status> {
        let Some(peer) = peer else {
            return Ok(());
        };
        self.throttle
            .check(peer.ip().into(), Instant::now())
            .map_err(|remaining| {
                Status::resource_exhausted(format!(
                    "too many failed authentications from {}; retry in {}s",
                    peer.ip(),
                    remaining.as_secs().max(1)
                ))
            })
    }

    /// Counts `status` against the call's source if it is a failed authentication.
    fn count_failure(&self, peer: Option<SocketAddr>, status: &Status) {
        if status.code() != tonic::Code::Unauthenticated {
            return;
        }
        if let Some(peer) = peer
            && self
                .throttle
                .record_failure(peer.ip().into(), Instant::now())
        {
            tracing::warn!(source = %peer.ip(), "blocking a source after repeated failed authentications");
        }
    }

    /// Wakes this replica's decision watches (other replicas notice through polling).
    pub fn decisions_changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The CAs as this replica last loaded them.
    #[must_use]
    pub fn ca(&self) -> Arc<Authorities> {
        self.ca.current()
    }

    /// The server's TLS, when it serves TLS.
    #[must_use]
    pub fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.tls.as_ref()
    }

    /// Authenticates the bearer token and checks the role against `method`'s row of the RBAC
    /// matrix.
    /// Sources that fail too often are throttled (`crate::throttle`).
    async fn authorize<T>(&self, request: &Request<T>, method: Method) -> Result<Caller, Status> {
        self.check_throttle(request.remote_addr())?;
        let result = self.authorize_unthrottled(request, method).await;
        if let Err(status) = &result {
            self.count_failure(request.remote_addr(), status);
        }
        result
    }

    async fn authorize_unthrottled<T>(
        &self,
        request: &Request<T>,
        method: Method,
    ) -> Result<Caller, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
            })?;
        let caller = self.store.authenticate(token.trim()).await?;
        if !method.allows(caller.role) {
            return Err(Status::permission_denied(format!(
                "role {} may not call {}",
                caller.role,
                method.path()
            )));
        }
        if caller.role == Role::Host && self.require_host_certificates {
            check_host_certificate(request, &caller.principal)?;
        }
        Ok(caller)
    }

    fn audit(&self, caller: &Caller, method: Method) -> AuditContext {
        AuditContext {
            actor: caller.actor(),
            action: method.name(),
            now: self.clock.now(),
        }
    }

    fn now(&self) -> UnixTime {
        self.clock.now()
    }
}

/// The verified client certificate (rustls checked its chain to our CA and its validity
/// period during the handshake) must name the host the token belongs to.
fn check_host_certificate<T>(request: &Request<T>, host_id: &str) -> Result<(), Status> {
    let certs = request.peer_certs().unwrap_or_default();
    let Some(leaf) = certs.first() else {
        return Err(Status::unauthenticated(
            "host calls need the host's client certificate (mTLS); none was presented",
        ));
    };
    match crate::ca::host_id_of(leaf) {
        Some(cn) if cn == host_id => Ok(()),
        Some(cn) => Err(Status::permission_denied(format!(
            "the client certificate is for host {cn}, the token for host {host_id}"
        ))),
        None => Err(Status::unauthenticated(
            "the client certificate names no host",
        )),
    }
}

/// Sponsor-role callers act only on agents they sponsor or own; admins on every agent.
fn ensure_answers_for(caller: &Caller, agent: &crate::model::Agent) -> Result<(), Status> {
    if caller.role == Role::Admin || agent.answers_to(&caller.principal) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{} is neither a sponsor nor an owner of agent {}",
        caller.principal, agent.id
    )))
}

fn timestamp(at: UnixTime) -> Timestamp {
    Timestamp {
        seconds: at,
        nanos: 0,
    }
}

fn optional_timestamp(at: Option<UnixTime>) -> Option<Timestamp> {
    at.map(timestamp)
}

fn role_to_proto(role: Role) -> proto::Role {
    match role {
        Role::Admin => proto::Role::Admin,
        Role::Sponsor => proto::Role::Sponsor,
        Role::Auditor => proto::Role::Auditor,
        Role::Host => proto::Role::Host,
    }
}

/// `Err` for a message field that must be set.
fn required<T>(field: &str, value: Option<T>) -> Result<T, Error> {
    value.ok_or_else(|| Error::invalid(field, "is required"))
}
