//! The `controls` section of a policy document: block and quarantine, network allow and deny
//! lists (CIDR, domain, port ranges), and file controls, validated with field-named errors.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{
    Cidr, Destination, FileAccess, FileAction, FileControl, NetworkGrant, Ports,
    document_fields::{Result, check_len, identifier},
};
use crate::error::{Error, quoted};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawControls {
    #[serde(default)]
    block: bool,
    #[serde(default)]
    quarantine: bool,
    network: Option<RawNetwork>,
    #[serde(default)]
    files: Vec<RawFileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNetwork {
    /// `None`: no allow-list (network not restricted by this policy); `Some([])`: allow nothing.
    allow: Option<Vec<RawDestination>>,
    #[serde(default)]
    deny: Vec<RawDestination>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDestination {
    cidr: Option<String>,
    domain: Option<String>,
    category: Option<String>,
    mcp_server: Option<String>,
    #[serde(default)]
    ports: Option<PortsText>,
}

/// Ports may be written as a number (`443`) or a string (`"8000-8100"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum PortsText {
    Number(u32),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFileRule {
    path: Option<String>,
    #[serde(default)]
    access: Vec<String>,
    action: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    pub block: bool,
    pub quarantine: bool,
    /// `Some`: the agent may reach only these (the policy restricts the network).
    pub network_allow: Option<Vec<NetworkGrant>>,
    pub network_deny: Vec<NetworkGrant>,
    pub files: Vec<FileControl>,
}

pub(super) fn controls(raw: RawControls) -> Result<Controls> {
    let (network_allow, network_deny) = match raw.network {
        None => (None, Vec::new()),
        Some(network) => {
            let allow = network
                .allow
                .map(|list| destinations("controls.network.allow", list))
                .transpose()?;
            let deny = destinations("controls.network.deny", network.deny)?;
            if allow.is_none() && deny.is_empty() {
                return Err(Error::invalid(
                    "controls.network",
                    "needs allow (an allow-list, [] for none) or deny",
                ));
            }
            (allow, deny)
        }
    };
    check_len("controls.files", raw.files.len())?;
    let mut files = Vec::new();
    for (index, rule) in raw.files.into_iter().enumerate() {
        files.push(file_rule(&format!("controls.files[{index}]"), rule)?);
    }
    if !raw.block
        && !raw.quarantine
        && network_allow.is_none()
        && network_deny.is_empty()
        && files.is_empty()
    {
        return Err(Error::invalid(
            "controls",
            "sets no control: use block, quarantine, network or files",
        ));
    }
    Ok(Controls {
        block: raw.block,
        quarantine: raw.quarantine,
        network_allow,
        network_deny,
        files,
    })
}

fn destinations(field: &str, list: Vec<RawDestination>) -> Result<Vec<NetworkGrant>> {
    check_len(field, list.len())?;
    let mut out: Vec<NetworkGrant> = Vec::with_capacity(list.len());
    let mut seen = BTreeSet::new();
    for (index, raw) in list.into_iter().enumerate() {
        let item = format!("{field}[{index}]");
        let grant = destination(&item, raw)?;
        if !seen.insert((grant.destination.clone(), grant.ports)) {
            return Err(Error::invalid(
                item,
                format!("{} is listed twice", grant.destination),
            ));
        }
        out.push(grant);
    }
    Ok(out)
}

fn destination(field: &str, raw: RawDestination) -> Result<NetworkGrant> {
    let given = [
        raw.cidr.is_some(),
        raw.domain.is_some(),
        raw.category.is_some(),
        raw.mcp_server.is_some(),
    ]
    .iter()
    .filter(|&&set| set)
    .count();
    if given != 1 {
        return Err(Error::invalid(
            field,
            "needs exactly one of cidr, domain, category or mcpServer",
        ));
    }
    let destination = if let Some(cidr) = raw.cidr {
        Destination::Cidr(Cidr::parse(&cidr).ok_or_else(|| {
            Error::invalid(
                format!("{field}.cidr"),
                format!(
                    "{} is not an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)",
                    quoted(&cidr)
                ),
            )
        })?)
    } else if let Some(domain) = raw.domain {
        Destination::Domain(domain_name(&format!("{field}.domain"), &domain)?)
    } else if let Some(category) = raw.category {
        Destination::Category(identifier(&format!("{field}.category"), &category)?)
    } else {
        let url = raw.mcp_server.unwrap_or_default();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        if !rest.is_some_and(|r| {
            let authority = r.split('/').next().unwrap_or_default();
            !authority.is_empty() && !r.contains(char::is_whitespace)
        }) || url.len() > 2048
        {
            return Err(Error::invalid(
                format!("{field}.mcpServer"),
                format!("{} is not an http(s) URL", quoted(&url)),
            ));
        }
        Destination::McpServer(url)
    };
    let ports = match raw.ports {
        None => None,
        Some(PortsText::Text(text)) if text.is_empty() => None,
        Some(PortsText::Text(text)) => Some(Ports::parse(&text).ok_or_else(|| {
            Error::invalid(
                format!("{field}.ports"),
                format!(
                    "{} is not a port or a range (443, 8000-8100) of 1-65535",
                    quoted(&text)
                ),
            )
        })?),
        Some(PortsText::Number(number)) => Some(
            u16::try_from(number)
                .ok()
                .and_then(|p| Ports::parse(&p.to_string()))
                .ok_or_else(|| {
                    Error::invalid(
                        format!("{field}.ports"),
                        format!("{number} is not a port (1-65535)"),
                    )
                })?,
        ),
    };
    Ok(NetworkGrant {
        destination,
        ports,
        expires_at: None,
        source: String::new(),
    })
}

/// A DNS name, optionally `*.` in front; stored in lower case.
fn domain_name(field: &str, value: &str) -> Result<String> {
    let lower = value.to_ascii_lowercase();
    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(Error::invalid(
            field,
            format!(
                "{} is not a domain name (example.com or *.example.com)",
                quoted(value)
            ),
        ));
    }
    Ok(lower)
}

fn file_rule(field: &str, raw: RawFileRule) -> Result<FileControl> {
    let path = raw
        .path
        .ok_or_else(|| Error::invalid(format!("{field}.path"), "is required"))?;
    if !path.starts_with('/') || path.split('/').any(|part| part == "..") || path.len() > 4096 {
        return Err(Error::invalid(
            format!("{field}.path"),
            format!("{} is not an absolute path without ..", quoted(&path)),
        ));
    }
    if raw.access.is_empty() {
        return Err(Error::invalid(
            format!("{field}.access"),
            "is required (read, write and/or exec)",
        ));
    }
    let mut access = Vec::new();
    for (index, text) in raw.access.iter().enumerate() {
        let kind = FileAccess::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(
                    format!("{field}.access[{index}]"),
                    format!("unknown access {} (read, write or exec)", quoted(text)),
                )
            })?;
        if !access.contains(&kind) {
            access.push(kind);
        }
    }
    access.sort();
    let action = match raw.action.as_deref() {
        Some("allow") => FileAction::Allow,
        Some("deny") => FileAction::Deny,
        Some(other) => {
            return Err(Error::invalid(
                format!("{field}.action"),
                format!("unknown action {} (allow or deny)", quoted(other)),
            ));
        }
        None => {
            return Err(Error::invalid(
                format!("{field}.action"),
                "is required (allow or deny)",
            ));
        }
    };
    Ok(FileControl {
        path,
        access,
        action,
        expires_at: None,
        source: String::new(),
    })
}
