//! The audit log's hash chain: the canonical encoding of an entry, its SHA-256 digest, and the
//! verifier that walks a log in order. A leaf: the store writes with it, `agentctl audit verify`
//! checks with it.
//!
//! **Encoding.** A record is a sequence of fields, each `S` followed by its length as a
//! big-endian `u64` and its bytes, or `N` for an absent value (`previous`/`current` of a
//! creation or deletion). Integers are decimal ASCII, digests lowercase hex. So no two
//! different entries encode alike.
//!
//! - entry (v1): `"agentd-audit-entry-v1"`, chain index (1, 2, ...), time, actor, action,
//!   target type, target id, previous, current, the previous entry's digest; its digest is
//!   `hex(SHA-256(encoding))`.
//! - the genesis digest, the first entry's `previous_digest`: `hex(SHA-256(encode(
//!   "agentd-audit-genesis-v1") ‖ legacy₁ ‖ legacy₂ ...))` over the entries written before the
//!   chain existed (migration 3), each encoded as `"agentd-audit-legacy-v1"`, sequence, time,
//!   actor, action, target type, target id, previous, current. A log created with the chain
//!   has no legacy entries.

use sha2::{Digest as _, Sha256};

const ENTRY_LABEL: &str = "agentd-audit-entry-v1";
const LEGACY_LABEL: &str = "agentd-audit-legacy-v1";
const GENESIS_LABEL: &str = "agentd-audit-genesis-v1";

/// The audited content of one event, as stored.
#[derive(Clone, Copy, Debug)]
pub struct Content<'a> {
    pub at: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub previous: Option<&'a str>,
    pub current: Option<&'a str>,
}

/// One event as a reader sees it: its sequence, its content and its chain fields (`None` for an
/// entry written before the chain existed).
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub sequence: i64,
    pub content: Content<'a>,
    pub chain: Option<Link<'a>>,
}

#[derive(Clone, Copy, Debug)]
pub struct Link<'a> {
    pub index: i64,
    pub previous_digest: &'a str,
    pub digest: &'a str,
}

/// The head of the chain as the server keeps it, or as an operator saved it (a checkpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    /// How many chained entries there are (the last one's index).
    pub entries: i64,
    /// The last entry's digest ("" when there is none).
    pub digest: String,
}

fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            out.push(b'S');
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        None => out.push(b'N'),
    }
}

fn encode(fields: &[Option<&[u8]>]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in fields {
        field(&mut out, *value);
    }
    out
}

fn content_fields<'a>(content: &'a Content<'a>, out: &mut Vec<Option<&'a [u8]>>) {
    out.extend([
        Some(content.actor.as_bytes()),
        Some(content.action.as_bytes()),
        Some(content.target_type.as_bytes()),
        Some(content.target_id.as_bytes()),
        content.previous.map(str::as_bytes),
        content.current.map(str::as_bytes),
    ]);
}

/// The digest of the entry at `index` with this content after `previous_digest`.
pub fn entry_digest(index: i64, content: &Content<'_>, previous_digest: &str) -> String {
    let index = index.to_string();
    let at = content.at.to_string();
    let mut fields = vec![
        Some(ENTRY_LABEL.as_bytes()),
        Some(index.as_bytes()),
        Some(at.as_bytes()),
    ];
    content_fields(content, &mut fields);
    fields.push(Some(previous_digest.as_bytes()));
    hex::encode(Sha256::digest(encode(&fields)))
}

/// Accumulates the entries written before the chain existed into the genesis digest.
#[derive(Clone)]
pub struct Genesis(Sha256);

impl Default for Genesis {
    fn default() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(encode(&[Some(GENESIS_LABEL.as_bytes())]));
        Self(hasher)
    }
}

impl Genesis {
    pub fn push(&mut self, sequence: i64, content: &Content<'_>) {
        let sequence = sequence.to_string();
        let at = content.at.to_string();
        let mut fields = vec![
            Some(LEGACY_LABEL.as_bytes()),
            Some(sequence.as_bytes()),
            Some(at.as_bytes()),
        ];
        content_fields(content, &mut fields);
        self.0.update(encode(&fields));
    }

    pub fn digest(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }
}

/// What a log failed on, naming the entry by its sequence number.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry {sequence} is not chained, but comes after chained entries (inserted?)")]
    UnchainedAfterChain { sequence: i64 },
    #[error(
        "entry {sequence} has chain index {found}, expected {expected} (an entry before it was deleted, or entries were reordered)"
    )]
    Index {
        sequence: i64,
        expected: i64,
        found: i64,
    },
    #[error(
        "entry {sequence} (chain index {index}) does not follow the entry before it: its previous digest {found} is not {expected} (an entry before it was deleted or edited)"
    )]
    Link {
        sequence: i64,
        index: i64,
        expected: String,
        found: String,
    },
    #[error(
        "entry {sequence} (chain index {index}) was edited: its content digests to {computed}, it records {recorded}"
    )]
    Content {
        sequence: i64,
        index: i64,
        computed: String,
        recorded: String,
    },
    #[error(
        "the log was truncated: it ends at chain index {found}, but {anchor} names entry {expected} with digest {digest}"
    )]
    Truncated {
        anchor: &'static str,
        expected: i64,
        found: i64,
        digest: String,
    },
    #[error(
        "chain entry {index} has digest {found}, but {anchor} recorded {expected} (the log was rewritten)"
    )]
    Rewritten {
        anchor: &'static str,
        index: i64,
        expected: String,
        found: String,
    },
}

/// Walks a log in sequence order, checking each entry against the one before it, and
/// remembers the digests an anchor (the server's head, a checkpoint) may ask about.
#[derive(Default)]
pub struct Verifier {
    genesis: Genesis,
    legacy: i64,
    last: Option<(i64, String)>,
    /// (index, digest) of the entries anchors name, filled in as they pass.
    wanted: Vec<(i64, Option<String>)>,
}

impl Verifier {
    /// Remembers the digest of the entry at `index` when it passes (call before pushing).
    pub fn watch(&mut self, index: i64) {
        if index > 0 {
            self.wanted.push((index, None));
        }
    }

    pub fn push(&mut self, entry: &Entry<'_>) -> Result<(), ChainError> {
        let Some(link) = entry.chain else {
            if self.last.is_some() {
                return Err(ChainError::UnchainedAfterChain {
                    sequence: entry.sequence,
                });
            }
            self.genesis.push(entry.sequence, &entry.content);
            self.legacy += 1;
            return Ok(());
        };
        let (expected_index, expected_previous) = match &self.last {
            Some((index, digest)) => (index + 1, digest.clone()),
            None => (1, self.genesis.digest()),
        };
        if link.index != expected_index {
            return Err(ChainError::Index {
                sequence: entry.sequence,
                expected: expected_index,
                found: link.index,
            });
        }
        if link.previous_digest != expected_previous {
            return Err(ChainError::Link {
                sequence: entry.sequence,
                index: link.index,
                expected: expected_previous,
                found: link.previous_digest.to_owned(),
            });
        }
        let computed = entry_digest(link.index, &entry.content, link.previous_digest);
        if computed != link.digest {
            return Err(ChainError::Content {
                sequence: entry.sequence,
                index: link.index,
                computed,
                recorded: link.digest.to_owned(),
            });
        }
        for (index, digest) in &mut self.wanted {
            if *index == link.index {
                *digest = Some(computed.clone());
            }
        }
        self.last = Some((link.index, computed));
        Ok(())
    }

    /// The head of what was walked.
    pub fn head(&self) -> Head {
        self.last
            .as_ref()
            .map(|(entries, digest)| Head {
                entries: *entries,
                digest: digest.clone(),
            })
            .unwrap_or_default()
    }

    /// How many entries predate the chain (sealed by the genesis digest).
    pub fn legacy_entries(&self) -> i64 {
        self.legacy
    }

    /// Checks that the walked log still holds `anchor`'s entry with its digest. Entries after it
    /// are fine (written since).
    pub fn check(&self, name: &'static str, anchor: &Head) -> Result<(), ChainError> {
        if anchor.entries == 0 {
            return Ok(());
        }
        let found = self.last.as_ref().map_or(0, |(index, _)| *index);
        let digest = self
            .wanted
            .iter()
            .find(|(index, _)| *index == anchor.entries)
            .and_then(|(_, digest)| digest.clone());
        match digest {
            None => Err(ChainError::Truncated {
                anchor: name,
                expected: anchor.entries,
                found,
                digest: anchor.digest.clone(),
            }),
            Some(digest) if digest != anchor.digest => Err(ChainError::Rewritten {
                anchor: name,
                index: anchor.entries,
                expected: anchor.digest.clone(),
                found: digest,
            }),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(actor: &str) -> Content<'_> {
        Content {
            at: 1_700_000_000,
            actor,
            action: "CreateAgent",
            target_type: "agent",
            target_id: "a1",
            previous: None,
            current: Some("{}"),
        }
    }

    fn chain(actors: &[&'static str]) -> Vec<(String, String)> {
        let mut previous = Genesis::default().digest();
        let mut out = Vec::new();
        for (index, actor) in (1..).zip(actors) {
            let digest = entry_digest(index, &content(actor), &previous);
            out.push((previous.clone(), digest.clone()));
            previous = digest;
        }
        out
    }

    fn walk(actors: &[&str], links: &[(String, String)]) -> Result<Verifier, ChainError> {
        let mut verifier = Verifier::default();
        verifier.watch(i64::try_from(links.len()).expect("a short chain"));
        for (index, ((previous, digest), actor)) in (1..).zip(links.iter().zip(actors)) {
            verifier.push(&Entry {
                sequence: index + 9,
                content: content(actor),
                chain: Some(Link {
                    index,
                    previous_digest: previous,
                    digest,
                }),
            })?;
        }
        Ok(verifier)
    }

    #[test]
    fn an_intact_chain_verifies_and_an_edit_is_named() {
        let actors = ["alice", "bob", "carol"];
        let links = chain(&actors);
        let verifier = walk(&actors, &links).expect("intact");
        assert_eq!(verifier.head().entries, 3);
        assert!(verifier.check("head", &verifier.head()).is_ok());
        let err = walk(&["alice", "mallory", "carol"], &links).err();
        assert!(matches!(
            err,
            Some(ChainError::Content { sequence: 11, .. })
        ));
    }

    #[test]
    fn absent_and_empty_values_encode_differently() {
        let mut empty = content("alice");
        empty.previous = Some("");
        assert_ne!(
            entry_digest(1, &content("alice"), ""),
            entry_digest(1, &empty, "")
        );
    }
}
