//! The vm tier: hooks this machine's kernel refuses (BPF LSM), run inside a distribution kernel
//! booted by `cargo xtask vm-test`.

mod files;
mod lsm;
