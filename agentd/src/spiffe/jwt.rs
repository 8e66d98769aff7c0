//! Agents' JWT-SVIDs on this host: tokens the control plane signs (`SignAgentJwt`) for the
//! audiences a caller asks, kept until half their lifetime; and the JWT bundle
//! (`GetJwtBundle`) that `FetchJWTBundles` serves and `ValidateJWTSVID` checks tokens against.

use std::collections::BTreeMap;

use agentd_proto::v1 as proto;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// A token longer than this is refused before it is parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The most audiences one request names (the control plane's cap).
pub const MAX_AUDIENCES: usize = 16;

/// A JWT-SVID as the Workload API serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtSvid {
    pub spiffe_id: String,
    pub token: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
}

impl JwtSvid {
    /// The control plane's answer, issued at `now`.
    #[must_use]
    pub fn from_answer(answer: proto::SignAgentJwtResponse, now: i64) -> Self {
        Self {
            spiffe_id: answer.spiffe_id,
            token: answer.token,
            issued_at: now,
            expires_at: answer.expire_time.map_or(now, |at| at.seconds),
        }
    }

    /// When to ask for a new one: half-way through its lifetime.
    #[must_use]
    pub fn renew_at(&self) -> i64 {
        self.issued_at + (self.expires_at - self.issued_at) / 2
    }
}

/// The keys of one trust domain that verify its JWT-SVIDs.
#[derive(Clone)]
pub struct JwtBundle {
    /// `spiffe://<trust domain>`, the key of the bundle.
    pub trust_domain_id: String,
    /// The JWKS as the Workload API serves it: each key marked `"use": "jwt-svid"`, as the
    /// SPIFFE trust bundle format says.
    pub jwks: Vec<u8>,
    keys: BTreeMap<String, DecodingKey>,
}

impl PartialEq for JwtBundle {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain_id == other.trust_domain_id && self.jwks == other.jwks
    }
}

impl std::fmt::Debug for JwtBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtBundle")
            .field("trust_domain_id", &self.trust_domain_id)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a token is not a valid JWT-SVID here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the control plane's JWKS: {0}")]
    Bundle(String),
    #[error("the token is {0} bytes; at most {MAX_TOKEN_BYTES}")]
    TooLong(usize),
    #[error("the token's header: {0}")]
    Header(String),
    #[error("the token's key id {0:?} is not in the trust domain's bundle")]
    UnknownKey(String),
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token's subject {0:?} is not a SPIFFE ID of this trust domain")]
    Subject(String),
}

impl JwtBundle {
    /// The bundle from the control plane's answer.
    pub fn from_answer(answer: &proto::GetJwtBundleResponse) -> Result<Self, JwtError> {
        let bad = |why: String| JwtError::Bundle(why);
        let mut jwks: serde_json::Value =
            serde_json::from_str(&answer.jwks_json).map_err(|err| bad(err.to_string()))?;
        let list = jwks
            .get_mut("keys")
            .and_then(serde_json::Value::as_array_mut)
            .ok_or_else(|| bad("no \"keys\" array".into()))?;
        let mut keys = BTreeMap::new();
        for jwk in list.iter_mut() {
            let field = |name: &str| {
                jwk.get(name)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("a key without {name:?}")))
            };
            let (kid, x, y) = (field("kid")?, field("x")?, field("y")?);
            if field("kty")? != "EC" || field("crv")? != "P-256" {
                return Err(bad(format!("key {kid:?} is not an EC P-256 key")));
            }
            let key = DecodingKey::from_ec_components(&x, &y)
                .map_err(|err| bad(format!("key {kid:?}: {err}")))?;
            keys.insert(kid, key);
            jwk["use"] = "jwt-svid".into();
        }
        Ok(Self {
            trust_domain_id: format!("spiffe://{}", answer.trust_domain),
            jwks: serde_json::to_vec(&jwks).map_err(|err| bad(err.to_string()))?,
            keys,
        })
    }

    /// `token`'s claims if it is a JWT-SVID of this trust domain for `audience`: signed by a
    /// key of the bundle (ES256), not expired, its `aud` naming `audience`, its `sub` a SPIFFE
    /// ID under the trust domain.
    pub fn validate(&self, token: &str, audience: &str) -> Result<serde_json::Value, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong(token.len()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|err| JwtError::Header(err.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| JwtError::Header("no \"kid\"".into()))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| JwtError::UnknownKey(kid.clone()))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map_err(|err| JwtError::Invalid(err.to_string()))?
            .claims;
        let subject = claims["sub"].as_str().unwrap_or_default();
        let prefix = format!("{}/", self.trust_domain_id);
        if !subject.starts_with(&prefix) || subject.len() == prefix.len() {
            return Err(JwtError::Subject(subject.to_owned()));
        }
        Ok(claims)
    }
}

/// `value` as a protobuf `Struct` (the `claims` of `ValidateJWTSVIDResponse`); only an object
/// makes one, anything else gives an empty one.
#[must_use]
pub fn claims_struct(value: &serde_json::Value) -> prost_types::Struct {
    fn convert(value: &serde_json::Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match value {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(convert).collect(),
            }),
            serde_json::Value::Object(_) => Kind::StructValue(claims_struct(value)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    prost_types::Struct {
        fields: value
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .map(|(k, v)| (k.clone(), convert(v)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle and a token signed by its key, by hand (the control plane's signer lives in
    /// another crate): ES256 over `header.claims` with ring through jsonwebtoken.
    fn signed(claims: &serde_json::Value) -> (JwtBundle, String) {
        use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw();
        let b64 = |bytes: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        let jwks = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }]});
        let bundle = JwtBundle::from_answer(&proto::GetJwtBundleResponse {
            trust_domain: "t.example".into(),
            jwks_json: jwks.to_string(),
        })
        .unwrap();
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
        )
        .unwrap();
        (bundle, token)
    }

    fn far_future() -> i64 {
        4_000_000_000
    }

    #[test]
    fn a_token_of_the_trust_domain_for_the_audience_validates_and_others_do_not() {
        let claims = serde_json::json!({
            "sub": "spiffe://t.example/agent/a", "aud": ["api"], "exp": far_future(),
        });
        let (bundle, token) = signed(&claims);
        assert!(String::from_utf8_lossy(&bundle.jwks).contains("\"use\":\"jwt-svid\""));
        let got = bundle.validate(&token, "api").unwrap();
        assert_eq!(got["sub"], "spiffe://t.example/agent/a");
        assert!(matches!(
            bundle.validate(&token, "other"),
            Err(JwtError::Invalid(_))
        ));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 3, 'A');
        assert!(bundle.validate(&tampered, "api").is_err());
        assert!(matches!(
            bundle.validate(&"a".repeat(MAX_TOKEN_BYTES + 1), "api"),
            Err(JwtError::TooLong(_))
        ));
        let (_, expired) = signed(&serde_json::json!({
            "sub": "spiffe://t.example/agent/a", "aud": ["api"], "exp": 1_000,
        }));
        assert!(
            bundle.validate(&expired, "api").is_err(),
            "another key, and expired"
        );
    }

    #[test]
    fn a_subject_outside_the_trust_domain_is_refused() {
        for subject in [
            "spiffe://other.example/agent/a",
            "spiffe://t.example/",
            "alice",
        ] {
            let (bundle, token) = signed(&serde_json::json!({
                "sub": subject, "aud": ["api"], "exp": far_future(),
            }));
            assert_eq!(
                bundle.validate(&token, "api"),
                Err(JwtError::Subject(subject.into())),
                "{subject}"
            );
        }
    }

    #[test]
    fn claims_become_a_struct() {
        let claims =
            serde_json::json!({ "aud": ["a", "b"], "exp": 5, "sub": "s", "x": { "y": true } });
        let converted = claims_struct(&claims);
        assert_eq!(converted.fields.len(), 4);
        assert!(matches!(
            converted.fields["sub"].kind,
            Some(prost_types::value::Kind::StringValue(ref s)) if s == "s"
        ));
    }
}
