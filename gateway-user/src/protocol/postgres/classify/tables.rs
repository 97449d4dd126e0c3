//! Relations a statement names: RangeVar nodes (minus the names that turn out to be CTEs) and
//! the dotted name lists of DROP, COMMENT ON and SECURITY LABEL ON.

use pg_query::protobuf;

use super::{
    frame::Frame,
    nodes::{JOIN_EXPR, LOCKING_CLAUSE},
    walker::Walker,
    TableRef,
};

/// An unqualified name in a FROM list that may turn out to be a CTE of an enclosing statement.
/// `visible` limits which CTEs of the next WITH up can be meant: a non-recursive CTE's body
/// sees only the CTEs before it (so `WITH users AS (SELECT * FROM users)` reads the table).
#[derive(Debug)]
pub(super) struct Pending {
    table: TableRef,
    visible: Option<usize>,
}

/// Relations named as dotted string lists (DROP TABLE, COMMENT ON, SECURITY LABEL ON) rather
/// than as RangeVar nodes. For sub-objects of a table (column, trigger, rule, policy,
/// constraint) the last element is the sub-object's own name.
pub(super) fn named_relations(f: &Frame, object_type: Option<i64>) -> Vec<TableRef> {
    use protobuf::ObjectType as O;
    let object = object_type
        .and_then(|k| i32::try_from(k).ok())
        .and_then(|k| O::try_from(k).ok());
    let drop_last = match object {
        Some(
            O::ObjectTable
            | O::ObjectView
            | O::ObjectMatview
            | O::ObjectForeignTable
            | O::ObjectSequence
            | O::ObjectIndex,
        ) => false,
        Some(
            O::ObjectColumn
            | O::ObjectTrigger
            | O::ObjectRule
            | O::ObjectPolicy
            | O::ObjectTabconstraint,
        ) => true,
        _ => return Vec::new(),
    };
    f.lists
        .iter()
        .filter_map(|(_, parts)| {
            let parts = if drop_last {
                parts.split_last().map(|(_, rest)| rest)?
            } else {
                &parts[..]
            };
            let (name, qualifier) = parts.split_last()?;
            Some(TableRef {
                schema: qualifier.last().cloned(),
                name: name.clone(),
            })
        })
        .collect()
}

impl Walker {
    pub(super) fn flush(&mut self, pending: Vec<Pending>) {
        self.tables.extend(pending.into_iter().map(|p| p.table));
    }

    /// A RangeVar is complete: a relation, or (unqualified in a FROM list) a name that may be a
    /// CTE, decided when the statement that might hold the WITH is complete.
    pub(super) fn range_var(
        &mut self,
        f: &Frame,
        parent_kind: &str,
        parent_field: &str,
        pending: &mut Vec<Pending>,
    ) {
        let name = f.str("relname").unwrap_or("");
        // In `FOR UPDATE OF x`, x names a FROM item (often an alias), not a relation.
        if !name.is_empty() && parent_kind != LOCKING_CLAUSE {
            let schema = f.str("schemaname").filter(|s| !s.is_empty());
            let catalog = f.str("catalogname").filter(|s| !s.is_empty());
            let table = TableRef {
                schema: schema.map(str::to_owned),
                name: name.to_owned(),
            };
            // Only an unqualified FROM item can name a CTE; DML targets, DDL objects,
            // COPY, LOCK, GRANT etc. always name relations.
            let from_item = parent_kind == JOIN_EXPR
                || matches!(
                    parent_field,
                    "from_clause" | "using_clause" | "source_relation"
                );
            if schema.is_none() && catalog.is_none() && from_item {
                pending.push(Pending {
                    table,
                    visible: None,
                });
            } else {
                self.tables.insert(table);
            }
        }
    }

    /// A CommonTableExpr is complete: its name joins the WITH clause's list.
    pub(super) fn common_table_expr(&mut self, f: &Frame, pending: &mut [Pending]) {
        if let Some(p) = self.stack.last_mut() {
            // Unresolved names from this CTE's body can only mean the CTEs before it
            // (unless the WITH turns out to be RECURSIVE; see WITH_CLAUSE).
            for r in pending.iter_mut() {
                r.visible = Some(p.ctes.len());
            }
            p.ctes.push(f.str("ctename").unwrap_or("").to_owned());
        }
    }

    /// A WithClause is complete: its CTE names go to the statement that holds it.
    pub(super) fn with_clause(&mut self, f: &mut Frame, pending: &mut [Pending]) {
        if f.bool("recursive").unwrap_or(false) {
            for r in pending.iter_mut() {
                r.visible = None;
            }
        }
        if let Some(p) = self.stack.last_mut() {
            p.ctes.append(&mut f.ctes);
        }
    }
}

/// Names that match one of statement `f`'s CTEs (as far as visible) are CTE references; the
/// rest belong to an outer scope or are relations.
pub(super) fn resolve_ctes(f: &Frame, pending: &mut Vec<Pending>) {
    pending.retain_mut(|r| {
        let visible = match r.visible {
            Some(n) => f.ctes.get(..n).unwrap_or(&[]),
            None => &f.ctes[..],
        };
        r.visible = None;
        !(r.table.schema.is_none() && visible.contains(&r.table.name))
    });
}
