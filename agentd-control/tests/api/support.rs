//! The fixture: a control plane on 127.0.0.1:0 over a fresh database (an SQLite file in a
//! temporary directory, or a new PostgreSQL database), a manual clock, and clients.

use std::{sync::Arc, time::Duration};

use agentd_control::{
    api::DecisionOptions,
    ca::CertificateAuthority,
    clock::{Clock as _, ManualClock},
    model::Role,
    proto::{
        self, access_service_client::AccessServiceClient, audit_service_client::AuditServiceClient,
        auth_service_client::AuthServiceClient, credential_service_client::CredentialServiceClient,
        governance_service_client::GovernanceServiceClient, host_service_client::HostServiceClient,
        policy_service_client::PolicyServiceClient, registry_service_client::RegistryServiceClient,
        risk_service_client::RiskServiceClient,
    },
    server::{Server, ServerOptions},
    store::{AuditContext, Store},
    throttle::ThrottleOptions,
};
use sqlx::Connection as _;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// Where a test's database lives.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    /// The admin URL of the shared test server, and a function from database name to URL.
    Postgres {
        admin_url: String,
        base: String,
    },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }
}

/// A fresh database for one test; the directory lives as long as the value.
pub struct Database {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Database {
    pub async fn create(backend: &Backend) -> Database {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("control.db").display());
                Database {
                    url,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres { admin_url, base } => {
                sqlx::any::install_default_drivers();
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::AnyConnection::connect(admin_url)
                    .await
                    .expect("connecting to the test postgres");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("CREATE DATABASE");
                admin.close().await.expect("closing");
                Database {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
        }
    }

    /// A raw connection for tests that tamper with the database behind the server's back.
    pub async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("raw connection")
    }
}

#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

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

pub type Authed = InterceptedService<Channel, Bearer>;

/// Clients of every service, all with one token.
#[derive(Clone)]
pub struct Clients {
    channel: Channel,
    bearer: Bearer,
}

impl Clients {
    pub fn new(channel: Channel, token: Option<&str>) -> Self {
        Self {
            channel,
            bearer: Bearer(token.map(|t| format!("Bearer {t}").parse().expect("ascii token"))),
        }
    }
    pub fn registry(&self) -> RegistryServiceClient<Authed> {
        RegistryServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn governance(&self) -> GovernanceServiceClient<Authed> {
        GovernanceServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn access(&self) -> AccessServiceClient<Authed> {
        AccessServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn audit(&self) -> AuditServiceClient<Authed> {
        AuditServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn host(&self) -> HostServiceClient<Authed> {
        HostServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn auth(&self) -> AuthServiceClient<Authed> {
        AuthServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn policy(&self) -> PolicyServiceClient<Authed> {
        PolicyServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn risk(&self) -> RiskServiceClient<Authed> {
        RiskServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    pub fn credential(&self) -> CredentialServiceClient<Authed> {
        CredentialServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

pub const DAY: i64 = 86_400;

/// The manual clock starts at the real time, because TLS checks certificate validity against
/// the system clock.
pub fn real_now() -> i64 {
    agentd_control::clock::SystemClock.now()
}

pub struct Fixture {
    pub db: Database,
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub port: u16,
    pub tls_ca_pem: Option<String>,
    pub admin_token: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Fixture {
    pub async fn start(backend: &Backend) -> Fixture {
        Self::start_with(backend, false).await
    }

    /// With `tls`, the server has a certificate for `localhost` and requires host client
    /// certificates.
    pub async fn start_with(backend: &Backend, tls: bool) -> Fixture {
        Self::start_with_options(backend, tls, |_| {}).await
    }

    /// Over an existing database (e.g. one at an older schema, which the store upgrades).
    pub async fn start_on(db: Database, tls: bool) -> Fixture {
        Self::start_on_with_options(db, tls, |_| {}).await
    }

    /// The fixture's options changed by `adjust` (connection limits, throttle).
    pub async fn start_with_options(
        backend: &Backend,
        tls: bool,
        adjust: impl FnOnce(&mut ServerOptions),
    ) -> Fixture {
        Self::start_on_with_options(Database::create(backend).await, tls, adjust).await
    }

    /// Over an existing database, with the options changed by `adjust`.
    pub async fn start_on_with_options(
        db: Database,
        tls: bool,
        adjust: impl FnOnce(&mut ServerOptions),
    ) -> Fixture {
        let store = Store::connect(&db.url).await.expect("connecting the store");
        let clock = Arc::new(ManualClock::new(real_now()));
        let mut options = ServerOptions {
            tls_names: tls.then(|| vec!["localhost".to_owned()]),
            sweep_interval: None,
            // Re-evaluate every second, so that tests of time-driven changes (grants expiring)
            // wait at most that long.
            decisions: DecisionOptions {
                recheck_interval: Duration::from_secs(1),
                ..DecisionOptions::default()
            },
            // Tests of refused tokens make many failed calls from 127.0.0.1; the throttle has
            // its own test (connections::failed_authentications_from_one_source_are_throttled).
            auth_throttle: ThrottleOptions {
                max_failures: 0,
                ..ThrottleOptions::default()
            },
            ..ServerOptions::default()
        };
        adjust(&mut options);
        let server = Server::new(store.clone(), clock.clone(), options)
            .await
            .expect("server");
        let tls_ca_pem = tls.then(|| server.control().ca().bundle_pem().to_owned());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stop.await;
                })
                .await
                .expect("serving");
        });
        let (_, admin_token) = store
            .create_api_token(
                &AuditContext {
                    actor: "test".into(),
                    action: "CreateApiToken",
                    now: clock.now(),
                },
                "admin",
                Role::Admin,
                "root@example.com",
            )
            .await
            .expect("admin token");
        Fixture {
            db,
            store,
            clock,
            port,
            tls_ca_pem,
            admin_token,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn clock_now(&self) -> i64 {
        self.clock.now()
    }

    /// A second server (a replica) over the same database, with the same clock.
    pub async fn replica_of(primary: &Fixture) -> Fixture {
        let store = Store::connect(&primary.db.url)
            .await
            .expect("connecting the replica");
        let server = Server::new(
            store.clone(),
            primary.clock.clone(),
            ServerOptions {
                // A JWT key or CA rotated through the primary reaches the replica quickly.
                credential_reload: Some(Duration::from_millis(200)),
                ..ServerOptions::default()
            },
        )
        .await
        .expect("replica");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stop.await;
                })
                .await
                .expect("serving");
        });
        Fixture {
            db: Database {
                url: primary.db.url.clone(),
                _dir: None,
            },
            store,
            clock: primary.clock.clone(),
            port,
            tls_ca_pem: None,
            admin_token: primary.admin_token.clone(),
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        self.channel_with(None).await.expect("connecting")
    }

    /// A channel; over TLS when the fixture has TLS, presenting `identity` if given.
    pub async fn channel_with(
        &self,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = if let Some(ca) = &self.tls_ca_pem {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost");
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
                .expect("url")
                .tls_config(tls)?
        } else {
            Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port)).expect("url")
        };
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }

    pub async fn as_token(&self, token: &str) -> Clients {
        Clients::new(self.channel().await, Some(token))
    }

    /// The CAs' trust bundle (PEM), as the database holds it now.
    pub async fn server_ca_bundle(&self) -> String {
        agentd_control::authorities::CaRing::load_or_create(&self.store, real_now())
            .await
            .expect("the CAs")
            .current()
            .bundle_pem()
            .to_owned()
    }

    pub async fn admin(&self) -> Clients {
        self.as_token(&self.admin_token).await
    }

    pub async fn anonymous(&self) -> Clients {
        Clients::new(self.channel().await, None)
    }

    /// A token of `role` for `principal`, created through the API.
    pub async fn token(&self, role: proto::Role, principal: &str) -> String {
        self.admin()
            .await
            .auth()
            .create_api_token(proto::CreateApiTokenRequest {
                name: format!("{principal} token"),
                role: role.into(),
                principal: principal.into(),
            })
            .await
            .expect("CreateApiToken")
            .into_inner()
            .token
    }

    /// Triggers the server's shutdown future; `true` if the server finished within `within`.
    pub async fn shut_down_within(&mut self, within: Duration) -> bool {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(within, task).await.is_ok(),
            None => true,
        }
    }

    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.store.close().await;
    }
}

/// A blueprint named `name` with nothing special.
pub fn blueprint(name: &str) -> proto::Blueprint {
    proto::Blueprint {
        name: name.into(),
        ..Default::default()
    }
}

pub async fn create_blueprint(clients: &Clients, blueprint: proto::Blueprint) -> proto::Blueprint {
    clients
        .registry()
        .create_blueprint(proto::CreateBlueprintRequest {
            blueprint: Some(blueprint),
        })
        .await
        .expect("CreateBlueprint")
        .into_inner()
        .blueprint
        .expect("blueprint")
}

pub fn agent_request(name: &str, blueprint: &str, sponsors: &[&str]) -> proto::CreateAgentRequest {
    proto::CreateAgentRequest {
        name: name.into(),
        blueprint: blueprint.into(),
        sponsors: sponsors.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

pub async fn create_agent(clients: &Clients, request: proto::CreateAgentRequest) -> proto::Agent {
    clients
        .registry()
        .create_agent(request)
        .await
        .expect("CreateAgent")
        .into_inner()
        .agent
        .expect("agent")
}

pub async fn get_agent(clients: &Clients, id: &str) -> proto::Agent {
    clients
        .registry()
        .get_agent(proto::GetAgentRequest { id: id.into() })
        .await
        .expect("GetAgent")
        .into_inner()
        .agent
        .expect("agent")
}

/// Enrols a host with a fresh join token; returns (host id, host token).
pub async fn enroll(fixture: &Fixture, hostname: &str, csr_pem: &str) -> proto::EnrollHostResponse {
    let admin = fixture.admin().await;
    let join = admin
        .host()
        .create_join_token(proto::CreateJoinTokenRequest {
            ttl_seconds: 600,
            description: format!("for {hostname}"),
            ..Default::default()
        })
        .await
        .expect("CreateJoinToken")
        .into_inner();
    admin
        .host()
        .enroll_host(proto::EnrollHostRequest {
            join_token: join.token,
            hostname: hostname.into(),
            csr_pem: csr_pem.into(),
            agentd_version: "test".into(),
        })
        .await
        .expect("EnrollHost")
        .into_inner()
}

/// A CSR for a fresh key: (CSR PEM, key PEM).
pub fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (csr, key.serialize_pem())
}

/// The audit events on one target, as `ListAuditEvents` returns them.
/// Reports `agent_id` running on the host whose clients are `host` (`ReportAgents`).
pub async fn report_running(host: &Clients, agent_id: &str) {
    host.host()
        .report_agents(proto::ReportAgentsRequest {
            agent_ids: vec![agent_id.to_owned()],
        })
        .await
        .expect("ReportAgents");
}

pub async fn audit_events(
    admin: &Clients,
    target_type: &str,
    target_id: &str,
) -> Vec<proto::AuditEvent> {
    admin
        .audit()
        .list_audit_events(proto::ListAuditEventsRequest {
            target_type: target_type.into(),
            target_id: target_id.into(),
            ..Default::default()
        })
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events
}

/// Asserts that `result` failed with `code` and that the message mentions `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?} mentioning {needle:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "expected {code:?} mentioning {needle:?}, got {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "expected the message to mention {needle:?}: {:?}",
                status.message()
            );
        }
    }
}

/// A new CA unrelated to the control plane's.
pub fn foreign_ca() -> CertificateAuthority {
    CertificateAuthority::generate(real_now())
        .expect("foreign CA")
        .0
}

/// Starts the `agentd-control` binary on 127.0.0.1:0; returns the child and its port (read from
/// its start-up log line).
pub fn spawn_server(bin: &str, database_url: &str) -> (std::process::Child, u16) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(bin)
        .args([
            "--database",
            database_url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sweep-interval",
            "1h",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting agentd-control");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("agentd-control exited before serving")
            .expect("reading its log");
        if let Some(rest) = line.split("address=").nth(1) {
            let address = rest.split_whitespace().next().expect("address");
            break address
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .expect("a port");
        }
    };
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, port)
}
