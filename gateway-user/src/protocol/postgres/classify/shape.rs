//! The shape of a simple statement: its text with every numeric constant replaced by `?`, the
//! key under which the classifier cache keeps one verdict for all texts of that shape.
//!
//! Clients of the simple query protocol (pgbench, psql, most ORMs' literal SQL) send the same
//! statement again and again with other numbers in it; keyed by exact text, each one would be
//! parsed afresh. Why a shape may share one verdict: the classifier reads a numeric constant's
//! value in two places only, a function's argument (`set_config`'s) and an option's argument
//! (EXPLAIN's `ANALYZE 0`), and both need parentheses, which no shaped text holds. Text
//! constants are never shaped: they can name objects (`nextval('t')`, `'t'::regclass`) and are
//! kept out altogether (no quotes of any kind). Anything this module does not recognise with
//! certainty has no shape, and is cached by exact text as before.

/// The statements that may be shaped: their verdict depends on their tables, columns and
/// conditions, never on a number's value (checked by the tests against the classifier itself).
const SHAPED_KEYWORDS: [&str; 3] = ["select", "update", "delete"];

/// The key of `sql`'s shape, or `None` when it has none (it must then be cached by exact text):
/// `sql` must start with SELECT, UPDATE or DELETE, hold at least one number and nothing outside
/// letters, digits, `_`, white space and `, . = < > * + - ;` (so no quotes, parentheses,
/// parameters, casts or comments), with `;` only at its end. A number is a run of digits with at
/// most one `.` (`7`, `7.`, `.5`, `3.25`); one followed by a letter, `_`, `.` or a digit
/// (`1e5`, `0x1f`, `1_000`, `1.2.3`) leaves the text without a shape, since PostgreSQL's
/// lexer would cut it differently.
pub(super) fn shape(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let start = b.iter().position(|c| !c.is_ascii_whitespace())?;
    let word_end = b[start..]
        .iter()
        .position(|c| !is_ident(*c))
        .map_or(b.len(), |n| start + n);
    let word = &sql[start..word_end];
    if !SHAPED_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
        return None;
    }
    let mut key = String::with_capacity(sql.len());
    let mut numbers = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            // A name or keyword, digits in it included (`t1` is not a number).
            let end = b[i..]
                .iter()
                .position(|c| !is_ident(*c))
                .map_or(b.len(), |n| i + n);
            key.push_str(&sql[i..end]);
            i = end;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let mut end = i;
            let mut dots = 0;
            while end < b.len() && (b[end].is_ascii_digit() || b[end] == b'.') {
                dots += usize::from(b[end] == b'.');
                end += 1;
            }
            if dots > 1 || b.get(end).is_some_and(|c| is_ident(*c)) {
                return None;
            }
            key.push('?');
            numbers += 1;
            i = end;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            // A comment.
            return None;
        } else if c == b';' {
            // One statement only, and nothing after it.
            if !b[i + 1..].iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            key.push_str(&sql[i..]);
            i = b.len();
        } else if c.is_ascii_whitespace() || b",.=<>*+-".contains(&c) {
            key.push(c as char);
            i += 1;
        } else {
            return None;
        }
    }
    (numbers > 0).then_some(key)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[cfg(test)]
mod tests {
    use super::{super::classify, shape};

    #[test]
    fn numbers_only_are_shaped() {
        let s = |q: &str| shape(q);
        assert_eq!(
            s("SELECT abalance FROM pgbench_accounts WHERE aid = 81234;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_eq!(
            s("  update t1 set x = x + -4.5 where id = .5").as_deref(),
            Some("  update t1 set x = x + -? where id = ?")
        );
        assert_eq!(
            s("DELETE FROM t WHERE id >= 7.").as_deref(),
            Some("DELETE FROM t WHERE id >= ?")
        );
        // No number: the exact text is the key already.
        assert_eq!(s("SELECT a FROM t"), None);
        for q in [
            "INSERT INTO t VALUES (1)",
            "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
            "SELECT set_config('x', 1, false)",
            "SELECT 1 FROM t WHERE x = 'a1'",
            "SELECT \"t1\".a FROM t1 WHERE id = 1",
            "SELECT $1 + 1",
            "SELECT 1::regclass",
            "SELECT 1 -- 2",
            "SELECT 1 /* 2 */",
            "SELECT 1; DELETE FROM t WHERE id = 2",
            "SELECT 1e5",
            "SELECT 0x1f",
            "SELECT 1_000",
            "SELECT 1.2.3",
            "SELECT 1abc",
            "SELECTX 1",
            "WITH d AS (DELETE FROM t) SELECT 1",
            "SELECT 1 FROM t WHERE x = E'\\x'",
            "SELECT 1 % 2",
            "SELECT 1 ^ 2",
            "SELECT 1\u{0}",
            "SELECT é, 1",
        ] {
            assert_eq!(s(q), None, "{q}");
        }
    }

    /// What makes a shared verdict right: every text of one shape gets the verdict the
    /// classifier gives it by itself, numbers of any size and kind.
    #[test]
    fn one_shape_one_verdict() {
        let numbers = [
            "0",
            "1",
            "2147483648",
            "99999999999999999999999",
            "1.5",
            ".5",
            "7.",
        ];
        let mut compared = 0;
        for template in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = #;",
            "select * from t where a = # and b < # or c > # limit # offset #",
            "SELECT a, b FROM t, u WHERE t.id = u.id AND t.x = # ORDER BY # FOR UPDATE",
            "SELECT # INTO t2 FROM t",
            "SELECT x FROM t FETCH FIRST # ROWS ONLY",
            "UPDATE pgbench_accounts SET abalance = abalance + -# WHERE aid = #;",
            "UPDATE t SET a = #",
            "UPDATE t SET a = # WHERE # = #",
            "DELETE FROM t WHERE id = #",
            "DELETE FROM t WHERE # < #",
            "SELECT a AT TIME ZONE # FROM t",
            "SELECT # + # * #",
            "SELECT # #",
            "SELECT t.# FROM t",
            "DELETE FROM # WHERE id = #",
        ] {
            let first = template.replace('#', numbers[0]);
            let key = shape(&first).expect(template);
            let reference = classify(&first);
            for n in &numbers[1..] {
                let q = template.replace('#', n);
                // `t.#` with `.5` is another shape (`t..?`), with `1.5` none (PostgreSQL reads
                // `.1` `.5`): only texts of one shape share a verdict.
                if shape(&q).as_deref() != Some(key.as_str()) {
                    assert!(template.contains(".#"), "{q} has no shape or another one");
                    continue;
                }
                let c = classify(&q);
                assert_eq!(
                    (c.class, &c.tables, &c.functions, c.statements),
                    (
                        reference.class,
                        &reference.tables,
                        &reference.functions,
                        reference.statements
                    ),
                    "{q} against {first}"
                );
                assert_eq!(
                    (&c.output_columns, &c.source_columns, &c.set_columns),
                    (
                        &reference.output_columns,
                        &reference.source_columns,
                        &reference.set_columns
                    ),
                    "{q} against {first}"
                );
                compared += 1;
            }
        }
        assert!(compared >= 80, "only {compared} texts compared");
    }
}
