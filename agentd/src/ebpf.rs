//! The embedded eBPF object and how it is loaded: offsets resolved from BTF first, then maps
//! created. Programs are loaded and attached by the sensors that own them.

use agentd_common::{KERNEL_OFFSETS_SYMBOL, KernelOffsets};
use aya::{Btf, Ebpf, EbpfLoader};

use crate::kernel_btf::{BtfError, KernelBtf};

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
}

/// Everything the sensors need: the loaded object, the kernel's BTF (LSM and `tp_btf` programs
/// are verified against it) and the offsets written into the programs.
pub struct LoadedObject {
    pub ebpf: Ebpf,
    pub btf: Btf,
    pub offsets: KernelOffsets,
}

/// Settings that shape the kernel objects before they are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Capacity of `TASK_AGENT`, the tag map: how many agent processes can be tagged at once.
    pub max_tagged_processes: u32,
    /// Size of the `EVENTS` ring buffer in bytes: a power of two, at least a page.
    pub ring_buffer_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_tagged_processes: 65_536,
            ring_buffer_bytes: 1 << 22,
        }
    }
}

/// Resolves the struct offsets for the running kernel and loads the object's maps.
pub fn load() -> Result<LoadedObject, LoadError> {
    load_with(LoadOptions::default())
}

/// [`load`] with non-default [`LoadOptions`].
pub fn load_with(options: LoadOptions) -> Result<LoadedObject, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let offsets = KernelBtf::from_sys_fs()?.kernel_offsets()?;
    let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global(KERNEL_OFFSETS_SYMBOL, &offsets, true)
        .map_max_entries("TASK_AGENT", options.max_tagged_processes)
        .map_max_entries("EVENTS", options.ring_buffer_bytes)
        .load(OBJECT)
        .map_err(|err| LoadError::Load(Box::new(err)))?;
    Ok(LoadedObject { ebpf, btf, offsets })
}
