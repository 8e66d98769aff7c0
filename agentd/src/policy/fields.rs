//! The vocabulary of policy checks, shared by the host policy's agent, network and file
//! sections: a problem named by its field path, and the rule of names and rule ids.

use std::{collections::HashSet, fmt};

/// One problem in a policy: the field that has it and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A rule id's problem, if it has one: invalid characters or length, or a duplicate of one in
/// `seen`. `at` is the rule's field path.
pub(crate) fn check_rule_id(id: &str, at: &str, seen: &mut HashSet<String>) -> Option<FieldError> {
    let reason = if !valid_name(id) {
        format!("{id:?} is not a valid rule id (letters, digits, '.', '_', '-'; 1 to 64 bytes)")
    } else if !seen.insert(id.to_owned()) {
        format!("duplicate rule id {id:?}")
    } else {
        return None;
    };
    Some(FieldError {
        field: format!("{at}.id"),
        reason,
    })
}

/// A name of an agent or a rule: letters, digits, '.', '_', '-'; 1 to 64 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
