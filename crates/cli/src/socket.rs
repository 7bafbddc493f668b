//! Where agent commands find the agent's Workload API socket.
//!
//! Order of precedence: `--socket PATH`, then the `SPIFFE_ENDPOINT_SOCKET` environment variable
//! that SPIFFE clients honour, then `<data-dir>/agent.sock`. The environment variable holds a URI
//! (SPIFFE Workload Endpoint, section 4); this build serves the Workload API on a unix socket only,
//! so it accepts `unix:///absolute/path` (or the equivalent `unix:/absolute/path`) and nothing else.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::defaults;

/// Name of the environment variable SPIFFE clients read the Workload API address from.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Why `SPIFFE_ENDPOINT_SOCKET` does not name a usable unix socket.
///
/// Every message names the variable and quotes its value: the address of a socket is not a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointSocketError {
    /// The variable is set but holds bytes that are not UTF-8, so it cannot be a URI.
    #[error("`{SPIFFE_ENDPOINT_SOCKET}` is not valid UTF-8")]
    NotUnicode,
    /// The variable is set but empty.
    #[error("`{SPIFFE_ENDPOINT_SOCKET}` is set but empty; expected `unix:///absolute/path`")]
    Empty,
    /// The value has no URI scheme, for example a bare path.
    #[error(
        "`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` is not a URI; expected `unix:///absolute/path`"
    )]
    NotAUri {
        /// The value as found.
        value: String,
    },
    /// A `tcp://` address: valid for SPIFFE, but this build serves the Workload API on unix sockets only.
    #[error(
        "`{SPIFFE_ENDPOINT_SOCKET}` value `{value}`: tcp endpoints are not supported, \
         the agent listens on a unix socket only; use `unix:///absolute/path`"
    )]
    TcpUnsupported {
        /// The value as found.
        value: String,
    },
    /// A URI whose scheme is neither `unix` nor `tcp`.
    #[error(
        "`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` has unsupported scheme `{scheme}`; \
         use `unix:///absolute/path`"
    )]
    UnsupportedScheme {
        /// The value as found.
        value: String,
        /// The scheme it names.
        scheme: String,
    },
    /// `unix://host/...`: a unix socket lives on this host, so the authority must be empty.
    #[error(
        "`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` names a host (`{authority}`); \
         a unix socket URI must have an empty authority, as in `unix:///absolute/path`"
    )]
    Authority {
        /// The value as found.
        value: String,
        /// The authority it names.
        authority: String,
    },
    /// The URI has a query (`?...`), which a socket path cannot carry.
    #[error("`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` must not have a query (`?...`)")]
    Query {
        /// The value as found.
        value: String,
    },
    /// The URI has a fragment (`#...`), which a socket path cannot carry.
    #[error("`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` must not have a fragment (`#...`)")]
    Fragment {
        /// The value as found.
        value: String,
    },
    /// The URI has no path, as in `unix://` or `unix:`.
    #[error("`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` has no socket path")]
    MissingPath {
        /// The value as found.
        value: String,
    },
    /// The path is relative, as in `unix:agent.sock`.
    #[error(
        "`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` has a relative path; \
         the socket path must be absolute, as in `unix:///absolute/path`"
    )]
    RelativePath {
        /// The value as found.
        value: String,
    },
    /// The path holds a character a URI must percent-encode (a space, a non-ASCII character, ...).
    #[error(
        "`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` contains {character:?}, \
         which must be percent-encoded in a URI"
    )]
    UnencodedCharacter {
        /// The value as found.
        value: String,
        /// The first offending character.
        character: char,
    },
    /// A `%` not followed by two hexadecimal digits.
    #[error("`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` has a malformed percent-encoding")]
    BadPercentEncoding {
        /// The value as found.
        value: String,
    },
    /// The decoded path is not UTF-8 or holds a NUL byte, so it cannot name a file.
    #[error("`{SPIFFE_ENDPOINT_SOCKET}` value `{value}` does not decode to a usable file path")]
    UnusablePath {
        /// The value as found.
        value: String,
    },
}

/// The socket an agent command talks to (or, for `wimse agent run`, listens on).
///
/// `flag` is `--socket`, `env` the value of [`SPIFFE_ENDPOINT_SOCKET`] if set, `data_dir` the agent's
/// data directory. The environment is consulted only when the flag is absent, so a broken variable
/// never stands in the way of an explicit `--socket`.
pub fn resolve_agent_socket(
    flag: Option<&Path>,
    env: Option<&OsString>,
    data_dir: &Path,
) -> Result<PathBuf, EndpointSocketError> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    match env {
        Some(value) => {
            let value = value.to_str().ok_or(EndpointSocketError::NotUnicode)?;
            parse_endpoint_socket(value)
        }
        None => Ok(defaults::agent_socket(data_dir)),
    }
}

/// The socket path in a `SPIFFE_ENDPOINT_SOCKET` value, which must be a `unix` URI with an empty
/// (or absent) authority, an absolute path, and no query or fragment (RFC 3986 syntax).
pub fn parse_endpoint_socket(value: &str) -> Result<PathBuf, EndpointSocketError> {
    let owned = || value.to_owned();
    if value.is_empty() {
        return Err(EndpointSocketError::Empty);
    }
    let Some((scheme, rest)) = value.split_once(':').filter(|(s, _)| is_uri_scheme(s)) else {
        return Err(EndpointSocketError::NotAUri { value: owned() });
    };
    // RFC 3986, section 3.1: schemes are case-insensitive.
    if scheme.eq_ignore_ascii_case("tcp") {
        return Err(EndpointSocketError::TcpUnsupported { value: owned() });
    }
    if !scheme.eq_ignore_ascii_case("unix") {
        return Err(EndpointSocketError::UnsupportedScheme {
            value: owned(),
            scheme: scheme.to_owned(),
        });
    }

    // Query and fragment end the path wherever they start, authority included.
    match rest.chars().find(|&c| matches!(c, '?' | '#')) {
        Some('?') => return Err(EndpointSocketError::Query { value: owned() }),
        Some(_) => return Err(EndpointSocketError::Fragment { value: owned() }),
        None => {}
    }
    let path = match rest.strip_prefix("//") {
        Some(after_slashes) => {
            let (authority, path) = after_slashes
                .find('/')
                .map_or((after_slashes, ""), |slash| after_slashes.split_at(slash));
            if !authority.is_empty() {
                return Err(EndpointSocketError::Authority {
                    value: owned(),
                    authority: authority.to_owned(),
                });
            }
            path
        }
        None => rest,
    };
    if path.is_empty() {
        return Err(EndpointSocketError::MissingPath { value: owned() });
    }
    if !path.starts_with('/') {
        return Err(EndpointSocketError::RelativePath { value: owned() });
    }
    if let Some(character) = path.chars().find(|&c| !is_path_char(c)) {
        return Err(EndpointSocketError::UnencodedCharacter {
            value: owned(),
            character,
        });
    }
    let decoded = percent_decode(path)
        .ok_or_else(|| EndpointSocketError::BadPercentEncoding { value: owned() })?;
    match String::from_utf8(decoded) {
        Ok(path) if !path.contains('\0') => Ok(PathBuf::from(path)),
        _ => Err(EndpointSocketError::UnusablePath { value: owned() }),
    }
}

/// RFC 3986, section 3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_uri_scheme(candidate: &str) -> bool {
    let mut chars = candidate.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// RFC 3986, section 3.3: a `pchar` (with `%` for percent-encodings), or the `/` between segments.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.' | '_' | '~' // unreserved
                | '!' | '$' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | ';' | '=' // sub-delims
                | ':' | '@' | '%' | '/'
        )
}

/// The bytes `path` percent-encodes, or `None` if a `%` is not followed by two hex digits.
fn percent_decode(path: &str) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let high = hex_value(bytes.next()?)?;
            let low = hex_value(bytes.next()?)?;
            decoded.push((high << 4) | low);
        } else {
            decoded.push(byte);
        }
    }
    Some(decoded)
}

/// The value of one hexadecimal digit.
fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<PathBuf, EndpointSocketError> {
        parse_endpoint_socket(value)
    }

    #[test]
    fn unix_uri_with_empty_authority_names_its_absolute_path() {
        assert_eq!(
            parse("unix:///tmp/a.sock"),
            Ok(PathBuf::from("/tmp/a.sock"))
        );
    }

    #[test]
    fn unix_uri_without_authority_is_the_same_socket() {
        assert_eq!(parse("unix:/tmp/a.sock"), Ok(PathBuf::from("/tmp/a.sock")));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(
            parse("UNIX:///tmp/a.sock"),
            Ok(PathBuf::from("/tmp/a.sock"))
        );
    }

    #[test]
    fn percent_encoded_path_is_decoded() {
        assert_eq!(
            parse("unix:///tmp/my%20dir/a%3fb.sock"),
            Ok(PathBuf::from("/tmp/my dir/a?b.sock"))
        );
    }

    #[test]
    fn host_in_authority_is_refused() {
        assert!(matches!(
            parse("unix://host/a"),
            Err(EndpointSocketError::Authority { authority, .. }) if authority == "host"
        ));
    }

    #[test]
    fn authority_without_path_is_refused_for_its_host() {
        assert!(matches!(
            parse("unix://tmp"),
            Err(EndpointSocketError::Authority { .. })
        ));
    }

    #[test]
    fn relative_path_is_refused() {
        assert!(matches!(
            parse("unix:relative"),
            Err(EndpointSocketError::RelativePath { .. })
        ));
    }

    #[test]
    fn tcp_endpoint_is_refused_as_unsupported() {
        let err = parse("tcp://127.0.0.1:8081");
        assert!(matches!(
            err,
            Err(EndpointSocketError::TcpUnsupported { .. })
        ));
        let message = err.map_err(|e| e.to_string()).unwrap_err();
        assert!(message.contains("not supported"), "{message}");
    }

    #[test]
    fn other_scheme_is_refused_by_name() {
        assert!(matches!(
            parse("http://localhost/a"),
            Err(EndpointSocketError::UnsupportedScheme { scheme, .. }) if scheme == "http"
        ));
    }

    #[test]
    fn query_is_refused() {
        assert!(matches!(
            parse("unix:///a?x"),
            Err(EndpointSocketError::Query { .. })
        ));
    }

    #[test]
    fn fragment_is_refused() {
        assert!(matches!(
            parse("unix:///a#x"),
            Err(EndpointSocketError::Fragment { .. })
        ));
    }

    #[test]
    fn bare_path_is_not_a_uri() {
        assert!(matches!(
            parse("/tmp/a.sock"),
            Err(EndpointSocketError::NotAUri { .. })
        ));
    }

    #[test]
    fn empty_value_is_refused() {
        assert_eq!(parse(""), Err(EndpointSocketError::Empty));
    }

    #[test]
    fn missing_path_is_refused() {
        for value in ["unix://", "unix:"] {
            assert!(
                matches!(parse(value), Err(EndpointSocketError::MissingPath { .. })),
                "{value}"
            );
        }
    }

    #[test]
    fn unencoded_space_is_refused() {
        assert!(matches!(
            parse("unix:///tmp/a b"),
            Err(EndpointSocketError::UnencodedCharacter { character: ' ', .. })
        ));
    }

    #[test]
    fn malformed_percent_encoding_is_refused() {
        for value in ["unix:///a%2", "unix:///a%zz", "unix:///a%"] {
            assert!(
                matches!(
                    parse(value),
                    Err(EndpointSocketError::BadPercentEncoding { .. })
                ),
                "{value}"
            );
        }
    }

    #[test]
    fn encoded_nul_is_refused() {
        assert!(matches!(
            parse("unix:///a%00b"),
            Err(EndpointSocketError::UnusablePath { .. })
        ));
    }

    #[test]
    fn every_error_message_is_one_line() {
        for value in [
            "",
            "x",
            "tcp://h:1",
            "unix://h/a",
            "unix:a",
            "unix:///a?x",
            "unix:///a b",
        ] {
            if let Err(err) = parse(value) {
                assert!(!err.to_string().contains('\n'), "{err}");
            }
        }
    }

    #[test]
    fn socket_flag_wins_over_environment_and_data_dir() {
        let broken = OsString::from("tcp://h:1");
        let resolved = resolve_agent_socket(
            Some(Path::new("/run/flag.sock")),
            Some(&broken),
            Path::new("/data"),
        );
        assert_eq!(resolved, Ok(PathBuf::from("/run/flag.sock")));
    }

    #[test]
    fn environment_wins_over_data_dir() {
        let env = OsString::from("unix:///run/env.sock");
        let resolved = resolve_agent_socket(None, Some(&env), Path::new("/data"));
        assert_eq!(resolved, Ok(PathBuf::from("/run/env.sock")));
    }

    #[test]
    fn data_dir_socket_is_the_fallback() {
        let resolved = resolve_agent_socket(None, None, Path::new("/data"));
        assert_eq!(resolved, Ok(PathBuf::from("/data/agent.sock")));
    }

    #[test]
    fn invalid_environment_is_an_error_not_a_fallback() {
        let env = OsString::from("unix://host/a");
        let resolved = resolve_agent_socket(None, Some(&env), Path::new("/data"));
        assert!(matches!(
            resolved,
            Err(EndpointSocketError::Authority { .. })
        ));
    }
}
