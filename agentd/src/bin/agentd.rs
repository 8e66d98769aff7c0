//! The `agentd` command line: a thin entry point over the `agentd` library.

#![allow(
    clippy::doc_markdown,
    reason = "doc comments on the CLI types are --help text for users, not rustdoc"
)]

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use agentd::config::{Config, OutputFormat};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Exit code for a bad configuration file (sysexits.h `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

/// Kernel-enforced identity and Conditional Access for AI agents on Linux hosts.
///
/// agentd loads eBPF programs into the running kernel and reports what the processes on this
/// host do. It needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN), a kernel with BTF
/// (/sys/kernel/btf/vmlinux) and cgroup v2.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host daemon in the foreground: attach the kernel programs and print every
    /// event on stdout until Ctrl-C or SIGTERM, which detach everything.
    ///
    /// Example: `sudo agentd run --format json`
    Run {
        /// Configuration file (TOML). Default: /etc/agentd/agentd.toml when it exists,
        /// built-in defaults otherwise.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// How to print events; overrides `events.format` in the config file.
        #[arg(long, value_enum)]
        format: Option<OutputFormat>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Run { config, format } => {
            let mut config = match Config::load(config.as_deref()) {
                Ok(config) => config,
                Err(err) => {
                    tracing::error!("invalid configuration: {:#}", anyhow::Error::from(err));
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if let Some(format) = format {
                config.events.format = format;
            }
            run(config)
        }
    }
}

fn run(config: Config) -> ExitCode {
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
    match runtime.block_on(agentd::daemon::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{:#}", anyhow::Error::from(err));
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop agentd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
