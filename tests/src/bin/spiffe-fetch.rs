//! A SPIFFE Workload API client for the credential tests, built on the `spiffe` crate (a
//! client no one here wrote), run inside an agent.
//!
//! - `spiffe-fetch x509 ENDPOINT`: fetches the caller's X.509-SVID and the bundles; prints
//!   `spiffe_id=ID chain=N bundle_authorities=N` (the crate has checked that the key matches
//!   the certificate and that the certificate names one SPIFFE ID), or `error=...`.
//! - `spiffe-fetch watch ENDPOINT`: streams the caller's X.509-SVIDs, printing
//!   `svid=ID serial=HEX not_after=UNIX` for each message and `ended=...` when the stream ends.
//! - `spiffe-fetch x509-files ENDPOINT DIR`: writes the caller's X.509-SVID as `DIR/svid.pem`
//!   (the chain), `DIR/key.pem` (PKCS#8) and `DIR/bundle.pem` (its trust domain's
//!   authorities), for a TLS library to use; prints `spiffe_id=ID`.
//! - `spiffe-fetch jwt ENDPOINT AUDIENCE`: fetches a JWT-SVID for AUDIENCE (the crate has
//!   parsed it: `kid`, a SPIFFE ID `sub`, `aud`, `exp`); prints `spiffe_id=ID token=JWT`.
//! - `spiffe-fetch jwt-bundles ENDPOINT`: prints `trust_domain=TD keys=N` for each bundle.
//! - `spiffe-fetch validate ENDPOINT AUDIENCE TOKEN`: asks the Workload API to validate TOKEN
//!   for AUDIENCE; prints `valid=SPIFFE_ID`.
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["x509", endpoint] => runtime.block_on(x509(endpoint)),
        ["watch", endpoint] => runtime.block_on(watch(endpoint)),
        ["x509-files", endpoint, dir] => runtime.block_on(x509_files(endpoint, dir)),
        ["jwt", endpoint, audience] => runtime.block_on(jwt(endpoint, audience)),
        ["jwt-bundles", endpoint] => runtime.block_on(jwt_bundles(endpoint)),
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
