//! Rotating the JWT signing key (`CredentialService`): a new key is published before it signs,
//! the old one stays published while its tokens may be valid, a replica over the same
//! database picks both up, and retirement is refused while it would break tokens.

use std::time::{Duration, Instant};

use agentd_control::proto::{self, JwtKeyState};
use tonic::Code;

use crate::{
    credentials::enabled_agent,
    jwt,
    support::{
        Backend, Clients, Fixture, assert_status, audit_events, blueprint, create_blueprint,
        enroll, report_running,
    },
};

async fn rotate(
    admin: &Clients,
    after: Option<u32>,
) -> Result<proto::JwtSigningKey, tonic::Status> {
    admin
        .credential()
        .rotate_jwt_signing_key(proto::RotateJwtSigningKeyRequest {
            activate_after_seconds: after,
        })
        .await
        .map(|response| response.into_inner().key.expect("a key"))
}

async fn retire(
    admin: &Clients,
    kid: &str,
    force: bool,
) -> Result<proto::JwtSigningKey, tonic::Status> {
    admin
        .credential()
        .retire_jwt_signing_key(proto::RetireJwtSigningKeyRequest {
            kid: kid.into(),
            force,
        })
        .await
        .map(|response| response.into_inner().key.expect("a key"))
}

async fn states(admin: &Clients) -> Vec<(String, JwtKeyState)> {
    admin
        .credential()
        .list_jwt_signing_keys(proto::ListJwtSigningKeysRequest {})
        .await
        .expect("ListJwtSigningKeys")
        .into_inner()
        .keys
        .into_iter()
        .map(|key| {
            let state = key.state();
            (key.kid, state)
        })
        .collect()
}

/// The `kid`s of the JWKS a host gets.
async fn published(host: &Clients) -> Vec<String> {
    let bundle = host
        .host()
        .get_jwt_bundle(proto::GetJwtBundleRequest {})
        .await
        .expect("GetJwtBundle")
        .into_inner();
    let jwks: serde_json::Value = serde_json::from_str(&bundle.jwks_json).expect("JWKS");
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|jwk| jwk["kid"].as_str().expect("kid").to_owned())
        .collect();
    kids.sort();
    kids
}

/// The `kid` in the header of a token signed now for `agent_id`.
async fn signing_kid(host: &Clients, agent_id: &str) -> String {
    let token = jwt::sign(host, agent_id, &["billing"])
        .await
        .expect("SignAgentJwt")
        .token;
    jsonwebtoken::decode_header(&token)
        .expect("a JWS header")
        .kid
        .expect("a kid")
}

async fn eventually_published(host: &Clients, mut expected: Vec<String>, what: &str) {
    expected.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kids = published(host).await;
        if kids == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the replica publishes {kids:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn a_rotated_jwt_key_is_published_before_it_signs_and_retired_only_once_its_tokens_expire(
    backend: Backend,
) {
    let fixture = Fixture::start(&backend).await;
    let replica = Fixture::replica_of(&fixture).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("workers")).await;
    let agent = enabled_agent(&admin, "rotating-bot").await;
    let host = enroll(&fixture, "worker-1", "").await;
    let on_primary = fixture.as_token(&host.host_token).await;
    let on_replica = replica.as_token(&host.host_token).await;
    report_running(&on_primary, &agent.id).await;
    let first = states(&admin).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let (old, state) = first[0].clone();
    assert_eq!(state, JwtKeyState::Active);
    assert_eq!(signing_kid(&on_primary, &agent.id).await, old);

    // Bad requests, refused by field, change nothing.
    assert_status(
        rotate(&admin, Some(8 * 24 * 3600)).await,
        Code::InvalidArgument,
        "activate_after_seconds",
    );
    assert_status(
        retire(&admin, "zz", false).await,
        Code::InvalidArgument,
        "kid",
    );
    assert_status(
        retire(&admin, "", false).await,
        Code::InvalidArgument,
        "kid",
    );
    assert_status(
        retire(&admin, "abcdef01", false).await,
        Code::NotFound,
        "abcdef01",
    );
    assert_eq!(states(&admin).await.len(), 1);

    // A rotation with the default wait: published everywhere, not yet signing.
    let new = rotate(&admin, None).await.expect("RotateJwtSigningKey");
    assert_eq!(new.state(), JwtKeyState::Pending);
    assert_eq!(
        new.activate_time.as_ref().expect("activation").seconds
            - new.create_time.as_ref().expect("creation").seconds,
        600
    );
    let both = vec![old.clone(), new.kid.clone()];
    let mut sorted = both.clone();
    sorted.sort();
    assert_eq!(published(&on_primary).await, sorted);
    eventually_published(&on_replica, both.clone(), "after the rotation").await;
    assert_eq!(signing_kid(&on_primary, &agent.id).await, old);
    assert_eq!(signing_kid(&on_replica, &agent.id).await, old);

    // Ten minutes on, the new key signs on both replicas; the old one stays published.
    fixture.clock.advance(600);
    assert_eq!(signing_kid(&on_primary, &agent.id).await, new.kid);
    assert_eq!(signing_kid(&on_replica, &agent.id).await, new.kid);
    assert_eq!(published(&on_primary).await, sorted);
    let now = states(&admin).await;
    assert_eq!(
        now,
        vec![
            (old.clone(), JwtKeyState::Superseded),
            (new.kid.clone(), JwtKeyState::Active)
        ]
    );

    // The key that signs cannot be retired; the old one not while its tokens may be valid.
    assert_status(
        retire(&admin, &new.kid, true).await,
        Code::FailedPrecondition,
        "signs now",
    );
    assert_status(
        retire(&admin, &old, false).await,
        Code::FailedPrecondition,
        "may be valid until",
    );
    fixture.clock.advance(24 * 3600);
    let retired = retire(&admin, &old.to_uppercase(), false)
        .await
        .expect("retired");
    assert_eq!(retired.state(), JwtKeyState::Retired);
    assert_eq!(published(&on_primary).await, vec![new.kid.clone()]);
    eventually_published(&on_replica, vec![new.kid.clone()], "after the retirement").await;
    assert_status(
        retire(&admin, &old, true).await,
        Code::FailedPrecondition,
        "was retired",
    );

    // Audited, never with a key.
    let rotated = audit_events(&admin, "jwt_signing_key", &new.kid).await;
    assert!(
        rotated
            .iter()
            .any(|event| event.action == "RotateJwtSigningKey"),
        "{rotated:?}"
    );
    let gone = audit_events(&admin, "jwt_signing_key", &old).await;
    let event = gone
        .iter()
        .find(|event| event.action == "RetireJwtSigningKey")
        .expect("the retirement is audited");
    assert!(!format!("{event:?}").contains("PRIVATE KEY"), "{event:?}");

    // A pending key may be retired (a rotation cancelled); at most eight are published.
    let cancelled = rotate(&admin, Some(3600)).await.expect("rotated");
    retire(&admin, &cancelled.kid, false)
        .await
        .expect("a pending key retires");
    for _ in 0..7 {
        rotate(&admin, Some(3600)).await.expect("rotated");
    }
    assert_status(
        rotate(&admin, Some(3600)).await,
        Code::FailedPrecondition,
        "retire one first",
    );
    assert_eq!(signing_kid(&on_primary, &agent.id).await, new.kid);
}
