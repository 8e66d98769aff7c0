//! Governance: lifecycle transitions, sponsors and owners, orphan alerts, and the periodic
//! sweep (expiry, reconfirmation, inactivity, orphans, access-package expiry).

use sqlx::Row as _;

use super::{
    AuditContext, Conn, Store, access,
    registry::{insert_principal, load_agent, resolve, save_agent},
};
use crate::{
    clock::{DAY, UnixTime},
    error::{Error, Result},
    model::{
        Agent, AgentState, Alert, AlertKind, PrincipalRelation, PrincipalRemoval, ResolvedAgent,
        SweepReport,
    },
};

/// Raises an alert; for `Orphaned`, only once per orphaning (the agent's `orphaned` flag).
async fn raise_alert(
    conn: &mut Conn,
    now: UnixTime,
    kind: AlertKind,
    agent_id: &str,
    message: &str,
) -> Result<bool> {
    if kind == AlertKind::Orphaned {
        let flagged = sqlx::query("UPDATE agents SET orphaned = 1 WHERE id = $1 AND orphaned = 0")
            .bind(agent_id)
            .execute(&mut *conn)
            .await?;
        if flagged.rows_affected() == 0 {
            return Ok(false);
        }
    }
    sqlx::query("INSERT INTO alerts (kind, agent_id, message, created_at) VALUES ($1, $2, $3, $4)")
        .bind(kind.as_str())
        .bind(agent_id)
        .bind(message)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

fn not_deleted(agent: &Agent) -> Result<()> {
    if agent.state == AgentState::Deleted {
        return Err(Error::FailedPrecondition(format!(
            "agent {} is deleted",
            agent.id
        )));
    }
    Ok(())
}

impl Store {
    /// CREATED or DISABLED -> ACTIVE. Enabling counts as a reconfirmation and restarts the
    /// inactivity clock. An expired agent needs a future expiry first (`UpdateAgent`).
    pub async fn enable_agent(&self, audit: &AuditContext, id: &str) -> Result<ResolvedAgent> {
        let now = audit.now;
        self.change_agent(audit, id, |agent| {
            not_deleted(agent)?;
            if agent.expires_at.is_some_and(|at| at <= now) {
                return Err(Error::FailedPrecondition(format!(
                    "agent {} expired; move its expire_time to the future with UpdateAgent first",
                    agent.id
                )));
            }
            if agent.state == AgentState::Active {
                return Err(Error::FailedPrecondition(format!(
                    "agent {} is already active",
                    agent.id
                )));
            }
            agent.state = AgentState::Active;
            agent.disabled_reason.clear();
            agent.last_reconfirm_at = now;
            agent.last_active_at = Some(agent.last_active_at.map_or(now, |at| at.max(now)));
            Ok(())
        })
        .await
    }

    pub async fn disable_agent(
        &self,
        audit: &AuditContext,
        id: &str,
        reason: String,
    ) -> Result<ResolvedAgent> {
        self.change_agent(audit, id, |agent| {
            not_deleted(agent)?;
            if !matches!(agent.state, AgentState::Active | AgentState::Created) {
                return Err(Error::FailedPrecondition(format!(
                    "agent {} is {}; only active or created agents can be disabled",
                    agent.id, agent.state
                )));
            }
            agent.state = AgentState::Disabled;
            agent.disabled_reason = reason;
            Ok(())
        })
        .await
    }

    pub async fn reconfirm_agent(&self, audit: &AuditContext, id: &str) -> Result<ResolvedAgent> {
        let now = audit.now;
        self.change_agent(audit, id, |agent| {
            not_deleted(agent)?;
            agent.last_reconfirm_at = now;
            Ok(())
        })
        .await
    }

    pub async fn add_principal(
        &self,
        audit: &AuditContext,
        agent_id: &str,
        relation: PrincipalRelation,
        principal: &str,
    ) -> Result<ResolvedAgent> {
        let mut tx = self.begin().await?;
        let previous = load_agent(&mut tx, agent_id).await?;
        not_deleted(&previous)?;
        insert_principal(&mut tx, agent_id, relation, principal).await?;
        if relation == PrincipalRelation::Sponsor {
            sqlx::query("UPDATE agents SET orphaned = 0 WHERE id = $1")
                .bind(agent_id)
                .execute(&mut *tx)
                .await?;
        }
        let mut agent = load_agent(&mut tx, agent_id).await?;
        agent.updated_at = audit.now;
        save_agent(&mut tx, &previous, &agent).await?;
        audit
            .record(&mut tx, "agent", agent_id, Some(&previous), Some(&agent))
            .await?;
        let resolved = resolve(&mut tx, agent).await?;
        tx.commit().await?;
        Ok(resolved)
    }

    /// Removes `principal` as `relation` from one agent or from all. Agents left without a
    /// sponsor go to `reassign_to` if given, and are otherwise orphaned with an alert.
    pub async fn remove_principal(
        &self,
        audit: &AuditContext,
        agent_id: Option<&str>,
        relation: PrincipalRelation,
        principal: &str,
        reassign_to: Option<&str>,
    ) -> Result<PrincipalRemoval> {
        let mut tx = self.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT p.agent_id FROM agent_principals p JOIN agents a ON a.id = p.agent_id \
             WHERE p.relation = $1 AND p.principal = $2 AND ($3 = '' OR p.agent_id = $3) \
             AND a.state <> 'deleted' ORDER BY p.agent_id",
        )
        .bind(relation.as_str())
        .bind(principal)
        .bind(agent_id.unwrap_or_default())
        .fetch_all(&mut *tx)
        .await?;
        if let Some(agent_id) = agent_id
            && ids.is_empty()
        {
            load_agent(&mut tx, agent_id).await?;
            return Err(Error::FailedPrecondition(format!(
                "{principal:?} is not a {relation} of agent {agent_id}"
            )));
        }
        let mut removal = PrincipalRemoval::default();
        for id in ids {
            let previous = load_agent(&mut tx, &id).await?;
            sqlx::query(
                "DELETE FROM agent_principals WHERE agent_id = $1 AND relation = $2 \
                 AND principal = $3",
            )
            .bind(&id)
            .bind(relation.as_str())
            .bind(principal)
            .execute(&mut *tx)
            .await?;
            let mut agent = load_agent(&mut tx, &id).await?;
            let left_empty = match relation {
                PrincipalRelation::Sponsor => agent.sponsors.is_empty(),
                PrincipalRelation::Owner => agent.owners.is_empty(),
            };
            if left_empty {
                if let Some(successor) = reassign_to {
                    insert_principal(&mut tx, &id, relation, successor).await?;
                    removal.reassigned.push(id.clone());
                } else if relation == PrincipalRelation::Sponsor {
                    let message = format!(
                        "agent {} ({}) has no sponsor left after {principal:?} was removed",
                        agent.name, agent.id
                    );
                    raise_alert(&mut tx, audit.now, AlertKind::Orphaned, &id, &message).await?;
                    removal.orphaned.push(id.clone());
                }
                agent = load_agent(&mut tx, &id).await?;
            }
            agent.updated_at = audit.now;
            save_agent(&mut tx, &previous, &agent).await?;
            audit
                .record(&mut tx, "agent", &id, Some(&previous), Some(&agent))
                .await?;
            removal.agent_ids.push(id);
        }
        tx.commit().await?;
        Ok(removal)
    }

    pub async fn list_alerts(&self, agent_id: Option<&str>) -> Result<Vec<Alert>> {
        let rows = sqlx::query(
            "SELECT id, kind, agent_id, message, created_at FROM alerts \
             WHERE ($1 = '' OR agent_id = $1) ORDER BY id DESC",
        )
        .bind(agent_id.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(Alert {
                    id: row.try_get("id")?,
                    kind: AlertKind::parse(&kind)
                        .ok_or_else(|| super::corrupt("alert kind", &kind))?,
                    agent_id: row.try_get("agent_id")?,
                    message: row.try_get("message")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// One governance pass at `audit.now`. Each change is its own transaction with its audit
    /// event; a change another replica made first is skipped.
    pub async fn sweep(&self, audit: &AuditContext) -> Result<SweepReport> {
        let now = audit.now;
        let mut report = SweepReport::default();
        let agents = self
            .list_agents(&super::registry::AgentFilter::default())
            .await?;
        for resolved in agents {
            let agent = &resolved.agent;
            let settings = resolved.effective_governance;
            let live = matches!(
                agent.state,
                AgentState::Created | AgentState::Active | AgentState::Disabled
            );
            let expired = live && agent.expires_at.is_some_and(|at| at <= now);
            let overdue = agent.state == AgentState::Active
                && settings.reconfirm_every_days > 0
                && agent.last_reconfirm_at + i64::from(settings.reconfirm_every_days) * DAY <= now;
            let inactive = agent.state == AgentState::Active
                && settings.inactivity_disable_days > 0
                && agent.last_active_at.unwrap_or(agent.created_at)
                    + i64::from(settings.inactivity_disable_days) * DAY
                    <= now;
            let change = if expired {
                Some((
                    AgentState::Expired,
                    AlertKind::Expired,
                    "expired".to_owned(),
                    &mut report.expired_agents,
                ))
            } else if overdue {
                Some((
                    AgentState::Disabled,
                    AlertKind::ReconfirmationOverdue,
                    format!(
                        "not reconfirmed within {} days",
                        settings.reconfirm_every_days
                    ),
                    &mut report.reconfirmation_disabled,
                ))
            } else if inactive {
                Some((
                    AgentState::Disabled,
                    AlertKind::Inactive,
                    format!("inactive for {} days", settings.inactivity_disable_days),
                    &mut report.inactive_disabled,
                ))
            } else {
                None
            };
            if let Some((state, kind, reason, list)) = change {
                let mut tx = self.begin().await?;
                let previous = load_agent(&mut tx, &agent.id).await?;
                if previous.revision != agent.revision {
                    continue; // Changed since we looked: the next sweep decides again.
                }
                let mut next = previous.clone();
                next.state = state;
                next.disabled_reason = if state == AgentState::Disabled {
                    reason.clone()
                } else {
                    String::new()
                };
                next.updated_at = now;
                match save_agent(&mut tx, &previous, &next).await {
                    Err(Error::Conflict(_)) => continue,
                    other => other?,
                }
                let message = format!("agent {} ({}): {reason}", agent.name, agent.id);
                raise_alert(&mut tx, now, kind, &agent.id, &message).await?;
                audit
                    .record(&mut tx, "agent", &agent.id, Some(&previous), Some(&next))
                    .await?;
                tx.commit().await?;
                list.push(agent.id.clone());
            }
            if agent.sponsors.is_empty() {
                let mut tx = self.begin().await?;
                let message = format!("agent {} ({}) has no sponsor", agent.name, agent.id);
                if raise_alert(&mut tx, now, AlertKind::Orphaned, &agent.id, &message).await? {
                    report.orphaned.push(agent.id.clone());
                }
                tx.commit().await?;
            }
        }
        access::sweep(self, audit, &mut report).await?;
        Ok(report)
    }
}
