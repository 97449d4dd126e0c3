//! The `console:` section: the web console's OpenID Connect client and its roles.

use std::{path::Path, time::Duration};

use super::super::{
    doc::{ConsoleDoc, SecretDoc},
    model::{Console, Secret},
};
use super::Merger;

/// Default lifetime of a console sign-in, and the longest allowed.
const DEFAULT_SESSION_TTL_SECS: u64 = 3_600;
const MAX_SESSION_TTL_SECS: u64 = 86_400;

impl Merger {
    pub(super) fn console(&mut self, file: &Path, c: ConsoleDoc) {
        if self.policy.console.is_some() {
            return self.problem(
                file,
                "`console` is already given in another file; keep it in one file".into(),
            );
        }
        let mut problems = Vec::new();
        if c.client_id.trim().is_empty() {
            problems.push("console.client_id must not be empty".to_string());
        }
        match c.redirect_url.parse::<hyper::Uri>() {
            Ok(u) if c.redirect_url.contains('#') || u.host().is_none() => problems.push(format!(
                "console.redirect_url `{}` must be an absolute URL without a fragment",
                c.redirect_url
            )),
            Ok(u) if u.scheme_str() == Some("https") || loopback_http(&u) => {}
            Ok(_) => problems.push(format!(
                "console.redirect_url `{}` must be https (plain http only on a loopback host)",
                c.redirect_url
            )),
            Err(e) => problems.push(format!(
                "console.redirect_url `{}` is not a URL: {e}",
                c.redirect_url
            )),
        }
        let ttl = c.session_ttl_secs.unwrap_or(DEFAULT_SESSION_TTL_SECS);
        if ttl == 0 || ttl > MAX_SESSION_TTL_SECS {
            problems.push(format!(
                "console.session_ttl_secs must be between 1 and {MAX_SESSION_TTL_SECS}"
            ));
        }
        let mut scopes = c.scopes.unwrap_or_default();
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        if let Some(bad) = scopes
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch == '"'))
        {
            problems.push(format!("console.scopes: `{bad}` is not a scope name"));
        }
        let client_secret = match c.client_secret {
            None => None,
            Some(doc) => {
                let secret = match doc {
                    SecretDoc::Env { name } => Secret::Env(name),
                    SecretDoc::File { path } => Secret::File(path.into()),
                };
                match secret.resolve() {
                    Ok(s) if !s.is_empty() => Some(s),
                    Ok(_) => {
                        problems.push("console.client_secret is empty".into());
                        None
                    }
                    Err(e) => {
                        problems.push(format!("console.client_secret: {e}"));
                        None
                    }
                }
            }
        };
        if !problems.is_empty() {
            for p in problems {
                self.problem(file, p);
            }
            return;
        }
        self.console_from = Some(file.to_path_buf());
        self.policy.console = Some(Console {
            identity_provider: c.identity_provider,
            client_id: c.client_id,
            client_secret,
            redirect_url: c.redirect_url,
            scopes,
            session_ttl: Duration::from_secs(ttl),
            auditors: c.auditors,
            admins: c.admins,
        });
    }

    /// The console's provider must be one of the policy's (checked once every file is read).
    pub(super) fn check_console(&mut self) {
        let (Some(c), Some(file)) = (&self.policy.console, self.console_from.clone()) else {
            return;
        };
        if !self
            .policy
            .identity_providers
            .iter()
            .any(|p| p.name == c.identity_provider)
        {
            let name = c.identity_provider.clone();
            self.problem(
                &file,
                format!(
                    "console.identity_provider `{name}` is not an identity provider of the policy"
                ),
            );
        }
    }
}

/// `http://` is allowed for a console reached on loopback (a developer's machine, tests).
fn loopback_http(u: &hyper::Uri) -> bool {
    let host = u.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    u.scheme_str() == Some("http")
        && (host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    use crate::policy::{load_dir, test_support::*, ConsoleRole};

    fn console_dir(tag: &str, console: &str) -> std::path::PathBuf {
        let d = valid_dir(
            tag,
            "  - name: ci-db\n    when: {workloads: [ci]}\n    targets: [db]\n",
        );
        write(
            &d,
            "d-console.yaml",
            &format!("version: 2\nconsole:\n{console}"),
        );
        d
    }

    #[test]
    fn a_console_section_is_read_with_its_roles() {
        let d = console_dir(
            "console-ok",
            "  identity_provider: corp\n  client_id: agentgate-console\n  redirect_url: https://gw.example:9443/console/callback\n  scopes: [groups]\n  auditors: [security]\n  admins: [sec-admins]\n",
        );
        let p = load_dir(&d).expect("valid");
        let c = p.console.expect("console");
        assert_eq!(c.scopes, vec!["openid", "groups"]);
        assert_eq!(c.session_ttl.as_secs(), 3600);
        assert_eq!(c.client_secret, None);
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(c.role(&g(&["dba"])), ConsoleRole::Approver);
        assert_eq!(c.role(&g(&["dba", "security"])), ConsoleRole::Auditor);
        assert_eq!(c.role(&g(&["sec-admins"])), ConsoleRole::Admin);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_bad_console_section_is_refused_with_the_reason() {
        for (console, why) in [
            ("  identity_provider: nope\n  client_id: c\n  redirect_url: https://gw/console/callback\n", "not an identity provider"),
            ("  identity_provider: corp\n  client_id: c\n  redirect_url: http://gw.example/console/callback\n", "must be https"),
            ("  identity_provider: corp\n  client_id: c\n  redirect_url: http://127.0.0.1:1/cb#x\n", "without a fragment"),
            ("  identity_provider: corp\n  client_id: ''\n  redirect_url: http://127.0.0.1:1/cb\n", "client_id"),
            ("  identity_provider: corp\n  client_id: c\n  redirect_url: http://[::1]:1/cb\n  session_ttl_secs: 0\n", "session_ttl_secs"),
            ("  identity_provider: corp\n  client_id: c\n  redirect_url: http://localhost:1/cb\n  client_secret: {from: file, path: /nonexistent/secret}\n", "client_secret"),
            ("  identity_provider: corp\n  client_id: c\n  redirect_url: http://localhost:1/cb\n  role: x\n", "unknown field"),
        ] {
            let d = console_dir("console-bad", console);
            let e = load_dir(&d).expect_err(console).to_string();
            assert!(e.contains(why), "{console}: {e}");
            std::fs::remove_dir_all(&d).ok();
        }
    }
}
