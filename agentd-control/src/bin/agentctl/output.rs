//! agentctl's output: aligned tables for people, canonical protobuf JSON for programs.

use std::{fmt::Write as _, path::Path, sync::OnceLock};

use agentd_control::proto;
use prost_reflect::{DescriptorPool, DynamicMessage};
use prost_types::Timestamp;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub struct Printer {
    format: Format,
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set is valid")
    })
}

/// The canonical proto3 JSON of a response.
fn to_json<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<String> {
    let descriptor = pool()
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| anyhow::anyhow!("no descriptor for {}", M::full_name()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())?;
    Ok(serde_json::to_string_pretty(&dynamic)?)
}

pub(crate) fn time(ts: Option<&Timestamp>) -> String {
    ts.map_or_else(
        || "-".to_owned(),
        |ts| agentd_control::clock::format_time(ts.seconds),
    )
}

/// The lower-case tail of a proto enum name: `AGENT_STATE_ACTIVE` -> `active`.
pub(crate) fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        println!("{}", text.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn join(values: &[String]) -> String {
    if values.is_empty() {
        "-".to_owned()
    } else {
        values.join(",")
    }
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    /// Prints JSON and returns true, or returns false for the table path.
    pub(crate) fn json<M: prost::Message + prost::Name>(
        &self,
        message: &M,
    ) -> anyhow::Result<bool> {
        match self.format {
            Format::Json => {
                println!("{}", to_json(message)?);
                Ok(true)
            }
            Format::Table => Ok(false),
        }
    }

    pub fn done<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        text: &str,
    ) -> anyhow::Result<()> {
        if !self.json(message)? {
            println!("{text}");
        }
        Ok(())
    }

    pub fn blueprints<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        blueprints: &[proto::Blueprint],
    ) -> anyhow::Result<()> {
        if self.json(message)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = blueprints
            .iter()
            .map(|b| {
                let governance = b.governance.unwrap_or_default();
                let baseline = b.baseline_policy.clone().unwrap_or_default();
                let mut attributes: Vec<String> = b
                    .attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                attributes.sort();
                vec![
                    b.name.clone(),
                    b.discovery_rules.len().to_string(),
                    enum_name(baseline.network_default().as_str_name(), "DEFAULT_ACTION_"),
                    join(&attributes),
                    enum_name(b.offline_behavior().as_str_name(), "OFFLINE_BEHAVIOR_"),
                    format!(
                        "{}/{}/{}",
                        governance.lifetime_days,
                        governance.reconfirm_every_days,
                        governance.inactivity_disable_days
                    ),
                    format!(
                        "{}/{}",
                        svid_lifetime(b.x509_svid_ttl_seconds),
                        svid_lifetime(b.jwt_svid_ttl_seconds)
                    ),
                    b.description.clone(),
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "RULES",
                "NETWORK",
                "ATTRIBUTES",
                "OFFLINE",
                "LIFE/RECONFIRM/IDLE DAYS",
                "SVID X509/JWT",
                "DESCRIPTION",
            ],
            &rows,
        );
        Ok(())
    }

    pub fn agents<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        agents: &[proto::Agent],
    ) -> anyhow::Result<()> {
        if self.json(message)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = agents
            .iter()
            .map(|a| {
                vec![
                    a.id.clone(),
                    a.name.clone(),
                    a.blueprint.clone(),
                    enum_name(a.state().as_str_name(), "AGENT_STATE_"),
                    join(&a.sponsors),
                    join(&a.owners),
                    time(a.expire_time.as_ref()),
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "NAME",
                "BLUEPRINT",
                "STATE",
                "SPONSORS",
                "OWNERS",
                "EXPIRES",
            ],
            &rows,
        );
        Ok(())
    }

    pub fn agent_detail<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        agent: Option<&proto::Agent>,
    ) -> anyhow::Result<()> {
        if self.json(message)? {
            return Ok(());
        }
        let Some(a) = agent else { return Ok(()) };
        let metadata = a.metadata.clone().unwrap_or_default();
        let governance = a.governance.unwrap_or_default();
        let mut attributes: Vec<String> = a
            .effective_attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        attributes.sort();
        let protocols: Vec<String> = metadata
            .protocols()
            .map(|p| enum_name(p.as_str_name(), "PROTOCOL_"))
            .collect();
        let rows = vec![
            vec!["id".into(), a.id.clone()],
            vec!["name".into(), a.name.clone()],
            vec!["description".into(), a.description.clone()],
            vec!["blueprint".into(), a.blueprint.clone()],
            vec![
                "state".into(),
                enum_name(a.state().as_str_name(), "AGENT_STATE_"),
            ],
            vec!["disabled reason".into(), a.disabled_reason.clone()],
            vec!["sponsors".into(), join(&a.sponsors)],
            vec!["owners".into(), join(&a.owners)],
            vec!["attributes (effective)".into(), join(&attributes)],
            vec!["capabilities".into(), join(&metadata.capabilities)],
            vec!["tasks".into(), join(&metadata.tasks)],
            vec!["protocols".into(), join(&protocols)],
            vec!["endpoints".into(), join(&metadata.endpoints)],
            vec![
                "offline (effective)".into(),
                enum_name(
                    a.effective_offline_behavior().as_str_name(),
                    "OFFLINE_BEHAVIOR_",
                ),
            ],
            vec![
                "governance (own)".into(),
                format!(
                    "lifetime {}d, reconfirm every {}d, disable after {}d idle (0: blueprint's)",
                    governance.lifetime_days,
                    governance.reconfirm_every_days,
                    governance.inactivity_disable_days
                ),
            ],
            vec!["expires".into(), time(a.expire_time.as_ref())],
            vec![
                "last reconfirmed".into(),
                time(a.last_reconfirm_time.as_ref()),
            ],
            vec!["last active".into(), time(a.last_active_time.as_ref())],
            vec!["created".into(), time(a.create_time.as_ref())],
            vec!["updated".into(), time(a.update_time.as_ref())],
        ];
        table(&["FIELD", "VALUE"], &rows);
        Ok(())
    }

    pub fn removal(&self, response: &proto::RemovePrincipalResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        let mut rows = Vec::new();
        for id in &response.agent_ids {
            let outcome = if response.reassigned_agent_ids.contains(id) {
                "reassigned"
            } else if response.orphaned_agent_ids.contains(id) {
                "orphaned (alert raised)"
            } else {
                "removed"
            };
            rows.push(vec![id.clone(), outcome.to_owned()]);
        }
        table(&["AGENT", "OUTCOME"], &rows);
        Ok(())
    }

    pub fn alerts(&self, response: &proto::ListAlertsResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = response
            .alerts
            .iter()
            .map(|a| {
                vec![
                    a.id.to_string(),
                    time(a.create_time.as_ref()),
                    enum_name(a.kind().as_str_name(), "ALERT_KIND_"),
                    a.agent_id.clone(),
                    a.message.clone(),
                ]
            })
            .collect();
        table(&["ID", "TIME", "KIND", "AGENT", "MESSAGE"], &rows);
        Ok(())
    }

    pub fn sweep(&self, response: &proto::RunSweepResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        let rows = vec![
            vec!["expired agents".into(), join(&response.expired_agent_ids)],
            vec![
                "disabled (reconfirmation overdue)".into(),
                join(&response.reconfirmation_disabled_agent_ids),
            ],
            vec![
                "disabled (inactive)".into(),
                join(&response.inactive_disabled_agent_ids),
            ],
            vec!["orphaned agents".into(), join(&response.orphaned_agent_ids)],
            vec![
                "activated access packages".into(),
                join(&response.activated_access_package_ids),
            ],
            vec![
                "expired access packages".into(),
                join(&response.expired_access_package_ids),
            ],
        ];
        table(&["CHANGE", "IDS"], &rows);
        Ok(())
    }

    pub fn packages<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        packages: &[proto::AccessPackage],
    ) -> anyhow::Result<()> {
        if self.json(message)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = packages
            .iter()
            .map(|p| {
                let approved = p
                    .stages
                    .iter()
                    .filter(|s| !s.approved_by.is_empty())
                    .count();
                let resources: Vec<String> = p
                    .resources
                    .iter()
                    .map(|r| {
                        format!(
                            "{}={}",
                            match r.kind() {
                                proto::ResourceKind::NetworkDestination => "net",
                                proto::ResourceKind::FilePath => "file",
                                proto::ResourceKind::McpServer => "mcp",
                                proto::ResourceKind::Unspecified => "?",
                            },
                            r.value
                        )
                    })
                    .collect();
                vec![
                    p.id.clone(),
                    p.agent_id.clone(),
                    enum_name(p.state().as_str_name(), "ACCESS_PACKAGE_STATE_"),
                    format!("{approved}/{}", p.stages.len()),
                    join(&resources),
                    time(p.start_time.as_ref()),
                    time(p.expire_time.as_ref()),
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "AGENT",
                "STATE",
                "APPROVED",
                "RESOURCES",
                "STARTS",
                "EXPIRES",
            ],
            &rows,
        );
        Ok(())
    }

    pub fn audit(&self, response: &proto::ListAuditEventsResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = response
            .events
            .iter()
            .map(|e| {
                vec![
                    e.sequence.to_string(),
                    time(e.time.as_ref()),
                    e.actor.clone(),
                    e.action.clone(),
                    format!("{} {}", e.target_type, e.target_id),
                    if e.previous_json.is_empty() {
                        "-".into()
                    } else {
                        "yes".into()
                    },
                ]
            })
            .collect();
        table(
            &["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "PREVIOUS"],
            &rows,
        );
        Ok(())
    }

    pub fn join_token(&self, response: &proto::CreateJoinTokenResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        println!("join token (shown once, single use): {}", response.token);
        println!("token id: {}", response.token_id);
        println!("expires: {}", time(response.expire_time.as_ref()));
        Ok(())
    }

    pub fn enrolled(&self, response: &proto::EnrollHostResponse, dir: &Path) -> anyhow::Result<()> {
        if self.json(&proto::EnrollHostResponse {
            host_token: "<written to host-token>".into(),
            ..response.clone()
        })? {
            return Ok(());
        }
        println!("enrolled as host {}", response.host_id);
        println!(
            "wrote {0}/host-token, {0}/host.key, {0}/host.crt and {0}/ca.crt",
            dir.display()
        );
        Ok(())
    }

    pub fn hosts<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        hosts: &[proto::Host],
    ) -> anyhow::Result<()> {
        if self.json(message)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                vec![
                    h.id.clone(),
                    h.hostname.clone(),
                    if h.revoked {
                        "revoked".into()
                    } else {
                        "enrolled".into()
                    },
                    time(h.last_heartbeat_time.as_ref()),
                    h.agent_ids.len().to_string(),
                    h.agentd_version.clone(),
                    applied(h),
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "HOSTNAME",
                "STATUS",
                "LAST HEARTBEAT",
                "AGENTS",
                "VERSION",
                "APPLIED DECISIONS",
            ],
            &rows,
        );
        Ok(())
    }

    pub fn created_token(&self, response: &proto::CreateApiTokenResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        if let Some(token) = &response.api_token {
            println!(
                "token {} ({}, {}) for {}",
                token.id,
                token.name,
                enum_name(token.role().as_str_name(), "ROLE_"),
                token.principal
            );
        }
        println!("secret (shown once): {}", response.token);
        Ok(())
    }

    pub fn tokens<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        tokens: &[proto::ApiToken],
    ) -> anyhow::Result<()> {
        if self.json(message)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = tokens
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.name.clone(),
                    enum_name(t.role().as_str_name(), "ROLE_"),
                    t.principal.clone(),
                    time(t.create_time.as_ref()),
                    if t.revoked {
                        "revoked".into()
                    } else {
                        "active".into()
                    },
                ]
            })
            .collect();
        table(
            &["ID", "NAME", "ROLE", "PRINCIPAL", "CREATED", "STATUS"],
            &rows,
        );
        Ok(())
    }

    pub fn whoami(&self, response: &proto::WhoAmIResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        println!(
            "{} ({}), token {}",
            response.principal,
            enum_name(response.role().as_str_name(), "ROLE_"),
            response.token_id
        );
        Ok(())
    }

    pub fn policies<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        policies: &[proto::Policy],
    ) -> anyhow::Result<()> {
        if self.json(message)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = policies
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.id.clone(),
                    match p.state() {
                        proto::PolicyState::Enabled => "enabled".to_owned(),
                        proto::PolicyState::ReportOnly => "reportOnly".to_owned(),
                        proto::PolicyState::Disabled => "disabled".to_owned(),
                        proto::PolicyState::Unspecified => "-".to_owned(),
                    },
                    p.version.to_string(),
                    if p.managed { "yes" } else { "no" }.to_owned(),
                    time(p.update_time.as_ref()),
                    p.updated_by.clone(),
                ]
            })
            .collect();
        table(
            &["NAME", "ID", "STATE", "VERSION", "MANAGED", "UPDATED", "BY"],
            &rows,
        );
        Ok(())
    }

    pub fn what_if(&self, response: &proto::WhatIfResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        println!(
            "risk {}, host {}, at {}",
            response.risk_level,
            if response.host_id.is_empty() {
                "(none)"
            } else {
                &response.host_id
            },
            time(response.eval_time.as_ref())
        );
        let rows: Vec<Vec<String>> = response
            .evaluations
            .iter()
            .map(|e| {
                vec![
                    e.policy_name.clone(),
                    enum_name(e.state().as_str_name(), "POLICY_STATE_"),
                    if e.applies { "applies" } else { "-" }.to_owned(),
                    e.reasons.join("; "),
                ]
            })
            .collect();
        table(&["POLICY", "STATE", "APPLIES", "WHY"], &rows);
        for evaluation in &response.evaluations {
            for warning in &evaluation.warnings {
                println!("warning: policy {}: {warning}", evaluation.policy_name);
            }
        }
        if let Some(decision) = &response.decision {
            println!();
            print_decision(decision);
        }
        Ok(())
    }

    pub fn decision_set(&self, set: &proto::DecisionSet) -> anyhow::Result<()> {
        if self.json(set)? {
            return Ok(());
        }
        println!(
            "decision set version {} issued {} ({} agents)",
            set.version,
            time(set.issue_time.as_ref()),
            set.decisions.len()
        );
        for decision in &set.decisions {
            print_decision(decision);
        }
        Ok(())
    }

    pub fn risks<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        risks: &[proto::AgentRisk],
    ) -> anyhow::Result<()> {
        if self.json(message)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = risks
            .iter()
            .map(|r| {
                vec![
                    r.agent_id.clone(),
                    r.risk_level.clone(),
                    match r.confirmation() {
                        proto::RiskConfirmation::Unspecified => "-".to_owned(),
                        other => enum_name(other.as_str_name(), "RISK_CONFIRMATION_"),
                    },
                    r.detection_count.to_string(),
                    join(&r.host_ids),
                ]
            })
            .collect();
        table(
            &["AGENT", "RISK", "CONFIRMED", "DETECTIONS", "HOSTS"],
            &rows,
        );
        Ok(())
    }

    pub fn detections(&self, response: &proto::ListDetectionsResponse) -> anyhow::Result<()> {
        if self.json(response)? {
            return Ok(());
        }
        let rows: Vec<Vec<String>> = response
            .detections
            .iter()
            .map(|d| {
                vec![
                    time(d.detect_time.as_ref()),
                    d.agent_id.clone(),
                    d.host_id.clone(),
                    d.severity.clone(),
                    d.rule.clone(),
                    d.summary.clone(),
                ]
            })
            .collect();
        table(
            &["DETECTED", "AGENT", "HOST", "SEVERITY", "RULE", "SUMMARY"],
            &rows,
        );
        Ok(())
    }
}

/// `v12 at 2026-11-27T10:00:00Z (35s ago)`, or `-` before the first acknowledgement.
fn applied(host: &proto::Host) -> String {
    let Some(at) = host.applied_time else {
        return "-".to_owned();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let age = u64::try_from(now - at.seconds).unwrap_or(0);
    format!(
        "v{} at {} ({} ago)",
        host.applied_decision_version,
        time(Some(&at)),
        humantime::format_duration(std::time::Duration::from_secs(age))
    )
}

fn grant_text(grant: &proto::NetworkGrant) -> String {
    use proto::network_grant::Destination as D;
    let destination = match &grant.destination {
        Some(D::Cidr(v)) => format!("cidr {v}"),
        Some(D::Domain(v)) => format!("domain {v}"),
        Some(D::Category(v)) => format!("category {v}"),
        Some(D::McpServer(v)) => format!("mcp {v}"),
        None => "?".to_owned(),
    };
    let mut text = destination;
    if !grant.ports.is_empty() {
        let _ = write!(text, " port {}", grant.ports);
    }
    if grant.expire_time.is_some() {
        let _ = write!(text, " until {}", time(grant.expire_time.as_ref()));
    }
    text
}

fn print_decision(d: &proto::AgentDecision) {
    println!(
        "{} ({}): {}, risk {}, offline {} (ttl {}s)",
        d.agent_name,
        d.agent_id,
        enum_name(d.action().as_str_name(), "ACTION_"),
        d.risk_level,
        enum_name(d.offline_behavior().as_str_name(), "OFFLINE_BEHAVIOR_"),
        d.offline_ttl_seconds
    );
    if d.report_only_action() != proto::Action::Unspecified {
        println!(
            "  report-only would: {}",
            enum_name(d.report_only_action().as_str_name(), "ACTION_")
        );
    }
    if d.network_restricted {
        let grants: Vec<String> = d.network_grants.iter().map(grant_text).collect();
        println!("  network: only {}", join(&grants));
    } else if !d.network_grants.is_empty() {
        let grants: Vec<String> = d.network_grants.iter().map(grant_text).collect();
        println!("  network: unrestricted; grants {}", join(&grants));
    }
    if !d.network_denials.is_empty() {
        let denials: Vec<String> = d.network_denials.iter().map(grant_text).collect();
        println!("  network denied: {}", join(&denials));
    }
    for rule in &d.file_controls {
        println!(
            "  file {} {} {}",
            rule.action,
            rule.access.join(","),
            rule.path
        );
    }
    for reason in &d.reasons {
        println!("  - {reason}");
    }
}

/// A blueprint's SVID lifetime: `default` (the control plane's) or a duration.
fn svid_lifetime(seconds: u32) -> String {
    if seconds == 0 {
        "default".to_owned()
    } else {
        humantime::format_duration(std::time::Duration::from_secs(u64::from(seconds))).to_string()
    }
}
