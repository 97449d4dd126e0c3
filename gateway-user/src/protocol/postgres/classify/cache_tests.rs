//! Unit tests of the classifier cache: what it hands out is what the classifier says of the
//! text itself, and a policy judges it afresh.

use std::sync::Arc;

use super::{classify, Class, Classified, Classifier};
use crate::policy::{load_dir, test_support::*};
use crate::protocol::postgres::{
    classify::canonical_statements,
    rules::{Statement, StatementRules},
};

fn same(a: &Classified, b: &Classified) -> bool {
    (a.class, &a.tables, &a.functions, a.statements, &a.note)
        == (b.class, &b.tables, &b.functions, b.statements, &b.note)
        && (&a.output_columns, &a.source_columns, &a.set_columns)
            == (&b.output_columns, &b.source_columns, &b.set_columns)
}

#[test]
fn a_cached_verdict_is_the_fresh_one() {
    let c = Classifier::new(64);
    for q in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 2;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "UPDATE t SET a = 1",
        "UPDATE t SET a = 2 WHERE id = 3",
        "DELETE FROM t WHERE id = 4",
        "SELECT set_config('search_path', 'x', false)",
        "EXPLAIN (ANALYZE 0) DELETE FROM t",
        "EXPLAIN (ANALYZE 1) DELETE FROM t",
        "SELECT 1 2",
        "SELECT 3 4",
        "SELECT nextval('s1')",
    ] {
        // The first call fills the cache, the second reads it.
        let first = c.classify(q);
        let second = c.classify(q);
        assert!(
            Arc::ptr_eq(&first, &second),
            "{q}: not served from the cache"
        );
        assert!(same(&second, &classify(q)), "{q}: cached {second:?}");
    }
    // Texts of one shape share one verdict...
    let a = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 77;");
    let b = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 78;");
    assert!(Arc::ptr_eq(&a, &b));
    // ...but not an Opaque one, whose note names the text's own token.
    let x = c.classify("SELECT 5 6");
    assert_eq!(x.class, Class::Opaque);
    assert!(same(&x, &classify("SELECT 5 6")), "{x:?}");
    // Numbers that change a verdict are never shaped away.
    assert_eq!(
        c.classify("EXPLAIN (ANALYZE 0) DELETE FROM t").class,
        Class::Read
    );
    assert_eq!(
        c.classify("EXPLAIN (ANALYZE 1) DELETE FROM t").class,
        Class::WriteUnbounded
    );
}

/// The cache keeps what a text is, never what a policy said of it: after a reload, the same
/// cached verdict is judged by the new rules.
#[test]
fn a_reload_judges_the_cached_verdict_afresh() {
    let allowing = valid_dir(
        "cache-allow",
        "  - name: allow\n    when: {workloads: [ci]}\n    targets: [pg]\n",
    );
    write(&allowing, "e-pg.yaml", PG_TARGET);
    let denying = valid_dir(
        "cache-deny",
        "  - name: allow\n    when: {workloads: [ci]}\n    targets: [pg]\n\
         \x20 - name: no-accounts\n    effect: deny\n    targets: [pg]\n    statements: {tables: [pgbench_accounts]}\n",
    );
    write(&denying, "e-pg.yaml", PG_TARGET);
    let (before, after) = (load_dir(&allowing).unwrap(), load_dir(&denying).unwrap());
    let c = Classifier::new(64);
    let denied = |p: &crate::policy::Policy, sql: &str| {
        let classified = c.classify(sql);
        p.statement_denied(
            &CI_AGENT,
            "pg",
            &Statement::new(&classified, sql, canonical_statements),
        )
        .map(|r| r.name.clone())
    };
    let q = "SELECT abalance FROM pgbench_accounts WHERE aid = 1;";
    assert_eq!(denied(&before, q), None);
    // The same text and another of its shape, both from the cache now.
    assert_eq!(denied(&after, q).as_deref(), Some("no-accounts"));
    assert_eq!(
        denied(
            &after,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 2;"
        )
        .as_deref(),
        Some("no-accounts")
    );
    assert_eq!(
        denied(
            &before,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 3;"
        ),
        None
    );
}

/// µs per statement of each step, printed (`cargo test --release -p gateway-user
/// classify_costs -- --ignored --nocapture`): what the cache saves and what a hit costs.
#[test]
#[ignore = "a measurement, not a check"]
fn classify_costs() {
    use std::time::Instant;
    let texts: Vec<String> = (0..20_000)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                1 + i * 7 % 100_000
            )
        })
        .collect();
    let time = |what: &str, f: &mut dyn FnMut(&str)| {
        for t in texts.iter().take(1_000) {
            f(t);
        }
        let start = Instant::now();
        for t in &texts {
            f(t);
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / texts.len() as f64;
        println!("{what:<45} {us:>8.2} µs/statement");
    };
    time("pg_query::parse (C parse + protobuf)", &mut |t| {
        std::hint::black_box(pg_query::parse(t, pg_query::ParserOptions::DEFAULT).ok());
    });
    time("pg_query::scan", &mut |t| {
        std::hint::black_box(pg_query::scan(t).ok());
    });
    time("pg_query::fingerprint", &mut |t| {
        std::hint::black_box(pg_query::fingerprint(t, 0, 0).ok());
    });
    time("pg_query::normalize", &mut |t| {
        std::hint::black_box(pg_query::normalize(t).ok());
    });
    time("classify (parse + walk)", &mut |t| {
        std::hint::black_box(classify(t));
    });
    time("shape", &mut |t| {
        std::hint::black_box(super::shape::shape(t));
    });
    let c = Classifier::new(10_000);
    time("Classifier::classify (shape hit)", &mut |t| {
        std::hint::black_box(c.classify(t));
    });
    let fixed = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(c.classify(fixed));
    }
    println!(
        "{:<45} {:>8.2} µs/statement",
        "Classifier::classify (exact hit)",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
