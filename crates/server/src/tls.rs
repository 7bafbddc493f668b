//! TLS for the server's public listener: rustls over aws-lc-rs, TLS 1.3 only, presenting
//! the server's current X509-SVID (rotated in place, no restart).
//!
//! Client certificates are offered but not required: the bundle endpoints and node
//! attestation serve callers without one, while the agent API reads the verified caller
//! ([`Caller`]) that [`crate::run`] attaches to every request of a connection. A presented
//! chain is verified against the *current* bundle at every handshake, so CA rotation needs
//! no restart.

use crate::state::State;
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use std::sync::{Arc, Weak};
use wimse_core::WorkloadId;
use wimse_core::x509::{self, Certificate};

/// The peer of one TLS connection as its verified client certificate shows it (all `None`
/// when it presented none). Inserted into every request's extensions by the accept loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The SPIFFE ID of the leaf's URI SAN.
    pub id: Option<WorkloadId>,
    /// The leaf's serial number, hex.
    pub serial: Option<String>,
    /// The leaf itself (its key checks self-signed subject tokens).
    pub certificate: Option<Arc<Certificate>>,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration or key.
    #[error("tls: {0}")]
    Rustls(String),
}

/// Resolves the server certificate from the state at every handshake. The rustls form of
/// the credential (which means re-reading the PKCS#8 key) is built once per renewal, not
/// once per handshake.
#[derive(Debug)]
struct CurrentSvid {
    state: Weak<State>,
    /// The credential last converted, and its rustls form.
    converted: std::sync::Mutex<Option<(Arc<crate::state::ServerSvid>, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for crate::state::ServerSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSvid")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let state = self.state.upgrade()?;
        let svid = state.svid();
        // A poisoned lock holds a complete (svid, key) pair or nothing; either is usable.
        let mut converted = self
            .converted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, key)) = converted.as_ref()
            && Arc::ptr_eq(seen, &svid)
        {
            return Some(Arc::clone(key));
        }
        let key = Arc::new(certified_key(&svid).ok()?);
        *converted = Some((svid, Arc::clone(&key)));
        Some(key)
    }
}

fn certified_key(svid: &crate::state::ServerSvid) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = svid
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let pkcs8 = svid
        .key
        .to_pkcs8_der()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let key =
        aws_lc_rs::sign::any_supported_type(&der).map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(CertifiedKey::new(chain, key))
}

/// The rustls configuration of the public listener.
pub fn server_config(state: &Arc<State>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(BundleClientVerifier {
            state: Arc::downgrade(state),
            algorithms: aws_lc_rs::default_provider().signature_verification_algorithms,
        }))
        .with_cert_resolver(Arc::new(CurrentSvid {
            state: Arc::downgrade(state),
            converted: std::sync::Mutex::new(None),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session resumption: a resumed session would restore an agent's certificate
    // without the verifier seeing it against the current bundle again.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Verifies a client's X509-SVID against the trust domain's current bundle.
#[derive(Debug)]
struct BundleClientVerifier {
    state: Weak<State>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The certificates of a presented chain, leaf first.
pub(crate) fn chain_of(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<Vec<Certificate>, rustls::Error> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .map(|der| {
            Certificate::from_der(der.to_vec())
                .map_err(|e| rustls::Error::General(format!("unreadable certificate: {e}")))
        })
        .collect()
}

/// Seconds since the Unix epoch of a rustls time.
pub(crate) fn unix_seconds(now: UnixTime) -> i64 {
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

impl ClientCertVerifier for BundleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Bundle publication and node attestation serve callers without a certificate; the
        // agent API refuses them per request.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let state = self
            .state
            .upgrade()
            .ok_or_else(|| rustls::Error::General("server is stopping".into()))?;
        let bundle = state.bundle();
        let roots = bundle
            .x509_authorities
            .iter()
            .filter_map(|der| Certificate::from_der(der.clone()).ok())
            .collect::<Vec<_>>();
        let chain = chain_of(end_entity, intermediates)?;
        x509::verify_svid_for_trust_domain(
            &chain,
            &state.config.trust_domain,
            &roots,
            unix_seconds(now),
        )
        .map_err(|e| rustls::Error::General(format!("client certificate refused: {e}")))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The listener speaks TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The SPIFFE ID of a peer whose chain the verifier accepted: the leaf's URI SAN.
pub fn caller_of(peer_certificates: Option<&[CertificateDer<'_>]>) -> Caller {
    let Some(leaf) = peer_certificates
        .and_then(<[_]>::first)
        .and_then(|der| Certificate::from_der(der.to_vec()).ok())
    else {
        return Caller::default();
    };
    Caller {
        id: leaf
            .uri_sans()
            .into_iter()
            .next()
            .and_then(|uri| WorkloadId::parse(&uri).ok()),
        serial: Some(leaf.serial_hex()),
        certificate: Some(Arc::new(leaf)),
    }
}
