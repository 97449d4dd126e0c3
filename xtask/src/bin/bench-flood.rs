//! The client of `cargo xtask bench --only flood`: holds many PostgreSQL sessions open at once
//! through the gateway, plus connections that never finish their startup message (slowloris),
//! so the gateway's memory can be read at the peak and after everything has closed.
//!
//! usage: bench-flood <conninfo> <sessions> <stalled> <logins at once> <query>
//!
//! First `stalled` TCP connections to the conninfo's host and port that send the first bytes of
//! a startup message and then nothing. Then `sessions` sessions (tokio-postgres), at most
//! `logins at once` of them logging in at a time; each logs in, runs `query` (simple query
//! protocol) and then stays open, idle. When every session has either run its query or failed,
//! prints one JSON line `{"open", "failed", "errors", "secs"}` (`errors`: the first few
//! distinct messages; `secs`: from the first connect until then) and waits for a line on stdin;
//! then closes everything, waits for the sessions' connections to end and prints
//! `{"closed_secs"}`. Exit status 1 with `{"error"}` if the arguments are wrong.

use std::{
    io::BufRead,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::{
    io::AsyncWriteExt,
    net::TcpStream,
    sync::{mpsc, watch, Semaphore},
};
use tokio_postgres::{config::Host, Config, NoTls};

/// Distinct error messages reported (a flood that fails tends to fail the same way each time).
const MAX_ERRORS: usize = 5;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (args.len() == 6)
        .then(|| {
            Some((
                args[2].parse::<usize>().ok()?,
                args[3].parse::<usize>().ok()?,
                args[4].parse::<usize>().ok().filter(|n| *n > 0)?,
            ))
        })
        .flatten();
    let Some((sessions, stalled, at_once)) = parsed else {
        eprintln!("usage: bench-flood <conninfo> <sessions> <stalled> <logins at once> <query>");
        std::process::exit(2);
    };
    if let Err(e) = run(&args[1], sessions, stalled, at_once, &args[5]).await {
        println!("{}", json!({ "error": e }));
        std::process::exit(1);
    }
}

async fn run(
    conninfo: &str,
    sessions: usize,
    stalled: usize,
    at_once: usize,
    query: &str,
) -> Result<(), String> {
    let config = Config::from_str(conninfo).map_err(|e| format!("conninfo: {e}"))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => return Err("conninfo: one TCP host expected".into()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let started = Instant::now();

    // A startup message announces its length first: these announce 64 bytes and send 13, so the
    // gateway waits for the rest (until its startup timeout, longer than this client runs).
    let mut partial = Vec::new();
    partial.extend_from_slice(&64u32.to_be_bytes());
    partial.extend_from_slice(&196_608u32.to_be_bytes());
    partial.extend_from_slice(b"user\0");
    let mut held = Vec::with_capacity(stalled);
    for _ in 0..stalled {
        let mut s = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("stalled connection to {host}:{port}: {e}"))?;
        s.write_all(&partial)
            .await
            .map_err(|e| format!("stalled connection: {e}"))?;
        held.push(s);
    }

    let gate = Arc::new(Semaphore::new(at_once));
    let (close_tx, close_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let query: Arc<str> = query.into();
    let mut tasks = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (config, gate, query, done) =
            (config.clone(), gate.clone(), query.clone(), done_tx.clone());
        let mut close = close_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let opened = async {
                let (client, conn) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
                let conn = tokio::spawn(conn);
                client
                    .simple_query(&query)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((client, conn))
            }
            .await;
            drop(permit);
            match opened {
                Ok((client, conn)) => {
                    let _ = done.send(Ok(()));
                    let _ = close.wait_for(|c| *c).await;
                    // Dropping the client sends Terminate; the connection task then ends.
                    drop(client);
                    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            }
        }));
    }
    drop(done_tx);
    let (mut open, mut failed, mut errors) = (0usize, 0usize, Vec::<String>::new());
    while open + failed < sessions {
        match done_rx.recv().await {
            Some(Ok(())) => open += 1,
            Some(Err(e)) => {
                failed += 1;
                if errors.len() < MAX_ERRORS && !errors.contains(&e) {
                    errors.push(e);
                }
            }
            None => break,
        }
    }
    println!(
        "{}",
        json!({"open": open, "failed": failed, "errors": errors,
               "secs": started.elapsed().as_secs_f64()})
    );

    // Wait for the word to close (a blocking read: tokio's stdin needs a feature not enabled).
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
    .await;
    let closing = Instant::now();
    drop(held);
    let _ = close_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "{}",
        json!({"closed_secs": closing.elapsed().as_secs_f64()})
    );
    Ok(())
}
