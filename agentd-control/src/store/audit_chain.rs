//! The head of the audit chain (`audit_chain_head`, one row) and the append lock: every append
//! first bumps the head's entry count with an `UPDATE`, which on `PostgreSQL` holds the row lock
//! until the transaction ends and on `SQLite` runs under the database's single write lock. So two
//! writers never read the same head and the chain cannot fork; the digest is set at the end of
//! the append, inside the same transaction.

use sqlx::Row as _;

use super::Conn;
use crate::{
    audit_chain::{Content, Genesis, Head},
    error::Result,
};

/// Locks the head for this transaction and returns the new entry's chain index and the digest
/// it follows: the previous entry's, or for the first chained entry the genesis digest over
/// the entries written before the chain existed.
pub(super) async fn lock_head(conn: &mut Conn) -> Result<(i64, String)> {
    let row = sqlx::query(
        "UPDATE audit_chain_head SET entries = entries + 1 WHERE id = 1 RETURNING entries, digest",
    )
    .fetch_one(&mut *conn)
    .await?;
    let index: i64 = row.try_get("entries")?;
    let digest: String = row.try_get("digest")?;
    if index > 1 {
        return Ok((index, digest));
    }
    Ok((index, genesis(conn).await?))
}

/// The genesis digest: over every entry without a chain index, in sequence order.
async fn genesis(conn: &mut Conn) -> Result<String> {
    let rows = sqlx::query(
        "SELECT sequence, at, actor, action, target_type, target_id, previous, current \
         FROM audit_events WHERE chain_index IS NULL ORDER BY sequence",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut genesis = Genesis::default();
    for row in &rows {
        let (actor, action, target_type, target_id): (String, String, String, String) = (
            row.try_get("actor")?,
            row.try_get("action")?,
            row.try_get("target_type")?,
            row.try_get("target_id")?,
        );
        let previous: Option<String> = row.try_get("previous")?;
        let current: Option<String> = row.try_get("current")?;
        genesis.push(
            row.try_get("sequence")?,
            &Content {
                at: row.try_get("at")?,
                actor: &actor,
                action: &action,
                target_type: &target_type,
                target_id: &target_id,
                previous: previous.as_deref(),
                current: current.as_deref(),
            },
        );
    }
    Ok(genesis.digest())
}

/// Records the digest of the entry just appended as the head's.
pub(super) async fn set_head(conn: &mut Conn, digest: &str) -> Result<()> {
    sqlx::query("UPDATE audit_chain_head SET digest = $1 WHERE id = 1")
        .bind(digest)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn read_head(conn: &mut Conn) -> Result<Head> {
    let row = sqlx::query("SELECT entries, digest FROM audit_chain_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Head {
        entries: row.try_get("entries")?,
        digest: row.try_get("digest")?,
    })
}
