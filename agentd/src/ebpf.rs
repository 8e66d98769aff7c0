//! The embedded eBPF object and how it is loaded: offsets resolved from BTF first, then maps
//! created. Programs are loaded and attached by the sensors that own them.

use std::path::PathBuf;

use agentd_common::{KERNEL_OFFSETS_SYMBOL, KernelOffsets};
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
}

/// Settings that shape the kernel objects before they are created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Capacity of `TASK_AGENT`, the tag map: how many agent processes can be tagged at once.
    pub max_tagged_processes: u32,
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
            ring_buffer_bytes: 1 << 22,
            pin_root: None,
        }
    }
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
    let offsets = KernelBtf::from_sys_fs()?.kernel_offsets()?;
    let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
    let max_entries = [
        ("TASK_AGENT", options.max_tagged_processes),
        ("EVENTS", options.ring_buffer_bytes),
    ];
    let pins = options
        .pin_root
        .as_deref()
        .map(|root| PinLayout::new(root, OBJECT, &max_entries, &format!("{offsets:?}")))
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
        .override_global(KERNEL_OFFSETS_SYMBOL, &offsets, true);
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
    })
}
