//! Conditional Access in the network hooks: the agent's decision from the control plane,
//! judged after its local policy allowed a destination (`net::judge`). Deny wins; entries
//! flagged `CaGrant::FLAG_REPORT_ONLY` are what report-only policies would decide, reported as
//! would-deny and never enforced. Written only by agentd's `access` feature through the network
//! sensor.

use agentd_common::{
    CA_GRANTS_PER_PREFIX, CaAgent, CaGrant, CaGrantList, CaKeyV4, CaKeyV6, LearnedKeyV4, NetEvent,
    net_action,
};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};

use crate::net_types::{Decision, Destination, lpm_ptr, v4};

/// Agent → its Conditional Access decision. 4,096 agents.
#[map]
pub static CA_AGENTS: HashMap<u32, CaAgent> = HashMap::with_max_entries(4096, 0);

/// (agent, IPv4 prefix) → Conditional Access grants and denials under it. 16,384 prefixes.
#[map]
pub static CA_GRANTS_V4: LpmTrie<CaKeyV4, CaGrantList> = LpmTrie::with_max_entries(16_384, 0);

/// (agent, IPv6 prefix) → Conditional Access grants and denials under it.
#[map]
pub static CA_GRANTS_V6: LpmTrie<CaKeyV6, CaGrantList> = LpmTrie::with_max_entries(16_384, 0);

/// (agent, address a DNS answer gave for a granted or denied domain) → its entries. 16,384.
#[map]
pub static CA_LEARNED_V4: HashMap<LearnedKeyV4, CaGrantList> = HashMap::with_max_entries(16_384, 0);

/// What a Conditional Access list says about `port` now: 0 nothing, 1 allow, 2 deny; and the
/// entry's rule. Only entries of one layer count: the decision in force (`layer` 0) or what
/// report-only policies would decide (`CaGrant::FLAG_REPORT_ONLY`). Expired entries are
/// skipped: a lapsed grant stops allowing here, in the hook, whether or not agentd is running.
/// The matching entry's expiry lowers `until`, so a cached verdict lapses with it.
#[inline(always)]
fn ca_scan(
    list: *const CaGrantList,
    port: u16,
    now: u64,
    layer: u8,
    rule: &mut u32,
    until: &mut u64,
) -> u32 {
    // SAFETY: a valid map value pointer.
    let count = unsafe { (*list).count } as usize;
    for i in 0..CA_GRANTS_PER_PREFIX {
        if i >= count {
            break;
        }
        // SAFETY: `i` is below the array's length.
        let (lo, hi, action, flags, id, expires) = unsafe {
            let grant = &(*list).grants[i];
            (
                grant.port_lo,
                grant.port_hi,
                grant.action,
                grant.flags,
                grant.rule,
                grant.expires_ns,
            )
        };
        if flags & CaGrant::FLAG_REPORT_ONLY != layer {
            continue;
        }
        if expires != 0 && now >= expires {
            continue;
        }
        if port >= lo && port <= hi {
            *rule = id;
            if expires != 0 && (*until == 0 || expires < *until) {
                *until = expires;
            }
            return if action == net_action::DENY { 2 } else { 1 };
        }
    }
    0
}

/// What one layer of the agent's Conditional Access entries says about `dst`: addresses learned
/// from DNS answers first, then prefixes. 0 nothing, 1 allow, 2 deny.
#[inline(always)]
fn ca_lookup(
    agent: u32,
    dst: &Destination,
    now: u64,
    layer: u8,
    rule: &mut u32,
    until: &mut u64,
) -> u32 {
    let mut found = 0u32;
    if dst.family == 4 {
        let addr = v4(&dst.addr);
        if let Some(list) = CA_LEARNED_V4.get_ptr(LearnedKeyV4 { agent, addr }) {
            found = ca_scan(list, dst.port, now, layer, rule, until);
        }
        if found == 0
            && let Some(list) = lpm_ptr(&CA_GRANTS_V4, &Key::new(32 + 32, CaKeyV4 { agent, addr }))
        {
            found = ca_scan(list, dst.port, now, layer, rule, until);
        }
    } else if let Some(list) = lpm_ptr(
        &CA_GRANTS_V6,
        &Key::new(
            32 + 128,
            CaKeyV6 {
                agent,
                addr: dst.addr,
            },
        ),
    ) {
        found = ca_scan(list, dst.port, now, layer, rule, until);
    }
    found
}

/// The agent's Conditional Access decision on a connect its local policy allowed: `None` when
/// it does not change the verdict or report anything. Report-only policies are judged only
/// when the decision in force allows: what they would deny is allowed and reported. `until`
/// becomes the soonest expiry of the entries the answer rests on.
#[inline(always)]
pub(crate) fn conditional_access(
    agent: u32,
    dst: &Destination,
    version: u32,
    now: u64,
    until: &mut u64,
) -> Option<Decision> {
    let ca = CA_AGENTS.get_ptr(agent)?;
    // SAFETY: a valid map value pointer.
    let (flags, default_rule) = unsafe { ((*ca).flags, (*ca).rule) };
    let mut rule = default_rule;
    let found = ca_lookup(agent, dst, now, 0, &mut rule, until);
    let denied = flags & CaAgent::FLAG_BLOCK != 0
        || found == 2
        || (found == 0 && flags & CaAgent::FLAG_RESTRICTED != 0);
    if denied {
        if found == 0 || flags & CaAgent::FLAG_BLOCK != 0 {
            rule = default_rule;
        }
        return Some(Decision {
            allow: false,
            flags: NetEvent::FLAG_CONDITIONAL_ACCESS,
            rule,
            version,
        });
    }
    if flags & CaAgent::FLAG_REPORT_ONLY == 0 {
        return None;
    }
    let mut would_rule = default_rule;
    let would = ca_lookup(
        agent,
        dst,
        now,
        CaGrant::FLAG_REPORT_ONLY,
        &mut would_rule,
        until,
    );
    let would_deny = flags & CaAgent::FLAG_REPORT_ONLY_BLOCK != 0
        || would == 2
        || (would == 0 && flags & CaAgent::FLAG_REPORT_ONLY_RESTRICTED != 0);
    if !would_deny {
        return None;
    }
    if would == 0 || flags & CaAgent::FLAG_REPORT_ONLY_BLOCK != 0 {
        would_rule = default_rule;
    }
    Some(Decision {
        allow: true,
        flags: NetEvent::FLAG_CONDITIONAL_ACCESS | NetEvent::FLAG_WOULD_DENY,
        rule: would_rule,
        version,
    })
}
