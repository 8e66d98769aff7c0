//! agentd's connection to the control plane: enrolment with a join token, then a watch of the
//! host's Conditional Access decisions that resumes from the last version applied,
//! acknowledgements, heartbeats and detection reports. It runs as one task; the daemon owns the
//! kernel and talks to it through two channels.
//!
//! At enrolment agentd sends a certificate request and keeps the client certificate the control
//! plane's CA signs, with its key and the CA certificate, in its credentials (mode 0600). With an
//! `https://` URL every host call presents that certificate (mTLS) and verifies the server
//! against that CA; the control plane maps the certificate to the host and refuses host calls
//! without it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use agentd_proto::v1::{self as proto, host_service_client::HostServiceClient};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{conditional::DecisionSet, config::ControlPlaneConfig};

/// What the task tells the daemon.
#[derive(Debug)]
pub enum FromControl {
    /// A new, validated decision set to apply (and then acknowledge).
    Decisions(DecisionSet),
    /// The control plane answered: the decisions in force are current.
    Confirmed,
    /// The connection is down, and why; the task keeps retrying.
    Disconnected(String),
    /// A decision set arrived that the host cannot use; the last good one stays.
    Refused(String),
}

/// What the daemon asks of the task.
#[derive(Debug)]
pub enum ToControl {
    /// The decision version now in force on this host.
    Ack(u64),
    /// Detections to report.
    Detections(Vec<Detected>),
    /// The registered agents (control-plane ids) with processes on this host now.
    Agents(Vec<String>),
    /// A credential call for the Workload API; the answer, or why not, goes to its asker.
    /// Never kept for another connection: the asker retries.
    Credential(CredentialCall),
}

/// Where a credential call's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, tonic::Status>>;

/// The credential calls (`spiffe::server`).
#[derive(Debug)]
pub enum CredentialCall {
    /// An agent's X.509-SVID for a CSR (`SignAgentSvid`).
    Svid {
        agent_id: String,
        csr_pem: String,
        reply: Reply<proto::SignAgentSvidResponse>,
    },
    /// An agent's JWT-SVID for audiences (`SignAgentJwt`).
    Jwt {
        agent_id: String,
        audience: Vec<String>,
        reply: Reply<proto::SignAgentJwtResponse>,
    },
    /// The keys that verify JWT-SVIDs (`GetJwtBundle`).
    JwtBundle {
        reply: Reply<proto::GetJwtBundleResponse>,
    },
}

/// Answers one credential call; a status that says the connection is lost ends it.
async fn answer(
    client: &mut HostServiceClient<Channel>,
    token: &MetadataValue<tonic::metadata::Ascii>,
    request: CredentialCall,
) -> Result<(), ControlError> {
    fn reply<T>(
        name: &'static str,
        result: Result<tonic::Response<T>, tonic::Status>,
        reply: Reply<T>,
    ) -> Result<(), ControlError> {
        let result = result.map(tonic::Response::into_inner);
        let lost = result
            .as_ref()
            .err()
            .filter(|status| worth_retrying(status))
            .cloned();
        let _ = reply.send(result);
        lost.map_or(Ok(()), |status| Err(call(name)(status)))
    }
    match request {
        CredentialCall::Svid {
            agent_id,
            csr_pem,
            reply: to,
        } => {
            let request = authed(proto::SignAgentSvidRequest { agent_id, csr_pem }, token);
            reply("SignAgentSvid", client.sign_agent_svid(request).await, to)
        }
        CredentialCall::Jwt {
            agent_id,
            audience,
            reply: to,
        } => {
            let request = authed(proto::SignAgentJwtRequest { agent_id, audience }, token);
            reply("SignAgentJwt", client.sign_agent_jwt(request).await, to)
        }
        CredentialCall::JwtBundle { reply: to } => {
            let request = authed(proto::GetJwtBundleRequest {}, token);
            reply("GetJwtBundle", client.get_jwt_bundle(request).await, to)
        }
    }
}

/// A detection for the control plane, about an agent by the control plane's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    pub agent_id: String,
    /// The detection rule's name (`docs/risk.md`).
    pub rule: String,
    /// `low`, `medium`, `high` or `critical`.
    pub severity: String,
    pub unix_ms: i64,
    pub summary: String,
}

impl From<&Detected> for proto::HostDetection {
    fn from(detected: &Detected) -> Self {
        Self {
            agent_id: detected.agent_id.clone(),
            rule: detected.rule.clone(),
            severity: detected.severity.clone(),
            detect_time: Some(prost_types::Timestamp {
                seconds: detected.unix_ms / 1000,
                nanos: 0,
            }),
            summary: detected.summary.clone(),
        }
    }
}

/// The host's credentials, kept in the state directory (mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Credentials {
    host_id: String,
    host_token: String,
    /// The host's mTLS client certificate, signed by the control plane's CA (PEM); empty for
    /// credentials kept before agentd sent a certificate request.
    #[serde(default)]
    certificate_pem: String,
    /// Its private key (PEM), generated on this host; it never leaves it.
    #[serde(default)]
    key_pem: String,
    /// The control plane's CA certificate (PEM), as the enrolment returned it.
    #[serde(default)]
    ca_certificate_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "{url} is https: enrolling needs the control plane's CA certificate \
         (control_plane.ca_file; `agentd-control ca-cert` prints it)"
    )]
    NoCaForEnrolment { url: String },
    #[error(
        "the credentials in {path} hold no client certificate, which an https control plane \
         requires: remove the file and enrol again with a new join token"
    )]
    NoClientCertificate { path: PathBuf },
    #[error("creating the certificate request: {0}")]
    CertificateRequest(String),
    #[error(
        "no credentials in {path} and no join token configured (control_plane.join_token or join_token_file)"
    )]
    NotEnrolled { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> ControlError {
    move |status| ControlError::Call {
        call: name,
        status: Box::new(status),
    }
}

/// The path of the kept decision set.
pub fn decisions_path(state_dir: &Path) -> PathBuf {
    state_dir.join("decisions.json")
}

fn credentials_path(state_dir: &Path) -> PathBuf {
    state_dir.join("host.json")
}

fn hostname(config: &ControlPlaneConfig) -> String {
    config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "localhost".to_owned(), |name| name.trim().to_owned())
    })
}

fn connect_error(url: &str) -> impl FnOnce(tonic::transport::Error) -> ControlError {
    let url = url.to_owned();
    move |source| ControlError::Connect { url, source }
}

/// A channel to `url`; with `tls`, over TLS with that configuration.
async fn connect(url: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, ControlError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(connect_error(url))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(connect_error(url))?;
    }
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(connect_error(url))
}

fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

fn read_ca_file(config: &ControlPlaneConfig) -> Result<Option<Vec<u8>>, ControlError> {
    config
        .ca_file
        .as_ref()
        .map(|file| std::fs::read(file).map_err(io(format!("reading {}", file.display()))))
        .transpose()
}

/// The saved credentials, if there are any.
fn saved_credentials(config: &ControlPlaneConfig) -> Option<Credentials> {
    let bytes = std::fs::read(credentials_path(&config.state_dir)).ok()?;
    serde_json::from_slice::<Credentials>(&bytes).ok()
}

/// New credentials from enrolling with the join token: a key generated here, a certificate
/// request for it, and what the control plane returns. Over https the server is verified
/// against `control_plane.ca_file`.
async fn enrol(config: &ControlPlaneConfig, url: &str) -> Result<Credentials, ControlError> {
    let path = credentials_path(&config.state_dir);
    let token = match (&config.join_token, &config.join_token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(io(format!("reading {}", file.display())))?
            .trim()
            .to_owned(),
        (None, None) => return Err(ControlError::NotEnrolled { path }),
    };
    let tls = if is_https(url) {
        let ca = read_ca_file(config)?.ok_or_else(|| ControlError::NoCaForEnrolment {
            url: url.to_owned(),
        })?;
        Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
    } else {
        None
    };
    let channel = connect(url, tls).await?;
    let key = rcgen::KeyPair::generate()
        .map_err(|err| ControlError::CertificateRequest(err.to_string()))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|err| ControlError::CertificateRequest(err.to_string()))?;
    let enrolled = HostServiceClient::new(channel)
        .enroll_host(proto::EnrollHostRequest {
            join_token: token,
            hostname: hostname(config),
            csr_pem: csr,
            agentd_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .await
        .map_err(call("EnrollHost"))?
        .into_inner();
    let credentials = Credentials {
        host_id: enrolled.host_id,
        host_token: enrolled.host_token,
        certificate_pem: enrolled.certificate_pem,
        key_pem: key.serialize_pem(),
        ca_certificate_pem: enrolled.ca_certificate_pem,
    };
    std::fs::create_dir_all(&config.state_dir)
        .map_err(io(format!("creating {}", config.state_dir.display())))?;
    let bytes = serde_json::to_vec(&credentials).map_err(|err| ControlError::Io {
        what: "encoding the credentials".to_owned(),
        source: std::io::Error::other(err),
    })?;
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let partial = path.with_extension("partial");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io(format!("writing {}", partial.display())))?;
        std::io::Write::write_all(&mut file, &bytes)
            .map_err(io(format!("writing {}", partial.display())))?;
        std::fs::rename(&partial, &path).map_err(io(format!("writing {}", path.display())))?;
    }
    tracing::info!(
        host_id = credentials.host_id,
        client_certificate = !credentials.certificate_pem.is_empty(),
        "enrolled with the control plane"
    );
    Ok(credentials)
}

/// The TLS settings of host calls to an https control plane: the host's client certificate
/// (mTLS), and the server verified against the CA from enrolment (or `control_plane.ca_file`).
fn host_tls(
    config: &ControlPlaneConfig,
    credentials: &Credentials,
) -> Result<ClientTlsConfig, ControlError> {
    if credentials.certificate_pem.is_empty() || credentials.key_pem.is_empty() {
        return Err(ControlError::NoClientCertificate {
            path: credentials_path(&config.state_dir),
        });
    }
    let ca = match read_ca_file(config)? {
        Some(ca) => ca,
        None => credentials.ca_certificate_pem.clone().into_bytes(),
    };
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(
            &credentials.certificate_pem,
            &credentials.key_pem,
        )))
}

/// A request carrying the host's bearer token.
fn authed<T>(message: T, token: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

/// Runs until the daemon drops its end: connects, enrols if needed, watches decisions from
/// `after_version`, and reconnects with backoff after any failure, including the end of the
/// watch (a control plane that shuts down ends it with UNAVAILABLE).
pub async fn run(
    config: ControlPlaneConfig,
    mut after_version: u64,
    to_daemon: mpsc::Sender<FromControl>,
    mut from_daemon: mpsc::Receiver<ToControl>,
) {
    let mut backoff = Backoff::default();
    let mut undelivered = None;
    loop {
        let mut watched = false;
        match session(
            &config,
            &mut after_version,
            &to_daemon,
            Requests {
                from_daemon: &mut from_daemon,
                undelivered: &mut undelivered,
            },
            &mut watched,
        )
        .await
        {
            Ok(()) => return,
            Err(err) => {
                if to_daemon
                    .send(FromControl::Disconnected(err.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                if watched {
                    // The control plane was there a moment ago (a restart, a replica going
                    // away): retry soon, from the first step.
                    backoff.reset();
                }
                let delay = backoff.next_delay(random_fraction());
                tracing::warn!(%err, retry_in = ?delay, "control plane unreachable");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The daemon's requests, and the one a broken connection left undelivered: it goes first on
/// the next connection, so that an acknowledgement or a batch of detections in flight when
/// the connection broke is not lost (the watch resumes after the version this host has, so
/// the control plane would not send that set again to be acknowledged).
struct Requests<'a> {
    from_daemon: &'a mut mpsc::Receiver<ToControl>,
    undelivered: &'a mut Option<ToControl>,
}

/// Whether a failed call's request is worth sending again on a new connection: the connection
/// or the server failed, not the request. A request the control plane refused is dropped (and
/// logged); it would be refused again.
fn worth_retrying(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
            | Code::ResourceExhausted
    )
}

/// Exponential backoff with jitter: each delay is drawn from the upper half of the current
/// step, so that the hosts of a fleet whose control plane restarts do not all come back in
/// the same instant; the step doubles from 500 ms to 10 s.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(10);

    fn reset(&mut self) {
        self.step = Self::FIRST;
    }

    /// The delay before the next attempt, for `fraction` in [0, 1); doubles the step.
    fn next_delay(&mut self, fraction: f64) -> Duration {
        let delay = self.step.mul_f64(0.5 + fraction.clamp(0.0, 1.0) / 2.0);
        self.step = (self.step * 2).min(Self::MAX);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: Self::FIRST }
    }
}

/// A fraction in [0, 1) that differs between calls and hosts (std's randomly keyed hasher).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        >> 11;
    #[expect(clippy::cast_precision_loss, reason = "53 bits fit an f64 exactly")]
    let fraction = bits as f64 / (1u64 << 53) as f64;
    fraction
}

/// One connection: returns `Ok` only when the daemon has gone away.
async fn session(
    config: &ControlPlaneConfig,
    after_version: &mut u64,
    to_daemon: &mpsc::Sender<FromControl>,
    requests: Requests<'_>,
    watched: &mut bool,
) -> Result<(), ControlError> {
    let url = config.url.clone().unwrap_or_default();
    let credentials = match saved_credentials(config) {
        Some(saved) => saved,
        None => enrol(config, &url).await?,
    };
    let tls = if is_https(&url) {
        Some(host_tls(config, &credentials)?)
    } else {
        None
    };
    let channel = connect(&url, tls).await?;
    let token: MetadataValue<_> = format!("Bearer {}", credentials.host_token)
        .parse()
        .map_err(|_| ControlError::Io {
            what: "the host token".to_owned(),
            source: std::io::Error::other("not valid in a header"),
        })?;
    let mut client = HostServiceClient::new(channel);
    let mut stream = client
        .watch_decisions(authed(
            proto::WatchDecisionsRequest {
                after_version: *after_version,
            },
            &token,
        ))
        .await
        .map_err(call("WatchDecisions"))?
        .into_inner();
    *watched = true;
    if to_daemon.send(FromControl::Confirmed).await.is_err() {
        return Ok(());
    }
    if let Some(request) = requests.undelivered.take() {
        deliver(&mut client, &token, request, requests.undelivered).await?;
    }
    let mut heartbeat = tokio::time::interval(Duration::from_secs(config.heartbeat_secs.max(1)));
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(message) = message.map_err(call("WatchDecisions"))? else {
                    return Err(call("WatchDecisions")(tonic::Status::unavailable("the stream ended")));
                };
                let Some(raw) = message.decision_set else { continue };
                let update = match DecisionSet::from_proto(&raw) {
                    Ok(set) => {
                        *after_version = set.version;
                        FromControl::Decisions(set)
                    }
                    Err(err) => FromControl::Refused(format!("decision set {}: {err}", raw.version)),
                };
                if to_daemon.send(update).await.is_err() {
                    return Ok(());
                }
            }
            _ = heartbeat.tick() => {
                client
                    .heartbeat(authed(
                        proto::HeartbeatRequest { agentd_version: env!("CARGO_PKG_VERSION").to_owned() },
                        &token,
                    ))
                    .await
                    .map_err(call("Heartbeat"))?;
                if to_daemon.send(FromControl::Confirmed).await.is_err() {
                    return Ok(());
                }
            }
            request = requests.from_daemon.recv() => {
                let Some(request) = request else { return Ok(()) };
                deliver(&mut client, &token, request, requests.undelivered).await?;
            }
        }
    }
}

/// Sends one of the daemon's requests. A request the control plane refuses is logged and
/// dropped without ending the connection; one lost to the connection is kept in
/// `undelivered` and the connection ends.
async fn deliver(
    client: &mut HostServiceClient<Channel>,
    token: &MetadataValue<tonic::metadata::Ascii>,
    request: ToControl,
    undelivered: &mut Option<ToControl>,
) -> Result<(), ControlError> {
    let request = match request {
        ToControl::Credential(request) => return answer(client, token, request).await,
        request => request,
    };
    let (name, result) = match &request {
        ToControl::Ack(version) => (
            "AckDecisions",
            client
                .ack_decisions(authed(
                    proto::AckDecisionsRequest { version: *version },
                    token,
                ))
                .await
                .map(drop),
        ),
        ToControl::Agents(agent_ids) => (
            "ReportAgents",
            client
                .report_agents(authed(
                    proto::ReportAgentsRequest {
                        agent_ids: agent_ids.clone(),
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        ToControl::Detections(detections) => (
            "ReportDetections",
            client
                .report_detections(authed(
                    proto::ReportDetectionsRequest {
                        detections: detections.iter().map(Into::into).collect(),
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        ToControl::Credential(_) => unreachable!("answered above"),
    };
    match result {
        Ok(()) => Ok(()),
        Err(status) if worth_retrying(&status) => {
            *undelivered = Some(request);
            Err(call(name)(status))
        }
        Err(status) => {
            tracing::warn!(call = name, code = ?status.code(), message = status.message(), "the control plane refused a report; dropping it");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_keeps_a_request_and_a_refusal_drops_it() {
        use tonic::{Code, Status};
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::Internal,
        ] {
            assert!(worth_retrying(&Status::new(code, "")), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert!(!worth_retrying(&Status::new(code, "")), "{code:?}");
        }
    }

    #[test]
    fn credentials_from_before_certificates_cannot_call_an_https_control_plane() {
        let old: Credentials =
            serde_json::from_str(r#"{"host_id":"h","host_token":"t"}"#).expect("old credentials");
        let config = ControlPlaneConfig::default();
        let err = host_tls(&config, &old).unwrap_err();
        assert!(
            matches!(err, ControlError::NoClientCertificate { .. }),
            "{err}"
        );
    }

    #[test]
    fn backoff_doubles_to_ten_seconds_with_jitter_and_resets() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(250));
        let second = backoff.next_delay(0.999_999);
        assert!(
            second > Duration::from_millis(999) && second < Duration::from_secs(1),
            "{second:?}"
        );
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(1.0)).collect();
        assert_eq!(delays.last(), Some(&Duration::from_secs(10)));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_fractions_spread_over_the_unit_interval() {
        let fractions: Vec<f64> = (0..200).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(fractions.iter().any(|f| *f < 0.25) && fractions.iter().any(|f| *f > 0.75));
    }

    #[tokio::test]
    async fn enrolling_over_https_needs_the_ca() {
        let config = ControlPlaneConfig {
            url: Some("https://127.0.0.1:1".to_owned()),
            join_token: Some("token".to_owned()),
            state_dir: tempfile::tempdir().unwrap().path().to_owned(),
            ..ControlPlaneConfig::default()
        };
        let err = enrol(&config, "https://127.0.0.1:1").await.unwrap_err();
        assert!(
            matches!(err, ControlError::NoCaForEnrolment { .. }),
            "{err}"
        );
    }
}
