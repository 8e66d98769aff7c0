//! The per-agent cap on live processes where BPF LSM runs: a fork past it is refused.

use agentd::sensors::files::bpf_lsm_active;
use agentd_tests::{Daemon, agent_policy, launch_cgroup, wait_until};

use crate::helper;

#[test]
fn fork_past_the_agent_process_cap_fails_with_eagain_and_is_reported() {
    assert!(
        bpf_lsm_active().expect("reading the active LSM list"),
        "BPF LSM is not active on this kernel: run this tier through `cargo xtask test --tier vm`"
    );
    let agent = "capped-agent";
    let daemon = Daemon::start_with(&agent_policy(agent), "max_processes_per_agent = 4\n");
    let _launched = launch_cgroup(agent);
    // The helper itself is one live process: three forks fit under the cap of four.
    let output = daemon
        .launch(
            agent,
            &[helper().to_str().expect("a UTF-8 path"), "fork", "6"],
        )
        .output()
        .expect("running the agent");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("forked=3 refused=3 errno={}", libc::EAGAIN)),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut refused = Vec::new();
    wait_until("the refusals are reported", || {
        refused.extend(daemon.events().into_iter().filter(|line| {
            line.contains("\"kind\":\"tag_cap\"") && line.contains("\"refused\":true")
        }));
        refused.len() >= 3
    });
    assert!(refused[0].contains(agent), "{}", refused[0]);
    let status = daemon.status();
    assert!(status.forks_refused_over_cap >= 3, "{status:?}");
    // Its processes gone, the agent may fork again.
    let output = daemon
        .launch(
            agent,
            &[helper().to_str().expect("a UTF-8 path"), "fork", "3"],
        )
        .output()
        .expect("running the agent again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("forked=3 refused=0"), "{stdout}");
}
