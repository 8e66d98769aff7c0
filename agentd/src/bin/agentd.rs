//! The `agentd` command line: a thin entry point over the `agentd` library.

#![allow(
    clippy::doc_markdown,
    reason = "doc comments on the CLI types are --help text for users, not rustdoc"
)]

use std::{
    io::IsTerminal as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use agentd::{
    api::{
        self, AdminRequest, Applied, LaunchTarget, ProcessInfo, Quarantined, RiskRequest, Status,
    },
    config::{Config, OutputFormat},
    daemon::RunOptions,
    policy::IdentityPolicy,
};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Exit code for a bad configuration or policy (sysexits.h `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

/// Kernel-enforced identity and Conditional Access for AI agents on Linux hosts.
///
/// `agentd run` is the host daemon: it loads eBPF programs that tag every process of an AI
/// agent with the agent's identity and reports what they do. The other commands talk to a
/// running daemon over its local sockets. The daemon needs root (CAP_BPF, CAP_PERFMON,
/// CAP_SYS_ADMIN), a kernel with BTF (/sys/kernel/btf/vmlinux) and cgroup v2.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct AdminSocket {
    /// The daemon's admin socket.
    #[arg(long, value_name = "PATH", default_value = api::ADMIN_SOCKET)]
    socket: PathBuf,
}

/// Settings that override the configuration file: a flag wins over its environment variable,
/// which wins over the file.
#[derive(clap::Args, Clone, Debug, Default)]
struct Overrides {
    /// Overrides `bpf.pin_path`: where the maps and links are pinned.
    #[arg(long, value_name = "DIR", env = "AGENTD_PIN_PATH")]
    pin_path: Option<PathBuf>,
    /// Overrides `bpf.on_exit`: `keep` leaves the programs enforcing after agentd stops,
    /// `detach` removes them on a clean stop.
    #[arg(long, value_name = "WHAT", env = "AGENTD_ON_EXIT", value_parser = ["keep", "detach"])]
    on_exit: Option<String>,
    /// Overrides `api.admin_socket`.
    #[arg(long, value_name = "PATH", env = "AGENTD_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
    /// Overrides `control_plane.url`.
    #[arg(long, value_name = "URL", env = "AGENTD_CONTROL_PLANE_URL")]
    control_plane_url: Option<String>,
    /// Overrides `metrics.listen`.
    #[arg(long, value_name = "ADDR", env = "AGENTD_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

impl Overrides {
    /// Applies the overrides, then checks the result as the file is checked.
    fn apply(&self, config: &mut Config) -> Result<(), agentd::config::ConfigError> {
        let mut any = false;
        if let Some(path) = &self.pin_path {
            config.bpf.pin_path.clone_from(path);
            any = true;
        }
        if let Some(on_exit) = &self.on_exit {
            config.bpf.on_exit = if on_exit == "detach" {
                agentd::pins::OnExit::Detach
            } else {
                agentd::pins::OnExit::Keep
            };
        }
        if let Some(path) = &self.admin_socket {
            config.api.admin_socket.clone_from(path);
        }
        if let Some(url) = &self.control_plane_url {
            config.control_plane.url = Some(url.clone());
            any = true;
        }
        if let Some(listen) = self.metrics_listen {
            config.metrics.listen = Some(listen);
        }
        if any {
            config.validate(Path::new("flags and environment"))?;
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the host daemon in the foreground: attach the kernel programs (or adopt those an
    /// earlier agentd left pinned), apply the identity policy, serve the local API, and print
    /// every event on stdout until Ctrl-C or SIGTERM. With `bpf.on_exit = "keep"` (the default)
    /// the programs stay attached and keep enforcing after agentd stops; `agentd teardown`
    /// removes them.
    ///
    /// Example: `sudo agentd run --policy agents.toml --format json`
    Run {
        /// Configuration file (TOML). Default: /etc/agentd/agentd.toml when it exists,
        /// built-in defaults otherwise.
        #[arg(long, value_name = "FILE", env = "AGENTD_CONFIG")]
        config: Option<PathBuf>,
        /// Identity policy file (agents and discovery rules). Default: the drop-ins in
        /// `identity.policy_dir` (/etc/agentd/policy.d/*.toml).
        #[arg(long, value_name = "FILE", env = "AGENTD_POLICY")]
        policy: Option<PathBuf>,
        /// How to print events; overrides `events.format` in the config file.
        #[arg(long, value_enum, env = "AGENTD_FORMAT")]
        format: Option<OutputFormat>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Detach every agentd program and remove its pins (maps and links under `bpf.pin_path`):
    /// agents are no longer enforced afterwards. Refuses while an agentd answers on the admin
    /// socket; stop it first (`systemctl stop agentd`).
    ///
    /// Example: `sudo agentd teardown`
    Teardown {
        /// Configuration file (TOML), for `bpf.pin_path` and `api.admin_socket`.
        #[arg(long, value_name = "FILE", env = "AGENTD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run a command as an agent: it starts in the agent's agentd-managed cgroup, so the
    /// kernel tags it and every process it starts with the agent's identity.
    ///
    /// Example: `sudo agentd launch --agent coder -- python3 agent.py`
    Launch {
        /// The agent, by name, as registered in the identity policy.
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        admin: AdminSocket,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Show the processes of every agent as a tree, with how each was tagged.
    Ps {
        #[command(flatten)]
        admin: AdminSocket,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace the identity policy of the running daemon with FILE. The whole file is checked
    /// first; if anything is wrong, nothing changes and every problem is listed.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Quarantine an agent: from its next connect or datagram, its processes reach only the
    /// `network.quarantine_allow` destinations. `--release` lifts it.
    Quarantine {
        agent: String,
        #[arg(long)]
        release: bool,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// An agent's risk: its level, its detections and how its level changed; or an admin's
    /// verdict on it (`confirm`) or on one detection (`dismiss`). See docs/risk.md.
    ///
    /// Examples: `agentd risk show coder`, `agentd risk confirm coder --compromised`,
    /// `agentd risk dismiss 17`
    Risk {
        #[command(subcommand)]
        action: RiskAction,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Check the configuration and the identity policy without starting anything: every
    /// problem is listed with the key or field at fault, and the exit code is 64 when there is
    /// one. Cgroups, paths and categories named by the policy are resolved on this host.
    ///
    /// Example: `agentd config check --config /etc/agentd/agentd.toml`
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Show the daemon's status: agents, rules, tagged processes, lost tags, file enforcement,
    /// network policy version, quarantined agents and event accounting.
    Status {
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Ask agentd which agent this process belongs to, and print its identity document.
    /// Exits 1 when the caller is not an agent.
    Whoami {
        /// The daemon's identity socket.
        #[arg(long, value_name = "PATH", default_value = api::IDENTITY_SOCKET)]
        socket: PathBuf,
    },
    /// Ask the SPIFFE Workload API, as this process, for its X.509-SVID (and a JWT-SVID for
    /// each --audience), the way any workload would; print what came back. Run it inside an
    /// agent to see that agent's credentials; exits 1 with the reason when the caller gets none.
    ///
    /// Example: `agentd launch --agent demo -- agentd svid --audience billing-api`
    Svid {
        /// The Workload API socket. Default: `SPIFFE_ENDPOINT_SOCKET` (a `unix://` address),
        /// else /run/agentd/spiffe.sock.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Also fetch a JWT-SVID for this audience (repeatable).
        #[arg(long = "audience", value_name = "AUDIENCE")]
        audiences: Vec<String>,
        /// Print JSON (with the JWT-SVIDs' tokens) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration file and the identity policy it points at.
    Check {
        /// Configuration file (TOML). Default: /etc/agentd/agentd.toml when it exists.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Identity policy file. Default: the drop-ins in `identity.policy_dir`.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RiskAction {
    /// The agent's risk level, detections (active, dismissed, decayed) and level changes.
    Show {
        agent: String,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Confirm the agent compromised (its risk becomes high, and stays high until confirmed
    /// safe) or safe (its active detections are dismissed and its risk is none).
    Confirm {
        agent: String,
        #[arg(long, conflicts_with = "safe", required_unless_present = "safe")]
        compromised: bool,
        #[arg(long)]
        safe: bool,
    },
    /// Dismiss one detection, by the id `risk show` prints: it stops counting.
    Dismiss { detection: u64 },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match Cli::parse().command {
        Command::Run {
            config,
            policy,
            format,
            overrides,
        } => return run(config.as_deref(), policy.as_deref(), format, &overrides),
        Command::Teardown { config, overrides } => teardown(config.as_deref(), &overrides),
        Command::Launch {
            agent,
            admin,
            command,
        } => launch(&admin.socket, &agent, &command),
        Command::Ps { admin, json } => ps(&admin.socket, json),
        Command::Apply { file, admin } => apply(&admin.socket, &file),
        Command::Status { admin } => status(&admin.socket),
        Command::Risk { action, admin } => risk(&admin.socket, action),
        Command::Config {
            action: ConfigAction::Check { config, policy },
        } => return config_check(config.as_deref(), policy.as_deref()),
        Command::Quarantine {
            agent,
            release,
            admin,
        } => quarantine(&admin.socket, &agent, release),
        Command::Svid {
            socket,
            audiences,
            json,
        } => svid(socket, &audiences, json),
        Command::Whoami { socket } => match api::whoami(&socket) {
            Ok(document) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&document).unwrap_or_default()
                );
                Ok(())
            }
            Err(err) => Err(err.into()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agentd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_check(config: Option<&Path>, policy: Option<&Path>) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("invalid configuration: {:#}", anyhow::Error::from(err));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let loaded = match policy {
        Some(file) => IdentityPolicy::load_file(file),
        None => IdentityPolicy::load_dir(&config.identity.policy_dir),
    };
    let checked = loaded.map_err(anyhow::Error::from).and_then(|policy| {
        let root = agentd::cgroups::root().context("finding the cgroup v2 root")?;
        let categories =
            agentd::daemon::load_categories(config.network.categories_file.as_deref())?;
        Ok(policy.compile(&root, &categories)?)
    });
    match checked {
        Ok(compiled) => {
            println!(
                "ok: configuration valid; policy with {} agents and {} discovery rules",
                compiled.agents.len(),
                compiled.rules.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("invalid identity policy: {err:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn teardown(config: Option<&Path>, overrides: &Overrides) -> anyhow::Result<()> {
    let mut config = Config::load(config)?;
    overrides.apply(&mut config)?;
    if api::admin::<Status>(&config.api.admin_socket, &AdminRequest::Status).is_ok() {
        anyhow::bail!(
            "agentd is running (it answers on {}); stop it first, then tear down",
            config.api.admin_socket.display()
        );
    }
    let links = agentd::pins::teardown(&config.bpf.pin_path)?;
    println!(
        "detached {links} programs and removed the pins under {}",
        config.bpf.pin_path.display()
    );
    Ok(())
}

fn run(
    config: Option<&Path>,
    policy: Option<&Path>,
    format: Option<OutputFormat>,
    overrides: &Overrides,
) -> ExitCode {
    let mut config = match Config::load(config).and_then(|mut config| {
        overrides.apply(&mut config)?;
        Ok(config)
    }) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("invalid configuration: {:#}", anyhow::Error::from(err));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(format) = format {
        config.events.format = format;
    }
    let policy = match policy {
        Some(file) => IdentityPolicy::load_file(file),
        None => IdentityPolicy::load_dir(&config.identity.policy_dir),
    };
    let policy = match policy {
        Ok(policy) => policy,
        Err(err) => {
            tracing::error!("invalid identity policy: {:#}", anyhow::Error::from(err));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let options = RunOptions { config, policy };
    let result = runtime.block_on(async {
        // Install the handlers before anything is attached, so that an early Ctrl-C detaches
        // cleanly rather than killing the process.
        let shutdown = match shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(err) => {
                tracing::error!("installing signal handlers: {err}");
                return Ok(());
            }
        };
        agentd::daemon::run(options, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            err @ (agentd::daemon::DaemonError::Policy(_)
            | agentd::daemon::DaemonError::Categories { .. }),
        ) => {
            tracing::error!("{:#}", anyhow::Error::from(err));
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => {
            tracing::error!("{:#}", anyhow::Error::from(err));
            ExitCode::FAILURE
        }
    }
}

/// Enters the agent's cgroup and execs the command: the kernel tags it at exec.
fn launch(socket: &Path, agent: &str, command: &[String]) -> anyhow::Result<()> {
    let target: LaunchTarget = api::admin(
        socket,
        &AdminRequest::Launch {
            agent: agent.to_owned(),
        },
    )?;
    agentd::cgroups::enter(Path::new(&target.cgroup))
        .with_context(|| format!("entering the agent's cgroup {}", target.cgroup))?;
    let (program, args) = command.split_first().context("no command given")?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("running {program}"))
}

fn svid(socket: Option<PathBuf>, audiences: &[String], json: bool) -> anyhow::Result<()> {
    let socket = socket.unwrap_or_else(|| {
        std::env::var("SPIFFE_ENDPOINT_SOCKET")
            .ok()
            .and_then(|endpoint| endpoint.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(api::SPIFFE_SOCKET))
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetched = runtime.block_on(agentd::spiffe::client::fetch(&socket, audiences))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fetched)?);
        return Ok(());
    }
    println!("spiffe_id: {}", fetched.spiffe_id);
    println!(
        "x509-svid: serial {}, valid {} to {} (Unix time), chain of {}, {} bundle authorities",
        fetched.serial,
        fetched.not_before,
        fetched.not_after,
        fetched.chain,
        fetched.bundle_authorities
    );
    for jwt in &fetched.jwt_svids {
        println!("jwt-svid for {}: {}", jwt.audience, jwt.token);
    }
    Ok(())
}

fn quarantine(socket: &Path, agent: &str, release: bool) -> anyhow::Result<()> {
    let done: Quarantined = api::admin(
        socket,
        &AdminRequest::Quarantine {
            agent: agent.to_owned(),
            release,
        },
    )?;
    let state = if done.quarantined {
        "quarantined"
    } else {
        "released"
    };
    println!("{}: {state}", done.agent);
    Ok(())
}

fn risk(socket: &Path, action: RiskAction) -> anyhow::Result<()> {
    match action {
        RiskAction::Show { agent, json } => {
            let report: serde_json::Value = api::admin(
                socket,
                &AdminRequest::Risk(RiskRequest::Show {
                    agent: agent.clone(),
                }),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            println!(
                "{agent}: risk {}{}{}",
                report["level"].as_str().unwrap_or("?"),
                if report["compromised"] == true {
                    ", confirmed compromised"
                } else {
                    ""
                },
                if report["quarantined"] == true {
                    ", quarantined"
                } else {
                    ""
                },
            );
            let empty = Vec::new();
            let detections = report["detections"].as_array().unwrap_or(&empty);
            if detections.is_empty() {
                println!("no detections");
            } else {
                println!(
                    "{:>6}  {:<8}  {:<10}  {:<24}  SUMMARY",
                    "ID", "SEVERITY", "STATE", "RULE"
                );
            }
            for record in detections {
                let detection = &record["detection"];
                println!(
                    "{:>6}  {:<8}  {:<10}  {:<24}  {}",
                    detection["id"].as_u64().unwrap_or_default(),
                    detection["severity"].as_str().unwrap_or("?"),
                    record["state"].as_str().unwrap_or("?"),
                    detection["rule"].as_str().unwrap_or("?"),
                    detection["summary"].as_str().unwrap_or(""),
                );
            }
        }
        RiskAction::Confirm {
            agent,
            compromised,
            safe: _,
        } => {
            let level: serde_json::Value = api::admin(
                socket,
                &AdminRequest::Risk(RiskRequest::Confirm {
                    agent: agent.clone(),
                    compromised,
                }),
            )?;
            println!("{agent}: risk {}", level.as_str().unwrap_or("?"));
        }
        RiskAction::Dismiss { detection } => {
            let _: serde_json::Value = api::admin(
                socket,
                &AdminRequest::Risk(RiskRequest::Dismiss { detection }),
            )?;
            println!("detection {detection} dismissed");
        }
    }
    Ok(())
}

fn status(socket: &Path) -> anyhow::Result<()> {
    let status: Status = api::admin(socket, &AdminRequest::Status)?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

fn apply(socket: &Path, file: &Path) -> anyhow::Result<()> {
    let policy =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let applied: Applied = api::admin(socket, &AdminRequest::Apply { policy })?;
    println!(
        "applied: {} agents, {} discovery rules, network policy version {}",
        applied.agents, applied.rules, applied.network_version
    );
    Ok(())
}

fn ps(socket: &Path, json: bool) -> anyhow::Result<()> {
    let processes: Vec<ProcessInfo> = api::admin(socket, &AdminRequest::Ps)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&processes)?);
        return Ok(());
    }
    print!("{}", render_tree(&processes));
    Ok(())
}

/// One block per agent; inside it, each process under its parent when the parent is the same
/// agent's.
fn render_tree(processes: &[ProcessInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut agents: Vec<_> = processes
        .iter()
        .map(|p| (&p.agent.name, &p.agent.id))
        .collect();
    agents.sort();
    agents.dedup();
    for (name, id) in agents {
        let _ = writeln!(out, "{name} ({id})");
        let _ = writeln!(
            out,
            "  {:<8} {:<8} {:<22} {:<20} COMMAND",
            "PID", "PPID", "TAGGED BY", "STARTED"
        );
        let members: Vec<&ProcessInfo> =
            processes.iter().filter(|p| &p.agent.name == name).collect();
        let is_member = |pid: u32| members.iter().any(|p| p.pid == pid);
        let mut stack: Vec<(&ProcessInfo, usize)> = members
            .iter()
            .rev()
            .filter(|p| !is_member(p.ppid))
            .map(|p| (*p, 0))
            .collect();
        while let Some((process, depth)) = stack.pop() {
            let mut tagged_by = process.tag.source.clone();
            if let Some(rule) = &process.tag.rule {
                let _ = write!(tagged_by, " ({rule})");
            }
            if process.tag.inherited {
                tagged_by.push_str(", inherited");
            }
            let started = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(process.started),
            );
            let _ = writeln!(
                out,
                "  {:<8} {:<8} {:<22} {:<20} {}{}",
                process.pid,
                process.ppid,
                tagged_by,
                started.to_string(),
                "  ".repeat(depth),
                process.command
            );
            for child in members.iter().rev().filter(|p| p.ppid == process.pid) {
                stack.push((child, depth + 1));
            }
        }
    }
    if out.is_empty() {
        out.push_str("no agent processes\n");
    }
    out
}

/// Registers SIGINT and SIGTERM handlers now, and returns a future that completes on the
/// first of them.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
