//! Unit tests of `classify`.

use std::{collections::BTreeSet, sync::Arc};

use super::*;

fn class(sql: &str) -> Class {
    classify(sql).class
}

fn tables(sql: &str) -> Vec<String> {
    classify(sql)
        .tables
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Asserts the class of each query, naming the query on failure.
fn assert_classes(expected: Class, queries: &[&str]) {
    for q in queries {
        let c = classify(q);
        assert_eq!(c.class, expected, "{q}: {c:?}");
        if expected != Class::Opaque {
            assert_eq!(c.note, None, "{q}");
        }
    }
}

#[test]
fn read() {
    assert_classes(
        Class::Read,
        &[
            "SELECT * FROM t",
            "VALUES (1), (2)",
            "TABLE t",
            "SELECT a FROM t UNION SELECT b FROM u",
            "SHOW search_path",
            "BEGIN",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT s",
            "RELEASE SAVEPOINT s",
            "ROLLBACK TO SAVEPOINT s",
            "SET search_path = a",
            "SET LOCAL statement_timeout = '5s'",
            "RESET search_path",
            "RESET ALL",
            "SET TRANSACTION READ ONLY",
            "SET CONSTRAINTS ALL DEFERRED",
            "DISCARD ALL",
            "DEALLOCATE p",
            "DECLARE c CURSOR FOR SELECT * FROM t",
            "FETCH 10 FROM c",
            "MOVE NEXT IN c",
            "CLOSE c",
            "LISTEN chan",
            "UNLISTEN *",
            "COPY t TO STDOUT",
            "COPY (SELECT 1) TO STDOUT",
            "EXPLAIN SELECT * FROM t",
            "PREPARE p AS SELECT * FROM t WHERE id = $1",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_sleep(1)",
            "SELECT current_setting('work_mem')",
        ],
    );
}

#[test]
fn write() {
    assert_classes(
        Class::Write,
        &[
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET a = 1",
            "UPDATE t SET a = 1 WHERE id = 1",
            "DELETE FROM t WHERE id = 1",
            "DELETE FROM t WHERE CURRENT OF c",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
            "MERGE INTO t USING s ON true WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
            "MERGE INTO t USING s ON true WHEN MATCHED AND t.id = 3 THEN DELETE",
            "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE AND t.a > 1 THEN DELETE",
            "UPDATE t SET a = 1 WHERE id = 1 AND true",
            "UPDATE t SET a = 1 WHERE NOT (id = 1)",
            "DELETE FROM t WHERE id = 1 OR id = 2",
            "DELETE FROM t WHERE id = $1",
            "DELETE FROM t WHERE id IN (SELECT id FROM u)",
            "COPY t FROM STDIN",
            "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
            "NOTIFY chan, 'x'",
            "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
            "SELECT nextval('s')",
            "SELECT setval('s', 1)",
            "SELECT pg_notify('chan', 'x')",
            "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
            "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
            "SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
        ],
    );
}

#[test]
fn write_unbounded() {
    assert_classes(
        Class::WriteUnbounded,
        &[
            "DELETE FROM t",
            "UPDATE t SET a = 1",
            "UPDATE t SET a = u.a FROM u",
            "DELETE FROM t USING u",
            "TRUNCATE t",
            "TRUNCATE TABLE a, b CASCADE",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM b",
            "EXPLAIN ANALYZE DELETE FROM t",
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE true) DELETE FROM t",
            "PREPARE p AS DELETE FROM t",
            "COPY (DELETE FROM t RETURNING *) TO STDOUT",
            // One bounded and one unbounded write: the higher wins.
            "DELETE FROM t WHERE id = 1; DELETE FROM u",
            // A condition that reads no column holds for every row or none.
            "DELETE FROM t WHERE true",
            "UPDATE t SET a = 1 WHERE 1 = 1",
            "DELETE FROM t WHERE 'a' = 'a'",
            "DELETE FROM t WHERE NOT false",
            "DELETE FROM t WHERE $1",
            "DELETE FROM t WHERE random() < 2",
            "DELETE FROM t WHERE (SELECT true)",
            "DELETE FROM t WHERE EXISTS (SELECT 1)",
            "UPDATE t SET a = 1 WHERE true::bool",
            "DELETE FROM t WHERE id = 1 OR true",
            "DELETE FROM t WHERE id = id",
            "DELETE FROM t WHERE t.a >= t.a",
            "DELETE FROM t WHERE a IS NOT DISTINCT FROM a",
            "WITH d AS (DELETE FROM t WHERE 1 = 1 RETURNING *) SELECT * FROM d",
            // MERGE: like the UPDATE or DELETE it can do.
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            "MERGE INTO t USING s ON true WHEN MATCHED THEN UPDATE SET a = 1",
            "MERGE INTO t USING (SELECT 1) s ON 1 = 1 WHEN MATCHED THEN DELETE",
            "MERGE INTO t USING s ON t.id = t.id WHEN MATCHED THEN DELETE",
            "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
            "MERGE INTO t USING s ON true WHEN MATCHED AND true THEN UPDATE SET a = 1 \
             WHEN NOT MATCHED THEN INSERT VALUES (1)",
        ],
    );
}

#[test]
fn ddl() {
    assert_classes(
        Class::Ddl,
        &[
            "CREATE TABLE t (id int PRIMARY KEY)",
            "CREATE TEMP TABLE t (id int)",
            "CREATE INDEX i ON t (a)",
            "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a) WHERE a > 0",
            "ALTER TABLE t ADD COLUMN b text",
            "ALTER TABLE t OWNER TO bob",
            "ALTER TABLE t REPLICA IDENTITY FULL",
            "DROP TABLE t",
            "DROP INDEX i",
            "DROP SCHEMA s CASCADE",
            "DROP FUNCTION f(int)",
            "CREATE VIEW v AS SELECT * FROM t",
            "CREATE MATERIALIZED VIEW m AS SELECT * FROM t",
            "REFRESH MATERIALIZED VIEW m",
            "CREATE SCHEMA s",
            "CREATE SEQUENCE s",
            "CREATE TYPE mood AS ENUM ('a', 'b')",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE FUNCTION f() RETURNS int RETURN 1",
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            "COMMENT ON TABLE t IS 'x'",
            "SELECT 1 INTO newt",
            "SELECT * INTO newt FROM t",
            "CREATE TABLE t2 AS SELECT * FROM t",
            "ALTER SEQUENCE s RESTART",
            "ALTER SCHEMA s RENAME TO s2",
            "ALTER FUNCTION f() OWNER TO bob",
            "ALTER TABLE t SET SCHEMA s",
            "EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1",
            // The CREATE outranks the write it contains.
            "SELECT 1; DROP TABLE t; DELETE FROM u",
        ],
    );
}

#[test]
fn dcl() {
    assert_classes(
        Class::Dcl,
        &[
            "GRANT SELECT ON t TO x",
            "GRANT ALL ON ALL TABLES IN SCHEMA public TO x",
            "REVOKE INSERT ON t FROM x",
            "GRANT admin TO bob",
            "CREATE ROLE bob LOGIN PASSWORD 'x'",
            "CREATE USER bob",
            "CREATE GROUP g",
            "ALTER ROLE bob SUPERUSER",
            "ALTER USER bob SET search_path = a",
            "ALTER ROLE bob RENAME TO rob",
            "DROP ROLE bob",
            "DROP USER IF EXISTS bob",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO x",
            "SET ROLE x",
            "SET LOCAL ROLE x",
            "RESET ROLE",
            "SET role = 'x'",
            "SET SESSION AUTHORIZATION x",
            "SET SESSION AUTHORIZATION DEFAULT",
            "REASSIGN OWNED BY a TO b",
            "DROP OWNED BY a",
            "SECURITY LABEL ON TABLE t IS 'x'",
            "CREATE POLICY p ON t USING (owner = current_user)",
            "DROP POLICY p ON t",
            "ALTER TABLE t DISABLE ROW LEVEL SECURITY",
            "CREATE SCHEMA s CREATE TABLE t (a int) GRANT SELECT ON t TO x",
        ],
    );
}

#[test]
fn admin() {
    assert_classes(
        Class::Admin,
        &[
            "VACUUM",
            "VACUUM FULL t",
            "ANALYZE t",
            "CLUSTER t USING i",
            "REINDEX TABLE t",
            "CHECKPOINT",
            "ALTER SYSTEM SET work_mem = '1GB'",
            "LOAD 'auto_explain'",
            "CREATE EXTENSION dblink",
            "ALTER EXTENSION e UPDATE",
            "DROP EXTENSION e",
            "CREATE DATABASE d",
            "ALTER DATABASE d SET work_mem = '1MB'",
            "ALTER DATABASE d OWNER TO bob",
            "ALTER DATABASE d RENAME TO d2",
            "DROP DATABASE d",
            "CREATE TABLESPACE ts LOCATION '/x'",
            "DROP TABLESPACE ts",
            "CREATE PUBLICATION p FOR ALL TABLES",
            "DROP PUBLICATION p",
            "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p",
            "DROP SUBSCRIPTION s",
            "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
            "CREATE LANGUAGE plperlu",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "COPY t TO '/tmp/x'",
            "COPY t FROM '/etc/passwd'",
            "COPY t FROM PROGRAM 'id'",
            "COPY (SELECT 1) TO PROGRAM 'sh'",
            "SELECT pg_terminate_backend(1)",
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity",
            "SELECT pg_cancel_backend(1)",
            "SELECT pg_reload_conf()",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT * FROM pg_ls_dir('.')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)",
            "SELECT public.dblink_exec('DROP TABLE t')",
            "SELECT pg_switch_wal()",
            "SET log_statement = 'none'",
            "SET session_replication_role = replica",
            // Privileged calls hidden in expressions the top-level type says nothing about.
            "SELECT ARRAY[pg_terminate_backend(1)]",
            "SELECT coalesce(x, 1) FROM t WHERE a = ANY(ARRAY[pg_cancel_backend(2)])",
            "SELECT f(a => pg_reload_conf())",
            "SELECT (pg_stat_file('x')).size",
            "SELECT * FROM t WHERE EXISTS (SELECT 1 WHERE pg_terminate_backend(1))",
            "INSERT INTO t VALUES (pg_read_file('/etc/passwd'))",
            "UPDATE t SET a = pg_read_file('x') WHERE id = 1",
            "CREATE TABLE t (a text DEFAULT pg_read_file('x'))",
            "CREATE VIEW v AS SELECT pg_read_file('x')",
            "WITH x AS (SELECT pg_terminate_backend(1)) SELECT 1",
            "SELECT CASE WHEN true THEN pg_promote() END",
            "SELECT 1; SELECT pg_rotate_logfile()",
            "EXPLAIN ANALYZE SELECT pg_terminate_backend(1)",
        ],
    );
}

#[test]
fn opaque() {
    let cases: &[(&str, &str)] = &[
        ("DO $$ BEGIN END $$", "DO block"),
        (
            "DO LANGUAGE plpgsql $$ BEGIN DELETE FROM t; END $$",
            "DO block",
        ),
        ("CALL p(1)", "CALL"),
        ("EXECUTE p(1)", "EXECUTE"),
        ("CREATE TABLE t2 AS EXECUTE p", "EXECUTE"),
        ("SELEC 1", "syntax error"),
        ("SELECT 1; SELEC 2", "syntax error"),
        ("SELECT * FROM", "syntax error"),
        ("SELECT 'abc", "unterminated"),
        ("SELECT 1\0", "nul"),
        (
            "SELECT query_to_xml('SELECT * FROM secrets', true, true, '')",
            "query_to_xml",
        ),
        (
            "SELECT table_to_xml('secrets', true, true, '')",
            "table_to_xml",
        ),
        ("SELECT 1; CALL p()", "CALL"),
    ];
    for (q, note) in cases {
        let c = classify(q);
        assert_eq!(c.class, Class::Opaque, "{q}: {c:?}");
        let got = c.note.unwrap_or_default().to_lowercase();
        assert!(got.contains(&note.to_lowercase()), "{q}: note {got:?}");
    }
}

#[test]
fn unknown_statement_types_are_opaque() {
    // Nothing in SQL produces these in a raw parse tree, so the fail-closed default arm is
    // exercised directly.
    for kind in ["SetOperationStmt", "PlAssignStmt", "SomeFutureStmt"] {
        let f = Frame {
            kind,
            ..Frame::default()
        };
        let (class, note) = statement_class(&f).unwrap_or((Class::Read, None));
        assert_eq!(class, Class::Opaque, "{kind}");
        assert!(note.is_some_and(|n| n.contains(kind)), "{kind}");
    }
}

#[test]
fn syntax_error_note_carries_parser_text() {
    let c = classify("SELEC 1");
    assert_eq!(c.class, Class::Opaque);
    assert_eq!(c.statements, 0);
    let note = c.note.unwrap_or_default();
    assert!(note.contains("syntax error at or near \"SELEC\""), "{note}");
    // The parser quotes the rest of the input; the note stays short.
    let c = classify(&format!("SELECT 'é{}", "x".repeat(10_000)));
    assert_eq!(c.class, Class::Opaque);
    let note = c.note.unwrap_or_default();
    assert!(note.contains("unterminated"), "{note}");
    assert!(note.len() < 320, "{}", note.len());
}

#[test]
fn empty_is_read_with_no_statements() {
    for q in ["", "   ", "-- just a comment", "/* c */", ";", " ; ; "] {
        let c = classify(q);
        assert_eq!(c.class, Class::Read, "{q:?}");
        assert_eq!(c.statements, 0, "{q:?}");
        assert!(c.tables.is_empty() && c.functions.is_empty() && c.note.is_none());
    }
}

#[test]
fn multi_statement_takes_the_highest_and_counts() {
    let c = classify("SELECT 1; DROP TABLE t");
    assert_eq!(c.class, Class::Ddl);
    assert_eq!(c.statements, 2);
    assert_eq!(tables("SELECT 1; DROP TABLE t"), ["t"]);
    assert_eq!(classify("SELECT 1; SELECT 2; SELECT 3").statements, 3);
    assert_eq!(class("SELECT 1; SELECT 2"), Class::Read);
}

#[test]
fn cte_hidden_delete() {
    let q = "WITH d AS (DELETE FROM audit.events RETURNING *) SELECT count(*) FROM d";
    let c = classify(q);
    assert_eq!(c.class, Class::WriteUnbounded);
    // The DELETE's table is listed; the CTE name is not a relation.
    assert_eq!(tables(q), ["audit.events"]);
    let q = "WITH d AS (DELETE FROM events WHERE id = 1 RETURNING *) SELECT * FROM d";
    assert_eq!(class(q), Class::Write);
    assert_eq!(tables(q), ["events"]);
}

#[test]
fn explain() {
    assert_eq!(class("EXPLAIN DELETE FROM t"), Class::Read);
    assert_eq!(
        class("EXPLAIN ANALYZE DELETE FROM t"),
        Class::WriteUnbounded
    );
    assert_eq!(
        class("EXPLAIN ANALYSE DELETE FROM t"),
        Class::WriteUnbounded
    );
    assert_eq!(class("EXPLAIN (ANALYZE false) DELETE FROM t"), Class::Read);
    assert_eq!(class("EXPLAIN (ANALYZE off) DELETE FROM t"), Class::Read);
    assert_eq!(
        class("EXPLAIN (ANALYZE 1) DELETE FROM t"),
        Class::WriteUnbounded
    );
    assert_eq!(class("EXPLAIN (COSTS off) DELETE FROM t"), Class::Read);
    // Planned, not run.
    assert_eq!(class("EXPLAIN SELECT pg_terminate_backend(1)"), Class::Read);
    assert_eq!(class("EXPLAIN EXECUTE p"), Class::Read);
    // Still lists what it is about.
    assert_eq!(tables("EXPLAIN DELETE FROM s.t"), ["s.t"]);
}

#[test]
fn copy() {
    assert_eq!(class("COPY t FROM STDIN"), Class::Write);
    assert_eq!(class("COPY t TO '/tmp/x'"), Class::Admin);
    assert_eq!(class("COPY (SELECT 1) TO STDOUT"), Class::Read);
    assert_eq!(class("COPY t TO STDOUT"), Class::Read);
    assert_eq!(
        class("COPY (SELECT pg_read_file('x')) TO STDOUT"),
        Class::Admin
    );
    assert_eq!(tables("COPY s.t FROM STDIN"), ["s.t"]);
}

#[test]
fn tables_are_listed_with_schema_deduplicated_and_sorted() {
    let q = "SELECT * FROM public.users u JOIN orders o ON o.user_id = u.id";
    assert_eq!(class(q), Class::Read);
    let c = classify(q);
    assert_eq!(
        c.tables,
        [
            TableRef {
                schema: None,
                name: "orders".into()
            },
            TableRef {
                schema: Some("public".into()),
                name: "users".into()
            },
        ]
    );
    assert_eq!(
        tables("SELECT * FROM b, a, b WHERE x IN (SELECT y FROM c) AND EXISTS (SELECT 1 FROM a)"),
        ["a", "b", "c"]
    );
    assert_eq!(tables("INSERT INTO t SELECT * FROM s.u"), ["t", "s.u"]);
    assert_eq!(
        tables("UPDATE t SET a = u.a FROM u WHERE t.id = u.id"),
        ["t", "u"]
    );
    assert_eq!(
        tables("DELETE FROM t USING u WHERE t.id = u.id"),
        ["t", "u"]
    );
    assert_eq!(
        tables("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"),
        ["s", "t"]
    );
    assert_eq!(tables("DROP TABLE a.b, c"), ["c", "a.b"]);
    assert_eq!(tables("DROP TRIGGER tr ON s.t"), ["s.t"]);
    assert_eq!(tables("COMMENT ON COLUMN s.t.c IS 'x'"), ["s.t"]);
    assert_eq!(tables("TRUNCATE a, s.b"), ["a", "s.b"]);
    assert_eq!(tables("GRANT SELECT ON s.t TO x"), ["s.t"]);
    assert_eq!(tables("LOCK TABLE t"), ["t"]);
    assert_eq!(tables("CREATE INDEX i ON s.t (a)"), ["s.t"]);
    assert_eq!(
        tables("CREATE TABLE c (id int REFERENCES p (id))"),
        ["c", "p"]
    );
    assert_eq!(tables("SELECT 1 INTO newt"), ["newt"]);
    assert_eq!(
        tables("SELECT * FROM a JOIN (b JOIN c ON true) ON true"),
        ["a", "b", "c"]
    );
    assert_eq!(tables("SELECT * FROM mydb.s.t"), ["s.t"]);
    assert_eq!(
        tables("SELECT \"Mixed\" FROM \"Weird Name\""),
        ["Weird Name"]
    );
    // A row-lock target names a FROM item (here an alias), not a relation.
    assert_eq!(tables("SELECT * FROM t x FOR UPDATE OF x"), ["t"]);
}

#[test]
fn cte_names_are_scoped() {
    assert_eq!(tables("WITH x AS (SELECT * FROM t) SELECT * FROM x"), ["t"]);
    // A CTE name shadows a relation only where it is visible.
    assert_eq!(
        tables("SELECT * FROM x, (WITH x AS (SELECT 1) SELECT * FROM x) s"),
        ["x"]
    );
    // A non-recursive CTE's own name inside its body is the relation.
    assert_eq!(
        tables("WITH users AS (SELECT * FROM users WHERE active) SELECT * FROM users"),
        ["users"]
    );
    // ...and later CTEs see earlier ones, not the other way round.
    assert_eq!(
        tables("WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM b"),
        ["b"]
    );
    // RECURSIVE: the name is the CTE inside its own body.
    assert_eq!(
        tables(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) \
             SELECT * FROM r"
        ),
        Vec::<String>::new()
    );
    // Nested WITH sees the outer CTE.
    assert_eq!(
        tables(
            "WITH o AS (SELECT 1) SELECT * FROM (WITH i AS (SELECT * FROM o) SELECT * FROM i) s"
        ),
        Vec::<String>::new()
    );
    // A DML target is always a relation, even if a CTE has that name.
    assert_eq!(
        tables("WITH t AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM t"),
        ["t"]
    );
    assert_eq!(tables("WITH t AS (SELECT 1) SELECT * INTO t FROM t"), ["t"]);
    // Set operations: the WITH sits on the outer node, the references in its arms.
    assert_eq!(
        tables("WITH x AS (SELECT * FROM t) SELECT * FROM x UNION ALL SELECT * FROM x"),
        ["t"]
    );
    assert_eq!(
        tables("WITH x AS (SELECT * FROM t) INSERT INTO u SELECT * FROM x"),
        ["t", "u"]
    );
    // A schema-qualified name is never a CTE.
    assert_eq!(tables("WITH t AS (SELECT 1) SELECT * FROM s.t, t"), ["s.t"]);
}

#[test]
fn functions_are_listed_lower_case_and_qualified() {
    let c =
        classify("SELECT pg_catalog.PG_SLEEP(1), lower(a), LOWER(b), now() FROM t WHERE f(g(1))");
    assert_eq!(c.class, Class::Read);
    assert_eq!(
        c.functions,
        ["f", "g", "lower", "now", "pg_catalog.pg_sleep"]
    );
    assert_eq!(classify("CALL s.p()").functions, ["s.p"]);
    assert_eq!(
        classify("SELECT count(*) OVER (PARTITION BY nextval('s'))").functions,
        ["count", "nextval"]
    );
}

#[test]
fn over_long_is_opaque_without_parsing() {
    let q = format!("SELECT 1 {}", " ".repeat(MAX_QUERY_LEN));
    let c = classify(&q);
    assert_eq!(c.class, Class::Opaque);
    assert!(c.note.unwrap_or_default().contains("too long"));
    // Exactly at the limit it is still parsed.
    let q = format!("SELECT 1{}", " ".repeat(MAX_QUERY_LEN - "SELECT 1".len()));
    assert_eq!(q.len(), MAX_QUERY_LEN);
    assert_eq!(class(&q), Class::Read);
}

#[test]
fn deep_nesting_does_not_panic() {
    for n in [50, 200, 2000] {
        let q = format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
        let _ = classify(&q);
        let q = format!("SELECT 1{}", " + 1".repeat(n));
        let _ = classify(&q);
        let q = format!("SELECT {}1{}", "ARRAY[".repeat(n), "]".repeat(n));
        let _ = classify(&q);
        let q = format!(
            "SELECT * FROM t WHERE a IN {}1{}",
            "(SELECT ".repeat(n),
            ")".repeat(n)
        );
        let c = classify(&q);
        // Either understood or refused, never wrongly harmless with a hidden write.
        assert!(matches!(c.class, Class::Read | Class::Opaque), "{n}");
    }
    let c = classify(&format!("SELECT 1{}", " + 1".repeat(60)));
    assert_eq!(c.class, Class::Opaque);
    assert_eq!(
        c.note.as_deref(),
        Some("parse tree too deeply nested to classify")
    );
    // A hidden write below a deep nest is never Read.
    let q = format!(
        "SELECT {}(SELECT count(*) FROM (DELETE FROM t RETURNING 1) d){}",
        "(".repeat(300),
        ")".repeat(300)
    );
    assert_ne!(class(&q), Class::Read);
}

#[test]
fn cache_returns_the_same_arc() {
    let cache = Classifier::new(2);
    let a = cache.classify("DELETE FROM t");
    let b = cache.classify("DELETE FROM t");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.class, Class::WriteUnbounded);
    // Texts without numbers (those with are kept by shape, in a map of their own).
    let c = cache.classify("SELECT a FROM t");
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(c.class, Class::Read);
    // Capacity 2: a third text evicts the least recently used ("DELETE FROM t").
    let _ = cache.classify("SELECT b FROM t");
    let a2 = cache.classify("DELETE FROM t");
    assert!(!Arc::ptr_eq(&a, &a2));
    assert_eq!(a2.class, Class::WriteUnbounded);
    // Over-long texts are not cached.
    let long = "x".repeat(MAX_QUERY_LEN + 1);
    let l1 = cache.classify(&long);
    let l2 = cache.classify(&long);
    assert_eq!(l1.class, Class::Opaque);
    assert!(!Arc::ptr_eq(&l1, &l2));
    // Capacity 0 still works (one entry).
    let tiny = Classifier::new(0);
    assert!(Arc::ptr_eq(
        &tiny.classify("SELECT 1"),
        &tiny.classify("SELECT 1")
    ));
}

#[test]
fn class_names_match_serde() {
    let mut seen = BTreeSet::new();
    for c in Class::ALL {
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert_eq!(json, format!("\"{}\"", c.as_str()));
        let back: Class = serde_json::from_str(&json).unwrap_or(Class::Read);
        assert_eq!(back, c);
        seen.insert(c);
    }
    assert_eq!(seen.len(), 7);
    // ALL is in privilege order.
    assert!(Class::ALL.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(Class::WriteUnbounded.as_str(), "write_unbounded");
}

#[test]
fn table_ref_display() {
    let t = TableRef {
        schema: Some("public".into()),
        name: "users".into(),
    };
    assert_eq!(t.to_string(), "public.users");
    let t = TableRef {
        schema: None,
        name: "users".into(),
    };
    assert_eq!(t.to_string(), "users");
}

/// Settings that change how the server reads later SQL text are opaque, however they are
/// changed: otherwise `SET standard_conforming_strings = off` or an SJIS client encoding
/// would let the next string hide a statement the gateway's parser cannot see.
#[test]
fn settings_that_change_the_lexer_are_opaque() {
    for sql in [
        "SET standard_conforming_strings = off",
        "SET SESSION standard_conforming_strings TO off",
        "SET LOCAL standard_conforming_strings = off",
        "SET NAMES 'SJIS'",
        "SET client_encoding = 'GBK'",
        "RESET client_encoding",
        "SET backslash_quote = on",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('role', 'admin', false)",
    ] {
        assert_eq!(classify(sql).class, Class::Opaque, "{sql}");
    }
    assert_eq!(classify("SET search_path = app").class, Class::Read);
}

/// asyncpg's type introspection runs this under every policy; a harmless setting changed
/// with constants is a read, anything else set_config does stays Opaque.
#[test]
fn set_config_is_judged_by_setting_name() {
    let c =
        classify("SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new");
    assert_eq!(c.class, Class::Read, "{c:?}");
    for sql in [
        "SELECT set_config('statement_timeout', '5s', true)",
        "SELECT pg_catalog.set_config('application_name', 'x', false)",
        "SELECT set_config('jit', $1, false)",
        "SELECT set_config('JIT', 'off', false)",
    ] {
        assert_eq!(classify(sql).class, Class::Read, "{sql}");
    }
    for sql in [
        "SELECT set_config('search_path', 's30, public', false)",
        "SELECT set_config('role', 'admin', false)",
        "SELECT set_config('session_authorization', 'admin', false)",
        "SELECT set_config('client_encoding', 'SJIS', false)",
        "SELECT set_config('row_security', 'off', false)",
        // A value from a table would sit in the setting, unmasked, for current_setting.
        "SELECT set_config('application_name', email, false) FROM customers",
        "SELECT set_config(name, 'x', false) FROM settings_to_change",
        "SELECT set_config('jit'::text, 'off', false)",
        "SELECT set_config('jit', 'off' || '', false)",
        "SELECT set_config('jit', NULL, false)",
        "SELECT set_config($1, 'off', false)",
        "SELECT set_config(setting_name => 'jit', new_value => 'off', is_local => false)",
    ] {
        assert_eq!(classify(sql).class, Class::Opaque, "{sql}");
    }
    assert_eq!(
        classify("SELECT set_config('application_name', email, false) FROM customers")
            .source_columns,
        ["email"]
    );
}
