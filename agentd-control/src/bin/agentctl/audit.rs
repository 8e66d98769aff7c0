//! agentctl's audit commands: list the log, and verify its hash chain.

use std::path::{Path, PathBuf};

use agentd_control::{
    audit_chain::{Content, Entry, Head, Link, Verifier},
    proto,
};
use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::{
    client::{Clients, call},
    output::Printer,
};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// List audit events in order.
    List {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// blueprint, agent, access_package, host, join_token, api_token, policy, agent_risk or
        /// detection.
        #[arg(long)]
        target_type: Option<String>,
        #[arg(long)]
        target_id: Option<String>,
        /// e.g. "alice@example.com (sponsor)".
        #[arg(long)]
        actor: Option<String>,
    },
    /// Verify the audit log's hash chain from its first event: every event follows the one
    /// before it and digests to what it records, and the log still holds the head the server
    /// stored (and the one in --checkpoint). Exits non-zero naming the first bad event.
    Verify {
        /// A checkpoint file (JSON: {"entries": N, "digest": "..."}) from an earlier verify:
        /// the log must still hold that entry with that digest. Written with the verified head
        /// afterwards (created if missing). Keep it where the database's administrators cannot
        /// write.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// A head noted elsewhere, as ENTRIES:DIGEST (e.g. the chain_index and digest of the
        /// export file's last line): the log must still hold that entry with that digest.
        #[arg(long, value_name = "ENTRIES:DIGEST", value_parser = parse_head)]
        expect: Option<Head>,
    },
}

fn parse_head(text: &str) -> Result<Head, String> {
    let (entries, digest) = text
        .split_once(':')
        .ok_or("expected ENTRIES:DIGEST, e.g. 15:4f0c...")?;
    let entries = entries
        .parse()
        .map_err(|err| format!("ENTRIES {entries:?}: {err}"))?;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("DIGEST {digest:?} is not 64 hex digits"));
    }
    Ok(Head {
        entries,
        digest: digest.to_ascii_lowercase(),
    })
}

pub async fn audit(clients: &Clients, out: &Printer, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List {
            after,
            limit,
            target_type,
            target_id,
            actor,
        } => {
            let response = call(
                clients
                    .audit()
                    .list_audit_events(proto::ListAuditEventsRequest {
                        after_sequence: after,
                        page_size: limit,
                        target_type: target_type.unwrap_or_default(),
                        target_id: target_id.unwrap_or_default(),
                        actor: actor.unwrap_or_default(),
                    }),
            )
            .await?;
            out.audit(&response)
        }
        AuditCommand::Verify { checkpoint, expect } => {
            verify(clients, out, checkpoint.as_deref(), expect).await
        }
    }
}

fn read_checkpoint(path: &Path) -> anyhow::Result<Option<Head>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("reading the checkpoint {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

const PAGE: u32 = 1000;

async fn verify(
    clients: &Clients,
    out: &Printer,
    checkpoint: Option<&Path>,
    expect: Option<Head>,
) -> anyhow::Result<()> {
    let saved = checkpoint.map(read_checkpoint).transpose()?.flatten();
    let mut verifier = Verifier::default();
    for anchor in saved.iter().chain(&expect) {
        verifier.watch(anchor.entries);
    }
    let mut server_head = None;
    let mut after = 0;
    let mut events = 0u64;
    loop {
        let response = call(
            clients
                .audit()
                .list_audit_events(proto::ListAuditEventsRequest {
                    after_sequence: after,
                    page_size: PAGE,
                    ..Default::default()
                }),
        )
        .await?;
        if server_head.is_none() {
            let head = response.head.clone().unwrap_or_default();
            let head = Head {
                entries: head.entries,
                digest: head.digest,
            };
            verifier.watch(head.entries);
            server_head = Some(head);
        }
        for event in &response.events {
            let previous =
                (!event.previous_json.is_empty()).then_some(event.previous_json.as_str());
            let current = (!event.current_json.is_empty()).then_some(event.current_json.as_str());
            verifier.push(&Entry {
                sequence: event.sequence,
                content: Content {
                    at: event.time.as_ref().map_or(0, |t| t.seconds),
                    actor: &event.actor,
                    action: &event.action,
                    target_type: &event.target_type,
                    target_id: &event.target_id,
                    previous,
                    current,
                },
                chain: (event.chain_index != 0).then_some(Link {
                    index: event.chain_index,
                    previous_digest: &event.previous_digest,
                    digest: &event.digest,
                }),
            })?;
            events += 1;
            after = event.sequence;
        }
        if response.events.len() < PAGE as usize {
            break;
        }
    }
    verifier.check("the server's head", &server_head.unwrap_or_default())?;
    if let Some(saved) = &saved {
        verifier.check("the checkpoint", saved)?;
    }
    if let Some(expect) = &expect {
        verifier.check("--expect", expect)?;
    }
    let head = verifier.head();
    if let Some(path) = checkpoint {
        let text = serde_json::to_string(&head).expect("a head serializes");
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the checkpoint {}", path.display()))?;
    }
    if events == 0 && head.entries == 0 && verifier.legacy_entries() == 0 {
        bail!("the audit log is empty: nothing to verify (every control plane has events)");
    }
    out.done(
        &proto::AuditChainHead {
            entries: head.entries,
            digest: head.digest.clone(),
        },
        &format!(
            "audit log intact: {} chained events ({} from before the chain, sealed by the genesis \
             digest); head {} {}",
            head.entries,
            verifier.legacy_entries(),
            head.entries,
            head.digest
        ),
    )
}
