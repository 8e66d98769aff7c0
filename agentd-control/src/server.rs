//! The gRPC server: every service on one listener, optional TLS with client certificates, and
//! the periodic governance sweep.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    activity::TrackCalls,
    api::{ControlPlane, DecisionOptions},
    authorities::CaRing,
    clock::Clock,
    credentials::CredentialOptions,
    error::{Error, Result},
    jwt::KeyRing,
    listener::{BoundedIncoming, ConnectionLimits},
    oidc,
    proto::{
        access_service_server::AccessServiceServer, audit_service_server::AuditServiceServer,
        auth_service_server::AuthServiceServer, credential_service_server::CredentialServiceServer,
        governance_service_server::GovernanceServiceServer, host_service_server::HostServiceServer,
        policy_service_server::PolicyServiceServer, registry_service_server::RegistryServiceServer,
        risk_service_server::RiskServiceServer,
    },
    store::Store,
    throttle::ThrottleOptions,
    tls::{ServerTls, tls_incoming},
};

#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Serve TLS with a certificate for these names (DNS names or IP addresses), issued by the
    /// control-plane CA that signs (again whenever another CA takes over), and verify client
    /// certificates against every trusted CA. `None`: plaintext (loopback and tests only).
    pub tls_names: Option<Vec<String>>,
    /// Run the governance sweep this often; `None`: only on `RunSweep`.
    pub sweep_interval: Option<Duration>,
    /// Risk window and the decision watches' polling.
    pub decisions: DecisionOptions,
    /// Connection cap, handshake deadline and keepalive.
    pub connections: ConnectionLimits,
    /// The throttle on failed authentication and enrolment.
    pub auth_throttle: ThrottleOptions,
    /// How long shutdown waits for in-flight calls once every watch has ended; `None`: the
    /// default, [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Option<Duration>,
    /// The trust domain and SVID lifetimes of agents' credentials.
    pub credentials: CredentialOptions,
    /// How often the JWT keys and the CAs are loaded again from the database, so that a
    /// rotation made through another replica (or a CA's activation) reaches this one; `None`:
    /// [`DEFAULT_CREDENTIAL_RELOAD`].
    pub credential_reload: Option<Duration>,
}

/// How often a replica loads the JWT keys and CAs again by default.
pub const DEFAULT_CREDENTIAL_RELOAD: Duration = Duration::from_secs(10);

/// How long shutdown waits for in-flight calls by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuring TLS: {0}")]
    Tls(String),
    #[error("serving gRPC")]
    Transport(#[source] tonic::transport::Error),
}

pub struct Server {
    control: ControlPlane,
    /// The server's TLS (also the OIDC discovery endpoint's certificate).
    tls: Option<Arc<ServerTls>>,
    sweep_interval: Option<Duration>,
    connections: ConnectionLimits,
    drain_timeout: Duration,
    credential_reload: Duration,
}

impl Server {
    /// Loads (or creates) the CA and prepares the services.
    pub async fn new(store: Store, clock: Arc<dyn Clock>, options: ServerOptions) -> Result<Self> {
        let ca = CaRing::load_or_create(&store, clock.now()).await?;
        let jwt = KeyRing::load_or_create(&store, clock.now()).await?;
        store.ensure_baseline_policy(clock.now()).await?;
        // Admins, sponsors and auditors use bearer tokens over server-side TLS; host calls are
        // refused without a client certificate (api::authorize).
        let tls = match &options.tls_names {
            None => None,
            Some(names) => Some(Arc::new(ServerTls::new(names, &ca.current(), clock.now())?)),
        };
        let mut control = ControlPlane::new(
            store,
            clock,
            Arc::new(ca),
            Arc::new(jwt),
            tls.is_some(),
            options.decisions,
        )
        .with_auth_throttle(options.auth_throttle)
        .with_credentials(options.credentials);
        if let Some(tls) = &tls {
            control = control.with_tls(Arc::clone(tls));
        }
        Ok(Self {
            control,
            tls,
            sweep_interval: options.sweep_interval,
            connections: options.connections,
            drain_timeout: options.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            credential_reload: options
                .credential_reload
                .unwrap_or(DEFAULT_CREDENTIAL_RELOAD),
        })
    }

    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// The OIDC discovery endpoint (`crate::oidc`): HTTPS with this server's certificate, for
    /// the issuer the credentials name. Refused without TLS or without an issuer.
    pub fn oidc_endpoint(&self) -> Result<(TlsAcceptor, axum::Router)> {
        let issuer = self
            .control
            .credentials()
            .jwt_issuer
            .as_deref()
            .ok_or_else(|| {
                Error::invalid(
                    "jwt issuer",
                    "the OIDC discovery endpoint needs an issuer (--jwt-issuer https://...)",
                )
            })?;
        let tls = self.tls.as_ref().ok_or_else(|| {
            Error::invalid(
                "tls names",
                "the OIDC discovery endpoint is served over HTTPS: give --tls-name",
            )
        })?;
        let acceptor = tls.https_acceptor()?;
        Ok((
            acceptor,
            oidc::router(issuer, Arc::clone(self.control.jwt_keys())),
        ))
    }

    /// Serves on `listener` until `shutdown` completes. Then it stops accepting, ends every
    /// decision watch with UNAVAILABLE (hosts reconnect), lets in-flight calls finish, and
    /// returns once every connection has closed or after the drain timeout, whichever is first.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::result::Result<(), ServeError> {
        let control = self.control;
        let sweeper = self.sweep_interval.map(|every| {
            let control = control.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    match control.run_sweep("governance").await {
                        Ok(report) if report != crate::model::SweepReport::default() => {
                            tracing::info!(?report, "governance sweep changed state");
                        }
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "governance sweep failed"),
                    }
                }
            })
        });
        let reloader = {
            let control = control.clone();
            let every = self.credential_reload;
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    if let Err(err) = control.reload_credentials().await {
                        tracing::warn!(error = %err, "reloading the JWT signing keys and CAs failed; keeping the last ones");
                    }
                }
            })
        };
        let limits = self.connections;
        let builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout));
        let incoming = BoundedIncoming::new(listener, &limits);
        let connections = incoming.connections();
        let (began, draining) = tokio::sync::oneshot::channel::<()>();
        let stopping = control.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: ending decision watches, draining calls");
            stopping.stop_watches();
            let _ = began.send(());
        };
        let router = builder
            .layer(TrackCalls::new(connections))
            .add_service(RegistryServiceServer::new(control.clone()))
            .add_service(GovernanceServiceServer::new(control.clone()))
            .add_service(AccessServiceServer::new(control.clone()))
            .add_service(AuditServiceServer::new(control.clone()))
            .add_service(HostServiceServer::new(control.clone()))
            .add_service(AuthServiceServer::new(control.clone()))
            .add_service(PolicyServiceServer::new(control.clone()))
            .add_service(RiskServiceServer::new(control.clone()))
            .add_service(CredentialServiceServer::new(control.clone()));
        let serving: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match &self.tls {
            Some(tls) => {
                let acceptor = tls
                    .grpc_acceptor()
                    .map_err(|err| ServeError::Tls(err.to_string()))?;
                Box::pin(router.serve_with_incoming_shutdown(
                    tls_incoming(incoming, acceptor, limits.handshake_timeout),
                    signal,
                ))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(incoming, signal)),
        };
        let drain_timeout = self.drain_timeout;
        let deadline = async move {
            if draining.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(drain_timeout).await;
        };
        let result = tokio::select! {
            result = serving => result.map_err(ServeError::Transport),
            () = deadline => {
                tracing::warn!(?drain_timeout, "connections still open after the drain timeout; closing them");
                Ok(())
            }
        };
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        reloader.abort();
        result
    }
}
