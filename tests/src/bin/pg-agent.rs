//! A tokio-postgres "agent" for the end-to-end tests: runs one scenario against a conninfo and
//! prints what it saw as one JSON object, so the test can compare a run through the gateway
//! with a direct one. Uses binary formats, prepared statements, transactions, COPY, pipelining
//! and cancel, as a driver does.
//!
//! usage: pg-agent <script|cancel|pipeline|abort|ping> <conninfo>
//!        pg-agent rows <conninfo> <statements JSON>
//!        pg-agent reexec <conninfo> <sql>
//!
//! `rows` prepares and runs each statement (`{"sql": ..., "params": [text, ...]}`) in binary
//! format and prints every value as it came (see `render`); `reexec` prepares `sql` once and
//! executes it again each time a line arrives on stdin, one JSON line of rows per execution (a
//! test changes the gateway's policy in between).
//!
//!        pg-agent loop <conninfo> <max seconds>
//!
//! `loop` runs one SELECT after another (simple protocol: one Query, one round trip),
//! reconnecting whenever the session ends or the connection is refused, until a line (or EOF)
//! arrives on stdin or the time is up; then prints every SELECT that ran as
//! `[connection, sent_us, server_us]`: the connection's number (this agent's), when the Query
//! was sent (this clock, microseconds) and the server's `clock_timestamp()` when it ran.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "loop" {
        let secs = args[3].parse().unwrap_or(60);
        println!("{}", select_loop(&args[2], Duration::from_secs(secs)).await);
        return;
    }
    let extra = matches!(args.get(1).map(String::as_str), Some("rows" | "reexec"));
    if args.len() != 3 + usize::from(extra) {
        eprintln!(
            "usage: pg-agent <script|cancel|pipeline|abort|ping> <conninfo>\n       \
             pg-agent <rows|reexec> <conninfo> <statements JSON | sql>"
        );
        std::process::exit(2);
    }
    let (client, conn) = match tokio_postgres::connect(&args[2], NoTls).await {
        Ok(c) => c,
        Err(e) => {
            println!("{}", json!({"connect_error": describe(&e)}));
            return;
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection: {e}");
        }
    });
    let out = match args[1].as_str() {
        "script" => script(&client).await,
        "cancel" => cancel(&client).await,
        "pipeline" => pipeline(&client).await,
        "abort" => abort(&client).await,
        "rows" => rows(&client, &args[3]).await,
        "reexec" => reexec(&client, &args[3]).await,
        "ping" => outcome(
            client.query_one("SELECT current_user::text", &[]).await,
            |r| json!({"user": r.get::<_, String>(0)}),
        ),
        other => json!({"error": format!("unknown scenario {other}")}),
    };
    println!("{out}");
}

fn describe(e: &tokio_postgres::Error) -> Value {
    match e.as_db_error() {
        Some(db) => json!({"sqlstate": db.code().code(), "message": db.message()}),
        None => json!({"sqlstate": null, "message": e.to_string()}),
    }
}

fn outcome<T>(r: Result<T, tokio_postgres::Error>, ok: impl FnOnce(T) -> Value) -> Value {
    match r {
        Ok(v) => ok(v),
        Err(e) => json!({"error": describe(&e)}),
    }
}

/// Types in binary format, a prepared statement re-executed, a rolled-back and a committed
/// transaction, COPY in and out. Works on table `items`, which the test creates.
async fn script(c: &Client) -> Value {
    let mut steps = Vec::new();
    let insert = match c
        .prepare("INSERT INTO items (id, name, price, data, tags, flag, at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .await
    {
        Ok(s) => s,
        Err(e) => return json!({"prepare_error": describe(&e)}),
    };
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for i in 1..=20i32 {
        let name = format!("item-{i}");
        let data: Vec<u8> = (0..(i as u8)).collect();
        let tags = vec![format!("t{}", i % 3), "all".to_string()];
        let r = c
            .execute(
                &insert,
                &[
                    &i,
                    &name,
                    &(i as f64 * 1.5),
                    &data,
                    &tags,
                    &(i % 2 == 0),
                    &at,
                ],
            )
            .await;
        steps.push(outcome(r, |n| json!(n)));
    }
    let rows = c
        .query(
            "SELECT id, name, price, data, tags, flag, at FROM items WHERE id <= $1 ORDER BY id",
            &[&5i32],
        )
        .await;
    steps.push(outcome(rows, |rows| {
        rows.iter()
            .map(|r| {
                let data: Vec<u8> = r.get(3);
                let tags: Vec<String> = r.get(4);
                let at: SystemTime = r.get(6);
                json!([
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1),
                    r.get::<_, f64>(2),
                    data,
                    tags,
                    r.get::<_, bool>(5),
                    at.duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ])
            })
            .collect::<Value>()
    }));
    // A rolled-back transaction leaves nothing; a committed one stays.
    let tx = async {
        c.batch_execute("BEGIN").await?;
        c.execute("DELETE FROM items WHERE id > $1", &[&10i32])
            .await?;
        c.batch_execute("ROLLBACK").await?;
        c.batch_execute("BEGIN").await?;
        let n = c
            .execute("UPDATE items SET name = name || '!' WHERE id % 5 = 0", &[])
            .await?;
        c.batch_execute("COMMIT").await?;
        let count: i64 = c.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
        Ok::<_, tokio_postgres::Error>(json!({"updated": n, "count": count}))
    };
    steps.push(outcome(tx.await, |v| v));
    // COPY in (text format) and out.
    let copied = async {
        let sink = c.copy_in("COPY items (id, name, price) FROM STDIN").await?;
        pin_mut!(sink);
        let mut text = String::new();
        for i in 100..1100 {
            text.push_str(&format!("{i}\tcopied-{i}\t{}.25\n", i));
        }
        sink.send(Bytes::from(text)).await?;
        let n = sink.finish().await?;
        let stream = c
            .copy_out("COPY (SELECT id, name FROM items WHERE id >= 1095 ORDER BY id) TO STDOUT")
            .await?;
        let chunks: Vec<Bytes> = stream.try_collect().await?;
        let out: Vec<u8> = chunks.concat();
        Ok::<_, tokio_postgres::Error>(
            json!({"copied_in": n, "copied_out": String::from_utf8_lossy(&out)}),
        )
    };
    steps.push(outcome(copied.await, |v| v));
    // A big value both ways (a message far over the relay's 64 KiB buffers).
    let big = "x".repeat(3 << 20);
    let r = c
        .query_one("SELECT length($1::text), md5($1::text)", &[&big])
        .await;
    steps.push(outcome(r, |r| {
        json!([r.get::<_, i32>(0), r.get::<_, String>(1)])
    }));
    let notice = c.simple_query("SELECT 'simple', 1 + 1").await;
    steps.push(outcome(notice, |msgs| {
        msgs.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(json!([r.get(0), r.get(1)])),
                _ => None,
            })
            .collect::<Value>()
    }));
    json!({"steps": steps})
}

/// Cancels a long sleep after one second through the cancel token (a new connection, which
/// the gateway captures like any other).
async fn cancel(c: &Client) -> Value {
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        token.cancel_query(NoTls).await.map_err(|e| e.to_string())
    });
    let r = c.simple_query("SELECT pg_sleep(30)").await;
    let sent = canceller.await.map_err(|e| e.to_string()).and_then(|r| r);
    let after = c
        .query_one("SELECT 42", &[])
        .await
        .map(|r| r.get::<_, i32>(0));
    json!({
        "code": r.as_ref().err().and_then(|e| e.code().map(|c| c.code().to_string())),
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "cancel_sent": sent.is_ok(),
        "cancel_error": sent.err(),
        "usable_after": after.ok(),
    })
}

/// Three statements pipelined on one connection (tokio-postgres sends them without waiting),
/// the middle one a DROP TABLE.
async fn pipeline(c: &Client) -> Value {
    let a = c.execute("INSERT INTO items (id, name) VALUES (5001, 'a')", &[]);
    let b = c.execute("DROP TABLE items", &[]);
    let d = c.execute("INSERT INTO items (id, name) VALUES (5002, 'c')", &[]);
    let (a, b, d) = futures_util::join!(a, b, d);
    let after = c
        .query_one("SELECT count(*) FROM items WHERE id IN (5001, 5002)", &[])
        .await
        .map(|r| r.get::<_, i64>(0));
    json!({
        "first": outcome(a, |n| json!(n)),
        "drop": outcome(b, |n| json!(n)),
        "third": outcome(d, |n| json!(n)),
        "both_inserted": outcome(after, |n| json!(n)),
    })
}

/// A denied statement inside a transaction aborts it, as any error would: the insert before it
/// is rolled back at COMMIT.
async fn abort(c: &Client) -> Value {
    let steps = async {
        c.batch_execute("BEGIN").await?;
        c.execute("INSERT INTO items (id, name) VALUES (6001, 'in-tx')", &[])
            .await?;
        Ok::<_, tokio_postgres::Error>(())
    };
    let begin = outcome(steps.await, |_| json!("ok"));
    let denied = c.batch_execute("DROP TABLE items").await;
    let in_failed_tx = c.query_one("SELECT 1", &[]).await;
    let commit = c.simple_query("COMMIT").await;
    let commit_tag = outcome(commit, |msgs| {
        msgs.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(json!(n)),
                _ => None,
            })
            .collect::<Value>()
    });
    let kept = c
        .query_one("SELECT count(*) FROM items WHERE id = 6001", &[])
        .await
        .map(|r| r.get::<_, i64>(0));
    json!({
        "begin": begin,
        "denied": outcome(denied, |_| json!("ran")),
        "next_in_tx": outcome(in_failed_tx, |_| json!("ran")),
        "commit": commit_tag,
        "kept": outcome(kept, |n| json!(n)),
    })
}

/// A value as the server sent it, whatever its type (NULL included).
struct Raw(Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A binary-format value as JSON: NULL as null; text-like types as their text; jsonb as its
/// text after checking the version byte (1); int2/4/8 as numbers (if the length is right);
/// anything else, or a value of the wrong shape, as `\x<hex>` (or `bad <type>: <hex>`).
fn render(ty: &tokio_postgres::types::Type, v: &Raw) -> Value {
    use tokio_postgres::types::Type;
    let Some(b) = &v.0 else {
        return Value::Null;
    };
    let text = |b: &[u8]| json!(String::from_utf8_lossy(b));
    let bad = || json!(format!("bad {}: {}", ty.name(), hex(b)));
    match *ty {
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::JSON
        | Type::XML
        | Type::UNKNOWN
        | Type::CHAR => text(b),
        Type::JSONB => match b.split_first() {
            Some((1, rest)) => text(rest),
            _ => bad(),
        },
        Type::INT2 => {
            <[u8; 2]>::try_from(&b[..]).map_or_else(|_| bad(), |a| json!(i16::from_be_bytes(a)))
        }
        Type::INT4 => {
            <[u8; 4]>::try_from(&b[..]).map_or_else(|_| bad(), |a| json!(i32::from_be_bytes(a)))
        }
        Type::INT8 => {
            <[u8; 8]>::try_from(&b[..]).map_or_else(|_| bad(), |a| json!(i64::from_be_bytes(a)))
        }
        _ => json!(format!("\\x{}", hex(b))),
    }
}

/// An error with the fields the masking tests look at.
fn describe_full(e: &tokio_postgres::Error) -> Value {
    match e.as_db_error() {
        Some(db) => json!({
            "sqlstate": db.code().code(),
            "severity": db.severity(),
            "message": db.message(),
            "detail": db.detail(),
        }),
        None => json!({"sqlstate": null, "message": e.to_string()}),
    }
}

/// Prepares `sql` and runs it with text parameters; binary results (tokio-postgres asks for
/// binary for every column).
async fn run_rendered(c: &Client, stmt: &tokio_postgres::Statement, params: &[String]) -> Value {
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    match c.query(stmt, &params).await {
        Ok(rows) => {
            let columns: Vec<Value> = stmt
                .columns()
                .iter()
                .map(|c| json!([c.name(), c.type_().name()]))
                .collect();
            let rows: Vec<Value> = rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| render(r.columns()[i].type_(), &r.get::<_, Raw>(i)))
                        .collect()
                })
                .collect();
            json!({"columns": columns, "rows": rows})
        }
        Err(e) => json!({"error": describe_full(&e)}),
    }
}

/// Each statement of `spec` (`[{"sql": ..., "params": [text, ...]}, ...]`) prepared and run in
/// turn; a failure is reported in its place and the next statement still tried.
async fn rows(c: &Client, spec: &str) -> Value {
    let spec: Vec<Value> = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => return json!({"error": format!("bad statements JSON: {e}")}),
    };
    let mut results = Vec::new();
    for s in &spec {
        let sql = s["sql"].as_str().unwrap_or_default();
        let params: Vec<String> = s["params"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        match c.prepare(sql).await {
            Ok(stmt) => results.push(run_rendered(c, &stmt, &params).await),
            Err(e) => results.push(json!({"error": describe_full(&e)})),
        }
    }
    json!({"results": results})
}

/// Prepares `sql` once, then executes it once now and once more per line read on stdin, printing
/// one JSON line per execution. Stops at the end of stdin.
async fn reexec(c: &Client, sql: &str) -> Value {
    use std::io::{BufRead, Write};
    let stmt = match c.prepare(sql).await {
        Ok(s) => s,
        Err(e) => return json!({"prepare_error": describe_full(&e)}),
    };
    let mut lines = std::io::stdin().lock().lines();
    let mut n = 0;
    loop {
        let out = run_rendered(c, &stmt, &[]).await;
        println!("{out}");
        let _ = std::io::stdout().flush();
        n += 1;
        match lines.next() {
            Some(Ok(_)) => continue,
            _ => break,
        }
    }
    json!({"executions": n})
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// See `loop` in the module documentation.
async fn select_loop(conninfo: &str, max: Duration) -> Value {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let deadline = Instant::now() + max;
    let running = || !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline;
    let (mut ran, mut failed, mut connects, mut refused) = (Vec::new(), 0u64, 0u64, 0u64);
    while running() {
        let client = match tokio_postgres::connect(conninfo, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                connects += 1;
                client
            }
            Err(_) => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        while running() {
            let sent = unix_us();
            let got = client
                .simple_query(
                    "SELECT /* withdraw-probe */ (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
                )
                .await;
            let server = got.ok().and_then(|msgs| {
                msgs.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get(0).and_then(|v| v.parse::<i64>().ok())
                    }
                    _ => None,
                })
            });
            match server {
                Some(server) => ran.push(json!([connects, sent, server])),
                None => {
                    failed += 1;
                    break;
                }
            }
        }
    }
    json!({"ran": ran, "failed": failed, "connects": connects, "refused": refused})
}
