//! The sidecar proxy for services in any language (`wimse proxy inbound|outbound`).
//!
//! - **Inbound** ([`inbound_router`]): every request goes through the same [`WimseLayer`]
//!   a Rust service would use; an admitted request is forwarded to the upstream service
//!   with the verified caller in [`PEER_ID_HEADER`] (and the method in
//!   [`PEER_METHOD_HEADER`]). Both headers are removed from what the caller sent first, so
//!   a caller cannot smuggle an identity through; the credential headers are removed
//!   too (the upstream has no use for them, and they must not be replayed from there).
//! - **Outbound** ([`outbound_router`]): a plain-HTTP forward proxy for the local service.
//!   It takes absolute-form requests (`GET http://orders:8080/api/orders HTTP/1.1`, what
//!   an HTTP client configured with `http_proxy` sends), attaches this workload's WIT and a
//!   fresh WPT (or message signature) bound to that URL, and forwards them. Anyone who can
//!   reach it speaks as this workload: bind it to loopback. With
//!   [`OutboundProof::AttachOverTls`] the same proofs go over TLS to servers that prove
//!   an X509-SVID (the service's `http://` URL is sent as `https://`). With
//!   [`OutboundProof::Mtls`] it attaches nothing and carries the requests over mutual TLS
//!   with this workload's X509-SVID instead. Over either, the verified server is passed
//!   on in [`PEER_ID_HEADER`]. A response that comes back signed is checked (a bad one
//!   becomes a 502), and its verified signer is passed to the local service in
//!   [`PEER_ID_HEADER`]; with
//!   [`OutboundOptions::require_signed_responses`] an unsigned response is refused too.
//!   [`OutboundOptions::destinations`] limits where requests (and so credentials) may go,
//!   and over TLS pins the server identity expected at each. A `CONNECT host:port` (what
//!   a client configured with `https_proxy` sends) opens a plain tunnel to a listed
//!   destination, for `https://` calls outside WIMSE: nothing is attached to what the
//!   service's own TLS carries through it. Over TLS a server reached by DNS name must
//!   hold that name in its SVID ([`OutboundOptions::server_names`]).
//! - **Outbound to one server** ([`OutboundOptions::upstream`]): for clients that dial
//!   their server rather than use a proxy, such as gRPC channels, every request goes to
//!   that server with its own path, proven as above; with
//!   [`OutboundOptions::upstream_protocol`] over HTTP/2, trailers and all.
//! - To gRPC callers, both directions tell their refusals as gRPC statuses
//!   ([`crate::layer::for_grpc`]).

use crate::authn::{AuthMethod, CREDENTIAL_HEADERS, PeerAllowList, PeerIdentity};
use crate::client::{ProofMethod, SentRequest, attach, check_response, read_for_check};
use crate::httpsig;
use crate::layer::{WimseLayer, problem};
use crate::metrics::Metrics;
use crate::source::{CredentialSource, Credentials};
use crate::tls::{MtlsConnector, MtlsServer, ServerNames, TlsError};
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::BTreeMap;
use std::sync::Arc;
use wimse_core::WorkloadId;
use wimse_core::token::wit::WitCache;

/// The header carrying the verified caller's workload ID to the upstream service.
pub const PEER_ID_HEADER: &str = "x-wimse-peer-id";
/// The header carrying how the caller authenticated.
pub const PEER_METHOD_HEADER: &str = "x-wimse-peer-auth-method";
/// The largest request body the outbound proxy buffers (to sign it: with a WPT or mTLS
/// bodies stream through, whatever their size).
pub const MAX_OUTBOUND_BODY: usize = 16 * 1024 * 1024;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; and `Proxy-Authorization`,
/// which is for this proxy. `Trailer` is not one: it announces the trailers that follow.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1), and those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Identity headers that another proxy (Envoy, Istio) would have set, which services
/// moved from one may still trust: a caller must not be able to send them.
const FOREIGN_IDENTITY_HEADERS: [&str; 1] = ["x-forwarded-client-cert"];

/// Removes the headers `names` (lowercase), also when spelled with `_` for `-`: servers
/// that map header names to CGI-style variables (`HTTP_X_WIMSE_PEER_ID`) would read
/// `x_wimse_peer_id` as the same header.
fn remove_in_any_spelling(headers: &mut HeaderMap, names: &[&str]) {
    let lookalikes: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| {
            name.as_str().contains('_') && {
                let dashed = name.as_str().replace('_', "-");
                names.contains(&dashed.as_str())
            }
        })
        .cloned()
        .collect();
    for name in lookalikes {
        headers.remove(name);
    }
    for name in names {
        headers.remove(*name);
    }
}

/// Removes [`PEER_ID_HEADER`] and [`PEER_METHOD_HEADER`] in any spelling: only this
/// proxy says who called, or who answered.
pub fn remove_identity_headers(headers: &mut HeaderMap) {
    remove_in_any_spelling(headers, &[PEER_ID_HEADER, PEER_METHOD_HEADER]);
}

/// Removes what the caller must not pass to the upstream: identity headers it might try
/// to smuggle (ours in any spelling, and other proxies'), and its credentials.
pub fn strip_inbound(headers: &mut HeaderMap) {
    remove_identity_headers(headers);
    remove_in_any_spelling(headers, &FOREIGN_IDENTITY_HEADERS);
    for name in CREDENTIAL_HEADERS {
        headers.remove(name);
    }
    strip_hop_by_hop(headers);
    headers.remove(http::header::HOST);
}

/// `body` with `strip` ([`strip_inbound`], say) applied to its trailers, if it has any:
/// a header smuggled in a trailer section (HTTP/1.1 chunked, or HTTP/2) is dropped as it
/// would be from the header section.
pub fn strip_trailers<B>(body: B, strip: fn(&mut HeaderMap)) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    if body.is_end_stream() {
        // Nothing more will come, trailers neither (a GET, say): left as it is.
        return Body::new(body);
    }
    Body::new(body.map_frame(move |mut frame| {
        if let Some(trailers) = frame.trailers_mut() {
            strip(trailers);
        }
        frame
    }))
}

/// How long a CONNECT tunnel may carry nothing either way before the outbound proxy
/// closes it, by default (Envoy's TCP proxy has such a limit too): a tunnel the service
/// leaked does not hold its two sockets for ever.
pub const TUNNEL_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// How long connecting to the upstream may take before the request fails with 502.
pub const UPSTREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A plain-HTTP connector to the upstream that gives up after
/// [`UPSTREAM_CONNECT_TIMEOUT`] (a SYN to a host that is gone would wait minutes).
pub fn upstream_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
    connector
}

#[derive(Clone)]
struct Upstream {
    /// The upstream's URL without a trailing `/`, to prefix paths with.
    base: Arc<str>,
    client: Client<HttpConnector, Body>,
    protocol: UpstreamProtocol,
    metrics: Option<Arc<Metrics>>,
}

/// How a proxy speaks to the server it forwards to: the inbound proxy to its service
/// (plain text, on the same host), the outbound one to its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2, for gRPC: with prior knowledge (h2c) in plain text, by ALPN (`h2`) over
    /// TLS. `TE: trailers` is passed on and response trailers come back.
    Http2,
}

impl UpstreamProtocol {
    /// The version requests go out in.
    pub fn version(self) -> http::Version {
        match self {
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
            UpstreamProtocol::Http2 => http::Version::HTTP_2,
        }
    }

    /// Strips `headers` with `strip` ([`strip_inbound`] or [`strip_hop_by_hop`]), keeping
    /// `TE: trailers` over HTTP/2: gRPC needs it to reach the server, and it is the one
    /// value HTTP/2 allows.
    pub fn strip_for_forwarding(self, headers: &mut HeaderMap, strip: fn(&mut HeaderMap)) {
        let trailers = self == UpstreamProtocol::Http2
            && headers
                .get(http::header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip(headers);
        if trailers {
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
    }

    /// Whether it can carry a gRPC call: HTTP/1.1 cannot (no trailers in practice), so a
    /// proxy speaking it refuses gRPC rather than send a call that could only fail.
    pub fn carries_grpc(self) -> bool {
        self == UpstreamProtocol::Http2
    }

    /// The ALPN protocol a TLS client offers for it: `h2`, or `http/1.1`.
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            UpstreamProtocol::Http1 => &[b"http/1.1"],
            UpstreamProtocol::Http2 => &[b"h2"],
        }
    }
}

/// An error and its sources, as `error: source: source`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The refusal of a gRPC call by a proxy that speaks HTTP/1.1 to its server, which could
/// not carry the call's trailers: better said at once than left to fail there.
fn grpc_needs_http2() -> Response<Body> {
    problem(
        StatusCode::NOT_IMPLEMENTED,
        "grpc-needs-http2",
        "gRPC not carried",
        "this proxy speaks HTTP/1.1 to its server, which cannot carry gRPC: \
         start it with --upstream-http2",
    )
}

fn bad_gateway(e: &dyn std::fmt::Display) -> Response<Body> {
    problem(
        StatusCode::BAD_GATEWAY,
        "upstream-unavailable",
        "upstream unavailable",
        &e.to_string(),
    )
}

async fn forward_inbound(upstream: Upstream, request: Request<Body>) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let Some(peer) = parts.extensions.get::<PeerIdentity>().cloned() else {
        // The layer always inserts it; without it, fail closed.
        return problem(
            StatusCode::BAD_REQUEST,
            "missing-credentials",
            "workload authentication failed",
            "request was not authenticated",
        );
    };
    if !upstream.protocol.carries_grpc() && crate::layer::is_grpc(&parts.headers) {
        return grpc_needs_http2();
    }
    upstream
        .protocol
        .strip_for_forwarding(&mut parts.headers, strip_inbound);
    if peer.method == AuthMethod::JwtSvid || crate::authn::authorization_is_wpt(&parts.headers) {
        // A bearer JWT-SVID or a WPT there was the credential: like the WIT, not passed
        // on (Envoy's `jwt_authn` drops a verified token too unless told to forward it).
        parts.headers.remove(http::header::AUTHORIZATION);
    }
    let (Ok(id), Ok(method)) = (
        HeaderValue::from_str(peer.id.as_str()),
        HeaderValue::from_str(peer.method.name()),
    ) else {
        return bad_gateway(&"peer id is not a valid header value");
    };
    parts.headers.insert(PEER_ID_HEADER, id);
    parts.headers.insert(PEER_METHOD_HEADER, method);
    let path = httpsig::request_target(&parts.uri);
    let uri = match format!("{}{path}", upstream.base).parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return bad_gateway(&e),
    };
    parts.uri = uri;
    parts.version = upstream.protocol.version();
    let body = strip_trailers(body, strip_inbound);
    match upstream
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            response.map(Body::new)
        }
        Err(e) => {
            if let Some(metrics) = &upstream.metrics {
                metrics.upstream_errors.inc();
            }
            bad_gateway(&e)
        }
    }
}

/// The inbound proxy: `layer` in front of a forwarder to `upstream` (e.g.
/// `http://127.0.0.1:8080`). Upstream failures are counted in the layer's metrics.
pub fn inbound_router(upstream: &Uri, layer: WimseLayer) -> axum::Router {
    inbound_router_with(upstream, UpstreamProtocol::Http1, layer)
}

/// [`inbound_router`] speaking `protocol` to the upstream.
pub fn inbound_router_with(
    upstream: &Uri,
    protocol: UpstreamProtocol,
    layer: WimseLayer,
) -> axum::Router {
    forward_router(upstream, protocol, layer.metrics().cloned()).layer(layer)
}

/// The inbound proxy's forwarding half alone: it passes on requests that carry a
/// [`PeerIdentity`] in their extensions (put there by the layer in front of it) and
/// refuses every other request. [`inbound_router`] is this behind a [`WimseLayer`]; the
/// benchmark puts it behind a layer that names a fixed peer, to measure what forwarding
/// costs without authentication.
pub fn forwarder(upstream: &Uri) -> axum::Router {
    forward_router(upstream, UpstreamProtocol::Http1, None)
}

fn forward_router(
    upstream: &Uri,
    protocol: UpstreamProtocol,
    metrics: Option<Arc<Metrics>>,
) -> axum::Router {
    let mut client = Client::builder(hyper_util::rt::TokioExecutor::new());
    client.http2_only(protocol == UpstreamProtocol::Http2);
    let upstream = Upstream {
        base: upstream.to_string().trim_end_matches('/').into(),
        client: client.build(upstream_connector()),
        protocol,
        metrics,
    };
    axum::Router::new()
        .fallback(move |request: Request<Body>| forward_inbound(upstream.clone(), request))
}

/// How the outbound proxy proves this workload's identity.
#[derive(Debug, Clone)]
pub enum OutboundProof {
    /// A WIT and a proof of `ProofMethod` on each request, over plain HTTP.
    Attach(ProofMethod),
    /// The same over TLS, as SPECS §3.1 asks of a WIT and its proof: the service's
    /// `http://` request goes out as `https://` to the same host and port (443 when its URL
    /// names none), its proof bound to that URL. The server must present an X509-SVID the
    /// allow-list accepts; this workload presents its own, so that servers requiring
    /// mutual TLS take the connection too.
    AttachOverTls(ProofMethod, PeerAllowList),
    /// Mutual TLS with this workload's X509-SVID to every upstream (the service still
    /// sends plain `http://` requests), accepting the servers the allow-list names.
    Mtls(PeerAllowList),
}

impl OutboundProof {
    /// The proof attached to each request, if any (over mTLS the connection is the proof).
    fn attached(&self) -> Option<ProofMethod> {
        match self {
            OutboundProof::Attach(method) | OutboundProof::AttachOverTls(method, _) => {
                Some(*method)
            }
            OutboundProof::Mtls(_) => None,
        }
    }
}

/// The key of a destination: its host, lowercased, and its port (`default_port` when the
/// URL names none).
pub fn destination_key(authority: &http::uri::Authority, default_port: u16) -> String {
    format!(
        "{}:{}",
        authority.host().to_ascii_lowercase(),
        authority.port_u16().unwrap_or(default_port)
    )
}

/// The [`destination_key`] of an absolute URI: its port, when it names none, is its
/// scheme's (443 for `https`, else 80).
pub fn uri_destination_key(uri: &Uri) -> Option<String> {
    let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    uri.authority().map(|a| destination_key(a, default_port))
}

/// How the outbound proxy signs requests and checks responses.
#[derive(Debug, Clone)]
pub struct OutboundOptions {
    /// How each request is proven.
    pub proof: OutboundProof,
    /// Where requests may go, by [`uri_destination_key`] of the outgoing URL, each with
    /// the one server identity accepted there over TLS (`None`: the allow-list of
    /// [`OutboundProof::Mtls`] or [`OutboundProof::AttachOverTls`]).
    /// Empty: anywhere. Otherwise a request for any other destination is refused (403)
    /// and this workload's credentials never leave for it.
    pub destinations: BTreeMap<String, Option<WorkloadId>>,
    /// Ask every server for a signed response and refuse (502) one that is not
    /// ([`ProofMethod::HttpSig`] only).
    pub require_signed_responses: bool,
    /// Where to count what becomes of requests.
    pub metrics: Option<Arc<Metrics>>,
    /// How long a CONNECT tunnel may carry nothing either way before it is closed.
    pub tunnel_idle: std::time::Duration,
    /// Over TLS, whether a server reached by DNS name must hold that name in its SVID
    /// (by default it must: RFC 9525 §6.3, as SPECS §5 and §6 require).
    pub server_names: ServerNames,
    /// The one server (`host[:port]`) every request goes to, whatever URL it names, as
    /// `http://` (or over TLS `https://`) with the request's path: for clients that dial
    /// their server instead of using an HTTP proxy (a gRPC channel whose target is this
    /// sidecar). `None`: a forward proxy (absolute-form requests and CONNECT).
    pub upstream: Option<http::uri::Authority>,
    /// The HTTP version spoken to servers.
    pub upstream_protocol: UpstreamProtocol,
}

impl OutboundOptions {
    /// Requests proven by `proof`, responses checked when signed, nothing counted.
    pub fn new(proof: OutboundProof) -> Self {
        OutboundOptions {
            proof,
            destinations: BTreeMap::new(),
            require_signed_responses: false,
            metrics: None,
            tunnel_idle: TUNNEL_IDLE,
            server_names: ServerNames::Checked,
            upstream: None,
            upstream_protocol: UpstreamProtocol::Http1,
        }
    }
}

impl OutboundOptions {
    /// Refuses the destination `key` when destinations are listed and it is not one.
    fn allows(&self, key: String) -> Result<(), Refusal> {
        if self.destinations.is_empty() || self.destinations.contains_key(&key) {
            Ok(())
        } else {
            Err(Refusal::DestinationNotAllowed(key))
        }
    }
}

#[derive(Clone)]
struct Outbound {
    source: CredentialSource,
    options: OutboundOptions,
    client: OutboundClient,
    wits: Arc<WitCache>,
}

/// The outbound proxy's HTTP client: plain, or over mTLS.
#[derive(Clone)]
enum OutboundClient {
    Plain(Client<HttpConnector, Body>),
    Mtls(Client<MtlsConnector, Body>),
}

impl OutboundClient {
    fn request(&self, request: Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            OutboundClient::Plain(client) => client.request(request),
            OutboundClient::Mtls(client) => client.request(request),
        }
    }
}

async fn forward_outbound(outbound: Outbound, request: Request<Body>) -> Response<Body> {
    let grpc = crate::layer::is_grpc(request.headers());
    let (outcome, response) = if request.method() == http::Method::CONNECT {
        if outbound.options.upstream.is_some() {
            Refusal::NoTunnels.outcome()
        } else {
            tunnel(&outbound.options, request).await
        }
    } else {
        attach_and_forward(&outbound, request).await
    };
    if let Some(metrics) = &outbound.options.metrics {
        metrics.outbound(outcome);
    }
    // This proxy's own refusals, told as gRPC does to a gRPC client.
    if grpc {
        crate::layer::for_grpc(response)
    } else {
        response
    }
}

/// A `CONNECT host:port` request (RFC 9110 §9.3.6): a TCP tunnel to a listed destination
/// (port 443 unless given), for the service's `https://` calls to servers outside WIMSE.
/// Nothing is attached: the service's own TLS runs end to end inside it, so no credential
/// of this workload travels in it.
async fn tunnel(
    options: &OutboundOptions,
    mut request: Request<Body>,
) -> (&'static str, Response<Body>) {
    let uri = request.uri();
    let Some(authority) = uri
        .authority()
        .filter(|a| {
            a.port_u16().is_some() && uri.scheme().is_none() && uri.path_and_query().is_none()
        })
        .cloned()
    else {
        return Refusal::NotAProxyRequest.outcome();
    };
    if let Err(refusal) = options.allows(destination_key(&authority, 443)) {
        return refusal.outcome();
    }
    let connecting = tokio::net::TcpStream::connect(authority.as_str());
    let upstream = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return ("upstream-error", bad_gateway(&e)),
        Err(_) => return ("upstream-error", bad_gateway(&"connecting timed out")),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let idle = options.tunnel_idle;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => relay(hyper_util::rt::TokioIo::new(upgraded), upstream, idle).await,
            Err(e) => tracing::debug!(error = %e, "a CONNECT tunnel was not taken up"),
        }
    });
    ("tunneled", Response::new(Body::empty()))
}

/// Carries bytes both ways between a tunnel's two ends until both have finished sending,
/// one side fails, or nothing moves either way for `idle` (a write that long blocked
/// counts as nothing moving). Each end is told when the other has finished.
async fn relay<C>(client: C, upstream: tokio::net::TcpStream, idle: std::time::Duration)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let (mut up, mut down) = (vec![0u8; 16 << 10], vec![0u8; 16 << 10]);
    let (mut up_open, mut down_open) = (true, true);
    while up_open || down_open {
        let moved = tokio::select! {
            read = client_read.read(&mut up), if up_open => {
                pass_on(read, &up, &mut up_open, &mut upstream_write, idle).await
            }
            read = upstream_read.read(&mut down), if down_open => {
                pass_on(read, &down, &mut down_open, &mut client_write, idle).await
            }
            () = tokio::time::sleep(idle) => false,
        };
        if !moved {
            return;
        }
    }
}

/// One direction of [`relay`]: what a read into `buf` gave goes on to `to`, within
/// `idle`; at the end of the input (or a failed read) `to` is told, and `open` cleared.
/// Whether the tunnel may go on.
async fn pass_on<W>(
    read: std::io::Result<usize>,
    buf: &[u8],
    open: &mut bool,
    to: &mut W,
    idle: std::time::Duration,
) -> bool
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    match read {
        Ok(0) | Err(_) => {
            *open = false;
            to.shutdown().await.is_ok()
        }
        Ok(n) => {
            let data = buf.get(..n).unwrap_or_default();
            matches!(
                tokio::time::timeout(idle, to.write_all(data)).await,
                Ok(Ok(()))
            )
        }
    }
}

/// Why the outbound proxy sent nothing for a request.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// It is neither an absolute-form request for an `http://` URL nor a `CONNECT` to a
    /// `host:port`.
    NotAProxyRequest,
    /// Its destination (the key) is not one of [`OutboundOptions::destinations`].
    DestinationNotAllowed(String),
    /// A CONNECT to a proxy that sends everything to one upstream.
    NoTunnels,
    /// A gRPC call to a proxy that speaks HTTP/1.1 to its servers.
    GrpcNeedsHttp2,
}

impl Refusal {
    /// The metrics' outcome and the response.
    fn outcome(self) -> (&'static str, Response<Body>) {
        match self {
            Refusal::NotAProxyRequest => (
                "refused",
                problem(
                    StatusCode::BAD_REQUEST,
                    "not-a-proxy-request",
                    "absolute http uri required",
                    "send absolute-form requests for http:// urls, or CONNECT host:port for a tunnel",
                ),
            ),
            Refusal::NoTunnels => (
                "refused",
                problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "no-tunnels",
                    "no tunnels here",
                    "this proxy forwards every request to its one upstream and opens no tunnels",
                ),
            ),
            Refusal::GrpcNeedsHttp2 => ("refused", grpc_needs_http2()),
            Refusal::DestinationNotAllowed(key) => (
                "destination-not-allowed",
                problem(
                    StatusCode::FORBIDDEN,
                    "destination-not-allowed",
                    "destination not allowed",
                    &format!("`{key}` is not a destination of this proxy: nothing was sent"),
                ),
            ),
        }
    }
}

/// Where a request from the service for `uri` goes: that `http://` URL (or, with
/// [`OutboundOptions::upstream`], its path on the upstream), or over TLS its `https://`
/// form, when it is for a destination the options allow.
fn outgoing_uri(options: &OutboundOptions, uri: &Uri) -> Result<Uri, Refusal> {
    let asked = match &options.upstream {
        // Sent to this proxy as if it were the server (origin-form, or HTTP/2's URL of
        // this proxy): the path goes to the upstream (not `*`: no `OPTIONS *` there).
        Some(upstream) => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            if !path.starts_with('/') {
                return Err(Refusal::NotAProxyRequest);
            }
            Uri::builder()
                .scheme(http::uri::Scheme::HTTP)
                .authority(upstream.clone())
                .path_and_query(path)
                .build()
                .map_err(|_| Refusal::NotAProxyRequest)?
        }
        None if uri.scheme_str() == Some("http") && uri.authority().is_some() => uri.clone(),
        None => return Err(Refusal::NotAProxyRequest),
    };
    let outgoing = if matches!(options.proof, OutboundProof::AttachOverTls(..)) {
        let mut parts = asked.into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        Uri::from_parts(parts).map_err(|_| Refusal::NotAProxyRequest)?
    } else {
        asked
    };
    options.allows(uri_destination_key(&outgoing).ok_or(Refusal::NotAProxyRequest)?)?;
    Ok(outgoing)
}

/// Forwards one request; what became of it (the metrics' `outcome`) and the response.
async fn attach_and_forward(
    outbound: &Outbound,
    request: Request<Body>,
) -> (&'static str, Response<Body>) {
    let (mut parts, body) = request.into_parts();
    if !outbound.options.upstream_protocol.carries_grpc() && crate::layer::is_grpc(&parts.headers) {
        return Refusal::GrpcNeedsHttp2.outcome();
    }
    parts.uri = match outgoing_uri(&outbound.options, &parts.uri) {
        Ok(uri) => uri,
        Err(refusal) => return refusal.outcome(),
    };
    let proof = outbound.options.proof.attached();
    // Only a message signature covers the body (its digest); otherwise it streams through.
    let signs_body = proof == Some(ProofMethod::HttpSig);
    let (body, bytes) = if signs_body {
        match http_body_util::Limited::new(body, MAX_OUTBOUND_BODY)
            .collect()
            .await
        {
            Ok(b) => {
                let bytes = b.to_bytes();
                (Body::from(bytes.clone()), bytes)
            }
            Err(e) => {
                return (
                    "refused",
                    problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body-unreadable",
                        "request body unreadable",
                        &e.to_string(),
                    ),
                );
            }
        }
    } else {
        (body, Bytes::new())
    };
    let protocol = outbound.options.upstream_protocol;
    protocol.strip_for_forwarding(&mut parts.headers, strip_hop_by_hop);
    parts.headers.remove(http::header::HOST);
    let creds = outbound.source.current();
    let attached = if let Some(method) = proof {
        attach(
            &mut parts,
            &bytes,
            &creds,
            method,
            outbound.options.require_signed_responses,
            wimse_core::token::unix_now(),
        )
    } else {
        // The connection proves who we are; no credential travels in the request.
        for name in CREDENTIAL_HEADERS {
            parts.headers.remove(name);
        }
        Ok(SentRequest::new(&parts, false))
    };
    let sent = match attached {
        Ok(sent) => sent,
        Err(e) => {
            return (
                "no-credentials",
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no-credentials",
                    "cannot attach credentials",
                    &e.to_string(),
                ),
            );
        }
    };
    parts.version = protocol.version();
    let response = match outbound
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response,
        // The whole chain: why the connection failed (a refused server SVID, say) is in
        // the sources, which only this workload's own service sees.
        Err(e) => return ("upstream-error", bad_gateway(&ErrorChain(&e))),
    };
    check_upstream_response(outbound, &sent, &creds, response).await
}

/// Passes on a response to `sent`, after checking its signature when it has one or
/// one was asked for; the verified signer goes in [`PEER_ID_HEADER`].
async fn check_upstream_response(
    outbound: &Outbound,
    sent: &SentRequest,
    creds: &Credentials,
    response: Response<hyper::body::Incoming>,
) -> (&'static str, Response<Body>) {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Only this proxy says who answered.
    remove_identity_headers(&mut parts.headers);
    if let Some(MtlsServer(id)) = parts.extensions.get::<MtlsServer>()
        && let Ok(id) = HeaderValue::from_str(id.as_str())
    {
        parts.headers.insert(PEER_ID_HEADER, id);
        parts
            .headers
            .insert(PEER_METHOD_HEADER, HeaderValue::from_static("mtls"));
    }
    if !sent.needs_check(&parts.headers) {
        return ("forwarded", Response::from_parts(parts, Body::new(body)));
    }
    // The upstream's status is named (an unsigned 400 usually means it refused the request),
    // but nothing of an unverified response is passed on.
    let status = parts.status;
    let refused = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, %status, "response refused");
        (
            "response-refused",
            problem(
                StatusCode::BAD_GATEWAY,
                "response-refused",
                "response signature refused",
                &format!("{e} (the upstream answered {status})"),
            ),
        )
    };
    let bytes = match read_for_check(body).await {
        Ok(bytes) => bytes,
        Err(e) => return refused(&e),
    };
    match check_response(
        sent,
        &parts,
        &bytes,
        creds,
        &outbound.wits,
        wimse_core::token::unix_now(),
    ) {
        Ok(responder) => {
            if let Some(peer) = responder
                && let (Ok(id), Ok(method)) = (
                    HeaderValue::from_str(peer.id.as_str()),
                    HeaderValue::from_str(peer.method.name()),
                )
            {
                parts.headers.insert(PEER_ID_HEADER, id);
                parts.headers.insert(PEER_METHOD_HEADER, method);
            }
            ("forwarded", Response::from_parts(parts, Body::from(bytes)))
        }
        Err(e) => refused(&e),
    }
}

/// The client settings for a proxy's upstreams (the outbound proxy's, the gateway's):
/// idle pooled connections are let go after 20 s, before a peer sidecar's listener drops
/// them at 30 s ([`crate::listen::ConnectionLimits`]), so that a request is not sent on a
/// connection the server is closing; HTTP/2 only when `protocol` says so.
pub fn upstream_client(protocol: UpstreamProtocol) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(hyper_util::rt::TokioExecutor::new());
    builder.pool_idle_timeout(std::time::Duration::from_secs(20));
    builder.http2_only(protocol == UpstreamProtocol::Http2);
    builder
}

/// The outbound proxy: proves this workload's identity on absolute-form requests from
/// `source`'s credentials and checks signed responses, as `options` say.
pub fn outbound_router(
    source: CredentialSource,
    options: OutboundOptions,
) -> Result<axum::Router, TlsError> {
    let protocol = options.upstream_protocol;
    let client = match &options.proof {
        OutboundProof::Attach(_) => {
            OutboundClient::Plain(upstream_client(protocol).build(upstream_connector()))
        }
        OutboundProof::Mtls(allow) | OutboundProof::AttachOverTls(_, allow) => {
            let pinned = options
                .destinations
                .iter()
                .filter_map(|(key, id)| Some((key.clone(), id.clone()?)))
                .collect();
            OutboundClient::Mtls(
                upstream_client(protocol).build(
                    MtlsConnector::new(&source, allow.clone(), options.server_names)?
                        .pinned(&source, pinned)?
                        .offering(protocol.alpn()),
                ),
            )
        }
    };
    let outbound = Outbound {
        source,
        options,
        client,
        wits: Arc::new(WitCache::new(1_000)),
    };
    Ok(axum::Router::new()
        .fallback(move |request: Request<Body>| forward_outbound(outbound.clone(), request)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn options(proof: OutboundProof, destinations: &[&str]) -> OutboundOptions {
        let mut options = OutboundOptions::new(proof);
        for key in destinations {
            options.destinations.insert((*key).to_owned(), None);
        }
        options
    }

    fn outgoing(options: &OutboundOptions, uri: &str) -> Result<String, Refusal> {
        outgoing_uri(options, &uri.parse().unwrap()).map(|uri| uri.to_string())
    }

    fn not_allowed(key: &str) -> Refusal {
        Refusal::DestinationNotAllowed(key.to_owned())
    }

    #[test]
    fn over_tls_a_request_goes_out_as_https_to_the_same_host_and_port() {
        let tls = || OutboundProof::AttachOverTls(ProofMethod::WitWpt, PeerAllowList::default());
        let any = options(tls(), &[]);
        assert_eq!(
            outgoing(&any, "http://Orders:8443/a?b=c").unwrap(),
            "https://Orders:8443/a?b=c"
        );
        // No port: https's, and so the destination is `host:443`.
        let listed = options(tls(), &["orders:443"]);
        assert_eq!(
            outgoing(&listed, "http://orders/a").unwrap(),
            "https://orders/a"
        );
        assert_eq!(
            outgoing(&listed, "http://orders:80/a").unwrap_err(),
            not_allowed("orders:80")
        );
        // Without TLS nothing changes, and a URL without a port is `host:80`.
        let plain = options(OutboundProof::Attach(ProofMethod::WitWpt), &["orders:80"]);
        assert_eq!(
            outgoing(&plain, "http://orders/a").unwrap(),
            "http://orders/a"
        );
        assert_eq!(
            outgoing(&plain, "http://orders:443/a").unwrap_err(),
            not_allowed("orders:443")
        );
        // The service sends `http://` absolute-form requests only, whatever the transport.
        for proof in [tls(), OutboundProof::Attach(ProofMethod::HttpSig)] {
            let options = options(proof, &[]);
            for uri in ["https://orders/a", "/a", "ftp://orders/a"] {
                assert_eq!(
                    outgoing(&options, uri).unwrap_err(),
                    Refusal::NotAProxyRequest,
                    "{uri}"
                );
            }
        }
    }

    #[test]
    fn with_one_upstream_each_request_keeps_its_path_and_goes_there() {
        let tls = || OutboundProof::AttachOverTls(ProofMethod::WitWpt, PeerAllowList::default());
        let mut fixed = options(tls(), &[]);
        fixed.upstream = Some("orders:8443".parse().unwrap());
        for (asked, sent) in [
            ("/pkg.Orders/Get", "https://orders:8443/pkg.Orders/Get"),
            ("/a?b=c", "https://orders:8443/a?b=c"),
            // HTTP/2 requests name the sidecar itself; absolute-form ones anything.
            ("http://127.0.0.1:9001/x", "https://orders:8443/x"),
            ("https://elsewhere/y", "https://orders:8443/y"),
            ("http://elsewhere", "https://orders:8443/"),
        ] {
            assert_eq!(outgoing(&fixed, asked).unwrap(), sent, "{asked}");
        }
        assert_eq!(
            outgoing(&fixed, "*").unwrap_err(),
            Refusal::NotAProxyRequest
        );
        // The destination list still applies, to the upstream (no port: the scheme's).
        let mut listed = options(tls(), &["orders:8443"]);
        listed.upstream = Some("orders".parse().unwrap());
        assert_eq!(
            outgoing(&listed, "/a").unwrap_err(),
            not_allowed("orders:443")
        );
        let mut plain = options(OutboundProof::Attach(ProofMethod::WitWpt), &["orders:80"]);
        plain.upstream = Some("orders".parse().unwrap());
        assert_eq!(outgoing(&plain, "/a").unwrap(), "http://orders/a");
    }

    #[test]
    fn a_destination_key_is_the_lowercase_host_and_the_scheme_s_port() {
        let key = |uri: &str| uri_destination_key(&uri.parse().unwrap());
        assert_eq!(key("http://A.Example").as_deref(), Some("a.example:80"));
        assert_eq!(key("https://a.example").as_deref(), Some("a.example:443"));
        assert_eq!(
            key("https://a.example:8443/x").as_deref(),
            Some("a.example:8443")
        );
        assert_eq!(key("http://[::1]:9/").as_deref(), Some("[::1]:9"));
        assert_eq!(key("/relative"), None);
    }
}
