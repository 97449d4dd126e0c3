//! The console's sign-ins, in memory: sessions (by the SHA-256 of their cookie, so a lookup
//! reveals nothing of a secret through its timing) and pending logins (by the SHA-256 of their
//! `state`, single use). Both are bounded: an unauthenticated caller can start logins, so the
//! oldest pending one gives way; sessions need the provider's word, and the one closest to its
//! end gives way.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use sha2::{Digest, Sha256};

use super::oidc::Client;

/// Live sessions at most (a node's approvers and auditors are far fewer).
pub const MAX_SESSIONS: usize = 10_000;
/// Logins started and not finished at most.
pub const MAX_PENDING: usize = 1_000;
/// A login not finished within this is forgotten (the provider's page waits that long at most).
pub const PENDING_TTL: Duration = Duration::from_secs(600);

pub type Key = [u8; 32];

/// The store's key of a secret (a cookie value, a `state`).
pub fn key(secret: &str) -> Key {
    Sha256::digest(secret.as_bytes()).into()
}

/// A person signed in to the console.
#[derive(Debug, Clone)]
pub struct Session {
    pub issuer: String,
    pub subject: String,
    pub name: String,
    pub groups: Vec<String>,
    pub csrf_token: String,
    pub expires: Instant,
    /// The same instant, for `/v1/me`.
    pub expires_at: SystemTime,
}

/// A login sent to the provider and not back yet.
pub struct Pending {
    pub verifier: String,
    pub nonce: String,
    pub next: String,
    /// The key of the browser's `agentgate_login` cookie: only the browser that started the
    /// login may finish it (no one can sign a victim in as themselves with a link).
    pub browser: Key,
    /// The client the login was started with: a login started before a reload that changed the
    /// console is refused (sign in again).
    pub client: Arc<Client>,
    started: Instant,
}

#[derive(Default)]
pub struct Store {
    sessions: Mutex<HashMap<Key, Session>>,
    pending: Mutex<HashMap<Key, Pending>>,
}

impl Store {
    pub fn start_login(
        &self,
        state: &str,
        verifier: String,
        nonce: String,
        next: String,
        browser: Key,
        client: Arc<Client>,
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| *k)
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            key(state),
            Pending {
                verifier,
                nonce,
                next,
                browser,
                client,
                started: Instant::now(),
            },
        );
    }

    /// The login of `state`, taken out whatever happens next (a `state` is good once), if it
    /// has not expired.
    pub fn finish_login(&self, state: &str) -> Option<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .remove(&key(state))
            .filter(|p| p.started.elapsed() < PENDING_TTL)
    }

    /// Stores `session` under the cookie value `id`.
    pub fn insert(&self, id: &str, session: Session) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(first) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
            {
                sessions.remove(&first);
            }
        }
        sessions.insert(key(id), session);
    }

    /// The live session of the cookie value `id`; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<Session> {
        let k = key(id);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&k) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(id));
    }

    /// Ends the sessions `keep` says no to; returns how many.
    pub fn end_where(&self, end: impl Fn(&Session) -> bool) -> usize {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let before = sessions.len();
        sessions.retain(|_, s| !end(s));
        before - sessions.len()
    }

    /// Ends every session and forgets every pending login (the console was switched off).
    pub fn clear(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let n = sessions.len();
        sessions.clear();
        n
    }

    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (
            self.sessions.lock().unwrap().len(),
            self.pending.lock().unwrap().len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::{JwksSource, ProviderConfig},
        net::http::HttpClient,
    };

    fn client() -> Arc<Client> {
        let settings = super::super::oidc::Settings {
            provider: ProviderConfig {
                name: "corp".into(),
                issuer: "https://idp.example".into(),
                audiences: vec!["agents".into()],
                jwks: JwksSource::File("/nonexistent/jwks.json".into()),
                algorithms: vec![jsonwebtoken::Algorithm::RS256],
                groups_claim: "groups".into(),
                clock_skew: Duration::from_secs(30),
                max_lifetime: Duration::from_secs(900),
                ca_file: None,
            },
            client_id: "console".into(),
            client_secret: None,
            redirect_url: "https://gw.example/console/callback".into(),
            scopes: vec!["openid".into()],
        };
        Arc::new(
            Client::new(
                settings,
                HttpClient::uncaptured(),
                Arc::new(crate::net::Uncaptured),
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_state_is_good_once_and_pending_logins_are_bounded() {
        let store = Store::default();
        let c = client();
        for i in 0..MAX_PENDING + 5 {
            store.start_login(
                &format!("s{i}"),
                "v".into(),
                "n".into(),
                "/console/".into(),
                key("b"),
                c.clone(),
            );
        }
        assert_eq!(store.counts().1, MAX_PENDING);
        // The oldest gave way; a state is taken out on first use.
        assert!(store.finish_login("s0").is_none());
        let last = format!("s{}", MAX_PENDING + 4);
        assert!(store.finish_login(&last).is_some());
        assert!(store.finish_login(&last).is_none());
    }

    #[test]
    fn sessions_expire_and_are_found_by_their_id_only() {
        let store = Store::default();
        let session = |ttl: Duration| Session {
            issuer: "https://idp.example".into(),
            subject: "alice".into(),
            name: "alice".into(),
            groups: vec![],
            csrf_token: "c".into(),
            expires: Instant::now() + ttl,
            expires_at: SystemTime::now() + ttl,
        };
        store.insert("long", session(Duration::from_secs(60)));
        store.insert("short", session(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.get("long").is_some());
        assert!(store.get("short").is_none());
        assert!(store.get("lon").is_none());
        assert_eq!(store.counts().0, 1, "the expired one was removed");
        assert_eq!(store.end_where(|s| s.subject == "alice"), 1);
        assert!(store.get("long").is_none());
    }
}
