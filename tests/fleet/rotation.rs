//! X.509-SVID rotation on an open `FetchX509SVID` stream: with a short lifetime the client
//! receives the renewed SVID before the old one expires, on the same stream, and a block
//! decision ends the stream within a second. A CA rotation reaches open `FetchX509Bundles`
//! streams at the next heartbeat.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

use crate::{ControlPlane, enrolled, register};

/// `spiffe-fetch watch` inside `agent`, its lines read on a thread so that a stream that never
/// ends fails the test instead of hanging it.
fn watch(daemon: &Daemon, agent: &str, endpoint: &str) -> (Child, mpsc::Receiver<String>) {
    watch_with(daemon, agent, "watch", endpoint)
}

/// `spiffe-fetch MODE ENDPOINT` inside `agent`, as [`watch`].
fn watch_with(
    daemon: &Daemon,
    agent: &str,
    mode: &str,
    endpoint: &str,
) -> (Child, mpsc::Receiver<String>) {
    let mut watcher = daemon
        .launch(
            agent,
            &[
                super::credentials::spiffe_fetch().to_str().unwrap(),
                mode,
                endpoint,
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spiffe-fetch watch in the agent");
    let (line_tx, lines) = mpsc::channel();
    let out = watcher.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    (watcher, lines)
}

/// (serial, `not_after`) of a `svid=... serial=HEX not_after=UNIX` line.
fn svid_of(line: &str) -> (String, i64) {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .to_owned()
    };
    (
        field("serial="),
        field("not_after=").parse().expect("a Unix time"),
    )
}

#[test]
fn an_open_stream_receives_the_rotated_svid_before_the_old_one_expires_and_ends_at_a_block() {
    let agent = "rotating-agent";
    let cp = ControlPlane::start_serving_with(false, &["--x509-svid-ttl", "2m"]);
    let agent_id = register(&cp, agent);
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled(&cp, agent, state.path(), "");
    let _launched = launch_cgroup(agent);
    let socket = daemon.identity.with_file_name("spiffe.sock");
    let endpoint = format!("unix://{}", socket.display());
    // A long-lived process of the agent, so that the host reports it running.
    let mut keeper = daemon
        .launch(agent, &["sleep", "300"])
        .spawn()
        .expect("a process of the agent");
    let prefix = format!("svid=spiffe://agentd.internal/agent/{agent_id} serial=");
    let (mut watcher, lines, first) = loop {
        // Until the host's report of the agent reaches the control plane, the stream ends at
        // once with the refusal; then it stays open.
        let (mut watcher, lines) = watch(&daemon, agent, &endpoint);
        let first = lines
            .recv_timeout(Duration::from_mins(1))
            .expect("a first line from spiffe-fetch watch");
        if first.starts_with(&prefix) {
            break (watcher, lines, first);
        }
        assert!(first.contains("has not reported it running"), "{first}");
        let _ = watcher.wait();
        std::thread::sleep(Duration::from_millis(200));
    };
    let (first_serial, first_expiry) = svid_of(&first);

    // Rotated at half-life, on the same stream, before the first one expires.
    let second = lines
        .recv_timeout(Duration::from_secs(100))
        .expect("the rotated SVID on the open stream");
    assert!(second.starts_with(&prefix), "{second}");
    let (second_serial, second_expiry) = svid_of(&second);
    let now = agentd_tests::unix_ms() / 1000;
    assert_ne!(second_serial, first_serial);
    assert!(
        now < first_expiry,
        "received at {now}, the old one ends at {first_expiry}"
    );
    assert!(second_expiry > first_expiry);

    // A block ends the stream at once.
    let blocked = Instant::now();
    cp.ctl(&["agent", "disable", &agent_id, "--reason", "rotation test"]);
    let ended = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the end of the stream");
    let took = blocked.elapsed();
    eprintln!("the stream ended {took:?} after the disable");
    assert!(
        ended.starts_with("ended=") && ended.contains("may not hold a credential now"),
        "{ended}"
    );
    // The bound: the daemon wakes open streams when a decision set applies, instead of
    // leaving them to their one-second recheck (which alone took just over a second here).
    assert!(
        took < Duration::from_secs(1),
        "the stream ended {took:?} after the disable"
    );
    wait_until("spiffe-fetch exits", || {
        watcher.try_wait().is_ok_and(|status| status.is_some())
    });
    let _ = keeper.kill();
    let _ = keeper.wait();
}

/// Issue 19: "bundles rotate with the CA". An open `FetchX509Bundles` stream (the `spiffe`
/// crate's) receives the bundle with the new CA at the next heartbeat, long before the SVID's
/// half-life (30 min by default), and the bundle without it once the pending CA is retired.
#[test]
fn an_open_bundle_stream_receives_a_rotated_ca_at_the_next_heartbeat() {
    let agent = "bundle-watching-agent";
    let cp = ControlPlane::start();
    register(&cp, agent);
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled(&cp, agent, state.path(), "");
    let _launched = launch_cgroup(agent);
    let endpoint = format!(
        "unix://{}",
        daemon.identity.with_file_name("spiffe.sock").display()
    );
    let mut keeper = daemon
        .launch(agent, &["sleep", "300"])
        .spawn()
        .expect("a process of the agent");
    let one = "bundles trust_domain=agentd.internal authorities=1";
    let (mut watcher, lines) = loop {
        // Refused until the host's report of the agent reaches the control plane.
        let (mut watcher, lines) = watch_with(&daemon, agent, "watch-bundles", &endpoint);
        let first = lines
            .recv_timeout(Duration::from_mins(1))
            .expect("a first line from spiffe-fetch watch-bundles");
        if first == one {
            break (watcher, lines);
        }
        assert!(first.contains("has not reported it running"), "{first}");
        let _ = watcher.wait();
        std::thread::sleep(Duration::from_millis(200));
    };

    let rotated = Instant::now();
    let created = cp.json(&["ca", "rotate", "--activate-after", "1h"]);
    let pending = created["authority"]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let next = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("the rotated bundle on the open stream");
    eprintln!(
        "the new bundle arrived {:?} after the rotation",
        rotated.elapsed()
    );
    assert_eq!(
        next,
        "bundles trust_domain=agentd.internal authorities=2",
        "agentd's log:\n{}",
        daemon.log()
    );

    cp.ctl(&["ca", "retire", &pending]);
    let after = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("the bundle without the retired CA");
    assert_eq!(after, one);
    let _ = watcher.kill();
    let _ = watcher.wait();
    let _ = keeper.kill();
    let _ = keeper.wait();
}
