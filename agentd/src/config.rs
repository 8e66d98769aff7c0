//! The daemon's configuration file (TOML). Every setting has a documented default in its
//! `Default` impl, so agentd runs with no file at all.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The path `agentd run` reads when `--config` is not given and the file exists.
pub const DEFAULT_PATH: &str = "/etc/agentd/agentd.toml";

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub events: EventsConfig,
    pub api: ApiConfig,
    pub identity: IdentityConfig,
    pub dns: DnsConfig,
    pub network: NetworkConfig,
    /// Detections, risk levels and remediation (docs/risk.md).
    pub risk: crate::risk::RiskConfig,
    pub metrics: MetricsConfig,
    pub control_plane: ControlPlaneConfig,
    /// Where the kernel objects are pinned, and what a stop leaves behind.
    pub bpf: BpfConfig,
    /// The file this configuration was read from, if any (agentd protects it from agents).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Pinning (docs/operations.md, "Enforcement that survives the daemon").
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BpfConfig {
    /// The BPF file system directory for agentd's maps and links. Default: `/sys/fs/bpf/agentd`.
    pub pin_path: PathBuf,
    /// `keep` (default): a stopped or crashed agentd leaves its programs enforcing, and the next
    /// one adopts them; only `agentd teardown` removes them. `detach`: a clean stop removes them.
    pub on_exit: crate::pins::OnExit,
    /// `true` (default): at start-up agentd mounts the pseudo file systems it reads and that are
    /// absent (securityfs at /sys/kernel/security, tracefs at /sys/kernel/tracing, a BPF file
    /// system under `pin_path`), and says so in its log. `false`: it mounts nothing, and each
    /// sensor that needs a missing one is reported unavailable (docs/operations.md).
    pub mount_filesystems: bool,
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            pin_path: PathBuf::from(crate::pins::DEFAULT_ROOT),
            on_exit: crate::pins::OnExit::Keep,
            mount_filesystems: true,
        }
    }
}

/// The control plane agentd takes Conditional Access decisions from (docs/conditional-access.md).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// The control plane's gRPC URL, e.g. `http://127.0.0.1:7443`. Unset: no control plane;
    /// the local policy alone applies.
    pub url: Option<String>,
    /// A single-use join token for the first enrolment.
    pub join_token: Option<String>,
    /// Or a file holding it.
    pub join_token_file: Option<PathBuf>,
    /// Where the host's credentials and its last decisions are kept.
    pub state_dir: PathBuf,
    /// The name the host enrols with. Default: the kernel's host name.
    pub hostname: Option<String>,
    /// The control plane's CA certificate (PEM; `agentd-control ca-cert` prints it). With an
    /// `https://` URL, agentd verifies the server against it when it enrols; afterwards it
    /// uses the CA certificate it was given at enrolment, kept with its credentials.
    pub ca_file: Option<PathBuf>,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            url: None,
            join_token: None,
            join_token_file: None,
            state_dir: PathBuf::from("/var/lib/agentd"),
            hostname: None,
            ca_file: None,
            heartbeat_secs: 5,
        }
    }
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics`, e.g. `127.0.0.1:9464`. Unset: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// The web category database (`DOMAIN CATEGORY` lines, docs/network.md). Default: the
    /// sample that ships inside agentd.
    pub categories_file: Option<PathBuf>,
    /// An agent's allowed connects (and datagrams) to a destination it was already reported
    /// reaching are reported again at most once per this many milliseconds; 0 reports every
    /// one. Denials and would-denials are always reported. Default: 1000.
    pub allowed_report_interval_ms: u32,
    /// The most open sockets one agent may have recorded for the egress check at once (the
    /// kernel's table holds 65,536 for all agents). Past it, a new socket's connect, first
    /// datagram or ping/raw socket creation is refused with EPERM and reported
    /// (`decided_by: socket_limit`): a socket the egress check cannot know would go
    /// unchecked. Closed sockets free their place at once. Default: 8192.
    pub max_sockets_per_agent: u32,
}

/// Entries of the kernel's `SOCK_AGENT` table: the most `network.max_sockets_per_agent` may be.
pub const SOCKET_TABLE_ENTRIES: u32 = 65_536;

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            categories_file: None,
            allowed_report_interval_ms: 1_000,
            max_sockets_per_agent: 8_192,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Steer tagged processes' DNS queries through agentd's resolver, so that domain rules
    /// apply. Default: true.
    pub enabled: bool,
    /// Where the resolver listens (IPv4). Default: `127.0.0.1:15353`.
    pub listen: std::net::SocketAddrV4,
    /// Where it forwards queries. Default: the first `nameserver` of /etc/resolv.conf.
    pub upstream: Option<std::net::SocketAddr>,
    /// The answer to a query for a name no rule of the agent can allow (under `default =
    /// "deny"`), which is never forwarded: `nxdomain` (default) or `refused`.
    pub unallowed_names: crate::dns::UnallowedAnswer,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 15_353),
            upstream: None,
            unallowed_names: crate::dns::UnallowedAnswer::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The admin socket (root only). Default: `/run/agentd/admin.sock`.
    pub admin_socket: PathBuf,
    /// The identity socket (every local process). Default: `/run/agentd/identity.sock`.
    pub identity_socket: PathBuf,
    /// The SPIFFE Workload API socket (every local process; answers tagged ones). Default:
    /// `spiffe.sock` beside the identity socket, `/run/agentd/spiffe.sock`; give it to clients
    /// as `SPIFFE_ENDPOINT_SOCKET=unix:///run/agentd/spiffe.sock`.
    pub spiffe_socket: Option<PathBuf>,
}

impl ApiConfig {
    /// The Workload API socket, configured or beside the identity socket.
    #[must_use]
    pub fn spiffe_socket(&self) -> PathBuf {
        self.spiffe_socket.clone().unwrap_or_else(|| {
            self.identity_socket
                .parent()
                .unwrap_or_else(|| Path::new("/"))
                .join("spiffe.sock")
        })
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            admin_socket: PathBuf::from(crate::api::ADMIN_SOCKET),
            identity_socket: PathBuf::from(crate::api::IDENTITY_SOCKET),
            spiffe_socket: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Directory of identity policy drop-ins (`*.toml`, read in name order and merged).
    /// Default: `/etc/agentd/policy.d`. A missing directory means no agents.
    pub policy_dir: PathBuf,
    /// How many agent processes the kernel can tag at once (the `TASK_AGENT` map's size).
    /// Default: unset, which sizes the map from the running kernel (`min(pid_max, threads-max)`)
    /// so that it cannot fill. A smaller value is a hard limit: a tag that does not fit is
    /// counted, reported, and its agent quarantined.
    pub max_tagged_processes: Option<u32>,
    /// The most live processes one agent may have tagged at once. Default: 4096. Past it, a new
    /// process of the agent is refused with `EAGAIN` where BPF LSM runs, and otherwise tagged
    /// all the same and reported (`tag_cap`). Keeps one agent from filling the tag map.
    pub max_processes_per_agent: u32,
    /// Seconds between sweeps that remove tags of processes that no longer exist; 0 turns the
    /// sweep off. Default: 10. The exit hook removes tags as processes exit; the sweep is a
    /// backstop for tags set from userspace on a process that exited at the same moment.
    pub sweep_interval_secs: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            policy_dir: PathBuf::from("/etc/agentd/policy.d"),
            max_tagged_processes: None,
            max_processes_per_agent: 4_096,
            sweep_interval_secs: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// How events are written. Default: `text`.
    pub format: OutputFormat,
    /// Where events go: `-` for stdout (the default), or a file, rotated at `rotate_bytes`.
    pub output: PathBuf,
    /// Size at which the output file is rotated to `FILE.1` (older ones shift to `FILE.2`...).
    pub rotate_bytes: u64,
    /// Rotated files kept besides the current one.
    pub rotate_keep: u32,
    /// Size of the kernel's event ring buffer: a power of two, at least one page (4096).
    pub ring_buffer_bytes: u32,
    /// Least seconds between two alerts about lost events.
    pub loss_alert_interval_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            format: OutputFormat::Text,
            output: PathBuf::from("-"),
            rotate_bytes: 64 << 20,
            rotate_keep: 5,
            ring_buffer_bytes: 1 << 22,
            loss_alert_interval_secs: 10,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (docs/events.md).
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}")]
    Risk {
        path: PathBuf,
        #[source]
        source: crate::risk::RiskConfigError,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: &'static str,
    },
}

impl Config {
    /// Parses a configuration document. Errors name the offending key and the reason.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the values; `path` names where they came from in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let config = self;
        let invalid = |field, reason| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason,
        };
        if config.identity.max_tagged_processes == Some(0) {
            return Err(invalid(
                "identity.max_tagged_processes",
                "must be at least 1",
            ));
        }
        let per_agent = config.identity.max_processes_per_agent;
        if per_agent == 0 || per_agent > crate::ebpf::PID_MAX_LIMIT {
            return Err(invalid(
                "identity.max_processes_per_agent",
                "must be between 1 and 4194304 (Linux's most pids)",
            ));
        }
        let sockets = config.network.max_sockets_per_agent;
        if sockets == 0 || sockets > SOCKET_TABLE_ENTRIES {
            return Err(invalid(
                "network.max_sockets_per_agent",
                "must be between 1 and 65536 (the kernel's socket table)",
            ));
        }
        let ring = config.events.ring_buffer_bytes;
        if ring < 4096 || !ring.is_power_of_two() {
            return Err(invalid(
                "events.ring_buffer_bytes",
                "must be a power of two of at least 4096 (one page)",
            ));
        }
        if let Some(url) = &config.control_plane.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "control_plane.url",
                "must be an http:// or https:// URL",
            ));
        }
        if !config.bpf.pin_path.is_absolute() {
            return Err(invalid("bpf.pin_path", "must be an absolute path"));
        }
        if config.events.rotate_bytes < 4096 {
            return Err(invalid("events.rotate_bytes", "must be at least 4096"));
        }
        config.risk.validate().map_err(|source| ConfigError::Risk {
            path: path.to_owned(),
            source,
        })?;
        Ok(())
    }

    /// Reads `path`; with `None`, reads [`DEFAULT_PATH`] if it exists and uses the defaults
    /// otherwise.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path).map(|config| Self {
                source: Some(path.to_owned()),
                ..config
            }),
            Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_documented_defaults() {
        let config = Config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.events.format, OutputFormat::Text);
    }

    #[test]
    fn events_table_is_validated_by_key() {
        let config = Config::parse(
            "[events]\noutput = \"/var/log/agentd/events.json\"\nring_buffer_bytes = 8192\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(config.events.ring_buffer_bytes, 8192);
        assert_eq!(
            config.events.output,
            Path::new("/var/log/agentd/events.json")
        );
        for (text, key) in [
            (
                "[events]\nring_buffer_bytes = 5000\n",
                "events.ring_buffer_bytes",
            ),
            (
                "[events]\nring_buffer_bytes = 2048\n",
                "events.ring_buffer_bytes",
            ),
            ("[events]\nrotate_bytes = 10\n", "events.rotate_bytes"),
        ] {
            let err = Config::parse(text, Path::new("t.toml")).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("t.toml: {key}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn bpf_table_is_read_and_validated() {
        let config = Config::parse(
            "[bpf]\npin_path = \"/sys/fs/bpf/x\"\non_exit = \"detach\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(config.bpf.pin_path, Path::new("/sys/fs/bpf/x"));
        assert_eq!(config.bpf.on_exit, crate::pins::OnExit::Detach);
        let err = Config::parse("[bpf]\npin_path = \"rel\"\n", Path::new("t.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.toml: bpf.pin_path: must be an absolute path"
        );
        let err = Config::parse("[bpf]\non_exit = \"linger\"\n", Path::new("t.toml")).unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(message.contains("on_exit"), "{message}");
    }

    #[test]
    fn allowed_report_interval_defaults_to_a_second_and_names_its_key_when_bad() {
        assert_eq!(Config::default().network.allowed_report_interval_ms, 1_000);
        let config = Config::parse(
            "[network]\nallowed_report_interval_ms = 0\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(config.network.allowed_report_interval_ms, 0);
        let err = Config::parse(
            "[network]\nallowed_report_interval_ms = -1\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(
            format!("{:#}", anyhow::Error::from(err)).contains("allowed_report_interval_ms"),
            "the error names the key"
        );
    }

    #[test]
    fn unallowed_names_defaults_to_nxdomain_and_names_its_key_when_bad() {
        use crate::dns::UnallowedAnswer;
        assert_eq!(
            Config::default().dns.unallowed_names,
            UnallowedAnswer::Nxdomain
        );
        let config = Config::parse(
            "[dns]\nunallowed_names = \"refused\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(config.dns.unallowed_names, UnallowedAnswer::Refused);
        let err = Config::parse(
            "[dns]\nunallowed_names = \"servfail\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        let err = format!("{:#}", anyhow::Error::from(err));
        assert!(err.contains("unallowed_names"), "{err}");
        assert!(err.contains("nxdomain"), "{err}");
    }

    #[test]
    fn format_is_read() {
        let config = Config::parse("[events]\nformat = \"json\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(config.events.format, OutputFormat::Json);
    }

    #[test]
    fn per_agent_process_cap_is_validated_by_field() {
        for bad in ["0", "4194305"] {
            let err = Config::parse(
                &format!("[identity]\nmax_processes_per_agent = {bad}\n"),
                Path::new("t.toml"),
            )
            .unwrap_err();
            let message = format!("{:#}", anyhow::Error::from(err));
            assert!(
                message.contains("identity.max_processes_per_agent")
                    && message.contains("between 1 and 4194304"),
                "{bad}: {message}"
            );
        }
        let config = Config::parse(
            "[identity]\nmax_processes_per_agent = 8\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(config.identity.max_processes_per_agent, 8);
        assert_eq!(Config::default().identity.max_processes_per_agent, 4_096);
        assert_eq!(Config::default().identity.max_tagged_processes, None);
    }

    #[test]
    fn zero_sized_tag_map_is_refused() {
        let err = Config::parse(
            "[identity]\nmax_tagged_processes = 0\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(
            message.contains("identity.max_tagged_processes"),
            "{message}"
        );
    }

    #[test]
    fn risk_table_is_read_and_validated_by_name() {
        let config = Config::parse(
            "[risk]\nlearning_window_secs = 60\n[risk.remediation]\nkill_processes = true\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(config.risk.learning_window_secs, 60);
        assert!(config.risk.remediation.kill_processes);
        assert_eq!(
            Config::parse("", Path::new("t.toml")).unwrap().risk,
            crate::risk::RiskConfig::default()
        );

        let err =
            Config::parse("[risk.denied_burst]\ncount = 0\n", Path::new("t.toml")).unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(
            message,
            "t.toml: risk.denied_burst.count: must be at least 1"
        );

        let err = Config::parse("[risk.lateral_movement]\n", Path::new("t.toml")).unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(
            message.contains("unknown field `lateral_movement`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let err = Config::parse("[events]\nfromat = \"json\"\n", Path::new("t.toml")).unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(message.contains("fromat"), "{message}");
        assert!(message.starts_with("parsing t.toml: "), "{message}");
    }

    #[test]
    fn bad_value_is_an_error_that_names_the_field() {
        let err = Config::parse("[events]\nformat = \"xml\"\n", Path::new("t.toml")).unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(message.contains("format"), "{message}");
        assert!(message.contains("xml"), "{message}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Config::load(Some(&missing)),
            Err(ConfigError::Read { .. })
        ));
    }
}
