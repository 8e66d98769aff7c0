//! The connection to the control plane: TLS and mTLS, the bearer token, one client per service.

use std::path::PathBuf;

use agentd_control::proto::{
    access_service_client::AccessServiceClient, audit_service_client::AuditServiceClient,
    auth_service_client::AuthServiceClient, credential_service_client::CredentialServiceClient,
    governance_service_client::GovernanceServiceClient, host_service_client::HostServiceClient,
    policy_service_client::PolicyServiceClient, registry_service_client::RegistryServiceClient,
    risk_service_client::RiskServiceClient,
};
use anyhow::Context as _;
use clap::Args;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

#[derive(Args)]
pub(crate) struct Connection {
    /// Control-plane URL: http://host:port, or https://host:port for TLS.
    #[arg(
        long,
        env = "AGENTD_SERVER",
        default_value = "http://127.0.0.1:7443",
        global = true
    )]
    pub(crate) server: String,
    /// API token (sent as `authorization: Bearer <token>`).
    #[arg(long, env = "AGENTD_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// For https: the control-plane trust bundle (PEM: one or more CA certificates) to verify
    /// the server with (`agentd-control ca-cert` or `agentctl ca bundle` prints it).
    #[arg(long, env = "AGENTD_CA_CERT", global = true)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// For https: the host's client certificate (PEM), for host commands (mTLS).
    #[arg(
        long,
        env = "AGENTD_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "AGENTD_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<PathBuf>,
    /// For https: the server name to verify, if not the URL's host.
    #[arg(long, global = true)]
    pub(crate) tls_server_name: Option<String>,
}

#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(crate) type Authed = InterceptedService<Channel, Bearer>;

pub(crate) struct Clients {
    pub(crate) channel: Channel,
    pub(crate) bearer: Bearer,
}

impl Clients {
    pub(crate) async fn connect(connection: &Connection) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(connection.server.clone())
            .with_context(|| format!("--server {:?} is not a URL", connection.server))?;
        if connection.server.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(path) = &connection.ca_cert {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading --ca-cert {}", path.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&connection.client_cert, &connection.client_key) {
                let cert = std::fs::read(cert)
                    .with_context(|| format!("reading --client-cert {}", cert.display()))?;
                let key = std::fs::read(key)
                    .with_context(|| format!("reading --client-key {}", key.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &connection.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", connection.server))?;
        let bearer = Bearer(
            connection
                .token
                .as_ref()
                .map(|token| format!("Bearer {token}").parse())
                .transpose()
                .context("the token contains characters that cannot be sent")?,
        );
        Ok(Self { channel, bearer })
    }

    pub(crate) fn registry(&self) -> RegistryServiceClient<Authed> {
        RegistryServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub(crate) fn governance(&self) -> GovernanceServiceClient<Authed> {
        GovernanceServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub(crate) fn access(&self) -> AccessServiceClient<Authed> {
        AccessServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub(crate) fn audit(&self) -> AuditServiceClient<Authed> {
        AuditServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub(crate) fn host(&self) -> HostServiceClient<Authed> {
        HostServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub(crate) fn auth(&self) -> AuthServiceClient<Authed> {
        AuthServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub(crate) fn policy(&self) -> PolicyServiceClient<Authed> {
        PolicyServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub(crate) fn risk(&self) -> RiskServiceClient<Authed> {
        RiskServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub(crate) fn credential(&self) -> CredentialServiceClient<Authed> {
        CredentialServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

/// Awaits one RPC and returns its message. A refusal stays a [`Status`] inside the error, so
/// that `main` prints its code and message.
pub(crate) async fn call<T>(
    rpc: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> anyhow::Result<T> {
    Ok(rpc.await?.into_inner())
}
