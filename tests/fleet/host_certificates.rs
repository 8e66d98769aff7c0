//! A host's own mTLS client certificate renews before it lapses (`RenewHostCertificate`), over
//! the connection agentd holds, so the decision watch stays up across renewals; the next
//! connection, after the first certificate has expired, presents the renewed one.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use agentd_tests::wait_until;

use crate::{ControlPlane, enrolled, register};

/// The host certificate lifetime of this test (the shortest `--host-cert-ttl` accepts).
const TTL: &str = "60s";

/// (serial, not-after in Unix seconds) of the client certificate agentd keeps.
fn kept_certificate(kept: &Path) -> (String, i64) {
    let credentials: serde_json::Value =
        serde_json::from_slice(&fs::read(kept).expect("host.json")).expect("JSON");
    let pem = credentials["certificate_pem"]
        .as_str()
        .expect("a certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    (
        cert.raw_serial_as_string(),
        cert.validity().not_after.timestamp(),
    )
}

fn unix_now() -> i64 {
    agentd_tests::unix_ms() / 1000
}

/// Polls `done` every 100 ms for up to `within`.
fn poll(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The control plane's audit log holds the renewal that issued `serial` to the host of `kept`.
fn assert_renewal_audited(cp: &ControlPlane, kept: &Path, serial: &str) {
    let host_id = {
        let credentials: serde_json::Value =
            serde_json::from_slice(&fs::read(kept).unwrap()).unwrap();
        credentials["host_id"].as_str().unwrap().to_owned()
    };
    let audit = cp.json(&[
        "audit",
        "list",
        "--target-type",
        "host",
        "--target-id",
        &host_id,
    ]);
    let renewals: Vec<&serde_json::Value> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["action"] == "RenewHostCertificate")
        .collect();
    assert!(
        renewals.iter().any(|event| event["currentJson"]
            .as_str()
            .is_some_and(|json| json.contains(&serial.replace(':', "")))),
        "the renewal is audited with its serial: {audit}"
    );
}

#[test]
fn a_host_renews_its_certificate_before_it_lapses_and_keeps_its_watch() {
    let agent = "renewing-agent";
    let mut cp = ControlPlane::start_serving_with(true, &["--host-cert-ttl", TTL]);
    register(&cp, agent);
    let ca = cp.ca_cert.clone().unwrap();
    let state = tempfile::tempdir().unwrap();
    let daemon = enrolled(
        &cp,
        agent,
        state.path(),
        &format!("ca_file = \"{}\"\n", ca.display()),
    );
    let kept = state.path().join("host.json");
    let (first_serial, first_expiry) = kept_certificate(&kept);
    assert!(
        first_expiry <= unix_now() + 61,
        "the enrolment certificate lives --host-cert-ttl"
    );
    wait_until("status names the certificate's expiry", || {
        daemon
            .status()
            .control_plane
            .is_some_and(|control| control.host_certificate_expires_at == Some(first_expiry))
    });

    // Renewed at half-life, before the first certificate lapses.
    poll(
        "a renewed certificate in host.json",
        Duration::from_secs(50),
        || kept_certificate(&kept).0 != first_serial,
    );
    let (renewed_serial, renewed_expiry) = kept_certificate(&kept);
    assert!(
        unix_now() < first_expiry,
        "renewed before the old one lapsed"
    );
    assert!(renewed_expiry > first_expiry);
    wait_until("status names the renewed certificate's expiry", || {
        daemon
            .status()
            .control_plane
            .and_then(|control| control.host_certificate_expires_at)
            .is_some_and(|expiry| expiry >= renewed_expiry)
    });
    assert_renewal_audited(&cp, &kept, &renewed_serial);

    // Past the first certificate's end, the watch that it opened still carries decisions.
    poll(
        "the first certificate lapses",
        Duration::from_secs(70),
        || unix_now() > first_expiry + 1,
    );
    let before = daemon.status().control_plane.unwrap().decision_version;
    let policy = cp.dir.path().join("renewal.yaml");
    fs::write(
        &policy,
        format!(
            "name: after-renewal\nstate: reportOnly\nassignments:\n  include:\n    agents: [{agent}]\n\
             controls:\n  network:\n    deny:\n      - cidr: 192.0.2.1/32\n"
        ),
    )
    .unwrap();
    cp.ctl(&["policy", "apply", policy.to_str().unwrap()]);
    wait_until("the new decision set arrives on the kept watch", || {
        daemon
            .status()
            .control_plane
            .is_some_and(|control| control.connected && control.decision_version > before)
    });
    let log = daemon.log();
    assert!(
        !log.contains("control plane unreachable"),
        "the watch never broke across renewals:\n{log}"
    );
    assert!(
        log.matches("renewed the host's client certificate").count() >= 2,
        "renewed again at the renewed certificate's half-life:\n{log}"
    );

    // A new connection presents the renewed certificate: the first one has expired.
    cp.restart();
    poll(
        "agentd noticed the restart",
        Duration::from_secs(30),
        || daemon.log().contains("control plane unreachable"),
    );
    wait_until("agentd is connected again", || {
        daemon
            .status()
            .control_plane
            .is_some_and(|control| control.connected && control.error.is_none())
    });
}
