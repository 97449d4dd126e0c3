//! `pods/portforward` as kubectl 1.32 speaks it: SPDY/3.1, tunnelled in WebSocket binary
//! messages (subprotocol `SPDY/3.1+portforward.k8s.io`, kubectl's default) or over
//! `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version: portforward.k8s.io` (its fallback,
//! and `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`). Per local connection kubectl opens an error
//! stream and a data stream (headers `streamType`, `port`, `requestID`); the stand-in answers
//! each `SYN_STREAM`, connects the data stream to the loopback address the test mapped the
//! pod's port to (`StandinOptions::forward_ports`), copies bytes both ways and, when the pod's
//! side ends, closes the data stream and then the error stream (kubectl waits for that). A port
//! with no mapping is answered on the error stream, as the kubelet answers a port nothing
//! listens on. Strict: other subprotocols (the `v4.channel.k8s.io` port-forward), another
//! `X-Stream-Protocol-Version`, a frame it does not know, a stream without a port: refused or
//! the session ended.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use base64::Engine;
use bytes::Bytes;
use hyper::{body::Incoming, header::HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use super::{
    api, codec, exec,
    log::{ForwardRecord, RequestLog},
    server::{full, StandinBody, StandinResponse, State},
    spdy,
};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
const STREAM_PROTOCOL: &str = "portforward.k8s.io";

fn refuse(code: u16, reason: &str, message: &str) -> StandinResponse {
    let body = serde_json::to_vec(&codec::status(code, reason, message, None)).unwrap_or_default();
    full(code, codec::JSON, body)
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `path` is a pod's port-forward.
pub fn is_port_forward(path: &str) -> bool {
    api::resolve(path)
        .is_some_and(|rp| rp.subresource == Some("portforward") && rp.def.plural == "pods")
}

/// Validate the upgrade, answer 101 and serve the SPDY session on the upgraded connection.
pub async fn upgrade(
    state: &Arc<State>,
    req: Request<Incoming>,
    headers: &HeaderMap,
    path: &str,
) -> StandinResponse {
    let Some(rp) = api::resolve(path) else {
        return refuse(404, "NotFound", "no such resource");
    };
    let ns = rp.namespace.unwrap_or("").to_string();
    let pod = rp.name.unwrap_or("").to_string();
    let exists = state
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(rp.def, &ns, &pod)
        .is_some();
    if !exists {
        return refuse(404, "NotFound", &format!("pods \"{pod}\" not found"));
    }
    let upgrade = h(headers, "upgrade").unwrap_or("");
    let ctx = Ctx {
        namespace: ns,
        pod,
        log: state.log.clone(),
        ports: state.forward_ports.clone(),
    };
    let mut resp = Response::new(StandinBody::Full(http_body_util::Full::new(Bytes::new())));
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let hs = resp.headers_mut();
    let set = |hs: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = v.parse() {
            hs.insert(k, v);
        }
    };
    set(hs, "connection", "Upgrade");
    if upgrade.eq_ignore_ascii_case("websocket") {
        let offered: Vec<&str> = h(headers, "sec-websocket-protocol")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect();
        if !offered.contains(&TUNNEL_PROTOCOL) {
            return refuse(
                400,
                "BadRequest",
                &format!("the kube stand-in port-forwards only over {TUNNEL_PROTOCOL} (or SPDY/3.1), not {offered:?}"),
            );
        }
        let Some(key) = h(headers, "sec-websocket-key") else {
            return refuse(400, "BadRequest", "missing Sec-WebSocket-Key");
        };
        let accept = base64::engine::general_purpose::STANDARD
            .encode(Sha1::digest(format!("{key}{WS_GUID}").as_bytes()));
        set(hs, "upgrade", "websocket");
        set(hs, "sec-websocket-accept", &accept);
        set(hs, "sec-websocket-protocol", TUNNEL_PROTOCOL);
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let _guard = ctx.log.forward_session_opened();
                tunnel(TokioIo::new(upgraded), ctx).await;
            }
        });
    } else if upgrade.eq_ignore_ascii_case("spdy/3.1") {
        let versions = h(headers, "x-stream-protocol-version").unwrap_or("");
        if !versions.split(',').any(|v| v.trim() == STREAM_PROTOCOL) {
            return refuse(
                400,
                "BadRequest",
                &format!("X-Stream-Protocol-Version {versions:?}: the stand-in speaks only {STREAM_PROTOCOL}"),
            );
        }
        set(hs, "upgrade", "SPDY/3.1");
        set(hs, "x-stream-protocol-version", STREAM_PROTOCOL);
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let _guard = ctx.log.forward_session_opened();
                session(TokioIo::new(upgraded), ctx).await;
            }
        });
    } else {
        return refuse(
            400,
            "BadRequest",
            &format!(
                "upgrade {upgrade:?}: a port-forward is WebSocket ({TUNNEL_PROTOCOL}) or SPDY/3.1"
            ),
        );
    }
    resp
}

#[derive(Clone)]
struct Ctx {
    namespace: String,
    pod: String,
    log: RequestLog,
    ports: Arc<std::sync::Mutex<HashMap<u16, SocketAddr>>>,
}

/// SPDY tunnelled in WebSocket: binary messages in, the session's bytes; its bytes out, one
/// binary message per write (as client-go's tunnelling connection does).
async fn tunnel<S>(io: S, ctx: Ctx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (inner, outer) = tokio::io::duplex(256 << 10);
    let (mut outer_r, mut outer_w) = tokio::io::split(outer);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let ping_tx = tx.clone();
    let inbound = tokio::spawn(async move {
        while let Some((_fin, opcode, payload)) = exec::read_frame(&mut rd).await {
            match opcode {
                // Binary (and continuations): the session's bytes, whatever the message edges.
                0 | 2 => {
                    if outer_w.write_all(&payload).await.is_err() {
                        break;
                    }
                }
                9 => {
                    let _ = ping_tx.send(exec::frame(10, &payload)).await;
                }
                10 => {}
                // Close, or text (client-go refuses text messages; so does the stand-in).
                _ => break,
            }
        }
        let _ = outer_w.shutdown().await;
    });
    let out_tx = tx.clone();
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match outer_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_tx.send(exec::frame(2, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = out_tx.send(exec::frame(8, &1000u16.to_be_bytes())).await;
    });
    session(inner, ctx).await;
    inbound.abort();
    let _ = outbound.await;
    drop(tx);
    let _ = writer.await;
}

/// One port-forward connection: its two streams and where its bytes go.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

/// The SPDY session: frames read in order; writes go through one channel.
async fn session<S>(io: S, ctx: Ctx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut inflate = spdy::HeaderReader::default();
    let mut deflate = spdy::HeaderWriter::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // The data streams' way to the pod's side: bytes, and `None` for the client's FIN.
    let mut to_pod: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    let mut tasks = Vec::new();
    while let Ok(frame) = spdy::read_frame(&mut rd).await {
        match frame {
            spdy::Frame::Data { id, fin, data } => {
                if let Some(sink) = to_pod.get(&id) {
                    if !data.is_empty() {
                        let _ = sink.send(Some(Bytes::from(data))).await;
                    }
                    if fin {
                        let _ = sink.send(None).await;
                        to_pod.remove(&id);
                    }
                }
            }
            spdy::Frame::Control { kind, payload, .. } => match kind {
                1 => {
                    let Some((id, headers)) = spdy::syn_stream(&payload, &mut inflate) else {
                        break;
                    };
                    let get = |k: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case(k))
                            .map(|(_, v)| v.clone())
                    };
                    let (Some(kind), Some(port), Some(request)) =
                        (get("streamtype"), get("port"), get("requestid"))
                    else {
                        break;
                    };
                    let Ok(port) = port.parse::<u16>() else {
                        break;
                    };
                    if tx.send(deflate.syn_reply(id)).await.is_err() {
                        break;
                    }
                    let pair = pairs.entry(request.clone()).or_default();
                    pair.port = port;
                    match kind.as_str() {
                        "error" => pair.error = Some(id),
                        "data" => pair.data = Some(id),
                        _ => break,
                    }
                    if let (Some(error), Some(data)) = (pair.error, pair.data) {
                        let (sink_tx, sink_rx) = mpsc::channel(64);
                        to_pod.insert(data, sink_tx);
                        pairs.remove(&request);
                        tasks.push(tokio::spawn(forward(
                            ctx.clone(),
                            port,
                            error,
                            data,
                            sink_rx,
                            tx.clone(),
                        )));
                    }
                }
                // RST_STREAM: the client gave up on a stream.
                3 if payload.len() == 8 => {
                    let id =
                        u32::from_be_bytes([payload[0] & 0x7f, payload[1], payload[2], payload[3]]);
                    to_pod.remove(&id);
                }
                // PING: echoed.
                6 => {
                    if tx.send(spdy::control(6, 0, &payload)).await.is_err() {
                        break;
                    }
                }
                // SETTINGS, WINDOW_UPDATE: nothing to do (no flow control here).
                4 | 9 => {}
                // GOAWAY, or anything a port-forward client does not send.
                _ => break,
            },
        }
    }
    // The client went away: its connections to the pod's side end.
    to_pod.clear();
    for t in tasks {
        t.abort();
    }
    drop(tx);
    let _ = writer.await;
}

/// One connection to the pod's port: the test's loopback address for it, bytes both ways;
/// then the data stream's FIN and the error stream's (with the error, if there was one).
async fn forward(
    ctx: Ctx,
    port: u16,
    error: u32,
    data: u32,
    mut from_client: mpsc::Receiver<Option<Bytes>>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let mut record = ForwardRecord {
        namespace: ctx.namespace.clone(),
        pod: ctx.pod.clone(),
        port,
        to: ctx
            .ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&port)
            .copied(),
        bytes_to_pod: 0,
        bytes_from_pod: 0,
    };
    let conn = match record.to {
        None => Err(format!("the stand-in maps no address to port {port}")),
        Some(addr) => TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial {addr}: {e}")),
    };
    let tcp = match conn {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}, uid : failed to connect: {e}",
                ctx.pod
            );
            let _ = tx.send(spdy::data(error, false, msg.as_bytes())).await;
            let _ = tx.send(spdy::data(error, true, b"")).await;
            let _ = tx.send(spdy::data(data, true, b"")).await;
            ctx.log.push_forward(record);
            return;
        }
    };
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let up = async {
        let mut n = 0u64;
        while let Some(Some(b)) = from_client.recv().await {
            n += b.len() as u64;
            if tcp_w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = tcp_w.shutdown().await;
        n
    };
    let down = async {
        let mut n = 0u64;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match tcp_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k as u64;
                    if tx.send(spdy::data(data, false, &buf[..k])).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(spdy::data(data, true, b"")).await;
        let _ = tx.send(spdy::data(error, true, b"")).await;
        n
    };
    // The pod's side ending is the end (kubectl then waits for the error stream's FIN); the
    // client's side may have ended before.
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    let mut to_pod = None;
    let from_pod = loop {
        tokio::select! {
            n = &mut up, if to_pod.is_none() => to_pod = Some(n),
            n = &mut down => break n,
        }
    };
    record.bytes_from_pod = from_pod;
    record.bytes_to_pod = match to_pod {
        Some(n) => n,
        None => tokio::time::timeout(std::time::Duration::from_millis(200), up)
            .await
            .unwrap_or(0),
    };
    ctx.log.push_forward(record);
}
