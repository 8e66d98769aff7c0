use agentd::{events::Event, sensors::process::ProcessSensor};
use agentd_tests::{
    load_object, loaded_program_ids, own_cgroup_id, unique_executable, wait_for_event, wait_until,
};

#[tokio::test]
async fn exec_event_reports_child_pid_ppid_filename_and_cgroup() {
    let mut object = load_object();
    let mut links = agentd::pins::Links::unpinned();
    let _sensor = ProcessSensor::attach(&mut object, false, &mut links)
        .expect("attaching the process sensor");
    let mut reader =
        agentd::events::EventReader::new(&mut object).expect("opening the ring buffer");

    let (_dir, program) = unique_executable("/bin/true".as_ref(), "agentd-exec-probe");
    // Under busybox (the vm tier) the renamed copy complains that it is no applet: the exec
    // still happens, which is all this test needs.
    let child = std::process::Command::new(&program)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("running {}: {err}", program.display()));
    let pid = child.id();
    let expected = program.to_str().expect("UTF-8 temp path").to_owned();

    let event = wait_for_event(
        &mut reader,
        "the child's exec",
        |event| matches!(event, Event::Exec(exec) if exec.pid == pid),
    )
    .await;
    let Event::Exec(exec) = event else {
        unreachable!("matched an exec event")
    };
    assert_eq!(exec.filename, expected);
    assert!(!exec.filename_truncated);
    assert_eq!(exec.ppid, Some(std::process::id()), "{exec:?}");
    assert_eq!(
        exec.comm, "agentd-exec-pro",
        "comm is the file name cut to 15 bytes"
    );
    assert_eq!(exec.cgroup_id, own_cgroup_id(), "{exec:?}");
    // SAFETY: getuid has no preconditions.
    assert_eq!(exec.uid, unsafe { libc::getuid() });
    let mut child = child;
    child.wait().expect("reaping the child");
    assert_eq!(reader.dropped().expect("reading the drop counter"), 0);
}

#[test]
fn dropping_the_sensor_and_object_unloads_the_process_programs() {
    // The kernel keeps 15 bytes of a program's name: "sched_process_e" is both exec and exit.
    let ids = || {
        let mut ids = loaded_program_ids("sched_process_exec");
        ids.extend(loaded_program_ids("sched_process_fork"));
        ids
    };
    let ours: Vec<u32> = {
        let before = ids();
        let mut object = load_object();
        let mut links = agentd::pins::Links::unpinned();
        let _sensor = ProcessSensor::attach(&mut object, false, &mut links)
            .expect("attaching the process sensor");
        let ours: Vec<u32> = ids().difference(&before).copied().collect();
        assert_eq!(ours.len(), 3, "exec, fork and exit are loaded: {ours:?}");
        ours
    };
    wait_until("the process programs are unloaded after drop", || {
        let loaded = ids();
        ours.iter().all(|id| !loaded.contains(id))
    });
}
