//! `cargo xtask fuzz` and the fuzz tier: builds the cargo-fuzz targets in `fuzz/` (nightly,
//! coverage instrumentation, no sanitizer: the code is safe Rust, and what libFuzzer finds
//! there is a panic, a timeout or a runaway allocation) and runs each for a bounded time from
//! the seed corpus in the repository. New inputs go to a working corpus under
//! `target/fuzz/corpus`, never into the repository; a finding is left in `fuzz/artifacts`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::{cmd, setup::NIGHTLY};

/// Every target, in the order they run: the policy YAML of the control plane, the host policy
/// TOML of agentd, and every RPC's request through the real service.
pub const TARGETS: &[&str] = &["policy_yaml", "host_policy", "rpc_requests"];

/// libFuzzer's per-input deadline: an input that takes longer is a finding. Generous for an
/// unoptimised build; the parsers answer in milliseconds.
const INPUT_TIMEOUT_SECS: u64 = 10;
/// libFuzzer's memory ceiling: an input that makes the process grow past it is a finding.
const RSS_LIMIT_MB: u64 = 2048;

/// What one target's run did.
#[derive(Debug)]
pub struct Outcome {
    pub target: String,
    /// Inputs executed, as libFuzzer's final statistics say.
    pub executions: u64,
    /// Where libFuzzer wrote the input that failed, when one did.
    pub finding: Option<String>,
    /// Why the run did not complete when no input is to blame (a build or start-up error).
    pub error: Option<String>,
    pub log: PathBuf,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.finding.is_none() && self.error.is_none()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fuzz {}: {} executions", self.target, self.executions)?;
        match (&self.finding, &self.error) {
            (Some(finding), _) => write!(f, ", a finding: {finding} (log: {})", self.log.display()),
            (None, Some(error)) => write!(
                f,
                ", did not complete: {error} (log: {})",
                self.log.display()
            ),
            (None, None) => write!(f, ", no findings"),
        }
    }
}

fn fuzz_dir(root: &Path) -> PathBuf {
    root.join("fuzz")
}

fn target_dir(root: &Path) -> PathBuf {
    root.join("target/fuzz")
}

/// `cargo +nightly fuzz SUBCOMMAND` in `fuzz/` with the flags every call shares, so that `run`
/// reuses what `build` built.
fn cargo_fuzz(root: &Path, subcommand: &str) -> Command {
    let mut command = Command::new("cargo");
    command
        .current_dir(fuzz_dir(root))
        .arg(format!("+{NIGHTLY}"))
        .args(["fuzz", subcommand, "--dev", "--sanitizer", "none"])
        .arg("--target-dir")
        .arg(target_dir(root))
        // agentd's build script would build the eBPF object, which no target needs.
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("CARGO_TARGET_DIR");
    command
}

/// Builds every target.
pub fn build(root: &Path) -> anyhow::Result<()> {
    cmd::run(&mut cargo_fuzz(root, "build"))
}

/// Runs `target` for `time`, from the repository's seeds and the working corpus.
pub fn run(root: &Path, target: &str, time: Duration) -> anyhow::Result<Outcome> {
    let work = target_dir(root).join("corpus").join(target);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let logs = target_dir(root).join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log = logs.join(format!("{target}.log"));
    let seeds = fuzz_dir(root).join("corpus").join(target);
    let mut command = cargo_fuzz(root, "run");
    command
        .arg(target)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", time.as_secs().max(1)))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?);
    eprintln!("+ {} 2>{}", cmd::display(&command), log.display());
    let status = command
        .status()
        .with_context(|| format!("starting `{}`", cmd::display(&command)))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let mut outcome = read_log(target, &text, log);
    if !status.success() && outcome.finding.is_none() {
        outcome.error = Some(format!("exited with {status}"));
    }
    if !outcome.ok() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    Ok(outcome)
}

/// Reads libFuzzer's output: the executions from its final statistics, and the input it wrote
/// when one failed.
fn read_log(target: &str, text: &str, log: PathBuf) -> Outcome {
    let executions = text
        .lines()
        .rev()
        .filter_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .find_map(|count| count.trim().parse().ok())
        .unwrap_or(0);
    let finding = text
        .lines()
        .find_map(|line| line.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_owned());
    Outcome {
        target: target.to_owned(),
        executions,
        finding,
        error: None,
        log,
    }
}

/// Builds the targets, then runs each of `targets` for `time`.
pub fn run_all(root: &Path, targets: &[String], time: Duration) -> anyhow::Result<Vec<Outcome>> {
    for target in targets {
        anyhow::ensure!(
            TARGETS.contains(&target.as_str()),
            "no fuzz target {target:?}; the targets are {}",
            TARGETS.join(", ")
        );
    }
    build(root)?;
    targets
        .iter()
        .map(|target| run(root, target, time))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_statistics_and_a_finding_are_read_from_the_log() {
        let clean = "INFO: Seed: 1\n#2 INITED cov: 10\nDone 4242 runs in 5 second(s)\n\
                     stat::number_of_executed_units: 4242\nstat::peak_rss_mb: 90\n";
        let outcome = read_log("policy_yaml", clean, PathBuf::from("log"));
        assert_eq!(outcome.executions, 4242);
        assert!(outcome.ok(), "{outcome}");
        assert_eq!(
            outcome.to_string(),
            "fuzz policy_yaml: 4242 executions, no findings"
        );

        let crashed = "==1== ERROR: libFuzzer: deadly signal\n\
                       artifact_prefix='/r/fuzz/artifacts/host_policy/'; Test unit written to /r/fuzz/artifacts/host_policy/crash-ab12\n\
                       stat::number_of_executed_units: 77\n";
        let outcome = read_log("host_policy", crashed, PathBuf::from("log"));
        assert_eq!(outcome.executions, 77);
        assert_eq!(
            outcome.finding.as_deref(),
            Some("/r/fuzz/artifacts/host_policy/crash-ab12")
        );
        assert!(!outcome.ok());
    }
}
