//! Reading a policy directory: YAML syntax, schema and cross-file checks, each error with the
//! file and, where the YAML parser knows it, the line and column.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use globset::{GlobBuilder, GlobMatcher};
use ipnet::IpNet;

use super::{
    doc::{ApprovalDoc, FileDoc, JwksDoc, MaskDoc, PostgresDoc, SecretDoc, StrategyDoc},
    model::{
        ClientTls, GatewaySettings, IdentityProvider, Jwks, Policy, PostgresTarget, Protocol, Rule,
        Secret, Target, TargetSettings, TokenSource,
    },
    yaml,
};

use crate::mask::rules::{MaskSpec, Strategy};

mod console;
mod http_settings;
mod sections;
mod ssh_settings;
mod upstream_tls;
mod workloads;

pub const SUPPORTED_VERSION: u32 = 2;
/// `approval.max_rows` above this is surely a typo (a trial run of that size would not be).
const MAX_ROWS_LIMIT: u64 = 1_000_000_000;

/// One problem found in a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => {
                write!(f, "{}:{}:{}: {}", self.file.display(), l, c, self.message)
            }
            _ => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("policy directory {0} holds no .yaml or .yml file")]
    Empty(PathBuf),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Loads and validates every `*.yaml` / `*.yml` file in `dir` (sorted by name).
pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| PolicyError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::Empty(dir.to_path_buf()));
    }
    let mut docs = Vec::new();
    let mut texts = HashMap::new();
    let mut problems = Vec::new();
    let mut hasher = Fnv64::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let name = file.file_name().map(|n| n.as_encoded_bytes());
                hasher.write(name.unwrap_or_default());
                hasher.write(text.as_bytes());
                match parse_file(&file, &text) {
                    Ok(doc) => docs.push((file.clone(), doc)),
                    Err(p) => problems.push(p),
                }
                texts.insert(file, text);
            }
            Err(e) => problems.push(Problem {
                file,
                line: None,
                column: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(PolicyError::Invalid(problems));
    }
    let mut policy = merge(docs).map_err(|mut problems| {
        for p in &mut problems {
            locate(p, &texts);
        }
        PolicyError::Invalid(problems)
    })?;
    policy.version = format!("{:016x}", hasher.0);
    Ok(policy)
}

/// Cross-file problems come from the merged model, which has no positions; point at the
/// definition they are about: the first `name: X` line for the first `X` quoted in the message.
fn locate(p: &mut Problem, texts: &HashMap<PathBuf, String>) {
    if p.line.is_some() {
        return;
    }
    let (Some(text), Some(name)) = (texts.get(&p.file), p.message.split('`').nth(1)) else {
        return;
    };
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(value) = trimmed.strip_prefix("name:") else {
            continue;
        };
        if value.trim().trim_matches(['"', '\'']) == name {
            p.line = Some(i + 1);
            p.column = Some(line.len() - line.trim_start().len() + 1);
            return;
        }
    }
}

/// FNV-1a over the files' names and contents: identifies a policy version in logs and `status`.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn parse_file(file: &Path, text: &str) -> Result<FileDoc, Problem> {
    let problem = |line, column, message| Problem {
        file: file.to_path_buf(),
        line,
        column,
        message,
    };
    let doc: FileDoc = yaml::from_str(text).map_err(|e| problem(e.line, e.column, e.message))?;
    if doc.version != SUPPORTED_VERSION {
        let hint = if doc.version == 1 {
            ": version 2 adds identity_providers, a token source per workload and rules \
             (default deny); see docs/policy.md"
        } else {
            ""
        };
        return Err(problem(
            Some(1),
            Some(1),
            format!(
                "unsupported policy version {} (this gateway reads version {SUPPORTED_VERSION}){hint}",
                doc.version
            ),
        ));
    }
    Ok(doc)
}

fn merge(docs: Vec<(PathBuf, FileDoc)>) -> Result<Policy, Vec<Problem>> {
    let mut m = Merger::default();
    for (file, doc) in docs {
        m.file(file, doc);
    }
    m.cross_check();
    if m.problems.is_empty() {
        Ok(m.policy)
    } else {
        Err(m.problems)
    }
}

#[derive(Default)]
struct Merger {
    policy: Policy,
    problems: Vec<Problem>,
    gateway_from: Option<PathBuf>,
    console_from: Option<PathBuf>,
    names: HashMap<(&'static str, String), PathBuf>,
    claimed: HashMap<(IpNet, u16), String>,
    /// Targets whose protocol settings are in error (already reported): rules naming them are
    /// not checked against the stand-in settings they are listed with.
    broken_targets: std::collections::HashSet<String>,
}

impl Merger {
    fn problem(&mut self, file: &Path, message: String) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message,
        });
    }

    /// Records a definition's name; a second definition of the same kind and name is an error.
    fn name(&mut self, kind: &'static str, name: &str, file: &Path) {
        if let Some(first) = self
            .names
            .insert((kind, name.to_string()), file.to_path_buf())
        {
            self.problem(
                file,
                format!("{kind} `{name}` is already defined in {}", first.display()),
            );
        }
    }

    fn file(&mut self, file: PathBuf, doc: FileDoc) {
        if let Some(g) = doc.gateway {
            if let Some(first) = self.gateway_from.clone() {
                self.problem(
                    &file,
                    format!(
                        "`gateway` settings are already given in {}; keep them in one file",
                        first.display()
                    ),
                );
            } else {
                let d = GatewaySettings::default();
                self.policy.gateway = GatewaySettings {
                    listen_port: g.listen_port.unwrap_or(d.listen_port),
                    connect_timeout_ms: g.connect_timeout_ms.unwrap_or(d.connect_timeout_ms),
                    idle_timeout_ms: g.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
                    max_connections: g.max_connections.unwrap_or(d.max_connections),
                    max_connections_per_workload: g
                        .max_connections_per_workload
                        .unwrap_or(d.max_connections_per_workload),
                    approval_webhooks: Vec::new(),
                    record_result_rows: g
                        .record_results
                        .as_ref()
                        .map_or(d.record_result_rows, |r| r.max_rows),
                    record_result_bytes: g
                        .record_results
                        .as_ref()
                        .map_or(d.record_result_bytes, |r| r.max_bytes),
                    ssh_host_key_secret: g.ssh_host_key_secret.map(PathBuf::from),
                };
                if self.policy.gateway.record_result_bytes > 16 << 20 {
                    self.problem(
                        &file,
                        "gateway.record_results.max_bytes must be at most 16777216".into(),
                    );
                }
                for w in g.approval_webhooks {
                    match crate::approval::Webhook::new(w.url, w.format) {
                        Ok(hook) => self.policy.gateway.approval_webhooks.push(hook),
                        Err(e) => self.problem(&file, format!("gateway.approval_webhooks: {e}")),
                    }
                }
                if let Some(key) = g.mask_key {
                    let secret = match key {
                        SecretDoc::Env { name } => Secret::Env(name),
                        SecretDoc::File { path } => Secret::File(path.into()),
                    };
                    match secret.resolve() {
                        // Short keys make the hashes of short values (card numbers, SSNs)
                        // guessable by brute force over the key as well.
                        Ok(k) if k.len() >= 16 => {
                            self.policy.mask_key = Some(k.into_bytes().into());
                        }
                        Ok(_) => {
                            self.problem(&file, "gateway.mask_key must be at least 16 bytes".into())
                        }
                        Err(e) => self.problem(&file, format!("gateway.mask_key: {e}")),
                    }
                }
                if self.policy.gateway.listen_port == 0 {
                    self.problem(&file, "gateway.listen_port must not be 0".into());
                }
                self.gateway_from = Some(file.clone());
            }
        }
        for p in doc.identity_providers {
            self.name("identity provider", &p.name, &file);
            if p.audiences.is_empty() {
                self.problem(
                    &file,
                    format!("identity provider `{}` needs at least one audience", p.name),
                );
            }
            if p.algorithms.is_empty() {
                self.problem(
                    &file,
                    format!(
                        "identity provider `{}` needs at least one algorithm",
                        p.name
                    ),
                );
            }
            // A typo here would switch expiry checking off, so both are bounded.
            if p.max_lifetime_secs == 0 || p.max_lifetime_secs > 86_400 {
                self.problem(
                    &file,
                    format!(
                        "identity provider `{}`: max_lifetime_secs must be between 1 and 86400",
                        p.name
                    ),
                );
            }
            if p.clock_skew_secs > 300 {
                self.problem(
                    &file,
                    format!(
                        "identity provider `{}`: clock_skew_secs must be at most 300",
                        p.name
                    ),
                );
            }
            if let Some(other) = self
                .policy
                .identity_providers
                .iter()
                .find(|o| o.issuer == p.issuer)
            {
                let other = other.name.clone();
                self.problem(
                    &file,
                    format!(
                        "identity providers `{other}` and `{}` have the same issuer `{}`",
                        p.name, p.issuer
                    ),
                );
            }
            if matches!(p.jwks, JwksDoc::Discovery) && !p.issuer.starts_with("https://") {
                self.problem(
                    &file,
                    format!(
                        "identity provider `{}`: discovery needs an https:// issuer",
                        p.name
                    ),
                );
            }
            self.policy.identity_providers.push(IdentityProvider {
                jwks: match p.jwks {
                    JwksDoc::File { path } => Jwks::File(path.into()),
                    JwksDoc::Url { url } => Jwks::Url(url),
                    JwksDoc::Discovery => Jwks::Discovery,
                },
                name: p.name,
                issuer: p.issuer,
                audiences: p.audiences,
                algorithms: p.algorithms.iter().map(|a| a.0).collect(),
                groups_claim: p.groups_claim,
                clock_skew: std::time::Duration::from_secs(p.clock_skew_secs),
                max_lifetime: std::time::Duration::from_secs(p.max_lifetime_secs),
                ca_file: p.ca_file.map(PathBuf::from),
            });
        }
        if let Some(c) = doc.console {
            self.console(&file, c);
        }
        for w in doc.workloads {
            self.workload(&file, w);
        }
        for t in doc.targets {
            self.name("target", &t.name, &file);
            if t.addresses.is_empty() || t.ports.is_empty() {
                self.problem(
                    &file,
                    format!(
                        "target `{}` needs at least one address and one port",
                        t.name
                    ),
                );
            }
            if t.ports.contains(&0) {
                self.problem(
                    &file,
                    format!("target `{}`: port 0 is not a destination", t.name),
                );
            }
            let addresses: Vec<IpNet> = t.addresses.iter().map(|a| unmap(a.0)).collect();
            for a in &addresses {
                for p in &t.ports {
                    // The kernel picks the longest matching prefix, the proxy the first target:
                    // overlapping claims would make them disagree, so there must be none.
                    let other = self
                        .claimed
                        .iter()
                        .find(|((n, port), name)| {
                            port == p && **name != t.name && (n.contains(a) || a.contains(n))
                        })
                        .map(|((n, _), name)| (*n, name.clone()));
                    if let Some((n, other)) = other {
                        self.problem(
                            &file,
                            format!(
                                "target `{}`: {a} port {p} overlaps {n} of target `{other}`",
                                t.name
                            ),
                        );
                    }
                    self.claimed.insert((*a, *p), t.name.clone());
                }
            }
            let mut t = t;
            let settings = match (t.protocol, t.postgres.take()) {
                (Protocol::Postgres, Some(pg)) => self
                    .postgres_settings(&file, &t.name, &addresses, pg)
                    .map(TargetSettings::Postgres),
                (Protocol::Postgres, None) => {
                    self.problem(
                        &file,
                        format!(
                            "target `{}` speaks postgres and needs a `postgres:` section (at least `user`)",
                            t.name
                        ),
                    );
                    None
                }
                (_, Some(_)) => {
                    self.problem(
                        &file,
                        format!(
                            "target `{}`: a `postgres:` section needs `protocol: postgres`",
                            t.name
                        ),
                    );
                    None
                }
                (Protocol::Ssh, None) => {
                    let ssh = t.ssh.take();
                    self.ssh_settings(&file, &t.name, ssh)
                        .map(TargetSettings::Ssh)
                }
                (Protocol::Http, None) => {
                    let http = t.http.take();
                    let has_credential = t.credential.is_some();
                    self.http_settings(&file, &t.name, &addresses, http, has_credential)
                        .map(TargetSettings::Http)
                }
                (Protocol::Tcp, None) => Some(TargetSettings::Tcp),
            };
            if t.http.is_some() {
                self.problem(
                    &file,
                    format!(
                        "target `{}`: an `http:` section needs `protocol: http`",
                        t.name
                    ),
                );
            }
            if t.ssh.is_some() {
                self.problem(
                    &file,
                    format!(
                        "target `{}`: an `ssh:` section needs `protocol: ssh`",
                        t.name
                    ),
                );
            }
            if t.protocol == Protocol::Postgres && t.credential.is_none() {
                self.problem(
                    &file,
                    format!(
                        "target `{}` speaks postgres and needs a `credential` for its upstream user",
                        t.name
                    ),
                );
            }
            // Settings in error are a problem, so this policy never comes into force; the target
            // stays listed so that rules naming it are not reported as naming an unknown one.
            if settings.is_none() {
                self.broken_targets.insert(t.name.clone());
            }
            let settings = settings.unwrap_or(TargetSettings::Tcp);
            self.policy.targets.push(Target {
                name: t.name,
                settings,
                addresses,
                ports: t.ports,
                udp: t.udp,
                credential: t.credential.map(|c| match c {
                    SecretDoc::Env { name } => Secret::Env(name),
                    SecretDoc::File { path } => Secret::File(path.into()),
                }),
                source: file.clone(),
            });
        }
        for r in doc.rules {
            self.name("rule", &r.name, &file);
            let mut subjects = Vec::new();
            for s in &r.when.subjects {
                match glob(s) {
                    Ok(g) => subjects.push(g),
                    Err(e) => self.problem(
                        &file,
                        format!("rule `{}`: bad subject glob `{s}`: {e}", r.name),
                    ),
                }
            }
            let mut logins = Vec::new();
            for l in &r.when.logins {
                match glob(l) {
                    Ok(g) => logins.push(g),
                    Err(e) => self.problem(
                        &file,
                        format!("rule `{}`: bad login glob `{l}`: {e}", r.name),
                    ),
                }
            }
            if r.targets.is_empty() {
                self.problem(
                    &file,
                    format!("rule `{}` names no targets (use \"*\" for all)", r.name),
                );
            }
            let targets = (!r.targets.iter().any(|t| t == "*")).then_some(r.targets);
            let approval = r
                .approval
                .map(|a| std::sync::Arc::new(self.approval_spec(&file, &r.name, a)));
            let ctx = super::section::SectionContext {
                rule: &r.name,
                effect: r.effect,
                approval: approval.is_some(),
            };
            let raw = [
                ("statements", r.statements),
                ("commands", r.commands),
                ("requests", r.requests),
            ];
            let action = self.action_section(&file, &ctx, raw, r.mask.is_some());
            let mask = r
                .mask
                .map(|m| std::sync::Arc::new(self.mask_spec(&file, &r.name, r.effect, m)));
            self.policy.rules.push(Rule {
                action,
                mask,
                approval,
                name: r.name,
                effect: r.effect,
                workloads: r.when.workloads,
                issuers: r.when.issuers,
                subjects,
                groups: r.when.groups,
                logins,
                targets,
                source: file.clone(),
            });
        }
    }

    fn postgres_settings(
        &mut self,
        file: &Path,
        target: &str,
        addresses: &[IpNet],
        pg: PostgresDoc,
    ) -> Option<PostgresTarget> {
        let upstream_tls = self.upstream_tls(file, target, addresses, pg.upstream_tls);
        if pg.user.is_empty() {
            self.problem(file, format!("target `{target}`: postgres.user is empty"));
        }
        let max_message_bytes = pg.max_message_bytes.unwrap_or(64 << 20);
        if !(1024..=(1 << 30)).contains(&max_message_bytes) {
            self.problem(
                file,
                format!("target `{target}`: max_message_bytes must be between 1024 and 1073741824"),
            );
        }
        Some(PostgresTarget {
            user: pg.user,
            database: pg.database,
            upstream_tls,
            client_tls: pg.client_tls.map(|c| ClientTls {
                cert_file: c.cert_file.into(),
                key_file: c.key_file.into(),
            }),
            max_message_bytes,
        })
    }

    fn approval_spec(
        &mut self,
        file: &Path,
        rule: &str,
        a: ApprovalDoc,
    ) -> crate::approval::ApprovalSpec {
        let mut bad = |what: String| self.problem(file, format!("rule `{rule}`: {what}"));
        if a.approvers.is_empty() || a.approvers.iter().any(|g| g.is_empty()) {
            bad("`approval.approvers` must name at least one group, none empty".into());
        }
        if !(1..=16).contains(&a.quorum) {
            bad("`approval.quorum` must be between 1 and 16".into());
        }
        if !(1..=7 * 86_400).contains(&a.timeout_secs) {
            bad("`approval.timeout_secs` must be between 1 and 604800".into());
        }
        let retry_window = match (a.mode, a.retry_window_secs) {
            (crate::approval::Mode::Hold, Some(_)) => {
                bad("`approval.retry_window_secs` is for `mode: deny_and_retry` only".into());
                0
            }
            (crate::approval::Mode::Hold, None) => 0,
            (crate::approval::Mode::DenyAndRetry, w) => {
                let w = w.unwrap_or(600);
                if !(1..=7 * 86_400).contains(&w) {
                    bad("`approval.retry_window_secs` must be between 1 and 604800".into());
                }
                w
            }
        };
        if a.max_rows.is_some_and(|n| n > MAX_ROWS_LIMIT) {
            bad(format!(
                "`approval.max_rows` must be between 0 and {MAX_ROWS_LIMIT}"
            ));
        }
        crate::approval::ApprovalSpec {
            approvers: a.approvers,
            quorum: a.quorum,
            timeout: std::time::Duration::from_secs(a.timeout_secs),
            mode: a.mode,
            retry_window: std::time::Duration::from_secs(retry_window),
            max_rows: a.max_rows,
        }
    }

    fn mask_spec(
        &mut self,
        file: &Path,
        rule: &str,
        effect: super::model::Effect,
        m: MaskDoc,
    ) -> MaskSpec {
        if effect != super::model::Effect::Allow {
            self.problem(
                file,
                format!("rule `{rule}`: mask rules have no effect (remove `effect`)"),
            );
        }
        if m.columns.is_empty() && m.detectors.is_empty() && m.regexes.is_empty() {
            self.problem(
                file,
                format!("rule `{rule}`: `mask` needs at least one of columns, detectors, regexes"),
            );
        }
        let strategy = match (m.strategy, m.keep_last) {
            (StrategyDoc::Partial, keep) => Strategy::Partial {
                keep_last: keep.unwrap_or(4),
            },
            (_, Some(_)) => {
                self.problem(
                    file,
                    format!("rule `{rule}`: keep_last is only for `strategy: partial`"),
                );
                Strategy::Redact
            }
            (StrategyDoc::Redact, None) => Strategy::Redact,
            (StrategyDoc::Hash, None) => Strategy::Hash,
            (StrategyDoc::Null, None) => Strategy::Null,
        };
        if let Strategy::Partial { keep_last } = strategy {
            if keep_last > 16 {
                self.problem(file, format!("rule `{rule}`: keep_last must be at most 16"));
            }
        }
        MaskSpec {
            columns: m.columns.into_iter().map(|c| c.0).collect(),
            detectors: m.detectors,
            regexes: m.regexes.into_iter().map(|r| r.0).collect(),
            strategy,
            binary: m.binary,
        }
    }

    /// Checks that need every file: references between sections and conflicting rules.
    fn cross_check(&mut self) {
        self.check_console();
        // A target on the listener's own loopback port would send the relay into itself.
        let listen = self.policy.gateway.listen_port;
        let mut found = Vec::new();
        let listener_addrs: [std::net::IpAddr; 4] = [
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            std::net::Ipv6Addr::UNSPECIFIED.into(),
        ];
        for t in &self.policy.targets {
            let covers = |n: &IpNet| listener_addrs.iter().any(|a| n.contains(a));
            if t.ports.contains(&listen) && t.addresses.iter().any(covers) {
                found.push((
                    t.source.clone(),
                    format!(
                        "target `{}` covers the gateway listener (loopback port {listen})",
                        t.name
                    ),
                ));
            }
        }
        let has_token_file = self
            .policy
            .workloads
            .iter()
            .any(|w| matches!(w.token, TokenSource::File(_)));
        if (has_token_file || !self.policy.rules.is_empty())
            && self.policy.identity_providers.is_empty()
        {
            if let Some(w) = self.policy.workloads.first() {
                found.push((
                    self.names[&("workload", w.name.clone())].clone(),
                    "no identity_providers are defined: no token can be verified, so every connection would be refused".into(),
                ));
            }
        }
        for t in &self.policy.targets {
            let certified = matches!(
                t.ssh().map(|s| &s.host_key),
                Some(super::model::SshHostKey::Certified { .. })
            );
            if certified && self.policy.gateway.ssh_host_key_secret.is_none() {
                found.push((
                    t.source.clone(),
                    format!(
                        "target `{}` has `host_ca_key`, which needs gateway.ssh_host_key_secret (its host key derives from it)",
                        t.name
                    ),
                ));
            }
        }
        for r in &self.policy.rules {
            let hashes = r
                .mask
                .as_ref()
                .is_some_and(|m| m.strategy == Strategy::Hash);
            if hashes && self.policy.mask_key.is_none() {
                found.push((
                    r.source.clone(),
                    format!(
                        "rule `{}` uses `strategy: hash`, which needs gateway.mask_key",
                        r.name
                    ),
                ));
            }
            for w in &r.workloads {
                if !self.names.contains_key(&("workload", w.clone())) {
                    found.push((
                        r.source.clone(),
                        format!("rule `{}` names unknown workload `{w}`", r.name),
                    ));
                }
            }
            for t in r.targets.iter().flatten() {
                let target = self.policy.targets.iter().find(|x| &x.name == t);
                match target {
                    Some(x) if self.broken_targets.contains(&x.name) => {}
                    None => found.push((
                        r.source.clone(),
                        format!("rule `{}` names unknown target `{t}`", r.name),
                    )),
                    Some(x) if !r.logins.is_empty() && x.protocol() != Protocol::Ssh => found
                        .push((
                            r.source.clone(),
                            format!(
                                "rule `{}` restricts logins but target `{t}` speaks {:?}; logins are for ssh targets",
                                r.name, x.protocol()
                            ),
                        )),
                    Some(x) if r.action.as_ref().is_some_and(|a| a.protocol != x.protocol()) => {
                        if let Some(key) = r.action.as_ref().map(|a| a.key) {
                            found.push((
                                r.source.clone(),
                                format!(
                                    "rule `{}` has {key} but target `{t}` speaks {:?}, which has none",
                                    r.name,
                                    x.protocol()
                                ),
                            ));
                        }
                    }
                    // An ssh channel's output and an HTTP body are byte streams: detectors apply,
                    // columns cannot.
                    Some(x)
                        if matches!(x.protocol(), Protocol::Ssh | Protocol::Http)
                            && r.mask.as_ref().is_some_and(|m| !m.columns.is_empty()) =>
                    {
                        found.push((
                            r.source.clone(),
                            format!(
                                "rule `{}` masks columns but target `{t}` speaks {:?}, whose output has no columns; mask it with detectors or regexes",
                                r.name,
                                x.protocol()
                            ),
                        ))
                    }
                    Some(x)
                        if r.mask.is_some()
                            && x.protocol() == Protocol::Tcp =>
                    {
                        found.push((
                            r.source.clone(),
                            format!(
                                "rule `{}` masks values but target `{t}` speaks {:?}; masking is for postgres, ssh and http targets",
                                r.name, x.protocol()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            for i in &r.issuers {
                if !self
                    .policy
                    .identity_providers
                    .iter()
                    .any(|p| &p.issuer == i)
                {
                    found.push((
                        r.source.clone(),
                        format!(
                            "rule `{}` names issuer `{i}`, which no identity provider has",
                            r.name
                        ),
                    ));
                }
            }
        }
        // Two rules about exactly the same principals and targets with opposite effects say
        // nothing consistent; the deny would silently win, so make the author choose.
        for (i, a) in self.policy.rules.iter().enumerate() {
            for b in &self.policy.rules[i + 1..] {
                // Statement rules act inside sessions, never on the connection itself.
                let connection_rules = a.action.is_none()
                    && b.action.is_none()
                    && a.mask.is_none()
                    && b.mask.is_none();
                if connection_rules && a.effect != b.effect && same_principals(a, b) {
                    let overlap = match (&a.targets, &b.targets) {
                        (None, _) | (_, None) => true,
                        (Some(x), Some(y)) => x.iter().any(|t| y.contains(t)),
                    };
                    if overlap {
                        found.push((
                            b.source.clone(),
                            format!(
                                "rules `{}` and `{}` match the same principals and targets with opposite effects",
                                a.name, b.name
                            ),
                        ));
                    }
                }
            }
        }
        for (file, message) in found {
            self.problem(&file, message);
        }
    }
}

fn same_principals(a: &Rule, b: &Rule) -> bool {
    let globs = |r: &Rule| {
        let mut v: Vec<String> = r
            .subjects
            .iter()
            .map(|g| g.glob().glob().to_string())
            .collect();
        v.sort();
        v
    };
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    sorted(&a.workloads) == sorted(&b.workloads)
        && sorted(&a.issuers) == sorted(&b.issuers)
        && sorted(&a.groups) == sorted(&b.groups)
        && globs(a) == globs(b)
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) is the IPv4 network it carries; the kernel and the proxy compare
/// IPv4 destinations in that form.
fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

fn glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
}

/// SQL names: case-insensitive, so a quoted `"Users"` cannot slip past a rule about `users`.
pub fn glob_ci(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map(|g| g.compile_matcher())
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
