//! `AuditService`.

use tonic::{Request, Response, Status};

use super::{ControlPlane, timestamp, validate};
use crate::{
    auth::Method,
    error::{Error, quoted},
    model::{AuditFilter, ChainLink},
    proto::{self, audit_service_server::AuditService},
};

const TARGET_TYPES: &[&str] = &[
    "blueprint",
    "agent",
    "access_package",
    "host",
    "join_token",
    "api_token",
    "policy",
    "agent_risk",
    "detection",
    "certificate_authority",
    "jwt_signing_key",
];

#[tonic::async_trait]
impl AuditService for ControlPlane {
    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        self.authorize(&request, Method::ListAuditEvents).await?;
        let request = request.into_inner();
        if request.after_sequence < 0 {
            return Err(Error::invalid("after_sequence", "may not be negative").into());
        }
        if request.page_size > 1000 {
            return Err(Error::invalid("page_size", "is more than 1000").into());
        }
        if !request.target_type.is_empty() && !TARGET_TYPES.contains(&request.target_type.as_str())
        {
            return Err(Error::invalid(
                "target_type",
                format!(
                    "{} is not one of {}",
                    quoted(&request.target_type),
                    TARGET_TYPES.join(", ")
                ),
            )
            .into());
        }
        let optional = |value: String| (!value.is_empty()).then_some(value);
        let filter = AuditFilter {
            after_sequence: request.after_sequence,
            limit: if request.page_size == 0 {
                100
            } else {
                i64::from(request.page_size)
            },
            target_type: optional(request.target_type),
            target_id: optional(validate::text("target_id", &request.target_id, 256)?),
            actor: optional(validate::text("actor", &request.actor, 300)?),
        };
        let head = self.store.audit_head().await?;
        let events = self.store.list_audit_events(&filter).await?;
        Ok(Response::new(proto::ListAuditEventsResponse {
            events: events
                .into_iter()
                .map(|event| {
                    let chain = event.chain.unwrap_or(ChainLink {
                        index: 0,
                        previous_digest: String::new(),
                        digest: String::new(),
                    });
                    proto::AuditEvent {
                        sequence: event.sequence,
                        time: Some(timestamp(event.at)),
                        actor: event.actor,
                        action: event.action,
                        target_type: event.target_type,
                        target_id: event.target_id,
                        previous_json: event.previous.unwrap_or_default(),
                        current_json: event.current.unwrap_or_default(),
                        chain_index: chain.index,
                        previous_digest: chain.previous_digest,
                        digest: chain.digest,
                    }
                })
                .collect(),
            head: Some(proto::AuditChainHead {
                entries: head.entries,
                digest: head.digest,
            }),
        }))
    }
}
