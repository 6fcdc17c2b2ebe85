//! A bounded cache of already-verified tokens, consulted before signature verification.
//!
//! RS256/ES256 verification costs hundreds of microseconds per request while clients
//! resend the same token for its whole lifetime. The cache is keyed by the token itself
//! (as Envoy's JWT cache is), so a hit requires presenting exactly the verified bytes:
//! the map's hash only finds the bucket and the full token is compared, so no hash
//! collision can borrow another caller's entry, and no cryptographic digest is computed
//! per request (sha256 of an 800-byte token was the largest single cost of a cached
//! request, see README *Benchmarks*). Each entry remembers the
//! token's `exp` (+ leeway), which is enforced on every hit, and the generation of the
//! key set that verified it, so a key rotated out of a remote JWKS stops verifying cached
//! tokens at the same refresh that removes it. It lives inside the
//! `Authenticator`, so a config reload (key removed, issuer changed) drops it entirely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::principal::Principal;

struct Entry {
    /// Shared, not copied, with every request that presents the token: the decision
    /// layer recognises the same caller by this allocation (see
    /// `decision::callers`).
    principal: Arc<Principal>,
    /// Unix seconds after which the entry must not be used (`exp` + leeway).
    usable_until: u64,
    /// The key set generation that verified the token (see `jwt::LOCAL_GENERATION`);
    /// the caller refuses the entry once that set no longer serves.
    generation: u64,
}

pub(crate) struct VerifiedTokenCache {
    capacity: usize,
    /// foldhash, not SipHash: only verified tokens are inserted, so a client cannot fill
    /// the map with keys chosen to collide, and the full token is compared on every hit.
    entries: Mutex<HashMap<Box<str>, Entry, foldhash::fast::RandomState>>,
}

impl VerifiedTokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        VerifiedTokenCache {
            capacity,
            entries: Mutex::new(HashMap::default()),
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(crate) fn get(&self, token: &str, now: u64) -> Option<(Arc<Principal>, u64)> {
        // A poisoned lock only means another thread panicked mid-insert; treating it as
        // a miss falls back to full verification, which is always correct.
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(token)?;
        (now <= entry.usable_until).then(|| (entry.principal.clone(), entry.generation))
    }

    pub(crate) fn insert(
        &self,
        token: &str,
        principal: &Arc<Principal>,
        usable_until: u64,
        now: u64,
        generation: u64,
    ) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            entries.retain(|_, entry| entry.usable_until >= now);
            // Still full of live tokens: start over rather than track recency; a burst
            // of misses costs one verification each, never a wrong answer.
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            token.into(),
            Entry {
                principal: principal.clone(),
                usable_until,
                generation,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let cache = VerifiedTokenCache::new(2);
        let principal = Arc::new(Principal::anonymous(vec![]));
        cache.insert("one", &principal, 100, 50, 0);
        assert!(cache.get("one", 100).is_some());
        assert!(cache.get("one", 101).is_none());
        assert!(cache.get("two", 50).is_none());
        cache.insert("two", &principal, 200, 50, 0);
        cache.insert("three", &principal, 200, 150, 0);
        // [1] had expired at 150 and was evicted; [2] and [3] are live.
        assert!(cache.get("one", 60).is_none());
        assert!(cache.get("two", 150).is_some());
        assert!(cache.get("three", 150).is_some());
        cache.insert("four", &principal, 300, 150, 0);
        let live = ["two", "three", "four"]
            .iter()
            .filter(|token| cache.get(token, 150).is_some())
            .count();
        assert!(live <= 2);
        assert!(cache.get("four", 150).is_some());
    }
}
