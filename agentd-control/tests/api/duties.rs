//! Separation of duties (no self-approval, an admin as the second person for widening grants,
//! admin-only agent fields, detections only from the agent's own hosts) and bound host
//! identities (join tokens naming a hostname, unique hostnames, no hostname equal to a host id).

use agentd_control::{proto, store::Store};
use prost_types::Timestamp;
use tonic::Code;

use crate::support::{
    Backend, DAY, Database, Fixture, agent_request, assert_status, blueprint, create_agent,
    create_blueprint, enroll, get_agent, report_running,
};

fn request(
    agent_id: &str,
    destination: &str,
    approvers: &[&str],
    expire: i64,
) -> proto::RequestAccessPackageRequest {
    proto::RequestAccessPackageRequest {
        agent_id: agent_id.into(),
        resources: vec![proto::Resource {
            kind: proto::ResourceKind::NetworkDestination.into(),
            value: destination.into(),
        }],
        justification: "wider egress".into(),
        approvers: approvers.iter().map(|a| (*a).to_owned()).collect(),
        start_time: None,
        expire_time: Some(Timestamp {
            seconds: expire,
            nanos: 0,
        }),
    }
}

fn approve(id: &str) -> proto::ApproveAccessPackageRequest {
    proto::ApproveAccessPackageRequest { id: id.into() }
}

/// An agent of blueprint `base` (whose baseline allows db.example.com:5432) sponsored by alice.
async fn sponsored_agent(fixture: &Fixture) -> proto::Agent {
    let admin = fixture.admin().await;
    let mut base = blueprint("base");
    base.baseline_policy = Some(proto::BaselinePolicy {
        network_default: proto::DefaultAction::Deny.into(),
        allowed_destinations: vec!["db.example.com:5432".into()],
        protected_paths: vec![],
    });
    create_blueprint(&admin, base).await;
    create_agent(
        &admin,
        agent_request("egress", "base", &["alice@example.com"]),
    )
    .await
}

pub async fn naming_oneself_as_the_sole_approver_is_refused(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let agent = sponsored_agent(&fixture).await;
    let alice = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "alice@example.com")
                .await,
        )
        .await;
    let expire = fixture.clock_now() + DAY;
    assert_status(
        alice
            .access()
            .request_access_package(request(
                &agent.id,
                "0.0.0.0/0",
                &["alice@example.com"],
                expire,
            ))
            .await,
        Code::InvalidArgument,
        "approvers[0]",
    );
    assert_status(
        alice
            .access()
            .request_access_package(request(
                &agent.id,
                "0.0.0.0/0",
                &["bob@example.com", "alice@example.com"],
                expire,
            ))
            .await,
        Code::InvalidArgument,
        "approvers[1]",
    );
    // The reserved admin stage cannot be named either.
    assert_status(
        alice
            .access()
            .request_access_package(request(&agent.id, "0.0.0.0/0", &["role:admin"], expire))
            .await,
        Code::InvalidArgument,
        "reserved",
    );
    let stored = fixture
        .admin()
        .await
        .access()
        .list_access_packages(proto::ListAccessPackagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .access_packages;
    assert!(stored.is_empty(), "nothing was stored: {stored:?}");
    fixture.stop().await;
}

pub async fn a_requester_cannot_approve_their_own_package_and_widening_needs_another_admin(
    backend: Backend,
) {
    let fixture = Fixture::start(&backend).await;
    let agent = sponsored_agent(&fixture).await;
    let alice = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "alice@example.com")
                .await,
        )
        .await;
    // Alice also holds an admin token: the rule is about the person, not the token.
    let alice_admin = fixture
        .as_token(&fixture.token(proto::Role::Admin, "alice@example.com").await)
        .await;
    let bob = fixture
        .as_token(&fixture.token(proto::Role::Sponsor, "bob@example.com").await)
        .await;
    let bob_admin = fixture
        .as_token(&fixture.token(proto::Role::Admin, "bob@example.com").await)
        .await;
    let expire = fixture.clock_now() + DAY;
    let package = alice
        .access()
        .request_access_package(request(
            &agent.id,
            "0.0.0.0/0",
            &["bob@example.com"],
            expire,
        ))
        .await
        .expect("request")
        .into_inner()
        .access_package
        .expect("package");
    let approvers: Vec<&str> = package.stages.iter().map(|s| s.approver.as_str()).collect();
    assert_eq!(
        approvers,
        ["bob@example.com", "role:admin"],
        "a grant wider than the baseline gets an admin stage"
    );
    assert_status(
        alice_admin
            .access()
            .approve_access_package(approve(&package.id))
            .await,
        Code::PermissionDenied,
        "own request",
    );
    let after_bob = bob
        .access()
        .approve_access_package(approve(&package.id))
        .await
        .expect("stage 1 by bob")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(after_bob.state(), proto::AccessPackageState::Pending);
    // The admin stage: not a sponsor, not the requester as admin, not bob again as admin.
    let carol = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "carol@example.com")
                .await,
        )
        .await;
    assert_status(
        carol
            .access()
            .approve_access_package(approve(&package.id))
            .await,
        Code::PermissionDenied,
        "stage 2 of access package",
    );
    assert_status(
        alice_admin
            .access()
            .approve_access_package(approve(&package.id))
            .await,
        Code::PermissionDenied,
        "own request",
    );
    assert_status(
        bob_admin
            .access()
            .approve_access_package(approve(&package.id))
            .await,
        Code::PermissionDenied,
        "another person",
    );
    let approved = fixture
        .admin()
        .await
        .access()
        .approve_access_package(approve(&package.id))
        .await
        .expect("stage 2 by root")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(approved.state(), proto::AccessPackageState::Active);
    assert_eq!(approved.stages[1].approved_by, "root@example.com");

    // A grant the baseline already allows needs only the named approver.
    let within = alice
        .access()
        .request_access_package(request(
            &agent.id,
            "db.example.com:5432",
            &["bob@example.com"],
            expire,
        ))
        .await
        .expect("request")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(within.stages.len(), 1);
    let within = bob
        .access()
        .approve_access_package(approve(&within.id))
        .await
        .expect("approve")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(within.state(), proto::AccessPackageState::Active);
    fixture.stop().await;
}

fn update_of(agent: &proto::Agent) -> proto::UpdateAgentRequest {
    proto::UpdateAgentRequest {
        id: agent.id.clone(),
        description: agent.description.clone(),
        attributes: agent.attributes.clone(),
        metadata: agent.metadata.clone(),
        governance: agent.governance,
        expire_time: agent.expire_time,
        offline_behavior: agent.offline_behavior,
    }
}

pub async fn owners_cannot_change_what_policies_and_governance_rely_on(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let mut create = agent_request("owned", "base", &["olivia@example.com"]);
    create.attributes = [("team".to_owned(), "payments".to_owned())].into();
    create.expire_time = Some(Timestamp {
        seconds: fixture.clock_now() + 30 * DAY,
        nanos: 0,
    });
    create.governance = Some(proto::GovernanceSettings {
        reconfirm_every_days: 30,
        ..Default::default()
    });
    let created = create_agent(&admin, create).await;
    let mut fail_closed = update_of(&created);
    fail_closed.offline_behavior = proto::OfflineBehavior::FailClosed.into();
    let agent = admin
        .registry()
        .update_agent(fail_closed)
        .await
        .expect("admin sets fail-closed")
        .into_inner()
        .agent
        .expect("agent");
    let olivia = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "olivia@example.com")
                .await,
        )
        .await;
    let mut attributes = update_of(&agent);
    attributes
        .attributes
        .insert("team".into(), "sandbox".into());
    let mut offline = update_of(&agent);
    offline.offline_behavior = proto::OfflineBehavior::LastKnown.into();
    let mut expiry = update_of(&agent);
    expiry.expire_time = None;
    let mut governance = update_of(&agent);
    governance.governance = Some(proto::GovernanceSettings::default());
    for (update, field) in [
        (attributes, "`attributes`"),
        (offline, "`offline_behavior`"),
        (expiry, "`expire_time`"),
        (governance, "`governance`"),
    ] {
        assert_status(
            olivia.registry().update_agent(update.clone()).await,
            Code::PermissionDenied,
            field,
        );
        // An admin may.
        admin
            .registry()
            .update_agent(update)
            .await
            .unwrap_or_else(|err| panic!("admin changing {field}: {err:?}"));
        admin
            .registry()
            .update_agent(update_of(&agent))
            .await
            .expect("admin restores");
    }
    let stored = get_agent(&admin, &agent.id).await;
    assert_eq!(stored.attributes["team"], "payments");
    assert_eq!(
        stored.offline_behavior(),
        proto::OfflineBehavior::FailClosed
    );
    assert_eq!(stored.expire_time, agent.expire_time);
    // The owner may still change what nothing relies on.
    let mut description = update_of(&agent);
    description.description = "reviews code".into();
    let updated = olivia
        .registry()
        .update_agent(description)
        .await
        .expect("owner edits the description")
        .into_inner()
        .agent
        .expect("agent");
    assert_eq!(updated.description, "reviews code");
    fixture.stop().await;
}

fn detection(agent_id: &str) -> proto::ReportDetectionsRequest {
    proto::ReportDetectionsRequest {
        detections: vec![proto::HostDetection {
            agent_id: agent_id.into(),
            rule: "credential-file-read".into(),
            severity: "high".into(),
            detect_time: None,
            summary: "read ~/.aws/credentials".into(),
        }],
    }
}

pub async fn a_host_reports_detections_only_for_agents_it_runs(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let agent = create_agent(
        &admin,
        agent_request("runner", "base", &["alice@example.com"]),
    )
    .await;
    let runs = enroll(&fixture, "runs-it", "").await;
    let foreign = enroll(&fixture, "foreign", "").await;
    let runs_clients = fixture.as_token(&runs.host_token).await;
    let foreign_clients = fixture.as_token(&foreign.host_token).await;
    report_running(&runs_clients, &agent.id).await;
    assert_status(
        foreign_clients
            .host()
            .report_detections(detection(&agent.id))
            .await,
        Code::PermissionDenied,
        &agent.id,
    );
    let risk = admin
        .risk()
        .get_agent_risk(proto::GetAgentRiskRequest {
            agent_id: agent.id.clone(),
        })
        .await
        .expect("risk")
        .into_inner()
        .risk
        .expect("risk");
    assert_eq!(
        risk.risk_level, "none",
        "the refused detection is not counted: {risk:?}"
    );
    let reported = runs_clients
        .host()
        .report_detections(detection(&agent.id))
        .await
        .expect("its own host reports")
        .into_inner();
    assert_eq!(reported.risk_levels[&agent.id], "high");
    let stored = admin
        .risk()
        .list_detections(proto::ListDetectionsRequest::default())
        .await
        .expect("ListDetections")
        .into_inner()
        .detections;
    let hosts: Vec<&str> = stored.iter().map(|d| d.host_id.as_str()).collect();
    assert_eq!(hosts, [runs.host_id.as_str()], "which host said what");
    fixture.stop().await;
}

async fn join_token(fixture: &Fixture, hostname: &str, labels: &[(&str, &str)]) -> String {
    fixture
        .admin()
        .await
        .host()
        .create_join_token(proto::CreateJoinTokenRequest {
            ttl_seconds: 600,
            description: String::new(),
            hostname: hostname.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .await
        .expect("CreateJoinToken")
        .into_inner()
        .token
}

/// The hosts that are not revoked, as the admin lists them.
async fn live_hosts(fixture: &Fixture) -> Vec<proto::Host> {
    fixture
        .admin()
        .await
        .host()
        .list_hosts(proto::ListHostsRequest::default())
        .await
        .expect("ListHosts")
        .into_inner()
        .hosts
}

fn enrolment(token: &str, hostname: &str) -> proto::EnrollHostRequest {
    proto::EnrollHostRequest {
        join_token: token.into(),
        hostname: hostname.into(),
        ..Default::default()
    }
}

pub async fn a_join_token_bound_to_a_hostname_enrols_only_that_hostname(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let anonymous = fixture.anonymous().await;
    let token = join_token(&fixture, "web-7", &[("env", "prod")]).await;
    assert_status(
        anonymous
            .host()
            .enroll_host(enrolment(&token, "web-8"))
            .await,
        Code::PermissionDenied,
        "\"web-7\"",
    );
    // The refusal did not spend the token.
    let enrolled = anonymous
        .host()
        .enroll_host(enrolment(&token, "web-7"))
        .await
        .expect("the bound hostname enrols")
        .into_inner();
    let host = fixture
        .admin()
        .await
        .host()
        .get_host(proto::GetHostRequest {
            id: enrolled.host_id.clone(),
        })
        .await
        .expect("GetHost")
        .into_inner()
        .host
        .expect("host");
    assert_eq!(host.hostname, "web-7");
    assert_eq!(host.labels["env"], "prod", "the token's labels");
    fixture.stop().await;
}

pub async fn a_second_live_host_with_the_same_hostname_is_refused(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let anonymous = fixture.anonymous().await;
    let first = enroll(&fixture, "web-1", "").await;
    let token = join_token(&fixture, "", &[]).await;
    assert_status(
        anonymous
            .host()
            .enroll_host(enrolment(&token, "web-1"))
            .await,
        Code::AlreadyExists,
        "\"web-1\"",
    );
    // Re-enrolling the name: revoke the host that holds it first.
    fixture
        .admin()
        .await
        .host()
        .revoke_host(proto::RevokeHostRequest {
            id: first.host_id.clone(),
            reason: "reinstalled".into(),
        })
        .await
        .expect("RevokeHost");
    let second = anonymous
        .host()
        .enroll_host(enrolment(&token, "web-1"))
        .await
        .expect("re-enrolment after revocation")
        .into_inner();
    assert_ne!(second.host_id, first.host_id);
    fixture.stop().await;
}

/// Two replicas enrolling the same hostname at the same moment: the check at enrolment reads
/// before either writes, so only the database's index on live hostnames can refuse the
/// second. Exactly one of each pair enrols; the other is ALREADY_EXISTS, never INTERNAL.
pub async fn two_replicas_enrolling_one_hostname_at_once_enrol_one_host(backend: Backend) {
    let primary = Fixture::start(&backend).await;
    let replica = Fixture::replica_of(&primary).await;
    let (a, b) = (primary.anonymous().await, replica.anonymous().await);
    for round in 0..12 {
        let hostname = format!("race-{round}");
        let (first, second) = (
            join_token(&primary, "", &[]).await,
            join_token(&primary, "", &[]).await,
        );
        let mut left = a.host();
        let mut right = b.host();
        let (one, other) = tokio::join!(
            left.enroll_host(enrolment(&first, &hostname)),
            right.enroll_host(enrolment(&second, &hostname)),
        );
        let outcomes = [one.map(drop), other.map(drop)];
        let enrolled = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(enrolled, 1, "{hostname}: {outcomes:?}");
        let refused = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
        assert_eq!(
            refused.code(),
            Code::AlreadyExists,
            "{hostname}: {refused:?}"
        );
        assert!(refused.message().contains(&hostname), "{refused:?}");
    }
    let hosts = live_hosts(&primary).await;
    assert_eq!(hosts.len(), 12, "one host per name");
    replica.stop().await;
    primary.stop().await;
}

/// A database from before hostnames were unique may hold two live hosts with one name: the
/// upgrade keeps both (nothing is revoked or renamed behind the operator's back), a name held
/// once is claimed, and enrolment still refuses a third host with the shared name.
pub async fn an_upgrade_keeps_live_duplicate_hostnames_and_claims_the_unique_ones(
    backend: Backend,
) {
    let db = Database::create(&backend).await;
    let old = Store::connect_at_schema(&db.url, 4)
        .await
        .expect("the schema before hostname claims");
    old.close().await;
    let mut raw = db.raw().await;
    for (id, hostname) in [
        ("00000000-0000-4000-8000-000000000001", "twin"),
        ("00000000-0000-4000-8000-000000000002", "twin"),
        ("00000000-0000-4000-8000-000000000003", "single"),
    ] {
        sqlx::query(
            "INSERT INTO hosts (id, hostname, agentd_version, enrolled_at, labels) \
             VALUES ($1, $2, '0.1.0', 1700000000, '{}')",
        )
        .bind(id)
        .bind(hostname)
        .execute(&mut raw)
        .await
        .expect("a host of the old schema");
    }
    let fixture = Fixture::start_on(db, false).await;
    let hosts = live_hosts(&fixture).await;
    assert_eq!(hosts.len(), 3, "the upgrade kept every host");
    let anonymous = fixture.anonymous().await;
    for hostname in ["twin", "single"] {
        let token = join_token(&fixture, "", &[]).await;
        assert_status(
            anonymous
                .host()
                .enroll_host(enrolment(&token, hostname))
                .await,
            Code::AlreadyExists,
            &format!("{hostname:?}"),
        );
    }
    fixture.stop().await;
}

pub async fn a_hostname_equal_to_another_hosts_id_is_refused(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let anonymous = fixture.anonymous().await;
    let victim = enroll(&fixture, "db-1", "").await;
    let token = join_token(&fixture, "", &[]).await;
    assert_status(
        anonymous
            .host()
            .enroll_host(enrolment(&token, &victim.host_id))
            .await,
        Code::InvalidArgument,
        "id of another host",
    );
    let hosts = live_hosts(&fixture).await;
    assert_eq!(hosts.len(), 1, "nothing enrolled: {hosts:?}");
    fixture.stop().await;
}
