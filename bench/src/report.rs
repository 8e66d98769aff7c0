//! The results: one [`Row`] per benchmark, the machine they ran on, and the BENCHMARKS.md and
//! BENCHMARKS.json files.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Where and when a run happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    /// `full` or `smoke`.
    pub mode: String,
    /// /proc/loadavg when the run started: other work on a shared machine shows here.
    pub loadavg: String,
}

impl RunInfo {
    pub fn collect(repo: &Path, smoke: bool) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
        let run = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .current_dir(repo)
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let date = run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default();
        let mut commit = run("git", &["rev-parse", "--short=12", "HEAD"])
            .unwrap_or_else(|| "unknown".to_owned());
        // Uncommitted changes outside the result files make the commit an approximation.
        let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
            .unwrap_or_default()
            .lines()
            .any(|line| !line.contains("BENCHMARKS."));
        if dirty {
            commit.push_str("+dirty");
        }
        Self {
            cpu_model,
            cores,
            kernel,
            date,
            commit,
            mode: if smoke { "smoke" } else { "full" }.to_owned(),
            loadavg: fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured, and the target is met.
    Pass,
    /// Measured, and the target is missed.
    Miss,
    /// Not measured, with the reason.
    NotMeasured(String),
    /// The harness failed, with the error.
    Error(String),
}

impl Status {
    pub fn from_target(met: bool) -> Self {
        if met { Self::Pass } else { Self::Miss }
    }

    fn label(&self) -> String {
        match self {
            Self::Pass => "pass".to_owned(),
            Self::Miss => "**miss**".to_owned(),
            Self::NotMeasured(why) => format!("not measured: {why}"),
            Self::Error(why) => format!("harness error: {why}"),
        }
    }
}

/// One benchmark's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// The name `--only` takes.
    pub id: String,
    pub name: String,
    pub target: String,
    /// The measured figure, one line.
    pub result: String,
    pub status: Status,
    /// Where it ran (host kernel, which hook or observer, which core).
    pub ran_on: String,
    /// Every number behind `result`: per-round figures, percentiles, counts.
    pub details: serde_json::Value,
    pub run: RunInfo,
}

impl Row {
    pub fn not_measured(spec: &RowSpec, run: &RunInfo, why: &str) -> Self {
        Self {
            id: spec.id.to_owned(),
            name: spec.name.to_owned(),
            target: spec.target.to_owned(),
            result: "—".to_owned(),
            status: Status::NotMeasured(why.to_owned()),
            ran_on: "—".to_owned(),
            details: serde_json::Value::Null,
            run: run.clone(),
        }
    }

    pub fn error(spec: &RowSpec, run: &RunInfo, err: &anyhow::Error) -> Self {
        Self {
            status: Status::Error(format!("{err:#}")),
            ..Self::not_measured(spec, run, "")
        }
    }

    /// Whether the harness worked (a missed target still counts as working).
    pub fn harness_ok(&self) -> bool {
        !matches!(self.status, Status::Error(_))
    }
}

/// A row's fixed description.
pub struct RowSpec {
    pub id: &'static str,
    pub name: &'static str,
    pub target: &'static str,
}

pub const ROWS: &[RowSpec] = &[
    RowSpec {
        id: "connect",
        name: "connect() on the allowed path (tagged)",
        target: "p50 ≤ 1.05, p99 ≤ 1.10 (with ÷ without)",
    },
    RowSpec {
        id: "untagged",
        name: "untagged processes (connect and open loops)",
        target: "≤ 1.01",
    },
    RowSpec {
        id: "open",
        name: "open() on a non-matching path (tagged)",
        target: "throughput ≥ 0.97 of baseline",
    },
    RowSpec {
        id: "prog-cost",
        name: "cost per program invocation",
        target: "connect4 ≤ 100 ns, file_open ≤ 150 ns",
    },
    RowSpec {
        id: "pipeline",
        name: "event pipeline",
        target: "≥ 200k events/s for 60 s at delivered/produced ≥ 0.999; ≤ 0.15 core per 100k events/s",
    },
    RowSpec {
        id: "policy-eval",
        name: "policy evaluation",
        target: "p99 ≤ 50 µs",
    },
    RowSpec {
        id: "propagation",
        name: "decision propagation",
        target: "p99 ≤ 100 ms at 1,000 hosts",
    },
    RowSpec {
        id: "control-plane",
        name: "control plane scale",
        target: "≥ 1,250 hosts with Heartbeat p99 ≤ 50 ms",
    },
    RowSpec {
        id: "risk-quarantine",
        name: "risk to quarantine",
        target: "p99 ≤ 10 ms",
    },
    RowSpec {
        id: "open-lsm",
        name: "open() on a non-matching path (tagged), BPF LSM in a guest",
        target: "throughput ≥ 0.97 of baseline",
    },
    RowSpec {
        id: "prog-cost-lsm",
        name: "cost per program invocation, BPF LSM in a guest",
        target: "connect4 ≤ 100 ns, file_open ≤ 150 ns",
    },
    RowSpec {
        id: "svid-cache",
        name: "X.509-SVID served from the host cache",
        target: "p99 ≤ 200 µs",
    },
    RowSpec {
        id: "svid-issuance",
        name: "X.509-SVID issuance through the control plane",
        target: "p99 ≤ 10 ms at 1,000 hosts rotating",
    },
];

pub fn spec(id: &str) -> &'static RowSpec {
    ROWS.iter()
        .find(|spec| spec.id == id)
        .expect("a known row id")
}

/// Percentiles of a latency histogram, in nanoseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            p50_ns: histogram.value_at_quantile(0.50),
            p90_ns: histogram.value_at_quantile(0.90),
            p99_ns: histogram.value_at_quantile(0.99),
            max_ns: histogram.max(),
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    } else {
        sorted[mid]
    }
}

#[expect(clippy::cast_precision_loss, reason = "ratios of nanosecond counts")]
pub fn ratio(b: u64, a: u64) -> f64 {
    b as f64 / a.max(1) as f64
}

/// Formats nanoseconds for people: `850 ns`, `12.3 µs`, `4.56 ms`.
#[expect(clippy::cast_precision_loss, reason = "display only")]
pub fn human_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}

/// Rows from an earlier BENCHMARKS.json, to keep those a `--only` run does not measure.
pub fn previous_rows(path: &Path) -> Vec<Row> {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<Document>(&text).ok())
        .map(|doc| doc.rows)
        .unwrap_or_default()
}

/// The `open` and `prog-cost` rows that agentd-bench measured in a QEMU guest whose kernel has
/// BPF LSM (`cargo xtask bench` boots it and saves the guest's BENCHMARKS.json at `path`), as
/// the rows `open-lsm` and `prog-cost-lsm` of this run.
pub fn lsm_rows(path: &Path, run: &RunInfo) -> Vec<Row> {
    let document = fs::read_to_string(path)
        .map_err(anyhow::Error::from)
        .and_then(|text| serde_json::from_str::<Document>(&text).map_err(anyhow::Error::from))
        .with_context(|| format!("reading the guest's results from {}", path.display()));
    [("open", "open-lsm"), ("prog-cost", "prog-cost-lsm")]
        .into_iter()
        .map(|(measured, id)| {
            let spec = spec(id);
            let document = match &document {
                Ok(document) => document,
                Err(err) => return Row::error(spec, run, err),
            };
            let Some(row) = document.rows.iter().find(|row| row.id == measured) else {
                return Row::error(
                    spec,
                    run,
                    &anyhow::anyhow!("the guest's results have no {measured} row"),
                );
            };
            Row {
                id: spec.id.to_owned(),
                name: spec.name.to_owned(),
                target: spec.target.to_owned(),
                ran_on: format!(
                    "QEMU guest on this machine (2 vCPUs), Debian kernel {} with BPF LSM: {}",
                    document.run.kernel, row.ran_on
                ),
                run: run.clone(),
                ..row.clone()
            }
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Document {
    run: RunInfo,
    rows: Vec<Row>,
}

/// Writes BENCHMARKS.json and BENCHMARKS.md into `dir`.
pub fn write(dir: &Path, run: &RunInfo, rows: &[Row]) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(&Document {
        run: run.clone(),
        rows: rows.to_vec(),
    })?;
    fs::write(dir.join("BENCHMARKS.json"), json + "\n").context("writing BENCHMARKS.json")?;
    fs::write(dir.join("BENCHMARKS.md"), markdown(run, rows)).context("writing BENCHMARKS.md")?;
    Ok(())
}

fn markdown(run: &RunInfo, rows: &[Row]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# agentd benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` ({} run). How to run them and how to read this table: \
         [docs/benchmarks.md](docs/benchmarks.md). Ratios are with agentd ÷ without, measured \
         in alternating rounds on the same machine in one run; absolute times are for context \
         only.\n",
        run.mode
    );
    let _ = writeln!(md, "- machine: {} ({} cores)", run.cpu_model, run.cores);
    let _ = writeln!(md, "- kernel: {}", run.kernel);
    let _ = writeln!(md, "- date: {}", run.date);
    let _ = writeln!(md, "- commit: {}", run.commit);
    let _ = writeln!(
        md,
        "- load average when the run started: {} (other work on the machine adds noise to both sides of each ratio)\n",
        run.loadavg
    );
    let _ = writeln!(
        md,
        "| # | benchmark | result | target | status | where it ran |\n|---|---|---|---|---|---|"
    );
    for (n, row) in rows.iter().enumerate() {
        let mut status = row.status.label();
        if row.run.date != run.date {
            let _ = write!(
                status,
                " (from the {} run of {} at {})",
                row.run.mode, row.run.date, row.run.commit
            );
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            n + 1,
            row.name,
            row.result.replace('|', "\\|"),
            row.target,
            status.replace('|', "\\|"),
            row.ran_on
        );
    }
    let _ = writeln!(md, "\n## Details\n");
    for row in rows {
        if row.details.is_null() {
            continue;
        }
        let _ = writeln!(
            md,
            "### {} (`--only {}`)\n\n```json\n{}\n```\n",
            row.name,
            row.id,
            serde_json::to_string_pretty(&row.details).unwrap_or_default()
        );
    }
    md
}
