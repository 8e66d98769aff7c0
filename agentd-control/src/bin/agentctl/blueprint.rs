//! `agentctl blueprint`: templates whose defaults agents inherit.

use agentd_control::proto::{self};
use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::{
    args::{GovernanceArgs, GovernanceChanges, NetworkDefault, Offline, parse_key_value},
    client::{Clients, call},
    output::Printer,
};

/// Blueprint settings to change: unset flags keep the current value; a list flag given
/// replaces that list.
#[derive(Args)]
pub(crate) struct BlueprintChanges {
    pub(crate) name: String,
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// Discovery rules: executable paths (replaces all discovery rules if any --discover-* is given).
    #[arg(long = "discover-exe", value_name = "PATH")]
    pub(crate) discover_exe: Vec<String>,
    /// Discovery rules: process names.
    #[arg(long = "discover-comm", value_name = "COMM")]
    pub(crate) discover_comm: Vec<String>,
    /// Discovery rules: cgroup paths.
    #[arg(long = "discover-cgroup", value_name = "PATH")]
    pub(crate) discover_cgroup: Vec<String>,
    /// Remove every discovery rule.
    #[arg(long)]
    pub(crate) clear_discovery: bool,
    #[arg(long, value_enum)]
    pub(crate) network_default: Option<NetworkDefault>,
    /// Baseline allowed destinations (replaces the list).
    #[arg(long = "allow", value_name = "DESTINATION")]
    pub(crate) allow: Vec<String>,
    /// Baseline protected paths (replaces the list).
    #[arg(long = "protect", value_name = "PATH")]
    pub(crate) protect: Vec<String>,
    /// Custom security attributes KEY=VALUE (replaces them all).
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) attributes: Vec<(String, String)>,
    #[arg(long, value_enum)]
    pub(crate) offline: Option<Offline>,
    /// Seconds decisions may age offline before fail-closed blocks and baseline falls back
    /// (0: the default, 900).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) offline_ttl: Option<u32>,
    #[command(flatten)]
    pub(crate) svid: SvidLifetimeArgs,
    #[command(flatten)]
    pub(crate) governance: GovernanceChanges,
}

impl BlueprintChanges {
    pub(crate) fn apply(self, mut blueprint: proto::Blueprint) -> proto::Blueprint {
        if let Some(description) = self.description {
            blueprint.description = description;
        }
        let rules = discovery_rules(self.discover_exe, self.discover_comm, self.discover_cgroup);
        if self.clear_discovery || !rules.is_empty() {
            blueprint.discovery_rules = rules;
        }
        let mut baseline = blueprint.baseline_policy.take().unwrap_or_default();
        if let Some(action) = self.network_default {
            baseline.network_default = action.proto().into();
        }
        if !self.allow.is_empty() {
            baseline.allowed_destinations = self.allow;
        }
        if !self.protect.is_empty() {
            baseline.protected_paths = self.protect;
        }
        blueprint.baseline_policy = Some(baseline);
        if !self.attributes.is_empty() {
            blueprint.attributes = self.attributes.into_iter().collect();
        }
        if let Some(offline) = self.offline {
            blueprint.offline_behavior = offline.proto().into();
        }
        if let Some(ttl) = self.offline_ttl {
            blueprint.offline_ttl_seconds = ttl;
        }
        if let Some(ttl) = self.svid.x509_svid_ttl {
            blueprint.x509_svid_ttl_seconds = seconds(ttl);
        }
        if let Some(ttl) = self.svid.jwt_svid_ttl {
            blueprint.jwt_svid_ttl_seconds = seconds(ttl);
        }
        blueprint.governance = Some(self.governance.apply(blueprint.governance));
        blueprint
    }
}

/// How long the blueprint's agents' SVIDs live, where not the control plane's
/// (`agentd-control serve --x509-svid-ttl`, `--jwt-svid-ttl`).
#[derive(Args)]
pub(crate) struct SvidLifetimeArgs {
    /// Lifetime of the agents' X.509-SVIDs, e.g. 15m or 2h (2m to 7d; 0s: the control
    /// plane's). Hosts rotate them at half-life.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) x509_svid_ttl: Option<std::time::Duration>,
    /// Lifetime of the agents' JWT-SVIDs, e.g. 1m (30s to 24h; 0s: the control plane's).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) jwt_svid_ttl: Option<std::time::Duration>,
}

/// Whole seconds, saturated (the control plane refuses what is out of range, by field).
fn seconds(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

pub(crate) fn discovery_rules(
    exe_paths: Vec<String>,
    comms: Vec<String>,
    cgroup_paths: Vec<String>,
) -> Vec<proto::DiscoveryRule> {
    exe_paths
        .into_iter()
        .map(|exe_path| proto::DiscoveryRule {
            exe_path,
            ..Default::default()
        })
        .chain(comms.into_iter().map(|comm| proto::DiscoveryRule {
            comm,
            ..Default::default()
        }))
        .chain(
            cgroup_paths
                .into_iter()
                .map(|cgroup_path| proto::DiscoveryRule {
                    cgroup_path,
                    ..Default::default()
                }),
        )
        .collect()
}

#[derive(Args)]
pub(crate) struct BlueprintSpec {
    /// Blueprint name: 1 to 63 of a-z, 0-9 and -.
    pub(crate) name: String,
    #[arg(long, default_value = "")]
    pub(crate) description: String,
    /// Discovery rule: an executable path whose exec joins the agent (repeatable).
    #[arg(long = "discover-exe", value_name = "PATH")]
    pub(crate) discover_exe: Vec<String>,
    /// Discovery rule: a process name (comm, at most 15 bytes) (repeatable).
    #[arg(long = "discover-comm", value_name = "COMM")]
    pub(crate) discover_comm: Vec<String>,
    /// Discovery rule: a cgroup path whose processes belong to the agent (repeatable).
    #[arg(long = "discover-cgroup", value_name = "PATH")]
    pub(crate) discover_cgroup: Vec<String>,
    /// Baseline: what happens to connections no rule matches.
    #[arg(long, value_enum, default_value = "allow")]
    pub(crate) network_default: NetworkDefault,
    /// Baseline: an always-allowed destination, host:port, CIDR or CIDR:port (repeatable).
    #[arg(long = "allow", value_name = "DESTINATION")]
    pub(crate) allow: Vec<String>,
    /// Baseline: a path agents may not write (repeatable).
    #[arg(long = "protect", value_name = "PATH")]
    pub(crate) protect: Vec<String>,
    /// Custom security attribute KEY=VALUE (repeatable).
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) attributes: Vec<(String, String)>,
    /// What hosts enforce while they cannot reach the control plane.
    #[arg(long, value_enum, default_value = "last-known")]
    pub(crate) offline: Offline,
    /// Seconds decisions may age offline before fail-closed blocks and baseline falls back
    /// (0: the default, 900).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub(crate) offline_ttl: u32,
    #[command(flatten)]
    pub(crate) svid: SvidLifetimeArgs,
    #[command(flatten)]
    pub(crate) governance: GovernanceArgs,
}

impl BlueprintSpec {
    pub(crate) fn proto(self) -> proto::Blueprint {
        let rules = discovery_rules(self.discover_exe, self.discover_comm, self.discover_cgroup);
        proto::Blueprint {
            name: self.name,
            description: self.description,
            discovery_rules: rules,
            baseline_policy: Some(proto::BaselinePolicy {
                network_default: self.network_default.proto().into(),
                allowed_destinations: self.allow,
                protected_paths: self.protect,
            }),
            attributes: self.attributes.into_iter().collect(),
            offline_behavior: self.offline.proto().into(),
            governance: Some(self.governance.proto()),
            create_time: None,
            update_time: None,
            offline_ttl_seconds: self.offline_ttl,
            x509_svid_ttl_seconds: self.svid.x509_svid_ttl.map_or(0, seconds),
            jwt_svid_ttl_seconds: self.svid.jwt_svid_ttl.map_or(0, seconds),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum BlueprintCommand {
    /// Create a blueprint.
    Create(BlueprintSpec),
    /// Show one blueprint.
    Get { name: String },
    /// List blueprints.
    List,
    /// Change a blueprint's settings: flags not given keep their current value.
    Update(BlueprintChanges),
    /// Delete a blueprint no agent uses.
    Delete { name: String },
}

pub(crate) async fn blueprint(
    clients: &Clients,
    out: &Printer,
    command: BlueprintCommand,
) -> anyhow::Result<()> {
    let mut client = clients.registry();
    match command {
        BlueprintCommand::Create(spec) => {
            let response = call(client.create_blueprint(proto::CreateBlueprintRequest {
                blueprint: Some(spec.proto()),
            }))
            .await?;
            out.blueprints(&response, response.blueprint.as_slice())
        }
        BlueprintCommand::Get { name } => {
            let response = call(client.get_blueprint(proto::GetBlueprintRequest { name })).await?;
            out.blueprints(&response, response.blueprint.as_slice())
        }
        BlueprintCommand::List => {
            let response = call(client.list_blueprints(proto::ListBlueprintsRequest {})).await?;
            out.blueprints(&response, &response.blueprints)
        }
        BlueprintCommand::Update(changes) => {
            let current = call(client.get_blueprint(proto::GetBlueprintRequest {
                name: changes.name.clone(),
            }))
            .await?
            .blueprint
            .context("the server returned no blueprint")?;
            let response = call(client.update_blueprint(proto::UpdateBlueprintRequest {
                blueprint: Some(changes.apply(current)),
            }))
            .await?;
            out.blueprints(&response, response.blueprint.as_slice())
        }
        BlueprintCommand::Delete { name } => {
            let response =
                call(client.delete_blueprint(proto::DeleteBlueprintRequest { name: name.clone() }))
                    .await?;
            out.done(&response, &format!("deleted blueprint {name}"))
        }
    }
}
