//! The classifier cache: one verdict per exact query text, or per shape (`shape`: the text with
//! its numbers left out) for the simple statements whose verdict no number can change; shared by
//! all sessions. It keeps what a text *is*, never what a policy decides about it: rules judge
//! the cached verdict afresh under the policy in force.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use super::{classify, shape::shape, Class, Classified};

/// Longer query strings are classified but not kept in the cache: a cache entry holds its key,
/// so without this bound a full cache could hold capacity × 1 MiB of query text (with the
/// gateway's 10 000 entries in each of its two maps, 4 KiB keeps them under 80 MiB). Longer
/// texts are mostly bulk literals, which rarely repeat exactly anyway.
pub(super) const MAX_CACHED_LEN: usize = 4 * 1024;

/// Thread-safe cache by exact query text, shared by all sessions: agents repeat the same
/// statements, and parsing is the expensive part.
pub struct Classifier {
    cache: Mutex<Cache>,
    /// By shape: a map of its own, so that a shape never meets an exact text that happens to
    /// read the same, and so that texts differing only in their numbers (each one new) do not
    /// push the exact texts out.
    shapes: Mutex<Cache>,
}

type Cache = lru::LruCache<String, Arc<Classified>>;

impl Classifier {
    /// `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Classifier {
            cache: Mutex::new(lru::LruCache::new(capacity)),
            shapes: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    pub fn classify(&self, sql: &str) -> Arc<Classified> {
        if sql.len() > MAX_CACHED_LEN {
            return Arc::new(classify(sql));
        }
        if let Some(hit) = lock(&self.cache).get(sql) {
            return Arc::clone(hit);
        }
        let shape = shape(sql);
        if let Some(hit) = shape
            .as_ref()
            .and_then(|k| lock(&self.shapes).get(k).cloned())
        {
            return hit;
        }
        // Parse without holding a lock: other sessions should not wait on this query.
        let fresh = Arc::new(classify(sql));
        let (mut cache, key) = match shape {
            // An Opaque verdict's note quotes the text (a parser's message names the token):
            // right for this text only.
            Some(key) if fresh.class != Class::Opaque => (lock(&self.shapes), key),
            _ => (lock(&self.cache), sql.to_owned()),
        };
        // Two sessions may have raced on the same text; keep (and hand out) the first entry so
        // every caller sees one Arc per text.
        if let Some(existing) = cache.get(&key) {
            return Arc::clone(existing);
        }
        cache.put(key, Arc::clone(&fresh));
        fresh
    }
}

fn lock(cache: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    // Nothing panics while the lock is held, but a poisoned cache is still a valid cache.
    cache.lock().unwrap_or_else(|e| e.into_inner())
}
