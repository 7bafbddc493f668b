//! A bounded replay cache for one-time proofs (WPT `jti`, HTTP-signature `nonce`).
//!
//! Entries are scoped per sender (the workload ID that signed the proof, SPECS §4 step 8)
//! and kept until the proof expires. When the cache is full of unexpired entries it
//! refuses new proofs instead of forgetting old ones: forgetting would let an attacker
//! flush the cache and replay (fail closed). Size it for request rate × proof lifetime.
//!
//! So that one sender cannot fill it and lock every other out, a sender that holds a
//! quarter of the capacity (at least two entries) is refused once the cache is half full:
//! one busy sender alone can use half the capacity (the rest stays for the others), and
//! it takes several identities acting together to exhaust the cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Mutex;

/// A thread-safe, bounded set of seen `(sender, jti)` pairs.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// SHA-256(sender ‖ 0 ‖ jti) → the proof's `exp` (plus leeway) and its sender's key.
    seen: HashMap<[u8; 32], (i64, u64)>,
    /// Per sender's key, how many entries of `seen` are its.
    per_sender: HashMap<u64, usize>,
    /// No sweep before this time, so a full cache costs one O(n) sweep per second at most.
    next_sweep: i64,
}

impl Inner {
    /// Forgets the expired entries, at most once a second.
    fn sweep(&mut self, now: i64) {
        if now < self.next_sweep {
            return;
        }
        let per_sender = &mut self.per_sender;
        self.seen.retain(|_, (exp, sender)| {
            let keep = *exp > now;
            if !keep && let Some(count) = per_sender.get_mut(sender) {
                *count = count.saturating_sub(1);
            }
            keep
        });
        per_sender.retain(|_, count| *count > 0);
        self.next_sweep = now.saturating_add(1);
    }

    /// Whether one more entry of `sender` must be refused: the cache is full, or half
    /// full and `sender` holds a quarter of it (at least two entries).
    fn refuses(&self, sender: u64, capacity: usize) -> bool {
        let held = self.per_sender.get(&sender).copied().unwrap_or(0);
        self.seen.len() >= capacity
            || (self.seen.len() >= capacity.div_ceil(2) && held >= (capacity / 4).max(2))
    }
}

/// Why a proof was refused by the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The pair was seen before and has not expired.
    Replayed,
    /// The cache holds `capacity` unexpired entries, or this sender its share of them.
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
        let sender = BuildHasherDefault::<DefaultHasher>::default().hash_one(sender);
        // A poisoned lock only means another thread panicked mid-insert; the map is
        // still a valid set of seen proofs, so keep using it.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((exp, _)) = inner.seen.get(&key) {
            if *exp > now {
                return Err(ReplayError::Replayed);
            }
            // The same proof, expired: renewed in place, its sender's count unchanged.
            inner.seen.insert(key, (expires_at, sender));
            return Ok(());
        }
        if inner.refuses(sender, self.capacity) {
            inner.sweep(now);
            if inner.refuses(sender, self.capacity) {
                return Err(ReplayError::Full);
            }
        }
        inner.seen.insert(key, (expires_at, sender));
        *inner.per_sender.entry(sender).or_insert(0) += 1;
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
        cache.check_and_insert("b", "2", 100, 0).unwrap();
        assert_eq!(
            cache.check_and_insert("c", "3", 100, 0),
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
        cache.check_and_insert("b", "2", 10, 0).unwrap();
        assert_eq!(cache.check_and_insert("a", "3", 100, 20), Ok(()));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_lone_sender_of_a_small_cache_still_gets_two_entries() {
        let cache = ReplayCache::new(2);
        cache.check_and_insert("a", "1", 100, 0).unwrap();
        assert_eq!(cache.check_and_insert("a", "2", 100, 0), Ok(()));
        assert_eq!(
            cache.check_and_insert("a", "3", 100, 0),
            Err(ReplayError::Full)
        );
    }

    #[test]
    fn one_sender_cannot_fill_the_cache_and_lock_the_others_out() {
        let cache = ReplayCache::new(8);
        // While there is room, a busy sender is not limited: up to half the cache.
        let mut taken = 0;
        while cache
            .check_and_insert("greedy", &taken.to_string(), 100, 0)
            .is_ok()
        {
            taken += 1;
        }
        assert_eq!(taken, 4);
        // The others still get in, each up to its quarter while the cache is pressed.
        for other in ["b", "c"] {
            for jti in ["1", "2"] {
                assert_eq!(cache.check_and_insert(other, jti, 100, 0), Ok(()));
            }
            assert_eq!(
                cache.check_and_insert(other, "3", 100, 0),
                Err(ReplayError::Full)
            );
        }
        // Once the greedy sender's proofs expire, the sweep gives its share back.
        let cache = ReplayCache::new(8);
        for jti in 0..4 {
            cache
                .check_and_insert("greedy", &jti.to_string(), 10, 0)
                .unwrap();
        }
        assert!(cache.check_and_insert("greedy", "x", 100, 5).is_err());
        assert_eq!(cache.check_and_insert("greedy", "x", 100, 20), Ok(()));
        assert_eq!(cache.len(), 1);
    }
}
