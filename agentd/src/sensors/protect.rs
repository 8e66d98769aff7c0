//! agentd's self-protection: BPF LSM hooks that deny tagged processes signals to agentd,
//! ptrace of agentd and the `bpf()` system call, and the map naming agentd's processes.
//! agentd's files are protected by file rules (`daemon::State::file_rules`).

use aya::{
    maps::{HashMap, MapData},
    programs::Lsm,
};

use super::{SensorError, attach_error, load_error, replace_all, take_map};
use crate::{ebpf::LoadedObject, pins::Links};

const PROGRAMS: [&str; 3] = ["task_kill", "ptrace_access_check", "bpf"];
const PROTECTED: &str = "PROTECTED";

pub struct ProtectSensor {
    protected: HashMap<MapData, u32, u32>,
    /// Whether the hooks are attached (BPF LSM works here).
    active: bool,
}

impl ProtectSensor {
    /// Attaches the hooks when `enforce` (BPF LSM works), unless `links` adopted them.
    pub fn attach(
        object: &mut LoadedObject,
        enforce: bool,
        links: &mut Links,
    ) -> Result<Self, SensorError> {
        let protected = take_map(object, PROTECTED)?;
        let active = if links.adopting() {
            PROGRAMS.iter().all(|name| links.has(name))
        } else if enforce {
            let LoadedObject { ebpf, btf, .. } = object;
            for name in PROGRAMS {
                let program: &mut Lsm = super::program(ebpf, name)?;
                program.load(name, btf).map_err(load_error(name))?;
                let link_id = program.attach().map_err(attach_error(name))?;
                links.add(
                    name,
                    program.take_link(link_id).map_err(attach_error(name))?,
                )?;
            }
            true
        } else {
            false
        };
        Ok(Self { protected, active })
    }

    /// Makes `pids` (agentd's own processes) the protected ones.
    pub fn protect(&mut self, pids: &[u32]) -> Result<(), SensorError> {
        let want: Vec<(u32, u32)> = pids.iter().map(|pid| (*pid, 1)).collect();
        replace_all(&mut self.protected, &want, PROTECTED)
    }

    #[must_use]
    pub fn active(&self) -> bool {
        self.active
    }
}
