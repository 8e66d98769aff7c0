//! `agentctl`: the command line for the agentd control plane. Every gRPC method of `agentd.v1`
//! has a subcommand; `agentctl --help` and `agentctl <command> --help` describe them.

#![allow(
    clippy::doc_markdown,
    reason = "doc comments on the CLI types are --help text for users, not rustdoc"
)]

mod access;
mod agent;
mod args;
mod audit;
mod blueprint;
mod ca;
mod client;
mod conditional;
mod governance;
mod host;
mod jwt_key;
mod output;
mod token;

use clap::{Parser, Subcommand};
use tonic::Status;

use crate::{
    access::AccessCommand,
    agent::AgentCommand,
    blueprint::BlueprintCommand,
    client::{Clients, Connection},
    governance::{AlertCommand, PrincipalCommand},
    host::HostCommand,
    output::{Format, Printer},
    token::TokenCommand,
};

/// Manage the agentd control plane: blueprints, agents, governance, access packages, the audit
/// log, hosts and API tokens.
///
/// Every command talks to the server named by --server with the bearer token in --token (or
/// $AGENTD_SERVER and $AGENTD_TOKEN). Output is a table, or JSON with --output json (the
/// canonical protobuf JSON of the response).
#[derive(Parser)]
#[command(name = "agentctl", version)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Blueprints: templates whose defaults agents inherit.
    #[command(subcommand)]
    Blueprint(BlueprintCommand),
    /// Agents: create, inspect, update, enable, disable, reconfirm, delete.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Sponsors and owners of agents, and orphan handling.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Governance alerts (orphaned, reconfirmation overdue, inactive, expired).
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Run the governance sweep now.
    Sweep,
    /// Access packages: time-bound grants of resources with approval stages.
    #[command(subcommand)]
    Access(AccessCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Hosts: join tokens, enrolment, heartbeats, agent reports, revocation.
    #[command(subcommand)]
    Host(HostCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Conditional Access policies: apply YAML documents, versions, states, what-if.
    #[command(subcommand)]
    Policy(conditional::PolicyCommand),
    /// The keys that sign agents' JWT-SVIDs: rotate, list, retire.
    #[command(subcommand)]
    JwtKey(jwt_key::JwtKeyCommand),
    /// The certificate authorities (server, host and SVID certificates): rotate, list, bundle,
    /// retire.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Show the role and principal of the token in use.
    Whoami,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            if let Some(status) = err.downcast_ref::<Status>() {
                eprintln!("error: {:?}: {}", status.code(), status.message());
            } else {
                eprintln!("error: {err:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let clients = Clients::connect(&cli.connection).await?;
    let out = Printer::new(cli.output);
    match cli.command {
        Command::Blueprint(command) => blueprint::blueprint(&clients, &out, command).await,
        Command::Agent(command) => agent::agent(&clients, &out, command).await,
        Command::Principal(command) => governance::principal(&clients, &out, command).await,
        Command::Alert(command) => governance::alerts(&clients, &out, command).await,
        Command::Sweep => governance::sweep(&clients, &out).await,
        Command::Access(command) => access::access(&clients, &out, command).await,
        Command::Audit(command) => audit::audit(&clients, &out, command).await,
        Command::Host(command) => host::host(&clients, &out, command).await,
        Command::Policy(command) => conditional::policy(&clients, &out, command).await,
        Command::Token(command) => token::token(&clients, &out, command).await,
        Command::JwtKey(command) => jwt_key::jwt_key(&clients, &out, command).await,
        Command::Ca(command) => ca::ca(&clients, &out, command).await,
        Command::Whoami => token::whoami(&clients, &out).await,
    }
}

#[cfg(test)]
mod tests {
    use agentd_control::auth::Method;
    use clap::CommandFactory as _;

    use super::Cli;

    /// The agentctl command for each gRPC method.
    fn command_for(method: Method) -> &'static [&'static str] {
        match method {
            Method::CreateBlueprint => &["blueprint", "create"],
            Method::GetBlueprint => &["blueprint", "get"],
            Method::ListBlueprints => &["blueprint", "list"],
            Method::UpdateBlueprint => &["blueprint", "update"],
            Method::DeleteBlueprint => &["blueprint", "delete"],
            Method::CreateAgent => &["agent", "create"],
            Method::GetAgent => &["agent", "get"],
            Method::ListAgents => &["agent", "list"],
            Method::UpdateAgent => &["agent", "update"],
            Method::DeleteAgent => &["agent", "delete"],
            Method::EnableAgent => &["agent", "enable"],
            Method::DisableAgent => &["agent", "disable"],
            Method::ReconfirmAgent => &["agent", "reconfirm"],
            Method::AddPrincipal => &["principal", "add"],
            Method::RemovePrincipal => &["principal", "remove"],
            Method::ListAlerts => &["alert", "list"],
            Method::RunSweep => &["sweep"],
            Method::RequestAccessPackage => &["access", "request"],
            Method::ApproveAccessPackage => &["access", "approve"],
            Method::DenyAccessPackage => &["access", "deny"],
            Method::RevokeAccessPackage => &["access", "revoke"],
            Method::GetAccessPackage => &["access", "get"],
            Method::ListAccessPackages => &["access", "list"],
            Method::ListAuditEvents => &["audit", "list"],
            Method::CreateJoinToken => &["host", "join-token"],
            Method::EnrollHost => &["host", "enroll"],
            Method::Heartbeat => &["host", "heartbeat"],
            Method::ReportAgents => &["host", "report"],
            Method::GetHost => &["host", "get"],
            Method::ListHosts => &["host", "list"],
            Method::RevokeHost => &["host", "revoke"],
            Method::CreateApiToken => &["token", "create"],
            Method::ListApiTokens => &["token", "list"],
            Method::RevokeApiToken => &["token", "revoke"],
            Method::WhoAmI => &["whoami"],
            Method::SetHostLabels => &["host", "labels"],
            Method::WatchDecisions => &["host", "watch"],
            Method::AckDecisions => &["host", "ack"],
            Method::ReportDetections => &["host", "detect"],
            Method::SignAgentSvid => &["host", "sign-svid"],
            Method::SignAgentJwt => &["host", "sign-jwt"],
            Method::GetJwtBundle => &["host", "jwt-bundle"],
            Method::RenewHostCertificate => &["host", "renew-cert"],
            Method::CreatePolicy => &["policy", "create"],
            Method::UpdatePolicy => &["policy", "update"],
            Method::GetPolicy => &["policy", "get"],
            Method::ListPolicies => &["policy", "list"],
            Method::ListPolicyVersions => &["policy", "versions"],
            Method::DeletePolicy => &["policy", "delete"],
            Method::SetPolicyState => &["policy", "set-state"],
            Method::WhatIf => &["policy", "what-if"],
            Method::GetAgentRisk => &["agent", "risk"],
            Method::ListDetections => &["agent", "detections"],
            Method::ConfirmAgentCompromised => &["agent", "confirm-compromised"],
            Method::ConfirmAgentSafe => &["agent", "confirm-safe"],
            Method::RotateJwtSigningKey => &["jwt-key", "rotate"],
            Method::ListJwtSigningKeys => &["jwt-key", "list"],
            Method::RetireJwtSigningKey => &["jwt-key", "retire"],
            Method::RotateCertificateAuthority => &["ca", "rotate"],
            Method::ListCertificateAuthorities => &["ca", "list"],
            Method::RetireCertificateAuthority => &["ca", "retire"],
        }
    }

    #[test]
    fn every_grpc_method_has_a_documented_command() {
        let cli = Cli::command();
        for &method in Method::ALL {
            let mut command = &cli;
            for name in command_for(method) {
                command = command.find_subcommand(name).unwrap_or_else(|| {
                    panic!(
                        "{method:?}: agentctl has no `{}`",
                        command_for(method).join(" ")
                    )
                });
            }
            let about = command
                .get_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                !about.is_empty(),
                "{method:?}: `{}` has no help text",
                command.get_name()
            );
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
