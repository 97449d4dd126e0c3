//! Whether a write's conditions bound the rows it touches: the facts `predicate` judges, handed
//! from each finished node to its parent.

use super::{
    frame::Frame,
    nodes::{
        A_EXPR, BOOL_EXPR, COLUMN_REF, CURRENT_OF_EXPR, MERGE_STMT, MERGE_WHEN_CLAUSE, WHERE_CLAUSE,
    },
    predicate::{self, AExpr, Condition, MergeClause},
    walker::Walker,
};

impl Walker {
    /// Hands what a write's conditions need (see `predicate`) from a finished node `f` to its
    /// parent.
    pub(super) fn condition(&mut self, f: &Frame, parent_kind: &str, parent_field: &'static str) {
        let reads_column = f.reads_column || f.kind == COLUMN_REF;
        let operator = if f.kind == A_EXPR {
            f.value_strings("name")
        } else {
            Vec::new()
        };
        let bounded = predicate::bounded(&Condition {
            reads_column,
            bool_op: (f.kind == BOOL_EXPR).then(|| f.int("boolop").unwrap_or(0)),
            args_bounded: &f.args_bounded,
            a_expr: (f.kind == A_EXPR).then(|| AExpr {
                kind: f.int("kind").unwrap_or(0),
                operator: &operator,
                sides: &f.sides,
            }),
            current_of: f.kind == CURRENT_OF_EXPR,
        });
        let Some(p) = self.stack.last_mut() else {
            return;
        };
        p.reads_column |= reads_column;
        if parent_kind == BOOL_EXPR && parent_field == "args" {
            p.args_bounded.push(bounded);
        }
        if parent_kind == A_EXPR && matches!(parent_field, "lexpr" | "rexpr") {
            let column =
                (f.kind == COLUMN_REF).then(|| f.value_strings("fields").join(".").to_lowercase());
            p.sides.push(column);
        }
        if matches!(parent_field, WHERE_CLAUSE | "join_condition" | "condition") {
            p.conds.push((parent_field, bounded));
        }
        if f.kind == MERGE_WHEN_CLAUSE && parent_kind == MERGE_STMT {
            p.merge_clauses.push(MergeClause {
                match_kind: f.int("match_kind").unwrap_or(0),
                command: f.int("command_type").unwrap_or(0),
                condition_bounded: f.cond("condition") == Some(true),
            });
        }
    }
}
