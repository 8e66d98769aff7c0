//! Descriptors an agent opened before a rule: a read rule applied while the agent holds a file
//! open, and a quarantine while it holds one open for writing, judge the reads and writes it
//! makes through those descriptors from then on (`file_permission`, hook `held`).

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ChildStdout, Stdio},
};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

use crate::files_namespace::{denied, file_events_until};

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
        policy.push_str(&format!(
            "[agent.files]\n[[agent.files.rule]]\nid = \"vault\"\naction = \"deny\"\n\
             path = \"{}\"\naccess = [\"read\"]\n",
            vault.display()
        ));
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

    agentd::api::admin::<agentd::api::Quarantined>(
        daemon.admin_socket(),
        &agentd::api::AdminRequest::Quarantine {
            agent: agent.to_owned(),
            release: false,
        },
    )
    .expect("quarantine");
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
