//! `agentd-bench`: agentd's benchmarks. `cargo xtask bench` builds agentd, agentd-control and
//! this binary in release mode and runs `agentd-bench run`; see docs/benchmarks.md.

#![allow(
    clippy::doc_markdown,
    reason = "doc comments on the CLI types are --help text for users, not rustdoc"
)]

mod control;
mod daemon;
mod issuance;
mod overhead;
mod pipeline;
mod policy_eval;
mod propagation;
mod registry;
mod report;
mod risk;
mod svid;
mod worker;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::report::{Row, RunInfo};

/// agentd's benchmarks: overhead on connect and open (with ÷ without agentd), the cost of each
/// kernel program, the event pipeline's sustained rate, control-plane scale and the time from
/// a risky kernel event to quarantine. Writes BENCHMARKS.md and BENCHMARKS.json. Needs root.
#[derive(Parser)]
#[command(name = "agentd-bench")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the benchmarks and write BENCHMARKS.md and BENCHMARKS.json.
    Run {
        /// The agentd binary (a release build).
        #[arg(long)]
        agentd: PathBuf,
        /// The agentd-control binary (a release build).
        #[arg(long)]
        control: PathBuf,
        /// Where to write BENCHMARKS.md and BENCHMARKS.json.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The git checkout whose commit the results name.
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
        /// Run every row briefly, to prove the harness works (targets are still compared, but
        /// a missed target is not a failure).
        #[arg(long)]
        smoke: bool,
        /// Run only this row (repeatable): connect, untagged, open, prog-cost, open-lsm and
        /// prog-cost-lsm (from --lsm-rows), pipeline, policy-eval, propagation, control-plane,
        /// risk-quarantine. Rows not run are kept from an earlier BENCHMARKS.json in the output
        /// directory.
        #[arg(long = "only", value_name = "ROW", value_parser = row_id)]
        only: Vec<String>,
        /// A BENCHMARKS.json that this program wrote in a QEMU guest with BPF LSM (`cargo xtask
        /// bench` boots one, since this host refuses BPF LSM): its open and prog-cost rows
        /// become the rows open-lsm and prog-cost-lsm.
        #[arg(long, value_name = "FILE")]
        lsm_rows: Option<PathBuf>,
    },
    /// One measured loop, printing a JSON report (used by `run`; runs tagged or untagged).
    #[command(subcommand)]
    Worker(WorkerTask),
}

#[derive(Subcommand)]
enum WorkerTask {
    /// TCP connect + close to ADDR, COUNT times, each timed.
    Connect {
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Untimed calls first.
        #[arg(long, default_value_t = 200)]
        warmup: u64,
    },
    /// open(O_RDONLY) + close of PATH, COUNT times, each timed.
    Open {
        path: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 1_000)]
        warmup: u64,
    },
    /// TCP connect + close to ADDR every INTERVAL_US microseconds for SECS seconds, printing a
    /// JSON line whenever the kernel's verdict (allowed or EPERM) changes.
    VerdictProbe {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1_000)]
        interval_us: u64,
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// UDP socket + connect(2) to ADDR, paced to RATE per second (0 = as fast as possible), for
    /// SECS seconds.
    UdpConnect {
        addr: SocketAddr,
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 1)]
        secs: u64,
    },
    /// FetchX509SVID from the SPIFFE Workload API at ENDPOINT (`unix:///...`), COUNT times on
    /// one connection, each timed.
    SvidFetch {
        endpoint: String,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        #[arg(long, default_value_t = 100)]
        warmup: u64,
    },
}

fn row_id(value: &str) -> Result<String, String> {
    report::ROWS
        .iter()
        .find(|spec| spec.id == value)
        .map(|spec| spec.id.to_owned())
        .ok_or_else(|| {
            let ids: Vec<&str> = report::ROWS.iter().map(|spec| spec.id).collect();
            format!("unknown row {value:?}; rows: {}", ids.join(", "))
        })
}

/// What every row needs.
pub struct Context {
    pub agentd: PathBuf,
    pub control: PathBuf,
    /// This binary, for the workers.
    pub self_exe: PathBuf,
    pub smoke: bool,
    pub run: RunInfo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Worker(task) => work(task).map(|()| true),
        Task::Run {
            agentd,
            control,
            out_dir,
            repo,
            smoke,
            only,
            lsm_rows,
        } => run_all(
            &agentd,
            &control,
            &out_dir,
            &repo,
            smoke,
            &only,
            lsm_rows.as_deref(),
        ),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("agentd-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn work(task: WorkerTask) -> anyhow::Result<()> {
    match task {
        WorkerTask::Connect {
            addr,
            count,
            warmup,
        } => worker::connect(addr, count, warmup),
        WorkerTask::Open {
            path,
            count,
            warmup,
        } => worker::open(&path, count, warmup),
        WorkerTask::VerdictProbe {
            addr,
            interval_us,
            secs,
        } => worker::verdict_probe(
            addr,
            Duration::from_micros(interval_us),
            Duration::from_secs(secs),
        ),
        WorkerTask::UdpConnect { addr, rate, secs } => {
            worker::udp_connect(addr, rate, Duration::from_secs(secs))
        }
        WorkerTask::SvidFetch {
            endpoint,
            count,
            warmup,
        } => svid::fetch(&endpoint, count, warmup),
    }
}

/// Runs the rows and writes the files; returns whether every harness worked.
fn run_all(
    agentd: &Path,
    control: &Path,
    out_dir: &Path,
    repo: &Path,
    smoke: bool,
    only: &[String],
    lsm_rows: Option<&Path>,
) -> anyhow::Result<bool> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmarks load eBPF programs: run as root"
    );
    let ctx = Context {
        agentd: agentd.canonicalize().context("--agentd")?,
        control: control.canonicalize().context("--control")?,
        self_exe: std::env::current_exe()?,
        smoke,
        run: RunInfo::collect(repo, smoke),
    };
    let wanted = |id: &str| only.is_empty() || only.iter().any(|o| o == id);
    let mut rows: Vec<Row> = Vec::new();
    let started = Instant::now();

    let overhead_rows: Vec<&str> = ["connect", "untagged", "open", "prog-cost"]
        .into_iter()
        .filter(|id| wanted(id))
        .collect();
    if !overhead_rows.is_empty() {
        rows.extend(overhead::run(&ctx, &overhead_rows));
    }
    if let Some(path) = lsm_rows {
        rows.extend(
            report::lsm_rows(path, &ctx.run)
                .into_iter()
                .filter(|row| wanted(&row.id)),
        );
    }
    if wanted("pipeline") {
        eprintln!("bench: event pipeline");
        rows.push(pipeline::run(&ctx));
    }
    if wanted("policy-eval") {
        eprintln!("bench: policy evaluation");
        rows.push(policy_eval::run(&ctx));
    }
    if wanted("propagation") {
        eprintln!("bench: decision propagation");
        rows.push(propagation::run(&ctx));
    }
    if wanted("control-plane") {
        eprintln!("bench: control plane");
        rows.push(control::run(&ctx));
    }
    if wanted("risk-quarantine") {
        eprintln!("bench: risk to quarantine");
        rows.push(risk::run(&ctx));
    }
    if wanted("svid-cache") {
        eprintln!("bench: SVIDs from the host cache");
        rows.push(svid::run(&ctx));
    }
    if wanted("svid-issuance") {
        eprintln!("bench: SVID issuance");
        rows.push(issuance::run(&ctx));
    }

    // Rows not run this time come from the previous results, in table order.
    let json = out_dir.join("BENCHMARKS.json");
    let mut previous = report::previous_rows(&json);
    let mut table = Vec::new();
    for spec in report::ROWS {
        if let Some(row) = rows.iter().find(|row| row.id == spec.id) {
            table.push(row.clone());
        } else if let Some(at) = previous.iter().position(|row| row.id == spec.id) {
            table.push(previous.swap_remove(at));
        }
    }
    report::write(out_dir, &ctx.run, &table)?;

    let mut passed = 0;
    let mut failed = 0;
    for row in &rows {
        let ok = row.harness_ok();
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
        println!(
            "bench {} ... {} ({}: {})",
            row.id,
            if ok { "ok" } else { "FAILED" },
            match &row.status {
                report::Status::Pass => "target met".to_owned(),
                report::Status::Miss => "target missed".to_owned(),
                report::Status::NotMeasured(why) => format!("not measured: {why}"),
                report::Status::Error(err) => format!("harness error: {err}"),
            },
            row.result
        );
    }
    println!(
        "wrote {} and BENCHMARKS.json in {:.0} s",
        out_dir.join("BENCHMARKS.md").display(),
        started.elapsed().as_secs_f64()
    );
    // The line `cargo xtask test` counts, in libtest's words.
    println!(
        "test result: {}. {passed} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    Ok(failed == 0)
}
