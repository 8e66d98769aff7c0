//! Every RPC's request validation, through the real service over a real (`SQLite`) store: the
//! first byte picks a method, the rest is decoded as its request message and sent with an
//! admin token (host methods: an enrolled host's token). Any request is answered, with a
//! status or a response, and never panics or runs away (libFuzzer's `-timeout` and
//! `-rss_limit_mb` flag a request that costs more).
#![no_main]

use std::sync::{Arc, OnceLock};

use agentd_control::{
    api::ControlPlane,
    clock::{Clock as _, SystemClock},
    model::Role,
    proto::{
        self, access_service_server::AccessService, audit_service_server::AuditService,
        auth_service_server::AuthService, credential_service_server::CredentialService,
        governance_service_server::GovernanceService, host_service_server::HostService,
        policy_service_server::PolicyService, registry_service_server::RegistryService,
        risk_service_server::RiskService,
    },
    server::{Server, ServerOptions},
    store::{AuditContext, Store},
};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    control: ControlPlane,
    admin: String,
    host: String,
    _dir: tempfile::TempDir,
}

/// `message` with `token` as its bearer credential.
fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    request
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}/control.db", dir.path().display());
        let (control, admin, host) = runtime.block_on(async {
            let store = Store::connect(&url).await.expect("the store");
            let clock = Arc::new(SystemClock);
            let server = Server::new(store.clone(), clock.clone(), ServerOptions::default())
                .await
                .expect("the server");
            let control = server.control().clone();
            let audit = AuditContext {
                actor: "fuzz".into(),
                action: "CreateApiToken",
                now: clock.now(),
            };
            let (_, admin) = store
                .create_api_token(&audit, "fuzz", Role::Admin, "root@example.com")
                .await
                .expect("an admin token");
            let join = control
                .create_join_token(authed(proto::CreateJoinTokenRequest::default(), &admin))
                .await
                .expect("a join token")
                .into_inner()
                .token;
            let host = control
                .enroll_host(tonic::Request::new(proto::EnrollHostRequest {
                    join_token: join,
                    hostname: "fuzz-host".into(),
                    ..Default::default()
                }))
                .await
                .expect("an enrolled host")
                .into_inner()
                .host_token;
            (control, admin, host)
        });
        Fixture {
            runtime,
            control,
            admin,
            host,
            _dir: dir,
        }
    })
}

/// Decodes `body` as `$request` and calls `$method` of `$service` with `$token`; the answer
/// is dropped (a status is a fine answer).
macro_rules! methods {
    ($fixture:expr, $selector:expr, $body:expr; $($service:ident :: $method:ident ($request:ident, $token:ident)),+ $(,)?) => {{
        let methods: &[&str] = &[$(stringify!($method)),+];
        let mut index = usize::from($selector) % methods.len();
        $(
            if index == 0 {
                if let Ok(message) = <proto::$request as prost::Message>::decode($body) {
                    let _ = <ControlPlane as $service>::$method(
                        &$fixture.control,
                        authed(message, &$fixture.$token),
                    )
                    .await;
                }
                return;
            }
            index -= 1;
        )+
        let _ = index;
    }};
}

async fn call(fixture: &Fixture, selector: u8, body: &[u8]) {
    methods!(fixture, selector, body;
        AuditService::list_audit_events(ListAuditEventsRequest, admin),
        AuthService::create_api_token(CreateApiTokenRequest, admin),
        AuthService::list_api_tokens(ListApiTokensRequest, admin),
        AuthService::revoke_api_token(RevokeApiTokenRequest, admin),
        AuthService::who_am_i(WhoAmIRequest, admin),
        RegistryService::create_blueprint(CreateBlueprintRequest, admin),
        RegistryService::get_blueprint(GetBlueprintRequest, admin),
        RegistryService::list_blueprints(ListBlueprintsRequest, admin),
        RegistryService::update_blueprint(UpdateBlueprintRequest, admin),
        RegistryService::delete_blueprint(DeleteBlueprintRequest, admin),
        RegistryService::create_agent(CreateAgentRequest, admin),
        RegistryService::get_agent(GetAgentRequest, admin),
        RegistryService::list_agents(ListAgentsRequest, admin),
        RegistryService::update_agent(UpdateAgentRequest, admin),
        RegistryService::delete_agent(DeleteAgentRequest, admin),
        GovernanceService::enable_agent(EnableAgentRequest, admin),
        GovernanceService::disable_agent(DisableAgentRequest, admin),
        GovernanceService::reconfirm_agent(ReconfirmAgentRequest, admin),
        GovernanceService::add_principal(AddPrincipalRequest, admin),
        GovernanceService::remove_principal(RemovePrincipalRequest, admin),
        GovernanceService::list_alerts(ListAlertsRequest, admin),
        GovernanceService::run_sweep(RunSweepRequest, admin),
        HostService::create_join_token(CreateJoinTokenRequest, admin),
        HostService::enroll_host(EnrollHostRequest, admin),
        HostService::heartbeat(HeartbeatRequest, host),
        HostService::report_agents(ReportAgentsRequest, host),
        HostService::get_host(GetHostRequest, admin),
        HostService::list_hosts(ListHostsRequest, admin),
        HostService::revoke_host(RevokeHostRequest, admin),
        HostService::set_host_labels(SetHostLabelsRequest, admin),
        HostService::watch_decisions(WatchDecisionsRequest, host),
        HostService::ack_decisions(AckDecisionsRequest, host),
        HostService::report_detections(ReportDetectionsRequest, host),
        RiskService::get_agent_risk(GetAgentRiskRequest, admin),
        RiskService::list_detections(ListDetectionsRequest, admin),
        RiskService::confirm_agent_compromised(ConfirmAgentCompromisedRequest, admin),
        RiskService::confirm_agent_safe(ConfirmAgentSafeRequest, admin),
        PolicyService::create_policy(CreatePolicyRequest, admin),
        PolicyService::update_policy(UpdatePolicyRequest, admin),
        PolicyService::get_policy(GetPolicyRequest, admin),
        PolicyService::list_policies(ListPoliciesRequest, admin),
        PolicyService::list_policy_versions(ListPolicyVersionsRequest, admin),
        PolicyService::delete_policy(DeletePolicyRequest, admin),
        PolicyService::set_policy_state(SetPolicyStateRequest, admin),
        PolicyService::what_if(WhatIfRequest, admin),
        AccessService::request_access_package(RequestAccessPackageRequest, admin),
        AccessService::approve_access_package(ApproveAccessPackageRequest, admin),
        AccessService::deny_access_package(DenyAccessPackageRequest, admin),
        AccessService::revoke_access_package(RevokeAccessPackageRequest, admin),
        AccessService::get_access_package(GetAccessPackageRequest, admin),
        AccessService::list_access_packages(ListAccessPackagesRequest, admin),
        HostService::sign_agent_svid(SignAgentSvidRequest, host),
        HostService::sign_agent_jwt(SignAgentJwtRequest, host),
        HostService::get_jwt_bundle(GetJwtBundleRequest, host),
        HostService::renew_host_certificate(RenewHostCertificateRequest, host),
        CredentialService::rotate_jwt_signing_key(RotateJwtSigningKeyRequest, admin),
        CredentialService::list_jwt_signing_keys(ListJwtSigningKeysRequest, admin),
        CredentialService::retire_jwt_signing_key(RetireJwtSigningKeyRequest, admin),
        CredentialService::rotate_certificate_authority(RotateCertificateAuthorityRequest, admin),
        CredentialService::list_certificate_authorities(ListCertificateAuthoritiesRequest, admin),
        CredentialService::retire_certificate_authority(RetireCertificateAuthorityRequest, admin),
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    fixture.runtime.block_on(call(fixture, selector, body));
});
