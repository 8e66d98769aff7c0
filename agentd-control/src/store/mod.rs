//! Storage: one module with domain types at its interface, over `SQLite` (default) or `PostgreSQL`
//! through sqlx's `Any` driver. Every mutation runs in one transaction together with its audit
//! event, so a change is stored with its audit record or not at all.

pub mod access;
mod audit;
pub mod auth;
mod governance;
pub mod hosts;
pub mod registry;

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
            Self::Sqlite => &[(
                1,
                "init",
                include_str!("../../migrations/sqlite/0001_init.sql"),
            )],
            Self::Postgres => &[(
                1,
                "init",
                include_str!("../../migrations/postgres/0001_init.sql"),
            )],
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
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
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
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<()> {
        let migrations: Vec<Migration> = self
            .backend
            .migrations()
            .iter()
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

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(self.pool.begin().await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
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
