//! Unit tests of `classify`.

use super::classify;

#[test]
fn output_and_source_columns() {
    let c =
        classify("SELECT c.id, lower(email), row_to_json(c), c.* FROM customers c WHERE ssn = '1'");
    assert_eq!(c.output_columns, ["c", "c.*", "c.id", "email"]);
    let c = classify("SELECT count(*) FROM customers WHERE email LIKE '%x'");
    assert!(c.output_columns.is_empty(), "{:?}", c.output_columns);
    let c = classify("SELECT * FROM customers");
    assert_eq!(c.output_columns, ["*"]);
    // The SET list is a target list too: harmless, it outputs nothing without RETURNING.
    let c = classify("UPDATE customers SET name = name RETURNING email");
    assert_eq!(c.output_columns, ["email", "name"]);
    assert!(c.source_columns.is_empty());
    assert_eq!(c.set_columns, ["name"]);
    let c = classify("INSERT INTO t SELECT email FROM customers");
    assert_eq!(c.source_columns, ["email"]);
    let c = classify("CREATE VIEW v AS SELECT email FROM customers");
    assert!(c.source_columns.is_empty());
    let c = classify("CREATE TABLE t AS SELECT email FROM customers");
    assert_eq!(c.source_columns, ["email"]);
    let c = classify("SELECT 1 FROM customers WHERE pg_notify('ch', email) IS NULL");
    assert_eq!(c.source_columns, ["email"]);
    let c = classify("SELECT 1 FROM customers WHERE lower(email) = 'x'");
    assert!(c.source_columns.is_empty());
    let c = classify("SELECT x FROM (SELECT lower(\"Email\") AS x FROM customers) s");
    assert_eq!(c.output_columns, ["email", "x"]);
    assert_eq!(
        classify("FETCH 10 FROM c").output_columns,
        [super::CURSOR_OUTPUT]
    );
    assert!(classify("MOVE 10 IN c").output_columns.is_empty());
}
