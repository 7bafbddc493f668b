//! TLS for the server's public listener: rustls over aws-lc-rs, TLS 1.3 only, presenting
//! the server's current X509-SVID (rotated in place, no restart).

use crate::state::State;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::{Arc, Weak};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration or key.
    #[error("tls: {0}")]
    Rustls(String),
}

/// Resolves the server certificate from the state at every handshake.
#[derive(Debug)]
struct CurrentSvid {
    state: Weak<State>,
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
        certified_key(&state).ok().map(Arc::new)
    }
}

fn certified_key(state: &State) -> Result<CertifiedKey, TlsError> {
    let svid = state.svid();
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
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CurrentSvid {
            state: Arc::downgrade(state),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
