//! Row 8: control-plane scale. `agentd-control serve` runs pinned to one CPU (SQLite, plaintext
//! loopback); this process, pinned to another, simulates hosts: each is enrolled with its own
//! single-use join token, holds its own connection, and calls Heartbeat every 5 s with ±10%
//! jitter. For each host count the p99 of Heartbeat latency is measured after a warm-up.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agentd_control::proto::{
    EnrollHostRequest, HeartbeatRequest, host_service_client::HostServiceClient,
};
use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde_json::json;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{
    Context,
    report::{self, Percentiles, Row, Status, human_ns},
    worker::new_histogram,
};

const INTERVAL: Duration = Duration::from_secs(5);
const TARGET_P99: Duration = Duration::from_millis(50);

/// `agentd-control serve` on a fresh SQLite database in a temporary directory (its log
/// beside it), plaintext gRPC on a free loopback port, pinned by `taskset` to CPU 1 when there
/// are two cores or more. Stopped when dropped: its graceful shutdown waits for the simulated
/// hosts' connections, which live on the runtime that is dropping it, so SIGKILL, then wait.
pub struct Server {
    child: Child,
    /// An admin's API token, made with `create-token` before the server started.
    pub admin_token: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub endpoint: Endpoint,
    /// Whether the server runs pinned to CPU 1.
    pub pinned: bool,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(ctx: &Context) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let database = format!("sqlite://{}/control.db", dir.path().display());
        let out = Command::new(&ctx.control)
            .args(["--database", &database, "create-token", "--name", "bench"])
            .args(["--role", "admin", "--principal", "bench@localhost"])
            .stderr(Stdio::null())
            .output()
            .context("agentd-control create-token")?;
        anyhow::ensure!(out.status.success(), "agentd-control create-token failed");
        let admin_token = String::from_utf8(out.stdout)?.trim().to_owned();
        let port = free_port()?;
        let pinned = ctx.run.cores >= 2;
        let mut command = if pinned {
            let mut command = Command::new("taskset");
            command.args(["-c", "1"]).arg(&ctx.control);
            command
        } else {
            Command::new(&ctx.control)
        };
        command
            .args(["--database", &database, "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--sweep-interval", "1h"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("control.log"))?);
        let child = command.spawn().context("starting agentd-control serve")?;
        let url = format!("http://127.0.0.1:{port}");
        let endpoint = Endpoint::from_shared(url.clone())?;
        Ok(Self {
            child,
            admin_token,
            url,
            endpoint,
            pinned,
            _dir: dir,
        })
    }

    /// A connection, once the server listens (it has 30 s).
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.endpoint.connect().await {
                Ok(channel) => return Ok(channel),
                Err(err) if Instant::now() > deadline => {
                    bail!("agentd-control did not listen: {err}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pins the calling thread to `cpu`, returning the previous mask.
pub fn pin_thread(cpu: usize) -> anyhow::Result<libc::cpu_set_t> {
    // SAFETY: plain sched_{get,set}affinity on the calling thread with valid masks.
    unsafe {
        let mut previous: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut previous) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        Ok(previous)
    }
}

pub fn restore_affinity(mask: &libc::cpu_set_t) {
    // SAFETY: restoring a mask read by sched_getaffinity.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), mask) };
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn run(ctx: &Context) -> Row {
    run_pinned(ctx, "control-plane", measure(ctx))
}

/// Row `id` measured by `measure` on a current-thread runtime, this thread pinned to CPU 0
/// (the server runs on CPU 1) where there are two cores or more; an error becomes the row's.
pub fn run_pinned(
    ctx: &Context,
    id: &str,
    measure: impl Future<Output = anyhow::Result<Row>>,
) -> Row {
    let previous = if ctx.run.cores >= 2 {
        pin_thread(0).ok()
    } else {
        None
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(measure));
    if let Some(mask) = previous {
        restore_affinity(&mask);
    }
    result.unwrap_or_else(|err| Row::error(report::spec(id), &ctx.run, &err))
}

/// A small deterministic generator for start offsets and jitter (no `rand` needed).
pub fn jitter(seed: u64) -> f64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    #[expect(clippy::cast_precision_loss, reason = "a uniform float from 53 bits")]
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
    unit
}

/// A simulated host's client: its own connection, its host token.
pub type HostClient =
    HostServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

struct Host {
    client: HostClient,
}

/// Enrols simulated host `n` with its own single-use join token and connection. Returns its id
/// and client.
pub async fn enrol(
    admin: &mut HostClient,
    endpoint: &Endpoint,
    n: usize,
) -> anyhow::Result<(String, HostClient)> {
    let join = admin
        .create_join_token(agentd_control::proto::CreateJoinTokenRequest {
            ttl_seconds: 3600,
            description: format!("bench host {n}"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .token;
    let channel = endpoint.connect().await?;
    let enrolled = HostServiceClient::new(channel.clone())
        .enroll_host(EnrollHostRequest {
            join_token: join,
            hostname: format!("bench-host-{n}"),
            csr_pem: String::new(),
            agentd_version: "bench".into(),
        })
        .await?
        .into_inner();
    let client = HostServiceClient::with_interceptor(channel, bearer(&enrolled.host_token)?);
    Ok((enrolled.host_id, client))
}

#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub fn bearer(token: &str) -> anyhow::Result<Bearer> {
    Ok(Bearer(format!("Bearer {token}").parse()?))
}

#[expect(clippy::too_many_lines, reason = "one linear procedure")]
async fn measure(ctx: &Context) -> anyhow::Result<Row> {
    let spec = report::spec("control-plane");
    let server = Server::start(ctx)?;
    let endpoint = server.endpoint.clone();
    let admin =
        HostServiceClient::with_interceptor(server.connect().await?, bearer(&server.admin_token)?);

    let (counts, measure_secs, warmup_secs): (&[usize], u64, u64) = if ctx.smoke {
        (&[50], 10, 5)
    } else {
        (&[250, 500, 1_000, 1_250, 2_000], 30, 5)
    };
    let mut hosts: Vec<Host> = Vec::new();
    let mut steps = Vec::new();
    let mut best = 0usize;
    for &count in counts {
        // Enrol the hosts this step adds, 16 at a time.
        let enrol_start = Instant::now();
        while hosts.len() < count {
            let batch: Vec<usize> = (hosts.len()..count.min(hosts.len() + 16)).collect();
            let mut tasks = tokio::task::JoinSet::new();
            for n in batch {
                let mut admin = admin.clone();
                let endpoint = endpoint.clone();
                tasks.spawn(async move {
                    let (_, client) = enrol(&mut admin, &endpoint, n).await?;
                    anyhow::Ok((n, Host { client }))
                });
            }
            let mut added: Vec<(usize, Host)> = Vec::new();
            while let Some(done) = tasks.join_next().await {
                added.push(done??);
            }
            added.sort_by_key(|(n, _)| *n);
            hosts.extend(added.into_iter().map(|(_, host)| host));
        }
        let enrol_secs = enrol_start.elapsed().as_secs_f64();
        eprintln!("bench: control plane: {count} hosts enrolled; measuring {measure_secs} s");

        let start = Instant::now() + Duration::from_millis(100);
        let measure_from = start + Duration::from_secs(warmup_secs);
        let end = measure_from + Duration::from_secs(measure_secs);
        let mut tasks = tokio::task::JoinSet::new();
        for (n, host) in hosts.iter().enumerate() {
            let mut client = host.client.clone();
            let seed = (count as u64) << 32 | n as u64;
            tasks.spawn(async move {
                // As agentd does: name the trust bundle held, so that answers do not carry it.
                let bundle = client
                    .heartbeat(HeartbeatRequest {
                        agentd_version: "bench".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|answer| answer.into_inner().ca_bundle_pem)
                    .unwrap_or_default();
                let ca_bundle_sha256 =
                    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bundle.as_bytes()));
                let mut histogram = new_histogram();
                let mut errors = 0u64;
                let mut next = start + INTERVAL.mul_f64(jitter(seed));
                let mut beats = 0u64;
                loop {
                    tokio::time::sleep_until(next.into()).await;
                    if next >= end {
                        break;
                    }
                    let sent = Instant::now();
                    let ok = client
                        .heartbeat(HeartbeatRequest {
                            agentd_version: "bench".into(),
                            ca_bundle_sha256: ca_bundle_sha256.clone(),
                        })
                        .await
                        .is_ok();
                    let took = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    if sent >= measure_from {
                        if ok {
                            histogram.saturating_record(took.max(1));
                        } else {
                            errors += 1;
                        }
                    }
                    beats += 1;
                    // Every 5 s ± 10%.
                    next += INTERVAL.mul_f64(0.9 + 0.2 * jitter(seed ^ beats << 20));
                }
                (histogram, errors)
            });
        }
        let mut merged: Histogram<u64> = new_histogram();
        let mut errors = 0;
        while let Some(done) = tasks.join_next().await {
            let (histogram, failed) = done?;
            merged.add(&histogram).context("merging histograms")?;
            errors += failed;
        }
        let p = Percentiles::of(&merged);
        let good = p.count > 0 && errors == 0 && p.p99_ns <= u64::try_from(TARGET_P99.as_nanos())?;
        if good {
            best = best.max(count);
        }
        eprintln!(
            "bench: control plane: {count} hosts: p50 {} p99 {} errors {errors}",
            human_ns(p.p50_ns),
            human_ns(p.p99_ns)
        );
        steps.push(json!({
            "hosts": count,
            "heartbeats": p.count,
            "errors": errors,
            "latency": p,
            "p99_within_target": good,
            "enrol_secs": (enrol_secs * 10.0).round() / 10.0,
        }));
    }
    let summary = steps
        .iter()
        .map(|s| {
            format!(
                "{}: p99 {}",
                s["hosts"],
                human_ns(s["latency"]["p99_ns"].as_u64().unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let highest = *counts.last().unwrap_or(&0);
    let result = if best == 0 {
        format!("no host count within 50 ms ({summary})")
    } else if best == highest {
        format!("≥ {best} hosts within 50 ms, the most tried ({summary})")
    } else {
        format!("{best} hosts within 50 ms ({summary})")
    };
    Ok(Row {
        id: spec.id.into(),
        name: spec.name.into(),
        target: spec.target.into(),
        result,
        status: Status::from_target(best >= 1_250),
        ran_on: format!(
            "host; agentd-control {} with SQLite, plaintext gRPC on loopback; simulated hosts on {}",
            if ctx.run.cores >= 2 {
                "pinned to CPU 1"
            } else {
                "unpinned (one core)"
            },
            if ctx.run.cores >= 2 {
                "CPU 0"
            } else {
                "the same core"
            }
        ),
        details: json!({
            "interval_secs": INTERVAL.as_secs(),
            "jitter": "±10%",
            "warmup_secs": warmup_secs,
            "measure_secs": measure_secs,
            "steps": steps,
        }),
        run: ctx.run.clone(),
    })
}
