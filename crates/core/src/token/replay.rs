//! A bounded replay cache for one-time proofs (WPT `jti`, HTTP-signature `nonce`).
//!
//! Entries are scoped per sender (the workload ID that signed the proof, SPECS §4 step 8)
//! and kept until the proof expires. When the cache is full of unexpired entries it
//! refuses new proofs instead of forgetting old ones: forgetting would let an attacker
//! flush the cache and replay (fail closed). Size it for request rate × proof lifetime.

use std::collections::HashMap;
use std::sync::Mutex;

/// A thread-safe, bounded set of seen `(sender, jti)` pairs.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// SHA-256(sender ‖ 0 ‖ jti) → the proof's `exp` (plus leeway).
    seen: HashMap<[u8; 32], i64>,
    /// No sweep before this time, so a full cache costs one O(n) sweep per second at most.
    next_sweep: i64,
}

/// Why a proof was refused by the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The pair was seen before and has not expired.
    Replayed,
    /// The cache holds `capacity` unexpired entries.
    Full,
}

impl ReplayCache {
    /// A cache holding at most `capacity` unexpired proofs.
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records `(sender, jti)` until `expires_at`, or refuses it if already recorded.
    pub fn check_and_insert(
        &self,
        sender: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        let mut input = Vec::with_capacity(sender.len() + 1 + jti.len());
        input.extend_from_slice(sender.as_bytes());
        input.push(0);
        input.extend_from_slice(jti.as_bytes());
        let key = crate::digest::sha256(&input);
        // A poisoned lock only means another thread panicked mid-insert; the map is
        // still a valid set of seen proofs, so keep using it.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(exp) = inner.seen.get(&key) {
            if *exp > now {
                return Err(ReplayError::Replayed);
            }
        } else if inner.seen.len() >= self.capacity {
            if now >= inner.next_sweep {
                inner.seen.retain(|_, exp| *exp > now);
                inner.next_sweep = now.saturating_add(1);
            }
            if inner.seen.len() >= self.capacity {
                return Err(ReplayError::Full);
            }
        }
        inner.seen.insert(key, expires_at);
        Ok(())
    }

    /// How many proofs are recorded (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seen
            .len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_refused() {
        let cache = ReplayCache::new(10);
        assert_eq!(cache.check_and_insert("a", "j", 100, 0), Ok(()));
        assert_eq!(
            cache.check_and_insert("a", "j", 100, 1),
            Err(ReplayError::Replayed)
        );
    }

    #[test]
    fn same_jti_from_another_sender_is_distinct() {
        let cache = ReplayCache::new(10);
        cache.check_and_insert("a", "j", 100, 0).unwrap();
        assert_eq!(cache.check_and_insert("b", "j", 100, 0), Ok(()));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        cache.check_and_insert("ab", "c", 100, 0).unwrap();
        assert_eq!(cache.check_and_insert("a", "bc", 100, 0), Ok(()));
    }

    #[test]
    fn expired_entry_may_be_reused() {
        let cache = ReplayCache::new(10);
        cache.check_and_insert("a", "j", 100, 0).unwrap();
        assert_eq!(cache.check_and_insert("a", "j", 200, 100), Ok(()));
    }

    #[test]
    fn full_cache_refuses_rather_than_forgets() {
        let cache = ReplayCache::new(2);
        cache.check_and_insert("a", "1", 100, 0).unwrap();
        cache.check_and_insert("a", "2", 100, 0).unwrap();
        assert_eq!(
            cache.check_and_insert("a", "3", 100, 0),
            Err(ReplayError::Full)
        );
        // The old entries are still remembered.
        assert_eq!(
            cache.check_and_insert("a", "1", 100, 0),
            Err(ReplayError::Replayed)
        );
    }

    #[test]
    fn full_cache_sweeps_expired_entries() {
        let cache = ReplayCache::new(2);
        cache.check_and_insert("a", "1", 10, 0).unwrap();
        cache.check_and_insert("a", "2", 10, 0).unwrap();
        assert_eq!(cache.check_and_insert("a", "3", 100, 20), Ok(()));
        assert_eq!(cache.len(), 1);
    }
}
