//! Issuance throughput, entry-change latency and sync cost through the agent API, next to
//! raw P-256 signing measured in the same run.
//!
//! `cargo bench -p wimse-server --bench issuance` starts a server in-process
//! (`wimse_server::run::start`, SQLite in a temp dir, TLS on 127.0.0.1:0), attests an agent
//! with a join token, and then:
//!
//! - **raw sign**: ES256 signatures per second with an in-memory key, on one thread and on
//!   every core — the ceiling of any issuance, which signs once;
//! - **x509 / WIT issuance**: N concurrent clients (8, 32), each with its own mTLS
//!   connection, requesting X.509 certificates (CSR in, chain out) and WITs for the agent's
//!   entry as fast as they can; client and server share the machine's cores, as they would
//!   not in production, so the numbers are a lower bound;
//! - **change latency**: admin `create entry` → a long-polling agent sees it, p50/p99;
//! - **sync at scale**: an agent's full initial sync of its 1,000 entries among 100,000
//!   other entries (time, requests, bytes), and the incremental sync of one change.
//!
//! A plain harness (no criterion), in the style of `crates/core/benches/verify.rs`.

mod support;
use support::{OrFail, fail};

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wimse_core::WorkloadId;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::x509::build_csr;
use wimse_server::admin::client::AdminClient;
use wimse_server::agent_api::client::{AgentApiClient, AgentIdentity, decode_chain};
use wimse_server::api::EntryRequest;
use wimse_server::config::FileConfig;
use wimse_server::datastore::{Datastore, NewEntry};
use wimse_server::run::{Running, start};

/// How long each throughput case runs after its warm-up.
const MEASURE: Duration = Duration::from_secs(4);
const WARM_UP: Duration = Duration::from_millis(500);

#[allow(clippy::cast_precision_loss, reason = "benchmark arithmetic")]
fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// ES256 signatures per second on `threads` threads.
fn raw_sign(threads: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, count, counting) = (stop.clone(), count.clone(), counting.clone());
            std::thread::spawn(move || {
                let key = SigningKey::generate(Algorithm::Es256).or_fail();
                let message = [7u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    black_box(key.sign(black_box(&message)).or_fail());
                    if counting.load(Ordering::Relaxed) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(WARM_UP);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(MEASURE);
    let done = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    per_second(done, elapsed)
}

struct Bench {
    running: Running,
    admin: AdminClient,
    identity: AgentIdentity,
    agent_id: WorkloadId,
    entry_id: String,
}

impl Bench {
    fn client(&self) -> AgentApiClient {
        AgentApiClient::new(
            self.running.local_addr,
            &self.running.state.bundle(),
            Some(&self.identity),
        )
        .or_fail()
    }
}

async fn setup(dir: &std::path::Path) -> (Bench, wimse_server::run::Tasks) {
    let config = FileConfig {
        trust_domain: Some("bench.example".into()),
        data_dir: Some(dir.join("data")),
        bind: Some("127.0.0.1:0".parse().or_fail()),
        ..FileConfig::default()
    }
    .resolve()
    .or_fail();
    let (running, tasks) = start(config).await.or_fail();
    let admin = AdminClient::new(&running.admin_socket);
    let token = admin.create_join_token(600).await.or_fail();
    let key = SigningKey::generate(Algorithm::Es256).or_fail();
    let agent_id = WorkloadId::parse(&token.agent_id).or_fail();
    let csr = build_csr(&key, &agent_id).or_fail();
    let anonymous =
        AgentApiClient::new(running.local_addr, &running.state.bundle(), None).or_fail();
    let answer = anonymous.attest(&token.token, &csr).await.or_fail();
    let identity = AgentIdentity {
        chain: decode_chain(&answer.svid_chain).or_fail(),
        key: Arc::new(key),
    };
    let entry = admin
        .create_entry(&EntryRequest {
            spiffe_id: "spiffe://bench.example/web".into(),
            parent_id: agent_id.to_string(),
            selectors: vec!["unix:uid:1000".into()],
            ..EntryRequest::default()
        })
        .await
        .or_fail();
    (
        Bench {
            running,
            admin,
            identity,
            agent_id,
            entry_id: entry.id,
        },
        tasks,
    )
}

#[derive(Clone, Copy)]
enum Kind {
    X509,
    Wit,
}

/// Issuances per second with `clients` concurrent clients, each on its own connection.
async fn issuance(bench: &Bench, kind: Kind, clients: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..clients {
        let client = bench.client();
        let entry_id = bench.entry_id.clone();
        let (stop, counting, count) = (stop.clone(), counting.clone(), count.clone());
        // The workload's key and request are made once: only issuance is measured.
        let key = SigningKey::generate(Algorithm::Es256).or_fail();
        let csr = build_csr(
            &key,
            &WorkloadId::parse("spiffe://bench.example/w").or_fail(),
        )
        .or_fail();
        let mut jwk = key.public_jwk().clone();
        jwk.alg = Some("ES256".into());
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match kind {
                    Kind::X509 => {
                        black_box(client.x509(&entry_id, &csr).await.or_fail());
                    }
                    Kind::Wit => {
                        black_box(client.wit(&entry_id, &jwk).await.or_fail());
                    }
                }
                if counting.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let done = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.await;
    }
    per_second(done, elapsed)
}

/// Microseconds per call of `op`, on this thread, over `n` calls after `n / 10` warm-up.
fn micros_per_op(n: u32, mut op: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        op();
    }
    let started = Instant::now();
    for _ in 0..n {
        op();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// Where one issuance's CPU goes: each step alone, on one thread.
async fn breakdown(bench: &Bench) {
    let state = &bench.running.state;
    let key = SigningKey::generate(Algorithm::Es256).or_fail();
    let csr = build_csr(
        &key,
        &WorkloadId::parse("spiffe://bench.example/w").or_fail(),
    )
    .or_fail();
    let mut jwk = key.public_jwk().clone();
    jwk.alg = Some("ES256".into());
    let entry = state
        .store
        .get_entry(&bench.entry_id)
        .await
        .or_fail()
        .or_fail_none();
    let now = wimse_core::token::unix_now();
    let sign = micros_per_op(2000, || {
        black_box(key.sign(black_box(&[7u8; 256])).or_fail());
    });
    let parse_csr = micros_per_op(2000, || {
        black_box(wimse_core::x509::parse_csr(black_box(&csr)).or_fail());
    });
    let (x509, wit, leaf_der) = {
        let authorities = state
            .authorities
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let issuer = wimse_server::issuer::Issuer::new(&authorities, state.config.wit_profile);
        let mut leaf = None;
        let x509 = micros_per_op(2000, || {
            leaf = Some(issuer.x509_for_entry(&entry, &csr, now).or_fail());
        });
        let wit = micros_per_op(2000, || {
            black_box(issuer.wit(&entry, &jwk, now).or_fail());
        });
        let leaf_der = leaf
            .and_then(|chain| chain.into_iter().next())
            .or_fail_none()
            .into_der();
        (x509, wit, leaf_der)
    };
    let parse_cert = micros_per_op(2000, || {
        black_box(wimse_core::x509::Certificate::from_der(leaf_der.clone()).or_fail());
    });
    let started = Instant::now();
    let rounds = 2000_u32;
    for _ in 0..rounds {
        black_box(state.store.get_agent(&bench.agent_id).await.or_fail());
        black_box(state.store.get_entry(&bench.entry_id).await.or_fail());
    }
    let lookups = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    // The token service's check on every exchange that continues a transaction (replace,
    // resume, chain): one indexed read, here a miss among 1,000 revoked transactions.
    for i in 0..1000 {
        let txn = format!("revoked-{i}");
        state
            .store
            .revoke_transaction(&txn, now, now + 86_400)
            .await
            .or_fail();
    }
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(state.store.transaction_revoked("live-txn").await.or_fail());
    }
    let revoked = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    println!(
        "per-op cost on one thread (us): ES256 sign {sign:.1}, CSR parse+verify {parse_csr:.1}, \
         Issuer::x509 (CSR check + build + sign) {x509:.1}, Issuer::wit {wit:.1}, \
         certificate parse {parse_cert:.1}, get_agent+get_entry (SQLite) {lookups:.1}, \
         transaction_revoked (SQLite) {revoked:.1}"
    );
}

trait OrFailNone<T> {
    fn or_fail_none(self) -> T;
}

impl<T> OrFailNone<T> for Option<T> {
    fn or_fail_none(self) -> T {
        self.unwrap_or_else(|| fail(&"missing value"))
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let index = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Admin create → long-polling agent sees it, `changes` times.
async fn change_latency(bench: &Bench, changes: usize) -> Vec<Duration> {
    let agent = bench.client();
    let mut since = agent.entries(0, 0).await.or_fail().revision;
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let poller = {
            let agent = agent.clone();
            tokio::spawn(async move { agent.entries(since, 10).await })
        };
        // Let the poll reach the server and park.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        bench
            .admin
            .create_entry(&EntryRequest {
                spiffe_id: format!("spiffe://bench.example/latency/{i}"),
                parent_id: bench.agent_id.to_string(),
                selectors: vec!["unix:uid:1000".into()],
                ..EntryRequest::default()
            })
            .await
            .or_fail();
        let answer = poller.await.or_fail().or_fail();
        samples.push(started.elapsed());
        if answer.changes.is_empty() {
            fail(&"the long-poll ended without the change");
        }
        since = answer.revision;
    }
    samples.sort();
    samples
}

fn new_entry(path: &str, parent: &WorkloadId) -> NewEntry {
    NewEntry {
        spiffe_id: WorkloadId::parse(&format!("spiffe://bench.example{path}")).or_fail(),
        parent_id: parent.clone(),
        selectors: vec!["unix:uid:1000".parse().or_fail()],
        x509_ttl: 3600,
        jwt_ttl: 300,
        dns_names: Vec::new(),
        hint: None,
        admin: false,
        downstream: false,
        federates_with: Vec::new(),
    }
}

/// A second agent, attested with a join token: its mTLS client and ID.
async fn attest_another_agent(bench: &Bench) -> (AgentApiClient, WorkloadId) {
    let token = bench.admin.create_join_token(600).await.or_fail();
    let key = SigningKey::generate(Algorithm::Es256).or_fail();
    let agent_id = WorkloadId::parse(&token.agent_id).or_fail();
    let anonymous = AgentApiClient::new(
        bench.running.local_addr,
        &bench.running.state.bundle(),
        None,
    )
    .or_fail();
    let answer = anonymous
        .attest(&token.token, &build_csr(&key, &agent_id).or_fail())
        .await
        .or_fail();
    let identity = AgentIdentity {
        chain: decode_chain(&answer.svid_chain).or_fail(),
        key: Arc::new(key),
    };
    let agent = AgentApiClient::new(
        bench.running.local_addr,
        &bench.running.state.bundle(),
        Some(&identity),
    )
    .or_fail();
    (agent, agent_id)
}

/// Full initial sync of an agent's `own` entries among `others`, then one incremental change.
async fn sync_at_scale(bench: &Bench, own: usize, others: usize) {
    let store = &bench.running.state.store;
    let (agent, agent_id) = attest_another_agent(bench).await;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    let ratio = others / own.max(1);
    let mut own_made = 0;
    for i in 0..others + own {
        // Own entries spread evenly among the others' (worst case for revision order).
        let entry = if i % (ratio + 1) == 0 && own_made < own {
            own_made += 1;
            new_entry(&format!("/own/{i}"), &agent_id)
        } else {
            let parent = WorkloadId::parse(&format!(
                "spiffe://bench.example/wimse/agent/join_token/other{}",
                i % 100
            ))
            .or_fail();
            new_entry(&format!("/other/{i}"), &parent)
        };
        batch.push(entry);
        if batch.len() == 1000 {
            store
                .create_entries(std::mem::take(&mut batch))
                .await
                .or_fail();
        }
    }
    store.create_entries(batch).await.or_fail();
    let total = store.count_entries().await.or_fail();
    println!(
        "sync setup: {total} entries in the store ({own_made} the agent's), loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Full initial sync, every page.
    let started = Instant::now();
    let mut requests = 1;
    let mut bytes = 0;
    let mut page = agent.entries(0, 0).await.or_fail();
    let mut received = page.changes.len();
    bytes += serde_json::to_vec(&page).or_fail().len();
    while page.more {
        let until = page.until.unwrap_or(page.revision);
        page = agent.entries_until(page.revision, until).await.or_fail();
        requests += 1;
        received += page.changes.len();
        bytes += serde_json::to_vec(&page).or_fail().len();
    }
    let full = started.elapsed();
    println!(
        "full sync: {received} entries of {total} in {:.1} ms, {requests} request(s), {bytes} bytes of JSON",
        ms(full)
    );

    // One change of the agent's, then one of another agent's.
    let since = page.revision;
    store
        .create_entry(new_entry("/own/incremental", &agent_id))
        .await
        .or_fail();
    let started = Instant::now();
    let delta = agent.entries(since, 0).await.or_fail();
    let took = started.elapsed();
    println!(
        "incremental sync of one own change: {} change(s) in {:.2} ms, {} bytes of JSON",
        delta.changes.len(),
        ms(took),
        serde_json::to_vec(&delta).or_fail().len()
    );
    let other = WorkloadId::parse("spiffe://bench.example/wimse/agent/join_token/other1").or_fail();
    store
        .create_entry(new_entry("/other/incremental", &other))
        .await
        .or_fail();
    let started = Instant::now();
    let delta = agent.entries(delta.revision, 0).await.or_fail();
    let took = started.elapsed();
    println!(
        "incremental sync of one other agent's change: {} change(s) in {:.2} ms, {} bytes of JSON",
        delta.changes.len(),
        ms(took),
        serde_json::to_vec(&delta).or_fail().len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `issuance-only` (after `--`) runs just the issuance
    // cases, for profiling; any other argument is ignored.
    let issuance_only = std::env::args().any(|a| a == "issuance-only");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!(
        "wimse-server issuance benchmark: {cores} cores, {MEASURE:?} per case after {WARM_UP:?} warm-up"
    );
    let raw_one = raw_sign(1);
    let raw_all = raw_sign(cores);
    println!("raw ES256 sign: {raw_one:.0}/s on 1 thread, {raw_all:.0}/s on {cores} threads");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .or_fail();
    let dir = tempfile::tempdir().or_fail();
    runtime.block_on(async {
        let (bench, tasks) = setup(dir.path()).await;
        breakdown(&bench).await;
        for clients in [8, 32] {
            let x509 = issuance(&bench, Kind::X509, clients).await;
            println!(
                "x509 issuance ({clients} clients): {x509:.0}/s (ratio to raw sign on {cores} threads {:.3})",
                x509 / raw_all
            );
            let wit = issuance(&bench, Kind::Wit, clients).await;
            println!(
                "wit issuance ({clients} clients): {wit:.0}/s (ratio to raw sign on {cores} threads {:.3})",
                wit / raw_all
            );
        }
        if issuance_only {
            tasks.stop().await;
            return;
        }
        let latency = change_latency(&bench, 50).await;
        println!(
            "entry change to agent ({} changes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latency.len(),
            ms(percentile(&latency, 50)),
            ms(percentile(&latency, 99)),
            ms(latency.last().copied().unwrap_or_default())
        );
        sync_at_scale(&bench, 1_000, 100_000).await;
        tasks.stop().await;
    });
}
