//! Serving a workload's API on the network: [`wimse_listen`]'s listener loop (connection
//! limits, deadlines, drain on stop) with [`mtls_peer`] as its connection facts, so that
//! each request carries the verified mutual-TLS client as an [`MtlsPeer`] (read by
//! [`crate::Authenticator`]) and a [`ClientCertificate`] (for certificate-bound tokens).

use crate::authn::MtlsPeer;
use crate::tls::{ClientCertificate, spiffe_id_of};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
pub use wimse_listen::{
    ConnectionLimits, LONGEST_SECS, LimitSettings, LimitsError, RequestService, serve_until,
};

/// Accepts TLS connections on `listener` forever, serving each request with `service`,
/// the verified client identity as an [`MtlsPeer`] extension (when the configuration
/// asks for client certificates), and the client's address as axum's `ConnectInfo`:
/// [`serve_until`] with the default [`ConnectionLimits`], [`mtls_peer`] and no end.
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    service: S,
) where
    S: RequestService,
{
    serve_until(
        listener,
        Some(config),
        service,
        ConnectionLimits::default(),
        std::future::pending(),
        mtls_peer,
    )
    .await;
}

/// The connection facts of a workload listener: the verified client certificate, and
/// the SPIFFE ID in it (the verifier already checked the chain, so this only reads the
/// ID it accepted). Nothing without TLS or a client certificate.
pub fn mtls_peer(certificates: Option<&[CertificateDer<'_>]>) -> http::Extensions {
    let mut facts = http::Extensions::new();
    if let Some(leaf) = certificates.and_then(<[_]>::first) {
        let leaf = ClientCertificate(Arc::from(leaf.as_ref()));
        if let Ok(id) = spiffe_id_of(&leaf.0) {
            facts.insert(MtlsPeer(id));
        }
        facts.insert(leaf);
    }
    facts
}
