//! Agents' JWT-SVIDs (`HostService.SignAgentJwt`, `GetJwtBundle`) and the OIDC discovery
//! endpoint: a relying party that no one here wrote (PyJWT) finds the keys through discovery
//! over HTTPS and verifies an agent's token; the same Conditional Access gate as X.509-SVIDs.

use std::sync::Arc;

use agentd_control::{
    proto,
    server::{Server, ServerOptions},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::net::TcpListener;
use tonic::Code;

use crate::{
    credentials::enabled_agent,
    support::{
        Backend, Clients, Fixture, assert_status, audit_events, blueprint, create_blueprint,
        enroll, report_running,
    },
};

/// What PyJWT does as a relying party: discovery at the issuer, the JWKS from `jwks_uri`,
/// then `jwt.decode` for the audience and issuer. Prints the claims as JSON.
const RELYING_PARTY: &str = r#"
import json, sys, urllib.request
import jwt
issuer, audience, token = sys.argv[1:4]
with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10) as r:
    discovery = json.load(r)
assert discovery["issuer"] == issuer, discovery
keys = jwt.PyJWKClient(discovery["jwks_uri"], timeout=10)
key = keys.get_signing_key_from_jwt(token)
claims = jwt.decode(
    token,
    key.key,
    algorithms=discovery["id_token_signing_alg_values_supported"],
    audience=audience,
    issuer=issuer,
)
print(json.dumps(claims))
"#;

fn python() -> String {
    std::env::var("AGENTD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AGENTD_TEST_PYTHON is not set: run the control tier through `cargo xtask test` \
             (its virtual environment has PyJWT)"
        )
    })
}

/// PyJWT's verdict on `token` for `audience`: the claims, or its error. Run without blocking
/// the runtime, which serves the endpoint it calls.
async fn relying_party(
    ca_file: &std::path::Path,
    issuer: &str,
    audience: &str,
    token: &str,
) -> Result<serde_json::Value, String> {
    let output = tokio::process::Command::new(python())
        .args(["-c", RELYING_PARTY, issuer, audience, token])
        // The control-plane CA, as the relying party's trust store.
        .env("SSL_CERT_FILE", ca_file)
        .output()
        .await
        .expect("running the PyJWT relying party");
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("claims JSON"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `SignAgentJwt` for `agent_id` and `audience`, as the host `host`.
pub(crate) async fn sign(
    host: &Clients,
    agent_id: &str,
    audience: &[&str],
) -> Result<proto::SignAgentJwtResponse, tonic::Status> {
    host.host()
        .sign_agent_jwt(proto::SignAgentJwtRequest {
            agent_id: agent_id.into(),
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn an_agent_jwt_svid_verifies_through_oidc_discovery_and_is_signed_only_while_allowed(
    backend: Backend,
) {
    // The OIDC endpoint's address comes first: the issuer names it.
    let oidc_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let issuer = format!(
        "https://localhost:{}",
        oidc_listener.local_addr().unwrap().port()
    );
    let fixture = Fixture::start_with_options(&backend, false, |options| {
        options.credentials.jwt_issuer = Some(issuer.clone());
    })
    .await;
    // Another replica over the same database serves discovery over HTTPS.
    let replica = Server::new(
        fixture.store.clone(),
        Arc::clone(&fixture.clock) as _,
        ServerOptions {
            tls_names: Some(vec!["localhost".to_owned()]),
            credentials: agentd_control::credentials::CredentialOptions {
                jwt_issuer: Some(issuer.clone()),
                ..Default::default()
            },
            ..ServerOptions::default()
        },
    )
    .await
    .expect("replica");
    let (acceptor, router) = replica.oidc_endpoint().expect("the OIDC endpoint");
    let oidc = tokio::spawn(agentd_control::oidc::serve(
        oidc_listener,
        acceptor,
        router,
        std::future::pending(),
    ));
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca_file = dir.path().join("ca.pem");
    let ca_pem = fixture.server_ca_bundle().await;
    std::fs::write(&ca_file, &ca_pem).expect("ca.pem");

    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("workers")).await;
    let agent = enabled_agent(&admin, "jwt-bot").await;
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    assert_status(
        sign(&host_clients, &agent.id, &["billing-api"]).await,
        Code::FailedPrecondition,
        "has not reported it running",
    );
    report_running(&host_clients, &agent.id).await;

    let signed = sign(&host_clients, &agent.id, &["billing-api", "search"])
        .await
        .expect("signed");
    let spiffe_id = format!("spiffe://agentd.internal/agent/{}", agent.id);
    assert_eq!(signed.spiffe_id, spiffe_id);

    // Verified against the bundle the hosts get.
    let bundle = host_clients
        .host()
        .get_jwt_bundle(proto::GetJwtBundleRequest {})
        .await
        .expect("GetJwtBundle")
        .into_inner();
    let jwks: serde_json::Value = serde_json::from_str(&bundle.jwks_json).expect("JWKS JSON");
    let header = jsonwebtoken::decode_header(&signed.token).expect("a JWS header");
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|jwk| Some(jwk["kid"].as_str().unwrap()) == header.kid.as_deref())
        .expect("the header's kid is published");
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .expect("the JWK");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["search"]);
    validation.set_issuer(&[&issuer]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&signed.token, &key, &validation)
        .expect("verified")
        .claims;
    assert_eq!(claims["sub"], spiffe_id);
    assert_eq!(claims["aud"], serde_json::json!(["billing-api", "search"]));
    assert_eq!(claims["agent_name"], "jwt-bot");
    assert_eq!(claims["blueprint"], "workers");
    assert_eq!(claims["host_id"], host.host_id);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300,
        "five minutes by default"
    );
    assert_eq!(
        signed.expire_time.expect("expiry").seconds,
        claims["exp"].as_i64().unwrap()
    );

    // A relying party no one here wrote: PyJWT, through discovery over HTTPS.
    let verified = relying_party(&ca_file, &issuer, "billing-api", &signed.token)
        .await
        .expect("PyJWT verifies the token");
    assert_eq!(verified["sub"], spiffe_id);
    let refused = relying_party(&ca_file, &issuer, "payroll", &signed.token)
        .await
        .expect_err("another audience is refused");
    assert!(refused.contains("Audience"), "{refused}");
    let mut tampered = signed.token.clone();
    let flip = tampered.len() - 5;
    let replacement = if &tampered[flip..=flip] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(flip..=flip, replacement);
    let refused = relying_party(&ca_file, &issuer, "billing-api", &tampered)
        .await
        .expect_err("a tampered token is refused");
    assert!(
        refused.contains("Signature") || refused.contains("signature"),
        "{refused}"
    );

    // Every signing is audited with the token's id and audiences, never the token.
    let audit = audit_events(&admin, "agent", &agent.id).await;
    let event = audit
        .iter()
        .find(|event| event.action == "SignAgentJwt")
        .expect("an audit event of the signing");
    assert!(
        event.current_json.contains(claims["jti"].as_str().unwrap()),
        "{event:?}"
    );
    assert!(event.current_json.contains("billing-api"), "{event:?}");
    assert!(!event.current_json.contains(&signed.token), "{event:?}");

    // Bad requests name the field.
    assert_status(
        sign(&host_clients, &agent.id, &[]).await,
        Code::InvalidArgument,
        "audience",
    );
    assert_status(
        sign(&host_clients, &agent.id, &["a"; 17]).await,
        Code::InvalidArgument,
        "at most 16 are allowed",
    );
    assert_status(
        sign(&host_clients, &agent.id, &["ok", ""]).await,
        Code::InvalidArgument,
        "audience[1]",
    );
    let long = "x".repeat(257);
    assert_status(
        sign(&host_clients, &agent.id, &[long.as_str()]).await,
        Code::InvalidArgument,
        "audience[0]",
    );
    assert_status(
        sign(&host_clients, &agent.id, &["a\u{7}b"]).await,
        Code::InvalidArgument,
        "control character",
    );

    // Disabled: no token.
    admin
        .governance()
        .disable_agent(proto::DisableAgentRequest {
            id: agent.id.clone(),
            reason: "rotating its owner".into(),
        })
        .await
        .expect("DisableAgent");
    assert_status(
        sign(&host_clients, &agent.id, &["billing-api"]).await,
        Code::FailedPrecondition,
        "it is disabled (rotating its owner)",
    );
    let audit = audit_events(&admin, "agent", &agent.id).await;
    assert!(
        audit
            .iter()
            .any(|event| event.action == "SignAgentJwtRefused"
                && event
                    .current_json
                    .contains("it is disabled (rotating its owner)")
                && event.current_json.contains("jwt-svid")),
        "the refusal is audited: {audit:?}"
    );
    oidc.abort();
    fixture.stop().await;
}
