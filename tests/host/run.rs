//! `agentd run`, the binary, end to end: it prints an exec event for a command started while
//! it runs, and SIGINT stops it cleanly with nothing left attached.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use agentd_tests::{
    EVENT_DEADLINE, agentd_bin, loaded_program_ids, require_root, unique_executable, wait_until,
};

#[test]
fn agentd_run_prints_exec_events_and_detaches_on_sigint() {
    require_root();
    let before = loaded_program_ids("sched_process_exec");
    let pins = agentd_tests::unique_pin_path();
    let mut agentd = Command::new(agentd_bin())
        .args([
            "run",
            "--format",
            "json",
            "--on-exit",
            "detach",
            "--pin-path",
        ])
        .arg(&pins)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting agentd run");

    // Read stdout on a thread so that the test can keep starting processes while it waits.
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let stdout = agentd.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (_dir, program) = unique_executable("/bin/true".as_ref(), "agentd-run-probe");
    let wanted = format!("\"filename\":\"{}\"", program.display());

    // agentd prints nothing until it is attached, so keep exec'ing until one is reported.
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    let mut found = None;
    while found.is_none() && std::time::Instant::now() < deadline {
        let _ = Command::new(&program)
            .stderr(Stdio::null())
            .status()
            .expect("running the probe");
        while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) {
            if line.contains(&wanted) {
                found = Some(line);
                break;
            }
        }
    }
    let Some(line) = found else {
        let _ = agentd.kill();
        let output = agentd
            .wait_with_output()
            .expect("collecting agentd's output");
        panic!(
            "agentd run printed no exec event for {} within {EVENT_DEADLINE:?}; stderr:\n{}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    assert!(line.contains("\"kind\":\"exec\""), "{line}");
    assert!(line.contains("\"version\":1"), "{line}");
    // The programs this agentd loaded: those that were not there before it started.
    let ours: Vec<u32> = loaded_program_ids("sched_process_exec")
        .difference(&before)
        .copied()
        .collect();
    assert!(!ours.is_empty(), "agentd run loaded no exec program");

    let pid = i32::try_from(agentd.id()).expect("pid fits i32");
    // SAFETY: signalling our own child by pid.
    let rc = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(rc, 0, "sending SIGINT to agentd");
    let output = agentd
        .wait_with_output()
        .expect("waiting for agentd to exit");
    reader.join().expect("stdout reader thread");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "agentd exited with {}: {stderr}",
        output.status
    );
    assert!(
        stderr.contains("detached the programs and removed the pins"),
        "{stderr}"
    );
    assert!(!pins.exists(), "{} is still there", pins.display());
    wait_until("agentd's exec program is unloaded after it exits", || {
        let loaded = loaded_program_ids("sched_process_exec");
        ours.iter().all(|id| !loaded.contains(id))
    });
}

/// Writes `dir/agentd.toml`: the sockets in `dir`, no DNS steering. Returns the admin socket.
fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let admin = dir.join("admin.sock");
    std::fs::write(
        dir.join("agentd.toml"),
        format!(
            "[api]\nadmin_socket = \"{}\"\nidentity_socket = \"{}\"\n[dns]\nenabled = false\n",
            admin.display(),
            dir.join("identity.sock").display()
        ),
    )
    .expect("writing the config");
    admin
}

/// The reader of agentd's stdout goes away (as when `cargo xtask run | tee` is interrupted):
/// agentd counts the failed writes, keeps enforcing, and still takes its exit path on SIGINT.
#[test]
fn a_closed_output_is_survived_and_agentd_still_detaches_on_sigint() {
    require_root();
    let pins = agentd_tests::unique_pin_path();
    let dir = tempfile::tempdir().expect("temporary directory");
    let admin = write_config(dir.path());
    let mut agentd = Command::new(agentd_bin())
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("agentd.toml"))
        .args(["--format", "json", "--on-exit", "detach", "--pin-path"])
        .arg(&pins)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting agentd run");
    wait_until("agentd answers on its admin socket", || {
        agentd::api::admin::<agentd::api::Status>(&admin, &agentd::api::AdminRequest::Status)
            .is_ok()
    });
    // Close the only reader of agentd's stdout.
    drop(agentd.stdout.take());
    let (_exe_dir, program) = unique_executable("/bin/true".as_ref(), "agentd-closed-output");
    let mut status = None;
    wait_until("agentd counts writes to its closed output", || {
        // Each exec is an event agentd tries to write.
        let _ = Command::new(&program).status();
        status =
            agentd::api::admin::<agentd::api::Status>(&admin, &agentd::api::AdminRequest::Status)
                .ok();
        status
            .as_ref()
            .is_some_and(|status| status.output_errors > 0)
    });
    assert!(
        agentd.try_wait().expect("polling agentd").is_none(),
        "agentd died when its output closed"
    );
    let pid = i32::try_from(agentd.id()).expect("pid fits i32");
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let output = agentd.wait_with_output().expect("waiting for agentd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "agentd exited with {}: {stderr}",
        output.status
    );
    assert!(
        stderr.contains("the event output cannot be written; agentd goes on enforcing"),
        "{stderr}"
    );
    assert!(
        stderr.contains("detached the programs and removed the pins"),
        "{stderr}"
    );
    assert!(!pins.exists(), "{} is still there", pins.display());
}

/// A start-up that fails after its maps were created and pinned removes those pins again.
#[test]
fn a_failed_start_up_leaves_nothing_pinned() {
    require_root();
    let pins = agentd_tests::unique_pin_path();
    let dir = tempfile::tempdir().expect("temporary directory");
    write_config(dir.path());
    let output = Command::new(agentd_bin())
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("agentd.toml"))
        .args(["--pin-path"])
        .arg(&pins)
        // connect4 fails to attach, after every map is created and pinned.
        .env("AGENTD_FAULT_INJECTION", "attach:connect4")
        .output()
        .expect("running agentd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("connect4"), "{stderr}");
    assert!(
        stderr.contains("start-up failed: removed the pins it had made"),
        "{stderr}"
    );
    assert!(
        !pins.exists(),
        "{} is left behind: {:?}",
        pins.display(),
        std::fs::read_dir(&pins).map(Iterator::count)
    );
}
