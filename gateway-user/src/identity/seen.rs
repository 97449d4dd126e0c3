//! Signatures already verified: a token that logs in again (a client that connects per
//! transaction, a pool reconnecting) is not put through RSA or ECDSA again until it expires.
//!
//! Only the signature check is skipped, and only for the same token bytes (by SHA-256) checked
//! with the same key: the header, the provider, the key lookup (so a key removed from the JWKS
//! at a refresh stops a cached token too) and every claim, expiry included, are checked again at
//! each login, and revocations are the core's, after verification. One cache per [`Verifier`],
//! which a policy reload replaces: a change of providers starts it empty.
//!
//! [`Verifier`]: super::Verifier

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use sha2::{Digest, Sha256};

use super::jwks::VerifyKey;

/// Tokens whose signature is remembered; the least recently used go first.
pub(crate) const CAPACITY: usize = 4_096;

pub(crate) type TokenHash = [u8; 32];

pub(crate) fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    /// The key that verified it: held, so its address is not reused while the entry lives.
    key: Arc<VerifyKey>,
    /// The token's `exp` (seconds since the epoch): no use for it after that.
    exp: i64,
}

pub(crate) struct Seen {
    entries: Mutex<lru::LruCache<TokenHash, Entry>>,
}

impl Seen {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Seen {
            entries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// Whether the token hashed to `token` had its signature verified by this very `key`
    /// before, and has not expired at `now`.
    pub(crate) fn verified(&self, token: &TokenHash, key: &Arc<VerifyKey>, now: i64) -> bool {
        let mut entries = self.lock();
        match entries.get(token) {
            Some(e) if now < e.exp && Arc::ptr_eq(&e.key, key) => true,
            Some(_) => {
                entries.pop(token);
                false
            }
            None => false,
        }
    }

    /// Remembers a verified signature until `exp`.
    pub(crate) fn remember(&self, token: TokenHash, key: Arc<VerifyKey>, exp: i64) {
        self.lock().put(token, Entry { key, exp });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<TokenHash, Entry>> {
        // Nothing panics while the lock is held, but a poisoned cache is still a valid cache.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
