//! SQL statement classifier: what a query string would do, as one [`Class`] plus the relations
//! and functions it names, for the statement rules and the record.
//!
//! Design notes (the *why*):
//!
//! * **Fail closed.** Every downstream deny/approval rule matches [`Class::Opaque`], so anything
//!   this module cannot place — a parse error, a statement type it does not know, a procedure
//!   or prepared statement whose body it cannot see — is Opaque, never Read.
//! * **The whole tree, not the top-level tag.** A `SELECT` can hide a `DELETE` in a CTE, a
//!   privileged function call can sit in any expression (an array element, a named argument,
//!   a column default, a view body). pg_query's own `nodes()` walker only descends into the
//!   node kinds it cares about, so it is not used for classification. Instead the parse tree
//!   is fed through serde (every pg_query protobuf type derives `Serialize`) into a private
//!   [`Serializer`] that sees *every* field of *every* node, with the node's type name.
//!   Nothing is materialised along the way (no JSON tree), so memory (and recursion) stays
//!   proportional to the nesting depth, which prost's decoder already caps at 100 nested
//!   messages (about 50 levels of expression); deeper trees fail to decode and are Opaque.
//! * **Bounded cost.** Strings over [`MAX_QUERY_LEN`] are not parsed at all, and the LRU
//!   cache only keeps reasonably small query texts so that its memory is bounded by
//!   capacity × `cache::MAX_CACHED_LEN` rather than capacity × 1 MiB.
//!
//! One job per module: `walker` receives the parse tree (streamed by `serde_walk`) and hands
//! each finished node to `statements` (what a statement does by itself), `functions` (what a
//! call does), `tables` (the relations named), `columns` (the columns output, copied or set) and
//! `conditions` (whether a write's conditions bound its rows); `cache` keeps verdicts by query
//! text, or by `shape` (the text less its numbers) where no number can change the verdict.

use std::panic::{self, AssertUnwindSafe};

use serde::ser::Serialize;

use super::{predicate, settings};

mod cache;
mod canonical;
mod columns;
mod conditions;
mod frame;
mod functions;
mod nodes;
// The serde side of the walk: how the parse tree streams into `Walker`.
mod serde_walk;
mod shape;
mod statements;
mod tables;
mod walker;

pub use cache::Classifier;
pub use canonical::canonical_statements;

use frame::Verdict;
use walker::Walker;

#[cfg(test)]
use {frame::Frame, statements::statement_class};

/// Longer query strings are Opaque without parsing (bounded parser cost) and are not cached.
pub const MAX_QUERY_LEN: usize = 1 << 20;

pub use crate::statement::{Class, Classified, TableRef};

/// Classifies one query string (possibly several statements). Never panics, never fails: anything
/// it cannot understand is Opaque (fail closed: Opaque is matched by every deny/approval rule
/// downstream).
pub fn classify(sql: &str) -> Classified {
    if sql.len() > MAX_QUERY_LEN {
        return Classified::opaque(format!(
            "too long to classify ({} bytes, limit {MAX_QUERY_LEN})",
            sql.len()
        ));
    }
    // pg_query's ParseResult::new indexes and casts parse-tree nodes with panicking helpers; a
    // libpg_query shape it did not expect must become Opaque, not take the session task down.
    match panic::catch_unwind(AssertUnwindSafe(|| classify_unchecked(sql))) {
        Ok(c) => c,
        Err(_) => Classified::opaque("internal error while classifying"),
    }
}

fn classify_unchecked(sql: &str) -> Classified {
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(p) => p,
        // prost refuses trees nested deeper than its recursion limit (about 50 levels of
        // expression, e.g. `a + b + ...` with 50 terms); its message spells out the whole path.
        Err(pg_query::Error::Decode(e)) if e.to_string().contains("recursion limit") => {
            return Classified::opaque("parse tree too deeply nested to classify")
        }
        Err(e) => return Classified::opaque(clip(e.to_string())),
    };
    let mut walker = Walker::default();
    if let Err(e) = parsed.protobuf.serialize(&mut walker) {
        return Classified::opaque(format!("internal error while classifying: {e}"));
    }
    let statements = walker.statements.len();
    let mut verdict = Verdict::default();
    for v in walker.statements {
        verdict.raise(v.class, v.note);
    }
    Classified {
        class: verdict.class,
        tables: walker.tables.into_iter().collect(),
        functions: walker.functions.into_iter().collect(),
        statements,
        output_columns: walker.output_columns.into_iter().collect(),
        source_columns: walker.source_columns.into_iter().collect(),
        set_columns: walker.set_columns.into_iter().collect(),
        note: if verdict.class == Class::Opaque {
            // Every Opaque verdict carries a note; this is only a backstop.
            Some(verdict.note.unwrap_or_else(|| "unclassified".to_owned()))
        } else {
            None
        },
    }
}

/// Notes end up in logs and the record; a parser message quoting a huge statement should not.
fn clip(mut note: String) -> String {
    const MAX_NOTE: usize = 300;
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

/// In [`Classified::output_columns`]: a FETCH, whose rows come from a cursor's query.
pub const CURSOR_OUTPUT: &str = "<cursor>";

#[cfg(test)]
mod tests;

#[cfg(test)]
mod output_column_tests;

#[cfg(test)]
mod cache_tests;
