//! API tokens: stored as SHA-256 hashes; the token itself is shown once.

use sha2::{Digest as _, Sha256};
use sqlx::{Row as _, any::AnyRow};

use super::{AuditContext, Conn, Store, corrupt, new_id};
use crate::{
    error::{Error, Result},
    model::{ApiToken, Role},
};

/// A fresh secret: 244 random bits from two v4 UUIDs, with a prefix that says what it is.
pub(super) fn new_secret(prefix: &str) -> String {
    format!(
        "{prefix}_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub(super) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn from_row(row: &AnyRow) -> Result<ApiToken> {
    let role: String = row.try_get("role")?;
    Ok(ApiToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| corrupt("token role", &role))?,
        principal: row.try_get("principal")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// The caller a valid token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    pub principal: String,
}

impl Caller {
    /// How the caller appears in the audit log.
    pub fn actor(&self) -> String {
        format!("{} ({})", self.principal, self.role)
    }
}

pub(super) async fn insert_token(
    conn: &mut Conn,
    audit: &AuditContext,
    name: &str,
    role: Role,
    principal: &str,
) -> Result<(ApiToken, String)> {
    let secret = new_secret("agentd");
    let token = ApiToken {
        id: new_id(),
        name: name.to_owned(),
        role,
        principal: principal.to_owned(),
        created_at: audit.now,
        revoked_at: None,
    };
    sqlx::query(
        "INSERT INTO api_tokens (id, name, role, principal, token_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&token.id)
    .bind(&token.name)
    .bind(token.role.as_str())
    .bind(&token.principal)
    .bind(hash_secret(&secret))
    .bind(token.created_at)
    .execute(&mut *conn)
    .await?;
    audit
        .record(
            &mut *conn,
            "api_token",
            &token.id,
            None::<&()>,
            Some(&token),
        )
        .await?;
    Ok((token, secret))
}

impl Store {
    /// Creates a token; returns it with its secret (shown once).
    pub async fn create_api_token(
        &self,
        audit: &AuditContext,
        name: &str,
        role: Role,
        principal: &str,
    ) -> Result<(ApiToken, String)> {
        let mut tx = self.begin().await?;
        let created = insert_token(&mut tx, audit, name, role, principal).await?;
        tx.commit().await?;
        Ok(created)
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(
            "SELECT id, name, role, principal, created_at, revoked_at FROM api_tokens \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn revoke_api_token(&self, audit: &AuditContext, id: &str) -> Result<ApiToken> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT id, name, role, principal, created_at, revoked_at FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "api token",
            id: id.to_owned(),
        })?;
        let previous = from_row(&row)?;
        if previous.revoked_at.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "api token {id} is already revoked"
            )));
        }
        let token = ApiToken {
            revoked_at: Some(audit.now),
            ..previous.clone()
        };
        sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1")
            .bind(id)
            .bind(audit.now)
            .execute(&mut *tx)
            .await?;
        audit
            .record(&mut tx, "api_token", id, Some(&previous), Some(&token))
            .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Looks a bearer token up. Revoked tokens, and tokens of revoked hosts, are refused.
    pub async fn authenticate(&self, secret: &str) -> Result<Caller> {
        let row = sqlx::query(
            "SELECT t.id, t.role, t.principal, t.revoked_at, h.revoked_at AS host_revoked_at \
             FROM api_tokens t LEFT JOIN hosts h ON t.role = 'host' AND h.id = t.principal \
             WHERE t.token_hash = $1",
        )
        .bind(hash_secret(secret))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::Unauthenticated("unknown API token".into()))?;
        let revoked: Option<i64> = row.try_get("revoked_at")?;
        let host_revoked: Option<i64> = row.try_get("host_revoked_at")?;
        let role: String = row.try_get("role")?;
        let caller = Caller {
            token_id: row.try_get("id")?,
            role: Role::parse(&role).ok_or_else(|| corrupt("token role", &role))?,
            principal: row.try_get("principal")?,
        };
        if host_revoked.is_some() {
            return Err(Error::Unauthenticated(format!(
                "host {} has been revoked",
                caller.principal
            )));
        }
        if revoked.is_some() {
            return Err(Error::Unauthenticated(format!(
                "API token {} has been revoked",
                caller.token_id
            )));
        }
        Ok(caller)
    }
}
