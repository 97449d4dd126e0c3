//! File-system change notifications (the `notify` crate) reduced to wake-ups: the policy
//! directory and the cgroup tree are both re-read whole on any change, so the events' details
//! do not matter, only that something changed.

use tokio::sync::mpsc;

/// A watcher (add paths with `watch`) and the channel that wakes on changes. A full channel
/// already holds a wake-up, so bursts collapse into one.
pub fn change_signal() -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Our own reads show up as access events; only changes matter (else every re-read
        // would trigger the next).
        if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.try_send(());
        }
    })?;
    Ok((watcher, rx))
}

/// The next wake-up; never, when there is no watcher (or it has gone), so that a `select!`
/// falls back on its other branches instead of spinning.
pub async fn next_change(rx: &mut Option<mpsc::Receiver<()>>) {
    if let Some(r) = rx {
        if r.recv().await.is_some() {
            return;
        }
        *rx = None;
    }
    std::future::pending().await
}
