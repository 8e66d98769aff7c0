//! The reader that drains the ring buffer on its own thread and hands batches to the daemon,
//! accounting for what the kernel could not deliver.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use agentd_common::event_stats;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use serde::Serialize;

use super::record::Event;
use crate::ebpf::LoadedObject;

const EVENTS_MAP: &str = "EVENTS";
const STATS_MAP: &str = "EVENT_STATS";

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("starting the ring-buffer reader thread")]
    Thread(#[source] std::io::Error),
    #[error("the ring-buffer reader thread stopped: {0}")]
    Stopped(String),
}

/// Counters of what the reader has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    pub delivered: u64,
    pub undecodable: u64,
}

/// The kernel's and the reader's accounting, at one moment. Once the kernel is quiet and the
/// reader has caught up, `delivered + undecodable + dropped == produced`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Records read from the ring buffer and decoded.
    pub delivered: u64,
    /// Records read that did not decode (a kernel/userspace mismatch).
    pub undecodable: u64,
    /// Events the kernel had no ring-buffer room for, summed over CPUs.
    pub dropped: u64,
    /// Events the kernel programs tried to send, summed over CPUs.
    pub produced: u64,
    /// `dropped`, per CPU.
    pub dropped_per_cpu: Vec<u64>,
}

/// Records a reader thread hands over at most at once.
const BATCH: usize = 1024;
/// Batches that may wait for the daemon before the reader thread blocks (and the kernel
/// starts counting drops).
const QUEUED_BATCHES: usize = 64;

/// Drains the kernel's ring buffer on a dedicated thread, off the async executor: the thread
/// waits on the ring buffer's descriptor, decodes up to [`BATCH`] records at a time and hands
/// each batch to the daemon through a bounded queue. There is one reader per daemon.
pub struct EventReader {
    batches: tokio::sync::mpsc::Receiver<Vec<Event>>,
    stats: Arc<SharedStats>,
    counters: PerCpuArray<MapData, u64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SharedStats {
    delivered: AtomicU64,
    undecodable: AtomicU64,
    /// Why the thread stopped, if it did on its own.
    failure: std::sync::Mutex<Option<String>>,
}

impl EventReader {
    /// Takes the ring buffer and its counters out of the object and starts the reader thread.
    pub fn new(object: &mut LoadedObject) -> Result<Self, ReaderError> {
        let mut take = |name: &'static str| {
            object
                .ebpf
                .take_map(name)
                .ok_or(ReaderError::MissingMap(name))
        };
        let ring = RingBuf::try_from(take(EVENTS_MAP)?).map_err(|source| ReaderError::Map {
            map: EVENTS_MAP,
            source,
        })?;
        let counters =
            PerCpuArray::try_from(take(STATS_MAP)?).map_err(|source| ReaderError::Map {
                map: STATS_MAP,
                source,
            })?;
        let (tx, batches) = tokio::sync::mpsc::channel(QUEUED_BATCHES);
        let stats = Arc::new(SharedStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("agentd-events".to_owned())
            .spawn({
                let stats = Arc::clone(&stats);
                let stop = Arc::clone(&stop);
                move || drain(ring, &tx, &stats, &stop)
            })
            .map_err(ReaderError::Thread)?;
        Ok(Self {
            batches,
            stats,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits for the next batch of events and appends it to `out`.
    pub async fn read_batch(&mut self, out: &mut Vec<Event>) -> Result<usize, ReaderError> {
        match self.batches.recv().await {
            Some(batch) => {
                let read = batch.len();
                out.extend(batch);
                Ok(read)
            }
            None => Err(ReaderError::Stopped(
                self.stats
                    .failure
                    .lock()
                    .ok()
                    .and_then(|failure| failure.clone())
                    .unwrap_or_else(|| "no reason given".to_owned()),
            )),
        }
    }

    #[must_use]
    pub fn stats(&self) -> ReaderStats {
        ReaderStats {
            delivered: self.stats.delivered.load(Ordering::Relaxed),
            undecodable: self.stats.undecodable.load(Ordering::Relaxed),
        }
    }

    fn per_cpu(&self, slot: u32) -> Result<Vec<u64>, ReaderError> {
        let values = self
            .counters
            .get(&slot, 0)
            .map_err(|source| ReaderError::Map {
                map: STATS_MAP,
                source,
            })?;
        Ok(values.iter().copied().collect())
    }

    /// Events the kernel could not reserve room for, summed over CPUs.
    pub fn dropped(&self) -> Result<u64, ReaderError> {
        Ok(self.per_cpu(event_stats::DROPPED)?.iter().sum())
    }

    /// The whole accounting. The reader's counts are read last, so that a record produced
    /// between the reads is never counted as delivered without being counted as produced.
    pub fn counts(&self) -> Result<EventCounts, ReaderError> {
        let produced = self.per_cpu(event_stats::PRODUCED)?.iter().sum();
        let dropped_per_cpu = self.per_cpu(event_stats::DROPPED)?;
        let stats = self.stats();
        Ok(EventCounts {
            delivered: stats.delivered,
            undecodable: stats.undecodable,
            dropped: dropped_per_cpu.iter().sum(),
            produced,
            dropped_per_cpu,
        })
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock a thread waiting for room in the queue.
        self.batches.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long the reader thread waits on the ring buffer before it looks again. Routine records
/// do not wake it (the kernel side sends them with `BPF_RB_NO_WAKEUP`), so this bounds their
/// delivery delay; denials and rule hits wake it at once.
const POLL_MS: i32 = 2;

/// The reader thread: wait for records, decode a batch, hand it over, until told to stop or
/// the daemon goes away.
fn drain(
    mut ring: RingBuf<MapData>,
    tx: &tokio::sync::mpsc::Sender<Vec<Event>>,
    stats: &SharedStats,
    stop: &AtomicBool,
) {
    let fd = ring.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            let Some(record) = ring.next() else { break };
            match Event::decode(&record) {
                Ok(event) => batch.push(event),
                Err(err) => {
                    stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, "skipping an undecodable kernel event");
                }
            }
        }
        if batch.is_empty() {
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the ring buffer keeps `fd` open.
            let ready = unsafe { libc::poll(&raw mut poll, 1, POLL_MS) };
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    if let Ok(mut failure) = stats.failure.lock() {
                        *failure = Some(format!("polling the ring buffer: {err}"));
                    }
                    return;
                }
            }
            continue;
        }
        stats
            .delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if tx.blocking_send(batch).is_err() {
            return;
        }
    }
}
