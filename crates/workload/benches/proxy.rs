//! Requests per second with each authentication method, through the server-side
//! `WimseLayer` and through the inbound proxy, against the same service with no
//! authentication, in one run; and what one request's verification costs, step by step,
//! against one raw ES256 signature verification.
//!
//! `cargo bench -p wimse-workload --bench proxy` starts, in process on loopback:
//!
//! - **axum layer**: one axum service without the layer ("no auth"), the same with it
//!   (WIT+WPT and WIT+HTTP-signature requests, the latter also asking for a signed
//!   response, Cedar policy with one `permit`), and the same behind the library's mTLS
//!   server;
//! - **inbound proxy** (`wimse proxy inbound`'s router, forwarding to the bare service):
//!   "no auth" is the proxy's forwarder behind a layer that names a fixed peer (what
//!   forwarding costs without verification); then the real inbound router with WIT+WPT,
//!   WIT+HTTP-signature (with and without a signed response) and (over TLS) mTLS callers;
//! - **inbound proxy, one verification only**: WIT+WPT requests, the same bytes on the
//!   wire, to the same forwarder behind a layer that does nothing but verify the WPT's
//!   ES256 signature (split off, base64url-decoded, checked with the holder's key known in
//!   advance) and name a fixed peer: the most any WIT+WPT proxy could reach, since a WPT is
//!   single-use and so must be verified on every request;
//! - **inbound proxy, busy service**: the same two ends of the proxy ("no auth" and
//!   WIT+WPT) in front of a service that hashes 1 MiB per request before it answers (CPU
//!   work standing in for a service's own; the run measures and prints what it costs), to
//!   show how the overhead shrinks as the service does more.
//!
//! Clients hold keep-alive HTTP/1.1 connections (`WORKERS` at once) and send a fixed
//! number of requests per round; proofs are made before timing (each is single-use), so
//! the numbers are the server side's cost. Client, proxy and service share the machine's
//! cores. Rounds run round-robin across cases; the median is reported with the ratio to
//! the no-auth baseline of the same path. The mTLS cases also pay TLS record encryption.
//!
//! Then, on one thread: one raw ES256 verification (aws-lc, key parsed, of the same WPTs'
//! signing inputs and signatures that `authenticate` then checks, one each), one
//! `Authenticator::authenticate` of a WIT+WPT request (cached WIT), one
//! `Policy::authorize`, each the median of interleaved rounds.
//!
//! A plain harness (no criterion).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    reason = "benchmark"
)]

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use wimse_core::jose::{Algorithm, b64};
use wimse_core::token::unix_now;
use wimse_workload::authn::WPT_HEADER;
use wimse_workload::client::attach;
use wimse_workload::proxy::{forwarder, inbound_router};
use wimse_workload::{
    AuthConfig, AuthMethod, Authenticator, AuthzRequest, CredentialSource, PeerAllowList,
    PeerIdentity, Policy, ProofMethod, WimseLayer,
};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 4_000;
const BUSY_PER_ROUND: usize = 1_000;
const WORKERS: usize = 8;
const OPS: usize = 2_000;
const PATH: &str = "/api/orders";
const PUBLIC: &str = "http://svc.test";

fn app() -> axum::Router {
    axum::Router::new().route(PATH, axum::routing::get(|| async { "ok" }))
}

/// What the "busy" service hashes per request: CPU work standing in for a service's own
/// (about half a millisecond here; the run prints what it measured).
const WORK_BYTES: usize = 1 << 20;

/// The service's own work per request, for the "busy" service.
fn work(buffer: &[u8]) -> [u8; 32] {
    wimse_core::digest::sha256(black_box(buffer))
}

/// The same service, but doing [`work`] before it answers.
fn busy_app() -> axum::Router {
    let buffer: Arc<[u8]> = vec![7_u8; WORK_BYTES].into();
    axum::Router::new().route(
        PATH,
        axum::routing::get(move || {
            let buffer = Arc::clone(&buffer);
            async move {
                black_box(work(&buffer));
                "ok"
            }
        }),
    )
}

async fn serve_plain(router: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

async fn serve_tls(router: axum::Router, creds: &CredentialSource) -> u16 {
    let config =
        Arc::new(wimse_workload::tls::server_config(creds, PeerAllowList::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(wimse_workload::listen::serve(listener, config, router));
    port
}

type Headers = Vec<http::HeaderMap>;

/// A request with `creds`' proof; `signed_response` asks for a signed answer.
fn proof_parts(
    creds: &wimse_workload::Credentials,
    method: ProofMethod,
    signed_response: bool,
) -> http::request::Parts {
    let (mut parts, ()) = Request::get(format!("{PUBLIC}{PATH}"))
        .body(())
        .unwrap()
        .into_parts();
    attach(&mut parts, b"", creds, method, signed_response, unix_now()).unwrap();
    parts
}

fn proofs(
    creds: &wimse_workload::Credentials,
    method: ProofMethod,
    signed_response: bool,
    n: usize,
) -> Headers {
    (0..n)
        .map(|_| proof_parts(creds, method, signed_response).headers)
        .collect()
}

/// A request's WPT split into its signing input and its decoded signature.
fn wpt_signature(headers: &http::HeaderMap) -> (&str, Vec<u8>) {
    let wpt = headers[WPT_HEADER].to_str().unwrap();
    let (input, signature) = wpt.rsplit_once('.').unwrap();
    (input, b64::decode(signature).unwrap())
}

#[derive(Clone)]
enum Conn {
    Plain(u16),
    Tls(u16, Arc<rustls::ClientConfig>),
}

async fn sender_over<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn connect(conn: &Conn) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    match conn {
        Conn::Plain(port) => {
            sender_over(
                tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .unwrap(),
            )
            .await
        }
        Conn::Tls(port, config) => {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect("svc.test".try_into().unwrap(), tcp)
                .await
                .unwrap();
            sender_over(tls).await
        }
    }
}

/// One round: `requests` requests over `WORKERS` connections; requests per second.
async fn round(conn: &Conn, headers: &mut Headers, requests: usize) -> f64 {
    let per_worker = requests / WORKERS;
    let mut batches = Vec::new();
    for _ in 0..WORKERS {
        let at = headers.len().saturating_sub(per_worker);
        batches.push(headers.split_off(at));
    }
    let mut senders = Vec::new();
    for _ in 0..WORKERS {
        senders.push(connect(conn).await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .zip(batches)
        .map(|(mut sender, batch)| {
            tokio::spawn(async move {
                for i in 0..per_worker {
                    let mut req = Request::get(PATH)
                        .header("host", "svc.test")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    if let Some(h) = batch.get(i) {
                        req.headers_mut().extend(h.clone());
                    }
                    sender.ready().await.unwrap();
                    let response = sender.send_request(req).await.unwrap();
                    assert_eq!(response.status(), 200);
                    let _ = response.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per_worker * WORKERS) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Microseconds per call of each closure: `ROUNDS` interleaved rounds of `OPS` calls,
/// the median round.
fn per_op(cases: &mut [&mut dyn FnMut(usize)]) -> Vec<f64> {
    let mut samples = vec![Vec::new(); cases.len()];
    for r in 0..=ROUNDS {
        for (case, s) in cases.iter_mut().zip(samples.iter_mut()) {
            let start = Instant::now();
            for i in 0..OPS {
                case(r * OPS + i);
            }
            if r > 0 {
                s.push(start.elapsed().as_secs_f64() * 1e6 / OPS as f64);
            }
        }
    }
    samples.into_iter().map(median).collect()
}

struct Case {
    name: &'static str,
    conn: Conn,
    headers: Headers,
}

fn print_table(title: &str, cases: &[Case], rates: &[f64]) {
    println!("{title}");
    for (case, rate) in cases.iter().zip(rates) {
        println!(
            "{:>14}: {rate:>9.0} req/s   ratio to no auth = {:.2}",
            case.name,
            rate / rates[0]
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
#[allow(clippy::too_many_lines, reason = "one benchmark, set up in order")]
async fn main() {
    let domain = fixture::Domain::new("bench.test");
    let server_creds = CredentialSource::fixed(domain.credentials("/w3", &[&domain]));
    let client = domain.credentials("/w1", &[&domain]);
    let client_source = CredentialSource::fixed(client.clone());
    let policy = Arc::new(
        Policy::from_text(
            r#"permit(principal == Workload::"spiffe://bench.test/w1", action == Action::"GET", resource)
               when { context.path like "/api/*" };"#,
        )
        .unwrap(),
    );
    let layer = |public: &str| {
        let authn = Arc::new(Authenticator::new(
            AuthConfig::new(public),
            server_creds.clone(),
        ));
        WimseLayer::new(authn, Arc::clone(&policy))
    };
    let tls_client = Arc::new(
        wimse_workload::tls::client_config(&client_source, PeerAllowList::default()).unwrap(),
    );

    // The axum layer in front of the service itself.
    let bare = serve_plain(app()).await;
    let layered = serve_plain(app().layer(layer(PUBLIC))).await;
    let layered_tls = serve_tls(app().layer(layer("https://svc.test")), &server_creds).await;

    // The inbound proxy in front of the bare service.
    let upstream: Uri = format!("http://127.0.0.1:{bare}").parse().unwrap();
    let fixed_peer = PeerIdentity {
        id: domain.id("/w1"),
        method: AuthMethod::WitWpt,
    };
    let floor_peer = fixed_peer.clone();
    let unauthenticated = tower::util::MapRequestLayer::new(move |mut r: Request<Body>| {
        r.extensions_mut().insert(fixed_peer.clone());
        r
    });
    // The floor: the WPT's signature verified with the holder's key, known in advance, and
    // nothing else (no parsing, claims, replay cache or policy).
    let holder = client.wit.as_ref().unwrap().key.public_key().clone();
    let one_verification = tower::util::MapRequestLayer::new(move |mut r: Request<Body>| {
        let (input, signature) = wpt_signature(r.headers());
        holder
            .verify(Algorithm::Es256, black_box(input.as_bytes()), &signature)
            .unwrap();
        r.extensions_mut().insert(floor_peer.clone());
        r
    });
    let proxy_bare = serve_plain(forwarder(&upstream).layer(unauthenticated.clone())).await;
    let proxy_floor = serve_plain(forwarder(&upstream).layer(one_verification)).await;
    let proxy = serve_plain(inbound_router(&upstream, layer(PUBLIC))).await;
    let proxy_tls = serve_tls(
        inbound_router(&upstream, layer("https://svc.test")),
        &server_creds,
    )
    .await;
    // The inbound proxy in front of a service with work of its own.
    let busy = serve_plain(busy_app()).await;
    let busy_upstream: Uri = format!("http://127.0.0.1:{busy}").parse().unwrap();
    let busy_proxy_bare = serve_plain(forwarder(&busy_upstream).layer(unauthenticated)).await;
    let busy_proxy = serve_plain(inbound_router(&busy_upstream, layer(PUBLIC))).await;

    let total = (ROUNDS + 1) * PER_ROUND;
    eprintln!(
        "making {} WPTs and {} message signatures...",
        3 * total,
        4 * total
    );
    // The five cases of one path: no auth on `bare`; WIT+WPT, WIT+HTTP signature and the
    // same asking for a signed response on `authed`; mTLS on `authed_tls`.
    let cases = |bare: u16, authed: u16, authed_tls: u16| {
        let none = || vec![http::HeaderMap::new(); total];
        [
            ("no auth", Conn::Plain(bare), none()),
            (
                "wit+wpt",
                Conn::Plain(authed),
                proofs(&client, ProofMethod::WitWpt, false, total),
            ),
            (
                "wit+http-sig",
                Conn::Plain(authed),
                proofs(&client, ProofMethod::HttpSig, false, total),
            ),
            (
                "http-sig+resp",
                Conn::Plain(authed),
                proofs(&client, ProofMethod::HttpSig, true, total),
            ),
            (
                "mtls",
                Conn::Tls(authed_tls, Arc::clone(&tls_client)),
                none(),
            ),
        ]
        .map(|(name, conn, headers)| Case {
            name,
            conn,
            headers,
        })
    };
    let mut layer_cases = cases(bare, layered, layered_tls);
    let mut proxy_cases = Vec::from(cases(proxy_bare, proxy, proxy_tls));
    proxy_cases.push(Case {
        name: "1 verify only",
        conn: Conn::Plain(proxy_floor),
        headers: proofs(&client, ProofMethod::WitWpt, false, total),
    });
    // Fewer requests per round where each costs more, so that all proofs are used within
    // their lifetime.
    let busy_total = (ROUNDS + 1) * BUSY_PER_ROUND;
    let mut busy_cases = [
        Case {
            name: "no auth",
            conn: Conn::Plain(busy_proxy_bare),
            headers: vec![http::HeaderMap::new(); busy_total],
        },
        Case {
            name: "wit+wpt",
            conn: Conn::Plain(busy_proxy),
            headers: proofs(&client, ProofMethod::WitWpt, false, busy_total),
        },
    ];

    let mut layer_samples = vec![Vec::new(); layer_cases.len()];
    let mut proxy_samples = vec![Vec::new(); proxy_cases.len()];
    let mut busy_samples = vec![Vec::new(); busy_cases.len()];
    for r in 0..=ROUNDS {
        for (cases, samples, requests) in [
            (&mut layer_cases[..], &mut layer_samples, PER_ROUND),
            (&mut proxy_cases[..], &mut proxy_samples, PER_ROUND),
            (&mut busy_cases[..], &mut busy_samples, BUSY_PER_ROUND),
        ] {
            for (case, s) in cases.iter_mut().zip(samples.iter_mut()) {
                let rate = round(&case.conn, &mut case.headers, requests).await;
                if r > 0 {
                    s.push(rate);
                }
            }
        }
    }
    let layer_rates: Vec<f64> = layer_samples.into_iter().map(median).collect();
    let proxy_rates: Vec<f64> = proxy_samples.into_iter().map(median).collect();
    let busy_rates: Vec<f64> = busy_samples.into_iter().map(median).collect();
    println!("{WORKERS} keep-alive connections, median of {ROUNDS} rounds of {PER_ROUND} requests");
    print_table(
        "requests/s through the axum layer:",
        &layer_cases,
        &layer_rates,
    );
    print_table(
        "requests/s through the inbound proxy:",
        &proxy_cases,
        &proxy_rates,
    );
    println!(
        "ratio proxy_wit_wpt/proxy_no_auth = {:.2}",
        proxy_rates[1] / proxy_rates[0]
    );
    let floor = proxy_rates[proxy_rates.len() - 1];
    println!(
        "ratio proxy_one_verification/proxy_no_auth = {:.2} (the most WIT+WPT could reach)",
        floor / proxy_rates[0]
    );
    println!(
        "ratio proxy_wit_wpt/proxy_one_verification = {:.2}",
        proxy_rates[1] / floor
    );
    println!(
        "ratio proxy_no_auth/direct_no_auth = {:.2}",
        proxy_rates[0] / layer_rates[0]
    );
    let buffer = vec![7_u8; WORK_BYTES];
    let work_us = per_op(&mut [&mut |_| {
        black_box(work(&buffer));
    }])[0];
    print_table(
        &format!(
            "requests/s through the inbound proxy, the service working {work_us:.0} us per request:"
        ),
        &busy_cases,
        &busy_rates,
    );
    println!(
        "ratio busy_proxy_wit_wpt/busy_proxy_no_auth = {:.2}",
        busy_rates[1] / busy_rates[0]
    );

    // What one request's verification costs, step by step, on one thread.
    let authn = Authenticator::new(AuthConfig::new(PUBLIC), server_creds.clone());
    let requests: Vec<http::request::Parts> = (0..(ROUNDS + 1) * OPS)
        .map(|_| proof_parts(&client, ProofMethod::WitWpt, false))
        .collect();
    let service = domain.id("/w3");
    let caller = domain.id("/w1");
    let now = unix_now();
    let holder = client.wit.as_ref().unwrap().key.public_key().clone();
    let signed: Vec<(String, Vec<u8>)> = requests
        .iter()
        .map(|r| {
            let (input, signature) = wpt_signature(&r.headers);
            (input.to_owned(), signature)
        })
        .collect();
    let mut raw = |i: usize| {
        let (input, signature) = &signed[i];
        holder
            .verify(
                Algorithm::Es256,
                black_box(input.as_bytes()),
                black_box(signature),
            )
            .unwrap();
    };
    let mut authenticate = |i: usize| {
        black_box(authn.authenticate(&requests[i], b"", now)).unwrap();
    };
    let mut authorize = |_: usize| {
        let decision = policy.authorize(black_box(&AuthzRequest {
            principal: &caller,
            method: "GET",
            path: PATH,
            service: &service,
            auth_method: "wit-wpt",
            time: now,
            transaction: None,
        }));
        assert!(decision.allowed);
    };
    let costs = per_op(&mut [&mut raw, &mut authenticate, &mut authorize]);
    println!("per request, one thread, median of {ROUNDS} interleaved rounds of {OPS}:");
    println!("  raw ES256 verify:                 {:>7.1} us", costs[0]);
    println!(
        "  authenticate (WIT+WPT, WIT cached): {:>5.1} us   ratio to raw verify = {:.2}",
        costs[1],
        costs[1] / costs[0]
    );
    println!("  authorize (Cedar, one permit):    {:>7.1} us", costs[2]);
}
