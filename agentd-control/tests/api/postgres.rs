//! A throwaway PostgreSQL server for the tests: initdb into a temporary directory, listen on
//! 127.0.0.1 on a free port, stop and delete everything on drop. As root, the server runs as the
//! `postgres` user (PostgreSQL refuses to run as root).

use std::{net::TcpListener, os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

pub struct PostgresServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as_postgres: bool,
    pub port: u16,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The newest /usr/lib/postgresql/<version>/bin that has initdb.
fn find_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql): run `cargo xtask setup` as root, which installs Debian's postgresql package")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin: run `cargo xtask setup` as root")
}

impl PostgresServer {
    pub fn start() -> anyhow::Result<Self> {
        let bin = find_bin()?;
        let run_as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("agentd-control-pg")
            .tempdir()
            .context("creating a temporary directory")?;
        if run_as_postgres {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown postgres {} failed: {status}", dir.path().display());
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let server = Self {
            dir,
            bin,
            run_as_postgres,
            port,
        };
        let data = server.data_dir();
        server.run("initdb", |cmd| {
            cmd.arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]);
        })?;
        let socket_dir = server.dir.path().to_owned();
        let log = server.dir.path().join("postgres.log");
        server
            .run("pg_ctl", |cmd| {
                cmd.arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(&log)
                    .arg("-o")
                    .arg(format!(
                        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=200",
                        socket_dir.display()
                    ))
                    .args(["-w", "-t", "60", "start"]);
            })
            .with_context(|| {
                format!(
                    "starting postgres; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?;
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: impl FnOnce(&mut Command)) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let mut cmd = if self.run_as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&program);
            cmd
        } else {
            Command::new(&program)
        };
        args(&mut cmd);
        let output = cmd
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{tool} failed: {}\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// The URL of the server's `postgres` database (used to create one database per test).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    #[allow(dead_code, reason = "kept for debugging failed runs")]
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        if let Err(err) = self.run("pg_ctl", |cmd| {
            cmd.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"]);
        }) {
            eprintln!("stopping the test postgres: {err:#}");
        }
    }
}
