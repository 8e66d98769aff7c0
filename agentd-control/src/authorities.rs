//! The control plane's certificate authorities, rotated with an overlap as JWT signing keys
//! are (`crate::rotation`): every CA that is not retired is in the trust bundle (what hosts
//! verify the server with, what SVIDs chain to, what the server accepts client certificates
//! from), and the newest activated one signs the server certificate, host certificates and
//! X.509-SVIDs. [`CaRing`] is what a replica holds, reloaded from the database so that a
//! rotation made through another replica reaches it.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::{
    ca::CertificateAuthority,
    clock::UnixTime,
    credentials::X509_SVID_TTL_RANGE,
    error::{Error, Result},
    rotation::{self, Lifetime, Ring, Rotates},
    store::{
        AuditContext, Store,
        authorities::{NewCa, StoredCa},
    },
};

/// The most CAs trusted at once: a rotation beyond it is refused until one is retired.
pub const MAX_TRUSTED: usize = 4;

impl Rotates for StoredCa {
    fn lifetime(&self) -> Lifetime<'_> {
        Lifetime {
            id: &self.id,
            created_at: self.created_at,
            activates_at: self.activates_at,
            retired_at: self.retired_at,
        }
    }
}

/// What a CA's retirement waits for: the longest lifetime of a certificate it signs, a host
/// certificate's (`host_cert_ttl`, this control plane's setting) or an X.509-SVID's.
#[must_use]
pub fn retirement_rule(host_cert_ttl: UnixTime) -> rotation::Kind {
    rotation::Kind {
        name: "certificate authority",
        rotate: "RotateCertificateAuthority",
        signed: "certificate",
        longest_signed: host_cert_ttl.max(*X509_SVID_TTL_RANGE.end()),
    }
}

/// A new CA to store: a random id, its certificate and key.
pub struct Generated {
    pub id: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Generated {
    /// A new CA, its subject naming its id (`agentd control-plane CA 1f0c...`).
    pub fn new(now: UnixTime) -> Result<Self> {
        let id = hex::encode(&uuid::Uuid::new_v4().as_bytes()[..8]);
        let (ca, key_pem) =
            CertificateAuthority::generate_named(now, &format!("agentd control-plane CA {id}"))?;
        Ok(Self {
            id,
            cert_pem: ca.cert_pem().to_owned(),
            key_pem,
        })
    }

    #[must_use]
    pub fn to_store(&self, activates_at: UnixTime) -> NewCa<'_> {
        NewCa {
            id: &self.id,
            cert_pem: &self.cert_pem,
            key_pem: &self.key_pem,
            activates_at,
        }
    }
}

/// The SHA-256 of a certificate's DER (of its first certificate, for PEM), hex: what `agentctl
/// ca list` shows and `openssl x509 -fingerprint -sha256` prints (without colons).
#[must_use]
pub fn fingerprint(cert_pem: &str) -> String {
    match x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) {
        Ok((_, pem)) => hex::encode(Sha256::digest(&pem.contents)),
        Err(_) => String::new(),
    }
}

/// One CA that may sign.
struct Signer {
    id: String,
    activates_at: UnixTime,
    created_at: UnixTime,
    ca: CertificateAuthority,
}

/// The trusted CAs, each with when it signs.
pub struct Authorities {
    /// In succession (oldest activation first).
    signers: Vec<Signer>,
    /// Every trusted CA's certificate, PEM, in succession.
    bundle_pem: String,
    /// The SHA-256 of `bundle_pem`, hex: how a host tells that its bundle is current.
    digest: String,
}

impl std::fmt::Debug for Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorities")
            .field(
                "ids",
                &self.signers.iter().map(|s| &s.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Authorities {
    /// The CAs of `stored` that are not retired.
    pub fn from_stored(stored: &[StoredCa]) -> Result<Self> {
        let mut live: Vec<&StoredCa> = stored.iter().filter(|c| c.retired_at.is_none()).collect();
        live.sort_by_key(|c| (c.activates_at, c.created_at, c.id.clone()));
        let mut signers = Vec::with_capacity(live.len());
        let mut bundle_pem = String::new();
        for entry in live {
            let ca = CertificateAuthority::from_pem(&entry.cert_pem, &entry.key_pem)?;
            bundle_pem.push_str(entry.cert_pem.trim_end());
            bundle_pem.push('\n');
            signers.push(Signer {
                id: entry.id.clone(),
                activates_at: entry.activates_at,
                created_at: entry.created_at,
                ca,
            });
        }
        if signers.is_empty() {
            return Err(Error::Certificate(
                "no certificate authority is stored that is not retired".into(),
            ));
        }
        let digest = hex::encode(Sha256::digest(bundle_pem.as_bytes()));
        Ok(Self {
            signers,
            bundle_pem,
            digest,
        })
    }

    fn signer_entry(&self, now: UnixTime) -> &Signer {
        self.signers
            .iter()
            .rev()
            .find(|signer| signer.activates_at <= now)
            .unwrap_or(&self.signers[0])
    }

    /// The CA that signs at `now`: the newest activated, else (every CA still waiting) the
    /// first to activate.
    #[must_use]
    pub fn signer(&self, now: UnixTime) -> &CertificateAuthority {
        &self.signer_entry(now).ca
    }

    /// The id of the CA that signs at `now`.
    #[must_use]
    pub fn signer_id(&self, now: UnixTime) -> &str {
        &self.signer_entry(now).id
    }

    /// Every trusted CA's certificate, PEM.
    #[must_use]
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The SHA-256 of [`Authorities::bundle_pem`], hex.
    #[must_use]
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The trusted CAs' certificates, one PEM each.
    pub fn certificates(&self) -> impl Iterator<Item = &str> {
        self.signers.iter().map(|signer| signer.ca.cert_pem())
    }

    /// When the first CA was created (0 for one from before rotations).
    #[must_use]
    pub fn oldest(&self) -> UnixTime {
        self.signers.iter().map(|s| s.created_at).min().unwrap_or(0)
    }
}

/// A replica's CAs: the database's, reloaded.
#[derive(Debug)]
pub struct CaRing {
    current: Ring<Authorities>,
}

impl CaRing {
    #[must_use]
    pub fn new(authorities: Authorities) -> Self {
        Self {
            current: Ring::new(authorities),
        }
    }

    /// The CAs in the database, a first one created if there is none (by whichever replica
    /// gets there first: one that finds a CA stored meanwhile stores none).
    pub async fn load_or_create(store: &Store, now: UnixTime) -> Result<Self> {
        let stored = store.certificate_authorities().await?;
        if !stored.iter().any(|ca| ca.retired_at.is_none()) {
            let generated = Generated::new(now)?;
            let audit = AuditContext {
                actor: "agentd-control (CA bootstrap)".to_owned(),
                action: "CreateCertificateAuthority",
                now,
            };
            store
                .store_ca(&audit, generated.to_store(now), |all| {
                    Ok(!all.iter().any(|ca| ca.retired_at.is_none()))
                })
                .await?;
        }
        Ok(Self::new(Authorities::from_stored(
            &store.certificate_authorities().await?,
        )?))
    }

    /// The CAs as last loaded.
    #[must_use]
    pub fn current(&self) -> Arc<Authorities> {
        self.current.current()
    }

    /// Loads the CAs again (a rotation or retirement made here or through another replica).
    pub async fn reload(&self, store: &Store) -> Result<Arc<Authorities>> {
        let authorities = Arc::new(Authorities::from_stored(
            &store.certificate_authorities().await?,
        )?);
        self.current.replace(Arc::clone(&authorities));
        Ok(authorities)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::DAY;

    fn stored(generated: &Generated, created_at: UnixTime, activates_at: UnixTime) -> StoredCa {
        StoredCa {
            id: generated.id.clone(),
            cert_pem: generated.cert_pem.clone(),
            key_pem: generated.key_pem.clone(),
            created_at,
            activates_at,
            retired_at: None,
        }
    }

    #[test]
    fn a_pending_ca_is_trusted_before_it_signs_and_a_retired_one_is_not_trusted() {
        let (old, new) = (Generated::new(0).unwrap(), Generated::new(0).unwrap());
        let all = vec![stored(&old, 0, 0), stored(&new, 500, 700)];
        let authorities = Authorities::from_stored(&all).unwrap();
        assert_eq!(authorities.certificates().count(), 2);
        assert!(authorities.bundle_pem().contains(old.cert_pem.trim_end()));
        assert!(authorities.bundle_pem().contains(new.cert_pem.trim_end()));
        assert_eq!(authorities.signer_id(600), old.id);
        assert_eq!(authorities.signer(600).cert_pem(), old.cert_pem);
        assert_eq!(authorities.signer_id(700), new.id);

        let rule = retirement_rule(3600);
        assert_eq!(
            rule.longest_signed,
            7 * DAY,
            "an SVID may live longer than a host cert"
        );
        assert!(
            rotation::may_retire(&all, &new.id, 800, false, &rule).is_err(),
            "the CA that signs is never retired"
        );
        let refused = rotation::may_retire(&all, &old.id, 800, false, &rule).unwrap_err();
        assert!(refused.to_string().contains("certificate"), "{refused}");
        assert!(rotation::may_retire(&all, &old.id, 700 + 7 * DAY, false, &rule).is_ok());
        assert!(rotation::may_retire(&all, &old.id, 800, true, &rule).is_ok());

        let mut retired = all.clone();
        retired[0].retired_at = Some(900);
        retired[0].key_pem = String::new();
        let after = Authorities::from_stored(&retired).unwrap();
        assert_eq!(after.certificates().count(), 1);
        assert!(!after.bundle_pem().contains(old.cert_pem.trim_end()));
        assert_ne!(after.digest(), authorities.digest());
    }
}
