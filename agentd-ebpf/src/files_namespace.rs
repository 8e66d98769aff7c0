//! Changes to the file system's names, decided in BPF LSM hooks on both ends: creating
//! (files, directories, symbolic links, FIFOs, sockets and device nodes), removing (`unlink`,
//! `rmdir`), renaming (with `RENAME_EXCHANGE`), linking and truncating. Without them a rule on a
//! directory or a name could be stepped around by changing which object a name leads to
//! instead of opening it: moving a protected file out, swapping it with another, renaming a
//! file over it, linking a file (or an `O_TMPFILE`) into a protected directory.
//!
//! What each change asks for, judged by `file_rules::guard_entry` (a name that exists as its
//! object, a name that does not yet as a new object in its directory):
//! - an object moved or given a new name: every access (read, write, exec), since its new name
//!   may lie beyond the rules on its old place: a rule denying reading a directory also denies
//!   moving its files to where they could be read;
//! - the destination of a rename or link: a write (of the object replaced, or of the directory
//!   that gains the name); for `RENAME_EXCHANGE`, whose destination moves too, every access;
//! - a creation, a removal, a truncation: a write.
//!
//! The creation and `rmdir` hooks are the `inode_*` ones, which every kernel with BPF LSM has;
//! unlink, rename, link and truncate by name use the `path_*` hooks (`CONFIG_SECURITY_PATH`, set
//! by Debian and most distributions), and `ftruncate(2)` reaches `file_truncate` from 6.2 on
//! (earlier kernels send it through `path_truncate`).

use agentd_common::{FileEvent, FileHook, file_access};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    file_rules::guard_entry,
    kernel::{offsets, read_at, read_field},
};

/// `renameat2`'s flag that swaps the two names.
const RENAME_EXCHANGE: u32 = 1 << 1;

/// Every access: what moving an object or giving it a new name asks for.
const EVERY_ACCESS: u32 = file_access::READ | file_access::WRITE | file_access::EXEC;

/// `security_path_unlink(const struct path *dir, struct dentry *dentry)`: removing a protected
/// file is writing it.
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        // An earlier LSM already denied: keep its answer.
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE, FileHook::Unlink, 0)
}

/// `security_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags)`, called once per
/// rename (also for `RENAME_EXCHANGE`, since 5.19): the object moved, then the destination.
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let moved = guard_entry(ctx.arg(1), EVERY_ACCESS, FileHook::Rename, 0);
    if moved != 0 {
        return moved;
    }
    let flags: u32 = ctx.arg(4);
    let destination = if flags & RENAME_EXCHANGE == 0 {
        file_access::WRITE
    } else {
        EVERY_ACCESS
    };
    guard_entry(
        ctx.arg(3),
        destination,
        FileHook::Rename,
        FileEvent::FLAG_DESTINATION,
    )
}

/// `security_path_link(old_dentry, new_dir, new_dentry)`: a new name for a protected file would
/// let it be reached from outside its directory, so it needs every access the rule covers; the
/// new name is a new entry in its directory (also for an `O_TMPFILE` linked in with `linkat`).
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let linked = guard_entry(ctx.arg(0), EVERY_ACCESS, FileHook::Link, 0);
    if linked != 0 {
        return linked;
    }
    guard_entry(
        ctx.arg(2),
        file_access::WRITE,
        FileHook::Link,
        FileEvent::FLAG_DESTINATION,
    )
}

/// `security_path_truncate(const struct path *path)`: `truncate(2)` by name opens nothing, so
/// it is decided here as a write (before 6.2 also `ftruncate(2)` and `O_TRUNC`).
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let path: *const u8 = ctx.arg(0);
    let Ok(dentry) = read_at::<*const u8>(path, offsets().path_dentry) else {
        return 0;
    };
    guard_entry(dentry, file_access::WRITE, FileHook::Truncate, 0)
}

/// `security_file_truncate(struct file *file)` (6.2 on): `ftruncate(2)` and the truncation of an
/// `O_TRUNC` open. The open itself was decided as a write already; this catches a descriptor
/// opened before the rule or the quarantine that now denies it.
#[lsm(hook = "file_truncate")]
pub fn file_truncate(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let file: *const u8 = ctx.arg(0);
    let Ok(dentry) = read_field::<*const u8>(file, offsets().file_dentry) else {
        return 0;
    };
    guard_entry(dentry, file_access::WRITE, FileHook::Truncate, 0)
}

/// `security_inode_create(struct inode *dir, struct dentry *dentry, umode_t mode)`: a new file
/// in a protected directory is a write to that directory; a new file whose name a rule covers
/// is a write to it. Afterwards every open of the file walks through the directory's dentry.
#[lsm(hook = "inode_create")]
pub fn inode_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE, FileHook::Create, 0)
}

/// `security_inode_mkdir(struct inode *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "inode_mkdir")]
pub fn inode_mkdir(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE, FileHook::Mkdir, 0)
}

/// `security_inode_symlink(struct inode *dir, struct dentry *dentry, const char *old_name)`.
#[lsm(hook = "inode_symlink")]
pub fn inode_symlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE, FileHook::Symlink, 0)
}

/// `security_inode_mknod(struct inode *dir, struct dentry *dentry, umode_t mode, dev_t dev)`:
/// FIFOs, sockets bound to a path and device nodes (a regular file from `mknod(2)` reaches
/// `inode_create`).
#[lsm(hook = "inode_mknod")]
pub fn inode_mknod(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE, FileHook::Mknod, 0)
}

/// `security_inode_rmdir(struct inode *dir, struct dentry *dentry)`: removing a directory is a
/// write of it and of the directory above.
#[lsm(hook = "inode_rmdir")]
pub fn inode_rmdir(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE, FileHook::Rmdir, 0)
}
