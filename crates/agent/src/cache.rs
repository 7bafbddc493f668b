//! What the agent knows and holds, as one immutable snapshot: the trust bundle, the
//! registration entries synced from the server, and the credentials minted for them.
//!
//! Writers (entry sync, bundle refresh, the minter) replace parts of the snapshot through
//! a `tokio::sync::watch` channel; every Workload API stream watches the same channel and
//! answers from whatever snapshot is current, so a change reaches every open stream at
//! once, and reading never waits on the server.

use crate::attestor::Selectors;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use wimse_core::bundle::{KeyUse, TrustBundle};

/// How long a token signed by a key the bundle does not list is kept: two of the agent's
/// bundle polls, so that it never chases a key it has not heard of yet.
pub const UNKNOWN_SIGNER_GRACE: i64 = 10;
use wimse_core::{TrustDomain, WorkloadId};
use wimse_server::api::EntryView;

/// A registration entry as the agent uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry's ID at the server.
    pub id: String,
    /// The identity it grants.
    pub spiffe_id: WorkloadId,
    /// The selectors a workload must show, all of them; sorted, without repeats. (A
    /// boxed slice, not a `BTreeSet`: the agent holds one per entry, and a set's node is
    /// sized for eleven where most entries have one to three.)
    pub selectors: Box<[String]>,
    /// X.509-SVID lifetime, seconds.
    pub x509_ttl: u32,
    /// JWT-SVID and WIT lifetime, seconds.
    pub jwt_ttl: u32,
    /// The hint telling several identities apart ("" for none).
    pub hint: String,
    /// The foreign trust domains whose bundles the workload receives.
    pub federates_with: Box<[TrustDomain]>,
    /// The entry's revision at the server.
    pub revision: i64,
}

impl Entry {
    /// Reads an entry from the server's sync message.
    pub fn from_view(view: EntryView) -> Result<Self, wimse_core::IdError> {
        Ok(Self {
            spiffe_id: WorkloadId::parse(&view.spiffe_id)?,
            id: view.id,
            selectors: view
                .selectors
                .into_iter()
                .collect::<BTreeSet<String>>()
                .into_iter()
                .collect(),
            x509_ttl: view.x509_ttl,
            jwt_ttl: view.jwt_ttl,
            hint: view.hint.unwrap_or_default(),
            federates_with: view
                .federates_with
                .iter()
                .map(|name| TrustDomain::new(name))
                .collect::<Result<_, _>>()?,
            revision: view.revision,
        })
    }

    /// Whether a workload with `selectors` is entitled to this entry: it shows every one of
    /// the entry's selectors (an entry without selectors matches nobody).
    pub fn matches(&self, selectors: &Selectors) -> bool {
        !self.selectors.is_empty() && self.selectors.iter().all(|s| selectors.contains(s))
    }
}

/// An X509-SVID minted for an entry, with its key.
pub struct X509Credential {
    /// The entry's revision it was minted for.
    pub revision: i64,
    /// The chain's DER certificates, leaf first, concatenated: what the Workload API
    /// sends. Kept as these bytes only (not parsed certificates) because the agent holds
    /// one per workload and needs nothing else from them but the leaf's `notAfter`.
    pub chain_der: Vec<u8>,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The private key (generated on this host) as PKCS#8 DER, as the Workload API sends
    /// it. (The agent never signs with a workload's key, so it keeps only this encoding.)
    pub key_pkcs8: zeroize::Zeroizing<Vec<u8>>,
    /// When the agent received it, Unix seconds.
    pub minted_at: i64,
    /// The ID of the CA that signed the leaf (from its issuer's name), if it is a wimse CA.
    pub signer: Option<String>,
}

impl X509Credential {
    /// The leaf's `notAfter`.
    pub fn expires_at(&self) -> i64 {
        self.not_after
    }

    /// When to mint the next one: half way through the rest of the leaf's life when it
    /// arrived. (Not from `notBefore`: the server backdates it for clock skew, which for a
    /// short-lived certificate would put the half-life mark in the past.)
    pub fn refresh_at(&self) -> i64 {
        self.minted_at + (self.expires_at() - self.minted_at) / 2
    }
}

/// A WIT minted for an entry, with the key its `cnf` names.
pub struct WitCredential {
    /// The entry's revision it was minted for.
    pub revision: i64,
    /// The WIT, compact JWS.
    pub token: String,
    /// The key, generated on this host and never sent anywhere but to the workload, as a
    /// private JWK, as the WIT profile sends it.
    pub key_jwk: zeroize::Zeroizing<String>,
    /// `iat` (or the time of minting).
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// The `kid` of the key that signed it.
    pub kid: String,
}

impl WitCredential {
    /// When to mint the next one: half way through its life.
    pub fn refresh_at(&self) -> i64 {
        self.issued_at + (self.expires_at - self.issued_at) / 2
    }
}

/// The synced entries by ID, with an index that finds a workload's entries without
/// comparing its selectors against every entry: each entry is filed under one of its own
/// selectors (the one fewest entries share), and an entry can only match a workload that
/// shows that selector, so a lookup visits the workload's ~10 selectors and the few
/// entries filed under them instead of all entries.
#[derive(Debug, Default)]
pub struct Entries {
    by_id: BTreeMap<String, Entry>,
    by_selector: HashMap<String, Vec<String>>,
}

impl Entries {
    /// Indexes `by_id`.
    pub fn new(by_id: BTreeMap<String, Entry>) -> Self {
        let mut sharing: HashMap<&str, usize> = HashMap::new();
        for selector in by_id.values().flat_map(|e| &e.selectors) {
            *sharing.entry(selector).or_default() += 1;
        }
        let mut by_selector: HashMap<String, Vec<String>> = HashMap::new();
        for entry in by_id.values() {
            // An entry without selectors matches nobody, so it is not filed at all.
            if let Some(rarest) = entry
                .selectors
                .iter()
                .min_by_key(|s| sharing.get(s.as_str()).copied().unwrap_or(0))
            {
                by_selector
                    .entry(rarest.clone())
                    .or_default()
                    .push(entry.id.clone());
            }
        }
        Self { by_id, by_selector }
    }

    /// The entries whose selectors are all in `selectors`, in ID order.
    pub fn matching(&self, selectors: &Selectors) -> Vec<&Entry> {
        let mut found: Vec<&Entry> = selectors
            .iter()
            .filter_map(|s| self.by_selector.get(s))
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .filter(|e| e.matches(selectors))
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }
}

impl std::ops::Deref for Entries {
    type Target = BTreeMap<String, Entry>;
    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

/// Everything the Workload API answers from.
#[derive(Clone)]
pub struct Snapshot {
    /// The agent's trust domain.
    pub trust_domain: TrustDomain,
    /// Its current trust bundle.
    pub bundle: Arc<TrustBundle>,
    /// The foreign trust domains' bundles the server holds, by trust domain.
    pub federated: Arc<BTreeMap<TrustDomain, TrustBundle>>,
    /// The entries this agent serves, by ID.
    pub entries: Arc<Entries>,
    /// Whether entries have been synced at least once since start (before that, "no
    /// entry matches" means "not known yet", not "no identity").
    pub synced: bool,
    /// X509-SVIDs by entry ID.
    pub x509: Arc<HashMap<String, Arc<X509Credential>>>,
    /// WITs by entry ID.
    pub wit: Arc<HashMap<String, Arc<WitCredential>>>,
    /// The IDs of the trust domain's tainted JWT and WIT keys: what they signed is
    /// replaced at once.
    pub tainted: Arc<BTreeSet<String>>,
}

impl Snapshot {
    /// A snapshot with a bundle and nothing else yet.
    pub fn new(bundle: TrustBundle) -> Self {
        Self {
            trust_domain: bundle.trust_domain().clone(),
            bundle: Arc::new(bundle),
            federated: Arc::default(),
            entries: Arc::default(),
            synced: false,
            x509: Arc::default(),
            wit: Arc::default(),
            tainted: Arc::default(),
        }
    }

    /// Whether a token signed with key `kid` for `key_use` at `issued_at` must be replaced
    /// now: the key was tainted by an operator, or has left the bundle (revoked). A key
    /// the bundle does not list yet counts only once the token is [`UNKNOWN_SIGNER_GRACE`]
    /// old: a key activated at once (forced) may sign before this agent's next bundle.
    pub fn signer_retired(&self, kid: &str, key_use: KeyUse, issued_at: i64, now: i64) -> bool {
        self.tainted.contains(kid)
            || (now >= issued_at.saturating_add(UNKNOWN_SIGNER_GRACE)
                && !self
                    .bundle
                    .authorities(key_use)
                    .iter()
                    .any(|a| a.kid == kid))
    }

    /// The entries a workload with `selectors` is entitled to, in a stable order: by hint,
    /// then SPIFFE ID, then entry ID (the first is the default identity).
    pub fn identities(&self, selectors: &Selectors) -> Vec<&Entry> {
        let mut found = self.entries.matching(selectors);
        found.sort_by(|a, b| {
            (a.hint.is_empty(), &a.hint, a.spiffe_id.as_str(), &a.id).cmp(&(
                b.hint.is_empty(),
                &b.hint,
                b.spiffe_id.as_str(),
                &b.id,
            ))
        });
        found
    }

    /// The trust domain's ID string, the key of every bundle map.
    pub fn trust_domain_key(&self) -> String {
        self.trust_domain.spiffe_id_string()
    }

    /// The foreign bundles a workload holding `entries` receives: those of every trust
    /// domain one of the entries federates with (and whose bundle the server has), by trust
    /// domain, never this trust domain's own.
    pub fn federated_bundles<'a>(&'a self, entries: &[&Entry]) -> Vec<&'a TrustBundle> {
        let wanted: BTreeSet<&TrustDomain> = entries
            .iter()
            .flat_map(|e| e.federates_with.iter())
            .filter(|td| **td != self.trust_domain)
            .collect();
        wanted
            .into_iter()
            .filter_map(|td| self.federated.get(td))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, spiffe_id: &str, selectors: &[&str], hint: &str) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: WorkloadId::parse(spiffe_id).unwrap(),
            selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
            x509_ttl: 60,
            jwt_ttl: 60,
            hint: hint.into(),
            federates_with: Box::default(),
            revision: 1,
        }
    }

    fn selectors(list: &[&str]) -> Selectors {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_token_is_replaced_when_its_key_is_tainted_or_has_long_left_the_bundle() {
        use wimse_core::bundle::JwtAuthority;
        use wimse_core::jose::{Algorithm, SigningKey};
        let mut bundle = TrustBundle::new(TrustDomain::new("td").unwrap());
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        bundle.wit_authorities.push(JwtAuthority {
            kid: "k1".into(),
            key: key.public_key().clone(),
        });
        let mut snapshot = Snapshot::new(bundle);
        let now = 1_000;
        assert!(!snapshot.signer_retired("k1", KeyUse::WitSvid, now - 100, now));
        // A key of the other use is not this one.
        assert!(snapshot.signer_retired("k1", KeyUse::JwtSvid, now - 100, now));
        // Not listed: replaced, unless the token is younger than the grace (the bundle
        // naming a key activated at once may not have arrived yet).
        assert!(snapshot.signer_retired("k2", KeyUse::WitSvid, now - UNKNOWN_SIGNER_GRACE, now));
        assert!(!snapshot.signer_retired(
            "k2",
            KeyUse::WitSvid,
            now - UNKNOWN_SIGNER_GRACE + 1,
            now
        ));
        // Tainted: replaced at once, though still listed.
        snapshot.tainted = Arc::new(["k1".to_owned()].into());
        assert!(snapshot.signer_retired("k1", KeyUse::WitSvid, now, now));
    }

    #[test]
    fn an_entry_matches_only_a_workload_showing_all_its_selectors() {
        let e = entry(
            "1",
            "spiffe://td/web",
            &["unix:uid:1000", "unix:gid:10"],
            "",
        );
        assert!(e.matches(&selectors(&[
            "unix:uid:1000",
            "unix:gid:10",
            "unix:path:/x"
        ])));
        assert!(!e.matches(&selectors(&["unix:uid:1000"])));
        assert!(!e.matches(&selectors(&["unix:uid:1001", "unix:gid:10"])));
    }

    #[test]
    fn an_entry_without_selectors_matches_nobody() {
        let e = entry("1", "spiffe://td/web", &[], "");
        assert!(!e.matches(&selectors(&["unix:uid:0"])));
    }

    #[test]
    fn identities_are_ordered_hinted_first_and_stably() {
        let mut snapshot = Snapshot::new(TrustBundle::new(TrustDomain::new("td").unwrap()));
        let entries: BTreeMap<String, Entry> = [
            entry("c", "spiffe://td/b", &["unix:uid:1"], ""),
            entry("a", "spiffe://td/a", &["unix:uid:1"], ""),
            entry("b", "spiffe://td/z", &["unix:uid:1"], "primary"),
            entry("d", "spiffe://td/other", &["unix:uid:2"], ""),
        ]
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
        snapshot.entries = Arc::new(Entries::new(entries));
        let ids: Vec<&str> = snapshot
            .identities(&selectors(&["unix:uid:1"]))
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(ids, ["b", "a", "c"]);
    }

    #[test]
    fn a_workload_gets_the_foreign_bundles_its_entries_federate_with_and_no_others() {
        let td = |n: &str| TrustDomain::new(n).unwrap();
        let mut snapshot = Snapshot::new(TrustBundle::new(td("own.test")));
        snapshot.federated = Arc::new(
            ["a.test", "b.test", "c.test"]
                .into_iter()
                .map(|n| (td(n), TrustBundle::new(td(n))))
                .collect(),
        );
        let mut one = entry("1", "spiffe://own.test/one", &["unix:uid:1"], "");
        one.federates_with = vec![td("b.test"), td("a.test")].into();
        let mut two = entry("2", "spiffe://own.test/two", &["unix:uid:1"], "");
        // Its own trust domain and one the server has no bundle of are skipped.
        two.federates_with = vec![td("a.test"), td("own.test"), td("gone.test")].into();
        let names = |bundles: Vec<&TrustBundle>| -> Vec<String> {
            bundles
                .iter()
                .map(|b| b.trust_domain().to_string())
                .collect()
        };
        assert_eq!(
            names(snapshot.federated_bundles(&[&one, &two])),
            ["a.test", "b.test"]
        );
        assert_eq!(names(snapshot.federated_bundles(&[&two])), ["a.test"]);
        let plain = entry("3", "spiffe://own.test/three", &["unix:uid:1"], "");
        assert!(snapshot.federated_bundles(&[&plain]).is_empty());
    }

    proptest::proptest! {
        /// The index finds exactly the entries a comparison against every entry finds.
        #[test]
        fn the_index_agrees_with_a_full_scan(
            entries in proptest::collection::vec(proptest::collection::btree_set(0u8..12, 0..4), 0..40),
            workload in proptest::collection::btree_set(0u8..12, 0..8),
        ) {
            let name = |n: &u8| format!("unix:uid:{n}");
            let entries: BTreeMap<String, Entry> = entries
                .iter()
                .enumerate()
                .map(|(n, set)| {
                    let id = format!("{n:03}");
                    let selectors: Vec<String> = set.iter().map(name).collect();
                    let selectors: Vec<&str> = selectors.iter().map(String::as_str).collect();
                    (id.clone(), entry(&id, "spiffe://td/w", &selectors, ""))
                })
                .collect();
            let workload: Selectors = workload.iter().map(name).collect();
            let scanned: Vec<&str> = entries
                .values()
                .filter(|e| e.matches(&workload))
                .map(|e| e.id.as_str())
                .collect();
            let indexed = Entries::new(entries.clone());
            let found: Vec<&str> = indexed.matching(&workload).iter().map(|e| e.id.as_str()).collect();
            proptest::prop_assert_eq!(found, scanned);
        }
    }
}
