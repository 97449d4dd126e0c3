//! The local admin API: a Unix socket (mode 0600, so root only) answering one JSON request per
//! line ([`AdminRequest`]), for `agentgate status`, `approvals` and `revoke`. The HTTP admin API
//! for approvers elsewhere is in [`http`]; both are answered by [`Admin::handle`].

pub mod api;
pub mod assets;
pub mod caller;
pub mod data;
pub mod events;
pub mod handler;
pub mod http;
pub mod node;
pub mod query;
pub mod routes;
pub mod series;
pub mod views;

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

pub use api::{AdminRequest, AdminResponse, Failure};
pub use handler::{Admin, Refusal};

use crate::approval::Approver;

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
    #[error("admin socket {path}: request not encoded: {reason}")]
    Request { path: PathBuf, reason: String },
    /// The gateway refused or failed the request: its message, as it gave it.
    #[error("{}", .0.error)]
    Refused(Failure),
}

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

/// The answer line to one request line from `peer`.
fn answer(admin: &Admin, line: &str, peer: &Peer) -> String {
    let failure = |e: &Refusal| Failure {
        error: e.to_string(),
        reason: e.code().to_string(),
    };
    let answer = match serde_json::from_str::<AdminRequest>(line) {
        Ok(req) => {
            let caller = Approver::Local { user: peer.name() };
            admin
                .handle(req, &caller)
                .map_err(|e| failure(&e))
                .and_then(|a| {
                    serde_json::to_string(&a)
                        .map_err(|e| failure(&Refusal::Unencodable(e.to_string())))
                })
        }
        Err(e) => Err(failure(&Refusal::BadRequest(e.to_string()))),
    };
    let mut out = answer.unwrap_or_else(|f| json!(f).to_string());
    out.push('\n');
    out
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

pub async fn serve(listener: UnixListener, admin: Arc<Admin>, stop: CancellationToken) {
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
        let admin = admin.clone();
        let peer = Peer {
            uid: stream.peer_cred().ok().map(|c| c.uid()),
        };
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let out = answer(&admin, &line, &peer);
                if w.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One request, one answer, from the command line.
pub fn request(path: &Path, req: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(err)?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(err)?;
    let mut line = serde_json::to_string(req).map_err(|e| AdminError::Request {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(err)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(err)?;
    let unreadable = |e: serde_json::Error| AdminError::Answer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let answer: Value = serde_json::from_str(&answer).map_err(unreadable)?;
    AdminResponse::decode_answer(req, answer)
        .map_err(unreadable)?
        .map_err(AdminError::Refused)
}
