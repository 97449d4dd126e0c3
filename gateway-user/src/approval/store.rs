//! Approval requests in the record database: one row per request with its current state, and
//! every change as a record of the audit journal (kind `approval`, the `approval_events` view),
//! both in one transaction before anyone is told about it, so a decision that was announced is
//! a decision that was kept.

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};

use super::model::{Request, State};
use crate::record::{Db, SharedDb};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("approval store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("approval store: request {0} is unreadable: {1}")]
    Corrupt(String, serde_json::Error),
    #[error("approval store: {0}")]
    Db(#[from] crate::record::DbError),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    retry_key TEXT NOT NULL,
    request TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_requests_state ON approval_requests(state);
CREATE INDEX IF NOT EXISTS approval_requests_retry ON approval_requests(retry_key);
";

/// One change: the request's new state and the event that made it.
pub struct Event<'a> {
    pub at_ms: i64,
    pub event: &'a str,
    /// `issuer#subject` of the requester or approver, `local#root`, or `gateway`.
    pub actor: String,
    pub detail: Value,
}

pub struct Store {
    db: SharedDb,
}

/// The journal record of one approval event.
fn record(
    tx: &rusqlite::Transaction<'_>,
    journal: &mut crate::record::Appender,
    id: &str,
    session: &str,
    e: &Event<'_>,
) -> rusqlite::Result<i64> {
    let body =
        json!({"request": id, "event": e.event, "actor": e.actor, "detail": e.detail}).to_string();
    journal.append(
        tx,
        &crate::record::Entry {
            at_ms: e.at_ms,
            kind: "approval",
            session: Some(session),
            body: &body,
        },
    )
}

impl Store {
    pub fn new(db: SharedDb) -> Result<Store, StoreError> {
        Db::lock(&db).conn.execute_batch(SCHEMA)?;
        Ok(Store { db })
    }

    pub fn save(&mut self, r: &Request, e: &Event<'_>) -> Result<(), StoreError> {
        let json = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(r.id.clone(), e))?;
        Db::lock(&self.db).write(|tx, journal| {
            tx.execute(
                "INSERT INTO approval_requests (id, state, created_ms, expires_ms, retry_key, request)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, request = excluded.request",
                params![
                    r.id,
                    r.state.as_str(),
                    r.created_ms,
                    r.expires_ms,
                    r.retry_key,
                    json
                ],
            )?;
            record(tx, journal, &r.id, &r.session, e)
        })?;
        Ok(())
    }

    /// An event that changes nothing about the request (the statement was forwarded).
    pub fn event(&mut self, id: &str, session: &str, e: &Event<'_>) -> Result<(), StoreError> {
        Db::lock(&self.db).write(|tx, journal| record(tx, journal, id, session, e))?;
        Ok(())
    }

    /// Pending requests made by one identity.
    /// Every request still pending (the state index answers it).
    pub fn pending(&self) -> Result<usize, StoreError> {
        let n: i64 = Db::lock(&self.db).conn.query_row(
            "SELECT count(*) FROM approval_requests WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    pub fn pending_of(&self, issuer: &str, subject: &str) -> Result<usize, StoreError> {
        let n: i64 = Db::lock(&self.db).conn.query_row(
            "SELECT count(*) FROM approval_requests WHERE state = 'pending'
             AND json_extract(request, '$.issuer') = ?1 AND json_extract(request, '$.subject') = ?2",
            [issuer, subject],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    pub fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
        let row: Option<(String, String)> = Db::lock(&self.db)
            .conn
            .query_row(
                "SELECT retry_key, request FROM approval_requests WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(key, json)| parse(id, key, &json)).transpose()
    }

    /// Newest first; `None`: every state. With `groups`, only the requests one of them may
    /// decide (filtered before the limit, so others' requests cannot push them out).
    pub fn list(
        &self,
        state: Option<State>,
        groups: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let groups = groups.map(|g| serde_json::Value::from(g.to_vec()).to_string());
        let db = Db::lock(&self.db);
        let mut stmt = db.conn.prepare_cached(
            "SELECT id, retry_key, request FROM approval_requests
             WHERE (?1 IS NULL OR state = ?1)
               AND (?2 IS NULL OR EXISTS (
                    SELECT 1 FROM json_each(request, '$.approvers') a
                    WHERE a.value IN (SELECT value FROM json_each(?2))))
             ORDER BY created_ms DESC, id LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![state.map(State::as_str), groups, limit as i64],
            |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, String>(2)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, key, json) = row?;
            out.push(parse(&id, key, &json)?);
        }
        Ok(out)
    }

    /// Requests for the same statement from the same identity, newest first.
    pub fn by_retry_key(&self, key: &str) -> Result<Vec<Request>, StoreError> {
        let db = Db::lock(&self.db);
        let mut stmt = db.conn.prepare_cached(
            "SELECT id, request FROM approval_requests WHERE retry_key = ?1 ORDER BY created_ms DESC LIMIT 16",
        )?;
        let rows = stmt.query_map([key], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row?;
            out.push(parse(&id, key.to_string(), &json)?);
        }
        Ok(out)
    }
}

fn parse(id: &str, retry_key: String, json: &str) -> Result<Request, StoreError> {
    let mut r: Request =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(id.to_string(), e))?;
    r.retry_key = retry_key;
    Ok(r)
}
