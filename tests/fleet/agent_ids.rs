//! Issue 19, item 2: one id per agent everywhere. An agent that the local policy names without
//! an `id` takes the control plane's id, so that host events, the identity socket, `agentd ps`
//! and its SPIFFE ID name the agent of the registry; processes tagged before keep their tag, and
//! a restart keeps the id.

use agentd_tests::{Daemon, agentd_bin, launch_cgroup, wait_until};

use crate::{
    ControlPlane, credentials::first_x509_fetch, enrolled_agents, helper, register, serve,
};

/// The id the identity socket answers to a process of `agent`.
fn whoami(daemon: &Daemon, agent: &str) -> String {
    let output = daemon
        .launch(
            agent,
            &[
                agentd_bin().to_str().unwrap(),
                "whoami",
                "--socket",
                daemon.identity.to_str().unwrap(),
            ],
        )
        .output()
        .expect("agentd whoami in the agent");
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "an identity document: {} {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    document["agent"]["id"].as_str().unwrap().to_owned()
}

/// The id of the agent in the latest connection event of `agent` to `port`.
fn event_id(daemon: &Daemon, seen: &mut Vec<serde_json::Value>, agent: &str, port: u16) -> String {
    let mut found = String::new();
    wait_until("the agent's connection event", || {
        daemon.saw(seen, |event| {
            event["kind"] == "net" && event["agent"]["name"] == agent && event["port"] == port
        });
        if let Some(id) = seen
            .iter()
            .rev()
            .find(|event| event["kind"] == "net" && event["port"] == port)
            .and_then(|event| event["agent"]["id"].as_str())
        {
            id.clone_into(&mut found);
        }
        !found.is_empty()
    });
    found
}

#[test]
fn an_agent_without_an_id_takes_the_control_planes_everywhere_and_keeps_it_across_restarts() {
    let agent = "one-id-agent";
    let later = "late-registered-agent";
    let cp = ControlPlane::start();
    let agent_id = register(&cp, agent);
    let state = tempfile::tempdir().unwrap();
    // The local policy names both agents by name only; `later` is not registered yet.
    let mut daemon = enrolled_agents(&cp, &[agent, later], state.path(), "");
    let _launched = launch_cgroup(agent);
    let _launched_later = launch_cgroup(later);
    let derived = |name: &str| agentd::identity::AgentId::from_name(name).to_string();
    assert_ne!(agent_id, derived(agent), "the registry's ids are random");

    // The identity socket, `agentd ps` and the host's events name the registry's id.
    assert_eq!(
        whoami(&daemon, agent),
        agent_id,
        "agentd's log:\n{}",
        daemon.log()
    );
    let port = serve("127.0.0.1:0");
    let mut seen = Vec::new();
    assert!(daemon.connects(&helper(), agent, "127.0.0.1", port));
    assert_eq!(event_id(&daemon, &mut seen, agent, port), agent_id);
    let mut keeper = daemon
        .launch(agent, &["sleep", "300"])
        .spawn()
        .expect("a process of the agent");
    let tagged = daemon.wait_tagged(keeper.id(), agent);
    assert_eq!(tagged.agent.id.to_string(), agent_id);
    // Its SPIFFE ID too.
    let endpoint = format!(
        "unix://{}",
        daemon.identity.with_file_name("spiffe.sock").display()
    );
    let svid = first_x509_fetch(&daemon, agent, &endpoint);
    assert!(
        svid.starts_with(&format!(
            "spiffe_id=spiffe://agentd.internal/agent/{agent_id} "
        )),
        "{svid}"
    );

    // An agent registered while its process runs: the process keeps its tag and takes the id.
    let mut early = daemon
        .launch(later, &["sleep", "300"])
        .spawn()
        .expect("a process of the later agent");
    let before = daemon.wait_tagged(early.id(), later);
    assert_eq!(before.agent.id.to_string(), derived(later));
    let later_id = register(&cp, later);
    wait_until("the running process names the registry's id", || {
        daemon
            .agent_of(early.id())
            .is_some_and(|process| process.agent.id.to_string() == later_id)
    });
    let port = serve("127.0.0.1:0");
    assert!(daemon.connects(&helper(), later, "127.0.0.1", port));
    assert_eq!(event_id(&daemon, &mut seen, later, port), later_id);

    // A restart (SIGKILL: nothing is cleaned up) keeps both ids, for the processes tagged
    // before it and from the first answer, before the control plane is reached again.
    daemon.sigkill_and_restart(&[]);
    wait_until("agentd answers again", || daemon.try_status().is_ok());
    let id_of = |pid: u32| daemon.agent_of(pid).map(|p| p.agent.id.to_string());
    assert_eq!(id_of(keeper.id()), Some(agent_id.clone()));
    assert_eq!(id_of(early.id()), Some(later_id.clone()));
    assert_eq!(whoami(&daemon, later), later_id);
    assert!(
        !daemon
            .log()
            .contains("by another id than the control plane"),
        "no agent of a policy without ids is left with another id:\n{}",
        daemon.log()
    );
    for child in [&mut keeper, &mut early] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
