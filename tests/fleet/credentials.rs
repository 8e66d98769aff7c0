//! Issue 19 on a real host: the SPIFFE Workload API, attested by the kernel tag, with clients
//! that no one here wrote (the `spiffe` crate's, and py-spiffe's for JWT-SVIDs).

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use agentd_tests::{launch_cgroup, wait_until};

use crate::{ControlPlane, enrolled, enrolled_agents, register};

pub(crate) fn spiffe_fetch() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spiffe-fetch"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Issue 19: the SPIFFE Workload API on the host, attested by the kernel tag. The `spiffe`
/// crate's client, run inside the agent, gets the agent's X.509-SVID (its SPIFFE ID by the
/// registry's id, its key made on this host, signed by the control plane); an untagged
/// process gets none; and when the agent is disabled, the open stream ends and a new fetch is
/// refused.
#[test]
fn a_tagged_process_gets_its_agents_x509_svid_and_loses_it_when_the_agent_is_disabled() {
    use std::io::{BufRead as _, BufReader};
    let agent = "svid-agent";
    let cp = ControlPlane::start();
    let agent_id = register(&cp, agent);
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled(&cp, agent, state.path(), "");
    let _launched = launch_cgroup(agent);
    let socket = daemon.identity.with_file_name("spiffe.sock");
    let endpoint = format!("unix://{}", socket.display());

    let untagged = Command::new(spiffe_fetch())
        .args(["x509", &endpoint])
        .output()
        .expect("spiffe-fetch");
    let said = stdout(&untagged);
    assert!(
        said.starts_with("error=") && said.contains("not an agent"),
        "an untagged caller: {said}"
    );

    // A long-lived process of the agent, so that the host reports it running.
    let mut keeper = daemon
        .launch(agent, &["sleep", "120"])
        .spawn()
        .expect("a process of the agent");
    let expected =
        format!("spiffe_id=spiffe://agentd.internal/agent/{agent_id} chain=1 bundle_authorities=1");
    let last = first_x509_fetch(&daemon, agent, &endpoint);
    assert_eq!(last, expected, "agentd's log:\n{}", daemon.log());

    agentd_svid_inside_and_outside(&daemon, agent, &agent_id, &socket);

    let mut watcher = daemon
        .launch(
            agent,
            &[spiffe_fetch().to_str().unwrap(), "watch", &endpoint],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spiffe-fetch watch in the agent");
    // Read on a thread, so that a stream that never ends fails the test instead of hanging it.
    let (line_tx, lines) = std::sync::mpsc::channel();
    let out = watcher.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(std::time::Duration::from_mins(1))
            .unwrap_or_else(|_| panic!("{what}: no line from spiffe-fetch watch within 60 s"))
    };
    let first = next("a first message");
    assert!(
        first.starts_with(&format!(
            "svid=spiffe://agentd.internal/agent/{agent_id} serial="
        )),
        "{first}"
    );

    cp.ctl(&["agent", "disable", &agent_id, "--reason", "credential test"]);
    let ended = next("the end of the stream");
    assert!(
        ended.starts_with("ended=") && ended.contains("may not hold a credential now"),
        "the open stream after the agent was disabled: {ended}"
    );
    let refused = daemon
        .launch(
            agent,
            &[spiffe_fetch().to_str().unwrap(), "x509", &endpoint],
        )
        .output()
        .expect("spiffe-fetch in the agent");
    let said = stdout(&refused);
    assert!(
        said.starts_with("error=") && said.contains("may not hold a credential now"),
        "a fetch after the agent was disabled: {said}"
    );
    let _ = watcher.wait();
    let _ = keeper.kill();
    let _ = keeper.wait();
}

/// What `spiffe-fetch x509` prints inside `agent` once the control plane knows the agent runs
/// here: until the host's report reaches it, the signing is refused, and this asks again.
pub(crate) fn first_x509_fetch(
    daemon: &agentd_tests::Daemon,
    agent: &str,
    endpoint: &str,
) -> String {
    let mut last = String::new();
    wait_until("the agent's X.509-SVID", || {
        let fetched = daemon
            .launch(agent, &[spiffe_fetch().to_str().unwrap(), "x509", endpoint])
            .output()
            .expect("spiffe-fetch in the agent");
        last = stdout(&fetched);
        !last.contains("has not reported it running")
    });
    last
}

/// What py-spiffe (the SPIFFE project's Python client) does as a workload that received a
/// token: the JWT bundles from its Workload API, a local check of the token against them, and
/// the Workload API's own `ValidateJWTSVID`. Prints `local=ID api=ID`.
const PY_SPIFFE_VALIDATE: &str = r#"
import sys
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient
endpoint, audience, token = sys.argv[1:4]
with WorkloadApiClient(endpoint, default_timeout=10) as client:
    bundles = client.fetch_jwt_bundles()
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain("agentd.internal"))
    local = JwtSvid.parse_and_validate(token, bundle, {audience})
    remote = client.validate_jwt_svid(token, audience)
    print(f"local={local.spiffe_id} api={remote.spiffe_id}")
"#;

/// A raw gRPC call through py-spiffe's generated stubs, without `workload.spiffe.io`. Prints
/// the status code name and its message.
const RAW_WITHOUT_HEADER: &str = r#"
import sys, grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
try:
    stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["billing"]), timeout=10)
    print("answered")
except grpc.RpcError as err:
    print(f"{err.code().name} {err.details()}")
"#;

fn python() -> String {
    std::env::var("AGENTD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AGENTD_TEST_PYTHON is not set: run this tier through `cargo xtask test` (its \
             virtual environment has py-spiffe)"
        )
    })
}

/// Issue 19: JWT-SVIDs from the Workload API. An agent fetches one for an audience with the
/// `spiffe` crate's client; another agent on the host validates it through the Workload API
/// (the crate's client, and py-spiffe's, which also checks it against the JWT bundle itself);
/// an untagged process gets none; a token is refused for another audience; a disabled agent
/// gets no new one.
#[test]
fn an_agents_jwt_svid_is_fetched_for_an_audience_and_another_agent_validates_it() {
    let (agent, peer) = ("jwt-agent", "jwt-peer");
    let cp = ControlPlane::start();
    let agent_id = register(&cp, agent);
    register(&cp, peer);
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled_agents(&cp, &[agent, peer], state.path(), "");
    let (_agent_cgroup, _peer_cgroup) = (launch_cgroup(agent), launch_cgroup(peer));
    let socket = daemon.identity.with_file_name("spiffe.sock");
    let endpoint = format!("unix://{}", socket.display());
    let fetch = bin_path_str();

    let untagged = Command::new(spiffe_fetch())
        .args(["jwt", &endpoint, "billing"])
        .output()
        .expect("spiffe-fetch");
    let said = stdout(&untagged);
    assert!(
        said.starts_with("error=") && said.contains("not an agent"),
        "an untagged caller: {said}"
    );

    // Long-lived processes of both agents, so that the host reports them running.
    let mut keepers: Vec<_> = [agent, peer]
        .iter()
        .map(|name| {
            daemon
                .launch(name, &["sleep", "120"])
                .spawn()
                .expect("a process of the agent")
        })
        .collect();
    let in_agent = |name: &str, args: &[&str]| {
        let mut all = vec![fetch.as_str()];
        all.extend_from_slice(args);
        stdout(
            &daemon
                .launch(name, &all)
                .output()
                .expect("spiffe-fetch in an agent"),
        )
    };
    let subject = format!("spiffe://agentd.internal/agent/{agent_id}");
    let mut last = String::new();
    wait_until("the agent's JWT-SVID", || {
        last = in_agent(agent, &["jwt", &endpoint, "billing"]);
        // Until the host's report of the agent reaches the control plane, it refuses.
        !last.contains("has not reported it running")
    });
    let token = last
        .strip_prefix(&format!("spiffe_id={subject} token="))
        .unwrap_or_else(|| panic!("{last}\nagentd's log:\n{}", daemon.log()))
        .to_owned();

    let mut validated = String::new();
    wait_until("the peer validates the token", || {
        validated = in_agent(peer, &["validate", &endpoint, "billing", &token]);
        !validated.contains("has not reported it running")
    });
    assert_eq!(validated, format!("valid={subject}"));
    let wrong = in_agent(peer, &["validate", &endpoint, "payroll", &token]);
    assert!(
        wrong.starts_with("error=") && wrong.contains("not valid"),
        "another audience: {wrong}"
    );
    assert_eq!(
        in_agent(peer, &["jwt-bundles", &endpoint]),
        "trust_domain=agentd.internal keys=1"
    );
    let python = python();
    let py = daemon
        .launch(
            peer,
            &[
                &python,
                "-c",
                PY_SPIFFE_VALIDATE,
                &endpoint,
                "billing",
                &token,
            ],
        )
        .output()
        .expect("py-spiffe in the peer");
    assert_eq!(
        stdout(&py),
        format!("local={subject} api={subject}"),
        "py-spiffe: {}",
        String::from_utf8_lossy(&py.stderr)
    );

    header_and_quarantine_refusals(&daemon, (agent, peer), &endpoint, &subject);

    cp.ctl(&["agent", "disable", &agent_id, "--reason", "credential test"]);
    refused_once_disabled(|| in_agent(agent, &["jwt", &endpoint, "search"]));
    for keeper in &mut keepers {
        let _ = keeper.kill();
        let _ = keeper.wait();
    }
}

/// After a disable: refused by the control plane until the block decision reaches agentd,
/// then by agentd itself without asking. Either way the agent gets no token.
fn refused_once_disabled(fetch: impl Fn() -> String) {
    let mut refused = String::new();
    wait_until("the disabled agent gets no JWT-SVID", || {
        refused = fetch();
        refused.starts_with("error=")
    });
    assert!(
        refused.starts_with("error=permission denied")
            && (refused.contains("may not hold a credential now")
                || refused.contains("it is disabled")),
        "a fetch after the agent was disabled: {refused}"
    );
    wait_until("agentd itself refuses the disabled agent", || {
        refused = fetch();
        refused.contains("may not hold a credential now")
    });
    assert!(refused.starts_with("error=permission denied"), "{refused}");
}

/// A call without the security header is refused; a quarantined agent gets no token at once
/// and gets one again once released.
fn header_and_quarantine_refusals(
    daemon: &agentd_tests::Daemon,
    (agent, peer): (&str, &str),
    endpoint: &str,
    subject: &str,
) {
    let python = python();
    let fetch = bin_path_str();
    let in_agent = |name: &str, args: &[&str]| {
        let mut all = vec![fetch.as_str()];
        all.extend_from_slice(args);
        stdout(
            &daemon
                .launch(name, &all)
                .output()
                .expect("spiffe-fetch in an agent"),
        )
    };
    // Without the specification's security header: refused, whoever asks.
    let bare = daemon
        .launch(peer, &[python.as_str(), "-c", RAW_WITHOUT_HEADER, endpoint])
        .output()
        .expect("a call without the header");
    let said = stdout(&bare);
    assert!(
        said.starts_with("INVALID_ARGUMENT") && said.contains("security header missing"),
        "{said} {}",
        String::from_utf8_lossy(&bare.stderr)
    );

    // Quarantined on this host: no token, at once (no control-plane round trip).
    let quarantine = |release: bool| {
        let mut command = Command::new(agentd_tests::agentd_bin());
        command
            .args(["quarantine", agent, "--socket"])
            .arg(daemon.admin_socket());
        if release {
            command.arg("--release");
        }
        let output = command.output().expect("agentd quarantine");
        assert!(output.status.success(), "{output:?}");
    };
    quarantine(false);
    let said = in_agent(agent, &["jwt", endpoint, "billing"]);
    assert!(
        said.starts_with("error=") && said.contains("it is quarantined"),
        "a quarantined agent: {said}"
    );
    quarantine(true);
    assert!(
        in_agent(agent, &["jwt", endpoint, "billing"]).starts_with(&format!("spiffe_id={subject}")),
        "released, it gets its token again"
    );
}

/// `agentd svid` asks as the process that runs it: inside the agent it prints the agent's
/// SVIDs, outside it fails with the reason; `agentd status` then counts what agentd holds.
fn agentd_svid_inside_and_outside(
    daemon: &agentd_tests::Daemon,
    agent: &str,
    agent_id: &str,
    socket: &std::path::Path,
) {
    let socket_arg = socket.display().to_string();
    let fetched = daemon
        .launch(
            agent,
            &[
                agentd_tests::agentd_bin().to_str().unwrap(),
                "svid",
                "--socket",
                &socket_arg,
                "--audience",
                "billing",
            ],
        )
        .output()
        .expect("agentd svid in the agent");
    let said = stdout(&fetched);
    assert!(
        said.starts_with(&format!(
            "spiffe_id: spiffe://agentd.internal/agent/{agent_id}\nx509-svid: serial "
        )) && said.contains("jwt-svid for billing: ey"),
        "{said}{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let outside = Command::new(agentd_tests::agentd_bin())
        .args(["svid", "--socket", &socket_arg])
        .output()
        .expect("agentd svid");
    assert!(
        !outside.status.success()
            && String::from_utf8_lossy(&outside.stderr).contains("not an agent"),
        "{outside:?}"
    );

    let held = daemon.status().svids;
    assert!(
        held.x509_svids == 1 && held.jwt_svids == 1 && held.x509_next_expiry.is_some(),
        "{held:?}"
    );
}

fn bin_path_str() -> String {
    spiffe_fetch().to_str().expect("a UTF-8 path").to_owned()
}

/// py-spiffe's X.509 fetch, as a workload would do it. Prints `spiffe_id=ID bundles=N`.
const PY_SPIFFE_X509: &str = r#"
import sys
from spiffe import WorkloadApiClient
with WorkloadApiClient(sys.argv[1], default_timeout=10) as client:
    svid = client.fetch_x509_svid()
    bundles = client.fetch_x509_bundles()
    print(f"spiffe_id={svid.spiffe_id} bundles={len(bundles.bundles)}")
"#;

/// The URI SANs of the first certificate in `pem` (the peer's leaf in `s_client -showcerts`).
fn first_uri_sans(pem: &str) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, prelude::*};
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let (_, block) = parse_x509_pem(&pem.as_bytes()[start..]).expect("PEM");
    let cert = block.parse_x509().expect("X.509");
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One TLS handshake between two agents' processes, both with the SVID files in their
/// directories: `openssl s_server` (requiring a client certificate that the bundle verifies)
/// in `server`, `openssl s_client` (verifying the server's against its bundle) in `client`.
/// Returns what each printed.
fn handshake(
    daemon: &agentd_tests::Daemon,
    (server, server_dir): (&str, &std::path::Path),
    (client, client_dir): (&str, &std::path::Path),
) -> (String, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let file = |dir: &std::path::Path, name: &str| dir.join(name).display().to_string();
    let mut listening = daemon
        .launch(
            server,
            &[
                "openssl",
                "s_server",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-naccept",
                "1",
                "-cert",
                &file(server_dir, "svid.pem"),
                "-key",
                &file(server_dir, "key.pem"),
                "-CAfile",
                &file(server_dir, "bundle.pem"),
                "-Verify",
                "1",
                "-verify_return_error",
            ],
        )
        // Kept open: s_server stops at the end of its input.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_server in the agent");
    let mut connected = String::new();
    wait_until("the TLS handshake", || {
        let output = daemon
            .launch(
                client,
                &[
                    "openssl",
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-cert",
                    &file(client_dir, "svid.pem"),
                    "-key",
                    &file(client_dir, "key.pem"),
                    "-CAfile",
                    &file(client_dir, "bundle.pem"),
                    "-verify_return_error",
                    "-showcerts",
                ],
            )
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client in the agent");
        connected = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Until the server listens, the connection is refused and does not count.
        !connected.contains("Connection refused") && !connected.contains("connect:errno")
    });
    drop(listening.stdin.take());
    let finished = listening.wait_with_output().expect("s_server's output");
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&finished.stdout),
            String::from_utf8_lossy(&finished.stderr)
        ),
        connected,
    )
}

/// A client whose certificate the bundle does not verify (self-signed) is refused by an
/// agent's `s_server`.
fn a_stranger_is_refused(
    daemon: &agentd_tests::Daemon,
    server: (&str, &std::path::Path),
    client: &str,
    bundle: &std::path::Path,
) {
    let stranger = tempfile::tempdir().unwrap();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=stranger",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(stranger.path().join("key.pem"))
        .arg("-out")
        .arg(stranger.path().join("svid.pem"))
        .output()
        .expect("openssl req");
    assert!(made.status.success(), "{made:?}");
    std::fs::copy(bundle, stranger.path().join("bundle.pem")).unwrap();
    let (server_said, _) = handshake(daemon, server, (client, stranger.path()));
    assert!(
        server_said.to_lowercase().contains("verify error")
            || server_said.contains("unable to get"),
        "a stranger's certificate is refused: {server_said}"
    );
}

/// Issue 19: two agents complete mutual TLS with their X.509-SVIDs, each checking the other's
/// SPIFFE ID in the URI SAN; a certificate the bundle does not verify is refused; and py-spiffe
/// fetches an X.509-SVID over the same Workload API.
#[test]
fn two_agents_complete_mutual_tls_with_their_x509_svids() {
    let (alpha, beta) = ("tls-alpha", "tls-beta");
    let cp = ControlPlane::start();
    let alpha_id = register(&cp, alpha);
    let beta_id = register(&cp, beta);
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled_agents(&cp, &[alpha, beta], state.path(), "");
    let (_alpha_cgroup, _beta_cgroup) = (launch_cgroup(alpha), launch_cgroup(beta));
    let endpoint = format!(
        "unix://{}",
        daemon.identity.with_file_name("spiffe.sock").display()
    );
    let mut keepers: Vec<_> = [alpha, beta]
        .iter()
        .map(|name| {
            daemon
                .launch(name, &["sleep", "120"])
                .spawn()
                .expect("a keeper")
        })
        .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let fetch = bin_path_str();
    for ((name, id), dir) in [(alpha, &alpha_id), (beta, &beta_id)]
        .into_iter()
        .zip(&dirs)
    {
        let dir_arg = dir.path().display().to_string();
        let mut said = String::new();
        wait_until("the agent's SVID files", || {
            said = stdout(
                &daemon
                    .launch(name, &[&fetch, "x509-files", &endpoint, &dir_arg])
                    .output()
                    .expect("spiffe-fetch"),
            );
            !said.contains("has not reported it running")
        });
        assert_eq!(
            said,
            format!("spiffe_id=spiffe://agentd.internal/agent/{id}")
        );
    }

    let python = python();
    let py = daemon
        .launch(alpha, &[&python, "-c", PY_SPIFFE_X509, &endpoint])
        .output()
        .expect("py-spiffe in the agent");
    assert_eq!(
        stdout(&py),
        format!("spiffe_id=spiffe://agentd.internal/agent/{alpha_id} bundles=1"),
        "py-spiffe: {}",
        String::from_utf8_lossy(&py.stderr)
    );

    for ((server, server_id, server_dir), (client, client_dir)) in [
        ((alpha, &alpha_id, dirs[0].path()), (beta, dirs[1].path())),
        ((beta, &beta_id, dirs[1].path()), (alpha, dirs[0].path())),
    ] {
        let (served, connected) = handshake(&daemon, (server, server_dir), (client, client_dir));
        assert!(
            connected.contains("Verify return code: 0 (ok)"),
            "{client} → {server}: {connected}"
        );
        assert_eq!(
            first_uri_sans(&connected),
            vec![format!("spiffe://agentd.internal/agent/{server_id}")],
            "the client sees the server agent's SPIFFE ID"
        );
        assert!(
            served.contains("depth=0") && !served.to_lowercase().contains("error"),
            "the server verified the client's SVID: {served}"
        );
    }

    // A certificate the bundle does not verify: refused by the server.
    a_stranger_is_refused(
        &daemon,
        (alpha, dirs[0].path()),
        beta,
        &dirs[1].path().join("bundle.pem"),
    );
    for keeper in &mut keepers {
        let _ = keeper.kill();
        let _ = keeper.wait();
    }
}
