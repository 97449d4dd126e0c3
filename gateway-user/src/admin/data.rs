//! What the console's pages show from the record database: sessions (list, one, its timeline,
//! its terminal recording, its records with their hashes), agents, the chain's state. Each
//! request reads through its own read-only connection (the file is WAL: readers do not hold
//! up the recorder) and every query is bounded: a page of sessions comes off the
//! `audit_log_started` index newest first and stops at its page, one session's records come
//! off `audit_log_session`; see `record/plans.rs`.

use rusqlite::{params, Connection};
use serde_json::{json, Map, Value};

use crate::audit::{
    self,
    sessions::{SessionRow, COUNTS},
    AuditError,
};

/// The filters of `GET /v1/sessions`; every one given must match.
#[derive(Debug, Default, Clone)]
pub struct SessionFilter {
    /// Substring of the subject or of `issuer#subject`.
    pub identity: Option<String>,
    pub workload: Option<String>,
    pub target: Option<String>,
    pub protocol: Option<String>,
    /// Sessions still going on at or after this time.
    pub since_ms: Option<i64>,
    /// Sessions started at or before this time.
    pub until_ms: Option<i64>,
    /// Sessions started strictly before this time: the next page after one whose last session
    /// started then.
    pub before_ms: Option<i64>,
    /// `live` or `closed`.
    pub status: Option<String>,
    /// Only sessions with a denied statement, command or request.
    pub denied: bool,
    /// Only sessions with an approval request.
    pub approvals: bool,
    pub limit: usize,
}

/// `audit::sessions::LIST` with the console's filters: `before` pages, and a session's
/// denials and approvals are looked for among its own records (`audit_log_session`; named for
/// the approvals, or the planner would read every approval record once per session).
pub(crate) const LIST: &str = "
SELECT o.session,
       json_extract(o.body, '$.started_ms'), json_extract(c.body, '$.ended_ms'),
       json_extract(o.body, '$.protocol'), json_extract(o.body, '$.workload'),
       json_extract(o.body, '$.issuer'), json_extract(o.body, '$.subject'),
       json_extract(o.body, '$.target'), json_extract(o.body, '$.database'),
       json_extract(o.body, '$.pid'), json_extract(c.body, '$.ended_by'),
       json_extract(c.body, '$.error')
FROM audit_log o INDEXED BY audit_log_started
LEFT JOIN audit_log c ON c.kind = 'session_close' AND c.session = o.session
WHERE o.kind = 'session_open'
  AND (?1 IS NULL OR json_extract(o.body, '$.subject') LIKE ?1 ESCAPE '\\'
       OR (json_extract(o.body, '$.issuer') || '#' || json_extract(o.body, '$.subject'))
          LIKE ?1 ESCAPE '\\')
  AND (?2 IS NULL OR json_extract(o.body, '$.workload') = ?2)
  AND (?3 IS NULL OR json_extract(o.body, '$.target') = ?3)
  AND (?4 IS NULL OR json_extract(o.body, '$.protocol') = ?4)
  AND (?5 IS NULL OR coalesce(json_extract(c.body, '$.ended_ms'), 9223372036854775807) >= ?5)
  AND (?6 IS NULL OR json_extract(o.body, '$.started_ms') <= ?6)
  AND (?7 IS NULL OR (?7 = 'live') = (json_extract(c.body, '$.ended_ms') IS NULL))
  AND (?8 IS NULL OR json_extract(o.body, '$.started_ms') < ?8)
  AND (?9 = 0 OR EXISTS (SELECT 1 FROM audit_log d
                         WHERE d.session = o.session
                           AND (d.kind IN ('ssh_refused', 'sftp_refused')
                                OR (d.kind IN ('statement', 'statement_intent')
                                    AND json_extract(d.body, '$.decision') = 'denied'))))
  AND (?10 = 0 OR EXISTS (SELECT 1 FROM audit_log a INDEXED BY audit_log_session
                          WHERE a.session = o.session AND a.kind = 'approval'))
ORDER BY json_extract(o.body, '$.started_ms') DESC LIMIT ?11";

/// A page of sessions, newest first, as `agentgate sessions list --json` gives them, and
/// whether more match.
pub fn sessions(conn: &Connection, f: &SessionFilter) -> Result<(Vec<Value>, bool), AuditError> {
    let like = |s: &Option<String>| {
        s.as_ref().map(|s| {
            // LIKE's wildcards in the text are the text's own.
            let s = s
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{s}%")
        })
    };
    let mut stmt = conn.prepare(LIST)?;
    let rows = stmt.query_map(
        params![
            like(&f.identity),
            f.workload,
            f.target,
            f.protocol,
            f.since_ms,
            f.until_ms,
            f.status,
            f.before_ms,
            f.denied,
            f.approvals,
            (f.limit + 1) as i64
        ],
        SessionRow::from_page_row,
    )?;
    let mut page: Vec<SessionRow> = rows.collect::<Result<_, _>>()?;
    let truncated = page.len() > f.limit;
    page.truncate(f.limit);
    let mut counts = conn.prepare(COUNTS)?;
    for s in &mut page {
        (s.statements, s.denied, s.privileged) =
            counts.query_row([&s.session], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    }
    Ok((page.iter().map(SessionRow::to_json).collect(), truncated))
}

/// One session's records from record `after` on, in order, at most `limit`.
pub(crate) const PAGE: &str =
    "SELECT seq, at_ms, kind, body FROM audit_log WHERE session = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";
/// Whether an intent's outcome is on record (through `audit_log_outcome`).
pub(crate) const OUTCOME: &str = "SELECT count(*) FROM audit_log WHERE kind = 'statement' AND session = ?1 AND json_extract(body, '$.seq') = ?2";

/// What the agent did and saw in a session, in order, from record `after` on: each record's
/// body with `at_ms`, `record` (its number in the journal), `record_kind` (the journal's kind)
/// and `kind`, the console's name for it: `start`, `statement` (SQL), `command` (SSH), `request`
/// (HTTP, Kubernetes), `denial` (an SSH or SFTP refusal), `approval`, `output` (a terminal
/// recording starts: fetch it from `/cast`), `end`, or the journal's kind for any other. A
/// body's own `kind` (a statement's `simple`/`extended`…) is `statement_kind`. An intent
/// whose outcome is on record is left out (the outcome says it all); the recordings' chunks
/// are not listed, only where each channel starts.
pub fn timeline(
    conn: &Connection,
    id: &str,
    after: i64,
    limit: usize,
) -> Result<Value, AuditError> {
    let session = audit::sessions::show(conn, id)?;
    let action = match session["protocol"].as_str() {
        Some("ssh") => "command",
        Some("http") => "request",
        _ => "statement",
    };
    let mut stmt = conn.prepare(PAGE)?;
    let rows = stmt
        .query_map(params![id, after, (limit + 1) as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let truncated = rows.len() > limit;
    let mut outcome = conn.prepare(OUTCOME)?;
    let mut events = Vec::new();
    let mut last = after;
    for (seq, at_ms, kind, body) in rows.into_iter().take(limit) {
        last = seq;
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        let console_kind = match kind.as_str() {
            "session_open" => "start",
            "session_close" => "end",
            "statement" => action,
            "statement_intent" => {
                let done: i64 =
                    outcome.query_row(params![id, body["seq"].as_i64()], |r| r.get(0))?;
                if done > 0 {
                    continue;
                }
                action
            }
            "ssh_refused" | "sftp_refused" => "denial",
            "approval" => "approval",
            "ssh_cast" | "kube_cast" => {
                if body["part"] != 0 {
                    continue;
                }
                "output"
            }
            other => other,
        };
        let mut e = Map::new();
        match body {
            Value::Object(m) => {
                for (k, v) in m {
                    // A recording's chunk is fetched from `/cast`, not repeated here.
                    if console_kind == "output" && k == "data" {
                        continue;
                    }
                    let k = if k == "kind" {
                        "statement_kind".into()
                    } else {
                        k
                    };
                    e.insert(k, v);
                }
            }
            other => {
                e.insert("body".into(), other);
            }
        }
        e.insert("at_ms".into(), json!(at_ms));
        e.insert("record".into(), json!(seq));
        e.insert("record_kind".into(), json!(kind));
        e.insert("kind".into(), json!(console_kind));
        events.push(Value::Object(e));
    }
    Ok(json!({
        "session": session,
        "events": events,
        "truncated": truncated,
        // The next page: `?after=` this.
        "next_after": truncated.then_some(last),
    }))
}

/// The session's records with the hashes that chain them, at most `limit`.
pub(crate) const EXPORT: &str = "SELECT seq, at_ms, kind, session, body, prev, hash FROM audit_log WHERE session = ?1 ORDER BY seq LIMIT ?2";

/// Records of one session more than this are not exported through the API (`agentgate audit
/// export` on the node has no bound).
pub const EXPORT_MAX: usize = 100_000;

pub fn export(conn: &Connection, id: &str) -> Result<Value, AuditError> {
    let mut stmt = conn.prepare(EXPORT)?;
    let rows = stmt
        .query_map(params![id, (EXPORT_MAX + 1) as i64], |r| {
            let body: String = r.get(4)?;
            Ok(json!({
                "seq": r.get::<_, i64>(0)?,
                "at_ms": r.get::<_, i64>(1)?,
                "kind": r.get::<_, String>(2)?,
                "session": r.get::<_, Option<String>>(3)?,
                "record": serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body)),
                "prev": r.get::<_, String>(5)?,
                "hash": r.get::<_, String>(6)?,
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Err(AuditError::Usage(format!("no session `{id}` on record")));
    }
    let truncated = rows.len() > EXPORT_MAX;
    let records: Vec<Value> = rows.into_iter().take(EXPORT_MAX).collect();
    Ok(json!({"session": id, "records": records, "truncated": truncated}))
}

/// The session's terminal recording of `channel` (its first if none) as an asciicast v2 file;
/// `None` when it has none.
pub fn cast(
    conn: &Connection,
    id: &str,
    channel: Option<u64>,
) -> Result<Option<Vec<u8>>, AuditError> {
    let casts = match audit::cast::casts(conn, id, channel) {
        Ok(c) => c,
        Err(AuditError::Usage(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(first) = casts.first() else {
        return Ok(None);
    };
    let mut out = Vec::new();
    audit::cast::write_asciicast(first, &mut out)
        .map_err(|e| AuditError::Usage(format!("recording not written: {e}")))?;
    Ok(Some(out))
}

/// The chain's start when older records were pruned: the last pruned record.
pub fn anchor(conn: &Connection) -> Result<Value, AuditError> {
    use rusqlite::OptionalExtension;
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit_anchor'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Value::Null);
    }
    Ok(conn
        .query_row(
            "SELECT seq, hash, pruned_ms FROM audit_anchor WHERE id = 1",
            [],
            |r| {
                Ok(
                    json!({"seq": r.get::<_, i64>(0)?, "hash": r.get::<_, String>(1)?,
                          "pruned_ms": r.get::<_, i64>(2)?}),
                )
            },
        )
        .optional()?
        .unwrap_or(Value::Null))
}

/// The journal's last record: its number, time and hash (one look-up by primary key).
pub fn tip(conn: &Connection) -> Result<Value, AuditError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT seq, at_ms, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(
                    json!({"seq": r.get::<_, i64>(0)?, "at_ms": r.get::<_, i64>(1)?,
                          "hash": r.get::<_, String>(2)?}),
                )
            },
        )
        .optional()?
        .unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_in_the_identity_are_literal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let db = crate::record::Db::open(&path).unwrap();
        for (i, subject) in ["a_b", "axb", "a%"].iter().enumerate() {
            let s = format!("s{i}");
            let body = json!({"session": s, "started_ms": i, "subject": subject}).to_string();
            crate::record::Db::lock(&db)
                .write(|tx, j| {
                    j.append(
                        tx,
                        &crate::record::Entry {
                            at_ms: 1,
                            kind: "session_open",
                            session: Some(&s),
                            body: &body,
                        },
                    )
                })
                .unwrap();
        }
        let conn = audit::open(&path).unwrap();
        let f = |identity: &str| SessionFilter {
            identity: Some(identity.into()),
            limit: 10,
            ..Default::default()
        };
        let (page, truncated) = sessions(&conn, &f("a_")).unwrap();
        assert_eq!(page.len(), 1, "{page:?}");
        assert_eq!(page[0]["subject"], "a_b");
        assert!(!truncated);
        let (page, _) = sessions(&conn, &f("%")).unwrap();
        assert_eq!(page.len(), 1);
        let (page, truncated) = sessions(
            &conn,
            &SessionFilter {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((page.len(), truncated), (2, true));
        assert_eq!(page[0]["session"], "s2");
    }
}
