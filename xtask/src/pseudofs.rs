//! The pseudo file systems the host tiers, `run` and `bench` need: this project's machines boot
//! without tracefs and securityfs mounted. One step for every task that loads programs on the
//! running kernel (agentd mounts them itself too; the tests' own helpers read them directly).

use std::{path::Path, process::Command};

use crate::cmd;

/// Mounts securityfs, bpffs and tracefs where they are absent. Idempotent.
pub fn mount() -> anyhow::Result<()> {
    for (fstype, target, probe) in [
        (
            "securityfs",
            "/sys/kernel/security",
            "/sys/kernel/security/lsm",
        ),
        ("bpf", "/sys/fs/bpf", ""),
        (
            "tracefs",
            "/sys/kernel/tracing",
            "/sys/kernel/tracing/events",
        ),
    ] {
        let mounted = if probe.is_empty() {
            std::fs::read_to_string("/proc/self/mounts")?
                .lines()
                .any(|line| line.split_whitespace().nth(1) == Some(target))
        } else {
            Path::new(probe).exists()
        };
        if !mounted {
            eprintln!("setup: mounting {fstype} at {target}");
            cmd::run(Command::new("mount").args(["-t", fstype, fstype, target]))?;
        }
    }
    Ok(())
}
