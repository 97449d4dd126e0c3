//! Result rows: which columns of a RowDescription are masked and how, and DataRow rewriting.
//! A row with nothing to mask is forwarded as it was read; a row with a hit is rebuilt once, with
//! new field and message lengths.

use std::{collections::HashMap, sync::Arc};

use bytes::BufMut;

use super::{catalog::Relation, taint::Taint};
use crate::{
    mask::{
        detect::Hit,
        plan::Plan,
        rules::{BinaryPolicy, Origin},
    },
    protocol::postgres::codec::{CodecError, Fields, Frame},
};

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The table (or view) the column comes from; 0 for an expression.
    pub table: u32,
    pub attnum: i16,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

pub fn fields(frame: &Frame) -> Result<Vec<Field>, CodecError> {
    let mut f = Fields::new(frame);
    let n = f.count()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = f.cstr()?.to_string();
        let table = f.i32()? as u32;
        let attnum = f.i16()?;
        let type_oid = f.i32()? as u32;
        let _typlen = f.i16()?;
        let _typmod = f.i32()?;
        let format = f.i16()?;
        out.push(Field {
            name,
            table,
            attnum,
            type_oid,
            format,
        });
    }
    Ok(out)
}

/// Types whose binary format is their text: masked as text in either format.
const TEXT_LIKE: &[u32] = &[
    18,   // "char"
    19,   // name
    25,   // text
    142,  // xml
    705,  // unknown
    1042, // bpchar
    1043, // varchar
];
const JSON: u32 = 114;
const JSONB: u32 = 3802;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// A column rule's replacement must stay a JSON document.
    Json,
    /// Binary jsonb: a version byte, then JSON text.
    JsonbBinary,
    /// A binary value the gateway cannot read as text.
    OtherBinary,
}

#[derive(Debug, Clone, Copy)]
pub struct Col {
    rule: Option<usize>,
    kind: Kind,
    /// Not the masked column itself (computed from it, or not known to come from it): a
    /// strategy that keeps part of the value (partial, hash) would let `substr(ssn, 1, 4)` and
    /// the like give it away piece by piece, or a hashed constant confirm a guess, so it is
    /// redacted (or nulled) whatever the rule says.
    tainted: bool,
}

/// How each column of one result is masked, under the plan that decided it.
#[derive(Clone)]
pub struct ResultMask {
    plan: Arc<Plan>,
    /// `None`: rows whose description the gateway did not see (a reload turned masking on
    /// between a statement and its rows): every value becomes NULL.
    cols: Option<Vec<Col>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("column `{column}` is masked by rule \"{rule}\" but arrives in binary format, which the rule refuses")]
    Refused { column: String, rule: String },
    #[error("column `{0}` comes from a table the catalog does not show")]
    NoOrigin(String),
}

/// The table oids and attribute numbers a description refers to.
pub fn origins_needed(fields: &[Field]) -> Vec<(u32, i16)> {
    let mut v: Vec<(u32, i16)> = fields
        .iter()
        .filter(|f| f.table != 0 && f.attnum > 0)
        .map(|f| (f.table, f.attnum))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl ResultMask {
    pub fn unknown(plan: Arc<Plan>) -> ResultMask {
        ResultMask { plan, cols: None }
    }

    /// `taint`: the rule for columns without an origin, when the statement's output may be
    /// computed from masked columns ([`Plan::taint`]).
    pub fn new(
        plan: Arc<Plan>,
        fields: &[Field],
        relations: &HashMap<u32, Arc<Relation>>,
        taint: Option<usize>,
    ) -> Result<ResultMask, RowError> {
        let mut cols = Vec::with_capacity(fields.len());
        for f in fields {
            let mut tainted = false;
            let rule = if !plan.has_columns() {
                None
            } else if f.table == 0 || f.attnum <= 0 {
                // Named like a masked column or computed from one, its value is still not
                // known to be the column's: redacted, never hashed (a hash of a constant
                // would let the agent test guesses against the real column's hashes).
                tainted = true;
                plan.column_rule([Origin::Expression { name: &f.name }])
                    .or(taint)
            } else {
                let rel = relations
                    .get(&f.table)
                    .ok_or_else(|| RowError::NoOrigin(f.name.clone()))?;
                let col = rel
                    .columns
                    .get(&f.attnum)
                    .ok_or_else(|| RowError::NoOrigin(f.name.clone()))?;
                tainted = col.computed;
                plan.column_rule_of(rel, col)
            };
            let kind = match (f.format, f.type_oid) {
                (_, JSON) => Kind::Json,
                (1, JSONB) => Kind::JsonbBinary,
                (0, JSONB) => Kind::Json,
                (1, t) if TEXT_LIKE.contains(&t) => Kind::Text,
                (1, _) => Kind::OtherBinary,
                _ => Kind::Text,
            };
            if let (Some(r), Kind::OtherBinary) = (rule, kind) {
                if plan.binary_policy(r) == BinaryPolicy::Refuse {
                    return Err(RowError::Refused {
                        column: f.name.clone(),
                        rule: plan.rule_name(r).to_string(),
                    });
                }
            }
            cols.push(Col {
                rule,
                kind,
                tainted,
            });
        }
        Ok(ResultMask {
            plan,
            cols: Some(cols),
        })
    }

    /// Whether rows may change at all (no column rule and no detector: forward untouched).
    pub fn is_noop(&self) -> bool {
        match &self.cols {
            None => false,
            Some(cols) => !self.plan.has_detectors() && cols.iter().all(|c| c.rule.is_none()),
        }
    }

    /// The DataRow with its values masked; `None` when nothing changed.
    pub fn apply(&self, frame: &Frame, hits: &mut Vec<Hit>) -> Result<Option<Frame>, CodecError> {
        let plan = &self.plan;
        let mut f = Fields::new(frame);
        let n = f.count()?;
        let mut changes: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
        for i in 0..n {
            let len = f.i32()?;
            if len < 0 {
                continue;
            }
            let value = f.take(len as usize)?;
            let col = match &self.cols {
                None => {
                    changes.push((i, None));
                    continue;
                }
                Some(cols) => match cols.get(i) {
                    Some(c) => *c,
                    // More values than the description had columns: nothing is known of them.
                    None => {
                        changes.push((i, None));
                        continue;
                    }
                },
            };
            if let Some(new) = mask_one(plan, col, value, hits) {
                changes.push((i, new));
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        crate::telemetry::metrics::with(|m| {
            m.mask_rows_rewritten.inc();
        });
        Ok(Some(rebuild(frame, n, &changes)?))
    }
}

/// The replacement of one value (`Some(None)` is NULL), or `None` to keep it.
fn mask_one(plan: &Plan, col: Col, value: &[u8], hits: &mut Vec<Hit>) -> Option<Option<Vec<u8>>> {
    let whole = |r: usize| match col.tainted {
        true => plan.mask_tainted(r),
        false => plan.mask_value(r, value),
    };
    match (col.rule, col.kind) {
        (Some(_), Kind::OtherBinary) => Some(None),
        (None, Kind::OtherBinary) => None,
        (Some(r), Kind::Text) => Some(whole(r)),
        (Some(r), Kind::Json) => Some(whole(r).map(|v| json_string(&v))),
        (Some(r), Kind::JsonbBinary) => Some(whole(r).map(|v| {
            let mut out = vec![1u8];
            out.extend(json_string(&v));
            out
        })),
        (None, Kind::Text) => plan.detect(value, hits),
        (None, Kind::Json) => plan.detect(value, hits).map(|m| m.filter(|v| is_json(v))),
        (None, Kind::JsonbBinary) => {
            let (version, text) = value.split_first()?;
            plan.detect(text, hits).map(|m| {
                m.filter(|v| is_json(v)).map(|v| {
                    let mut out = vec![*version];
                    out.extend(v);
                    out
                })
            })
        }
    }
}

/// A masked JSON value must still parse; one that does not (a custom detector that matched
/// across a quote) becomes NULL rather than reach the agent half masked.
fn is_json(v: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(v).is_ok()
}

fn json_string(v: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&String::from_utf8_lossy(v)).unwrap_or_else(|_| b"null".to_vec())
}

fn rebuild(
    frame: &Frame,
    n: usize,
    changes: &[(usize, Option<Vec<u8>>)],
) -> Result<Frame, CodecError> {
    let mut f = Fields::new(frame);
    f.count()?;
    let mut next = changes.iter().peekable();
    let mut bytes = bytes::BytesMut::with_capacity(frame.bytes.len() + 64);
    bytes.put_u8(b'D');
    bytes.put_u32(0);
    bytes.put_i16(n as i16);
    for i in 0..n {
        let len = f.i32()?;
        let value = if len >= 0 {
            Some(f.take(len as usize)?)
        } else {
            None
        };
        let replaced = match next.peek() {
            Some((at, new)) if *at == i => {
                next.next();
                Some(new.as_deref())
            }
            _ => None,
        };
        match replaced.unwrap_or(value) {
            Some(v) => {
                bytes.put_i32(v.len() as i32);
                bytes.put_slice(v);
            }
            None => bytes.put_i32(-1),
        }
    }
    let len = (bytes.len() - 1) as u32;
    bytes[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(Frame { bytes })
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::protocol::postgres::codec::{put_cstr, Frame};

    fn description(cols: &[(&str, u32, i16, u32, i16)]) -> Frame {
        Frame::build(b'T', |b| {
            b.put_i16(cols.len() as i16);
            for (name, table, attnum, type_oid, format) in cols {
                put_cstr(b, name);
                b.put_u32(*table);
                b.put_i16(*attnum);
                b.put_u32(*type_oid);
                b.put_i16(-1);
                b.put_i32(-1);
                b.put_i16(*format);
            }
        })
    }

    fn row(values: &[Option<&[u8]>]) -> Frame {
        Frame::build(b'D', |b| {
            b.put_i16(values.len() as i16);
            for v in values {
                match v {
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v);
                    }
                    None => b.put_i32(-1),
                }
            }
        })
    }

    fn values(frame: &Frame) -> Vec<Option<Vec<u8>>> {
        let mut f = Fields::new(frame);
        let n = f.count().unwrap();
        (0..n)
            .map(|_| {
                let len = f.i32().unwrap();
                (len >= 0).then(|| f.take(len as usize).unwrap().to_vec())
            })
            .collect()
    }

    fn customers() -> HashMap<u32, Arc<Relation>> {
        let rel = Relation::for_tests("customers", &["id", "email", "ssn_num", "doc"]);
        [(7, Arc::new(rel))].into()
    }

    #[test]
    fn rows_are_rebuilt_only_when_something_is_masked() {
        let plan = Plan::for_tests(
            "  - name: pii\n    targets: [t]\n    mask: {columns: [customers.email, customers.ssn_num, customers.doc], detectors: [email]}\n",
        );
        // id int4 text, email text binary, ssn_num int8 binary, doc jsonb binary, an expression.
        let desc = description(&[
            ("id", 7, 1, 23, 0),
            ("email", 7, 2, 25, 1),
            ("ssn_num", 7, 3, 20, 1),
            ("doc", 7, 4, 3802, 1),
            ("note", 0, 0, 25, 0),
        ]);
        let fields = fields(&desc).unwrap();
        assert_eq!(
            origins_needed(&fields),
            vec![(7, 1), (7, 2), (7, 3), (7, 4)]
        );
        let mask = ResultMask::new(plan.clone(), &fields, &customers(), None).unwrap();
        let mut hits = Vec::new();
        let jsonb = b"\x01{\"a\": 1}";
        let masked = mask
            .apply(
                &row(&[
                    Some(b"1"),
                    Some(b"alice@example.com"),
                    Some(&42i64.to_be_bytes()),
                    Some(jsonb),
                    Some(b"mail bob@example.org now"),
                ]),
                &mut hits,
            )
            .unwrap()
            .expect("masked");
        assert_eq!(
            values(&masked),
            vec![
                Some(b"1".to_vec()),
                Some(b"****".to_vec()),
                // A non-text binary value cannot be masked in place.
                None,
                // jsonb keeps its version byte and stays JSON.
                Some(b"\x01\"****\"".to_vec()),
                Some(b"mail **** now".to_vec()),
            ]
        );
        // NULLs stay NULL; a row with nothing to mask is not rebuilt (the caller forwards it).
        let plain = row(&[Some(b"2"), None, None, None, Some(b"nothing here")]);
        assert!(mask.apply(&plain, &mut hits).unwrap().is_none());
        // More values than described, or a description never seen: NULL.
        let unknown = ResultMask::unknown(plan.clone());
        let all = unknown
            .apply(&row(&[Some(b"x")]), &mut hits)
            .unwrap()
            .unwrap();
        assert_eq!(values(&all), vec![None]);
        // A truncated row is an error, not a panic.
        let mut short = row(&[Some(b"1")]);
        short.bytes.truncate(short.bytes.len() - 1);
        assert!(mask.apply(&short, &mut hits).is_err());
    }

    #[test]
    fn computed_columns_are_redacted_whole_and_refusal_is_before_rows() {
        let plan = Plan::for_tests(
            "  - name: ssn\n    targets: [t]\n    mask: {columns: [customers.ssn_num], strategy: partial, keep_last: 2, binary: refuse}\n",
        );
        let desc = description(&[("s", 0, 0, 25, 0)]);
        let mask =
            ResultMask::new(plan.clone(), &fields(&desc).unwrap(), &customers(), Some(0)).unwrap();
        let out = mask
            .apply(&row(&[Some(b"536-22")]), &mut Vec::new())
            .unwrap()
            .unwrap();
        // Not `****22`: a computed column is a piece of the value, never partly shown.
        assert_eq!(values(&out), vec![Some(b"****".to_vec())]);
        let binary = description(&[("ssn_num", 7, 3, 20, 1)]);
        let err = ResultMask::new(plan, &fields(&binary).unwrap(), &customers(), None)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("ssn_num"), "{err}");
        // An origin the catalog does not show fails closed.
        let gone = description(&[("x", 99, 1, 25, 0)]);
        let plan =
            Plan::for_tests("  - name: any\n    targets: [t]\n    mask: {columns: [email]}\n");
        assert!(ResultMask::new(plan, &fields(&gone).unwrap(), &customers(), None).is_err());
    }
}
