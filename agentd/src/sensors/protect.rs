//! agentd's self-protection: BPF LSM hooks that deny tagged processes signals to agentd,
//! ptrace of agentd and the `bpf()` system call, and the map naming agentd's processes.
//! agentd's files are protected by file rules (`daemon::State::file_rules`) against reads,
//! writes and metadata changes, and by identity (`SELF_OBJECTS`, which this sensor alone
//! writes) against being renamed, replaced, linked, unlinked, added to or mounted over.

use std::path::Path;

use agentd_common::{InodeKey, SelfObject, self_object};
use aya::{
    maps::{HashMap, MapData},
    programs::Lsm,
};

use super::{SensorError, attach_error, attach_optional_lsm, load_error, replace_all, take_map};
use crate::{ebpf::LoadedObject, pins::Links};

const PROGRAMS: [&str; 3] = ["task_kill", "ptrace_access_check", "bpf"];
/// The hooks that keep agentd's files in place by identity: (program, LSM hook).
const FILE_PROGRAMS: [(&str, &str); 9] = [
    ("protect_inode_rename", "inode_rename"),
    ("protect_inode_link", "inode_link"),
    ("protect_inode_unlink", "inode_unlink"),
    ("protect_inode_rmdir", "inode_rmdir"),
    ("protect_inode_mkdir", "inode_mkdir"),
    ("protect_inode_symlink", "inode_symlink"),
    ("protect_inode_mknod", "inode_mknod"),
    ("protect_sb_mount", "sb_mount"),
    ("protect_move_mount", "move_mount"),
];
const PROTECTED: &str = "PROTECTED";
const SELF_OBJECTS: &str = "SELF_OBJECTS";

pub struct ProtectSensor {
    protected: HashMap<MapData, u32, u32>,
    objects: HashMap<MapData, InodeKey, SelfObject>,
    /// Whether the hooks are attached (BPF LSM works here).
    active: bool,
    /// File hooks this kernel refused.
    missing: Vec<&'static str>,
}

impl ProtectSensor {
    /// Attaches the hooks when `enforce` (BPF LSM works), unless `links` adopted them.
    pub fn attach(
        object: &mut LoadedObject,
        enforce: bool,
        links: &mut Links,
    ) -> Result<Self, SensorError> {
        let protected = take_map(object, PROTECTED)?;
        let objects = take_map(object, SELF_OBJECTS)?;
        let active = if links.adopting() {
            PROGRAMS.iter().all(|name| links.has(name))
        } else if enforce {
            let LoadedObject { ebpf, btf, .. } = object;
            for name in PROGRAMS {
                let program: &mut Lsm = super::program(ebpf, name)?;
                program.load(name, btf).map_err(load_error(name))?;
                let link_id = program.attach().map_err(attach_error(name))?;
                links.add(
                    name,
                    program.take_link(link_id).map_err(attach_error(name))?,
                )?;
            }
            true
        } else {
            false
        };
        let missing = if active {
            attach_optional_lsm(object, &FILE_PROGRAMS, links)?
        } else {
            FILE_PROGRAMS.iter().map(|(_, hook)| *hook).collect()
        };
        Ok(Self {
            protected,
            objects,
            active,
            missing,
        })
    }

    /// Makes `paths` (agentd's binary, configuration, state, pins) the objects protected by
    /// identity, with every directory above them protected against rename and mount-over;
    /// `rule` is the rule number reported. Paths that do not exist are skipped.
    pub fn protect_files(&mut self, paths: &[&Path], rule: u32) -> Result<(), SensorError> {
        let want = self_objects(paths, rule);
        replace_all(&mut self.objects, &want, SELF_OBJECTS)
    }

    /// The file hooks of self-protection that are not enforced here.
    #[must_use]
    pub fn missing(&self) -> &[&'static str] {
        &self.missing
    }

    /// Makes `pids` (agentd's own processes) the protected ones.
    pub fn protect(&mut self, pids: &[u32]) -> Result<(), SensorError> {
        let want: Vec<(u32, u32)> = pids.iter().map(|pid| (*pid, 1)).collect();
        replace_all(&mut self.protected, &want, PROTECTED)
    }

    #[must_use]
    pub fn active(&self) -> bool {
        self.active
    }
}

/// The `SELF_OBJECTS` entries for `paths`: each object, and each directory above it (as
/// `stat(2)` resolves it: across mount points, the mounted root), an object's kind winning over
/// an ancestor's.
fn self_objects(paths: &[&Path], rule: u32) -> Vec<(InodeKey, SelfObject)> {
    let mut entries: Vec<(InodeKey, SelfObject)> = Vec::new();
    let mut add = |path: &Path, kind: u32| {
        let Ok(key) = crate::inode::inode_key(path) else {
            return;
        };
        match entries.iter_mut().find(|(existing, _)| *existing == key) {
            Some((_, value)) => value.kind |= kind,
            None => entries.push((key, SelfObject { kind, rule })),
        }
    };
    for path in paths {
        add(path, self_object::OWN);
        for ancestor in path.ancestors().skip(1) {
            if !ancestor.as_os_str().is_empty() {
                add(ancestor, self_object::ANCESTOR);
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_objects_name_each_path_and_every_directory_above_it_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("agentd.toml");
        std::fs::write(&config, "").expect("config");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state");
        let missing = dir.path().join("missing");
        let entries = self_objects(&[&config, &state, &missing], 9);
        let kind = |path: &Path| {
            let key = crate::inode::inode_key(path).expect("stat");
            entries
                .iter()
                .find(|(existing, _)| *existing == key)
                .map(|(_, value)| value.kind)
        };
        assert_eq!(kind(&config), Some(self_object::OWN));
        assert_eq!(kind(&state), Some(self_object::OWN));
        assert_eq!(kind(dir.path()), Some(self_object::ANCESTOR));
        assert_eq!(kind(Path::new("/")), Some(self_object::ANCESTOR));
        assert!(entries.iter().all(|(_, value)| value.rule == 9));
        let mut keys: Vec<_> = entries.iter().map(|(key, _)| *key).collect();
        keys.sort_by_key(|key| (key.dev, key.ino));
        keys.dedup();
        assert_eq!(keys.len(), entries.len(), "each object once");
    }
}
