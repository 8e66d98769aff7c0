//! A file by its kernel object: the device of its super block and its inode number.

use core::mem::size_of;

/// Identifies a file by its kernel object: the device of its super block and its inode number.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// The kernel's `dev_t` of `inode->i_sb->s_dev`: `major << 20 | minor`.
    pub dev: u32,
    /// Always 0: makes the padding explicit so that keys hash the same on both sides.
    pub pad: u32,
    pub ino: u64,
}
const _: () = assert!(size_of::<InodeKey>() == 16);

impl InodeKey {
    /// No file has it (device 0 is never a super block's, inode 0 never a file's): the key of
    /// an agent's unresolved-location rule in the file rule map, which the kernel applies to an
    /// object whose place in the tree it cannot establish.
    pub const UNRESOLVED: Self = Self {
        dev: 0,
        pad: 0,
        ino: 0,
    };

    /// Builds a key from the major and minor numbers that `stat(2)` reports for `st_dev`.
    #[must_use]
    pub const fn new(major: u32, minor: u32, ino: u64) -> Self {
        Self {
            dev: (major << 20) | (minor & 0xf_ffff),
            pad: 0,
            ino,
        }
    }
}
