//! `agentgate agents`: the sprawl view. Every workload and identity the gateway has seen, when,
//! until when its token is good, what it reached, what it changed, and whether it is still
//! around: `revoked` (an operator cut it off), `active` (a live session), `expired` (its latest
//! token has expired: it cannot come back without a new one), else `idle` (it could).

use rusqlite::Connection;
use serde_json::{json, Value};

use super::AuditError;
use crate::proxy::revocations;

/// One pass over the sessions and one over the statements, counted per session and then per
/// agent (never, per agent, over every session). Intents count when their outcome never came
/// (one look-up in `audit_log_outcome` each).
pub(crate) const LIST: &str = "
WITH outcomes AS (
    SELECT session,
           sum(json_extract(body, '$.class') <> 'read'
               AND json_extract(body, '$.decision') <> 'denied') AS privileged,
           sum(json_extract(body, '$.decision') = 'denied') AS denied
    FROM audit_log
    WHERE kind = 'statement'
    GROUP BY session),
unanswered AS (
    SELECT i.session,
           sum(json_extract(i.body, '$.class') <> 'read'
               AND json_extract(i.body, '$.decision') <> 'denied') AS privileged,
           sum(json_extract(i.body, '$.decision') = 'denied') AS denied
    FROM audit_log i
    WHERE i.kind = 'statement_intent'
      AND NOT EXISTS (SELECT 1 FROM audit_log o
                      WHERE o.kind = 'statement' AND o.session = i.session
                        AND json_extract(o.body, '$.seq') = json_extract(i.body, '$.seq'))
    GROUP BY i.session)
SELECT s.workload, s.issuer, s.subject,
       min(s.started_ms), max(coalesce(s.ended_ms, ?1)), max(s.token_expires_ms),
       sum(s.ended_ms IS NULL), count(*),
       group_concat(DISTINCT s.target),
       coalesce(sum(p.privileged), 0) + coalesce(sum(u.privileged), 0),
       coalesce(sum(p.denied), 0) + coalesce(sum(u.denied), 0)
FROM sessions s
LEFT JOIN outcomes p ON p.session = s.id
LEFT JOIN unanswered u ON u.session = s.id
GROUP BY s.workload, s.issuer, s.subject
ORDER BY max(coalesce(s.ended_ms, ?1)) DESC";

pub fn list(conn: &Connection, now_ms: i64) -> Result<Vec<Value>, AuditError> {
    let revocations = revocations::read_all(conn)?;
    let mut stmt = conn.prepare(LIST)?;
    let rows = stmt.query_map([now_ms], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, i64>(9)?,
            r.get::<_, i64>(10)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            workload,
            issuer,
            subject,
            first,
            last,
            expires,
            live,
            sessions,
            targets,
            priv_,
            denied,
        ) = row?;
        let revoked = revocations
            .iter()
            .find(|r| r.covers(&issuer, &subject, &workload));
        let status = if revoked.is_some() {
            "revoked"
        } else if live > 0 {
            "active"
        } else if expires.is_some_and(|e| e <= now_ms) {
            "expired"
        } else {
            "idle"
        };
        let mut targets: Vec<&str> = targets
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
            .collect();
        targets.sort_unstable();
        out.push(json!({
            "workload": workload, "issuer": issuer, "subject": subject,
            "first_seen_ms": first, "last_seen_ms": last, "token_expires_ms": expires,
            "live_sessions": live, "sessions": sessions, "targets": targets,
            "privileged_actions": priv_, "denied": denied, "status": status,
            "revoked": revoked,
        }));
    }
    Ok(out)
}
