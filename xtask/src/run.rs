//! `cargo xtask run`: the whole system on this machine with embedded defaults: a control plane
//! (`agentd-control`, SQLite under ~/.cache/agentd/run) on 127.0.0.1:7443 with the demo agent
//! registered, and agentd enrolled with it, applying examples/agents.toml and printing events.
//! Ctrl-C stops both; agentd detaches everything it attached.

use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup, workspace};

const LISTEN: &str = "127.0.0.1:7443";
const AGENT: &str = "demo";

fn state_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/agentd/run"))
}

fn binary(built: &[(String, PathBuf)], name: &str) -> anyhow::Result<PathBuf> {
    built
        .iter()
        .find_map(|(built, path)| (built == name).then(|| path.clone()))
        .with_context(|| format!("cargo built no {name} binary"))
}

/// Runs `agentctl ARGS` as the run's admin; returns stdout, or the error text.
fn agentctl(agentctl: &Path, token: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(agentctl)
        .args(args)
        .env("AGENTD_SERVER", format!("http://{LISTEN}"))
        .env("AGENTD_TOKEN", token)
        .output()
        .map_err(|err| err.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The admin token of the run's control plane, created once.
fn admin_token(control: &Path, database: &str, dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("admin.token");
    if let Ok(token) = fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let token = cmd::output(Command::new(control).args([
        "create-token",
        "--name",
        "xtask-run",
        "--role",
        "admin",
        "--principal",
        "root@localhost",
        "--database",
        database,
    ]))?;
    fs::write(&path, &token)?;
    Ok(token.trim().to_owned())
}

/// The registry id of the agent named `name` in `agentctl agent list -o json`'s output.
fn listed_id(listed: &str, name: &str) -> anyhow::Result<Option<String>> {
    let listed: serde_json::Value =
        serde_json::from_str(listed).context("agentctl agent list printed no JSON")?;
    let agents = listed["agents"]
        .as_array()
        .or_else(|| listed.as_array())
        .map_or(&[][..], Vec::as_slice);
    Ok(agents
        .iter()
        .find(|agent| agent["name"] == name)
        .and_then(|agent| agent["id"].as_str())
        .map(str::to_owned))
}

/// Registers and enables the demo agent, unless it is there already; returns its registry id.
fn register_demo(ctl: &Path, token: &str) -> anyhow::Result<String> {
    let listed =
        agentctl(ctl, token, &["agent", "list", "-o", "json"]).map_err(anyhow::Error::msg)?;
    if let Some(id) = listed_id(&listed, AGENT)? {
        return Ok(id);
    }
    if let Err(err) = agentctl(ctl, token, &["blueprint", "create", AGENT])
        && !err.contains("already")
    {
        bail!("creating the demo blueprint: {err}");
    }
    let created = agentctl(
        ctl,
        token,
        &[
            "agent",
            "create",
            AGENT,
            "--blueprint",
            AGENT,
            "--sponsor",
            "root@localhost",
            "-o",
            "json",
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let id = created
        .split("\"id\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("agentctl printed no agent id")?
        .to_owned();
    agentctl(ctl, token, &["agent", "enable", &id]).map_err(anyhow::Error::msg)?;
    println!("run: registered the demo agent ({id}) in the control plane");
    Ok(id)
}

/// Sets up, builds and runs the control plane and agentd until agentd exits.
pub fn run(args: &[String]) -> anyhow::Result<ExitStatus> {
    setup::run(&setup::Options::default())?;
    crate::pseudofs::mount()?;
    // The debug build the test tiers use: `cargo xtask run` after `cargo xtask test` builds
    // nothing again.
    let built = workspace::build_binaries(&["agentd", "agentd-control"], false)?;
    let (agentd, control, ctl) = (
        binary(&built, "agentd")?,
        binary(&built, "agentd-control")?,
        binary(&built, "agentctl")?,
    );
    let dir = state_dir()?;
    fs::create_dir_all(dir.join("agentd-state"))?;
    let database = format!("sqlite://{}/control.db", dir.display());
    let token = admin_token(&control, &database, &dir)?;

    let mut server = Command::new(&control)
        .args(["serve", "--listen", LISTEN, "--database", &database])
        .stderr(fs::File::create(dir.join("control.log"))?)
        .spawn()
        .context("starting agentd-control")?;
    let started = Instant::now();
    while TcpStream::connect(LISTEN).is_err() {
        if let Ok(Some(status)) = server.try_wait() {
            bail!(
                "agentd-control exited ({status}): see {}",
                dir.join("control.log").display()
            );
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "agentd-control does not listen on {LISTEN}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "run: control plane on http://{LISTEN} (admin token in {})",
        dir.join("admin.token").display()
    );
    register_demo(&ctl, &token)?;

    let enrolled = dir.join("agentd-state/host.json").exists();
    let join = if enrolled {
        String::new()
    } else {
        let out = agentctl(&ctl, &token, &["host", "join-token", "-o", "json"])
            .map_err(anyhow::Error::msg)?;
        let token = out
            .split("\"token\": \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("agentctl printed no join token")?;
        format!("join_token = \"{token}\"\n")
    };
    let config = dir.join("agentd.toml");
    fs::write(
        &config,
        format!(
            "[control_plane]\nurl = \"http://{LISTEN}\"\n{join}state_dir = \"{}\"\n\n\
             # A demo: Ctrl-C detaches everything (a service keeps enforcing: docs/operations.md).\n\
             [bpf]\non_exit = \"detach\"\n",
            dir.join("agentd-state").display()
        ),
    )?;

    let mut command = Command::new(&agentd);
    command.arg("run").arg("--config").arg(&config);
    if !args.iter().any(|arg| arg.starts_with("--policy")) {
        // The example: one demo agent to launch. It names no id: agentd takes the registry's
        // from the decisions, so host events, the registry and its SPIFFE ID agree.
        command
            .arg("--policy")
            .arg(workspace::workspace_root().join("examples/agents.toml"));
    }
    command.args(args).stdin(Stdio::inherit());
    eprintln!("+ {}", cmd::display(&command));
    let mut agentd = command.spawn().context("starting agentd")?;
    // Ctrl-C reaches the whole foreground group: agentd and the control plane stop on it, and
    // xtask stays to collect them.
    // SAFETY: ignoring a signal in this process only; the children were started before.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = agentd.wait()?;
    if let Ok(pid) = i32::try_from(server.id()) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
    let _ = server.wait();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_agent_is_found_by_name() {
        let listed = r#"{"agents": [{"id": "a1", "name": "other"}, {"id": "d7", "name": "demo"}]}"#;
        assert_eq!(listed_id(listed, "demo").unwrap().as_deref(), Some("d7"));
        assert_eq!(listed_id("{}", "demo").unwrap(), None);
        assert!(listed_id("not json", "demo").is_err());
    }
}
