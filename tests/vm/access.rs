//! Conditional Access file controls in BPF LSM: a decision's file deny stops an agent's open,
//! a decision never widens what the local rules deny, and a control with an expiry stops
//! applying at it, in the kernel.

use std::{fs, path::Path, time::Duration};

use agentd::conditional::{Action, AgentDecision, DecisionSet, FileControl, Offline};
use agentd_tests::{Daemon, launch_cgroup, unix_ms, wait_until};

fn control(path: &Path, action: &str, expires_unix_ms: Option<i64>, source: &str) -> FileControl {
    FileControl {
        path: path.display().to_string(),
        access: vec!["read".to_owned()],
        action: action.to_owned(),
        expires_unix_ms,
        source: source.to_owned(),
    }
}

/// Runs `cat PATH` as `agent`: `Ok` when it read, `Err(stderr)` otherwise.
fn cat(daemon: &Daemon, agent: &str, path: &Path) -> Result<(), String> {
    let output = daemon
        .launch(agent, &["cat", path.to_str().unwrap()])
        .output()
        .expect("running cat");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn refused(result: Result<(), String>) -> bool {
    match result {
        Ok(()) => false,
        Err(stderr) => {
            assert!(
                stderr.contains("ermission") || stderr.contains("not permitted"),
                "{stderr}"
            );
            true
        }
    }
}

#[test]
fn decision_file_controls_deny_opens_and_lapse_in_the_kernel() {
    let agent = "ca-files-agent";
    let state = tempfile::tempdir().expect("state dir");
    let dir = tempfile::tempdir().expect("files dir");
    let write = |name: &str| {
        let path = dir.path().join(name);
        fs::write(&path, name).unwrap();
        path
    };
    let ledger = write("ledger");
    let public = write("public");
    let local_secret = write("local-secret");
    let expired = write("expired");
    let lapsing_dir = dir.path().join("lapsing");
    fs::create_dir(&lapsing_dir).unwrap();
    let lapsing = lapsing_dir.join("file");
    fs::write(&lapsing, "l").unwrap();
    // Far enough ahead for an emulated machine to start agentd and try it first.
    let lapse_at = unix_ms() + 15_000;
    let set = DecisionSet {
        version: 11,
        issued_unix_ms: unix_ms(),
        confirmed_unix_ms: unix_ms(),
        decisions: vec![AgentDecision {
            agent_id: agentd::identity::AgentId::from_name(agent).to_string(),
            agent_name: agent.to_owned(),
            action: Action::Allow,
            network_restricted: false,
            grants: Vec::new(),
            denials: Vec::new(),
            file_controls: vec![
                control(&ledger, "deny", None, "ledger-policy"),
                control(&lapsing_dir, "deny", Some(lapse_at), "lapsing-policy"),
                control(&expired, "deny", Some(unix_ms() - 60_000), "expired-policy"),
                // A decision's allow never opens what the local rules deny.
                control(&local_secret, "allow", None, "package-1"),
            ],
            report_only_action: None,
            report_only_network: None,
            offline: Offline::KeepLast,
            offline_ttl_secs: 0,
            risk_level: "none".to_owned(),
            reasons: Vec::new(),
            policy_ids: Vec::new(),
            report_only_policy_ids: Vec::new(),
        }],
    };
    set.save(&state.path().join("decisions.json")).unwrap();
    let daemon = Daemon::start_with_config(
        &format!(
            "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
             [[agent.files.rule]]\nid = \"local\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
            local_secret.display()
        ),
        &format!(
            "[control_plane]\nurl = \"http://127.0.0.1:1\"\nstate_dir = \"{}\"\n",
            state.path().display()
        ),
    );
    assert_eq!(daemon.status().file_enforcement, "available");
    let _launched = launch_cgroup(agent);

    assert!(refused(cat(&daemon, agent, &ledger)), "the decision's deny");
    assert!(cat(&daemon, agent, &public).is_ok(), "no control");
    assert!(
        refused(cat(&daemon, agent, &local_secret)),
        "the local deny stays"
    );
    assert!(
        cat(&daemon, agent, &expired).is_ok(),
        "a control whose expiry has passed"
    );
    let before = unix_ms();
    let denied_before = refused(cat(&daemon, agent, &lapsing));
    if before < lapse_at - 2_000 {
        assert!(denied_before, "a subtree deny before its expiry");
    } else {
        eprintln!("this machine took too long to check the control before its expiry");
    }

    let mut events: Vec<serde_json::Value> = Vec::new();
    wait_until("the decision's deny event", || {
        events.extend(
            daemon
                .events()
                .iter()
                .filter_map(|line| serde_json::from_str(line).ok()),
        );
        events
            .iter()
            .any(|e| e["kind"] == "file" && e["decided_by"] == "conditional_access")
    });
    let event = events
        .iter()
        .find(|e| e["kind"] == "file" && e["decided_by"] == "conditional_access")
        .unwrap();
    assert_eq!(event["verdict"], "deny", "{event}");
    assert_eq!(event["rule"], "conditional-access/ledger-policy", "{event}");
    assert_eq!(event["path"], ledger.display().to_string(), "{event}");

    // Nothing in userspace acts at the expiry: the hook compares it with the boot clock.
    let wait = lapse_at - unix_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap() + 200));
    }
    assert!(cat(&daemon, agent, &lapsing).is_ok(), "the control lapsed");
    assert!(refused(cat(&daemon, agent, &ledger)), "the other stays");
}
