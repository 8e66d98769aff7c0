//! Agents' file rules through `agentd run`, where BPF LSM works.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::Path,
    process::Command,
};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

use crate::helper;

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
    assert_eq!(denied["hook"], "open");
    // The path is the kernel's: absolute even where the process used a relative one.
    for event in events.iter().filter(|e| e["verdict"] == "deny") {
        assert_eq!(event["path_source"], "kernel", "{event}");
        assert!(event["path"].as_str().unwrap().starts_with('/'), "{event}");
    }
    assert!(
        events
            .iter()
            .any(|e| e["path"] == renamed.join("key").to_str().unwrap()),
        "the path after the rename: {events:#?}"
    );
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

    let mut events = Vec::new();
    wait_until("the exec deny event is printed", || {
        file_events(&daemon, &mut events);
        events.iter().any(|e| e["hook"] == "exec")
    });
    let denied = events.iter().find(|e| e["hook"] == "exec").unwrap();
    assert_eq!(denied["verdict"], "deny");
    assert_eq!(denied["access"][0], "exec");
    assert_eq!(denied["path"], tool);
    assert_eq!(denied["rule"], format!("{agent}/no-tool"));
}

/// `bprm_check_security` runs for each interpreter too: a script cannot smuggle a denied
/// binary in through its `#!` line.
#[test]
fn denied_interpreter_cannot_run_through_a_script() {
    let agent = "script-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let shell = dir.path().join("sh");
    fs::copy("/bin/sh", &shell).expect("copying sh");
    let script = dir.path().join("script");
    fs::write(&script, format!("#!{}\necho ran\n", shell.display())).expect("script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"no-shell\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"exec\"]\n",
        shell.display()
    ));
    let _launched = launch_cgroup(agent);
    let script = script.to_str().unwrap();
    let output = daemon.launch(agent, &[script]).output().expect("script");
    assert!(
        !output.status.success(),
        "the script ran its denied interpreter"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ran"));
    let untagged = Command::new(script).output().expect("untagged script");
    assert_eq!(String::from_utf8_lossy(&untagged.stdout), "ran\n");
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

/// Names that reach the object without the usual open: `openat2`, an `O_PATH` descriptor
/// reopened through `/proc/self/fd/N`, and a bind mount of the protected directory.
#[test]
fn evasion_corpus_is_denied() {
    let agent = "evasive-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let secrets = dir.path().join("secrets");
    fs::create_dir(&secrets).expect("secrets");
    let key = secrets.join("key");
    fs::write(&key, "k").expect("key");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"no-secrets\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
        secrets.display()
    ));
    let _launched = launch_cgroup(agent);
    let helper = helper();
    let helper = helper.to_str().unwrap();
    let output = daemon
        .launch(agent, &[helper, "open-evasions", key.to_str().unwrap()])
        .output()
        .expect("helper");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(said.trim(), "openat2=eperm proc-fd=eperm");
    // Untagged, the same calls succeed.
    let output = Command::new(helper)
        .args(["open-evasions", key.to_str().unwrap()])
        .output()
        .expect("helper");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "openat2=ok proc-fd=ok"
    );

    // A bind mount gives the directory a second path; its dentries are the same.
    let mount = dir.path().join("mnt");
    fs::create_dir(&mount).expect("mount point");
    let status = Command::new("mount")
        .arg("--bind")
        .arg(&secrets)
        .arg(&mount)
        .status()
        .expect("mount --bind");
    assert!(status.success());
    let through_mount = can_read(&daemon, Some(agent), &mount.join("key"));
    let _ = Command::new("umount").arg(&mount).status();
    assert!(!through_mount, "read through a bind mount");
}

/// Writing into a protected directory: creating a file there (`inode_create`) and truncating
/// one by name (`path_truncate`) are denied, as is opening one for writing.
#[test]
fn protected_directory_refuses_new_files_and_truncation() {
    let agent = "writer-agent";
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
    let new = vault.join("new");
    let created = daemon
        .launch(agent, &["sh", "-c", &format!("echo x > {}", new.display())])
        .output()
        .expect("sh");
    assert!(!created.status.success(), "created a file in the vault");
    assert!(!new.exists());
    let appended = daemon
        .launch(
            agent,
            &["sh", "-c", &format!("echo x >> {}", key.display())],
        )
        .output()
        .expect("sh");
    assert!(!appended.status.success(), "wrote into the vault");
    let helper = helper();
    let truncated = daemon
        .launch(
            agent,
            &[helper.to_str().unwrap(), "truncate", key.to_str().unwrap()],
        )
        .output()
        .expect("helper");
    assert_eq!(String::from_utf8_lossy(&truncated.stdout).trim(), "eperm");
    assert_eq!(fs::read_to_string(&key).unwrap(), "key");
    assert!(
        can_read(&daemon, Some(agent), &key),
        "reading is not covered"
    );

    let mut events = Vec::new();
    wait_until("the create and truncate events are printed", || {
        file_events(&daemon, &mut events);
        ["create", "truncate"]
            .iter()
            .all(|hook| events.iter().any(|e| e["hook"] == *hook))
    });
    let create = events.iter().find(|e| e["hook"] == "create").unwrap();
    assert_eq!(create["path"], "new");
    assert_eq!(create["path_source"], "name");
    assert_eq!(create["access"][0], "write");

    // Untagged processes create files there as before.
    fs::write(&new, "x").expect("untagged create");
}

/// The shipped `sensitive` set covers secrets by place (`~/.ssh` under every home) and by name
/// anywhere (`.env`, `id_ed25519`); a policy names it in one line.
#[test]
fn sensitive_set_protects_keys_and_dotenv_files_anywhere() {
    let agent = "careful-agent";
    let ssh = Path::new("/root/.ssh");
    fs::create_dir_all(ssh).expect("/root/.ssh");
    let config = ssh.join("agentd-test-config");
    fs::write(&config, "Host *").expect("ssh config");
    let dir = tempfile::tempdir().expect("temporary directory");
    let project = dir.path().join("project");
    fs::create_dir(&project).expect("project");
    fs::write(project.join(".env"), "TOKEN=1").expect(".env");
    fs::write(project.join("id_ed25519"), "key").expect("stray key");
    fs::write(project.join("README"), "hello").expect("readme");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"secrets\"\naction = \"deny\"\nset = \"sensitive\"\naccess = [\"read\", \"write\"]\n"
    ));
    let _launched = launch_cgroup(agent);
    assert!(!can_read(&daemon, Some(agent), &config), "~/.ssh");
    assert!(
        !can_read(&daemon, Some(agent), &project.join(".env")),
        ".env"
    );
    assert!(
        !can_read(&daemon, Some(agent), &project.join("id_ed25519")),
        "a key by name"
    );
    assert!(can_read(&daemon, Some(agent), &project.join("README")));
    assert!(can_read(&daemon, None, &project.join(".env")), "untagged");
    // A new .env is covered from its creation: the name rule applies in inode_create.
    let fresh = dir.path().join(".env");
    let created = daemon
        .launch(
            agent,
            &["sh", "-c", &format!("echo x > {}", fresh.display())],
        )
        .output()
        .expect("sh");
    assert!(!created.status.success(), "created a new .env");
    let _ = fs::remove_file(&config);
}

/// A quarantined agent's writes are denied everywhere where BPF LSM is active; its reads are
/// not; released, it writes again.
#[test]
fn quarantine_denies_an_agents_file_writes() {
    let agent = "quarantined-writer";
    let dir = tempfile::tempdir().expect("temporary directory");
    let notes = dir.path().join("notes");
    fs::write(&notes, "n").expect("notes");
    let daemon = Daemon::start(&format!("[[agent]]\nname = \"{agent}\"\n"));
    let _launched = launch_cgroup(agent);
    let write = |what: &str| {
        daemon
            .launch(
                agent,
                &["sh", "-c", &format!("echo {what} >> {}", notes.display())],
            )
            .output()
            .expect("sh")
            .status
            .success()
    };
    assert!(write("before"));
    let quarantine = |release: bool| daemon.quarantine(agent, release);
    quarantine(false);
    assert!(!write("during"), "a quarantined agent wrote a file");
    assert!(
        can_read(&daemon, Some(agent), &notes),
        "reads are not quarantined"
    );
    quarantine(true);
    assert!(write("after"));
    assert_eq!(fs::read_to_string(&notes).unwrap(), "nbefore\nafter\n");
}

/// Self-protection (docs/operations.md): a tagged process cannot signal or ptrace agentd, use
/// `bpf()` on its pins, remove its pins, read its configuration, or use its admin socket; each
/// kernel denial is reported as a `tamper` event, and agentd is still running afterwards.
#[test]
fn agents_cannot_kill_ptrace_or_unpin_agentd() {
    let agent = "tamperer";
    let daemon = Daemon::start(&format!("[[agent]]\nname = \"{agent}\"\n"));
    let _launched = launch_cgroup(agent);
    let status = daemon.status();
    assert!(
        status.self_protection.starts_with("lsm"),
        "{}",
        status.self_protection
    );
    let pins = status.pins.expect("pins");
    let pin = Path::new(&pins.root)
        .join("links")
        .join(&pins.build)
        .join("connect4");
    assert!(pin.exists(), "{}", pin.display());
    let pid = daemon.pid().to_string();
    let config = daemon.dir.path().join("agentd.toml");
    let bin = helper();
    let attempt = |as_agent: bool, what: &str, target: &str| {
        let args = [bin.to_str().expect("UTF-8"), "tamper", what, target];
        let output = if as_agent {
            daemon.launch(agent, &args).output()
        } else {
            Command::new(args[0]).args(&args[1..]).output()
        }
        .expect("running the helper");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    for (what, target) in [
        ("kill", pid.as_str()),
        ("ptrace", pid.as_str()),
        ("bpf-obj-get", pin.to_str().expect("UTF-8")),
        ("unlink", pin.to_str().expect("UTF-8")),
        ("read", config.to_str().expect("UTF-8")),
    ] {
        assert_eq!(
            attempt(true, what, target),
            "eperm",
            "an agent's {what} {target}"
        );
    }
    // The same reads by an untagged root process work: the rules are for agents.
    assert_eq!(
        attempt(false, "read", config.to_str().expect("UTF-8")),
        "ok"
    );
    assert_eq!(
        attempt(false, "bpf-obj-get", pin.to_str().expect("UTF-8")),
        "ok"
    );
    assert!(pin.exists(), "the pin is still there");
    // The admin socket refuses agents even as root.
    let output = daemon
        .launch(
            agent,
            &[
                agentd_tests::agentd_bin().to_str().expect("UTF-8"),
                "status",
                "--socket",
                daemon.admin_socket().to_str().expect("UTF-8"),
            ],
        )
        .output()
        .expect("agentd status as an agent");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("agents may not use the admin socket"),
        "{output:?}"
    );
    // agentd is alive and reported each kernel denial.
    daemon.status();
    let mut hooks = std::collections::BTreeSet::new();
    wait_until("tamper events for kill, ptrace and bpf", || {
        for line in daemon.events() {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["kind"] == "tamper" {
                assert_eq!(event["agent"]["name"], agent, "{event}");
                assert_eq!(event["verdict"], "deny", "{event}");
                hooks.insert(event["hook"].as_str().unwrap_or("").to_owned());
            }
        }
        ["bpf", "kill", "ptrace"].iter().all(|h| hooks.contains(*h))
    });
}
