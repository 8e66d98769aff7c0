//! `agentctl ca`: the certificate authorities, rotated with an overlap and retired once the
//! certificates they signed have expired; `ca bundle` prints what clients should trust.

use agentd_control::proto;
use clap::Subcommand;

use crate::{
    client::{Clients, call},
    output::{Printer, enum_name, table, time},
};

#[derive(Subcommand)]
pub(crate) enum CaCommand {
    /// Add a new CA: trusted at once (hosts receive the new bundle with their next heartbeat),
    /// signing after --activate-after (the CAs before it stay trusted, so what they signed keeps
    /// working).
    Rotate {
        /// How long until the new CA signs, e.g. 1d or 0s (default 1d: every host has fetched
        /// the bundle before the server presents a certificate the new CA signed; at most 30d).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        activate_after: Option<std::time::Duration>,
    },
    /// List every CA, retired ones too, with its state and fingerprint.
    List,
    /// Print the trust bundle (every CA not retired, PEM), e.g. for `agentctl --ca-cert`.
    Bundle,
    /// Retire a CA: it leaves the trust bundle and its key is erased. Refused for the CA that
    /// signs, and until the certificates a superseded CA signed have expired unless --force.
    Retire {
        /// The CA's id (`ca list`).
        id: String,
        /// Retire it although certificates it signed may still be valid (a compromised CA):
        /// hosts and agents holding them are refused until they renew.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) async fn ca(clients: &Clients, out: &Printer, command: CaCommand) -> anyhow::Result<()> {
    let mut client = clients.credential();
    match command {
        CaCommand::Rotate { activate_after } => {
            let activate_after_seconds =
                activate_after.map(|after| u32::try_from(after.as_secs()).unwrap_or(u32::MAX));
            let response = call(client.rotate_certificate_authority(
                proto::RotateCertificateAuthorityRequest {
                    activate_after_seconds,
                },
            ))
            .await?;
            authorities(out, &response, response.authority.as_slice())
        }
        CaCommand::List => {
            let response = call(
                client.list_certificate_authorities(proto::ListCertificateAuthoritiesRequest {}),
            )
            .await?;
            authorities(out, &response, &response.authorities)
        }
        CaCommand::Bundle => {
            let response = call(
                client.list_certificate_authorities(proto::ListCertificateAuthoritiesRequest {}),
            )
            .await?;
            if !out.json(&response)? {
                print!("{}", response.bundle_pem);
            }
            Ok(())
        }
        CaCommand::Retire { id, force } => {
            let response = call(client.retire_certificate_authority(
                proto::RetireCertificateAuthorityRequest { id, force },
            ))
            .await?;
            authorities(out, &response, response.authority.as_slice())
        }
    }
}

fn authorities<M: prost::Message + prost::Name>(
    out: &Printer,
    message: &M,
    authorities: &[proto::CertificateAuthority],
) -> anyhow::Result<()> {
    if out.json(message)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = authorities
        .iter()
        .map(|ca| {
            vec![
                ca.id.clone(),
                enum_name(ca.state().as_str_name(), "CA_STATE_"),
                time(ca.activate_time.as_ref()),
                time(ca.supersede_time.as_ref()),
                time(ca.retire_time.as_ref()),
                time(ca.not_after.as_ref()),
                ca.sha256.chars().take(16).collect(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "SIGNS FROM",
            "SUPERSEDED",
            "RETIRED",
            "EXPIRES",
            "SHA256",
        ],
        &rows,
    );
    Ok(())
}
