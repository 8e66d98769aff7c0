//! The walk from a dentry up through its parents to its file system's root, shared by the
//! file rules and the decision's file controls. It runs in `bpf_loop`: the
//! verifier checks one step once instead of every level, and the bound (`FILE_WALK_LIMIT`)
//! sits far above any tree a path can name. Where the walk ends says whether the object's
//! place in the tree is known: its file system's root, or not (a disconnected dentry, a tree
//! deeper than the bound), which callers judge as unresolved instead of as outside every rule.

use core::ffi::c_void;

use agentd_common::{DCACHE_DISCONNECTED, FILE_WALK_LIMIT, OVERLAYFS_SUPER_MAGIC};
use aya_ebpf::helpers::generated::bpf_loop;

use crate::kernel::{offsets, read_at, read_field};

/// What a walk does at each dentry it visits.
pub(crate) trait Visit {
    /// Looks at `dentry`, `level` steps above where the walk started: true ends the walk here.
    fn visit(&mut self, dentry: *const u8, level: u32) -> bool;
}

/// How a walk ended.
#[repr(u32)]
#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// A visit ended it.
    Stopped = 0,
    /// It reached the root of the object's file system: every directory above was visited.
    Root = 1,
    /// The top is a disconnected dentry (a file opened by handle whose parents left the
    /// cache): the directories above the object are unknown.
    Disconnected = 2,
    /// Neither: the tree is deeper than the bound, or a parent could not be read.
    Unfinished = 3,
}

impl End {
    /// The object's place in the tree was not established: rules on directories above it
    /// could not be judged.
    pub(crate) fn unresolved(self) -> bool {
        matches!(self, Self::Disconnected | Self::Unfinished)
    }
}

/// Whether `dentry` is disconnected (its parents unknown to the cache).
#[inline(always)]
pub(crate) fn disconnected(dentry: *const u8) -> bool {
    let offsets = offsets();
    read_at::<u32>(dentry, offsets.dentry_flags).is_ok_and(|flags| flags & DCACHE_DISCONNECTED != 0)
}

/// The dentry an open `file`'s walk starts from: `f_path`'s, unless that dentry is not the
/// file's inode's. Then the file is one that overlayfs opened on its lower or upper layer with
/// the overlay's path (6.1's `open_with_fake_path`), and the walk starts from a dentry of the
/// real inode, so that rules on the layer's directories apply. Null when the real inode has no
/// dentry: the walk then cannot place the object.
#[inline(always)]
pub(crate) fn file_walk_start(file: *const u8) -> *const u8 {
    let offsets = offsets();
    let Ok(dentry) = read_field::<*const u8>(file, offsets.file_dentry) else {
        return core::ptr::null();
    };
    let (Ok(named), Ok(real)) = (
        read_field::<*const u8>(dentry, offsets.dentry_inode),
        read_field::<*const u8>(file, offsets.file_inode),
    ) else {
        return dentry;
    };
    if named == real {
        return dentry;
    }
    // `i_dentry.first` points at an alias's `d_u.d_alias`, the union's first member.
    match read_field::<*const u8>(real, offsets.inode_dentries) {
        Ok(alias) if !alias.is_null() => alias.wrapping_sub(offsets.dentry_alias as usize),
        _ => core::ptr::null(),
    }
}

/// The layer's file behind `file` when `file` is an overlay's (overlayfs keeps it in the
/// overlay file's `private_data` in the kernels agentd runs on): the file whose bytes an exec
/// or an executable mapping of `file` really runs. None for any other file, or when what
/// `private_data` holds is not a file on another file system (then nothing is substituted).
#[inline(always)]
pub(crate) fn layer_file(file: *const u8) -> Option<*const u8> {
    let offsets = offsets();
    if !on_overlay(file) {
        return None;
    }
    let layer = read_field::<*const u8>(file, offsets.file_private_data).ok()?;
    // A file on a real file system: its inode and super block read, and it is not an overlay's
    // (a nested overlay's layer file is judged by its own name only).
    let inode = read_field::<*const u8>(layer, offsets.file_inode).ok()?;
    let sb = read_field::<*const u8>(inode, offsets.inode_sb).ok()?;
    let magic = read_field::<u64>(sb, offsets.sb_magic).ok()?;
    (magic != OVERLAYFS_SUPER_MAGIC).then_some(layer)
}

/// Whether `file` is on an overlay.
#[inline(always)]
fn on_overlay(file: *const u8) -> bool {
    let offsets = offsets();
    read_field::<*const u8>(file, offsets.file_inode)
        .and_then(|inode| read_field::<*const u8>(inode, offsets.inode_sb))
        .and_then(|sb| read_field::<u64>(sb, offsets.sb_magic))
        .is_ok_and(|magic| magic == OVERLAYFS_SUPER_MAGIC)
}

/// The walk's state, on the caller's stack, which `bpf_loop` hands to each step.
struct Walk<V> {
    visitor: V,
    dentry: *const u8,
    end: End,
}

/// One step: visit the current dentry, then move to its parent. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn step<V: Visit>(index: u64, context: *mut c_void) -> i64 {
    // SAFETY: `context` is the `Walk<V>` that `walk_up` passed to `bpf_loop`, alive for the
    // whole loop and used by nothing else meanwhile.
    let walk = unsafe { &mut *context.cast::<Walk<V>>() };
    let dentry = walk.dentry;
    if walk.visitor.visit(dentry, index as u32) {
        walk.end = End::Stopped;
        return 1;
    }
    let offsets = offsets();
    let Ok(parent) = read_field::<*const u8>(dentry, offsets.dentry_parent) else {
        return 1;
    };
    if parent == dentry {
        walk.end = if disconnected(dentry) {
            End::Disconnected
        } else {
            End::Root
        };
        return 1;
    }
    walk.dentry = parent;
    0
}

/// Walks from `start`'s parent up to its file system's root, calling `visitor` at each dentry
/// until it asks to stop: for callers that judged `start` itself already (its own checks are
/// the costly ones, and keeping them out of the loop keeps each step small for the verifier).
/// Returns the visitor and how the walk ended; `End::Root` or `End::Disconnected` at once when
/// `start` is the top.
#[inline(always)]
pub(crate) fn walk_above<V: Visit>(start: *const u8, visitor: V) -> (V, End) {
    let offsets = offsets();
    let Ok(parent) = read_field::<*const u8>(start, offsets.dentry_parent) else {
        return (visitor, End::Unfinished);
    };
    if parent == start {
        let end = if disconnected(start) {
            End::Disconnected
        } else {
            End::Root
        };
        return (visitor, end);
    }
    walk_up(parent, visitor)
}

/// Walks from `start` up to its file system's root, calling `visitor` at each dentry (`start`
/// first) until it asks to stop. Returns the visitor and how the walk ended.
#[inline(always)]
pub(crate) fn walk_up<V: Visit>(start: *const u8, visitor: V) -> (V, End) {
    let mut walk = Walk {
        visitor,
        dentry: start,
        end: End::Unfinished,
    };
    if !start.is_null() {
        // SAFETY: `step::<V>` has the callback's signature and `walk` outlives the loop. The
        // helper's result (iterations run, or an error for a bad argument) adds nothing to
        // `walk.end`, which stays `Unfinished` unless a step ended the walk.
        unsafe {
            bpf_loop(
                FILE_WALK_LIMIT,
                step::<V> as *const () as *mut c_void,
                (&raw mut walk).cast(),
                0,
            );
        }
    }
    (walk.visitor, walk.end)
}
