//! Discovery rules that the kernel cannot evaluate at exec: by content hash, and by
//! interpreter plus script. They run in userspace on each exec event of an untagged process;
//! a match tags the process (and any children it forked meanwhile) through the process sensor.
//! Rules by executable path are matched in the kernel itself (`DISCOVERY_INODES`).
//!
//! Also here: the heuristics that point out processes that look like agents or MCP servers
//! when no rule tags them (shadow agents).

use std::{
    collections::HashMap,
    fs,
    io::{self, Read as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agentd_common::InodeKey;
use sha2::{Digest as _, Sha256};

use crate::inode::{inode_key, inode_key_of};

/// What the rules need to know about one exec.
#[derive(Debug)]
pub struct ExecFacts<'a> {
    pub pid: u32,
    /// The executed file, as the kernel reported it.
    pub exe: InodeKey,
    /// The argument vector, `args[0]` first.
    pub args: &'a [String],
}

/// A rule that matched: the agent index and rule number to tag with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub agent: u32,
    pub rule: u32,
}

#[derive(Debug, Default)]
pub struct UserspaceRules {
    sha256: Vec<(RuleMatch, [u8; 32])>,
    scripts: Vec<(RuleMatch, InodeKey, InodeKey)>,
    /// Digests by (file, mtime, size), so that a binary is hashed once per version.
    hashes: HashMap<(InodeKey, i64, u64), [u8; 32]>,
}

/// How many digests are remembered before the cache starts over.
const HASH_CACHE_LIMIT: usize = 4096;

impl UserspaceRules {
    pub fn new(
        sha256: Vec<(RuleMatch, [u8; 32])>,
        scripts: Vec<(RuleMatch, InodeKey, InodeKey)>,
    ) -> Self {
        Self {
            sha256,
            scripts,
            hashes: HashMap::new(),
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sha256.is_empty() && self.scripts.is_empty()
    }

    /// The first rule that matches this exec. Files are read through `/proc/PID`, and only if
    /// they are still the objects the kernel reported: a process that has exec'd again or
    /// exited matches nothing.
    pub fn evaluate(&mut self, exec: &ExecFacts<'_>) -> Option<RuleMatch> {
        if let Some(found) = self.match_script(exec) {
            return Some(found);
        }
        if self.sha256.is_empty() {
            return None;
        }
        let digest = self.digest_of_exe(exec).ok()?;
        self.sha256
            .iter()
            .find(|(_, want)| *want == digest)
            .map(|(found, _)| *found)
    }

    fn match_script(&self, exec: &ExecFacts<'_>) -> Option<RuleMatch> {
        let candidates: Vec<_> = self
            .scripts
            .iter()
            .filter(|(_, interpreter, _)| *interpreter == exec.exe)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let script = script_argument(exec.args)?;
        let script = resolve_in_cwd(exec.pid, script)?;
        let script = inode_key(&script).ok()?;
        candidates
            .iter()
            .find(|(_, _, want)| *want == script)
            .map(|(found, _, _)| *found)
    }

    fn digest_of_exe(&mut self, exec: &ExecFacts<'_>) -> io::Result<[u8; 32]> {
        let mut file = fs::File::open(format!("/proc/{}/exe", exec.pid))?;
        let meta = file.metadata()?;
        let key = inode_key_of(&meta);
        if key != exec.exe {
            return Err(io::Error::other(
                "the process no longer runs the exec'd file",
            ));
        }
        let cache_key = (
            key,
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            meta.size(),
        );
        if let Some(digest) = self.hashes.get(&cache_key) {
            return Ok(*digest);
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if self.hashes.len() >= HASH_CACHE_LIMIT {
            self.hashes.clear();
        }
        self.hashes.insert(cache_key, digest);
        Ok(digest)
    }
}

/// The script an interpreter was asked to run: the first argument after `args[0]` that is not
/// an option. Covers `python3 agent.py`, `python3 -u /opt/a.py`, `node server.js`, and
/// `#!` scripts (the kernel passes the script path as an argument).
fn script_argument(args: &[String]) -> Option<&str> {
    args.iter()
        .skip(1)
        .map(String::as_str)
        .find(|arg| !arg.starts_with('-'))
}

/// `path` as the process at `pid` sees it: relative paths are taken from its working directory.
fn resolve_in_cwd(pid: u32, path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    if path.is_absolute() {
        return Some(path.to_owned());
    }
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(cwd.join(path))
}

/// Why an untagged exec looks like an AI agent or an MCP server, if it does. These are hints
/// for finding shadow agents, reported with the exec; they never tag anything.
#[must_use]
pub fn looks_like_agent(filename: &str, args: &[String]) -> Option<&'static str> {
    const RUNTIMES: [&str; 7] = [
        "claude",
        "codex",
        "aider",
        "gemini",
        "goose",
        "openhands",
        "cursor-agent",
    ];
    let base = Path::new(filename).file_name()?.to_str()?;
    if RUNTIMES.contains(&base) {
        return Some("agent-runtime");
    }
    let mcp = args
        .iter()
        .chain(std::iter::once(&filename.to_owned()))
        .any(|arg| {
            let arg = arg.to_ascii_lowercase();
            arg.contains("modelcontextprotocol")
                || arg
                    .split(['/', '-', '_', '.', '@', ' '])
                    .any(|word| word == "mcp")
        });
    mcp.then_some("mcp-server")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn script_is_the_first_non_option_argument() {
        assert_eq!(
            script_argument(&args(&["python3", "agent.py", "x"])),
            Some("agent.py")
        );
        assert_eq!(
            script_argument(&args(&["python3", "-u", "/opt/a.py"])),
            Some("/opt/a.py")
        );
        assert_eq!(script_argument(&args(&["node"])), None);
    }

    #[test]
    fn mcp_servers_and_agent_runtimes_are_pointed_out() {
        assert_eq!(
            looks_like_agent(
                "/usr/bin/node",
                &args(&["node", "@modelcontextprotocol/server-filesystem"])
            ),
            Some("mcp-server")
        );
        assert_eq!(
            looks_like_agent("/usr/local/bin/mcp-server-git", &args(&["mcp-server-git"])),
            Some("mcp-server")
        );
        assert_eq!(
            looks_like_agent("/usr/local/bin/claude", &args(&["claude"])),
            Some("agent-runtime")
        );
        assert_eq!(looks_like_agent("/usr/bin/ls", &args(&["ls", "-l"])), None);
        assert_eq!(
            looks_like_agent("/usr/bin/gcc", &args(&["gcc", "-mcpu=native"])),
            None
        );
    }

    #[test]
    fn sha256_rule_matches_the_running_executable() {
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let digest: [u8; 32] = Sha256::digest(fs::read(&exe).unwrap()).into();
        let found = RuleMatch { agent: 3, rule: 9 };
        let mut rules = UserspaceRules::new(vec![(found, digest)], Vec::new());
        let own = args(&["self"]);
        let facts = ExecFacts {
            pid: std::process::id(),
            exe: inode_key(&exe).unwrap(),
            args: &own,
        };
        assert_eq!(rules.evaluate(&facts), Some(found));
        let mut other = UserspaceRules::new(vec![(found, [0; 32])], Vec::new());
        assert_eq!(other.evaluate(&facts), None);
    }

    #[test]
    fn hash_is_refused_when_the_process_runs_another_file() {
        let mut rules =
            UserspaceRules::new(vec![(RuleMatch { agent: 1, rule: 1 }, [0; 32])], Vec::new());
        let own = args(&["self"]);
        let facts = ExecFacts {
            pid: std::process::id(),
            exe: InodeKey::new(0, 0, 1),
            args: &own,
        };
        assert!(rules.digest_of_exe(&facts).is_err());
    }
}
