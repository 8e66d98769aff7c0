//! Conditional Access over gRPC: policy documents, versions and states, what-if, decision
//! watches, acknowledgements, and the risk loop.

use std::time::Duration;

use agentd_control::proto::{self, Action, PolicyState};
use tonic::{Code, Streaming};

use crate::{
    cases::agentctl,
    support::{
        Backend, Clients, Fixture, agent_request, assert_status, audit_events, blueprint,
        create_agent, create_blueprint, enroll, report_running,
    },
};

/// How long a watch may take to deliver a new set after a change.
const PUSH_DEADLINE: Duration = Duration::from_secs(5);

const BLOCK_EVIL: &str = "name: block-evil
description: No agent reaches evil.example
state: enabled
assignments:
  include:
    all: true
controls:
  network:
    deny:
      - domain: evil.example
";

const FINANCE_EGRESS: &str = "name: finance-egress
state: enabled
assignments:
  include:
    blueprints: [finance]
  exclude:
    agents: [auditor-bot]
controls:
  network:
    allow:
      - cidr: 10.20.0.0/16
        ports: 443
";

async fn create_policy(admin: &Clients, yaml: &str) -> proto::Policy {
    admin
        .policy()
        .create_policy(proto::CreatePolicyRequest { yaml: yaml.into() })
        .await
        .expect("CreatePolicy")
        .into_inner()
        .policy
        .expect("policy")
}

async fn set_state(admin: &Clients, id: &str, state: PolicyState) -> proto::Policy {
    admin
        .policy()
        .set_policy_state(proto::SetPolicyStateRequest {
            id: id.into(),
            state: state.into(),
            expected_version: 0,
        })
        .await
        .expect("SetPolicyState")
        .into_inner()
        .policy
        .expect("policy")
}

/// A blueprint `finance`, an enabled agent `billing-bot` of it, and an enabled `auditor-bot`.
async fn finance_agents(admin: &Clients) -> (proto::Agent, proto::Agent) {
    create_blueprint(admin, blueprint("finance")).await;
    let mut agents = Vec::new();
    for name in ["billing-bot", "auditor-bot"] {
        let agent = create_agent(
            admin,
            agent_request(name, "finance", &["alice@example.com"]),
        )
        .await;
        admin
            .governance()
            .enable_agent(proto::EnableAgentRequest {
                id: agent.id.clone(),
            })
            .await
            .expect("enable");
        agents.push(agent);
    }
    let auditor = agents.pop().expect("auditor");
    (agents.pop().expect("billing"), auditor)
}

async fn what_if(admin: &Clients, request: proto::WhatIfRequest) -> proto::WhatIfResponse {
    admin
        .policy()
        .what_if(request)
        .await
        .expect("WhatIf")
        .into_inner()
}

fn evaluation<'a>(response: &'a proto::WhatIfResponse, name: &str) -> &'a proto::PolicyEvaluation {
    response
        .evaluations
        .iter()
        .find(|e| e.policy_name == name)
        .unwrap_or_else(|| panic!("no evaluation of {name}: {:?}", response.evaluations))
}

async fn watch(host: &Clients, after_version: u64) -> Streaming<proto::WatchDecisionsResponse> {
    host.host()
        .watch_decisions(proto::WatchDecisionsRequest { after_version })
        .await
        .expect("WatchDecisions")
        .into_inner()
}

/// The next set on the stream, within `deadline`; `None` on timeout.
async fn next_set(
    stream: &mut Streaming<proto::WatchDecisionsResponse>,
    deadline: Duration,
) -> Option<proto::DecisionSet> {
    match tokio::time::timeout(deadline, stream.message()).await {
        Err(_) => None,
        Ok(message) => Some(
            message
                .expect("watch stream error")
                .expect("watch stream ended")
                .decision_set
                .expect("decision_set"),
        ),
    }
}

/// Reads sets until one satisfies `wanted`, failing after `PUSH_DEADLINE`.
async fn set_where(
    stream: &mut Streaming<proto::WatchDecisionsResponse>,
    what: &str,
    wanted: impl Fn(&proto::DecisionSet) -> bool,
) -> proto::DecisionSet {
    let started = tokio::time::Instant::now();
    loop {
        let left = PUSH_DEADLINE.saturating_sub(started.elapsed());
        match next_set(stream, left).await {
            Some(set) if wanted(&set) => return set,
            Some(_) => {}
            None => panic!("no decision set with {what} within {PUSH_DEADLINE:?}"),
        }
    }
}

fn decision<'a>(set: &'a proto::DecisionSet, agent_id: &str) -> &'a proto::AgentDecision {
    set.decisions
        .iter()
        .find(|d| d.agent_id == agent_id)
        .unwrap_or_else(|| panic!("no decision for {agent_id} in version {}", set.version))
}

pub async fn bad_policies_are_refused_by_field_and_the_policies_in_force_stay(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    // A policy naming only a blueprint that does not exist is refused (bounded.rs).
    create_blueprint(&admin, blueprint("finance")).await;
    let policy = create_policy(&admin, FINANCE_EGRESS).await;
    let bad = FINANCE_EGRESS.replace(
        "controls:",
        "conditions:\n  riskLevels: [low, critical]\ncontrols:",
    );
    assert_status(
        admin
            .policy()
            .update_policy(proto::UpdatePolicyRequest {
                id: policy.id.clone(),
                yaml: bad.clone(),
                expected_version: 0,
            })
            .await,
        Code::InvalidArgument,
        "conditions.riskLevels[1]`: unknown risk level \"critical\"",
    );
    assert_status(
        admin
            .policy()
            .create_policy(proto::CreatePolicyRequest {
                yaml: bad.replace("finance-egress", "other"),
            })
            .await,
        Code::InvalidArgument,
        "conditions.riskLevels[1]",
    );
    for (yaml, field) in [
        (
            FINANCE_EGRESS.replace("cidr: 10.20.0.0/16", "cidr: 10.20.0.0/40"),
            "controls.network.allow[0].cidr",
        ),
        (
            FINANCE_EGRESS.replace("state: enabled", "state: maybe"),
            "state",
        ),
        (
            FINANCE_EGRESS.replace("  exclude:", "  exclud:"),
            "assignments",
        ),
    ] {
        assert_status(
            admin
                .policy()
                .create_policy(proto::CreatePolicyRequest {
                    yaml: yaml.replace("finance-egress", "other"),
                })
                .await,
            Code::InvalidArgument,
            &format!("`{field}`"),
        );
    }
    let kept = admin
        .policy()
        .get_policy(proto::GetPolicyRequest {
            id: "finance-egress".into(),
            version: 0,
        })
        .await
        .expect("GetPolicy")
        .into_inner()
        .policy
        .expect("policy");
    assert_eq!((kept.version, kept.yaml.as_str()), (1, FINANCE_EGRESS));
    let names: Vec<String> = admin
        .policy()
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("ListPolicies")
        .into_inner()
        .policies
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["block-high-risk-agents", "finance-egress"]);
    assert_status(
        admin
            .policy()
            .create_policy(proto::CreatePolicyRequest {
                yaml: FINANCE_EGRESS.into(),
            })
            .await,
        Code::AlreadyExists,
        "finance-egress",
    );
    fixture.stop().await;
}

pub async fn policy_updates_are_versioned_and_audited_and_the_baseline_is_managed(
    backend: Backend,
) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("finance")).await;
    let created = create_policy(&admin, FINANCE_EGRESS).await;
    assert_eq!(created.version, 1);
    let second_yaml = FINANCE_EGRESS.replace("ports: 443", "ports: 8443");
    let updated = admin
        .policy()
        .update_policy(proto::UpdatePolicyRequest {
            id: String::new(),
            yaml: second_yaml.clone(),
            expected_version: 0,
        })
        .await
        .expect("UpdatePolicy by the document's name")
        .into_inner()
        .policy
        .expect("policy");
    assert_eq!(
        (updated.id.as_str(), updated.version),
        (created.id.as_str(), 2)
    );
    let disabled = set_state(&admin, &created.id, PolicyState::Disabled).await;
    assert_eq!(disabled.version, 3);
    assert_eq!(disabled.state(), PolicyState::Disabled);
    assert_eq!(
        disabled.yaml, second_yaml,
        "a state change keeps the document"
    );
    let versions = admin
        .policy()
        .list_policy_versions(proto::ListPolicyVersionsRequest {
            id: "finance-egress".into(),
        })
        .await
        .expect("ListPolicyVersions")
        .into_inner()
        .versions;
    let summary: Vec<(u32, PolicyState, bool)> = versions
        .iter()
        .map(|v| (v.version, v.state(), v.yaml.contains("8443")))
        .collect();
    assert_eq!(
        summary,
        [
            (1, PolicyState::Enabled, false),
            (2, PolicyState::Enabled, true),
            (3, PolicyState::Disabled, true),
        ]
    );
    let first = admin
        .policy()
        .get_policy(proto::GetPolicyRequest {
            id: created.id.clone(),
            version: 1,
        })
        .await
        .expect("GetPolicy v1")
        .into_inner()
        .policy
        .expect("policy");
    assert_eq!(first.yaml, FINANCE_EGRESS);
    assert_eq!(first.updated_by, "root@example.com (admin)");
    let audit = audit_events(&admin, "policy", &created.id).await;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["CreatePolicy", "UpdatePolicy", "SetPolicyState"]);
    admin
        .policy()
        .delete_policy(proto::DeletePolicyRequest {
            id: created.id.clone(),
            expected_version: 0,
        })
        .await
        .expect("DeletePolicy");
    assert_status(
        admin
            .policy()
            .get_policy(proto::GetPolicyRequest {
                id: created.id.clone(),
                version: 0,
            })
            .await,
        Code::NotFound,
        "policy",
    );
    // The managed baseline exists from the start, report-only, and cannot be deleted.
    let baseline = admin
        .policy()
        .get_policy(proto::GetPolicyRequest {
            id: "block-high-risk-agents".into(),
            version: 0,
        })
        .await
        .expect("baseline")
        .into_inner()
        .policy
        .expect("policy");
    assert!(baseline.managed);
    assert_eq!(baseline.state(), PolicyState::ReportOnly);
    assert_status(
        admin
            .policy()
            .delete_policy(proto::DeletePolicyRequest {
                id: baseline.id.clone(),
                expected_version: 0,
            })
            .await,
        Code::FailedPrecondition,
        "cannot be deleted",
    );
    let enabled = set_state(&admin, "block-high-risk-agents", PolicyState::Enabled).await;
    assert_eq!(
        (enabled.state(), enabled.version),
        (PolicyState::Enabled, 2)
    );
    fixture.stop().await;
}

pub async fn what_if_explains_which_policies_apply_and_the_decision(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let (billing, auditor) = finance_agents(&admin).await;
    create_policy(&admin, FINANCE_EGRESS).await;
    create_policy(
        &admin,
        "name: prod-only-block
state: enabled
assignments:
  include: {agents: [billing-bot]}
conditions:
  hostLabels: {env: prod}
controls:
  block: true
",
    )
    .await;
    let host = enroll(&fixture, "worker-1", "").await;
    admin
        .host()
        .set_host_labels(proto::SetHostLabelsRequest {
            id: host.host_id.clone(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
        })
        .await
        .expect("SetHostLabels");

    // 1. The allow-list applies to billing-bot (by blueprint); no host: the label policy does not.
    let plain = what_if(
        &admin,
        proto::WhatIfRequest {
            agent: "billing-bot".into(),
            ..Default::default()
        },
    )
    .await;
    let egress = evaluation(&plain, "finance-egress");
    assert!(egress.applies, "{egress:?}");
    assert!(
        egress.reasons[0].contains("by blueprint"),
        "{:?}",
        egress.reasons
    );
    let label = evaluation(&plain, "prod-only-block");
    assert!(!label.applies);
    assert_eq!(
        label.reasons.last().map(String::as_str),
        Some("host lacks label env=prod")
    );
    let decision = plain.decision.expect("decision");
    assert_eq!(decision.action(), Action::Allow);
    assert!(decision.network_restricted);
    assert_eq!(decision.network_grants.len(), 1);
    assert_eq!(decision.network_grants[0].ports, "443");

    // 2. On the prod host the block applies too: deny wins.
    let on_prod = what_if(
        &admin,
        proto::WhatIfRequest {
            agent: billing.id.clone(),
            host: "worker-1".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(evaluation(&on_prod, "prod-only-block").applies);
    assert_eq!(on_prod.host_id, host.host_id);
    assert_eq!(on_prod.decision.expect("decision").action(), Action::Block);

    // 3. A hypothetical high risk: the report-only baseline would block; nothing is enforced
    //    for the excluded auditor-bot.
    let risky = what_if(
        &admin,
        proto::WhatIfRequest {
            agent: "auditor-bot".into(),
            risk_level: "high".into(),
            ..Default::default()
        },
    )
    .await;
    let excluded = evaluation(&risky, "finance-egress");
    assert!(!excluded.applies);
    assert!(
        excluded.reasons[0].contains("excluded"),
        "{:?}",
        excluded.reasons
    );
    let baseline = evaluation(&risky, "block-high-risk-agents");
    assert!(baseline.applies);
    assert_eq!(baseline.state(), PolicyState::ReportOnly);
    let decision = risky.decision.expect("decision");
    assert_eq!(decision.agent_id, auditor.id);
    assert_eq!(decision.action(), Action::Allow);
    assert!(!decision.network_restricted);
    assert_eq!(decision.report_only_action(), Action::Block);
    assert_eq!(decision.risk_level, "high");
    assert_status(
        admin
            .policy()
            .what_if(proto::WhatIfRequest {
                agent: "billing-bot".into(),
                risk_level: "critical".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "risk_level",
    );
    fixture.stop().await;
}

pub async fn decisions_carry_package_grants_and_governance_blocks(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let (billing, _) = finance_agents(&admin).await;
    create_policy(&admin, FINANCE_EGRESS).await;
    let expiry = fixture.clock_now() + 3600;
    let package = admin
        .access()
        .request_access_package(proto::RequestAccessPackageRequest {
            agent_id: billing.id.clone(),
            resources: vec![proto::Resource {
                kind: proto::ResourceKind::NetworkDestination.into(),
                value: "api.partner.example:443".into(),
            }],
            justification: "quarterly close".into(),
            approvers: vec![],
            start_time: None,
            expire_time: Some(prost_types::Timestamp {
                seconds: expiry,
                nanos: 0,
            }),
        })
        .await
        .expect("RequestAccessPackage")
        .into_inner()
        .access_package
        .expect("package");
    let decision = what_if(
        &admin,
        proto::WhatIfRequest {
            agent: "billing-bot".into(),
            ..Default::default()
        },
    )
    .await
    .decision
    .expect("decision");
    let grant = decision
        .network_grants
        .iter()
        .find(|g| g.source == package.id)
        .expect("the package's grant");
    assert_eq!(
        grant.destination,
        Some(proto::network_grant::Destination::Domain(
            "api.partner.example".into()
        ))
    );
    assert_eq!(grant.expire_time.map(|t| t.seconds), Some(expiry));
    // At its expiry the grant is gone, even before the sweep stores that.
    let later = what_if(
        &admin,
        proto::WhatIfRequest {
            agent: "billing-bot".into(),
            eval_time: Some(prost_types::Timestamp {
                seconds: expiry,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .decision
    .expect("decision");
    assert!(later.network_grants.iter().all(|g| g.source != package.id));
    // Governance: a disabled agent is blocked, whatever the policies say.
    admin
        .governance()
        .disable_agent(proto::DisableAgentRequest {
            id: billing.id.clone(),
            reason: "incident 42".into(),
        })
        .await
        .expect("disable");
    let blocked = what_if(
        &admin,
        proto::WhatIfRequest {
            agent: "billing-bot".into(),
            ..Default::default()
        },
    )
    .await
    .decision
    .expect("decision");
    assert_eq!(blocked.action(), Action::Block);
    assert_eq!(
        blocked.reasons[0],
        "governance: the agent is disabled (incident 42)"
    );
    fixture.stop().await;
}

pub async fn a_watch_gets_new_decisions_after_policy_risk_and_package_changes(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let (billing, _) = finance_agents(&admin).await;
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    let mut stream = watch(&host_clients, 0).await;
    let first = next_set(&mut stream, PUSH_DEADLINE)
        .await
        .expect("the current set at once");
    assert!(first.version > 0);
    let before = decision(&first, &billing.id);
    assert_eq!(before.action(), Action::Allow);
    assert_eq!(before.agent_name, "billing-bot");
    assert_eq!(before.offline_behavior(), proto::OfflineBehavior::LastKnown);
    assert_eq!(before.offline_ttl_seconds, 900);
    assert!(before.network_denials.is_empty());

    // A policy change.
    let policy = create_policy(&admin, BLOCK_EVIL).await;
    let after_policy = set_where(&mut stream, "the evil.example denial", |set| {
        !decision(set, &billing.id).network_denials.is_empty()
    })
    .await;
    assert!(after_policy.version > first.version);
    let denial = &decision(&after_policy, &billing.id).network_denials[0];
    assert_eq!(
        denial.destination,
        Some(proto::network_grant::Destination::Domain(
            "evil.example".into()
        ))
    );
    assert_eq!(denial.source, policy.id);

    // The risk loop: enable the baseline, then a high detection blocks the agent.
    set_state(&admin, "block-high-risk-agents", PolicyState::Enabled).await;
    report_running(&host_clients, &billing.id).await;
    let reported = host_clients
        .host()
        .report_detections(proto::ReportDetectionsRequest {
            detections: vec![proto::HostDetection {
                agent_id: billing.id.clone(),
                rule: "credential-file-read".into(),
                severity: "high".into(),
                detect_time: None,
                summary: "read ~/.aws/credentials".into(),
            }],
        })
        .await
        .expect("ReportDetections")
        .into_inner();
    assert_eq!(reported.risk_levels[&billing.id], "high");
    let after_risk = set_where(&mut stream, "billing-bot blocked", |set| {
        decision(set, &billing.id).action() == Action::Block
    })
    .await;
    assert_eq!(decision(&after_risk, &billing.id).risk_level, "high");
    let risk = admin
        .risk()
        .get_agent_risk(proto::GetAgentRiskRequest {
            agent_id: billing.id.clone(),
        })
        .await
        .expect("GetAgentRisk")
        .into_inner()
        .risk
        .expect("risk");
    assert_eq!(
        (
            risk.risk_level.as_str(),
            risk.detection_count,
            risk.host_ids
        ),
        ("high", 1, vec![host.host_id.clone()])
    );
    // Confirmed safe: the detection no longer counts and the block lifts.
    admin
        .risk()
        .confirm_agent_safe(proto::ConfirmAgentSafeRequest {
            agent_id: billing.id.clone(),
            reason: "false positive: test credentials".into(),
        })
        .await
        .expect("ConfirmAgentSafe");
    set_where(&mut stream, "billing-bot allowed again", |set| {
        let d = decision(set, &billing.id);
        d.action() == Action::Allow && d.risk_level == "none"
    })
    .await;
    // Confirmed compromised: high risk without any detection.
    admin
        .risk()
        .confirm_agent_compromised(proto::ConfirmAgentCompromisedRequest {
            agent_id: billing.id.clone(),
            reason: "exfiltration seen by the SOC".into(),
        })
        .await
        .expect("ConfirmAgentCompromised");
    set_where(&mut stream, "billing-bot blocked as compromised", |set| {
        decision(set, &billing.id).action() == Action::Block
    })
    .await;

    // An access-package approval adds a grant.
    let approver = fixture
        .as_token(
            &fixture
                .token(proto::Role::Sponsor, "alice@example.com")
                .await,
        )
        .await;
    let package = admin
        .access()
        .request_access_package(proto::RequestAccessPackageRequest {
            agent_id: billing.id.clone(),
            resources: vec![proto::Resource {
                kind: proto::ResourceKind::McpServer.into(),
                value: "https://mcp.partner.example/sse".into(),
            }],
            justification: "integration".into(),
            approvers: vec!["alice@example.com".into()],
            start_time: None,
            expire_time: Some(prost_types::Timestamp {
                seconds: fixture.clock_now() + 600,
                nanos: 0,
            }),
        })
        .await
        .expect("request")
        .into_inner()
        .access_package
        .expect("package");
    approver
        .access()
        .approve_access_package(proto::ApproveAccessPackageRequest {
            id: package.id.clone(),
        })
        .await
        .expect("approve");
    set_where(&mut stream, "the package's MCP grant", |set| {
        decision(set, &billing.id)
            .network_grants
            .iter()
            .any(|g| g.source == package.id)
    })
    .await;
    fixture.stop().await;
}

pub async fn a_watch_resumes_from_its_version_and_acks_show_in_get_host(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let (billing, _) = finance_agents(&admin).await;
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    let mut stream = watch(&host_clients, 0).await;
    let first = next_set(&mut stream, PUSH_DEADLINE)
        .await
        .expect("first set");
    drop(stream);

    // Resuming at the current version sends nothing until something changes.
    let mut resumed = watch(&host_clients, first.version).await;
    assert!(
        next_set(&mut resumed, Duration::from_millis(1500))
            .await
            .is_none(),
        "nothing changed: nothing is sent"
    );
    create_policy(&admin, BLOCK_EVIL).await;
    let second = next_set(&mut resumed, PUSH_DEADLINE)
        .await
        .expect("the change is pushed");
    assert!(second.version > first.version);
    assert!(!decision(&second, &billing.id).network_denials.is_empty());
    drop(resumed);

    // Resuming behind the current version gets the current set at once.
    let mut behind = watch(&host_clients, first.version).await;
    let again = next_set(&mut behind, PUSH_DEADLINE)
        .await
        .expect("caught up");
    assert_eq!(again.version, second.version);
    assert_eq!(again.issue_time, second.issue_time);

    host_clients
        .host()
        .ack_decisions(proto::AckDecisionsRequest {
            version: second.version,
        })
        .await
        .expect("AckDecisions");
    let shown = admin
        .host()
        .get_host(proto::GetHostRequest {
            id: host.host_id.clone(),
        })
        .await
        .expect("GetHost")
        .into_inner()
        .host
        .expect("host");
    assert_eq!(shown.applied_decision_version, second.version);
    assert_eq!(
        shown.applied_time.map(|t| t.seconds),
        Some(fixture.clock_now())
    );
    assert_status(
        host_clients
            .host()
            .ack_decisions(proto::AckDecisionsRequest { version: 0 })
            .await,
        Code::InvalidArgument,
        "version",
    );
    // A revoked host's watch ends.
    admin
        .host()
        .revoke_host(proto::RevokeHostRequest {
            id: host.host_id.clone(),
            reason: "decommissioned".into(),
        })
        .await
        .expect("revoke");
    let ended = tokio::time::timeout(PUSH_DEADLINE, behind.message())
        .await
        .expect("the watch ends within the deadline");
    assert!(
        matches!(&ended, Err(status) if status.code() == Code::Unauthenticated),
        "{ended:?}"
    );
    fixture.stop().await;
}

pub async fn detections_are_validated_by_field(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let (billing, _) = finance_agents(&admin).await;
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    let detection = |severity: &str, agent_id: &str| proto::HostDetection {
        agent_id: agent_id.into(),
        rule: "r".into(),
        severity: severity.into(),
        detect_time: None,
        summary: String::new(),
    };
    assert_status(
        host_clients
            .host()
            .report_detections(proto::ReportDetectionsRequest {
                detections: vec![
                    detection("low", &billing.id),
                    detection("severe", &billing.id),
                ],
            })
            .await,
        Code::InvalidArgument,
        "detections[1].severity",
    );
    assert_status(
        host_clients
            .host()
            .report_detections(proto::ReportDetectionsRequest {
                detections: vec![detection("low", "6f1c1f0e-0000-4000-8000-000000000000")],
            })
            .await,
        Code::InvalidArgument,
        "detections[0].agent_id",
    );
    let stored = admin
        .risk()
        .list_detections(proto::ListDetectionsRequest::default())
        .await
        .expect("ListDetections")
        .into_inner()
        .detections;
    assert!(
        stored.is_empty(),
        "a refused report stores nothing: {stored:?}"
    );
    fixture.stop().await;
}

/// A change made through one replica reaches a watch held by another (which polls the shared
/// database's change marker), and both replicas issue the same versions.
pub async fn a_watch_on_one_replica_gets_changes_made_through_another(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let replica = Fixture::replica_of(&fixture).await;
    let admin = fixture.admin().await;
    let (billing, _) = finance_agents(&admin).await;
    let host = enroll(&fixture, "worker-1", "").await;
    let on_replica = replica.as_token(&host.host_token).await;
    let mut stream = watch(&on_replica, 0).await;
    let first = next_set(&mut stream, PUSH_DEADLINE)
        .await
        .expect("first set");
    assert!(decision(&first, &billing.id).network_denials.is_empty());
    // The policy is created through the primary: the replica hears of it only by polling.
    create_policy(&admin, BLOCK_EVIL).await;
    let pushed = set_where(&mut stream, "the denial made on the other replica", |set| {
        !decision(set, &billing.id).network_denials.is_empty()
    })
    .await;
    assert!(pushed.version > first.version);
    // The primary serves the same version for the same content.
    let on_primary = fixture.as_token(&host.host_token).await;
    let mut primary_stream = watch(&on_primary, 0).await;
    let same = next_set(&mut primary_stream, PUSH_DEADLINE)
        .await
        .expect("current set");
    assert_eq!(same.version, pushed.version);
    drop(stream);
    drop(primary_stream);
    replica.stop().await;
    fixture.stop().await;
}

/// `agentctl policy apply` creates, then versions, the shipped example documents; what-if
/// prints the decision; a bad document fails with the field path.
pub async fn agentctl_applies_policy_files_and_explains_decisions(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    finance_agents(&admin).await;
    let token = fixture.admin_token.clone();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies");
    let egress = format!("{examples}/finance-egress.yaml");
    let office = format!("{examples}/office-hours-block.yaml");
    for (file, version) in [(&egress, "1"), (&office, "1"), (&egress, "2")] {
        let (ok, out, err) = agentctl(&fixture, &token, &["policy", "apply", file]).await;
        assert!(ok, "{file}: {err}");
        let row = out.lines().nth(1).unwrap_or_default();
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns.get(3), Some(&version), "{out}");
    }
    let (ok, out, err) = agentctl(
        &fixture,
        &token,
        &[
            "-o",
            "json",
            "policy",
            "what-if",
            "billing-bot",
            "--risk",
            "low",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let response: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(response["decision"]["action"], "ACTION_ALLOW");
    assert_eq!(response["decision"]["networkRestricted"], true);
    assert_eq!(response["riskLevel"], "low");
    let (ok, out, err) = agentctl(&fixture, &token, &["policy", "what-if", "billing-bot"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("finance-egress          enabled      applies"),
        "{out}"
    );
    let bad = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        bad.path(),
        std::fs::read_to_string(&egress).expect("example").replace(
            "riskLevels: [none, low, medium]",
            "riskLevels: [none, low, critical]",
        ),
    )
    .expect("write");
    let path = bad.path().to_str().expect("utf-8 path").to_owned();
    let (ok, _, err) = agentctl(&fixture, &token, &["policy", "apply", &path]).await;
    assert!(!ok);
    assert!(
        err.contains("field `conditions.riskLevels[2]`: unknown risk level \"critical\""),
        "{err}"
    );
    let (ok, out, err) =
        agentctl(&fixture, &token, &["policy", "versions", "finance-egress"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "a header and two versions: {out}");
    fixture.stop().await;
}

/// Time alone changes decisions: when an access package's expiry passes, the watch gets a set
/// without its grant (no write happened; the periodic re-evaluation finds it).
pub async fn a_watch_drops_a_package_grant_when_its_expiry_passes(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let (billing, _) = finance_agents(&admin).await;
    let package = admin
        .access()
        .request_access_package(proto::RequestAccessPackageRequest {
            agent_id: billing.id.clone(),
            resources: vec![proto::Resource {
                kind: proto::ResourceKind::NetworkDestination.into(),
                value: "10.9.0.0/16:5432".into(),
            }],
            justification: "migration window".into(),
            approvers: vec![],
            start_time: None,
            expire_time: Some(prost_types::Timestamp {
                seconds: fixture.clock_now() + 600,
                nanos: 0,
            }),
        })
        .await
        .expect("request")
        .into_inner()
        .access_package
        .expect("package");
    let host = enroll(&fixture, "worker-1", "").await;
    let host_clients = fixture.as_token(&host.host_token).await;
    let mut stream = watch(&host_clients, 0).await;
    let first = next_set(&mut stream, PUSH_DEADLINE)
        .await
        .expect("first set");
    let grant = decision(&first, &billing.id)
        .network_grants
        .iter()
        .find(|g| g.source == package.id)
        .expect("the package's grant")
        .clone();
    assert_eq!(
        grant.destination,
        Some(proto::network_grant::Destination::Cidr(
            "10.9.0.0/16".into()
        ))
    );
    assert_eq!(grant.ports, "5432");
    fixture.clock.advance(601);
    let later = set_where(&mut stream, "the grant gone", |set| {
        decision(set, &billing.id)
            .network_grants
            .iter()
            .all(|g| g.source != package.id)
    })
    .await;
    assert!(later.version > first.version);
    fixture.stop().await;
}

/// Hosts that no policy can tell apart share one evaluated decision set (each with its own
/// version); hosts whose named labels or names differ get their own, and a change gives every
/// host a set evaluated from the new inputs, never a shared one from before it.
pub async fn hosts_share_decisions_only_when_no_policy_tells_them_apart(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let (billing, _) = finance_agents(&admin).await;
    let prod_block = create_policy(
        &admin,
        "name: prod-block\nstate: enabled\nassignments:\n  include:\n    blueprints: [finance]\nconditions:\n  hostLabels:\n    env: prod\ncontrols:\n  block: true\n",
    )
    .await;
    create_policy(
        &admin,
        "name: named-host\nstate: enabled\nassignments:\n  include:\n    all: true\nconditions:\n  hosts: [worker-named]\ncontrols:\n  network:\n    deny:\n      - domain: evil.example\n",
    )
    .await;
    let labels = [
        ("prod-1", "prod", "a"),
        ("prod-2", "prod", "b"),
        ("dev-1", "dev", "a"),
        ("worker-named", "dev", "a"),
    ];
    let mut hosts = Vec::new();
    for (hostname, env, zone) in labels {
        let host = enroll(&fixture, hostname, "").await;
        admin
            .host()
            .set_host_labels(proto::SetHostLabelsRequest {
                id: host.host_id.clone(),
                // `zone` is named by no policy: it does not split the hosts.
                labels: [
                    ("env".to_owned(), env.to_owned()),
                    ("zone".to_owned(), zone.to_owned()),
                ]
                .into(),
            })
            .await
            .expect("SetHostLabels");
        let clients = fixture.as_token(&host.host_token).await;
        hosts.push(watch(&clients, 0).await);
    }
    let blocked =
        |set: &proto::DecisionSet| decision(set, &billing.id).action == Action::Block as i32;
    let denied = |set: &proto::DecisionSet| !decision(set, &billing.id).network_denials.is_empty();
    let prod_1 = set_where(&mut hosts[0], "the block on prod-1", blocked).await;
    let prod_2 = set_where(&mut hosts[1], "the block on prod-2", blocked).await;
    let dev = set_where(&mut hosts[2], "no block on dev-1", |s| !blocked(s)).await;
    let named = set_where(&mut hosts[3], "the denial on worker-named", denied).await;
    assert_eq!(
        prod_1.decisions, prod_2.decisions,
        "prod-1 and prod-2 share"
    );
    assert_ne!(
        prod_1.version, prod_2.version,
        "each host has its own version"
    );
    assert!(
        !denied(&prod_1) && !denied(&dev),
        "only worker-named is named"
    );
    assert!(!blocked(&named), "worker-named is not in prod");
    assert_ne!(dev.decisions, named.decisions);

    // A change: every host gets a set from the new inputs.
    set_state(&admin, &prod_block.id, PolicyState::Disabled).await;
    for (index, host) in hosts.iter_mut().take(2).enumerate() {
        let set = set_where(host, "the block lifted", |s| !blocked(s)).await;
        assert_eq!(
            set.decisions, dev.decisions,
            "host {index} now decides as dev-1"
        );
    }
    // A host's own change: dev-1 moves to prod, where the re-enabled policy blocks.
    admin
        .host()
        .set_host_labels(proto::SetHostLabelsRequest {
            id: {
                let hosts = admin
                    .host()
                    .list_hosts(proto::ListHostsRequest::default())
                    .await
                    .expect("ListHosts")
                    .into_inner()
                    .hosts;
                hosts
                    .into_iter()
                    .find(|h| h.hostname == "dev-1")
                    .expect("dev-1")
                    .id
            },
            labels: [("env".to_owned(), "prod".to_owned())].into(),
        })
        .await
        .expect("SetHostLabels");
    set_state(&admin, &prod_block.id, PolicyState::Enabled).await;
    for host in hosts.iter_mut().take(3) {
        set_where(host, "the block again", blocked).await;
    }
    fixture.stop().await;
}
