//! Live sessions, so that a policy change can end the ones it no longer allows.
//!
//! A new policy is in force in a session from the moment it is swapped in, not from whenever an
//! asynchronous sweep reaches the session: every session checks the policy generation (one
//! atomic load) before it forwards anything, and re-authorizes when it moved. The reload then
//! waits, before it says the policy is in force, until no session the new policy withdraws is
//! in the middle of a forward it decided under the old one (see [`Sessions::put_in_force`]).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::policy::{Decision, IdentityProvider, Policy, TargetSettings, TokenSource, Who};

/// Everything a session was allowed on, kept to re-evaluate it against a new policy: not only
/// the names but what they stood for (the cgroup, the destination, the provider's settings).
#[derive(Debug, Clone)]
pub struct Grant {
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub workload: String,
    pub cgroup: String,
    pub token_source: TokenSource,
    pub target: String,
    pub dst: std::net::SocketAddr,
    /// What the target was when granted: a changed protocol or upstream login ends the session.
    pub settings: TargetSettings,
    pub provider: IdentityProvider,
    /// The login asked for on the target (SSH), which rules may restrict.
    pub login: Option<String>,
    /// What the API server says about the node's pods: a `pods:` workload's cgroup is judged
    /// by it again.
    pub pods: Arc<crate::capture::PodCache>,
}

/// Whether `policy` still allows what `g` was granted; the reason if not.
pub fn still_allowed(policy: &Policy, g: &Grant) -> Result<(), String> {
    let workload =
        crate::capture::workload_of(policy, &g.pods, &g.cgroup).map(|i| &policy.workloads[i]);
    match workload {
        Some(w) if w.name == g.workload && w.token == g.token_source => {}
        _ => {
            return Err(format!(
                "cgroup {} is no longer workload `{}` with the same token source",
                g.cgroup, g.workload
            ))
        }
    }
    match policy.target_for(g.dst) {
        Some((_, t)) if t.name == g.target && t.settings == g.settings => {}
        _ => {
            return Err(format!(
                "{} is no longer target `{}` as it was defined",
                g.dst, g.target
            ))
        }
    }
    if policy
        .identity_providers
        .iter()
        .find(|p| p.issuer == g.issuer)
        != Some(&g.provider)
    {
        return Err(format!(
            "the identity provider of {} was changed or removed",
            g.issuer
        ));
    }
    match policy.decide(
        &Who {
            issuer: &g.issuer,
            subject: &g.subject,
            groups: &g.groups,
            workload: &g.workload,
            login: g.login.as_deref(),
        },
        &g.target,
    ) {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { reason, .. } => Err(reason),
    }
}

/// How long a reload waits for withdrawn sessions to finish the forward they are in.
const SETTLE: Duration = Duration::from_secs(2);

/// Re-authorizes a session against the policy in force now; the reason if it may not go on.
type Recheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A session's side of the policy generation: what it checked last, and whether it is in the
/// middle of forwarding something it decided under that generation.
pub struct Gate {
    generation: Arc<AtomicU64>,
    /// The generation this session was last re-authorized under (0: never, so the first
    /// forward checks the policy in force then, whatever happened during admission).
    checked: AtomicU64,
    /// Forwards in progress: between [`Gate::begin`] and [`Gate::end`]. A forward abandoned
    /// midway (the session's task dropped) never ends: the reload then waits for the session
    /// to leave the registry, since what it buffered may still be flushed on the way out.
    busy: AtomicU64,
    recheck: Recheck,
    stop: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Gate {
    /// Marks the start of a forward. Must come before [`Gate::check`]: the reload bumps the
    /// generation and then looks at `busy`; the session marks `busy` and then loads the
    /// generation, so one of the two sees the other (both sequentially consistent).
    pub fn begin(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks the end of a forward: what it wrote is on its way to the peer (flushed).
    pub fn end(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether the session may forward under the policy in force: one atomic load when the
    /// policy did not change since the last check; otherwise the session is re-authorized, and
    /// ended (its stop fired, with the reason) if the new policy no longer allows it.
    pub fn check(&self) -> Result<(), String> {
        let now = self.generation.load(Ordering::SeqCst);
        if now == self.checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        // The policy read here is at least as new as `now`: the reload swaps it in before it
        // bumps the generation.
        match (self.recheck)() {
            Ok(()) => {
                self.checked.fetch_max(now, Ordering::Relaxed);
                Ok(())
            }
            Err(reason) => {
                self.end_session(&reason);
                Err(reason)
            }
        }
    }

    fn end_session(&self, reason: &str) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason.to_string());
        }
        drop(r);
        self.stop.cancel();
    }

    fn idle(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }

    /// A gate that never withdraws (unit tests of the relays).
    #[cfg(test)]
    pub fn open_ended() -> Arc<Self> {
        Arc::new(Self {
            generation: Arc::new(AtomicU64::new(0)),
            checked: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            recheck: Box::new(|| Ok(())),
            stop: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        })
    }
}

fn withdrawn(policy: &Policy, reason: &str) -> String {
    format!(
        "policy {} no longer allows this session: {reason}",
        policy.version
    )
}

struct Entry {
    grant: Grant,
    gate: Arc<Gate>,
}

pub struct Sessions {
    live: Mutex<HashMap<u64, Entry>>,
    /// Bumped by each policy put in force, right after the swap.
    generation: Arc<AtomicU64>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            live: Mutex::default(),
            generation: Arc::new(AtomicU64::new(1)),
        }
    }
}

/// What [`Sessions::put_in_force`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InForce {
    /// Sessions the new policy withdrew (ended).
    pub ended: usize,
    /// Of those, the ones still in the middle of a forward when the wait gave up.
    pub stragglers: usize,
}

/// Handed to the session: `stopped()` fires when the registry ends it, `reason()` says why.
pub struct SessionGuard<'a> {
    sessions: &'a Sessions,
    id: u64,
    pub stop: CancellationToken,
    pub gate: Arc<Gate>,
    reason: Arc<Mutex<Option<String>>>,
}

impl SessionGuard<'_> {
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; `policy` is where its gate reads the policy in force.
    pub fn open(
        &self,
        id: u64,
        grant: Grant,
        policy: watch::Receiver<Arc<Policy>>,
    ) -> SessionGuard<'_> {
        let stop = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let recheck: Recheck = {
            let grant = grant.clone();
            Box::new(move || {
                let p = policy.borrow().clone();
                still_allowed(&p, &grant).map_err(|r| withdrawn(&p, &r))
            })
        };
        let gate = Arc::new(Gate {
            generation: self.generation.clone(),
            checked: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            recheck,
            stop: stop.clone(),
            reason: reason.clone(),
        });
        self.lock().insert(
            id,
            Entry {
                grant,
                gate: gate.clone(),
            },
        );
        SessionGuard {
            sessions: self,
            id,
            stop,
            gate,
            reason,
        }
    }

    /// Puts `policy` (already swapped in) in force in the live sessions: bumps the generation,
    /// so that every session re-authorizes before it forwards anything more, ends the sessions
    /// it withdraws, and waits (at most [`SETTLE`]) until none of those is still in the middle
    /// of a forward it decided under the old policy. Once this returns, nothing more reaches a
    /// target for a session the policy withdrew, except from the stragglers it counts.
    pub async fn put_in_force(&self, policy: &Policy) -> InForce {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut waiting: Vec<(u64, Arc<Gate>)> = Vec::new();
        for (id, entry) in self.lock().iter() {
            if let Err(reason) = still_allowed(policy, &entry.grant) {
                entry.gate.end_session(&withdrawn(policy, &reason));
                waiting.push((*id, entry.gate.clone()));
            }
        }
        let ended = waiting.len();
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            {
                let live = self.lock();
                // Done with a session once it is between forwards (its next one checks the new
                // generation and stops) or gone.
                waiting.retain(|(id, gate)| {
                    live.get(id).is_some_and(|e| Arc::ptr_eq(&e.gate, gate)) && !gate.idle()
                });
            }
            if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        InForce {
            ended,
            stragglers: waiting.len(),
        }
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Ends every session `which` picks, saying `reason`; returns how many.
    pub fn end_where(&self, which: impl Fn(&Grant) -> bool, reason: &str) -> usize {
        let mut ended = 0;
        for entry in self.lock().values() {
            if which(&entry.grant) {
                *entry.gate.reason.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(reason.to_string());
                entry.gate.stop.cancel();
                ended += 1;
            }
        }
        ended
    }

    /// Ends every session `policy` no longer allows; returns how many.
    pub fn revalidate(&self, policy: &Policy) -> usize {
        let mut ended = 0;
        for entry in self.lock().values() {
            if let Err(reason) = still_allowed(policy, &entry.grant) {
                entry.gate.end_session(&withdrawn(policy, &reason));
                ended += 1;
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same policy allowing (`allow`) or denying group `g` on target `t`.
    fn policy(allow: bool) -> Arc<Policy> {
        let dir = tempfile::tempdir().unwrap();
        let effect = if allow { "" } else { "    effect: deny\n" };
        std::fs::write(
            dir.path().join("p.yaml"),
            format!(
                "version: 2\nidentity_providers:\n  - name: i\n    issuer: i\n    audiences: [a]\n    jwks: {{from: file, path: /nonexistent}}\n    algorithms: [RS256]\n\
                 workloads:\n  - name: w\n    cgroup: \"/t/job-*\"\n    mode: host\n    token: {{from: credential}}\n\
                 targets:\n  - name: t\n    protocol: postgres\n    addresses: [127.0.0.3]\n    ports: [5432]\n    credential: {{from: env, name: X}}\n    postgres: {{user: u, upstream_tls: {{mode: disable}}}}\n\
                 rules:\n  - name: r\n{effect}    when: {{groups: [g]}}\n    targets: [t]\n"
            ),
        )
        .unwrap();
        Arc::new(crate::policy::load_dir(dir.path()).unwrap())
    }

    fn grant(p: &Policy) -> Grant {
        let t = &p.targets[0];
        Grant {
            issuer: "i".into(),
            subject: "s".into(),
            groups: vec!["g".into()],
            workload: "w".into(),
            cgroup: "/t/job-1".into(),
            token_source: p.workloads[0].token.clone(),
            target: "t".into(),
            dst: "127.0.0.3:5432".parse().unwrap(),
            settings: t.settings.clone(),
            provider: p.identity_providers[0].clone(),
            login: None,
            pods: Default::default(),
        }
    }

    /// A withdrawing policy is in force once `put_in_force` returns: it waited for the forward
    /// the session had begun under the old policy, and the session's next check refuses.
    #[tokio::test(start_paused = true)]
    async fn put_in_force_waits_for_the_forward_in_progress() {
        let (allow, deny) = (policy(true), policy(false));
        let sessions = Arc::new(Sessions::default());
        let (tx, rx) = watch::channel(allow.clone());
        let guard = sessions.open(1, grant(&allow), rx);
        let gate = guard.gate.clone();
        gate.begin();
        assert_eq!(gate.check(), Ok(()));

        tx.send_replace(deny.clone());
        let task = {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.put_in_force(&deny).await })
        };
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !task.is_finished(),
            "returned while a forward was in progress"
        );
        assert!(guard.stop.is_cancelled());
        let refused = gate.check().unwrap_err();
        assert!(refused.contains("no longer allows"), "{refused}");
        assert_eq!(guard.reason().as_deref(), Some(refused.as_str()));
        gate.end();
        assert_eq!(
            task.await.unwrap(),
            InForce {
                ended: 1,
                stragglers: 0
            }
        );
    }

    /// A session that never finishes its forward is counted, not waited for forever; one the
    /// new policy still allows is neither ended nor waited for.
    #[tokio::test(start_paused = true)]
    async fn put_in_force_is_bounded_and_spares_allowed_sessions() {
        let (allow, deny) = (policy(true), policy(false));
        let sessions = Sessions::default();
        let (tx, rx) = watch::channel(allow.clone());
        let stuck = sessions.open(1, grant(&allow), rx.clone());
        stuck.gate.begin();
        let mut other = grant(&allow);
        other.groups = vec!["g".into(), "h".into()];
        tx.send_replace(deny.clone());
        assert_eq!(
            sessions.put_in_force(&deny).await,
            InForce {
                ended: 1,
                stragglers: 1
            }
        );
        drop(stuck);

        // Back to allowing: a live session is re-checked, allowed, and goes on.
        let live = sessions.open(2, other, rx);
        tx.send_replace(allow.clone());
        live.gate.begin();
        assert_eq!(
            sessions.put_in_force(&allow).await,
            InForce {
                ended: 0,
                stragglers: 0
            }
        );
        assert_eq!(live.gate.check(), Ok(()));
        live.gate.end();
        assert!(!live.stop.is_cancelled());
    }
}
