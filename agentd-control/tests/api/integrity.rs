//! Issue 17, items 4 and 7: optimistic concurrency on versioned objects, and an audit log that
//! proves itself (hash chain, `agentctl audit verify`, TRUNCATE refused, detections audited).

use agentd_control::{proto, store::Store};
use tonic::Code;

use crate::{
    cases::agentctl,
    support::{
        Backend, Clients, Database, Fixture, agent_request, assert_status, blueprint, create_agent,
        create_blueprint, enroll, report_running,
    },
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

/// A fixture with a few audited changes, made by concurrent writers.
async fn audited_fixture(backend: &Backend) -> Fixture {
    let fixture = Fixture::start(backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let mut writers = Vec::new();
    for i in 0..12 {
        let clients = fixture.admin().await;
        writers.push(tokio::spawn(async move {
            create_agent(
                &clients,
                agent_request(&format!("agent-{i}"), "base", &["alice@example.com"]),
            )
            .await
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    fixture
}

async fn verify(fixture: &Fixture, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    agentctl(fixture, &fixture.admin_token, &args).await
}

/// Runs statements as an attacker with SQL access, with the append-only triggers out of the
/// way.
async fn tamper(fixture: &Fixture, backend: &Backend, statements: &[&str]) {
    let mut raw = fixture.db.raw().await;
    let disable: &[&str] = match backend {
        Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
            "DROP TRIGGER audit_chain_head_forward",
        ],
        Backend::Postgres { .. } => &[
            "ALTER TABLE audit_events DISABLE TRIGGER USER",
            "ALTER TABLE audit_chain_head DISABLE TRIGGER USER",
        ],
    };
    for statement in disable.iter().chain(statements) {
        sqlx::query(statement)
            .execute(&mut raw)
            .await
            .unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
}

pub async fn audit_verify_passes_on_an_intact_log_written_by_concurrent_writers(backend: Backend) {
    let fixture = audited_fixture(&backend).await;
    let (ok, stdout, stderr) = verify(&fixture, &[]).await;
    assert!(ok, "{stderr}");
    // The CA, the JWT signing key, the baseline policy, the admin token, the blueprint and 12
    // agents.
    assert!(
        stdout.contains("audit log intact: 17 chained events"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = verify(&fixture, &["--output", "json"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("\"entries\": \"17\"") || stdout.contains("\"entries\": 17"),
        "{stdout}"
    );
    fixture.stop().await;
}

pub async fn audit_verify_catches_an_edited_entry(backend: Backend) {
    let fixture = audited_fixture(&backend).await;
    tamper(
        &fixture,
        &backend,
        &["UPDATE audit_events SET actor = 'mallory' WHERE chain_index = 5"],
    )
    .await;
    let (ok, _, stderr) = verify(&fixture, &[]).await;
    assert!(!ok, "an edit must fail verification");
    assert!(stderr.contains("(chain index 5) was edited"), "{stderr}");
    fixture.stop().await;
}

pub async fn audit_verify_catches_a_deleted_entry(backend: Backend) {
    let fixture = audited_fixture(&backend).await;
    tamper(
        &fixture,
        &backend,
        &["DELETE FROM audit_events WHERE chain_index = 5"],
    )
    .await;
    let (ok, _, stderr) = verify(&fixture, &[]).await;
    assert!(!ok, "a deletion must fail verification");
    assert!(stderr.contains("has chain index 6, expected 5"), "{stderr}");
    fixture.stop().await;
}

pub async fn audit_verify_catches_a_truncated_log(backend: Backend) {
    let fixture = audited_fixture(&backend).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let checkpoint = dir.path().join("audit.checkpoint");
    let checkpoint = checkpoint.to_str().expect("utf-8 path");
    let (ok, _, stderr) = verify(&fixture, &["--checkpoint", checkpoint]).await;
    assert!(ok, "{stderr}");

    // The last entries deleted: the server's head still names entry 17.
    tamper(
        &fixture,
        &backend,
        &["DELETE FROM audit_events WHERE chain_index > 12"],
    )
    .await;
    let (ok, _, stderr) = verify(&fixture, &[]).await;
    assert!(!ok, "a truncation must fail verification");
    assert!(
        stderr
            .contains("truncated: it ends at chain index 12, but the server's head names entry 17"),
        "{stderr}"
    );

    // An attacker who also rewinds the head row (its trigger dropped too) fools a verify
    // without an anchor of its own, but not one with the operator's checkpoint.
    let rewind = "UPDATE audit_chain_head SET entries = 12, digest = \
                  (SELECT digest FROM audit_events WHERE chain_index = 12) WHERE id = 1";
    let mut raw = fixture.db.raw().await;
    sqlx::query(rewind)
        .execute(&mut raw)
        .await
        .expect("rewinding the head");
    let (ok, _, stderr) = verify(&fixture, &[]).await;
    assert!(
        ok,
        "without a checkpoint the rewound log is consistent: {stderr}"
    );
    let (ok, _, stderr) = verify(&fixture, &["--checkpoint", checkpoint]).await;
    assert!(!ok, "the checkpoint catches the truncation");
    assert!(
        stderr.contains("truncated: it ends at chain index 12, but the checkpoint names entry 17"),
        "{stderr}"
    );
    fixture.stop().await;
}

pub async fn truncating_the_audit_log_is_refused(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let mut raw = fixture.db.raw().await;
    let count = "SELECT COUNT(*) FROM audit_events";
    let before: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut raw)
        .await
        .expect("count");
    // SQLite has no TRUNCATE: its truncate optimisation of `DELETE FROM t` is off when the table
    // has triggers, so the row trigger refuses it (the_audit_log_refuses_updates_and_deletes).
    let statements: &[&str] = match backend {
        Backend::Sqlite => &["DELETE FROM audit_events", "DELETE FROM audit_chain_head"],
        Backend::Postgres { .. } => &[
            "TRUNCATE audit_events",
            "TRUNCATE audit_chain_head",
            "TRUNCATE audit_events, audit_chain_head CASCADE",
        ],
    };
    for statement in statements {
        let err = sqlx::query(statement)
            .execute(&mut raw)
            .await
            .expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    let after: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut raw)
        .await
        .expect("count");
    assert_eq!(before, after);
    assert!(before > 0);
    fixture.stop().await;
}

pub async fn reported_detections_are_audited(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let agent = create_agent(
        &admin,
        agent_request("watched", "base", &["alice@example.com"]),
    )
    .await;
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    report_running(&host_clients, &agent.id).await;
    host_clients
        .host()
        .report_detections(proto::ReportDetectionsRequest {
            detections: vec![proto::HostDetection {
                agent_id: agent.id.clone(),
                rule: "exfiltration".into(),
                severity: "high".into(),
                detect_time: None,
                summary: "sent /etc/shadow".into(),
            }],
        })
        .await
        .expect("ReportDetections");
    let events = admin
        .audit()
        .list_audit_events(proto::ListAuditEventsRequest {
            target_type: "detection".into(),
            ..Default::default()
        })
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.action, "ReportDetections");
    assert!(event.actor.contains(&host.host_id), "{}", event.actor);
    assert!(event.previous_json.is_empty());
    let current: serde_json::Value =
        serde_json::from_str(&event.current_json).expect("the detection as JSON");
    assert_eq!(current["agent_id"], agent.id.as_str());
    assert_eq!(current["host_id"], host.host_id.as_str());
    assert_eq!(current["rule"], "exfiltration");
    assert_eq!(current["severity"], "high");
    assert!(event.chain_index > 0 && !event.digest.is_empty());
    let (ok, _, stderr) = verify(&fixture, &[]).await;
    assert!(ok, "{stderr}");
    fixture.stop().await;
}

pub async fn an_upgraded_log_seals_its_older_entries_in_the_genesis_digest(backend: Backend) {
    let db = Database::create(&backend).await;
    // A control plane at schema 2 (before the chain) wrote two events.
    let old = Store::connect_at_schema(&db.url, 2)
        .await
        .expect("the schema before the chain");
    old.close().await;
    let mut raw = db.raw().await;
    for (actor, target) in [("alice (admin)", "old-1"), ("bob (admin)", "old-2")] {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, target_type, target_id, previous, \
             current) VALUES (1700000000, $1, 'CreateBlueprint', 'blueprint', $2, NULL, '{}')",
        )
        .bind(actor)
        .bind(target)
        .execute(&mut raw)
        .await
        .expect("an event of the old schema");
    }
    let fixture = Fixture::start_on(db, false).await;
    create_blueprint(&fixture.admin().await, blueprint("new")).await;
    let (ok, stdout, stderr) = verify(&fixture, &[]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("(2 from before the chain, sealed by the genesis digest)"),
        "{stdout}"
    );
    tamper(
        &fixture,
        &backend,
        &["UPDATE audit_events SET actor = 'mallory' WHERE target_id = 'old-1'"],
    )
    .await;
    let (ok, _, stderr) = verify(&fixture, &[]).await;
    assert!(!ok, "an edit of an older entry must fail verification");
    assert!(
        stderr.contains("(chain index 1) does not follow the entry before it"),
        "{stderr}"
    );
    fixture.stop().await;
}

pub async fn the_audit_export_appends_every_event_once_with_its_digests(backend: Backend) {
    use std::os::unix::fs::PermissionsExt as _;

    use agentd_control::audit_export::{AuditExport, ExportedEvent};

    let fixture = audited_fixture(&backend).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("audit.jsonl");
    let mut export = AuditExport::open(&path).expect("opening the export");
    assert_eq!(export.export_new(&fixture.store).await.expect("export"), 17);
    assert_eq!(export.export_new(&fixture.store).await.expect("export"), 0);
    drop(export);
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A restart resumes after the last line.
    create_blueprint(&fixture.admin().await, blueprint("later")).await;
    let mut export = AuditExport::open(&path).expect("reopening the export");
    assert_eq!(export.export_new(&fixture.store).await.expect("export"), 1);
    let lines: Vec<ExportedEvent> = std::fs::read_to_string(&path)
        .expect("reading the export")
        .lines()
        .map(|line| serde_json::from_str(line).expect("an exported event"))
        .collect();
    let indexes: Vec<i64> = lines.iter().map(|e| e.chain_index).collect();
    assert_eq!(indexes, (1..=18).collect::<Vec<_>>());
    let stored = fixture
        .admin()
        .await
        .audit()
        .list_audit_events(proto::ListAuditEventsRequest::default())
        .await
        .expect("ListAuditEvents")
        .into_inner();
    for (line, event) in lines.iter().zip(&stored.events) {
        assert_eq!(
            (line.sequence, &line.digest),
            (event.sequence, &event.digest)
        );
    }
    // The last line is an anchor for verify.
    let last = lines.last().expect("a line");
    let anchor = format!("{}:{}", last.chain_index, last.digest);
    let (ok, _, stderr) = verify(&fixture, &["--expect", &anchor]).await;
    assert!(ok, "{stderr}");
    tamper(
        &fixture,
        &backend,
        &["DELETE FROM audit_events WHERE chain_index = 18"],
    )
    .await;
    let mut raw = fixture.db.raw().await;
    sqlx::query(
        "UPDATE audit_chain_head SET entries = 17, digest = \
         (SELECT digest FROM audit_events WHERE chain_index = 17) WHERE id = 1",
    )
    .execute(&mut raw)
    .await
    .expect("rewinding the head");
    let (ok, _, stderr) = verify(&fixture, &["--expect", &anchor]).await;
    assert!(!ok, "the exported anchor catches the truncation");
    assert!(stderr.contains("but --expect names entry 18"), "{stderr}");
    fixture.stop().await;
}
