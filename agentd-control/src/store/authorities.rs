//! The control plane's certificate authorities, shared by every replica: each with its
//! certificate and key, when it was created, from when it signs and when it was retired
//! (`crate::authorities` has the rules; a retired CA's key is erased).

use sqlx::Row as _;

use super::{AuditContext, Conn, Store};
use crate::{
    clock::UnixTime,
    error::{Error, Result},
};

/// One CA as the database keeps it.
#[derive(Clone, Debug)]
pub struct StoredCa {
    /// 16 hex digits, random.
    pub id: String,
    pub cert_pem: String,
    /// PEM; empty once retired.
    pub key_pem: String,
    pub created_at: UnixTime,
    /// From when it signs (the newest activated CA signs); trusted from `created_at`.
    pub activates_at: UnixTime,
    /// From when it is no longer trusted.
    pub retired_at: Option<UnixTime>,
}

/// A new CA to store.
#[derive(Clone, Copy, Debug)]
pub struct NewCa<'a> {
    pub id: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    pub activates_at: UnixTime,
}

/// Every CA, retired ones too, in the order they sign (by activation).
async fn load(conn: &mut Conn) -> Result<Vec<StoredCa>> {
    let rows = sqlx::query(
        "SELECT id, cert_pem, key_pem, created_at, activates_at, retired_at \
         FROM certificate_authorities ORDER BY activates_at, created_at, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredCa {
                id: row.try_get("id")?,
                cert_pem: row.try_get("cert_pem")?,
                key_pem: row.try_get("key_pem")?,
                created_at: row.try_get("created_at")?,
                activates_at: row.try_get("activates_at")?,
                retired_at: row.try_get("retired_at")?,
            })
        })
        .collect()
}

fn summary(ca: &NewCa<'_>) -> serde_json::Value {
    serde_json::json!({
        "id": ca.id,
        "cert_pem": ca.cert_pem,
        "activates_at": ca.activates_at,
    })
}

impl Store {
    /// Every CA, retired ones too, in the order they sign.
    pub async fn certificate_authorities(&self) -> Result<Vec<StoredCa>> {
        load(&mut *self.pool.acquire().await?).await
    }

    /// Stores `ca` with an audit event as `audit.action` (its certificate and activation, never
    /// the key), unless `check`, which sees every CA as the transaction does, refuses: then
    /// nothing is stored. `check` returning `Ok(false)` skips the insertion without an error
    /// (a bootstrap another replica made first).
    pub async fn store_ca(
        &self,
        audit: &AuditContext,
        ca: NewCa<'_>,
        check: impl FnOnce(&[StoredCa]) -> Result<bool>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        if !check(&load(&mut tx).await?)? {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO certificate_authorities \
             (id, cert_pem, key_pem, created_at, activates_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(ca.id)
        .bind(ca.cert_pem)
        .bind(ca.key_pem)
        .bind(audit.now)
        .bind(ca.activates_at)
        .execute(&mut *tx)
        .await?;
        audit
            .record(
                &mut tx,
                "certificate_authority",
                ca.id,
                None::<&()>,
                Some(&summary(&ca)),
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Retires the CA `id`: no longer trusted, its key erased, audited. `check` sees every CA
    /// as the transaction does and may refuse. Returns the retired CA.
    pub async fn retire_ca(
        &self,
        audit: &AuditContext,
        id: &str,
        check: impl FnOnce(&[StoredCa]) -> Result<()>,
    ) -> Result<StoredCa> {
        let mut tx = self.begin().await?;
        let all = load(&mut tx).await?;
        let Some(ca) = all.iter().find(|ca| ca.id == id) else {
            return Err(Error::NotFound {
                kind: "certificate authority",
                id: id.to_owned(),
            });
        };
        if let Some(at) = ca.retired_at {
            return Err(Error::FailedPrecondition(format!(
                "certificate authority {id} was retired at {at} (Unix time)"
            )));
        }
        check(&all)?;
        let updated = sqlx::query(
            "UPDATE certificate_authorities SET retired_at = $1, key_pem = '' \
             WHERE id = $2 AND retired_at IS NULL",
        )
        .bind(audit.now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(Error::Conflict(format!(
                "certificate authority {id} changed meanwhile; try again"
            )));
        }
        let retired = StoredCa {
            key_pem: String::new(),
            retired_at: Some(audit.now),
            ..ca.clone()
        };
        audit
            .record(
                &mut tx,
                "certificate_authority",
                id,
                Some(&serde_json::json!({ "id": id, "activates_at": ca.activates_at })),
                Some(&serde_json::json!({ "id": id, "retired_at": audit.now })),
            )
            .await?;
        tx.commit().await?;
        Ok(retired)
    }
}
