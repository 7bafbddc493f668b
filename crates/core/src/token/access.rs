//! OAuth access tokens from issuers outside the trust domain (an organisation's
//! authorization server), as the subject of a Txn-Token request: JWT access tokens in the
//! RFC 9068 shape, verified against keys configured for each trusted issuer.
//!
//! [`verify_access_token`] reads `iss` from the unverified payload only to pick the
//! configured issuer, then: `typ`, when present, `at+jwt` or `JWT`; the key by `kid` (or
//! the issuer's only key when the token names none) from that issuer's configured JWK Set,
//! never from the token; the signature, with the algorithm the key is bound to; `iss`
//! exactly; `aud` containing the configured audience; `exp` (required), `nbf`, `iat`; a
//! non-empty `sub`; and a scope, from `scope` (RFC 9068) or `scp`. A token whose scope
//! cannot be determined is refused: the Txn-Token draft forbids treating it as unlimited.

use super::chain::Actor;
use super::exchange::Scope;
use super::{Audience, TokenError, Validation};
use crate::bundle::{KeyUse, TrustBundle};
use crate::jose::{Algorithm, Jwk, JwkSet, Jws, PublicKey};
use serde::Deserialize;

/// An authorization server whose access tokens the token service accepts.
#[derive(Clone, Debug)]
pub struct TrustedIssuer {
    /// Its issuer identifier, compared exactly with `iss`.
    pub issuer: String,
    /// The audience its tokens must name for us.
    pub audience: String,
    /// Prepended to `sub`, so that subjects of different issuers cannot collide.
    pub subject_prefix: String,
    /// The widest scope a transaction it starts may have (`None`: what its token grants).
    pub max_scope: Option<Scope>,
    keys: Vec<(Option<String>, PublicKey)>,
    /// Whether its tokens must say `typ` `at+jwt` (our own token service's do).
    typed: bool,
}

impl TrustedIssuer {
    /// An issuer with the signing keys of `jwks` (keys with `use` other than `sig` are
    /// left out; an RSA key without `alg` is bound to RS256). Refused when no key is usable.
    pub fn new(
        issuer: String,
        audience: String,
        subject_prefix: String,
        jwks: &JwkSet,
    ) -> Result<Self, TokenError> {
        Self::awaiting_keys(issuer, audience, subject_prefix).with_jwks(jwks)
    }

    /// An issuer whose keys are not known yet (they are fetched from its JWKS URL):
    /// every token of it is refused until [`TrustedIssuer::with_jwks`] gives them.
    pub fn awaiting_keys(issuer: String, audience: String, subject_prefix: String) -> Self {
        TrustedIssuer {
            issuer,
            audience,
            subject_prefix,
            max_scope: None,
            keys: Vec::new(),
            typed: false,
        }
    }

    /// The same issuer with the signing keys of `jwks` in place of the ones it had (keys
    /// with `use` other than `sig` are left out; an RSA key without `alg` is bound to
    /// RS256). Refused when no key is usable, so that a broken JWK Set never leaves an
    /// issuer without keys.
    pub fn with_jwks(&self, jwks: &JwkSet) -> Result<Self, TokenError> {
        let keys: Vec<(Option<String>, PublicKey)> = jwks
            .keys
            .iter()
            .filter(|jwk| jwk.key_use.as_deref().is_none_or(|u| u == "sig"))
            .filter_map(|jwk| Some((jwk.kid.clone(), signing_key(jwk)?)))
            .collect();
        if keys.is_empty() {
            return Err(TokenError::Issue(format!(
                "no usable signing key for issuer `{}`",
                self.issuer
            )));
        }
        Ok(TrustedIssuer {
            keys,
            ..self.clone()
        })
    }

    /// [`TrustedIssuer::with_jwks`] with the JWK Set as JSON text, read strictly: a
    /// repeated member name, or anything but a JSON object, is refused.
    pub fn with_jwks_json(&self, json: &[u8]) -> Result<Self, TokenError> {
        let jwks: JwkSet = crate::json::object_from_slice(json)
            .map_err(|e| TokenError::Issue(format!("the JWK Set is not valid: {e}")))?;
        self.with_jwks(&jwks)
    }

    /// Whether a token naming `kid` (or none) would find its key here.
    pub fn holds_key(&self, kid: Option<&str>) -> bool {
        self.key(kid).is_ok()
    }

    /// How many signing keys are held.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The token service of `bundle`'s trust domain, as the issuer of the access tokens
    /// it grants for chained identities ([`super::chain`]): `iss` its service ID, `aud`
    /// the trust domain's name, its `jwt-svid` keys, `typ` `at+jwt` required, and the
    /// subject kept as issued (it was mapped when the grant was accepted). Built from the
    /// current bundle, so key rotation needs nothing more.
    pub fn token_service_of(bundle: &TrustBundle) -> Self {
        let trust_domain = bundle.trust_domain();
        TrustedIssuer {
            issuer: super::chain::service_id(trust_domain),
            audience: trust_domain.to_string(),
            subject_prefix: String::new(),
            max_scope: None,
            keys: bundle
                .authorities(KeyUse::JwtSvid)
                .iter()
                .map(|a| (Some(a.kid.clone()), a.key.clone()))
                .collect(),
            typed: true,
        }
    }

    /// [`TrustedIssuer::new`] with the JWK Set as JSON text (a `jwks_file`'s content),
    /// read strictly: a repeated member name is refused.
    pub fn from_jwks_json(
        issuer: String,
        audience: String,
        subject_prefix: String,
        json: &[u8],
    ) -> Result<Self, TokenError> {
        Self::awaiting_keys(issuer, audience, subject_prefix).with_jwks_json(json)
    }

    fn key(&self, kid: Option<&str>) -> Result<&PublicKey, TokenError> {
        match (kid, self.keys.as_slice()) {
            (_, []) => Err(TokenError::UnknownKey {
                reason: format!("no key of issuer `{}` is held yet", self.issuer),
            }),
            (Some(kid), keys) => keys
                .iter()
                .find(|(k, _)| k.as_deref() == Some(kid))
                .map(|(_, key)| key)
                .ok_or_else(|| TokenError::UnknownKey {
                    reason: format!("no key `{kid}` for issuer `{}`", self.issuer),
                }),
            (None, [(_, only)]) => Ok(only),
            (None, _) => Err(TokenError::MissingKid),
        }
    }
}

fn signing_key(jwk: &Jwk) -> Option<PublicKey> {
    PublicKey::from_jwk(jwk)
        .or_else(|e| match (jwk.kty(), &jwk.alg) {
            ("RSA", None) => PublicKey::from_jwk_with_alg(jwk, Algorithm::Rs256),
            _ => Err(e),
        })
        .ok()
}

/// The scope claim in either of its usual forms.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default, deserialize_with = "super::opt_numeric_date")]
    exp: Option<i64>,
    #[serde(default, deserialize_with = "super::opt_numeric_date")]
    nbf: Option<i64>,
    #[serde(default, deserialize_with = "super::opt_numeric_date")]
    iat: Option<i64>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    scp: Option<ScopeClaim>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    amr: Option<Vec<String>>,
    #[serde(default)]
    cnf: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    act: Option<Actor>,
}

#[derive(Deserialize)]
struct IssuerOnly {
    #[serde(default)]
    iss: Option<String>,
}

/// A verified access token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAccessToken {
    /// The issuer.
    pub iss: String,
    /// The subject as the issuer names it.
    pub sub: String,
    /// The granted scope.
    pub scope: Scope,
    /// Expiry.
    pub exp: i64,
    /// The OAuth client it was issued to, if it says.
    pub client_id: Option<String>,
    /// How the subject authenticated (RFC 8176), if it says.
    pub amr: Option<Vec<String>>,
    /// What the token is bound to (RFC 7800 `cnf`), if anything: a resource server must
    /// then see the client prove it (RFC 8705 `x5t#S256`: the client's TLS certificate).
    pub cnf: Option<serde_json::Map<String, serde_json::Value>>,
    /// Who acts for the subject (RFC 8693 `act`), as the issuer names them, when the
    /// token was issued to a delegate (an agent acting for a user, say) rather than to
    /// the subject's own client.
    pub act: Option<Actor>,
}

impl VerifiedAccessToken {
    /// The SHA-256 thumbprint (base64url) of the client certificate the token is bound to
    /// (RFC 8705 §3.1), if it names one.
    pub fn certificate_thumbprint(&self) -> Option<&str> {
        self.cnf
            .as_ref()
            .and_then(|c| c.get("x5t#S256"))
            .and_then(serde_json::Value::as_str)
    }
}

/// The issuer a token names and the key it names (`iss` and `kid`), read without
/// verifying anything: only to decide whose keys to look at (or fetch) before
/// [`verify_access_token`] checks it.
pub fn named_issuer_and_key(token: &str) -> Result<(String, Option<String>), TokenError> {
    let jws = Jws::parse(token)?;
    let named: IssuerOnly = jws.claims()?;
    let issuer = named.iss.ok_or(TokenError::MissingClaim("iss"))?;
    Ok((issuer, jws.header().kid.clone()))
}

/// Verifies an access token from one of `issuers` (see the module doc); returns the
/// issuer it came from and its claims.
pub fn verify_access_token<'a>(
    token: &str,
    issuers: impl IntoIterator<Item = &'a TrustedIssuer>,
    validation: &Validation,
) -> Result<(&'a TrustedIssuer, VerifiedAccessToken), TokenError> {
    let jws = Jws::parse(token)?;
    let header = jws.header();
    if header.typ.is_some() && !header.typ_is("at+jwt") && !header.typ_is("JWT") {
        return Err(TokenError::WrongType {
            expected: "at+jwt",
            found: header.typ.clone().unwrap_or_default(),
        });
    }
    // Only to choose whose keys to try; nothing else is read before the signature checks.
    let named: IssuerOnly = jws.claims()?;
    let named = named.iss.ok_or(TokenError::MissingClaim("iss"))?;
    let issuer = issuers
        .into_iter()
        .find(|i| i.issuer == named)
        .ok_or_else(|| TokenError::BadClaim {
            claim: "iss",
            reason: format!("`{named}` is not a trusted issuer"),
        })?;
    if issuer.typed {
        if !header.typ_is("at+jwt") {
            return Err(TokenError::WrongType {
                expected: "at+jwt",
                found: header.typ.clone().unwrap_or_default(),
            });
        }
        header.kid.as_ref().ok_or(TokenError::MissingKid)?;
    }
    jws.verify(issuer.key(header.kid.as_deref())?)?;
    let claims: RawClaims = jws.claims()?;
    if claims.iss.as_deref() != Some(issuer.issuer.as_str()) {
        return Err(TokenError::BadClaim {
            claim: "iss",
            reason: "changed between reads".into(),
        });
    }
    let aud = claims.aud.ok_or(TokenError::MissingClaim("aud"))?;
    if !aud.contains(&issuer.audience) {
        return Err(TokenError::WrongAudience {
            expected: issuer.audience.clone(),
            found: aud.values().join(" "),
        });
    }
    let exp = claims.exp.ok_or(TokenError::MissingClaim("exp"))?;
    validation.check_exp(exp)?;
    validation.check_nbf(claims.nbf)?;
    validation.check_iat(claims.iat)?;
    let sub = claims
        .sub
        .filter(|s| !s.is_empty())
        .ok_or(TokenError::MissingClaim("sub"))?;
    let scope = match claims.scope.or(claims.scp) {
        Some(ScopeClaim::Text(text)) => Scope::parse(&text),
        Some(ScopeClaim::List(list)) => Scope::from_tokens(list.iter().map(String::as_str)),
        None => return Err(TokenError::MissingClaim("scope")),
    }
    .map_err(|e| TokenError::BadClaim {
        claim: "scope",
        reason: e.description().to_owned(),
    })?;
    if let Some(act) = &claims.act {
        act.check_names()?;
    }
    Ok((
        issuer,
        VerifiedAccessToken {
            iss: issuer.issuer.clone(),
            sub,
            scope,
            exp,
            client_id: claims.client_id,
            amr: claims.amr,
            cnf: claims.cnf,
            act: claims.act,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{SigningKey, jws};
    use crate::token::chain::MAX_ACTORS;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn issuer(key: &SigningKey, kid: &str) -> TrustedIssuer {
        let mut jwk = key.public_jwk().clone();
        jwk.kid = Some(kid.into());
        TrustedIssuer::new(
            "https://login.example.com".into(),
            "wimse".into(),
            "login:".into(),
            &JwkSet { keys: vec![jwk] },
        )
        .unwrap()
    }

    fn token(
        key: &SigningKey,
        typ: Option<&str>,
        kid: Option<&str>,
        claims: &serde_json::Value,
    ) -> String {
        jws::sign(key, typ, kid, claims).unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({
            "iss": "https://login.example.com", "sub": "alice", "aud": ["wimse", "other"],
            "exp": NOW + 300, "iat": NOW, "scope": "orders refunds", "client_id": "web",
            "amr": ["pwd", "otp"],
        })
    }

    #[test]
    fn a_good_token_verifies() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let issuers = [issuer(&key, "k1")];
        let t = token(&key, Some("at+jwt"), Some("k1"), &good_claims());
        let (found, claims) = verify_access_token(&t, &issuers, &Validation::at(NOW)).unwrap();
        assert_eq!(found.subject_prefix, "login:");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.scope.to_string(), "orders refunds");
        assert_eq!(claims.amr.unwrap(), ["pwd", "otp"]);
        // No kid: the issuer's only key; `scp` as a list; `typ` JWT.
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["orders"]);
        let t = token(&key, Some("JWT"), None, &c);
        let (_, claims) = verify_access_token(&t, &issuers, &Validation::at(NOW)).unwrap();
        assert_eq!(claims.scope.to_string(), "orders");
    }

    #[test]
    fn a_delegates_token_names_its_actors_and_a_malformed_act_is_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let issuers = [issuer(&key, "k1")];
        let v = Validation::at(NOW);
        let with_act = |act: serde_json::Value| {
            let mut c = good_claims();
            c["act"] = act;
            token(&key, Some("at+jwt"), Some("k1"), &c)
        };
        let t = with_act(
            json!({"sub": "assistant", "iss": "https://login.example.com",
                                "act": {"sub": "planner"}}),
        );
        let (_, claims) = verify_access_token(&t, &issuers, &v).unwrap();
        let act = claims.act.unwrap();
        assert_eq!(act.chain().collect::<Vec<_>>(), ["assistant", "planner"]);
        let t = token(&key, Some("at+jwt"), Some("k1"), &good_claims());
        assert_eq!(verify_access_token(&t, &issuers, &v).unwrap().1.act, None);
        let mut deep = json!({"sub": "a0"});
        for i in 1..=MAX_ACTORS {
            deep = json!({"sub": format!("a{i}"), "act": deep});
        }
        for act in [
            json!("assistant"),
            json!({"client": "assistant"}),
            json!({"sub": ""}),
            json!({"sub": "a", "act": {"sub": ""}}),
            deep,
        ] {
            assert!(
                verify_access_token(&with_act(act.clone()), &issuers, &v).is_err(),
                "{act}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any chain of actors, of any depth and with any names (empty ones included), is
        /// accepted exactly when it has at most `MAX_ACTORS` actors and none is unnamed,
        /// and then read back as it was sent.
        #[test]
        fn an_actor_chain_is_kept_exactly_or_refused(
            names in proptest::collection::vec("[a-z:/.-]{0,12}", 1..=MAX_ACTORS + 3)
        ) {
            let key = SigningKey::generate(Algorithm::Es256).unwrap();
            let issuers = [issuer(&key, "k1")];
            let mut act = json!({"sub": names[names.len() - 1]});
            for name in names.iter().rev().skip(1) {
                act = json!({"sub": name, "act": act});
            }
            let mut claims = good_claims();
            claims["act"] = act;
            let t = token(&key, Some("at+jwt"), Some("k1"), &claims);
            let verified = verify_access_token(&t, &issuers, &Validation::at(NOW));
            let acceptable = names.len() <= MAX_ACTORS && names.iter().all(|n| !n.is_empty());
            proptest::prop_assert_eq!(verified.is_ok(), acceptable);
            if let Ok((_, claims)) = verified {
                let chain: Vec<String> = claims.act.unwrap().chain().map(str::to_owned).collect();
                proptest::prop_assert_eq!(chain, names);
            }
        }
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let other = SigningKey::generate(Algorithm::Es256).unwrap();
        let issuers = [issuer(&key, "k1")];
        let v = Validation::at(NOW);
        let with = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut c = good_claims();
            change(&mut c);
            token(&key, Some("at+jwt"), Some("k1"), &c)
        };
        let cases: Vec<(&str, String)> = vec![
            (
                "forged",
                token(&other, Some("at+jwt"), Some("k1"), &good_claims()),
            ),
            ("unknown kid", token(&key, None, Some("k2"), &good_claims())),
            (
                "wrong typ",
                token(&key, Some("wit+jwt"), Some("k1"), &good_claims()),
            ),
            (
                "untrusted iss",
                with(&|c| c["iss"] = json!("https://evil.example")),
            ),
            (
                "no iss",
                with(&|c| drop(c.as_object_mut().unwrap().remove("iss"))),
            ),
            ("wrong aud", with(&|c| c["aud"] = json!("someone-else"))),
            (
                "no aud",
                with(&|c| drop(c.as_object_mut().unwrap().remove("aud"))),
            ),
            ("expired", with(&|c| c["exp"] = json!(NOW - 3600))),
            (
                "no exp",
                with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
            ),
            ("not yet valid", with(&|c| c["nbf"] = json!(NOW + 3600))),
            ("empty sub", with(&|c| c["sub"] = json!(""))),
            (
                "no scope",
                with(&|c| drop(c.as_object_mut().unwrap().remove("scope"))),
            ),
            ("bad scope", with(&|c| c["scope"] = json!("a  b"))),
            ("scope not text", with(&|c| c["scope"] = json!(7))),
        ];
        for (name, t) in cases {
            assert!(
                verify_access_token(&t, &issuers, &v).is_err(),
                "{name} was accepted"
            );
        }
    }

    #[test]
    fn an_issuer_needs_a_usable_key() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut jwk = key.public_jwk().clone();
        jwk.key_use = Some("enc".into());
        assert!(
            TrustedIssuer::new(
                "i".into(),
                "a".into(),
                String::new(),
                &JwkSet { keys: vec![jwk] }
            )
            .is_err()
        );
        assert!(
            TrustedIssuer::new("i".into(), "a".into(), String::new(), &JwkSet::default()).is_err()
        );
    }

    #[test]
    fn an_issuer_awaiting_keys_refuses_every_token_until_it_has_them() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let waiting = TrustedIssuer::awaiting_keys(
            "https://login.example.com".into(),
            "wimse".into(),
            "login:".into(),
        );
        let t = token(&key, Some("at+jwt"), Some("k1"), &good_claims());
        let refused = verify_access_token(&t, [&waiting], &Validation::at(NOW)).unwrap_err();
        assert!(
            refused.to_string().contains("no key of issuer"),
            "{refused}"
        );
        assert!(!waiting.holds_key(Some("k1")) && !waiting.holds_key(None));
        // The keys arrive; everything else about the issuer stays.
        let mut jwk = key.public_jwk().clone();
        jwk.kid = Some("k1".into());
        let json = json!({ "keys": [jwk] }).to_string();
        let ready = waiting.with_jwks_json(json.as_bytes()).unwrap();
        assert!(ready.holds_key(Some("k1")) && ready.holds_key(None));
        assert!(!ready.holds_key(Some("k2")));
        let (found, _) = verify_access_token(&t, [&ready], &Validation::at(NOW)).unwrap();
        assert_eq!(found.subject_prefix, "login:");
        // A set with no usable key, or a repeated member, changes nothing.
        assert!(ready.with_jwks(&JwkSet::default()).is_err());
        assert!(ready.with_jwks_json(br#"{"keys":[],"keys":[]}"#).is_err());
        // Nor does an array in place of the set, even one holding its keys.
        let array = json!([[jwk]]).to_string();
        let refused = ready.with_jwks_json(array.as_bytes()).unwrap_err();
        assert!(
            refused.to_string().contains("not a JSON object"),
            "{refused}"
        );
    }

    #[test]
    fn the_named_issuer_and_key_are_read_without_verifying() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let t = token(&key, Some("at+jwt"), Some("k9"), &good_claims());
        let (iss, kid) = named_issuer_and_key(&t).unwrap();
        assert_eq!(iss, "https://login.example.com");
        assert_eq!(kid.as_deref(), Some("k9"));
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("iss");
        assert!(named_issuer_and_key(&token(&key, None, None, &c)).is_err());
        assert!(named_issuer_and_key("not.a.jwt").is_err());
    }
}
