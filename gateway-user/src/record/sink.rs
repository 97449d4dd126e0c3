//! Ships the audit journal to a central PostgreSQL, so that a cluster has one audit view.
//!
//! The sink reads the record database through its own read-only connection (WAL lets it read
//! beside the gateway's writer; it never takes the shared [`Db`](super::Db) lock) and copies
//! every journal record, unchanged and with its chain links (`prev`, `hash`), into one central
//! table keyed by (node, seq). On every (re)connect it asks the central store where this node's
//! records end and continues after that, in batches of one statement each
//! (`ON CONFLICT DO NOTHING`, so a batch sent twice is stored once). While the central store is
//! down or refuses, it backs off (0.5 s doubling to 30 s) and retries; the gateway records
//! locally meanwhile, and retention keeps every record the central store does not have yet.
//!
//! Checks on the way: a record whose `prev` is not the hash of the record before it (locally,
//! or the last one the central store has) is a tamper warning; records pruned here before they
//! were shipped are a gap, said loudly; a central store holding a different chain under this
//! node's name (a replaced record database, two nodes with one name) stops the shipping until
//! someone resolves it, since shipping past it would mix two chains.
//!
//! Connections: TLS (rustls, certificate and name always verified against `sslrootcert` or the
//! web PKI roots) unless every host is loopback or a Unix socket; plain TCP elsewhere is refused
//! at start. TCP sockets come from the gateway's own connector, so its capture never redirects
//! them.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::{
    error::SqlState,
    tls::{ChannelBinding, TlsConnect},
    Client,
};
use tokio_util::sync::CancellationToken;

use super::journal;
use crate::{
    net::Connect,
    tls::{client_config, tls_server_end_point},
};

/// The central table. One row per journal record of every node; `body` is the record's JSON
/// text exactly as the node chained it (a `jsonb` would rewrite it and break the hashes).
pub const TABLE: &str = "agentgate_audit";

const CREATE_TABLE: &str = "
CREATE TABLE IF NOT EXISTS agentgate_audit (
    node text NOT NULL,
    seq bigint NOT NULL,
    at_ms bigint NOT NULL,
    kind text NOT NULL,
    session text,
    body text NOT NULL,
    prev text NOT NULL,
    hash text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, seq)
);
CREATE INDEX IF NOT EXISTS agentgate_audit_at ON agentgate_audit (at_ms);
CREATE INDEX IF NOT EXISTS agentgate_audit_session ON agentgate_audit (session);
";

const INSERT: &str = "
INSERT INTO agentgate_audit (node, seq, at_ms, kind, session, body, prev, hash)
SELECT $1::text, r.* FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::text[]) AS r
ON CONFLICT (node, seq) DO NOTHING";

/// The records after the last one shipped, by number (the journal's primary key).
pub(crate) const CATCH_UP: &str =
    "SELECT seq, at_ms, kind, session, body, prev, hash FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2";

/// Records per batch (one INSERT), and the bytes a batch stops growing at.
const BATCH: i64 = 1000;
const BATCH_BYTES: usize = 8 << 20;
/// How often the journal is looked at for new records when there was nothing to ship.
const POLL: Duration = Duration::from_millis(250);
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one statement to the central store may take before the connection is given up.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom the journal is shipped.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// libpq-style connection string (`host=… port=… dbname=… user=…`), without the password.
    pub conninfo: String,
    /// The password, read from a file when the sink connects.
    pub password_file: Option<PathBuf>,
    /// This node's name in the central table.
    pub node: String,
}

/// A checked sink configuration, ready to run.
pub struct Sink {
    /// Everything but the hosts' TLS modes and the password.
    base: tokio_postgres::Config,
    endpoints: Vec<Endpoint>,
    tls: Arc<rustls::ClientConfig>,
    password_file: Option<PathBuf>,
    node: String,
}

impl Sink {
    /// Checks the configuration: the connection string parses, plain connections go to
    /// loopback only, the root certificates and the password file can be read.
    pub fn new(config: SinkConfig) -> Result<Sink, String> {
        if config.node.trim().is_empty() {
            return Err("the node name is empty (--node-name)".into());
        }
        let split = split_conninfo(&config.conninfo)?;
        let mut base: tokio_postgres::Config = split
            .rest
            .parse()
            .map_err(|e| format!("connection string: {e}"))?;
        if base.get_user().is_none() {
            return Err("connection string: no `user=`".into());
        }
        if base.get_application_name().is_none() {
            base.application_name("agentgate-audit-sink");
        }
        let sslmode = split.sslmode.as_deref().unwrap_or("prefer");
        if !matches!(
            sslmode,
            "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
        ) {
            return Err(format!("connection string: unknown sslmode `{sslmode}`"));
        }
        let endpoints = endpoints(&base, sslmode)?;
        let tls = client_config(split.sslrootcert.as_deref().map(Path::new))
            .map_err(|e| format!("sslrootcert {e}"))?;
        if let Some(f) = &config.password_file {
            read_password(f)?;
        }
        Ok(Sink {
            base,
            endpoints,
            tls,
            password_file: config.password_file,
            node: config.node,
        })
    }

    /// Ships every record of the journal in `db` to the central store, from where the central
    /// store ends, until `stop`; then ships what is left once more and returns. `shipped` is
    /// kept at the highest record number known to be there (retention never deletes past it).
    pub async fn run<C: Connect>(
        self,
        db: PathBuf,
        connector: C,
        shipped: Arc<AtomicI64>,
        stop: CancellationToken,
    ) {
        let where_to = self
            .endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(
            node = self.node,
            central = where_to,
            "central audit sink started"
        );
        let connector = Arc::new(connector);
        let connector: ConnectFn = Arc::new(move |addr| {
            let c = connector.clone();
            Box::pin(async move { c.connect(addr).await })
        });
        let mut backoff = MIN_BACKOFF;
        let mut failures = 0u32;
        let mut local: Option<Local> = None;
        loop {
            let mut progress = false;
            let result = match &local {
                Some(l) => {
                    self.session(l, &connector, &shipped, &stop, &mut progress, failures)
                        .await
                }
                None => match Local::open(&db) {
                    Ok(l) => {
                        local = Some(l);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            let failure = match result {
                Ok(()) => return,
                Err(f) => f,
            };
            if progress {
                backoff = MIN_BACKOFF;
                failures = 0;
            }
            if stop.is_cancelled() {
                tracing::warn!(
                    node = self.node,
                    "central audit sink stopping with records not shipped: {}",
                    failure.message()
                );
                return;
            }
            failures += 1;
            let wait = match &failure {
                Failure::Diverged(_) => MAX_BACKOFF,
                _ => backoff,
            };
            match &failure {
                Failure::Central(e) if failures == 1 => tracing::warn!(
                    node = self.node,
                    "central audit store unavailable: {e}; the records stay here (retention keeps them) \
                     and are shipped when it is back; retrying in {wait:?}"
                ),
                Failure::Central(e) => tracing::warn!(
                    node = self.node,
                    failures,
                    "central audit store still unavailable: {e}; retrying in {wait:?}"
                ),
                Failure::Local(e) => tracing::error!(
                    node = self.node,
                    "central audit sink cannot read the record database: {e}; retrying in {wait:?}"
                ),
                Failure::Diverged(e) => tracing::error!(
                    node = self.node,
                    "central audit sink NOT SHIPPING: {e}; checking again in {wait:?}"
                ),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: set up, check where the central store ends, ship until stopped
    /// (`Ok`) or something fails. `progress` is set once a batch was stored or there was
    /// nothing left to ship (then the next failure starts the backoff afresh).
    async fn session(
        &self,
        local: &Local,
        connector: &ConnectFn,
        shipped: &AtomicI64,
        stop: &CancellationToken,
        progress: &mut bool,
        failures: u32,
    ) -> Result<(), Failure> {
        let client = self.connect(connector).await?;
        let (insert, central_last) = within(STATEMENT_TIMEOUT, async {
            ensure_table(&client).await?;
            let insert = client.prepare(INSERT).await?;
            let last = client
                .query_opt(
                    "SELECT seq, hash FROM agentgate_audit WHERE node = $1 ORDER BY seq DESC LIMIT 1",
                    &[&self.node],
                )
                .await?
                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
            Ok((insert, last))
        })
        .await?;
        self.check_same_chain(&client, local, central_last.as_ref())
            .await?;
        let (mut last_seq, mut last_hash) =
            central_last.unwrap_or_else(|| (0, journal::hex(&journal::GENESIS)));
        shipped.store(last_seq, Ordering::Relaxed);
        if failures > 0 {
            tracing::info!(
                node = self.node,
                central_seq = last_seq,
                "central audit store reachable again; shipping from record {}",
                last_seq + 1
            );
        } else {
            tracing::info!(
                node = self.node,
                central_seq = last_seq,
                "connected to the central audit store; shipping from record {}",
                last_seq + 1
            );
        }
        loop {
            let rows = local.after(last_seq).await?;
            if rows.is_empty() {
                *progress = true;
                // After the stop, one more look: the recorder has flushed by then.
                if stop.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            self.check_links(&rows, last_seq, &last_hash);
            let n = within(STATEMENT_TIMEOUT, async {
                let cols = Columns::of(&rows);
                client
                    .execute(
                        &insert,
                        &[
                            &self.node,
                            &cols.seq,
                            &cols.at_ms,
                            &cols.kind,
                            &cols.session,
                            &cols.body,
                            &cols.prev,
                            &cols.hash,
                        ],
                    )
                    .await
            })
            .await?;
            if n < rows.len() as u64 {
                self.check_already_there(&client, &rows).await?;
            }
            let end = rows.last().expect("not empty");
            last_seq = end.seq;
            last_hash = end.hash.clone();
            shipped.store(last_seq, Ordering::Relaxed);
            *progress = true;
            tracing::debug!(
                node = self.node,
                records = rows.len(),
                up_to = last_seq,
                "records shipped to the central audit store"
            );
        }
    }

    async fn connect(&self, connector: &ConnectFn) -> Result<Client, Failure> {
        let mut config = self.base.clone();
        if let Some(f) = &self.password_file {
            config.password(read_password(f).map_err(Failure::Central)?);
        }
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut errors = Vec::new();
        for ep in &self.endpoints {
            match tokio::time::timeout(timeout, self.connect_to(ep, &config, connector)).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => errors.push(format!("{ep}: {e}")),
                Err(_) => errors.push(format!("{ep}: no answer within {timeout:?}")),
            }
        }
        Err(Failure::Central(errors.join("; ")))
    }

    async fn connect_to(
        &self,
        ep: &Endpoint,
        config: &tokio_postgres::Config,
        connector: &ConnectFn,
    ) -> Result<Client, String> {
        let stream = open_stream(&ep.to, connector).await?;
        let mut config = config.clone();
        config.ssl_mode(ep.mode);
        let tls = SinkTls {
            config: self.tls.clone(),
            name: ep.server_name.clone(),
        };
        let (client, connection) = connect_raw(&config, stream, tls)
            .await
            .map_err(|e| pg_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("central audit store connection: {}", pg_error(&e));
            }
        });
        Ok(client)
    }

    /// The central store's chain of this node must be this node's chain: it may not reach
    /// beyond this journal's end, and where both have a record, the hashes agree.
    async fn check_same_chain(
        &self,
        client: &Client,
        local: &Local,
        central_last: Option<&(i64, String)>,
    ) -> Result<(), Failure> {
        let Some((c_seq, c_hash)) = central_last else {
            return Ok(());
        };
        let c_seq = *c_seq;
        let (local_tip, overlap) = local
            .with(move |conn| {
                let tip = journal::tip(conn)?.seq;
                let overlap: Option<(i64, String)> = conn
                    .query_row(
                        "SELECT seq, hash FROM audit_log WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1",
                        [c_seq],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                Ok((tip, overlap))
            })
            .await?;
        if local_tip < c_seq {
            return Err(Failure::Diverged(format!(
                "the central store has records of node `{}` up to {c_seq}, but this node's journal \
                 ends at {local_tip}: the record database was replaced, or another node ships under \
                 the same name. Give this node another --node-name, or move that node's rows out of \
                 {TABLE}",
                self.node
            )));
        }
        let Some((s, local_hash)) = overlap else {
            return Ok(());
        };
        let central_hash = if s == c_seq {
            Some(c_hash.clone())
        } else {
            within(STATEMENT_TIMEOUT, async {
                Ok(client
                    .query_opt(
                        "SELECT hash FROM agentgate_audit WHERE node = $1 AND seq = $2",
                        &[&self.node, &s],
                    )
                    .await?
                    .map(|r| r.get::<_, String>(0)))
            })
            .await?
        };
        match central_hash {
            Some(h) if h != local_hash => Err(Failure::Diverged(format!(
                "record {s} of node `{}` in the central store is not this node's record {s} \
                 (hash {h} there, {local_hash} here): the record database was replaced, another \
                 node ships under the same name, or one of the copies was altered. Give this node \
                 another --node-name, or move that node's rows out of {TABLE}",
                self.node
            ))),
            _ => Ok(()),
        }
    }

    /// Tamper warnings for broken links, and the gap when records were pruned or deleted here
    /// before they were shipped.
    fn check_links(&self, rows: &[Row], mut last_seq: i64, last_hash: &str) {
        let mut last_hash = last_hash.to_string();
        for r in rows {
            if r.seq > last_seq + 1 {
                tracing::error!(
                    node = self.node,
                    from = last_seq + 1,
                    to = r.seq - 1,
                    "AUDIT GAP: records {}..={} of this node never reached the central store: they \
                     were pruned (or deleted) here before they could be shipped; shipping what \
                     exists from record {}",
                    last_seq + 1,
                    r.seq - 1,
                    r.seq
                );
            } else if r.prev != last_hash {
                tracing::error!(
                    node = self.node,
                    seq = r.seq,
                    "AUDIT TAMPER WARNING: record {} does not follow record {last_seq} (its prev \
                     {} is not that record's hash {last_hash}): a record was edited, deleted or \
                     reordered here or in the central store; shipping it as it is",
                    r.seq,
                    r.prev
                );
            }
            last_seq = r.seq;
            last_hash.clone_from(&r.hash);
        }
    }

    /// Some records of a batch were in the central store already: they must be these.
    async fn check_already_there(&self, client: &Client, rows: &[Row]) -> Result<(), Failure> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let there: HashMap<i64, String> = within(STATEMENT_TIMEOUT, async {
            Ok(client
                .query(
                    "SELECT seq, hash FROM agentgate_audit WHERE node = $1 AND seq = ANY($2)",
                    &[&self.node, &seqs],
                )
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
        .await?;
        for r in rows {
            match there.get(&r.seq) {
                Some(h) if *h == r.hash => {}
                Some(h) => {
                    return Err(Failure::Diverged(format!(
                        "record {} of node `{}` was already in the central store with another \
                         hash ({h} there, {} here): another node ships under the same name, or \
                         the central copy was altered",
                        r.seq, self.node, r.hash
                    )))
                }
                None => {
                    return Err(Failure::Central(format!(
                        "record {} of node `{}` is not in the central store after it was sent",
                        r.seq, self.node
                    )))
                }
            }
        }
        Ok(())
    }
}

/// A client of the central store for reading it (`agentgate agents --central`, `sessions
/// --central`): the sink's own checks of the connection string, TLS and password file, over
/// plain sockets (the reader is a command, not the gateway).
pub(crate) async fn connect_reader(
    conninfo: &str,
    password_file: Option<PathBuf>,
) -> Result<Client, String> {
    let mut sink = Sink::new(SinkConfig {
        conninfo: conninfo.to_string(),
        password_file,
        node: "cluster-view".into(),
    })?;
    if sink.base.get_application_name() == Some("agentgate-audit-sink") {
        sink.base.application_name("agentgate-cluster-view");
    }
    let connector: ConnectFn = Arc::new(|addr| Box::pin(tokio::net::TcpStream::connect(addr)));
    sink.connect(&connector)
        .await
        .map_err(|f| f.message().to_string())
}

type PgConnection = tokio_postgres::Connection<Box<dyn Io>, TlsStream<Box<dyn Io>>>;
type Connecting<'a> = Pin<
    Box<dyn Future<Output = Result<(Client, PgConnection), tokio_postgres::Error>> + Send + 'a>,
>;

/// `Config::connect_raw`, boxed: awaited inline, its future's inner borrows defeat the proof
/// that the sink's future is `Send` (a rustc limitation with higher-ranked lifetimes).
fn connect_raw<'a>(
    config: &'a tokio_postgres::Config,
    stream: Box<dyn Io>,
    tls: SinkTls,
) -> Connecting<'a> {
    Box::pin(config.connect_raw(stream, tls))
}

/// A connection to `to`: TCP sockets are the gateway's own (capture leaves them alone).
async fn open_stream(to: &Peer, connector: &ConnectFn) -> Result<Box<dyn Io>, String> {
    let stream: Box<dyn Io> = match to {
        Peer::Unix(path) => Box::new(
            tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| e.to_string())?,
        ),
        Peer::Tcp { host, port } => {
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, *port)],
                Err(_) => tokio::net::lookup_host((host.clone(), *port))
                    .await
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?
                    .collect(),
            };
            let mut last = format!("{host} resolved to no addresses");
            let mut tcp = None;
            for addr in addrs {
                match connector(addr).await {
                    Ok(s) => {
                        tcp = Some(s);
                        break;
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            let tcp = tcp.ok_or(last)?;
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(10))
                .with_retries(3);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            Box::new(tcp)
        }
    };
    Ok(stream)
}

/// Creates the central table when it is missing. A sink whose role may only read and insert
/// works with a table made beforehand.
async fn ensure_table(client: &Client) -> Result<(), tokio_postgres::Error> {
    async fn exists(client: &Client) -> Result<bool, tokio_postgres::Error> {
        client
            .query_one("SELECT to_regclass('agentgate_audit') IS NOT NULL", &[])
            .await
            .map(|r| r.get::<_, bool>(0))
    }
    if exists(client).await? {
        return Ok(());
    }
    match client.batch_execute(CREATE_TABLE).await {
        Ok(()) => {
            tracing::info!("central audit store: table {TABLE} created");
            Ok(())
        }
        // Another node created it at the same moment.
        Err(e)
            if matches!(
                e.code(),
                Some(&SqlState::UNIQUE_VIOLATION)
                    | Some(&SqlState::DUPLICATE_TABLE)
                    | Some(&SqlState::DUPLICATE_OBJECT)
            ) && exists(client).await? =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Runs `f` against the central store, failing it after `limit`.
async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Central(pg_error(&e))),
        Err(_) => Err(Failure::Central(format!(
            "no answer within {limit:?}; reconnecting"
        ))),
    }
}

pub(crate) fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(x) = source {
        let more = x.to_string();
        if !s.contains(&more) {
            s += ": ";
            s += &more;
        }
        source = x.source();
    }
    s
}

fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("password file {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

#[derive(Debug)]
enum Failure {
    /// The central store is unreachable, refused or failed: retried with backoff.
    Central(String),
    /// The local journal could not be read: retried with backoff.
    Local(String),
    /// The central store holds another chain under this node's name: nothing is shipped.
    Diverged(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Central(m) | Failure::Local(m) | Failure::Diverged(m) => m,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The local journal, read-only
// ---------------------------------------------------------------------------------------------

struct Row {
    seq: i64,
    at_ms: i64,
    kind: String,
    session: Option<String>,
    body: String,
    prev: String,
    hash: String,
}

/// A batch as column arrays, for one `unnest` INSERT.
struct Columns {
    seq: Vec<i64>,
    at_ms: Vec<i64>,
    kind: Vec<String>,
    session: Vec<Option<String>>,
    body: Vec<String>,
    prev: Vec<String>,
    hash: Vec<String>,
}

impl Columns {
    fn of(rows: &[Row]) -> Columns {
        Columns {
            seq: rows.iter().map(|r| r.seq).collect(),
            at_ms: rows.iter().map(|r| r.at_ms).collect(),
            kind: rows.iter().map(|r| r.kind.clone()).collect(),
            session: rows.iter().map(|r| r.session.clone()).collect(),
            body: rows.iter().map(|r| r.body.clone()).collect(),
            prev: rows.iter().map(|r| r.prev.clone()).collect(),
            hash: rows.iter().map(|r| r.hash.clone()).collect(),
        }
    }
}

/// The sink's own read-only connection to the record database.
struct Local(Arc<Mutex<Connection>>);

impl Local {
    fn open(path: &Path) -> Result<Local, Failure> {
        let conn = crate::audit::open(path).map_err(|e| Failure::Local(e.to_string()))?;
        Ok(Local(Arc::new(Mutex::new(conn))))
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Failure> {
        let conn = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| Failure::Local(e.to_string()))?
        .map_err(|e| Failure::Local(e.to_string()))
    }

    /// The next records after `seq`, in order: up to [`BATCH`] of them and about
    /// [`BATCH_BYTES`] (at least one).
    async fn after(&self, seq: i64) -> Result<Vec<Row>, Failure> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(CATCH_UP)?;
            let mut rows = stmt.query([seq, BATCH])?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            while let Some(r) = rows.next()? {
                let row = Row {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    kind: r.get(2)?,
                    session: r.get(3)?,
                    body: r.get(4)?,
                    prev: r.get(5)?,
                    hash: r.get(6)?,
                };
                bytes += row.body.len() + row.kind.len() + 160;
                out.push(row);
                if bytes >= BATCH_BYTES {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// The connection string
// ---------------------------------------------------------------------------------------------
/// Opens a TCP connection (the gateway's own socket).
type ConnectFn = Arc<
    dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = io::Result<tokio::net::TcpStream>> + Send>>
        + Send
        + Sync,
>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct SinkTls {
    config: Arc<rustls::ClientConfig>,
    name: Option<ServerName<'static>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for SinkTls {
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self
                .name
                .ok_or_else(|| io::Error::other("TLS over a Unix socket"))?;
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            let end_point = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| tls_server_end_point(c.as_ref()));
            Ok(TlsStream {
                inner: tls,
                end_point,
            })
        })
    }
}

struct TlsStream<S> {
    inner: tokio_rustls::client::TlsStream<S>,
    end_point: Option<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.end_point {
            Some(h) => ChannelBinding::tls_server_end_point(h.clone()),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[path = "sink_conninfo.rs"]
mod conninfo;
use conninfo::{endpoints, split_conninfo, Endpoint, Peer};

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
