//! Entries of a policy's `conditions.hosts`: a host id or a hostname, never both at once.

use crate::error::{Error, Result};

/// An entry of `conditions.hosts`: `id:ID` or `name:HOSTNAME`; a bare entry is an id when it
/// is a UUID (host ids are), else a hostname.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostRef {
    Id(String),
    Name(String),
}

impl HostRef {
    /// Parses one entry (already checked to be 1 to 256 characters without spaces).
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        let (kind, rest) = match value.split_once(':') {
            Some(("id", rest)) => (Some(true), rest),
            Some(("name", rest)) => (Some(false), rest),
            Some(_) => {
                return Err(Error::invalid(
                    field,
                    format!("{value:?}: write id:HOST_ID or name:HOSTNAME (or a bare id or name)"),
                ));
            }
            None => (None, value),
        };
        if rest.is_empty() {
            return Err(Error::invalid(field, format!("{value:?} names no host")));
        }
        let is_id = kind.unwrap_or_else(|| uuid::Uuid::parse_str(rest).is_ok());
        Ok(if is_id {
            Self::Id(rest.to_owned())
        } else {
            Self::Name(rest.to_owned())
        })
    }

    /// Whether this entry names the host with `id` and `hostname`.
    #[must_use]
    pub fn matches(&self, id: &str, hostname: &str) -> bool {
        match self {
            Self::Id(want) => want == id,
            Self::Name(want) => want == hostname,
        }
    }
}

impl std::fmt::Display for HostRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "id:{id}"),
            Self::Name(name) => write!(f, "name:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5584eb25-0000-4000-8000-00000000000d";

    #[test]
    fn prefixed_entries_say_what_they_mean_and_bare_ones_keep_working() {
        let parse = |value: &str| HostRef::parse("f", value).expect(value);
        assert_eq!(parse("name:web-1"), HostRef::Name("web-1".into()));
        assert_eq!(parse(&format!("id:{ID}")), HostRef::Id(ID.into()));
        assert_eq!(parse("web-1"), HostRef::Name("web-1".into()));
        assert_eq!(parse(ID), HostRef::Id(ID.into()), "a bare UUID is an id");
        assert_eq!(parse(&format!("name:{ID}")), HostRef::Name(ID.into()));
    }

    #[test]
    fn an_id_entry_never_matches_a_hostname_and_a_name_entry_never_an_id() {
        let id = HostRef::Id(ID.into());
        let name = HostRef::Name(ID.into());
        assert!(id.matches(ID, "web-1"));
        assert!(
            !id.matches("other", ID),
            "a host named like an id is not that host"
        );
        assert!(name.matches("other", ID));
        assert!(!name.matches(ID, "web-1"));
    }

    #[test]
    fn unknown_prefixes_and_empty_names_are_refused() {
        for bad in ["ip:10.0.0.1", "id:", "name:"] {
            let err = HostRef::parse("conditions.hosts[0]", bad).unwrap_err();
            assert!(
                err.to_string().contains("conditions.hosts[0]"),
                "{bad}: {err}"
            );
        }
    }
}
