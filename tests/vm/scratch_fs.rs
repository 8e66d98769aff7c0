//! Disk file systems for vm tests: an ext4 image on a loop device, mounted at a fresh
//! directory, and an overlay whose layers live on it. The guest's own root is the initramfs (a
//! tmpfs); the guest loads `loop`, `ext4` and `overlay` and carries `mkfs.ext4` (see
//! docs/testing.md).

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    os::unix::{ffi::OsStrExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
    process::Command,
};

use tempfile::TempDir;

// From <linux/loop.h>.
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `statfs`'s `f_type` of ext2/3/4.
pub const EXT4_SUPER_MAGIC: i64 = 0xEF53;
/// `statfs`'s `f_type` of overlayfs.
pub const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

/// The `statfs` file system type of `path`.
pub fn fs_type(path: &Path) -> i64 {
    let name = c_path(path);
    // SAFETY: all-zero is a valid `statfs`, which the kernel fills in.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated name and a valid out pointer.
    let rc = unsafe { libc::statfs(name.as_ptr(), &raw mut stat) };
    assert_eq!(
        rc,
        0,
        "statfs {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    stat.f_type
}

fn mount(source: &str, target: &Path, fstype: &str, data: Option<&str>) {
    let source = CString::new(source).expect("no NUL");
    let target_c = c_path(target);
    let fstype_c = CString::new(fstype).expect("no NUL");
    let data = data.map(|data| CString::new(data).expect("no NUL"));
    // SAFETY: NUL-terminated strings that outlive the call; data is a string or NULL.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    assert_eq!(
        rc,
        0,
        "mounting {fstype} at {}: {}",
        target.display(),
        std::io::Error::last_os_error()
    );
}

fn unmount(target: &Path) {
    let name = c_path(target);
    // SAFETY: a NUL-terminated name. Lazily if busy: a test that failed may hold a file open.
    unsafe {
        if libc::umount2(name.as_ptr(), 0) != 0 {
            libc::umount2(name.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// An ext4 file system on a loop device, mounted at a fresh directory; unmounted and detached
/// on drop.
pub struct ScratchFs {
    mount: TempDir,
    /// The attached loop device, open (its descriptor detaches it).
    device: File,
    device_path: PathBuf,
    /// Holds the image file.
    _image: TempDir,
}

impl ScratchFs {
    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// The loop device, such as `/dev/loop0`.
    pub fn device(&self) -> &Path {
        &self.device_path
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        unmount(self.mount.path());
        // SAFETY: an ioctl without an argument on the loop device this value owns.
        unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_CLR_FD, 0) };
    }
}

/// Makes an ext4 file system of `size_mb` MiB in an image file, attaches it to a free loop
/// device and mounts it at a fresh temporary directory.
pub fn ext4_scratch(size_mb: u64) -> ScratchFs {
    let image_dir = tempfile::tempdir().expect("a directory for the image");
    let image = image_dir.path().join("ext4.img");
    File::create(&image)
        .and_then(|file| file.set_len(size_mb << 20))
        .expect("the image file");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .output()
        .expect("running mkfs.ext4");
    assert!(
        mkfs.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&mkfs.stderr)
    );
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .expect("opening the image");
    let control = File::open("/dev/loop-control").expect("/dev/loop-control (the loop module)");
    let (device, device_path) = loop {
        // SAFETY: an ioctl without an argument; it returns a free device's number.
        let free = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        assert!(
            free >= 0,
            "LOOP_CTL_GET_FREE: {}",
            std::io::Error::last_os_error()
        );
        let path = PathBuf::from(format!("/dev/loop{free}"));
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
        // SAFETY: LOOP_SET_FD takes the backing file's descriptor, open for this call.
        let rc = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                LOOP_SET_FD,
                libc::c_ulong::try_from(backing.as_raw_fd()).expect("a descriptor"),
            )
        };
        if rc == 0 {
            break (device, path);
        }
        let err = std::io::Error::last_os_error();
        // Taken between the two calls: ask again.
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "LOOP_SET_FD: {err}");
    };
    let mount_dir = tempfile::tempdir().expect("a mount point");
    mount(
        device_path.to_str().expect("UTF-8 device path"),
        mount_dir.path(),
        "ext4",
        None,
    );
    let scratch = ScratchFs {
        mount: mount_dir,
        device,
        device_path,
        _image: image_dir,
    };
    assert_eq!(fs_type(scratch.path()), EXT4_SUPER_MAGIC, "ext4 is mounted");
    scratch
}

/// An overlay whose lower, upper and work directories are on an ext4 [`ScratchFs`], mounted
/// at a fresh temporary directory; unmounted on drop (then the ext4 file system).
pub struct OverlayOnExt4 {
    merged: TempDir,
    lower: PathBuf,
    // Dropped after the overlay's own drop unmounted it.
    ext4: ScratchFs,
}

impl OverlayOnExt4 {
    /// The overlay's mount point.
    pub fn merged(&self) -> &Path {
        self.merged.path()
    }

    /// The lower directory, on ext4.
    pub fn lower(&self) -> &Path {
        &self.lower
    }

    /// The ext4 file system under the layers.
    pub fn ext4(&self) -> &ScratchFs {
        &self.ext4
    }
}

impl Drop for OverlayOnExt4 {
    fn drop(&mut self) {
        unmount(self.merged.path());
    }
}

/// An ext4 [`ScratchFs`] of `size_mb` MiB with `lower`, `upper` and `work` directories, and an
/// overlay of them. `fill` writes the lower directory before the overlay is mounted (changing
/// a lower layer under a mounted overlay is undefined).
pub fn overlay_on_ext4(size_mb: u64, fill: impl FnOnce(&Path)) -> OverlayOnExt4 {
    let ext4 = ext4_scratch(size_mb);
    let lower = ext4.path().join("lower");
    let upper = ext4.path().join("upper");
    let work = ext4.path().join("work");
    for dir in [&lower, &upper, &work] {
        fs::create_dir(dir).expect("an overlay layer directory");
    }
    fill(&lower);
    let merged = tempfile::tempdir().expect("a mount point");
    mount(
        "overlay",
        merged.path(),
        "overlay",
        Some(&format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        )),
    );
    let overlay = OverlayOnExt4 {
        merged,
        lower,
        ext4,
    };
    assert_eq!(
        fs_type(overlay.merged()),
        OVERLAYFS_SUPER_MAGIC,
        "the overlay is mounted"
    );
    overlay
}
