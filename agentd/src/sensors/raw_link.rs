//! A BPF link that aya cannot hand over for pinning: aya 0.14 keeps a `cgroup/setsockopt`
//! link behind a private type with no conversion to `FdLink`. This makes the link with the
//! `bpf(BPF_LINK_CREATE)` call itself and turns it into an `FdLink` through a pin of its own,
//! so that it is pinned with the others (`pins::Links`) and keeps enforcing across restarts.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::programs::links::{FdLink, PinnedLink};

/// `enum bpf_cmd`.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: `BPF_CGROUP_SETSOCKOPT`.
pub const CGROUP_SETSOCKOPT: u32 = 22;

/// `union bpf_attr` as 64-bit words, zeroed: the kernel requires every byte past the
/// command's fields to be 0. Two 32-bit fields share a word, the first in the low half.
#[repr(C)]
struct Attr([u64; 16]);

/// Two consecutive 32-bit fields as one little-endian word.
fn pair(first: u32, second: u32) -> u64 {
    u64::from(first) | u64::from(second) << 32
}

/// A descriptor as the `u32` field that carries it.
fn fd_field(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)
}

fn bpf(cmd: libc::c_long, attr: &Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a readable `bpf_attr` of the size given, laid out as `cmd` expects.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<Attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Attaches the loaded program `program` to the cgroup `cgroup` as `attach_type` through a
/// BPF link, and returns that link as an `FdLink`, pinning it at `scratch` (a path on a BPF
/// file system, with no `.` in its name: bpffs refuses those) for the moment it takes to take
/// it over.
pub fn cgroup_link(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    scratch: &Path,
) -> io::Result<FdLink> {
    // `link_create`: prog_fd, target_fd, attach_type, flags.
    let mut attr = Attr([0; 16]);
    attr.0[0] = pair(fd_field(program)?, fd_field(cgroup)?);
    attr.0[1] = pair(attach_type, 0);
    let fd = bpf(BPF_LINK_CREATE, &attr)?;
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    let link = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) };
    let path = CString::new(scratch.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let _ = std::fs::remove_file(scratch);
    // `obj_pin`: pathname (a pointer), bpf_fd, file_flags.
    let mut attr = Attr([0; 16]);
    attr.0[0] = path.as_ptr() as u64;
    attr.0[1] = pair(fd_field(std::os::fd::AsFd::as_fd(&link))?, 0);
    bpf(BPF_OBJ_PIN, &attr)?;
    let pinned = PinnedLink::from_pin(scratch).map_err(io::Error::other)?;
    // The pin's own descriptor holds the link now; ours can go.
    drop(link);
    pinned.unpin()
}
