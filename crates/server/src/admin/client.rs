//! The admin API's client, used by the `wimse server ...` commands: HTTP/1.1 over the
//! admin unix socket.

use crate::api::{
    AgentPurgeRequest, AgentPurgeResponse, AgentRequest, AgentView, AuthorityRequest,
    AuthorityView, EntryRequest, EntryView, FederatedBundleView, FederationRequest, FederationView,
    MintRequest, MintResponse, Problem, RevokedTransactionView, TokenRequest, TokenResponse,
    TransactionRequest,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached (server not running, wrong path, no permission).
    #[error("cannot reach the server's admin socket `{path}`: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("admin API request failed: {0}")]
    Http(String),
    /// The server refused the request; `detail` says why.
    #[error("{detail}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The answer could not be read.
    #[error("unexpected admin API answer: {0}")]
    Decode(String),
    /// A trust domain name that would change the request's path or query if put in it.
    #[error("`{0}` is not a trust domain name: it is empty or holds `/`, `?`, `#` or `%`")]
    TrustDomainName(String),
}

/// A request body and its media type.
struct Body {
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// A client of one server's admin socket.
#[derive(Clone, Debug)]
pub struct AdminClient {
    socket: PathBuf,
}

fn encode(query: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(name);
        out.push('=');
        out.push_str(&encode_segment(value));
    }
    out
}

/// RFC 3986's unreserved characters stay; every other byte is percent-encoded, so a value
/// can never add a path segment, a query parameter or a fragment.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_segment(value: &str) -> String {
    utf8_percent_encode(value, NOT_UNRESERVED).to_string()
}

impl AdminClient {
    /// A client for the socket at `socket`.
    pub fn new(socket: &Path) -> Self {
        AdminClient {
            socket: socket.to_owned(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Bytes, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "wimse-admin");
        let bytes = match body {
            Some(body) => {
                request = request.header("content-type", body.content_type);
                body.bytes
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        if status != StatusCode::OK {
            let detail = serde_json::from_slice::<Problem>(&bytes).map_or_else(
                |_| String::from_utf8_lossy(&bytes).into_owned(),
                |p| p.detail,
            );
            return Err(ClientError::Api {
                status: status.as_u16(),
                detail,
            });
        }
        Ok(bytes)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Http(e.to_string()))?
            .map(|bytes| Body {
                content_type: "application/json",
                bytes,
            });
        decode(&self.call(method, path, body).await?)
    }

    /// Creates an entry.
    pub async fn create_entry(&self, req: &EntryRequest) -> Result<EntryView, ClientError> {
        self.json(Method::POST, "/v1/entries", Some(req)).await
    }

    /// Lists entries matching the given filters.
    pub async fn list_entries(
        &self,
        spiffe_id: Option<&str>,
        parent_id: Option<&str>,
        selectors: &[String],
    ) -> Result<Vec<EntryView>, ClientError> {
        let joined = selectors.join(",");
        let mut query = Vec::new();
        if let Some(id) = spiffe_id {
            query.push(("spiffe_id", id));
        }
        if let Some(id) = parent_id {
            query.push(("parent_id", id));
        }
        if !selectors.is_empty() {
            query.push(("selector", joined.as_str()));
        }
        self.json(
            Method::GET,
            &format!("/v1/entries{}", encode(&query)),
            None::<&()>,
        )
        .await
    }

    /// Shows one entry.
    pub async fn show_entry(&self, id: &str) -> Result<EntryView, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/entries/{}", encode_segment(id)),
            None::<&()>,
        )
        .await
    }

    /// Replaces an entry's fields.
    pub async fn update_entry(
        &self,
        id: &str,
        req: &EntryRequest,
    ) -> Result<EntryView, ClientError> {
        self.json(
            Method::PUT,
            &format!("/v1/entries/{}", encode_segment(id)),
            Some(req),
        )
        .await
    }

    /// Deletes an entry, returning what it was.
    pub async fn delete_entry(&self, id: &str) -> Result<EntryView, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/v1/entries/{}", encode_segment(id)),
            None::<&()>,
        )
        .await
    }

    /// Generates a join token.
    pub async fn create_join_token(&self, ttl: u32) -> Result<TokenResponse, ClientError> {
        self.json(Method::POST, "/v1/join-tokens", Some(&TokenRequest { ttl }))
            .await
    }

    /// The bundle as `pem` or `spiffe` JSON text.
    pub async fn bundle(&self, format: &str) -> Result<String, ClientError> {
        let bytes = self
            .call(
                Method::GET,
                &format!("/v1/bundle{}", encode(&[("format", format)])),
                None,
            )
            .await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Lists attested agents.
    pub async fn list_agents(&self) -> Result<Vec<AgentView>, ClientError> {
        self.json(Method::GET, "/v1/agents", None::<&()>).await
    }

    /// Bans an agent: it gets nothing more.
    pub async fn ban_agent(&self, spiffe_id: &str) -> Result<(), ClientError> {
        let req = AgentRequest {
            spiffe_id: spiffe_id.to_owned(),
        };
        self.json::<AgentRequest>(Method::POST, "/v1/agents/ban", Some(&req))
            .await
            .map(|_| ())
    }

    /// Revokes a transaction at the token service; answers the revocation (a second
    /// revocation answers the first's time).
    pub async fn revoke_transaction(
        &self,
        txn: &str,
    ) -> Result<RevokedTransactionView, ClientError> {
        let req = TransactionRequest {
            txn: txn.to_owned(),
        };
        self.json(Method::POST, "/v1/transactions/revoke", Some(&req))
            .await
    }

    /// Lists the revoked transactions the token service still remembers.
    pub async fn list_revoked_transactions(
        &self,
    ) -> Result<Vec<RevokedTransactionView>, ClientError> {
        self.json(Method::GET, "/v1/transactions/revoked", None::<&()>)
            .await
    }

    /// Mints a credential of `kind` (`x509`, `jwt` or `wit`) for an identity no agent
    /// serves.
    pub async fn mint(&self, kind: &str, req: &MintRequest) -> Result<MintResponse, ClientError> {
        self.json(Method::POST, &format!("/v1/mint/{kind}"), Some(req))
            .await
    }

    /// Lists every replica's signing authorities.
    pub async fn list_authorities(&self) -> Result<Vec<AuthorityView>, ClientError> {
        self.json(Method::GET, "/v1/authorities", None::<&()>).await
    }

    /// Prepares the answering replica's next key of `kind` (`x509`, `jwt` or `wit`).
    pub async fn prepare_authority(&self, kind: &str) -> Result<AuthorityView, ClientError> {
        let req = AuthorityRequest {
            kind: kind.to_owned(),
            force: false,
            id: None,
        };
        self.json(Method::POST, "/v1/authorities/prepare", Some(&req))
            .await
    }

    /// Makes the answering replica's prepared key of `kind` sign from now on.
    pub async fn activate_authority(
        &self,
        kind: &str,
        force: bool,
    ) -> Result<AuthorityView, ClientError> {
        let req = AuthorityRequest {
            kind: kind.to_owned(),
            force,
            id: None,
        };
        self.json(Method::POST, "/v1/authorities/activate", Some(&req))
            .await
    }

    /// Taints (`step` `taint`) or revokes (`revoke`) the answering replica's key `id` of
    /// `kind`.
    pub async fn retire_authority(
        &self,
        step: &str,
        kind: &str,
        id: &str,
    ) -> Result<AuthorityView, ClientError> {
        let req = AuthorityRequest {
            kind: kind.to_owned(),
            force: false,
            id: Some(id.to_owned()),
        };
        self.json(Method::POST, &format!("/v1/authorities/{step}"), Some(&req))
            .await
    }

    /// Evicts an agent: it must attest again.
    pub async fn evict_agent(&self, spiffe_id: &str) -> Result<(), ClientError> {
        let req = AgentRequest {
            spiffe_id: spiffe_id.to_owned(),
        };
        self.json::<AgentRequest>(Method::POST, "/v1/agents/evict", Some(&req))
            .await
            .map(|_| ())
    }

    /// Purges the agents whose certificates expired at least `expired_for` seconds ago
    /// and that are not banned, or with `dry_run` only names them.
    pub async fn purge_agents(
        &self,
        expired_for: i64,
        dry_run: bool,
    ) -> Result<AgentPurgeResponse, ClientError> {
        let req = AgentPurgeRequest {
            expired_for,
            dry_run,
        };
        self.json(Method::POST, "/v1/agents/purge", Some(&req))
            .await
    }

    /// Creates a federation relationship, and stores its initial bundle if it has one.
    pub async fn create_federation(
        &self,
        req: &FederationRequest,
    ) -> Result<FederationView, ClientError> {
        self.json(Method::POST, "/v1/federations", Some(req)).await
    }

    /// Lists federation relationships.
    pub async fn list_federations(&self) -> Result<Vec<FederationView>, ClientError> {
        self.json(Method::GET, "/v1/federations", None::<&()>).await
    }

    /// Shows the federation relationship with `trust_domain`.
    pub async fn show_federation(&self, trust_domain: &str) -> Result<FederationView, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/federations/{}", trust_domain_segment(trust_domain)?),
            None::<&()>,
        )
        .await
    }

    /// Replaces the federation relationship with `trust_domain`.
    pub async fn update_federation(
        &self,
        trust_domain: &str,
        req: &FederationRequest,
    ) -> Result<FederationView, ClientError> {
        self.json(
            Method::PUT,
            &format!("/v1/federations/{}", trust_domain_segment(trust_domain)?),
            Some(req),
        )
        .await
    }

    /// Deletes the federation relationship with `trust_domain`, returning what it was.
    pub async fn delete_federation(
        &self,
        trust_domain: &str,
    ) -> Result<FederationView, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/v1/federations/{}", trust_domain_segment(trust_domain)?),
            None::<&()>,
        )
        .await
    }

    /// Fetches the bundle of `trust_domain` from its endpoint now; the stored bundle, or why
    /// the fetch failed.
    pub async fn refresh_federation(
        &self,
        trust_domain: &str,
    ) -> Result<FederatedBundleView, ClientError> {
        self.json(
            Method::POST,
            &format!(
                "/v1/federations/{}/refresh",
                trust_domain_segment(trust_domain)?
            ),
            None::<&()>,
        )
        .await
    }

    /// Lists the stored bundles of foreign trust domains.
    pub async fn list_bundles(&self) -> Result<Vec<FederatedBundleView>, ClientError> {
        self.json(Method::GET, "/v1/bundles", None::<&()>).await
    }

    /// Shows the stored bundle of the foreign `trust_domain`.
    pub async fn show_federated_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<FederatedBundleView, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/bundles/{}", trust_domain_segment(trust_domain)?),
            None::<&()>,
        )
        .await
    }

    /// Stores `text` as the bundle of the foreign `trust_domain`: SPIFFE bundle JSON, or PEM
    /// certificates if `pem`.
    pub async fn set_bundle(
        &self,
        trust_domain: &str,
        text: &str,
        pem: bool,
    ) -> Result<FederatedBundleView, ClientError> {
        let (format, content_type) = if pem {
            ("pem", "application/x-pem-file")
        } else {
            ("spiffe", "application/json")
        };
        let path = format!(
            "/v1/bundles/{}{}",
            trust_domain_segment(trust_domain)?,
            encode(&[("format", format)])
        );
        let body = Body {
            content_type,
            bytes: text.as_bytes().to_vec(),
        };
        decode(&self.call(Method::PUT, &path, Some(body)).await?)
    }

    /// Deletes the stored bundle of the foreign `trust_domain`, returning what it was.
    pub async fn delete_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<FederatedBundleView, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/v1/bundles/{}", trust_domain_segment(trust_domain)?),
            None::<&()>,
        )
        .await
    }

    /// Asks whether the server is up.
    pub async fn health(&self) -> Result<(), ClientError> {
        self.call(Method::GET, "/v1/health", None).await.map(|_| ())
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
}

/// A trust domain name as a path segment. The server checks the name itself; here only what
/// would make the path name another resource (`/`, `?`, `#`, an escape) is refused.
fn trust_domain_segment(name: &str) -> Result<String, ClientError> {
    if name.is_empty() || name.contains(['/', '?', '#', '%']) {
        return Err(ClientError::TrustDomainName(name.to_owned()));
    }
    Ok(encode_segment(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_path_segments_keep_only_unreserved_characters() {
        assert_eq!(
            encode(&[("a", "spiffe://td/x y"), ("b", "~-._é&=#%")]),
            "?a=spiffe%3A%2F%2Ftd%2Fx%20y&b=~-._%C3%A9%26%3D%23%25"
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(encode_segment("../e?f"), "..%2Fe%3Ff");
    }

    #[test]
    fn trust_domain_names_that_would_change_the_path_are_refused() {
        for name in ["", "a/b", "../entries", "a?format=pem", "a#b", "a%2Fb"] {
            assert!(
                matches!(
                    trust_domain_segment(name),
                    Err(ClientError::TrustDomainName(_))
                ),
                "{name}"
            );
        }
        assert_eq!(
            trust_domain_segment("other-1.test_x").unwrap(),
            "other-1.test_x"
        );
    }
}
