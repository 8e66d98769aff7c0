//! Conditional Access on the host: the decisions the control plane streams (docs/conditional-access.md),
//! as agentd keeps them on disk and turns them into kernel tables.
//!
//! A decision never widens what the local policy allows: the network hooks apply it after the
//! local verdict, so deny wins. Grants carry their expiry into the kernel, which checks it on
//! every connect: a lapsed grant stops allowing even when agentd and the control plane are down.
//! File controls join the agents' local file rules in the same kernel entries, as a second layer
//! the file hooks judge after the local rule (deny wins), with their expiry checked on the hook.
//! What report-only policies would do to the network is a second layer of grant entries, flagged
//! report-only: the hooks report what it would deny and allow it.

mod model;
mod tables;
#[cfg(test)]
mod tests;
mod wire;

pub use self::{
    model::{
        Action, AgentDecision, Clocks, DecisionError, DecisionSet, Destination, FileControl, Grant,
        Offline, ReportOnlyNetwork, Standing,
    },
    tables::{CaTables, learned, merge_file_rules, tables},
};
