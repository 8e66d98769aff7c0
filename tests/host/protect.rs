//! Self-protection on a host without BPF LSM: the admin socket refuses agents, and status says
//! what protects agentd here. (The kernel denials are in the vm tier.)

use agentd_tests::{Daemon, agentd_bin, launch_cgroup};

#[test]
fn agents_are_refused_on_the_admin_socket_even_as_root() {
    let agent = "socket-agent";
    let daemon = Daemon::start(&format!("[[agent]]\nname = \"{agent}\"\n"));
    let _launched = launch_cgroup(agent);
    let socket = daemon.admin_socket().to_str().expect("UTF-8").to_owned();
    let bin = agentd_bin();
    let status = |as_agent: bool| {
        let args = [bin.to_str().expect("UTF-8"), "status", "--socket", &socket];
        if as_agent {
            daemon.launch(agent, &args).output()
        } else {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
        }
        .expect("running agentd status")
    };
    let refused = status(true);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("agents may not use the admin socket"),
        "{refused:?}"
    );
    let answered = status(false);
    assert!(answered.status.success(), "{answered:?}");
    let protection = daemon.status().self_protection;
    assert!(
        protection.starts_with("lsm") || protection.starts_with("partial"),
        "{protection}"
    );
}
