//! OpenID Connect discovery: `{issuer}/.well-known/openid-configuration` -> `jwks_uri`.

use super::error::FetchError;
use crate::net::http::HttpUrl;

pub(crate) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Parses a discovery document. Its `issuer` must equal the configured issuer exactly (OpenID
/// Connect Discovery 1.0, section 4.3), and `jwks_uri` must pass the same URL rules as a
/// configured JWKS URL.
pub(crate) fn parse_document(issuer: &str, body: &[u8]) -> Result<HttpUrl, FetchError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        issuer: String,
        jwks_uri: String,
    }
    let doc: Doc = serde_json::from_slice(body)
        .map_err(|e| FetchError::Document(format!("discovery document: {e}")))?;
    if doc.issuer != issuer {
        return Err(FetchError::Document(format!(
            "discovery document names issuer {:?}, expected {issuer:?}",
            super::token::quote(&doc.issuer)
        )));
    }
    Ok(HttpUrl::parse(&doc.jwks_uri)?)
}
