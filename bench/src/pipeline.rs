//! Row 5: the event pipeline. Tagged processes make denied UDP connects (one `net` event each)
//! at a controlled total rate; agentd's `status` counts what the kernel produced and what
//! userspace delivered. The rate steps up until delivered ÷ produced falls below 0.999 or the
//! load generator cannot reach the asked rate; the highest good step is then held for 60 s.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{
    Context,
    daemon::{AGENT, Agentd, ticks_per_second},
    report::{self, Row, Status},
    worker::WorkerReport,
};

/// Generator processes: one per core.
fn generators() -> u64 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u64)
}

#[derive(Debug, serde::Serialize)]
struct Step {
    asked_per_s: u64,
    secs: f64,
    produced: u64,
    delivered: u64,
    dropped: u64,
    produced_per_s: f64,
    delivered_ratio: f64,
    agentd_cores: f64,
    agentd_cores_per_100k: f64,
}

fn counter(status: &serde_json::Value, key: &str) -> anyhow::Result<u64> {
    status[key]
        .as_u64()
        .with_context(|| format!("agentd status has no {key}"))
}

#[expect(clippy::cast_precision_loss, reason = "rates as floats")]
fn step(ctx: &Context, agentd: &Agentd, rate: u64, secs: u64) -> anyhow::Result<Step> {
    let before = agentd.status()?;
    let ticks0 = agentd.cpu_ticks()?;
    let start = Instant::now();
    let per = rate / generators();
    let children: Vec<Child> = (0..generators())
        .map(|_| {
            agentd
                .launch(
                    &ctx.self_exe,
                    &[
                        "worker".into(),
                        "udp-connect".into(),
                        "127.0.0.1:9".into(),
                        "--rate".into(),
                        per.to_string(),
                        "--secs".into(),
                        secs.to_string(),
                    ],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting a generator")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut eperm = 0;
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("generator failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: WorkerReport = serde_json::from_str(
            stdout
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .context("generator report")?,
        )?;
        eperm += report.eperm;
    }
    // Let the reader drain: until everything produced is accounted for (delivered,
    // undecodable or dropped), at most 5 s.
    let mut last = agentd.status()?;
    for _ in 0..50 {
        let accounted = counter(&last, "events_delivered")?
            + counter(&last, "events_dropped")?
            + counter(&last, "events_undecodable")?;
        if accounted >= counter(&last, "events_produced")? {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = agentd.status()?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ticks = agentd.cpu_ticks()? - ticks0;
    let produced = counter(&last, "events_produced")? - counter(&before, "events_produced")?;
    let delivered = counter(&last, "events_delivered")? - counter(&before, "events_delivered")?;
    let dropped = counter(&last, "events_dropped")? - counter(&before, "events_dropped")?;
    if eperm == 0 {
        bail!("no connect was denied: the generators were not tagged");
    }
    // The load ran for `secs`. CPU per event counts every tick agentd used from the first
    // event to the end of the drain.
    let load_secs = secs as f64;
    let cpu_secs = ticks as f64 / ticks_per_second() as f64;
    let cores = cpu_secs / load_secs;
    let produced_per_s = produced as f64 / load_secs;
    let step = Step {
        asked_per_s: rate,
        secs: elapsed,
        produced,
        delivered,
        dropped,
        produced_per_s,
        delivered_ratio: delivered as f64 / produced.max(1) as f64,
        agentd_cores: cores,
        agentd_cores_per_100k: cpu_secs * 100_000.0 / (produced.max(1) as f64),
    };
    eprintln!("bench: pipeline step {step:?}");
    Ok(step)
}

pub fn run(ctx: &Context) -> Row {
    let spec = report::spec("pipeline");
    match measure(ctx) {
        Ok(row) => row,
        Err(err) => Row::error(spec, &ctx.run, &err),
    }
}

fn measure(ctx: &Context) -> anyhow::Result<Row> {
    let spec = report::spec("pipeline");
    let policy = format!("[[agent]]\nname = \"{AGENT}\"\n\n[agent.network]\ndefault = \"deny\"\n");
    // Denials would raise denied_burst; keep the agent's network as it is whatever its risk.
    let agentd = Agentd::start(
        &ctx.agentd,
        &policy,
        "[risk.remediation]\nquarantine = false\n",
    )?;
    let (rates, search_secs, hold_secs): (&[u64], u64, u64) = if ctx.smoke {
        (&[10_000, 20_000], 2, 3)
    } else {
        (
            &[
                25_000, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000,
            ],
            10,
            60,
        )
    };
    let mut steps = Vec::new();
    let mut best: Option<u64> = None;
    let mut generator_limit = false;
    for &rate in rates {
        let s = step(ctx, &agentd, rate, search_secs)?;
        #[expect(clippy::cast_precision_loss, reason = "rate comparison")]
        let reached = s.produced_per_s >= 0.95 * rate as f64;
        let good = s.delivered_ratio >= 0.999;
        steps.push(s);
        if !reached {
            generator_limit = true;
        }
        if good && reached {
            best = Some(rate);
        }
        if !good || !reached {
            break;
        }
    }
    // Hold the best step (or the highest the generators reached) for the full time.
    let hold_rate = best.unwrap_or(rates[0]);
    let hold = step(ctx, &agentd, hold_rate, hold_secs)?;
    let met = hold.delivered_ratio >= 0.999
        && hold.produced_per_s >= 200_000.0
        && hold.agentd_cores_per_100k <= 0.15;
    let mut result = format!(
        "{:.0} events/s held {hold_secs} s at delivered/produced {:.4}; agentd {:.3} core per 100k events/s",
        hold.produced_per_s, hold.delivered_ratio, hold.agentd_cores_per_100k
    );
    if generator_limit {
        result.push_str(
            " (load generator limit: a higher rate could not be produced on this machine)",
        );
    }
    Ok(Row {
        id: spec.id.into(),
        name: spec.name.into(),
        target: spec.target.into(),
        result,
        status: Status::from_target(met),
        ran_on: format!(
            "host kernel {}, {} generator processes (denied UDP connects, connect4) sharing the cores with agentd; events written as JSON to a file",
            ctx.run.kernel,
            generators()
        ),
        details: json!({
            "search_steps": steps,
            "hold": hold,
            "generator_limit": generator_limit,
        }),
        run: ctx.run.clone(),
    })
}
