//! The host tier: real eBPF on the running kernel, as root. Run with
//! `cargo xtask test --tier host`.

mod exec;
mod files;
mod identity;
mod kernel_btf;
mod network;
mod run;

use std::path::PathBuf;

/// The test helper binary; inside the vm tier it is installed beside the test binaries and
/// named in `AGENTD_TEST_HELPER`.
fn helper() -> PathBuf {
    std::env::var_os("AGENTD_TEST_HELPER").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_agentd-test-helper")),
        PathBuf::from,
    )
}
