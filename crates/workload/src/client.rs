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

use crate::authn::{AuthMethod, CREDENTIAL_HEADERS, PeerIdentity, WIT_HEADER, WPT_HEADER, single};
use crate::httpsig::{self, RequestSigning, RequestView, ResponsePolicy, ResponseView, SigError};
use crate::source::{CredentialSource, Credentials};
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Either, Full};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use wimse_core::token::Validation;
use wimse_core::token::txn::TXN_HEADER;
use wimse_core::token::wit::{WitCache, WitProfile};
use wimse_core::token::wpt::{RequestBinding, issue_wpt};

/// The lifetime of a WPT or message signature this client makes, seconds.
pub const PROOF_LIFETIME: i64 = 60;

/// The largest response body read to check a response signature's `Content-Digest`.
pub const MAX_SIGNED_RESPONSE: usize = 16 * 1024 * 1024;

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
    /// The response was refused.
    #[error(transparent)]
    Response(ResponseError),
}

/// The audience of a request: its absolute target URI without query and fragment, in
/// [`wimse_core::token::normal_target_uri`] form.
pub fn audience(uri: &http::Uri) -> Result<String, ClientError> {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ClientError::RelativeUri);
    };
    let written = format!("{scheme}://{authority}{}", uri.path());
    // In normal form (lowercase host, no default port), which any verifier takes.
    Ok(wimse_core::token::normal_target_uri(&written).unwrap_or(written))
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
    attach(parts, body, creds, method, false, now).map(|_| ())
}

/// What a client keeps of a request it sent, to check the response with
/// [`check_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRequest {
    /// The method.
    pub method: http::Method,
    /// The request target (path and query).
    pub target: String,
    /// The nonce of the request's message signature, when it was signed so.
    pub nonce: Option<String>,
    /// Whether the server was asked to sign its response (`wimse-sign-response`).
    pub sign_response: bool,
}

impl SentRequest {
    /// The request `parts` describe, not (yet) signed.
    pub fn new(parts: &http::request::Parts, sign_response: bool) -> Self {
        SentRequest {
            method: parts.method.clone(),
            target: httpsig::request_target(&parts.uri).to_owned(),
            nonce: None,
            sign_response,
        }
    }

    /// Whether a response with `headers` must go through [`check_response`] (and its body
    /// be read for that): it is signed, or a signature was asked for.
    pub fn needs_check(&self, headers: &http::HeaderMap) -> bool {
        self.sign_response || is_signed(headers)
    }
}

fn is_signed(headers: &http::HeaderMap) -> bool {
    headers.contains_key("signature-input") || headers.contains_key("signature")
}

/// Reads a response body whole (up to [`MAX_SIGNED_RESPONSE`]) for [`check_response`].
pub async fn read_for_check<B>(body: B) -> Result<Bytes, ResponseError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    http_body_util::Limited::new(body, MAX_SIGNED_RESPONSE)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| ResponseError::Body(e.to_string()))
}

/// [`attach_proof`], returning what [`check_response`] needs. With
/// [`ProofMethod::HttpSig`], `sign_response` asks the server to sign its response
/// (`wimse-sign-response`); the profile defines that for message signatures only, so it
/// is refused with a WPT.
pub fn attach(
    parts: &mut http::request::Parts,
    body: &[u8],
    creds: &Credentials,
    method: ProofMethod,
    sign_response: bool,
    now: i64,
) -> Result<SentRequest, ClientError> {
    if sign_response && method != ProofMethod::HttpSig {
        return Err(ClientError::Sign(
            "a signed response can only be asked for with an HTTP message signature".into(),
        ));
    }
    let wit = creds.wit.as_ref().ok_or(ClientError::NoCredentials)?;
    let mut sent = SentRequest::new(parts, sign_response);
    let audience = audience(&parts.uri)?;
    let headers = &mut parts.headers;
    for name in CREDENTIAL_HEADERS {
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
            let view = RequestView {
                method: parts.method.as_str(),
                request_target: &sent.target,
                headers: &parts.headers,
                scheme: parts.uri.scheme_str(),
                authority: parts.uri.authority().map(http::uri::Authority::as_str),
            };
            let nonce = wimse_core::token::random_jti();
            let signing = RequestSigning {
                audience: &audience,
                created: now,
                lifetime: PROOF_LIFETIME,
                nonce: &nonce,
                sign_response,
            };
            let (input, signature) = httpsig::sign_request(&view, &wit.key, &signing)
                .map_err(|e| ClientError::Sign(e.to_string()))?;
            parts.headers.insert("signature-input", header(&input)?);
            parts.headers.insert("signature", header(&signature)?);
            sent.nonce = Some(nonce);
        }
    }
    Ok(sent)
}

/// Why a response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// A signed response was asked for and the response is not signed.
    #[error("the response is not signed, and a signed response was required")]
    Unsigned,
    /// The responder's `Workload-Identity-Token` is missing, repeated or invalid.
    #[error("responder's workload identity token: {0}")]
    Wit(String),
    /// The response signature is refused.
    #[error("response signature: {0}")]
    Signature(SigError),
    /// The response body could not be read for its digest.
    #[error("response body could not be read: {0}")]
    Body(String),
}

/// Checks the response to `sent`: a response that carries a message signature must carry
/// the responder's WIT (verified against `creds`' WIT bundles, through `wits`) and a
/// signature by its key over the response and `sent` (with `wimse-req-nonce` = the
/// request's nonce when it was required); one that does not is refused if `sent` asked for
/// a signature. Returns the verified responder, if the response was signed.
pub fn check_response(
    sent: &SentRequest,
    response: &http::response::Parts,
    body: &[u8],
    creds: &Credentials,
    wits: &WitCache,
    now: i64,
) -> Result<Option<PeerIdentity>, ResponseError> {
    let headers = &response.headers;
    if !is_signed(headers) {
        return if sent.sign_response {
            Err(ResponseError::Unsigned)
        } else {
            Ok(None)
        };
    }
    let wit = single(headers, WIT_HEADER)
        .ok()
        .flatten()
        .ok_or_else(|| ResponseError::Wit("must appear exactly once, as visible ASCII".into()))?;
    let validation = Validation::at(now);
    let verified = wits
        .verify(
            wit,
            &creds.wit_bundles,
            creds.bundle_generation,
            WitProfile::Spiffe,
            &validation,
        )
        .map_err(|e| ResponseError::Wit(e.to_string()))?;
    let no_headers = http::HeaderMap::new();
    let view = ResponseView {
        status: response.status.as_u16(),
        headers,
        request: RequestView {
            method: sent.method.as_str(),
            request_target: &sent.target,
            headers: &no_headers,
            scheme: None,
            authority: None,
        },
    };
    let policy = ResponsePolicy {
        req_nonce: sent.nonce.as_deref(),
        require_req_nonce: sent.sign_response,
        now,
        leeway: validation.leeway,
        max_lifetime: validation.max_proof_lifetime,
    };
    httpsig::verify_response(
        &view,
        body,
        &verified.holder_key,
        verified.holder_alg,
        &policy,
    )
    .map_err(ResponseError::Signature)?;
    Ok(Some(PeerIdentity {
        id: verified.workload_id().clone(),
        method: AuthMethod::HttpSig,
    }))
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
    sign_response: bool,
    wits: Arc<WitCache>,
}

impl WimseClientLayer {
    /// Attaches proofs of `method` made from `source`'s current credentials, and checks
    /// every response that comes back signed.
    pub fn new(source: CredentialSource, method: ProofMethod) -> Self {
        WimseClientLayer {
            source,
            method,
            sign_response: false,
            wits: Arc::new(WitCache::new(1_000)),
        }
    }

    /// Asks every server for a signed response and refuses a response that is not
    /// (message signatures only; see [`attach`]).
    #[must_use]
    pub fn require_signed_responses(mut self) -> Self {
        self.sign_response = true;
        self
    }
}

impl<S> tower::Layer<S> for WimseClientLayer {
    type Service = WimseClient<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WimseClient {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service that attaches proofs, calls the inner service, and checks the response.
#[derive(Clone, Debug)]
pub struct WimseClient<S> {
    inner: S,
    layer: WimseClientLayer,
}

/// The body of a response that passed [`WimseClient`]: the inner service's own when the
/// response was not signed, else the bytes the signature was checked over.
pub type CheckedBody<B> = Either<B, Full<Bytes>>;

impl<S, B> tower::Service<Request<Full<Bytes>>> for WimseClient<S>
where
    S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<CheckedBody<B>>;
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ClientError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| ClientError::Inner(e.into()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let creds = layer.source.current();
            let (mut parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            let sent = attach(
                &mut parts,
                &body,
                &creds,
                layer.method,
                layer.sign_response,
                wimse_core::token::unix_now(),
            )?;
            let response = inner
                .call(Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(|e| ClientError::Inner(e.into()))?;
            let (parts, body) = response.into_parts();
            if !sent.needs_check(&parts.headers) {
                return Ok(http::Response::from_parts(parts, Either::Left(body)));
            }
            let bytes = read_for_check(body).await.map_err(ClientError::Response)?;
            check_response(
                &sent,
                &parts,
                &bytes,
                &creds,
                &layer.wits,
                wimse_core::token::unix_now(),
            )
            .map_err(ClientError::Response)?;
            Ok(http::Response::from_parts(
                parts,
                Either::Right(Full::new(bytes)),
            ))
        })
    }
}
