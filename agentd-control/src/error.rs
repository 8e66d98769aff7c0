//! The control plane's error type and its mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field (e.g. `agent.sponsors[1]`) and what is wrong with it.
    #[error("field `{field}`: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{kind} {} not found", quoted(.id))]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {} already exists", quoted(.id))]
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

/// How many characters of a bad value an error message quotes.
pub const QUOTED_CHARS: usize = 64;

/// `value` quoted for an error message (as `{:?}` would), cut to its first [`QUOTED_CHARS`]
/// characters with an ellipsis: errors never echo more than that of what a caller sent.
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => {
            let mut text = format!("{:?}", &value[..end]);
            text.insert(text.len() - 1, '…');
            text
        }
    }
}

/// `text` cut to its first `max` characters with an ellipsis (for messages of other libraries
/// that may quote input, such as the YAML deserializer's).
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_cut_to_a_bounded_prefix() {
        assert_eq!(quoted("short"), "\"short\"");
        let long = "é".repeat(10_000);
        let text = quoted(&long);
        assert_eq!(text, format!("\"{}…\"", "é".repeat(QUOTED_CHARS)));
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        assert_eq!(bounded("abcdef", 3), "abc…");
        assert_eq!(bounded("abc", 3), "abc");
    }
}
