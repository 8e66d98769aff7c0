//! The audit log: written by every mutation inside its transaction, read by `ListAuditEvents`.
//! Each event is chained to the one before it (`crate::audit_chain`; the head row and the
//! append lock are in `store::audit_chain`).

use serde::Serialize;
use sqlx::Row as _;

use super::{Conn, Store, audit_chain, to_json};
use crate::{
    audit_chain::{Content, Head, entry_digest},
    clock::UnixTime,
    error::Result,
    model::{AuditEvent, AuditFilter, ChainLink},
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
        let previous = previous.map(to_json);
        let current = current.map(to_json);
        let content = Content {
            at: self.now,
            actor: &self.actor,
            action: self.action,
            target_type,
            target_id,
            previous: previous.as_deref(),
            current: current.as_deref(),
        };
        let (index, previous_digest) = audit_chain::lock_head(conn).await?;
        let digest = entry_digest(index, &content, &previous_digest);
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, target_type, target_id, previous, \
             current, chain_index, previous_digest, digest) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(self.now)
        .bind(&self.actor)
        .bind(self.action)
        .bind(target_type)
        .bind(target_id)
        .bind(previous.as_deref())
        .bind(current.as_deref())
        .bind(index)
        .bind(&previous_digest)
        .bind(&digest)
        .execute(&mut *conn)
        .await?;
        audit_chain::set_head(conn, &digest).await
    }
}

impl Store {
    pub async fn list_audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT sequence, at, actor, action, target_type, target_id, previous, current, \
             chain_index, previous_digest, digest \
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
                    chain: match row.try_get::<Option<i64>, _>("chain_index")? {
                        Some(index) => Some(ChainLink {
                            index,
                            previous_digest: row.try_get("previous_digest")?,
                            digest: row.try_get("digest")?,
                        }),
                        None => None,
                    },
                })
            })
            .collect()
    }
}

impl Store {
    /// The head of the chain as stored (read at the start of a verification).
    pub async fn audit_head(&self) -> Result<Head> {
        let mut conn = self.pool.acquire().await?;
        audit_chain::read_head(&mut conn).await
    }
}
