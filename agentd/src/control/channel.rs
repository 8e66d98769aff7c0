//! How host calls reach the control plane: the channel (plain or TLS), the bearer token on
//! each request, and the clock renewals count with. Leaves for the task (`mod.rs`) and the
//! host's credentials (`host_credentials`).

use std::time::Duration;

use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use super::error::ControlError;
use crate::clock;

fn connect_error(url: &str) -> impl FnOnce(tonic::transport::Error) -> ControlError {
    let url = url.to_owned();
    move |source| ControlError::Connect { url, source }
}

/// A channel to `url`; with `tls`, over TLS with that configuration.
pub(super) async fn connect(
    url: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, ControlError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(connect_error(url))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(connect_error(url))?;
    }
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(connect_error(url))
}

pub(super) fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// A request carrying the host's bearer token.
pub(super) fn authed<T>(message: T, token: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

/// Now, in Unix seconds.
pub(super) fn now_secs() -> i64 {
    clock::unix_ms() / 1000
}
