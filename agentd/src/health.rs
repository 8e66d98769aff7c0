//! What each sensor does on this host, for `agentd status`, `/healthz` and metrics. A missing
//! optional hook degrades honestly: it is named here with its reason, and the other sensors go
//! on enforcing.

use crate::{
    api::SensorHealth,
    pseudofs::{Mounts, Outcome},
    sensors::files::FileMode,
};

/// What the daemon knows about its sensors.
pub struct Inputs<'a> {
    pub files: &'a FileMode,
    pub self_protection: bool,
    /// Whether packet sockets and the other socket families are decided (BPF LSM).
    pub socket_families: bool,
    /// Self-protection's file hooks that this kernel refused.
    pub self_protection_missing: &'a [&'static str],
    /// File hooks beyond opens and execs that this kernel refused (executable mappings,
    /// anonymous execs, metadata changes).
    pub file_hooks_missing: &'a [&'static str],
    /// Why BPF LSM is not used, when it is not.
    pub lsm_unavailable: Option<&'a str>,
    pub dns: bool,
    pub mounts: &'a Mounts,
}

/// The network sensor: its cgroup hooks always; the socket families where BPF LSM runs.
fn network(inputs: &Inputs<'_>) -> SensorHealth {
    if inputs.socket_families {
        SensorHealth::new(
            "network",
            "active",
            "cgroup connect, sendmsg and egress hooks decide agents' traffic; BPF LSM decides \
             packet sockets and other socket families",
        )
    } else {
        SensorHealth::new(
            "network",
            "limited",
            format!(
                "cgroup connect, sendmsg and egress hooks decide agents' traffic; packet \
                 sockets and other socket families are not decided ({})",
                inputs.lsm_unavailable.unwrap_or("BPF LSM unavailable")
            ),
        )
    }
}

/// One entry per sensor and per pseudo file system.
pub fn sensors(inputs: &Inputs<'_>) -> Vec<SensorHealth> {
    let mut out = vec![SensorHealth::new(
        "process",
        "active",
        "exec, fork and exit tracepoints tag agents' processes",
    )];
    out.push(network(inputs));
    out.push(match inputs.files {
        FileMode::Enforcing { missing }
            if missing.is_empty() && inputs.file_hooks_missing.is_empty() =>
        {
            SensorHealth::new(
                "files",
                "active",
                "BPF LSM hooks decide agents' file access",
            )
        }
        FileMode::Enforcing { missing } => SensorHealth::new(
            "files",
            "limited",
            format!(
                "BPF LSM decides opens and execs; this kernel lacks {}",
                missing
                    .iter()
                    .chain(inputs.file_hooks_missing)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        FileMode::Observing => SensorHealth::new(
            "files",
            "limited",
            format!(
                "opens that break a rule are reported by syscall tracepoints, not denied ({})",
                inputs.lsm_unavailable.unwrap_or("BPF LSM unavailable")
            ),
        ),
        FileMode::Unavailable(why) => SensorHealth::new("files", "unavailable", why.clone()),
    });
    out.push(
        if inputs.self_protection && inputs.self_protection_missing.is_empty() {
            SensorHealth::new(
                "self_protection",
                "active",
                "agents may not signal or ptrace agentd, use bpf(), open its files, or rename, \
             replace, link or mount over them",
            )
        } else if inputs.self_protection {
            SensorHealth::new(
                "self_protection",
                "limited",
                format!(
                    "agents may not signal or ptrace agentd, use bpf(), or open its files; this \
                 kernel lacks {}, so those changes to its files are not denied",
                    inputs.self_protection_missing.join(", ")
                ),
            )
        } else {
            SensorHealth::new(
                "self_protection",
                "limited",
                "BPF LSM unavailable: the admin socket refuses agents; signals, ptrace and bpf() \
             are not denied",
            )
        },
    );
    out.push(if inputs.dns {
        SensorHealth::new(
            "dns",
            "active",
            "agents' DNS queries go through agentd's resolver",
        )
    } else {
        SensorHealth::new(
            "dns",
            "disabled",
            "[dns] enabled = false: domain rules match no address",
        )
    });
    for fs in inputs.mounts.all() {
        let state = match fs.outcome {
            Outcome::Present | Outcome::Mounted => "active",
            Outcome::Absent => "disabled",
            Outcome::Failed(_) => "unavailable",
        };
        out.push(SensorHealth::new(fs.fstype, state, fs.to_string()));
    }
    out
}

/// `healthy` or `degraded`.
pub fn summary(sensors: &[SensorHealth]) -> &'static str {
    if sensors.iter().any(SensorHealth::degraded) {
        "degraded"
    } else {
        "healthy"
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::pseudofs::PseudoFs;

    fn mounts(tracefs: Outcome) -> Mounts {
        let fs = |fstype, outcome| PseudoFs {
            fstype,
            target: PathBuf::from("/x"),
            outcome,
        };
        Mounts {
            securityfs: fs("securityfs", Outcome::Present),
            tracefs: fs("tracefs", tracefs),
            bpffs: fs("bpf", Outcome::Mounted),
        }
    }

    #[test]
    fn a_file_sensor_that_could_not_attach_degrades_health_and_says_why() {
        let mounts = mounts(Outcome::Failed("mounting it failed: EPERM".to_owned()));
        let files = FileMode::Unavailable("tracefs not found".to_owned());
        let sensors = sensors(&Inputs {
            files: &files,
            self_protection: false,
            socket_families: false,
            self_protection_missing: &[],
            file_hooks_missing: &[],
            lsm_unavailable: Some("BPF LSM is not active"),
            dns: true,
            mounts: &mounts,
        });
        assert_eq!(summary(&sensors), "degraded");
        let files = sensors.iter().find(|s| s.name == "files").unwrap();
        assert_eq!(
            (files.state.as_str(), files.detail.as_str()),
            ("unavailable", "tracefs not found")
        );
        // Network enforcement goes on; without BPF LSM its socket families are not decided.
        let network = sensors.iter().find(|s| s.name == "network").unwrap();
        assert_eq!(network.state, "limited");
        assert!(
            network.detail.contains("packet sockets"),
            "{}",
            network.detail
        );
        let tracefs = sensors.iter().find(|s| s.name == "tracefs").unwrap();
        assert_eq!(tracefs.state, "unavailable");
    }

    #[test]
    fn observing_without_bpf_lsm_is_limited_not_degraded() {
        let mounts = mounts(Outcome::Mounted);
        let sensors = sensors(&Inputs {
            files: &FileMode::Observing,
            self_protection: false,
            socket_families: false,
            self_protection_missing: &[],
            file_hooks_missing: &[],
            lsm_unavailable: Some("BPF LSM is not active"),
            dns: false,
            mounts: &mounts,
        });
        assert_eq!(summary(&sensors), "healthy");
        let files = sensors.iter().find(|s| s.name == "files").unwrap();
        assert_eq!(files.state, "limited");
        assert!(files.detail.contains("BPF LSM is not active"));
    }

    #[test]
    fn the_network_sensor_is_active_when_bpf_lsm_decides_socket_families() {
        let mounts = mounts(Outcome::Present);
        let files = FileMode::Enforcing {
            missing: Vec::new(),
        };
        let sensors = sensors(&Inputs {
            files: &files,
            self_protection: true,
            socket_families: true,
            self_protection_missing: &[],
            file_hooks_missing: &[],
            lsm_unavailable: None,
            dns: true,
            mounts: &mounts,
        });
        let network = sensors.iter().find(|s| s.name == "network").unwrap();
        assert_eq!(network.state, "active");
        assert_eq!(summary(&sensors), "healthy");
    }
}
