//! Processes tagged while they ran (`LATE_TAGGED`, `LATE_TAGS` in the kernel's `tagging`): an
//! exec or a fork that tagged a running process, or agentd tagging one itself. Their open
//! descriptors were opened untagged, so until agentd has listed those files in `HELD_FILES`
//! (`files_held`), the kernel judges every read and write they make. This is the list's
//! userspace side: what is pending, and settling it once the files are listed.

use agentd_common::late_tags;
use aya::maps::{Array, HashMap, MapData};

use super::{SensorError, map_error, take_map};
use crate::ebpf::LoadedObject;

const MARKS: &str = "LATE_TAGGED";
const COUNTS: &str = "LATE_TAGS";

/// The processes waiting to be settled, and the mark count they settle up to.
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    pub pids: Vec<u32>,
    marked: u64,
}

pub struct LateTags {
    marks: HashMap<MapData, u32, u32>,
    counts: Array<MapData, u64>,
}

impl LateTags {
    pub fn take(object: &mut LoadedObject) -> Result<Self, SensorError> {
        Ok(Self {
            marks: take_map(object, MARKS)?,
            counts: take_map(object, COUNTS)?,
        })
    }

    fn count(&self, slot: u32) -> Result<u64, SensorError> {
        self.counts.get(&slot, 0).map_err(map_error(COUNTS))
    }

    /// Marks `pid` before agentd tags it, and says so to the kernel (the settled count becomes
    /// [`late_tags::PENDING`], which no mark count equals).
    pub fn mark(&mut self, pid: u32) -> Result<(), SensorError> {
        self.marks.insert(pid, 1, 0).map_err(map_error(MARKS))?;
        self.counts
            .set(late_tags::SETTLED, late_tags::PENDING, 0)
            .map_err(map_error(COUNTS))
    }

    /// The marked processes, when some are not settled. The mark count is read before the
    /// entries: the kernel writes an entry before it counts it, so every mark up to that count
    /// is among them.
    pub fn pending(&self) -> Result<Option<Pending>, SensorError> {
        let marked = self.count(late_tags::MARKED)?;
        if self.count(late_tags::SETTLED)? == marked {
            return Ok(None);
        }
        let pids = self
            .marks
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(MARKS))?;
        Ok(Some(Pending { pids, marked }))
    }

    /// Forgets `pending`'s processes (their files are listed, or they are gone) and settles the
    /// count it was read at. Marks made since stay pending.
    pub fn settle(&mut self, pending: &Pending) -> Result<(), SensorError> {
        for pid in &pending.pids {
            match self.marks.remove(pid) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(map_error(MARKS)(err)),
            }
        }
        self.counts
            .set(late_tags::SETTLED, pending.marked, 0)
            .map_err(map_error(COUNTS))
    }
}
