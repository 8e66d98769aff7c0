//! Sensors: each hook family is one unit that owns its programs and links. Dropping a sensor
//! detaches what it attached.

pub mod files;
pub mod net;
pub mod process;

use aya::{
    Ebpf,
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
    #[error("opening the cgroup {path}")]
    Cgroup {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
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
