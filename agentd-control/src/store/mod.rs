//! Storage: one module with domain types at its interface, over `SQLite` (default) or `PostgreSQL`
//! through sqlx's `Any` driver. Every mutation runs in one transaction together with its audit
//! event, so a change is stored with its audit record or not at all.

pub mod access;
mod audit;
mod audit_chain;
pub mod auth;
pub mod authorities;
pub mod credentials;
mod governance;
pub mod hosts;
pub mod policies;
pub mod registry;
pub mod risk;

use std::{borrow::Cow, str::FromStr as _, time::Duration};

use serde::{Serialize, de::DeserializeOwned};
use sqlx::{
    AnyConnection, AnyPool,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::{Migration, MigrationType, Migrator},
};

pub use self::audit::AuditContext;
use crate::error::{Error, Result};

/// Which database a URL selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `sqlite:` URLs select `SQLite`, `postgres:` and `postgresql:` URLs `PostgreSQL`.
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            Err(Error::invalid(
                "database URL",
                "must start with sqlite: or postgres:",
            ))
        }
    }

    fn migrations(self) -> &'static [(i64, &'static str, &'static str)] {
        match self {
            Self::Sqlite => &[
                (
                    1,
                    "init",
                    include_str!("../../migrations/sqlite/0001_init.sql"),
                ),
                (
                    2,
                    "conditional access",
                    include_str!("../../migrations/sqlite/0002_conditional_access.sql"),
                ),
                (
                    3,
                    "audit chain",
                    include_str!("../../migrations/sqlite/0003_audit_chain.sql"),
                ),
                (
                    4,
                    "host identity",
                    include_str!("../../migrations/sqlite/0004_host_identity.sql"),
                ),
                (
                    5,
                    "hostname claim",
                    include_str!("../../migrations/sqlite/0005_hostname_claim.sql"),
                ),
                (
                    6,
                    "jwt keys",
                    include_str!("../../migrations/sqlite/0006_jwt_keys.sql"),
                ),
                (
                    7,
                    "jwt key rotation",
                    include_str!("../../migrations/sqlite/0007_jwt_key_rotation.sql"),
                ),
                (
                    8,
                    "ca rotation",
                    include_str!("../../migrations/sqlite/0008_ca_rotation.sql"),
                ),
            ],
            Self::Postgres => &[
                (
                    1,
                    "init",
                    include_str!("../../migrations/postgres/0001_init.sql"),
                ),
                (
                    2,
                    "conditional access",
                    include_str!("../../migrations/postgres/0002_conditional_access.sql"),
                ),
                (
                    3,
                    "audit chain",
                    include_str!("../../migrations/postgres/0003_audit_chain.sql"),
                ),
                (
                    4,
                    "host identity",
                    include_str!("../../migrations/postgres/0004_host_identity.sql"),
                ),
                (
                    5,
                    "hostname claim",
                    include_str!("../../migrations/postgres/0005_hostname_claim.sql"),
                ),
                (
                    6,
                    "jwt keys",
                    include_str!("../../migrations/postgres/0006_jwt_keys.sql"),
                ),
                (
                    7,
                    "jwt key rotation",
                    include_str!("../../migrations/postgres/0007_jwt_key_rotation.sql"),
                ),
                (
                    8,
                    "ca rotation",
                    include_str!("../../migrations/postgres/0008_ca_rotation.sql"),
                ),
            ],
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects and applies pending migrations. `SQLite` files are created if missing and run in
    /// WAL mode with `synchronous=FULL`: an acknowledged write survives a crash of the process.
    /// `PostgreSQL` migrations take an advisory lock, so replicas may start together.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_at_schema(url, i64::MAX).await
    }

    /// Connects and applies the migrations up to `version` only: for tests of upgrades from an
    /// older schema.
    #[doc(hidden)]
    pub async fn connect_at_schema(url: &str, version: i64) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        if backend == Backend::Sqlite {
            create_private_file(url)?;
        }
        let mut url = url.to_owned();
        if backend == Backend::Sqlite && !url.contains("mode=") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let options = AnyConnectOptions::from_str(&url)?;
        let pool_options = match backend {
            // One writer at a time is SQLite's model; one connection avoids lock upgrades
            // failing with SQLITE_BUSY between our own transactions.
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                }),
            Backend::Postgres => AnyPoolOptions::new().max_connections(8),
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let store = Self { pool, backend };
        store.migrate(version).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self, up_to: i64) -> Result<()> {
        let migrations: Vec<Migration> = self
            .backend
            .migrations()
            .iter()
            .filter(|(version, _, _)| *version <= up_to)
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        let migrator = Migrator {
            migrations: Cow::Owned(migrations),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// A transaction for a change. On `SQLite` it takes the write lock at `BEGIN IMMEDIATE`
    /// (waiting up to the busy timeout for another writer), so that a transaction that reads
    /// and then writes never finds its snapshot stale at its first write (`SQLITE_BUSY_SNAPSHOT`,
    /// which no busy timeout retries) when another connection or replica wrote in between.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates a missing `SQLite` file readable by its owner only (it holds the CA key and token
/// hashes); `SQLite` gives its -wal and -shm files the same mode.
fn create_private_file(url: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.starts_with(':') || std::path::Path::new(path).exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .or_else(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(Error::Database(sqlx::Error::Io(err))),
        })
}

type Conn = AnyConnection;

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain types serialize to JSON")
}

fn from_json<T: DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|source| Error::Corrupt { what, source })
}

fn corrupt(what: &'static str, value: &str) -> Error {
    Error::Corrupt {
        what,
        source: serde::de::Error::custom(format!("unknown value {value:?}")),
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::Backend;

    /// Table name → column names, from the `CREATE TABLE` statements of a migration.
    fn tables(sql: &str) -> BTreeMap<String, Vec<String>> {
        let mut tables = BTreeMap::new();
        let mut current: Option<(String, Vec<String>)> = None;
        for line in sql.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("CREATE TABLE ") {
                let name = rest.split_whitespace().next().expect("table name");
                current = Some((name.to_owned(), Vec::new()));
            } else if line.starts_with(");") {
                if let Some((name, columns)) = current.take() {
                    tables.insert(name, columns);
                }
            } else if let Some((_, columns)) = &mut current {
                let first = line.split_whitespace().next().unwrap_or_default();
                let is_column = !first.is_empty()
                    && !first.starts_with("--")
                    && first.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && !matches!(first, "primary" | "unique");
                if is_column && first != "PRIMARY" {
                    columns.push(first.to_owned());
                }
            }
        }
        tables
    }

    #[test]
    fn both_backends_migrate_to_the_same_tables_and_columns() {
        let sqlite = Backend::Sqlite.migrations();
        let postgres = Backend::Postgres.migrations();
        assert_eq!(sqlite.len(), postgres.len(), "same number of migrations");
        for ((v1, d1, s1), (v2, d2, s2)) in sqlite.iter().zip(postgres) {
            assert_eq!((v1, d1), (v2, d2));
            let (lite, pg) = (tables(s1), tables(s2));
            if *v1 == 1 {
                assert!(lite.len() >= 10, "parsed the tables: {lite:?}");
                assert!(
                    lite["agents"].contains(&"revision".to_owned()),
                    "parsed the columns: {lite:?}"
                );
            }
            let alters = |sql: &str| -> Vec<String> {
                sql.lines()
                    .filter(|line| line.starts_with("ALTER TABLE"))
                    .map(str::to_owned)
                    .collect()
            };
            if *v1 != 1 {
                assert!(
                    !lite.is_empty() || !alters(s1).is_empty(),
                    "parsed the tables or alterations of migration {v1}"
                );
            }
            assert_eq!(
                alters(s1),
                alters(s2),
                "migration {v1}: ALTER TABLE statements"
            );
            assert_eq!(
                lite, pg,
                "migration {v1} differs between SQLite and PostgreSQL"
            );
        }
    }

    #[test]
    fn urls_select_the_backend() {
        assert_eq!(
            Backend::from_url("sqlite:///x.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("postgres://u@h/d").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/d").ok(),
            Some(Backend::Postgres)
        );
        assert!(Backend::from_url("mysql://u@h/d").is_err());
    }
}
