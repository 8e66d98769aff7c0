//! The fleet tier: a real control plane (`agentd-control` on loopback, an `SQLite` database) and a real
//! agentd enforcing its Conditional Access decisions in the running kernel. Run with
//! `cargo xtask test --tier host`, which builds the binaries and names them in `AGENTD_BIN`,
//! `AGENTD_CONTROL_BIN` and `AGENTCTL_BIN`.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output},
    time::Instant,
};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

fn bin(var: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || panic!("{var} is not set: run this tier through `cargo xtask test`"),
        PathBuf::from,
    )
}

fn helper() -> PathBuf {
    agentd_tests::test_helper(env!("CARGO_BIN_EXE_agentd-test-helper"))
}

/// `agentd-control serve` on a free loopback port with its own `SQLite` database, and an admin
/// token. Killed on drop.
struct ControlPlane {
    dir: tempfile::TempDir,
    server: Child,
    url: String,
    token: String,
}

impl ControlPlane {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = format!("sqlite://{}/control.db", dir.path().display());
        let token = Command::new(bin("AGENTD_CONTROL_BIN"))
            .args(["create-token", "--name", "test", "--role", "admin"])
            .args(["--principal", "root@example.com", "--database", &database])
            .output()
            .expect("agentd-control create-token");
        assert!(token.status.success(), "{token:?}");
        let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|free| free.local_addr())
            .expect("a free port")
            .port();
        let server = Command::new(bin("AGENTD_CONTROL_BIN"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database", &database, "--decision-recheck", "1s"])
            .stderr(fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .expect("agentd-control serve");
        wait_until("the control plane listens", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            dir,
            server,
            url: format!("http://127.0.0.1:{port}"),
            token,
        }
    }

    /// `agentctl ARGS` as the admin; fails the test unless it succeeds.
    fn ctl(&self, args: &[&str]) -> Output {
        let output = Command::new(bin("AGENTCTL_BIN"))
            .args(args)
            .env("AGENTD_SERVER", &self.url)
            .env("AGENTD_TOKEN", &self.token)
            .output()
            .expect("agentctl");
        assert!(
            output.status.success(),
            "agentctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_slice(&self.ctl(&args).stdout).expect("JSON output")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = &self.dir;
    }
}

/// `helper net tcp ADDR PORT 1` as `agent`: true when the connect went through.
fn connects(daemon: &Daemon, agent: &str, addr: &str, port: u16) -> bool {
    let bin = helper();
    let output = daemon
        .launch(
            agent,
            &[
                bin.to_str().unwrap(),
                "net",
                "tcp",
                addr,
                &port.to_string(),
                "1",
            ],
        )
        .output()
        .expect("helper");
    match String::from_utf8_lossy(&output.stdout).trim() {
        "ok=1 eperm=0 other=0" => true,
        "ok=0 eperm=1 other=0" => false,
        other => panic!("helper said {other:?}"),
    }
}

const AGENT: &str = "fleet-agent";

/// A listener on `addr` that accepts and drops every connection, so that its backlog never
/// fills however often the test connects.
fn serve(addr: &str) -> u16 {
    let listener = TcpListener::bind(addr).expect("listener");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    port
}

fn policy(ports: &str) -> String {
    format!(
        "name: fleet-egress\nstate: enabled\nassignments:\n  include:\n    agents: [{AGENT}]\n\
         controls:\n  network:\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: \"{ports}\"\n\
         \x20     - cidr: 127.0.0.2/32\n"
    )
}

#[test]
fn decisions_flow_from_policy_to_the_kernel_and_risk_closes_the_loop() {
    let cp = ControlPlane::start();
    cp.ctl(&["blueprint", "create", "fleet"]);
    let created = cp.json(&[
        "agent",
        "create",
        AGENT,
        "--blueprint",
        "fleet",
        "--sponsor",
        "alice@example.com",
    ]);
    let agent_id = created["agent"]["id"].as_str().unwrap().to_owned();
    cp.ctl(&["agent", "enable", &agent_id]);
    let granted_port = serve("127.0.0.1:0");
    let later_port = serve("127.0.0.1:0");
    let fresh_port = serve("127.0.0.2:0");
    let file = cp.dir.path().join("policy.yaml");
    fs::write(&file, policy(&granted_port.to_string())).unwrap();
    cp.ctl(&["policy", "apply", file.to_str().unwrap()]);
    let join = cp.json(&["host", "join-token"]);
    let join = join["token"].as_str().unwrap();

    let state = tempfile::tempdir().unwrap();
    let secret = state.path().join("credentials");
    fs::write(&secret, "token").unwrap();
    let daemon = Daemon::start_with_config(
        &format!(
            "[[agent]]\nname = \"{AGENT}\"\n[agent.files]\nmode = \"audit\"\n\
             [[agent.files.rule]]\nid = \"creds\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
            secret.display()
        ),
        &format!(
            "[control_plane]\nurl = \"{}\"\njoin_token = \"{join}\"\nstate_dir = \"{}\"\nheartbeat_secs = 1\n\
             [risk]\nlearning_window_secs = 0\n[risk.remediation]\nquarantine = false\n",
            cp.url,
            state.path().display()
        ),
    );
    let _launched = launch_cgroup(AGENT);
    wait_until("the first decisions are in force", || {
        daemon
            .status()
            .control_plane
            .is_some_and(|control| control.connected && control.decision_version > 0)
    });
    assert!(
        connects(&daemon, AGENT, "127.0.0.1", granted_port),
        "granted"
    );
    assert!(
        !connects(&daemon, AGENT, "127.0.0.1", later_port),
        "not granted (yet)"
    );
    // The control plane shows the version this host applied.
    let version = daemon.status().control_plane.unwrap().decision_version;
    wait_until("the host's acknowledgement is recorded", || {
        cp.json(&["host", "list"])["hosts"][0]["appliedDecisionVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            == Some(version)
    });

    // A policy change reaches the kernel.
    let (lo, hi) = (granted_port.min(later_port), granted_port.max(later_port));
    fs::write(&file, policy(&format!("{lo}-{hi}"))).unwrap();
    let changed = Instant::now();
    cp.ctl(&["policy", "apply", file.to_str().unwrap()]);
    wait_until("the new grant is in force", || {
        connects(&daemon, AGENT, "127.0.0.1", later_port)
    });
    eprintln!(
        "policy change to the new verdict in the kernel: {:?} (with a helper process per try)",
        changed.elapsed()
    );

    risk_loop(&cp, &daemon, granted_port, fresh_port, &secret);
    let control = daemon.status().control_plane.unwrap();
    assert!(control.decision_version > version);
    let risk = cp.json(&["policy", "what-if", AGENT]);
    assert!(risk.to_string().contains("high"), "{risk}");
}

/// The baseline "block high-risk agents" switched on; the agent reads a secret and connects
/// somewhere new; the detection goes to the control plane, which raises the agent's risk and
/// pushes a block that the kernel enforces.
fn risk_loop(
    cp: &ControlPlane,
    daemon: &Daemon,
    granted_port: u16,
    fresh_port: u16,
    secret: &std::path::Path,
) {
    let policies = cp.json(&["policy", "list"]);
    let baseline = policies["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "block-high-risk-agents")
        .expect("the managed baseline policy");
    cp.ctl(&[
        "policy",
        "set-state",
        baseline["id"].as_str().unwrap(),
        "enabled",
    ]);
    assert!(
        connects(daemon, AGENT, "127.0.0.1", granted_port),
        "not blocked at risk none"
    );
    let script = format!(
        "cat {} >/dev/null; {} net tcp 127.0.0.2 {fresh_port} 1",
        secret.display(),
        helper().display()
    );
    let triggered = Instant::now();
    let output = daemon
        .launch(AGENT, &["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(output.status.success());
    wait_until("the control plane's block is in force", || {
        !connects(daemon, AGENT, "127.0.0.1", granted_port)
    });
    eprintln!(
        "secret read and new egress to the control plane's block in the kernel: {:?}",
        triggered.elapsed()
    );
}
