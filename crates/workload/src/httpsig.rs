//! HTTP Message Signatures (RFC 9421) as profiled by draft-ietf-wimse-http-signature
//! (editor's copy ≈ -07, SPECS §5 and §7): the request signature a workload makes with
//! its WIT's `cnf` key, and its verification.
//!
//! The signature covers `@method`, `@request-target`, `workload-identity-token`, and, when
//! present, `content-type`, `content-digest`, `authorization` and `txn-token`; its
//! parameters are `created`, `expires`, `nonce`, `tag="wimse-workload-to-workload"` and
//! `wimse-aud` (the target URI without query). `keyid` and `alg` are refused: the key and
//! algorithm come only from the verified WIT. A request with a body must carry a
//! `Content-Digest` (RFC 9530, `sha-256`) that matches it.
//!
//! Responses are not signed (yet): a request with `wimse-sign-response` is refused with a
//! reason, since the profile forbids answering it with an unsigned success.

use crate::sf::{self, BareItem, Item, Member, Params};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use wimse_core::jose::{Algorithm, PublicKey, SigningKey};

/// The label wimse signs under (profile: "if several, label SHOULD be `wimse`").
pub const LABEL: &str = "wimse";
/// The profile's mandatory `tag`.
pub const TAG: &str = "wimse-workload-to-workload";
/// Header fields that must be covered whenever the request carries them.
pub const COVER_WHEN_PRESENT: [&str; 4] = [
    "content-type",
    "content-digest",
    "authorization",
    "txn-token",
];
/// The identity header, always covered.
pub const WIT_FIELD: &str = "workload-identity-token";

/// Why a message signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// `Signature-Input` or `Signature` is missing.
    #[error("request lacks the `{0}` header")]
    MissingHeader(&'static str),
    /// A signature field is not a valid structured field.
    #[error("`{field}` is malformed: {source}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// Why.
        source: sf::SfError,
    },
    /// The fields do not hold one usable signature.
    #[error("signature fields are unusable: {0}")]
    Shape(String),
    /// A component the profile requires is not covered.
    #[error("signature does not cover `{0}`")]
    NotCovered(String),
    /// A covered component is not in the request, or is not supported.
    #[error("covered component `{0}` is missing or unsupported")]
    Component(String),
    /// A signature parameter is missing or has a refused value.
    #[error("signature parameter `{0}` is missing or invalid")]
    Param(&'static str),
    /// A parameter the profile forbids or this verifier does not know.
    #[error("signature parameter `{0}` is not allowed")]
    ForbiddenParam(String),
    /// `wimse-aud` names another service.
    #[error("signature audience `{found}` does not match `{expected}`")]
    WrongAudience {
        /// This service.
        expected: String,
        /// What the signature names.
        found: String,
    },
    /// `expires` has passed.
    #[error("signature expired at {0}")]
    Expired(i64),
    /// `created` is in the future, or the lifetime is longer than allowed.
    #[error("signature lifetime is not acceptable")]
    Lifetime,
    /// The client asked for a signed response, which this verifier cannot give.
    #[error("a signed response was requested, and response signing is not supported")]
    ResponseSigningRequested,
    /// The body has no `Content-Digest`, or it does not match.
    #[error("content digest is missing or does not match the body")]
    ContentDigest,
    /// The signature does not verify with the WIT's key.
    #[error("message signature does not verify")]
    BadSignature,
    /// Signing failed.
    #[error("cannot sign the request: {0}")]
    Signing(String),
}

/// The parameters of a signature, as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureParams {
    /// `created`.
    pub created: i64,
    /// `expires`.
    pub expires: i64,
    /// `nonce`.
    pub nonce: String,
    /// `wimse-aud`.
    pub audience: String,
}

/// The parts of a request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// The request target: path and query as in the request line (origin form).
    pub request_target: &'a str,
    /// The header fields.
    pub headers: &'a HeaderMap,
}

/// `Content-Digest: sha-256=:<base64>:` for `body` (RFC 9530).
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        STANDARD.encode(wimse_core::digest::sha256(body))
    )
}

/// Checks that `Content-Digest` holds a `sha-256` digest equal to the body's.
pub fn check_content_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), SigError> {
    let value = field_value(headers, "content-digest").ok_or(SigError::ContentDigest)?;
    let dict = sf::parse_dictionary(&value).map_err(|_| SigError::ContentDigest)?;
    let expected = wimse_core::digest::sha256(body);
    match dict.iter().find(|(k, _)| k == "sha-256") {
        Some((
            _,
            Member::Item(Item {
                bare: BareItem::Bytes(d),
                ..
            }),
        )) if d.as_slice() == expected.as_slice() => Ok(()),
        _ => Err(SigError::ContentDigest),
    }
}

/// A field's value for the signature base: each line trimmed, lines joined by `, `
/// (RFC 9421 §2.1); `None` if absent or not visible ASCII.
fn field_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut lines = Vec::new();
    for value in headers.get_all(name) {
        lines.push(value.to_str().ok()?.trim().to_owned());
    }
    (!lines.is_empty()).then(|| lines.join(", "))
}

fn component_value(req: &RequestView<'_>, item: &Item) -> Result<String, SigError> {
    let BareItem::String(name) = &item.bare else {
        return Err(SigError::Shape(
            "a component identifier is not a string".into(),
        ));
    };
    // Component parameters (`sf`, `key`, `bs`, `req`, `tr`, `name`) are not part of the
    // request profile; refuse rather than sign something we do not canonicalize.
    if !item.params.0.is_empty() {
        return Err(SigError::Component(name.clone()));
    }
    match name.as_str() {
        "@method" => Ok(req.method.to_owned()),
        "@request-target" => Ok(req.request_target.to_owned()),
        "@path" => Ok(req
            .request_target
            .split('?')
            .next()
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned()),
        "@query" => Ok(req
            .request_target
            .find('?')
            .and_then(|i| req.request_target.get(i..))
            .unwrap_or("?")
            .to_owned()),
        field if !field.starts_with('@') && field.bytes().all(|b| !b.is_ascii_uppercase()) => {
            field_value(req.headers, field).ok_or_else(|| SigError::Component(name.clone()))
        }
        _ => Err(SigError::Component(name.clone())),
    }
}

/// The signature base (RFC 9421 §2.5) for `components` and `params`.
pub fn signature_base(
    req: &RequestView<'_>,
    components: &[Item],
    params: &Params,
) -> Result<String, SigError> {
    let mut base = String::new();
    let mut seen: Vec<&BareItem> = Vec::new();
    for item in components {
        if seen.contains(&&item.bare) {
            return Err(SigError::Shape("a component is covered twice".into()));
        }
        seen.push(&item.bare);
        let value = component_value(req, item)?;
        sf::write_bare_item(&mut base, &item.bare);
        sf::write_params(&mut base, &item.params);
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    sf::write_inner_list(&mut base, components, params);
    Ok(base)
}

fn string_item(name: &str) -> Item {
    Item {
        bare: BareItem::String(name.to_owned()),
        params: Params::default(),
    }
}

/// Signs a request: returns the `Signature-Input` and `Signature` values.
///
/// The request's headers must already hold `Workload-Identity-Token` and, when there is a
/// body, `Content-Digest`.
pub fn sign_request(
    req: &RequestView<'_>,
    key: &SigningKey,
    audience: &str,
    created: i64,
    lifetime: i64,
    nonce: &str,
) -> Result<(String, String), SigError> {
    let mut components = vec![
        string_item("@method"),
        string_item("@request-target"),
        string_item(WIT_FIELD),
    ];
    for name in COVER_WHEN_PRESENT {
        if req.headers.contains_key(name) {
            components.push(string_item(name));
        }
    }
    let params = Params(vec![
        ("created".into(), BareItem::Integer(created)),
        (
            "expires".into(),
            BareItem::Integer(created.saturating_add(lifetime)),
        ),
        ("nonce".into(), BareItem::String(nonce.to_owned())),
        ("tag".into(), BareItem::String(TAG.into())),
        (
            "wimse-aud".into(),
            BareItem::String(wimse_core::token::wpt::audience_of(audience).to_owned()),
        ),
    ]);
    let base = signature_base(req, &components, &params)?;
    let signature = key
        .sign(base.as_bytes())
        .map_err(|e| SigError::Signing(e.to_string()))?;
    let mut input = format!("{LABEL}=");
    sf::write_inner_list(&mut input, &components, &params);
    Ok((input, format!("{LABEL}=:{}:", STANDARD.encode(signature))))
}

/// What a verifier requires of a signature besides the key.
#[derive(Debug, Clone, Copy)]
pub struct SigPolicy<'a> {
    /// This service's audience for the request (target URI without query).
    pub audience: &'a str,
    /// Now, Unix seconds.
    pub now: i64,
    /// Allowed clock skew, seconds.
    pub leeway: i64,
    /// Longest accepted `expires - now`, seconds.
    pub max_lifetime: i64,
}

/// Picks the signature to verify: the `wimse` label, or the only one.
fn select<'d>(
    dict: &'d sf::Dictionary,
    what: &'static str,
) -> Result<(&'d str, &'d Member), SigError> {
    if let Some((label, member)) = dict.iter().find(|(k, _)| k == LABEL) {
        return Ok((label, member));
    }
    match dict.as_slice() {
        [(label, member)] => Ok((label, member)),
        [] => Err(SigError::MissingHeader(what)),
        _ => Err(SigError::Shape(
            "several signatures and none labelled `wimse`".into(),
        )),
    }
}

fn joined(headers: &HeaderMap, name: &'static str) -> Result<String, SigError> {
    field_value(headers, name).ok_or(SigError::MissingHeader(name))
}

/// Verifies the request's message signature with the WIT's key and algorithm; returns
/// its parameters (the caller checks the nonce against its replay cache).
///
/// `body` is the full request body; when it is non-empty `Content-Digest` must be covered
/// and match.
pub fn verify_request(
    req: &RequestView<'_>,
    body: &[u8],
    key: &PublicKey,
    alg: Algorithm,
    policy: &SigPolicy<'_>,
) -> Result<SignatureParams, SigError> {
    let input = joined(req.headers, "signature-input")?;
    let signature = joined(req.headers, "signature")?;
    let inputs = sf::parse_dictionary(&input).map_err(|source| SigError::Malformed {
        field: "Signature-Input",
        source,
    })?;
    let signatures = sf::parse_dictionary(&signature).map_err(|source| SigError::Malformed {
        field: "Signature",
        source,
    })?;
    let (label, member) = select(&inputs, "signature-input")?;
    let Member::InnerList(components, params) = member else {
        return Err(SigError::Shape(
            "`Signature-Input` member is not a list".into(),
        ));
    };
    let sig_bytes = match signatures.iter().find(|(k, _)| k == label) {
        Some((
            _,
            Member::Item(Item {
                bare: BareItem::Bytes(b),
                params,
            }),
        )) if params.0.is_empty() => b,
        Some(_) => {
            return Err(SigError::Shape(
                "`Signature` member is not a byte sequence".into(),
            ));
        }
        None => {
            return Err(SigError::Shape(format!(
                "no `Signature` for label `{label}`"
            )));
        }
    };

    // Required coverage (profile §"Request MUST cover").
    let covers = |name: &str| {
        components
            .iter()
            .any(|c| c.bare == BareItem::String(name.to_owned()))
    };
    for name in ["@method", "@request-target", WIT_FIELD] {
        if !covers(name) {
            return Err(SigError::NotCovered(name.to_owned()));
        }
    }
    for name in COVER_WHEN_PRESENT {
        if req.headers.contains_key(name) && !covers(name) {
            return Err(SigError::NotCovered(name.to_owned()));
        }
    }
    if !body.is_empty() {
        if !covers("content-digest") {
            return Err(SigError::NotCovered("content-digest".into()));
        }
        check_content_digest(req.headers, body)?;
    }

    let checked = check_params(params, policy)?;
    let base = signature_base(req, components, params)?;
    key.verify(alg, base.as_bytes(), sig_bytes)
        .map_err(|_| SigError::BadSignature)?;
    Ok(checked)
}

fn check_params(params: &Params, policy: &SigPolicy<'_>) -> Result<SignatureParams, SigError> {
    let mut created = None;
    let mut expires = None;
    let mut nonce = None;
    let mut tag = None;
    let mut audience = None;
    for (key, value) in &params.0 {
        match (key.as_str(), value) {
            ("created", BareItem::Integer(v)) => created = Some(*v),
            ("expires", BareItem::Integer(v)) => expires = Some(*v),
            ("nonce", BareItem::String(v)) if !v.is_empty() => nonce = Some(v.clone()),
            ("tag", BareItem::String(v)) => tag = Some(v.as_str()),
            ("wimse-aud", BareItem::String(v)) => audience = Some(v.clone()),
            ("wimse-sign-response", BareItem::Boolean(false)) => {}
            ("wimse-sign-response", BareItem::Boolean(true)) => {
                return Err(SigError::ResponseSigningRequested);
            }
            ("created", _) => return Err(SigError::Param("created")),
            ("expires", _) => return Err(SigError::Param("expires")),
            ("nonce", _) => return Err(SigError::Param("nonce")),
            ("tag", _) => return Err(SigError::Param("tag")),
            ("wimse-aud", _) => return Err(SigError::Param("wimse-aud")),
            // keyid/alg: MUST NOT be used (key and alg come from the WIT); others unknown.
            (other, _) => return Err(SigError::ForbiddenParam(other.to_owned())),
        }
    }
    let created = created.ok_or(SigError::Param("created"))?;
    let expires = expires.ok_or(SigError::Param("expires"))?;
    let nonce = nonce.ok_or(SigError::Param("nonce"))?;
    if tag != Some(TAG) {
        return Err(SigError::Param("tag"));
    }
    let audience = audience.ok_or(SigError::Param("wimse-aud"))?;
    if audience != policy.audience {
        return Err(SigError::WrongAudience {
            expected: policy.audience.to_owned(),
            found: audience,
        });
    }
    if expires.saturating_add(policy.leeway) <= policy.now {
        return Err(SigError::Expired(expires));
    }
    if created > policy.now.saturating_add(policy.leeway)
        || expires < created
        || expires
            > policy
                .now
                .saturating_add(policy.max_lifetime.saturating_add(policy.leeway))
    {
        return Err(SigError::Lifetime);
    }
    Ok(SignatureParams {
        created,
        expires,
        nonce,
        audience,
    })
}
