//! The local admin API: a Unix socket (mode 0600, so root only) answering one JSON request per
//! line, for `agentgate status` and `agentgate approvals`. The HTTP admin API for approvers
//! elsewhere is in [`http`].

pub mod http;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
};
use tokio_util::sync::CancellationToken;

use crate::approval::{Approvals, Approver, State, Verdict};

pub const DEFAULT_SOCKET: &str = "/run/agentgate/admin.sock";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket {path}: unreadable answer: {reason}")]
    Answer { path: PathBuf, reason: String },
}

/// Answers requests; each handler gets the request object and the caller, and returns the
/// answer object.
pub type Handler = Arc<dyn Fn(&Value, &Peer) -> Value + Send + Sync>;

/// Who is on the other end of the socket (from SO_PEERCRED).
pub struct Peer {
    pub uid: Option<u32>,
}

impl Peer {
    /// The local approver's name: `root`, or `uid:N` for a caller the socket's mode let in
    /// some other way.
    pub fn name(&self) -> String {
        match self.uid {
            Some(0) => "root".into(),
            Some(uid) => format!("uid:{uid}"),
            None => "unknown-local-user".into(),
        }
    }
}

/// `approvals.list`, `approvals.show` and `approvals.decide` over the socket.
pub fn approvals_request(approvals: &Approvals, req: &Value, peer: &Peer) -> Value {
    let id = req["id"].as_str().unwrap_or_default();
    let answer = match req["cmd"].as_str() {
        Some("approvals.list") => {
            let state = match req["state"].as_str() {
                None | Some("all") => None,
                Some(s) => match State::parse(s) {
                    Some(st) => Some(st),
                    None => return json!({"error": format!("unknown state `{s}`")}),
                },
            };
            approvals.list(state, None).map(|l| {
                let truncated = l.len() >= crate::approval::LIST_LIMIT;
                json!({"requests": l, "truncated": truncated})
            })
        }
        Some("approvals.show") => approvals.get(id).map(|r| json!(r)),
        Some("approvals.decide") => {
            let verdict = match req["verdict"].as_str() {
                Some("approve") => Verdict::Approve,
                Some("deny") => Verdict::Deny,
                _ => return json!({"error": "verdict must be approve or deny"}),
            };
            let approver = Approver::Local { user: peer.name() };
            let reason = req["reason"].as_str().map(str::to_string);
            approvals
                .decide(id, &approver, verdict, reason)
                .map(|r| json!(r))
        }
        _ => return json!({"error": "unknown command"}),
    };
    answer.unwrap_or_else(|e| json!({"error": e.to_string(), "reason": e.code()}))
}

pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a killed gateway would make bind fail.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, handler: Handler, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let peer = Peer {
            uid: stream.peer_cred().ok().map(|c| c.uid()),
        };
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match serde_json::from_str::<Value>(&line) {
                    Ok(req) => handler(&req, &peer),
                    Err(e) => json!({"error": format!("bad request: {e}")}),
                };
                let mut out = answer.to_string();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One request, one answer, from the command line.
pub fn request(path: &Path, req: &Value) -> Result<Value, AdminError> {
    let err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(err)?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(err)?;
    let mut line = req.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(err)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(err)?;
    serde_json::from_str(&answer).map_err(|e| AdminError::Answer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
