//! `GET /v1/agents`' `series`: how many agents were in each state over time (the sprawl).
//!
//! The span runs from the first session on record to now, cut into equal buckets: a whole
//! number of minutes wide, at least one, and at most [`MAX_POINTS`] buckets. Each point
//! `{"at_ms", "active", "idle", "expired", "revoked"}` is the end of its bucket (the last is
//! now) and counts every agent (workload, issuer, subject) first seen before it, each in one
//! state, the first that holds, as `agentgate agents` decides them now:
//! - `revoked`: a revocation in force at `at_ms` (the journal's `revoke` and `revoke_lifted`
//!   records up to then) covers it;
//! - `active`: one of its sessions was live during the bucket (started before its end, and
//!   not ended before its start);
//! - `expired`: the latest expiry among the tokens of its sessions started by `at_ms` has
//!   passed at `at_ms`;
//! - `idle`: otherwise (it could come back).
//!
//! One pass over the sessions (as `agentgate agents` makes), a bitset of live buckets and the
//! token expiries per agent; the revocations are few and replayed in order.

use std::collections::HashMap;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::{audit::AuditError, proxy::revocations::Revocation};

pub const MAX_POINTS: i64 = 200;
const MINUTE: i64 = 60_000;
const WORDS: usize = (MAX_POINTS as usize + 1).div_ceil(64);

pub(crate) const SESSIONS: &str =
    "SELECT workload, issuer, subject, started_ms, ended_ms, token_expires_ms FROM sessions";
pub(crate) const REVOCATIONS: &str = "SELECT at_ms, kind, body FROM audit_log WHERE kind IN ('revoke', 'revoke_lifted') ORDER BY seq";

#[derive(Default)]
struct Agent {
    workload: String,
    issuer: String,
    subject: String,
    first: usize,
    live: [u64; WORDS],
    /// (bucket a session started in, its token's expiry).
    expiries: Vec<(usize, i64)>,
}

pub fn series(conn: &Connection, now_ms: i64) -> Result<Vec<Value>, AuditError> {
    let start: Option<i64> = conn.query_row(
        "SELECT min(json_extract(body, '$.started_ms')) FROM audit_log INDEXED BY audit_log_started WHERE kind = 'session_open'",
        [],
        |r| r.get(0),
    ).or_else(|_| conn.query_row("SELECT min(started_ms) FROM sessions", [], |r| r.get(0)))?;
    let Some(start) = start.filter(|s| *s <= now_ms) else {
        return Ok(Vec::new());
    };
    let span = (now_ms - start).max(1);
    let per_point = (span + MAX_POINTS - 1) / MAX_POINTS;
    let width = ((per_point + MINUTE - 1) / MINUTE).max(1) * MINUTE;
    let n = ((span + width - 1) / width).clamp(1, MAX_POINTS) as usize;
    let bucket = |t: i64| (((t - start).max(0) / width) as usize).min(n - 1);
    let end_of = |i: usize| (start + (i as i64 + 1) * width).min(now_ms);

    let mut agents: Vec<Agent> = Vec::new();
    let mut index: HashMap<(String, String, String), usize> = HashMap::new();
    let mut stmt = conn.prepare(SESSIONS)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let key = (
            r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        );
        let Some(started) = r.get::<_, Option<i64>>(3)? else {
            continue;
        };
        let ended: Option<i64> = r.get(4)?;
        let expires: Option<i64> = r.get(5)?;
        let i = *index.entry(key.clone()).or_insert_with(|| {
            agents.push(Agent {
                workload: key.0,
                issuer: key.1,
                subject: key.2,
                first: usize::MAX,
                ..Default::default()
            });
            agents.len() - 1
        });
        let a = &mut agents[i];
        let (b0, b1) = (bucket(started), bucket(ended.unwrap_or(now_ms)));
        a.first = a.first.min(b0);
        for b in b0..=b1 {
            a.live[b / 64] |= 1 << (b % 64);
        }
        if let Some(e) = expires {
            a.expiries.push((b0, e));
        }
    }
    for a in &mut agents {
        a.expiries.sort_unstable();
    }

    // The revocations in force at the end of each bucket, replayed from the journal.
    let mut changes: Vec<(i64, String, String)> = conn
        .prepare(REVOCATIONS)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    changes.sort_by_key(|c| c.0);
    let mut changes = changes.into_iter().peekable();
    let mut in_force: Vec<(String, String)> = Vec::new();

    let mut points = Vec::with_capacity(n);
    // Per agent: how far its expiries are read, and the latest expiry so far.
    let mut read = vec![(0usize, None::<i64>); agents.len()];
    for b in 0..n {
        let at = end_of(b);
        while let Some((_, kind, body)) = changes.next_if(|c| c.0 <= at) {
            in_force.push((kind, body));
        }
        let revocations = crate::audit::agents::revocations_in_journal(
            in_force.iter().map(|(k, b)| (k.as_str(), b.as_str())),
        );
        let (mut active, mut idle, mut expired, mut revoked) = (0, 0, 0, 0);
        for (a, (pos, latest)) in agents.iter().zip(read.iter_mut()) {
            while let Some(&(eb, e)) = a.expiries.get(*pos).filter(|x| x.0 <= b) {
                let _ = eb;
                *latest = Some(latest.map_or(e, |l| l.max(e)));
                *pos += 1;
            }
            if a.first > b {
                continue;
            }
            if covered(&revocations, a) {
                revoked += 1;
            } else if a.live[b / 64] & (1 << (b % 64)) != 0 {
                active += 1;
            } else if latest.is_some_and(|e| e <= at) {
                expired += 1;
            } else {
                idle += 1;
            }
        }
        points.push(json!({"at_ms": at, "active": active, "idle": idle,
                           "expired": expired, "revoked": revoked}));
    }
    Ok(points)
}

fn covered(revocations: &[Revocation], a: &Agent) -> bool {
    revocations
        .iter()
        .any(|r| r.covers(&a.issuer, &a.subject, &a.workload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Db, Entry};

    fn write(db: &crate::record::SharedDb, at_ms: i64, kind: &str, s: Option<&str>, body: Value) {
        let body = body.to_string();
        Db::lock(db)
            .write(|tx, j| {
                j.append(
                    tx,
                    &Entry {
                        at_ms,
                        kind,
                        session: s,
                        body: &body,
                    },
                )
            })
            .unwrap();
    }

    /// Two agents over ten minutes: one with a session in the first minute whose token expires
    /// at minute 5, one live from minute 3 on and revoked at minute 8.
    #[test]
    fn agents_by_state_over_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let db = Db::open(&path).unwrap();
        let m = MINUTE;
        write(
            &db,
            0,
            "session_open",
            Some("a"),
            json!({"session": "a", "started_ms": 0,
              "workload": "w", "issuer": "i", "subject": "a", "token_expires_ms": 5 * m}),
        );
        write(
            &db,
            0,
            "session_close",
            Some("a"),
            json!({"session": "a", "ended_ms": 30_000}),
        );
        write(
            &db,
            0,
            "session_open",
            Some("b"),
            json!({"session": "b", "started_ms": 3 * m + 1,
              "workload": "w", "issuer": "i", "subject": "b", "token_expires_ms": 100 * m}),
        );
        write(
            &db,
            8 * m,
            "revoke",
            None,
            json!({"subject": "b", "issuer": null,
              "workload": null, "reason": "r", "at_ms": 8 * m, "by": "root"}),
        );
        let conn = crate::audit::open(&path).unwrap();
        let points = series(&conn, 10 * m).unwrap();
        assert_eq!(points.len(), 10, "{points:?}");
        let at = |i: usize, k: &str| points[i][k].as_i64().unwrap();
        // Minute 1: a live; minute 2: a idle; minute 4: b live; minute 6: a expired;
        // minute 9: b revoked.
        assert_eq!((at(0, "active"), at(0, "idle")), (1, 0));
        assert_eq!((at(1, "active"), at(1, "idle")), (0, 1));
        assert_eq!((at(3, "active"), at(3, "idle")), (1, 1));
        assert_eq!((at(5, "active"), at(5, "expired")), (1, 1));
        assert_eq!((at(8, "revoked"), at(8, "expired")), (1, 1));
        assert_eq!(at(9, "at_ms"), 10 * m);
    }
}
