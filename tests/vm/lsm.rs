use std::{fs, io::ErrorKind, os::unix::fs::symlink};

use agentd::{
    events::{Event, EventReader, VerdictName},
    inode::inode_key,
    sensors::files::{FileSensor, bpf_lsm_active},
};
use agentd_tests::{load_object, wait_for_event};

const RULE_ID: u32 = 7;

#[tokio::test]
async fn lsm_file_open_denies_marker_file_with_eperm_and_reports_it() {
    assert!(
        bpf_lsm_active().expect("reading the active LSM list"),
        "BPF LSM is not active on this kernel: run this tier through `cargo xtask vm-test`"
    );
    let mut object = load_object();
    let mut links = agentd::pins::Links::unpinned();
    let mut sensor = FileSensor::attach(&mut object, true, &mut links)
        .expect("attaching the file_open LSM program");
    let mut reader = EventReader::new(&mut object).expect("opening the ring buffer");

    let dir = tempfile::tempdir().expect("temporary directory");
    let marker = dir.path().join("marker");
    let other = dir.path().join("other");
    fs::write(&marker, b"secret").expect("writing the marker");
    fs::write(&other, b"public").expect("writing the other file");
    let key = inode_key(&marker).expect("stat of the marker");
    sensor.deny(key, RULE_ID).expect("adding the deny rule");

    let err = fs::File::open(&marker).expect_err("opening the marker must be denied");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);

    // The rule names the kernel object, so other names for it are denied too.
    let link = dir.path().join("link");
    symlink(&marker, &link).expect("symlink to the marker");
    let hard = dir.path().join("hard");
    fs::hard_link(&marker, &hard).expect("hard link to the marker");
    for alias in [&link, &hard] {
        let err = fs::File::open(alias).expect_err("opening an alias of the marker must be denied");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EPERM),
            "{}: {err}",
            alias.display()
        );
    }

    assert_eq!(fs::read(&other).expect("other files still open"), b"public");

    let event = wait_for_event(
        &mut reader,
        "the denied open",
        |event| matches!(event, Event::File(file) if file.pid == std::process::id()),
    )
    .await;
    let Event::File(file) = event else {
        unreachable!("matched a file event")
    };
    assert_eq!(file.verdict, VerdictName::Deny);
    assert_eq!(file.rule_id, RULE_ID);
    assert_eq!((file.dev, file.ino), (key.dev, key.ino));
}
