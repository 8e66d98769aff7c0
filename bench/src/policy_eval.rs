//! Row 6: Conditional Access policy evaluation. Criterion runs one agent's effective decision
//! over 1,000 generated policies (`policy_set`), cycling through 8 agents of different
//! blueprints, teams and risk levels on one production host; its own statistics (mean and
//! median per evaluation with confidence intervals) come from `estimates.json`. Criterion
//! reports means of batches, which hide the tail, so the routine also times every single
//! evaluation after criterion's warm-up and records it in an HDR histogram: the p50 and p99
//! in the table come from there.

use std::{
    cell::RefCell,
    hint::black_box,
    path::Path,
    time::{Duration, Instant},
};

use agentd_bench::policy_set::Fixture;
use anyhow::Context as _;
use criterion::Criterion;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::{
    Context,
    report::{self, Percentiles, Row, Status, human_ns},
    worker::new_histogram,
};

const POLICIES: usize = 1_000;
const AGENTS: usize = 8;
const TARGET_P99_NS: u64 = 50_000;
const BENCH_ID: &str = "policy-eval";

pub fn run(ctx: &Context) -> Row {
    measure(ctx).unwrap_or_else(|err| Row::error(report::spec(BENCH_ID), &ctx.run, &err))
}

/// Criterion's estimate of one statistic, in nanoseconds.
fn estimate(estimates: &serde_json::Value, name: &str) -> serde_json::Value {
    let e = &estimates[name];
    json!({
        "point_ns": e["point_estimate"].as_f64().map(f64::round),
        "ci95_ns": [
            e["confidence_interval"]["lower_bound"].as_f64().map(f64::round),
            e["confidence_interval"]["upper_bound"].as_f64().map(f64::round),
        ],
    })
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts and times reported as floats"
)]
fn measure(ctx: &Context) -> anyhow::Result<Row> {
    let spec = report::spec(BENCH_ID);
    let fixture = Fixture::new(POLICIES, AGENTS);
    let applying: Vec<usize> = (0..AGENTS)
        .map(|n| {
            let decision = fixture.decide(n);
            decision.policy_ids.len() + decision.report_only_policy_ids.len()
        })
        .collect();
    let (warm_up, measurement, samples) = if ctx.smoke {
        (Duration::from_millis(300), Duration::from_secs(1), 10)
    } else {
        (Duration::from_secs(3), Duration::from_secs(15), 100)
    };
    let out = tempfile::tempdir()?;
    let histogram: RefCell<Histogram<u64>> = RefCell::new(new_histogram());
    let mut first_call: Option<Instant> = None;
    let mut n = 0usize;
    let mut criterion = Criterion::default()
        .output_directory(out.path())
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .sample_size(samples)
        .without_plots()
        .with_output_color(false);
    criterion.bench_function(BENCH_ID, |b| {
        b.iter_custom(|iters| {
            // Criterion's warm-up calls this routine too: record only after it.
            let started = *first_call.get_or_insert_with(Instant::now);
            let record = started.elapsed() >= warm_up;
            let mut histogram = histogram.borrow_mut();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n = n.wrapping_add(1);
                let t = Instant::now();
                black_box(fixture.decide(black_box(n)));
                let took = t.elapsed();
                total += took;
                if record {
                    histogram.saturating_record(
                        u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1),
                    );
                }
            }
            total
        });
    });
    let estimates = read_estimates(out.path())?;
    let histogram = histogram.into_inner();
    let p = Percentiles::of(&histogram);
    anyhow::ensure!(p.count > 0, "no evaluation was recorded after the warm-up");
    let mean = estimates["mean"]["point_estimate"]
        .as_f64()
        .unwrap_or(f64::NAN);
    Ok(Row {
        id: spec.id.into(),
        name: spec.name.into(),
        target: spec.target.into(),
        result: format!(
            "p50 {}, p99 {}, max {} over {} evaluations (criterion mean {})",
            human_ns(p.p50_ns),
            human_ns(p.p99_ns),
            human_ns(p.max_ns),
            p.count,
            human_ns(
                Duration::try_from_secs_f64(mean / 1e9)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            )
        ),
        status: Status::from_target(p.p99_ns <= TARGET_P99_NS),
        ran_on: "host, in the agentd-bench process (unpinned); the evaluator of agentd-control, release build".to_owned(),
        details: json!({
            "policies": POLICIES,
            "agents": AGENTS,
            "policies_applying_per_agent": applying,
            "host_labels": "env=prod, region=r1",
            "criterion": {
                "warm_up_secs": warm_up.as_secs_f64(),
                "measurement_secs": measurement.as_secs_f64(),
                "samples": samples,
                "mean": estimate(&estimates, "mean"),
                "median": estimate(&estimates, "median"),
                "std_dev": estimate(&estimates, "std_dev"),
            },
            "every_evaluation": p,
            "mean_of_recorded_ns": (histogram.mean()).round(),
            "recorded_fraction": p.count as f64 / n.max(1) as f64,
        }),
        run: ctx.run.clone(),
    })
}

fn read_estimates(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let path = dir.join(BENCH_ID).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("criterion wrote no {}", path.display()))?;
    serde_json::from_str(&text).context("parsing criterion's estimates.json")
}
