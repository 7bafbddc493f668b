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
//! Responses are signed the same way with the responder's WIT key ([`sign_response`],
//! [`verify_response`]): they cover `@status`, the responder's WIT, `content-type` and
//! `content-digest` when present, and the request's `@method;req` and
//! `@request-target;req`, with `wimse-req-nonce` = the request signature's nonce. A
//! client asks for one with `wimse-sign-response`; the layer then signs the response or,
//! when it cannot, answers 501 rather than an unsigned success.
//!
//! A peer may cover more than the profile asks, and the verifier rebuilds whatever RFC
//! 9421 defines: every derived component (`@query-param;name=` included, parsed and
//! re-encoded as §2.2.8 says, refused when the parameter repeats), and fields with the
//! `sf` parameter (registered structured fields, re-serialized), `key` (a dictionary
//! member) or `bs` (each line as a byte sequence: how values that are not ASCII are
//! covered), and in a response `req` with any of them. `tr` is refused: trailers arrive
//! after the request is verified. A component that cannot be rebuilt fails the signature.

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
    /// A response's `wimse-req-nonce` is missing, unexpected, or not the request's nonce.
    #[error("response signature's `wimse-req-nonce` does not match the request's nonce")]
    ResponseNonce,
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
    /// `wimse-aud` (requests only).
    pub audience: Option<String>,
    /// `wimse-sign-response` (requests only): the client requires a signed response.
    pub sign_response: bool,
    /// `wimse-req-nonce` (responses only): the nonce of the request answered.
    pub req_nonce: Option<String>,
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
    /// The scheme the request was sent over (`@scheme`, `@target-uri`), when known.
    pub scheme: Option<&'a str>,
    /// The authority it was sent to (`Host` or `:authority`; `@authority`,
    /// `@target-uri`), when known.
    pub authority: Option<&'a str>,
}

impl RequestView<'_> {
    /// `@scheme`: the scheme, lowercased (RFC 9421 §2.2.4).
    fn scheme(&self) -> Option<String> {
        self.scheme.map(str::to_ascii_lowercase)
    }

    /// `@authority`: host lowercased, the scheme's default port dropped (RFC 9421
    /// §2.2.3, RFC 9110 §4.2.3).
    fn authority(&self) -> Option<String> {
        let authority = self.authority?.to_ascii_lowercase();
        let default_port = match self.scheme()?.as_str() {
            "https" => ":443",
            "http" => ":80",
            _ => "",
        };
        Some(match authority.strip_suffix(default_port) {
            Some(host) if !default_port.is_empty() => host.to_owned(),
            _ => authority,
        })
    }
}

/// The request target as a signature covers it: the URI's path and query (origin form).
pub fn request_target(uri: &http::Uri) -> &str {
    uri.path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
}

/// `Content-Digest: sha-256=:<base64>:` for `body` (RFC 9530).
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        STANDARD.encode(wimse_core::digest::sha256(body))
    )
}

/// Checks `Content-Digest` against the body (RFC 9530): it must hold a `sha-256` or
/// `sha-512` digest, and every digest it holds of those two must be the body's. Other
/// algorithms are ignored (RFC 9530 §2), so they can neither satisfy nor fail the check.
pub fn check_content_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), SigError> {
    let value = field_value(headers, "content-digest").ok_or(SigError::ContentDigest)?;
    let dict = sf::parse_dictionary(&value).map_err(|_| SigError::ContentDigest)?;
    let mut checked = 0;
    for (algorithm, member) in &dict {
        let expected: &[u8] = match algorithm.as_str() {
            "sha-256" => &wimse_core::digest::sha256(body),
            "sha-512" => &wimse_core::digest::sha512(body),
            _ => continue,
        };
        match member {
            Member::Item(Item {
                bare: BareItem::Bytes(d),
                ..
            }) if d.as_slice() == expected => checked += 1,
            _ => return Err(SigError::ContentDigest),
        }
    }
    if checked == 0 {
        return Err(SigError::ContentDigest);
    }
    Ok(())
}

/// A field's value for the signature base: each line trimmed, lines joined by `, `
/// (RFC 9421 §2.1); `None` if absent or not visible ASCII (cover it with `bs` then).
fn field_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut lines = Vec::new();
    for value in headers.get_all(name) {
        lines.push(value.to_str().ok()?.trim().to_owned());
    }
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// The structured type of the registered fields a signature may cover with `sf` (RFC
/// 9421 §2.1.1: a verifier must know a field's type to re-serialize it). Other fields
/// are covered as they are, or a dictionary's member with `key`.
fn structured_type(field: &str) -> Option<StructuredType> {
    Some(match field {
        "accept-signature"
        | "cdn-cache-control"
        | "content-digest"
        | "priority"
        | "repr-digest"
        | "signature"
        | "signature-input"
        | "want-content-digest"
        | "want-repr-digest" => StructuredType::Dictionary,
        "accept-ch" | "cache-status" | "client-cert-chain" | "proxy-status" => StructuredType::List,
        "client-cert" => StructuredType::Item,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy)]
enum StructuredType {
    Dictionary,
    List,
    Item,
}

/// A component identifier's parameters (RFC 9421 §2.1, §2.2.8, §2.4), each at most once
/// (the structured-field reader refuses a repeated one).
#[derive(Debug, Default)]
struct ComponentParams {
    /// `sf`: the field re-serialized as its structured type.
    sf: bool,
    /// `key`: one member of a dictionary field.
    key: Option<String>,
    /// `bs`: each field line as a byte sequence.
    bs: bool,
    /// `req`: the component of the request a response answers.
    req: bool,
    /// `name`: the query parameter of `@query-param`.
    name: Option<String>,
}

impl ComponentParams {
    /// Reads `name`'s parameters; refuses unknown ones, `tr` (trailers are not part of
    /// what is verified), and combinations RFC 9421 forbids.
    fn read(name: &str, params: &Params) -> Result<Self, SigError> {
        let refused = || SigError::Component(name.to_owned());
        let mut read = ComponentParams::default();
        for (key, value) in &params.0 {
            match (key.as_str(), value) {
                ("sf", BareItem::Boolean(true)) => read.sf = true,
                ("bs", BareItem::Boolean(true)) => read.bs = true,
                ("req", BareItem::Boolean(true)) => read.req = true,
                ("key", BareItem::String(member)) => read.key = Some(member.clone()),
                ("name", BareItem::String(query)) => read.name = Some(query.clone()),
                _ => return Err(refused()),
            }
        }
        let field_params = read.sf || read.bs || read.key.is_some();
        let misplaced = if is_field_name(name) {
            read.name.is_some()
        } else {
            field_params || (read.name.is_some() != (name == "@query-param"))
        };
        // `bs` keeps the bytes as sent; `sf` and `key` re-serialize them (§2.1.3).
        if misplaced || (read.bs && (read.sf || read.key.is_some())) {
            return Err(refused());
        }
        Ok(read)
    }
}

/// A covered field's value as `params` say (RFC 9421 §2.1).
fn field_component(
    headers: &HeaderMap,
    name: &str,
    params: &ComponentParams,
) -> Result<String, SigError> {
    let missing = || SigError::Component(name.to_owned());
    if params.bs {
        // §2.1.3: each line, trimmed, as a byte sequence: for values that are not ASCII.
        let lines: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|line| {
                let mut out = String::new();
                let bytes = line.as_bytes().trim_ascii();
                sf::write_bare_item(&mut out, &BareItem::Bytes(bytes.to_vec()));
                out
            })
            .collect();
        return if lines.is_empty() {
            Err(missing())
        } else {
            Ok(lines.join(", "))
        };
    }
    let value = field_value(headers, name).ok_or_else(missing)?;
    let malformed = |_: sf::SfError| missing();
    if let Some(key) = &params.key {
        // §2.1.2: the member, re-serialized; a member that is not there fails.
        let dictionary = sf::parse_dictionary(&value).map_err(malformed)?;
        let (_, member) = dictionary
            .iter()
            .find(|(k, _)| k == key)
            .ok_or_else(missing)?;
        let mut out = String::new();
        sf::write_member(&mut out, member);
        return Ok(out);
    }
    if params.sf {
        // §2.1.1: re-serialized as the field's type, which must be known.
        return match structured_type(name).ok_or_else(missing)? {
            StructuredType::Dictionary => Ok(sf::write_dictionary(
                &sf::parse_dictionary(&value).map_err(malformed)?,
            )),
            StructuredType::List => Ok(sf::write_list(&sf::parse_list(&value).map_err(malformed)?)),
            StructuredType::Item => {
                let mut out = String::new();
                sf::write_item(&mut out, &sf::parse_item(&value).map_err(malformed)?);
                Ok(out)
            }
        };
    }
    Ok(value)
}

/// `@query-param;name=...` (RFC 9421 §2.2.8): the one query parameter whose name, parsed
/// as `application/x-www-form-urlencoded` and percent-encoded again, is `name`; its value
/// the same way. A parameter that appears more than once cannot be covered.
fn query_param(request_target: &str, name: &str) -> Result<String, SigError> {
    let query = request_target.split_once('?').map_or("", |(_, q)| q);
    // WHATWG's percent-encode after encoding with the form set, spaces as `%20`: what
    // `byte_serialize` writes but for spaces, which it alone writes as `+`.
    let encode = |text: &str| {
        form_urlencoded::byte_serialize(text.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if encode(&key) == name {
            if found.is_some() {
                return Err(SigError::Component(format!(
                    "@query-param;name=\"{name}\" (repeated)"
                )));
            }
            found = Some(encode(&value));
        }
    }
    found.ok_or_else(|| SigError::Component(format!("@query-param;name=\"{name}\"")))
}

/// A derived component of a request (RFC 9421 §2.2) or one of its header fields.
fn request_component(req: &RequestView<'_>, item: &Item) -> Result<String, SigError> {
    let BareItem::String(name) = &item.bare else {
        return Err(SigError::Shape(
            "a component identifier is not a string".into(),
        ));
    };
    let params = ComponentParams::read(name, &item.params)?;
    if params.req {
        // Only a response's signature covers components of the request it answers.
        return Err(SigError::Component(name.clone()));
    }
    request_value(req, name, &params)
}

/// The value of the request component `name` with `params` (its `req` already handled).
fn request_value(
    req: &RequestView<'_>,
    name: &str,
    params: &ComponentParams,
) -> Result<String, SigError> {
    let missing = || SigError::Component(name.to_owned());
    match name {
        "@method" => Ok(req.method.to_owned()),
        "@request-target" => Ok(req.request_target.to_owned()),
        "@scheme" => req.scheme().ok_or_else(missing),
        "@authority" => req.authority().ok_or_else(missing),
        "@target-uri" => match (req.scheme(), req.authority()) {
            (Some(scheme), Some(authority)) => {
                Ok(format!("{scheme}://{authority}{}", req.request_target))
            }
            _ => Err(missing()),
        },
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
        "@query-param" => query_param(
            req.request_target,
            params.name.as_deref().unwrap_or_default(),
        ),
        field if is_field_name(field) => field_component(req.headers, field, params),
        _ => Err(missing()),
    }
}

fn is_field_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('@') && name.bytes().all(|b| !b.is_ascii_uppercase())
}

/// A component of a response: `@status`, a response header field, or (with the `req`
/// parameter) a component of the request it answers.
fn response_component(resp: &ResponseView<'_>, item: &Item) -> Result<String, SigError> {
    let BareItem::String(name) = &item.bare else {
        return Err(SigError::Shape(
            "a component identifier is not a string".into(),
        ));
    };
    let params = ComponentParams::read(name, &item.params)?;
    if params.req {
        return request_value(&resp.request, name, &params);
    }
    match name.as_str() {
        "@status" if params.name.is_none() => Ok(format!("{:03}", resp.status)),
        field if is_field_name(field) => field_component(resp.headers, field, &params),
        _ => Err(SigError::Component(name.clone())),
    }
}

/// The signature base (RFC 9421 §2.5) of `components` and `params`, each component's
/// value given by `value`.
fn base_of(
    components: &[Item],
    params: &Params,
    value: impl Fn(&Item) -> Result<String, SigError>,
) -> Result<String, SigError> {
    let mut base = String::new();
    let mut seen: Vec<&Item> = Vec::new();
    for item in components {
        if seen.contains(&item) {
            return Err(SigError::Shape("a component is covered twice".into()));
        }
        seen.push(item);
        let value = value(item)?;
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

/// The signature base (RFC 9421 §2.5) of a request for `components` and `params`.
pub fn signature_base(
    req: &RequestView<'_>,
    components: &[Item],
    params: &Params,
) -> Result<String, SigError> {
    base_of(components, params, |item| request_component(req, item))
}

/// The signature base (RFC 9421 §2.5) of a response for `components` and `params`.
pub fn response_signature_base(
    resp: &ResponseView<'_>,
    components: &[Item],
    params: &Params,
) -> Result<String, SigError> {
    base_of(components, params, |item| response_component(resp, item))
}

fn string_item(name: &str) -> Item {
    Item {
        bare: BareItem::String(name.to_owned()),
        params: Params::default(),
    }
}

fn req_item(name: &str) -> Item {
    Item {
        bare: BareItem::String(name.to_owned()),
        params: Params(vec![("req".into(), BareItem::Boolean(true))]),
    }
}

/// What a request signature must cover (profile: "Request MUST cover"), in the order
/// this signer lists it: `@method`, `@request-target`, the WIT, then each of
/// [`COVER_WHEN_PRESENT`] the request carries.
fn request_coverage(headers: &HeaderMap) -> Vec<Item> {
    let mut components: Vec<Item> = ["@method", "@request-target", WIT_FIELD]
        .into_iter()
        .map(string_item)
        .collect();
    components.extend(
        COVER_WHEN_PRESENT
            .into_iter()
            .filter(|name| headers.contains_key(*name))
            .map(string_item),
    );
    components
}

/// What a response signature must cover, in the order this signer lists it: `@status`,
/// the WIT, each of [`RESPONSE_COVER_WHEN_PRESENT`] the response carries, then the
/// request's `@method;req` and `@request-target;req`.
fn response_coverage(headers: &HeaderMap) -> Vec<Item> {
    let mut components = vec![string_item("@status"), string_item(WIT_FIELD)];
    components.extend(
        RESPONSE_COVER_WHEN_PRESENT
            .into_iter()
            .filter(|name| headers.contains_key(*name))
            .map(string_item),
    );
    components.push(req_item("@method"));
    components.push(req_item("@request-target"));
    components
}

/// The parameters every signature carries, then `extra`.
fn common_params(created: i64, lifetime: i64, nonce: &str, extra: &[(&str, BareItem)]) -> Params {
    let mut params = vec![
        ("created".into(), BareItem::Integer(created)),
        (
            "expires".into(),
            BareItem::Integer(created.saturating_add(lifetime)),
        ),
        ("nonce".into(), BareItem::String(nonce.to_owned())),
        ("tag".into(), BareItem::String(TAG.into())),
    ];
    params.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    Params(params)
}

/// Signs `base` and serializes the two header values.
fn sign_base(
    key: &SigningKey,
    base: &str,
    components: &[Item],
    params: &Params,
) -> Result<(String, String), SigError> {
    let signature = key
        .sign(base.as_bytes())
        .map_err(|e| SigError::Signing(e.to_string()))?;
    let mut input = format!("{LABEL}=");
    sf::write_inner_list(&mut input, components, params);
    Ok((input, format!("{LABEL}=:{}:", STANDARD.encode(signature))))
}

/// Options of a request signature.
#[derive(Debug, Clone, Copy)]
pub struct RequestSigning<'a> {
    /// The target URI (`wimse-aud` is it without query).
    pub audience: &'a str,
    /// `created`, Unix seconds.
    pub created: i64,
    /// `expires - created`, seconds.
    pub lifetime: i64,
    /// A fresh nonce.
    pub nonce: &'a str,
    /// Ask the server to sign its response (`wimse-sign-response`).
    pub sign_response: bool,
}

/// Signs a request: returns the `Signature-Input` and `Signature` values.
///
/// The request's headers must already hold `Workload-Identity-Token` and, when there is a
/// body, `Content-Digest`.
pub fn sign_request(
    req: &RequestView<'_>,
    key: &SigningKey,
    signing: &RequestSigning<'_>,
) -> Result<(String, String), SigError> {
    let components = request_coverage(req.headers);
    let mut extra = vec![(
        "wimse-aud",
        BareItem::String(wimse_core::token::wpt::audience_of(signing.audience).to_owned()),
    )];
    if signing.sign_response {
        extra.push(("wimse-sign-response", BareItem::Boolean(true)));
    }
    let params = common_params(signing.created, signing.lifetime, signing.nonce, &extra);
    let base = signature_base(req, &components, &params)?;
    sign_base(key, &base, &components, &params)
}

/// The parts of a response a signature covers, with the request it answers (for the
/// `;req` components).
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    /// The status code.
    pub status: u16,
    /// The response's header fields.
    pub headers: &'a HeaderMap,
    /// The request the response answers.
    pub request: RequestView<'a>,
}

/// Response header fields covered whenever present, besides the WIT.
pub const RESPONSE_COVER_WHEN_PRESENT: [&str; 2] = ["content-type", "content-digest"];

/// Signs a response: returns the `Signature-Input` and `Signature` values. It covers
/// `@status`, the responder's `Workload-Identity-Token`, `content-type` and
/// `content-digest` when present, and the request's `@method` and `@request-target`;
/// `req_nonce` is the request signature's nonce (`wimse-req-nonce`), when it had one.
///
/// The response's headers must already hold `Workload-Identity-Token` and, when there is
/// a body, `Content-Digest`.
pub fn sign_response(
    resp: &ResponseView<'_>,
    key: &SigningKey,
    created: i64,
    lifetime: i64,
    nonce: &str,
    req_nonce: Option<&str>,
) -> Result<(String, String), SigError> {
    let components = response_coverage(resp.headers);
    let extra: Vec<(&str, BareItem)> = req_nonce
        .map(|n| ("wimse-req-nonce", BareItem::String(n.to_owned())))
        .into_iter()
        .collect();
    let params = common_params(created, lifetime, nonce, &extra);
    let base = response_signature_base(resp, &components, &params)?;
    sign_base(key, &base, &components, &params)
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

/// Picks the signature to verify: the `wimse` label (what the profile says a signer
/// SHOULD use), else the only one, else the one signature tagged with the profile's
/// `tag` among others (an intermediary's signatures beside it).
fn select<'d>(
    dict: &'d sf::Dictionary,
    what: &'static str,
) -> Result<(&'d str, &'d Member), SigError> {
    if let Some((label, member)) = dict.iter().find(|(k, _)| k == LABEL) {
        return Ok((label, member));
    }
    let tagged = |member: &Member| match member {
        Member::InnerList(_, params) => params
            .0
            .iter()
            .any(|(k, v)| k == "tag" && *v == BareItem::String(TAG.to_owned())),
        Member::Item(_) => false,
    };
    match dict.as_slice() {
        [(label, member)] => Ok((label, member)),
        [] => Err(SigError::MissingHeader(what)),
        several => {
            let mut ours = several.iter().filter(|(_, m)| tagged(m));
            match (ours.next(), ours.next()) {
                (Some((label, member)), None) => Ok((label, member)),
                _ => Err(SigError::Shape(
                    "several signatures, none labelled `wimse` and not exactly one with the \
                     profile's tag"
                        .into(),
                )),
            }
        }
    }
}

fn joined(headers: &HeaderMap, name: &'static str) -> Result<String, SigError> {
    field_value(headers, name).ok_or(SigError::MissingHeader(name))
}

/// The signature's covered components, parameters and bytes, from the two fields.
fn parse_signature(headers: &HeaderMap) -> Result<(Vec<Item>, Params, Vec<u8>), SigError> {
    let input = joined(headers, "signature-input")?;
    let signature = joined(headers, "signature")?;
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
    match signatures.iter().find(|(k, _)| k == label) {
        Some((
            _,
            Member::Item(Item {
                bare: BareItem::Bytes(b),
                params: sig_params,
            }),
        )) if sig_params.0.is_empty() => Ok((components.clone(), params.clone(), b.clone())),
        Some(_) => Err(SigError::Shape(
            "`Signature` member is not a byte sequence".into(),
        )),
        None => Err(SigError::Shape(format!(
            "no `Signature` for label `{label}`"
        ))),
    }
}

/// Checks that `components` cover each of `required`, and `Content-Digest` (matching
/// `body`) when there is a body.
fn check_coverage(
    components: &[Item],
    required: &[Item],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), SigError> {
    let name = |item: &Item| match (&item.bare, item.params.0.is_empty()) {
        (BareItem::String(n), true) => n.clone(),
        (BareItem::String(n), false) => format!("{n};req"),
        _ => String::new(),
    };
    if let Some(missing) = required.iter().find(|r| !components.contains(r)) {
        return Err(SigError::NotCovered(name(missing)));
    }
    let digest_covered = components.contains(&string_item("content-digest"));
    if !body.is_empty() && !digest_covered {
        return Err(SigError::NotCovered("content-digest".into()));
    }
    // A covered digest is checked even against an empty body: otherwise the body could be
    // stripped from a signed message and the signed digest would go unread.
    if digest_covered || headers.contains_key("content-digest") {
        check_content_digest(headers, body)?;
    }
    Ok(())
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
    let (components, params, sig_bytes) = parse_signature(req.headers)?;
    check_coverage(
        &components,
        &request_coverage(req.headers),
        req.headers,
        body,
    )?;

    let checked = parse_params(&params)?;
    if checked.req_nonce.is_some() {
        return Err(SigError::ForbiddenParam("wimse-req-nonce".into()));
    }
    let audience = checked
        .audience
        .as_deref()
        .ok_or(SigError::Param("wimse-aud"))?;
    if !wimse_core::token::same_audience(audience, policy.audience) {
        return Err(SigError::WrongAudience {
            expected: policy.audience.to_owned(),
            found: audience.to_owned(),
        });
    }
    check_lifetime(&checked, policy.now, policy.leeway, policy.max_lifetime)?;
    let base = signature_base(req, &components, &params)?;
    key.verify(alg, base.as_bytes(), &sig_bytes)
        .map_err(|_| SigError::BadSignature)?;
    Ok(checked)
}

/// What a client requires of a signed response besides the key.
#[derive(Debug, Clone, Copy)]
pub struct ResponsePolicy<'a> {
    /// The nonce of the request's signature, which `wimse-req-nonce` must equal when
    /// present; `None` when the request had none (then the response must not name one).
    pub req_nonce: Option<&'a str>,
    /// Whether `wimse-req-nonce` must be present (the client asked for the signature).
    pub require_req_nonce: bool,
    /// Now, Unix seconds.
    pub now: i64,
    /// Allowed clock skew, seconds.
    pub leeway: i64,
    /// Longest accepted `expires - now`, seconds.
    pub max_lifetime: i64,
}

/// Verifies a response's message signature with the responder's WIT key and algorithm
/// (the caller verified that WIT first). `body` is the full response body.
pub fn verify_response(
    resp: &ResponseView<'_>,
    body: &[u8],
    key: &PublicKey,
    alg: Algorithm,
    policy: &ResponsePolicy<'_>,
) -> Result<SignatureParams, SigError> {
    let (components, params, sig_bytes) = parse_signature(resp.headers)?;
    check_coverage(
        &components,
        &response_coverage(resp.headers),
        resp.headers,
        body,
    )?;

    let checked = parse_params(&params)?;
    if checked.audience.is_some() {
        return Err(SigError::ForbiddenParam("wimse-aud".into()));
    }
    if checked.sign_response {
        return Err(SigError::ForbiddenParam("wimse-sign-response".into()));
    }
    match (checked.req_nonce.as_deref(), policy.req_nonce) {
        (Some(found), Some(sent)) if found == sent => {}
        (None, _) if !policy.require_req_nonce => {}
        _ => return Err(SigError::ResponseNonce),
    }
    check_lifetime(&checked, policy.now, policy.leeway, policy.max_lifetime)?;
    let base = response_signature_base(resp, &components, &params)?;
    key.verify(alg, base.as_bytes(), &sig_bytes)
        .map_err(|_| SigError::BadSignature)?;
    Ok(checked)
}

/// Reads the signature parameters the profile knows, refusing any other, a wrong `tag`,
/// and a missing `created`, `expires` or `nonce`.
fn parse_params(params: &Params) -> Result<SignatureParams, SigError> {
    let mut created = None;
    let mut expires = None;
    let mut nonce = None;
    let mut tag = None;
    let mut audience = None;
    let mut sign_response = false;
    let mut req_nonce = None;
    for (key, value) in &params.0 {
        match (key.as_str(), value) {
            ("created", BareItem::Integer(v)) => created = Some(*v),
            ("expires", BareItem::Integer(v)) => expires = Some(*v),
            ("nonce", BareItem::String(v)) if !v.is_empty() => nonce = Some(v.clone()),
            ("tag", BareItem::String(v)) => tag = Some(v.as_str()),
            ("wimse-aud", BareItem::String(v)) => audience = Some(v.clone()),
            ("wimse-sign-response", BareItem::Boolean(v)) => sign_response = *v,
            ("wimse-req-nonce", BareItem::String(v)) if !v.is_empty() => {
                req_nonce = Some(v.clone());
            }
            ("created", _) => return Err(SigError::Param("created")),
            ("expires", _) => return Err(SigError::Param("expires")),
            ("nonce", _) => return Err(SigError::Param("nonce")),
            ("tag", _) => return Err(SigError::Param("tag")),
            ("wimse-aud", _) => return Err(SigError::Param("wimse-aud")),
            ("wimse-sign-response", _) => return Err(SigError::Param("wimse-sign-response")),
            ("wimse-req-nonce", _) => return Err(SigError::Param("wimse-req-nonce")),
            // keyid/alg: MUST NOT be used (key and alg come from the WIT); others unknown.
            (other, _) => return Err(SigError::ForbiddenParam(other.to_owned())),
        }
    }
    if tag != Some(TAG) {
        return Err(SigError::Param("tag"));
    }
    Ok(SignatureParams {
        created: created.ok_or(SigError::Param("created"))?,
        expires: expires.ok_or(SigError::Param("expires"))?,
        nonce: nonce.ok_or(SigError::Param("nonce"))?,
        audience,
        sign_response,
        req_nonce,
    })
}

/// Refuses an expired signature, one created in the future, and one that lives longer
/// than `max_lifetime` (from now, or from its `created`: an old signature cannot be kept
/// alive by a far `expires`), each with `leeway` for clocks and rounding (the profile's own
/// example lives 302 s).
fn check_lifetime(
    params: &SignatureParams,
    now: i64,
    leeway: i64,
    max_lifetime: i64,
) -> Result<(), SigError> {
    if params.expires.saturating_add(leeway) <= now {
        return Err(SigError::Expired(params.expires));
    }
    if params.created > now.saturating_add(leeway)
        || params.expires < params.created
        || params.expires.saturating_sub(params.created) > max_lifetime.saturating_add(leeway)
        || params.expires > now.saturating_add(max_lifetime.saturating_add(leeway))
    {
        return Err(SigError::Lifetime);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use proptest::prelude::*;

    /// RFC 9421 §2.2.8's encoding of a name or value: what a signer writes.
    fn encoded(text: &str) -> String {
        form_urlencoded::byte_serialize(text.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    }

    proptest! {
        /// However a client encodes a query (`+` or `%20` for spaces, any characters), a
        /// parameter is found by its name in the RFC's encoding and valued the same way,
        /// and one that appears twice is refused.
        #[test]
        fn a_query_parameter_is_found_by_its_encoded_name_whatever_the_client_wrote(
            name in "\\PC{1,8}",
            value in "\\PC{0,8}",
            other in "\\PC{1,8}",
        ) {
            prop_assume!(other != name);
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(&other, "x")
                .append_pair(&name, &value)
                .finish();
            let target = format!("/p?{query}");
            prop_assert_eq!(query_param(&target, &encoded(&name)).unwrap(), encoded(&value));
            let spaces_as_percent = format!("/p?{}", query.replace('+', "%20"));
            prop_assert_eq!(
                query_param(&spaces_as_percent, &encoded(&name)).unwrap(),
                encoded(&value)
            );
            let twice = format!("{target}&{query}");
            prop_assert!(query_param(&twice, &encoded(&name)).is_err());
        }
    }
}
