//! The decision set on the wire and on disk: validated whole from the control plane's
//! protobuf (any bad field refuses the set, naming the field), kept as JSON beside the host's
//! credentials.

use std::path::Path;

use agentd_proto::v1 as proto;

use super::model::{
    Action, AgentDecision, DecisionError, DecisionSet, Destination, FileControl, Grant, Offline,
    ReportOnlyNetwork, error, mcp_host,
};
use crate::policy::network::{DomainPattern, Prefix};

pub(super) fn unix_ms(timestamp: Option<&prost_types::Timestamp>) -> Option<i64> {
    timestamp.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

pub(super) fn action(value: i32, field: &str) -> Result<Action, DecisionError> {
    match proto::Action::try_from(value) {
        Ok(proto::Action::Allow) => Ok(Action::Allow),
        Ok(proto::Action::Block) => Ok(Action::Block),
        Ok(proto::Action::Quarantine) => Ok(Action::Quarantine),
        _ => Err(error(field.to_owned(), format!("unknown action {value}"))),
    }
}

/// `"443"`, `"8000-8100"` or `""` (any).
pub(super) fn ports(text: &str, field: &str) -> Result<(u16, u16), DecisionError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok((0, u16::MAX));
    }
    let parse = |part: &str| {
        part.trim()
            .parse::<u16>()
            .map_err(|_| error(field.to_owned(), format!("{text:?} is not a port or range")))
    };
    let (lo, hi) = if let Some((lo, hi)) = text.split_once('-') {
        (parse(lo)?, parse(hi)?)
    } else {
        let port = parse(text)?;
        (port, port)
    };
    if lo > hi {
        return Err(error(field.to_owned(), format!("{text:?}: empty range")));
    }
    Ok((lo, hi))
}

pub(super) fn grant(raw: &proto::NetworkGrant, field: &str) -> Result<Grant, DecisionError> {
    use proto::network_grant::Destination as Raw;
    let destination = match &raw.destination {
        Some(Raw::Cidr(cidr)) => {
            cidr.parse::<Prefix>()
                .map_err(|reason| error(format!("{field}.cidr"), reason))?;
            Destination::Cidr(cidr.clone())
        }
        Some(Raw::Domain(domain)) => {
            DomainPattern::parse(domain)
                .map_err(|reason| error(format!("{field}.domain"), reason))?;
            Destination::Domain(domain.clone())
        }
        Some(Raw::Category(category)) => Destination::Category(category.clone()),
        Some(Raw::McpServer(url)) => {
            mcp_host(url).map_err(|reason| error(format!("{field}.mcp_server"), reason))?;
            Destination::McpServer(url.clone())
        }
        None => return Err(error(field.to_owned(), "no destination")),
    };
    Ok(Grant {
        destination,
        ports: ports(&raw.ports, &format!("{field}.ports"))?,
        expires_unix_ms: unix_ms(raw.expire_time.as_ref()),
        source: raw.source.clone(),
    })
}

impl DecisionSet {
    /// Validates a set from the control plane; any bad field refuses the whole set.
    pub fn from_proto(raw: &proto::DecisionSet) -> Result<Self, DecisionError> {
        let mut decisions = Vec::new();
        for (i, d) in raw.decisions.iter().enumerate() {
            let at = format!("decisions[{i}]");
            let grants = d
                .network_grants
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.network_grants[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let denials = d
                .network_denials
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.network_denials[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut file_controls = Vec::new();
            for (j, f) in d.file_controls.iter().enumerate() {
                let control = FileControl {
                    path: f.path.clone(),
                    access: f.access.clone(),
                    action: f.action.clone(),
                    expires_unix_ms: unix_ms(f.expire_time.as_ref()),
                    source: f.source.clone(),
                };
                control.check(&format!("{at}.file_controls[{j}]"))?;
                file_controls.push(control);
            }
            let report_only_grants = d
                .report_only_network_grants
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.report_only_network_grants[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let report_only_denials = d
                .report_only_network_denials
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.report_only_network_denials[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let report_only_network = (d.report_only_network_restricted
                || !report_only_grants.is_empty()
                || !report_only_denials.is_empty())
            .then_some(ReportOnlyNetwork {
                restricted: d.report_only_network_restricted,
                grants: report_only_grants,
                denials: report_only_denials,
            });
            let report_only_action = match proto::Action::try_from(d.report_only_action) {
                Ok(proto::Action::Unspecified) => None,
                _ => Some(action(
                    d.report_only_action,
                    &format!("{at}.report_only_action"),
                )?),
            };
            let offline = match proto::OfflineBehavior::try_from(d.offline_behavior) {
                Ok(proto::OfflineBehavior::FailClosed) => Offline::FailClosed,
                Ok(proto::OfflineBehavior::Baseline) => Offline::Baseline,
                _ => Offline::KeepLast,
            };
            decisions.push(AgentDecision {
                agent_id: d.agent_id.clone(),
                agent_name: d.agent_name.clone(),
                action: action(d.action, &format!("{at}.action"))?,
                network_restricted: d.network_restricted,
                grants,
                denials,
                file_controls,
                report_only_action,
                report_only_network,
                offline,
                offline_ttl_secs: d.offline_ttl_seconds,
                risk_level: d.risk_level.clone(),
                reasons: d.reasons.clone(),
                policy_ids: d.policy_ids.clone(),
                report_only_policy_ids: d.report_only_policy_ids.clone(),
            });
        }
        let issued_unix_ms = unix_ms(raw.issue_time.as_ref()).unwrap_or(0);
        Ok(Self {
            version: raw.version,
            issued_unix_ms,
            confirmed_unix_ms: issued_unix_ms,
            decisions,
        })
    }

    /// Reads the set kept at `path`, if there is one.
    pub fn load(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes the set to `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = path.with_extension("partial");
        std::fs::write(
            &partial,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&partial, path)
    }
}
