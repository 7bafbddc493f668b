//! Authentication of an incoming request: which workload sent it, proven how.
//!
//! [`Authenticator::authenticate`] picks the method from what the request carries:
//!
//! 1. a `Workload-Identity-Token` with a `Signature-Input`: WIT + HTTP Message Signature
//!    ([`crate::httpsig`]);
//! 2. a `Workload-Identity-Token` with a `Workload-Proof-Token`: WIT + WPT;
//! 3. no WIT, and the connection's client certificate was verified ([`MtlsPeer`]): mTLS;
//! 4. no WIT, `Authorization: Bearer`, and the legacy JWT-SVID mode explicitly enabled.
//!
//! The WIT is verified only by `wimse_core::token::wit` (through a [`WitCache`]), the WPT
//! only by `verify_wpt`; this module adds the request's side of the binding (audience =
//! the configured public URL + path, never `Host`; `ath`/`tth` from the request's
//! `Authorization`/`Txn-Token`), the replay caches, the peer allow-list, and the reasons
//! ([`AuthError`]) a refusal names in its RFC 9457 body.
//!
//! A `Txn-Token` is not a credential, but once the caller is authenticated by any method,
//! a Txn-Token the request carries is verified too (`wimse_core::token::txn`, through a
//! [`TxnCache`]: signature by the trust domain's token service, `aud` = this service's
//! trust domain, expiry, required claims) and refused with its own reason when invalid;
//! [`AuthConfig::require_txn_token`] makes one mandatory. The verified claims become the
//! request's [`Transaction`].

use crate::httpsig::{self, RequestView, SigError, SigPolicy, SignatureParams};
use crate::source::{CredentialSource, Credentials};
use http::HeaderMap;
use http::request::Parts;
use std::collections::BTreeSet;
use std::sync::Arc;
use wimse_core::WorkloadId;
use wimse_core::bundle::BundleError;
use wimse_core::id::TrustDomain;
use wimse_core::jose::JwsError;
use wimse_core::token::replay::{ReplayCache, ReplayError};
use wimse_core::token::txn::{TXN_HEADER, TxnCache, TxnTokenClaims};
use wimse_core::token::wit::{VerifiedWit, WitCache, WitProfile};
use wimse_core::token::wpt::{RequestBinding, verify_wpt};
use wimse_core::token::{TokenError, Validation};

/// The WIT header (WIMSE workload credentials).
pub const WIT_HEADER: &str = "workload-identity-token";
/// The WPT header (WIMSE WPT).
pub const WPT_HEADER: &str = "workload-proof-token";
/// Every header a workload's credential or proof travels in: replaced when a proof is
/// attached, never passed on by a proxy.
pub const CREDENTIAL_HEADERS: [&str; 4] = [WIT_HEADER, WPT_HEADER, "signature", "signature-input"];

/// How a peer proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// WIT + Workload Proof Token.
    WitWpt,
    /// WIT + HTTP Message Signature.
    HttpSig,
    /// Mutual TLS with an X509-SVID.
    Mtls,
    /// Bearer JWT-SVID (legacy, opt-in).
    JwtSvid,
}

impl AuthMethod {
    /// The name policies and audit records use: `wit-wpt`, `http-sig`, `mtls`, `jwt-svid`.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::WitWpt => "wit-wpt",
            AuthMethod::HttpSig => "http-sig",
            AuthMethod::Mtls => "mtls",
            AuthMethod::JwtSvid => "jwt-svid",
        }
    }

    /// The audit crate's name for it.
    pub fn audit(self) -> wimse_audit::AuthMethod {
        match self {
            AuthMethod::WitWpt => wimse_audit::AuthMethod::WitWpt,
            AuthMethod::HttpSig => wimse_audit::AuthMethod::HttpSig,
            AuthMethod::Mtls => wimse_audit::AuthMethod::Mtls,
            AuthMethod::JwtSvid => wimse_audit::AuthMethod::JwtSvid,
        }
    }
}

/// The authenticated caller, put in the request's extensions by the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The caller's workload identifier.
    pub id: WorkloadId,
    /// How it was proven.
    pub method: AuthMethod,
}

/// The verified Txn-Token of a request: the transaction it belongs to (put in the
/// request's extensions by the layer when the request carries one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction(pub Arc<TxnTokenClaims>);

/// The identity of a TLS client whose certificate chain was verified during the
/// handshake (inserted by [`crate::listen::serve_until`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsPeer(pub WorkloadId);

/// Which peers may authenticate at all (before authorization): by exact ID or by trust
/// domain. Empty means every peer whose trust domain has a bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAllowList {
    /// Exact workload identifiers.
    pub ids: BTreeSet<WorkloadId>,
    /// Whole trust domains.
    pub trust_domains: BTreeSet<TrustDomain>,
}

impl PeerAllowList {
    /// Whether `id` may authenticate.
    pub fn allows(&self, id: &WorkloadId) -> bool {
        (self.ids.is_empty() && self.trust_domains.is_empty())
            || self.ids.contains(id)
            || self.trust_domains.contains(id.trust_domain())
    }
}

/// Why a request's credentials were refused (400 with an RFC 9457 body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no credential this service accepts.
    #[error("request carries no workload credentials")]
    MissingCredentials,
    /// A credential header is repeated or not visible ASCII.
    #[error("header `{0}` must appear exactly once")]
    MalformedHeader(&'static str),
    /// A WIT came without a proof of possession.
    #[error("the workload identity token is not accompanied by a proof (WPT or message signature)")]
    MissingProof,
    /// The WIT names a trust domain this service has no bundle for.
    #[error("workload identity token: {0}")]
    UntrustedTrustDomain(TokenError),
    /// The WIT has expired.
    #[error("workload identity token: {0}")]
    WitExpired(TokenError),
    /// The WIT is otherwise invalid.
    #[error("workload identity token: {0}")]
    InvalidWit(TokenError),
    /// The WPT was already used.
    #[error("workload proof token: {0}")]
    ReplayedProof(TokenError),
    /// The WPT names another audience.
    #[error("workload proof token: {0}")]
    WrongAudience(TokenError),
    /// The WPT does not verify with the WIT's key.
    #[error("workload proof token: {0}")]
    ProofSignature(TokenError),
    /// The WPT is bound to another WIT or token.
    #[error("workload proof token: {0}")]
    ProofBinding(TokenError),
    /// The WPT is otherwise invalid.
    #[error("workload proof token: {0}")]
    InvalidProof(TokenError),
    /// The message signature is refused.
    #[error("message signature: {0}")]
    Signature(SigError),
    /// The message signature's nonce was already used by this peer.
    #[error("message signature nonce was already used (replay)")]
    ReplayedSignature,
    /// The mTLS or JWT-SVID credential is refused.
    #[error("{0}")]
    Credential(String),
    /// The caller authenticated but is not on the allow-list.
    #[error("peer `{0}` is not on this service's allow-list")]
    PeerNotAllowed(String),
    /// The method is disabled on this service.
    #[error("authentication method `{0}` is not enabled")]
    MethodDisabled(&'static str),
    /// The `Txn-Token` is refused.
    #[error("transaction token: {0}")]
    InvalidTxnToken(TokenError),
    /// This service requires a `Txn-Token` and the request has none.
    #[error("request carries no transaction token, and this service requires one")]
    MissingTxnToken,
    /// This service has no identity yet, so it cannot tell whether a Txn-Token is for its
    /// trust domain.
    #[error("transaction token cannot be checked: this service has no identity yet")]
    TxnTokenUncheckable,
    /// The request body could not be read for its digest.
    #[error("request body could not be read: {0}")]
    Body(String),
    /// The path holds a dot segment or an encoded separator, which the policy and an
    /// upstream could read as different resources ([`check_path`]).
    #[error("request path is ambiguous: {0}")]
    AmbiguousPath(&'static str),
}

impl AuthError {
    /// The short, stable reason code (the last part of the problem `type` URI).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing-credentials",
            AuthError::MalformedHeader(_) => "malformed-header",
            AuthError::MissingProof => "missing-proof",
            AuthError::UntrustedTrustDomain(_) => "untrusted-trust-domain",
            AuthError::WitExpired(_) => "wit-expired",
            AuthError::InvalidWit(_) => "invalid-wit",
            AuthError::ReplayedProof(_) => "replayed-proof",
            AuthError::WrongAudience(_) | AuthError::Signature(SigError::WrongAudience { .. }) => {
                "wrong-audience"
            }
            AuthError::ProofSignature(_) => "proof-signature-invalid",
            AuthError::ProofBinding(_) => "proof-binding-mismatch",
            AuthError::InvalidProof(_) => "invalid-proof",
            AuthError::Signature(SigError::ContentDigest) => "content-digest-mismatch",
            AuthError::Signature(SigError::BadSignature) => "signature-invalid",
            AuthError::Signature(_) => "invalid-signature",
            AuthError::ReplayedSignature => "replayed-signature",
            AuthError::Credential(_) => "invalid-credential",
            AuthError::PeerNotAllowed(_) => "peer-not-allowed",
            AuthError::MethodDisabled(_) => "method-disabled",
            AuthError::InvalidTxnToken(TokenError::Expired { .. }) => "txn-token-expired",
            AuthError::InvalidTxnToken(_) | AuthError::TxnTokenUncheckable => "invalid-txn-token",
            AuthError::MissingTxnToken => "missing-txn-token",
            AuthError::Body(_) => "unreadable-body",
            AuthError::AmbiguousPath(_) => "ambiguous-path",
        }
    }
}

fn wit_error(e: TokenError) -> AuthError {
    match e {
        TokenError::Key(BundleError::UntrustedTrustDomain(_)) => AuthError::UntrustedTrustDomain(e),
        TokenError::Expired { .. } => AuthError::WitExpired(e),
        _ => AuthError::InvalidWit(e),
    }
}

fn wpt_error(e: TokenError) -> AuthError {
    match e {
        TokenError::Replay | TokenError::ReplayCacheFull => AuthError::ReplayedProof(e),
        TokenError::WrongAudience { .. } => AuthError::WrongAudience(e),
        TokenError::Jws(JwsError::Signature(_)) | TokenError::AlgorithmNotAllowed(_) => {
            AuthError::ProofSignature(e)
        }
        TokenError::BindingMismatch(_) | TokenError::MissingClaim("ath" | "tth" | "oth") => {
            AuthError::ProofBinding(e)
        }
        _ => AuthError::InvalidProof(e),
    }
}

/// Which methods a service accepts. WIT+WPT, HTTP signatures and mTLS are on by default;
/// the bearer JWT-SVID mode is off unless explicitly enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools, reason = "one switch per method")]
pub struct Methods {
    /// WIT + WPT.
    pub wit_wpt: bool,
    /// WIT + HTTP Message Signature.
    pub http_sig: bool,
    /// mTLS client certificates.
    pub mtls: bool,
    /// Bearer JWT-SVIDs (legacy peers only; the audience is the public URL).
    pub jwt_svid: bool,
}

impl Default for Methods {
    fn default() -> Self {
        Methods {
            wit_wpt: true,
            http_sig: true,
            mtls: true,
            jwt_svid: false,
        }
    }
}

/// The configuration of an [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The URL callers address this service by (scheme and authority, optionally a path
    /// prefix), from trusted configuration. A request's audience is this + its path.
    pub public_url: String,
    /// The WIT profile (SPIFFE WIT-SVID by default).
    pub profile: WitProfile,
    /// The accepted methods.
    pub methods: Methods,
    /// The peers allowed to authenticate.
    pub allow: PeerAllowList,
    /// Allowed clock skew, seconds.
    pub leeway: i64,
    /// Refuse requests without a `Txn-Token` (a service reached only inside transactions).
    pub require_txn_token: bool,
}

impl AuthConfig {
    /// Defaults for a service reached at `public_url`.
    pub fn new(public_url: impl Into<String>) -> Self {
        AuthConfig {
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            profile: WitProfile::Spiffe,
            methods: Methods::default(),
            allow: PeerAllowList::default(),
            leeway: 60,
            require_txn_token: false,
        }
    }
}

/// The result of authentication, with what the audit record needs.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The peer.
    pub peer: PeerIdentity,
    /// SHA-256 of the WIT or JWT-SVID presented, for the audit record.
    pub credential: Option<(wimse_audit::CredentialKind, [u8; 32])>,
    /// The verified Txn-Token, when the request carries one.
    pub transaction: Option<Transaction>,
    /// The request's message signature, when it was authenticated by one: what the
    /// response signature answers.
    pub signature: Option<SignatureParams>,
}

/// Verifies requests (see the module doc). Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
    source: CredentialSource,
    wits: WitCache,
    txns: TxnCache,
    replay: ReplayCache,
}

/// One header's value, refusing repeats.
pub(crate) fn single<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::MalformedHeader(name));
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| AuthError::MalformedHeader(name))
}

/// Why a request path is refused, when an upstream, a router or the policy could read it
/// as another resource than the one authenticated and authorized: not absolute, a `.` or
/// `..` segment (also followed by `;` parameters, which some servers drop), an empty
/// segment (`//`, which some servers merge), a percent-encoded character that needs no
/// encoding (`%61dmin`, `%2e%2e`: RFC 3986 §6.2.2.2 normalizers decode them), an encoded
/// `/` or `\` or NUL, a raw `\`. `/api/orders/../admin` would match a policy for
/// `/api/orders*` and reach `/admin` at an upstream that normalizes, and `/%61dmin` would
/// escape a `forbid` for `/admin*`; clients send paths in normal form. The gateway's
/// routes use it too.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must be absolute");
    };
    check_escapes(path.as_bytes())?;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err("the path holds an empty segment");
        }
        let name = segment.split(';').next().unwrap_or_default();
        if name == "." || name == ".." {
            return Err("the path holds a dot segment");
        }
    }
    Ok(())
}

/// One pass over `path` for a raw `\` and for `%XX` escapes that encode `/`, `\` or NUL
/// (refused first) or an unreserved character (RFC 3986 §2.3). No allocation: this runs
/// on every request.
fn check_escapes(path: &[u8]) -> Result<(), &'static str> {
    const SEPARATOR: &str = "the path holds an encoded `/`, `\\` or NUL, or a backslash";
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut encodes_unreserved = false;
    for (i, &c) in path.iter().enumerate() {
        if c == b'\\' {
            return Err(SEPARATOR);
        }
        if c != b'%' {
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).and_then(|&h| hex(h)),
            path.get(i + 2).and_then(|&l| hex(l)),
        ) else {
            continue;
        };
        let decoded = u8::try_from(hi * 16 + lo).unwrap_or(0);
        if matches!(decoded, b'/' | b'\\' | 0) {
            return Err(SEPARATOR);
        }
        encodes_unreserved |=
            decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~');
    }
    if encodes_unreserved {
        return Err("the path percent-encodes a character that needs no encoding");
    }
    Ok(())
}

/// The credentials of `Authorization` when its scheme is `scheme` (case-insensitive).
fn authorization<'h>(headers: &'h HeaderMap, scheme: &str) -> Result<Option<&'h str>, AuthError> {
    Ok(single(headers, "authorization")?.and_then(|v| {
        let (named, token) = v.split_once(' ')?;
        named.eq_ignore_ascii_case(scheme).then(|| token.trim())
    }))
}

/// The bearer access token in `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    authorization(headers, "bearer")
}

/// The request's WPT: in `Workload-Proof-Token` (draft-ietf-wimse-wpt-01, what SPECS §4
/// and our clients follow) or, from peers that follow the WG's later text, as
/// `Authorization: WPT <jwt>`. Both at once is refused: one proof per request.
fn proof_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    match (single(headers, WPT_HEADER)?, authorization(headers, "wpt")?) {
        (Some(_), Some(_)) => Err(AuthError::MalformedHeader(WPT_HEADER)),
        (header, scheme) => Ok(header.or(scheme)),
    }
}

/// Whether `Authorization` carries a WPT (a credential, like the WIT: not passed on).
pub fn authorization_is_wpt(headers: &HeaderMap) -> bool {
    authorization(headers, "wpt").is_ok_and(|t| t.is_some())
}

impl Authenticator {
    /// An authenticator drawing trust bundles from `source`.
    pub fn new(config: AuthConfig, source: CredentialSource) -> Self {
        Authenticator {
            config,
            source,
            wits: WitCache::new(10_000),
            txns: TxnCache::new(10_000),
            replay: ReplayCache::new(1_000_000),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The credential source.
    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    /// The audience a request for `path` must be bound to.
    pub fn audience_for(&self, path: &str) -> String {
        format!("{}{}", self.config.public_url, path)
    }

    /// Whether the request must have its body read before authentication (a message
    /// signature covers the body through `Content-Digest`).
    pub fn needs_body(headers: &HeaderMap) -> bool {
        headers.contains_key(WIT_HEADER) && headers.contains_key("signature-input")
    }

    /// What must hold before the body of a request that [`Authenticator::needs_body`] is
    /// read: message signatures are enabled, and the WIT verifies and names a peer on the
    /// allow-list. So only an authenticated peer can make a service buffer a body.
    pub fn check_before_body(&self, parts: &Parts, now: i64) -> Result<(), AuthError> {
        check_path(parts.uri.path()).map_err(AuthError::AmbiguousPath)?;
        if !self.config.methods.http_sig {
            return Err(AuthError::MethodDisabled(AuthMethod::HttpSig.name()));
        }
        let creds = self.source.current();
        let wit = single(&parts.headers, WIT_HEADER)?.ok_or(AuthError::MissingCredentials)?;
        self.verified_wit(wit, &creds, &self.validation(now))
            .map(|_| ())
    }

    fn validation(&self, now: i64) -> Validation {
        let mut validation = Validation::at(now);
        validation.leeway = self.config.leeway;
        validation
    }

    /// Verifies `wit` (through the cache) and checks its subject against the allow-list,
    /// before any proof is looked at: a peer the allow-list refuses records nothing in
    /// the replay cache.
    fn verified_wit(
        &self,
        wit: &str,
        creds: &Credentials,
        validation: &Validation,
    ) -> Result<Arc<VerifiedWit>, AuthError> {
        let verified = self
            .wits
            .verify(
                wit,
                &creds.wit_bundles,
                creds.bundle_generation,
                self.config.profile,
                validation,
            )
            .map_err(wit_error)?;
        if !self.config.allow.allows(verified.workload_id()) {
            return Err(AuthError::PeerNotAllowed(
                verified.workload_id().to_string(),
            ));
        }
        Ok(verified)
    }

    /// Authenticates a request at time `now`. `body` is the whole body when
    /// [`Authenticator::needs_body`] said so, else empty.
    pub fn authenticate(
        &self,
        parts: &Parts,
        body: &[u8],
        now: i64,
    ) -> Result<Authenticated, AuthError> {
        let creds = self.source.current();
        let validation = self.validation(now);
        let headers = &parts.headers;
        let path = parts.uri.path();
        check_path(path).map_err(AuthError::AmbiguousPath)?;
        let audience = self.audience_for(path);
        let txn_token = single(headers, TXN_HEADER)?;

        let mut authenticated = if let Some(wit) = single(headers, WIT_HEADER)? {
            let verified = self.verified_wit(wit, &creds, &validation)?;
            let mut signature = None;
            let method = if headers.contains_key("signature-input") {
                if !self.config.methods.http_sig {
                    return Err(AuthError::MethodDisabled(AuthMethod::HttpSig.name()));
                }
                signature =
                    Some(self.check_signature(parts, body, &verified, &audience, &validation)?);
                AuthMethod::HttpSig
            } else if let Some(wpt) = proof_token(headers)? {
                if !self.config.methods.wit_wpt {
                    return Err(AuthError::MethodDisabled(AuthMethod::WitWpt.name()));
                }
                let binding = RequestBinding {
                    audience: &audience,
                    access_token: bearer(headers)?,
                    txn_token,
                    other_tokens: &[],
                };
                verify_wpt(wpt, &verified, &binding, &validation, &self.replay)
                    .map_err(wpt_error)?;
                AuthMethod::WitWpt
            } else {
                return Err(AuthError::MissingProof);
            };
            Authenticated {
                peer: PeerIdentity {
                    id: verified.workload_id().clone(),
                    method,
                },
                credential: verified
                    .sha256()
                    .map(|hash| (wimse_audit::CredentialKind::Wit, hash)),
                transaction: None,
                signature,
            }
        } else if let Some(MtlsPeer(id)) = parts.extensions.get::<MtlsPeer>() {
            if !self.config.methods.mtls {
                return Err(AuthError::MethodDisabled(AuthMethod::Mtls.name()));
            }
            Authenticated {
                peer: PeerIdentity {
                    id: id.clone(),
                    method: AuthMethod::Mtls,
                },
                credential: None,
                transaction: None,
                signature: None,
            }
        } else if self.config.methods.jwt_svid
            && let Some(token) = bearer(headers)?
        {
            let verified = wimse_core::token::jwt_svid::verify_jwt_svid(
                token,
                &creds.jwt_bundles,
                &self.config.public_url,
                &validation,
            )
            .map_err(|e| AuthError::Credential(format!("jwt-svid: {e}")))?;
            Authenticated {
                peer: PeerIdentity {
                    id: verified.claims.sub,
                    method: AuthMethod::JwtSvid,
                },
                credential: Some((
                    wimse_audit::CredentialKind::JwtSvid,
                    wimse_core::digest::sha256(token.as_bytes()),
                )),
                transaction: None,
                signature: None,
            }
        } else {
            return Err(AuthError::MissingCredentials);
        };
        if !self.config.allow.allows(&authenticated.peer.id) {
            return Err(AuthError::PeerNotAllowed(authenticated.peer.id.to_string()));
        }
        authenticated.transaction = self.transaction(txn_token, &creds, &validation)?;
        Ok(authenticated)
    }

    /// Verifies the request's `Txn-Token`, if any (after the caller is authenticated).
    fn transaction(
        &self,
        token: Option<&str>,
        creds: &Credentials,
        validation: &Validation,
    ) -> Result<Option<Transaction>, AuthError> {
        let Some(token) = token else {
            return if self.config.require_txn_token {
                Err(AuthError::MissingTxnToken)
            } else {
                Ok(None)
            };
        };
        let me = creds.id().ok_or(AuthError::TxnTokenUncheckable)?;
        self.txns
            .verify(
                token,
                &creds.jwt_bundles,
                creds.bundle_generation,
                me.trust_domain(),
                validation,
            )
            .map(|claims| Some(Transaction(claims)))
            .map_err(AuthError::InvalidTxnToken)
    }

    fn check_signature(
        &self,
        parts: &Parts,
        body: &[u8],
        wit: &Arc<VerifiedWit>,
        audience: &str,
        validation: &Validation,
    ) -> Result<SignatureParams, AuthError> {
        let target = httpsig::request_target(&parts.uri);
        // `@scheme` is this service's (as configured: a proxy in front may end TLS);
        // `@authority` what the client sent, `:authority` or `Host`.
        let view = RequestView {
            method: parts.method.as_str(),
            request_target: target,
            headers: &parts.headers,
            scheme: self.config.public_url.split_once("://").map(|(s, _)| s),
            authority: parts
                .uri
                .authority()
                .map(http::uri::Authority::as_str)
                .or_else(|| {
                    parts
                        .headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                }),
        };
        let policy = SigPolicy {
            audience,
            now: validation.now,
            leeway: validation.leeway,
            max_lifetime: validation.max_proof_lifetime,
        };
        let params = httpsig::verify_request(&view, body, &wit.holder_key, wit.holder_alg, &policy)
            .map_err(AuthError::Signature)?;
        // Nonces share the replay cache with WPT `jti`s, in their own namespace per sender.
        let key = format!("sig\u{0}{}", params.nonce);
        self.replay
            .check_and_insert(
                wit.workload_id().as_str(),
                &key,
                params.expires.saturating_add(validation.leeway),
                validation.now,
            )
            .map_err(|e| match e {
                ReplayError::Replayed | ReplayError::Full => AuthError::ReplayedSignature,
            })?;
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::check_path;
    use proptest::prelude::*;

    #[test]
    fn each_ambiguity_is_named() {
        for (path, why) in [
            ("a/b", "absolute"),
            ("/a%2Fb", "encoded `/`"),
            ("/%61dmin%2f", "encoded `/`"),
            ("/a\\b", "backslash"),
            ("/a%00", "NUL"),
            ("/%61dmin", "needs no encoding"),
            ("/a%7E", "needs no encoding"),
            ("/a//b", "empty segment"),
            ("//", "empty segment"),
            ("/a/../b", "dot segment"),
            ("/a/.;x/b", "dot segment"),
            ("/..", "dot segment"),
        ] {
            let refused = check_path(path).expect_err(path);
            assert!(refused.contains(why), "{path}: {refused}");
        }
        for path in [
            "/", "/a/", "/a/...", "/a/.b", "/%20", "/%C3%A9", "/%", "/a%2", "/%zz",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
    }

    /// A segment in normal form: unreserved characters, sub-delims, and escapes of
    /// characters that need them; never `.` or `..`.
    fn segment() -> impl Strategy<Value = String> {
        "([a-zA-Z0-9_~!$&'()*+,=:@-]|%20|%3F|%C3%A9){1,8}"
    }

    proptest! {
        #[test]
        fn paths_in_normal_form_pass(segments in prop::collection::vec(segment(), 0..6), slash: bool) {
            let mut path = format!("/{}", segments.join("/"));
            if slash && !segments.is_empty() {
                path.push('/');
            }
            prop_assert_eq!(check_path(&path), Ok(()));
        }

        #[test]
        fn one_ambiguous_piece_anywhere_is_refused(
            segments in prop::collection::vec(segment(), 1..6),
            at in any::<prop::sample::Index>(),
            piece in prop::sample::select(vec![
                "..", ".", "", "..;p", "%2e%2e", "%2E", "%2f", "%5C", "%00", "a\\b", "%61", "x%7ey",
            ]),
        ) {
            let mut segments = segments;
            let i = at.index(segments.len());
            segments.insert(i, piece.to_owned());
            segments.push("end".to_owned());
            let path = format!("/{}", segments.join("/"));
            prop_assert!(check_path(&path).is_err(), "{}", path);
        }
    }
}
