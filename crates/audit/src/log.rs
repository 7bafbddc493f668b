//! The writer: [`AuditLog`], configured by [`AuditConfig`].
//!
//! # Files
//!
//! The live file is the configured path (say `audit.jsonl`). When it grows past
//! [`AuditConfig::max_file_bytes`], the writer signs a closing checkpoint, syncs, renames it
//! to `audit.jsonl.000000` (its segment number, six digits), and starts a new
//! `audit.jsonl` whose first line is a `start` entry continuing the chain: its `i` and
//! `prev` follow the last entry of the renamed file. `wimse audit verify audit.jsonl*`
//! checks them all, in chain order whatever the order given.
//!
//! # Durability
//!
//! [`FsyncPolicy`] decides when written lines are flushed from the process and synced to
//! disk. What a crash can lose is what was not yet synced; what was synced stays
//! verifiable. A crash in the middle of a line leaves a torn last line, which the reader
//! reports apart from tampering and [`AuditLog::open`] cuts off before continuing.
//!
//! # Checkpoints
//!
//! Every [`AuditConfig::checkpoint_every`] records or [`AuditConfig::checkpoint_interval`]
//! (whichever comes first), on rotation, when a writer reopens a log, and on
//! [`AuditLog::close`], the writer appends a checkpoint signed with its key. Entries after
//! the last checkpoint are chained but unsigned; see [`crate::verify`](mod@crate::verify) for what that means.
//!
//! # Threads
//!
//! `AuditLog` is a cheap handle (`Clone`, `Send`, `Sync`); appends are serialized by a
//! mutex. `append` is synchronous: with the default batch policy it costs microseconds
//! (encode, hash, buffered write; the fsync runs on a background thread, outside the lock),
//! so it may be called directly from async code; with [`FsyncPolicy::Always`] it waits for
//! the disk, so call it from `spawn_blocking` in that mode. The background thread also
//! applies the time-based parts of both policies while the log is idle. Call
//! [`AuditLog::close`] on shutdown; dropping the last handle without it closes the log
//! too (best effort, errors lost, and the final sync blocks the dropping thread).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use wimse_core::WorkloadId;
use wimse_core::jose::SigningKey;

use crate::entry::{self, Body, Checkpoint, GENESIS_PREV, LineError, MAX_LINE, Start, StartReason};
use crate::record::{AuditRecord, Decision, Fingerprint};
use crate::sink::{self, Syslog};
use crate::time::Timestamp;

/// When written entries are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Flush and `fdatasync` after every entry: nothing acknowledged is ever lost, at the
    /// disk's pace.
    Always,
    /// Flush once `records` entries are pending or `interval` has passed since the last
    /// sync, whichever comes first (the interval also applies when idle), and sync right
    /// after on the log's background thread: appenders never wait for the disk. A crash
    /// loses at most the entries of about one batch (those pending plus one in flight).
    Batch {
        /// Entries pending before a sync.
        records: u64,
        /// Longest time an entry stays unsynced.
        interval: Duration,
    },
    /// Never sync (the OS writes back when it likes); entries leave the process buffer
    /// when it fills, on checkpoints and on close. For tests and for exports-only logs.
    Never,
}

impl Default for FsyncPolicy {
    /// 256 entries or 1 s: a crash loses at most one second of records.
    fn default() -> Self {
        Self::Batch {
            records: 256,
            interval: Duration::from_secs(1),
        }
    }
}

/// Where and how an [`AuditLog`] writes.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The workload that writes the log and signs its checkpoints.
    pub signer: WorkloadId,
    /// Its key.
    pub key: Arc<SigningKey>,
    /// The live log file; `None` for a log that only exports.
    pub file: Option<PathBuf>,
    /// Also write every line to stdout.
    pub stdout: bool,
    /// Also send every line to this syslog socket (such as `/dev/log`).
    pub syslog: Option<PathBuf>,
    /// When to sync the file.
    pub fsync: FsyncPolicy,
    /// Records between checkpoints (at least 1).
    pub checkpoint_every: u64,
    /// Longest time between a record and the checkpoint that signs it.
    pub checkpoint_interval: Duration,
    /// Size at which the live file is rotated.
    pub max_file_bytes: u64,
}

impl AuditConfig {
    /// A configuration with no output yet and the default policies: batch fsync (256
    /// entries / 1 s), a checkpoint every 1,000 records or 5 s, rotation at 64 MiB.
    pub fn new(signer: WorkloadId, key: Arc<SigningKey>) -> Self {
        Self {
            signer,
            key,
            file: None,
            stdout: false,
            syslog: None,
            fsync: FsyncPolicy::default(),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(5),
            max_file_bytes: 64 * 1024 * 1024,
        }
    }

    /// Writes to the file at `path` (rotated files beside it).
    #[must_use]
    pub fn with_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Also writes to stdout.
    #[must_use]
    pub fn with_stdout(mut self) -> Self {
        self.stdout = true;
        self
    }

    /// Also sends to the syslog socket at `path`.
    #[must_use]
    pub fn with_syslog(mut self, path: impl Into<PathBuf>) -> Self {
        self.syslog = Some(path.into());
        self
    }
}

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The configuration names no output.
    #[error("audit log has no output: configure a file, stdout or syslog")]
    NoOutput,
    /// A file operation failed.
    #[error("audit log `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// An export failed and there is no file to fall back on.
    #[error("audit export failed: {0}")]
    Export(std::io::Error),
    /// The existing log cannot be continued: its last complete line is not a valid entry.
    #[error("audit log `{path}` line {line} is damaged, refusing to continue it: {source}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why the line was refused.
        source: LineError,
    },
    /// The existing file does not begin with a start entry.
    #[error("`{0}` is not an audit log (no start entry on its first line)")]
    NotALog(PathBuf),
    /// The record serializes to more than [`MAX_LINE`] bytes.
    #[error("audit record is too large ({0} bytes)")]
    TooLarge(usize),
    /// Signing a checkpoint failed.
    #[error("cannot sign audit checkpoint: {0}")]
    Signing(#[from] wimse_core::jose::KeyError),
    /// An entry could not be serialized.
    #[error("cannot serialize audit entry: {0}")]
    Encode(#[from] serde_json::Error),
    /// The log was closed.
    #[error("audit log is closed")]
    Closed,
    /// An earlier write or sync failed; the file's state is unknown, so the log refuses
    /// further appends rather than write after a possible hole (reopen it to recover).
    #[error("audit log stopped after an earlier write failure")]
    Failed,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records appended by this handle's writer.
    pub records: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// File syncs done.
    pub syncs: u64,
    /// Files rotated.
    pub rotations: u64,
    /// Lines that an export (stdout, syslog) failed to take.
    pub export_errors: u64,
    /// Index the next entry will get.
    pub next_index: u64,
}

/// An open, append-only audit log. See the module doc.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// The background thread: time-based policies, and the batch policy's syncs.
    ticker: std::sync::OnceLock<std::thread::Thread>,
}

struct LiveFile {
    path: PathBuf,
    writer: BufWriter<File>,
    /// A second handle on the same file, synced by the background thread without the lock.
    sync_handle: Arc<File>,
    bytes: u64,
}

struct State {
    config: AuditConfig,
    log_id: Fingerprint,
    segment: u64,
    next_index: u64,
    head: Fingerprint,
    file: Option<LiveFile>,
    syslog: Option<Syslog>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    unsynced: u64,
    last_sync: Instant,
    /// A batch sync the background thread is to do (outside the lock).
    pending_sync: Option<Arc<File>>,
    closed: bool,
    failed: bool,
    stats: AuditStats,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `audit.jsonl` → `audit.jsonl.000003`.
pub fn sealed_path(live: &Path, segment: u64) -> PathBuf {
    let mut name = live.as_os_str().to_owned();
    name.push(format!(".{segment:06}"));
    PathBuf::from(name)
}

/// The highest-numbered sealed file beside `live`, if any.
fn last_sealed(live: &Path) -> Result<Option<(u64, PathBuf)>, AuditError> {
    let dir = live
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(stem) = live.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    let mut best: Option<(u64, PathBuf)> = None;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for dirent in entries {
        let dirent = dirent.map_err(io_err(dir))?;
        let name = dirent.file_name();
        let Some(segment) = name
            .to_str()
            .and_then(|n| n.strip_prefix(stem))
            .and_then(|n| n.strip_prefix('.'))
            .filter(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(s, _)| segment > *s) {
            best = Some((segment, dirent.path()));
        }
    }
    Ok(best)
}

/// Where an existing file leaves the chain.
struct Tail {
    log_id: Fingerprint,
    segment: u64,
    next_index: u64,
    head: Fingerprint,
}

/// Reads an existing log file, cutting off a torn last line (a crash mid-write), and
/// returns where its chain ends; `None` if the file holds no complete line.
fn recover(path: &Path) -> Result<Option<Tail>, AuditError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    if complete < bytes.len() {
        // A torn line: never acknowledged as synced, so cutting it loses nothing promised.
        file.set_len(complete as u64).map_err(io_err(path))?;
        file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    let text = bytes.get(..complete).unwrap_or_default();
    // Each complete line without its newline.
    let lines: Vec<&[u8]> = text
        .split_inclusive(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\n").unwrap_or(l))
        .collect();
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        return Ok(None);
    };
    let damaged = |line: usize| {
        move |source| AuditError::Damaged {
            path: path.to_owned(),
            line,
            source,
        }
    };
    let first = entry::parse_line(first).map_err(damaged(1))?;
    let Body::Start(start) = &first.body else {
        return Err(AuditError::NotALog(path.to_owned()));
    };
    let last = entry::parse_line(last).map_err(damaged(lines.len()))?;
    Ok(Some(Tail {
        log_id: start.log,
        segment: start.segment,
        next_index: last.index.saturating_add(1),
        head: last.hash,
    }))
}

fn sync_dir(path: &Path) -> Result<(), AuditError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn open_live(path: &Path) -> Result<LiveFile, AuditError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    let bytes = file.metadata().map_err(io_err(path))?.len();
    let sync_handle = Arc::new(file.try_clone().map_err(io_err(path))?);
    sync_dir(path)?;
    Ok(LiveFile {
        path: path.to_owned(),
        writer: BufWriter::with_capacity(64 * 1024, file),
        sync_handle,
        bytes,
    })
}

fn random_log_id() -> Result<Fingerprint, AuditError> {
    let mut id = [0u8; 32];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| AuditError::Signing(wimse_core::jose::KeyError::Signing))?;
    Ok(Fingerprint(id))
}

impl AuditLog {
    /// Opens the log: creates it, or continues an existing one (repairing a torn last
    /// line, then writing a `start` entry and a checkpoint signed with this writer's key).
    pub fn open(config: AuditConfig) -> Result<Self, AuditError> {
        if config.file.is_none() && !config.stdout && config.syslog.is_none() {
            return Err(AuditError::NoOutput);
        }
        let syslog = config
            .syslog
            .as_deref()
            .map(Syslog::new)
            .transpose()
            .map_err(AuditError::Export)?;
        let mut tail = None;
        let mut reason = StartReason::Created;
        if let Some(path) = &config.file {
            if path.exists() {
                tail = recover(path)?;
                reason = StartReason::Reopened;
            }
            if tail.is_none() {
                // No live file (or an empty one): a crash may have struck between renaming
                // a full file and creating its successor.
                if let Some((_, sealed)) = last_sealed(path)? {
                    tail = recover(&sealed)?.map(|t| Tail {
                        segment: t.segment + 1,
                        ..t
                    });
                    reason = StartReason::Rotated;
                }
            }
            if tail.is_none() {
                reason = StartReason::Created;
            }
        }
        let tail = match tail {
            Some(tail) => tail,
            None => Tail {
                log_id: random_log_id()?,
                segment: 0,
                next_index: 0,
                head: GENESIS_PREV,
            },
        };
        let file = config.file.as_deref().map(open_live).transpose()?;
        let now = Instant::now();
        let mut state = State {
            log_id: tail.log_id,
            segment: tail.segment,
            next_index: tail.next_index,
            head: tail.head,
            file,
            syslog,
            since_checkpoint: 0,
            last_checkpoint: now,
            unsynced: 0,
            last_sync: now,
            pending_sync: None,
            closed: false,
            failed: false,
            stats: AuditStats::default(),
            config,
        };
        state.write_start(reason)?;
        if reason == StartReason::Reopened {
            // Sign what was recovered at once, so the unsigned window does not span a restart.
            state.checkpoint(false)?;
        }
        state.sync()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            ticker: std::sync::OnceLock::new(),
        });
        spawn_ticker(&shared);
        Ok(Self { shared })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a thread panicked mid-append; the state is still
        // consistent at line granularity (the `failed` flag guards the file), so go on.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `record`; returns its index in the log.
    pub fn append(&self, record: AuditRecord) -> Result<u64, AuditError> {
        let (index, wake) = {
            let mut state = self.lock();
            let index = state.append(record)?;
            (index, state.pending_sync.is_some())
        };
        if wake && let Some(ticker) = self.shared.ticker.get() {
            ticker.unpark();
        }
        Ok(index)
    }

    /// Writes a checkpoint now (if any record is unsigned) and syncs.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        let mut state = self.lock();
        state.usable()?;
        if state.since_checkpoint > 0 {
            state.checkpoint(false)?;
        }
        state.sync()
    }

    /// Flushes and syncs whatever is pending.
    pub fn sync(&self) -> Result<(), AuditError> {
        let mut state = self.lock();
        state.usable()?;
        state.sync()
    }

    /// Signs a closing checkpoint, syncs and closes. Later appends fail with
    /// [`AuditError::Closed`]. Closing twice is harmless.
    pub fn close(&self) -> Result<(), AuditError> {
        let result = {
            let mut state = self.lock();
            state.close()
        };
        if let Some(ticker) = self.shared.ticker.get() {
            ticker.unpark();
        }
        result
    }

    /// Counters.
    pub fn stats(&self) -> AuditStats {
        let state = self.lock();
        AuditStats {
            next_index: state.next_index,
            ..state.stats
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone without `close`: close anyway, best effort, so that a
        // clean shutdown that forgot to call it still leaves a signed, closed log.
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = state.close();
    }
}

/// Runs the time-based policies while the log is idle, and the batch policy's syncs
/// outside the lock, so that appenders never wait for the disk under that policy.
fn spawn_ticker(shared: &Arc<Shared>) {
    let period = {
        let state = shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut period = state.config.checkpoint_interval;
        if let FsyncPolicy::Batch { interval, .. } = state.config.fsync {
            period = period.min(interval);
        }
        period.max(Duration::from_millis(10))
    };
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let spawned = std::thread::Builder::new()
        .name("wimse-audit-ticker".into())
        .spawn(move || {
            loop {
                std::thread::park_timeout(period);
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let lock = || {
                    shared
                        .state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                };
                let pending = {
                    let mut state = lock();
                    if state.closed || state.failed {
                        return;
                    }
                    // Errors mark the log failed; the next append reports them.
                    let _ = state.apply_policies();
                    state.pending_sync.take()
                };
                if let Some(file) = pending {
                    let synced = file.sync_data();
                    let mut state = lock();
                    match synced {
                        Ok(()) => state.stats.syncs += 1,
                        // fsync failed: what reached the disk is unknown (the kernel may
                        // have dropped the dirty pages), so stop rather than go on.
                        Err(_) => state.failed = true,
                    }
                }
            }
        });
    if let Ok(handle) = spawned {
        let _ = shared.ticker.set(handle.thread().clone());
    }
}

impl State {
    fn usable(&self) -> Result<(), AuditError> {
        if self.closed {
            Err(AuditError::Closed)
        } else if self.failed {
            Err(AuditError::Failed)
        } else {
            Ok(())
        }
    }

    /// Marks the log failed if `result` is an error (fail-closed after a write error).
    fn guard<T>(&mut self, result: Result<T, AuditError>) -> Result<T, AuditError> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn append(&mut self, record: AuditRecord) -> Result<u64, AuditError> {
        self.usable()?;
        let severity = if record.decision == Decision::Deny {
            sink::SEVERITY_WARNING
        } else {
            sink::SEVERITY_INFO
        };
        let index = self.write_entry(&Body::Record(Box::new(record)), severity, "record")?;
        self.stats.records += 1;
        self.since_checkpoint += 1;
        self.apply_policies()?;
        Ok(index)
    }

    /// Syncs, checkpoints and rotates as the policies say is due.
    fn apply_policies(&mut self) -> Result<(), AuditError> {
        let sync_due = match self.config.fsync {
            FsyncPolicy::Always => self.unsynced > 0,
            FsyncPolicy::Batch { records, interval } => {
                self.unsynced > 0
                    && (self.unsynced >= records || self.last_sync.elapsed() >= interval)
            }
            FsyncPolicy::Never => false,
        };
        if sync_due {
            self.sync_by_policy()?;
        }
        if self.since_checkpoint > 0
            && (self.since_checkpoint >= self.config.checkpoint_every.max(1)
                || self.last_checkpoint.elapsed() >= self.config.checkpoint_interval)
        {
            self.checkpoint(false)?;
            // Under `Never` this only flushes the buffer: checkpoints leave the process.
            self.sync_by_policy()?;
        }
        if self
            .file
            .as_ref()
            .is_some_and(|f| f.bytes >= self.config.max_file_bytes)
        {
            self.rotate()?;
        }
        Ok(())
    }

    /// Encodes and writes one entry to every output; returns its index.
    fn write_entry(&mut self, body: &Body, severity: u8, msgid: &str) -> Result<u64, AuditError> {
        let index = self.next_index;
        let (hash, mut line) = entry::encode(index, self.head, body)?;
        if line.len() > MAX_LINE {
            return Err(AuditError::TooLarge(line.len()));
        }
        if let Some(file) = &mut self.file {
            line.push(b'\n');
            let written = file.writer.write_all(&line).map_err(io_err(&file.path));
            self.guard(written)?;
            if let Some(file) = &mut self.file {
                file.bytes += line.len() as u64;
            }
            line.pop();
        }
        // Exports after the file, which is the record of truth. Without a file, an entry
        // that no export took is an error (it would be lost); with one, a count.
        let (mut outputs, mut failures, mut last_error) = (0u32, 0u32, None);
        if self.config.stdout {
            outputs += 1;
            if let Err(e) = sink::write_stdout(&line) {
                failures += 1;
                last_error = Some(e);
            }
        }
        if let Some(syslog) = &self.syslog {
            outputs += 1;
            if let Err(e) = syslog.send(severity, msgid, &line) {
                failures += 1;
                last_error = Some(e);
            }
        }
        self.stats.export_errors += u64::from(failures);
        if let Some(e) = last_error
            && self.file.is_none()
            && failures == outputs
        {
            return Err(AuditError::Export(e));
        }
        self.next_index += 1;
        self.head = hash;
        self.unsynced += 1;
        Ok(index)
    }

    fn write_start(&mut self, reason: StartReason) -> Result<(), AuditError> {
        let start = Start {
            log: self.log_id,
            segment: self.segment,
            reason,
            time: Timestamp::now(),
            signer: self.config.signer.clone(),
            jwk: self.config.key.public_jwk().bare(),
        };
        self.write_entry(&Body::Start(start), sink::SEVERITY_INFO, "start")?;
        Ok(())
    }

    fn checkpoint(&mut self, closing: bool) -> Result<(), AuditError> {
        let checkpoint = Checkpoint::sign(
            &self.log_id,
            self.next_index,
            self.head,
            closing,
            &self.config.signer,
            &self.config.key,
        )?;
        self.write_entry(
            &Body::Checkpoint(checkpoint),
            sink::SEVERITY_INFO,
            "checkpoint",
        )?;
        self.stats.checkpoints += 1;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// `Always`: sync now. `Batch`: flush now, and hand the sync to the background thread
    /// (the caller wakes it). `Never`: flush only.
    fn sync_by_policy(&mut self) -> Result<(), AuditError> {
        if !matches!(self.config.fsync, FsyncPolicy::Batch { .. }) {
            return self.sync();
        }
        if let Some(file) = &mut self.file {
            let flushed = file.writer.flush().map_err(io_err(&file.path));
            let handle = file.sync_handle.clone();
            self.guard(flushed)?;
            self.pending_sync = Some(handle);
        }
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Flushes the buffer to the OS and, unless the policy is `Never`, syncs the data.
    fn sync(&mut self) -> Result<(), AuditError> {
        let never = self.config.fsync == FsyncPolicy::Never;
        if let Some(file) = &mut self.file {
            let path = file.path.clone();
            let mut result = file.writer.flush().map_err(io_err(&path));
            if result.is_ok() && !never {
                result = file.writer.get_ref().sync_data().map_err(io_err(&path));
                self.stats.syncs += 1;
            }
            self.guard(result)?;
        }
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals the live file under its segment name and starts the next one.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let Some(path) = self.file.as_ref().map(|f| f.path.clone()) else {
            return Ok(());
        };
        self.checkpoint(true)?;
        let result = self.sync_hard();
        self.guard(result)?;
        self.file = None;
        let sealed = sealed_path(&path, self.segment);
        let renamed = std::fs::rename(&path, &sealed).map_err(io_err(&path));
        self.guard(renamed)?;
        let opened = sync_dir(&path).and_then(|()| open_live(&path));
        let file = self.guard(opened)?;
        self.file = Some(file);
        self.segment += 1;
        self.stats.rotations += 1;
        self.write_start(StartReason::Rotated)?;
        let result = self.sync_hard();
        self.guard(result)
    }

    /// Flush and sync whatever the policy (rotation and close must not leave a renamed or
    /// closed file with unsynced content).
    fn sync_hard(&mut self) -> Result<(), AuditError> {
        if let Some(file) = &mut self.file {
            let path = file.path.clone();
            file.writer.flush().map_err(io_err(&path))?;
            file.writer.get_ref().sync_data().map_err(io_err(&path))?;
            self.stats.syncs += 1;
        }
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn close(&mut self) -> Result<(), AuditError> {
        if self.closed {
            return Ok(());
        }
        self.usable()?;
        self.closed = true;
        self.checkpoint(true)?;
        let result = self.sync_hard();
        self.guard(result)
    }
}
