//! STUB until the identity module lands (interface only; every token is refused).

use std::{path::PathBuf, time::Duration};

pub struct ProviderConfig {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub groups_claim: String,
    pub clock_skew: Duration,
    pub max_lifetime: Duration,
    pub ca_file: Option<PathBuf>,
}

pub enum JwksSource {
    File(PathBuf),
    Url(String),
    Discovery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub expires_at: std::time::SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("stub")]
    Stub,
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        "stub"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("stub")]
    Stub,
}

pub struct Verifier;

impl Verifier {
    pub fn new(_p: Vec<ProviderConfig>) -> Result<Self, IdentityError> {
        Ok(Self)
    }
    pub fn with_socket_mark(self, _m: Option<u32>) -> Self {
        self
    }
    pub async fn verify(&self, _t: &str) -> Result<Principal, TokenError> {
        Err(TokenError::Stub)
    }
}
