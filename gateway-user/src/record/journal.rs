//! The audit journal: one append-only table in which every record is chained to the one before
//! by SHA-256, so that an edited, deleted or reordered record shows. Everything the gateway
//! records goes through it (sessions, statements, approvals, refusals, policy versions,
//! revocations); the query tables people read are views over it.
//!
//! `hash(n) = SHA-256(hash(n-1) ‖ n ‖ at_ms ‖ kind ‖ session ‖ body)`, each variable-length part
//! prefixed with its length. Pruning old records keeps the last pruned record's number and hash
//! as the anchor the chain continues from.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    session TEXT,
    body TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_session ON audit_log(session, seq);
CREATE INDEX IF NOT EXISTS audit_log_kind ON audit_log(kind, seq);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at_ms);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    pruned_ms INTEGER NOT NULL
);
";

/// The hash before the first record.
pub(crate) const GENESIS: [u8; 32] = [0; 32];

/// The end of the chain: the last record's number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub seq: i64,
    pub hash: [u8; 32],
}

/// One record to append.
pub struct Entry<'a> {
    pub at_ms: i64,
    pub kind: &'a str,
    pub session: Option<&'a str>,
    /// JSON.
    pub body: &'a str,
}

pub fn hash(prev: &[u8; 32], seq: i64, e: &Entry<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(e.at_ms.to_be_bytes());
    for part in [e.kind, e.session.unwrap_or(""), e.body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    // A session of "" and none are different records.
    h.update([e.session.is_some() as u8]);
    h.finalize().into()
}

pub fn hex(h: &[u8; 32]) -> String {
    // Twice per record on the writer thread: one allocation, not one `format!` per byte.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in h {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Where the chain ends now: the last record, else the anchor of a pruned chain, else genesis.
pub fn tip(conn: &Connection) -> rusqlite::Result<Tip> {
    let last: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, hash) = match last {
        Some(l) => l,
        None => match anchor(conn)? {
            Some(a) => (a.seq, hex(&a.hash)),
            None => {
                return Ok(Tip {
                    seq: 0,
                    hash: GENESIS,
                })
            }
        },
    };
    Ok(Tip {
        seq,
        // A tip that does not parse is itself a finding for `verify`; new records still chain
        // to something fixed.
        hash: unhex(&hash).unwrap_or(GENESIS),
    })
}

fn anchor(conn: &Connection) -> rusqlite::Result<Option<Tip>> {
    Ok(conn
        .query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?
        .map(|(seq, h)| Tip {
            seq,
            hash: unhex(&h).unwrap_or(GENESIS),
        }))
}

/// Appends `e` after `tip` inside `tx`, and moves `tip` on. The caller commits.
pub fn append(tx: &Transaction<'_>, tip: &mut Tip, e: &Entry<'_>) -> rusqlite::Result<i64> {
    let seq = tip.seq + 1;
    let h = hash(&tip.hash, seq, e);
    tx.prepare_cached(
        "INSERT INTO audit_log (seq, at_ms, kind, session, body, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        seq,
        e.at_ms,
        e.kind,
        e.session,
        e.body,
        hex(&tip.hash),
        hex(&h)
    ])?;
    *tip = Tip { seq, hash: h };
    Ok(seq)
}

/// What `verify` found wrong with one record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub seq: i64,
    pub what: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Records checked.
    pub records: u64,
    /// The chain's start: 0, or the last pruned record.
    pub from: i64,
    pub tip: Option<i64>,
    pub problems: Vec<Problem>,
}

/// The whole journal in order of its primary key.
pub(crate) const VERIFY: &str =
    "SELECT seq, at_ms, kind, session, body, prev, hash FROM audit_log ORDER BY seq";

/// Walks the whole chain and names every record that is not as it was written.
pub fn verify(conn: &Connection) -> rusqlite::Result<Report> {
    let start = anchor(conn)?.unwrap_or(Tip {
        seq: 0,
        hash: GENESIS,
    });
    let mut stmt = conn.prepare(VERIFY)?;
    let mut rows = stmt.query([])?;
    let mut report = Report {
        records: 0,
        from: start.seq,
        tip: None,
        problems: Vec::new(),
    };
    let (mut expect, mut last) = (start.seq + 1, start.hash);
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let kind: String = r.get(2)?;
        let session: Option<String> = r.get(3)?;
        let body: String = r.get(4)?;
        let prev: String = r.get(5)?;
        let stored: String = r.get(6)?;
        let e = Entry {
            at_ms: r.get(1)?,
            kind: &kind,
            session: session.as_deref(),
            body: &body,
        };
        let mut problem = |what: String| report.problems.push(Problem { seq, what });
        let what = format!(
            "record {seq} ({kind}{})",
            session
                .as_deref()
                .map(|s| format!(", session {s}"))
                .unwrap_or_default()
        );
        if seq > expect {
            problem(if seq == expect + 1 {
                format!("record {expect} is missing (deleted)")
            } else {
                format!("records {expect}..{} are missing (deleted)", seq - 1)
            });
        }
        if unhex(&prev) != Some(last) {
            problem(format!(
                "{what} does not follow the record before it: records were deleted, reordered or replaced"
            ));
        }
        let recomputed = unhex(&prev).map(|p| hash(&p, seq, &e));
        if recomputed.map(|h| hex(&h)).as_deref() != Some(stored.as_str()) {
            problem(format!(
                "{what} was edited: its content does not match its hash"
            ));
        }
        last = unhex(&stored).unwrap_or(GENESIS);
        expect = seq + 1;
        report.records += 1;
        report.tip = Some(seq);
    }
    Ok(report)
}

/// Deletes the records before `keep_from` (exclusive) and makes the last deleted one the
/// anchor the chain continues from. Returns how many were deleted.
pub fn prune(conn: &mut Connection, keep_from: i64, now_ms: i64) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit_log WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
            [keep_from],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, hash)) = last else {
        return Ok(0);
    };
    let n = tx.execute("DELETE FROM audit_log WHERE seq <= ?1", [seq])?;
    tx.execute(
        "INSERT INTO audit_anchor (id, seq, hash, pruned_ms) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, pruned_ms = excluded.pruned_ms",
        params![seq, hash, now_ms],
    )?;
    tx.commit()?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    fn fill(conn: &mut Connection, n: i64) {
        let mut t = tip(conn).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..n {
            let body = format!("{{\"i\":{i}}}");
            append(
                &tx,
                &mut t,
                &Entry {
                    at_ms: 1000 + i,
                    kind: "statement",
                    session: Some("s1"),
                    body: &body,
                },
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn problems(conn: &Connection) -> Vec<String> {
        verify(conn)
            .unwrap()
            .problems
            .into_iter()
            .map(|p| p.what)
            .collect()
    }

    #[test]
    fn hex_is_lowercase_and_round_trips() {
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xa5;
        }
        let text = hex(&h);
        let expected: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(text, expected);
        assert_eq!(unhex(&text), Some(h));
    }

    #[test]
    fn an_untouched_chain_verifies_and_continues_across_opens() {
        let mut conn = db();
        fill(&mut conn, 5);
        fill(&mut conn, 3);
        let r = verify(&conn).unwrap();
        assert_eq!((r.records, r.tip), (8, Some(8)));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn edits_deletions_and_reorders_are_named() {
        let mut conn = db();
        fill(&mut conn, 6);
        conn.execute("UPDATE audit_log SET body = '{\"i\":99}' WHERE seq = 3", [])
            .unwrap();
        assert_eq!(
            problems(&conn),
            ["record 3 (statement, session s1) was edited: its content does not match its hash"]
        );

        let mut conn = db();
        fill(&mut conn, 6);
        conn.execute("DELETE FROM audit_log WHERE seq = 4", [])
            .unwrap();
        let p = problems(&conn);
        assert_eq!(p[0], "record 4 is missing (deleted)");
        assert!(
            p[1].starts_with("record 5 (statement, session s1) does not follow"),
            "{p:?}"
        );

        // Two records swapped whole (hashes and all): each no longer follows its predecessor.
        let mut conn = db();
        fill(&mut conn, 6);
        conn.execute_batch(
            "UPDATE audit_log SET seq = -2 WHERE seq = 2;
             UPDATE audit_log SET seq = 2 WHERE seq = 3;
             UPDATE audit_log SET seq = 3 WHERE seq = -2;",
        )
        .unwrap();
        let p = problems(&conn);
        assert!(p.iter().any(|w| w.starts_with("record 2 ")), "{p:?}");
        assert!(p.iter().any(|w| w.starts_with("record 3 ")), "{p:?}");

        // A record rewritten with a recomputed hash of its own still breaks the next link.
        let mut conn = db();
        fill(&mut conn, 4);
        let prev: String = conn
            .query_row("SELECT prev FROM audit_log WHERE seq = 2", [], |r| r.get(0))
            .unwrap();
        let forged = hash(
            &unhex(&prev).unwrap(),
            2,
            &Entry {
                at_ms: 1001,
                kind: "statement",
                session: Some("s1"),
                body: "{\"i\":-1}",
            },
        );
        conn.execute(
            "UPDATE audit_log SET body = '{\"i\":-1}', hash = ?1 WHERE seq = 2",
            [hex(&forged)],
        )
        .unwrap();
        assert_eq!(
            problems(&conn),
            ["record 3 (statement, session s1) does not follow the record before it: records were deleted, reordered or replaced"]
        );
    }

    #[test]
    fn pruning_keeps_the_rest_verifiable() {
        let mut conn = db();
        fill(&mut conn, 10);
        assert_eq!(prune(&mut conn, 7, 5000).unwrap(), 6);
        let r = verify(&conn).unwrap();
        assert_eq!((r.from, r.records, r.tip), (6, 4, Some(10)));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        // New records continue the chain; deleting past the anchor still shows.
        fill(&mut conn, 2);
        assert!(problems(&conn).is_empty());
        conn.execute("DELETE FROM audit_log WHERE seq = 7", [])
            .unwrap();
        assert_eq!(problems(&conn)[0], "record 7 is missing (deleted)");
    }
}
