//! The (device, inode) key that names a file in the kernel programs' maps: what policy
//! compilation, the file sensors and self-protection all look files up by.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use agentd_common::InodeKey;

/// The (device, inode) key of the file at `path`, as the kernel programs see it.
pub fn inode_key(path: &Path) -> std::io::Result<InodeKey> {
    Ok(inode_key_of(&fs::metadata(path)?))
}

/// The (device, inode) key of a file from its metadata.
#[must_use]
pub fn inode_key_of(meta: &fs::Metadata) -> InodeKey {
    let dev = meta.dev();
    // glibc's major() and minor() of a 64-bit dev_t; both fit in 32 bits.
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    InodeKey::new(
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
        meta.ino(),
    )
}
