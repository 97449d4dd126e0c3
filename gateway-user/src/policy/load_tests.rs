//! Unit tests of `load`.

use super::*;
use crate::policy::{test_support::*, Decision, UdpPolicy, UpstreamTls, Who};

#[test]
fn merges_files_and_matches() {
    let d = valid_dir(
        "ok",
        "  - name: ci-db\n    when: {workloads: [ci]}\n    targets: [db]\n",
    );
    let p = load_dir(&d).unwrap();
    assert_eq!(p.version.len(), 16);
    assert_eq!(p.workloads.len(), 1);
    assert_eq!(p.workloads[0].token, TokenSource::File("/run/token".into()));
    assert_eq!(
        p.targets[0].credential,
        Some(Secret::Env("DB_PASSWORD".into()))
    );
    assert_eq!(p.identity_providers[0].algorithms, vec!["RS256", "ES256"]);
    assert_eq!(p.identity_providers[0].max_lifetime.as_secs(), 900);
    assert_eq!(p.workload_for("/agents/job-1").unwrap().1.name, "ci");
    assert!(p.workload_for("/agents/job-1/sub").is_none());
    let t = |s: &str| {
        p.target_for(s.parse().unwrap())
            .map(|(_, t)| t.name.clone())
    };
    assert_eq!(t("127.0.0.2:5432").as_deref(), Some("db"));
    assert_eq!(t("[::ffff:127.0.8.9]:5432").as_deref(), Some("db"));
    assert_eq!(t("[::1]:5432").as_deref(), Some("db"));
    assert_eq!(t("127.0.0.2:5433"), None);
    assert_eq!(t("127.0.0.3:5432"), None);
    // The version follows the content.
    write(&d, "c-targets.yml", &TARGET.replace("5432", "5433"));
    assert_ne!(load_dir(&d).unwrap().version, p.version);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn rules_default_deny_and_deny_wins() {
    let d = valid_dir(
        "rules",
        "  - name: readers\n    when: {groups: [db-readers], subjects: ['agent-*']}\n    targets: [db]\n  - name: no-contractors\n    effect: deny\n    when: {groups: [contractors]}\n    targets: ['*']\n",
    );
    let p = load_dir(&d).unwrap();
    let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let who = |sub: &'static str, g: &'static [String]| Who {
        issuer: "https://idp.test",
        subject: sub,
        groups: g,
        workload: "ci",
        login: None,
    };
    let readers: &'static [String] = Box::leak(groups(&["db-readers"]).into_boxed_slice());
    let both: &'static [String] =
        Box::leak(groups(&["db-readers", "contractors"]).into_boxed_slice());
    assert_eq!(
        p.decide(&who("agent-7", readers), "db"),
        Decision::Allow {
            rule: "readers".into()
        }
    );
    assert!(
        !p.decide(&who("human-1", readers), "db").allowed(),
        "subject glob"
    );
    assert!(!p.decide(&who("agent-7", &[]), "db").allowed(), "no group");
    assert!(
        !p.decide(&who("agent-7", readers), "other").allowed(),
        "other target"
    );
    match p.decide(&who("agent-7", both), "db") {
        Decision::Deny { rule, .. } => assert_eq!(rule.as_deref(), Some("no-contractors")),
        d => panic!("deny must win: {d:?}"),
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn dangling_references_and_conflicts_are_refused() {
    let d = valid_dir(
        "dangling",
        "  - name: r1\n    when: {workloads: [nope], issuers: ['https://other']}\n    targets: [missing-db]\n",
    );
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(
        err.contains("d-rules.yaml:3:3: rule `r1` names unknown workload `nope`"),
        "{err}"
    );
    assert!(err.contains("unknown target `missing-db`"), "{err}");
    assert!(err.contains("issuer `https://other`"), "{err}");
    write(
        &d,
        "d-rules.yaml",
        "version: 2\nrules:\n  - name: a\n    when: {groups: [x]}\n    targets: [db]\n  - name: b\n    effect: deny\n    when: {groups: [x]}\n    targets: ['*']\n",
    );
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(
        err.contains("rules `a` and `b`") && err.contains("opposite effects"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn symmetric_and_none_algorithms_are_refused_at_their_line() {
    let d = valid_dir("alg", "  - name: r\n    targets: [db]\n");
    write(
        &d,
        "a-idp.yaml",
        &IDP.replace("[RS256, ES256]", "[RS256, HS256]"),
    );
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("a-idp.yaml:7:"), "{err}");
    assert!(
        err.contains("identity provider `corp`") && err.contains("HS256"),
        "{err}"
    );
    write(&d, "a-idp.yaml", &IDP.replace("[RS256, ES256]", "[none]"));
    assert!(load_dir(&d)
        .unwrap_err()
        .to_string()
        .contains("`none` is not allowed"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn skew_and_lifetime_are_bounded() {
    let d = valid_dir("bounds", "  - name: r\n    targets: [db]\n");
    write(
        &d,
        "a-idp.yaml",
        &format!("{IDP}    clock_skew_secs: 99999999\n"),
    );
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("clock_skew_secs must be at most 300"), "{err}");
    write(
        &d,
        "a-idp.yaml",
        &format!("{IDP}    max_lifetime_secs: 0\n"),
    );
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(
        err.contains("max_lifetime_secs must be between 1 and 86400"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn syntax_error_has_file_line_column() {
    let d = tmpdir("syntax");
    write(
        &d,
        "bad.yaml",
        "version: 2\ntargets:\n  - name: db\n    ports: [5432\n",
    );
    let err = load_dir(&d).unwrap_err().to_string();
    let path = d.join("bad.yaml");
    assert!(
        err.starts_with(&format!("{}:", path.display())),
        "error names the file: {err}"
    );
    let rest = &err[path.display().to_string().len() + 1..];
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts.next().unwrap().parse().expect("line number");
    let col: usize = parts.next().unwrap().parse().expect("column number");
    assert!(line >= 4 && col >= 1, "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_address_names_target_and_line() {
    let d = tmpdir("addr");
    write(
        &d,
        "t.yaml",
        "version: 2\ntargets:\n  - name: fine\n    protocol: tcp\n    addresses: [127.0.0.2]\n    ports: [1]\n  - name: broken-db\n    protocol: tcp\n    addresses: [127.0.0.2, 127.0.0.999]\n    ports: [5432]\n",
    );
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("t.yaml:9:"), "{err}");
    assert!(err.contains("target `broken-db`"), "{err}");
    assert!(err.contains("127.0.0.999"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn unknown_keys_duplicates_and_versions_are_refused() {
    let d = tmpdir("misc");
    write(&d, "a.yaml", &format!("{WORKLOAD}    colour: red\n"));
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("colour") && err.contains("a.yaml:7:"), "{err}");
    write(&d, "a.yaml", "version: 1\n");
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(
        err.contains("unsupported policy version 1") && err.contains("rules"),
        "{err}"
    );
    write(&d, "a.yaml", IDP);
    write(&d, "b.yaml", WORKLOAD);
    write(&d, "c.yaml", &WORKLOAD.replace("/agents/*", "/b/*"));
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("workload `ci` is already defined"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn overlapping_and_mapped_targets() {
    let d = tmpdir("overlap");
    write(&d, "a.yaml", "version: 2\ntargets:\n  - name: a\n    protocol: tcp\n    addresses: [127.0.8.0/24]\n    ports: [5432]\n  - name: b\n    protocol: tcp\n    addresses: [127.0.8.9]\n    ports: [5432]\n");
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("overlaps 127.0.8.0/24 of target `a`"), "{err}");
    // Same addresses on another port do not overlap; a mapped entry is its IPv4 network.
    write(&d, "a.yaml", "version: 2\ntargets:\n  - name: a\n    protocol: tcp\n    addresses: [127.0.8.0/24]\n    ports: [5432]\n  - name: b\n    protocol: tcp\n    addresses: ['::ffff:127.0.9.0/120']\n    ports: [5432, 6432]\n");
    let p = load_dir(&d).unwrap();
    assert_eq!(p.targets[1].addresses[0].to_string(), "127.0.9.0/24");
    assert_eq!(
        p.target_for("127.0.9.7:5432".parse().unwrap())
            .unwrap()
            .1
            .name,
        "b"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn target_on_listener_port_is_refused() {
    let d = tmpdir("loop");
    for net in ["127.0.0.0/8", "0.0.0.0/0", "'::/0'", "'::ffff:127.0.0.1'"] {
        write(&d, "a.yaml", &format!("version: 2\ngateway:\n  listen_port: 15001\ntargets:\n  - name: self\n    protocol: tcp\n    addresses: [{net}]\n    ports: [15001]\n"));
        let err = load_dir(&d).unwrap_err().to_string();
        assert!(err.contains("covers the gateway listener"), "{net}: {err}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn postgres_targets_need_settings_and_keep_tls_on_off_node() {
    let d = tmpdir("pgtarget");
    let cases = [
        ("protocol: postgres\n    credential: {from: env, name: X}\n", "needs a `postgres:` section"),
        ("protocol: postgres\n    postgres: {user: u, upstream_tls: {mode: disable}}\n", "needs a `credential`"),
        ("protocol: tcp\n    postgres: {user: u}\n", "needs `protocol: postgres`"),
        ("protocol: postgres\n    credential: {from: env, name: X}\n    postgres: {user: u, upstream_tls: {mode: verify-ful}}\n", "unknown variant `verify-ful`"),
        ("protocol: postgres\n    credential: {from: env, name: X}\n    postgres: {user: u, max_message_bytes: 10}\n", "max_message_bytes"),
    ];
    for (body, want) in cases {
        write(&d, "a.yaml", &format!("version: 2\ntargets:\n  - name: pg\n    addresses: [127.0.0.3]\n    ports: [5432]\n    {body}"));
        let err = load_dir(&d).unwrap_err().to_string();
        assert!(err.contains(want), "{body}: {err}");
    }
    // Plaintext upstream is refused for a destination off the node...
    write(&d, "a.yaml", "version: 2\ntargets:\n  - name: pg\n    protocol: postgres\n    addresses: [192.0.2.0/24]\n    ports: [5432]\n    credential: {from: env, name: X}\n    postgres: {user: u, upstream_tls: {mode: disable}}\n");
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("only allowed for loopback"), "{err}");
    // ...and verify-full with the public roots is the default.
    write(&d, "a.yaml", "version: 2\ntargets:\n  - name: pg\n    protocol: postgres\n    addresses: [192.0.2.0/24]\n    ports: [5432]\n    credential: {from: env, name: X}\n    postgres: {user: u}\n");
    let p = load_dir(&d).unwrap();
    let pg = p.targets[0].postgres().unwrap();
    assert_eq!(
        pg.upstream_tls,
        UpstreamTls::VerifyFull {
            ca_file: None,
            server_name: None
        }
    );
    assert_eq!(pg.max_message_bytes, 64 << 20);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn mask_rules_compile_and_scope() {
    let d = valid_dir(
        "maskrules",
        "  - name: allow\n    when: {workloads: [ci]}\n    targets: [pg]\n\
         \x20 - name: pii\n    when: {workloads: [ci]}\n    targets: [pg]\n    mask: {columns: [customers.email, \"*.ssn\"], detectors: [email, payment_card], strategy: partial, keep_last: 2}\n\
         \x20 - name: others\n    when: {workloads: [ci]}\n    targets: [pg]\n    mask: {regexes: [\"EMP-[0-9]+\"], strategy: null}\n",
    );
    write(&d, "e-pg.yaml", PG_TARGET);
    let p = load_dir(&d).unwrap();
    let who = CI_AGENT;
    // Mask rules play no part in the connection decision.
    assert_eq!(
        p.decide(&who, "pg"),
        Decision::Allow {
            rule: "allow".into()
        }
    );
    let names: Vec<&str> = p.mask_rules(&who, "pg").map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["pii", "others"]);
    let m = p.rules[1].mask.as_ref().unwrap();
    assert_eq!(
        m.strategy,
        crate::mask::rules::Strategy::Partial { keep_last: 2 }
    );
    assert_eq!(m.columns.len(), 2);
    let other = Who {
        workload: "other",
        login: None,
        ..who.clone()
    };
    assert_eq!(p.mask_rules(&other, "pg").count(), 0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_approval_rules_are_refused_with_their_line() {
    let d = tmpdir("badapproval");
    write(&d, "a-idp.yaml", IDP);
    write(&d, "e-pg.yaml", PG_TARGET);
    write(&d, "c-targets.yml", TARGET);
    let cases = [
        (
            "approval: {approvers: [dba]}",
            "`approval` needs `statements`",
        ),
        (
            "effect: deny\n    statements: {classes: [ddl]}\n    approval: {approvers: [dba]}",
            "approval rules have no effect",
        ),
        (
            "statements: {classes: [ddl]}\n    approval: {approvers: []}",
            "at least one group",
        ),
        (
            "statements: {classes: [ddl]}\n    approval: {approvers: [dba], quorum: 0}",
            "quorum",
        ),
        (
            "statements: {classes: [ddl]}\n    approval: {approvers: [dba], retry_window_secs: 5}",
            "`mode: deny_and_retry` only",
        ),
        (
            "statements: {classes: [ddl]}\n    approval: {approvers: [dba], mode: later}",
            "unknown variant `later`",
        ),
        (
            "statements: {patterns: [\"(unclosed\"]}\n    approval: {approvers: [dba]}",
            "bad pattern",
        ),
        (
            "statements: {classes: [ddl]}\n    approval: {approvers: [dba], quorum: 1, typo: 2}",
            "unknown field `typo`",
        ),
    ];
    for (body, want) in cases {
        write(
            &d,
            "d-rules.yaml",
            &format!("version: 2\nrules:\n  - name: m\n    targets: [pg]\n    {body}\n"),
        );
        let err = load_dir(&d).unwrap_err().to_string();
        assert!(err.contains(want), "{body}: {err}");
        assert!(err.contains("d-rules.yaml:"), "{err}");
    }
    // A webhook must be https, or http to loopback.
    write(&d, "d-rules.yaml", "version: 2\n");
    write(
        &d,
        "f-gw.yaml",
        "version: 2\ngateway:\n  approval_webhooks:\n    - url: http://192.0.2.7/hook\n",
    );
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(
        err.contains("approval_webhooks") && err.contains("f-gw.yaml"),
        "{err}"
    );
    write(
        &d,
        "f-gw.yaml",
        "version: 2\ngateway:\n  approval_webhooks:\n    - {url: \"http://127.0.0.1:9/hook\", format: slack}\n",
    );
    let p = load_dir(&d).unwrap();
    assert_eq!(
        p.gateway.approval_webhooks[0].format,
        crate::approval::WebhookFormat::Slack
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_mask_rules_are_refused_with_their_line() {
    let d = tmpdir("badmask");
    write(&d, "a-idp.yaml", IDP);
    write(&d, "e-pg.yaml", PG_TARGET);
    write(&d, "c-targets.yml", TARGET);
    let cases = [
        (
            "targets: [pg]\n    mask: {detectors: [emails]}",
            "unknown variant `emails`",
        ),
        (
            "targets: [pg]\n    mask: {regexes: [\"(unclosed\"]}",
            "bad regex",
        ),
        (
            "targets: [pg]\n    mask: {columns: [\"a..b\"]}",
            "column pattern",
        ),
        (
            "targets: [pg]\n    mask: {}",
            "needs at least one of columns",
        ),
        (
            "targets: [pg]\n    mask: {columns: [email], keep_last: 3}",
            "keep_last is only",
        ),
        (
            "targets: [pg]\n    mask: {columns: [email], strategy: hash}",
            "needs gateway.mask_key",
        ),
        (
            "targets: [db]\n    mask: {columns: [email]}",
            "masking is for postgres, ssh and http targets",
        ),
        (
            "effect: deny\n    targets: [pg]\n    mask: {columns: [email]}",
            "mask rules have no effect",
        ),
    ];
    for (body, want) in cases {
        write(
            &d,
            "d-rules.yaml",
            &format!("version: 2\nrules:\n  - name: m\n    {body}\n"),
        );
        let err = load_dir(&d).unwrap_err().to_string();
        assert!(err.contains(want), "{body}: {err}");
        if want == "bad regex" {
            assert!(err.contains("d-rules.yaml:5"), "{err}");
        }
    }
    // A short key is refused; a long enough one makes `hash` valid.
    std::env::set_var("AGENTGATE_TEST_MASK_KEY", "short");
    write(
        &d,
        "f-gw.yaml",
        "version: 2\ngateway:\n  mask_key: {from: env, name: AGENTGATE_TEST_MASK_KEY}\n",
    );
    write(&d, "d-rules.yaml", "version: 2\nrules:\n  - name: m\n    targets: [pg]\n    mask: {columns: [email], strategy: hash}\n");
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("at least 16 bytes"), "{err}");
    std::env::set_var("AGENTGATE_TEST_MASK_KEY", "0123456789abcdef0123");
    let p = load_dir(&d).unwrap();
    assert_eq!(p.mask_key.as_deref(), Some(&b"0123456789abcdef0123"[..]));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn statement_rules_must_deny_and_name_postgres_targets() {
    let d = valid_dir(
        "stmtbad",
        "  - name: s1\n    targets: [pg]\n    statements: {classes: [read]}\n\
         \x20 - name: s2\n    effect: deny\n    targets: [db]\n    statements: {classes: [ddl]}\n\
         \x20 - name: s3\n    effect: deny\n    targets: [pg]\n    statements: {}\n\
         \x20 - name: s4\n    effect: deny\n    targets: [pg]\n    statements: {classes: [drop]}\n",
    );
    write(&d, "e-pg.yaml", PG_TARGET);
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("unknown variant `drop`"), "{err}");
    // Without the syntax error, the cross-file problems are all reported.
    let d2 = valid_dir(
        "stmtbad2",
        "  - name: s1\n    targets: [pg]\n    statements: {classes: [read]}\n\
         \x20 - name: s2\n    effect: deny\n    targets: [db]\n    statements: {classes: [ddl]}\n\
         \x20 - name: s3\n    effect: deny\n    targets: [pg]\n    statements: {}\n",
    );
    write(&d2, "e-pg.yaml", PG_TARGET);
    let err = load_dir(&d2).unwrap_err().to_string();
    assert!(
        err.contains("rule `s1`: statement rules can only deny"),
        "{err}"
    );
    assert!(
        err.contains("rule `s2` has statements but target `db` speaks Tcp"),
        "{err}"
    );
    assert!(
        err.contains("rule `s3`: `statements` needs at least one"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&d2).unwrap();
}

#[test]
fn udp_option_of_targets() {
    let d = valid_dir("udp", "");
    assert_eq!(load_dir(&d).unwrap().targets[0].udp, UdpPolicy::Pass);
    write(&d, "c-targets.yml", &format!("{TARGET}    udp: refuse\n"));
    assert_eq!(load_dir(&d).unwrap().targets[0].udp, UdpPolicy::Refuse);
    // Anything else is an error with its place, never read as "pass".
    write(&d, "c-targets.yml", &format!("{TARGET}    udp: drop\n"));
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(
        err.contains("c-targets.yml:") && err.contains("udp"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// An ssh target: key files must exist; a target whose settings are in error is reported once,
/// not again as a target of another protocol by the rules that name it.
#[test]
fn ssh_targets_report_missing_files_once() {
    let d = valid_dir(
        "sshbad",
        "  - name: deploy\n    when: {logins: [deploy]}\n    targets: [build]\n\
         \x20 - name: only\n    effect: deny\n    commands: {allow: [uptime]}\n    targets: [build]\n",
    );
    write(
        &d,
        "e-ssh.yaml",
        "version: 2\ntargets:\n  - name: build\n    protocol: ssh\n    addresses: [127.0.0.9]\n    ports: [22]\n    ssh:\n      host_key: /nonexistent/agentgate-host-key\n      private_key: /nonexistent/agentgate-key\n      known_hosts: /nonexistent/known_hosts\n",
    );
    let err = load_dir(&d).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/agentgate-host-key"), "{err}");
    assert!(!err.contains("speaks Tcp"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
