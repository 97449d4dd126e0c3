//! Which errors and notices lose their texts whole. Many server errors print the value that
//! made them fail, without quotes and in any field: `make_date(salary, 13, 1)` fails with
//! `date field value out of range: 271828-13-01`, `setseed(salary)` with `setseed parameter
//! 271828 is out of allowed range`, `xmlparse(document reverse(email))` puts the text in its
//! DETAIL, `('[' || salary || ',')::jsonb` in its CONTEXT. No pattern finds them all, so under
//! column rules every free-text field of an error or notice raised while a statement that reads
//! a masked column runs is replaced (see [`super::notice::hide_notice`]). "Reads" is what the
//! masking of computed result columns uses: the statement names a relation with a masked
//! column, its own or one a view or a parent table shows (the catalog traces them); a relation
//! the catalog cannot find counts as masked. Where the gateway cannot know what runs (a
//! statement it cannot read, a cursor's query run by FETCH or MOVE, a transaction's end, which
//! runs holdable cursors and deferred triggers), it hides.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::Arc,
};

use pg_query::NodeEnum;

use super::{catalog::Catalog, taint::Taint};
use crate::mask::plan::Plan;
use crate::protocol::postgres::classify::{Class, Classified, CURSOR_OUTPUT};

/// What an error or notice arriving now comes from, as far as the relay's queue of messages
/// still to be answered tells.
pub enum Raiser {
    /// Nothing was sent that is still to be answered: a message of the server's own (a FATAL
    /// when the server shuts down); no statement runs.
    Idle,
    /// A Parse or a Describe: parsing and describing read no rows.
    Preparing,
    /// The statement that runs: its sequence number in the session, and its text as recorded
    /// (`None` when [`TextGuard::judged`] already says how it is judged: a statement raising
    /// many notices need not have its text copied for each).
    Statement {
        seq: u64,
        classified: Arc<Classified>,
        text: Option<String>,
    },
    /// Something runs that the gateway did not read: a FunctionCall, the commit at the end of
    /// an extended-protocol batch (deferred triggers, holdable cursors), a Bind with no
    /// Execute behind it (binding plans the statement, and the planner reads statistics).
    Unknown,
}

/// Decides whether the texts of an error or notice are hidden; remembers the answer for the
/// statement that runs, so that one raising many notices is judged once. Remembered by the
/// statement's run, not its text: the same text may read other columns once a view is
/// redefined.
#[derive(Default)]
pub struct TextGuard {
    last: Option<(u64, Arc<Plan>, bool)>,
}

impl TextGuard {
    /// The statement run whose answer under `plan` is remembered.
    pub fn judged(&self, plan: &Arc<Plan>) -> Option<u64> {
        self.last
            .as_ref()
            .filter(|(_, p, _)| Arc::ptr_eq(p, plan))
            .map(|(seq, _, _)| *seq)
    }

    /// Whether what `raiser` raises must lose its texts under `plan`. `ddl_in_transaction`: the
    /// session changed the schema in its open transaction, which the gateway's own catalog
    /// connection cannot see (a view redefined to read a masked column looks as it was).
    pub async fn hides(
        &mut self,
        plan: &Arc<Plan>,
        catalog: &Catalog,
        raiser: &Raiser,
        ddl_in_transaction: bool,
    ) -> bool {
        if !plan.has_columns() {
            return false;
        }
        let (seq, classified, text) = match raiser {
            Raiser::Idle | Raiser::Preparing => return false,
            Raiser::Unknown => return true,
            Raiser::Statement {
                seq,
                classified,
                text,
            } => (*seq, classified, text),
        };
        if ddl_in_transaction {
            return true;
        }
        if let Some((s, p, hides)) = &self.last {
            if *s == seq && Arc::ptr_eq(p, plan) {
                return *hides;
            }
        }
        // Only a run `judged` named comes without its text, and it was answered above.
        let Some(text) = text else {
            return true;
        };
        let hides = reads_masked(plan, catalog, classified, text).await;
        self.last = Some((seq, plan.clone(), hides));
        hides
    }
}

/// Whether a statement reads a masked column, or may run what does without naming it.
async fn reads_masked(plan: &Plan, catalog: &Catalog, c: &Classified, text: &str) -> bool {
    if c.class == Class::Opaque
        || c.class == Class::Admin
        || c.output_columns.iter().any(|r| r == CURSOR_OUTPUT)
        || plan.reads_statistics(c)
        || runs_unseen_code(text)
    {
        return true;
    }
    if c.tables.is_empty() {
        return false;
    }
    let names: Vec<_> = c
        .tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    match catalog.resolve(&names).await {
        Ok(rels) => plan.covering_rule(&rels).is_some(),
        Err(e) => {
            tracing::warn!("tables of a statement whose error texts may be hidden: {e}");
            true
        }
    }
}

/// Statements that run queries or code decided earlier, which they do not name: FETCH and MOVE
/// (a cursor's query), COMMIT and the other transaction statements (holdable cursors are
/// filled and deferred triggers fire at commit), SET CONSTRAINTS (deferred checks), and the
/// maintenance statements that evaluate index expressions or a materialized view's query. A
/// text that does not parse is judged the same way.
fn runs_unseen_code(text: &str) -> bool {
    // pg_query's ParseResult::new can panic on a tree shape it did not expect (see classify).
    let kinds = panic::catch_unwind(AssertUnwindSafe(|| {
        pg_query::parse(text, pg_query::ParserOptions::DEFAULT).map(|p| {
            p.protobuf
                .stmts
                .iter()
                .map(|s| s.stmt.as_ref().and_then(|n| n.node.clone()))
                .collect::<Vec<_>>()
        })
    }));
    let Ok(Ok(kinds)) = kinds else {
        return true;
    };
    kinds.iter().any(|k| {
        matches!(
            k,
            None | Some(
                NodeEnum::FetchStmt(_)
                    | NodeEnum::TransactionStmt(_)
                    | NodeEnum::ConstraintsSetStmt(_)
                    | NodeEnum::VacuumStmt(_)
                    | NodeEnum::ReindexStmt(_)
                    | NodeEnum::ClusterStmt(_)
                    | NodeEnum::RefreshMatViewStmt(_)
            )
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_run_what_they_do_not_name() {
        for sql in [
            "MOVE 1 IN c",
            "FETCH ALL FROM c",
            "COMMIT",
            "END",
            "SELECT 1; COMMIT",
            "PREPARE TRANSACTION 'x'",
            "SET CONSTRAINTS ALL IMMEDIATE",
            "ANALYZE",
            "REINDEX TABLE t",
            "CLUSTER t",
            "REFRESH MATERIALIZED VIEW mv",
            "SELEC 1",
        ] {
            assert!(runs_unseen_code(sql), "{sql}");
        }
        for sql in [
            "SELECT make_date(2024, 13, 1)",
            "SELECT 1; SELECT 2",
            "UPDATE t SET a = 1",
            "DECLARE c CURSOR FOR SELECT 1",
        ] {
            assert!(!runs_unseen_code(sql), "{sql}");
        }
    }
}
