//! The audit log: written by every mutation inside its transaction, read by `ListAuditEvents`.

use serde::Serialize;
use sqlx::Row as _;

use super::{Conn, Store, to_json};
use crate::{
    clock::UnixTime,
    error::Result,
    model::{AuditEvent, AuditFilter},
};

/// Who is changing something, and when: the first half of every audit event.
#[derive(Clone, Debug)]
pub struct AuditContext {
    /// e.g. `alice@example.com (sponsor)`.
    pub actor: String,
    /// The method, e.g. `CreateAgent`.
    pub action: &'static str,
    pub now: UnixTime,
}

impl AuditContext {
    /// Appends one event. Called inside the mutation's transaction: if it fails, so does the
    /// mutation.
    pub(super) async fn record<P: Serialize, C: Serialize>(
        &self,
        conn: &mut Conn,
        target_type: &str,
        target_id: &str,
        previous: Option<&P>,
        current: Option<&C>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, target_type, target_id, previous, current) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(self.now)
        .bind(&self.actor)
        .bind(self.action)
        .bind(target_type)
        .bind(target_id)
        .bind(previous.map(to_json))
        .bind(current.map(to_json))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

impl Store {
    pub async fn list_audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT sequence, at, actor, action, target_type, target_id, previous, current \
             FROM audit_events WHERE sequence > $1 \
             AND ($2 = '' OR target_type = $2) AND ($3 = '' OR target_id = $3) \
             AND ($4 = '' OR actor = $4) ORDER BY sequence LIMIT $5",
        )
        .bind(filter.after_sequence)
        .bind(filter.target_type.clone().unwrap_or_default())
        .bind(filter.target_id.clone().unwrap_or_default())
        .bind(filter.actor.clone().unwrap_or_default())
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    sequence: row.try_get("sequence")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target_type: row.try_get("target_type")?,
                    target_id: row.try_get("target_id")?,
                    previous: row.try_get("previous")?,
                    current: row.try_get("current")?,
                })
            })
            .collect()
    }
}
