//! `agentd svid`: what the Workload API gives the calling process, asked through a standard
//! client (the `spiffe` crate's), exactly as any workload would ask. Run inside an agent
//! (`agentd launch --agent NAME -- agentd svid`) it shows that agent's SVIDs; elsewhere it shows
//! why the caller gets none.

use std::path::Path;

use serde::Serialize;
use spiffe::WorkloadApiClient;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the Workload API at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("FetchX509SVID: {0}")]
    X509(String),
    #[error("FetchJWTSVID for {audience:?}: {reason}")]
    Jwt { audience: String, reason: String },
}

/// One JWT-SVID as `agentd svid` prints it.
#[derive(Debug, Serialize)]
pub struct FetchedJwt {
    pub audience: String,
    pub token: String,
}

/// What the calling process got.
#[derive(Debug, Serialize)]
pub struct Fetched {
    pub spiffe_id: String,
    /// The leaf certificate's serial (hex), validity (Unix seconds) and chain length.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub chain: usize,
    /// Authorities in the bundle of the SVID's trust domain.
    pub bundle_authorities: usize,
    pub jwt_svids: Vec<FetchedJwt>,
}

/// Asks the Workload API on `socket` for the caller's X.509-SVID and bundle, and a JWT-SVID
/// for each of `audiences`.
pub async fn fetch(socket: &Path, audiences: &[String]) -> Result<Fetched, ClientError> {
    let endpoint = format!("unix://{}", socket.display());
    let client = WorkloadApiClient::connect_to(&endpoint)
        .await
        .map_err(|err| ClientError::Connect {
            endpoint: endpoint.clone(),
            reason: err.to_string(),
        })?;
    let svid = client
        .fetch_x509_svid()
        .await
        .map_err(|err| ClientError::X509(err.to_string()))?;
    let bundles = client
        .fetch_x509_bundles()
        .await
        .map_err(|err| ClientError::X509(format!("bundles: {err}")))?;
    let leaf = svid
        .cert_chain()
        .first()
        .ok_or_else(|| ClientError::X509("an empty chain".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_bytes())
        .map_err(|err| ClientError::X509(err.to_string()))?;
    let mut jwt_svids = Vec::with_capacity(audiences.len());
    for audience in audiences {
        let jwt = client
            .fetch_jwt_svid([audience], None)
            .await
            .map_err(|err| ClientError::Jwt {
                audience: audience.clone(),
                reason: err.to_string(),
            })?;
        jwt_svids.push(FetchedJwt {
            audience: audience.clone(),
            token: jwt.token().to_owned(),
        });
    }
    Ok(Fetched {
        spiffe_id: svid.spiffe_id().to_string(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        chain: svid.cert_chain().len(),
        bundle_authorities: bundles
            .get(svid.spiffe_id().trust_domain())
            .map_or(0, |bundle| bundle.authorities().len()),
        jwt_svids,
    })
}
