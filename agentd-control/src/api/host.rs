//! `HostService`: join tokens, enrolment, heartbeats, agent reports and revocation.

use tonic::{Request, Response, Status};

use super::{ControlPlane, optional_timestamp, timestamp, validate};
use crate::{
    auth::Method,
    error::Error,
    model::Host,
    proto::{self, host_service_server::HostService},
    store::AuditContext,
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
        applied_decision_version: 0,
        applied_time: None,
        labels: std::collections::HashMap::new(),
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
        let (token, secret) = self
            .store
            .create_join_token(
                &self.audit(&caller, Method::CreateJoinToken),
                i64::from(ttl),
                &description,
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
        let request = request.into_inner();
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
        let ca = self.ca.clone();
        let csr = request.csr_pem;
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
                    let (pem, serial) = ca.sign_host_csr(&csr, host_id, now)?;
                    Ok((pem, Some(serial)))
                },
            )
            .await?;
        Ok(Response::new(proto::EnrollHostResponse {
            host_id: enrolment.host.id,
            host_token: enrolment.host_token,
            certificate_pem,
            ca_certificate_pem: self.ca.cert_pem().to_owned(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let caller = self.authorize(&request, Method::Heartbeat).await?;
        let version = validate::text("agentd_version", &request.get_ref().agentd_version, 64)?;
        let now = self.now();
        self.store
            .heartbeat(&caller.principal, now, &version)
            .await?;
        Ok(Response::new(proto::HeartbeatResponse {
            server_time: Some(timestamp(now)),
        }))
    }

    async fn report_agents(
        &self,
        request: Request<proto::ReportAgentsRequest>,
    ) -> Result<Response<proto::ReportAgentsResponse>, Status> {
        let caller = self.authorize(&request, Method::ReportAgents).await?;
        let ids = request
            .get_ref()
            .agent_ids
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
        Ok(Response::new(proto::RevokeHostResponse {
            host: Some(to_proto(host)),
        }))
    }

    async fn set_host_labels(
        &self,
        request: Request<proto::SetHostLabelsRequest>,
    ) -> Result<Response<proto::SetHostLabelsResponse>, Status> {
        self.authorize(&request, Method::SetHostLabels).await?;
        Err(Status::unimplemented("SetHostLabels: not implemented yet"))
    }

    type WatchDecisionsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<proto::WatchDecisionsResponse, Status>> + Send>,
    >;

    async fn watch_decisions(
        &self,
        request: Request<proto::WatchDecisionsRequest>,
    ) -> Result<Response<Self::WatchDecisionsStream>, Status> {
        self.authorize(&request, Method::WatchDecisions).await?;
        Err(Status::unimplemented("WatchDecisions: not implemented yet"))
    }

    async fn ack_decisions(
        &self,
        request: Request<proto::AckDecisionsRequest>,
    ) -> Result<Response<proto::AckDecisionsResponse>, Status> {
        self.authorize(&request, Method::AckDecisions).await?;
        Err(Status::unimplemented("AckDecisions: not implemented yet"))
    }

    async fn report_detections(
        &self,
        request: Request<proto::ReportDetectionsRequest>,
    ) -> Result<Response<proto::ReportDetectionsResponse>, Status> {
        self.authorize(&request, Method::ReportDetections).await?;
        Err(Status::unimplemented(
            "ReportDetections: not implemented yet",
        ))
    }
}
