//! The control plane's error type and its mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field (e.g. `agent.sponsors[1]`) and what is wrong with it.
    #[error("field `{field}`: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// The request is valid but the target's state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change won; the caller may retry.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored {what} is malformed")]
    Corrupt {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("certificate authority: {0}")]
    Certificate(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Conflict(_) => Code::Aborted,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => Code::Unavailable,
            // A serialization failure or deadlock between concurrent writers (PostgreSQL
            // 40001, 40P01): a race the caller may retry, not a fault.
            Error::Database(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("40001" | "40P01")) =>
            {
                Code::Aborted
            }
            Error::Database(_)
            | Error::Migration(_)
            | Error::Corrupt { .. }
            | Error::Certificate(_) => Code::Internal,
        };
        if code == Code::Internal || code == Code::Unavailable {
            tracing::error!(error = ?err, "request failed");
        }
        let mut message = err.to_string();
        if let Error::Database(db) = &err {
            // Say what the database said (e.g. an aborted audit insert); no data is echoed.
            message = format!("database error: {db}");
        }
        Status::new(code, message)
    }
}
