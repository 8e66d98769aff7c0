//! agentctl's Conditional Access commands: policies and what-if, agent risk, and the host side
//! of decisions (watch, ack, detections, labels).

use std::path::PathBuf;

use agentd_control::proto;
use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use tonic::Code;

use crate::{
    client::{Clients, call},
    output::Printer,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum PolicyStateArg {
    Enabled,
    ReportOnly,
    Disabled,
}

impl PolicyStateArg {
    fn proto(self) -> proto::PolicyState {
        match self {
            Self::Enabled => proto::PolicyState::Enabled,
            Self::ReportOnly => proto::PolicyState::ReportOnly,
            Self::Disabled => proto::PolicyState::Disabled,
        }
    }
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Create a policy from a YAML file, or update the policy of the same name (a new
    /// version). See docs/conditional-access.md for the document.
    Apply {
        /// The YAML document ("-" for stdin).
        file: PathBuf,
    },
    /// Create a policy from a YAML file (fails if the name exists).
    Create { file: PathBuf },
    /// Replace a policy's document with a YAML file (a new version).
    Update {
        file: PathBuf,
        /// The policy's id or name (default: the document's name).
        #[arg(long)]
        id: Option<String>,
        /// Only if the policy is still at this version (else ABORTED, naming the current one).
        #[arg(long)]
        expected_version: Option<u32>,
    },
    /// Show a policy (its document with --yaml).
    Get {
        /// Id or name.
        id: String,
        /// A stored version (default: the latest).
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// Print the YAML document only.
        #[arg(long)]
        yaml: bool,
    },
    /// List policies.
    List,
    /// List every stored version of a policy.
    Versions { id: String },
    /// Delete a policy (its versions stay in the audit log).
    Delete {
        id: String,
        /// Only if the policy is still at this version (else ABORTED, naming the current one).
        #[arg(long)]
        expected_version: Option<u32>,
    },
    /// Set a policy's state: enabled, report-only or disabled (a new version).
    SetState {
        id: String,
        #[arg(value_enum)]
        state: PolicyStateArg,
        /// Only if the policy is still at this version (else ABORTED, naming the current one).
        #[arg(long)]
        expected_version: Option<u32>,
    },
    /// Explain which policies apply to an agent and why, and the resulting decision,
    /// optionally under a hypothetical risk level, host or time. Changes nothing.
    WhatIf {
        /// The agent's id or name.
        agent: String,
        /// Hypothetical risk level.
        #[arg(long, value_parser = ["none", "low", "medium", "high"])]
        risk: Option<String>,
        /// Evaluate on this host (id or hostname).
        #[arg(long)]
        host: Option<String>,
        /// Evaluate at this time: RFC 3339 (2026-11-30T09:30:00Z) or +DURATION from now.
        #[arg(long, value_parser = crate::args::parse_when)]
        at: Option<prost_types::Timestamp>,
    },
}

fn read_document(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        return std::io::read_to_string(std::io::stdin()).context("reading the policy from stdin");
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

#[allow(
    clippy::too_many_lines,
    reason = "one arm per policy command: splitting it would scatter the CLI"
)]
pub async fn policy(
    clients: &Clients,
    out: &Printer,
    command: PolicyCommand,
) -> anyhow::Result<()> {
    let mut client = clients.policy();
    match command {
        PolicyCommand::Apply { file } => {
            let yaml = read_document(&file)?;
            match client
                .create_policy(proto::CreatePolicyRequest { yaml: yaml.clone() })
                .await
            {
                Ok(response) => {
                    let response = response.into_inner();
                    out.policies(&response, response.policy.as_slice())
                }
                Err(status) if status.code() == Code::AlreadyExists => {
                    let response = call(client.update_policy(proto::UpdatePolicyRequest {
                        id: String::new(),
                        yaml,
                        expected_version: 0,
                    }))
                    .await?;
                    out.policies(&response, response.policy.as_slice())
                }
                Err(status) => Err(status.into()),
            }
        }
        PolicyCommand::Create { file } => {
            let response = call(client.create_policy(proto::CreatePolicyRequest {
                yaml: read_document(&file)?,
            }))
            .await?;
            out.policies(&response, response.policy.as_slice())
        }
        PolicyCommand::Update {
            file,
            id,
            expected_version,
        } => {
            let response = call(client.update_policy(proto::UpdatePolicyRequest {
                id: id.unwrap_or_default(),
                yaml: read_document(&file)?,
                expected_version: expected_version.unwrap_or_default(),
            }))
            .await?;
            out.policies(&response, response.policy.as_slice())
        }
        PolicyCommand::Get { id, version, yaml } => {
            let response = call(client.get_policy(proto::GetPolicyRequest { id, version })).await?;
            if yaml {
                print!(
                    "{}",
                    response.policy.as_ref().map_or("", |p| p.yaml.as_str())
                );
                return Ok(());
            }
            out.policies(&response, response.policy.as_slice())
        }
        PolicyCommand::List => {
            let response = call(client.list_policies(proto::ListPoliciesRequest {})).await?;
            out.policies(&response, &response.policies)
        }
        PolicyCommand::Versions { id } => {
            let response =
                call(client.list_policy_versions(proto::ListPolicyVersionsRequest { id })).await?;
            out.policies(&response, &response.versions)
        }
        PolicyCommand::Delete {
            id,
            expected_version,
        } => {
            let response = call(client.delete_policy(proto::DeletePolicyRequest {
                id: id.clone(),
                expected_version: expected_version.unwrap_or_default(),
            }))
            .await?;
            out.done(&response, &format!("deleted policy {id}"))
        }
        PolicyCommand::SetState {
            id,
            state,
            expected_version,
        } => {
            let response = call(client.set_policy_state(proto::SetPolicyStateRequest {
                id,
                state: state.proto().into(),
                expected_version: expected_version.unwrap_or_default(),
            }))
            .await?;
            out.policies(&response, response.policy.as_slice())
        }
        PolicyCommand::WhatIf {
            agent,
            risk,
            host,
            at,
        } => {
            let response = call(client.what_if(proto::WhatIfRequest {
                agent,
                risk_level: risk.unwrap_or_default(),
                host: host.unwrap_or_default(),
                eval_time: at,
            }))
            .await?;
            out.what_if(&response)
        }
    }
}

/// Agent risk commands, under `agentctl agent`.
pub async fn risk(clients: &Clients, out: &Printer, command: RiskCommand) -> anyhow::Result<()> {
    let mut client = clients.risk();
    match command {
        RiskCommand::Risk { id } => {
            let response =
                call(client.get_agent_risk(proto::GetAgentRiskRequest { agent_id: id })).await?;
            out.risks(&response, response.risk.as_slice())
        }
        RiskCommand::Detections { id, limit } => {
            let response = call(client.list_detections(proto::ListDetectionsRequest {
                agent_id: id.unwrap_or_default(),
                limit,
            }))
            .await?;
            out.detections(&response)
        }
        RiskCommand::ConfirmCompromised { id, reason } => {
            let response = call(client.confirm_agent_compromised(
                proto::ConfirmAgentCompromisedRequest {
                    agent_id: id,
                    reason,
                },
            ))
            .await?;
            out.risks(&response, response.risk.as_slice())
        }
        RiskCommand::ConfirmSafe { id, reason } => {
            let response = call(client.confirm_agent_safe(proto::ConfirmAgentSafeRequest {
                agent_id: id,
                reason,
            }))
            .await?;
            out.risks(&response, response.risk.as_slice())
        }
    }
}

/// The risk subcommands of `agentctl agent`.
#[derive(Subcommand)]
pub enum RiskCommand {
    /// Show an agent's aggregated risk (across hosts) and the latest confirmation.
    Risk { id: String },
    /// List detections reported by hosts, newest first.
    Detections {
        /// Only this agent's.
        id: Option<String>,
        /// At most this many (default 100).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Confirm an agent compromised: its risk is high until confirmed safe.
    ConfirmCompromised {
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Confirm an agent safe: clears a compromised confirmation and ignores earlier
    /// detections.
    ConfirmSafe {
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

/// The decision subcommands of `agentctl host` (host token).
#[derive(Subcommand)]
pub enum HostDecisionCommand {
    /// Replace a host's labels (policies select hosts by label).
    Labels {
        id: String,
        /// A label KEY=VALUE (repeatable; none clears them).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::args::parse_key_value)]
        labels: Vec<(String, String)>,
    },
    /// Watch this host's decisions as this host: prints each decision set as it arrives.
    Watch {
        /// The version already held (0: print the current set at once).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Stop after this many sets (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u32,
        /// Acknowledge each set as applied.
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge a decision version as applied on this host.
    Ack { version: u64 },
    /// Report a detection on this host.
    Detect {
        agent_id: String,
        /// The rule that fired.
        #[arg(long)]
        rule: String,
        #[arg(long, value_parser = ["low", "medium", "high"])]
        severity: String,
        #[arg(long, default_value = "")]
        summary: String,
    },
    /// Have the control plane sign an X.509-SVID for an agent of this host, from a CSR for the
    /// agent's key (agentd does this itself; this is for checking the Conditional Access gate).
    /// Prints the certificate PEM; `--bundle` writes the trust bundle to a file.
    SignSvid {
        agent_id: String,
        /// A PKCS#10 CSR (PEM) for the agent's key, e.g. from `openssl req -new`.
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// Where to write the trust bundle (PEM).
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Have the control plane sign a JWT-SVID for an agent of this host (agentd does this
    /// itself for the Workload API; this is for checking the gate). Prints the token.
    SignJwt {
        agent_id: String,
        /// An audience the token is for (repeatable; at least one).
        #[arg(long = "audience", value_name = "AUDIENCE", required = true)]
        audiences: Vec<String>,
    },
    /// Print the JWKS that verifies agents' JWT-SVIDs.
    JwtBundle,
    /// Renew this host's mTLS client certificate from a CSR for its new key (agentd does this
    /// itself at half-life; this is for checking the call). Prints the new certificate PEM.
    RenewCert {
        /// A PKCS#10 CSR (PEM) for the host's new key, e.g. from `openssl req -new`.
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
    },
}

async fn sign_svid(
    clients: &Clients,
    out: &Printer,
    agent_id: String,
    csr: &std::path::Path,
    bundle: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let csr_pem = std::fs::read_to_string(csr)
        .with_context(|| format!("reading the CSR {}", csr.display()))?;
    let response = call(
        clients
            .host()
            .sign_agent_svid(proto::SignAgentSvidRequest { agent_id, csr_pem }),
    )
    .await?;
    if let Some(bundle) = bundle {
        std::fs::write(bundle, &response.bundle_pem)
            .with_context(|| format!("writing the bundle {}", bundle.display()))?;
    }
    out.done(&response, response.certificate_pem.trim_end())
}

pub async fn host_decisions(
    clients: &Clients,
    out: &Printer,
    command: HostDecisionCommand,
) -> anyhow::Result<()> {
    let mut client = clients.host();
    match command {
        HostDecisionCommand::Labels { id, labels } => {
            let response = call(client.set_host_labels(proto::SetHostLabelsRequest {
                id,
                labels: labels.into_iter().collect(),
            }))
            .await?;
            out.hosts(&response, response.host.as_slice())
        }
        HostDecisionCommand::Watch { after, count, ack } => {
            let mut stream = call(client.watch_decisions(proto::WatchDecisionsRequest {
                after_version: after,
            }))
            .await?;
            let mut seen = 0u32;
            while let Some(message) = stream.message().await? {
                let Some(set) = message.decision_set else {
                    continue;
                };
                out.decision_set(&set)?;
                if ack {
                    client
                        .ack_decisions(proto::AckDecisionsRequest {
                            version: set.version,
                        })
                        .await?;
                }
                seen += 1;
                if count > 0 && seen >= count {
                    break;
                }
            }
            Ok(())
        }
        HostDecisionCommand::Ack { version } => {
            let response =
                call(client.ack_decisions(proto::AckDecisionsRequest { version })).await?;
            out.done(
                &response,
                &format!("acknowledged decision version {version}"),
            )
        }
        HostDecisionCommand::Detect {
            agent_id,
            rule,
            severity,
            summary,
        } => {
            let response = call(client.report_detections(proto::ReportDetectionsRequest {
                detections: vec![proto::HostDetection {
                    agent_id: agent_id.clone(),
                    rule,
                    severity,
                    detect_time: None,
                    summary,
                }],
            }))
            .await?;
            let level = response
                .risk_levels
                .get(&agent_id)
                .cloned()
                .unwrap_or_default();
            out.done(
                &response,
                &format!("reported; agent {agent_id} risk is now {level}"),
            )
        }
        HostDecisionCommand::SignSvid {
            agent_id,
            csr,
            bundle,
        } => sign_svid(clients, out, agent_id, &csr, bundle.as_deref()).await,
        HostDecisionCommand::SignJwt {
            agent_id,
            audiences,
        } => {
            let response = call(client.sign_agent_jwt(proto::SignAgentJwtRequest {
                agent_id,
                audience: audiences,
            }))
            .await?;
            out.done(&response, &response.token)
        }
        HostDecisionCommand::JwtBundle => {
            let response = call(client.get_jwt_bundle(proto::GetJwtBundleRequest {})).await?;
            out.done(&response, &response.jwks_json)
        }
        HostDecisionCommand::RenewCert { csr } => {
            let csr_pem = std::fs::read_to_string(&csr)
                .with_context(|| format!("reading the CSR {}", csr.display()))?;
            let response =
                call(client.renew_host_certificate(proto::RenewHostCertificateRequest { csr_pem }))
                    .await?;
            out.done(&response, response.certificate_pem.trim_end())
        }
    }
}
