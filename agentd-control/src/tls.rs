//! The server's TLS, following the CAs as they rotate: the certificate it presents is signed
//! by the CA that signs now (issued again when another CA takes over), client certificates are
//! accepted from every trusted CA (a host whose certificate a superseded CA signed keeps
//! connecting until it renews), and both change without a restart or a dropped connection.
//! [`tls_incoming`] does the handshakes for the gRPC server (concurrently, each bounded by the
//! handshake deadline), so that tonic serves TLS streams whose peer certificates it reads as
//! it would its own.

use std::{
    fmt, io,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinSet};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
        client::danger::HandshakeSignatureValid,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
        server::{
            ClientHello, ResolvesServerCert, WebPkiClientVerifier,
            danger::{ClientCertVerified, ClientCertVerifier},
        },
        sign::CertifiedKey,
    },
    server::TlsStream,
};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};

use crate::{
    authorities::Authorities,
    ca::{IssuedCertificate, LEAF_LIFETIME_DAYS},
    clock,
    error::{Error, Result},
    listener::{BoundedConnection, BoundedIncoming},
};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str) -> impl FnOnce(rustls::Error) -> Error {
    let what = what.to_owned();
    move |err| Error::Certificate(format!("{what}: {err}"))
}

/// The certificate presented now.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

/// The client-certificate check over the CAs trusted now; client certificates are optional
/// (admins use bearer tokens; host calls without one are refused by the API).
struct CurrentRoots(RwLock<Arc<dyn ClientCertVerifier>>);

impl fmt::Debug for CurrentRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentRoots").finish_non_exhaustive()
    }
}

impl CurrentRoots {
    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ClientCertVerifier for CurrentRoots {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: they would change with the CAs, and an empty list means any CA (RFC 8446,
    // section 4.2.4); hosts send their one certificate either way.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

fn certified(issued: &IssuedCertificate) -> Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| Error::Certificate(format!("the server certificate: {err}")))?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|err| Error::Certificate(format!("the server key: {err}")))?;
    Ok(Arc::new(
        CertifiedKey::from_der(chain, key, &provider()).map_err(tls_error("the server key"))?,
    ))
}

fn verifier(authorities: &Authorities) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for pem in authorities.certificates() {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|err| Error::Certificate(format!("a CA certificate: {err}")))?;
        roots
            .add(der)
            .map_err(tls_error("a CA certificate as a root"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|err| Error::Certificate(format!("the client-certificate check: {err}")))
}

/// What the server's certificate and client check were made from, and when the certificate is
/// renewed (half its lifetime, as hosts renew theirs).
#[derive(Debug, Default)]
struct MadeFrom {
    signer: String,
    digest: String,
    renew_at: clock::UnixTime,
}

/// When a server certificate issued at `now` is issued again.
fn renewal(now: clock::UnixTime) -> clock::UnixTime {
    now + LEAF_LIFETIME_DAYS * clock::DAY / 2
}

/// The server's TLS: its names, the certificate presented and the CAs trusted, both
/// replaceable.
#[derive(Debug)]
pub struct ServerTls {
    names: Vec<String>,
    certificate: Arc<CurrentCertificate>,
    roots: Arc<CurrentRoots>,
    made_from: Mutex<MadeFrom>,
    /// The server certificate now (PEM), for tests and the OIDC endpoint's callers.
    issued: RwLock<IssuedCertificate>,
}

impl ServerTls {
    /// A certificate for `names` from the CA that signs at `now`, and the check of client
    /// certificates against every CA of `authorities`.
    pub fn new(names: &[String], authorities: &Authorities, now: clock::UnixTime) -> Result<Self> {
        if names.is_empty() {
            return Err(Error::invalid("tls names", "at least one name is required"));
        }
        let issued = authorities.signer(now).issue_server(names, now)?;
        Ok(Self {
            names: names.to_vec(),
            certificate: Arc::new(CurrentCertificate(RwLock::new(certified(&issued)?))),
            roots: Arc::new(CurrentRoots(RwLock::new(verifier(authorities)?))),
            made_from: Mutex::new(MadeFrom {
                signer: authorities.signer_id(now).to_owned(),
                digest: authorities.digest().to_owned(),
                renew_at: renewal(now),
            }),
            issued: RwLock::new(issued),
        })
    }

    /// Follows `authorities` at `now`: a new server certificate when another CA signs or the
    /// current one is half-way through its life, a new client check when the trusted CAs
    /// changed. Connections already open keep theirs.
    /// Returns whether anything changed.
    pub fn follow(&self, authorities: &Authorities, now: clock::UnixTime) -> Result<bool> {
        let mut made_from = self
            .made_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = false;
        if made_from.digest != authorities.digest() {
            *self
                .roots
                .0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = verifier(authorities)?;
            authorities.digest().clone_into(&mut made_from.digest);
            changed = true;
        }
        let signer = authorities.signer_id(now);
        if made_from.signer != signer || now >= made_from.renew_at {
            let issued = authorities.signer(now).issue_server(&self.names, now)?;
            *self
                .certificate
                .0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = certified(&issued)?;
            *self
                .issued
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = issued;
            signer.clone_into(&mut made_from.signer);
            made_from.renew_at = renewal(now);
            changed = true;
        }
        Ok(changed)
    }

    /// The server certificate presented now (PEM).
    #[must_use]
    pub fn certificate_pem(&self) -> String {
        self.issued
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cert_pem
            .clone()
    }

    fn config(&self, client_auth: bool, alpn: &[&[u8]]) -> Result<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error("TLS versions"))?;
        let builder = if client_auth {
            builder
                .with_client_cert_verifier(Arc::clone(&self.roots) as Arc<dyn ClientCertVerifier>)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&self.certificate) as _);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// The gRPC server's acceptor: HTTP/2, client certificates asked for.
    pub fn grpc_acceptor(&self) -> Result<TlsAcceptor> {
        Ok(TlsAcceptor::from(Arc::new(self.config(true, &[b"h2"])?)))
    }

    /// An HTTPS acceptor without client certificates (the OIDC discovery endpoint).
    pub fn https_acceptor(&self) -> Result<TlsAcceptor> {
        Ok(TlsAcceptor::from(Arc::new(
            self.config(false, &[b"http/1.1"])?,
        )))
    }
}

/// The connections of `incoming` after their TLS handshakes, which run concurrently (at most
/// as many as the connection cap lets in), each closed if it is not done within `deadline`.
/// A failed handshake is logged at debug level and dropped; the listener closes when the
/// stream is dropped.
pub fn tls_incoming(
    mut incoming: BoundedIncoming,
    acceptor: TlsAcceptor,
    deadline: Duration,
) -> impl Stream<Item = io::Result<TlsStream<BoundedConnection>>> {
    let (done, served) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut handshakes = JoinSet::new();
        loop {
            tokio::select! {
                () = done.closed() => return,
                accepted = incoming.next() => {
                    let Some(accepted) = accepted else { return };
                    match accepted {
                        Ok(connection) => {
                            let acceptor = acceptor.clone();
                            handshakes.spawn(async move {
                                tokio::time::timeout(deadline, acceptor.accept(connection)).await
                            });
                        }
                        Err(err) => {
                            if done.send(Err(err)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Some(finished) = handshakes.join_next(), if !handshakes.is_empty() => {
                    match finished {
                        Ok(Ok(Ok(stream))) => {
                            if done.send(Ok(stream)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Ok(Err(err))) => tracing::debug!(%err, "a TLS handshake failed"),
                        Ok(Err(_)) => tracing::debug!("a TLS handshake timed out"),
                        Err(err) => tracing::debug!(%err, "a TLS handshake task ended"),
                    }
                }
            }
        }
    });
    ReceiverStream::new(served)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{authorities::Generated, clock::DAY, store::authorities::StoredCa};

    fn one_ca(now: clock::UnixTime) -> Authorities {
        let generated = Generated::new(now).unwrap();
        Authorities::from_stored(&[StoredCa {
            id: generated.id.clone(),
            cert_pem: generated.cert_pem.clone(),
            key_pem: generated.key_pem.clone(),
            created_at: now,
            activates_at: now,
            retired_at: None,
        }])
        .unwrap()
    }

    #[test]
    fn the_server_certificate_is_issued_again_at_half_its_life() {
        let now = 1_800_000_000;
        let authorities = one_ca(now);
        let tls = ServerTls::new(&["localhost".to_owned()], &authorities, now).unwrap();
        let first = tls.certificate_pem();
        assert!(
            !tls.follow(&authorities, now + DAY).unwrap(),
            "nothing changed"
        );
        assert_eq!(tls.certificate_pem(), first);
        let half = now + LEAF_LIFETIME_DAYS * DAY / 2;
        assert!(
            tls.follow(&authorities, half).unwrap(),
            "renewed at half-life"
        );
        let renewed = tls.certificate_pem();
        assert_ne!(renewed, first);
        let (_, pem) = x509_parser::pem::parse_x509_pem(renewed.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(
            cert.validity().not_after.timestamp(),
            half + LEAF_LIFETIME_DAYS * DAY
        );
        assert!(!tls.follow(&authorities, half + DAY).unwrap());
    }
}
