//! A helper process for the identity tests, which need a connection that outlives the process
//! that opened it.
//!
//! - `agentd-test-helper handover SOCKET GOFILE`: connects to SOCKET, starts `ask` as a child
//!   that inherits the connection, prints `connector=PID asker=PID`, and exits at once.
//! - `agentd-test-helper ask FD GOFILE`: waits until GOFILE exists, sends `whoami` on FD and
//!   writes the answer to `GOFILE.reply`.

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
    fs::write(format!("{gofile}.reply"), answer)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["handover", socket, gofile] => handover(socket, gofile),
        ["ask", fd, gofile] => ask(fd, gofile),
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
