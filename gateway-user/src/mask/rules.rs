//! What a mask rule says, compiled once when the policy is loaded: which columns, which value
//! detectors, and what becomes of a value that is hit.

use globset::GlobMatcher;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::detect::Builtin;

/// The text that replaces a masked value (and the prefix of a partly kept one).
pub const REDACTED: &str = "****";

#[derive(Debug, Clone)]
pub struct MaskSpec {
    pub columns: Vec<ColumnPattern>,
    pub detectors: Vec<Builtin>,
    pub regexes: Vec<regex::bytes::Regex>,
    pub strategy: Strategy,
    pub binary: BinaryPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// [`REDACTED`].
    Redact,
    /// [`REDACTED`] and the last `keep_last` characters.
    Partial { keep_last: usize },
    /// `hmac:` and 16 hex digits of HMAC-SHA256 under the gateway's mask key: equal values
    /// stay equal, so masked columns can still be joined and grouped.
    Hash,
    /// SQL NULL.
    Null,
}

/// A binary-format value of a non-text type cannot be masked in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinaryPolicy {
    /// The value becomes NULL.
    #[default]
    Null,
    /// The session ends before any value of the column reaches the agent.
    Refuse,
}

/// `column`, `table.column` or `schema.table.column`, each part a case-insensitive glob.
#[derive(Debug, Clone)]
pub struct ColumnPattern {
    pub schema: Option<GlobMatcher>,
    pub table: Option<GlobMatcher>,
    pub column: GlobMatcher,
}

/// Where a result column comes from, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A table (or view) column.
    Column {
        schema: &'a str,
        table: &'a str,
        column: &'a str,
    },
    /// An expression: only its output name is known.
    Expression { name: &'a str },
}

impl ColumnPattern {
    pub fn parse(text: &str) -> Result<ColumnPattern, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
            return Err(format!(
                "column pattern `{text}` must be `column`, `table.column` or `schema.table.column`"
            ));
        }
        let g = |p: &str| {
            globset::GlobBuilder::new(p)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("column pattern `{text}`: {e}"))
        };
        let column = g(parts[parts.len() - 1])?;
        let table = match parts.len() {
            1 => None,
            n => Some(g(parts[n - 2])?),
        };
        let schema = match parts.len() {
            3 => Some(g(parts[0])?),
            _ => None,
        };
        Ok(ColumnPattern {
            schema,
            table,
            column,
        })
    }

    pub fn matches(&self, origin: &Origin<'_>) -> bool {
        match origin {
            Origin::Column {
                schema,
                table,
                column,
            } => {
                self.schema.as_ref().is_none_or(|g| g.is_match(schema))
                    && self.table.as_ref().is_none_or(|g| g.is_match(table))
                    && self.column.is_match(column)
            }
            // An expression has no table; a bare column name still catches `… AS email`.
            Origin::Expression { name } => self.table.is_none() && self.column.is_match(name),
        }
    }
}

/// Where the last `n` characters (UTF-8) of `value` start, if it has more than `n`: a value
/// that short is not shown at all.
fn tail_start(value: &[u8], n: usize) -> Option<usize> {
    let mut chars = 0;
    let mut start = value.len();
    for (i, b) in value.iter().enumerate().rev() {
        // Continuation bytes (0b10xx_xxxx) do not start a character.
        if b & 0xC0 != 0x80 {
            if chars == n {
                return Some(start);
            }
            chars += 1;
            start = i;
        }
    }
    None
}

/// The keyed hash of the `hash` strategy, keyed once per plan (an HMAC's key schedule costs
/// as much as hashing a short value, so it is not redone per value).
#[derive(Clone)]
pub struct MaskKey(Hmac<Sha256>);

impl MaskKey {
    pub fn new(key: &[u8]) -> MaskKey {
        // HMAC takes keys of any length, so this cannot fail.
        MaskKey(
            <Hmac<Sha256> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts every key length")),
        )
    }

    /// `hmac:` and the first 16 hex digits of HMAC-SHA256(key, value), appended to `out`.
    fn put(&self, value: &[u8], out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.0.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        out.extend_from_slice(b"hmac:");
        for b in &digest[..8] {
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        }
    }
}

impl Strategy {
    /// The replacement of `value`; `None` is SQL NULL.
    pub fn apply(&self, value: &[u8], key: &MaskKey) -> Option<Vec<u8>> {
        match *self {
            Strategy::Redact => Some(REDACTED.as_bytes().to_vec()),
            Strategy::Partial { keep_last } => {
                let mut out = Vec::with_capacity(REDACTED.len() + 4 * keep_last);
                out.extend_from_slice(REDACTED.as_bytes());
                if let Some(start) = tail_start(value, keep_last) {
                    out.extend_from_slice(&value[start..]);
                }
                Some(out)
            }
            Strategy::Hash => {
                let mut out = Vec::with_capacity(21);
                key.put(value, &mut out);
                Some(out)
            }
            Strategy::Null => None,
        }
    }

    /// The replacement inside a longer text, where a NULL cannot stand.
    pub fn apply_in_text(&self, value: &[u8], key: &MaskKey) -> Vec<u8> {
        self.apply(value, key)
            .unwrap_or_else(|| REDACTED.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col<'a>(schema: &'a str, table: &'a str, column: &'a str) -> Origin<'a> {
        Origin::Column {
            schema,
            table,
            column,
        }
    }

    #[test]
    fn column_patterns() {
        let p = |t| ColumnPattern::parse(t).unwrap();
        assert!(p("customers.email").matches(&col("public", "customers", "email")));
        assert!(p("customers.email").matches(&col("crm", "Customers", "EMAIL")));
        assert!(!p("customers.email").matches(&col("public", "orders", "email")));
        assert!(p("public.customers.email").matches(&col("public", "customers", "email")));
        assert!(!p("crm.customers.email").matches(&col("public", "customers", "email")));
        assert!(p("*.ssn").matches(&col("hr", "people", "ssn")));
        assert!(p("email").matches(&col("x", "y", "email")));
        assert!(p("email").matches(&Origin::Expression { name: "email" }));
        assert!(!p("customers.email").matches(&Origin::Expression { name: "email" }));
        assert!(p("card_*").matches(&col("s", "t", "card_number")));
        assert!(ColumnPattern::parse("a..b").is_err());
        assert!(ColumnPattern::parse("a.b.c.d").is_err());
        assert!(ColumnPattern::parse("[").is_err());
    }

    #[test]
    fn strategies() {
        let k = &MaskKey::new(b"key");
        assert_eq!(
            Strategy::Redact.apply(b"alice@example.com", k).unwrap(),
            b"****"
        );
        assert_eq!(
            Strategy::Partial { keep_last: 4 }
                .apply(b"4111 1111 1111 1234", k)
                .unwrap(),
            b"****1234"
        );
        assert_eq!(
            Strategy::Partial { keep_last: 4 }
                .apply(b"1234", k)
                .unwrap(),
            b"****"
        );
        assert_eq!(
            Strategy::Partial { keep_last: 2 }
                .apply("añoé".as_bytes(), k)
                .unwrap(),
            "****oé".as_bytes()
        );
        let h1 = Strategy::Hash.apply(b"a@b.io", k).unwrap();
        assert_eq!(h1, Strategy::Hash.apply(b"a@b.io", k).unwrap());
        assert_ne!(
            h1,
            Strategy::Hash
                .apply(b"a@b.io", &MaskKey::new(b"other"))
                .unwrap()
        );
        assert_eq!(h1.len(), 5 + 16);
        // RFC 4231-style known vector: HMAC-SHA256("key", "The quick brown fox …").
        assert_eq!(
            Strategy::Hash
                .apply(b"The quick brown fox jumps over the lazy dog", k)
                .unwrap(),
            b"hmac:f7bc83f430538424"
        );
        assert!(h1.starts_with(b"hmac:"));
        assert_eq!(Strategy::Null.apply(b"x", k), None);
        assert_eq!(Strategy::Null.apply_in_text(b"x", k), b"****");
    }
}
