//! ErrorResponse and NoticeResponse texts can carry values: a unique violation repeats the key
//! (`Key (email)=(alice@example.com) already exists.`), a check violation the whole row.

use bytes::BufMut;

use super::{plan::Plan, rules::REDACTED};
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
