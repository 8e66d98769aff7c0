//! The process sensor: exec, fork and exit hooks, and the agent tags they keep.
//!
//! It owns `tp_btf/sched_process_{exec,fork,exit}` and the tag maps (`TASK_AGENT`,
//! `CGROUP_AGENT`, `DISCOVERY_INODES`, `TAG_STATS`). It is the only writer of those maps from
//! userspace. Dropping it detaches the hooks.

use agentd_common::{AgentTag, DiscoveryMatch, InodeKey, tag_stats};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::BtfTracePoint,
};

use super::{SensorError, attach_error, load_error, map_error, replace_all, take_map};
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
/// Map update flag: only insert a key that is not there yet.
const BPF_NOEXIST: u64 = 1;

pub struct ProcessSensor {
    task_agent: HashMap<MapData, u32, AgentTag>,
    cgroup_agent: HashMap<MapData, u64, AgentTag>,
    discovery: HashMap<MapData, InodeKey, DiscoveryMatch>,
    stats: PerCpuArray<MapData, u64>,
}

impl ProcessSensor {
    /// Takes the tag maps and attaches the hooks, unless `links` adopted them.
    pub fn attach(object: &mut LoadedObject, links: &mut Links) -> Result<Self, SensorError> {
        let task_agent = take_map(object, TASK_AGENT)?;
        let cgroup_agent = take_map(object, CGROUP_AGENT)?;
        let discovery = take_map(object, DISCOVERY_INODES)?;
        let stats = take_map(object, TAG_STATS)?;
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
        Ok(Self {
            task_agent,
            cgroup_agent,
            discovery,
            stats,
        })
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
    pub fn tag(&mut self, pid: u32, tag: AgentTag) -> Result<bool, SensorError> {
        if self.tag_of(pid)?.is_some() {
            return Ok(false);
        }
        // BPF_NOEXIST: the kernel may have tagged it meanwhile, and its tag wins.
        match self.task_agent.insert(pid, tag, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(err) => Err(map_error(TASK_AGENT)(err)),
        }
    }

    pub fn tag_of(&self, pid: u32) -> Result<Option<AgentTag>, SensorError> {
        match self.task_agent.get(&pid, 0) {
            Ok(tag) => Ok(Some(tag)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(map_error(TASK_AGENT)(err)),
        }
    }

    /// Every tagged process.
    pub fn tagged(&self) -> Result<Vec<(u32, AgentTag)>, SensorError> {
        self.task_agent
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(TASK_AGENT))
    }

    /// Removes the tag of a process that no longer exists.
    pub fn forget(&mut self, pid: u32) -> Result<(), SensorError> {
        match self.task_agent.remove(&pid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(map_error(TASK_AGENT)(err)),
        }
    }

    /// Tags that the kernel could not record because `TASK_AGENT` was full, summed over CPUs.
    pub fn insert_failures(&self) -> Result<u64, SensorError> {
        let values = self
            .stats
            .get(&tag_stats::INSERT_FAILED, 0)
            .map_err(map_error(TAG_STATS))?;
        Ok(values.iter().sum())
    }
}
