//! File rules on disk file systems: ext4 on a loop device (a real block device's number, not
//! tmpfs's anonymous one) and an overlay whose layers are on ext4. The other file tests run on
//! the guest's tmpfs.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path, process::Command};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

use crate::scratch_fs::{ext4_scratch, overlay_on_ext4};

/// Major number of loop devices.
const LOOP_MAJOR: u32 = 7;

/// Runs `cat PATH` as `agent` (or untagged): `None` if it read the file, else its stderr,
/// which must be agentd's EPERM.
fn read_as(daemon: &Daemon, agent: Option<&str>, path: &Path) -> Option<String> {
    let path = path.to_str().expect("UTF-8 path");
    let output = match agent {
        Some(agent) => daemon.launch(agent, &["cat", path]).output(),
        None => Command::new("cat").arg(path).output(),
    }
    .expect("running cat");
    if output.status.success() {
        return None;
    }
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.contains("Operation not permitted"),
        "cat {path}: {stderr}"
    );
    Some(stderr)
}

/// Waits until `agent`'s file deny events satisfy `done`; returns them all.
fn denies_until(
    daemon: &Daemon,
    agent: &str,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    wait_until(what, || {
        // `events` hands each line out once.
        seen.extend(
            daemon
                .events()
                .iter()
                .filter(|line| line.contains("\"kind\":\"file\""))
                .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON event"))
                .filter(|e| {
                    e["kind"] == "file" && e["verdict"] == "deny" && e["agent"]["name"] == agent
                }),
        );
        done(&seen)
    });
    seen
}

/// Checks that `event` is the deny of an open for reading under `agent`'s `rule`, with the
/// kernel's path.
fn assert_open_denied(event: &serde_json::Value, agent: &str, rule: &str) {
    assert_eq!(event["rule"], format!("{agent}/{rule}"), "{event}");
    assert_eq!(event["hook"], "open", "{event}");
    assert_eq!(event["access"][0], "read", "{event}");
    assert_eq!(event["path_source"], "kernel", "{event}");
}

/// Waits for the deny event of `agent`'s open of `path` under `rule`.
fn open_denied_event(daemon: &Daemon, agent: &str, rule: &str, path: &Path) {
    let path = path.to_str().expect("UTF-8 path");
    let events = denies_until(
        daemon,
        agent,
        &format!("the deny event of {path}"),
        |events| events.iter().any(|e| e["path"] == path),
    );
    assert_open_denied(
        events.iter().find(|e| e["path"] == path).unwrap(),
        agent,
        rule,
    );
}

fn policy(agent: &str, rule: &str, dir: &Path) -> String {
    format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"{rule}\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
        dir.display()
    )
}

/// A read rule on a directory of an ext4 file system on a loop device: the rule's key carries
/// a real block device's number (major 7), which the kernel and userspace encode differently.
#[test]
fn read_rule_on_an_ext4_directory_denies_its_files() {
    let agent = "ext4-agent";
    let ext4 = ext4_scratch(16);
    let device = fs::metadata(ext4.path()).expect("the mount").dev();
    assert_eq!(
        libc::major(device),
        LOOP_MAJOR,
        "{} is on a loop device ({device:#x})",
        ext4.path().display()
    );
    let secrets = ext4.path().join("secrets");
    fs::create_dir(&secrets).expect("secrets");
    let key = secrets.join("key");
    fs::write(&key, "k").expect("key");
    let public = ext4.path().join("public");
    fs::write(&public, "p").expect("public");
    let daemon = Daemon::start(&policy(agent, "no-secrets", &secrets));
    let _launched = launch_cgroup(agent);

    assert!(
        read_as(&daemon, Some(agent), &key).is_some(),
        "a file under the rule"
    );
    assert_eq!(
        read_as(&daemon, Some(agent), &public),
        None,
        "a file beside it"
    );
    assert_eq!(read_as(&daemon, None, &key), None, "untagged");
    open_denied_event(&daemon, agent, "no-secrets", &key);
}

/// A read rule on a directory of an overlay whose lower layer is on ext4: a file opened through
/// the overlay (from the lower layer, not copied up) is denied under the overlay's name.
#[test]
fn read_rule_on_an_overlay_directory_over_ext4_denies_its_files() {
    let agent = "overlay-agent";
    let overlay = overlay_on_ext4(16, |lower| {
        fs::create_dir(lower.join("secrets")).expect("secrets");
        fs::write(lower.join("secrets/key"), "k").expect("key");
        fs::write(lower.join("public"), "p").expect("public");
    });
    assert!(
        overlay
            .ext4()
            .device()
            .to_str()
            .is_some_and(|device| device.starts_with("/dev/loop")),
        "{}",
        overlay.ext4().device().display()
    );
    let secrets = overlay.merged().join("secrets");
    let key = secrets.join("key");
    let daemon = Daemon::start(&policy(agent, "no-secrets", &secrets));
    let _launched = launch_cgroup(agent);

    assert!(
        read_as(&daemon, Some(agent), &key).is_some(),
        "a lower-layer file under the rule, through the overlay"
    );
    assert_eq!(
        read_as(&daemon, Some(agent), &overlay.merged().join("public")),
        None,
        "a file beside it"
    );
    assert_eq!(read_as(&daemon, None, &key), None, "untagged");
    open_denied_event(&daemon, agent, "no-secrets", &key);
    // Still served from the lower layer: nothing was copied up.
    assert!(overlay.lower().join("secrets/key").exists());
    assert!(!overlay.ext4().path().join("upper/secrets").exists());
}

/// A read rule on an ext4 directory holds for an agent that reads its files through an overlay
/// that has the directory in its lower layer: another name for the same data, which the overlay
/// opens on the agent's behalf. 6.1 opens the lower file with the overlay's path as its
/// `f_path` (`open_with_fake_path`): the walk must start from the real file's dentry, not go
/// up the overlay's (it did, and the read went through). 6.12 opens a backing file whose
/// `f_path` is the lower one.
#[test]
fn read_rule_on_an_ext4_directory_holds_through_an_overlay_of_it() {
    let agent = "lower-agent";
    let overlay = overlay_on_ext4(16, |lower| {
        fs::create_dir(lower.join("secrets")).expect("secrets");
        fs::write(lower.join("secrets/key"), "k").expect("key");
    });
    let secrets = overlay.lower().join("secrets");
    let key = secrets.join("key");
    let ino = fs::metadata(&key).expect("the key").ino();
    let daemon = Daemon::start(&policy(agent, "no-secrets", &secrets));
    let _launched = launch_cgroup(agent);

    assert!(
        read_as(&daemon, Some(agent), &overlay.merged().join("secrets/key")).is_some(),
        "the lower file, through the overlay"
    );
    assert!(
        read_as(&daemon, Some(agent), &key).is_some(),
        "the lower file itself"
    );
    assert_eq!(
        read_as(&daemon, None, &overlay.merged().join("secrets/key")),
        None,
        "untagged"
    );
    // Both opens reached the lower file, and each was reported. (The path of the one through
    // the overlay is not checked here: on 6.12 agentd reports it as `/secrets/key`, the name
    // below the overlay's private mount of its lower layer.)
    let path = key.to_str().expect("UTF-8 path");
    let events = denies_until(
        &daemon,
        agent,
        "a deny event for each open of the lower file",
        |events| {
            events.iter().any(|e| e["path"] == path)
                && events.iter().filter(|e| e["ino"] == ino).count() >= 2
        },
    );
    for event in events.iter().filter(|e| e["ino"] == ino) {
        assert_open_denied(event, agent, "no-secrets");
    }
}
