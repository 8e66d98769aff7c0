//! `GovernanceService`: lifecycle, sponsors and owners, alerts and the sweep.

use tonic::{Request, Response, Status};

use super::{ControlPlane, ensure_answers_for, registry::agent_to_proto, timestamp, validate};
use crate::{
    auth::Method,
    error::Error,
    model::{AlertKind, PrincipalRelation},
    proto::{self, governance_service_server::GovernanceService},
};

fn relation(field: &str, value: i32) -> Result<PrincipalRelation, Error> {
    match validate::known_enum::<proto::PrincipalRelation>(field, value, false)? {
        Some(proto::PrincipalRelation::Sponsor) => Ok(PrincipalRelation::Sponsor),
        Some(proto::PrincipalRelation::Owner) => Ok(PrincipalRelation::Owner),
        _ => Err(Error::invalid(field, "is required")),
    }
}

fn alert_kind(kind: AlertKind) -> proto::AlertKind {
    match kind {
        AlertKind::Orphaned => proto::AlertKind::Orphaned,
        AlertKind::ReconfirmationOverdue => proto::AlertKind::ReconfirmationOverdue,
        AlertKind::Inactive => proto::AlertKind::Inactive,
        AlertKind::Expired => proto::AlertKind::Expired,
    }
}

impl ControlPlane {
    /// Runs one governance sweep as the `governance` actor.
    pub async fn run_sweep(&self, actor: &str) -> crate::error::Result<crate::model::SweepReport> {
        let audit = crate::store::AuditContext {
            actor: actor.to_owned(),
            action: Method::RunSweep.name(),
            now: self.now(),
        };
        let report = self.store.sweep(&audit).await?;
        if report != crate::model::SweepReport::default() {
            self.decisions_changed();
        }
        Ok(report)
    }
}

#[tonic::async_trait]
impl GovernanceService for ControlPlane {
    async fn enable_agent(
        &self,
        request: Request<proto::EnableAgentRequest>,
    ) -> Result<Response<proto::EnableAgentResponse>, Status> {
        let caller = self.authorize(&request, Method::EnableAgent).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        ensure_answers_for(&caller, &self.store.get_agent(&id).await?.agent)?;
        let agent = self
            .store
            .enable_agent(&self.audit(&caller, Method::EnableAgent), &id)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::EnableAgentResponse {
            agent: Some(agent_to_proto(&agent)),
        }))
    }

    async fn disable_agent(
        &self,
        request: Request<proto::DisableAgentRequest>,
    ) -> Result<Response<proto::DisableAgentResponse>, Status> {
        let caller = self.authorize(&request, Method::DisableAgent).await?;
        let request = request.into_inner();
        let id = validate::uuid("id", &request.id)?;
        let reason = validate::required_text("reason", &request.reason, 512)?;
        ensure_answers_for(&caller, &self.store.get_agent(&id).await?.agent)?;
        let agent = self
            .store
            .disable_agent(&self.audit(&caller, Method::DisableAgent), &id, reason)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::DisableAgentResponse {
            agent: Some(agent_to_proto(&agent)),
        }))
    }

    async fn reconfirm_agent(
        &self,
        request: Request<proto::ReconfirmAgentRequest>,
    ) -> Result<Response<proto::ReconfirmAgentResponse>, Status> {
        let caller = self.authorize(&request, Method::ReconfirmAgent).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        ensure_answers_for(&caller, &self.store.get_agent(&id).await?.agent)?;
        let agent = self
            .store
            .reconfirm_agent(&self.audit(&caller, Method::ReconfirmAgent), &id)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::ReconfirmAgentResponse {
            agent: Some(agent_to_proto(&agent)),
        }))
    }

    async fn add_principal(
        &self,
        request: Request<proto::AddPrincipalRequest>,
    ) -> Result<Response<proto::AddPrincipalResponse>, Status> {
        let caller = self.authorize(&request, Method::AddPrincipal).await?;
        let request = request.into_inner();
        let agent_id = validate::uuid("agent_id", &request.agent_id)?;
        let relation = relation("relation", request.relation)?;
        let principal = validate::principal("principal", &request.principal)?;
        let agent = self
            .store
            .add_principal(
                &self.audit(&caller, Method::AddPrincipal),
                &agent_id,
                relation,
                &principal,
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::AddPrincipalResponse {
            agent: Some(agent_to_proto(&agent)),
        }))
    }

    async fn remove_principal(
        &self,
        request: Request<proto::RemovePrincipalRequest>,
    ) -> Result<Response<proto::RemovePrincipalResponse>, Status> {
        let caller = self.authorize(&request, Method::RemovePrincipal).await?;
        let request = request.into_inner();
        let agent_id = if request.agent_id.is_empty() {
            None
        } else {
            Some(validate::uuid("agent_id", &request.agent_id)?)
        };
        let relation = relation("relation", request.relation)?;
        let principal = validate::principal("principal", &request.principal)?;
        let reassign_to = if request.reassign_to.is_empty() {
            None
        } else {
            let successor = validate::principal("reassign_to", &request.reassign_to)?;
            if successor == principal {
                return Err(Error::invalid("reassign_to", "is the principal being removed").into());
            }
            Some(successor)
        };
        let removal = self
            .store
            .remove_principal(
                &self.audit(&caller, Method::RemovePrincipal),
                agent_id.as_deref(),
                relation,
                &principal,
                reassign_to.as_deref(),
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::RemovePrincipalResponse {
            agent_ids: removal.agent_ids,
            reassigned_agent_ids: removal.reassigned,
            orphaned_agent_ids: removal.orphaned,
        }))
    }

    async fn list_alerts(
        &self,
        request: Request<proto::ListAlertsRequest>,
    ) -> Result<Response<proto::ListAlertsResponse>, Status> {
        self.authorize(&request, Method::ListAlerts).await?;
        let agent_id = &request.get_ref().agent_id;
        let agent_id = if agent_id.is_empty() {
            None
        } else {
            Some(validate::uuid("agent_id", agent_id)?)
        };
        let alerts = self.store.list_alerts(agent_id.as_deref()).await?;
        Ok(Response::new(proto::ListAlertsResponse {
            alerts: alerts
                .into_iter()
                .map(|alert| proto::Alert {
                    id: alert.id,
                    kind: alert_kind(alert.kind).into(),
                    agent_id: alert.agent_id,
                    message: alert.message,
                    create_time: Some(timestamp(alert.created_at)),
                })
                .collect(),
        }))
    }

    async fn run_sweep(
        &self,
        request: Request<proto::RunSweepRequest>,
    ) -> Result<Response<proto::RunSweepResponse>, Status> {
        let caller = self.authorize(&request, Method::RunSweep).await?;
        let report = ControlPlane::run_sweep(self, &caller.actor()).await?;
        Ok(Response::new(proto::RunSweepResponse {
            expired_agent_ids: report.expired_agents,
            reconfirmation_disabled_agent_ids: report.reconfirmation_disabled,
            inactive_disabled_agent_ids: report.inactive_disabled,
            orphaned_agent_ids: report.orphaned,
            expired_access_package_ids: report.expired_access_packages,
            activated_access_package_ids: report.activated_access_packages,
        }))
    }
}
