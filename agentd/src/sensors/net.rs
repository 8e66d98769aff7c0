//! The network sensor: cgroup `sock_addr` programs (connect4/6, sendmsg4/6) attached at the
//! cgroup v2 root, and the double-buffered policy maps they read.
//!
//! A new policy is written into the generation not in force, then `NET_CONFIG[0]` is switched
//! to it in one map update, then the old generation's entries are removed. Each kernel call
//! reads the generation once, so it sees either the whole old policy or the whole new one.
//!
//! The hooks cache their verdicts under an epoch (`NET_CACHE[0]`): every method that changes a
//! map a verdict reads bumps it when done, whether or not it succeeded, so that no call is
//! decided from a cached verdict older than the change.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    os::fd::AsFd as _,
    path::Path,
};

use agentd_common::{
    BlockKeyV4, BlockKeyV6, CaAgent, CaGrantList, CaKeyV4, CaKeyV6, DnsRedirect, LearnedKeyV4,
    LearnedKeyV6, LearnedRule, NetAgentKey, NetAgentPolicy, NetCacheConfig, NetKeyV4, NetKeyV6,
    NetRuleList, OriginalDestination,
};
use aya::{
    maps::{
        Array, HashMap, MapData, MapError, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        CgroupSockopt, cgroup_sockopt::CgroupSockoptLink,
    },
};

use super::{SensorError, attach_error, load_error, map_error, replace_all, take_map};
use crate::{conditional::CaTables, ebpf::LoadedObject, pins::Links, policy::network::Prefix};

const PROGRAMS: [&str; 5] = ["connect4", "connect6", "sendmsg4", "sendmsg6", "recvmsg4"];
/// The `cgroup_skb/egress` program that counts agents' bytes.
const EGRESS: &str = "egress";
/// The `cgroup/sock_create` program that decides raw sockets.
const SOCK_CREATE: &str = "sock_create";
/// The `cgroup/sock_release` program that forgets agents' closed sockets.
const SOCK_RELEASE: &str = "sock_release";
/// The BPF LSM `socket_create` program that decides the socket families no address hook sees.
const SOCKET_CREATE: &str = "socket_create";
/// The `cgroup/setsockopt` program that refuses source routes.
const SETSOCKOPT: &str = "setsockopt";

/// Loads and attaches the `cgroup/setsockopt` program at the cgroup root `root`: pinned with
/// the other links when `links` pins (through `raw_link`, since aya cannot hand this link
/// over), else held by this process (returned).
fn attach_setsockopt(
    object: &mut LoadedObject,
    root: &std::fs::File,
    links: &mut Links,
) -> Result<Option<CgroupSockoptLink>, SensorError> {
    let program: &mut CgroupSockopt = super::program(&mut object.ebpf, SETSOCKOPT)?;
    program.load().map_err(load_error(SETSOCKOPT))?;
    if let Some(layout) = links.layout() {
        let scratch = layout.root.join("setsockopt-scratch");
        let fd = program.fd().map_err(attach_error(SETSOCKOPT))?;
        let link = super::raw_link::cgroup_link(
            fd.as_fd(),
            root.as_fd(),
            super::raw_link::CGROUP_SETSOCKOPT,
            &scratch,
        )
        .map_err(|source| SensorError::Link {
            program: SETSOCKOPT,
            source,
        })?;
        links.add(SETSOCKOPT, link)?;
        return Ok(None);
    }
    let link_id = program
        .attach(root, CgroupAttachMode::Single)
        .map_err(attach_error(SETSOCKOPT))?;
    program
        .take_link(link_id)
        .map(Some)
        .map_err(attach_error(SETSOCKOPT))
}

/// One generation's content, as the kernel maps hold it.
#[derive(Clone, Debug, Default)]
pub struct NetTables {
    /// agent index → settings.
    pub agents: Vec<(u32, NetAgentPolicy)>,
    /// agent index → rule list per prefix.
    pub rules: Vec<(u32, BTreeMap<Prefix, NetRuleList>)>,
    /// prefix → rule number.
    pub blocklist: Vec<(Prefix, u32)>,
}

/// What one generation wrote, so that it can be removed later.
#[derive(Clone, Default)]
struct Written {
    agents: Vec<NetAgentKey>,
    v4: Vec<Key<NetKeyV4>>,
    v6: Vec<Key<NetKeyV6>>,
    block_v4: Vec<Key<BlockKeyV4>>,
    block_v6: Vec<Key<BlockKeyV6>>,
}

pub struct NetSensor {
    config: Array<MapData, u32>,
    cache: Array<MapData, NetCacheConfig>,
    cache_config: NetCacheConfig,
    agents: HashMap<MapData, NetAgentKey, NetAgentPolicy>,
    rules_v4: LpmTrie<MapData, NetKeyV4, NetRuleList>,
    rules_v6: LpmTrie<MapData, NetKeyV6, NetRuleList>,
    block_v4: LpmTrie<MapData, BlockKeyV4, u32>,
    block_v6: LpmTrie<MapData, BlockKeyV6, u32>,
    quarantine: HashMap<MapData, u32, u32>,
    quarantine_v4: LpmTrie<MapData, [u8; 4], u32>,
    quarantine_v6: LpmTrie<MapData, [u8; 16], u32>,
    dns: Array<MapData, DnsRedirect>,
    learned: HashMap<MapData, LearnedKeyV4, LearnedRule>,
    learned_v6: HashMap<MapData, LearnedKeyV6, LearnedRule>,
    /// Read only: which agent steered a DNS query through a socket.
    dns_original: HashMap<MapData, u64, OriginalDestination>,
    egress: PerCpuHashMap<MapData, u32, u64>,
    ca_agents: HashMap<MapData, u32, CaAgent>,
    ca_v4: LpmTrie<MapData, CaKeyV4, CaGrantList>,
    ca_v6: LpmTrie<MapData, CaKeyV6, CaGrantList>,
    ca_learned: HashMap<MapData, LearnedKeyV4, CaGrantList>,
    /// The LPM keys written for Conditional Access, to remove stale ones.
    ca_written: CaWritten,
    generation: u32,
    written: StdHashMap<u32, Written>,
    quarantine_allow: Vec<Prefix>,
    /// The `cgroup/setsockopt` link where agentd does not pin: it lives (and refuses source
    /// routes) while this process runs, and every start attaches it afresh.
    setsockopt: Option<CgroupSockoptLink>,
    /// Whether `socket_create` is attached (BPF LSM works here): packet sockets and the
    /// other families are decided.
    families: bool,
}

/// The LPM keys (prefix length, key) written for Conditional Access.
#[derive(Debug, Default)]
struct CaWritten {
    v4: Vec<(u8, CaKeyV4)>,
    v6: Vec<(u8, CaKeyV6)>,
}

fn v4(prefix: &Prefix) -> [u8; 4] {
    let octets = prefix.octets();
    [octets[0], octets[1], octets[2], octets[3]]
}

fn v6(prefix: &Prefix) -> [u8; 16] {
    let mut addr = [0; 16];
    addr.copy_from_slice(&prefix.octets());
    addr
}

impl NetSensor {
    /// Attaches the programs to the cgroup v2 root at `cgroup_root`, and `socket_create` when
    /// `lsm` (BPF LSM works), unless `links` adopted them; then the maps' content is adopted
    /// too (the generation in force, what each holds).
    pub fn attach(
        object: &mut LoadedObject,
        cgroup_root: &Path,
        lsm: bool,
        links: &mut Links,
    ) -> Result<Self, SensorError> {
        let mut sensor = Self {
            config: take_map(object, "NET_CONFIG")?,
            cache: take_map(object, "NET_CACHE")?,
            cache_config: NetCacheConfig::default(),
            agents: take_map(object, "NET_AGENTS")?,
            rules_v4: take_map(object, "NET_RULES_V4")?,
            rules_v6: take_map(object, "NET_RULES_V6")?,
            block_v4: take_map(object, "NET_BLOCK_V4")?,
            block_v6: take_map(object, "NET_BLOCK_V6")?,
            quarantine: take_map(object, "NET_QUARANTINE")?,
            quarantine_v4: take_map(object, "NET_QUARANTINE_ALLOW_V4")?,
            quarantine_v6: take_map(object, "NET_QUARANTINE_ALLOW_V6")?,
            dns: take_map(object, "NET_DNS")?,
            learned: take_map(object, "NET_LEARNED_V4")?,
            learned_v6: take_map(object, "NET_LEARNED_V6")?,
            dns_original: take_map(object, "DNS_ORIGINAL")?,
            egress: take_map(object, "AGENT_EGRESS")?,
            ca_agents: take_map(object, "CA_AGENTS")?,
            ca_v4: take_map(object, "CA_GRANTS_V4")?,
            ca_v6: take_map(object, "CA_GRANTS_V6")?,
            ca_learned: take_map(object, "CA_LEARNED_V4")?,
            ca_written: CaWritten::default(),
            generation: 0,
            written: StdHashMap::new(),
            quarantine_allow: Vec::new(),
            setsockopt: None,
            families: false,
        };
        sensor.adopt_content()?;
        let root = std::fs::File::open(cgroup_root).map_err(|source| SensorError::Cgroup {
            path: cgroup_root.to_owned(),
            source,
        })?;
        if links.adopting() {
            sensor.families = links.has(SOCKET_CREATE);
            return Ok(sensor);
        }
        sensor.setsockopt = attach_setsockopt(object, &root, links)?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = super::program(&mut object.ebpf, name)?;
            program.load().map_err(load_error(name))?;
            // Attached through a BPF link (aya uses links where the kernel has them): links on a
            // cgroup always coexist, so other tools' programs on the root keep working.
            let link_id = program
                .attach(&root, CgroupAttachMode::Single)
                .map_err(attach_error(name))?;
            links.add(
                name,
                program.take_link(link_id).map_err(attach_error(name))?,
            )?;
        }
        let program: &mut CgroupSkb = super::program(&mut object.ebpf, EGRESS)?;
        program.load().map_err(load_error(EGRESS))?;
        let link_id = program
            .attach(&root, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(attach_error(EGRESS))?;
        links.add(
            EGRESS,
            program.take_link(link_id).map_err(attach_error(EGRESS))?,
        )?;
        // The release first: no socket is recorded before its closing can be seen.
        for name in [SOCK_RELEASE, SOCK_CREATE] {
            let program: &mut CgroupSock = super::program(&mut object.ebpf, name)?;
            program.load().map_err(load_error(name))?;
            let link_id = program
                .attach(&root, CgroupAttachMode::Single)
                .map_err(attach_error(name))?;
            links.add(
                name,
                program.take_link(link_id).map_err(attach_error(name))?,
            )?;
        }
        if lsm {
            // Optional: a kernel that refuses it leaves these families undecided, said in
            // status, and the rest enforcing.
            let missing =
                super::attach_optional_lsm(object, &[(SOCKET_CREATE, SOCKET_CREATE)], links)?;
            sensor.families = missing.is_empty();
        }
        Ok(sensor)
    }

    /// Whether packet sockets and the other socket families are decided (BPF LSM).
    #[must_use]
    pub fn decides_families(&self) -> bool {
        self.families
    }

    /// Makes the Conditional Access tables exactly `tables`: grants and denials go in before the
    /// agents' flags, and stale entries come out after, so no connect sees a restriction
    /// without its grants.
    pub fn set_conditional_access(&mut self, tables: &CaTables) -> Result<(), SensorError> {
        let result = self.write_conditional_access(tables);
        self.invalidate(result)
    }

    /// Makes the Conditional Access entries for learned addresses exactly `want`.
    pub fn set_ca_learned(
        &mut self,
        want: &[(LearnedKeyV4, CaGrantList)],
    ) -> Result<(), SensorError> {
        let result = self.write_ca_learned(want);
        self.invalidate(result)
    }

    /// Makes `tables` the policy in force, atomically. On failure the policy in force is
    /// untouched and the half-written generation is removed.
    pub fn apply(&mut self, tables: &NetTables) -> Result<(), SensorError> {
        let result = self.write_policy(tables);
        self.invalidate(result)
    }

    /// Makes the destinations learned from DNS answers exactly `v4` and `v6`. An error (a full
    /// map) leaves the failed map as it was.
    pub fn set_learned(
        &mut self,
        v4: &[(LearnedKeyV4, LearnedRule)],
        v6: &[(LearnedKeyV6, LearnedRule)],
    ) -> Result<(), SensorError> {
        let result = replace_all(&mut self.learned, v4, "NET_LEARNED_V4")
            .and_then(|()| replace_all(&mut self.learned_v6, v6, "NET_LEARNED_V6"));
        self.invalidate(result)
    }

    /// The agent whose process steered a DNS query through the socket `cookie`, if any.
    pub fn dns_asker(&self, cookie: u64) -> Result<Option<u32>, SensorError> {
        match self.dns_original.get(&cookie, 0) {
            Ok(original) => Ok(Some(original.agent)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(map_error("DNS_ORIGINAL")(err)),
        }
    }

    /// Whether `agent` is quarantined.
    pub fn is_quarantined(&self, agent: u32) -> Result<bool, SensorError> {
        match self.quarantine.get(&agent, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(err) => Err(map_error("NET_QUARANTINE")(err)),
        }
    }

    /// Quarantines `agent` (or releases it): effective on its next connect or sendmsg.
    pub fn set_quarantine(&mut self, agent: u32, on: bool) -> Result<(), SensorError> {
        let result = self.write_quarantine(agent, on);
        self.invalidate(result)
    }

    /// Replaces the destinations quarantined agents may reach; `rule` is reported on a match.
    pub fn set_quarantine_allow(&mut self, allow: &[Prefix], rule: u32) -> Result<(), SensorError> {
        let result = self.write_quarantine_allow(allow, rule);
        self.invalidate(result)
    }

    /// Reports allowed calls to a destination already reported at most once per `interval_ms`
    /// (0: every call). Denials and would-denials are always reported.
    pub fn set_allowed_report_interval(&mut self, interval_ms: u32) -> Result<(), SensorError> {
        self.cache_config.allowed_report_interval_ms = interval_ms;
        self.invalidate(Ok(()))
    }

    /// Bumps the verdict cache's epoch after a change (whether or not it succeeded: a failed
    /// change may have written part of itself), then returns the change's result.
    fn invalidate(&mut self, result: Result<(), SensorError>) -> Result<(), SensorError> {
        self.cache_config.epoch = self.cache_config.epoch.wrapping_add(1);
        let bumped = self
            .cache
            .set(0, self.cache_config, 0)
            .map_err(map_error("NET_CACHE"));
        result.and(bumped)
    }

    /// Reads back what an earlier agentd left in pinned maps: the generation in force and the
    /// keys of each generation (the other one's are removed by the next apply), the Conditional
    /// Access prefixes and the quarantine exemptions. Fresh maps read back empty.
    fn adopt_content(&mut self) -> Result<(), SensorError> {
        self.generation = self.config.get(&0, 0).map_err(map_error("NET_CONFIG"))?;
        self.cache_config = self.cache.get(&0, 0).map_err(map_error("NET_CACHE"))?;
        let mut written: StdHashMap<u32, Written> = StdHashMap::new();
        for key in self.agents.keys() {
            let key = key.map_err(map_error("NET_AGENTS"))?;
            written.entry(key.generation).or_default().agents.push(key);
        }
        for key in self.rules_v4.keys() {
            let key = key.map_err(map_error("NET_RULES_V4"))?;
            written
                .entry(key.data().generation)
                .or_default()
                .v4
                .push(key);
        }
        for key in self.rules_v6.keys() {
            let key = key.map_err(map_error("NET_RULES_V6"))?;
            written
                .entry(key.data().generation)
                .or_default()
                .v6
                .push(key);
        }
        for key in self.block_v4.keys() {
            let key = key.map_err(map_error("NET_BLOCK_V4"))?;
            written
                .entry(key.data().generation)
                .or_default()
                .block_v4
                .push(key);
        }
        for key in self.block_v6.keys() {
            let key = key.map_err(map_error("NET_BLOCK_V6"))?;
            written
                .entry(key.data().generation)
                .or_default()
                .block_v6
                .push(key);
        }
        self.written = written;
        for key in self.ca_v4.keys() {
            let key = key.map_err(map_error("CA_GRANTS_V4"))?;
            let len = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(0);
            self.ca_written.v4.push((len, key.data()));
        }
        for key in self.ca_v6.keys() {
            let key = key.map_err(map_error("CA_GRANTS_V6"))?;
            let len = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(0);
            self.ca_written.v6.push((len, key.data()));
        }
        for key in self.quarantine_v4.keys() {
            let key = key.map_err(map_error("NET_QUARANTINE_ALLOW_V4"))?;
            self.quarantine_allow.push(Prefix {
                addr: std::net::IpAddr::from(key.data()),
                len: u8::try_from(key.prefix_len()).unwrap_or(32),
            });
        }
        for key in self.quarantine_v6.keys() {
            let key = key.map_err(map_error("NET_QUARANTINE_ALLOW_V6"))?;
            self.quarantine_allow.push(Prefix {
                addr: std::net::IpAddr::from(key.data()),
                len: u8::try_from(key.prefix_len()).unwrap_or(128),
            });
        }
        Ok(())
    }

    fn write_conditional_access(&mut self, tables: &CaTables) -> Result<(), SensorError> {
        for (len, key, list) in &tables.v4 {
            self.ca_v4
                .insert(&Key::new(32 + u32::from(*len), *key), list, 0)
                .map_err(map_error("CA_GRANTS_V4"))?;
        }
        for (len, key, list) in &tables.v6 {
            self.ca_v6
                .insert(&Key::new(32 + u32::from(*len), *key), list, 0)
                .map_err(map_error("CA_GRANTS_V6"))?;
        }
        replace_all(&mut self.ca_agents, &tables.agents, "CA_AGENTS")?;
        let v4: Vec<(u8, CaKeyV4)> = tables.v4.iter().map(|(len, key, _)| (*len, *key)).collect();
        let v6: Vec<(u8, CaKeyV6)> = tables.v6.iter().map(|(len, key, _)| (*len, *key)).collect();
        let old = std::mem::replace(&mut self.ca_written, CaWritten { v4, v6 });
        for (len, key) in old
            .v4
            .iter()
            .filter(|old| !self.ca_written.v4.contains(old))
        {
            match self.ca_v4.remove(&Key::new(32 + u32::from(*len), *key)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(map_error("CA_GRANTS_V4")(err)),
            }
        }
        for (len, key) in old
            .v6
            .iter()
            .filter(|old| !self.ca_written.v6.contains(old))
        {
            match self.ca_v6.remove(&Key::new(32 + u32::from(*len), *key)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(map_error("CA_GRANTS_V6")(err)),
            }
        }
        Ok(())
    }

    fn write_ca_learned(
        &mut self,
        want: &[(LearnedKeyV4, CaGrantList)],
    ) -> Result<(), SensorError> {
        replace_all(&mut self.ca_learned, want, "CA_LEARNED_V4")
    }

    /// Bytes each agent's sockets have sent since agentd started, by agent number.
    pub fn egress_bytes(&self) -> Result<Vec<(u32, u64)>, SensorError> {
        self.egress
            .iter()
            .map(|entry| {
                entry
                    .map(|(agent, per_cpu)| (agent, per_cpu.iter().sum()))
                    .map_err(map_error("AGENT_EGRESS"))
            })
            .collect()
    }

    fn write(
        &mut self,
        generation: u32,
        tables: &NetTables,
    ) -> Result<Written, Box<(Written, SensorError)>> {
        let mut written = Written::default();
        macro_rules! put {
            ($map:expr, $name:literal, $list:ident, $key:expr, $value:expr) => {{
                let key = $key;
                if let Err(err) = $map.insert(&key, $value, 0) {
                    return Err(Box::new((written, map_error($name)(err))));
                }
                written.$list.push(key);
            }};
        }
        for (agent, policy) in &tables.agents {
            let key = NetAgentKey {
                generation,
                agent: *agent,
            };
            if let Err(err) = self.agents.insert(key, policy, 0) {
                return Err(Box::new((written, map_error("NET_AGENTS")(err))));
            }
            written.agents.push(key);
        }
        for (agent, lists) in &tables.rules {
            for (prefix, list) in lists {
                let len = u32::from(prefix.len);
                if prefix.is_v6() {
                    let data = NetKeyV6 {
                        generation,
                        agent: *agent,
                        addr: v6(prefix),
                    };
                    put!(
                        self.rules_v6,
                        "NET_RULES_V6",
                        v6,
                        Key::new(64 + len, data),
                        list
                    );
                } else {
                    let data = NetKeyV4 {
                        generation,
                        agent: *agent,
                        addr: v4(prefix),
                    };
                    put!(
                        self.rules_v4,
                        "NET_RULES_V4",
                        v4,
                        Key::new(64 + len, data),
                        list
                    );
                }
            }
        }
        for (prefix, rule) in &tables.blocklist {
            let len = u32::from(prefix.len);
            if prefix.is_v6() {
                let data = BlockKeyV6 {
                    generation,
                    addr: v6(prefix),
                };
                put!(
                    self.block_v6,
                    "NET_BLOCK_V6",
                    block_v6,
                    Key::new(32 + len, data),
                    rule
                );
            } else {
                let data = BlockKeyV4 {
                    generation,
                    addr: v4(prefix),
                };
                put!(
                    self.block_v4,
                    "NET_BLOCK_V4",
                    block_v4,
                    Key::new(32 + len, data),
                    rule
                );
            }
        }
        Ok(written)
    }

    fn remove(&mut self, written: &Written) {
        for key in &written.agents {
            let _ = self.agents.remove(key);
        }
        for key in &written.v4 {
            let _ = self.rules_v4.remove(key);
        }
        for key in &written.v6 {
            let _ = self.rules_v6.remove(key);
        }
        for key in &written.block_v4 {
            let _ = self.block_v4.remove(key);
        }
        for key in &written.block_v6 {
            let _ = self.block_v6.remove(key);
        }
    }

    fn write_policy(&mut self, tables: &NetTables) -> Result<(), SensorError> {
        let next = 1 - self.generation;
        // Leftovers of a failed earlier apply.
        if let Some(stale) = self.written.remove(&next) {
            self.remove(&stale);
        }
        let written = match self.write(next, tables) {
            Ok(written) => written,
            Err(failed) => {
                let (partial, err) = *failed;
                self.remove(&partial);
                return Err(err);
            }
        };
        if let Err(err) = self.config.set(0, next, 0) {
            self.remove(&written);
            return Err(map_error("NET_CONFIG")(err));
        }
        let old = self.generation;
        self.generation = next;
        self.written.insert(next, written);
        if let Some(previous) = self.written.remove(&old) {
            self.remove(&previous);
        }
        Ok(())
    }

    /// Steers tagged processes' IPv4 DNS queries (UDP port 53) to `resolver`, or stops.
    pub fn set_dns_redirect(
        &mut self,
        resolver: Option<std::net::SocketAddrV4>,
    ) -> Result<(), SensorError> {
        let redirect = resolver.map_or(
            DnsRedirect {
                enabled: 0,
                ip4: 0,
                port: 0,
            },
            |addr| DnsRedirect {
                enabled: 1,
                ip4: u32::from_ne_bytes(addr.ip().octets()),
                port: u32::from(addr.port().to_be()),
            },
        );
        self.dns.set(0, redirect, 0).map_err(map_error("NET_DNS"))
    }

    fn write_quarantine(&mut self, agent: u32, on: bool) -> Result<(), SensorError> {
        if on {
            self.quarantine
                .insert(agent, 1, 0)
                .map_err(map_error("NET_QUARANTINE"))
        } else {
            match self.quarantine.remove(&agent) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(err) => Err(map_error("NET_QUARANTINE")(err)),
            }
        }
    }

    pub fn quarantined(&self) -> Result<Vec<u32>, SensorError> {
        self.quarantine
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error("NET_QUARANTINE"))
    }

    fn write_quarantine_allow(&mut self, allow: &[Prefix], rule: u32) -> Result<(), SensorError> {
        for prefix in allow {
            let len = u32::from(prefix.len);
            if prefix.is_v6() {
                self.quarantine_v6
                    .insert(&Key::new(len, v6(prefix)), rule, 0)
                    .map_err(map_error("NET_QUARANTINE_ALLOW_V6"))?;
            } else {
                self.quarantine_v4
                    .insert(&Key::new(len, v4(prefix)), rule, 0)
                    .map_err(map_error("NET_QUARANTINE_ALLOW_V4"))?;
            }
        }
        for old in std::mem::take(&mut self.quarantine_allow) {
            if allow.contains(&old) {
                continue;
            }
            let len = u32::from(old.len);
            if old.is_v6() {
                let _ = self.quarantine_v6.remove(&Key::new(len, v6(&old)));
            } else {
                let _ = self.quarantine_v4.remove(&Key::new(len, v4(&old)));
            }
        }
        self.quarantine_allow = allow.to_vec();
        Ok(())
    }
}
