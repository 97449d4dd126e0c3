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
    sync::oneshot,
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
    /// Nothing is held (the BEGIN or SAVEPOINT before the trial): its answer is dropped.
    Quiet,
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
                if let Some(tx) = shared.trial_done().take() {
                    let _ = tx.send(outcome);
                }
                delivered
            }
            Pending::Own(Finish::Quiet) => false,
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

/// Whether `text` is one INSERT, UPDATE, DELETE or MERGE (what a trial can count).
pub(super) fn triable(text: &str) -> bool {
    match pg_query::parse(text, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) => matches!(
            parsed.statement_types().as_slice(),
            ["InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"]
        ),
        Err(_) => false,
    }
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
        // Whether the agent is inside a transaction block decides BEGIN or SAVEPOINT: wait
        // until everything sent before has been answered.
        to.flush().await.map_err(io)?;
        let settled = tokio::time::timeout(SETTLE, async {
            while !self.shared.pending().is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        let in_block = match (settled, self.shared.status()) {
            (Ok(()), b'I') => false,
            (Ok(()), b'T') => true,
            // A failed transaction block runs nothing anyway; an unknown state is not guessed.
            _ => return Ok(Tried::Untried(Box::new(o))),
        };
        let (done_tx, done_rx) = oneshot::channel();
        *self.shared.trial_done() = Some(done_tx);
        let prelude = if in_block {
            format!("SAVEPOINT {SAVEPOINT}")
        } else {
            "BEGIN".to_owned()
        };
        self.push(Pending::Own(Finish::Quiet))?;
        to.write_all(&out::query(&prelude).bytes)
            .await
            .map_err(io)?;
        self.push(Pending::Trial { open: o, in_block })?;
        to.write_all(&frame.bytes).await.map_err(io)?;
        to.flush().await.map_err(io)?;
        let outcome = done_rx.await.map_err(|_| {
            RelayError::Upstream(CodecError::Io(std::io::Error::other(
                "the target's answer to a trial ended early",
            )))
        })?;
        if outcome.delivered {
            return Ok(Tried::Ran);
        }
        let within = !outcome.failed && outcome.rows.is_some_and(|n| n <= limit);
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
            let touched = outcome
                .rows
                .map_or("an unknown number of".to_owned(), |n| n.to_string());
            let note = format!(
                "rolled back by the gateway: a trial run touched {touched} rows, more than max_rows {limit}; put to approvers"
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
            Tried::Over(outcome.rows)
        })
    }
}
