//! Conditional Access on the host, without a reachable control plane: decisions kept on disk
//! are enforced at start, grants lapse in the kernel at their expiry, and the offline
//! behaviours (fail-closed, baseline) take over after their TTL.

use std::{net::TcpListener, path::Path, time::Duration};

use agentd::conditional::{
    Action, AgentDecision, DecisionSet, Destination, FileControl, Grant, Offline, ReportOnlyNetwork,
};
use agentd_tests::{Daemon, launch_cgroup, unix_ms};

use crate::helper;

fn grant(cidr: &str, port: u16, expires_unix_ms: Option<i64>) -> Grant {
    Grant {
        destination: Destination::Cidr(cidr.to_owned()),
        ports: (port, port),
        expires_unix_ms,
        source: format!("grant-{cidr}"),
    }
}

fn decision(agent: &str, grants: Vec<Grant>, offline: Offline, ttl: u32) -> AgentDecision {
    AgentDecision {
        agent_id: agentd::identity::AgentId::from_name(agent).to_string(),
        agent_name: agent.to_owned(),
        action: Action::Allow,
        network_restricted: true,
        grants,
        denials: Vec::new(),
        file_controls: Vec::new(),
        report_only_action: None,
        report_only_network: None,
        offline,
        offline_ttl_secs: ttl,
        risk_level: "none".to_owned(),
        reasons: vec!["test".to_owned()],
        policy_ids: Vec::new(),
        report_only_policy_ids: Vec::new(),
    }
}

/// Starts agentd with `decisions` kept in its state directory and a control plane that does not
/// answer.
fn start(agent: &str, decisions: &DecisionSet, state: &Path) -> Daemon {
    decisions
        .save(&state.join("decisions.json"))
        .expect("keeping the decisions");
    Daemon::start_with_config(
        &format!("[[agent]]\nname = \"{agent}\"\n"),
        &format!(
            "[control_plane]\nurl = \"http://127.0.0.1:1\"\nstate_dir = \"{}\"\nheartbeat_secs = 1\n",
            state.display()
        ),
    )
}

#[test]
fn kept_decisions_are_enforced_offline_and_grants_lapse_in_the_kernel() {
    let agent = "ca-agent";
    let state = tempfile::tempdir().expect("state dir");
    let granted = TcpListener::bind("127.0.0.1:0").expect("listener");
    let granted_port = granted.local_addr().unwrap().port();
    let lapsing = TcpListener::bind("127.0.0.2:0").expect("listener on 127.0.0.2");
    let lapsing_port = lapsing.local_addr().unwrap().port();
    let other = TcpListener::bind("127.0.0.3:0").expect("listener on 127.0.0.3");
    let other_port = other.local_addr().unwrap().port();
    // Far enough ahead for a slow (emulated) machine to start agentd and connect before it.
    let lapse_at = unix_ms() + 12_000;
    let set = DecisionSet {
        version: 5,
        issued_unix_ms: unix_ms(),
        confirmed_unix_ms: unix_ms(),
        decisions: vec![decision(
            agent,
            vec![
                grant("127.0.0.1/32", granted_port, None),
                grant("127.0.0.2", lapsing_port, Some(lapse_at)),
            ],
            Offline::KeepLast,
            0,
        )],
    };
    let daemon = start(agent, &set, state.path());
    let _launched = launch_cgroup(agent);

    assert!(
        daemon.connects(&helper(), agent, "127.0.0.1", granted_port),
        "a grant"
    );
    assert!(
        !daemon.connects(&helper(), agent, "127.0.0.3", other_port),
        "restricted: no grant, no connect"
    );
    let before = unix_ms();
    let allowed = daemon.connects(&helper(), agent, "127.0.0.2", lapsing_port);
    if before < lapse_at - 1_000 {
        assert!(allowed, "a grant before its expiry");
    } else {
        eprintln!("this machine took too long to check the grant before its expiry");
    }
    let status = daemon.status();
    let control = status.control_plane.expect("control plane status");
    assert!(!control.connected);
    assert!(control.error.is_some(), "{control:?}");
    assert_eq!(control.decision_version, 5);

    // Nothing in userspace acts at the expiry: the kernel checks it on the connect.
    let wait = lapse_at - unix_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap() + 200));
    }
    assert!(
        !daemon.connects(&helper(), agent, "127.0.0.2", lapsing_port),
        "the grant lapsed"
    );
    assert!(daemon.connects(&helper(), agent, "127.0.0.1", granted_port));

    let denied = daemon
        .events()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|e| e["kind"] == "net" && e["verdict"] == "deny")
        .expect("a deny event");
    assert_eq!(denied["decided_by"], "conditional_access", "{denied}");
}

/// Decisions last confirmed ten minutes ago, with a one-minute TTL: each agent's offline
/// behaviour is in force from the start.
#[test]
fn offline_behaviours_apply_once_the_decisions_are_older_than_their_ttl() {
    let closed = "closed-agent";
    let base = "baseline-agent";
    let kept = "kept-agent";
    let state = tempfile::tempdir().expect("state dir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    let elsewhere = TcpListener::bind("127.0.0.3:0").expect("listener on 127.0.0.3");
    let elsewhere_port = elsewhere.local_addr().unwrap().port();
    let granted = || vec![grant("127.0.0.1/32", port, None)];
    let set = DecisionSet {
        version: 9,
        issued_unix_ms: unix_ms() - 600_000,
        confirmed_unix_ms: unix_ms() - 600_000,
        decisions: vec![
            decision(closed, granted(), Offline::FailClosed, 60),
            decision(base, granted(), Offline::Baseline, 60),
            decision(kept, granted(), Offline::KeepLast, 60),
        ],
    };
    set.save(&state.path().join("decisions.json"))
        .expect("keeping the decisions");
    let daemon = Daemon::start_with_config(
        &format!(
            "[[agent]]\nname = \"{closed}\"\n[[agent]]\nname = \"{base}\"\n[[agent]]\nname = \"{kept}\"\n"
        ),
        &format!(
            "[control_plane]\nurl = \"http://127.0.0.1:1\"\nstate_dir = \"{}\"\n",
            state.path().display()
        ),
    );
    let _closed = launch_cgroup(closed);
    let _base = launch_cgroup(base);
    let _kept = launch_cgroup(kept);

    assert!(
        !daemon.connects(&helper(), closed, "127.0.0.1", port),
        "fail-closed: even its grant is blocked"
    );
    let control = daemon.status().control_plane.expect("control plane status");
    assert_eq!(
        control.blocked_agents,
        vec![closed.to_owned()],
        "{control:?}"
    );
    assert!(control.confirmed_age_secs.is_some_and(|age| age >= 600));
    assert!(
        daemon.connects(&helper(), base, "127.0.0.3", elsewhere_port),
        "baseline: the local policy alone (allow) applies"
    );
    assert!(
        daemon.connects(&helper(), kept, "127.0.0.1", port),
        "keep last: its grant"
    );
    assert!(
        !daemon.connects(&helper(), kept, "127.0.0.3", elsewhere_port),
        "keep last: still restricted"
    );
}

/// A report-only policy that denies a destination: the connect goes through, and the kernel
/// reports that the policy would have denied it.
#[test]
fn report_only_network_controls_report_would_deny_and_allow() {
    let agent = "report-only-agent";
    let state = tempfile::tempdir().expect("state dir");
    let watched = TcpListener::bind("127.0.0.1:0").expect("listener");
    let watched_port = watched.local_addr().unwrap().port();
    let other = TcpListener::bind("127.0.0.1:0").expect("listener");
    let other_port = other.local_addr().unwrap().port();
    let mut unrestricted = decision(agent, Vec::new(), Offline::KeepLast, 0);
    unrestricted.network_restricted = false;
    unrestricted.report_only_network = Some(ReportOnlyNetwork {
        restricted: false,
        grants: Vec::new(),
        denials: vec![Grant {
            source: "would-deny-policy".to_owned(),
            ..grant("127.0.0.1/32", watched_port, None)
        }],
    });
    let set = DecisionSet {
        version: 3,
        issued_unix_ms: unix_ms(),
        confirmed_unix_ms: unix_ms(),
        decisions: vec![unrestricted],
    };
    let daemon = start(agent, &set, state.path());
    let _launched = launch_cgroup(agent);

    assert!(
        daemon.connects(&helper(), agent, "127.0.0.1", watched_port),
        "report-only: allowed"
    );
    assert!(daemon.connects(&helper(), agent, "127.0.0.1", other_port));
    let mut seen = Vec::new();
    let would = |e: &serde_json::Value| {
        e["kind"] == "net" && e["would_deny"] == true && e["port"] == watched_port
    };
    agentd_tests::wait_until("the would-deny event", || daemon.saw(&mut seen, would));
    let event = seen.iter().find(|e| would(e)).unwrap();
    assert_eq!(event["verdict"], "allow", "{event}");
    assert_eq!(event["decided_by"], "conditional_access", "{event}");
    assert_eq!(
        event["rule"], "conditional-access/would-deny-policy",
        "{event}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| e["kind"] == "net" && e["port"] == other_port && e["would_deny"] == true),
        "only the denied destination is reported"
    );
}

/// A decision's file control on this host: enforced where BPF LSM is active (the vm tier checks
/// that in depth), reported as observed would-deny by the open tracepoints where it is not.
#[test]
fn decision_file_controls_are_enforced_or_observed() {
    let agent = "file-control-agent";
    let state = tempfile::tempdir().expect("state dir");
    let files = tempfile::tempdir().expect("files dir");
    let secret = files.path().join("ledger");
    std::fs::write(&secret, "balance").unwrap();
    let mut controlled = decision(agent, Vec::new(), Offline::KeepLast, 0);
    controlled.network_restricted = false;
    controlled.file_controls = vec![FileControl {
        path: secret.display().to_string(),
        access: vec!["read".to_owned()],
        action: "deny".to_owned(),
        expires_unix_ms: None,
        source: "ledger-policy".to_owned(),
    }];
    let set = DecisionSet {
        version: 4,
        issued_unix_ms: unix_ms(),
        confirmed_unix_ms: unix_ms(),
        decisions: vec![controlled],
    };
    let daemon = start(agent, &set, state.path());
    let _launched = launch_cgroup(agent);
    let enforced = daemon.status().file_enforcement == "available";
    let read = daemon
        .launch(agent, &["cat", secret.to_str().unwrap()])
        .output()
        .expect("cat");
    assert_eq!(read.status.success(), !enforced, "{read:?}");
    let mut seen = Vec::new();
    let hit =
        |e: &serde_json::Value| e["kind"] == "file" && e["decided_by"] == "conditional_access";
    agentd_tests::wait_until("the file event", || daemon.saw(&mut seen, hit));
    let event = seen.iter().find(|e| hit(e)).unwrap();
    assert_eq!(event["rule"], "conditional-access/ledger-policy", "{event}");
    assert_eq!(event["would_deny"], !enforced, "{event}");
    assert_eq!(event["observed"], !enforced, "{event}");
}
