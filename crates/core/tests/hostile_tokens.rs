//! The hostile-token suite: every attack in SPECS.md §11 (RFC 8725, 8725bis, known CVE
//! classes), each refused with its own specific error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use common::*;
use serde_json::json;
use wimse_core::bundle::{BundleError, BundleSet, KeyUse, TrustBundle};
use wimse_core::jose::{Algorithm, AlgorithmError, JwsError, KeyError, SigningKey, b64};
use wimse_core::token::jwt_svid::{JwtSvidClaims, issue_jwt_svid, verify_jwt_svid};
use wimse_core::token::replay::ReplayCache;
use wimse_core::token::txn::{TxnTokenClaims, issue_txn_token, verify_txn_token};
use wimse_core::token::wit::{WitProfile, verify_wit};
use wimse_core::token::wpt::{RequestBinding, issue_wpt, verify_wpt};
use wimse_core::token::{Audience, TokenError, Validation};

const WIT_HEADER: &str = r#"{"alg":"ES256","kid":"wit-1","typ":"wit+jwt"}"#;

fn v() -> Validation {
    Validation::at(NOW)
}

fn wit_err(f: &Fixture, token: &str) -> TokenError {
    verify_wit(token, &f.bundles, WitProfile::Spiffe, &v()).unwrap_err()
}

fn wit_claims_json(f: &Fixture, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    edit_json(&f.wit_claims(), edit)
}

fn binding() -> RequestBinding<'static> {
    RequestBinding {
        audience: TARGET,
        ..Default::default()
    }
}

fn wpt_err(f: &Fixture, wpt: &str, binding: &RequestBinding<'_>) -> TokenError {
    let wit = verify_wit(&f.wit(), &f.bundles, WitProfile::Wimse, &v()).unwrap();
    verify_wpt(wpt, &wit, binding, &v(), &ReplayCache::new(10)).unwrap_err()
}

// ---- parsing -------------------------------------------------------------------------

#[test]
fn a_genuine_wit_verifies() {
    let f = Fixture::new();
    let wit = verify_wit(&f.wit(), &f.bundles, WitProfile::Spiffe, &v()).unwrap();
    assert_eq!(wit.workload_id().as_str(), WORKLOAD);
}

#[test]
fn json_serialized_jws_is_refused() {
    let f = Fixture::new();
    let token = json!({"payload": "e30", "protected": "e30", "signature": "AA"}).to_string();
    assert_eq!(wit_err(&f, &token), TokenError::Jws(JwsError::NotCompact));
}

#[test]
fn token_with_extra_dots_or_whitespace_is_refused() {
    let f = Fixture::new();
    let wit = f.wit();
    assert_eq!(
        wit_err(&f, &format!("{wit}.")),
        TokenError::Jws(JwsError::PartCount(4))
    );
    assert_eq!(
        wit_err(&f, &format!(" {wit}")),
        TokenError::Jws(JwsError::NotCompact)
    );
}

#[test]
fn jwe_is_refused() {
    let f = Fixture::new();
    assert_eq!(
        wit_err(&f, "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"),
        TokenError::Jws(JwsError::Encrypted)
    );
}

#[test]
fn oversized_token_is_refused() {
    let f = Fixture::new();
    let claims = wit_claims_json(&f, |c| c["pad"] = "x".repeat(20_000).into());
    let token = craft(WIT_HEADER, &claims, &f.wit_issuer);
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::TooLarge(_))
    ));
}

#[test]
fn non_canonical_base64_is_refused() {
    let f = Fixture::new();
    let wit = f.wit();
    // Flip the last signature character to one with the same 6-bit prefix but non-zero
    // trailing bits is not always possible; padding is the portable non-canonical form.
    let (input, sig) = wit.rsplit_once('.').unwrap();
    let padded = format!("{input}.{sig}==");
    assert_eq!(wit_err(&f, &padded), TokenError::Jws(JwsError::NotCompact));
    let std_alphabet = format!("{input}.{}", sig.replace('-', "+").replace('_', "/"));
    if std_alphabet != wit {
        assert_eq!(
            wit_err(&f, &std_alphabet),
            TokenError::Jws(JwsError::NotCompact)
        );
    }
}

#[test]
fn duplicate_claim_names_are_refused() {
    let f = Fixture::new();
    let claims = wit_claims_json(&f, |_| {});
    let duplicated = claims.replacen('{', r#"{"sub":"spiffe://example.org/admin","#, 1);
    let token = craft(WIT_HEADER, &duplicated, &f.wit_issuer);
    assert!(
        matches!(wit_err(&f, &token), TokenError::Jws(JwsError::Claims(m)) if m.contains("duplicate"))
    );
}

#[test]
fn duplicate_header_names_are_refused() {
    let f = Fixture::new();
    let header = r#"{"alg":"ES256","kid":"wit-1","typ":"wit+jwt","typ":"wpt+jwt"}"#;
    let token = craft(header, &wit_claims_json(&f, |_| {}), &f.wit_issuer);
    assert!(
        matches!(wit_err(&f, &token), TokenError::Jws(JwsError::Header(m)) if m.contains("duplicate"))
    );
}

#[test]
fn non_object_claims_are_refused() {
    let f = Fixture::new();
    for claims in ["[]", "null", "\"sub\"", "1"] {
        let token = craft(WIT_HEADER, claims, &f.wit_issuer);
        assert!(
            matches!(wit_err(&f, &token), TokenError::Jws(JwsError::Claims(_))),
            "{claims}"
        );
    }
}

#[test]
fn invalid_utf8_claims_are_refused() {
    let f = Fixture::new();
    let input = format!(
        "{}.{}",
        b64::encode(WIT_HEADER),
        b64::encode([0xff, 0xfe, b'{'])
    );
    let sig = f.wit_issuer.sign(input.as_bytes()).unwrap();
    let token = format!("{input}.{}", b64::encode(sig));
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::Claims(_))
    ));
}

// ---- algorithms ----------------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    let f = Fixture::new();
    let input = format!(
        "{}.{}",
        b64::encode(r#"{"alg":"none","kid":"wit-1","typ":"wit+jwt"}"#),
        b64::encode(wit_claims_json(&f, |_| {}))
    );
    assert_eq!(
        wit_err(&f, &format!("{input}.")),
        TokenError::Jws(JwsError::Base64("signature"))
    );
    assert_eq!(
        wit_err(&f, &format!("{input}.AAAA")),
        TokenError::Jws(JwsError::Algorithm(AlgorithmError::None))
    );
}

#[test]
fn alg_none_in_other_case_is_refused() {
    let f = Fixture::new();
    let header = r#"{"alg":"nOnE","kid":"wit-1","typ":"wit+jwt"}"#;
    let token = craft(header, &wit_claims_json(&f, |_| {}), &f.wit_issuer);
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::Algorithm(AlgorithmError::Unsupported(_)))
    ));
}

#[test]
fn hmac_signed_with_the_public_key_is_refused() {
    // RS→HS key confusion (CVE-2015-9235): HMAC the token with the issuer's public key.
    let f = Fixture::new();
    let header = r#"{"alg":"HS256","kid":"wit-1","typ":"wit+jwt"}"#;
    let input = format!(
        "{}.{}",
        b64::encode(header),
        b64::encode(wit_claims_json(&f, |_| {}))
    );
    let public = serde_json::to_vec(f.wit_issuer.public_jwk()).unwrap();
    let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public);
    let tag = aws_lc_rs::hmac::sign(&mac_key, input.as_bytes());
    let token = format!("{input}.{}", b64::encode(tag.as_ref()));
    assert_eq!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::Algorithm(AlgorithmError::Symmetric(
            "HS256".into()
        )))
    );
}

#[test]
fn header_alg_that_does_not_fit_the_key_is_refused() {
    let f = Fixture::new();
    let header = r#"{"alg":"ES384","kid":"wit-1","typ":"wit+jwt"}"#;
    let token = craft(header, &wit_claims_json(&f, |_| {}), &f.wit_issuer);
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::Signature(KeyError::AlgorithmMismatch { .. }))
    ));
}

#[test]
fn eddsa_wit_is_refused_by_the_spiffe_profile() {
    let f = Fixture::new();
    let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let header = r#"{"alg":"EdDSA","kid":"wit-1","typ":"wit+jwt"}"#;
    let token = craft(header, &wit_claims_json(&f, |_| {}), &ed);
    assert_eq!(
        wit_err(&f, &token),
        TokenError::AlgorithmNotAllowed("EdDSA".into())
    );
}

#[test]
fn cnf_with_symmetric_or_missing_alg_is_refused() {
    let f = Fixture::new();
    for (alg, why) in [
        (json!("HS256"), "symmetric"),
        (json!("RSA-OAEP"), "unsupported"),
        (json!(null), "missing"),
    ] {
        let claims = wit_claims_json(&f, |c| {
            if alg.is_null() {
                c["cnf"]["jwk"].as_object_mut().unwrap().remove("alg");
            } else {
                c["cnf"]["jwk"]["alg"] = alg.clone();
            }
        });
        let token = craft(WIT_HEADER, &claims, &f.wit_issuer);
        assert!(
            matches!(
                wit_err(&f, &token),
                TokenError::BadClaim { claim: "cnf", .. }
            ),
            "{why}"
        );
    }
}

#[test]
fn cnf_with_oct_key_is_refused() {
    let f = Fixture::new();
    let claims = wit_claims_json(&f, |c| c["cnf"]["jwk"] = json!({"kty":"oct","alg":"ES256"}));
    let token = craft(WIT_HEADER, &claims, &f.wit_issuer);
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::BadClaim { claim: "cnf", .. }
    ));
}

#[test]
fn cnf_alg_that_does_not_fit_its_key_is_refused() {
    let f = Fixture::new();
    let claims = wit_claims_json(&f, |c| c["cnf"]["jwk"]["alg"] = "ES384".into());
    let token = craft(WIT_HEADER, &claims, &f.wit_issuer);
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::BadClaim { claim: "cnf", .. }
    ));
}

#[test]
fn wpt_alg_other_than_cnf_alg_is_refused() {
    // The WIT binds an ES256 key; a proof signed with EdDSA (by any key) is refused.
    let f = Fixture::new();
    let other = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let wpt = issue_wpt(&other, &f.wit(), &binding(), NOW, 60).unwrap();
    assert_eq!(
        wpt_err(&f, &wpt, &binding()),
        TokenError::AlgorithmNotAllowed("EdDSA".into())
    );
}

// ---- ECDSA / EdDSA -------------------------------------------------------------------

#[test]
fn zero_ecdsa_signature_is_refused() {
    // "Psychic signatures" (CVE-2022-21449): r = s = 0.
    let f = Fixture::new();
    let wit = f.wit();
    let (input, _) = wit.rsplit_once('.').unwrap();
    let token = format!("{input}.{}", b64::encode([0u8; 64]));
    assert_eq!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::Signature(KeyError::BadSignature))
    );
}

#[test]
fn ecdsa_signature_with_r_and_s_equal_to_the_order_is_refused() {
    let f = Fixture::new();
    let wit = f.wit();
    let (input, _) = wit.rsplit_once('.').unwrap();
    // The P-256 group order n.
    let n: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let token = format!("{input}.{}", b64::encode([n, n].concat()));
    assert_eq!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::Signature(KeyError::BadSignature))
    );
}

#[test]
fn der_encoded_ecdsa_signature_is_refused() {
    let f = Fixture::new();
    let wit = f.wit();
    let (input, sig) = wit.rsplit_once('.').unwrap();
    let raw = b64::decode(sig).unwrap();
    let mut der = vec![0x30, 0x46, 0x02, 0x21, 0x00];
    der.extend_from_slice(&raw[..32]);
    der.extend_from_slice(&[0x02, 0x21, 0x00]);
    der.extend_from_slice(&raw[32..]);
    let token = format!("{input}.{}", b64::encode(der));
    assert_eq!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::Signature(KeyError::BadSignature))
    );
}

#[test]
fn cnf_point_off_the_curve_is_refused() {
    let f = Fixture::new();
    let claims = wit_claims_json(&f, |c| {
        let y = c["cnf"]["jwk"]["y"].as_str().unwrap().to_owned();
        let mut bytes = b64::decode(&y).unwrap();
        bytes[31] ^= 1;
        c["cnf"]["jwk"]["y"] = b64::encode(bytes).into();
    });
    let token = craft(WIT_HEADER, &claims, &f.wit_issuer);
    assert!(
        matches!(wit_err(&f, &token), TokenError::BadClaim { claim: "cnf", reason } if reason.contains("malformed"))
    );
}

#[test]
fn cnf_with_private_key_is_refused() {
    let f = Fixture::new();
    let claims = wit_claims_json(&f, |c| c["cnf"]["jwk"]["d"] = "AAAA".into());
    let token = craft(WIT_HEADER, &claims, &f.wit_issuer);
    assert!(
        matches!(wit_err(&f, &token), TokenError::Jws(JwsError::Claims(m)) if m.contains("private key member `d`"))
    );
}

#[test]
fn non_canonical_ed25519_signature_is_refused() {
    // S + L (the group order) verifies in lax implementations; strict ones refuse it.
    let f = Fixture::with_holder(Algorithm::EdDsa);
    let wit = verify_wit(&f.wit(), &f.bundles, WitProfile::Wimse, &v()).unwrap();
    let wpt = issue_wpt(&f.holder, &f.wit(), &binding(), NOW, 60).unwrap();
    let (input, sig) = wpt.rsplit_once('.').unwrap();
    let mut raw = b64::decode(sig).unwrap();
    let order: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(raw[32 + i]) + u16::from(order[i]) + carry;
        raw[32 + i] = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    let forged = format!("{input}.{}", b64::encode(raw));
    assert_eq!(
        verify_wpt(&forged, &wit, &binding(), &v(), &ReplayCache::new(10)).unwrap_err(),
        TokenError::Jws(JwsError::Signature(KeyError::BadSignature))
    );
}

// ---- key selection and header parameters ---------------------------------------------

#[test]
fn embedded_jwk_is_never_used() {
    // CVE-2018-0114: the attacker signs with its own key and puts it in the header.
    let f = Fixture::new();
    let attacker = SigningKey::generate(Algorithm::Es256).unwrap();
    let jwk = serde_json::to_string(attacker.public_jwk()).unwrap();
    let header = format!(r#"{{"alg":"ES256","kid":"wit-1","typ":"wit+jwt","jwk":{jwk}}}"#);
    let token = craft(&header, &wit_claims_json(&f, |_| {}), &attacker);
    assert_eq!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::KeyInHeader("jwk"))
    );
}

#[test]
fn jku_and_x5u_are_never_followed() {
    let f = Fixture::new();
    for param in ["jku", "x5u"] {
        let header = format!(
            r#"{{"alg":"ES256","kid":"wit-1","typ":"wit+jwt","{param}":"https://attacker.example/k"}}"#
        );
        let token = craft(&header, &wit_claims_json(&f, |_| {}), &f.wit_issuer);
        assert!(
            matches!(wit_err(&f, &token), TokenError::Jws(JwsError::KeyInHeader(p)) if p == param)
        );
    }
}

#[test]
fn x5c_in_header_is_refused() {
    let f = Fixture::new();
    let header = r#"{"alg":"ES256","kid":"wit-1","typ":"wit+jwt","x5c":["MIIBszCCAVmgAwIBAgIUE"]}"#;
    let token = craft(header, &wit_claims_json(&f, |_| {}), &f.wit_issuer);
    assert_eq!(
        wit_err(&f, &token),
        TokenError::Jws(JwsError::KeyInHeader("x5c"))
    );
}

#[test]
fn unknown_kid_is_refused() {
    let f = Fixture::new();
    for kid in ["nope", "../../etc/passwd", "' OR 1=1 --", "WIT-1"] {
        let header = format!(r#"{{"alg":"ES256","kid":{},"typ":"wit+jwt"}}"#, json!(kid));
        let token = craft(&header, &wit_claims_json(&f, |_| {}), &f.wit_issuer);
        assert!(
            matches!(
                wit_err(&f, &token),
                TokenError::Key(BundleError::UnknownKey { .. })
            ),
            "{kid}"
        );
    }
}

#[test]
fn missing_kid_is_refused_by_the_spiffe_profile() {
    let f = Fixture::new();
    let token = craft(
        r#"{"alg":"ES256","typ":"wit+jwt"}"#,
        &wit_claims_json(&f, |_| {}),
        &f.wit_issuer,
    );
    assert_eq!(wit_err(&f, &token), TokenError::MissingKid);
}

#[test]
fn crit_is_honoured_by_refusal() {
    let f = Fixture::new();
    let header = r#"{"alg":"ES256","kid":"wit-1","typ":"wit+jwt","crit":["x-must"],"x-must":1}"#;
    let token = craft(header, &wit_claims_json(&f, |_| {}), &f.wit_issuer);
    assert_eq!(wit_err(&f, &token), TokenError::Jws(JwsError::Critical));
}

#[test]
fn zip_and_pbes2_parameters_are_refused() {
    let f = Fixture::new();
    for param in ["zip", "p2c", "b64"] {
        let header = format!(r#"{{"alg":"ES256","kid":"wit-1","typ":"wit+jwt","{param}":"DEF"}}"#);
        let token = craft(&header, &wit_claims_json(&f, |_| {}), &f.wit_issuer);
        assert!(
            matches!(wit_err(&f, &token), TokenError::Jws(JwsError::UnsupportedHeader(p)) if p == param)
        );
    }
}

// ---- explicit typing: one kind can never pass as another ----------------------------

#[test]
fn wpt_presented_as_wit_is_refused() {
    let f = Fixture::new();
    let wpt = issue_wpt(&f.holder, &f.wit(), &binding(), NOW, 60).unwrap();
    assert!(matches!(
        wit_err(&f, &wpt),
        TokenError::WrongType {
            expected: "wit+jwt",
            ..
        }
    ));
}

#[test]
fn wit_presented_as_wpt_is_refused() {
    let f = Fixture::new();
    let wit = f.wit();
    assert!(matches!(
        wpt_err(&f, &wit, &binding()),
        TokenError::WrongType {
            expected: "wpt+jwt",
            ..
        }
    ));
}

#[test]
fn jwt_svid_presented_as_wit_is_refused() {
    let f = Fixture::new();
    let svid = issue_jwt_svid(
        &f.jwt_issuer,
        "jwt-1",
        &JwtSvidClaims {
            sub: id(WORKLOAD),
            aud: Audience::One("x".into()),
            exp: NOW + 60,
            iat: None,
            iss: None,
        },
    )
    .unwrap();
    assert!(matches!(wit_err(&f, &svid), TokenError::WrongType { .. }));
}

#[test]
fn wit_presented_as_jwt_svid_is_refused() {
    let f = Fixture::new();
    let err = verify_jwt_svid(&f.wit(), &f.bundles, "x", &v()).unwrap_err();
    assert_eq!(
        err,
        TokenError::WrongType {
            expected: "JWT",
            found: "wit+jwt".into()
        }
    );
}

#[test]
fn txn_token_presented_as_jwt_svid_is_refused() {
    let f = Fixture::new();
    let txn = issue_txn_token(&f.jwt_issuer, "jwt-1", &txn_claims()).unwrap();
    assert!(matches!(
        verify_jwt_svid(&txn, &f.bundles, "x", &v()),
        Err(TokenError::WrongType { .. })
    ));
}

#[test]
fn jwt_svid_presented_as_txn_token_is_refused() {
    let f = Fixture::new();
    let svid = craft(
        r#"{"alg":"ES256","kid":"jwt-1","typ":"JWT"}"#,
        &serde_json::to_string(&txn_claims()).unwrap(),
        &f.jwt_issuer,
    );
    assert!(matches!(
        verify_txn_token(&svid, &f.bundles, &td(TD), &v()),
        Err(TokenError::WrongType {
            expected: "txntoken+jwt",
            ..
        })
    ));
}

#[test]
fn wit_without_typ_is_refused() {
    let f = Fixture::new();
    let token = craft(
        r#"{"alg":"ES256","kid":"wit-1"}"#,
        &wit_claims_json(&f, |_| {}),
        &f.wit_issuer,
    );
    assert!(matches!(wit_err(&f, &token), TokenError::WrongType { .. }));
}

#[test]
fn jwt_svid_with_extra_header_is_refused() {
    let f = Fixture::new();
    let claims = json!({"sub": WORKLOAD, "aud": "x", "exp": NOW + 60}).to_string();
    let token = craft(
        r#"{"alg":"ES256","kid":"jwt-1","typ":"JWT","cty":"x"}"#,
        &claims,
        &f.jwt_issuer,
    );
    assert_eq!(
        verify_jwt_svid(&token, &f.bundles, "x", &v()).unwrap_err(),
        TokenError::HeaderNotAllowed("cty".into())
    );
}

// ---- claims --------------------------------------------------------------------------

#[test]
fn expired_wit_is_refused() {
    let f = Fixture::new();
    let token = craft(
        WIT_HEADER,
        &wit_claims_json(&f, |c| c["exp"] = (NOW - 61).into()),
        &f.wit_issuer,
    );
    assert!(matches!(wit_err(&f, &token), TokenError::Expired { .. }));
}

#[test]
fn wit_without_exp_is_refused() {
    let f = Fixture::new();
    let claims = wit_claims_json(&f, |c| {
        c.as_object_mut().unwrap().remove("exp");
    });
    let token = craft(WIT_HEADER, &claims, &f.wit_issuer);
    assert!(
        matches!(wit_err(&f, &token), TokenError::Jws(JwsError::Claims(m)) if m.contains("exp"))
    );
}

#[test]
fn wit_not_yet_valid_is_refused() {
    let f = Fixture::new();
    let token = craft(
        WIT_HEADER,
        &wit_claims_json(&f, |c| c["nbf"] = (NOW + 600).into()),
        &f.wit_issuer,
    );
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::NotYetValid { .. }
    ));
}

#[test]
fn wit_issued_in_the_future_is_refused() {
    let f = Fixture::new();
    let token = craft(
        WIT_HEADER,
        &wit_claims_json(&f, |c| c["iat"] = (NOW + 600).into()),
        &f.wit_issuer,
    );
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::IssuedInFuture { .. }
    ));
}

#[test]
fn wit_svid_with_aud_is_refused() {
    let f = Fixture::new();
    let token = craft(
        WIT_HEADER,
        &wit_claims_json(&f, |c| c["aud"] = "svc".into()),
        &f.wit_issuer,
    );
    assert_eq!(wit_err(&f, &token), TokenError::ForbiddenClaim("aud"));
}

#[test]
fn wit_with_invalid_subject_is_refused() {
    let f = Fixture::new();
    for sub in [
        "spiffe://example.org/a/../b",
        "spiffe://EXAMPLE.org/a",
        "https://user@example.org/a",
        "",
    ] {
        let token = craft(
            WIT_HEADER,
            &wit_claims_json(&f, |c| c["sub"] = sub.into()),
            &f.wit_issuer,
        );
        assert!(
            matches!(wit_err(&f, &token), TokenError::Jws(JwsError::Claims(_))),
            "{sub}"
        );
    }
}

#[test]
fn wit_for_another_trust_domain_signed_by_our_key_is_refused() {
    // The issuer must be trusted for the trust domain of the subject.
    let f = Fixture::new();
    let claims = wit_claims_json(&f, |c| c["sub"] = "spiffe://other.org/payments".into());
    let token = craft(WIT_HEADER, &claims, &f.wit_issuer);
    assert_eq!(
        wit_err(&f, &token),
        TokenError::Key(BundleError::UntrustedTrustDomain("other.org".into()))
    );
}

#[test]
fn wit_signed_by_a_federated_domains_key_for_our_domain_is_refused() {
    // other.org is trusted for its own IDs, not for example.org's.
    let mut f = Fixture::new();
    let foreign = SigningKey::generate(Algorithm::Es256).unwrap();
    let mut other = TrustBundle::new(td("other.org"));
    other
        .add_authority(KeyUse::WitSvid, "foreign-1", foreign.public_key().clone())
        .unwrap();
    f.bundles.insert(other);
    let header = r#"{"alg":"ES256","kid":"foreign-1","typ":"wit+jwt"}"#;
    let token = craft(header, &wit_claims_json(&f, |_| {}), &foreign);
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::Key(BundleError::UnknownKey { .. })
    ));
}

#[test]
fn wit_signed_with_a_jwt_svid_key_is_refused() {
    let f = Fixture::new();
    let header = r#"{"alg":"ES256","kid":"jwt-1","typ":"wit+jwt"}"#;
    let token = craft(header, &wit_claims_json(&f, |_| {}), &f.jwt_issuer);
    assert!(matches!(
        wit_err(&f, &token),
        TokenError::Key(BundleError::UnknownKey { .. })
    ));
}

#[test]
fn empty_bundle_trusts_nothing() {
    let f = Fixture::new();
    let err = verify_wit(&f.wit(), &BundleSet::new(), WitProfile::Spiffe, &v()).unwrap_err();
    assert!(matches!(
        err,
        TokenError::Key(BundleError::UntrustedTrustDomain(_))
    ));
}

// ---- WPT binding, audience, lifetime, replay ------------------------------------------

#[test]
fn wpt_for_another_audience_is_refused() {
    let f = Fixture::new();
    let other = RequestBinding {
        audience: "https://other.example.org/api/orders",
        ..Default::default()
    };
    let wpt = issue_wpt(&f.holder, &f.wit(), &other, NOW, 60).unwrap();
    assert!(matches!(
        wpt_err(&f, &wpt, &binding()),
        TokenError::WrongAudience { .. }
    ));
}

#[test]
fn wpt_signed_by_a_key_other_than_the_wit_cnf_is_refused() {
    let f = Fixture::new();
    let thief = SigningKey::generate(Algorithm::Es256).unwrap();
    let wpt = issue_wpt(&thief, &f.wit(), &binding(), NOW, 60).unwrap();
    assert_eq!(
        wpt_err(&f, &wpt, &binding()),
        TokenError::Jws(JwsError::Signature(KeyError::BadSignature))
    );
}

#[test]
fn wpt_for_another_wit_is_refused() {
    // Token swapped between requests: a proof made for WIT A presented with WIT B.
    let f = Fixture::new();
    let mut other_claims = f.wit_claims();
    other_claims.jti = Some("another".into());
    let other_wit = wimse_core::token::wit::issue_wit(
        &f.wit_issuer,
        Some("wit-1"),
        &other_claims,
        WitProfile::Wimse,
    )
    .unwrap();
    let wpt = issue_wpt(&f.holder, &other_wit, &binding(), NOW, 60).unwrap();
    assert_eq!(
        wpt_err(&f, &wpt, &binding()),
        TokenError::BindingMismatch("wth".into())
    );
}

#[test]
fn replayed_wpt_is_refused() {
    let f = Fixture::new();
    let wit = verify_wit(&f.wit(), &f.bundles, WitProfile::Wimse, &v()).unwrap();
    let wpt = issue_wpt(&f.holder, &f.wit(), &binding(), NOW, 60).unwrap();
    let replay = ReplayCache::new(10);
    verify_wpt(&wpt, &wit, &binding(), &v(), &replay).unwrap();
    assert_eq!(
        verify_wpt(&wpt, &wit, &binding(), &v(), &replay).unwrap_err(),
        TokenError::Replay
    );
}

#[test]
fn expired_wpt_is_refused() {
    let f = Fixture::new();
    let wpt = issue_wpt(&f.holder, &f.wit(), &binding(), NOW - 200, 60).unwrap();
    assert!(matches!(
        wpt_err(&f, &wpt, &binding()),
        TokenError::Expired { .. }
    ));
}

#[test]
fn wpt_living_too_long_is_refused() {
    let f = Fixture::new();
    let wpt = issue_wpt(&f.holder, &f.wit(), &binding(), NOW, 3600).unwrap();
    assert!(matches!(
        wpt_err(&f, &wpt, &binding()),
        TokenError::LifetimeTooLong { .. }
    ));
}

#[test]
fn wpt_not_bound_to_the_txn_token_in_the_request_is_refused() {
    let f = Fixture::new();
    let wpt = issue_wpt(&f.holder, &f.wit(), &binding(), NOW, 60).unwrap();
    let with_txn = RequestBinding {
        audience: TARGET,
        txn_token: Some("a.b.c"),
        ..Default::default()
    };
    assert_eq!(
        wpt_err(&f, &wpt, &with_txn),
        TokenError::MissingClaim("tth")
    );
}

#[test]
fn wpt_bound_to_a_different_access_token_is_refused() {
    let f = Fixture::new();
    let made_for = RequestBinding {
        audience: TARGET,
        access_token: Some("token-one"),
        ..Default::default()
    };
    let wpt = issue_wpt(&f.holder, &f.wit(), &made_for, NOW, 60).unwrap();
    let presented = RequestBinding {
        audience: TARGET,
        access_token: Some("token-two"),
        ..Default::default()
    };
    assert_eq!(
        wpt_err(&f, &wpt, &presented),
        TokenError::BindingMismatch("ath".into())
    );
}

#[test]
fn wpt_other_token_hashes_must_cover_exactly_the_request() {
    let f = Fixture::new();
    let tokens = [("X-Context", " ctx-token ")];
    let made_for = RequestBinding {
        audience: TARGET,
        other_tokens: &tokens,
        ..Default::default()
    };
    let wpt = issue_wpt(&f.holder, &f.wit(), &made_for, NOW, 60).unwrap();
    // Names are lower-cased and values trimmed, so this matches.
    let same = [("x-context", "ctx-token")];
    let ok = RequestBinding {
        audience: TARGET,
        other_tokens: &same,
        ..Default::default()
    };
    let wit = verify_wit(&f.wit(), &f.bundles, WitProfile::Wimse, &v()).unwrap();
    verify_wpt(&wpt, &wit, &ok, &v(), &ReplayCache::new(10)).unwrap();
    let different = [("x-context", "other")];
    let bad = RequestBinding {
        audience: TARGET,
        other_tokens: &different,
        ..Default::default()
    };
    assert_eq!(
        wpt_err(&f, &wpt, &bad),
        TokenError::BindingMismatch("oth".into())
    );
}

// ---- JWT-SVID and Txn-Token claims ----------------------------------------------------

fn txn_claims() -> TxnTokenClaims {
    TxnTokenClaims {
        iss: None,
        iat: NOW,
        aud: Audience::One(TD.into()),
        exp: NOW + 300,
        txn: "97053963-771d-49cc-a4e3-20aad399c312".into(),
        sub: "user@example.org".into(),
        scope: "trade.stocks".into(),
        tctx: Some(serde_json::from_value(json!({"action": "BUY", "ticker": "MSFT"})).unwrap()),
        rctx: None,
        req_wl: "spiffe://example.org/gateway".into(),
        act: None,
    }
}

#[test]
fn jwt_svid_round_trips_and_checks_audience() {
    let f = Fixture::new();
    let claims = JwtSvidClaims {
        sub: id(WORKLOAD),
        aud: Audience::Many(vec!["a".into(), "b".into()]),
        exp: NOW + 60,
        iat: Some(NOW),
        iss: None,
    };
    let token = issue_jwt_svid(&f.jwt_issuer, "jwt-1", &claims).unwrap();
    let verified = verify_jwt_svid(&token, &f.bundles, "b", &v()).unwrap();
    assert_eq!(verified.claims, claims);
    assert!(matches!(
        verify_jwt_svid(&token, &f.bundles, "c", &v()),
        Err(TokenError::WrongAudience { .. })
    ));
}

#[test]
fn jwt_svid_without_kid_is_refused() {
    let f = Fixture::new();
    let claims = json!({"sub": WORKLOAD, "aud": "x", "exp": NOW + 60}).to_string();
    let token = craft(r#"{"alg":"ES256","typ":"JWT"}"#, &claims, &f.jwt_issuer);
    assert_eq!(
        verify_jwt_svid(&token, &f.bundles, "x", &v()).unwrap_err(),
        TokenError::MissingKid
    );
}

#[test]
fn jwt_svid_signed_with_eddsa_is_refused() {
    let f = Fixture::new();
    let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let claims = json!({"sub": WORKLOAD, "aud": "x", "exp": NOW + 60}).to_string();
    let token = craft(r#"{"alg":"EdDSA","kid":"jwt-1","typ":"JWT"}"#, &claims, &ed);
    assert_eq!(
        verify_jwt_svid(&token, &f.bundles, "x", &v()).unwrap_err(),
        TokenError::AlgorithmNotAllowed("EdDSA".into())
    );
}

#[test]
fn txn_token_round_trips() {
    let f = Fixture::new();
    let token = issue_txn_token(&f.jwt_issuer, "jwt-1", &txn_claims()).unwrap();
    assert_eq!(
        verify_txn_token(&token, &f.bundles, &td(TD), &v()).unwrap(),
        txn_claims()
    );
}

#[test]
fn txn_token_outside_its_trust_domain_is_refused() {
    let mut f = Fixture::new();
    // other.org trusts example.org's keys (federation) but the token is for example.org only.
    let mut other = TrustBundle::new(td("other.org"));
    other
        .add_authority(KeyUse::JwtSvid, "jwt-1", f.jwt_issuer.public_key().clone())
        .unwrap();
    f.bundles.insert(other);
    let token = issue_txn_token(&f.jwt_issuer, "jwt-1", &txn_claims()).unwrap();
    assert!(matches!(
        verify_txn_token(&token, &f.bundles, &td("other.org"), &v()),
        Err(TokenError::WrongAudience { .. })
    ));
}

#[test]
fn txn_token_missing_req_wl_is_refused() {
    let f = Fixture::new();
    let claims = edit_json(&txn_claims(), |c| {
        c.as_object_mut().unwrap().remove("req_wl");
    });
    let token = craft(
        r#"{"alg":"ES256","kid":"jwt-1","typ":"txntoken+jwt"}"#,
        &claims,
        &f.jwt_issuer,
    );
    assert!(matches!(
        verify_txn_token(&token, &f.bundles, &td(TD), &v()),
        Err(TokenError::Jws(JwsError::Claims(m))) if m.contains("req_wl")
    ));
}

#[test]
fn expired_txn_token_is_refused() {
    let f = Fixture::new();
    let mut claims = txn_claims();
    claims.exp = NOW - 100;
    let token = issue_txn_token(&f.jwt_issuer, "jwt-1", &claims).unwrap();
    assert!(matches!(
        verify_txn_token(&token, &f.bundles, &td(TD), &v()),
        Err(TokenError::Expired { .. })
    ));
}
