//! Agent credentials on standard protocols: the trust domain, each agent's SPIFFE ID, and how
//! long an X.509-SVID lives. The CA signs (`ca`); the API checks who may hold one
//! (`api::credential`).

use std::{fmt, str::FromStr};

/// The default trust domain, for a control plane started without `--trust-domain`.
pub const DEFAULT_TRUST_DOMAIN: &str = "agentd.internal";
/// How long an X.509-SVID is valid unless configured: an hour, as SPIRE's default.
pub const DEFAULT_X509_SVID_TTL: i64 = 3600;
/// The shortest and longest X.509-SVID lifetimes accepted (hosts rotate at half-life).
pub const X509_SVID_TTL_RANGE: std::ops::RangeInclusive<i64> = 120..=7 * 24 * 3600;
/// How long a JWT-SVID is valid unless configured: five minutes, as SPIRE's default.
pub const DEFAULT_JWT_SVID_TTL: i64 = 300;
/// The shortest and longest JWT-SVID lifetimes accepted.
pub const JWT_SVID_TTL_RANGE: std::ops::RangeInclusive<i64> = 30..=24 * 3600;

/// How long a host's mTLS client certificate is valid unless configured: 90 days. Hosts renew
/// it at half-life (`HostService.RenewHostCertificate`).
pub const DEFAULT_HOST_CERT_TTL: i64 = 90 * 24 * 3600;
/// The shortest and longest host certificate lifetimes accepted.
pub const HOST_CERT_TTL_RANGE: std::ops::RangeInclusive<i64> = 60..=365 * 24 * 3600;

/// A SPIFFE trust domain name: lowercase letters, digits, `.`, `-` and `_`, at most 255
/// characters (the SPIFFE ID specification, section 2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDomain(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustDomainError {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters long; at most 255")]
    TooLong(usize),
    #[error(
        "holds {0:?}: a trust domain is lowercase letters, digits, '.', '-' and '_' (give the \
         name, e.g. example.org, not a spiffe:// URI)"
    )]
    Character(char),
}

impl FromStr for TrustDomain {
    type Err = TrustDomainError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.is_empty() {
            return Err(TrustDomainError::Empty);
        }
        if name.len() > 255 {
            return Err(TrustDomainError::TooLong(name.len()));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(*c)))
        {
            return Err(TrustDomainError::Character(bad));
        }
        Ok(Self(name.to_owned()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TrustDomain {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An agent's SPIFFE ID, by its registry id, which never changes (a rename keeps it).
    #[must_use]
    pub fn agent_id(&self, agent_id: &str) -> String {
        format!("spiffe://{}/agent/{agent_id}", self.0)
    }
}

/// The control plane's credential settings (`agentd-control serve --trust-domain`,
/// `--x509-svid-ttl`, `--jwt-svid-ttl`, `--jwt-issuer`, `--host-cert-ttl`).
#[derive(Clone, Debug)]
pub struct CredentialOptions {
    pub trust_domain: TrustDomain,
    /// Seconds, within [`X509_SVID_TTL_RANGE`].
    pub x509_svid_ttl: i64,
    /// Seconds, within [`JWT_SVID_TTL_RANGE`].
    pub jwt_svid_ttl: i64,
    /// The `iss` of JWT-SVIDs and the issuer of the OIDC discovery document (an `https://`
    /// URL); `None`: tokens carry no `iss`.
    pub jwt_issuer: Option<String>,
    /// Seconds, within [`HOST_CERT_TTL_RANGE`]: hosts' mTLS client certificates.
    pub host_cert_ttl: i64,
}

impl Default for CredentialOptions {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain(DEFAULT_TRUST_DOMAIN.to_owned()),
            x509_svid_ttl: DEFAULT_X509_SVID_TTL,
            jwt_svid_ttl: DEFAULT_JWT_SVID_TTL,
            jwt_issuer: None,
            host_cert_ttl: DEFAULT_HOST_CERT_TTL,
        }
    }
}

/// Checks an OIDC issuer URL: `https://`, a host, no query or fragment, no trailing `/` (the
/// discovery document sits at `<issuer>/.well-known/openid-configuration`).
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    let Some(rest) = issuer.strip_prefix("https://") else {
        return Err(format!("{issuer:?} must start with https://"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{issuer:?} names no host"));
    }
    if issuer.len() > 512 {
        return Err(format!("is {} characters; at most 512", issuer.len()));
    }
    if let Some(bad) = issuer
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
    {
        return Err(format!(
            "{issuer:?} holds {bad:?}: no query, fragment or spaces"
        ));
    }
    if issuer.ends_with('/') {
        return Err(format!("{issuer:?} must not end with '/'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trust_domain_is_a_lowercase_name_and_an_agent_id_sits_under_it() {
        let domain: TrustDomain = "prod.example-1_a".parse().unwrap();
        assert_eq!(
            domain.agent_id("2c0911c8-0000-4000-8000-000000000000"),
            "spiffe://prod.example-1_a/agent/2c0911c8-0000-4000-8000-000000000000"
        );
        assert_eq!("".parse::<TrustDomain>(), Err(TrustDomainError::Empty));
        assert_eq!(
            "Example.org".parse::<TrustDomain>(),
            Err(TrustDomainError::Character('E'))
        );
        assert_eq!(
            "spiffe://example.org".parse::<TrustDomain>(),
            Err(TrustDomainError::Character(':'))
        );
        assert_eq!(
            "a".repeat(256).parse::<TrustDomain>(),
            Err(TrustDomainError::TooLong(256))
        );
        assert!(CredentialOptions::default().x509_svid_ttl == DEFAULT_X509_SVID_TTL);
    }

    #[test]
    fn an_issuer_is_an_https_url_without_query_fragment_or_trailing_slash() {
        assert_eq!(check_issuer("https://cp.example:8443"), Ok(()));
        assert_eq!(check_issuer("https://cp.example/tenant"), Ok(()));
        for bad in [
            "http://cp.example",
            "https://",
            "https:///x",
            "https://cp.example/",
            "https://cp.example?x=1",
            "https://cp.example#f",
            "https://cp example",
        ] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }
}
