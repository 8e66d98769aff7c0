//! The file-enforcement probe must tell the truth on any kernel: it says "available" exactly
//! when the `file_open` LSM program really attaches. This tier runs both on this project's
//! development kernel (which lists BPF LSM but refuses its programs) and inside the vm tier's
//! kernels (which accept them), so both answers are exercised.

use agentd::sensors::files::{FileEnforcement, FileSensor, probe_enforcement};
use agentd_tests::load_object;

#[test]
fn file_enforcement_probe_agrees_with_a_real_attach() {
    let probed = probe_enforcement(&mut load_object());
    let attached = FileSensor::attach(&mut load_object());
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
        FileSensor::attach(&mut object).expect("attaching after a successful probe");
    }
}
