//! Typed errors of the identity module: configuration errors, token refusals, and JWKS fetch
//! failures (the latter are folded into a token refusal when no cached keys can be used).

use std::path::PathBuf;

/// Why a token was refused. Every variant has a stable machine code, see [`TokenError::reason`].
/// Values taken from the (unverified) token are shown with `{:?}` so control characters are
/// escaped, and are truncated by the parser.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is {len} bytes, over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {alg:?} is not allowed{}", provider.as_ref().map(|p| format!(" for provider {p}")).unwrap_or_default())]
    AlgNotAllowed {
        alg: String,
        provider: Option<String>,
    },
    #[error("token header has unsupported parameter {0:?}")]
    UnsupportedHeader(String),
    #[error("token issuer {0:?} is not a configured identity provider")]
    UnknownIssuer(String),
    #[error("token has no kid but the JWKS of provider {provider} has {keys} keys")]
    MissingKid { provider: String, keys: usize },
    #[error("no key with kid {kid:?} in the JWKS of provider {provider}, even after a refresh")]
    UnknownKid { provider: String, kid: String },
    #[error("key {kid:?} of provider {provider} cannot verify {alg:?} tokens: {detail}")]
    KeyAlgMismatch {
        provider: String,
        kid: String,
        alg: jsonwebtoken::Algorithm,
        detail: &'static str,
    },
    #[error("JWKS of provider {provider} is unavailable: {detail}")]
    JwksUnavailable { provider: String, detail: String },
    #[error("token signature verification failed")]
    BadSignature,
    #[error("required claim {0:?} is missing")]
    MissingClaim(String),
    #[error("claim {claim:?} is invalid: {detail}")]
    InvalidClaim { claim: String, detail: &'static str },
    #[error("token expired at {exp} (now {now}, skew {skew}s)")]
    Expired { exp: i64, now: i64, skew: u64 },
    #[error("token not valid before {nbf} (now {now}, skew {skew}s)")]
    NotYetValid { nbf: i64, now: i64, skew: u64 },
    #[error("token issued in the future at {iat} (now {now}, skew {skew}s)")]
    IssuedInFuture { iat: i64, now: i64, skew: u64 },
    #[error("token audience does not include any audience of provider {provider}")]
    WrongAudience { provider: String },
    #[error(
        "token lifetime {lifetime}s (exp - iat) exceeds the maximum {max}s of provider {provider}"
    )]
    LifetimeTooLong {
        provider: String,
        lifetime: i64,
        max: u64,
    },
}

impl TokenError {
    /// Short, stable machine code for logs, metrics and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge { .. } => "too_large",
            TokenError::Malformed(_) => "malformed",
            TokenError::AlgNotAllowed { .. } => "alg_not_allowed",
            TokenError::UnsupportedHeader(_) => "unsupported_header",
            TokenError::UnknownIssuer(_) => "unknown_issuer",
            TokenError::MissingKid { .. } => "missing_kid",
            TokenError::UnknownKid { .. } => "unknown_kid",
            TokenError::KeyAlgMismatch { .. } => "key_alg_mismatch",
            TokenError::JwksUnavailable { .. } => "jwks_unavailable",
            TokenError::BadSignature => "bad_signature",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim { .. } => "invalid_claim",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::IssuedInFuture { .. } => "iat_in_future",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::LifetimeTooLong { .. } => "lifetime_too_long",
        }
    }
}

/// Invalid identity-provider configuration, reported by [`super::Verifier::new`].
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity provider has an empty name")]
    EmptyName,
    #[error("identity provider name {0:?} is used twice")]
    DuplicateName(String),
    #[error("identity provider {provider}: empty issuer")]
    EmptyIssuer { provider: String },
    #[error("identity providers {first} and {second} both use issuer {issuer:?}")]
    DuplicateIssuer {
        issuer: String,
        first: String,
        second: String,
    },
    #[error("identity provider {provider}: no audiences (tokens must name at least one)")]
    EmptyAudiences { provider: String },
    #[error("identity provider {provider}: empty audience string")]
    EmptyAudience { provider: String },
    #[error("identity provider {provider}: no algorithms allowed")]
    NoAlgorithms { provider: String },
    #[error("identity provider {provider}: algorithm {alg:?} is symmetric; only RS*, PS*, ES256, ES384 and EdDSA are allowed")]
    SymmetricAlgorithm {
        provider: String,
        alg: jsonwebtoken::Algorithm,
    },
    #[error("identity provider {provider}: empty groups claim name")]
    EmptyGroupsClaim { provider: String },
    #[error("identity provider {provider}: max_lifetime must be at least one second")]
    ZeroMaxLifetime { provider: String },
    #[error("identity provider {provider}: {what} URL {url:?}: {source}")]
    Url {
        provider: String,
        what: &'static str,
        url: String,
        #[source]
        source: FetchError,
    },
    #[error("identity provider {provider}: CA file {}: {detail}", path.display())]
    CaFile {
        provider: String,
        path: PathBuf,
        detail: String,
    },
    #[error("identity provider {provider}: TLS setup: {source}")]
    Tls {
        provider: String,
        #[source]
        source: rustls::Error,
    },
}

/// Failure to fetch a JWKS or discovery document over HTTP(S).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("plain http:// is only allowed to loopback addresses")]
    InsecureUrl,
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolved to non-loopback address {addr}, refused for plain http://")]
    NonLoopback {
        host: String,
        addr: std::net::SocketAddr,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response body over the {0}-byte limit")]
    TooLarge(usize),
    #[error("invalid document: {0}")]
    Document(String),
    #[error("reading {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
