//! The fleet tier: a real control plane (`agentd-control` on loopback, an `SQLite` database) and a real
//! agentd enforcing its Conditional Access decisions in the running kernel. Run with
//! `cargo xtask test --tier host`, which builds the binaries and names them in `AGENTD_BIN`,
//! `AGENTD_CONTROL_BIN` and `AGENTCTL_BIN`.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::Instant,
};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

mod agent_ids;
mod credentials;
mod host_certificates;
mod rotation;
mod spiffe_pinning;

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
    /// With TLS: the control-plane CA certificate.
    ca_cert: Option<PathBuf>,
    /// `agentd-control serve`'s arguments, to start it again.
    serve_args: Vec<String>,
}

impl ControlPlane {
    fn start() -> Self {
        Self::start_serving(false)
    }

    /// With `tls`: serves TLS on 127.0.0.1 with a certificate from its CA, and requires host
    /// calls to present the host's client certificate (mTLS).
    fn start_serving(tls: bool) -> Self {
        Self::start_serving_with(tls, &[])
    }

    /// The same, with more `serve` arguments.
    fn start_serving_with(tls: bool, extra: &[&str]) -> Self {
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
        let ca_cert = tls.then(|| {
            let ca = Command::new(bin("AGENTD_CONTROL_BIN"))
                .args(["ca-cert", "--database", &database])
                .output()
                .expect("agentd-control ca-cert");
            assert!(ca.status.success(), "{ca:?}");
            let path = dir.path().join("ca.crt");
            fs::write(&path, ca.stdout).unwrap();
            path
        });
        let mut serve_args: Vec<String> = ["serve", "--listen", &format!("127.0.0.1:{port}")]
            .iter()
            .chain(&["--database", &database, "--decision-recheck", "1s"])
            .map(|arg| (*arg).to_owned())
            .collect();
        if tls {
            serve_args.extend(["--tls-name".to_owned(), "127.0.0.1".to_owned()]);
        }
        serve_args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let server = spawn_server(dir.path(), &serve_args, port);
        Self {
            dir,
            server,
            url: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
            token,
            ca_cert,
            serve_args,
        }
    }

    /// Stops the server with SIGTERM, as `systemctl restart` would, and starts it again on
    /// the same port and database.
    fn restart(&mut self) {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.server.id().to_string()])
            .status()
            .expect("kill");
        assert!(stopped.success());
        let status = self.server.wait().expect("the server's exit");
        assert!(
            status.success(),
            "SIGTERM ends the server cleanly: {status:?}"
        );
        let port = self.url.rsplit(':').next().unwrap().parse().unwrap();
        self.server = spawn_server(self.dir.path(), &self.serve_args, port);
    }

    /// `agentctl ARGS` with `token` and, when given, a client certificate and key.
    fn ctl_as(&self, token: &str, client: Option<(&Path, &Path)>, args: &[&str]) -> Output {
        let mut command = Command::new(bin("AGENTCTL_BIN"));
        command
            .args(args)
            .env("AGENTD_SERVER", &self.url)
            .env("AGENTD_TOKEN", token);
        if let Some(ca) = &self.ca_cert {
            command.env("AGENTD_CA_CERT", ca);
        }
        if let Some((cert, key)) = client {
            command
                .env("AGENTD_CLIENT_CERT", cert)
                .env("AGENTD_CLIENT_KEY", key);
        }
        command.output().expect("agentctl")
    }

    /// `agentctl ARGS` as the admin; fails the test unless it succeeds.
    fn ctl(&self, args: &[&str]) -> Output {
        let output = self.ctl_as(&self.token, None, args);
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

/// `agentd-control ARGS`, logging to `dir/server.log`, once it listens on `port`.
fn spawn_server(dir: &Path, args: &[String], port: u16) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let server = Command::new(bin("AGENTD_CONTROL_BIN"))
        .args(args)
        .stderr(log)
        .spawn()
        .expect("agentd-control serve");
    wait_until("the control plane listens", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    server
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = &self.dir;
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
        daemon.connects(&helper(), AGENT, "127.0.0.1", granted_port),
        "granted"
    );
    assert!(
        !daemon.connects(&helper(), AGENT, "127.0.0.1", later_port),
        "not granted (yet)"
    );
    // The control plane shows the version this host applied (the host's report of its
    // running agent may bring a newer set meanwhile: compare with what the host has now).
    wait_until("the host's acknowledgement is recorded", || {
        let applied = daemon.status().control_plane.unwrap().decision_version;
        cp.json(&["host", "list"])["hosts"][0]["appliedDecisionVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            == Some(applied)
    });
    let version = daemon.status().control_plane.unwrap().decision_version;

    // A policy change reaches the kernel.
    let (lo, hi) = (granted_port.min(later_port), granted_port.max(later_port));
    fs::write(&file, policy(&format!("{lo}-{hi}"))).unwrap();
    let changed = Instant::now();
    cp.ctl(&["policy", "apply", file.to_str().unwrap()]);
    wait_until("the new grant is in force", || {
        daemon.connects(&helper(), AGENT, "127.0.0.1", later_port)
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

/// `systemctl restart agentd-control` while a host watches its decisions: the server stops
/// within its drain, agentd reconnects by itself and resumes from the version it has, and the
/// next policy change reaches the kernel and is acknowledged.
#[test]
fn a_host_resumes_its_watch_after_the_control_plane_restarts() {
    let mut cp = ControlPlane::start();
    register(&cp, AGENT);
    let granted_port = serve("127.0.0.1:0");
    let later_port = serve("127.0.0.1:0");
    let file = cp.dir.path().join("policy.yaml");
    fs::write(&file, policy(&granted_port.to_string())).unwrap();
    cp.ctl(&["policy", "apply", file.to_str().unwrap()]);
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled(&cp, AGENT, state.path(), "");
    let _launched = launch_cgroup(AGENT);
    assert!(!daemon.connects(&helper(), AGENT, "127.0.0.1", later_port));
    let before = daemon.status().control_plane.unwrap().decision_version;

    cp.restart();
    let (lo, hi) = (granted_port.min(later_port), granted_port.max(later_port));
    fs::write(&file, policy(&format!("{lo}-{hi}"))).unwrap();
    cp.ctl(&["policy", "apply", file.to_str().unwrap()]);
    wait_until("the change made after the restart is in force", || {
        daemon.connects(&helper(), AGENT, "127.0.0.1", later_port)
    });
    wait_until("the new version's acknowledgement is recorded", || {
        let applied = daemon.status().control_plane.unwrap();
        applied.connected
            && applied.decision_version > before
            && cp.json(&["host", "list"])["hosts"][0]["appliedDecisionVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                == Some(applied.decision_version)
    });
    assert!(
        daemon.connects(&helper(), AGENT, "127.0.0.1", granted_port),
        "the grant from before the restart still holds"
    );
}

/// The baseline "block high-risk agents" switched on; the agent reads a secret and connects
/// somewhere new; the detection goes to the control plane, which raises the agent's risk and
/// pushes a block that the kernel enforces.
fn risk_loop(
    cp: &ControlPlane,
    daemon: &Daemon,
    granted_port: u16,
    fresh_port: u16,
    secret: &Path,
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
        daemon.connects(&helper(), AGENT, "127.0.0.1", granted_port),
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
        !daemon.connects(&helper(), AGENT, "127.0.0.1", granted_port)
    });
    eprintln!(
        "secret read and new egress to the control plane's block in the kernel: {:?}",
        triggered.elapsed()
    );
}

/// Registers and enables `agent` (blueprint `fleet`, created by the first registration) and
/// returns its id.
fn register(cp: &ControlPlane, agent: &str) -> String {
    let blueprint = cp.ctl_as(&cp.token, None, &["blueprint", "create", "fleet"]);
    assert!(
        blueprint.status.success()
            || String::from_utf8_lossy(&blueprint.stderr).contains("already exists"),
        "agentctl blueprint create: {}",
        String::from_utf8_lossy(&blueprint.stderr)
    );
    let created = cp.json(&[
        "agent",
        "create",
        agent,
        "--blueprint",
        "fleet",
        "--sponsor",
        "alice@example.com",
    ]);
    let id = created["agent"]["id"].as_str().unwrap().to_owned();
    cp.ctl(&["agent", "enable", &id]);
    id
}

/// agentd enrolled with `cp` through a new join token, running `agent`, with more
/// `[control_plane]` settings in `extra`; returns it once its first decisions are in force.
fn enrolled(cp: &ControlPlane, agent: &str, state: &Path, extra: &str) -> Daemon {
    enrolled_agents(cp, &[agent], state, extra)
}

/// The same, running every one of `agents`.
fn enrolled_agents(cp: &ControlPlane, agents: &[&str], state: &Path, extra: &str) -> Daemon {
    let join = cp.json(&["host", "join-token"]);
    let join = join["token"].as_str().unwrap();
    let policy = agents
        .iter()
        .map(|agent| format!("[[agent]]\nname = \"{agent}\"\n"))
        .collect::<Vec<_>>()
        .concat();
    let daemon = Daemon::start_with_config(
        &policy,
        &format!(
            "[control_plane]\nurl = \"{}\"\njoin_token = \"{join}\"\nstate_dir = \"{}\"\nheartbeat_secs = 1\n{extra}",
            cp.url,
            state.display()
        ),
    );
    wait_until("the first decisions are in force", || {
        daemon
            .status()
            .control_plane
            .is_some_and(|control| control.connected && control.decision_version > 0)
    });
    daemon
}

/// Issue 8's acceptance: "A report-only policy logs 'would block' and allows". A report-only
/// policy denies a CIDR: the agent's connect goes through and the kernel reports that the policy
/// would have denied it. An enabled policy's file control reaches the kernel too: enforced where
/// BPF LSM works, reported as observed would-deny by the open tracepoints where it does not.
#[test]
fn a_report_only_policy_logs_would_block_and_allows() {
    let agent = "report-only-agent";
    let cp = ControlPlane::start();
    register(&cp, agent);
    let watched_port = serve("127.0.0.1:0");
    let other_port = serve("127.0.0.1:0");
    let files = tempfile::tempdir().unwrap();
    let ledger = files.path().join("ledger");
    fs::write(&ledger, "balance").unwrap();
    let report_only = cp.dir.path().join("report-only.yaml");
    fs::write(
        &report_only,
        format!(
            "name: would-deny-loopback\nstate: reportOnly\nassignments:\n  include:\n    agents: [{agent}]\n\
             controls:\n  network:\n    deny:\n      - cidr: 127.0.0.1/32\n        ports: \"{watched_port}\"\n"
        ),
    )
    .unwrap();
    let policy = cp.json(&["policy", "apply", report_only.to_str().unwrap()]);
    let policy_id = policy["policy"]["id"]
        .as_str()
        .expect("the policy's id")
        .to_owned();
    let file_policy = cp.dir.path().join("files.yaml");
    fs::write(
        &file_policy,
        format!(
            "name: ledger-files\nstate: enabled\nassignments:\n  include:\n    agents: [{agent}]\n\
             controls:\n  files:\n    - path: {}\n      access: [read]\n      action: deny\n",
            ledger.display()
        ),
    )
    .unwrap();
    cp.ctl(&["policy", "apply", file_policy.to_str().unwrap()]);

    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled(&cp, agent, state.path(), "");
    let _launched = launch_cgroup(agent);
    wait_until("the decision with the file control is in force", || {
        let status = daemon.status();
        let control = status.control_plane.unwrap();
        control.decision_version > 0
            && fs::read_to_string(state.path().join("decisions.json"))
                .is_ok_and(|kept| kept.contains("ledger"))
    });

    assert!(
        daemon.connects(&helper(), agent, "127.0.0.1", watched_port),
        "report-only: the connect goes through"
    );
    assert!(daemon.connects(&helper(), agent, "127.0.0.1", other_port));
    let mut seen = Vec::new();
    let would = |e: &serde_json::Value| {
        e["kind"] == "net" && e["would_deny"] == true && e["port"] == watched_port
    };
    wait_until("the would-block event", || daemon.saw(&mut seen, would));
    let event = seen.iter().find(|e| would(e)).unwrap();
    eprintln!("would block: {event}");
    assert_eq!(event["verdict"], "allow", "{event}");
    assert_eq!(event["decided_by"], "conditional_access", "{event}");
    assert_eq!(
        event["rule"],
        format!("conditional-access/{policy_id}"),
        "{event}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| e["kind"] == "net" && e["port"] == other_port && e["would_deny"] == true),
        "only the denied destination is reported"
    );

    let enforced = daemon.status().file_enforcement == "available";
    let read = daemon
        .launch(agent, &["cat", ledger.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(read.status.success(), !enforced, "{read:?}");
    let hit =
        |e: &serde_json::Value| e["kind"] == "file" && e["decided_by"] == "conditional_access";
    wait_until("the file control's event", || daemon.saw(&mut seen, hit));
    let event = seen.iter().find(|e| hit(e)).unwrap();
    assert_eq!(event["would_deny"], !enforced, "{event}");
}

/// mTLS: the control plane serves TLS and requires host client certificates; agentd enrols
/// (verifying the server against the CA file), then holds its decision watch with the
/// certificate it was issued. A host call without a certificate, or with another host's, is
/// refused.
#[test]
fn hosts_watch_their_decisions_with_their_client_certificate() {
    let agent = "mtls-agent";
    let cp = ControlPlane::start_serving(true);
    register(&cp, agent);
    let ca = cp.ca_cert.clone().unwrap();
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled(
        &cp,
        agent,
        state.path(),
        &format!("ca_file = \"{}\"\n", ca.display()),
    );
    let version = daemon.status().control_plane.unwrap().decision_version;
    wait_until("the host's acknowledgement is recorded", || {
        cp.json(&["host", "list"])["hosts"][0]["appliedDecisionVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            == Some(version)
    });

    // The credentials agentd keeps: private, with the certificate the CA signed for this host.
    let kept = state.path().join("host.json");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let credentials: serde_json::Value = serde_json::from_slice(&fs::read(&kept).unwrap()).unwrap();
    let host_id = credentials["host_id"].as_str().unwrap();
    let host_token = credentials["host_token"].as_str().unwrap();
    assert!(
        credentials["certificate_pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // The same host token without a client certificate is refused.
    let bare = cp.ctl_as(host_token, None, &["host", "heartbeat"]);
    assert!(!bare.status.success(), "{bare:?}");
    let said = String::from_utf8_lossy(&bare.stderr);
    assert!(said.contains("client certificate"), "{said}");

    // Another host's certificate does not name this host.
    let other = cp.dir.path().join("other-host");
    let join = cp.json(&["host", "join-token"]);
    cp.ctl(&[
        "host",
        "enroll",
        "--join-token",
        join["token"].as_str().unwrap(),
        "--hostname",
        "other",
        "--dir",
        other.to_str().unwrap(),
    ]);
    let (cert, key) = (other.join("host.crt"), other.join("host.key"));
    let borrowed = cp.ctl_as(host_token, Some((&cert, &key)), &["host", "heartbeat"]);
    assert!(!borrowed.status.success(), "{borrowed:?}");
    let said = String::from_utf8_lossy(&borrowed.stderr);
    assert!(said.contains(host_id), "{said}");
    // ... and works for the host it names.
    let own = fs::read_to_string(other.join("host-token")).unwrap();
    let fine = cp.ctl_as(own.trim(), Some((&cert, &key)), &["host", "heartbeat"]);
    assert!(fine.status.success(), "{fine:?}");

    // agentd's own watch is still up.
    assert!(daemon.status().control_plane.unwrap().connected);
}
