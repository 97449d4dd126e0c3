//! An SSH target's `ssh:` section: which host key the agents see, which credential the gateway
//! logs in upstream with, how the target's own host key is checked. Key files are only checked
//! to exist here; they are read (and their permissions checked) when a session needs them, so
//! that a rotated key is picked up without a reload.

use std::{path::PathBuf, time::Duration};

use super::super::{
    doc::SshDoc,
    model::{SshHostKey, SshTarget, SshUpstreamAuth},
};
use super::Merger;

/// A per-session user certificate lives this long unless the target says otherwise: long
/// enough for the login, short enough to be useless if it leaked.
const DEFAULT_USER_CERT_TTL: Duration = Duration::from_secs(300);
/// An hour at most: the certificate only has to outlive the login.
const MAX_USER_CERT_TTL_SECS: u64 = 3600;
/// How long an agent has to log in, unless the target says otherwise.
const DEFAULT_LOGIN_TIMEOUT_SECS: u64 = 20;
const MAX_LOGIN_TIMEOUT_SECS: u64 = 300;

impl Merger {
    pub(super) fn ssh_settings(
        &mut self,
        file: &std::path::Path,
        target: &str,
        ssh: Option<SshDoc>,
    ) -> Option<SshTarget> {
        let Some(ssh) = ssh else {
            self.problem(
                file,
                format!(
                    "target `{target}` speaks ssh and needs an `ssh:` section (host key, upstream credential, known_hosts)"
                ),
            );
            return None;
        };
        let mut ok = true;
        let mut problem = |m: &mut Merger, message: String| {
            m.problem(file, format!("target `{target}`: {message}"));
            ok = false;
        };
        let host_key = match (ssh.host_ca_key, ssh.host_key) {
            (Some(ca), None) => Some(SshHostKey::Certified {
                ca_key: PathBuf::from(ca),
                names: ssh.host_names,
            }),
            (None, Some(key)) => {
                if !ssh.host_names.is_empty() {
                    problem(
                        self,
                        "`host_names` go into host certificates and need `host_ca_key`".into(),
                    );
                }
                Some(SshHostKey::Imported {
                    key: PathBuf::from(key),
                })
            }
            (Some(_), Some(_)) => {
                problem(self, "give `host_ca_key` or `host_key`, not both".into());
                None
            }
            (None, None) => {
                problem(
                    self,
                    "`ssh:` needs `host_ca_key` (host certificates) or `host_key` (the target's own key, imported)".into(),
                );
                None
            }
        };
        let upstream_auth = match (ssh.user_ca_key, ssh.private_key) {
            (Some(ca), None) => Some(SshUpstreamAuth::UserCa {
                ca_key: PathBuf::from(ca),
            }),
            (None, Some(key)) => Some(SshUpstreamAuth::StaticKey {
                key: PathBuf::from(key),
            }),
            (Some(_), Some(_)) => {
                problem(self, "give `user_ca_key` or `private_key`, not both".into());
                None
            }
            (None, None) => {
                problem(
                    self,
                    "`ssh:` needs `user_ca_key` (per-session user certificates) or `private_key` (a static key)".into(),
                );
                None
            }
        };
        let ttl = ssh
            .user_cert_ttl_secs
            .unwrap_or(DEFAULT_USER_CERT_TTL.as_secs());
        if ttl == 0 || ttl > MAX_USER_CERT_TTL_SECS {
            problem(
                self,
                format!("`user_cert_ttl_secs` must be between 1 and {MAX_USER_CERT_TTL_SECS}"),
            );
        }
        let login_timeout = ssh.login_timeout_secs.unwrap_or(DEFAULT_LOGIN_TIMEOUT_SECS);
        if login_timeout == 0 || login_timeout > MAX_LOGIN_TIMEOUT_SECS {
            problem(
                self,
                format!("`login_timeout_secs` must be between 1 and {MAX_LOGIN_TIMEOUT_SECS}"),
            );
        }
        let known_hosts = PathBuf::from(ssh.known_hosts);
        let files = [
            host_key.as_ref().map(|k| match k {
                SshHostKey::Certified { ca_key, .. } => ca_key.clone(),
                SshHostKey::Imported { key } => key.clone(),
            }),
            upstream_auth.as_ref().map(|a| match a {
                SshUpstreamAuth::UserCa { ca_key } => ca_key.clone(),
                SshUpstreamAuth::StaticKey { key } => key.clone(),
            }),
            Some(known_hosts.clone()),
        ];
        for path in files.into_iter().flatten() {
            if !path.is_absolute() {
                problem(self, format!("{} must be an absolute path", path.display()));
            } else if let Err(e) = std::fs::metadata(&path) {
                problem(self, format!("{}: {e}", path.display()));
            }
        }
        if !ok {
            return None;
        }
        Some(SshTarget {
            host_key: host_key?,
            upstream_auth: upstream_auth?,
            known_hosts,
            user_cert_ttl: Duration::from_secs(ttl),
            login_timeout: Duration::from_secs(login_timeout),
        })
    }
}
