//! The host tier: real eBPF on the running kernel, as root. Run with
//! `cargo xtask test --tier host`.

mod exec;
mod files;
mod identity;
mod kernel_btf;
mod run;
