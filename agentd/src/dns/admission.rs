//! The query filter: which queries the resolver forwards upstream, and which it answers itself.
//! Pure: the daemon passes the asking agent's network policy and quarantine state.

use crate::policy::network::{Action, CompiledAgentNetwork, Mode};

/// What the resolver does with a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Forward it upstream; the answer is learned for this agent (its registry index).
    Forward { agent: u32 },
    /// Answer REFUSED, forwarding nothing: a quarantined agent, or a socket no agent steered.
    Refuse,
    /// Answer locally as `dns.unallowed_names` says (NXDOMAIN or REFUSED): no rule of the agent
    /// can allow the name.
    Unallowed,
}

/// The decision for `agent` (its registry index) asking for `name`, with `network` its network
/// policy (`None`: no network settings, so allowed everywhere):
/// - a quarantined agent's queries are refused;
/// - under `default = "deny"` in enforce mode, a name that no allow domain rule (`domain`,
///   `category`, `destination`) matches is answered with `unallowed`, since no connection to
///   its addresses could be allowed by name: forwarding it would only carry data out (a DNS
///   tunnel). A CIDR rule allows addresses, not lookups (`Unallowed`);
/// - everything else is forwarded.
pub fn admit(
    agent: u32,
    network: Option<&CompiledAgentNetwork>,
    quarantined: bool,
    name: &str,
) -> Admission {
    if quarantined {
        return Admission::Refuse;
    }
    let Some(network) = network else {
        return Admission::Forward { agent };
    };
    if network.default == Action::Allow || network.mode == Mode::Audit {
        return Admission::Forward { agent };
    }
    let allowed = network
        .domains
        .iter()
        .any(|rule| rule.action == Action::Allow && rule.pattern.matches(name));
    if allowed {
        Admission::Forward { agent }
    } else {
        Admission::Unallowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::network::{DomainPattern, DomainRule, Protocol};

    fn network(default: Action, mode: Mode, domains: &[(&str, Action)]) -> CompiledAgentNetwork {
        CompiledAgentNetwork {
            default,
            mode,
            rules: Vec::new(),
            domains: domains
                .iter()
                .map(|(pattern, action)| DomainRule {
                    name: format!("a/{pattern}"),
                    pattern: DomainPattern::parse(pattern).unwrap(),
                    ports: (1, 65_535),
                    protocol: Protocol::Any,
                    action: *action,
                    override_cidr_deny: false,
                })
                .collect(),
            raw_sockets: crate::policy::network::RawSockets::default(),
            socket_families: Vec::new(),
        }
    }

    #[test]
    fn under_default_deny_only_names_an_allow_rule_matches_are_forwarded() {
        let net = network(
            Action::Deny,
            Mode::Enforce,
            &[
                ("*.allowed.test", Action::Allow),
                ("denied.test", Action::Deny),
            ],
        );
        let admit = |name| admit(3, Some(&net), false, name);
        assert_eq!(admit("api.allowed.test"), Admission::Forward { agent: 3 });
        assert_eq!(admit("allowed.test"), Admission::Unallowed);
        assert_eq!(admit("denied.test"), Admission::Unallowed);
        assert_eq!(admit("tunnel-data.attacker.test"), Admission::Unallowed);
    }

    #[test]
    fn quarantined_agents_are_refused_whatever_the_policy() {
        let net = network(Action::Allow, Mode::Enforce, &[]);
        assert_eq!(
            admit(1, Some(&net), true, "allowed.test"),
            Admission::Refuse
        );
        assert_eq!(admit(1, None, true, "allowed.test"), Admission::Refuse);
    }

    #[test]
    fn default_allow_audit_mode_and_no_network_settings_forward() {
        let allow = network(Action::Allow, Mode::Enforce, &[]);
        let audit = network(Action::Deny, Mode::Audit, &[]);
        for net in [Some(&allow), Some(&audit), None] {
            assert_eq!(
                admit(2, net, false, "anything.test"),
                Admission::Forward { agent: 2 }
            );
        }
    }
}
