//! The walker: a serde Serializer (see `serde_walk`) that receives the parse tree as a stream of
//! typed events, keeps a frame per open node, and when a node is complete hands what it found to
//! the module whose job it is (tables, columns, functions, statements, conditions).

use std::collections::BTreeSet;

use super::{
    frame::{Frame, Scalar, Verdict},
    nodes::*,
    statements::{alter_table_cmd, statement_class},
    tables::{named_relations, resolve_ctes},
    Class, TableRef, CURSOR_OUTPUT,
};

#[derive(Debug, Default)]
pub(super) struct Walker {
    pub(super) stack: Vec<Frame>,
    pub(super) tables: BTreeSet<TableRef>,
    pub(super) functions: BTreeSet<String>,
    pub(super) output_columns: BTreeSet<String>,
    pub(super) source_columns: BTreeSet<String>,
    pub(super) set_columns: BTreeSet<String>,
    /// One verdict per top-level statement (RawStmt).
    pub(super) statements: Vec<Verdict>,
}

impl Walker {
    pub(super) fn enter(&mut self, kind: &'static str) {
        self.stack.push(Frame {
            kind,
            ..Frame::default()
        });
    }

    pub(super) fn scalar(&mut self, v: Scalar) {
        if let Some(top) = self.stack.last_mut() {
            top.scalars.push((top.field, v));
        }
    }

    pub(super) fn mark_present(&mut self) {
        if let Some(top) = self.stack.last_mut() {
            top.present.push(top.field);
        }
    }

    /// A node is complete: turn what was collected into tables, functions and a class, and hand
    /// the rest to the parent.
    pub(super) fn leave(&mut self) {
        let Some(mut f) = self.stack.pop() else {
            return;
        };
        let (parent_kind, parent_field) = self
            .stack
            .last()
            .map(|p| (p.kind, p.field))
            .unwrap_or(("", ""));
        let mut verdict = std::mem::take(&mut f.verdict);
        let mut pending = std::mem::take(&mut f.pending);
        if parent_kind == FUNC_CALL && parent_field == "args" {
            self.call_argument(&f);
        }
        self.condition(&f, parent_kind, parent_field);
        // What a cursor returns was decided at its DECLARE, which may be long gone.
        if f.kind == FETCH_STMT && !f.bool("ismove").unwrap_or(false) {
            self.output_columns.insert(CURSOR_OUTPUT.to_owned());
        }

        match f.kind {
            STRING | INTEGER | FLOAT | BOOLEAN | BIT_STRING => {
                let field = match f.kind {
                    STRING => "sval",
                    INTEGER => "ival",
                    FLOAT => "fval",
                    BOOLEAN => "boolval",
                    _ => "bsval",
                };
                // prost/serde emit every field, defaults included, so the value is there.
                if let (Some(v), Some(p)) = (f.take_scalar(field), self.stack.last_mut()) {
                    p.values.push((parent_field, v));
                }
            }
            LIST => {
                let items = f.value_strings("items");
                if let Some(p) = self.stack.last_mut() {
                    p.lists.push((parent_field, items));
                }
            }
            DEF_ELEM => {
                let name = f.str("defname").unwrap_or("").to_owned();
                let arg = f
                    .values
                    .iter()
                    .find(|(field, _)| *field == "arg")
                    .map(|(_, v)| v.clone());
                if let Some(p) = self.stack.last_mut() {
                    p.defelems.push((name, arg));
                }
            }
            RANGE_VAR => self.range_var(&f, parent_kind, parent_field, &mut pending),
            A_STAR => {
                if let Some(p) = self.stack.last_mut() {
                    p.values.push((parent_field, Scalar::Str("*".into())));
                }
            }
            COLUMN_REF => self.column_ref(&f),
            FUNC_CALL => self.function_call(&f, &mut verdict),
            // Row locks block other writers and need UPDATE privilege.
            LOCKING_CLAUSE => verdict.raise(Class::Write, None),
            // SELECT ... INTO creates a table.
            INTO_CLAUSE => verdict.raise(Class::Ddl, None),
            ALTER_TABLE_CMD => alter_table_cmd(&f, &mut verdict),
            COMMON_TABLE_EXPR => self.common_table_expr(&f, &mut pending),
            WITH_CLAUSE => self.with_clause(&mut f, &mut pending),
            RAW_STMT => {
                if f.statements == 0 {
                    verdict.raise(Class::Opaque, Some("not a recognised statement".to_owned()));
                }
                self.statements.push(verdict);
                self.flush(pending);
                return;
            }
            kind if kind.ends_with("Stmt") => {
                match statement_class(&f) {
                    Some((class, note)) => verdict.raise(class, note),
                    // Plain EXPLAIN: what it would run does not count.
                    None => verdict = Verdict::default(),
                }
                if matches!(kind, DROP_STMT | COMMENT_STMT | SEC_LABEL_STMT) {
                    let object_type = f.int("remove_type").or_else(|| f.int("objtype"));
                    self.tables.extend(named_relations(&f, object_type));
                }
                // Names that match one of this statement's CTEs (as far as visible) are CTE
                // references; the rest belong to an outer scope or are relations.
                resolve_ctes(&f, &mut pending);
                if let Some(p) = self.stack.last_mut() {
                    p.statements += 1;
                }
            }
            _ => {}
        }

        match self.stack.last_mut() {
            Some(p) => {
                p.verdict.raise(verdict.class, verdict.note);
                p.pending.append(&mut pending);
            }
            None => self.flush(pending),
        }
    }
}
