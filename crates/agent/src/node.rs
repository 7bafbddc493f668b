//! The agent's own identity: node attestation, its X509-SVID, renewal, and the client of
//! the server's agent API that presents it.
//!
//! The credential and the last trust bundle are kept in `<data_dir>/agent/` (`svid.pem`,
//! `svid.key` with mode 0600, `bundle.json`), so a restarted agent resumes without
//! attesting again (a join token works once) and trusts a server whose CA rotated while
//! it was down, as long as the bundle it kept still holds a current root.

use crate::config::{AgentConfig, NodeAttestation};
use crate::files;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wimse_core::bundle::TrustBundle;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::x509::{self, Certificate};
use wimse_core::{TrustDomain, WorkloadId};
use wimse_server::agent_api::AttestResponse;
use wimse_server::agent_api::client::{
    AgentApiClient, AgentClientError, AgentIdentity, decode_chain,
};

/// Why the agent could not obtain or keep its identity.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The bootstrap trust bundle is unusable.
    #[error("trust bundle `{path}`: {message}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The server address does not resolve.
    #[error("server address `{0}` does not resolve to an address")]
    Address(String),
    /// The agent's files could not be read or written.
    #[error("agent data `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An x509pop key or certificate, or a key or CSR of the agent's own, is unusable.
    #[error("{0}")]
    Credential(String),
    /// The server refused or could not be reached.
    #[error(transparent)]
    Server(#[from] AgentClientError),
}

/// The agent's X509-SVID and key.
#[derive(Clone)]
pub struct NodeCredential {
    /// The agent's SPIFFE ID.
    pub id: WorkloadId,
    /// Its chain, leaf first.
    pub chain: Vec<Certificate>,
    /// Its key.
    pub key: Arc<SigningKey>,
}

impl NodeCredential {
    /// The leaf's `notAfter`.
    pub fn expires_at(&self) -> i64 {
        self.chain.first().map_or(0, Certificate::not_after)
    }

    /// Half way through the leaf's life.
    pub fn renew_at(&self) -> i64 {
        let (from, to) = self
            .chain
            .first()
            .map_or((0, 0), |c| (c.not_before(), c.not_after()));
        from + (to - from) / 2
    }

    fn identity(&self) -> AgentIdentity {
        AgentIdentity {
            chain: self.chain.clone(),
            key: self.key.clone(),
        }
    }
}

/// Where the agent keeps its own state.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    dir: PathBuf,
}

impl NodeFiles {
    /// The agent's state directory under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("agent"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io(&self, name: &str) -> impl FnOnce(std::io::Error) -> NodeError {
        let path = self.path(name);
        move |source| NodeError::Io { path, source }
    }

    /// The stored credential, if there is one that has not expired.
    pub fn load_credential(&self, now: i64) -> Result<Option<NodeCredential>, NodeError> {
        let (Ok(chain_pem), Ok(key_pem)) = (
            std::fs::read_to_string(self.path("svid.pem")),
            std::fs::read_to_string(self.path("svid.key")),
        ) else {
            return Ok(None);
        };
        let chain = x509::certs_from_pem(&chain_pem)
            .map_err(|e| NodeError::Credential(format!("stored agent certificate: {e}")))?;
        let key = SigningKey::from_pkcs8_pem(&key_pem)
            .map_err(|e| NodeError::Credential(format!("stored agent key: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Ok(None);
        };
        if leaf.not_after() <= now {
            return Ok(None);
        }
        let id = leaf
            .uri_sans()
            .first()
            .and_then(|uri| WorkloadId::parse(uri).ok())
            .ok_or_else(|| {
                NodeError::Credential("stored agent certificate has no SPIFFE ID".into())
            })?;
        Ok(Some(NodeCredential {
            id,
            chain,
            key: Arc::new(key),
        }))
    }

    /// Stores the credential (the key with mode 0600), each file replaced atomically.
    pub fn save_credential(&self, credential: &NodeCredential) -> Result<(), NodeError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(""))?;
        let key = credential
            .key
            .to_pkcs8_pem()
            .map_err(|e| NodeError::Credential(e.to_string()))?;
        files::write_atomic(&self.path("svid.key"), key.as_bytes(), files::SECRET)
            .map_err(self.io("svid.key"))?;
        files::write_atomic(
            &self.path("svid.pem"),
            x509::certs_to_pem(&credential.chain).as_bytes(),
            files::PUBLIC,
        )
        .map_err(self.io("svid.pem"))
    }

    /// The last bundle the server sent, if any.
    pub fn load_bundle(&self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        let json = std::fs::read(self.path("bundle.json")).ok()?;
        TrustBundle::from_spiffe_json(trust_domain.clone(), &json).ok()
    }

    /// Keeps the bundle for the next start.
    pub fn save_bundle(&self, bundle: &TrustBundle) -> Result<(), NodeError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(""))?;
        files::write_atomic(
            &self.path("bundle.json"),
            bundle.to_spiffe_json().as_bytes(),
            files::PUBLIC,
        )
        .map_err(self.io("bundle.json"))
    }
}

/// Reads the bootstrap bundle: PEM X.509 roots, whose SPIFFE ID (`spiffe://<td>`, X509-SVID
/// §3.2) names the trust domain.
pub fn bootstrap_bundle(path: &Path) -> Result<TrustBundle, NodeError> {
    let bad = |message: String| NodeError::Bundle {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let roots = x509::certs_from_pem(&text).map_err(|e| bad(e.to_string()))?;
    let trust_domain = roots
        .iter()
        .flat_map(Certificate::uri_sans)
        .find_map(|uri| {
            let name = uri.strip_prefix("spiffe://")?;
            TrustDomain::new(name).ok()
        })
        .ok_or_else(|| bad("no root carries the trust domain's SPIFFE ID".into()))?;
    let mut bundle = TrustBundle::new(trust_domain);
    bundle.add_x509_pem(&text).map_err(|e| bad(e.to_string()))?;
    Ok(bundle)
}

/// Resolves `HOST:PORT`.
pub async fn resolve(address: &str) -> Result<std::net::SocketAddr, NodeError> {
    tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| NodeError::Address(address.to_owned()))
}

/// A fresh key and a CSR for it. The server names the agent; the CSR's ID is a placeholder
/// that it ignores.
fn key_and_csr(trust_domain: &TrustDomain) -> Result<(SigningKey, Vec<u8>), NodeError> {
    let key =
        SigningKey::generate(Algorithm::Es256).map_err(|e| NodeError::Credential(e.to_string()))?;
    let placeholder = WorkloadId::from_parts("spiffe", trust_domain, "/wimse/agent")
        .map_err(|e| NodeError::Credential(e.to_string()))?;
    let csr =
        x509::build_csr(&key, &placeholder).map_err(|e| NodeError::Credential(e.to_string()))?;
    Ok((key, csr))
}

fn credential_from(answer: &AttestResponse, key: SigningKey) -> Result<NodeCredential, NodeError> {
    let chain = decode_chain(&answer.svid_chain)?;
    let id = WorkloadId::parse(&answer.spiffe_id)
        .map_err(|e| NodeError::Credential(format!("server named the agent badly: {e}")))?;
    Ok(NodeCredential {
        id,
        chain,
        key: Arc::new(key),
    })
}

/// Parses the bundle the server sent with an attestation or renewal.
pub fn bundle_from(
    answer: &AttestResponse,
    trust_domain: &TrustDomain,
) -> Result<TrustBundle, NodeError> {
    TrustBundle::from_spiffe_json(trust_domain.clone(), answer.bundle.as_bytes())
        .map_err(|e| NodeError::Credential(format!("server sent an unusable bundle: {e}")))
}

/// Attests the node with its configured method.
pub async fn attest(
    config: &AgentConfig,
    addr: std::net::SocketAddr,
    bundle: &TrustBundle,
) -> Result<(NodeCredential, TrustBundle), NodeError> {
    let client = AgentApiClient::new(addr, bundle, None)?;
    let (key, csr) = key_and_csr(bundle.trust_domain())?;
    let answer = match &config.attestation {
        NodeAttestation::JoinToken(token) => client.attest(token, &csr).await?,
        NodeAttestation::X509Pop {
            cert,
            key: key_path,
        } => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|source| NodeError::Io {
                    path: p.to_owned(),
                    source,
                })
            };
            let chain = x509::certs_from_pem(&read(cert)?)
                .map_err(|e| NodeError::Credential(format!("x509pop certificate: {e}")))?;
            let pop_key = SigningKey::from_pkcs8_pem(&read(key_path)?)
                .map_err(|e| NodeError::Credential(format!("x509pop key: {e}")))?;
            let chain_der: Vec<Vec<u8>> = chain.iter().map(|c| c.der().to_vec()).collect();
            client.attest_x509pop(&chain_der, &pop_key, &csr).await?
        }
    };
    let credential = credential_from(&answer, key)?;
    let fresh_bundle = bundle_from(&answer, bundle.trust_domain())?;
    Ok((credential, fresh_bundle))
}

/// Renews the agent's credential with a new key.
pub async fn renew(
    client: &AgentApiClient,
    trust_domain: &TrustDomain,
) -> Result<(NodeCredential, TrustBundle), NodeError> {
    let (key, csr) = key_and_csr(trust_domain)?;
    let answer = client.renew(&csr).await?;
    Ok((
        credential_from(&answer, key)?,
        bundle_from(&answer, trust_domain)?,
    ))
}

/// A client of the server presenting `credential`, trusting `bundle`.
pub fn client(
    addr: std::net::SocketAddr,
    bundle: &TrustBundle,
    credential: &NodeCredential,
) -> Result<AgentApiClient, NodeError> {
    Ok(AgentApiClient::new(
        addr,
        bundle,
        Some(&credential.identity()),
    )?)
}

/// Whether the server refused the agent itself (evicted, banned, or its credential no
/// longer accepted), as opposed to being unreachable.
pub fn is_refusal(error: &NodeError) -> bool {
    matches!(
        error,
        NodeError::Server(AgentClientError::Api { status, .. }) if matches!(status, 401 | 403)
    )
}
