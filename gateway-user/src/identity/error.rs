//! Typed errors of the identity module: configuration errors, token refusals, and JWKS fetch
//! failures (the latter are folded into a token refusal when no cached keys can be used).

use std::path::PathBuf;

/// Why a token was refused. Every variant has a stable machine code, see [`TokenError::reason`],
/// and a short text for the agent, see [`TokenError::agent_message`]. Values taken from the
/// (unverified) token are shown with `{:?}` so control characters are escaped, and are truncated
/// by the parser.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("token is {len} bytes, over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed token: {0}")]
    Malformed(Malformed),
    #[error("token algorithm {alg:?} is not allowed{}", provider.as_ref().map(|p| format!(" for provider {p}")).unwrap_or_default())]
    AlgNotAllowed {
        alg: String,
        provider: Option<String>,
        /// What the provider (or, before the provider is known, any provider) accepts.
        allowed: Vec<jsonwebtoken::Algorithm>,
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
    #[error("claim {claim:?} is invalid: {problem}")]
    InvalidClaim {
        claim: String,
        problem: ClaimProblem,
    },
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

/// The part of a compact JWS a structural problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Header,
    Payload,
    Signature,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Header => "header",
            Part::Payload => "payload",
            Part::Signature => "signature",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What is structurally wrong with a token that is not a usable compact JWS. The details (a
/// decoder's or JSON parser's own words) are for the operator only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("empty token")]
    Empty,
    #[error("expected three dot-separated parts")]
    NotThreeParts,
    #[error("empty {0}")]
    EmptyPart(Part),
    #[error("{part} is not base64url: {detail}")]
    NotBase64 { part: Part, detail: String },
    #[error("{part} is not valid JSON: {detail}")]
    NotJson { part: Part, detail: String },
    #[error("{0} is not a JSON object")]
    NotObject(Part),
    #[error("header has no alg")]
    NoAlg,
    #[error("header alg is not a string")]
    AlgNotString,
    #[error("header kid is not a string")]
    KidNotString,
    #[error("iss is not a string")]
    IssNotString,
}

/// What is wrong with a claim that is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimProblem {
    #[error("not a NumericDate")]
    NotNumericDate,
    #[error("exp is before iat")]
    ExpBeforeIat,
    #[error("not a string or array of strings")]
    NotStringOrArray,
    #[error("not a string")]
    NotString,
    #[error("not an object with `pod.uid` a string")]
    NotPodClaim,
}

/// Algorithm names as the agent may read them: printable ASCII, short.
fn shown_alg(alg: &str) -> String {
    alg.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(32)
        .collect()
}

fn alg_list(algs: &[jsonwebtoken::Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
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

    /// What the agent is told, whatever the protocol: the cause, in terms of its own token.
    /// Never key material, provider or file names, the issuer's keys or the token itself: only
    /// the algorithm name the token chose (sanitised) and numbers that the agent's token or the
    /// documented policy limits already carry.
    pub fn agent_message(&self) -> String {
        match self {
            TokenError::TooLarge { len, max } => {
                format!("the token is {len} bytes, over the gateway's limit of {max} bytes")
            }
            TokenError::Malformed(m) => match m {
                Malformed::Empty => "the token is empty".into(),
                Malformed::NotThreeParts => {
                    "the token is not a JWT (three base64url parts separated by dots)".into()
                }
                Malformed::EmptyPart(part) => format!("the token's {part} is empty"),
                Malformed::NotBase64 { part, .. } => format!("the token's {part} is not base64url"),
                Malformed::NotJson { part, .. } | Malformed::NotObject(part) => {
                    format!("the token's {part} is not a JSON object")
                }
                Malformed::NoAlg => "the token's header has no alg".into(),
                Malformed::AlgNotString => "the token's alg is not a string".into(),
                Malformed::KidNotString => "the token's kid is not a string".into(),
                Malformed::IssNotString => "the token's iss claim is not a string".into(),
            },
            TokenError::AlgNotAllowed { alg, allowed, .. } => {
                let mut m = format!(
                    "the token's algorithm '{}' is not accepted",
                    shown_alg(alg)
                );
                if !allowed.is_empty() {
                    m += &format!(" (allowed: {})", alg_list(allowed));
                }
                m
            }
            TokenError::UnsupportedHeader(_) => {
                "the token has a critical header (crit) the gateway does not understand".into()
            }
            TokenError::UnknownIssuer(_) => "the token's issuer is not trusted".into(),
            TokenError::MissingKid { .. } => {
                "the token names no signing key (kid) and its issuer has several".into()
            }
            TokenError::UnknownKid { .. } => "the token's signing key (kid) is unknown".into(),
            TokenError::KeyAlgMismatch { .. } => {
                "the token's algorithm does not match its signing key".into()
            }
            TokenError::JwksUnavailable { .. } => {
                "the token cannot be checked right now (its issuer's keys are unavailable)".into()
            }
            TokenError::BadSignature => "the token's signature does not verify".into(),
            TokenError::MissingClaim(claim) => format!("the token has no {claim} claim"),
            TokenError::InvalidClaim { claim, problem } => match problem {
                ClaimProblem::NotNumericDate => format!("the token's {claim} claim is not a number"),
                ClaimProblem::ExpBeforeIat => "the token's exp claim is before its iat".into(),
                ClaimProblem::NotStringOrArray => {
                    format!("the token's {claim} claim is not a string or an array of strings")
                }
                ClaimProblem::NotString => format!("the token's {claim} claim is not a string"),
                ClaimProblem::NotPodClaim => {
                    format!("the token's {claim} claim does not name its pod as Kubernetes does")
                }
            },
            TokenError::Expired { .. } => "the token has expired".into(),
            TokenError::NotYetValid { .. } => "the token is not valid yet (nbf)".into(),
            TokenError::IssuedInFuture { .. } => {
                "the token is not valid yet (issued in the future: iat)".into()
            }
            TokenError::WrongAudience { .. } => {
                "the token is not meant for this gateway (aud)".into()
            }
            TokenError::LifetimeTooLong { lifetime, max, .. } => format!(
                "the token's lifetime (exp - iat) of {lifetime} s is longer than the allowed {max} s"
            ),
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

/// Failure to get a JWKS or discovery document (over HTTP(S) or from a file).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] crate::net::http::HttpError),
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
