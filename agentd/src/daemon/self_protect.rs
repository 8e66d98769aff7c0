//! agentd's own files, protected from every agent by kernel object.

use std::path::{Path, PathBuf};

use agentd_common::file_access;

use crate::{
    config::Config,
    identity::Registry,
    sensors::{SensorError, protect::ProtectSensor},
};

/// The rule reported when agentd's self-protection denies.
pub(super) const SELF_PROTECTION_RULE: &str = "agentd-self-protection";
/// The rule reported when an agent is refused an anonymous exec (`allow_anonymous_exec`).
pub(super) const ANONYMOUS_EXEC_RULE: &str = "anonymous-exec";

/// Protects agentd's own files by identity (`SELF_OBJECTS`) and returns them by kernel object
/// with the access every agent is denied, for the file rules.
pub(super) fn protect_own_files(
    config: &Config,
    protect: &mut ProtectSensor,
    registry: &mut Registry,
) -> Result<Vec<(agentd_common::InodeKey, u32)>, SensorError> {
    let own_paths = protected_paths(config);
    let paths: Vec<&Path> = own_paths.iter().map(|(path, _)| path.as_path()).collect();
    protect.protect_files(&paths, registry.intern_rule(SELF_PROTECTION_RULE))?;
    Ok(own_paths
        .iter()
        .filter_map(|(path, access)| Some((crate::inode::inode_key(path).ok()?, *access)))
        .collect())
}

/// agentd's own files and the access no agent gets to them: its configuration, policy, state
/// (credentials, kept decisions), pins and event output may be neither read nor written; its
/// binary may not be written (agents may run `agentd whoami`).
fn protected_paths(config: &Config) -> Vec<(PathBuf, u32)> {
    let all = file_access::READ | file_access::WRITE;
    let mut paths = vec![
        (config.bpf.pin_path.clone(), all),
        (config.control_plane.state_dir.clone(), all),
        (config.identity.policy_dir.clone(), all),
    ];
    if let Some(source) = &config.source {
        paths.push((source.clone(), all));
    }
    if config.events.output != Path::new("-") {
        paths.push((config.events.output.clone(), all));
    }
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        paths.push((exe, file_access::WRITE));
    }
    paths
}
