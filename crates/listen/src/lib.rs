//! The listener loop of wimse's network-facing HTTP servers: the trust domain's server,
//! `wimse proxy inbound`, `wimse gateway`, and services that serve mutual TLS through
//! `wimse_workload::listen`.
//!
//! hyper serves one connection; what is around it is here, because hyper-util's
//! `serve`-style helpers do not bound what a client may hold:
//!
//! - a TLS handshake, a request's header section, and the wait for a connection's first
//!   request each have a deadline, and HTTP/2 peers are pinged ([`ConnectionLimits`]);
//! - a connection with no request in flight for [`ConnectionLimits::idle`] is closed
//!   gracefully (a `GOAWAY` for HTTP/2, so its client knows no request was lost);
//! - at most [`ConnectionLimits::max_connections`] connections are open at once: at the
//!   limit, the listener stops accepting until one closes, and the kernel's backlog holds
//!   the rest;
//! - one client (an IPv4 address, or an IPv6 /64, which one host is commonly given) may
//!   hold at most [`ConnectionLimits::max_per_client`] of them, half by default: a further
//!   connection from it is closed as soon as it is accepted, so that one client leaking
//!   or hoarding connections cannot shut all others out;
//! - a request body that makes no progress while the service waits for it, and a response
//!   the client stops reading (a socket write that cannot proceed, or over HTTP/2 a
//!   flow-control window kept shut), fail after [`ConnectionLimits::stall`] (`stall`);
//!   an HTTP/2 gRPC call's request stream may pause as long as a connection may idle
//!   ([`ConnectionLimits::idle`], if longer), since the client of a bidirectional call
//!   may send nothing while it waits for answers;
//! - over HTTP/2, a request body the service leaves unread holds at most a quarter of the
//!   connection's flow-control window ([`STREAM_WINDOW`], [`CONNECTION_WINDOW`]), so the
//!   connection's other requests still get their bodies through;
//! - an `accept` that fails for want of resources is retried after a second, not at once;
//! - on stop, connections are told to finish (`GOAWAY`, or `Connection: close` after the
//!   request in flight) and get [`ConnectionLimits::drain`] to do so.
//!
//! Each request reaches the service with the client's address as axum's
//! `ConnectInfo<SocketAddr>` and whatever the caller's `facts` made of the connection's
//! TLS client certificates (the verified identity, for instance).
#![forbid(unsafe_code)]

mod stall;

use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// What [`serve_until`] hands requests to: an axum router or any tower
/// service like it.
pub trait RequestService:
    tower::Service<
        http::Request<axum::body::Body>,
        Response = http::Response<axum::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> RequestService for S where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<axum::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// What a client may hold of a listener, and for how long, so that slow, silent or
/// numerous clients cannot exhaust it (slowloris, connection floods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The TLS handshake.
    pub handshake: Duration,
    /// An HTTP/1.1 request's header section, from its first byte (also how long an idle
    /// keep-alive HTTP/1.1 connection waits for the next request's headers); how long a
    /// new connection may take to begin its first request; the interval of HTTP/2 pings.
    pub header_read: Duration,
    /// How long a connection may go without a request in flight, from the end of its
    /// last one, before it is closed. What bounds idle HTTP/2 connections, which answer
    /// pings.
    pub idle: Duration,
    /// How long a request body may make no progress while the service waits for it, and a
    /// response while the client should be reading it; then the body fails, or the
    /// connection is closed. The request stream of a gRPC call over HTTP/2 gets `idle`
    /// instead, when that is longer. (Over HTTP/2, the last piece of a response, at most
    /// 64 KiB, is handed to the HTTP/2 layer with its end and no longer watched: a client
    /// that does not take it holds it until the idle limit and the drain close the
    /// connection.)
    pub stall: Duration,
    /// How many connections may be open at once; never more than seven eighths of the
    /// process's open-file limit, so that its other files can still be opened.
    pub max_connections: u32,
    /// How many of them one client (an IPv4 address, or an IPv6 /64) may hold at once;
    /// `None`: half of `max_connections` (at least one). Behind a load balancer that does
    /// not keep the callers' addresses, every caller is the balancer: raise it there.
    pub max_per_client: Option<u32>,
    /// After the listener stops, how long requests in flight have to finish; then their
    /// connections are closed.
    pub drain: Duration,
}

impl ConnectionLimits {
    /// 10 s for a handshake, 30 s for a header section, 5 minutes idle, 60 s without
    /// progress, 10,000 connections, 10 s to drain.
    pub const DEFAULT: ConnectionLimits = ConnectionLimits {
        handshake: Duration::from_secs(10),
        header_read: Duration::from_secs(30),
        idle: Duration::from_secs(300),
        stall: Duration::from_secs(60),
        max_connections: 10_000,
        max_per_client: None,
        drain: Duration::from_secs(10),
    };
}

/// How many bytes of one HTTP/2 request's body a client may send before the service reads
/// them: hyper's default, 1 MiB.
pub const STREAM_WINDOW: u32 = 1 << 20;

/// How many bytes of all of an HTTP/2 connection's request bodies a client may send
/// before the services read them: four streams' worth. hyper's default equals one
/// stream's, so that one body left unread (a service busy before it reads, an upstream
/// slow to take it) stopped every other body on the connection until it stalled out, which
/// for a gRPC client, that sends all its calls over one connection, is every call. Larger
/// still would let each connection make the process hold more unread data.
pub const CONNECTION_WINDOW: u32 = 4 * STREAM_WINDOW;

/// The least of each duration in [`ConnectionLimits`]: zero would mean no time at all for a
/// handshake, or HTTP/2 pings without pause.
const SHORTEST: Duration = Duration::from_millis(100);

/// The most of each duration in [`ConnectionLimits`]: deadlines are added to the time of
/// day, which a near-infinite duration would overflow.
const LONGEST: Duration = Duration::from_secs(LONGEST_SECS);

impl ConnectionLimits {
    /// These limits made usable: every duration between [`SHORTEST`] and [`LONGEST`]
    /// (the drain may be zero), at least one connection but no more than the open-file
    /// limit allows, and a client's share settled, from one connection to all of them.
    fn usable(self) -> Self {
        let files = open_file_share().unwrap_or(u32::MAX);
        let max_connections = self.max_connections.min(files).max(1);
        let per_client = self.max_per_client.unwrap_or(max_connections / 2);
        ConnectionLimits {
            handshake: self.handshake.clamp(SHORTEST, LONGEST),
            header_read: self.header_read.clamp(SHORTEST, LONGEST),
            idle: self.idle.clamp(SHORTEST, LONGEST),
            stall: self.stall.clamp(SHORTEST, LONGEST),
            max_connections,
            max_per_client: Some(per_client.clamp(1, max_connections)),
            drain: self.drain.min(LONGEST),
        }
    }
}

/// Seven eighths of the soft limit on open files (`None` when unlimited or unknown).
fn open_file_share() -> Option<u32> {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current?;
    u32::try_from(soft / 8 * 7).ok()
}

/// Changes to a listener's [`ConnectionLimits`] as an operator writes them: the
/// `[listener]` section of a configuration file, or a command's flags. Durations are whole
/// seconds; what is not named keeps the listener's own default.
///
/// ```toml
/// [listener]
/// max_connections = 20000
/// idle_timeout = 120
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// [`ConnectionLimits::handshake`], seconds.
    pub handshake_timeout: Option<u64>,
    /// [`ConnectionLimits::header_read`], seconds.
    pub header_timeout: Option<u64>,
    /// [`ConnectionLimits::idle`], seconds.
    pub idle_timeout: Option<u64>,
    /// [`ConnectionLimits::stall`], seconds.
    pub stall_timeout: Option<u64>,
    /// [`ConnectionLimits::max_connections`].
    pub max_connections: Option<u32>,
    /// [`ConnectionLimits::max_per_client`].
    pub max_connections_per_client: Option<u32>,
    /// [`ConnectionLimits::drain`], seconds (0: cut connections off at once on stop).
    pub drain_timeout: Option<u64>,
}

/// A [`LimitSettings`] value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A duration outside what the setting allows.
    #[error("`{name}` is {value} s: it must be between {least} and {LONGEST_SECS} seconds")]
    Duration {
        /// The setting's name.
        name: &'static str,
        /// What was given.
        value: u64,
        /// The least it may be.
        least: u64,
    },
    /// No connections at all.
    #[error("`{name}` must be at least 1")]
    NoConnections {
        /// The setting's name.
        name: &'static str,
    },
}

/// The most any [`LimitSettings`] duration may be, in seconds: a day.
pub const LONGEST_SECS: u64 = 24 * 60 * 60;

impl LimitsError {
    /// The setting at fault, as written in a configuration file (`idle_timeout`).
    pub fn setting(&self) -> &'static str {
        match self {
            LimitsError::Duration { name, .. } | LimitsError::NoConnections { name } => name,
        }
    }

    /// The setting at fault with its section, as configuration files name it in their
    /// errors (`listener.idle_timeout`).
    pub fn path(&self) -> &'static str {
        match self.setting() {
            "handshake_timeout" => "listener.handshake_timeout",
            "header_timeout" => "listener.header_timeout",
            "idle_timeout" => "listener.idle_timeout",
            "stall_timeout" => "listener.stall_timeout",
            "max_connections" => "listener.max_connections",
            "max_connections_per_client" => "listener.max_connections_per_client",
            "drain_timeout" => "listener.drain_timeout",
            _ => "listener",
        }
    }
}

impl LimitSettings {
    /// `base` with these settings applied, or which setting is out of range: every
    /// duration from 1 s (the drain from 0 s) to a day, at least one connection, in all
    /// and per client.
    pub fn apply(&self, base: ConnectionLimits) -> Result<ConnectionLimits, LimitsError> {
        let seconds =
            |name: &'static str, value: Option<u64>, least: u64, default: Duration| match value {
                None => Ok(default),
                Some(value) if (least..=LONGEST_SECS).contains(&value) => {
                    Ok(Duration::from_secs(value))
                }
                Some(value) => Err(LimitsError::Duration { name, value, least }),
            };
        Ok(ConnectionLimits {
            handshake: seconds(
                "handshake_timeout",
                self.handshake_timeout,
                1,
                base.handshake,
            )?,
            header_read: seconds("header_timeout", self.header_timeout, 1, base.header_read)?,
            idle: seconds("idle_timeout", self.idle_timeout, 1, base.idle)?,
            stall: seconds("stall_timeout", self.stall_timeout, 1, base.stall)?,
            max_connections: match self.max_connections {
                None => base.max_connections,
                Some(0) => {
                    return Err(LimitsError::NoConnections {
                        name: "max_connections",
                    });
                }
                Some(n) => n,
            },
            max_per_client: match self.max_connections_per_client {
                None => base.max_per_client,
                Some(0) => {
                    return Err(LimitsError::NoConnections {
                        name: "max_connections_per_client",
                    });
                }
                Some(n) => Some(n),
            },
            drain: seconds("drain_timeout", self.drain_timeout, 0, base.drain)?,
        })
    }
}

impl Default for ConnectionLimits {
    /// [`ConnectionLimits::DEFAULT`].
    fn default() -> Self {
        ConnectionLimits::DEFAULT
    }
}

/// What a connection's TLS client certificates (`None` without TLS or without a client
/// certificate) add to each of its requests' extensions. Called once per connection, after
/// the handshake, whose verifier has already accepted the chain.
pub trait ConnectionFacts:
    Fn(Option<&[CertificateDer<'_>]>) -> http::Extensions + Send + Sync + 'static
{
}

impl<F> ConnectionFacts for F where
    F: Fn(Option<&[CertificateDer<'_>]>) -> http::Extensions + Send + Sync + 'static
{
}

/// Facts for a listener whose requests need nothing from the connection but the client's
/// address.
pub fn no_facts(_: Option<&[CertificateDer<'_>]>) -> http::Extensions {
    http::Extensions::new()
}

/// Accepts connections on `listener` (TLS with `tls`, plain HTTP without) until `stop`
/// completes, then lets the requests in flight finish for up to `limits.drain`. Each
/// request goes to `service` with the client's address as axum's `ConnectInfo` and the
/// extensions `facts` made of its connection. Clients are held to `limits`.
pub async fn serve_until<S>(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: S,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
    facts: impl ConnectionFacts,
) where
    S: RequestService,
{
    let asked = limits.max_connections;
    let limits = limits.usable();
    if limits.max_connections < asked {
        tracing::warn!(
            asked,
            allowed = limits.max_connections,
            "connection limit lowered to seven eighths of the open-file limit; raise the \
             open-file limit (ulimit -n, LimitNOFILE=) to allow more"
        );
    }
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let facts = Arc::new(facts);
    let clients = Arc::new(Clients::new(limits.max_per_client.unwrap_or(1)));
    let mut refusals = Refusals::default();
    // One permit per open connection; all of them back means every connection is done.
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (stopping, stopped) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, address) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if must_pause(&e) {
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                continue;
            }
        };
        let Some(held) = Clients::admit(&clients, address.ip()) else {
            // Closed at once, its slot free again with `permit`.
            refusals.note(address, clients.most);
            continue;
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        let facts = Arc::clone(&facts);
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _held = held;
            let activity = Arc::new(Activity::new());
            let Some(acceptor) = acceptor else {
                let svc =
                    request_service(service, address, facts(None), limits, Arc::clone(&activity));
                serve_connection(tcp, svc, limits, stopped, &activity).await;
                return;
            };
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%address, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%address, "TLS handshake took too long");
                    return;
                }
            };
            let extensions = facts(tls.get_ref().1.peer_certificates());
            let svc = request_service(service, address, extensions, limits, Arc::clone(&activity));
            serve_connection(tls, svc, limits, stopped, &activity).await;
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    let _ = tokio::time::timeout(limits.drain, slots.acquire_many(limits.max_connections)).await;
}

/// How many connections each client holds, against the most one may.
#[derive(Debug)]
struct Clients {
    most: u32,
    held: Mutex<HashMap<std::net::IpAddr, u32>>,
}

/// One connection counted against its client until it is dropped.
struct Held {
    clients: Arc<Clients>,
    client: std::net::IpAddr,
}

impl Clients {
    fn new(most: u32) -> Self {
        Clients {
            most,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<std::net::IpAddr, u32>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One more connection for the client at `address`, or `None` if it holds its share.
    fn admit(clients: &Arc<Clients>, address: std::net::IpAddr) -> Option<Held> {
        let client = client_of(address);
        let mut held = clients.held();
        let count = held.entry(client).or_insert(0);
        if *count >= clients.most {
            return None;
        }
        *count += 1;
        Some(Held {
            clients: Arc::clone(clients),
            client,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.clients.held();
        if let Some(count) = held.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.client);
            }
        }
    }
}

/// The client an address belongs to: an IPv4 address (also written as IPv6), or the /64
/// of an IPv6 address, the block one host or subscriber is commonly given.
fn client_of(address: std::net::IpAddr) -> std::net::IpAddr {
    match address {
        std::net::IpAddr::V4(v4) => v4.into(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX)).into(),
        },
    }
}

/// Connections refused for their client's share since the last warning, and when that
/// was: said at most every 10 s, so that a client hammering the listener cannot flood the
/// log.
#[derive(Debug, Default)]
struct Refusals {
    count: u64,
    said: Option<tokio::time::Instant>,
}

impl Refusals {
    fn note(&mut self, address: std::net::SocketAddr, per_client: u32) {
        self.count += 1;
        if self
            .said
            .is_none_or(|said| said.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                %address,
                refused = self.count,
                per_client,
                "connections closed at once: their client held its share of the listener"
            );
            self.count = 0;
            self.said = Some(tokio::time::Instant::now());
        }
    }
}

/// Whether the listener should pause after a failed `accept`: a connection that went
/// before it was taken costs nothing, but a listener out of file descriptors would fail
/// again at once, so it waits a second rather than spin.
fn must_pause(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    let pause = !matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    );
    if pause {
        tracing::warn!(error = %e, "accepting a connection failed; retrying in 1 s");
    }
    pause
}

/// What one connection has done: requests begun, requests whose response has not been
/// sent in full (or dropped) yet, when a request last began or ended, and which responses
/// wait for the client to take what they handed out.
#[derive(Debug)]
struct Activity {
    opened: tokio::time::Instant,
    begun: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` to the last beginning or end of a request.
    last: AtomicU64,
    /// Requests (by number) whose response body handed hyper a frame, and when, that
    /// hyper has not asked past yet: over HTTP/2, it asks for more only once the client
    /// has opened its flow-control window again.
    handed: Mutex<HashMap<u64, tokio::time::Instant>>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: tokio::time::Instant::now(),
            begun: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            handed: Mutex::new(HashMap::new()),
        }
    }

    fn handed(&self) -> std::sync::MutexGuard<'_, HashMap<u64, tokio::time::Instant>> {
        self.handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Since when the longest-waiting response has waited for the client to take a frame.
    fn waiting_since(&self) -> Option<tokio::time::Instant> {
        self.handed().values().min().copied()
    }

    fn touch(&self) {
        let since = self.opened.elapsed().as_millis();
        self.last
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// When the connection will have been quiet for `idle`, if nothing happens before;
    /// `None` while a request is in flight.
    fn quiet_at(&self, idle: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::SeqCst));
        Some(self.opened + last + idle)
    }
}

/// Counts a request in flight until it is dropped with its response body, and tells
/// the connection when that body waits for the client.
struct InFlight {
    activity: Arc<Activity>,
    number: u64,
    waiting: bool,
}

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        let number = activity.begun.fetch_add(1, Ordering::SeqCst);
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.touch();
        InFlight {
            activity: Arc::clone(activity),
            number,
            waiting: false,
        }
    }

    /// A frame was handed out: the client has it to take.
    fn handed(&mut self) {
        self.activity
            .handed()
            .insert(self.number, tokio::time::Instant::now());
        self.waiting = true;
    }

    /// Asked for more: what was handed out was taken.
    fn taken(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.activity.handed().remove(&self.number);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.taken();
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The most of a response body handed to hyper at once. A service's whole answer (one
/// frame of many megabytes) is handed out in pieces of this size, so that over HTTP/2,
/// whose layer takes each piece as long as the client's window has a byte of room, hyper
/// stops asking for the next once the window is shut: that wait is what the stall limit
/// watches. (Handed out whole, the answer would sit in the HTTP/2 layer unwatched.)
const PIECE: usize = 64 << 10;

/// A response body counted by its [`InFlight`], handed out in [`PIECE`]s.
struct Tracked {
    body: axum::body::Body,
    in_flight: InFlight,
    /// What is left of the last frame after the piece handed out.
    rest: bytes::Bytes,
}

impl Tracked {
    fn new(body: axum::body::Body, in_flight: InFlight) -> Self {
        Tracked {
            body,
            in_flight,
            rest: bytes::Bytes::new(),
        }
    }

    /// The next piece of `data`, the rest kept for later; counted as handed out.
    fn hand_out(&mut self, mut data: bytes::Bytes) -> http_body::Frame<bytes::Bytes> {
        if data.len() > PIECE {
            self.rest = data.split_off(PIECE);
        }
        self.in_flight.handed();
        http_body::Frame::data(data)
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        this.in_flight.taken();
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            return std::task::Poll::Ready(Some(Ok(this.hand_out(rest))));
        }
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => std::task::Poll::Ready(Some(Ok(this.hand_out(data)))),
                Err(frame) => std::task::Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let body = self.body.size_hint();
        let rest = u64::try_from(self.rest.len()).unwrap_or(u64::MAX);
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(body.lower().saturating_add(rest));
        if let Some(upper) = body.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// Whether `headers` are those of a gRPC request: `application/grpc`, alone or with a
/// `+codec`; not gRPC-Web, whose trailers travel in the body.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    value
        .as_bytes()
        .split_at_checked(GRPC.len())
        .is_some_and(|(head, rest)| {
            head.eq_ignore_ascii_case(GRPC) && matches!(rest.first(), None | Some(b'+' | b';'))
        })
}

/// How long `request`'s body may make no progress: [`ConnectionLimits::stall`], or for
/// an HTTP/2 gRPC call's request stream the longer of that and
/// [`ConnectionLimits::idle`].
fn body_stall(
    request: &http::Request<hyper::body::Incoming>,
    limits: ConnectionLimits,
) -> Duration {
    if request.version() == http::Version::HTTP_2 && is_grpc(request.headers()) {
        limits.stall.max(limits.idle)
    } else {
        limits.stall
    }
}

/// The hyper service of one connection: `service` with the connection's facts in each
/// request's extensions and its body held to its progress deadline ([`body_stall`]), each
/// request counted in `activity` until its response body is done.
fn request_service<S>(
    service: S,
    address: std::net::SocketAddr,
    extensions: http::Extensions,
    limits: ConnectionLimits,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<axum::body::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<axum::body::Body>, Infallible>> + Send,
> + Clone
+ Send
+ 'static
where
    S: RequestService,
{
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let in_flight = InFlight::begin(&activity);
        let stall = body_stall(&req, limits);
        let mut req = req.map(|body| axum::body::Body::new(stall::BodyProgress::new(body, stall)));
        let own = req.extensions_mut();
        own.extend(extensions.clone());
        own.insert(axum::extract::ConnectInfo(address));
        let response = tower::ServiceExt::oneshot(service.clone(), req);
        async move {
            let Ok(response) = response.await;
            // The count ends when hyper drops the body: sent in full, or the stream gone.
            Ok(response.map(|body| axum::body::Body::new(Tracked::new(body, in_flight))))
        }
    })
}

/// Serves HTTP/1.1 or HTTP/2 on `io` until the client goes, the connection has been idle
/// for `limits.idle`, or `stopped` turns true; then it is shut down gracefully, and cut
/// off if that takes longer than `limits.drain`. A connection that has not begun a
/// request within `limits.header_read` is dropped: hyper's own header timeout starts only
/// once it has told HTTP/1 from HTTP/2, which a client that sends nothing (or a trickle
/// of the HTTP/2 preface) never lets it do. HTTP/2 peers are pinged, and dropped when they
/// stop answering.
async fn serve_connection<I, T>(
    io: I,
    svc: T,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
    activity: &Activity,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<axum::body::Body>,
            Error = Infallible,
        > + Send
        + 'static,
    T::Future: Send + 'static,
{
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(limits.header_read)
        .keep_alive_timeout(limits.handshake);
    let io = stall::WriteProgress::new(io, limits.stall);
    let connection = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .into_owned();
    let mut connection = std::pin::pin!(connection);
    let mut first_request = std::pin::pin!(tokio::time::sleep(limits.header_read));
    let mut first_request_due = true;
    let mut idle_check = std::pin::pin!(tokio::time::sleep(limits.idle));
    let mut stall_check = std::pin::pin!(tokio::time::sleep(limits.stall));
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stopped.wait_for(|stop| *stop) => break,
            () = &mut first_request, if first_request_due => {
                if activity.begun.load(Ordering::SeqCst) == 0 {
                    return;
                }
                first_request_due = false;
            }
            () = &mut idle_check => {
                let now = tokio::time::Instant::now();
                match activity.quiet_at(limits.idle) {
                    Some(quiet) if quiet <= now => break,
                    Some(quiet) => idle_check.as_mut().reset(quiet),
                    None => idle_check.as_mut().reset(now + limits.idle),
                }
            }
            () = &mut stall_check => {
                // A client that takes no more of a response (over HTTP/2, by keeping its
                // flow-control window shut, which no socket write would show) is dropped.
                let now = tokio::time::Instant::now();
                match activity.waiting_since() {
                    Some(since) if since + limits.stall <= now => return,
                    Some(since) => stall_check.as_mut().reset(since + limits.stall),
                    None => stall_check.as_mut().reset(now + limits.stall),
                }
            }
        }
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.drain, connection).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::{
        Activity, Clients, ConnectionLimits, InFlight, LimitSettings, LimitsError, PIECE, SHORTEST,
        Tracked, client_of, is_grpc, open_file_share,
    };
    use http_body_util::BodyExt;
    use std::net::IpAddr;

    #[test]
    fn grpc_requests_are_known_by_their_content_type() {
        let headers = |value: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            h
        };
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&headers(grpc)), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&headers(other)), "{other}");
        }
        assert!(!is_grpc(&http::HeaderMap::new()));
    }
    use std::sync::Arc;
    use std::time::Duration;

    fn settings(toml_text: &str) -> Result<LimitSettings, toml::de::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            listener: LimitSettings,
        }
        toml::from_str::<File>(toml_text).map(|f| f.listener)
    }

    #[test]
    fn settings_change_only_what_they_name() {
        let base = ConnectionLimits::DEFAULT;
        assert_eq!(LimitSettings::default().apply(base).unwrap(), base);
        let changed = settings(
            "[listener]\nmax_connections = 20000\nidle_timeout = 120\ndrain_timeout = 0\n",
        )
        .unwrap()
        .apply(base)
        .unwrap();
        assert_eq!(
            changed,
            ConnectionLimits {
                max_connections: 20_000,
                idle: Duration::from_secs(120),
                drain: Duration::ZERO,
                ..base
            }
        );
        let all =
            settings("[listener]\nhandshake_timeout = 3\nheader_timeout = 4\nstall_timeout = 5\n")
                .unwrap()
                .apply(base)
                .unwrap();
        assert_eq!(
            (all.handshake, all.header_read, all.stall),
            (
                Duration::from_secs(3),
                Duration::from_secs(4),
                Duration::from_secs(5)
            )
        );
    }

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let base = ConnectionLimits::DEFAULT;
        let refused = |text: &str| settings(text).unwrap().apply(base).unwrap_err();
        assert_eq!(
            refused("[listener]\nidle_timeout = 0"),
            LimitsError::Duration {
                name: "idle_timeout",
                value: 0,
                least: 1
            }
        );
        assert!(matches!(
            refused("[listener]\nhandshake_timeout = 86401"),
            LimitsError::Duration {
                name: "handshake_timeout",
                ..
            }
        ));
        assert!(matches!(
            refused("[listener]\ndrain_timeout = 100000"),
            LimitsError::Duration {
                name: "drain_timeout",
                ..
            }
        ));
        assert_eq!(
            refused("[listener]\nmax_connections = 0"),
            LimitsError::NoConnections {
                name: "max_connections"
            }
        );
        // Every setting that can be refused is named with its section.
        for (key, value) in [
            ("handshake_timeout", 0),
            ("header_timeout", 0),
            ("idle_timeout", 0),
            ("stall_timeout", 0),
            ("max_connections", 0),
            ("max_connections_per_client", 0),
            ("drain_timeout", 100_000),
        ] {
            let error = refused(&format!("[listener]\n{key} = {value}"));
            assert_eq!(error.setting(), key);
            assert_eq!(error.path(), format!("listener.{key}"));
        }
        let none_each = refused("[listener]\nmax_connections_per_client = 0");
        assert_eq!(none_each.setting(), "max_connections_per_client");
        assert_eq!(
            none_each.to_string(),
            "`max_connections_per_client` must be at least 1"
        );
        assert!(
            refused("[listener]\nstall_timeout = 0")
                .to_string()
                .contains("`stall_timeout` is 0 s")
        );
        // Unknown and negative values are the parser's to refuse.
        assert!(settings("[listener]\nidle = 5").is_err());
        assert!(settings("[listener]\nidle_timeout = -1").is_err());
    }

    #[test]
    fn zero_limits_are_made_usable() {
        let zero = ConnectionLimits {
            handshake: Duration::ZERO,
            header_read: Duration::ZERO,
            idle: Duration::ZERO,
            stall: Duration::ZERO,
            max_connections: 0,
            max_per_client: Some(0),
            drain: Duration::ZERO,
        }
        .usable();
        assert_eq!(zero.handshake, SHORTEST);
        assert_eq!(zero.header_read, SHORTEST);
        assert_eq!(zero.idle, SHORTEST);
        assert_eq!(zero.stall, SHORTEST);
        assert_eq!(zero.max_connections, 1);
        assert_eq!(zero.max_per_client, Some(1));
        assert_eq!(zero.drain, Duration::ZERO);
    }

    #[test]
    fn a_client_holds_half_the_connections_unless_told_otherwise() {
        let with = |max_connections, max_per_client| {
            ConnectionLimits {
                max_connections,
                max_per_client,
                ..ConnectionLimits::DEFAULT
            }
            .usable()
            .max_per_client
        };
        assert_eq!(with(100, None), Some(50));
        assert_eq!(with(1, None), Some(1));
        assert_eq!(with(100, Some(7)), Some(7));
        // Never more than there are connections, never none.
        assert_eq!(with(100, Some(1_000)), Some(100));
        assert_eq!(with(100, Some(0)), Some(1));
        let set = settings("[listener]\nmax_connections_per_client = 9")
            .unwrap()
            .apply(ConnectionLimits::DEFAULT)
            .unwrap();
        assert_eq!(set.max_per_client, Some(9));
        assert_eq!(
            LimitSettings::default()
                .apply(ConnectionLimits::DEFAULT)
                .unwrap()
                .max_per_client,
            None
        );
    }

    #[test]
    fn clients_are_told_apart_by_ipv4_address_and_ipv6_slash_64() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(client_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(client_of(ip("192.0.2.7")), client_of(ip("192.0.2.8")));
        // The same IPv4 client written as IPv6 (a dual-stack listener's accept).
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        // One /64 is one client, whatever its interface identifier.
        assert_eq!(
            client_of(ip("2001:db8:1:2:aaaa::1")),
            client_of(ip("2001:db8:1:2:bbbb:cccc:dddd:eeee"))
        );
        assert_eq!(client_of(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_ne!(
            client_of(ip("2001:db8:1:2::1")),
            client_of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn a_client_at_its_share_is_refused_until_one_of_its_connections_goes() {
        let clients = Arc::new(Clients::new(2));
        let a = "192.0.2.1".parse::<IpAddr>().unwrap();
        let b = "192.0.2.2".parse::<IpAddr>().unwrap();
        let first = Clients::admit(&clients, a).unwrap();
        let second = Clients::admit(&clients, a).unwrap();
        assert!(Clients::admit(&clients, a).is_none());
        // Another client is not held to the first one's count.
        let _other = Clients::admit(&clients, b).unwrap();
        drop(first);
        let third = Clients::admit(&clients, a).unwrap();
        assert!(Clients::admit(&clients, a).is_none());
        // Counts of clients with nothing open are forgotten.
        drop((second, third));
        assert!(!clients.held().contains_key(&a));
        // Addresses of one IPv6 /64 count as one client.
        let host = |text: &str| text.parse::<IpAddr>().unwrap();
        let _one = Clients::admit(&clients, host("2001:db8::1")).unwrap();
        let _two = Clients::admit(&clients, host("2001:db8::2")).unwrap();
        assert!(Clients::admit(&clients, host("2001:db8::3")).is_none());
        assert!(Clients::admit(&clients, host("2001:db8:0:1::3")).is_some());
    }

    #[test]
    fn connections_stay_within_the_open_file_limit() {
        let all = ConnectionLimits {
            max_connections: u32::MAX,
            ..ConnectionLimits::DEFAULT
        }
        .usable();
        match open_file_share() {
            Some(share) => {
                assert_eq!(all.max_connections, share.max(1));
                assert!(share < u32::MAX);
            }
            None => assert_eq!(all.max_connections, u32::MAX),
        }
        assert_eq!(
            ConnectionLimits::DEFAULT.usable().handshake,
            Duration::from_secs(10)
        );
    }

    #[tokio::test]
    async fn a_whole_response_is_handed_out_in_pieces_and_told_apart_from_its_end() {
        let whole = vec![7_u8; 3 * PIECE + 100];
        let activity = Arc::new(Activity::new());
        let mut body = Tracked::new(
            axum::body::Body::from(whole.clone()),
            InFlight::begin(&activity),
        );
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            Some(whole.len() as u64)
        );
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            pieces.push(data.len());
            // What is still to come is known, and the end is not claimed early.
            let left = whole.len() - pieces.iter().sum::<usize>();
            assert_eq!(http_body::Body::size_hint(&body).exact(), Some(left as u64));
            assert_eq!(http_body::Body::is_end_stream(&body), left == 0);
            // Each piece waits for the client until the next is asked for.
            assert!(activity.waiting_since().is_some());
        }
        assert_eq!(pieces, [PIECE, PIECE, PIECE, 100]);
        assert!(activity.waiting_since().is_none());
        drop(body);
        assert_eq!(
            activity.in_flight.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }
}
