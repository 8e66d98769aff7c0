//! `agentctl agent`: create, inspect, update, enable, disable, reconfirm and delete agents.

use std::{collections::HashMap, path::PathBuf};

use agentd_control::proto::{self};
use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use prost_types::Timestamp;

use crate::{
    args::{GovernanceArgs, GovernanceChanges, Offline, parse_key_value, parse_when},
    client::{Clients, call},
    output::Printer,
};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ProtocolArg {
    Mcp,
    A2a,
    Http,
}

#[derive(Args)]
pub(crate) struct AgentMetadataArgs {
    /// A capability, e.g. "code-review" (repeatable).
    #[arg(long = "capability")]
    pub(crate) capabilities: Vec<String>,
    /// A task the agent performs (repeatable).
    #[arg(long = "task")]
    pub(crate) tasks: Vec<String>,
    /// A protocol the agent speaks (repeatable).
    #[arg(long = "protocol", value_enum)]
    pub(crate) protocols: Vec<ProtocolArg>,
    /// A URL the agent serves, e.g. its MCP endpoint (repeatable).
    #[arg(long = "endpoint")]
    pub(crate) endpoints: Vec<String>,
    /// A file holding the agent's A2A agent card (a JSON object).
    #[arg(long)]
    pub(crate) agent_card: Option<PathBuf>,
    /// Custom security attribute KEY=VALUE (repeatable); overrides the blueprint's.
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) attributes: Vec<(String, String)>,
}

impl AgentMetadataArgs {
    pub(crate) fn proto(&self) -> anyhow::Result<proto::AgentMetadata> {
        let agent_card_json = match &self.agent_card {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            None => String::new(),
        };
        Ok(proto::AgentMetadata {
            capabilities: self.capabilities.clone(),
            tasks: self.tasks.clone(),
            protocols: self
                .protocols
                .iter()
                .map(|protocol| {
                    match protocol {
                        ProtocolArg::Mcp => proto::Protocol::Mcp,
                        ProtocolArg::A2a => proto::Protocol::A2a,
                        ProtocolArg::Http => proto::Protocol::Http,
                    }
                    .into()
                })
                .collect(),
            endpoints: self.endpoints.clone(),
            agent_card_json,
        })
    }

    pub(crate) fn attributes(&self) -> HashMap<String, String> {
        self.attributes.iter().cloned().collect()
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum StateArg {
    Created,
    Active,
    Disabled,
    Expired,
    Deleted,
}

#[derive(Subcommand)]
pub(crate) enum AgentCommand {
    /// Register an agent (state CREATED; enable it to make it ACTIVE).
    Create {
        /// Agent name: 1 to 63 of a-z, 0-9 and -; unique.
        name: String,
        /// The blueprint whose defaults it inherits.
        #[arg(long)]
        blueprint: String,
        /// A sponsor (a person or group answering for the agent); at least one (repeatable).
        #[arg(long = "sponsor", required = true)]
        sponsors: Vec<String>,
        /// An owner (administers the agent) (repeatable; default: the sponsors).
        #[arg(long = "owner")]
        owners: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        metadata: AgentMetadataArgs,
        #[command(flatten)]
        governance: GovernanceArgs,
        /// Expiry: an RFC 3339 time or +DURATION from now (e.g. +30d). Default: from the
        /// lifetime, or never.
        #[arg(long, value_parser = parse_when)]
        expires: Option<Timestamp>,
    },
    /// Show one agent, with what it inherits.
    Get { id: String },
    /// List agents (all but deleted ones, unless --state says otherwise).
    List {
        #[arg(long)]
        blueprint: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only agents this principal sponsors or owns.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Change an agent's description, attributes, metadata, governance settings, expiry or
    /// offline behaviour.
    ///
    /// Only what you pass changes: a list flag given (e.g. --capability, --attribute) replaces
    /// that whole list, flags not given keep their current value.
    Update {
        id: String,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        metadata: AgentMetadataArgs,
        #[command(flatten)]
        governance: GovernanceChanges,
        /// New expiry: an RFC 3339 time or +DURATION from now.
        #[arg(long, value_parser = parse_when, conflicts_with = "no_expiry")]
        expires: Option<Timestamp>,
        /// Remove the expiry: the agent never expires.
        #[arg(long)]
        no_expiry: bool,
        #[arg(long, value_enum)]
        offline: Option<Offline>,
    },
    /// Delete an agent (terminal; its record and audit trail stay).
    Delete { id: String },
    /// Make an agent ACTIVE (also counts as a reconfirmation).
    Enable { id: String },
    /// Disable an agent.
    Disable {
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Reconfirm that a sponsor still answers for the agent.
    Reconfirm { id: String },
    #[command(flatten)]
    Risk(crate::conditional::RiskCommand),
}

pub(crate) fn state_filter(state: Option<StateArg>) -> i32 {
    state
        .map_or(proto::AgentState::Unspecified, |state| match state {
            StateArg::Created => proto::AgentState::Created,
            StateArg::Active => proto::AgentState::Active,
            StateArg::Disabled => proto::AgentState::Disabled,
            StateArg::Expired => proto::AgentState::Expired,
            StateArg::Deleted => proto::AgentState::Deleted,
        })
        .into()
}

#[allow(
    clippy::too_many_lines,
    reason = "one arm per agent command: splitting it would scatter the CLI"
)]
pub(crate) async fn agent(
    clients: &Clients,
    out: &Printer,
    command: AgentCommand,
) -> anyhow::Result<()> {
    let mut registry = clients.registry();
    let mut governance = clients.governance();
    match command {
        AgentCommand::Create {
            name,
            blueprint,
            sponsors,
            owners,
            description,
            metadata,
            governance: settings,
            expires,
        } => {
            let response = call(registry.create_agent(proto::CreateAgentRequest {
                name,
                description,
                blueprint,
                attributes: metadata.attributes(),
                metadata: Some(metadata.proto()?),
                sponsors,
                owners,
                governance: Some(settings.proto()),
                expire_time: expires,
            }))
            .await?;
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Get { id } => {
            let response = call(registry.get_agent(proto::GetAgentRequest { id })).await?;
            out.agent_detail(&response, response.agent.as_ref())
        }
        AgentCommand::List {
            blueprint,
            state,
            principal,
        } => {
            let response = call(registry.list_agents(proto::ListAgentsRequest {
                blueprint: blueprint.unwrap_or_default(),
                state: state_filter(state),
                principal: principal.unwrap_or_default(),
            }))
            .await?;
            out.agents(&response, &response.agents)
        }
        AgentCommand::Update {
            id,
            description,
            metadata,
            governance: changes,
            expires,
            no_expiry,
            offline,
        } => {
            let current = call(registry.get_agent(proto::GetAgentRequest { id: id.clone() }))
                .await?
                .agent
                .context("the server returned no agent")?;
            let mut new_metadata = current.metadata.clone().unwrap_or_default();
            let given = metadata.proto()?;
            if !given.capabilities.is_empty() {
                new_metadata.capabilities = given.capabilities;
            }
            if !given.tasks.is_empty() {
                new_metadata.tasks = given.tasks;
            }
            if !given.protocols.is_empty() {
                new_metadata.protocols = given.protocols;
            }
            if !given.endpoints.is_empty() {
                new_metadata.endpoints = given.endpoints;
            }
            if metadata.agent_card.is_some() {
                new_metadata.agent_card_json = given.agent_card_json;
            }
            let attributes = if metadata.attributes.is_empty() {
                current.attributes.clone()
            } else {
                metadata.attributes()
            };
            let response = call(registry.update_agent(proto::UpdateAgentRequest {
                id,
                description: description.unwrap_or(current.description),
                attributes,
                metadata: Some(new_metadata),
                governance: Some(changes.apply(current.governance)),
                expire_time: if no_expiry {
                    None
                } else {
                    expires.or(current.expire_time)
                },
                offline_behavior: offline.map_or(current.offline_behavior, |o| o.proto().into()),
            }))
            .await?;
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Risk(command) => crate::conditional::risk(clients, out, command).await,
        AgentCommand::Delete { id } => {
            let response = call(registry.delete_agent(proto::DeleteAgentRequest { id })).await?;
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Enable { id } => {
            let response = call(governance.enable_agent(proto::EnableAgentRequest { id })).await?;
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Disable { id, reason } => {
            let response =
                call(governance.disable_agent(proto::DisableAgentRequest { id, reason })).await?;
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Reconfirm { id } => {
            let response =
                call(governance.reconfirm_agent(proto::ReconfirmAgentRequest { id })).await?;
            out.agents(&response, response.agent.as_slice())
        }
    }
}
