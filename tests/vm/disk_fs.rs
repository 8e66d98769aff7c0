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

/// Waits for the deny event of `agent`'s open of `path` under `rule`, and returns it.
fn open_denied_event(daemon: &Daemon, agent: &str, rule: &str, path: &Path) -> serde_json::Value {
    let path = path.to_str().expect("UTF-8 path");
    let mut found = None;
    wait_until(&format!("the deny event of {path}"), || {
        found = daemon
            .events()
            .iter()
            .filter(|line| line.contains("\"kind\":\"file\""))
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON event"))
            .find(|e| {
                e["kind"] == "file"
                    && e["verdict"] == "deny"
                    && e["agent"]["name"] == agent
                    && e["path"] == path
            });
        found.is_some()
    });
    let event = found.expect("found above");
    assert_eq!(event["rule"], format!("{agent}/{rule}"), "{event}");
    assert_eq!(event["hook"], "open", "{event}");
    assert_eq!(event["access"][0], "read", "{event}");
    event
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
    let event = open_denied_event(&daemon, agent, "no-secrets", &key);
    assert_eq!(event["path_source"], "kernel", "{event}");
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
