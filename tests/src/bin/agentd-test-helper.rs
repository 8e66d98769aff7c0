//! A helper process for the identity tests, which need a connection that outlives the process
//! that opened it.
//!
//! - `agentd-test-helper handover SOCKET GOFILE`: connects to SOCKET, starts `ask` as a child
//!   that inherits the connection, prints `connector=PID asker=PID`, and exits at once.
//! - `agentd-test-helper ask FD GOFILE`: waits until GOFILE exists, sends `whoami` on FD and
//!   writes the answer to `GOFILE.reply`.
//! - `agentd-test-helper net tcp|udp|udp-connect ADDR PORT COUNT`: connects (TCP), sends a
//!   datagram (UDP) or connects a UDP socket COUNT times and prints `ok=N eperm=N other=N`.
//!   An optional RATE paces it to at most RATE calls per second.
//! - `agentd-test-helper resolve-connect SERVER NAME PORT`: asks the DNS server at SERVER:53 for
//!   NAME's A record, then connects to the answer on PORT over TCP; prints
//!   `resolved=IP from=ADDR ok|eperm|error`.
//! - `agentd-test-helper dns-ask SERVER NAME a|aaaa`: asks the DNS server at SERVER:53 (UDP)
//!   once; prints `rcode=N answers=IP,IP` (the A and AAAA records), `timeout` or `eperm`. NAME
//!   `-` sends bytes that are not DNS instead. `dns-ask-tcp SERVER NAME` asks for NAME's A
//!   records over TCP (SERVER:53), printing the same.
//! - `agentd-test-helper net-until-denied tcp ADDR PORT STOPFILE`: connects every 5 ms until a
//!   connect fails with EPERM (printing `ok=N denied`), or until STOPFILE exists.
//! - `agentd-test-helper open-evasions PATH`: tries to read PATH in ways that dodge a check
//!   on the name: `openat2`, and an `O_PATH` descriptor reopened through `/proc/self/fd/N`.
//!   Prints `openat2=ok|eperm|error:... proc-fd=ok|eperm|error:...`.
//! - `agentd-test-helper send ADDR PORT BYTES [SNDBUF]`: connects over TCP and sends BYTES
//!   bytes (with a send buffer of SNDBUF bytes, `SO_SNDBUFFORCE`, if given, so that a write can
//!   return and the process exit while the kernel still holds the bytes); prints `sent=N`.
//! - `agentd-test-helper pass-fd SOCKET TO`: connects to SOCKET, sends that connection to the
//!   process listening on the Unix socket TO (`SCM_RIGHTS`), and exits.
//! - `agentd-test-helper fork COUNT`: forks COUNT children that wait to be killed; prints
//!   `forked=N refused=N errno=E` (the last fork error, 0 if none), then kills and reaps them.
//! - `agentd-test-helper as-nobody PROG ARGS...`: execs PROG as uid and gid 65534, no groups.
//! - `agentd-test-helper without-ptrace PROG ARGS...`: execs PROG with `CAP_SYS_PTRACE` dropped
//!   from the bounding set (so that root's exec does not get it). For kernels' userlands whose
//!   `setpriv` cannot do either (busybox, in the vm tier).
//! - `agentd-test-helper truncate PATH`: `truncate(2)` to 0 bytes; prints `ok|eperm|error:...`.
//! - `agentd-test-helper evade ...`: network calls that dodge destination rules; see
//!   `tests/src/net_evasions.rs`.
//! - `agentd-test-helper fs ...`: renames, links, creations, removals and truncations that
//!   dodge file rules; see `tests/src/file_evasions.rs`.
//! - `agentd-test-helper exec-evasion ...`: routes around exec rules and self-protection; see
//!   `tests/src/exec_evasions.rs`.

#[path = "../exec_evasions.rs"]
mod exec_evasions;
#[path = "../file_evasions.rs"]
mod file_evasions;
#[path = "../net_evasions.rs"]
mod net_evasions;

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::net::UnixStream,
    },
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

fn handover(socket: &str, gofile: &str) -> std::io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    let fd = stream.as_raw_fd();
    // Let the child inherit the connection.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let asker = Command::new(std::env::current_exe()?)
        .args(["ask", &fd.to_string(), gofile])
        // Not the caller's pipes: the caller waits for this process alone to finish.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    println!("connector={} asker={}", std::process::id(), asker.id());
    std::io::stdout().flush()
}

fn pass_fd(socket: &str, to: &str) -> std::io::Result<()> {
    let connection = UnixStream::connect(socket)?;
    let courier = UnixStream::connect(to)?;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let fd_len = u32::try_from(size_of::<i32>()).expect("small");
    // SAFETY: pure arithmetic on a length.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space;
    // SAFETY: the control buffer has room for one header and one descriptor.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&raw const message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(fd_len) as usize;
        std::ptr::write_unaligned(
            libc::CMSG_DATA(header).cast::<i32>(),
            connection.as_raw_fd(),
        );
    }
    // SAFETY: `message` points at live buffers.
    if unsafe { libc::sendmsg(courier.as_raw_fd(), &raw const message, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn fork(count: &str) -> std::io::Result<()> {
    let count: u32 = count.parse().map_err(std::io::Error::other)?;
    let (mut children, mut refused, mut errno) = (Vec::new(), 0, 0);
    for _ in 0..count {
        // SAFETY: the child only calls async-signal-safe functions (pause, _exit).
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: waits for the parent's SIGKILL.
                unsafe { libc::pause() };
            },
            -1 => {
                refused += 1;
                errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            }
            child => children.push(child),
        }
    }
    println!("forked={} refused={refused} errno={errno}", children.len());
    std::io::stdout().flush()?;
    for child in children {
        // SAFETY: signalling and reaping our own children.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
    Ok(())
}

/// Execs `args` (program first) after `prepare`; returns only on failure.
fn exec_after(args: &[&str], prepare: impl FnOnce() -> i32) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let [program, rest @ ..] = args else {
        return Err(std::io::Error::other("no program to run"));
    };
    if prepare() != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Err(Command::new(program).args(rest).exec())
}

fn as_nobody(args: &[&str]) -> std::io::Result<()> {
    exec_after(args, || {
        // SAFETY: plain credential syscalls, groups first while still privileged.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(65_534) != 0 {
                return -1;
            }
            libc::setuid(65_534)
        }
    })
}

/// `CAP_SYS_PTRACE` from `linux/capability.h`.
const CAP_SYS_PTRACE: libc::c_ulong = 19;

fn without_ptrace(args: &[&str]) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    exec_after(args, || unsafe {
        libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0)
    })
}

fn ask(fd: &str, gofile: &str) -> std::io::Result<()> {
    let fd: i32 = fd.parse().map_err(std::io::Error::other)?;
    // SAFETY: the descriptor was inherited from `handover` for this purpose.
    let mut stream = unsafe { UnixStream::from_raw_fd(fd) };
    let go = PathBuf::from(gofile);
    let deadline = Instant::now() + Duration::from_mins(2);
    while !go.exists() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other("no go file"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stream.write_all(b"whoami\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    // Written whole, then renamed: the test waits for the name and must never read half of it.
    fs::write(format!("{gofile}.partial"), answer)?;
    fs::rename(format!("{gofile}.partial"), format!("{gofile}.reply"))
}

fn attempt(protocol: &str, target: std::net::SocketAddr) -> std::io::Result<()> {
    match protocol {
        "tcp" => std::net::TcpStream::connect(target).map(drop),
        "udp" | "udp-connect" => {
            let local: std::net::SocketAddr = if target.is_ipv6() {
                "[::1]:0".parse().expect("address")
            } else {
                "127.0.0.1:0".parse().expect("address")
            };
            let socket = std::net::UdpSocket::bind(local)?;
            if protocol == "udp" {
                socket.send_to(b"agentd", target).map(drop)
            } else {
                // `udp-connect`: a connect(2) that sends nothing, the cheapest call the
                // connect hooks see.
                socket.connect(target)
            }
        }
        other => Err(std::io::Error::other(format!("unknown protocol {other}"))),
    }
}

fn target(addr: &str, port: &str) -> std::io::Result<std::net::SocketAddr> {
    let addr: std::net::IpAddr = addr.parse().map_err(std::io::Error::other)?;
    let port: u16 = port.parse().map_err(std::io::Error::other)?;
    Ok(std::net::SocketAddr::new(addr, port))
}

fn net(
    protocol: &str,
    addr: &str,
    port: &str,
    count: &str,
    rate: Option<&str>,
) -> std::io::Result<()> {
    let target = target(addr, port)?;
    let count: u64 = count.parse().map_err(std::io::Error::other)?;
    let rate: Option<u64> = rate
        .map(str::parse)
        .transpose()
        .map_err(std::io::Error::other)?;
    let (mut ok, mut eperm, mut other) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for done in 0..count {
        // Paced: never ahead of `rate` calls per second.
        if let Some(rate) = rate.filter(|_| done % 100 == 0) {
            let due = Duration::from_micros(done * 1_000_000 / rate.max(1));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        match attempt(protocol, target) {
            Ok(()) => ok += 1,
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => eperm += 1,
            Err(_) => other += 1,
        }
    }
    println!("ok={ok} eperm={eperm} other={other}");
    Ok(())
}

/// Connects to `allowed` and `denied` in turn until `stop` exists; prints what each gave.
fn net_loop(
    protocol: &str,
    addr: &str,
    allowed: &str,
    denied: &str,
    stop: &str,
) -> std::io::Result<()> {
    let allowed = target(addr, allowed)?;
    let denied = target(addr, denied)?;
    let mut counts = [[0u64; 3]; 2];
    while !PathBuf::from(stop).exists() {
        for (i, target) in [allowed, denied].into_iter().enumerate() {
            let slot = match attempt(protocol, target) {
                Ok(()) => 0,
                Err(err) if err.raw_os_error() == Some(libc::EPERM) => 1,
                Err(_) => 2,
            };
            counts[i][slot] += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let [a, d] = counts;
    println!(
        "allowed_ok={} allowed_eperm={} allowed_other={} denied_ok={} denied_eperm={} denied_other={}",
        a[0], a[1], a[2], d[0], d[1], d[2]
    );
    Ok(())
}

/// Prints `ok`, `eperm` (EPERM or EACCES) or `error:<what>` for one attempt.
fn report(result: std::io::Result<()>) {
    match result {
        Ok(()) => println!("ok"),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            println!("eperm");
        }
        Err(err) => println!("error:{err}"),
    }
}

/// Tampering attempts against agentd, for the self-protection test.
fn tamper(what: &str, target: &str) -> std::io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let result = match what {
        "kill" => {
            let pid: i32 = target.parse().map_err(std::io::Error::other)?;
            // SAFETY: plain kill(2).
            check(libc::c_long::from(unsafe {
                libc::kill(pid, libc::SIGTERM)
            }))
        }
        "ptrace" => {
            let pid: i32 = target.parse().map_err(std::io::Error::other)?;
            // SAFETY: PTRACE_SEIZE with no options; detached at once if it worked.
            let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
            if rc == 0 {
                // SAFETY: as above.
                unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
            }
            check(rc)
        }
        "unlink" => fs::remove_file(target),
        "read" => fs::read(target).map(drop),
        "bpf-obj-get" => {
            const BPF_OBJ_GET: libc::c_long = 7;
            let path = std::ffi::CString::new(target).map_err(std::io::Error::other)?;
            // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
            let mut attr = [0u64; 16];
            attr[0] = path.as_ptr() as u64;
            // SAFETY: bpf(2) with a zeroed attr holding a valid path pointer.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_OBJ_GET,
                    attr.as_mut_ptr(),
                    size_of_val(&attr),
                )
            };
            if fd >= 0 {
                // SAFETY: closing the fd we were given.
                unsafe { libc::close(i32::try_from(fd).unwrap_or(-1)) };
            }
            check(fd)
        }
        other => Err(std::io::Error::other(format!("unknown attempt {other}"))),
    };
    report(result);
    Ok(())
}

fn net_until_denied(protocol: &str, addr: &str, port: &str, stop: &str) -> std::io::Result<()> {
    let target = target(addr, port)?;
    let mut ok = 0u64;
    while !PathBuf::from(stop).exists() {
        match attempt(protocol, target) {
            Ok(()) => ok += 1,
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
                println!("ok={ok} denied");
                return Ok(());
            }
            Err(err) => return Err(err),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("ok={ok} stopped");
    Ok(())
}

fn resolve_connect(server: &str, name: &str, port: &str) -> std::io::Result<()> {
    use simple_dns::{CLASS, Name, Packet, Question, TYPE, rdata::RData};
    let server: std::net::IpAddr = server.parse().map_err(std::io::Error::other)?;
    let port: u16 = port.parse().map_err(std::io::Error::other)?;
    let mut query = Packet::new_query(0x5a5a);
    query.questions.push(Question::new(
        Name::new(name).map_err(std::io::Error::other)?,
        TYPE::A.into(),
        CLASS::IN.into(),
        false,
    ));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.send_to(
        &query.build_bytes_vec().map_err(std::io::Error::other)?,
        (server, 53),
    )?;
    let mut reply = [0u8; 512];
    let (len, from) = socket.recv_from(&mut reply)?;
    let packet = Packet::parse(&reply[..len]).map_err(std::io::Error::other)?;
    let address = packet
        .answers
        .iter()
        .find_map(|record| match &record.rdata {
            RData::A(a) => Some(std::net::Ipv4Addr::from(a.address)),
            _ => None,
        })
        .ok_or_else(|| std::io::Error::other("no A record in the answer"))?;
    let outcome = match std::net::TcpStream::connect((address, port)) {
        Ok(_) => "ok".to_owned(),
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => "eperm".to_owned(),
        Err(err) => format!("error:{err}"),
    };
    println!("resolved={address} from={from} {outcome}");
    Ok(())
}

fn dns_ask(server: &str, name: &str, qtype: &str) -> std::io::Result<()> {
    use simple_dns::{CLASS, Name, Packet, Question, TYPE, rdata::RData};
    let server: std::net::IpAddr = server.parse().map_err(std::io::Error::other)?;
    let qtype = match qtype {
        "a" => TYPE::A,
        "aaaa" => TYPE::AAAA,
        other => return Err(std::io::Error::other(format!("unknown type {other}"))),
    };
    let bytes = if name == "-" {
        b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n".to_vec()
    } else {
        let mut query = Packet::new_query(0x6b6b);
        query.questions.push(Question::new(
            Name::new(name).map_err(std::io::Error::other)?,
            qtype.into(),
            CLASS::IN.into(),
            false,
        ));
        query.build_bytes_vec().map_err(std::io::Error::other)?
    };
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    if let Err(err) = socket.send_to(&bytes, (server, 53)) {
        if err.raw_os_error() == Some(libc::EPERM) {
            println!("eperm");
            return Ok(());
        }
        return Err(err);
    }
    let mut reply = [0u8; 1500];
    let len = match socket.recv(&mut reply) {
        Ok(len) => len,
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            println!("timeout");
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let packet = Packet::parse(&reply[..len]).map_err(std::io::Error::other)?;
    let answers: Vec<String> = packet
        .answers
        .iter()
        .filter_map(|record| match &record.rdata {
            RData::A(a) => Some(std::net::Ipv4Addr::from(a.address).to_string()),
            RData::AAAA(a) => Some(std::net::Ipv6Addr::from(a.address).to_string()),
            _ => None,
        })
        .collect();
    println!(
        "rcode={} answers={}",
        packet.rcode() as u8,
        answers.join(",")
    );
    Ok(())
}

fn dns_ask_tcp(server: &str, name: &str) -> std::io::Result<()> {
    use std::io::Read as _;

    use simple_dns::{CLASS, Name, Packet, Question, TYPE, rdata::RData};
    let server: std::net::IpAddr = server.parse().map_err(std::io::Error::other)?;
    let mut query = Packet::new_query(0x7c7c);
    query.questions.push(Question::new(
        Name::new(name).map_err(std::io::Error::other)?,
        TYPE::A.into(),
        CLASS::IN.into(),
        false,
    ));
    let bytes = query.build_bytes_vec().map_err(std::io::Error::other)?;
    let mut stream = match std::net::TcpStream::connect((server, 53)) {
        Ok(stream) => stream,
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
            println!("eperm");
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(&bytes)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply)?;
    let packet = Packet::parse(&reply).map_err(std::io::Error::other)?;
    let answers: Vec<String> = packet
        .answers
        .iter()
        .filter_map(|record| match &record.rdata {
            RData::A(a) => Some(std::net::Ipv4Addr::from(a.address).to_string()),
            _ => None,
        })
        .collect();
    println!(
        "rcode={} answers={}",
        packet.rcode() as u8,
        answers.join(",")
    );
    Ok(())
}

/// `eperm` or the error, for the last failed syscall.
fn failure() -> String {
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => "eperm".to_owned(),
        _ => format!("error:{err}"),
    }
}

/// `ok` (closing the descriptor), `eperm` or the error, for a syscall that opens a file.
fn outcome(ret: i64) -> String {
    if ret >= 0 {
        // SAFETY: closing a descriptor this process just opened.
        unsafe { libc::close(i32::try_from(ret).unwrap_or(-1)) };
        return "ok".to_owned();
    }
    failure()
}

fn send(addr: &str, port: &str, bytes: &str, sndbuf: Option<&str>) -> std::io::Result<()> {
    use std::os::fd::FromRawFd as _;
    let bytes: usize = bytes.parse().map_err(std::io::Error::other)?;
    let port: u16 = port.parse().map_err(std::io::Error::other)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(std::io::Error::other)?;
    let sndbuf: Option<libc::c_int> = sndbuf
        .map(str::parse)
        .transpose()
        .map_err(std::io::Error::other)?;
    // SAFETY: a new descriptor, owned by the stream from here on.
    let mut stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::from_raw_fd(fd)
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    if let Some(size) = sndbuf {
        // SAFETY: a valid int option of the size passed, on a live socket.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&raw const size).cast(),
                libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("a small size"),
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits"),
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid sockaddr_in of the size passed, on a live socket.
    let connected = unsafe {
        libc::connect(
            fd,
            (&raw const sin).cast(),
            libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).expect("a small size"),
        )
    };
    if connected != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let chunk = vec![0x5a; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        stream.write_all(&chunk[..n])?;
        sent += n;
    }
    println!("sent={sent}");
    Ok(())
}

fn open_evasions(path: &str) -> std::io::Result<()> {
    let name = std::ffi::CString::new(path).map_err(std::io::Error::other)?;
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    let how: [u64; 3] = [libc::O_RDONLY as u64, 0, 0];
    // SAFETY: a valid NUL-terminated name and a valid open_how of the size passed.
    let openat2 = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            name.as_ptr(),
            how.as_ptr(),
            size_of_val(&how),
        )
    };
    let openat2 = outcome(openat2);
    // SAFETY: a valid NUL-terminated name.
    let o_path = unsafe { libc::open(name.as_ptr(), libc::O_PATH) };
    if o_path < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let reopen =
        std::ffi::CString::new(format!("/proc/self/fd/{o_path}")).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated name.
    let proc_fd = outcome(i64::from(unsafe {
        libc::open(reopen.as_ptr(), libc::O_RDONLY)
    }));
    println!("openat2={openat2} proc-fd={proc_fd}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["handover", socket, gofile] => handover(socket, gofile),
        ["ask", fd, gofile] => ask(fd, gofile),
        ["pass-fd", socket, to] => pass_fd(socket, to),
        ["fork", count] => fork(count),
        ["as-nobody", ref rest @ ..] => as_nobody(rest),
        ["without-ptrace", ref rest @ ..] => without_ptrace(rest),
        ["net", protocol, addr, port, count] => net(protocol, addr, port, count, None),
        ["net", protocol, addr, port, count, rate] => net(protocol, addr, port, count, Some(rate)),
        ["resolve-connect", server, name, port] => resolve_connect(server, name, port),
        ["dns-ask", server, name, qtype] => dns_ask(server, name, qtype),
        ["dns-ask-tcp", server, name] => dns_ask_tcp(server, name),
        ["open-evasions", path] => open_evasions(path),
        ["send", addr, port, bytes] => send(addr, port, bytes, None),
        ["send", addr, port, bytes, sndbuf] => send(addr, port, bytes, Some(sndbuf)),
        ["truncate", path] => std::ffi::CString::new(path)
            .map_err(std::io::Error::other)
            .map(|name| {
                // SAFETY: a valid NUL-terminated name.
                let ret = unsafe { libc::truncate(name.as_ptr(), 0) };
                let said = if ret == 0 { "ok".to_owned() } else { failure() };
                println!("{said}");
            }),
        ["tamper", what, target] => tamper(what, target),
        ["evade", ref rest @ ..] => net_evasions::evade(rest),
        ["fs", ref rest @ ..] => file_evasions::run(rest),
        ["exec-evasion", ref rest @ ..] => exec_evasions::run(rest),
        ["net-loop", protocol, addr, allowed, denied, stop] => {
            net_loop(protocol, addr, allowed, denied, stop)
        }
        ["net-until-denied", protocol, addr, port, stop] => {
            net_until_denied(protocol, addr, port, stop)
        }
        _ => Err(std::io::Error::other(
            "usage: agentd-test-helper handover SOCKET GOFILE | ask FD GOFILE",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agentd-test-helper: {err}");
            ExitCode::FAILURE
        }
    }
}
