//! A SPIFFE Workload API client for the credential tests, built on the `spiffe` crate (a
//! client no one here wrote), run inside an agent.
//!
//! - `spiffe-fetch x509 ENDPOINT`: fetches the caller's X.509-SVID and the bundles; prints
//!   `spiffe_id=ID chain=N bundle_authorities=N` (the crate has checked that the key matches
//!   the certificate and that the certificate names one SPIFFE ID), or `error=...`.
//! - `spiffe-fetch watch ENDPOINT`: streams the caller's X.509-SVIDs, printing
//!   `svid=ID serial=HEX` for each message and `ended=...` when the stream ends.
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

fn serial(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der).map_or_else(
        |err| format!("unparsable:{err}"),
        |(_, cert)| cert.raw_serial_as_string().replace(':', ""),
    )
}

async fn x509(endpoint: &str) -> Result<String, String> {
    let client = WorkloadApiClient::connect_to(endpoint)
        .await
        .map_err(|err| format!("connect: {err}"))?;
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
    let client = WorkloadApiClient::connect_to(endpoint)
        .await
        .map_err(|err| format!("connect: {err}"))?;
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
        ["jwt", endpoint, audience] => runtime.block_on(jwt(endpoint, audience)),
        ["jwt-bundles", endpoint] => runtime.block_on(jwt_bundles(endpoint)),
        ["validate", endpoint, audience, token] => {
            runtime.block_on(validate(endpoint, audience, token))
        }
        _ => {
            eprintln!(
                "usage: spiffe-fetch x509|watch|jwt-bundles ENDPOINT, jwt ENDPOINT AUDIENCE, \
                 validate ENDPOINT AUDIENCE TOKEN"
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
