//! The outbound sidecar's destinations: where this workload's credentials may go, and
//! which server identity is accepted at each over TLS; and its WIT-based proofs sent over
//! TLS to a server that proves its X509-SVID.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod fixture;

use axum::body::Body;
use fixture::Domain;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;
use wimse_workload::listen::serve;
use wimse_workload::proxy::{OutboundOptions, OutboundProof, outbound_router};
use wimse_workload::tls::{ClientCerts, ServerNames, server_config, server_config_with};
use wimse_workload::{
    AuthConfig, Authenticator, CredentialSource, MtlsPeer, PeerAllowList, PeerIdentity, Policy,
    ProofMethod, WimseLayer,
};

/// An upstream on loopback answering with the caller it saw: the mTLS peer when `tls`
/// is its source, else whether a WIT arrived.
async fn upstream(tls: Option<&CredentialSource>) -> SocketAddr {
    let app = axum::Router::new()
        .fallback(
            |peer: Option<axum::Extension<MtlsPeer>>,
             headers: http::HeaderMap,
             body: axum::body::Bytes| async move {
                match peer {
                    Some(p) => p.0.0.to_string(),
                    None if !body.is_empty() => format!("bytes={}", body.len()),
                    None => format!("wit={}", headers.contains_key("workload-identity-token")),
                }
            },
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match tls {
        Some(source) => {
            let config = server_config(source, PeerAllowList::default()).unwrap();
            tokio::spawn(serve(listener, Arc::new(config), app));
        }
        None => {
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
    }
    addr
}

async fn get(proxy: &axum::Router, url: &str) -> (StatusCode, String) {
    send(proxy, Request::get(url).body(Body::empty()).unwrap()).await
}

async fn send(proxy: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = proxy.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn credentials_go_only_to_the_listed_destinations() {
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let up = upstream(None).await;
    let mut options = OutboundOptions::new(OutboundProof::Attach(ProofMethod::WitWpt));
    options
        .destinations
        .insert(format!("127.0.0.1:{}", up.port()), None);
    let proxy = outbound_router(source, options).unwrap();
    let (status, body) = get(&proxy, &format!("http://127.0.0.1:{}/x", up.port())).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "wit=true"));
    // The same server by another name, or any other host: refused, nothing sent.
    for other in [
        format!("http://localhost:{}/x", up.port()),
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let (status, body) = get(&proxy, &other).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{other}: {body}");
        assert!(body.contains("destination-not-allowed"), "{body}");
    }
}

#[tokio::test]
async fn with_one_upstream_every_request_goes_there_with_its_proof_and_no_tunnel_opens() {
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let up = upstream(None).await;
    let mut options = OutboundOptions::new(OutboundProof::Attach(ProofMethod::WitWpt));
    options.upstream = Some(format!("127.0.0.1:{}", up.port()).parse().unwrap());
    let proxy = outbound_router(source, options).unwrap();
    // The service dialled the sidecar as if it were the server (origin-form), or named
    // another host: either way the request goes to the upstream, with a WIT.
    for url in ["/orders?id=7", "http://elsewhere.example/orders"] {
        let (status, body) = get(&proxy, url).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "wit=true"),
            "{url}"
        );
    }
    let connect = Request::connect("elsewhere.example:443")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&proxy, connect).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(body.contains("no-tunnels"), "{body}");
}

#[tokio::test]
async fn over_mutual_tls_each_destination_accepts_only_the_server_named_for_it() {
    let good = Domain::new("good.test");
    let w2 = upstream(Some(&CredentialSource::fixed(
        good.credentials("/w2", &[&good]),
    )))
    .await;
    let w3 = upstream(Some(&CredentialSource::fixed(
        good.credentials("/w3", &[&good]),
    )))
    .await;
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let mut allow = PeerAllowList::default();
    allow.trust_domains.insert(good.td.clone());
    let mut options = OutboundOptions::new(OutboundProof::Mtls(allow));
    // Both addresses are expected to be w3: w2 answering at one of them (a spoofed
    // address, a wrong route) is refused although the allow-list takes its trust domain.
    for addr in [w2, w3] {
        options
            .destinations
            .insert(format!("127.0.0.1:{}", addr.port()), Some(good.id("/w3")));
    }
    let proxy = outbound_router(source, options).unwrap();
    // The upstream answers with its own view of the caller (w1 over mTLS).
    let (status, body) = get(&proxy, &format!("http://127.0.0.1:{}/x", w3.port())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "spiffe://good.test/w1");
    let (status, body) = get(&proxy, &format!("http://127.0.0.1:{}/x", w2.port())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

#[tokio::test]
async fn a_body_streams_through_when_no_signature_covers_it() {
    // Larger than what a message signature's digest makes the proxy buffer (16 MiB).
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let up = upstream(None).await;
    let options = OutboundOptions::new(OutboundProof::Attach(ProofMethod::WitWpt));
    let proxy = outbound_router(source, options).unwrap();
    let size = wimse_workload::proxy::MAX_OUTBOUND_BODY + 1;
    let request = Request::post(format!("http://127.0.0.1:{}/upload", up.port()))
        .body(Body::from(vec![7u8; size]))
        .unwrap();
    let (status, body) = send(&proxy, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("bytes={size}"));
}

/// A Rust service behind the `WimseLayer` on a TLS listener at `https://127.0.0.1:<port>`
/// (its public URL), asking callers for certificates as `clients` says; it answers with
/// the authenticated caller and how it was proven.
async fn service_over_tls(source: &CredentialSource, clients: ClientCerts) -> SocketAddr {
    service_over_tls_at("127.0.0.1", source, clients).await
}

/// [`service_over_tls`], its public URL naming `host` instead.
async fn service_over_tls_at(
    host: &str,
    source: &CredentialSource,
    clients: ClientCerts,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let public_url = format!("https://{host}:{}", addr.port());
    let authn = Authenticator::new(AuthConfig::new(public_url), source.clone());
    let policy = Policy::from_text("permit(principal, action, resource);").unwrap();
    let app = axum::Router::new()
        .fallback(
            |axum::Extension(peer): axum::Extension<PeerIdentity>| async move {
                format!("{} {}", peer.id, peer.method.name())
            },
        )
        .layer(WimseLayer::new(Arc::new(authn), Arc::new(policy)));
    let config = server_config_with(source, PeerAllowList::default(), clients).unwrap();
    tokio::spawn(serve(listener, Arc::new(config), app));
    addr
}

#[tokio::test]
async fn over_tls_the_wit_and_its_proof_reach_a_server_that_proves_its_svid() {
    let good = Domain::new("good.test");
    let w3 = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let mut only_w3 = PeerAllowList::default();
    only_w3.ids.insert(good.id("/w3"));
    // The proof is bound to the `https://` URL the request goes out as, which is the
    // service's public URL; whether the server asks for the proxy's certificate or
    // requires it, the WIT in the request is what authenticates the caller.
    for clients in [ClientCerts::Optional, ClientCerts::Required] {
        let addr = service_over_tls(&w3, clients).await;
        for (method, name) in [
            (ProofMethod::WitWpt, "wit-wpt"),
            (ProofMethod::HttpSig, "http-sig"),
        ] {
            let proof = OutboundProof::AttachOverTls(method, only_w3.clone());
            let proxy = outbound_router(source.clone(), OutboundOptions::new(proof)).unwrap();
            let (status, body) = get(&proxy, &format!("http://{addr}/orders")).await;
            assert_eq!(status, StatusCode::OK, "{clients:?} {name}: {body}");
            assert_eq!(body, format!("spiffe://good.test/w1 {name}"), "{clients:?}");
        }
    }
    // A server that is not the one the allow-list names: refused in the handshake.
    let w2 = service_over_tls(
        &CredentialSource::fixed(good.credentials("/w2", &[&good])),
        ClientCerts::Optional,
    )
    .await;
    let proof = OutboundProof::AttachOverTls(ProofMethod::WitWpt, only_w3);
    let proxy = outbound_router(source, OutboundOptions::new(proof)).unwrap();
    let (status, body) = get(&proxy, &format!("http://{w2}/orders")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

#[tokio::test]
async fn over_tls_a_server_reached_by_dns_name_must_hold_that_name_in_its_svid() {
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let server = |dns: &[&str]| {
        let mut creds = good.credentials("/w3", &[&good]);
        creds.x509 = Some(good.x509_named("/w3", dns));
        CredentialSource::fixed(creds)
    };
    let named = server(&["localhost"]);
    let unnamed = server(&[]);
    let wildcard_only = server(&["*.localhost"]);
    let proxy = |proof: OutboundProof, names: ServerNames| {
        let mut options = OutboundOptions::new(proof);
        options.server_names = names;
        outbound_router(source.clone(), options).unwrap()
    };
    let wit_wpt = || OutboundProof::AttachOverTls(ProofMethod::WitWpt, PeerAllowList::default());
    let mtls = || OutboundProof::Mtls(PeerAllowList::default());
    // The default checks names (RFC 9525 §6.3, SPECS §5 and §6).
    assert_eq!(
        OutboundOptions::new(mtls()).server_names,
        ServerNames::Checked
    );

    // Reached as `localhost`: the SVID that names it is taken, with either proof.
    let at = service_over_tls_at("localhost", &named, ClientCerts::Optional).await;
    let (status, body) = get(
        &proxy(wit_wpt(), ServerNames::Checked),
        &format!("http://localhost:{}/orders", at.port()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "spiffe://good.test/w1 wit-wpt");
    let (status, body) = get(
        &proxy(mtls(), ServerNames::Checked),
        &format!("http://localhost:{}/orders", at.port()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // An SVID of the right trust domain that does not name `localhost` (none, or only
    // a wildcard one label below it): refused in the handshake, and the reason is told.
    for (svid, presented) in [(&unnamed, "none"), (&wildcard_only, "*.localhost")] {
        let at = service_over_tls_at("localhost", svid, ClientCerts::Optional).await;
        for proof in [wit_wpt(), mtls()] {
            let (status, body) = get(
                &proxy(proof, ServerNames::Checked),
                &format!("http://localhost:{}/orders", at.port()),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
            assert!(
                body.contains(&format!(
                    "certificate does not name `localhost` (its DNS names: {presented})"
                )),
                "{body}"
            );
        }
        // Reached by IP address, the identity alone is what is checked.
        let (status, body) = get(
            &proxy(mtls(), ServerNames::Checked),
            &format!("http://127.0.0.1:{}/orders", at.port()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // And with names unchecked, as SPIFFE-TLS does.
        let (status, body) = get(
            &proxy(mtls(), ServerNames::Unchecked),
            &format!("http://localhost:{}/orders", at.port()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // A pin and a name check are both kept: the pinned identity at a server that does
    // not name `localhost`, and another identity pinned at one that does, are refused.
    let unnamed_at = service_over_tls_at("localhost", &unnamed, ClientCerts::Optional).await;
    for (port, pinned, why) in [
        (unnamed_at.port(), "/w3", "does not name `localhost`"),
        (
            at.port(),
            "/w2",
            "`spiffe://good.test/w3` is not on the allow-list",
        ),
    ] {
        let mut options = OutboundOptions::new(mtls());
        options
            .destinations
            .insert(format!("localhost:{port}"), Some(good.id(pinned)));
        let (status, body) = get(
            &outbound_router(source.clone(), options).unwrap(),
            &format!("http://localhost:{port}/orders"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains(why), "{why}: {body}");
    }
}

#[tokio::test]
async fn over_tls_nothing_is_sent_to_a_server_that_speaks_plain_http() {
    // A plain listener that keeps every byte it is sent: the proxy's TLS handshake fails,
    // and neither the WIT nor the request ever leaves in the clear.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = vec![0u8; 4096];
        let n = stream.read(&mut seen).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        seen.truncate(n);
        seen
    });
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let proof = OutboundProof::AttachOverTls(ProofMethod::WitWpt, PeerAllowList::default());
    let proxy = outbound_router(source, OutboundOptions::new(proof)).unwrap();
    let (status, body) = get(&proxy, &format!("http://{addr}/orders")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let seen = String::from_utf8_lossy(&received.await.unwrap()).to_ascii_lowercase();
    assert!(!seen.is_empty(), "the proxy never connected");
    for leak in ["workload-identity-token", "workload-proof-token", "/orders"] {
        assert!(
            !seen.contains(leak),
            "`{leak}` went out in the clear: {seen}"
        );
    }
}

/// Workload 1's outbound proxy as `options` say, served on loopback as `wimse proxy
/// outbound` serves it (so that CONNECT upgrades work): its address.
async fn serve_proxy(options: OutboundOptions) -> SocketAddr {
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let proxy = outbound_router(source, options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, proxy).await });
    addr
}

/// Sends `CONNECT target` to the outbound proxy at `proxy`, and the status line it gets.
async fn connect(proxy: SocketAddr, target: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The head of the answer, up to its blank line, and nothing of the tunnel after it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap_or_default().to_owned();
    (stream, status)
}

#[tokio::test]
async fn connect_opens_a_tunnel_to_a_listed_destination_with_nothing_attached() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A TCP server that answers what it is sent in upper case: the service's own
    // protocol (its TLS, in real use) runs through the tunnel untouched.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = echo.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        stream
            .write_all(&buf[..n].to_ascii_uppercase())
            .await
            .unwrap();
    });
    // A listed destination where nothing listens.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = OutboundOptions::new(OutboundProof::Attach(ProofMethod::WitWpt));
    for listed in [target, closed] {
        options
            .destinations
            .insert(format!("127.0.0.1:{}", listed.port()), None);
    }
    let addr = serve_proxy(options).await;

    let (mut tunnel, status) = connect(addr, &target.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    tunnel.write_all(b"hello through").await.unwrap();
    let mut answer = String::new();
    tunnel.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "HELLO THROUGH");

    // Not a listed destination, no port, or nothing listening: no tunnel.
    for (other, expected) in [
        ("169.254.169.254:80".to_owned(), "HTTP/1.1 403 Forbidden"),
        ("127.0.0.1".to_owned(), "HTTP/1.1 400 Bad Request"),
        (closed.to_string(), "HTTP/1.1 502 Bad Gateway"),
    ] {
        let (_, status) = connect(addr, &other).await;
        assert_eq!(status, expected, "{other}");
    }
}

#[tokio::test]
async fn a_tunnel_that_carries_nothing_for_its_idle_limit_is_closed_at_both_ends() {
    use tokio::io::AsyncReadExt;
    // A server that accepts and then neither sends nor closes; it reports when the
    // proxy's side of the connection ends.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = silent.local_addr().unwrap();
    let upstream_closed = tokio::spawn(async move {
        let (mut stream, _) = silent.accept().await.unwrap();
        let mut buf = [0u8; 16];
        stream.read(&mut buf).await.map_or(true, |n| n == 0)
    });
    let mut options = OutboundOptions::new(OutboundProof::Attach(ProofMethod::WitWpt));
    options.tunnel_idle = std::time::Duration::from_secs(1);
    let addr = serve_proxy(options).await;

    let (mut tunnel, status) = connect(addr, &target.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tunnel.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "an idle tunnel stayed open");
    assert!(rest.is_empty());
    let upstream_closed = tokio::time::timeout(std::time::Duration::from_secs(10), upstream_closed)
        .await
        .expect("the upstream end stayed open")
        .unwrap();
    assert!(upstream_closed);
}
