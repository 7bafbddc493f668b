//! Verification: proves a log intact, or names the first broken entry and why.
//!
//! [`verify`] reads every file given (in any order: they are put in chain order by their
//! first entry's index), and checks, entry by entry:
//!
//! 1. each line parses, is canonical and matches its stored hash (an **edited** line fails
//!    here, at its own line);
//! 2. indexes follow one another with no gap (a **deleted** entry, or a missing file) and
//!    no repeat or step back (an **inserted**, duplicated or **reordered** entry);
//! 3. each `prev` is the hash of the entry before (an edited entry whose own hash was
//!    recomputed is caught at the next line);
//! 4. every file opens with a `start` entry, of the same log, with the next segment number;
//!    entry 0 has a zero `prev`;
//! 5. every checkpoint covers exactly the entries before it, is signed by the key of the
//!    start entry in effect and names its signer, and its signature verifies (a **forged
//!    checkpoint** fails here);
//! 6. signers: by default the whole log must be signed by one key (that of entry 0's start
//!    entry); with [`VerifyOptions::trusted_keys`], every signer key must be one of them
//!    (and may change at start entries, as workload keys rotate); with
//!    [`VerifyOptions::expected_signer`], every signer must be that workload.
//!
//! # What truncation detection can honestly promise
//!
//! A checkpoint commits to every entry before it. Entries after the last checkpoint are
//! chained but signed by nobody: whoever can write the file can cut them off (or cut off
//! the whole tail including checkpoints) and leave a log that is internally consistent.
//! No reader of the file alone can tell that apart from a log that simply ended there. So
//! the report states what is signed and what is not: [`Report::unsigned_tail`] entries
//! after the last checkpoint, and [`Report::closed`], whether the log ends with the closing
//! checkpoint a clean shutdown writes (a log that is not closed was cut, crashed, or is
//! still being written). Detecting a cut of signed entries needs an anchor from outside the
//! file: [`VerifyOptions::min_entries`], such as a size seen earlier in a checkpoint a SIEM
//! received. The writer bounds the unsigned window by its checkpoint policy.
//!
//! Without [`VerifyOptions::trusted_keys`], the signer key is the one the log itself
//! announces: verification then proves the log consistent and signed by that key, and the
//! report names it; it cannot prove the key is the right one. Give the keys to trust.

use std::path::{Path, PathBuf};

use wimse_core::WorkloadId;
use wimse_core::jose::{Jwk, PublicKey};

use crate::entry::{self, Body, Entry, GENESIS_PREV, LineError, StartReason};
use crate::record::Fingerprint;

/// What the caller knows from outside the log.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// If not empty, every signer key must be one of these.
    pub trusted_keys: Vec<PublicKey>,
    /// If set, every signer must be this workload.
    pub expected_signer: Option<WorkloadId>,
    /// Require the log to begin at entry 0 (default). Turn off to verify the later files
    /// of a log whose oldest files were removed by retention.
    pub require_genesis: bool,
    /// If set, the log must hold at least this many entries (a size known from earlier).
    pub min_entries: Option<u64>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            expected_signer: None,
            require_genesis: true,
            min_entries: None,
        }
    }
}

/// A workload that signed part of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// Its identity, as its start entries state it.
    pub id: WorkloadId,
    /// Its public key.
    pub jwk: Jwk,
    /// The key's RFC 7638 thumbprint (base64url).
    pub thumbprint: String,
}

/// A final line without a newline: a write cut short by a crash. Not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornLine {
    /// The file.
    pub file: PathBuf,
    /// Its 1-based line number.
    pub line: usize,
    /// How many bytes it has.
    pub bytes: usize,
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The log's identifier.
    pub log_id: Fingerprint,
    /// Files read.
    pub files: usize,
    /// Index of the first entry (0 unless [`VerifyOptions::require_genesis`] was off).
    pub first_index: u64,
    /// Entries of every kind.
    pub entries: u64,
    /// Audit records.
    pub records: u64,
    /// Checkpoints.
    pub checkpoints: u64,
    /// The hash of the last entry.
    pub head: Fingerprint,
    /// Every signer, in order of appearance.
    pub signers: Vec<Signer>,
    /// Entries after the last checkpoint, which no signature covers.
    pub unsigned_tail: u64,
    /// Of those, audit records.
    pub unsigned_records: u64,
    /// Whether the log ends with a closing checkpoint.
    pub closed: bool,
    /// A torn final line, ignored.
    pub torn_tail: Option<TornLine>,
}

/// What is wrong with the first broken entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The line itself is bad: syntax, canonical form, or hash.
    #[error(transparent)]
    Line(#[from] LineError),
    /// A line without a newline that is not at the very end of the log.
    #[error("line is cut short but more entries follow it")]
    TornInside,
    /// A file does not open with a start entry.
    #[error("file does not begin with a start entry")]
    NoStart,
    /// Entries are missing before this one.
    #[error(
        "expected entry {expected}, found {found}: entries deleted or reordered (or a file not given)"
    )]
    Missing {
        /// The index that should have come.
        expected: u64,
        /// The index that came.
        found: u64,
    },
    /// The index repeats or goes back.
    #[error("expected entry {expected}, found {found}: entry inserted, duplicated or reordered")]
    OutOfOrder {
        /// The index that should have come.
        expected: u64,
        /// The index that came.
        found: u64,
    },
    /// `prev` is not the hash of the entry before.
    #[error(
        "`prev` is not the hash of entry {0}: that entry was changed, or one was inserted or removed here"
    )]
    PrevMismatch(u64),
    /// Entry 0 does not look like the start of a log.
    #[error("entry 0 must be a `created` start entry with a zero `prev`")]
    BadGenesis,
    /// The log does not begin at entry 0.
    #[error("log begins at entry {0}, not 0: its first files are missing")]
    NotGenesis(u64),
    /// A start entry of another log.
    #[error("start entry belongs to another log")]
    OtherLog,
    /// A start entry with a wrong segment number.
    #[error("segment {found} where {expected} was expected")]
    Segment {
        /// Expected segment number.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// Something other than a start entry follows a closing checkpoint.
    #[error("entry after a closing checkpoint is not a start entry")]
    AfterClose,
    /// A checkpoint's size or head does not describe the entries before it.
    #[error("checkpoint claims {size} entries ending in a different head")]
    CheckpointMismatch {
        /// The claimed size.
        size: u64,
    },
    /// A checkpoint names a key or signer other than the start entry in effect.
    #[error("checkpoint is signed by a key or signer other than the log's signer")]
    ForeignSigner,
    /// A checkpoint's signature does not verify.
    #[error("checkpoint signature does not verify (forged checkpoint)")]
    BadSignature,
    /// The signer key changes and no trusted keys were given.
    #[error("signer key changes to {0}; give the trusted keys to accept a key change")]
    KeyChanged(String),
    /// A signer key is not among the trusted keys.
    #[error("signer key {0} is not among the trusted keys")]
    UntrustedKey(String),
    /// A signer is not the expected workload.
    #[error("signer is `{found}`, expected `{expected}`")]
    UnexpectedSigner {
        /// Who signed.
        found: String,
        /// Who should have.
        expected: String,
    },
    /// A start entry's key cannot verify anything.
    #[error("signer key is unusable: {0}")]
    BadKey(String),
    /// The log is shorter than the caller knows it to be.
    #[error("log holds {found} entries, fewer than the {expected} known: truncated")]
    TooShort {
        /// Known size.
        expected: u64,
        /// Size found.
        found: u64,
    },
}

/// Where the first broken entry is, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}` line {line}{}: {problem}", file.display(), index.map(|i| format!(" (entry {i})")).unwrap_or_default())]
pub struct Broken {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The entry's index (as written, or as expected when the line does not parse).
    pub index: Option<u64>,
    /// What is wrong.
    pub problem: Problem,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No file was given.
    #[error("no audit log files given")]
    NoFiles,
    /// The files hold no entry.
    #[error("audit log holds no entries")]
    Empty,
    /// A file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The log is broken; the first broken entry.
    #[error(transparent)]
    Broken(Box<Broken>),
}

/// One file's lines.
struct FileLines {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Byte ranges of complete lines (newline excluded).
    lines: Vec<std::ops::Range<usize>>,
    /// Byte range of a torn final line.
    torn: Option<std::ops::Range<usize>>,
}

impl FileLines {
    fn read(path: &Path) -> Result<Self, VerifyError> {
        let bytes = std::fs::read(path).map_err(|source| VerifyError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                lines.push(start..i);
                start = i + 1;
            }
        }
        let torn = (start < bytes.len()).then_some(start..bytes.len());
        Ok(Self {
            path: path.to_owned(),
            bytes,
            lines,
            torn,
        })
    }

    fn line(&self, n: usize) -> &[u8] {
        self.lines
            .get(n)
            .and_then(|r| self.bytes.get(r.clone()))
            .unwrap_or_default()
    }

    /// The index the file begins with, for ordering (a hint if the line is broken).
    fn first_index(&self) -> Option<u64> {
        let first = self.line(0);
        entry::parse_line(first)
            .map(|e| e.index)
            .ok()
            .or_else(|| entry::index_hint(first))
    }
}

fn broken(file: &Path, line: usize, index: Option<u64>, problem: Problem) -> VerifyError {
    VerifyError::Broken(Box::new(Broken {
        file: file.to_owned(),
        line,
        index,
        problem,
    }))
}

/// The signer in effect: set by each start entry.
struct InEffect {
    id: WorkloadId,
    jwk: Jwk,
    key: PublicKey,
}

/// Verifies the log made of `files` (any order). See the module doc for every check.
pub fn verify<P: AsRef<Path>>(files: &[P], options: &VerifyOptions) -> Result<Report, VerifyError> {
    if files.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let mut loaded = files
        .iter()
        .map(|p| FileLines::read(p.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    // Files whose first line says nothing go last, in the order given.
    loaded.sort_by_key(|f| f.first_index().unwrap_or(u64::MAX));
    let mut walk = Walk::new(options);
    let last_file = loaded.len().saturating_sub(1);
    for (n, file) in loaded.iter().enumerate() {
        for line in 0..file.lines.len() {
            let bytes = file.line(line);
            let at = line + 1;
            let entry = entry::parse_line(bytes).map_err(|e| {
                broken(
                    &file.path,
                    at,
                    entry::index_hint(bytes).or(walk.expected),
                    e.into(),
                )
            })?;
            walk.step(&entry, line == 0)
                .map_err(|p| broken(&file.path, at, Some(entry.index), p))?;
        }
        if let Some(torn) = &file.torn {
            let at = file.lines.len() + 1;
            if n != last_file {
                return Err(broken(&file.path, at, walk.expected, Problem::TornInside));
            }
            walk.report.torn_tail = Some(TornLine {
                file: file.path.clone(),
                line: at,
                bytes: torn.len(),
            });
        }
    }
    let last = loaded.last().map(|f| (f.path.clone(), f.lines.len()));
    walk.finish(last)
}

/// Reads one file's entries for display, checking each line (syntax, canonical form,
/// hash) but not the chain across lines; use [`verify`] for that.
pub fn read_entries(path: &Path) -> Result<(Vec<Entry>, Option<TornLine>), VerifyError> {
    let file = FileLines::read(path)?;
    let mut entries = Vec::with_capacity(file.lines.len());
    for line in 0..file.lines.len() {
        let bytes = file.line(line);
        let entry = entry::parse_line(bytes)
            .map_err(|e| broken(path, line + 1, entry::index_hint(bytes), e.into()))?;
        entries.push(entry);
    }
    let torn = file.torn.as_ref().map(|r| TornLine {
        file: path.to_owned(),
        line: file.lines.len() + 1,
        bytes: r.len(),
    });
    Ok((entries, torn))
}

struct Walk<'o> {
    options: &'o VerifyOptions,
    expected: Option<u64>,
    head: Fingerprint,
    segment: u64,
    signer: Option<InEffect>,
    first_jwk: Option<Jwk>,
    last_checkpoint: Option<u64>,
    records_since_checkpoint: u64,
    report: Report,
}

impl<'o> Walk<'o> {
    fn new(options: &'o VerifyOptions) -> Self {
        Self {
            options,
            expected: None,
            head: GENESIS_PREV,
            segment: 0,
            signer: None,
            first_jwk: None,
            last_checkpoint: None,
            records_since_checkpoint: 0,
            report: Report {
                log_id: GENESIS_PREV,
                files: 0,
                first_index: 0,
                entries: 0,
                records: 0,
                checkpoints: 0,
                head: GENESIS_PREV,
                signers: Vec::new(),
                unsigned_tail: 0,
                unsigned_records: 0,
                closed: false,
                torn_tail: None,
            },
        }
    }

    fn step(&mut self, entry: &Entry, first_in_file: bool) -> Result<(), Problem> {
        match self.expected {
            None => {
                if entry.index == 0 {
                    let created =
                        matches!(&entry.body, Body::Start(s) if s.reason == StartReason::Created);
                    if entry.prev != GENESIS_PREV || !created {
                        return Err(Problem::BadGenesis);
                    }
                } else if self.options.require_genesis {
                    return Err(Problem::NotGenesis(entry.index));
                }
                self.report.first_index = entry.index;
            }
            Some(expected) if entry.index > expected => {
                return Err(Problem::Missing {
                    expected,
                    found: entry.index,
                });
            }
            Some(expected) if entry.index < expected => {
                return Err(Problem::OutOfOrder {
                    expected,
                    found: entry.index,
                });
            }
            Some(_) => {
                if entry.prev != self.head {
                    return Err(Problem::PrevMismatch(entry.index.saturating_sub(1)));
                }
            }
        }
        if first_in_file && !matches!(entry.body, Body::Start(_)) {
            return Err(Problem::NoStart);
        }
        if self.report.closed && !matches!(entry.body, Body::Start(_)) {
            return Err(Problem::AfterClose);
        }
        if first_in_file {
            self.report.files += 1;
        }
        self.report.closed = false;
        match &entry.body {
            Body::Start(start) => {
                let first_entry = self.expected.is_none();
                if first_entry {
                    self.report.log_id = start.log;
                    self.segment = start.segment;
                } else if start.log != self.report.log_id {
                    return Err(Problem::OtherLog);
                } else {
                    let expected = if first_in_file {
                        self.segment + 1
                    } else {
                        self.segment
                    };
                    if start.segment != expected {
                        return Err(Problem::Segment {
                            expected,
                            found: start.segment,
                        });
                    }
                    self.segment = expected;
                }
                if start.reason == StartReason::Created && entry.index != 0 {
                    return Err(Problem::BadGenesis);
                }
                self.accept_signer(&start.signer, &start.jwk)?;
            }
            Body::Record(_) => {
                self.report.records += 1;
                self.records_since_checkpoint += 1;
            }
            Body::Checkpoint(checkpoint) => {
                if checkpoint.size != entry.index || checkpoint.head != entry.prev {
                    return Err(Problem::CheckpointMismatch {
                        size: checkpoint.size,
                    });
                }
                let Some(signer) = &self.signer else {
                    return Err(Problem::ForeignSigner);
                };
                if checkpoint.jwk.params != signer.jwk.params || checkpoint.signer != signer.id {
                    return Err(Problem::ForeignSigner);
                }
                if !checkpoint.verify(&self.report.log_id, &signer.key) {
                    return Err(Problem::BadSignature);
                }
                self.report.checkpoints += 1;
                self.last_checkpoint = Some(entry.index);
                self.records_since_checkpoint = 0;
                self.report.closed = checkpoint.closing;
            }
        }
        self.expected = Some(entry.index + 1);
        self.head = entry.hash;
        self.report.entries += 1;
        Ok(())
    }

    fn accept_signer(&mut self, id: &WorkloadId, jwk: &Jwk) -> Result<(), Problem> {
        let thumbprint = jwk.thumbprint().unwrap_or_default();
        let key = PublicKey::from_jwk(jwk).map_err(|e| Problem::BadKey(e.to_string()))?;
        if self.options.trusted_keys.is_empty() {
            if let Some(first) = &self.first_jwk
                && first.params != jwk.params
            {
                return Err(Problem::KeyChanged(thumbprint));
            }
        } else if !self
            .options
            .trusted_keys
            .iter()
            .any(|t| t.jwk().params == jwk.params)
        {
            return Err(Problem::UntrustedKey(thumbprint));
        }
        if let Some(expected) = &self.options.expected_signer
            && expected != id
        {
            return Err(Problem::UnexpectedSigner {
                found: id.to_string(),
                expected: expected.to_string(),
            });
        }
        if self.first_jwk.is_none() {
            self.first_jwk = Some(jwk.clone());
        }
        if !self
            .report
            .signers
            .iter()
            .any(|s| s.id == *id && s.jwk.params == jwk.params)
        {
            self.report.signers.push(Signer {
                id: id.clone(),
                jwk: jwk.clone(),
                thumbprint,
            });
        }
        self.signer = Some(InEffect {
            id: id.clone(),
            jwk: jwk.clone(),
            key,
        });
        Ok(())
    }

    fn finish(mut self, last: Option<(PathBuf, usize)>) -> Result<Report, VerifyError> {
        if self.expected.is_none() {
            return Err(VerifyError::Empty);
        }
        let entries = self.report.entries;
        if let Some(min) = self.options.min_entries {
            let found = self.report.first_index + entries;
            if found < min {
                let (file, line) = last.unwrap_or_default();
                return Err(broken(
                    &file,
                    line,
                    self.expected.map(|e| e.saturating_sub(1)),
                    Problem::TooShort {
                        expected: min,
                        found,
                    },
                ));
            }
        }
        self.report.head = self.head;
        let signed = self
            .last_checkpoint
            .map_or(0, |i| i + 1 - self.report.first_index);
        self.report.unsigned_tail = entries - signed;
        self.report.unsigned_records = self.records_since_checkpoint;
        Ok(self.report)
    }
}
