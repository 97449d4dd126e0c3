//! The client of `cargo xtask bench --only masking`: runs one query and reads its result row by
//! row without keeping it (tokio-postgres streams rows; at most a message batch is buffered),
//! counting the bytes it receives on the socket while the query runs.
//!
//! usage: bench-stream <simple|extended> <conninfo> <query>
//!
//! `simple`: the simple query protocol, every value in text format (as psql). `extended`: Parse /
//! Bind / Execute with binary results (as tokio-postgres and most drivers with typed rows).
//!
//! Prints one JSON object: `{"rows", "bytes", "secs", "at_values", "first_row"}` (`bytes`:
//! received from sending the query to the end of the result; `at_values`: text values that
//! contain `@`; `first_row`: `[column name, text value]` pairs in column order, the value the
//! type name for a binary non-text value), or `{"error"}` with exit status 1.

use std::{
    io,
    pin::Pin,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::{pin_mut, TryStreamExt};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_postgres::{
    config::Host,
    types::{ToSql, Type},
    Config, NoTls, SimpleQueryMessage,
};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 || !["simple", "extended"].contains(&args[1].as_str()) {
        eprintln!("usage: bench-stream <simple|extended> <conninfo> <query>");
        std::process::exit(2);
    }
    match run(args[1] == "extended", &args[2], &args[3]).await {
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", json!({ "error": e }));
            std::process::exit(1);
        }
    }
}

async fn run(extended: bool, conninfo: &str, query: &str) -> Result<Value, String> {
    let config = Config::from_str(conninfo).map_err(|e| format!("conninfo: {e}"))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => return Err("conninfo: one TCP host expected".into()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| format!("connect {host}:{port}: timed out"))?
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let received = Arc::new(AtomicU64::new(0));
    let stream = Counting {
        inner: tcp,
        received: received.clone(),
    };
    let (client, conn) = config
        .connect_raw(stream, NoTls)
        .await
        .map_err(|e| describe(&e))?;
    let conn = tokio::spawn(conn);

    let start_bytes = received.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut rows = 0u64;
    let mut at_values = 0u64;
    let mut first_row = Vec::new();
    if extended {
        let none: [&(dyn ToSql + Sync); 0] = [];
        let stream = client
            .query_raw(query, none)
            .await
            .map_err(|e| describe(&e))?;
        pin_mut!(stream);
        while let Some(row) = stream.try_next().await.map_err(|e| describe(&e))? {
            rows += 1;
            for (i, c) in row.columns().iter().enumerate() {
                let text = matches!(
                    *c.type_(),
                    Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME
                );
                let value: Option<&str> = if text {
                    row.try_get(i).map_err(|e| describe(&e))?
                } else {
                    None
                };
                if value.is_some_and(|v| v.contains('@')) {
                    at_values += 1;
                }
                if rows == 1 {
                    let shown = match value {
                        Some(v) => json!(v),
                        None if text => Value::Null,
                        None => json!(format!("({})", c.type_().name())),
                    };
                    first_row.push(json!([c.name(), shown]));
                }
            }
        }
    } else {
        let stream = client
            .simple_query_raw(query)
            .await
            .map_err(|e| describe(&e))?;
        pin_mut!(stream);
        while let Some(msg) = stream.try_next().await.map_err(|e| describe(&e))? {
            let SimpleQueryMessage::Row(row) = msg else {
                continue;
            };
            rows += 1;
            for i in 0..row.len() {
                let value = row.try_get(i).map_err(|e| describe(&e))?;
                if value.is_some_and(|v| v.contains('@')) {
                    at_values += 1;
                }
                if rows == 1 {
                    first_row.push(json!([row.columns()[i].name(), value]));
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    drop(client);
    let _ = conn.await;
    Ok(json!({
        "rows": rows,
        "bytes": bytes,
        "secs": secs,
        "at_values": at_values,
        "first_row": first_row,
    }))
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The TCP stream, counting the bytes read from it.
struct Counting {
    inner: TcpStream,
    received: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counting {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
