//! SVIDs served from the host cache: a real agentd enrolled with `agentd-control serve`
//! (plaintext loopback), one registered, enabled agent, and a tagged process of it that fetches
//! its X.509-SVID through agentd's SPIFFE Workload API with the `spiffe` crate's client (a
//! client no one here wrote) over one connection. The first fetch has the control plane sign;
//! every later one is answered from agentd's cache after the caller is identified by its
//! kernel tag. The p99 of a fetch is the row.

use std::{path::Path, process::Stdio, time::Duration};

use agentd_control::proto;
use anyhow::Context as _;
use serde_json::json;

use crate::{
    Context,
    control::Server,
    daemon::{AGENT, Agentd},
    overhead::parse_report,
    registry::Admin,
    report::{self, Percentiles, Row, Status, human_ns},
    worker::{WorkerReport, timed_loop},
};

const TARGET_P99: Duration = Duration::from_micros(200);

pub fn run(ctx: &Context) -> Row {
    measure(ctx).unwrap_or_else(|err| Row::error(report::spec("svid-cache"), &ctx.run, &err))
}

/// The worker: COUNT timed `FetchX509SVID` calls on one connection to `endpoint`, after
/// `warmup` untimed ones.
pub fn fetch(endpoint: &str, count: u64, warmup: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = runtime
        .block_on(spiffe::WorkloadApiClient::connect_to(endpoint))
        .context("connecting to the Workload API")?;
    let mut said = false;
    timed_loop(count, warmup, || {
        runtime
            .block_on(client.fetch_x509_svid())
            .map(drop)
            .map_err(|err| {
                // The first refusal says why (the orchestrator shows it if none succeeds).
                if !said {
                    eprintln!("fetch: {err}");
                    said = true;
                }
                std::io::Error::other(err)
            })
    })
}

/// The agent in the registry, enabled; a join token for the host.
async fn register(server: &Server) -> anyhow::Result<String> {
    let mut admin = Admin::connect(server).await?;
    admin.enabled_agent(AGENT).await?;
    Ok(admin
        .host
        .create_join_token(proto::CreateJoinTokenRequest {
            ttl_seconds: 3600,
            description: "bench svid cache".into(),
            ..Default::default()
        })
        .await
        .context("CreateJoinToken")?
        .into_inner()
        .token)
}

/// The first fetch until the control plane signs, then `count` timed ones from the cache.
fn fetches(
    ctx: &Context,
    agentd: &Agentd,
    endpoint: &str,
    count: u64,
    warmup: u64,
) -> anyhow::Result<(WorkerReport, Percentiles)> {
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    let args = |count: u64, warmup: u64| {
        vec![
            "worker".to_owned(),
            "svid-fetch".to_owned(),
            endpoint.to_owned(),
            "--count".to_owned(),
            count.to_string(),
            "--warmup".to_owned(),
            warmup.to_string(),
        ]
    };
    loop {
        let output = agentd
            .launch(&ctx.self_exe, &args(1, 0))
            .stderr(Stdio::piped())
            .output()?;
        let first = parse_report(&output, "the first fetch")?;
        if first.ok == 1 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no X.509-SVID within 60 s; the last answer: {}\n{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            agentd.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = agentd
        .launch(&ctx.self_exe, &args(count, warmup))
        .stderr(Stdio::piped())
        .output()?;
    let report = parse_report(&output, "the fetch loop")?;
    anyhow::ensure!(
        report.other == 0,
        "{} of {count} fetches failed\n{}",
        report.other,
        String::from_utf8_lossy(&output.stderr)
    );
    let p = Percentiles::of(&report.histogram()?);
    Ok((report, p))
}

fn measure(ctx: &Context) -> anyhow::Result<Row> {
    let spec = report::spec("svid-cache");
    let (count, warmup) = if ctx.smoke {
        (500, 50)
    } else {
        (20_000, 1_000)
    };
    let server = Server::start(ctx)?;
    let join = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(register(&server))?;
    let state = tempfile::tempdir()?;
    let agentd = Agentd::start(
        &ctx.agentd,
        &format!("[[agent]]\nname = \"{AGENT}\"\n"),
        &format!(
            "[control_plane]\nurl = \"{}\"\njoin_token = \"{join}\"\nstate_dir = \"{}\"\n\
             heartbeat_secs = 1\n",
            server.url,
            state.path().display()
        ),
    )?;
    let endpoint = format!("unix://{}", agentd.dir.path().join("spiffe.sock").display());
    // The control plane signs only for an agent its host reported running, and agentd reports
    // the agents with a live tagged process once a second: a process of the agent lives for
    // the whole row, and the first fetch is retried until the report has reached it.
    let mut keeper = agentd
        .launch(Path::new("/bin/sleep"), &["600".to_owned()])
        .stdout(Stdio::null())
        .spawn()
        .context("a process of the agent")?;
    let result = fetches(ctx, &agentd, &endpoint, count, warmup);
    let _ = keeper.kill();
    let _ = keeper.wait();
    let (report, p) = result?;
    let met = p.p99_ns <= u64::try_from(TARGET_P99.as_nanos())?;
    Ok(Row {
        id: spec.id.into(),
        name: spec.name.into(),
        target: spec.target.into(),
        result: format!(
            "p50 {}, p99 {}, max {} over {} fetches ({:.0}/s)",
            human_ns(p.p50_ns),
            human_ns(p.p99_ns),
            human_ns(p.max_ns),
            p.count,
            report.rate()
        ),
        status: Status::from_target(met),
        ran_on: "host; agentd's Workload API on a unix socket, the spiffe crate's client in a \
                 tagged process, one connection; agentd-control on loopback"
            .into(),
        details: json!({
            "fetches": count,
            "warmup": warmup,
            "latency": p,
            "client": "spiffe crate WorkloadApiClient::fetch_x509_svid",
        }),
        run: ctx.run.clone(),
    })
}
