//! Tags that an agent cannot shed: the sweep does not trust agentd's view of `/proc`, and the
//! admin socket judges the process that connected, not whoever holds the connection later.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::{
            fs::PermissionsExt as _,
            net::{UnixListener, UnixStream},
        },
    },
    process::{Command, Stdio},
};

use agentd_tests::{CgroupGuard, Daemon, agent_policy, cgroup2_mount, launch_cgroup, wait_until};

use crate::helper;

/// agentd in a private mount namespace whose `/proc` hides other users' processes
/// (`hidepid=invisible`; `gid=` names a group agentd is not in, as the default, root, would let
/// it see all) and without `CAP_SYS_PTRACE`, so that it cannot see them there.
fn hidden_proc_wrapper() -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t proc -o hidepid=invisible,gid=54321 proc /proc && exec \"$0\" without-ptrace \"$@\"",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([helper().display().to_string()])
    .collect()
}

/// Whether this kernel has `SO_PEERPIDFD` (Linux 6.5+). Without it agentd pins a socket's peer
/// through `/proc/PID/stat`, which the hidden `/proc` below hides from it for the test's own
/// admin calls too (root with every capability is beyond what agentd without
/// `CAP_SYS_PTRACE` may see there).
fn kernel_has_peer_pidfd() -> bool {
    let (ours, _theirs) = UnixStream::pair().expect("a socket pair");
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
    // SAFETY: valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            ours.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        // SAFETY: the kernel returned a new fd that we own.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    }
    rc == 0
}

#[test]
fn sweep_keeps_the_tag_of_a_live_process_hidden_from_agentds_proc() {
    if !kernel_has_peer_pidfd() {
        eprintln!(
            "skipped: this kernel has no SO_PEERPIDFD, so agentd would pin this test's own admin \
             calls through the /proc the test hides (Linux 6.12 in the vm tier runs it)"
        );
        return;
    }
    let agent = "hiding-agent";
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a listener");
    let port = listener.local_addr().expect("local address").port();
    let policy = format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n\
         [[agent.network.rule]]\nid = \"no-local\"\naction = \"deny\"\ncidr = \"127.0.0.1/32\"\nports = \"{port}\"\n"
    );
    let wrapper = hidden_proc_wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_wrapped(&policy, "sweep_interval_secs = 1\n", &wrapper);
    let _launched = launch_cgroup(agent);
    let escape =
        CgroupGuard(cgroup2_mount().join(format!("agentd-test-hide-{}", std::process::id())));
    fs::create_dir_all(&escape.0).expect("creating the escape cgroup");
    let dir = tempfile::tempdir().expect("temporary directory");
    // The agent runs as nobody: the go file and the helper it execs must be reachable for it,
    // wherever the tests were built (a CI clone may sit under a directory only root enters).
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .expect("opening the directory to nobody");
    let nobody_helper = dir.path().join("agentd-test-helper");
    fs::copy(helper(), &nobody_helper).expect("copying the helper");
    fs::set_permissions(&nobody_helper, fs::Permissions::from_mode(0o755))
        .expect("making the helper executable");
    let go = dir.path().join("go");
    // Leaves the launch cgroup (so that only its tag makes it the agent's), becomes another
    // user (hidden from agentd's /proc), waits for several sweeps, then connects.
    let script = format!(
        "echo $$ > {procs}; exec {helper} as-nobody sh -c \
         'while [ ! -e {go} ]; do sleep 0.1; done; exec {helper} net tcp 127.0.0.1 {port} 5'",
        procs = escape.0.join("cgroup.procs").display(),
        go = go.display(),
        helper = nobody_helper.display(),
    );
    let victim = daemon
        .launch(agent, &["sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("launching the agent");
    let pid = victim.id();
    wait_until("the agent left its launch cgroup", || {
        agentd::cgroups::procs(&escape.0)
            .unwrap_or_default()
            .contains(&pid)
    });
    // What agentd sees: its own mount namespace, without CAP_SYS_PTRACE.
    wait_until("the agent is hidden from agentd's /proc", || {
        !Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", daemon.pid()))
            .arg(helper())
            .args(["without-ptrace", "test", "-e"])
            .arg(format!("/proc/{pid}"))
            .status()
            .expect("nsenter")
            .success()
    });
    // Several sweeps run while the agent is hidden.
    std::thread::sleep(std::time::Duration::from_secs(3));
    fs::write(&go, "").expect("writing the go file");
    let output = victim.wait_with_output().expect("waiting for the agent");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("ok=0 eperm=5 other=0"),
        "the hidden agent lost its tag: {stdout}"
    );
    let mut denied = Vec::new();
    wait_until("the denials are reported", || {
        denied.extend(daemon.events().into_iter().filter(|line| {
            line.contains("\"kind\":\"net\"")
                && line.contains(&format!("\"pid\":{pid}"))
                && line.contains("deny")
        }));
        denied.len() >= 5
    });
    assert!(denied[0].contains(agent), "{}", denied[0]);
    drop(listener);
}

/// Receives one descriptor sent with `SCM_RIGHTS` on `via`.
fn receive_fd(via: &UnixStream) -> UnixStream {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let fd_len = u32::try_from(size_of::<i32>()).expect("small");
    // SAFETY: pure arithmetic on a length.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space;
    // SAFETY: `message` points at live buffers.
    let received = unsafe { libc::recvmsg(via.as_raw_fd(), &raw mut message, 0) };
    assert!(
        received >= 0,
        "recvmsg: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel filled the control buffer; the header is checked before use.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&raw const message);
        assert!(
            !header.is_null()
                && (*header).cmsg_level == libc::SOL_SOCKET
                && (*header).cmsg_type == libc::SCM_RIGHTS,
            "no descriptor was passed"
        );
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<i32>());
        UnixStream::from_raw_fd(fd)
    }
}

/// Runs `pass-fd` (from `command`) against `daemon`'s admin socket; returns the connection it
/// handed over, once the process that opened it has exited.
fn handed_over_admin_connection(daemon: &Daemon, mut command: Command) -> UnixStream {
    let dir = tempfile::tempdir().expect("temporary directory");
    let courier = dir.path().join("courier.sock");
    let listener = UnixListener::bind(&courier).expect("binding the courier socket");
    let mut connector = command
        .arg(helper())
        .arg("pass-fd")
        .arg(daemon.admin_socket())
        .arg(&courier)
        .spawn()
        .expect("starting the connector");
    let (via, _) = listener.accept().expect("the connector calls");
    let connection = receive_fd(&via);
    let status = connector.wait().expect("waiting for the connector");
    assert!(status.success(), "the connector failed: {status}");
    connection
}

/// Sends an `apply` that would drop every rule on `connection`; returns the JSON answer.
fn apply_over(connection: &UnixStream) -> serde_json::Value {
    let request = agentd::api::AdminRequest::Apply {
        policy: String::new(),
    };
    let mut line = serde_json::to_string(&request).expect("encoding the request");
    line.push('\n');
    let mut writer = connection;
    writer
        .write_all(line.as_bytes())
        .expect("sending the request");
    let mut answer = String::new();
    BufReader::new(connection)
        .read_line(&mut answer)
        .expect("reading the answer");
    serde_json::from_str(&answer).unwrap_or_else(|err| panic!("{err}: {answer:?}"))
}

#[test]
fn admin_connection_opened_by_an_agent_is_refused_in_the_hands_of_an_untagged_process() {
    let agent = "courier-agent";
    let daemon = Daemon::start(&agent_policy(agent));
    let _launched = launch_cgroup(agent);
    let before = daemon.status();
    // A tagged root process connects, hands the connection to this (untagged) test process and
    // exits: its pid now names nobody tagged.
    let connection = handed_over_admin_connection(&daemon, daemon.launch(agent, &[]));
    let answer = apply_over(&connection);
    assert_eq!(answer["ok"], false, "{answer}");
    // Refused at accept (the connector was alive and tagged) or, if agentd accepted only after
    // the connector had exited, because it exited: never served.
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("agents may not use the admin socket") || error.contains("has exited"),
        "{answer}"
    );
    let after = daemon.status();
    assert_eq!(
        (after.agents, after.rules),
        (before.agents, before.rules),
        "the policy changed"
    );
}

#[test]
fn admin_connection_of_a_process_that_exited_is_refused() {
    let daemon = Daemon::start(&agent_policy("kept-agent"));
    let before = daemon.status();
    // An untagged root process connects, hands the connection over and exits.
    let connection = handed_over_admin_connection(&daemon, Command::new("env"));
    let answer = apply_over(&connection);
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("has exited"), "{answer}");
    assert_eq!(daemon.status().agents, before.agents, "the policy changed");
}

/// An agent (`forking-agent`) denied 127.0.0.1:`port`, capped at `cap` live processes.
fn capped_agent(port: u16) -> String {
    format!(
        "[[agent]]\nname = \"forking-agent\"\n[agent.network]\ndefault = \"allow\"\n\
         [[agent.network.rule]]\nid = \"no-local\"\naction = \"deny\"\ncidr = \"127.0.0.1/32\"\nports = \"{port}\"\n"
    )
}

#[test]
fn agent_past_its_process_cap_keeps_every_child_tagged_and_denied_and_is_reported() {
    let agent = "forking-agent";
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a listener");
    let port = listener.local_addr().expect("local address").port();
    let daemon = Daemon::start_with(&capped_agent(port), "max_processes_per_agent = 8\n");
    if daemon.status().file_enforcement == "available" {
        // With BPF LSM the forks past the cap fail: vm::tags covers that.
        eprintln!("not run: BPF LSM is active here, so forks past the cap are refused");
        return;
    }
    let _launched = launch_cgroup(agent);
    let dir = tempfile::tempdir().expect("temporary directory");
    let pids = dir.path().join("pids");
    // The shell and 12 sleeps: 13 live processes against a cap of 8, then one more that
    // connects. No command substitution: every fork is one of these.
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 60 > /dev/null 2>&1 & echo $! >> {pids}; done; \
         exec {helper} net tcp 127.0.0.1 {port} 1",
        pids = pids.display(),
        helper = helper().display(),
    );
    let output = daemon
        .launch(agent, &["sh", "-c", &script])
        .output()
        .expect("running the agent");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let children: Vec<u32> = fs::read_to_string(&pids)
        .expect("reading the pids")
        .lines()
        .map(|line| line.parse().expect("a pid"))
        .collect();
    assert_eq!(children.len(), 12, "every fork succeeded without BPF LSM");
    for child in &children {
        daemon.wait_tagged(*child, agent);
    }
    // The process past the cap is still the agent's: its connect is denied.
    assert!(
        stdout.contains("ok=0 eperm=1 other=0"),
        "the capped agent's connect was not denied: {stdout}"
    );
    let mut capped = Vec::new();
    wait_until("tag_cap events are printed", || {
        capped.extend(
            daemon
                .events()
                .into_iter()
                .filter(|line| line.contains("\"kind\":\"tag_cap\"")),
        );
        capped.len() >= 5
    });
    for line in &capped {
        assert!(
            line.contains(agent) && line.contains("\"refused\":false"),
            "{line}"
        );
    }
    let status = daemon.status();
    assert!(
        status.tags_over_cap >= 5 && status.forks_refused_over_cap == 0,
        "{status:?}"
    );
    for child in children {
        agentd_tests::kill(child);
    }
    drop(listener);
}
