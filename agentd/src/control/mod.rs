//! agentd's connection to the control plane: enrolment with a join token, then a watch of the
//! host's Conditional Access decisions that resumes from the last version applied,
//! acknowledgements, heartbeats and detection reports. It runs as one task; the daemon owns the
//! kernel and talks to it through two channels.
//!
//! At enrolment agentd sends a certificate request and keeps the client certificate the control
//! plane's CA signs, with its key and the CA certificate, in its credentials (mode 0600,
//! `host_credentials`). With an `https://` URL every host call presents that certificate (mTLS)
//! and verifies the server against that CA; the control plane maps the certificate to the host
//! and refuses host calls without it. The certificate is renewed at half-life over the open
//! connection, which stays up; the next connection presents the new one.

mod backoff;
mod channel;
mod error;
mod host_credentials;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use agentd_proto::v1::{self as proto, host_service_client::HostServiceClient};
use tokio::sync::{mpsc, oneshot};
use tonic::{metadata::MetadataValue, transport::Channel};

pub use self::error::ControlError;
use self::{
    backoff::{Backoff, random_fraction},
    channel::{authed, connect, is_https, now_secs},
    error::call,
    host_credentials::{
        Validity, bundle_digest, enrol, host_tls, saved_credentials, update_bundle,
    },
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
    /// The host's client certificate in use expires then (Unix seconds): at each connection
    /// and after each renewal.
    Certificate { expires_at: i64 },
    /// The control plane's trust bundle changed (a CA rotation, a retirement): its PEM, which
    /// the Workload API serves to open streams from now on.
    Bundle(String),
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

/// The path of the kept decision set.
pub fn decisions_path(state_dir: &Path) -> PathBuf {
    state_dir.join("decisions.json")
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

/// How long after a refused or failed renewal of the host certificate agentd asks again.
const RENEWAL_RETRY_SECS: i64 = 60;
/// The least time between two renewals, whatever the clocks say.
const RENEWAL_MIN_SPACING_SECS: i64 = 10;

/// Waits until the Unix second `at`; forever for `None`.
async fn until(at: Option<i64>) {
    match at {
        None => std::future::pending().await,
        Some(at) => {
            let wait = u64::try_from(at.saturating_sub(now_secs())).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    }
}

/// Renews the host certificate over `client` and tells the daemon its expiry. Returns when to
/// renew next (a minute from now after a refusal or a failure of this host's own), `None` when
/// the daemon has gone away, and `Err` when the connection was lost.
async fn renew(
    config: &ControlPlaneConfig,
    client: &mut HostServiceClient<Channel>,
    token: &MetadataValue<tonic::metadata::Ascii>,
    credentials: &mut host_credentials::Credentials,
    to_daemon: &mpsc::Sender<FromControl>,
) -> Result<Option<i64>, ControlError> {
    match host_credentials::renew(config, client, token, credentials).await {
        Ok(renewed) => {
            tracing::info!(
                expires_at = renewed.not_after,
                "renewed the host's client certificate"
            );
            let expires_at = renewed.not_after;
            if to_daemon
                .send(FromControl::Certificate { expires_at })
                .await
                .is_err()
            {
                return Ok(None);
            }
            Ok(Some(
                renewed
                    .renew_at()
                    .max(now_secs() + RENEWAL_MIN_SPACING_SECS),
            ))
        }
        Err(ControlError::Call { status, .. }) if worth_retrying(&status) => {
            Err(call("RenewHostCertificate")(*status))
        }
        Err(err) => {
            tracing::warn!(%err, retry_in_secs = RENEWAL_RETRY_SECS, "renewing the host's client certificate");
            Ok(Some(now_secs() + RENEWAL_RETRY_SECS))
        }
    }
}

/// One heartbeat; keeps the trust bundle it returns when the control plane rotated its CAs,
/// and returns it then.
async fn beat(
    config: &ControlPlaneConfig,
    client: &mut HostServiceClient<Channel>,
    token: &MetadataValue<tonic::metadata::Ascii>,
    credentials: &mut host_credentials::Credentials,
) -> Result<Option<String>, ControlError> {
    let answer = client
        .heartbeat(authed(
            proto::HeartbeatRequest {
                agentd_version: env!("CARGO_PKG_VERSION").to_owned(),
                ca_bundle_sha256: bundle_digest(credentials),
            },
            token,
        ))
        .await
        .map_err(call("Heartbeat"))?
        .into_inner();
    if answer.ca_bundle_pem.is_empty() {
        return Ok(None);
    }
    match update_bundle(config, credentials, &answer.ca_bundle_pem) {
        Ok(()) => {
            tracing::info!(
                "the control plane's trust bundle changed; trusting it from the next connection"
            );
            Ok(Some(answer.ca_bundle_pem))
        }
        Err(err) => {
            tracing::warn!(%err, "keeping the trust bundle this host has");
            Ok(None)
        }
    }
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
    let mut credentials = match saved_credentials(config) {
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
    // Over https, the client certificate is renewed at half-life.
    let validity = is_https(&url).then(|| credentials.validity()).flatten();
    let mut renew_at = validity.map(Validity::renew_at);
    if let Some(validity) = validity
        && to_daemon
            .send(FromControl::Certificate {
                expires_at: validity.not_after,
            })
            .await
            .is_err()
    {
        return Ok(());
    }
    let mut heartbeat = tokio::time::interval(Duration::from_secs(config.heartbeat_secs.max(1)));
    loop {
        tokio::select! {
            () = until(renew_at) => {
                let Some(next) = renew(config, &mut client, &token, &mut credentials, to_daemon).await? else {
                    return Ok(());
                };
                renew_at = Some(next);
            }
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
                if let Some(bundle) = beat(config, &mut client, &token, &mut credentials).await?
                    && to_daemon.send(FromControl::Bundle(bundle)).await.is_err()
                {
                    return Ok(());
                }
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
}
