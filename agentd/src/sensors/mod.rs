//! Sensors: each hook family is one unit that owns its programs and links. Dropping a sensor
//! detaches what it attached.

pub mod exec;
pub mod files;
pub mod files_held;
pub mod files_meta;
mod files_unresolved;
pub mod late_tags;
pub mod net;
pub mod process;
pub mod protect;
mod raw_link;

use std::{collections::HashSet, hash::Hash};

use aya::{
    Ebpf, Pod,
    maps::{HashMap, MapData},
    programs::{Program, ProgramError},
};

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("program {program} has the wrong type")]
    WrongProgramType {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("loading {program} into the kernel")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program}")]
    Attach {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("linking {program}")]
    Link {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the cgroup {path}")]
    Cgroup {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning")]
    Pin(#[from] crate::pins::PinError),
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Takes map `name` out of the object as a map of type `M`.
fn take_map<M>(object: &mut crate::ebpf::LoadedObject, name: &'static str) -> Result<M, SensorError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = object
        .ebpf
        .take_map(name)
        .ok_or(SensorError::MissingMap { map: name })?;
    M::try_from(map).map_err(map_error(name))
}

/// Finds `name` in the object and checks that it is a program of type `P`.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, SensorError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SensorError::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| SensorError::WrongProgramType {
            program: name,
            source,
        })
}

/// Builds the error for a failed load, attach or link hand-over of `program`.
fn load_error(program: &'static str) -> impl FnOnce(ProgramError) -> SensorError {
    move |source| SensorError::Load { program, source }
}

fn attach_error(program: &'static str) -> impl FnOnce(ProgramError) -> SensorError {
    move |source| SensorError::Attach { program, source }
}

/// Loads and attaches the LSM programs `programs` (program name, the hook it is reported as),
/// each on its own: one the kernel refuses is logged and named in the returned list of missing
/// hooks, and the others still attach. When `links` adopted an earlier agentd's programs,
/// nothing is attached and the missing ones are those it did not leave.
fn attach_optional_lsm(
    object: &mut crate::ebpf::LoadedObject,
    programs: &[(&'static str, &'static str)],
    links: &mut crate::pins::Links,
) -> Result<Vec<&'static str>, SensorError> {
    let mut missing = Vec::new();
    if links.adopting() {
        for (name, hook) in programs {
            if !links.has(name) {
                missing.push(*hook);
            }
        }
        return Ok(missing);
    }
    let crate::ebpf::LoadedObject { ebpf, btf, .. } = object;
    for (name, hook) in programs {
        let program: &mut aya::programs::Lsm = program(ebpf, name)?;
        let attached = program
            .load(hook, btf)
            .map_err(load_error(name))
            .and_then(|()| program.attach().map_err(attach_error(name)))
            .and_then(|link_id| program.take_link(link_id).map_err(attach_error(name)));
        match attached {
            Ok(link) => links.add(name, link)?,
            Err(err) => {
                tracing::warn!(
                    hook,
                    "{:#}: this check is not enforced on this kernel",
                    anyhow::Error::from(err)
                );
                missing.push(*hook);
            }
        }
    }
    Ok(missing)
}

/// Makes `map` hold exactly `want`. New entries go in before stale ones come out, so a key in
/// both the old and the new set is never missing. If the kernel refuses an insert (a full map),
/// the old content is restored and the error returned: the last good state stays in force.
pub(crate) fn replace_all<K, V>(
    map: &mut HashMap<MapData, K, V>,
    want: &[(K, V)],
    name: &'static str,
) -> Result<(), SensorError>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    let old: Vec<(K, V)> = map
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_error(name))?;
    let wanted: HashSet<K> = want.iter().map(|(key, _)| *key).collect();
    for (done, (key, value)) in want.iter().enumerate() {
        if let Err(err) = map.insert(key, value, 0) {
            let old_keys: HashSet<K> = old.iter().map(|(key, _)| *key).collect();
            for (key, _) in &want[..done] {
                if !old_keys.contains(key) {
                    let _ = map.remove(key);
                }
            }
            for (key, value) in &old {
                let _ = map.insert(key, value, 0);
            }
            return Err(map_error(name)(err));
        }
    }
    for (key, _) in &old {
        if !wanted.contains(key) {
            map.remove(key).map_err(map_error(name))?;
        }
    }
    Ok(())
}

/// Inserts `key` unless the map holds it already (`BPF_NOEXIST`, decided by the kernel, so a
/// concurrent writer's entry wins). Returns whether this call inserted it.
pub(crate) fn insert_if_absent<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    value: &V,
    name: &'static str,
) -> Result<bool, SensorError> {
    /// Map update flag: only insert a key that is not there yet.
    const BPF_NOEXIST: u64 = 1;
    match map.insert(key, value, BPF_NOEXIST) {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::SyscallError(err))
            if err.io_error.raw_os_error() == Some(libc::EEXIST) =>
        {
            Ok(false)
        }
        Err(err) => Err(map_error(name)(err)),
    }
}

pub(crate) fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> SensorError {
    move |source| SensorError::Map { map, source }
}
