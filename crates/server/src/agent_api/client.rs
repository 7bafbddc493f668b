//! The agent's side of the agent API: HTTP/1.1 over TLS 1.3 to the server, trusting only
//! the trust bundle's X.509 roots and only a server that proves the SPIFFE ID
//! `spiffe://<td>/wimse/server` (host names are not relied on), presenting the agent's
//! X509-SVID as client certificate once it has one.

use super::{
    AttestRequest, AttestResponse, EntriesResponse, JwtRequest, JwtResponse, RenewRequest,
    WitRequest, WitResponse, X509PopChallengeRequest, X509PopChallengeResponse, X509PopEvidence,
    X509Request, X509Response,
};
use crate::api::Problem;
use crate::tls::{chain_of, unix_seconds};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use wimse_core::bundle::TrustBundle;
use wimse_core::jose::{Jwk, SigningKey, b64};
use wimse_core::x509::{self, Certificate};
use wimse_core::{TrustDomain, WorkloadId};

/// Why an agent API call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The server could not be reached.
    #[error("cannot reach the server `{addr}`: {source}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS could not be configured (unusable key or certificate).
    #[error("tls: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("agent API request failed: {0}")]
    Http(String),
    /// The server refused the request; `detail` says why.
    #[error("{detail} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The answer could not be read.
    #[error("unexpected agent API answer: {0}")]
    Decode(String),
}

/// The agent's own credential, presented as TLS client certificate.
#[derive(Clone)]
pub struct AgentIdentity {
    /// The agent's X509-SVID chain, leaf first.
    pub chain: Vec<Certificate>,
    /// Its private key.
    pub key: Arc<SigningKey>,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity").finish_non_exhaustive()
    }
}

/// A client of one server's agent API.
///
/// Clones share idle connections: a call reuses one when it can (no TLS handshake per
/// call) and opens another when all are busy.
#[derive(Clone)]
pub struct AgentApiClient {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    idle: Arc<Mutex<Vec<Sender>>>,
}

/// One HTTP/1.1 connection's request side.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// How many idle connections a client keeps.
const MAX_IDLE: usize = 8;

impl std::fmt::Debug for AgentApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentApiClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Accepts only an X509-SVID of one SPIFFE ID that chains to the X.509 authorities of that
/// ID's trust domain; host names are not looked at. The agent API client expects
/// `spiffe://<td>/wimse/server`; a federation client, an `https_spiffe` bundle endpoint's ID.
#[derive(Debug)]
pub(crate) struct SpiffeIdVerifier {
    trust_domain: TrustDomain,
    server_id: WorkloadId,
    roots: Vec<Certificate>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeIdVerifier {
    /// Expects `server_id`, chained to `roots` (DER CA certificates of its trust domain).
    pub(crate) fn new(
        server_id: WorkloadId,
        roots: &[Vec<u8>],
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Result<Self, x509::X509Error> {
        let roots = roots
            .iter()
            .map(|der| Certificate::from_der(der.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trust_domain: server_id.trust_domain().clone(),
            server_id,
            roots,
            algorithms,
        })
    }
}

impl ServerCertVerifier for SpiffeIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = chain_of(end_entity, intermediates)?;
        let id = x509::verify_svid_for_trust_domain(
            &chain,
            &self.trust_domain,
            &self.roots,
            unix_seconds(now),
        )
        .map_err(|e| rustls::Error::General(format!("server certificate refused: {e}")))?;
        // The server is known by its SPIFFE ID, not by a host name.
        if id != self.server_id {
            return Err(rustls::Error::General(format!(
                "server presented `{id}`, expected `{}`",
                self.server_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Reached only by a client that offers TLS 1.2 (federation; the agent API is 1.3 only).
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
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

/// Decodes a chain of base64url DER certificates, leaf first.
pub fn decode_chain(chain: &[String]) -> Result<Vec<Certificate>, AgentClientError> {
    chain
        .iter()
        .map(|text| {
            let der = b64::decode(text)
                .map_err(|e| AgentClientError::Decode(format!("certificate: {e}")))?;
            Certificate::from_der(der).map_err(|e| AgentClientError::Decode(e.to_string()))
        })
        .collect()
}

fn tls_error(e: impl std::fmt::Display) -> AgentClientError {
    AgentClientError::Tls(e.to_string())
}

fn encode_query(value: i64) -> String {
    value.to_string()
}

impl AgentApiClient {
    /// A client for the server at `addr` of the bundle's trust domain, presenting
    /// `identity` (none for attestation).
    pub fn new(
        addr: SocketAddr,
        bundle: &TrustBundle,
        identity: Option<&AgentIdentity>,
    ) -> Result<Self, AgentClientError> {
        let trust_domain = bundle.trust_domain().clone();
        let server_id =
            WorkloadId::from_parts("spiffe", &trust_domain, wimse_core::id::SERVER_PATH)
                .map_err(tls_error)?;
        let provider = Arc::new(aws_lc_rs::default_provider());
        let verifier = SpiffeIdVerifier::new(
            server_id,
            &bundle.x509_authorities,
            provider.signature_verification_algorithms,
        )
        .map_err(tls_error)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let chain = identity
                    .chain
                    .iter()
                    .map(|c| CertificateDer::from(c.der().to_vec()))
                    .collect();
                let pkcs8 = identity.key.to_pkcs8_der().map_err(tls_error)?;
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(tls_error)?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(AgentApiClient {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Sender>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle open connection (`true`), or a new one (`false`).
    async fn sender(&self) -> Result<(Sender, bool), AgentClientError> {
        loop {
            let Some(sender) = self.idle().pop() else {
                break;
            };
            if sender.is_ready() {
                return Ok((sender, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    async fn connect(&self) -> Result<Sender, AgentClientError> {
        let addr = self.addr;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| AgentClientError::Connect { addr, source })?;
        // The name is not checked (the verifier checks the SPIFFE ID); SNI needs one.
        let name = ServerName::try_from("localhost").map_err(tls_error)?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|source| AgentClientError::Connect { addr, source })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| AgentClientError::Http(e.to_string()))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one request and returns the body of a 200 answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, AgentClientError> {
        let addr = self.addr;
        let body = Bytes::from(body.unwrap_or_default());
        let request = || {
            Request::builder()
                .method(method.clone())
                .uri(path)
                .header("host", addr.to_string())
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| AgentClientError::Http(e.to_string()))
        };
        let (mut sender, reused) = self.sender().await?;
        let response = match sender.send_request(request()?).await {
            Ok(response) => response,
            // The server may have closed an idle connection: one retry on a fresh one.
            Err(_) if reused => {
                sender = self.connect().await?;
                sender
                    .send_request(request()?)
                    .await
                    .map_err(|e| AgentClientError::Http(e.to_string()))?
            }
            Err(e) => return Err(AgentClientError::Http(e.to_string())),
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| AgentClientError::Http(e.to_string()))?
            .to_bytes();
        {
            let mut idle = self.idle();
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        if status != StatusCode::OK {
            let detail = serde_json::from_slice::<Problem>(&bytes).map_or_else(
                |_| String::from_utf8_lossy(&bytes).into_owned(),
                |p| p.detail,
            );
            return Err(AgentClientError::Api {
                status: status.as_u16(),
                detail,
            });
        }
        Ok(bytes)
    }

    async fn post<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
    ) -> Result<A, AgentClientError> {
        let body = serde_json::to_vec(body).map_err(|e| AgentClientError::Http(e.to_string()))?;
        self.post_raw(path, body).await
    }

    /// Posts a body as it is (for tests of the server's limits).
    pub async fn post_raw<A: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<A, AgentClientError> {
        let bytes = self.call(Method::POST, path, Some(body)).await?;
        serde_json::from_slice(&bytes).map_err(|e| AgentClientError::Decode(e.to_string()))
    }

    /// Node attestation with a one-time join token and a CSR (DER) for the agent's key.
    pub async fn attest(
        &self,
        join_token: &str,
        csr: &[u8],
    ) -> Result<AttestResponse, AgentClientError> {
        let req = AttestRequest {
            join_token: Some(join_token.to_owned()),
            x509pop: None,
            csr: b64::encode(csr),
        };
        self.post("/agent/v1/attest", &req).await
    }

    /// Node attestation with x509pop: asks for a challenge for `chain` (the agent's
    /// certificate chain, leaf first, DER), signs it together with `csr` (a CSR, DER, for the
    /// agent's new SVID key) with `key`, the leaf certificate's private key, and attests.
    /// The agent ID is `spiffe://<td>/wimse/agent/x509pop/<hex SHA-256 of the leaf's DER>`.
    pub async fn attest_x509pop(
        &self,
        chain_der: &[Vec<u8>],
        key: &SigningKey,
        csr: &[u8],
    ) -> Result<AttestResponse, AgentClientError> {
        let chain: Vec<String> = chain_der.iter().map(b64::encode).collect();
        let challenge = self.x509pop_challenge(chain_der).await?;
        let nonce = b64::decode(&challenge.challenge)
            .map_err(|e| AgentClientError::Decode(format!("challenge: {e}")))?;
        let signature = key
            .sign(&crate::x509pop::signed_message(&nonce, csr))
            .map_err(|e| AgentClientError::Tls(format!("signing the x509pop challenge: {e}")))?;
        let req = AttestRequest {
            join_token: None,
            x509pop: Some(X509PopEvidence {
                chain,
                challenge: challenge.challenge,
                signature: b64::encode(signature),
            }),
            csr: b64::encode(csr),
        };
        self.post("/agent/v1/attest", &req).await
    }

    /// Step one of x509pop alone: a challenge for `chain_der` (leaf first, DER).
    pub async fn x509pop_challenge(
        &self,
        chain_der: &[Vec<u8>],
    ) -> Result<X509PopChallengeResponse, AgentClientError> {
        let req = X509PopChallengeRequest {
            chain: chain_der.iter().map(b64::encode).collect(),
        };
        self.post("/agent/v1/attest/x509pop/challenge", &req).await
    }

    /// Step two of x509pop alone, with evidence the caller built (for tests of refusals).
    pub async fn attest_x509pop_evidence(
        &self,
        evidence: X509PopEvidence,
        csr: &[u8],
    ) -> Result<AttestResponse, AgentClientError> {
        let req = AttestRequest {
            join_token: None,
            x509pop: Some(evidence),
            csr: b64::encode(csr),
        };
        self.post("/agent/v1/attest", &req).await
    }

    /// A new certificate for the calling agent.
    pub async fn renew(&self, csr: &[u8]) -> Result<AttestResponse, AgentClientError> {
        let req = RenewRequest {
            csr: b64::encode(csr),
        };
        self.post("/agent/v1/renew", &req).await
    }

    /// The entry changes after revision `since`, waiting up to `wait` seconds for one
    /// (`since` 0: the first page of a full sync). See [`super`] for the sync rules: while an
    /// answer has `more` and `until`, continue with [`AgentApiClient::entries_until`].
    pub async fn entries(
        &self,
        since: i64,
        wait: u64,
    ) -> Result<EntriesResponse, AgentClientError> {
        self.entries_page(since, wait, None).await
    }

    /// The next page of a full sync: `since` and `until` are the previous answer's
    /// `revision` and `until`.
    pub async fn entries_until(
        &self,
        since: i64,
        until: i64,
    ) -> Result<EntriesResponse, AgentClientError> {
        self.entries_page(since, 0, Some(until)).await
    }

    async fn entries_page(
        &self,
        since: i64,
        wait: u64,
        until: Option<i64>,
    ) -> Result<EntriesResponse, AgentClientError> {
        let until = until.map_or_else(String::new, |u| format!("&until={}", encode_query(u)));
        let path = format!(
            "/agent/v1/entries?since={}&wait={wait}{until}",
            encode_query(since)
        );
        let bytes = self.call(Method::GET, &path, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| AgentClientError::Decode(e.to_string()))
    }

    /// An X.509 workload certificate chain for an entry, from a CSR (DER).
    pub async fn x509(
        &self,
        entry_id: &str,
        csr: &[u8],
    ) -> Result<Vec<Certificate>, AgentClientError> {
        let req = X509Request {
            entry_id: entry_id.to_owned(),
            csr: b64::encode(csr),
        };
        let answer: X509Response = self.post("/agent/v1/svid/x509", &req).await?;
        decode_chain(&answer.svid_chain)
    }

    /// A WIT for an entry, bound to the workload's public key.
    pub async fn wit(&self, entry_id: &str, jwk: &Jwk) -> Result<String, AgentClientError> {
        let req = WitRequest {
            entry_id: entry_id.to_owned(),
            jwk: jwk.clone(),
        };
        let answer: WitResponse = self.post("/agent/v1/svid/wit", &req).await?;
        Ok(answer.wit)
    }

    /// A JWT-SVID for an entry and audience.
    pub async fn jwt(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<String, AgentClientError> {
        let req = JwtRequest {
            entry_id: entry_id.to_owned(),
            audience: audience.to_vec(),
        };
        let answer: JwtResponse = self.post("/agent/v1/svid/jwt", &req).await?;
        Ok(answer.jwt_svid)
    }

    /// The trust bundle, SPIFFE bundle JSON.
    pub async fn bundle(&self) -> Result<String, AgentClientError> {
        self.get_text("/agent/v1/bundle").await
    }

    /// The IDs of the trust domain's tainted keys (see `GET /agent/v1/tainted`).
    pub async fn tainted(&self) -> Result<Vec<String>, AgentClientError> {
        let bytes = self.call(Method::GET, "/agent/v1/tainted", None).await?;
        serde_json::from_slice(&bytes).map_err(|e| AgentClientError::Decode(e.to_string()))
    }

    /// The foreign trust domains' bundles, SPIFFE bundle map JSON.
    pub async fn federated_bundles(&self) -> Result<String, AgentClientError> {
        self.get_text("/agent/v1/federated-bundles").await
    }

    /// A GET of any path on the server's listener (e.g. `/.well-known/spiffe-bundle`),
    /// answered as text.
    pub async fn get_text(&self, path: &str) -> Result<String, AgentClientError> {
        let bytes = self.call(Method::GET, path, None).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| AgentClientError::Decode(e.to_string()))
    }
}
