//! File policy: per-agent rules on files and directory subtrees, on file names and
//! extensions, and on named sets of sensitive files, by access. Objects are matched in the
//! kernel by (device, inode) of the file and of each directory above it; names by the dentry's
//! name. The nearest rule wins: the file's own rule, then its name, then its extension, then
//! its directory's, then further up.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use agentd_common::{FILE_EXTENSION_LEN, FILE_NAME_LEN, InodeKey, file_access};
use serde::Deserialize;

use super::{
    fields::{FieldError, check_rule_id},
    network::{Action, Mode},
};
use crate::inode::inode_key;

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
    /// Whether the agent's processes may execute files that have no name in any directory (a
    /// memfd, an `O_TMPFILE`, an unlinked file): bytes that no exec rule can name. Default
    /// false; tools that re-exec themselves from a memfd (runc, crun) need it.
    #[serde(default)]
    pub allow_anonymous_exec: bool,
}

/// One rule: exactly one of `path`, `set`, `name` or `extension` says what it covers.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileRuleSpec {
    pub id: String,
    pub action: Action,
    /// A file, or a directory whose whole subtree the rule covers. It must exist: the rule
    /// names the kernel object behind the path when the policy is applied.
    pub path: Option<PathBuf>,
    /// A named set of files shipped with agentd ([`FILE_SETS`]), e.g. `sensitive`.
    pub set: Option<String>,
    /// Files with this exact name, anywhere, e.g. `.env`.
    pub name: Option<String>,
    /// Files whose name ends in `.` and this, anywhere, e.g. `pem`.
    pub extension: Option<String>,
    /// What the rule covers. Default: read, write and exec.
    pub access: Option<Vec<Access>>,
}

/// What a compiled rule matches in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileTarget {
    /// A file or directory subtree, by kernel object.
    Object(InodeKey),
    /// Files with this name.
    Name(String),
    /// Files with this extension (without the dot).
    Extension(String),
}

/// A directory entry: the name `name` in the directory `dir`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileEntry {
    pub dir: InodeKey,
    pub name: String,
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledFileRule {
    /// `agent/rule`.
    pub name: String,
    pub target: FileTarget,
    /// For a rule on an object by path: the entry that names it, so that the rule also covers
    /// whatever file takes that name later (replaced by rename). `None` for a name longer than
    /// the kernel compares, or for `/`.
    pub entry: Option<FileEntry>,
    /// For a rule on an object by path: the path, after symlinks, as it was when compiled
    /// (`file_links` looks inside directories for files with other names elsewhere).
    pub path: Option<PathBuf>,
    /// `file_access` bits.
    pub access: u32,
    pub action: Action,
    /// It comes from a file set: what it covers holds secrets (the risk engine's "secret
    /// read").
    pub sensitive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledAgentFiles {
    pub mode: Mode,
    /// `allow_anonymous_exec`.
    pub allow_anonymous_exec: bool,
    pub rules: Vec<CompiledFileRule>,
}

/// A named set of files that policies can refer to with `set = "..."`.
#[derive(Debug)]
pub struct FileSet {
    pub name: &'static str,
    pub description: &'static str,
    /// Absolute paths, or `~/...` for the same path under every home directory. Paths that do
    /// not exist on the host are skipped.
    pub paths: &'static [&'static str],
    /// File names matched anywhere.
    pub names: &'static [&'static str],
    /// Other sets this one includes.
    pub includes: &'static [&'static str],
}

/// The file sets agentd ships. `sensitive` is the default set of secrets an agent should not
/// read: the union of the others.
pub const FILE_SETS: &[FileSet] = &[
    FileSet {
        name: "ssh-keys",
        description: "SSH keys and client configuration, and the host's private keys",
        paths: &[
            "~/.ssh",
            "/etc/ssh/ssh_host_rsa_key",
            "/etc/ssh/ssh_host_ecdsa_key",
            "/etc/ssh/ssh_host_ed25519_key",
        ],
        names: &["id_rsa", "id_ecdsa", "id_ed25519", "id_dsa"],
        includes: &[],
    },
    FileSet {
        name: "gpg-keys",
        description: "GnuPG keyrings",
        paths: &["~/.gnupg"],
        names: &[],
        includes: &[],
    },
    FileSet {
        name: "system-credentials",
        description: "password hashes and sudo rules",
        paths: &[
            "/etc/shadow",
            "/etc/gshadow",
            "/etc/sudoers",
            "/etc/sudoers.d",
        ],
        names: &[],
        includes: &[],
    },
    FileSet {
        name: "cloud-credentials",
        description: "AWS, Google Cloud, Azure and OCI credentials, container registry logins, \
                      netrc, git and PostgreSQL passwords",
        paths: &[
            "~/.aws",
            "~/.config/gcloud",
            "~/.azure",
            "~/.oci",
            "~/.docker/config.json",
        ],
        names: &[".netrc", ".git-credentials", ".pgpass"],
        includes: &[],
    },
    FileSet {
        name: "kube-credentials",
        description: "Kubernetes client configuration and cluster credentials",
        paths: &["~/.kube", "/etc/kubernetes", "/var/lib/kubelet/pki"],
        names: &[],
        includes: &[],
    },
    FileSet {
        name: "dotenv",
        description: "dotenv files of applications",
        paths: &[],
        names: &[".env", ".env.local", ".env.development", ".env.production"],
        includes: &[],
    },
    FileSet {
        name: "browser-profiles",
        description: "browser profiles (cookies, saved passwords, sessions)",
        paths: &[
            "~/.mozilla",
            "~/.config/google-chrome",
            "~/.config/chromium",
            "~/.config/BraveSoftware",
            "~/snap/firefox",
        ],
        names: &[],
        includes: &[],
    },
    FileSet {
        name: "sensitive",
        description: "every set above",
        paths: &[],
        names: &[],
        includes: &[
            "ssh-keys",
            "gpg-keys",
            "system-credentials",
            "cloud-credentials",
            "kube-credentials",
            "dotenv",
            "browser-profiles",
        ],
    },
];

/// The set called `name`.
pub fn file_set(name: &str) -> Option<&'static FileSet> {
    FILE_SETS.iter().find(|set| set.name == name)
}

/// Where `~/` in a set's paths points: `/root` and every directory under `/home`.
#[derive(Clone, Debug)]
pub struct Homes(pub Vec<PathBuf>);

impl Homes {
    /// This host's home directories.
    pub fn system() -> Self {
        let mut homes = vec![PathBuf::from("/root")];
        if let Ok(entries) = fs::read_dir("/home") {
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .map(|entry| entry.path())
                .collect();
            found.sort();
            homes.extend(found);
        }
        Self(homes)
    }
}

/// What a set expands to on this host: the existing objects its paths name, and its names.
fn expand_set(set: &FileSet, homes: &Homes, objects: &mut Vec<PathBuf>, names: &mut Vec<String>) {
    for included in set.includes {
        if let Some(inner) = file_set(included) {
            expand_set(inner, homes, objects, names);
        }
    }
    for path in set.paths {
        match path.strip_prefix("~/") {
            Some(rest) => objects.extend(homes.0.iter().map(|home| home.join(rest))),
            None => objects.push(PathBuf::from(path)),
        }
    }
    names.extend(set.names.iter().map(|name| (*name).to_owned()));
}

/// A name or extension the kernel can compare: no `/`, no NUL, and short enough.
fn check_component(value: &str, max: usize, what: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("an empty {what} matches nothing"));
    }
    if value.contains('/') || value.contains('\0') {
        return Err(format!("{value:?}: a {what} cannot contain '/' or NUL"));
    }
    if value == "." || value == ".." {
        return Err(format!("{value:?} is not a file {what}"));
    }
    if value.len() >= max {
        return Err(format!(
            "{value:?} is {} bytes; a {what} the kernel matches is at most {} bytes",
            value.len(),
            max - 1
        ));
    }
    Ok(())
}

impl AgentFilesSpec {
    /// Validates the table at `at` (e.g. `agent[0].files`) for agent `agent`, with `~/` in
    /// file sets meaning each of `homes`.
    pub fn compile(
        &self,
        agent: &str,
        at: &str,
        homes: &Homes,
        errors: &mut Vec<FieldError>,
    ) -> CompiledAgentFiles {
        let mut rules = Vec::new();
        let mut ids = HashSet::new();
        // Which rule first named each target: a second explicit rule on it is an error; a set
        // entry that an earlier rule already covers is left to that rule.
        let mut owners: HashMap<FileTarget, String> = HashMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{at}.rule[{i}]");
            if let Some(problem) = check_rule_id(&rule.id, &at, &mut ids) {
                errors.push(problem);
            }
            let mut problem = |field: &str, reason: String| {
                errors.push(FieldError {
                    field: format!("{at}.{field}"),
                    reason,
                });
            };
            let access = match &rule.access {
                None => file_access::READ | file_access::WRITE | file_access::EXEC,
                Some(list) if list.is_empty() => {
                    problem(
                        "access",
                        "name at least one of read, write, exec".to_owned(),
                    );
                    continue;
                }
                Some(list) => list.iter().fold(0, |bits, access| bits | access.bit()),
            };
            let targets = match rule.targets(homes) {
                Ok(targets) => targets,
                Err((field, reason)) => {
                    problem(field, reason);
                    continue;
                }
            };
            for Covered {
                target,
                from_set,
                entry,
                path,
            } in targets
            {
                if let Some(owner) = owners.get(&target) {
                    if !from_set {
                        problem(
                            "path",
                            format!("rule {owner:?} already covers the same file or name"),
                        );
                    }
                    continue;
                }
                owners.insert(target.clone(), rule.id.clone());
                rules.push(CompiledFileRule {
                    name: format!("{agent}/{}", rule.id),
                    target,
                    entry,
                    path,
                    access,
                    action: rule.action,
                    sensitive: from_set,
                });
            }
        }
        CompiledAgentFiles {
            allow_anonymous_exec: self.allow_anonymous_exec,
            mode: self.mode,
            rules,
        }
    }
}

impl FileRuleSpec {
    /// What the rule covers on this host, each with whether an earlier rule may already cover
    /// it (true for set entries); or the field at fault and why.
    fn targets(&self, homes: &Homes) -> Result<Vec<Covered>, (&'static str, String)> {
        let given: Vec<&str> = [
            ("path", self.path.is_some()),
            ("set", self.set.is_some()),
            ("name", self.name.is_some()),
            ("extension", self.extension.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        if given.len() != 1 {
            return Err((
                "path",
                format!(
                    "a rule names exactly one of path, set, name or extension (this one names {})",
                    if given.is_empty() {
                        "none".to_owned()
                    } else {
                        given.join(", ")
                    }
                ),
            ));
        }
        if let Some(path) = &self.path {
            let key = resolve_object(path).map_err(|reason| ("path", reason))?;
            return Ok(vec![Covered::object(key, false, path)]);
        }
        if let Some(name) = &self.set {
            let Some(set) = file_set(name) else {
                let known: Vec<&str> = FILE_SETS.iter().map(|set| set.name).collect();
                return Err((
                    "set",
                    format!("unknown file set {name:?} (known: {})", known.join(", ")),
                ));
            };
            let (mut objects, mut names) = (Vec::new(), Vec::new());
            expand_set(set, homes, &mut objects, &mut names);
            // A set names what may exist; only what does is protected.
            let mut targets: Vec<Covered> = objects
                .iter()
                .filter_map(|object| Some(Covered::object(inode_key(object).ok()?, true, object)))
                .collect();
            targets.extend(
                names
                    .into_iter()
                    .map(|name| Covered::other(FileTarget::Name(name), true)),
            );
            return Ok(targets);
        }
        if let Some(name) = &self.name {
            check_component(name, FILE_NAME_LEN, "name").map_err(|reason| ("name", reason))?;
            return Ok(vec![Covered::other(FileTarget::Name(name.clone()), false)]);
        }
        let extension = self.extension.as_deref().unwrap_or_default();
        let extension = extension.strip_prefix('.').unwrap_or(extension);
        check_component(extension, FILE_EXTENSION_LEN, "extension")
            .and_then(|()| {
                if extension.contains('.') {
                    Err(format!(
                        "{extension:?}: the kernel matches what follows the last '.', so an \
                         extension cannot contain '.'"
                    ))
                } else {
                    Ok(())
                }
            })
            .map_err(|reason| ("extension", reason))?;
        Ok(vec![Covered::other(
            FileTarget::Extension(extension.to_owned()),
            false,
        )])
    }
}

/// The kernel object an explicit rule path names.
/// One thing a rule covers, from [`FileRuleSpec::targets`].
struct Covered {
    target: FileTarget,
    /// It comes from a set: an earlier rule may already cover it.
    from_set: bool,
    entry: Option<FileEntry>,
    path: Option<PathBuf>,
}

impl Covered {
    fn object(key: InodeKey, from_set: bool, path: &Path) -> Self {
        Self {
            target: FileTarget::Object(key),
            from_set,
            entry: entry_of(path),
            path: fs::canonicalize(path).ok(),
        }
    }

    fn other(target: FileTarget, from_set: bool) -> Self {
        Self {
            target,
            from_set,
            entry: None,
            path: None,
        }
    }
}

/// The directory entry that names the object at `path` (after symlinks), when the kernel can
/// key it: a name shorter than [`FILE_NAME_LEN`] in a directory that exists.
fn entry_of(path: &Path) -> Option<FileEntry> {
    let real = fs::canonicalize(path).ok()?;
    let name = real.file_name()?.to_str()?;
    if name.len() >= FILE_NAME_LEN {
        return None;
    }
    let dir = inode_key(real.parent()?).ok()?;
    Some(FileEntry {
        dir,
        name: name.to_owned(),
    })
}

fn resolve_object(path: &Path) -> Result<InodeKey, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    inode_key(path).map_err(|err| format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<CompiledAgentFiles, Vec<String>> {
        compile_with(text, &Homes(Vec::new()))
    }

    fn compile_with(text: &str, homes: &Homes) -> Result<CompiledAgentFiles, Vec<String>> {
        let spec: AgentFilesSpec = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        let compiled = spec.compile("a", "agent[0].files", homes, &mut errors);
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn path_rules_also_key_the_entry_that_names_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shadow");
        let long = dir.path().join("a".repeat(FILE_NAME_LEN));
        fs::write(&file, "s").unwrap();
        fs::write(&long, "l").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let compiled = compile(&format!(
            "[[rule]]\nid = \"f\"\naction = \"deny\"\npath = \"{}\"\n\
             [[rule]]\nid = \"l\"\naction = \"deny\"\npath = \"{}\"\n\
             [[rule]]\nid = \"e\"\naction = \"deny\"\nextension = \"pem\"\n",
            link.display(),
            long.display()
        ))
        .unwrap();
        assert_eq!(
            compiled.rules[0].entry,
            Some(FileEntry {
                dir: inode_key(dir.path()).unwrap(),
                name: "shadow".to_owned()
            }),
            "the entry behind the symlink"
        );
        assert_eq!(
            compiled.rules[1].entry, None,
            "a name the kernel cannot key"
        );
        assert_eq!(compiled.rules[2].entry, None, "not a path rule");
    }

    #[test]
    fn rules_resolve_paths_to_inodes_and_access_to_bits() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[rule]]\nid = \"secrets\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\", \"exec\"]\n",
            dir.path().display()
        );
        let compiled = compile(&text).unwrap();
        assert_eq!(
            compiled.rules[0].target,
            FileTarget::Object(inode_key(dir.path()).unwrap())
        );
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

    #[test]
    fn names_and_extensions_compile_and_bad_ones_are_named() {
        let compiled = compile(
            "[[rule]]\nid = \"env\"\naction = \"deny\"\nname = \".env\"\n\
             [[rule]]\nid = \"pem\"\naction = \"deny\"\nextension = \".pem\"\naccess = [\"read\"]\n",
        )
        .unwrap();
        assert_eq!(compiled.rules[0].target, FileTarget::Name(".env".into()));
        assert_eq!(
            compiled.rules[1].target,
            FileTarget::Extension("pem".into())
        );
        assert_eq!(compiled.rules[1].access, file_access::READ);

        let errors = compile(
            "[[rule]]\nid = \"a\"\naction = \"deny\"\nname = \"a/b\"\n\
             [[rule]]\nid = \"b\"\naction = \"deny\"\nextension = \"tar.gz\"\n\
             [[rule]]\nid = \"c\"\naction = \"deny\"\nname = \"x\"\nextension = \"y\"\n\
             [[rule]]\nid = \"d\"\naction = \"deny\"\n\
             [[rule]]\nid = \"e\"\naction = \"deny\"\nname = \"0123456789012345678901234567890123\"\n\
             [[rule]]\nid = \"f\"\naction = \"deny\"\nset = \"secrets\"\n\
             [[rule]]\nid = \"g\"\naction = \"allow\"\nname = \"a\"\n\
             [[rule]]\nid = \"h\"\naction = \"deny\"\nname = \"a\"\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 7, "{errors:#?}");
        assert!(
            errors[0].starts_with("agent[0].files.rule[0].name:"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("agent[0].files.rule[1].extension:"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("agent[0].files.rule[2].path: a rule names exactly one")
                && errors[2].contains("name, extension"),
            "{errors:?}"
        );
        assert!(errors[3].contains("names none"), "{errors:?}");
        assert!(
            errors[4].starts_with("agent[0].files.rule[4].name:"),
            "{errors:?}"
        );
        assert!(
            errors[5].starts_with("agent[0].files.rule[5].set: unknown file set \"secrets\"")
                && errors[5].contains("sensitive"),
            "{errors:?}"
        );
        assert!(
            errors[6].starts_with("agent[0].files.rule[7].path: rule \"g\" already covers"),
            "{errors:?}"
        );
    }

    #[test]
    fn sensitive_set_expands_to_what_exists_under_every_home() {
        let root = tempfile::tempdir().unwrap();
        let alice = root.path().join("alice");
        let bob = root.path().join("bob");
        fs::create_dir_all(alice.join(".ssh")).unwrap();
        fs::create_dir_all(bob.join(".aws")).unwrap();
        fs::create_dir_all(bob.join(".kube")).unwrap();
        let homes = Homes(vec![alice.clone(), bob.clone()]);
        let compiled = compile_with(
            "[[rule]]\nid = \"explicit\"\naction = \"allow\"\nname = \".env\"\n\
             [[rule]]\nid = \"secrets\"\naction = \"deny\"\nset = \"sensitive\"\naccess = [\"read\"]\n",
            &homes,
        )
        .unwrap();
        let objects: Vec<&FileTarget> = compiled
            .rules
            .iter()
            .filter(|rule| matches!(rule.target, FileTarget::Object(_)))
            .map(|rule| &rule.target)
            .collect();
        for dir in [alice.join(".ssh"), bob.join(".aws"), bob.join(".kube")] {
            let key = FileTarget::Object(inode_key(&dir).unwrap());
            assert!(objects.contains(&&key), "{} is protected", dir.display());
        }
        assert!(
            !objects.contains(&&FileTarget::Object(inode_key(&alice).unwrap())),
            "the home itself is not"
        );
        // The explicit rule on .env came first and keeps it; the set adds the other names.
        let env: Vec<&CompiledFileRule> = compiled
            .rules
            .iter()
            .filter(|rule| rule.target == FileTarget::Name(".env".into()))
            .collect();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].name, "a/explicit");
        assert!(
            compiled
                .rules
                .iter()
                .any(|rule| rule.target == FileTarget::Name("id_ed25519".into())
                    && rule.name == "a/secrets"
                    && rule.access == file_access::READ)
        );
        // Every set that `sensitive` includes exists.
        for included in file_set("sensitive").unwrap().includes {
            assert!(file_set(included).is_some(), "{included}");
        }
    }
}
