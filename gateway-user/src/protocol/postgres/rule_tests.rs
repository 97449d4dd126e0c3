//! The statement rules of a policy judging real SQL classifications: the SQL side of
//! `policy::rules` (classes, tables, functions, patterns over the canonical text).

use super::rules::{Statement, StatementRules};
use crate::policy::{load_dir, test_support::*, Decision, Who};

use super::classify::{canonical_statements, classify};

fn classified(sql: &str) -> crate::statement::Classified {
    classify(sql)
}

#[test]
fn approval_rules_hold_what_no_deny_rule_refuses() {
    let d = valid_dir(
        "approvalrules",
        "  - name: allow\n    when: {workloads: [ci]}\n    targets: [pg]\n\
         \x20 - name: no-grants\n    effect: deny\n    targets: [pg]\n    statements: {classes: [dcl]}\n\
         \x20 - name: deletes-by-id\n    when: {workloads: [ci]}\n    targets: [pg]\n    statements: {patterns: [\"(?i)^delete from orders where id = \\\\$1$\"]}\n    approval: {approvers: [dba], quorum: 2, timeout_secs: 30, mode: deny_and_retry, retry_window_secs: 90}\n\
         \x20 - name: ddl-waits\n    targets: [pg]\n    statements: {classes: [ddl, dcl]}\n    approval: {approvers: [dba, sre]}\n",
    );
    write(&d, "e-pg.yaml", PG_TARGET);
    let p = load_dir(&d).unwrap();
    let who = CI_AGENT;
    assert_eq!(
        p.decide(&who, "pg"),
        Decision::Allow {
            rule: "allow".into()
        }
    );
    let held = |sql: &str| {
        let c = classified(sql);
        let stmt = Statement::new(&c, sql, canonical_statements);
        (
            p.statement_denied(&who, "pg", &stmt)
                .map(|r| r.name.clone()),
            p.approval_required(&who, "pg", &stmt)
                .map(|r| r.name.clone()),
        )
    };
    // Approval rules deny nothing by themselves; a deny rule wins over them.
    assert_eq!(held("DROP TABLE t"), (None, Some("ddl-waits".into())));
    assert_eq!(
        held("GRANT SELECT ON t TO x"),
        (Some("no-grants".into()), Some("ddl-waits".into()))
    );
    assert_eq!(held("SELECT 1"), (None, None));
    // Patterns see each statement printed back by libpg_query, constants as $1: case,
    // spacing, comments and statements in front do not hide a match.
    for sql in [
        "delete   from orders where id = 42",
        "/* routine */ DELETE FROM orders WHERE id = 7",
        "DELETE/**/FROM orders WHERE id = 7",
        "-- c\nDELETE FROM orders WHERE id = 7",
        "SELECT 1; DELETE FROM orders WHERE id = 7",
    ] {
        assert_eq!(held(sql).1.as_deref(), Some("deletes-by-id"), "{sql}");
    }
    assert_eq!(held("DELETE FROM orders WHERE id > 42").1, None);
    // Opaque statements wait (fail closed), for the first rule in file order.
    assert_eq!(
        held("DO $$ BEGIN END $$").1.as_deref(),
        Some("deletes-by-id")
    );
    let spec = p.rules[2].approval.as_ref().unwrap();
    assert_eq!(
        (
            spec.quorum,
            spec.mode,
            spec.retry_window.as_secs(),
            spec.timeout.as_secs()
        ),
        (2, crate::approval::Mode::DenyAndRetry, 90, 30)
    );
    let spec = p.rules[3].approval.as_ref().unwrap();
    assert_eq!(
        (spec.quorum, spec.mode, spec.timeout.as_secs()),
        (1, crate::approval::Mode::Hold, 300)
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn statement_rules_deny_by_class_table_and_function() {
    let d = valid_dir(
        "stmtrules",
        "  - name: allow\n    when: {workloads: [ci]}\n    targets: [pg]\n\
         \x20 - name: no-ddl\n    effect: deny\n    when: {workloads: [ci]}\n    targets: [pg]\n    statements: {classes: [ddl, dcl]}\n\
         \x20 - name: audit-append-only\n    effect: deny\n    targets: [pg]\n    statements: {classes: [write, write_unbounded], tables: [\"public.audit_*\"]}\n\
         \x20 - name: no-file-reads\n    effect: deny\n    targets: [\"*\"]\n    statements: {functions: [pg_read_file]}\n",
    );
    write(&d, "e-pg.yaml", PG_TARGET);
    let p = load_dir(&d).unwrap();
    let who = CI_AGENT;
    // The statement rules play no part in the connection decision.
    assert_eq!(
        p.decide(&who, "pg"),
        Decision::Allow {
            rule: "allow".into()
        }
    );
    let denied = |sql: &str| {
        let c = classified(sql);
        p.statement_denied(&who, "pg", &Statement::new(&c, sql, canonical_statements))
            .map(|r| r.name.clone())
    };
    assert_eq!(denied("DROP TABLE items").as_deref(), Some("no-ddl"));
    assert_eq!(
        denied("GRANT SELECT ON items TO x").as_deref(),
        Some("no-ddl")
    );
    assert_eq!(denied("SELECT * FROM items"), None);
    assert_eq!(denied("INSERT INTO items VALUES (1)"), None);
    // Table patterns: schema-qualified, unqualified (any schema), other schema, case.
    assert_eq!(
        denied("DELETE FROM public.audit_log WHERE id = 1").as_deref(),
        Some("audit-append-only")
    );
    assert_eq!(
        denied("WITH d AS (DELETE FROM audit_log RETURNING *) SELECT * FROM d").as_deref(),
        Some("audit-append-only")
    );
    assert_eq!(
        denied("UPDATE \"AUDIT_LOG\" SET x = 1 WHERE id = 2").as_deref(),
        Some("audit-append-only")
    );
    assert_eq!(denied("DELETE FROM archive.audit_log WHERE id = 1"), None);
    assert_eq!(denied("SELECT * FROM audit_log"), None);
    // Functions, qualified or not.
    assert_eq!(
        denied("SELECT pg_catalog.pg_read_file('/etc/passwd')").as_deref(),
        Some("no-file-reads")
    );
    // Opaque statements match every statement rule that applies.
    assert_eq!(denied("DO $$ BEGIN END $$").as_deref(), Some("no-ddl"));
    assert_eq!(denied("SELEC oops").as_deref(), Some("no-ddl"));
    // Another workload: only the rules without `when` apply.
    let other = Who {
        workload: "other",
        login: None,
        ..who.clone()
    };
    assert_eq!(
        p.statement_denied(
            &other,
            "pg",
            &Statement::new(
                &classified("DROP TABLE items"),
                "DROP TABLE items",
                canonical_statements,
            )
        )
        .map(|r| r.name.clone()),
        None
    );
    assert_eq!(
        p.statement_denied(
            &other,
            "pg",
            &Statement::new(
                &classified("DO $$ BEGIN END $$"),
                "DO $$ BEGIN END $$",
                canonical_statements,
            )
        )
        .map(|r| r.name.clone())
        .as_deref(),
        Some("audit-append-only")
    );
    std::fs::remove_dir_all(&d).unwrap();
}
