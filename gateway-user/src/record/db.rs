//! The record database: one SQLite file (WAL) holding the audit journal, the views people and
//! tools read (`sessions`, `statements`, `approval_events`), and the little mutable state that
//! is not a record (approval requests' current state). One connection and one chain tip,
//! shared by everything that writes, so that records are chained in the order they commit.

use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use rusqlite::{Connection, OptionalExtension, Transaction};

use super::journal::{self, Entry, Tip};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("record database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("record database: {0}")]
    Io(#[from] std::io::Error),
}

/// What people and tools query: the records as tables. Views, so that they can never say
/// anything the chained journal does not; made anew at every open. `statements` holds each
/// statement's outcome, or its intent when the outcome never came (the gateway was killed
/// after forwarding it).
const VIEWS: &str = "
DROP VIEW IF EXISTS sessions;
DROP VIEW IF EXISTS statements;
DROP VIEW IF EXISTS approval_events;
CREATE VIEW sessions AS
SELECT o.session AS id,
       json_extract(o.body, '$.started_ms') AS started_ms,
       json_extract(c.body, '$.ended_ms') AS ended_ms,
       json_extract(o.body, '$.protocol') AS protocol,
       json_extract(o.body, '$.workload') AS workload,
       json_extract(o.body, '$.cgroup') AS cgroup,
       json_extract(o.body, '$.pid') AS pid,
       json_extract(o.body, '$.issuer') AS issuer,
       json_extract(o.body, '$.subject') AS subject,
       json_extract(o.body, '$.groups') AS groups,
       json_extract(o.body, '$.target') AS target,
       json_extract(o.body, '$.original_dst') AS original_dst,
       json_extract(o.body, '$.client_user') AS client_user,
       json_extract(o.body, '$.database') AS database,
       json_extract(o.body, '$.policy_version') AS policy_version,
       json_extract(o.body, '$.token_expires_ms') AS token_expires_ms,
       json_extract(c.body, '$.bytes_up') AS bytes_up,
       json_extract(c.body, '$.bytes_down') AS bytes_down,
       json_extract(c.body, '$.ended_by') AS ended_by,
       json_extract(c.body, '$.error') AS error
FROM audit_log o
LEFT JOIN audit_log c ON c.kind = 'session_close' AND c.session = o.session
WHERE o.kind = 'session_open';
CREATE VIEW statements AS
SELECT session,
       json_extract(body, '$.seq') AS seq,
       json_extract(body, '$.started_ms') AS started_ms,
       json_extract(body, '$.kind') AS kind,
       json_extract(body, '$.text') AS text,
       json_extract(body, '$.params') AS params,
       json_extract(body, '$.class') AS class,
       coalesce(json_extract(body, '$.privileged'), json_extract(body, '$.class') <> 'read')
           AS privileged,
       json_extract(body, '$.tables') AS tables,
       json_extract(body, '$.functions') AS functions,
       json_extract(body, '$.decision') AS decision,
       json_extract(body, '$.rule') AS rule,
       json_extract(body, '$.duration_us') AS duration_us,
       json_extract(body, '$.rows') AS rows,
       json_extract(body, '$.error_code') AS error_code,
       json_extract(body, '$.error') AS error,
       seq AS record
FROM audit_log WHERE kind = 'statement'
UNION ALL
SELECT i.session,
       json_extract(i.body, '$.seq'),
       json_extract(i.body, '$.started_ms'),
       json_extract(i.body, '$.kind'),
       json_extract(i.body, '$.text'),
       json_extract(i.body, '$.params'),
       json_extract(i.body, '$.class'),
       coalesce(json_extract(i.body, '$.privileged'), json_extract(i.body, '$.class') <> 'read'),
       json_extract(i.body, '$.tables'),
       json_extract(i.body, '$.functions'),
       json_extract(i.body, '$.decision'),
       json_extract(i.body, '$.rule'),
       NULL, NULL, NULL,
       'sent; its outcome is not on record (the gateway stopped first)',
       i.seq
FROM audit_log i
WHERE i.kind = 'statement_intent'
  AND NOT EXISTS (SELECT 1 FROM audit_log o
                  WHERE o.kind = 'statement' AND o.session = i.session
                    AND json_extract(o.body, '$.seq') = json_extract(i.body, '$.seq'));
CREATE VIEW approval_events AS
SELECT json_extract(body, '$.request') AS request,
       at_ms,
       json_extract(body, '$.event') AS event,
       json_extract(body, '$.actor') AS actor,
       json_extract(body, '$.detail') AS detail,
       seq AS record
FROM audit_log WHERE kind = 'approval';
";

/// Indexes the views and the audit commands need so that every query reads only what it
/// answers about (see `plans` in the tests): a session's closing and intents by its session, sessions
/// by start time (`sessions list` is newest first), and each statement's outcome by session
/// and statement number (the `statements` view's look-up of an intent's outcome). Partial, so the write path pays only for the kinds
/// they cover. Made at every open: a database of an earlier version gets them at its first
/// start (once, in time proportional to its records).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS audit_log_close ON audit_log(session) WHERE kind = 'session_close';
CREATE INDEX IF NOT EXISTS audit_log_intent ON audit_log(session) WHERE kind = 'statement_intent';
CREATE INDEX IF NOT EXISTS audit_log_started
    ON audit_log(json_extract(body, '$.started_ms')) WHERE kind = 'session_open';
CREATE INDEX IF NOT EXISTS audit_log_outcome
    ON audit_log(session, json_extract(body, '$.seq')) WHERE kind = 'statement';
";

/// The sessions whose end is not on record, so that a start reads those and not every session
/// there ever was. Derived from the journal, never a record: kept by triggers in the very
/// transaction that appends a session's opening or closing, rebuilt from the journal when the
/// table is missing, ignored by `audit verify`, and checked against the journal before it is
/// acted on ([`Db::close_orphans`]).
const OPEN_SESSIONS: &str = "
CREATE TABLE IF NOT EXISTS open_sessions (
    session TEXT PRIMARY KEY,
    opened INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS open_sessions_opened AFTER INSERT ON audit_log
WHEN new.kind = 'session_open' AND new.session IS NOT NULL
BEGIN
    INSERT OR REPLACE INTO open_sessions (session, opened) VALUES (new.session, new.seq);
END;
CREATE TRIGGER IF NOT EXISTS open_sessions_closed AFTER INSERT ON audit_log
WHEN new.kind = 'session_close'
BEGIN
    DELETE FROM open_sessions WHERE session = new.session;
END;
";

/// Fills a new `open_sessions` from the journal: every opening with no closing (one look-up in
/// `audit_log_close` each).
const REBUILD_OPEN_SESSIONS: &str = "
INSERT OR REPLACE INTO open_sessions (session, opened)
SELECT o.session, o.seq FROM audit_log o
WHERE o.kind = 'session_open' AND o.session IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM audit_log c WHERE c.kind = 'session_close' AND c.session = o.session)
ORDER BY o.seq;
";

/// The sessions a start closes: those of `open_sessions` whose opening is still on record and
/// whose closing is not (the side table is checked against the journal, not trusted).
pub(crate) const ORPHANS: &str = "
SELECT s.session FROM open_sessions s
WHERE EXISTS (SELECT 1 FROM audit_log o
              WHERE o.seq = s.opened AND o.kind = 'session_open' AND o.session = s.session)
  AND NOT EXISTS (SELECT 1 FROM audit_log c WHERE c.kind = 'session_close' AND c.session = s.session)
ORDER BY s.opened;
";

/// Retention by age: the first record young enough to keep. In journal order, not through
/// `audit_log_at`: it reads the records about to go (their times are nearly in order) rather
/// than every record newer than the cutoff.
pub(crate) const FIRST_KEPT: &str =
    "SELECT seq FROM audit_log NOT INDEXED WHERE at_ms >= ?1 ORDER BY seq LIMIT 1";

/// Tables of earlier versions whose names are views now: kept, renamed, outside the chain.
const LEGACY: [&str; 3] = ["sessions", "statements", "approval_events"];

pub struct Db {
    pub conn: Connection,
    tip: Tip,
    /// Whether the connection's commits are synced now (`synchronous=FULL`) or only written
    /// (`NORMAL`): switched per transaction, see [`Db::write_with`].
    synced: bool,
}

pub type SharedDb = Arc<Mutex<Db>>;

impl Db {
    pub fn open(path: &Path) -> Result<SharedDb, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A record is on disk when its transaction commits: privileged statements wait for
        // that before they are forwarded. The recorder relaxes it for batches nobody waits on
        // (Db::write_with).
        conn.pragma_update(None, "synchronous", "FULL")?;
        for table in LEGACY {
            let is_table: bool = conn.query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )?;
            if is_table {
                tracing::warn!(
                    table,
                    "record database of an earlier version: table kept as legacy_{table}, outside the audit chain"
                );
                conn.execute_batch(&format!("ALTER TABLE {table} RENAME TO legacy_{table}"))?;
            }
        }
        migrate(&mut conn)?;
        let tip = journal::tip(&conn)?;
        Ok(Arc::new(Mutex::new(Db {
            conn,
            tip,
            synced: true,
        })))
    }

    /// The number of the last record in the journal (0 when empty).
    pub fn tip_seq(&self) -> i64 {
        self.tip.seq
    }

    pub fn lock(db: &SharedDb) -> MutexGuard<'_, Db> {
        db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction with an appender for journal records; the chain moves on
    /// only if it commits, and the commit is on disk (fsync'd) when this returns.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>, &mut Appender) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.write_with(true, f)
    }

    /// Like [`write`](Self::write); with `synced` false the commit is written to the WAL but
    /// not fsync'd (`synchronous=NORMAL`): a crash of the gateway loses nothing of it, an
    /// operating-system crash or power loss could lose it, until the next synced commit (whose
    /// fsync of the WAL covers every transaction before it).
    pub fn write_with<T>(
        &mut self,
        synced: bool,
        f: impl FnOnce(&Transaction<'_>, &mut Appender) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        if self.synced != synced {
            self.conn
                .pragma_update(None, "synchronous", if synced { "FULL" } else { "NORMAL" })?;
            self.synced = synced;
        }
        // Another gateway process may append to the same journal (the old one draining after a
        // handover, handover/): take the write lock first and follow the records it chained
        // onto ours. Anything else — records deleted from the end, or a tip that does not
        // continue ours — is not followed: this process chains to the tip it knows, and the
        // gap or fork shows in `audit verify`.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut appender = Appender {
            tip: follow(&tx, self.tip)?,
        };
        let out = f(&tx, &mut appender)?;
        tx.commit()?;
        self.tip = appender.tip;
        Ok(out)
    }
}

/// The tip to chain to: the journal's, if the record after `known` chains onto it (another
/// writer continued our chain); otherwise `known`.
fn follow(tx: &Transaction<'_>, known: Tip) -> rusqlite::Result<Tip> {
    let stored = journal::tip(tx)?;
    if stored.seq <= known.seq {
        return Ok(known);
    }
    let next_prev: Option<String> = tx
        .query_row(
            "SELECT prev FROM audit_log WHERE seq = ?1",
            [known.seq + 1],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match next_prev {
        Some(prev) if prev == journal::hex(&known.hash) => stored,
        _ => known,
    })
}

/// Brings a record database of any earlier version to this one's schema, in one transaction
/// (a start that dies half-way leaves it as it was): the journal, its indexes, the side table
/// of open sessions (built from the journal when it is new) and the views.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let had_open_sessions: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'open_sessions'",
        [],
        |r| r.get(0),
    )?;
    tx.execute_batch(journal::SCHEMA)?;
    tx.execute_batch(INDEXES)?;
    tx.execute_batch(OPEN_SESSIONS)?;
    if !had_open_sessions {
        let n = tx.execute(REBUILD_OPEN_SESSIONS, [])?;
        tracing::info!(
            open = n,
            "record database: open_sessions built from the journal"
        );
    }
    tx.execute_batch(VIEWS)?;
    tx.commit()
}

impl Db {
    /// Sessions a previous run left open (it was killed): closed on record now, so that they
    /// do not count as live. Returns how many.
    pub fn close_orphans(&mut self, now_ms: i64) -> rusqlite::Result<usize> {
        let open: Vec<String> = {
            let mut stmt = self.conn.prepare(ORPHANS)?;
            let ids = stmt.query_map([], |r| r.get(0))?;
            ids.collect::<Result<_, _>>()?
        };
        self.write(|tx, journal| {
            for session in &open {
                let body = serde_json::json!({
                    "session": session, "ended_ms": now_ms,
                    "ended_by": "the gateway stopped before the session's end was recorded",
                })
                .to_string();
                journal.append(
                    tx,
                    &Entry {
                        at_ms: now_ms,
                        kind: "session_close",
                        session: Some(session),
                        body: &body,
                    },
                )?;
            }
            // What is left is stale (its opening pruned, or its closing appended by hand):
            // derived state that says nothing the journal does not.
            tx.execute("DELETE FROM open_sessions", [])?;
            Ok(open.len())
        })
    }

    /// Deletes the oldest records: those older than `keep_days`, then as many more as it takes
    /// to bring the records under `max_bytes` (to 90 % of it). The chain stays verifiable from
    /// the last deleted record (the anchor), and the pruning is itself a record. Returns how
    /// many records were deleted.
    pub fn retain(
        &mut self,
        keep_days: Option<u64>,
        max_bytes: Option<u64>,
        shipped: i64,
        now_ms: i64,
    ) -> rusqlite::Result<u64> {
        let mut keep_from: Option<i64> = None;
        if let Some(days) = keep_days {
            let cutoff = now_ms - (days as i64) * 86_400_000;
            let first: Option<i64> = self
                .conn
                .query_row(FIRST_KEPT, [cutoff], |r| r.get(0))
                .optional()?;
            keep_from = Some(first.unwrap_or(self.tip.seq + 1));
        }
        if let Some(max) = max_bytes {
            let used: i64 = self.conn.query_row(
                "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())",
                [],
                |r| r.get(0),
            )?;
            let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let used = (used * page).max(1) as u64;
            if used > max {
                let (lo, hi): (Option<i64>, Option<i64>) =
                    self.conn
                        .query_row("SELECT min(seq), max(seq) FROM audit_log", [], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    let n = (hi - lo + 1) as u64;
                    let keep = n * (max / 10 * 9) / used;
                    let from = hi + 1 - keep as i64;
                    keep_from = Some(keep_from.map_or(from, |k| k.max(from)));
                }
            }
        }
        let Some(keep_from) = keep_from else {
            return Ok(0);
        };
        // What the central store does not have yet stays.
        let keep_from = keep_from.min(shipped.saturating_add(1));
        let pruned = journal::prune(&mut self.conn, keep_from, now_ms)?;
        if pruned > 0 {
            let body = serde_json::json!({"pruned": pruned, "kept_from": keep_from,
                                          "keep_days": keep_days, "max_bytes": max_bytes})
            .to_string();
            self.write(|tx, journal| {
                journal.append(
                    tx,
                    &Entry {
                        at_ms: now_ms,
                        kind: "retention",
                        session: None,
                        body: &body,
                    },
                )
            })?;
        }
        Ok(pruned)
    }
}

/// Appends journal records inside a [`Db::write`] transaction.
pub struct Appender {
    tip: Tip,
}

impl Appender {
    pub fn append(&mut self, tx: &Transaction<'_>, e: &Entry<'_>) -> rusqlite::Result<i64> {
        journal::append(tx, &mut self.tip, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(db: &SharedDb, n: i64, at_ms: i64) {
        Db::lock(db)
            .write(|tx, j| {
                for i in 0..n {
                    let body = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(500));
                    j.append(
                        tx,
                        &Entry {
                            at_ms: at_ms + i,
                            kind: "statement",
                            session: Some("s"),
                            body: &body,
                        },
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }

    /// Two processes writing in turn (a handover) keep one chain; records deleted from the end
    /// are not followed: the writer chains to the tip it knows and the gap shows.
    #[test]
    fn a_writer_follows_another_writer_but_not_a_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let old = Db::open(&path).unwrap();
        let new = Db::open(&path).unwrap();
        records(&old, 3, 1);
        records(&new, 2, 10);
        records(&old, 1, 20);
        {
            let g = Db::lock(&old);
            let r = journal::verify(&g.conn).unwrap();
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            assert_eq!(r.records, 6);
        }
        // The newest two deleted behind the writer's back.
        Db::lock(&old)
            .conn
            .execute("DELETE FROM audit_log WHERE seq > 4", [])
            .unwrap();
        records(&old, 1, 30);
        let g = Db::lock(&old);
        let seqs: Vec<i64> = g
            .conn
            .prepare("SELECT seq FROM audit_log ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(seqs, [1, 2, 3, 4, 7], "chained to the tip it knew (6)");
        let r = journal::verify(&g.conn).unwrap();
        assert!(!r.problems.is_empty(), "the deletion shows");
    }

    #[test]
    fn retention_by_age_and_size_keeps_the_chain_verifiable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("r.db")).unwrap();
        let day = 86_400_000;
        records(&db, 100, 1_000);
        records(&db, 100, 10 * day);
        let now = 11 * day;
        // Not past what a central store has: records 1..=50 only.
        assert_eq!(Db::lock(&db).retain(Some(5), None, 50, now).unwrap(), 50);
        let pruned = Db::lock(&db).retain(Some(5), None, i64::MAX, now).unwrap();
        assert_eq!(pruned, 50);
        {
            let g = Db::lock(&db);
            let r = journal::verify(&g.conn).unwrap();
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            // 100 kept and the two retention records.
            assert_eq!((r.from, r.records), (100, 102));
        }
        // By size: far over a small limit, the oldest go until it fits.
        records(&db, 2_000, 10 * day + 1_000);
        let pruned = Db::lock(&db)
            .retain(None, Some(256 << 10), i64::MAX, now)
            .unwrap();
        assert!(pruned > 1_000, "{pruned}");
        let g = Db::lock(&db);
        let r = journal::verify(&g.conn).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let kinds: i64 = g
            .conn
            .query_row(
                "SELECT count(*) FROM audit_log WHERE kind = 'retention'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        // The first retention record was old enough to go with the rest; the second says so.
        assert_eq!(kinds, 1);
    }

    #[test]
    fn records_read_back_through_the_views() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("r.db")).unwrap();
        let open =
            serde_json::json!({"session": "s1", "started_ms": 5, "subject": "a", "groups": ["g"]})
                .to_string();
        let close = serde_json::json!({"session": "s1", "ended_ms": 9, "bytes_up": 3}).to_string();
        Db::lock(&db)
            .write(|tx, j| {
                for (kind, body) in [("session_open", &open), ("session_close", &close)] {
                    j.append(
                        tx,
                        &Entry {
                            at_ms: 5,
                            kind,
                            session: Some("s1"),
                            body,
                        },
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let g = Db::lock(&db);
        let row: (String, i64, i64, String) = g
            .conn
            .query_row(
                "SELECT subject, started_ms, ended_ms, groups FROM sessions WHERE id = 's1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(row, ("a".to_string(), 5, 9, "[\"g\"]".to_string()));
    }

    fn append_raw(conn: &mut Connection, entries: &[(&str, &str)]) {
        let mut t = journal::tip(conn).unwrap();
        let tx = conn.transaction().unwrap();
        for (kind, session) in entries {
            let body =
                serde_json::json!({"session": session, "started_ms": 1, "ended_ms": 2}).to_string();
            journal::append(
                &tx,
                &mut t,
                &Entry {
                    at_ms: 1,
                    kind,
                    session: Some(session),
                    body: &body,
                },
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn append_db(db: &mut Db, entries: &[(&str, &str)]) {
        db.write(|tx, j| {
            for (kind, session) in entries {
                let body = serde_json::json!({"session": session, "started_ms": 1, "ended_ms": 2})
                    .to_string();
                j.append(
                    tx,
                    &Entry {
                        at_ms: 1,
                        kind,
                        session: Some(session),
                        body: &body,
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
    }

    fn open_on_record(db: &SharedDb) -> Vec<String> {
        let g = Db::lock(db);
        let mut stmt = g
            .conn
            .prepare("SELECT id FROM sessions WHERE ended_ms IS NULL ORDER BY id")
            .unwrap();
        let ids = stmt.query_map([], |r| r.get(0)).unwrap();
        ids.collect::<Result<_, _>>().unwrap()
    }

    /// A database of the previous version (the journal only, no side table, no triggers) gets
    /// its open sessions from the journal at its first open; those are closed, and the chain
    /// still verifies.
    #[test]
    fn an_earlier_database_is_migrated_and_its_orphans_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            conn.execute_batch(journal::SCHEMA).unwrap();
            append_raw(
                &mut conn,
                &[
                    ("session_open", "a"),
                    ("session_open", "b"),
                    ("session_close", "a"),
                    ("session_open", "c"),
                    ("statement", "c"),
                ],
            );
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(open_on_record(&db), ["b", "c"]);
        assert_eq!(Db::lock(&db).close_orphans(10).unwrap(), 2);
        assert!(open_on_record(&db).is_empty());
        // Kept by the journal's own appends from here on.
        append_db(&mut Db::lock(&db), &[("session_open", "d")]);
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(Db::lock(&db).close_orphans(20).unwrap(), 1);
        let g = Db::lock(&db);
        let r = journal::verify(&g.conn).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.records, 9);
    }

    /// The side table is derived: a row the journal contradicts (its session closed on record,
    /// or its opening pruned) is not acted on, and a lost side table is rebuilt.
    #[test]
    fn the_side_table_is_checked_against_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let db = Db::open(&path).unwrap();
        {
            let mut g = Db::lock(&db);
            append_db(
                &mut g,
                &[
                    ("session_open", "a"),
                    ("session_open", "b"),
                    ("session_open", "c"),
                    ("session_close", "b"),
                ],
            );
            // Stale rows: b closed on record, and a session whose opening is not there.
            g.conn
                .execute_batch(
                    "INSERT OR REPLACE INTO open_sessions VALUES ('b', 2), ('ghost', 99);",
                )
                .unwrap();
            assert_eq!(g.close_orphans(5).unwrap(), 2);
            let left: i64 = g
                .conn
                .query_row("SELECT count(*) FROM open_sessions", [], |r| r.get(0))
                .unwrap();
            assert_eq!(left, 0);
            append_db(&mut g, &[("session_open", "d")]);
            g.conn.execute_batch("DROP TABLE open_sessions").unwrap();
        }
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(open_on_record(&db), ["d"]);
        assert_eq!(Db::lock(&db).close_orphans(6).unwrap(), 1);
        assert!(open_on_record(&db).is_empty());
    }
}
