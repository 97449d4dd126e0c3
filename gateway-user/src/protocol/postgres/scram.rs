//! SCRAM-SHA-256 toward the target (RFC 5802 and 7677, as PostgreSQL speaks it: an empty user
//! name in the client's first message, channel binding `tls-server-end-point` over TLS), with
//! the salted password kept between logins.
//!
//! Why our own client and not postgres-protocol's: the salted password is PBKDF2 over 4096
//! rounds (PostgreSQL's default), milliseconds of CPU at each login, and depends only on the
//! password, the role's salt and the round count, which stay the same from one login of the
//! role to the next. postgres-protocol computes it inside its state machine with no way to
//! hand it one. A gateway that opens a session upstream for every agent connection (pgbench
//! `-C`, a pool without reuse) pays it every time; here it is paid once per (password, salt,
//! rounds). A changed password or a re-created role comes with a new salt: another entry.
//! The salted password gives no more than the gateway already holds, the password itself.

use std::{
    num::NonZeroUsize,
    sync::{Mutex, OnceLock},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

const NONCE_LENGTH: usize = 24;
/// A server (or something posing as one) may not make the gateway run PBKDF2 longer than this:
/// 24 × PostgreSQL's default, the cap pgjdbc and postgres-protocol use.
const MAX_ITERATION_COUNT: u32 = 100_000;
/// Salted passwords kept (one per upstream role and password, in practice).
const KEPT: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed server message: {0}")]
    Malformed(&'static str),
    #[error("the server's nonce does not extend the gateway's")]
    Nonce,
    #[error("iteration count {0} is over the limit of {MAX_ITERATION_COUNT}")]
    Iterations(u32),
    #[error("the server refused: {0}")]
    Server(String),
    #[error("the server's signature does not verify (it does not know the password)")]
    Signature,
    #[error("SCRAM message out of order")]
    State,
}

/// The channel binding of the exchange (RFC 5802's gs2 header).
pub enum Binding {
    /// No TLS: the client cannot bind (`n`).
    Unsupported,
    /// TLS, but the server offers no `-PLUS` mechanism (`y`).
    Unrequested,
    /// `tls-server-end-point` with the hash of the server's certificate (`p=`).
    TlsServerEndPoint(Vec<u8>),
}

impl Binding {
    fn gs2_header(&self) -> &'static str {
        match self {
            Binding::Unsupported => "n,,",
            Binding::Unrequested => "y,,",
            Binding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Binding::TlsServerEndPoint(hash) => hash,
            _ => &[],
        }
    }
}

enum State {
    /// The client's first message is out; waiting for the server's first.
    First,
    /// The proof is out; waiting for the server's signature.
    Final {
        salted: [u8; 32],
        auth_message: String,
    },
    Done,
}

/// One SCRAM-SHA-256 exchange: [`Client::message`] is what to send next.
pub struct Client {
    nonce: String,
    /// The client's first message without the gs2 header (`n=,r=<nonce>`).
    bare: String,
    /// SASLprep'd when it can be, else the bytes as given (as libpq and postgres-protocol do).
    password: Vec<u8>,
    binding: Binding,
    message: String,
    state: State,
}

impl Client {
    pub fn new(password: &str, binding: Binding) -> Self {
        let mut rng = rand::rng();
        // Printable ASCII without `,` (RFC 5802's `printable`).
        let nonce = (0..NONCE_LENGTH)
            .map(|_| match rng.random_range(0x21u8..0x7f) {
                b',' => '~',
                c => c as char,
            })
            .collect();
        // PostgreSQL takes the user from the startup message and wants none here.
        Self::with_nonce(password, binding, nonce, "")
    }

    fn with_nonce(password: &str, binding: Binding, nonce: String, user: &str) -> Self {
        let password = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => password.as_bytes().to_vec(),
        };
        let bare = format!("n={user},r={nonce}");
        Client {
            message: format!("{}{bare}", binding.gs2_header()),
            bare,
            nonce,
            password,
            binding,
            state: State::First,
        }
    }

    /// The message to send: the client's first, then (after [`Client::update`]) its final.
    pub fn message(&self) -> &[u8] {
        self.message.as_bytes()
    }

    /// Whether [`Client::update`] with this server message would find its salted password
    /// kept (and so cost microseconds, not PBKDF2's milliseconds).
    pub fn salted_kept(&self, server_first: &[u8]) -> bool {
        let Ok(first) = ServerFirst::parse(server_first) else {
            return false;
        };
        let Ok(salt) = STANDARD.decode(first.salt) else {
            return false;
        };
        lock()
            .get(&salted_key(&self.password, &salt, first.iterations))
            .is_some()
    }

    /// Reads the server's first message and makes the final one (the proof).
    pub fn update(&mut self, server_first: &[u8]) -> Result<(), ScramError> {
        if !matches!(self.state, State::First) {
            return Err(ScramError::State);
        }
        let text =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let first = ServerFirst::parse(server_first)?;
        if !first.nonce.starts_with(&self.nonce) {
            return Err(ScramError::Nonce);
        }
        if first.iterations > MAX_ITERATION_COUNT {
            return Err(ScramError::Iterations(first.iterations));
        }
        let salt = STANDARD
            .decode(first.salt)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let salted = salted_password(&self.password, &salt, first.iterations);
        let (message, auth_message) =
            client_final(&salted, &self.bare, text, first.nonce, &self.binding);
        self.message = message;
        self.state = State::Final {
            salted,
            auth_message,
        };
        Ok(())
    }

    /// Checks the server's signature: only a server that knows the password can make it.
    pub fn finish(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let State::Final {
            salted,
            auth_message,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::State);
        };
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ScramError::Server(e.chars().take(200).collect()));
        }
        let signature = text
            .strip_prefix("v=")
            .and_then(|v| STANDARD.decode(v).ok())
            .ok_or(ScramError::Malformed("no v= with a base64 signature"))?;
        let server_key = hmac(&salted, b"Server Key");
        let mut mac = Hmac::<Sha256>::new_from_slice(&server_key).map_err(|_| ScramError::State)?;
        mac.update(auth_message.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| ScramError::Signature)
    }
}

/// `r=<nonce>,s=<salt>,i=<count>`, nothing more (what PostgreSQL sends).
struct ServerFirst<'a> {
    nonce: &'a str,
    salt: &'a str,
    iterations: u32,
}

impl<'a> ServerFirst<'a> {
    fn parse(message: &'a [u8]) -> Result<Self, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.split(',');
        let mut field = |name: &'static str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(name))
                .ok_or(ScramError::Malformed("expected r=, s=, i="))
        };
        let nonce = field("r=")?;
        let salt = field("s=")?;
        let iterations = field("i=")?;
        if parts.next().is_some() {
            return Err(ScramError::Malformed("unexpected fields after i="));
        }
        if nonce.is_empty()
            || !nonce
                .bytes()
                .all(|c| (0x21..0x7f).contains(&c) && c != b',')
        {
            return Err(ScramError::Malformed("nonce is not printable"));
        }
        let iterations =
            iterations
                .parse::<u32>()
                .ok()
                .filter(|i| *i > 0)
                .ok_or(ScramError::Malformed(
                    "iteration count is not a positive number",
                ))?;
        Ok(ServerFirst {
            nonce,
            salt,
            iterations,
        })
    }
}

/// The client's final message and the AuthMessage both signatures are over.
fn client_final(
    salted: &[u8; 32],
    client_first_bare: &str,
    server_first: &str,
    nonce: &str,
    binding: &Binding,
) -> (String, String) {
    let client_key = hmac(salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let mut cbind = binding.gs2_header().as_bytes().to_vec();
    cbind.extend_from_slice(binding.data());
    let without_proof = format!("c={},r={nonce}", STANDARD.encode(&cbind));
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let mut proof = client_key;
    for (p, s) in proof.iter_mut().zip(signature) {
        *p ^= s;
    }
    (
        format!("{without_proof},p={}", STANDARD.encode(proof)),
        auth_message,
    )
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 (RFC 5802's `Hi`), or the result of an earlier login.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let key = salted_key(password, salt, iterations);
    if let Some(kept) = lock().get(&key) {
        return *kept;
    }
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut prev = hmac(password, &block);
    let mut hi = prev;
    for _ in 1..iterations {
        prev = hmac(password, &prev);
        for (h, p) in hi.iter_mut().zip(prev) {
            *h ^= p;
        }
    }
    lock().put(key, hi);
    hi
}

/// What a kept salted password is filed under: a digest of its three inputs, so that the
/// table holds no password.
fn salted_key(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [password, salt] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(iterations.to_be_bytes());
    h.finalize().into()
}

type Kept = lru::LruCache<[u8; 32], [u8; 32]>;

fn lock() -> std::sync::MutexGuard<'static, Kept> {
    static KEPT_SALTED: OnceLock<Mutex<Kept>> = OnceLock::new();
    KEPT_SALTED
        .get_or_init(|| {
            Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(KEPT).unwrap_or(NonZeroUsize::MIN),
            ))
        })
        .lock()
        // Nothing panics while the lock is held, but a poisoned cache is still a valid cache.
        .unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    /// RFC 7677's example exchange, byte for byte: a first login computes the salted password,
    /// the second one finds it kept and says the same.
    #[test]
    fn the_rfc_7677_exchange_twice() {
        for round in 0..2 {
            let mut c = Client::with_nonce("pencil", Binding::Unsupported, NONCE.into(), "user");
            assert_eq!(c.message(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
            assert_eq!(c.salted_kept(SERVER_FIRST.as_bytes()), round == 1);
            c.update(SERVER_FIRST.as_bytes()).unwrap();
            assert_eq!(
                std::str::from_utf8(c.message()).unwrap(),
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
            );
            c.finish(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
                .unwrap();
        }
    }

    #[test]
    fn a_wrong_server_is_refused() {
        let exchange = |server_first: &str, server_final: &[u8]| {
            let mut c = Client::with_nonce("pencil", Binding::Unsupported, NONCE.into(), "user");
            c.update(server_first.as_bytes())?;
            c.finish(server_final)
        };
        // A server that does not know the password cannot sign.
        assert_eq!(
            exchange(
                SERVER_FIRST,
                b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
            ),
            Err(ScramError::Signature)
        );
        assert_eq!(
            exchange(SERVER_FIRST, b"e=invalid-proof"),
            Err(ScramError::Server("invalid-proof".into()))
        );
        // Its nonce must extend ours.
        assert_eq!(
            exchange("r=other%hvY,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", b""),
            Err(ScramError::Nonce)
        );
        assert_eq!(
            exchange(
                &format!("r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=100001"),
                b""
            ),
            Err(ScramError::Iterations(100_001))
        );
        for bad in [
            format!("r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0"),
            format!("r={NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,x=1"),
            format!("r={NONCE}x,i=4096"),
            format!("r={NONCE}x,s=!!,i=4096"),
        ] {
            assert!(
                matches!(exchange(&bad, b""), Err(ScramError::Malformed(_))),
                "{bad}"
            );
        }
    }

    /// Another salt or round count (a changed password, a re-created role) is computed afresh.
    #[test]
    fn kept_by_password_salt_and_rounds() {
        let kept = |password: &str, salt: &str, i: u32| {
            Client::with_nonce(password, Binding::Unrequested, NONCE.into(), "")
                .salted_kept(format!("r={NONCE}abc,s={salt},i={i}").as_bytes())
        };
        let login = |password: &str, salt: &str, i: u32| {
            let mut c = Client::with_nonce(password, Binding::Unrequested, NONCE.into(), "");
            c.update(format!("r={NONCE}abc,s={salt},i={i}").as_bytes())
                .unwrap();
            c.message().to_vec()
        };
        assert!(!kept("kept-1", "c2FsdA==", 16));
        let a = login("kept-1", "c2FsdA==", 16);
        assert!(kept("kept-1", "c2FsdA==", 16));
        assert_eq!(login("kept-1", "c2FsdA==", 16), a);
        for (password, salt, i) in [
            ("kept-1", "c2FsdDI=", 16),
            ("kept-1", "c2FsdA==", 17),
            ("kept-2", "c2FsdA==", 16),
        ] {
            assert!(!kept(password, salt, i));
            assert_ne!(login(password, salt, i), a);
            assert!(kept(password, salt, i));
        }
    }
}
