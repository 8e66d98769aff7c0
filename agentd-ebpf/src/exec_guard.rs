//! Exec rules that follow what really runs. `bprm_check_security` (`files.rs`) decides the
//! program an exec names; a process can also run a file without exec'ing it, by asking the
//! dynamic loader to map it (`ld-linux-x86-64.so.2 /path/to/tool`), and it can exec a file that
//! has no name (a memfd it copied the bytes into). Here an executable mapping of a file is
//! judged as an exec of that file, and an exec of a nameless file is denied unless the agent's
//! policy allows anonymous executables. A program or mapping on an overlay runs a layer's file:
//! that file's exec rules decide too, so an overlay of a ruled directory is not a way round
//! them.

use agentd_common::{ExecAgent, FileEvent, FileHook, file_access};
use aya_ebpf::{
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};

use crate::{
    file_rules::{Access, Hit, current_agent, decide, path_kind, report},
    kernel::{bprm_file, file_inode_key, offsets, read_field},
    walk::{file_walk_start, layer_file},
};

/// Agent → its exec settings. 4,096, as many agents as can be named; agentd writes one entry
/// per agent of the policy, and an agent without one is denied anonymous execs.
#[map]
pub static EXEC_AGENTS: HashMap<u32, ExecAgent> = HashMap::with_max_entries(4096, 0);

/// `PROT_EXEC` in `mmap(2)` and `mprotect(2)`.
const PROT_EXEC: u64 = 0x4;

const EPERM: i32 = 1;

/// The verdict on running the bytes of `file` (an executable mapping of it, or an exec of an
/// overlay's file whose bytes are `file`'s) by a tagged process: an exec of `file`, judged
/// from where `file` really lies. `named` is the file the process named, whose `f_path` the
/// event reports.
#[inline(always)]
fn judge_run<const PATH: u8>(named: *const u8, file: *const u8, hook: FileHook) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let offsets = offsets();
    let Ok(key) = file_inode_key(&offsets, file) else {
        return 0;
    };
    // 6.1 opens a layer's file under the overlay's path: the walk starts from the real one.
    let walk = file_walk_start(file);
    let access = Access {
        agent,
        name_dentry: walk,
        walk,
        names_first: false,
        key,
        access: file_access::EXEC,
        open_flags: read_field::<u32>(file, offsets.file_flags).unwrap_or(0),
        hook,
        // SAFETY: `f_path` lies inside the `struct file`.
        path: unsafe { named.add(offsets.file_path as usize) },
        observed: false,
        flags: 0,
    };
    decide::<PATH>(&offsets, &access)
}

/// The verdict on an executable mapping of `file` by a tagged process: an exec of the file.
#[inline(always)]
fn judge_mapping<const PATH: u8>(file: *const u8, hook: FileHook) -> i32 {
    if file.is_null() {
        // Anonymous memory: no file for a rule to name.
        return 0;
    }
    judge_run::<PATH>(file, file, hook)
}

/// `security_mmap_file(file, reqprot, prot, flags)`: a mapping with `PROT_EXEC` of a file the
/// agent may not exec is refused, whoever maps it (the kernel's ELF loader, the dynamic
/// loader, the program itself). A file on an overlay is judged twice: by its own name, then as
/// the layer's file it stands for (overlayfs hands the mapping to that file), so that an agent
/// that mounts an overlay over a directory of tools (in a user namespace it may) runs them
/// under the layer's rules, not as new, unruled files.
#[lsm(hook = "mmap_file")]
pub fn exec_mmap_file(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let prot: u64 = ctx.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    match judge_mapping::<{ path_kind::RESOLVED }>(ctx.arg(0), FileHook::MapExec) {
        0 => judge_layer(ctx.arg(0), FileHook::MapExec),
        denied => denied,
    }
}

/// `security_file_mprotect(vma, reqprot, prot)`: making a file mapping executable afterwards
/// is the same as mapping it so.
#[lsm(hook = "file_mprotect")]
pub fn exec_file_mprotect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let prot: u64 = ctx.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let vma: *const u8 = ctx.arg(0);
    let Ok(file) = read_field::<*const u8>(vma, offsets().vma_file) else {
        return 0;
    };
    judge_mapping::<{ path_kind::NAME }>(file, FileHook::ProtectExec)
}

/// Running `file`, when it is an overlay's: an exec of the layer's file it stands for, reported
/// under `file`'s path.
#[inline(always)]
fn judge_layer(file: *const u8, hook: FileHook) -> i32 {
    match layer_file(file) {
        Some(layer) => judge_run::<{ path_kind::RESOLVED }>(file, layer, hook),
        None => 0,
    }
}

/// `security_bprm_check_security(bprm)`, beside the exec rules' program: the executed file (the
/// program, or an interpreter it names) has no link left in any directory. That is a memfd, an
/// `O_TMPFILE` never linked in, or a file unlinked while open, reached through
/// `/proc/self/fd/N` or `execveat(fd, "", AT_EMPTY_PATH)`: bytes that no exec rule can name.
/// Then, for a program on an overlay, the layer's file it stands for, which is what runs: its
/// exec rules decide too (the exec rules' program judged the overlay's name).
#[lsm(hook = "bprm_check_security")]
pub fn exec_anonymous(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    match try_exec_anonymous(&ctx) {
        Ok(0) | Err(0) => {
            let offsets = offsets();
            let bprm: *const u8 = ctx.arg(0);
            judge_layer(bprm_file(&offsets, bprm), FileHook::Exec)
        }
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_exec_anonymous(ctx: &LsmContext) -> Result<i32, i32> {
    let Some(agent) = current_agent() else {
        return Ok(0);
    };
    let offsets = offsets();
    let bprm: *const u8 = ctx.arg(0);
    let file = bprm_file(&offsets, bprm);
    let inode = read_field::<*const u8>(file, offsets.file_inode).map_err(|_| 0)?;
    let links = read_field::<u32>(inode, offsets.inode_nlink).map_err(|_| 0)?;
    if links != 0 {
        return Ok(0);
    }
    let (allowed, audit, rule) = match EXEC_AGENTS.get_ptr(agent) {
        // SAFETY: a valid map value pointer, copied out field by field.
        Some(value) => unsafe { ((*value).allow_anonymous, (*value).audit, (*value).rule) },
        None => (0, 0, 0),
    };
    if allowed != 0 {
        return Ok(0);
    }
    let key = file_inode_key(&offsets, file).map_err(|_| 0)?;
    let dentry = read_field::<*const u8>(file, offsets.file_dentry).map_err(|_| 0)?;
    let access = Access {
        agent,
        name_dentry: dentry,
        walk: dentry,
        names_first: false,
        key,
        access: file_access::EXEC,
        open_flags: 0,
        hook: FileHook::Exec,
        // SAFETY: `f_path` lies inside the exec's `struct file`.
        path: unsafe { file.add(offsets.file_path as usize) },
        observed: false,
        flags: 0,
    };
    if audit != 0 {
        report::<{ path_kind::RESOLVED }>(
            &offsets,
            &access,
            &Hit {
                rule,
                access: file_access::EXEC,
            },
            false,
            FileEvent::FLAG_ANONYMOUS | FileEvent::FLAG_WOULD_DENY,
        );
        return Ok(0);
    }
    let hit = Hit {
        rule,
        access: file_access::EXEC,
    };
    report::<{ path_kind::RESOLVED }>(&offsets, &access, &hit, true, FileEvent::FLAG_ANONYMOUS);
    Ok(-EPERM)
}
