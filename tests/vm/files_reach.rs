//! The file evasion corpus's objects that a walk up the directories must still place: a file
//! buried deeper than a path can name, and a file reopened by handle after the caches dropped
//! its parents. Directory rules must cover them, or, where the kernel cannot say where the
//! object is, the agent's unresolved-location rule must refuse it (fail closed).

use std::fs;

use agentd_tests::{Daemon, launch_cgroup};

use crate::{
    files_namespace::{denied, file_events_until, fs_ops, path, untagged_fs_ops},
    scratch_fs::ext4_scratch,
};

/// A tree deeper than the old 16-level walk under a read-denied directory is denied by the
/// directory's rule; one deeper than any path can name (4,100 levels, past the walk's bound)
/// is denied as unresolved, inside or outside the directory; a shallower tree outside it stays
/// readable.
#[test]
fn deep_trees_stay_under_their_directory_rules() {
    let agent = "digging-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let vault = dir.path().join("vault");
    let outside = dir.path().join("outside");
    for tree in ["deep", "deeper"] {
        fs::create_dir_all(vault.join(tree)).expect("vault tree");
        fs::create_dir_all(outside.join(tree)).expect("outside tree");
    }
    let (deep, deeper) = ("40", "4100");
    let made = untagged_fs_ops(&[
        "deep-make",
        path(&vault.join("deep")),
        deep,
        "deep-make",
        path(&vault.join("deeper")),
        deeper,
        "deep-make",
        path(&outside.join("deep")),
        deep,
        "deep-make",
        path(&outside.join("deeper")),
        deeper,
    ]);
    assert_eq!(made, "ok ok ok ok", "building the trees untagged");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
        vault.display(),
    ));
    let _launched = launch_cgroup(agent);
    let said = fs_ops(
        &daemon,
        Some(agent),
        &[
            "deep-read",
            path(&vault.join("deep")),
            deep,
            "deep-read",
            path(&vault.join("deeper")),
            deeper,
            "deep-read",
            path(&outside.join("deep")),
            deep,
            "deep-read",
            path(&outside.join("deeper")),
            deeper,
        ],
    );
    assert_eq!(
        said, "eperm eperm ok eperm",
        "40 levels under the vault, 4,100 under it, 40 outside, 4,100 outside"
    );
    let events = file_events_until(&daemon, "the deep reads' denials", |events| {
        let by = |how: &'static str| {
            move |e: &serde_json::Value| e["decided_by"] == how && e["access"][0] == "read"
        };
        denied(events, agent, "open", by("rule"))
            && events
                .iter()
                .filter(|e| {
                    e["verdict"] == "deny"
                        && e["agent"]["name"] == agent
                        && e["decided_by"] == "unresolved_location"
                })
                .count()
                >= 2
    });
    assert!(
        events
            .iter()
            .filter(|e| e["decided_by"] == "rule")
            .all(|e| e["rule"] == format!("{agent}/vault")),
        "the directory's rule decided the 40-level read: {events:#?}"
    );
    assert!(
        events
            .iter()
            .filter(|e| e["decided_by"] == "unresolved_location")
            .all(|e| e["rule"] == "unresolved-location"),
        "the unresolved reads name the unresolved-location rule: {events:#?}"
    );
}

/// A rule on a file's path keeps covering the name when the file is replaced the way editors
/// and `passwd` save (a new file renamed over the old, here by root outside any agent), and
/// when it is removed and made again; the old object keeps its rule wherever it goes.
#[test]
fn a_path_rule_covers_the_file_that_replaces_it_by_rename() {
    let agent = "replacing-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let shadow = dir.path().join("shadow");
    let passwd = dir.path().join("passwd");
    fs::write(&shadow, "old secret").expect("shadow");
    fs::write(&passwd, "users").expect("passwd");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"shadow\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n\
         [[agent.files.rule]]\nid = \"passwd\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"write\"]\n",
        shadow.display(),
        passwd.display(),
    ));
    let _launched = launch_cgroup(agent);
    // Root saves both files anew, outside any agent, after the policy was applied.
    let old = dir.path().join("shadow.old");
    fs::rename(&shadow, &old).expect("keeping the old shadow");
    let fresh = dir.path().join("shadow.new");
    fs::write(&fresh, "new secret").expect("the new shadow");
    fs::rename(&fresh, &shadow).expect("renaming the new shadow into place");
    fs::remove_file(&passwd).expect("removing passwd");
    let said = fs_ops(
        &daemon,
        Some(agent),
        &[
            "read",
            path(&shadow),
            "read",
            path(&old),
            "mkdir",
            path(&passwd),
        ],
    );
    assert_eq!(
        said, "eperm eperm eperm",
        "the new shadow, the old one moved aside, a directory made at passwd's name"
    );
    let events = file_events_until(&daemon, "the replaced files' denials", |events| {
        let rule =
            |id: &'static str| move |e: &serde_json::Value| e["rule"] == format!("{agent}/{id}");
        denied(events, agent, "open", rule("shadow"))
            && events
                .iter()
                .filter(|e| e["verdict"] == "deny" && e["rule"] == format!("{agent}/shadow"))
                .count()
                >= 2
            && denied(events, agent, "mkdir", rule("passwd"))
    });
    assert!(
        events.iter().all(|e| e["decided_by"] == "rule"),
        "local rules decided: {events:#?}"
    );
}

/// A root agent reopens a file of a read-denied ext4 directory by its handle after dropping
/// the caches: the kernel gives it a disconnected dentry, with no parents to walk. The read is
/// denied by the agent's unresolved-location rule, and the event says the path is unresolved.
#[test]
fn a_file_reopened_by_handle_without_its_parents_is_still_denied() {
    let agent = "handle-agent";
    let disk = ext4_scratch(16);
    let vault = disk.path().join("vault");
    fs::create_dir(&vault).expect("vault");
    let key = vault.join("key");
    fs::write(&key, "key").expect("key");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
        vault.display(),
    ));
    let _launched = launch_cgroup(agent);
    let said = fs_ops(
        &daemon,
        Some(agent),
        &["handle-read", path(disk.path()), path(&key)],
    );
    assert_eq!(said, "eperm", "reopening the key by handle");
    let events = file_events_until(&daemon, "the handle read's denial", |events| {
        denied(events, agent, "open", |e| {
            e["decided_by"] == "unresolved_location"
        })
    });
    let event = events
        .iter()
        .find(|e| e["decided_by"] == "unresolved_location")
        .expect("the denial");
    assert_eq!(event["rule"], "unresolved-location", "{event}");
    assert_eq!(event["path"], "unresolved", "{event}");
    assert_eq!(event["path_source"], "unresolved", "{event}");
    assert_eq!(event["access"][0], "read", "{event}");
    // The same handle read untagged works: the file is there and the handle is good.
    assert_eq!(
        untagged_fs_ops(&["handle-read", path(disk.path()), path(&key)]),
        "ok",
        "untagged"
    );
}

/// A file under a read-denied directory that had a hard link elsewhere before the policy was
/// applied is denied through the outside name too, by the directory's rule; a linked file under
/// an `allow` hole in the directory stays readable through its outside name.
#[test]
fn hard_links_made_before_the_policy_are_covered_by_their_directory_rule() {
    let agent = "linking-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let vault = dir.path().join("vault");
    let open = vault.join("open");
    fs::create_dir_all(&open).expect("vault/open");
    fs::write(vault.join("key"), "key").expect("key");
    fs::write(open.join("note"), "note").expect("note");
    let key_outside = dir.path().join("key-outside");
    let note_outside = dir.path().join("note-outside");
    fs::hard_link(vault.join("key"), &key_outside).expect("the key's outside link");
    fs::hard_link(open.join("note"), &note_outside).expect("the note's outside link");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"open\"\naction = \"allow\"\npath = \"{}\"\naccess = [\"read\"]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
        open.display(),
        vault.display(),
    ));
    let _launched = launch_cgroup(agent);
    let said = fs_ops(
        &daemon,
        Some(agent),
        &["read", path(&key_outside), "read", path(&note_outside)],
    );
    assert_eq!(
        said, "eperm ok",
        "the key and the note through their outside names"
    );
    let events = file_events_until(&daemon, "the outside link's denial", |events| {
        denied(events, agent, "open", |e| {
            e["rule"] == format!("{agent}/vault") && e["path"] == path(&key_outside)
        })
    });
    assert!(
        events.iter().all(|e| e["verdict"] == "deny"),
        "only the key was refused: {events:#?}"
    );
}
