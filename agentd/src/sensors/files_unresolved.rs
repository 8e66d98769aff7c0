//! Each agent's unresolved-location entry in the file rule map (`InodeKey::UNRESOLVED`). The
//! kernel judges an object by it when its walk up the directories cannot place the object: a
//! disconnected dentry (a file opened by handle after its parents left the cache) or a tree
//! deeper than the walk goes. Such an object might lie under any of the agent's directory
//! rules, so the entry denies what any of the agent's deny rules denies: fail closed.

use std::collections::BTreeMap;

use agentd_common::{CaFileControl, FileNameKey, FileRule, FileRuleKey, InodeKey, net_action};

/// The entries for the agents that `objects` and `names` give deny rules or deny controls,
/// reporting `rule`. An agent's entry enforces the accesses its enforced deny rules cover; an
/// agent whose deny rules are all in audit mode gets an audit entry (would-deny). Each access's
/// deny control of the decision is carried over, with the latest expiry among them (none if
/// any never expires), so the entry lapses only when every such control has.
#[must_use]
pub fn unresolved_entries(
    objects: &[(FileRuleKey, FileRule)],
    names: &[(FileNameKey, FileRule)],
    rule: u32,
) -> Vec<(FileRuleKey, FileRule)> {
    #[derive(Default)]
    struct Agent {
        enforced: u32,
        audited: u32,
        decision: [Option<CaFileControl>; 3],
    }
    let mut agents: BTreeMap<u32, Agent> = BTreeMap::new();
    let local = objects
        .iter()
        .map(|(key, value)| (key.agent, value))
        .chain(names.iter().map(|(key, value)| (key.agent, value)));
    for (agent, value) in local {
        let entry = agents.entry(agent).or_default();
        if value.access != 0 && value.action == net_action::DENY {
            if value.audit == 0 {
                entry.enforced |= value.access;
            } else {
                entry.audited |= value.access;
            }
        }
    }
    for (key, value) in objects {
        let entry = agents.entry(key.agent).or_default();
        for (slot, control) in value.decision.iter().enumerate() {
            if control.present == 0 || control.action != net_action::DENY {
                continue;
            }
            let kept = entry.decision[slot].get_or_insert(*control);
            if kept.expires_ns != 0
                && (control.expires_ns == 0 || control.expires_ns > kept.expires_ns)
            {
                *kept = *control;
            }
        }
    }
    agents
        .into_iter()
        .filter_map(|(agent, found)| {
            let (access, audit) = if found.enforced != 0 {
                (found.enforced, false)
            } else {
                (found.audited, true)
            };
            let has_controls = found.decision.iter().any(Option::is_some);
            if access == 0 && !has_controls {
                return None;
            }
            let mut value = FileRule::local(access, net_action::DENY, audit, rule);
            for (slot, control) in found.decision.into_iter().enumerate() {
                value.decision[slot] = control.unwrap_or(CaFileControl::NONE);
            }
            let key = FileRuleKey {
                agent,
                pad: 0,
                inode: InodeKey::UNRESOLVED,
            };
            Some((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use agentd_common::{file_access, file_name_kind};

    use super::*;
    use crate::sensors::files::name_key;

    fn object(agent: u32, ino: u64, value: FileRule) -> (FileRuleKey, FileRule) {
        (
            FileRuleKey {
                agent,
                pad: 0,
                inode: InodeKey::new(8, 1, ino),
            },
            value,
        )
    }

    fn deny_control(rule: u32, expires_ns: u64) -> CaFileControl {
        CaFileControl {
            present: 1,
            action: net_action::DENY,
            pad: 0,
            rule,
            expires_ns,
        }
    }

    #[test]
    fn an_agent_with_deny_rules_gets_an_entry_denying_what_they_deny() {
        let objects = [
            object(
                1,
                10,
                FileRule::local(file_access::READ, net_action::DENY, false, 5),
            ),
            object(
                1,
                11,
                FileRule::local(file_access::EXEC, net_action::ALLOW, false, 6),
            ),
            object(
                2,
                12,
                FileRule::local(file_access::WRITE, net_action::DENY, true, 7),
            ),
            object(
                3,
                13,
                FileRule::local(file_access::READ, net_action::ALLOW, false, 8),
            ),
        ];
        let names = [(
            name_key(1, file_name_kind::EXTENSION, "pem"),
            FileRule::local(file_access::WRITE, net_action::DENY, false, 9),
        )];
        let entries = unresolved_entries(&objects, &names, 42);
        assert_eq!(entries.len(), 2, "agent 3 has only allow rules: no entry");
        let (key, value) = entries[0];
        assert_eq!((key.agent, key.inode), (1, InodeKey::UNRESOLVED));
        assert_eq!(value.access, file_access::READ | file_access::WRITE);
        assert_eq!(
            (value.action, value.audit, value.rule),
            (net_action::DENY, 0, 42)
        );
        let (key, value) = entries[1];
        assert_eq!(key.agent, 2);
        assert_eq!((value.access, value.audit), (file_access::WRITE, 1));
    }

    #[test]
    fn enforced_rules_win_over_audited_ones() {
        let objects = [
            object(
                1,
                10,
                FileRule::local(file_access::READ, net_action::DENY, true, 5),
            ),
            object(
                1,
                11,
                FileRule::local(file_access::WRITE, net_action::DENY, false, 6),
            ),
        ];
        let entries = unresolved_entries(&objects, &[], 42);
        assert_eq!(entries[0].1.access, file_access::WRITE);
        assert_eq!(entries[0].1.audit, 0);
    }

    #[test]
    fn deny_controls_carry_over_with_the_latest_expiry() {
        let mut first = FileRule::local(0, net_action::ALLOW, false, 0);
        first.decision[0] = deny_control(20, 1_000);
        let mut second = FileRule::local(0, net_action::ALLOW, false, 0);
        second.decision[0] = deny_control(21, 5_000);
        second.decision[1] = CaFileControl {
            action: net_action::ALLOW,
            ..deny_control(22, 0)
        };
        let mut third = FileRule::local(0, net_action::ALLOW, false, 0);
        third.decision[2] = deny_control(23, 0);
        third.decision[0] = deny_control(24, 3_000);
        let objects = [
            object(1, 10, first),
            object(1, 11, second),
            object(1, 12, third),
        ];
        let entries = unresolved_entries(&objects, &[], 42);
        assert_eq!(entries.len(), 1);
        let value = entries[0].1;
        assert_eq!(value.access, 0, "no local deny rule");
        assert_eq!(
            (value.decision[0].rule, value.decision[0].expires_ns),
            (21, 5_000)
        );
        assert_eq!(
            value.decision[1].present, 0,
            "an allow control is not carried"
        );
        assert_eq!(
            (value.decision[2].rule, value.decision[2].expires_ns),
            (23, 0)
        );

        let mut never = FileRule::local(0, net_action::ALLOW, false, 0);
        never.decision[0] = deny_control(25, 0);
        let objects = [object(1, 10, first), object(1, 13, never)];
        let value = unresolved_entries(&objects, &[], 42)[0].1;
        assert_eq!(
            value.decision[0].expires_ns, 0,
            "a control that never lapses keeps it"
        );
    }
}
