//! Caps on live sessions, node-wide and per workload, so that one agent (or a flood from it)
//! cannot take every socket and task of the gateway from the others.

use std::{collections::HashMap, sync::Mutex};

pub struct Limits {
    total: usize,
    per_workload: usize,
    live: Mutex<(usize, HashMap<String, usize>)>,
}

/// Held for the life of a session; gives its place back when dropped.
pub struct Slot<'a> {
    limits: &'a Limits,
    workload: String,
}

impl Limits {
    pub fn new(total: usize, per_workload: usize) -> Self {
        Self {
            total,
            per_workload,
            live: Mutex::new((0, HashMap::new())),
        }
    }

    /// A place for one more session of `workload`, or which limit is reached.
    pub fn admit(&self, workload: &str) -> Result<Slot<'_>, &'static str> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.0 >= self.total {
            return Err("the gateway's session limit (gateway.max_connections) is reached");
        }
        let n = live.1.entry(workload.to_string()).or_insert(0);
        if *n >= self.per_workload {
            return Err(
                "this workload's session limit (gateway.max_connections_per_workload) is reached",
            );
        }
        *n += 1;
        live.0 += 1;
        Ok(Slot {
            limits: self,
            workload: workload.to_string(),
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut live = self.limits.live.lock().unwrap_or_else(|p| p.into_inner());
        live.0 = live.0.saturating_sub(1);
        if let Some(n) = live.1.get_mut(&self.workload) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.1.remove(&self.workload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_workload_and_in_total() {
        let l = Limits::new(3, 2);
        let a1 = l.admit("a").unwrap();
        let _a2 = l.admit("a").unwrap();
        assert!(l
            .admit("a")
            .err()
            .unwrap()
            .contains("max_connections_per_workload"));
        let _b1 = l.admit("b").unwrap();
        assert!(l
            .admit("b")
            .err()
            .unwrap()
            .contains("(gateway.max_connections)"));
        drop(a1);
        assert!(l.admit("b").is_ok(), "a freed slot is reusable");
    }
}
