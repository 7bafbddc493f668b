//! Identity chaining across trust domains (draft-ietf-oauth-identity-chaining), both ends,
//! at the token endpoint `POST /oauth2/token` (see [`wimse_core::token::chain`] for the
//! tokens):
//!
//! - **Issuing a grant** (this domain is A). A workload named in a
//!   `[[token_service.chain_to]]` entry exchanges a Txn-Token of this trust domain
//!   (RFC 8693, `requested_token_type` `urn:ietf:params:oauth:token-type:jwt`,
//!   `audience` the other trust domain) for a JWT authorization grant: the transaction's
//!   subject, a scope no wider than the Txn-Token's and the entry's `max_scope`, the
//!   workload itself as the actor, living `grant_ttl` seconds. An audience no entry names
//!   is `invalid_target`, as the draft asks.
//! - **Redeeming a grant** (this domain is B). A workload of a domain named in a
//!   `[[token_service.chain_from]]` entry presents the grant (RFC 7523, `jwt-bearer`) and
//!   authenticates with a JWT-SVID whose only audience is this token service
//!   (draft-ietf-oauth-spiffe-client-auth). Both are verified with that domain's
//!   federated bundle, the one federation keeps; the grant must be addressed here, be
//!   the client's own (`act.sub`), and is accepted once. The answer is an access token
//!   of this domain for the subject under the entry's `subject_prefix`, which the
//!   gateway admits and the token service turns into a Txn-Token like any other.
//!
//! A grant is accepted once by the whole trust domain: its `jti` is recorded in the
//! datastore ([`crate::datastore::Datastore::redeem_grant`]) after every other check, so
//! replicas on one PostgreSQL database share the record, and a refused request does not
//! use the grant up.

use crate::config::{ChainFrom, ChainTo, TokenServiceSettings};
use crate::token_service::TxnSigner;
use crate::token_service::{no_actor_token, within_limits};
use wimse_core::bundle::{BundleSet, TrustBundle};
use wimse_core::token::chain::{
    AccessTokenClaims, Actor, ChainedActor, GrantClaims, issue_access_token, issue_grant,
    service_id, verify_grant,
};
use wimse_core::token::exchange::{
    ExchangeError, ExchangeRequest, JwtBearerRequest, Scope, token_type,
};
use wimse_core::token::jwt_svid::verify_jwt_svid;
use wimse_core::token::txn::verify_txn_token_in;
use wimse_core::token::{Validation, random_jti};
use wimse_core::{TrustDomain, WorkloadId};

/// Who may chain to and from which trust domains (by default, none: no grant is issued
/// or accepted).
#[derive(Debug, Default)]
pub struct Chaining {
    grant_ttl: i64,
    access_token_ttl: i64,
    to: Vec<ChainTo>,
    from: Vec<ChainFrom>,
}

/// Where a scope request stands against the limits that apply.
fn narrowed(
    asked: Option<&Scope>,
    held: &Scope,
    held_by: &str,
    max: Option<&Scope>,
) -> Result<Scope, ExchangeError> {
    let scope = asked.unwrap_or(held);
    within_limits(
        scope,
        &[
            (Some(held), held_by),
            (max, "what this trust domain allows"),
        ],
    )?;
    Ok(scope.clone())
}

/// A trust domain named by a request, with or without its `spiffe://` prefix.
fn named_domain(text: &str) -> Option<TrustDomain> {
    TrustDomain::new(text.strip_prefix("spiffe://").unwrap_or(text)).ok()
}

impl Chaining {
    /// The chaining policy of `settings`.
    pub fn new(settings: &TokenServiceSettings) -> Self {
        Chaining {
            grant_ttl: settings.grant_ttl,
            access_token_ttl: settings.access_token_ttl,
            to: settings.chain_to.clone(),
            from: settings.chain_from.clone(),
        }
    }

    /// Whether grants from other trust domains are accepted here (and so this token
    /// service's own access tokens may start transactions).
    pub fn accepts_grants(&self) -> bool {
        !self.from.is_empty()
    }

    /// The trust domain a `jwt-bearer` grant must come from to be considered.
    pub fn accepted_from(&self, trust_domain: &TrustDomain) -> bool {
        self.from.iter().any(|f| &f.trust_domain == trust_domain)
    }

    /// Signs a grant for `caller`'s Txn-Token (this domain is A; see the module doc).
    /// `own` is this trust domain's bundle.
    pub fn grant(
        &self,
        caller: &WorkloadId,
        request: &ExchangeRequest,
        own: &TrustBundle,
        signer: &TxnSigner<'_>,
        now: i64,
    ) -> Result<(String, GrantClaims), ExchangeError> {
        let trust_domain = own.trust_domain();
        if caller.trust_domain() != trust_domain {
            return Err(ExchangeError::InvalidClient(format!(
                "`{caller}` is not in trust domain `{trust_domain}`"
            )));
        }
        if !request.resource.is_empty() {
            return Err(ExchangeError::InvalidTarget(
                "name the trust domain a grant is for by `audience`, not `resource`".into(),
            ));
        }
        let target = match request.audience.as_slice() {
            [one] => named_domain(one)
                .and_then(|td| self.to.iter().find(|t| t.trust_domain == td))
                .ok_or_else(|| {
                    ExchangeError::InvalidTarget(format!(
                        "this trust domain issues no grants for `{one}`"
                    ))
                })?,
            [] => {
                return Err(ExchangeError::InvalidRequest(
                    "parameter `audience` (the trust domain the grant is for) is missing".into(),
                ));
            }
            _ => {
                return Err(ExchangeError::InvalidTarget(
                    "a grant is for one trust domain".into(),
                ));
            }
        };
        if !target.requesters.contains(caller) {
            return Err(ExchangeError::UnauthorizedClient(format!(
                "`{caller}` may not ask for grants for `{}`",
                target.trust_domain
            )));
        }
        if request.subject_token_type != token_type::TXN_TOKEN {
            return Err(ExchangeError::InvalidRequest(format!(
                "a grant's subject token is a `{}`",
                token_type::TXN_TOKEN
            )));
        }
        no_actor_token(request)?;
        // No leeway: an expired transaction is not carried anywhere.
        let validation = Validation::strict_at(now);
        let txn = verify_txn_token_in(&request.subject_token, own, &validation)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token: {e}")))?;
        let held = Scope::parse(&txn.scope)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token scope: {e}")))?;
        let scope = narrowed(
            request.scope.as_ref(),
            &held,
            "the Txn-Token's scope",
            target.max_scope.as_ref(),
        )?;
        let claims = GrantClaims {
            iss: service_id(trust_domain),
            sub: txn.sub,
            aud: service_id(&target.trust_domain),
            exp: signer.expiry(now, self.grant_ttl)?,
            iat: now,
            jti: random_jti(),
            scope: scope.to_string(),
            act: Actor::after(caller.to_string(), txn.act.as_ref()),
            txn: Some(txn.txn),
        };
        let grant = issue_grant(signer.key, signer.kid, &claims)
            .map_err(|e| ExchangeError::ServerError(e.to_string()))?;
        Ok((grant, claims))
    }

    /// Checks a presented grant and its client (this domain is B; see the module doc):
    /// everything but whether the grant was used before, which the caller asks the
    /// datastore about (the grant's `jti` until [`Accepted::remember_until`]) before
    /// [`Chaining::access_token`] signs. `issuer` is the trust domain the grant names as
    /// its issuer ([`wimse_core::token::chain::grant_issuer`]), and `bundle` that
    /// domain's bundle, `None` when this server holds none.
    pub fn accept(
        &self,
        request: &JwtBearerRequest,
        own: &TrustDomain,
        issuer: &TrustDomain,
        bundle: Option<&TrustBundle>,
        now: i64,
    ) -> Result<Accepted, ExchangeError> {
        let grant_error = |e: wimse_core::token::TokenError| {
            ExchangeError::InvalidGrant(format!("the grant: {e}"))
        };
        let from_td = issuer;
        let from = self
            .from
            .iter()
            .find(|f| &f.trust_domain == from_td)
            .ok_or_else(|| {
                ExchangeError::InvalidGrant(format!(
                    "grants of trust domain `{from_td}` are not accepted here"
                ))
            })?;
        let bundle = bundle.ok_or_else(|| {
            ExchangeError::InvalidGrant(format!(
                "this server holds no bundle of trust domain `{from_td}` (federate with it)"
            ))
        })?;
        let me = service_id(own);
        let validation = Validation::at(now);
        let client = assertion_client(request, bundle, &me, &validation)?;
        if let Some(clients) = &from.clients
            && !clients.contains(&client)
        {
            return Err(ExchangeError::UnauthorizedClient(format!(
                "`{client}` may not present grants here"
            )));
        }
        let grant =
            verify_grant(&request.assertion, bundle, &me, &validation).map_err(grant_error)?;
        if grant.act.sub != client.as_str() {
            return Err(ExchangeError::InvalidGrant(format!(
                "the grant was issued to `{}`, not to `{client}`",
                grant.act.sub
            )));
        }
        let held = Scope::parse(&grant.scope)
            .map_err(|e| ExchangeError::InvalidGrant(format!("the grant's scope: {e}")))?;
        let scope = narrowed(
            request.scope.as_ref(),
            &held,
            "the grant's scope",
            from.max_scope.as_ref(),
        )?;
        Ok(Accepted {
            remember_until: grant.exp.saturating_add(validation.leeway),
            subject: format!("{}{}", from.subject_prefix, grant.sub),
            grant,
            client,
            scope,
        })
    }

    /// Signs the access token of trust domain `own` for a grant [`Chaining::accept`]
    /// accepted and the datastore recorded as redeemed now.
    pub fn access_token(
        &self,
        accepted: &Accepted,
        own: &TrustDomain,
        signer: &TxnSigner<'_>,
        now: i64,
    ) -> Result<(String, AccessTokenClaims), ExchangeError> {
        let claims = AccessTokenClaims {
            iss: service_id(own),
            sub: accepted.subject.clone(),
            aud: own.to_string(),
            exp: signer.expiry(now, self.access_token_ttl)?,
            iat: now,
            jti: random_jti(),
            client_id: accepted.client.to_string(),
            scope: accepted.scope.to_string(),
            act: ChainedActor {
                sub: accepted.client.to_string(),
                iss: accepted.grant.iss.clone(),
                act: accepted.grant.act.act.clone(),
            },
        };
        let token = issue_access_token(signer.key, signer.kid, &claims)
            .map_err(|e| ExchangeError::ServerError(e.to_string()))?;
        Ok((token, claims))
    }
}

/// A grant that passed every check but the one for reuse.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// Its claims.
    pub grant: GrantClaims,
    /// The workload that presented it.
    pub client: WorkloadId,
    /// The scope the access token gets.
    pub scope: Scope,
    /// The subject as this trust domain names it.
    pub subject: String,
    /// Until when its use must be remembered: past that it is refused as expired anyway.
    pub remember_until: i64,
}

/// The client presenting a grant, from its JWT-SVID client assertion: signed by the
/// grant issuer's trust domain, for this token service alone.
fn assertion_client(
    request: &JwtBearerRequest,
    bundle: &TrustBundle,
    me: &str,
    validation: &Validation,
) -> Result<WorkloadId, ExchangeError> {
    let assertion = request.client_assertion.as_deref().ok_or_else(|| {
        ExchangeError::InvalidClient(
            "authenticate with a JWT-SVID client assertion (`client_assertion_type` \
             `urn:ietf:params:oauth:client-assertion-type:jwt-spiffe`)"
                .into(),
        )
    })?;
    let mut bundles = BundleSet::new();
    bundles.insert(bundle.clone());
    let svid = verify_jwt_svid(assertion, &bundles, me, validation)
        .map_err(|e| ExchangeError::InvalidClient(format!("the client assertion: {e}")))?;
    if svid.claims.aud.values() != [me] {
        return Err(ExchangeError::InvalidClient(format!(
            "the client assertion must name `{me}` as its only audience"
        )));
    }
    let client = svid.claims.sub;
    if request
        .client_id
        .as_deref()
        .is_some_and(|id| id != client.as_str())
    {
        return Err(ExchangeError::InvalidClient(
            "`client_id` does not name the authenticated client".into(),
        ));
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wimse_core::bundle::KeyUse;
    use wimse_core::jose::{Algorithm, SigningKey};
    use wimse_core::token::Audience;
    use wimse_core::token::access::{TrustedIssuer, verify_access_token};
    use wimse_core::token::jwt_svid::{JwtSvidClaims, issue_jwt_svid};
    use wimse_core::token::txn::{TxnTokenClaims, issue_txn_token};

    const NOW: i64 = 1_800_000_000;

    /// One trust domain's token service: its key, bundle and chaining policy.
    struct Domain {
        td: TrustDomain,
        key: SigningKey,
        bundle: TrustBundle,
        chaining: Chaining,
    }

    fn id(text: &str) -> WorkloadId {
        WorkloadId::parse(text).unwrap()
    }

    fn domain(name: &str, to: Vec<ChainTo>, from: Vec<ChainFrom>) -> Domain {
        let td = TrustDomain::new(name).unwrap();
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut bundle = TrustBundle::new(td.clone());
        bundle
            .add_authority(
                KeyUse::JwtSvid,
                &format!("{name}-jwt"),
                key.public_key().clone(),
            )
            .unwrap();
        let settings = TokenServiceSettings {
            grant_ttl: 60,
            access_token_ttl: 300,
            chain_to: to,
            chain_from: from,
            ..TokenServiceSettings::default()
        };
        Domain {
            td,
            key,
            bundle,
            chaining: Chaining::new(&settings),
        }
    }

    /// a.example chains to b.example (egress may ask, up to `orders refunds`); b.example
    /// accepts grants of a.example (up to `orders`).
    fn worlds() -> (Domain, Domain) {
        let a = domain(
            "a.example",
            vec![ChainTo {
                trust_domain: TrustDomain::new("b.example").unwrap(),
                requesters: vec![id("spiffe://a.example/egress")],
                max_scope: Some(Scope::parse("orders refunds").unwrap()),
            }],
            Vec::new(),
        );
        let b = domain(
            "b.example",
            Vec::new(),
            vec![ChainFrom {
                trust_domain: TrustDomain::new("a.example").unwrap(),
                subject_prefix: "a.example/".into(),
                max_scope: Some(Scope::parse("orders").unwrap()),
                clients: None,
            }],
        );
        (a, b)
    }

    impl Domain {
        fn signer(&self) -> TxnSigner<'_> {
            self.signer_until(NOW + 86_400)
        }

        fn signer_until(&self, not_after: i64) -> TxnSigner<'_> {
            TxnSigner {
                key: &self.key,
                kid: self.bundle.authorities(KeyUse::JwtSvid)[0].kid.as_str(),
                not_after,
            }
        }

        fn txn_token(&self, scope: &str, exp: i64) -> String {
            self.txn_token_by(scope, exp, None)
        }

        fn txn_token_by(&self, scope: &str, exp: i64, act: Option<Actor>) -> String {
            let claims = TxnTokenClaims {
                iss: None,
                iat: NOW - 10,
                aud: Audience::One(self.td.to_string()),
                exp,
                txn: "txn-1".into(),
                sub: "user:alice".into(),
                scope: scope.into(),
                tctx: None,
                rctx: None,
                req_wl: format!("spiffe://{}/gateway", self.td),
                act,
            };
            issue_txn_token(&self.key, self.signer().kid, &claims).unwrap()
        }

        fn svid(&self, path: &str, aud: Audience) -> String {
            let claims = JwtSvidClaims {
                sub: id(&format!("spiffe://{}{path}", self.td)),
                aud,
                exp: NOW + 120,
                iat: Some(NOW),
                iss: None,
            };
            issue_jwt_svid(&self.key, self.signer().kid, &claims).unwrap()
        }

        fn grant(
            &self,
            caller: &str,
            request: &ExchangeRequest,
        ) -> Result<(String, GrantClaims), ExchangeError> {
            self.chaining
                .grant(&id(caller), request, &self.bundle, &self.signer(), NOW)
        }

        fn redeem(
            &self,
            request: &JwtBearerRequest,
            issuer: Option<&TrustBundle>,
        ) -> Result<(String, AccessTokenClaims), ExchangeError> {
            let named = wimse_core::token::chain::grant_issuer(&request.assertion)
                .map_err(|e| ExchangeError::InvalidGrant(e.to_string()))?;
            let accepted = self
                .chaining
                .accept(request, &self.td, &named, issuer, NOW)?;
            assert_eq!(accepted.remember_until, accepted.grant.exp + 60);
            self.chaining
                .access_token(&accepted, &self.td, &self.signer(), NOW)
        }
    }

    fn grant_request(subject: String, audience: &str, scope: Option<&str>) -> ExchangeRequest {
        ExchangeRequest {
            audience: vec![audience.into()],
            resource: Vec::new(),
            scope: scope.map(|s| Scope::parse(s).unwrap()),
            requested_token_type: Some(token_type::JWT.into()),
            subject_token: subject,
            subject_token_type: token_type::TXN_TOKEN.into(),
            actor_token: None,
            actor_token_type: None,
            request_context: None,
            request_details: None,
        }
    }

    fn bearer(grant: &str, assertion: Option<String>, scope: Option<&str>) -> JwtBearerRequest {
        JwtBearerRequest {
            assertion: grant.to_owned(),
            scope: scope.map(|s| Scope::parse(s).unwrap()),
            client_assertion: assertion,
            client_id: None,
        }
    }

    fn one(aud: &str) -> Audience {
        Audience::One(aud.into())
    }

    #[test]
    fn a_transaction_crosses_into_the_other_domain_for_the_same_subject() {
        let (a, b) = worlds();
        let request = grant_request(
            a.txn_token("orders refunds", NOW + 300),
            "b.example",
            Some("orders"),
        );
        let (grant, claims) = a.grant("spiffe://a.example/egress", &request).unwrap();
        assert_eq!(claims.iss, "spiffe://a.example");
        assert_eq!(claims.aud, "spiffe://b.example");
        assert_eq!(
            (claims.sub.as_str(), claims.scope.as_str()),
            ("user:alice", "orders")
        );
        assert_eq!(claims.act.sub, "spiffe://a.example/egress");
        assert_eq!(claims.txn.as_deref(), Some("txn-1"));
        assert_eq!(claims.exp, NOW + 60);
        // The audience may also be written as the trust domain's SPIFFE ID.
        let spelled = grant_request(a.txn_token("orders", NOW + 300), "spiffe://b.example", None);
        assert!(a.grant("spiffe://a.example/egress", &spelled).is_ok());

        let assertion = a.svid("/egress", one("spiffe://b.example"));
        let (token, access) = b
            .redeem(&bearer(&grant, Some(assertion), None), Some(&a.bundle))
            .unwrap();
        assert_eq!(access.sub, "a.example/user:alice");
        assert_eq!(access.client_id, "spiffe://a.example/egress");
        assert_eq!(access.act.iss, "spiffe://a.example");
        assert_eq!((access.iat, access.exp), (NOW, NOW + 300));
        // What b.example's gateway and token service check.
        let issuers = [TrustedIssuer::token_service_of(&b.bundle)];
        let (_, verified) = verify_access_token(&token, &issuers, &Validation::at(NOW)).unwrap();
        assert_eq!(verified.sub, "a.example/user:alice");
        assert_eq!(verified.scope.to_string(), "orders");
        // ...and not with a.example's keys.
        let theirs = [TrustedIssuer::token_service_of(&a.bundle)];
        assert!(verify_access_token(&token, &theirs, &Validation::at(NOW)).is_err());
    }

    #[test]
    fn the_actors_of_the_transaction_come_along_after_the_egress_workload() {
        let (a, b) = worlds();
        // A transaction a worker resumed, for an assistant acting for the user.
        let prior = Actor::after(
            "spiffe://a.example/worker",
            Some(&Actor::new("user:assistant")),
        );
        let txn = a.txn_token_by("orders", NOW + 300, Some(prior));
        let request = grant_request(txn, "b.example", None);
        let (grant, claims) = a.grant("spiffe://a.example/egress", &request).unwrap();
        let expected = [
            "spiffe://a.example/egress",
            "spiffe://a.example/worker",
            "user:assistant",
        ];
        assert_eq!(claims.act.chain().collect::<Vec<_>>(), expected);

        let assertion = a.svid("/egress", one("spiffe://b.example"));
        let (token, access) = b
            .redeem(&bearer(&grant, Some(assertion), None), Some(&a.bundle))
            .unwrap();
        assert_eq!(access.act.sub, "spiffe://a.example/egress");
        let issuers = [TrustedIssuer::token_service_of(&b.bundle)];
        let (_, verified) = verify_access_token(&token, &issuers, &Validation::at(NOW)).unwrap();
        let actors: Vec<&str> = verified.act.as_ref().map(|a| a.chain().collect()).unwrap();
        assert_eq!(actors, expected);
    }

    #[test]
    fn a_grant_is_issued_only_to_a_requester_for_a_named_domain_within_scope() {
        let (a, _) = worlds();
        let txn = || a.txn_token("orders refunds audit", NOW + 300);
        let code =
            |caller: &str, request: &ExchangeRequest| a.grant(caller, request).unwrap_err().code();
        let egress = "spiffe://a.example/egress";
        assert_eq!(
            code(
                "spiffe://a.example/web",
                &grant_request(txn(), "b.example", Some("orders"))
            ),
            "unauthorized_client"
        );
        assert_eq!(
            code(
                "spiffe://c.example/egress",
                &grant_request(txn(), "b.example", Some("orders"))
            ),
            "invalid_client"
        );
        assert_eq!(
            code(egress, &grant_request(txn(), "c.example", Some("orders"))),
            "invalid_target"
        );
        assert_eq!(
            code(
                egress,
                &grant_request(txn(), "not a domain", Some("orders"))
            ),
            "invalid_target"
        );
        // Beyond the Txn-Token's scope, and beyond what may go to b.example.
        assert_eq!(
            code(egress, &grant_request(txn(), "b.example", Some("payroll"))),
            "invalid_scope"
        );
        assert_eq!(
            code(egress, &grant_request(txn(), "b.example", None)),
            "invalid_scope"
        );
        let mut two = grant_request(txn(), "b.example", Some("orders"));
        two.audience.push("c.example".into());
        assert_eq!(code(egress, &two), "invalid_target");
        let mut resource = grant_request(txn(), "b.example", Some("orders"));
        resource
            .resource
            .push("https://b.example/oauth2/token".into());
        assert_eq!(code(egress, &resource), "invalid_target");
        let mut access = grant_request(txn(), "b.example", Some("orders"));
        access.subject_token_type = token_type::ACCESS_TOKEN.into();
        assert_eq!(code(egress, &access), "invalid_request");
        // An expired Txn-Token, and one of another domain's keys.
        assert_eq!(
            code(
                egress,
                &grant_request(a.txn_token("orders", NOW - 1), "b.example", None)
            ),
            "invalid_request"
        );
        let (_, b) = worlds();
        let foreign = b.txn_token("orders", NOW + 300);
        assert_eq!(
            code(egress, &grant_request(foreign, "b.example", None)),
            "invalid_request"
        );
    }

    #[test]
    fn a_grant_is_redeemed_only_by_its_own_client_with_a_proper_assertion() {
        let (a, b) = worlds();
        let request = grant_request(a.txn_token("orders", NOW + 300), "b.example", None);
        let (grant, _) = a.grant("spiffe://a.example/egress", &request).unwrap();
        let good = || Some(a.svid("/egress", one("spiffe://b.example")));
        let code = |request: JwtBearerRequest, issuer: Option<&TrustBundle>| {
            b.redeem(&request, issuer).unwrap_err().code()
        };
        // Client authentication.
        assert_eq!(
            code(bearer(&grant, None, None), Some(&a.bundle)),
            "invalid_client"
        );
        assert_eq!(
            code(
                bearer(
                    &grant,
                    Some(a.svid("/egress", one("spiffe://c.example"))),
                    None
                ),
                Some(&a.bundle)
            ),
            "invalid_client"
        );
        let two = Audience::Many(vec!["spiffe://b.example".into(), "other".into()]);
        assert_eq!(
            code(
                bearer(&grant, Some(a.svid("/egress", two)), None),
                Some(&a.bundle)
            ),
            "invalid_client"
        );
        let stranger = b.svid("/egress", one("spiffe://b.example"));
        assert_eq!(
            code(bearer(&grant, Some(stranger), None), Some(&a.bundle)),
            "invalid_client"
        );
        let mut named = bearer(&grant, good(), None);
        named.client_id = Some("spiffe://a.example/other".into());
        assert_eq!(code(named, Some(&a.bundle)), "invalid_client");
        // A grant issued to another workload of a.example.
        let thief = a.svid("/other", one("spiffe://b.example"));
        assert_eq!(
            code(bearer(&grant, Some(thief), None), Some(&a.bundle)),
            "invalid_grant"
        );
        // Scope beyond the grant, or beyond what b.example takes from a.example.
        assert_eq!(
            code(bearer(&grant, good(), Some("refunds")), Some(&a.bundle)),
            "invalid_scope"
        );
        // No bundle of a.example held here.
        assert_eq!(code(bearer(&grant, good(), None), None), "invalid_grant");
        // The right client, within scope, with the bundle: accepted. (That a grant is
        // accepted only once is the datastore's record: `redeem_grant`.)
        assert!(
            b.redeem(&bearer(&grant, good(), None), Some(&a.bundle))
                .is_ok()
        );
    }

    #[test]
    fn no_grant_or_access_token_outlives_the_signing_key() {
        let (a, b) = worlds();
        let request = grant_request(a.txn_token("orders", NOW + 300), "b.example", None);
        let caller = id("spiffe://a.example/egress");
        let short = a
            .chaining
            .grant(&caller, &request, &a.bundle, &a.signer_until(NOW + 10), NOW)
            .unwrap();
        assert_eq!(short.1.exp, NOW + 10);
        let ended = a
            .chaining
            .grant(&caller, &request, &a.bundle, &a.signer_until(NOW), NOW)
            .unwrap_err();
        assert_eq!(ended.code(), "server_error");
        let assertion = a.svid("/egress", one("spiffe://b.example"));
        let accepted = b
            .chaining
            .accept(
                &bearer(&short.0, Some(assertion), None),
                &b.td,
                &a.td,
                Some(&a.bundle),
                NOW,
            )
            .unwrap();
        let ended = b
            .chaining
            .access_token(&accepted, &b.td, &b.signer_until(NOW), NOW)
            .unwrap_err();
        assert_eq!(ended.code(), "server_error");
    }

    #[test]
    fn grants_from_unnamed_domains_or_for_others_or_clients_not_listed_are_refused() {
        let (a, b) = worlds();
        let (c, _) = worlds();
        // c.example is not named in b.example's `chain_from`.
        let c = Domain {
            td: TrustDomain::new("c.example").unwrap(),
            ..c
        };
        let claims = GrantClaims {
            iss: "spiffe://c.example".into(),
            sub: "user:eve".into(),
            aud: "spiffe://b.example".into(),
            exp: NOW + 60,
            iat: NOW,
            jti: "j".into(),
            scope: "orders".into(),
            act: Actor::new("spiffe://c.example/egress"),
            txn: None,
        };
        let grant = issue_grant(&c.key, c.signer().kid, &claims).unwrap();
        let refused = b
            .redeem(&bearer(&grant, None, None), Some(&c.bundle))
            .unwrap_err();
        assert_eq!(refused.code(), "invalid_grant");
        assert!(refused.description().contains("not accepted"), "{refused}");
        // A grant of a.example addressed to another domain's token service.
        let to_d = GrantClaims {
            iss: "spiffe://a.example".into(),
            aud: "spiffe://d.example".into(),
            act: Actor::new("spiffe://a.example/egress"),
            ..claims
        };
        let grant = issue_grant(&a.key, a.signer().kid, &to_d).unwrap();
        let assertion = a.svid("/egress", one("spiffe://b.example"));
        let refused = b
            .redeem(
                &bearer(&grant, Some(assertion.clone()), None),
                Some(&a.bundle),
            )
            .unwrap_err();
        assert_eq!(refused.code(), "invalid_grant");
        // A clients list that does not name the presenting workload.
        let listed = domain(
            "b.example",
            Vec::new(),
            vec![ChainFrom {
                trust_domain: TrustDomain::new("a.example").unwrap(),
                subject_prefix: String::new(),
                max_scope: None,
                clients: Some(vec![id("spiffe://a.example/billing")]),
            }],
        );
        let refused = listed
            .redeem(&bearer(&grant, Some(assertion), None), Some(&a.bundle))
            .unwrap_err();
        assert_eq!(refused.code(), "unauthorized_client");
    }
}
