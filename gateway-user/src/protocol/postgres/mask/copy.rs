//! `COPY … TO STDOUT`: rows travel as CopyData lines, not DataRows, and carry no column names.
//! The gateway reads the COPY statement itself to know the columns; what it cannot map to
//! columns it refuses while a column rule could apply.

use std::sync::Arc;

use pg_query::protobuf::{self, node::Node as N};

use super::{catalog::Relation, taint::Taint};
use crate::mask::{detect::Hit, plan::Plan, rules::Origin};

/// What a statement means for masking its COPY output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOut {
    /// Not a COPY to the client.
    No,
    /// Text format from a table: fields map to these columns (schema and table resolved).
    Table {
        schema: Option<String>,
        table: String,
        /// `None`: every column of the table, in order (looked up in the catalog).
        columns: Option<Vec<String>>,
        delimiter: u8,
    },
    /// Lines that can only be scanned by the value detectors (CSV, a query): the tables the
    /// statement reads decide whether that is enough.
    Lines,
    /// Binary COPY: nothing can be read or masked.
    Binary,
}

/// Reads a statement for COPY … TO STDOUT. Unparsable text is not a COPY the server would run
/// either; a Query with several COPYs is read as lines of every table it names.
pub fn copy_out(sql: &str) -> CopyOut {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return CopyOut::No;
    };
    let copies: Vec<&protobuf::CopyStmt> = parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|s| match s.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(N::CopyStmt(c)) if !c.is_from && c.filename.is_empty() && !c.is_program => {
                Some(c.as_ref())
            }
            _ => None,
        })
        .collect();
    let [copy] = copies.as_slice() else {
        return if copies.is_empty() {
            CopyOut::No
        } else {
            CopyOut::Lines
        };
    };
    let mut format = "text".to_string();
    let mut delimiter = None;
    for o in &copy.options {
        if let Some(N::DefElem(d)) = &o.node {
            let arg = d.arg.as_ref().and_then(|a| match &a.node {
                Some(N::String(s)) => Some(s.sval.clone()),
                _ => None,
            });
            match d.defname.as_str() {
                "format" => format = arg.unwrap_or_default().to_ascii_lowercase(),
                "delimiter" => delimiter = arg,
                _ => {}
            }
        }
    }
    match format.as_str() {
        "binary" => return CopyOut::Binary,
        "text" => {}
        _ => return CopyOut::Lines,
    }
    let delimiter = match delimiter.as_deref().map(str::as_bytes) {
        None => b'\t',
        Some([d]) => *d,
        Some(_) => return CopyOut::Lines,
    };
    match (&copy.relation, &copy.query) {
        (Some(rel), None) => {
            let columns: Vec<String> = copy
                .attlist
                .iter()
                .filter_map(|n| match &n.node {
                    Some(N::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .collect();
            CopyOut::Table {
                schema: Some(rel.schemaname.clone()).filter(|s| !s.is_empty()),
                table: rel.relname.clone(),
                columns: (!copy.attlist.is_empty()).then_some(columns),
                delimiter,
            }
        }
        _ => CopyOut::Lines,
    }
}

/// How the lines of one COPY are masked.
#[derive(Clone)]
pub struct CopyMask {
    plan: Arc<Plan>,
    /// The rule of each field, by position; empty when fields are not mapped (detectors only,
    /// over the whole line).
    fields: Vec<Option<usize>>,
    delimiter: u8,
}

impl CopyMask {
    pub fn lines(plan: Arc<Plan>) -> CopyMask {
        CopyMask {
            plan,
            fields: Vec::new(),
            delimiter: b'\t',
        }
    }

    /// Fields are `columns` of `rel`, each matched by its own name and by the columns it
    /// stands for (a partition's column is also its parent table's).
    pub fn table(plan: Arc<Plan>, rel: &Relation, columns: &[String], delimiter: u8) -> CopyMask {
        let fields = columns
            .iter()
            .map(|c| {
                match rel.columns.values().find(|info| info.name == *c) {
                    Some(info) => plan.column_rule_of(rel, info),
                    // A name the catalog does not list is matched by itself.
                    None => plan.column_rule([Origin::Column {
                        schema: &rel.schema,
                        table: &rel.name,
                        column: c,
                    }]),
                }
            })
            .collect();
        CopyMask {
            plan,
            fields,
            delimiter,
        }
    }

    /// One CopyData payload (a line) with its values masked; `None` when nothing changed.
    pub fn apply(&self, line: &[u8], hits: &mut Vec<Hit>) -> Option<Vec<u8>> {
        let out = self.mask_line(line, hits);
        if out.is_some() {
            crate::telemetry::metrics::with(|m| {
                m.mask_rows_rewritten.inc();
            });
        }
        out
    }

    fn mask_line(&self, line: &[u8], hits: &mut Vec<Hit>) -> Option<Vec<u8>> {
        let plan = &self.plan;
        let clean = |r| sanitize(r, self.delimiter);
        if self.fields.is_empty() {
            return plan.detect_in_line(line, hits, clean);
        }
        let (body, end) = match line.strip_suffix(b"\n") {
            Some(b) => (b, &b"\n"[..]),
            None => (line, &b""[..]),
        };
        let fields = split_fields(body, self.delimiter);
        if fields.len() != self.fields.len() {
            // The line cannot be mapped to the columns: every value is redacted.
            return Some(redact_all(&fields, self.delimiter, end));
        }
        let masked: Vec<Option<Option<Vec<u8>>>> = fields
            .iter()
            .enumerate()
            .map(|(i, field)| match self.fields.get(i).copied().flatten() {
                _ if *field == b"\\N" => None,
                Some(rule) => Some(plan.mask_value(rule, field).map(clean)),
                None => plan.detect_clean(field, hits, clean),
            })
            .collect();
        if masked.iter().all(Option::is_none) {
            return None;
        }
        let mut out = Vec::with_capacity(line.len());
        for (i, (field, m)) in fields.iter().zip(masked).enumerate() {
            if i > 0 {
                out.push(self.delimiter);
            }
            match m {
                Some(Some(v)) => out.extend(v),
                Some(None) => out.extend_from_slice(b"\\N"),
                None => out.extend_from_slice(field),
            }
        }
        out.extend_from_slice(end);
        Some(out)
    }
}

/// The fields of a COPY text-format line: split on delimiter bytes that are not escaped. A
/// backslash escapes the byte after it, so a delimiter preceded by an odd run of backslashes is
/// data (`Alice\ Martin` with delimiter `' '` is one field).
fn split_fields(body: &[u8], delimiter: u8) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b if b == delimiter => {
                fields.push(&body[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    fields.push(&body[start..]);
    fields
}

/// Every field of a line replaced by `****` (nulls stay `\N`), for a line whose fields do not
/// match the columns: fail closed rather than mask the wrong field.
fn redact_all(fields: &[&[u8]], delimiter: u8, end: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        out.extend_from_slice(if *field == b"\\N" {
            &b"\\N"[..]
        } else {
            b"****"
        });
    }
    out.extend_from_slice(end);
    out
}

/// A replacement must not end or split a COPY field or line: a kept tail of escaped text may
/// hold a backslash or a separator, which become `*`. Only replacements pass through here;
/// the rest of a line stays as the server wrote it.
fn sanitize(mut v: Vec<u8>, delimiter: u8) -> Vec<u8> {
    for b in v.iter_mut() {
        if *b == delimiter || matches!(*b, b'\\' | b'\n' | b'\r' | b'"' | b',') {
            *b = b'*';
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_copy_statements() {
        let t = copy_out;
        assert_eq!(
            t("COPY customers TO STDOUT"),
            CopyOut::Table {
                schema: None,
                table: "customers".into(),
                columns: None,
                delimiter: b'\t'
            }
        );
        assert_eq!(
            t("copy crm.Customers (id, EMAIL) to stdout with (delimiter '|')"),
            CopyOut::Table {
                schema: Some("crm".into()),
                table: "customers".into(),
                columns: Some(vec!["id".into(), "email".into()]),
                delimiter: b'|'
            }
        );
        assert!(matches!(
            t("COPY customers TO STDOUT (FORMAT csv)"),
            CopyOut::Lines
        ));
        assert!(matches!(
            t("COPY customers TO STDOUT WITH CSV HEADER"),
            CopyOut::Lines
        ));
        assert!(matches!(
            t("COPY customers TO STDOUT (FORMAT binary)"),
            CopyOut::Binary
        ));
        assert!(matches!(
            t("COPY customers TO STDOUT BINARY"),
            CopyOut::Binary
        ));
        assert!(matches!(
            t("COPY (SELECT email FROM customers) TO STDOUT"),
            CopyOut::Lines
        ));
        assert!(matches!(
            t("SELECT 1; COPY customers TO STDOUT"),
            CopyOut::Table { .. }
        ));
        assert!(matches!(
            t("COPY customers TO STDOUT; COPY orders TO STDOUT"),
            CopyOut::Lines
        ));
        assert_eq!(t("COPY customers FROM STDIN"), CopyOut::No);
        assert_eq!(t("COPY customers TO '/tmp/x'"), CopyOut::No);
        assert_eq!(t("SELECT 1"), CopyOut::No);
    }

    /// A plan whose only rule masks `customers.ssn` on target `t`.
    fn plan() -> Arc<Plan> {
        Plan::for_tests(
            "  - name: mask-ssn\n    targets: [t]\n    mask: {columns: [customers.ssn]}\n",
        )
    }

    fn mask(delimiter: u8, columns: &[&str], line: &[u8]) -> Option<Vec<u8>> {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        let rel = Relation::for_tests("customers", &names);
        let m = CopyMask::table(plan(), &rel, &columns, delimiter);
        m.apply(line, &mut Vec::new())
    }

    #[test]
    fn splits_on_unescaped_delimiters() {
        let s = |l: &'static [u8], d| split_fields(l, d);
        assert_eq!(s(b"a b", b' '), vec![&b"a"[..], b"b"]);
        assert_eq!(
            s(b"Alice\\ Martin 1", b' '),
            vec![&b"Alice\\ Martin"[..], b"1"]
        );
        // `\\` is an escaped backslash: the delimiter after it separates.
        assert_eq!(s(b"a\\\\ b", b' '), vec![&b"a\\\\"[..], b"b"]);
        assert_eq!(s(b"a\\\\\\ b", b' '), vec![&b"a\\\\\\ b"[..]]);
        assert_eq!(s(b"a\tb\\\tc", b'\t'), vec![&b"a"[..], b"b\\\tc"]);
        assert_eq!(s(b"", b'\t'), vec![&b""[..]]);
        assert_eq!(s(b"a\t", b'\t'), vec![&b"a"[..], b""]);
        assert_eq!(s(b"a\\", b'\t'), vec![&b"a\\"[..]]);
    }

    #[test]
    fn escaped_delimiters_do_not_shift_fields() {
        let cols = ["name", "ssn"];
        assert_eq!(
            mask(b' ', &cols, b"Alice\\ Martin 536-22-8147\n").as_deref(),
            Some(&b"Alice\\ Martin ****\n"[..])
        );
        assert_eq!(
            mask(
                b':',
                &["created", "ssn"],
                b"2024-01-02 03\\:04\\:05+00 536-22-8147"
            )
            .as_deref(),
            Some(&b"****"[..]),
            "one field where two columns are expected",
        );
        assert_eq!(
            mask(
                b':',
                &["created", "ssn"],
                b"2024-01-02 03\\:04\\:05+00:536-22-8147\n"
            )
            .as_deref(),
            Some(&b"2024-01-02 03\\:04\\:05+00:****\n"[..])
        );
        assert_eq!(
            mask(b'\t', &cols, b"Bob\t\\N\n").as_deref(),
            None,
            "a null stays a null"
        );
    }

    #[test]
    fn lines_that_do_not_match_the_columns_are_redacted_whole() {
        let cols = ["name", "ssn"];
        assert_eq!(
            mask(b'\t', &cols, b"Alice\t536-22-8147\textra\n").as_deref(),
            Some(&b"****\t****\t****\n"[..])
        );
        assert_eq!(
            mask(b'\t', &cols, b"536-22-8147").as_deref(),
            Some(&b"****"[..])
        );
        assert_eq!(
            mask(b' ', &["name", "ssn", "note"], b"Alice \\N 536-22-8147\n").as_deref(),
            None,
        );
        assert_eq!(
            mask(b' ', &cols, b"Alice \\N 536-22-8147\n").as_deref(),
            Some(&b"**** \\N ****\n"[..])
        );
    }
}
