//! The server side as a tower layer: verify → authorize → [`PeerIdentity`] (and, when the
//! request carries a valid Txn-Token, its [`Transaction`]) in the request's extensions →
//! the inner service. Each decision, allow and deny, goes to the
//! audit log when one is configured.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use wimse_workload::{AuthConfig, Authenticator, Policy, WimseLayer, PeerIdentity, CredentialSource};
//! # fn demo(source: CredentialSource) {
//! let authn = Authenticator::new(AuthConfig::new("https://orders.example.org"), source);
//! let layer = WimseLayer::new(Arc::new(authn), Arc::new(Policy::allow_authenticated()));
//! let app: axum::Router = axum::Router::new()
//!     .route("/api/orders", axum::routing::get(
//!         |axum::Extension(peer): axum::Extension<PeerIdentity>| async move { peer.id.to_string() }))
//!     .layer(layer);
//! # }
//! ```
//!
//! Refusals: 400 with an RFC 9457 `application/problem+json` body for a credential
//! failure (the WIMSE drafts advise against 401), 403 for an authorization denial. The
//! problem `type` is `urn:wimse:problem:<code>` with the code of [`AuthError::code`].
//! A gRPC caller, which reads neither, gets the same refusal as a gRPC status
//! ([`for_grpc`]): `UNAUTHENTICATED` for a credential failure, `PERMISSION_DENIED` for a
//! denial.

use crate::authn::{
    AuthError, Authenticated, Authenticator, CREDENTIAL_HEADERS, PeerIdentity, Transaction,
    WIT_HEADER,
};
use crate::authz::{AuthzRequest, Policy};
use crate::client::PROOF_LIFETIME;
use crate::httpsig::{self, RequestView, ResponseView, content_digest, sign_response};
use crate::metrics::Metrics;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use wimse_audit::{AuditLog, AuditRecord, CredentialRef, Decision, EventKind};

/// The largest body read to check a message signature's `Content-Digest`.
pub const MAX_SIGNED_BODY: usize = 16 * 1024 * 1024;

/// An RFC 9457 problem response. What it says is also in its extensions
/// ([`ProblemDetails`]), for [`for_grpc`].
pub fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Response<Body> {
    let kind = format!("urn:wimse:problem:{code}");
    let body = serde_json::json!({
        "type": kind,
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response.extensions_mut().insert(ProblemDetails {
        kind,
        detail: detail.to_owned(),
    });
    response
}

/// What a [`problem`] response says: its `type` and `detail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemDetails {
    /// The problem's `type` URI.
    pub kind: String,
    /// Its `detail`.
    pub detail: String,
}

/// Whether a request is gRPC (by its `content-type`; the listener's rule, shared).
pub use wimse_listen::is_grpc;

/// A [`problem`] response told as gRPC tells an error: a trailers-only response (200,
/// `content-type: application/grpc`, `grpc-status`, and the problem's type and detail in
/// `grpc-message`), since gRPC clients read neither an HTTP status nor a JSON body
/// (gRPC's PROTOCOL-HTTP2). Any other response is returned as it is.
pub fn for_grpc(response: Response<Body>) -> Response<Body> {
    let Some(details) = response.extensions().get::<ProblemDetails>().cloned() else {
        return response;
    };
    let code = grpc_code(response.status());
    let message = format!("{}: {}", details.kind, details.detail);
    let message = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE_ESCAPED).to_string();
    let mut grpc = Response::new(Body::empty());
    let headers = grpc.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", message);
    }
    grpc.extensions_mut().insert(details);
    grpc
}

/// The gRPC status code for a refusal's HTTP status: a credential failure (400, and the
/// gateway's 401) is `UNAUTHENTICATED`, a denial `PERMISSION_DENIED`; the rest as gRPC's
/// own HTTP mapping has them (404, no route: `UNIMPLEMENTED`).
fn grpc_code(status: StatusCode) -> u16 {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED => 16,
        StatusCode::FORBIDDEN => 7,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => 12,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => 14,
        _ => 13,
    }
}

/// `grpc-message`'s percent-encoding: bytes outside printable ASCII (the crate encodes
/// every non-ASCII byte and these controls), and `%`, as `%XX`.
const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The response to a refused credential.
pub fn authn_problem(e: &AuthError) -> Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        e.code(),
        "workload authentication failed",
        &e.to_string(),
    )
}

#[derive(Clone)]
struct Shared {
    authn: Arc<Authenticator>,
    policy: Arc<Policy>,
    audit: Option<Arc<AuditLog>>,
    metrics: Option<Arc<Metrics>>,
    sign_responses: bool,
}

/// What a response signature answers: the request's method, target and signature nonce.
struct ResponseSigner {
    method: http::Method,
    target: String,
    req_nonce: Option<String>,
}

/// The server-side layer (cheap to clone).
#[derive(Clone)]
pub struct WimseLayer {
    shared: Arc<Shared>,
}

impl WimseLayer {
    /// A layer that authenticates with `authn` and authorizes with `policy`.
    pub fn new(authn: Arc<Authenticator>, policy: Arc<Policy>) -> Self {
        WimseLayer {
            shared: Arc::new(Shared {
                authn,
                policy,
                audit: None,
                metrics: None,
                sign_responses: false,
            }),
        }
    }

    /// Records every decision in `log`.
    #[must_use]
    pub fn with_audit(self, log: Arc<AuditLog>) -> Self {
        self.changed(|shared| shared.audit = Some(log))
    }

    /// Counts every decision in `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        self.changed(|shared| shared.metrics = Some(metrics))
    }

    /// Signs every response to an authenticated request, not only those whose caller
    /// asked for it with `wimse-sign-response` (local policy, in the profile's words).
    #[must_use]
    pub fn sign_all_responses(self) -> Self {
        self.changed(|shared| shared.sign_responses = true)
    }

    /// A copy of this layer with `change` made to its settings.
    fn changed(self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = (*self.shared).clone();
        change(&mut shared);
        WimseLayer {
            shared: Arc::new(shared),
        }
    }

    /// The metrics decisions are counted in, if any.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.shared.metrics.as_ref()
    }
}

impl<S> tower::Layer<S> for WimseLayer {
    type Service = WimseService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WimseService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`WimseLayer`] wraps around an inner one.
#[derive(Clone)]
pub struct WimseService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> tower::Service<Request<Body>> for WimseService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let mut signer = None;
            let grpc = is_grpc(request.headers());
            let response = match shared.admit(request, &mut signer).await {
                Ok(request) => inner.call(request).await?,
                Err(response) => response,
            };
            // Refusals of this layer and of the forwarder behind it, told as gRPC does.
            let response = if grpc { for_grpc(response) } else { response };
            Ok(match signer {
                Some(signer) => shared.sign(&signer, response).await,
                None => response,
            })
        })
    }
}

impl Shared {
    /// Verifies and authorizes; the request to pass on, or the refusal to answer with.
    /// Once the caller is authenticated, `signer` says whether and how to sign the
    /// response (the caller asked for it, or this layer signs every response).
    async fn admit(
        &self,
        request: Request<Body>,
        signer: &mut Option<ResponseSigner>,
    ) -> Result<Request<Body>, Response<Body>> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let now = wimse_core::token::unix_now();
        let (body, bytes) = if Authenticator::needs_body(&parts.headers) {
            // Only an authenticated peer gets its body buffered.
            if let Err(e) = self.authn.check_before_body(&parts, now) {
                self.audit_authn(&parts, Err(&e));
                self.count_refusal(e.code(), started);
                return Err(authn_problem(&e));
            }
            match http_body_util::Limited::new(body, MAX_SIGNED_BODY)
                .collect()
                .await
            {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    (Body::from(bytes.clone()), bytes)
                }
                Err(e) => {
                    let e = AuthError::Body(e.to_string());
                    self.audit_authn(&parts, Err(&e));
                    self.count_refusal(e.code(), started);
                    return Err(authn_problem(&e));
                }
            }
        } else {
            (body, Bytes::new())
        };
        let authenticated = match self.authn.authenticate(&parts, &bytes, now) {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(reason = e.code(), detail = %e, "request refused: authentication");
                self.audit_authn(&parts, Err(&e));
                self.count_refusal(e.code(), started);
                return Err(authn_problem(&e));
            }
        };
        self.audit_authn(&parts, Ok(&authenticated));
        let asked = authenticated
            .signature
            .as_ref()
            .is_some_and(|s| s.sign_response);
        if asked || self.sign_responses {
            *signer = Some(ResponseSigner {
                method: parts.method.clone(),
                target: httpsig::request_target(&parts.uri).to_owned(),
                req_nonce: authenticated.signature.as_ref().map(|s| s.nonce.clone()),
            });
        }

        let creds = self.authn.source().current();
        let Some(service) = creds.id() else {
            self.count_refusal("no-identity", started);
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-identity",
                "service has no identity yet",
                "this service has no workload credentials yet",
            ));
        };
        let peer = &authenticated.peer;
        let decision = self.policy.authorize(&AuthzRequest {
            principal: &peer.id,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            service,
            auth_method: peer.method.name(),
            time: now,
            transaction: authenticated.transaction.as_ref().map(|t| &*t.0),
        });
        self.audit_authz(
            &parts,
            &authenticated,
            service,
            decision.allowed,
            &decision.reason,
        );
        if let Some(metrics) = &self.metrics {
            let outcome = if decision.allowed {
                "allowed"
            } else {
                "forbidden"
            };
            metrics.decision(outcome, peer.method.name(), started.elapsed().as_secs_f64());
        }
        if !decision.allowed {
            tracing::info!(peer = %peer.id, reason = %decision.reason, "request refused: authorization");
            return Err(problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "not authorized",
                &decision.reason,
            ));
        }
        parts.extensions.insert::<PeerIdentity>(peer.clone());
        if let Some(transaction) = authenticated.transaction {
            parts.extensions.insert::<Transaction>(transaction);
        }
        Ok(Request::from_parts(parts, body))
    }

    /// Signs `response` for the request `signer` describes, with this service's WIT key:
    /// the WIT and a `Content-Digest` are added and covered. A response that cannot be
    /// signed (no WIT, a body over [`MAX_SIGNED_BODY`]) becomes a 501 problem rather than
    /// an unsigned success.
    async fn sign(&self, signer: &ResponseSigner, response: Response<Body>) -> Response<Body> {
        let unsignable = |detail: &str| {
            tracing::warn!(detail, "response could not be signed");
            problem(
                StatusCode::NOT_IMPLEMENTED,
                "response-not-signed",
                "response cannot be signed",
                detail,
            )
        };
        let (mut parts, body) = response.into_parts();
        let bytes = match http_body_util::Limited::new(body, MAX_SIGNED_BODY)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return unsignable(&format!("response body unreadable or too large: {e}")),
        };
        let creds = self.authn.source().current();
        let Some(wit) = &creds.wit else {
            return unsignable("this service has no workload identity token");
        };
        let headers = &mut parts.headers;
        for name in CREDENTIAL_HEADERS
            .into_iter()
            .chain(["content-digest", "content-length"])
        {
            headers.remove(name);
        }
        let Ok(token) = HeaderValue::from_str(&wit.token) else {
            return unsignable("credential is not a valid header value");
        };
        headers.insert(WIT_HEADER, token);
        if !bytes.is_empty()
            && let Ok(digest) = HeaderValue::from_str(&content_digest(&bytes))
        {
            headers.insert("content-digest", digest);
        }
        let no_headers = http::HeaderMap::new();
        let view = ResponseView {
            status: parts.status.as_u16(),
            headers: &parts.headers,
            request: RequestView {
                method: signer.method.as_str(),
                request_target: &signer.target,
                headers: &no_headers,
                scheme: None,
                authority: None,
            },
        };
        let nonce = wimse_core::token::random_jti();
        let result = sign_response(
            &view,
            &wit.key,
            wimse_core::token::unix_now(),
            PROOF_LIFETIME,
            &nonce,
            signer.req_nonce.as_deref(),
        );
        let Ok((input, signature)) = result else {
            return unsignable("signing failed");
        };
        let (Ok(input), Ok(signature)) = (
            HeaderValue::from_str(&input),
            HeaderValue::from_str(&signature),
        ) else {
            return unsignable("signature is not a valid header value");
        };
        parts.headers.insert("signature-input", input);
        parts.headers.insert("signature", signature);
        Response::from_parts(parts, Body::from(bytes))
    }

    fn count_refusal(&self, reason: &'static str, started: Instant) {
        if let Some(metrics) = &self.metrics {
            metrics.refusal(reason, started.elapsed().as_secs_f64());
        }
    }

    fn base_record(
        parts: &http::request::Parts,
        kind: EventKind,
        decision: Decision,
    ) -> AuditRecord {
        let mut record = AuditRecord::new(kind, decision);
        // Values the record refuses (they look like secrets) are left out.
        let _ = record.set_resource(&format!("{} {}", parts.method, parts.uri.path()));
        if let Some(id) = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            let _ = record.set_request_id(id);
        }
        record
    }

    fn audit_authn(
        &self,
        parts: &http::request::Parts,
        outcome: Result<&Authenticated, &AuthError>,
    ) {
        let Some(log) = &self.audit else { return };
        let creds = self.authn.source().current();
        let mut record = match outcome {
            Ok(a) => {
                let mut r = Self::base_record(parts, EventKind::Authn, Decision::Allow)
                    .with_source(a.peer.id.clone())
                    .with_method(a.peer.method.audit());
                if let Some((kind, hash)) = a.credential {
                    // The record's first credential: the limit cannot refuse it.
                    let _ = r.add_credential(CredentialRef::from_sha256(kind, hash, None));
                }
                if let Some(Transaction(claims)) = &a.transaction {
                    r = r.with_transaction(claims);
                }
                r
            }
            Err(e) => {
                let mut r = Self::base_record(parts, EventKind::Authn, Decision::Deny);
                // The full message may quote what the record refuses; the code never does.
                if r.set_reason(&e.to_string()).is_err() {
                    let _ = r.set_reason(e.code());
                }
                r
            }
        };
        if let Some(me) = creds.id() {
            record = record.with_target(me.clone());
        }
        if let Err(e) = log.append(record) {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    fn audit_authz(
        &self,
        parts: &http::request::Parts,
        authenticated: &Authenticated,
        service: &wimse_core::WorkloadId,
        allowed: bool,
        reason: &str,
    ) {
        let Some(log) = &self.audit else { return };
        let peer = &authenticated.peer;
        let decision = if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        };
        let mut record = Self::base_record(parts, EventKind::Authz, decision)
            .with_source(peer.id.clone())
            .with_target(service.clone())
            .with_method(peer.method.audit());
        if let Some(Transaction(claims)) = &authenticated.transaction {
            record = record.with_transaction(claims);
        }
        let _ = record.set_reason(reason);
        if let Err(e) = log.append(record) {
            tracing::error!(error = %e, "audit append failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_refusal_is_told_to_grpc_as_a_trailers_only_status() {
        for (status, code) in [
            (StatusCode::BAD_REQUEST, "16"),
            (StatusCode::UNAUTHORIZED, "16"),
            (StatusCode::FORBIDDEN, "7"),
            (StatusCode::NOT_FOUND, "12"),
            (StatusCode::PAYLOAD_TOO_LARGE, "8"),
            (StatusCode::NOT_IMPLEMENTED, "12"),
            (StatusCode::BAD_GATEWAY, "14"),
            (StatusCode::SERVICE_UNAVAILABLE, "14"),
            (StatusCode::INTERNAL_SERVER_ERROR, "13"),
        ] {
            let told = for_grpc(problem(status, "forbidden", "t", "100% no: ü\n"));
            assert_eq!(told.status(), StatusCode::OK);
            assert_eq!(told.headers()["content-type"], "application/grpc");
            assert_eq!(told.headers()["grpc-status"], code, "{status}");
            // Percent-encoded as gRPC says: `%`, non-ASCII and control bytes.
            assert_eq!(
                told.headers()["grpc-message"],
                "urn:wimse:problem:forbidden: 100%25 no: %C3%BC%0A"
            );
        }
        // A response that is not a refusal of ours (the service's own) passes as it is.
        let mut theirs = Response::new(Body::from("x"));
        *theirs.status_mut() = StatusCode::FORBIDDEN;
        assert_eq!(for_grpc(theirs).status(), StatusCode::FORBIDDEN);
    }
}
