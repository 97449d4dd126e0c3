//! Unit tests of `rules` and `rule_section`: the section's parse errors, and `judge` over a
//! policy loaded from YAML text with a Kubernetes and a plain HTTP target.

use super::*;
use crate::policy::{load_dir, test_support::*};
use crate::protocol::http::request_info::{exec_command, resolve};

/// A Kubernetes API server `kube` and a plain HTTP service `web`, on loopback.
const HTTP_TARGETS: &str = "version: 2\ntargets:\n\
\x20 - name: kube\n    protocol: http\n    addresses: [127.0.0.5]\n    ports: [6443]\n    credential: {from: env, name: KUBE_TOKEN}\n    http: {profile: kubernetes, upstream_tls: {mode: disable}}\n\
\x20 - name: web\n    protocol: http\n    addresses: [127.0.0.6]\n    ports: [8080]\n    http: {upstream_tls: {mode: disable}}\n";

fn policy(tag: &str, rules: &str) -> Result<Policy, String> {
    let d = valid_dir(tag, rules);
    write(&d, "e-http.yaml", HTTP_TARGETS);
    let p = load_dir(&d).map_err(|e| format!("{e:#}"));
    std::fs::remove_dir_all(&d).unwrap();
    p
}

/// The loader's message for a policy with one rule whose `requests:` is `section` (and whose
/// other keys are `extra`).
fn problem(tag: &str, section: &str, extra: &str) -> String {
    let rules = format!("  - name: r1\n    targets: [kube]\n    requests: {section}\n{extra}");
    match policy(tag, &rules) {
        Ok(_) => panic!("`{section}` loaded"),
        Err(e) => e,
    }
}

const DENY: &str = "    effect: deny\n";

#[test]
fn parse_errors_name_the_rule_and_the_field() {
    for (section, extra, want) in [
        ("{}", DENY, "needs at least one of verbs"),
        ("{verbs: []}", DENY, "requests.verbs is empty"),
        ("{resources: []}", DENY, "requests.resources is empty"),
        ("{namespaces: []}", DENY, "requests.namespaces is empty"),
        ("{paths: []}", DENY, "requests.paths is empty"),
        ("{verbs: [destroy]}", DENY, "unknown verb `destroy`"),
        ("{verbs: [impersonate]}", DENY, "unknown verb `impersonate`"),
        (
            "{verbs: [get], colour: red}",
            DENY,
            "unknown field `colour`",
        ),
        (
            "{resources: [secrets/]}",
            DENY,
            "`secrets/` is not resource[.group][/subresource]",
        ),
        ("{resources: [.apps]}", DENY, "`.apps` is not resource"),
        (
            "{resources: [pods/exec/x]}",
            DENY,
            "`pods/exec/x` is not resource",
        ),
        ("{resources: [\"[a\"]}", DENY, "bad resource glob"),
        (
            "{names: [\"db-[\"]}",
            DENY,
            "requests.names: bad glob `db-[`",
        ),
        ("{paths: [admin]}", DENY, "`admin` does not start with `/`"),
        (
            "{methods: [\"GET /\"]}",
            DENY,
            "`GET /` is not an HTTP method",
        ),
        (
            "{verbs: [delete], methods: [DELETE]}",
            DENY,
            "cannot be in one rule",
        ),
        (
            "{non_resource_urls: [/healthz], resources: [pods]}",
            DENY,
            "a rule with both is never set off",
        ),
        (
            "{resources: [secrets], exec: {allow: [ls]}}",
            DENY,
            "which resources (secrets) does not include",
        ),
        (
            "{resources: [pods/exec], verbs: [create], exec: {allow: [ls]}}",
            DENY,
            "needs both get and create",
        ),
        ("{resources: [pods/exec], exec: {}}", DENY, "requests.exec:"),
        (
            "{resources: [pods/exec], exec: {patterns: [\"(\"]}}",
            DENY,
            "requests.exec:",
        ),
        // An allow rule would never do anything; approval rules have no effect.
        (
            "{verbs: [delete]}",
            "",
            "needs `effect: deny` or `approval`",
        ),
        (
            "{verbs: [delete]}",
            "    effect: deny\n    approval: {approvers: [sre]}\n",
            "approval rules have no effect",
        ),
    ] {
        let e = problem("parse", section, extra);
        assert!(e.contains("rule `r1`"), "{section}: {e}");
        assert!(e.contains(want), "{section}: wanted `{want}` in: {e}");
    }
}

#[test]
fn valid_sections_load() {
    for section in [
        "{verbs: [delete, deletecollection], resources: [secrets, rolebindings.rbac.authorization.k8s.io, pods/exec, \"*\"], namespaces: [prod-*], names: [db-*]}",
        "{non_resource_urls: [/version, /healthz*], verbs: [get, post]}",
        "{resources: [pods/exec, pods/attach], exec: {allow: [\"ls *\"], deny: [\"rm *\"], programs: [curl], patterns: [\"^cat /etc\"]}}",
        "{resources: [\"pods/*\"], verbs: [\"*\"], exec: {deny: [\"rm *\"]}}",
        "{exec: {deny: [\"rm *\"]}}",
        "{namespaces: [\"\"], verbs: [DELETE]}",
        "{methods: [post, DELETE], paths: [\"/admin/**\"]}",
    ] {
        let rules = format!("  - name: r1\n    effect: deny\n    targets: [kube]\n    requests: {section}\n");
        policy("valid", &rules).unwrap_or_else(|e| panic!("{section}: {e}"));
    }
}

/// Rules over both targets; the agent is `ci`.
const RULES: &str = "\
\x20 - name: base\n    when: {workloads: [ci]}\n    targets: [kube, web]\n\
\x20 - name: no-prod-secrets\n    effect: deny\n    targets: [kube]\n    requests: {verbs: [get, list, watch], resources: [secrets], namespaces: [prod-*]}\n\
\x20 - name: keep-db\n    effect: deny\n    targets: [kube]\n    requests: {verbs: [delete, deletecollection], names: [db-*]}\n\
\x20 - name: rbac-waits\n    targets: [kube]\n    requests: {verbs: [create, update, patch, delete], resources: [\"*.rbac.authorization.k8s.io\"]}\n    approval: {approvers: [sre]}\n\
\x20 - name: exec-by-command\n    targets: [kube]\n    requests: {resources: [pods/exec, pods/attach], exec: {allow: [\"ls **\", \"cat /var/log/*\"]}}\n    approval: {approvers: [sre]}\n\
\x20 - name: no-exec-rm\n    effect: deny\n    targets: [kube]\n    requests: {resources: [pods/exec], exec: {deny: [\"rm **\"]}}\n\
\x20 - name: version-ok-healthz-not\n    effect: deny\n    targets: [kube]\n    requests: {non_resource_urls: [\"/healthz*\"]}\n\
\x20 - name: no-admin-deletes\n    effect: deny\n    targets: [\"*\"]\n    requests: {methods: [DELETE], paths: [\"/admin/*\"]}\n\
\x20 - name: k8s-verbs-everywhere\n    effect: deny\n    targets: [\"*\"]\n    requests: {verbs: [patch], resources: [nodes]}\n";

fn outcome(j: Judgement<'_>) -> String {
    match j {
        Judgement::Allowed => "allowed".into(),
        Judgement::Denied { rule, why } => format!("denied by {rule}: {why}"),
        Judgement::Approval { rule, why } => format!("held by {}: {why}", rule.name),
    }
}

#[test]
fn judge_kubernetes_requests() {
    let p = policy("judge", RULES).unwrap();
    let kube = |method: &str, path: &str, query: Option<&str>| {
        let info = resolve(method, path, query).unwrap();
        let command = query.map(exec_command);
        let exec = (info.subresource == "exec").then_some(command.as_deref().unwrap_or(&[]));
        outcome(judge(
            &p,
            &CI_AGENT,
            "kube",
            &HttpAction::Kubernetes { info: &info, exec },
        ))
    };
    let starts = |got: String, want: &str| {
        assert!(got.starts_with(want), "wanted `{want}…`, got `{got}`");
    };
    // Reads of secrets in prod namespaces are refused; elsewhere, allowed.
    starts(
        kube("GET", "/api/v1/namespaces/prod-eu/secrets/db", None),
        "denied by no-prod-secrets: get secrets `db` in namespace `prod-eu`",
    );
    starts(
        kube("GET", "/api/v1/namespaces/dev/secrets/db", None),
        "allowed",
    );
    starts(
        kube("GET", "/api/v1/namespaces/prod-eu/configmaps", None),
        "allowed",
    );
    // A watch is a read too, and a list across all namespaces reaches prod's.
    starts(
        kube("GET", "/api/v1/namespaces/prod-eu/secrets", Some("watch=1")),
        "denied by no-prod-secrets: watch secrets",
    );
    starts(
        kube("GET", "/api/v1/secrets", None),
        "denied by no-prod-secrets: list secrets",
    );
    // A secret of another group is not the core one's... but an entry without a group covers
    // every group.
    starts(
        kube(
            "GET",
            "/apis/example.com/v1/namespaces/prod-eu/secrets/x",
            None,
        ),
        "denied by no-prod-secrets",
    );
    // Deleting by name: only the named ones; a deletecollection may reach them.
    starts(
        kube("DELETE", "/api/v1/namespaces/dev/configmaps/db-main", None),
        "denied by keep-db: delete configmaps `db-main`",
    );
    starts(
        kube("DELETE", "/api/v1/namespaces/dev/configmaps/web", None),
        "allowed",
    );
    starts(
        kube("DELETE", "/api/v1/namespaces/dev/configmaps", None),
        "denied by keep-db: deletecollection configmaps in namespace `dev`",
    );
    // A selector naming one object narrows a list or watch, never a deletecollection.
    starts(
        kube(
            "GET",
            "/api/v1/namespaces/prod-eu/secrets",
            Some("fieldSelector=metadata.name%3Dweb"),
        ),
        "denied by no-prod-secrets: list secrets `web`",
    );
    // RBAC changes wait for people; reading them does not.
    starts(
        kube(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/dev/rolebindings",
            None,
        ),
        "held by rbac-waits: create rolebindings.rbac.authorization.k8s.io in namespace `dev`",
    );
    starts(
        kube(
            "DELETE",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/admin",
            None,
        ),
        "held by rbac-waits",
    );
    starts(
        kube(
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            None,
        ),
        "allowed",
    );
    // Exec: the allow list passes `ls`; anything else waits; `rm` is refused (deny first).
    let exec = "/api/v1/namespaces/dev/pods/web-0/exec";
    starts(
        kube("GET", exec, Some("command=ls&command=-l&command=/tmp")),
        "allowed",
    );
    starts(
        kube("POST", exec, Some("command=cat&command=/var/log/syslog")),
        "allowed",
    );
    starts(
        kube(
            "GET",
            exec,
            Some("command=sh&command=-c&command=ls+/&stdin=true"),
        ),
        "allowed",
    );
    starts(
        kube("GET", exec, Some("command=cat&command=/etc/shadow")),
        "held by exec-by-command: get pods/exec `web-0` in namespace `dev`: `cat /etc/shadow`",
    );
    starts(
        kube("GET", exec, Some("command=rm&command=-rf&command=/data")),
        "denied by no-exec-rm: get pods/exec `web-0` in namespace `dev`: `rm -rf /data`",
    );
    // `sh -c` is unwrapped as for SSH; a shell reading stdin cannot be judged.
    starts(
        kube(
            "GET",
            exec,
            Some("command=sh&command=-c&command=rm+-rf+/data"),
        ),
        "denied by no-exec-rm",
    );
    starts(
        kube("GET", exec, Some("command=bash&stdin=true&tty=true")),
        "denied by no-exec-rm: get pods/exec `web-0` in namespace `dev`: `bash`",
    );
    for q in [
        "command=su",
        "command=sudo&command=-i",
        "command=env&command=sh",
        "command=pwsh",
        "command=busybox",
        "command=fish",
        "command=nu",
    ] {
        starts(
            kube("GET", exec, Some(q)),
            "denied by no-exec-rm: get pods/exec `web-0` in namespace `dev`: `",
        );
    }
    // An argument is one word: quotes and `;` in it are not shell syntax (exec runs no shell).
    starts(
        kube("GET", exec, Some("command=ls&command=x%27%3B+rm+-rf+%2F")),
        "allowed",
    );
    starts(
        kube("GET", exec, None),
        "denied by no-exec-rm: get pods/exec `web-0` in namespace `dev`: an exec without a command",
    );
    // Attach: what is typed cannot be judged.
    starts(
        kube(
            "GET",
            "/api/v1/namespaces/dev/pods/web-0/attach",
            Some("stdin=true"),
        ),
        "held by exec-by-command: get pods/attach `web-0` in namespace `dev`: attach",
    );
    // Getting a pod is not an exec.
    starts(
        kube("GET", "/api/v1/namespaces/dev/pods/web-0", None),
        "allowed",
    );
    // Non-resource URLs.
    starts(
        kube("GET", "/healthz/etcd", None),
        "denied by version-ok-healthz-not: get /healthz/etcd",
    );
    starts(kube("GET", "/version", None), "allowed");
    // A plain rule matches a Kubernetes request by its method and path.
    starts(kube("GET", "/admin/x", None), "allowed");
    starts(
        kube("DELETE", "/admin/x/y", None),
        "denied by no-admin-deletes: delete /admin/x/y",
    );
    starts(
        kube("PATCH", "/api/v1/nodes/n1", None),
        "denied by k8s-verbs-everywhere",
    );
}

#[test]
fn judge_plain_requests() {
    let p = policy("plain", RULES).unwrap();
    let plain = |method: &str, path: &str| {
        outcome(judge(
            &p,
            &CI_AGENT,
            "web",
            &HttpAction::Plain { method, path },
        ))
    };
    assert_eq!(plain("GET", "/admin/users"), "allowed");
    assert_eq!(plain("DELETE", "/public/x"), "allowed");
    for (method, path) in [
        ("DELETE", "/admin/users"),
        ("delete", "/admin/users"),
        ("DELETE", "/Admin/users"),
        ("DELETE", "/admin/users/7?force=1"),
        // Spelled another way, the same path.
        ("DELETE", "/public/../admin/users"),
        ("DELETE", "//admin//users"),
        ("DELETE", "/%61dmin/users"),
        ("DELETE", "/public/%2e%2e/admin/users"),
        // A path that cannot be read is judged as any path.
        ("DELETE", "/%zz"),
    ] {
        assert!(
            plain(method, path).starts_with("denied by no-admin-deletes"),
            "{method} {path}: {}",
            plain(method, path)
        );
    }
    // Kubernetes rules over all targets: a plain request has no verb or resource.
    assert_eq!(plain("PATCH", "/api/v1/nodes/n1"), "allowed");
}

#[test]
fn quoting_reads_back_as_the_same_words() {
    for argv in [
        vec!["ls", "-l"],
        vec!["echo", "it's", ""],
        vec!["FOO=1", "ls"],
        vec!["sh", "-c", "echo $HOME; id"],
        vec!["#x", "~", "*"],
    ] {
        let line = argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
        let parsed = crate::protocol::ssh::command::parse(&line);
        assert_eq!(
            &parsed.words[..argv.len()],
            &argv.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..],
            "{line}"
        );
    }
}

#[test]
fn the_documented_example_loads() {
    let doc = include_str!("../../../../docs/kubernetes.md");
    let start = doc.find("```yaml\nrules:\n").expect("the Rules example") + "```yaml\n".len();
    let example = &doc[start..start + doc[start..].find("```").unwrap()];
    let rules = example
        .strip_prefix("rules:\n")
        .unwrap()
        .replace("prod-cluster", "kube")
        .replace("billing-api", "web");
    let p = policy("doc", &rules).unwrap_or_else(|e| panic!("{e}"));
    let info = resolve("GET", "/api/v1/namespaces/prod-1/secrets", Some("watch=1")).unwrap();
    assert_eq!(
        outcome(judge(
            &p,
            &CI_AGENT,
            "kube",
            &HttpAction::Kubernetes {
                info: &info,
                exec: None
            }
        )),
        "denied by no-secret-reads-in-prod: watch secrets in namespace `prod-1`"
    );
}
