//! OAuth 2.0 Token Exchange (RFC 8693) as the Transaction Token Service profiles it
//! (draft-ietf-oauth-transaction-tokens §"Txn-Token Request"): the request a workload
//! sends to `POST /oauth2/token`, its success response, the RFC 6749 §5.2 errors, and
//! scopes (RFC 6749 §3.3).
//!
//! [`ExchangeRequest::parse`] is written by hand over `form_urlencoded` rather than with
//! a serde form decoder: those keep the last of a repeated parameter, and RFC 6749 §3.2
//! requires refusing a request that repeats one ("parameter pollution").

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;

/// The path of the token endpoint on the server's TLS listener.
pub const TOKEN_PATH: &str = "/oauth2/token";

/// `grant_type` of a token exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Token type URIs (RFC 8693 §3 and the Txn-Token draft).
pub mod token_type {
    /// An OAuth access token.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// A JWT of any kind.
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// A Transaction Token.
    pub const TXN_TOKEN: &str = "urn:ietf:params:oauth:token-type:txn_token";
    /// A JWT the requesting workload signed itself ([`super::super::self_signed`]).
    pub const SELF_SIGNED: &str = "urn:ietf:params:oauth:token-type:self_signed";
    /// A JSON object the requesting workload states, unsigned ([`super::super::unsigned`]).
    pub const UNSIGNED_JSON: &str = "urn:ietf:params:oauth:token-type:unsigned_json";
    /// A delegation of a transaction to a workload that carries it on later
    /// ([`super::super::delegation`]). This trust domain's own type: only its token
    /// service issues and accepts it.
    pub const DELEGATION: &str = "urn:wimse:token-type:delegation";
    /// A refresh token (never accepted as a Txn-Token's subject).
    pub const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
}

/// The largest request body accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The largest `request_context` or `request_details` accepted, in bytes of JSON.
pub const MAX_CONTEXT_BYTES: usize = 4096;

/// The most scope tokens a scope may hold, and the longest one.
const MAX_SCOPE_TOKENS: usize = 64;
const MAX_SCOPE_TOKEN_LEN: usize = 128;

/// Why a token request was refused, as an RFC 6749 §5.2 error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The request is malformed, or the subject token is invalid or unacceptable.
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// The subject token names a key of its issuer that is not held (a key the issuer
    /// may have just published): `invalid_request` to the client, and for the service a
    /// cue to fetch the issuer's keys and decide once more.
    #[error("invalid_request: {0}")]
    UnknownSubjectKey(String),
    /// The caller did not authenticate as a workload of this trust domain.
    #[error("invalid_client: {0}")]
    InvalidClient(String),
    /// The authenticated caller may not make this request.
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(String),
    /// The grant type is not token exchange.
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(String),
    /// The scope is malformed or wider than the subject token allows.
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    /// The audience is not this trust domain.
    #[error("invalid_target: {0}")]
    InvalidTarget(String),
    /// A presented grant (RFC 7523) is invalid, expired, replayed or not for this caller.
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// The service could not issue a token it would otherwise have issued.
    #[error("server_error: {0}")]
    ServerError(String),
}

impl ExchangeError {
    /// The `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::UnknownSubjectKey(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::UnsupportedGrantType(_) => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidTarget(_) => "invalid_target",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::ServerError(_) => "server_error",
        }
    }

    /// The `error_description`.
    pub fn description(&self) -> &str {
        match self {
            Self::InvalidRequest(d)
            | Self::UnknownSubjectKey(d)
            | Self::InvalidClient(d)
            | Self::UnauthorizedClient(d)
            | Self::UnsupportedGrantType(d)
            | Self::InvalidScope(d)
            | Self::InvalidTarget(d)
            | Self::InvalidGrant(d)
            | Self::ServerError(d) => d,
        }
    }

    /// The HTTP status: 500 for [`ExchangeError::ServerError`], else 400 (RFC 6749 §5.2;
    /// the client authenticates with TLS, not an `Authorization` header, so no 401).
    pub fn status(&self) -> u16 {
        match self {
            Self::ServerError(_) => 500,
            _ => 400,
        }
    }

    /// The JSON error body.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.code(), "error_description": self.description() })
            .to_string()
    }
}

fn invalid(message: impl Into<String>) -> ExchangeError {
    ExchangeError::InvalidRequest(message.into())
}

/// An OAuth scope: a set of scope tokens (RFC 6749 §3.3), kept sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scope(BTreeSet<String>);

impl Scope {
    /// Parses a space-delimited scope. Every token must be 1 to 128 `NQCHAR`s
    /// (`%x21 / %x23-5B / %x5D-7E`), separated by single spaces; at most 64 tokens.
    pub fn parse(text: &str) -> Result<Self, ExchangeError> {
        let scope_error = |why: &str| ExchangeError::InvalidScope(why.to_owned());
        if text.is_empty() {
            return Err(scope_error("the scope is empty"));
        }
        let mut tokens = BTreeSet::new();
        for token in text.split(' ') {
            if token.is_empty() {
                return Err(scope_error("scope tokens must be separated by one space"));
            }
            if token.len() > MAX_SCOPE_TOKEN_LEN {
                return Err(scope_error("a scope token is too long"));
            }
            if !token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
            {
                return Err(scope_error(
                    "a scope token has a character RFC 6749 forbids",
                ));
            }
            tokens.insert(token.to_owned());
        }
        if tokens.len() > MAX_SCOPE_TOKENS {
            return Err(scope_error("the scope has too many tokens"));
        }
        Ok(Scope(tokens))
    }

    /// Builds a scope from separate tokens (an `scp` array), each checked as in [`Scope::parse`].
    pub fn from_tokens<'a>(
        tokens: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ExchangeError> {
        let joined: Vec<&str> = tokens.into_iter().collect();
        Self::parse(&joined.join(" "))
    }

    /// Whether every token of `self` is in `other`.
    pub fn is_subset_of(&self, other: &Scope) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The tokens `self` has that `other` lacks.
    pub fn excess_over<'a>(&'a self, other: &'a Scope) -> impl Iterator<Item = &'a str> {
        self.0.difference(&other.0).map(String::as_str)
    }

    /// Whether the scope holds `token`.
    pub fn contains(&self, token: &str) -> bool {
        self.0.contains(token)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(token)?;
        }
        Ok(())
    }
}

/// A parsed token exchange request (RFC 8693 §2.1).
#[derive(Clone, PartialEq, Eq)]
pub struct ExchangeRequest {
    /// `audience` values (repeatable).
    pub audience: Vec<String>,
    /// `resource` values (repeatable).
    pub resource: Vec<String>,
    /// The requested scope.
    pub scope: Option<Scope>,
    /// `requested_token_type`.
    pub requested_token_type: Option<String>,
    /// The token that represents the subject.
    pub subject_token: String,
    /// Its type URI.
    pub subject_token_type: String,
    /// The token that represents the actor, if any.
    pub actor_token: Option<String>,
    /// Its type URI (present exactly when `actor_token` is).
    pub actor_token_type: Option<String>,
    /// `request_context`: the request's environment, a JSON object.
    pub request_context: Option<Map<String, Value>>,
    /// `request_details`: the request's parameters, a JSON object.
    pub request_details: Option<Map<String, Value>>,
}

impl fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The subject and actor tokens are credentials: never printed.
        f.debug_struct("ExchangeRequest")
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .field("requested_token_type", &self.requested_token_type)
            .field("subject_token_type", &self.subject_token_type)
            .field("actor_token_type", &self.actor_token_type)
            .finish_non_exhaustive()
    }
}

/// One single-valued parameter, refused when repeated.
fn set_once(slot: &mut Option<String>, name: &str, value: String) -> Result<(), ExchangeError> {
    if slot.replace(value).is_some() {
        return Err(invalid(format!("parameter `{name}` is repeated")));
    }
    Ok(())
}

/// Parses a context parameter. The size limit applies to the object as it is written
/// compactly (as it will sit in the Txn-Token and as [`ExchangeRequest::to_form`] sends
/// it), not to the text received: numbers such as `1E15` grow when written back, and a
/// limit on the received text alone would let an accepted object fail the same check
/// once re-sent. The body limit bounds the parsing work.
fn json_object(name: &str, text: &str) -> Result<Map<String, Value>, ExchangeError> {
    let object = crate::json::from_slice::<Map<String, Value>>(text.as_bytes())
        .map_err(|e| invalid(format!("`{name}` is not a JSON object: {e}")))?;
    let written = serde_json::to_vec(&object)
        .map_err(|e| invalid(format!("`{name}` cannot be written back: {e}")))?;
    if written.len() > MAX_CONTEXT_BYTES {
        return Err(invalid(format!(
            "`{name}` is longer than {MAX_CONTEXT_BYTES} bytes"
        )));
    }
    Ok(object)
}

impl ExchangeRequest {
    /// Parses an `application/x-www-form-urlencoded` body. Refuses: a body over
    /// [`MAX_REQUEST_BYTES`]; any single-valued parameter given twice; a `grant_type`
    /// other than token exchange; a missing `subject_token` or `subject_token_type`; an
    /// `actor_token` without its type or the reverse; a malformed scope; and a
    /// `request_context`/`request_details` that is not one JSON object without repeated
    /// member names, of at most [`MAX_CONTEXT_BYTES`] when written compactly. Parameters sent without a
    /// value count as omitted, and unknown parameters are ignored (RFC 6749 §3.1).
    pub fn parse(body: &[u8]) -> Result<Self, ExchangeError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(invalid(format!(
                "the request is longer than {MAX_REQUEST_BYTES} bytes"
            )));
        }
        let mut grant_type = None;
        let mut scope = None;
        let mut requested_token_type = None;
        let mut subject_token = None;
        let mut subject_token_type = None;
        let mut actor_token = None;
        let mut actor_token_type = None;
        let mut request_context = None;
        let mut request_details = None;
        let mut audience = Vec::new();
        let mut resource = Vec::new();
        for (name, value) in form_urlencoded::parse(body) {
            if value.is_empty() {
                continue;
            }
            let value = value.into_owned();
            let slot = match name.as_ref() {
                "audience" => {
                    audience.push(value);
                    continue;
                }
                "resource" => {
                    resource.push(value);
                    continue;
                }
                "grant_type" => &mut grant_type,
                "scope" => &mut scope,
                "requested_token_type" => &mut requested_token_type,
                "subject_token" => &mut subject_token,
                "subject_token_type" => &mut subject_token_type,
                "actor_token" => &mut actor_token,
                "actor_token_type" => &mut actor_token_type,
                "request_context" => &mut request_context,
                "request_details" => &mut request_details,
                _ => continue,
            };
            set_once(slot, &name, value)?;
        }
        match grant_type.as_deref() {
            None => return Err(invalid("parameter `grant_type` is missing")),
            Some(GRANT_TYPE) => {}
            Some(other) => {
                return Err(ExchangeError::UnsupportedGrantType(format!(
                    "grant type `{other}` is not supported; use `{GRANT_TYPE}` or `{}`",
                    super::chain::JWT_BEARER
                )));
            }
        }
        let subject_token =
            subject_token.ok_or_else(|| invalid("parameter `subject_token` is missing"))?;
        let subject_token_type = subject_token_type
            .ok_or_else(|| invalid("parameter `subject_token_type` is missing"))?;
        if actor_token.is_some() != actor_token_type.is_some() {
            return Err(invalid(
                "`actor_token` and `actor_token_type` must come together",
            ));
        }
        Ok(ExchangeRequest {
            audience,
            resource,
            scope: scope.as_deref().map(Scope::parse).transpose()?,
            requested_token_type,
            subject_token,
            subject_token_type,
            actor_token,
            actor_token_type,
            request_context: request_context
                .as_deref()
                .map(|t| json_object("request_context", t))
                .transpose()?,
            request_details: request_details
                .as_deref()
                .map(|t| json_object("request_details", t))
                .transpose()?,
        })
    }

    /// Encodes the request as a form body (the client side).
    pub fn to_form(&self) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", GRANT_TYPE);
        for audience in &self.audience {
            form.append_pair("audience", audience);
        }
        for resource in &self.resource {
            form.append_pair("resource", resource);
        }
        if let Some(scope) = &self.scope {
            form.append_pair("scope", &scope.to_string());
        }
        if let Some(t) = &self.requested_token_type {
            form.append_pair("requested_token_type", t);
        }
        form.append_pair("subject_token", &self.subject_token);
        form.append_pair("subject_token_type", &self.subject_token_type);
        if let (Some(token), Some(kind)) = (&self.actor_token, &self.actor_token_type) {
            form.append_pair("actor_token", token);
            form.append_pair("actor_token_type", kind);
        }
        if let Some(context) = &self.request_context {
            form.append_pair(
                "request_context",
                &Value::Object(context.clone()).to_string(),
            );
        }
        if let Some(details) = &self.request_details {
            form.append_pair(
                "request_details",
                &Value::Object(details.clone()).to_string(),
            );
        }
        form.finish()
    }
}

/// A request to the token endpoint: a token exchange, or a grant presented under RFC 7523.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRequest {
    /// `grant_type` token exchange (RFC 8693).
    Exchange(Box<ExchangeRequest>),
    /// `grant_type` jwt-bearer (RFC 7523 §2.1).
    JwtBearer(JwtBearerRequest),
}

impl TokenRequest {
    /// Parses a form body by its `grant_type`; every refusal of
    /// [`ExchangeRequest::parse`] and [`JwtBearerRequest::parse`] applies.
    pub fn parse(body: &[u8]) -> Result<Self, ExchangeError> {
        let jwt_bearer = form_urlencoded::parse(body)
            .find(|(name, _)| name == "grant_type")
            .is_some_and(|(_, value)| value == super::chain::JWT_BEARER);
        if jwt_bearer {
            JwtBearerRequest::parse(body).map(Self::JwtBearer)
        } else {
            ExchangeRequest::parse(body).map(|r| Self::Exchange(Box::new(r)))
        }
    }
}

/// A JWT authorization grant presented for an access token (RFC 7523 §2.1), with the
/// client authenticated by a JWT-SVID (draft-ietf-oauth-spiffe-client-auth).
#[derive(Clone, PartialEq, Eq)]
pub struct JwtBearerRequest {
    /// The grant.
    pub assertion: String,
    /// The scope asked for (default: the grant's).
    pub scope: Option<Scope>,
    /// The client's JWT-SVID, when it authenticates by one.
    pub client_assertion: Option<String>,
    /// `client_id`, when sent: must name the authenticated client.
    pub client_id: Option<String>,
}

impl fmt::Debug for JwtBearerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The grant and the client assertion are credentials: never printed.
        f.debug_struct("JwtBearerRequest")
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl JwtBearerRequest {
    /// Parses a form body: `grant_type` jwt-bearer, one `assertion`, an optional scope,
    /// and client authentication by `client_assertion_type` jwt-spiffe with one
    /// `client_assertion` (both or neither). Any single-valued parameter given twice is
    /// refused, as in [`ExchangeRequest::parse`].
    pub fn parse(body: &[u8]) -> Result<Self, ExchangeError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(invalid(format!(
                "the request is longer than {MAX_REQUEST_BYTES} bytes"
            )));
        }
        let mut grant_type = None;
        let mut assertion = None;
        let mut scope = None;
        let mut assertion_type = None;
        let mut client_assertion = None;
        let mut client_id = None;
        for (name, value) in form_urlencoded::parse(body) {
            if value.is_empty() {
                continue;
            }
            let slot = match name.as_ref() {
                "grant_type" => &mut grant_type,
                "assertion" => &mut assertion,
                "scope" => &mut scope,
                "client_assertion_type" => &mut assertion_type,
                "client_assertion" => &mut client_assertion,
                "client_id" => &mut client_id,
                _ => continue,
            };
            set_once(slot, &name, value.into_owned())?;
        }
        if grant_type.as_deref() != Some(super::chain::JWT_BEARER) {
            return Err(ExchangeError::UnsupportedGrantType(format!(
                "expected grant type `{}`",
                super::chain::JWT_BEARER
            )));
        }
        let assertion = assertion.ok_or_else(|| invalid("parameter `assertion` is missing"))?;
        match (assertion_type.as_deref(), &client_assertion) {
            (None, None) | (Some(super::chain::JWT_SPIFFE_ASSERTION), Some(_)) => {}
            (Some(other), Some(_)) => {
                return Err(ExchangeError::InvalidClient(format!(
                    "client assertion type `{other}` is not supported; use `{}`",
                    super::chain::JWT_SPIFFE_ASSERTION
                )));
            }
            _ => {
                return Err(invalid(
                    "`client_assertion` and `client_assertion_type` must come together",
                ));
            }
        }
        Ok(JwtBearerRequest {
            assertion,
            scope: scope.as_deref().map(Scope::parse).transpose()?,
            client_assertion,
            client_id,
        })
    }

    /// Encodes the request as a form body (the client side).
    pub fn to_form(&self) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", super::chain::JWT_BEARER);
        form.append_pair("assertion", &self.assertion);
        if let Some(scope) = &self.scope {
            form.append_pair("scope", &scope.to_string());
        }
        if let Some(assertion) = &self.client_assertion {
            form.append_pair("client_assertion_type", super::chain::JWT_SPIFFE_ASSERTION);
            form.append_pair("client_assertion", assertion);
        }
        if let Some(id) = &self.client_id {
            form.append_pair("client_id", id);
        }
        form.finish()
    }
}

/// A successful token exchange response (RFC 8693 §2.2.1).
#[derive(Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ExchangeResponse {
    /// The issued token (a Txn-Token here, although the member is named for access tokens).
    pub access_token: String,
    /// Its type URI.
    pub issued_token_type: String,
    /// `N_A`: a Txn-Token is not an access token.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// The granted scope.
    pub scope: String,
}

impl fmt::Debug for ExchangeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeResponse")
            .field("issued_token_type", &self.issued_token_type)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            form.append_pair(k, v);
        }
        form.finish().into_bytes()
    }

    const BASE: [(&str, &str); 5] = [
        ("grant_type", GRANT_TYPE),
        ("audience", "example.org"),
        ("scope", "orders.read orders.write"),
        ("subject_token", "a.b.c"),
        ("subject_token_type", token_type::ACCESS_TOKEN),
    ];

    #[test]
    fn a_jwt_bearer_request_parses_round_trips_and_is_told_apart() {
        use crate::token::chain::{JWT_BEARER, JWT_SPIFFE_ASSERTION};
        let pairs = [
            ("grant_type", JWT_BEARER),
            ("assertion", "g.g.g"),
            ("scope", "orders"),
            ("client_assertion_type", JWT_SPIFFE_ASSERTION),
            ("client_assertion", "c.c.c"),
            ("client_id", "spiffe://a.example/egress"),
        ];
        let TokenRequest::JwtBearer(request) = TokenRequest::parse(&body(&pairs)).unwrap() else {
            panic!("not a jwt-bearer request");
        };
        assert_eq!(request.assertion, "g.g.g");
        assert_eq!(request.client_assertion.as_deref(), Some("c.c.c"));
        assert_eq!(
            JwtBearerRequest::parse(request.to_form().as_bytes()).unwrap(),
            request
        );
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("g.g.g") && !shown.contains("c.c.c"),
            "{shown}"
        );
        assert!(matches!(
            TokenRequest::parse(&body(&BASE)).unwrap(),
            TokenRequest::Exchange(_)
        ));
        let code = |pairs: &[(&str, &str)]| TokenRequest::parse(&body(pairs)).unwrap_err().code();
        assert_eq!(code(&pairs[..1]), "invalid_request");
        assert_eq!(code(&[pairs[0], pairs[1], pairs[1]]), "invalid_request");
        assert_eq!(code(&[pairs[0], pairs[1], pairs[0]]), "invalid_request");
        assert_eq!(code(&[pairs[0], pairs[1], pairs[4]]), "invalid_request");
        assert_eq!(
            code(&[
                pairs[0],
                pairs[1],
                ("client_assertion_type", "urn:x"),
                pairs[4]
            ]),
            "invalid_client"
        );
        assert_eq!(
            code(&[("grant_type", "password")]),
            "unsupported_grant_type"
        );
    }

    #[test]
    fn a_full_request_parses_and_round_trips() {
        let mut pairs = BASE.to_vec();
        pairs.push(("requested_token_type", token_type::TXN_TOKEN));
        pairs.push(("request_context", r#"{"req_ip":"192.0.2.1"}"#));
        pairs.push(("request_details", r#"{"order":7}"#));
        pairs.push(("unknown", "ignored"));
        let request = ExchangeRequest::parse(&body(&pairs)).unwrap();
        assert_eq!(request.audience, ["example.org"]);
        assert_eq!(
            request.scope.as_ref().unwrap().to_string(),
            "orders.read orders.write"
        );
        assert_eq!(request.request_details.as_ref().unwrap()["order"], 7);
        assert_eq!(
            ExchangeRequest::parse(request.to_form().as_bytes()).unwrap(),
            request
        );
        assert!(!format!("{request:?}").contains("a.b.c"));
    }

    #[test]
    fn a_repeated_single_parameter_is_refused() {
        for name in ["grant_type", "scope", "subject_token", "subject_token_type"] {
            let mut pairs = BASE.to_vec();
            let again = pairs.iter().find(|(k, _)| *k == name).unwrap().1;
            pairs.push((name, again));
            let err = ExchangeRequest::parse(&body(&pairs)).unwrap_err();
            assert_eq!(err, invalid(format!("parameter `{name}` is repeated")));
        }
        let mut pairs = BASE.to_vec();
        pairs.push(("audience", "other.example"));
        assert_eq!(
            ExchangeRequest::parse(&body(&pairs))
                .unwrap()
                .audience
                .len(),
            2
        );
    }

    #[test]
    fn grant_type_and_subject_are_required() {
        let without = |name: &str| {
            let pairs: Vec<_> = BASE.iter().copied().filter(|(k, _)| *k != name).collect();
            ExchangeRequest::parse(&body(&pairs)).unwrap_err()
        };
        assert_eq!(without("grant_type").code(), "invalid_request");
        assert_eq!(without("subject_token").code(), "invalid_request");
        assert_eq!(without("subject_token_type").code(), "invalid_request");
        let mut pairs = BASE.to_vec();
        pairs[0] = ("grant_type", "client_credentials");
        assert_eq!(
            ExchangeRequest::parse(&body(&pairs)).unwrap_err().code(),
            "unsupported_grant_type"
        );
        // An empty value counts as omitted.
        let mut pairs = BASE.to_vec();
        pairs[3] = ("subject_token", "");
        assert_eq!(
            ExchangeRequest::parse(&body(&pairs)).unwrap_err(),
            invalid("parameter `subject_token` is missing")
        );
    }

    #[test]
    fn actor_token_needs_its_type() {
        let mut pairs = BASE.to_vec();
        pairs.push(("actor_token", "x.y.z"));
        assert_eq!(
            ExchangeRequest::parse(&body(&pairs)).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn context_must_be_one_small_object_without_repeated_names() {
        for bad in [
            "[1]",
            "\"text\"",
            "{",
            r#"{"a":1,"a":2}"#,
            &format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_CONTEXT_BYTES)),
        ] {
            for name in ["request_context", "request_details"] {
                let mut pairs = BASE.to_vec();
                pairs.push((name, bad));
                let err = ExchangeRequest::parse(&body(&pairs)).unwrap_err();
                assert_eq!(err.code(), "invalid_request", "{name} = {bad}");
            }
        }
    }

    #[test]
    fn context_numbers_survive_a_round_trip_exactly() {
        // Found by the `token_request` fuzz target: without serde_json's exact float
        // parsing, a long integer read as a float came back as a different number.
        for text in [
            r#"{"n":9999999999999999999999999999999999999999999999999999999999999}"#,
            r#"{"n":0.30000000000000004,"m":2.2250738585072011e-308,"k":-0}"#,
            r#"{"n":1E15,"m":[1e-7,123456789012345678901234567890e-10]}"#,
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push(("request_details", text));
            let request = ExchangeRequest::parse(&body(&pairs)).unwrap();
            let again = ExchangeRequest::parse(request.to_form().as_bytes()).unwrap();
            assert_eq!(again, request, "{text}");
            assert_eq!(again.to_form(), request.to_form(), "{text}");
        }
    }

    #[test]
    fn the_context_limit_is_on_the_object_as_written_back() {
        // `1E15` is 4 bytes received and 18 written back (`1000000000000000.0`).
        let members: Vec<String> = (0..300).map(|i| format!(r#""{i}":1E15"#)).collect();
        let text = format!("{{{}}}", members.join(","));
        assert!(text.len() < MAX_CONTEXT_BYTES);
        let mut pairs = BASE.to_vec();
        pairs.push(("request_context", &text));
        let err = ExchangeRequest::parse(&body(&pairs)).unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        // Whitespace the compact form drops does not count.
        let spaced = format!("{{\n{}\n}}", " ".repeat(MAX_CONTEXT_BYTES) + r#""a": 1"#);
        let mut pairs = BASE.to_vec();
        pairs.push(("request_context", &spaced));
        assert!(ExchangeRequest::parse(&body(&pairs)).is_ok());
    }

    #[test]
    fn oversized_bodies_are_refused() {
        let big = vec![b'a'; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            ExchangeRequest::parse(&big).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn scopes_follow_rfc_6749() {
        let scope = Scope::parse("b a c").unwrap();
        assert_eq!(scope.to_string(), "a b c");
        assert!(Scope::parse("a").unwrap().is_subset_of(&scope));
        assert!(!Scope::parse("a d").unwrap().is_subset_of(&scope));
        let wide = Scope::parse("a d e").unwrap();
        assert_eq!(wide.excess_over(&scope).collect::<Vec<_>>(), ["d", "e"]);
        for bad in ["", " a", "a ", "a  b", "a\tb", "a\"b", "a\\b", "é"] {
            assert_eq!(
                Scope::parse(bad).unwrap_err().code(),
                "invalid_scope",
                "{bad:?}"
            );
        }
        assert!(Scope::parse(&"a".repeat(129)).is_err());
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        assert!(Scope::parse(&many.join(" ")).is_err());
        assert_eq!(
            Scope::from_tokens(["x", "y"]).unwrap(),
            Scope::parse("y x").unwrap()
        );
    }

    #[test]
    fn errors_have_rfc_6749_bodies() {
        let err = ExchangeError::InvalidScope("too wide".into());
        let body: Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"], "invalid_scope");
        assert_eq!(body["error_description"], "too wide");
        assert_eq!(err.status(), 400);
        assert_eq!(ExchangeError::ServerError(String::new()).status(), 500);
    }
}
