//! `agentgate agents`: the sprawl view. Every workload and identity the gateway has seen, when,
//! until when its token is good, what it reached, what it changed, and whether it is still
//! around: `revoked` (an operator cut it off), `active` (a live session), `expired` (its latest
//! token has expired: it cannot come back without a new one), else `idle` (it could).

use rusqlite::Connection;
use serde_json::{json, Value};

use super::AuditError;
use crate::proxy::revocations::{self, Revocation};

/// One pass over the sessions and one over the statements, counted per session and then per
/// agent (never, per agent, over every session). Intents count when their outcome never came
/// (one look-up in `audit_log_outcome` each).
pub(crate) const LIST: &str = "
WITH outcomes AS (
    SELECT session,
           sum(coalesce(json_extract(body, '$.privileged'), json_extract(body, '$.class') <> 'read')
               AND json_extract(body, '$.decision') <> 'denied') AS privileged,
           sum(json_extract(body, '$.decision') = 'denied') AS denied
    FROM audit_log
    WHERE kind = 'statement'
    GROUP BY session),
unanswered AS (
    SELECT i.session,
           sum(coalesce(json_extract(i.body, '$.privileged'), json_extract(i.body, '$.class') <> 'read')
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

/// One agent (a workload, issuer and subject; on one node) summed over its sessions: the row
/// both stores give, the node's SQLite record ([`LIST`]) and the central store
/// (`audit::central`). [`state`] turns it into what `agentgate agents` shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentRow {
    /// The node it was seen on (the central store only).
    pub node: Option<String>,
    pub workload: String,
    pub issuer: String,
    pub subject: String,
    pub first_seen_ms: Option<i64>,
    /// The end of its last session, or now while one is live.
    pub last_seen_ms: Option<i64>,
    /// The latest expiry of the tokens it came with.
    pub token_expires_ms: Option<i64>,
    pub live_sessions: i64,
    pub sessions: i64,
    pub targets: Vec<String>,
    pub privileged_actions: i64,
    pub denied: i64,
}

/// The agent's status and its JSON: `revoked` if a revocation of its node covers it, `active`
/// with a live session, `expired` once its latest token has, else `idle`. `revocations` are
/// those in force where the row was seen (its node's).
pub fn state(row: AgentRow, revocations: &[Revocation], now_ms: i64) -> Value {
    let revoked = revocations
        .iter()
        .find(|r| r.covers(&row.issuer, &row.subject, &row.workload));
    let status = if revoked.is_some() {
        "revoked"
    } else if row.live_sessions > 0 {
        "active"
    } else if row.token_expires_ms.is_some_and(|e| e <= now_ms) {
        "expired"
    } else {
        "idle"
    };
    let mut targets = row.targets;
    targets.retain(|t| !t.is_empty());
    targets.sort_unstable();
    targets.dedup();
    let mut v = json!({
        "workload": row.workload, "issuer": row.issuer, "subject": row.subject,
        "first_seen_ms": row.first_seen_ms, "last_seen_ms": row.last_seen_ms,
        "token_expires_ms": row.token_expires_ms,
        "live_sessions": row.live_sessions, "sessions": row.sessions, "targets": targets,
        "privileged_actions": row.privileged_actions, "denied": row.denied, "status": status,
        "revoked": revoked,
    });
    if let Some(node) = row.node {
        v["node"] = json!(node);
    }
    v
}

/// The revocations in force after a node's journal records, oldest first: each `revoke` adds
/// one, each `revoke_lifted` removes those of exactly its subject, issuer and workload (as the
/// gateway's own list does). For the central store, which has the journal but not the node's
/// `revocations` table. An unreadable `revoke` body is left out and said.
pub fn revocations_in_journal<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<Revocation> {
    let mut list: Vec<Revocation> = Vec::new();
    for (kind, body) in records {
        match kind {
            "revoke" => match serde_json::from_str::<Revocation>(body) {
                Ok(r) => list.push(r),
                Err(e) => eprintln!("agentgate: a revoke record is unreadable, left out: {e}"),
            },
            "revoke_lifted" => {
                let Ok(b) = serde_json::from_str::<Value>(body) else {
                    eprintln!("agentgate: a revoke_lifted record is unreadable, left out");
                    continue;
                };
                let field = |k: &str| b[k].as_str().map(str::to_string);
                let target = (field("subject"), field("issuer"), field("workload"));
                list.retain(|r| {
                    (r.subject.clone(), r.issuer.clone(), r.workload.clone()) != target
                });
            }
            _ => {}
        }
    }
    list
}

/// Every agent of the node's record database, latest seen first.
pub fn list(conn: &Connection, now_ms: i64) -> Result<Vec<Value>, AuditError> {
    let revocations = revocations::read_all(conn)?;
    let mut stmt = conn.prepare(LIST)?;
    let rows = stmt.query_map([now_ms], |r| {
        Ok(AgentRow {
            node: None,
            workload: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            issuer: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            subject: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            first_seen_ms: r.get(3)?,
            last_seen_ms: r.get(4)?,
            token_expires_ms: r.get(5)?,
            live_sessions: r.get(6)?,
            sessions: r.get(7)?,
            targets: r
                .get::<_, Option<String>>(8)?
                .unwrap_or_default()
                .split(',')
                .map(str::to_string)
                .collect(),
            privileged_actions: r.get(9)?,
            denied: r.get(10)?,
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.push(state(row?, &revocations, now_ms));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(subject: &str, workload: Option<&str>) -> String {
        json!({"subject": subject, "issuer": null, "workload": workload, "reason": "r",
               "at_ms": 1, "by": "root"})
        .to_string()
    }

    #[test]
    fn the_journal_says_which_revocations_are_in_force() {
        let (a, b, lift_a) = (
            rev("a", None),
            rev("b", Some("w")),
            json!({"subject": "a", "issuer": null, "workload": null, "by": "root", "reason": "x"})
                .to_string(),
        );
        let records = [
            ("revoke", a.as_str()),
            ("session_open", "{}"),
            ("revoke", b.as_str()),
            ("revoke", a.as_str()),
            ("revoke", "not json"),
        ];
        let list = revocations_in_journal(records);
        assert_eq!(list.len(), 3);
        let mut lifted = records.to_vec();
        lifted.push(("revoke_lifted", lift_a.as_str()));
        let list = revocations_in_journal(lifted);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].subject.as_deref(), Some("b"));
        assert!(list[0].covers("i", "b", "w") && !list[0].covers("i", "b", "v"));
    }

    #[test]
    fn state_is_revoked_then_active_then_expired_then_idle() {
        let row = AgentRow {
            workload: "w".into(),
            subject: "a".into(),
            token_expires_ms: Some(100),
            live_sessions: 1,
            targets: vec!["pg".into(), "".into(), "b".into(), "pg".into()],
            ..Default::default()
        };
        let revoked = revocations_in_journal([("revoke", rev("a", None).as_str())]);
        assert_eq!(state(row.clone(), &revoked, 50)["status"], "revoked");
        let v = state(row.clone(), &[], 50);
        assert_eq!(v["status"], "active");
        assert_eq!(v["targets"], json!(["b", "pg"]));
        assert!(v.get("node").is_none());
        let idle = AgentRow {
            live_sessions: 0,
            node: Some("n1".into()),
            ..row
        };
        assert_eq!(state(idle.clone(), &[], 100)["status"], "expired");
        let v = state(idle, &[], 99);
        assert_eq!(
            (v["status"].as_str(), v["node"].as_str()),
            (Some("idle"), Some("n1"))
        );
    }
}
