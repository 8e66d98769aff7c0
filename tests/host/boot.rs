//! A newly booted machine: tracefs and securityfs are not mounted (this project's machines
//! boot so). agentd mounts them itself; told not to, it degrades the file sensor honestly and
//! goes on enforcing the network.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
};

use agentd_tests::{Daemon, launch_cgroup, unique_pin_path};

use crate::network::{attempts, connections};

/// What a newly booted machine has not mounted, innermost first.
const UNMOUNTED: [&str; 4] = [
    "/sys/kernel/debug/tracing",
    "/sys/kernel/tracing",
    "/sys/kernel/debug",
    "/sys/kernel/security",
];

/// One agent that may reach `allowed` on loopback and nothing else.
fn policy(agent: &str, allowed: u16) -> String {
    format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\n\
         [[agent.network.rule]]\nid = \"allowed\"\naction = \"allow\"\ncidr = \"127.0.0.1/32\"\n\
         ports = \"{allowed}\"\nprotocol = \"tcp\"\n"
    )
}

fn sensor<'a>(status: &'a agentd::api::Status, name: &str) -> &'a agentd::api::SensorHealth {
    status
        .sensors
        .iter()
        .find(|sensor| sensor.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:#?}", status.sensors))
}

/// Two listeners on loopback, kept open by the caller: (listeners, allowed port, denied port).
fn listeners() -> ([TcpListener; 2], u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a listener");
    let listeners = [bind(), bind()];
    let port = |listener: &TcpListener| listener.local_addr().expect("local address").port();
    let (allowed, denied) = (port(&listeners[0]), port(&listeners[1]));
    (listeners, allowed, denied)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` on agentd's metrics listener: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("sending");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reading");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// `GET /healthz`: (status line, JSON body).
fn healthz(port: u16) -> (String, serde_json::Value) {
    let (status, body) = get(port, "/healthz");
    (status, serde_json::from_str(&body).expect("a JSON body"))
}

/// The connect to the denied port fails with EPERM and is reported as a denial.
fn assert_network_enforced(daemon: &Daemon, agent: &str, allowed: u16, denied: u16) {
    let _cgroup = launch_cgroup(agent);
    assert_eq!(
        attempts(daemon, Some(agent), "tcp", "127.0.0.1", allowed, 1),
        (1, 0, 0)
    );
    assert_eq!(
        attempts(daemon, Some(agent), "tcp", "127.0.0.1", denied, 1),
        (0, 1, 0)
    );
    let mut seen = Vec::new();
    agentd_tests::wait_until("the denial is reported", || {
        connections(daemon, &mut seen);
        seen.iter()
            .any(|event| event["verdict"] == "deny" && event["port"] == u64::from(denied))
    });
}

#[test]
fn agentd_mounts_tracefs_and_securityfs_that_the_machine_booted_without() {
    let (_listeners, allowed_port, denied_port) = listeners();
    let metrics = free_port();
    let daemon = Daemon::start_without_mounts(
        &policy("boot-mounts", allowed_port),
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
        &UNMOUNTED,
    );
    let log = daemon.log();
    for fs in [
        "securityfs at /sys/kernel/security",
        "tracefs at /sys/kernel/tracing",
    ] {
        assert!(
            log.contains(&format!("agentd mounted {fs} (it was absent)")),
            "the log does not say agentd mounted {fs}:\n{log}"
        );
    }
    let status = daemon.status();
    for fs in ["securityfs", "tracefs"] {
        let sensor = sensor(&status, fs);
        assert_eq!(sensor.state, "active", "{sensor:?}");
        assert!(sensor.detail.starts_with("agentd mounted"), "{sensor:?}");
    }
    // With securityfs there the LSM probe can run: enforcing where BPF LSM works, observing
    // through the tracepoints (now attachable) where it does not. Either way, not blind.
    let files = sensor(&status, "files");
    assert_ne!(files.state, "unavailable", "{files:?}");
    assert_eq!(status.health, "healthy", "{:#?}", status.sensors);
    let (line, body) = healthz(metrics);
    assert!(line.contains(" 200 "), "{line}");
    assert_eq!(body["health"], "healthy", "{body}");
    assert_network_enforced(&daemon, "boot-mounts", allowed_port, denied_port);
}

#[test]
fn told_not_to_mount_agentd_reports_the_file_sensor_unavailable_and_still_enforces_the_network() {
    let (_listeners, allowed_port, denied_port) = listeners();
    let metrics = free_port();
    let daemon = Daemon::start_without_mounts(
        &policy("boot-degraded", allowed_port),
        &format!(
            "[bpf]\npin_path = \"{}\"\non_exit = \"detach\"\nmount_filesystems = false\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            unique_pin_path().display()
        ),
        &UNMOUNTED,
    );
    let status = daemon.status();
    let files = sensor(&status, "files");
    assert_eq!(files.state, "unavailable", "{files:?}");
    assert!(
        files.detail.contains("tracefs"),
        "the reason names tracefs: {files:?}"
    );
    let tracefs = sensor(&status, "tracefs");
    assert_eq!(tracefs.state, "disabled", "{tracefs:?}");
    assert!(
        tracefs
            .detail
            .contains("mount -t tracefs tracefs /sys/kernel/tracing"),
        "{tracefs:?}"
    );
    assert_eq!(status.health, "degraded");
    assert!(
        status.file_monitoring.starts_with("none: "),
        "{}",
        status.file_monitoring
    );
    let (line, body) = healthz(metrics);
    assert!(line.contains(" 200 "), "{line}");
    assert_eq!(body["health"], "degraded", "{body}");
    let files = body["sensors"]
        .as_array()
        .and_then(|sensors| sensors.iter().find(|s| s["name"] == "files"))
        .expect("the files sensor in /healthz");
    assert_eq!(files["state"], "unavailable", "{body}");
    let (_, metrics) = get(metrics, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line == "agentd_sensor_state{sensor=\"files\",state=\"unavailable\"} 1"),
        "{metrics}"
    );
    assert_network_enforced(&daemon, "boot-degraded", allowed_port, denied_port);
}
