//! `cargo xtask setup`: installs what the build and the tests need, from Debian's packages,
//! crates.io and rustup components of installed toolchains. Every step checks first and says
//! whether it installed or skipped.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{cmd, vm::KernelSpec};

/// The nightly toolchain that builds the eBPF programs (the machine's own; rustup cannot fetch
/// another one here).
pub const NIGHTLY: &str = "nightly";
/// bpf-linker must use the LLVM that nightly rustc emits bitcode for (LLVM 22); 0.10.3 links
/// rustc's own libLLVM. 0.11+ default to an external LLVM 23.
pub const BPF_LINKER_VERSION: &str = "0.10.3";
/// cargo-fuzz, which builds and runs the fuzz targets in `fuzz/` (the fuzz tier).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Debian packages the tiers need: QEMU for the vm tier, a static busybox and cpio for its
/// initramfs (with depmod and mkfs.ext4 below), binutils to strip test binaries before they go into it, and PostgreSQL for the
/// control tier (its tests start their own server on loopback; the package's own cluster is
/// not used).
const DEB_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // xz, for the guest kernel modules that newer Debian kernels ship compressed.
    "xz-utils",
    "binutils",
    // depmod, which writes the module index Debian's kernel packages leave to their postinst,
    // so the guests load their modules' dependencies.
    "kmod",
    // mkfs.ext4 for the guests, whose tests put ext4 on a loop device.
    "e2fsprogs",
    "postgresql",
    // openssl s_client, a TLS client the control tier's connection tests drive.
    "openssl",
    // systemd-analyze, which checks the units `cargo xtask install` lays down.
    "systemd",
    // The virtual environment of the Python test clients (`PYTHON_PACKAGES`).
    "python3-venv",
];

/// Python packages the tests drive as real clients that no one here wrote, in a virtual
/// environment under the cache (`python_venv`): PyJWT, a relying party that verifies agents'
/// JWT-SVIDs through the control plane's OIDC discovery, and py-spiffe, a Workload API client.
const PYTHON_PACKAGES: &[&str] = &["PyJWT[crypto]==2.15.1", "spiffe==0.3.2"];

/// What the vm-systemd tier needs on top: mmdebstrap, which builds its Debian root file system.
const VM_SYSTEMD_PACKAGES: &[&str] = &["mmdebstrap"];

#[derive(Debug, Default)]
pub struct Options {
    /// Kernels to fetch for the vm tier; none means "skip kernels".
    pub kernels: Vec<KernelSpec>,
    /// Install mmdebstrap and build (once) the vm-systemd tier's root file system.
    pub vm_systemd: bool,
    /// Install cargo-fuzz for the fuzz targets.
    pub fuzz: bool,
}

/// State shared by the steps: `apt-get update` runs at most once per setup.
struct Apt {
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> anyhow::Result<()> {
        if !self.updated {
            cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }
}

fn deb_installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.contains("install ok installed"))
}

fn install_debs(apt: &mut Apt, packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !deb_installed(package))
        .collect();
    if missing.is_empty() {
        println!(
            "setup: Debian packages {} already installed",
            packages.join(", ")
        );
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "Debian packages {} are missing: run `cargo xtask setup` as root",
            missing.join(", ")
        );
    }
    println!("setup: installing Debian packages {}", missing.join(", "));
    apt.update()?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_rust_src() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .with_context(|| {
        format!(
            "the `{NIGHTLY}` toolchain is required to build the eBPF programs and is not installed"
        )
    })?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: rust-src for {NIGHTLY} already installed");
        return Ok(());
    }
    println!("setup: installing rust-src for {NIGHTLY}");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let version = cmd::output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} already installed");
        return Ok(());
    }
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} (found: {})",
        if version.is_empty() {
            "none"
        } else {
            version.trim()
        }
    );
    cmd::run(Command::new("cargo").args([
        &format!("+{NIGHTLY}"),
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}

fn install_cargo_fuzz() -> anyhow::Result<()> {
    let version =
        cmd::output(Command::new("cargo").args([&format!("+{NIGHTLY}"), "fuzz", "--version"]))
            .unwrap_or_default();
    if version.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION) {
        println!("setup: cargo-fuzz {CARGO_FUZZ_VERSION} already installed");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    cmd::run(Command::new("cargo").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
        "--force",
    ]))
}

/// Resolves each kernel to a Debian package and makes sure its vmlinuz is in the cache.
fn install_kernels(apt: &mut Apt, kernels: &[KernelSpec]) -> anyhow::Result<()> {
    for spec in kernels {
        let package = match spec.resolve() {
            Ok(package) => package,
            Err(first) => {
                // A fresh machine has no package lists yet.
                apt.update()?;
                spec.resolve().map_err(|err| err.context(first))?
            }
        };
        if let Some(vmlinuz) = crate::vm::cached_vmlinuz(&package)? {
            println!(
                "setup: kernel {package} already cached at {}",
                vmlinuz.display()
            );
            continue;
        }
        println!("setup: fetching kernel {package} for the vm tier");
        crate::vm::fetch_kernel(&package)?;
    }
    Ok(())
}

/// The Python test clients' virtual environment: `venv` in the cache directory
/// (`~/.cache/agentd/venv` unless `AGENTD_CACHE_DIR` says otherwise).
pub fn python_venv() -> anyhow::Result<std::path::PathBuf> {
    Ok(crate::workspace::cache_dir()?.join("venv"))
}

/// Creates the virtual environment and installs `PYTHON_PACKAGES` into it, unless a stamp
/// says this list is installed already.
fn install_python_packages() -> anyhow::Result<()> {
    let venv = python_venv()?;
    let stamp = venv.join("agentd-packages");
    let wanted = PYTHON_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        println!(
            "setup: Python packages {} already installed in {}",
            PYTHON_PACKAGES.join(", "),
            venv.display()
        );
        return Ok(());
    }
    println!(
        "setup: installing Python packages {} into {}",
        PYTHON_PACKAGES.join(", "),
        venv.display()
    );
    cmd::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let mut apt = Apt { updated: false };
    install_debs(&mut apt, DEB_PACKAGES)?;
    install_python_packages()?;
    install_rust_src()?;
    install_bpf_linker()?;
    install_kernels(&mut apt, &options.kernels)?;
    if options.vm_systemd {
        install_debs(&mut apt, VM_SYSTEMD_PACKAGES)?;
        crate::vm_systemd::ensure_rootfs()?;
    }
    if options.fuzz {
        install_cargo_fuzz()?;
    }
    println!("setup: done");
    Ok(())
}
