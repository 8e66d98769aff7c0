//! `agentctl token` and `whoami`: API tokens, and who the token in use is.

use agentd_control::proto::{self};
use clap::{Subcommand, ValueEnum};

use crate::{
    client::{Clients, call},
    output::Printer,
};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    Admin,
    Sponsor,
    Auditor,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Create an API token (printed once).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Who it acts as, e.g. alice@example.com.
        #[arg(long)]
        principal: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token.
    Revoke { id: String },
}

pub(crate) async fn token(
    clients: &Clients,
    out: &Printer,
    command: TokenCommand,
) -> anyhow::Result<()> {
    let mut client = clients.auth();
    match command {
        TokenCommand::Create {
            name,
            role,
            principal,
        } => {
            let role = match role {
                RoleArg::Admin => proto::Role::Admin,
                RoleArg::Sponsor => proto::Role::Sponsor,
                RoleArg::Auditor => proto::Role::Auditor,
            };
            let response = call(client.create_api_token(proto::CreateApiTokenRequest {
                name,
                role: role.into(),
                principal,
            }))
            .await?;
            out.created_token(&response)
        }
        TokenCommand::List => {
            let response = call(client.list_api_tokens(proto::ListApiTokensRequest {})).await?;
            out.tokens(&response, &response.api_tokens)
        }
        TokenCommand::Revoke { id } => {
            let response =
                call(client.revoke_api_token(proto::RevokeApiTokenRequest { id })).await?;
            out.tokens(&response, response.api_token.as_slice())
        }
    }
}

pub(crate) async fn whoami(clients: &Clients, out: &Printer) -> anyhow::Result<()> {
    let response = call(clients.auth().who_am_i(proto::WhoAmIRequest {})).await?;
    out.whoami(&response)
}
