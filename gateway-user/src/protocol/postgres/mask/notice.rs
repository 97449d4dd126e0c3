//! ErrorResponse and NoticeResponse texts can carry values: a unique violation repeats the key
//! (`Key (email)=(alice@example.com) already exists.`), a check violation the whole row.

use bytes::BufMut;

use crate::mask::{plan::Plan, rules::REDACTED};
use crate::protocol::postgres::codec::{put_cstr, Frame, Notice};

/// Fields that may quote values: message, detail, hint, context, internal query.
const VALUE_FIELDS: &[u8] = b"MDHWq";

/// The notice with its value-carrying fields masked; `None` when nothing changed.
pub fn mask_notice(plan: &Plan, tag: u8, notice: &Notice) -> Option<(Frame, Notice)> {
    let mut changed = false;
    // Data exceptions (class 22) quote the offending value: `invalid input syntax for type
    // integer: "alice@example.com"` from `SELECT email::int`. Under column rules the value may
    // be a masked one, and nothing says which column it came from.
    // Other errors quote values too (`SELECT ssn::regclass` → `relation "536-22-8147" does not
    // exist`), so under column rules every quoted text goes.
    let quotes_values = plan.has_columns();
    let mut fields = Vec::with_capacity(notice.fields.len());
    for (code, value) in &notice.fields {
        let mut v = if VALUE_FIELDS.contains(code) {
            plan.mask_str(value).into_owned()
        } else {
            value.clone()
        };
        if *code == b'D' && plan.has_columns() {
            v = hide_row_values(&v);
        }
        if quotes_values && matches!(*code, b'M' | b'D' | b'W') {
            v = hide_quoted(&v);
        }
        changed |= v != *value;
        fields.push((*code, v));
    }
    if !changed {
        return None;
    }
    let frame = Frame::build(tag, |b| {
        for (code, value) in &fields {
            b.put_u8(*code);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
    Some((frame, Notice { fields }))
}

/// The error or notice of a statement that reads masked columns (see [`super::hide`]): every
/// free-text field goes, and the message says why. Kept: the severity (`S`, `V`) and the
/// SQLSTATE (`C`), which clients act on. Dropped with the texts: the cursor position (`P`, `p`),
/// which can tell which expression failed; the schema, table, column, type and constraint names
/// (`s`, `t`, `c`, `d`, `n`); and the server's source file, line and function (`F`, `L`, `R`),
/// which tell apart errors that share a SQLSTATE. Each of those would tell the agent more about
/// the values than the SQLSTATE does.
pub fn hide_notice(tag: u8, notice: &Notice) -> (Frame, Notice) {
    let code = sqlstate_shown(notice);
    let kind = if tag == b'E' { "error" } else { "notice" };
    let message = format!(
        "agentgate: the {kind} text was hidden because the statement reads masked columns (SQLSTATE {code})"
    );
    let mut fields: Vec<(u8, String)> = notice
        .fields
        .iter()
        .filter(|(f, _)| matches!(*f, b'S' | b'V'))
        .cloned()
        .collect();
    fields.push((b'C', code));
    fields.push((b'M', message));
    let frame = Frame::build(tag, |b| {
        for (code, value) in &fields {
            b.put_u8(*code);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
    (frame, Notice { fields })
}

/// The SQLSTATE an agent may see. PL/pgSQL's `RAISE … USING ERRCODE = …` takes any five
/// characters, so a function could spell a value in it: a RAISE keeps only the code its level
/// has by default. Anything not shaped like a SQLSTATE is the internal error's.
fn sqlstate_shown(notice: &Notice) -> String {
    let code = notice.sqlstate();
    if notice.get(b'R') == Some("exec_stmt_raise") {
        let level = notice.get(b'V').or(notice.get(b'S')).unwrap_or("");
        return match level {
            "ERROR" | "FATAL" | "PANIC" => "P0001",
            "WARNING" => "01000",
            _ => "00000",
        }
        .to_string();
    }
    if code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        code.to_string()
    } else {
        "XX000".to_string()
    }
}

/// Column rules cannot be matched to the values a detail quotes, so they are all hidden:
/// `Key (a, b)=(x, y) …` and `Failing row contains (…).`
fn hide_row_values(detail: &str) -> String {
    if let Some(rest) = detail.strip_prefix("Key (") {
        if let (Some(eq), Some(close)) = (rest.find(")=("), rest.rfind(')')) {
            if close > eq + 2 {
                return format!("Key ({}=({REDACTED}{}", &rest[..eq + 1], &rest[close..]);
            }
        }
    }
    if detail.starts_with("Failing row contains (") {
        return format!("Failing row contains ({REDACTED}).");
    }
    detail.to_string()
}

/// Everything from the first `"` to the last becomes `****` (a value may hold quotes itself).
fn hide_quoted(text: &str) -> String {
    match (text.find('"'), text.rfind('"')) {
        (Some(first), Some(last)) if last > first => {
            format!("{}\"{REDACTED}\"{}", &text[..first], &text[last + 1..])
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(fields: &[(u8, &str)]) -> Notice {
        Notice {
            fields: fields.iter().map(|(c, v)| (*c, v.to_string())).collect(),
        }
    }

    #[test]
    fn hidden_notices_keep_severity_and_sqlstate_only() {
        let n = notice(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "22008"),
            (b'M', "date field value out of range: 271828-13-01"),
            (b'D', "271828"),
            (b'H', "271828"),
            (b'P', "8"),
            (b'W', "271828"),
            (b'q', "271828"),
            (b't', "customers"),
            (b'F', "datetime.c"),
            (b'L', "42"),
            (b'R', "make_date"),
        ]);
        let (frame, hidden) = hide_notice(b'E', &n);
        let want = "agentgate: the error text was hidden because the statement reads masked columns (SQLSTATE 22008)";
        assert_eq!(
            hidden.fields,
            notice(&[
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "22008"),
                (b'M', want)
            ])
            .fields
        );
        assert_eq!(Notice::parse(&frame).expect("parses").fields, hidden.fields);
        assert!(!frame.bytes.windows(6).any(|w| w == b"271828"));
        // A code chosen by a RAISE is the level's default; a malformed one the internal error's.
        let raised = |level: &str, code: &str| {
            let n = notice(&[(b'V', level), (b'C', code), (b'R', "exec_stmt_raise")]);
            hide_notice(b'N', &n).1.sqlstate().to_string()
        };
        assert_eq!(raised("ERROR", "27182"), "P0001");
        assert_eq!(raised("WARNING", "27182"), "01000");
        assert_eq!(raised("NOTICE", "27182"), "00000");
        let odd = notice(&[(b'V', "ERROR"), (b'C', "2718")]);
        assert_eq!(hide_notice(b'E', &odd).1.sqlstate(), "XX000");
    }

    #[test]
    fn row_values_in_details_are_hidden() {
        assert_eq!(
            hide_row_values("Key (email)=(alice@example.com) already exists."),
            "Key (email)=(****) already exists."
        );
        assert_eq!(
            hide_row_values("Key (a, b)=(1, x) is not present in table \"t\"."),
            "Key (a, b)=(****) is not present in table \"t\"."
        );
        assert_eq!(
            hide_row_values("Failing row contains (1, bob, 123-45-6789)."),
            "Failing row contains (****)."
        );
        assert_eq!(hide_row_values("nothing here"), "nothing here");
        assert_eq!(
            hide_quoted("invalid input syntax for type integer: \"alice@example.com\""),
            "invalid input syntax for type integer: \"****\""
        );
        assert_eq!(
            hide_quoted("relation \"a\"b\" does not exist"),
            "relation \"****\" does not exist"
        );
    }
}
