//! The work a policy document may cost, checked on libyaml's event stream before
//! `serde_yaml_ng` deserializes it (docs/conditional-access.md, "Limits"):
//! - at most [`MAX_DEPTH`] levels of nested sequences and mappings;
//! - at most [`MAX_NODES`] nodes, an alias counting as every node of what it refers to (so an
//!   alias bomb is refused however small its text: the deserializer expands every alias);
//! - an alias may refer only to a node that is complete (no recursive structures);
//! - mapping keys are plain scalars (no aliases, sequences or mappings), each given once in
//!   its mapping, at every level (serde refuses a struct field given twice, but a map such as
//!   `attributes` would keep the last value silently).
//!
//! The scan stops at the first event past a limit, so its cost is bounded by the limits, not
//! by what the document would expand to.

use std::{collections::HashMap, fmt::Write as _};

use super::libyaml::{Event, Parser};
use crate::error::{Error, quoted};

/// Nesting levels of sequences and mappings; a valid policy document needs 6.
pub const MAX_DEPTH: usize = 32;
/// Nodes (scalars, sequences, mappings, keys included), aliases expanded; the largest valid
/// document (every list at its 1,000 entries) has fewer than half as many.
pub const MAX_NODES: usize = 100_000;

enum Frame {
    Sequence {
        index: usize,
    },
    Mapping {
        /// Keys seen, with the line of each.
        keys: HashMap<String, u64>,
        /// `None` while the next node is a key.
        key: Option<String>,
    },
}

/// An open sequence or mapping, and what an alias to it will cost once it is closed.
struct Open {
    frame: Frame,
    anchor: Option<Vec<u8>>,
    nodes_before: usize,
    /// The deepest level reached inside, absolute.
    deepest: usize,
}

/// What an anchored node stands for: its node count and height.
#[derive(Clone, Copy)]
struct Anchored {
    nodes: usize,
    height: usize,
}

#[derive(Default)]
struct Scan {
    /// False for documents stored before duplicate keys were refused (see [`check_stored`]).
    lenient_keys: bool,
    stack: Vec<Open>,
    nodes: usize,
    /// `None`: the anchored node is still open.
    anchors: HashMap<Vec<u8>, Option<Anchored>>,
}

/// Checks `yaml` against the limits; the error names the field path of the node past a limit
/// (`yaml` at the top level), and libyaml's reason for text that is not YAML.
pub fn check(yaml: &str) -> Result<(), Error> {
    scan(yaml, Scan::default())
}

/// As [`check`], but a key given twice keeps its last value, as it did when documents stored
/// before this check were accepted: re-reading them must not turn into an error that stops
/// every decision.
pub fn check_stored(yaml: &str) -> Result<(), Error> {
    scan(
        yaml,
        Scan {
            lenient_keys: true,
            ..Scan::default()
        },
    )
}

fn scan(yaml: &str, mut scan: Scan) -> Result<(), Error> {
    let mut parser = Parser::new(yaml);
    loop {
        let (event, line) = parser.next_event().map_err(|err| {
            Error::invalid(
                "yaml",
                format!("{} at line {} column {}", err.problem, err.line, err.column),
            )
        })?;
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Boundary => {}
            Event::Alias(anchor) => {
                scan.key_position_refused(line, "an alias")?;
                let anchored = match scan.anchors.get(&anchor) {
                    Some(Some(anchored)) => *anchored,
                    Some(None) => {
                        return Err(scan.refusal(format!(
                            "the alias *{} at line {line} refers to a node that contains it",
                            quoted_bytes(&anchor)
                        )));
                    }
                    None => {
                        return Err(scan.refusal(format!(
                            "the alias *{} at line {line} refers to no anchor",
                            quoted_bytes(&anchor)
                        )));
                    }
                };
                scan.count(anchored.nodes, anchored.height, line)?;
                scan.child_done();
            }
            Event::Scalar { anchor, value } => {
                if scan.take_key(value, line)? {
                    continue;
                }
                scan.count(1, 1, line)?;
                if let Some(anchor) = anchor {
                    scan.anchors.insert(
                        anchor,
                        Some(Anchored {
                            nodes: 1,
                            height: 1,
                        }),
                    );
                }
                scan.child_done();
            }
            Event::SequenceStart(anchor) => {
                scan.open(Frame::Sequence { index: 0 }, anchor, line)?;
            }
            Event::MappingStart(anchor) => {
                let frame = Frame::Mapping {
                    keys: HashMap::new(),
                    key: None,
                };
                scan.open(frame, anchor, line)?;
            }
            Event::SequenceEnd | Event::MappingEnd => scan.close(),
        }
    }
}

impl Scan {
    /// The field path of the node being read: `assignments.include.agents[3]`.
    fn path(&self) -> String {
        let mut path = String::new();
        for open in &self.stack {
            match &open.frame {
                Frame::Sequence { index } => {
                    let _ = write!(path, "[{index}]");
                }
                Frame::Mapping { key: Some(key), .. } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&bounded_key(key));
                }
                Frame::Mapping { key: None, .. } => {}
            }
        }
        path
    }

    fn refusal(&self, reason: String) -> Error {
        let path = self.path();
        Error::invalid(if path.is_empty() { "yaml".into() } else { path }, reason)
    }

    fn expecting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Open {
                frame: Frame::Mapping { key: None, .. },
                ..
            })
        )
    }

    fn key_position_refused(&self, line: u64, what: &str) -> Result<(), Error> {
        if self.expecting_key() {
            return Err(self.refusal(format!(
                "{what} at line {line} is used as a mapping key; keys are plain strings"
            )));
        }
        Ok(())
    }

    /// When a key is expected, records `value` as the key (refusing one given twice) and
    /// returns true.
    fn take_key(&mut self, value: String, line: u64) -> Result<bool, Error> {
        if !self.expecting_key() {
            return Ok(false);
        }
        self.count(1, 1, line)?;
        let path = self.path();
        let Some(Open {
            frame: Frame::Mapping { keys, key },
            ..
        }) = self.stack.last_mut()
        else {
            unreachable!("expecting_key checked the innermost frame");
        };
        if let Some(first) = keys.get(&value).filter(|_| !self.lenient_keys) {
            let field = if path.is_empty() {
                bounded_key(&value)
            } else {
                format!("{path}.{}", bounded_key(&value))
            };
            return Err(Error::invalid(
                field,
                format!("is given twice (lines {first} and {line}); each key may appear once"),
            ));
        }
        keys.insert(value.clone(), line);
        *key = Some(value);
        Ok(true)
    }

    /// Counts `nodes` more nodes reaching `height` levels below the current one.
    fn count(&mut self, nodes: usize, height: usize, line: u64) -> Result<(), Error> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(self.refusal(format!(
                "the document has more than {MAX_NODES} nodes by line {line} (an alias counts \
                 as every node it refers to)"
            )));
        }
        let depth = self.stack.len() + height;
        if depth > MAX_DEPTH {
            return Err(self.refusal(format!(
                "nests deeper than {MAX_DEPTH} levels at line {line}"
            )));
        }
        for open in &mut self.stack {
            open.deepest = open.deepest.max(depth);
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, anchor: Option<Vec<u8>>, line: u64) -> Result<(), Error> {
        self.key_position_refused(line, "a sequence or mapping")?;
        let nodes_before = self.nodes;
        self.count(1, 1, line)?;
        if let Some(anchor) = &anchor {
            self.anchors.insert(anchor.clone(), None);
        }
        let depth = self.stack.len() + 1;
        self.stack.push(Open {
            frame,
            anchor,
            nodes_before,
            deepest: depth,
        });
        Ok(())
    }

    fn close(&mut self) {
        let depth = self.stack.len();
        if let Some(open) = self.stack.pop()
            && let Some(anchor) = open.anchor
        {
            let anchored = Anchored {
                nodes: self.nodes - open.nodes_before,
                height: open.deepest + 1 - depth,
            };
            self.anchors.insert(anchor, Some(anchored));
        }
        self.child_done();
    }

    /// After a value: the parent sequence moves to its next index, the mapping to its next key.
    fn child_done(&mut self) {
        match self.stack.last_mut().map(|open| &mut open.frame) {
            Some(Frame::Sequence { index }) => *index += 1,
            Some(Frame::Mapping { key, .. }) => *key = None,
            None => {}
        }
    }
}

/// A key in a field path: as written when it is short and plain, else quoted and bounded.
fn bounded_key(key: &str) -> String {
    if !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        key.to_owned()
    } else {
        quoted(key)
    }
}

fn quoted_bytes(bytes: &[u8]) -> String {
    quoted(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write as _, time::Instant};

    use super::*;

    fn refusal(yaml: &str) -> (String, String) {
        match check(yaml) {
            Err(Error::InvalidArgument { field, reason }) => (field, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// `a` lists `width` scalars, `b` lists `width` aliases of `a`, and so on: `levels`
    /// levels, each `width` times the one before.
    pub(crate) fn alias_bomb(width: usize, levels: usize) -> String {
        let mut yaml = String::from(
            "name: bomb\nstate: enabled\nassignments:\n  include:\n    attributes:\n      l0: &l0 [",
        );
        yaml.push_str(&vec!["lol"; width].join(", "));
        yaml.push_str("]\n");
        for level in 1..levels {
            let previous = format!("*l{}", level - 1);
            let _ = writeln!(
                yaml,
                "      l{level}: &l{level} [{}]",
                vec![previous.as_str(); width].join(", ")
            );
        }
        yaml.push_str("controls: {block: true}\n");
        yaml
    }

    #[test]
    fn an_alias_bomb_is_refused_at_once_with_its_field() {
        let yaml = alias_bomb(9, 9);
        assert!(yaml.len() < 1024, "{}", yaml.len());
        let started = Instant::now();
        let (field, reason) = refusal(&yaml);
        eprintln!("alias bomb (9 x 9) refused in {:?}", started.elapsed());
        assert!(
            started.elapsed().as_millis() < 100,
            "{:?}",
            started.elapsed()
        );
        assert!(
            field.starts_with("assignments.include.attributes.l"),
            "{field}"
        );
        assert!(reason.contains("more than 100000 nodes"), "{reason}");
        let wide = alias_bomb(1000, 3);
        assert!(wide.len() < 16 * 1024);
        let started = Instant::now();
        let (field, _) = refusal(&wide);
        assert!(
            field.starts_with("assignments.include.attributes.l1["),
            "{field}"
        );
        assert!(
            started.elapsed().as_millis() < 100,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn aliases_within_the_budget_are_allowed() {
        check(&alias_bomb(9, 4)).expect("9^4 nodes are fine");
    }

    #[test]
    fn deep_nesting_is_refused_at_the_limit_in_flow_and_block_style() {
        let flow = format!(
            "name: deep\nx: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let started = Instant::now();
        let (field, reason) = refusal(&flow);
        eprintln!(
            "10,000-deep flow nesting refused in {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed().as_millis() < 100,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(field, format!("x{}", "[0]".repeat(MAX_DEPTH - 1)));
        assert!(reason.contains("deeper than 32 levels"), "{reason}");
        let mut block = String::new();
        for level in 0..200 {
            let _ = writeln!(block, "{}- ", " ".repeat(level * 2));
        }
        assert!(refusal(&block).1.contains("deeper than 32"));
        let mut mappings = String::new();
        for level in 0..200 {
            let _ = writeln!(mappings, "{}k{level}:", " ".repeat(level));
        }
        let started = Instant::now();
        assert!(refusal(&mappings).1.contains("deeper than 32"));
        assert!(
            started.elapsed().as_millis() < 100,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn an_alias_counts_its_depth() {
        let nested = format!("a: &a {}x{}\n", "[".repeat(20), "]".repeat(20));
        let yaml = format!("{nested}b: {}*a{}\n", "[".repeat(20), "]".repeat(20));
        assert!(refusal(&yaml).1.contains("deeper than 32"));
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_level() {
        let (field, reason) = refusal("name: a\nstate: enabled\nname: b\n");
        assert_eq!(field, "name");
        assert!(reason.contains("lines 1 and 3"), "{reason}");
        let nested =
            "assignments:\n  include:\n    attributes:\n      dept: finance\n      dept: audit\n";
        assert_eq!(refusal(nested).0, "assignments.include.attributes.dept");
        let in_list = "controls:\n  files:\n    - path: /a\n      path: /b\n";
        assert_eq!(refusal(in_list).0, "controls.files[0].path");
        let quoted_twin = "conditions:\n  hostLabels: {env: prod, 'env': dev}\n";
        assert_eq!(refusal(quoted_twin).0, "conditions.hostLabels.env");
        check("a: {x: 1}\nb: {x: 1}\n").expect("the same key in two mappings");
    }

    #[test]
    fn keys_must_be_plain_strings() {
        assert!(
            refusal("? [a, b]\n: c\n")
                .1
                .contains("keys are plain strings")
        );
        assert!(
            refusal("a: &k x\n*k : y\n")
                .1
                .contains("keys are plain strings")
        );
    }

    #[test]
    fn recursive_and_unknown_aliases_are_refused() {
        assert!(refusal("a: &a [*a]\n").1.contains("contains it"));
        assert!(refusal("a: *nowhere\n").1.contains("no anchor"));
    }

    #[test]
    fn bad_yaml_is_refused_with_the_parsers_reason() {
        let (field, reason) = refusal("a: [b\n");
        assert_eq!(field, "yaml");
        assert!(reason.contains("line"), "{reason}");
    }

    #[test]
    fn long_keys_are_quoted_and_bounded_in_the_path() {
        let key = "k".repeat(10_000);
        let (field, _) = refusal(&format!("? {key}\n: 1\n? {key}\n: 2\n"));
        assert!(field.len() < 80, "{field}");
        assert!(field.ends_with("…\""), "{field}");
    }
}
