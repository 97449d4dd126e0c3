//! Ships the audit journal to a central PostgreSQL, so that a cluster has one audit view.
//!
//! (Skeleton: the body is being written.)

use std::{
    path::PathBuf,
    sync::{atomic::AtomicI64, Arc},
};

use tokio_util::sync::CancellationToken;

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

/// Ships every record of the journal in `db` to the central store, from where the central
/// store ends, forever; `shipped` is kept at the highest record number known to be there
/// (retention never deletes past it).
pub async fn run(
    db: PathBuf,
    config: SinkConfig,
    shipped: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    tracing::warn!(
        db = %db.display(),
        conninfo = config.conninfo,
        password_file = ?config.password_file,
        node = config.node,
        shipped = shipped.load(std::sync::atomic::Ordering::Relaxed),
        "the central audit sink is not implemented yet"
    );
    stop.cancelled().await;
}
