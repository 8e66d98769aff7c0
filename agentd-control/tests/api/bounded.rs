//! Every request's work is bounded, not only its bytes (issue 17, item 1), and a policy that
//! could select nothing is refused (item 8).

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use agentd_control::proto;
use tonic::Code;

use crate::support::{
    Backend, Clients, Fixture, agent_request, assert_status, blueprint, create_agent,
    create_blueprint, enroll,
};

/// How long a refusal of a hostile document may take, end to end.
const REFUSAL_DEADLINE: Duration = Duration::from_millis(100);

/// 1,000 scalars under one anchor and 1,000 aliases of it: 8 KiB of text that stands for a
/// million nodes, each of which the deserializer would build.
fn alias_bomb() -> String {
    let mut yaml = String::from(
        "name: bomb\nstate: enabled\nassignments:\n  include:\n    attributes:\n      a: &a [",
    );
    yaml.push_str(&vec!["x"; 1000].join(","));
    yaml.push_str("]\n      b: [");
    yaml.push_str(&vec!["*a"; 1000].join(","));
    yaml.push_str("]\ncontrols: {block: true}\n");
    yaml
}

fn deep_nesting() -> String {
    format!(
        "name: deep\nstate: enabled\nassignments:\n  include:\n    blueprints: {}x{}\ncontrols: {{block: true}}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    )
}

/// Creates the policy and returns the refusal and how long it took.
async fn refused(admin: &Clients, yaml: String) -> (tonic::Status, Duration) {
    let started = Instant::now();
    let result = admin
        .policy()
        .create_policy(proto::CreatePolicyRequest { yaml })
        .await;
    let elapsed = started.elapsed();
    (result.expect_err("a hostile document is refused"), elapsed)
}

pub async fn alias_bombs_and_deep_nesting_are_refused_quickly_while_others_are_answered(
    backend: Backend,
) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let bomb = alias_bomb();
    assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
    // The channel is connected and the token's row read before anything is timed.
    admin
        .auth()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("WhoAmI");
    // Alone, each is refused within the deadline, naming where the limit was passed.
    let (status, elapsed) = refused(&admin, bomb.clone()).await;
    println!("  alias bomb refused in {elapsed:?}");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("field `assignments.include.attributes.b["),
        "{status:?}"
    );
    assert!(
        status.message().contains("more than 100000 nodes"),
        "{status:?}"
    );
    assert!(elapsed < REFUSAL_DEADLINE, "{elapsed:?}");
    let (status, elapsed) = refused(&admin, deep_nesting()).await;
    println!("  10,000-deep nesting refused in {elapsed:?}");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("field `assignments.include.blueprints[0]"),
        "{status:?}"
    );
    assert!(
        status.message().contains("deeper than 32 levels"),
        "{status:?}"
    );
    assert!(elapsed < REFUSAL_DEADLINE, "{elapsed:?}");
    // Eight at once, and another caller is answered meanwhile.
    let mut hostile = Vec::new();
    for index in 0..8 {
        let admin = admin.clone();
        let yaml = if index % 2 == 0 {
            alias_bomb()
        } else {
            deep_nesting()
        };
        hostile.push(tokio::spawn(async move { refused(&admin, yaml).await }));
    }
    let started = Instant::now();
    let me = admin
        .auth()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("WhoAmI while hostile documents are parsed")
        .into_inner();
    let answered = started.elapsed();
    println!("  another caller answered in {answered:?} meanwhile");
    assert_eq!(me.principal, "root@example.com");
    assert!(answered < REFUSAL_DEADLINE, "{answered:?}");
    for task in hostile {
        let (status, elapsed) = task.await.expect("hostile request task");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(elapsed < 4 * REFUSAL_DEADLINE, "{elapsed:?}");
    }
    fixture.stop().await;
}

pub async fn duplicate_keys_are_refused_in_nested_maps(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("finance")).await;
    let base = "name: dup\nstate: enabled\nassignments:\n  include:\n    blueprints: [finance]\n";
    for (yaml, field) in [
        (
            format!(
                "{base}    attributes:\n      dept: finance\n      dept: audit\ncontrols: {{block: true}}\n"
            ),
            "assignments.include.attributes.dept",
        ),
        (
            format!(
                "{base}conditions:\n  hostLabels: {{env: prod, 'env': dev}}\ncontrols: {{block: true}}\n"
            ),
            "conditions.hostLabels.env",
        ),
        (
            format!(
                "{base}controls:\n  files:\n    - path: /srv/a\n      access: [write]\n      action: deny\n      action: allow\n"
            ),
            "controls.files[0].action",
        ),
        (
            format!("{base}controls: {{block: true}}\nstate: disabled\n"),
            "state",
        ),
    ] {
        assert_status(
            admin
                .policy()
                .create_policy(proto::CreatePolicyRequest { yaml })
                .await,
            Code::InvalidArgument,
            &format!("field `{field}`: is given twice"),
        );
    }
    fixture.stop().await;
}

pub async fn repeated_fields_past_their_cap_are_refused_naming_field_and_cap(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let host = enroll(&fixture, "capped.example", "").await;
    let as_host = fixture.as_token(&host.host_token).await;
    // 50,000 ids (1.9 MB, under the 4 MiB message limit): each would cost three queries.
    let agent_ids: Vec<String> = (0..50_000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let started = Instant::now();
    assert_status(
        as_host
            .host()
            .report_agents(proto::ReportAgentsRequest { agent_ids })
            .await,
        Code::InvalidArgument,
        "field `agent_ids`: has 50000 entries; at most 4096 are allowed",
    );
    let elapsed = started.elapsed();
    println!("  50,000 reported agents refused in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    create_blueprint(&admin, blueprint("web")).await;
    let sponsors: Vec<String> = (0..65).map(|i| format!("s{i}@example.com")).collect();
    let mut request = agent_request("crowded", "web", &[]);
    request.sponsors = sponsors;
    assert_status(
        admin.registry().create_agent(request).await,
        Code::InvalidArgument,
        "field `sponsors`: has 65 entries; at most 64 are allowed",
    );
    let mut wide = blueprint("wide");
    wide.baseline_policy = Some(proto::BaselinePolicy {
        protected_paths: (0..1001).map(|i| format!("/srv/{i}")).collect(),
        ..Default::default()
    });
    assert_status(
        admin
            .registry()
            .create_blueprint(proto::CreateBlueprintRequest {
                blueprint: Some(wide),
            })
            .await,
        Code::InvalidArgument,
        "field `blueprint.baseline_policy.protected_paths`: has 1001 entries; at most 1000",
    );
    fixture.stop().await;
}

pub async fn errors_quote_a_bounded_prefix_of_what_was_sent(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let long = "Q".repeat(200_000);
    let result = admin
        .registry()
        .get_agent(proto::GetAgentRequest { id: long.clone() })
        .await;
    let status = result.expect_err("not a UUID");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().len() < 200, "{}", status.message().len());
    assert!(
        status
            .message()
            .contains(&format!("\"{}…\"", "Q".repeat(64)))
    );
    let mut yaml = String::from("name: long\nstate: enabled\nassignments:\n  include:\n    all: ");
    let _ = writeln!(yaml, "{long}\ncontrols: {{block: true}}");
    let status = admin
        .policy()
        .create_policy(proto::CreatePolicyRequest { yaml })
        .await
        .expect_err("not a boolean");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().len() < 400, "{}", status.message());
    fixture.stop().await;
}

pub async fn a_policy_selecting_only_unknown_names_is_refused_and_what_if_warns(backend: Backend) {
    let fixture = Fixture::start(&backend).await;
    let admin = fixture.admin().await;
    let ghost = "name: ghost\nstate: enabled\nassignments:\n  include:\n    agents: [ghost-bot]\n    blueprints: [nowhere]\ncontrols: {block: true}\n";
    assert_status(
        admin
            .policy()
            .create_policy(proto::CreatePolicyRequest { yaml: ghost.into() })
            .await,
        Code::FailedPrecondition,
        "`assignments.include` selects no agent: assignments.include.agents names \"ghost-bot\"",
    );
    create_blueprint(&admin, blueprint("finance")).await;
    let pay = create_agent(
        &admin,
        agent_request("pay-bot", "finance", &["ann@example.com"]),
    )
    .await;
    let temp = create_agent(
        &admin,
        agent_request("temp-bot", "finance", &["ann@example.com"]),
    )
    .await;
    // A known name beside an unknown one is accepted; so is a policy naming an agent that is
    // deleted later. What-if warns about both.
    for yaml in [
        "name: partly\nstate: enabled\nassignments:\n  include:\n    agents: [pay-bot, ghost-bot]\ncontrols: {block: true}\n",
        "name: temporary\nstate: reportOnly\nassignments:\n  include:\n    agents: [temp-bot]\ncontrols: {block: true}\n",
    ] {
        admin
            .policy()
            .create_policy(proto::CreatePolicyRequest { yaml: yaml.into() })
            .await
            .expect("CreatePolicy");
    }
    admin
        .registry()
        .delete_agent(proto::DeleteAgentRequest { id: temp.id })
        .await
        .expect("DeleteAgent");
    let response = admin
        .policy()
        .what_if(proto::WhatIfRequest {
            agent: pay.id.clone(),
            ..Default::default()
        })
        .await
        .expect("WhatIf")
        .into_inner();
    let warnings = |name: &str| {
        response
            .evaluations
            .iter()
            .find(|e| e.policy_name == name)
            .unwrap_or_else(|| panic!("{name} in {response:?}"))
            .warnings
            .clone()
    };
    assert_eq!(
        warnings("partly"),
        [
            "assignments.include.agents names \"ghost-bot\", which is no registered agent's id or name"
        ]
    );
    assert_eq!(
        warnings("temporary"),
        [
            "assignments.include.agents names \"temp-bot\", which is no registered agent's id or name"
        ]
    );
    assert!(warnings("block-high-risk-agents").is_empty());
    // Updating the partly-known policy to name only the ghost is refused too.
    assert_status(
        admin
            .policy()
            .update_policy(proto::UpdatePolicyRequest {
                id: "partly".into(),
                yaml: ghost.replace("name: ghost", "name: partly"),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "selects no agent",
    );
    fixture.stop().await;
}
