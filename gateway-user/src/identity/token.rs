//! Unverified parsing of a compact JWS: size cap, structure, header (algorithm policy that does
//! not depend on the provider), claims as JSON. Nothing here is trusted until the signature is
//! checked.

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::error::{Malformed, Part, TokenError};

/// Tokens longer than this are refused before any parsing, whichever way they arrive (a
/// PostgreSQL password, a workload's token file, an approver's bearer token). Documented in
/// docs/policy.md; real OIDC tokens are a few KiB even with many groups.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Untrusted strings quoted in error messages are cut to this many characters.
const MAX_QUOTED: usize = 128;

pub(crate) struct Parsed<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// `base64url(header) "." base64url(payload)`, the signed bytes.
    pub signing_input: &'a str,
    pub signature: &'a str,
    pub claims: Map<String, Value>,
    pub iss: String,
}

pub(crate) fn quote(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    if token.is_empty() {
        return Err(TokenError::Malformed(Malformed::Empty));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(Malformed::NotThreeParts));
    };
    if h.is_empty() {
        return Err(TokenError::Malformed(Malformed::EmptyPart(Part::Header)));
    }
    if p.is_empty() {
        return Err(TokenError::Malformed(Malformed::EmptyPart(Part::Payload)));
    }
    let header = decode_object(h, Part::Header)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(TokenError::Malformed(Malformed::AlgNotString)),
        None => return Err(TokenError::Malformed(Malformed::NoAlg)),
    };
    // `none` and HMAC are never acceptable for a gateway that only holds public keys; any name
    // jsonwebtoken does not know is refused the same way. The accepted list is filled in by the
    // verifier, which knows the providers.
    let alg = match Algorithm::from_str(alg) {
        Ok(a) if !is_hmac(a) => a,
        Ok(a) => {
            return Err(TokenError::AlgNotAllowed {
                alg: format!("{a:?}"),
                provider: None,
                allowed: Vec::new(),
            })
        }
        Err(_) => {
            return Err(TokenError::AlgNotAllowed {
                alg: quote(alg),
                provider: None,
                allowed: Vec::new(),
            })
        }
    };
    if let Some(crit) = header.get("crit") {
        return Err(TokenError::UnsupportedHeader(format!(
            "crit: {}",
            quote(&crit.to_string())
        )));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed(Malformed::KidNotString)),
    };
    let claims = decode_object(p, Part::Payload)?;
    let iss = match claims.get("iss") {
        Some(Value::String(i)) => i.clone(),
        Some(_) => return Err(TokenError::Malformed(Malformed::IssNotString)),
        None => return Err(TokenError::MissingClaim("iss".into())),
    };
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Parsed {
        alg,
        kid,
        signing_input,
        signature: s,
        claims,
        iss,
    })
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn decode_object(part: &str, what: Part) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|e| {
        TokenError::Malformed(Malformed::NotBase64 {
            part: what,
            detail: e.to_string(),
        })
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TokenError::Malformed(Malformed::NotObject(what))),
        Err(e) => Err(TokenError::Malformed(Malformed::NotJson {
            part: what,
            detail: e.to_string(),
        })),
    }
}
