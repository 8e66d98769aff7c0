//! Domain types of the control plane. Storage reads and writes these; only `api` converts them
//! to and from protobuf.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;

/// Defines a closed enum stored as text in the database (and in audit JSON).
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Lifecycle of an agent.
    AgentState { Created = "created", Active = "active", Disabled = "disabled", Expired = "expired", Deleted = "deleted" }
);
text_enum!(OfflineBehavior { Inherit = "inherit", LastKnown = "last_known", FailClosed = "fail_closed", Baseline = "baseline" });
text_enum!(DefaultAction { Allow = "allow", Deny = "deny" });
text_enum!(Protocol { Mcp = "mcp", A2a = "a2a", Http = "http" });
text_enum!(PrincipalRelation { Sponsor = "sponsor", Owner = "owner" });
text_enum!(AlertKind { Orphaned = "orphaned", ReconfirmationOverdue = "reconfirmation_overdue", Inactive = "inactive", Expired = "expired" });
text_enum!(ResourceKind { NetworkDestination = "network_destination", FilePath = "file_path", McpServer = "mcp_server" });
text_enum!(AccessPackageState { Pending = "pending", Approved = "approved", Active = "active", Expired = "expired", Denied = "denied", Revoked = "revoked" });
text_enum!(
    /// An administrator's verdict on an agent's risk.
    RiskConfirmation { Compromised = "compromised", Safe = "safe" }
);
text_enum!(
    /// What an API token may do: see `auth::Method::roles`.
    Role { Admin = "admin", Sponsor = "sponsor", Auditor = "auditor", Host = "host" }
);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryRule {
    pub exe_path: String,
    pub comm: String,
    pub cgroup_path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselinePolicy {
    pub network_default: DefaultAction,
    pub allowed_destinations: Vec<String>,
    pub protected_paths: Vec<String>,
}

impl Default for BaselinePolicy {
    fn default() -> Self {
        Self {
            network_default: DefaultAction::Allow,
            allowed_destinations: Vec::new(),
            protected_paths: Vec::new(),
        }
    }
}

/// Governance periods in days; 0 means "not set".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernanceSettings {
    pub lifetime_days: u32,
    pub reconfirm_every_days: u32,
    pub inactivity_disable_days: u32,
}

impl GovernanceSettings {
    /// The agent's own settings where set, else the blueprint's.
    #[must_use]
    pub fn inherit(self, blueprint: Self) -> Self {
        let pick = |own: u32, default: u32| if own == 0 { default } else { own };
        Self {
            lifetime_days: pick(self.lifetime_days, blueprint.lifetime_days),
            reconfirm_every_days: pick(self.reconfirm_every_days, blueprint.reconfirm_every_days),
            inactivity_disable_days: pick(
                self.inactivity_disable_days,
                blueprint.inactivity_disable_days,
            ),
        }
    }
}

/// The part of a blueprint that is stored as one JSON document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueprintSpec {
    pub discovery_rules: Vec<DiscoveryRule>,
    pub baseline_policy: BaselinePolicy,
    pub attributes: BTreeMap<String, String>,
    /// `Inherit` is stored as `LastKnown`.
    pub offline_behavior: Option<OfflineBehavior>,
    pub governance: GovernanceSettings,
    /// How old decisions may grow offline before `FailClosed` blocks and `Baseline` falls back;
    /// 0: [`DEFAULT_OFFLINE_TTL_SECONDS`].
    #[serde(default)]
    pub offline_ttl_seconds: u32,
    /// Seconds the agents' X.509- and JWT-SVIDs live; 0: the control plane's setting.
    #[serde(default)]
    pub svid_lifetimes: SvidLifetimes,
}

/// A blueprint's SVID lifetimes in seconds; 0 means "the control plane's".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidLifetimes {
    pub x509_seconds: u32,
    pub jwt_seconds: u32,
}

impl SvidLifetimes {
    /// This lifetime where set, else `default`.
    #[must_use]
    pub fn or(seconds: u32, default: i64) -> i64 {
        if seconds == 0 {
            default
        } else {
            i64::from(seconds)
        }
    }
}

/// The offline TTL of a blueprint that sets none.
pub const DEFAULT_OFFLINE_TTL_SECONDS: u32 = 900;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blueprint {
    pub name: String,
    pub description: String,
    pub spec: BlueprintSpec,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMetadata {
    pub capabilities: Vec<String>,
    pub tasks: Vec<String>,
    pub protocols: Vec<Protocol>,
    pub endpoints: Vec<String>,
    /// A JSON object, or empty.
    pub agent_card_json: String,
}

/// A validated request to create an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewAgent {
    pub name: String,
    pub description: String,
    pub blueprint: String,
    pub attributes: BTreeMap<String, String>,
    pub metadata: AgentMetadata,
    pub sponsors: Vec<String>,
    pub owners: Vec<String>,
    pub governance: GovernanceSettings,
    pub expires_at: Option<UnixTime>,
}

/// A validated update of an agent's mutable settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentUpdate {
    pub id: String,
    pub description: String,
    pub attributes: BTreeMap<String, String>,
    pub metadata: AgentMetadata,
    pub governance: GovernanceSettings,
    pub expires_at: Option<UnixTime>,
    pub offline_behavior: OfflineBehavior,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub description: String,
    pub blueprint: String,
    pub attributes: BTreeMap<String, String>,
    pub metadata: AgentMetadata,
    pub sponsors: Vec<String>,
    pub owners: Vec<String>,
    pub state: AgentState,
    pub disabled_reason: String,
    pub governance: GovernanceSettings,
    pub offline_behavior: OfflineBehavior,
    pub expires_at: Option<UnixTime>,
    pub last_reconfirm_at: UnixTime,
    pub last_active_at: Option<UnixTime>,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    /// Bumped by every stored change; not part of the agent's audited value.
    #[serde(skip)]
    pub revision: i64,
}

impl Agent {
    pub fn answers_to(&self, principal: &str) -> bool {
        self.sponsors
            .iter()
            .chain(&self.owners)
            .any(|p| p == principal)
    }

    pub fn is_owner(&self, principal: &str) -> bool {
        self.owners.iter().any(|p| p == principal)
    }
}

/// An agent with what it inherits from its blueprint resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedAgent {
    pub agent: Agent,
    pub effective_attributes: BTreeMap<String, String>,
    pub effective_offline_behavior: OfflineBehavior,
    pub effective_governance: GovernanceSettings,
    /// The blueprint's (agents have none of their own).
    pub svid_lifetimes: SvidLifetimes,
}

impl ResolvedAgent {
    pub fn resolve(agent: Agent, blueprint: &BlueprintSpec) -> Self {
        let mut effective_attributes = blueprint.attributes.clone();
        effective_attributes.extend(agent.attributes.clone());
        let effective_offline_behavior = match agent.offline_behavior {
            OfflineBehavior::Inherit => blueprint
                .offline_behavior
                .unwrap_or(OfflineBehavior::LastKnown),
            own => own,
        };
        let effective_governance = agent.governance.inherit(blueprint.governance);
        Self {
            agent,
            effective_attributes,
            effective_offline_behavior,
            effective_governance,
            svid_lifetimes: blueprint.svid_lifetimes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: i64,
    pub kind: AlertKind,
    pub agent_id: String,
    pub message: String,
    pub created_at: UnixTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub kind: ResourceKind,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalStage {
    pub approver: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<UnixTime>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPackageSpec {
    pub resources: Vec<Resource>,
    pub justification: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPackage {
    pub id: String,
    pub agent_id: String,
    pub spec: AccessPackageSpec,
    pub stages: Vec<ApprovalStage>,
    pub state: AccessPackageState,
    pub starts_at: UnixTime,
    pub expires_at: UnixTime,
    pub requested_by: String,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
}

/// A validated access-package request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccessPackage {
    pub agent_id: String,
    pub spec: AccessPackageSpec,
    pub approvers: Vec<String>,
    pub starts_at: Option<UnixTime>,
    pub expires_at: UnixTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub sequence: i64,
    pub at: UnixTime,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub previous: Option<String>,
    pub current: Option<String>,
    /// `None` for an event written before the chain existed (sealed by the genesis digest).
    pub chain: Option<ChainLink>,
}

/// An audit event's place in the hash chain (`crate::audit_chain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    pub index: i64,
    pub previous_digest: String,
    pub digest: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub after_sequence: i64,
    pub limit: i64,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub actor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub principal: String,
    pub created_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub description: String,
    /// The only hostname the token enrols; empty: any.
    #[serde(default)]
    pub hostname: String,
    /// Labels the enrolled host gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
    pub used_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub hostname: String,
    pub agentd_version: String,
    pub enrolled_at: UnixTime,
    pub last_heartbeat_at: Option<UnixTime>,
    pub revoked_at: Option<UnixTime>,
    pub revoke_reason: String,
    pub agent_ids: Vec<String>,
    /// Labels policies select hosts by.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The last decision version the host acknowledged (0: none); not audited.
    #[serde(skip)]
    pub applied_decision_version: i64,
    #[serde(skip)]
    pub applied_at: Option<UnixTime>,
}

/// What one governance sweep changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub expired_agents: Vec<String>,
    pub reconfirmation_disabled: Vec<String>,
    pub inactive_disabled: Vec<String>,
    pub orphaned: Vec<String>,
    pub expired_access_packages: Vec<String>,
    pub activated_access_packages: Vec<String>,
}

/// What removing a principal changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrincipalRemoval {
    pub agent_ids: Vec<String>,
    pub reassigned: Vec<String>,
    pub orphaned: Vec<String>,
}

/// A policy's state: enforced, evaluated and logged only, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicyState {
    Enabled,
    ReportOnly,
    Disabled,
}

impl PolicyState {
    pub const ALL: &[Self] = &[Self::Enabled, Self::ReportOnly, Self::Disabled];

    /// As written in documents and stored: `enabled`, `reportOnly`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::ReportOnly => "reportOnly",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for PolicyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's aggregated risk, ordered from none to high.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    #[default]
    None,
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub const ALL: &[Self] = &[Self::None, Self::Low, Self::Medium, Self::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|l| l.as_str() == text)
    }
}

impl std::fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(attributes: &[(&str, &str)], offline: OfflineBehavior) -> Agent {
        Agent {
            id: "a".into(),
            name: "a".into(),
            description: String::new(),
            blueprint: "b".into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            metadata: AgentMetadata::default(),
            sponsors: vec!["s".into()],
            owners: vec!["o".into()],
            state: AgentState::Active,
            disabled_reason: String::new(),
            governance: GovernanceSettings {
                lifetime_days: 0,
                reconfirm_every_days: 7,
                inactivity_disable_days: 0,
            },
            offline_behavior: offline,
            expires_at: None,
            last_reconfirm_at: 0,
            last_active_at: None,
            created_at: 0,
            updated_at: 0,
            revision: 0,
        }
    }

    #[test]
    fn agent_settings_override_the_blueprint_where_set() {
        let blueprint = BlueprintSpec {
            attributes: [("team", "payments"), ("tier", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            offline_behavior: Some(OfflineBehavior::FailClosed),
            governance: GovernanceSettings {
                lifetime_days: 30,
                reconfirm_every_days: 90,
                inactivity_disable_days: 14,
            },
            ..BlueprintSpec::default()
        };
        let resolved = ResolvedAgent::resolve(
            agent(&[("tier", "0")], OfflineBehavior::Inherit),
            &blueprint,
        );
        assert_eq!(resolved.effective_attributes["team"], "payments");
        assert_eq!(resolved.effective_attributes["tier"], "0");
        assert_eq!(
            resolved.effective_offline_behavior,
            OfflineBehavior::FailClosed
        );
        assert_eq!(
            resolved.effective_governance,
            GovernanceSettings {
                lifetime_days: 30,
                reconfirm_every_days: 7,
                inactivity_disable_days: 14,
            }
        );
        let own = ResolvedAgent::resolve(agent(&[], OfflineBehavior::LastKnown), &blueprint);
        assert_eq!(own.effective_offline_behavior, OfflineBehavior::LastKnown);
    }

    #[test]
    fn a_blueprint_without_offline_behaviour_means_last_known() {
        let resolved = ResolvedAgent::resolve(
            agent(&[], OfflineBehavior::Inherit),
            &BlueprintSpec::default(),
        );
        assert_eq!(
            resolved.effective_offline_behavior,
            OfflineBehavior::LastKnown
        );
    }

    #[test]
    fn stored_enum_texts_round_trip() {
        for state in AgentState::ALL {
            assert_eq!(AgentState::parse(state.as_str()), Some(*state));
        }
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(*role));
        }
        assert_eq!(AccessPackageState::parse("granted"), None);
    }
}

/// A stored Conditional Access policy version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub state: PolicyState,
    pub version: i64,
    /// The YAML document as submitted for this version.
    pub yaml: String,
    pub managed: bool,
    pub created_at: UnixTime,
    /// When this version was stored.
    pub updated_at: UnixTime,
    /// Who stored this version.
    pub updated_by: String,
}

/// A detection reported by a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    pub id: i64,
    pub agent_id: String,
    pub host_id: String,
    pub rule: String,
    /// Low, medium or high.
    pub severity: RiskLevel,
    pub detected_at: UnixTime,
    pub received_at: UnixTime,
    pub summary: String,
}

/// An administrator's latest confirmation about an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskConfirmationRecord {
    pub agent_id: String,
    pub confirmation: RiskConfirmation,
    pub reason: String,
    pub confirmed_by: String,
    pub confirmed_at: UnixTime,
    /// Detections up to this id are ignored after a confirm-safe.
    pub last_detection_id: i64,
}
