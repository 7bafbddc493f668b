//! The strict compact-JWS reader and writer, the one place every token in wimse is parsed.
//!
//! Why not `jsonwebtoken`: it checks neither `typ` nor `crit`, accepts keys whose
//! algorithm is taken from the token header, and tolerates duplicate JSON members. This
//! reader is small enough to audit and enforces SPECS.md §11 before any signature work:
//!
//! - compact serialization only: at most [`MAX_TOKEN_BYTES`], only `[A-Za-z0-9_.-]`,
//!   exactly two dots (a JWE has four and is refused as such);
//! - canonical unpadded base64url in every part;
//! - a JSON-object header without duplicate members; `alg` from the closed
//!   [`Algorithm`] set (`none`, `HS*` and unknown names refused);
//! - `crit` refused (we implement no extension that could be critical);
//! - `jku`, `x5u`, `jwk`, `x5c` refused: keys come only from configured trust anchors,
//!   never from the token (CVE-2018-0114 class);
//! - JWE and JWS-extension parameters (`enc`, `zip`, `b64`, `p2s`, `p2c`, `epk`) refused.
//!
//! The claims are not parsed here: each token kind parses them into its own type with
//! [`Jws::claims`], which also refuses duplicate members.

use super::alg::{Algorithm, AlgorithmError};
use super::b64;
use super::key::{KeyError, PublicKey, SigningKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The largest token the reader accepts, in bytes. A WIT with a 2048-byte identifier and
/// an RSA `cnf` key stays well below it.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a compact JWS was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("token is {0} bytes, more than the {MAX_TOKEN_BYTES} accepted")]
    TooLarge(usize),
    /// A character outside the base64url alphabet and `.` (e.g. JSON serialization, spaces).
    #[error("token is not in compact serialization: unexpected character")]
    NotCompact,
    /// Five parts: a JWE, which is never accepted where a JWS is expected.
    #[error("token is a JWE; only signed tokens (JWS) are accepted")]
    Encrypted,
    /// Not three dot-separated parts.
    #[error("token has {0} parts, a compact JWS has 3")]
    PartCount(usize),
    /// A part is empty or not canonical base64url.
    #[error("token {0} is not canonical base64url")]
    Base64(&'static str),
    /// The header is not a JSON object, repeats a member, or has a member of the wrong type.
    #[error("token header is invalid: {0}")]
    Header(String),
    /// The header has no `alg`.
    #[error("token header lacks `alg`")]
    MissingAlg,
    /// The header's `alg` is refused.
    #[error(transparent)]
    Algorithm(#[from] AlgorithmError),
    /// The header lists critical extensions, none of which we implement (RFC 7515 §4.1.11).
    #[error("token header has `crit`, and no critical extension is supported")]
    Critical,
    /// The header carries or points to a key (`jku`, `x5u`, `jwk`, `x5c`), which is never used.
    #[error("token header parameter `{0}` is refused: keys come only from trust bundles")]
    KeyInHeader(&'static str),
    /// A JWE or JWS-extension header parameter that is not supported.
    #[error("token header parameter `{0}` is not supported")]
    UnsupportedHeader(&'static str),
    /// The claims are not a JSON object of the expected shape, or repeat a member.
    #[error("token claims are invalid: {0}")]
    Claims(String),
    /// The signature does not verify, or the key does not fit the algorithm.
    #[error("token signature is invalid: {0}")]
    Signature(KeyError),
    /// Creating a token failed.
    #[error("token could not be signed: {0}")]
    Signing(KeyError),
}

/// The protected header of a JWS, after the reader's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `alg`.
    pub alg: Algorithm,
    /// `typ`, as written.
    pub typ: Option<String>,
    /// `kid`, as written (opaque, case-sensitive).
    pub kid: Option<String>,
    /// Names of any other header parameters present (tolerated, not interpreted).
    pub other: Vec<String>,
}

impl Header {
    /// Whether `typ` names the media type `application/<subtype>`: RFC 7515 §4.1.9 lets
    /// `typ` omit the `application/` prefix, and media types compare case-insensitively.
    pub fn typ_is(&self, subtype: &str) -> bool {
        self.typ
            .as_deref()
            .is_some_and(|typ| media_type_is(typ, subtype))
    }
}

fn media_type_is(typ: &str, subtype: &str) -> bool {
    let bare = match typ.split_once('/') {
        Some((top, rest)) if top.eq_ignore_ascii_case("application") => rest,
        Some(_) => return false,
        None => typ,
    };
    bare.eq_ignore_ascii_case(subtype)
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct Jws<'a> {
    header: Header,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

const REFUSED_KEY_PARAMS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];
const UNSUPPORTED_PARAMS: [&str; 6] = ["enc", "zip", "b64", "p2s", "p2c", "epk"];

fn header_from_json(bytes: &[u8]) -> Result<Header, JwsError> {
    let map: serde_json::Map<String, Value> =
        crate::json::from_slice(bytes).map_err(|e| JwsError::Header(e.to_string()))?;
    let mut header = Header {
        alg: Algorithm::Es256,
        typ: None,
        kid: None,
        other: Vec::new(),
    };
    let mut alg = None;
    for (name, value) in map {
        let text = || match &value {
            Value::String(s) => Ok(s.clone()),
            _ => Err(JwsError::Header(format!("`{name}` is not a string"))),
        };
        match name.as_str() {
            "alg" => alg = Some(Algorithm::from_name(&text()?)?),
            "typ" => header.typ = Some(text()?),
            "kid" => header.kid = Some(text()?),
            "crit" => return Err(JwsError::Critical),
            other => {
                if let Some(p) = REFUSED_KEY_PARAMS.iter().find(|p| **p == other) {
                    return Err(JwsError::KeyInHeader(p));
                }
                if let Some(p) = UNSUPPORTED_PARAMS.iter().find(|p| **p == other) {
                    return Err(JwsError::UnsupportedHeader(p));
                }
                header.other.push(name);
            }
        }
    }
    header.alg = alg.ok_or(JwsError::MissingAlg)?;
    Ok(header)
}

impl<'a> Jws<'a> {
    /// Parses a compact JWS and checks its header; the signature is not verified yet.
    pub fn parse(token: &'a str) -> Result<Self, JwsError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwsError::TooLarge(token.len()));
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(JwsError::NotCompact);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            let count = token.split('.').count();
            return Err(if count == 5 {
                JwsError::Encrypted
            } else {
                JwsError::PartCount(count)
            });
        };
        if h.is_empty() {
            return Err(JwsError::Base64("header"));
        }
        if s.is_empty() {
            // An empty signature is the unsecured-JWS form; refuse it by name.
            return Err(JwsError::Base64("signature"));
        }
        let header_bytes = b64::decode(h).map_err(|_| JwsError::Base64("header"))?;
        let header = header_from_json(&header_bytes)?;
        let payload = b64::decode(p).map_err(|_| JwsError::Base64("payload"))?;
        let signature = b64::decode(s).map_err(|_| JwsError::Base64("signature"))?;
        let signing_input = token.get(..h.len() + 1 + p.len()).unwrap_or_default();
        Ok(Jws {
            header,
            signing_input,
            payload,
            signature,
        })
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Verifies the signature with `key`, which must allow the header's `alg`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), JwsError> {
        key.verify(
            self.header.alg,
            self.signing_input.as_bytes(),
            &self.signature,
        )
        .map_err(JwsError::Signature)
    }

    /// Parses the claims as `T`, refusing duplicate members and anything but a JSON object.
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, JwsError> {
        crate::json::object_from_slice(&self.payload).map_err(|e| JwsError::Claims(e.to_string()))
    }
}

#[derive(Serialize)]
struct OutHeader<'a> {
    alg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    typ: Option<&'a str>,
}

/// Signs `claims` as a compact JWS with header `{alg, kid, typ}`.
pub fn sign<T: Serialize>(
    key: &SigningKey,
    typ: Option<&str>,
    kid: Option<&str>,
    claims: &T,
) -> Result<String, JwsError> {
    let header = OutHeader {
        alg: key.algorithm().name(),
        kid,
        typ,
    };
    let header_json = serde_json::to_vec(&header).map_err(|e| JwsError::Header(e.to_string()))?;
    let claims_json = serde_json::to_vec(claims).map_err(|e| JwsError::Claims(e.to_string()))?;
    let mut token = b64::encode(header_json);
    token.push('.');
    token.push_str(&b64::encode(claims_json));
    let signature = key.sign(token.as_bytes()).map_err(JwsError::Signing)?;
    token.push('.');
    token.push_str(&b64::encode(signature));
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with_header(header: &str) -> String {
        format!(
            "{}.{}.{}",
            b64::encode(header),
            b64::encode("{}"),
            b64::encode([1u8; 64])
        )
    }

    #[test]
    fn signed_token_parses_and_verifies() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let token = sign(
            &key,
            Some("wit+jwt"),
            Some("k1"),
            &serde_json::json!({"sub":"x"}),
        )
        .unwrap();
        let jws = Jws::parse(&token).unwrap();
        assert_eq!(jws.header().kid.as_deref(), Some("k1"));
        assert!(jws.header().typ_is("wit+jwt"));
        jws.verify(key.public_key()).unwrap();
        let claims: Value = jws.claims().unwrap();
        assert_eq!(claims["sub"], "x");
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let other = SigningKey::generate(Algorithm::Es256).unwrap();
        let token = sign(&key, None, None, &serde_json::json!({})).unwrap();
        assert!(matches!(
            Jws::parse(&token).unwrap().verify(other.public_key()),
            Err(JwsError::Signature(KeyError::BadSignature))
        ));
    }

    #[test]
    fn typ_comparison_follows_rfc7515() {
        let header = |typ: &str| Header {
            alg: Algorithm::Es256,
            typ: Some(typ.into()),
            kid: None,
            other: vec![],
        };
        assert!(header("wit+jwt").typ_is("wit+jwt"));
        assert!(header("application/wit+jwt").typ_is("wit+jwt"));
        assert!(header("Application/WIT+JWT").typ_is("wit+jwt"));
        assert!(!header("wpt+jwt").typ_is("wit+jwt"));
        assert!(!header("text/wit+jwt").typ_is("wit+jwt"));
        assert!(!header("JWT").typ_is("wit+jwt"));
    }

    #[test]
    fn oversized_token_is_refused() {
        let token = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            Jws::parse(&token).unwrap_err(),
            JwsError::TooLarge(MAX_TOKEN_BYTES + 1)
        );
    }

    #[test]
    fn json_serialization_is_refused() {
        assert_eq!(
            Jws::parse(r#"{"payload":"e30","signatures":[]}"#).unwrap_err(),
            JwsError::NotCompact
        );
    }

    #[test]
    fn jwe_is_refused() {
        assert_eq!(Jws::parse("a.b.c.d.e").unwrap_err(), JwsError::Encrypted);
        assert_eq!(Jws::parse("a.b").unwrap_err(), JwsError::PartCount(2));
    }

    #[test]
    fn unsecured_token_is_refused() {
        let token = format!(
            "{}.{}.",
            b64::encode(r#"{"alg":"none"}"#),
            b64::encode("{}")
        );
        assert_eq!(
            Jws::parse(&token).unwrap_err(),
            JwsError::Base64("signature")
        );
        let token = token_with_header(r#"{"alg":"none"}"#);
        assert_eq!(
            Jws::parse(&token).unwrap_err(),
            JwsError::Algorithm(AlgorithmError::None)
        );
    }

    #[test]
    fn hmac_header_is_refused() {
        let token = token_with_header(r#"{"alg":"HS256"}"#);
        assert!(matches!(
            Jws::parse(&token).unwrap_err(),
            JwsError::Algorithm(AlgorithmError::Symmetric(_))
        ));
    }

    #[test]
    fn crit_is_refused() {
        let token = token_with_header(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#);
        assert_eq!(Jws::parse(&token).unwrap_err(), JwsError::Critical);
    }

    #[test]
    fn keys_in_header_are_refused() {
        for (param, value) in [
            ("jku", r#""https://evil.example/jwks""#),
            ("x5u", r#""https://evil.example/cert""#),
            ("jwk", r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#),
            ("x5c", r#"["MIIB"]"#),
        ] {
            let token = token_with_header(&format!(r#"{{"alg":"ES256","{param}":{value}}}"#));
            assert!(
                matches!(Jws::parse(&token).unwrap_err(), JwsError::KeyInHeader(p) if p == param),
                "{param}"
            );
        }
    }

    #[test]
    fn jwe_and_extension_parameters_are_refused() {
        for param in ["enc", "zip", "b64", "p2s", "p2c", "epk"] {
            let token = token_with_header(&format!(r#"{{"alg":"ES256","{param}":"x"}}"#));
            assert!(
                matches!(Jws::parse(&token).unwrap_err(), JwsError::UnsupportedHeader(p) if p == param)
            );
        }
    }

    #[test]
    fn duplicate_header_member_is_refused() {
        let token = token_with_header(r#"{"alg":"ES256","alg":"none"}"#);
        assert!(
            matches!(Jws::parse(&token).unwrap_err(), JwsError::Header(m) if m.contains("duplicate"))
        );
    }

    #[test]
    fn non_object_header_is_refused() {
        for header in ["[]", "\"ES256\"", "null", "1"] {
            assert!(matches!(
                Jws::parse(&token_with_header(header)).unwrap_err(),
                JwsError::Header(_)
            ));
        }
    }

    #[test]
    fn missing_alg_is_refused() {
        assert_eq!(
            Jws::parse(&token_with_header(r#"{"typ":"JWT"}"#)).unwrap_err(),
            JwsError::MissingAlg
        );
    }

    #[test]
    fn non_string_kid_is_refused() {
        assert!(matches!(
            Jws::parse(&token_with_header(r#"{"alg":"ES256","kid":1}"#)).unwrap_err(),
            JwsError::Header(_)
        ));
    }

    #[test]
    fn padded_part_is_refused() {
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let token = sign(&key, None, None, &serde_json::json!({"a":1})).unwrap();
        let (head, rest) = token.split_once('.').unwrap();
        let padded = format!("{head}=.{rest}");
        assert_eq!(Jws::parse(&padded).unwrap_err(), JwsError::NotCompact);
    }

    #[test]
    fn claims_with_duplicate_members_are_refused() {
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let header = b64::encode(r#"{"alg":"EdDSA"}"#);
        let payload = b64::encode(r#"{"sub":"a","sub":"b"}"#);
        let input = format!("{header}.{payload}");
        let token = format!(
            "{input}.{}",
            b64::encode(key.sign(input.as_bytes()).unwrap())
        );
        let jws = Jws::parse(&token).unwrap();
        jws.verify(key.public_key()).unwrap();
        assert!(
            matches!(jws.claims::<Value>(), Err(JwsError::Claims(m)) if m.contains("duplicate"))
        );
    }

    #[test]
    fn claims_that_are_not_an_object_are_refused() {
        #[derive(serde::Deserialize, Debug)]
        struct Claims {
            sub: String,
        }
        // A struct would take the array as its fields in order; a claims set is an object.
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let token = sign(&key, None, None, &serde_json::json!(["a"])).unwrap();
        let jws = Jws::parse(&token).unwrap();
        jws.verify(key.public_key()).unwrap();
        match jws.claims::<Claims>() {
            Err(JwsError::Claims(m)) => assert!(m.contains("not a JSON object"), "{m}"),
            other => panic!("array claims read as {other:?}"),
        }
        let object = sign(&key, None, None, &serde_json::json!({"sub": "a"})).unwrap();
        assert_eq!(
            Jws::parse(&object).unwrap().claims::<Claims>().unwrap().sub,
            "a"
        );
    }

    #[test]
    fn resigned_with_a_different_alg_header_is_refused_by_the_key() {
        // An ES256 key cannot verify a token whose header claims ES384 (alg/key binding).
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let header = b64::encode(r#"{"alg":"ES384"}"#);
        let input = format!("{header}.{}", b64::encode("{}"));
        let token = format!(
            "{input}.{}",
            b64::encode(key.sign(input.as_bytes()).unwrap())
        );
        assert!(matches!(
            Jws::parse(&token).unwrap().verify(key.public_key()),
            Err(JwsError::Signature(KeyError::AlgorithmMismatch { .. }))
        ));
    }
}
