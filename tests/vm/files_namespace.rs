//! The file evasion corpus's changes to names and truncations: an agent that may not read or
//! write a protected object tries to swap it out, rename over it, link into its directory,
//! create or remove entries there, or empty it without opening it for writing. Each attempt
//! must fail with EPERM and be reported as a `file` event.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentd_tests::{Daemon, launch_cgroup};

use crate::helper;

/// Runs `agentd-test-helper fs OPS...` as `agent` (or untagged) and returns its words.
pub(crate) fn fs_ops(daemon: &Daemon, agent: Option<&str>, ops: &[&str]) -> String {
    let Some(agent) = agent else {
        return untagged_fs_ops(ops);
    };
    let helper = helper();
    let mut args = vec![helper.to_str().expect("UTF-8 path"), "fs"];
    args.extend_from_slice(ops);
    words(ops, daemon.launch(agent, &args).output())
}

/// Runs `agentd-test-helper fs OPS...` untagged (no agentd needed) and returns its words.
pub(crate) fn untagged_fs_ops(ops: &[&str]) -> String {
    words(ops, Command::new(helper()).arg("fs").args(ops).output())
}

/// The helper's words, once it exited successfully.
fn words(ops: &[&str], output: std::io::Result<std::process::Output>) -> String {
    let output = output.expect("running the helper");
    assert!(
        output.status.success(),
        "{ops:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Waits until the daemon has printed file events for which `done` holds; returns them all.
pub(crate) fn file_events_until(
    daemon: &Daemon,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut events: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        events.extend(
            daemon
                .events()
                .iter()
                .filter(|line| line.contains("\"kind\":\"file\""))
                .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON event"))
                // Not a detection that quotes file events.
                .filter(|event| event["kind"] == "file"),
        );
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not all there after 30 s; the file events: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A deny event of `agent` from `hook` that satisfies `also`.
pub(crate) fn denied(
    events: &[serde_json::Value],
    agent: &str,
    hook: &str,
    also: impl Fn(&serde_json::Value) -> bool,
) -> bool {
    events.iter().any(|e| {
        e["verdict"] == "deny" && e["agent"]["name"] == agent && e["hook"] == hook && also(e)
    })
}

fn accesses(event: &serde_json::Value) -> Vec<&str> {
    event["access"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default()
}

/// `renameat2(RENAME_EXCHANGE)` swaps both names: a protected file cannot be swapped out to a
/// name the agent may use, nor another file swapped into its place, and a file under a read
/// rule cannot be moved (or swapped) to where it could be read.
#[test]
fn rename_exchange_cannot_swap_a_protected_file_out_or_a_read_denied_file_away() {
    let agent = "swapping-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let vault = dir.path().join("vault");
    let secrets = dir.path().join("secrets");
    fs::create_dir(&vault).expect("vault");
    fs::create_dir(&secrets).expect("secrets");
    let key = vault.join("key");
    let token = secrets.join("token");
    let decoy = dir.path().join("decoy");
    fs::write(&key, "key").expect("key");
    fs::write(&token, "token").expect("token");
    fs::write(&decoy, "decoy").expect("decoy");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"write\"]\n\
         [[agent.files.rule]]\nid = \"secrets\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
        vault.display(),
        secrets.display()
    ));
    let _launched = launch_cgroup(agent);
    let moved = dir.path().join("moved");
    let said = fs_ops(
        &daemon,
        Some(agent),
        &[
            "exchange",
            path(&key),
            path(&decoy),
            "exchange",
            path(&decoy),
            path(&key),
            "exchange",
            path(&token),
            path(&decoy),
            "rename",
            path(&token),
            path(&moved),
        ],
    );
    assert_eq!(said, "eperm eperm eperm eperm");
    assert_eq!(fs::read_to_string(&key).unwrap(), "key");
    assert_eq!(fs::read_to_string(&decoy).unwrap(), "decoy");
    assert_eq!(fs::read_to_string(&token).unwrap(), "token");
    assert!(!moved.exists());

    let events = file_events_until(&daemon, "the rename deny events", |events| {
        denied(events, agent, "rename", |e| {
            e["side"] == "object" && e["rule"] == format!("{agent}/vault")
        }) && denied(events, agent, "rename", |e| {
            e["side"] == "destination" && e["rule"] == format!("{agent}/vault")
        }) && denied(events, agent, "rename", |e| {
            e["rule"] == format!("{agent}/secrets") && accesses(e) == ["read"]
        })
    });
    let swapped_in = events
        .iter()
        .find(|e| e["hook"] == "rename" && e["side"] == "destination")
        .unwrap();
    assert_eq!(swapped_in["path"], "key", "{swapped_in}");
    assert_eq!(swapped_in["path_source"], "name");

    // Untagged, the same swap works (and is undone).
    assert_eq!(
        fs_ops(
            &daemon,
            None,
            &[
                "exchange",
                path(&key),
                path(&decoy),
                "exchange",
                path(&key),
                path(&decoy)
            ]
        ),
        "ok ok"
    );
}

/// Renaming a file over a protected one replaces it: a write of the protected file. Renaming a
/// file into a write-protected directory is a write to the directory.
#[test]
fn renaming_over_a_protected_file_or_into_a_protected_directory_is_a_write() {
    let agent = "replacing-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("config");
    let vault = dir.path().join("vault");
    fs::create_dir(&vault).expect("vault");
    fs::write(&config, "good").expect("config");
    let evil = dir.path().join("evil");
    fs::write(&evil, "evil").expect("evil");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"config\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"write\"]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"write\"]\n",
        config.display(),
        vault.display()
    ));
    let _launched = launch_cgroup(agent);
    let planted = vault.join("planted");
    let said = fs_ops(
        &daemon,
        Some(agent),
        &[
            "rename",
            path(&evil),
            path(&config),
            "rename",
            path(&evil),
            path(&planted),
        ],
    );
    assert_eq!(said, "eperm eperm");
    assert_eq!(fs::read_to_string(&config).unwrap(), "good");
    assert!(evil.exists() && !planted.exists());
    let events = file_events_until(&daemon, "the rename-over deny events", |events| {
        denied(events, agent, "rename", |e| {
            e["side"] == "destination" && e["path"] == "config" && accesses(e) == ["write"]
        }) && denied(events, agent, "rename", |e| {
            e["side"] == "destination" && e["path"] == "planted"
        })
    });
    let over = events.iter().find(|e| e["path"] == "config").unwrap();
    assert_eq!(over["rule"], format!("{agent}/config"), "{over}");
    // Untagged processes replace it as before.
    fs::rename(&evil, &config).expect("untagged rename over");
    assert_eq!(fs::read_to_string(&config).unwrap(), "evil");
}

/// A hard link into a protected directory adds a name there, whether from a named file or an
/// `O_TMPFILE` opened elsewhere and linked in with `linkat`.
#[test]
fn hard_links_and_tmpfiles_cannot_be_linked_into_a_protected_directory() {
    let agent = "linking-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let vault = dir.path().join("vault");
    fs::create_dir(&vault).expect("vault");
    let outside = dir.path().join("outside");
    fs::write(&outside, "o").expect("outside");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"write\"]\n",
        vault.display()
    ));
    let _launched = launch_cgroup(agent);
    let linked = vault.join("linked");
    let tmp = vault.join("tmp");
    let said = fs_ops(
        &daemon,
        Some(agent),
        &[
            "link",
            path(&outside),
            path(&linked),
            "tmpfile-link",
            path(dir.path()),
            path(&tmp),
        ],
    );
    assert_eq!(said, "eperm eperm");
    assert!(!linked.exists() && !tmp.exists());
    let events = file_events_until(&daemon, "the link deny events", |events| {
        ["linked", "tmp"].iter().all(|name| {
            denied(events, agent, "link", |e| {
                e["side"] == "destination" && e["path"] == *name && accesses(e) == ["write"]
            })
        })
    });
    assert!(events.iter().all(|e| e["rule"] == format!("{agent}/vault")));
    // Untagged, both work (the file system offers O_TMPFILE).
    assert_eq!(
        fs_ops(
            &daemon,
            None,
            &[
                "link",
                path(&outside),
                path(&linked),
                "tmpfile-link",
                path(dir.path()),
                path(&tmp)
            ]
        ),
        "ok ok"
    );
}

/// Every kind of entry is a write to the directory that gains or loses it: directories,
/// symbolic links, FIFOs, and removing a directory or a file.
#[test]
fn write_protected_directory_refuses_mkdir_symlink_mkfifo_rmdir_and_unlink() {
    let agent = "builder-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let vault = dir.path().join("vault");
    let empty = vault.join("empty");
    fs::create_dir_all(&empty).expect("vault/empty");
    let key = vault.join("key");
    fs::write(&key, "k").expect("key");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"write\"]\n",
        vault.display()
    ));
    let _launched = launch_cgroup(agent);
    let (new_dir, link, fifo) = (vault.join("d"), vault.join("s"), vault.join("p"));
    let ops = [
        "mkdir",
        path(&new_dir),
        "symlink",
        "/etc/hostname",
        path(&link),
        "mkfifo",
        path(&fifo),
        "rmdir",
        path(&empty),
        "unlink",
        path(&key),
    ];
    assert_eq!(
        fs_ops(&daemon, Some(agent), &ops),
        "eperm eperm eperm eperm eperm"
    );
    assert!(!new_dir.exists() && link.symlink_metadata().is_err() && !fifo.exists());
    assert!(empty.is_dir() && key.exists());
    let events = file_events_until(&daemon, "the creation and removal events", |events| {
        [
            ("mkdir", "d"),
            ("symlink", "s"),
            ("mknod", "p"),
            ("rmdir", "empty"),
            ("unlink", "key"),
        ]
        .iter()
        .all(|(hook, name)| {
            denied(events, agent, hook, |e| {
                e["path"] == *name && accesses(e) == ["write"] && e["path_source"] == "name"
            })
        })
    });
    assert!(
        events.iter().all(|e| e["rule"] == format!("{agent}/vault")),
        "{events:#?}"
    );
    // Untagged processes change the directory as before.
    assert_eq!(fs_ops(&daemon, None, &ops), "ok ok ok ok ok");
}

/// `open(O_RDONLY | O_TRUNC)` empties a file as surely as a write; so does `truncate(2)`.
#[test]
fn truncation_is_a_write_whatever_the_access_mode() {
    let agent = "truncating-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let vault = dir.path().join("vault");
    fs::create_dir(&vault).expect("vault");
    let key = vault.join("key");
    fs::write(&key, "key").expect("key");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"write\"]\n",
        vault.display()
    ));
    let _launched = launch_cgroup(agent);
    let said = fs_ops(
        &daemon,
        Some(agent),
        &["open-trunc", path(&key), "truncate", path(&key)],
    );
    assert_eq!(said, "eperm eperm");
    assert_eq!(fs::read_to_string(&key).unwrap(), "key");
    let events = file_events_until(&daemon, "the truncation events", |events| {
        denied(events, agent, "open", |e| {
            accesses(e) == ["write"]
                && e["open_flags"].as_u64().unwrap_or(0) & (libc::O_TRUNC as u64) != 0
                && e["path"] == path(&key)
        }) && denied(events, agent, "truncate", |e| e["path"] == "key")
    });
    assert!(events.iter().all(|e| e["rule"] == format!("{agent}/vault")));
    // Reading is not covered: a plain read-only open still works.
    let read = daemon
        .launch(agent, &["cat", path(&key)])
        .output()
        .expect("cat");
    assert_eq!(String::from_utf8_lossy(&read.stdout), "key");
}

/// Quarantine denies every change an agent makes, not only opens for writing: creations of
/// every kind, removals, renames, links, truncation through `O_TRUNC`, `truncate(2)` and
/// `ftruncate(2)` on a descriptor opened for writing before the quarantine.
#[test]
fn quarantine_denies_every_change_to_names_and_truncation() {
    let agent = "quarantined-builder";
    let dir = tempfile::tempdir().expect("temporary directory");
    let work = dir.path().join("work");
    let empty = work.join("empty");
    fs::create_dir_all(&empty).expect("work/empty");
    let file = work.join("file");
    let held = work.join("held");
    fs::write(&file, "file").expect("file");
    fs::write(&held, "held").expect("held");
    let daemon = Daemon::start(&format!("[[agent]]\nname = \"{agent}\"\n"));
    let _launched = launch_cgroup(agent);
    // A descriptor opened for writing while the agent was free.
    let go = dir.path().join("go");
    let helper = helper();
    let mut holder = daemon
        .launch(
            agent,
            &[
                path(&helper),
                "fs",
                "hold-ftruncate",
                path(&held),
                path(&go),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("holder");
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("opened"), "ok");

    let quarantine = |release: bool| daemon.quarantine(agent, release);
    quarantine(false);
    fs::write(&go, "").expect("go");
    assert_eq!(lines.next().expect("a line").expect("ftruncate"), "eperm");
    assert!(holder.wait().expect("holder").success());
    assert_eq!(fs::read_to_string(&held).unwrap(), "held");

    let (d, s, p) = (work.join("d"), work.join("s"), work.join("p"));
    let (renamed, linked, tmp) = (work.join("renamed"), work.join("linked"), work.join("tmp"));
    let ops = [
        "mkdir",
        path(&d),
        "symlink",
        "/etc/hostname",
        path(&s),
        "mkfifo",
        path(&p),
        "rmdir",
        path(&empty),
        "rename",
        path(&file),
        path(&renamed),
        "link",
        path(&file),
        path(&linked),
        "tmpfile-link",
        path(&work),
        path(&tmp),
        "open-trunc",
        path(&file),
        "truncate",
        path(&file),
        "unlink",
        path(&file),
    ];
    // The `O_TMPFILE` is a new file: its open for writing is refused before any link.
    assert_eq!(
        fs_ops(&daemon, Some(agent), &ops),
        "eperm eperm eperm eperm eperm eperm open-eperm eperm eperm eperm"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "file");
    assert!(empty.is_dir() && !d.exists() && !renamed.exists() && !linked.exists());
    let events = file_events_until(&daemon, "the quarantine's deny events", |events| {
        [
            "mkdir", "symlink", "mknod", "rmdir", "rename", "link", "open", "truncate", "unlink",
        ]
        .iter()
        .all(|hook| denied(events, agent, hook, |e| accesses(e) == ["write"]))
            && events
                .iter()
                .filter(|e| e["hook"] == "truncate" && e["path"] == "held")
                .count()
                == 1
    });
    assert!(events.iter().all(|e| e["verdict"] == "deny"), "{events:#?}");

    // Released, the agent changes names again.
    quarantine(true);
    assert_eq!(
        fs_ops(
            &daemon,
            Some(agent),
            &["mkdir", path(&d), "rename", path(&file), path(&renamed)]
        ),
        "ok ok"
    );
}
