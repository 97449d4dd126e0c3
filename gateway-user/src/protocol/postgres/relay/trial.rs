//! Trial runs for approval rules with `max_rows`: a write is first run for real inside the
//! gateway's own transaction (or a savepoint of the agent's), its row count read from the
//! server's CommandComplete; within the limit it stands and the agent gets its answer, beyond it
//! is rolled back and put to approvers with the real count, and runs again only once approved.
//!
//! The gateway's own statements (BEGIN, SAVEPOINT, COMMIT, ROLLBACK …) travel on the agent's
//! connection as Query messages whose answers the agent never sees ([`Pending::Own`]); the tried
//! statement's answer is held back ([`Pending::Trial`]) until the gateway has decided.
//!
//! Only a simple Query holding one INSERT, UPDATE, DELETE or MERGE is tried. Anything else a
//! `max_rows` rule matches (several statements, a COPY, a CTE, the extended protocol) goes to
//! approvers without a count, as under a rule without `max_rows`: never run untried.

use std::time::Duration;

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use super::{out, CodecError, Frame, Open, Pending, RelayError, Shared, Upward};

/// The savepoint a trial inside the agent's own transaction block runs under.
const SAVEPOINT: &str = "agentgate_trial";
/// How long a trial waits for the answers to statements sent before it (the transaction state
/// must be known); past that the statement goes to approvers untried.
const SETTLE: Duration = Duration::from_secs(30);

/// What the gateway's own statement does with the tried statement's held answer.
#[derive(Debug)]
pub(super) enum Finish {
    /// Reads the count of changed rows (see [`CHANGED_ROWS`]) for the trial; its answer is
    /// the gateway's.
    Count,
    /// The trial stands: the agent gets the held answer, any error of this statement (a
    /// deferred constraint failing at COMMIT), and this statement's ReadyForQuery.
    Deliver,
    /// The trial was rolled back: the held answer is dropped; the statement is recorded with
    /// this outcome.
    Discard(String),
}

/// The tried statement's answer, complete (its ReadyForQuery arrived).
#[derive(Debug, Clone, Copy)]
pub(super) struct Outcome {
    /// Rows its CommandComplete reported.
    pub rows: Option<u64>,
    pub failed: bool,
    /// The downward side already gave the agent the answer (a failure inside the agent's own
    /// transaction block, which stays aborted as the server left it).
    pub delivered: bool,
}

/// How a trial ended.
pub(super) enum Tried {
    /// The statement ran (within the limit, or it failed): the agent has its answer.
    Ran,
    /// It touched more rows than the limit (the count, or `None` if the server gave none) and
    /// was rolled back.
    Over(Option<u64>),
    /// Not tried (the transaction state could not be known): nothing was sent; the statement
    /// (its record) goes to approvers without a count.
    Untried(Box<Open>),
}

/// The downward side's part of a trial: the answer held back until the decision.
#[derive(Default)]
pub(super) struct Held {
    pub frames: Vec<Frame>,
    /// Errors of the gateway's own finishing statement, for the agent after the answer.
    pub errors: Vec<Frame>,
    /// The tried statement, recorded once the decision is known.
    pub open: Option<Open>,
    /// The answer of a [`Finish::Count`] statement's row.
    pub count: Option<Changed>,
}

/// The answer of [`CHANGED_ROWS`] in a DataRow.
pub(super) fn changed_of(row: &Frame) -> Option<Changed> {
    let mut f = super::Fields::new(row);
    if f.i16().ok()? < 1 {
        return None;
    }
    let len = usize::try_from(f.i32().ok()?).ok()?;
    let text = std::str::from_utf8(f.take(len).ok()?).ok()?;
    let (rows, digest) = text.split_once(':')?;
    // sum() is numeric: an integral value prints without a fraction.
    Some((rows.parse().ok()?, digest.to_owned()))
}

impl Held {
    /// The ReadyForQuery that ends `p` (a [`Pending::Trial`] or [`Pending::Own`]) arrived:
    /// releases or drops the held answer into `before` and the finished statement into `done`;
    /// returns whether this ReadyForQuery goes to the agent.
    pub(super) fn answered(
        &mut self,
        p: Pending,
        shared: &Shared,
        before: &mut Vec<Frame>,
        done: &mut Vec<Open>,
    ) -> bool {
        match p {
            Pending::Trial { open, in_block } => {
                let failed = open.rec.error.is_some();
                // A failure inside the agent's block leaves it aborted, as the server did:
                // nothing to undo or decide.
                let delivered = failed && in_block;
                let outcome = Outcome {
                    rows: open.rec.rows,
                    failed,
                    delivered,
                };
                if delivered {
                    before.append(&mut self.frames);
                    done.push(open);
                } else {
                    self.open = Some(open);
                }
                shared.trial_event(Event::Answered(outcome));
                delivered
            }
            Pending::Own(Finish::Count) => {
                shared.trial_event(Event::Counted {
                    status: shared.status(),
                    changed: self.count.take(),
                });
                false
            }
            Pending::Own(Finish::Deliver) => {
                before.append(&mut self.frames);
                before.append(&mut self.errors);
                done.extend(self.open.take());
                true
            }
            Pending::Own(Finish::Discard(note)) => {
                self.frames.clear();
                self.errors.clear();
                if let Some(mut o) = self.open.take() {
                    o.rec.error = Some(note);
                    done.push(o);
                }
                false
            }
            _ => true,
        }
    }
}

/// Whether `text` is one INSERT, UPDATE, DELETE or MERGE without a WITH clause (a writable
/// CTE is another write; the count below would catch it, but a trial is kept to the plain case).
pub(super) fn triable(text: &str) -> bool {
    use pg_query::protobuf::node::Node;
    let Ok(parsed) = pg_query::parse(text, pg_query::ParserOptions::DEFAULT) else {
        return false;
    };
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return false;
    };
    let no_with = |w: &Option<pg_query::protobuf::WithClause>| w.is_none();
    match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(Node::InsertStmt(i)) => {
            no_with(&i.with_clause)
                && match i.select_stmt.as_ref().and_then(|n| n.node.as_ref()) {
                    Some(Node::SelectStmt(sel)) => no_with(&sel.with_clause),
                    None => true,
                    Some(_) => false,
                }
        }
        Some(Node::UpdateStmt(u)) => no_with(&u.with_clause),
        Some(Node::DeleteStmt(d)) => no_with(&d.with_clause),
        Some(Node::MergeStmt(m)) => no_with(&m.with_clause),
        _ => false,
    }
}

/// Rows inserted, updated or deleted so far in the current transaction, in every table, and a
/// digest of every relation's storage (a TRUNCATE, a rewrite or a DROP inside the trial changes
/// it without counting rows): what a trial really touched is the difference around it
/// (cascades, triggers, rules and functions that write included), not only the statement's own
/// command tag. Every name is schema-qualified: the agent's search_path must not pick the
/// operators and functions the count is made of.
const CHANGED_ROWS: &str = "SELECT CAST(COALESCE(pg_catalog.sum((s.n_tup_ins \
     OPERATOR(pg_catalog.+) s.n_tup_upd) OPERATOR(pg_catalog.+) s.n_tup_del), 0) AS pg_catalog.text) \
     OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) (SELECT pg_catalog.md5(pg_catalog.string_agg(\
     CAST(c.oid AS pg_catalog.text) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) \
     CAST(c.relfilenode AS pg_catalog.text), ',' ORDER BY c.oid)) FROM pg_catalog.pg_class c) \
     FROM pg_catalog.pg_stat_xact_all_tables s";

/// A [`CHANGED_ROWS`] answer: rows changed so far, and the storage digest.
pub(super) type Changed = (u64, String);

/// What the downward side reports to a trial in progress.
#[derive(Debug)]
pub(super) enum Event {
    /// A [`Finish::Count`] statement ended: the transaction status after it, and its answer.
    Counted {
        status: u8,
        changed: Option<Changed>,
    },
    /// The tried statement's answer is complete.
    Answered(Outcome),
}

impl Upward<'_, '_> {
    /// Runs the Query `frame` (recorded as `o`) as a trial under `limit` rows.
    pub(super) async fn trial<W>(
        &mut self,
        frame: Frame,
        o: Open,
        limit: u64,
        to: &mut W,
    ) -> Result<Tried, RelayError>
    where
        W: AsyncWrite + Unpin,
    {
        let io = |e| RelayError::Upstream(CodecError::Io(e));
        // Only from a known, quiet state: with an extended-protocol batch open the server may be
        // skipping to Sync, or have ended a transaction block without a ReadyForQuery yet.
        if self.batch_open {
            return Ok(Tried::Untried(Box::new(o)));
        }
        // Whether the agent is inside a transaction block decides BEGIN or SAVEPOINT: wait
        // until everything sent before has been answered.
        to.flush().await.map_err(io)?;
        let settled = tokio::time::timeout(SETTLE, async {
            while !self.shared.pending().is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        if self
            .shared
            .skipping
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(Tried::Untried(Box::new(o)));
        }
        let in_block = match (settled, self.shared.status()) {
            (Ok(()), b'I') => false,
            (Ok(()), b'T') => true,
            // A failed transaction block runs nothing anyway; an unknown state is not guessed.
            _ => return Ok(Tried::Untried(Box::new(o))),
        };
        let (events_tx, mut events) = mpsc::unbounded_channel();
        *self.shared.trial_events() = Some(events_tx);
        let result = self.tried(frame, o, limit, in_block, &mut events, to).await;
        *self.shared.trial_events() = None;
        result
    }

    async fn tried<W>(
        &mut self,
        frame: Frame,
        o: Open,
        limit: u64,
        in_block: bool,
        events: &mut mpsc::UnboundedReceiver<Event>,
        to: &mut W,
    ) -> Result<Tried, RelayError>
    where
        W: AsyncWrite + Unpin,
    {
        let io = |e| RelayError::Upstream(CodecError::Io(e));
        let failed = |what: &str| RelayError::Trial(what.to_owned());
        // 1. Open the trial and read the transaction's count of changed rows so far; the
        //    statement goes only once the server says the block is open.
        let prelude = if in_block {
            format!("SAVEPOINT {SAVEPOINT}; {CHANGED_ROWS}")
        } else {
            format!("BEGIN; {CHANGED_ROWS}")
        };
        let before = self.count(&prelude, events, to).await?;
        let Some(before) = before else {
            return Err(failed("the gateway could not open its trial transaction"));
        };
        // 2. The statement, its answer held back.
        self.push(Pending::Trial { open: o, in_block })?;
        to.write_all(&frame.bytes).await.map_err(io)?;
        to.flush().await.map_err(io)?;
        let outcome = match events.recv().await {
            Some(Event::Answered(outcome)) => outcome,
            _ => return Err(failed("the trial's answer did not arrive")),
        };
        if outcome.delivered {
            return Ok(Tried::Ran);
        }
        // 3. What it really touched: its own count, or every row changed around it, whichever
        //    is more; unknown if any relation's storage changed. Deferred triggers and checks
        //    fire first, so that what they do is counted too (in the gateway's own transaction;
        //    inside the agent's block they fire at the agent's COMMIT, see docs/approvals.md).
        let touched = if outcome.failed {
            None
        } else {
            let sql = if in_block {
                CHANGED_ROWS.to_owned()
            } else {
                format!("SET CONSTRAINTS ALL IMMEDIATE; {CHANGED_ROWS}")
            };
            match self.count(&sql, events, to).await? {
                Some((after, digest)) if digest == before.1 => Some(
                    outcome
                        .rows
                        .unwrap_or(0)
                        .max(after.saturating_sub(before.0)),
                ),
                _ => None,
            }
        };
        let within = !outcome.failed && touched.is_some_and(|n| n <= limit);
        let (finish, how) = if outcome.failed || within {
            let end = if in_block {
                format!("RELEASE SAVEPOINT {SAVEPOINT}")
            } else if outcome.failed {
                "ROLLBACK".to_owned()
            } else {
                "COMMIT".to_owned()
            };
            (end, Finish::Deliver)
        } else {
            let end = if in_block {
                format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}")
            } else {
                "ROLLBACK".to_owned()
            };
            let what = touched.map_or("an unknown number of".to_owned(), |n| n.to_string());
            let note = format!(
                "rolled back by the gateway: a trial run touched {what} rows, more than max_rows {limit}; put to approvers"
            );
            (end, Finish::Discard(note))
        };
        let ran = matches!(how, Finish::Deliver);
        self.push(Pending::Own(how))?;
        to.write_all(&out::query(&finish).bytes).await.map_err(io)?;
        to.flush().await.map_err(io)?;
        Ok(if ran {
            Tried::Ran
        } else {
            Tried::Over(touched)
        })
    }

    /// Sends `sql` (ending in [`CHANGED_ROWS`]) as the gateway's own and waits for the count;
    /// `None` unless the server answered it inside an open transaction block.
    async fn count<W>(
        &mut self,
        sql: &str,
        events: &mut mpsc::UnboundedReceiver<Event>,
        to: &mut W,
    ) -> Result<Option<Changed>, RelayError>
    where
        W: AsyncWrite + Unpin,
    {
        let io = |e| RelayError::Upstream(CodecError::Io(e));
        self.push(Pending::Own(Finish::Count))?;
        to.write_all(&out::query(sql).bytes).await.map_err(io)?;
        to.flush().await.map_err(io)?;
        match events.recv().await {
            Some(Event::Counted {
                status: b'T',
                changed,
            }) => Ok(changed),
            Some(_) => Ok(None),
            None => Err(RelayError::Trial("the target's answer ended early".into())),
        }
    }
}
