//! Credentials issued to agents: whether a host runs an agent, and the audit event of every
//! signing (the certificate's serial, SPIFFE ID and validity; never a key, which stays on the
//! host).

use serde::Serialize;

use super::{AuditContext, Store};
use crate::{clock::UnixTime, error::Result};

/// One credential signed for an agent, as the audit log records it.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedCredential {
    /// `x509-svid`.
    pub kind: &'static str,
    pub agent_id: String,
    pub host_id: String,
    pub spiffe_id: String,
    pub serial: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
}

impl Store {
    /// Whether `host_id`'s last `ReportAgents` named `agent_id`.
    pub async fn host_runs(&self, host_id: &str, agent_id: &str) -> Result<bool> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM host_agents WHERE host_id = $1 AND agent_id = $2",
        )
        .bind(host_id)
        .bind(agent_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(count > 0)
    }

    /// Writes the audit event of a signing (target: the agent).
    pub async fn record_credential(
        &self,
        audit: &AuditContext,
        issued: &IssuedCredential,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        audit
            .record(
                &mut tx,
                "agent",
                &issued.agent_id,
                None::<&()>,
                Some(issued),
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
