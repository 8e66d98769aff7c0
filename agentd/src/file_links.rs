//! Files under an agent's directory rules that also have a name elsewhere: hard links, made by
//! anyone before the policy was applied. The kernel judges an open by the object's own rule and
//! then walks up from the name that was used; through an outside name it never meets the
//! directory. So when the policy is applied, agentd looks through each directory rule's tree for
//! regular files with more than one link and gives each, as its own rule, the nearest rule
//! above it inside the tree. Links made later by an agent are refused (`path_link` judges the
//! object linked); links made later by anyone else are found at the next apply.

use std::{
    collections::{HashMap, HashSet},
    fs,
    hash::BuildHasher,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

use agentd_common::{FileRule, InodeKey};

use crate::inode::inode_key_of;

/// Directory entries looked at per apply, across agents and rules: the scan's cost is bounded
/// whatever the trees hold.
pub const SCAN_ENTRIES: usize = 200_000;
/// Linked files marked per apply, across agents: each takes an entry of the kernel's file rule
/// map (16,384 in all).
pub const MARKED_FILES: usize = 4096;

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// (file, the rule it gets): files with other names, none of which has a rule of its own.
    pub marked: Vec<(InodeKey, FileRule)>,
    /// The budget ran out: files past it were not looked at.
    pub truncated: bool,
}

/// Scans the directories in `dirs` (each with its own rule) for linked files. `rules` holds the
/// agent's rules by object, which take precedence: a file with its own rule is left alone, and
/// a directory with its own rule is what its subtree's files get. The scan stays on each
/// directory's file system (the kernel's walk does not cross mounts either) and does not follow
/// symbolic links. `entries` and `marks` are the budgets left, shared by every call of an apply.
#[must_use]
pub fn scan<S: BuildHasher>(
    dirs: &[(PathBuf, FileRule)],
    rules: &HashMap<InodeKey, FileRule, S>,
    entries: &mut usize,
    marks: &mut usize,
) -> Scan {
    let mut found = Scan::default();
    let mut seen: HashSet<InodeKey> = HashSet::new();
    let mut stack: Vec<(PathBuf, u64, FileRule)> = Vec::new();
    for (dir, rule) in dirs {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        if meta.is_dir() && seen.insert(inode_key_of(&meta)) {
            stack.push((dir.clone(), meta.dev(), *rule));
        }
    }
    while let Some((dir, dev, rule)) = stack.pop() {
        let Ok(listing) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.flatten() {
            if *entries == 0 {
                found.truncated = true;
                return found;
            }
            *entries -= 1;
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != dev {
                continue;
            }
            let key = inode_key_of(&meta);
            if meta.is_dir() {
                if seen.insert(key) {
                    let nearest = rules.get(&key).copied().unwrap_or(rule);
                    stack.push((entry.path(), dev, nearest));
                }
            } else if meta.is_file()
                && meta.nlink() > 1
                && !rules.contains_key(&key)
                && !seen.contains(&key)
            {
                if *marks == 0 {
                    found.truncated = true;
                    return found;
                }
                seen.insert(key);
                *marks -= 1;
                found.marked.push((key, rule));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use agentd_common::{file_access, net_action};

    use super::*;
    use crate::inode::inode_key;

    fn rule(action: u8, id: u32) -> FileRule {
        FileRule::local(file_access::READ, action, false, id)
    }

    #[test]
    fn linked_files_get_the_nearest_rule_above_them() {
        let root = tempfile::tempdir().unwrap();
        let vault = root.path().join("vault");
        let open = vault.join("open");
        fs::create_dir_all(&open).unwrap();
        for (path, text) in [
            (vault.join("key"), "k"),
            (vault.join("lonely"), "l"),
            (open.join("note"), "n"),
            (vault.join("own"), "o"),
        ] {
            fs::write(path, text).unwrap();
        }
        fs::hard_link(vault.join("key"), root.path().join("key-outside")).unwrap();
        fs::hard_link(open.join("note"), root.path().join("note-outside")).unwrap();
        fs::hard_link(vault.join("own"), root.path().join("own-outside")).unwrap();
        std::os::unix::fs::symlink(root.path(), vault.join("loop")).unwrap();
        let deny = rule(net_action::DENY, 1);
        let allow = rule(net_action::ALLOW, 2);
        let own = rule(net_action::DENY, 3);
        let rules = HashMap::from([
            (inode_key(&vault).unwrap(), deny),
            (inode_key(&open).unwrap(), allow),
            (inode_key(&vault.join("own")).unwrap(), own),
        ]);
        let (mut entries, mut marks) = (SCAN_ENTRIES, MARKED_FILES);
        let found = scan(&[(vault.clone(), deny)], &rules, &mut entries, &mut marks);
        assert!(!found.truncated);
        let marked: HashMap<InodeKey, u32> = found
            .marked
            .iter()
            .map(|(key, value)| (*key, value.rule))
            .collect();
        assert_eq!(marked.len(), 2, "{marked:?}");
        assert_eq!(marked[&inode_key(&vault.join("key")).unwrap()], 1);
        assert_eq!(
            marked[&inode_key(&open.join("note")).unwrap()],
            2,
            "the nearer allow"
        );
        assert_eq!(marks, MARKED_FILES - 2);
        assert!(entries < SCAN_ENTRIES);
    }

    #[test]
    fn the_budgets_bound_the_scan_and_say_so() {
        let root = tempfile::tempdir().unwrap();
        for i in 0..10 {
            let file = root.path().join(format!("f{i}"));
            fs::write(&file, "x").unwrap();
            fs::hard_link(&file, root.path().join(format!("g{i}"))).unwrap();
        }
        let deny = rule(net_action::DENY, 1);
        let dirs = [(root.path().to_path_buf(), deny)];
        let (mut entries, mut marks) = (5, MARKED_FILES);
        let found = scan(&dirs, &HashMap::new(), &mut entries, &mut marks);
        assert!(found.truncated);
        assert_eq!(entries, 0);

        let (mut entries, mut marks) = (SCAN_ENTRIES, 3);
        let found = scan(&dirs, &HashMap::new(), &mut entries, &mut marks);
        assert!(found.truncated);
        assert_eq!(found.marked.len(), 3);
    }
}
