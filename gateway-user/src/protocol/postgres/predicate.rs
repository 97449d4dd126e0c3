//! Does a WHERE (or MERGE join/WHEN) condition bound the rows a write touches?
//!
//! A condition that reads no column of any row — `true`, `1 = 1`, `$1`, `NOT false`,
//! `random() < 2`, `(SELECT true)` — holds for every row or for none, so it bounds nothing: the
//! write counts as one without a WHERE (`write_unbounded`). AND is bounded when any of its parts
//! is; OR only when all are (`id = 5 OR true` is every row). A comparison of a column with
//! itself (`id = id`) is no bound either.
//!
//! This is a syntactic judgement and cannot be complete (`id > 0 OR id <= 0` passes as
//! bounded, and so does `id IN (SELECT id FROM t)`); approval rules with `max_rows` count what a
//! write really touched.

use pg_query::protobuf::{AExprKind, BoolExprType, CmdType, MergeMatchKind};

/// An A_Expr: its kind, operator name and the column on either side (`None` for a side that
/// is not a plain column reference).
pub struct AExpr<'a> {
    pub kind: i64,
    pub operator: &'a [String],
    pub sides: &'a [Option<String>],
}

/// What the walker collected about one expression node, for [`bounded`].
pub struct Condition<'a> {
    /// A column is read somewhere in the node's subtree (a subquery's included).
    pub reads_column: bool,
    /// For a BoolExpr: its operator and whether each argument is bounded.
    pub bool_op: Option<i64>,
    pub args_bounded: &'a [bool],
    pub a_expr: Option<AExpr<'a>>,
    /// `WHERE CURRENT OF cursor`: one row.
    pub current_of: bool,
}

/// Whether a condition limits the rows to those it reads a column of.
pub fn bounded(c: &Condition<'_>) -> bool {
    if c.current_of {
        return true;
    }
    if let Some(op) = c.bool_op {
        return match BoolExprType::try_from(op as i32) {
            Ok(BoolExprType::AndExpr) => c.args_bounded.iter().any(|b| *b),
            Ok(BoolExprType::OrExpr) => {
                !c.args_bounded.is_empty() && c.args_bounded.iter().all(|b| *b)
            }
            // NOT of a column condition selects by a column too.
            Ok(BoolExprType::NotExpr) => c.reads_column,
            _ => false,
        };
    }
    if let Some(e) = &c.a_expr {
        let same_column = matches!(e.sides, [Some(l), Some(r)] if l == r);
        let reflexive = match AExprKind::try_from(e.kind as i32) {
            Ok(AExprKind::AexprOp) => {
                matches!(
                    e.operator.last().map(String::as_str),
                    Some("=" | ">=" | "<=")
                )
            }
            Ok(AExprKind::AexprNotDistinct) => true,
            _ => false,
        };
        if same_column && reflexive {
            return false;
        }
    }
    c.reads_column
}

/// One `WHEN … THEN …` of a MERGE.
#[derive(Debug, Clone, Copy)]
pub struct MergeClause {
    pub match_kind: i64,
    pub command: i64,
    /// Its `AND condition`, if any, bounds the rows.
    pub condition_bounded: bool,
}

/// A MERGE is unbounded when an UPDATE or DELETE of it may reach every target row: a matched
/// action under a join condition that bounds nothing (`ON true`) and no bounding condition of
/// its own, or a `NOT MATCHED BY SOURCE` action without one.
pub fn merge_unbounded(join_bounded: bool, clauses: &[MergeClause]) -> bool {
    clauses.iter().any(|c| {
        let changes_rows = matches!(
            CmdType::try_from(c.command as i32),
            Ok(CmdType::CmdUpdate | CmdType::CmdDelete)
        );
        changes_rows
            && !c.condition_bounded
            && match MergeMatchKind::try_from(c.match_kind as i32) {
                Ok(MergeMatchKind::MergeWhenMatched) => !join_bounded,
                Ok(MergeMatchKind::MergeWhenNotMatchedByTarget) => false,
                // NOT MATCHED BY SOURCE reaches the target rows no source row matches.
                _ => true,
            }
    })
}
