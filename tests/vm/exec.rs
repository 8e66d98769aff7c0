//! Exec rules that follow what really runs, metadata changes judged as writes, and agentd's
//! own files protected by identity (docs/files.md, "What runs", "Metadata", and
//! docs/operations.md, self-protection), through `agentd run` where BPF LSM works.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path, process::Command};

use agentd_tests::{Daemon, agentd_bin, launch_cgroup, wait_until};

use crate::{helper, scratch_fs::overlay_on_ext4};

/// The dynamic loader the guest and the host carry (the test binaries' `ldd` names it).
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Runs the helper's `exec-evasion ARGS` as `agent` (or untagged); returns its trimmed stdout.
fn evasion(daemon: &Daemon, agent: Option<&str>, args: &[&str]) -> String {
    let helper = helper();
    let mut full = vec![helper.to_str().expect("UTF-8 path"), "exec-evasion"];
    full.extend_from_slice(args);
    let output = match agent {
        Some(agent) => daemon.launch(agent, &full).output(),
        None => Command::new(full[0]).args(&full[1..]).output(),
    }
    .expect("running the helper");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The `file` events printed so far.
fn file_events(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon
        .events()
        .iter()
        .filter(|line| line.contains("\"kind\":\"file\""))
        .map(|line| serde_json::from_str(line).expect("a JSON event"))
        .collect()
}

/// Waits for a deny event of `agent` at `hook` that `also` accepts, and returns it.
fn denial(
    daemon: &Daemon,
    seen: &mut Vec<serde_json::Value>,
    agent: &str,
    hook: &str,
    also: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let matches = |e: &serde_json::Value| {
        e["hook"] == hook && e["verdict"] == "deny" && e["agent"]["name"] == agent && also(e)
    };
    wait_until(&format!("a {hook} denial of {agent}"), || {
        seen.extend(file_events(daemon));
        seen.iter().any(matches)
    });
    seen.iter().find(|e| matches(e)).cloned().expect("found")
}

/// `ld-linux-x86-64.so.2 TOOL` maps TOOL itself: the exec rule on TOOL decides the
/// executable mapping (`mmap_file`) as it decides an exec.
#[test]
fn loader_cannot_run_a_binary_an_exec_rule_denies() {
    let agent = "loader-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let tool = dir.path().join("tool");
    fs::copy(helper(), &tool).expect("copying the helper");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"no-tool\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"exec\"]\n",
        tool.display()
    ));
    let _launched = launch_cgroup(agent);
    let tool = tool.to_str().expect("UTF-8 path");
    let args = [LOADER, tool, "exec-evasion", "say", "ran"];
    let as_agent = daemon.launch(agent, &args).output().expect("the loader");
    let stderr = String::from_utf8_lossy(&as_agent.stderr);
    assert!(
        !as_agent.status.success(),
        "the loader ran a denied binary for the agent"
    );
    assert!(!String::from_utf8_lossy(&as_agent.stdout).contains("ran"));
    // The loader's own words for the refused `mmap` (it does not print the errno).
    assert!(stderr.contains("failed to map segment"), "{stderr}");
    let untagged = Command::new(LOADER)
        .args(&args[1..])
        .output()
        .expect("the loader, untagged");
    assert_eq!(String::from_utf8_lossy(&untagged.stdout).trim(), "ran");

    let mut seen = Vec::new();
    let event = denial(&daemon, &mut seen, agent, "mmap", |_| true);
    assert_eq!(event["access"][0], "exec", "{event}");
    assert_eq!(event["rule"], format!("{agent}/no-tool"), "{event}");
    assert_eq!(event["path"], tool, "{event}");
    assert_eq!(event["path_source"], "kernel", "{event}");
}

/// A tool under a directory an exec rule denies, run through an overlay that has the directory
/// in its lower layer (an agent may mount one in a user namespace): the exec and the loader's
/// executable mapping run the layer's file, so the layer's rule decides them, and the event
/// names the path the agent used. A rule on the overlay's own directory still holds.
#[test]
fn exec_rules_on_a_layer_hold_through_an_overlay_of_it() {
    let layer_agent = "layer-agent";
    let merged_agent = "merged-agent";
    // Room for a copy of the helper (a debug build).
    let overlay = overlay_on_ext4(128, |lower| {
        fs::create_dir(lower.join("tools")).expect("tools");
        fs::copy(helper(), lower.join("tools/tool")).expect("copying the helper");
    });
    let rule = |agent: &str, id: &str, dir: &Path| {
        format!(
            "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
             [[agent.files.rule]]\nid = \"{id}\"\naction = \"deny\"\npath = \"{}\"\n\
             access = [\"exec\"]\n",
            dir.display()
        )
    };
    let merged_tools = overlay.merged().join("tools");
    let daemon = Daemon::start(&format!(
        "{}{}",
        rule(layer_agent, "no-tools", &overlay.lower().join("tools")),
        rule(merged_agent, "no-merged-tools", &merged_tools)
    ));
    let _layer = launch_cgroup(layer_agent);
    let _merged = launch_cgroup(merged_agent);
    let tool = merged_tools.join("tool");
    let tool = tool.to_str().expect("UTF-8 path");
    let direct = [tool, "exec-evasion", "say", "ran"];
    let loader = [LOADER, tool, "exec-evasion", "say", "ran"];
    let ran = |agent: Option<&str>, args: &[&str]| {
        let output = match agent {
            Some(agent) => daemon.launch(agent, args).output(),
            None => Command::new(args[0]).args(&args[1..]).output(),
        }
        .expect("running the tool");
        String::from_utf8_lossy(&output.stdout).contains("ran")
    };
    for agent in [layer_agent, merged_agent] {
        assert!(!ran(Some(agent), &direct), "{agent} ran the tool");
        assert!(
            !ran(Some(agent), &loader),
            "{agent} ran the tool through the loader"
        );
    }
    assert!(ran(None, &direct), "untagged, the tool runs");
    assert!(ran(None, &loader), "untagged, the loader runs it");

    let mut seen = Vec::new();
    for (hook, agent, id) in [
        ("exec", layer_agent, "no-tools"),
        ("mmap", layer_agent, "no-tools"),
        ("exec", merged_agent, "no-merged-tools"),
        ("mmap", merged_agent, "no-merged-tools"),
    ] {
        let event = denial(&daemon, &mut seen, agent, hook, |_| true);
        assert_eq!(event["rule"], format!("{agent}/{id}"), "{event}");
        assert_eq!(event["access"][0], "exec", "{event}");
        assert_eq!(event["path"], tool, "{event}");
    }
}

/// A memfd holding a program's bytes has no name an exec rule could name: its exec is denied
/// unless the agent's policy says `allow_anonymous_exec = true`.
#[test]
fn memfd_exec_is_denied_unless_the_agent_allows_anonymous_exec() {
    let strict = "memfd-strict";
    let allowed = "memfd-allowed";
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{strict}\"\n\
         [[agent]]\nname = \"{allowed}\"\n[agent.files]\nallow_anonymous_exec = true\n"
    ));
    let _strict = launch_cgroup(strict);
    let _allowed = launch_cgroup(allowed);
    let helper = helper();
    let program = helper.to_str().expect("UTF-8 path");
    let args = ["memfd", program, "exec-evasion", "say", "ran"];
    assert_eq!(evasion(&daemon, Some(strict), &args), "eperm");
    assert_eq!(evasion(&daemon, Some(allowed), &args), "ran");
    assert_eq!(evasion(&daemon, None, &args), "ran");

    let mut seen = Vec::new();
    let event = denial(&daemon, &mut seen, strict, "exec", |e| {
        e["decided_by"] == "anonymous_exec"
    });
    assert_eq!(event["rule"], "anonymous-exec", "{event}");
    assert_eq!(event["access"][0], "exec", "{event}");
    assert!(
        seen.iter()
            .all(|e| e["agent"]["name"] != allowed || e["verdict"] != "deny"),
        "{seen:#?}"
    );
}

/// agentd's configuration, binary and pins, by identity: a copy renamed over them, an
/// exchange, a hard link, a bind mount over them, renaming a directory above them, and
/// `chmod`, `chown` and `setxattr` of them are all refused to agents, and reported.
#[test]
fn agents_cannot_replace_link_mount_over_or_chmod_agentd_files() {
    let agent = "replacer";
    let daemon = Daemon::start(&format!("[[agent]]\nname = \"{agent}\"\n"));
    let _launched = launch_cgroup(agent);
    // Every hook of this change attached on this kernel (none is named as missing).
    let status = daemon.status();
    for sensor in ["files", "self_protection"] {
        let health = status
            .sensors
            .iter()
            .find(|health| health.name == sensor)
            .expect("the sensor's health");
        assert_eq!(health.state, "active", "{sensor}: {}", health.detail);
    }
    let config = daemon.dir.path().join("agentd.toml");
    let original = fs::read(&config).expect("the config");
    let fake = daemon.dir.path().join("fake.toml");
    fs::write(&fake, "# an agent's config\n").expect("the fake config");
    let bin = agentd_bin();
    let bin_ino = fs::metadata(&bin).expect("stat agentd").ino();
    let fake_bin = bin.with_file_name(format!("agentd-replacement-{}", std::process::id()));
    fs::copy(&bin, &fake_bin).expect("copying agentd");
    let pins = daemon.pin_path.clone();
    // Renames stay on one file system: across two, the kernel refuses before any LSM asks.
    let pins_moved = pins.with_file_name(format!("agentd-moved-{}", std::process::id()));
    let elsewhere = tempfile::tempdir().expect("temporary directory");
    let moved = elsewhere.path().join("moved");
    let link = daemon.dir.path().join("config-link");
    let path = |path: &Path| path.to_str().expect("UTF-8 path").to_owned();
    let (config_s, fake_s, bin_s, fake_bin_s) =
        (path(&config), path(&fake), path(&bin), path(&fake_bin));
    let attempts: Vec<(&str, Vec<String>)> = vec![
        (
            "rename over the config",
            vec!["rename".into(), fake_s.clone(), config_s.clone()],
        ),
        (
            "exchange with the config",
            vec!["exchange".into(), fake_s.clone(), config_s.clone()],
        ),
        (
            "link the config",
            vec!["link".into(), config_s.clone(), path(&link)],
        ),
        (
            "rename over the binary",
            vec!["rename".into(), fake_bin_s.clone(), bin_s.clone()],
        ),
        (
            "exchange with the binary",
            vec!["exchange".into(), fake_bin_s.clone(), bin_s.clone()],
        ),
        (
            "move the pins away",
            vec!["rename".into(), path(&pins), path(&pins_moved)],
        ),
        (
            "move the config's directory away",
            vec!["rename".into(), path(daemon.dir.path()), path(&moved)],
        ),
        (
            "mount over the config",
            vec!["mount-bind".into(), fake_s.clone(), config_s.clone()],
        ),
        ("chmod the config", vec!["chmod".into(), config_s.clone()]),
        ("chown the binary", vec!["chown".into(), bin_s.clone()]),
        (
            "setxattr on the config",
            vec!["setxattr".into(), config_s.clone()],
        ),
    ];
    let mut outcomes = Vec::new();
    for (what, args) in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        outcomes.push((*what, evasion(&daemon, Some(agent), &args)));
    }
    // Whatever happened, leave no mount behind.
    let _ = Command::new("umount").arg(&config).status();
    let _ = fs::remove_file(&fake_bin);
    for (what, outcome) in &outcomes {
        assert_eq!(outcome, "eperm", "an agent's {what}: {outcomes:?}");
    }
    assert_eq!(fs::read(&config).expect("the config"), original);
    assert_eq!(fs::metadata(&bin).expect("stat agentd").ino(), bin_ino);
    assert!(pins.exists() && !pins_moved.exists() && !moved.exists());
    daemon.status();

    let mut seen = Vec::new();
    // Renaming over a file and mounting over it are decided by identity; a link of the config
    // already meets its file rule in `path_link`, which runs first.
    for hook in ["rename", "mount"] {
        let event = denial(&daemon, &mut seen, agent, hook, |e| {
            e["decided_by"] == "self_protection"
        });
        assert_eq!(event["rule"], "agentd-self-protection", "{event}");
        assert_eq!(event["path_source"], "name", "{event}");
    }
    let event = denial(&daemon, &mut seen, agent, "link", |_| true);
    assert_eq!(event["rule"], "agentd-self-protection", "{event}");
    for hook in ["setattr", "setxattr"] {
        let event = denial(&daemon, &mut seen, agent, hook, |_| true);
        assert_eq!(event["rule"], "agentd-self-protection", "{event}");
        assert_eq!(event["access"][0], "write", "{event}");
    }
    // Untagged, root may still change them (an upgrade renames a new binary into place).
    assert_eq!(evasion(&daemon, None, &["chmod", &config_s]), "ok");
}

/// `chmod`, `chown`, `utimes` and `setxattr` of a file a rule write-protects are writes; a
/// quarantined agent may change no metadata at all.
#[test]
fn metadata_changes_are_writes_under_file_rules_and_quarantine() {
    let agent = "chmodder";
    let dir = tempfile::tempdir().expect("temporary directory");
    let locked = dir.path().join("locked");
    fs::write(&locked, "l").expect("locked file");
    let free = dir.path().join("free");
    fs::write(&free, "f").expect("free file");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"locked\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"write\"]\n",
        locked.display()
    ));
    let _launched = launch_cgroup(agent);
    let locked_s = locked.to_str().expect("UTF-8 path");
    let free_s = free.to_str().expect("UTF-8 path");
    for change in ["chmod", "chown", "utimes", "setxattr"] {
        assert_eq!(
            evasion(&daemon, Some(agent), &[change, locked_s]),
            "eperm",
            "{change} of a write-protected file"
        );
    }
    assert_eq!(evasion(&daemon, Some(agent), &["chmod", free_s]), "ok");
    assert_eq!(evasion(&daemon, Some(agent), &["utimes", free_s]), "ok");
    let mut seen = Vec::new();
    for hook in ["setattr", "setxattr"] {
        let event = denial(&daemon, &mut seen, agent, hook, |_| true);
        assert_eq!(event["rule"], format!("{agent}/locked"), "{event}");
        assert_eq!(event["access"][0], "write", "{event}");
        assert_eq!(event["path"], "locked", "{event}");
    }

    let quarantine = |release: bool| daemon.quarantine(agent, release);
    quarantine(false);
    assert_eq!(evasion(&daemon, Some(agent), &["chmod", free_s]), "eperm");
    assert_eq!(evasion(&daemon, Some(agent), &["utimes", free_s]), "eperm");
    let event = denial(&daemon, &mut seen, agent, "setattr", |e| {
        e["path"] == "free"
    });
    assert_eq!(event["rule"], "quarantine", "{event}");
    quarantine(true);
    assert_eq!(evasion(&daemon, Some(agent), &["chmod", free_s]), "ok");
}
