//! Tampering with a written log is detected, at the right entry.
//!
//! The log used throughout (records every 4, closed):
//! line 1 start (0), lines 2-5 records (1-4), line 6 checkpoint (5), lines 7-10 records
//! (6-9), line 11 checkpoint (10), lines 12-13 records (11-12), line 14 closing checkpoint (13).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod support;

use std::path::Path;

use support::*;
use wimse_audit::{Body, Broken, Decision, LineError, Problem, VerifyError, VerifyOptions, verify};
use wimse_core::jose::{Algorithm, SigningKey};

fn written() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, key(), 10, 4);
    (dir, path)
}

fn broken(path: &Path, options: &VerifyOptions) -> Broken {
    match verify(&[path], options) {
        Err(VerifyError::Broken(b)) => *b,
        other => panic!("expected a broken log, got {other:?}"),
    }
}

fn check(path: &Path) -> Broken {
    broken(path, &VerifyOptions::default())
}

#[test]
fn an_untouched_log_verifies_with_every_entry_signed() {
    let (dir, path) = written();
    assert_eq!(lines(&path).len(), 14);
    let report = verify(&[&path], &VerifyOptions::default()).unwrap();
    assert_eq!(report.entries, 14);
    assert_eq!(report.records, 10);
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.unsigned_tail, 0);
    assert!(report.closed);
    assert_eq!(report.signers.len(), 1);
    assert_eq!(report.signers[0].id, signer());
    assert!(report.torn_tail.is_none());
    assert_no_secrets(dir.path());
}

#[test]
fn an_edited_record_is_named_at_its_own_line() {
    let (dir, path) = written();
    let mut l = lines(&path);
    assert!(l[7].contains("\"allow\""));
    l[7] = l[7].replacen("\"allow\"", "\"deny\"", 1);
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (8, Some(7)));
    assert_eq!(b.problem, Problem::Line(LineError::HashMismatch));
    assert_no_secrets(dir.path());
}

#[test]
fn an_edited_record_with_its_hash_recomputed_is_caught_at_the_next_line() {
    let (dir, path) = written();
    let mut l = lines(&path);
    let mut entry = parse(&l[7]);
    let Body::Record(record) = &mut entry.body else {
        panic!("line 8 is a record")
    };
    record.decision = Decision::Deny;
    l[7] = reencode(entry.index, entry.prev, &entry.body).1;
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (9, Some(8)));
    assert_eq!(b.problem, Problem::PrevMismatch(7));
    assert_no_secrets(dir.path());
}

/// Rewrites the chain from line `from` (0-based) on, recomputing every hash and `prev`,
/// and setting checkpoint heads to match (signatures untouched).
fn rechain(l: &mut [String], from: usize) {
    let mut prev = parse(&l[from - 1]).hash;
    for line in l.iter_mut().skip(from) {
        let mut entry = parse_lenient(line);
        if let Body::Checkpoint(c) = &mut entry.body {
            c.head = prev;
        }
        let (hash, text) = reencode(entry.index, prev, &entry.body);
        *line = text;
        prev = hash;
    }
}

/// Parses a line that may have a stale hash (the attacker's view: content only).
fn parse_lenient(line: &str) -> wimse_audit::Entry {
    let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
    let index = value["i"].as_u64().unwrap();
    let prev = serde_json::from_value(value["prev"].clone()).unwrap();
    let body = if let Some(r) = value.get_mut("record") {
        Body::Record(Box::new(serde_json::from_value(r.take()).unwrap()))
    } else if let Some(c) = value.get_mut("checkpoint") {
        Body::Checkpoint(serde_json::from_value(c.take()).unwrap())
    } else {
        Body::Start(serde_json::from_value(value["start"].take()).unwrap())
    };
    let (hash, _) = reencode(index, prev, &body);
    wimse_audit::Entry {
        index,
        prev,
        body,
        hash,
    }
}

#[test]
fn an_edit_rechained_to_the_end_is_caught_by_the_next_checkpoint_signature() {
    let (dir, path) = written();
    let mut l = lines(&path);
    l[7] = l[7].replacen("\"allow\"", "\"deny\"", 1);
    rechain(&mut l, 7);
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (11, Some(10)));
    assert_eq!(b.problem, Problem::BadSignature);
    assert_no_secrets(dir.path());
}

#[test]
fn a_deleted_record_is_named_where_the_gap_shows() {
    let (dir, path) = written();
    let mut l = lines(&path);
    l.remove(7);
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (8, Some(8)));
    assert_eq!(
        b.problem,
        Problem::Missing {
            expected: 7,
            found: 8
        }
    );
    assert_no_secrets(dir.path());
}

#[test]
fn a_deleted_record_with_the_chain_rebuilt_is_caught_by_the_checkpoint() {
    let (dir, path) = written();
    let mut l = lines(&path);
    l.remove(7);
    // Renumber and rechain everything after the hole.
    let mut prev = parse(&l[6]).hash;
    for (n, line) in l.iter_mut().enumerate().skip(7) {
        let mut entry = parse_lenient(line);
        if let Body::Checkpoint(c) = &mut entry.body {
            c.head = prev;
            c.size = n as u64;
        }
        let (hash, text) = reencode(n as u64, prev, &entry.body);
        *line = text;
        prev = hash;
    }
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (10, Some(9)));
    assert_eq!(b.problem, Problem::BadSignature);
    assert_no_secrets(dir.path());
}

#[test]
fn an_inserted_copy_of_a_record_is_named_at_the_copy() {
    let (dir, path) = written();
    let mut l = lines(&path);
    let copy = l[7].clone();
    l.insert(8, copy);
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (9, Some(7)));
    assert_eq!(
        b.problem,
        Problem::OutOfOrder {
            expected: 8,
            found: 7
        }
    );
    assert_no_secrets(dir.path());
}

#[test]
fn an_inserted_forged_record_is_named_at_the_line_after_it() {
    let (dir, path) = written();
    let mut l = lines(&path);
    // A well-formed entry that claims index 8 and chains onto entry 7.
    let seven = parse(&l[7]);
    let forged = reencode(8, seven.hash, &Body::Record(Box::new(record(99)))).1;
    l.insert(8, forged);
    write_lines(&path, &l);
    let b = check(&path);
    // The forged line fits; the genuine entry 8 after it now repeats index 8.
    assert_eq!((b.line, b.index), (10, Some(8)));
    assert_eq!(
        b.problem,
        Problem::OutOfOrder {
            expected: 9,
            found: 8
        }
    );
    assert_no_secrets(dir.path());
}

#[test]
fn reordered_records_are_named_at_the_first_out_of_place_line() {
    let (dir, path) = written();
    let mut l = lines(&path);
    l.swap(7, 8);
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (8, Some(8)));
    assert_eq!(
        b.problem,
        Problem::Missing {
            expected: 7,
            found: 8
        }
    );
    assert_no_secrets(dir.path());
}

#[test]
fn a_truncated_tail_is_reported_as_unsigned_and_not_closed() {
    let (dir, path) = written();
    let mut l = lines(&path);
    // Cut the closing checkpoint and the last record: what remains is consistent, and
    // the report says honestly what is and is not signed.
    l.truncate(12);
    write_lines(&path, &l);
    let report = verify(&[&path], &VerifyOptions::default()).unwrap();
    assert_eq!(report.entries, 12);
    assert_eq!(report.unsigned_tail, 1);
    assert_eq!(report.unsigned_records, 1);
    assert!(!report.closed);
    assert_no_secrets(dir.path());
}

#[test]
fn a_truncated_tail_is_broken_against_a_known_size() {
    let (dir, path) = written();
    let mut l = lines(&path);
    l.truncate(6);
    write_lines(&path, &l);
    let options = VerifyOptions {
        min_entries: Some(11),
        ..VerifyOptions::default()
    };
    let b = broken(&path, &options);
    assert_eq!(b.line, 6);
    assert_eq!(
        b.problem,
        Problem::TooShort {
            expected: 11,
            found: 6
        }
    );
    assert_no_secrets(dir.path());
}

#[test]
fn a_checkpoint_with_a_damaged_signature_is_forged() {
    let (dir, path) = written();
    let mut l = lines(&path);
    let mut entry = parse(&l[5]);
    let Body::Checkpoint(c) = &mut entry.body else {
        panic!("line 6 is a checkpoint")
    };
    let flipped = if c.sig.starts_with('A') { "B" } else { "A" };
    c.sig.replace_range(0..1, flipped);
    l[5] = reencode(entry.index, entry.prev, &entry.body).1;
    rechain(&mut l, 6);
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (6, Some(5)));
    assert_eq!(b.problem, Problem::BadSignature);
    assert_no_secrets(dir.path());
}

/// Re-signs every checkpoint from line `from` on with `key`, as the attacker's own.
fn resign(l: &mut [String], from: usize, key: &SigningKey) {
    let log = match parse(&l[0]).body {
        Body::Start(s) => s.log,
        _ => panic!("line 1 is a start entry"),
    };
    let mut prev = parse_lenient(&l[from - 1]).hash;
    for line in l.iter_mut().skip(from) {
        let mut entry = parse_lenient(line);
        match &mut entry.body {
            Body::Checkpoint(c) => {
                c.head = prev;
                c.jwk = key.public_jwk().bare();
                c.sig = wimse_core::jose::b64::encode(
                    key.sign(c.signing_input(&log).as_bytes()).unwrap(),
                );
            }
            Body::Start(s) => s.jwk = key.public_jwk().bare(),
            Body::Record(_) => {}
        }
        let (hash, text) = reencode(entry.index, prev, &entry.body);
        *line = text;
        prev = hash;
    }
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let (dir, path) = written();
    let mut l = lines(&path);
    l[7] = l[7].replacen("\"allow\"", "\"deny\"", 1);
    let attacker = SigningKey::generate(Algorithm::Es256).unwrap();
    resign(&mut l, 7, &attacker);
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.index), (11, Some(10)));
    assert_eq!(b.problem, Problem::ForeignSigner);
    assert_no_secrets(dir.path());
}

#[test]
fn a_log_rewritten_from_the_start_with_another_key_fails_only_against_the_trusted_key() {
    let (dir, path) = written();
    let genuine = match parse(&lines(&path)[0]).body {
        Body::Start(s) => wimse_core::jose::PublicKey::from_jwk(&s.jwk).unwrap(),
        _ => panic!("line 1 is a start entry"),
    };
    let mut l = lines(&path);
    l[7] = l[7].replacen("\"allow\"", "\"deny\"", 1);
    let attacker = SigningKey::generate(Algorithm::Es256).unwrap();
    // Rewrite the start entry too: line 1, then everything after it.
    let mut start = parse(&l[0]);
    if let Body::Start(s) = &mut start.body {
        s.jwk = attacker.public_jwk().bare();
    }
    l[0] = reencode(0, start.prev, &start.body).1;
    resign(&mut l, 1, &attacker);
    write_lines(&path, &l);
    // Internally consistent: without an anchor, the report can only name the key.
    let report = verify(&[&path], &VerifyOptions::default()).unwrap();
    assert_ne!(report.signers[0].jwk.params, genuine.jwk().params);
    // With the genuine key as the anchor, refused at the first line.
    let options = VerifyOptions {
        trusted_keys: vec![genuine],
        ..VerifyOptions::default()
    };
    let b = broken(&path, &options);
    assert_eq!((b.line, b.index), (1, Some(0)));
    assert!(matches!(b.problem, Problem::UntrustedKey(_)));
    assert_no_secrets(dir.path());
}

#[test]
fn an_unexpected_signer_is_refused() {
    let (dir, path) = written();
    let options = VerifyOptions {
        expected_signer: Some(id("spiffe://example.org/someone-else")),
        ..VerifyOptions::default()
    };
    let b = broken(&path, &options);
    assert_eq!(b.line, 1);
    assert!(matches!(b.problem, Problem::UnexpectedSigner { .. }));
    assert_no_secrets(dir.path());
}

#[test]
fn the_broken_entry_message_names_file_line_entry_and_reason() {
    let (dir, path) = written();
    let mut l = lines(&path);
    l.remove(7);
    write_lines(&path, &l);
    let message = check(&path).to_string();
    assert!(
        message.contains("audit.jsonl` line 8 (entry 8)"),
        "{message}"
    );
    assert!(message.contains("expected entry 7, found 8"), "{message}");
    assert_no_secrets(dir.path());
}

#[test]
fn appending_records_after_a_closing_checkpoint_is_refused() {
    let (dir, path) = written();
    let mut l = lines(&path);
    let last = parse(&l[13]);
    l.push(reencode(14, last.hash, &Body::Record(Box::new(record(1)))).1);
    write_lines(&path, &l);
    let b = check(&path);
    assert_eq!((b.line, b.problem), (15, Problem::AfterClose));
    assert_no_secrets(dir.path());
}
