//! Agent identity in the kernel, end to end through `agentd run`: tagging by launch, cgroup and
//! discovery, inheritance, the identity socket, churn and policy validation.

use std::{
    fs,
    process::{Command, Stdio},
};

use agentd_tests::{
    CgroupGuard, Daemon, agent_policy, cgroup2_mount, kill, launch_cgroup, pid_reuse, read_pid,
    wait_until,
};

use crate::helper;

#[test]
fn launched_agent_tree_is_tagged_across_fork_exec_setsid_double_fork_and_cgroup_move() {
    let agent = "tree-agent";
    let daemon = Daemon::start(&agent_policy(agent));
    let _launched = launch_cgroup(agent);
    let escape =
        CgroupGuard(cgroup2_mount().join(format!("agentd-test-escape-{}", std::process::id())));
    fs::create_dir_all(&escape.0).expect("creating the escape cgroup");
    let dir = tempfile::tempdir().expect("temporary directory");
    let d = dir.path().display();
    let escape_procs = escape.0.join("cgroup.procs");
    let script = format!(
        r#"
        echo $$ > {d}/root.pid
        sh -c 'echo $$ > {d}/child.pid; sh -c "echo \$\$ > {d}/grandchild.pid; exec sleep 60" & wait' &
        setsid sh -c 'echo $$ > {d}/setsid.pid; exec sleep 60' &
        (sh -c 'echo $$ > {d}/daemon.pid; exec sleep 60' &)
        sh -c 'echo $$ > {d}/exec.pid; exec sleep 60' &
        sh -c 'echo $$ > {escape}; echo $$ > {d}/moved.pid; sh -c "echo \$\$ > {d}/moved-child.pid; exec sleep 60" & wait' &
        exec sleep 60
        "#,
        escape = escape_procs.display()
    );
    let mut launcher = daemon
        .launch(agent, &["sh", "-c", &script])
        .spawn()
        .expect("agentd launch");
    let root = launcher.id();
    assert_eq!(
        read_pid(&dir.path().join("root.pid")),
        root,
        "launch execs in place"
    );

    for (name, how) in [
        ("root", "launch"),
        ("child", "launch"),
        ("grandchild", "launch"),
        ("setsid", "launch"),
        ("daemon", "launch"),
        ("exec", "launch"),
        ("moved", "launch"),
        ("moved-child", "launch"),
    ] {
        let pid = read_pid(&dir.path().join(format!("{name}.pid")));
        let process = daemon.wait_tagged(pid, agent);
        assert_eq!(process.tag.source, how, "{name}: {process:?}");
        assert_eq!(process.tag.inherited, name != "root", "{name}: {process:?}");
    }
    // The double-forked daemon was reparented away from the agent's tree, and still is the
    // agent's; the moved process really left the agent's cgroup.
    let daemon_pid = read_pid(&dir.path().join("daemon.pid"));
    assert_ne!(daemon.agent_of(daemon_pid).expect("tagged").ppid, root);
    let moved = read_pid(&dir.path().join("moved.pid"));
    assert!(
        agentd::cgroups::procs(&escape.0).unwrap().contains(&moved),
        "the moved process is in the escape cgroup"
    );
    let exec_pid = read_pid(&dir.path().join("exec.pid"));
    let command = fs::read_to_string(format!("/proc/{exec_pid}/comm")).unwrap_or_default();
    assert_eq!(
        command.trim(),
        "sleep",
        "the exec'd process runs another binary"
    );
    kill(root);
    let _ = launcher.wait();
}

#[test]
fn untagged_processes_stay_untagged_and_are_not_agents() {
    let agent = "quiet-agent";
    let daemon = Daemon::start(&agent_policy(agent));
    let _launched = launch_cgroup(agent);
    let mut outsider = Command::new("sleep").arg("60").spawn().expect("sleep");
    let mut insider = daemon
        .launch(agent, &["sleep", "60"])
        .spawn()
        .expect("launch");
    daemon.wait_tagged(insider.id(), agent);
    assert!(
        daemon.agent_of(outsider.id()).is_none(),
        "an unrelated process was tagged"
    );
    assert!(
        daemon.agent_of(std::process::id()).is_none(),
        "the test itself was tagged"
    );

    let answer = Command::new(agentd_tests::agentd_bin())
        .arg("whoami")
        .arg("--socket")
        .arg(&daemon.identity)
        .output()
        .expect("agentd whoami");
    assert!(!answer.status.success());
    let stderr = String::from_utf8_lossy(&answer.stderr);
    assert!(stderr.contains("not an agent"), "{stderr}");
    let _ = outsider.kill();
    let _ = insider.kill();
    let _ = outsider.wait();
    let _ = insider.wait();
}

#[test]
fn whoami_returns_the_launched_agent_identity() {
    let agent = "asking-agent";
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\nid = \"0b5a7bb4-31c6-4a36-8d8e-6d0c93c3f1d2\"\n"
    ));
    let _launched = launch_cgroup(agent);
    let bin = agentd_tests::agentd_bin();
    let output = daemon
        .launch(
            agent,
            &[
                bin.to_str().unwrap(),
                "whoami",
                "--socket",
                daemon.identity.to_str().unwrap(),
            ],
        )
        .output()
        .expect("launching agentd whoami");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: serde_json::Value = serde_json::from_str(&stdout).expect("an identity document");
    assert_eq!(document["agent"]["name"], agent);
    assert_eq!(
        document["agent"]["id"],
        "0b5a7bb4-31c6-4a36-8d8e-6d0c93c3f1d2"
    );
    assert_eq!(document["tag"]["source"], "launch");
}

#[test]
fn pid_reuse_cannot_obtain_another_process_identity() {
    if !pid_reuse::can_force_pid_reuse() {
        return;
    }
    let agent = "victim-agent";
    let daemon = Daemon::start(&agent_policy(agent));
    let _launched = launch_cgroup(agent);
    let dir = tempfile::tempdir().expect("temporary directory");
    let go = dir.path().join("go");

    // An untagged process connects, hands the connection to its child, and exits.
    let output = Command::new(helper())
        .arg("handover")
        .arg(&daemon.identity)
        .arg(&go)
        .output()
        .expect("running the helper");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let connector: u32 = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("connector="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("helper printed {line:?}"));

    // A tagged agent process now takes the connector's pid.
    let mut victim = pid_reuse::spawn_with_pid(connector, || {
        daemon
            .launch(agent, &["sleep", "60"])
            .spawn()
            .expect("launch")
    })
    .expect("could not make a tagged process reuse the connector's pid");
    daemon.wait_tagged(connector, agent);

    // The connection's holder asks who it is: it must not get the victim's identity.
    fs::write(&go, "").expect("writing the go file");
    let reply_path = dir.path().join("go.reply");
    wait_until("the helper got an answer", || reply_path.exists());
    let reply = fs::read_to_string(&reply_path).expect("reading the answer");
    let _ = victim.kill();
    let _ = victim.wait();
    let reply: serde_json::Value = serde_json::from_str(&reply).expect("a JSON answer");
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        !reply.to_string().contains(agent),
        "leaked the victim's identity: {reply}"
    );
}

#[test]
fn discovery_path_rule_tags_binary_started_from_unrelated_shell() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // Named `sleep` so that busybox (the vm tier) still runs it as sleep.
    let binary = dir.path().join("sleep");
    fs::copy("/bin/sleep", &binary).expect("copying sleep");
    let agent = "found-agent";
    let daemon = Daemon::start(&format!(
        "{}[[discovery]]\nid = \"found-bin\"\nagent = \"{agent}\"\npath = \"{}\"\n",
        agent_policy(agent),
        binary.display()
    ));
    let mut plain = Command::new("sleep").arg("60").spawn().expect("sleep");
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} 60 & echo $! > {}/found.pid; wait",
            binary.display(),
            dir.path().display()
        ))
        .spawn()
        .expect("sh");
    let found = read_pid(&dir.path().join("found.pid"));
    let process = daemon.wait_tagged(found, agent);
    assert_eq!(process.tag.source, "discovery");
    assert_eq!(process.tag.rule.as_deref(), Some("found-bin"));
    assert!(
        daemon.agent_of(shell.id()).is_none(),
        "the unrelated shell was tagged"
    );
    assert!(
        daemon.agent_of(plain.id()).is_none(),
        "another copy of sleep was tagged"
    );
    kill(found);
    let _ = shell.wait();
    let _ = plain.kill();
    let _ = plain.wait();
}

#[test]
fn discovery_script_rule_tags_interpreter_running_the_script() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let script = dir.path().join("agent.sh");
    fs::write(&script, "sleep 60\n").expect("writing the script");
    let other = dir.path().join("other.sh");
    fs::write(&other, "sleep 60\n").expect("writing the other script");
    let agent = "script-agent";
    let daemon = Daemon::start(&format!(
        "{}[[discovery]]\nid = \"agent-script\"\nagent = \"{agent}\"\ninterpreter = \"/bin/sh\"\nscript = \"{}\"\n",
        agent_policy(agent),
        script.display()
    ));
    // Relative to the process's working directory, as agents are usually started.
    let mut runner = Command::new("sh")
        .arg("agent.sh")
        .current_dir(dir.path())
        .spawn()
        .expect("sh agent.sh");
    let mut bystander = Command::new("sh").arg(&other).spawn().expect("sh other.sh");
    let process = daemon.wait_tagged(runner.id(), agent);
    assert_eq!(process.tag.source, "discovery");
    assert_eq!(process.tag.rule.as_deref(), Some("agent-script"));
    assert!(
        daemon.agent_of(bystander.id()).is_none(),
        "another script was tagged"
    );
    for child in [&mut runner, &mut bystander] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn churn_of_10000_tagged_processes_leaves_no_stale_tags() {
    let agent = "churn-agent";
    let daemon = Daemon::start(&agent_policy(agent));
    let _launched = launch_cgroup(agent);
    let count: u32 = std::env::var("AGENTD_CHURN")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let script = format!(
        "i=0; while [ $i -lt {count} ]; do ( : ); if [ $((i % 10)) = 0 ]; then /bin/true; fi; i=$((i+1)); done"
    );
    let status = daemon
        .launch(agent, &["sh", "-c", &script])
        .stdout(Stdio::null())
        .status()
        .expect("running the churn");
    assert!(status.success());
    wait_until("every churned process's tag is gone", || {
        daemon.status().tagged_processes == 0
    });
    let status = daemon.status();
    assert_eq!(status.tags_lost, 0, "{status:?}");
    let forks = daemon
        .events()
        .iter()
        .filter(|line| line.contains("\"kind\":\"fork\""))
        .count();
    assert!(
        forks >= usize::try_from(count).unwrap(),
        "expected at least {count} fork events of the agent, saw {forks}"
    );
}

#[test]
fn bad_policy_is_refused_by_field_and_rules_in_force_stay() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let binary = dir.path().join("sleep");
    fs::copy("/bin/sleep", &binary).expect("copying sleep");
    let agent = "kept-agent";
    let good = format!(
        "{}[[discovery]]\nid = \"kept-bin\"\nagent = \"{agent}\"\npath = \"{}\"\n",
        agent_policy(agent),
        binary.display()
    );
    let daemon = Daemon::start(&good);
    let bad = format!(
        "{}[[discovery]]\nid = \"bad-path\"\nagent = \"{agent}\"\npath = \"/nonexistent/agent\"\n\
         [[discovery]]\nid = \"bad-hash\"\nagent = \"{agent}\"\nsha256 = \"1234\"\n\
         [[discovery]]\nid = \"ghost\"\nagent = \"nobody\"\npath = \"{}\"\n",
        agent_policy(agent),
        binary.display()
    );
    let output = daemon.apply(&bad);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "discovery[0] (\"bad-path\").path",
        "discovery[1] (\"bad-hash\").sha256",
        "discovery[2] (\"ghost\").agent: unknown agent \"nobody\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in: {stderr}"
        );
    }
    let status = daemon.status();
    assert_eq!((status.agents, status.rules), (1, 1), "{status:?}");
    // The rule in force still tags.
    let mut child = Command::new(&binary)
        .arg("60")
        .spawn()
        .expect("running the binary");
    let process = daemon.wait_tagged(child.id(), agent);
    assert_eq!(process.tag.rule.as_deref(), Some("kept-bin"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn full_tag_map_is_counted_reported_and_quarantines_the_agent() {
    let agent = "crowd-agent";
    let daemon = Daemon::start_with(&agent_policy(agent), "max_tagged_processes = 4\n");
    let _launched = launch_cgroup(agent);
    let status = daemon
        .launch(agent, &["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; sleep 1; kill $(jobs -p) 2>/dev/null; wait"])
        // agentd kills what it cannot tag; the shell's report of that is not the test's.
        .stderr(Stdio::null())
        .status()
        .expect("running the crowd");
    assert!(status.success() || status.code().is_some());
    let status = daemon.status();
    assert!(status.tags_lost > 0, "{status:?}");
    let mut lost = Vec::new();
    wait_until("a tag_lost event is printed", || {
        lost.extend(
            daemon
                .events()
                .into_iter()
                .filter(|line| line.contains("\"kind\":\"tag_lost\"")),
        );
        !lost.is_empty()
    });
    assert!(lost[0].contains(agent), "{}", lost[0]);
    // Fail closed: the agent whose process could not be tagged is quarantined.
    wait_until("the agent is quarantined", || {
        daemon.status().quarantined.iter().any(|name| name == agent)
    });
}

#[test]
fn registered_service_cgroup_tags_running_and_new_processes() {
    // Stands in for a systemd unit's cgroup: a cgroup with a process already running in it.
    let unit = CgroupGuard(
        cgroup2_mount().join(format!("agentd-test-unit-{}.service", std::process::id())),
    );
    fs::create_dir_all(&unit.0).expect("creating the unit cgroup");
    let procs = unit.0.join("cgroup.procs");
    let dir = tempfile::tempdir().expect("temporary directory");
    let script = format!(
        "echo $$ > {procs}; echo $$ > {d}/running.pid; read _ < {d}/go; sleep 60 & echo $! > {d}/new.pid; wait",
        procs = procs.display(),
        d = dir.path().display()
    );
    let go = dir.path().join("go");
    // A FIFO holds the process until the daemon has started.
    let status = Command::new("mkfifo").arg(&go).status().expect("mkfifo");
    assert!(status.success());
    let mut service = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .expect("the service");
    let running = read_pid(&dir.path().join("running.pid"));

    let agent = "service-agent";
    let relative = unit
        .0
        .strip_prefix(cgroup2_mount())
        .expect("under the cgroup root");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\ncgroups = [\"/{}\"]\n",
        relative.display()
    ));
    let process = daemon.wait_tagged(running, agent);
    assert_eq!(process.tag.source, "cgroup");
    assert!(!process.tag.inherited);

    fs::write(&go, "go\n").expect("releasing the service");
    let new = read_pid(&dir.path().join("new.pid"));
    let process = daemon.wait_tagged(new, agent);
    assert_eq!(process.tag.source, "cgroup");
    kill(new);
    let _ = service.wait();
}

#[test]
fn discovery_hash_rule_tags_a_binary_by_content() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().expect("temporary directory");
    let binary = dir.path().join("sleep");
    fs::copy("/bin/sleep", &binary).expect("copying sleep");
    let digest = hex::encode(sha2::Sha256::digest(
        fs::read(&binary).expect("reading the copy"),
    ));
    let agent = "hashed-agent";
    let daemon = Daemon::start(&format!(
        "{}[[discovery]]\nid = \"by-hash\"\nagent = \"{agent}\"\nsha256 = \"{digest}\"\n",
        agent_policy(agent)
    ));
    let mut child = Command::new(&binary)
        .arg("60")
        .spawn()
        .expect("running the copy");
    let process = daemon.wait_tagged(child.id(), agent);
    assert_eq!(process.tag.source, "discovery");
    assert_eq!(process.tag.rule.as_deref(), Some("by-hash"));
    let _ = child.kill();
    let _ = child.wait();
}
