//! The process sensor: exec, fork and exit hooks, and the agent tags they keep.
//!
//! It owns `tp_btf/sched_process_{exec,fork,exit}` and the tag maps (`TASK_AGENT`,
//! `CGROUP_AGENT`, `DISCOVERY_INODES`, `TAG_STATS`). It is the only writer of those maps from
//! userspace. Dropping it detaches the hooks.

use std::os::fd::AsFd as _;

use agentd_common::{AgentTag, DiscoveryMatch, InodeKey, tag_stats};
use aya::{
    maps::{Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray},
    programs::{BtfTracePoint, Lsm},
};

use super::{
    SensorError, attach_error, insert_if_absent,
    late_tags::{LateTags, Pending},
    load_error, map_error, replace_all, take_map,
};
use crate::{ebpf::LoadedObject, pins::Links};

const PROGRAMS: [&str; 3] = [
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
];
const TASK_AGENT: &str = "TASK_AGENT";
const CGROUP_AGENT: &str = "CGROUP_AGENT";
const DISCOVERY_INODES: &str = "DISCOVERY_INODES";
const TAG_STATS: &str = "TAG_STATS";
const AGENT_PROCS_USER: &str = "AGENT_PROCS_USER";
/// The BPF LSM hook that refuses a new process of an agent at its cap.
const TASK_ALLOC: &str = "task_alloc";

/// Who carries which tag: the one question about `TASK_AGENT` that the callers of local
/// sockets need answered.
pub trait TagLookup {
    fn tag_of(&self, pid: u32) -> Result<Option<AgentTag>, SensorError>;
}

/// Reads `TASK_AGENT` and never writes it ([`ProcessSensor::reader`]).
pub struct TagReader {
    task_agent: HashMap<MapData, u32, AgentTag>,
}

impl TagLookup for TagReader {
    fn tag_of(&self, pid: u32) -> Result<Option<AgentTag>, SensorError> {
        lookup(&self.task_agent, pid)
    }
}

impl TagLookup for ProcessSensor {
    fn tag_of(&self, pid: u32) -> Result<Option<AgentTag>, SensorError> {
        Self::tag_of(self, pid)
    }
}

fn lookup(
    map: &HashMap<MapData, u32, AgentTag>,
    pid: u32,
) -> Result<Option<AgentTag>, SensorError> {
    match map.get(&pid, 0) {
        Ok(tag) => Ok(Some(tag)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(err) => Err(map_error(TASK_AGENT)(err)),
    }
}

pub struct ProcessSensor {
    task_agent: HashMap<MapData, u32, AgentTag>,
    cgroup_agent: HashMap<MapData, u64, AgentTag>,
    discovery: HashMap<MapData, InodeKey, DiscoveryMatch>,
    stats: PerCpuArray<MapData, u64>,
    /// Per agent: processes userspace tagged less those it untagged (the kernel counts its own
    /// in `AGENT_PROCS`); the sum is what the per-agent cap is checked against.
    user_counts: Array<MapData, u64>,
    /// Whether new processes past an agent's cap are refused (`task_alloc`, BPF LSM).
    refuses_over_cap: bool,
    /// Processes tagged while they ran, until their open files are listed.
    late: LateTags,
}

impl ProcessSensor {
    /// Takes the tag maps and attaches the hooks, unless `links` adopted them; with `lsm` (BPF
    /// LSM works here) also the hook that refuses new processes past an agent's cap.
    pub fn attach(
        object: &mut LoadedObject,
        lsm: bool,
        links: &mut Links,
    ) -> Result<Self, SensorError> {
        let task_agent = take_map(object, TASK_AGENT)?;
        let cgroup_agent = take_map(object, CGROUP_AGENT)?;
        let discovery = take_map(object, DISCOVERY_INODES)?;
        let stats = take_map(object, TAG_STATS)?;
        let user_counts = take_map(object, AGENT_PROCS_USER)?;
        let late = LateTags::take(object)?;
        let LoadedObject { ebpf, btf, .. } = object;
        // Fork and exit first, so that no process exec'd after the exec hook starts tagging
        // can fork untracked or leave a stale tag.
        for name in [PROGRAMS[1], PROGRAMS[2], PROGRAMS[0]] {
            if links.adopting() {
                continue;
            }
            let program: &mut BtfTracePoint = super::program(ebpf, name)?;
            program.load(name, btf).map_err(load_error(name))?;
            let link_id = program.attach().map_err(attach_error(name))?;
            links.add(
                name,
                program.take_link(link_id).map_err(attach_error(name))?,
            )?;
        }
        let refuses_over_cap = if links.adopting() {
            links.has(TASK_ALLOC)
        } else if lsm {
            let program: &mut Lsm = super::program(ebpf, TASK_ALLOC)?;
            program
                .load(TASK_ALLOC, btf)
                .map_err(load_error(TASK_ALLOC))?;
            let link_id = program.attach().map_err(attach_error(TASK_ALLOC))?;
            links.add(
                TASK_ALLOC,
                program
                    .take_link(link_id)
                    .map_err(attach_error(TASK_ALLOC))?,
            )?;
            true
        } else {
            false
        };
        Ok(Self {
            task_agent,
            cgroup_agent,
            discovery,
            stats,
            user_counts,
            refuses_over_cap,
            late,
        })
    }

    /// Whether a new process past an agent's cap is refused (BPF LSM), rather than tagged and
    /// reported.
    #[must_use]
    pub fn refuses_over_cap(&self) -> bool {
        self.refuses_over_cap
    }

    /// Adds `delta` (wrapping) to the userspace count of `agent`'s live tagged processes.
    fn count_user(&mut self, agent: u32, delta: u64) -> Result<(), SensorError> {
        if agent >= agentd_common::MAX_AGENTS {
            return Ok(());
        }
        let now = self
            .user_counts
            .get(&agent, 0)
            .map_err(map_error(AGENT_PROCS_USER))?;
        self.user_counts
            .set(agent, now.wrapping_add(delta), 0)
            .map_err(map_error(AGENT_PROCS_USER))
    }

    /// Makes the registered cgroups exactly `want` (cgroup id, tag).
    pub fn set_cgroups(&mut self, want: &[(u64, AgentTag)]) -> Result<(), SensorError> {
        replace_all(&mut self.cgroup_agent, want, CGROUP_AGENT)
    }

    /// Makes the in-kernel discovery rules exactly `want` (executable, match).
    pub fn set_discovery(
        &mut self,
        want: &[(InodeKey, DiscoveryMatch)],
    ) -> Result<(), SensorError> {
        replace_all(&mut self.discovery, want, DISCOVERY_INODES)
    }

    /// Tags process `pid` unless it already carries a tag. Returns whether it was tagged now.
    /// A running process holds descriptors it opened untagged: it is marked first
    /// ([`Self::late_pending`]), so that the kernel judges its reads and writes until they are
    /// listed.
    pub fn tag(&mut self, pid: u32, tag: AgentTag) -> Result<bool, SensorError> {
        if self.tag_of(pid)?.is_some() {
            return Ok(false);
        }
        self.late.mark(pid)?;
        // The kernel may have tagged it meanwhile, and its tag wins.
        let tagged = insert_if_absent(&mut self.task_agent, &pid, &tag, TASK_AGENT)?;
        if tagged {
            self.count_user(tag.agent, 1)?;
        }
        Ok(tagged)
    }

    pub fn tag_of(&self, pid: u32) -> Result<Option<AgentTag>, SensorError> {
        lookup(&self.task_agent, pid)
    }

    /// Processes tagged while they ran whose open files are not listed yet, if any.
    pub fn late_pending(&self) -> Result<Option<Pending>, SensorError> {
        self.late.pending()
    }

    /// `pending`'s open files are listed (or they are gone): the kernel stops judging every
    /// read and write they make.
    pub fn settle_late(&mut self, pending: &Pending) -> Result<(), SensorError> {
        self.late.settle(pending)
    }

    /// A read-only handle on the tag map for a task that must check tags without a round trip
    /// through the daemon's state (the admin socket, at accept).
    pub fn reader(&self) -> Result<TagReader, SensorError> {
        let fd = self
            .task_agent
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| {
                map_error(TASK_AGENT)(aya::maps::MapError::from(aya::sys::SyscallError {
                    call: "dup",
                    io_error,
                }))
            })?;
        let data = MapData::from_fd(fd).map_err(map_error(TASK_AGENT))?;
        let task_agent = HashMap::try_from(Map::HashMap(data)).map_err(map_error(TASK_AGENT))?;
        Ok(TagReader { task_agent })
    }

    /// Every tagged process.
    pub fn tagged(&self) -> Result<Vec<(u32, AgentTag)>, SensorError> {
        self.task_agent
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(TASK_AGENT))
    }

    /// Removes the tags of processes that the kernel says are gone (`pidfd_open` answers
    /// `ESRCH`); returns how many. The exit hook is the authority and removes a tag when the
    /// last thread exits; this backstop only catches a tag that userspace set on a process that
    /// exited at the same moment. It never trusts `/proc`, which a root agent can hide itself
    /// from: a live process keeps its tag whatever agentd's view of `/proc` shows.
    pub fn sweep(&mut self) -> Result<usize, SensorError> {
        let mut removed = 0;
        for (pid, tag) in self.tagged()? {
            if crate::pidfd::known_gone(pid) {
                self.forget(pid, tag)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the tag of a process that no longer exists. Only the remover counts the exit
    /// (the kernel's exit hook may race it).
    fn forget(&mut self, pid: u32, tag: AgentTag) -> Result<(), SensorError> {
        match self.task_agent.remove(&pid) {
            Ok(()) => self.count_user(tag.agent, u64::MAX),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(map_error(TASK_AGENT)(err)),
        }
    }

    /// Tags that the kernel could not record because `TASK_AGENT` was full, summed over CPUs.
    pub fn insert_failures(&self) -> Result<u64, SensorError> {
        self.stat(tag_stats::INSERT_FAILED)
    }

    /// New processes of agents at their cap: (tagged and reported, refused with `EAGAIN`).
    pub fn over_cap(&self) -> Result<(u64, u64), SensorError> {
        Ok((
            self.stat(tag_stats::OVER_CAP)?,
            self.stat(tag_stats::REFUSED)?,
        ))
    }

    fn stat(&self, slot: u32) -> Result<u64, SensorError> {
        let values = self.stats.get(&slot, 0).map_err(map_error(TAG_STATS))?;
        Ok(values.iter().sum())
    }
}
