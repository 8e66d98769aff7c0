//! Access packages: time-bound grants of resources with approval stages.

use sqlx::{Row as _, any::AnyRow};

use super::{AuditContext, Conn, Store, corrupt, from_json, new_id, registry::load_agent, to_json};
pub use crate::duties::Approver;
use crate::{
    clock::UnixTime,
    duties::{Decision, check_decider},
    error::{Error, Result},
    model::{
        AccessPackage, AccessPackageState, AgentState, ApprovalStage, NewAccessPackage, SweepReport,
    },
};

const COLUMNS: &str = "id, agent_id, spec, stages, state, starts_at, expires_at, requested_by, created_at, updated_at";

fn from_row(row: &AnyRow) -> Result<AccessPackage> {
    let state: String = row.try_get("state")?;
    Ok(AccessPackage {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        spec: from_json("access package spec", &row.try_get::<String, _>("spec")?)?,
        stages: from_json("approval stages", &row.try_get::<String, _>("stages")?)?,
        state: AccessPackageState::parse(&state)
            .ok_or_else(|| corrupt("access package state", &state))?,
        starts_at: row.try_get("starts_at")?,
        expires_at: row.try_get("expires_at")?,
        requested_by: row.try_get("requested_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn load(conn: &mut Conn, id: &str) -> Result<AccessPackage> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM access_packages WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::NotFound {
        kind: "access package",
        id: id.to_owned(),
    })?;
    from_row(&row)
}

/// Writes state, stages and `updated_at`, provided the state is still `expected` (another
/// replica's sweep may have moved it).
async fn save(
    conn: &mut Conn,
    package: &AccessPackage,
    expected: AccessPackageState,
) -> Result<()> {
    let written = sqlx::query(
        "UPDATE access_packages SET stages = $2, state = $3, updated_at = $4 \
         WHERE id = $1 AND state = $5",
    )
    .bind(&package.id)
    .bind(to_json(&package.stages))
    .bind(package.state.as_str())
    .bind(package.updated_at)
    .bind(expected.as_str())
    .execute(&mut *conn)
    .await?;
    if written.rows_affected() != 1 {
        return Err(Error::Conflict(format!(
            "access package {} was changed concurrently; retry",
            package.id
        )));
    }
    Ok(())
}

/// The state an approved package is in at `now`.
fn settled(package: &AccessPackage, now: UnixTime) -> AccessPackageState {
    if package.expires_at <= now {
        AccessPackageState::Expired
    } else if package.starts_at <= now {
        AccessPackageState::Active
    } else {
        AccessPackageState::Approved
    }
}

impl Store {
    pub async fn request_access_package(
        &self,
        audit: &AuditContext,
        requested_by: &str,
        new: NewAccessPackage,
    ) -> Result<AccessPackage> {
        let now = audit.now;
        let starts_at = new.starts_at.unwrap_or(now);
        if new.expires_at <= starts_at {
            return Err(Error::invalid(
                "expire_time",
                "must be after start_time (default: now)",
            ));
        }
        if new.expires_at <= now {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        let mut tx = self.begin().await?;
        let agent = load_agent(&mut tx, &new.agent_id)
            .await
            .map_err(|err| match err {
                Error::NotFound { .. } => {
                    Error::invalid("agent_id", format!("no agent has id {:?}", new.agent_id))
                }
                other => other,
            })?;
        if matches!(agent.state, AgentState::Deleted | AgentState::Expired) {
            return Err(Error::FailedPrecondition(format!(
                "agent {} is {}",
                agent.id, agent.state
            )));
        }
        let mut package = AccessPackage {
            id: new_id(),
            agent_id: new.agent_id,
            spec: new.spec,
            stages: new
                .approvers
                .into_iter()
                .map(|approver| ApprovalStage {
                    approver,
                    approved_by: None,
                    approved_at: None,
                })
                .collect(),
            state: AccessPackageState::Pending,
            starts_at,
            expires_at: new.expires_at,
            requested_by: requested_by.to_owned(),
            created_at: now,
            updated_at: now,
        };
        if package.stages.is_empty() {
            package.state = settled(&package, now);
        }
        sqlx::query(&format!(
            "INSERT INTO access_packages ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&package.id)
        .bind(&package.agent_id)
        .bind(to_json(&package.spec))
        .bind(to_json(&package.stages))
        .bind(package.state.as_str())
        .bind(package.starts_at)
        .bind(package.expires_at)
        .bind(&package.requested_by)
        .bind(package.created_at)
        .bind(package.updated_at)
        .execute(&mut *tx)
        .await?;
        audit
            .record(
                &mut tx,
                "access_package",
                &package.id,
                None::<&()>,
                Some(&package),
            )
            .await?;
        tx.commit().await?;
        Ok(package)
    }

    /// Applies `change` to a package in one transaction with its audit event.
    async fn change_access_package(
        &self,
        audit: &AuditContext,
        id: &str,
        change: impl FnOnce(&mut AccessPackage) -> Result<()> + Send,
    ) -> Result<AccessPackage> {
        let mut tx = self.begin().await?;
        let previous = load(&mut tx, id).await?;
        let mut package = previous.clone();
        change(&mut package)?;
        package.updated_at = audit.now;
        save(&mut tx, &package, previous.state).await?;
        audit
            .record(
                &mut tx,
                "access_package",
                id,
                Some(&previous),
                Some(&package),
            )
            .await?;
        tx.commit().await?;
        Ok(package)
    }

    /// Approves the current stage; the last approval makes the package APPROVED (or ACTIVE
    /// once its start time has come).
    pub async fn approve_access_package(
        &self,
        audit: &AuditContext,
        id: &str,
        approver: Approver<'_>,
    ) -> Result<AccessPackage> {
        let now = audit.now;
        self.change_access_package(audit, id, |package| {
            if package.expires_at <= now {
                return Err(Error::FailedPrecondition(format!(
                    "access package {} expired; request a new one",
                    package.id
                )));
            }
            let stage = current_stage(package, approver, Decision::Approve)?;
            package.stages[stage].approved_by = Some(approver.principal.to_owned());
            package.stages[stage].approved_at = Some(now);
            if package
                .stages
                .iter()
                .all(|stage| stage.approved_by.is_some())
            {
                package.state = settled(package, now);
            }
            Ok(())
        })
        .await
    }

    pub async fn deny_access_package(
        &self,
        audit: &AuditContext,
        id: &str,
        approver: Approver<'_>,
    ) -> Result<AccessPackage> {
        self.change_access_package(audit, id, |package| {
            current_stage(package, approver, Decision::Deny)?;
            package.state = AccessPackageState::Denied;
            Ok(())
        })
        .await
    }

    pub async fn revoke_access_package(
        &self,
        audit: &AuditContext,
        id: &str,
    ) -> Result<AccessPackage> {
        self.change_access_package(audit, id, |package| {
            if !matches!(
                package.state,
                AccessPackageState::Pending
                    | AccessPackageState::Approved
                    | AccessPackageState::Active
            ) {
                return Err(Error::FailedPrecondition(format!(
                    "access package {} is already {}",
                    package.id, package.state
                )));
            }
            package.state = AccessPackageState::Revoked;
            Ok(())
        })
        .await
    }

    /// The package as it stands at `now`: a grant past its expiry reads as expired even before
    /// the sweep stores (and audits) that.
    pub async fn get_access_package(&self, id: &str, now: UnixTime) -> Result<AccessPackage> {
        let mut conn = self.pool.acquire().await?;
        Ok(as_of(load(&mut conn, id).await?, now))
    }

    /// Packages as they stand at `now` (see `get_access_package`), filtered by that state.
    pub async fn list_access_packages(
        &self,
        agent_id: Option<&str>,
        state: Option<AccessPackageState>,
        now: UnixTime,
    ) -> Result<Vec<AccessPackage>> {
        Ok(self
            .stored_access_packages(agent_id)
            .await?
            .into_iter()
            .map(|package| as_of(package, now))
            .filter(|package| state.is_none_or(|state| package.state == state))
            .collect())
    }

    /// Packages as stored.
    async fn stored_access_packages(&self, agent_id: Option<&str>) -> Result<Vec<AccessPackage>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM access_packages WHERE ($1 = '' OR agent_id = $1) \
             ORDER BY created_at, id"
        ))
        .bind(agent_id.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }
}

/// What the package's state is at `now`, time-driven transitions applied.
fn as_of(mut package: AccessPackage, now: UnixTime) -> AccessPackage {
    package.state = match package.state {
        AccessPackageState::Pending if package.expires_at <= now => AccessPackageState::Expired,
        AccessPackageState::Approved | AccessPackageState::Active => settled(&package, now),
        state => state,
    };
    package
}

/// The index of the stage awaiting a decision, if `approver` may decide it.
fn current_stage(
    package: &AccessPackage,
    approver: Approver<'_>,
    decision: Decision,
) -> Result<usize> {
    if package.state != AccessPackageState::Pending {
        return Err(Error::FailedPrecondition(format!(
            "access package {} is {}, not pending",
            package.id, package.state
        )));
    }
    let stage = package
        .stages
        .iter()
        .position(|stage| stage.approved_by.is_none())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!("access package {} has no open stage", package.id))
        })?;
    check_decider(package, stage, approver, decision)?;
    Ok(stage)
}

/// The access-package half of the governance sweep: start what has started, expire (revoke)
/// what has expired.
pub(super) async fn sweep(
    store: &Store,
    audit: &AuditContext,
    report: &mut SweepReport,
) -> Result<()> {
    let now = audit.now;
    for package in store.stored_access_packages(None).await? {
        let next = match package.state {
            AccessPackageState::Pending if package.expires_at <= now => AccessPackageState::Expired,
            AccessPackageState::Approved | AccessPackageState::Active => settled(&package, now),
            _ => continue,
        };
        if next == package.state {
            continue;
        }
        let result = store
            .change_access_package(audit, &package.id, |current| {
                if current.state != package.state {
                    return Err(Error::Conflict("changed since the sweep read it".into()));
                }
                current.state = next;
                Ok(())
            })
            .await;
        match result {
            Ok(_) => match next {
                AccessPackageState::Expired => report.expired_access_packages.push(package.id),
                AccessPackageState::Active => report.activated_access_packages.push(package.id),
                _ => {}
            },
            Err(Error::Conflict(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccessPackageSpec, Resource, ResourceKind};

    fn package(state: AccessPackageState) -> AccessPackage {
        AccessPackage {
            id: "p".into(),
            agent_id: "a".into(),
            spec: AccessPackageSpec {
                resources: vec![Resource {
                    kind: ResourceKind::FilePath,
                    value: "/srv".into(),
                }],
                justification: "j".into(),
            },
            stages: Vec::new(),
            state,
            starts_at: 100,
            expires_at: 200,
            requested_by: "r".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn approved_packages_start_and_expire_on_time() {
        let approved = package(AccessPackageState::Approved);
        assert_eq!(
            as_of(approved.clone(), 99).state,
            AccessPackageState::Approved
        );
        assert_eq!(
            as_of(approved.clone(), 100).state,
            AccessPackageState::Active
        );
        assert_eq!(as_of(approved, 200).state, AccessPackageState::Expired);
    }

    #[test]
    fn pending_packages_expire_and_decided_ones_stay() {
        assert_eq!(
            as_of(package(AccessPackageState::Pending), 150).state,
            AccessPackageState::Pending
        );
        assert_eq!(
            as_of(package(AccessPackageState::Pending), 200).state,
            AccessPackageState::Expired
        );
        for state in [AccessPackageState::Denied, AccessPackageState::Revoked] {
            assert_eq!(as_of(package(state), 500).state, state);
        }
    }
}
