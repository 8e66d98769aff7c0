//! Enforcement that survives the daemon (docs/operations.md): pinned maps and links, adopted
//! after a crash; an upgrade that fails leaves the old programs enforcing; teardown detaches.

use std::{net::TcpListener, path::Path, process::Command};

use agentd::pins::LinkStatus;
use agentd_tests::{Daemon, agentd_bin, launch_cgroup, unique_pin_path};

use crate::{helper, network::counter};

/// A policy for `agent`: deny by default, TCP to 127.0.0.1:`allowed` allowed.
fn policy(agent: &str, allowed: u16) -> String {
    format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\n\
         [[agent.network.rule]]\nid = \"allowed\"\naction = \"allow\"\ncidr = \"127.0.0.1/32\"\n\
         ports = \"{allowed}\"\nprotocol = \"tcp\"\n"
    )
}

/// Two listeners on 127.0.0.1 that accept and drop connections on threads of their own, so
/// that a long loop never fills their backlog. Returns (allowed, denied) ports.
fn listeners() -> [u16; 2] {
    [(); 2].map(|()| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("address").port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        port
    })
}

fn keep(pins: &Path) -> String {
    format!(
        "[bpf]\npin_path = \"{}\"\non_exit = \"keep\"\n",
        pins.display()
    )
}

fn links(daemon: &Daemon) -> (bool, String, Vec<LinkStatus>) {
    let pins = daemon.status().pins.expect("status reports the pins");
    (pins.adopted, pins.build, pins.links)
}

/// A tagged agent connects in a loop to an allowed and a denied port while agentd is killed with
/// SIGKILL and restarted 20 times: no connection to the denied port succeeds, the allowed one
/// keeps working, and every restart adopts the same pinned links.
#[test]
fn enforcement_survives_twenty_sigkills_and_the_pinned_links_stay_the_same() {
    let agent = "restart-agent";
    let ports = listeners();
    let pins = unique_pin_path();
    let mut daemon = Daemon::start_with_config(&policy(agent, ports[0]), &keep(&pins));
    let _cgroup = launch_cgroup(agent);
    let (adopted, build, first) = links(&daemon);
    assert!(!adopted, "a fresh start attaches its own links");
    assert!(
        first.iter().any(|link| link.program == "connect4")
            && first
                .iter()
                .any(|link| link.program == "sched_process_fork"),
        "{first:?}"
    );
    let pinned_dir = pins.join("links").join(&build);
    let pinned: Vec<_> = std::fs::read_dir(&pinned_dir)
        .expect("the links directory")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(pinned.len(), first.len());

    let stop = daemon.dir.path().join("stop");
    let looping = start_loop(&daemon, agent, ports, &stop);

    // 20 on a host; fewer under emulation (the vm tier sets AGENTD_RESTARTS).
    let restarts: u32 = std::env::var("AGENTD_RESTARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    for round in 0..restarts {
        daemon.sigkill_and_restart(&[]);
        let (adopted, again_build, again) = links(&daemon);
        assert!(adopted, "restart {round} adopted the pinned links");
        assert_eq!(again_build, build);
        assert_eq!(again, first, "restart {round}: the pinned links changed");
    }
    std::fs::write(&stop, "").expect("stopping the loop");
    let output = looping.wait_with_output().expect("the loop's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    eprintln!("agent's loop over {restarts} SIGKILLs: {stdout}");
    assert_eq!(counter(&stdout, "denied_ok"), 0, "{stdout}");
    assert!(counter(&stdout, "denied_eperm") > 0, "{stdout}");
    assert!(counter(&stdout, "allowed_ok") > 0, "{stdout}");
    assert_eq!(counter(&stdout, "allowed_eperm"), 0, "{stdout}");
    let still: Vec<_> = std::fs::read_dir(&pinned_dir)
        .expect("the links directory")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(still.len(), pinned.len());
}

/// Starts the helper's loop as `agent` (connecting to `ports[0]`, then `ports[1]`, until
/// `stop` exists) and waits until agentd has tagged it.
fn start_loop(daemon: &Daemon, agent: &str, ports: [u16; 2], stop: &Path) -> std::process::Child {
    let bin = helper();
    let child = daemon
        .launch(
            agent,
            &[
                bin.to_str().expect("UTF-8 path"),
                "net-loop",
                "tcp",
                "127.0.0.1",
                &ports[0].to_string(),
                &ports[1].to_string(),
                stop.to_str().expect("UTF-8 path"),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the agent's loop");
    daemon.wait_tagged(child.id(), agent);
    child
}

/// Runs the helper's loop as `agent` for a moment and returns its output.
fn probe(daemon: &Daemon, agent: &str, ports: [u16; 2]) -> String {
    let stop = daemon.dir.path().join("probe-stop");
    let _ = std::fs::remove_file(&stop);
    let child = start_loop(daemon, agent, ports, &stop);
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(&stop, "").expect("stopping the probe");
    let output = child.wait_with_output().expect("the probe's output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The upgrade test: a new build whose `connect4` fails to attach exits with an error, and the
/// old programs keep enforcing with their links untouched; a new build that loads replaces them
/// (new links, old ones unpinned); `agentd teardown` then detaches everything.
#[test]
fn a_failing_upgrade_leaves_the_old_programs_enforcing_and_a_good_one_replaces_them() {
    let agent = "upgrade-agent";
    let ports = listeners();
    let pins = unique_pin_path();
    let mut daemon = Daemon::start_with_config(&policy(agent, ports[0]), &keep(&pins));
    let _cgroup = launch_cgroup(agent);
    let (_, old_build, old) = links(&daemon);

    // The old agentd dies; its programs keep enforcing.
    daemon.sigkill();
    let (status, log) = daemon.start_failing(&[("AGENTD_FAULT_INJECTION", "attach:connect4")]);
    assert!(
        !status.success(),
        "the failing upgrade exited with {status}"
    );
    assert!(log.contains("connect4"), "{log}");
    let old_dir = pins.join("links").join(&old_build);
    assert!(
        old_dir.join("connect4").exists(),
        "the old links are still pinned"
    );
    // Nothing of the failed build is left pinned.
    let dirs: Vec<_> = std::fs::read_dir(pins.join("links"))
        .expect("links")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(dirs, [std::ffi::OsString::from(&old_build)], "{dirs:?}");

    // Back with the old build: it adopts the same links, which enforced all along.
    daemon.sigkill_and_restart(&[]);
    let (adopted, build, again) = links(&daemon);
    assert!(adopted);
    assert_eq!((build.as_str(), &again), (old_build.as_str(), &old));
    let out = probe(&daemon, agent, ports);
    assert_eq!(counter(&out, "denied_ok"), 0, "{out}");
    assert!(counter(&out, "denied_eperm") > 0, "{out}");

    // A new build that loads: new links take over, the old ones are unpinned.
    daemon.sigkill_and_restart(&[("AGENTD_FAULT_INJECTION", "new-build")]);
    let (adopted, new_build, new) = links(&daemon);
    assert!(!adopted);
    assert_ne!(new_build, old_build);
    assert_eq!(new.len(), old.len());
    for (old, new) in old.iter().zip(&new) {
        assert_eq!(old.program, new.program);
        assert_ne!(old.link_id, new.link_id, "{} was replaced", old.program);
    }
    assert!(!old_dir.exists(), "the old build's links were unpinned");
    let out = probe(&daemon, agent, ports);
    assert_eq!(counter(&out, "denied_ok"), 0, "{out}");
    assert!(counter(&out, "allowed_ok") > 0, "{out}");

    // Teardown refuses while agentd runs, then detaches everything.
    let admin = daemon.admin_socket().to_owned();
    let teardown = || {
        Command::new(agentd_bin())
            .arg("teardown")
            .arg("--pin-path")
            .arg(&pins)
            .arg("--admin-socket")
            .arg(&admin)
            .output()
            .expect("running agentd teardown")
    };
    let refused = teardown();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("agentd is running"),
        "{refused:?}"
    );
    // A tagged loop, started while the programs enforce, reaches the denied port only once
    // they are detached.
    let stop = daemon.dir.path().join("teardown-stop");
    let looping = start_loop(&daemon, agent, ports, &stop);
    std::thread::sleep(std::time::Duration::from_millis(300));
    daemon.sigkill();
    let done = teardown();
    assert!(done.status.success(), "{done:?}");
    assert!(!pins.exists());
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(&stop, "").expect("stopping the loop");
    let output = looping.wait_with_output().expect("the loop's output");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(counter(&out, "denied_eperm") > 0, "{out}");
    assert!(
        counter(&out, "denied_ok") > 0,
        "teardown detached the programs: {out}"
    );
}
