//! A SPIFFE Workload API client for the credential tests, built on the `spiffe` crate (a
//! client no one here wrote), run inside an agent.
//!
//! - `spiffe-fetch x509 ENDPOINT`: fetches the caller's X.509-SVID and the bundles; prints
//!   `spiffe_id=ID chain=N bundle_authorities=N` (the crate has checked that the key matches
//!   the certificate and that the certificate names one SPIFFE ID), or `error=...`.
//! - `spiffe-fetch watch ENDPOINT`: streams the caller's X.509-SVIDs, printing
//!   `svid=ID serial=HEX not_after=UNIX` for each message and `ended=...` when the stream ends.
//! - `spiffe-fetch watch-bundles ENDPOINT`: streams the X.509 bundles, printing
//!   `bundles trust_domain=TD authorities=N` for each message and `ended=...` when it ends.
//! - `spiffe-fetch x509-files ENDPOINT DIR`: writes the caller's X.509-SVID as `DIR/svid.pem`
//!   (the chain), `DIR/key.pem` (PKCS#8) and `DIR/bundle.pem` (its trust domain's
//!   authorities), for a TLS library to use; prints `spiffe_id=ID`.
//! - `spiffe-fetch jwt ENDPOINT AUDIENCE`: fetches a JWT-SVID for AUDIENCE (the crate has
//!   parsed it: `kid`, a SPIFFE ID `sub`, `aud`, `exp`); prints `spiffe_id=ID token=JWT`.
//! - `spiffe-fetch jwt-bundles ENDPOINT`: prints `trust_domain=TD keys=N` for each bundle.
//! - `spiffe-fetch validate ENDPOINT AUDIENCE TOKEN`: asks the Workload API to validate TOKEN
//!   for AUDIENCE; prints `valid=SPIFFE_ID`.
//! - `spiffe-fetch handover SOCKET GOFILE`: connects to the Workload API's SOCKET, hands the
//!   connection to a child (`fetch-fd FD GOFILE`) and exits, printing `connector=PID`; the
//!   child waits for GOFILE, then asks for an X.509-SVID over the inherited connection and
//!   writes what the x509 mode prints to `GOFILE.reply` (the pid-reuse test).
//!
//! ENDPOINT is a Workload API address such as `unix:///run/agentd/spiffe.sock`.

use std::process::ExitCode;

use spiffe::WorkloadApiClient;
use tokio_stream::StreamExt as _;

/// `serial=HEX not_after=UNIX` of a certificate.
fn serial(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der).map_or_else(
        |err| format!("unparsable:{err}"),
        |(_, cert)| {
            format!(
                "{} not_after={}",
                cert.raw_serial_as_string().replace(':', ""),
                cert.validity().not_after.timestamp()
            )
        },
    )
}

async fn x509(endpoint: &str) -> Result<String, String> {
    let client = connect(endpoint).await?;
    let svid = client
        .fetch_x509_svid()
        .await
        .map_err(|err| format!("{err}"))?;
    let bundles = client
        .fetch_x509_bundles()
        .await
        .map_err(|err| format!("bundles: {err}"))?;
    let authorities = bundles
        .get(svid.spiffe_id().trust_domain())
        .map_or(0, |bundle| bundle.authorities().len());
    Ok(format!(
        "spiffe_id={} chain={} bundle_authorities={authorities}",
        svid.spiffe_id(),
        svid.cert_chain().len()
    ))
}

async fn watch(endpoint: &str) -> Result<String, String> {
    let client = connect(endpoint).await?;
    let mut stream = client
        .stream_x509_svids()
        .await
        .map_err(|err| format!("{err}"))?;
    loop {
        match stream.next().await {
            Some(Ok(svid)) => println!(
                "svid={} serial={}",
                svid.spiffe_id(),
                serial(svid.leaf().as_bytes())
            ),
            Some(Err(err)) => return Ok(format!("ended={err}")),
            None => return Ok("ended=the stream ended".to_owned()),
        }
    }
}

async fn watch_bundles(endpoint: &str) -> Result<String, String> {
    let client = connect(endpoint).await?;
    let mut stream = client
        .stream_x509_bundles()
        .await
        .map_err(|err| format!("{err}"))?;
    loop {
        match stream.next().await {
            Some(Ok(set)) => {
                for (trust_domain, bundle) in set.iter() {
                    println!(
                        "bundles trust_domain={trust_domain} authorities={}",
                        bundle.authorities().len()
                    );
                }
            }
            Some(Err(err)) => return Ok(format!("ended={err}")),
            None => return Ok("ended=the stream ended".to_owned()),
        }
    }
}

/// DER blocks as PEM with `label`.
fn pem(label: &str, blocks: &[&[u8]]) -> String {
    use std::fmt::Write as _;

    use base64::Engine as _;
    let mut out = String::new();
    for der in blocks {
        let _ = writeln!(out, "-----BEGIN {label}-----");
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        let _ = writeln!(out, "-----END {label}-----");
    }
    out
}

async fn x509_files(endpoint: &str, dir: &str) -> Result<String, String> {
    let client = connect(endpoint).await?;
    let svid = client
        .fetch_x509_svid()
        .await
        .map_err(|err| format!("{err}"))?;
    let bundles = client
        .fetch_x509_bundles()
        .await
        .map_err(|err| format!("bundles: {err}"))?;
    let bundle = bundles
        .get(svid.spiffe_id().trust_domain())
        .ok_or("no bundle for the SVID's trust domain")?;
    let dir = std::path::Path::new(dir);
    let chain: Vec<&[u8]> = svid
        .cert_chain()
        .iter()
        .map(spiffe::Certificate::as_bytes)
        .collect();
    let roots: Vec<&[u8]> = bundle
        .authorities()
        .iter()
        .map(spiffe::Certificate::as_bytes)
        .collect();
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|err| format!("writing {name}: {err}"))
    };
    write("svid.pem", pem("CERTIFICATE", &chain))?;
    write(
        "key.pem",
        pem("PRIVATE KEY", &[svid.private_key().as_bytes()]),
    )?;
    write("bundle.pem", pem("CERTIFICATE", &roots))?;
    Ok(format!("spiffe_id={}", svid.spiffe_id()))
}

async fn connect(endpoint: &str) -> Result<WorkloadApiClient, String> {
    WorkloadApiClient::connect_to(endpoint)
        .await
        .map_err(|err| format!("connect: {err}"))
}

async fn jwt(endpoint: &str, audience: &str) -> Result<String, String> {
    let svid = connect(endpoint)
        .await?
        .fetch_jwt_svid([audience], None)
        .await
        .map_err(|err| format!("{err}"))?;
    Ok(format!(
        "spiffe_id={} token={}",
        svid.spiffe_id(),
        svid.token()
    ))
}

async fn jwt_bundles(endpoint: &str) -> Result<String, String> {
    let bundles = connect(endpoint)
        .await?
        .fetch_jwt_bundles()
        .await
        .map_err(|err| format!("{err}"))?;
    let mut lines: Vec<String> = bundles
        .iter()
        .map(|(domain, bundle)| {
            format!(
                "trust_domain={domain} keys={}",
                bundle.jwt_authorities().count()
            )
        })
        .collect();
    lines.sort();
    Ok(lines.join("\n"))
}

async fn validate(endpoint: &str, audience: &str, token: &str) -> Result<String, String> {
    let svid = connect(endpoint)
        .await?
        .validate_jwt_token(audience, token)
        .await
        .map_err(|err| format!("{err}"))?;
    Ok(format!("valid={}", svid.spiffe_id()))
}

/// A connector that yields one connection made earlier (by another process).
struct Inherited(std::sync::Mutex<Option<tokio::net::UnixStream>>);

impl tower_service::Service<tonic::transport::Uri> for Inherited {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let stream = self
            .0
            .lock()
            .expect("not poisoned")
            .take()
            .map(hyper_util::rt::TokioIo::new)
            .ok_or_else(|| std::io::Error::other("the inherited connection was used"));
        std::future::ready(stream)
    }
}

fn handover(socket: &str, gofile: &str) -> Result<String, String> {
    use std::os::fd::AsRawFd as _;
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|err| err.to_string())?;
    let fd = stream.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own: let the child inherit it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let child = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["fetch-fd", &fd.to_string(), gofile])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|err| err.to_string())?;
    Ok(format!(
        "connector={} asker={}",
        std::process::id(),
        child.id()
    ))
}

async fn fetch_fd(fd: &str, gofile: &str) -> Result<String, String> {
    use std::os::fd::FromRawFd as _;
    let fd: i32 = fd.parse().map_err(|_| "FD: not a number".to_owned())?;
    while !std::path::Path::new(gofile).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // SAFETY: the descriptor was inherited from `handover` for this purpose.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    stream
        .set_nonblocking(true)
        .map_err(|err| err.to_string())?;
    let stream = tokio::net::UnixStream::from_std(stream).map_err(|err| err.to_string())?;
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(Inherited(std::sync::Mutex::new(Some(stream))))
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let endpoint = spiffe::transport::Endpoint::parse("unix:///inherited")
        .map_err(|err| format!("endpoint: {err}"))?;
    let client = WorkloadApiClient::new_with_channel(endpoint, channel);
    let reply = match client.fetch_x509_svid().await {
        Ok(svid) => format!("spiffe_id={}", svid.spiffe_id()),
        Err(err) => format!("error={err}"),
    };
    std::fs::write(format!("{gofile}.reply"), &reply).map_err(|err| err.to_string())?;
    Ok(reply)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["x509", endpoint] => runtime.block_on(x509(endpoint)),
        ["watch", endpoint] => runtime.block_on(watch(endpoint)),
        ["watch-bundles", endpoint] => runtime.block_on(watch_bundles(endpoint)),
        ["x509-files", endpoint, dir] => runtime.block_on(x509_files(endpoint, dir)),
        ["jwt", endpoint, audience] => runtime.block_on(jwt(endpoint, audience)),
        ["jwt-bundles", endpoint] => runtime.block_on(jwt_bundles(endpoint)),
        ["handover", socket, gofile] => handover(socket, gofile),
        ["fetch-fd", fd, gofile] => runtime.block_on(fetch_fd(fd, gofile)),
        ["validate", endpoint, audience, token] => {
            runtime.block_on(validate(endpoint, audience, token))
        }
        _ => {
            eprintln!(
                "usage: spiffe-fetch x509|watch|jwt-bundles ENDPOINT, x509-files ENDPOINT DIR, \
                 jwt ENDPOINT AUDIENCE, validate ENDPOINT AUDIENCE TOKEN"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(err) => println!("error={err}"),
    }
    ExitCode::SUCCESS
}
