//! The measured loops. Each runs in its own process, so that it can be launched into an agent
//! (`agentd launch --agent bench -- agentd-bench worker ...`) or run untagged, and prints one
//! JSON line: the loop's count, elapsed time and, for latency loops, the hdrhistogram of every
//! call (V2 serialization, hex) so that the orchestrator merges rounds exactly.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::{Histogram, serialization::Serializer as _};
use serde::{Deserialize, Serialize};

/// What one worker run reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerReport {
    pub count: u64,
    pub ok: u64,
    pub eperm: u64,
    pub other: u64,
    pub elapsed_ns: u64,
    /// Per-call latency in nanoseconds, V2-serialized and hex-encoded; empty for paced loops.
    pub histogram: String,
}

impl WorkerReport {
    pub fn histogram(&self) -> anyhow::Result<Histogram<u64>> {
        let bytes = hex::decode(&self.histogram).context("histogram hex")?;
        hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|err| anyhow::anyhow!("decoding a histogram: {err:?}"))
    }

    /// Calls per second over the whole loop.
    #[expect(clippy::cast_precision_loss, reason = "rates are reported as floats")]
    pub fn rate(&self) -> f64 {
        self.count as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }
}

/// A latency histogram of 1 ns to 10 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

fn serialize(histogram: &Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|err| anyhow::anyhow!("serializing a histogram: {err:?}"))?;
    Ok(hex::encode(bytes))
}

fn print(report: &WorkerReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, report)?;
    writeln!(out)?;
    Ok(())
}

fn classify(result: &std::io::Result<()>, report: &mut WorkerReport) {
    match result {
        Ok(()) => report.ok += 1,
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => report.eperm += 1,
        Err(_) => report.other += 1,
    }
}

/// Runs `call` `count` times (after `warmup` unrecorded calls), recording each call's latency.
pub fn timed_loop(
    count: u64,
    warmup: u64,
    mut call: impl FnMut() -> std::io::Result<()>,
) -> anyhow::Result<()> {
    for _ in 0..warmup {
        let _ = call();
    }
    let mut histogram = new_histogram();
    let mut report = WorkerReport {
        count,
        ok: 0,
        eperm: 0,
        other: 0,
        elapsed_ns: 0,
        histogram: String::new(),
    };
    let start = Instant::now();
    for _ in 0..count {
        let before = Instant::now();
        let result = call();
        let took = u64::try_from(before.elapsed().as_nanos()).unwrap_or(u64::MAX);
        histogram.saturating_record(took.max(1));
        classify(&result, &mut report);
    }
    report.elapsed_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    report.histogram = serialize(&histogram)?;
    print(&report)
}

/// Loopback TCP connect + close, `count` times.
pub fn connect(target: SocketAddr, count: u64, warmup: u64) -> anyhow::Result<()> {
    timed_loop(count, warmup, || {
        TcpStream::connect(target).and_then(reset_on_close)
    })
}

/// Closes `stream` with `SO_LINGER` 0: a reset, and no TIME_WAIT on either side. Otherwise the
/// listener, which closes first, keeps each connection's 4-tuple in TIME_WAIT; a later connect
/// that reuses the port (tens of thousands of connects per round) meets it, gets no SYN-ACK and
/// waits a second for the SYN's retransmission: that second was the p99 and the max of row 1.
fn reset_on_close(stream: TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket, with a valid `linger` and its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).unwrap_or(8),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(stream);
    Ok(())
}

/// open(O_RDONLY) + close of one (cached) file, `count` times.
pub fn open(path: &std::path::Path, count: u64, warmup: u64) -> anyhow::Result<()> {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    timed_loop(count, warmup, || {
        // SAFETY: a valid NUL-terminated name; the descriptor is closed at once.
        let fd = unsafe { libc::open(name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd) };
        Ok(())
    })
}

/// UDP socket + connect(2) + close, paced to at most `rate` per second (0 = unpaced), for
/// `duration`. Each connect is one call of the kernel's connect4 hook (and one event for a
/// tagged process).
pub fn udp_connect(target: SocketAddr, rate: u64, duration: Duration) -> anyhow::Result<()> {
    let mut report = WorkerReport {
        count: 0,
        ok: 0,
        eperm: 0,
        other: 0,
        elapsed_ns: 0,
        histogram: String::new(),
    };
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        // Paced in batches of 64: never ahead of `rate` calls per second.
        if done.is_multiple_of(64) {
            let elapsed = start.elapsed();
            if elapsed >= duration {
                break;
            }
            if let Some(due) = done.saturating_mul(1_000_000_000).checked_div(rate) {
                let due = Duration::from_nanos(due);
                if let Some(wait) = due.checked_sub(elapsed) {
                    std::thread::sleep(wait);
                }
            }
        }
        let result = UdpSocket::bind("127.0.0.1:0").and_then(|socket| socket.connect(target));
        classify(&result, &mut report);
        done += 1;
    }
    report.count = done;
    report.elapsed_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    print(&report)
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable between the processes of one machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// What the verdict probe prints when the kernel's verdict on its connect changes.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerdictChange {
    /// Whether the connect went through (false: EPERM).
    pub allowed: bool,
    /// `CLOCK_MONOTONIC` of the first connect with the new verdict, in nanoseconds.
    pub monotonic_ns: u64,
}

/// TCP connect + close to `target` every `interval` for `duration`, printing a
/// [`VerdictChange`] line at the start and whenever the verdict (allowed or EPERM) changes.
pub fn verdict_probe(
    target: SocketAddr,
    interval: Duration,
    duration: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last: Option<bool> = None;
    while start.elapsed() < duration {
        let result = TcpStream::connect(target).map(drop);
        let now = monotonic_ns();
        let allowed = match &result {
            Ok(()) => true,
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => false,
            // Anything else (a full backlog) says nothing about the verdict.
            Err(_) => {
                std::thread::sleep(interval);
                continue;
            }
        };
        if last != Some(allowed) {
            last = Some(allowed);
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(
                &mut out,
                &VerdictChange {
                    allowed,
                    monotonic_ns: now,
                },
            )?;
            writeln!(out)?;
            out.flush()?;
        }
        std::thread::sleep(interval);
    }
    Ok(())
}
