//! Exec events: `tp_btf/sched_process_exec` fires after a successful exec, when the new image is
//! in place, so `comm` and the credentials are those of the new program.

use agentd_common::{ARGS_LEN, AgentTag, EventKind, ExecEvent, FILENAME_LEN, InodeKey};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    events::{header, reserve, wakeup},
    kernel::{file_inode_key, offsets, read_field},
    tagging::{cgroup_tag, discovery_tag, mark_late, set_tag, tag_of},
};

/// Arguments of the `sched_process_exec` tracepoint:
/// `(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
const ARG_TASK: usize = 0;
const ARG_BPRM: usize = 2;

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    // A tracepoint cannot change the outcome; the return value is ignored by the kernel.
    match try_sched_process_exec(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

fn try_sched_process_exec(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let offsets = offsets();
    let task: *const u8 = ctx.arg(ARG_TASK);
    let bprm: *const u8 = ctx.arg(ARG_BPRM);

    let Some(mut entry) = reserve::<ExecEvent>() else {
        return Err(());
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mut flags = 0;

    let tgid = (pid_tgid >> 32) as u32;

    // The executed file, by kernel object: what discovery rules match on.
    let exe = read_field::<*const u8>(bprm, offsets.bprm_file)
        .and_then(|file| file_inode_key(&offsets, file))
        .unwrap_or(InodeKey {
            dev: 0,
            pad: 0,
            ino: 0,
        });
    // A tag is never replaced: a tagged process cannot exec its way into another identity.
    let tag = match tag_of(tgid) {
        Some(tag) => tag,
        None => match cgroup_tag().or_else(|| discovery_tag(&exe)) {
            Some(tag) => {
                if set_tag(tgid, &tag) {
                    flags |= ExecEvent::FLAG_NEWLY_TAGGED;
                    // Descriptors it kept across the exec were opened untagged.
                    mark_late(tgid);
                }
                tag
            }
            None => AgentTag::NONE,
        },
    };

    let ppid = read_field::<*const u8>(task, offsets.task_real_parent)
        .and_then(|parent| read_field::<i32>(parent, offsets.task_tgid));
    let ppid = ppid.map_or_else(
        |_| {
            flags |= ExecEvent::FLAG_PPID_UNKNOWN;
            0
        },
        i32::cast_unsigned,
    );

    // SAFETY: `event` points at a reserved, writable ring-buffer slot of the right size; every
    // field is written before submit (the file name up to its NUL, the rest is never read).
    unsafe {
        (*event).header = header(EventKind::Exec);
        (*event).pid = tgid;
        (*event).ppid = ppid;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);

        let filename = &mut (*event).filename;
        let len = match read_field::<*const u8>(bprm, offsets.bprm_filename) {
            Ok(name) => bpf_probe_read_kernel_str_bytes(name, filename).map_or(0, <[u8]>::len),
            Err(_) => 0,
        };
        if len == 0 {
            filename[0] = 0;
        }
        // The helper keeps room for the NUL; a name that filled the buffer was cut.
        if len >= FILENAME_LEN - 1 {
            flags |= ExecEvent::FLAG_FILENAME_TRUNCATED;
        }
        (*event).filename_len = len as u32;
        (*event).tag = tag;
        (*event).exe = exe;

        // The argument vector, as the kernel copied it onto the new stack. The new program
        // has not run yet, so nothing it does can change what is read here.
        let args = &mut (*event).args;
        let (start, end) = read_field::<*const u8>(task, offsets.task_mm)
            .and_then(|mm| {
                Ok((
                    read_field::<u64>(mm, offsets.mm_arg_start)?,
                    read_field::<u64>(mm, offsets.mm_arg_end)?,
                ))
            })
            .unwrap_or((0, 0));
        let mut args_len = end.saturating_sub(start) as usize;
        if args_len > ARGS_LEN {
            args_len = ARGS_LEN;
            flags |= ExecEvent::FLAG_ARGS_TRUNCATED;
        }
        if bpf_probe_read_user_buf(start as *const u8, &mut args[..args_len]).is_err() {
            args_len = 0;
        }
        (*event).args_len = args_len as u32;
        (*event).flags = flags;
    }
    entry.submit(wakeup::QUIET);
    Ok(())
}
