//! The recorder's store: each record becomes one entry of the hash-chained audit journal in
//! the record database, one transaction per batch.

use super::{
    db::{Db, SharedDb},
    journal::Entry,
    recorder::{Durability, Record, Store, StoreError},
};

pub struct SqliteStore {
    db: SharedDb,
}

impl SqliteStore {
    pub fn new(db: SharedDb) -> SqliteStore {
        SqliteStore { db }
    }
}

/// The journal kind, session, time and JSON body of a record.
pub fn entry_parts(r: &Record) -> (&'static str, Option<&str>, i64, String) {
    match r {
        Record::Open(s) => ("session_open", Some(&s.session), s.started_ms, json(s)),
        Record::Statement(s) => ("statement", Some(&s.session), s.started_ms, json(s)),
        Record::Intent(s) => ("statement_intent", Some(&s.session), s.started_ms, json(s)),
        Record::Close(c) => ("session_close", Some(&c.session), c.ended_ms, json(c)),
        Record::Event {
            kind,
            at_ms,
            session,
            body,
        } => (kind, session.as_deref(), *at_ms, body.to_string()),
    }
}

/// A body that cannot be serialized is recorded as such rather than dropped.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|e| serde_json::json!({"unserializable": e.to_string()}).to_string())
}

impl Store for SqliteStore {
    fn write(&mut self, batch: &[Record], durability: Durability) -> Result<(), StoreError> {
        let mut db = Db::lock(&self.db);
        db.write_with(durability == Durability::Synced, |tx, journal| {
            for r in batch {
                let (kind, session, at_ms, body) = entry_parts(r);
                journal.append(
                    tx,
                    &Entry {
                        at_ms,
                        kind,
                        session,
                        body: &body,
                    },
                )?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::record::recorder::{SessionClose, SessionOpen, Statement};

    #[test]
    fn sessions_and_statements_land_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/record.db");
        let mut store = SqliteStore::new(Db::open(&path).unwrap());
        let open = SessionOpen {
            session: "s1".into(),
            started_ms: 1,
            protocol: "postgres",
            workload: "w".into(),
            cgroup: "/agents/a".into(),
            pid: 7,
            issuer: "i".into(),
            subject: "agent-1".into(),
            groups: vec!["g".into()],
            target: "db".into(),
            original_dst: "127.0.0.1:5432".into(),
            client_user: Some("u".into()),
            database: Some("d".into()),
            policy_version: "v".into(),
            token_expires_ms: 100,
        };
        let stmt = Statement {
            session: "s1".into(),
            seq: 1,
            started_ms: 2,
            kind: "extended",
            text: "SELECT $1".into(),
            params: vec![Some("42".into()), None],
            class: "read".into(),
            privileged: false,
            tables: vec![],
            functions: vec![],
            decision: "allowed",
            rule: None,
            duration_us: Some(10),
            rows: Some(1),
            error_code: None,
            error: None,
            results: Some(vec![vec![Some("42".into())]]),
            results_cut: false,
            exit_status: None,
            output: None,
        };
        let close = SessionClose {
            session: "s1".into(),
            ended_ms: 3,
            bytes_up: 10,
            bytes_down: 20,
            ended_by: None,
            error: None,
        };
        store
            .write(
                &[
                    Record::Open(open),
                    Record::Statement(stmt),
                    Record::Close(close),
                ],
                Durability::Synced,
            )
            .unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let (subject, ended, down): (String, i64, i64) = conn
            .query_row(
                "SELECT subject, ended_ms, bytes_down FROM sessions WHERE id='s1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((subject.as_str(), ended, down), ("agent-1", 3, 20));
        let params: String = conn
            .query_row(
                "SELECT params FROM statements WHERE session='s1' AND seq=1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(params, r#"["42",null]"#);
    }

    /// What the writer spends per record (run by hand, with `--ignored --nocapture`, under
    /// `perf record` for the split): pgbench-like statement records in batches of 32.
    #[test]
    #[ignore]
    fn write_cost() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::new(Db::open(&dir.path().join("r.db")).unwrap());
        let stmt = |seq: u64| Statement {
            session: "019a-session-id-0001".into(),
            seq,
            started_ms: 1_765_000_000_000 + seq as i64,
            kind: "simple",
            text: "SELECT abalance FROM pgbench_accounts WHERE aid = 41234;".into(),
            params: vec![],
            class: "read".into(),
            privileged: false,
            tables: vec!["public.pgbench_accounts".into()],
            functions: vec![],
            decision: "allowed",
            rule: None,
            duration_us: Some(180),
            rows: Some(1),
            error_code: None,
            error: None,
            results: Some(vec![vec![Some("0".into())]]),
            results_cut: false,
            exit_status: None,
            output: None,
        };
        for durability in [Durability::Written, Durability::Synced] {
            let n = if durability == Durability::Written {
                200_000
            } else {
                20_000
            };
            let started = std::time::Instant::now();
            for b in 0..n / 32 {
                let batch: Vec<Record> = (0..32)
                    .map(|i| Record::Statement(stmt(b * 32 + i)))
                    .collect();
                store.write(&batch, durability).unwrap();
            }
            println!(
                "{durability:?}: {:.2} µs per record",
                started.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
        let started = std::time::Instant::now();
        let mut bytes = 0;
        for i in 0..200_000 {
            bytes += entry_parts(&Record::Statement(stmt(i))).3.len();
        }
        println!(
            "JSON alone: {:.2} µs per record ({} bytes)",
            started.elapsed().as_secs_f64() * 1e6 / 200_000.0,
            bytes / 200_000
        );
    }
}
