//! File policy: per-agent rules on files and directory subtrees, by access, matched in the
//! kernel by (device, inode) of the file and of each directory above it. The nearest rule wins:
//! a rule on the file beats one on its directory, which beats one further up.

use std::{collections::HashSet, path::PathBuf};

use agentd_common::{InodeKey, file_access};
use serde::Deserialize;

use crate::{
    identity::policy::{FieldError, check_rule_id},
    netpolicy::{Action, Mode},
    sensors::files::inode_key,
};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
    Exec,
}

impl Access {
    fn bit(self) -> u32 {
        match self {
            Self::Read => file_access::READ,
            Self::Write => file_access::WRITE,
            Self::Exec => file_access::EXEC,
        }
    }
}

/// An agent's `[agent.files]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentFilesSpec {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, rename = "rule")]
    pub rules: Vec<FileRuleSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileRuleSpec {
    pub id: String,
    pub action: Action,
    /// A file, or a directory whose whole subtree the rule covers. It must exist: the rule
    /// names the kernel object behind the path when the policy is applied.
    pub path: PathBuf,
    /// What the rule covers. Default: read, write and exec.
    pub access: Option<Vec<Access>>,
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledFileRule {
    /// `agent/rule`.
    pub name: String,
    pub inode: InodeKey,
    /// `file_access` bits.
    pub access: u32,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledAgentFiles {
    pub mode: Mode,
    pub rules: Vec<CompiledFileRule>,
}

impl AgentFilesSpec {
    /// Validates the table at `at` (e.g. `agent[0].files`) for agent `agent`.
    pub fn compile(
        &self,
        agent: &str,
        at: &str,
        errors: &mut Vec<FieldError>,
    ) -> CompiledAgentFiles {
        let mut rules = Vec::new();
        let mut ids = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{at}.rule[{i}]");
            if let Some(problem) = check_rule_id(&rule.id, &at, &mut ids) {
                errors.push(problem);
            }
            if !rule.path.is_absolute() {
                errors.push(FieldError {
                    field: format!("{at}.path"),
                    reason: format!("{} is not an absolute path", rule.path.display()),
                });
                continue;
            }
            let inode = match inode_key(&rule.path) {
                Ok(inode) => inode,
                Err(err) => {
                    errors.push(FieldError {
                        field: format!("{at}.path"),
                        reason: format!("{}: {err}", rule.path.display()),
                    });
                    continue;
                }
            };
            let access = match &rule.access {
                None => file_access::READ | file_access::WRITE | file_access::EXEC,
                Some(list) if list.is_empty() => {
                    errors.push(FieldError {
                        field: format!("{at}.access"),
                        reason: "name at least one of read, write, exec".to_owned(),
                    });
                    continue;
                }
                Some(list) => list.iter().fold(0, |bits, access| bits | access.bit()),
            };
            rules.push(CompiledFileRule {
                name: format!("{agent}/{}", rule.id),
                inode,
                access,
                action: rule.action,
            });
        }
        CompiledAgentFiles {
            mode: self.mode,
            rules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<CompiledAgentFiles, Vec<String>> {
        let spec: AgentFilesSpec = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        let compiled = spec.compile("a", "agent[0].files", &mut errors);
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn rules_resolve_paths_to_inodes_and_access_to_bits() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[rule]]\nid = \"secrets\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\", \"exec\"]\n",
            dir.path().display()
        );
        let compiled = compile(&text).unwrap();
        assert_eq!(compiled.rules[0].inode, inode_key(dir.path()).unwrap());
        assert_eq!(
            compiled.rules[0].access,
            file_access::READ | file_access::EXEC
        );
        assert_eq!(compiled.rules[0].name, "a/secrets");
    }

    #[test]
    fn bad_paths_and_access_are_named() {
        let errors = compile(
            "[[rule]]\nid = \"a\"\naction = \"deny\"\npath = \"relative\"\n\
             [[rule]]\nid = \"b\"\naction = \"deny\"\npath = \"/nonexistent/x\"\n\
             [[rule]]\nid = \"c\"\naction = \"deny\"\npath = \"/\"\naccess = []\n",
        )
        .unwrap_err();
        assert!(
            errors[0].starts_with("agent[0].files.rule[0].path: relative is not absolute")
                || errors[0].contains("not an absolute path"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("agent[0].files.rule[1].path: /nonexistent/x"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("agent[0].files.rule[2].access"),
            "{errors:?}"
        );
        let err = toml::from_str::<AgentFilesSpec>(
            "[[rule]]\nid = \"a\"\naction = \"deny\"\npath = \"/\"\naccess = [\"delete\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("delete"), "{err}");
    }
}
