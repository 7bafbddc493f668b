//! Ingress: an outside request, admitted by its OAuth access token, goes inward with a
//! Txn-Token and the gateway's own workload credentials.
//!
//! For each request, in order (the first failure answers):
//!
//! 1. The path must be unambiguous ([`check_path`]) and match a route (else 400 / 404).
//! 2. One `Authorization: Bearer` access token, verified here against the configured
//!    issuers' keys (RFC 6750: 401 with `WWW-Authenticate` when missing or invalid). This
//!    first check keeps forged and expired tokens away from the token service. With
//!    [`Gateway::with_chained_tokens`] the trust domain's own token service counts as one
//!    more issuer: the access tokens it grants for other domains' transactions
//!    (identity chaining) admit their clients here.
//! 3. Its scope must include the route's (else 403 `insufficient_scope`).
//! 4. The token service exchanges it for a Txn-Token of exactly the route's scope, with
//!    the client's address in `request_context` (`req_ip`: the TCP peer, or what trusted
//!    proxies say in `X-Forwarded-For`, [`crate::client_ip`]) and the method and path in
//!    `request_details`. The token service checks the access token again, and may refuse.
//! 5. The request goes to the route's upstream with that Txn-Token in `Txn-Token` and the
//!    gateway's WIT and proof (a WPT bound to the Txn-Token, or a message signature), or,
//!    to an `https://` upstream, over mutual TLS with the gateway's X509-SVID. The
//!    client's `Authorization` never goes inward, nor any identity, credential,
//!    Txn-Token or forwarding (`Forwarded`, `X-Forwarded-*`) header it sent: those would
//!    be taken as the gateway's word ([`strip_inward`]).
//! 6. The response comes back without the inward identity and credential headers, so
//!    outside clients never learn the internal workloads' identities.
//!
//! Both steps apply to trailers too: what may not travel in a header section may not
//! travel in a trailer section either.
//!
//! Bodies stream both ways, but for a message signature, which covers the request body's
//! digest. A route with [`UpstreamProtocol::Http2`] carries gRPC (`TE: trailers` goes on,
//! trailers come back); a gRPC call on another route is refused, and every refusal of a
//! gRPC call is told as a gRPC status ([`for_grpc`]).
//!
//! Refusals are RFC 9457 problem bodies. Every request is counted in the metrics and,
//! with an audit log, recorded with hashes of the tokens, never the tokens.

use crate::client_ip::TrustedProxies;
use crate::forward::{answer_within, watch};
use crate::metrics::GatewayMetrics;
use crate::route::{Route, Routes, check_path};
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use wimse_audit::{
    AuditLog, AuditRecord, AuthMethod, CredentialKind, CredentialRef, Decision, EventKind,
};
use wimse_core::token::access::{TrustedIssuer, VerifiedAccessToken, verify_access_token};
use wimse_core::token::exchange::ExchangeResponse;
use wimse_core::token::txn::{TXN_HEADER, TxnTokenClaims, verify_txn_token};
use wimse_core::token::{TokenError, Validation};
use wimse_remote::issuers::IssuerKeys;
use wimse_workload::PeerAllowList;
use wimse_workload::authn::CREDENTIAL_HEADERS;
use wimse_workload::client::attach;
use wimse_workload::layer::{for_grpc, is_grpc, problem};
use wimse_workload::proxy::{
    MAX_OUTBOUND_BODY, UpstreamProtocol, remove_identity_headers, strip_hop_by_hop, strip_inbound,
    strip_trailers, upstream_client, upstream_connector,
};
use wimse_workload::tls::{ClientCertificate, MtlsConnector, ServerNames};
use wimse_workload::token_service::{TokenServiceClient, TokenServiceError};
use wimse_workload::{CredentialSource, ProofMethod};

/// The realm named in `WWW-Authenticate`.
const REALM: &str = "wimse";

/// How long a token exchange may take by default before the request is refused (503): a
/// token service that hangs must not pile up outside clients.
pub const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an outside request was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The path could be read two ways.
    #[error("ambiguous path: {0}")]
    BadPath(&'static str),
    /// No route takes the path.
    #[error("no route for this path")]
    NoRoute,
    /// No access token was sent.
    #[error("an access token is required (Authorization: Bearer)")]
    NoToken,
    /// The `Authorization` header is not one bearer token.
    #[error("{0}")]
    BadAuthorization(&'static str),
    /// The access token did not verify.
    #[error("the access token is invalid: {0}")]
    InvalidToken(String),
    /// The access token lacks the route's scope.
    #[error("the access token lacks scope `{0}`")]
    InsufficientScope(String),
    /// The token service refused the exchange for a reason that is the gateway's, not
    /// the client's (for instance, the gateway is not one of its requesters).
    #[error("the token service refused: {0}")]
    ExchangeRefused(String),
    /// The token service could not be reached, or the gateway has no identity yet.
    #[error("the token service is unavailable: {0}")]
    TokenServiceUnavailable(String),
    /// A gRPC call on a route whose upstream is spoken to in HTTP/1.1, which cannot carry
    /// gRPC (its trailers).
    #[error("route `{0}` speaks HTTP/1.1 to its upstream; gRPC needs `http2 = true`")]
    GrpcNeedsHttp2(String),
    /// The request body is unreadable, or larger than the gateway takes.
    #[error("request body unreadable: {0}")]
    Body(String),
    /// The request body is larger than the route takes: announced so, or grown so as it
    /// streamed (then the upstream saw its request cut off).
    #[error("the request body{} is larger than this route takes ({max} bytes)",
        announced.map(|n| format!(" ({n} bytes)")).unwrap_or_default())]
    BodyTooLarge {
        /// What `Content-Length` said, if it was that.
        announced: Option<u64>,
        /// The route's `max_body`.
        max: u64,
    },
    /// The gateway's own credentials could not be attached.
    #[error("cannot attach the gateway's credentials: {0}")]
    NoCredentials(String),
    /// The upstream did not answer.
    #[error("upstream unavailable: {0}")]
    Upstream(String),
    /// The upstream did not start answering within the route's timeout.
    #[error("the upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
}

impl Refusal {
    /// The problem code, also the metrics' `outcome`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadPath(_) => "ambiguous-path",
            Self::NoRoute => "no-route",
            Self::NoToken => "missing-access-token",
            Self::BadAuthorization(_) => "malformed-authorization",
            Self::InvalidToken(_) => "invalid-token",
            Self::InsufficientScope(_) => "insufficient-scope",
            Self::ExchangeRefused(_) => "token-exchange-refused",
            Self::TokenServiceUnavailable(_) => "token-service-unavailable",
            Self::GrpcNeedsHttp2(_) => "grpc-needs-http2",
            Self::Body(_) => "body-unreadable",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::NoCredentials(_) => "no-credentials",
            Self::Upstream(_) => "upstream-unavailable",
            Self::UpstreamTimeout(_) => "upstream-timeout",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadPath(_) | Self::BadAuthorization(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoToken | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::ExchangeRefused(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::TokenServiceUnavailable(_) | Self::NoCredentials(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Body(_) | Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::GrpcNeedsHttp2(_) => StatusCode::NOT_IMPLEMENTED,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3), for refusals of the access token.
    fn challenge(&self) -> Option<String> {
        let (error, extra) = match self {
            Self::NoToken => return Some(format!("Bearer realm=\"{REALM}\"")),
            Self::BadAuthorization(_) => ("invalid_request", String::new()),
            Self::InvalidToken(_) => ("invalid_token", String::new()),
            Self::InsufficientScope(scope) => (
                "insufficient_scope",
                format!(", scope=\"{}\"", quotable(scope)),
            ),
            _ => return None,
        };
        Some(format!(
            "Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\"{}\"{extra}",
            quotable(&self.to_string())
        ))
    }

    fn response(&self) -> Response<Body> {
        let title = match self.status() {
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST => "client authentication failed",
            StatusCode::FORBIDDEN => "not authorized",
            StatusCode::NOT_FOUND => "not found",
            StatusCode::PAYLOAD_TOO_LARGE => "request body refused",
            StatusCode::NOT_IMPLEMENTED => "not supported on this route",
            _ => "gateway unavailable",
        };
        let mut response = problem(self.status(), self.code(), title, &self.to_string());
        if let Some(challenge) = self.challenge()
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// `text` as RFC 6750 allows inside a quoted `error_description`: printable ASCII without
/// `"` and `\`.
fn quotable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Whether `error` (a request that failed on its way) failed because its body grew past
/// the route's limit.
fn over_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// What `Content-Length` says, when it says one number.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The one bearer token of `headers`.
fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Refusal::NoToken);
    };
    if values.next().is_some() {
        return Err(Refusal::BadAuthorization(
            "send one Authorization header, not several",
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| Refusal::BadAuthorization("the Authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Refusal::BadAuthorization(
            "the Authorization header must be `Bearer <access token>`",
        )),
    }
}

/// The gateway's ingress.
pub struct Gateway {
    routes: Routes,
    issuers: Arc<IssuerKeys>,
    accept_chained: bool,
    trusted_proxies: TrustedProxies,
    token_service: TokenServiceClient,
    source: CredentialSource,
    proof: ProofMethod,
    http1: Clients,
    http2: Clients,
    audit: Option<Arc<AuditLog>>,
    metrics: Arc<GatewayMetrics>,
    exchange_timeout: std::time::Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.routes)
            .field("proof", &self.proof)
            .finish_non_exhaustive()
    }
}

/// What is known of an admitted request, for the audit record.
struct Admitted {
    access: VerifiedAccessToken,
    txn: ExchangeResponse,
    claims: TxnTokenClaims,
}

impl Gateway {
    /// A gateway over `routes` admitting access tokens of `issuers`, exchanging them at
    /// `token_service`, and proving itself inward with `source`'s credentials by `proof`.
    pub fn new(
        routes: Routes,
        issuers: Arc<IssuerKeys>,
        token_service: TokenServiceClient,
        source: CredentialSource,
        proof: ProofMethod,
    ) -> Self {
        let metrics = Arc::new(GatewayMetrics::default().with_issuers(&issuers));
        Gateway {
            http1: Clients::new(&source, UpstreamProtocol::Http1),
            http2: Clients::new(&source, UpstreamProtocol::Http2),
            routes,
            issuers,
            accept_chained: false,
            trusted_proxies: TrustedProxies::default(),
            token_service,
            source,
            proof,
            audit: None,
            metrics,
            exchange_timeout: EXCHANGE_TIMEOUT,
        }
    }

    /// Refuses a request (503) whose token exchange takes longer than `timeout`
    /// (default [`EXCHANGE_TIMEOUT`]).
    #[must_use]
    pub fn with_exchange_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.exchange_timeout = timeout;
        self
    }

    /// Also admits the access tokens this trust domain's token service issues for other
    /// domains' grants (identity chaining), verified with the trust domain's current
    /// `jwt-svid` keys as the agent hands them out.
    #[must_use]
    pub fn with_chained_tokens(mut self) -> Self {
        self.accept_chained = true;
        self
    }

    /// Takes the client's address (`req_ip`) from the `X-Forwarded-For` of `proxies`
    /// (see [`TrustedProxies::client`]).
    #[must_use]
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Records every request in `log`.
    #[must_use]
    pub fn with_audit(mut self, log: Arc<AuditLog>) -> Self {
        self.audit = Some(log);
        self
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }

    /// The ingress router. Serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so that the client's address
    /// reaches the Txn-Token; without it, `req_ip` is left out.
    pub fn router(self) -> axum::Router {
        let gateway = Arc::new(self);
        axum::Router::new().fallback(move |request: Request<Body>| {
            let gateway = Arc::clone(&gateway);
            async move { gateway.handle(request).await }
        })
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        // Bodies are not `Sync`: only the head is borrowed across the exchange.
        let (parts, body) = request.into_parts();
        let grpc = is_grpc(&parts.headers);
        let access_hash = bearer(&parts.headers)
            .ok()
            .map(|t| CredentialRef::from_token(CredentialKind::AccessToken, t));
        let path = parts.uri.path().to_owned();
        let (outcome, admitted) = match self.admit(&parts, grpc).await {
            Ok((route, admitted)) => {
                let forwarded = self
                    .forward(route, &admitted.txn.access_token, parts, body)
                    .await;
                (forwarded, Some(admitted))
            }
            Err(refusal) => (Err(refusal), None),
        };
        let code = outcome.as_ref().map_or_else(Refusal::code, |_| "forwarded");
        self.metrics.request(code);
        self.record(
            &path,
            access_hash,
            admitted.as_ref(),
            outcome.as_ref().err(),
        );
        outcome.unwrap_or_else(|refusal| {
            tracing::info!(path, reason = %refusal, "outside request refused");
            if grpc {
                for_grpc(refusal.response())
            } else {
                refusal.response()
            }
        })
    }

    /// With [`Gateway::with_chained_tokens`], this trust domain's token service as an
    /// issuer, built from the current bundle so that its key rotation needs nothing more.
    fn own_token_service(&self) -> Option<TrustedIssuer> {
        if !self.accept_chained {
            return None;
        }
        let current = self.source.current();
        let td = current.id()?.trust_domain();
        current
            .jwt_bundles
            .get(td)
            .map(TrustedIssuer::token_service_of)
    }

    /// Steps 1 to 4: the route, the access token, its scope, and the Txn-Token; a `grpc`
    /// call only on a route that can carry it.
    async fn admit(
        &self,
        request: &http::request::Parts,
        grpc: bool,
    ) -> Result<(&Route, Admitted), Refusal> {
        let path = request.uri.path();
        check_path(path).map_err(Refusal::BadPath)?;
        let route = self.routes.find(path).ok_or(Refusal::NoRoute)?;
        let token = bearer(&request.headers)?;
        let now = wimse_core::token::unix_now();
        let own = self.own_token_service();
        let verify = || {
            let held = self.issuers.current();
            verify_access_token(token, held.iter().chain(own.as_ref()), &Validation::at(now))
                .map(|(_, access)| access)
        };
        let mut verified = verify();
        // A login server's key not held yet (it may have rotated): fetched, and the token
        // verified once more, before its first token is refused.
        if matches!(verified, Err(TokenError::UnknownKey { .. }))
            && self.issuers.prepare(token).await
        {
            verified = verify();
        }
        let access = verified.map_err(|e| Refusal::InvalidToken(e.to_string()))?;
        check_binding(&access, request.extensions.get::<ClientCertificate>())?;
        if !route.scope().is_subset_of(&access.scope) {
            return Err(Refusal::InsufficientScope(route.scope().to_string()));
        }
        if grpc && !route.protocol().carries_grpc() {
            return Err(Refusal::GrpcNeedsHttp2(route.prefix().to_owned()));
        }
        if let Some(max) = route.max_body()
            && let Some(size) = content_length(&request.headers)
            && size > max
        {
            return Err(Refusal::BodyTooLarge {
                announced: Some(size),
                max,
            });
        }
        let mut context = Map::new();
        if let Some(ConnectInfo(peer)) = request.extensions.get::<ConnectInfo<SocketAddr>>() {
            let client = self.trusted_proxies.client(peer.ip(), &request.headers);
            context.insert("req_ip".into(), Value::String(client.to_string()));
        }
        let details = json!({ "method": request.method.as_str(), "path": path });
        let started = Instant::now();
        let exchange = self.token_service.start(
            token,
            route.scope(),
            Some(context),
            details.as_object().cloned(),
        );
        let exchanged = tokio::time::timeout(self.exchange_timeout, exchange)
            .await
            .map_err(|_| {
                Refusal::TokenServiceUnavailable(format!(
                    "no answer within {} ms",
                    self.exchange_timeout.as_millis()
                ))
            })?;
        self.metrics.exchange(started.elapsed().as_secs_f64());
        let txn = exchanged.map_err(|e| match e {
            TokenServiceError::Refused {
                error, description, ..
            } => match error.as_str() {
                "invalid_scope" => Refusal::InsufficientScope(route.scope().to_string()),
                "invalid_request" | "invalid_grant" => Refusal::InvalidToken(description),
                _ => Refusal::ExchangeRefused(format!("{error}: {description}")),
            },
            other => Refusal::TokenServiceUnavailable(other.to_string()),
        })?;
        // The answer came over mTLS from the trust domain's server; checking it anyway
        // means nothing unverified goes inward, and gives the audit record its `txn`.
        let creds = self.source.current();
        let own = creds
            .id()
            .ok_or_else(|| Refusal::NoCredentials("no workload identity yet".into()))?;
        let claims = verify_txn_token(
            &txn.access_token,
            &creds.jwt_bundles,
            own.trust_domain(),
            &Validation::at(now),
        )
        .map_err(|e| Refusal::ExchangeRefused(format!("the issued Txn-Token: {e}")))?;
        Ok((
            route,
            Admitted {
                access,
                txn,
                claims,
            },
        ))
    }

    /// Steps 5 and 6. The body streams through, but for a message signature, which
    /// covers its digest: then it is read first, up to [`MAX_OUTBOUND_BODY`].
    async fn forward(
        &self,
        route: &Route,
        txn_token: &str,
        mut parts: http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, Refusal> {
        let target = route.target(parts.uri.path(), parts.uri.query());
        parts.uri = target
            .parse()
            .map_err(|e| Refusal::Upstream(format!("`{target}`: {e}")))?;
        let protocol = route.protocol();
        protocol.strip_for_forwarding(&mut parts.headers, strip_inward);
        parts.headers.insert(
            TXN_HEADER,
            HeaderValue::from_str(txn_token)
                .map_err(|e| Refusal::ExchangeRefused(format!("the issued Txn-Token: {e}")))?,
        );
        parts.version = protocol.version();
        let clients = match protocol {
            UpstreamProtocol::Http1 => &self.http1,
            UpstreamProtocol::Http2 => &self.http2,
        };
        let body = strip_trailers(body, strip_inward);
        // A body that grows past the route's limit as it streams fails there: the upstream
        // sees its request cut off.
        let body = match route.max_body() {
            Some(max) => Body::new(http_body_util::Limited::new(
                body,
                usize::try_from(max).unwrap_or(usize::MAX),
            )),
            None => body,
        };
        let (request, sent) = if route.is_https() {
            // Mutual TLS is the proof: the upstream authenticates the gateway's X509-SVID.
            let client = clients.mtls.as_ref().ok_or_else(|| {
                Refusal::NoCredentials("the gateway has no X509-SVID for mutual TLS".into())
            })?;
            let (body, sent) = watch(body);
            (client.request(Request::from_parts(parts, body)), sent)
        } else {
            let (body, bytes) = if self.proof == ProofMethod::HttpSig {
                let bytes = http_body_util::Limited::new(body, MAX_OUTBOUND_BODY)
                    .collect()
                    .await
                    .map_err(|e| Refusal::Body(e.to_string()))?
                    .to_bytes();
                (Body::from(bytes.clone()), bytes)
            } else {
                (body, Bytes::new())
            };
            let creds = self.source.current();
            attach(
                &mut parts,
                &bytes,
                &creds,
                self.proof,
                false,
                wimse_core::token::unix_now(),
            )
            .map_err(|e| Refusal::NoCredentials(e.to_string()))?;
            let (body, sent) = watch(body);
            (
                clients.plain.request(Request::from_parts(parts, body)),
                sent,
            )
        };
        let response = answer_within(route.timeout(), &sent, request)
            .await
            .ok_or(Refusal::UpstreamTimeout(route.timeout()))?
            .map_err(|e| match route.max_body() {
                Some(max) if over_limit(&e) => Refusal::BodyTooLarge {
                    announced: None,
                    max,
                },
                _ => Refusal::Upstream(e.to_string()),
            })?;
        let (mut parts, body) = response.into_parts();
        strip_outward(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            strip_trailers(body, strip_outward),
        ))
    }

    fn record(
        &self,
        path: &str,
        access: Option<CredentialRef>,
        admitted: Option<&Admitted>,
        refusal: Option<&Refusal>,
    ) {
        let Some(log) = &self.audit else { return };
        let decision = if refusal.is_some() {
            Decision::Deny
        } else {
            Decision::Allow
        };
        let mut record =
            AuditRecord::new(EventKind::Authn, decision).with_method(if access.is_some() {
                AuthMethod::OauthToken
            } else {
                AuthMethod::None
            });
        if let Some(me) = self.source.current().id() {
            record = record.with_target(me.clone());
        }
        // The path is what the client asked for; an over-long one is left out, not fatal.
        let _ = record.set_resource(path);
        if let Some(access) = access {
            let _ = record.add_credential(access);
        }
        if let Some(admitted) = admitted {
            let _ = record.add_credential(CredentialRef::from_token(
                CredentialKind::TxnToken,
                &admitted.txn.access_token,
            ));
            record = record.with_transaction(&admitted.claims);
            tracing::debug!(
                sub = admitted.access.sub,
                txn = admitted.claims.txn,
                "admitted"
            );
        }
        if let Some(refusal) = refusal
            && record.set_reason(&refusal.to_string()).is_err()
        {
            // The message may quote what the record refuses; the code never does.
            let _ = record.set_reason(refusal.code());
        }
        if let Err(e) = log.append(record) {
            tracing::error!(error = %e, "audit append failed");
        }
    }
}

/// The clients to upstreams of one protocol.
struct Clients {
    /// For `http://` upstreams, where a WIT and its proof (or a message signature) go
    /// with each request.
    plain: Client<HttpConnector, Body>,
    /// For `https://` upstreams: mutual TLS with the gateway's X509-SVID, accepting only
    /// servers of the gateway's own trust domain, which must hold the name they are
    /// reached by in their SVID (RFC 9525 §6.3, SPECS §6); `None` while the gateway has no
    /// identity.
    mtls: Option<Client<MtlsConnector, Body>>,
}

impl Clients {
    fn new(source: &CredentialSource, protocol: UpstreamProtocol) -> Self {
        let mtls = source.current().id().and_then(|own| {
            let allow = PeerAllowList {
                ids: std::collections::BTreeSet::new(),
                trust_domains: [own.trust_domain().clone()].into(),
            };
            let connector = MtlsConnector::new(source, allow, ServerNames::Checked).ok()?;
            Some(upstream_client(protocol).build(connector.offering(protocol.alpn())))
        });
        Clients {
            plain: upstream_client(protocol).build(upstream_connector()),
            mtls,
        }
    }
}

/// Refuses a bound access token (RFC 7800 `cnf`) unless the connection proves it: a token
/// bound to a certificate (RFC 8705 `x5t#S256`) needs that very certificate presented in
/// the TLS handshake. A binding of another kind (a proof-of-possession key for `DPoP`, say) cannot be checked here,
/// so its token is refused rather than taken as a bearer token.
fn check_binding(
    access: &VerifiedAccessToken,
    presented: Option<&ClientCertificate>,
) -> Result<(), Refusal> {
    if access.cnf.is_none() {
        return Ok(());
    }
    let bound = |why: &str| Refusal::InvalidToken(why.to_owned());
    let expected = access.certificate_thumbprint().ok_or_else(|| {
        bound("it is bound by a method this gateway cannot check (only `x5t#S256`)")
    })?;
    let presented = presented.ok_or_else(|| {
        bound("it is bound to a client certificate; connect with that certificate (mutual TLS)")
    })?;
    if wimse_core::digest::sha256_b64(&presented.0) != expected {
        return Err(bound("it is bound to another client certificate"));
    }
    Ok(())
}

/// Headers an outside client may send that inward services could take as the gateway's
/// word about the client: its address and the scheme and host it used. The client's
/// address travels signed instead, as the Txn-Token's `rctx.req_ip`.
const FORWARDING_HEADERS: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Removes from an outside request what must not go inward: the client's access token,
/// any Txn-Token, workload identity or credential header, forwarding headers, and
/// hop-by-hop headers.
pub fn strip_inward(headers: &mut HeaderMap) {
    headers.remove(http::header::AUTHORIZATION);
    headers.remove(TXN_HEADER);
    for name in FORWARDING_HEADERS {
        headers.remove(name);
    }
    strip_inbound(headers);
}

/// Removes from a response what must not leave the trust domain: the inward identity
/// headers (who answered, and how), credentials, Txn-Tokens, and hop-by-hop headers.
pub fn strip_outward(headers: &mut HeaderMap) {
    remove_identity_headers(headers);
    for name in [TXN_HEADER].into_iter().chain(CREDENTIAL_HEADERS) {
        headers.remove(name);
    }
    strip_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use wimse_workload::proxy::{PEER_ID_HEADER, PEER_METHOD_HEADER};

    #[test]
    fn a_certificate_bound_token_needs_its_certificate() {
        use std::sync::Arc;
        let cert = |der: &[u8]| ClientCertificate(Arc::from(der));
        let token = |cnf: Option<serde_json::Value>| VerifiedAccessToken {
            iss: "https://login.example.com".into(),
            sub: "alice".into(),
            scope: wimse_core::token::exchange::Scope::parse("orders").unwrap(),
            exp: 0,
            client_id: None,
            amr: None,
            cnf: cnf.map(|v| v.as_object().unwrap().clone()),
            act: None,
        };
        let mine = wimse_core::digest::sha256_b64(b"mine");
        let bound = token(Some(json!({ "x5t#S256": mine })));
        assert!(check_binding(&bound, Some(&cert(b"mine"))).is_ok());
        for (presented, why) in [
            (None, "connect with that certificate"),
            (Some(cert(b"theirs")), "another client certificate"),
        ] {
            let err = check_binding(&bound, presented.as_ref()).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
            assert_eq!(err.code(), "invalid-token");
        }
        // A DPoP-bound token cannot be checked here: refused, even with a certificate.
        let dpop = token(Some(json!({ "jkt": "abc" })));
        assert!(check_binding(&dpop, Some(&cert(b"mine"))).is_err());
        // An unbound token needs nothing.
        assert!(check_binding(&token(None), None).is_ok());
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn one_bearer_token_is_taken_and_everything_else_refused() {
        assert_eq!(bearer(&headers(&["Bearer abc"])).unwrap(), "abc");
        assert_eq!(bearer(&headers(&["bearer  abc "])).unwrap(), "abc");
        assert!(matches!(bearer(&headers(&[])), Err(Refusal::NoToken)));
        for bad in [
            &["Basic abc"][..],
            &["Bearer"],
            &["Bearer "],
            &["Bearer a", "Bearer b"],
        ] {
            assert!(
                matches!(bearer(&headers(bad)), Err(Refusal::BadAuthorization(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn token_refusals_carry_an_rfc_6750_challenge() {
        let cases = [
            (Refusal::NoToken, 401, Some("Bearer realm=\"wimse\"")),
            (
                Refusal::InvalidToken("expired \"x\"".into()),
                401,
                Some("error=\"invalid_token\""),
            ),
            (
                Refusal::InsufficientScope("orders".into()),
                403,
                Some("scope=\"orders\""),
            ),
            (
                Refusal::BadAuthorization("x"),
                400,
                Some("error=\"invalid_request\""),
            ),
            (Refusal::NoRoute, 404, None),
            (Refusal::Upstream("down".into()), 502, None),
        ];
        for (refusal, status, challenge) in cases {
            let response = refusal.response();
            assert_eq!(response.status().as_u16(), status, "{refusal}");
            let found = response
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned());
            match challenge {
                Some(part) => assert!(found.unwrap().contains(part), "{refusal}"),
                None => assert!(found.is_none(), "{refusal}"),
            }
            assert_eq!(
                response.headers()[http::header::CONTENT_TYPE],
                "application/problem+json"
            );
        }
        assert_eq!(quotable("a \"b\"\\\n"), "a ?b???");
    }

    /// What is left of headers `names` after `strip`.
    fn kept(strip: fn(&mut HeaderMap), names: &[&'static str]) -> Vec<String> {
        let mut map = HeaderMap::new();
        for name in names {
            map.insert(*name, HeaderValue::from_static("x"));
        }
        strip(&mut map);
        map.keys().map(|k| k.as_str().to_owned()).collect()
    }

    #[test]
    fn outside_claims_never_go_in() {
        let names = [
            "authorization",
            TXN_HEADER,
            PEER_ID_HEADER,
            "workload-proof-token",
            "signature-input",
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
            "host",
            "connection",
            "accept",
        ];
        assert_eq!(kept(strip_inward, &names), ["accept"]);
    }

    #[test]
    fn inward_identity_never_goes_out() {
        let names = [
            PEER_ID_HEADER,
            PEER_METHOD_HEADER,
            TXN_HEADER,
            "workload-identity-token",
            "signature",
            "connection",
            "content-type",
        ];
        assert_eq!(kept(strip_outward, &names), ["content-type"]);
    }
}
