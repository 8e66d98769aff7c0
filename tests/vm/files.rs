//! Agents' file rules through `agentd run`, where BPF LSM works.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

/// Runs `cat PATH` as `agent` (or untagged) and returns whether it could read it.
fn can_read(daemon: &Daemon, agent: Option<&str>, path: &Path) -> bool {
    let path = path.to_str().expect("UTF-8 path");
    let output = match agent {
        Some(agent) => daemon.launch(agent, &["cat", path]).output(),
        None => Command::new("cat").arg(path).output(),
    }
    .expect("running cat");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("ermission") || stderr.contains("not permitted"),
            "{stderr}"
        );
    }
    output.status.success()
}

fn file_events(daemon: &Daemon, seen: &mut Vec<serde_json::Value>) {
    seen.extend(
        daemon
            .events()
            .iter()
            .filter(|line| line.contains("\"kind\":\"file\""))
            .map(|line| serde_json::from_str(line).expect("a JSON event")),
    );
}

#[test]
fn agent_file_rules_deny_a_directory_subtree_and_a_file_through_every_name() {
    let agent = "files-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let secrets = dir.path().join("secrets");
    fs::create_dir(&secrets).expect("secrets dir");
    fs::write(secrets.join("key"), "k").expect("key");
    fs::write(dir.path().join("token"), "t").expect("token");
    fs::write(dir.path().join("public.txt"), "p").expect("public");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"no-secrets\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n\
         [[agent.files.rule]]\nid = \"no-token\"\naction = \"deny\"\npath = \"{}\"\n",
        secrets.display(),
        dir.path().join("token").display()
    ));
    let _launched = launch_cgroup(agent);

    assert!(
        !can_read(&daemon, Some(agent), &secrets.join("key")),
        "a file in the protected subtree"
    );
    assert!(
        can_read(&daemon, Some(agent), &dir.path().join("public.txt")),
        "an unprotected file"
    );
    assert!(
        !can_read(&daemon, Some(agent), &dir.path().join("token")),
        "the protected file"
    );
    assert!(
        can_read(&daemon, None, &secrets.join("key")),
        "untagged processes are unaffected"
    );

    // Other names for the same objects lead to the same rules.
    fs::hard_link(dir.path().join("token"), dir.path().join("token-link")).expect("hard link");
    assert!(
        !can_read(&daemon, Some(agent), &dir.path().join("token-link")),
        "a hard link"
    );
    symlink(secrets.join("key"), dir.path().join("key-link")).expect("symlink");
    assert!(
        !can_read(&daemon, Some(agent), &dir.path().join("key-link")),
        "a symlink"
    );
    let relative = daemon
        .launch(agent, &["sh", "-c", "cd secrets && cat ./key"])
        .current_dir(dir.path())
        .output()
        .expect("cat by relative path");
    assert!(!relative.status.success(), "a relative path");
    let renamed = dir.path().join("renamed");
    fs::rename(&secrets, &renamed).expect("renaming the protected directory");
    assert!(
        !can_read(&daemon, Some(agent), &renamed.join("key")),
        "after renaming the directory"
    );

    let mut events = Vec::new();
    wait_until("the deny events are printed", || {
        file_events(&daemon, &mut events);
        events.iter().filter(|e| e["verdict"] == "deny").count() >= 6
    });
    let denied = events
        .iter()
        .find(|e| e["verdict"] == "deny")
        .expect("a deny event");
    assert_eq!(denied["agent"]["name"], agent);
    assert!(
        denied["rule"]
            .as_str()
            .unwrap()
            .starts_with("files-agent/no-"),
        "{denied}"
    );
    assert_eq!(denied["access"][0], "read");
}

#[test]
fn file_audit_mode_allows_and_reports_would_deny() {
    let agent = "audited-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    fs::write(dir.path().join("secret"), "s").expect("secret");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\nmode = \"audit\"\n\
         [[agent.files.rule]]\nid = \"watched\"\naction = \"deny\"\npath = \"{}\"\n",
        dir.path().display()
    ));
    let _launched = launch_cgroup(agent);
    assert!(can_read(&daemon, Some(agent), &dir.path().join("secret")));
    let mut events = Vec::new();
    wait_until("the audit event is printed", || {
        file_events(&daemon, &mut events);
        !events.is_empty()
    });
    assert_eq!(events[0]["verdict"], "allow");
    assert_eq!(events[0]["would_deny"], true);
}

#[test]
fn exec_rule_stops_an_agent_running_a_binary() {
    let agent = "exec-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    // Named `true` so that busybox runs it as the true applet.
    let tool = dir.path().join("true");
    fs::copy("/bin/true", &tool).expect("copying true");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"no-tool\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"exec\"]\n",
        tool.display()
    ));
    let _launched = launch_cgroup(agent);
    let tool = tool.to_str().expect("UTF-8 path");
    let as_agent = daemon
        .launch(agent, &["sh", "-c", tool])
        .output()
        .expect("sh");
    assert!(
        !as_agent.status.success(),
        "the agent ran a binary it may not exec"
    );
    assert!(
        can_read(&daemon, Some(agent), Path::new(tool)),
        "reading it is still allowed: the rule covers exec only"
    );
    assert!(Command::new(tool).status().expect("untagged run").success());
}

#[test]
fn protected_directory_keeps_its_files_from_being_moved_removed_or_linked_out() {
    let agent = "mover-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let vault = dir.path().join("vault");
    fs::create_dir(&vault).expect("vault");
    fs::write(vault.join("key"), "k").expect("key");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\", \"write\"]\n",
        vault.display()
    ));
    let _launched = launch_cgroup(agent);
    let key = vault.join("key");
    let outside = dir.path().join("outside");
    for (what, command) in [
        (
            "rename out",
            format!("mv {} {}", key.display(), outside.display()),
        ),
        (
            "hard link out",
            format!("ln {} {}", key.display(), outside.display()),
        ),
        ("unlink", format!("rm {}", key.display())),
    ] {
        let output = daemon
            .launch(agent, &["sh", "-c", &command])
            .output()
            .expect("sh");
        assert!(!output.status.success(), "{what} succeeded");
        assert!(key.exists(), "{what}: the key is gone");
        assert!(!outside.exists(), "{what}: the key got out");
    }
    // Untagged processes are unaffected.
    let status = Command::new("ln")
        .arg(&key)
        .arg(&outside)
        .status()
        .expect("ln");
    assert!(status.success());
}
