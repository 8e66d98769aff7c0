//! The cap on every repeated and map field of every RPC request (docs/control-plane.md,
//! "Request limits"): a request over a cap is refused with `INVALID_ARGUMENT` naming the field
//! and the cap, before any of its entries is looked at. The unit test below walks the proto
//! descriptors, so that a new repeated field without a cap fails the build's tests.

use crate::error::Error;

/// Agents one host reports running (`ReportAgentsRequest.agent_ids`): the size of agentd's
/// per-host agent maps (`CGROUP_AGENT`, 4,096 entries).
pub const REPORTED_AGENTS: usize = 4096;
/// Detections in one `ReportDetections`.
pub const DETECTIONS_PER_REPORT: usize = 1000;
/// Resources of one access package.
pub const PACKAGE_RESOURCES: usize = 256;
/// Approval stages of one access package.
pub const APPROVERS: usize = 16;
/// Sponsors, owners; attributes and labels; metadata lists; discovery rules.
pub const PRINCIPALS: usize = 64;
pub const ATTRIBUTES: usize = 64;
pub const METADATA_ENTRIES: usize = 64;
pub const DISCOVERY_RULES: usize = 64;
/// Audiences of one JWT-SVID.
pub const AUDIENCES: usize = 16;
/// A blueprint's baseline destinations and protected paths.
pub const BASELINE_ENTRIES: usize = 1000;

/// Every repeated or map field reachable from an RPC request, by full proto name, with its cap.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the table the descriptor test checks the proto against"
    )
)]
pub const CAPS: &[(&str, usize)] = &[
    ("agentd.v1.ReportAgentsRequest.agent_ids", REPORTED_AGENTS),
    (
        "agentd.v1.ReportDetectionsRequest.detections",
        DETECTIONS_PER_REPORT,
    ),
    ("agentd.v1.SetHostLabelsRequest.labels", ATTRIBUTES),
    ("agentd.v1.CreateJoinTokenRequest.labels", ATTRIBUTES),
    (
        "agentd.v1.RequestAccessPackageRequest.resources",
        PACKAGE_RESOURCES,
    ),
    ("agentd.v1.RequestAccessPackageRequest.approvers", APPROVERS),
    ("agentd.v1.CreateAgentRequest.attributes", ATTRIBUTES),
    ("agentd.v1.CreateAgentRequest.sponsors", PRINCIPALS),
    ("agentd.v1.CreateAgentRequest.owners", PRINCIPALS),
    ("agentd.v1.UpdateAgentRequest.attributes", ATTRIBUTES),
    ("agentd.v1.AgentMetadata.capabilities", METADATA_ENTRIES),
    ("agentd.v1.AgentMetadata.tasks", METADATA_ENTRIES),
    ("agentd.v1.AgentMetadata.protocols", METADATA_ENTRIES),
    ("agentd.v1.AgentMetadata.endpoints", METADATA_ENTRIES),
    ("agentd.v1.Blueprint.discovery_rules", DISCOVERY_RULES),
    ("agentd.v1.Blueprint.attributes", ATTRIBUTES),
    (
        "agentd.v1.BaselinePolicy.allowed_destinations",
        BASELINE_ENTRIES,
    ),
    ("agentd.v1.BaselinePolicy.protected_paths", BASELINE_ENTRIES),
    ("agentd.v1.SignAgentJwtRequest.audience", AUDIENCES),
];

/// Refuses a list or map of `len` entries past `max`, naming the field and the cap.
pub fn at_most(field: &str, len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        return Err(Error::invalid(
            field,
            format!("has {len} entries; at most {max} are allowed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost_reflect::{DescriptorPool, MessageDescriptor};

    use super::*;

    fn repeated_fields(
        message: &MessageDescriptor,
        seen: &mut BTreeSet<String>,
        out: &mut BTreeSet<String>,
    ) {
        if !seen.insert(message.full_name().to_owned()) {
            return;
        }
        for field in message.fields() {
            if field.is_list() || field.is_map() {
                out.insert(field.full_name().to_owned());
            }
            if let Some(inner) = field.kind().as_message() {
                if field.is_map() {
                    continue;
                }
                repeated_fields(inner, seen, out);
            }
        }
    }

    #[test]
    fn every_repeated_field_of_every_request_has_a_cap() {
        let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
        let mut seen = BTreeSet::new();
        let mut fields = BTreeSet::new();
        for service in pool.services() {
            for method in service.methods() {
                repeated_fields(&method.input(), &mut seen, &mut fields);
            }
        }
        let capped: BTreeSet<String> = CAPS.iter().map(|(name, _)| (*name).to_owned()).collect();
        let uncapped: Vec<_> = fields.difference(&capped).collect();
        assert!(
            uncapped.is_empty(),
            "repeated request fields without a cap: {uncapped:?}"
        );
        let stale: Vec<_> = capped.difference(&fields).collect();
        assert!(stale.is_empty(), "caps of fields no request has: {stale:?}");
    }

    #[test]
    fn a_list_past_its_cap_is_refused_naming_field_and_cap() {
        at_most("agent_ids", 4096, REPORTED_AGENTS).expect("at the cap");
        match at_most("agent_ids", 100_000, REPORTED_AGENTS) {
            Err(Error::InvalidArgument { field, reason }) => {
                assert_eq!(field, "agent_ids");
                assert_eq!(reason, "has 100000 entries; at most 4096 are allowed");
            }
            other => panic!("{other:?}"),
        }
    }
}
