//! Rotating the certificate authority (`CredentialService`): a new CA is trusted (in the bundle
//! hosts receive with a heartbeat, and for client certificates) before it signs; at its
//! activation the server presents a certificate it signed, without a restart, while
//! connections and host certificates from the old CA keep working; retirement is refused while
//! it would break certificates, and a retired CA is trusted no more.

use std::time::{Duration, Instant};

use agentd_control::proto::{self, CaState};
use sha2::{Digest as _, Sha256};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::support::{Backend, Clients, Fixture, assert_status, audit_events, csr, enroll};

fn digest(pem: &str) -> String {
    hex::encode(Sha256::digest(pem.as_bytes()))
}

fn certificates_in(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// The subject common name of the issuer of the first certificate of `pem`.
fn issuer_of(pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    let cert = pem.parse_x509().expect("certificate");
    cert.issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .expect("issuer CN")
        .to_owned()
}

/// A new TLS connection trusting only `roots` (PEM), presenting `identity` if given.
async fn connect(
    fixture: &Fixture,
    roots: &str,
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", fixture.port))
        .expect("url")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Whether a heartbeat over a new connection trusting `roots` as `host` succeeds.
async fn heartbeat_over_new_connection(
    fixture: &Fixture,
    roots: &str,
    identity: Identity,
    token: &str,
) -> Result<proto::HeartbeatResponse, tonic::Status> {
    let channel = connect(fixture, roots, Some(identity))
        .await
        .map_err(|err| tonic::Status::unavailable(format!("{err:?}")))?;
    Clients::new(channel, Some(token))
        .host()
        .heartbeat(proto::HeartbeatRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

async fn list(admin: &Clients) -> proto::ListCertificateAuthoritiesResponse {
    admin
        .credential()
        .list_certificate_authorities(proto::ListCertificateAuthoritiesRequest {})
        .await
        .expect("ListCertificateAuthorities")
        .into_inner()
}

fn states(listed: &proto::ListCertificateAuthoritiesResponse) -> Vec<(String, CaState)> {
    listed
        .authorities
        .iter()
        .map(|ca| (ca.id.clone(), ca.state()))
        .collect()
}

async fn rotate(
    admin: &Clients,
    after: Option<u32>,
) -> Result<proto::CertificateAuthority, tonic::Status> {
    admin
        .credential()
        .rotate_certificate_authority(proto::RotateCertificateAuthorityRequest {
            activate_after_seconds: after,
        })
        .await
        .map(|response| response.into_inner().authority.expect("a CA"))
}

async fn retire(
    admin: &Clients,
    id: &str,
    force: bool,
) -> Result<proto::CertificateAuthority, tonic::Status> {
    admin
        .credential()
        .retire_certificate_authority(proto::RetireCertificateAuthorityRequest {
            id: id.into(),
            force,
        })
        .await
        .map(|response| response.into_inner().authority.expect("a CA"))
}

/// Waits until `check` holds (the replica's reload runs every 200 ms here).
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn a_rotated_ca_is_trusted_before_it_signs_and_hosts_keep_connecting_through_the_switch(
    backend: Backend,
) {
    let fixture = Fixture::start_with_options(&backend, true, |options| {
        options.credential_reload = Some(Duration::from_millis(200));
    })
    .await;
    let admin = fixture.admin().await;
    let before = list(&admin).await;
    assert_eq!(before.authorities.len(), 1);
    let old = before.authorities[0].clone();
    assert_eq!(old.state(), CaState::Active);
    assert_eq!(old.sha256.len(), 64);
    let old_bundle = before.bundle_pem.clone();
    assert_eq!(certificates_in(&old_bundle), 1);
    let old_ca_pem = old.certificate_pem.clone();

    // A host enrolled now trusts the one CA and holds a certificate it signed.
    let (csr_pem, key_pem) = csr();
    let host = enroll(&fixture, "ca-rotation-host", &csr_pem).await;
    assert_eq!(host.ca_certificate_pem, old_bundle);
    let old_identity = || Identity::from_pem(&host.certificate_pem, &key_pem);
    let kept = Clients::new(
        connect(&fixture, &old_bundle, Some(old_identity()))
            .await
            .expect("mTLS with the first CA"),
        Some(&host.host_token),
    );
    let current = kept
        .host()
        .heartbeat(proto::HeartbeatRequest {
            ca_bundle_sha256: digest(&old_bundle),
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(
        current.ca_bundle_pem, "",
        "a current bundle is not sent again"
    );
    for bad in ["not hex".to_owned(), "a".repeat(65)] {
        assert_status(
            kept.host()
                .heartbeat(proto::HeartbeatRequest {
                    ca_bundle_sha256: bad,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "ca_bundle_sha256",
        );
    }

    // Bad rotations and retirements are refused by field, and store nothing.
    assert_status(
        rotate(&admin, Some(30 * 24 * 3600 + 1)).await,
        Code::InvalidArgument,
        "activate_after_seconds",
    );
    assert_status(
        retire(&admin, "not-hex", false).await,
        Code::InvalidArgument,
        "id",
    );
    assert_status(retire(&admin, "", false).await, Code::InvalidArgument, "id");
    assert_status(
        retire(&admin, "0123456789abcdef", false).await,
        Code::NotFound,
        "0123456789abcdef",
    );
    assert_status(
        retire(&admin, &old.id, false).await,
        Code::FailedPrecondition,
        "signs now",
    );
    assert_eq!(list(&admin).await.authorities.len(), 1);

    // The rotation: the new CA is trusted at once and signs in 30 s.
    let new = rotate(&admin, Some(30))
        .await
        .expect("RotateCertificateAuthority");
    assert_eq!(new.state(), CaState::Pending);
    assert_ne!(new.id, old.id);
    let new_ca_pem = new.certificate_pem.clone();
    let new_cn = issuer_of(&new_ca_pem);
    assert!(
        new_cn.contains(&new.id),
        "the CA's name carries its id: {new_cn}"
    );
    let during = list(&admin).await;
    assert_eq!(
        states(&during),
        vec![
            (old.id.clone(), CaState::Active),
            (new.id.clone(), CaState::Pending)
        ]
    );
    let bundle = during.bundle_pem.clone();
    assert_eq!(certificates_in(&bundle), 2);
    assert!(bundle.contains(old_ca_pem.trim_end()) && bundle.contains(new_ca_pem.trim_end()));

    // Hosts get the new bundle with their next heartbeat; until the activation the server
    // still presents a certificate the first CA signed.
    let updated = kept
        .host()
        .heartbeat(proto::HeartbeatRequest {
            ca_bundle_sha256: digest(&old_bundle),
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(updated.ca_bundle_pem, bundle);
    assert!(
        connect(&fixture, &new_ca_pem, None).await.is_err(),
        "the server's certificate is not the new CA's before its activation"
    );
    heartbeat_over_new_connection(&fixture, &bundle, old_identity(), &host.host_token)
        .await
        .expect("a host trusting the new bundle connects before the switch");
    // A renewal before the activation is signed by the CA that signs now.
    let (early_csr, _) = csr();
    let early = kept
        .host()
        .renew_host_certificate(proto::RenewHostCertificateRequest { csr_pem: early_csr })
        .await
        .expect("RenewHostCertificate")
        .into_inner();
    assert_eq!(issuer_of(&early.certificate_pem), issuer_of(&old_ca_pem));
    assert_eq!(early.ca_certificate_pem, bundle);

    // The activation: every replica issues itself a certificate from the new CA.
    fixture.clock.advance(31);
    eventually(
        "the server presents a certificate the new CA signed",
        || async { connect(&fixture, &new_ca_pem, None).await.is_ok() },
    )
    .await;
    assert!(
        connect(&fixture, &old_bundle, None).await.is_err(),
        "a client trusting only the first CA no longer verifies the server"
    );
    let after = list(&admin).await;
    assert_eq!(
        states(&after)
            .into_iter()
            .map(|(_, state)| state)
            .collect::<Vec<_>>(),
        vec![CaState::Superseded, CaState::Active]
    );
    assert!(after.authorities[0].supersede_time.is_some());
    // The connection opened before the switch carries on; a new one with the host's
    // certificate from the first CA is accepted (the first CA is still trusted).
    kept.host()
        .heartbeat(proto::HeartbeatRequest::default())
        .await
        .expect("the connection from before the switch");
    heartbeat_over_new_connection(&fixture, &bundle, old_identity(), &host.host_token)
        .await
        .expect("a host certificate from the superseded CA is accepted");
    // A renewal now is signed by the new CA.
    let (late_csr, late_key) = csr();
    let late = kept
        .host()
        .renew_host_certificate(proto::RenewHostCertificateRequest { csr_pem: late_csr })
        .await
        .expect("RenewHostCertificate")
        .into_inner();
    assert_eq!(issuer_of(&late.certificate_pem), new_cn);
    let new_identity = || Identity::from_pem(&late.certificate_pem, &late_key);

    // Retirement: not the CA that signs; the superseded one only with force while what it
    // signed may be valid (host certificates live 90 days here).
    assert_status(
        retire(&admin, &new.id, false).await,
        Code::FailedPrecondition,
        "signs now",
    );
    assert_status(
        retire(&admin, &old.id, false).await,
        Code::FailedPrecondition,
        "may be valid until",
    );
    let retired = retire(&admin, &old.id, true)
        .await
        .expect("retired with force");
    assert_eq!(retired.state(), CaState::Retired);
    assert!(retired.retire_time.is_some());
    assert_status(
        retire(&admin, &old.id, true).await,
        Code::FailedPrecondition,
        "was retired",
    );
    let last = list(&admin).await;
    assert_eq!(certificates_in(&last.bundle_pem), 1);
    assert!(last.bundle_pem.contains(new_ca_pem.trim_end()));
    let shrunk = kept
        .host()
        .heartbeat(proto::HeartbeatRequest {
            ca_bundle_sha256: digest(&bundle),
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(shrunk.ca_bundle_pem, last.bundle_pem);
    // A certificate the retired CA signed opens no new connection; the renewed one does.
    eventually("the retired CA's host certificate is refused", || async {
        heartbeat_over_new_connection(&fixture, &last.bundle_pem, old_identity(), &host.host_token)
            .await
            .is_err()
    })
    .await;
    heartbeat_over_new_connection(&fixture, &last.bundle_pem, new_identity(), &host.host_token)
        .await
        .expect("the host's certificate from the new CA");

    // At most four CAs are trusted at once; the refusal stores nothing.
    for _ in 0..3 {
        rotate(&admin, None).await.expect("a pending CA");
    }
    assert_status(
        rotate(&admin, None).await,
        Code::FailedPrecondition,
        "retire one first",
    );
    let capped = list(&admin).await;
    assert_eq!(
        capped.authorities.len(),
        5,
        "four trusted and the retired one"
    );
    assert_eq!(certificates_in(&capped.bundle_pem), 4);
    // A pending CA may be retired: the rotation is cancelled.
    let pending = capped.authorities.last().expect("a pending CA").clone();
    assert_eq!(pending.state(), CaState::Pending);
    retire(&admin, &pending.id, false)
        .await
        .expect("a pending CA is retired without force");

    // Audited, with the certificate and never the key.
    let events = audit_events(&admin, "certificate_authority", &new.id).await;
    assert!(
        events
            .iter()
            .any(|event| event.action == "RotateCertificateAuthority"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|event| !event.current_json.contains("PRIVATE KEY"))
    );
    let events = audit_events(&admin, "certificate_authority", &old.id).await;
    assert!(
        events
            .iter()
            .any(|event| event.action == "RetireCertificateAuthority"),
        "{events:?}"
    );
    fixture.stop().await;
}

pub async fn a_control_plane_from_before_rotations_keeps_its_ca(backend: Backend) {
    use agentd_control::{ca::CertificateAuthority, store::Store};

    use crate::support::real_now;

    let db = crate::support::Database::create(&backend).await;
    // A control plane at schema 7 (one CA, one row) made its CA.
    let old = Store::connect_at_schema(&db.url, 7)
        .await
        .expect("the schema before CA rotation");
    old.close().await;
    let (ca, key_pem) = CertificateAuthority::generate(real_now()).expect("a CA");
    let mut raw = db.raw().await;
    sqlx::query("INSERT INTO certificate_authority (id, cert_pem, key_pem) VALUES (1, $1, $2)")
        .bind(ca.cert_pem())
        .bind(&key_pem)
        .execute(&mut raw)
        .await
        .expect("the CA of the old schema");
    drop(raw);

    let fixture = Fixture::start_on(db, true).await;
    let admin = fixture.admin().await;
    let listed = list(&admin).await;
    assert_eq!(listed.authorities.len(), 1);
    assert_eq!(listed.authorities[0].state(), CaState::Active);
    assert_eq!(listed.authorities[0].certificate_pem, ca.cert_pem());
    assert_eq!(listed.authorities[0].id.len(), 16);
    assert_eq!(listed.bundle_pem.trim_end(), ca.cert_pem().trim_end());
    connect(&fixture, ca.cert_pem(), None)
        .await
        .expect("the server's certificate is still the old CA's");
    fixture.stop().await;
}
