//! The vm tier: hooks this machine's kernel refuses (BPF LSM), run inside a distribution kernel
//! booted by `cargo xtask vm-test`.

mod access;
mod disk_fs;
mod exec;
mod files;
mod files_held;
mod files_namespace;
mod files_reach;
mod lsm;
mod scratch_fs;
mod tags;

fn helper() -> std::path::PathBuf {
    agentd_tests::test_helper(env!("CARGO_BIN_EXE_agentd-test-helper"))
}
