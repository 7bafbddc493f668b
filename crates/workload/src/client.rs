//! The client side: attach this workload's proof to outgoing requests.
//!
//! [`attach_proof`] puts the current WIT in `Workload-Identity-Token` and either a fresh
//! WPT (`aud` = the target URI without query, a random `jti`, a short `exp`, `wth`, and
//! `ath`/`tth` when the request carries a bearer token / Txn-Token) or an HTTP Message
//! Signature. [`WimseClientLayer`] does it for every request through a tower service such
//! as hyper-util's client ([`http_client`]):
//!
//! ```no_run
//! # use wimse_workload::{CredentialSource, ProofMethod, WimseClientLayer, http_client};
//! # async fn demo(source: CredentialSource) -> Result<(), Box<dyn std::error::Error>> {
//! use tower::{Layer, ServiceExt};
//! let client = WimseClientLayer::new(source, ProofMethod::WitWpt).layer(http_client());
//! let request = http::Request::get("http://orders.internal:8080/api/orders")
//!     .body(http_body_util::Full::new(bytes::Bytes::new()))?;
//! let response = client.oneshot(request).await?;
//! # Ok(()) }
//! ```

use crate::authn::{WIT_HEADER, WPT_HEADER};
use crate::httpsig::{self, RequestView};
use crate::source::{CredentialSource, Credentials};
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use wimse_core::token::txn::TXN_HEADER;
use wimse_core::token::wpt::{RequestBinding, issue_wpt};

/// The lifetime of a WPT or message signature this client makes, seconds.
pub const PROOF_LIFETIME: i64 = 60;

/// Which proof to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofMethod {
    /// A Workload Proof Token.
    WitWpt,
    /// An HTTP Message Signature.
    HttpSig,
}

/// Why a proof could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The source has no WIT (yet).
    #[error("this workload has no workload identity token yet")]
    NoCredentials,
    /// The request URI is not absolute, so there is no audience to bind to.
    #[error("request uri must be absolute (scheme and authority) to bind a proof to it")]
    RelativeUri,
    /// Signing failed.
    #[error("cannot sign the proof: {0}")]
    Sign(String),
    /// The inner service failed.
    #[error(transparent)]
    Inner(Box<dyn std::error::Error + Send + Sync>),
}

/// The audience of a request: its absolute target URI without query and fragment.
pub fn audience(uri: &http::Uri) -> Result<String, ClientError> {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ClientError::RelativeUri);
    };
    Ok(format!("{scheme}://{authority}{}", uri.path()))
}

fn header(value: &str) -> Result<HeaderValue, ClientError> {
    HeaderValue::from_str(value).map_err(|e| ClientError::Sign(e.to_string()))
}

/// Attaches the WIT and a proof (`method`) for this request, replacing any credential
/// headers already there. `body` is the whole body (covered by a message signature).
pub fn attach_proof(
    parts: &mut http::request::Parts,
    body: &[u8],
    creds: &Credentials,
    method: ProofMethod,
    now: i64,
) -> Result<(), ClientError> {
    let wit = creds.wit.as_ref().ok_or(ClientError::NoCredentials)?;
    let audience = audience(&parts.uri)?;
    let headers = &mut parts.headers;
    for name in [WIT_HEADER, WPT_HEADER, "signature", "signature-input"] {
        headers.remove(name);
    }
    headers.insert(WIT_HEADER, header(&wit.token)?);
    match method {
        ProofMethod::WitWpt => {
            let access_token = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim().to_owned());
            let txn = headers
                .get(TXN_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned());
            let binding = RequestBinding {
                audience: &audience,
                access_token: access_token.as_deref(),
                txn_token: txn.as_deref(),
                other_tokens: &[],
            };
            let wpt = issue_wpt(&wit.key, &wit.token, &binding, now, PROOF_LIFETIME)
                .map_err(|e| ClientError::Sign(e.to_string()))?;
            headers.insert(WPT_HEADER, header(&wpt)?);
        }
        ProofMethod::HttpSig => {
            headers.remove("content-digest");
            if !body.is_empty() {
                headers.insert("content-digest", header(&httpsig::content_digest(body))?);
            }
            let target = parts
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str)
                .to_owned();
            let view = RequestView {
                method: parts.method.as_str(),
                request_target: &target,
                headers: &parts.headers,
            };
            let nonce = wimse_core::token::random_jti();
            let (input, signature) =
                httpsig::sign_request(&view, &wit.key, &audience, now, PROOF_LIFETIME, &nonce)
                    .map_err(|e| ClientError::Sign(e.to_string()))?;
            parts.headers.insert("signature-input", header(&input)?);
            parts.headers.insert("signature", header(&signature)?);
        }
    }
    Ok(())
}

/// A hyper-util client for plain HTTP (HTTP/1.1), the usual inner service.
pub fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// The client-side layer.
#[derive(Clone, Debug)]
pub struct WimseClientLayer {
    source: CredentialSource,
    method: ProofMethod,
}

impl WimseClientLayer {
    /// Attaches proofs of `method` made from `source`'s current credentials.
    pub fn new(source: CredentialSource, method: ProofMethod) -> Self {
        WimseClientLayer { source, method }
    }
}

impl<S> tower::Layer<S> for WimseClientLayer {
    type Service = WimseClient<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WimseClient {
            inner,
            source: self.source.clone(),
            method: self.method,
        }
    }
}

/// A service that attaches proofs, then calls the inner service.
#[derive(Clone, Debug)]
pub struct WimseClient<S> {
    inner: S,
    source: CredentialSource,
    method: ProofMethod,
}

impl<S> tower::Service<Request<Full<Bytes>>> for WimseClient<S>
where
    S: tower::Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, ClientError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| ClientError::Inner(e.into()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let creds = self.source.current();
        let method = self.method;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            attach_proof(
                &mut parts,
                &body,
                &creds,
                method,
                wimse_core::token::unix_now(),
            )?;
            inner
                .call(Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(|e| ClientError::Inner(e.into()))
        })
    }
}
