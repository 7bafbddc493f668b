//! The on-disk form: one JSON object per line, each an [`Entry`] of the hash chain.
//!
//! ```text
//! {"i":0,"prev":"000…0","start":{…},"hash":"…"}
//! {"i":1,"prev":"<hash of 0>","record":{…},"hash":"…"}
//! {"i":2,"prev":"<hash of 1>","checkpoint":{…},"hash":"…"}
//! ```
//!
//! `hash` = SHA-256(`"wimse-audit/v1 entry\n"` ‖ the line's bytes up to, not including,
//! `,"hash":…`, with the closing `}`), i.e. over the canonical JSON of `i`, `prev` and the
//! body. The domain prefix keeps these hashes from ever equalling a hash of the same bytes
//! made for another purpose (a checkpoint's signing input, a token hash).
//!
//! **Canonical form.** A line is accepted only if it is byte for byte what this crate
//! writes for the value it parses to (no extra whitespace, no reordered or unknown members,
//! no escapes where none are needed, `null` never written for an absent member). So any
//! change to a line's bytes either fails to parse, is not canonical, or changes the value
//! and with it the hash: an edit is always reported at the line that was edited.

use serde::{Deserialize, Serialize};
use wimse_core::WorkloadId;
use wimse_core::jose::{Algorithm, Jwk, PublicKey, SigningKey, b64};

use crate::record::{AuditRecord, Fingerprint};
use crate::time::Timestamp;

/// The longest line this crate writes or reads, newline excluded. Records are bounded
/// well below it; the reader refuses longer lines before parsing them.
pub const MAX_LINE: usize = 64 * 1024;

const ENTRY_DOMAIN: &[u8] = b"wimse-audit/v1 entry\n";
const CHECKPOINT_DOMAIN: &str = "wimse-audit/v1 checkpoint\n";

/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// The `prev` of the very first entry of a log.
pub const GENESIS_PREV: Fingerprint = Fingerprint([0; 32]);

/// Why a log opens a (new) stretch of entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartReason {
    /// The log was created: entry 0.
    Created,
    /// The previous file reached its size limit; this file continues the chain.
    Rotated,
    /// A writer reopened the log (after a restart or a crash) and continues the chain.
    Reopened,
}

/// Opens a log, a file, or a writer session: who signs the checkpoints that follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// The log's random identifier, the same in every file of one log.
    pub log: Fingerprint,
    /// The file's number in the log: 0 for the first file, one more per rotation.
    pub segment: u64,
    /// Why this start entry was written.
    pub reason: StartReason,
    /// When.
    pub time: Timestamp,
    /// The workload that writes and signs from here on.
    pub signer: WorkloadId,
    /// Its public key, which must sign every checkpoint until the next start entry.
    pub jwk: Jwk,
}

/// A signed statement: "the log's first `size` entries end with `head`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// How many entries it covers: those with index `0..size`, i.e. all before it.
    pub size: u64,
    /// The hash of entry `size - 1` (the checkpoint's own `prev`).
    pub head: Fingerprint,
    /// When it was made.
    pub time: Timestamp,
    /// Whether the writer closed the file after it (on close or rotation).
    pub closing: bool,
    /// The signing workload.
    pub signer: WorkloadId,
    /// The signing public key (that of the start entry in effect).
    pub jwk: Jwk,
    /// The signature over [`Checkpoint::signing_input`], base64url.
    pub sig: String,
}

impl Checkpoint {
    /// The bytes signed: a domain-separated, line-per-field text of the log id and every
    /// field but `sig` (the key by its RFC 7638 thumbprint), so that a checkpoint cannot
    /// be replayed into another log or read as any other signed object.
    pub fn signing_input(&self, log: &Fingerprint) -> String {
        format!(
            "{CHECKPOINT_DOMAIN}log {log}\nsize {}\nhead {}\ntime {}\nclosing {}\nsigner {}\nkey {}\n",
            self.size,
            self.head,
            self.time,
            self.closing,
            self.signer,
            self.jwk.thumbprint().unwrap_or_default()
        )
    }

    /// Makes and signs a checkpoint.
    pub(crate) fn sign(
        log: &Fingerprint,
        size: u64,
        head: Fingerprint,
        closing: bool,
        signer: &WorkloadId,
        key: &SigningKey,
    ) -> Result<Self, wimse_core::jose::KeyError> {
        let mut checkpoint = Self {
            size,
            head,
            time: Timestamp::now(),
            closing,
            signer: signer.clone(),
            jwk: key.public_jwk().bare(),
            sig: String::new(),
        };
        let sig = key.sign(checkpoint.signing_input(log).as_bytes())?;
        checkpoint.sig = b64::encode(sig);
        Ok(checkpoint)
    }

    /// Checks the signature with `key` (which must be the key in effect).
    pub fn verify(&self, log: &Fingerprint, key: &PublicKey) -> bool {
        let Some(alg) = key.algorithm().or_else(|| {
            self.jwk
                .alg
                .as_deref()
                .and_then(|a| Algorithm::from_name(a).ok())
        }) else {
            return false;
        };
        let Ok(sig) = b64::decode(&self.sig) else {
            return false;
        };
        key.verify(alg, self.signing_input(log).as_bytes(), &sig)
            .is_ok()
    }
}

/// What an entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A start entry.
    Start(Start),
    /// An audit record.
    Record(Box<AuditRecord>),
    /// A signed checkpoint.
    Checkpoint(Checkpoint),
}

/// One line of the log, parsed and its hash checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 0, continuing across files.
    pub index: u64,
    /// The hash of the entry before (zero for entry 0).
    pub prev: Fingerprint,
    /// What it holds.
    pub body: Body,
    /// Its own hash.
    pub hash: Fingerprint,
}

/// The wire form. Member order here is the canonical order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    i: u64,
    prev: Fingerprint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<std::borrow::Cow<'a, Start>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<std::borrow::Cow<'a, AuditRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint: Option<std::borrow::Cow<'a, Checkpoint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<Fingerprint>,
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Longer than [`MAX_LINE`].
    #[error("line is longer than {MAX_LINE} bytes")]
    TooLong,
    /// Not an entry (bad JSON, unknown member, invalid field).
    #[error("not an audit entry: {0}")]
    Syntax(String),
    /// Not exactly one of `start`, `record`, `checkpoint`.
    #[error("entry must hold exactly one of `start`, `record`, `checkpoint`")]
    Body,
    /// Parses, but is not the canonical text of what it parses to.
    #[error("line is not in canonical form (edited)")]
    NotCanonical,
    /// The stored hash does not match the content.
    #[error("hash does not match the entry's content (edited)")]
    HashMismatch,
}

fn entry_hash(content: &[u8]) -> Fingerprint {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(ENTRY_DOMAIN);
    ctx.update(content);
    let digest = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

/// Serializes `line` without its hash, then returns (hash, full line text).
fn seal(mut line: Line<'_>) -> Result<(Fingerprint, Vec<u8>), serde_json::Error> {
    line.hash = None;
    // Room for a typical record line, so the buffer is not regrown while writing.
    let mut text = Vec::with_capacity(1536);
    serde_json::to_writer(&mut text, &line)?;
    let hash = entry_hash(&text);
    // Replace the closing `}` with `,"hash":"…"}`.
    text.pop();
    text.extend_from_slice(b",\"hash\":\"");
    text.extend_from_slice(hash.to_hex().as_bytes());
    text.extend_from_slice(b"\"}");
    Ok((hash, text))
}

/// The line text (without newline) and hash of an entry with `index`, `prev`, `body`: what
/// the writer appends. Public for tools and tests that build logs by hand.
pub fn encode(
    index: u64,
    prev: Fingerprint,
    body: &Body,
) -> Result<(Fingerprint, Vec<u8>), serde_json::Error> {
    use std::borrow::Cow::Borrowed;
    let mut line = Line {
        i: index,
        prev,
        start: None,
        record: None,
        checkpoint: None,
        hash: None,
    };
    match body {
        Body::Start(s) => line.start = Some(Borrowed(s)),
        Body::Record(r) => line.record = Some(Borrowed(r)),
        Body::Checkpoint(c) => line.checkpoint = Some(Borrowed(c)),
    }
    seal(line)
}

/// A line without its `,"hash":"…"}` suffix.
fn without_hash(text: &[u8]) -> &[u8] {
    text.get(..text.len().saturating_sub(HASH_SUFFIX_LEN))
        .unwrap_or_default()
}

/// Parses one line (without its newline): checks size, syntax, canonical form and hash.
/// Never panics, whatever the input.
pub fn parse_line(bytes: &[u8]) -> Result<Entry, LineError> {
    if bytes.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    let line: Line<'_> =
        serde_json::from_slice(bytes).map_err(|e| LineError::Syntax(e.to_string()))?;
    let Some(stored) = line.hash else {
        return Err(LineError::Syntax("missing field `hash`".into()));
    };
    let (index, prev) = (line.i, line.prev);
    let body = match (line.start, line.record, line.checkpoint) {
        (Some(s), None, None) => Body::Start(s.into_owned()),
        (None, Some(r), None) => Body::Record(Box::new(r.into_owned())),
        (None, None, Some(c)) => Body::Checkpoint(c.into_owned()),
        _ => return Err(LineError::Body),
    };
    let (hash, canonical) =
        encode(index, prev, &body).map_err(|e| LineError::Syntax(e.to_string()))?;
    // Compare the content first (everything before `,"hash":"…"}`), so that an edited
    // value is reported as a hash mismatch and a re-spelled one as not canonical.
    if without_hash(&canonical) != without_hash(bytes) {
        return Err(LineError::NotCanonical);
    }
    if hash != stored {
        return Err(LineError::HashMismatch);
    }
    if canonical != bytes {
        return Err(LineError::NotCanonical);
    }
    Ok(Entry {
        index,
        prev,
        body,
        hash,
    })
}

/// The `i` member of a line that does not parse, if it can be made out (for error
/// messages only; nothing is decided on it).
pub(crate) fn index_hint(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.strip_prefix(b"{\"i\":")?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Decision, EventKind};

    fn record_line(index: u64) -> Vec<u8> {
        let record = AuditRecord::new(EventKind::Authz, Decision::Allow)
            .at(Timestamp::from_unix_millis(1_700_000_000_000));
        encode(index, GENESIS_PREV, &Body::Record(Box::new(record)))
            .unwrap()
            .1
    }

    #[test]
    fn an_encoded_line_parses_back_with_the_same_hash() {
        let line = record_line(7);
        let entry = parse_line(&line).unwrap();
        assert_eq!(entry.index, 7);
        let text = String::from_utf8(line).unwrap();
        let content = format!("{}}}", &text[..text.find(",\"hash\":").unwrap()]);
        assert_eq!(entry.hash, entry_hash(content.as_bytes()));
    }

    #[test]
    fn whitespace_is_not_canonical() {
        let line = String::from_utf8(record_line(1))
            .unwrap()
            .replacen(',', ", ", 1);
        assert_eq!(parse_line(line.as_bytes()), Err(LineError::NotCanonical));
    }

    #[test]
    fn an_escaped_character_is_not_canonical() {
        let line = String::from_utf8(record_line(1))
            .unwrap()
            .replacen("authz", "\\u0061uthz", 1);
        assert_eq!(parse_line(line.as_bytes()), Err(LineError::NotCanonical));
    }

    #[test]
    fn an_edited_value_fails_the_hash() {
        let line = String::from_utf8(record_line(1))
            .unwrap()
            .replacen("allow", "deny", 1);
        assert_eq!(parse_line(line.as_bytes()), Err(LineError::HashMismatch));
    }

    #[test]
    fn two_bodies_are_refused() {
        let line = String::from_utf8(record_line(1)).unwrap();
        let doubled = line.replacen(",\"record\":", ",\"start\":null,\"record\":", 1);
        assert!(parse_line(doubled.as_bytes()).is_err());
    }

    #[test]
    fn the_index_of_a_broken_line_can_still_be_named() {
        assert_eq!(index_hint(b"{\"i\":42,\"prev\":garbage"), Some(42));
        assert_eq!(index_hint(b"garbage"), None);
    }
}
