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

/// The CA certificates (PEM) in the trust bundle agentd keeps in `kept`.
fn kept_bundle(kept: &Path) -> String {
    let credentials: serde_json::Value =
        serde_json::from_slice(&fs::read(kept).expect("host.json")).expect("JSON");
    credentials["ca_certificate_pem"]
        .as_str()
        .expect("a bundle")
        .to_owned()
}

/// A CA rotation reaches a connected agentd with its heartbeats: it keeps the new bundle, and
/// once the new CA signs, a restarted control plane (presenting a certificate only the new CA
/// verifies) has agentd back without enrolling again, although its `ca_file` names only the
/// first CA. Retiring the first CA leaves agentd connected on a certificate from the new one.
#[test]
fn a_ca_rotation_reaches_agentd_before_the_server_certificate_changes() {
    let agent = "ca-rotating-agent";
    let mut cp = ControlPlane::start_serving_with(true, &["--host-cert-ttl", TTL]);
    register(&cp, agent);
    let state = tempfile::tempdir().unwrap();
    // agentd's own copy of the first CA: the file agentctl uses is replaced below.
    let first_ca = state.path().join("first-ca.crt");
    fs::copy(cp.ca_cert.as_ref().unwrap(), &first_ca).unwrap();
    let daemon = enrolled(
        &cp,
        agent,
        state.path(),
        &format!("ca_file = \"{}\"\n", first_ca.display()),
    );
    let kept = state.path().join("host.json");
    assert_eq!(kept_bundle(&kept).matches("BEGIN CERTIFICATE").count(), 1);

    let rotated = cp.json(&["ca", "rotate", "--activate-after", "4s"]);
    let new_id = rotated["authority"]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert_eq!(rotated["authority"]["state"], "CA_STATE_PENDING");
    let bundle = String::from_utf8(cp.ctl(&["ca", "bundle"]).stdout).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    poll(
        "agentd keeps the new bundle from a heartbeat",
        Duration::from_secs(15),
        || kept_bundle(&kept) == bundle,
    );
    assert!(
        daemon.log().contains("trust bundle changed"),
        "{}",
        daemon.log()
    );

    // After the activation, a restart has the server present a certificate from the new CA.
    let listed = cp.json(&["ca", "list"]);
    poll("the new CA signs", Duration::from_secs(10), || {
        cp.json(&["ca", "list"])["authorities"][1]["state"] == "CA_STATE_ACTIVE"
    });
    fs::write(cp.ca_cert.as_ref().unwrap(), &bundle).unwrap();
    cp.restart();
    poll(
        "agentd noticed the restart",
        Duration::from_secs(30),
        || daemon.log().contains("control plane unreachable"),
    );
    wait_until(
        "agentd is connected again to the new CA's server certificate",
        || {
            daemon
                .status()
                .control_plane
                .is_some_and(|control| control.connected && control.error.is_none())
        },
    );

    // The host's certificate renews (60 s lifetime) under the new CA; then the first CA can
    // go, with force (host certificates and SVIDs it signed may still be valid).
    poll(
        "a host certificate from the new CA",
        Duration::from_secs(45),
        || {
            let credentials: serde_json::Value =
                serde_json::from_slice(&fs::read(&kept).unwrap()).unwrap();
            let pem = credentials["certificate_pem"].as_str().unwrap_or_default();
            x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .ok()
                .and_then(|(_, pem)| {
                    let cert = pem.parse_x509().ok()?;
                    Some(cert.issuer().to_string().contains(&new_id))
                })
                .unwrap_or(false)
        },
    );
    let old_id = listed["authorities"][0]["id"].as_str().unwrap().to_owned();
    let refused = cp.ctl_as(&cp.token, None, &["ca", "retire", &old_id]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("may be valid until"),
        "{refused:?}"
    );
    cp.ctl(&["ca", "retire", &old_id, "--force"]);
    poll(
        "agentd keeps the bundle without the retired CA",
        Duration::from_secs(15),
        || kept_bundle(&kept).matches("BEGIN CERTIFICATE").count() == 1,
    );
    cp.restart();
    poll(
        "agentd noticed the second restart",
        Duration::from_secs(30),
        || daemon.log().matches("control plane unreachable").count() >= 2,
    );
    wait_until(
        "agentd is connected again on its certificate from the new CA",
        || {
            daemon
                .status()
                .control_plane
                .is_some_and(|control| control.connected && control.error.is_none())
        },
    );
}
