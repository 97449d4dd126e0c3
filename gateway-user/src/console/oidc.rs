//! The console as an OpenID Connect client of one provider: discovery, the authorization
//! request (code flow, PKCE S256), the token exchange and the ID token's verification.
//!
//! Fetches go through the gateway's one HTTP client (`net::http`, sockets capture leaves alone,
//! the provider's `ca_file`); the ID token is verified by an identity [`Verifier`] made of the
//! provider's own settings (issuer, keys, algorithms, clock skew, lifetime) with the console's
//! client id as the only audience, then its `nonce` and `azp` are checked here.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::TryRngCore;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::web::form_encode;
use crate::{
    identity::{OwnSockets, ProviderConfig, Verifier},
    net::http::{self, HttpClient, HttpUrl},
    policy::Policy,
};

/// A discovery document is fetched again after this long (endpoints rarely move).
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the console's identity provider `{0}` is not in the policy")]
    NoProvider(String),
    #[error("identity provider `{provider}`: {detail}")]
    Setup { provider: String, detail: String },
    #[error("discovery document of {issuer}: {detail}")]
    Discovery { issuer: String, detail: String },
    #[error("the token endpoint answered HTTP {0}")]
    TokenStatus(u16),
    #[error("token endpoint: {0}")]
    TokenFetch(String),
    #[error("the token endpoint's answer has no ID token: {0}")]
    NoIdToken(String),
    #[error("ID token refused: {0}")]
    IdToken(String),
    #[error("ID token refused: its nonce is not this login's")]
    Nonce,
    #[error("ID token refused: it was issued to another client (azp)")]
    Azp,
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

impl OidcError {
    /// A stable code for the sign-in error page and the log.
    pub fn code(&self) -> &'static str {
        match self {
            OidcError::NoProvider(_) | OidcError::Setup { .. } => "console_misconfigured",
            OidcError::Discovery { .. } => "discovery",
            OidcError::TokenStatus(_) | OidcError::TokenFetch(_) | OidcError::NoIdToken(_) => {
                "token_exchange"
            }
            OidcError::IdToken(_) | OidcError::Azp => "id_token",
            OidcError::Nonce => "nonce",
            OidcError::Random(_) => "internal",
        }
    }
}

/// `n` bytes from the operating system, base64url: state, nonce, PKCE verifier, session ids
/// and CSRF tokens (32 bytes: 256 bits).
pub fn random_token(n: usize) -> Result<String, OidcError> {
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| OidcError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 section 4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// What decides how the client is built: a reload that changes none of it keeps the client
/// (and the logins started with it).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub provider: ProviderConfig,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub redirect_url: String,
    pub scopes: Vec<String>,
}

impl Settings {
    /// The client settings of `policy`'s console (`None`: it has none), its providers in the
    /// verifier's terms being `providers`.
    pub fn of(policy: &Policy, providers: Vec<ProviderConfig>) -> Result<Option<Self>, OidcError> {
        let Some(console) = policy.console.as_ref() else {
            return Ok(None);
        };
        let provider = providers
            .into_iter()
            .find(|p| p.name == console.identity_provider)
            .ok_or_else(|| OidcError::NoProvider(console.identity_provider.clone()))?;
        Ok(Some(Settings {
            provider,
            client_id: console.client_id.clone(),
            client_secret: console.client_secret.clone(),
            redirect_url: console.redirect_url.clone(),
            scopes: console.scopes.clone(),
        }))
    }
}

#[derive(Clone)]
struct Endpoints {
    authorization: String,
    token: HttpUrl,
    /// `client_secret_basic` unless the provider says it only takes `client_secret_post`.
    secret_in_body: bool,
    fetched: Instant,
}

/// The verified sign-in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub name: String,
    pub groups: Vec<String>,
}

pub struct Client {
    pub settings: Settings,
    http: HttpClient,
    tls: Arc<rustls::ClientConfig>,
    verifier: Verifier,
    endpoints: Mutex<Option<Endpoints>>,
}

impl Client {
    pub fn new(
        settings: Settings,
        http: HttpClient,
        own: Arc<dyn OwnSockets>,
    ) -> Result<Self, OidcError> {
        let setup = |detail: String| OidcError::Setup {
            provider: settings.provider.name.clone(),
            detail,
        };
        let tls = http::tls_config(settings.provider.ca_file.as_deref()).map_err(|e| {
            setup(match e {
                http::TlsSetupError::CaFile(d) => format!("ca_file: {d}"),
                http::TlsSetupError::Rustls(e) => e.to_string(),
            })
        })?;
        // The provider's own settings, with this client as the only audience: an ID token is
        // for the console, an agent's token (other audience) is not a sign-in.
        let verifier = Verifier::new(vec![ProviderConfig {
            audiences: vec![settings.client_id.clone()],
            ..settings.provider.clone()
        }])
        .map_err(|e| setup(e.to_string()))?
        .with_own_sockets(own);
        Ok(Client {
            settings,
            http,
            tls: Arc::new(tls),
            verifier,
            endpoints: Mutex::new(None),
        })
    }

    async fn endpoints(&self) -> Result<Endpoints, OidcError> {
        let cached = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(e) = cached.filter(|e| e.fetched.elapsed() < DISCOVERY_TTL) {
            return Ok(e);
        }
        let issuer = &self.settings.provider.issuer;
        let bad = |detail: String| OidcError::Discovery {
            issuer: issuer.clone(),
            detail,
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let url = HttpUrl::parse(&url).map_err(|e| bad(e.to_string()))?;
        let body = self
            .http
            .get(&url, Some(&self.tls))
            .await
            .map_err(|e| bad(e.to_string()))?;
        let e = parse_discovery(issuer, &body).map_err(bad)?;
        *self.endpoints.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        Ok(e)
    }

    /// The provider's authorization URL for a login with these values.
    pub async fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        let e = self.endpoints().await?;
        let scope = self.settings.scopes.join(" ");
        let query = form_encode(&[
            ("response_type", "code"),
            ("client_id", &self.settings.client_id),
            ("redirect_uri", &self.settings.redirect_url),
            ("scope", &scope),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", &challenge(verifier)),
            ("code_challenge_method", "S256"),
        ]);
        let sep = if e.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!("{}{sep}{query}", e.authorization))
    }

    /// Exchanges `code` (with the login's PKCE `verifier`) and verifies the ID token against
    /// the login's `nonce`.
    pub async fn sign_in(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Identity, OidcError> {
        let e = self.endpoints().await?;
        let s = &self.settings;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &s.redirect_url),
            ("code_verifier", verifier),
        ];
        let mut authorization = None;
        match &s.client_secret {
            None => form.push(("client_id", &s.client_id)),
            Some(secret) if e.secret_in_body => {
                form.push(("client_id", &s.client_id));
                form.push(("client_secret", secret));
            }
            Some(secret) => {
                // RFC 6749 section 2.3.1: each part form-encoded, then base64.
                let pair = format!(
                    "{}:{}",
                    form_encode_component(&s.client_id),
                    form_encode_component(secret)
                );
                authorization = Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ));
            }
        }
        let (status, body) = self
            .http
            .post_form(&e.token, Some(&self.tls), form_encode(&form), authorization)
            .await
            .map_err(|e| OidcError::TokenFetch(e.to_string()))?;
        if status != 200 {
            return Err(OidcError::TokenStatus(status));
        }
        let answer: Value =
            serde_json::from_slice(&body).map_err(|e| OidcError::NoIdToken(e.to_string()))?;
        let id_token = answer["id_token"]
            .as_str()
            .ok_or_else(|| OidcError::NoIdToken("no `id_token`".into()))?;
        self.verify_id_token(id_token, nonce).await
    }

    async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<Identity, OidcError> {
        let p = self
            .verifier
            .verify(token)
            .await
            .map_err(|e| OidcError::IdToken(e.to_string()))?;
        // Signature, issuer, audience and times are checked: the claims are the provider's.
        let claims = payload(token).ok_or_else(|| OidcError::IdToken("unreadable".into()))?;
        let theirs = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
        if !same(theirs.as_bytes(), nonce.as_bytes()) {
            return Err(OidcError::Nonce);
        }
        // OpenID Connect Core 3.1.3.7: several audiences need an `azp`, which must be us.
        let several = claims
            .get("aud")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() > 1);
        match claims.get("azp") {
            Some(Value::String(azp)) if *azp == self.settings.client_id => {}
            None if !several => {}
            _ => return Err(OidcError::Azp),
        }
        let name = ["name", "preferred_username", "email"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .filter(|n| !n.is_empty())
            .map(|n| n.chars().take(256).collect())
            .unwrap_or_else(|| p.subject.clone());
        Ok(Identity {
            issuer: p.issuer,
            subject: p.subject,
            name,
            groups: p.groups,
        })
    }
}

fn parse_discovery(issuer: &str, body: &[u8]) -> Result<Endpoints, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        issuer: String,
        authorization_endpoint: String,
        token_endpoint: String,
        #[serde(default)]
        code_challenge_methods_supported: Option<Vec<String>>,
        #[serde(default)]
        token_endpoint_auth_methods_supported: Option<Vec<String>>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    // OpenID Connect Discovery 1.0, section 4.3: exactly the issuer asked.
    if doc.issuer != issuer {
        return Err(format!(
            "names issuer {:?}, expected {issuer:?}",
            doc.issuer.chars().take(128).collect::<String>()
        ));
    }
    if let Some(methods) = &doc.code_challenge_methods_supported {
        if !methods.iter().any(|m| m == "S256") {
            return Err("the provider does not support PKCE S256".into());
        }
    }
    // The same rules as any URL the gateway fetches: https (http only to loopback), no
    // credentials in it; the browser is sent to the authorization endpoint.
    HttpUrl::parse(&doc.authorization_endpoint)
        .map_err(|e| format!("authorization_endpoint: {e}"))?;
    if doc.authorization_endpoint.contains('#') {
        return Err("authorization_endpoint has a fragment".into());
    }
    let token = HttpUrl::parse(&doc.token_endpoint).map_err(|e| format!("token_endpoint: {e}"))?;
    let methods = doc
        .token_endpoint_auth_methods_supported
        .unwrap_or_default();
    let secret_in_body = !methods.is_empty()
        && !methods.iter().any(|m| m == "client_secret_basic")
        && methods.iter().any(|m| m == "client_secret_post");
    Ok(Endpoints {
        authorization: doc.authorization_endpoint,
        token,
        secret_in_body,
        fetched: Instant::now(),
    })
}

/// The claims of a compact JWS already verified (the payload part, decoded).
pub fn payload(token: &str) -> Option<Map<String, Value>> {
    let part = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Equality in time independent of where the inputs differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn form_encode_component(s: &str) -> String {
    super::web::percent_encode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc7636s_example() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let v = random_token(32).unwrap();
        assert_eq!(v.len(), 43, "256 bits, base64url");
        assert_ne!(v, random_token(32).unwrap());
    }

    #[test]
    fn discovery_must_name_the_issuer_and_support_s256() {
        let doc = |iss: &str, extra: &str| {
            format!(
                "{{\"issuer\":\"{iss}\",\"authorization_endpoint\":\"https://idp/a\",\"token_endpoint\":\"https://idp/t\"{extra}}}"
            )
        };
        assert!(parse_discovery("https://idp", doc("https://idp", "").as_bytes()).is_ok());
        assert!(parse_discovery("https://idp", doc("https://idp/", "").as_bytes()).is_err());
        assert!(parse_discovery(
            "https://idp",
            doc(
                "https://idp",
                ",\"code_challenge_methods_supported\":[\"plain\"]"
            )
            .as_bytes()
        )
        .is_err());
        let post = parse_discovery(
            "https://idp",
            doc(
                "https://idp",
                ",\"token_endpoint_auth_methods_supported\":[\"client_secret_post\"]",
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(post.secret_in_body);
        let plain = "{\"issuer\":\"https://idp\",\"authorization_endpoint\":\"http://idp.example/a\",\"token_endpoint\":\"https://idp/t\"}";
        assert!(parse_discovery("https://idp", plain.as_bytes()).is_err());
    }
}
