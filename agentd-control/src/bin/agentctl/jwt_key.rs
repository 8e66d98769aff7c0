//! `agentctl jwt-key`: the keys that sign agents' JWT-SVIDs, rotated with an overlap and
//! retired once their tokens have expired.

use agentd_control::proto;
use clap::Subcommand;

use crate::{
    client::{Clients, call},
    output::{Printer, enum_name, table, time},
};

#[derive(Subcommand)]
pub(crate) enum JwtKeyCommand {
    /// Add a new signing key: published at once, signing after --activate-after (the key that
    /// signed before stays published, so its tokens keep verifying).
    Rotate {
        /// How long until the new key signs, e.g. 10m or 0s (default 10m: hosts fetch the
        /// JWKS every 30 s, relying parties commonly every few minutes; at most 7d).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        activate_after: Option<std::time::Duration>,
    },
    /// List every key, retired ones too, with its state.
    List,
    /// Retire a key: it leaves the JWKS and its private key is erased. Refused for the key that
    /// signs, and for 24 h after a key stopped signing unless --force.
    Retire {
        /// The key's id (the `kid` of `jwt-key list`).
        kid: String,
        /// Retire it although tokens it signed may still be valid (a compromised key): they
        /// stop verifying at once.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) async fn jwt_key(
    clients: &Clients,
    out: &Printer,
    command: JwtKeyCommand,
) -> anyhow::Result<()> {
    let mut client = clients.credential();
    match command {
        JwtKeyCommand::Rotate { activate_after } => {
            let activate_after_seconds =
                activate_after.map(|after| u32::try_from(after.as_secs()).unwrap_or(u32::MAX));
            let response = call(
                client.rotate_jwt_signing_key(proto::RotateJwtSigningKeyRequest {
                    activate_after_seconds,
                }),
            )
            .await?;
            keys(out, &response, response.key.as_slice())
        }
        JwtKeyCommand::List => {
            let response =
                call(client.list_jwt_signing_keys(proto::ListJwtSigningKeysRequest {})).await?;
            keys(out, &response, &response.keys)
        }
        JwtKeyCommand::Retire { kid, force } => {
            let response = call(
                client.retire_jwt_signing_key(proto::RetireJwtSigningKeyRequest { kid, force }),
            )
            .await?;
            keys(out, &response, response.key.as_slice())
        }
    }
}

fn keys<M: prost::Message + prost::Name>(
    out: &Printer,
    message: &M,
    keys: &[proto::JwtSigningKey],
) -> anyhow::Result<()> {
    if out.json(message)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                key.kid.clone(),
                key.algorithm.clone(),
                enum_name(key.state().as_str_name(), "JWT_KEY_STATE_"),
                time(key.create_time.as_ref()),
                time(key.activate_time.as_ref()),
                time(key.supersede_time.as_ref()),
                time(key.retire_time.as_ref()),
            ]
        })
        .collect();
    table(
        &[
            "KID",
            "ALG",
            "STATE",
            "CREATED",
            "SIGNS FROM",
            "SUPERSEDED",
            "RETIRED",
        ],
        &rows,
    );
    Ok(())
}
