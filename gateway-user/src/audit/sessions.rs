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
    /// The node (the central store only: a node's own record has one).
    pub node: Option<String>,
    pub limit: usize,
}

impl Filter {
    /// `--status`, checked: `live`, `closed` or none.
    pub fn status(&self) -> Result<Option<&str>, AuditError> {
        match self.status.as_deref() {
            None | Some("live") | Some("closed") => Ok(self.status.as_deref()),
            Some(other) => Err(AuditError::Usage(format!(
                "--status `{other}`: live or closed"
            ))),
        }
    }

    /// A substring filter as a LIKE pattern.
    pub fn like(s: &Option<String>) -> Option<String> {
        s.as_ref().map(|s| format!("%{s}%"))
    }
}

/// One session as both stores give it: its opening and closing, and its statements counted
/// (outcomes, and intents whose outcome never came). [`SessionRow::to_json`] is what `sessions
/// list` shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionRow {
    /// The node it ran on (the central store only).
    pub node: Option<String>,
    pub session: String,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub protocol: Option<String>,
    pub workload: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub target: Option<String>,
    pub database: Option<String>,
    pub pid: Option<i64>,
    pub ended_by: Option<String>,
    pub error: Option<String>,
    pub statements: i64,
    pub denied: i64,
    pub privileged: i64,
}

impl SessionRow {
    /// A row of a page query (the node's `LIST` and the console's): its first twelve columns are
    /// session, started, ended, protocol, workload, issuer, subject, target, database, pid,
    /// ended_by and error; the counts are filled in afterwards.
    pub fn from_page_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
        Ok(SessionRow {
            node: None,
            session: r.get(0)?,
            started_ms: r.get(1)?,
            ended_ms: r.get(2)?,
            protocol: r.get(3)?,
            workload: r.get(4)?,
            issuer: r.get(5)?,
            subject: r.get(6)?,
            target: r.get(7)?,
            database: r.get(8)?,
            pid: r.get(9)?,
            ended_by: r.get(10)?,
            error: r.get(11)?,
            ..Default::default()
        })
    }

    /// Closed once its closing is on record, else live.
    pub fn status(&self) -> &'static str {
        if self.ended_ms.is_some() {
            "closed"
        } else {
            "live"
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "session": self.session,
            "started_ms": self.started_ms,
            "ended_ms": self.ended_ms,
            "protocol": self.protocol,
            "workload": self.workload,
            "issuer": self.issuer,
            "subject": self.subject,
            "target": self.target,
            "database": self.database,
            "pid": self.pid,
            "ended_by": self.ended_by,
            "error": self.error,
            "status": self.status(),
            "statements": self.statements,
            "denied": self.denied,
            "privileged": self.privileged,
        });
        if let Some(node) = &self.node {
            v["node"] = json!(node);
        }
        v
    }
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

/// One session's statements: all, denied, privileged (the gate's judgement, not denied).
/// Straight from the journal rather than through the `statements` view: a database that no
/// gateway of this version has opened yet (read-only commands never migrate) has the older view.
/// Both halves look the session up by its index.
pub(crate) const COUNTS: &str = "
SELECT count(*), coalesce(sum(decision = 'denied'), 0),
       coalesce(sum(privileged AND decision <> 'denied'), 0)
FROM (SELECT json_extract(body, '$.decision') AS decision,
             coalesce(json_extract(body, '$.privileged'),
                      json_extract(body, '$.class') <> 'read') AS privileged
      FROM audit_log WHERE session = ?1 AND kind = 'statement'
      UNION ALL
      SELECT json_extract(i.body, '$.decision'),
             coalesce(json_extract(i.body, '$.privileged'),
                      json_extract(i.body, '$.class') <> 'read')
      FROM audit_log i
      WHERE i.session = ?1 AND i.kind = 'statement_intent'
        AND NOT EXISTS (SELECT 1 FROM audit_log o
                        WHERE o.kind = 'statement' AND o.session = i.session
                          AND json_extract(o.body, '$.seq') = json_extract(i.body, '$.seq')))";

/// Sessions, newest first, with their counts.
pub fn list(conn: &Connection, f: &Filter) -> Result<Vec<Value>, AuditError> {
    let status = f.status()?;
    if f.node.is_some() {
        return Err(AuditError::Usage(
            "--node: a node's own record holds that node only; give --central to choose among the nodes of the central store".into(),
        ));
    }
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
            Filter::like(&f.identity),
            f.workload,
            f.target,
            f.protocol,
            f.since_ms,
            f.until_ms,
            status,
            Filter::like(&f.statement),
            f.limit.max(1) as i64
        ],
        SessionRow::from_page_row,
    )?;
    let mut page: Vec<SessionRow> = rows.collect::<Result<_, _>>()?;
    let mut counts = conn.prepare(COUNTS)?;
    for s in &mut page {
        (s.statements, s.denied, s.privileged) =
            counts.query_row([&s.session], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    }
    Ok(page.iter().map(SessionRow::to_json).collect())
}

pub(crate) const SHOW: &str = "SELECT kind, body FROM audit_log WHERE session = ?1 AND kind IN ('session_open', 'session_close') ORDER BY seq";
pub(crate) const REPLAY: &str =
    "SELECT seq, at_ms, kind, body FROM audit_log WHERE session = ?1 ORDER BY seq";

/// One session's open and close records, merged.
pub fn show(conn: &Connection, id: &str) -> Result<Value, AuditError> {
    let mut stmt = conn.prepare(SHOW)?;
    let bodies = stmt
        .query_map([id], |r| r.get::<_, String>(1))?
        .collect::<Result<Vec<_>, _>>()?;
    let counts: (i64, i64) = conn.query_row(COUNTS, [id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    merged(id, &bodies, counts)
}

/// What `sessions show` shows: the bodies of a session's opening and closing merged, with its
/// statements and denials counted; `bodies` in journal order.
pub fn merged(id: &str, bodies: &[String], (all, denied): (i64, i64)) -> Result<Value, AuditError> {
    let mut out = serde_json::Map::new();
    for body in bodies {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(body) {
            out.extend(m);
        }
    }
    if out.is_empty() {
        return Err(AuditError::Usage(format!("no session `{id}` on record")));
    }
    out.insert("statements".into(), json!(all));
    out.insert("denied".into(), json!(denied));
    Ok(Value::Object(out))
}

/// Everything on record for a session, in order: opening, each statement (with its parameters,
/// outcome, timing and the masked rows kept), approvals, closing. A privileged statement whose
/// outcome never came (the gateway died) shows as its intent.
pub fn replay(conn: &Connection, id: &str) -> Result<Vec<Value>, AuditError> {
    let mut stmt = conn.prepare(REPLAY)?;
    let rows = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    timeline(id, rows)
}

/// The timeline of a session's records `(seq, at_ms, kind, body)`, in journal order: each as
/// it is, but an intent only when its outcome is missing.
pub fn timeline(
    id: &str,
    records: Vec<(i64, i64, String, String)>,
) -> Result<Vec<Value>, AuditError> {
    if records.is_empty() {
        return Err(AuditError::Usage(format!("no session `{id}` on record")));
    }
    let mut completed = std::collections::HashSet::new();
    let mut all = Vec::new();
    for (seq, at_ms, kind, body) in records {
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        if kind == "statement" {
            completed.insert(body["seq"].as_i64());
        }
        all.push((seq, at_ms, kind, body));
    }
    let mut events: Vec<Value> = Vec::new();
    for (seq, at_ms, kind, body) in all {
        // An intent is shown only when its outcome is missing.
        if kind == "statement_intent" && completed.contains(&body["seq"].as_i64()) {
            continue;
        }
        events.push(json!({"record": seq, "at_ms": at_ms, "kind": kind, "body": body}));
    }
    Ok(events)
}
