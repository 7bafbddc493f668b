//! Workload identifiers and trust domains: the validated [`WorkloadId`] and [`TrustDomain`] types.
//!
//! This module owns the *syntax* of identifiers: which strings are workload identifiers, how they split
//! into scheme, trust domain and path, and how they compare. It does not decide whether an identifier is
//! *trusted* (that needs a verified credential and an explicitly trusted trust domain, draft-ietf-wimse-
//! identifier §"Security Considerations"), nor does it do any I/O.
//!
//! # Rules
//!
//! Every identifier is an absolute RFC 3986 URI `scheme://trust-domain[/path]` and is checked in two layers:
//!
//! * **Generic WIMSE rules** (draft-ietf-wimse-identifier-03), for every scheme (`wimse://` is the
//!   expected one): a lowercase RFC 3986 scheme (§3.1); a non-empty authority that is the trust domain;
//!   no userinfo, port, query or fragment; no empty, `.` or `..` path segments and no trailing `/`;
//!   path segment characters are RFC 3986 `unreserved`, `sub-delims`, `:` and `@`. Trust domains that are
//!   IP addresses are refused ("IP addresses MUST NOT be used except for legacy compatibility") unless
//!   [`IdPolicy::allow_ip_trust_domain`] is set.
//! * **The SPIFFE ID profile** (SPIFFE-ID §2), when the scheme is `spiffe`: path segment characters are
//!   only `A-Z a-z 0-9 . - _`, and IP-looking trust domains are *not* treated specially (§2.1: "must
//!   not treat IP-looking or DNS-looking names differently").
//!
//! For both, the trust domain uses the SPIFFE alphabet `a-z 0-9 . - _` (SPIFFE-ID §2.1) and is at most
//! 255 bytes (§2.3), and the whole identifier is at most [`IdPolicy::max_len`] bytes (2048 by default:
//! SPIFFE-ID §2.3 and the WIMSE draft both say MUST accept up to 2048, SHOULD NOT produce longer).
//!
//! # Decisions where the specifications leave room
//!
//! * **Case.** SPIFFE-ID §2.4 calls scheme and trust domain case-insensitive, while §2.1 requires a
//!   lowercase host. We refuse uppercase in the scheme or trust domain instead of lowercasing it (as
//!   go-spiffe does; py-spiffe and the Rust `spiffe` crate lowercase). Only a canonical form is ever
//!   built, so comparing identifiers is plain byte equality of the complete URI, as the WIMSE draft
//!   requires, and a name never has two spellings that a policy check could disagree on.
//! * **Percent-encoding.** SPIFFE forbids it; the WIMSE working group has left it open. We refuse it
//!   for every scheme: decoding would give one identifier several spellings.
//! * **IP trust domains.** For non-SPIFFE schemes a trust domain counts as an IP address when it is an
//!   IPv6 literal (`[...]`) or when its last label is a number (decimal, or hex with `0x`): that is the
//!   WHATWG URL "ends in a number" test, so `127.1` and `0x7f.0.0.1` are caught as well as dotted quads.
//!   Allowing IP trust domains cannot admit IPv6 literals, because `[`, `]` and `:` are outside the
//!   trust-domain alphabet; in practice the legacy switch admits IPv4 addresses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The scheme of SPIFFE IDs, which adds the SPIFFE profile to the generic rules.
const SPIFFE_SCHEME: &str = "spiffe";

/// SPIFFE-ID §2.3: a trust domain is at most 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// SPIFFE-ID §2.3 and draft-ietf-wimse-identifier: accept up to 2048 bytes, do not generate longer.
const DEFAULT_MAX_LEN: usize = 2048;

/// Characters allowed in a trust domain, as named in error messages.
const TRUST_DOMAIN_CHARS: &str = "a-z 0-9 . - _";

/// Characters allowed in a SPIFFE path segment, as named in error messages.
const SPIFFE_PATH_CHARS: &str = "A-Z a-z 0-9 . - _";

/// Characters allowed in a generic WIMSE path segment, as named in error messages.
const WIMSE_PATH_CHARS: &str = "A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , ; = : @";

/// Why a string is not a [`WorkloadId`] or a [`TrustDomain`]: one variant per rule.
///
/// Messages quote the offending input with control characters escaped, so they are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The input is the empty string.
    #[error("identifier is empty")]
    Empty,

    /// The identifier is longer than [`IdPolicy::max_len`] bytes (SPIFFE-ID §2.3, WIMSE: 2048).
    #[error("identifier is {len} bytes long, over the limit of {max} bytes")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },

    /// The identifier does not begin with `scheme://`: it is not an absolute URI with an authority
    /// (RFC 3986 §3, SPIFFE-ID §2, WIMSE: "MUST be an absolute URI").
    #[error("identifier `{}` does not start with `scheme://`", .input.escape_debug())]
    MissingScheme {
        /// The input as given.
        input: String,
    },

    /// The scheme is not an RFC 3986 scheme in lowercase (`a-z` then `a-z 0-9 + - .`). An uppercase
    /// `Spiffe://` is refused here rather than folded, to keep one canonical spelling.
    #[error(
        "identifier `{}` has scheme `{}`, which is not a lowercase RFC 3986 scheme",
        .input.escape_debug(),
        .scheme.escape_debug()
    )]
    BadScheme {
        /// The input as given.
        input: String,
        /// The scheme that was refused.
        scheme: String,
    },

    /// The authority, that is the trust domain, is empty (SPIFFE-ID §2.1, WIMSE: non-empty authority).
    #[error("identifier `{}` has no trust domain", .input.escape_debug())]
    MissingTrustDomain {
        /// The input as given.
        input: String,
    },

    /// The trust domain is longer than 255 bytes (SPIFFE-ID §2.3).
    #[error("trust domain is {len} bytes long, over the limit of 255 bytes")]
    TrustDomainTooLong {
        /// Length of the trust domain in bytes.
        len: usize,
    },

    /// The authority carries userinfo (`user@`), which SPIFFE-ID §2.1 and WIMSE forbid.
    #[error("identifier `{}` has userinfo (`@`) in its trust domain", .input.escape_debug())]
    UserInfo {
        /// The input as given.
        input: String,
    },

    /// The authority carries a port (`:8443`), which SPIFFE-ID §2.1 and WIMSE forbid.
    #[error("identifier `{}` has a port (`:`) after its trust domain", .input.escape_debug())]
    Port {
        /// The input as given.
        input: String,
    },

    /// The trust domain is an IP address, which WIMSE allows only for legacy compatibility
    /// ([`IdPolicy::allow_ip_trust_domain`]). Never raised for `spiffe://`.
    #[error("identifier `{}` has an IP address as its trust domain", .input.escape_debug())]
    IpTrustDomain {
        /// The input as given.
        input: String,
    },

    /// The trust domain has uppercase letters; it must be lowercase (SPIFFE-ID §2.1). Refused rather
    /// than folded, to keep one canonical spelling.
    #[error("identifier `{}` has uppercase letters in its trust domain", .input.escape_debug())]
    UppercaseTrustDomain {
        /// The input as given.
        input: String,
    },

    /// The trust domain has a character outside `a-z 0-9 . - _` (SPIFFE-ID §2.1).
    #[error(
        "identifier `{}` has `{}` in its trust domain, which allows only {TRUST_DOMAIN_CHARS}",
        .input.escape_debug(),
        .ch.escape_debug()
    )]
    BadTrustDomainChar {
        /// The input as given.
        input: String,
        /// The first character that was refused.
        ch: char,
    },

    /// A trust domain was given in URI form with a path; a trust domain's own ID has none.
    #[error("`{}` has a path, so it names a workload, not a trust domain", .input.escape_debug())]
    PathInTrustDomain {
        /// The input as given.
        input: String,
    },

    /// The identifier has a query (`?`), which SPIFFE-ID §2 and WIMSE forbid.
    #[error("identifier `{}` has a query (`?`)", .input.escape_debug())]
    Query {
        /// The input as given.
        input: String,
    },

    /// The identifier has a fragment (`#`), which SPIFFE-ID §2 and WIMSE forbid.
    #[error("identifier `{}` has a fragment (`#`)", .input.escape_debug())]
    Fragment {
        /// The input as given.
        input: String,
    },

    /// The trust domain or path holds a percent-encoded octet (`%2F`). SPIFFE-ID §2.1/§2.2 forbid it;
    /// the WIMSE draft leaves it open and we refuse it for every scheme.
    #[error("identifier `{}` contains percent-encoding, which is not allowed", .input.escape_debug())]
    PercentEncoded {
        /// The input as given.
        input: String,
    },

    /// The path given to [`WorkloadId::from_parts`] is neither empty nor starts with `/`.
    #[error("path `{}` must be empty or start with `/`", .path.escape_debug())]
    RelativePath {
        /// The path as given.
        path: String,
    },

    /// The path has an empty segment (`//`) (SPIFFE-ID §2.2).
    #[error("identifier `{}` has an empty path segment (`//`)", .input.escape_debug())]
    EmptySegment {
        /// The input as given.
        input: String,
    },

    /// The path has a `.` or `..` segment (SPIFFE-ID §2.2). Segments such as `.a` or `...` are fine.
    #[error("identifier `{}` has a `.` or `..` path segment", .input.escape_debug())]
    DotSegment {
        /// The input as given.
        input: String,
    },

    /// The path ends with `/` (SPIFFE-ID §2.2).
    #[error("identifier `{}` has a trailing slash", .input.escape_debug())]
    TrailingSlash {
        /// The input as given.
        input: String,
    },

    /// A path segment has a character its scheme does not allow: `A-Z a-z 0-9 . - _` for SPIFFE
    /// (SPIFFE-ID §2.2), RFC 3986 `unreserved`, `sub-delims`, `:` and `@` otherwise.
    #[error(
        "identifier `{}` has `{}` in its path, which allows only {allowed}",
        .input.escape_debug(),
        .ch.escape_debug()
    )]
    BadPathChar {
        /// The input as given.
        input: String,
        /// The first character that was refused.
        ch: char,
        /// The characters that the scheme allows in a path segment.
        allowed: &'static str,
    },
}

/// Knobs for [`WorkloadId::parse_with`]. The default is the strict, standard behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPolicy {
    /// Accept IP-address trust domains in non-SPIFFE identifiers. WIMSE allows them only "for legacy
    /// compatibility"; SPIFFE IDs ignore this flag (they never treat IP-looking names differently).
    pub allow_ip_trust_domain: bool,
    /// The longest identifier accepted, in bytes. Default 2048 (SPIFFE-ID §2.3, WIMSE).
    pub max_len: usize,
}

impl Default for IdPolicy {
    fn default() -> Self {
        Self {
            allow_ip_trust_domain: false,
            max_len: DEFAULT_MAX_LEN,
        }
    }
}

/// A trust domain name such as `example.org`: non-empty, at most 255 bytes, only `a-z 0-9 . - _`.
///
/// Displays and serializes as the bare name. [`TrustDomain::spiffe_id_string`] gives the
/// `spiffe://example.org` form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a trust domain given as a bare name (`example.org`) or, like go-spiffe's
    /// `TrustDomainFromString`, as a trust-domain ID without path (`spiffe://example.org`). The URI
    /// form is checked as a [`WorkloadId`] with the default policy, so `wimse://example.org` (a WIMSE
    /// "Workload Identifier Origin") is accepted too, under that scheme's rules.
    pub fn new(name: &str) -> Result<Self, IdError> {
        if name.is_empty() {
            return Err(IdError::Empty);
        }
        // The same test go-spiffe uses to tell the URI form from a bare name.
        if name.contains(":/") {
            let id = WorkloadId::parse(name)?;
            if !id.is_trust_domain_id() {
                return Err(IdError::PathInTrustDomain {
                    input: name.to_owned(),
                });
            }
            return Ok(id.trust_domain);
        }
        parse_authority(name, name, false)
    }

    /// The bare name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's SPIFFE ID, e.g. `spiffe://example.org` (the Workload API keys bundles by it).
    pub fn spiffe_id_string(&self) -> String {
        format!("{SPIFFE_SCHEME}://{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A workload identifier: an absolute URI `scheme://trust-domain[/path]` that passed the rules in the
/// [module documentation](self), e.g. `spiffe://example.org/ns/prod/sa/api` or `wimse://example.org/api`.
///
/// Equality, ordering and hashing are those of the complete URI's bytes (draft-ietf-wimse-identifier:
/// consumers MUST compare the complete URI, not just the path).
#[derive(Clone)]
pub struct WorkloadId {
    /// The complete URI, exactly as validated.
    uri: String,
    /// The authority of `uri`.
    trust_domain: TrustDomain,
    /// Byte length of the scheme at the start of `uri`.
    scheme_len: usize,
    /// Byte offset of the path in `uri` (equal to its length when there is no path).
    path_start: usize,
}

/// The path of a trust domain's server identity, `spiffe://<td>/wimse/server`: the
/// X509-SVID its TLS listener presents, which agents and workloads require of it.
pub const SERVER_PATH: &str = "/wimse/server";

impl WorkloadId {
    /// Parses and validates an identifier under [`IdPolicy::default`].
    pub fn parse(input: &str) -> Result<Self, IdError> {
        Self::parse_with(input, &IdPolicy::default())
    }

    /// Parses and validates an identifier under `policy`.
    pub fn parse_with(input: &str, policy: &IdPolicy) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        // Checked first so that no later rule scans, or echoes, an oversized input.
        if input.len() > policy.max_len {
            return Err(IdError::TooLong {
                len: input.len(),
                max: policy.max_len,
            });
        }
        let (scheme, after_scheme) = split_scheme(input)?;
        let spiffe = scheme == SPIFFE_SCHEME;

        // RFC 3986 §3.2: the authority ends at the first `/`, `?` or `#`.
        let authority_end = after_scheme
            .find(['/', '?', '#'])
            .unwrap_or(after_scheme.len());
        let authority = after_scheme.get(..authority_end).unwrap_or_default();
        let tail = after_scheme.get(authority_end..).unwrap_or_default();

        let refuse_ip = !spiffe && !policy.allow_ip_trust_domain;
        let trust_domain = parse_authority(input, authority, refuse_ip)?;

        // RFC 3986 §3.4/§3.5: whichever of `?` and `#` comes first starts the query or the fragment.
        match tail.chars().find(|c| matches!(c, '?' | '#')) {
            Some('?') => {
                return Err(IdError::Query {
                    input: input.to_owned(),
                });
            }
            Some(_) => {
                return Err(IdError::Fragment {
                    input: input.to_owned(),
                });
            }
            None => {}
        }
        check_path(input, tail, spiffe)?;

        Ok(Self {
            uri: input.to_owned(),
            trust_domain,
            scheme_len: scheme.len(),
            path_start: input.len() - tail.len(),
        })
    }

    /// Builds `scheme://td{path}` and validates it exactly as [`WorkloadId::parse`] does. `path` must
    /// be empty (a trust-domain ID) or start with `/`.
    pub fn from_parts(scheme: &str, td: &TrustDomain, path: &str) -> Result<Self, IdError> {
        // Without this, `("spiffe", "td", "x")` would glue onto the trust domain as `spiffe://tdx`.
        if !path.is_empty() && !path.starts_with('/') {
            return Err(IdError::RelativePath {
                path: path.to_owned(),
            });
        }
        Self::parse(&format!("{scheme}://{td}{path}"))
    }

    /// The complete URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The scheme, e.g. `spiffe` or `wimse`.
    pub fn scheme(&self) -> &str {
        self.uri.get(..self.scheme_len).unwrap_or_default()
    }

    /// The trust domain (the URI's authority).
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty for a trust-domain ID, otherwise starting with `/`.
    pub fn path(&self) -> &str {
        self.uri.get(self.path_start..).unwrap_or_default()
    }

    /// Whether this is a SPIFFE ID (scheme `spiffe`), which also passed the SPIFFE profile.
    pub fn is_spiffe(&self) -> bool {
        self.scheme() == SPIFFE_SCHEME
    }

    /// Whether this identifier names a trust domain rather than a workload: it has no path.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }
}

impl PartialEq for WorkloadId {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
    }
}

impl Eq for WorkloadId {}

impl std::hash::Hash for WorkloadId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uri.hash(state);
    }
}

impl PartialOrd for WorkloadId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WorkloadId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.uri.cmp(&other.uri)
    }
}

impl fmt::Debug for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WorkloadId").field(&self.uri).finish()
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for WorkloadId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for WorkloadId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for WorkloadId {
    /// Validates under [`IdPolicy::default`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Splits `scheme://rest` into the scheme and what follows `://`, checking the scheme (RFC 3986 §3.1,
/// in lowercase only).
fn split_scheme(input: &str) -> Result<(&str, &str), IdError> {
    let missing = || IdError::MissingScheme {
        input: input.to_owned(),
    };
    // RFC 3986 §3: the scheme is everything before the first `:`, and `//` must introduce an authority.
    let (scheme, rest) = input.split_once(':').ok_or_else(missing)?;
    let after = rest.strip_prefix("//").ok_or_else(missing)?;
    if scheme.is_empty() {
        return Err(missing());
    }
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if !(first_ok && rest_ok) {
        return Err(IdError::BadScheme {
            input: input.to_owned(),
            scheme: scheme.to_owned(),
        });
    }
    Ok((scheme, after))
}

/// Validates an authority (or a bare trust-domain name) as a trust domain; `input` is what errors quote.
fn parse_authority(input: &str, authority: &str, refuse_ip: bool) -> Result<TrustDomain, IdError> {
    let err_input = || input.to_owned();
    if authority.is_empty() {
        return Err(IdError::MissingTrustDomain { input: err_input() });
    }
    // Checked before any rule that quotes the input, so a huge bare name is never echoed.
    if authority.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong {
            len: authority.len(),
        });
    }
    // RFC 3986 §3.2: userinfo ends with `@`; SPIFFE-ID §2.1 and WIMSE: it MUST be empty.
    if authority.contains('@') {
        return Err(IdError::UserInfo { input: err_input() });
    }
    // RFC 3986 §3.2.2: an IP-literal is bracketed. Looked at before the port so that the colons of an
    // IPv6 address are not mistaken for one.
    if authority.starts_with('[') {
        if refuse_ip {
            return Err(IdError::IpTrustDomain { input: err_input() });
        }
        // SPIFFE-ID §2.1 excludes IPv6: `[` is outside the trust-domain alphabet.
        return Err(IdError::BadTrustDomainChar {
            input: err_input(),
            ch: '[',
        });
    }
    // RFC 3986 §3.2.3: a port follows the host after `:`; SPIFFE-ID §2.1 and WIMSE: it MUST be empty.
    if authority.contains(':') {
        return Err(IdError::Port { input: err_input() });
    }
    // WIMSE: IP addresses MUST NOT be trust domains except for legacy compatibility.
    if refuse_ip && ends_in_a_number(authority) {
        return Err(IdError::IpTrustDomain { input: err_input() });
    }
    for (i, c) in authority.char_indices() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(IdError::UppercaseTrustDomain { input: err_input() }),
            '%' if is_percent_triplet(authority, i) => {
                return Err(IdError::PercentEncoded { input: err_input() });
            }
            _ => {
                return Err(IdError::BadTrustDomainChar {
                    input: err_input(),
                    ch: c,
                });
            }
        }
    }
    Ok(TrustDomain(authority.to_owned()))
}

/// The WHATWG URL "ends in a number" test: a host whose last label (ignoring one trailing dot) is a
/// decimal or `0x` hex number is parsed as an IPv4 address by browsers and many HTTP stacks.
fn ends_in_a_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or_default();
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether the `%` at byte offset `i` of `s` starts a percent-encoded octet (`%` and two hex digits).
fn is_percent_triplet(s: &str, i: usize) -> bool {
    s.get(i + 1..i + 3)
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `c` may appear in a SPIFFE path segment (SPIFFE-ID §2.2).
fn is_spiffe_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Whether `c` may appear in a generic WIMSE path segment: RFC 3986 `pchar` without `pct-encoded`.
fn is_wimse_path_char(c: char) -> bool {
    // unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
    // sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.'
                | '_'
                | '~'
                | '!'
                | '$'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | ';'
                | '='
        )
        || matches!(c, ':' | '@')
}

/// Checks a path that is empty or starts with `/` (SPIFFE-ID §2.2; WIMSE with its own alphabet).
fn check_path(input: &str, path: &str, spiffe: bool) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    let err_input = || input.to_owned();
    let Some(rest) = path.strip_prefix('/') else {
        return Err(IdError::RelativePath {
            path: path.to_owned(),
        });
    };
    let (allowed_char, allowed): (fn(char) -> bool, &'static str) = if spiffe {
        (is_spiffe_path_char, SPIFFE_PATH_CHARS)
    } else {
        (is_wimse_path_char, WIMSE_PATH_CHARS)
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            // An empty last segment is what a trailing `/` leaves behind.
            return Err(if segments.peek().is_none() {
                IdError::TrailingSlash { input: err_input() }
            } else {
                IdError::EmptySegment { input: err_input() }
            });
        }
        if segment == "." || segment == ".." {
            return Err(IdError::DotSegment { input: err_input() });
        }
        for (i, c) in segment.char_indices() {
            if allowed_char(c) {
                continue;
            }
            if c == '%' && is_percent_triplet(segment, i) {
                return Err(IdError::PercentEncoded { input: err_input() });
            }
            return Err(IdError::BadPathChar {
                input: err_input(),
                ch: c,
                allowed,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(input: &str) -> IdError {
        WorkloadId::parse(input).expect_err(input)
    }

    fn ok(input: &str) -> WorkloadId {
        WorkloadId::parse(input).expect(input)
    }

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect(name)
    }

    // --- accepted identifiers and their parts ---

    #[test]
    fn trust_domain_only_spiffe_id_is_valid() {
        let id = ok("spiffe://example.org");
        assert_eq!(id.scheme(), "spiffe");
        assert_eq!(id.trust_domain().as_str(), "example.org");
        assert_eq!(id.path(), "");
        assert!(id.is_spiffe());
        assert!(id.is_trust_domain_id());
    }

    #[test]
    fn spiffe_id_with_path_exposes_its_parts() {
        let id = ok("spiffe://example.org/ns/prod/sa/api");
        assert_eq!(id.as_str(), "spiffe://example.org/ns/prod/sa/api");
        assert_eq!(id.scheme(), "spiffe");
        assert_eq!(id.trust_domain(), &td("example.org"));
        assert_eq!(id.path(), "/ns/prod/sa/api");
        assert!(!id.is_trust_domain_id());
    }

    #[test]
    fn wimse_id_is_valid_and_not_spiffe() {
        let id = ok("wimse://trust.corp.example.com/payments/api");
        assert_eq!(id.scheme(), "wimse");
        assert_eq!(id.trust_domain().as_str(), "trust.corp.example.com");
        assert_eq!(id.path(), "/payments/api");
        assert!(!id.is_spiffe());
    }

    #[test]
    fn path_is_case_sensitive_and_keeps_its_case() {
        // SPIFFE-ID §2.4: the path is case-sensitive.
        let upper = ok("spiffe://example.org/API");
        let lower = ok("spiffe://example.org/api");
        assert_eq!(upper.path(), "/API");
        assert_ne!(upper, lower);
    }

    #[test]
    fn dot_prefixed_segments_are_valid() {
        for id in [
            "spiffe://td/.path",
            "spiffe://td/..path",
            "spiffe://td/...",
            "wimse://td/.a/..b",
        ] {
            ok(id);
        }
    }

    // --- equality ---

    #[test]
    fn equality_is_byte_equality_of_the_complete_uri() {
        // WIMSE: compare the complete URI, not just the path or the trust domain.
        assert_ne!(ok("spiffe://a.example/x"), ok("wimse://a.example/x"));
        assert_ne!(ok("spiffe://a.example/x"), ok("spiffe://b.example/x"));
        assert_ne!(ok("spiffe://a.example/x"), ok("spiffe://a.example/x/y"));
        assert_eq!(ok("spiffe://a.example/x"), ok("spiffe://a.example/x"));
    }

    #[test]
    fn workload_ids_order_by_their_bytes() {
        let mut ids = [ok("spiffe://b/x"), ok("spiffe://a/y"), ok("spiffe://a/x")];
        ids.sort();
        let sorted: Vec<&str> = ids.iter().map(WorkloadId::as_str).collect();
        assert_eq!(sorted, ["spiffe://a/x", "spiffe://a/y", "spiffe://b/x"]);
    }

    // --- emptiness and length ---

    #[test]
    fn empty_input_is_refused() {
        assert_eq!(err(""), IdError::Empty);
        assert_eq!(TrustDomain::new(""), Err(IdError::Empty));
    }

    #[test]
    fn id_of_exactly_max_len_is_accepted() {
        let prefix = "spiffe://example.org/";
        let id = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
        assert_eq!(id.len(), 2048);
        ok(&id);
    }

    #[test]
    fn id_over_max_len_is_refused() {
        let prefix = "spiffe://example.org/";
        let id = format!("{prefix}{}", "a".repeat(2049 - prefix.len()));
        assert_eq!(
            err(&id),
            IdError::TooLong {
                len: 2049,
                max: 2048
            }
        );
    }

    #[test]
    fn policy_max_len_is_honoured() {
        let policy = IdPolicy {
            max_len: 16,
            ..IdPolicy::default()
        };
        assert!(WorkloadId::parse_with("spiffe://td/abcd", &policy).is_ok());
        assert_eq!(
            WorkloadId::parse_with("spiffe://td/abcde", &policy),
            Err(IdError::TooLong { len: 17, max: 16 })
        );
    }

    #[test]
    fn trust_domain_of_255_bytes_is_accepted() {
        let name = "a".repeat(255);
        assert_eq!(td(&name).as_str(), name);
        ok(&format!("spiffe://{name}/x"));
    }

    #[test]
    fn trust_domain_over_255_bytes_is_refused() {
        let name = "a".repeat(256);
        assert_eq!(
            TrustDomain::new(&name),
            Err(IdError::TrustDomainTooLong { len: 256 })
        );
        assert_eq!(
            err(&format!("spiffe://{name}/x")),
            IdError::TrustDomainTooLong { len: 256 }
        );
    }

    // --- scheme ---

    #[test]
    fn input_without_scheme_is_refused() {
        for input in ["s", "example.org/x", "://td/x", "spiffe:/", "spiffe:/td/x"] {
            assert!(
                matches!(err(input), IdError::MissingScheme { .. }),
                "{input}"
            );
        }
    }

    #[test]
    fn uppercase_scheme_is_refused() {
        // SPIFFE-ID §2.4 calls the scheme case-insensitive; we keep one canonical form (as go-spiffe).
        for input in ["Spiffe://td/x", "SPIFFE://td/x", "WIMSE://td/x"] {
            assert!(matches!(err(input), IdError::BadScheme { .. }), "{input}");
        }
    }

    #[test]
    fn scheme_outside_rfc3986_is_refused() {
        for input in ["1abc://td/x", "a_b://td/x", "a b://td/x", "é://td/x"] {
            assert!(matches!(err(input), IdError::BadScheme { .. }), "{input}");
        }
        ok("a1+b-c.d://td/x");
    }

    // --- trust domain ---

    #[test]
    fn missing_trust_domain_is_refused() {
        for input in ["spiffe://", "spiffe:///", "spiffe:///path", "wimse://?q"] {
            assert!(
                matches!(err(input), IdError::MissingTrustDomain { .. }),
                "{input}"
            );
        }
    }

    #[test]
    fn userinfo_is_refused() {
        for input in [
            "spiffe://user@example.org/x",
            "spiffe://user:pass@example.org/x",
            "wimse://@example.org",
        ] {
            assert!(matches!(err(input), IdError::UserInfo { .. }), "{input}");
        }
    }

    #[test]
    fn port_is_refused() {
        for input in [
            "spiffe://example.org:8080/x",
            "spiffe://example.org:/x",
            "wimse://example.org:443",
        ] {
            assert!(matches!(err(input), IdError::Port { .. }), "{input}");
        }
    }

    #[test]
    fn uppercase_trust_domain_is_refused() {
        // SPIFFE-ID §2.1: the host is lowercase. py-spiffe and the Rust `spiffe` crate would fold it;
        // we refuse it, so that every accepted identifier has exactly one spelling.
        assert!(matches!(
            err("spiffe://Example.org/x"),
            IdError::UppercaseTrustDomain { .. }
        ));
        assert!(matches!(
            TrustDomain::new("EXAMPLE.ORG"),
            Err(IdError::UppercaseTrustDomain { .. })
        ));
    }

    #[test]
    fn trust_domain_with_char_outside_its_alphabet_is_refused() {
        assert_eq!(
            err("spiffe://trust$domain"),
            IdError::BadTrustDomainChar {
                input: "spiffe://trust$domain".to_owned(),
                ch: '$'
            }
        );
        assert!(matches!(
            err("spiffe://exämple.org"),
            IdError::BadTrustDomainChar { ch: 'ä', .. }
        ));
        assert!(matches!(
            err("spiffe://a%zz/x"),
            IdError::BadTrustDomainChar { ch: '%', .. }
        ));
    }

    #[test]
    fn percent_encoding_in_trust_domain_is_refused() {
        for input in ["spiffe://%62%61%64/x", "spiffe://example%2eorg/x"] {
            assert!(
                matches!(err(input), IdError::PercentEncoded { .. }),
                "{input}"
            );
        }
    }

    #[test]
    fn ipv4_trust_domain_is_valid_for_spiffe() {
        // SPIFFE-ID §2.1: IP-looking names must not be treated differently.
        assert_eq!(ok("spiffe://1.2.3.4/x").trust_domain().as_str(), "1.2.3.4");
        assert_eq!(td("1.2.3.4").as_str(), "1.2.3.4");
    }

    #[test]
    fn ipv4_trust_domain_is_refused_for_wimse() {
        // WIMSE: IP addresses MUST NOT be trust domains except for legacy compatibility.
        for input in [
            "wimse://1.2.3.4/x",
            "wimse://127.1/x",
            "wimse://0x7f.0.0.1/x",
            "wimse://10.0.0.1.",
            "wimse://example.123",
        ] {
            assert!(
                matches!(err(input), IdError::IpTrustDomain { .. }),
                "{input}"
            );
        }
        // Labels that merely contain digits are names.
        ok("wimse://123.example/x");
        ok("wimse://svc1.example.org/x");
    }

    #[test]
    fn ipv4_trust_domain_is_accepted_for_wimse_when_policy_allows() {
        let legacy = IdPolicy {
            allow_ip_trust_domain: true,
            ..IdPolicy::default()
        };
        let id = WorkloadId::parse_with("wimse://10.0.0.1/x", &legacy).unwrap();
        assert_eq!(id.trust_domain().as_str(), "10.0.0.1");
    }

    #[test]
    fn ipv6_literal_trust_domain_is_refused() {
        // SPIFFE: `[` is just a character outside the trust-domain alphabet.
        assert!(matches!(
            err("spiffe://[::1]/x"),
            IdError::BadTrustDomainChar { ch: '[', .. }
        ));
        // WIMSE: an IP address.
        assert!(matches!(
            err("wimse://[2001:db8::1]/x"),
            IdError::IpTrustDomain { .. }
        ));
        // Even the legacy switch cannot admit it: the trust-domain alphabet has no `[`.
        let legacy = IdPolicy {
            allow_ip_trust_domain: true,
            ..IdPolicy::default()
        };
        assert!(matches!(
            WorkloadId::parse_with("wimse://[::1]/x", &legacy),
            Err(IdError::BadTrustDomainChar { ch: '[', .. })
        ));
    }

    // --- query and fragment ---

    #[test]
    fn query_is_refused() {
        for input in [
            "spiffe://example.org?q=1",
            "spiffe://example.org/x?q",
            "wimse://example.org/x?",
            "spiffe://example.org/x?a#b",
        ] {
            assert!(matches!(err(input), IdError::Query { .. }), "{input}");
        }
    }

    #[test]
    fn fragment_is_refused() {
        for input in [
            "spiffe://example.org#f",
            "spiffe://example.org/x#f",
            "wimse://example.org/x#a?b",
        ] {
            assert!(matches!(err(input), IdError::Fragment { .. }), "{input}");
        }
    }

    // --- path ---

    #[test]
    fn trailing_slash_is_refused() {
        for input in ["spiffe://td/", "spiffe://td/path/", "wimse://td/a/b/"] {
            assert!(
                matches!(err(input), IdError::TrailingSlash { .. }),
                "{input}"
            );
        }
    }

    #[test]
    fn empty_segment_is_refused() {
        for input in ["spiffe://td//", "spiffe://td//path", "wimse://td/a//b"] {
            assert!(
                matches!(err(input), IdError::EmptySegment { .. }),
                "{input}"
            );
        }
    }

    #[test]
    fn dot_segments_are_refused() {
        for input in [
            "spiffe://td/.",
            "spiffe://td/..",
            "spiffe://td/./x",
            "spiffe://td/x/../y",
            "wimse://td/a/..",
        ] {
            assert!(matches!(err(input), IdError::DotSegment { .. }), "{input}");
        }
    }

    #[test]
    fn percent_encoding_in_path_is_refused() {
        for input in [
            "spiffe://td/%62%61%64",
            "spiffe://td/foo%2Fbar",
            "wimse://td/%61pi",
        ] {
            assert!(
                matches!(err(input), IdError::PercentEncoded { .. }),
                "{input}"
            );
        }
    }

    #[test]
    fn lone_percent_sign_is_a_bad_path_char() {
        for input in ["spiffe://td/100%", "wimse://td/a%g1"] {
            assert!(
                matches!(err(input), IdError::BadPathChar { ch: '%', .. }),
                "{input}"
            );
        }
    }

    #[test]
    fn spiffe_path_refuses_chars_that_wimse_allows() {
        for ch in [
            ':', '@', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=',
        ] {
            let spiffe = format!("spiffe://td/a{ch}b");
            assert!(
                matches!(err(&spiffe), IdError::BadPathChar { ch: c, .. } if c == ch),
                "{spiffe}"
            );
            ok(&format!("wimse://td/a{ch}b"));
        }
    }

    #[test]
    fn path_chars_outside_every_alphabet_are_refused() {
        for input in [
            "wimse://td/a b",
            "wimse://td/a\"b",
            "wimse://td/a<b",
            "wimse://td/ä",
            "spiffe://td/a\nb",
        ] {
            assert!(
                matches!(err(input), IdError::BadPathChar { .. }),
                "{input:?}"
            );
        }
    }

    // --- TrustDomain ---

    #[test]
    fn trust_domain_accepts_a_bare_name() {
        let t = td("example.org");
        assert_eq!(t.as_str(), "example.org");
        assert_eq!(t.to_string(), "example.org");
        assert_eq!(t.spiffe_id_string(), "spiffe://example.org");
    }

    #[test]
    fn trust_domain_accepts_its_spiffe_id() {
        assert_eq!(td("spiffe://example.org"), td("example.org"));
    }

    #[test]
    fn trust_domain_accepts_a_wimse_origin() {
        assert_eq!(td("wimse://example.org"), td("example.org"));
    }

    #[test]
    fn trust_domain_given_with_a_path_is_refused() {
        assert!(matches!(
            TrustDomain::new("spiffe://example.org/workload"),
            Err(IdError::PathInTrustDomain { .. })
        ));
        assert!(matches!(
            TrustDomain::new("spiffe://example.org/"),
            Err(IdError::TrailingSlash { .. })
        ));
    }

    #[test]
    fn trust_domain_with_userinfo_or_port_is_refused() {
        assert!(matches!(
            TrustDomain::new("user@example.org"),
            Err(IdError::UserInfo { .. })
        ));
        assert!(matches!(
            TrustDomain::new("example.org:443"),
            Err(IdError::Port { .. })
        ));
        assert!(matches!(
            TrustDomain::new("[::1]"),
            Err(IdError::BadTrustDomainChar { ch: '[', .. })
        ));
        assert!(matches!(
            TrustDomain::new("spiffe:/example.org"),
            Err(IdError::MissingScheme { .. })
        ));
    }

    #[test]
    fn trust_domain_is_parsed_from_str() {
        assert_eq!("example.org".parse::<TrustDomain>(), Ok(td("example.org")));
    }

    // --- from_parts ---

    #[test]
    fn from_parts_builds_the_same_id_as_parse() {
        let t = td("example.org");
        assert_eq!(
            WorkloadId::from_parts("spiffe", &t, "/a/b"),
            Ok(ok("spiffe://example.org/a/b"))
        );
        assert_eq!(
            WorkloadId::from_parts("wimse", &t, ""),
            Ok(ok("wimse://example.org"))
        );
    }

    #[test]
    fn from_parts_refuses_a_path_without_leading_slash() {
        assert!(matches!(
            WorkloadId::from_parts("spiffe", &td("td"), "x"),
            Err(IdError::RelativePath { .. })
        ));
    }

    #[test]
    fn from_parts_applies_the_scheme_rules() {
        assert!(matches!(
            WorkloadId::from_parts("wimse", &td("1.2.3.4"), "/x"),
            Err(IdError::IpTrustDomain { .. })
        ));
        assert!(matches!(
            WorkloadId::from_parts("spiffe", &td("td"), "/a:b"),
            Err(IdError::BadPathChar { .. })
        ));
        assert!(matches!(
            WorkloadId::from_parts("Spiffe", &td("td"), "/a"),
            Err(IdError::BadScheme { .. })
        ));
    }

    // --- serde and text forms ---

    #[test]
    fn workload_id_serializes_as_its_uri_and_deserialization_validates() {
        let id = ok("spiffe://example.org/api");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/api\"");
        assert_eq!(serde_json::from_str::<WorkloadId>(&json).unwrap(), id);
        let bad = serde_json::from_str::<WorkloadId>("\"spiffe://example.org/api/\"");
        assert!(bad.unwrap_err().to_string().contains("trailing slash"));
    }

    #[test]
    fn trust_domain_serializes_as_its_name_and_deserialization_validates() {
        let t = td("example.org");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"example.org\"");
        assert_eq!(serde_json::from_str::<TrustDomain>(&json).unwrap(), t);
        assert!(serde_json::from_str::<TrustDomain>("\"Example.org\"").is_err());
        assert!(serde_json::from_str::<TrustDomain>("42").is_err());
    }

    #[test]
    fn workload_id_displays_and_debugs_as_its_uri() {
        let id = ok("wimse://example.org/a");
        assert_eq!(id.to_string(), "wimse://example.org/a");
        assert_eq!(format!("{id:?}"), "WorkloadId(\"wimse://example.org/a\")");
        assert_eq!("wimse://example.org/a".parse::<WorkloadId>(), Ok(id));
    }

    // --- error messages ---

    #[test]
    fn error_messages_quote_the_input_and_end_without_period() {
        let message = err("spiffe://td/a/").to_string();
        assert_eq!(message, "identifier `spiffe://td/a/` has a trailing slash");
        for input in ["", "s", "spiffe://td/a$", "spiffe://a:1", "wimse://1.2.3.4"] {
            let message = err(input).to_string();
            assert!(!message.ends_with('.'), "{message}");
            assert!(message.starts_with(char::is_lowercase), "{message}");
        }
    }

    #[test]
    fn error_messages_escape_control_characters() {
        let message = err("spiffe://td/a\nb\u{1b}[31m").to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.contains('\u{1b}'), "{message}");
        assert!(message.contains("\\n"), "{message}");
    }

    #[test]
    fn too_long_error_does_not_echo_the_input() {
        let huge = format!("spiffe://td/{}", "x".repeat(10_000));
        assert!(!err(&huge).to_string().contains("xxxx"));
        let huge_td = "y".repeat(10_000);
        let message = TrustDomain::new(&format!("{huge_td}@"))
            .unwrap_err()
            .to_string();
        assert!(!message.contains("yyyy"), "{message}");
    }

    // --- properties ---

    /// A trust domain that no scheme refuses: its last label ends in a letter that is neither a hex
    /// digit nor the `x` of a bare `0x` (which WHATWG reads as the number 0), so it never "ends in a
    /// number".
    fn any_name_trust_domain() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{0,30}[g-wyz]"
    }

    fn any_spiffe_id() -> impl Strategy<Value = String> {
        let segment = "[A-Za-z0-9._-]{1,12}".prop_filter("dot segment", |s| s != "." && s != "..");
        ("[a-z0-9._-]{1,30}", prop::collection::vec(segment, 0..6))
            .prop_map(|(td, segs)| format!("spiffe://{td}{}", join_segments(&segs)))
    }

    fn any_wimse_id() -> impl Strategy<Value = String> {
        let segment = "[A-Za-z0-9._~!$&'()*+,;=:@-]{1,12}"
            .prop_filter("dot segment", |s| s != "." && s != "..");
        (
            "[a-z][a-z0-9+.-]{0,8}",
            any_name_trust_domain(),
            prop::collection::vec(segment, 0..6),
        )
            .prop_map(|(scheme, td, segs)| format!("{scheme}://{td}{}", join_segments(&segs)))
    }

    fn join_segments(segments: &[String]) -> String {
        segments.iter().fold(String::new(), |mut path, segment| {
            path.push('/');
            path.push_str(segment);
            path
        })
    }

    proptest! {
        #[test]
        fn generated_valid_ids_round_trip_through_display(
            input in prop_oneof![any_spiffe_id(), any_wimse_id()]
        ) {
            let id = WorkloadId::parse(&input).unwrap();
            prop_assert_eq!(id.as_str(), input.as_str());
            let shown = id.to_string();
            prop_assert_eq!(&shown, &input);
            prop_assert_eq!(WorkloadId::parse(&shown).unwrap(), id.clone());
            let rebuilt = format!("{}://{}{}", id.scheme(), id.trust_domain(), id.path());
            prop_assert_eq!(rebuilt, input);
            prop_assert_eq!(TrustDomain::new(id.trust_domain().as_str()).unwrap(), id.trust_domain().clone());
        }

        #[test]
        fn arbitrary_strings_never_panic(input in any::<String>()) {
            let _ = WorkloadId::parse(&input);
            let _ = TrustDomain::new(&input);
        }

        #[test]
        fn uri_shaped_strings_never_panic_and_successes_round_trip(
            input in "[a-zA-Z]{0,7}(:|://)?[a-zA-Z0-9.:@%\\[\\]_-]{0,12}([/?#][a-zA-Z0-9./%?#:é-]{0,8}){0,4}"
        ) {
            if let Ok(id) = WorkloadId::parse(&input) {
                prop_assert_eq!(WorkloadId::parse(&id.to_string()), Ok(id));
            }
            if let Ok(t) = TrustDomain::new(&input) {
                prop_assert_eq!(TrustDomain::new(&t.to_string()), Ok(t));
            }
        }

        #[test]
        fn from_parts_agrees_with_parse(
            scheme in prop_oneof![Just("spiffe".to_owned()), Just("wimse".to_owned()), "[a-zA-Z][a-zA-Z0-9+.-]{0,5}"],
            td in prop_oneof![any_name_trust_domain(), "[0-9]{1,3}(\\.[0-9]{1,3}){3}"],
            path in "(/[a-zA-Z0-9.%:@~_-]{0,4}){0,4}",
        ) {
            let td = TrustDomain::new(&td).unwrap();
            let joined = format!("{scheme}://{td}{path}");
            prop_assert_eq!(WorkloadId::from_parts(&scheme, &td, &path), WorkloadId::parse(&joined));
        }
    }
}
