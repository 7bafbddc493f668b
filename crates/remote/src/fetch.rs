//! One `GET` of a JSON document over HTTPS, as trust material is fetched: the URL must be
//! plain `https` (a host, no userinfo, no fragment), the answer must be 200 within a
//! deadline and no larger than a limit, and redirects are not followed (the configured URL
//! is the only one trusted). The server is checked by whichever TLS client configuration
//! the caller passes: [`web_client_config`] for the Web PKI, or a SPIFFE verifier.
//!
//! Written over hyper's connection API rather than a full HTTP client crate, which would
//! bring a second TLS stack and redirect and proxy handling that must all be turned off.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// Why a document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one this module fetches from.
    #[error("`{url}` {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The roots file for the server's certificate is unusable.
    #[error("the roots file `{path}`: {message}")]
    Roots {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The server could not be reached, or the TLS handshake failed.
    #[error("cannot reach `{url}`: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The fetch took longer than its deadline.
    #[error("`{url}` did not answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The server answered with a status other than 200.
    #[error("`{url}` answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The answer broke off or was larger than the limit.
    #[error("`{url}`: {message}")]
    Body {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// A fetched document.
#[derive(Debug)]
pub struct Fetched {
    /// The body of the 200 answer.
    pub body: Bytes,
    /// How long the server says it may be kept (`Cache-Control: max-age`), in seconds;
    /// `Some(0)` when it says not to keep it (`no-cache`, `no-store`).
    pub max_age: Option<u64>,
}

/// Parses a URL to fetch trust material from: `https`, a host, no userinfo, no fragment.
pub fn https_uri(url: &str) -> Result<Uri, FetchError> {
    let invalid = |why| FetchError::Url {
        url: url.to_owned(),
        why,
    };
    if url.contains('#') {
        return Err(invalid("has a fragment"));
    }
    let uri: Uri = url.parse().map_err(|_| invalid("is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(invalid("is not an `https` URL"));
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(invalid("has userinfo"));
    }
    if authority.host().is_empty() {
        return Err(invalid("has no host"));
    }
    Ok(uri)
}

/// A TLS client configuration (TLS 1.2 and 1.3, HTTP/1.1, no client certificate) that
/// checks servers by the Web PKI rules against the PEM certificates in `roots`, or against
/// Mozilla's roots (`webpki-roots`) when no file is named.
pub fn web_client_config(roots: Option<&Path>) -> Result<rustls::ClientConfig, FetchError> {
    let store = match roots {
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => {
            let invalid = |message: String| FetchError::Roots {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
            let mut store = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&text) {
                let cert = cert.map_err(|e| invalid(e.to_string()))?;
                store.add(cert).map_err(|e| invalid(e.to_string()))?;
            }
            if store.is_empty() {
                return Err(invalid("holds no certificate".into()));
            }
            store
        }
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| FetchError::Roots {
        path: roots.map_or_else(String::new, |p| p.display().to_string()),
        message: e.to_string(),
    })?
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `GET url` over TLS with `tls`, within `timeout` (connection and handshake included):
/// the body of a 200 answer of at most `limit` bytes, and how long it may be kept.
pub async fn get(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    limit: usize,
    timeout: Duration,
) -> Result<Fetched, FetchError> {
    tokio::time::timeout(timeout, get_now(url, tls, limit))
        .await
        .map_err(|_| FetchError::Timeout {
            url: url.to_owned(),
            timeout,
        })?
}

async fn get_now(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    limit: usize,
) -> Result<Fetched, FetchError> {
    let uri = https_uri(url)?;
    let connect = |message: String| FetchError::Connect {
        url: url.to_owned(),
        message,
    };
    let authority = uri
        .authority()
        .ok_or_else(|| connect("no host".into()))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|e| connect(format!("host: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| connect(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| connect(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| connect(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| connect(e.to_string()))?;
    if response.status() != StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let max_age = response
        .headers()
        .get_all(hyper::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(max_age);
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| FetchError::Body {
            url: url.to_owned(),
            message: format!("reading the answer failed or it exceeds {limit} bytes: {e}"),
        })?;
    Ok(Fetched {
        body: body.to_bytes(),
        max_age,
    })
}

/// What a `Cache-Control` value says about how long the answer may be kept (RFC 9111
/// §5.2.2): `max-age` in seconds, or 0 for `no-cache` / `no-store`; `None` when it says
/// neither, or says it in a way that does not parse.
pub fn max_age(cache_control: &str) -> Option<u64> {
    let mut found = None;
    for directive in cache_control.split(',') {
        let directive = directive.trim();
        let (name, value) = directive
            .split_once('=')
            .map_or((directive, None), |(n, v)| (n.trim(), Some(v.trim())));
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(0);
        }
        if name.eq_ignore_ascii_case("max-age") {
            found = value
                .map(|v| v.trim_matches('"'))
                .and_then(|v| v.parse::<u64>().ok());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn urls_must_be_plain_https() {
        for url in [
            "http://login.example/jwks",
            "https://user@login.example/jwks",
            "https://login.example/jwks#x",
            "/jwks",
            "not a url",
        ] {
            assert!(
                matches!(https_uri(url), Err(FetchError::Url { .. })),
                "{url}"
            );
        }
        assert!(https_uri("https://127.0.0.1:8443/.well-known/jwks.json").is_ok());
    }

    #[test]
    fn cache_control_gives_max_age_or_zero_for_no_cache() {
        assert_eq!(max_age("public, max-age=600"), Some(600));
        assert_eq!(max_age("Max-Age = \"30\""), Some(30));
        assert_eq!(max_age("max-age=60, no-store"), Some(0));
        assert_eq!(max_age("no-cache"), Some(0));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=-1"), None);
        assert_eq!(max_age("max-age="), None);
        assert_eq!(max_age(""), None);
    }

    #[test]
    fn a_roots_file_must_hold_certificates() {
        let missing = web_client_config(Some(Path::new("/nonexistent/roots.pem")));
        assert!(matches!(missing, Err(FetchError::Roots { .. })));
        assert!(web_client_config(None).is_ok());
    }

    proptest! {
        #[test]
        fn any_cache_control_value_is_read_without_panicking(value in ".{0,80}") {
            let _ = max_age(&value);
        }

        #[test]
        fn max_age_is_found_among_other_directives(
            before in "[a-z-]{1,10}", seconds in 0u64..1_000_000, after in "[a-z-]{1,10}",
        ) {
            prop_assume!(!["no-cache", "no-store", "max-age"].contains(&before.as_str()));
            prop_assume!(!["no-cache", "no-store", "max-age"].contains(&after.as_str()));
            let value = format!("{before}, max-age={seconds} ,{after}");
            prop_assert_eq!(max_age(&value), Some(seconds));
        }
    }
}
