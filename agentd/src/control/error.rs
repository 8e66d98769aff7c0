//! Why a call to the control plane, or the work around it, failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "{url} is https: enrolling needs the control plane's CA certificate \
         (control_plane.ca_file; `agentd-control ca-cert` prints it)"
    )]
    NoCaForEnrolment { url: String },
    #[error(
        "the credentials in {path} hold no client certificate, which an https control plane \
         requires: remove the file and enrol again with a new join token"
    )]
    NoClientCertificate { path: PathBuf },
    #[error("creating the certificate request: {0}")]
    CertificateRequest(String),
    #[error(
        "no credentials in {path} and no join token configured (control_plane.join_token or join_token_file)"
    )]
    NotEnrolled { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
}

pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

pub(super) fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> ControlError {
    move |status| ControlError::Call {
        call: name,
        status: Box::new(status),
    }
}
