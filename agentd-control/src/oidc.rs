//! The OIDC discovery endpoint, for relying parties outside the hosts: the discovery document
//! at `/.well-known/openid-configuration` and the JWKS at `/keys`, over HTTPS with the
//! control plane's server certificate (as SPIRE's OIDC discovery provider serves them). Any
//! service that accepts OIDC-federated tokens can then verify an agent's JWT-SVID without
//! speaking gRPC.

use std::{future::Future, sync::Arc};

use axum::{Json, Router, routing::get};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::jwt::{ALGORITHM, KeyRing};

/// Where the JWKS is served, under the issuer.
pub const JWKS_PATH: &str = "/keys";
/// Where the discovery document is served, under the issuer.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// A TLS handshake or request that takes longer than this is dropped.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The discovery document for `issuer`.
#[must_use]
pub fn discovery_document(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        // No authorization flow: agents get tokens from agentd's Workload API. The field is
        // required by the OIDC discovery specification; SPIRE's provider leaves it empty too.
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
    })
}

/// The endpoint's routes. The JWKS is the ring's as last loaded: a rotation shows within the
/// ring's reload interval.
pub fn router(issuer: &str, keys: Arc<KeyRing>) -> Router {
    let discovery = Arc::new(discovery_document(issuer));
    Router::new()
        .route(
            DISCOVERY_PATH,
            get(move || {
                let discovery = Arc::clone(&discovery);
                async move { Json((*discovery).clone()) }
            }),
        )
        .route(
            JWKS_PATH,
            get(move || {
                let jwks = keys.current().jwks().clone();
                async move { Json(jwks) }
            }),
        )
}

/// Serves `router` over HTTPS on `listener` until `shutdown` completes. Each connection is
/// its own task, dropped if its handshake and request take longer than 10 s.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(%err, "accepting an OIDC discovery connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, async move {
                let tls = acceptor.accept(stream).await?;
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                    .map_err(std::io::Error::other)
            })
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(%err, "an OIDC discovery connection failed"),
                Err(_) => tracing::debug!("an OIDC discovery connection timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discovery_document_names_the_issuer_and_its_keys() {
        let document = discovery_document("https://cp.example:8443");
        assert_eq!(document["issuer"], "https://cp.example:8443");
        assert_eq!(document["jwks_uri"], "https://cp.example:8443/keys");
        assert_eq!(
            document["id_token_signing_alg_values_supported"][0],
            "ES256"
        );
    }
}
