//! Reading kernel structs at offsets that userspace resolved from BTF.

use agentd_common::{InodeKey, KernelOffsets};
use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Filled in by userspace before load (`EbpfLoader::override_global`), from the running
/// kernel's BTF.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::UNRESOLVED;

/// The offsets for this kernel. A volatile read stops the compiler from folding the compiled-in
/// zeros; the loader rewrites them in the object's read-only data.
#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: reading a plain static.
    unsafe { core::ptr::read_volatile(&raw const KERNEL_OFFSETS) }
}

/// Reads a `T` at `base + offset` from kernel memory. An unresolved (zero) offset or a null base
/// is an error: programs report "unknown" rather than read the wrong field.
#[inline(always)]
pub fn read_field<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    if base.is_null() || offset == 0 {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }.map_err(i64::from)
}

/// Reads a `T` at `base + offset` where 0 is a valid offset (the first field of a struct, or
/// a slot of an array).
#[inline(always)]
pub fn read_at<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    if base.is_null() {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }.map_err(i64::from)
}

/// `bprm->file`, the file an exec runs, read directly from an LSM hook's `struct linux_binprm *`
/// argument: a direct load keeps the verifier's knowledge that this is a `struct file`, which
/// `bpf_d_path` needs for the event's path (a probe read would lose it).
#[inline(always)]
pub fn bprm_file(offsets: &KernelOffsets, bprm: *const u8) -> *const u8 {
    // SAFETY: `bprm` is the hook's own argument; the verifier checks the access.
    unsafe { core::ptr::read_volatile(bprm.add(offsets.bprm_file as usize).cast::<*const u8>()) }
}

/// The (device, inode) of an open `struct file`.
#[inline(always)]
pub fn file_inode_key(offsets: &KernelOffsets, file: *const u8) -> Result<InodeKey, i64> {
    let inode = read_field::<*const u8>(file, offsets.file_inode)?;
    inode_key(offsets, inode)
}

/// The (device, inode) of a `struct inode`.
#[inline(always)]
pub fn inode_key(offsets: &KernelOffsets, inode: *const u8) -> Result<InodeKey, i64> {
    let ino = read_field::<u64>(inode, offsets.inode_ino)?;
    let sb = read_field::<*const u8>(inode, offsets.inode_sb)?;
    let dev = read_field::<u32>(sb, offsets.sb_dev)?;
    Ok(InodeKey { dev, pad: 0, ino })
}
