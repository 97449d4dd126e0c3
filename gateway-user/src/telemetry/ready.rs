//! Readiness: the gateway is ready when its eBPF programs are attached and follow the policy in
//! force, its listeners are open and its record can be written. Until then (and whenever one of
//! these stops being true) `/readyz` answers 503 with the list of what is missing.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

/// A check made at each `/readyz`: `Err` says what is wrong.
pub type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What `/readyz` knows. The start-up steps set their flags as they complete; the checks run at
/// each request.
#[derive(Default)]
pub struct Readiness {
    programs_attached: AtomicBool,
    policy_in_force: AtomicBool,
    listeners_open: AtomicBool,
    checks: Mutex<Vec<(&'static str, Check)>>,
}

/// One state of the facts `/readyz` decides on (see [`not_ready`]).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub programs_attached: bool,
    pub policy_in_force: bool,
    pub listeners_open: bool,
    /// Each check's name and, if it failed, why.
    pub checks: Vec<(&'static str, Result<(), String>)>,
}

impl Readiness {
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness::default())
    }

    pub fn programs_attached(&self) {
        self.programs_attached.store(true, Ordering::Relaxed);
    }

    pub fn policy_in_force(&self) {
        self.policy_in_force.store(true, Ordering::Relaxed);
    }

    pub fn listeners_open(&self) {
        self.listeners_open.store(true, Ordering::Relaxed);
    }

    /// Stopping: no new connections are accepted.
    pub fn listeners_closed(&self) {
        self.listeners_open.store(false, Ordering::Relaxed);
    }

    /// Adds a check made at each request (e.g. `record`: the recorder's last commit succeeded).
    pub fn check(
        &self,
        name: &'static str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, Box::new(check)));
    }

    pub fn facts(&self) -> Facts {
        Facts {
            programs_attached: self.programs_attached.load(Ordering::Relaxed),
            policy_in_force: self.policy_in_force.load(Ordering::Relaxed),
            listeners_open: self.listeners_open.load(Ordering::Relaxed),
            checks: self
                .checks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(name, c)| (*name, c()))
                .collect(),
        }
    }
}

/// What is not ready, one line each; empty when ready.
pub fn not_ready(f: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    if !f.programs_attached {
        out.push("ebpf: programs not attached yet".to_string());
    }
    if !f.policy_in_force {
        out.push("policy: no policy in force yet".to_string());
    }
    if !f.listeners_open {
        out.push("listeners: not open (starting or stopping)".to_string());
    }
    for (name, r) in &f.checks {
        if let Err(why) = r {
            out.push(format!("{name}: {why}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_up() -> Facts {
        Facts {
            programs_attached: true,
            policy_in_force: true,
            listeners_open: true,
            checks: vec![("record", Ok(())), ("capture", Ok(()))],
        }
    }

    #[test]
    fn ready_only_when_every_fact_holds() {
        assert!(not_ready(&all_up()).is_empty());
        let mut f = all_up();
        f.programs_attached = false;
        assert_eq!(not_ready(&f), ["ebpf: programs not attached yet"]);
        let mut f = all_up();
        f.policy_in_force = false;
        assert_eq!(not_ready(&f), ["policy: no policy in force yet"]);
        let mut f = all_up();
        f.listeners_open = false;
        assert_eq!(
            not_ready(&f),
            ["listeners: not open (starting or stopping)"]
        );
        let mut f = all_up();
        f.checks[0].1 = Err("the last commit failed: disk full".into());
        assert_eq!(not_ready(&f), ["record: the last commit failed: disk full"]);
    }

    #[test]
    fn a_fresh_gateway_is_not_ready_and_says_why() {
        let r = Readiness::new();
        r.check("record", || Err("not writable".into()));
        let missing = not_ready(&r.facts());
        assert_eq!(missing.len(), 4, "{missing:?}");
        r.programs_attached();
        r.policy_in_force();
        r.listeners_open();
        assert_eq!(not_ready(&r.facts()), ["record: not writable"]);
    }

    #[test]
    fn checks_run_at_each_request() {
        let r = Readiness::new();
        r.programs_attached();
        r.policy_in_force();
        r.listeners_open();
        let broken = Arc::new(AtomicBool::new(false));
        let b = broken.clone();
        r.check("capture", move || {
            if b.load(Ordering::Relaxed) {
                Err("applying the new policy failed".into())
            } else {
                Ok(())
            }
        });
        assert!(not_ready(&r.facts()).is_empty());
        broken.store(true, Ordering::Relaxed);
        assert_eq!(
            not_ready(&r.facts()),
            ["capture: applying the new policy failed"]
        );
        broken.store(false, Ordering::Relaxed);
        assert!(not_ready(&r.facts()).is_empty());
    }
}
