//! The host tier: real eBPF on the running kernel, as root. Run with
//! `cargo xtask test --tier host`.

mod access;
mod boot;
mod evasion_dns;
mod evasion_net;
mod exec;
mod files;
mod identity;
mod kernel_btf;
mod network;
mod protect;
mod restart;
mod risk;
mod run;
mod tags;

use std::path::PathBuf;

fn helper() -> PathBuf {
    agentd_tests::test_helper(env!("CARGO_BIN_EXE_agentd-test-helper"))
}
