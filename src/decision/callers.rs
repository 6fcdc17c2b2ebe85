//! Stage 1 (identify), right after authentication: the caller as one policy snapshot sees
//! them, remembered for the next request that presents the same verified caller.
//!
//! Enrichment (the grants store's roles, teams and basic role, the policy's memberships)
//! and the policy subjects depend only on the authenticated principal and the snapshot,
//! yet built per request they were a copy of the principal, a dozen small strings and two
//! map lookups on every request. The verified-token cache and the authenticator hand out
//! one shared `Arc<Principal>` per verified token (and one for the anonymous caller), so a
//! request presenting a cached token brings the very allocation the previous one brought.
//! The memo lives inside the [`crate::snapshot::PolicySnapshot`] it was computed against,
//! so a new revision (a store write, a reload) starts with an empty memo and nothing stale
//! can be served from it.
//!
//! Identity is by allocation, never by content or hash: an entry holds its own clone of
//! the verified `Arc`, so while the entry exists no other principal can be allocated at
//! that address, and a lookup confirms [`Arc::ptr_eq`] before using the entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::principal::Principal;
use crate::proxy::headers::IdentityHeaderValues;

/// Entries per snapshot before the memo starts over (as the verified-token cache does: a
/// burst of new callers costs one enrichment each, never a wrong answer).
const CAPACITY: usize = 10_000;

/// A caller as the snapshot sees them: the enriched principal, its policy subjects and,
/// once a request for them is forwarded, the identity header values the upstream gets.
/// Nothing in it changes after it is built, so what is derived from it once stays true
/// for as long as the caller is remembered.
#[derive(Debug)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// `principal.subjects()`, computed once.
    pub subjects: Box<[String]>,
    upstream_identity: OnceLock<IdentityHeaderValues>,
}

impl Caller {
    pub fn new(principal: Arc<Principal>, subjects: Vec<String>) -> Arc<Caller> {
        Arc::new(Caller {
            principal,
            subjects: subjects.into_boxed_slice(),
            upstream_identity: OnceLock::new(),
        })
    }

    /// The principal's identity header values, encoded by the first request forwarded
    /// for this caller and reused by every later one.
    pub fn upstream_identity(&self) -> &IdentityHeaderValues {
        self.upstream_identity
            .get_or_init(|| IdentityHeaderValues::of(&self.principal))
    }
}

/// A caller as the snapshot sees them, shared by every request they make.
pub type EnrichedCaller = Arc<Caller>;

struct Entry {
    /// Keeps the verified principal's allocation alive, which makes its address a key no
    /// other principal can take while the entry exists.
    verified: Arc<Principal>,
    enriched: EnrichedCaller,
}

/// Enriched callers of one snapshot, by the address of their verified principal.
#[derive(Default)]
pub struct CallerMemo {
    entries: Mutex<HashMap<usize, Entry, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for CallerMemo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().map(|entries| entries.len()).ok();
        formatter
            .debug_struct("CallerMemo")
            .field("entries", &entries)
            .finish()
    }
}

impl CallerMemo {
    /// The enriched caller for `verified`: remembered when the principal is shared (a
    /// cached token's, the anonymous caller's), otherwise built by `enrich` every time —
    /// a principal only this request holds (an API key's, a service account's) would
    /// fill the memo with entries no later request can find.
    pub fn enriched(
        &self,
        verified: &Arc<Principal>,
        enrich: impl FnOnce() -> EnrichedCaller,
    ) -> EnrichedCaller {
        if Arc::strong_count(verified) < 2 {
            return enrich();
        }
        let key = Arc::as_ptr(verified) as usize;
        // A poisoned lock only means another thread panicked mid-insert: enrich afresh,
        // which is always correct.
        if let Ok(entries) = self.entries.lock()
            && let Some(entry) = entries.get(&key)
            && Arc::ptr_eq(&entry.verified, verified)
        {
            return entry.enriched.clone();
        }
        let enriched = enrich();
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(
                key,
                Entry {
                    verified: verified.clone(),
                    enriched: enriched.clone(),
                },
            );
        }
        enriched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enriched_as(name: &str) -> EnrichedCaller {
        let mut principal = Principal::anonymous(vec!["Public".into()]);
        principal.username = name.into();
        let subjects = principal.subjects();
        Caller::new(Arc::new(principal), subjects)
    }

    #[test]
    fn a_shared_caller_is_enriched_once_and_an_unshared_one_every_time() {
        let memo = CallerMemo::default();
        let shared = Arc::new(Principal::anonymous(vec!["Public".into()]));
        let _held_by_the_token_cache = shared.clone();
        let mut built = 0;
        for _ in 0..3 {
            let caller = memo.enriched(&shared, || {
                built += 1;
                enriched_as("first")
            });
            assert_eq!(caller.principal.username, "first");
        }
        assert_eq!(built, 1);

        let mut built = 0;
        for _ in 0..3 {
            let only_this_request = Arc::new(Principal::anonymous(vec!["Public".into()]));
            memo.enriched(&only_this_request, || {
                built += 1;
                enriched_as("fresh")
            });
        }
        assert_eq!(built, 3);
    }

    #[test]
    fn identity_header_values_are_kept_per_caller_and_snapshot() {
        let shared = Arc::new(Principal::anonymous(vec!["Public".into()]));
        let _held_by_the_token_cache = shared.clone();
        let memo = CallerMemo::default();
        let first = memo.enriched(&shared, || enriched_as("first"));
        let again = memo.enriched(&shared, || enriched_as("not used"));
        assert!(Arc::ptr_eq(&first, &again));
        assert!(std::ptr::eq(
            first.upstream_identity(),
            again.upstream_identity()
        ));
        // A new snapshot (a store write) starts a new memo: the same token's next request
        // is enriched, and encoded, afresh.
        let next_snapshot = CallerMemo::default();
        let after_write = next_snapshot.enriched(&shared, || enriched_as("second"));
        assert_eq!(after_write.principal.username, "second");
        assert!(!std::ptr::eq(
            first.upstream_identity(),
            after_write.upstream_identity()
        ));
    }

    #[test]
    fn another_principal_never_gets_a_remembered_enrichment() {
        let memo = CallerMemo::default();
        let alice = Arc::new(Principal::anonymous(vec!["Public".into()]));
        let _alice_cached = alice.clone();
        memo.enriched(&alice, || enriched_as("alice"));
        let bob = Arc::new(Principal::anonymous(vec!["Public".into()]));
        let _bob_cached = bob.clone();
        let caller = memo.enriched(&bob, || enriched_as("bob"));
        assert_eq!(caller.principal.username, "bob");
        let caller = memo.enriched(&alice, || enriched_as("not used"));
        assert_eq!(caller.principal.username, "alice");
    }
}
