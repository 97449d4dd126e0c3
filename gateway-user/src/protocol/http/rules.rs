//! HTTP's rule matcher: which `requests:` rules a request sets off (docs/kubernetes.md, *Rules*).
//!
//! A rule's section is set off by a request that matches every field it gives (AND across
//! fields, OR within a list). A section is of one profile: Kubernetes fields (verbs, resources,
//! namespaces, names, non-resource URLs, exec) are about what a Kubernetes request does, and a
//! plain HTTP request has none of them, so it never sets such a rule off; plain fields (methods,
//! paths) are about HTTP, which every Kubernetes request also is, so they are matched against a
//! Kubernetes request's method and path. Where a request could reach more than a field names
//! (a list across all namespaces under `namespaces:`, a create or list under `names:`, a path
//! that cannot be read), the field matches: these rules only refuse or hold, so matching more
//! fails closed. Then, as for SSH commands: a deny rule set off refuses; otherwise the first
//! approval rule set off (file order) holds the request.

use globset::{GlobBuilder, GlobMatcher};

use super::request_info::RequestInfo;
use crate::policy::{Effect, Policy, Protocol, Rule, Who};
use crate::protocol::action_gate::Judgement;
use crate::protocol::ssh::{aliases, command::CommandMatch};

/// A request as the rules judge it.
#[derive(Debug, Clone, Copy)]
pub enum HttpAction<'a> {
    /// A request to a `profile: kubernetes` target, classified; `exec` is the command of a
    /// `pods/exec` request (`request_info::exec_command`), `None` for any other request.
    Kubernetes {
        info: &'a RequestInfo,
        exec: Option<&'a [String]>,
    },
    /// A request to a plain HTTP target: its method, and its path as it came.
    Plain { method: &'a str, path: &'a str },
}

/// A rule's `requests:` section, as loaded (rule_section.rs).
#[derive(Debug, Clone)]
pub enum RequestRule {
    Kubernetes(KubeRule),
    Plain(PlainRule),
}

/// The Kubernetes fields; `None`: the field is not given (any).
#[derive(Debug, Clone, Default)]
pub struct KubeRule {
    /// Lower-case verbs; `*` is any.
    pub verbs: Option<Vec<String>>,
    pub resources: Option<Vec<ResourcePattern>>,
    pub namespaces: Option<Vec<Glob>>,
    pub names: Option<Vec<Glob>>,
    pub non_resource_urls: Option<Vec<Glob>>,
    /// The command of `pods/exec` (and `pods/attach`, which has none) judged as SSH commands.
    pub exec: Option<CommandMatch>,
    /// The pod ports an `effect: allow` rule lets `pods/portforward` reach (portforward.rs):
    /// port-forwards are refused unless such a rule allows every port they open.
    pub ports: Option<Vec<u16>>,
}

/// The plain HTTP fields.
#[derive(Debug, Clone, Default)]
pub struct PlainRule {
    /// Upper-case methods; `*` is any.
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<Glob>>,
}

/// A glob as written and compiled: `*` matches across `/` (a rule about `/admin/*` covers
/// `/admin/a/b`), case-insensitive (`/Admin` is not another path to every server).
#[derive(Debug, Clone)]
pub struct Glob {
    matcher: GlobMatcher,
}

impl Glob {
    pub fn new(text: &str) -> Result<Self, globset::Error> {
        let matcher = GlobBuilder::new(text)
            .case_insensitive(true)
            .literal_separator(false)
            .build()?
            .compile_matcher();
        Ok(Self { matcher })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

/// `resource[.group][/subresource]`, each part a glob, or `*` for everything. No group: the
/// resource in every group (the core group's resources are written without one). No
/// subresource: the resource and all its subresources (`pods/eviction` deletes a pod,
/// `pods/exec` runs in one).
#[derive(Debug, Clone)]
pub struct ResourcePattern {
    pub text: String,
    resource: Glob,
    group: Option<Glob>,
    subresource: Option<Glob>,
}

impl ResourcePattern {
    pub fn new(text: &str) -> Result<Self, String> {
        let (left, sub) = match text.split_once('/') {
            Some((l, s)) => (l, Some(s)),
            None => (text, None),
        };
        let (resource, group) = match left.split_once('.') {
            Some((r, g)) => (r, Some(g)),
            None => (left, None),
        };
        let part = |what: &str, p: &str| {
            if p.is_empty() || p.contains('/') {
                return Err(format!(
                    "`{text}` is not resource[.group][/subresource] (empty or extra {what})"
                ));
            }
            Glob::new(p).map_err(|e| format!("`{text}`: bad {what} glob: {e}"))
        };
        Ok(Self {
            text: text.to_string(),
            resource: part("resource", resource)?,
            group: group.map(|g| part("group", g)).transpose()?,
            subresource: sub.map(|s| part("subresource", s)).transpose()?,
        })
    }

    pub fn matches(&self, resource: &str, group: &str, subresource: &str) -> bool {
        self.resource.is_match(resource)
            && self.group.as_ref().is_none_or(|g| g.is_match(group))
            && self
                .subresource
                .as_ref()
                .is_none_or(|s| s.is_match(subresource))
    }

    /// Whether this entry covers `pods/exec` or `pods/attach` (an `exec:` needs one).
    pub fn covers_exec(&self) -> bool {
        self.matches("pods", "", "exec") || self.matches("pods", "", "attach")
    }
}

/// The methods a Kubernetes verb can be sent with (`proxy`, or an unknown verb: any).
fn verb_methods(verb: &str) -> Option<&'static [&'static str]> {
    Some(match verb {
        "get" | "list" | "watch" => &["GET", "HEAD"],
        "create" => &["POST"],
        "update" => &["PUT"],
        "patch" => &["PATCH"],
        "delete" | "deletecollection" => &["DELETE"],
        _ => return None,
    })
}

fn any_glob(list: &Option<Vec<Glob>>, s: &str) -> bool {
    list.as_ref()
        .is_none_or(|l| l.iter().any(|g| g.is_match(s)))
}

impl KubeRule {
    /// Whether every field but `ports` matches `info` (a rule with `ports` never sets off; it
    /// allows, see `forward_allowances`).
    pub fn covers(&self, info: &RequestInfo) -> bool {
        self.sets_off(info, None).is_some()
    }

    /// Why `info` (with `exec`) sets this rule off, if it does.
    fn sets_off(&self, info: &RequestInfo, exec: Option<&[String]>) -> Option<String> {
        if let Some(verbs) = &self.verbs {
            if !verbs.iter().any(|v| v == "*" || *v == info.verb) {
                return None;
            }
        }
        if !info.is_resource_request {
            // Resource fields: a non-resource request has none of them.
            if self.resources.is_some()
                || self.namespaces.is_some()
                || self.names.is_some()
                || self.exec.is_some()
            {
                return None;
            }
            if !any_glob(&self.non_resource_urls, &info.path) {
                return None;
            }
            return Some(describe(info));
        }
        if self.non_resource_urls.is_some() {
            return None;
        }
        if let Some(resources) = &self.resources {
            if !resources
                .iter()
                .any(|r| r.matches(&info.resource, &info.api_group, &info.subresource))
            {
                return None;
            }
        }
        // No namespace: cluster-scoped, or across all namespaces (which cannot be told apart
        // without the server's discovery): it may reach any namespace.
        if !info.namespace.is_empty() && !any_glob(&self.namespaces, &info.namespace) {
            return None;
        }
        // No name: a list, watch, create or deletecollection, which may touch any object.
        if !info.name.is_empty() && !any_glob(&self.names, &info.name) {
            return None;
        }
        let Some(matcher) = &self.exec else {
            return Some(describe(info));
        };
        let attach = match (info.resource.as_str(), info.subresource.as_str()) {
            _ if !info.api_group.is_empty() => return None,
            ("pods", "exec") => false,
            ("pods", "attach") => true,
            _ => return None,
        };
        let why = match exec {
            _ if attach => "attach: what is typed into a running process cannot be judged".into(),
            None | Some([]) => "an exec without a command cannot be judged".into(),
            Some(argv) => exec_sets_off(matcher, argv)?,
        };
        Some(format!("{}: {why}", describe(info)))
    }
}

/// Whether an exec's command sets the matcher off, judged as the SSH command line that runs
/// the same program with the same arguments (each argument quoted: an exec runs no shell).
fn exec_sets_off(matcher: &CommandMatch, argv: &[String]) -> Option<String> {
    let line = argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    // A shell with no command string reads its commands from stdin: they cannot be judged one
    // by one (SSH's rule for interactive shells; there is no `shell: true` here).
    if aliases::runs_a_shell(&line) {
        return Some(format!("`{line}` starts an interactive shell"));
    }
    let verdict = matcher.verdict(&crate::protocol::ssh::command::parse_bytes(line.as_bytes()));
    verdict.applies().then(|| {
        format!(
            "`{line}`: {}",
            verdict.why().unwrap_or("it cannot be judged")
        )
    })
}

/// One argument as a POSIX shell word that reads back as exactly it.
fn quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+:,./-".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The request in approvers' and the agent's terms: "delete secrets `db` in namespace `prod`".
pub fn describe(info: &RequestInfo) -> String {
    if !info.is_resource_request {
        return format!("{} {}", info.verb, info.path);
    }
    let mut s = format!("{} {}", info.verb, info.resource);
    if !info.api_group.is_empty() {
        s.push('.');
        s.push_str(&info.api_group);
    }
    if !info.subresource.is_empty() {
        s.push('/');
        s.push_str(&info.subresource);
    }
    if !info.name.is_empty() {
        s.push_str(&format!(" `{}`", info.name));
    }
    if !info.namespace.is_empty() {
        s.push_str(&format!(" in namespace `{}`", info.namespace));
    }
    s
}

impl PlainRule {
    /// Why a request with these possible methods (`None`: any) and these spellings of its
    /// path sets the rule off, if it does. `paths` is empty when the path cannot be read (bad
    /// percent-encoding): it matches every `paths` list.
    fn sets_off(&self, methods: Option<&[&str]>, paths: &[&str], shown: &str) -> Option<String> {
        if let Some(wanted) = &self.methods {
            let hit = match methods {
                None => true,
                Some(ms) => wanted
                    .iter()
                    .any(|w| w == "*" || ms.iter().any(|m| m.eq_ignore_ascii_case(w))),
            };
            if !hit {
                return None;
            }
        }
        if let Some(globs) = &self.paths {
            // An unreadable path matches: which resource it reaches is unknown.
            if !paths.is_empty() && !globs.iter().any(|g| paths.iter().any(|p| g.is_match(p))) {
                return None;
            }
            if paths.is_empty() {
                return Some(format!("{shown} (a path that cannot be read)"));
            }
        }
        Some(shown.to_string())
    }
}

/// A plain request's path as it came (query cut) and as a server reads it: percent-decoded,
/// `//` collapsed, `.` and `..` resolved. Empty when it cannot be decoded.
fn plain_paths(path: &str) -> Vec<String> {
    let raw = path.split(['?', '#']).next().unwrap_or_default();
    let Some(decoded) = decode(raw) else {
        return Vec::new();
    };
    let mut segments: Vec<&str> = Vec::new();
    for s in decoded.split(['/', '\\']) {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normal = format!("/{}", segments.join("/"));
    if decoded.ends_with('/') && normal.len() > 1 {
        normal.push('/');
    }
    vec![raw.to_string(), normal]
}

fn decode(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl RequestRule {
    /// Why `action` sets this rule off, if it does.
    pub fn sets_off(&self, action: &HttpAction<'_>) -> Option<String> {
        match (self, action) {
            (Self::Kubernetes(k), HttpAction::Kubernetes { info, exec }) => k.sets_off(info, *exec),
            // A plain request has no verb, resource or namespace.
            (Self::Kubernetes(_), HttpAction::Plain { .. }) => None,
            (Self::Plain(p), HttpAction::Plain { method, path }) => {
                let paths = plain_paths(path);
                let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
                p.sets_off(Some(&[method]), &paths, &format!("{method} {path}"))
            }
            (Self::Plain(p), HttpAction::Kubernetes { info, .. }) => {
                let upper = info.verb.to_ascii_uppercase();
                let non_resource = [upper.as_str()];
                let methods = if info.is_resource_request {
                    verb_methods(&info.verb)
                } else {
                    Some(&non_resource[..])
                };
                p.sets_off(methods, &[info.path.as_str()], &describe(info))
            }
        }
    }
}

/// The `requests:` rules in scope for `who` on `target`, in file order, with their sections.
pub fn request_rules<'p>(
    policy: &'p Policy,
    who: &Who<'_>,
    target: &str,
) -> Vec<(&'p Rule, &'p RequestRule)> {
    policy
        .action_rules(who, target, Protocol::Http)
        .into_iter()
        .filter_map(|r| Some((r, r.action.as_ref()?.matcher::<RequestRule>()?)))
        .collect()
}

/// The `effect: allow` rules with `ports` in scope for `who` on `target`, in file order: what
/// may allow a port-forward (portforward.rs).
pub fn forward_allowances<'p>(
    policy: &'p Policy,
    who: &Who<'_>,
    target: &str,
) -> Vec<(&'p Rule, &'p KubeRule)> {
    request_rules(policy, who, target)
        .into_iter()
        .filter(|(rule, _)| rule.effect == Effect::Allow && rule.approval.is_none())
        .filter_map(|(rule, section)| match section {
            RequestRule::Kubernetes(k) if k.ports.is_some() => Some((rule, k)),
            _ => None,
        })
        .collect()
}

/// Judges `req` under the `requests:` rules of `policy` that apply to `who` on `target`. A
/// Kubernetes request that could not be classified never gets here: the caller denies it.
pub fn judge<'p>(
    policy: &'p Policy,
    who: &Who<'_>,
    target: &str,
    req: &HttpAction<'_>,
) -> Judgement<'p> {
    let mut approval = None;
    for (rule, section) in request_rules(policy, who, target) {
        let Some(why) = section.sets_off(req) else {
            continue;
        };
        if rule.approval.is_some() {
            approval.get_or_insert((rule, why));
        } else if rule.effect == Effect::Deny {
            return Judgement::Denied {
                rule: rule.name.clone(),
                why,
            };
        }
    }
    match approval {
        Some((rule, why)) => Judgement::Approval { rule, why },
        None => Judgement::Allowed,
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
