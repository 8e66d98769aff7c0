//! Agents' X.509-SVIDs (`HostService.SignAgentSvid`): what the certificate says, and
//! Conditional Access at issuance (who may hold one, and when not).

use agentd_control::proto::{self, PolicyState};
use tonic::Code;
use x509_parser::{extensions::GeneralName, prelude::*};

use crate::{
    jwt,
    support::{
        Backend, Clients, Fixture, agent_request, assert_status, audit_events, blueprint,
        create_agent, create_blueprint, enroll, report_running,
    },
};

/// A CSR for a fresh key, asking for names the control plane must not grant: a common name
/// that could pass for a host and a SPIFFE ID of another trust domain.
fn greedy_csr() -> (String, Vec<u8>) {
    use rcgen::PublicKeyData as _;
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params =
        rcgen::CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "4b1e0c1e-0000-4000-8000-000000000000",
    );
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://evil.example/agent/x".try_into().expect("uri"),
    ));
    let csr = params.serialize_request(&key).expect("a CSR");
    (csr.pem().expect("PEM"), key.subject_public_key_info())
}

async fn sign(
    host: &Clients,
    agent_id: &str,
    csr_pem: &str,
) -> Result<proto::SignAgentSvidResponse, tonic::Status> {
    host.host()
        .sign_agent_svid(proto::SignAgentSvidRequest {
            agent_id: agent_id.into(),
            csr_pem: csr_pem.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn enabled_agent(admin: &Clients, name: &str) -> proto::Agent {
    let agent = create_agent(
        admin,
        agent_request(name, "workers", &["alice@example.com"]),
    )
    .await;
    admin
        .governance()
        .enable_agent(proto::EnableAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("EnableAgent");
    agent
}

pub async fn an_agent_svid_names_only_the_agent_and_is_signed_only_while_its_decision_allows(
    backend: Backend,
) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("workers")).await;
    let agent = enabled_agent(&admin, "svid-bot").await;
    let other = enabled_agent(&admin, "other-bot").await;
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    let (csr, public_key) = greedy_csr();

    // Not reported running on this host yet.
    assert_status(
        sign(&host_clients, &agent.id, &csr).await,
        Code::FailedPrecondition,
        "has not reported it running",
    );
    report_running(&host_clients, &agent.id).await;

    let signed = sign(&host_clients, &agent.id, &csr).await.expect("signed");
    let spiffe_id = format!("spiffe://agentd.internal/agent/{}", agent.id);
    assert_eq!(signed.spiffe_id, spiffe_id);
    assert_eq!(signed.trust_domain, "agentd.internal");
    let ca_pem = fixture.server_ca_bundle().await;
    assert_eq!(
        signed.bundle_pem, ca_pem,
        "the bundle is the control-plane CA"
    );
    let (_, pem) = parse_x509_pem(signed.certificate_pem.as_bytes()).expect("PEM");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("a SAN extension")
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => (*uri).to_owned(),
            other => panic!("only a URI SAN, not {other:?}"),
        })
        .collect();
    assert_eq!(
        uris,
        vec![spiffe_id.clone()],
        "exactly the agent's SPIFFE ID"
    );
    assert_eq!(
        cert.subject().iter_common_name().count(),
        0,
        "no common name: an SVID must never pass for a host certificate"
    );
    assert!(!cert.is_ca());
    let eku = cert
        .extended_key_usage()
        .expect("EKU")
        .expect("an EKU extension")
        .value;
    assert!(eku.server_auth && eku.client_auth, "{eku:?}");
    assert_eq!(
        cert.public_key().raw,
        public_key.as_slice(),
        "the CSR's key"
    );
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert_eq!(lifetime, 3600 + 60, "an hour, back-dated by a minute");
    assert_eq!(
        signed.expire_time.expect("expiry").seconds,
        validity.not_after.timestamp()
    );
    let (_, ca_der) = parse_x509_pem(ca_pem.as_bytes()).expect("CA PEM");
    let ca = ca_der.parse_x509().expect("CA certificate");
    assert_eq!(cert.issuer(), ca.subject());

    // A real X.509 verifier accepts it for TLS on both ends, against the bundle alone.
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("svid.pem"), &signed.certificate_pem).expect("svid.pem");
    std::fs::write(dir.path().join("bundle.pem"), &signed.bundle_pem).expect("bundle.pem");
    for purpose in ["sslclient", "sslserver"] {
        let verified = std::process::Command::new("openssl")
            .args([
                "verify",
                "-CAfile",
                "bundle.pem",
                "-purpose",
                purpose,
                "svid.pem",
            ])
            .current_dir(dir.path())
            .output()
            .expect("running openssl verify");
        assert!(
            verified.status.success(),
            "openssl verify -purpose {purpose}: {}{}",
            String::from_utf8_lossy(&verified.stdout),
            String::from_utf8_lossy(&verified.stderr)
        );
    }

    // Every signing is audited, with the serial and the SPIFFE ID (never a key).
    let audit = audit_events(&admin, "agent", &agent.id).await;
    let event = audit
        .iter()
        .find(|event| event.action == "SignAgentSvid")
        .expect("an audit event of the signing");
    assert!(event.actor.contains(&host.host_id), "{event:?}");
    assert!(event.current_json.contains(&spiffe_id), "{event:?}");
    assert!(
        event
            .current_json
            .contains(&cert.raw_serial_as_string().replace(':', "")),
        "{event:?}"
    );
    assert!(!event.current_json.contains("PRIVATE KEY"), "{event:?}");

    // Refusals, each naming why.
    assert_status(
        sign(&host_clients, &other.id, &csr).await,
        Code::FailedPrecondition,
        "has not reported it running",
    );
    assert_status(
        sign(&host_clients, "0e2b6f3e-0000-4000-8000-000000000000", &csr).await,
        Code::InvalidArgument,
        "agent_id",
    );
    assert_status(
        sign(&host_clients, "not-a-uuid", &csr).await,
        Code::InvalidArgument,
        "agent_id",
    );
    assert_status(
        sign(&host_clients, &agent.id, "").await,
        Code::InvalidArgument,
        "csr_pem",
    );
    assert_status(
        sign(
            &host_clients,
            &agent.id,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        )
        .await,
        Code::InvalidArgument,
        "csr_pem",
    );
    assert_status(
        sign(&host_clients, &agent.id, &"A".repeat(17 * 1024)).await,
        Code::InvalidArgument,
        "csr_pem",
    );

    // A disabled agent gets none; enabled again, it does.
    admin
        .governance()
        .disable_agent(proto::DisableAgentRequest {
            id: agent.id.clone(),
            reason: "paused by its sponsor".into(),
        })
        .await
        .expect("DisableAgent");
    assert_status(
        sign(&host_clients, &agent.id, &csr).await,
        Code::FailedPrecondition,
        "it is disabled (paused by its sponsor)",
    );
    admin
        .governance()
        .enable_agent(proto::EnableAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("EnableAgent");
    sign(&host_clients, &agent.id, &csr)
        .await
        .expect("signed again once enabled");

    // Risk closes the credential: a compromised agent is blocked by the baseline policy, and
    // the next signing is refused with the decision that blocked it.
    admin
        .policy()
        .set_policy_state(proto::SetPolicyStateRequest {
            id: "block-high-risk-agents".into(),
            state: PolicyState::Enabled.into(),
            expected_version: 0,
        })
        .await
        .expect("SetPolicyState");
    admin
        .risk()
        .confirm_agent_compromised(proto::ConfirmAgentCompromisedRequest {
            agent_id: agent.id.clone(),
            reason: "exfiltration seen by the SOC".into(),
        })
        .await
        .expect("ConfirmAgentCompromised");
    assert_status(
        sign(&host_clients, &agent.id, &csr).await,
        Code::FailedPrecondition,
        "its current decision for this host is BLOCK",
    );

    // Another host cannot have this host's agent signed, whatever it claims.
    let thief = enroll(&fixture, "worker-2", "").await;
    let thief_clients = fixture.as_token(&thief.host_token).await;
    assert_status(
        sign(&thief_clients, &other.id, &csr).await,
        Code::FailedPrecondition,
        "has not reported it running",
    );

    // Refusals are audited on the agent asked for, with the host and the reason.
    let refused = refusals(&admin, &other.id).await;
    assert!(
        refused
            .iter()
            .any(|event| event.actor.contains(&thief.host_id)
                && event.current_json.contains("has not reported it running")
                && event.current_json.contains("FailedPrecondition")),
        "{refused:?}"
    );
    let blocked = refusals(&admin, &agent.id).await;
    assert!(
        blocked.iter().any(|event| event
            .current_json
            .contains("its current decision for this host is BLOCK")),
        "{blocked:?}"
    );
    // At most ten a minute per host: a host that keeps asking cannot flood the log, and the
    // next event recorded says how many were left out.
    for _ in 0..15 {
        sign(&thief_clients, &other.id, &csr)
            .await
            .expect_err("still refused");
    }
    let by_thief = |events: &[proto::AuditEvent]| {
        events
            .iter()
            .filter(|event| event.actor.contains(&thief.host_id))
            .count()
    };
    assert_eq!(by_thief(&refusals(&admin, &other.id).await), 10);
    fixture.clock.advance(60);
    sign(&thief_clients, &other.id, &csr)
        .await
        .expect_err("still refused");
    let refused = refusals(&admin, &other.id).await;
    assert_eq!(by_thief(&refused), 11);
    assert!(
        refused
            .iter()
            .any(|event| event.current_json.contains(r#""left_out_before":6"#)),
        "{refused:?}"
    );
    fixture.stop().await;
}

/// The audit events of refused X.509-SVID signings for `agent_id`.
async fn refusals(admin: &Clients, agent_id: &str) -> Vec<proto::AuditEvent> {
    audit_events(admin, "agent", agent_id)
        .await
        .into_iter()
        .filter(|event| event.action == "SignAgentSvidRefused")
        .collect()
}

/// Seconds between an X.509-SVID's not-before and not-after.
fn x509_lifetime(signed: &proto::SignAgentSvidResponse) -> i64 {
    let (_, pem) = parse_x509_pem(signed.certificate_pem.as_bytes()).expect("PEM");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

/// A blueprint's SVID lifetimes apply to its agents' next signings (an update too); 0 means
/// the control plane's; a lifetime out of range is refused by field and stores nothing.
pub async fn svid_lifetimes_follow_the_blueprint_and_bad_ones_are_refused_by_field(
    backend: Backend,
) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    for (field, x509, jwt, needle) in [
        ("x509", 60, 0, "blueprint.x509_svid_ttl_seconds"),
        ("x509", 8 * 24 * 3600, 0, "blueprint.x509_svid_ttl_seconds"),
        ("jwt", 0, 29, "blueprint.jwt_svid_ttl_seconds"),
        ("jwt", 0, 24 * 3600 + 1, "blueprint.jwt_svid_ttl_seconds"),
    ] {
        let refused = admin
            .registry()
            .create_blueprint(proto::CreateBlueprintRequest {
                blueprint: Some(proto::Blueprint {
                    x509_svid_ttl_seconds: x509,
                    jwt_svid_ttl_seconds: jwt,
                    ..blueprint("workers")
                }),
            })
            .await;
        assert_status(refused, Code::InvalidArgument, needle);
        assert!(
            admin
                .registry()
                .get_blueprint(proto::GetBlueprintRequest {
                    name: "workers".into(),
                })
                .await
                .is_err(),
            "a refused {field} lifetime stored nothing"
        );
    }
    let created = create_blueprint(
        &admin,
        proto::Blueprint {
            x509_svid_ttl_seconds: 600,
            jwt_svid_ttl_seconds: 45,
            ..blueprint("workers")
        },
    )
    .await;
    assert_eq!(
        (created.x509_svid_ttl_seconds, created.jwt_svid_ttl_seconds),
        (600, 45)
    );
    let agent = enabled_agent(&admin, "short-lived").await;
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    report_running(&host_clients, &agent.id).await;
    let (csr, _) = greedy_csr();
    let signed = sign(&host_clients, &agent.id, &csr).await.expect("signed");
    assert_eq!(
        x509_lifetime(&signed),
        600 + 60,
        "the blueprint's 10 minutes"
    );
    let token = jwt::sign(&host_clients, &agent.id, &["billing"])
        .await
        .expect("SignAgentJwt");
    let issued_at = token.expire_time.expect("expiry").seconds - 45;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        issued_at.abs_diff(i64::try_from(now).expect("now")) <= 5,
        "the blueprint's 45 s JWT lifetime: expires {:?}, now {now}",
        token.expire_time
    );

    // Back to the control plane's defaults (an hour, five minutes).
    admin
        .registry()
        .update_blueprint(proto::UpdateBlueprintRequest {
            blueprint: Some(proto::Blueprint {
                x509_svid_ttl_seconds: 0,
                jwt_svid_ttl_seconds: 0,
                ..created.clone()
            }),
        })
        .await
        .expect("UpdateBlueprint");
    let signed = sign(&host_clients, &agent.id, &csr).await.expect("signed");
    assert_eq!(
        x509_lifetime(&signed),
        3600 + 60,
        "the control plane's hour"
    );
    let token = jwt::sign(&host_clients, &agent.id, &["billing"])
        .await
        .expect("SignAgentJwt");
    let lifetime = token.expire_time.expect("expiry").seconds - i64::try_from(now).expect("now");
    assert!(
        (295..=310).contains(&lifetime),
        "the control plane's five minutes: {lifetime} s"
    );
}
