//! `agentctl principal`, `alert` and `sweep`: sponsors and owners, governance alerts, and the
//! governance sweep.

use agentd_control::proto::{self};
use clap::{Subcommand, ValueEnum};

use crate::{
    client::{Clients, call},
    output::Printer,
};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RelationArg {
    Sponsor,
    Owner,
}

impl RelationArg {
    pub(crate) fn proto(self) -> i32 {
        match self {
            Self::Sponsor => proto::PrincipalRelation::Sponsor,
            Self::Owner => proto::PrincipalRelation::Owner,
        }
        .into()
    }
}

#[derive(Subcommand)]
pub(crate) enum PrincipalCommand {
    /// Add a sponsor or owner to an agent.
    Add {
        agent_id: String,
        #[arg(value_enum)]
        relation: RelationArg,
        principal: String,
    },
    /// Remove a sponsor or owner from one agent (--agent) or from every agent. Agents left
    /// without a sponsor go to --reassign-to, or are orphaned with an alert.
    Remove {
        #[arg(value_enum)]
        relation: RelationArg,
        principal: String,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        reassign_to: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum AlertCommand {
    /// List alerts, newest first.
    List {
        #[arg(long)]
        agent: Option<String>,
    },
}

pub(crate) async fn principal(
    clients: &Clients,
    out: &Printer,
    command: PrincipalCommand,
) -> anyhow::Result<()> {
    let mut client = clients.governance();
    match command {
        PrincipalCommand::Add {
            agent_id,
            relation,
            principal,
        } => {
            let response = call(client.add_principal(proto::AddPrincipalRequest {
                agent_id,
                relation: relation.proto(),
                principal,
            }))
            .await?;
            out.agents(&response, response.agent.as_slice())
        }
        PrincipalCommand::Remove {
            relation,
            principal,
            agent,
            reassign_to,
        } => {
            let response = call(client.remove_principal(proto::RemovePrincipalRequest {
                agent_id: agent.unwrap_or_default(),
                relation: relation.proto(),
                principal,
                reassign_to: reassign_to.unwrap_or_default(),
            }))
            .await?;
            out.removal(&response)
        }
    }
}

pub(crate) async fn alerts(
    clients: &Clients,
    out: &Printer,
    command: AlertCommand,
) -> anyhow::Result<()> {
    let AlertCommand::List { agent } = command;
    let response = call(clients.governance().list_alerts(proto::ListAlertsRequest {
        agent_id: agent.unwrap_or_default(),
    }))
    .await?;
    out.alerts(&response)
}

pub(crate) async fn sweep(clients: &Clients, out: &Printer) -> anyhow::Result<()> {
    let response = call(clients.governance().run_sweep(proto::RunSweepRequest {})).await?;
    out.sweep(&response)
}
