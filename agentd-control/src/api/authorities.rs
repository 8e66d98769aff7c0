//! `CredentialService`: the certificate authorities, rotated with an overlap (a new CA is
//! trusted before it signs, the old one stays trusted while certificates it signed may be
//! valid) and retired (`crate::authorities` and `crate::rotation` have the rules).

use tonic::{Request, Response, Status};

use super::{ControlPlane, optional_timestamp, timestamp};
use crate::{
    auth::Method,
    authorities::{self, Generated, MAX_TRUSTED},
    error::Error,
    proto,
    rotation::{self, Standing},
    store::authorities::StoredCa,
};

/// Seconds a new CA waits before it signs, unless the request says: a day, for every host to
/// have fetched the bundle that holds it (with a heartbeat) before the server presents a
/// certificate it signed.
const DEFAULT_ACTIVATE_AFTER: u32 = 24 * 3600;
/// The longest wait asked for.
const MAX_ACTIVATE_AFTER: u32 = 30 * 24 * 3600;
/// The most characters of a CA id read (16 hex digits are expected).
const MAX_ID_CHARS: usize = 64;

fn not_after(cert_pem: &str) -> Option<prost_types::Timestamp> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(timestamp(cert.validity().not_after.timestamp()))
}

fn to_proto(all: &[StoredCa], ca: &StoredCa, now: i64) -> proto::CertificateAuthority {
    let standing = rotation::standing_of(all, ca, now);
    proto::CertificateAuthority {
        id: ca.id.clone(),
        sha256: authorities::fingerprint(&ca.cert_pem),
        state: match standing {
            Standing::Pending => proto::CaState::Pending,
            Standing::Active => proto::CaState::Active,
            Standing::Superseded { .. } => proto::CaState::Superseded,
            Standing::Retired => proto::CaState::Retired,
        }
        .into(),
        create_time: Some(timestamp(ca.created_at)),
        activate_time: Some(timestamp(ca.activates_at)),
        supersede_time: match standing {
            Standing::Superseded { since } => Some(timestamp(since)),
            _ => None,
        },
        retire_time: optional_timestamp(ca.retired_at),
        certificate_pem: ca.cert_pem.clone(),
        not_after: not_after(&ca.cert_pem),
    }
}

/// A CA id as asked: 1 to 64 hex digits.
fn ca_id(asked: &str) -> Result<String, Status> {
    if asked.is_empty() || asked.len() > MAX_ID_CHARS {
        return Err(Error::invalid("id", format!("must be 1 to {MAX_ID_CHARS} characters")).into());
    }
    if let Some(bad) = asked.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            "id",
            format!("holds {bad:?}: a CA id is hex digits (agentctl ca list shows them)"),
        )
        .into());
    }
    Ok(asked.to_ascii_lowercase())
}

impl ControlPlane {
    pub(super) async fn rotate_certificate_authority(
        &self,
        request: Request<proto::RotateCertificateAuthorityRequest>,
    ) -> Result<Response<proto::RotateCertificateAuthorityResponse>, Status> {
        let caller = self
            .authorize(&request, Method::RotateCertificateAuthority)
            .await?;
        let after = rotation::activate_after(
            request.get_ref().activate_after_seconds,
            DEFAULT_ACTIVATE_AFTER,
            MAX_ACTIVATE_AFTER,
        )?;
        let audit = self.audit(&caller, Method::RotateCertificateAuthority);
        let generated = Generated::new(audit.now)?;
        let activates_at = audit.now + after;
        self.store
            .store_ca(&audit, generated.to_store(activates_at), |all| {
                let trusted = all.iter().filter(|ca| ca.retired_at.is_none()).count();
                if trusted >= MAX_TRUSTED {
                    return Err(Error::FailedPrecondition(format!(
                        "{trusted} certificate authorities are trusted, the most there may be; \
                         retire one first (RetireCertificateAuthority)"
                    )));
                }
                Ok(true)
            })
            .await?;
        self.reload_credentials().await?;
        let (all, now) = (self.store.certificate_authorities().await?, self.now());
        let ca = all
            .iter()
            .find(|ca| ca.id == generated.id)
            .ok_or_else(|| Status::internal("the new certificate authority was not stored"))?;
        Ok(Response::new(proto::RotateCertificateAuthorityResponse {
            authority: Some(to_proto(&all, ca, now)),
        }))
    }

    pub(super) async fn list_certificate_authorities(
        &self,
        request: Request<proto::ListCertificateAuthoritiesRequest>,
    ) -> Result<Response<proto::ListCertificateAuthoritiesResponse>, Status> {
        self.authorize(&request, Method::ListCertificateAuthorities)
            .await?;
        let (all, now) = (self.store.certificate_authorities().await?, self.now());
        let bundle = authorities::Authorities::from_stored(&all)?;
        Ok(Response::new(proto::ListCertificateAuthoritiesResponse {
            authorities: all.iter().map(|ca| to_proto(&all, ca, now)).collect(),
            bundle_pem: bundle.bundle_pem().to_owned(),
        }))
    }

    pub(super) async fn retire_certificate_authority(
        &self,
        request: Request<proto::RetireCertificateAuthorityRequest>,
    ) -> Result<Response<proto::RetireCertificateAuthorityResponse>, Status> {
        let caller = self
            .authorize(&request, Method::RetireCertificateAuthority)
            .await?;
        let asked = request.get_ref();
        let id = ca_id(&asked.id)?;
        let force = asked.force;
        let audit = self.audit(&caller, Method::RetireCertificateAuthority);
        let now = audit.now;
        let rule = authorities::retirement_rule(self.credentials.host_cert_ttl);
        let retired = self
            .store
            .retire_ca(&audit, &id, |all| {
                rotation::may_retire(all, &id, now, force, &rule)
            })
            .await?;
        self.reload_credentials().await?;
        let (all, now) = (self.store.certificate_authorities().await?, self.now());
        Ok(Response::new(proto::RetireCertificateAuthorityResponse {
            authority: Some(to_proto(&all, &retired, now)),
        }))
    }
}
