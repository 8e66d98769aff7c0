//! The exec sensor: exec rules that follow what really runs. An executable mapping of a file
//! (`mmap_file`, `file_mprotect`: what the dynamic loader does with the program it is asked to
//! run) is judged by the agents' exec rules in `FILE_RULES`, and an exec of a file with no name
//! in any directory (a memfd) is refused unless the agent's `allow_anonymous_exec` says
//! otherwise (`EXEC_AGENTS`, which this sensor alone writes). Every hook is optional: one the
//! kernel refuses is named in [`ExecSensor::missing`], and the exec rules of
//! `bprm_check_security` still hold.

use agentd_common::ExecAgent;
use aya::maps::{HashMap, MapData};

use super::{SensorError, attach_optional_lsm, replace_all, take_map};
use crate::{ebpf::LoadedObject, pins::Links};

/// (program, LSM hook). One program per hook: under QEMU's TCG, each attach to a hook patches
/// the kernel's text while other vCPUs may run it, which has oopsed guests, so a hook's checks
/// share a program rather than add attaches.
const PROGRAMS: [(&str, &str); 3] = [
    ("exec_mmap_file", "mmap_file"),
    ("exec_file_mprotect", "file_mprotect"),
    ("exec_anonymous", "bprm_check_security"),
];
const AGENTS: &str = "EXEC_AGENTS";

pub struct ExecSensor {
    agents: HashMap<MapData, u32, ExecAgent>,
    /// LSM hooks this kernel refused (nothing attached: every one, when BPF LSM is off).
    missing: Vec<&'static str>,
}

impl ExecSensor {
    /// Attaches the hooks when `enforce` (BPF LSM works), unless `links` adopted them.
    pub fn attach(
        object: &mut LoadedObject,
        enforce: bool,
        links: &mut Links,
    ) -> Result<Self, SensorError> {
        let agents = take_map(object, AGENTS)?;
        let missing = if enforce || links.adopting() {
            attach_optional_lsm(object, &PROGRAMS, links)?
        } else {
            PROGRAMS.iter().map(|(_, hook)| *hook).collect()
        };
        Ok(Self { agents, missing })
    }

    /// Makes the agents' exec settings exactly `agents` (agent index → settings).
    pub fn set_agents(&mut self, agents: &[(u32, ExecAgent)]) -> Result<(), SensorError> {
        replace_all(&mut self.agents, agents, AGENTS)
    }

    /// The LSM hooks of this sensor that are not enforced here.
    #[must_use]
    pub fn missing(&self) -> &[&'static str] {
        &self.missing
    }
}
