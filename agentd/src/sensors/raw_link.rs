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

/// `union bpf_attr`, zeroed: the kernel requires every byte past the command's fields to be 0.
#[repr(C, align(8))]
struct Attr([u32; 32]);

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
    let mut attr = Attr([0; 32]);
    attr.0[0] = u32::try_from(program.as_raw_fd()).map_err(io::Error::other)?;
    attr.0[1] = u32::try_from(cgroup.as_raw_fd()).map_err(io::Error::other)?;
    attr.0[2] = attach_type;
    let fd = bpf(BPF_LINK_CREATE, &attr)?;
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    let link = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) };
    let path = CString::new(scratch.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let _ = std::fs::remove_file(scratch);
    let mut attr = Attr([0; 32]);
    let pointer = path.as_ptr() as u64;
    attr.0[0] = pointer as u32;
    attr.0[1] = (pointer >> 32) as u32;
    attr.0[2] = u32::try_from(link.as_raw_fd()).map_err(io::Error::other)?;
    bpf(BPF_OBJ_PIN, &attr)?;
    let pinned = PinnedLink::from_pin(scratch).map_err(io::Error::other)?;
    // The pin's own descriptor holds the link now; ours can go.
    drop(link);
    pinned.unpin()
}
