//! Row 9: risk to quarantine. A tagged process reads a file an audit-mode rule names, then
//! connects to a destination the agent never reached: `secret_read_then_egress` (high) makes
//! the risk engine quarantine the agent, and agentd's `remediation` notice carries
//! `latency_ns`, from the triggering kernel event's timestamp to the quarantine in the kernel
//! maps. An admin confirms the agent safe between repetitions, which lifts the quarantine.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{
    Context,
    daemon::{AGENT, Agentd},
    report::{self, Percentiles, Row, Status, human_ns},
    worker::new_histogram,
};

fn count_kind(agentd: &Agentd, kind: &str) -> Vec<serde_json::Value> {
    agentd
        .event_lines()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn wait_for(
    agentd: &Agentd,
    kind: &str,
    more_than: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = count_kind(agentd, kind);
        if seen.len() > more_than {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!("no new `{kind}` line within 10 s\n{}", agentd.log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn run(ctx: &Context) -> Row {
    measure(ctx).unwrap_or_else(|err| Row::error(report::spec("risk-quarantine"), &ctx.run, &err))
}

fn measure(ctx: &Context) -> anyhow::Result<Row> {
    let spec = report::spec("risk-quarantine");
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("credentials");
    fs::write(&secret, "token")?;
    let policy = format!(
        "[[agent]]\nname = \"{AGENT}\"\n[agent.files]\nmode = \"audit\"\n\
         [[agent.files.rule]]\nid = \"creds\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n",
        secret.display()
    );
    let agentd = Agentd::start(&ctx.agentd, &policy, "[risk]\nlearning_window_secs = 0\n")?;
    let repetitions = if ctx.smoke { 3 } else { 50 };
    let mut histogram = new_histogram();
    let mut latencies = Vec::new();
    for i in 0..repetitions {
        let files = count_kind(&agentd, "file").len();
        let remediations = count_kind(&agentd, "remediation").len();
        let read = agentd
            .launch("cat".as_ref(), &[secret.display().to_string()])
            .output()
            .context("cat")?;
        anyhow::ensure!(read.status.success(), "the audit-mode read failed");
        wait_for(&agentd, "file", files)?;
        // A destination new to the agent every time: 127.0.0.2, .3, ... (a refused TCP connect
        // still passes the connect4 hook and makes an event).
        let target = format!("127.0.{}.{}:1", 1 + i / 250, 2 + i % 250);
        agentd
            .launch(
                &ctx.self_exe,
                &[
                    "worker".into(),
                    "connect".into(),
                    target,
                    "--count".into(),
                    "1".into(),
                    "--warmup".into(),
                    "0".into(),
                ],
            )
            .output()
            .context("the egress connect")?;
        let seen = wait_for(&agentd, "remediation", remediations)?;
        let notice = seen.last().context("a remediation")?;
        if notice["action"] != "quarantine" || notice["result"] != "done" {
            bail!("unexpected remediation: {notice}");
        }
        let latency = notice["latency_ns"]
            .as_u64()
            .with_context(|| format!("no latency_ns in {notice}"))?;
        histogram.saturating_record(latency.max(1));
        latencies.push(latency);
        agentd.cli_with(&["risk"], &["confirm", AGENT, "--safe"])?;
    }
    let p = Percentiles::of(&histogram);
    Ok(Row {
        id: spec.id.into(),
        name: spec.name.into(),
        target: spec.target.into(),
        result: format!(
            "p50 {}, p99 {} over {repetitions} quarantines",
            human_ns(p.p50_ns),
            human_ns(p.p99_ns)
        ),
        status: Status::from_target(p.p99_ns <= 10_000_000),
        ran_on: format!(
            "host kernel {}: file read observed by tracepoints (audit rule), connect by connect4; quarantine in the network maps",
            ctx.run.kernel
        ),
        details: json!({
            "trigger": "secret_read_then_egress (learning_window_secs = 0)",
            "latency": p,
            "latencies_ns": latencies,
        }),
        run: ctx.run.clone(),
    })
}
