//! `agentgate sessions list | show | replay`: sessions and what happened in them, from the
//! journal.

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use super::AuditError;

/// Filters of `sessions list`; every one given must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Substring of the subject (or `issuer#subject`).
    pub identity: Option<String>,
    pub workload: Option<String>,
    pub target: Option<String>,
    pub protocol: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// `live` or `closed`.
    pub status: Option<String>,
    /// Substring of any statement of the session.
    pub statement: Option<String>,
    pub limit: usize,
}

/// A page of sessions, newest first: the `sessions` view written out over the journal so that
/// the page comes off `audit_log_started` in order (the planner would otherwise sort every
/// session to keep a few) and each closing is found by its session (`audit_log_close`). The
/// statement filter looks at a session's own statements and intents (`audit_log_session`);
/// an intent's text is its statement's.
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
  AND (?1 IS NULL OR json_extract(o.body, '$.subject') LIKE ?1
       OR (json_extract(o.body, '$.issuer') || '#' || json_extract(o.body, '$.subject')) LIKE ?1)
  AND (?2 IS NULL OR json_extract(o.body, '$.workload') = ?2)
  AND (?3 IS NULL OR json_extract(o.body, '$.target') = ?3)
  AND (?4 IS NULL OR json_extract(o.body, '$.protocol') = ?4)
  AND (?5 IS NULL OR coalesce(json_extract(c.body, '$.ended_ms'), 9223372036854775807) >= ?5)
  AND (?6 IS NULL OR json_extract(o.body, '$.started_ms') <= ?6)
  AND (?7 IS NULL OR (?7 = 'live') = (json_extract(c.body, '$.ended_ms') IS NULL))
  AND (?8 IS NULL OR EXISTS (SELECT 1 FROM audit_log st
                             WHERE st.session = o.session
                               AND st.kind IN ('statement', 'statement_intent')
                               AND json_extract(st.body, '$.text') LIKE ?8))
ORDER BY json_extract(o.body, '$.started_ms') DESC LIMIT ?9";

/// One session's statements: all, denied, privileged (not `read`, not denied). Through the
/// `statements` view with the session bound, which SQLite pushes into both of its halves.
pub(crate) const COUNTS: &str = "
SELECT count(*), coalesce(sum(decision = 'denied'), 0),
       coalesce(sum(class <> 'read' AND decision <> 'denied'), 0)
FROM statements WHERE session = ?1";

/// Sessions, newest first, with their counts.
pub fn list(conn: &Connection, f: &Filter) -> Result<Vec<Value>, AuditError> {
    let like = |s: &Option<String>| s.as_ref().map(|s| format!("%{s}%"));
    let status = match f.status.as_deref() {
        None | Some("live") | Some("closed") => f.status.clone(),
        Some(other) => {
            return Err(AuditError::Usage(format!(
                "--status `{other}`: live or closed"
            )))
        }
    };
    // A database no new gateway has opened yet lacks the index: the same query, sorted.
    let indexed: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'index' AND name = 'audit_log_started'",
        [],
        |r| r.get(0),
    )?;
    let sql = if indexed {
        LIST.to_string()
    } else {
        LIST.replace(" INDEXED BY audit_log_started", "")
    };
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        params![
            like(&f.identity),
            f.workload,
            f.target,
            f.protocol,
            f.since_ms,
            f.until_ms,
            status,
            like(&f.statement),
            f.limit.max(1) as i64
        ],
        |r| {
            Ok(json!({
                "session": r.get::<_, String>(0)?,
                "started_ms": r.get::<_, Option<i64>>(1)?,
                "ended_ms": r.get::<_, Option<i64>>(2)?,
                "protocol": r.get::<_, Option<String>>(3)?,
                "workload": r.get::<_, Option<String>>(4)?,
                "issuer": r.get::<_, Option<String>>(5)?,
                "subject": r.get::<_, Option<String>>(6)?,
                "target": r.get::<_, Option<String>>(7)?,
                "database": r.get::<_, Option<String>>(8)?,
                "pid": r.get::<_, Option<i64>>(9)?,
                "ended_by": r.get::<_, Option<String>>(10)?,
                "error": r.get::<_, Option<String>>(11)?,
                "status": if r.get::<_, Option<i64>>(2)?.is_some() { "closed" } else { "live" },
            }))
        },
    )?;
    let mut page: Vec<Value> = rows.collect::<Result<_, _>>()?;
    let mut counts = conn.prepare(COUNTS)?;
    for s in &mut page {
        let id = s["session"].as_str().unwrap_or_default().to_string();
        let (all, denied, privileged): (i64, i64, i64) =
            counts.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        s["statements"] = json!(all);
        s["denied"] = json!(denied);
        s["privileged"] = json!(privileged);
    }
    Ok(page)
}

pub(crate) const SHOW: &str = "SELECT kind, body FROM audit_log WHERE session = ?1 AND kind IN ('session_open', 'session_close') ORDER BY seq";
pub(crate) const REPLAY: &str =
    "SELECT seq, at_ms, kind, body FROM audit_log WHERE session = ?1 ORDER BY seq";

/// One session's open and close records, merged.
pub fn show(conn: &Connection, id: &str) -> Result<Value, AuditError> {
    let mut stmt = conn.prepare(SHOW)?;
    let mut out = serde_json::Map::new();
    let rows = stmt.query_map([id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (_, body) = row?;
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&body) {
            out.extend(m);
        }
    }
    if out.is_empty() {
        return Err(AuditError::Usage(format!("no session `{id}` on record")));
    }
    let counts: (i64, i64) = conn.query_row(COUNTS, [id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    out.insert("statements".into(), json!(counts.0));
    out.insert("denied".into(), json!(counts.1));
    Ok(Value::Object(out))
}

/// Everything on record for a session, in order: opening, each statement (with its parameters,
/// outcome, timing and the masked rows kept), approvals, closing. A privileged statement whose
/// outcome never came (the gateway died) shows as its intent.
pub fn replay(conn: &Connection, id: &str) -> Result<Vec<Value>, AuditError> {
    let mut stmt = conn.prepare(REPLAY)?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut events: Vec<Value> = Vec::new();
    let mut completed = std::collections::HashSet::new();
    let mut all = Vec::new();
    for row in rows {
        let (seq, at_ms, kind, body) = row?;
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        if kind == "statement" {
            completed.insert(body["seq"].as_i64());
        }
        all.push((seq, at_ms, kind, body));
    }
    if all.is_empty() {
        return Err(AuditError::Usage(format!("no session `{id}` on record")));
    }
    for (seq, at_ms, kind, body) in all {
        // An intent is shown only when its outcome is missing.
        if kind == "statement_intent" && completed.contains(&body["seq"].as_i64()) {
            continue;
        }
        events.push(json!({"record": seq, "at_ms": at_ms, "kind": kind, "body": body}));
    }
    Ok(events)
}
