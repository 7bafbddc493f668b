//! The credential service: turns a registration entry and a request from an agent into
//! an X.509 workload certificate, a WIT or a JWT-SVID, signed by this replica's active
//! authorities, and assembles the trust bundle from every replica's published keys.
//!
//! Every credential's lifetime is the entry's TTL, cut to its signer's `not_after`, so a
//! credential never outlives the key that vouches for it (see [`crate::authority`]).

use crate::authority::Authorities;
use crate::datastore::{Authority, AuthorityKind, RegistrationEntry};
use wimse_core::bundle::{KeyUse, TrustBundle};
use wimse_core::jose::{Jwk, PublicKey};
use wimse_core::token::jwt_svid::{JwtSvidClaims, issue_jwt_svid};
use wimse_core::token::wit::{Confirmation, WitClaims, WitProfile, issue_wit};
use wimse_core::token::{Audience, random_jti};
use wimse_core::x509::{self, Certificate, LeafParams};
use wimse_core::{TrustDomain, WorkloadId};

/// Backdating of `notBefore`, for peers whose clocks run slightly behind.
const BACKDATE: i64 = 30;

/// Why a credential could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR is malformed, its signature does not verify, or its key is unsupported.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// The public key offered for a WIT is unusable.
    #[error("invalid workload key: {0}")]
    Key(String),
    /// The request asks for something the profile forbids (e.g. no audience).
    #[error("invalid request: {0}")]
    Request(String),
    /// This replica has no active authority of the needed kind.
    #[error("no active {0} authority")]
    NoAuthority(&'static str),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Issues credentials with this replica's active keys.
pub struct Issuer<'a> {
    authorities: &'a Authorities,
    wit_profile: WitProfile,
}

impl<'a> Issuer<'a> {
    /// An issuer over `authorities`, minting WITs in `wit_profile`.
    pub fn new(authorities: &'a Authorities, wit_profile: WitProfile) -> Self {
        Issuer {
            authorities,
            wit_profile,
        }
    }

    /// An X.509 certificate for `id` and the CSR's key, valid `ttl` seconds (cut to the
    /// CA's life), followed by any intermediates: the chain, leaf first.
    pub fn x509(
        &self,
        id: &WorkloadId,
        dns_names: &[String],
        csr_der: &[u8],
        ttl: u32,
        now: i64,
    ) -> Result<Vec<Certificate>, IssueError> {
        let csr = x509::parse_csr(csr_der).map_err(|e| IssueError::Csr(e.to_string()))?;
        let ca = self
            .authorities
            .active(AuthorityKind::X509)
            .ok_or(IssueError::NoAuthority("x509"))?;
        let ca_cert = ca.cert.as_ref().ok_or(IssueError::NoAuthority("x509"))?;
        let params = LeafParams {
            spiffe_id: id.clone(),
            dns_names: dns_names.to_vec(),
            not_before: now - BACKDATE,
            not_after: now.saturating_add(i64::from(ttl)),
        };
        let leaf = x509::workload_certificate(&csr.spki_der, &params, ca_cert, &ca.key)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let mut chain = vec![leaf];
        chain.extend(self.authorities.intermediates());
        Ok(chain)
    }

    /// An X.509 workload certificate for a registration entry.
    pub fn x509_for_entry(
        &self,
        entry: &RegistrationEntry,
        csr_der: &[u8],
        now: i64,
    ) -> Result<Vec<Certificate>, IssueError> {
        self.x509(
            &entry.spiffe_id,
            &entry.dns_names,
            csr_der,
            entry.x509_ttl,
            now,
        )
    }

    /// A WIT for the entry's identity, bound to `holder` (a public JWK with `alg`, the
    /// private half of which stays on the workload's host).
    pub fn wit(
        &self,
        entry: &RegistrationEntry,
        holder: &Jwk,
        now: i64,
    ) -> Result<String, IssueError> {
        self.wit_for(&entry.spiffe_id, entry.jwt_ttl, holder, now)
    }

    /// A WIT for `id` bound to `holder`, valid `ttl` seconds (cut to the key's life).
    pub fn wit_for(
        &self,
        id: &WorkloadId,
        ttl: u32,
        holder: &Jwk,
        now: i64,
    ) -> Result<String, IssueError> {
        // The key must be usable with the algorithm it names (checked again on verification).
        let alg = holder
            .alg
            .as_deref()
            .ok_or_else(|| IssueError::Key("`alg` is missing".into()))?;
        let alg = wimse_core::jose::Algorithm::from_name(alg)
            .map_err(|e| IssueError::Key(e.to_string()))?;
        PublicKey::from_jwk_with_alg(holder, alg).map_err(|e| IssueError::Key(e.to_string()))?;
        let slot = self
            .authorities
            .active(AuthorityKind::Wit)
            .ok_or(IssueError::NoAuthority("wit"))?;
        let claims = WitClaims {
            iss: None,
            sub: id.clone(),
            exp: now.saturating_add(i64::from(ttl)).min(slot.not_after),
            iat: Some(now),
            nbf: None,
            jti: Some(random_jti()),
            cnf: Confirmation { jwk: holder.bare() },
            aud: None,
        };
        issue_wit(&slot.key, Some(&slot.id), &claims, self.wit_profile)
            .map_err(|e| IssueError::Key(e.to_string()))
    }

    /// A JWT-SVID for the entry's identity and `audience`.
    pub fn jwt_svid(
        &self,
        entry: &RegistrationEntry,
        audience: &[String],
        now: i64,
    ) -> Result<String, IssueError> {
        self.jwt_svid_for(&entry.spiffe_id, entry.jwt_ttl, audience, now)
    }

    /// A JWT-SVID for `id` and `audience`, valid `ttl` seconds (cut to the key's life).
    pub fn jwt_svid_for(
        &self,
        id: &WorkloadId,
        ttl: u32,
        audience: &[String],
        now: i64,
    ) -> Result<String, IssueError> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(IssueError::Request(
                "a JWT-SVID needs a non-empty audience".into(),
            ));
        }
        let slot = self
            .authorities
            .active(AuthorityKind::Jwt)
            .ok_or(IssueError::NoAuthority("jwt"))?;
        let aud = match audience {
            [one] => Audience::One(one.clone()),
            many => Audience::Many(many.to_vec()),
        };
        let claims = JwtSvidClaims {
            sub: id.clone(),
            aud,
            exp: now.saturating_add(i64::from(ttl)).min(slot.not_after),
            iat: Some(now),
            iss: None,
        };
        issue_jwt_svid(&slot.key, &slot.id, &claims).map_err(|e| IssueError::Signing(e.to_string()))
    }
}

/// The trust bundle of `trust_domain` from every replica's published authorities.
/// Records that do not parse are left out (a key we cannot read vouches for nothing).
pub fn bundle_from_records(
    trust_domain: &TrustDomain,
    records: &[Authority],
    sequence: i64,
    refresh_hint: u64,
) -> TrustBundle {
    let mut bundle = TrustBundle::new(trust_domain.clone());
    bundle.sequence = u64::try_from(sequence).unwrap_or(0);
    bundle.refresh_hint = Some(refresh_hint);
    for record in records {
        match record.kind {
            AuthorityKind::X509 => {
                // Replicas under one upstream CA all publish the same root: keep it once.
                if !bundle
                    .x509_authorities
                    .iter()
                    .any(|c| c.as_slice() == record.public_data.as_slice())
                {
                    bundle.x509_authorities.push(record.public_data.clone());
                }
            }
            AuthorityKind::Jwt | AuthorityKind::Wit => {
                let key_use = if record.kind == AuthorityKind::Jwt {
                    KeyUse::JwtSvid
                } else {
                    KeyUse::WitSvid
                };
                let key = serde_json::from_slice::<Jwk>(&record.public_data)
                    .ok()
                    .and_then(|jwk| PublicKey::from_jwk(&jwk).ok());
                match key {
                    Some(key) => {
                        if let Err(e) = bundle.add_authority(key_use, &record.id, key) {
                            tracing::warn!(kid = %record.id, error = %e, "authority left out of the bundle");
                        }
                    }
                    None => {
                        tracing::warn!(kid = %record.id, "unreadable authority left out of the bundle");
                    }
                }
            }
        }
    }
    bundle
}
