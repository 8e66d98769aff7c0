//! Enforcement that outlives the daemon: the kernel maps and the programs' links, pinned in the
//! BPF file system, and adopted by the next agentd (docs/operations.md).
//!
//! ```text
//! <root>/maps/<layout>/<MAP>           every map of the object, and REGISTRY (agent numbers)
//! <root>/links/<build>/<program>       the links of one build of the programs
//! <root>/links/partial-<build>/        links being pinned; renamed when complete
//! ```
//!
//! (The BPF file system refuses names with a dot.)
//!
//! ```text
//! ```
//!
//! `layout` is a digest of every map's type, sizes and flags (and [`MAP_SCHEMA`]): an agentd
//! whose maps look the same reuses them, with their tags and policy. `build` is a digest of the
//! programs, the offsets written into them and the layout: an agentd of the same build adopts the
//! pinned links as they are and attaches nothing. Another build (an upgrade) attaches its own
//! links next to the old ones, and only once all of them are attached and its policy is written
//! are the old links unpinned, which detaches them. If anything fails first, the new links go
//! away with the failed process and the old ones keep enforcing.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

use agentd_common::{MAP_SCHEMA, REGISTRY_NAME_LEN, RegistryEntry};
use aya::{
    maps::{HashMap, MapData, MapError},
    programs::links::{FdLink, PinnedLink},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::identity::{Agent, AgentId, Registry};

/// Where agentd pins by default.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/agentd";
/// The registry map's file name in the maps directory.
const REGISTRY: &str = "REGISTRY";
/// Room in the registry map: agents and rules together.
const REGISTRY_ENTRIES: u32 = 16_384;

/// What agentd leaves behind when it exits on a signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExit {
    /// Programs stay attached and keep enforcing; the next agentd adopts them. Only
    /// `agentd teardown` removes them.
    #[default]
    Keep,
    /// Detach everything and remove the pins (for development and tests).
    Detach,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not on a BPF file system (mount one: `mount -t bpf bpf /sys/fs/bpf`)", path.display())]
    NotBpfFs { path: PathBuf },
    #[error("adopting the pinned link {}", path.display())]
    Adopt {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning the link of {program} at {}", path.display())]
    Pin {
        program: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the link of {program} cannot be pinned (the kernel attached it without a BPF link)")]
    NotPinnable { program: String },
    #[error("the registry map {}", path.display())]
    Registry {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("attaching {program}: failed on purpose (AGENTD_FAULT_INJECTION)")]
    FaultInjected { program: String },
    #[error("reading the eBPF object's maps")]
    Object(#[source] aya_obj::ParseError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

fn digest(hasher: Sha256) -> String {
    hasher.finalize()[..8]
        .iter()
        .fold(String::new(), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// The pin directories of one object on one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    pub root: PathBuf,
    /// Digest of the maps' shapes.
    pub layout: String,
    /// Digest of the programs.
    pub build: String,
    /// The object's maps, by name (sections such as `.rodata` excluded).
    pub maps: Vec<String>,
}

impl PinLayout {
    /// Works out the layout and build digests of `object` as it will be loaded: `max_entries`
    /// holds the overrides the loader applies, `salt` what else shapes the programs (the kernel
    /// offsets written into them).
    pub fn new(
        root: &Path,
        object: &[u8],
        max_entries: &[(&str, u32)],
        salt: &str,
    ) -> Result<Self, PinError> {
        let parsed = aya_obj::Object::parse(object).map_err(PinError::Object)?;
        let shapes: BTreeMap<&str, &aya_obj::Map> = parsed
            .maps
            .iter()
            .filter(|(name, _)| !name.starts_with('.'))
            .map(|(name, map)| (name.as_str(), map))
            .collect();
        let mut layout = Sha256::new();
        layout.update(MAP_SCHEMA.to_le_bytes());
        for (name, map) in &shapes {
            let max = max_entries
                .iter()
                .find(|(n, _)| n == name)
                .map_or(map.max_entries(), |(_, max)| *max);
            layout.update(name.as_bytes());
            for field in [
                map.map_type(),
                map.key_size(),
                map.value_size(),
                max,
                map.map_flags(),
            ] {
                layout.update(field.to_le_bytes());
            }
        }
        let layout = digest(layout);
        let mut build = Sha256::new();
        build.update(layout.as_bytes());
        build.update(object);
        build.update(salt.as_bytes());
        // Fault injection for the upgrade test (docs/testing.md): makes this a different build.
        if let Some(fault) = fault_injection() {
            build.update(fault.as_bytes());
        }
        Ok(Self {
            root: root.to_owned(),
            layout,
            build: digest(build),
            maps: shapes.keys().map(|name| (*name).to_owned()).collect(),
        })
    }

    #[must_use]
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps").join(&self.layout)
    }

    #[must_use]
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links").join(&self.build)
    }

    fn partial_dir(&self) -> PathBuf {
        self.root
            .join("links")
            .join(format!("partial-{}", self.build))
    }

    /// Creates the maps directory (and checks that the root is on a BPF file system).
    pub fn prepare(&self) -> Result<(), PinError> {
        let dir = self.maps_dir();
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        if !crate::pseudofs::on_bpf_fs(&dir) {
            return Err(PinError::NotBpfFs { path: dir });
        }
        Ok(())
    }
}

/// `AGENTD_FAULT_INJECTION=attach:<program>`: the named program fails to attach, and the build
/// counts as new. Only the upgrade test sets it.
#[must_use]
pub fn fault_injection() -> Option<String> {
    std::env::var("AGENTD_FAULT_INJECTION")
        .ok()
        .filter(|v| !v.is_empty())
}

/// A pinned link as `agentd status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub program: String,
    pub link_id: u32,
    pub program_id: u32,
}

/// What `agentd status` says about the pins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinStatus {
    pub root: String,
    pub layout: String,
    pub build: String,
    /// Whether this agentd adopted links pinned by an earlier one.
    pub adopted: bool,
    pub on_exit: Option<OnExit>,
    pub links: Vec<LinkStatus>,
}

/// The links of this agentd's programs: adopted from the pins, or attached now and pinned once
/// [`Links::commit`] says the new programs are ready.
pub struct Links {
    /// None: not pinning; the links live as long as this process.
    layout: Option<PinLayout>,
    /// Programs whose links are pinned for this build (adopted, or pinned by this process).
    pinned: Vec<String>,
    /// Whether the pinned links were found, not made, by this process.
    adopted: bool,
    /// Links attached by this process, not yet pinned.
    fresh: Vec<(String, FdLink)>,
}

impl Links {
    /// Finds the links pinned for `layout`'s build: a directory there is complete, since links
    /// are pinned elsewhere and the directory renamed into place.
    pub fn open(layout: &PinLayout) -> Result<Self, PinError> {
        let mut pinned = Vec::new();
        let dir = layout.links_dir();
        if dir.is_dir() {
            for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
                let path = entry.map_err(io_error(&dir))?.path();
                // Check that it is a live link.
                PinnedLink::from_pin(&path).map_err(|source| PinError::Adopt {
                    path: path.clone(),
                    source,
                })?;
                if let Some(name) = path.file_name() {
                    pinned.push(name.to_string_lossy().into_owned());
                }
            }
        }
        pinned.sort();
        Ok(Self {
            layout: Some(layout.clone()),
            adopted: !pinned.is_empty(),
            pinned,
            fresh: Vec::new(),
        })
    }

    /// Links that are not pinned: they detach when this process exits.
    #[must_use]
    pub fn unpinned() -> Self {
        Self {
            layout: None,
            pinned: Vec::new(),
            adopted: false,
            fresh: Vec::new(),
        }
    }

    /// Whether an earlier agentd of this build left its links pinned: then nothing is attached.
    #[must_use]
    pub fn adopting(&self) -> bool {
        self.adopted
    }

    /// Whether `program` is attached (adopted or attached by this process).
    #[must_use]
    pub fn has(&self, program: &str) -> bool {
        self.pinned.iter().any(|name| name == program)
            || self.fresh.iter().any(|(name, _)| name == program)
    }

    /// Records a link this process attached.
    pub fn add<L>(&mut self, program: &str, link: L) -> Result<(), PinError>
    where
        FdLink: TryFrom<L>,
    {
        let link = FdLink::try_from(link).map_err(|_| PinError::NotPinnable {
            program: program.to_owned(),
        })?;
        if fault_injection().is_some_and(|fault| fault == format!("attach:{program}")) {
            return Err(PinError::FaultInjected {
                program: program.to_owned(),
            });
        }
        self.fresh.push((program.to_owned(), link));
        Ok(())
    }

    /// Makes this process's links the pinned ones: pins them under a temporary name, renames the
    /// directory into place, then unpins every other build's links (detaching them) and removes
    /// other layouts' maps. Call it once the new programs have their policy.
    pub fn commit(&mut self) -> Result<(), PinError> {
        let Some(layout) = &self.layout else {
            return Ok(());
        };
        if !self.fresh.is_empty() {
            let partial = layout.partial_dir();
            remove_tree(&partial)?;
            fs::create_dir_all(&partial).map_err(io_error(&partial))?;
            for (program, link) in self.fresh.drain(..) {
                let path = partial.join(&program);
                // Dropping the pinned handle closes this process's fd; the pin holds the link.
                link.pin(&path).map_err(|source| PinError::Pin {
                    program: program.clone(),
                    path: path.clone(),
                    source,
                })?;
                self.pinned.push(program);
            }
            self.pinned.sort();
            let dir = layout.links_dir();
            remove_tree(&dir)?;
            fs::rename(&partial, &dir).map_err(io_error(&dir))?;
        }
        // Older builds' links: unpinning detaches them (no process holds an fd to them).
        let links = layout.root.join("links");
        if links.is_dir() {
            for entry in fs::read_dir(&links).map_err(io_error(&links))? {
                let path = entry.map_err(io_error(&links))?.path();
                if path != layout.links_dir() {
                    remove_tree(&path)?;
                }
            }
        }
        let maps = layout.root.join("maps");
        for entry in fs::read_dir(&maps).map_err(io_error(&maps))? {
            let path = entry.map_err(io_error(&maps))?.path();
            if path != layout.maps_dir() {
                remove_tree(&path)?;
            }
        }
        Ok(())
    }

    /// The links in force, for status.
    #[must_use]
    pub fn status(&self) -> Vec<LinkStatus> {
        let dir = self.layout.as_ref().map(PinLayout::links_dir);
        let mut out: Vec<LinkStatus> = self
            .pinned
            .iter()
            .filter_map(|name| {
                let link = FdLink::from(PinnedLink::from_pin(dir.as_ref()?.join(name)).ok()?);
                let info = link.info().ok()?;
                Some(LinkStatus {
                    program: name.clone(),
                    link_id: info.id(),
                    program_id: info.program_id(),
                })
            })
            .collect();
        for (name, link) in &self.fresh {
            if let Ok(info) = link.info() {
                out.push(LinkStatus {
                    program: name.clone(),
                    link_id: info.id(),
                    program_id: info.program_id(),
                });
            }
        }
        out.sort_by(|a, b| a.program.cmp(&b.program));
        out
    }

    #[must_use]
    pub fn layout(&self) -> Option<&PinLayout> {
        self.layout.as_ref()
    }
}

/// Removes a pin directory and everything in it. Unpinning a link detaches it once no process
/// holds it; unpinning a map frees it once no program uses it.
pub fn remove_tree(path: &Path) -> Result<(), PinError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error(path)(err)),
    }
}

/// What was pinned under a root before a start-up, so that a start-up that fails removes what
/// it pinned itself (new map layouts, new builds' links) and nothing an earlier agentd left.
#[derive(Debug)]
pub struct Snapshot {
    root: PathBuf,
    /// None: the root did not exist.
    entries: Option<Vec<PathBuf>>,
}

impl Snapshot {
    fn entries(root: &Path) -> Vec<PathBuf> {
        ["maps", "links"]
            .iter()
            .filter_map(|dir| fs::read_dir(root.join(dir)).ok())
            .flatten()
            .filter_map(|entry| Some(entry.ok()?.path()))
            .collect()
    }

    #[must_use]
    pub fn take(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            entries: root.exists().then(|| Self::entries(root)),
        }
    }

    /// Removes what was pinned since [`Snapshot::take`]. Failures are logged: this runs on a
    /// start-up that has already failed.
    pub fn restore(&self) {
        let removed = match &self.entries {
            None => remove_tree(&self.root).map(|()| vec![self.root.clone()]),
            Some(before) => Self::entries(&self.root)
                .into_iter()
                .filter(|path| !before.contains(path))
                .map(|path| remove_tree(&path).map(|()| path))
                .collect(),
        };
        match removed {
            Ok(paths) if !paths.is_empty() => tracing::info!(
                removed = ?paths,
                "start-up failed: removed the pins it had made"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(
                err = %anyhow::Error::from(err),
                "start-up failed and its pins could not all be removed"
            ),
        }
    }
}

/// Removes everything agentd pinned under `root`: every build's links (detaching them) and every
/// layout's maps. Returns how many links were unpinned.
pub fn teardown(root: &Path) -> Result<usize, PinError> {
    let links = root.join("links");
    let mut count = 0;
    if links.is_dir() {
        for entry in fs::read_dir(&links).map_err(io_error(&links))? {
            let dir = entry.map_err(io_error(&links))?.path();
            count += fs::read_dir(&dir).map_or(0, Iterator::count);
        }
    }
    remove_tree(root)?;
    Ok(count)
}

/// The registry of agent and rule numbers, in a pinned map in the maps directory.
pub struct RegistryMap {
    map: HashMap<MapData, u64, RegistryEntry>,
    path: PathBuf,
}

impl RegistryMap {
    /// Opens the pinned registry of `layout`, creating it if this is the first agentd.
    pub fn open(layout: &PinLayout) -> Result<Self, PinError> {
        let path = layout.maps_dir().join(REGISTRY);
        let registry_error = |source| PinError::Registry {
            path: path.clone(),
            source,
        };
        let data = if path.exists() {
            MapData::from_pin(&path).map_err(registry_error)?
        } else {
            let map: HashMap<MapData, u64, RegistryEntry> =
                HashMap::create(REGISTRY_ENTRIES, 0).map_err(registry_error)?;
            map.pin(&path).map_err(|error| PinError::Registry {
                path: path.clone(),
                source: MapError::PinError {
                    name: Some(REGISTRY.into()),
                    error,
                },
            })?;
            MapData::from_pin(&path).map_err(registry_error)?
        };
        let map = HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(registry_error)?;
        Ok(Self { map, path })
    }

    /// The numbers an earlier agentd handed out.
    pub fn load(&self) -> Result<Registry, PinError> {
        let mut agents = Vec::new();
        let mut rules = Vec::new();
        for entry in &self.map {
            let (key, value) = entry.map_err(|source| PinError::Registry {
                path: self.path.clone(),
                source,
            })?;
            let number = u32::try_from(key & 0xffff_ffff).unwrap_or(0);
            let len = (value.name_len as usize).min(REGISTRY_NAME_LEN);
            let name = String::from_utf8_lossy(&value.name[..len]).into_owned();
            match key >> 32 {
                RegistryEntry::AGENT => agents.push((
                    number,
                    Agent {
                        id: AgentId(uuid::Uuid::from_bytes(value.id)),
                        name,
                    },
                )),
                RegistryEntry::RULE => rules.push((number, name)),
                _ => {}
            }
        }
        Ok(Registry::restore(agents, rules))
    }

    /// Writes every number of `registry` (a handful of entries; names may have changed).
    pub fn save(&mut self, registry: &Registry) -> Result<(), PinError> {
        for (number, agent) in registry.agents() {
            let entry = entry(*agent.id.0.as_bytes(), &agent.name);
            self.put(RegistryEntry::AGENT << 32 | u64::from(number), &entry)?;
        }
        for (number, rule) in registry.rules() {
            let entry = entry([0; 16], rule);
            self.put(RegistryEntry::RULE << 32 | u64::from(number), &entry)?;
        }
        Ok(())
    }

    fn put(&mut self, key: u64, entry: &RegistryEntry) -> Result<(), PinError> {
        if self.map.get(&key, 0).ok().as_ref() == Some(entry) {
            return Ok(());
        }
        self.map
            .insert(key, entry, 0)
            .map_err(|source| PinError::Registry {
                path: self.path.clone(),
                source,
            })
    }
}

fn entry(id: [u8; 16], name: &str) -> RegistryEntry {
    let mut out = RegistryEntry {
        id,
        name_len: 0,
        pad: 0,
        name: [0; REGISTRY_NAME_LEN],
    };
    // Cut at a character boundary.
    let mut len = name.len().min(REGISTRY_NAME_LEN);
    while !name.is_char_boundary(len) {
        len -= 1;
    }
    out.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    out.name_len = u32::try_from(len).unwrap_or(0);
    out
}
