//! `agentctl access`: access packages, time-bound grants of resources with approval stages.

use agentd_control::proto::{self};
use clap::{Subcommand, ValueEnum};
use prost_types::Timestamp;

use crate::{
    args::parse_when,
    client::{Clients, call},
    output::Printer,
};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ResourceKindArg {
    Net,
    File,
    Mcp,
}

pub(crate) fn parse_resource(text: &str) -> Result<proto::Resource, String> {
    let (kind, value) = text
        .split_once('=')
        .ok_or("expected KIND=VALUE, e.g. net=api.example.com:443, file=/srv/data, mcp=https://mcp.example.com")?;
    let kind = match kind {
        "net" => proto::ResourceKind::NetworkDestination,
        "file" => proto::ResourceKind::FilePath,
        "mcp" => proto::ResourceKind::McpServer,
        other => {
            return Err(format!(
                "unknown resource kind {other:?}: use net, file or mcp"
            ));
        }
    };
    Ok(proto::Resource {
        kind: kind.into(),
        value: value.to_owned(),
    })
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PackageStateArg {
    Pending,
    Approved,
    Active,
    Expired,
    Denied,
    Revoked,
}

#[derive(Subcommand)]
pub(crate) enum AccessCommand {
    /// Request an access package for an agent.
    Request {
        agent_id: String,
        /// A resource: net=HOST:PORT|CIDR[:PORT], file=/PATH or mcp=URL (repeatable).
        #[arg(long = "resource", required = true, value_parser = parse_resource)]
        resources: Vec<proto::Resource>,
        /// Why the agent needs it (required).
        #[arg(long)]
        justification: String,
        /// Approver of the next stage, in order (repeatable; none: approved at once, admins only).
        #[arg(long = "approver")]
        approvers: Vec<String>,
        /// Start: an RFC 3339 time or +DURATION (default: now).
        #[arg(long, value_parser = parse_when)]
        starts: Option<Timestamp>,
        /// Expiry: an RFC 3339 time or +DURATION (required), e.g. +8h.
        #[arg(long, value_parser = parse_when)]
        expires: Timestamp,
    },
    /// Approve the current stage of a package.
    Approve { id: String },
    /// Deny a pending package.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Revoke a package before its expiry.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show one package.
    Get { id: String },
    /// List packages.
    List {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, value_enum)]
        state: Option<PackageStateArg>,
    },
}

pub(crate) async fn access(
    clients: &Clients,
    out: &Printer,
    command: AccessCommand,
) -> anyhow::Result<()> {
    let mut client = clients.access();
    match command {
        AccessCommand::Request {
            agent_id,
            resources,
            justification,
            approvers,
            starts,
            expires,
        } => {
            let response = call(client.request_access_package(
                proto::RequestAccessPackageRequest {
                    agent_id,
                    resources,
                    justification,
                    approvers,
                    start_time: starts,
                    expire_time: Some(expires),
                },
            ))
            .await?;
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::Approve { id } => {
            let response =
                call(client.approve_access_package(proto::ApproveAccessPackageRequest { id }))
                    .await?;
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::Deny { id, reason } => {
            let response =
                call(client.deny_access_package(proto::DenyAccessPackageRequest { id, reason }))
                    .await?;
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::Revoke { id, reason } => {
            let response = call(
                client.revoke_access_package(proto::RevokeAccessPackageRequest { id, reason }),
            )
            .await?;
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::Get { id } => {
            let response =
                call(client.get_access_package(proto::GetAccessPackageRequest { id })).await?;
            out.packages(&response, response.access_package.as_slice())
        }
        AccessCommand::List { agent, state } => {
            let state = state.map_or(
                proto::AccessPackageState::Unspecified,
                |state| match state {
                    PackageStateArg::Pending => proto::AccessPackageState::Pending,
                    PackageStateArg::Approved => proto::AccessPackageState::Approved,
                    PackageStateArg::Active => proto::AccessPackageState::Active,
                    PackageStateArg::Expired => proto::AccessPackageState::Expired,
                    PackageStateArg::Denied => proto::AccessPackageState::Denied,
                    PackageStateArg::Revoked => proto::AccessPackageState::Revoked,
                },
            );
            let response = call(
                client.list_access_packages(proto::ListAccessPackagesRequest {
                    agent_id: agent.unwrap_or_default(),
                    state: state.into(),
                }),
            )
            .await?;
            out.packages(&response, &response.access_packages)
        }
    }
}
