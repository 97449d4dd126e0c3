//! The cluster view: `agentgate agents --central` and `agentgate sessions … --central` read the
//! central PostgreSQL that every node's audit sink ships its journal to (`record::sink`,
//! docs/audit-sink.md), and answer for every node.
//!
//! The central table holds the journal records only (no `sessions` view, no `revocations`
//! table), so the queries here rebuild from them what a node's SQLite record gives its own
//! commands: session rows and per-agent sums in SQL (PostgreSQL's dialect of the node's
//! queries, keyed by node too), then the same Rust as the node-local path turns them into agent
//! states and session rows ([`agents::state`], [`sessions::SessionRow`]). A node's revocations
//! in force are its `revoke` and `revoke_lifted` records replayed in order.
//!
//! Read-only: the session is set to read-only transactions before the first query, so even a
//! role that may write cannot change the central store through these commands; the table is
//! never created here.

use std::{collections::HashMap, future::Future, path::PathBuf, time::Duration};

use serde_json::Value;
use tokio_postgres::{types::ToSql, Client, Row};

use super::{
    agents::{self, AgentRow},
    sessions::{self, Filter, SessionRow},
    AuditError,
};
use crate::record::sink::{connect_reader, pg_error, TABLE};

/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error("central audit store: {0}")]
    Connect(String),
    #[error(
        "central audit store: there is no table {TABLE} (no gateway has shipped to this database \
         yet, or the connection string names another database or search_path)"
    )]
    NoTable,
    #[error("central audit store: {0}")]
    Query(String),
    #[error("central audit store: no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl From<tokio_postgres::Error> for CentralError {
    fn from(e: tokio_postgres::Error) -> Self {
        CentralError::Query(pg_error(&e))
    }
}

/// The text of a JSON number field as a bigint (`numeric` first: a number written as
/// `1.7e12` still reads).
macro_rules! num {
    ($e:literal) => {
        concat!("(", $e, ")::numeric::bigint")
    };
}

/// Every agent of every node (or of node `$2`): the node-local `agents` query (audit::agents)
/// over the central table, grouped by node too. `$1` is now.
const AGENTS: &str = concat!(
    "
WITH o AS (
    SELECT node, session, body::jsonb AS b FROM agentgate_audit
    WHERE kind = 'session_open' AND ($2::text IS NULL OR node = $2)),
c AS (
    SELECT node, session, body::jsonb AS b FROM agentgate_audit
    WHERE kind = 'session_close' AND ($2::text IS NULL OR node = $2)),
st AS (
    SELECT node, session, kind, body::jsonb AS b FROM agentgate_audit
    WHERE kind IN ('statement', 'statement_intent') AND ($2::text IS NULL OR node = $2)),
counted AS (
    SELECT s.node, s.session,
           count(*) FILTER (WHERE coalesce((s.b->>'privileged')::boolean, s.b->>'class' <> 'read') AND s.b->>'decision' <> 'denied')
               AS privileged,
           count(*) FILTER (WHERE s.b->>'decision' = 'denied') AS denied
    FROM st s
    WHERE s.kind = 'statement'
       OR NOT EXISTS (SELECT 1 FROM st x
                      WHERE x.kind = 'statement' AND x.node = s.node AND x.session = s.session
                        AND x.b->'seq' = s.b->'seq')
    GROUP BY s.node, s.session),
s AS (
    SELECT o.node, o.session, o.b->>'workload' AS workload, o.b->>'issuer' AS issuer,
           o.b->>'subject' AS subject, o.b->>'target' AS target,
           ",
    num!("o.b->>'started_ms'"),
    " AS started_ms, ",
    num!("c.b->>'ended_ms'"),
    " AS ended_ms, ",
    num!("o.b->>'token_expires_ms'"),
    " AS token_expires_ms
    FROM o LEFT JOIN c ON c.node = o.node AND c.session = o.session)
SELECT s.node, s.workload, s.issuer, s.subject,
       min(s.started_ms), max(coalesce(s.ended_ms, $1::bigint)), max(s.token_expires_ms),
       count(*) FILTER (WHERE s.ended_ms IS NULL), count(*),
       coalesce(array_agg(DISTINCT s.target) FILTER (WHERE s.target IS NOT NULL), '{}'),
       coalesce(sum(p.privileged), 0)::bigint, coalesce(sum(p.denied), 0)::bigint
FROM s LEFT JOIN counted p ON p.node = s.node AND p.session = s.session
GROUP BY s.node, s.workload, s.issuer, s.subject
ORDER BY max(coalesce(s.ended_ms, $1::bigint)) DESC, s.node"
);

/// The records that make a node's revocations, in journal order.
const REVOCATIONS: &str = "
SELECT node, kind, body FROM agentgate_audit
WHERE kind IN ('revoke', 'revoke_lifted') AND ($1::text IS NULL OR node = $1)
ORDER BY node, seq";

/// A session's statements counted as the node-local `statements` view counts them (outcomes,
/// and intents whose outcome is not on record), for the session `p.node`, `p.session`.
const COUNTS: &str = "
SELECT count(*) AS statements,
       count(*) FILTER (WHERE k.b->>'decision' = 'denied') AS denied,
       count(*) FILTER (WHERE coalesce((k.b->>'privileged')::boolean, k.b->>'class' <> 'read') AND k.b->>'decision' <> 'denied')
           AS privileged
FROM (SELECT kind, body::jsonb AS b FROM agentgate_audit x
      WHERE x.node = p.node AND x.session = p.session
        AND x.kind IN ('statement', 'statement_intent')) k
WHERE k.kind = 'statement'
   OR NOT EXISTS (SELECT 1 FROM agentgate_audit y
                  WHERE y.node = p.node AND y.session = p.session AND y.kind = 'statement'
                    AND y.body::jsonb->'seq' = k.b->'seq')";

/// A page of sessions, newest first, with the node-local filters (`$1`–`$8`, as in
/// audit::sessions), the node (`$9`) and the page size (`$10`). LIKE of SQLite is
/// case-insensitive (ASCII): ILIKE here.
fn sessions_sql() -> String {
    format!(
        "
WITH page AS (
    SELECT o.node, o.session, o.b AS ob, c.b AS cb
    FROM (SELECT node, session, body::jsonb AS b FROM agentgate_audit
          WHERE kind = 'session_open') o
    LEFT JOIN (SELECT node, session, body::jsonb AS b FROM agentgate_audit
               WHERE kind = 'session_close') c
      ON c.node = o.node AND c.session = o.session
    WHERE ($1::text IS NULL OR o.b->>'subject' ILIKE $1
           OR (o.b->>'issuer') || '#' || (o.b->>'subject') ILIKE $1)
      AND ($2::text IS NULL OR o.b->>'workload' = $2)
      AND ($3::text IS NULL OR o.b->>'target' = $3)
      AND ($4::text IS NULL OR o.b->>'protocol' = $4)
      AND ($5::bigint IS NULL OR coalesce({ended_in}, 9223372036854775807) >= $5)
      AND ($6::bigint IS NULL OR {started_in} <= $6)
      AND ($7::text IS NULL OR ($7 = 'live') = (c.b->>'ended_ms' IS NULL))
      AND ($8::text IS NULL OR EXISTS (
              SELECT 1 FROM agentgate_audit st
              WHERE st.node = o.node AND st.session = o.session
                AND st.kind IN ('statement', 'statement_intent')
                AND st.body::jsonb->>'text' ILIKE $8))
      AND ($9::text IS NULL OR o.node = $9)
    ORDER BY {started_in} DESC NULLS LAST, o.node, o.session
    LIMIT $10)
SELECT p.node, p.session, {started_out}, {ended_out},
       p.ob->>'protocol', p.ob->>'workload', p.ob->>'issuer', p.ob->>'subject',
       p.ob->>'target', p.ob->>'database', {pid}, p.cb->>'ended_by', p.cb->>'error',
       k.statements, k.denied, k.privileged
FROM page p LEFT JOIN LATERAL ({COUNTS}) k ON true
ORDER BY {started_out} DESC NULLS LAST, p.node, p.session",
        started_in = num!("o.b->>'started_ms'"),
        ended_in = num!("c.b->>'ended_ms'"),
        started_out = num!("p.ob->>'started_ms'"),
        ended_out = num!("p.cb->>'ended_ms'"),
        pid = num!("p.ob->>'pid'"),
    )
}

/// A connection to the central store, for reading.
pub struct Central {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Central {
    /// Connects as the connection string says (checked as the sink checks it: TLS off
    /// loopback, the password from `password_file`), sets the session read-only and checks
    /// that the central table is there.
    pub fn connect(conninfo: &str, password_file: Option<PathBuf>) -> Result<Self, CentralError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CentralError::Connect(format!("runtime: {e}")))?;
        let client = rt
            .block_on(connect_reader(conninfo, password_file))
            .map_err(CentralError::Connect)?;
        let central = Central { rt, client };
        central.run(async {
            central
                .client
                .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                .await?;
            let there: bool = central
                .client
                .query_one("SELECT to_regclass('agentgate_audit') IS NOT NULL", &[])
                .await?
                .get(0);
            if there {
                Ok(())
            } else {
                Err(CentralError::NoTable)
            }
        })?;
        Ok(central)
    }

    fn run<T>(&self, f: impl Future<Output = Result<T, CentralError>>) -> Result<T, CentralError> {
        self.rt
            .block_on(async { tokio::time::timeout(QUERY_TIMEOUT, f).await })
            .map_err(|_| CentralError::Timeout(QUERY_TIMEOUT))?
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, CentralError> {
        self.run(async { Ok(self.client.query(sql, params).await?) })
    }

    /// Every agent of every node (or of `node`), as `agentgate agents` shows a node's, with
    /// its node; latest seen first.
    pub fn agents(&self, now_ms: i64, node: Option<&str>) -> Result<Vec<Value>, CentralError> {
        let node = node.map(str::to_string);
        let mut records: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for r in self.query(REVOCATIONS, &[&node])? {
            records
                .entry(r.try_get(0)?)
                .or_default()
                .push((r.try_get(1)?, r.try_get(2)?));
        }
        let revocations: HashMap<String, Vec<_>> = records
            .iter()
            .map(|(node, recs)| {
                let list = agents::revocations_in_journal(
                    recs.iter().map(|(k, b)| (k.as_str(), b.as_str())),
                );
                (node.clone(), list)
            })
            .collect();
        let mut out = Vec::new();
        for r in self.query(AGENTS, &[&now_ms, &node])? {
            let row = AgentRow {
                node: Some(r.try_get(0)?),
                workload: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                issuer: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                subject: r.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
                first_seen_ms: r.try_get(4)?,
                last_seen_ms: r.try_get(5)?,
                token_expires_ms: r.try_get(6)?,
                live_sessions: r.try_get(7)?,
                sessions: r.try_get(8)?,
                targets: r.try_get(9)?,
                privileged_actions: r.try_get(10)?,
                denied: r.try_get(11)?,
            };
            let none = Vec::new();
            let revoked = row
                .node
                .as_ref()
                .and_then(|n| revocations.get(n))
                .unwrap_or(&none);
            out.push(agents::state(row, revoked, now_ms));
        }
        Ok(out)
    }

    /// A page of sessions of every node (or of `f.node`), newest first, as `sessions list`
    /// shows a node's, with their nodes.
    pub fn sessions(&self, f: &Filter) -> Result<Vec<Value>, CentralError> {
        let status = f.status()?.map(str::to_string);
        let limit = f.limit.max(1) as i64;
        let rows = self.query(
            &sessions_sql(),
            &[
                &Filter::like(&f.identity),
                &f.workload,
                &f.target,
                &f.protocol,
                &f.since_ms,
                &f.until_ms,
                &status,
                &Filter::like(&f.statement),
                &f.node,
                &limit,
            ],
        )?;
        let mut out = Vec::new();
        for r in rows {
            let row = SessionRow {
                node: Some(r.try_get(0)?),
                session: r.try_get(1)?,
                started_ms: r.try_get(2)?,
                ended_ms: r.try_get(3)?,
                protocol: r.try_get(4)?,
                workload: r.try_get(5)?,
                issuer: r.try_get(6)?,
                subject: r.try_get(7)?,
                target: r.try_get(8)?,
                database: r.try_get(9)?,
                pid: r.try_get(10)?,
                ended_by: r.try_get(11)?,
                error: r.try_get(12)?,
                statements: r.try_get(13)?,
                denied: r.try_get(14)?,
                privileged: r.try_get(15)?,
            };
            out.push(row.to_json());
        }
        Ok(out)
    }

    /// The node of session `id`: `node` if given, else the only node that has a session of
    /// that id (session ids are unique on a node, not across nodes).
    fn node_of(&self, id: &str, node: Option<&str>) -> Result<String, CentralError> {
        let id = id.to_string();
        let nodes: Vec<String> = self
            .query(
                "SELECT DISTINCT node FROM agentgate_audit
                 WHERE session = $1 AND kind = 'session_open' AND ($2::text IS NULL OR node = $2)
                 ORDER BY node",
                &[&id, &node],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        match &nodes[..] {
            [one] => Ok(one.clone()),
            [] => Err(AuditError::Usage(match node {
                Some(n) => format!(
                    "no session `{}` of node `{}` in the central store",
                    super::print::safe(&id),
                    super::print::safe(n)
                ),
                None => format!(
                    "no session `{}` in the central store",
                    super::print::safe(&id)
                ),
            })
            .into()),
            many => Err(AuditError::Usage(format!(
                "session `{}` is on more than one node ({}): choose one with --node",
                super::print::safe(&id),
                many.iter()
                    .map(|n| super::print::safe(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        }
    }

    /// One session (`sessions show`), with its node.
    pub fn show(&self, id: &str, node: Option<&str>) -> Result<Value, CentralError> {
        let node = self.node_of(id, node)?;
        let id_s = id.to_string();
        let bodies: Vec<String> = self
            .query(
                "SELECT body FROM agentgate_audit
                 WHERE node = $1 AND session = $2 AND kind IN ('session_open', 'session_close')
                 ORDER BY seq",
                &[&node, &id_s],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let counts = self.query(
            &format!("SELECT k.statements, k.denied FROM (SELECT $1::text AS node, $2::text AS session) p, LATERAL ({COUNTS}) k"),
            &[&node, &id_s],
        )?;
        let counts = match counts.first() {
            Some(r) => (r.try_get(0)?, r.try_get(1)?),
            None => (0, 0),
        };
        let mut v = sessions::merged(id, &bodies, counts)?;
        v["node"] = Value::String(node);
        Ok(v)
    }

    /// A session's timeline (`sessions replay --timeline`), and its node.
    pub fn replay(
        &self,
        id: &str,
        node: Option<&str>,
    ) -> Result<(String, Vec<Value>), CentralError> {
        let node = self.node_of(id, node)?;
        let id_s = id.to_string();
        let records = self
            .query(
                "SELECT seq, at_ms, kind, body FROM agentgate_audit
                 WHERE node = $1 AND session = $2 ORDER BY seq",
                &[&node, &id_s],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok((node, sessions::timeline(id, records)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sessions_query_reads_the_page_outside_and_the_rows_inside() {
        let sql = sessions_sql();
        let (inner, outer) = sql.split_once("LIMIT $10)").unwrap();
        assert!(
            !inner.contains("p.ob") && !inner.contains("p.cb"),
            "{inner}"
        );
        assert!(
            !outer.contains("o.b->>") && !outer.contains("c.b->>"),
            "{outer}"
        );
        assert!(
            outer.contains("(p.ob->>'started_ms')::numeric::bigint"),
            "{outer}"
        );
        assert!(
            outer.contains("(p.cb->>'ended_ms')::numeric::bigint"),
            "{outer}"
        );
    }
}
