//! Request-verification cost against one raw signature verification, in the same run.
//!
//! `cargo bench -p wimse-core --bench verify` prints, per holder-key algorithm, the time of
//! one raw aws-lc-rs verification (key already parsed: the pure signature cost, over the
//! same signing inputs and signatures as the WPTs that the full check verifies), a full
//! WIT+WPT request verification with the WIT already verified and cached (the hot path of
//! every service), and the same with the WIT verified from scratch; then the line
//! `ratio cached_wit_wpt/raw_verify = X.XX` for ES256 (throughput ratio: 1.00 means the
//! whole request check costs exactly one signature verification).
//!
//! A plain harness (no criterion): median of several timed rounds, after a warm-up.

use std::hint::black_box;
use std::time::Instant;
use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::jose::{Algorithm, SigningKey, b64};
use wimse_core::token::replay::ReplayCache;
use wimse_core::token::wit::{
    Confirmation, WitCache, WitClaims, WitProfile, issue_wit, verify_wit,
};
use wimse_core::token::wpt::{RequestBinding, issue_wpt, verify_wpt};
use wimse_core::token::{Validation, unix_now};

const ROUNDS: usize = 15;
const PER_ROUND: usize = 1_000;
const AUDIENCE: &str = "https://orders.example.org/api/orders";

/// Times `PER_ROUND` calls of `op` starting at call number `first`; nanoseconds per call.
fn time_round(first: usize, op: &mut dyn FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..PER_ROUND {
        op(first + i);
    }
    #[allow(clippy::cast_precision_loss, reason = "benchmark arithmetic")]
    let per_op = start.elapsed().as_nanos() as f64 / PER_ROUND as f64;
    per_op
}

/// Runs the cases round-robin (one round of each in turn, so that background load on a
/// shared machine hits all of them alike) after a warm-up round each, and returns each
/// case's median nanoseconds per call.
fn measure_interleaved(cases: &mut [&mut dyn FnMut(usize)]) -> Vec<f64> {
    let mut samples = vec![Vec::with_capacity(ROUNDS); cases.len()];
    for round in 0..=ROUNDS {
        for (case, samples) in cases.iter_mut().zip(samples.iter_mut()) {
            let per_op = time_round(round * PER_ROUND, &mut **case);
            // Round 0 warms caches and the allocator; it is not counted.
            if round > 0 {
                samples.push(per_op);
            }
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
        })
        .collect()
}

struct Setup {
    bundles: BundleSet,
    profile: WitProfile,
    wit: String,
    /// Distinct proofs, one per measured call, so the replay cache never refuses one.
    wpts: Vec<String>,
    raw_key: SigningKey,
    /// Each WPT's signing input and signature, for the raw baseline: the same signatures
    /// the full check verifies (aws-lc's modular inverse is variable-time, so one
    /// signature verified over and over would run faster than distinct ones do).
    raw: Vec<(Vec<u8>, Vec<u8>)>,
}

fn setup(holder_alg: Algorithm) -> Setup {
    let now = unix_now();
    let issuer = SigningKey::generate(Algorithm::Es256).unwrap_or_else(|e| fail(&e));
    let holder = SigningKey::generate(holder_alg).unwrap_or_else(|e| fail(&e));
    let td = TrustDomain::new("example.org").unwrap_or_else(|e| fail(&e));
    let mut bundle = TrustBundle::new(td);
    bundle
        .add_authority(KeyUse::WitSvid, "wit-1", issuer.public_key().clone())
        .unwrap_or_else(|e| fail(&e));
    let mut bundles = BundleSet::new();
    bundles.insert(bundle);
    // EdDSA holder keys are allowed only by the generic WIMSE profile.
    let profile = if holder_alg == Algorithm::EdDsa {
        WitProfile::Wimse
    } else {
        WitProfile::Spiffe
    };
    let claims = WitClaims {
        iss: None,
        sub: WorkloadId::parse("spiffe://example.org/ns/shop/sa/frontend")
            .unwrap_or_else(|e| fail(&e)),
        exp: now + 3600,
        iat: Some(now),
        nbf: None,
        jti: None,
        cnf: Confirmation {
            jwk: holder.public_jwk().bare(),
        },
        aud: None,
    };
    let wit = issue_wit(&issuer, Some("wit-1"), &claims, profile).unwrap_or_else(|e| fail(&e));
    let binding = RequestBinding {
        audience: AUDIENCE,
        ..Default::default()
    };
    let total = (ROUNDS + 1) * PER_ROUND;
    let wpts = (0..total)
        .map(|_| issue_wpt(&holder, &wit, &binding, now, 60).unwrap_or_else(|e| fail(&e)))
        .collect::<Vec<_>>();
    let raw = wpts
        .iter()
        .map(|w| {
            let (input, signature) = w
                .rsplit_once('.')
                .unwrap_or_else(|| fail(&"a WPT without a signature"));
            let signature = b64::decode(signature).unwrap_or_else(|e| fail(&e));
            (input.as_bytes().to_vec(), signature)
        })
        .collect();
    Setup {
        bundles,
        profile,
        wit,
        wpts,
        raw_key: holder,
        raw,
    }
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("benchmark setup failed: {e}");
    std::process::exit(1)
}

struct Row {
    raw: f64,
    cached: f64,
    uncached: f64,
}

fn run(holder_alg: Algorithm) -> Row {
    let s = setup(holder_alg);
    let public = s.raw_key.public_key().clone();
    let binding = RequestBinding {
        audience: AUDIENCE,
        ..Default::default()
    };
    let cache = WitCache::new(1024);
    let replay_cached = ReplayCache::new(s.wpts.len() * 2 + 16);
    let replay_uncached = ReplayCache::new(s.wpts.len() * 2 + 16);

    let mut raw = |i: usize| {
        let (message, signature) = s.raw.get(i).unwrap_or_else(|| fail(&"too few proofs"));
        black_box(public.verify(holder_alg, black_box(message), black_box(signature)))
            .unwrap_or_else(|e| fail(&e));
    };
    let mut cached = |i: usize| {
        let v = Validation::at(unix_now());
        let wit = cache
            .verify(black_box(&s.wit), &s.bundles, 1, s.profile, &v)
            .unwrap_or_else(|e| fail(&e));
        let wpt = s.wpts.get(i).map_or("", String::as_str);
        black_box(verify_wpt(wpt, &wit, &binding, &v, &replay_cached)).unwrap_or_else(|e| fail(&e));
    };
    let mut uncached = |i: usize| {
        let v = Validation::at(unix_now());
        let wit =
            verify_wit(black_box(&s.wit), &s.bundles, s.profile, &v).unwrap_or_else(|e| fail(&e));
        let wpt = s.wpts.get(i).map_or("", String::as_str);
        black_box(verify_wpt(wpt, &wit, &binding, &v, &replay_uncached))
            .unwrap_or_else(|e| fail(&e));
    };
    let medians = measure_interleaved(&mut [&mut raw, &mut cached, &mut uncached]);
    Row {
        raw: medians.first().copied().unwrap_or(f64::NAN),
        cached: medians.get(1).copied().unwrap_or(f64::NAN),
        uncached: medians.get(2).copied().unwrap_or(f64::NAN),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is ignored.
    println!(
        "wimse-core request verification: {ROUNDS} interleaved rounds x {PER_ROUND} ops per case, median per op"
    );
    println!(
        "{:<8} {:>16} {:>22} {:>24} {:>10} {:>12}",
        "holder",
        "raw verify (us)",
        "cached WIT+WPT (us)",
        "uncached WIT+WPT (us)",
        "cached/raw",
        "uncached/raw"
    );
    let mut es256 = None;
    for alg in [Algorithm::Es256, Algorithm::EdDsa] {
        let row = run(alg);
        println!(
            "{:<8} {:>16.2} {:>22.2} {:>24.2} {:>10.2} {:>12.2}",
            alg.name(),
            row.raw / 1000.0,
            row.cached / 1000.0,
            row.uncached / 1000.0,
            row.raw / row.cached,
            row.raw / row.uncached
        );
        if alg == Algorithm::Es256 {
            es256 = Some(row);
        }
    }
    if let Some(row) = es256 {
        println!(
            "ratio cached_wit_wpt/raw_verify = {:.2}",
            row.raw / row.cached
        );
        println!(
            "ratio uncached_wit_wpt/raw_verify = {:.2}",
            row.raw / row.uncached
        );
    }
}
