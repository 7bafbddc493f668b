//! Egress: internal workloads call outside services through the gateway, which
//! generalizes their identity (draft-ietf-wimse-arch, "Egress Identity Generalization").
//!
//! The egress listener sits behind a [`wimse_workload::WimseLayer`], so an internal
//! caller is authenticated (WIT+WPT, message signature, mTLS) and authorized by Cedar
//! (resource: the gateway; `context.path` names the destination) exactly as any workload
//! is, and the decision is audited with the caller's ID. What goes out is the gateway's,
//! not the caller's:
//!
//! - every internal identity and context header is removed: WIT, WPT, message signatures,
//!   `Txn-Token`, the verified-peer headers, forwarding headers, and the caller's own
//!   `Authorization`;
//! - when the route names an outside authorization server, an access token issued to the
//!   gateway (OAuth client credentials, RFC 6749 §4.4, with HTTP Basic client
//!   authentication) goes in `Authorization: Bearer`; it is fetched once and reused until
//!   30 seconds before it expires;
//! - when the route chains into another trust domain (`chain_to`), the caller's
//!   Txn-Token is carried there by identity chaining instead
//!   ([`wimse_workload::token_service::ChainClient`]): this trust domain's token service
//!   grants it for the gateway, the other domain's token service redeems the grant for an
//!   access token of that domain, and that goes in `Authorization: Bearer`. The outside
//!   service learns the transaction's subject (alice) and the gateway, not the internal
//!   caller. Tokens are reused per transaction until 30 seconds before they expire;
//! - `https://` destinations are reached with the route's own CA roots, the host name
//!   checked.
//!
//! The outside service thus sees one client (the gateway, or its OAuth client) whatever
//! internal workload called, and the internal deployment stays out of its view.

use crate::forward::{answer_within, watch};
use crate::ingress::strip_inward;
use crate::route::{Route, Routes, check_path};
use axum::body::Body;
use base64::Engine as _;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wimse_core::TrustDomain;
use wimse_core::token::exchange::Scope;
use wimse_core::token::txn::TXN_HEADER;
use wimse_workload::CredentialSource;
use wimse_workload::layer::{for_grpc, is_grpc, problem};
use wimse_workload::proxy::{
    UpstreamProtocol, strip_hop_by_hop, strip_trailers, upstream_client, upstream_connector,
};
use wimse_workload::tls::MtlsConnector;
use wimse_workload::token_service::{ChainClient, TokenServiceError};
use zeroize::Zeroizing;

/// How long before its expiry a cached outside token is replaced.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// The lifetime assumed for an outside token whose response names none.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// The longest an outside token is reused, whatever lifetime its server claims.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Why an outgoing request was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The path could be read two ways.
    #[error("ambiguous path: {0}")]
    BadPath(&'static str),
    /// No destination takes the path.
    #[error("no egress route for this path")]
    NoRoute,
    /// A gRPC call on a route whose destination is spoken to in HTTP/1.1.
    #[error("route `{0}` speaks HTTP/1.1 to its destination; gRPC needs `http2 = true`")]
    GrpcNeedsHttp2(String),
    /// The outside authorization server gave no token.
    #[error("no outside access token: {0}")]
    OutsideToken(String),
    /// The destination did not answer.
    #[error("destination unavailable: {0}")]
    Upstream(String),
    /// The destination did not start answering within the route's timeout.
    #[error("the destination did not answer within {0:?}")]
    Timeout(Duration),
    /// A chaining route was called without a Txn-Token to carry.
    #[error("this destination is reached by identity chaining: send the call's Txn-Token")]
    NoTransaction,
    /// A token service refused to carry the transaction into the other trust domain.
    #[error("identity chaining refused: {0}")]
    ChainRefused(String),
}

impl EgressError {
    /// The problem code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadPath(_) => "ambiguous-path",
            Self::NoRoute => "no-route",
            Self::GrpcNeedsHttp2(_) => "grpc-needs-http2",
            Self::OutsideToken(_) => "outside-token-unavailable",
            Self::Upstream(_) => "upstream-unavailable",
            Self::Timeout(_) => "upstream-timeout",
            Self::NoTransaction => "txn-token-required",
            Self::ChainRefused(_) => "chaining-refused",
        }
    }

    fn response(&self) -> Response<Body> {
        let (status, title) = match self {
            Self::BadPath(_) | Self::NoTransaction => (StatusCode::BAD_REQUEST, "request refused"),
            Self::NoRoute => (StatusCode::NOT_FOUND, "not found"),
            Self::GrpcNeedsHttp2(_) => (StatusCode::NOT_IMPLEMENTED, "not supported on this route"),
            Self::OutsideToken(_) | Self::Upstream(_) => {
                (StatusCode::BAD_GATEWAY, "destination unavailable")
            }
            Self::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "destination unavailable"),
            Self::ChainRefused(_) => (StatusCode::FORBIDDEN, "request refused"),
        };
        problem(status, self.code(), title, &self.to_string())
    }
}

/// An HTTP client for plain or TLS destinations.
#[derive(Clone, Debug)]
enum HttpClient {
    Plain(Client<HttpConnector, Body>),
    Tls(Client<MtlsConnector, Body>),
}

impl HttpClient {
    /// A client for `https://` URLs with `tls` (roots), or for `http://` ones without,
    /// speaking `protocol`.
    fn new(tls: Option<&Arc<rustls::ClientConfig>>, protocol: UpstreamProtocol) -> Self {
        let builder = upstream_client(protocol);
        match tls {
            Some(config) => {
                HttpClient::Tls(builder.build(
                    MtlsConnector::with_config(Arc::clone(config)).offering(protocol.alpn()),
                ))
            }
            None => HttpClient::Plain(builder.build(upstream_connector())),
        }
    }

    async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let https = request.uri().scheme_str() == Some("https");
        match (self, https) {
            (HttpClient::Plain(client), false) => client.request(request).await,
            (HttpClient::Tls(client), true) => client.request(request).await,
            (HttpClient::Plain(_), true) => return Err("https needs CA roots".into()),
            (HttpClient::Tls(_), false) => return Err("this client speaks only https".into()),
        }
        .map_err(|e| e.to_string())
    }
}

/// An OAuth client of an outside authorization server: the gateway's credentials there.
#[derive(Clone)]
pub struct OutsideClient {
    /// The token endpoint.
    pub token_endpoint: http::Uri,
    /// The client ID.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Zeroizing<String>,
    /// The scope to ask for, if any.
    pub scope: Option<String>,
}

impl std::fmt::Debug for OutsideClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("OutsideClient")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A cached outside access token.
struct Cached {
    token: Zeroizing<String>,
    refresh_at: Instant,
}

/// Outside access tokens for one route, fetched once and reused.
struct OutsideTokens {
    client: OutsideClient,
    http: HttpClient,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
}

/// How long to reuse a token whose response said `expires_in`: the default when it says
/// nothing, and never more than [`MAX_TOKEN_LIFETIME`] (a huge value must not overflow
/// the clock).
fn lifetime(expires_in: Option<u64>) -> Duration {
    expires_in.map_or(DEFAULT_TOKEN_LIFETIME, |s| {
        Duration::from_secs(s).min(MAX_TOKEN_LIFETIME)
    })
}

impl OutsideTokens {
    /// The current token, fetched when there is none or it is about to expire. Callers
    /// queue behind one fetch rather than each asking the authorization server.
    async fn get(&self) -> Result<Zeroizing<String>, EgressError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) =
            tokio::time::timeout(crate::ingress::EXCHANGE_TIMEOUT, self.fetch())
                .await
                .map_err(|_| {
                    EgressError::OutsideToken("the authorization server did not answer".into())
                })??;
        *cached = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
        });
        Ok(token)
    }

    async fn fetch(&self) -> Result<(Zeroizing<String>, Duration), EgressError> {
        let refused = |why: String| EgressError::OutsideToken(why);
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scope) = &self.client.scope {
                form.append_pair("scope", scope);
            }
            form.finish()
        };
        // RFC 6749 §2.3.1: the ID and secret are form-encoded before Basic encoding.
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = Zeroizing::new(format!(
            "{}:{}",
            encode(&self.client.client_id),
            encode(&self.client.client_secret)
        ));
        let authorization = Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(basic.as_bytes())
        ));
        let mut authorization = HeaderValue::from_str(&authorization)
            .map_err(|_| refused("the client credentials are not header text".into()))?;
        authorization.set_sensitive(true);
        let request = Request::post(self.client.token_endpoint.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, authorization)
            .body(Body::from(form))
            .map_err(|e| refused(e.to_string()))?;
        let response = self.http.send(request).await.map_err(refused)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|e| refused(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            // The error body is the server's RFC 6749 error; only its code is repeated.
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_default();
            return Err(refused(format!(
                "the authorization server answered {status} {code}"
            )));
        }
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("the token response: {e}")))?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") || answer.access_token.is_empty() {
            return Err(refused(format!(
                "expected a bearer token, got token type `{}`",
                answer.token_type
            )));
        }
        Ok((
            Zeroizing::new(answer.access_token),
            lifetime(answer.expires_in),
        ))
    }
}

/// Identity chaining for one route: where the caller's transaction is carried.
#[derive(Clone, Debug)]
pub struct ChainRoute {
    /// The destination's trust domain (federated with this one).
    pub trust_domain: TrustDomain,
    /// Its server (token service), `host:port`.
    pub server_address: String,
    /// The scope to ask for (default: what the grant carries).
    pub scope: Option<Scope>,
}

/// The most transactions whose chained tokens are kept at once.
const MAX_CHAINED: usize = 4096;

/// Access tokens of another trust domain for one route, per transaction.
struct ChainedTokens {
    client: ChainClient,
    scope: Option<Scope>,
    /// SHA-256 of the Txn-Token → its access token there.
    cached: tokio::sync::Mutex<HashMap<[u8; 32], Cached>>,
}

impl ChainedTokens {
    async fn get(&self, txn_token: &str) -> Result<Zeroizing<String>, EgressError> {
        let key = wimse_core::digest::sha256(txn_token.as_bytes());
        if let Some(c) = self.cached.lock().await.get(&key)
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let answer = tokio::time::timeout(
            crate::ingress::EXCHANGE_TIMEOUT,
            self.client.access_token(txn_token, self.scope.as_ref()),
        )
        .await
        .map_err(|_| EgressError::OutsideToken("a token service did not answer".into()))?
        .map_err(|e| match e {
            TokenServiceError::Refused {
                error, description, ..
            } => EgressError::ChainRefused(format!("{error}: {description}")),
            other => EgressError::OutsideToken(other.to_string()),
        })?;
        let token = Zeroizing::new(answer.access_token);
        let lifetime = lifetime(u64::try_from(answer.expires_in).ok());
        let now = Instant::now();
        let mut cached = self.cached.lock().await;
        cached.retain(|_, c| now < c.refresh_at);
        if cached.len() < MAX_CHAINED {
            cached.insert(
                key,
                Cached {
                    token: token.clone(),
                    refresh_at: now + lifetime.saturating_sub(REFRESH_MARGIN),
                },
            );
        }
        Ok(token)
    }
}

/// One egress route, as configured.
#[derive(Debug)]
pub struct EgressRoute {
    /// Where requests under its prefix go.
    pub route: Route,
    /// CA roots for `https://` destinations and token endpoints.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The gateway's OAuth client at the destination's authorization server, if any.
    pub outside_client: Option<OutsideClient>,
    /// Identity chaining into the destination's trust domain, if the route does that.
    pub chain: Option<ChainRoute>,
}

/// A route with its client and token cache.
struct Destination {
    http: HttpClient,
    tokens: Option<OutsideTokens>,
    chained: Option<ChainedTokens>,
}

/// The egress side: outgoing requests of internal workloads, authenticated in front by a
/// `WimseLayer`.
pub struct Egress {
    /// Each route with its client and token cache.
    routes: Routes<Destination>,
    metrics: Option<Arc<wimse_workload::Metrics>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("routes", &self.routes.iter().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// The egress over `routes`; refused when two have the same prefix. Routes that chain
    /// into another trust domain need `identity`: the gateway's credentials and its own
    /// server's address (`host:port`).
    pub fn new(
        routes: Vec<EgressRoute>,
        identity: Option<(&CredentialSource, &str)>,
    ) -> Result<Self, String> {
        let mut destinations = Vec::with_capacity(routes.len());
        for r in routes {
            let chained = match (&r.chain, identity) {
                (None, _) => None,
                (Some(chain), Some((source, home))) => Some(ChainedTokens {
                    client: ChainClient::new(
                        source,
                        home,
                        chain.trust_domain.clone(),
                        &chain.server_address,
                    )
                    .map_err(|e| e.to_string())?,
                    scope: chain.scope.clone(),
                    cached: tokio::sync::Mutex::new(HashMap::new()),
                }),
                (Some(_), None) => {
                    return Err(format!(
                        "route `{}` chains into another trust domain and needs the gateway's identity",
                        r.route.prefix()
                    ));
                }
            };
            let http = HttpClient::new(
                r.tls.as_ref().filter(|_| r.route.is_https()),
                r.route.protocol(),
            );
            let tokens = r.outside_client.map(|client| OutsideTokens {
                http: HttpClient::new(
                    r.tls
                        .as_ref()
                        .filter(|_| client.token_endpoint.scheme_str() == Some("https")),
                    UpstreamProtocol::Http1,
                ),
                client,
                cached: tokio::sync::Mutex::new(None),
            });
            destinations.push((
                r.route,
                Destination {
                    http,
                    tokens,
                    chained,
                },
            ));
        }
        Ok(Egress {
            routes: Routes::with(destinations)?,
            metrics: None,
        })
    }

    /// Counts what becomes of each request that the layer in front let through (its
    /// `outbound_requests` family: `forwarded` or the refusal's code).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<wimse_workload::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The egress router; put a `WimseLayer` in front of it.
    pub fn router(self) -> axum::Router {
        let egress = Arc::new(self);
        axum::Router::new().fallback(move |request: Request<Body>| {
            let egress = Arc::clone(&egress);
            async move {
                let grpc = is_grpc(request.headers());
                let outcome = egress.forward(request, grpc).await;
                if let Some(metrics) = &egress.metrics {
                    metrics.outbound(
                        outcome
                            .as_ref()
                            .map_or_else(EgressError::code, |_| "forwarded"),
                    );
                }
                outcome.unwrap_or_else(|e| {
                    tracing::info!(reason = %e, "outgoing request refused");
                    if grpc {
                        for_grpc(e.response())
                    } else {
                        e.response()
                    }
                })
            }
        })
    }

    /// Sends `request` on; a `grpc` call only on a route that can carry it.
    async fn forward(
        &self,
        request: Request<Body>,
        grpc: bool,
    ) -> Result<Response<Body>, EgressError> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path();
        check_path(path).map_err(EgressError::BadPath)?;
        let (route, destination) = self.routes.find_with(path).ok_or(EgressError::NoRoute)?;
        let protocol = route.protocol();
        if grpc && !protocol.carries_grpc() {
            return Err(EgressError::GrpcNeedsHttp2(route.prefix().to_owned()));
        }
        let target = route.target(path, parts.uri.query());
        parts.uri = target
            .parse()
            .map_err(|e| EgressError::Upstream(format!("`{target}`: {e}")))?;
        // Read before the inward headers go, on chaining routes only: the transaction the
        // route carries.
        let txn_token = destination
            .chained
            .as_ref()
            .and_then(|_| parts.headers.get(TXN_HEADER))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        protocol.strip_for_forwarding(&mut parts.headers, strip_inward);
        let token = match (&destination.tokens, &destination.chained) {
            (Some(tokens), _) => Some(tokens.get().await?),
            (None, Some(chained)) => Some(
                chained
                    .get(&txn_token.ok_or(EgressError::NoTransaction)?)
                    .await?,
            ),
            (None, None) => None,
        };
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
                .map_err(|_| EgressError::OutsideToken("the token is not header text".into()))?;
            value.set_sensitive(true);
            parts.headers.insert(http::header::AUTHORIZATION, value);
        }
        parts.version = protocol.version();
        let (body, sent) = watch(strip_trailers(body, strip_inward));
        let answer = destination.http.send(Request::from_parts(parts, body));
        let response = answer_within(route.timeout(), &sent, answer)
            .await
            .ok_or(EgressError::Timeout(route.timeout()))?
            .map_err(EgressError::Upstream)?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_token_lifetimes_are_bounded() {
        assert_eq!(lifetime(None), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime(Some(60)), Duration::from_secs(60));
        assert_eq!(lifetime(Some(u64::MAX)), MAX_TOKEN_LIFETIME);
        // Whatever the server says, the refresh time is a valid instant.
        let _ = Instant::now() + lifetime(Some(u64::MAX)).saturating_sub(REFRESH_MARGIN);
    }

    /// A listener that accepts connections and never answers; its port.
    async fn silent() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        port
    }

    /// A destination that answers as soon as it has the first piece of the body, with the
    /// HTTP version, the `te` header and that piece.
    async fn first_piece() -> u16 {
        let app = axum::Router::new().fallback(
            |version: http::Version, headers: http::HeaderMap, mut body: Body| async move {
                let piece = match body.frame().await {
                    Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
                    _ => bytes::Bytes::new(),
                };
                let te = headers.get("te").map(|v| v.to_str().unwrap().to_owned());
                format!(
                    "{version:?} te={} {}",
                    te.unwrap_or_default(),
                    String::from_utf8_lossy(&piece)
                )
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    #[tokio::test]
    async fn bodies_stream_and_grpc_goes_only_to_http2_routes() {
        use tower::ServiceExt;
        let port = first_piece().await;
        let route = |prefix: &str, protocol| EgressRoute {
            route: Route::outward(prefix, &format!("http://127.0.0.1:{port}"), false)
                .unwrap()
                .with_protocol(protocol),
            tls: None,
            outside_client: None,
            chain: None,
        };
        let router = Egress::new(
            vec![
                route("/h1", UpstreamProtocol::Http1),
                route("/h2", UpstreamProtocol::Http2),
            ],
            None,
        )
        .unwrap()
        .router();
        let text = |response: Response<Body>| async move {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        };

        // The destination answers while the body is still open: it was not held back.
        for (path, version) in [("/h1/up", "HTTP/1.1"), ("/h2/up", "HTTP/2.0")] {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(bytes::Bytes::from_static(b"first")).await.unwrap();
            let request = Request::post(path)
                .header("te", "trailers")
                .body(Body::new(crate::forward::Channel(rx)))
                .unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(10), router.clone().oneshot(request))
                    .await
                    .expect("no answer while the body was open")
                    .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            // `TE: trailers` is for HTTP/2 (gRPC) only; hop-by-hop otherwise.
            let te = if version == "HTTP/2.0" {
                "trailers"
            } else {
                ""
            };
            assert_eq!(text(response).await, format!("{version} te={te} first"));
            drop(tx);
        }

        // A gRPC call on the HTTP/1.1 route is refused as gRPC reads it.
        let response = router
            .oneshot(
                Request::post("/h1/pkg.Service/Method")
                    .header("content-type", "application/grpc")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "12");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(
            message.starts_with("urn:wimse:problem:grpc-needs-http2: "),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_destination_that_never_answers_costs_a_504_after_the_routes_timeout() {
        use tower::ServiceExt;
        let port = silent().await;
        let route = Route::outward("/slow", &format!("http://127.0.0.1:{port}"), false)
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        let egress = Egress::new(
            vec![EgressRoute {
                route,
                tls: None,
                outside_client: None,
                chain: None,
            }],
            None,
        )
        .unwrap();
        let started = Instant::now();
        let response = egress
            .router()
            .oneshot(Request::get("/slow/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        // Not before the timeout, and not much after it (the bound is loose: a slow machine).
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(20), "{waited:?}");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("upstream-timeout"),
            "{body:?}"
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        for (e, status, code) in [
            (EgressError::NoRoute, 404, "no-route"),
            (EgressError::BadPath("x"), 400, "ambiguous-path"),
            (
                EgressError::OutsideToken("x".into()),
                502,
                "outside-token-unavailable",
            ),
            (
                EgressError::Upstream("x".into()),
                502,
                "upstream-unavailable",
            ),
            (
                EgressError::GrpcNeedsHttp2("/x".into()),
                501,
                "grpc-needs-http2",
            ),
            (EgressError::NoTransaction, 400, "txn-token-required"),
            (
                EgressError::ChainRefused("x".into()),
                403,
                "chaining-refused",
            ),
            (
                EgressError::Timeout(Duration::from_secs(1)),
                504,
                "upstream-timeout",
            ),
        ] {
            assert_eq!(e.response().status().as_u16(), status, "{e}");
            assert_eq!(e.code(), code);
        }
    }
}
