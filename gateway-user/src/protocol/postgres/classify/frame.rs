//! What the walker keeps about the node it is in: the node's own fields, what its children
//! handed up, and the class found so far.

use super::{predicate::MergeClause, tables::Pending, Class};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// The highest class found so far in a subtree, with the reason if that is Opaque.
#[derive(Debug)]
pub(super) struct Verdict {
    pub(super) class: Class,
    pub(super) note: Option<String>,
}

/// A subtree with no statement or call in it adds nothing: the lowest class.
impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            class: Class::Read,
            note: None,
        }
    }
}

impl Verdict {
    pub(super) fn raise(&mut self, class: Class, note: Option<String>) {
        if class > self.class {
            self.class = class;
            self.note = note;
        } else if class == self.class && self.note.is_none() {
            self.note = note;
        }
    }
}

/// What the walker keeps about one node while its fields stream by. Only the path from the
/// root to the current node is alive at any time.
#[derive(Debug, Default)]
pub(super) struct Frame {
    pub(super) kind: &'static str,
    /// The field of this node currently being serialized: tells a child where it sits.
    pub(super) field: &'static str,
    /// This node's own scalar fields.
    pub(super) scalars: Vec<(&'static str, Scalar)>,
    /// Fields holding `Some(..)` or a non-empty list.
    pub(super) present: Vec<&'static str>,
    /// Literal value nodes (String, Integer, ...) directly under a field, e.g. function names.
    pub(super) values: Vec<(&'static str, Scalar)>,
    /// List nodes of strings under a field, e.g. the dotted names in DROP TABLE.
    pub(super) lists: Vec<(&'static str, Vec<String>)>,
    /// DefElem options (name, literal argument), e.g. EXPLAIN's.
    pub(super) defelems: Vec<(String, Option<Scalar>)>,
    pub(super) verdict: Verdict,
    /// CTE names of this node's WITH clause (for a WithClause: collected so far).
    pub(super) ctes: Vec<String>,
    pub(super) pending: Vec<Pending>,
    /// Statement nodes directly below (for RawStmt: did it hold a statement at all?).
    pub(super) statements: usize,
    /// For a FuncCall: its arguments in order, each the value of a constant (`$n` for a
    /// parameter) or `None` for anything else (NULL, an expression, a named argument).
    pub(super) args: Vec<Option<String>>,
    /// A column is read somewhere below (for the conditions of writes, see `predicate`).
    pub(super) reads_column: bool,
    /// For a BoolExpr: whether each argument bounds the rows.
    pub(super) args_bounded: Vec<bool>,
    /// For an A_Expr: the column on each side (`None`: not a plain column).
    pub(super) sides: Vec<Option<String>>,
    /// Whether the condition under `where_clause`, `join_condition` or `condition` bounds rows.
    pub(super) conds: Vec<(&'static str, bool)>,
    /// For a MergeStmt: its WHEN clauses.
    pub(super) merge_clauses: Vec<MergeClause>,
}

impl Frame {
    fn scalar(&self, field: &str) -> Option<&Scalar> {
        self.scalars
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v)
    }

    pub(super) fn str(&self, field: &str) -> Option<&str> {
        match self.scalar(field) {
            Some(Scalar::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub(super) fn int(&self, field: &str) -> Option<i64> {
        match self.scalar(field) {
            Some(Scalar::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub(super) fn bool(&self, field: &str) -> Option<bool> {
        match self.scalar(field) {
            Some(Scalar::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// Whether the condition in `field` bounds the rows (`None`: there is none).
    pub(super) fn cond(&self, field: &str) -> Option<bool> {
        self.conds
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, b)| *b)
    }

    pub(super) fn take_scalar(&mut self, field: &str) -> Option<Scalar> {
        let i = self.scalars.iter().position(|(f, _)| *f == field)?;
        Some(self.scalars.swap_remove(i).1)
    }

    pub(super) fn value_strings(&self, field: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(f, _)| *f == field)
            .filter_map(|(_, v)| match v {
                Scalar::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}
