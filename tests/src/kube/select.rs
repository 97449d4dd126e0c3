//! Label and field selectors (`labelSelector=`, `fieldSelector=`), the subset kubectl and the
//! clients use: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)` for labels;
//! `metadata.name`, `metadata.namespace` (and `status.phase`, `spec.nodeName` for pods) with
//! `=`, `==`, `!=` for fields. Anything else is a 400, as the API server answers.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Debug, Clone)]
struct FieldReq {
    path: &'static str,
    value: String,
    negate: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Selectors {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn set_values(s: &str) -> Result<Vec<String>, SelectorError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("unable to parse requirement: set {s:?}")))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_label(part: &str) -> Result<LabelReq, SelectorError> {
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(LabelReq::Ne(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(LabelReq::Eq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, rest)) = part.split_once(" notin ") {
        return Ok(LabelReq::NotIn(k.trim().into(), set_values(rest)?));
    }
    if let Some((k, rest)) = part.split_once(" in ") {
        return Ok(LabelReq::In(k.trim().into(), set_values(rest)?));
    }
    if let Some(k) = part.strip_prefix('!') {
        return Ok(LabelReq::NotExists(k.trim().into()));
    }
    if part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Ok(LabelReq::Exists(part.into()));
    }
    Err(SelectorError(format!(
        "unable to parse requirement: {part:?}"
    )))
}

const FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("status.phase", "/status/phase"),
    ("spec.nodeName", "/spec/nodeName"),
];

fn parse_field(part: &str) -> Result<FieldReq, SelectorError> {
    let (k, v, negate) = if let Some((k, v)) = part.split_once("!=") {
        (k, v, true)
    } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        (k, v, false)
    } else {
        return Err(SelectorError(format!("invalid selector: '{part}'")));
    };
    let path = FIELDS
        .iter()
        .find(|(name, _)| *name == k.trim())
        .map(|(_, p)| *p)
        .ok_or_else(|| SelectorError(format!("field label not supported: {}", k.trim())))?;
    Ok(FieldReq {
        path,
        value: v.trim().to_string(),
        negate,
    })
}

impl Selectors {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, SelectorError> {
        let labels = match labels {
            Some(l) => split_top(l)
                .into_iter()
                .map(parse_label)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let fields = match fields {
            Some(f) => split_top(f)
                .into_iter()
                .map(parse_field)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| {
            obj.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        });
        labels_ok
            && self.fields.iter().all(|f| {
                let actual = obj.pointer(f.path).and_then(Value::as_str).unwrap_or("");
                (actual == f.value) != f.negate
            })
    }
}
