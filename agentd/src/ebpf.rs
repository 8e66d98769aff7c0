//! The embedded eBPF object and how it is loaded: offsets resolved from BTF first, then maps
//! created. Programs are loaded and attached by the sensors that own them.

use std::path::PathBuf;

use agentd_common::{KERNEL_OFFSETS_SYMBOL, KernelOffsets, SOCKET_CAP_SYMBOL, TAG_CAP_SYMBOL};
use aya::{Btf, Ebpf, EbpfLoader};

use crate::{
    kernel_btf::{BtfError, KernelBtf},
    pins::{PinError, PinLayout},
};

/// The kernel programs, built by `build.rs` from `agentd-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agentd"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this agentd was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild with \
         `cargo xtask build` or plain `cargo build`"
    )]
    NoObject,
    #[error("resolving kernel struct offsets from BTF")]
    Offsets(#[from] BtfError),
    #[error("reading the kernel's BTF for program loading")]
    Btf(#[source] aya::BtfError),
    #[error("loading the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("preparing the pins")]
    Pins(#[from] PinError),
}

/// Everything the sensors need: the loaded object, the kernel's BTF (LSM and `tp_btf` programs
/// are verified against it) and the offsets written into the programs.
pub struct LoadedObject {
    pub ebpf: Ebpf,
    pub btf: Btf,
    pub offsets: KernelOffsets,
    /// Where the maps are pinned and the links go, when pinning.
    pub pins: Option<PinLayout>,
    /// How many parameters each LSM hook in [`SHAPED_HOOKS`] takes on this kernel (absent: the
    /// kernel has no such hook). Hooks gained an idmap parameter in front between kernels.
    pub hook_params: Vec<(&'static str, u16)>,
}

/// LSM hooks whose parameters differ between the kernels agentd supports, or that only some
/// kernels have.
pub const SHAPED_HOOKS: [&str; 3] = ["inode_setattr", "inode_set_acl", "inode_remove_acl"];

impl LoadedObject {
    /// The number of parameters of LSM hook `hook` here, if the kernel has it.
    #[must_use]
    pub fn hook_params(&self, hook: &str) -> Option<u16> {
        self.hook_params
            .iter()
            .find(|(name, _)| *name == hook)
            .map(|(_, count)| *count)
    }
}

/// Settings that shape the kernel objects before they are created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Capacity of `TASK_AGENT`, the tag map: how many agent processes can be tagged at once.
    /// See [`tag_capacity`].
    pub max_tagged_processes: u32,
    /// The most live tagged processes one agent may have (`identity.max_processes_per_agent`).
    pub max_processes_per_agent: u32,
    /// The most sockets one agent may have in `SOCK_AGENT` (`network.max_sockets_per_agent`).
    pub max_sockets_per_agent: u32,
    /// Size of the `EVENTS` ring buffer in bytes: a power of two, at least a page.
    pub ring_buffer_bytes: u32,
    /// Pin the maps under this BPF file system directory, reusing those an earlier agentd of
    /// the same map layout pinned there (see `pins`). None: private maps.
    pub pin_root: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_tagged_processes: 65_536,
            max_processes_per_agent: 4_096,
            max_sockets_per_agent: 8_192,
            ring_buffer_bytes: 1 << 22,
            pin_root: None,
        }
    }
}

/// Linux's ceiling on pids (`PID_MAX_LIMIT` on 64-bit): no process can have a larger tgid.
pub const PID_MAX_LIMIT: u32 = 4_194_304;

/// The size of `TASK_AGENT` that makes a full tag map impossible while the kernel's limits
/// hold: no more processes can exist at once than `kernel.pid_max` (tgids are at most that)
/// nor than `kernel.threads-max` (every process has a thread; `fork` fails with `EAGAIN` past
/// it). Both are read from `sysctl` (the `/proc/sys` texts given here); one that cannot be
/// read does not bound. At least 1,024, at most [`PID_MAX_LIMIT`]. docs/identity.md gives the
/// memory this costs.
#[must_use]
pub fn tag_capacity(pid_max: Option<&str>, threads_max: Option<&str>) -> u32 {
    let parse = |text: Option<&str>| text.and_then(|text| text.trim().parse::<u32>().ok());
    [parse(pid_max), parse(threads_max)]
        .into_iter()
        .flatten()
        .fold(PID_MAX_LIMIT, u32::min)
        .max(1_024)
}

/// [`tag_capacity`] for the running kernel.
#[must_use]
pub fn running_kernel_tag_capacity() -> u32 {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).ok();
    tag_capacity(read("pid_max").as_deref(), read("threads-max").as_deref())
}

/// Resolves the struct offsets for the running kernel and loads the object's maps.
pub fn load() -> Result<LoadedObject, LoadError> {
    load_with(&LoadOptions::default())
}

/// [`load`] with non-default [`LoadOptions`].
pub fn load_with(options: &LoadOptions) -> Result<LoadedObject, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let kernel_btf = KernelBtf::from_sys_fs()?;
    let offsets = kernel_btf.kernel_offsets()?;
    let hook_params = SHAPED_HOOKS
        .into_iter()
        .filter_map(|hook| {
            Some((
                hook,
                kernel_btf.func_param_count(&format!("bpf_lsm_{hook}"))?,
            ))
        })
        .collect();
    drop(kernel_btf);
    let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
    let max_entries = [
        ("TASK_AGENT", options.max_tagged_processes),
        ("EVENTS", options.ring_buffer_bytes),
    ];
    let pins = options
        .pin_root
        .as_deref()
        .map(|root| {
            // What is written into the programs: another cap is another build.
            let written = format!(
                "{offsets:?} cap={} sockets={}",
                options.max_processes_per_agent, options.max_sockets_per_agent
            );
            PinLayout::new(root, OBJECT, &max_entries, &written)
        })
        .transpose()?;
    let mut map_paths: Vec<(String, PathBuf)> = Vec::new();
    if let Some(pins) = &pins {
        pins.prepare()?;
        for name in &pins.maps {
            map_paths.push((name.clone(), pins.maps_dir().join(name)));
        }
    }
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global(KERNEL_OFFSETS_SYMBOL, &offsets, true)
        .override_global(TAG_CAP_SYMBOL, &options.max_processes_per_agent, true)
        .override_global(SOCKET_CAP_SYMBOL, &options.max_sockets_per_agent, true);
    for (name, max) in max_entries {
        loader.map_max_entries(name, max);
    }
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader
        .load(OBJECT)
        .map_err(|err| LoadError::Load(Box::new(err)))?;
    Ok(LoadedObject {
        ebpf,
        btf,
        offsets,
        pins,
        hook_params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_capacity_is_the_smaller_kernel_limit() {
        assert_eq!(tag_capacity(Some("32768\n"), Some("192729\n")), 32_768);
        assert_eq!(tag_capacity(Some("4194304\n"), Some("192729\n")), 192_729);
        assert_eq!(tag_capacity(None, Some("100000")), 100_000);
        assert_eq!(tag_capacity(Some("garbage"), None), PID_MAX_LIMIT);
        assert_eq!(
            tag_capacity(Some("4194304"), Some("1073741823")),
            PID_MAX_LIMIT
        );
        assert_eq!(tag_capacity(Some("300"), Some("300")), 1_024);
    }
}
