//! Serving a workload's API on the network: [`wimse_listen`]'s listener loop (connection
//! limits, deadlines, drain on stop), with the verified mutual-TLS client in each
//! request's extensions as an [`MtlsPeer`] (read by [`crate::Authenticator`]) and a
//! [`ClientCertificate`] (for certificate-bound tokens).

use crate::authn::MtlsPeer;
use crate::tls::{ClientCertificate, spiffe_id_of};
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::sync::Arc;
pub use wimse_listen::{ConnectionLimits, RequestService};

/// Accepts TLS connections on `listener` forever, serving each request with `service`,
/// the verified client identity as an [`MtlsPeer`] extension (when the configuration
/// asks for client certificates), and the client's address as axum's `ConnectInfo`.
/// [`serve_until`] with the default [`ConnectionLimits`] and no end.
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
    )
    .await;
}

/// Accepts connections on `listener` (TLS with `tls`, plain HTTP without) until `stop`
/// completes, then lets the requests in flight finish for up to `limits.drain`. Each
/// request goes to `service` with the client's address as axum's `ConnectInfo` and, over
/// mutual TLS, the verified [`MtlsPeer`] and its [`ClientCertificate`]. Clients are held
/// to `limits`.
pub async fn serve_until<S>(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: S,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) where
    S: RequestService,
{
    wimse_listen::serve_until(listener, tls, service, limits, stop, mtls_client).await;
}

/// The verified client certificate of a connection, and the SPIFFE ID in it: the
/// verifier already checked the chain, so this only reads the ID it accepted.
fn mtls_client(certificates: Option<&[CertificateDer<'_>]>) -> http::Extensions {
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
