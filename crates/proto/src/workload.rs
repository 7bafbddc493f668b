//! A typed Workload API client: what a workload (or `wimse agent api fetch`) gets from the
//! agent, decoded into `wimse-core` types and checked against the Workload API's mandatory
//! fields (SPIFFE Workload API §4.5: a response with a mandatory field left empty is
//! discarded).

use crate::{
    ConnectError, JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, WitBundlesRequest,
    WitsvidRequest, WitsvidResponse, WorkloadApiClient, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::jose::SigningKey;
use wimse_core::x509::Certificate;
use wimse_core::{TrustDomain, WorkloadId};

/// Why a Workload API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The agent answered with an error status.
    #[error("the agent refused: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The stream ended before an answer arrived.
    #[error("the agent closed the stream without an answer")]
    Closed,
    /// The answer broke the Workload API's rules.
    #[error("unusable Workload API answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// The gRPC status code, when the agent answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

fn decode(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Decode(format!("{what}: {e}"))
}

/// One X509-SVID with its key.
#[derive(Clone)]
pub struct X509Svid {
    /// The SPIFFE ID.
    pub id: WorkloadId,
    /// The certificate chain, leaf first.
    pub chain: Vec<Certificate>,
    /// The private key.
    pub key: Arc<SigningKey>,
    /// The trust domain's X.509 authorities.
    pub bundle: Vec<Certificate>,
    /// The operator's hint, possibly empty.
    pub hint: String,
}

impl std::fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("id", &self.id)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// A whole `FetchX509SVID` answer: every identity, the default first.
#[derive(Clone, Debug)]
pub struct X509Context {
    /// The SVIDs, at least one.
    pub svids: Vec<X509Svid>,
    /// Federated trust domains' X.509 authorities.
    pub federated: BTreeMap<String, Vec<Certificate>>,
}

impl X509Context {
    /// The default identity (the first SVID, Workload API §8).
    pub fn default_svid(&self) -> Option<&X509Svid> {
        self.svids.first()
    }
}

/// A JWT-SVID.
#[derive(Clone)]
pub struct JwtSvid {
    /// The SPIFFE ID.
    pub id: WorkloadId,
    /// The token, compact JWS.
    pub token: String,
    /// The operator's hint.
    pub hint: String,
}

impl std::fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvid")
            .field("id", &self.id)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// A WIT-SVID with its private key.
#[derive(Clone)]
pub struct WitSvid {
    /// The SPIFFE ID.
    pub id: WorkloadId,
    /// The WIT, compact JWS.
    pub token: String,
    /// The private key the WIT's `cnf` names.
    pub key: Arc<SigningKey>,
    /// The operator's hint.
    pub hint: String,
}

impl std::fmt::Debug for WitSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitSvid")
            .field("id", &self.id)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// A Workload API client with typed answers.
#[derive(Clone, Debug)]
pub struct Workload {
    inner: WorkloadApiClient,
}

impl Workload {
    /// Connects to the agent's socket.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            inner: crate::connect(path).await?,
        })
    }

    /// The current X.509 identities (the first message of the stream).
    pub async fn x509_context(&mut self) -> Result<X509Context, ClientError> {
        let mut stream = Box::pin(self.watch_x509().await?);
        stream.next().await.ok_or(ClientError::Closed)?
    }

    /// The X.509 identities, now and after every change.
    pub async fn watch_x509(
        &mut self,
    ) -> Result<impl Stream<Item = Result<X509Context, ClientError>> + use<>, ClientError> {
        let stream = self
            .inner
            .fetch_x509svid(X509svidRequest {})
            .await?
            .into_inner();
        Ok(stream.map(|item| x509_context(item?)))
    }

    /// The X.509 bundles, keyed by trust domain.
    pub async fn x509_bundles(&mut self) -> Result<BundleSet, ClientError> {
        let mut stream = self
            .inner
            .fetch_x509_bundles(X509BundlesRequest {})
            .await?
            .into_inner();
        let answer = stream.next().await.ok_or(ClientError::Closed)??;
        let mut set = BundleSet::new();
        for (td, der) in answer.bundles {
            let mut bundle = TrustBundle::new(trust_domain_of(&td)?);
            bundle.x509_authorities = split_der(&der)?
                .into_iter()
                .map(Certificate::into_der)
                .collect();
            set.insert(bundle);
        }
        Ok(set)
    }

    /// The JWT (and, with the WIT profile, WIT) bundles, keyed by trust domain.
    pub async fn jwt_bundles(&mut self) -> Result<BundleSet, ClientError> {
        let mut stream = self
            .inner
            .fetch_jwt_bundles(JwtBundlesRequest {})
            .await?
            .into_inner();
        let answer = stream.next().await.ok_or(ClientError::Closed)??;
        let mut set = BundleSet::new();
        for (td, jwks) in answer.bundles {
            let mut bundle = TrustBundle::new(trust_domain_of(&td)?);
            bundle
                .add_jwks(KeyUse::JwtSvid, &jwks)
                .map_err(|e| decode("JWT bundle", e))?;
            set.insert(bundle);
        }
        Ok(set)
    }

    /// The WIT bundles (JWK Sets of `wit-svid` keys), keyed by trust domain.
    pub async fn wit_bundles(&mut self) -> Result<BundleSet, ClientError> {
        let mut stream = self
            .inner
            .fetch_wit_bundles(WitBundlesRequest {})
            .await?
            .into_inner();
        let answer = stream.next().await.ok_or(ClientError::Closed)??;
        let mut set = BundleSet::new();
        for (td, jwks) in answer.bundles {
            let mut bundle = TrustBundle::new(trust_domain_of(&td)?);
            bundle
                .add_jwks(KeyUse::WitSvid, jwks.as_bytes())
                .map_err(|e| decode("WIT bundle", e))?;
            set.insert(bundle);
        }
        Ok(set)
    }

    /// JWT-SVIDs for `audience`, of one identity or (with `None`) of all.
    pub async fn jwt_svids(
        &mut self,
        audience: &[String],
        id: Option<&str>,
    ) -> Result<Vec<JwtSvid>, ClientError> {
        let answer = self
            .inner
            .fetch_jwtsvid(JwtsvidRequest {
                audience: audience.to_vec(),
                spiffe_id: id.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        if answer.svids.is_empty() {
            return Err(ClientError::Decode("no JWT-SVID in the answer".into()));
        }
        answer
            .svids
            .into_iter()
            .map(|svid| {
                if svid.svid.is_empty() {
                    return Err(ClientError::Decode("a JWT-SVID is empty".into()));
                }
                Ok(JwtSvid {
                    id: workload_id(&svid.spiffe_id)?,
                    token: svid.svid,
                    hint: svid.hint,
                })
            })
            .collect()
    }

    /// The current WIT-SVIDs (the first message of the stream).
    pub async fn wit_svids(&mut self) -> Result<Vec<WitSvid>, ClientError> {
        let mut stream = Box::pin(self.watch_wit(None).await?);
        stream.next().await.ok_or(ClientError::Closed)?
    }

    /// The WIT-SVIDs, now and after every rotation.
    pub async fn watch_wit(
        &mut self,
        id: Option<&str>,
    ) -> Result<impl Stream<Item = Result<Vec<WitSvid>, ClientError>> + use<>, ClientError> {
        let stream = self
            .inner
            .fetch_witsvid(WitsvidRequest {
                spiffe_id: id.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        Ok(stream.map(|item| wit_svids(item?)))
    }

    /// Asks the agent to validate a JWT-SVID for `audience`: its SPIFFE ID and claims.
    pub async fn validate_jwt(
        &mut self,
        audience: &str,
        token: &str,
    ) -> Result<(WorkloadId, prost_types::Struct), ClientError> {
        let answer = self
            .inner
            .validate_jwtsvid(ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: token.to_owned(),
            })
            .await?
            .into_inner();
        Ok((
            workload_id(&answer.spiffe_id)?,
            answer.claims.unwrap_or_default(),
        ))
    }
}

fn workload_id(text: &str) -> Result<WorkloadId, ClientError> {
    WorkloadId::parse(text).map_err(|e| decode("SPIFFE ID", e))
}

/// A bundle map key is the trust domain's SPIFFE ID, `spiffe://<td>`.
fn trust_domain_of(key: &str) -> Result<TrustDomain, ClientError> {
    let name = key.strip_prefix("spiffe://").unwrap_or(key);
    TrustDomain::new(name).map_err(|e| decode("bundle key", e))
}

/// Splits concatenated DER certificates.
fn split_der(mut der: &[u8]) -> Result<Vec<Certificate>, ClientError> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let len = der_element_len(der).ok_or_else(|| decode("certificates", "bad DER"))?;
        let (one, rest) = der.split_at(len);
        certs.push(Certificate::from_der(one.to_vec()).map_err(|e| decode("certificate", e))?);
        der = rest;
    }
    if certs.is_empty() {
        return Err(ClientError::Decode("no certificate".into()));
    }
    Ok(certs)
}

/// The length of the DER element at the start of `der` (a SEQUENCE, definite length).
fn der_element_len(der: &[u8]) -> Option<usize> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = rest.get(..count)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + count)
    };
    let total = header.checked_add(len)?;
    (total <= der.len()).then_some(total)
}

fn x509_context(answer: X509svidResponse) -> Result<X509Context, ClientError> {
    if answer.svids.is_empty() {
        return Err(ClientError::Decode("no X509-SVID in the answer".into()));
    }
    let svids = answer
        .svids
        .into_iter()
        .map(|svid| {
            let key = zeroize::Zeroizing::new(svid.x509_svid_key);
            Ok(X509Svid {
                id: workload_id(&svid.spiffe_id)?,
                chain: split_der(&svid.x509_svid)?,
                key: Arc::new(SigningKey::from_pkcs8_der(&key).map_err(|e| decode("key", e))?),
                bundle: split_der(&svid.bundle)?,
                hint: svid.hint,
            })
        })
        .collect::<Result<Vec<_>, ClientError>>()?;
    let federated = answer
        .federated_bundles
        .into_iter()
        .map(|(td, der)| Ok((td, split_der(&der)?)))
        .collect::<Result<_, ClientError>>()?;
    Ok(X509Context { svids, federated })
}

fn wit_svids(answer: WitsvidResponse) -> Result<Vec<WitSvid>, ClientError> {
    if answer.svids.is_empty() {
        return Err(ClientError::Decode("no WIT-SVID in the answer".into()));
    }
    answer
        .svids
        .into_iter()
        .map(|svid| {
            let key = zeroize::Zeroizing::new(svid.wit_svid_key);
            Ok(WitSvid {
                id: workload_id(&svid.spiffe_id)?,
                token: svid.wit_svid,
                key: Arc::new(SigningKey::from_private_jwk(&key).map_err(|e| decode("key", e))?),
                hint: svid.hint,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_are_read_from_short_and_long_forms() {
        assert_eq!(der_element_len(&[0x30, 0x02, 1, 2]), Some(4));
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(0, 256));
        assert_eq!(der_element_len(&long), Some(260));
    }

    #[test]
    fn truncated_or_foreign_der_is_refused() {
        assert_eq!(der_element_len(&[0x30, 0x05, 1]), None);
        assert_eq!(der_element_len(&[0x02, 0x01, 1]), None);
        assert_eq!(der_element_len(&[0x30, 0x80]), None);
        assert!(split_der(&[0x30, 0x05, 1]).is_err());
    }

    #[test]
    fn bundle_keys_are_trust_domain_ids() {
        assert_eq!(
            trust_domain_of("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert!(trust_domain_of("spiffe://Bad Domain").is_err());
    }
}
