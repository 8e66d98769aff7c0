//! `agentctl`: the command line for the agentd control plane. Every gRPC method of `agentd.v1`
//! has a subcommand; `agentctl --help` and `agentctl <command> --help` describe them.

#![allow(
    clippy::doc_markdown,
    reason = "doc comments on the CLI types are --help text for users, not rustdoc"
)]

mod audit;
mod conditional;
mod output;

use std::{collections::HashMap, path::PathBuf, time::SystemTime};

use agentd_control::proto::{
    self, access_service_client::AccessServiceClient, audit_service_client::AuditServiceClient,
    auth_service_client::AuthServiceClient, governance_service_client::GovernanceServiceClient,
    host_service_client::HostServiceClient, policy_service_client::PolicyServiceClient,
    registry_service_client::RegistryServiceClient, risk_service_client::RiskServiceClient,
};
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use prost_types::Timestamp;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::output::{Format, Printer};

/// Manage the agentd control plane: blueprints, agents, governance, access packages, the audit
/// log, hosts and API tokens.
///
/// Every command talks to the server named by --server with the bearer token in --token (or
/// $AGENTD_SERVER and $AGENTD_TOKEN). Output is a table, or JSON with --output json (the
/// canonical protobuf JSON of the response).
#[derive(Parser)]
#[command(name = "agentctl", version)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Connection {
    /// Control-plane URL: http://host:port, or https://host:port for TLS.
    #[arg(
        long,
        env = "AGENTD_SERVER",
        default_value = "http://127.0.0.1:7443",
        global = true
    )]
    server: String,
    /// API token (sent as `authorization: Bearer <token>`).
    #[arg(long, env = "AGENTD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// For https: the control-plane CA certificate (PEM) to verify the server with
    /// (`agentd-control ca-cert` prints it).
    #[arg(long, env = "AGENTD_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// For https: the host's client certificate (PEM), for host commands (mTLS).
    #[arg(
        long,
        env = "AGENTD_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "AGENTD_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// For https: the server name to verify, if not the URL's host.
    #[arg(long, global = true)]
    tls_server_name: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Blueprints: templates whose defaults agents inherit.
    #[command(subcommand)]
    Blueprint(BlueprintCommand),
    /// Agents: create, inspect, update, enable, disable, reconfirm, delete.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Sponsors and owners of agents, and orphan handling.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Governance alerts (orphaned, reconfirmation overdue, inactive, expired).
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Run the governance sweep now.
    Sweep,
    /// Access packages: time-bound grants of resources with approval stages.
    #[command(subcommand)]
    Access(AccessCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Hosts: join tokens, enrolment, heartbeats, agent reports, revocation.
    #[command(subcommand)]
    Host(HostCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Conditional Access policies: apply YAML documents, versions, states, what-if.
    #[command(subcommand)]
    Policy(conditional::PolicyCommand),
    /// Show the role and principal of the token in use.
    Whoami,
}

#[derive(Clone, Copy, ValueEnum)]
enum NetworkDefault {
    Allow,
    Deny,
}

impl NetworkDefault {
    fn proto(self) -> proto::DefaultAction {
        match self {
            Self::Allow => proto::DefaultAction::Allow,
            Self::Deny => proto::DefaultAction::Deny,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Offline {
    /// Inherit (agents: the blueprint's; blueprints: last-known).
    Inherit,
    /// Keep enforcing the last decisions received, however old (fail-open).
    LastKnown,
    /// Block the agent (network and file writes) once the decisions are older than the TTL.
    FailClosed,
    /// Fall back to the blueprint's baseline once the decisions are older than the TTL.
    Baseline,
}

impl Offline {
    fn proto(self) -> proto::OfflineBehavior {
        match self {
            Self::Inherit => proto::OfflineBehavior::Unspecified,
            Self::LastKnown => proto::OfflineBehavior::LastKnown,
            Self::FailClosed => proto::OfflineBehavior::FailClosed,
            Self::Baseline => proto::OfflineBehavior::Baseline,
        }
    }
}

#[derive(Args)]
#[allow(
    clippy::struct_field_names,
    reason = "the fields are the --...-days flags, named as in the proto"
)]
struct GovernanceArgs {
    /// Days after creation at which agents expire (0: not set).
    #[arg(long, default_value_t = 0)]
    lifetime_days: u32,
    /// A sponsor must reconfirm at least every this many days, or the agent is disabled.
    #[arg(long, default_value_t = 0)]
    reconfirm_every_days: u32,
    /// Disable agents no host has reported running for this many days.
    #[arg(long, default_value_t = 0)]
    inactivity_disable_days: u32,
}

impl GovernanceArgs {
    fn proto(&self) -> proto::GovernanceSettings {
        proto::GovernanceSettings {
            lifetime_days: self.lifetime_days,
            reconfirm_every_days: self.reconfirm_every_days,
            inactivity_disable_days: self.inactivity_disable_days,
        }
    }
}

/// Governance periods to change (unset flags keep the current value; 0 means "not set").
#[derive(Args)]
#[allow(
    clippy::struct_field_names,
    reason = "the fields are the --...-days flags, named as in the proto"
)]
struct GovernanceChanges {
    /// Days after creation at which it expires.
    #[arg(long)]
    lifetime_days: Option<u32>,
    /// A sponsor must reconfirm at least every this many days.
    #[arg(long)]
    reconfirm_every_days: Option<u32>,
    /// Disable after this many days without a host reporting the agent running.
    #[arg(long)]
    inactivity_disable_days: Option<u32>,
}

impl GovernanceChanges {
    fn apply(&self, current: Option<proto::GovernanceSettings>) -> proto::GovernanceSettings {
        let current = current.unwrap_or_default();
        proto::GovernanceSettings {
            lifetime_days: self.lifetime_days.unwrap_or(current.lifetime_days),
            reconfirm_every_days: self
                .reconfirm_every_days
                .unwrap_or(current.reconfirm_every_days),
            inactivity_disable_days: self
                .inactivity_disable_days
                .unwrap_or(current.inactivity_disable_days),
        }
    }
}

/// Blueprint settings to change: unset flags keep the current value; a list flag given
/// replaces that list.
#[derive(Args)]
struct BlueprintChanges {
    name: String,
    #[arg(long)]
    description: Option<String>,
    /// Discovery rules: executable paths (replaces all discovery rules if any --discover-* is given).
    #[arg(long = "discover-exe", value_name = "PATH")]
    discover_exe: Vec<String>,
    /// Discovery rules: process names.
    #[arg(long = "discover-comm", value_name = "COMM")]
    discover_comm: Vec<String>,
    /// Discovery rules: cgroup paths.
    #[arg(long = "discover-cgroup", value_name = "PATH")]
    discover_cgroup: Vec<String>,
    /// Remove every discovery rule.
    #[arg(long)]
    clear_discovery: bool,
    #[arg(long, value_enum)]
    network_default: Option<NetworkDefault>,
    /// Baseline allowed destinations (replaces the list).
    #[arg(long = "allow", value_name = "DESTINATION")]
    allow: Vec<String>,
    /// Baseline protected paths (replaces the list).
    #[arg(long = "protect", value_name = "PATH")]
    protect: Vec<String>,
    /// Custom security attributes KEY=VALUE (replaces them all).
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    attributes: Vec<(String, String)>,
    #[arg(long, value_enum)]
    offline: Option<Offline>,
    /// Seconds decisions may age offline before fail-closed blocks and baseline falls back
    /// (0: the default, 900).
    #[arg(long, value_name = "SECONDS")]
    offline_ttl: Option<u32>,
    #[command(flatten)]
    governance: GovernanceChanges,
}

impl BlueprintChanges {
    fn apply(self, mut blueprint: proto::Blueprint) -> proto::Blueprint {
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
        blueprint.governance = Some(self.governance.apply(blueprint.governance));
        blueprint
    }
}

fn discovery_rules(
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
struct BlueprintSpec {
    /// Blueprint name: 1 to 63 of a-z, 0-9 and -.
    name: String,
    #[arg(long, default_value = "")]
    description: String,
    /// Discovery rule: an executable path whose exec joins the agent (repeatable).
    #[arg(long = "discover-exe", value_name = "PATH")]
    discover_exe: Vec<String>,
    /// Discovery rule: a process name (comm, at most 15 bytes) (repeatable).
    #[arg(long = "discover-comm", value_name = "COMM")]
    discover_comm: Vec<String>,
    /// Discovery rule: a cgroup path whose processes belong to the agent (repeatable).
    #[arg(long = "discover-cgroup", value_name = "PATH")]
    discover_cgroup: Vec<String>,
    /// Baseline: what happens to connections no rule matches.
    #[arg(long, value_enum, default_value = "allow")]
    network_default: NetworkDefault,
    /// Baseline: an always-allowed destination, host:port, CIDR or CIDR:port (repeatable).
    #[arg(long = "allow", value_name = "DESTINATION")]
    allow: Vec<String>,
    /// Baseline: a path agents may not write (repeatable).
    #[arg(long = "protect", value_name = "PATH")]
    protect: Vec<String>,
    /// Custom security attribute KEY=VALUE (repeatable).
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    attributes: Vec<(String, String)>,
    /// What hosts enforce while they cannot reach the control plane.
    #[arg(long, value_enum, default_value = "last-known")]
    offline: Offline,
    /// Seconds decisions may age offline before fail-closed blocks and baseline falls back
    /// (0: the default, 900).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    offline_ttl: u32,
    #[command(flatten)]
    governance: GovernanceArgs,
}

impl BlueprintSpec {
    fn proto(self) -> proto::Blueprint {
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
        }
    }
}

#[derive(Subcommand)]
enum BlueprintCommand {
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

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Mcp,
    A2a,
    Http,
}

#[derive(Args)]
struct AgentMetadataArgs {
    /// A capability, e.g. "code-review" (repeatable).
    #[arg(long = "capability")]
    capabilities: Vec<String>,
    /// A task the agent performs (repeatable).
    #[arg(long = "task")]
    tasks: Vec<String>,
    /// A protocol the agent speaks (repeatable).
    #[arg(long = "protocol", value_enum)]
    protocols: Vec<ProtocolArg>,
    /// A URL the agent serves, e.g. its MCP endpoint (repeatable).
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// A file holding the agent's A2A agent card (a JSON object).
    #[arg(long)]
    agent_card: Option<PathBuf>,
    /// Custom security attribute KEY=VALUE (repeatable); overrides the blueprint's.
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    attributes: Vec<(String, String)>,
}

impl AgentMetadataArgs {
    fn proto(&self) -> anyhow::Result<proto::AgentMetadata> {
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

    fn attributes(&self) -> HashMap<String, String> {
        self.attributes.iter().cloned().collect()
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    Created,
    Active,
    Disabled,
    Expired,
    Deleted,
}

#[derive(Subcommand)]
enum AgentCommand {
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
    Risk(conditional::RiskCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum RelationArg {
    Sponsor,
    Owner,
}

impl RelationArg {
    fn proto(self) -> i32 {
        match self {
            Self::Sponsor => proto::PrincipalRelation::Sponsor,
            Self::Owner => proto::PrincipalRelation::Owner,
        }
        .into()
    }
}

#[derive(Subcommand)]
enum PrincipalCommand {
    /// Add a sponsor or owner to an agent.
    Add {
        agent_id: String,
        #[arg(value_enum)]
        relation: RelationArg,
        principal: String,
    },
    /// Remove a sponsor or owner from one agent (--agent) or from every agent. Agents left
    /// without a sponsor go to --reassign-to, or are orphaned with an alert.
    Remove {
        #[arg(value_enum)]
        relation: RelationArg,
        principal: String,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        reassign_to: Option<String>,
    },
}

#[derive(Subcommand)]
enum AlertCommand {
    /// List alerts, newest first.
    List {
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ResourceKindArg {
    Net,
    File,
    Mcp,
}

fn parse_resource(text: &str) -> Result<proto::Resource, String> {
    let (kind, value) = text
        .split_once('=')
        .ok_or("expected KIND=VALUE, e.g. net=api.example.com:443, file=/srv/data, mcp=https://mcp.example.com")?;
    let kind = match kind {
        "net" => proto::ResourceKind::NetworkDestination,
        "file" => proto::ResourceKind::FilePath,
        "mcp" => proto::ResourceKind::McpServer,
        other => {
            return Err(format!(
                "unknown resource kind {other:?}: use net, file or mcp"
            ));
        }
    };
    Ok(proto::Resource {
        kind: kind.into(),
        value: value.to_owned(),
    })
}

#[derive(Clone, Copy, ValueEnum)]
enum PackageStateArg {
    Pending,
    Approved,
    Active,
    Expired,
    Denied,
    Revoked,
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Request an access package for an agent.
    Request {
        agent_id: String,
        /// A resource: net=HOST:PORT|CIDR[:PORT], file=/PATH or mcp=URL (repeatable).
        #[arg(long = "resource", required = true, value_parser = parse_resource)]
        resources: Vec<proto::Resource>,
        /// Why the agent needs it (required).
        #[arg(long)]
        justification: String,
        /// Approver of the next stage, in order (repeatable; none: approved at once, admins only).
        #[arg(long = "approver")]
        approvers: Vec<String>,
        /// Start: an RFC 3339 time or +DURATION (default: now).
        #[arg(long, value_parser = parse_when)]
        starts: Option<Timestamp>,
        /// Expiry: an RFC 3339 time or +DURATION (required), e.g. +8h.
        #[arg(long, value_parser = parse_when)]
        expires: Timestamp,
    },
    /// Approve the current stage of a package.
    Approve { id: String },
    /// Deny a pending package.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Revoke a package before its expiry.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show one package.
    Get { id: String },
    /// List packages.
    List {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, value_enum)]
        state: Option<PackageStateArg>,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Create a single-use join token for enrolling one host.
    JoinToken {
        /// How long it stays valid, e.g. 1h, 30m (at most a week).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, default_value = "")]
        description: String,
        /// The only hostname the token may enrol (default: any).
        #[arg(long, default_value = "")]
        hostname: String,
        /// A label KEY=VALUE the enrolled host gets (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::parse_key_value)]
        labels: Vec<(String, String)>,
    },
    /// Enrol this machine with a join token. Writes the host token, and with --key-out a new
    /// key, its certificate and the CA certificate, into --dir.
    Enroll {
        /// The join token (from `agentctl host join-token`).
        #[arg(long, env = "AGENTD_JOIN_TOKEN", hide_env_values = true)]
        join_token: String,
        #[arg(long)]
        hostname: String,
        /// Where to write host-token, host.key, host.crt and ca.crt.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Send a heartbeat as this host (host token; client certificate over https).
    Heartbeat,
    /// Report the agents running on this host (replaces the previous report).
    Report { agent_ids: Vec<String> },
    /// Show one host.
    Get { id: String },
    /// List hosts.
    List {
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke a host: its credentials stop working at once.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    #[command(flatten)]
    Decisions(conditional::HostDecisionCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Sponsor,
    Auditor,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token (printed once).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Who it acts as, e.g. alice@example.com.
        #[arg(long)]
        principal: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token.
    Revoke { id: String },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

/// An RFC 3339 time, or `+DURATION` from now (`+30d`, `+8h`).
fn parse_when(text: &str) -> Result<Timestamp, String> {
    let at = if let Some(duration) = text.strip_prefix('+') {
        let duration = humantime::parse_duration(duration).map_err(|err| err.to_string())?;
        SystemTime::now() + duration
    } else {
        humantime::parse_rfc3339_weak(text)
            .map_err(|err| format!("{err}: use RFC 3339 (2027-01-31T12:00:00Z) or +DURATION"))?
    };
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| "before 1970".to_owned())?
        .as_secs();
    Ok(Timestamp {
        seconds: i64::try_from(seconds).map_err(|err| err.to_string())?,
        nanos: 0,
    })
}

#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

struct Clients {
    channel: Channel,
    bearer: Bearer,
}

impl Clients {
    async fn connect(connection: &Connection) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(connection.server.clone())
            .with_context(|| format!("--server {:?} is not a URL", connection.server))?;
        if connection.server.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(path) = &connection.ca_cert {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading --ca-cert {}", path.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&connection.client_cert, &connection.client_key) {
                let cert = std::fs::read(cert)
                    .with_context(|| format!("reading --client-cert {}", cert.display()))?;
                let key = std::fs::read(key)
                    .with_context(|| format!("reading --client-key {}", key.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &connection.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", connection.server))?;
        let bearer = Bearer(
            connection
                .token
                .as_ref()
                .map(|token| format!("Bearer {token}").parse())
                .transpose()
                .context("the token contains characters that cannot be sent")?,
        );
        Ok(Self { channel, bearer })
    }

    fn registry(&self) -> RegistryServiceClient<Authed> {
        RegistryServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn governance(&self) -> GovernanceServiceClient<Authed> {
        GovernanceServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn access(&self) -> AccessServiceClient<Authed> {
        AccessServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn audit(&self) -> AuditServiceClient<Authed> {
        AuditServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn host(&self) -> HostServiceClient<Authed> {
        HostServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn auth(&self) -> AuthServiceClient<Authed> {
        AuthServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn policy(&self) -> PolicyServiceClient<Authed> {
        PolicyServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn risk(&self) -> RiskServiceClient<Authed> {
        RiskServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            if let Some(status) = err.downcast_ref::<Status>() {
                eprintln!("error: {:?}: {}", status.code(), status.message());
            } else {
                eprintln!("error: {err:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "one arm per command: splitting it would scatter the CLI"
)]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let clients = Clients::connect(&cli.connection).await?;
    let out = Printer::new(cli.output);
    match cli.command {
        Command::Blueprint(command) => {
            let mut client = clients.registry();
            match command {
                BlueprintCommand::Create(spec) => {
                    let response = client
                        .create_blueprint(proto::CreateBlueprintRequest {
                            blueprint: Some(spec.proto()),
                        })
                        .await?
                        .into_inner();
                    out.blueprints(&response, response.blueprint.as_slice())
                }
                BlueprintCommand::Get { name } => {
                    let response = client
                        .get_blueprint(proto::GetBlueprintRequest { name })
                        .await?
                        .into_inner();
                    out.blueprints(&response, response.blueprint.as_slice())
                }
                BlueprintCommand::List => {
                    let response = client
                        .list_blueprints(proto::ListBlueprintsRequest {})
                        .await?
                        .into_inner();
                    out.blueprints(&response, &response.blueprints)
                }
                BlueprintCommand::Update(changes) => {
                    let current = client
                        .get_blueprint(proto::GetBlueprintRequest {
                            name: changes.name.clone(),
                        })
                        .await?
                        .into_inner()
                        .blueprint
                        .context("the server returned no blueprint")?;
                    let response = client
                        .update_blueprint(proto::UpdateBlueprintRequest {
                            blueprint: Some(changes.apply(current)),
                        })
                        .await?
                        .into_inner();
                    out.blueprints(&response, response.blueprint.as_slice())
                }
                BlueprintCommand::Delete { name } => {
                    let response = client
                        .delete_blueprint(proto::DeleteBlueprintRequest { name: name.clone() })
                        .await?
                        .into_inner();
                    out.done(&response, &format!("deleted blueprint {name}"))
                }
            }
        }
        Command::Agent(command) => agent(&clients, &out, command).await,
        Command::Principal(command) => {
            let mut client = clients.governance();
            match command {
                PrincipalCommand::Add {
                    agent_id,
                    relation,
                    principal,
                } => {
                    let response = client
                        .add_principal(proto::AddPrincipalRequest {
                            agent_id,
                            relation: relation.proto(),
                            principal,
                        })
                        .await?
                        .into_inner();
                    out.agents(&response, response.agent.as_slice())
                }
                PrincipalCommand::Remove {
                    relation,
                    principal,
                    agent,
                    reassign_to,
                } => {
                    let response = client
                        .remove_principal(proto::RemovePrincipalRequest {
                            agent_id: agent.unwrap_or_default(),
                            relation: relation.proto(),
                            principal,
                            reassign_to: reassign_to.unwrap_or_default(),
                        })
                        .await?
                        .into_inner();
                    out.removal(&response)
                }
            }
        }
        Command::Alert(AlertCommand::List { agent }) => {
            let response = clients
                .governance()
                .list_alerts(proto::ListAlertsRequest {
                    agent_id: agent.unwrap_or_default(),
                })
                .await?
                .into_inner();
            out.alerts(&response)
        }
        Command::Sweep => {
            let response = clients
                .governance()
                .run_sweep(proto::RunSweepRequest {})
                .await?
                .into_inner();
            out.sweep(&response)
        }
        Command::Access(command) => access(&clients, &out, command).await,
        Command::Audit(command) => audit::audit(&clients, &out, command).await,
        Command::Host(command) => host(&clients, &out, command).await,
        Command::Policy(command) => conditional::policy(&clients, &out, command).await,
        Command::Token(command) => {
            let mut client = clients.auth();
            match command {
                TokenCommand::Create {
                    name,
                    role,
                    principal,
                } => {
                    let role = match role {
                        RoleArg::Admin => proto::Role::Admin,
                        RoleArg::Sponsor => proto::Role::Sponsor,
                        RoleArg::Auditor => proto::Role::Auditor,
                    };
                    let response = client
                        .create_api_token(proto::CreateApiTokenRequest {
                            name,
                            role: role.into(),
                            principal,
                        })
                        .await?
                        .into_inner();
                    out.created_token(&response)
                }
                TokenCommand::List => {
                    let response = client
                        .list_api_tokens(proto::ListApiTokensRequest {})
                        .await?
                        .into_inner();
                    out.tokens(&response, &response.api_tokens)
                }
                TokenCommand::Revoke { id } => {
                    let response = client
                        .revoke_api_token(proto::RevokeApiTokenRequest { id })
                        .await?
                        .into_inner();
                    out.tokens(&response, response.api_token.as_slice())
                }
            }
        }
        Command::Whoami => {
            let response = clients
                .auth()
                .who_am_i(proto::WhoAmIRequest {})
                .await?
                .into_inner();
            out.whoami(&response)
        }
    }
}

fn state_filter(state: Option<StateArg>) -> i32 {
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
async fn agent(clients: &Clients, out: &Printer, command: AgentCommand) -> anyhow::Result<()> {
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
            let response = registry
                .create_agent(proto::CreateAgentRequest {
                    name,
                    description,
                    blueprint,
                    attributes: metadata.attributes(),
                    metadata: Some(metadata.proto()?),
                    sponsors,
                    owners,
                    governance: Some(settings.proto()),
                    expire_time: expires,
                })
                .await?
                .into_inner();
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Get { id } => {
            let response = registry
                .get_agent(proto::GetAgentRequest { id })
                .await?
                .into_inner();
            out.agent_detail(&response, response.agent.as_ref())
        }
        AgentCommand::List {
            blueprint,
            state,
            principal,
        } => {
            let response = registry
                .list_agents(proto::ListAgentsRequest {
                    blueprint: blueprint.unwrap_or_default(),
                    state: state_filter(state),
                    principal: principal.unwrap_or_default(),
                })
                .await?
                .into_inner();
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
            let current = registry
                .get_agent(proto::GetAgentRequest { id: id.clone() })
                .await?
                .into_inner()
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
            let response = registry
                .update_agent(proto::UpdateAgentRequest {
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
                    offline_behavior: offline
                        .map_or(current.offline_behavior, |o| o.proto().into()),
                })
                .await?
                .into_inner();
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Risk(command) => conditional::risk(clients, out, command).await,
        AgentCommand::Delete { id } => {
            let response = registry
                .delete_agent(proto::DeleteAgentRequest { id })
                .await?
                .into_inner();
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Enable { id } => {
            let response = governance
                .enable_agent(proto::EnableAgentRequest { id })
                .await?
                .into_inner();
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Disable { id, reason } => {
            let response = governance
                .disable_agent(proto::DisableAgentRequest { id, reason })
                .await?
                .into_inner();
            out.agents(&response, response.agent.as_slice())
        }
        AgentCommand::Reconfirm { id } => {
            let response = governance
                .reconfirm_agent(proto::ReconfirmAgentRequest { id })
                .await?
                .into_inner();
            out.agents(&response, response.agent.as_slice())
        }
    }
}

async fn access(clients: &Clients, out: &Printer, command: AccessCommand) -> anyhow::Result<()> {
    let mut client = clients.access();
    match command {
        AccessCommand::Request {
            agent_id,
            resources,
            justification,
            approvers,
            starts,
            expires,
        } => {
            let response = client
                .request_access_package(proto::RequestAccessPackageRequest {
                    agent_id,
                    resources,
                    justification,
                    approvers,
                    start_time: starts,
                    expire_time: Some(expires),
                })
                .await?
                .into_inner();
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::Approve { id } => {
            let response = client
                .approve_access_package(proto::ApproveAccessPackageRequest { id })
                .await?
                .into_inner();
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::Deny { id, reason } => {
            let response = client
                .deny_access_package(proto::DenyAccessPackageRequest { id, reason })
                .await?
                .into_inner();
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::Revoke { id, reason } => {
            let response = client
                .revoke_access_package(proto::RevokeAccessPackageRequest { id, reason })
                .await?
                .into_inner();
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::Get { id } => {
            let response = client
                .get_access_package(proto::GetAccessPackageRequest { id })
                .await?
                .into_inner();
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::List { agent, state } => {
            let state = state.map_or(
                proto::AccessPackageState::Unspecified,
                |state| match state {
                    PackageStateArg::Pending => proto::AccessPackageState::Pending,
                    PackageStateArg::Approved => proto::AccessPackageState::Approved,
                    PackageStateArg::Active => proto::AccessPackageState::Active,
                    PackageStateArg::Expired => proto::AccessPackageState::Expired,
                    PackageStateArg::Denied => proto::AccessPackageState::Denied,
                    PackageStateArg::Revoked => proto::AccessPackageState::Revoked,
                },
            );
            let response = client
                .list_access_packages(proto::ListAccessPackagesRequest {
                    agent_id: agent.unwrap_or_default(),
                    state: state.into(),
                })
                .await?
                .into_inner();
            out.packages(&response, &response.access_packages)
        }
    }
}

async fn host(clients: &Clients, out: &Printer, command: HostCommand) -> anyhow::Result<()> {
    let mut client = clients.host();
    match command {
        HostCommand::JoinToken {
            ttl,
            description,
            hostname,
            labels,
        } => {
            let response = client
                .create_join_token(proto::CreateJoinTokenRequest {
                    ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
                    description,
                    hostname,
                    labels: labels.into_iter().collect(),
                })
                .await?
                .into_inner();
            out.join_token(&response)
        }
        HostCommand::Enroll {
            join_token,
            hostname,
            dir,
        } => {
            let key = rcgen::KeyPair::generate().context("generating the host key")?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())
                .and_then(|params| params.serialize_request(&key))
                .and_then(|csr| csr.pem())
                .context("creating the certificate request")?;
            let response = client
                .enroll_host(proto::EnrollHostRequest {
                    join_token,
                    hostname,
                    csr_pem: csr,
                    agentd_version: env!("CARGO_PKG_VERSION").to_owned(),
                })
                .await?
                .into_inner();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, contents) in [
                ("host-token", response.host_token.as_str()),
                ("host.key", key.serialize_pem().as_str()),
                ("host.crt", response.certificate_pem.as_str()),
                ("ca.crt", response.ca_certificate_pem.as_str()),
            ] {
                write_private(&dir.join(name), contents)?;
            }
            out.enrolled(&response, &dir)
        }
        HostCommand::Heartbeat => {
            let response = client
                .heartbeat(proto::HeartbeatRequest {
                    agentd_version: env!("CARGO_PKG_VERSION").to_owned(),
                })
                .await?
                .into_inner();
            out.done(&response, "heartbeat accepted")
        }
        HostCommand::Report { agent_ids } => {
            let count = agent_ids.len();
            let response = client
                .report_agents(proto::ReportAgentsRequest { agent_ids })
                .await?
                .into_inner();
            out.done(&response, &format!("reported {count} running agent(s)"))
        }
        HostCommand::Decisions(command) => conditional::host_decisions(clients, out, command).await,
        HostCommand::Get { id } => {
            let response = client
                .get_host(proto::GetHostRequest { id })
                .await?
                .into_inner();
            out.hosts(&response, response.host.as_slice())
        }
        HostCommand::List { include_revoked } => {
            let response = client
                .list_hosts(proto::ListHostsRequest { include_revoked })
                .await?
                .into_inner();
            out.hosts(&response, &response.hosts)
        }
        HostCommand::Revoke { id, reason } => {
            let response = client
                .revoke_host(proto::RevokeHostRequest { id, reason })
                .await?
                .into_inner();
            out.hosts(&response, response.host.as_slice())
        }
    }
}

/// Writes a credential readable by its owner only.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    if contents.is_empty() {
        bail!("the server returned no {}", path.display());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use agentd_control::auth::Method;
    use clap::CommandFactory as _;

    use super::Cli;

    /// The agentctl command for each gRPC method.
    fn command_for(method: Method) -> &'static [&'static str] {
        match method {
            Method::CreateBlueprint => &["blueprint", "create"],
            Method::GetBlueprint => &["blueprint", "get"],
            Method::ListBlueprints => &["blueprint", "list"],
            Method::UpdateBlueprint => &["blueprint", "update"],
            Method::DeleteBlueprint => &["blueprint", "delete"],
            Method::CreateAgent => &["agent", "create"],
            Method::GetAgent => &["agent", "get"],
            Method::ListAgents => &["agent", "list"],
            Method::UpdateAgent => &["agent", "update"],
            Method::DeleteAgent => &["agent", "delete"],
            Method::EnableAgent => &["agent", "enable"],
            Method::DisableAgent => &["agent", "disable"],
            Method::ReconfirmAgent => &["agent", "reconfirm"],
            Method::AddPrincipal => &["principal", "add"],
            Method::RemovePrincipal => &["principal", "remove"],
            Method::ListAlerts => &["alert", "list"],
            Method::RunSweep => &["sweep"],
            Method::RequestAccessPackage => &["access", "request"],
            Method::ApproveAccessPackage => &["access", "approve"],
            Method::DenyAccessPackage => &["access", "deny"],
            Method::RevokeAccessPackage => &["access", "revoke"],
            Method::GetAccessPackage => &["access", "get"],
            Method::ListAccessPackages => &["access", "list"],
            Method::ListAuditEvents => &["audit", "list"],
            Method::CreateJoinToken => &["host", "join-token"],
            Method::EnrollHost => &["host", "enroll"],
            Method::Heartbeat => &["host", "heartbeat"],
            Method::ReportAgents => &["host", "report"],
            Method::GetHost => &["host", "get"],
            Method::ListHosts => &["host", "list"],
            Method::RevokeHost => &["host", "revoke"],
            Method::CreateApiToken => &["token", "create"],
            Method::ListApiTokens => &["token", "list"],
            Method::RevokeApiToken => &["token", "revoke"],
            Method::WhoAmI => &["whoami"],
            Method::SetHostLabels => &["host", "labels"],
            Method::WatchDecisions => &["host", "watch"],
            Method::AckDecisions => &["host", "ack"],
            Method::ReportDetections => &["host", "detect"],
            Method::CreatePolicy => &["policy", "create"],
            Method::UpdatePolicy => &["policy", "update"],
            Method::GetPolicy => &["policy", "get"],
            Method::ListPolicies => &["policy", "list"],
            Method::ListPolicyVersions => &["policy", "versions"],
            Method::DeletePolicy => &["policy", "delete"],
            Method::SetPolicyState => &["policy", "set-state"],
            Method::WhatIf => &["policy", "what-if"],
            Method::GetAgentRisk => &["agent", "risk"],
            Method::ListDetections => &["agent", "detections"],
            Method::ConfirmAgentCompromised => &["agent", "confirm-compromised"],
            Method::ConfirmAgentSafe => &["agent", "confirm-safe"],
        }
    }

    #[test]
    fn every_grpc_method_has_a_documented_command() {
        let cli = Cli::command();
        for &method in Method::ALL {
            let mut command = &cli;
            for name in command_for(method) {
                command = command.find_subcommand(name).unwrap_or_else(|| {
                    panic!(
                        "{method:?}: agentctl has no `{}`",
                        command_for(method).join(" ")
                    )
                });
            }
            let about = command
                .get_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                !about.is_empty(),
                "{method:?}: `{}` has no help text",
                command.get_name()
            );
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
