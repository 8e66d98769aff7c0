//! SVID issuance through the control plane: `agentd-control serve` (SQLite, plaintext loopback,
//! pinned to CPU 1 as in the control-plane row) and simulated hosts, each with one registered,
//! enabled agent it reports running, every host rotating its agent's X.509-SVID every 5 s
//! (±10%) over its own connection: 1,000 hosts make 200 signings a second, each through the
//! full Conditional Access gate (lifecycle, the host's report, its current decision) and the
//! audit write. The p99 of `SignAgentSvid` is measured after a warm-up.

use std::time::{Duration, Instant};

use agentd_control::proto;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::{
    Context,
    control::{HostClient, Server, enrol, jitter, run_pinned},
    registry::Admin,
    report::{self, Percentiles, Row, Status, human_ns},
    worker::new_histogram,
};

const INTERVAL: Duration = Duration::from_secs(5);
const TARGET_P99: Duration = Duration::from_millis(10);

pub fn run(ctx: &Context) -> Row {
    run_pinned(ctx, "svid-issuance", measure(ctx))
}

/// A PKCS#10 CSR for a fresh P-256 key (the control plane signs its key whatever it asks).
fn csr() -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate()?;
    let request = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok(request.pem()?)
}

/// One simulated host with its agent, enrolled, enabled and reported running.
struct Rotating {
    client: HostClient,
    agent_id: String,
    csr_pem: String,
}

async fn prepare(server: &Server, count: usize) -> anyhow::Result<Vec<Rotating>> {
    let admin = Admin::connect(server).await?;
    let mut hosts = Vec::with_capacity(count);
    for start in (0..count).step_by(16) {
        let mut tasks = tokio::task::JoinSet::new();
        for n in start..count.min(start + 16) {
            let mut admin = admin.clone();
            let endpoint = server.endpoint.clone();
            tasks.spawn(async move {
                let agent_id = admin.enabled_agent(&format!("bench-agent-{n}")).await?;
                let (_, mut client) = enrol(&mut admin.host, &endpoint, n).await?;
                client
                    .report_agents(proto::ReportAgentsRequest {
                        agent_ids: vec![agent_id.clone()],
                    })
                    .await?;
                anyhow::Ok((
                    n,
                    Rotating {
                        client,
                        agent_id,
                        csr_pem: csr()?,
                    },
                ))
            });
        }
        let mut added = Vec::new();
        while let Some(done) = tasks.join_next().await {
            added.push(done??);
        }
        added.sort_by_key(|(n, _)| *n);
        hosts.extend(added.into_iter().map(|(_, host)| host));
    }
    Ok(hosts)
}

/// One host's rotations from `start` until `end`, timed from `measure_from`: the latencies and
/// the refusals.
async fn rotate(
    host: Rotating,
    (start, measure_from, end): (Instant, Instant, Instant),
    seed: u64,
) -> (Histogram<u64>, Vec<String>) {
    let Rotating {
        mut client,
        agent_id,
        csr_pem,
    } = host;
    let mut histogram = new_histogram();
    let mut errors = Vec::new();
    let mut next = start + INTERVAL.mul_f64(jitter(seed));
    let mut round = 0u64;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let sent = Instant::now();
        let answer = client
            .sign_agent_svid(proto::SignAgentSvidRequest {
                agent_id: agent_id.clone(),
                csr_pem: csr_pem.clone(),
            })
            .await;
        let took = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match answer {
            Ok(_) if sent >= measure_from => histogram.saturating_record(took.max(1)),
            Ok(_) => {}
            Err(status) => errors.push(status.message().to_owned()),
        }
        round += 1;
        next += INTERVAL.mul_f64(0.9 + 0.2 * jitter(seed ^ round << 20));
    }
    (histogram, errors)
}

async fn measure(ctx: &Context) -> anyhow::Result<Row> {
    let spec = report::spec("svid-issuance");
    let (count, measure_secs, warmup_secs): (usize, u64, u64) = if ctx.smoke {
        (20, 10, 5)
    } else {
        (1_000, 30, 10)
    };
    let server = Server::start(ctx)?;
    let prepared_at = Instant::now();
    let hosts = prepare(&server, count).await?;
    let prepare_secs = prepared_at.elapsed().as_secs_f64();
    eprintln!("bench: svid issuance: {count} hosts ready; measuring {measure_secs} s");

    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs(warmup_secs);
    let end = measure_from + Duration::from_secs(measure_secs);
    let mut tasks = tokio::task::JoinSet::new();
    for (n, host) in hosts.into_iter().enumerate() {
        let seed = n as u64 | 1 << 40;
        tasks.spawn(rotate(host, (start, measure_from, end), seed));
    }
    let mut merged: Histogram<u64> = new_histogram();
    let mut errors = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (histogram, failed) = done?;
        merged.add(&histogram).context("merging histograms")?;
        errors.extend(failed);
    }
    let p = Percentiles::of(&merged);
    if let Some(first) = errors.first() {
        anyhow::bail!("{} signings failed, the first: {first}", errors.len());
    }
    anyhow::ensure!(p.count > 0, "no signing was measured");
    let met = p.p99_ns <= u64::try_from(TARGET_P99.as_nanos())?;
    #[expect(clippy::cast_precision_loss, reason = "a rate for the report")]
    let rate = p.count as f64 / measure_secs as f64;
    Ok(Row {
        id: spec.id.into(),
        name: spec.name.into(),
        target: spec.target.into(),
        result: format!(
            "{count} hosts rotating ({rate:.0} signings/s): p50 {}, p99 {}, max {}",
            human_ns(p.p50_ns),
            human_ns(p.p99_ns),
            human_ns(p.max_ns)
        ),
        status: Status::from_target(met && count >= 1_000),
        ran_on: format!(
            "host; agentd-control with SQLite, plaintext gRPC on loopback, {}; simulated hosts \
             on {}",
            if server.pinned {
                "pinned to CPU 1"
            } else {
                "unpinned (one core)"
            },
            if server.pinned {
                "CPU 0"
            } else {
                "the same core"
            }
        ),
        details: json!({
            "hosts": count,
            "interval_secs": INTERVAL.as_secs(),
            "jitter": "±10%",
            "warmup_secs": warmup_secs,
            "measure_secs": measure_secs,
            "prepare_secs": (prepare_secs * 10.0).round() / 10.0,
            "signings": p.count,
            "latency": p,
        }),
        run: ctx.run.clone(),
    })
}
