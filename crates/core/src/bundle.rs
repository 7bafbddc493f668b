//! Trust bundles: the keys a trust domain's credentials verify against (SPIFFE Trust
//! Domain and Bundle §4), and the set of them a relying party trusts, keyed by trust domain.
//!
//! A [`TrustBundle`] holds the trust domain's X.509 authorities (CA certificates), its
//! JWT authorities (`use` `jwt-svid`, for JWT-SVIDs and Txn-Tokens) and its WIT
//! authorities (`use` `wit-svid`), plus `spiffe_sequence` and `spiffe_refresh_hint`.
//! Bundles are never merged across trust domains (SPIFFE Federation §4.2).
//!
//! [`BundleSet::jwt_authority`] answers the architecture's "is this issuer trusted for
//! this trust domain" question for every JWT kind: a key is looked up only in the bundle
//! of the trust domain the token speaks for, so a key of one trust domain can never vouch
//! for an identity in another.

use crate::id::TrustDomain;
use crate::jose::{Jwk, JwkSet, PublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a JWT authority key signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyUse {
    /// `jwt-svid`: JWT-SVIDs (and, in wimse, Txn-Tokens issued by the trust domain's server).
    JwtSvid,
    /// `wit-svid`: Workload Identity Tokens.
    WitSvid,
}

impl KeyUse {
    /// The SPIFFE bundle `use` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUse::JwtSvid => "jwt-svid",
            KeyUse::WitSvid => "wit-svid",
        }
    }
}

/// A JWT signing key of a trust domain.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtAuthority {
    /// The key ID, unique in the bundle.
    pub kid: String,
    /// The key.
    pub key: PublicKey,
}

/// Why a bundle was refused or a key was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The document is not a JSON object of the bundle shape, or repeats a member.
    #[error("bundle is not a valid JWK set: {0}")]
    Json(String),
    /// Two keys share a `kid` (SPIFFE WIT-SVID §bundle: `kid` must be unique in the bundle).
    #[error("bundle has two keys with `kid` `{0}`")]
    DuplicateKid(String),
    /// A `jwt-svid` or `wit-svid` key has no `kid`.
    #[error("bundle key with use `{0}` lacks `kid`")]
    MissingKid(&'static str),
    /// An `x5c` entry is not base64 DER.
    #[error("bundle x509-svid key has an invalid `x5c`")]
    BadX5c,
    /// A key could not be used.
    #[error("bundle key `{kid}` is unusable: {reason}")]
    BadKey {
        /// The key's `kid`.
        kid: String,
        /// Why.
        reason: String,
    },
    /// The relying party has no bundle for this trust domain.
    #[error("trust domain `{0}` is not trusted")]
    UntrustedTrustDomain(String),
    /// The trust domain's bundle has no key with this `kid` for this use.
    #[error("no {key_use} key `{kid}` in the bundle of `{trust_domain}`")]
    UnknownKey {
        /// The trust domain.
        trust_domain: String,
        /// The use looked for.
        key_use: &'static str,
        /// The `kid` asked for.
        kid: String,
    },
    /// No `kid` was given and the trust domain has more than one key for this use.
    #[error("token has no `kid` and `{0}` has several keys for it")]
    AmbiguousKey(String),
    /// The PEM text holds no certificates, or a block is not a certificate.
    #[error("bundle PEM is invalid: {0}")]
    Pem(String),
}

/// The trust anchors of one trust domain.
#[derive(Clone, Debug, PartialEq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    /// `spiffe_sequence`: increases on every content change.
    pub sequence: u64,
    /// `spiffe_refresh_hint`, in seconds.
    pub refresh_hint: Option<u64>,
    /// CA certificates (DER) for X509-SVIDs.
    pub x509_authorities: Vec<Vec<u8>>,
    /// Keys for JWT-SVIDs and Txn-Tokens.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// Keys for WITs.
    pub wit_authorities: Vec<JwtAuthority>,
}

/// The wire form of a SPIFFE bundle.
#[derive(Serialize, Deserialize)]
struct RawBundle {
    keys: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

impl TrustBundle {
    /// An empty bundle (every credential of the trust domain is untrusted until keys are added).
    pub fn new(trust_domain: TrustDomain) -> Self {
        TrustBundle {
            trust_domain,
            sequence: 0,
            refresh_hint: None,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            wit_authorities: Vec::new(),
        }
    }

    /// The trust domain this bundle is for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The authorities for one use.
    pub fn authorities(&self, key_use: KeyUse) -> &[JwtAuthority] {
        match key_use {
            KeyUse::JwtSvid => &self.jwt_authorities,
            KeyUse::WitSvid => &self.wit_authorities,
        }
    }

    /// Adds a JWT authority, refusing a `kid` already in the bundle (any use).
    pub fn add_authority(
        &mut self,
        key_use: KeyUse,
        kid: &str,
        key: PublicKey,
    ) -> Result<(), BundleError> {
        if self.has_kid(kid) {
            return Err(BundleError::DuplicateKid(kid.to_owned()));
        }
        let authority = JwtAuthority {
            kid: kid.to_owned(),
            key,
        };
        match key_use {
            KeyUse::JwtSvid => self.jwt_authorities.push(authority),
            KeyUse::WitSvid => self.wit_authorities.push(authority),
        }
        Ok(())
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.jwt_authorities
            .iter()
            .chain(&self.wit_authorities)
            .any(|a| a.kid == kid)
    }

    /// Finds the key for a token: by `kid` if given, else the only key for that use.
    pub fn authority(&self, key_use: KeyUse, kid: Option<&str>) -> Result<&PublicKey, BundleError> {
        let keys = self.authorities(key_use);
        match kid {
            // `kid` is an opaque, case-sensitive lookup key and nothing more.
            Some(kid) => keys
                .iter()
                .find(|a| a.kid == kid)
                .map(|a| &a.key)
                .ok_or_else(|| BundleError::UnknownKey {
                    trust_domain: self.trust_domain.to_string(),
                    key_use: key_use.as_str(),
                    kid: kid.to_owned(),
                }),
            None => match keys {
                [only] => Ok(&only.key),
                [] => Err(BundleError::UnknownKey {
                    trust_domain: self.trust_domain.to_string(),
                    key_use: key_use.as_str(),
                    kid: String::new(),
                }),
                _ => Err(BundleError::AmbiguousKey(self.trust_domain.to_string())),
            },
        }
    }

    /// Parses a SPIFFE bundle (JWK Set with `use` per key). Keys with an unknown `kty` or
    /// `use`, and `x509-svid` keys without `x5c`, are skipped as the standard requires;
    /// a malformed key of a known use, a missing or repeated `kid`, fail the whole bundle.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let raw: RawBundle =
            crate::json::object_from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut bundle = TrustBundle::new(trust_domain);
        bundle.sequence = raw.spiffe_sequence.unwrap_or(0);
        bundle.refresh_hint = raw.spiffe_refresh_hint;
        for value in raw.keys {
            // A key we cannot even read as a JWK is skipped only if its `use` is not ours.
            let key_use = value
                .get("use")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            let Some(key_use) = key_use else { continue };
            let parsed = || {
                serde_json::from_value::<Jwk>(value.clone()).map_err(|e| BundleError::BadKey {
                    kid: value
                        .get("kid")
                        .and_then(|k| k.as_str())
                        .unwrap_or("")
                        .to_owned(),
                    reason: e.to_string(),
                })
            };
            if !matches!(key_use.as_str(), "x509-svid" | "jwt-svid" | "wit-svid") {
                continue;
            }
            let jwk = parsed()?;
            // An unknown `kty` means the element is ignored (SPIFFE bundle §4.2).
            if matches!(jwk.params, crate::jose::KeyParams::Unknown { .. }) {
                continue;
            }
            match key_use.as_str() {
                "x509-svid" => {
                    // Consumers use only the first `x5c` element and skip keys without one.
                    let Some(first) = jwk.x5c.first() else {
                        continue;
                    };
                    let der = STANDARD.decode(first).map_err(|_| BundleError::BadX5c)?;
                    // The certificate must parse and carry a key we can describe as a JWK.
                    if x509_jwk(&der).is_none() {
                        return Err(BundleError::BadX5c);
                    }
                    bundle.x509_authorities.push(der);
                }
                "jwt-svid" | "wit-svid" => {
                    let (use_enum, name) = if key_use == "jwt-svid" {
                        (KeyUse::JwtSvid, "jwt-svid")
                    } else {
                        (KeyUse::WitSvid, "wit-svid")
                    };
                    let kid = jwk.kid.clone().ok_or(BundleError::MissingKid(name))?;
                    let key = PublicKey::from_jwk(&jwk).map_err(|e| BundleError::BadKey {
                        kid: kid.clone(),
                        reason: e.to_string(),
                    })?;
                    bundle.add_authority(use_enum, &kid, key)?;
                }
                _ => {}
            }
        }
        Ok(bundle)
    }

    /// The SPIFFE bundle JSON (JWK Set with `use`, `spiffe_sequence`, `spiffe_refresh_hint`).
    pub fn to_spiffe_json(&self) -> String {
        let mut keys = Vec::new();
        for der in &self.x509_authorities {
            // x509-svid keys carry the certificate in `x5c` and MUST NOT set `kid`.
            let Some(mut jwk) = x509_jwk(der) else {
                continue;
            };
            if let Some(obj) = jwk.as_object_mut() {
                obj.insert("use".into(), "x509-svid".into());
                obj.insert("x5c".into(), serde_json::json!([STANDARD.encode(der)]));
            }
            keys.push(jwk);
        }
        for key_use in [KeyUse::JwtSvid, KeyUse::WitSvid] {
            for a in self.authorities(key_use) {
                keys.push(authority_jwk(a, Some(key_use)));
            }
        }
        let raw = RawBundle {
            keys,
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint,
        };
        serde_json::to_string_pretty(&raw).unwrap_or_default()
    }

    /// A plain JWK Set of the keys for one use, without `use` (the Workload API's JWT and
    /// WIT bundle form, SPIFFE Workload API §6.2.2).
    pub fn jwks_json(&self, key_use: KeyUse) -> String {
        let keys: Vec<_> = self
            .authorities(key_use)
            .iter()
            .map(|a| authority_jwk(a, None))
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// A JWK Set of the keys for one use, each with its `use` and `kid` (the WIT-SVID
    /// profile's WIT bundle form: WIT-SVID.md requires `use` `wit-svid` on every key).
    pub fn jwks_json_with_use(&self, key_use: KeyUse) -> String {
        let keys: Vec<_> = self
            .authorities(key_use)
            .iter()
            .map(|a| authority_jwk(a, Some(key_use)))
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// Parses a plain JWK Set as the authorities for one use (keys without `kid` refused).
    pub fn add_jwks(&mut self, key_use: KeyUse, json: &[u8]) -> Result<(), BundleError> {
        let set: JwkSet =
            crate::json::object_from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        for jwk in set.keys {
            if matches!(jwk.params, crate::jose::KeyParams::Unknown { .. }) {
                continue;
            }
            let kid = jwk
                .kid
                .clone()
                .ok_or(BundleError::MissingKid(key_use.as_str()))?;
            let key = PublicKey::from_jwk(&jwk).map_err(|e| BundleError::BadKey {
                kid: kid.clone(),
                reason: e.to_string(),
            })?;
            self.add_authority(key_use, &kid, key)?;
        }
        Ok(())
    }

    /// The X.509 authorities as concatenated PEM `CERTIFICATE` blocks.
    pub fn x509_pem(&self) -> String {
        self.x509_authorities
            .iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
            .collect()
    }

    /// Reads X.509 authorities from PEM `CERTIFICATE` blocks.
    pub fn add_x509_pem(&mut self, text: &str) -> Result<(), BundleError> {
        let blocks = pem::parse_many(text).map_err(|e| BundleError::Pem(e.to_string()))?;
        if blocks.is_empty() {
            return Err(BundleError::Pem("no certificates".into()));
        }
        for block in blocks {
            if block.tag() != "CERTIFICATE" {
                return Err(BundleError::Pem(format!(
                    "unexpected block `{}`",
                    block.tag()
                )));
            }
            self.x509_authorities.push(block.into_contents());
        }
        Ok(())
    }
}

/// The public key of a CA certificate as a JWK object; `None` if the DER is not a
/// certificate or its key type has no JWK form here.
fn x509_jwk(der: &[u8]) -> Option<serde_json::Value> {
    use x509_parser::prelude::FromDer;
    let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    serde_json::to_value(spki_jwk(cert.public_key())?).ok()
}

pub(crate) fn spki_jwk(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<Jwk> {
    use crate::jose::KeyParams;
    use x509_parser::public_key::PublicKey as P;
    let params = match spki.parsed().ok()? {
        P::EC(point) => {
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                133 => ("P-521", 66),
                _ => return None,
            };
            KeyParams::Ec {
                crv: crv.into(),
                x: data.get(1..=len)?.to_vec(),
                y: data.get(1 + len..)?.to_vec(),
            }
        }
        P::RSA(rsa) => KeyParams::Rsa {
            n: rsa.modulus.to_vec(),
            e: rsa.exponent.to_vec(),
        },
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => {
            KeyParams::Okp {
                crv: "Ed25519".into(),
                x: spki.subject_public_key.data.to_vec(),
            }
        }
        _ => return None,
    };
    Some(Jwk::new(params))
}

fn authority_jwk(a: &JwtAuthority, key_use: Option<KeyUse>) -> serde_json::Value {
    let mut jwk = a.key.jwk().clone();
    jwk.kid = Some(a.kid.clone());
    jwk.key_use = key_use.map(|u| u.as_str().to_owned());
    jwk.x5c = Vec::new();
    serde_json::to_value(jwk).unwrap_or_default()
}

/// The bundles a relying party trusts, one per trust domain.
#[derive(Clone, Debug, Default)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl BundleSet {
    /// An empty set: nothing is trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the bundle of its trust domain.
    pub fn insert(&mut self, bundle: TrustBundle) {
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
    }

    /// The bundle of a trust domain.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }

    /// Every bundle, ordered by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values()
    }

    /// The key that may sign a `key_use` token speaking for `trust_domain`: looked up only
    /// in that trust domain's bundle (the issuer must be trusted for the subject's domain).
    pub fn jwt_authority(
        &self,
        trust_domain: &TrustDomain,
        key_use: KeyUse,
        kid: Option<&str>,
    ) -> Result<&PublicKey, BundleError> {
        self.bundles
            .get(trust_domain)
            .ok_or_else(|| BundleError::UntrustedTrustDomain(trust_domain.to_string()))?
            .authority(key_use, kid)
    }

    /// How many trust domains the set holds.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Whether the set holds no bundle.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    /// The SPIFFE bundle map form, `{"trust_domains": {"<td>": <bundle>}}`, each bundle as
    /// [`TrustBundle::to_spiffe_json`] writes it.
    pub fn to_map_json(&self) -> String {
        let domains: serde_json::Map<String, serde_json::Value> = self
            .bundles
            .iter()
            .map(|(td, bundle)| {
                let value = serde_json::from_str(&bundle.to_spiffe_json()).unwrap_or_default();
                (td.to_string(), value)
            })
            .collect();
        serde_json::json!({ "trust_domains": domains }).to_string()
    }

    /// Parses the SPIFFE bundle map form, `{"trust_domains": {"<td>": <bundle>}}`;
    /// duplicate trust domains are refused (SPIFFE bundle §6.3).
    pub fn from_map_json(json: &[u8]) -> Result<Self, BundleError> {
        let map: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
            crate::json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let domains = map
            .get("trust_domains")
            .ok_or_else(|| BundleError::Json("missing `trust_domains`".into()))?;
        let mut set = BundleSet::new();
        for (name, value) in domains {
            let td = TrustDomain::new(name).map_err(|e| BundleError::Json(e.to_string()))?;
            // `example.org` and `spiffe://example.org` name one trust domain.
            if set.get(&td).is_some() {
                return Err(BundleError::Json(format!(
                    "trust domain `{td}` appears twice in the bundle map"
                )));
            }
            let bytes = serde_json::to_vec(value).map_err(|e| BundleError::Json(e.to_string()))?;
            set.insert(TrustBundle::from_spiffe_json(td, &bytes)?);
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{Algorithm, SigningKey};

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn bundle_with_keys() -> (TrustBundle, SigningKey, SigningKey) {
        let jwt = SigningKey::generate(Algorithm::Es256).unwrap();
        let wit = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut b = TrustBundle::new(td("example.org"));
        b.sequence = 7;
        b.refresh_hint = Some(300);
        b.add_authority(KeyUse::JwtSvid, "j1", jwt.public_key().clone())
            .unwrap();
        b.add_authority(KeyUse::WitSvid, "w1", wit.public_key().clone())
            .unwrap();
        (b, jwt, wit)
    }

    #[test]
    fn spiffe_json_round_trips() {
        let (b, _, _) = bundle_with_keys();
        let json = b.to_spiffe_json();
        let again = TrustBundle::from_spiffe_json(td("example.org"), json.as_bytes()).unwrap();
        assert_eq!(again, b);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["spiffe_sequence"], 7);
        assert_eq!(v["keys"][0]["use"], "jwt-svid");
        assert_eq!(v["keys"][1]["use"], "wit-svid");
    }

    #[test]
    fn kid_must_be_unique_across_uses() {
        let (mut b, jwt, _) = bundle_with_keys();
        assert_eq!(
            b.add_authority(KeyUse::WitSvid, "j1", jwt.public_key().clone()),
            Err(BundleError::DuplicateKid("j1".into()))
        );
    }

    #[test]
    fn keys_with_unknown_use_or_kty_are_skipped() {
        let json = br#"{"keys":[{"kty":"EC","use":"other","crv":"P-256","x":"AA","y":"AA"},{"kty":"weird","use":"jwt-svid","kid":"z"},{"kty":"EC","crv":"P-256"}],"spiffe_sequence":1}"#;
        let b = TrustBundle::from_spiffe_json(td("example.org"), json).unwrap();
        assert!(b.jwt_authorities.is_empty());
    }

    #[test]
    fn jwt_key_without_kid_fails_the_bundle() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut jwk = serde_json::to_value(key.public_jwk()).unwrap();
        jwk["use"] = "jwt-svid".into();
        let json = serde_json::json!({"keys":[jwk]}).to_string();
        assert_eq!(
            TrustBundle::from_spiffe_json(td("example.org"), json.as_bytes()),
            Err(BundleError::MissingKid("jwt-svid"))
        );
    }

    #[test]
    fn private_key_in_bundle_fails_the_bundle() {
        let json = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","use":"wit-svid","kid":"a","x":"1CXXvflN_LVVsIsYXsUvB03JmlGWeCHqQVuouCF92bg","d":"sdLX8yCYKqo_XvGBLn-ZWeKT7llYeeQpgeCaXVxb5kY"}]}"#;
        assert!(matches!(
            TrustBundle::from_spiffe_json(td("example.org"), json),
            Err(BundleError::BadKey { .. })
        ));
    }

    #[test]
    fn key_is_found_only_in_the_subjects_trust_domain() {
        let (b, _, _) = bundle_with_keys();
        let mut set = BundleSet::new();
        set.insert(b);
        assert!(
            set.jwt_authority(&td("example.org"), KeyUse::JwtSvid, Some("j1"))
                .is_ok()
        );
        assert!(matches!(
            set.jwt_authority(&td("other.org"), KeyUse::JwtSvid, Some("j1")),
            Err(BundleError::UntrustedTrustDomain(_))
        ));
        // A WIT key does not sign JWT-SVIDs and vice versa.
        assert!(matches!(
            set.jwt_authority(&td("example.org"), KeyUse::JwtSvid, Some("w1")),
            Err(BundleError::UnknownKey { .. })
        ));
    }

    #[test]
    fn missing_kid_is_allowed_only_with_a_single_key() {
        let (mut b, _, _) = bundle_with_keys();
        assert!(b.authority(KeyUse::JwtSvid, None).is_ok());
        let extra = SigningKey::generate(Algorithm::Es256).unwrap();
        b.add_authority(KeyUse::JwtSvid, "j2", extra.public_key().clone())
            .unwrap();
        assert!(matches!(
            b.authority(KeyUse::JwtSvid, None),
            Err(BundleError::AmbiguousKey(_))
        ));
    }

    #[test]
    fn jwks_form_has_no_use_and_only_one_kind() {
        let (b, _, _) = bundle_with_keys();
        let v: serde_json::Value = serde_json::from_str(&b.jwks_json(KeyUse::WitSvid)).unwrap();
        assert_eq!(v["keys"].as_array().unwrap().len(), 1);
        assert!(v["keys"][0].get("use").is_none());
        assert_eq!(v["keys"][0]["kid"], "w1");
        let mut again = TrustBundle::new(td("example.org"));
        again
            .add_jwks(KeyUse::WitSvid, b.jwks_json(KeyUse::WitSvid).as_bytes())
            .unwrap();
        assert_eq!(again.wit_authorities, b.wit_authorities);
    }

    #[test]
    fn bundle_map_round_trips_per_trust_domain() {
        let (a, _, _) = bundle_with_keys();
        let mut b = TrustBundle::new(td("b.test"));
        b.sequence = 3;
        let mut set = BundleSet::new();
        set.insert(a.clone());
        set.insert(b.clone());
        let back = BundleSet::from_map_json(set.to_map_json().as_bytes()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.get(a.trust_domain()), Some(&a));
        assert_eq!(back.get(&td("b.test")), Some(&b));
        assert!(
            BundleSet::from_map_json(BundleSet::new().to_map_json().as_bytes())
                .unwrap()
                .is_empty()
        );
        // One trust domain under two spellings is a duplicate too.
        let twice = br#"{"trust_domains":{"b.test":{"keys":[]},"spiffe://b.test":{"keys":[]}}}"#;
        assert!(BundleSet::from_map_json(twice).is_err());
    }

    #[test]
    fn bundle_map_with_duplicate_trust_domain_is_refused() {
        let json = br#"{"trust_domains":{"a.org":{"keys":[]},"a.org":{"keys":[]}}}"#;
        assert!(BundleSet::from_map_json(json).is_err());
        let ok = br#"{"trust_domains":{"a.org":{"keys":[]},"b.org":{"keys":[]}}}"#;
        assert_eq!(BundleSet::from_map_json(ok).unwrap().iter().count(), 2);
    }

    #[test]
    fn x509_key_whose_x5c_is_not_a_certificate_fails_the_bundle() {
        // Found by the bundle fuzz target: a truncated certificate was kept, and the
        // bundle could then not be written back out.
        let json = br#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA","use":"x509-svid","x5c":["MIIBFjCBvaADAgECAgEBMAoGCCqGSM49BAMCMAAw"]}]}"#;
        assert_eq!(
            TrustBundle::from_spiffe_json(td("example.org"), json),
            Err(BundleError::BadX5c)
        );
    }

    #[test]
    fn x509_key_with_unknown_kty_is_skipped() {
        let json = br#"{"keys":[{"kty":"EAC","use":"x509-svid","x5c":["AAAA"]}]}"#;
        let b = TrustBundle::from_spiffe_json(td("example.org"), json).unwrap();
        assert!(b.x509_authorities.is_empty());
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        for input in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"keys\":1}",
            b"{\"keys\":[1,2]}",
            b"\xff",
        ] {
            let _ = TrustBundle::from_spiffe_json(td("example.org"), input);
        }
        assert!(TrustBundle::from_spiffe_json(td("example.org"), b"{}").is_err());
    }

    #[test]
    fn a_bundle_or_jwk_set_is_an_object_never_an_array_of_its_members() {
        // A derived struct would read `[[], 7]` as `{"keys": [], "spiffe_sequence": 7}`.
        for input in [&b"[[], 7, 300]"[..], b"[[]]"] {
            let err = TrustBundle::from_spiffe_json(td("example.org"), input).unwrap_err();
            assert!(err.to_string().contains("not a JSON object"), "{err}");
            let mut b = TrustBundle::new(td("example.org"));
            let err = b.add_jwks(KeyUse::JwtSvid, input).unwrap_err();
            assert!(err.to_string().contains("not a JSON object"), "{err}");
        }
        let b =
            TrustBundle::from_spiffe_json(td("example.org"), br#"{"keys":[],"spiffe_sequence":7}"#)
                .unwrap();
        assert_eq!(b.sequence, 7);
    }
}
