//! `cargo xtask install`: lays down the binaries, the systemd units, `/etc/agentd/agentd.toml`
//! and the state directories, under `/` or another root (for packaging and tests); `--uninstall`
//! takes them away again, keeping configuration and state unless `--purge`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{cmd, workspace::workspace_root};

/// (binary as cargo names it, where it goes under the root).
pub const BINARIES: [(&str, &str); 3] = [
    ("agentd", "usr/local/sbin/agentd"),
    ("agentd-control", "usr/local/sbin/agentd-control"),
    ("agentctl", "usr/local/bin/agentctl"),
];
/// Unit files in `packaging/systemd`.
pub const UNITS: [&str; 2] = ["agentd.service", "agentd-control.service"];
const UNIT_DIR: &str = "etc/systemd/system";
const CONFIG: &str = "etc/agentd/agentd.toml";
const DIRS: [(&str, u32); 4] = [
    ("etc/agentd/policy.d", 0o755),
    ("var/lib/agentd", 0o700),
    ("var/log/agentd", 0o750),
    ("var/lib/agentd-control", 0o700),
];

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Copy next to it and rename, so that a running binary is replaced, not rewritten.
    let partial = to.with_extension("partial");
    fs::copy(from, &partial)
        .with_context(|| format!("copying {} to {}", from.display(), partial.display()))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(mode))?;
    fs::rename(&partial, to).with_context(|| format!("installing {}", to.display()))?;
    println!("install: {}", to.display());
    Ok(())
}

/// Installs `binaries` (cargo name → built file) and the packaging files under `root`.
/// Idempotent; an existing configuration file is kept.
pub fn install(root: &Path, binaries: &[(String, PathBuf)]) -> anyhow::Result<()> {
    for (name, dest) in BINARIES {
        let (_, built) = binaries
            .iter()
            .find(|(built, _)| built == name)
            .with_context(|| format!("no {name} binary was built"))?;
        copy(built, &root.join(dest), 0o755)?;
    }
    let packaging = workspace_root().join("packaging");
    for unit in UNITS {
        copy(
            &packaging.join("systemd").join(unit),
            &root.join(UNIT_DIR).join(unit),
            0o644,
        )?;
    }
    let config = root.join(CONFIG);
    if config.exists() {
        println!("install: kept {}", config.display());
    } else {
        copy(&packaging.join("agentd.toml"), &config, 0o644)?;
    }
    for (dir, mode) in DIRS {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
    }
    reload_systemd(root);
    Ok(())
}

/// Removes what [`install`] laid down; with `purge`, the configuration and state too.
pub fn uninstall(root: &Path, purge: bool) -> anyhow::Result<()> {
    // On the running system, detach what the installed agentd left pinned (it keeps enforcing
    // after a stop by design) before its binary goes.
    let agentd = root.join(BINARIES[0].1);
    if root == Path::new("/") && agentd.exists() {
        let status = Command::new(&agentd).arg("teardown").status();
        if !status.is_ok_and(|status| status.success()) {
            println!("uninstall: `agentd teardown` did not complete; stop agentd and run it first");
        }
    }
    let mut paths: Vec<PathBuf> = BINARIES.iter().map(|(_, dest)| root.join(dest)).collect();
    paths.extend(UNITS.iter().map(|unit| root.join(UNIT_DIR).join(unit)));
    for path in paths {
        match fs::remove_file(&path) {
            Ok(()) => println!("uninstall: {}", path.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }
    if purge {
        for dir in [
            "etc/agentd",
            "var/lib/agentd",
            "var/log/agentd",
            "var/lib/agentd-control",
        ] {
            let dir = root.join(dir);
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
                println!("uninstall: {}", dir.display());
            }
        }
    }
    reload_systemd(root);
    Ok(())
}

/// `systemctl daemon-reload` when installing into the running system under systemd.
fn reload_systemd(root: &Path) {
    let under_systemd = Path::new("/run/systemd/system").exists();
    if root == Path::new("/") && under_systemd {
        if let Err(err) = cmd::run(Command::new("systemctl").arg("daemon-reload")) {
            eprintln!("install: {err:#}");
        }
    } else {
        println!("install: not reloading systemd (not the running system's root, or no systemd)");
    }
}

/// Checks the installed units with `systemd-analyze verify`: any warning is a failure.
/// `root` needs the system's own units (targets) too: they are linked in from the host.
pub fn verify(root: &Path) -> anyhow::Result<()> {
    let system = root.join("usr/lib/systemd/system");
    if !system.exists() {
        fs::create_dir_all(root.join("usr/lib/systemd"))?;
        std::os::unix::fs::symlink("/lib/systemd/system", &system)
            .context("linking the host's system units into the root")?;
    }
    let mut command = Command::new("systemd-analyze");
    command
        .arg("verify")
        .arg(format!("--root={}", root.display()));
    for unit in UNITS {
        command.arg(Path::new("/").join(UNIT_DIR).join(unit));
    }
    let output = command
        .output()
        .context("running systemd-analyze (Debian's systemd package)")?;
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        output.status
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stand-ins for the built binaries: the units only need executables at their paths.
    fn stubs(dir: &Path) -> Vec<(String, PathBuf)> {
        BINARIES
            .iter()
            .map(|(name, _)| {
                let path = dir.join(name);
                fs::copy("/bin/true", &path).unwrap();
                ((*name).to_owned(), path)
            })
            .collect()
    }

    #[test]
    fn install_lays_down_units_that_systemd_accepts_and_uninstall_removes_them() {
        let built = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let binaries = stubs(built.path());
        install(root.path(), &binaries).unwrap();
        install(root.path(), &binaries).unwrap(); // idempotent
        for (_, dest) in BINARIES {
            assert!(root.path().join(dest).exists(), "{dest}");
        }
        assert!(root.path().join(CONFIG).exists());
        assert_eq!(
            fs::metadata(root.path().join("var/lib/agentd"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        verify(root.path()).unwrap();

        // A unit that systemd would reject fails the check.
        let unit = root.path().join(UNIT_DIR).join("agentd.service");
        let text = fs::read_to_string(&unit).unwrap();
        fs::write(&unit, text.replace("Type=notify", "Type=notifyish")).unwrap();
        assert!(verify(root.path()).is_err());
        fs::write(&unit, text).unwrap();

        uninstall(root.path(), false).unwrap();
        assert!(!root.path().join(BINARIES[0].1).exists());
        assert!(root.path().join(CONFIG).exists(), "configuration kept");
        uninstall(root.path(), true).unwrap();
        assert!(!root.path().join(CONFIG).exists());
    }
}
