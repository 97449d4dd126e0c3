//! JWKS parsing (signing keys only) and the per-provider key cache with a rate-limited,
//! single-flight refresh.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// At most one JWKS refresh per provider per this interval.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Cached keys older than this are refreshed on the next verification (subject to the rate
/// limit), so removed (revoked) keys stop being accepted; on failure the old keys stay in use.
pub(crate) const MAX_KEY_AGE: Duration = Duration::from_secs(300);
/// Keys that could not be refreshed for this long are dropped: every token of the provider is
/// then refused (`jwks_unavailable`) rather than a key the provider may have revoked accepted.
pub(crate) const KEYS_EXPIRE_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub(crate) fn supports(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub key: DecodingKey,
}

pub(crate) struct KeySet {
    pub keys: Vec<Arc<VerifyKey>>,
}

pub(crate) enum Selection {
    Found(Arc<VerifyKey>),
    UnknownKid,
    MissingKid(usize),
}

impl KeySet {
    /// Parses a JWKS document, keeping the public signing keys it can use and skipping (with a
    /// warning) the rest: symmetric keys, encryption keys, unsupported curves.
    pub(crate) fn parse(provider: &str, bytes: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            match parse_key(value) {
                Ok(k) => keys.push(Arc::new(k)),
                Err(why) => tracing::warn!(provider, index = i, "JWKS key skipped: {why}"),
            }
        }
        if keys.is_empty() {
            return Err("JWKS has no usable signing keys".into());
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn select(&self, kid: Option<&str>) -> Selection {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| Selection::Found(Arc::clone(k)))
                .unwrap_or(Selection::UnknownKid),
            None => match self.keys.as_slice() {
                [only] => Selection::Found(Arc::clone(only)),
                keys => Selection::MissingKid(keys.len()),
            },
        }
    }
}

fn parse_key(value: serde_json::Value) -> Result<VerifyKey, String> {
    let alg = match value.get("alg") {
        None => None,
        Some(serde_json::Value::String(a)) => Some(
            a.parse::<Algorithm>()
                .map_err(|_| format!("unsupported key alg {a:?}"))?,
        ),
        Some(_) => return Err("key alg is not a string".into()),
    };
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("invalid JWK: {e}"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signature key (use)".into()),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|o| matches!(o, KeyOperations::Verify)) {
            return Err("key_ops does not include verify".into());
        }
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            ref c => return Err(format!("unsupported EC curve {c:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            ref c => return Err(format!("unsupported OKP curve {c:?}")),
        },
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key (oct) refused".into()),
        _ => return Err("unsupported key type".into()),
    };
    if let Some(a) = alg {
        if !kind.supports(a) {
            return Err(format!("key alg {a:?} does not match its key type"));
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key material: {e}"))?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        kind,
        key,
    })
}

/// One published state of the cache. `generation` increases on every refresh attempt.
pub(crate) struct Snapshot {
    pub generation: u64,
    pub keys: Option<Arc<KeySet>>,
    pub fetched_at: Option<Instant>,
    pub last_error: Option<String>,
}

impl Snapshot {
    pub(crate) fn is_stale(&self) -> bool {
        match self.fetched_at {
            None => true,
            Some(t) => t.elapsed() >= MAX_KEY_AGE,
        }
    }
}

pub(crate) struct JwksCache {
    current: RwLock<Arc<Snapshot>>,
    /// Held for the duration of a refresh: concurrent callers queue here and then find the
    /// generation moved on, so they share the one fetch. Holds the time of the last attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    pub(crate) min_interval: Duration,
    pub(crate) keys_expire_after: Duration,
}

impl JwksCache {
    pub(crate) fn new() -> Self {
        JwksCache {
            current: RwLock::new(Arc::new(Snapshot {
                generation: 0,
                keys: None,
                fetched_at: None,
                last_error: None,
            })),
            refresh: tokio::sync::Mutex::new(None),
            min_interval: MIN_REFRESH_INTERVAL,
            keys_expire_after: KEYS_EXPIRE_AFTER,
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Refreshes the keys unless someone else already did since the caller saw generation
    /// `seen`, or the last attempt was less than `min_interval` ago. Returns the snapshot to use.
    pub(crate) async fn refresh<F, Fut>(&self, seen: u64, load: F) -> Arc<Snapshot>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<KeySet, String>>,
    {
        let last_attempt = self.refresh.lock().await;
        self.refresh_locked(last_attempt, seen, load).await
    }

    /// Like [`Self::refresh`], but when a refresh is already in flight returns the current
    /// snapshot instead of waiting for it: for callers that hold usable (if old) keys.
    pub(crate) async fn refresh_if_idle<F, Fut>(&self, seen: u64, load: F) -> Arc<Snapshot>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<KeySet, String>>,
    {
        match self.refresh.try_lock() {
            Ok(last_attempt) => self.refresh_locked(last_attempt, seen, load).await,
            Err(_) => self.snapshot(),
        }
    }

    async fn refresh_locked<F, Fut>(
        &self,
        mut last_attempt: tokio::sync::MutexGuard<'_, Option<Instant>>,
        seen: u64,
        load: F,
    ) -> Arc<Snapshot>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<KeySet, String>>,
    {
        let cur = self.snapshot();
        if cur.generation != seen {
            return cur;
        }
        if last_attempt.is_some_and(|t| t.elapsed() < self.min_interval) {
            return cur;
        }
        *last_attempt = Some(Instant::now());
        let next = match load().await {
            Ok(keys) => Snapshot {
                generation: cur.generation + 1,
                keys: Some(Arc::new(keys)),
                fetched_at: Some(Instant::now()),
                last_error: None,
            },
            Err(e) => {
                let expired = cur
                    .fetched_at
                    .is_some_and(|t| t.elapsed() >= self.keys_expire_after);
                Snapshot {
                    generation: cur.generation + 1,
                    keys: if expired { None } else { cur.keys.clone() },
                    fetched_at: cur.fetched_at,
                    last_error: Some(e),
                }
            }
        };
        let next = Arc::new(next);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&next);
        next
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    const JWKS: &[u8] = include_bytes!("../../../tests/fixtures/test-jwks.json");

    #[tokio::test]
    async fn unrefreshable_keys_are_dropped_once_too_old() {
        assert_eq!(KEYS_EXPIRE_AFTER, Duration::from_secs(3600));
        let mut cache = JwksCache::new();
        cache.min_interval = Duration::ZERO;
        cache.keys_expire_after = Duration::from_secs(2);
        let s = cache
            .refresh(0, || async { KeySet::parse("t", JWKS) })
            .await;
        assert!(s.keys.is_some());
        // A failed refresh soon after keeps the keys.
        let s = cache
            .refresh(s.generation, || async { Err("down".to_string()) })
            .await;
        assert!(s.keys.is_some(), "recent keys survive a failed refresh");
        // The same keys, fetched longer ago than the limit: a failed refresh drops them.
        let old = Instant::now()
            .checked_sub(Duration::from_secs(3))
            .expect("monotonic clock is older than 3 s");
        *cache.current.write().unwrap() = Arc::new(Snapshot {
            generation: s.generation,
            keys: s.keys.clone(),
            fetched_at: Some(old),
            last_error: None,
        });
        let s = cache
            .refresh(s.generation, || async { Err("down".to_string()) })
            .await;
        assert!(
            s.keys.is_none(),
            "stale keys must not outlive failed refreshes"
        );
    }
}
