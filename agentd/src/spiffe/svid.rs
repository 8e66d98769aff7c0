//! An agent's X.509-SVID on this host: the key is generated here and never leaves the host;
//! the control plane signs a CSR for it (`HostService.SignAgentSvid`, Conditional Access at
//! issuance). An SVID is renewed at half its lifetime.

use agentd_proto::v1 as proto;

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("generating the agent's key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the control plane's answer: {0}")]
    Answer(String),
}

/// A key and the CSR that asks for it to be certified.
pub struct Request {
    key: rcgen::KeyPair,
    pub csr_pem: String,
}

/// A fresh ECDSA P-256 key and a CSR for it (its subject is ignored by the control plane,
/// which names the agent's SPIFFE ID itself).
pub fn new_request() -> Result<Request, SvidError> {
    let key = rcgen::KeyPair::generate()?;
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    Ok(Request { key, csr_pem })
}

/// An X.509-SVID as the Workload API serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Svid {
    pub spiffe_id: String,
    /// `spiffe://<trust domain>`, the key of the bundle.
    pub trust_domain_id: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The trust bundle: DER certificates concatenated.
    pub bundle_der: Vec<u8>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Svid {
    /// The signed answer to `request`.
    pub fn complete(
        request: &Request,
        answer: &proto::SignAgentSvidResponse,
    ) -> Result<Self, SvidError> {
        let mut certs = der_certificates(&answer.certificate_pem)?;
        if certs.len() != 1 {
            return Err(SvidError::Answer(format!(
                "certificate_pem holds {} certificates; one was expected",
                certs.len()
            )));
        }
        let cert_der = certs.remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|err| SvidError::Answer(format!("certificate_pem: {err}")))?;
        let validity = cert.validity();
        let bundle_der = der_certificates(&answer.bundle_pem)?.concat();
        if bundle_der.is_empty() {
            return Err(SvidError::Answer("bundle_pem holds no certificate".into()));
        }
        Ok(Self {
            spiffe_id: answer.spiffe_id.clone(),
            trust_domain_id: format!("spiffe://{}", answer.trust_domain),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            cert_der,
            key_der: request.key.serialize_der(),
            bundle_der,
        })
    }

    /// When to renew: half-way through the lifetime (Unix seconds).
    #[must_use]
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) / 2
    }
}

/// Every `CERTIFICATE` block of `pem`, DER.
pub(crate) fn der_certificates(pem: &str) -> Result<Vec<Vec<u8>>, SvidError> {
    let mut certs = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|err| SvidError::Answer(format!("PEM: {err}")))?;
        if block.label == "CERTIFICATE" {
            certs.push(block.contents);
        }
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_csr_for_a_fresh_key_and_renewal_is_at_half_life() {
        let first = new_request().unwrap();
        let second = new_request().unwrap();
        assert!(
            first
                .csr_pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        assert_ne!(first.csr_pem, second.csr_pem, "a key per request");
        let svid = Svid {
            spiffe_id: "spiffe://t/agent/a".into(),
            trust_domain_id: "spiffe://t".into(),
            cert_der: Vec::new(),
            key_der: Vec::new(),
            bundle_der: Vec::new(),
            not_before: 1_000,
            not_after: 4_600,
        };
        assert_eq!(svid.renew_at(), 2_800);
    }

    #[test]
    fn an_answer_without_exactly_one_certificate_is_refused() {
        let request = new_request().unwrap();
        let answer = proto::SignAgentSvidResponse {
            certificate_pem: String::new(),
            ..Default::default()
        };
        let err = Svid::complete(&request, &answer).unwrap_err();
        assert!(err.to_string().contains("0 certificates"), "{err}");
    }
}
