//! Exec refusals remembered for a moment. kubectl (1.30+) opens an exec over WebSocket and,
//! when that upgrade is answered with anything but 101 — a refusal included — tries again over
//! SPDY with the same command. Without a memory, an exec people just denied would be put to
//! them a second time (and a hold that ran out would hold again). The identical exec from the
//! same agent within [`WINDOW`] is refused again at once, with the same message, and on
//! record as such.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// Long enough for a client's immediate fallback, short enough that a later identical exec is
/// judged afresh.
pub const WINDOW: Duration = Duration::from_secs(30);
/// More remembered refusals than this and the oldest are forgotten (a flood cannot grow it).
const MAX_REMEMBERED: usize = 4096;

#[derive(Default)]
pub struct RecentRefusals {
    refused: Mutex<HashMap<[u8; 32], (Instant, String)>>,
}

/// What makes two execs "the identical exec from the same agent".
pub fn key(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

impl RecentRefusals {
    /// The message the identical exec was refused with, if within the window.
    pub fn get(&self, key: &[u8; 32]) -> Option<String> {
        let refused = self.refused.lock().ok()?;
        refused
            .get(key)
            .filter(|(at, _)| at.elapsed() < WINDOW)
            .map(|(_, m)| m.clone())
    }

    pub fn remember(&self, key: [u8; 32], message: &str) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        refused.retain(|_, (at, _)| at.elapsed() < WINDOW);
        if refused.len() >= MAX_REMEMBERED {
            if let Some(oldest) = refused
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| *k)
            {
                refused.remove(&oldest);
            }
        }
        refused.insert(key, (Instant::now(), message.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_remembered_for_the_identical_exec_only() {
        let r = RecentRefusals::default();
        let a = key(&["issuer", "agent", "ns", "pod", "sh -c id"]);
        let b = key(&["issuer", "agent", "ns", "pod", "sh -c ls"]);
        assert_eq!(r.get(&a), None);
        r.remember(a, "denied by alice: no");
        assert_eq!(r.get(&a).as_deref(), Some("denied by alice: no"));
        assert_eq!(r.get(&b), None);
        // Parts are length-prefixed: shifting a boundary is another exec.
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
    }
}
