//! `agentctl host`: join tokens, enrolment, heartbeats, agent reports and revocation.

use std::path::PathBuf;

use agentd_control::proto::{self};
use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::{
    client::{Clients, call},
    output::Printer,
};

#[derive(Subcommand)]
pub(crate) enum HostCommand {
    /// Create a single-use join token for enrolling one host.
    JoinToken {
        /// How long it stays valid, e.g. 1h, 30m (at most a week).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, default_value = "")]
        description: String,
        /// The only hostname the token may enrol (default: any).
        #[arg(long, default_value = "")]
        hostname: String,
        /// A label KEY=VALUE the enrolled host gets (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::args::parse_key_value)]
        labels: Vec<(String, String)>,
    },
    /// Enrol this machine with a join token. Writes the host token, and with --key-out a new
    /// key, its certificate and the CA certificate, into --dir.
    Enroll {
        /// The join token (from `agentctl host join-token`).
        #[arg(long, env = "AGENTD_JOIN_TOKEN", hide_env_values = true)]
        join_token: String,
        #[arg(long)]
        hostname: String,
        /// Where to write host-token, host.key, host.crt and ca.crt.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Send a heartbeat as this host (host token; client certificate over https).
    Heartbeat,
    /// Report the agents running on this host (replaces the previous report).
    Report { agent_ids: Vec<String> },
    /// Show one host.
    Get { id: String },
    /// List hosts.
    List {
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke a host: its credentials stop working at once.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    #[command(flatten)]
    Decisions(crate::conditional::HostDecisionCommand),
}

pub(crate) async fn host(
    clients: &Clients,
    out: &Printer,
    command: HostCommand,
) -> anyhow::Result<()> {
    let mut client = clients.host();
    match command {
        HostCommand::JoinToken {
            ttl,
            description,
            hostname,
            labels,
        } => {
            let response = call(client.create_join_token(proto::CreateJoinTokenRequest {
                ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
                description,
                hostname,
                labels: labels.into_iter().collect(),
            }))
            .await?;
            out.join_token(&response)
        }
        HostCommand::Enroll {
            join_token,
            hostname,
            dir,
        } => {
            let key = rcgen::KeyPair::generate().context("generating the host key")?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())
                .and_then(|params| params.serialize_request(&key))
                .and_then(|csr| csr.pem())
                .context("creating the certificate request")?;
            let response = call(client.enroll_host(proto::EnrollHostRequest {
                join_token,
                hostname,
                csr_pem: csr,
                agentd_version: env!("CARGO_PKG_VERSION").to_owned(),
            }))
            .await?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, contents) in [
                ("host-token", response.host_token.as_str()),
                ("host.key", key.serialize_pem().as_str()),
                ("host.crt", response.certificate_pem.as_str()),
                ("ca.crt", response.ca_certificate_pem.as_str()),
            ] {
                write_private(&dir.join(name), contents)?;
            }
            out.enrolled(&response, &dir)
        }
        HostCommand::Heartbeat => {
            let response = call(client.heartbeat(proto::HeartbeatRequest {
                agentd_version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            }))
            .await?;
            out.done(&response, "heartbeat accepted")
        }
        HostCommand::Report { agent_ids } => {
            let count = agent_ids.len();
            let response =
                call(client.report_agents(proto::ReportAgentsRequest { agent_ids })).await?;
            out.done(&response, &format!("reported {count} running agent(s)"))
        }
        HostCommand::Decisions(command) => {
            crate::conditional::host_decisions(clients, out, command).await
        }
        HostCommand::Get { id } => {
            let response = call(client.get_host(proto::GetHostRequest { id })).await?;
            out.hosts(&response, response.host.as_slice())
        }
        HostCommand::List { include_revoked } => {
            let response =
                call(client.list_hosts(proto::ListHostsRequest { include_revoked })).await?;
            out.hosts(&response, &response.hosts)
        }
        HostCommand::Revoke { id, reason } => {
            let response =
                call(client.revoke_host(proto::RevokeHostRequest { id, reason })).await?;
            out.hosts(&response, response.host.as_slice())
        }
    }
}

/// Writes a credential readable by its owner only.
pub(crate) fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    if contents.is_empty() {
        bail!("the server returned no {}", path.display());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
