//! Hosts: join tokens, enrolment, heartbeats, agent reports, revocation, and the stored CA.

use std::collections::HashMap;

use sqlx::{Row as _, any::AnyRow};

use super::{
    AuditContext, Conn, Store,
    auth::{hash_secret, insert_token, new_secret},
    from_json, is_unique_violation, new_id, to_json,
};
use crate::{
    error::{Error, Result},
    model::{Host, JoinToken, Role},
};

/// Hosts per statement when settling decision versions in a batch (four parameters each in
/// the upsert: well under `SQLite`'s and `PostgreSQL`'s limits).
const SETTLE_CHUNK: usize = 200;

/// `$first, $first+1, ...`: `count` numbered parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const HOST_COLUMNS: &str = "id, hostname, agentd_version, enrolled_at, last_heartbeat_at, \
     revoked_at, revoke_reason, labels, applied_decision_version, applied_at";

async fn host_from_row(conn: &mut Conn, row: &AnyRow) -> Result<Host> {
    let id: String = row.try_get("id")?;
    let agent_ids =
        sqlx::query_scalar("SELECT agent_id FROM host_agents WHERE host_id = $1 ORDER BY agent_id")
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(Host {
        id,
        hostname: row.try_get("hostname")?,
        agentd_version: row.try_get("agentd_version")?,
        enrolled_at: row.try_get("enrolled_at")?,
        last_heartbeat_at: row.try_get("last_heartbeat_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revoke_reason: row.try_get("revoke_reason")?,
        agent_ids,
        labels: from_json("host labels", &row.try_get::<String, _>("labels")?)?,
        applied_decision_version: row.try_get("applied_decision_version")?,
        applied_at: row.try_get("applied_at")?,
    })
}

async fn load_host(conn: &mut Conn, id: &str) -> Result<Host> {
    let row = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "host",
            id: id.to_owned(),
        })?;
    host_from_row(conn, &row).await
}

/// What a host's decisions depend on (see [`Store::active_host_facts`]).
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub id: String,
    pub hostname: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What a join token binds the host it enrols to.
#[derive(Clone, Debug, Default)]
pub struct JoinBinding {
    /// The only hostname the token enrols; empty: any.
    pub hostname: String,
    /// Labels the enrolled host gets.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The join token with this secret, if it is unused and unexpired at `now`.
async fn usable_join_token(conn: &mut Conn, join_token: &str, now: i64) -> Result<JoinToken> {
    let row = sqlx::query(
        "SELECT id, description, created_at, expires_at, used_at, used_by, hostname, labels \
             FROM join_tokens WHERE token_hash = $1",
    )
    .bind(hash_secret(join_token))
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::Unauthenticated("join token is not valid".into()))?;
    let previous = JoinToken {
        id: row.try_get("id")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        used_by: row.try_get("used_by")?,
        hostname: row.try_get("hostname")?,
        labels: from_json("join token labels", &row.try_get::<String, _>("labels")?)?,
    };
    if let (Some(at), Some(by)) = (previous.used_at, &previous.used_by) {
        return Err(Error::Unauthenticated(format!(
            "join token {} was already used (by host {by} at {}); create a new one",
            previous.id,
            crate::clock::format_time(at)
        )));
    }
    if previous.expires_at <= now {
        return Err(Error::Unauthenticated(format!(
            "join token {} expired at {}; create a new one",
            previous.id,
            crate::clock::format_time(previous.expires_at)
        )));
    }
    Ok(previous)
}

/// The identity rules of enrolment: the token's hostname if it names one, a hostname no host
/// that is not revoked has, and never another host's id (policies may name hosts by id).
async fn check_hostname(conn: &mut Conn, token: &JoinToken, hostname: &str) -> Result<()> {
    if !token.hostname.is_empty() && token.hostname != hostname {
        return Err(Error::PermissionDenied(format!(
            "join token {} enrols only hostname {:?}, not {hostname:?}",
            token.id, token.hostname
        )));
    }
    let ids: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hosts WHERE id = $1")
        .bind(hostname)
        .fetch_one(&mut *conn)
        .await?;
    if ids > 0 {
        return Err(Error::invalid(
            "hostname",
            format!("{hostname:?} is the id of another host; a hostname may not be a host id"),
        ));
    }
    let live: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM hosts WHERE hostname = $1 AND revoked_at IS NULL")
            .bind(hostname)
            .fetch_one(&mut *conn)
            .await?;
    if live > 0 {
        // Re-enrolling a name means revoking the host that holds it first.
        return Err(Error::AlreadyExists {
            kind: "enrolled hostname",
            id: hostname.to_owned(),
        });
    }
    Ok(())
}

/// What enrolment hands the new host.
#[derive(Clone, Debug)]
pub struct Enrolment {
    pub host: Host,
    /// Bearer token with the host role (shown once).
    pub host_token: String,
}

impl Store {
    /// Creates a single-use join token valid for `ttl_seconds`; returns it with its secret.
    pub async fn create_join_token(
        &self,
        audit: &AuditContext,
        ttl_seconds: i64,
        description: &str,
        binding: JoinBinding,
    ) -> Result<(JoinToken, String)> {
        let secret = new_secret("agentd-join");
        let token = JoinToken {
            id: new_id(),
            description: description.to_owned(),
            hostname: binding.hostname,
            labels: binding.labels,
            created_at: audit.now,
            expires_at: audit.now + ttl_seconds,
            used_at: None,
            used_by: None,
        };
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO join_tokens (id, token_hash, description, created_at, expires_at, \
             hostname, labels) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(hash_secret(&secret))
        .bind(&token.description)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(&token.hostname)
        .bind(to_json(&token.labels))
        .execute(&mut *tx)
        .await?;
        audit
            .record(&mut tx, "join_token", &token.id, None::<&()>, Some(&token))
            .await?;
        tx.commit().await?;
        Ok((token, secret))
    }

    /// Spends a join token and registers the host. The token is consumed atomically (a
    /// conditional update), so two replicas cannot both accept it. `issue` runs inside the
    /// transaction with the new host id (to sign its certificate); if it fails, nothing is
    /// stored and the token stays unused.
    pub async fn enroll_host<T>(
        &self,
        audit: &AuditContext,
        join_token: &str,
        hostname: &str,
        agentd_version: &str,
        issue: impl FnOnce(&str) -> Result<(T, Option<String>)> + Send,
    ) -> Result<(Enrolment, T)> {
        let mut tx = self.begin().await?;
        let previous = usable_join_token(&mut tx, join_token, audit.now).await?;
        check_hostname(&mut tx, &previous, hostname).await?;
        let host_id = new_id();
        let (issued, cert_serial) = issue(&host_id)?;
        let spent = sqlx::query(
            "UPDATE join_tokens SET used_at = $2, used_by = $3 WHERE id = $1 AND used_at IS NULL",
        )
        .bind(&previous.id)
        .bind(audit.now)
        .bind(&host_id)
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() != 1 {
            return Err(Error::Unauthenticated(format!(
                "join token {} was already used",
                previous.id
            )));
        }
        let token = JoinToken {
            used_at: Some(audit.now),
            used_by: Some(host_id.clone()),
            ..previous.clone()
        };
        audit
            .record(
                &mut tx,
                "join_token",
                &token.id,
                Some(&previous),
                Some(&token),
            )
            .await?;
        let host = Host {
            id: host_id,
            hostname: hostname.to_owned(),
            agentd_version: agentd_version.to_owned(),
            enrolled_at: audit.now,
            last_heartbeat_at: None,
            revoked_at: None,
            revoke_reason: String::new(),
            agent_ids: Vec::new(),
            labels: previous.labels.clone(),
            applied_decision_version: 0,
            applied_at: None,
        };
        let inserted = sqlx::query(
            "INSERT INTO hosts (id, hostname, hostname_claim, agentd_version, enrolled_at, \
             cert_serial, labels) VALUES ($1, $2, $2, $3, $4, $5, $6)",
        )
        .bind(&host.id)
        .bind(&host.hostname)
        .bind(&host.agentd_version)
        .bind(host.enrolled_at)
        .bind(cert_serial)
        .bind(to_json(&host.labels))
        .execute(&mut *tx)
        .await;
        match inserted {
            // Another replica enrolled the same name since `check_hostname` looked.
            Err(err) if is_unique_violation(&err) => {
                return Err(Error::AlreadyExists {
                    kind: "enrolled hostname",
                    id: hostname.to_owned(),
                });
            }
            other => {
                other?;
            }
        }
        audit
            .record(&mut tx, "host", &host.id, None::<&()>, Some(&host))
            .await?;
        let (_, host_token) = insert_token(
            &mut tx,
            audit,
            &format!("host {hostname}"),
            Role::Host,
            &host.id,
        )
        .await?;
        tx.commit().await?;
        Ok((Enrolment { host, host_token }, issued))
    }

    pub async fn heartbeat(&self, host_id: &str, now: i64, agentd_version: &str) -> Result<()> {
        // Heartbeats are not audited: they change no configuration, only liveness.
        sqlx::query(
            "UPDATE hosts SET last_heartbeat_at = $2, \
             agentd_version = CASE WHEN $3 = '' THEN agentd_version ELSE $3 END \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(host_id)
        .bind(now)
        .bind(agentd_version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces the host's list of running agents and marks those agents active now (the
    /// inactivity rule reads that). Unknown agent ids are refused, naming the first.
    pub async fn report_agents(
        &self,
        audit: &AuditContext,
        host_id: &str,
        agent_ids: &[String],
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let previous = load_host(&mut tx, host_id).await?;
        for (index, agent_id) in agent_ids.iter().enumerate() {
            let known: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM agents WHERE id = $1 AND state <> 'deleted'",
            )
            .bind(agent_id)
            .fetch_one(&mut *tx)
            .await?;
            if known == 0 {
                return Err(Error::invalid(
                    format!("agent_ids[{index}]"),
                    format!("no registered agent has id {agent_id:?}"),
                ));
            }
        }
        sqlx::query("DELETE FROM host_agents WHERE host_id = $1")
            .bind(host_id)
            .execute(&mut *tx)
            .await?;
        for agent_id in agent_ids {
            sqlx::query(
                "INSERT INTO host_agents (host_id, agent_id, reported_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(host_id)
            .bind(agent_id)
            .bind(audit.now)
            .execute(&mut *tx)
            .await?;
            // Bumping the revision makes a concurrent governance sweep re-read the agent
            // instead of disabling it for an inactivity this report just ended.
            sqlx::query(
                "UPDATE agents SET last_active_at = $2, revision = revision + 1 WHERE id = $1",
            )
            .bind(agent_id)
            .bind(audit.now)
            .execute(&mut *tx)
            .await?;
        }
        let host = load_host(&mut tx, host_id).await?;
        if host.agent_ids != previous.agent_ids {
            audit
                .record(&mut tx, "host", host_id, Some(&previous), Some(&host))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Refuses (`PERMISSION_DENIED`, naming the first) any agent the host does not run as its
    /// last `ReportAgents` said: a host reports detections only for its own agents. An agent
    /// that is not registered is `INVALID_ARGUMENT`, as in [`Store::insert_detections`].
    pub async fn ensure_host_runs(&self, host_id: &str, agent_ids: &[String]) -> Result<()> {
        let running: Vec<String> =
            sqlx::query_scalar("SELECT agent_id FROM host_agents WHERE host_id = $1")
                .bind(host_id)
                .fetch_all(&self.pool)
                .await?;
        for (index, agent_id) in agent_ids.iter().enumerate() {
            if !running.contains(agent_id) {
                let known: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM agents WHERE id = $1 AND state <> 'deleted'",
                )
                .bind(agent_id)
                .fetch_one(&self.pool)
                .await?;
                if known == 0 {
                    return Err(Error::invalid(
                        format!("detections[{index}].agent_id"),
                        format!("no registered agent has id {agent_id:?}"),
                    ));
                }
                return Err(Error::PermissionDenied(format!(
                    "detections[{index}]: host {host_id} has not reported agent {agent_id} \
                     running (ReportAgents); a host reports detections only for its own agents"
                )));
            }
        }
        Ok(())
    }

    /// Replaces the host's labels (audited).
    pub async fn set_host_labels(
        &self,
        audit: &AuditContext,
        id: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Host> {
        let mut tx = self.begin().await?;
        let previous = load_host(&mut tx, id).await?;
        sqlx::query("UPDATE hosts SET labels = $2 WHERE id = $1")
            .bind(id)
            .bind(to_json(labels))
            .execute(&mut *tx)
            .await?;
        let host = load_host(&mut tx, id).await?;
        audit
            .record(&mut tx, "host", id, Some(&previous), Some(&host))
            .await?;
        tx.commit().await?;
        Ok(host)
    }

    /// Records the decision version a host applied (not audited: it changes no configuration).
    pub async fn ack_decisions(&self, host_id: &str, version: i64, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE hosts SET applied_decision_version = $2, applied_at = $3 \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(host_id)
        .bind(version)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// [`Store::ack_decisions`] for several hosts (host id, version, time) in one transaction.
    pub async fn ack_decisions_batch(&self, items: &[(String, i64, i64)]) -> Result<()> {
        let mut tx = self.begin().await?;
        for (host_id, version, now) in items {
            sqlx::query(
                "UPDATE hosts SET applied_decision_version = $2, applied_at = $3 \
                 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(host_id)
            .bind(*version)
            .bind(*now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The version of the host's current decision set: unchanged while `digest` (of its
    /// content) is, otherwise a new one from the control-plane-wide counter. Returns the
    /// version and when it was issued.
    pub async fn settle_decisions(
        &self,
        host_id: &str,
        digest: &str,
        now: i64,
    ) -> Result<(i64, i64)> {
        let mut tx = self.begin().await?;
        let settled = settle_in(&mut tx, host_id, digest, now).await?;
        tx.commit().await?;
        Ok(settled)
    }

    /// [`Store::settle_decisions`] for several hosts (host id, digest, time) in one
    /// transaction: one commit, and so one sync to disk, for all of them. The same as settling
    /// each in turn (versions are allocated in the order given), in a few statements per
    /// batch instead of four per host: one read of the hosts' current versions, one bump of
    /// the counter by the number of new versions, and multi-row upserts.
    pub async fn settle_decisions_batch(
        &self,
        items: &[(&str, &str, i64)],
    ) -> Result<Vec<(i64, i64)>> {
        let mut tx = self.begin().await?;
        // Each host's current (version, digest, issued_at), as settling in turn sees it.
        let mut current: HashMap<&str, (i64, String, i64)> = HashMap::new();
        let mut hosts: Vec<&str> = items.iter().map(|(host, _, _)| *host).collect();
        hosts.sort_unstable();
        hosts.dedup();
        for chunk in hosts.chunks(SETTLE_CHUNK) {
            let sql = format!(
                "SELECT host_id, version, digest, issued_at FROM host_decisions \
                 WHERE host_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for host in chunk {
                query = query.bind(*host);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let host: String = row.try_get("host_id")?;
                if let Some(host) = chunk.iter().find(|h| **h == host) {
                    current.insert(
                        host,
                        (
                            row.try_get("version")?,
                            row.try_get("digest")?,
                            row.try_get("issued_at")?,
                        ),
                    );
                }
            }
        }
        let new_versions = {
            let mut seen = current.clone();
            let mut count = 0i64;
            for (host, digest, now) in items {
                if seen.get(host).is_none_or(|(_, have, _)| have != digest) {
                    count += 1;
                    seen.insert(host, (0, (*digest).to_owned(), *now));
                }
            }
            count
        };
        let mut next = 0;
        if new_versions > 0 {
            sqlx::query("UPDATE decision_counter SET version = version + $1 WHERE id = 1")
                .bind(new_versions)
                .execute(&mut *tx)
                .await?;
            let last: i64 = sqlx::query_scalar("SELECT version FROM decision_counter WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            next = last - new_versions + 1;
        }
        let mut settled = Vec::with_capacity(items.len());
        // The hosts whose row changes, in the order of their last change.
        let mut changed: Vec<&str> = Vec::new();
        for (host, digest, now) in items {
            match current.get(host) {
                Some((version, have, issued_at)) if have == digest => {
                    settled.push((*version, *issued_at));
                }
                _ => {
                    current.insert(host, (next, (*digest).to_owned(), *now));
                    settled.push((next, *now));
                    next += 1;
                    changed.retain(|h| h != host);
                    changed.push(host);
                }
            }
        }
        for chunk in changed.chunks(SETTLE_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 4 + 1, 4)))
                .collect();
            let sql = format!(
                "INSERT INTO host_decisions (host_id, version, digest, issued_at) VALUES {} \
                 ON CONFLICT (host_id) DO UPDATE SET version = excluded.version, \
                 digest = excluded.digest, issued_at = excluded.issued_at",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for host in chunk {
                let (version, digest, issued_at) = &current[host];
                query = query
                    .bind(*host)
                    .bind(*version)
                    .bind(digest.as_str())
                    .bind(*issued_at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(settled)
    }

    /// A number that changes whenever anything decisions depend on may have changed: every
    /// audited mutation and every stored detection. Watchers poll it to see changes made by
    /// other replicas.
    pub async fn change_marker(&self) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(sequence), 0) FROM audit_events) AS audit, \
             (SELECT COALESCE(MAX(id), 0) FROM detections) AS detections",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("audit")?, row.try_get("detections")?))
    }

    /// The id, hostname and labels of every host that is not revoked: what decisions depend
    /// on, for all hosts in one query.
    pub async fn active_host_facts(&self) -> Result<Vec<HostFacts>> {
        let rows = sqlx::query("SELECT id, hostname, labels FROM hosts WHERE revoked_at IS NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(HostFacts {
                    id: row.try_get("id")?,
                    hostname: row.try_get("hostname")?,
                    labels: from_json("host labels", &row.try_get::<String, _>("labels")?)?,
                })
            })
            .collect()
    }

    pub async fn get_host(&self, id: &str) -> Result<Host> {
        let mut conn = self.pool.acquire().await?;
        load_host(&mut conn, id).await
    }

    pub async fn list_hosts(&self, include_revoked: bool) -> Result<Vec<Host>> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(&format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE $1 = 1 OR revoked_at IS NULL \
             ORDER BY hostname, id"
        ))
        .bind(i64::from(include_revoked))
        .fetch_all(&mut *conn)
        .await?;
        let mut hosts = Vec::with_capacity(rows.len());
        for row in &rows {
            hosts.push(host_from_row(&mut conn, row).await?);
        }
        Ok(hosts)
    }

    /// Revokes a host and every token it holds; its next call is refused.
    pub async fn revoke_host(&self, audit: &AuditContext, id: &str, reason: &str) -> Result<Host> {
        let mut tx = self.begin().await?;
        let previous = load_host(&mut tx, id).await?;
        if previous.revoked_at.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "host {id} is already revoked"
            )));
        }
        sqlx::query("UPDATE hosts SET revoked_at = $2, revoke_reason = $3 WHERE id = $1")
            .bind(id)
            .bind(audit.now)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE role = 'host' AND principal = $1 \
             AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(audit.now)
        .execute(&mut *tx)
        .await?;
        let host = load_host(&mut tx, id).await?;
        audit
            .record(&mut tx, "host", id, Some(&previous), Some(&host))
            .await?;
        tx.commit().await?;
        Ok(host)
    }

    /// Whether the host exists and is not revoked (checked on every mTLS call).
    pub async fn host_is_active(&self, id: &str) -> Result<bool> {
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM hosts WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(matches!(revoked, Some(None)))
    }
}

/// Settles one host's decision version inside `tx` (see [`Store::settle_decisions`]).
async fn settle_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    host_id: &str,
    digest: &str,
    now: i64,
) -> Result<(i64, i64)> {
    let current =
        sqlx::query("SELECT version, digest, issued_at FROM host_decisions WHERE host_id = $1")
            .bind(host_id)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(row) = &current
        && row.try_get::<String, _>("digest")? == digest
    {
        return Ok((row.try_get("version")?, row.try_get("issued_at")?));
    }
    sqlx::query("UPDATE decision_counter SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM decision_counter WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO host_decisions (host_id, version, digest, issued_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (host_id) DO UPDATE \
         SET version = excluded.version, digest = excluded.digest, \
         issued_at = excluded.issued_at",
    )
    .bind(host_id)
    .bind(version)
    .bind(digest)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok((version, now))
}
