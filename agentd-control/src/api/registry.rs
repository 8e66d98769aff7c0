//! `RegistryService`: blueprints and agents.

use tonic::{Request, Response, Status};

use super::{
    ControlPlane, ensure_answers_for, limits, optional_timestamp, required, timestamp, validate,
};
use crate::{
    auth::Method,
    credentials,
    error::Error,
    model::{
        AgentMetadata, AgentState, AgentUpdate, BaselinePolicy, Blueprint, BlueprintSpec,
        DefaultAction, DiscoveryRule, GovernanceSettings, NewAgent, OfflineBehavior, Protocol,
        ResolvedAgent, SvidLifetimes,
    },
    proto::{self, registry_service_server::RegistryService},
    store::registry::AgentFilter,
};

type Result<T, E = Error> = std::result::Result<T, E>;

/// A blueprint's SVID lifetime: 0 (the control plane's) or within `range`.
fn svid_lifetime(field: &str, seconds: u32, range: std::ops::RangeInclusive<i64>) -> Result<u32> {
    if seconds == 0 || range.contains(&i64::from(seconds)) {
        return Ok(seconds);
    }
    Err(Error::invalid(
        field,
        format!(
            "{seconds} s is outside {} to {} s (0: the control plane's default)",
            range.start(),
            range.end()
        ),
    ))
}

fn discovery_rules(field: &str, rules: &[proto::DiscoveryRule]) -> Result<Vec<DiscoveryRule>> {
    limits::at_most(field, rules.len(), limits::DISCOVERY_RULES)?;
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let field = format!("{field}[{index}]");
            if rule.exe_path.is_empty() && rule.comm.is_empty() && rule.cgroup_path.is_empty() {
                return Err(Error::invalid(
                    field,
                    "needs at least one of exe_path, comm and cgroup_path",
                ));
            }
            let exe_path = if rule.exe_path.is_empty() {
                String::new()
            } else {
                validate::absolute_path(&format!("{field}.exe_path"), &rule.exe_path)?
            };
            if rule.comm.len() > 15 {
                return Err(Error::invalid(
                    format!("{field}.comm"),
                    "is longer than 15 bytes (the kernel's comm length)",
                ));
            }
            let comm = validate::text(&format!("{field}.comm"), &rule.comm, 15)?;
            let cgroup_path = if rule.cgroup_path.is_empty() {
                String::new()
            } else {
                validate::absolute_path(&format!("{field}.cgroup_path"), &rule.cgroup_path)?
            };
            Ok(DiscoveryRule {
                exe_path,
                comm,
                cgroup_path,
            })
        })
        .collect()
}

fn baseline(field: &str, policy: Option<&proto::BaselinePolicy>) -> Result<BaselinePolicy> {
    let Some(policy) = policy else {
        return Ok(BaselinePolicy::default());
    };
    let network_default = match validate::known_enum::<proto::DefaultAction>(
        &format!("{field}.network_default"),
        policy.network_default,
        true,
    )? {
        None | Some(proto::DefaultAction::Allow | proto::DefaultAction::Unspecified) => {
            DefaultAction::Allow
        }
        Some(proto::DefaultAction::Deny) => DefaultAction::Deny,
    };
    limits::at_most(
        &format!("{field}.allowed_destinations"),
        policy.allowed_destinations.len(),
        limits::BASELINE_ENTRIES,
    )?;
    limits::at_most(
        &format!("{field}.protected_paths"),
        policy.protected_paths.len(),
        limits::BASELINE_ENTRIES,
    )?;
    let allowed_destinations = policy
        .allowed_destinations
        .iter()
        .enumerate()
        .map(|(index, value)| {
            validate::destination(&format!("{field}.allowed_destinations[{index}]"), value)
        })
        .collect::<Result<_>>()?;
    let protected_paths = policy
        .protected_paths
        .iter()
        .enumerate()
        .map(|(index, value)| {
            validate::absolute_path(&format!("{field}.protected_paths[{index}]"), value)
        })
        .collect::<Result<_>>()?;
    Ok(BaselinePolicy {
        network_default,
        allowed_destinations,
        protected_paths,
    })
}

fn offline_from_proto(field: &str, value: i32) -> Result<OfflineBehavior> {
    Ok(
        match validate::known_enum::<proto::OfflineBehavior>(field, value, true)? {
            None | Some(proto::OfflineBehavior::Unspecified) => OfflineBehavior::Inherit,
            Some(proto::OfflineBehavior::LastKnown) => OfflineBehavior::LastKnown,
            Some(proto::OfflineBehavior::FailClosed) => OfflineBehavior::FailClosed,
            Some(proto::OfflineBehavior::Baseline) => OfflineBehavior::Baseline,
        },
    )
}

pub(super) fn offline_to_proto(value: OfflineBehavior) -> proto::OfflineBehavior {
    match value {
        OfflineBehavior::Inherit => proto::OfflineBehavior::Unspecified,
        OfflineBehavior::LastKnown => proto::OfflineBehavior::LastKnown,
        OfflineBehavior::FailClosed => proto::OfflineBehavior::FailClosed,
        OfflineBehavior::Baseline => proto::OfflineBehavior::Baseline,
    }
}

const MAX_DAYS: u32 = 36_500;
const MAX_OFFLINE_TTL_SECONDS: u32 = 30 * 24 * 3600;

fn governance(
    field: &str,
    settings: Option<&proto::GovernanceSettings>,
) -> Result<GovernanceSettings> {
    let Some(settings) = settings else {
        return Ok(GovernanceSettings::default());
    };
    for (name, value) in [
        ("lifetime_days", settings.lifetime_days),
        ("reconfirm_every_days", settings.reconfirm_every_days),
        ("inactivity_disable_days", settings.inactivity_disable_days),
    ] {
        if value > MAX_DAYS {
            return Err(Error::invalid(
                format!("{field}.{name}"),
                format!("{value} is more than {MAX_DAYS} days"),
            ));
        }
    }
    Ok(GovernanceSettings {
        lifetime_days: settings.lifetime_days,
        reconfirm_every_days: settings.reconfirm_every_days,
        inactivity_disable_days: settings.inactivity_disable_days,
    })
}

fn governance_to_proto(settings: GovernanceSettings) -> proto::GovernanceSettings {
    proto::GovernanceSettings {
        lifetime_days: settings.lifetime_days,
        reconfirm_every_days: settings.reconfirm_every_days,
        inactivity_disable_days: settings.inactivity_disable_days,
    }
}

fn metadata(field: &str, metadata: Option<&proto::AgentMetadata>) -> Result<AgentMetadata> {
    let Some(metadata) = metadata else {
        return Ok(AgentMetadata::default());
    };
    for (name, len) in [
        ("protocols", metadata.protocols.len()),
        ("endpoints", metadata.endpoints.len()),
    ] {
        limits::at_most(&format!("{field}.{name}"), len, limits::METADATA_ENTRIES)?;
    }
    let protocols = metadata
        .protocols
        .iter()
        .enumerate()
        .map(|(index, &value)| {
            let field = format!("{field}.protocols[{index}]");
            match validate::known_enum::<proto::Protocol>(&field, value, false)? {
                Some(proto::Protocol::Mcp) => Ok(Protocol::Mcp),
                Some(proto::Protocol::A2a) => Ok(Protocol::A2a),
                Some(proto::Protocol::Http) => Ok(Protocol::Http),
                _ => Err(Error::invalid(field, "is required")),
            }
        })
        .collect::<Result<_>>()?;
    Ok(AgentMetadata {
        capabilities: validate::short_list(
            &format!("{field}.capabilities"),
            &metadata.capabilities,
        )?,
        tasks: validate::short_list(&format!("{field}.tasks"), &metadata.tasks)?,
        protocols,
        endpoints: metadata
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, value)| validate::url(&format!("{field}.endpoints[{index}]"), value))
            .collect::<Result<_>>()?,
        agent_card_json: validate::json_object(
            &format!("{field}.agent_card_json"),
            &metadata.agent_card_json,
        )?,
    })
}

fn metadata_to_proto(metadata: &AgentMetadata) -> proto::AgentMetadata {
    proto::AgentMetadata {
        capabilities: metadata.capabilities.clone(),
        tasks: metadata.tasks.clone(),
        protocols: metadata
            .protocols
            .iter()
            .map(|protocol| {
                match protocol {
                    Protocol::Mcp => proto::Protocol::Mcp,
                    Protocol::A2a => proto::Protocol::A2a,
                    Protocol::Http => proto::Protocol::Http,
                }
                .into()
            })
            .collect(),
        endpoints: metadata.endpoints.clone(),
        agent_card_json: metadata.agent_card_json.clone(),
    }
}

/// Validates a blueprint message into its name, description and spec.
fn blueprint_from_proto(
    blueprint: Option<proto::Blueprint>,
) -> Result<(String, String, BlueprintSpec)> {
    let blueprint = required("blueprint", blueprint)?;
    let name = validate::identifier("blueprint.name", &blueprint.name)?;
    let description = validate::text("blueprint.description", &blueprint.description, 1024)?;
    let offline = offline_from_proto("blueprint.offline_behavior", blueprint.offline_behavior)?;
    let spec = BlueprintSpec {
        discovery_rules: discovery_rules("blueprint.discovery_rules", &blueprint.discovery_rules)?,
        baseline_policy: baseline(
            "blueprint.baseline_policy",
            blueprint.baseline_policy.as_ref(),
        )?,
        attributes: validate::attributes("blueprint.attributes", &blueprint.attributes)?,
        offline_behavior: (offline != OfflineBehavior::Inherit).then_some(offline),
        governance: governance("blueprint.governance", blueprint.governance.as_ref())?,
        offline_ttl_seconds: match blueprint.offline_ttl_seconds {
            ttl if ttl > MAX_OFFLINE_TTL_SECONDS => {
                return Err(Error::invalid(
                    "blueprint.offline_ttl_seconds",
                    format!("{ttl} is more than {MAX_OFFLINE_TTL_SECONDS} (30 days)"),
                ));
            }
            ttl => ttl,
        },
        svid_lifetimes: SvidLifetimes {
            x509_seconds: svid_lifetime(
                "blueprint.x509_svid_ttl_seconds",
                blueprint.x509_svid_ttl_seconds,
                credentials::X509_SVID_TTL_RANGE,
            )?,
            jwt_seconds: svid_lifetime(
                "blueprint.jwt_svid_ttl_seconds",
                blueprint.jwt_svid_ttl_seconds,
                credentials::JWT_SVID_TTL_RANGE,
            )?,
        },
    };
    Ok((name, description, spec))
}

pub(super) fn blueprint_to_proto(blueprint: &Blueprint) -> proto::Blueprint {
    let spec = &blueprint.spec;
    proto::Blueprint {
        name: blueprint.name.clone(),
        description: blueprint.description.clone(),
        discovery_rules: spec
            .discovery_rules
            .iter()
            .map(|rule| proto::DiscoveryRule {
                exe_path: rule.exe_path.clone(),
                comm: rule.comm.clone(),
                cgroup_path: rule.cgroup_path.clone(),
            })
            .collect(),
        baseline_policy: Some(proto::BaselinePolicy {
            network_default: match spec.baseline_policy.network_default {
                DefaultAction::Allow => proto::DefaultAction::Allow,
                DefaultAction::Deny => proto::DefaultAction::Deny,
            }
            .into(),
            allowed_destinations: spec.baseline_policy.allowed_destinations.clone(),
            protected_paths: spec.baseline_policy.protected_paths.clone(),
        }),
        attributes: spec.attributes.clone().into_iter().collect(),
        offline_behavior: offline_to_proto(
            spec.offline_behavior.unwrap_or(OfflineBehavior::LastKnown),
        )
        .into(),
        governance: Some(governance_to_proto(spec.governance)),
        create_time: Some(timestamp(blueprint.created_at)),
        update_time: Some(timestamp(blueprint.updated_at)),
        offline_ttl_seconds: spec.offline_ttl_seconds,
        x509_svid_ttl_seconds: spec.svid_lifetimes.x509_seconds,
        jwt_svid_ttl_seconds: spec.svid_lifetimes.jwt_seconds,
    }
}

pub(super) fn state_to_proto(state: AgentState) -> proto::AgentState {
    match state {
        AgentState::Created => proto::AgentState::Created,
        AgentState::Active => proto::AgentState::Active,
        AgentState::Disabled => proto::AgentState::Disabled,
        AgentState::Expired => proto::AgentState::Expired,
        AgentState::Deleted => proto::AgentState::Deleted,
    }
}

pub(super) fn agent_to_proto(resolved: &ResolvedAgent) -> proto::Agent {
    let agent = &resolved.agent;
    proto::Agent {
        id: agent.id.clone(),
        name: agent.name.clone(),
        description: agent.description.clone(),
        blueprint: agent.blueprint.clone(),
        attributes: agent.attributes.clone().into_iter().collect(),
        effective_attributes: resolved.effective_attributes.clone().into_iter().collect(),
        metadata: Some(metadata_to_proto(&agent.metadata)),
        sponsors: agent.sponsors.clone(),
        owners: agent.owners.clone(),
        state: state_to_proto(agent.state).into(),
        disabled_reason: agent.disabled_reason.clone(),
        governance: Some(governance_to_proto(agent.governance)),
        expire_time: optional_timestamp(agent.expires_at),
        last_reconfirm_time: Some(timestamp(agent.last_reconfirm_at)),
        last_active_time: optional_timestamp(agent.last_active_at),
        effective_offline_behavior: offline_to_proto(resolved.effective_offline_behavior).into(),
        offline_behavior: offline_to_proto(agent.offline_behavior).into(),
        create_time: Some(timestamp(agent.created_at)),
        update_time: Some(timestamp(agent.updated_at)),
    }
}

fn new_agent(request: &proto::CreateAgentRequest) -> Result<NewAgent> {
    limits::at_most("sponsors", request.sponsors.len(), limits::PRINCIPALS)?;
    limits::at_most("owners", request.owners.len(), limits::PRINCIPALS)?;
    let sponsors = validate::principals("sponsors", &request.sponsors)?;
    if sponsors.is_empty() {
        return Err(Error::invalid(
            "sponsors",
            "at least one sponsor is required",
        ));
    }
    Ok(NewAgent {
        name: validate::identifier("name", &request.name)?,
        description: validate::text("description", &request.description, 1024)?,
        blueprint: validate::identifier("blueprint", &request.blueprint)?,
        attributes: validate::attributes("attributes", &request.attributes)?,
        metadata: metadata("metadata", request.metadata.as_ref())?,
        sponsors,
        owners: validate::principals("owners", &request.owners)?,
        governance: governance("governance", request.governance.as_ref())?,
        expires_at: validate::time("expire_time", request.expire_time.as_ref())?,
    })
}

fn agent_update(request: &proto::UpdateAgentRequest) -> Result<AgentUpdate> {
    Ok(AgentUpdate {
        id: validate::uuid("id", &request.id)?,
        description: validate::text("description", &request.description, 1024)?,
        attributes: validate::attributes("attributes", &request.attributes)?,
        metadata: metadata("metadata", request.metadata.as_ref())?,
        governance: governance("governance", request.governance.as_ref())?,
        expires_at: validate::time("expire_time", request.expire_time.as_ref())?,
        offline_behavior: offline_from_proto("offline_behavior", request.offline_behavior)?,
    })
}

pub(super) fn agent_state_filter(field: &str, value: i32) -> Result<Option<AgentState>> {
    Ok(
        match validate::known_enum::<proto::AgentState>(field, value, true)? {
            None | Some(proto::AgentState::Unspecified) => None,
            Some(proto::AgentState::Created) => Some(AgentState::Created),
            Some(proto::AgentState::Active) => Some(AgentState::Active),
            Some(proto::AgentState::Disabled) => Some(AgentState::Disabled),
            Some(proto::AgentState::Expired) => Some(AgentState::Expired),
            Some(proto::AgentState::Deleted) => Some(AgentState::Deleted),
        },
    )
}

#[tonic::async_trait]
impl RegistryService for ControlPlane {
    async fn create_blueprint(
        &self,
        request: Request<proto::CreateBlueprintRequest>,
    ) -> Result<Response<proto::CreateBlueprintResponse>, Status> {
        let caller = self.authorize(&request, Method::CreateBlueprint).await?;
        let (name, description, spec) = blueprint_from_proto(request.into_inner().blueprint)?;
        let blueprint = self
            .store
            .create_blueprint(
                &self.audit(&caller, Method::CreateBlueprint),
                name,
                description,
                spec,
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::CreateBlueprintResponse {
            blueprint: Some(blueprint_to_proto(&blueprint)),
        }))
    }

    async fn get_blueprint(
        &self,
        request: Request<proto::GetBlueprintRequest>,
    ) -> Result<Response<proto::GetBlueprintResponse>, Status> {
        self.authorize(&request, Method::GetBlueprint).await?;
        let name = validate::identifier("name", &request.get_ref().name)?;
        let blueprint = self.store.get_blueprint(&name).await?;
        Ok(Response::new(proto::GetBlueprintResponse {
            blueprint: Some(blueprint_to_proto(&blueprint)),
        }))
    }

    async fn list_blueprints(
        &self,
        request: Request<proto::ListBlueprintsRequest>,
    ) -> Result<Response<proto::ListBlueprintsResponse>, Status> {
        self.authorize(&request, Method::ListBlueprints).await?;
        let blueprints = self.store.list_blueprints().await?;
        Ok(Response::new(proto::ListBlueprintsResponse {
            blueprints: blueprints.iter().map(blueprint_to_proto).collect(),
        }))
    }

    async fn update_blueprint(
        &self,
        request: Request<proto::UpdateBlueprintRequest>,
    ) -> Result<Response<proto::UpdateBlueprintResponse>, Status> {
        let caller = self.authorize(&request, Method::UpdateBlueprint).await?;
        let (name, description, spec) = blueprint_from_proto(request.into_inner().blueprint)?;
        let blueprint = self
            .store
            .update_blueprint(
                &self.audit(&caller, Method::UpdateBlueprint),
                &name,
                description,
                spec,
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::UpdateBlueprintResponse {
            blueprint: Some(blueprint_to_proto(&blueprint)),
        }))
    }

    async fn delete_blueprint(
        &self,
        request: Request<proto::DeleteBlueprintRequest>,
    ) -> Result<Response<proto::DeleteBlueprintResponse>, Status> {
        let caller = self.authorize(&request, Method::DeleteBlueprint).await?;
        let name = validate::identifier("name", &request.get_ref().name)?;
        self.store
            .delete_blueprint(&self.audit(&caller, Method::DeleteBlueprint), &name)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::DeleteBlueprintResponse {}))
    }

    async fn create_agent(
        &self,
        request: Request<proto::CreateAgentRequest>,
    ) -> Result<Response<proto::CreateAgentResponse>, Status> {
        let caller = self.authorize(&request, Method::CreateAgent).await?;
        let new = new_agent(request.get_ref())?;
        if new.expires_at.is_some_and(|at| at <= self.now()) {
            return Err(Error::invalid("expire_time", "is not in the future").into());
        }
        let agent = self
            .store
            .create_agent(&self.audit(&caller, Method::CreateAgent), new)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::CreateAgentResponse {
            agent: Some(agent_to_proto(&agent)),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<proto::GetAgentRequest>,
    ) -> Result<Response<proto::GetAgentResponse>, Status> {
        self.authorize(&request, Method::GetAgent).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let agent = self.store.get_agent(&id).await?;
        Ok(Response::new(proto::GetAgentResponse {
            agent: Some(agent_to_proto(&agent)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<proto::ListAgentsRequest>,
    ) -> Result<Response<proto::ListAgentsResponse>, Status> {
        self.authorize(&request, Method::ListAgents).await?;
        let request = request.into_inner();
        let filter = AgentFilter {
            blueprint: if request.blueprint.is_empty() {
                None
            } else {
                Some(validate::identifier("blueprint", &request.blueprint)?)
            },
            state: agent_state_filter("state", request.state)?,
            principal: if request.principal.is_empty() {
                None
            } else {
                Some(validate::principal("principal", &request.principal)?)
            },
        };
        let agents = self.store.list_agents(&filter).await?;
        Ok(Response::new(proto::ListAgentsResponse {
            agents: agents.iter().map(agent_to_proto).collect(),
        }))
    }

    async fn update_agent(
        &self,
        request: Request<proto::UpdateAgentRequest>,
    ) -> Result<Response<proto::UpdateAgentResponse>, Status> {
        let caller = self.authorize(&request, Method::UpdateAgent).await?;
        let update = agent_update(request.get_ref())?;
        if caller.role != crate::model::Role::Admin {
            let current = self.store.get_agent(&update.id).await?;
            if !current.agent.is_owner(&caller.principal) {
                return Err(Status::permission_denied(format!(
                    "{} is not an owner of agent {}",
                    caller.principal, update.id
                )));
            }
            crate::duties::check_owner_update(&current.agent, &update)?;
        }
        let agent = self
            .store
            .update_agent(&self.audit(&caller, Method::UpdateAgent), update)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::UpdateAgentResponse {
            agent: Some(agent_to_proto(&agent)),
        }))
    }

    async fn delete_agent(
        &self,
        request: Request<proto::DeleteAgentRequest>,
    ) -> Result<Response<proto::DeleteAgentResponse>, Status> {
        let caller = self.authorize(&request, Method::DeleteAgent).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let current = self.store.get_agent(&id).await?;
        ensure_answers_for(&caller, &current.agent)?;
        let agent = self
            .store
            .delete_agent(&self.audit(&caller, Method::DeleteAgent), &id)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::DeleteAgentResponse {
            agent: Some(agent_to_proto(&agent)),
        }))
    }
}
