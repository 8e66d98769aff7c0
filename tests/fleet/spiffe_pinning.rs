//! The Workload API identifies a caller by the process pinned when it connected: a connection
//! made by an untagged process and used after a tagged agent process has taken that process's
//! pid gets no SVID (the identity socket's pid-reuse test, on the SPIFFE socket).

use std::{fs, process::Command};

use agentd_tests::{launch_cgroup, pid_reuse, wait_until};

use crate::{
    ControlPlane,
    credentials::{first_x509_fetch, spiffe_fetch},
    enrolled, register,
};

#[test]
fn a_connection_made_before_a_pid_was_reused_gets_no_svid_for_the_new_process() {
    if !pid_reuse::can_force_pid_reuse() {
        return;
    }
    let agent = "reused-agent";
    let cp = ControlPlane::start();
    let agent_id = register(&cp, agent);
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled(&cp, agent, state.path(), "");
    let _launched = launch_cgroup(agent);
    let socket = daemon.identity.with_file_name("spiffe.sock");
    let endpoint = format!("unix://{}", socket.display());
    let mut keeper = daemon
        .launch(agent, &["sleep", "120"])
        .spawn()
        .expect("a process of the agent");
    // The agent's own processes do get its SVID: what a mistaken identification would hand out.
    let expected = format!("spiffe_id=spiffe://agentd.internal/agent/{agent_id}");
    let last = first_x509_fetch(&daemon, agent, &endpoint);
    assert!(last.starts_with(&expected), "{last}");

    // An untagged process connects, hands the connection to its child, and exits.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let output = Command::new(spiffe_fetch())
        .args(["handover", socket.to_str().unwrap(), go.to_str().unwrap()])
        .output()
        .expect("spiffe-fetch handover");
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let connector: u32 = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("connector="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("spiffe-fetch printed {line:?}"));

    // A process of the agent now takes the connector's pid.
    let mut victim = pid_reuse::spawn_with_pid(connector, || {
        daemon
            .launch(agent, &["sleep", "60"])
            .spawn()
            .expect("launch")
    })
    .expect("could not make an agent process reuse the connector's pid");
    daemon.wait_tagged(connector, agent);

    // The connection's holder asks: it must not get the agent's SVID.
    fs::write(&go, "").unwrap();
    let reply_path = dir.path().join("go.reply");
    wait_until("the connection's holder got an answer", || {
        reply_path.exists()
    });
    let reply = fs::read_to_string(&reply_path).unwrap();
    let _ = victim.kill();
    let _ = victim.wait();
    let _ = keeper.kill();
    let _ = keeper.wait();
    eprintln!("the holder was told: {reply}");
    assert!(reply.starts_with("error="), "{reply}");
    assert!(
        !reply.contains(&agent_id),
        "the agent's SVID leaked: {reply}"
    );
}
