//! What agentd has learned from DNS answers, and what it means for the kernel.
//!
//! An answer's addresses are the upstream's word for a name, so they apply to the domain rules
//! of every agent (a deny learned through one agent's lookup also holds for the others). The
//! connection log is stricter: it names a domain for an agent's connection only while that
//! agent's own lookup of it is in force.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use agentd_common::{LearnedKeyV4, LearnedKeyV6, LearnedRule, net_action};

use crate::policy::network::DomainRule;

/// A DNS answer: the name asked for and the addresses on its CNAME chain, with their TTLs in
/// seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub addresses: Vec<(IpAddr, u32)>,
}

/// The kernel's learned destinations: `NET_LEARNED_V4` and `NET_LEARNED_V6` entries.
pub type KernelEntries = (
    Vec<(LearnedKeyV4, LearnedRule)>,
    Vec<(LearnedKeyV6, LearnedRule)>,
);

/// One agent's domain rules with their numbers, as the kernel names them.
pub struct AgentRules<'a> {
    pub agent: u32,
    pub rules: Vec<(&'a DomainRule, u32)>,
}

/// Inserts `entry` under `key` unless a deny is there already: deny wins.
fn keep<K: std::hash::Hash + Eq>(map: &mut HashMap<K, LearnedRule>, key: K, entry: LearnedRule) {
    let denied = map
        .get(&key)
        .is_some_and(|old| old.action == net_action::DENY);
    if !denied {
        map.insert(key, entry);
    }
}

#[derive(Clone, Debug, Default)]
pub struct LearnedNames {
    /// Name → (address, expiry), from every agent's lookups.
    by_name: HashMap<String, Vec<(IpAddr, Instant)>>,
    /// (agent, address) → the name that agent looked up and its expiry, for connection events.
    lookups: HashMap<(u32, IpAddr), (String, Instant)>,
}

impl LearnedNames {
    /// Records `agent`'s answer at `now`. A TTL counts at least a second, so that the agent can
    /// use an answer with TTL 0 once.
    pub fn record(&mut self, agent: u32, answer: &Answer, now: Instant) {
        let name = answer.name.trim_end_matches('.').to_ascii_lowercase();
        let entries = self.by_name.entry(name.clone()).or_default();
        for (address, ttl) in &answer.addresses {
            let expiry = now + Duration::from_secs(u64::from((*ttl).max(1)));
            entries.retain(|(known, _)| known != address);
            entries.push((*address, expiry));
            self.lookups
                .insert((agent, *address), (name.clone(), expiry));
        }
    }

    /// Forgets what expired by `now`.
    pub fn expire(&mut self, now: Instant) {
        for entries in self.by_name.values_mut() {
            entries.retain(|(_, expiry)| *expiry > now);
        }
        self.by_name.retain(|_, entries| !entries.is_empty());
        self.lookups.retain(|_, (_, expiry)| *expiry > now);
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The domain `agent`'s own lookup gave `address`, while it is in force at `now`.
    pub fn domain(&self, agent: u32, address: IpAddr, now: Instant) -> Option<&str> {
        self.lookups
            .get(&(agent, address))
            .filter(|(_, expiry)| *expiry > now)
            .map(|(name, _)| name.as_str())
    }

    /// The kernel entries the learned names and `agents`' domain rules make. Where rules of
    /// one agent disagree on an address, deny wins.
    pub fn kernel_entries(&self, agents: &[AgentRules<'_>]) -> KernelEntries {
        let mut v4: HashMap<LearnedKeyV4, LearnedRule> = HashMap::new();
        let mut v6: HashMap<LearnedKeyV6, LearnedRule> = HashMap::new();
        for AgentRules { agent, rules } in agents {
            for (rule, number) in rules {
                let entry = LearnedRule {
                    port_lo: rule.ports.0,
                    port_hi: rule.ports.1,
                    protocol: rule.protocol.kernel_number(),
                    action: rule.action.kernel_value(),
                    flags: if rule.override_cidr_deny {
                        LearnedRule::FLAG_OVERRIDES_PREFIX_DENY
                    } else {
                        0
                    },
                    rule: *number,
                };
                for (name, entries) in &self.by_name {
                    if !rule.pattern.matches(name) {
                        continue;
                    }
                    for (address, _) in entries {
                        match address {
                            IpAddr::V4(addr) => {
                                let key = LearnedKeyV4 {
                                    agent: *agent,
                                    addr: addr.octets(),
                                };
                                keep(&mut v4, key, entry);
                            }
                            IpAddr::V6(addr) => {
                                let key = LearnedKeyV6 {
                                    agent: *agent,
                                    addr: addr.octets(),
                                };
                                keep(&mut v6, key, entry);
                            }
                        }
                    }
                }
            }
        }
        (v4.into_iter().collect(), v6.into_iter().collect())
    }

    /// The IPv4 addresses by name, for Conditional Access's learned entries.
    pub fn v4_by_name(&self) -> BTreeMap<String, Vec<[u8; 4]>> {
        self.by_name
            .iter()
            .map(|(name, entries)| {
                let v4 = entries
                    .iter()
                    .filter_map(|(address, _)| match address {
                        IpAddr::V4(v4) => Some(v4.octets()),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                (name.clone(), v4)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::network::{Action, DomainPattern, Protocol};

    fn rule(pattern: &str, action: Action) -> DomainRule {
        DomainRule {
            name: format!("a/{pattern}"),
            pattern: DomainPattern::parse(pattern).unwrap(),
            ports: (443, 443),
            protocol: Protocol::Tcp,
            action,
            override_cidr_deny: action == Action::Allow && pattern.starts_with("override."),
        }
    }

    fn answer(name: &str, addresses: &[&str]) -> Answer {
        Answer {
            name: name.into(),
            addresses: addresses.iter().map(|a| (a.parse().unwrap(), 60)).collect(),
        }
    }

    #[test]
    fn a_and_aaaa_answers_become_kernel_entries_and_deny_wins() {
        let mut learned = LearnedNames::default();
        let now = Instant::now();
        learned.record(1, &answer("Allowed.Test.", &["127.0.0.3", "fd00::3"]), now);
        learned.record(1, &answer("denied.test", &["127.0.0.3"]), now);
        let allow = rule("allowed.test", Action::Allow);
        let deny = rule("denied.test", Action::Deny);
        let (v4, v6) = learned.kernel_entries(&[AgentRules {
            agent: 7,
            rules: vec![(&allow, 10), (&deny, 11)],
        }]);
        assert_eq!(v4.len(), 1);
        assert_eq!(v4[0].0.addr, [127, 0, 0, 3]);
        assert_eq!((v4[0].1.action, v4[0].1.rule), (net_action::DENY, 11));
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].0.agent, 7);
        assert_eq!(
            v6[0].0.addr,
            "fd00::3".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert_eq!((v6[0].1.action, v6[0].1.rule), (net_action::ALLOW, 10));
        assert_eq!(v6[0].1.flags, 0);
    }

    #[test]
    fn a_rule_that_overrides_cidr_denies_says_so_to_the_kernel() {
        let mut learned = LearnedNames::default();
        learned.record(1, &answer("override.test", &["127.0.0.6"]), Instant::now());
        let allow = rule("override.test", Action::Allow);
        let (v4, _) = learned.kernel_entries(&[AgentRules {
            agent: 1,
            rules: vec![(&allow, 3)],
        }]);
        assert_eq!(v4[0].1.flags, LearnedRule::FLAG_OVERRIDES_PREFIX_DENY);
    }

    #[test]
    fn the_log_names_a_domain_only_for_the_agent_that_looked_it_up_while_in_force() {
        let mut learned = LearnedNames::default();
        let now = Instant::now();
        let address: IpAddr = "127.0.0.3".parse().unwrap();
        learned.record(1, &answer("allowed.test", &["127.0.0.3"]), now);
        assert_eq!(learned.domain(1, address, now), Some("allowed.test"));
        assert_eq!(learned.domain(2, address, now), None, "another agent");
        let later = now + Duration::from_secs(61);
        assert_eq!(learned.domain(1, address, later), None, "lapsed");
        learned.expire(later);
        assert!(learned.is_empty());
        assert_eq!(learned.domain(1, address, now), None);
    }
}
