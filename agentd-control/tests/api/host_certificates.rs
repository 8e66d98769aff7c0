//! A host's own mTLS certificate (`HostService.RenewHostCertificate`): renewed over the
//! current one, for the same host and a new key, for the configured lifetime; audited; refused
//! for bad requests and for a revoked host.

use agentd_control::proto;
use tonic::{Code, transport::Identity};
use x509_parser::prelude::*;

use crate::support::{Backend, Clients, Fixture, assert_status, audit_events, enroll};

/// The host certificate lifetime this test configures (`--host-cert-ttl`).
const TTL: i64 = 600;

/// A CSR for a fresh key: (CSR PEM, key PEM, the key's SubjectPublicKeyInfo).
fn new_key() -> (String, String, Vec<u8>) {
    use rcgen::PublicKeyData as _;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(vec!["greedy.example".to_owned()])
        .expect("params")
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("PEM");
    (csr, key.serialize_pem(), key.subject_public_key_info())
}

/// (common name, lifetime in seconds, public key, serial) of a certificate PEM.
fn described(pem: &str) -> (String, i64, Vec<u8>, String) {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let validity = cert.validity();
    (
        common_name,
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        cert.public_key().raw.to_vec(),
        cert.raw_serial_as_string().replace(':', ""),
    )
}

async fn renew(
    host: &Clients,
    csr_pem: &str,
) -> Result<proto::RenewHostCertificateResponse, tonic::Status> {
    host.host()
        .renew_host_certificate(proto::RenewHostCertificateRequest {
            csr_pem: csr_pem.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn over(fixture: &Fixture, certificate_pem: &str, key_pem: &str, token: &str) -> Clients {
    let channel = fixture
        .channel_with(Some(Identity::from_pem(certificate_pem, key_pem)))
        .await
        .expect("mTLS connect");
    Clients::new(channel, Some(token))
}

pub async fn a_host_renews_its_certificate_over_the_current_one_and_a_revoked_host_cannot(
    backend: Backend,
) {
    let fixture = Fixture::start_with_options(&backend, true, |options| {
        options.credentials.host_cert_ttl = TTL;
    })
    .await;
    let admin = fixture.admin().await;
    let (csr, key, _) = new_key();
    let host = enroll(&fixture, "renewing-1", &csr).await;
    let (name, lifetime, _, first_serial) = described(&host.certificate_pem);
    assert_eq!(name, host.host_id);
    assert_eq!(
        lifetime,
        TTL + 60,
        "--host-cert-ttl, back-dated by a minute"
    );
    let first = over(&fixture, &host.certificate_pem, &key, &host.host_token).await;

    // Renewed over the current certificate: the same host, the new key, a new serial.
    let (csr, new_key_pem, new_public_key) = new_key();
    let renewed = renew(&first, &csr).await.expect("RenewHostCertificate");
    let (name, lifetime, public_key, serial) = described(&renewed.certificate_pem);
    assert_eq!(
        name, host.host_id,
        "the same host, whatever the CSR asked for"
    );
    assert_eq!(lifetime, TTL + 60);
    assert_eq!(public_key, new_public_key, "the CSR's key");
    assert_ne!(serial, first_serial);
    assert_eq!(renewed.ca_certificate_pem, host.ca_certificate_pem);
    assert_eq!(
        renewed.expire_time.expect("expiry").seconds,
        fixture.clock_now() + TTL
    );
    let second = over(
        &fixture,
        &renewed.certificate_pem,
        &new_key_pem,
        &host.host_token,
    )
    .await;
    second
        .host()
        .heartbeat(proto::HeartbeatRequest::default())
        .await
        .expect("a heartbeat over the renewed certificate");
    first
        .host()
        .heartbeat(proto::HeartbeatRequest::default())
        .await
        .expect("the connection made with the old certificate stays usable");

    // Audited: the old and new serials and the expiry, never a key.
    let audit = audit_events(&admin, "host", &host.host_id).await;
    let event = audit
        .iter()
        .find(|event| event.action == "RenewHostCertificate")
        .expect("an audit event of the renewal");
    assert!(event.actor.contains(&host.host_id), "{event:?}");
    assert!(event.current_json.contains(&serial), "{event:?}");
    assert!(event.previous_json.contains(&first_serial), "{event:?}");
    assert!(!event.current_json.contains("PRIVATE KEY"), "{event:?}");

    // Bad requests name the field.
    assert_status(renew(&second, "").await, Code::InvalidArgument, "csr_pem");
    assert_status(
        renew(&second, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n").await,
        Code::InvalidArgument,
        "csr_pem",
    );
    assert_status(
        renew(&second, &"A".repeat(17 * 1024)).await,
        Code::InvalidArgument,
        "csr_pem",
    );
    // Without a client certificate, even with the token.
    assert_status(
        renew(&fixture.as_token(&host.host_token).await, &csr).await,
        Code::Unauthenticated,
        "client certificate",
    );

    // A revoked host cannot renew, over either certificate.
    admin
        .host()
        .revoke_host(proto::RevokeHostRequest {
            id: host.host_id.clone(),
            reason: "decommissioned".into(),
        })
        .await
        .expect("RevokeHost");
    for clients in [&first, &second] {
        let refused = renew(clients, &csr)
            .await
            .expect_err("a revoked host renews");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    fixture.stop().await;
}
