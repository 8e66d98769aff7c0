//! `PolicyService`: Conditional Access policies (YAML documents, versions, states) and what-if.

use std::collections::HashSet;

use tonic::{Request, Response, Status};

use super::{ControlPlane, decision::decision_to_proto, optional_timestamp, timestamp, validate};
use crate::{
    auth::Method,
    decisions::{self, place},
    error::{Error, quoted},
    model::PolicyRecord,
    policy::{
        PolicyDocument, PolicyState, PolicyVerdict, RiskLevel, parse_document,
        selection::{self, Registered},
    },
    proto::{self, policy_service_server::PolicyService},
    store::registry::AgentFilter,
};

fn state_to_proto(state: PolicyState) -> proto::PolicyState {
    match state {
        PolicyState::Enabled => proto::PolicyState::Enabled,
        PolicyState::ReportOnly => proto::PolicyState::ReportOnly,
        PolicyState::Disabled => proto::PolicyState::Disabled,
    }
}

fn policy_to_proto(record: PolicyRecord) -> proto::Policy {
    proto::Policy {
        id: record.id,
        name: record.name,
        description: record.description,
        state: state_to_proto(record.state).into(),
        version: u32::try_from(record.version).unwrap_or(u32::MAX),
        yaml: record.yaml,
        managed: record.managed,
        create_time: Some(timestamp(record.created_at)),
        update_time: Some(timestamp(record.updated_at)),
        updated_by: record.updated_by,
    }
}

fn verdict_to_proto(verdict: PolicyVerdict, warnings: Vec<String>) -> proto::PolicyEvaluation {
    proto::PolicyEvaluation {
        policy_id: verdict.policy_id,
        policy_name: verdict.policy_name,
        state: state_to_proto(verdict.state).into(),
        applies: verdict.applies,
        reasons: verdict.reasons,
        warnings,
    }
}

impl ControlPlane {
    /// Registered agent ids and names (deleted agents excluded), and blueprint names.
    async fn registered_names(&self) -> Result<(HashSet<String>, HashSet<String>), Error> {
        let mut agents = HashSet::new();
        for resolved in self.store.list_agents(&AgentFilter::default()).await? {
            agents.insert(resolved.agent.id);
            agents.insert(resolved.agent.name);
        }
        let blueprints = self
            .store
            .list_blueprints()
            .await?
            .into_iter()
            .map(|blueprint| blueprint.name)
            .collect();
        Ok((agents, blueprints))
    }

    /// Refuses a policy whose include names only agents and blueprints that do not exist
    /// (`FAILED_PRECONDITION`: the document is valid, the registry makes it select nothing).
    async fn refuse_selecting_nothing(&self, document: &PolicyDocument) -> Result<(), Status> {
        let include = &document.include;
        if include.all || !include.attributes.is_empty() {
            return Ok(());
        }
        let (agents, blueprints) = self.registered_names().await?;
        let agent = |name: &str| agents.contains(name);
        let blueprint = |name: &str| blueprints.contains(name);
        let registered = Registered {
            agent: &agent,
            blueprint: &blueprint,
        };
        if !selection::selects_nothing(include, &registered) {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "`assignments.include` selects no agent: {}; register the agent or blueprint \
             first, or select by attributes",
            selection::unknown_names(include, &registered).join("; ")
        ))
        .into())
    }
}

/// `expected_version`: 0 is "not checked".
fn expected(version: u32) -> Option<i64> {
    (version != 0).then(|| i64::from(version))
}

/// A policy reference: an id or a name, 1 to 63 characters.
fn reference(field: &str, value: &str) -> Result<String, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required (a policy id or name)"));
    }
    validate::text(field, value, 64)
}

/// Documents parsed at once; more wait for a permit, so that a flood of documents keeps at
/// most this many threads of the blocking pool busy.
static PARSE_PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Parses and validates a policy document on the blocking pool, never on the async workers:
/// a document may cost up to the limits of `policy::yaml_limits`, and other callers are
/// answered meanwhile.
async fn parse_off_workers(yaml: &str) -> Result<PolicyDocument, Status> {
    let _permit = PARSE_PERMITS
        .acquire()
        .await
        .map_err(|_| Status::unavailable("the server is shutting down"))?;
    let yaml = yaml.to_owned();
    tokio::task::spawn_blocking(move || parse_document(&yaml))
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "parsing a policy document");
            Status::internal("parsing the policy document failed")
        })?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl PolicyService for ControlPlane {
    async fn create_policy(
        &self,
        request: Request<proto::CreatePolicyRequest>,
    ) -> Result<Response<proto::CreatePolicyResponse>, Status> {
        let caller = self.authorize(&request, Method::CreatePolicy).await?;
        let yaml = &request.get_ref().yaml;
        let document = parse_off_workers(yaml).await?;
        self.refuse_selecting_nothing(&document).await?;
        let record = self
            .store
            .create_policy(&self.audit(&caller, Method::CreatePolicy), &document, yaml)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::CreatePolicyResponse {
            policy: Some(policy_to_proto(record)),
        }))
    }

    async fn update_policy(
        &self,
        request: Request<proto::UpdatePolicyRequest>,
    ) -> Result<Response<proto::UpdatePolicyResponse>, Status> {
        let caller = self.authorize(&request, Method::UpdatePolicy).await?;
        let request = request.get_ref();
        let document = parse_off_workers(&request.yaml).await?;
        self.refuse_selecting_nothing(&document).await?;
        let id = if request.id.is_empty() {
            document.name.clone()
        } else {
            reference("id", &request.id)?
        };
        let record = self
            .store
            .update_policy(
                &self.audit(&caller, Method::UpdatePolicy),
                &id,
                expected(request.expected_version),
                &document,
                &request.yaml,
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::UpdatePolicyResponse {
            policy: Some(policy_to_proto(record)),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<proto::GetPolicyRequest>,
    ) -> Result<Response<proto::GetPolicyResponse>, Status> {
        self.authorize(&request, Method::GetPolicy).await?;
        let id = reference("id", &request.get_ref().id)?;
        let record = self
            .store
            .get_policy(&id, i64::from(request.get_ref().version))
            .await?;
        Ok(Response::new(proto::GetPolicyResponse {
            policy: Some(policy_to_proto(record)),
        }))
    }

    async fn list_policies(
        &self,
        request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        self.authorize(&request, Method::ListPolicies).await?;
        let records = self.store.list_policies().await?;
        Ok(Response::new(proto::ListPoliciesResponse {
            policies: records.into_iter().map(policy_to_proto).collect(),
        }))
    }

    async fn list_policy_versions(
        &self,
        request: Request<proto::ListPolicyVersionsRequest>,
    ) -> Result<Response<proto::ListPolicyVersionsResponse>, Status> {
        self.authorize(&request, Method::ListPolicyVersions).await?;
        let id = reference("id", &request.get_ref().id)?;
        let records = self.store.list_policy_versions(&id).await?;
        Ok(Response::new(proto::ListPolicyVersionsResponse {
            versions: records.into_iter().map(policy_to_proto).collect(),
        }))
    }

    async fn delete_policy(
        &self,
        request: Request<proto::DeletePolicyRequest>,
    ) -> Result<Response<proto::DeletePolicyResponse>, Status> {
        let caller = self.authorize(&request, Method::DeletePolicy).await?;
        let id = reference("id", &request.get_ref().id)?;
        self.store
            .delete_policy(
                &self.audit(&caller, Method::DeletePolicy),
                &id,
                expected(request.get_ref().expected_version),
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::DeletePolicyResponse {}))
    }

    async fn set_policy_state(
        &self,
        request: Request<proto::SetPolicyStateRequest>,
    ) -> Result<Response<proto::SetPolicyStateResponse>, Status> {
        let caller = self.authorize(&request, Method::SetPolicyState).await?;
        let id = reference("id", &request.get_ref().id)?;
        let state = match validate::known_enum::<proto::PolicyState>(
            "state",
            request.get_ref().state,
            false,
        )? {
            Some(proto::PolicyState::Enabled) => PolicyState::Enabled,
            Some(proto::PolicyState::ReportOnly) => PolicyState::ReportOnly,
            Some(proto::PolicyState::Disabled) => PolicyState::Disabled,
            Some(proto::PolicyState::Unspecified) | None => {
                return Err(Error::invalid("state", "is required").into());
            }
        };
        let record = self
            .store
            .set_policy_state(
                &self.audit(&caller, Method::SetPolicyState),
                &id,
                expected(request.get_ref().expected_version),
                state,
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::SetPolicyStateResponse {
            policy: Some(policy_to_proto(record)),
        }))
    }

    async fn what_if(
        &self,
        request: Request<proto::WhatIfRequest>,
    ) -> Result<Response<proto::WhatIfResponse>, Status> {
        self.authorize(&request, Method::WhatIf).await?;
        let request = request.into_inner();
        if request.agent.is_empty() {
            return Err(Error::invalid("agent", "is required (an agent id or name)").into());
        }
        let agent_id = match uuid::Uuid::parse_str(&request.agent) {
            Ok(id) => self.store.get_agent(&id.to_string()).await?.agent.id,
            Err(_) => self
                .store
                .list_agents(&AgentFilter::default())
                .await?
                .into_iter()
                .find(|a| a.agent.name == request.agent)
                .map(|a| a.agent.id)
                .ok_or_else(|| Error::NotFound {
                    kind: "agent",
                    id: request.agent.clone(),
                })?,
        };
        let risk = if request.risk_level.is_empty() {
            None
        } else {
            Some(RiskLevel::parse(&request.risk_level).ok_or_else(|| {
                Error::invalid(
                    "risk_level",
                    format!(
                        "unknown risk level {} (none, low, medium or high)",
                        quoted(&request.risk_level)
                    ),
                )
            })?)
        };
        let host = if request.host.is_empty() {
            None
        } else {
            Some(
                self.store
                    .list_hosts(true)
                    .await?
                    .into_iter()
                    .find(|h| h.id == request.host || h.hostname == request.host)
                    .ok_or_else(|| Error::NotFound {
                        kind: "host",
                        id: request.host.clone(),
                    })?,
            )
        };
        let now =
            validate::time("eval_time", request.eval_time.as_ref())?.unwrap_or_else(|| self.now());
        let inputs =
            decisions::load_inputs(&self.store, now, self.decision_options.risk_window_seconds)
                .await?;
        let place = host.as_ref().map(place);
        let (decision, verdicts) = inputs
            .explain(&agent_id, risk, place.as_ref(), now)
            .ok_or_else(|| Error::NotFound {
                kind: "agent",
                id: agent_id.clone(),
            })?;
        let blueprints: HashSet<String> = self
            .store
            .list_blueprints()
            .await?
            .into_iter()
            .map(|blueprint| blueprint.name)
            .collect();
        let agent = |name: &str| {
            inputs
                .subjects
                .iter()
                .any(|subject| subject.id == name || subject.name == name)
        };
        let blueprint = |name: &str| blueprints.contains(name);
        let registered = Registered {
            agent: &agent,
            blueprint: &blueprint,
        };
        let evaluations = verdicts
            .into_iter()
            .map(|verdict| {
                let warnings = inputs
                    .policies
                    .policies()
                    .iter()
                    .find(|policy| policy.id == verdict.policy_id)
                    .map(|policy| selection::unknown_names(&policy.document.include, &registered))
                    .unwrap_or_default();
                verdict_to_proto(verdict, warnings)
            })
            .collect();
        Ok(Response::new(proto::WhatIfResponse {
            evaluations,
            risk_level: decision.risk.as_str().to_owned(),
            decision: Some(decision_to_proto(&decision)),
            host_id: host.map(|h| h.id).unwrap_or_default(),
            eval_time: optional_timestamp(Some(now)),
        }))
    }
}
