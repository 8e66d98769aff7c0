//! The risk engine end to end: real tagged processes raise detections, the agent's risk rises,
//! and at high risk the kernel quarantines it. Also the event pipeline's loss accounting under
//! load with a deliberately tiny ring buffer.

use std::{fs, net::TcpListener};

use agentd::api::RiskRequest;
use agentd_tests::{Daemon, launch_cgroup, wait_until, wait_until_explained};

use crate::helper;

/// JSON lines of `kind` seen so far, added to `seen`.
fn collect(daemon: &Daemon, seen: &mut Vec<serde_json::Value>) {
    seen.extend(
        daemon
            .events()
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line")),
    );
}

/// `GET /metrics` on loopback, the body.
fn scrape(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

const NO_LEARNING: &str = "[risk]\nlearning_window_secs = 0\n";

/// An agent reads a file a rule names (audit mode: the read goes through on every kernel),
/// then connects somewhere it never went: `secret_read_then_egress` fires, its risk goes high,
/// agentd quarantines it, and its next connect fails with EPERM.
#[test]
fn secret_read_then_new_egress_raises_high_risk_and_quarantines_in_the_kernel() {
    let agent = "leaky-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let secret = dir.path().join("credentials");
    fs::write(&secret, "token").expect("secret");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    let daemon = Daemon::start_with_config(
        &format!(
            "[[agent]]\nname = \"{agent}\"\n[agent.files]\nmode = \"audit\"\n\
             [[agent.files.rule]]\nid = \"creds\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
            secret.display()
        ),
        NO_LEARNING,
    );
    let _launched = launch_cgroup(agent);
    assert_eq!(daemon.risk(agent)["level"], "none");

    let read = daemon
        .launch(agent, &["cat", secret.to_str().unwrap()])
        .output()
        .expect("cat");
    assert!(read.status.success(), "audit mode lets the read through");
    let mut seen = Vec::new();
    wait_until("the secret read is reported", || {
        collect(&daemon, &mut seen);
        seen.iter().any(|e| e["kind"] == "file")
    });
    assert_eq!(
        daemon.tcp_connects(&helper(), agent, "127.0.0.1", port, 1),
        "ok=1 eperm=0 other=0"
    );

    wait_until("the agent is quarantined", || {
        collect(&daemon, &mut seen);
        seen.iter().any(|e| e["kind"] == "remediation")
    });
    let detection = seen
        .iter()
        .find(|e| e["kind"] == "detection" && e["rule"] == "secret_read_then_egress")
        .unwrap_or_else(|| panic!("a secret_read_then_egress detection: {seen:#?}"));
    assert_eq!(detection["agent_name"], agent);
    assert_eq!(detection["severity"], "high");
    let remediation = seen.iter().find(|e| e["kind"] == "remediation").unwrap();
    assert_eq!(remediation["action"], "quarantine");
    assert_eq!(remediation["result"], "done");
    let latency = remediation["latency_ns"].as_u64().expect("a latency");
    eprintln!("kernel event to quarantine in force: {latency} ns");
    assert!(
        seen.iter()
            .any(|e| e["kind"] == "risk_change" && e["to"] == "high"),
        "{seen:#?}"
    );

    assert_eq!(
        daemon.tcp_connects(&helper(), agent, "127.0.0.1", port, 1),
        "ok=0 eperm=1 other=0",
        "the next connect fails with EPERM"
    );
    let risk = daemon.risk(agent);
    assert_eq!(risk["level"], "high");
    assert_eq!(risk["quarantined"], true);
    assert!(daemon.status().quarantined.contains(&agent.to_owned()));

    // An admin confirms it safe: detections dismissed, risk none; the quarantine is lifted.
    let level = daemon
        .risk_request(RiskRequest::Confirm {
            agent: agent.to_owned(),
            compromised: false,
        })
        .expect("confirm safe");
    assert_eq!(level, "none");
    assert_eq!(
        daemon.tcp_connects(&helper(), agent, "127.0.0.1", port, 1),
        "ok=1 eperm=0 other=0"
    );
    drop(listener);
}

/// A burst of denied connects raises `denied_burst` (medium); an admin dismisses it and the
/// risk falls back; confirming the agent compromised sets high.
#[test]
fn denied_burst_raises_medium_risk_and_an_admin_can_dismiss_and_confirm() {
    let agent = "noisy-agent";
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    let metrics_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|free| free.local_addr())
        .expect("a free port")
        .port();
    let daemon = Daemon::start_with_config(
        &format!("[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\n"),
        &format!(
            "[risk]\n[risk.remediation]\nquarantine = false\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
    );
    let _launched = launch_cgroup(agent);
    assert_eq!(
        daemon.tcp_connects(&helper(), agent, "127.0.0.1", port, 12),
        "ok=0 eperm=12 other=0"
    );
    let mut seen = Vec::new();
    wait_until("denied_burst fires", || {
        collect(&daemon, &mut seen);
        seen.iter()
            .any(|e| e["kind"] == "detection" && e["rule"] == "denied_burst")
    });
    let risk = daemon.risk(agent);
    assert_eq!(risk["level"], "medium", "{risk:#}");
    // The same figures on the Prometheus endpoint.
    let metrics = scrape(metrics_port);
    for line in [
        "agentd_detections_total{rule=\"denied_burst\",severity=\"medium\"} 1".to_owned(),
        format!("agentd_agent_risk_level{{agent=\"{agent}\"}} 2"),
        "agentd_agents 1".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("agentd_events_produced_total ")),
        "{metrics}"
    );
    let id = risk["detections"][0]["detection"]["id"].as_u64().unwrap();

    // Events carry the process lineage: a connect from a child of a shell names the shell.
    let bin = helper();
    let script = format!("{} net tcp 127.0.0.1 {port} 1; true", bin.display());
    let output = daemon
        .launch(agent, &["sh", "-c", &script])
        .output()
        .expect("sh");
    assert!(output.status.success());
    wait_until(
        "the shell's child's connect is reported with its lineage",
        || {
            collect(&daemon, &mut seen);
            seen.iter().any(|e| {
                e["kind"] == "net"
                    && e["lineage"][0]["exe"]
                        .as_str()
                        .is_some_and(|exe| exe.ends_with("sh"))
            })
        },
    );
    assert_eq!(risk["detections"][0]["state"], "active");

    daemon
        .risk_request(RiskRequest::Dismiss { detection: id })
        .expect("dismiss");
    let risk = daemon.risk(agent);
    assert_eq!(risk["level"], "none", "{risk:#}");
    assert_eq!(risk["detections"][0]["state"], "dismissed");
    let err = daemon
        .risk_request(RiskRequest::Dismiss { detection: id })
        .unwrap_err();
    assert!(err.to_string().contains("not active"), "{err}");

    let level = daemon
        .risk_request(RiskRequest::Confirm {
            agent: agent.to_owned(),
            compromised: true,
        })
        .expect("confirm compromised");
    assert_eq!(level, "high");
    let err = daemon
        .risk_request(RiskRequest::Show {
            agent: "nobody".to_owned(),
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown agent \"nobody\""),
        "{err}"
    );
    drop(listener);
}

/// With a one-page ring buffer, a connect storm overflows it. agentd says so (an
/// `events_lost` notice and status), and nothing is unaccounted for: once the storm is over,
/// delivered + undecodable + dropped = produced, as the kernel counted them.
#[test]
fn tiny_ring_buffer_under_load_reports_drops_and_accounts_for_every_event() {
    let agent = "storm-agent";
    let daemon = Daemon::start_with_config(
        &format!("[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\n"),
        "[events]\nring_buffer_bytes = 4096\nloss_alert_interval_secs = 1\n\
         [risk]\n[risk.remediation]\nquarantine = false\n",
    );
    let _launched = launch_cgroup(agent);
    let bin = helper();
    let output = daemon
        .launch(
            agent,
            &[
                bin.to_str().unwrap(),
                "net",
                "udp-connect",
                "127.0.0.1",
                "9",
                "20000",
            ],
        )
        .output()
        .expect("storm");
    assert!(output.status.success());

    let mut status = daemon.status();
    wait_until("the accounting settles", || {
        let now = daemon.status();
        let settled = now.events_produced == status.events_produced
            && now.events_delivered + now.events_undecodable + now.events_dropped
                == now.events_produced;
        status = now;
        settled
    });
    eprintln!(
        "produced {} delivered {} dropped {} (per CPU {:?})",
        status.events_produced,
        status.events_delivered,
        status.events_dropped,
        status.events_dropped_per_cpu
    );
    assert!(
        status.events_dropped > 0,
        "a one-page ring buffer kept up: {status:?}"
    );
    assert!(status.events_produced >= 20_000, "{status:?}");
    assert_eq!(
        status.events_dropped_per_cpu.iter().sum::<u64>(),
        status.events_dropped
    );
    let mut seen = Vec::new();
    wait_until("the loss is announced", || {
        collect(&daemon, &mut seen);
        seen.iter().any(|e| e["kind"] == "events_lost")
    });
    let lost: u64 = seen
        .iter()
        .filter(|e| e["kind"] == "events_lost")
        .map(|e| e["dropped"].as_u64().unwrap())
        .sum();
    assert!(lost > 0 && lost <= status.events_dropped);
}

/// Bytes an agent's sockets send are counted in the kernel (`cgroup_skb/egress`); past the
/// absolute limit, `egress_spike` fires.
#[test]
fn egress_volume_is_counted_in_the_kernel_and_a_spike_is_detected() {
    let agent = "uploader";
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    let sink = std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut stream, _) = listener.accept().expect("accept");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("read");
        received.len()
    });
    let daemon = Daemon::start_with_config(
        &format!("[[agent]]\nname = \"{agent}\"\n"),
        "[risk]\n[risk.egress_spike]\nabsolute_bytes = 1048576\nwindow_secs = 60\n\
         [risk.remediation]\nquarantine = false\n",
    );
    let _launched = launch_cgroup(agent);
    let bin = helper();
    let output = daemon
        .launch(
            agent,
            &[
                bin.to_str().unwrap(),
                "send",
                "127.0.0.1",
                &port.to_string(),
                "4194304",
            ],
        )
        .output()
        .expect("helper");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sent=4194304"
    );
    assert_eq!(sink.join().unwrap(), 4_194_304);
    let mut seen = Vec::new();
    wait_until_explained(
        "egress_spike fires",
        || {
            collect(&daemon, &mut seen);
            seen.iter()
                .any(|e| e["kind"] == "detection" && e["rule"] == "egress_spike")
        },
        || {
            format!(
                "risk show: {}\nstatus: {:?}\nagentd's log:\n{}",
                daemon.risk(agent),
                daemon.try_status(),
                daemon.log()
            )
        },
    );
    let detection = seen
        .iter()
        .find(|e| e["kind"] == "detection" && e["rule"] == "egress_spike")
        .unwrap();
    assert_eq!(detection["agent_name"], agent);
    // agentd reads the kernel's count once a second: the detection fires at the first reading
    // past the limit, which may come while the transfer is still going. Headers are counted
    // too, so a count can exceed the payload, but never by twice.
    let bytes = observed_bytes(detection);
    assert!(
        bytes > 1_048_576 && bytes < 2 * 4_194_304,
        "the kernel counted {bytes} bytes: {detection}"
    );
}

/// What a socket still holds when its process closes it goes out after `sock_release`: those
/// bytes are counted too. The agent sets a send buffer larger than the payload, writes it all,
/// and exits before the receiver has read a byte (its receive buffer is 64 KiB), so nearly
/// every byte leaves after the close. Without `RELEASED_SOCKETS` the kernel counts only the
/// first window and no spike is seen.
#[test]
fn bytes_sent_after_the_agent_closed_its_socket_are_counted() {
    use std::os::fd::AsRawFd as _;
    let agent = "closer";
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let size: libc::c_int = 65_536;
    // SAFETY: a valid int option of the size passed, on a live socket; accepted sockets
    // inherit it.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("a small size"),
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    let port = listener.local_addr().unwrap().port();
    let (go, start) = std::sync::mpsc::channel::<()>();
    let sink = std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut stream, _) = listener.accept().expect("accept");
        start.recv().expect("the sender exited");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("read");
        received.len()
    });
    let daemon = Daemon::start_with_config(
        &format!("[[agent]]\nname = \"{agent}\"\n"),
        "[risk]\n[risk.egress_spike]\nabsolute_bytes = 1048576\nwindow_secs = 60\n\
         [risk.remediation]\nquarantine = false\n",
    );
    let _launched = launch_cgroup(agent);
    let bin = helper();
    let output = daemon
        .launch(
            agent,
            &[
                bin.to_str().unwrap(),
                "send",
                "127.0.0.1",
                &port.to_string(),
                "4194304",
                "16777216",
            ],
        )
        .output()
        .expect("helper");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sent=4194304",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    go.send(()).unwrap();
    assert_eq!(sink.join().unwrap(), 4_194_304);
    let mut seen = Vec::new();
    wait_until_explained(
        "egress_spike fires for bytes sent after the close",
        || {
            collect(&daemon, &mut seen);
            seen.iter()
                .any(|e| e["kind"] == "detection" && e["rule"] == "egress_spike")
        },
        || format!("risk show: {}", daemon.risk(agent)),
    );
}

/// The bytes in a detection's egress evidence.
fn observed_bytes(detection: &serde_json::Value) -> u64 {
    detection["evidence"].as_array().map_or(0, |evidence| {
        evidence.iter().filter_map(|o| o["bytes"].as_u64()).sum()
    })
}
