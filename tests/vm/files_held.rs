//! Descriptors an agent opened before a rule: a read rule applied while the agent holds a file
//! open, and a quarantine while it holds one open for writing, judge the reads and writes it
//! makes through those descriptors from then on (`file_permission`, hook `held`); a descriptor
//! passed to an agent is judged as it arrives (`file_receive`, hook `receive`).

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ChildStdout, Stdio},
};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

use crate::files_namespace::{denied, file_events_until, fs_ops, untagged_fs_ops};

/// A shell in the agent that opens `vault/secret` and `plain` for reading and `log` for
/// appending, says so in `ready`, and at each `goN` file tries them through the descriptors it
/// already holds, printing what happened (a pipe: quarantine refuses the agent's file writes).
const HOLDER: &str = r#"
exec 3<"$1/vault/secret" 4<"$1/plain" 5>>"$1/log"
: > "$1/ready"
while [ ! -e "$1/go1" ]; do sleep 0.05; done
r=""
if read -r x <&3; then r="secret=read"; else r="secret=denied"; fi
if read -r x <&4; then r="$r plain=read"; else r="$r plain=denied"; fi
if echo one >&5; then r="$r log=written"; else r="$r log=denied"; fi
echo "$r"
while [ ! -e "$1/go2" ]; do sleep 0.05; done
if echo two >&5; then r="log=written"; else r="log=denied"; fi
echo "$r"
"#;

fn policy(agent: &str, vault: Option<&Path>) -> String {
    let mut policy = format!("[[agent]]\nname = \"{agent}\"\n");
    if let Some(vault) = vault {
        use std::fmt::Write as _;
        let _ = write!(
            policy,
            "[agent.files]\n[[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\n\
             path = \"{}\"\naccess = [\"read\"]\n",
            vault.display()
        );
    }
    policy
}

struct Holder(Child, BufReader<ChildStdout>);

impl Holder {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.1.read_line(&mut line).expect("the holder's output");
        line.trim().to_owned()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn descriptors_opened_before_a_rule_or_a_quarantine_are_judged_by_it() {
    let agent = "holding-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path();
    fs::create_dir(root.join("vault")).expect("vault");
    fs::write(root.join("vault/secret"), "s\n").expect("secret");
    fs::write(root.join("plain"), "p\n").expect("plain");
    fs::write(root.join("log"), "").expect("log");
    let daemon = Daemon::start(&policy(agent, None));
    let _launched = launch_cgroup(agent);
    let root_s = root.to_str().expect("UTF-8 path");
    let mut child = daemon
        .launch(agent, &["sh", "-c", HOLDER, "holder", root_s])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the holder");
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut holder = Holder(child, stdout);
    let ready = root.join("ready");
    wait_until("the holder's descriptors", || ready.exists());

    let applied = daemon.apply(&policy(agent, Some(&root.join("vault"))));
    assert!(
        applied.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    fs::write(root.join("go1"), "").expect("go1");
    assert_eq!(
        holder.line(),
        "secret=denied plain=read log=written",
        "agentd's log:\n{}",
        daemon.log()
    );
    let events = file_events_until(&daemon, "the held read's denial", |events| {
        denied(events, agent, "held", |e| {
            e["rule"] == format!("{agent}/vault") && e["path"] == "secret"
        })
    });
    let event = events
        .iter()
        .find(|e| e["hook"] == "held" && e["verdict"] == "deny")
        .expect("found");
    assert_eq!(event["access"][0], "read", "{event}");

    daemon.quarantine(agent, false);
    fs::write(root.join("go2"), "").expect("go2");
    assert_eq!(
        holder.line(),
        "log=denied",
        "agentd's log:\n{}",
        daemon.log()
    );
    file_events_until(&daemon, "the held write's denial", |events| {
        denied(events, agent, "held", |e| {
            e["rule"] == "quarantine" && e["path"] == "log"
        })
    });
    assert_eq!(
        fs::read_to_string(root.join("log")).expect("log"),
        "one\n",
        "the quarantined write must not have reached the file"
    );
}

/// Sends `fd` over `stream` as one `SCM_RIGHTS` descriptor, with one byte of data.
fn send_fd(stream: &std::os::unix::net::UnixStream, fd: i32) {
    use std::os::fd::AsRawFd as _;
    let mut byte = [b'x'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // One descriptor's control message; 4 bytes of payload.
    let payload = u32::try_from(size_of::<i32>()).expect("small");
    // SAFETY: a zeroed msghdr is valid; the control message is written within its buffer.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(payload) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        assert!(
            libc::sendmsg(stream.as_raw_fd(), &raw const msg, 0) == 1,
            "sendmsg: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A descriptor that reaches an agent without an open by it, passed over a unix socket
/// (`SCM_RIGHTS`) or taken from another process (`pidfd_getfd`), is judged as an open with its
/// access when it arrives (`file_receive`): a read-denied file is left out, another one passes.
#[test]
fn descriptors_passed_to_an_agent_are_judged_as_it_receives_them() {
    use std::os::fd::AsRawFd as _;
    let agent = "receiving-agent";
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path();
    fs::create_dir(root.join("vault")).expect("vault");
    fs::write(root.join("vault/secret"), "s\n").expect("secret");
    fs::write(root.join("plain"), "p\n").expect("plain");
    let daemon = Daemon::start(&policy(agent, Some(&root.join("vault"))));
    let _launched = launch_cgroup(agent);
    // Opened by this untagged process, which the rules do not cover.
    let secret = fs::File::open(root.join("vault/secret")).expect("secret");
    let plain = fs::File::open(root.join("plain")).expect("plain");
    let (secret_fd, plain_fd) = (
        secret.as_raw_fd().to_string(),
        plain.as_raw_fd().to_string(),
    );
    let me = std::process::id().to_string();

    assert_eq!(
        fs_ops(
            &daemon,
            Some(agent),
            &["getfd", &me, &secret_fd, "getfd", &me, &plain_fd]
        ),
        "eperm ok",
        "pidfd_getfd of a read-denied file and of another one"
    );
    assert_eq!(untagged_fs_ops(&["getfd", &me, &secret_fd]), "ok");

    let socket = root.join("fds.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("unix listener");
    let sender = std::thread::spawn(move || {
        for file in [&secret, &plain] {
            let (stream, _) = listener.accept().expect("accept");
            send_fd(&stream, file.as_raw_fd());
        }
    });
    let socket_s = socket.to_str().expect("UTF-8 path");
    assert_eq!(
        fs_ops(
            &daemon,
            Some(agent),
            &["recv-fd", socket_s, "recv-fd", socket_s]
        ),
        "none ok",
        "SCM_RIGHTS of a read-denied file and of another one"
    );
    sender.join().expect("the sender");
    file_events_until(&daemon, "the receive denials", |events| {
        denied(events, agent, "receive", |e| {
            e["rule"] == format!("{agent}/vault") && e["path"] == "secret"
        })
    });
}

/// Reads `vault/secret` through descriptor 3 and `plain` through 4, which an untagged shell
/// opened before this process was tagged, and prints what happened.
const READ_HELD: &str = r#"if read -r x <&3; then r="secret=read"; else r="secret=denied"; fi
if read -r x <&4; then r="$r plain=read"; else r="$r plain=denied"; fi
echo "$r""#;

/// Waits until `done` holds for every event agentd has printed so far, which `seen` keeps.
fn events_until(
    daemon: &Daemon,
    seen: &mut Vec<serde_json::Value>,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) {
    wait_until(what, || {
        seen.extend(
            daemon
                .events()
                .iter()
                .filter_map(|line| serde_json::from_str(line).ok()),
        );
        done(seen)
    });
}

fn stdout_of(child: Child) -> String {
    let out = child.wait_with_output().expect("the reader's output");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A process tagged while it runs holds descriptors it opened untagged: at an exec that a
/// discovery rule tags (in the kernel), at an exec that agentd tags (a script rule, from
/// userspace), and at a fork after it moved itself into an agent's cgroup. Its reads through
/// them are judged by its agent's rules at once, before agentd has listed its files, and after.
#[test]
fn descriptors_a_process_opened_before_it_was_tagged_are_judged_by_its_rules() {
    use std::fmt::Write as _;
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path();
    fs::create_dir(root.join("vault")).expect("vault");
    // A line for each read: a read at the end of the file fails as a denial would.
    fs::write(root.join("vault/secret"), "s1\ns2\n").expect("secret");
    fs::write(root.join("plain"), "p1\np2\n").expect("plain");
    // Named `sh`: the guest's sh may be busybox, which runs the applet its name says.
    fs::create_dir(root.join("found")).expect("found");
    let exe = root.join("found/sh");
    fs::copy("/bin/sh", &exe).expect("a copy of sh for the discovery rule");
    let wait_go = "while [ ! -e \"$1/go\" ]; do sleep 0.05; done";
    // Reads at once (before agentd has listed its files) and again once told.
    fs::write(
        root.join("now-and-later.sh"),
        format!("r1=$({READ_HELD})\n{wait_go}\nr2=$({READ_HELD})\necho \"$r1; $r2\"\n"),
    )
    .expect("the exec-tagged agent's script");
    // Tagged only once agentd has seen its exec: reads when told.
    let script = root.join("agent.sh");
    fs::write(&script, format!("{wait_go}\n{READ_HELD}\n")).expect("the agent's script");
    let vault = root.join("vault");
    let (by_exec, by_script, by_cgroup) = ("late-exec", "late-script", "late-cgroup");
    let mut document = String::new();
    for agent in [by_exec, by_script, by_cgroup] {
        document.push_str(&policy(agent, Some(&vault)));
    }
    let _ = write!(
        document,
        "[[discovery]]\nid = \"by-exec\"\nagent = \"{by_exec}\"\npath = \"{}\"\n\
         [[discovery]]\nid = \"by-script\"\nagent = \"{by_script}\"\ninterpreter = \"/bin/sh\"\n\
         script = \"{}\"\n",
        exe.display(),
        script.display()
    );
    let daemon = Daemon::start(&document);
    let cgroup = launch_cgroup(by_cgroup);
    let root_s = root.to_str().expect("UTF-8 path");
    let opened = r#"exec 3<"$1/vault/secret" 4<"$1/plain""#;
    let run = |command: String| {
        std::process::Command::new("sh")
            .args(["-c", &command, "untagged", root_s])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the untagged shell")
    };
    let mut seen = Vec::new();

    // Tagged in the kernel at the exec; the same script, run by the discovered copy of sh.
    let exec = run(format!(
        r#"{opened}; exec "$1/found/sh" "$1/now-and-later.sh" "$1""#
    ));
    // Tagged by agentd when it sees the exec of `/bin/sh SCRIPT`.
    let scripted = run(format!(r#"{opened}; exec /bin/sh "$1/agent.sh" "$1""#));
    for (child, agent) in [(&exec, by_exec), (&scripted, by_script)] {
        daemon.wait_tagged(child.id(), agent);
    }
    let pids = [exec.id(), scripted.id()];
    events_until(&daemon, &mut seen, "agentd saw both execs", |events| {
        pids.iter().all(|pid| {
            events
                .iter()
                .any(|e| e["kind"] == "exec" && e["pid"] == *pid && e["newly_tagged"] == true)
        })
    });
    // A round trip through the daemon's loop: the batch that held the execs is done.
    let _ = daemon.status();
    fs::write(root.join("go"), "").expect("go");
    let expected = "secret=denied plain=read";
    assert_eq!(
        stdout_of(exec),
        format!("{expected}; {expected}"),
        "exec-tagged\n{}",
        daemon.log()
    );
    assert_eq!(
        stdout_of(scripted),
        expected,
        "script-tagged\n{}",
        daemon.log()
    );

    // Moved into the agent's cgroup untagged: the fork of the command substitution tags it.
    let procs = cgroup.0.join("cgroup.procs");
    let moved = run(format!(
        r#"{opened}; echo $$ > "{}"; r=$({READ_HELD}); echo "$r""#,
        procs.display()
    ));
    assert_eq!(
        stdout_of(moved),
        "secret=denied plain=read",
        "tagged at a fork\n{}",
        daemon.log()
    );

    for agent in [by_exec, by_script, by_cgroup] {
        events_until(
            &daemon,
            &mut seen,
            &format!("{agent}'s held denial"),
            |events| {
                denied(events, agent, "held", |e| {
                    e["rule"] == format!("{agent}/vault") && e["path"] == "secret"
                })
            },
        );
    }
}
