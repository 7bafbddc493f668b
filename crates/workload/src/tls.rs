//! Mutual TLS with X509-SVIDs (draft-ietf-wimse-mutual-tls, SPECS §6): TLS 1.3 only, the
//! aws-lc-rs provider.
//!
//! - [`SvidVerifier`] is both the server's client-certificate verifier and the client's
//!   server-certificate verifier: it reads the peer's one URI SAN, takes the X.509
//!   authorities of *that* identifier's trust domain from the current bundles, verifies the
//!   chain with `wimse_core::x509::verify_svid_for_trust_domain` (the one place for that
//!   decision), and applies a [`PeerAllowList`]. The identifier's host part is a trust
//!   domain, not a hostname; as a client's verifier it can also check the name the server
//!   was reached by against the SVID's DNS SANs ([`ServerNames::Checked`], RFC 9525 §6.3,
//!   which the mutual-TLS and HTTP-signature drafts require of a client that reached its
//!   server by DNS name). A server reached by IP address is accepted by its identifier,
//!   so a client is configured with the peer IDs it expects.
//! - [`SvidResolver`] serves the *current* SVID on each handshake, so a rotated
//!   certificate is used from the next connection on without a restart.
//! - [`server_config_from_pem`] is the other kind of listener: TLS with an ordinary
//!   certificate for clients outside the trust domain (the gateway's), no client
//!   certificates.
//! - [`MtlsConnector`] is the client side for hyper-util's client: it opens an mTLS
//!   connection for any URI and names the verified server ([`MtlsServer`]) in each
//!   response's extensions (the outbound sidecar's `--proof mtls`).

use crate::authn::PeerAllowList;
use crate::source::CredentialSource;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use std::sync::{Arc, Mutex};
use wimse_core::WorkloadId;
use wimse_core::x509::{Certificate, verify_dns_name, verify_svid_for_trust_domain};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A certificate or key file is not what it should be.
    #[error("tls configuration: {0}")]
    Pem(&'static str),
    /// A certificate or key file could not be read.
    #[error("tls configuration: {0}")]
    File(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The SPIFFE ID of a certificate: its one URI SAN.
pub fn spiffe_id_of(der: &[u8]) -> Result<WorkloadId, String> {
    let cert = Certificate::from_der(der.to_vec()).map_err(|e| e.to_string())?;
    match cert.uri_sans().as_slice() {
        [one] => WorkloadId::parse(one).map_err(|e| e.to_string()),
        _ => Err("peer certificate must have exactly one URI SAN".into()),
    }
}

/// Verifies a peer's X509-SVID chain against its trust domain's bundle (see the module doc).
#[derive(Debug)]
pub struct SvidVerifier {
    source: CredentialSource,
    allow: PeerAllowList,
    provider: Arc<CryptoProvider>,
    /// As a server's client verifier: whether a client must present a certificate.
    clients: ClientCerts,
    /// As a client's server verifier: whether the server must name the DNS name it was
    /// reached by.
    names: ServerNames,
}

/// Whether a client checks the name it reached a server by against the server's
/// X509-SVID, on top of the chain and the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerNames {
    /// RFC 9525 §6.3 hostname validation for a server reached by DNS name: the SVID must
    /// hold that name as a DNS SAN (SPECS §5 and §6 make it a MUST for WIMSE clients). A
    /// server reached by IP address is accepted by its identifier alone.
    Checked,
    /// The identifier alone, whatever the server was reached by (SPIFFE's rule for
    /// SPIFFE-TLS): the allow-list should then name the server expected.
    #[default]
    Unchecked,
}

impl SvidVerifier {
    /// A verifier with bundles from `source` accepting the peers `allow` lists.
    pub fn new(source: CredentialSource, allow: PeerAllowList) -> Self {
        SvidVerifier {
            source,
            allow,
            provider: provider(),
            clients: ClientCerts::Required,
            names: ServerNames::Unchecked,
        }
    }

    /// The same verifier, checking as a client the name each server was reached by as
    /// `names` says.
    #[must_use]
    pub fn with_server_names(mut self, names: ServerNames) -> Self {
        self.names = names;
        self
    }

    /// The same verifier, letting clients that present no certificate connect as
    /// `clients` says (one that presents one is still verified).
    #[must_use]
    pub fn with_clients(mut self, clients: ClientCerts) -> Self {
        self.clients = clients;
        self
    }

    /// Verifies a presented chain; the peer's ID.
    pub fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<WorkloadId, rustls::Error> {
        self.verify_chain(end_entity, intermediates, now)
            .map(|(id, _)| id)
    }

    /// [`SvidVerifier::verify_peer`], also handing back the leaf it parsed.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(WorkloadId, Certificate), rustls::Error> {
        let fail = |reason: String| rustls::Error::General(format!("peer svid refused: {reason}"));
        let claimed = spiffe_id_of(end_entity).map_err(fail)?;
        let creds = self.source.current();
        let bundle = creds
            .x509_bundles
            .get(claimed.trust_domain())
            .ok_or_else(|| {
                fail(format!(
                    "trust domain `{}` is not trusted",
                    claimed.trust_domain()
                ))
            })?;
        let roots = bundle
            .x509_authorities
            .iter()
            .map(|der| Certificate::from_der(der.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        let mut chain =
            vec![Certificate::from_der(end_entity.to_vec()).map_err(|e| fail(e.to_string()))?];
        for der in intermediates {
            chain.push(Certificate::from_der(der.to_vec()).map_err(|e| fail(e.to_string()))?);
        }
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let id = verify_svid_for_trust_domain(&chain, claimed.trust_domain(), &roots, now)
            .map_err(|e| fail(e.to_string()))?;
        if !self.allow.allows(&id) {
            return Err(fail(format!("`{id}` is not on the allow-list")));
        }
        let leaf = chain
            .into_iter()
            .next()
            .ok_or_else(|| fail("empty chain".into()))?;
        Ok((id, leaf))
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ClientCertVerifier for SvidVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.clients == ClientCerts::Required
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify_peer(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for SvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (id, leaf) = self.verify_chain(end_entity, intermediates, now)?;
        if let (ServerNames::Checked, ServerName::DnsName(name)) = (self.names, server_name) {
            verify_dns_name(&leaf, name.as_ref()).map_err(|e| {
                rustls::Error::General(format!("server svid of `{id}` refused: {e}"))
            })?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Serves the source's current X509-SVID, rebuilt once per credential generation.
#[derive(Debug)]
pub struct SvidResolver {
    source: CredentialSource,
    provider: Arc<CryptoProvider>,
    cached: Mutex<Option<(u64, Arc<CertifiedKey>)>>,
}

impl SvidResolver {
    /// A resolver over `source`.
    pub fn new(source: CredentialSource) -> Self {
        SvidResolver {
            source,
            provider: provider(),
            cached: Mutex::new(None),
        }
    }

    /// The current certified key, if the source has an SVID.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let creds = self.source.current();
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((generation, key)) = cached.as_ref()
            && *generation == creds.generation
        {
            return Some(Arc::clone(key));
        }
        let svid = creds.x509.as_ref()?;
        let der = svid.key.to_pkcs8_der().ok()?;
        let key = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec())))
            .ok()?;
        let chain = svid
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.der().to_vec()))
            .collect();
        let certified = Arc::new(CertifiedKey::new(chain, key));
        *cached = Some((creds.generation, Arc::clone(&certified)));
        Some(certified)
    }
}

impl rustls::server::ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.source.current().x509.is_some()
    }
}

/// Whether a server asks its clients for an X509-SVID or requires one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCerts {
    /// A client without a certificate cannot connect: mutual TLS only.
    #[default]
    Required,
    /// A client may connect without one, over TLS that authenticates the server only;
    /// it must then prove itself in each request (a WIT with a WPT or a message
    /// signature, which SPECS §3.1 requires to travel over server-authenticated TLS).
    /// A certificate a client does present is verified as with `Required`.
    Optional,
}

/// A TLS 1.3 server configuration requiring an X509-SVID client certificate.
pub fn server_config(
    source: &CredentialSource,
    allow: PeerAllowList,
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(source, allow, ClientCerts::Required)
}

/// A TLS 1.3 server configuration presenting this workload's X509-SVID and asking its
/// clients for theirs as `clients` says; a presented one is accepted as `allow` says.
pub fn server_config_with(
    source: &CredentialSource,
    allow: PeerAllowList,
    clients: ClientCerts,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = SvidVerifier::new(source.clone(), allow).with_clients(clients);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SvidResolver::new(source.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    no_server_resumption(&mut config);
    Ok(config)
}

/// Turns session resumption off on a server: a resumed TLS 1.3 session restores the
/// client's certificate from the first handshake without running the verifier again, so
/// an SVID that expired or a CA dropped from the bundle since would stay accepted for the
/// ticket's life. Every connection is a full handshake instead.
fn no_server_resumption(config: &mut rustls::ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// A TLS 1.3 client configuration presenting this workload's X509-SVID and accepting
/// servers `allow` lists, by their identifier alone ([`ServerNames::Unchecked`]).
pub fn client_config(
    source: &CredentialSource,
    allow: PeerAllowList,
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(source, allow, ServerNames::Unchecked)
}

/// [`client_config`], checking the name each server was reached by as `names` says.
pub fn client_config_with(
    source: &CredentialSource,
    allow: PeerAllowList,
    names: ServerNames,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = verifying_servers(source, allow, names)?
        .with_client_cert_resolver(Arc::new(SvidResolver::new(source.clone())));
    // The server's SVID is verified on every connection (see `no_server_resumption`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The TLS 1.3 client builder that accepts servers `allow` lists, by `source`'s bundles,
/// checking their names as `names` says.
fn verifying_servers(
    source: &CredentialSource,
    allow: PeerAllowList,
    names: ServerNames,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let verifier = SvidVerifier::new(source.clone(), allow).with_server_names(names);
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

/// A TLS 1.3 client configuration that presents no certificate and accepts servers
/// `allow` lists, checked against `source`'s bundles: for servers of another trust
/// domain that would not accept this workload's certificate (a federated domain's
/// token service).
pub fn server_auth_config(
    source: &CredentialSource,
    allow: PeerAllowList,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config =
        verifying_servers(source, allow, ServerNames::Unchecked)?.with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A server configuration (TLS 1.2 and 1.3, no client certificates) from a PEM
/// certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC 1).
/// Errors never quote the key file.
pub fn server_config_from_pem(chain: &[u8], key: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    web_server_config(
        Arc::new(FixedCertificate(certified_key_from_pem(chain, key)?)),
        None,
    )
}

/// One certificate for every handshake.
#[derive(Debug)]
struct FixedCertificate(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// A server configuration (TLS 1.2 and 1.3) presenting what `certificates` resolves
/// ([`FileCertificate`] for one re-read when its files change), and checking client
/// certificates with `clients` when given ([`web_client_verifier`]).
pub fn web_server_config(
    certificates: Arc<dyn rustls::server::ResolvesServerCert>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    no_server_resumption(&mut config);
    Ok(config)
}

/// A verifier of outside clients' certificates (the Web PKI rules, client use) against
/// the PEM CA certificates in `roots_pem`; with `required` false a client may also
/// connect without one.
pub fn web_client_verifier(
    roots_pem: &[u8],
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        let cert = cert.map_err(|_| TlsError::Pem("the client CA file is not PEM certificates"))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem("the client CA file holds no certificate"));
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))
}

/// The leaf certificate (DER) a TLS client presented and the server's verifier accepted;
/// [`crate::listen::serve_until`] puts it in every request's extensions (RFC 8705
/// certificate-bound tokens are checked against it).
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub Arc<[u8]>);

/// A certificate chain and key from PEM, checked to belong together.
fn certified_key_from_pem(chain: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let chain = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem("the certificate file is not PEM certificates"))?;
    if chain.is_empty() {
        return Err(TlsError::Pem("the certificate file holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| TlsError::Pem("the key file holds no PEM private key"))?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

/// A web server certificate kept in two PEM files (chain, key) and re-read when either
/// file changes (as cert-manager or an ACME client replaces them), with no restart and
/// no dropped connection: handshakes after the change present the new certificate. A
/// pair that does not load (half written, or a key that does not match) is refused with
/// a warning, and the last good certificate stays in use.
#[derive(Debug)]
pub struct FileCertificate {
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    current: std::sync::RwLock<(Arc<CertifiedKey>, FileStamp)>,
}

/// When the two files were last changed, and how long they were.
type FileStamp = [Option<(std::time::SystemTime, u64)>; 2];

fn stamp(files: [&std::path::Path; 2]) -> FileStamp {
    files.map(|f| {
        std::fs::metadata(f)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

impl FileCertificate {
    /// Reads the pair; an error names the file that could not be read, never the key.
    pub fn load(
        cert_file: std::path::PathBuf,
        key_file: std::path::PathBuf,
    ) -> Result<Arc<Self>, TlsError> {
        let (certified, stamp) = Self::read(&cert_file, &key_file)?;
        Ok(Arc::new(FileCertificate {
            cert_file,
            key_file,
            current: std::sync::RwLock::new((certified, stamp)),
        }))
    }

    fn read(
        cert_file: &std::path::Path,
        key_file: &std::path::Path,
    ) -> Result<(Arc<CertifiedKey>, FileStamp), TlsError> {
        let before = stamp([cert_file, key_file]);
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| TlsError::File(format!("{}: {e}", path.display())))
        };
        let chain = read(cert_file)?;
        let key = zeroize::Zeroizing::new(read(key_file)?);
        Ok((certified_key_from_pem(&chain, &key)?, before))
    }

    /// Re-reads the pair if either file changed since it was last read; whether the
    /// certificate in use changed.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp([&self.cert_file, &self.key_file]);
        let last = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1;
        if now == last {
            return Ok(false);
        }
        let (certified, stamp) = Self::read(&self.cert_file, &self.key_file)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (certified, stamp);
        Ok(true)
    }

    /// Checks the files every `period` until the last handle is dropped.
    pub fn watch(self: &Arc<Self>, period: std::time::Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                match this.reload_if_changed() {
                    Ok(true) => tracing::info!(
                        cert_file = %this.cert_file.display(),
                        "server certificate reloaded"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "server certificate files changed but do not load; keeping the last good pair"
                    ),
                }
            }
        });
    }
}

impl FileCertificate {
    /// The certificate presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0,
        )
    }
}

impl rustls::server::ResolvesServerCert for FileCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A client configuration for servers outside the trust domain (TLS 1.2 and 1.3): the
/// server's certificate is checked against the PEM roots in `roots_pem` and its host name
/// by the Web PKI rules; no client certificate is sent.
pub fn web_client_config(roots_pem: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        let cert = cert.map_err(|_| TlsError::Pem("the roots file is not PEM certificates"))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem("the roots file holds no certificate"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The verified identity of the server at the other end of an [`MtlsConnector`]
/// connection, in the extensions of every response that came over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsServer(pub WorkloadId);

/// A hyper-util client connector that opens mutual-TLS connections with this workload's
/// X509-SVID, whatever the URI's scheme: the outbound sidecar takes plain `http://`
/// requests from its service and carries them over mTLS. The server's SVID is checked by
/// [`SvidVerifier`] against the bundles and the allow-list of [`client_config`]; the server
/// name is not used (see the module doc). Built [`MtlsConnector::with_config`] from a
/// [`web_client_config`], it opens ordinary TLS connections to servers outside the trust
/// domain instead (the host name is then checked).
#[derive(Clone)]
pub struct MtlsConnector {
    tcp: hyper_util::client::legacy::connect::HttpConnector,
    tls: tokio_rustls::TlsConnector,
    /// Per destination (`host:port`, see [`crate::proxy::destination_key`]), a connector
    /// that accepts only the one server identity expected there.
    pinned: Arc<std::collections::HashMap<String, tokio_rustls::TlsConnector>>,
    /// How the connections of [`MtlsConnector::pinned`] check server names.
    names: ServerNames,
    /// The ALPN protocols offered ([`MtlsConnector::offering`]).
    alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for MtlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsConnector").finish_non_exhaustive()
    }
}

impl MtlsConnector {
    /// A connector presenting `source`'s SVID and accepting the servers `allow` lists,
    /// checking the names they were reached by as `names` says.
    pub fn new(
        source: &CredentialSource,
        allow: PeerAllowList,
        names: ServerNames,
    ) -> Result<Self, TlsError> {
        let config = client_config_with(source, allow, names)?;
        Ok(MtlsConnector {
            names,
            ..Self::with_config(Arc::new(config))
        })
    }

    /// The same connector, accepting at each destination of `pins` (`host:port`) only
    /// the server identity named for it, whatever the allow-list says (SPECS §6: without
    /// DNS, the client is configured with the expected server's identifier); names are
    /// checked there as [`MtlsConnector::new`] was told.
    pub fn pinned(
        mut self,
        source: &CredentialSource,
        pins: std::collections::HashMap<String, WorkloadId>,
    ) -> Result<Self, TlsError> {
        let mut pinned = std::collections::HashMap::new();
        for (destination, id) in pins {
            let mut allow = PeerAllowList::default();
            allow.ids.insert(id);
            let mut config = client_config_with(source, allow, self.names)?;
            config.alpn_protocols.clone_from(&self.alpn);
            pinned.insert(
                destination,
                tokio_rustls::TlsConnector::from(Arc::new(config)),
            );
        }
        self.pinned = Arc::new(pinned);
        Ok(self)
    }

    /// The same connector, offering the ALPN protocols `alpn` on every connection (`h2`
    /// for a client that speaks HTTP/2 only).
    #[must_use]
    pub fn offering(mut self, alpn: &[&[u8]]) -> Self {
        self.alpn = alpn.iter().map(|p| p.to_vec()).collect();
        let offer = |tls: &tokio_rustls::TlsConnector| {
            let mut config = rustls::ClientConfig::clone(tls.config());
            config.alpn_protocols.clone_from(&self.alpn);
            tokio_rustls::TlsConnector::from(Arc::new(config))
        };
        self.tls = offer(&self.tls);
        self.pinned = Arc::new(
            self.pinned
                .iter()
                .map(|(destination, tls)| (destination.clone(), offer(tls)))
                .collect(),
        );
        self
    }

    /// A connector opening TLS connections as `config` says.
    pub fn with_config(config: Arc<rustls::ClientConfig>) -> Self {
        let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let config_alpn = config.alpn_protocols.clone();
        MtlsConnector {
            tcp,
            tls: tokio_rustls::TlsConnector::from(config),
            pinned: Arc::default(),
            names: ServerNames::Unchecked,
            alpn: config_alpn,
        }
    }
}

/// An mTLS connection made by [`MtlsConnector`].
#[derive(Debug)]
pub struct MtlsStream {
    io: hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    server: Option<WorkloadId>,
}

impl hyper_util::client::legacy::connect::Connection for MtlsStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        let connected = hyper_util::client::legacy::connect::Connected::new();
        match &self.server {
            Some(id) => connected.extra(MtlsServer(id.clone())),
            None => connected,
        }
    }
}

impl hyper::rt::Read for MtlsStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MtlsStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tower::Service<http::Uri> for MtlsConnector {
    type Response = MtlsStream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<MtlsStream, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.tcp.call(uri.clone());
        let pinned = crate::proxy::uri_destination_key(&uri).and_then(|key| self.pinned.get(&key));
        let tls = pinned.unwrap_or(&self.tls).clone();
        Box::pin(async move {
            let host = uri.host().ok_or("uri has no host")?;
            // SNI carries the name for the server's routing; the verifier checks it
            // against the SVID when told to (`ServerNames::Checked`).
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())?;
            let tcp = connecting.await?.into_inner();
            let stream = tls.connect(name, tcp).await?;
            let server = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| spiffe_id_of(c).ok());
            Ok(MtlsStream {
                io: hyper_util::rt::TokioIo::new(stream),
                server,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_file_certificate_follows_its_files_and_keeps_the_last_good_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let write = |(cert, key): &(String, String)| {
            std::fs::write(&cert_file, cert).unwrap();
            std::fs::write(&key_file, key).unwrap();
        };
        let first = self_signed("one.example");
        write(&first);
        let certificate = FileCertificate::load(cert_file.clone(), key_file.clone()).unwrap();
        let leaf = |c: &FileCertificate| c.current().cert[0].to_vec();
        let served = leaf(&certificate);
        assert!(!certificate.reload_if_changed().unwrap());

        // A new pair (a different length, so the change shows even within one mtime tick).
        let second = self_signed("second-name.example");
        write(&second);
        assert!(certificate.reload_if_changed().unwrap());
        let renewed = leaf(&certificate);
        assert_ne!(renewed, served);

        // A certificate whose key is not its own is refused; the last good pair stays.
        std::fs::write(&key_file, format!("{}\n", first.1)).unwrap();
        let err = certificate.reload_if_changed().unwrap_err();
        assert!(matches!(err, TlsError::Config(_)), "{err}");
        assert_eq!(leaf(&certificate), renewed);
        assert!(
            FileCertificate::load(dir.path().join("missing"), key_file.clone())
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn a_server_certificate_and_key_load_from_pem_and_bad_files_are_named_without_quoting_them() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gateway.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let config = server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let broken_key = key_pem.replace('A', "*");
        for (chain, key, why) in [
            ("", key_pem.as_str(), "no certificate"),
            (cert_pem.as_str(), cert_pem.as_str(), "no PEM private key"),
            (cert_pem.as_str(), broken_key.as_str(), "no PEM private key"),
        ] {
            let err = server_config_from_pem(chain.as_bytes(), key.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("PRIVATE") && err.len() < 100, "{err}");
        }
        // The same certificate serves as a client's root.
        assert!(web_client_config(cert_pem.as_bytes()).is_ok());
        assert!(web_client_config(key_pem.as_bytes()).is_err());
        assert!(web_client_config(b"").is_err());
        // A key that is not the certificate's is refused by rustls.
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(server_config_from_pem(cert_pem.as_bytes(), other.as_bytes()).is_err());
    }
}
