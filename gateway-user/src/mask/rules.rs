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

    /// Whether the pattern can be about a column of this table (unknown schema: any).
    pub fn may_cover_table(&self, schema: Option<&str>, table: &str) -> bool {
        let schema_ok = match (&self.schema, schema) {
            (Some(g), Some(s)) => g.is_match(s),
            _ => true,
        };
        schema_ok && self.table.as_ref().is_none_or(|g| g.is_match(table))
    }
}

impl Strategy {
    /// The replacement of `value`; `None` is SQL NULL.
    pub fn apply(&self, value: &[u8], key: &[u8]) -> Option<Vec<u8>> {
        match *self {
            Strategy::Redact => Some(REDACTED.as_bytes().to_vec()),
            Strategy::Partial { keep_last } => {
                let mut out = REDACTED.as_bytes().to_vec();
                let text = String::from_utf8_lossy(value);
                let chars = text.chars().count();
                if chars > keep_last {
                    out.extend(
                        text.chars()
                            .skip(chars - keep_last)
                            .collect::<String>()
                            .bytes(),
                    );
                }
                Some(out)
            }
            Strategy::Hash => {
                let mut out = b"hmac:".to_vec();
                out.extend(hmac_hex16(key, value).bytes());
                Some(out)
            }
            Strategy::Null => None,
        }
    }

    /// The replacement inside a longer text, where a NULL cannot stand.
    pub fn apply_in_text(&self, value: &[u8], key: &[u8]) -> Vec<u8> {
        self.apply(value, key)
            .unwrap_or_else(|| REDACTED.as_bytes().to_vec())
    }
}

fn hmac_hex16(key: &[u8], value: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return "0".repeat(16),
    };
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
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
        assert!(p("customers.email").may_cover_table(None, "customers"));
        assert!(!p("customers.email").may_cover_table(Some("public"), "orders"));
        assert!(p("email").may_cover_table(Some("public"), "orders"));
    }

    #[test]
    fn strategies() {
        let k = b"key";
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
        assert_ne!(h1, Strategy::Hash.apply(b"a@b.io", b"other").unwrap());
        assert_eq!(h1.len(), 5 + 16);
        assert!(h1.starts_with(b"hmac:"));
        assert_eq!(Strategy::Null.apply(b"x", k), None);
        assert_eq!(Strategy::Null.apply_in_text(b"x", k), b"****");
    }
}
