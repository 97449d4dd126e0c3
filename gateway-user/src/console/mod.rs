//! The web console's sign-in (issue 22): OpenID Connect code flow with PKCE against the
//! identity provider the policy's `console:` names, server-side sessions behind an
//! `agentgate_session` cookie, a CSRF token per session.
//!
//! - [`oidc`]: discovery, the authorization request, the token exchange, the ID token.
//! - [`store`]: sessions and pending logins in memory, bounded.
//! - [`web`]: the `/console/...` answers (login, callback, logout, the page) and `/v1/me`.
//!
//! The console is on while the policy in force has a `console:` section. A reload that changes
//! it applies to new sign-ins (roles are re-read from the policy in force on every request);
//! one that removes it, or moves it to another issuer, ends the sessions.

pub mod oidc;
mod store;
pub mod web;

use std::sync::{Arc, Mutex};

use hyper::HeaderMap;
use tokio::sync::watch;

use crate::{
    admin::caller::{Caller, Via},
    approval::Approver,
    identity::OwnSockets,
    net::http::HttpClient,
    policy::{ConsoleRole, Policy},
};
use oidc::{Client, OidcError, Settings};
pub use store::Session;
use store::Store;

pub const SESSION_COOKIE: &str = "agentgate_session";
/// Binds a login to the browser that started it (SameSite=Lax: it must come back with the
/// provider's redirect, a cross-site navigation).
pub const LOGIN_COOKIE: &str = "agentgate_login";
pub const CSRF_HEADER: &str = "x-csrf-token";

pub struct ConsoleAuth {
    policy: watch::Receiver<Arc<Policy>>,
    http: HttpClient,
    own: Arc<dyn OwnSockets>,
    /// The client of the console settings in force (rebuilt when they change).
    client: Mutex<Option<Arc<Client>>>,
    store: Store,
}

/// A request's console session.
pub enum Lookup {
    /// No session cookie.
    None,
    /// A cookie that names no live session (forged, expired, signed out, console switched off).
    Invalid,
    Valid(SignedIn),
}

pub struct SignedIn {
    /// The cookie's value (the session's secret).
    pub id: String,
    pub session: Session,
    /// From the policy in force.
    pub role: ConsoleRole,
}

impl SignedIn {
    pub fn caller(&self) -> Caller {
        Caller {
            approver: Approver::Oidc {
                issuer: self.session.issuer.clone(),
                subject: self.session.subject.clone(),
                groups: self.session.groups.clone(),
            },
            role: self.role,
            via: Via::Session {
                csrf_token: self.session.csrf_token.clone(),
            },
        }
    }
}

impl ConsoleAuth {
    pub fn new(
        policy: watch::Receiver<Arc<Policy>>,
        http: HttpClient,
        own: Arc<dyn OwnSockets>,
    ) -> Arc<Self> {
        Arc::new(ConsoleAuth {
            policy,
            http,
            own,
            client: Mutex::new(None),
            store: Store::default(),
        })
    }

    /// The policy in force, and its console's issuer if the console is on. With the console
    /// off, every session ends here (and in [`Self::follow_policy`]).
    fn in_force(&self) -> (Arc<Policy>, Option<String>) {
        let policy = self.policy.borrow().clone();
        let issuer = policy.console.as_ref().and_then(|c| {
            policy
                .identity_providers
                .iter()
                .find(|p| p.name == c.identity_provider)
                .map(|p| p.issuer.clone())
        });
        if issuer.is_none() {
            let ended = self.store.clear();
            if ended > 0 {
                tracing::info!(
                    ended,
                    "console sessions ended: the policy has no console any more"
                );
            }
        }
        (policy, issuer)
    }

    /// The OIDC client of the console in force (`None`: the console is off).
    fn client(&self) -> Result<Option<Arc<Client>>, OidcError> {
        let policy = self.policy.borrow().clone();
        let Some(console) = policy.console.as_ref() else {
            return Ok(None);
        };
        let providers = crate::proxy::authorize::provider_configs(&policy).map_err(|detail| {
            OidcError::Setup {
                provider: console.identity_provider.clone(),
                detail,
            }
        })?;
        let Some(settings) = Settings::of(&policy, providers)? else {
            return Ok(None);
        };
        let mut cur = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cur.as_ref().filter(|c| c.settings == settings) {
            return Ok(Some(c.clone()));
        }
        let c = Arc::new(Client::new(settings, self.http.clone(), self.own.clone())?);
        *cur = Some(c.clone());
        Ok(Some(c))
    }

    /// The session the request's cookie names, with the role the policy in force gives it.
    pub fn lookup(&self, headers: &HeaderMap) -> Lookup {
        let Some(id) = web::cookie(headers, SESSION_COOKIE) else {
            return Lookup::None;
        };
        let (policy, issuer) = self.in_force();
        let (Some(console), Some(issuer)) = (policy.console.as_ref(), issuer) else {
            return Lookup::Invalid;
        };
        match self.store.get(&id) {
            Some(session) if session.issuer == issuer => Lookup::Valid(SignedIn {
                role: console.role(&session.groups),
                id,
                session,
            }),
            Some(_) => {
                // Signed in with a provider the console no longer uses.
                self.store.remove(&id);
                Lookup::Invalid
            }
            None => Lookup::Invalid,
        }
    }

    /// A state-changing request made with the session cookie must carry the session's CSRF
    /// token, and come from the console's own origin if the browser says where from.
    pub fn check_csrf(&self, signed: &SignedIn, headers: &HeaderMap) -> Result<(), &'static str> {
        let token = headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !oidc::same(token, signed.session.csrf_token.as_bytes()) {
            return Err("a missing or wrong X-CSRF-Token");
        }
        if let Some(origin) = headers.get(hyper::header::ORIGIN) {
            let ours = self
                .policy
                .borrow()
                .console
                .as_ref()
                .and_then(|c| web::origin_of(&c.redirect_url));
            let theirs = origin.to_str().ok().and_then(web::origin_of);
            if ours.is_none() || ours != theirs {
                return Err("a request from another origin");
            }
        }
        Ok(())
    }

    /// Ends the sessions a new policy no longer vouches for: all of them when it has no
    /// `console:`, those of another issuer when the console's provider changed.
    pub async fn follow_policy(self: Arc<Self>, mut policies: watch::Receiver<Arc<Policy>>) {
        loop {
            if policies.changed().await.is_err() {
                return;
            }
            policies.borrow_and_update();
            let (_, issuer) = self.in_force();
            let ended = match issuer {
                None => 0,
                Some(issuer) => self.store.end_where(|s| s.issuer != issuer),
            };
            if ended > 0 {
                tracing::info!(
                    ended,
                    "console sessions of another issuer ended by the reload"
                );
            }
        }
    }
}
