//! The verdict on a tagged process's call or packet: the policy maps (double-buffered by
//! generation), the blocklist, quarantine, the addresses DNS answers taught, Conditional
//! Access after the local verdict, and the verdict cache (`NET_VERDICTS` under the epoch in
//! `NET_CACHE`). The call hooks (`net`) and the egress check (`net_packet`) both ask [`judge`].

use agentd_common::{
    BlockKeyV4, BlockKeyV6, COMM_LEN, EventKind, LearnedKeyV4, LearnedKeyV6, LearnedRule,
    NET_RULES_PER_PREFIX, NetAgentKey, NetAgentPolicy, NetCacheConfig, NetEvent, NetKeyV4,
    NetKeyV6, NetRuleList, NetVerdict, NetVerdictKey, Verdict, net_action,
};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, lpm_trie::Key},
};

use crate::{
    events::{header, output, wakeup},
    net_access::conditional_access,
    net_types::{Decision, Destination, lpm_ptr, v4},
};

/// Slot 0: the generation (0 or 1) in force.
#[map]
pub static NET_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

/// (generation, agent) → the agent's default action, mode and policy version. Two generations
/// of up to 4,096 agents.
#[map]
pub static NET_AGENTS: HashMap<NetAgentKey, NetAgentPolicy> = HashMap::with_max_entries(8_192, 0);

/// (generation, agent, IPv4 prefix) → rules. 16,384 prefixes: two generations of a 1,000-rule
/// policy with room to spare; userspace refuses a policy that does not fit.
#[map]
pub static NET_RULES_V4: LpmTrie<NetKeyV4, NetRuleList> = LpmTrie::with_max_entries(16_384, 0);

/// (generation, agent, IPv6 prefix) → rules; sized as `NET_RULES_V4`.
#[map]
pub static NET_RULES_V6: LpmTrie<NetKeyV6, NetRuleList> = LpmTrie::with_max_entries(16_384, 0);

/// (generation, IPv4 prefix) → rule number: the global threat-intel blocklist.
#[map]
pub static NET_BLOCK_V4: LpmTrie<BlockKeyV4, u32> = LpmTrie::with_max_entries(65_536, 0);

/// (generation, IPv6 prefix) → rule number.
#[map]
pub static NET_BLOCK_V6: LpmTrie<BlockKeyV6, u32> = LpmTrie::with_max_entries(65_536, 0);

/// agent → 1 while quarantined. Not generation-bound: quarantine applies on the next call.
#[map]
pub static NET_QUARANTINE: HashMap<u32, u32> = HashMap::with_max_entries(4_096, 0);

/// Destinations a quarantined agent may still reach (the control plane, exceptions).
#[map]
pub static NET_QUARANTINE_ALLOW_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(256, 0);

#[map]
pub static NET_QUARANTINE_ALLOW_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(256, 0);
/// (agent, IPv4 address) → the domain rule that a DNS answer made apply to that address.
/// Written by agentd's resolver as answers arrive and removed when their TTL runs out.
#[map]
pub static NET_LEARNED_V4: HashMap<LearnedKeyV4, LearnedRule> =
    HashMap::with_max_entries(16_384, 0);

/// (agent, IPv6 address) → the domain rule that a DNS answer (AAAA) made apply to it; sized and
/// written as `NET_LEARNED_V4`.
#[map]
pub static NET_LEARNED_V6: HashMap<LearnedKeyV6, LearnedRule> =
    HashMap::with_max_entries(16_384, 0);

/// Slot 0: the verdict cache's epoch and the report interval for allowed calls.
#[map]
pub static NET_CACHE: Array<NetCacheConfig> = Array::with_max_entries(1, 0);

/// Verdicts of recent calls by tagged processes, keyed under the epoch in force. LRU: 16,384
/// (agent, destination, hook) at once; an evicted one is decided again.
#[map]
pub static NET_VERDICTS: LruHashMap<NetVerdictKey, NetVerdict> =
    LruHashMap::with_max_entries(16_384, 0);
/// The rule a DNS answer made apply to `dst` for `agent`, or null.
#[inline(always)]
fn learned_rule(agent: u32, dst: &Destination) -> *const LearnedRule {
    let entry = if dst.family == 4 {
        NET_LEARNED_V4.get_ptr(LearnedKeyV4 {
            agent,
            addr: v4(&dst.addr),
        })
    } else {
        NET_LEARNED_V6.get_ptr(LearnedKeyV6 {
            agent,
            addr: dst.addr,
        })
    };
    entry.unwrap_or(core::ptr::null())
}

// Lookups copy out plain integers into initialised locals rather than moving `Option`s of
// structs around: the verifier rejects reads of registers that a `None` path left unset.
fn decide(agent: u32, dst: &Destination) -> Decision {
    let rule_protocol = dst.rule_protocol();
    let mut generation = 0u32;
    if let Some(value) = NET_CONFIG.get_ptr(0) {
        // SAFETY: a valid map value pointer.
        generation = unsafe { *value };
    }

    let mut blocked = 0u32;
    let mut blocked_rule = 0u32;
    if dst.family == 4 {
        let key = Key::new(
            32 + 32,
            BlockKeyV4 {
                generation,
                addr: v4(&dst.addr),
            },
        );
        if let Some(rule) = lpm_ptr(&NET_BLOCK_V4, &key) {
            blocked = 1;
            // SAFETY: a valid map value pointer.
            blocked_rule = unsafe { *rule };
        }
    } else {
        let key = Key::new(
            32 + 128,
            BlockKeyV6 {
                generation,
                addr: dst.addr,
            },
        );
        if let Some(rule) = lpm_ptr(&NET_BLOCK_V6, &key) {
            blocked = 1;
            // SAFETY: a valid map value pointer.
            blocked_rule = unsafe { *rule };
        }
    }

    let mut has_policy = 0u32;
    let mut version = 0u32;
    let mut default_action = net_action::ALLOW;
    let mut audit = 0u8;
    if let Some(policy) = NET_AGENTS.get_ptr(NetAgentKey { generation, agent }) {
        has_policy = 1;
        // SAFETY: a valid map value pointer.
        unsafe {
            version = (*policy).version;
            default_action = (*policy).default_action;
            audit = (*policy).audit;
        }
    }
    if blocked != 0 {
        return Decision {
            allow: false,
            flags: NetEvent::FLAG_BLOCKLIST,
            rule: blocked_rule,
            version,
        };
    }

    if NET_QUARANTINE.get_ptr(agent).is_some() {
        let mut exempt = 0u32;
        let mut exempt_rule = 0u32;
        if dst.family == 4 {
            if let Some(rule) = lpm_ptr(&NET_QUARANTINE_ALLOW_V4, &Key::new(32, v4(&dst.addr))) {
                exempt = 1;
                // SAFETY: a valid map value pointer.
                exempt_rule = unsafe { *rule };
            }
        } else if let Some(rule) = lpm_ptr(&NET_QUARANTINE_ALLOW_V6, &Key::new(128, dst.addr)) {
            exempt = 1;
            // SAFETY: a valid map value pointer.
            exempt_rule = unsafe { *rule };
        }
        return Decision {
            allow: exempt != 0,
            flags: NetEvent::FLAG_QUARANTINE,
            rule: exempt_rule,
            version,
        };
    }

    // A destination a DNS answer taught for one of the agent's domain rules. Its deny wins at
    // once; its allow is kept until the prefix rules are read, since an explicit prefix deny
    // (the `no-metadata` rule against a rebinding answer) beats it, unless the domain rule
    // says `override_cidr_deny`.
    let learned = learned_rule(agent, dst);
    let mut learned_allow = 0u32;
    let mut learned_number = 0u32;
    if !learned.is_null() {
        // SAFETY: a valid map value pointer; the fields are copied out at once.
        let (lo, hi, protocol, action, learned_flags, rule) = unsafe {
            (
                (*learned).port_lo,
                (*learned).port_hi,
                (*learned).protocol,
                (*learned).action,
                (*learned).flags,
                (*learned).rule,
            )
        };
        let matches =
            dst.port >= lo && dst.port <= hi && (protocol == 0 || protocol == rule_protocol);
        if matches && action == net_action::DENY {
            let flags = if audit != 0 {
                NetEvent::FLAG_LEARNED | NetEvent::FLAG_WOULD_DENY
            } else {
                NetEvent::FLAG_LEARNED
            };
            return Decision {
                allow: audit != 0,
                flags,
                rule,
                version,
            };
        }
        // A rule that says so allows even where a prefix rule denies.
        if matches && learned_flags & LearnedRule::FLAG_OVERRIDES_PREFIX_DENY != 0 {
            return Decision {
                allow: true,
                flags: NetEvent::FLAG_LEARNED,
                rule,
                version,
            };
        }
        if matches {
            learned_allow = 1;
            learned_number = rule;
        }
    }

    // An agent without network settings: allowed and reported.
    if has_policy == 0 {
        return Decision {
            allow: true,
            flags: NetEvent::FLAG_DEFAULT,
            rule: 0,
            version: 0,
        };
    }
    let list: *const NetRuleList = if dst.family == 4 {
        let key = Key::new(
            64 + 32,
            NetKeyV4 {
                generation,
                agent,
                addr: v4(&dst.addr),
            },
        );
        lpm_ptr(&NET_RULES_V4, &key).unwrap_or(core::ptr::null())
    } else {
        let key = Key::new(
            64 + 128,
            NetKeyV6 {
                generation,
                agent,
                addr: dst.addr,
            },
        );
        lpm_ptr(&NET_RULES_V6, &key).unwrap_or(core::ptr::null())
    };
    let mut action = default_action;
    let mut flags = NetEvent::FLAG_DEFAULT;
    let mut rule = 0u32;
    if !list.is_null() {
        // SAFETY: a valid map value pointer; indexes stay below the array's length.
        let count = unsafe { (*list).count };
        for i in 0..NET_RULES_PER_PREFIX {
            if i as u32 >= count {
                break;
            }
            // SAFETY: as above.
            let candidate = unsafe { &(*list).rules[i] };
            if dst.port >= candidate.port_lo
                && dst.port <= candidate.port_hi
                && (candidate.protocol == 0 || candidate.protocol == rule_protocol)
            {
                action = candidate.action;
                rule = candidate.rule;
                flags = 0;
                break;
            }
        }
    }
    let deny = action == net_action::DENY;
    // A learned allow decides unless a prefix rule of the agent denies this destination.
    if learned_allow != 0 && !(deny && flags == 0) {
        return Decision {
            allow: true,
            flags: NetEvent::FLAG_LEARNED,
            rule: learned_number,
            version,
        };
    }
    if deny && audit != 0 {
        flags |= NetEvent::FLAG_WOULD_DENY;
        return Decision {
            allow: true,
            flags,
            rule,
            version,
        };
    }
    Decision {
        allow: !deny,
        flags,
        rule,
        version,
    }
}
// Inlined: a BPF function takes at most five arguments. `tgid` is `None` where the program
// may not ask for the current task (cgroup_skb on 6.1 has neither `bpf_get_current_pid_tgid`
// nor `bpf_get_current_comm`): the event then carries pid 0 and no comm.
#[inline(always)]
pub(crate) fn report(
    tgid: Option<u32>,
    agent: u32,
    dst: &Destination,
    hook: u8,
    decision: &Decision,
    first: bool,
) {
    let event = NetEvent {
        header: header(EventKind::Net),
        pid: tgid.unwrap_or(0),
        agent,
        version: decision.version,
        verdict: if decision.allow {
            Verdict::Allow as u8
        } else {
            Verdict::Deny as u8
        },
        flags: decision.flags,
        family: dst.family,
        protocol: dst.protocol,
        port: dst.port,
        hook,
        form: dst.form,
        rule: decision.rule,
        addr: dst.addr,
        comm: match tgid {
            Some(_) => bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
            None => [0; COMM_LEN],
        },
    };
    // Denials, would-denials and a first call to a destination are what the risk engine and
    // an operator act on: wake the reader. A repeated allowed call waits for its next poll.
    let urgent = first || !decision.allow || decision.flags & NetEvent::FLAG_WOULD_DENY != 0;
    output(
        &event,
        if urgent {
            wakeup::URGENT
        } else {
            wakeup::QUIET
        },
    );
}
/// How often the egress check reports packets it denies to one destination, at least.
const EGRESS_DENY_REPORT_NS: u64 = 1_000_000_000;

/// An agent's verdict on `dst` through `hook`: from the cache, or decided (and cached), and
/// whether to report it (`Some(first)`: `first` for a verdict just decided). The call hooks
/// report every denial; the egress check (`HOOK_EGRESS`) a denial once per report interval
/// (at least a second) and destination, not once per packet.
#[inline(always)]
pub(crate) fn judge(agent: u32, dst: &Destination, hook: u8) -> (Decision, Option<bool>) {
    let mut epoch = 0u32;
    let mut interval_ms = 0u32;
    if let Some(config) = NET_CACHE.get_ptr(0) {
        // SAFETY: a valid map value pointer.
        unsafe {
            epoch = (*config).epoch;
            interval_ms = (*config).allowed_report_interval_ms;
        }
    }
    let key = NetVerdictKey {
        epoch,
        agent,
        addr: dst.addr,
        port: dst.port,
        family: dst.family,
        protocol: dst.protocol,
        hook,
        pad: [0; 3],
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let interval_ns = u64::from(interval_ms) * 1_000_000;
    let deny_interval_ns = if hook == NetEvent::HOOK_EGRESS {
        interval_ns.max(EGRESS_DENY_REPORT_NS)
    } else {
        0
    };
    if let Some((decision, report_it)) = cached(&key, now, interval_ns, deny_interval_ns) {
        return (decision, if report_it { Some(false) } else { None });
    }
    let mut valid_until = 0u64;
    let mut decision = decide(agent, dst);
    if decision.allow
        && let Some(ca) = conditional_access(agent, dst, decision.version, now, &mut valid_until)
    {
        decision = ca;
    }
    let verdict = NetVerdict {
        valid_until_ns: valid_until,
        reported_ns: now,
        rule: decision.rule,
        version: decision.version,
        allow: u8::from(decision.allow),
        flags: decision.flags,
        pad: [0; 6],
    };
    // A full LRU map evicts; a failed insert only means deciding again next time.
    let _ = NET_VERDICTS.insert(key, verdict, 0);
    // The first call to a destination under this policy: what the risk engine looks for (a
    // destination new to the agent), so the reader is woken for it.
    (decision, Some(true))
}

/// The cached verdict for `key` if it still holds at `now`, and whether to report this call:
/// a denial or would-denial when the last report is at least `deny_interval_ns` old (0:
/// always), an allowed call when it is at least `interval_ns` old (its time is then updated).
#[inline(always)]
fn cached(
    key: &NetVerdictKey,
    now: u64,
    interval_ns: u64,
    deny_interval_ns: u64,
) -> Option<(Decision, bool)> {
    let entry = NET_VERDICTS.get_ptr_mut(key)?;
    // SAFETY: a valid map value pointer; the fields are copied out at once.
    let (valid_until, reported, allow, flags, rule, version) = unsafe {
        (
            (*entry).valid_until_ns,
            (*entry).reported_ns,
            (*entry).allow,
            (*entry).flags,
            (*entry).rule,
            (*entry).version,
        )
    };
    if valid_until != 0 && now >= valid_until {
        return None;
    }
    let decision = Decision {
        allow: allow != 0,
        flags,
        rule,
        version,
    };
    let routine = decision.allow && flags & NetEvent::FLAG_WOULD_DENY == 0;
    let elapsed = now.wrapping_sub(reported);
    let report_it = if routine {
        elapsed >= interval_ns
    } else {
        elapsed >= deny_interval_ns
    };
    if report_it {
        // SAFETY: as above. Two CPUs racing here both report, which is harmless.
        unsafe { (*entry).reported_ns = now };
    }
    Some((decision, report_it))
}
