//! Requests per second through the server-side `WimseLayer` with each authentication
//! method, against the same axum service with no authentication, in one run.
//!
//! `cargo bench -p wimse-workload --bench proxy` starts, in process on loopback, one axum
//! service without the layer, one with it (WIT+WPT and WIT+HTTP-signature requests, Cedar
//! policy with one `permit`), and one with it behind the library's mTLS server. Clients
//! hold keep-alive HTTP/1.1 connections (`WORKERS` at once) and send a fixed number of
//! requests per round; proofs are made before timing (each is single-use), so the numbers
//! are the server's cost. Rounds run round-robin across cases; the median is reported with
//! the ratio to the no-auth baseline. Note the mTLS case also pays TLS record encryption.
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

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use wimse_core::token::unix_now;
use wimse_workload::{
    AuthConfig, Authenticator, CredentialSource, PeerAllowList, Policy, ProofMethod, WimseLayer,
    attach_proof,
};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 4_000;
const WORKERS: usize = 8;
const PATH: &str = "/api/orders";

fn app() -> axum::Router {
    axum::Router::new().route(PATH, axum::routing::get(|| async { "ok" }))
}

async fn serve_plain(router: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

type Headers = Vec<http::HeaderMap>;

fn proofs(
    creds: &wimse_workload::Credentials,
    base: &str,
    method: ProofMethod,
    n: usize,
) -> Headers {
    (0..n)
        .map(|_| {
            let (mut parts, ()) = Request::get(format!("{base}{PATH}"))
                .body(())
                .unwrap()
                .into_parts();
            attach_proof(&mut parts, b"", creds, method, unix_now()).unwrap();
            parts.headers
        })
        .collect()
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

/// One round: `PER_ROUND` requests over `WORKERS` connections; requests per second.
async fn round(conn: &Conn, headers: &mut Headers) -> f64 {
    let per_worker = PER_ROUND / WORKERS;
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

#[tokio::main(flavor = "multi_thread")]
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

    let plain = serve_plain(app()).await;
    let public = "http://svc.test";
    let authn = Arc::new(Authenticator::new(
        AuthConfig::new(public),
        server_creds.clone(),
    ));
    let layered = serve_plain(app().layer(WimseLayer::new(authn, Arc::clone(&policy)))).await;
    let tls_port = {
        let authn = Arc::new(Authenticator::new(
            AuthConfig::new("https://svc.test"),
            server_creds.clone(),
        ));
        let router = app().layer(WimseLayer::new(authn, Arc::clone(&policy)));
        let config = Arc::new(
            wimse_workload::tls::server_config(&server_creds, PeerAllowList::default()).unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(wimse_workload::tls::serve(listener, config, router));
        port
    };
    let tls_client = Arc::new(
        wimse_workload::tls::client_config(&client_source, PeerAllowList::default()).unwrap(),
    );

    let total = (ROUNDS + 1) * PER_ROUND;
    eprintln!("making {total} WPTs and {total} message signatures...");
    let mut wpt = proofs(&client, public, ProofMethod::WitWpt, total);
    let mut sig = proofs(&client, public, ProofMethod::HttpSig, total);
    let mut none_a: Headers = vec![http::HeaderMap::new(); total];
    let mut none_b: Headers = vec![http::HeaderMap::new(); total];

    let cases = ["no auth", "wit+wpt", "wit+http-sig", "mtls"];
    let mut samples = vec![Vec::new(); cases.len()];
    for r in 0..=ROUNDS {
        let rates = [
            round(&Conn::Plain(plain), &mut none_a).await,
            round(&Conn::Plain(layered), &mut wpt).await,
            round(&Conn::Plain(layered), &mut sig).await,
            round(&Conn::Tls(tls_port, Arc::clone(&tls_client)), &mut none_b).await,
        ];
        if r > 0 {
            for (s, rate) in samples.iter_mut().zip(rates) {
                s.push(rate);
            }
        }
    }
    let medians: Vec<f64> = samples.into_iter().map(median).collect();
    println!(
        "requests/s through the axum layer ({WORKERS} keep-alive connections, median of {ROUNDS} rounds of {PER_ROUND}):"
    );
    for (name, rate) in cases.iter().zip(&medians) {
        println!(
            "{name:>14}: {rate:>9.0} req/s   ratio to no auth = {:.2}",
            rate / medians[0]
        );
    }
}
