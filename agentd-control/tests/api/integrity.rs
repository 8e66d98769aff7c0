//! Issue 17, item 4: optimistic concurrency on versioned objects.

use agentd_control::proto;
use tonic::Code;

use crate::{
    cases::agentctl,
    support::{Backend, Clients, Fixture, assert_status},
};

const POLICY: &str = "name: race
state: disabled
assignments:
  include:
    all: true
controls:
  network:
    deny:
      - domain: evil.example
";

fn document(description: &str) -> String {
    format!("{POLICY}description: {description}\n")
}

async fn create_policy(admin: &Clients) -> proto::Policy {
    admin
        .policy()
        .create_policy(proto::CreatePolicyRequest {
            yaml: document("first"),
        })
        .await
        .expect("CreatePolicy")
        .into_inner()
        .policy
        .expect("policy")
}

async fn update(
    clients: Clients,
    expected_version: u32,
    description: String,
) -> Result<proto::Policy, tonic::Status> {
    clients
        .policy()
        .update_policy(proto::UpdatePolicyRequest {
            id: "race".into(),
            yaml: document(&description),
            expected_version,
        })
        .await
        .map(|r| r.into_inner().policy.expect("policy"))
}

pub async fn concurrent_policy_updates_with_one_expected_version_one_wins_the_other_is_aborted(
    backend: Backend,
) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let mut version = create_policy(&admin).await.version;
    // Two callers on their own connections, many rounds, so that on PostgreSQL the two
    // transactions really overlap.
    let (one, two) = (fixture.admin().await, fixture.admin().await);
    for round in 0..10 {
        let (a, b) = tokio::join!(
            update(one.clone(), version, format!("a{round}")),
            update(two.clone(), version, format!("b{round}")),
        );
        let (won, lost) = match (a, b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            other => panic!("round {round}: expected exactly one success, got {other:?}"),
        };
        assert_eq!(won.version, version + 1, "round {round}");
        assert_eq!(lost.code(), Code::Aborted, "round {round}: {lost:?}");
        assert!(
            lost.message().contains(&format!(
                "at version {}, not the expected version {version}",
                version + 1
            )),
            "round {round}: the message names the current version: {:?}",
            lost.message()
        );
        version = won.version;
    }
    // Without an expected version, a race still never ends in INTERNAL: each update either
    // stores a version or is ABORTED, and the versions stored are exactly the successes.
    let mut stored = 0;
    for round in 0..10 {
        let (a, b) = tokio::join!(
            update(one.clone(), 0, format!("c{round}")),
            update(two.clone(), 0, format!("d{round}")),
        );
        for result in [a, b] {
            match result {
                Ok(_) => stored += 1,
                Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
            }
        }
    }
    let versions = admin
        .policy()
        .list_policy_versions(proto::ListPolicyVersionsRequest { id: "race".into() })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 11 + stored, "one version per success");
    fixture.stop().await;
}

pub async fn a_stale_expected_version_is_aborted_naming_the_current_version(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_policy(&admin).await;
    let second = update(admin.clone(), 1, "second".into())
        .await
        .expect("an update based on the current version");
    assert_eq!(second.version, 2);
    let stale = "policy race is at version 2, not the expected version 1";
    assert_status(
        update(admin.clone(), 1, "lost".into()).await,
        Code::Aborted,
        stale,
    );
    assert_status(
        admin
            .policy()
            .set_policy_state(proto::SetPolicyStateRequest {
                id: "race".into(),
                state: proto::PolicyState::Enabled.into(),
                expected_version: 1,
            })
            .await,
        Code::Aborted,
        stale,
    );
    assert_status(
        admin
            .policy()
            .delete_policy(proto::DeletePolicyRequest {
                id: "race".into(),
                expected_version: 1,
            })
            .await,
        Code::Aborted,
        stale,
    );
    // agentctl's flag.
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("race.yaml");
    std::fs::write(&file, document("from agentctl")).expect("writing the policy");
    let file = file.to_str().expect("utf-8 path");
    let (ok, _, stderr) = agentctl(
        &fixture,
        &fixture.admin_token,
        &["policy", "update", file, "--expected-version", "1"],
    )
    .await;
    assert!(!ok && stderr.contains(stale), "{stderr}");
    let (ok, stdout, stderr) = agentctl(
        &fixture,
        &fixture.admin_token,
        &["policy", "update", file, "--expected-version", "2"],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("race"), "{stdout}");
    // Nothing was stored by the refused calls.
    let policy = admin
        .policy()
        .get_policy(proto::GetPolicyRequest {
            id: "race".into(),
            version: 0,
        })
        .await
        .expect("GetPolicy")
        .into_inner()
        .policy
        .expect("policy");
    assert_eq!(policy.version, 3);
    assert_eq!(policy.state(), proto::PolicyState::Disabled);
    fixture.stop().await;
}
