//! The keys that sign agents' JWT-SVIDs: ES256 (ECDSA P-256) keys kept in the database and
//! shared by every replica. A key is published in the JWKS (`FetchJWTBundles` on hosts, the
//! OIDC discovery endpoint for relying parties) from its creation, signs from its activation
//! (the newest activated key signs), and leaves the JWKS when it is retired, so that a rotation
//! publishes the next key before it signs and a token signed before it still verifies.
//! [`KeyRing`] is what a replica holds: reloaded from the database, so that a rotation made
//! through another replica reaches it.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The JWS algorithm of every agent token.
pub use crate::store::credentials::JWT_ALGORITHM as ALGORITHM;
use crate::{
    clock::UnixTime,
    credentials::JWT_SVID_TTL_RANGE,
    error::{Error, Result},
    rotation::{self, Lifetime, Ring, Rotates},
    store::{AuditContext, Store, credentials::StoredKey},
};

/// The most keys published at once: a rotation beyond it is refused until one is retired.
pub const MAX_PUBLISHED_KEYS: usize = 8;

/// One key that may sign.
struct Signer {
    kid: String,
    activates_at: UnixTime,
    encoding: EncodingKey,
}

/// The published keys, each with when it signs.
pub struct JwtKeys {
    /// Oldest activation first.
    signers: Vec<Signer>,
    jwks: serde_json::Value,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field(
                "kids",
                &self.signers.iter().map(|s| &s.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn key_error(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |err| Error::Certificate(format!("{what}: {err}"))
}

/// The order in which keys take over signing: by activation, then creation, then `kid`.
fn succession(key: &StoredKey) -> (UnixTime, UnixTime, &str) {
    let Lifetime {
        id,
        created_at,
        activates_at,
        ..
    } = key.lifetime();
    (activates_at, created_at, id)
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

    /// The keys of `stored` that are not retired.
    pub fn from_stored(stored: &[StoredKey]) -> Result<Self> {
        let mut live: Vec<&StoredKey> = stored.iter().filter(|k| k.retired_at.is_none()).collect();
        live.sort_by(|a, b| succession(a).cmp(&succession(b)));
        let mut jwks = Vec::with_capacity(live.len());
        let mut signers = Vec::with_capacity(live.len());
        for entry in live {
            let key = KeyPair::from_pem(&entry.key_pem).map_err(key_error("reading a JWT key"))?;
            let (kid, jwk) = public_jwk(&key)?;
            if kid != entry.kid {
                return Err(Error::Certificate(format!(
                    "the JWT key stored as {:?} has the public key of {kid:?}",
                    entry.kid
                )));
            }
            jwks.push(jwk);
            signers.push(Signer {
                kid,
                activates_at: entry.activates_at,
                encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            });
        }
        if signers.is_empty() {
            return Err(Error::Certificate(
                "no JWT signing key is stored that is not retired".into(),
            ));
        }
        Ok(Self {
            signers,
            jwks: serde_json::json!({ "keys": jwks }),
        })
    }

    /// The key that signs at `now`: the newest activated, else (every key still waiting) the
    /// first to activate.
    fn signer(&self, now: UnixTime) -> &Signer {
        self.signers
            .iter()
            .rev()
            .find(|signer| signer.activates_at <= now)
            .unwrap_or(&self.signers[0])
    }

    /// The `kid` of the key that signs at `now`.
    #[must_use]
    pub fn kid(&self, now: UnixTime) -> &str {
        &self.signer(now).kid
    }

    /// The published keys: `{"keys": [JWK, ...]}`.
    #[must_use]
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// `claims`, signed ES256 by the key that signs at `now`, its `kid` in the header.
    pub fn sign(&self, claims: &impl Serialize, now: UnixTime) -> Result<String> {
        let signer = self.signer(now);
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &signer.encoding)
            .map_err(|err| Error::Certificate(format!("signing a JWT-SVID: {err}")))
    }
}

/// Where a key stands at a moment.
pub use crate::rotation::Standing as KeyState;

impl Rotates for StoredKey {
    fn lifetime(&self) -> Lifetime<'_> {
        Lifetime {
            id: &self.kid,
            created_at: self.created_at,
            activates_at: self.activates_at,
            retired_at: self.retired_at,
        }
    }
}

/// Where `key` (one of `keys`) stands at `now`.
#[must_use]
pub fn state_of(keys: &[StoredKey], key: &StoredKey, now: UnixTime) -> KeyState {
    rotation::standing_of(keys, key, now)
}

/// What a JWT signing key's retirement waits for: the longest JWT-SVID lifetime.
const JWT_KEY: rotation::Kind = rotation::Kind {
    name: "JWT signing key",
    rotate: "RotateJwtSigningKey",
    signed: "token",
    longest_signed: *JWT_SVID_TTL_RANGE.end(),
};

/// Whether `kid` may be retired at `now` ([`rotation::may_retire`]): never the key that signs;
/// a superseded key only once every token it signed has expired, unless `force`.
pub fn may_retire(keys: &[StoredKey], kid: &str, now: UnixTime, force: bool) -> Result<()> {
    rotation::may_retire(keys, kid, now, force, &JWT_KEY)
}

/// A replica's keys: the database's, reloaded.
#[derive(Debug)]
pub struct KeyRing {
    keys: Ring<JwtKeys>,
}

impl KeyRing {
    #[must_use]
    pub fn new(keys: JwtKeys) -> Self {
        Self {
            keys: Ring::new(keys),
        }
    }

    /// The keys in the database, a first one created if there is none (by whichever replica
    /// gets there first; a key another replica added at the same moment is published too).
    pub async fn load_or_create(store: &Store, now: UnixTime) -> Result<Self> {
        let stored = store.jwt_keys().await?;
        if !stored.iter().any(|key| key.retired_at.is_none()) {
            let (kid, key_pem) = JwtKeys::generate()?;
            let audit = AuditContext {
                actor: "agentd-control (JWT key bootstrap)".to_owned(),
                action: "CreateJwtSigningKey",
                now,
            };
            store.store_jwt_key(&audit, &kid, &key_pem, now).await?;
        }
        Ok(Self::new(JwtKeys::from_stored(&store.jwt_keys().await?)?))
    }

    /// The keys as last loaded.
    #[must_use]
    pub fn current(&self) -> Arc<JwtKeys> {
        self.keys.current()
    }

    /// Loads the keys again (a rotation or retirement made here or through another replica).
    pub async fn reload(&self, store: &Store) -> Result<()> {
        self.keys
            .replace(Arc::new(JwtKeys::from_stored(&store.jwt_keys().await?)?));
        Ok(())
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
            activates_at: created_at,
            retired_at: None,
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
        assert_eq!(keys.kid(300), new_kid);
        let published = keys.jwks()["keys"].as_array().unwrap();
        assert_eq!(published.len(), 2);
        let claims = serde_json::json!({ "sub": "spiffe://t/agent/a", "aud": ["x"], "exp": 4_000_000_000_u64 });
        let token = keys.sign(&claims, 300).unwrap();
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

    #[test]
    fn a_pending_key_is_published_before_it_signs_and_retirement_waits_for_its_tokens() {
        let (old_kid, old_pem) = JwtKeys::generate().unwrap();
        let (new_kid, new_pem) = JwtKeys::generate().unwrap();
        let old = stored(&old_kid, &old_pem, 100);
        let new = StoredKey {
            activates_at: 700,
            ..stored(&new_kid, &new_pem, 200)
        };
        let keys = JwtKeys::from_stored(&[old.clone(), new.clone()]).unwrap();
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 2);
        assert_eq!(
            keys.kid(699),
            old_kid,
            "the new key is published, not signing"
        );
        assert_eq!(keys.kid(700), new_kid);
        let all = [old.clone(), new.clone()];
        assert_eq!(state_of(&all, &new, 500), KeyState::Pending);
        assert_eq!(state_of(&all, &old, 500), KeyState::Active);
        assert_eq!(
            state_of(&all, &old, 800),
            KeyState::Superseded { since: 700 }
        );
        assert!(
            may_retire(&all, &old_kid, 500, true).is_err(),
            "the key that signs"
        );
        assert!(
            may_retire(&all, &new_kid, 500, false).is_ok(),
            "a pending key"
        );
        let day = *JWT_SVID_TTL_RANGE.end();
        let refused = may_retire(&all, &old_kid, 700 + day - 1, false).unwrap_err();
        assert!(
            refused.to_string().contains("may be valid until"),
            "{refused}"
        );
        assert!(may_retire(&all, &old_kid, 700 + day - 1, true).is_ok());
        assert!(may_retire(&all, &old_kid, 700 + day, false).is_ok());
        // A retired key is not published and never signs.
        let retired = StoredKey {
            retired_at: Some(900),
            key_pem: String::new(),
            ..old
        };
        let keys = JwtKeys::from_stored(&[retired.clone(), new]).unwrap();
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 1);
        assert_eq!(keys.kid(0), new_kid, "the only key left signs");
        assert!(JwtKeys::from_stored(&[retired]).is_err());
    }
}
