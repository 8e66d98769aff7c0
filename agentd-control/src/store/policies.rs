//! Conditional Access policies: the latest version of each in `policies`, every version in
//! `policy_versions`. Every change is audited in its transaction.

use sqlx::{Row as _, any::AnyRow};

use super::{AuditContext, Conn, Store, corrupt, is_unique_violation, new_id};
use crate::{
    error::{Error, Result},
    model::PolicyRecord,
    policy::{
        ActivePolicy, BASELINE_POLICY_NAME, BASELINE_POLICY_YAML, PolicyDocument, PolicyState,
        parse_document, parse_stored_document,
    },
};

const COLUMNS: &str = "p.id, p.name, p.managed, p.created_at, v.version, v.state, v.document, \
     v.created_at AS updated_at, v.created_by";

fn record_from_row(row: &AnyRow) -> Result<PolicyRecord> {
    let state: String = row.try_get("state")?;
    let yaml: String = row.try_get("document")?;
    let description = parse_stored_document(&yaml)
        .map(|doc| doc.description)
        .unwrap_or_default();
    Ok(PolicyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description,
        state: PolicyState::parse(&state).ok_or_else(|| corrupt("policy state", &state))?,
        version: row.try_get("version")?,
        yaml,
        managed: row.try_get::<i64, _>("managed")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        updated_by: row.try_get("created_by")?,
    })
}

/// Finds a policy by id or name; `version` 0 is the latest.
async fn load(conn: &mut Conn, id_or_name: &str, version: i64) -> Result<PolicyRecord> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM policies p JOIN policy_versions v ON v.policy_id = p.id \
         AND v.version = CASE WHEN $2 = 0 THEN p.version ELSE $2 END \
         WHERE p.id = $1 OR p.name = $1"
    ))
    .bind(id_or_name)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => record_from_row(&row),
        None if version != 0 => {
            // Say which part is missing: the policy or the version.
            Box::pin(load(conn, id_or_name, 0)).await?;
            Err(Error::NotFound {
                kind: "policy version",
                id: format!("{id_or_name}@{version}"),
            })
        }
        None => Err(Error::NotFound {
            kind: "policy",
            id: id_or_name.to_owned(),
        }),
    }
}

/// Refuses a change based on another version than the current one.
fn check_expected(current: &PolicyRecord, expected: Option<i64>) -> Result<()> {
    match expected {
        Some(expected) if expected != current.version => Err(stale(current, expected)),
        _ => Ok(()),
    }
}

fn stale(current: &PolicyRecord, expected: i64) -> Error {
    Error::Conflict(format!(
        "policy {} is at version {}, not the expected version {expected}; read it again and retry",
        current.name, current.version
    ))
}

/// After a conditional write matched no row: a concurrent change committed first. Names the
/// version that is current now.
async fn lost_race(conn: &mut Conn, previous: &PolicyRecord) -> Error {
    match load(conn, &previous.id, 0).await {
        Ok(current) => stale(&current, previous.version),
        Err(err) => err,
    }
}

/// What a new version follows: nothing (a new policy, by id) or the version read.
#[derive(Clone, Copy)]
enum Base<'a> {
    New(&'a str),
    After(&'a PolicyRecord),
}

/// Stores the version after `base`: moves `policies` from `base`'s version to the next (only
/// if it is still there: a concurrent writer that committed first wins, and this one gets
/// `Conflict`), then inserts the version's document. A name taken by another policy is
/// `AlreadyExists`.
async fn insert_version(
    conn: &mut Conn,
    audit: &AuditContext,
    base: Base<'_>,
    name: &str,
    state: PolicyState,
    yaml: &str,
) -> Result<()> {
    let (id, version) = match base {
        Base::New(id) => (id, 1),
        Base::After(previous) => (previous.id.as_str(), previous.version + 1),
    };
    let moved = sqlx::query(
        "UPDATE policies SET version = $2, state = $3, name = $4, updated_at = $5 \
         WHERE id = $1 AND version = $6",
    )
    .bind(id)
    .bind(version)
    .bind(state.as_str())
    .bind(name)
    .bind(audit.now)
    .bind(version - 1)
    .execute(&mut *conn)
    .await;
    match moved {
        Err(err) if is_unique_violation(&err) => {
            return Err(Error::AlreadyExists {
                kind: "policy",
                id: name.to_owned(),
            });
        }
        Ok(done) if done.rows_affected() == 0 => {
            return Err(match base {
                Base::After(previous) => lost_race(conn, previous).await,
                Base::New(_) => {
                    Error::Conflict(format!("policy {name} changed concurrently; retry"))
                }
            });
        }
        other => other?,
    };
    sqlx::query(
        "INSERT INTO policy_versions (policy_id, version, name, state, document, created_at, \
         created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(version)
    .bind(name)
    .bind(state.as_str())
    .bind(yaml)
    .bind(audit.now)
    .bind(&audit.actor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Stores a new policy at version 1.
    pub async fn create_policy(
        &self,
        audit: &AuditContext,
        document: &PolicyDocument,
        yaml: &str,
    ) -> Result<PolicyRecord> {
        self.insert_policy(audit, document, yaml, false).await
    }

    async fn insert_policy(
        &self,
        audit: &AuditContext,
        document: &PolicyDocument,
        yaml: &str,
        managed: bool,
    ) -> Result<PolicyRecord> {
        let id = new_id();
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO policies (id, name, state, version, managed, created_at, updated_at) \
             VALUES ($1, $2, $3, 0, $4, $5, $5)",
        )
        .bind(&id)
        .bind(&document.name)
        .bind(document.state.as_str())
        .bind(i64::from(managed))
        .bind(audit.now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(err) if is_unique_violation(&err) => {
                return Err(Error::AlreadyExists {
                    kind: "policy",
                    id: document.name.clone(),
                });
            }
            other => other?,
        };
        insert_version(
            &mut tx,
            audit,
            Base::New(&id),
            &document.name,
            document.state,
            yaml,
        )
        .await?;
        let record = load(&mut tx, &id, 0).await?;
        audit
            .record(&mut tx, "policy", &id, None::<&()>, Some(&record))
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Stores a new version of an existing policy with a new document. The document may rename
    /// the policy (the managed baseline keeps its name). With `expected`, only if the policy is
    /// still at that version; a concurrent update that commits first makes this one fail with
    /// `Conflict` either way.
    pub async fn update_policy(
        &self,
        audit: &AuditContext,
        id_or_name: &str,
        expected: Option<i64>,
        document: &PolicyDocument,
        yaml: &str,
    ) -> Result<PolicyRecord> {
        let mut tx = self.begin().await?;
        let previous = load(&mut tx, id_or_name, 0).await?;
        check_expected(&previous, expected)?;
        if previous.managed && document.name != previous.name {
            return Err(Error::invalid(
                "name",
                format!("the managed policy {} cannot be renamed", previous.name),
            ));
        }
        insert_version(
            &mut tx,
            audit,
            Base::After(&previous),
            &document.name,
            document.state,
            yaml,
        )
        .await?;
        let record = load(&mut tx, &previous.id, 0).await?;
        audit
            .record(
                &mut tx,
                "policy",
                &record.id,
                Some(&previous),
                Some(&record),
            )
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Stores a new version with the same document and another state.
    pub async fn set_policy_state(
        &self,
        audit: &AuditContext,
        id_or_name: &str,
        expected: Option<i64>,
        state: PolicyState,
    ) -> Result<PolicyRecord> {
        let mut tx = self.begin().await?;
        let previous = load(&mut tx, id_or_name, 0).await?;
        check_expected(&previous, expected)?;
        insert_version(
            &mut tx,
            audit,
            Base::After(&previous),
            &previous.name,
            state,
            &previous.yaml,
        )
        .await?;
        let record = load(&mut tx, &previous.id, 0).await?;
        audit
            .record(
                &mut tx,
                "policy",
                &record.id,
                Some(&previous),
                Some(&record),
            )
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Deletes a policy; its versions stay. The managed baseline cannot be deleted. With
    /// `expected`, only if the policy is still at that version.
    pub async fn delete_policy(
        &self,
        audit: &AuditContext,
        id_or_name: &str,
        expected: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let previous = load(&mut tx, id_or_name, 0).await?;
        check_expected(&previous, expected)?;
        if previous.managed {
            return Err(Error::FailedPrecondition(format!(
                "the managed policy {} cannot be deleted; set its state to disabled instead",
                previous.name
            )));
        }
        let deleted = sqlx::query("DELETE FROM policies WHERE id = $1 AND version = $2")
            .bind(&previous.id)
            .bind(previous.version)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(lost_race(&mut tx, &previous).await);
        }
        audit
            .record(
                &mut tx,
                "policy",
                &previous.id,
                Some(&previous),
                None::<&()>,
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_policy(&self, id_or_name: &str, version: i64) -> Result<PolicyRecord> {
        let mut conn = self.pool.acquire().await?;
        load(&mut conn, id_or_name, version).await
    }

    pub async fn list_policies(&self) -> Result<Vec<PolicyRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM policies p JOIN policy_versions v ON v.policy_id = p.id \
             AND v.version = p.version ORDER BY p.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    pub async fn list_policy_versions(&self, id_or_name: &str) -> Result<Vec<PolicyRecord>> {
        let mut conn = self.pool.acquire().await?;
        let latest = load(&mut conn, id_or_name, 0).await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM policies p JOIN policy_versions v ON v.policy_id = p.id \
             WHERE p.id = $1 ORDER BY v.version"
        ))
        .bind(&latest.id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Every policy at its latest version, parsed, in name order: the evaluator's input.
    pub async fn active_policies(&self) -> Result<Vec<ActivePolicy>> {
        self.list_policies()
            .await?
            .into_iter()
            .map(|record| {
                let document =
                    parse_stored_document(&record.yaml).map_err(|err| Error::Corrupt {
                        what: "policy document",
                        source: serde::de::Error::custom(format!("{}: {err}", record.name)),
                    })?;
                Ok(ActivePolicy {
                    id: record.id,
                    state: record.state,
                    document,
                })
            })
            .collect()
    }

    /// Creates the managed baseline policy if it has never been created (replicas may race:
    /// the unique name settles it).
    pub async fn ensure_baseline_policy(&self, now: i64) -> Result<()> {
        let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM policies WHERE managed = 1")
            .fetch_one(&self.pool)
            .await?;
        if exists > 0 {
            return Ok(());
        }
        let document = parse_document(BASELINE_POLICY_YAML)?;
        debug_assert_eq!(document.name, BASELINE_POLICY_NAME);
        let audit = AuditContext {
            actor: "agentd-control (managed baseline)".to_owned(),
            action: "CreatePolicy",
            now,
        };
        match self
            .insert_policy(&audit, &document, BASELINE_POLICY_YAML, true)
            .await
        {
            Err(Error::AlreadyExists { .. }) | Ok(_) => Ok(()),
            Err(err) => Err(err),
        }
    }
}
