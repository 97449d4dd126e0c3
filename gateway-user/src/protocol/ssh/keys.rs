//! SSH keys and certificates the gateway holds: the host key the agent sees, the credential it
//! logs in upstream with, and the check of the target's host key.
//!
//! - Host key toward the agent: an Ed25519 key derived from the gateway secret and the target's
//!   name ([`derive_host_key`]), so every node presents the same key for a target, with a
//!   short-lived host certificate ([`host_certificate`]) that clients trusting the CA accept.
//! - Upstream credential: a per-session user certificate ([`user_certificate`]) on a fresh key
//!   ([`session_key`]), or a static private key ([`load_private_key`]).
//! - Upstream host key: [`HostKeyCheck`], an OpenSSH known_hosts file read the way `ssh` reads
//!   it (plain, hashed, `@cert-authority`, `@revoked` lines), failing closed.
//!
//! Files holding credentials (private keys, the secret) must not be readable by group or others:
//! the gateway refuses them rather than use a key that may already have leaked.

use std::{
    fmt,
    fs::File,
    io::Read,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use russh::keys::ssh_key::{
    self,
    certificate::{Builder, CertType},
    known_hosts::{HostPatterns, Marker},
    private::Ed25519Keypair,
    public::KeyData,
    Algorithm, EcdsaCurve, HashAlg,
};
pub use russh::keys::{Certificate, PrivateKey, PublicKey, PublicKeyOrCertificate};
use sha2::Sha256;

/// Allowance for the clocks of the gateway and of the hosts that check its certificates.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Shortest gateway secret accepted: 256 bits, the Ed25519 seed's size.
pub const MIN_SECRET_LEN: usize = 32;

/// Largest credential file read (keys and secrets are a few KiB; this bounds a mistaken path).
const MAX_FILE_LEN: u64 = 1 << 20;

/// HKDF `info` prefix for per-target host keys: a version, so a later scheme derives other keys
/// from the same secret, and a purpose, so no other use of the secret collides with this one.
const HOST_KEY_INFO: &[u8] = b"agentgate ssh host key v1\0";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: readable by group or others (mode {mode:03o}); it holds a credential, \
         make it owner-only (chmod 600)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: larger than {MAX_FILE_LEN} bytes, not a key or secret file")]
    TooLarge { path: PathBuf },
    #[error("{path}: not an OpenSSH private key: {reason}")]
    PrivateKey { path: PathBuf, reason: String },
    #[error(
        "{path}: the private key is encrypted with a passphrase; the gateway needs it unencrypted"
    )]
    Encrypted { path: PathBuf },
    #[error("{path}: the secret has {len} bytes, at least {MIN_SECRET_LEN} are needed")]
    ShortSecret { path: PathBuf, len: usize },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("{path}:{line}: {reason}")]
    KnownHosts {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Why a target's host key was refused. Every variant is a refusal: the caller logs it and ends
/// the session.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {key} is marked @revoked in {path}:{line}")]
    Revoked {
        key: String,
        path: PathBuf,
        line: usize,
    },
    #[error(
        "host key {key} of {names} is not in {path}{}",
        other_lines_note(.other_lines)
    )]
    Unknown {
        key: String,
        names: String,
        path: PathBuf,
        /// Lines for these names that hold other keys (a changed key, or another type).
        other_lines: Vec<usize>,
    },
    #[error(
        "host certificate {key_id:?} (key {key}) signed by {ca}: no @cert-authority line for \
         {names} in {path} lists that CA, and the certificate's key is not listed as a plain key"
    )]
    UnknownCa {
        key_id: String,
        key: String,
        ca: String,
        names: String,
        path: PathBuf,
    },
    #[error(
        "host certificate {key_id:?} signed by {ca} (trusted in {path}:{line}) refused: {reason}"
    )]
    BadCertificate {
        key_id: String,
        ca: String,
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn other_lines_note(lines: &[usize]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = lines.iter().map(usize::to_string).collect();
        format!(
            " (other keys for these names on line {}: the target's key changed?)",
            list.join(", ")
        )
    }
}

/// Opens a credential file, refusing one that group or others can read, and reads it whole.
/// The mode is taken from the opened file, not the path, so the file checked is the file read.
fn read_credential(path: &Path) -> Result<Vec<u8>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Reads an unencrypted OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`), owner-only.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let bytes = read_credential(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| KeyError::PrivateKey {
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })?;
    let key = PrivateKey::from_openssh(text).map_err(|e| KeyError::PrivateKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if key.is_encrypted() {
        return Err(KeyError::Encrypted {
            path: path.to_path_buf(),
        });
    }
    Ok(key)
}

/// Reads the gateway secret the per-target host keys derive from: owner-only, at least
/// [`MIN_SECRET_LEN`] bytes, used as is (binary or text alike).
pub fn load_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let bytes = read_credential(path)?;
    if bytes.len() < MIN_SECRET_LEN {
        return Err(KeyError::ShortSecret {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// The Ed25519 host key the gateway presents for `target`: HKDF-SHA256 over the gateway secret
/// with the target's name in the domain-separated `info`, so every node holding the secret
/// presents the same key for a target, and a key of one target says nothing about another's.
pub fn derive_host_key(secret: &[u8], target: &str) -> PrivateKey {
    let hk = Hkdf::<Sha256>::new(None, secret);
    let mut info = Vec::with_capacity(HOST_KEY_INFO.len() + target.len());
    info.extend_from_slice(HOST_KEY_INFO);
    info.extend_from_slice(target.as_bytes());
    let mut seed = [0u8; 32];
    hk.expand(&info, &mut seed)
        .expect("32 bytes is within HKDF-SHA256's output limit");
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(format!("agentgate host key for {target}"));
    key
}

/// A fresh Ed25519 key for one upstream session's user certificate; never written anywhere.
pub fn session_key() -> PrivateKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

/// What a user certificate permits besides a pty. Everything off by default: forwarding only
/// when a rule allows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserExtensions {
    pub port_forwarding: bool,
    pub agent_forwarding: bool,
    pub x11_forwarding: bool,
}

fn unix_secs(t: SystemTime) -> Result<u64, KeyError> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| KeyError::Certificate("the clock is before 1970".into()))
}

/// A certificate builder with a random nonce and serial, valid from `now` less [`CLOCK_SKEW`] for
/// `valid_for`.
fn builder(subject: &PublicKey, now: SystemTime, valid_for: Duration) -> Result<Builder, KeyError> {
    let now = unix_secs(now)?;
    let after = now.saturating_sub(CLOCK_SKEW.as_secs());
    let before = now.saturating_add(valid_for.as_secs());
    let mut nonce = [0u8; Builder::RECOMMENDED_NONCE_SIZE * 2];
    rand::rng().fill_bytes(&mut nonce);
    let mut b = Builder::new(nonce.to_vec(), subject.key_data().clone(), after, before)
        .map_err(cert_err)?;
    b.serial(rand::rng().next_u64()).map_err(cert_err)?;
    Ok(b)
}

fn cert_err(e: ssh_key::Error) -> KeyError {
    KeyError::Certificate(e.to_string())
}

/// An OpenSSH host certificate for `host`, valid for `principals` (the names clients dial),
/// signed by `ca`. Refuses an empty principal list: that would be valid for every host.
pub fn host_certificate(
    ca: &PrivateKey,
    host: &PublicKey,
    principals: &[String],
    now: SystemTime,
    valid_for: Duration,
) -> Result<Certificate, KeyError> {
    let first = principals.first().ok_or_else(|| {
        KeyError::Certificate("a host certificate needs at least one principal".into())
    })?;
    let mut b = builder(host, now, valid_for)?;
    b.cert_type(CertType::Host).map_err(cert_err)?;
    b.key_id(format!("agentgate host {first}"))
        .map_err(cert_err)?;
    for p in principals {
        if p.is_empty() {
            return Err(KeyError::Certificate("an empty host principal".into()));
        }
        b.valid_principal(p.as_str()).map_err(cert_err)?;
    }
    b.sign(ca).map_err(cert_err)
}

/// An OpenSSH user certificate for one upstream session: principal `login`, `key_id` naming who
/// and which session (the target's auth log prints it), no critical options, `permit-pty` and
/// the forwarding extensions `ext` asks for.
pub fn user_certificate(
    ca: &PrivateKey,
    user_key: &PublicKey,
    login: &str,
    key_id: &str,
    now: SystemTime,
    valid_for: Duration,
    ext: &UserExtensions,
) -> Result<Certificate, KeyError> {
    if login.is_empty() {
        return Err(KeyError::Certificate(
            "a user certificate needs a login".into(),
        ));
    }
    let mut b = builder(user_key, now, valid_for)?;
    b.cert_type(CertType::User).map_err(cert_err)?;
    b.key_id(key_id).map_err(cert_err)?;
    b.valid_principal(login).map_err(cert_err)?;
    b.extension("permit-pty", "").map_err(cert_err)?;
    if ext.port_forwarding {
        b.extension("permit-port-forwarding", "")
            .map_err(cert_err)?;
    }
    if ext.agent_forwarding {
        b.extension("permit-agent-forwarding", "")
            .map_err(cert_err)?;
    }
    if ext.x11_forwarding {
        b.extension("permit-X11-forwarding", "").map_err(cert_err)?;
    }
    b.sign(ca).map_err(cert_err)
}

/// One known_hosts line.
#[derive(Clone, Debug)]
struct Entry {
    line: usize,
    marker: Option<Marker>,
    hosts: HostPatterns,
    key: KeyData,
}

/// A target's known_hosts, read once, checked against the host key the target presents.
#[derive(Clone)]
pub struct HostKeyCheck {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl fmt::Debug for HostKeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKeyCheck")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish()
    }
}

fn fingerprint(key: &KeyData) -> String {
    format!("{} {}", key.algorithm(), key.fingerprint(HashAlg::Sha256))
}

impl HostKeyCheck {
    /// Reads an OpenSSH known_hosts file. A line this cannot parse (unknown marker, bad key, a
    /// certificate where a key belongs) is an error naming the line, not skipped: the operator
    /// meant something by it, and guessing what is not a host-key check.
    pub fn load(known_hosts: &Path) -> Result<HostKeyCheck, KeyError> {
        let text = std::fs::read_to_string(known_hosts).map_err(|source| KeyError::Io {
            path: known_hosts.to_path_buf(),
            source,
        })?;
        Self::parse(known_hosts, &text)
    }

    /// [`HostKeyCheck::load`] on text already read; `path` names it in messages.
    pub fn parse(path: &Path, text: &str) -> Result<HostKeyCheck, KeyError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| KeyError::KnownHosts {
                path: path.to_path_buf(),
                line,
                reason,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut fields = trimmed.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = if first.starts_with('@') {
                let m = match first {
                    "@cert-authority" => Marker::CertAuthority,
                    "@revoked" => Marker::Revoked,
                    other => return Err(err(format!("unknown marker {other:?}"))),
                };
                first = fields
                    .next()
                    .ok_or_else(|| err("a marker and nothing after it".into()))?;
                Some(m)
            } else {
                None
            };
            let hosts: HostPatterns = first
                .parse()
                .map_err(|e| err(format!("host names {first:?}: {e}")))?;
            let (Some(algo), Some(b64)) = (fields.next(), fields.next()) else {
                return Err(err("no key after the host names".into()));
            };
            if algo.ends_with("-cert-v01@openssh.com") {
                return Err(err(
                    "a certificate where a key belongs (list its CA with @cert-authority)".into(),
                ));
            }
            let key = PublicKey::from_openssh(&format!("{algo} {b64}"))
                .map_err(|e| err(format!("key {algo}: {e}")))?;
            let key = key.key_data().clone();
            entries.push(Entry {
                line,
                marker,
                hosts,
                key,
            });
        }
        Ok(HostKeyCheck {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Whether any `@cert-authority` line is present: then the client toward the target should
    /// advertise the certificate host-key algorithms (russh's `Preferred::host_key_certificates`)
    /// so a target with a host certificate presents it.
    pub fn has_cert_authorities(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.marker == Some(Marker::CertAuthority))
    }

    /// The host-key algorithms whose certificate variants a client toward the target advertises
    /// (russh's `Preferred::host_key_certificates`) when [`has_cert_authorities`] is true: those
    /// russh's client offers as plain keys by default, most preferred first. SHA-1 RSA is left out.
    ///
    /// [`has_cert_authorities`]: HostKeyCheck::has_cert_authorities
    pub fn certificate_algorithms() -> Vec<Algorithm> {
        vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]
    }

    /// The names a target is checked under, as `ssh` looks a host up in known_hosts: the
    /// target's name, its host names, and the address dialled, `addr` for port 22 and
    /// `[addr]:port` otherwise (IPv6 without brackets on port 22, as OpenSSH writes it).
    pub fn names(target: &str, host_names: &[String], dst: SocketAddr) -> Vec<String> {
        let mut names = Vec::with_capacity(host_names.len() + 2);
        names.push(target.to_string());
        names.extend(host_names.iter().cloned());
        let ip = dst.ip().to_canonical();
        names.push(if dst.port() == 22 {
            ip.to_string()
        } else {
            format!("[{ip}]:{}", dst.port())
        });
        names
    }

    /// Checks the key or certificate the target presented, for the names it was dialled by
    /// (the target's name, its host names, `addr` and `[addr]:port` for a port other than 22).
    pub fn check(
        &self,
        names: &[String],
        key: &PublicKeyOrCertificate,
    ) -> Result<(), HostKeyError> {
        self.check_at(names, key, SystemTime::now())
    }

    /// [`HostKeyCheck::check`] at a given time (certificates' validity).
    pub fn check_at(
        &self,
        names: &[String],
        key: &PublicKeyOrCertificate,
        now: SystemTime,
    ) -> Result<(), HostKeyError> {
        let names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.check_plain(&names, key.key_data())
            }
            PublicKeyOrCertificate::Certificate(cert) => self.check_cert(&names, cert, now),
        }
    }

    /// A revoked key is refused for every host, whatever names its line lists: stricter than
    /// OpenSSH (which reads only the lines for the host), and a revocation is meant that way.
    fn revoked(&self, key: &KeyData) -> Result<(), HostKeyError> {
        match self
            .entries
            .iter()
            .find(|e| e.marker == Some(Marker::Revoked) && &e.key == key)
        {
            Some(e) => Err(HostKeyError::Revoked {
                key: fingerprint(key),
                path: self.path.clone(),
                line: e.line,
            }),
            None => Ok(()),
        }
    }

    fn check_plain(&self, names: &[String], key: &KeyData) -> Result<(), HostKeyError> {
        self.revoked(key)?;
        let mut other = Vec::new();
        for e in self.entries.iter().filter(|e| e.marker.is_none()) {
            if !hosts_match(&e.hosts, names) {
                continue;
            }
            if &e.key == key {
                return Ok(());
            }
            other.push(e.line);
        }
        Err(HostKeyError::Unknown {
            key: fingerprint(key),
            names: names.join(", "),
            path: self.path.clone(),
            other_lines: other,
        })
    }

    fn check_cert(
        &self,
        names: &[String],
        cert: &Certificate,
        now: SystemTime,
    ) -> Result<(), HostKeyError> {
        let ca = cert.signature_key();
        self.revoked(cert.public_key())?;
        self.revoked(ca)?;
        let Some(entry) = self.entries.iter().find(|e| {
            e.marker == Some(Marker::CertAuthority) && &e.key == ca && hosts_match(&e.hosts, names)
        }) else {
            // As OpenSSH does: a certificate from no CA listed for the host is checked as the
            // plain key inside it, which a plain line may pin.
            return self
                .check_plain(names, cert.public_key())
                .map_err(|e| match e {
                    HostKeyError::Unknown { .. } => HostKeyError::UnknownCa {
                        key_id: cert.key_id().to_string(),
                        key: fingerprint(cert.public_key()),
                        ca: fingerprint(ca),
                        names: names.join(", "),
                        path: self.path.clone(),
                    },
                    other => other,
                });
        };
        let bad = |reason: String| HostKeyError::BadCertificate {
            key_id: cert.key_id().to_string(),
            ca: fingerprint(ca),
            path: self.path.clone(),
            line: entry.line,
            reason,
        };
        if cert.cert_type() != CertType::Host {
            return Err(bad(format!(
                "a {:?} certificate, not a host certificate",
                cert.cert_type()
            )));
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|_| bad("the clock is before 1970".into()))?;
        if now < cert.valid_after() {
            return Err(bad(format!(
                "not valid yet (valid after {}, now {now})",
                cert.valid_after()
            )));
        }
        if now >= cert.valid_before() {
            return Err(bad(format!(
                "expired (valid before {}, now {now})",
                cert.valid_before()
            )));
        }
        // Signature over the certificate by the listed CA (validate_at checks the time again).
        cert.validate_at(now, &[ca.fingerprint(HashAlg::Sha256)])
            .map_err(|e| bad(format!("signature does not verify: {e}")))?;
        if !cert.critical_options().is_empty() {
            // OpenSSH refuses host certificates with critical options: none is defined for hosts.
            let opts: Vec<&String> = cert.critical_options().keys().collect();
            return Err(bad(format!(
                "critical options {opts:?} on a host certificate"
            )));
        }
        // An empty principal list is a certificate for every host; OpenSSH takes it, the gateway
        // does not.
        let principals = cert.valid_principals();
        if !principals
            .iter()
            .any(|p| names.iter().any(|n| p.eq_ignore_ascii_case(n)))
        {
            return Err(bad(format!(
                "principals {principals:?} name none of {}",
                names.join(", ")
            )));
        }
        Ok(())
    }
}

/// Whether a known_hosts host field covers one of `names`, as OpenSSH's `match_hostname`: a
/// negated pattern that matches rules the line out for that name.
fn hosts_match(hosts: &HostPatterns, names: &[String]) -> bool {
    match hosts {
        HostPatterns::HashedName { salt, hash } => names.iter().any(|n| {
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(n.as_bytes());
            mac.verify_slice(hash).is_ok()
        }),
        HostPatterns::Patterns(patterns) => names.iter().any(|n| {
            let mut positive = false;
            for p in patterns {
                let p = p.to_ascii_lowercase();
                if let Some(neg) = p.strip_prefix('!') {
                    if glob(neg.as_bytes(), n.as_bytes()) {
                        return false;
                    }
                } else if glob(p.as_bytes(), n.as_bytes()) {
                    positive = true;
                }
            }
            positive
        }),
    }
}

/// `*` and `?` wildcards, as OpenSSH's `match_pattern` (no character classes).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative with one backtrack point: linear enough for host names, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
#[path = "keys_sshd_tests.rs"]
mod sshd_tests;
#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
