//! What `agentd-bench` shares with its criterion benchmark (`cargo bench -p agentd-bench`): the
//! generated Conditional Access policy set of rows 6 and 7.

pub mod policy_set;
