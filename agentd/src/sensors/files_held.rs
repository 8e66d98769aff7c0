//! Descriptors opened before a rule. After each change of the file rules (a policy applied, a
//! Conditional Access decision with file controls or a block, a quarantine), agentd lists the
//! files that agents' processes hold open and writes them to `HELD_FILES`; the kernel's
//! `file_permission` program (`file_held`) judges every read and write of those files by a
//! tagged process as an open with that access, so a descriptor opened before the rule is
//! refused from then on. Files opened later were judged at their open and are not listed.
//! A descriptor passed to an agent (`SCM_RIGHTS`, `pidfd_getfd`) is judged when it arrives, by
//! `file_receive` (`file_received`). Both hooks are optional: one the kernel refuses is named
//! in [`HeldSensor::missing`].

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use agentd_common::InodeKey;
use aya::maps::{Array, HashMap, MapData};

use super::{SensorError, attach_optional_lsm, insert_if_absent, map_error, replace_all, take_map};
use crate::{ebpf::LoadedObject, inode::inode_key_of, pins::Links};

const PROGRAMS: [(&str, &str); 2] = [
    ("file_held", "file_permission"),
    ("file_received", "file_receive"),
];
const FILES: &str = "HELD_FILES";
const COUNT: &str = "HELD_COUNT";
/// The size of `HELD_FILES`.
pub const HELD_FILES_CAPACITY: usize = 16_384;
/// At most this many `/proc/PID/fd` entries are looked at per refresh, so that a refresh is
/// bounded work however many descriptors agents hold.
const FD_BUDGET: usize = 1_000_000;

/// What one refresh found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Distinct regular files and directories held open, at most the capacity.
    pub files: Vec<InodeKey>,
    /// The listing stopped early (the capacity or the descriptor budget was reached).
    pub truncated: bool,
}

/// The regular files and directories that the processes `pids` hold open, read from
/// `proc_root` (`/proc`), at most `limit` distinct ones. A process that exits meanwhile is
/// skipped.
#[must_use]
pub fn held_files(proc_root: &Path, pids: &[u32], limit: usize) -> Held {
    let mut seen = HashSet::new();
    let mut held = Held::default();
    let mut budget = FD_BUDGET;
    'pids: for pid in pids {
        let dir: PathBuf = proc_root.join(pid.to_string()).join("fd");
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if budget == 0 {
                held.truncated = true;
                break 'pids;
            }
            budget -= 1;
            // The magic link resolves to the open file itself, deleted or not.
            let Ok(meta) = fs::metadata(entry.path()) else {
                continue;
            };
            if !(meta.is_file() || meta.is_dir()) {
                continue;
            }
            let key = inode_key_of(&meta);
            if seen.insert(key) {
                if held.files.len() == limit {
                    held.truncated = true;
                    break 'pids;
                }
                held.files.push(key);
            }
        }
    }
    held
}

/// The `file_permission` check and the list of held files it judges.
pub struct HeldSensor {
    files: HashMap<MapData, InodeKey, u32>,
    count: Array<MapData, u32>,
    /// What `count` says: the entries of `files`.
    len: u32,
    missing: Vec<&'static str>,
}

impl HeldSensor {
    /// Attaches the hook when `enforce` (BPF LSM works), unless `links` adopted it.
    pub fn attach(
        object: &mut LoadedObject,
        enforce: bool,
        links: &mut Links,
    ) -> Result<Self, SensorError> {
        let files = take_map(object, FILES)?;
        let count: Array<MapData, u32> = take_map(object, COUNT)?;
        let missing = if enforce || links.adopting() {
            attach_optional_lsm(object, &PROGRAMS, links)?
        } else {
            PROGRAMS.iter().map(|(_, hook)| *hook).collect()
        };
        // Adopted maps keep their list until the next refresh.
        let len: u32 = count.get(&0, 0).map_err(map_error(COUNT))?;
        Ok(Self {
            files,
            count,
            len,
            missing,
        })
    }

    /// Makes the held list exactly `files`; the count goes to zero first when the list
    /// empties, and up last when it fills, so the kernel never skips a listed file.
    pub fn set(&mut self, files: &[InodeKey]) -> Result<(), SensorError> {
        let want: Vec<(InodeKey, u32)> = files.iter().map(|key| (*key, 1)).collect();
        let len = u32::try_from(want.len()).unwrap_or(u32::MAX);
        if len == 0 {
            self.count.set(0, 0, 0).map_err(map_error(COUNT))?;
        }
        replace_all(&mut self.files, &want, FILES)?;
        self.count.set(0, len, 0).map_err(map_error(COUNT))?;
        self.len = len;
        Ok(())
    }

    /// Adds `files` to the held list (the next [`Self::set`] replaces it all). Returns how many
    /// were new; a full list stops the adding with an error, keeping what was added.
    pub fn add(&mut self, files: &[InodeKey]) -> Result<usize, SensorError> {
        let mut added = 0;
        let mut result = Ok(());
        for key in files {
            match insert_if_absent(&mut self.files, key, &1, FILES) {
                Ok(inserted) => added += usize::from(inserted),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        if added > 0 {
            let len = self
                .len
                .saturating_add(u32::try_from(added).unwrap_or(u32::MAX));
            self.count.set(0, len, 0).map_err(map_error(COUNT))?;
            self.len = len;
        }
        result.map(|()| added)
    }

    /// Whether `file_permission` is attached: a refresh is pointless otherwise.
    #[must_use]
    pub fn active(&self) -> bool {
        !self.missing.contains(&"file_permission")
    }

    /// The LSM hooks of this sensor that are not enforced here.
    #[must_use]
    pub fn missing(&self) -> &[&'static str] {
        &self.missing
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    #[test]
    fn lists_the_regular_files_and_directories_a_process_holds_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("held");
        fs::write(&file, b"x").unwrap();
        let _a = File::open(&file).unwrap();
        let _b = File::open(&file).unwrap();
        let _d = File::open(dir.path()).unwrap();
        let held = held_files(Path::new("/proc"), &[std::process::id()], 1024);
        let file_key = inode_key_of(&fs::metadata(&file).unwrap());
        let dir_key = inode_key_of(&fs::metadata(dir.path()).unwrap());
        assert_eq!(held.files.iter().filter(|k| **k == file_key).count(), 1);
        assert!(held.files.contains(&dir_key));
        assert!(!held.truncated);
    }

    #[test]
    fn a_deleted_file_still_held_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gone");
        fs::write(&file, b"x").unwrap();
        let key = inode_key_of(&fs::metadata(&file).unwrap());
        let _held_open = File::open(&file).unwrap();
        fs::remove_file(&file).unwrap();
        let held = held_files(Path::new("/proc"), &[std::process::id()], 1024);
        assert!(held.files.contains(&key));
    }

    #[test]
    fn stops_at_the_limit_and_says_so_and_skips_processes_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut open = Vec::new();
        for i in 0..4 {
            let path = dir.path().join(i.to_string());
            fs::write(&path, b"x").unwrap();
            open.push(File::open(&path).unwrap());
        }
        let held = held_files(Path::new("/proc"), &[u32::MAX, std::process::id()], 2);
        assert_eq!(held.files.len(), 2);
        assert!(held.truncated);
        let none = held_files(Path::new("/proc"), &[u32::MAX], 2);
        assert_eq!(none, Held::default());
    }
}
