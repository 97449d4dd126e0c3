//! A stand-in agent for the tests: run inside a cgroup (and network namespace), it connects the
//! way any unmodified client would and reports what it saw as one JSON line.
//!
//!   agent-probe connect ADDR            connect, read the server's greeting line
//!   agent-probe flood ADDR N BYTES      N concurrent connections, each sends BYTES distinct
//!                                       pseudo-random bytes and checks the echo's checksum
//!   agent-probe hold ADDR SECS          connect, read the greeting, then wait (at most SECS) for
//!                                       the connection to end; report when it did
//!   agent-probe connect-bench ADDR N    N sequential connect() calls, latency statistics
//!   agent-probe throughput ADDR BYTES   send BYTES to a sink server, report MB/s

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use agentgate_tests::{fnv1a, payload};
use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = match args.get(1).and_then(|a| a.parse().ok()) {
        Some(a) => a,
        None => {
            eprintln!("usage: agent-probe connect|flood ADDR [N BYTES]");
            return ExitCode::from(64);
        }
    };
    match args[0].as_str() {
        "connect" => connect(addr),
        "flood" => {
            let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
            let bytes = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4096);
            flood(addr, n, bytes)
        }
        "hold" => {
            let secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
            hold(addr, secs)
        }
        "connect-bench" => {
            let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
            connect_bench(addr, n)
        }
        "throughput" => {
            let bytes = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1 << 30);
            throughput(addr, bytes)
        }
        other => {
            eprintln!("unknown mode {other}");
            ExitCode::from(64)
        }
    }
}

fn connect(addr: SocketAddr) -> ExitCode {
    let out = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut greeting = String::new();
            let _ = BufReader::new(&s).read_line(&mut greeting);
            json!({
                "pid": std::process::id(),
                "local": s.local_addr().map(|a| a.to_string()).ok(),
                "peer": s.peer_addr().map(|a| a.to_string()).ok(),
                "greeting": greeting.trim_end(),
            })
        }
        Err(e) => {
            json!({"pid": std::process::id(), "error": e.to_string(), "errno": e.raw_os_error()})
        }
    };
    println!("{out}");
    ExitCode::SUCCESS
}

fn flood(addr: SocketAddr, n: usize, bytes: usize) -> ExitCode {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let data = payload(i as u64 + 1, bytes);
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                    .map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(60))).ok();
                // All connections are open at once before any data moves.
                barrier.wait();
                let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
                let mut greeting = String::new();
                reader
                    .read_line(&mut greeting)
                    .map_err(|e| format!("greeting: {e}"))?;
                let writer = std::thread::spawn({
                    let mut s = s.try_clone().map_err(|e| e.to_string())?;
                    move || {
                        s.write_all(&data)?;
                        s.shutdown(Shutdown::Write)
                    }
                });
                let mut back = Vec::with_capacity(bytes);
                reader
                    .read_to_end(&mut back)
                    .map_err(|e| format!("read: {e}"))?;
                writer
                    .join()
                    .map_err(|_| "writer panicked".to_string())?
                    .map_err(|e| format!("write: {e}"))?;
                let want = fnv1a(&payload(i as u64 + 1, bytes));
                if back.len() != bytes || fnv1a(&back) != want {
                    return Err(format!(
                        "connection {i}: got {} bytes, checksum mismatch",
                        back.len()
                    ));
                }
                Ok(())
            })
        })
        .collect();
    let mut ok = 0;
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("thread panicked".into()),
        }
    }
    println!(
        "{}",
        json!({"ok": ok, "failed": errors.len(), "errors": errors.iter().take(5).collect::<Vec<_>>()})
    );
    ExitCode::SUCCESS
}

fn connect_bench(addr: SocketAddr, n: usize) -> ExitCode {
    let mut micros = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        match TcpStream::connect(addr) {
            Ok(s) => {
                micros.push(t.elapsed().as_secs_f64() * 1e6);
                drop(s);
            }
            Err(e) => {
                println!("{}", json!({"error": e.to_string()}));
                return ExitCode::from(1);
            }
        }
    }
    micros.sort_by(f64::total_cmp);
    let pct = |p: f64| micros[((micros.len() as f64 - 1.0) * p) as usize];
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    println!(
        "{}",
        json!({"n": n, "mean_us": mean, "p50_us": pct(0.5), "p99_us": pct(0.99)})
    );
    ExitCode::SUCCESS
}

fn throughput(addr: SocketAddr, bytes: u64) -> ExitCode {
    let run = || -> std::io::Result<f64> {
        let mut s = TcpStream::connect(addr)?;
        let mut greeting = String::new();
        BufReader::new(&s).read_line(&mut greeting)?;
        let chunk = payload(7, 1 << 20);
        let t = std::time::Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let n = chunk.len().min((bytes - sent) as usize);
            s.write_all(&chunk[..n])?;
            sent += n as u64;
        }
        s.shutdown(Shutdown::Write)?;
        let mut count = [0u8; 8];
        s.read_exact(&mut count)?;
        let secs = t.elapsed().as_secs_f64();
        if u64::from_le_bytes(count) != bytes {
            return Err(std::io::Error::other(
                "sink counted a different number of bytes",
            ));
        }
        Ok(secs)
    };
    match run() {
        Ok(secs) => {
            println!(
                "{}",
                json!({"bytes": bytes, "secs": secs, "mb_per_s": bytes as f64 / secs / 1e6})
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", json!({"error": e.to_string()}));
            ExitCode::from(1)
        }
    }
}

fn hold(addr: SocketAddr, secs: u64) -> ExitCode {
    let run = || -> std::io::Result<(String, u64)> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(secs)))?;
        let mut reader = BufReader::new(&s);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        let mut rest = Vec::new();
        // Returns at EOF (the gateway closed it) or with an error at the timeout.
        let _ = reader.read_to_end(&mut rest);
        let ended = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        Ok((greeting.trim_end().to_string(), ended))
    };
    let out = match run() {
        Ok((greeting, ended_ms)) => {
            json!({"pid": std::process::id(), "greeting": greeting, "ended_ms": ended_ms})
        }
        Err(e) => json!({"pid": std::process::id(), "error": e.to_string()}),
    };
    println!("{out}");
    ExitCode::SUCCESS
}
