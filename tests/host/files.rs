//! File rules on any kernel. The probe must tell the truth: it says "available" exactly when
//! the LSM programs really attach. This tier runs both on this project's development kernel
//! (which lists BPF LSM but refuses its programs) and inside the vm tier's kernels (which
//! accept them), so both answers are exercised. Where enforcement is unavailable, agentd
//! still observes opens that break a rule, through syscall tracepoints, and says that it does
//! not enforce.

use std::fs;

use agentd::sensors::files::{FileEnforcement, FileSensor, probe_enforcement};
use agentd_tests::{Daemon, launch_cgroup, load_object, wait_until};

#[test]
fn file_enforcement_probe_agrees_with_a_real_attach() {
    let probed = probe_enforcement(&mut load_object());
    let mut links = agentd::pins::Links::unpinned();
    let attached = FileSensor::attach(&mut load_object(), true, &mut links);
    match (&probed, &attached) {
        (FileEnforcement::Available, Ok(_)) => {}
        (FileEnforcement::Unavailable(why), Err(_)) => {
            assert!(!why.is_empty());
            eprintln!("file enforcement unavailable here: {why}");
        }
        _ => panic!(
            "probe said {probed:?} but attaching gave {:?}",
            attached.as_ref().map(|_| "attached")
        ),
    }
}

#[test]
fn probe_leaves_the_lsm_program_usable_afterwards() {
    let mut object = load_object();
    if probe_enforcement(&mut object) == FileEnforcement::Available {
        FileSensor::attach(&mut object, true, &mut agentd::pins::Links::unpinned())
            .expect("attaching after a successful probe");
    }
}

/// Without BPF LSM, a tagged agent's read of a protected file goes through, and agentd reports
/// it as an observed violation with the rule, the path the process used and the kernel object;
/// status says enforcement is unavailable and why. With BPF LSM (inside the vm tier), the same
/// read is denied instead.
#[test]
fn file_rules_are_observed_where_they_cannot_be_enforced() {
    let agent = "observed-files";
    let dir = tempfile::tempdir().expect("temporary directory");
    let secrets = dir.path().join("secrets");
    fs::create_dir(&secrets).expect("secrets dir");
    fs::write(secrets.join("key"), "k").expect("key");
    fs::write(dir.path().join("app.env"), "e").expect("env file");
    fs::write(dir.path().join("public.txt"), "p").expect("public");
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"no-secrets\"\naction = \"deny\"\npath = \"{}\"\naccess = [\"read\"]\n\
         [[agent.files.rule]]\nid = \"no-env\"\naction = \"deny\"\nextension = \"env\"\n",
        secrets.display()
    ));
    let _launched = launch_cgroup(agent);
    let status = daemon.status();
    let enforcing = status.file_enforcement == "available";

    let read = |path: &std::path::Path| {
        daemon
            .launch(agent, &["cat", path.to_str().expect("UTF-8")])
            .output()
            .expect("running cat")
            .status
            .success()
    };
    let key = secrets.join("key");
    assert_eq!(read(&key), !enforcing, "the protected file");
    assert_eq!(
        read(&dir.path().join("app.env")),
        !enforcing,
        "by extension"
    );
    assert!(read(&dir.path().join("public.txt")), "an unprotected file");

    let mut events: Vec<serde_json::Value> = Vec::new();
    wait_until("the file events are printed", || {
        events.extend(
            daemon
                .events()
                .iter()
                .filter(|line| line.contains("\"kind\":\"file\""))
                .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON event")),
        );
        events.len() >= 2
    });
    let event = events
        .iter()
        .find(|e| e["rule"] == format!("{agent}/no-secrets"))
        .unwrap_or_else(|| panic!("an event for the protected file: {events:#?}"));
    assert_eq!(event["agent"]["name"], agent);
    assert_eq!(event["access"][0], "read");
    assert!(
        events
            .iter()
            .any(|e| e["rule"] == format!("{agent}/no-env")),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("public.txt"))),
        "{events:#?}"
    );

    // A bad file rule is refused by field, and the rules in force stay.
    refuse_bad_file_rules(&daemon, agent);
    assert_eq!(read(&key), !enforcing, "the rule in force stays");
    wait_until("the rule still reports", || {
        daemon
            .events()
            .iter()
            .any(|line| line.contains("no-secrets"))
    });

    if enforcing {
        assert_eq!(event["verdict"], "deny", "{event}");
        assert_eq!(event["hook"], "open");
        assert_eq!(event["path_source"], "kernel");
        assert_eq!(event["path"], key.to_str().unwrap());
        assert_eq!(status.file_monitoring, "lsm");
    } else {
        assert!(
            status.file_enforcement.starts_with("unavailable: ")
                && status.file_enforcement.len() > "unavailable: ".len(),
            "{}",
            status.file_enforcement
        );
        assert!(
            status.file_monitoring.starts_with("tracepoints"),
            "{}",
            status.file_monitoring
        );
        assert_eq!(event["verdict"], "allow", "{event}");
        assert_eq!(event["would_deny"], true);
        assert_eq!(event["observed"], true);
        assert_eq!(event["hook"], "observed_open");
        assert_eq!(event["path_source"], "as_passed");
        assert_eq!(event["path"], key.to_str().unwrap());
    }
}

fn refuse_bad_file_rules(daemon: &Daemon, agent: &str) {
    let refused = daemon.apply(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.files]\n\
         [[agent.files.rule]]\nid = \"typo\"\naction = \"deny\"\nset = \"sensitve\"\n\
         [[agent.files.rule]]\nid = \"rel\"\naction = \"deny\"\npath = \"secrets\"\n"
    ));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("agent[0].files.rule[0].set: unknown file set \"sensitve\"")
            && stderr.contains("agent[0].files.rule[1].path: secrets is not an absolute path"),
        "{stderr}"
    );
}
