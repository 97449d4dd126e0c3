//! The classifier cache: one verdict per exact query text, shared by all sessions.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use super::{classify, Classified};

/// Longer query strings are classified but not kept in the cache: a cache entry holds its key,
/// so without this bound a full cache could hold capacity × 1 MiB of query text (with the
/// gateway's 10 000 entries, 4 KiB keeps it under 40 MiB). Longer texts are mostly bulk
/// literals, which rarely repeat exactly anyway.
pub(super) const MAX_CACHED_LEN: usize = 4 * 1024;

/// Thread-safe cache by exact query text, shared by all sessions: agents repeat the same
/// statements, and parsing is the expensive part.
pub struct Classifier {
    cache: Mutex<lru::LruCache<String, Arc<Classified>>>,
}

impl Classifier {
    /// `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Classifier {
            cache: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    pub fn classify(&self, sql: &str) -> Arc<Classified> {
        if sql.len() > MAX_CACHED_LEN {
            return Arc::new(classify(sql));
        }
        if let Some(hit) = self.lock().get(sql) {
            return Arc::clone(hit);
        }
        // Parse without holding the lock: other sessions should not wait on this query.
        let fresh = Arc::new(classify(sql));
        let mut cache = self.lock();
        // Two sessions may have raced on the same text; keep (and hand out) the first entry so
        // every caller sees one Arc per text.
        if let Some(existing) = cache.get(sql) {
            return Arc::clone(existing);
        }
        cache.put(sql.to_owned(), Arc::clone(&fresh));
        fresh
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, Arc<Classified>>> {
        // Nothing panics while the lock is held, but a poisoned cache is still a valid cache.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
