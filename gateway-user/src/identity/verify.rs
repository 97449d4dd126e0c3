//! The [`Verifier`]: configuration checks, provider selection, key lookup with refresh, signature
//! verification and claim validation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use jsonwebtoken::Algorithm;

use super::discovery;
use super::error::{FetchError, IdentityError, Malformed, Part, TokenError};
use super::jwks::{JwksCache, KeySet, Selection, VerifyKey};
use super::seen::{self, Seen};
use super::{claims, token, JwksSource, Principal, ProviderConfig};
use crate::net::http::{self, HttpClient, HttpUrl};
use crate::net::{OwnSockets, SocketFactory};

enum Source {
    File(PathBuf),
    Url(HttpUrl),
    Discovery(HttpUrl),
}

struct Provider {
    cfg: ProviderConfig,
    source: Source,
    tls: Option<Arc<rustls::ClientConfig>>,
    cache: JwksCache,
    /// `jwks_uri` learnt from discovery; forgotten when fetching it fails.
    jwks_uri: Mutex<Option<HttpUrl>>,
}

/// Verifies OIDC JWTs against a fixed set of providers. Cheap to share behind an `Arc`.
pub struct Verifier {
    /// Shared with the verifier of the next policy when a provider's settings are unchanged, so
    /// that a reload keeps its key cache.
    providers: Vec<Arc<Provider>>,
    by_issuer: HashMap<String, usize>,
    /// Without registered own sockets (`with_own_sockets`) it refuses to open any: a fetch
    /// fails closed.
    http: HttpClient,
    /// Signatures verified under these providers (a reload's verifier starts empty).
    seen: Seen,
    /// Signatures put through the crypto (the tests tell a cached check from a real one).
    #[cfg(test)]
    pub(super) signature_checks: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "providers",
                &self
                    .providers
                    .iter()
                    .map(|p| &p.cfg.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn check_config(cfg: &ProviderConfig) -> Result<(), IdentityError> {
    let provider = || cfg.name.clone();
    if cfg.name.trim().is_empty() {
        return Err(IdentityError::EmptyName);
    }
    if cfg.issuer.is_empty() {
        return Err(IdentityError::EmptyIssuer {
            provider: provider(),
        });
    }
    if cfg.audiences.is_empty() {
        return Err(IdentityError::EmptyAudiences {
            provider: provider(),
        });
    }
    if cfg.audiences.iter().any(String::is_empty) {
        return Err(IdentityError::EmptyAudience {
            provider: provider(),
        });
    }
    if cfg.algorithms.is_empty() {
        return Err(IdentityError::NoAlgorithms {
            provider: provider(),
        });
    }
    if let Some(alg) = cfg.algorithms.iter().find(|a| !is_asymmetric(**a)) {
        return Err(IdentityError::SymmetricAlgorithm {
            provider: provider(),
            alg: *alg,
        });
    }
    if cfg.groups_claim.is_empty() {
        return Err(IdentityError::EmptyGroupsClaim {
            provider: provider(),
        });
    }
    if cfg.max_lifetime.as_secs() == 0 {
        return Err(IdentityError::ZeroMaxLifetime {
            provider: provider(),
        });
    }
    Ok(())
}

impl Provider {
    fn new(cfg: ProviderConfig) -> Result<Self, IdentityError> {
        check_config(&cfg)?;
        let url_err = |what: &'static str, url: &str, source: FetchError| IdentityError::Url {
            provider: cfg.name.clone(),
            what,
            url: url.to_string(),
            source,
        };
        let source = match &cfg.jwks {
            JwksSource::File(p) => Source::File(p.clone()),
            JwksSource::Url(u) => {
                Source::Url(HttpUrl::parse(u).map_err(|e| url_err("JWKS", u, e.into()))?)
            }
            JwksSource::Discovery => {
                let u = discovery::discovery_url(&cfg.issuer);
                Source::Discovery(
                    HttpUrl::parse(&u).map_err(|e| url_err("discovery", &u, e.into()))?,
                )
            }
        };
        let tls = match source {
            Source::File(_) => None,
            Source::Url(_) | Source::Discovery(_) => Some(Arc::new(
                http::tls_config(cfg.ca_file.as_deref()).map_err(|e| match e {
                    http::TlsSetupError::CaFile(detail) => IdentityError::CaFile {
                        provider: cfg.name.clone(),
                        path: cfg.ca_file.clone().unwrap_or_default(),
                        detail,
                    },
                    http::TlsSetupError::Rustls(source) => IdentityError::Tls {
                        provider: cfg.name.clone(),
                        source,
                    },
                })?,
            )),
        };
        Ok(Provider {
            cfg,
            source,
            tls,
            cache: JwksCache::new(),
            jwks_uri: Mutex::new(None),
        })
    }

    async fn load(&self, net: &HttpClient) -> Result<KeySet, String> {
        let body = match &self.source {
            Source::File(path) => read_file(path, net.max_body).await,
            Source::Url(url) => net.get(url, self.tls.as_ref()).await.map_err(Into::into),
            Source::Discovery(doc_url) => self.load_discovered(doc_url, net).await,
        }
        .map_err(|e| e.to_string())?;
        KeySet::parse(&self.cfg.name, &body)
    }

    async fn load_discovered(
        &self,
        doc_url: &HttpUrl,
        net: &HttpClient,
    ) -> Result<hyper::body::Bytes, FetchError> {
        let known = self
            .jwks_uri
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let jwks_url = match known {
            Some(u) => u,
            None => {
                let doc = net.get(doc_url, self.tls.as_ref()).await?;
                let u = discovery::parse_document(&self.cfg.issuer, &doc)?;
                *self.jwks_uri.lock().unwrap_or_else(|e| e.into_inner()) = Some(u.clone());
                u
            }
        };
        let result = net.get(&jwks_url, self.tls.as_ref()).await;
        if result.is_err() {
            *self.jwks_uri.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok(result?)
    }

    /// The key to verify a token with header `alg`/`kid`, refreshing the JWKS at most once.
    async fn key_for(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        net: &HttpClient,
    ) -> Result<Arc<VerifyKey>, TokenError> {
        let mut snap = self.cache.snapshot();
        let mut refreshed = false;
        if snap.keys.is_none() {
            snap = self.cache.refresh(snap.generation, || self.load(net)).await;
            refreshed = true;
        } else if snap.is_stale() {
            // Old keys still work while someone else refreshes them.
            snap = self
                .cache
                .refresh_if_idle(snap.generation, || self.load(net))
                .await;
        }
        loop {
            let Some(keys) = snap.keys.clone() else {
                return Err(TokenError::JwksUnavailable {
                    provider: self.cfg.name.clone(),
                    detail: snap
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "not fetched yet (refresh rate-limited)".into()),
                });
            };
            match keys.select(kid) {
                Selection::Found(key) => {
                    let mismatch = |detail| TokenError::KeyAlgMismatch {
                        provider: self.cfg.name.clone(),
                        kid: key.kid.clone().unwrap_or_default(),
                        alg,
                        detail,
                    };
                    if !key.kind.supports(alg) {
                        return Err(mismatch("key type does not match the algorithm"));
                    }
                    if key.alg.is_some_and(|a| a != alg) {
                        return Err(mismatch("the key's alg differs from the token's"));
                    }
                    return Ok(key);
                }
                Selection::MissingKid(n) => {
                    return Err(TokenError::MissingKid {
                        provider: self.cfg.name.clone(),
                        keys: n,
                    })
                }
                Selection::UnknownKid if !refreshed => {
                    snap = self.cache.refresh(snap.generation, || self.load(net)).await;
                    refreshed = true;
                }
                Selection::UnknownKid => {
                    return Err(TokenError::UnknownKid {
                        provider: self.cfg.name.clone(),
                        kid: token::quote(kid.unwrap_or_default()),
                    })
                }
            }
        }
    }
}

async fn read_file(path: &PathBuf, max: usize) -> Result<hyper::body::Bytes, FetchError> {
    let file_err = |source| FetchError::File {
        path: path.clone(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(file_err)?;
    if meta.len() > max as u64 {
        return Err(FetchError::TooLarge(max));
    }
    let bytes = tokio::fs::read(path).await.map_err(file_err)?;
    if bytes.len() > max {
        return Err(FetchError::TooLarge(max));
    }
    Ok(bytes.into())
}

impl Verifier {
    /// Validates the provider configurations: non-empty names, issuers and audiences, unique
    /// names and issuers, asymmetric algorithms only, usable JWKS/discovery URLs (https, or
    /// http to loopback), readable CA files.
    pub fn new(providers: Vec<ProviderConfig>) -> Result<Self, IdentityError> {
        Self::build(providers, &[])
    }

    /// A verifier for `providers` that keeps the key caches of this one's providers whose
    /// settings did not change.
    pub fn renewed(&self, providers: Vec<ProviderConfig>) -> Result<Self, IdentityError> {
        let mut v = Self::build(providers, &self.providers)?;
        v.http = self.http.clone();
        Ok(v)
    }

    fn build(
        providers: Vec<ProviderConfig>,
        previous: &[Arc<Provider>],
    ) -> Result<Self, IdentityError> {
        let mut by_issuer: HashMap<String, usize> = HashMap::new();
        let mut names: HashMap<String, ()> = HashMap::new();
        let mut built: Vec<Arc<Provider>> = Vec::with_capacity(providers.len());
        for cfg in providers {
            let p = match previous.iter().find(|p| p.cfg == cfg) {
                Some(p) => p.clone(),
                None => Arc::new(Provider::new(cfg)?),
            };
            if names.insert(p.cfg.name.clone(), ()).is_some() {
                return Err(IdentityError::DuplicateName(p.cfg.name.clone()));
            }
            if let Some(&i) = by_issuer.get(&p.cfg.issuer) {
                let first = &built[i];
                return Err(IdentityError::DuplicateIssuer {
                    issuer: p.cfg.issuer.clone(),
                    first: first.cfg.name.clone(),
                    second: p.cfg.name.clone(),
                });
            }
            by_issuer.insert(p.cfg.issuer.clone(), built.len());
            built.push(p);
        }
        Ok(Verifier {
            providers: built,
            by_issuer,
            http: HttpClient::new(Arc::new(SocketFactory::new(Arc::new(Unregistered)))),
            seen: Seen::new(seen::CAPACITY),
            #[cfg(test)]
            signature_checks: Default::default(),
        })
    }

    /// Registers every socket the verifier opens (JWKS and discovery fetches) as the gateway's
    /// own, so that capture leaves them alone.
    pub fn with_own_sockets(mut self, own: Arc<dyn OwnSockets>) -> Self {
        self.http = HttpClient::new(Arc::new(SocketFactory::new(own)));
        self
    }

    #[cfg(test)]
    pub(crate) fn with_min_refresh_interval(mut self, interval: std::time::Duration) -> Self {
        for p in &mut self.providers {
            if let Some(p) = Arc::get_mut(p) {
                p.cache.min_interval = interval;
            }
        }
        self
    }

    #[cfg(test)]
    pub(super) fn configs(&self) -> Vec<ProviderConfig> {
        self.providers.iter().map(|p| p.cfg.clone()).collect()
    }

    /// Every algorithm some provider accepts, each once, in the providers' order.
    fn all_algorithms(&self) -> Vec<Algorithm> {
        let mut all = Vec::new();
        for a in self.providers.iter().flat_map(|p| &p.cfg.algorithms) {
            if !all.contains(a) {
                all.push(*a);
            }
        }
        all
    }

    /// Verifies a compact JWS and returns the principal it names.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let verified = self.verify_token(token).await;
        crate::telemetry::metrics::with(|m| {
            m.token_verified(verified.as_ref().map(|_| ()).map_err(TokenError::reason))
        });
        verified
    }

    async fn verify_token(&self, token: &str) -> Result<Principal, TokenError> {
        let parsed = token::parse(token).map_err(|e| match e {
            // Refused before the provider is known: what any provider would have accepted.
            TokenError::AlgNotAllowed {
                alg,
                provider: None,
                ..
            } => TokenError::AlgNotAllowed {
                alg,
                provider: None,
                allowed: self.all_algorithms(),
            },
            e => e,
        })?;
        let provider = self
            .by_issuer
            .get(&parsed.iss)
            .and_then(|&i| self.providers.get(i))
            .ok_or_else(|| TokenError::UnknownIssuer(token::quote(&parsed.iss)))?;
        if !provider.cfg.algorithms.contains(&parsed.alg) {
            return Err(TokenError::AlgNotAllowed {
                alg: format!("{:?}", parsed.alg),
                provider: Some(provider.cfg.name.clone()),
                allowed: provider.cfg.algorithms.clone(),
            });
        }
        let key = provider
            .key_for(parsed.alg, parsed.kid.as_deref(), &self.http)
            .await?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        // The signature is the costly part (RSA: a modular exponentiation); the same token
        // checked with the same key before need not be checked again. Everything else is.
        let digest = seen::hash(token);
        let seen_before = self.seen.verified(&digest, &key, now);
        if !seen_before {
            #[cfg(test)]
            self.signature_checks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            verify_signature(&parsed, &key)?;
        }
        let principal = claims::validate(&parsed.claims, &provider.cfg, now)?;
        if !seen_before {
            let exp = principal
                .expires_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.seen.remember(digest, key, exp);
        }
        Ok(principal)
    }
}

fn verify_signature(parsed: &token::Parsed<'_>, key: &VerifyKey) -> Result<(), TokenError> {
    match jsonwebtoken::crypto::verify(
        parsed.signature,
        parsed.signing_input.as_bytes(),
        &key.key,
        parsed.alg,
    ) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TokenError::BadSignature),
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::Base64(_) => {
                Err(TokenError::Malformed(Malformed::NotBase64 {
                    part: Part::Signature,
                    detail: e.to_string(),
                }))
            }
            _ => Err(TokenError::BadSignature),
        },
    }
}

/// The registry of a verifier that was given none: every registration fails, so no socket is
/// opened (a verifier built only to check a configuration never fetches).
struct Unregistered;

impl OwnSockets for Unregistered {
    fn begin(&self, _cookie: u64) -> Result<(), crate::net::ExemptionError> {
        Err(crate::net::ExemptionError(
            "no registry of the gateway's own sockets was given to the verifier".into(),
        ))
    }
    fn end(&self, _cookie: u64) {}
}
