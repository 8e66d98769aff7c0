//! `agentd-test-helper fs OP ARGS [OP ARGS]...`: changes to names and truncations an agent could
//! use to get around file rules without opening the protected file (`tests/vm/files_namespace.rs`).
//! Runs each operation in turn and prints one word per operation, space-separated: `ok`, `eperm`
//! (EPERM exactly), or `error:<errno>`.
//!
//! - `exchange A B`: `renameat2(A, B, RENAME_EXCHANGE)`.
//! - `rename A B`, `link A B`, `symlink TARGET PATH`: as the syscalls.
//! - `tmpfile-link DIR PATH`: an `O_TMPFILE` opened in DIR, then `linkat(fd, "", PATH,
//!   AT_EMPTY_PATH)`; the word is the `linkat`'s, or `open-` and the open's word if the open failed.
//! - `mkdir PATH`, `rmdir PATH`, `mkfifo PATH`, `unlink PATH`.
//! - `read PATH`: `open(PATH, O_RDONLY)`.
//! - `open-trunc PATH`: `open(PATH, O_RDONLY | O_TRUNC)`.
//! - `truncate PATH`: `truncate(PATH, 0)`.
//! - `hold-ftruncate PATH GOFILE`: opens PATH for writing (the word for that open first), waits
//!   until GOFILE exists, then `ftruncate(fd, 0)` (the second word).
//! - `deep-make DIR LEVELS`: makes `DIR/d/d/.../d/f` with LEVELS directories `d`, by relative
//!   `mkdir` and `chdir` (deeper than a path can name); the word is for the whole build.
//! - `deep-read DIR LEVELS`: walks down the same tree by `chdir` and opens `f` for reading.
//! - `handle-read MOUNT PATH`: `name_to_handle_at(PATH)`, drops the dentry and inode caches
//!   (`/proc/sys/vm/drop_caches`), then `open_by_handle_at` on a descriptor of MOUNT for
//!   reading: on a disk file system the file comes back as a disconnected dentry.
//! - `getfd PID FD`: `pidfd_getfd` of another process's descriptor FD.
//! - `recv-fd SOCKET`: connects to the unix socket SOCKET and receives one descriptor
//!   (`SCM_RIGHTS`); the word is `ok` if one arrived, `none` if the kernel left it out.

use std::{ffi::CString, path::Path, time::Duration};

/// The word for a syscall's return value.
fn said(ret: i64) -> String {
    if ret >= 0 {
        return "ok".to_owned();
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM) => "eperm".to_owned(),
        Some(errno) => format!("error:{errno}"),
        None => format!("error:{err}"),
    }
}

fn name(path: &str) -> std::io::Result<CString> {
    CString::new(path).map_err(std::io::Error::other)
}

/// A call on two names: `exchange`, `rename`, `link` or `symlink`.
fn two_names(op: &str, a: &CString, b: &CString) -> String {
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY: plain syscalls on NUL-terminated names the caller owns.
    let ret = unsafe {
        match op {
            "exchange" => libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a,
                libc::AT_FDCWD,
                b,
                libc::RENAME_EXCHANGE,
            ),
            "rename" => i64::from(libc::rename(a, b)),
            "link" => i64::from(libc::link(a, b)),
            _ => i64::from(libc::symlink(a, b)),
        }
    };
    said(ret)
}

/// A call on one name: `mkdir`, `rmdir`, `mkfifo`, `unlink`, `read`, `open-trunc` or
/// `truncate`.
fn one_name(op: &str, path: &CString) -> String {
    let path = path.as_ptr();
    // SAFETY: plain syscalls on a NUL-terminated name the caller owns; a descriptor opened here
    // is closed here.
    let ret = unsafe {
        match op {
            "mkdir" => libc::mkdir(path, 0o755),
            "rmdir" => libc::rmdir(path),
            "mkfifo" => libc::mkfifo(path, 0o644),
            "unlink" => libc::unlink(path),
            "read" => {
                let fd = libc::open(path, libc::O_RDONLY);
                if fd >= 0 {
                    libc::close(fd);
                }
                fd
            }
            "open-trunc" => {
                let fd = libc::open(path, libc::O_RDONLY | libc::O_TRUNC);
                if fd >= 0 {
                    libc::close(fd);
                }
                fd
            }
            _ => libc::truncate(path, 0),
        }
    };
    said(i64::from(ret))
}

/// An `O_TMPFILE` in `dir`, linked in at `path` with `linkat(AT_EMPTY_PATH)`.
fn tmpfile_link(dir: &CString, path: &CString) -> String {
    // SAFETY: plain syscalls on NUL-terminated names; the descriptor is closed here.
    unsafe {
        let fd = libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_WRONLY, 0o600);
        if fd < 0 {
            return format!("open-{}", said(-1));
        }
        let ret = libc::linkat(
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        let word = said(i64::from(ret));
        libc::close(fd);
        word
    }
}

/// Opens `path` for writing, prints the open's word, waits for `gofile`, then `ftruncate`s.
fn hold_ftruncate(path: &CString, gofile: &str) -> String {
    // SAFETY: a plain open of a NUL-terminated name.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY) };
    let opened = said(i64::from(fd));
    if fd < 0 {
        return opened;
    }
    // The caller waits for this word before it makes the change that GOFILE announces.
    println!("{opened}");
    while !Path::new(gofile).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: the descriptor opened above, closed once.
    unsafe {
        let word = said(i64::from(libc::ftruncate(fd, 0)));
        libc::close(fd);
        word
    }
}

/// `deep-make` and `deep-read`: down LEVELS directories `d` under `dir` by `chdir` (making
/// them with `make`), then creates or reads `f`.
fn deep(dir: &CString, levels: &str, make: bool) -> String {
    let Ok(levels) = levels.parse::<u32>() else {
        return "error:levels".to_owned();
    };
    // SAFETY: plain syscalls on NUL-terminated names; the descriptor opened is closed.
    unsafe {
        if libc::chdir(dir.as_ptr()) != 0 {
            return format!("chdir-{}", said(-1));
        }
        for _ in 0..levels {
            if make && libc::mkdir(c"d".as_ptr(), 0o755) != 0 {
                return format!("mkdir-{}", said(-1));
            }
            if libc::chdir(c"d".as_ptr()) != 0 {
                return format!("chdir-{}", said(-1));
            }
        }
        let fd = if make {
            libc::open(c"f".as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644)
        } else {
            libc::open(c"f".as_ptr(), libc::O_RDONLY)
        };
        let word = said(i64::from(fd));
        if fd >= 0 {
            libc::close(fd);
        }
        word
    }
}

/// `handle-read`: reopens `path` by its file handle after the caches dropped it.
fn handle_read(mount: &CString, path: &CString) -> String {
    /// `struct file_handle` with room for `MAX_HANDLE_SZ` bytes.
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut handle = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_number = 0i32;
    // SAFETY: plain syscalls on NUL-terminated names and buffers owned here; descriptors
    // opened here are closed here.
    unsafe {
        let ret = libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &raw mut handle,
            &raw mut mount_number,
            0,
        );
        if ret != 0 {
            return format!("handle-{}", said(-1));
        }
        if std::fs::write("/proc/sys/vm/drop_caches", "2").is_err() {
            return "error:drop_caches".to_owned();
        }
        let mount_fd = libc::open(mount.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        if mount_fd < 0 {
            return format!("mount-{}", said(-1));
        }
        let opened = libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &raw mut handle,
            libc::O_RDONLY,
        );
        let word = said(opened);
        if let Ok(fd) = i32::try_from(opened)
            && fd >= 0
        {
            libc::close(fd);
        }
        libc::close(mount_fd);
        word
    }
}

/// `pidfd_getfd(pidfd_open(pid), fd)`.
fn getfd(pid: &str, fd: &str) -> String {
    let (Ok(pid), Ok(fd)) = (pid.parse::<i32>(), fd.parse::<i32>()) else {
        return "error:arguments".to_owned();
    };
    // SAFETY: plain syscalls; the descriptors opened here are closed here.
    unsafe {
        let Ok(pidfd) = i32::try_from(libc::syscall(libc::SYS_pidfd_open, pid, 0)) else {
            return "error:pidfd_open".to_owned();
        };
        if pidfd < 0 {
            return format!("pidfd-{}", said(-1));
        }
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0);
        let word = said(got);
        if let Ok(got) = i32::try_from(got)
            && got >= 0
        {
            libc::close(got);
        }
        libc::close(pidfd);
        word
    }
}

/// Receives one descriptor over the unix socket at `socket`.
fn recv_fd(socket: &str) -> String {
    use std::os::fd::AsRawFd as _;
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(err) => return format!("connect-error:{err}"),
    };
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one descriptor's control message, aligned for `cmsghdr`.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; its buffers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg into the buffers above; the control message is read within its bounds.
    unsafe {
        let got = libc::recvmsg(stream.as_raw_fd(), &raw mut msg, 0);
        if got < 0 {
            return said(-1);
        }
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return "none".to_owned();
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        libc::close(fd);
    }
    "ok".to_owned()
}

/// Runs one operation from the front of `args`; returns its word and the arguments left.
fn one<'a>(args: &'a [&'a str]) -> std::io::Result<(String, &'a [&'a str])> {
    Ok(match args {
        [
            op @ ("exchange" | "rename" | "link" | "symlink"),
            a,
            b,
            rest @ ..,
        ] => (two_names(op, &name(a)?, &name(b)?), rest),
        ["tmpfile-link", dir, path, rest @ ..] => (tmpfile_link(&name(dir)?, &name(path)?), rest),
        ["hold-ftruncate", path, gofile, rest @ ..] => (hold_ftruncate(&name(path)?, gofile), rest),
        ["deep-make", dir, levels, rest @ ..] => (deep(&name(dir)?, levels, true), rest),
        ["deep-read", dir, levels, rest @ ..] => (deep(&name(dir)?, levels, false), rest),
        ["handle-read", mount, path, rest @ ..] => (handle_read(&name(mount)?, &name(path)?), rest),
        ["getfd", pid, fd, rest @ ..] => (getfd(pid, fd), rest),
        ["recv-fd", socket, rest @ ..] => (recv_fd(socket), rest),
        [
            op @ ("mkdir" | "rmdir" | "mkfifo" | "unlink" | "read" | "open-trunc" | "truncate"),
            path,
            rest @ ..,
        ] => (one_name(op, &name(path)?), rest),
        other => {
            return Err(std::io::Error::other(format!(
                "unknown or incomplete operation {other:?}"
            )));
        }
    })
}

/// Runs every operation in `args` and prints their words on one line.
pub fn run(args: &[&str]) -> std::io::Result<()> {
    let mut words = Vec::new();
    let mut rest = args;
    while !rest.is_empty() {
        let (word, left) = one(rest)?;
        words.push(word);
        rest = left;
    }
    println!("{}", words.join(" "));
    Ok(())
}
