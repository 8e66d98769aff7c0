//! `RiskService`: aggregated agent risk, detections, and administrators' confirmations.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::{ControlPlane, optional_timestamp, timestamp, validate};
use crate::{
    auth::Method,
    error::Result as DomainResult,
    model::{Detection, RiskConfirmation},
    proto::{self, risk_service_server::RiskService},
    risk::{AgentRisk, aggregate},
};

const DEFAULT_DETECTION_LIMIT: u32 = 100;
const MAX_DETECTION_LIMIT: u32 = 1000;

fn risk_to_proto(risk: AgentRisk) -> proto::AgentRisk {
    let confirmation = risk.confirmation.as_ref();
    proto::AgentRisk {
        agent_id: risk.agent_id,
        risk_level: risk.level.as_str().to_owned(),
        confirmation: match confirmation.map(|c| c.confirmation) {
            None => proto::RiskConfirmation::Unspecified,
            Some(RiskConfirmation::Compromised) => proto::RiskConfirmation::Compromised,
            Some(RiskConfirmation::Safe) => proto::RiskConfirmation::Safe,
        }
        .into(),
        confirmed_by: confirmation
            .map(|c| c.confirmed_by.clone())
            .unwrap_or_default(),
        confirm_time: optional_timestamp(confirmation.map(|c| c.confirmed_at)),
        detection_count: risk.detection_count,
        host_ids: risk.host_ids,
    }
}

fn detection_to_proto(detection: Detection) -> proto::Detection {
    proto::Detection {
        id: detection.id,
        agent_id: detection.agent_id,
        host_id: detection.host_id,
        rule: detection.rule,
        severity: detection.severity.as_str().to_owned(),
        detect_time: Some(timestamp(detection.detected_at)),
        summary: detection.summary,
        receive_time: Some(timestamp(detection.received_at)),
    }
}

impl ControlPlane {
    /// The aggregated risk of each of `agent_ids` at `now`.
    pub(super) async fn agent_risks(
        &self,
        agent_ids: &[String],
        now: i64,
    ) -> DomainResult<HashMap<String, AgentRisk>> {
        let window = self.decision_options.risk_window_seconds;
        let detections = self.store.recent_detections(now - window).await?;
        let confirmations = self.store.risk_confirmations().await?;
        Ok(agent_ids
            .iter()
            .map(|id| {
                let confirmation = confirmations.iter().find(|c| c.agent_id == *id);
                (
                    id.clone(),
                    aggregate(id, &detections, confirmation, now, window),
                )
            })
            .collect())
    }

    async fn confirm(
        &self,
        caller: &crate::store::auth::Caller,
        method: Method,
        agent_id: &str,
        reason: &str,
        confirmation: RiskConfirmation,
    ) -> Result<proto::AgentRisk, Status> {
        let id = validate::uuid("agent_id", agent_id)?;
        let reason = validate::required_text("reason", reason, 512)?;
        self.store
            .confirm_risk(&self.audit(caller, method), &id, confirmation, &reason)
            .await?;
        self.decisions_changed();
        let mut risks = self
            .agent_risks(std::slice::from_ref(&id), self.now())
            .await?;
        Ok(risk_to_proto(
            risks.remove(&id).expect("asked for this agent"),
        ))
    }
}

#[tonic::async_trait]
impl RiskService for ControlPlane {
    async fn get_agent_risk(
        &self,
        request: Request<proto::GetAgentRiskRequest>,
    ) -> Result<Response<proto::GetAgentRiskResponse>, Status> {
        self.authorize(&request, Method::GetAgentRisk).await?;
        let id = validate::uuid("agent_id", &request.get_ref().agent_id)?;
        self.store.get_agent(&id).await?;
        let mut risks = self
            .agent_risks(std::slice::from_ref(&id), self.now())
            .await?;
        Ok(Response::new(proto::GetAgentRiskResponse {
            risk: risks.remove(&id).map(risk_to_proto),
        }))
    }

    async fn list_detections(
        &self,
        request: Request<proto::ListDetectionsRequest>,
    ) -> Result<Response<proto::ListDetectionsResponse>, Status> {
        self.authorize(&request, Method::ListDetections).await?;
        let request = request.into_inner();
        let agent_id = if request.agent_id.is_empty() {
            None
        } else {
            Some(validate::uuid("agent_id", &request.agent_id)?)
        };
        let limit = match request.limit {
            0 => DEFAULT_DETECTION_LIMIT,
            limit => limit.min(MAX_DETECTION_LIMIT),
        };
        let detections = self
            .store
            .list_detections(agent_id.as_deref(), i64::from(limit))
            .await?;
        Ok(Response::new(proto::ListDetectionsResponse {
            detections: detections.into_iter().map(detection_to_proto).collect(),
        }))
    }

    async fn confirm_agent_compromised(
        &self,
        request: Request<proto::ConfirmAgentCompromisedRequest>,
    ) -> Result<Response<proto::ConfirmAgentCompromisedResponse>, Status> {
        let method = Method::ConfirmAgentCompromised;
        let caller = self.authorize(&request, method).await?;
        let request = request.get_ref();
        let risk = self
            .confirm(
                &caller,
                method,
                &request.agent_id,
                &request.reason,
                RiskConfirmation::Compromised,
            )
            .await?;
        Ok(Response::new(proto::ConfirmAgentCompromisedResponse {
            risk: Some(risk),
        }))
    }

    async fn confirm_agent_safe(
        &self,
        request: Request<proto::ConfirmAgentSafeRequest>,
    ) -> Result<Response<proto::ConfirmAgentSafeResponse>, Status> {
        let method = Method::ConfirmAgentSafe;
        let caller = self.authorize(&request, method).await?;
        let request = request.get_ref();
        let risk = self
            .confirm(
                &caller,
                method,
                &request.agent_id,
                &request.reason,
                RiskConfirmation::Safe,
            )
            .await?;
        Ok(Response::new(proto::ConfirmAgentSafeResponse {
            risk: Some(risk),
        }))
    }
}
