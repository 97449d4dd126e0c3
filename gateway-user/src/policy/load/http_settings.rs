//! An HTTP target's `http:` section: the profile, the certificate authority whose leaves the
//! agents see, the upstream TLS and whose identity the target sees. Key files are only checked
//! to exist here; they are read when a connection needs them, so a rotated CA is picked up
//! without a reload.

use std::{path::PathBuf, time::Duration};

use ipnet::IpNet;

use super::super::{
    doc::HttpDoc,
    model::{ClientTls, HttpProfile, HttpServerTls, HttpTarget, UpstreamIdentity},
};
use super::Merger;

/// Request bodies are judged and recorded whole: a Kubernetes object is rarely above a few
/// hundred KiB (etcd's own limit is 1.5 MiB).
const DEFAULT_MAX_BODY_BYTES: usize = 3 << 20;
const MAX_BODY_BYTES_LIMIT: usize = 64 << 20;
const DEFAULT_LOGIN_TIMEOUT_SECS: u64 = 20;
const MAX_LOGIN_TIMEOUT_SECS: u64 = 300;

impl Merger {
    pub(super) fn http_settings(
        &mut self,
        file: &std::path::Path,
        target: &str,
        addresses: &[IpNet],
        http: Option<HttpDoc>,
        has_credential: bool,
    ) -> Option<HttpTarget> {
        let Some(http) = http else {
            self.problem(
                file,
                format!(
                    "target `{target}` speaks http and needs an `http:` section (at least `upstream_tls`)"
                ),
            );
            return None;
        };
        let mut ok = true;
        let mut problem = |m: &mut Merger, message: String| {
            m.problem(file, format!("target `{target}`: {message}"));
            ok = false;
        };
        let profile = http.profile.unwrap_or(HttpProfile::Plain);
        let upstream_identity = http.upstream_identity.unwrap_or(match profile {
            HttpProfile::Kubernetes => UpstreamIdentity::Impersonate,
            HttpProfile::Plain => UpstreamIdentity::Credential,
        });
        if upstream_identity == UpstreamIdentity::Impersonate && profile != HttpProfile::Kubernetes
        {
            problem(
                self,
                "`upstream_identity: impersonate` is for `profile: kubernetes`".into(),
            );
        }
        if upstream_identity == UpstreamIdentity::Impersonate
            && !has_credential
            && http.upstream_client_tls.is_none()
        {
            problem(
                self,
                "impersonation needs the gateway's own credential upstream: a `credential` (bearer token) or `upstream_client_tls`".into(),
            );
        }
        if upstream_identity == UpstreamIdentity::PassThrough && has_credential {
            problem(
                self,
                "`upstream_identity: pass-through` forwards the agent's own credential; drop the target's `credential`".into(),
            );
        }
        let max_body_bytes = http.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=MAX_BODY_BYTES_LIMIT).contains(&max_body_bytes) {
            problem(
                self,
                format!("`max_body_bytes` must be between 1024 and {MAX_BODY_BYTES_LIMIT}"),
            );
        }
        let login_timeout = http
            .login_timeout_secs
            .unwrap_or(DEFAULT_LOGIN_TIMEOUT_SECS);
        if login_timeout == 0 || login_timeout > MAX_LOGIN_TIMEOUT_SECS {
            problem(
                self,
                format!("`login_timeout_secs` must be between 1 and {MAX_LOGIN_TIMEOUT_SECS}"),
            );
        }
        let tls = http.tls.map(|t| HttpServerTls {
            ca_cert: PathBuf::from(t.ca_cert),
            ca_key: PathBuf::from(t.ca_key),
            names: t.names,
        });
        let upstream_client_tls = http.upstream_client_tls.map(|c| ClientTls {
            cert_file: c.cert_file.into(),
            key_file: c.key_file.into(),
        });
        let mut files: Vec<PathBuf> = Vec::new();
        if let Some(t) = &tls {
            files.extend([t.ca_cert.clone(), t.ca_key.clone()]);
            if t.names.iter().any(|n| n.is_empty()) {
                problem(self, "`tls.names` has an empty name".into());
            }
        }
        if let Some(c) = &upstream_client_tls {
            files.extend([c.cert_file.clone(), c.key_file.clone()]);
        }
        for path in files {
            if !path.is_absolute() {
                problem(self, format!("{} must be an absolute path", path.display()));
            } else if let Err(e) = std::fs::metadata(&path) {
                problem(self, format!("{}: {e}", path.display()));
            }
        }
        let upstream_tls = self.upstream_tls(file, target, addresses, http.upstream_tls);
        if !ok {
            return None;
        }
        Some(HttpTarget {
            profile,
            tls,
            upstream_tls,
            upstream_client_tls,
            upstream_identity,
            max_body_bytes,
            login_timeout: Duration::from_secs(login_timeout),
        })
    }
}
