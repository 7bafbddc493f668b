//! Workload API latency from the agent's cache, and the agent's memory, with 1,000
//! registered workloads: the real `wimse server` and `wimse agent` binaries, this process
//! as the workload.
//!
//! `cargo bench -p wimse-cli --bench agent_fetch` prints p50/p99 of a `FetchX509SVID`
//! first answer (a new stream each time, attestation included), of a cached
//! `FetchJWTSVID`, and of the baseline: the same round trip refused by the security-header
//! check (transport cost only), measured interleaved in the same run; then the ratio
//! `fetch_x509 p50 / baseline p50`, the agent's RSS, and how long the agent took to mint
//! X.509-SVIDs and WITs for all 1,000 entries.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::items_after_statements,
    reason = "benchmark"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Agent, Server, TRUST_DOMAIN, my_uid_selector};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use wimse_server::admin::client::AdminClient;
use wimse_server::api::EntryRequest;

const WORKLOADS: usize = 1_000;
const SAMPLES: usize = 2_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A `/proc/<pid>/status` memory field, KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), &[]);
    let (token, agent_id) = server.join_token();
    let admin = AdminClient::new(&server.socket());
    // One entry for this process, the others for uids nobody here has.
    let mine = my_uid_selector();
    for n in 0..WORKLOADS {
        let selector = if n == 0 {
            mine.clone()
        } else {
            format!("unix:uid:{}", 100_000 + n)
        };
        admin
            .create_entry(&EntryRequest {
                spiffe_id: format!("spiffe://{TRUST_DOMAIN}/bench/{n}"),
                parent_id: agent_id.clone(),
                selectors: vec![selector],
                ..EntryRequest::default()
            })
            .await
            .unwrap();
    }
    let started = Instant::now();
    let health: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let health_flag = health.to_string();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        &["--join-token", &token, "--health-bind", &health_flag],
    );
    // Wait until every entry has its X.509-SVID and WIT: the agent's mint counter.
    let mut own = wimse_proto::Workload::connect(&agent.socket).await.unwrap();
    loop {
        let log = agent.log();
        let minted = metrics_minted(health);
        if minted >= 2 * WORKLOADS as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "agent did not mint all: {minted} {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warm = started.elapsed();
    own.x509_context().await.unwrap();

    let channel = wimse_proto::channel(&agent.socket).await.unwrap();
    let mut bare = wimse_proto::client::SpiffeWorkloadApiClient::new(channel);
    let audience = vec!["bench".to_owned()];
    own.jwt_svids(&audience, None).await.unwrap();

    let mut x509 = Vec::with_capacity(SAMPLES);
    let mut jwt = Vec::with_capacity(SAMPLES);
    let mut refused_rt = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let mut stream = Box::pin(own.watch_x509().await.unwrap());
        stream.next().await.unwrap().unwrap();
        x509.push(t.elapsed());
        drop(stream);

        let t = Instant::now();
        own.jwt_svids(&audience, None).await.unwrap();
        jwt.push(t.elapsed());

        let t = Instant::now();
        let refused = bare.fetch_x509svid(wimse_proto::X509svidRequest {}).await;
        assert!(refused.is_err());
        refused_rt.push(t.elapsed());
    }
    for samples in [&mut x509, &mut jwt, &mut refused_rt] {
        samples.sort();
    }
    let show = |name: &str, s: &[Duration]| {
        println!(
            "{name:<34} p50 {:>8.1} us   p99 {:>8.1} us",
            percentile(s, 0.5).as_secs_f64() * 1e6,
            percentile(s, 0.99).as_secs_f64() * 1e6
        );
    };
    println!("{WORKLOADS} registered workloads, {SAMPLES} samples each, interleaved");
    show("FetchX509SVID (new stream)", &x509);
    show("FetchJWTSVID (cached)", &jwt);
    show("baseline: refused round trip", &refused_rt);
    println!(
        "ratio fetch_x509/baseline p50 = {:.2}",
        percentile(&x509, 0.5).as_secs_f64() / percentile(&refused_rt, 0.5).as_secs_f64()
    );
    let pid = agent.child.id();
    let mib = |field| status_kib(pid, field) as f64 / 1024.0;
    // RssFile is the mapped `wimse` binary (server, agent, proxy: one binary), shared with
    // every other wimse process; RssAnon is the agent's own memory.
    println!(
        "agent RSS = {:.1} MiB (anonymous {:.1} MiB, file-backed {:.1} MiB)",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:")
    );
    println!("agent start to {WORKLOADS} X.509-SVIDs + WITs minted: {warm:.2?}");
    agent.stop();
    server.stop();
}

/// The agent's `wimse_agent_minted_total` of X.509-SVIDs and WITs, from its metrics.
fn metrics_minted(addr: std::net::SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .filter(|l| {
            l.starts_with("wimse_agent_minted_total{kind=\"x509\"}")
                || l.starts_with("wimse_agent_minted_total{kind=\"wit\"}")
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}
