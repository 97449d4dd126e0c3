//! Port-forward rules: the loader's checks of `ports`, and `judge` (deny rules, the allowance,
//! approval) over a policy loaded from YAML text.

use super::*;
use crate::policy::{load_dir, test_support::*};
use crate::protocol::http::request_info::resolve;

const TARGET: &str = "version: 2\ntargets:\n\
\x20 - name: kube\n    protocol: http\n    addresses: [127.0.0.5]\n    ports: [6443]\n    credential: {from: env, name: KUBE_TOKEN}\n    http: {profile: kubernetes, upstream_tls: {mode: disable}}\n";

fn policy(tag: &str, rules: &str) -> Result<Policy, String> {
    let d = valid_dir(tag, rules);
    write(&d, "e-http.yaml", TARGET);
    let p = load_dir(&d).map_err(|e| format!("{e:#}"));
    std::fs::remove_dir_all(&d).unwrap();
    p
}

const ALLOW: &str = "    effect: allow\n";

#[test]
fn ports_load_only_as_an_allowance_for_port_forwards() {
    for (section, extra, want) in [
        (
            "{resources: [pods/portforward], ports: []}",
            ALLOW,
            "ports is empty",
        ),
        (
            "{resources: [pods/portforward], ports: [0]}",
            ALLOW,
            "0 is not a port",
        ),
        (
            "{resources: [pods/portforward], ports: [65536]}",
            ALLOW,
            "65536 is not a port",
        ),
        (
            "{resources: [pods/portforward], ports: [-1]}",
            ALLOW,
            "-1 is not a port",
        ),
        (
            "{names: [db-0], ports: [5432]}",
            ALLOW,
            "ports needs resources: [pods/portforward]",
        ),
        (
            "{resources: [pods/portforward, secrets], ports: [5432]}",
            ALLOW,
            "resources has `secrets`",
        ),
        (
            "{resources: [\"pods/*\"], ports: [5432]}",
            ALLOW,
            "resources has `pods/*`",
        ),
        (
            "{resources: [pods/portforward], verbs: [get], ports: [5432]}",
            ALLOW,
            "needs both get and create",
        ),
        (
            "{resources: [pods/portforward], ports: [5432]}",
            "    effect: deny\n",
            "needs `effect: allow` without `approval`",
        ),
        (
            "{resources: [pods/portforward], ports: [5432]}",
            "    approval: {approvers: [sre]}\n",
            "needs `effect: allow` without `approval`",
        ),
        (
            "{resources: [pods/portforward]}",
            ALLOW,
            "or `ports` with `effect: allow`",
        ),
        (
            "{resources: [pods/portforward], ports: [http]}",
            ALLOW,
            "rule `r1`",
        ),
    ] {
        let rules = format!("  - name: r1\n    targets: [kube]\n    requests: {section}\n{extra}");
        let e = match policy("pf-parse", &rules) {
            Ok(_) => panic!("`{section}` loaded"),
            Err(e) => e,
        };
        assert!(e.contains("rule `r1`"), "{section}: {e}");
        assert!(e.contains(want), "{section}: wanted `{want}` in: {e}");
    }
    let ok = "  - name: r1\n    effect: allow\n    targets: [kube]\n    requests: {verbs: [GET, create], resources: [Pods/PortForward], namespaces: [dev], names: [db-*], ports: [5432, 8080]}\n";
    policy("pf-ok", ok).unwrap_or_else(|e| panic!("{e}"));
}

const RULES: &str = "\
\x20 - name: base\n    when: {workloads: [ci]}\n    targets: [kube]\n\
\x20 - name: db-forward\n    effect: allow\n    targets: [kube]\n    requests: {resources: [pods/portforward], namespaces: [dev], names: [db-*], ports: [5432]}\n\
\x20 - name: web-forward\n    effect: allow\n    targets: [kube]\n    requests: {resources: [pods/portforward], namespaces: [dev], ports: [8080]}\n\
\x20 - name: not-db-9\n    effect: deny\n    targets: [kube]\n    requests: {resources: [pods/portforward], names: [db-9]}\n\
\x20 - name: prod-waits\n    targets: [kube]\n    requests: {resources: [pods/portforward], namespaces: [prod]}\n    approval: {approvers: [sre]}\n\
\x20 - name: prod-forward\n    effect: allow\n    targets: [kube]\n    requests: {resources: [pods/portforward], namespaces: [prod], ports: [80]}\n";

fn outcome(j: Judgement<'_>) -> String {
    match j {
        Judgement::Allowed => "allowed".into(),
        Judgement::Denied { rule, why } => format!("denied by {rule}: {why}"),
        Judgement::Approval { rule, why } => format!("held by {}: {why}", rule.name),
    }
}

#[test]
fn a_port_forward_needs_an_allowing_rule_for_every_port() {
    let p = policy("pf-judge", RULES).unwrap();
    let judge_at = |ns: &str, pod: &str, query: &str, transport: Transport| {
        let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/portforward");
        let info = resolve("GET", &path, Some(query)).unwrap();
        let asked = Asked {
            transport,
            ports: query_ports(query).unwrap(),
        };
        let action = HttpAction::Kubernetes {
            info: &info,
            exec: None,
        };
        outcome(judge(&p, &CI_AGENT, "kube", &action, Some(&asked)))
    };
    let tunnel = Transport::Tunnel;
    // SPDY: the ports come per stream; the pod must be covered by an allowing rule.
    assert_eq!(judge_at("dev", "db-0", "", tunnel), "allowed");
    assert_eq!(
        judge_at("team-a", "db-0", "", tunnel),
        "denied by (no rule allows port-forwards): get pods/portforward `db-0` in namespace `team-a`: port-forwards are refused unless a rule with `ports` allows them"
    );
    // Ports in the query: all of them, each allowed by a rule that covers the pod.
    assert_eq!(
        judge_at("dev", "db-0", "ports=5432,8080", tunnel),
        "allowed"
    );
    assert_eq!(
        judge_at("dev", "web-0", "ports=8080&ports=5432", tunnel),
        "denied by web-forward: get pods/portforward `web-0` in namespace `dev`: port 5432 is not among the ports allowed (8080)"
    );
    // The WebSocket channel protocol takes its ports from the query only: none is refused.
    assert!(
        judge_at("dev", "db-0", "", Transport::Channels).contains("names none"),
        "channels"
    );
    assert_eq!(
        judge_at("dev", "db-0", "ports=5432", Transport::Channels),
        "allowed"
    );
    // A deny rule wins over the allowing rules.
    assert!(judge_at("dev", "db-9", "ports=5432", tunnel).starts_with("denied by not-db-9"));
    // Approval holds a forward an allowing rule covers; one it does not is refused first.
    assert!(judge_at("prod", "web", "ports=80", tunnel).starts_with("held by prod-waits"));
    assert!(judge_at("prod", "web", "ports=81", tunnel).starts_with("denied by prod-forward"));

    // Stream by stream, under the policy in force.
    let (_tx, rx) = watch::channel(Arc::new(p.clone()));
    let stream_judge = |pod: &str| PortJudge {
        policy: rx.clone(),
        issuer: CI_AGENT.issuer.into(),
        subject: CI_AGENT.subject.into(),
        groups: Vec::new(),
        workload: CI_AGENT.workload.into(),
        target: "kube".into(),
        info: resolve(
            "POST",
            &format!("/api/v1/namespaces/dev/pods/{pod}/portforward"),
            None,
        )
        .unwrap(),
    };
    assert!(stream_judge("db-0").port(5432).is_ok());
    assert!(stream_judge("db-0").port(8080).is_ok());
    let (rule, why) = stream_judge("web-0").port(5432).unwrap_err();
    assert_eq!(rule, "web-forward");
    assert!(why.contains("port 5432"), "{why}");
    assert_eq!(stream_judge("db-9").port(5432).unwrap_err().0, "not-db-9");
}
