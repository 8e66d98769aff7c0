//! Detections reported by hosts and administrators' risk confirmations.

use sqlx::{Row as _, any::AnyRow};

use super::{AuditContext, Store, corrupt};
use crate::{
    error::{Error, Result},
    model::{Detection, RiskConfirmation, RiskConfirmationRecord},
    policy::RiskLevel,
};

/// A validated detection to store.
#[derive(Clone, Debug)]
pub struct NewDetection {
    pub agent_id: String,
    pub rule: String,
    pub severity: RiskLevel,
    /// `None`: when received.
    pub detected_at: Option<i64>,
    pub summary: String,
}

fn detection_from_row(row: &AnyRow) -> Result<Detection> {
    let severity: String = row.try_get("severity")?;
    Ok(Detection {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        host_id: row.try_get("host_id")?,
        rule: row.try_get("rule")?,
        severity: RiskLevel::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
        detected_at: row.try_get("detected_at")?,
        received_at: row.try_get("received_at")?,
        summary: row.try_get("summary")?,
    })
}

fn confirmation_from_row(row: &AnyRow) -> Result<RiskConfirmationRecord> {
    let kind: String = row.try_get("confirmation")?;
    Ok(RiskConfirmationRecord {
        agent_id: row.try_get("agent_id")?,
        confirmation: RiskConfirmation::parse(&kind)
            .ok_or_else(|| corrupt("risk confirmation", &kind))?,
        reason: row.try_get("reason")?,
        confirmed_by: row.try_get("confirmed_by")?,
        confirmed_at: row.try_get("confirmed_at")?,
        last_detection_id: row.try_get("last_detection_id")?,
    })
}

const DETECTION_COLUMNS: &str =
    "id, agent_id, host_id, rule, severity, detected_at, received_at, summary";
const CONFIRMATION_COLUMNS: &str =
    "agent_id, confirmation, reason, confirmed_by, confirmed_at, last_detection_id";

impl Store {
    /// Stores a host's detections in one transaction, each with its audit event (target
    /// `detection`: they change agents' risk and so the decisions). Unknown agents are refused
    /// by index. A detection time in the future is stored as the receive time.
    pub async fn insert_detections(
        &self,
        audit: &AuditContext,
        host_id: &str,
        detections: &[NewDetection],
    ) -> Result<()> {
        let now = audit.now;
        let mut tx = self.begin().await?;
        for (index, detection) in detections.iter().enumerate() {
            let known: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM agents WHERE id = $1 AND state <> 'deleted'",
            )
            .bind(&detection.agent_id)
            .fetch_one(&mut *tx)
            .await?;
            if known == 0 {
                return Err(Error::invalid(
                    format!("detections[{index}].agent_id"),
                    format!("no registered agent has id {:?}", detection.agent_id),
                ));
            }
            let stored = Detection {
                id: 0,
                agent_id: detection.agent_id.clone(),
                host_id: host_id.to_owned(),
                rule: detection.rule.clone(),
                severity: detection.severity,
                detected_at: detection.detected_at.map_or(now, |at| at.min(now)),
                received_at: now,
                summary: detection.summary.clone(),
            };
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO detections (agent_id, host_id, rule, severity, detected_at, \
                 received_at, summary) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(&stored.agent_id)
            .bind(&stored.host_id)
            .bind(&stored.rule)
            .bind(stored.severity.as_str())
            .bind(stored.detected_at)
            .bind(stored.received_at)
            .bind(&stored.summary)
            .fetch_one(&mut *tx)
            .await?;
            let stored = Detection { id, ..stored };
            audit
                .record(
                    &mut tx,
                    "detection",
                    &id.to_string(),
                    None::<&()>,
                    Some(&stored),
                )
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Detections, newest first.
    pub async fn list_detections(
        &self,
        agent_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Detection>> {
        let rows = sqlx::query(&format!(
            "SELECT {DETECTION_COLUMNS} FROM detections WHERE ($1 = '' OR agent_id = $1) \
             ORDER BY id DESC LIMIT $2"
        ))
        .bind(agent_id.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(detection_from_row).collect()
    }

    /// Detections detected at or after `since` (every agent), for aggregation.
    pub async fn recent_detections(&self, since: i64) -> Result<Vec<Detection>> {
        let rows = sqlx::query(&format!(
            "SELECT {DETECTION_COLUMNS} FROM detections WHERE detected_at >= $1 ORDER BY id"
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(detection_from_row).collect()
    }

    pub async fn risk_confirmations(&self) -> Result<Vec<RiskConfirmationRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFIRMATION_COLUMNS} FROM risk_confirmations ORDER BY agent_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(confirmation_from_row).collect()
    }

    /// Records an administrator's confirmation (replacing the previous one), audited.
    pub async fn confirm_risk(
        &self,
        audit: &AuditContext,
        agent_id: &str,
        confirmation: RiskConfirmation,
        reason: &str,
    ) -> Result<RiskConfirmationRecord> {
        let mut tx = self.begin().await?;
        let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE id = $1")
            .bind(agent_id)
            .fetch_one(&mut *tx)
            .await?;
        if known == 0 {
            return Err(Error::NotFound {
                kind: "agent",
                id: agent_id.to_owned(),
            });
        }
        let previous = sqlx::query(&format!(
            "SELECT {CONFIRMATION_COLUMNS} FROM risk_confirmations WHERE agent_id = $1"
        ))
        .bind(agent_id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(confirmation_from_row)
        .transpose()?;
        let last_detection_id: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM detections WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_one(&mut *tx)
                .await?;
        let record = RiskConfirmationRecord {
            agent_id: agent_id.to_owned(),
            confirmation,
            reason: reason.to_owned(),
            confirmed_by: audit.actor.clone(),
            confirmed_at: audit.now,
            last_detection_id,
        };
        sqlx::query(
            "INSERT INTO risk_confirmations (agent_id, confirmation, reason, confirmed_by, \
             confirmed_at, last_detection_id) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (agent_id) DO UPDATE SET confirmation = excluded.confirmation, \
             reason = excluded.reason, confirmed_by = excluded.confirmed_by, \
             confirmed_at = excluded.confirmed_at, last_detection_id = excluded.last_detection_id",
        )
        .bind(&record.agent_id)
        .bind(record.confirmation.as_str())
        .bind(&record.reason)
        .bind(&record.confirmed_by)
        .bind(record.confirmed_at)
        .bind(record.last_detection_id)
        .execute(&mut *tx)
        .await?;
        audit
            .record(
                &mut tx,
                "agent_risk",
                agent_id,
                previous.as_ref(),
                Some(&record),
            )
            .await?;
        tx.commit().await?;
        Ok(record)
    }
}
