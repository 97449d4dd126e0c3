//! The console API's inputs, checked: query strings whose every parameter is known, numbers
//! that are numbers, ids of the shape the gateway gives. Anything else is a 400 with a message
//! that says what was wrong, never a guess or a default.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("unknown parameter `{0}` (known: {1})")]
    Unknown(String, String),
    #[error("parameter `{0}` is given twice")]
    Twice(String),
    #[error("parameter `{0}`: not valid percent-encoded UTF-8")]
    Encoding(String),
    #[error("parameter `{0}`: `{1}` {2}")]
    Value(String, String, String),
    #[error("`{0}` is not an id (letters, digits, `.`, `_`, `:`, `-`; at most 128)")]
    Id(String),
}

/// A query string's parameters, each known to the endpoint and given once.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub fn parse(query: &str, known: &[&str]) -> Result<Params, QueryError> {
        let mut out = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k).ok_or_else(|| QueryError::Encoding(k.to_string()))?;
            if !known.contains(&k.as_str()) {
                return Err(QueryError::Unknown(k, known.join(", ")));
            }
            let v = decode(v).ok_or_else(|| QueryError::Encoding(k.clone()))?;
            if out.insert(k.clone(), v).is_some() {
                return Err(QueryError::Twice(k));
            }
        }
        Ok(Params(out))
    }

    /// A text parameter; empty is not given (a form's empty field).
    pub fn text(&self, k: &str) -> Option<String> {
        self.0.get(k).filter(|v| !v.is_empty()).cloned()
    }

    pub fn int(&self, k: &str) -> Result<Option<i64>, QueryError> {
        self.text(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| QueryError::Value(k.into(), v.clone(), "is not an integer".into()))
            })
            .transpose()
    }

    /// `1`/`true` or `0`/`false`; absent is false.
    pub fn flag(&self, k: &str) -> Result<bool, QueryError> {
        match self.text(k).as_deref() {
            None | Some("0") | Some("false") => Ok(false),
            Some("1") | Some("true") => Ok(true),
            Some(v) => Err(QueryError::Value(
                k.into(),
                v.into(),
                "is not 1, 0, true or false".into(),
            )),
        }
    }

    /// A count between 1 and `max`, `default` when absent: a larger one is refused rather than
    /// cut, so that a script learns the bound instead of silently getting less.
    pub fn limit(&self, k: &str, default: usize, max: usize) -> Result<usize, QueryError> {
        match self.int(k)? {
            None => Ok(default),
            Some(n) if n >= 1 && n as u64 <= max as u64 => Ok(n as usize),
            Some(n) => Err(QueryError::Value(
                k.into(),
                n.to_string(),
                format!("must be between 1 and {max}"),
            )),
        }
    }

    /// One of `allowed`.
    pub fn choice(&self, k: &str, allowed: &[&str]) -> Result<Option<String>, QueryError> {
        match self.text(k) {
            Some(v) if !allowed.contains(&v.as_str()) => Err(QueryError::Value(
                k.into(),
                v,
                format!("is not one of {}", allowed.join(", ")),
            )),
            v => Ok(v),
        }
    }
}

/// An id as the gateway makes them (sessions `18c…-42`, approvals `ar-…`): anything else is
/// refused before it reaches a query or a header.
pub fn id(s: &str) -> Result<&str, QueryError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(s)
    } else {
        Err(QueryError::Id(s.chars().take(64).collect()))
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the bytes must
/// be UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_parameters_once_decoded_else_refused() {
        let p = Params::parse(
            "identity=a%23b+c&limit=5&denied=1&x=",
            &["identity", "limit", "denied", "x"],
        )
        .unwrap();
        assert_eq!(p.text("identity").as_deref(), Some("a#b c"));
        assert_eq!(p.limit("limit", 50, 500), Ok(5));
        assert_eq!(p.flag("denied"), Ok(true));
        assert_eq!(p.text("x"), None);
        assert!(matches!(
            Params::parse("nope=1", &["limit"]),
            Err(QueryError::Unknown(..))
        ));
        assert!(matches!(
            Params::parse("limit=1&limit=2", &["limit"]),
            Err(QueryError::Twice(_))
        ));
        assert!(Params::parse("limit=%zz", &["limit"]).is_err());
        assert!(Params::parse("limit=%ff", &["limit"]).is_err());
        let p = Params::parse("limit=100000&denied=yes", &["limit", "denied"]).unwrap();
        assert!(p.limit("limit", 50, 500).is_err());
        assert!(p.flag("denied").is_err());
        assert!(id("18c2f-3").is_ok() && id("ar-00ff").is_ok());
        for bad in ["", "a/b", "a b", "<script>", &"x".repeat(129)] {
            assert!(id(bad).is_err(), "{bad}");
        }
    }
}
