//! The keys that sign agents' JWT-SVIDs: ES256 (ECDSA P-256) keys kept in the database and
//! shared by every replica. The newest key signs; every stored key is published in the JWKS
//! (`FetchJWTBundles` on hosts, the OIDC discovery endpoint for relying parties), so that a
//! token signed before a new key was added still verifies.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The JWS algorithm of every agent token.
pub use crate::store::credentials::JWT_ALGORITHM as ALGORITHM;
use crate::{
    clock::UnixTime,
    error::{Error, Result},
    store::{AuditContext, Store, credentials::StoredKey},
};

/// The signing key and the published set.
pub struct JwtKeys {
    kid: String,
    encoding: EncodingKey,
    jwks: serde_json::Value,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn key_error(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |err| Error::Certificate(format!("{what}: {err}"))
}

/// A key's public half as a JWK, and its `kid`: the first 16 hex digits of the SHA-256 of
/// the public point, so that the same key always has the same id.
fn public_jwk(key: &KeyPair) -> Result<(String, serde_json::Value)> {
    let point = key.public_key_raw();
    // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
    if point.len() != 65 || point[0] != 4 {
        return Err(Error::Certificate(format!(
            "a JWT key's public point is {} bytes; an uncompressed P-256 point is 65",
            point.len()
        )));
    }
    let kid = hex::encode(&Sha256::digest(point)[..8]);
    let jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        "kid": kid,
        "use": "sig",
        "alg": ALGORITHM,
    });
    Ok((kid, jwk))
}

impl JwtKeys {
    /// A new signing key: its `kid` and PKCS#8 PEM.
    pub fn generate() -> Result<(String, String)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(key_error("generating a JWT key"))?;
        let (kid, _) = public_jwk(&key)?;
        Ok((kid, key.serialize_pem()))
    }

    /// The keys from `stored`, the newest signing (by creation, then `kid`).
    pub fn from_stored(stored: &[StoredKey]) -> Result<Self> {
        let mut jwks = Vec::with_capacity(stored.len());
        let mut newest: Option<(&StoredKey, KeyPair)> = None;
        for entry in stored {
            let key = KeyPair::from_pem(&entry.key_pem).map_err(key_error("reading a JWT key"))?;
            let (kid, jwk) = public_jwk(&key)?;
            if kid != entry.kid {
                return Err(Error::Certificate(format!(
                    "the JWT key stored as {:?} has the public key of {kid:?}",
                    entry.kid
                )));
            }
            jwks.push(jwk);
            let later = newest.as_ref().is_none_or(|(best, _)| {
                (entry.created_at, &entry.kid) > (best.created_at, &best.kid)
            });
            if later {
                newest = Some((entry, key));
            }
        }
        let (entry, key) =
            newest.ok_or_else(|| Error::Certificate("no JWT signing key is stored".into()))?;
        Ok(Self {
            kid: entry.kid.clone(),
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            jwks: serde_json::json!({ "keys": jwks }),
        })
    }

    /// The keys in the database, a first one created if there is none (by whichever replica
    /// gets there first; a key another replica added at the same moment is published too).
    pub async fn load_or_create(store: &Store, now: UnixTime) -> Result<Self> {
        let stored = store.jwt_keys().await?;
        if !stored.is_empty() {
            return Self::from_stored(&stored);
        }
        let (kid, key_pem) = Self::generate()?;
        let audit = AuditContext {
            actor: "agentd-control (JWT key bootstrap)".to_owned(),
            action: "CreateJwtSigningKey",
            now,
        };
        store.store_jwt_key(&audit, &kid, &key_pem, now).await?;
        Self::from_stored(&store.jwt_keys().await?)
    }

    /// The `kid` of the key that signs.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The published keys: `{"keys": [JWK, ...]}`.
    #[must_use]
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// `claims`, signed ES256 with the signing key's `kid` in the header.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|err| Error::Certificate(format!("signing a JWT-SVID: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    fn stored(kid: &str, key_pem: &str, created_at: UnixTime) -> StoredKey {
        StoredKey {
            kid: kid.to_owned(),
            key_pem: key_pem.to_owned(),
            created_at,
        }
    }

    #[test]
    fn the_newest_key_signs_and_every_key_is_published_and_verifies() {
        let (old_kid, old_pem) = JwtKeys::generate().unwrap();
        let (new_kid, new_pem) = JwtKeys::generate().unwrap();
        let keys = JwtKeys::from_stored(&[
            stored(&new_kid, &new_pem, 200),
            stored(&old_kid, &old_pem, 100),
        ])
        .unwrap();
        assert_eq!(keys.kid(), new_kid);
        let published = keys.jwks()["keys"].as_array().unwrap();
        assert_eq!(published.len(), 2);
        let claims = serde_json::json!({ "sub": "spiffe://t/agent/a", "aud": ["x"], "exp": 4_000_000_000_u64 });
        let token = keys.sign(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
        let jwk = published
            .iter()
            .find(|jwk| jwk["kid"] == new_kid.as_str())
            .unwrap();
        let decoding =
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
                .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["x"]);
        let decoded =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(decoded.claims["sub"], "spiffe://t/agent/a");
        // The other key does not verify it.
        let other = published
            .iter()
            .find(|jwk| jwk["kid"] == old_kid.as_str())
            .unwrap();
        let wrong = DecodingKey::from_ec_components(
            other["x"].as_str().unwrap(),
            other["y"].as_str().unwrap(),
        )
        .unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &wrong, &validation).is_err());
    }

    #[test]
    fn a_stored_key_under_another_keys_id_is_refused() {
        let (_, pem) = JwtKeys::generate().unwrap();
        let err = JwtKeys::from_stored(&[stored("0000000000000000", &pem, 1)]).unwrap_err();
        assert!(err.to_string().contains("has the public key of"), "{err}");
        assert!(JwtKeys::from_stored(&[]).is_err());
    }
}
