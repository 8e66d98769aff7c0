//! Blueprints and agents.

use sqlx::{Row as _, any::AnyRow};

use super::{AuditContext, Conn, Store, corrupt, from_json, is_unique_violation, new_id, to_json};
use crate::{
    clock::DAY,
    error::{Error, Result},
    model::{
        Agent, AgentState, AgentUpdate, Blueprint, BlueprintSpec, NewAgent, OfflineBehavior,
        PrincipalRelation, ResolvedAgent,
    },
};

const AGENT_COLUMNS: &str = "id, name, description, blueprint, attributes, metadata, governance, \
     offline_behavior, state, disabled_reason, expires_at, last_reconfirm_at, last_active_at, \
     created_at, updated_at";

/// Filters of `list_agents`; `None` matches everything (and a `None` state everything but
/// deleted agents).
#[derive(Clone, Debug, Default)]
pub struct AgentFilter {
    pub blueprint: Option<String>,
    pub state: Option<AgentState>,
    pub principal: Option<String>,
}

fn blueprint_from_row(row: &AnyRow) -> Result<Blueprint> {
    Ok(Blueprint {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        spec: from_json("blueprint spec", &row.try_get::<String, _>("spec")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) async fn load_blueprint(conn: &mut Conn, name: &str) -> Result<Option<Blueprint>> {
    let row = sqlx::query(
        "SELECT name, description, spec, created_at, updated_at FROM blueprints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(blueprint_from_row).transpose()
}

async fn agent_from_row(conn: &mut Conn, row: &AnyRow) -> Result<Agent> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let offline: String = row.try_get("offline_behavior")?;
    let principals = sqlx::query(
        "SELECT relation, principal FROM agent_principals WHERE agent_id = $1 \
         ORDER BY relation, principal",
    )
    .bind(&id)
    .fetch_all(&mut *conn)
    .await?;
    let mut sponsors = Vec::new();
    let mut owners = Vec::new();
    for principal in &principals {
        let relation: String = principal.try_get("relation")?;
        let name: String = principal.try_get("principal")?;
        match PrincipalRelation::parse(&relation) {
            Some(PrincipalRelation::Sponsor) => sponsors.push(name),
            Some(PrincipalRelation::Owner) => owners.push(name),
            None => return Err(corrupt("principal relation", &relation)),
        }
    }
    Ok(Agent {
        id,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        blueprint: row.try_get("blueprint")?,
        attributes: from_json("agent attributes", &row.try_get::<String, _>("attributes")?)?,
        metadata: from_json("agent metadata", &row.try_get::<String, _>("metadata")?)?,
        sponsors,
        owners,
        state: AgentState::parse(&state).ok_or_else(|| corrupt("agent state", &state))?,
        disabled_reason: row.try_get("disabled_reason")?,
        governance: from_json("agent governance", &row.try_get::<String, _>("governance")?)?,
        offline_behavior: OfflineBehavior::parse(&offline)
            .ok_or_else(|| corrupt("offline behavior", &offline))?,
        expires_at: row.try_get("expires_at")?,
        last_reconfirm_at: row.try_get("last_reconfirm_at")?,
        last_active_at: row.try_get("last_active_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revision: row.try_get("revision")?,
    })
}

pub(super) async fn load_agent(conn: &mut Conn, id: &str) -> Result<Agent> {
    let row = sqlx::query(&format!(
        "SELECT {AGENT_COLUMNS}, revision FROM agents WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::NotFound {
        kind: "agent",
        id: id.to_owned(),
    })?;
    agent_from_row(conn, &row).await
}

pub(super) async fn resolve(conn: &mut Conn, agent: Agent) -> Result<ResolvedAgent> {
    let blueprint = load_blueprint(conn, &agent.blueprint)
        .await?
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "agent {} refers to missing blueprint {:?}",
                agent.id, agent.blueprint
            ))
        })?;
    Ok(ResolvedAgent::resolve(agent, &blueprint.spec))
}

/// Writes the agent's mutable columns (not its principals), provided no other transaction
/// (on this replica or another) changed the agent since `previous` was read.
pub(super) async fn save_agent(conn: &mut Conn, previous: &Agent, agent: &Agent) -> Result<()> {
    let written = sqlx::query(
        "UPDATE agents SET description = $2, attributes = $3, metadata = $4, governance = $5, \
         offline_behavior = $6, state = $7, disabled_reason = $8, expires_at = $9, \
         last_reconfirm_at = $10, last_active_at = $11, updated_at = $12, \
         revision = revision + 1 WHERE id = $1 AND revision = $13",
    )
    .bind(&agent.id)
    .bind(&agent.description)
    .bind(to_json(&agent.attributes))
    .bind(to_json(&agent.metadata))
    .bind(to_json(&agent.governance))
    .bind(agent.offline_behavior.as_str())
    .bind(agent.state.as_str())
    .bind(&agent.disabled_reason)
    .bind(agent.expires_at)
    .bind(agent.last_reconfirm_at)
    .bind(agent.last_active_at)
    .bind(agent.updated_at)
    .bind(previous.revision)
    .execute(&mut *conn)
    .await?;
    if written.rows_affected() != 1 {
        return Err(Error::Conflict(format!(
            "agent {} was changed concurrently; retry",
            agent.id
        )));
    }
    Ok(())
}

pub(super) async fn insert_principal(
    conn: &mut Conn,
    agent_id: &str,
    relation: PrincipalRelation,
    principal: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO agent_principals (agent_id, relation, principal) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(agent_id)
    .bind(relation.as_str())
    .bind(principal)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    pub async fn create_blueprint(
        &self,
        audit: &AuditContext,
        name: String,
        description: String,
        spec: BlueprintSpec,
    ) -> Result<Blueprint> {
        let mut tx = self.begin().await?;
        if load_blueprint(&mut tx, &name).await?.is_some() {
            return Err(Error::AlreadyExists {
                kind: "blueprint",
                id: name,
            });
        }
        let blueprint = Blueprint {
            name,
            description,
            spec,
            created_at: audit.now,
            updated_at: audit.now,
        };
        sqlx::query(
            "INSERT INTO blueprints (name, description, spec, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&blueprint.name)
        .bind(&blueprint.description)
        .bind(to_json(&blueprint.spec))
        .bind(blueprint.created_at)
        .bind(blueprint.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                Error::AlreadyExists {
                    kind: "blueprint",
                    id: blueprint.name.clone(),
                }
            } else {
                err.into()
            }
        })?;
        audit
            .record(
                &mut tx,
                "blueprint",
                &blueprint.name,
                None::<&()>,
                Some(&blueprint),
            )
            .await?;
        tx.commit().await?;
        Ok(blueprint)
    }

    pub async fn get_blueprint(&self, name: &str) -> Result<Blueprint> {
        let mut conn = self.pool.acquire().await?;
        load_blueprint(&mut conn, name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "blueprint",
                id: name.to_owned(),
            })
    }

    pub async fn list_blueprints(&self) -> Result<Vec<Blueprint>> {
        let rows = sqlx::query(
            "SELECT name, description, spec, created_at, updated_at FROM blueprints ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(blueprint_from_row).collect()
    }

    pub async fn update_blueprint(
        &self,
        audit: &AuditContext,
        name: &str,
        description: String,
        spec: BlueprintSpec,
    ) -> Result<Blueprint> {
        let mut tx = self.begin().await?;
        let previous = load_blueprint(&mut tx, name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "blueprint",
                id: name.to_owned(),
            })?;
        let blueprint = Blueprint {
            description,
            spec,
            updated_at: audit.now,
            ..previous.clone()
        };
        sqlx::query(
            "UPDATE blueprints SET description = $2, spec = $3, updated_at = $4 WHERE name = $1",
        )
        .bind(name)
        .bind(&blueprint.description)
        .bind(to_json(&blueprint.spec))
        .bind(blueprint.updated_at)
        .execute(&mut *tx)
        .await?;
        audit
            .record(
                &mut tx,
                "blueprint",
                name,
                Some(&previous),
                Some(&blueprint),
            )
            .await?;
        tx.commit().await?;
        Ok(blueprint)
    }

    pub async fn delete_blueprint(&self, audit: &AuditContext, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let previous = load_blueprint(&mut tx, name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "blueprint",
                id: name.to_owned(),
            })?;
        let users: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM agents WHERE blueprint = $1 AND state <> 'deleted'",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if users > 0 {
            return Err(Error::FailedPrecondition(format!(
                "blueprint {name:?} is used by {users} agent(s); delete or move them first"
            )));
        }
        let deleted_users: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE blueprint = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        if deleted_users > 0 {
            return Err(Error::FailedPrecondition(format!(
                "blueprint {name:?} is still referenced by {deleted_users} deleted agent record(s), kept for the audit trail"
            )));
        }
        sqlx::query("DELETE FROM blueprints WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        audit
            .record(&mut tx, "blueprint", name, Some(&previous), None::<&()>)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_agent(&self, audit: &AuditContext, new: NewAgent) -> Result<ResolvedAgent> {
        let mut tx = self.begin().await?;
        let blueprint = load_blueprint(&mut tx, &new.blueprint)
            .await?
            .ok_or_else(|| {
                Error::invalid(
                    "blueprint",
                    format!("no blueprint is named {:?}", new.blueprint),
                )
            })?;
        let taken: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE name = $1")
            .bind(&new.name)
            .fetch_one(&mut *tx)
            .await?;
        if taken > 0 {
            return Err(Error::AlreadyExists {
                kind: "agent",
                id: new.name,
            });
        }
        let lifetime = new
            .governance
            .inherit(blueprint.spec.governance)
            .lifetime_days;
        let expires_at = new
            .expires_at
            .or((lifetime > 0).then(|| audit.now + i64::from(lifetime) * DAY));
        let owners = if new.owners.is_empty() {
            new.sponsors.clone()
        } else {
            new.owners
        };
        let agent = Agent {
            id: new_id(),
            name: new.name,
            description: new.description,
            blueprint: new.blueprint,
            attributes: new.attributes,
            metadata: new.metadata,
            sponsors: new.sponsors,
            owners,
            state: AgentState::Created,
            disabled_reason: String::new(),
            governance: new.governance,
            offline_behavior: OfflineBehavior::Inherit,
            expires_at,
            last_reconfirm_at: audit.now,
            last_active_at: None,
            created_at: audit.now,
            updated_at: audit.now,
            revision: 0,
        };
        sqlx::query(&format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .bind(&agent.id)
        .bind(&agent.name)
        .bind(&agent.description)
        .bind(&agent.blueprint)
        .bind(to_json(&agent.attributes))
        .bind(to_json(&agent.metadata))
        .bind(to_json(&agent.governance))
        .bind(agent.offline_behavior.as_str())
        .bind(agent.state.as_str())
        .bind(&agent.disabled_reason)
        .bind(agent.expires_at)
        .bind(agent.last_reconfirm_at)
        .bind(agent.last_active_at)
        .bind(agent.created_at)
        .bind(agent.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                Error::AlreadyExists {
                    kind: "agent",
                    id: agent.name.clone(),
                }
            } else {
                err.into()
            }
        })?;
        for sponsor in &agent.sponsors {
            insert_principal(&mut tx, &agent.id, PrincipalRelation::Sponsor, sponsor).await?;
        }
        for owner in &agent.owners {
            insert_principal(&mut tx, &agent.id, PrincipalRelation::Owner, owner).await?;
        }
        audit
            .record(&mut tx, "agent", &agent.id, None::<&()>, Some(&agent))
            .await?;
        tx.commit().await?;
        Ok(ResolvedAgent::resolve(agent, &blueprint.spec))
    }

    pub async fn get_agent(&self, id: &str) -> Result<ResolvedAgent> {
        let mut conn = self.pool.acquire().await?;
        let agent = load_agent(&mut conn, id).await?;
        resolve(&mut conn, agent).await
    }

    pub async fn list_agents(&self, filter: &AgentFilter) -> Result<Vec<ResolvedAgent>> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS}, revision FROM agents WHERE ($1 = '' OR blueprint = $1) \
             AND (($2 = '' AND state <> 'deleted') OR state = $2) \
             AND ($3 = '' OR id IN (SELECT agent_id FROM agent_principals WHERE principal = $3)) \
             ORDER BY name"
        ))
        .bind(filter.blueprint.clone().unwrap_or_default())
        .bind(filter.state.map(AgentState::as_str).unwrap_or_default())
        .bind(filter.principal.clone().unwrap_or_default())
        .fetch_all(&mut *conn)
        .await?;
        let mut agents = Vec::with_capacity(rows.len());
        for row in &rows {
            let agent = agent_from_row(&mut conn, row).await?;
            agents.push(resolve(&mut conn, agent).await?);
        }
        Ok(agents)
    }

    /// Applies `change` to the agent inside one transaction and records the audit event.
    /// `change` may refuse with an error, and nothing is written.
    pub(crate) async fn change_agent(
        &self,
        audit: &AuditContext,
        id: &str,
        change: impl FnOnce(&mut Agent) -> Result<()> + Send,
    ) -> Result<ResolvedAgent> {
        let mut tx = self.begin().await?;
        let previous = load_agent(&mut tx, id).await?;
        let mut agent = previous.clone();
        change(&mut agent)?;
        agent.updated_at = audit.now;
        save_agent(&mut tx, &previous, &agent).await?;
        audit
            .record(&mut tx, "agent", id, Some(&previous), Some(&agent))
            .await?;
        let resolved = resolve(&mut tx, agent).await?;
        tx.commit().await?;
        Ok(resolved)
    }

    pub async fn update_agent(
        &self,
        audit: &AuditContext,
        update: AgentUpdate,
    ) -> Result<ResolvedAgent> {
        let AgentUpdate {
            id,
            description,
            attributes,
            metadata,
            governance,
            expires_at,
            offline_behavior,
        } = update;
        self.change_agent(audit, &id, |agent| {
            if agent.state == AgentState::Deleted {
                return Err(Error::FailedPrecondition(format!(
                    "agent {} is deleted",
                    agent.id
                )));
            }
            agent.description = description;
            agent.attributes = attributes;
            agent.metadata = metadata;
            agent.governance = governance;
            agent.expires_at = expires_at;
            agent.offline_behavior = offline_behavior;
            Ok(())
        })
        .await
    }

    pub async fn delete_agent(&self, audit: &AuditContext, id: &str) -> Result<ResolvedAgent> {
        self.change_agent(audit, id, |agent| {
            if agent.state == AgentState::Deleted {
                return Err(Error::FailedPrecondition(format!(
                    "agent {} is already deleted",
                    agent.id
                )));
            }
            agent.state = AgentState::Deleted;
            Ok(())
        })
        .await
    }
}
