//! The minimal session store: SQLite in WAL mode, one transaction per batch. The recording issue
//! builds the full audit store (hash chain, retention, central sink) on the same records.

use std::path::Path;

use rusqlite::{params, Connection};

use super::recorder::{Record, Store, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    protocol TEXT NOT NULL,
    workload TEXT NOT NULL,
    cgroup TEXT NOT NULL,
    pid INTEGER NOT NULL,
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    groups TEXT NOT NULL,
    target TEXT NOT NULL,
    original_dst TEXT NOT NULL,
    client_user TEXT,
    database TEXT,
    policy_version TEXT NOT NULL,
    bytes_up INTEGER,
    bytes_down INTEGER,
    ended_by TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS statements (
    session TEXT NOT NULL REFERENCES sessions(id),
    seq INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    params TEXT NOT NULL,
    class TEXT NOT NULL,
    tables TEXT NOT NULL,
    functions TEXT NOT NULL,
    decision TEXT NOT NULL,
    rule TEXT,
    duration_us INTEGER,
    rows INTEGER,
    error_code TEXT,
    error TEXT,
    PRIMARY KEY (session, seq)
);
";

pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore { conn })
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

impl Store for SqliteStore {
    fn write(&mut self, batch: &[Record]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for r in batch {
            match r {
                Record::Open(s) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO sessions (id, started_ms, protocol, workload, cgroup, pid, issuer, subject, groups, target, original_dst, client_user, database, policy_version)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    )?
                    .execute(params![
                        s.session,
                        s.started_ms,
                        s.protocol,
                        s.workload,
                        s.cgroup,
                        s.pid,
                        s.issuer,
                        s.subject,
                        json(&s.groups),
                        s.target,
                        s.original_dst,
                        s.client_user,
                        s.database,
                        s.policy_version
                    ])?;
                }
                Record::Statement(s) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO statements (session, seq, started_ms, kind, text, params, class, tables, functions, decision, rule, duration_us, rows, error_code, error)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                    )?
                    .execute(params![
                        s.session,
                        s.seq as i64,
                        s.started_ms,
                        s.kind,
                        s.text,
                        json(&s.params),
                        s.class,
                        json(&s.tables),
                        json(&s.functions),
                        s.decision,
                        s.rule,
                        s.duration_us.map(|d| d as i64),
                        s.rows.map(|r| r as i64),
                        s.error_code,
                        s.error
                    ])?;
                }
                Record::Close(c) => {
                    tx.prepare_cached(
                        "UPDATE sessions SET ended_ms = ?2, bytes_up = ?3, bytes_down = ?4, ended_by = ?5, error = ?6 WHERE id = ?1",
                    )?
                    .execute(params![
                        c.session,
                        c.ended_ms,
                        c.bytes_up as i64,
                        c.bytes_down as i64,
                        c.ended_by,
                        c.error
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::recorder::{SessionClose, SessionOpen, Statement};

    #[test]
    fn sessions_and_statements_land_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/record.db");
        let mut store = SqliteStore::open(&path).unwrap();
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
        };
        let stmt = Statement {
            session: "s1".into(),
            seq: 1,
            started_ms: 2,
            kind: "extended",
            text: "SELECT $1".into(),
            params: vec![Some("42".into()), None],
            class: "read".into(),
            tables: vec![],
            functions: vec![],
            decision: "allowed",
            rule: None,
            duration_us: Some(10),
            rows: Some(1),
            error_code: None,
            error: None,
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
            .write(&[
                Record::Open(open),
                Record::Statement(stmt),
                Record::Close(close),
            ])
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
}
