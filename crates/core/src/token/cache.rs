//! A bounded cache of verified tokens, keyed by the SHA-256 of the token text.
//!
//! Tokens that travel unchanged from request to request (a WIT, a Txn-Token carried along
//! a call chain) need their signature verified once, not per request. A hit still checks
//! `exp`, so a cached token stops working when it expires.
//!
//! A removed key must stop vouching at once, so every lookup names the generation of the
//! trust bundles it verifies with: the cache holds the verifications of one generation; a
//! lookup with a newer one empties it first, and one with an older one (a request that
//! read the bundles just before they changed) is verified but neither served from nor
//! remembered in the cache. Bundle generations only grow.
//!
//! [`WitCache`](super::wit::WitCache) and [`TxnCache`](super::txn::TxnCache) are this
//! cache with their verifier attached.

use super::{TokenError, Validation};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A verified token's expiry, which a cache hit checks again.
pub trait Expiring {
    /// `exp`, Unix seconds.
    fn exp(&self) -> i64;
}

/// See the module doc.
#[derive(Debug)]
pub struct VerifiedCache<T> {
    capacity: usize,
    entries: Mutex<Entries<T>>,
}

/// The cached tokens, all verified with the bundles of `generation`.
#[derive(Debug)]
struct Entries<T> {
    generation: u64,
    tokens: HashMap<[u8; 32], Arc<T>>,
}

impl<T: Expiring> VerifiedCache<T> {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            capacity,
            entries: Mutex::new(Entries {
                generation: 0,
                tokens: HashMap::new(),
            }),
        }
    }

    /// The verified token: from the cache (its `exp` checked again), or from `verify`,
    /// which is given the token's SHA-256 and whose success is remembered. `generation`
    /// is that of the bundles `verify` uses (see the module doc).
    pub fn get_or_verify(
        &self,
        token: &str,
        generation: u64,
        validation: &Validation,
        verify: impl FnOnce(&[u8; 32]) -> Result<T, TokenError>,
    ) -> Result<Arc<T>, TokenError> {
        let hash = crate::digest::sha256(token.as_bytes());
        let cached = {
            let mut entries = self.lock();
            if generation > entries.generation {
                entries.generation = generation;
                entries.tokens.clear();
            }
            if generation == entries.generation {
                entries.tokens.get(&hash).cloned()
            } else {
                None
            }
        };
        if let Some(verified) = cached {
            validation.check_exp(verified.exp())?;
            return Ok(verified);
        }
        let verified = Arc::new(verify(&hash)?);
        let mut entries = self.lock();
        if generation != entries.generation {
            // The bundles changed while this was verified: not for the new generation.
            return Ok(verified);
        }
        if entries.tokens.len() >= self.capacity {
            entries
                .tokens
                .retain(|_, t| t.exp().saturating_add(validation.leeway) > validation.now);
            if entries.tokens.len() >= self.capacity {
                // Still full of live tokens: start over rather than grow (a cache, not a store).
                entries.tokens.clear();
            }
        }
        entries.tokens.insert(hash, Arc::clone(&verified));
        Ok(verified)
    }

    /// Forgets every cached token.
    pub fn clear(&self) {
        self.lock().tokens.clear();
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Entries<T>> {
        // A poisoned lock holds only verified tokens; they are still valid.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use std::cell::Cell;

    struct Token(i64);
    impl Expiring for Token {
        fn exp(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn a_token_is_verified_once_and_its_expiry_checked_on_every_hit() {
        let cache = VerifiedCache::<Token>::new(4);
        let calls = Cell::new(0);
        let verify = |_: &[u8; 32]| {
            calls.set(calls.get() + 1);
            Ok(Token(1_000))
        };
        let mut v = Validation::at(500);
        v.leeway = 0;
        cache.get_or_verify("a", 1, &v, verify).unwrap();
        cache.get_or_verify("a", 1, &v, verify).unwrap();
        assert_eq!(calls.get(), 1);
        v.now = 1_000;
        assert!(matches!(
            cache.get_or_verify("a", 1, &v, verify),
            Err(TokenError::Expired { .. })
        ));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn a_failed_verification_is_not_remembered_and_the_cache_stays_bounded() {
        let cache = VerifiedCache::<Token>::new(2);
        let v = Validation::at(0);
        assert!(
            cache
                .get_or_verify("bad", 1, &v, |_| Err(TokenError::MissingKid))
                .is_err()
        );
        assert!(cache.is_empty());
        for token in ["a", "b", "c", "d"] {
            cache
                .get_or_verify(token, 1, &v, |_| Ok(Token(100)))
                .unwrap();
            assert!(cache.len() <= 2);
        }
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_newer_bundle_generation_empties_the_cache_and_an_older_one_is_never_remembered() {
        let cache = VerifiedCache::<Token>::new(4);
        let v = Validation::at(0);
        let calls = Cell::new(0);
        let verify = |_: &[u8; 32]| {
            calls.set(calls.get() + 1);
            Ok(Token(100))
        };
        cache.get_or_verify("a", 1, &v, verify).unwrap();
        cache.get_or_verify("a", 1, &v, verify).unwrap();
        assert_eq!(calls.get(), 1);
        // The bundles changed: verified again, with the new ones.
        cache.get_or_verify("a", 2, &v, verify).unwrap();
        assert_eq!((calls.get(), cache.len()), (2, 1));
        // A request still holding the old bundles neither hits nor fills the cache, so
        // what it verified cannot outlive the change.
        cache.get_or_verify("b", 1, &v, verify).unwrap();
        cache.get_or_verify("a", 1, &v, verify).unwrap();
        assert_eq!((calls.get(), cache.len()), (4, 1));
        cache.get_or_verify("a", 2, &v, verify).unwrap();
        assert_eq!(calls.get(), 4);
    }
}
