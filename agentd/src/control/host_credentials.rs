//! The host's own credentials: enrolment with a join token, the client certificate, its key
//! and the CA certificate kept in the state directory (mode 0600), the TLS settings of host
//! calls, and the renewal of the certificate at half-life over the current connection
//! (`HostService.RenewHostCertificate`), so that a host never has to enrol again while it is
//! not revoked.

use std::path::{Path, PathBuf};

use agentd_proto::v1::{self as proto, host_service_client::HostServiceClient};
use serde::{Deserialize, Serialize};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use super::{
    channel::{authed, connect, is_https, now_secs},
    error::{ControlError, call, io},
};
use crate::config::ControlPlaneConfig;

/// The host's credentials, kept in the state directory (mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Credentials {
    pub(super) host_id: String,
    pub(super) host_token: String,
    /// The host's mTLS client certificate, signed by the control plane's CA (PEM); empty for
    /// credentials kept before agentd sent a certificate request.
    #[serde(default)]
    certificate_pem: String,
    /// Its private key (PEM), generated on this host; it never leaves it.
    #[serde(default)]
    key_pem: String,
    /// The control plane's CA certificate (PEM), as the enrolment returned it.
    #[serde(default)]
    ca_certificate_pem: String,
    /// When this host received the certificate (Unix seconds; 0 in credentials from before
    /// renewals, which count from the certificate's start).
    #[serde(default)]
    obtained_at: i64,
}

/// A client certificate's validity, and when this host received it; Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Validity {
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    pub(super) obtained_at: i64,
}

impl Validity {
    /// When to renew: half-way from when the host received the certificate (or its start, if
    /// later; the control plane back-dates it a minute) to its end, as SVIDs are.
    pub(super) fn renew_at(self) -> i64 {
        let from = self.not_before.max(self.obtained_at);
        from + (self.not_after - from) / 2
    }
}

impl Credentials {
    /// The client certificate's validity; `None` without a certificate (or one that does not
    /// parse, which the TLS handshake will then refuse).
    pub(super) fn validity(&self) -> Option<Validity> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.certificate_pem.as_bytes()).ok()?;
        let cert = pem.parse_x509().ok()?;
        let validity = cert.validity();
        Some(Validity {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            obtained_at: self.obtained_at,
        })
    }
}

fn credentials_path(state_dir: &Path) -> PathBuf {
    state_dir.join("host.json")
}

fn hostname(config: &ControlPlaneConfig) -> String {
    config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "localhost".to_owned(), |name| name.trim().to_owned())
    })
}

fn read_ca_file(config: &ControlPlaneConfig) -> Result<Option<Vec<u8>>, ControlError> {
    config
        .ca_file
        .as_ref()
        .map(|file| std::fs::read(file).map_err(io(format!("reading {}", file.display()))))
        .transpose()
}

/// The saved credentials, if there are any.
pub(super) fn saved_credentials(config: &ControlPlaneConfig) -> Option<Credentials> {
    let bytes = std::fs::read(credentials_path(&config.state_dir)).ok()?;
    serde_json::from_slice::<Credentials>(&bytes).ok()
}

/// Writes the credentials whole (a partial file renamed into place), mode 0600.
fn save(config: &ControlPlaneConfig, credentials: &Credentials) -> Result<(), ControlError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = credentials_path(&config.state_dir);
    std::fs::create_dir_all(&config.state_dir)
        .map_err(io(format!("creating {}", config.state_dir.display())))?;
    let bytes = serde_json::to_vec(credentials).map_err(|err| ControlError::Io {
        what: "encoding the credentials".to_owned(),
        source: std::io::Error::other(err),
    })?;
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(format!("writing {}", partial.display())))?;
    std::io::Write::write_all(&mut file, &bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", partial.display())))?;
    std::fs::rename(&partial, &path).map_err(io(format!("writing {}", path.display())))
}

/// A new key, generated here, and a certificate request for it (PEM).
fn new_key() -> Result<(rcgen::KeyPair, String), ControlError> {
    let key = rcgen::KeyPair::generate()
        .map_err(|err| ControlError::CertificateRequest(err.to_string()))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|err| ControlError::CertificateRequest(err.to_string()))?;
    Ok((key, csr))
}

/// New credentials from enrolling with the join token: a key generated here, a certificate
/// request for it, and what the control plane returns. Over https the server is verified
/// against `control_plane.ca_file`.
pub(super) async fn enrol(
    config: &ControlPlaneConfig,
    url: &str,
) -> Result<Credentials, ControlError> {
    let token = match (&config.join_token, &config.join_token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(io(format!("reading {}", file.display())))?
            .trim()
            .to_owned(),
        (None, None) => {
            return Err(ControlError::NotEnrolled {
                path: credentials_path(&config.state_dir),
            });
        }
    };
    let tls = if is_https(url) {
        let ca = read_ca_file(config)?.ok_or_else(|| ControlError::NoCaForEnrolment {
            url: url.to_owned(),
        })?;
        Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
    } else {
        None
    };
    let channel = connect(url, tls).await?;
    let (key, csr) = new_key()?;
    let enrolled = HostServiceClient::new(channel)
        .enroll_host(proto::EnrollHostRequest {
            join_token: token,
            hostname: hostname(config),
            csr_pem: csr,
            agentd_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .await
        .map_err(call("EnrollHost"))?
        .into_inner();
    let credentials = Credentials {
        host_id: enrolled.host_id,
        host_token: enrolled.host_token,
        certificate_pem: enrolled.certificate_pem,
        key_pem: key.serialize_pem(),
        ca_certificate_pem: enrolled.ca_certificate_pem,
        obtained_at: now_secs(),
    };
    save(config, &credentials)?;
    tracing::info!(
        host_id = credentials.host_id,
        client_certificate = !credentials.certificate_pem.is_empty(),
        "enrolled with the control plane"
    );
    Ok(credentials)
}

/// Renews the client certificate over the connection `client` holds (made with the current
/// certificate): a new key generated here, the certificate the control plane signs for it,
/// saved before it is used. The connection stays as it is; the next one presents the new
/// certificate. A failure leaves the saved credentials as they were.
pub(super) async fn renew(
    config: &ControlPlaneConfig,
    client: &mut HostServiceClient<Channel>,
    token: &MetadataValue<tonic::metadata::Ascii>,
    credentials: &mut Credentials,
) -> Result<Validity, ControlError> {
    let (key, csr_pem) = new_key()?;
    let renewed = client
        .renew_host_certificate(authed(
            proto::RenewHostCertificateRequest { csr_pem },
            token,
        ))
        .await
        .map_err(call("RenewHostCertificate"))?
        .into_inner();
    let next = Credentials {
        certificate_pem: renewed.certificate_pem,
        key_pem: key.serialize_pem(),
        ca_certificate_pem: renewed.ca_certificate_pem,
        obtained_at: now_secs(),
        ..credentials.clone()
    };
    let validity = next.validity().ok_or_else(|| {
        ControlError::CertificateRequest(
            "the renewed certificate from the control plane does not parse".to_owned(),
        )
    })?;
    save(config, &next)?;
    *credentials = next;
    Ok(validity)
}

/// The SHA-256 (hex) of the trust bundle these credentials hold, as heartbeats name it.
pub(super) fn bundle_digest(credentials: &Credentials) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(
        credentials.ca_certificate_pem.as_bytes(),
    ))
}

/// Keeps the trust bundle a heartbeat returned (the control plane rotated its CAs): saved, and
/// trusted from the next connection. A bundle that holds no certificate is refused.
pub(super) fn update_bundle(
    config: &ControlPlaneConfig,
    credentials: &mut Credentials,
    bundle_pem: &str,
) -> Result<(), ControlError> {
    let certificates = x509_parser::pem::Pem::iter_from_buffer(bundle_pem.as_bytes())
        .map_while(Result::ok)
        .filter(|pem| pem.label == "CERTIFICATE" && pem.parse_x509().is_ok())
        .count();
    if certificates == 0 {
        return Err(ControlError::CertificateRequest(
            "the trust bundle from the control plane holds no certificate".to_owned(),
        ));
    }
    let updated = Credentials {
        ca_certificate_pem: bundle_pem.to_owned(),
        ..credentials.clone()
    };
    save(config, &updated)?;
    *credentials = updated;
    Ok(())
}

/// The TLS settings of host calls to an https control plane: the host's client certificate
/// (mTLS), and the server verified against the trust bundle from the control plane (and
/// `control_plane.ca_file`).
pub(super) fn host_tls(
    config: &ControlPlaneConfig,
    credentials: &Credentials,
) -> Result<ClientTlsConfig, ControlError> {
    if credentials.certificate_pem.is_empty() || credentials.key_pem.is_empty() {
        return Err(ControlError::NoClientCertificate {
            path: credentials_path(&config.state_dir),
        });
    }
    // The CAs from the control plane (enrolment, renewals, heartbeats: it rotates them), and
    // those of `control_plane.ca_file` too where one is set.
    let mut ca = read_ca_file(config)?.unwrap_or_default();
    if !ca.is_empty() && !ca.ends_with(b"\n") {
        ca.push(b'\n');
    }
    ca.extend_from_slice(credentials.ca_certificate_pem.as_bytes());
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(
            &credentials.certificate_pem,
            &credentials.key_pem,
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_before_certificates_cannot_call_an_https_control_plane() {
        let old: Credentials =
            serde_json::from_str(r#"{"host_id":"h","host_token":"t"}"#).expect("old credentials");
        let config = ControlPlaneConfig::default();
        let err = host_tls(&config, &old).unwrap_err();
        assert!(
            matches!(err, ControlError::NoClientCertificate { .. }),
            "{err}"
        );
        assert_eq!(old.validity(), None, "nothing to renew");
    }

    #[test]
    fn a_certificate_is_renewed_at_half_its_validity_and_saved_privately() {
        let (key, _) = new_key().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 11);
        let cert = params.self_signed(&key).unwrap();
        let credentials = Credentials {
            host_id: "h".to_owned(),
            host_token: "t".to_owned(),
            certificate_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_certificate_pem: String::new(),
            obtained_at: 0,
        };
        let validity = credentials.validity().expect("a validity");
        // 2030-01-01 and 2030-01-11, 00:00 UTC.
        assert_eq!(
            validity,
            Validity {
                not_before: 1_893_456_000,
                not_after: 1_894_320_000,
                obtained_at: 0,
            }
        );
        assert_eq!(validity.renew_at(), 1_893_888_000, "2030-01-06");
        // Received a day after its start: half-way through what was left.
        let late = Validity {
            obtained_at: 1_893_456_000 + 86_400,
            ..validity
        };
        assert_eq!(
            late.renew_at(),
            1_893_456_000 + 86_400 + 5 * 86_400 - 43_200
        );

        let dir = tempfile::tempdir().unwrap();
        let config = ControlPlaneConfig {
            state_dir: dir.path().join("state"),
            ..ControlPlaneConfig::default()
        };
        save(&config, &credentials).unwrap();
        let path = credentials_path(&config.state_dir);
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let read = saved_credentials(&config).expect("saved");
        assert_eq!(read.certificate_pem, credentials.certificate_pem);
        assert!(!path.with_extension("partial").exists());
    }

    #[tokio::test]
    async fn enrolling_over_https_needs_the_ca() {
        let config = ControlPlaneConfig {
            url: Some("https://127.0.0.1:1".to_owned()),
            join_token: Some("token".to_owned()),
            state_dir: tempfile::tempdir().unwrap().path().to_owned(),
            ..ControlPlaneConfig::default()
        };
        let err = enrol(&config, "https://127.0.0.1:1").await.unwrap_err();
        assert!(
            matches!(err, ControlError::NoCaForEnrolment { .. }),
            "{err}"
        );
    }
}
