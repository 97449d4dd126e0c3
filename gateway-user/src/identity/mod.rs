//! Principal identity: OIDC JWTs verified against the issuer's JWKS (a file, a URL or OpenID
//! discovery), with asymmetric algorithms only.
//!
//! [`Verifier::verify`] refuses with a [`TokenError`] whose [`TokenError::reason`] is a stable
//! machine code and whose [`TokenError::agent_message`] tells the agent what is wrong with its
//! token. Keys are cached per provider and refreshed when a token names an unknown `kid`
//! (or the cache is older than five minutes), at most once per provider per 10 s, one fetch shared
//! by concurrent callers. HTTPS uses rustls with the ring provider, webpki roots plus an optional
//! CA file; fetches go through the gateway's one HTTP client (`net::http`), whose sockets
//! capture never redirects.

mod claims;
mod discovery;
mod error;
mod jwks;
mod seen;
mod token;
mod verify;

#[cfg(test)]
mod message_tests;
#[cfg(test)]
mod pod_claim_tests;
#[cfg(test)]
mod seen_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// What a verifier registers its sockets with (the proxy hands it the kernel maps).
pub use crate::net::OwnSockets;
#[cfg(test)]
pub use error::IdentityError;
pub use error::TokenError;
pub use token::MAX_TOKEN_BYTES;
pub use verify::Verifier;

/// One trusted identity provider (OIDC issuer).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    /// Exact `iss` to require.
    pub issuer: String,
    /// The token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Only asymmetric algorithms: RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Claim holding the groups: a string array or a single string.
    pub groups_claim: String,
    pub clock_skew: Duration,
    /// Refuse tokens whose `exp - iat` exceeds this (`iat` is required).
    pub max_lifetime: Duration,
    /// Extra CA (PEM) to trust for HTTPS JWKS/discovery, in addition to the webpki roots.
    pub ca_file: Option<PathBuf>,
}

/// Where a provider's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS JSON file, re-read on every refresh (rotate keys by replacing the file).
    File(PathBuf),
    /// An https:// URL (http:// only to loopback).
    Url(String),
    /// `GET {issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
}

/// The verified identity behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub expires_at: SystemTime,
    /// A Kubernetes projected service-account token's pod (`kubernetes.io.pod.uid`): the token
    /// is good only from that pod (`proxy::pod_binding`).
    pub pod_uid: Option<String>,
}
