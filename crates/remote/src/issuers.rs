//! The signing keys of the outside authorization servers whose access tokens are accepted
//! (the gateway's `[[issuers]]`, the token service's `[[token_service.issuers]]`).
//!
//! An issuer's keys come from a `jwks_file`, read once at start, or from a `jwks_uri`,
//! which login servers (Okta, Entra ID, Keycloak, ...) rotate: a new key is published
//! before tokens are signed with it, an old one removed after its tokens expire. With
//! `oidc_discovery`, the `jwks_uri` is the one the issuer's OpenID Provider metadata
//! (`<issuer>/.well-known/openid-configuration`, OpenID Connect Discovery 1.0 §4) names,
//! read again at every fetch, and only if the metadata's `issuer` is exactly the configured
//! one (§4.3: it must be, or the metadata is someone else's). For remote sets:
//!
//! - the JWK Set is fetched at start ([`IssuerKeys::watch`]) and again when it is due: after
//!   the answer's `Cache-Control: max-age`, or [`RefreshPolicy::default_interval`] when it
//!   gives none, clamped to [`RefreshPolicy::min_interval`]..[`RefreshPolicy::max_interval`];
//!   after a failure, [`RefreshPolicy::retry`] later;
//! - a token naming a key that is not held makes [`IssuerKeys::prepare`] fetch the set
//!   again before the token is refused, so the first tokens signed with a new key are
//!   admitted (the gateway and the token service call it only after verification failed
//!   for want of the key, so a token of a held key is read once). The `kid` is read from
//!   the unverified token, so anyone can ask for this:
//!   fetches caused this way are at most one per [`RefreshPolicy::refetch_cooldown`] per
//!   issuer, and concurrent callers wait for the same fetch;
//! - a failed fetch, or a set with no usable key, keeps the keys held (the issuer's tokens
//!   keep verifying while its endpoint is down); an issuer whose set was never fetched
//!   has no keys, and every token of it is refused (fail closed).
//!
//! Keys are only ever taken from the configured URL, never from a token (`jku`, `x5u`).
//! Verification itself stays one synchronous function
//! (`wimse_core::token::access::verify_access_token`) over [`IssuerKeys::current`].

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;
use tokio::time::Instant;
use wimse_core::token::access::{TrustedIssuer, named_issuer_and_key};

use crate::fetch::{self, FetchError};

/// The largest JWK Set (or OpenID Provider metadata) accepted from an issuer.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where OpenID Provider metadata is, under the issuer (OpenID Connect Discovery 1.0 §4).
pub const OIDC_DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Why an issuer's keys could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IssuerKeysError {
    /// The `jwks_file` could not be read or holds no usable key.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The `jwks_uri` or its roots file is unusable.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The settings name no key source, or more than one.
    #[error("{0}")]
    Settings(&'static str),
    /// Two entries name the same issuer: only the first would ever be used.
    #[error("issuer `{0}` is named twice: give each issuer one entry")]
    Duplicate(String),
}

/// When remote JWK Sets are fetched.
#[derive(Clone, Copy, Debug)]
pub struct RefreshPolicy {
    /// The interval when the answer says nothing of how long it may be kept.
    pub default_interval: Duration,
    /// The shortest interval, whatever the answer says.
    pub min_interval: Duration,
    /// The longest interval, whatever the answer says.
    pub max_interval: Duration,
    /// The wait after a failed fetch.
    pub retry: Duration,
    /// The least time between fetches caused by tokens naming unknown keys.
    pub refetch_cooldown: Duration,
    /// The longest a fetch may take.
    pub timeout: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            default_interval: Duration::from_secs(300),
            min_interval: Duration::from_secs(60),
            max_interval: Duration::from_secs(24 * 3600),
            retry: Duration::from_secs(30),
            refetch_cooldown: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Where one issuer's keys come from.
#[derive(Debug)]
pub struct IssuerSource {
    issuer: TrustedIssuer,
    remote: Option<Endpoint>,
}

#[derive(Clone)]
struct Endpoint {
    /// The JWK Set's URL, or with `discovery` the OpenID Provider metadata's.
    url: String,
    discovery: bool,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("discovery", &self.discovery)
            .finish_non_exhaustive()
    }
}

impl IssuerSource {
    /// Refuses `sources` where two name the same issuer: a token is checked against the
    /// first entry of its `iss` only, so a second one (another audience, say) would be
    /// silently dead.
    pub fn distinct(sources: &[IssuerSource]) -> Result<(), IssuerKeysError> {
        let mut seen = std::collections::BTreeSet::new();
        for source in sources {
            if !seen.insert(source.issuer.issuer.as_str()) {
                return Err(IssuerKeysError::Duplicate(source.issuer.issuer.clone()));
            }
        }
        Ok(())
    }

    /// An issuer whose keys are given and never change.
    pub fn fixed(issuer: TrustedIssuer) -> Self {
        IssuerSource {
            issuer,
            remote: None,
        }
    }

    /// `issuer` (its keys ignored) with the JWK Set in the file at `path`, read now.
    pub fn file(issuer: &TrustedIssuer, path: &Path) -> Result<Self, IssuerKeysError> {
        let invalid = |message: String| IssuerKeysError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
        let issuer = issuer
            .with_jwks_json(&text)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self::fixed(issuer))
    }

    /// `issuer`, whose JWK Set is fetched from `url` (checked against the PEM roots in
    /// `roots`, or Mozilla's when `None`). Until the first fetch it has no keys.
    pub fn url(
        issuer: TrustedIssuer,
        url: &str,
        roots: Option<&Path>,
    ) -> Result<Self, IssuerKeysError> {
        Self::remote(issuer, url, false, roots)
    }

    /// `issuer`, whose JWK Set is fetched from the `jwks_uri` its OpenID Provider metadata
    /// names (see the module doc); the issuer identifier must be an `https` URL.
    pub fn discovered(
        issuer: TrustedIssuer,
        roots: Option<&Path>,
    ) -> Result<Self, IssuerKeysError> {
        let url = format!(
            "{}{OIDC_DISCOVERY_PATH}",
            issuer.issuer.trim_end_matches('/')
        );
        Self::remote(issuer, &url, true, roots)
    }

    fn remote(
        issuer: TrustedIssuer,
        url: &str,
        discovery: bool,
        roots: Option<&Path>,
    ) -> Result<Self, IssuerKeysError> {
        fetch::https_uri(url)?;
        let tls = Arc::new(fetch::web_client_config(roots)?);
        Ok(IssuerSource {
            issuer,
            remote: Some(Endpoint {
                url: url.to_owned(),
                discovery,
                tls,
            }),
        })
    }

    /// The source a configuration file names (see [`KeySettings`]).
    pub fn configured(
        issuer: TrustedIssuer,
        settings: &KeySettings<'_>,
    ) -> Result<Self, IssuerKeysError> {
        let roots = settings.jwks_ca_file;
        match (
            settings.jwks_file,
            settings.jwks_uri,
            settings.oidc_discovery,
        ) {
            (Some(path), None, false) if roots.is_none() => Self::file(&issuer, path),
            (Some(_), None, false) => Err(IssuerKeysError::Settings(
                "`jwks_ca_file` checks the server of a `jwks_uri`; a `jwks_file` needs none",
            )),
            (None, Some(url), false) => Self::url(issuer, url, roots),
            (None, None, true) => Self::discovered(issuer, roots),
            (None, None, false) => Err(IssuerKeysError::Settings(
                "name the issuer's keys: `jwks_file`, `jwks_uri` or `oidc_discovery = true`",
            )),
            _ => Err(IssuerKeysError::Settings(
                "name the issuer's keys one way only: `jwks_file`, `jwks_uri` or `oidc_discovery`",
            )),
        }
    }
}

/// How a configuration file names an issuer's keys: exactly one of `jwks_file`,
/// `jwks_uri` and `oidc_discovery`; `jwks_ca_file` (the PEM roots the server is checked
/// against, default Mozilla's) only with the last two.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeySettings<'a> {
    /// A JWK Set file read at start.
    pub jwks_file: Option<&'a Path>,
    /// A JWK Set URL kept fresh.
    pub jwks_uri: Option<&'a str>,
    /// The roots for the server of `jwks_uri` or of the discovery.
    pub jwks_ca_file: Option<&'a Path>,
    /// Whether the JWK Set URL is found by OpenID Connect Discovery from the issuer.
    pub oidc_discovery: bool,
}

/// The issuers whose access tokens are accepted, with their current keys (by default
/// none).
#[derive(Debug, Default)]
pub struct IssuerKeys {
    held: RwLock<Arc<Vec<TrustedIssuer>>>,
    remote: Vec<Remote>,
    policy: RefreshPolicy,
    /// Fetches of remote sets, by issuer and outcome.
    fetches: Family<FetchLabels, Counter>,
    /// Keys held now, by remote issuer (0: none fetched yet).
    keys: Family<IssuerLabel, Gauge>,
}

/// The labels of one fetch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    issuer: String,
    /// `ok` or `error`.
    outcome: &'static str,
}

/// The label of an issuer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabel {
    issuer: String,
}

#[derive(Debug)]
struct Remote {
    /// Its place in `held`.
    index: usize,
    /// Its `iss`.
    issuer: String,
    endpoint: Endpoint,
    /// Held across a fetch, so that concurrent callers wait for one fetch.
    schedule: Mutex<Schedule>,
}

#[derive(Debug, Default)]
struct Schedule {
    /// The last fetch a token naming an unknown key caused.
    last_demand: Option<Instant>,
    /// `None`: at once.
    due: Option<Instant>,
}

impl IssuerKeys {
    /// The issuers of `sources`, in order; remote ones have no keys until fetched.
    pub fn new(sources: Vec<IssuerSource>) -> Self {
        let mut held = Vec::with_capacity(sources.len());
        let mut remote = Vec::new();
        for (index, source) in sources.into_iter().enumerate() {
            if let Some(endpoint) = source.remote {
                remote.push(Remote {
                    index,
                    issuer: source.issuer.issuer.clone(),
                    endpoint,
                    schedule: Mutex::new(Schedule::default()),
                });
            }
            held.push(source.issuer);
        }
        let keys = Family::<IssuerLabel, Gauge>::default();
        for r in &remote {
            keys.get_or_create(&IssuerLabel {
                issuer: r.issuer.clone(),
            })
            .set(0);
        }
        IssuerKeys {
            held: RwLock::new(Arc::new(held)),
            remote,
            policy: RefreshPolicy::default(),
            fetches: Family::default(),
            keys,
        }
    }

    /// Adds this set's metrics to `registry`: `issuer_key_fetches_total{issuer,outcome}`
    /// and `issuer_keys{issuer}`, the keys held now of each issuer named by URL (0 while
    /// none were ever fetched: every token of it is refused).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "issuer_key_fetches",
            "Fetches of outside issuers' JWK Sets, by issuer and outcome",
            self.fetches.clone(),
        );
        registry.register(
            "issuer_keys",
            "Signing keys held of each outside issuer whose JWK Set is fetched",
            self.keys.clone(),
        );
    }

    /// Issuers whose keys are given and never change.
    pub fn fixed(issuers: Vec<TrustedIssuer>) -> Self {
        Self::new(issuers.into_iter().map(IssuerSource::fixed).collect())
    }

    /// Fetches on `policy` instead of [`RefreshPolicy::default`].
    #[must_use]
    pub fn with_policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The issuers with the keys held now, to verify a token with.
    pub fn current(&self) -> Arc<Vec<TrustedIssuer>> {
        Arc::clone(&self.held.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// When `token` names a remote issuer and a key of it that is not held, fetches that
    /// issuer's JWK Set again, unless such a fetch started less than
    /// [`RefreshPolicy::refetch_cooldown`] ago (see the module doc). Returns whether the
    /// key is held now, so that verifying (again) may succeed. Never fails: the
    /// verification decides.
    pub async fn prepare(&self, token: &str) -> bool {
        if self.remote.is_empty() {
            return false;
        }
        let Ok((issuer, kid)) = named_issuer_and_key(token) else {
            return false;
        };
        let Some(remote) = self.remote.iter().find(|r| r.issuer == issuer) else {
            return false;
        };
        let held = |this: &Self| {
            this.current()
                .get(remote.index)
                .is_some_and(|i| i.holds_key(kid.as_deref()))
        };
        if held(self) {
            return true;
        }
        let mut schedule = remote.schedule.lock().await;
        // Another caller may have fetched it while this one waited.
        if held(self) {
            return true;
        }
        if schedule
            .last_demand
            .is_some_and(|t| t.elapsed() < self.policy.refetch_cooldown)
        {
            return false;
        }
        tracing::info!(
            issuer,
            kid,
            "a token names a key not held: fetching the issuer's keys"
        );
        schedule.last_demand = Some(Instant::now());
        self.fetch(remote, &mut schedule).await;
        held(self)
    }

    /// Fetches every remote JWK Set that is due, concurrently.
    pub async fn refresh_due(self: &Arc<Self>) {
        let mut fetches = tokio::task::JoinSet::new();
        for position in 0..self.remote.len() {
            let this = Arc::clone(self);
            fetches.spawn(async move {
                let Some(remote) = this.remote.get(position) else {
                    return;
                };
                let mut schedule = remote.schedule.lock().await;
                if schedule.due.is_none_or(|due| due <= Instant::now()) {
                    this.fetch(remote, &mut schedule).await;
                }
            });
        }
        while fetches.join_next().await.is_some() {}
    }

    /// Keeps the remote JWK Sets fresh in the background, fetching each at once and then
    /// when due, until the last handle to `self` is dropped.
    pub fn watch(self: &Arc<Self>) {
        if self.remote.is_empty() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                this.refresh_due().await;
                // Every fetch sets its set's next due time, so this is always ahead.
                let next = this.next_due().await;
                drop(this);
                tokio::time::sleep_until(next).await;
            }
        });
    }

    /// The earliest time a remote set is due (never fetched: now).
    async fn next_due(&self) -> Instant {
        let mut next = Instant::now() + self.policy.max_interval;
        for remote in &self.remote {
            let due = remote
                .schedule
                .lock()
                .await
                .due
                .unwrap_or_else(Instant::now);
            next = next.min(due);
        }
        next
    }

    /// One fetch of `remote`'s JWK Set; on success its keys replace the held ones.
    async fn fetch(&self, remote: &Remote, schedule: &mut Schedule) {
        let started = Instant::now();
        let url = &remote.endpoint.url;
        let fetched = match self.jwks_uri(remote).await {
            Ok(jwks_uri) => fetch::get(
                &jwks_uri,
                Arc::clone(&remote.endpoint.tls),
                MAX_JWKS_BYTES,
                self.policy.timeout,
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let outcome = fetched.and_then(|fetched| {
            let current = self.current();
            let template = current
                .get(remote.index)
                .ok_or_else(|| "the issuer is gone".to_owned())?;
            let issuer = template
                .with_jwks_json(&fetched.body)
                .map_err(|e| e.to_string())?;
            Ok((issuer, fetched.max_age))
        });
        match outcome {
            Ok((issuer, max_age)) => {
                let keys = issuer.key_count();
                self.count(remote, "ok", Some(keys));
                self.replace(remote.index, issuer);
                let interval = max_age
                    .map_or(self.policy.default_interval, Duration::from_secs)
                    .clamp(self.policy.min_interval, self.policy.max_interval);
                schedule.due = Some(started + interval);
                tracing::debug!(issuer = remote.issuer, url, keys, next_in = ?interval,
                    "issuer keys fetched");
            }
            Err(error) => {
                self.count(remote, "error", None);
                schedule.due = Some(started + self.policy.retry);
                tracing::warn!(
                    issuer = remote.issuer,
                    url,
                    error,
                    "fetching the issuer's keys failed; keeping the keys held"
                );
            }
        }
    }

    /// Where `remote`'s JWK Set is: its URL, or the one its OpenID Provider metadata names.
    async fn jwks_uri(&self, remote: &Remote) -> Result<String, String> {
        let endpoint = &remote.endpoint;
        if !endpoint.discovery {
            return Ok(endpoint.url.clone());
        }
        let fetched = fetch::get(
            &endpoint.url,
            Arc::clone(&endpoint.tls),
            MAX_JWKS_BYTES,
            self.policy.timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        let metadata: ProviderMetadata = wimse_core::json::object_from_slice(&fetched.body)
            .map_err(|e| format!("the OpenID Provider metadata is not valid: {e}"))?;
        // Discovery §4.3: the metadata is the issuer's own only if it names that issuer.
        if metadata.issuer != remote.issuer {
            return Err(format!(
                "the OpenID Provider metadata names issuer `{}`, not `{}`",
                metadata.issuer, remote.issuer
            ));
        }
        fetch::https_uri(&metadata.jwks_uri).map_err(|e| format!("its `jwks_uri` {e}"))?;
        Ok(metadata.jwks_uri)
    }

    fn count(&self, remote: &Remote, outcome: &'static str, keys: Option<usize>) {
        let issuer = remote.issuer.clone();
        if let Some(keys) = keys {
            self.keys
                .get_or_create(&IssuerLabel {
                    issuer: issuer.clone(),
                })
                .set(i64::try_from(keys).unwrap_or(i64::MAX));
        }
        self.fetches
            .get_or_create(&FetchLabels { issuer, outcome })
            .inc();
    }

    fn replace(&self, index: usize, issuer: TrustedIssuer) {
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::clone(&held);
        if let Some(slot) = next.get_mut(index) {
            *slot = issuer;
        }
        *held = Arc::new(next);
    }
}

/// The members of OpenID Provider metadata read here (others are ignored).
#[derive(serde::Deserialize)]
struct ProviderMetadata {
    issuer: String,
    jwks_uri: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wimse_core::jose::{Algorithm, SigningKey, jws};
    use wimse_core::token::Validation;
    use wimse_core::token::access::verify_access_token;

    const ISSUER: &str = "https://login.example.com";

    /// What the JWKS endpoint answers: status, body, `Cache-Control`.
    type Answer = (u16, String, Option<String>);

    /// An HTTPS login server on 127.0.0.1 with a certificate of its own: its JWK Set at
    /// `url`, and at the discovery path what `metadata` holds (404 when nothing); counts
    /// the requests it answers.
    struct Endpoint {
        url: String,
        /// `https://127.0.0.1:<port>`, the issuer identifier for discovery.
        origin: String,
        roots: std::path::PathBuf,
        answer: Arc<std::sync::Mutex<Answer>>,
        metadata: Arc<std::sync::Mutex<Option<String>>>,
        requests: Arc<AtomicUsize>,
        _dir: tempfile::TempDir,
    }

    async fn endpoint(keys: &[(&SigningKey, &str)]) -> Endpoint {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(std::sync::Mutex::new((200, jwks(keys), None)));
        let metadata = Arc::new(std::sync::Mutex::new(None::<String>));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, m, r) = (
            Arc::clone(&answer),
            Arc::clone(&metadata),
            Arc::clone(&requests),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, answer, metadata, requests) = (
                    acceptor.clone(),
                    Arc::clone(&a),
                    Arc::clone(&m),
                    Arc::clone(&r),
                );
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let discovery =
                        head.starts_with(format!("GET {OIDC_DISCOVERY_PATH} ").as_bytes());
                    let (status, body, cache) = if discovery {
                        metadata
                            .lock()
                            .unwrap()
                            .clone()
                            .map_or((404, String::new(), None), |m| (200, m, None))
                    } else {
                        answer.lock().unwrap().clone()
                    };
                    let cache = cache.map_or(String::new(), |c| format!("Cache-Control: {c}\r\n"));
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{cache}\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Endpoint {
            url: format!("https://127.0.0.1:{port}/jwks.json"),
            origin: format!("https://127.0.0.1:{port}"),
            roots,
            answer,
            metadata,
            requests,
            _dir: dir,
        }
    }

    fn jwks(keys: &[(&SigningKey, &str)]) -> String {
        let keys: Vec<_> = keys
            .iter()
            .map(|(key, kid)| {
                let mut jwk = key.public_jwk().clone();
                jwk.kid = Some((*kid).into());
                jwk
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn token(key: &SigningKey, kid: &str) -> String {
        token_of(ISSUER, key, kid)
    }

    fn token_of(issuer: &str, key: &SigningKey, kid: &str) -> String {
        let now = wimse_core::token::unix_now();
        let claims = json!({
            "iss": issuer, "sub": "alice", "aud": "wimse", "exp": now + 300, "iat": now,
            "scope": "orders",
        });
        jws::sign(key, Some("at+jwt"), Some(kid), &claims).unwrap()
    }

    fn verifies(keys: &IssuerKeys, token: &str) -> bool {
        let now = wimse_core::token::unix_now();
        verify_access_token(token, keys.current().iter(), &Validation::at(now)).is_ok()
    }

    fn remote_keys(endpoint: &Endpoint, policy: RefreshPolicy) -> Arc<IssuerKeys> {
        let issuer = TrustedIssuer::awaiting_keys(ISSUER.into(), "wimse".into(), String::new());
        let source = IssuerSource::url(issuer, &endpoint.url, Some(&endpoint.roots)).unwrap();
        Arc::new(IssuerKeys::new(vec![source]).with_policy(policy))
    }

    fn quick() -> RefreshPolicy {
        RefreshPolicy {
            default_interval: Duration::from_secs(300),
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(300),
            retry: Duration::from_millis(100),
            refetch_cooldown: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn keys_are_fetched_and_a_new_key_is_fetched_when_a_token_names_it() {
        let (k1, k2) = (
            SigningKey::generate(Algorithm::Es256).unwrap(),
            SigningKey::generate(Algorithm::Es256).unwrap(),
        );
        let endpoint = endpoint(&[(&k1, "k1")]).await;
        let keys = remote_keys(&endpoint, quick());
        // Nothing held before the first fetch: refused, not trusted by default.
        assert!(!verifies(&keys, &token(&k1, "k1")));
        keys.refresh_due().await;
        assert!(verifies(&keys, &token(&k1, "k1")));
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 1);
        // A token of a held key fetches nothing.
        keys.prepare(&token(&k1, "k1")).await;
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 1);
        // The login server rotates: k2 is published and used at once.
        endpoint.answer.lock().unwrap().1 = jwks(&[(&k1, "k1"), (&k2, "k2")]);
        let rotated = token(&k2, "k2");
        assert!(!verifies(&keys, &rotated));
        keys.prepare(&rotated).await;
        assert!(verifies(&keys, &rotated));
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn tokens_naming_unknown_keys_cause_at_most_one_fetch_per_cooldown() {
        let k1 = SigningKey::generate(Algorithm::Es256).unwrap();
        let endpoint = endpoint(&[(&k1, "k1")]).await;
        let keys = remote_keys(&endpoint, quick());
        keys.refresh_due().await;
        let mut callers = tokio::task::JoinSet::new();
        for i in 0..50 {
            let (keys, forged) = (Arc::clone(&keys), token(&k1, &format!("bogus-{i}")));
            callers.spawn(async move { keys.prepare(&forged).await });
        }
        while callers.join_next().await.is_some() {}
        // The first fetch at start, and one for all fifty.
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 2);
        // Tokens of other issuers, or no JWT at all, fetch nothing.
        let mut other = json!({ "iss": "https://elsewhere.example", "sub": "x" });
        other["aud"] = json!("wimse");
        keys.prepare(&jws::sign(&k1, None, Some("zz"), &other).unwrap())
            .await;
        keys.prepare("garbage").await;
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 2);
        assert!(verifies(&keys, &token(&k1, "k1")));
    }

    #[tokio::test]
    async fn a_failed_or_empty_fetch_keeps_the_keys_and_a_removed_key_goes_when_due() {
        let (k1, k2) = (
            SigningKey::generate(Algorithm::Es256).unwrap(),
            SigningKey::generate(Algorithm::Es256).unwrap(),
        );
        let endpoint = endpoint(&[(&k1, "k1")]).await;
        endpoint.answer.lock().unwrap().2 = Some("max-age=0".into());
        let keys = remote_keys(&endpoint, quick());
        keys.refresh_due().await;
        let old = token(&k1, "k1");
        assert!(verifies(&keys, &old));
        // The endpoint fails, then serves a set with no usable key: k1 stays.
        *endpoint.answer.lock().unwrap() = (503, "down".into(), None);
        tokio::time::sleep(Duration::from_millis(150)).await;
        keys.refresh_due().await;
        assert!(verifies(&keys, &old));
        *endpoint.answer.lock().unwrap() = (200, json!({ "keys": [] }).to_string(), None);
        tokio::time::sleep(Duration::from_millis(150)).await;
        keys.refresh_due().await;
        assert!(verifies(&keys, &old));
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 3);
        let mut registry = Registry::default();
        keys.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let issuer = format!("issuer=\"{ISSUER}\"");
        for line in [
            format!("issuer_key_fetches_total{{{issuer},outcome=\"ok\"}} 1"),
            format!("issuer_key_fetches_total{{{issuer},outcome=\"error\"}} 2"),
            format!("issuer_keys{{{issuer}}} 1"),
        ] {
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
        // Not due yet: nothing is fetched.
        keys.refresh_due().await;
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 3);
        // k1 is retired: once the set is due again, its tokens are refused.
        *endpoint.answer.lock().unwrap() = (200, jwks(&[(&k2, "k2")]), None);
        tokio::time::sleep(Duration::from_millis(150)).await;
        keys.refresh_due().await;
        assert!(!verifies(&keys, &old));
        assert!(verifies(&keys, &token(&k2, "k2")));
    }

    #[tokio::test]
    async fn watching_fetches_at_start_and_an_untrusted_server_gives_no_keys() {
        let k1 = SigningKey::generate(Algorithm::Es256).unwrap();
        let endpoint = endpoint(&[(&k1, "k1")]).await;
        let keys = remote_keys(&endpoint, quick());
        keys.watch();
        for _ in 0..100 {
            if verifies(&keys, &token(&k1, "k1")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(verifies(&keys, &token(&k1, "k1")));
        // The same endpoint checked against Mozilla's roots: the handshake fails.
        let issuer = TrustedIssuer::awaiting_keys(ISSUER.into(), "wimse".into(), String::new());
        let untrusted = Arc::new(IssuerKeys::new(vec![
            IssuerSource::url(issuer, &endpoint.url, None).unwrap(),
        ]));
        untrusted.refresh_due().await;
        assert!(!verifies(&untrusted, &token(&k1, "k1")));
    }

    #[tokio::test]
    async fn oidc_discovery_finds_the_jwks_uri_and_only_for_the_issuer_it_names() {
        let k1 = SigningKey::generate(Algorithm::Es256).unwrap();
        let endpoint = endpoint(&[(&k1, "k1")]).await;
        let issuer =
            |iss: &str| TrustedIssuer::awaiting_keys(iss.into(), "wimse".into(), String::new());
        let discovered = |iss: &str| {
            let source = IssuerSource::discovered(issuer(iss), Some(&endpoint.roots)).unwrap();
            Arc::new(IssuerKeys::new(vec![source]).with_policy(quick()))
        };
        // No metadata published: nothing is fetched beyond the discovery document.
        let keys = discovered(&endpoint.origin);
        keys.refresh_due().await;
        assert!(!verifies(&keys, &token_of(&endpoint.origin, &k1, "k1")));
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 1);
        // Metadata naming this issuer and its JWK Set.
        *endpoint.metadata.lock().unwrap() =
            Some(json!({ "issuer": endpoint.origin, "jwks_uri": endpoint.url }).to_string());
        let keys = discovered(&endpoint.origin);
        keys.refresh_due().await;
        assert!(verifies(&keys, &token_of(&endpoint.origin, &k1, "k1")));
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 3);
        // Metadata that names another issuer is someone else's: no keys from it.
        *endpoint.metadata.lock().unwrap() =
            Some(json!({ "issuer": "https://evil.example", "jwks_uri": endpoint.url }).to_string());
        let keys = discovered(&endpoint.origin);
        keys.refresh_due().await;
        assert!(!verifies(&keys, &token_of(&endpoint.origin, &k1, "k1")));
        // Nor from an array in place of the metadata object, even one holding its values.
        *endpoint.metadata.lock().unwrap() =
            Some(json!([endpoint.origin, endpoint.url]).to_string());
        let keys = discovered(&endpoint.origin);
        keys.refresh_due().await;
        assert!(!verifies(&keys, &token_of(&endpoint.origin, &k1, "k1")));
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 5);
        // Nor from a plain-HTTP `jwks_uri`.
        *endpoint.metadata.lock().unwrap() = Some(
            json!({ "issuer": endpoint.origin, "jwks_uri": "http://127.0.0.1:1/jwks" }).to_string(),
        );
        let keys = discovered(&endpoint.origin);
        keys.refresh_due().await;
        assert!(!verifies(&keys, &token_of(&endpoint.origin, &k1, "k1")));
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 6);
        // The issuer identifier itself must be an https URL to discover from.
        assert!(IssuerSource::discovered(issuer("login.example"), None).is_err());
    }

    #[test]
    fn an_issuer_named_twice_is_refused() {
        let issuer = |aud: &str| {
            IssuerSource::fixed(TrustedIssuer::awaiting_keys(
                "https://login.test".into(),
                aud.into(),
                String::new(),
            ))
        };
        assert!(IssuerSource::distinct(&[issuer("a")]).is_ok());
        let refused = IssuerSource::distinct(&[issuer("a"), issuer("b")]).unwrap_err();
        assert!(refused.to_string().contains("named twice"), "{refused}");
    }

    #[test]
    fn a_configuration_names_exactly_one_key_source() {
        let issuer = TrustedIssuer::awaiting_keys(ISSUER.into(), "wimse".into(), String::new());
        let file = Path::new("/nonexistent/jwks.json");
        let url = "https://login.example.com/jwks";
        let settings = |jwks_file, jwks_uri, jwks_ca_file, oidc_discovery| KeySettings {
            jwks_file,
            jwks_uri,
            jwks_ca_file,
            oidc_discovery,
        };
        for (given, expected) in [
            (settings(None, None, None, false), "name the issuer's keys"),
            (settings(Some(file), Some(url), None, false), "one way only"),
            (settings(None, Some(url), None, true), "one way only"),
            (settings(Some(file), None, None, true), "one way only"),
            (settings(Some(file), None, Some(file), false), "needs none"),
            (
                settings(Some(file), None, None, false),
                "/nonexistent/jwks.json: ",
            ),
            (
                settings(None, Some("http://login.example.com/jwks"), None, false),
                "not an `https` URL",
            ),
            (
                settings(None, Some(url), Some(file), false),
                "/nonexistent/jwks.json",
            ),
        ] {
            let refused = IssuerSource::configured(issuer.clone(), &given).unwrap_err();
            assert!(refused.to_string().contains(expected), "{refused}");
        }
        assert!(
            IssuerSource::configured(issuer.clone(), &settings(None, Some(url), None, false))
                .is_ok()
        );
        assert!(IssuerSource::configured(issuer, &settings(None, None, None, true)).is_ok());
    }
}
