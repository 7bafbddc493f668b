//! The audit record: who called whom, how they proved it, what was decided, and why.
//!
//! # Redaction by construction
//!
//! seeds/002 §"Audit Trails": secrets such as bearer tokens and private keys MUST NOT be
//! logged; credential data must be hashed or redacted. Rather than scrub records after the
//! fact, this type has nowhere to put a secret:
//!
//! - identities are [`WorkloadId`]s (parsed, validated URIs);
//! - every free-text field is a [`Label`], which refuses anything shaped like a JWT, a PEM
//!   block or a join token, and anything non-printable;
//! - everything else is an enum, a [`Timestamp`] or a fixed-size [`Fingerprint`];
//! - a credential appears only as a [`CredentialRef`], whose constructors take the token,
//!   certificate or key and keep its SHA-256 (and, for a JWT, its `jti`) — never the bytes.
//!
//! Deserializing a record re-runs the same checks, so a log line edited to hold a token
//! does not parse.

use serde::{Deserialize, Serialize};
use wimse_core::WorkloadId;
use wimse_core::jose::Jwk;

use crate::secrets::{Label, LabelError};
use crate::time::Timestamp;

/// At most this many credential references per record.
pub const MAX_CREDENTIALS: usize = 8;
/// At most this many actors in a delegation chain.
pub const MAX_ACTORS: usize = 16;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A peer was authenticated (or failed to be).
    Authn,
    /// A request was authorized or denied by policy.
    Authz,
    /// An X509-SVID was issued.
    X509Issued,
    /// A Workload Identity Token was issued.
    WitIssued,
    /// A JWT-SVID was issued.
    JwtIssued,
    /// A Txn-Token was issued.
    TxnTokenIssued,
    /// An agent attested to the server (node attestation).
    AgentAttested,
    /// A workload attested to its agent.
    WorkloadAttested,
    /// An RFC 8693 token exchange.
    TokenExchange,
    /// A JWT authorization grant for another trust domain was issued (identity chaining).
    GrantIssued,
    /// An access token was issued for another trust domain's grant (identity chaining).
    AccessTokenIssued,
    /// A transaction was delegated to a workload that finishes it later.
    DelegationIssued,
    /// A registration entry, join token or agent was changed by an administrator.
    Admin,
}

impl EventKind {
    /// The wire name, as in `x509_issued`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Authn => "authn",
            Self::Authz => "authz",
            Self::X509Issued => "x509_issued",
            Self::WitIssued => "wit_issued",
            Self::JwtIssued => "jwt_issued",
            Self::TxnTokenIssued => "txn_token_issued",
            Self::AgentAttested => "agent_attested",
            Self::WorkloadAttested => "workload_attested",
            Self::TokenExchange => "token_exchange",
            Self::GrantIssued => "grant_issued",
            Self::AccessTokenIssued => "access_token_issued",
            Self::DelegationIssued => "delegation_issued",
            Self::Admin => "admin",
        }
    }
}

/// How the source proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Mutual TLS with an X509-SVID.
    Mtls,
    /// A Workload Identity Token with a Workload Proof Token.
    WitWpt,
    /// A WIT with HTTP Message Signatures (RFC 9421).
    HttpSig,
    /// A JWT-SVID bearer token.
    JwtSvid,
    /// A Txn-Token alone.
    TxnToken,
    /// An OAuth access token (at the gateway).
    OauthToken,
    /// Node attestation with a join token.
    JoinToken,
    /// Node attestation with X.509 proof of possession.
    X509pop,
    /// Workload attestation from unix socket peer credentials.
    UnixPeer,
    /// No credential was presented.
    None,
}

impl AuthMethod {
    /// The wire name, as in `wit_wpt`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mtls => "mtls",
            Self::WitWpt => "wit_wpt",
            Self::HttpSig => "http_sig",
            Self::JwtSvid => "jwt_svid",
            Self::TxnToken => "txn_token",
            Self::OauthToken => "oauth_token",
            Self::JoinToken => "join_token",
            Self::X509pop => "x509pop",
            Self::UnixPeer => "unix_peer",
            Self::None => "none",
        }
    }
}

/// The outcome: for requests, allowed or denied; for issuance, issued or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed, issued, accepted.
    Allow,
    /// Denied, refused, failed.
    Deny,
}

impl Decision {
    /// `allow` or `deny`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// What kind of credential a [`CredentialRef`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A Workload Identity Token.
    Wit,
    /// A Workload Proof Token.
    Wpt,
    /// A JWT-SVID.
    JwtSvid,
    /// A Txn-Token.
    TxnToken,
    /// An OAuth access token.
    AccessToken,
    /// A JWT authorization grant (identity chaining).
    AuthorizationGrant,
    /// A self-signed subject token (a workload starting a transaction itself).
    SelfSigned,
    /// An unsigned JSON subject token (a trusted workload naming a transaction's subject).
    UnsignedJson,
    /// A delegation of a transaction to a workload (asynchronous work).
    Delegation,
    /// An X509-SVID (the fingerprint is of the leaf certificate's DER).
    X509Svid,
    /// A join token (the fingerprint matches the server datastore's token hash).
    JoinToken,
    /// A public key (the fingerprint is its RFC 7638 thumbprint).
    PublicKey,
}

impl CredentialKind {
    /// The wire name, as in `jwt_svid`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Wit => "wit",
            Self::Wpt => "wpt",
            Self::JwtSvid => "jwt_svid",
            Self::TxnToken => "txn_token",
            Self::AccessToken => "access_token",
            Self::AuthorizationGrant => "authorization_grant",
            Self::SelfSigned => "self_signed",
            Self::UnsignedJson => "unsigned_json",
            Self::Delegation => "delegation",
            Self::X509Svid => "x509_svid",
            Self::JoinToken => "join_token",
            Self::PublicKey => "public_key",
        }
    }
}

/// A SHA-256 digest, written as 64 lowercase hex digits.
///
/// Hex rather than base64url: a 43-character base64url string is exactly the shape of a
/// join token, and the secret scanner must be able to tell the two apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(wimse_core::digest::sha256(data))
    }

    /// The 64 hex digits.
    pub fn to_hex(&self) -> String {
        wimse_core::digest::hex(&self.0)
    }

    /// Reads 64 lowercase hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            *o = digit(*pair.first()?)? << 4 | digit(*pair.get(1)?)?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

/// A reference to a credential that identifies it without revealing it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRef {
    /// What kind of credential.
    pub kind: CredentialKind,
    /// SHA-256 of the credential (see [`CredentialKind`] for what exactly is hashed).
    pub sha256: Fingerprint,
    /// The token's `jti`, when it has one that is a valid [`Label`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<Label>,
}

impl CredentialRef {
    /// A reference to a compact JWT (`kind` says which): SHA-256 of its text, the same
    /// value as a `wth`/`ath`/`tth` claim would carry (there in base64url), and its `jti`
    /// read from the payload without verifying it (the caller has verified the token, or
    /// is recording that it failed to).
    pub fn from_token(kind: CredentialKind, token: &str) -> Self {
        Self {
            kind,
            sha256: Fingerprint::of(token.as_bytes()),
            jti: unverified_jti(token),
        }
    }

    /// A reference from a token's already computed SHA-256 (the WIT cache key), so the
    /// hot path hashes each token once.
    pub fn from_sha256(kind: CredentialKind, sha256: [u8; 32], jti: Option<Label>) -> Self {
        Self {
            kind,
            sha256: Fingerprint(sha256),
            jti,
        }
    }

    /// A reference to an X.509 certificate: SHA-256 of its DER (the usual certificate
    /// fingerprint, as `openssl x509 -fingerprint -sha256` prints it).
    pub fn from_certificate_der(der: &[u8]) -> Self {
        Self {
            kind: CredentialKind::X509Svid,
            sha256: Fingerprint::of(der),
            jti: None,
        }
    }

    /// A reference to a join token: SHA-256 of its text, the key the server's datastore
    /// keeps it under, so an auditor can match the two without either holding the token.
    pub fn from_join_token(token: &str) -> Self {
        Self {
            kind: CredentialKind::JoinToken,
            sha256: Fingerprint::of(token.as_bytes()),
            jti: None,
        }
    }

    /// A reference to a public key: its RFC 7638 thumbprint (`None` for a key type
    /// without one). Private keys have no constructor: refer to their public half.
    pub fn from_public_key(jwk: &Jwk) -> Option<Self> {
        let thumbprint = jwk.thumbprint()?;
        let bytes = wimse_core::jose::b64::decode(&thumbprint).ok()?;
        Some(Self {
            kind: CredentialKind::PublicKey,
            sha256: Fingerprint(bytes.try_into().ok()?),
            jti: None,
        })
    }
}

/// The `jti` of a compact JWT's payload, if it has one that is a valid label.
fn unverified_jti(token: &str) -> Option<Label> {
    #[derive(Deserialize)]
    struct Jti {
        jti: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = wimse_core::jose::b64::decode(payload).ok()?;
    let claims: Jti = serde_json::from_slice(&bytes).ok()?;
    Label::new(claims.jti?).ok()
}

/// The security context a request carried (from its Txn-Token), as far as an auditor
/// needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityContext {
    /// The transaction id (`txn`), the same across every hop of one call chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<Label>,
    /// The subject the transaction acts for (`sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Label>,
    /// The authorized scope (`scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Label>,
    /// Why the call is made, when the context names a purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Label>,
    /// The workload that requested the Txn-Token (`req_wl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requesting_workload: Option<WorkloadId>,
}

impl SecurityContext {
    /// The auditable part of verified Txn-Token claims. Fields that are not valid labels
    /// (too long, secret-shaped) are left out rather than failing the record; a
    /// `req_wl` that is not a workload identifier is left out too.
    pub fn from_txn_token(claims: &wimse_core::token::txn::TxnTokenClaims) -> Self {
        Self {
            txn: Label::new(claims.txn.clone()).ok(),
            subject: Label::new(claims.sub.clone()).ok(),
            scope: Label::new(claims.scope.clone()).ok(),
            purpose: purpose(claims.tctx.as_ref()),
            requesting_workload: WorkloadId::parse(&claims.req_wl).ok(),
        }
    }

    /// The auditable part of a delegation: its transaction, subject and scope, and the
    /// workload it was delegated to as the requesting workload.
    pub fn from_delegation(claims: &wimse_core::token::delegation::DelegationClaims) -> Self {
        Self {
            txn: Label::new(claims.txn.clone()).ok(),
            subject: Label::new(claims.sub.clone()).ok(),
            scope: Label::new(claims.scope.clone()).ok(),
            purpose: purpose(claims.tctx.as_ref()),
            requesting_workload: WorkloadId::parse(&claims.act.sub).ok(),
        }
    }
}

/// `tctx.purpose`, when it is a valid label.
fn purpose(tctx: Option<&serde_json::Map<String, serde_json::Value>>) -> Option<Label> {
    tctx.and_then(|t| t.get("purpose"))
        .and_then(serde_json::Value::as_str)
        .and_then(|p| Label::new(p).ok())
}

/// Delegation or impersonation (RFC 8693 `act` / `may_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelegationMode {
    /// The actor acts on behalf of the subject and says so (`act` present).
    Delegation,
    /// The actor acts as the subject (no `act`).
    Impersonation,
}

/// Who acted for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegation {
    /// Delegation or impersonation.
    pub mode: DelegationMode,
    /// The actor chain, current actor first (RFC 8693 §4.1: the outermost `act` is the
    /// current actor, nested ones are prior actors). At most [`MAX_ACTORS`]. Workload
    /// IDs, or the names an outside authorization server gave a delegate it issued an
    /// access token to (an agent acting for a user).
    pub actors: Vec<Label>,
}

impl Delegation {
    /// The delegation an RFC 8693 `act` chain states, current actor first; `None` when
    /// it names more than [`MAX_ACTORS`] or an actor that is no valid label.
    pub fn of_actor(act: &wimse_core::token::chain::Actor) -> Option<Self> {
        let actors: Vec<Label> = act
            .chain()
            .map(|a| Label::new(a).ok())
            .collect::<Option<_>>()?;
        (actors.len() <= MAX_ACTORS).then_some(Delegation {
            mode: DelegationMode::Delegation,
            actors,
        })
    }
}

/// Who on the host made an administrative change: the user and process the kernel names
/// on the server's admin socket (`SO_PEERCRED`), and the login uid Linux keeps for the
/// session through `su` and `sudo` (`/proc/<pid>/loginuid`) when one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// The caller's effective user ID.
    pub uid: u32,
    /// The user who logged in to the session the caller runs in, if the kernel knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    /// The caller's process ID.
    pub pid: u32,
}

/// One audit record. Build it with [`AuditRecord::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When the event happened.
    pub time: Timestamp,
    /// What happened.
    pub event: EventKind,
    /// The outcome.
    pub decision: Decision,
    /// Why (the failed check, the policy that decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Label>,
    /// The request or transaction id that ties this record to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Label>,
    /// The workload that made the request (or the subject of an issuance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<WorkloadId>,
    /// The local operator who made an administrative change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Operator>,
    /// The workload that received it (or the issuer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<WorkloadId>,
    /// How the source authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<AuthMethod>,
    /// What was asked for, such as `GET /orders/42`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Label>,
    /// The security context the request carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<SecurityContext>,
    /// Delegation metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,
    /// The credentials involved, by reference only. At most [`MAX_CREDENTIALS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialRef>,
}

/// Why a record could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A text field was refused.
    #[error("`{field}`: {source}")]
    Label {
        /// The field.
        field: &'static str,
        /// Why.
        source: LabelError,
    },
    /// Too many credentials or actors.
    #[error("`{field}` holds more than {max} items")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Its limit.
        max: usize,
    },
}

fn label(field: &'static str, text: &str) -> Result<Label, RecordError> {
    Label::new(text).map_err(|source| RecordError::Label { field, source })
}

impl AuditRecord {
    /// A record of `event` with `decision`, timed now.
    pub fn new(event: EventKind, decision: Decision) -> Self {
        Self {
            time: Timestamp::now(),
            event,
            decision,
            reason: None,
            request_id: None,
            source: None,
            operator: None,
            target: None,
            method: None,
            resource: None,
            context: None,
            delegation: None,
            credentials: Vec::new(),
        }
    }

    /// Sets the time.
    #[must_use]
    pub fn at(mut self, time: Timestamp) -> Self {
        self.time = time;
        self
    }

    /// Sets the source workload.
    #[must_use]
    pub fn with_source(mut self, id: WorkloadId) -> Self {
        self.source = Some(id);
        self
    }

    /// Sets the local operator of an administrative change.
    #[must_use]
    pub fn with_operator(mut self, operator: Operator) -> Self {
        self.operator = Some(operator);
        self
    }

    /// Sets the target workload.
    #[must_use]
    pub fn with_target(mut self, id: WorkloadId) -> Self {
        self.target = Some(id);
        self
    }

    /// Sets the authentication method.
    #[must_use]
    pub fn with_method(mut self, method: AuthMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Sets the reason; refused if it is not a valid [`Label`].
    pub fn with_reason(mut self, reason: &str) -> Result<Self, RecordError> {
        self.set_reason(reason)?;
        Ok(self)
    }

    /// Sets the request id; refused if it is not a valid [`Label`].
    pub fn with_request_id(mut self, id: &str) -> Result<Self, RecordError> {
        self.set_request_id(id)?;
        Ok(self)
    }

    /// Sets the resource; refused if it is not a valid [`Label`].
    pub fn with_resource(mut self, resource: &str) -> Result<Self, RecordError> {
        self.set_resource(resource)?;
        Ok(self)
    }

    /// Sets the reason in place; on refusal the record is left as it was, so a caller
    /// can fall back to a shorter reason without having cloned the record first.
    pub fn set_reason(&mut self, reason: &str) -> Result<(), RecordError> {
        self.reason = Some(label("reason", reason)?);
        Ok(())
    }

    /// Sets the request id in place; on refusal the record is left as it was.
    pub fn set_request_id(&mut self, id: &str) -> Result<(), RecordError> {
        self.request_id = Some(label("request_id", id)?);
        Ok(())
    }

    /// Sets the resource in place; on refusal the record is left as it was.
    pub fn set_resource(&mut self, resource: &str) -> Result<(), RecordError> {
        self.resource = Some(label("resource", resource)?);
        Ok(())
    }

    /// Sets the security context.
    #[must_use]
    pub fn with_context(mut self, context: SecurityContext) -> Self {
        self.context = Some(context);
        self
    }

    /// Sets the security context of a verified Txn-Token and, when its transaction was
    /// delegated, the delegation (its `act` chain, current actor first). An actor chain
    /// that is too long or names something other than workloads is left out rather than
    /// failing the record.
    #[must_use]
    pub fn with_transaction(self, claims: &wimse_core::token::txn::TxnTokenClaims) -> Self {
        Self {
            delegation: claims.act.as_ref().and_then(Delegation::of_actor),
            ..self.with_context(SecurityContext::from_txn_token(claims))
        }
    }

    /// Sets the delegation metadata; refused beyond [`MAX_ACTORS`] actors.
    pub fn with_delegation(mut self, delegation: Delegation) -> Result<Self, RecordError> {
        self.set_delegation(delegation)?;
        Ok(self)
    }

    /// Sets the delegation metadata; refused beyond [`MAX_ACTORS`] actors, leaving the
    /// record as it was.
    pub fn set_delegation(&mut self, delegation: Delegation) -> Result<(), RecordError> {
        if delegation.actors.len() > MAX_ACTORS {
            return Err(RecordError::TooMany {
                field: "delegation.actors",
                max: MAX_ACTORS,
            });
        }
        self.delegation = Some(delegation);
        Ok(())
    }

    /// Adds a credential reference; refused beyond [`MAX_CREDENTIALS`].
    pub fn with_credential(mut self, credential: CredentialRef) -> Result<Self, RecordError> {
        self.add_credential(credential)?;
        Ok(self)
    }

    /// Adds a credential reference in place; beyond [`MAX_CREDENTIALS`] it is refused and
    /// the record is left as it was.
    pub fn add_credential(&mut self, credential: CredentialRef) -> Result<(), RecordError> {
        if self.credentials.len() >= MAX_CREDENTIALS {
            return Err(RecordError::TooMany {
                field: "credentials",
                max: MAX_CREDENTIALS,
            });
        }
        self.credentials.push(credential);
        Ok(())
    }

    /// Whether `id` appears in this record: as source, target, requesting workload or
    /// actor.
    pub fn involves(&self, id: &WorkloadId) -> bool {
        self.source.as_ref() == Some(id)
            || self.target.as_ref() == Some(id)
            || self
                .context
                .as_ref()
                .and_then(|c| c.requesting_workload.as_ref())
                == Some(id)
            || self
                .delegation
                .as_ref()
                .is_some_and(|d| d.actors.iter().any(|a| a.as_str() == id.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> WorkloadId {
        WorkloadId::parse(text).unwrap()
    }

    #[test]
    fn a_token_reference_keeps_hash_and_jti_but_not_the_token() {
        // {"alg":"ES256"}.{"sub":"x","jti":"abc-123"}.sig
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4IiwianRpIjoiYWJjLTEyMyJ9.c2ln";
        let r = CredentialRef::from_token(CredentialKind::Wit, token);
        assert_eq!(r.jti.as_ref().map(Label::as_str), Some("abc-123"));
        assert_eq!(r.sha256, Fingerprint::of(token.as_bytes()));
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("eyJ"), "{json}");
    }

    #[test]
    fn fingerprint_hex_round_trips_and_refuses_upper_case() {
        let f = Fingerprint::of(b"x");
        assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        assert_eq!(Fingerprint::from_hex(&f.to_hex().to_uppercase()), None);
        assert_eq!(Fingerprint::from_hex("00"), None);
    }

    #[test]
    fn a_record_with_a_token_as_request_id_cannot_be_built() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let err = AuditRecord::new(EventKind::Authn, Decision::Deny)
            .with_request_id(token)
            .unwrap_err();
        assert!(matches!(
            err,
            RecordError::Label {
                field: "request_id",
                ..
            }
        ));
        assert!(!err.to_string().contains("eyJ"));
    }

    #[test]
    fn a_refused_setter_leaves_the_record_as_it_was() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let mut record = AuditRecord::new(EventKind::Authn, Decision::Deny);
        record.set_reason("first").unwrap();
        assert!(record.set_reason(token).is_err());
        assert!(record.set_request_id(token).is_err());
        assert!(record.set_resource(token).is_err());
        assert_eq!(
            record.reason.as_ref().map(ToString::to_string).as_deref(),
            Some("first")
        );
        assert!(record.request_id.is_none() && record.resource.is_none());
    }

    #[test]
    fn a_log_line_edited_to_hold_a_token_does_not_parse() {
        let record = AuditRecord::new(EventKind::Authz, Decision::Allow)
            .with_reason("ok")
            .unwrap();
        let json = serde_json::to_string(&record)
            .unwrap()
            .replace("\"ok\"", "\"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.\"");
        assert!(serde_json::from_str::<AuditRecord>(&json).is_err());
    }

    #[test]
    fn an_operator_is_written_only_when_known_and_read_back_strictly() {
        let plain = AuditRecord::new(EventKind::Admin, Decision::Allow);
        assert!(!serde_json::to_string(&plain).unwrap().contains("operator"));
        for operator in [
            Operator {
                uid: 1000,
                login_uid: Some(1001),
                pid: 42,
            },
            Operator {
                uid: 0,
                login_uid: None,
                pid: 7,
            },
        ] {
            let record = plain.clone().with_operator(operator);
            let json = serde_json::to_string(&record).unwrap();
            assert_eq!(
                json.contains("login_uid"),
                operator.login_uid.is_some(),
                "{json}"
            );
            assert_eq!(serde_json::from_str::<AuditRecord>(&json).unwrap(), record);
        }
        let json = serde_json::to_string(&plain).unwrap().replace(
            "\"decision\"",
            "\"operator\":{\"uid\":1,\"pid\":2,\"name\":\"x\"},\"decision\"",
        );
        assert!(
            serde_json::from_str::<AuditRecord>(&json).is_err(),
            "{json}"
        );
    }

    #[test]
    fn involves_looks_at_every_identity_field() {
        let a = id("spiffe://example.org/a");
        let b = id("spiffe://example.org/b");
        let c = id("spiffe://example.org/c");
        let record = AuditRecord::new(EventKind::Authz, Decision::Allow)
            .with_source(a.clone())
            .with_delegation(Delegation {
                mode: DelegationMode::Delegation,
                actors: vec![Label::new(b.as_str()).unwrap()],
            })
            .unwrap();
        assert!(record.involves(&a));
        assert!(record.involves(&b));
        assert!(!record.involves(&c));
    }

    #[test]
    fn a_delegated_transaction_records_its_actors_current_first() {
        use wimse_core::token::chain::Actor;
        let mut claims = wimse_core::token::txn::TxnTokenClaims {
            iss: None,
            iat: 0,
            aud: wimse_core::token::Audience::One("example.org".into()),
            exp: 0,
            txn: "t-1".into(),
            sub: "alice".into(),
            scope: "orders".into(),
            tctx: None,
            rctx: None,
            req_wl: "spiffe://example.org/worker".into(),
            act: None,
        };
        let own = AuditRecord::new(EventKind::Authz, Decision::Allow).with_transaction(&claims);
        assert_eq!(
            own.context
                .as_ref()
                .unwrap()
                .txn
                .as_ref()
                .unwrap()
                .to_string(),
            "t-1"
        );
        assert_eq!(own.delegation, None);
        claims.act = Some(Actor::after(
            "spiffe://example.org/worker",
            Some(&Actor::new("spiffe://example.org/intake")),
        ));
        let delegated =
            AuditRecord::new(EventKind::Authz, Decision::Allow).with_transaction(&claims);
        assert_eq!(
            delegated.delegation,
            Some(Delegation {
                mode: DelegationMode::Delegation,
                actors: vec![
                    Label::new("spiffe://example.org/worker").unwrap(),
                    Label::new("spiffe://example.org/intake").unwrap()
                ],
            })
        );
        // An outside delegate is recorded by its name; one that looks like a secret is
        // left out, and the context kept.
        claims.act = Some(Actor::new("login:assistant"));
        let outside = AuditRecord::new(EventKind::Authz, Decision::Allow).with_transaction(&claims);
        assert_eq!(
            outside.delegation.unwrap().actors,
            [Label::new("login:assistant").unwrap()]
        );
        claims.act = Some(Actor::new("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        let odd = AuditRecord::new(EventKind::Authz, Decision::Allow).with_transaction(&claims);
        assert!(odd.context.is_some() && odd.delegation.is_none());
    }

    #[test]
    fn too_many_credentials_are_refused() {
        let mut record = AuditRecord::new(EventKind::Authn, Decision::Allow);
        for _ in 0..MAX_CREDENTIALS {
            record = record
                .with_credential(CredentialRef::from_join_token("t"))
                .unwrap();
        }
        assert!(
            record
                .with_credential(CredentialRef::from_join_token("t"))
                .is_err()
        );
    }
}
