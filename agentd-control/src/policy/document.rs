//! Policy documents: YAML parsed into raw serde types (unknown fields refused), then validated
//! into [`PolicyDocument`]. Every error names the field path, e.g.
//! `conditions.riskLevels[1]: unknown risk level "critical"`. The same validator serves the API
//! and agentctl (which sends the file's text).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    AttributeFilter, HostRef, PolicyState, RiskLevel,
    controls::{Controls, RawControls, controls},
    document_fields::{Result, check_len, identifier},
};
use crate::error::{Error, bounded, quoted};

/// Documents larger than this are refused before parsing.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    name: Option<String>,
    #[serde(default)]
    description: String,
    state: Option<String>,
    assignments: Option<RawAssignments>,
    #[serde(default)]
    conditions: RawConditions,
    controls: Option<RawControls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAssignments {
    include: Option<RawSelector>,
    #[serde(default)]
    exclude: RawSelector,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    blueprints: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConditions {
    #[serde(default)]
    risk_levels: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    host_labels: BTreeMap<String, String>,
    #[serde(default)]
    time_windows: Vec<RawTimeWindow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTimeWindow {
    #[serde(default)]
    days: Vec<String>,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    time_zone: String,
}

/// Which agents a selector picks: any criterion matching is enough. Lists, not hash sets: they
/// are short, and comparing a few strings (length first) beats hashing the agent's id, name and
/// blueprint for every policy (see `one_agent_over_a_thousand_policies_is_fast`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub all: bool,
    /// Agent ids (UUIDs) or names, without duplicates.
    pub agents: Vec<String>,
    /// Without duplicates.
    pub blueprints: Vec<String>,
    /// Every key must be present with one of the listed values.
    pub attributes: AttributeFilter,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.agents.is_empty()
            && self.blueprints.is_empty()
            && self.attributes.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit 0 Monday ... bit 6 Sunday; all set when the document lists no days.
    pub days: u8,
    /// Minutes after local midnight, `start..end`; `end < start` wraps past midnight (the day is
    /// that of the start).
    pub start_minute: u16,
    pub end_minute: u16,
    /// Seconds east of UTC.
    pub offset_seconds: i32,
}

pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Empty: any risk.
    pub risk_levels: Vec<RiskLevel>,
    /// Host ids and hostnames; empty: any host.
    pub hosts: Vec<HostRef>,
    /// Every label must match; empty: any host.
    pub host_labels: BTreeMap<String, String>,
    /// Any window matching is enough; empty: any time.
    pub time_windows: Vec<TimeWindow>,
}

/// A validated policy document. Grants and file rules carry an empty `source`: the evaluator
/// fills in the policy id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDocument {
    pub name: String,
    pub description: String,
    pub state: PolicyState,
    pub include: Selector,
    pub exclude: Selector,
    pub conditions: Conditions,
    pub controls: Controls,
}

/// Parses and validates a YAML policy document.
pub fn parse_document(yaml: &str) -> Result<PolicyDocument> {
    parse(yaml, super::yaml_limits::check)
}

/// Parses a document the store holds: as [`parse_document`], but a duplicate key keeps its
/// last value (documents stored before duplicates were refused must still load).
pub fn parse_stored_document(yaml: &str) -> Result<PolicyDocument> {
    parse(yaml, super::yaml_limits::check_stored)
}

fn parse(yaml: &str, limits: fn(&str) -> Result<()>) -> Result<PolicyDocument> {
    if yaml.trim().is_empty() {
        return Err(Error::invalid("yaml", "the policy document is empty"));
    }
    if yaml.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::invalid(
            "yaml",
            format!("the policy document is larger than {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    limits(yaml)?;
    let raw: RawPolicy = serde_yaml_ng::from_str(yaml).map_err(|err| yaml_error(&err))?;
    validate(raw)
}

/// `serde_yaml_ng` reports `path.to.field: message at line L column C`; keep the path as the
/// field. Its messages may quote what was sent (a string of the wrong type, an unknown key):
/// both parts are cut to a bounded length.
fn yaml_error(err: &serde_yaml_ng::Error) -> Error {
    let text = err.to_string();
    match text.split_once(": ") {
        Some((path, reason)) if !path.contains(' ') && !path.is_empty() && path != "." => {
            Error::invalid(bounded(path, 256), bounded(reason, MAX_REASON_CHARS))
        }
        _ => Error::invalid("yaml", bounded(&text, MAX_REASON_CHARS)),
    }
}

/// The deserializer's reasons are cut to this many characters.
const MAX_REASON_CHARS: usize = 256;

fn validate(raw: RawPolicy) -> Result<PolicyDocument> {
    let name = raw
        .name
        .ok_or_else(|| Error::invalid("name", "is required"))?;
    let name = identifier("name", &name)?;
    if raw.description.chars().count() > 1024 {
        return Err(Error::invalid(
            "description",
            "is longer than 1024 characters",
        ));
    }
    let state_text = raw
        .state
        .ok_or_else(|| Error::invalid("state", "is required (enabled, reportOnly or disabled)"))?;
    let state = PolicyState::parse(&state_text).ok_or_else(|| {
        Error::invalid(
            "state",
            format!(
                "unknown state {} (enabled, reportOnly or disabled)",
                quoted(&state_text)
            ),
        )
    })?;
    let assignments = raw
        .assignments
        .ok_or_else(|| Error::invalid("assignments", "is required (assignments.include)"))?;
    let include = selector(
        "assignments.include",
        assignments
            .include
            .ok_or_else(|| Error::invalid("assignments.include", "is required"))?,
    )?;
    if include.is_empty() {
        return Err(Error::invalid(
            "assignments.include",
            "selects no agent: set all, agents, blueprints or attributes",
        ));
    }
    let exclude = selector("assignments.exclude", assignments.exclude)?;
    if exclude.all {
        return Err(Error::invalid(
            "assignments.exclude.all",
            "would exclude every agent; disable the policy instead",
        ));
    }
    let conditions = conditions(raw.conditions)?;
    let controls = controls(
        raw.controls
            .ok_or_else(|| Error::invalid("controls", "is required"))?,
    )?;
    Ok(PolicyDocument {
        name,
        description: raw.description,
        state,
        include,
        exclude,
        conditions,
        controls,
    })
}

fn token(field: &str, value: &str, what: &str) -> Result<String> {
    if value.is_empty()
        || value.len() > 256
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(
            field,
            format!(
                "{} is not {what} (1 to 256 characters, no spaces)",
                quoted(value)
            ),
        ));
    }
    Ok(value.to_owned())
}

fn selector(field: &str, raw: RawSelector) -> Result<Selector> {
    check_len(&format!("{field}.agents"), raw.agents.len())?;
    check_len(&format!("{field}.blueprints"), raw.blueprints.len())?;
    check_len(&format!("{field}.attributes"), raw.attributes.len())?;
    let mut agents: Vec<String> = Vec::new();
    for (index, agent) in raw.agents.iter().enumerate() {
        let item = format!("{field}.agents[{index}]");
        let agent = token(&item, agent, "an agent id or name")?;
        if !agents.contains(&agent) {
            agents.push(agent);
        }
    }
    let mut blueprints: Vec<String> = Vec::new();
    for (index, blueprint) in raw.blueprints.iter().enumerate() {
        let item = format!("{field}.blueprints[{index}]");
        let blueprint = identifier(&item, blueprint)?;
        if !blueprints.contains(&blueprint) {
            blueprints.push(blueprint);
        }
    }
    let mut attributes = BTreeMap::new();
    for (key, values) in raw.attributes {
        let item = format!("{field}.attributes.{key}");
        if key.is_empty()
            || key.len() > 63
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(Error::invalid(
                item,
                "attribute keys are 1 to 63 of A-Z, a-z, 0-9, _, . and -",
            ));
        }
        let values = match values {
            OneOrMany::One(value) => vec![value],
            OneOrMany::Many(values) => values,
        };
        if values.is_empty() {
            return Err(Error::invalid(item, "lists no value"));
        }
        check_len(&item, values.len())?;
        for (index, value) in values.iter().enumerate() {
            if value.chars().count() > 256 {
                return Err(Error::invalid(
                    format!("{item}[{index}]"),
                    "is longer than 256 characters",
                ));
            }
        }
        attributes.insert(key, values);
    }
    Ok(Selector {
        all: raw.all,
        agents,
        blueprints,
        attributes,
    })
}

fn conditions(raw: RawConditions) -> Result<Conditions> {
    check_len("conditions.riskLevels", raw.risk_levels.len())?;
    check_len("conditions.hosts", raw.hosts.len())?;
    check_len("conditions.timeWindows", raw.time_windows.len())?;
    check_len("conditions.hostLabels", raw.host_labels.len())?;
    let mut risk_levels = Vec::new();
    for (index, level) in raw.risk_levels.iter().enumerate() {
        let field = format!("conditions.riskLevels[{index}]");
        let level = RiskLevel::parse(level).ok_or_else(|| {
            Error::invalid(
                &field,
                format!(
                    "unknown risk level {} (none, low, medium or high)",
                    quoted(level)
                ),
            )
        })?;
        if risk_levels.contains(&level) {
            return Err(Error::invalid(field, format!("{level} is listed twice")));
        }
        risk_levels.push(level);
    }
    let mut hosts = Vec::new();
    for (index, host) in raw.hosts.iter().enumerate() {
        let field = format!("conditions.hosts[{index}]");
        hosts.push(HostRef::parse(
            &field,
            &token(&field, host, "a host id or hostname")?,
        )?);
    }
    for (key, value) in &raw.host_labels {
        let field = format!("conditions.hostLabels.{key}");
        if key.is_empty()
            || key.len() > 63
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(Error::invalid(
                field,
                "label keys are 1 to 63 of A-Z, a-z, 0-9, _, . and -",
            ));
        }
        if value.chars().count() > 256 {
            return Err(Error::invalid(field, "is longer than 256 characters"));
        }
    }
    let mut time_windows = Vec::new();
    for (index, window) in raw.time_windows.iter().enumerate() {
        time_windows.push(time_window(
            &format!("conditions.timeWindows[{index}]"),
            window,
        )?);
    }
    Ok(Conditions {
        risk_levels,
        hosts,
        host_labels: raw.host_labels,
        time_windows,
    })
}

fn time_window(field: &str, raw: &RawTimeWindow) -> Result<TimeWindow> {
    let mut days = 0u8;
    for (index, day) in raw.days.iter().enumerate() {
        let lower = day.to_ascii_lowercase();
        let position = DAY_NAMES
            .iter()
            .position(|name| lower == *name || lower == full_day_name(name))
            .ok_or_else(|| {
                Error::invalid(
                    format!("{field}.days[{index}]"),
                    format!(
                        "unknown day {} (mon, tue, wed, thu, fri, sat or sun)",
                        quoted(day)
                    ),
                )
            })?;
        days |= 1 << position;
    }
    if days == 0 {
        days = 0x7f;
    }
    let (start_minute, end_minute) = if raw.hours.is_empty() {
        (0, 24 * 60)
    } else {
        let invalid = || {
            Error::invalid(
                format!("{field}.hours"),
                format!(
                    "{} is not HH:MM-HH:MM (e.g. 09:00-17:30)",
                    quoted(&raw.hours)
                ),
            )
        };
        let (start, end) = raw.hours.split_once('-').ok_or_else(invalid)?;
        let start = clock_minute(start.trim(), false).ok_or_else(invalid)?;
        let end = clock_minute(end.trim(), true).ok_or_else(invalid)?;
        if start == end {
            return Err(Error::invalid(
                format!("{field}.hours"),
                "starts and ends at the same time",
            ));
        }
        (start, end)
    };
    let offset_seconds = time_zone(&raw.time_zone).ok_or_else(|| {
        Error::invalid(
            format!("{field}.timeZone"),
            format!(
                "{} is not UTC or an offset such as +02:00 or UTC-05:30",
                quoted(&raw.time_zone)
            ),
        )
    })?;
    Ok(TimeWindow {
        days,
        start_minute,
        end_minute,
        offset_seconds,
    })
}

fn full_day_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

/// `HH:MM`; `24:00` only as an end.
fn clock_minute(text: &str, is_end: bool) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let hours: u16 = hours.parse().ok()?;
    let minutes: u16 = minutes.parse().ok()?;
    if minutes >= 60 {
        return None;
    }
    let total = hours * 60 + minutes;
    (total < 24 * 60 || (is_end && total == 24 * 60)).then_some(total)
}

/// `""`, `UTC`, `Z`, `+02:00`, `-05:30`, `UTC+02:00`: seconds east of UTC.
fn time_zone(text: &str) -> Option<i32> {
    let rest = text.strip_prefix("UTC").unwrap_or(text);
    if rest.is_empty() || rest == "Z" {
        return Some(0);
    }
    let (sign, rest) = match rest.as_bytes().first()? {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':').unwrap_or((rest, "00"));
    if hours.is_empty() || hours.len() > 2 || minutes.len() != 2 {
        return None;
    }
    let hours: i32 = hours.parse().ok()?;
    let minutes: i32 = minutes.parse().ok()?;
    (hours <= 14 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Cidr, Destination, FileAction, Ports};

    fn field_of(yaml: &str) -> (String, String) {
        match parse_document(yaml) {
            Err(Error::InvalidArgument { field, reason }) => (field, reason),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    const GOOD: &str = "
name: finance-egress
description: Finance agents reach only the bank API during office hours
state: enabled
assignments:
  include:
    blueprints: [finance]
    attributes: {dept: [finance, audit]}
  exclude:
    agents: [legacy-bot]
conditions:
  riskLevels: [none, low]
  hostLabels: {env: prod}
  timeWindows:
    - days: [mon, tue, wed, thu, fri]
      hours: 09:00-17:30
      timeZone: +02:00
controls:
  network:
    allow:
      - cidr: 10.20.0.0/16
        ports: 443
      - domain: '*.bank.example'
        ports: 8000-8100
      - mcpServer: https://mcp.example.com/sse
    deny:
      - category: paste-sites
  files:
    - path: /srv/ledger
      access: [write]
      action: deny
";

    #[test]
    fn a_complete_document_parses_into_its_parts() {
        let doc = parse_document(GOOD).expect("valid");
        assert_eq!(doc.name, "finance-egress");
        assert_eq!(doc.state, PolicyState::Enabled);
        assert_eq!(doc.include.blueprints, ["finance"]);
        assert_eq!(doc.include.attributes["dept"], vec!["finance", "audit"]);
        assert_eq!(doc.exclude.agents, ["legacy-bot"]);
        assert_eq!(
            doc.conditions.risk_levels,
            vec![RiskLevel::None, RiskLevel::Low]
        );
        let window = doc.conditions.time_windows[0];
        assert_eq!(window.days, 0b1_1111);
        assert_eq!((window.start_minute, window.end_minute), (540, 1050));
        assert_eq!(window.offset_seconds, 7200);
        let allow = doc.controls.network_allow.expect("allow-list");
        assert_eq!(allow[0].destination.to_string(), "cidr 10.20.0.0/16");
        assert_eq!(
            allow[0].ports,
            Some(Ports {
                first: 443,
                last: 443
            })
        );
        assert_eq!(
            allow[1].ports,
            Some(Ports {
                first: 8000,
                last: 8100
            })
        );
        assert_eq!(
            doc.controls.network_deny[0].destination,
            Destination::Category("paste-sites".into())
        );
        assert_eq!(doc.controls.files[0].action, FileAction::Deny);
    }

    #[test]
    fn an_unknown_risk_level_is_refused_by_its_index() {
        let yaml = GOOD.replace("riskLevels: [none, low]", "riskLevels: [low, critical]");
        let (field, reason) = field_of(&yaml);
        assert_eq!(field, "conditions.riskLevels[1]");
        assert!(
            reason.starts_with("unknown risk level \"critical\""),
            "{reason}"
        );
    }

    #[test]
    fn bad_fields_are_named_by_path() {
        let cases = [
            ("state: enabled", "state: on", "state"),
            (
                "cidr: 10.20.0.0/16",
                "cidr: 10.20.0.0/33",
                "controls.network.allow[0].cidr",
            ),
            (
                "ports: 443",
                "ports: 70000",
                "controls.network.allow[0].ports",
            ),
            (
                "ports: 8000-8100",
                "ports: 8100-8000",
                "controls.network.allow[1].ports",
            ),
            (
                "hours: 09:00-17:30",
                "hours: 9-5",
                "conditions.timeWindows[0].hours",
            ),
            (
                "timeZone: +02:00",
                "timeZone: Mars/Olympus",
                "conditions.timeWindows[0].timeZone",
            ),
            (
                "days: [mon, tue",
                "days: [mon, tew",
                "conditions.timeWindows[0].days[1]",
            ),
            (
                "access: [write]",
                "access: [delete]",
                "controls.files[0].access[0]",
            ),
            ("action: deny", "action: maybe", "controls.files[0].action"),
            (
                "path: /srv/ledger",
                "path: srv/ledger",
                "controls.files[0].path",
            ),
            ("name: finance-egress", "name: Finance Egress", "name"),
        ];
        for (from, to, expected) in cases {
            assert!(GOOD.contains(from), "{from}");
            let (field, reason) = field_of(&GOOD.replacen(from, to, 1));
            assert_eq!(field, expected, "{to}: {reason}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let yaml = GOOD.replace("  riskLevels:", "  riskLevel: [high]\n  riskLevels:");
        let (field, reason) = field_of(&yaml);
        assert_eq!(field, "conditions", "{reason}");
        assert!(reason.contains("riskLevel"), "{reason}");
    }

    #[test]
    fn a_destination_needs_exactly_one_kind() {
        let yaml = GOOD.replace(
            "- category: paste-sites",
            "- category: paste-sites\n        domain: x.example",
        );
        let (field, _) = field_of(&yaml);
        assert_eq!(field, "controls.network.deny[0]");
    }

    #[test]
    fn a_policy_must_select_someone_and_control_something() {
        let yaml =
            "name: p\nstate: enabled\nassignments:\n  include: {}\ncontrols:\n  block: true\n";
        assert_eq!(field_of(yaml).0, "assignments.include");
        let yaml = "name: p\nstate: enabled\nassignments:\n  include: {all: true}\ncontrols: {}\n";
        assert_eq!(field_of(yaml).0, "controls");
        assert_eq!(field_of("").0, "yaml");
        assert_eq!(field_of("name: p\n").0, "state");
    }

    #[test]
    fn the_managed_baseline_is_a_valid_report_only_block() {
        let doc = parse_document(super::super::BASELINE_POLICY_YAML).expect("valid");
        assert_eq!(doc.name, super::super::BASELINE_POLICY_NAME);
        assert_eq!(doc.state, PolicyState::ReportOnly);
        assert!(doc.controls.block && doc.include.all);
        assert_eq!(doc.conditions.risk_levels, vec![RiskLevel::High]);
    }

    #[test]
    fn duplicate_keys_are_refused_in_nested_maps_and_structs() {
        let yaml = GOOD.replace(
            "attributes: {dept: [finance, audit]}",
            "attributes: {dept: [finance], dept: [audit]}",
        );
        let (field, reason) = field_of(&yaml);
        assert_eq!(field, "assignments.include.attributes.dept");
        assert!(reason.contains("given twice"), "{reason}");
        let yaml = GOOD.replace(
            "hostLabels: {env: prod}",
            "hostLabels: {env: prod, env: dev}",
        );
        assert_eq!(field_of(&yaml).0, "conditions.hostLabels.env");
        let yaml = GOOD.replace(
            "      action: deny\n",
            "      action: deny\n      action: allow\n",
        );
        assert_eq!(field_of(&yaml).0, "controls.files[0].action");
    }

    #[test]
    fn an_alias_bomb_in_a_policy_is_refused_by_the_limits_before_deserializing() {
        let mut yaml = String::from(
            "name: bomb\nstate: enabled\nassignments:\n  include:\n    attributes:\n      a: &a [",
        );
        yaml.push_str(&vec!["x"; 1000].join(","));
        yaml.push_str("]\n      b: [");
        yaml.push_str(&vec!["*a"; 1000].join(","));
        yaml.push_str("]\ncontrols: {block: true}\n");
        assert!(yaml.len() < 8 * 1024);
        let started = std::time::Instant::now();
        let (field, reason) = field_of(&yaml);
        assert!(
            started.elapsed().as_millis() < 100,
            "{:?}",
            started.elapsed()
        );
        assert!(
            field.starts_with("assignments.include.attributes.b["),
            "{field}"
        );
        assert!(reason.contains("more than 100000 nodes"), "{reason}");
        let deep = GOOD.replace(
            "blueprints: [finance]",
            &format!(
                "blueprints: {}finance{}",
                "[".repeat(5000),
                "]".repeat(5000)
            ),
        );
        assert!(field_of(&deep).1.contains("deeper than 32 levels"));
    }

    #[test]
    fn errors_quote_a_bounded_prefix_of_the_bad_value() {
        let long = "Z".repeat(100_000);
        for yaml in [
            GOOD.replace("name: finance-egress", &format!("name: {long}")),
            GOOD.replace("state: enabled", &format!("state: {long}")),
            GOOD.replace("cidr: 10.20.0.0/16", &format!("cidr: {long}")),
            GOOD.replace("  include:", &format!("  include:\n    {long}: 1")),
            GOOD.replace("    blueprints: [finance]", &format!("    all: {long}")),
        ] {
            let (field, reason) = field_of(&yaml);
            assert!(
                field.len() + reason.len() < 600,
                "{field}: {}",
                &reason[..200]
            );
        }
    }

    #[test]
    fn a_stored_document_with_a_duplicate_key_still_loads_with_the_last_value() {
        let yaml = GOOD.replace(
            "attributes: {dept: [finance, audit]}",
            "attributes: {dept: [finance], dept: [audit]}",
        );
        assert!(parse_document(&yaml).is_err());
        let doc = parse_stored_document(&yaml).expect("stored documents load");
        assert_eq!(doc.include.attributes["dept"], vec!["audit"]);
        let deep = GOOD.replace(
            "blueprints: [finance]",
            &format!("blueprints: {}finance{}", "[".repeat(100), "]".repeat(100)),
        );
        assert!(field_of_stored(&deep).contains("deeper than 32 levels"));
    }

    fn field_of_stored(yaml: &str) -> String {
        match parse_stored_document(yaml) {
            Err(Error::InvalidArgument { reason, .. }) => reason,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn attribute_lists_are_capped() {
        let values = vec!["v"; 1001].join(", ");
        let yaml = GOOD.replace(
            "attributes: {dept: [finance, audit]}",
            &format!("attributes: {{dept: [{values}]}}"),
        );
        let (field, reason) = field_of(&yaml);
        assert_eq!(field, "assignments.include.attributes.dept");
        assert!(reason.contains("more than 1000"), "{reason}");
    }

    #[test]
    fn cidrs_are_normalised_and_contain_narrower_ones() {
        let wide = Cidr::parse("10.1.2.3/8").expect("cidr");
        assert_eq!(wide.to_string(), "10.0.0.0/8");
        let narrow = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(wide.contains(&narrow) && !narrow.contains(&wide));
        assert_eq!(
            Cidr::parse("192.0.2.1").expect("addr").to_string(),
            "192.0.2.1/32"
        );
        assert!(Cidr::parse("0.0.0.0/0").expect("any").contains(&narrow));
        assert!(!wide.contains(&Cidr::parse("2001:db8::/32").expect("v6")));
    }
}
