use which::which;

/// The eBPF object is linked by `bpf-linker`, which cargo does not know about. Rebuild when the
/// linker binary changes, so that installing a different bpf-linker is not silently ignored.
fn main() {
    match which("bpf-linker") {
        Ok(bpf_linker) => println!("cargo:rerun-if-changed={}", bpf_linker.display()),
        Err(err) => {
            // The host-side build of this crate (as agentd's build-dependency) needs no linker;
            // the bpfel build fails later with the linker's own error. Say what to do now.
            println!("cargo:warning=bpf-linker not found ({err}): run `cargo xtask setup`");
            println!("cargo:rerun-if-env-changed=PATH");
        }
    }
}
