//! Connection limits, the throttle on failed authentication, and shutdown with watching hosts
//! (issue 17, items 2 and 3). Each test prints what it measured.

use std::time::{Duration, Instant};

use agentd_control::proto;
use tokio::{io::AsyncReadExt as _, net::TcpStream};
use tonic::{Code, Streaming};

use crate::support::{
    Backend, Clients, Database, Fixture, agent_request, blueprint, create_agent, create_blueprint,
    enroll,
};

/// `WhoAmI` over a new connection: `Ok` or the failure, with its gRPC code where there is one.
async fn who_am_i(fixture: &Fixture) -> Result<(), String> {
    let channel = fixture
        .channel_with(None)
        .await
        .map_err(|err| format!("connecting: {err}"))?;
    Clients::new(channel, Some(&fixture.admin_token))
        .auth()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .map(drop)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

/// When the server closed `stream` (read returned end of file or an error), counted from
/// `since`; `None` if it stayed open for `limit`.
async fn closed_after(mut stream: TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buffer = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // The server's HTTP/2 SETTINGS, in plaintext.
            }
        }
    })
    .await
    .ok()
    .map(|()| since.elapsed())
}

pub async fn silent_connections_are_closed_after_the_handshake_timeout_and_the_cap_refuses_at_once(
    backend: Backend,
) {
    const CAP: usize = 8;
    const OVER: usize = 4;
    for tls in [false, true] {
        let fixture = Fixture::start_with_options(&backend, tls, |options| {
            options.connections.max_connections = CAP;
            options.connections.handshake_timeout = Duration::from_secs(1);
        })
        .await;
        let address = format!("127.0.0.1:{}", fixture.port);
        let opened = Instant::now();
        let mut watchers = Vec::new();
        for _ in 0..CAP + OVER {
            let stream = TcpStream::connect(&address).await.expect("connect");
            watchers.push(tokio::spawn(closed_after(
                stream,
                opened,
                Duration::from_secs(10),
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // At the cap a new client is refused at once, not left hanging.
        let started = Instant::now();
        let at_cap = tokio::time::timeout(Duration::from_secs(3), who_am_i(&fixture))
            .await
            .unwrap_or_else(|_| panic!("tls={tls}: a call at the cap hung"));
        let at_cap_took = started.elapsed();
        assert!(
            at_cap_took < Duration::from_secs(2),
            "tls={tls}: {at_cap_took:?}"
        );
        let mut closes = Vec::new();
        for watcher in watchers {
            closes.push(
                watcher
                    .await
                    .expect("watcher")
                    .unwrap_or_else(|| panic!("tls={tls}: a silent connection was never closed")),
            );
        }
        closes.sort();
        let refused = closes
            .iter()
            .filter(|at| **at < Duration::from_millis(800))
            .count();
        assert_eq!(refused, OVER, "tls={tls}: closed at once: {closes:?}");
        for at in &closes[OVER..] {
            assert!(
                *at >= Duration::from_millis(900) && *at < Duration::from_secs(4),
                "tls={tls}: a silent connection closed at {at:?}, not after the 1 s timeout"
            );
        }
        // The slots are free again.
        who_am_i(&fixture)
            .await
            .unwrap_or_else(|err| panic!("tls={tls}: after the timeout: {err}"));
        println!(
            "  measured (tls={tls}): at the cap a call ended in {at_cap_took:?} with {at_cap:?}; \
             over-cap connections closed by {:?}; silent ones closed at {:?}..{:?}",
            closes[OVER - 1],
            closes[OVER],
            closes[closes.len() - 1]
        );
        fixture.stop().await;
    }
}

/// A client that completes its TLS handshake and then sends nothing, not even the HTTP/2
/// preface, is past the handshake deadline and never gets a keepalive ping (hyper pings only
/// once HTTP/2 is up): only the idle timeout ends it. The client is OpenSSL's own
/// `s_client`, which stays connected as long as its input is open.
pub async fn a_client_silent_after_its_tls_handshake_is_closed_at_the_idle_timeout(
    backend: Backend,
) {
    let fixture = Fixture::start_with_options(&backend, true, |options| {
        options.connections.keepalive_interval = Duration::from_secs(1);
        options.connections.keepalive_timeout = Duration::from_secs(1);
        options.connections.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, fixture.tls_ca_pem.as_deref().expect("TLS")).expect("CA file");
    let started = Instant::now();
    let mut client = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-alpn", "h2"])
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", fixture.port))
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&ca)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client (Debian's openssl package)");
    let mut stderr = client.stderr.take().expect("stderr");
    let ended = tokio::time::timeout(Duration::from_secs(20), client.wait()).await;
    let took = started.elapsed();
    if ended.is_err() {
        // Still connected: end it, so that its output can be read.
        let _ = client.kill().await;
    }
    let mut said = String::new();
    let _ = stderr.read_to_string(&mut said).await;
    assert!(
        said.contains("verify return:1"),
        "the handshake completed and verified: {said}"
    );
    assert!(
        ended.is_ok(),
        "a silent TLS client was never closed: {said}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "closed after {took:?}, not at the 3 s idle timeout"
    );
    println!("  measured: a client silent after its TLS handshake was closed after {took:?}");
    // A client that speaks is served as before.
    who_am_i(&fixture).await.expect("a real client");
    fixture.stop().await;
}

/// A connection counts as idle when it carries no call, whatever else it sends. The client is
/// the `h2` crate's own HTTP/2 client, which answers every keepalive ping and never calls: it
/// is closed at the idle timeout (pings every second, answered within one, would keep it open
/// forever if bytes counted). A host whose decision watch is open on another connection stays
/// past the same timeout, and its watch still delivers.
pub async fn a_client_that_only_answers_pings_is_closed_at_the_idle_timeout_and_a_watching_host_is_kept(
    backend: Backend,
) {
    let fixture = Fixture::start_with_options(&backend, false, |options| {
        options.connections.keepalive_interval = Duration::from_secs(1);
        options.connections.keepalive_timeout = Duration::from_secs(1);
        options.connections.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let channel = fixture.channel().await;
    let mut watching = watching_hosts(&fixture, &channel, 1).await;
    let tcp = TcpStream::connect(("127.0.0.1", fixture.port))
        .await
        .expect("connect");
    let started = Instant::now();
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let ended = tokio::time::timeout(Duration::from_secs(20), connection).await;
    let took = started.elapsed();
    drop(send);
    assert!(
        ended.is_ok(),
        "a client that answers pings and never calls was never closed"
    );
    // Closed by the idle timeout, not by the keepalive (which would have closed a client that
    // did not answer after 2 s).
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(8),
        "closed after {took:?}, not at the 3 s idle timeout"
    );
    // The watching host's connection outlived it: its watch is still open (a closed connection
    // would end it with an error) and delivers the next set.
    let mut stream = watching.pop().expect("one watch");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.message())
            .await
            .is_err(),
        "the watch ended while its call was open"
    );
    // A new agent changes every host's set.
    let admin = fixture.admin().await;
    create_blueprint(&admin, blueprint("base")).await;
    create_agent(
        &admin,
        agent_request("late-bot", "base", &["alice@example.com"]),
    )
    .await;
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
    assert!(
        matches!(next, Ok(Ok(Some(_)))),
        "the watch past the idle timeout delivers the next set: {next:?}"
    );
    println!(
        "  measured: a client that only answered pings was closed after {took:?}; a watch \
         open for {:?} was kept and delivered",
        started.elapsed()
    );
    fixture.stop().await;
}

pub async fn failed_authentications_from_one_source_are_throttled(backend: Backend) {
    let fixture = Fixture::start_with_options(&backend, false, |options| {
        options.auth_throttle.max_failures = 5;
        options.auth_throttle.window = Duration::from_mins(1);
        options.auth_throttle.block = Duration::from_secs(2);
    })
    .await;
    let forged = fixture.as_token("agentd_0000000000000000").await;
    for _ in 0..5 {
        let result = forged.auth().who_am_i(proto::WhoAmIRequest {}).await;
        assert_eq!(result.unwrap_err().code(), Code::Unauthenticated);
    }
    // Blocked: even a valid token, and enrolment, are refused before any lookup.
    let admin = fixture.admin().await;
    let started = Instant::now();
    let blocked = admin.auth().who_am_i(proto::WhoAmIRequest {}).await;
    let refused_in = started.elapsed();
    crate::support::assert_status(
        blocked,
        Code::ResourceExhausted,
        "too many failed authentications from 127.0.0.1",
    );
    crate::support::assert_status(
        admin
            .host()
            .enroll_host(proto::EnrollHostRequest {
                join_token: "agentd_join_0000".into(),
                hostname: "h1".into(),
                csr_pem: String::new(),
                agentd_version: "test".into(),
            })
            .await,
        Code::ResourceExhausted,
        "too many failed authentications",
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    admin
        .auth()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("served again after the block");
    // Bad join tokens count too.
    for _ in 0..5 {
        let result = admin
            .host()
            .enroll_host(proto::EnrollHostRequest {
                join_token: "agentd_join_0000".into(),
                hostname: "h1".into(),
                csr_pem: String::new(),
                agentd_version: "test".into(),
            })
            .await;
        assert_eq!(result.unwrap_err().code(), Code::Unauthenticated);
    }
    crate::support::assert_status(
        admin.auth().who_am_i(proto::WhoAmIRequest {}).await,
        Code::ResourceExhausted,
        "retry in",
    );
    println!("  measured: a blocked source was refused in {refused_in:?}");
    fixture.stop().await;
}

/// `count` enrolled hosts, each with a decision watch that has received its first set.
async fn watching_hosts(
    fixture: &Fixture,
    channel: &tonic::transport::Channel,
    count: usize,
) -> Vec<Streaming<proto::WatchDecisionsResponse>> {
    let mut streams = Vec::new();
    for n in 0..count {
        let enrolled = enroll(fixture, &format!("watcher-{n}"), "").await;
        let host = Clients::new(channel.clone(), Some(&enrolled.host_token));
        let mut stream = host
            .host()
            .watch_decisions(proto::WatchDecisionsRequest { after_version: 0 })
            .await
            .expect("WatchDecisions")
            .into_inner();
        stream
            .message()
            .await
            .expect("the first set")
            .expect("a message");
        streams.push(stream);
    }
    streams
}

/// Every stream ends with UNAVAILABLE, the status agentd reconnects on.
async fn assert_all_unavailable(streams: Vec<Streaming<proto::WatchDecisionsResponse>>) {
    for mut stream in streams {
        match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            Ok(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            other => panic!("a watch must end with UNAVAILABLE, got {other:?}"),
        }
    }
}

pub async fn shutdown_with_watching_hosts_completes_within_seconds_and_watchers_see_unavailable(
    backend: Backend,
) {
    const HOSTS: usize = 50;
    let mut fixture = Fixture::start(&backend).await;
    let channel = fixture.channel().await;
    let streams = watching_hosts(&fixture, &channel, HOSTS).await;
    let started = Instant::now();
    let finished = fixture.shut_down_within(Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        finished,
        "the server was still serving 5 s after shutdown began"
    );
    assert_all_unavailable(streams).await;
    println!("  measured: shutdown with {HOSTS} watching hosts took {took:?}");
    fixture.stop().await;
}

/// A spawned server, killed when the test ends, also by a panic, so that none outlives it.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `agentd-control create-token` for an admin; prints the secret.
fn admin_token(bin: &str, database_url: &str) -> String {
    let output = std::process::Command::new(bin)
        .args([
            "--database",
            database_url,
            "create-token",
            "--name",
            "t",
            "--role",
            "admin",
            "--principal",
            "root@example.com",
        ])
        .output()
        .expect("create-token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Waits for `child` to exit, at most `limit`, without blocking the runtime (the clients'
/// connections must keep answering the server's GOAWAY meanwhile).
async fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

pub async fn sigterm_with_watching_hosts_exits_cleanly_within_seconds_and_hosts_resume(
    backend: Backend,
) {
    const HOSTS: usize = 50;
    let db = Database::create(&backend).await;
    let bin = env!("CARGO_BIN_EXE_agentd-control");
    let token = admin_token(bin, &db.url);
    let (child, port) = crate::support::spawn_server(bin, &db.url);
    let mut child = Spawned(child);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let admin = Clients::new(channel.clone(), Some(&token));
    let mut streams = Vec::new();
    let mut host_tokens = Vec::new();
    for n in 0..HOSTS {
        let join = admin
            .host()
            .create_join_token(proto::CreateJoinTokenRequest {
                ttl_seconds: 600,
                description: String::new(),
                ..Default::default()
            })
            .await
            .expect("CreateJoinToken")
            .into_inner();
        let enrolled = admin
            .host()
            .enroll_host(proto::EnrollHostRequest {
                join_token: join.token,
                hostname: format!("host-{n}"),
                csr_pem: String::new(),
                agentd_version: "test".into(),
            })
            .await
            .expect("EnrollHost")
            .into_inner();
        let host = Clients::new(channel.clone(), Some(&enrolled.host_token));
        let mut stream = host
            .host()
            .watch_decisions(proto::WatchDecisionsRequest { after_version: 0 })
            .await
            .expect("WatchDecisions")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("the first set")
            .expect("a message")
            .decision_set
            .expect("a set");
        streams.push(stream);
        host_tokens.push((enrolled.host_token, first.version));
    }
    let pid = i32::try_from(child.0.id()).expect("pid");
    let started = Instant::now();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut child.0, Duration::from_secs(10)).await;
    let took = started.elapsed();
    let Some(status) = status else {
        panic!("agentd-control was still running 10 s after SIGTERM with {HOSTS} watching hosts");
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    assert_all_unavailable(streams).await;
    // A restarted server: every host resumes its watch from the version it had.
    let (child, port) = crate::support::spawn_server(bin, &db.url);
    let restarted = Spawned(child);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    for (host_token, version) in &host_tokens {
        let host = Clients::new(channel.clone(), Some(host_token));
        let mut stream = host
            .host()
            .watch_decisions(proto::WatchDecisionsRequest {
                after_version: *version,
            })
            .await
            .expect("WatchDecisions after the restart")
            .into_inner();
        // Nothing changed: no new set within a moment.
        let next = tokio::time::timeout(Duration::from_millis(100), stream.message()).await;
        assert!(
            next.is_err(),
            "unchanged decisions were sent again: {next:?}"
        );
    }
    drop(restarted);
    println!("  measured: SIGTERM with {HOSTS} watching hosts: exited {status} in {took:?}");
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15, 12 and 13 after the command name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("ticks");
    Duration::from_millis(ticks * 1000 / per_second)
}

pub async fn at_its_open_file_limit_the_server_neither_spins_nor_locks_clients_out(
    backend: Backend,
) {
    use std::{io::BufRead as _, os::unix::process::CommandExt as _};
    const HARD_LIMIT: u64 = 128;
    const SILENT: usize = 300;
    let db = Database::create(&backend).await;
    let bin = env!("CARGO_BIN_EXE_agentd-control");
    let token = admin_token(bin, &db.url);
    let mut command = std::process::Command::new(bin);
    command
        .args([
            "--database",
            &db.url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sweep-interval",
            "1h",
            "--handshake-timeout",
            "3s",
        ])
        .stderr(std::process::Stdio::piped());
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 32,
                rlim_max: HARD_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Spawned(command.spawn().expect("starting agentd-control"));
    let mut lines = std::io::BufReader::new(child.0.stderr.take().expect("stderr")).lines();
    let mut log = Vec::new();
    let port: u16 = loop {
        let line = lines
            .next()
            .expect("agentd-control exited before serving")
            .expect("log");
        if let Some(rest) = line.split("address=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|address| address.rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .expect("a port");
        }
        log.push(line);
    };
    std::thread::spawn(move || for _ in lines {});
    assert!(
        log.iter()
            .any(|line| line.contains("lowering --max-connections to 64")),
        "the cap was fitted to the raised limit: {log:#?}"
    );
    let address = format!("127.0.0.1:{port}");
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(&address).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = cpu_time(child.0.id());
    let window = Instant::now();
    // New clients meanwhile: refused at once.
    let mut refusals = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(2), async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .expect("url")
                .connect()
                .await
                .map_err(|err| err.to_string())?;
            Clients::new(channel, Some(&token))
                .auth()
                .who_am_i(proto::WhoAmIRequest {})
                .await
                .map(drop)
                .map_err(|status| status.to_string())
        })
        .await
        .expect("a call at the cap hung");
        refusals.push((started.elapsed(), result.is_ok()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spent = cpu_time(child.0.id()).saturating_sub(cpu_before);
    let elapsed = window.elapsed();
    assert!(
        spent < elapsed / 4,
        "the server used {spent:?} of CPU in {elapsed:?} at its limit: it spins"
    );
    // After the handshake timeout the silent connections are gone and clients are served.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("url")
        .connect()
        .await
        .expect("connecting after the timeout");
    Clients::new(channel, Some(&token))
        .auth()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("served after the timeout");
    drop(silent);
    drop(child);
    println!(
        "  measured: {SILENT} silent connections at a hard limit of {HARD_LIMIT} files: \
         {spent:?} CPU in {elapsed:?}; calls meanwhile (time, served): {refusals:?}"
    );
}
