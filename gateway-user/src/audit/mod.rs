//! Reading the record database: `agentgate audit verify | export`, `sessions`, `agents`. These
//! open the file read-only, so they work whether or not the gateway runs (and cannot change
//! what they read).

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

use crate::record::journal;

pub mod agents;
pub mod cast;
pub mod central;
pub mod print;
pub mod sessions;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("record database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("record database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Usage(String),
}

pub fn open(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| AuditError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Checks the journal's chain from its start (or the last pruned record) to its end.
pub fn verify(path: &Path) -> Result<journal::Report, AuditError> {
    Ok(journal::verify(&open(path)?)?)
}

/// In journal order from the first record of `since_ms` or later (found in `audit_log_at`),
/// so that no sort of the whole journal comes first; times are not strictly in journal order,
/// hence the filter on every record after it.
pub(crate) const EXPORT: &str = "
SELECT seq, at_ms, kind, session, body, prev, hash FROM audit_log
WHERE seq >= (SELECT min(seq) FROM audit_log INDEXED BY audit_log_at WHERE at_ms >= ?1)
  AND at_ms >= ?1
ORDER BY seq";

/// Every record from `since_ms` on, oldest first, one JSON object per line (for a SIEM): its
/// number, time, kind, session, body, and the hashes that chain it.
pub fn export(path: &Path, since_ms: i64, out: &mut dyn std::io::Write) -> Result<u64, AuditError> {
    let conn = open(path)?;
    let mut stmt = conn.prepare(EXPORT)?;
    let mut rows = stmt.query([since_ms])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let body: String = r.get(4)?;
        let line = json!({
            "seq": r.get::<_, i64>(0)?,
            "at_ms": r.get::<_, i64>(1)?,
            "kind": r.get::<_, String>(2)?,
            "session": r.get::<_, Option<String>>(3)?,
            "record": serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body)),
            "prev": r.get::<_, String>(5)?,
            "hash": r.get::<_, String>(6)?,
        });
        writeln!(out, "{line}").map_err(|e| AuditError::Usage(format!("writing: {e}")))?;
        n += 1;
    }
    Ok(n)
}

/// `--since` as a time: RFC 3339-ish `YYYY-MM-DD[THH:MM[:SS]]` (UTC), unix milliseconds, or a
/// duration back from now (`90s`, `15m`, `6h`, `7d`).
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, AuditError> {
    let bad = || {
        AuditError::Usage(format!(
            "--since `{s}`: give a date (2026-11-26 or 2026-11-26T08:00:00), unix milliseconds, or a duration back from now (15m, 6h, 7d)"
        ))
    };
    let duration = s.len() > 1
        && s.ends_with(['s', 'm', 'h', 'd'])
        && s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if let Some(unit) = s.chars().last().filter(|_| duration) {
        let n: i64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        let ms = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        return Ok(now_ms - n * ms);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00"));
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<i64> = time
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [y, mo, da] = d[..] else {
        return Err(bad());
    };
    let (h, mi, se) = match t[..] {
        [h, m] => (h, m, 0),
        [h, m, s] => (h, m, s),
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    Ok((days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se) * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_dates_millis_and_durations() {
        assert_eq!(parse_since("1970-01-02", 0).unwrap(), 86_400_000);
        assert_eq!(
            parse_since("2026-11-26T08:30:00Z", 0).unwrap(),
            1_795_681_800_000
        );
        assert_eq!(
            parse_since("2026-11-26 08:30", 0).unwrap(),
            1_795_681_800_000
        );
        assert_eq!(parse_since("1234", 0).unwrap(), 1234);
        assert_eq!(parse_since("15m", 1_000_000).unwrap(), 100_000);
        assert_eq!(parse_since("2d", 200_000_000).unwrap(), 27_200_000);
        for bad in ["yesterday", "2026-13-01", "10w", "", "2026-11"] {
            assert!(parse_since(bad, 0).is_err(), "{bad}");
        }
    }
}
