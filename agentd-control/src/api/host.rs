//! `HostService`: join tokens, enrolment, heartbeats, agent reports, revocation, labels, and the
//! Conditional Access loop (decision watches, acknowledgements, detections).

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{ControlPlane, limits, optional_timestamp, timestamp, validate};
use crate::{
    auth::Method,
    clock::UnixTime,
    error::{Error, quoted},
    model::Host,
    policy::RiskLevel,
    proto::{self, host_service_server::HostService},
    store::{AuditContext, hosts::JoinBinding, risk::NewDetection},
};

/// Join tokens live at most a week.
const MAX_JOIN_TOKEN_TTL: u32 = 7 * 24 * 3600;
const DEFAULT_JOIN_TOKEN_TTL: u32 = 3600;

fn to_proto(host: Host) -> proto::Host {
    proto::Host {
        id: host.id,
        hostname: host.hostname,
        enroll_time: Some(timestamp(host.enrolled_at)),
        last_heartbeat_time: optional_timestamp(host.last_heartbeat_at),
        agent_ids: host.agent_ids,
        revoked: host.revoked_at.is_some(),
        revoke_time: optional_timestamp(host.revoked_at),
        agentd_version: host.agentd_version,
        applied_decision_version: u64::try_from(host.applied_decision_version).unwrap_or_default(),
        applied_time: optional_timestamp(host.applied_at),
        labels: host.labels.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl HostService for ControlPlane {
    async fn create_join_token(
        &self,
        request: Request<proto::CreateJoinTokenRequest>,
    ) -> Result<Response<proto::CreateJoinTokenResponse>, Status> {
        let caller = self.authorize(&request, Method::CreateJoinToken).await?;
        let request = request.into_inner();
        let ttl = match request.ttl_seconds {
            0 => DEFAULT_JOIN_TOKEN_TTL,
            ttl if ttl > MAX_JOIN_TOKEN_TTL => {
                return Err(Error::invalid(
                    "ttl_seconds",
                    format!("{ttl} is more than {MAX_JOIN_TOKEN_TTL} (a week)"),
                )
                .into());
            }
            ttl => ttl,
        };
        let description = validate::text("description", &request.description, 256)?;
        let binding = JoinBinding {
            hostname: if request.hostname.is_empty() {
                String::new()
            } else {
                validate::hostname("hostname", &request.hostname)?
            },
            labels: {
                limits::at_most("labels", request.labels.len(), limits::ATTRIBUTES)?;
                validate::attributes("labels", &request.labels)?
            },
        };
        let (token, secret) = self
            .store
            .create_join_token(
                &self.audit(&caller, Method::CreateJoinToken),
                i64::from(ttl),
                &description,
                binding,
            )
            .await?;
        Ok(Response::new(proto::CreateJoinTokenResponse {
            token: secret,
            token_id: token.id,
            expire_time: Some(timestamp(token.expires_at)),
        }))
    }

    async fn enroll_host(
        &self,
        request: Request<proto::EnrollHostRequest>,
    ) -> Result<Response<proto::EnrollHostResponse>, Status> {
        // A failed join token counts against the source like a failed bearer token.
        let peer = request.remote_addr();
        self.check_throttle(peer)?;
        let result = self.enroll(request.into_inner()).await;
        if let Err(status) = &result {
            self.count_failure(peer, status);
        }
        result
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let caller = self.authorize(&request, Method::Heartbeat).await?;
        let version = validate::text("agentd_version", &request.get_ref().agentd_version, 64)?;
        let held = &request.get_ref().ca_bundle_sha256;
        if held.len() > 64 || !held.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "ca_bundle_sha256",
                "must be the SHA-256 of the trust bundle held, 64 hex digits (or empty)",
            )
            .into());
        }
        let now = self.now();
        self.store
            .heartbeat(&caller.principal, now, &version)
            .await?;
        let authorities = self.ca.current();
        let current = held.eq_ignore_ascii_case(authorities.digest());
        Ok(Response::new(proto::HeartbeatResponse {
            server_time: Some(timestamp(now)),
            ca_bundle_pem: if current {
                String::new()
            } else {
                authorities.bundle_pem().to_owned()
            },
        }))
    }

    async fn report_agents(
        &self,
        request: Request<proto::ReportAgentsRequest>,
    ) -> Result<Response<proto::ReportAgentsResponse>, Status> {
        let caller = self.authorize(&request, Method::ReportAgents).await?;
        let agent_ids = &request.get_ref().agent_ids;
        limits::at_most("agent_ids", agent_ids.len(), limits::REPORTED_AGENTS)?;
        let ids = agent_ids
            .iter()
            .enumerate()
            .map(|(index, id)| validate::uuid(&format!("agent_ids[{index}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        self.store
            .report_agents(
                &self.audit(&caller, Method::ReportAgents),
                &caller.principal,
                &ids,
            )
            .await?;
        Ok(Response::new(proto::ReportAgentsResponse {}))
    }

    async fn get_host(
        &self,
        request: Request<proto::GetHostRequest>,
    ) -> Result<Response<proto::GetHostResponse>, Status> {
        self.authorize(&request, Method::GetHost).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let host = self.store.get_host(&id).await?;
        Ok(Response::new(proto::GetHostResponse {
            host: Some(to_proto(host)),
        }))
    }

    async fn list_hosts(
        &self,
        request: Request<proto::ListHostsRequest>,
    ) -> Result<Response<proto::ListHostsResponse>, Status> {
        self.authorize(&request, Method::ListHosts).await?;
        let hosts = self
            .store
            .list_hosts(request.get_ref().include_revoked)
            .await?;
        Ok(Response::new(proto::ListHostsResponse {
            hosts: hosts.into_iter().map(to_proto).collect(),
        }))
    }

    async fn revoke_host(
        &self,
        request: Request<proto::RevokeHostRequest>,
    ) -> Result<Response<proto::RevokeHostResponse>, Status> {
        let caller = self.authorize(&request, Method::RevokeHost).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let reason = validate::text("reason", &request.get_ref().reason, 512)?;
        let host = self
            .store
            .revoke_host(&self.audit(&caller, Method::RevokeHost), &id, &reason)
            .await?;
        // Wakes the watches: the host's own finds itself gone from the new inputs and ends.
        self.decisions_changed();
        Ok(Response::new(proto::RevokeHostResponse {
            host: Some(to_proto(host)),
        }))
    }

    async fn set_host_labels(
        &self,
        request: Request<proto::SetHostLabelsRequest>,
    ) -> Result<Response<proto::SetHostLabelsResponse>, Status> {
        let caller = self.authorize(&request, Method::SetHostLabels).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let labels = validate::attributes("labels", &request.get_ref().labels)?;
        let host = self
            .store
            .set_host_labels(&self.audit(&caller, Method::SetHostLabels), &id, &labels)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::SetHostLabelsResponse {
            host: Some(to_proto(host)),
        }))
    }

    type WatchDecisionsStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<proto::WatchDecisionsResponse, Status>> + Send>,
    >;

    async fn watch_decisions(
        &self,
        request: Request<proto::WatchDecisionsRequest>,
    ) -> Result<Response<Self::WatchDecisionsStream>, Status> {
        let caller = self.authorize(&request, Method::WatchDecisions).await?;
        if self.is_stopping() {
            return Err(shutting_down());
        }
        let host_id = caller.principal;
        let after = request.get_ref().after_version;
        // Errors computing the first set fail the call itself, with their status.
        let first = self
            .current_decision_set(&host_id, None)
            .await?
            .ok_or_else(|| Status::unauthenticated("the host was revoked"))?;
        let (tx, rx) = mpsc::channel(4);
        let mut sent = after;
        if first.version != after {
            sent = first.version;
            tx.send(Ok(proto::WatchDecisionsResponse {
                decision_set: Some(first),
            }))
            .await
            .map_err(|_| Status::cancelled("the watch was closed"))?;
        }
        let control = self.clone();
        tokio::spawn(async move { control.watch_loop(&host_id, sent, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack_decisions(
        &self,
        request: Request<proto::AckDecisionsRequest>,
    ) -> Result<Response<proto::AckDecisionsResponse>, Status> {
        let caller = self.authorize(&request, Method::AckDecisions).await?;
        let version = i64::try_from(request.get_ref().version)
            .map_err(|_| Error::invalid("version", "is out of range"))?;
        if version == 0 {
            return Err(
                Error::invalid("version", "is required (the applied DecisionSet version)").into(),
            );
        }
        self.ack(caller.principal, version, self.now()).await?;
        Ok(Response::new(proto::AckDecisionsResponse {}))
    }

    async fn report_detections(
        &self,
        request: Request<proto::ReportDetectionsRequest>,
    ) -> Result<Response<proto::ReportDetectionsResponse>, Status> {
        let caller = self.authorize(&request, Method::ReportDetections).await?;
        let detections = &request.get_ref().detections;
        if detections.is_empty() {
            return Err(Error::invalid("detections", "at least one is required").into());
        }
        limits::at_most(
            "detections",
            detections.len(),
            limits::DETECTIONS_PER_REPORT,
        )?;
        let mut parsed = Vec::with_capacity(detections.len());
        for (index, detection) in detections.iter().enumerate() {
            let field = |name: &str| format!("detections[{index}].{name}");
            let severity = match RiskLevel::parse(&detection.severity) {
                Some(level) if level != RiskLevel::None => level,
                _ => {
                    return Err(Error::invalid(
                        field("severity"),
                        format!(
                            "unknown severity {} (low, medium or high)",
                            quoted(&detection.severity)
                        ),
                    )
                    .into());
                }
            };
            parsed.push(NewDetection {
                agent_id: validate::uuid(&field("agent_id"), &detection.agent_id)?,
                rule: validate::required_text(&field("rule"), &detection.rule, 128)?,
                severity,
                detected_at: validate::time(&field("detect_time"), detection.detect_time.as_ref())?,
                summary: validate::text(&field("summary"), &detection.summary, 1024)?,
            });
        }
        let ids: Vec<String> = parsed.iter().map(|d| d.agent_id.clone()).collect();
        self.store.ensure_host_runs(&caller.principal, &ids).await?;
        let audit = self.audit(&caller, Method::ReportDetections);
        let now = audit.now;
        self.store
            .insert_detections(&audit, &caller.principal, &parsed)
            .await?;
        self.decisions_changed();
        let risks = self.agent_risks(&ids, now).await?;
        let risk_levels = parsed
            .iter()
            .map(|d| {
                let level = risks.get(&d.agent_id).map_or(RiskLevel::None, |r| r.level);
                (d.agent_id.clone(), level.as_str().to_owned())
            })
            .collect();
        Ok(Response::new(proto::ReportDetectionsResponse {
            risk_levels,
        }))
    }

    async fn sign_agent_svid(
        &self,
        request: Request<proto::SignAgentSvidRequest>,
    ) -> Result<Response<proto::SignAgentSvidResponse>, Status> {
        let caller = self.authorize(&request, Method::SignAgentSvid).await?;
        ControlPlane::sign_agent_svid(self, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn sign_agent_jwt(
        &self,
        request: Request<proto::SignAgentJwtRequest>,
    ) -> Result<Response<proto::SignAgentJwtResponse>, Status> {
        let caller = self.authorize(&request, Method::SignAgentJwt).await?;
        ControlPlane::sign_agent_jwt(self, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_jwt_bundle(
        &self,
        request: Request<proto::GetJwtBundleRequest>,
    ) -> Result<Response<proto::GetJwtBundleResponse>, Status> {
        self.authorize(&request, Method::GetJwtBundle).await?;
        Ok(Response::new(self.jwt_bundle()))
    }

    async fn renew_host_certificate(
        &self,
        request: Request<proto::RenewHostCertificateRequest>,
    ) -> Result<Response<proto::RenewHostCertificateResponse>, Status> {
        let caller = self
            .authorize(&request, Method::RenewHostCertificate)
            .await?;
        ControlPlane::renew_host_certificate(self, &caller, request.into_inner())
            .await
            .map(Response::new)
    }
}

impl ControlPlane {
    async fn enroll(
        &self,
        request: proto::EnrollHostRequest,
    ) -> Result<Response<proto::EnrollHostResponse>, Status> {
        if request.join_token.is_empty() {
            return Err(Error::invalid("join_token", "is required").into());
        }
        let hostname = validate::hostname("hostname", &request.hostname)?;
        let version = validate::text("agentd_version", &request.agentd_version, 64)?;
        let now = self.now();
        let audit = AuditContext {
            actor: format!("{hostname} (enrolling host)"),
            action: Method::EnrollHost.name(),
            now,
        };
        let authorities = self.ca.current();
        let ca = authorities.signer(now);
        let csr = request.csr_pem;
        let not_after = now + self.credentials.host_cert_ttl;
        let (enrolment, certificate_pem) = self
            .store
            .enroll_host(
                &audit,
                &request.join_token,
                &hostname,
                &version,
                |host_id| {
                    if csr.is_empty() {
                        return Ok((String::new(), None));
                    }
                    let (pem, serial) = ca.sign_host_csr(&csr, host_id, now, not_after)?;
                    Ok((pem, Some(serial)))
                },
            )
            .await?;
        Ok(Response::new(proto::EnrollHostResponse {
            host_id: enrolment.host.id,
            host_token: enrolment.host_token,
            certificate_pem,
            ca_certificate_pem: authorities.bundle_pem().to_owned(),
        }))
    }
}

/// An acknowledgement to record: host id, version, time.
pub(super) type Ack = (String, i64, UnixTime);

impl ControlPlane {
    /// [`Store::ack_decisions`], batched with the other hosts' acknowledgements (see
    /// [`super::batch`]).
    async fn ack(&self, host_id: String, version: i64, now: UnixTime) -> crate::error::Result<()> {
        let store = self.store.clone();
        let write = move |items: Vec<Ack>| {
            let store = store.clone();
            async move {
                store
                    .ack_decisions_batch(&items)
                    .await
                    .inspect_err(|err| {
                        tracing::warn!(error = %err, hosts = items.len(), "recording acknowledgements together; recording each alone");
                    })
                    .ok()
                    .map(|()| vec![(); items.len()])
            }
        };
        if super::batch::submit(&self.acks, (host_id.clone(), version, now), write)
            .await
            .is_some()
        {
            return Ok(());
        }
        self.store.ack_decisions(&host_id, version, now).await
    }
}

/// How a decision watch ends when the server shuts down: UNAVAILABLE, on which agentd
/// reconnects with backoff (to another replica where there is one).
fn shutting_down() -> Status {
    Status::unavailable("the control plane is shutting down; reconnect")
}

impl ControlPlane {
    /// Pushes a new decision set to the host whenever its content changes: woken by this
    /// replica's changes at once, by other replicas' through the change marker polled every
    /// `poll_interval`, and by time alone every `recheck_interval`. Ends when the client goes
    /// away, the host is revoked or the server shuts down.
    async fn watch_loop(
        &self,
        host_id: &str,
        mut sent: u64,
        tx: mpsc::Sender<Result<proto::WatchDecisionsResponse, Status>>,
    ) {
        let options = self.decision_options;
        let mut changes = self.changes.subscribe();
        let mut stopping = self.stopping.subscribe();
        let mut poll = tokio::time::interval(options.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut marker = self.store.change_marker().await.ok();
        let mut last_evaluation = tokio::time::Instant::now();
        loop {
            // Woken by this replica's change: inputs loaded after it are enough, and the other
            // watches share them. Woken by polling: inputs loaded from now on.
            let fresh_after;
            tokio::select! {
                () = tx.closed() => return,
                () = async { drop(stopping.wait_for(|stopping| *stopping).await) } => {
                    let _ = tx.send(Err(shutting_down())).await;
                    return;
                }
                woken = changes.changed() => {
                    if woken.is_err() {
                        return;
                    }
                    fresh_after = None;
                }
                _ = poll.tick() => {
                    let polled = tokio::time::Instant::now();
                    let now_marker = self.store.change_marker().await.ok();
                    if now_marker == marker
                        && last_evaluation.elapsed() < options.recheck_interval
                    {
                        continue;
                    }
                    marker = now_marker;
                    fresh_after = Some(polled);
                }
            }
            last_evaluation = tokio::time::Instant::now();
            // Whether the host is still active comes with its decisions: the inputs of one
            // change hold every active host (see `current_decision_set`).
            match self.current_decision_set(host_id, fresh_after).await {
                Ok(None) => {
                    let _ = tx
                        .send(Err(Status::unauthenticated("the host was revoked")))
                        .await;
                    return;
                }
                Ok(Some(current)) if current.version != sent => {
                    sent = current.version;
                    let message = proto::WatchDecisionsResponse {
                        decision_set: Some(current),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(host_id, error = %err, "decision watch: evaluating");
                }
            }
        }
    }
}
