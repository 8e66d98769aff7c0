//! File decisions in BPF LSM hooks, on kernel objects: a file is identified by the device and
//! inode of the `struct file` being opened, never by the path string the process passed.

use agentd_common::{EventKind, FileEvent, InodeKey, Verdict};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};

use crate::{
    events::{EVENTS, count_drop, header},
    kernel::{file_inode_key, offsets, read_field},
};

/// Files that no one may open, keyed by kernel object, valued by rule id. 4,096 rules is far
/// more than any file policy names today; `agentd` refuses to load a policy that would not fit.
#[map]
pub static DENY_INODES: HashMap<InodeKey, u32> = HashMap::with_max_entries(4096, 0);

const EPERM: i32 = 1;

/// `security_file_open(struct file *file)`; BPF LSM adds the previous hook's return value as
/// the last argument.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        // An earlier LSM already denied: keep its answer.
        return previous;
    }
    match try_file_open(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_file_open(ctx: &LsmContext) -> Result<i32, i32> {
    let offsets = offsets();
    let file: *const u8 = ctx.arg(0);
    // A file whose inode cannot be read matches no rule: with no rule there is nothing to deny.
    let key = file_inode_key(&offsets, file).map_err(|_| 0)?;

    // SAFETY: the value is copied out immediately.
    let Some(&rule_id) = (unsafe { DENY_INODES.get(key) }) else {
        return Ok(0);
    };
    let open_flags = read_field::<u32>(file, offsets.file_flags).unwrap_or(0);
    report(key, rule_id, open_flags);
    Ok(-EPERM)
}

fn report(inode: InodeKey, rule_id: u32, open_flags: u32) {
    let event = FileEvent {
        header: header(EventKind::File),
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        verdict: Verdict::Deny as u32,
        inode,
        open_flags,
        rule_id,
    };
    if EVENTS.output::<FileEvent>(&event, 0).is_err() {
        count_drop();
    }
}
