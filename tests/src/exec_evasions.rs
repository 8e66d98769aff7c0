//! `agentd-test-helper exec-evasion ...`: ways around exec rules and around agentd's
//! self-protection, each printing `ok`, `eperm` or `error:...` (`say` prints its word).
//!
//! - `say WORD`: prints WORD (what a program run by another route prints when it ran).
//! - `memfd PROG ARGS...`: copies PROG into a memfd and `execveat(fd, "", AT_EMPTY_PATH)`s it
//!   with ARGS; prints the outcome only when the exec failed.
//! - `rename FROM TO`, `exchange A B` (`RENAME_EXCHANGE`), `link FROM TO`, `mount-bind FROM TO`.
//! - `chmod PATH`, `chown PATH` (to its own owner), `utimes PATH`, `setxattr PATH`,
//!   `removexattr PATH`.

use std::{ffi::CString, io::Read as _, os::fd::FromRawFd as _};

fn cstring(text: &str) -> std::io::Result<CString> {
    CString::new(text).map_err(std::io::Error::other)
}

fn said(ret: libc::c_int) -> String {
    if ret == 0 {
        return "ok".to_owned();
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => "eperm".to_owned(),
        _ => format!("error:{err}"),
    }
}

fn memfd_exec(program: &str, extra: &[&str]) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(program)?.read_to_end(&mut bytes)?;
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"agentd-test".as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned here.
    let mut memfd = unsafe { std::fs::File::from_raw_fd(fd) };
    std::io::Write::write_all(&mut memfd, &bytes)?;
    let words: Vec<CString> = std::iter::once(program)
        .chain(extra.iter().copied())
        .map(cstring)
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*mut libc::c_char> =
        words.iter().map(|word| word.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH, NULL-terminated vectors.
    let ret = unsafe {
        libc::execveat(
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    drop(memfd);
    Ok(said(ret))
}

pub fn run(args: &[&str]) -> std::io::Result<()> {
    let outcome = match args {
        ["say", word] => (*word).to_owned(),
        ["memfd", program, rest @ ..] => memfd_exec(program, rest)?,
        ["rename", from, to] => {
            let (from, to) = (cstring(from)?, cstring(to)?);
            // SAFETY: valid NUL-terminated names.
            said(unsafe { libc::rename(from.as_ptr(), to.as_ptr()) })
        }
        ["exchange", a, b] => {
            let (a, b) = (cstring(a)?, cstring(b)?);
            // SAFETY: valid NUL-terminated names.
            said(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            })
        }
        ["link", from, to] => {
            let (from, to) = (cstring(from)?, cstring(to)?);
            // SAFETY: valid NUL-terminated names.
            said(unsafe { libc::link(from.as_ptr(), to.as_ptr()) })
        }
        ["mount-bind", from, to] => {
            let (from, to) = (cstring(from)?, cstring(to)?);
            // SAFETY: valid NUL-terminated names; a bind mount with no data.
            said(unsafe {
                libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            })
        }
        ["chmod", path] => {
            let path = cstring(path)?;
            // SAFETY: a valid NUL-terminated name.
            said(unsafe { libc::chmod(path.as_ptr(), 0o600) })
        }
        ["chown", path] => {
            let meta = std::fs::metadata(path)?;
            let path = cstring(path)?;
            // SAFETY: a valid NUL-terminated name.
            said(unsafe {
                libc::chown(
                    path.as_ptr(),
                    std::os::unix::fs::MetadataExt::uid(&meta),
                    std::os::unix::fs::MetadataExt::gid(&meta),
                )
            })
        }
        ["utimes", path] => {
            let path = cstring(path)?;
            // SAFETY: a valid NUL-terminated name; NULL times mean now.
            said(unsafe { libc::utimes(path.as_ptr(), std::ptr::null()) })
        }
        ["setxattr", path] => {
            let path = cstring(path)?;
            let value = b"1";
            // SAFETY: valid names and a value of the length passed.
            said(unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    c"user.agentd-test".as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            })
        }
        ["removexattr", path] => {
            let path = cstring(path)?;
            // SAFETY: valid NUL-terminated names.
            said(unsafe { libc::removexattr(path.as_ptr(), c"user.agentd-test".as_ptr()) })
        }
        _ => return Err(std::io::Error::other("unknown exec-evasion")),
    };
    println!("{outcome}");
    Ok(())
}
