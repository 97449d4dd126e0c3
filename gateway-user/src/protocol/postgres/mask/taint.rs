//! What of a mask plan depends on PostgreSQL: which rule masks a catalog column, and which
//! statements carry masked values into their results or into tables without naming the column
//! (taint), as the classifier and the catalog see them.

use std::sync::Arc;

use super::catalog::{ColumnInfo, Relation};
use crate::{
    mask::{plan::Plan, rules::Origin},
    protocol::postgres::classify::{Class, Classified, CURSOR_OUTPUT},
};

/// [`Plan`]'s answers about PostgreSQL statements and catalog relations.
pub trait Taint {
    /// The rule that masks a catalog column: by its own name, or by a column it shows (a
    /// view's base column, a partition's parent column).
    fn column_rule_of(&self, rel: &Relation, col: &ColumnInfo) -> Option<usize>;
    /// The rule for a statement's result columns that have no origin (see the impl).
    fn output_taint(&self, c: &Classified, rels: &[Option<Arc<Relation>>]) -> Option<usize>;
    /// The rule whose masked values a write or DDL statement would copy into a table.
    fn copy_taint(&self, c: &Classified, rels: &[Option<Arc<Relation>>]) -> Option<usize>;
    /// The first rule that masks a column of any of these relations.
    fn covering_rule(&self, rels: &[Option<Arc<Relation>>]) -> Option<usize>;
    /// Whether a statement reads the planner's statistics.
    fn reads_statistics(&self, c: &Classified) -> bool;
}

impl Taint for Plan {
    /// The rule that masks a catalog column: by its own name, or by a column it shows (a
    /// view's base column, a partition's parent column).
    fn column_rule_of(&self, rel: &Relation, col: &ColumnInfo) -> Option<usize> {
        let own = Origin::Column {
            schema: &rel.schema,
            table: &rel.name,
            column: &col.name,
        };
        let bases = col.bases.iter().map(|b| Origin::Column {
            schema: &b.0,
            table: &b.1,
            column: &b.2,
        });
        let all: Vec<Origin<'_>> = std::iter::once(own).chain(bases).collect();
        self.column_rule(all.iter().cloned())
    }

    /// The rule for a statement's result columns that have no origin (`lower(email)`,
    /// `row_to_json(c)`, `string_agg(ssn, ',')`, a RETURNING list): when its SELECT or
    /// RETURNING list refers to any column, and it reads a relation (`rels`, as the catalog
    /// resolved its tables) with a masked column, those are masked whole. A statement the
    /// gateway cannot read (opaque) or a FETCH from a cursor may output anything.
    fn output_taint(&self, c: &Classified, rels: &[Option<Arc<Relation>>]) -> Option<usize> {
        taint(self, c, &c.output_columns, rels)
    }

    /// The rule whose masked values a write or DDL statement would copy into a table: its
    /// target lists (or a writing function's arguments) refer to columns, and it reads a
    /// relation with a masked column.
    fn copy_taint(&self, c: &Classified, rels: &[Option<Arc<Relation>>]) -> Option<usize> {
        if let Some(r) = taint(self, c, &c.source_columns, rels) {
            return Some(r);
        }
        if c.set_columns.is_empty() {
            return None;
        }
        // `UPDATE t SET a = b`: the names on the right are t's own columns, unless a FROM
        // list brings other relations (and their aliases) in.
        if c.tables.len() > 1 {
            return self.covering_rule(rels);
        }
        // Each name by the catalog's columns of t (a view's by the base columns it shows), in
        // every relation t may be (an unqualified name: every schema's). A name that is not a
        // column of one of them is, there, a whole row (`SET a = t::text`, or an alias's):
        // every column of it.
        let first = self.first_column_rule();
        c.set_columns
            .iter()
            .filter_map(|r| {
                let column = r.rsplit('.').next().unwrap_or(r);
                rels.iter()
                    .filter_map(|rel| match rel {
                        None => first,
                        Some(rel) => match rel.columns.values().find(|col| col.name == column) {
                            Some(col) => self.column_rule_of(rel, col),
                            None => self.covering_rule(std::slice::from_ref(&Some(rel.clone()))),
                        },
                    })
                    .min()
            })
            .min()
    }

    /// The first rule that masks a column of any of these relations (own or traced through
    /// views and parent tables); a relation the catalog did not find counts as masked.
    /// The first in file order, whatever order the columns come in.
    fn covering_rule(&self, rels: &[Option<Arc<Relation>>]) -> Option<usize> {
        let first = self.first_column_rule();
        rels.iter()
            .filter_map(|rel| match rel {
                Some(rel) => rel
                    .columns
                    .values()
                    .filter_map(|col| self.column_rule_of(rel, col))
                    .min(),
                None => first,
            })
            .min()
    }

    /// Whether a statement reads the planner's statistics, which hold sample values of every
    /// column (`pg_stats.most_common_vals`, `histogram_bounds`).
    fn reads_statistics(&self, c: &Classified) -> bool {
        const STATS: &[&str] = &[
            "pg_stats",
            "pg_stats_ext",
            "pg_stats_ext_exprs",
            "pg_statistic",
            "pg_statistic_ext_data",
        ];
        self.has_columns()
            && c.tables
                .iter()
                .any(|t| STATS.iter().any(|s| t.name.eq_ignore_ascii_case(s)))
    }
}

/// The first column rule, when a statement with these column references (`refs`) reads a
/// relation with a masked column, or may output anything (opaque, a FETCH from a cursor).
fn taint(
    plan: &Plan,
    c: &Classified,
    refs: &[String],
    rels: &[Option<Arc<Relation>>],
) -> Option<usize> {
    let first = plan.first_column_rule()?;
    if c.class == Class::Opaque || c.output_columns.iter().any(|r| r == CURSOR_OUTPUT) {
        return Some(first);
    }
    if refs.is_empty() {
        return None;
    }
    plan.covering_rule(rels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::classify::classify;

    fn relation(name: &str, columns: &[&str]) -> Option<Arc<Relation>> {
        Some(Arc::new(Relation::for_tests(name, columns)))
    }

    #[test]
    fn the_covering_rule_is_the_first_in_file_order() {
        let plan = Plan::for_tests(
            "  - name: email\n    targets: [t]\n    mask: {columns: [customers.email]}\n\
             \x20 - name: phone\n    targets: [t]\n    mask: {columns: [phone], strategy: null}\n",
        );
        // Many columns, so that hash order would put `phone` first now and then.
        let mut cols: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        cols.push("phone".into());
        cols.push("email".into());
        let names: Vec<&str> = cols.iter().map(String::as_str).collect();
        for _ in 0..20 {
            // A new map each time: a new hash order.
            let rels = [relation("customers", &names)];
            assert_eq!(plan.covering_rule(&rels), Some(0));
        }
    }

    #[test]
    fn taint_of_outputs_and_copies() {
        let plan = Plan::for_tests(
            "  - name: email\n    targets: [t]\n    mask: {columns: [customers.email]}\n",
        );
        let customers = [relation("customers", &["id", "name", "email"])];
        let orders = [relation("orders", &["id", "note"])];
        let out =
            |sql: &str, rels: &[Option<Arc<Relation>>]| plan.output_taint(&classify(sql), rels);
        assert_eq!(
            out("SELECT lower(e) FROM customers c(i, n, e)", &customers),
            Some(0)
        );
        assert_eq!(
            out(
                "SELECT count(*) FROM customers WHERE email = 'x'",
                &customers
            ),
            None
        );
        assert_eq!(out("SELECT upper(note) FROM orders", &orders), None);
        // A relation the catalog could not find counts as masked.
        assert_eq!(out("SELECT upper(note) FROM orders", &[None]), Some(0));
        assert_eq!(out("FETCH 1 FROM c", &[]), Some(0));
        assert_eq!(out("EXECUTE p", &[]), Some(0));
        let copy =
            |sql: &str, rels: &[Option<Arc<Relation>>]| plan.copy_taint(&classify(sql), rels);
        assert_eq!(
            copy(
                "INSERT INTO orders SELECT id, name FROM customers",
                &customers
            ),
            Some(0)
        );
        assert_eq!(copy("UPDATE customers SET name = name", &customers), None);
        assert_eq!(
            copy("UPDATE customers SET name = email", &customers),
            Some(0)
        );
        assert_eq!(copy("UPDATE customers SET email = 'x'", &customers), None);
        // A whole row, and a name that only one of several schemas' tables has.
        assert_eq!(
            copy("UPDATE customers c SET name = c::text", &customers),
            Some(0)
        );
        let two = [
            customers[0].clone(),
            relation("customers", &["id", "email"]),
        ];
        assert_eq!(copy("UPDATE customers SET id = id", &two), None);
        assert_eq!(copy("UPDATE customers SET name = name", &two), Some(0));
        let joined = [customers[0].clone(), orders[0].clone()];
        assert_eq!(
            copy(
                "UPDATE orders o SET note = c.x FROM customers c(i, n, x)",
                &joined
            ),
            Some(0)
        );
        // Statistics hold sample values of every column.
        assert!(plan.reads_statistics(&classify("SELECT * FROM pg_stats")));
    }
}
