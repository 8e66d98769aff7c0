//! Rows 1 to 4: what agentd costs the processes it watches and those it does not.
//!
//! Each round runs the same loops twice, A without agentd and B with agentd enforcing a policy
//! of 1,000 network rules (and file rules) for the bench agent, alternating which comes first.
//! In B, the tagged loops are launched into the agent with `agentd launch`; the untagged ones
//! run as plain children of this process, like A's. A final B pass with
//! `kernel.bpf_stats_enabled=1` reads each program's run time and count.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::{
    Context,
    daemon::{AGENT, Agentd},
    report::{self, Percentiles, Row, Status, human_ns, median, ratio},
    worker::{WorkerReport, new_histogram},
};

/// Network rules in the benchmark policy.
pub const NET_RULES: usize = 1_000;
/// File rules in the benchmark policy (on files the loops never open).
const FILE_RULES: usize = 16;

/// The benchmark policy: one agent, `NET_RULES` deny rules for addresses in 10.0.0.0/8 that the
/// loops never reach (the allowed path walks the rule layout and falls to the default, allow),
/// and `FILE_RULES` read-deny rules on files in `protected`, which the open loop never opens.
pub fn policy(protected: &Path) -> anyhow::Result<String> {
    let mut policy =
        format!("[[agent]]\nname = \"{AGENT}\"\n\n[agent.network]\ndefault = \"allow\"\n\n");
    for i in 0..NET_RULES {
        let _ = write!(
            policy,
            "[[agent.network.rule]]\nid = \"deny-{i}\"\naction = \"deny\"\ncidr = \"10.{}.{}.{}/32\"\nports = \"{}\"\nprotocol = \"tcp\"\n\n",
            i / 250,
            i % 250,
            1 + i % 7,
            1000 + i
        );
    }
    fs::create_dir_all(protected)?;
    policy.push_str("[agent.files]\nmode = \"enforce\"\n\n");
    for i in 0..FILE_RULES {
        let file = protected.join(format!("secret-{i}"));
        fs::write(&file, "not for agents")?;
        let _ = write!(
            policy,
            "[[agent.files.rule]]\nid = \"secret-{i}\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n\n",
            file.display()
        );
    }
    Ok(policy)
}

/// A loopback TCP server that accepts and closes, so that the connect loops never fill the
/// backlog.
fn start_listener() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // A deeper accept queue (the kernel caps it at net.core.somaxconn): on two busy cores this
    // thread can go unscheduled for milliseconds, and with a short queue the connects meanwhile
    // overflowed it (ListenOverflows in nstat); each dropped SYN cost its connect a one-second
    // retransmission.
    // SAFETY: listen(2) again on a listening socket only changes its backlog.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    Ok(addr)
}

pub fn parse_report(output: &std::process::Output, what: &str) -> anyhow::Result<WorkerReport> {
    if !output.status.success() {
        bail!(
            "{what} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .with_context(|| format!("{what} printed no report: {stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {what}'s report"))
}

/// Runs a worker untagged (a plain child) or tagged (through `agentd launch`).
fn run_worker(
    ctx: &Context,
    agentd: Option<&Agentd>,
    tagged: bool,
    args: &[String],
) -> anyhow::Result<WorkerReport> {
    let mut worker_args = vec!["worker".to_owned()];
    worker_args.extend_from_slice(args);
    let mut command = match (agentd, tagged) {
        (Some(agentd), true) => agentd.launch(&ctx.self_exe, &worker_args),
        (_, false) => {
            let mut command = Command::new(&ctx.self_exe);
            command.args(&worker_args);
            command
        }
        (None, true) => bail!("a tagged run needs agentd"),
    };
    let what = format!(
        "{} worker {}",
        if tagged { "tagged" } else { "untagged" },
        args.join(" ")
    );
    let output = command.output().with_context(|| what.clone())?;
    let report = parse_report(&output, &what)?;
    if report.other > 0 || report.eperm > 0 {
        bail!(
            "{what}: {} calls failed with EPERM and {} otherwise: the allowed path was not taken",
            report.eperm,
            report.other
        );
    }
    Ok(report)
}

/// One loop's results across rounds.
#[derive(Default)]
struct Series {
    merged: Option<Histogram<u64>>,
    rounds: Vec<WorkerReport>,
}

impl Series {
    fn add(&mut self, report: WorkerReport) -> anyhow::Result<()> {
        let histogram = report.histogram()?;
        self.merged
            .get_or_insert_with(new_histogram)
            .add(&histogram)
            .context("merging histograms")?;
        self.rounds.push(report);
        Ok(())
    }

    fn percentiles(&self) -> Percentiles {
        Percentiles::of(self.merged.as_ref().unwrap_or(&new_histogram()))
    }

    fn round_p50s(&self) -> Vec<u64> {
        self.rounds
            .iter()
            .map(|r| r.histogram().map_or(0, |h| h.value_at_quantile(0.5)))
            .collect()
    }

    fn round_rates(&self) -> Vec<f64> {
        self.rounds.iter().map(WorkerReport::rate).collect()
    }

    fn median_rate(&self) -> f64 {
        median(&self.round_rates())
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "merged": self.percentiles(),
            "per_round_p50_ns": self.round_p50s(),
            "per_round_calls_per_s": self.round_rates().iter().map(|r| r.round()).collect::<Vec<_>>(),
            "median_calls_per_s": self.median_rate().round(),
        })
    }
}

struct Loops {
    connect: String,
    open: PathBuf,
    connect_count: u64,
    open_count: u64,
}

impl Loops {
    fn connect_args(&self) -> Vec<String> {
        vec![
            "connect".into(),
            self.connect.clone(),
            "--count".into(),
            self.connect_count.to_string(),
        ]
    }

    fn open_args(&self) -> Vec<String> {
        vec![
            "open".into(),
            self.open.display().to_string(),
            "--count".into(),
            self.open_count.to_string(),
        ]
    }
}

#[derive(Default)]
struct Results {
    /// Without agentd (untagged: nothing else is possible).
    a_connect: Series,
    a_open: Series,
    /// With agentd.
    b_connect_tagged: Series,
    b_connect_untagged: Series,
    b_open_tagged: Series,
    b_open_untagged: Series,
}

/// Rows `connect`, `untagged`, `open` and `prog-cost` (those of them in `wanted`).
pub fn run(ctx: &Context, wanted: &[&str]) -> Vec<Row> {
    match measure(ctx, wanted) {
        Ok(rows) => rows,
        Err(err) => wanted
            .iter()
            .map(|id| Row::error(report::spec(id), &ctx.run, &err))
            .collect(),
    }
}

#[expect(clippy::too_many_lines, reason = "one row per arm, each a literal")]
fn measure(ctx: &Context, wanted: &[&str]) -> anyhow::Result<Vec<Row>> {
    let work = tempfile::tempdir()?;
    let policy = policy(&work.path().join("protected"))?;
    let open_target = work.path().join("bench-open.dat");
    fs::write(&open_target, vec![0u8; 4096])?;
    let loops = Loops {
        connect: start_listener()?.to_string(),
        open: open_target,
        connect_count: if ctx.smoke { 2_000 } else { 20_000 },
        open_count: if ctx.smoke { 20_000 } else { 200_000 },
    };
    let rounds = if ctx.smoke { 2 } else { 10 };
    let latency_rows = wanted.iter().any(|id| *id != "prog-cost");
    let mut results = Results::default();
    let mut file_monitoring = String::new();
    if latency_rows {
        for round in 0..rounds {
            eprintln!("bench: overhead round {}/{rounds}", round + 1);
            let b_first = round % 2 == 1;
            if b_first {
                file_monitoring = b_phase(ctx, &policy, &loops, &mut results)?;
                a_phase(ctx, &loops, &mut results)?;
            } else {
                a_phase(ctx, &loops, &mut results)?;
                file_monitoring = b_phase(ctx, &policy, &loops, &mut results)?;
            }
        }
    }
    let where_host = format!("host kernel {}", ctx.run.kernel);
    let mut rows = Vec::new();
    for id in wanted {
        let spec = report::spec(id);
        let row = match *id {
            "connect" => {
                let (a, b) = (
                    results.a_connect.percentiles(),
                    results.b_connect_tagged.percentiles(),
                );
                let (r50, r99) = (ratio(b.p50_ns, a.p50_ns), ratio(b.p99_ns, a.p99_ns));
                Row {
                    id: spec.id.into(),
                    name: spec.name.into(),
                    target: spec.target.into(),
                    result: format!(
                        "p50 {r50:.3} ({} → {}), p99 {r99:.3} ({} → {})",
                        human_ns(a.p50_ns),
                        human_ns(b.p50_ns),
                        human_ns(a.p99_ns),
                        human_ns(b.p99_ns)
                    ),
                    status: Status::from_target(r50 <= 1.05 && r99 <= 1.10),
                    ran_on: format!("{where_host}, cgroup connect4 hook"),
                    details: json!({
                        "rounds": rounds,
                        "connects_per_round": loops.connect_count,
                        "policy": format!("{NET_RULES} network rules + {FILE_RULES} file rules for the tagged agent"),
                        "ratio_p50": r50, "ratio_p99": r99,
                        "without_agentd": results.a_connect.json(),
                        "with_agentd_tagged": results.b_connect_tagged.json(),
                    }),
                    run: ctx.run.clone(),
                }
            }
            "untagged" => {
                let (a, b) = (
                    results.a_connect.percentiles(),
                    results.b_connect_untagged.percentiles(),
                );
                let connect = ratio(b.p50_ns, a.p50_ns);
                // Time per open: the inverse of the median throughput ratio.
                let open = results.a_open.median_rate() / results.b_open_untagged.median_rate();
                Row {
                    id: spec.id.into(),
                    name: spec.name.into(),
                    target: spec.target.into(),
                    result: format!(
                        "connect p50 {connect:.3} ({} → {}); open time per call {open:.3}",
                        human_ns(a.p50_ns),
                        human_ns(b.p50_ns),
                    ),
                    status: Status::from_target(connect <= 1.01 && open <= 1.01),
                    ran_on: format!("{where_host}, connect4 hook and open tracepoints"),
                    details: json!({
                        "rounds": rounds,
                        "connect_ratio_p50": connect,
                        "connect_ratio_p99": ratio(b.p99_ns, a.p99_ns),
                        "open_time_ratio": open,
                        "connect_without_agentd": results.a_connect.json(),
                        "connect_with_agentd": results.b_connect_untagged.json(),
                        "open_without_agentd": results.a_open.json(),
                        "open_with_agentd": results.b_open_untagged.json(),
                    }),
                    run: ctx.run.clone(),
                }
            }
            "open" => {
                let throughput = results.b_open_tagged.median_rate() / results.a_open.median_rate();
                Row {
                    id: spec.id.into(),
                    name: spec.name.into(),
                    target: spec.target.into(),
                    result: format!(
                        "throughput {throughput:.3} ({:.0} → {:.0} opens/s)",
                        results.a_open.median_rate(),
                        results.b_open_tagged.median_rate()
                    ),
                    status: Status::from_target(throughput >= 0.97),
                    ran_on: if file_monitoring == "lsm" {
                        format!(
                            "{where_host}, file monitoring: lsm (opens decided by lsm/file_open)"
                        )
                    } else {
                        format!(
                            "{where_host}, file monitoring: {file_monitoring} (BPF LSM programs are refused by this kernel; row open-lsm measures the LSM path in a guest)"
                        )
                    },
                    details: json!({
                        "rounds": rounds,
                        "opens_per_round": loops.open_count,
                        "throughput_ratio": throughput,
                        "without_agentd": results.a_open.json(),
                        "with_agentd_tagged": results.b_open_tagged.json(),
                    }),
                    run: ctx.run.clone(),
                }
            }
            "prog-cost" => match program_cost(ctx, &policy, &loops) {
                Ok(row) => row,
                Err(err) => Row::error(spec, &ctx.run, &err),
            },
            _ => continue,
        };
        rows.push(row);
    }
    Ok(rows)
}

fn a_phase(ctx: &Context, loops: &Loops, results: &mut Results) -> anyhow::Result<()> {
    results
        .a_connect
        .add(run_worker(ctx, None, false, &loops.connect_args())?)?;
    results
        .a_open
        .add(run_worker(ctx, None, false, &loops.open_args())?)?;
    Ok(())
}

/// Returns agentd's file monitoring mode (`lsm` or `tracepoints`).
fn b_phase(
    ctx: &Context,
    policy: &str,
    loops: &Loops,
    results: &mut Results,
) -> anyhow::Result<String> {
    let agentd = Agentd::start(&ctx.agentd, policy, "")?;
    let status = agentd.status()?;
    let tagged_connect = run_worker(ctx, Some(&agentd), true, &loops.connect_args())?;
    results.b_connect_tagged.add(tagged_connect)?;
    results.b_connect_untagged.add(run_worker(
        ctx,
        Some(&agentd),
        false,
        &loops.connect_args(),
    )?)?;
    results
        .b_open_tagged
        .add(run_worker(ctx, Some(&agentd), true, &loops.open_args())?)?;
    results
        .b_open_untagged
        .add(run_worker(ctx, Some(&agentd), false, &loops.open_args())?)?;
    Ok(status["file_monitoring"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned())
}

/// Name, `run_time_ns` and `run_cnt` of every program `agentd` has attached, by program id:
/// the ids its pinned links name (`agentd status`, `pins.links`), and any link descriptors it
/// still holds.
fn prog_stats(agentd: &Agentd) -> anyhow::Result<BTreeMap<u32, (String, u64, u64)>> {
    let mut ids = std::collections::BTreeSet::new();
    let reported = agentd.status()?;
    if let Some(links) = reported["pins"]["links"].as_array() {
        for link in links {
            if let Some(id) = link["program_id"]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
            {
                ids.insert(id);
            }
        }
    }
    for entry in fs::read_dir(format!("/proc/{}/fdinfo", agentd.pid()))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|line| line.strip_prefix("prog_id:"))
            .and_then(|rest| rest.trim().parse::<u32>().ok())
        {
            ids.insert(id);
        }
    }
    let programs: Vec<_> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| ids.contains(&program.id()))
        .collect();
    let mut stats = BTreeMap::new();
    for program in &programs {
        let name = program.name_as_str().unwrap_or("?");
        // Names are truncated to 15 bytes: observe_enter_openat and observe_enter_openat2 are
        // both `observe_enter_o`, told apart by their ids.
        let twins = programs
            .iter()
            .filter(|p| p.name_as_str() == Some(name))
            .count();
        {
            stats.insert(
                program.id(),
                (
                    if twins > 1 {
                        format!("{name}#{}", program.id())
                    } else {
                        name.to_owned()
                    },
                    u64::try_from(program.run_time().as_nanos())?,
                    program.run_count(),
                ),
            );
        }
    }
    Ok(stats)
}

/// Restores `kernel.bpf_stats_enabled` when dropped.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let previous = fs::read_to_string(BPF_STATS)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = fs::write(BPF_STATS, &self.previous) {
            eprintln!("bench: could not restore kernel.bpf_stats_enabled: {err}");
        }
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "nanoseconds per call as a float"
)]
#[expect(
    clippy::too_many_lines,
    reason = "one linear measurement and its report"
)]
fn program_cost(ctx: &Context, policy: &str, loops: &Loops) -> anyhow::Result<Row> {
    let spec = report::spec("prog-cost");
    let agentd = Agentd::start(&ctx.agentd, policy, "")?;
    // Snapshots between the loops, so that each program's cost is known per workload (a
    // tagged connect walks the rules and sends an event; an untagged one looks up the tag).
    let phases: [(&str, bool, Vec<String>); 4] = [
        ("tagged connect", true, loops.connect_args()),
        ("untagged connect", false, loops.connect_args()),
        ("tagged open", true, loops.open_args()),
        ("untagged open", false, loops.open_args()),
    ];
    let mut snapshots = Vec::new();
    {
        let _stats = BpfStats::enable()?;
        snapshots.push(prog_stats(&agentd)?);
        for (_, tagged, args) in &phases {
            run_worker(ctx, Some(&agentd), *tagged, args)?;
            snapshots.push(prog_stats(&agentd)?);
        }
    }
    let restored = fs::read_to_string(BPF_STATS).unwrap_or_default();
    // ns per invocation of each program between two snapshots.
    let cost = |before: &BTreeMap<u32, (String, u64, u64)>,
                after: &BTreeMap<u32, (String, u64, u64)>| {
        let mut costs = BTreeMap::new();
        for (id, (name, time, count)) in after {
            let (time0, count0) = before.get(id).map_or((0, 0), |(_, t, c)| (*t, *c));
            let calls = count - count0;
            if calls > 0 {
                costs.insert(name.clone(), ((time - time0) as f64 / calls as f64, calls));
            }
        }
        costs
    };
    let mut per_phase = serde_json::Map::new();
    for (at, (phase, _, _)) in phases.iter().enumerate() {
        let costs = cost(&snapshots[at], &snapshots[at + 1]);
        per_phase.insert(
            (*phase).to_owned(),
            costs
                .iter()
                .map(|(name, (ns, calls))| {
                    (
                        name.clone(),
                        json!({"ns_per_invocation": (ns * 10.0).round() / 10.0, "invocations": calls}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }
    let overall = cost(&snapshots[0], &snapshots[phases.len()]);
    let tagged_connect = cost(&snapshots[0], &snapshots[1]);
    let untagged_connect = cost(&snapshots[1], &snapshots[2]);
    let tagged_open = cost(&snapshots[2], &snapshots[3]);
    let untagged_open = cost(&snapshots[3], &snapshots[4]);
    let mut per_program = serde_json::Map::new();
    let mut costs = BTreeMap::new();
    for (name, (ns, calls)) in &overall {
        costs.insert(name.clone(), *ns);
        per_program.insert(
            name.clone(),
            json!({"invocations": calls, "ns_per_invocation": (ns * 10.0).round() / 10.0}),
        );
    }
    // The target is judged on the tagged path, the one that does the work.
    if let Some((ns, _)) = tagged_connect.get("connect4") {
        costs.insert("connect4".to_owned(), *ns);
    }
    if let Some((ns, _)) = tagged_open.get("file_open") {
        costs.insert("file_open".to_owned(), *ns);
    }
    let untagged_file_open = untagged_open.get("file_open").map(|(ns, _)| *ns);
    let untagged_connect4 = untagged_connect.get("connect4").map(|(ns, _)| *ns);
    let connect4 = costs.get("connect4").copied();
    let file_open = costs.get("file_open").copied();
    let mut result = match connect4 {
        Some(ns) => format!(
            "connect4 {ns:.0} ns tagged ({} untagged)",
            untagged_connect4.map_or_else(|| "?".to_owned(), |u| format!("{u:.0} ns"))
        ),
        None => "connect4 not invoked".to_owned(),
    };
    match file_open {
        Some(ns) => {
            let _ = write!(
                result,
                ", file_open {ns:.0} ns tagged ({} untagged)",
                untagged_file_open.map_or_else(|| "?".to_owned(), |u| format!("{u:.0} ns"))
            );
        }
        None => result.push_str(", file_open not loaded (no BPF LSM here; see prog-cost-lsm)"),
    }
    for (name, ns) in &costs {
        if name != "connect4" && name != "file_open" {
            let _ = write!(result, ", {name} {ns:.0} ns");
        }
    }
    let met = connect4.is_some_and(|ns| ns <= 100.0) && file_open.is_none_or(|ns| ns <= 150.0);
    let status = if connect4.is_none() {
        Status::Error("connect4 was not invoked".to_owned())
    } else {
        Status::from_target(met)
    };
    Ok(Row {
        id: spec.id.into(),
        name: spec.name.into(),
        target: spec.target.into(),
        result,
        status,
        ran_on: format!(
            "host kernel {}, kernel.bpf_stats_enabled=1 for this measurement only (restored to {})",
            ctx.run.kernel,
            restored.trim()
        ),
        details: json!({
            "workload": "one tagged and one untagged connect loop, one tagged and one untagged open loop",
            "programs_over_all_loops": per_program,
            "programs_per_loop": per_phase,
            "names": "kernel program names are truncated to 15 bytes (observe_enter_o = observe_enter_openat)",
            "file_open": if file_open.is_some() {
                "judged on the tagged open loop, as connect4 on the tagged connect loop"
            } else {
                "not loaded: this kernel refuses BPF LSM programs (row prog-cost-lsm measures it in a guest)"
            },
        }),
        run: ctx.run.clone(),
    })
}
