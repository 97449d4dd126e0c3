//! `pods/exec` over WebSocket (`v5.channel.k8s.io`, kubectl's default since 1.30, and
//! `v4.channel.k8s.io`): the command from the query string runs as a real process (argv as
//! given, no shell added) in the stand-in's exec directory; stdout and stderr stream on
//! channels 1 and 2, stdin arrives on channel 0 (v5: `[255, 0]` closes it), resize messages
//! on channel 4 are accepted and ignored (no pty: `tty=true` gets pipes), and the exit status
//! goes out on channel 3 as a `Status` (`NonZeroExitCode` with the code as kubectl reads it).
//! SPDY (`Upgrade: SPDY/3.1`) and any other upgrade are refused with a 400 `Status`.

use std::{process::Stdio, sync::Arc};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use hyper::{body::Incoming, header::HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::Command,
    sync::mpsc,
};

use super::{
    api, codec,
    log::{ExecRecord, RequestLog},
    server::{full, StandinBody, StandinResponse, State},
};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

fn refuse(code: u16, reason: &str, message: &str) -> StandinResponse {
    let body = serde_json::to_vec(&codec::status(code, reason, message, None)).unwrap_or_default();
    full(code, codec::JSON, body)
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Validate the upgrade, answer 101 and run the session on the upgraded connection.
pub async fn upgrade(
    state: &Arc<State>,
    req: Request<Incoming>,
    headers: &HeaderMap,
    path: &str,
    params: Vec<(String, String)>,
) -> StandinResponse {
    let upgrade = h(headers, "upgrade").unwrap_or("");
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return refuse(
            400,
            "BadRequest",
            &format!("upgrade {upgrade:?} is not supported by the kube stand-in: only WebSocket (v5.channel.k8s.io, v4.channel.k8s.io); SPDY is refused"),
        );
    }
    let Some(rp) =
        api::resolve(path).filter(|rp| rp.subresource == Some("exec") && rp.def.plural == "pods")
    else {
        return refuse(
            400,
            "BadRequest",
            &format!("the kube stand-in upgrades only pods/exec, not {path}"),
        );
    };
    let ns = rp.namespace.unwrap_or("").to_string();
    let pod = rp.name.unwrap_or("").to_string();
    if state
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(rp.def, &ns, &pod)
        .is_none()
    {
        return refuse(404, "NotFound", &format!("pods \"{pod}\" not found"));
    }
    let Some(key) = h(headers, "sec-websocket-key") else {
        return refuse(400, "BadRequest", "missing Sec-WebSocket-Key");
    };
    let offered: Vec<&str> = h(headers, "sec-websocket-protocol")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.contains(p)).copied() else {
        return refuse(
            400,
            "BadRequest",
            &format!("none of the offered subprotocols {offered:?} is supported (v5.channel.k8s.io, v4.channel.k8s.io)"),
        );
    };
    let argv: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return refuse(400, "BadRequest", "you must specify at least 1 command");
    }
    let flag = |name: &str| {
        params
            .iter()
            .any(|(k, v)| k == name && matches!(v.as_str(), "1" | "true"))
    };
    let opts = ExecOpts {
        namespace: ns,
        pod,
        log: state.log.clone(),
        argv,
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        v5: protocol == "v5.channel.k8s.io",
        dir: state.exec_dir.clone(),
    };
    let accept = base64::engine::general_purpose::STANDARD
        .encode(Sha1::digest(format!("{key}{WS_GUID}").as_bytes()));
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            session(TokioIo::new(upgraded), opts).await;
        }
    });
    let mut resp = Response::new(StandinBody::Full(http_body_util::Full::new(Bytes::new())));
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let hs = resp.headers_mut();
    hs.insert(
        "upgrade",
        hyper::header::HeaderValue::from_static("websocket"),
    );
    hs.insert(
        "connection",
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = accept.parse() {
        hs.insert("sec-websocket-accept", v);
    }
    hs.insert(
        "sec-websocket-protocol",
        hyper::header::HeaderValue::from_static(protocol),
    );
    resp
}

struct ExecOpts {
    namespace: String,
    pod: String,
    log: RequestLog,
    argv: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    v5: bool,
    dir: std::path::PathBuf,
}

/// A server-to-client frame (never masked).
pub(super) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

fn channel_frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(data.len() + 1);
    p.push(channel);
    p.extend_from_slice(data);
    frame(2, &p)
}

/// One client frame: (fin, opcode, unmasked payload). `None` at EOF or on a protocol error.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<(bool, u8, Vec<u8>)> {
    let mut hdr = [0u8; 2];
    r.read_exact(&mut hdr).await.ok()?;
    let fin = hdr[0] & 0x80 != 0;
    let opcode = hdr[0] & 0x0f;
    let masked = hdr[1] & 0x80 != 0;
    let len = match hdr[1] & 0x7f {
        126 => r.read_u16().await.ok()? as u64,
        127 => r.read_u64().await.ok()?,
        n => n as u64,
    };
    if len > 16 << 20 || !masked {
        // Clients must mask (RFC 6455 5.1); and nothing legitimate here is that large.
        return None;
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await.ok()?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((fin, opcode, payload))
}

/// Copy a process's output to its channel; the number of bytes read.
async fn pump<R: AsyncRead + Unpin>(mut r: R, channel: u8, tx: mpsc::Sender<Vec<u8>>) -> u64 {
    let mut buf = BytesMut::zeroed(32 << 10);
    let mut total = 0u64;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => {
                total += n as u64;
                if tx.send(channel_frame(channel, &buf[..n])).await.is_err() {
                    return total;
                }
            }
        }
    }
}

fn exit_status(code: Option<i32>, error: Option<String>) -> Vec<u8> {
    let v = match (code, error) {
        (_, Some(e)) => {
            json!({"metadata": {}, "status": "Failure", "message": e, "reason": "InternalError", "code": 500})
        }
        (Some(0), None) => json!({"metadata": {}, "status": "Success"}),
        (code, None) => {
            let c = code.unwrap_or(137);
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command [{c}], exit code {c}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
            })
        }
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

async fn session<S>(io: S, opts: ExecOpts)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    let child = Command::new(&opts.argv[0])
        .args(&opts.argv[1..])
        .current_dir(&opts.dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &opts.dir)
        .stdin(if opts.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if opts.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if opts.stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn();
    let mut record = ExecRecord {
        namespace: opts.namespace.clone(),
        pod: opts.pod.clone(),
        argv: opts.argv.clone(),
        exit_code: None,
        ended_by_client: false,
        stdin_bytes: 0,
        stdout_bytes: 0,
        stderr_bytes: 0,
    };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(channel_frame(
                    3,
                    &exit_status(None, Some(format!("exec: {e}"))),
                ))
                .await;
            let _ = tx.send(frame(8, &1000u16.to_be_bytes())).await;
            drop(tx);
            let _ = writer.await;
            opts.log.push_exec(record);
            return;
        }
    };
    let stdout_pump = child
        .stdout
        .take()
        .map(|out| tokio::spawn(pump(out, 1, tx.clone())));
    let stderr_pump = child
        .stderr
        .take()
        .map(|err| tokio::spawn(pump(err, 2, tx.clone())));
    let mut stdin = child.stdin.take();
    let v5 = opts.v5;
    let ctl_tx = tx.clone();
    // Client frames: stdin, close signals, resize, ping, close. Returns the stdin byte count
    // when the client's side ends.
    let mut reader = tokio::spawn(async move {
        let mut partial: Vec<u8> = Vec::new();
        let mut stdin_bytes = 0u64;
        while let Some((fin, opcode, payload)) = read_frame(&mut rd).await {
            let msg = match opcode {
                0..=2 => {
                    partial.extend_from_slice(&payload);
                    if !fin {
                        continue;
                    }
                    std::mem::take(&mut partial)
                }
                8 => break,
                9 => {
                    let _ = ctl_tx.send(frame(10, &payload)).await;
                    continue;
                }
                _ => continue,
            };
            match msg.split_first() {
                Some((0, data)) => {
                    stdin_bytes += data.len() as u64;
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                // v5: the client closed its side of a stream; only stdin matters here.
                Some((255, [0])) if v5 => stdin = None,
                // Resize (JSON {"Width","Height"}): accepted, no pty to apply it to.
                Some((4, _)) => {}
                _ => {}
            }
        }
        stdin_bytes
    });
    // The process ends, or the client goes away first (then the process is killed: a test
    // that cuts an exec short must not leave it running).
    let status = tokio::select! {
        s = child.wait() => s,
        n = &mut reader => {
            record.stdin_bytes = n.unwrap_or(0);
            record.ended_by_client = true;
            let _ = child.start_kill();
            child.wait().await
        }
    };
    if let Some(p) = stdout_pump {
        record.stdout_bytes = p.await.unwrap_or(0);
    }
    if let Some(p) = stderr_pump {
        record.stderr_bytes = p.await.unwrap_or(0);
    }
    let (code, err) = match status {
        Ok(s) => (s.code(), None),
        Err(e) => (None, Some(format!("wait: {e}"))),
    };
    record.exit_code = code;
    if !record.ended_by_client {
        let _ = tx.send(channel_frame(3, &exit_status(code, err))).await;
        let _ = tx.send(frame(8, &1000u16.to_be_bytes())).await;
        // The client answers our close; its stdin count is final by then (or give up soon).
        match tokio::time::timeout(std::time::Duration::from_secs(2), &mut reader).await {
            Ok(n) => record.stdin_bytes = n.unwrap_or(0),
            Err(_) => reader.abort(),
        }
    }
    drop(tx);
    let _ = writer.await;
    opts.log.push_exec(record);
}
