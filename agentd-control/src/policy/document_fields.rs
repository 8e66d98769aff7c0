//! The checks every section of a policy document shares: identifiers and list lengths, with
//! errors that name the field.

use crate::error::{Error, quoted};

pub(super) type Result<T> = std::result::Result<T, Error>;

pub(super) const MAX_LIST: usize = 1000;

pub(super) fn identifier(field: &str, value: &str) -> Result<String> {
    if value.is_empty() || value.len() > 63 {
        return Err(Error::invalid(field, "must be 1 to 63 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || value.starts_with('-')
    {
        return Err(Error::invalid(
            field,
            format!(
                "{} may contain only a-z, 0-9 and - (not first)",
                quoted(value)
            ),
        ));
    }
    Ok(value.to_owned())
}

pub(super) fn check_len(field: &str, len: usize) -> Result<()> {
    if len > MAX_LIST {
        return Err(Error::invalid(
            field,
            format!("has more than {MAX_LIST} entries"),
        ));
    }
    Ok(())
}
