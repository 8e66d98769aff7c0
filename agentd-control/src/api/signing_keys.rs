//! `CredentialService`: the trust domain's JWT signing keys, rotated with an overlap (a new key
//! is published before it signs, the old one stays published while its tokens may be valid)
//! and retired (`crate::jwt` has the rules); the certificate authorities' calls are in
//! `authorities`.

use tonic::{Request, Response, Status};

use super::{ControlPlane, optional_timestamp, timestamp};
use crate::{
    auth::Method,
    error::Error,
    jwt::{self, JwtKeys, KeyState, MAX_PUBLISHED_KEYS},
    proto::{self, credential_service_server::CredentialService},
    rotation,
    store::credentials::StoredKey,
};

/// Seconds a new key waits before it signs, unless the request says: long enough for every
/// host (30 s) and relying party (commonly minutes) to fetch the JWKS that holds it.
const DEFAULT_ACTIVATE_AFTER: u32 = 600;
/// The longest wait asked for.
const MAX_ACTIVATE_AFTER: u32 = 7 * 24 * 3600;
/// The most characters of a `kid` read (16 hex digits are expected).
const MAX_KID_CHARS: usize = 64;

fn to_proto(keys: &[StoredKey], key: &StoredKey, now: i64) -> proto::JwtSigningKey {
    let state = jwt::state_of(keys, key, now);
    proto::JwtSigningKey {
        kid: key.kid.clone(),
        algorithm: jwt::ALGORITHM.to_owned(),
        state: match state {
            KeyState::Pending => proto::JwtKeyState::Pending,
            KeyState::Active => proto::JwtKeyState::Active,
            KeyState::Superseded { .. } => proto::JwtKeyState::Superseded,
            KeyState::Retired => proto::JwtKeyState::Retired,
        }
        .into(),
        create_time: Some(timestamp(key.created_at)),
        activate_time: Some(timestamp(key.activates_at)),
        supersede_time: match state {
            KeyState::Superseded { since } => Some(timestamp(since)),
            _ => None,
        },
        retire_time: optional_timestamp(key.retired_at),
    }
}

/// A `kid` as asked: 1 to 64 characters of hex digits.
fn kid(asked: &str) -> Result<&str, Status> {
    if asked.is_empty() || asked.len() > MAX_KID_CHARS {
        return Err(
            Error::invalid("kid", format!("must be 1 to {MAX_KID_CHARS} characters")).into(),
        );
    }
    if let Some(bad) = asked.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            "kid",
            format!("holds {bad:?}: a kid is hex digits (agentctl jwt-key list shows them)"),
        )
        .into());
    }
    Ok(asked)
}

impl ControlPlane {
    /// The keys as stored, each with its state now.
    async fn signing_keys(&self) -> Result<(Vec<StoredKey>, i64), Status> {
        Ok((self.store.jwt_keys().await?, self.now()))
    }
}

#[tonic::async_trait]
impl CredentialService for ControlPlane {
    async fn rotate_jwt_signing_key(
        &self,
        request: Request<proto::RotateJwtSigningKeyRequest>,
    ) -> Result<Response<proto::RotateJwtSigningKeyResponse>, Status> {
        let caller = self
            .authorize(&request, Method::RotateJwtSigningKey)
            .await?;
        let after = rotation::activate_after(
            request.get_ref().activate_after_seconds,
            DEFAULT_ACTIVATE_AFTER,
            MAX_ACTIVATE_AFTER,
        )?;
        let (keys, _) = self.signing_keys().await?;
        let published = keys.iter().filter(|key| key.retired_at.is_none()).count();
        if published >= MAX_PUBLISHED_KEYS {
            return Err(Error::FailedPrecondition(format!(
                "{published} JWT signing keys are published, the most there may be; retire one \
                 first (RetireJwtSigningKey)"
            ))
            .into());
        }
        let (kid, key_pem) = JwtKeys::generate()?;
        let audit = self.audit(&caller, Method::RotateJwtSigningKey);
        let activates_at = audit.now + after;
        self.store
            .store_jwt_key(&audit, &kid, &key_pem, activates_at)
            .await?;
        self.reload_credentials().await?;
        let (keys, now) = self.signing_keys().await?;
        let key = keys
            .iter()
            .find(|key| key.kid == kid)
            .ok_or_else(|| Status::internal("the new JWT signing key was not stored"))?;
        Ok(Response::new(proto::RotateJwtSigningKeyResponse {
            key: Some(to_proto(&keys, key, now)),
        }))
    }

    async fn list_jwt_signing_keys(
        &self,
        request: Request<proto::ListJwtSigningKeysRequest>,
    ) -> Result<Response<proto::ListJwtSigningKeysResponse>, Status> {
        self.authorize(&request, Method::ListJwtSigningKeys).await?;
        let (keys, now) = self.signing_keys().await?;
        Ok(Response::new(proto::ListJwtSigningKeysResponse {
            keys: keys.iter().map(|key| to_proto(&keys, key, now)).collect(),
        }))
    }

    async fn retire_jwt_signing_key(
        &self,
        request: Request<proto::RetireJwtSigningKeyRequest>,
    ) -> Result<Response<proto::RetireJwtSigningKeyResponse>, Status> {
        let caller = self
            .authorize(&request, Method::RetireJwtSigningKey)
            .await?;
        let asked = request.get_ref();
        let kid = kid(&asked.kid)?.to_ascii_lowercase();
        let force = asked.force;
        let audit = self.audit(&caller, Method::RetireJwtSigningKey);
        let now = audit.now;
        let retired = self
            .store
            .retire_jwt_key(&audit, &kid, |keys| jwt::may_retire(keys, &kid, now, force))
            .await?;
        self.reload_credentials().await?;
        let (keys, now) = self.signing_keys().await?;
        Ok(Response::new(proto::RetireJwtSigningKeyResponse {
            key: Some(to_proto(&keys, &retired, now)),
        }))
    }

    async fn rotate_certificate_authority(
        &self,
        request: Request<proto::RotateCertificateAuthorityRequest>,
    ) -> Result<Response<proto::RotateCertificateAuthorityResponse>, Status> {
        ControlPlane::rotate_certificate_authority(self, request).await
    }

    async fn list_certificate_authorities(
        &self,
        request: Request<proto::ListCertificateAuthoritiesRequest>,
    ) -> Result<Response<proto::ListCertificateAuthoritiesResponse>, Status> {
        ControlPlane::list_certificate_authorities(self, request).await
    }

    async fn retire_certificate_authority(
        &self,
        request: Request<proto::RetireCertificateAuthorityRequest>,
    ) -> Result<Response<proto::RetireCertificateAuthorityResponse>, Status> {
        ControlPlane::retire_certificate_authority(self, request).await
    }
}
