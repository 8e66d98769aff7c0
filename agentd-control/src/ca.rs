//! One control-plane certificate authority: issues the server's certificate, the hosts'
//! client certificates and agents' X.509-SVIDs. The CAs live in the database, so that every
//! replica signs with the same one; `crate::authorities` says which signs and which are
//! trusted.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::{
    clock::{DAY, UnixTime},
    error::{Error, Result},
};

/// How long server certificates are valid (hosts' certificates: `CredentialOptions`).
pub const LEAF_LIFETIME_DAYS: i64 = 90;
const CA_LIFETIME_DAYS: i64 = 3650;

pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.to_owned();
    move |err| Error::Certificate(format!("{what}: {err}"))
}

fn datetime(at: UnixTime) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(at)
        .map_err(|err| Error::Certificate(format!("time {at} out of range: {err}")))
}

fn serial() -> SerialNumber {
    // 16 random bytes, positive.
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertificateAuthority {
    /// Creates a new CA valid from `now` (tests use this for a "wrong CA").
    pub fn generate(now: UnixTime) -> Result<(Self, String)> {
        Self::generate_named(now, "agentd control-plane CA")
    }

    /// Creates a new CA valid from `now` whose subject's common name is `common_name`.
    pub fn generate_named(now: UnixTime, common_name: &str) -> Result<(Self, String)> {
        let key = KeyPair::generate().map_err(cert_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = datetime(now - DAY)?;
        params.not_after = datetime(now + CA_LIFETIME_DAYS * DAY)?;
        params.serial_number = Some(serial());
        let cert = params
            .self_signed(&key)
            .map_err(cert_error("signing the CA certificate"))?;
        let key_pem = key.serialize_pem();
        let ca = Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(cert_error("reading the CA certificate"))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn leaf_params(
        common_name: &str,
        sans: Vec<SanType>,
        not_before: UnixTime,
        not_after: UnixTime,
    ) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = datetime(not_before)?;
        params.not_after = datetime(not_after)?;
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// Signs a host's CSR: the certificate names the host id (CN and a `urn:agentd:host:` URI),
    /// whatever the CSR asked for, valid from a minute before `now` until `not_after`. Returns
    /// the PEM and the serial number.
    pub fn sign_host_csr(
        &self,
        csr_pem: &str,
        host_id: &str,
        now: UnixTime,
        not_after: UnixTime,
    ) -> Result<(String, String)> {
        let uri = format!("urn:agentd:host:{host_id}")
            .try_into()
            .map_err(cert_error("host URI"))?;
        let mut params = Self::leaf_params(host_id, vec![SanType::URI(uri)], now - 60, not_after)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign_csr(csr_pem, &params, "signing the host certificate")
    }

    /// Signs the key of the CSR `csr_pem` with `params`, whatever else the CSR asked for.
    /// Returns the PEM and the serial number (hex).
    fn sign_csr(
        &self,
        csr_pem: &str,
        params: &CertificateParams,
        what: &str,
    ) -> Result<(String, String)> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|err| {
            Error::invalid("csr_pem", format!("is not a valid PKCS#10 CSR: {err}"))
        })?;
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default();
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(cert_error(what))?;
        Ok((cert.pem(), serial))
    }

    /// Signs an agent's X.509-SVID from its CSR: the certificate's one URI SAN is
    /// `spiffe_id`, whatever the CSR asked for; it has no subject common name, so it can never
    /// pass for a host certificate (`host_id_of`); it is a leaf for TLS on both ends. Returns
    /// the PEM and the serial number.
    pub fn sign_svid_csr(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        not_before: UnixTime,
        not_after: UnixTime,
    ) -> Result<(String, String)> {
        let uri = spiffe_id
            .to_owned()
            .try_into()
            .map_err(cert_error("SPIFFE ID"))?;
        let mut params = Self::leaf_params("", vec![SanType::URI(uri)], not_before, not_after)?;
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_csr(csr_pem, &params, "signing the X.509-SVID")
    }

    /// Issues a client certificate for `common_name` with a fresh key, valid between the given
    /// times (tests use it for expired certificates; hosts normally send a CSR).
    pub fn issue_client(
        &self,
        common_name: &str,
        not_before: UnixTime,
        not_after: UnixTime,
    ) -> Result<IssuedCertificate> {
        let key = KeyPair::generate().map_err(cert_error("generating a key"))?;
        let mut params = Self::leaf_params(common_name, Vec::new(), not_before, not_after)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error("signing a client certificate"))?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the server's certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String], now: UnixTime) -> Result<IssuedCertificate> {
        let key = KeyPair::generate().map_err(cert_error("generating the server key"))?;
        let sans = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(cert_error("server name")),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut params = Self::leaf_params(
            names.first().map_or("agentd-control", String::as_str),
            sans,
            now - 60,
            now + LEAF_LIFETIME_DAYS * DAY,
        )?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error("signing the server certificate"))?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The host id a verified client certificate names (its subject CN).
pub fn host_id_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}
