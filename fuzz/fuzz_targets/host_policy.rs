//! The host policy (TOML): any text is parsed and, when it parses, checked and resolved as
//! `agentctl apply` would have it checked, against an empty cgroup root; it is refused with an
//! error or compiled, and never panics or runs away (libFuzzer's `-timeout` and
//! `-rss_limit_mb` flag an input that costs more).
#![no_main]

use std::sync::OnceLock;

use agentd::policy::{IdentityPolicy, network::Categories};
use libfuzzer_sys::fuzz_target;

/// An empty directory standing in for the cgroup root: every named cgroup is missing.
fn cgroup_root() -> &'static std::path::Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = IdentityPolicy::parse(text) {
        let _ = policy.compile(cgroup_root(), &Categories::default());
    }
});
