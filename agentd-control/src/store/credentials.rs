//! Credentials issued to agents: whether a host runs an agent, the audit event of every
//! signing (the certificate's serial or token's id, SPIFFE ID and validity; never a key, which
//! stays on the host), the keys that sign JWT-SVIDs, and hosts' certificate renewals.

use serde::Serialize;
use sqlx::Row as _;

use super::{AuditContext, Conn, Store};
use crate::{
    clock::UnixTime,
    error::{Error, Result},
};

/// The JWS algorithm of every agent token (`crate::jwt`).
pub const JWT_ALGORITHM: &str = "ES256";

/// One JWT signing key as the database keeps it.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub kid: String,
    /// PKCS#8 PEM; empty once retired (the private key is erased).
    pub key_pem: String,
    pub created_at: UnixTime,
    /// From when it signs (the newest activated key signs); published from `created_at`.
    pub activates_at: UnixTime,
    /// From when it is no longer published.
    pub retired_at: Option<UnixTime>,
}

/// Every JWT signing key, retired ones too, in the order they sign (by activation).
async fn load_jwt_keys(conn: &mut Conn) -> Result<Vec<StoredKey>> {
    let rows = sqlx::query(
        "SELECT kid, key_pem, created_at, activates_at, retired_at FROM jwt_signing_keys \
         ORDER BY activates_at, created_at, kid",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredKey {
                kid: row.try_get("kid")?,
                key_pem: row.try_get("key_pem")?,
                created_at: row.try_get("created_at")?,
                activates_at: row.try_get("activates_at")?,
                retired_at: row.try_get("retired_at")?,
            })
        })
        .collect()
}

/// One credential signed for an agent, as the audit log records it.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedCredential {
    /// `x509-svid` or `jwt-svid`.
    pub kind: &'static str,
    pub agent_id: String,
    pub host_id: String,
    pub spiffe_id: String,
    /// The certificate's serial, or the token's `jti`.
    pub serial: String,
    /// A JWT-SVID's audiences; empty for an X.509-SVID.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
}

/// A signing the control plane refused, as its audit event records it.
#[derive(Clone, Debug, Serialize)]
pub struct RefusedCredential {
    /// `x509-svid` or `jwt-svid`.
    pub kind: &'static str,
    pub agent_id: String,
    pub host_id: String,
    /// The gRPC code and the reason the host was told.
    pub code: String,
    pub reason: String,
    /// Refusals of this host left out of the audit log since the last one recorded (at most
    /// ten a minute are recorded per host).
    #[serde(skip_serializing_if = "is_zero")]
    pub left_out_before: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if"
)]
fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// A host certificate's serial and expiry, as a renewal's audit event records them.
#[derive(Clone, Debug, Serialize)]
pub struct HostRenewal {
    pub cert_serial: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<UnixTime>,
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
        self.record_on_agent(audit, &issued.agent_id, issued).await
    }

    /// An audit event on `agent_id` with `current`, in a transaction of its own.
    async fn record_on_agent<C: Serialize + Sync>(
        &self,
        audit: &AuditContext,
        agent_id: &str,
        current: &C,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        audit
            .record(&mut tx, "agent", agent_id, None::<&()>, Some(current))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a host's renewed client certificate: its serial replaces the host's, with an
    /// audit event (the old and new serial and the expiry, never a key). A revoked host is
    /// refused: it cannot renew.
    pub async fn record_host_renewal(
        &self,
        audit: &AuditContext,
        host_id: &str,
        renewed: &HostRenewal,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let previous: Option<Option<String>> = sqlx::query_scalar(
            "SELECT cert_serial FROM hosts WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(host_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(previous) = previous else {
            return Err(Error::Unauthenticated(format!(
                "host {host_id} was revoked: it cannot renew its certificate"
            )));
        };
        sqlx::query("UPDATE hosts SET cert_serial = $2 WHERE id = $1")
            .bind(host_id)
            .bind(&renewed.cert_serial)
            .execute(&mut *tx)
            .await?;
        let before = HostRenewal {
            cert_serial: previous.unwrap_or_default(),
            not_after: None,
        };
        audit
            .record(&mut tx, "host", host_id, Some(&before), Some(renewed))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes the audit event of a refused signing (target: the agent asked for).
    pub async fn record_credential_refusal(
        &self,
        audit: &AuditContext,
        refused: &RefusedCredential,
    ) -> Result<()> {
        self.record_on_agent(audit, &refused.agent_id, refused)
            .await
    }

    /// Every JWT signing key, retired ones too, in the order they sign (by activation).
    pub async fn jwt_keys(&self) -> Result<Vec<StoredKey>> {
        load_jwt_keys(&mut *self.pool.acquire().await?).await
    }

    /// Stores a JWT signing key that signs from `activates_at`, with an audit event as
    /// `audit.action` (its `kid` and activation, never the key). A key already stored under
    /// this `kid` is kept as it is.
    pub async fn store_jwt_key(
        &self,
        audit: &AuditContext,
        kid: &str,
        key_pem: &str,
        activates_at: UnixTime,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO jwt_signing_keys (kid, key_pem, created_at, activates_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(kid)
        .bind(key_pem)
        .bind(audit.now)
        .bind(activates_at)
        .execute(&mut *tx)
        .await?;
        audit
            .record(
                &mut tx,
                "jwt_signing_key",
                kid,
                None::<&()>,
                Some(&serde_json::json!({
                    "kid": kid,
                    "algorithm": JWT_ALGORITHM,
                    "activates_at": activates_at,
                })),
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Retires the key `kid`: no longer published, its private key erased, audited. `check`
    /// sees every key as the transaction does and may refuse (the key that signs, a key whose
    /// tokens may still be valid). Returns the retired key.
    pub async fn retire_jwt_key(
        &self,
        audit: &AuditContext,
        kid: &str,
        check: impl FnOnce(&[StoredKey]) -> Result<()>,
    ) -> Result<StoredKey> {
        let mut tx = self.begin().await?;
        let keys = load_jwt_keys(&mut tx).await?;
        let Some(key) = keys.iter().find(|key| key.kid == kid) else {
            return Err(Error::NotFound {
                kind: "JWT signing key",
                id: kid.to_owned(),
            });
        };
        if let Some(at) = key.retired_at {
            return Err(Error::FailedPrecondition(format!(
                "JWT signing key {kid} was retired at {at} (Unix time)"
            )));
        }
        check(&keys)?;
        let updated = sqlx::query(
            "UPDATE jwt_signing_keys SET retired_at = $1, key_pem = '' \
             WHERE kid = $2 AND retired_at IS NULL",
        )
        .bind(audit.now)
        .bind(kid)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(Error::Conflict(format!(
                "JWT signing key {kid} changed meanwhile; try again"
            )));
        }
        let retired = StoredKey {
            key_pem: String::new(),
            retired_at: Some(audit.now),
            ..key.clone()
        };
        audit
            .record(
                &mut tx,
                "jwt_signing_key",
                kid,
                Some(&serde_json::json!({ "kid": kid, "activates_at": key.activates_at })),
                Some(&serde_json::json!({ "kid": kid, "retired_at": audit.now })),
            )
            .await?;
        tx.commit().await?;
        Ok(retired)
    }
}
