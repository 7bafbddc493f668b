//! What a secret looks like, in one place: the [`Label`] type refuses it, and
//! [`scan_for_secrets`] finds it in any file (for test suites of every crate).
//!
//! The shapes are those of the credentials this platform handles:
//!
//! - **JWT / JWS**: `eyJ` (base64url of `{"`) starting a segment, then two dots with
//!   base64url between — WITs, WPTs, JWT-SVIDs, Txn-Tokens, OAuth access tokens;
//! - **PEM**: `-----BEGIN` — private keys, certificates, CSRs;
//! - **join token**: a standalone run of exactly 43 base64url characters (32 random bytes,
//!   unpadded) with upper case, lower case and a digit or `-`/`_` — how the server mints
//!   join tokens. The one exception is the value of a public JWK coordinate (`"x":"…"`,
//!   `"y":"…"`): the audit log publishes its signer's public key, and a P-256 coordinate has
//!   the same shape. Hex (our fingerprint and chain-hash encoding) never matches.
//!
//! These are heuristics, and they lean towards false alarms: a finding in a test log is a
//! reason to look, not proof of a leak. What they cannot see is a secret in a shape not
//! listed here (a password); the record type has no field that could hold one.

use std::path::{Path, PathBuf};

/// The longest [`Label`], in bytes.
pub const MAX_LABEL_LEN: usize = 256;

/// What kind of secret-looking text was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Three base64url segments starting `eyJ`: a JWT or compact JWS.
    Jwt,
    /// A PEM block header.
    Pem,
    /// 43 base64url characters: the shape of a join token (or any 256-bit secret).
    JoinToken,
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Jwt => "jwt",
            Self::Pem => "pem",
            Self::JoinToken => "join token",
        })
    }
}

/// One secret-looking span in a scanned file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file scanned.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// Byte offset of the span within its line.
    pub column: usize,
    /// What it looks like.
    pub kind: SecretKind,
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Every secret-looking span in `text`, as (byte offset, kind).
pub fn find_secrets(text: &[u8]) -> Vec<(usize, SecretKind)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = text.get(i..).unwrap_or_default();
        if rest.starts_with(b"-----BEGIN") {
            found.push((i, SecretKind::Pem));
            i += 10;
            continue;
        }
        let at_run_start = i == 0 || !text.get(i - 1).copied().is_some_and(is_b64url);
        if !at_run_start || !text.get(i).copied().is_some_and(is_b64url) {
            i += 1;
            continue;
        }
        let run = rest.iter().take_while(|c| is_b64url(**c)).count();
        if rest.starts_with(b"eyJ") && looks_like_jws(rest) {
            found.push((i, SecretKind::Jwt));
        } else if run == 43 && looks_random(rest.get(..43).unwrap_or_default()) {
            let before = text.get(..i).unwrap_or_default();
            let is_public_coordinate =
                before.ends_with(br#""x":""#) || before.ends_with(br#""y":""#);
            if !is_public_coordinate {
                found.push((i, SecretKind::JoinToken));
            }
        }
        i += run.max(1);
    }
    found
}

/// `seg.seg.` with base64url segments (the signature may be empty: an unsecured JWT).
fn looks_like_jws(text: &[u8]) -> bool {
    let first = text.iter().take_while(|c| is_b64url(**c)).count();
    if text.get(first) != Some(&b'.') {
        return false;
    }
    let after = text.get(first + 1..).unwrap_or_default();
    let second = after.iter().take_while(|c| is_b64url(**c)).count();
    second > 0 && after.get(second) == Some(&b'.')
}

fn looks_random(run: &[u8]) -> bool {
    run.iter().any(u8::is_ascii_uppercase)
        && run.iter().any(u8::is_ascii_lowercase)
        && run
            .iter()
            .any(|c| c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// Scans the file at `path` for anything that looks like a JWT, a PEM block or a join
/// token. An unreadable file yields an error, never an empty (passing) result.
pub fn scan_for_secrets(path: impl AsRef<Path>) -> std::io::Result<Vec<Finding>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)?;
    let mut findings = Vec::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        for (column, kind) in find_secrets(line) {
            findings.push(Finding {
                path: path.to_owned(),
                line: n + 1,
                column,
                kind,
            });
        }
    }
    Ok(findings)
}

/// Why text was refused as a [`Label`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The text is empty.
    #[error("label is empty")]
    Empty,
    /// The text is longer than [`MAX_LABEL_LEN`] bytes.
    #[error("label is {0} bytes long, more than {MAX_LABEL_LEN}")]
    TooLong(usize),
    /// The text has a byte outside printable ASCII (controls, escapes, non-ASCII).
    #[error("label contains a character outside printable ascii")]
    NotPrintable,
    /// The text looks like a credential. The text itself is not repeated here.
    #[error("label looks like a {0}; log a credential reference instead")]
    LooksLikeSecret(SecretKind),
}

/// A short, printable, secret-free piece of text: request ids, reasons, resource names,
/// `txn`, `purpose`, `scope`, `jti`.
///
/// Every free-text field of an audit record is a `Label`, so a record cannot carry a
/// token, key or join token even by mistake (a request id that is really a bearer token
/// is refused when the label is made). Printable ASCII only, so that `wimse audit show`
/// can print it to a terminal without escape-sequence injection, and at most
/// [`MAX_LABEL_LEN`] bytes, so that a record stays small.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label(String);

impl Label {
    /// Checks `text` and makes it a label.
    pub fn new(text: impl Into<String>) -> Result<Self, LabelError> {
        let text = text.into();
        if text.is_empty() {
            return Err(LabelError::Empty);
        }
        if text.len() > MAX_LABEL_LEN {
            return Err(LabelError::TooLong(text.len()));
        }
        if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(LabelError::NotPrintable);
        }
        if let Some((_, kind)) = find_secrets(text.as_bytes()).first() {
            return Err(LabelError::LooksLikeSecret(*kind));
        }
        Ok(Self(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Label {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl serde::Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    const JOIN_TOKEN: &str = "q3VhbGl0eS1pcy1ub3QtYW4tYWNjaWRlbnQtNDJfeHk";

    #[test]
    fn ordinary_identifiers_are_labels() {
        for ok in [
            "550e8400-e29b-41d4-a716-446655440000",
            "00-4bf92f3577b0c4b2e8e1d2c3f4a5b6c7-00f067aa0ba902b7-01",
            "GET /api/orders/42",
            "wpt audience does not match",
            "read:orders write:orders",
            // 64 lowercase hex characters: a SHA-256 fingerprint.
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            assert!(Label::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_jwt_is_refused_as_a_label() {
        assert_eq!(
            Label::new(format!("Bearer {JWT}")),
            Err(LabelError::LooksLikeSecret(SecretKind::Jwt))
        );
    }

    #[test]
    fn an_unsecured_jwt_is_refused_as_a_label() {
        assert_eq!(
            Label::new("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
            Err(LabelError::LooksLikeSecret(SecretKind::Jwt))
        );
    }

    #[test]
    fn a_pem_header_is_refused_as_a_label() {
        assert_eq!(
            Label::new("-----BEGIN PRIVATE KEY-----"),
            Err(LabelError::LooksLikeSecret(SecretKind::Pem))
        );
    }

    #[test]
    fn a_join_token_is_refused_as_a_label() {
        assert_eq!(JOIN_TOKEN.len(), 43);
        assert_eq!(
            Label::new(format!("token={JOIN_TOKEN}")),
            Err(LabelError::LooksLikeSecret(SecretKind::JoinToken))
        );
    }

    #[test]
    fn control_characters_and_non_ascii_are_refused() {
        for bad in ["a\nb", "\u{1b}[31mred", "caf\u{e9}", "tab\there"] {
            assert_eq!(Label::new(bad), Err(LabelError::NotPrintable), "{bad:?}");
        }
        assert_eq!(Label::new(""), Err(LabelError::Empty));
        assert_eq!(Label::new("a".repeat(257)), Err(LabelError::TooLong(257)));
    }

    #[test]
    fn a_public_jwk_coordinate_is_not_a_finding_but_the_same_text_elsewhere_is() {
        let jwk = format!(r#"{{"kty":"EC","x":"{JOIN_TOKEN}","y":"{JOIN_TOKEN}"}}"#);
        assert!(find_secrets(jwk.as_bytes()).is_empty());
        let elsewhere = format!(r#"{{"token":"{JOIN_TOKEN}"}}"#);
        assert_eq!(
            find_secrets(elsewhere.as_bytes()),
            vec![(10, SecretKind::JoinToken)]
        );
    }

    #[test]
    fn scan_reports_line_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(
            &path,
            format!("fine\nx {JWT}\n-----BEGIN CERTIFICATE-----\n"),
        )
        .unwrap();
        let findings = scan_for_secrets(&path).unwrap();
        let brief: Vec<_> = findings
            .iter()
            .map(|f| (f.line, f.column, f.kind))
            .collect();
        assert_eq!(
            brief,
            vec![(2, 2, SecretKind::Jwt), (3, 0, SecretKind::Pem)]
        );
    }
}
