//! Revocations: an operator cuts off an identity or a workload at once. Live sessions end,
//! new ones are refused (code `revoked`) until the revocation is lifted, and both are on record.
//! Kept in the record database, so a restart does not forget them.

use std::sync::RwLock;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::record::{now_ms, Db, Entry, SharedDb};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The token's `sub` (exact); `None`: any.
    pub subject: Option<String>,
    /// The token's `iss` (exact); `None`: any.
    pub issuer: Option<String>,
    /// The workload's name; `None`: any.
    pub workload: Option<String>,
    pub reason: String,
    pub at_ms: i64,
    /// Who revoked (the admin socket's caller).
    pub by: String,
}

impl Revocation {
    pub fn covers(&self, issuer: &str, subject: &str, workload: &str) -> bool {
        self.subject.as_deref().is_none_or(|s| s == subject)
            && self.issuer.as_deref().is_none_or(|i| i == issuer)
            && self.workload.as_deref().is_none_or(|w| w == workload)
    }

    /// Why a session or connection it covers ends: who revoked, and why.
    pub fn message(&self) -> String {
        format!("revoked by {}: {}", self.by, self.reason)
    }

    /// The same target (subject, issuer, workload), whoever revoked it and why.
    fn same(&self, other: &Revocation) -> bool {
        (&self.subject, &self.issuer, &self.workload)
            == (&other.subject, &other.issuer, &other.workload)
    }
}

pub struct Revocations {
    db: SharedDb,
    list: RwLock<Vec<Revocation>>,
    /// Each revocation and lift once stored, for the console's live events (bounded, never
    /// waited on).
    changes: tokio::sync::broadcast::Sender<RevocationChange>,
}

/// A revocation put in force or lifted.
#[derive(Debug, Clone, Serialize)]
pub struct RevocationChange {
    /// `revoked` or `lifted`.
    pub action: &'static str,
    #[serde(flatten)]
    pub revocation: Revocation,
}

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS revocations (id INTEGER PRIMARY KEY, revocation TEXT NOT NULL);";

/// Every revocation stored in the record database, oldest first; none if the table is not
/// there (a database from before revocations, opened read-only). An unreadable one is left out
/// (refuse nobody by mistake) and said.
pub fn read_all(conn: &Connection) -> rusqlite::Result<Vec<Revocation>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'revocations'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT revocation FROM revocations ORDER BY id")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut list = Vec::new();
    for row in rows {
        match serde_json::from_str::<Revocation>(&row?) {
            Ok(r) => list.push(r),
            Err(e) => tracing::error!("revocation unreadable, ignored: {e}"),
        }
    }
    Ok(list)
}

impl Revocations {
    pub fn load(db: SharedDb) -> rusqlite::Result<Revocations> {
        let list = {
            let g = Db::lock(&db);
            g.conn.execute_batch(SCHEMA)?;
            read_all(&g.conn)?
        };
        Ok(Revocations {
            db,
            list: RwLock::new(list),
            changes: tokio::sync::broadcast::channel(64).0,
        })
    }

    pub fn find(&self, issuer: &str, subject: &str, workload: &str) -> Option<Revocation> {
        self.list
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|r| r.covers(issuer, subject, workload))
            .cloned()
    }

    /// Re-reads the stored revocations: after a handover the successor adds and lifts them, and
    /// this process (draining) learns of them here. Returns those it did not know before.
    pub fn refresh(&self) -> rusqlite::Result<Vec<Revocation>> {
        let stored = read_all(&Db::lock(&self.db).conn)?;
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let new = stored
            .iter()
            .filter(|r| !list.contains(r))
            .cloned()
            .collect();
        *list = stored;
        Ok(new)
    }

    /// Where revocations and lifts are announced (subscribe to hear them from then on).
    pub fn changes(&self) -> tokio::sync::broadcast::Sender<RevocationChange> {
        self.changes.clone()
    }

    pub fn list(&self) -> Vec<Revocation> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stores and records `r`; in force for new connections as soon as this returns.
    pub fn add(&self, r: Revocation) -> rusqlite::Result<()> {
        let body = serde_json::to_string(&r).unwrap_or_default();
        Db::lock(&self.db).write(|tx, journal| {
            tx.execute(
                "INSERT INTO revocations (revocation) VALUES (?1)",
                params![body],
            )?;
            journal.append(
                tx,
                &Entry {
                    at_ms: r.at_ms,
                    kind: "revoke",
                    session: None,
                    body: &body,
                },
            )
        })?;
        self.list
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(r.clone());
        let _ = self.changes.send(RevocationChange {
            action: "revoked",
            revocation: r,
        });
        Ok(())
    }

    /// Lifts the revocations of exactly this subject/issuer/workload; returns how many. The
    /// list in force changes only once the database has: if the write fails, they stay in
    /// force.
    pub fn lift(&self, target: &Revocation) -> rusqlite::Result<usize> {
        // Held across the write, so that an `add` meanwhile is neither lost nor overwritten.
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let (gone, kept): (Vec<_>, Vec<_>) = list.iter().cloned().partition(|r| r.same(target));
        if gone.is_empty() {
            return Ok(0);
        }
        let body = json!({"subject": target.subject, "issuer": target.issuer,
                          "workload": target.workload, "by": target.by, "reason": target.reason})
        .to_string();
        let remaining: Vec<String> = kept
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_default())
            .collect();
        Db::lock(&self.db).write(|tx, journal| {
            tx.execute("DELETE FROM revocations", [])?;
            for r in &remaining {
                tx.execute("INSERT INTO revocations (revocation) VALUES (?1)", [r])?;
            }
            journal.append(
                tx,
                &Entry {
                    at_ms: now_ms(),
                    kind: "revoke_lifted",
                    session: None,
                    body: &body,
                },
            )
        })?;
        *list = kept;
        let _ = self.changes.send(RevocationChange {
            action: "lifted",
            revocation: target.clone(),
        });
        Ok(gone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_cover_what_they_name_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("r.db")).unwrap();
        let r = Revocations::load(db.clone()).unwrap();
        let agent = Revocation {
            subject: Some("agent-7".into()),
            issuer: None,
            workload: None,
            reason: "leaked token".into(),
            at_ms: 1,
            by: "root".into(),
        };
        r.add(agent.clone()).unwrap();
        r.add(Revocation {
            subject: None,
            workload: Some("ci".into()),
            ..agent.clone()
        })
        .unwrap();
        assert!(r.find("i", "agent-7", "other").is_some());
        assert!(r.find("i", "agent-8", "ci").is_some());
        assert!(r.find("i", "agent-8", "other").is_none());
        let again = Revocations::load(db.clone()).unwrap();
        assert_eq!(again.list().len(), 2);
        assert_eq!(again.lift(&agent).unwrap(), 1);
        assert!(again.find("i", "agent-7", "other").is_none());
        assert_eq!(Revocations::load(db.clone()).unwrap().list().len(), 1);
        let kinds: Vec<String> = {
            let g = Db::lock(&db);
            let mut s = g
                .conn
                .prepare("SELECT kind FROM audit_log ORDER BY seq")
                .unwrap();
            let k = s.query_map([], |r| r.get(0)).unwrap();
            k.map(Result::unwrap).collect()
        };
        assert_eq!(kinds, ["revoke", "revoke", "revoke_lifted"]);
    }

    #[test]
    fn a_lift_that_is_not_stored_leaves_the_revocation_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("r.db")).unwrap();
        let r = Revocations::load(db.clone()).unwrap();
        let agent = Revocation {
            subject: Some("agent-7".into()),
            issuer: None,
            workload: None,
            reason: "leaked token".into(),
            at_ms: 1,
            by: "root".into(),
        };
        r.add(agent.clone()).unwrap();
        Db::lock(&db)
            .conn
            .execute_batch(
                "CREATE TRIGGER keep BEFORE DELETE ON revocations BEGIN SELECT RAISE(ABORT, 'kept'); END;",
            )
            .unwrap();
        assert!(r.lift(&agent).is_err());
        assert!(r.find("i", "agent-7", "w").is_some());
        assert_eq!(r.list(), vec![agent.clone()]);
        assert_eq!(read_all(&Db::lock(&db).conn).unwrap(), vec![agent]);
    }

    #[test]
    fn read_all_without_the_table_is_empty() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(read_all(&conn).unwrap().is_empty());
    }
}
