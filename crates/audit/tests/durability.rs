//! Crashes, reopening, rotation and exports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};

use support::*;
use wimse_audit::log::sealed_path;
use wimse_audit::{
    AuditConfig, AuditError, AuditLog, Body, FsyncPolicy, Problem, StartReason, VerifyError,
    VerifyOptions, verify,
};

#[test]
fn a_torn_last_line_is_reported_apart_and_what_was_synced_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut config = config(&path, key(), 1000);
    config.fsync = FsyncPolicy::Always;
    let log = AuditLog::open(config).unwrap();
    for n in 0..5 {
        log.append(record(n)).unwrap();
    }
    // The process dies: no close, no drop (which would close).
    std::mem::forget(log);
    // ...in the middle of writing the next line.
    let whole = wimse_audit::entry::encode(
        6,
        wimse_audit::Fingerprint([1; 32]),
        &Body::Record(Box::new(record(9))),
    )
    .unwrap()
    .1;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(&whole[..whole.len() / 2]).unwrap();
    drop(file);

    let report = verify(&[&path], &VerifyOptions::default()).unwrap();
    assert_eq!(report.records, 5);
    assert!(!report.closed);
    assert_eq!(report.unsigned_records, 5);
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.line, torn.bytes), (7, whole.len() / 2));
    assert_no_secrets(dir.path());
}

#[test]
fn reopening_repairs_a_torn_tail_and_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let k = key();
    let log = AuditLog::open(config(&path, k.clone(), 1000)).unwrap();
    for n in 0..3 {
        log.append(record(n)).unwrap();
    }
    log.sync().unwrap();
    std::mem::forget(log);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(b"{\"i\":4,\"prev\":\"00").unwrap();
    drop(file);

    let log = AuditLog::open(config(&path, k, 1000)).unwrap();
    log.append(record(3)).unwrap();
    log.close().unwrap();
    let l = lines(&path);
    // start, 3 records, [torn line cut], start (reopened), checkpoint, record, closing checkpoint.
    assert_eq!(l.len(), 8);
    assert!(matches!(parse(&l[4]).body, Body::Start(s) if s.reason == StartReason::Reopened));
    let report = verify(&[&path], &VerifyOptions::default()).unwrap();
    assert_eq!(report.records, 4);
    assert!(report.closed);
    assert!(report.torn_tail.is_none());
    assert_eq!(report.unsigned_tail, 0);
    assert_no_secrets(dir.path());
}

/// Not a test on its own: the body of the child process that `a_writer_killed_mid_stream...`
/// starts and kills. Does nothing unless that test set the variable.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os("WIMSE_AUDIT_CRASH_CHILD") else {
        return;
    };
    let mut config = config(std::path::Path::new(&path), key(), 50);
    config.fsync = FsyncPolicy::Always;
    let log = AuditLog::open(config).unwrap();
    let stdout = std::io::stdout();
    for n in 0.. {
        let index = log.append(record(n)).unwrap();
        // Acknowledge only after `append` returned: with `Always` the entry is on disk.
        writeln!(stdout.lock(), "{index}").unwrap();
    }
}

#[test]
fn a_writer_killed_mid_stream_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("WIMSE_AUDIT_CRASH_CHILD", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while acked < 120 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "child stopped");
        if let Ok(index) = line.trim().parse::<u64>() {
            acked = acked.max(index);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let report = verify(&[&path], &VerifyOptions::default()).unwrap();
    assert!(
        report.first_index + report.entries > acked,
        "{report:?} vs {acked}"
    );
    assert!(!report.closed);
    // Reopen, continue, close: one intact, closed log.
    let log = AuditLog::open(config(&path, key(), 50)).unwrap();
    log.append(record(0)).unwrap();
    log.close().unwrap();
    let options = VerifyOptions::default();
    let err = verify(&[&path], &options).unwrap_err();
    // A new key on reopen is a key change, refused without trusted keys...
    assert!(
        matches!(&err, VerifyError::Broken(b) if matches!(b.problem, Problem::KeyChanged(_))),
        "{err}"
    );
    // ...and accepted with them.
    let keys = verify_signers(&path);
    let report = verify(
        &[&path],
        &VerifyOptions {
            trusted_keys: keys,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(report.closed);
    assert_eq!(report.signers.len(), 2);
    assert_no_secrets(dir.path());
}

/// The keys announced by the log's start entries (what an operator would pass as trusted).
fn verify_signers(path: &std::path::Path) -> Vec<wimse_core::jose::PublicKey> {
    lines(path)
        .iter()
        .filter_map(|l| match parse(l).body {
            Body::Start(s) => Some(wimse_core::jose::PublicKey::from_jwk(&s.jwk).unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn rotated_files_verify_together_in_any_order_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut config = config(&path, key(), 5);
    config.max_file_bytes = 6000;
    let log = AuditLog::open(config).unwrap();
    for n in 0..40 {
        log.append(record(n)).unwrap();
    }
    log.close().unwrap();
    let rotations = log.stats().rotations;
    assert!(rotations >= 3, "{rotations}");
    let mut files = files_in(dir.path());
    assert_eq!(files.len() as u64, rotations + 1);
    files.reverse();
    let report = verify(&files, &VerifyOptions::default()).unwrap();
    assert_eq!(report.records, 40);
    assert_eq!(report.files as u64, rotations + 1);
    assert!(report.closed);
    // Each new file opens with a start entry continuing the previous file's head.
    let second = lines(&sealed_path(&path, 1));
    let last_of_first = parse(lines(&sealed_path(&path, 0)).last().unwrap());
    let first_of_second = parse(&second[0]);
    assert_eq!(first_of_second.prev, last_of_first.hash);
    assert_eq!(first_of_second.index, last_of_first.index + 1);
    // Leave out the second file: named at the first line of the third.
    let without: Vec<_> = files
        .iter()
        .filter(|f| **f != sealed_path(&path, 1))
        .cloned()
        .collect();
    let Err(VerifyError::Broken(b)) = verify(&without, &VerifyOptions::default()) else {
        panic!("a missing file must break the log");
    };
    assert_eq!(b.file, sealed_path(&path, 2));
    assert_eq!(b.line, 1);
    assert!(matches!(b.problem, Problem::Missing { .. }));
    // Leave out the first: refused unless the caller accepts a log without its start.
    let later: Vec<_> = files
        .iter()
        .filter(|f| **f != sealed_path(&path, 0))
        .cloned()
        .collect();
    assert!(verify(&later, &VerifyOptions::default()).is_err());
    let options = VerifyOptions {
        require_genesis: false,
        ..VerifyOptions::default()
    };
    assert!(verify(&later, &options).unwrap().first_index > 0);
    assert_no_secrets(dir.path());
}

#[test]
fn a_crash_between_rotation_rename_and_the_new_file_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let k = key();
    let mut cfg = config(&path, k.clone(), 5);
    cfg.max_file_bytes = 6000;
    let log = AuditLog::open(cfg.clone()).unwrap();
    for n in 0..12 {
        log.append(record(n)).unwrap();
    }
    log.close().unwrap();
    // Simulate the crash: the live file vanished after the rename.
    std::fs::remove_file(&path).unwrap();
    let log = AuditLog::open(cfg).unwrap();
    log.append(record(12)).unwrap();
    log.close().unwrap();
    let first = parse(&lines(&path)[0]);
    let Body::Start(start) = &first.body else {
        panic!("a start entry opens the new file")
    };
    assert_eq!(start.reason, StartReason::Rotated);
    let (segment, sealed) = (start.segment - 1, sealed_path(&path, start.segment - 1));
    assert!(sealed.exists(), "segment {segment}");
    assert_eq!(first.prev, parse(lines(&sealed).last().unwrap()).hash);
    // The chain goes on from the last sealed file. (Had the vanished live file held
    // entries, they are lost without a trace here: truncation, as `verify` documents.)
    let files = files_in(dir.path());
    let report = verify(&files, &VerifyOptions::default()).unwrap();
    assert!(report.closed);
    assert_no_secrets(dir.path());
}

#[test]
fn checkpoints_follow_the_record_count_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, key(), 7, 3);
    let kinds: String = lines(&path)
        .iter()
        .map(|l| match parse(l).body {
            Body::Start(_) => 'S',
            Body::Record(_) => 'r',
            Body::Checkpoint(c) if c.closing => 'C',
            Body::Checkpoint(_) => 'c',
        })
        .collect();
    assert_eq!(kinds, "SrrrcrrrcrC");
    assert_no_secrets(dir.path());
}

#[test]
fn an_idle_log_is_checkpointed_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut cfg = config(&path, key(), 1000);
    cfg.checkpoint_interval = std::time::Duration::from_millis(50);
    let log = AuditLog::open(cfg).unwrap();
    log.append(record(0)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert!(log.stats().checkpoints >= 1);
    let report = verify(&[&path], &VerifyOptions::default()).unwrap();
    assert_eq!(report.unsigned_tail, 0);
    log.close().unwrap();
    assert_no_secrets(dir.path());
}

#[test]
fn the_batch_policy_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut cfg = config(&path, key(), 1000);
    cfg.fsync = FsyncPolicy::Batch {
        records: 10,
        interval: std::time::Duration::from_secs(3600),
    };
    let log = AuditLog::open(cfg).unwrap();
    let opened = log.stats().syncs;
    for n in 0..25 {
        log.append(record(n)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while log.stats().syncs < opened + 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // At least one sync (requests that arrive while one is pending share it).
    assert!(log.stats().syncs > opened, "{:?}", log.stats());
    // Two full batches have left the process: 20 records are in the file already.
    assert!(lines(&path).len() >= 21);
    log.close().unwrap();
    assert_no_secrets(dir.path());
}

#[test]
fn a_closed_log_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(config(&path, key(), 10)).unwrap();
    log.close().unwrap();
    log.close().unwrap();
    assert!(matches!(log.append(record(0)), Err(AuditError::Closed)));
    assert_no_secrets(dir.path());
}

#[test]
fn a_log_with_no_output_is_refused() {
    assert!(matches!(
        AuditLog::open(AuditConfig::new(signer(), key())),
        Err(AuditError::NoOutput)
    ));
}

#[test]
fn a_damaged_last_line_is_not_continued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let k = key();
    write_log(&path, k.clone(), 2, 10);
    let mut l = lines(&path);
    let last = l.len() - 1;
    l[last] = l[last].replacen("true", "false", 1);
    write_lines(&path, &l);
    assert!(matches!(
        AuditLog::open(config(&path, k, 10)),
        Err(AuditError::Damaged { line: 4, .. })
    ));
}

#[test]
fn every_entry_is_exported_to_syslog_as_rfc5424() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let socket_path = dir.path().join("log.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let log = AuditLog::open(config(&path, key(), 100).with_syslog(&socket_path)).unwrap();
    log.append(record(0)).unwrap(); // n = 0: a denial
    log.append(record(1)).unwrap();
    log.close().unwrap();
    let file_lines = lines(&path);
    let mut buf = vec![0u8; 65_536];
    let mut frames = Vec::new();
    for _ in 0..file_lines.len() {
        let n = socket.recv(&mut buf).unwrap();
        frames.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    // authpriv.info = 86, authpriv.warning = 84 (the denial).
    let pri: Vec<&str> = frames.iter().map(|f| &f[..5]).collect();
    assert_eq!(pri, ["<86>1", "<84>1", "<86>1", "<86>1"]);
    for (frame, line) in frames.iter().zip(&file_lines) {
        let fields: Vec<&str> = frame.splitn(8, ' ').collect();
        assert_eq!(fields[3], "wimse");
        assert_eq!(fields[7], line, "the message is the file's JSON line");
    }
    assert_eq!(log.stats().export_errors, 0);
    // The exported lines verify like the file.
    let exported = dir.path().join("exported.jsonl");
    let messages: Vec<String> = frames
        .iter()
        .map(|f| f.splitn(8, ' ').nth(7).unwrap().to_owned())
        .collect();
    write_lines(&exported, &messages);
    assert_eq!(
        verify(&[&exported], &VerifyOptions::default())
            .unwrap()
            .records,
        2
    );
    std::fs::remove_file(&socket_path).unwrap();
    assert_no_secrets(dir.path());
}

#[test]
fn a_syslog_only_log_reports_a_missing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig::new(signer(), key()).with_syslog(dir.path().join("absent.sock"));
    assert!(matches!(AuditLog::open(cfg), Err(AuditError::Export(_))));
}

#[test]
fn appends_from_many_threads_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(config(&path, key(), 64)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let log = log.clone();
            s.spawn(move || {
                for n in 0..100 {
                    log.append(record(t * 100 + n)).unwrap();
                }
            });
        }
    });
    log.close().unwrap();
    let report = verify(&[&path], &VerifyOptions::default()).unwrap();
    assert_eq!(report.records, 400);
    assert_no_secrets(dir.path());
}
