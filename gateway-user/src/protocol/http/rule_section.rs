//! HTTP's rule section, `requests:`: parsed and checked here and registered with the policy
//! loader (`policy::section`), which knows it only by its key. What a parsed section sets off is
//! `rules.rs`; the syntax is in docs/kubernetes.md (*Rules*).

use std::sync::Arc;

use linkme::distributed_slice;
use serde::Deserialize;

use super::rules::{Glob, KubeRule, PlainRule, RequestRule, ResourcePattern};
use crate::policy::{
    empty_list,
    section::{ActionMatcher, RawSection, RuleSection, SectionContext, RULE_SECTIONS},
    Effect, Protocol,
};
use crate::protocol::ssh::command::{CommandMatch, CommandMatchDoc};

#[distributed_slice(RULE_SECTIONS)]
static REQUESTS: RuleSection = RuleSection {
    key: "requests",
    protocol: Protocol::Http,
    parse: parse_section,
};

impl ActionMatcher for RequestRule {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The verbs a Kubernetes request can have: the resource verbs `RequestInfo` gives, and the
/// lower-case methods non-resource requests have as theirs.
const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
    "post",
    "put",
    "head",
    "options",
    "*",
];

/// A `requests:` section as written. `None`: the field is absent (any); an empty list is an
/// error (it would match nothing, so the rule would never be set off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsDoc {
    #[serde(default)]
    verbs: Option<Vec<String>>,
    #[serde(default)]
    resources: Option<Vec<String>>,
    #[serde(default)]
    namespaces: Option<Vec<String>>,
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    non_resource_urls: Option<Vec<String>>,
    #[serde(default)]
    exec: Option<ExecDoc>,
    /// The pod ports an allow rule lets `pods/portforward` reach (read wide, checked here).
    #[serde(default)]
    ports: Option<Vec<i64>>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    paths: Option<Vec<String>>,
}

/// `exec:`: the command of `pods/exec`, judged as SSH's `commands:` lists are (docs/ssh.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecDoc {
    #[serde(default, deserialize_with = "empty_list")]
    allow: Vec<String>,
    #[serde(default, deserialize_with = "empty_list")]
    deny: Vec<String>,
    #[serde(default, deserialize_with = "empty_list")]
    programs: Vec<String>,
    #[serde(default, deserialize_with = "empty_list")]
    patterns: Vec<String>,
}

fn parse_section(
    ctx: &SectionContext<'_>,
    raw: RawSection,
) -> Result<Arc<dyn ActionMatcher>, Vec<String>> {
    let rule = ctx.rule;
    let doc: RequestsDoc = raw.parse(rule, "requests")?;
    let mut problems = Vec::new();
    // `requests:` rules refuse or hold what they match; an allow rule would do nothing, but
    // for the one thing refused unless allowed: port-forwards, to the ports it lists.
    let allows_ports = doc.ports.is_some();
    if ctx.effect == Effect::Allow && !ctx.approval && !allows_ports {
        problems.push(format!(
            "rule `{rule}`: a `requests` rule needs `effect: deny` or `approval` (it refuses or holds the requests it matches), or `ports` with `effect: allow` (it allows port-forwards to them)"
        ));
    }
    if allows_ports && (ctx.effect == Effect::Deny || ctx.approval) {
        problems.push(format!(
            "rule `{rule}`: requests.ports allows port-forwards to these ports and needs `effect: allow` without `approval`; to refuse or hold port-forwards, write a rule about pods/portforward without ports"
        ));
    }
    if ctx.approval && ctx.effect == Effect::Deny {
        problems.push(format!(
            "rule `{rule}`: approval rules have no effect (remove `effect`)"
        ));
    }
    let section = section(rule, doc, &mut problems);
    match section {
        Some(s) if problems.is_empty() => Ok(Arc::new(s)),
        _ => Err(problems),
    }
}

/// The section checked; each problem is pushed, naming the rule.
fn section(rule: &str, doc: RequestsDoc, problems: &mut Vec<String>) -> Option<RequestRule> {
    let mut problem = |m: String| problems.push(format!("rule `{rule}`: requests.{m}"));
    let kube_given: Vec<&str> = [
        ("verbs", doc.verbs.is_some()),
        ("resources", doc.resources.is_some()),
        ("namespaces", doc.namespaces.is_some()),
        ("names", doc.names.is_some()),
        ("non_resource_urls", doc.non_resource_urls.is_some()),
        ("exec", doc.exec.is_some()),
        ("ports", doc.ports.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, given)| given.then_some(k))
    .collect();
    let plain_given: Vec<&str> = [
        ("methods", doc.methods.is_some()),
        ("paths", doc.paths.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, given)| given.then_some(k))
    .collect();
    if kube_given.is_empty() && plain_given.is_empty() {
        problem("needs at least one of verbs, resources, namespaces, names, non_resource_urls, exec (Kubernetes) or methods, paths (plain HTTP)".into());
        return None;
    }
    if !kube_given.is_empty() && !plain_given.is_empty() {
        // A plain request has no Kubernetes fields and a Kubernetes request is matched on its
        // own: such a rule could never be set off.
        problem(format!(
            "{} (Kubernetes) and {} (plain HTTP) cannot be in one rule: write two rules",
            kube_given.join(", "),
            plain_given.join(", ")
        ));
        return None;
    }
    let resource_fields: Vec<&str> = kube_given
        .iter()
        .copied()
        .filter(|k| matches!(*k, "resources" | "namespaces" | "names" | "exec" | "ports"))
        .collect();
    if doc.non_resource_urls.is_some() && !resource_fields.is_empty() {
        problem(format!(
            "non_resource_urls is for requests that are not about a resource, {} for those that are: a rule with both is never set off",
            resource_fields.join(", ")
        ));
    }
    let mut list = |key: &str, v: Option<Vec<String>>| -> Option<Vec<String>> {
        let v = v?;
        if v.is_empty() {
            problem(format!("{key} is empty (leave it out for any)"));
        }
        Some(v)
    };
    let verbs = list("verbs", doc.verbs);
    let resources = list("resources", doc.resources);
    let namespaces = list("namespaces", doc.namespaces);
    let names = list("names", doc.names);
    let non_resource_urls = list("non_resource_urls", doc.non_resource_urls);
    let methods = list("methods", doc.methods);
    let paths = list("paths", doc.paths);

    if !plain_given.is_empty() {
        let methods = methods.map(|ms| {
            ms.into_iter()
                .map(|m| {
                    let token = !m.is_empty()
                        && m.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if !token {
                        problem(format!("methods: `{m}` is not an HTTP method"));
                    }
                    m.to_ascii_uppercase()
                })
                .collect()
        });
        let paths = paths.map(|p| globs(&mut problem, "paths", &p, true));
        return Some(RequestRule::Plain(PlainRule { methods, paths }));
    }

    let verbs = verbs.map(|vs| {
        vs.into_iter()
            .map(|v| {
                let v = v.to_ascii_lowercase();
                if !VERBS.contains(&v.as_str()) {
                    problem(format!(
                        "verbs: unknown verb `{v}` (one of {})",
                        VERBS.join(", ")
                    ));
                }
                v
            })
            .collect::<Vec<_>>()
    });
    let resources = resources.map(|rs| {
        rs.iter()
            .filter_map(|r| {
                ResourcePattern::new(r)
                    .map_err(|e| problem(format!("resources: {e}")))
                    .ok()
            })
            .collect::<Vec<_>>()
    });
    // `""` is any namespace, like a rule without the field.
    let namespaces = namespaces.map(|ns| {
        let ns: Vec<String> = ns
            .into_iter()
            .map(|n| if n.is_empty() { "*".into() } else { n })
            .collect();
        globs(&mut problem, "namespaces", &ns, false)
    });
    let names = names.map(|n| globs(&mut problem, "names", &n, false));
    let non_resource_urls =
        non_resource_urls.map(|u| globs(&mut problem, "non_resource_urls", &u, true));
    let exec = match doc.exec {
        None => None,
        Some(e) => {
            if let Some(rs) = &resources {
                if !rs.iter().any(ResourcePattern::covers_exec) {
                    problem(format!(
                        "exec judges pods/exec and pods/attach, which resources ({}) does not include",
                        rs.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            if let Some(vs) = &verbs {
                let has = |v: &str| vs.iter().any(|x| x == v || x == "*");
                if !(has("get") && has("create")) {
                    problem("exec with verbs needs both get and create (kubectl execs with a GET over WebSocket, older clients with a POST over SPDY)".into());
                }
            }
            let doc = CommandMatchDoc {
                allow: e.allow,
                deny: e.deny,
                programs: e.programs,
                patterns: e.patterns,
            };
            match CommandMatch::new(&doc) {
                Ok(m) => Some(m),
                Err(err) => {
                    problem(format!("exec: {err}"));
                    None
                }
            }
        }
    };
    let ports = doc.ports.map(|ps| {
        ports(
            &mut problem,
            ps,
            resources.as_deref(),
            verbs.as_deref(),
            &exec,
        )
    });
    Some(RequestRule::Kubernetes(KubeRule {
        verbs,
        resources,
        namespaces,
        names,
        non_resource_urls,
        exec,
        ports,
    }))
}

/// `ports:` checked: 1-65535, with `resources` that name only `pods/portforward`, with `verbs`
/// (if given) that include both `get` and `create`, and without `exec`.
fn ports(
    problem: &mut impl FnMut(String),
    ports: Vec<i64>,
    resources: Option<&[ResourcePattern]>,
    verbs: Option<&[String]>,
    exec: &Option<CommandMatch>,
) -> Vec<u16> {
    if ports.is_empty() {
        problem("ports is empty (a rule that allows no port allows nothing)".into());
    }
    // The allowance is for port-forwards only: an entry that covers other resources too would
    // read as allowing them.
    match resources {
        None => problem("ports needs resources: [pods/portforward]".into()),
        Some(rs) => {
            for r in rs {
                if !r.text.eq_ignore_ascii_case("pods/portforward") {
                    problem(format!(
                        "ports is for pods/portforward only; resources has `{}`",
                        r.text
                    ));
                }
            }
        }
    }
    if let Some(vs) = verbs {
        let has = |v: &str| vs.iter().any(|x| x == v || x == "*");
        if !(has("get") && has("create")) {
            problem("ports with verbs needs both get and create (kubectl port-forwards with a GET over WebSocket, and falls back to a POST over SPDY)".into());
        }
    }
    if exec.is_some() {
        problem("ports and exec cannot be in one rule (exec judges pods/exec)".into());
    }
    ports
        .into_iter()
        .filter_map(|p| match u16::try_from(p) {
            Ok(p) if p >= 1 => Some(p),
            _ => {
                problem(format!("ports: {p} is not a port (1-65535)"));
                None
            }
        })
        .collect()
}

/// Globs compiled; `path`: each must start with `/` (or be `*`/`**`).
fn globs(problem: &mut impl FnMut(String), key: &str, list: &[String], path: bool) -> Vec<Glob> {
    list.iter()
        .filter_map(|g| {
            if g.is_empty() {
                problem(format!("{key}: an empty entry"));
                return None;
            }
            if path && !g.starts_with(['/', '*']) {
                problem(format!("{key}: `{g}` does not start with `/`"));
                return None;
            }
            Glob::new(g)
                .map_err(|e| problem(format!("{key}: bad glob `{g}`: {e}")))
                .ok()
        })
        .collect()
}
