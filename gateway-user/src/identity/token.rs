//! Unverified parsing of a compact JWS: size cap, structure, header (algorithm policy that does
//! not depend on the provider), claims as JSON. Nothing here is trusted until the signature is
//! checked.

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::error::TokenError;

/// Tokens longer than this are refused before any parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;
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
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    if h.is_empty() || p.is_empty() {
        return Err(TokenError::Malformed("empty header or payload".into()));
    }
    let header = decode_object(h, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(TokenError::Malformed("header alg is not a string".into())),
        None => return Err(TokenError::Malformed("header has no alg".into())),
    };
    // `none` and HMAC are never acceptable for a gateway that only holds public keys; any name
    // jsonwebtoken does not know is refused the same way.
    let alg = match Algorithm::from_str(alg) {
        Ok(a) if !is_hmac(a) => a,
        Ok(a) => {
            return Err(TokenError::AlgNotAllowed {
                alg: format!("{a:?}"),
                provider: None,
            })
        }
        Err(_) => {
            return Err(TokenError::AlgNotAllowed {
                alg: quote(alg),
                provider: None,
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
        Some(_) => return Err(TokenError::Malformed("header kid is not a string".into())),
    };
    let claims = decode_object(p, "payload")?;
    let iss = match claims.get("iss") {
        Some(Value::String(i)) => i.clone(),
        Some(_) => return Err(TokenError::Malformed("iss is not a string".into())),
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

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TokenError::Malformed(format!(
            "{what} is not a JSON object"
        ))),
        Err(e) => Err(TokenError::Malformed(format!(
            "{what} is not valid JSON: {e}"
        ))),
    }
}
