//! The exec sensor: `tp_btf/sched_process_exec`, reporting every completed exec.

use aya::programs::{BtfTracePoint, tp_btf::BtfTracePointLink};

use super::{SensorError, attach_error, load_error};
use crate::ebpf::LoadedObject;

const PROGRAM: &str = "sched_process_exec";

/// The attached exec hook. Dropping it detaches the program.
pub struct ExecSensor {
    _link: BtfTracePointLink,
}

impl ExecSensor {
    pub fn attach(object: &mut LoadedObject) -> Result<Self, SensorError> {
        let LoadedObject { ebpf, btf, .. } = object;
        let program: &mut BtfTracePoint = super::program(ebpf, PROGRAM)?;
        program.load(PROGRAM, btf).map_err(load_error(PROGRAM))?;
        let link_id = program.attach().map_err(attach_error(PROGRAM))?;
        let link = program.take_link(link_id).map_err(attach_error(PROGRAM))?;
        Ok(Self { _link: link })
    }
}
