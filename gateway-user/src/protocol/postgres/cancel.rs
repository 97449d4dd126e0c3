//! Cancel keys. The agent gets a BackendKeyData made up by the gateway; a CancelRequest with it
//! (which arrives on a new captured connection, with no credentials) is forwarded to the right
//! target with the real key, which the agent never learns.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

/// Counts the CancelRequests that reached a session. A statement held for approval is the
/// gateway's, not the server's, to cancel: the relay watches this while it holds one.
pub type CancelSignal = Arc<watch::Sender<u64>>;

/// A new signal and the session's side of it.
pub fn cancel_signal() -> (CancelSignal, watch::Receiver<u64>) {
    let (tx, rx) = watch::channel(0);
    (Arc::new(tx), rx)
}

#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub dst: SocketAddr,
    pub pid: i32,
    pub key: i32,
    /// Only a connection from the same workload may cancel.
    pub workload: String,
    /// Raised for every CancelRequest forwarded to this session.
    pub signal: CancelSignal,
}

#[derive(Default)]
pub struct CancelKeys {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

impl CancelKeys {
    /// Hands out a fresh key for `target`; it is forgotten when the guard drops.
    pub fn register(&self, target: CancelTarget) -> CancelGuard<'_> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = loop {
            let k = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
            if k.0 != 0 && !map.contains_key(&k) {
                break k;
            }
        };
        map.insert(key, target);
        CancelGuard { keys: self, key }
    }

    pub fn lookup(&self, pid: i32, key: i32) -> Option<CancelTarget> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(pid, key))
            .cloned()
    }
}

pub struct CancelGuard<'a> {
    keys: &'a CancelKeys,
    pub key: (i32, i32),
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.keys
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_forgotten() {
        let keys = CancelKeys::default();
        let t = CancelTarget {
            dst: "127.0.0.1:5432".parse().unwrap(),
            pid: 11,
            key: 22,
            workload: "w".into(),
            signal: cancel_signal().0,
        };
        let a = keys.register(t.clone());
        let b = keys.register(t);
        assert_ne!(a.key, b.key);
        let (pid, key) = a.key;
        assert_eq!(keys.lookup(pid, key).map(|t| t.pid), Some(11));
        drop(a);
        assert!(keys.lookup(pid, key).is_none());
        assert!(keys.lookup(b.key.0, b.key.1).is_some());
    }
}
