//! The vm tier: boots a Debian kernel with BPF LSM under QEMU, runs test binaries inside, and
//! carries their result out.
//!
//! The guest is an initramfs: a static busybox, `/init` (below), the test binaries with the
//! shared libraries `ldd` names, and the agentd binary. `/init` mounts the pseudo file systems
//! the programs need, runs every binary in `/tests` one test at a time, prints a result marker
//! and powers off. The host side tells apart a kernel that never booted, a run that timed out,
//! and tests that failed.

use std::{
    fmt::{self, Write as _},
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    str::FromStr,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, vm_modules, workspace};

/// Options of the vm tier.
#[derive(Clone, Debug)]
pub struct VmOptions {
    pub kernels: Vec<KernelSpec>,
    pub accel: Option<Accel>,
    pub timeout: Duration,
    /// Run only the tests whose names contain this.
    pub filter: Option<String>,
}

/// A kernel for the vm tier, as the user names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSpec {
    /// A Debian kernel series with a meta-package: `6.1` (Debian 12's default) or `6.12`.
    Series(String),
    /// An exact package name, such as `linux-image-6.1.0-56-amd64`.
    Package(String),
}

impl FromStr for KernelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("linux-image-") {
            Ok(Self::Package(s.to_owned()))
        } else if matches!(s, "6.1" | "6.12") {
            Ok(Self::Series(s.to_owned()))
        } else {
            Err(format!(
                "unknown kernel `{s}`: use 6.1, 6.12 or a package name like linux-image-6.1.0-56-amd64"
            ))
        }
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Series(s) | Self::Package(s) => f.write_str(s),
        }
    }
}

impl KernelSpec {
    /// The Debian package that holds this kernel, from the local package lists.
    pub fn resolve(&self) -> anyhow::Result<String> {
        let series = match self {
            Self::Package(package) => return Ok(package.clone()),
            Self::Series(series) => series,
        };
        // Debian 12's default kernel is 6.1 (`linux-image-amd64`); later series have their own
        // meta-package in the same archive.
        let meta = if series == "6.1" {
            "linux-image-amd64".to_owned()
        } else {
            format!("linux-image-{series}-amd64")
        };
        let depends = cmd::output(Command::new("apt-cache").args(["depends", &meta]))?;
        let prefix = format!("linux-image-{series}.");
        depends
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|package| package.starts_with(&prefix))
            .map(str::to_owned)
            .with_context(|| format!("no {prefix}* package behind {meta} in the package lists"))
    }
}

fn kernel_cache(package: &str) -> anyhow::Result<PathBuf> {
    Ok(workspace::cache_dir()?.join("kernels").join(package))
}

/// Written in a kernel's cache directory once its vmlinuz, the guest's modules and their index
/// are extracted: a cache from before (v1 kept the socket-diagnostics modules alone) is fetched
/// again by `cargo xtask setup --kernel ...`.
const CACHE_COMPLETE: &str = "modules-v2";

/// The cached vmlinuz of `package`, if it was fetched before (with its modules).
pub fn cached_vmlinuz(package: &str) -> anyhow::Result<Option<PathBuf>> {
    if !kernel_cache(package)?.join(CACHE_COMPLETE).exists() {
        return Ok(None);
    }
    let boot = kernel_cache(package)?.join("boot");
    let Ok(entries) = fs::read_dir(&boot) else {
        return Ok(None);
    };
    Ok(entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        }))
}

/// Downloads `package` with apt and keeps its vmlinuz, the guest's modules (with what they
/// depend on) and the module index in the cache.
pub fn fetch_kernel(package: &str) -> anyhow::Result<PathBuf> {
    let dest = kernel_cache(package)?;
    let download = tempfile::tempdir().context("creating a download directory")?;
    cmd::run(
        Command::new("apt-get")
            // The download directory is root's; apt's sandbox user could not write to it.
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(download.path()),
    )?;
    let deb = fs::read_dir(download.path())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let parent = dest.parent().context("cache path has a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Everything first, in a scratch directory beside the cache (a few hundred MB, removed at
    // the end): Debian's package has no modules.dep, depmod writes it from the modules.
    let scratch = tempfile::tempdir_in(parent)?;
    cmd::run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*' './lib/modules/*'",
        deb.display(),
        scratch.path().display(),
    )))?;
    let scratch_modules = vm_modules::version_dir(scratch.path())?;
    let version = scratch_modules
        .file_name()
        .and_then(|name| name.to_str())
        .context("kernel version directory name")?;
    cmd::run(
        Command::new("depmod")
            .arg("-b")
            .arg(scratch.path())
            .arg(version),
    )?;
    // Keep the vmlinuz, the index and the files of the guest's modules (with what they need).
    let staging = tempfile::tempdir_in(parent)?;
    let modules_dir = staging.path().join("lib/modules").join(version);
    fs::create_dir_all(&modules_dir)?;
    let boot = staging.path().join("boot");
    fs::create_dir_all(&boot)?;
    for entry in fs::read_dir(scratch.path().join("boot"))?.filter_map(Result::ok) {
        fs::rename(entry.path(), boot.join(entry.file_name()))?;
    }
    let index = vm_modules::ModuleIndex::read(&scratch_modules)?;
    let files = index.load_order(&vm_modules::GUEST_MODULES)?;
    for file in vm_modules::INDEX_FILES
        .iter()
        .copied()
        .map(str::to_owned)
        .chain(files)
    {
        let to = modules_dir.join(&file);
        fs::create_dir_all(to.parent().context("module file has a parent")?)?;
        fs::rename(scratch_modules.join(&file), &to)
            .with_context(|| format!("keeping {file} of {package}"))?;
    }
    drop(scratch);
    fs::write(staging.path().join(CACHE_COMPLETE), "")?;
    // Move into place only when complete, so an interrupted fetch is never taken as cached.
    let _ = fs::remove_dir_all(&dest);
    fs::rename(staging.keep(), &dest)
        .with_context(|| format!("moving kernel into {}", dest.display()))?;
    cached_vmlinuz(package)?.with_context(|| format!("{package} holds no boot/vmlinuz-*"))
}

/// Test binaries and other files to put in the guest.
pub struct Payload {
    /// Test executables; each lands in `/tests/<name>` and runs with `--test-threads=1`.
    pub tests: Vec<(String, PathBuf)>,
    /// The agentd binary, installed as `/bin/agentd` and named in `AGENTD_BIN`.
    pub agentd: PathBuf,
    /// Helper programs the tests run, installed as `/bin/<name>`.
    pub helpers: Vec<(String, PathBuf)>,
    /// Run only the tests whose names contain this (letters, digits, `_` and `:`).
    pub filter: Option<String>,
    /// A shell script to run instead of the tests; it prints [`RESULT_PASS`] or
    /// [`RESULT_FAIL`] itself.
    pub script: Option<String>,
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t securityfs securityfs /sys/kernel/security
@MODULES@ip link set lo up
echo "AGENTD-VM-BOOTED kernel=$(uname -r) lsm=$(cat /sys/kernel/security/lsm)"
export AGENTD_BIN=/bin/agentd AGENTD_TEST_HELPER=/bin/agentd-test-helper RUST_BACKTRACE=1 TMPDIR=/tmp
# Emulated CPUs are slow: the load tests run fewer iterations here (the host tier runs them whole).
export AGENTD_SWAP_CONNECTS=10000 AGENTD_SWAP_RATE=1000 AGENTD_RESTARTS=3
@BODY@
poweroff -f
"#;

/// What the guest runs by default: every test binary, then the result marker.
/// The host tests that the guests share out (an extended regex on `module::name`): those whose
/// enforcing branch needs BPF LSM, which the host tier's kernel refuses (the file sensor
/// and its probe, Conditional Access file controls, socket families). The
/// rest decide on the host's kernel what the Debian kernels do alike, and the host tier runs
/// them all; under TCG each agentd start costs 40-60 s, mostly the verifier.
const GUEST_HOST_TESTS: &str =
    "^files::|^access::decision_file_controls|^evasion_net::packet_and_other_socket_families";

const TESTS: &str = r#"status=0
for t in /tests/*; do
    [ -x "$t" ] || continue
    echo "AGENTD-VM-RUN $t"
    if [ "${t##*/}" = host ] && [ -n "@SHARD@" ]; then
        # This guest's share of the host tests whose enforcing branch needs BPF LSM (the host
        # tier runs them all on its own kernel, which refuses BPF LSM): under TCG each test
        # costs most of a minute, mostly agentd's start-up.
        names=$("$t" --list 2>/dev/null | sed -n 's/: test$//p' | grep -E '@GUEST_HOST@' | awk -v s=@SHARD@ -v n=@SHARDS@ '(NR - 1) % n == s')
        "$t" --test-threads=1 --exact $names || status=1
    else
        "$t" --test-threads=1 @FILTER@ || status=1
    fi
done
if [ "$status" = 0 ]; then echo "AGENTD-VM-RESULT PASS"; else echo "AGENTD-VM-RESULT FAIL"; fi
"#;

/// Used by the KVM probe: boots and powers off at once.
const PROBE_INIT: &str =
    "#!/bin/busybox sh\n/bin/busybox echo AGENTD-VM-BOOTED\n/bin/busybox poweroff -f\n";

/// The shared libraries `ldd` names for `binary`, as absolute paths.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    // A static binary makes ldd fail: it then needs no libraries.
    let out = cmd::output(Command::new("ldd").arg(binary)).unwrap_or_default();
    out.lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `from` to `root` + `to`, stripping debug info from ELF files to keep the image small.
fn install(root: &Path, from: &Path, to: &Path, strip: bool) -> anyhow::Result<()> {
    let dest = root.join(to.strip_prefix("/").unwrap_or(to));
    if dest.exists() {
        return Ok(());
    }
    fs::create_dir_all(dest.parent().context("destination has a parent")?)?;
    if strip {
        cmd::output(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&dest)
                .arg(from),
        )?;
    } else {
        fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

fn install_with_libraries(root: &Path, from: &Path, to: &Path) -> anyhow::Result<()> {
    install(root, from, to, true)?;
    for library in shared_libraries(from) {
        install(root, &library, &library, false)?;
    }
    Ok(())
}

/// Writes a newc cpio archive of `root` to `archive`.
pub fn cpio(root: &Path, archive: &Path) -> anyhow::Result<()> {
    cmd::output(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . -print0 | cpio --null --quiet -o -H newc > '{}'",
        root.display(),
        archive.display()
    )))?;
    Ok(())
}

fn busybox_root(root: &Path, init: &str) -> anyhow::Result<()> {
    install(
        root,
        Path::new("/bin/busybox"),
        Path::new("/bin/busybox"),
        false,
    )?;
    // `true` for tests that exec a program; the rest are linked by `busybox --install`.
    std::os::unix::fs::symlink("busybox", root.join("bin/true"))?;
    let init_path = root.join("init");
    fs::write(&init_path, init)?;
    cmd::output(Command::new("chmod").arg("755").arg(&init_path))?;
    Ok(())
}

/// The cached modules of `package` that the guest loads, in load order, as (name, file).
fn cached_modules(package: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    vm_modules::cached(&kernel_cache(package)?)
}

/// Puts `modules` in the guest's `/modules` (decompressed: busybox's insmod reads plain `.ko`)
/// and returns the init lines that load them.
fn install_modules(root: &Path, modules: &[(String, PathBuf)]) -> anyhow::Result<String> {
    let dir = root.join("modules");
    fs::create_dir_all(&dir)?;
    let mut lines = String::new();
    for (name, file) in modules {
        let dest = dir.join(format!("{name}.ko"));
        let decompress = match file.extension().and_then(|ext| ext.to_str()) {
            Some("xz") => Some("xz"),
            Some("zst") => Some("zstd"),
            Some("gz") => Some("gzip"),
            _ => None,
        };
        match decompress {
            Some(tool) => cmd::run(Command::new("sh").arg("-c").arg(format!(
                "{tool} -dc '{}' > '{}'",
                file.display(),
                dest.display()
            )))?,
            None => {
                fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
            }
        }
        let _ = writeln!(
            lines,
            "insmod /modules/{name}.ko || echo \"AGENTD-VM-MODULE-FAILED {name}\""
        );
    }
    // What the kernel holds now, for the boot log.
    lines.push_str("echo \"AGENTD-VM-MODULES $(cut -d' ' -f1 /proc/modules | tr '\\n' ' ')\"\n");
    Ok(lines)
}

/// The host's `mkfs.ext4` (e2fsprogs, which `cargo xtask setup` installs).
fn mkfs_ext4() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .context("no mkfs.ext4 on this host for the guest: run `cargo xtask setup` (e2fsprogs)")
}

/// Builds the test initramfs in `work` and returns its path.
pub fn build_initramfs(
    work: &Path,
    payload: &Payload,
    modules: &[(String, PathBuf)],
    shard: Option<Shard>,
) -> anyhow::Result<PathBuf> {
    let root = work.join("root");
    let filter = payload.filter.as_deref().unwrap_or("");
    anyhow::ensure!(
        filter
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "--filter takes letters, digits, `_` and `:` only"
    );
    let body = payload.script.clone().unwrap_or_else(|| {
        // A filter picks its tests itself: every guest runs all that match.
        let (index, count) = match shard {
            Some(Shard { index, count }) if filter.is_empty() && count > 1 => {
                (index.to_string(), count.to_string())
            }
            _ => (String::new(), String::new()),
        };
        TESTS
            .replace("@GUEST_HOST@", GUEST_HOST_TESTS)
            .replace("@FILTER@", filter)
            .replace("@SHARDS@", &count)
            .replace("@SHARD@", &index)
    });
    let insmod = install_modules(&root, modules)?;
    busybox_root(
        &root,
        &INIT.replace("@MODULES@", &insmod).replace("@BODY@", &body),
    )?;
    for (name, binary) in &payload.tests {
        install_with_libraries(&root, binary, &Path::new("/tests").join(name))?;
    }
    install_with_libraries(&root, &payload.agentd, Path::new("/bin/agentd"))?;
    // For tests that put an ext4 file system on a loop device: busybox's mke2fs makes ext2.
    install_with_libraries(&root, &mkfs_ext4()?, Path::new("/bin/mkfs.ext4"))?;
    for (name, binary) in &payload.helpers {
        install_with_libraries(&root, binary, &Path::new("/bin").join(name))?;
    }
    let archive = work.join("initramfs.cpio");
    cpio(&root, &archive)?;
    Ok(archive)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// How a VM run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest ran the tests; `passed` is the result marker.
    Finished { passed: bool },
    /// The kernel never reached `/init`'s boot marker.
    BootFailure(String),
    /// The guest booted but did not finish within the time limit.
    TimedOut(Duration),
}

/// What a run printed that the host needs.
pub struct Run {
    pub outcome: Outcome,
    /// The guest's console, line by line.
    pub console: Vec<String>,
}

const BOOTED: &str = "AGENTD-VM-BOOTED";
pub const RESULT_PASS: &str = "AGENTD-VM-RESULT PASS";
pub const RESULT_FAIL: &str = "AGENTD-VM-RESULT FAIL";

/// How a run ended when QEMU exited by itself, from what the console showed.
fn exited(console: &[String]) -> Outcome {
    let booted = console.iter().any(|line| line.contains(BOOTED));
    let result = console.iter().rev().find_map(|line| {
        if line.contains(RESULT_PASS) {
            Some(true)
        } else if line.contains(RESULT_FAIL) {
            Some(false)
        } else {
            None
        }
    });
    match (booted, result) {
        (true, Some(passed)) => Outcome::Finished { passed },
        // Booted, then died without a result: a test binary took the guest down.
        (true, None) => Outcome::Finished { passed: false },
        (false, _) => {
            let panic = console.iter().find(|line| line.contains("Kernel panic"));
            Outcome::BootFailure(panic.map_or_else(
                || "qemu exited before the guest booted".to_owned(),
                |line| line.trim().to_owned(),
            ))
        }
    }
}

/// Boots `vmlinuz` with `initramfs` on `cpus` virtual CPUs and streams the console through
/// `on_line`.
pub fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    accel: Accel,
    cpus: usize,
    boot_timeout: Duration,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<Run> {
    let mut qemu = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => qemu.args(["-accel", "tcg", "-cpu", "max"]),
    };
    let cpus = cpus.max(1).to_string();
    qemu.args([
        "-m", "2048", "-smp", &cpus, "-display", "none", "-serial", "stdio",
    ])
    // No network device: guests talk over loopback only.
    .args(["-monitor", "none", "-nic", "none", "-no-reboot", "-kernel"])
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .arg("-append")
    .arg("console=ttyS0 lsm=lockdown,capability,landlock,bpf panic=-1 quiet")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = qemu
        .spawn()
        .with_context(|| format!("starting `{}`", cmd::display(&qemu)))?;

    // Lines arrive on a channel so that the deadline is checked even when the guest is silent.
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let err_tx = tx.clone();
    let readers = [
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line.trim_end_matches('\r').to_owned());
            }
        }),
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(format!("qemu: {line}"));
            }
        }),
    ];

    let start = Instant::now();
    let mut console = Vec::new();
    let mut booted = false;
    let outcome = loop {
        let limit = if booted { timeout } else { boot_timeout };
        let Some(left) = limit.checked_sub(start.elapsed()) else {
            let _ = child.kill();
            break if booted {
                Outcome::TimedOut(timeout)
            } else {
                Outcome::BootFailure(format!("no boot marker within {boot_timeout:?}"))
            };
        };
        match rx.recv_timeout(left) {
            Ok(line) => {
                on_line(&line);
                booted |= line.contains(BOOTED);
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break exited(&console),
        }
    };
    let _ = child.wait();
    for reader in readers {
        let _ = reader.join();
    }
    Ok(Run { outcome, console })
}

/// Whether KVM boots `vmlinuz` here: /dev/kvm can exist while guests hang (it does on this
/// project's development machines), so boot a trivial initramfs once with a short deadline.
/// The answer is cached per host kernel and guest kernel.
pub fn choose_accel(vmlinuz: &Path, package: &str) -> anyhow::Result<Accel> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(Accel::Tcg);
    }
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let marker = workspace::cache_dir()?.join(format!("kvm-probe-{}-{package}", host.trim()));
    if let Ok(answer) = fs::read_to_string(&marker) {
        return Ok(if answer.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    let work = tempfile::tempdir()?;
    let root = work.path().join("root");
    busybox_root(&root, PROBE_INIT)?;
    let archive = work.path().join("probe.cpio");
    cpio(&root, &archive)?;
    let probe = boot(
        vmlinuz,
        &archive,
        Accel::Kvm,
        1,
        Duration::from_secs(20),
        Duration::from_secs(20),
        |_| {},
    )?;
    let accel = if probe.console.iter().any(|line| line.contains(BOOTED)) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    println!("vm: KVM probe: using {accel:?}");
    fs::write(&marker, if accel == Accel::Kvm { "kvm" } else { "tcg" })?;
    Ok(accel)
}

/// Which share of the host tests a guest runs: every `count`-th test from `index` on. The vm
/// tests run whole in every guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Boots `kernel` on `cpus` virtual CPUs with `payload` and reports the outcome. `accel` of
/// `None` probes for KVM.
pub fn run_tests(
    kernel: &KernelSpec,
    payload: &Payload,
    shard: Option<Shard>,
    accel: Option<Accel>,
    cpus: usize,
    timeout: Duration,
    on_line: impl FnMut(&str),
) -> anyhow::Result<Run> {
    let package = kernel.resolve()?;
    let Some(vmlinuz) = cached_vmlinuz(&package)? else {
        bail!("kernel {package} is not cached: run `cargo xtask setup --kernel {kernel}`");
    };
    let accel = match accel {
        Some(accel) => accel,
        None => choose_accel(&vmlinuz, &package)?,
    };
    let work = tempfile::tempdir()?;
    let initramfs = build_initramfs(work.path(), payload, &cached_modules(&package)?, shard)?;
    println!(
        "vm: booting {package} ({accel:?}) with {}",
        initramfs.display()
    );
    boot(
        &vmlinuz,
        &initramfs,
        accel,
        cpus,
        Duration::from_mins(2),
        timeout,
        on_line,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|line| (*line).to_owned()).collect()
    }

    #[test]
    fn guest_that_printed_a_result_finished() {
        let pass = console(&[BOOTED, "test result: ok. 1 passed; 0 failed", RESULT_PASS]);
        assert_eq!(exited(&pass), Outcome::Finished { passed: true });
        let fail = console(&[BOOTED, RESULT_FAIL]);
        assert_eq!(exited(&fail), Outcome::Finished { passed: false });
    }

    #[test]
    fn guest_that_died_after_booting_failed_its_tests() {
        let died = console(&[BOOTED, "AGENTD-VM-RUN /tests/vm"]);
        assert_eq!(exited(&died), Outcome::Finished { passed: false });
    }

    #[test]
    fn kernel_panic_before_init_is_a_boot_failure() {
        let panic = console(&[
            "[    1.2] Kernel panic - not syncing: No working init found.",
            RESULT_PASS,
        ]);
        assert_eq!(
            exited(&panic),
            Outcome::BootFailure(
                "[    1.2] Kernel panic - not syncing: No working init found.".into()
            )
        );
        assert_eq!(
            exited(&[]),
            Outcome::BootFailure("qemu exited before the guest booted".into())
        );
    }
}
