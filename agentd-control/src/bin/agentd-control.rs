//! `agentd-control`: the control-plane server, and the offline commands that bootstrap it.

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use agentd_control::{
    api::DecisionOptions,
    audit_export::AuditExport,
    authorities::CaRing,
    clock::{Clock as _, SystemClock},
    credentials::{self, CredentialOptions},
    listener::ConnectionLimits,
    model::Role,
    server::{Server, ServerOptions},
    store::{AuditContext, Store},
    throttle::ThrottleOptions,
};
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Exit code for bad configuration (`EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

/// The agentd control plane: the fleet's agent registry, governance, access packages, audit log
/// and host enrolment, over gRPC (package agentd.v1). Manage it with `agentctl`.
#[derive(Parser)]
#[command(name = "agentd-control", version)]
struct Cli {
    /// Database: `sqlite:///path/control.db` (default; created if missing, WAL) or
    /// `postgres://user@host/db` (several replicas may share one).
    #[arg(
        long,
        env = "AGENTD_CONTROL_DATABASE",
        default_value = "sqlite:///var/lib/agentd-control/control.db",
        global = true
    )]
    database: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Sponsor,
    Auditor,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start; `serve`'s many options make it the large one"
)]
enum Command {
    /// Serve the gRPC API until SIGINT or SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Serve TLS with a certificate for this name (DNS name or IP; repeatable), issued by
        /// the control-plane CA, and require host client certificates (mTLS). Without it the
        /// server speaks plaintext: keep it on loopback.
        #[arg(long = "tls-name", value_name = "NAME")]
        tls_names: Vec<String>,
        /// How often the governance sweep runs, e.g. 5m, 1h.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        sweep_interval: Duration,
        /// How long a host's detection counts towards its agent's risk, e.g. 30m.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        risk_window: Duration,
        /// How often each decision watch polls the database for changes made by other
        /// replicas (changes made through this replica are pushed at once).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        decision_poll: Duration,
        /// How often each decision watch re-evaluates without any change, for time windows,
        /// risk ageing and expiring grants.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        decision_recheck: Duration,
        /// Also append every audit event, as a JSON line with its chain digests, to this file
        /// (opened for appending only; `chattr +a` is tried). See docs/control-plane.md.
        #[arg(long, value_name = "PATH")]
        audit_export: Option<std::path::PathBuf>,
        /// Connections open at once; one more is accepted and closed at once, so that its
        /// client fails at once instead of hanging. Lowered to fit the open-file limit, which
        /// the server raises to its hard limit at start.
        #[arg(long, default_value_t = ConnectionLimits::default().max_connections)]
        max_connections: usize,
        /// A new connection that has not sent its first bytes (the TLS hello or the HTTP/2
        /// preface), or not completed its TLS handshake, within this time is closed.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        handshake_timeout: Duration,
        /// HTTP/2 keepalive: ping every connection this often...
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        keepalive_interval: Duration,
        /// ...and close one whose peer has not answered within this time.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        keepalive_timeout: Duration,
        /// Close a connection that carries no call for this long, whatever else it sends (a
        /// client silent after its TLS handshake, or one that only answers keepalive pings); a
        /// watching host always carries one. Must be longer than --keepalive-interval plus
        /// --keepalive-timeout.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        idle_timeout: Duration,
        /// Failed authentications (bearer or join token) from one source (IPv4 address or
        /// IPv6 /64) within --auth-failure-window after which that source is refused with
        /// status resource-exhausted for --auth-block; 0 turns the throttle off.
        #[arg(long, default_value_t = ThrottleOptions::default().max_failures)]
        auth_max_failures: u32,
        /// The window in which failed authentications from one source are counted.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        auth_failure_window: Duration,
        /// How long a source that failed too often is refused.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        auth_block: Duration,
        /// On SIGTERM, how long in-flight calls may take to finish after every decision watch
        /// has been ended (with UNAVAILABLE, on which hosts reconnect).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// The SPIFFE trust domain of agents' credentials: an agent's SPIFFE ID is
        /// `spiffe://TRUST_DOMAIN/agent/AGENT_ID` (docs/credentials.md).
        #[arg(long, default_value = credentials::DEFAULT_TRUST_DOMAIN)]
        trust_domain: credentials::TrustDomain,
        /// How long an agent's X.509-SVID is valid (2m to 7d); hosts renew at half-life.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        x509_svid_ttl: Duration,
        /// How long an agent's JWT-SVID is valid (30s to 24h).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        jwt_svid_ttl: Duration,
        /// How long a host's mTLS client certificate is valid (1m to 365d), from enrolment or
        /// its last renewal; agentd renews it at half-life over its current certificate.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        host_cert_ttl: Duration,
        /// The `iss` of agents' JWT-SVIDs and of the OIDC discovery document: an https:// URL
        /// where relying parties reach --oidc-listen, e.g. `https://cp.example:8444`.
        #[arg(long, value_name = "URL")]
        jwt_issuer: Option<String>,
        /// Serve the OIDC discovery document (/.well-known/openid-configuration) and the JWKS
        /// (/keys) over HTTPS on this address, with the --tls-name certificate, for services
        /// that verify agents' JWT-SVIDs. Needs --tls-name and --jwt-issuer.
        #[arg(long, value_name = "ADDR")]
        oidc_listen: Option<SocketAddr>,
    },
    /// Create an API token directly in the database (to bootstrap the first admin). Prints the
    /// secret once.
    CreateToken {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Who the token acts as, e.g. alice@example.com.
        #[arg(long)]
        principal: String,
    },
    /// Print the trust bundle (every control-plane CA not retired, PEM), creating the first CA
    /// if needed. Clients verify the server with it (`agentctl --ca-cert`).
    CaCert,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Err(err) = agentd_control::store::Backend::from_url(&cli.database) {
        eprintln!("error: --database: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one arm per subcommand, read top to bottom"
)]
async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(path) = cli.database.strip_prefix("sqlite://")
        && let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = Store::connect(&cli.database)
        .await
        .with_context(|| format!("opening the database {}", redact(&cli.database)))?;
    let clock = Arc::new(SystemClock);
    match cli.command {
        Command::Serve {
            listen,
            tls_names,
            sweep_interval,
            risk_window,
            decision_poll,
            decision_recheck,
            audit_export,
            max_connections,
            handshake_timeout,
            keepalive_interval,
            keepalive_timeout,
            idle_timeout,
            auth_max_failures,
            auth_failure_window,
            auth_block,
            drain_timeout,
            trust_domain,
            x509_svid_ttl,
            jwt_svid_ttl,
            host_cert_ttl,
            jwt_issuer,
            oidc_listen,
        } => {
            let jwt_svid_ttl = seconds_within(
                "--jwt-svid-ttl",
                jwt_svid_ttl,
                credentials::JWT_SVID_TTL_RANGE,
            )?;
            if let Some(issuer) = &jwt_issuer {
                credentials::check_issuer(issuer)
                    .map_err(|reason| anyhow::anyhow!("--jwt-issuer: {reason}"))?;
            }
            let x509_svid_ttl = seconds_within(
                "--x509-svid-ttl",
                x509_svid_ttl,
                credentials::X509_SVID_TTL_RANGE,
            )?;
            let host_cert_ttl = seconds_within(
                "--host-cert-ttl",
                host_cert_ttl,
                credentials::HOST_CERT_TTL_RANGE,
            )?;
            let connections = ConnectionLimits {
                max_connections,
                handshake_timeout,
                keepalive_interval,
                keepalive_timeout,
                idle_timeout,
            };
            connections
                .check()
                .map_err(|reason| anyhow::anyhow!("--idle-timeout: {reason}"))?;
            if let Some(path) = audit_export {
                let export = AuditExport::open(&path)?;
                tokio::spawn(export.run(store.clone(), Duration::from_secs(1)));
            }
            let max_connections = fit_open_file_limit(connections.max_connections);
            let options = ServerOptions {
                tls_names: (!tls_names.is_empty()).then_some(tls_names),
                sweep_interval: Some(sweep_interval),
                decisions: DecisionOptions {
                    risk_window_seconds: i64::try_from(risk_window.as_secs()).unwrap_or(i64::MAX),
                    poll_interval: decision_poll,
                    recheck_interval: decision_recheck,
                },
                connections: ConnectionLimits {
                    max_connections,
                    ..connections
                },
                auth_throttle: ThrottleOptions {
                    max_failures: auth_max_failures,
                    window: auth_failure_window,
                    block: auth_block,
                    ..ThrottleOptions::default()
                },
                drain_timeout: Some(drain_timeout),
                credentials: CredentialOptions {
                    trust_domain,
                    x509_svid_ttl,
                    jwt_svid_ttl,
                    jwt_issuer,
                    host_cert_ttl,
                },
                credential_reload: None,
            };
            let server = Server::new(store.clone(), clock, options).await?;
            if let Some(address) = oidc_listen {
                let (acceptor, router) = server.oidc_endpoint().context("--oidc-listen")?;
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding {address} (--oidc-listen)"))?;
                tracing::info!(address = %listener.local_addr()?, "serving OIDC discovery");
                tokio::spawn(agentd_control::oidc::serve(
                    listener,
                    acceptor,
                    router,
                    std::future::pending(),
                ));
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(address = %listener.local_addr()?, database = %redact(&cli.database), "serving agentd.v1");
            // Under systemd (Type=notify): migrated, bound, about to serve.
            if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
                tracing::warn!(%err, "telling systemd that agentd-control is ready");
            }
            server.serve(listener, shutdown_signal()).await?;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            // A call still running after the drain timeout may hold a database connection;
            // closing the pool waits for it, so only so long.
            if tokio::time::timeout(Duration::from_secs(2), store.close())
                .await
                .is_err()
            {
                tracing::warn!("database connections still busy; exiting without them");
            }
            tracing::info!("stopped");
        }
        Command::CreateToken {
            name,
            role,
            principal,
        } => {
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Sponsor => Role::Sponsor,
                RoleArg::Auditor => Role::Auditor,
            };
            // Who ran the command, as the audit log's actor.
            let user = ["SUDO_USER", "USER", "LOGNAME"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
                .unwrap_or_else(|| "local operator".to_owned());
            let audit = AuditContext {
                actor: format!("{user} (agentd-control create-token)"),
                action: "CreateApiToken",
                now: clock.now(),
            };
            let (token, secret) = store
                .create_api_token(&audit, &name, role, &principal)
                .await?;
            eprintln!("created {role} token {} for {principal}", token.id);
            println!("{secret}");
        }
        Command::CaCert => {
            let ca = CaRing::load_or_create(&store, clock.now()).await?;
            print!("{}", ca.current().bundle_pem());
        }
    }
    Ok(())
}

/// The URL without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{user}@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// File descriptors kept for everything but client connections: the listener, the database
/// pool, log output, the CA and the database files.
const RESERVED_FILES: u64 = 64;

/// Raises the soft open-file limit to the hard one, and returns `max_connections` lowered, with
/// a warning, to what that limit leaves room for.
fn fit_open_file_limit(max_connections: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "reading RLIMIT_NOFILE");
        return max_connections;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "raising RLIMIT_NOFILE");
        }
    }
    let room =
        usize::try_from(limit.rlim_cur.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX);
    tracing::info!(open_files = limit.rlim_cur, "open-file limit");
    if max_connections > room {
        tracing::warn!(
            max_connections,
            open_files = limit.rlim_cur,
            "lowering --max-connections to {room} to fit the open-file limit (raise LimitNOFILE)"
        );
        return room;
    }
    max_connections
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// A lifetime flag in whole seconds, refused unless it lies within `range`.
fn seconds_within(
    flag: &str,
    value: Duration,
    range: std::ops::RangeInclusive<i64>,
) -> anyhow::Result<i64> {
    let seconds = i64::try_from(value.as_secs()).unwrap_or(i64::MAX);
    if !range.contains(&seconds) {
        anyhow::bail!(
            "{flag}: {seconds}s is outside {}s..={}s",
            range.start(),
            range.end()
        );
    }
    Ok(seconds)
}
