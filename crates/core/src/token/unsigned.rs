//! Unsigned JSON subject tokens (Txn-Token draft §7.2.2, `subject_token_type`
//! `urn:ietf:params:oauth:token-type:unsigned_json`): a requesting workload states the
//! subject of the transaction it starts in a plain JSON object, with no signature. The
//! draft asks for `subject_token` to be the base64url encoding of the object, which must
//! hold `sub`; other members are allowed and the token service may use them.
//!
//! Nothing but the requester's own client authentication stands behind such a token, so
//! a token service accepts it only from workloads it trusts to name subjects (its policy,
//! not this module's). Here the object is read strictly: at most
//! [`MAX_UNSIGNED_BYTES`] of canonical unpadded base64url, a JSON object with no
//! repeated member, a non-empty string `sub`, and, when present, a valid `scope` that
//! bounds what the transaction may carry. Raw JSON (not encoded) is refused with a reason
//! that says so, rather than guessed at: the draft's wording is still being argued over
//! (oauth-wg/oauth-transaction-tokens#180), and the encoded form is the one it names.

use super::TokenError;
use super::exchange::Scope;
use crate::jose::b64;
use serde::{Deserialize, Serialize};

/// The longest unsigned subject token accepted, encoded.
pub const MAX_UNSIGNED_BYTES: usize = 4096;

/// What an unsigned subject token states, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedSubject {
    /// The subject of the transaction (not empty).
    pub sub: String,
    /// What the transaction is for; when absent, only the token service's policy bounds it.
    pub scope: Option<Scope>,
}

/// The JSON object as written and read, before its values are checked.
#[derive(Serialize, Deserialize)]
struct Wire {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Encodes `subject` as an unsigned subject token (base64url of its JSON).
pub fn encode_unsigned(subject: &UnsignedSubject) -> Result<String, TokenError> {
    let wire = Wire {
        sub: subject.sub.clone(),
        scope: subject.scope.as_ref().map(ToString::to_string),
    };
    let json = serde_json::to_vec(&wire).map_err(|e| TokenError::Issue(e.to_string()))?;
    Ok(b64::encode(json))
}

/// Reads an unsigned subject token (see the module doc for what is checked).
pub fn parse_unsigned(token: &str) -> Result<UnsignedSubject, TokenError> {
    let malformed = |reason: &str| TokenError::BadClaim {
        claim: "subject_token",
        reason: reason.to_owned(),
    };
    if token.len() > MAX_UNSIGNED_BYTES {
        return Err(malformed(&format!(
            "{} bytes, more than the {MAX_UNSIGNED_BYTES} accepted",
            token.len()
        )));
    }
    if token.trim_start().starts_with('{') {
        return Err(malformed(
            "raw JSON; an unsigned subject token is the base64url encoding of the JSON object",
        ));
    }
    let json = b64::decode(token).map_err(|_| malformed("not canonical unpadded base64url"))?;
    let wire: Wire = crate::json::object_from_slice(&json).map_err(|e| {
        malformed(&format!(
            "not a JSON object with a string `sub` (and a string `scope`, if any): {e}"
        ))
    })?;
    if wire.sub.is_empty() {
        return Err(TokenError::BadClaim {
            claim: "sub",
            reason: "empty".into(),
        });
    }
    let scope = wire
        .scope
        .as_deref()
        .map(Scope::parse)
        .transpose()
        .map_err(|e| TokenError::BadClaim {
            claim: "scope",
            reason: e.description().to_owned(),
        })?;
    Ok(UnsignedSubject {
        sub: wire.sub,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(json: &str) -> String {
        b64::encode(json)
    }

    fn refusal(token: &str) -> String {
        parse_unsigned(token).unwrap_err().to_string()
    }

    #[test]
    fn a_subject_round_trips_with_and_without_scope() {
        for scope in [None, Some(Scope::parse("reports.read orders").unwrap())] {
            let subject = UnsignedSubject {
                sub: "user:alice".into(),
                scope,
            };
            let token = encode_unsigned(&subject).unwrap();
            assert_eq!(parse_unsigned(&token).unwrap(), subject);
        }
    }

    #[test]
    fn other_members_are_allowed() {
        let token = encoded(r#"{"sub":"alice","tenant":"acme","exp":1}"#);
        assert_eq!(parse_unsigned(&token).unwrap().sub, "alice");
    }

    #[test]
    fn hostile_or_malformed_tokens_are_refused_with_their_reason() {
        for (token, reason) in [
            (r#"{"sub":"alice"}"#.to_owned(), "raw JSON"),
            (format!("{}=", encoded(r#"{"sub":"alice"}"#)), "base64url"),
            ("e30".to_owned() + "+", "base64url"),
            (encoded(r#"["alice"]"#), "not a JSON object"),
            (encoded(r#""alice""#), "not a JSON object"),
            (encoded(r#"{"scope":"a"}"#), "`sub`"),
            (encoded(r#"{"sub":7}"#), "`sub`"),
            (encoded(r#"{"sub":"a","sub":"b"}"#), "duplicate"),
            (encoded(r#"{"sub":""}"#), "`sub` is invalid: empty"),
            (encoded(r#"{"sub":"a","scope":""}"#), "`scope` is invalid"),
            (encoded(r#"{"sub":"a","scope":7}"#), "`sub`"),
            ("A".repeat(MAX_UNSIGNED_BYTES + 1), "more than"),
            (String::new(), "not a JSON object"),
        ] {
            let message = refusal(&token);
            assert!(message.contains(reason), "{token}: {message}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// No input panics, and whatever is accepted has a non-empty subject.
        #[test]
        fn any_text_is_read_or_refused(token in "\\PC{0,200}") {
            if let Ok(subject) = parse_unsigned(&token) {
                proptest::prop_assert!(!subject.sub.is_empty());
            }
        }

        /// Any encoded object with a non-empty string `sub` is read back as written.
        #[test]
        fn encoded_subjects_are_read_back(sub in "\\PC{1,64}") {
            let subject = UnsignedSubject { sub, scope: None };
            let token = encode_unsigned(&subject).unwrap();
            proptest::prop_assert_eq!(parse_unsigned(&token).unwrap(), subject);
        }
    }
}
