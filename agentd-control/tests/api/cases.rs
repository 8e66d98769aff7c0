//! Behaviour of the API, one test per rule, each over real gRPC.

use std::{collections::BTreeSet, time::Duration};

use agentd_control::proto::{self, AgentState};
use prost_types::Timestamp;
use tonic::{Code, transport::Identity};

use crate::support::{
    Backend, DAY, Fixture, agent_request, assert_status, blueprint, create_agent, create_blueprint,
    csr, enroll, foreign_ca, get_agent, real_now,
};

#[allow(
    clippy::unnecessary_wraps,
    reason = "the proto's time fields are Option<Timestamp>"
)]
fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

pub async fn bad_input_is_invalid_argument_naming_the_field(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let agent = create_agent(
        &admin,
        agent_request("good", "base", &["alice@example.com"]),
    )
    .await;
    let mut registry = admin.registry();

    let mut bad_blueprint = blueprint("base-2");
    bad_blueprint.baseline_policy = Some(proto::BaselinePolicy {
        network_default: proto::DefaultAction::Deny.into(),
        allowed_destinations: vec!["10.0.0.0/8".into(), "example.com".into()],
        protected_paths: vec![],
    });
    assert_status(
        registry
            .create_blueprint(proto::CreateBlueprintRequest {
                blueprint: Some(bad_blueprint),
            })
            .await,
        Code::InvalidArgument,
        "blueprint.baseline_policy.allowed_destinations[1]",
    );
    let mut bad_rule = blueprint("base-3");
    bad_rule.discovery_rules = vec![proto::DiscoveryRule {
        exe_path: "relative/bin".into(),
        ..Default::default()
    }];
    assert_status(
        registry
            .create_blueprint(proto::CreateBlueprintRequest {
                blueprint: Some(bad_rule),
            })
            .await,
        Code::InvalidArgument,
        "blueprint.discovery_rules[0].exe_path",
    );
    let mut bad_attr = blueprint("base-4");
    bad_attr.attributes.insert("bad key".into(), "v".into());
    assert_status(
        registry
            .create_blueprint(proto::CreateBlueprintRequest {
                blueprint: Some(bad_attr),
            })
            .await,
        Code::InvalidArgument,
        "blueprint.attributes",
    );
    assert_status(
        registry
            .create_blueprint(proto::CreateBlueprintRequest { blueprint: None })
            .await,
        Code::InvalidArgument,
        "`blueprint`",
    );
    assert_status(
        registry
            .create_agent(agent_request("Upper", "base", &["alice@example.com"]))
            .await,
        Code::InvalidArgument,
        "`name`",
    );
    assert_status(
        registry
            .create_agent(agent_request(
                "x",
                "base",
                &["alice@example.com", "bob smith"],
            ))
            .await,
        Code::InvalidArgument,
        "`sponsors[1]`",
    );
    let mut bad_meta = agent_request("meta", "base", &["alice@example.com"]);
    bad_meta.metadata = Some(proto::AgentMetadata {
        protocols: vec![99],
        ..Default::default()
    });
    assert_status(
        registry.create_agent(bad_meta).await,
        Code::InvalidArgument,
        "`metadata.protocols[0]`",
    );
    let mut bad_card = agent_request("card", "base", &["alice@example.com"]);
    bad_card.metadata = Some(proto::AgentMetadata {
        agent_card_json: "[1, 2]".into(),
        ..Default::default()
    });
    assert_status(
        registry.create_agent(bad_card).await,
        Code::InvalidArgument,
        "`metadata.agent_card_json`",
    );
    let mut bad_endpoint = agent_request("ep", "base", &["alice@example.com"]);
    bad_endpoint.metadata = Some(proto::AgentMetadata {
        endpoints: vec!["ftp://x".into()],
        ..Default::default()
    });
    assert_status(
        registry.create_agent(bad_endpoint).await,
        Code::InvalidArgument,
        "`metadata.endpoints[0]`",
    );
    let mut long_governance = agent_request("gov", "base", &["alice@example.com"]);
    long_governance.governance = Some(proto::GovernanceSettings {
        lifetime_days: 100_000,
        ..Default::default()
    });
    assert_status(
        registry.create_agent(long_governance).await,
        Code::InvalidArgument,
        "`governance.lifetime_days`",
    );
    let mut expired = agent_request("late", "base", &["alice@example.com"]);
    expired.expire_time = ts(fixture.clock_now());
    assert_status(
        registry.create_agent(expired).await,
        Code::InvalidArgument,
        "`expire_time`",
    );
    assert_status(
        registry
            .get_agent(proto::GetAgentRequest {
                id: "not-a-uuid".into(),
            })
            .await,
        Code::InvalidArgument,
        "`id`",
    );
    assert_status(
        registry
            .list_agents(proto::ListAgentsRequest {
                state: 42,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "`state`",
    );
    assert_status(
        admin
            .governance()
            .disable_agent(proto::DisableAgentRequest {
                id: agent.id.clone(),
                reason: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "`reason`",
    );
    assert_status(
        admin
            .governance()
            .add_principal(proto::AddPrincipalRequest {
                agent_id: agent.id.clone(),
                relation: 0,
                principal: "x@example.com".into(),
            })
            .await,
        Code::InvalidArgument,
        "`relation`",
    );
    let now = real_now();
    let resources = vec![proto::Resource {
        kind: proto::ResourceKind::FilePath.into(),
        value: "etc/passwd".into(),
    }];
    assert_status(
        admin
            .access()
            .request_access_package(proto::RequestAccessPackageRequest {
                agent_id: agent.id.clone(),
                resources,
                justification: "why".into(),
                approvers: vec![],
                start_time: None,
                expire_time: ts(now + 3600),
            })
            .await,
        Code::InvalidArgument,
        "`resources[0].value`",
    );
    assert_status(
        admin
            .access()
            .request_access_package(proto::RequestAccessPackageRequest {
                agent_id: agent.id.clone(),
                resources: vec![proto::Resource {
                    kind: proto::ResourceKind::McpServer.into(),
                    value: "https://mcp.example.com".into(),
                }],
                justification: "why".into(),
                approvers: vec![],
                start_time: ts(now + 7200),
                expire_time: ts(now + 3600),
            })
            .await,
        Code::InvalidArgument,
        "`expire_time`",
    );
    assert_status(
        admin
            .access()
            .request_access_package(proto::RequestAccessPackageRequest {
                agent_id: agent.id.clone(),
                resources: vec![proto::Resource {
                    kind: proto::ResourceKind::McpServer.into(),
                    value: "https://mcp.example.com".into(),
                }],
                justification: "  ".into(),
                approvers: vec![],
                start_time: None,
                expire_time: ts(now + 3600),
            })
            .await,
        Code::InvalidArgument,
        "`justification`",
    );
    assert_status(
        admin
            .host()
            .create_join_token(proto::CreateJoinTokenRequest {
                ttl_seconds: 10_000_000,
                description: String::new(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "`ttl_seconds`",
    );
    assert_status(
        admin
            .host()
            .enroll_host(proto::EnrollHostRequest {
                join_token: "x".into(),
                hostname: "bad host".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "`hostname`",
    );
    assert_status(
        admin
            .auth()
            .create_api_token(proto::CreateApiTokenRequest {
                name: "h".into(),
                role: proto::Role::Host.into(),
                principal: "x".into(),
            })
            .await,
        Code::InvalidArgument,
        "`role`",
    );
    assert_status(
        admin
            .audit()
            .list_audit_events(proto::ListAuditEventsRequest {
                target_type: "agents".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "`target_type`",
    );
    // Nothing of the refused requests was stored.
    let names: Vec<String> = registry
        .list_blueprints(proto::ListBlueprintsRequest {})
        .await
        .expect("list")
        .into_inner()
        .blueprints
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["base"]);
    fixture.stop().await;
}

pub async fn agents_inherit_blueprint_defaults(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let mut template = blueprint("coder");
    template.attributes.insert("team".into(), "payments".into());
    template.attributes.insert("tier".into(), "1".into());
    template.offline_behavior = proto::OfflineBehavior::FailClosed.into();
    template.governance = Some(proto::GovernanceSettings {
        lifetime_days: 30,
        reconfirm_every_days: 7,
        inactivity_disable_days: 0,
    });
    create_blueprint(&admin, template).await;
    let mut request = agent_request("reviewer", "coder", &["alice@example.com"]);
    request.attributes.insert("tier".into(), "0".into());
    request.metadata = Some(proto::AgentMetadata {
        capabilities: vec!["code-review".into()],
        tasks: vec!["review pull requests".into()],
        protocols: vec![proto::Protocol::Mcp.into(), proto::Protocol::A2a.into()],
        endpoints: vec!["https://reviewer.example.com/mcp".into()],
        agent_card_json: r#"{"name":"reviewer"}"#.into(),
    });
    let agent = create_agent(&admin, request).await;
    assert_eq!(agent.state(), AgentState::Created);
    assert_eq!(
        agent.effective_attributes.get("team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(
        agent.effective_attributes.get("tier").map(String::as_str),
        Some("0"),
        "the agent's own attribute wins"
    );
    assert_eq!(
        agent.effective_offline_behavior(),
        proto::OfflineBehavior::FailClosed
    );
    assert_eq!(
        agent.expire_time.map(|t| t.seconds),
        Some(fixture.clock_now() + 30 * DAY),
        "lifetime from the blueprint"
    );
    assert_eq!(
        agent.owners,
        ["alice@example.com"],
        "owners default to the sponsors"
    );
    let fetched = get_agent(&admin, &agent.id).await;
    assert_eq!(fetched.metadata, agent.metadata);
    assert_eq!(
        fetched
            .metadata
            .expect("metadata")
            .protocols()
            .collect::<Vec<_>>(),
        [proto::Protocol::Mcp, proto::Protocol::A2a]
    );
    // Changing the blueprint changes what the agent inherits.
    let mut template = blueprint("coder");
    template.attributes.insert("team".into(), "risk".into());
    admin
        .registry()
        .update_blueprint(proto::UpdateBlueprintRequest {
            blueprint: Some(template),
        })
        .await
        .expect("UpdateBlueprint");
    let fetched = get_agent(&admin, &agent.id).await;
    assert_eq!(
        fetched.effective_attributes.get("team").map(String::as_str),
        Some("risk")
    );
    assert_eq!(
        fetched.effective_offline_behavior(),
        proto::OfflineBehavior::LastKnown
    );
    // A blueprint in use cannot be deleted.
    assert_status(
        admin
            .registry()
            .delete_blueprint(proto::DeleteBlueprintRequest {
                name: "coder".into(),
            })
            .await,
        Code::FailedPrecondition,
        "used by 1 agent",
    );
    fixture.stop().await;
}

pub async fn creating_an_agent_needs_a_sponsor_and_a_known_blueprint(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    assert_status(
        admin
            .registry()
            .create_agent(agent_request("lonely", "base", &[]))
            .await,
        Code::InvalidArgument,
        "at least one sponsor",
    );
    assert_status(
        admin
            .registry()
            .create_agent(agent_request("stray", "missing", &["alice@example.com"]))
            .await,
        Code::InvalidArgument,
        "`blueprint`",
    );
    create_agent(&admin, agent_request("one", "base", &["alice@example.com"])).await;
    assert_status(
        admin
            .registry()
            .create_agent(agent_request("one", "base", &["alice@example.com"]))
            .await,
        Code::AlreadyExists,
        "\"one\"",
    );
    let agents = admin
        .registry()
        .list_agents(proto::ListAgentsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    fixture.stop().await;
}

pub async fn every_mutation_is_audited_with_the_previous_value(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let mut first = blueprint("base");
    first.description = "first version".into();
    create_blueprint(&admin, first).await;
    let mut second = blueprint("base");
    second.description = "second version".into();
    admin
        .registry()
        .update_blueprint(proto::UpdateBlueprintRequest {
            blueprint: Some(second),
        })
        .await
        .expect("update");
    let agent = create_agent(&admin, agent_request("a", "base", &["alice@example.com"])).await;
    admin
        .governance()
        .enable_agent(proto::EnableAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("enable");

    let auditor = fixture
        .as_token(
            &fixture
                .token(proto::Role::Auditor, "audrey@example.com")
                .await,
        )
        .await;
    let events = auditor
        .audit()
        .list_audit_events(proto::ListAuditEventsRequest {
            target_type: "blueprint".into(),
            ..Default::default()
        })
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["CreateBlueprint", "UpdateBlueprint"]);
    assert!(events[0].previous_json.is_empty());
    assert!(
        events[1].previous_json.contains("first version"),
        "{}",
        events[1].previous_json
    );
    assert!(events[1].current_json.contains("second version"));
    assert_eq!(events[1].actor, "root@example.com (admin)");
    assert_eq!(events[1].time.map(|t| t.seconds), Some(fixture.clock_now()));

    let agent_events = auditor
        .audit()
        .list_audit_events(proto::ListAuditEventsRequest {
            target_id: agent.id.clone(),
            ..Default::default()
        })
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events;
    let actions: Vec<&str> = agent_events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["CreateAgent", "EnableAgent"]);
    assert!(agent_events[1].previous_json.contains("\"created\""));
    assert!(agent_events[1].current_json.contains("\"active\""));
    // Paging: after the first event's sequence, the first is gone.
    let after = auditor
        .audit()
        .list_audit_events(proto::ListAuditEventsRequest {
            after_sequence: agent_events[0].sequence,
            target_id: agent.id.clone(),
            ..Default::default()
        })
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events;
    assert_eq!(after.len(), 1);
    assert!(after[0].sequence > agent_events[0].sequence);
    fixture.stop().await;
}

pub async fn a_mutation_whose_audit_record_fails_stores_nothing(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let mut raw = fixture.db.raw().await;
    let statements: &[&str] = match backend {
        Backend::Sqlite => &[
            "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END",
        ],
        Backend::Postgres { .. } => &[
            "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected audit failure'; END; $$",
            "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION fail_audit()",
        ],
    };
    for statement in statements {
        sqlx::query(statement)
            .execute(&mut raw)
            .await
            .expect("installing the failing trigger");
    }
    let result = admin
        .registry()
        .create_blueprint(proto::CreateBlueprintRequest {
            blueprint: Some(blueprint("doomed")),
        })
        .await;
    assert_status(result, Code::Internal, "injected audit failure");
    assert_status(
        admin
            .registry()
            .get_blueprint(proto::GetBlueprintRequest {
                name: "doomed".into(),
            })
            .await,
        Code::NotFound,
        "doomed",
    );
    fixture.stop().await;
}

pub async fn the_audit_log_refuses_updates_and_deletes(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let mut raw = fixture.db.raw().await;
    let update = sqlx::query("UPDATE audit_events SET actor = 'mallory'")
        .execute(&mut raw)
        .await;
    assert!(
        update
            .expect_err("update refused")
            .to_string()
            .contains("append-only")
    );
    let delete = sqlx::query("DELETE FROM audit_events")
        .execute(&mut raw)
        .await;
    assert!(
        delete
            .expect_err("delete refused")
            .to_string()
            .contains("append-only")
    );
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(&mut raw)
        .await
        .expect("count");
    assert_eq!(
        count, 5,
        "the CA, the JWT signing key, the managed baseline policy, the admin token and the \
         blueprint"
    );
    fixture.stop().await;
}

pub async fn sponsors_act_only_on_agents_they_answer_for(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let mut request = agent_request("alices", "base", &["alice@example.com"]);
    request.owners = vec!["olivia@example.com".into()];
    let agent = create_agent(&admin, request).await;
    let alice = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "alice@example.com")
                .await,
        )
        .await;
    let bob = fixture
        .as_token(&fixture.token(proto::Role::Sponsor, "bob@example.com").await)
        .await;
    let olivia = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "olivia@example.com")
                .await,
        )
        .await;

    assert_status(
        bob.governance()
            .enable_agent(proto::EnableAgentRequest {
                id: agent.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "neither a sponsor nor an owner",
    );
    let enabled = alice
        .governance()
        .enable_agent(proto::EnableAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("sponsor enables")
        .into_inner();
    assert_eq!(enabled.agent.expect("agent").state(), AgentState::Active);
    let disabled = alice
        .governance()
        .disable_agent(proto::DisableAgentRequest {
            id: agent.id.clone(),
            reason: "paused".into(),
        })
        .await
        .expect("sponsor disables")
        .into_inner()
        .agent
        .expect("agent");
    assert_eq!(disabled.state(), AgentState::Disabled);
    assert_eq!(disabled.disabled_reason, "paused");
    // Updating is for owners.
    let update = proto::UpdateAgentRequest {
        id: agent.id.clone(),
        description: "new".into(),
        ..Default::default()
    };
    assert_status(
        alice.registry().update_agent(update.clone()).await,
        Code::PermissionDenied,
        "not an owner",
    );
    let updated = olivia
        .registry()
        .update_agent(update)
        .await
        .expect("owner updates")
        .into_inner()
        .agent
        .expect("agent");
    assert_eq!(updated.description, "new");
    // Sponsors request access only for their agents, with approval stages.
    let request = proto::RequestAccessPackageRequest {
        agent_id: agent.id.clone(),
        resources: vec![proto::Resource {
            kind: proto::ResourceKind::NetworkDestination.into(),
            value: "db.example.com:5432".into(),
        }],
        justification: "migration".into(),
        approvers: vec!["root@example.com".into()],
        start_time: None,
        expire_time: ts(fixture.clock_now() + 3600),
    };
    assert_status(
        bob.access().request_access_package(request.clone()).await,
        Code::PermissionDenied,
        "neither a sponsor nor an owner",
    );
    alice
        .access()
        .request_access_package(request.clone())
        .await
        .expect("sponsor requests");
    let no_stages = proto::RequestAccessPackageRequest {
        approvers: vec![],
        ..request
    };
    assert_status(
        alice.access().request_access_package(no_stages).await,
        Code::InvalidArgument,
        "`approvers`",
    );
    fixture.stop().await;
}

pub async fn lifecycle_transitions_are_enforced(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let agent = create_agent(&admin, agent_request("a", "base", &["alice@example.com"])).await;
    let mut governance = admin.governance();
    governance
        .enable_agent(proto::EnableAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("enable");
    assert_status(
        governance
            .enable_agent(proto::EnableAgentRequest {
                id: agent.id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "already active",
    );
    let deleted = admin
        .registry()
        .delete_agent(proto::DeleteAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("delete")
        .into_inner()
        .agent
        .expect("agent");
    assert_eq!(deleted.state(), AgentState::Deleted);
    assert_status(
        governance
            .enable_agent(proto::EnableAgentRequest {
                id: agent.id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "deleted",
    );
    // Deleted agents are kept, and listed only when asked for.
    let listed = admin
        .registry()
        .list_agents(proto::ListAgentsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .agents;
    assert!(listed.is_empty());
    let deleted_list = admin
        .registry()
        .list_agents(proto::ListAgentsRequest {
            state: AgentState::Deleted.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .agents;
    assert_eq!(deleted_list.len(), 1);
    assert_status(
        governance
            .enable_agent(proto::EnableAgentRequest {
                id: uuid::Uuid::new_v4().to_string(),
            })
            .await,
        Code::NotFound,
        "agent",
    );
    fixture.stop().await;
}

async fn sweep(admin: &crate::support::Clients) -> proto::RunSweepResponse {
    admin
        .governance()
        .run_sweep(proto::RunSweepRequest {})
        .await
        .expect("RunSweep")
        .into_inner()
}

async fn alerts(admin: &crate::support::Clients, agent_id: &str) -> Vec<proto::AlertKind> {
    admin
        .governance()
        .list_alerts(proto::ListAlertsRequest {
            agent_id: agent_id.into(),
        })
        .await
        .expect("ListAlerts")
        .into_inner()
        .alerts
        .iter()
        .map(proto::Alert::kind)
        .collect()
}

pub async fn agents_expire_at_their_expiry_time(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let mut request = agent_request("short-lived", "base", &["alice@example.com"]);
    request.expire_time = ts(fixture.clock_now() + 10 * DAY);
    let agent = create_agent(&admin, request).await;
    admin
        .governance()
        .enable_agent(proto::EnableAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("enable");
    fixture.clock.advance(10 * DAY - 1);
    assert!(sweep(&admin).await.expired_agent_ids.is_empty(), "not yet");
    assert_eq!(
        get_agent(&admin, &agent.id).await.state(),
        AgentState::Active
    );
    fixture.clock.advance(1);
    assert_eq!(
        sweep(&admin).await.expired_agent_ids,
        std::slice::from_ref(&agent.id)
    );
    assert_eq!(
        get_agent(&admin, &agent.id).await.state(),
        AgentState::Expired
    );
    assert_eq!(alerts(&admin, &agent.id).await, [proto::AlertKind::Expired]);
    assert!(
        sweep(&admin).await.expired_agent_ids.is_empty(),
        "expires once"
    );
    // It can be enabled again only after its expiry moves to the future.
    assert_status(
        admin
            .governance()
            .enable_agent(proto::EnableAgentRequest {
                id: agent.id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "expired",
    );
    admin
        .registry()
        .update_agent(proto::UpdateAgentRequest {
            id: agent.id.clone(),
            expire_time: ts(fixture.clock_now() + DAY),
            ..Default::default()
        })
        .await
        .expect("extend");
    let enabled = admin
        .governance()
        .enable_agent(proto::EnableAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("enable")
        .into_inner();
    assert_eq!(enabled.agent.expect("agent").state(), AgentState::Active);
    fixture.stop().await;
}

pub async fn agents_not_reconfirmed_in_time_are_disabled(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let mut template = blueprint("base");
    template.governance = Some(proto::GovernanceSettings {
        reconfirm_every_days: 30,
        ..Default::default()
    });
    create_blueprint(&admin, template).await;
    let agent = create_agent(&admin, agent_request("a", "base", &["alice@example.com"])).await;
    admin
        .governance()
        .enable_agent(proto::EnableAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("enable");
    let alice = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "alice@example.com")
                .await,
        )
        .await;
    fixture.clock.advance(20 * DAY);
    alice
        .governance()
        .reconfirm_agent(proto::ReconfirmAgentRequest {
            id: agent.id.clone(),
        })
        .await
        .expect("reconfirm");
    fixture.clock.advance(20 * DAY);
    assert!(
        sweep(&admin)
            .await
            .reconfirmation_disabled_agent_ids
            .is_empty(),
        "reconfirmed 20 days ago"
    );
    fixture.clock.advance(10 * DAY);
    assert_eq!(
        sweep(&admin).await.reconfirmation_disabled_agent_ids,
        std::slice::from_ref(&agent.id)
    );
    let disabled = get_agent(&admin, &agent.id).await;
    assert_eq!(disabled.state(), AgentState::Disabled);
    assert!(
        disabled.disabled_reason.contains("reconfirmed"),
        "{}",
        disabled.disabled_reason
    );
    assert_eq!(
        alerts(&admin, &agent.id).await,
        [proto::AlertKind::ReconfirmationOverdue]
    );
    fixture.stop().await;
}

pub async fn inactive_agents_are_disabled_and_host_reports_keep_them_active(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let mut busy = agent_request("busy", "base", &["alice@example.com"]);
    busy.governance = Some(proto::GovernanceSettings {
        inactivity_disable_days: 7,
        ..Default::default()
    });
    let busy = create_agent(&admin, busy).await;
    let mut idle = agent_request("idle", "base", &["alice@example.com"]);
    idle.governance = Some(proto::GovernanceSettings {
        inactivity_disable_days: 7,
        ..Default::default()
    });
    let idle = create_agent(&admin, idle).await;
    for id in [&busy.id, &idle.id] {
        admin
            .governance()
            .enable_agent(proto::EnableAgentRequest { id: id.clone() })
            .await
            .expect("enable");
    }
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    for _ in 0..3 {
        fixture.clock.advance(3 * DAY);
        host_clients
            .host()
            .report_agents(proto::ReportAgentsRequest {
                agent_ids: vec![busy.id.clone()],
            })
            .await
            .expect("report");
    }
    let report = sweep(&admin).await;
    assert_eq!(
        report.inactive_disabled_agent_ids,
        std::slice::from_ref(&idle.id)
    );
    assert_eq!(
        get_agent(&admin, &busy.id).await.state(),
        AgentState::Active
    );
    assert_eq!(
        get_agent(&admin, &busy.id)
            .await
            .last_active_time
            .map(|t| t.seconds),
        Some(fixture.clock_now())
    );
    assert_eq!(alerts(&admin, &idle.id).await, [proto::AlertKind::Inactive]);
    fixture.stop().await;
}

pub async fn removing_the_last_sponsor_orphans_with_an_alert_or_reassigns(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let shared = create_agent(
        &admin,
        agent_request("shared", "base", &["alice@example.com", "bob@example.com"]),
    )
    .await;
    let solo = create_agent(
        &admin,
        agent_request("solo", "base", &["alice@example.com"]),
    )
    .await;
    let other = create_agent(
        &admin,
        agent_request("other", "base", &["alice@example.com"]),
    )
    .await;
    let mut governance = admin.governance();
    // Alice leaves: removed everywhere; `other` is handled first, with a successor.
    let handed_over = governance
        .remove_principal(proto::RemovePrincipalRequest {
            agent_id: other.id.clone(),
            relation: proto::PrincipalRelation::Sponsor.into(),
            principal: "alice@example.com".into(),
            reassign_to: "carol@example.com".into(),
        })
        .await
        .expect("reassign")
        .into_inner();
    assert_eq!(
        handed_over.reassigned_agent_ids,
        std::slice::from_ref(&other.id)
    );
    assert_eq!(
        get_agent(&admin, &other.id).await.sponsors,
        ["carol@example.com"]
    );
    let removal = governance
        .remove_principal(proto::RemovePrincipalRequest {
            agent_id: String::new(),
            relation: proto::PrincipalRelation::Sponsor.into(),
            principal: "alice@example.com".into(),
            reassign_to: String::new(),
        })
        .await
        .expect("remove everywhere")
        .into_inner();
    let removed: BTreeSet<String> = removal.agent_ids.into_iter().collect();
    assert_eq!(
        removed,
        BTreeSet::from([shared.id.clone(), solo.id.clone()])
    );
    assert_eq!(removal.orphaned_agent_ids, std::slice::from_ref(&solo.id));
    assert_eq!(
        get_agent(&admin, &shared.id).await.sponsors,
        ["bob@example.com"]
    );
    assert!(get_agent(&admin, &solo.id).await.sponsors.is_empty());
    assert_eq!(alerts(&admin, &solo.id).await, [proto::AlertKind::Orphaned]);
    assert!(alerts(&admin, &shared.id).await.is_empty());
    // The sweep does not raise the same orphan alert twice.
    assert!(sweep(&admin).await.orphaned_agent_ids.is_empty());
    assert_eq!(alerts(&admin, &solo.id).await.len(), 1);
    // A new sponsor ends the orphaning.
    governance
        .add_principal(proto::AddPrincipalRequest {
            agent_id: solo.id.clone(),
            relation: proto::PrincipalRelation::Sponsor.into(),
            principal: "dave@example.com".into(),
        })
        .await
        .expect("add sponsor");
    assert_eq!(
        get_agent(&admin, &solo.id).await.sponsors,
        ["dave@example.com"]
    );
    assert_status(
        governance
            .remove_principal(proto::RemovePrincipalRequest {
                agent_id: solo.id.clone(),
                relation: proto::PrincipalRelation::Sponsor.into(),
                principal: "nobody@example.com".into(),
                reassign_to: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        "is not a sponsor",
    );
    fixture.stop().await;
}

fn package_request(
    agent_id: &str,
    approvers: &[&str],
    start: Option<i64>,
    expire: i64,
) -> proto::RequestAccessPackageRequest {
    proto::RequestAccessPackageRequest {
        agent_id: agent_id.into(),
        resources: vec![
            proto::Resource {
                kind: proto::ResourceKind::NetworkDestination.into(),
                value: "10.1.0.0/16:5432".into(),
            },
            proto::Resource {
                kind: proto::ResourceKind::FilePath.into(),
                value: "/srv/exports".into(),
            },
            proto::Resource {
                kind: proto::ResourceKind::McpServer.into(),
                value: "https://mcp.example.com/sse".into(),
            },
        ],
        justification: "quarterly export".into(),
        approvers: approvers.iter().map(|a| (*a).to_owned()).collect(),
        start_time: start.and_then(ts),
        expire_time: ts(expire),
    }
}

pub async fn access_packages_pass_approval_stages_and_expire_automatically(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let agent = create_agent(
        &admin,
        agent_request("exporter", "base", &["alice@example.com"]),
    )
    .await;
    let now = fixture.clock_now();
    let manager = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "manager@example.com")
                .await,
        )
        .await;
    let security = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "security@example.com")
                .await,
        )
        .await;
    let package = admin
        .access()
        .request_access_package(package_request(
            &agent.id,
            &["manager@example.com", "security@example.com"],
            Some(now + DAY),
            now + 2 * DAY,
        ))
        .await
        .expect("request")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(package.state(), proto::AccessPackageState::Pending);
    assert_eq!(package.resources.len(), 3);
    let after_first = manager
        .access()
        .approve_access_package(proto::ApproveAccessPackageRequest {
            id: package.id.clone(),
        })
        .await
        .expect("stage 1")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(after_first.state(), proto::AccessPackageState::Pending);
    assert_eq!(after_first.stages[0].approved_by, "manager@example.com");
    let approved = security
        .access()
        .approve_access_package(proto::ApproveAccessPackageRequest {
            id: package.id.clone(),
        })
        .await
        .expect("stage 2")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(
        approved.state(),
        proto::AccessPackageState::Approved,
        "not started yet"
    );
    fixture.clock.advance(DAY);
    let report = sweep(&admin).await;
    assert_eq!(
        report.activated_access_package_ids,
        std::slice::from_ref(&package.id)
    );
    fixture.clock.advance(DAY);
    // At its expiry the package reads as expired at once, before any sweep...
    let read = admin
        .access()
        .get_access_package(proto::GetAccessPackageRequest {
            id: package.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(read.state(), proto::AccessPackageState::Expired);
    // ...and the sweep stores (and audits) the revocation.
    let report = sweep(&admin).await;
    assert_eq!(
        report.expired_access_package_ids,
        std::slice::from_ref(&package.id)
    );
    let expired = admin
        .access()
        .get_access_package(proto::GetAccessPackageRequest {
            id: package.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(expired.state(), proto::AccessPackageState::Expired);
    let active = admin
        .access()
        .list_access_packages(proto::ListAccessPackagesRequest {
            agent_id: agent.id.clone(),
            state: proto::AccessPackageState::Active.into(),
        })
        .await
        .expect("list")
        .into_inner()
        .access_packages;
    assert!(active.is_empty(), "an expired package grants nothing");
    // An admin may grant at once, without stages; revocation ends it early.
    let granted = admin
        .access()
        .request_access_package(package_request(
            &agent.id,
            &[],
            None,
            fixture.clock_now() + DAY,
        ))
        .await
        .expect("request")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(granted.state(), proto::AccessPackageState::Active);
    let revoked = admin
        .access()
        .revoke_access_package(proto::RevokeAccessPackageRequest {
            id: granted.id.clone(),
            reason: "done".into(),
        })
        .await
        .expect("revoke")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(revoked.state(), proto::AccessPackageState::Revoked);
    fixture.stop().await;
}

pub async fn access_package_stages_are_decided_by_their_approver(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let agent = create_agent(&admin, agent_request("a", "base", &["alice@example.com"])).await;
    let now = fixture.clock_now();
    let package = admin
        .access()
        .request_access_package(package_request(
            &agent.id,
            &["manager@example.com", "security@example.com"],
            None,
            now + DAY,
        ))
        .await
        .expect("request")
        .into_inner()
        .access_package
        .expect("package");
    let security = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "security@example.com")
                .await,
        )
        .await;
    assert_status(
        security
            .access()
            .approve_access_package(proto::ApproveAccessPackageRequest {
                id: package.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "stage 1",
    );
    let manager = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "manager@example.com")
                .await,
        )
        .await;
    let denied = manager
        .access()
        .deny_access_package(proto::DenyAccessPackageRequest {
            id: package.id.clone(),
            reason: "no".into(),
        })
        .await
        .expect("deny")
        .into_inner()
        .access_package
        .expect("package");
    assert_eq!(denied.state(), proto::AccessPackageState::Denied);
    assert_status(
        manager
            .access()
            .approve_access_package(proto::ApproveAccessPackageRequest {
                id: package.id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "not pending",
    );
    fixture.stop().await;
}

pub async fn join_tokens_are_single_use(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let join = admin
        .host()
        .create_join_token(proto::CreateJoinTokenRequest {
            ttl_seconds: 600,
            description: "rack 4".into(),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner();
    let enroll_with = |token: String, hostname: &str| proto::EnrollHostRequest {
        join_token: token,
        hostname: hostname.into(),
        ..Default::default()
    };
    let anonymous = fixture.anonymous().await;
    let first = anonymous
        .host()
        .enroll_host(enroll_with(join.token.clone(), "web-1"))
        .await
        .expect("first use")
        .into_inner();
    assert!(!first.host_token.is_empty());
    assert!(first.ca_certificate_pem.contains("BEGIN CERTIFICATE"));
    assert_status(
        anonymous
            .host()
            .enroll_host(enroll_with(join.token.clone(), "web-2"))
            .await,
        Code::Unauthenticated,
        "already used",
    );
    assert_status(
        anonymous
            .host()
            .enroll_host(enroll_with("agentd-join_forged".into(), "web-3"))
            .await,
        Code::Unauthenticated,
        "not valid",
    );
    let hosts = admin
        .host()
        .list_hosts(proto::ListHostsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .hosts;
    assert_eq!(
        hosts
            .iter()
            .map(|h| h.hostname.as_str())
            .collect::<Vec<_>>(),
        ["web-1"]
    );
    // The new host's token works, as the host role.
    let whoami = fixture
        .as_token(&first.host_token)
        .await
        .auth()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    assert_eq!(whoami.role(), proto::Role::Host);
    assert_eq!(whoami.principal, first.host_id);
    fixture.stop().await;
}

pub async fn expired_join_tokens_are_refused(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let join = admin
        .host()
        .create_join_token(proto::CreateJoinTokenRequest {
            ttl_seconds: 60,
            description: String::new(),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner();
    fixture.clock.advance(60);
    assert_status(
        admin
            .host()
            .enroll_host(proto::EnrollHostRequest {
                join_token: join.token,
                hostname: "late".into(),
                ..Default::default()
            })
            .await,
        Code::Unauthenticated,
        "expired",
    );
    let hosts = admin
        .host()
        .list_hosts(proto::ListHostsRequest {
            include_revoked: true,
        })
        .await
        .expect("list")
        .into_inner()
        .hosts;
    assert!(hosts.is_empty());
    fixture.stop().await;
}

pub async fn a_revoked_host_is_cut_off_at_its_next_call(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let host = enroll(&fixture, "web-1", "").await;
    let clients = fixture.as_token(&host.host_token).await;
    let beat = clients
        .host()
        .heartbeat(proto::HeartbeatRequest::default())
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(
        beat.server_time.map(|t| t.seconds),
        Some(fixture.clock_now())
    );
    let listed = admin
        .host()
        .get_host(proto::GetHostRequest {
            id: host.host_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .host
        .expect("host");
    assert_eq!(
        listed.last_heartbeat_time.map(|t| t.seconds),
        Some(fixture.clock_now())
    );
    admin
        .host()
        .revoke_host(proto::RevokeHostRequest {
            id: host.host_id.clone(),
            reason: "decommissioned".into(),
        })
        .await
        .expect("revoke");
    // Same channel, next call.
    assert_status(
        clients
            .host()
            .heartbeat(proto::HeartbeatRequest::default())
            .await,
        Code::Unauthenticated,
        "revoked",
    );
    assert_status(
        clients
            .host()
            .report_agents(proto::ReportAgentsRequest::default())
            .await,
        Code::Unauthenticated,
        "revoked",
    );
    let active = admin
        .host()
        .list_hosts(proto::ListHostsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .hosts;
    assert!(
        active.is_empty(),
        "revoked hosts are listed only on request"
    );
    fixture.stop().await;
}

pub async fn revoked_api_tokens_stop_working(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let created = admin
        .auth()
        .create_api_token(proto::CreateApiTokenRequest {
            name: "ci".into(),
            role: proto::Role::Auditor.into(),
            principal: "ci@example.com".into(),
        })
        .await
        .expect("create")
        .into_inner();
    let auditor = fixture.as_token(&created.token).await;
    auditor
        .auth()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("works before");
    admin
        .auth()
        .revoke_api_token(proto::RevokeApiTokenRequest {
            id: created.api_token.expect("token").id,
        })
        .await
        .expect("revoke");
    assert_status(
        auditor.auth().who_am_i(proto::WhoAmIRequest {}).await,
        Code::Unauthenticated,
        "revoked",
    );
    let tokens = admin
        .auth()
        .list_api_tokens(proto::ListApiTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .api_tokens;
    assert!(tokens.iter().all(|t| !t.principal.is_empty()));
    assert!(tokens.iter().any(|t| t.name == "ci" && t.revoked));
    fixture.stop().await;
}

pub async fn host_reports_show_which_agents_run_where(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let a = create_agent(&admin, agent_request("a", "base", &["alice@example.com"])).await;
    let b = create_agent(&admin, agent_request("b", "base", &["alice@example.com"])).await;
    let host = enroll(&fixture, "web-1", "").await;
    let clients = fixture.as_token(&host.host_token).await;
    clients
        .host()
        .report_agents(proto::ReportAgentsRequest {
            agent_ids: vec![a.id.clone(), b.id.clone()],
        })
        .await
        .expect("report");
    clients
        .host()
        .report_agents(proto::ReportAgentsRequest {
            agent_ids: vec![b.id.clone()],
        })
        .await
        .expect("report");
    let seen = admin
        .host()
        .get_host(proto::GetHostRequest {
            id: host.host_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .host
        .expect("host");
    assert_eq!(
        seen.agent_ids,
        std::slice::from_ref(&b.id),
        "a report replaces the previous one"
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_status(
        clients
            .host()
            .report_agents(proto::ReportAgentsRequest {
                agent_ids: vec![b.id.clone(), unknown],
            })
            .await,
        Code::InvalidArgument,
        "`agent_ids[1]`",
    );
    fixture.stop().await;
}

/// Enrols a host over TLS with a CSR; returns the response and the host's key.
async fn enroll_tls(fixture: &Fixture) -> (proto::EnrollHostResponse, String) {
    static ENROLLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let (csr_pem, key_pem) = csr();
    // Hostnames are unique among enrolled hosts.
    let n = ENROLLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let response = enroll(fixture, &format!("secure-{n}"), &csr_pem).await;
    assert!(response.certificate_pem.contains("BEGIN CERTIFICATE"));
    (response, key_pem)
}

pub async fn mtls_host_with_its_certificate_is_accepted(backend: Backend) {
    let fixture = Fixture::start_with(&backend, true).await;
    let (host, key) = enroll_tls(&fixture).await;
    let channel = fixture
        .channel_with(Some(Identity::from_pem(&host.certificate_pem, &key)))
        .await
        .expect("mTLS connect");
    let clients = crate::support::Clients::new(channel, Some(&host.host_token));
    clients
        .host()
        .heartbeat(proto::HeartbeatRequest::default())
        .await
        .expect("heartbeat over mTLS");
    // Admins need no client certificate.
    fixture
        .admin()
        .await
        .host()
        .list_hosts(proto::ListHostsRequest::default())
        .await
        .expect("admin over TLS");
    fixture.stop().await;
}

pub async fn mtls_host_call_without_a_certificate_is_refused(backend: Backend) {
    let fixture = Fixture::start_with(&backend, true).await;
    let (host, _) = enroll_tls(&fixture).await;
    let clients = fixture.as_token(&host.host_token).await;
    assert_status(
        clients
            .host()
            .heartbeat(proto::HeartbeatRequest::default())
            .await,
        Code::Unauthenticated,
        "client certificate",
    );
    fixture.stop().await;
}

/// A call over a channel presenting `identity` fails: the handshake refuses it, so either the
/// connection or the first call errors.
async fn refused_with(fixture: &Fixture, identity: Identity, token: &str) {
    match fixture.channel_with(Some(identity)).await {
        Err(_) => {}
        Ok(channel) => {
            let clients = crate::support::Clients::new(channel, Some(token));
            let result = tokio::time::timeout(
                Duration::from_secs(10),
                clients.host().heartbeat(proto::HeartbeatRequest::default()),
            )
            .await
            .expect("the call must not hang");
            let status = result.expect_err("the server must refuse the certificate");
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ),
                "a TLS-level refusal, got {status:?}"
            );
        }
    }
}

pub async fn mtls_certificate_from_another_ca_is_refused(backend: Backend) {
    let fixture = Fixture::start_with(&backend, true).await;
    let (host, _) = enroll_tls(&fixture).await;
    let now = real_now();
    let forged = foreign_ca()
        .issue_client(&host.host_id, now - 60, now + DAY)
        .expect("forged cert");
    refused_with(
        &fixture,
        Identity::from_pem(forged.cert_pem, forged.key_pem),
        &host.host_token,
    )
    .await;
    fixture.stop().await;
}

pub async fn mtls_expired_certificate_is_refused(backend: Backend) {
    let fixture = Fixture::start_with(&backend, true).await;
    let (host, _) = enroll_tls(&fixture).await;
    let now = real_now();
    let authorities = agentd_control::authorities::CaRing::load_or_create(&fixture.store, now)
        .await
        .expect("our CA")
        .current();
    let expired = authorities
        .signer(now)
        .issue_client(&host.host_id, now - 10 * DAY, now - DAY)
        .expect("expired cert");
    refused_with(
        &fixture,
        Identity::from_pem(expired.cert_pem, expired.key_pem),
        &host.host_token,
    )
    .await;
    fixture.stop().await;
}

pub async fn mtls_certificate_of_another_host_is_refused(backend: Backend) {
    let fixture = Fixture::start_with(&backend, true).await;
    let (first, first_key) = enroll_tls(&fixture).await;
    let (second, _) = enroll_tls(&fixture).await;
    let channel = fixture
        .channel_with(Some(Identity::from_pem(&first.certificate_pem, &first_key)))
        .await
        .expect("connect");
    let clients = crate::support::Clients::new(channel, Some(&second.host_token));
    assert_status(
        clients
            .host()
            .heartbeat(proto::HeartbeatRequest::default())
            .await,
        Code::PermissionDenied,
        &first.host_id,
    );
    fixture.stop().await;
}

pub async fn two_replicas_share_one_database(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let replica = Fixture::replica_of(&fixture).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    let agent = create_agent(&admin, agent_request("a", "base", &["alice@example.com"])).await;
    let other = replica.as_token(&fixture.admin_token).await;
    assert_eq!(get_agent(&other, &agent.id).await.name, "a");
    // A join token spent on one replica is spent on the other.
    let join = admin
        .host()
        .create_join_token(proto::CreateJoinTokenRequest {
            ttl_seconds: 600,
            description: String::new(),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner();
    let request = |hostname: &str| proto::EnrollHostRequest {
        join_token: join.token.clone(),
        hostname: hostname.into(),
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        async { admin.host().enroll_host(request("r1")).await },
        async { other.host().enroll_host(request("r2")).await },
    );
    assert_eq!(
        usize::from(a.is_ok()) + usize::from(b.is_ok()),
        1,
        "exactly one replica accepts the token: {a:?} {b:?}"
    );
    replica.stop().await;
    fixture.stop().await;
}

pub async fn kill_9_during_writes_loses_no_acknowledged_write(backend: Backend) {
    let db = crate::support::Database::create(&backend).await;
    let bin = env!("CARGO_BIN_EXE_agentd-control");
    let token = {
        let output = std::process::Command::new(bin)
            .args([
                "--database",
                &db.url,
                "create-token",
                "--name",
                "t",
                "--role",
                "admin",
                "--principal",
                "root@example.com",
            ])
            .output()
            .expect("create-token");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let (mut child, port) = crate::support::spawn_server(bin, &db.url);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let clients = crate::support::Clients::new(channel, Some(&token));
    // Writers stream creations; the server is killed while they run.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let clients = clients.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let name = format!("w{writer}-{n}");
                match clients
                    .registry()
                    .create_blueprint(proto::CreateBlueprintRequest {
                        blueprint: Some(blueprint(&name)),
                    })
                    .await
                {
                    Ok(_) => acknowledged.lock().expect("lock").push(name),
                    Err(_) => break,
                }
            }
        }));
    }
    while acknowledged.lock().expect("lock").len() < 40 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SIGKILL: no shutdown, no flush.
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    for writer in writers {
        writer.await.expect("writer");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(acknowledged.len() >= 40);
    let (mut child, port) = crate::support::spawn_server(bin, &db.url);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await
        .expect("reconnect");
    let clients = crate::support::Clients::new(channel, Some(&token));
    let stored: BTreeSet<String> = clients
        .registry()
        .list_blueprints(proto::ListBlueprintsRequest {})
        .await
        .expect("list after restart")
        .into_inner()
        .blueprints
        .into_iter()
        .map(|b| b.name)
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|name| !stored.contains(*name))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after kill -9: {lost:?}"
    );
    // And each stored blueprint has its audit record.
    let events = clients
        .audit()
        .list_audit_events(proto::ListAuditEventsRequest {
            target_type: "blueprint".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert_eq!(events.len(), stored.len());
    child.kill().expect("kill");
    child.wait().expect("reap");
}

/// Runs agentctl against the fixture; returns (success, stdout, stderr).
pub async fn agentctl(fixture: &Fixture, token: &str, args: &[&str]) -> (bool, String, String) {
    let server = format!("http://127.0.0.1:{}", fixture.port);
    let token = token.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(&args)
            .env("AGENTD_SERVER", server)
            .env("AGENTD_TOKEN", token)
            .output()
            .expect("running agentctl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("agentctl task")
}

pub async fn agentctl_drives_the_api_with_table_and_json_output(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let token = fixture.admin_token.clone();
    let (ok, out, err) = agentctl(
        &fixture,
        &token,
        &[
            "blueprint",
            "create",
            "coder",
            "--discover-exe",
            "/usr/bin/claude",
            "--attribute",
            "team=payments",
            "--network-default",
            "deny",
            "--allow",
            "api.anthropic.com:443",
            "--reconfirm-every-days",
            "30",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|header| header.starts_with("NAME")),
        "{out}"
    );
    assert!(
        out.contains("coder") && out.contains("team=payments") && out.contains("deny"),
        "{out}"
    );
    let (ok, out, err) = agentctl(
        &fixture,
        &token,
        &[
            "-o",
            "json",
            "agent",
            "create",
            "reviewer",
            "--blueprint",
            "coder",
            "--sponsor",
            "alice@example.com",
            "--protocol",
            "mcp",
            "--expires",
            "+30d",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    let id = created["agent"]["id"]
        .as_str()
        .expect("agent id")
        .to_owned();
    assert_eq!(created["agent"]["state"], "AGENT_STATE_CREATED");
    assert_eq!(created["agent"]["effectiveAttributes"]["team"], "payments");
    assert_eq!(created["agent"]["metadata"]["protocols"][0], "PROTOCOL_MCP");
    let (ok, out, err) = agentctl(&fixture, &token, &["agent", "enable", &id]).await;
    assert!(ok, "{err}");
    assert!(out.contains("active"), "{out}");
    // `update` changes only what is given.
    let (ok, _, err) = agentctl(
        &fixture,
        &token,
        &[
            "agent",
            "update",
            &id,
            "--description",
            "reviews code",
            "--reconfirm-every-days",
            "7",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = agentctl(
        &fixture,
        &token,
        &["blueprint", "update", "coder", "--offline", "fail-closed"],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = agentctl(&fixture, &token, &["-o", "json", "agent", "get", &id]).await;
    assert!(ok, "{err}");
    let agent: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(agent["agent"]["description"], "reviews code");
    assert_eq!(agent["agent"]["governance"]["reconfirmEveryDays"], 7);
    assert_eq!(
        agent["agent"]["metadata"]["protocols"][0], "PROTOCOL_MCP",
        "kept"
    );
    assert_eq!(
        agent["agent"]["expireTime"], created["agent"]["expireTime"],
        "kept"
    );
    assert_eq!(
        agent["agent"]["effectiveAttributes"]["team"], "payments",
        "the blueprint kept its attributes"
    );
    assert_eq!(
        agent["agent"]["effectiveOfflineBehavior"],
        "OFFLINE_BEHAVIOR_FAIL_CLOSED"
    );
    // Bad input: non-zero exit, the code and the field on stderr.
    let (ok, _, err) = agentctl(
        &fixture,
        &token,
        &[
            "agent",
            "create",
            "Bad",
            "--blueprint",
            "coder",
            "--sponsor",
            "alice@example.com",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("`name`"),
        "{err}"
    );
    let (ok, out, err) = agentctl(
        &fixture,
        &token,
        &["-o", "json", "audit", "list", "--target-id", &id],
    )
    .await;
    assert!(ok, "{err}");
    let audit: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["CreateAgent", "EnableAgent", "UpdateAgent"]);
    let (ok, _, err) = agentctl(&fixture, "agentd_forged", &["whoami"]).await;
    assert!(!ok);
    assert!(err.contains("Unauthenticated"), "{err}");
    fixture.stop().await;
}
