//! The trust domain's signing authorities on one server replica, and their rotation.
//!
//! Three kinds of key, never shared between uses: the X.509 CA key (signs workload and
//! agent certificates), the JWT key (JWT-SVIDs, Txn-Tokens) and the WIT key (WITs).
//! Each key lives through three phases so that verifiers always know a key before it
//! signs anything and keep knowing it until everything it signed has expired:
//!
//! 1. **prepared** at half of the active key's life: generated and published in the
//!    bundle, not used to sign;
//! 2. **active** at three quarters of the old key's life: signs everything new;
//! 3. **retired**: published until its own `not_after`, then deleted. Nothing it signed
//!    outlives it, because every credential's expiry is clamped to its signer's
//!    `not_after` (leaf certificates to their CA's, tokens to their key's).
//!
//! An operator can run the same steps ahead of schedule (`wimse server localauthority
//! prepare|activate`, [`Authorities::prepare`] and [`Authorities::activate`]), to rotate
//! now rather than at three quarters of a life: after a suspected compromise, or before
//! a staff change. Activation still waits until the prepared key has been published for a
//! bundle refresh hint, so that relying parties know it before they meet it, unless the
//! operator forces it.
//!
//! A retired key believed compromised is then **tainted** ([`Authorities::taint`]): it
//! stays published, but agents replace at once everything it signed (they poll the
//! tainted IDs beside the bundle); then **revoked** ([`Authorities::revoke`]): its files
//! go, and it leaves the shared bundle at once, so what it signed no longer verifies.
//! A CA's subject names its ID (`wimse CA <id>`), so the issuer of every certificate it
//! signed does too: that is how agents find what a tainted CA signed, their own
//! certificates included. With an upstream CA, revoking an intermediate is the upstream
//! CA's business (the bundle holds the upstream root); tainting it still works.
//!
//! Keys are per replica: each server keeps its private keys in `<data dir>/keys` (files
//! with mode 0600, PKCS#8 PEM) and publishes only the public halves through the
//! datastore, so several replicas on one database share one bundle holding all of them.
//! With an upstream CA, the X.509 key is an intermediate signed by it and the bundle's
//! X.509 authority is the upstream root.

use crate::datastore::{Authority, AuthorityKind, AuthorityState};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wimse_core::TrustDomain;
use wimse_core::jose::{Algorithm, SigningKey, b64};
use wimse_core::x509::{self, CaParams, Certificate};

/// How long keys live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Lifetime of an X.509 CA key and certificate, in seconds.
    pub ca_ttl: i64,
    /// Lifetime of a JWT or WIT signing key, in seconds.
    pub jwt_key_ttl: i64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            ca_ttl: 24 * 3600,
            jwt_key_ttl: 24 * 3600,
        }
    }
}

/// Why an authority could not be loaded, created or rotated.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A key directory or file could not be read or written.
    #[error("key store `{path}`: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored key, certificate or its metadata is unreadable.
    #[error("key store `{path}` holds an unreadable {what}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What could not be read.
        what: &'static str,
    },
    /// Generating a key or certificate failed.
    #[error("cannot create {0} authority: {1}")]
    Create(&'static str, String),
    /// An operator's request does not fit the keys' state (nothing prepared, or prepared
    /// too recently to sign).
    #[error("{0}")]
    Refused(String),
}

/// One signing key of this replica.
#[derive(Clone, Debug)]
pub struct Slot {
    /// The key ID (`kid` for JWT and WIT keys; an opaque name for the CA).
    pub id: String,
    /// What it signs.
    pub kind: AuthorityKind,
    /// The private key.
    pub key: Arc<SigningKey>,
    /// The CA certificate, for X.509 authorities.
    pub cert: Option<Certificate>,
    /// Start of life, Unix seconds.
    pub not_before: i64,
    /// End of life, Unix seconds; nothing it signs may outlive it.
    pub not_after: i64,
    /// Its phase.
    pub state: AuthorityState,
}

/// The metadata stored beside each key file.
#[derive(Serialize, Deserialize)]
struct Meta {
    id: String,
    kind: String,
    not_before: i64,
    not_after: i64,
    state: String,
}

/// An upstream CA that signs this replica's X.509 CA certificates.
#[derive(Clone, Debug)]
pub struct UpstreamCa {
    /// Its certificate (the trust anchor published in the bundle).
    pub cert: Certificate,
    /// Its key.
    pub key: Arc<SigningKey>,
}

/// The authorities of this replica, backed by files in the key directory.
#[derive(Debug)]
pub struct Authorities {
    dir: PathBuf,
    server_id: String,
    trust_domain: TrustDomain,
    policy: RotationPolicy,
    upstream: Option<UpstreamCa>,
    slots: Vec<Slot>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthorityError + '_ {
    move |source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` atomically with mode 0600 (write a temporary file, then rename).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), AuthorityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

impl Authorities {
    /// Loads this replica's keys from `dir` (created with mode 0700 if absent), creates an
    /// active key of each kind that has none, and applies rotation at `now`.
    pub fn load_or_create(
        dir: &Path,
        server_id: &str,
        trust_domain: TrustDomain,
        policy: RotationPolicy,
        upstream: Option<UpstreamCa>,
        now: i64,
    ) -> Result<Self, AuthorityError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let mut authorities = Authorities {
            dir: dir.to_owned(),
            server_id: server_id.to_owned(),
            trust_domain,
            policy,
            upstream,
            slots: Vec::new(),
        };
        authorities.load()?;
        for kind in [AuthorityKind::X509, AuthorityKind::Jwt, AuthorityKind::Wit] {
            if authorities.active(kind).is_none() {
                // A fresh trust domain, or every key expired while the server was down.
                let slot = authorities.create(kind, now, AuthorityState::Active)?;
                authorities.slots.push(slot);
            }
        }
        authorities.rotate(now)?;
        Ok(authorities)
    }

    fn load(&mut self) -> Result<(), AuthorityError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        let mut metas: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        metas.sort();
        for meta_path in metas {
            let corrupt = |what| AuthorityError::Corrupt {
                path: meta_path.clone(),
                what,
            };
            let text = std::fs::read_to_string(&meta_path).map_err(io_err(&meta_path))?;
            let meta: Meta = serde_json::from_str(&text).map_err(|_| corrupt("metadata"))?;
            let kind = AuthorityKind::from_stored(&meta.kind).ok_or_else(|| corrupt("key kind"))?;
            let state =
                AuthorityState::from_stored(&meta.state).ok_or_else(|| corrupt("key state"))?;
            let key_path = meta_path.with_extension("key");
            let pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?,
            );
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| corrupt("private key"))?;
            let cert = if kind == AuthorityKind::X509 {
                let cert_path = meta_path.with_extension("crt");
                let text = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
                Some(Certificate::from_pem(&text).map_err(|_| corrupt("certificate"))?)
            } else {
                None
            };
            self.slots.push(Slot {
                id: meta.id,
                kind,
                key: Arc::new(key),
                cert,
                not_before: meta.not_before,
                not_after: meta.not_after,
                state,
            });
        }
        Ok(())
    }

    fn create(
        &self,
        kind: AuthorityKind,
        now: i64,
        state: AuthorityState,
    ) -> Result<Slot, AuthorityError> {
        let what = kind.as_str();
        let fail = |e: String| AuthorityError::Create(what, e);
        let key = SigningKey::generate(Algorithm::Es256).map_err(|e| fail(e.to_string()))?;
        let mut id_bytes = [0u8; 12];
        aws_lc_rs::rand::fill(&mut id_bytes).map_err(|_| fail("no randomness".into()))?;
        let id = b64::encode(id_bytes);
        let ttl = match kind {
            AuthorityKind::X509 => self.policy.ca_ttl,
            AuthorityKind::Jwt | AuthorityKind::Wit => self.policy.jwt_key_ttl,
        };
        let (not_before, mut not_after) = (now, now.saturating_add(ttl));
        let cert = if kind == AuthorityKind::X509 {
            let params = CaParams {
                trust_domain: self.trust_domain.clone(),
                not_before: now.saturating_sub(60),
                not_after,
                subject_cn: format!("{}{id}", x509::CA_COMMON_NAME_PREFIX),
                path_len: Some(0),
            };
            let cert = match &self.upstream {
                Some(up) => x509::intermediate_ca(&key, &params, &up.cert, &up.key),
                None => x509::self_signed_ca(&key, &params),
            }
            .map_err(|e| fail(e.to_string()))?;
            // An upstream CA may have clamped the validity.
            not_after = not_after.min(cert.not_after());
            Some(cert)
        } else {
            None
        };
        let slot = Slot {
            id,
            kind,
            key: Arc::new(key),
            cert,
            not_before,
            not_after,
            state,
        };
        self.persist(&slot)?;
        Ok(slot)
    }

    fn persist(&self, slot: &Slot) -> Result<(), AuthorityError> {
        let base = self.dir.join(format!("{}-{}", slot.kind.as_str(), slot.id));
        let pem = slot
            .key
            .to_pkcs8_pem()
            .map_err(|e| AuthorityError::Create(slot.kind.as_str(), e.to_string()))?;
        write_private(&base.with_extension("key"), pem.as_bytes())?;
        if let Some(cert) = &slot.cert {
            write_private(&base.with_extension("crt"), cert.to_pem().as_bytes())?;
        }
        let meta = Meta {
            id: slot.id.clone(),
            kind: slot.kind.as_str().into(),
            not_before: slot.not_before,
            not_after: slot.not_after,
            state: slot.state.as_str().into(),
        };
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        // Metadata last: a key without metadata is ignored on load, never half-used.
        write_private(&base.with_extension("json"), &json)
    }

    fn remove_files(&self, slot: &Slot) {
        let base = self.dir.join(format!("{}-{}", slot.kind.as_str(), slot.id));
        for ext in ["json", "key", "crt"] {
            let _ = std::fs::remove_file(base.with_extension(ext));
        }
    }

    /// Advances every kind's keys through prepared → active → retired → deleted at `now`.
    /// Returns whether anything changed (so the bundle must be republished).
    pub fn rotate(&mut self, now: i64) -> Result<bool, AuthorityError> {
        let mut changed = false;
        // Expired keys go first: they can neither sign nor vouch for anything.
        let (expired, live): (Vec<Slot>, Vec<Slot>) =
            self.slots.drain(..).partition(|s| s.not_after <= now);
        self.slots = live;
        for slot in &expired {
            self.remove_files(slot);
            changed = true;
        }
        for kind in [AuthorityKind::X509, AuthorityKind::Jwt, AuthorityKind::Wit] {
            changed |= self.rotate_kind(kind, now)?;
        }
        Ok(changed)
    }

    fn rotate_kind(&mut self, kind: AuthorityKind, now: i64) -> Result<bool, AuthorityError> {
        let prepared = self
            .slots
            .iter()
            .position(|s| s.kind == kind && s.state == AuthorityState::Prepared);
        let Some(active) = self.active(kind).cloned() else {
            // No active key: a fresh key store, or the active key expired while the server
            // was down. A prepared key was already published, so it takes over at once.
            if let Some(slot) = prepared.and_then(|i| self.slots.get_mut(i)) {
                slot.state = AuthorityState::Active;
                let slot = slot.clone();
                self.persist(&slot)?;
            } else {
                let slot = self.create(kind, now, AuthorityState::Active)?;
                self.slots.push(slot);
            }
            return Ok(true);
        };
        let life = active.not_after - active.not_before;
        let prepare_at = active.not_before + life / 2;
        let activate_at = active.not_before + life * 3 / 4;
        match prepared {
            None if now >= prepare_at => {
                let slot = self.create(kind, now, AuthorityState::Prepared)?;
                self.slots.push(slot);
                Ok(true)
            }
            // A prepared key signs only after it has been published for a quarter of a life,
            // even if the server was down when activation was due (SPIFFE federation §4.1:
            // publish well before use).
            Some(index)
                if now >= activate_at
                    && self
                        .slots
                        .get(index)
                        .is_some_and(|p| now >= p.not_before + life / 4) =>
            {
                for slot in &mut self.slots {
                    if slot.kind == kind && slot.state == AuthorityState::Active {
                        slot.state = AuthorityState::Retired;
                    }
                }
                if let Some(slot) = self.slots.get_mut(index) {
                    slot.state = AuthorityState::Active;
                }
                for slot in self.slots.iter().filter(|s| s.kind == kind) {
                    self.persist(slot)?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Prepares the next key of `kind` now, ahead of schedule: published from the next
    /// bundle on, signing nothing until activated. A key already prepared is kept and
    /// returned instead (with `false`: nothing changed).
    pub fn prepare(
        &mut self,
        kind: AuthorityKind,
        now: i64,
    ) -> Result<(Slot, bool), AuthorityError> {
        if let Some(prepared) = self.prepared(kind) {
            return Ok((prepared.clone(), false));
        }
        let slot = self.create(kind, now, AuthorityState::Prepared)?;
        self.slots.push(slot.clone());
        Ok((slot, true))
    }

    /// Makes the prepared key of `kind` sign from `now` on, ahead of schedule; the active
    /// key retires (published until its end of life, as in a scheduled rotation). Unless
    /// `force`, the prepared key must have been published for `min_published` seconds
    /// (the bundle's refresh hint: relying parties may not know it sooner).
    pub fn activate(
        &mut self,
        kind: AuthorityKind,
        now: i64,
        min_published: i64,
        force: bool,
    ) -> Result<Slot, AuthorityError> {
        let Some(prepared) = self.prepared(kind) else {
            return Err(AuthorityError::Refused(format!(
                "no {} authority is prepared (prepare one first)",
                kind.as_str()
            )));
        };
        let published = now.saturating_sub(prepared.not_before);
        if !force && published < min_published {
            return Err(AuthorityError::Refused(format!(
                "{} authority `{}` was published {published} s ago; relying parties may not \
                 know it before {min_published} s (the bundle's refresh hint). Wait, or force \
                 its activation",
                kind.as_str(),
                prepared.id
            )));
        }
        let id = prepared.id.clone();
        for slot in self.slots.iter_mut().filter(|s| s.kind == kind) {
            slot.state = match slot.state {
                AuthorityState::Prepared if slot.id == id => AuthorityState::Active,
                AuthorityState::Active => AuthorityState::Retired,
                other => other,
            };
        }
        // The new active key's metadata first: a crash before the old key's is written
        // leaves two active keys, both published, rather than none.
        let mut changed: Vec<Slot> = self
            .slots
            .iter()
            .filter(|s| s.kind == kind)
            .cloned()
            .collect();
        changed.sort_by_key(|s| s.state != AuthorityState::Active);
        for slot in &changed {
            self.persist(slot)?;
        }
        self.active(kind)
            .cloned()
            .ok_or_else(|| AuthorityError::Refused("the activated key was lost".into()))
    }

    /// Marks the retired key `id` of `kind` as compromised: still published, but agents
    /// replace what it signed at once, their own certificates included (`false`: it was
    /// tainted already).
    pub fn taint(&mut self, kind: AuthorityKind, id: &str) -> Result<(Slot, bool), AuthorityError> {
        let slot = self.operated(kind, id)?;
        match slot.state {
            AuthorityState::Tainted => return Ok((slot.clone(), false)),
            AuthorityState::Retired => {}
            AuthorityState::Active | AuthorityState::Prepared => {
                return Err(AuthorityError::Refused(format!(
                    "{} authority `{id}` is {}: only a retired key can be tainted (activate \
                     its successor first)",
                    kind.as_str(),
                    slot.state.as_str()
                )));
            }
        }
        let mut tainted = slot.clone();
        tainted.state = AuthorityState::Tainted;
        self.persist(&tainted)?;
        if let Some(slot) = self.slots.iter_mut().find(|s| s.kind == kind && s.id == id) {
            slot.state = AuthorityState::Tainted;
        }
        Ok((tainted, true))
    }

    /// Removes the tainted key `id` of `kind` for good: its files now, and the caller
    /// removes it from the bundle. What it signed no longer verifies anywhere the bundle
    /// reaches.
    pub fn revoke(&mut self, kind: AuthorityKind, id: &str) -> Result<Slot, AuthorityError> {
        let slot = self.operated(kind, id)?;
        if kind == AuthorityKind::X509 && self.upstream.is_some() {
            return Err(AuthorityError::Refused(
                "with an upstream CA the bundle holds the upstream root, not this CA: revoke \
                 this intermediate at the upstream CA"
                    .into(),
            ));
        }
        if slot.state != AuthorityState::Tainted {
            return Err(AuthorityError::Refused(format!(
                "{} authority `{id}` is {}: only a tainted key can be revoked (taint it, and \
                 let agents replace what it signed)",
                kind.as_str(),
                slot.state.as_str()
            )));
        }
        let slot = slot.clone();
        self.remove_files(&slot);
        self.slots.retain(|s| !(s.kind == kind && s.id == id));
        Ok(slot)
    }

    /// Puts back a key [`Authorities::revoke`] removed, when removing it from the shared
    /// bundle failed.
    pub fn reinstate(&mut self, slot: Slot) -> Result<(), AuthorityError> {
        self.persist(&slot)?;
        self.slots.push(slot);
        Ok(())
    }

    /// This replica's key `id` of `kind`, which an operator may taint or revoke.
    fn operated(&self, kind: AuthorityKind, id: &str) -> Result<&Slot, AuthorityError> {
        self.slots
            .iter()
            .find(|s| s.kind == kind && s.id == id)
            .ok_or_else(|| {
                AuthorityError::Refused(format!(
                    "this server holds no {} authority `{id}` (keys are per replica: run it \
                     against the replica that holds it)",
                    kind.as_str()
                ))
            })
    }

    /// The prepared key of `kind`, if any.
    fn prepared(&self, kind: AuthorityKind) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.kind == kind && s.state == AuthorityState::Prepared)
    }

    /// The key that signs new credentials of `kind`.
    pub fn active(&self, kind: AuthorityKind) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.kind == kind && s.state == AuthorityState::Active)
    }

    /// Every key of this replica.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The X.509 chain above a leaf signed by the active CA (sent after the leaf): the CA
    /// certificate itself when it is an intermediate under an upstream CA, else nothing.
    pub fn intermediates(&self) -> Vec<Certificate> {
        match (
            &self.upstream,
            self.active(AuthorityKind::X509)
                .and_then(|s| s.cert.clone()),
        ) {
            (Some(_), Some(cert)) => vec![cert],
            _ => Vec::new(),
        }
    }

    /// The public halves, as the datastore records them for the shared bundle.
    pub fn public_records(&self, now: i64) -> Vec<Authority> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let public_data = match slot.kind {
                    AuthorityKind::X509 => match &self.upstream {
                        // Verifiers anchor at the upstream root; our CA rides in the chain.
                        Some(up) => up.cert.der().to_vec(),
                        None => slot.cert.as_ref()?.der().to_vec(),
                    },
                    AuthorityKind::Jwt | AuthorityKind::Wit => {
                        serde_json::to_vec(slot.key.public_jwk()).ok()?
                    }
                };
                Some(Authority {
                    id: slot.id.clone(),
                    server_id: self.server_id.clone(),
                    kind: slot.kind,
                    public_data,
                    state: slot.state,
                    not_after: slot.not_after,
                    created_at: now,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;
    const T0: i64 = 1_800_000_000;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn policy() -> RotationPolicy {
        RotationPolicy {
            ca_ttl: 24 * HOUR,
            jwt_key_ttl: 24 * HOUR,
        }
    }

    fn states(a: &Authorities, kind: AuthorityKind) -> Vec<AuthorityState> {
        let mut states: Vec<_> = a
            .slots()
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.state)
            .collect();
        states.sort_by_key(|s| s.as_str());
        states
    }

    #[test]
    fn a_fresh_replica_has_one_active_key_of_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        for kind in [AuthorityKind::X509, AuthorityKind::Jwt, AuthorityKind::Wit] {
            assert_eq!(states(&a, kind), vec![AuthorityState::Active]);
        }
        let ca = a.active(AuthorityKind::X509).unwrap().cert.clone().unwrap();
        assert!(ca.is_ca());
        assert_eq!(ca.uri_sans(), vec!["spiffe://example.org".to_owned()]);
    }

    #[test]
    fn keys_are_private_files_and_survive_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0 + 60).unwrap();
        for kind in [AuthorityKind::X509, AuthorityKind::Jwt, AuthorityKind::Wit] {
            let (x, y) = (a.active(kind).unwrap(), b.active(kind).unwrap());
            assert_eq!(x.id, y.id);
            assert_eq!(x.key.public_key(), y.key.public_key());
        }
    }

    #[test]
    fn rotation_prepares_then_activates_then_retires_then_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        let first = a.active(AuthorityKind::Jwt).unwrap().id.clone();
        assert!(!a.rotate(T0 + 11 * HOUR).unwrap());
        // Half life: the next key is published before it signs anything.
        assert!(a.rotate(T0 + 12 * HOUR).unwrap());
        assert_eq!(
            states(&a, AuthorityKind::Jwt),
            vec![AuthorityState::Active, AuthorityState::Prepared]
        );
        assert_eq!(a.active(AuthorityKind::Jwt).unwrap().id, first);
        assert!(
            !a.rotate(T0 + 17 * HOUR).unwrap(),
            "not before three quarters of a life"
        );
        // Three quarters: the prepared key signs; the old one stays published.
        assert!(a.rotate(T0 + 18 * HOUR).unwrap());
        assert_eq!(
            states(&a, AuthorityKind::Jwt),
            vec![AuthorityState::Active, AuthorityState::Retired]
        );
        assert_ne!(a.active(AuthorityKind::Jwt).unwrap().id, first);
        // Its end of life: the retired key is gone, from memory and disk (and the new active
        // key, at half its life, has a prepared successor).
        assert!(a.rotate(T0 + 24 * HOUR).unwrap());
        assert_eq!(
            states(&a, AuthorityKind::Jwt),
            vec![AuthorityState::Active, AuthorityState::Prepared]
        );
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!files.iter().any(|f| f.contains(&first)));
    }

    #[test]
    fn an_operator_prepares_and_activates_ahead_of_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        let first = a.active(AuthorityKind::Wit).unwrap().id.clone();
        let refused = |e: AuthorityError| match e {
            AuthorityError::Refused(message) => message,
            other => panic!("not refused: {other}"),
        };
        // Nothing to activate yet.
        let message = refused(a.activate(AuthorityKind::Wit, T0, 300, true).unwrap_err());
        assert!(
            message.contains("no wit authority is prepared"),
            "{message}"
        );
        // An hour in, long before half life.
        let (prepared, new) = a.prepare(AuthorityKind::Wit, T0 + HOUR).unwrap();
        assert!(new);
        assert_eq!(prepared.state, AuthorityState::Prepared);
        assert_eq!(a.active(AuthorityKind::Wit).unwrap().id, first);
        // Preparing again keeps it; other kinds are untouched.
        let (again, new) = a.prepare(AuthorityKind::Wit, T0 + HOUR + 1).unwrap();
        assert_eq!((again.id.as_str(), new), (prepared.id.as_str(), false));
        assert_eq!(states(&a, AuthorityKind::Jwt), vec![AuthorityState::Active]);
        // Not before relying parties can know it, unless forced.
        let message = refused(
            a.activate(AuthorityKind::Wit, T0 + HOUR + 299, 300, false)
                .unwrap_err(),
        );
        assert!(message.contains("published 299 s ago"), "{message}");
        assert_eq!(a.active(AuthorityKind::Wit).unwrap().id, first);
        let active = a
            .activate(AuthorityKind::Wit, T0 + HOUR + 300, 300, false)
            .unwrap();
        assert_eq!(active.id, prepared.id);
        assert_eq!(
            states(&a, AuthorityKind::Wit),
            vec![AuthorityState::Active, AuthorityState::Retired]
        );
        // Kept across a restart, and the schedule goes on from the new key's start.
        let mut b =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0 + 2 * HOUR)
                .unwrap();
        assert_eq!(b.active(AuthorityKind::Wit).unwrap().id, prepared.id);
        b.rotate(T0 + 12 * HOUR).unwrap();
        assert_eq!(
            states(&b, AuthorityKind::Wit),
            vec![AuthorityState::Active, AuthorityState::Retired],
            "not at the old key's half life"
        );
        b.rotate(T0 + 13 * HOUR).unwrap();
        assert_eq!(
            states(&b, AuthorityKind::Wit),
            vec![
                AuthorityState::Active,
                AuthorityState::Prepared,
                AuthorityState::Retired
            ],
            "at the new key's"
        );
        // Forced, at once.
        let (next, _) = b.prepare(AuthorityKind::Jwt, T0 + 13 * HOUR).unwrap();
        let active = b
            .activate(AuthorityKind::Jwt, T0 + 13 * HOUR, 300, true)
            .unwrap();
        assert_eq!(active.id, next.id);
    }

    #[test]
    fn only_a_retired_key_is_tainted_and_only_a_tainted_one_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        let refused = |e: AuthorityError| match e {
            AuthorityError::Refused(message) => message,
            other => panic!("not refused: {other}"),
        };
        let old = a.active(AuthorityKind::Jwt).unwrap().id.clone();
        let message = refused(a.taint(AuthorityKind::Jwt, &old).unwrap_err());
        assert!(message.contains("is active"), "{message}");
        let (next, _) = a.prepare(AuthorityKind::Jwt, T0).unwrap();
        let message = refused(a.taint(AuthorityKind::Jwt, &next.id).unwrap_err());
        assert!(message.contains("is prepared"), "{message}");
        a.activate(AuthorityKind::Jwt, T0, 300, true).unwrap();
        let message = refused(a.revoke(AuthorityKind::Jwt, &old).unwrap_err());
        assert!(message.contains("only a tainted key"), "{message}");
        // Keys are named by kind and ID: another kind, or an unknown ID, is not found.
        assert!(refused(a.taint(AuthorityKind::Wit, &old).unwrap_err()).contains("holds no"));
        assert!(refused(a.taint(AuthorityKind::Jwt, "nope").unwrap_err()).contains("holds no"));
        let x509 = a.active(AuthorityKind::X509).unwrap().id.clone();
        assert!(refused(a.taint(AuthorityKind::X509, &x509).unwrap_err()).contains("is active"));

        let (tainted, new) = a.taint(AuthorityKind::Jwt, &old).unwrap();
        assert!(new);
        assert_eq!(tainted.state, AuthorityState::Tainted);
        assert!(
            !a.taint(AuthorityKind::Jwt, &old).unwrap().1,
            "tainted once"
        );
        // Published as tainted, and so after a restart.
        let published = a.public_records(T0);
        assert!(
            published
                .iter()
                .any(|r| r.id == old && r.state == AuthorityState::Tainted)
        );
        let mut b =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0 + 60).unwrap();
        assert_eq!(
            states(&b, AuthorityKind::Jwt),
            vec![AuthorityState::Active, AuthorityState::Tainted]
        );
        // Put back when the bundle could not be changed, and revocable again.
        let slot = b.revoke(AuthorityKind::Jwt, &old).unwrap();
        b.reinstate(slot).unwrap();
        let c =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0 + 60).unwrap();
        assert_eq!(
            states(&c, AuthorityKind::Jwt),
            states(&b, AuthorityKind::Jwt)
        );
        // Revoked: gone from memory and disk; the new key goes on signing.
        b.revoke(AuthorityKind::Jwt, &old).unwrap();
        assert_eq!(states(&b, AuthorityKind::Jwt), vec![AuthorityState::Active]);
        assert_eq!(b.active(AuthorityKind::Jwt).unwrap().id, next.id);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!files.iter().any(|f| f.contains(&old)), "{files:?}");
    }

    #[test]
    fn rotation_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        a.rotate(T0 + 12 * HOUR).unwrap();
        a.rotate(T0 + 18 * HOUR).unwrap();
        let b = Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0 + 19 * HOUR)
            .unwrap();
        assert_eq!(
            states(&b, AuthorityKind::Wit),
            vec![AuthorityState::Active, AuthorityState::Retired]
        );
        assert_eq!(
            states(&b, AuthorityKind::Wit),
            states(&a, AuthorityKind::Wit)
        );
        assert_eq!(
            b.active(AuthorityKind::Wit).unwrap().id,
            a.active(AuthorityKind::Wit).unwrap().id
        );
    }

    #[test]
    fn a_late_prepared_key_is_published_a_quarter_life_before_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        // The server was down from before half life until after three quarters.
        assert!(a.rotate(T0 + 19 * HOUR).unwrap());
        assert!(
            !a.rotate(T0 + 22 * HOUR).unwrap(),
            "published only three hours"
        );
        // The old key expires at 24 h: the prepared key, published for five hours, takes over.
        assert!(a.rotate(T0 + 24 * HOUR).unwrap());
        assert_eq!(states(&a, AuthorityKind::Jwt), vec![AuthorityState::Active]);
    }

    #[test]
    fn keys_that_expired_while_down_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        let old = a.active(AuthorityKind::X509).unwrap().id.clone();
        let b = Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0 + 48 * HOUR)
            .unwrap();
        assert_ne!(b.active(AuthorityKind::X509).unwrap().id, old);
        assert_eq!(b.slots().len(), 3);
    }

    #[test]
    fn upstream_ca_signs_the_replica_ca_and_is_the_published_root() {
        let dir = tempfile::tempdir().unwrap();
        let up_key = SigningKey::generate(Algorithm::Es256).unwrap();
        let up_cert = x509::self_signed_ca(
            &up_key,
            &CaParams {
                trust_domain: td(),
                not_before: T0 - HOUR,
                not_after: T0 + 100 * HOUR,
                subject_cn: "upstream".into(),
                path_len: None,
            },
        )
        .unwrap();
        let upstream = UpstreamCa {
            cert: up_cert.clone(),
            key: Arc::new(up_key),
        };
        let mut a =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), Some(upstream), T0)
                .unwrap();
        assert_eq!(a.intermediates().len(), 1);
        let records = a.public_records(T0);
        let x509 = records
            .iter()
            .find(|r| r.kind == AuthorityKind::X509)
            .unwrap();
        assert_eq!(x509.public_data, up_cert.der());
        let old = a.active(AuthorityKind::X509).unwrap().clone();
        // Tainted like any CA, but revoking it is the upstream CA's business.
        a.prepare(AuthorityKind::X509, T0).unwrap();
        a.activate(AuthorityKind::X509, T0, 0, false).unwrap();
        a.taint(AuthorityKind::X509, &old.id).unwrap();
        match a.revoke(AuthorityKind::X509, &old.id) {
            Err(AuthorityError::Refused(message)) => {
                assert!(message.contains("upstream"), "{message}");
            }
            other => panic!("revoked under an upstream CA: {other:?}"),
        }
    }

    #[test]
    fn a_corrupt_key_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap();
        let slot = a.active(AuthorityKind::Jwt).unwrap();
        let key_path = dir.path().join(format!("jwt-{}.key", slot.id));
        std::fs::write(&key_path, "garbage").unwrap();
        let err =
            Authorities::load_or_create(dir.path(), "s1", td(), policy(), None, T0).unwrap_err();
        assert!(err.to_string().contains("unreadable private key"), "{err}");
    }
}
