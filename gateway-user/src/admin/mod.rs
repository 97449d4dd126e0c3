//! The local admin API: a Unix socket (mode 0600, so root only) answering one JSON request per
//! line. `agentgate status` is its first client; approvals and sessions follow.

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

/// Answers requests; each handler gets the request object and returns the answer object.
pub type Handler = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

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
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match serde_json::from_str::<Value>(&line) {
                    Ok(req) => handler(&req),
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
