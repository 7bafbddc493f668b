//! Identity chaining across trust domains (draft-ietf-oauth-identity-chaining, RFC 7523):
//! the two tokens that carry a transaction's subject from one trust domain into another.
//!
//! 1. A workload of domain A exchanges its Txn-Token at A's token service (RFC 8693,
//!    `requested_token_type` `...:jwt`, `audience` B) for a **JWT authorization grant**
//!    ([`GrantClaims`], `typ` `authorization-grant+jwt`): A vouches for the subject to B,
//!    names the workload that asked as the actor (`act`), and lets it live a minute.
//! 2. The workload presents the grant to B's token service (`grant_type` `jwt-bearer`),
//!    authenticating itself with a JWT-SVID client assertion (SPIFFE client
//!    authentication). B verifies the grant with A's *federated* bundle and issues an
//!    **access token** ([`AccessTokenClaims`], `typ` `at+jwt`, RFC 9068) for its own
//!    resources, which B's gateway turns into a Txn-Token of B as for any outside client.
//!
//! A trust domain's token service is named by its trust domain's SPIFFE ID
//! ([`service_id`], `spiffe://a.example`): that is `iss` of what it issues and `aud` of
//! what is addressed to it. Keys are the trust domain's `jwt-svid` authorities, so every
//! bundle already publishes them. Each kind has its own `typ`, checked before anything
//! else, so a grant never passes as a JWT-SVID (whose `typ` is `JWT` or absent) nor the
//! reverse: the grant format of the draft's example, which has no `typ`, is refused on
//! purpose (rfc7523bis types grants explicitly).

use super::exchange::Scope;
use super::{TokenError, Validation, require_typ};
use crate::bundle::{KeyUse, TrustBundle};
use crate::id::{TrustDomain, WorkloadId};
use crate::jose::{Jws, SigningKey, jws};
use serde::{Deserialize, Serialize};

/// `typ` of a JWT authorization grant (rfc7523bis).
pub const GRANT_TYP: &str = "authorization-grant+jwt";
/// `typ` of a JWT access token (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The RFC 7523 `grant_type` that presents a grant.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The `client_assertion_type` of a JWT-SVID client assertion
/// (draft-ietf-oauth-spiffe-client-auth).
pub const JWT_SPIFFE_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
/// The longest a grant may live, whatever its issuer says: it is a bearer token.
pub const MAX_GRANT_LIFETIME: i64 = 300;

/// The name of `trust_domain`'s token service: its trust domain's SPIFFE ID.
pub fn service_id(trust_domain: &TrustDomain) -> String {
    trust_domain.spiffe_id_string()
}

/// The acting party (RFC 8693 §4.1): who a token was issued to act for its subject, and
/// the actors before it, most recent outermost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Its ID: a workload's SPIFFE ID, or the name an outside authorization server gave a
    /// delegate (an agent acting for a user).
    pub sub: String,
    /// The actor before it (informational only: access control looks at the current
    /// actor alone, RFC 8693 §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// `sub` acting, with no actor before it.
    pub fn new(sub: impl Into<String>) -> Self {
        Actor {
            sub: sub.into(),
            act: None,
        }
    }

    /// `sub` acting now, after the actors of `prior` (if any).
    pub fn after(sub: impl Into<String>, prior: Option<&Actor>) -> Self {
        Actor {
            sub: sub.into(),
            act: prior.map(|p| Box::new(p.clone())),
        }
    }

    /// Every actor's `sub`, current first.
    pub fn chain(&self) -> impl Iterator<Item = &str> {
        std::iter::successors(Some(self), |a| a.act.as_deref()).map(|a| a.sub.as_str())
    }

    /// The same chain with `prefix` before every `sub` (an outside issuer's subject
    /// namespace, as its subjects get). Recursive: call it on a checked chain.
    #[must_use]
    pub fn prefixed(&self, prefix: &str) -> Actor {
        Actor {
            sub: format!("{prefix}{}", self.sub),
            act: self.act.as_ref().map(|a| Box::new(a.prefixed(prefix))),
        }
    }

    /// Refuses a chain of more than [`MAX_ACTORS`] or with an empty `sub`.
    pub fn check_names(&self) -> Result<(), TokenError> {
        let bad = |reason: String| TokenError::BadClaim {
            claim: "act",
            reason,
        };
        if self.chain().count() > MAX_ACTORS {
            return Err(bad(format!("more than {MAX_ACTORS} actors")));
        }
        if self.chain().any(str::is_empty) {
            return Err(bad("an actor with an empty `sub`".into()));
        }
        Ok(())
    }

    /// [`Actor::check_names`], and refuses a current actor that is not a workload of
    /// `trust_domain` (the domain whose token service named it).
    pub fn check(&self, trust_domain: &TrustDomain) -> Result<(), TokenError> {
        self.check_names()?;
        let bad = |reason: String| TokenError::BadClaim {
            claim: "act",
            reason,
        };
        let actor = WorkloadId::parse(&self.sub).map_err(TokenError::Subject)?;
        if actor.trust_domain() != trust_domain || actor.is_trust_domain_id() {
            return Err(bad(format!(
                "`{actor}` is not a workload of trust domain `{trust_domain}`"
            )));
        }
        Ok(())
    }
}

/// The most actors a token may name.
pub const MAX_ACTORS: usize = 16;

/// The claims of a token `bundle`'s trust domain's token service signed, once its `typ`
/// is `typ` and its signature verifies with the `jwt-svid` key its `kid` names.
pub(crate) fn signed_by_service<T: serde::de::DeserializeOwned>(
    token: &str,
    typ: &'static str,
    bundle: &TrustBundle,
) -> Result<T, TokenError> {
    let jws = Jws::parse(token)?;
    let header = jws.header();
    require_typ(header, typ)?;
    let kid = header.kid.as_deref().ok_or(TokenError::MissingKid)?;
    jws.verify(bundle.authority(KeyUse::JwtSvid, Some(kid))?)?;
    Ok(jws.claims()?)
}

/// Who issued a token service's token, for whom and when.
pub(crate) struct ServiceEnvelope<'a> {
    pub(crate) iss: &'a str,
    pub(crate) aud: &'a str,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
}

impl ServiceEnvelope<'_> {
    /// Refuses an `iss` other than `bundle`'s trust domain's token service, an `aud`
    /// other than `audience`, an `exp` passed or more than `max_lifetime` ahead, and an
    /// `iat` in the future.
    pub(crate) fn check(
        &self,
        bundle: &TrustBundle,
        audience: &str,
        max_lifetime: i64,
        validation: &Validation,
    ) -> Result<(), TokenError> {
        let issuer = service_id(bundle.trust_domain());
        if self.iss != issuer {
            return Err(TokenError::BadClaim {
                claim: "iss",
                reason: format!("`{}` is not `{issuer}`", self.iss),
            });
        }
        if self.aud != audience {
            return Err(TokenError::WrongAudience {
                expected: audience.to_owned(),
                found: self.aud.to_owned(),
            });
        }
        validation.check_exp(self.exp)?;
        validation.check_iat(Some(self.iat))?;
        validation.check_lifetime(self.exp, max_lifetime)
    }
}

/// Refuses a token whose required string `claims` (name, value) include an empty one, or
/// whose `scope` is not a valid OAuth scope.
pub(crate) fn require_claims(
    claims: &[(&'static str, &str)],
    scope: &str,
) -> Result<(), TokenError> {
    if let Some((claim, _)) = claims.iter().find(|(_, value)| value.is_empty()) {
        return Err(TokenError::BadClaim {
            claim,
            reason: "empty".into(),
        });
    }
    Scope::parse(scope).map_err(|e| TokenError::BadClaim {
        claim: "scope",
        reason: e.description().to_owned(),
    })?;
    Ok(())
}

/// The claims of a JWT authorization grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// The issuing token service ([`service_id`] of its trust domain).
    pub iss: String,
    /// The subject, as the issuing trust domain names it (a Txn-Token's `sub`).
    pub sub: String,
    /// The token service it is for (one value).
    pub aud: String,
    /// Expiry.
    #[serde(deserialize_with = "super::numeric_date")]
    pub exp: i64,
    /// Issued at.
    #[serde(deserialize_with = "super::numeric_date")]
    pub iat: i64,
    /// Unique ID: the receiving token service accepts each grant once.
    pub jti: String,
    /// The scope granted, never wider than the subject token's.
    pub scope: String,
    /// The workload that asked for the grant, and alone may present it.
    pub act: Actor,
    /// The transaction it came from, for correlating audit records across domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
}

/// The claims of an access token issued for a grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// The issuing token service.
    pub iss: String,
    /// The subject, as the issuing trust domain names it.
    pub sub: String,
    /// The resources it is for: the issuing trust domain's name.
    pub aud: String,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Unique ID.
    pub jti: String,
    /// The OAuth client: the workload that presented the grant.
    pub client_id: String,
    /// The scope granted.
    pub scope: String,
    /// That same workload as the actor, with the token service that vouched for the
    /// subject (RFC 8693 `act.iss`).
    pub act: ChainedActor,
}

/// The actor of a chained access token: who acts, which token service vouched, and the
/// actors before it in the other trust domain (the grant's prior actors, such as the
/// worker a transaction was delegated to, or an outside delegate; informational only,
/// RFC 8693 §4.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedActor {
    /// The workload's SPIFFE ID.
    pub sub: String,
    /// The token service of the workload's trust domain.
    pub iss: String,
    /// The actor before it, as the grant names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// Signs a grant with `kid`, a `jwt-svid` authority of the issuer's trust domain.
pub fn issue_grant(
    key: &SigningKey,
    kid: &str,
    claims: &GrantClaims,
) -> Result<String, TokenError> {
    if claims.sub.is_empty() || claims.jti.is_empty() || claims.scope.is_empty() {
        return Err(TokenError::Issue(
            "a grant needs a subject, a `jti` and a scope".into(),
        ));
    }
    Ok(jws::sign(key, Some(GRANT_TYP), Some(kid), claims)?)
}

/// Signs an access token with `kid`, a `jwt-svid` authority of the issuer's trust domain.
pub fn issue_access_token(
    key: &SigningKey,
    kid: &str,
    claims: &AccessTokenClaims,
) -> Result<String, TokenError> {
    if claims.sub.is_empty() || claims.scope.is_empty() {
        return Err(TokenError::Issue(
            "an access token needs a subject and a scope".into(),
        ));
    }
    Ok(jws::sign(key, Some(ACCESS_TOKEN_TYP), Some(kid), claims)?)
}

/// The trust domain whose token service claims to have issued `grant`, read from the
/// unverified payload only to choose the bundle [`verify_grant`] is given.
pub fn grant_issuer(grant: &str) -> Result<TrustDomain, TokenError> {
    #[derive(Deserialize)]
    struct IssuerOnly {
        iss: Option<String>,
    }
    let named: IssuerOnly = Jws::parse(grant)?.claims()?;
    let iss = named.iss.ok_or(TokenError::MissingClaim("iss"))?;
    let bad = |reason: String| TokenError::BadClaim {
        claim: "iss",
        reason,
    };
    let id = WorkloadId::parse(&iss).map_err(|e| bad(format!("`{iss}`: {e}")))?;
    if !id.is_spiffe() || !id.is_trust_domain_id() {
        return Err(bad(format!("`{iss}` is not a trust domain's SPIFFE ID")));
    }
    Ok(id.trust_domain().clone())
}

/// Verifies a grant addressed to `audience` (the verifier's [`service_id`]) against
/// `bundle`, the bundle of the trust domain [`grant_issuer`] named: `typ`, `kid`, the
/// signature with that domain's `jwt-svid` key, `iss` exactly that domain's service, one
/// `aud` exactly `audience`, `exp` (and no more than [`MAX_GRANT_LIFETIME`] plus the
/// leeway ahead), `iat`,
/// and an actor that is a workload of the issuing domain.
pub fn verify_grant(
    grant: &str,
    bundle: &TrustBundle,
    audience: &str,
    validation: &Validation,
) -> Result<GrantClaims, TokenError> {
    let claims: GrantClaims = signed_by_service(grant, GRANT_TYP, bundle)?;
    // The two token services' clocks may differ by the leeway.
    ServiceEnvelope {
        iss: &claims.iss,
        aud: &claims.aud,
        iat: claims.iat,
        exp: claims.exp,
    }
    .check(bundle, audience, MAX_GRANT_LIFETIME, validation)?;
    require_claims(
        &[
            ("sub", &claims.sub),
            ("jti", &claims.jti),
            ("scope", &claims.scope),
        ],
        &claims.scope,
    )?;
    claims.act.check(bundle.trust_domain())?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Algorithm;

    const NOW: i64 = 1_800_000_000;

    struct World {
        a: TrustDomain,
        key: SigningKey,
        bundle: TrustBundle,
    }

    fn world() -> World {
        let a = TrustDomain::new("a.example").unwrap();
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut bundle = TrustBundle::new(a.clone());
        bundle
            .add_authority(KeyUse::JwtSvid, "k1", key.public_key().clone())
            .unwrap();
        World { a, key, bundle }
    }

    fn claims() -> GrantClaims {
        GrantClaims {
            iss: "spiffe://a.example".into(),
            sub: "user:alice".into(),
            aud: "spiffe://b.example".into(),
            exp: NOW + 60,
            iat: NOW,
            jti: "j1".into(),
            scope: "orders".into(),
            act: Actor::new("spiffe://a.example/egress"),
            txn: Some("t1".into()),
        }
    }

    fn verify(w: &World, grant: &str) -> Result<GrantClaims, TokenError> {
        verify_grant(grant, &w.bundle, "spiffe://b.example", &Validation::at(NOW))
    }

    #[test]
    fn a_grant_round_trips_and_names_its_issuer() {
        let w = world();
        let grant = issue_grant(&w.key, "k1", &claims()).unwrap();
        assert_eq!(grant_issuer(&grant).unwrap(), w.a);
        assert_eq!(verify(&w, &grant).unwrap(), claims());
        assert_eq!(service_id(&w.a), "spiffe://a.example");
    }

    #[test]
    fn every_broken_grant_is_refused_with_its_reason() {
        let w = world();
        let signed = |c: &GrantClaims| issue_grant(&w.key, "k1", c).unwrap();
        let refused = |c: GrantClaims| verify(&w, &signed(&c)).unwrap_err();
        let mut c = claims();
        c.aud = "spiffe://c.example".into();
        assert!(matches!(refused(c), TokenError::WrongAudience { .. }));
        let mut c = claims();
        c.iss = "spiffe://b.example".into();
        assert!(matches!(
            refused(c),
            TokenError::BadClaim { claim: "iss", .. }
        ));
        let mut c = claims();
        c.exp = NOW - 61;
        assert!(matches!(refused(c), TokenError::Expired { .. }));
        let mut c = claims();
        c.exp = NOW + MAX_GRANT_LIFETIME + 61;
        assert!(matches!(refused(c), TokenError::LifetimeTooLong { .. }));
        let mut c = claims();
        c.act.sub = "spiffe://b.example/egress".into();
        assert!(matches!(
            refused(c),
            TokenError::BadClaim { claim: "act", .. }
        ));
        let mut c = claims();
        c.act.sub = "spiffe://a.example".into();
        assert!(matches!(
            refused(c),
            TokenError::BadClaim { claim: "act", .. }
        ));
        let mut c = claims();
        c.scope = "a\"b".into();
        assert!(matches!(
            refused(c),
            TokenError::BadClaim { claim: "scope", .. }
        ));
        // Signed by a key the issuing domain does not hold.
        let other = SigningKey::generate(Algorithm::Es256).unwrap();
        let forged = issue_grant(&other, "k1", &claims()).unwrap();
        assert!(matches!(verify(&w, &forged), Err(TokenError::Jws(_))));
        // Another kind of token of the same domain, same key: refused by `typ`.
        let svid = jws::sign(&w.key, Some("JWT"), Some("k1"), &claims()).unwrap();
        assert!(matches!(
            verify(&w, &svid),
            Err(TokenError::WrongType { .. })
        ));
        let txn = jws::sign(&w.key, Some("txntoken+jwt"), Some("k1"), &claims()).unwrap();
        assert!(matches!(
            verify(&w, &txn),
            Err(TokenError::WrongType { .. })
        ));
        let untyped = jws::sign(&w.key, None, Some("k1"), &claims()).unwrap();
        assert!(matches!(
            verify(&w, &untyped),
            Err(TokenError::WrongType { .. })
        ));
        let no_kid = jws::sign(&w.key, Some(GRANT_TYP), None, &claims()).unwrap();
        assert!(matches!(verify(&w, &no_kid), Err(TokenError::MissingKid)));
    }

    #[test]
    fn an_access_token_verifies_only_as_its_token_services_and_only_typed() {
        use crate::token::access::{TrustedIssuer, verify_access_token};
        let w = world();
        let claims = AccessTokenClaims {
            iss: "spiffe://a.example".into(),
            sub: "b.example/user:bob".into(),
            aud: "a.example".into(),
            exp: NOW + 300,
            iat: NOW,
            jti: "j2".into(),
            client_id: "spiffe://b.example/egress".into(),
            scope: "orders".into(),
            act: ChainedActor {
                sub: "spiffe://b.example/egress".into(),
                iss: "spiffe://b.example".into(),
                act: Some(Box::new(Actor::new("spiffe://b.example/worker"))),
            },
        };
        let issuers = [TrustedIssuer::token_service_of(&w.bundle)];
        let token = issue_access_token(&w.key, "k1", &claims).unwrap();
        let (_, verified) = verify_access_token(&token, &issuers, &Validation::at(NOW)).unwrap();
        assert_eq!(verified.sub, "b.example/user:bob");
        assert_eq!(verified.scope.to_string(), "orders");
        assert_eq!(
            verified.client_id.as_deref(),
            Some("spiffe://b.example/egress")
        );
        // The prior actors of the other domain come along, after the presenting client.
        let actors: Vec<&str> = verified.act.as_ref().map(|a| a.chain().collect()).unwrap();
        assert_eq!(
            actors,
            ["spiffe://b.example/egress", "spiffe://b.example/worker"]
        );
        // A JWT-SVID or an untyped token of the same keys and claims is refused.
        for typ in [Some("JWT"), None] {
            let other = jws::sign(&w.key, typ, Some("k1"), &claims).unwrap();
            let err = verify_access_token(&other, &issuers, &Validation::at(NOW)).unwrap_err();
            assert!(matches!(err, TokenError::WrongType { .. }), "{err}");
        }
        let no_kid = jws::sign(&w.key, Some(ACCESS_TOKEN_TYP), None, &claims).unwrap();
        assert!(matches!(
            verify_access_token(&no_kid, &issuers, &Validation::at(NOW)),
            Err(TokenError::MissingKid)
        ));
    }

    #[test]
    fn the_issuer_must_be_a_trust_domain_id() {
        let w = world();
        let mut c = claims();
        for iss in ["https://as.a.example", "spiffe://a.example/server", ""] {
            c.iss = iss.into();
            let grant = issue_grant(&w.key, "k1", &c).unwrap();
            assert!(grant_issuer(&grant).is_err(), "{iss}");
        }
        assert!(grant_issuer("not a jwt").is_err());
    }

    #[test]
    fn the_drafts_untyped_example_grant_is_refused_for_its_missing_typ() {
        // The identity-chaining draft's example grant verifies with its issuer's key
        // (vectors.json), but carries no `typ`: explicit typing is what keeps a grant
        // and a JWT-SVID of the same keys apart, so it is refused.
        let example = "eyJhbGciOiJFUzI1NiIsImtpZCI6IjI4MTMzMDgwMDQifQ.eyJpc3MiOiJodHRwczovL2FzLmEuZXhhbXBsZS9hdXRoIiwiZXhwIjoxNjk1Mjg3NzUyLCJpYXQiOjE2OTUyODc2OTIsInN1YiI6ImpvaG5kb2VAYS5leGFtcGxlIiwiYXVkIjoiaHR0cHM6Ly9hcy5iLmV4YW1wbGUvYXV0aCJ9.Li8Rh-c-R0xirbuXlX8x6sQkZRqJIms9U8Rk8cL7uh1Mm232O6mwz1osPEMNef4OFUW-qTfA0C9QdeIl-e0KsA";
        let jwk: crate::jose::Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "2813308004", "use": "sig",
            "x": "MXfMrj_tgPJHxkfmDAx0m74E-T-DuLYCNdmuqtpfP_E",
            "y": "YX82bI52OPBED1h_1HpsxAyWzrQ7DChAAVX9Q9E8uYQ"
        }))
        .unwrap();
        let key = crate::jose::PublicKey::from_jwk(&jwk).unwrap();
        Jws::parse(example).unwrap().verify(&key).unwrap();
        let mut bundle = TrustBundle::new(TrustDomain::new("a.example").unwrap());
        bundle
            .add_authority(KeyUse::JwtSvid, "2813308004", key)
            .unwrap();
        let err = verify_grant(
            example,
            &bundle,
            "https://as.b.example/auth",
            &Validation::at(1_695_287_700),
        )
        .unwrap_err();
        assert!(matches!(err, TokenError::WrongType { .. }), "{err}");
    }
}
