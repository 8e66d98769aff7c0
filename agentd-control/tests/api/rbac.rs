//! The RBAC matrix, tested over gRPC: every method of every service, called with every role.
//! The expected matrix is written out here independently of the server's table (and matches
//! docs/control-plane.md); the descriptor set proves no method is left out.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use agentd_control::{auth::Method, proto};
use prost::Message as _;
use tonic::{Code, Status};

use crate::support::{
    Backend, Clients, Fixture, agent_request, blueprint, create_agent, create_blueprint, enroll,
};

const ADMIN: &str = "admin";
const SPONSOR: &str = "sponsor";
const AUDITOR: &str = "auditor";
const HOST: &str = "host";
const ROLES: [&str; 4] = [ADMIN, SPONSOR, AUDITOR, HOST];

/// Who may call what. `EnrollHost` needs no role: its credential is the join token.
const MATRIX: &[(&str, &[&str])] = &[
    ("RegistryService/CreateBlueprint", &[ADMIN]),
    ("RegistryService/GetBlueprint", &[ADMIN, SPONSOR, AUDITOR]),
    ("RegistryService/ListBlueprints", &[ADMIN, SPONSOR, AUDITOR]),
    ("RegistryService/UpdateBlueprint", &[ADMIN]),
    ("RegistryService/DeleteBlueprint", &[ADMIN]),
    ("RegistryService/CreateAgent", &[ADMIN]),
    ("RegistryService/GetAgent", &[ADMIN, SPONSOR, AUDITOR]),
    ("RegistryService/ListAgents", &[ADMIN, SPONSOR, AUDITOR]),
    ("RegistryService/UpdateAgent", &[ADMIN, SPONSOR]),
    ("RegistryService/DeleteAgent", &[ADMIN]),
    ("GovernanceService/EnableAgent", &[ADMIN, SPONSOR]),
    ("GovernanceService/DisableAgent", &[ADMIN, SPONSOR]),
    ("GovernanceService/ReconfirmAgent", &[ADMIN, SPONSOR]),
    ("GovernanceService/AddPrincipal", &[ADMIN]),
    ("GovernanceService/RemovePrincipal", &[ADMIN]),
    ("GovernanceService/ListAlerts", &[ADMIN, SPONSOR, AUDITOR]),
    ("GovernanceService/RunSweep", &[ADMIN]),
    ("AccessService/RequestAccessPackage", &[ADMIN, SPONSOR]),
    ("AccessService/ApproveAccessPackage", &[ADMIN, SPONSOR]),
    ("AccessService/DenyAccessPackage", &[ADMIN, SPONSOR]),
    ("AccessService/RevokeAccessPackage", &[ADMIN]),
    ("AccessService/GetAccessPackage", &[ADMIN, SPONSOR, AUDITOR]),
    (
        "AccessService/ListAccessPackages",
        &[ADMIN, SPONSOR, AUDITOR],
    ),
    ("AuditService/ListAuditEvents", &[ADMIN, AUDITOR]),
    ("HostService/CreateJoinToken", &[ADMIN]),
    ("HostService/EnrollHost", &[ADMIN, SPONSOR, AUDITOR, HOST]),
    ("HostService/Heartbeat", &[HOST]),
    ("HostService/ReportAgents", &[HOST]),
    ("HostService/GetHost", &[ADMIN, AUDITOR]),
    ("HostService/ListHosts", &[ADMIN, SPONSOR, AUDITOR]),
    ("HostService/RevokeHost", &[ADMIN]),
    ("HostService/SetHostLabels", &[ADMIN]),
    ("HostService/WatchDecisions", &[HOST]),
    ("HostService/AckDecisions", &[HOST]),
    ("HostService/ReportDetections", &[HOST]),
    ("HostService/SignAgentSvid", &[HOST]),
    ("HostService/SignAgentJwt", &[HOST]),
    ("HostService/GetJwtBundle", &[HOST]),
    ("HostService/RenewHostCertificate", &[HOST]),
    ("CredentialService/RotateJwtSigningKey", &[ADMIN]),
    ("CredentialService/ListJwtSigningKeys", &[ADMIN, AUDITOR]),
    ("CredentialService/RetireJwtSigningKey", &[ADMIN]),
    ("CredentialService/RotateCertificateAuthority", &[ADMIN]),
    (
        "CredentialService/ListCertificateAuthorities",
        &[ADMIN, AUDITOR],
    ),
    ("CredentialService/RetireCertificateAuthority", &[ADMIN]),
    ("PolicyService/CreatePolicy", &[ADMIN]),
    ("PolicyService/UpdatePolicy", &[ADMIN]),
    ("PolicyService/GetPolicy", &[ADMIN, AUDITOR]),
    ("PolicyService/ListPolicies", &[ADMIN, AUDITOR]),
    ("PolicyService/ListPolicyVersions", &[ADMIN, AUDITOR]),
    ("PolicyService/DeletePolicy", &[ADMIN]),
    ("PolicyService/SetPolicyState", &[ADMIN]),
    ("PolicyService/WhatIf", &[ADMIN, AUDITOR]),
    ("RiskService/GetAgentRisk", &[ADMIN, SPONSOR, AUDITOR]),
    ("RiskService/ListDetections", &[ADMIN, SPONSOR, AUDITOR]),
    ("RiskService/ConfirmAgentCompromised", &[ADMIN]),
    ("RiskService/ConfirmAgentSafe", &[ADMIN]),
    ("AuthService/CreateApiToken", &[ADMIN]),
    ("AuthService/ListApiTokens", &[ADMIN, AUDITOR]),
    ("AuthService/RevokeApiToken", &[ADMIN]),
    ("AuthService/WhoAmI", &[ADMIN, SPONSOR, AUDITOR, HOST]),
];

/// Every `Service/Method` in the compiled proto files.
fn methods_in_descriptor() -> BTreeSet<String> {
    let set =
        prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    set.file
        .iter()
        .filter(|file| file.package() == "agentd.v1")
        .flat_map(|file| &file.service)
        .flat_map(|service| {
            service
                .method
                .iter()
                .map(move |method| format!("{}/{}", service.name(), method.name()))
        })
        .collect()
}

/// Objects the calls refer to, so that allowed calls have something real to act on. Calls
/// that destroy something (revoke, delete, remove) act on `victim_*` objects, so that later
/// calls of other roles still have valid credentials.
struct Objects {
    agent_id: String,
    victim_agent_id: String,
    package_id: String,
    host_id: String,
    victim_host_id: String,
    victim_token_id: String,
    join_tokens: Mutex<Vec<String>>,
}

#[allow(
    clippy::wildcard_imports,
    reason = "one request type per line of the table: the prefix would hide them"
)]
async fn call(method: &str, c: &Clients, o: &Objects) -> Result<(), Status> {
    use proto::*;
    match method {
        "RegistryService/CreateBlueprint" => c
            .registry()
            .create_blueprint(CreateBlueprintRequest {
                blueprint: Some(blueprint(&format!("bp-{}", uuid::Uuid::new_v4().simple()))),
            })
            .await
            .map(drop),
        "RegistryService/GetBlueprint" => c
            .registry()
            .get_blueprint(GetBlueprintRequest {
                name: "base".into(),
            })
            .await
            .map(drop),
        "RegistryService/ListBlueprints" => c
            .registry()
            .list_blueprints(ListBlueprintsRequest {})
            .await
            .map(drop),
        "RegistryService/UpdateBlueprint" => c
            .registry()
            .update_blueprint(UpdateBlueprintRequest {
                blueprint: Some(blueprint("base")),
            })
            .await
            .map(drop),
        "RegistryService/DeleteBlueprint" => c
            .registry()
            .delete_blueprint(DeleteBlueprintRequest {
                name: "spare".into(),
            })
            .await
            .map(drop),
        "RegistryService/CreateAgent" => c
            .registry()
            .create_agent(agent_request(
                &format!("a-{}", uuid::Uuid::new_v4().simple()),
                "base",
                &["alice@example.com"],
            ))
            .await
            .map(drop),
        "RegistryService/GetAgent" => c
            .registry()
            .get_agent(GetAgentRequest {
                id: o.agent_id.clone(),
            })
            .await
            .map(drop),
        "RegistryService/ListAgents" => c
            .registry()
            .list_agents(ListAgentsRequest::default())
            .await
            .map(drop),
        "RegistryService/UpdateAgent" => c
            .registry()
            .update_agent(UpdateAgentRequest {
                id: o.agent_id.clone(),
                description: "updated".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RegistryService/DeleteAgent" => c
            .registry()
            .delete_agent(DeleteAgentRequest {
                id: o.victim_agent_id.clone(),
            })
            .await
            .map(drop),
        "GovernanceService/EnableAgent" => c
            .governance()
            .enable_agent(EnableAgentRequest {
                id: o.agent_id.clone(),
            })
            .await
            .map(drop),
        "GovernanceService/DisableAgent" => c
            .governance()
            .disable_agent(DisableAgentRequest {
                id: o.agent_id.clone(),
                reason: "rbac test".into(),
            })
            .await
            .map(drop),
        "GovernanceService/ReconfirmAgent" => c
            .governance()
            .reconfirm_agent(ReconfirmAgentRequest {
                id: o.agent_id.clone(),
            })
            .await
            .map(drop),
        "GovernanceService/AddPrincipal" => c
            .governance()
            .add_principal(AddPrincipalRequest {
                agent_id: o.victim_agent_id.clone(),
                relation: PrincipalRelation::Owner.into(),
                principal: "carol@example.com".into(),
            })
            .await
            .map(drop),
        "GovernanceService/RemovePrincipal" => c
            .governance()
            .remove_principal(RemovePrincipalRequest {
                agent_id: o.victim_agent_id.clone(),
                relation: PrincipalRelation::Owner.into(),
                principal: "carol@example.com".into(),
                reassign_to: String::new(),
            })
            .await
            .map(drop),
        "GovernanceService/ListAlerts" => c
            .governance()
            .list_alerts(ListAlertsRequest::default())
            .await
            .map(drop),
        "GovernanceService/RunSweep" => {
            c.governance().run_sweep(RunSweepRequest {}).await.map(drop)
        }
        "AccessService/RequestAccessPackage" => c
            .access()
            .request_access_package(RequestAccessPackageRequest {
                agent_id: o.agent_id.clone(),
                resources: vec![Resource {
                    kind: ResourceKind::FilePath.into(),
                    value: "/srv/data".into(),
                }],
                justification: "rbac test".into(),
                approvers: vec!["alice@example.com".into()],
                start_time: None,
                expire_time: Some(prost_types::Timestamp {
                    seconds: crate::support::real_now() + 3600,
                    nanos: 0,
                }),
            })
            .await
            .map(drop),
        "AccessService/ApproveAccessPackage" => c
            .access()
            .approve_access_package(ApproveAccessPackageRequest {
                id: o.package_id.clone(),
            })
            .await
            .map(drop),
        "AccessService/DenyAccessPackage" => c
            .access()
            .deny_access_package(DenyAccessPackageRequest {
                id: o.package_id.clone(),
                reason: String::new(),
            })
            .await
            .map(drop),
        "AccessService/RevokeAccessPackage" => c
            .access()
            .revoke_access_package(RevokeAccessPackageRequest {
                id: o.package_id.clone(),
                reason: String::new(),
            })
            .await
            .map(drop),
        "AccessService/GetAccessPackage" => c
            .access()
            .get_access_package(GetAccessPackageRequest {
                id: o.package_id.clone(),
            })
            .await
            .map(drop),
        "AccessService/ListAccessPackages" => c
            .access()
            .list_access_packages(ListAccessPackagesRequest::default())
            .await
            .map(drop),
        "AuditService/ListAuditEvents" => c
            .audit()
            .list_audit_events(ListAuditEventsRequest::default())
            .await
            .map(drop),
        "HostService/CreateJoinToken" => c
            .host()
            .create_join_token(CreateJoinTokenRequest {
                ttl_seconds: 60,
                description: String::new(),
                ..Default::default()
            })
            .await
            .map(drop),
        "HostService/EnrollHost" => {
            let (token, left) = {
                let mut tokens = o.join_tokens.lock().expect("lock");
                let token = tokens.pop().expect("a spare join token");
                (token, tokens.len())
            };
            c.host()
                .enroll_host(EnrollHostRequest {
                    join_token: token,
                    // Hostnames are unique among enrolled hosts.
                    hostname: format!("rbac-host-{left}"),
                    csr_pem: String::new(),
                    agentd_version: String::new(),
                })
                .await
                .map(drop)
        }
        "HostService/Heartbeat" => c
            .host()
            .heartbeat(HeartbeatRequest::default())
            .await
            .map(drop),
        "HostService/ReportAgents" => c
            .host()
            .report_agents(ReportAgentsRequest {
                agent_ids: vec![o.agent_id.clone()],
            })
            .await
            .map(drop),
        "HostService/GetHost" => c
            .host()
            .get_host(GetHostRequest {
                id: o.host_id.clone(),
            })
            .await
            .map(drop),
        "HostService/ListHosts" => c
            .host()
            .list_hosts(ListHostsRequest::default())
            .await
            .map(drop),
        "HostService/RevokeHost" => c
            .host()
            .revoke_host(RevokeHostRequest {
                id: o.victim_host_id.clone(),
                reason: String::new(),
            })
            .await
            .map(drop),
        "HostService/SetHostLabels" => c
            .host()
            .set_host_labels(SetHostLabelsRequest {
                id: o.host_id.clone(),
                labels: [("env".to_owned(), "prod".to_owned())].into(),
            })
            .await
            .map(drop),
        "HostService/WatchDecisions" => c
            .host()
            .watch_decisions(WatchDecisionsRequest { after_version: 0 })
            .await
            .map(drop),
        "HostService/AckDecisions" => c
            .host()
            .ack_decisions(AckDecisionsRequest { version: 1 })
            .await
            .map(drop),
        "HostService/ReportDetections" => c
            .host()
            .report_detections(ReportDetectionsRequest {
                detections: vec![HostDetection {
                    agent_id: o.agent_id.clone(),
                    rule: "rbac".into(),
                    severity: "low".into(),
                    detect_time: None,
                    summary: String::new(),
                }],
            })
            .await
            .map(drop),
        "HostService/SignAgentSvid" => c
            .host()
            .sign_agent_svid(SignAgentSvidRequest {
                agent_id: o.agent_id.clone(),
                csr_pem: new_csr(),
            })
            .await
            .map(drop),
        "HostService/SignAgentJwt" => c
            .host()
            .sign_agent_jwt(SignAgentJwtRequest {
                agent_id: o.agent_id.clone(),
                audience: vec!["rbac".to_owned()],
            })
            .await
            .map(drop),
        "HostService/GetJwtBundle" => c
            .host()
            .get_jwt_bundle(GetJwtBundleRequest {})
            .await
            .map(drop),
        "HostService/RenewHostCertificate" => c
            .host()
            .renew_host_certificate(RenewHostCertificateRequest { csr_pem: new_csr() })
            .await
            .map(drop),
        "PolicyService/CreatePolicy" => c
            .policy()
            .create_policy(CreatePolicyRequest {
                yaml: policy_yaml(&format!("p-{}", uuid::Uuid::new_v4().simple())),
            })
            .await
            .map(drop),
        "PolicyService/UpdatePolicy" => c
            .policy()
            .update_policy(UpdatePolicyRequest {
                id: String::new(),
                yaml: policy_yaml("rbac-policy"),
                expected_version: 0,
            })
            .await
            .map(drop),
        "PolicyService/GetPolicy" => c
            .policy()
            .get_policy(GetPolicyRequest {
                id: "rbac-policy".into(),
                version: 0,
            })
            .await
            .map(drop),
        "PolicyService/ListPolicies" => c
            .policy()
            .list_policies(ListPoliciesRequest {})
            .await
            .map(drop),
        "PolicyService/ListPolicyVersions" => c
            .policy()
            .list_policy_versions(ListPolicyVersionsRequest {
                id: "rbac-policy".into(),
            })
            .await
            .map(drop),
        "PolicyService/DeletePolicy" => c
            .policy()
            .delete_policy(DeletePolicyRequest {
                id: "victim-policy".into(),
                expected_version: 0,
            })
            .await
            .map(drop),
        "PolicyService/SetPolicyState" => c
            .policy()
            .set_policy_state(SetPolicyStateRequest {
                id: "rbac-policy".into(),
                state: PolicyState::ReportOnly.into(),
                expected_version: 0,
            })
            .await
            .map(drop),
        "PolicyService/WhatIf" => c
            .policy()
            .what_if(WhatIfRequest {
                agent: o.agent_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RiskService/GetAgentRisk" => c
            .risk()
            .get_agent_risk(GetAgentRiskRequest {
                agent_id: o.agent_id.clone(),
            })
            .await
            .map(drop),
        "RiskService/ListDetections" => c
            .risk()
            .list_detections(ListDetectionsRequest::default())
            .await
            .map(drop),
        "RiskService/ConfirmAgentCompromised" => c
            .risk()
            .confirm_agent_compromised(ConfirmAgentCompromisedRequest {
                agent_id: o.agent_id.clone(),
                reason: "rbac".into(),
            })
            .await
            .map(drop),
        "RiskService/ConfirmAgentSafe" => c
            .risk()
            .confirm_agent_safe(ConfirmAgentSafeRequest {
                agent_id: o.agent_id.clone(),
                reason: "rbac".into(),
            })
            .await
            .map(drop),
        "AuthService/CreateApiToken" => c
            .auth()
            .create_api_token(CreateApiTokenRequest {
                name: "rbac".into(),
                role: Role::Auditor.into(),
                principal: "dave@example.com".into(),
            })
            .await
            .map(drop),
        "AuthService/ListApiTokens" => c
            .auth()
            .list_api_tokens(ListApiTokensRequest {})
            .await
            .map(drop),
        "AuthService/RevokeApiToken" => c
            .auth()
            .revoke_api_token(RevokeApiTokenRequest {
                id: o.victim_token_id.clone(),
            })
            .await
            .map(drop),
        "AuthService/WhoAmI" => c.auth().who_am_i(WhoAmIRequest {}).await.map(drop),
        "CredentialService/RotateJwtSigningKey" => c
            .credential()
            .rotate_jwt_signing_key(RotateJwtSigningKeyRequest {
                activate_after_seconds: Some(600),
            })
            .await
            .map(drop),
        "CredentialService/ListJwtSigningKeys" => c
            .credential()
            .list_jwt_signing_keys(ListJwtSigningKeysRequest {})
            .await
            .map(drop),
        "CredentialService/RetireJwtSigningKey" => c
            .credential()
            .retire_jwt_signing_key(RetireJwtSigningKeyRequest {
                kid: "00".into(),
                force: false,
            })
            .await
            .map(drop),
        "CredentialService/RotateCertificateAuthority" => c
            .credential()
            .rotate_certificate_authority(RotateCertificateAuthorityRequest {
                activate_after_seconds: Some(86_400),
            })
            .await
            .map(drop),
        "CredentialService/ListCertificateAuthorities" => c
            .credential()
            .list_certificate_authorities(ListCertificateAuthoritiesRequest {})
            .await
            .map(drop),
        "CredentialService/RetireCertificateAuthority" => c
            .credential()
            .retire_certificate_authority(RetireCertificateAuthorityRequest {
                id: "00".into(),
                force: false,
            })
            .await
            .map(drop),
        other => panic!("the RBAC test has no call for {other}: add one"),
    }
}

/// A minimal valid policy document.
fn policy_yaml(name: &str) -> String {
    format!(
        "name: {name}\nstate: reportOnly\nassignments:\n  include: {{all: true}}\ncontrols:\n  block: true\n"
    )
}

async fn objects(fixture: &Fixture) -> Objects {
    let admin = fixture.admin().await;
    for name in ["rbac-policy", "victim-policy"] {
        admin
            .policy()
            .create_policy(proto::CreatePolicyRequest {
                yaml: policy_yaml(name),
            })
            .await
            .expect("CreatePolicy");
    }
    create_blueprint(&admin, blueprint("base")).await;
    create_blueprint(&admin, blueprint("spare")).await;
    let agent = create_agent(
        &admin,
        agent_request("subject", "base", &["alice@example.com"]),
    )
    .await;
    let victim = create_agent(
        &admin,
        agent_request("victim", "base", &["alice@example.com"]),
    )
    .await;
    // Two stages: alice's (the sponsor role may decide it), then security's (admins may decide
    // any stage of a request that is not their own).
    let package = admin
        .access()
        .request_access_package(proto::RequestAccessPackageRequest {
            agent_id: agent.id.clone(),
            resources: vec![proto::Resource {
                kind: proto::ResourceKind::NetworkDestination.into(),
                value: "api.example.com:443".into(),
            }],
            justification: "rbac test".into(),
            approvers: vec!["alice@example.com".into(), "security@example.com".into()],
            start_time: None,
            expire_time: Some(prost_types::Timestamp {
                seconds: crate::support::real_now() + 3600,
                nanos: 0,
            }),
        })
        .await
        .expect("RequestAccessPackage")
        .into_inner();
    let host = enroll(fixture, "host-1", "").await;
    let victim_host = enroll(fixture, "host-2", "").await;
    let victim_token = admin
        .auth()
        .create_api_token(proto::CreateApiTokenRequest {
            name: "victim".into(),
            role: proto::Role::Auditor.into(),
            principal: "eve@example.com".into(),
        })
        .await
        .expect("CreateApiToken")
        .into_inner();
    let mut join_tokens = Vec::new();
    for _ in 0..8 {
        join_tokens.push(
            admin
                .host()
                .create_join_token(proto::CreateJoinTokenRequest {
                    ttl_seconds: 600,
                    description: String::new(),
                    ..Default::default()
                })
                .await
                .expect("CreateJoinToken")
                .into_inner()
                .token,
        );
    }
    Objects {
        agent_id: agent.id,
        victim_agent_id: victim.id,
        package_id: package.access_package.expect("package").id,
        host_id: host.host_id,
        victim_host_id: victim_host.host_id,
        victim_token_id: victim_token.api_token.expect("token").id,
        join_tokens: Mutex::new(join_tokens),
    }
}

pub async fn every_method_with_every_role_is_allowed_or_denied_as_documented(backend: Backend) {
    let in_descriptor = methods_in_descriptor();
    let in_matrix: BTreeSet<String> = MATRIX.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(
        in_descriptor, in_matrix,
        "the test's matrix must list every RPC in the proto"
    );
    let in_server: BTreeSet<String> = Method::ALL.iter().map(|m| m.path().to_owned()).collect();
    assert_eq!(
        in_descriptor, in_server,
        "auth::Method must list every RPC in the proto"
    );

    let fixture = Fixture::start(&backend).await;
    let o = Arc::new(objects(&fixture).await);
    // The caller of the host role: a host of its own (RevokeHost acts on another).
    let host_token = enroll(&fixture, "host-3", "").await;
    // It runs the subject agent, so that its detections for it are accepted.
    fixture
        .as_token(&host_token.host_token)
        .await
        .host()
        .report_agents(proto::ReportAgentsRequest {
            agent_ids: vec![o.agent_id.clone()],
        })
        .await
        .expect("ReportAgents");
    let tokens = [
        (ADMIN, fixture.admin_token.clone()),
        (
            SPONSOR,
            fixture
                .token(proto::Role::Sponsor, "alice@example.com")
                .await,
        ),
        (
            AUDITOR,
            fixture
                .token(proto::Role::Auditor, "audrey@example.com")
                .await,
        ),
        (HOST, host_token.host_token.clone()),
    ];
    let mut checked = 0;
    for (method, allowed) in MATRIX {
        for (role, token) in &tokens {
            assert!(ROLES.contains(role));
            let clients = fixture.as_token(token).await;
            let result = call(method, &clients, &o).await;
            let denied = matches!(&result, Err(s) if s.code() == Code::PermissionDenied && s.message().contains("may not call"));
            if allowed.contains(role) {
                // Allowed by role. The call may still fail for other reasons (a state that
                // forbids it, or an object-level rule such as "stage 2 is for another approver",
                // tested in cases), but never with the role denial or as unauthenticated.
                assert!(
                    !denied,
                    "{role} must be allowed to call {method}: {result:?}"
                );
                if let Err(status) = &result {
                    assert_ne!(
                        status.code(),
                        Code::Unauthenticated,
                        "{role} calling {method}: {status:?}"
                    );
                }
            } else {
                assert!(denied, "{role} must be denied {method}, got {result:?}");
                let status = result.expect_err("denied");
                assert!(
                    status.message().contains(method),
                    "the denial names the method: {status:?}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, MATRIX.len() * ROLES.len());
    fixture.stop().await;
}

pub async fn calls_without_a_valid_token_are_unauthenticated(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let o = objects(&fixture).await;
    let anonymous = fixture.anonymous().await;
    let forged = fixture.as_token("agentd_0000000000000000").await;
    for (method, _) in MATRIX {
        if *method == "HostService/EnrollHost" {
            continue; // Its credential is the join token (tested in cases).
        }
        for clients in [&anonymous, &forged] {
            let result = call(method, clients, &o).await;
            match result {
                Err(status) if status.code() == Code::Unauthenticated => {}
                other => {
                    panic!("{method} without a valid token must be UNAUTHENTICATED, got {other:?}")
                }
            }
        }
    }
    fixture.stop().await;
}

/// A CSR (PEM) for a fresh key.
fn new_csr() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("PEM")
}
