//! The approval service: submits, decides, expires and cancels requests, keeps the store in step
//! and wakes the sessions that hold a statement.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::sync::watch;

use super::{
    model::{Approver, Mode, NewRequest, Request, State, Verdict, Vote},
    notify::Notifier,
    store::{Event, Store, StoreError},
};
use crate::record::{now_ms, EventSink};

/// How many requests `list` returns at most.
pub const LIST_LIMIT: usize = 500;
/// Pending requests one identity may have: more are refused, so that one agent cannot bury
/// everyone else's requests or keep the store busy.
const MAX_PENDING_PER_IDENTITY: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval request `{0}`")]
    UnknownRequest(String),
    #[error("request {0} is already {1}")]
    NotPending(String, &'static str),
    #[error("{0} made request {1} and cannot approve it")]
    SelfApproval(String, String),
    #[error("{0} already approved request {1}; each approver counts once")]
    AlreadyCounted(String, String),
    #[error("a denial needs a reason")]
    ReasonRequired,
    #[error("{0} already has {MAX_PENDING_PER_IDENTITY} approval requests waiting")]
    TooManyPending(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl ApprovalError {
    /// A stable machine code, for the admin APIs.
    pub fn code(&self) -> &'static str {
        match self {
            ApprovalError::UnknownRequest(_) => "unknown_request",
            ApprovalError::NotPending(..) => "not_pending",
            ApprovalError::SelfApproval(..) => "self_approval",
            ApprovalError::AlreadyCounted(..) => "already_counted",
            ApprovalError::ReasonRequired => "bad_request",
            ApprovalError::TooManyPending(_) => "too_many_pending",
            ApprovalError::Store(_) => "store_error",
        }
    }
}

/// What a protocol handler does with a statement an approval rule holds.
pub enum Gate {
    /// `deny_and_retry`: this identical statement was approved; it runs now, once.
    Pass(Request),
    /// `hold`: wait for the decision.
    Held(Held),
    /// `deny_and_retry`: refuse now; the request waits for approvers.
    Refused(Request),
}

pub struct Approvals {
    store: Mutex<Store>,
    /// Requests a session is holding a statement for.
    held: Mutex<HashMap<String, watch::Sender<Request>>>,
    notifier: Notifier,
    events: Arc<EventSink>,
    /// Set when the gateway stops: statements still held then are cancelled as such.
    stopping: std::sync::atomic::AtomicBool,
    /// Every request as it is stored (new, each vote, its end), for the console's live
    /// events. Bounded and never waited on: a slow listener lags, approvals do not.
    changes: tokio::sync::broadcast::Sender<Request>,
}

/// Changes a listener may fall behind by before it is told it lagged.
const CHANGES_BUFFER: usize = 256;

impl Approvals {
    /// Opens the store in the record database. Requests left pending by a previous run whose
    /// statement was held are cancelled (their connection is gone); `deny_and_retry` ones stay
    /// pending and expire on their own (call [`Approvals::resume`] inside the runtime).
    pub fn open(
        db: crate::record::SharedDb,
        notifier: Notifier,
        events: Arc<EventSink>,
    ) -> Result<Arc<Approvals>, StoreError> {
        let store = Store::new(db)?;
        Ok(Arc::new(Approvals {
            store: Mutex::new(store),
            held: Mutex::new(HashMap::new()),
            notifier,
            events,
            stopping: std::sync::atomic::AtomicBool::new(false),
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0,
        }))
    }

    /// The gateway is stopping: sessions torn down from now on cancel their held requests
    /// with that reason.
    pub fn stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn resume(self: &Arc<Self>) -> Result<(), StoreError> {
        let pending = self
            .store()
            .list(Some(State::Pending), None, usize::MAX >> 1)?;
        for r in pending {
            match r.mode {
                Mode::Hold => {
                    self.finish(
                        &r.id,
                        State::Cancelled,
                        "the gateway restarted while the statement was held".into(),
                    );
                }
                Mode::DenyAndRetry => self.expire_at(r.id.clone(), r.expires_ms),
            }
        }
        Ok(())
    }

    /// Every request from now on as it is stored: submitted, voted on, decided, expired,
    /// cancelled, its retry used.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Request> {
        self.changes.subscribe()
    }

    /// Tells the listeners (none is fine: nobody is watching).
    fn changed(&self, r: &Request) {
        let _ = self.changes.send(r.clone());
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a `deny_and_retry` request approved for this identical statement waits unused
    /// (then [`Approvals::submit`] lets it through): a `max_rows` rule runs no trial for it.
    pub fn approved_retry_waiting(&self, new: &NewRequest) -> bool {
        let now = now_ms();
        new.spec.mode == Mode::DenyAndRetry
            && self
                .store()
                .by_retry_key(&new.retry_key)
                .unwrap_or_default()
                .iter()
                .any(|r| {
                    r.state == State::Approved
                        && r.mode == Mode::DenyAndRetry
                        && r.covered_by(&new.rule, &new.spec)
                        && r.retry_used_ms.is_none()
                        && now <= r.decided_ms.unwrap_or(0) + r.retry_window_ms
                })
    }

    /// Submits a held statement. For `deny_and_retry`, an approved and unused request for the
    /// identical statement from the same identity lets it through instead, and a pending one
    /// is named again instead of making a second.
    pub fn submit(self: &Arc<Self>, new: NewRequest) -> Result<Gate, ApprovalError> {
        let now = now_ms();
        if new.spec.mode == Mode::DenyAndRetry {
            // Under one lock: two retries racing must not both use one approval.
            let mut store = self.store();
            for mut r in store.by_retry_key(&new.retry_key)? {
                let same_terms = r.mode == Mode::DenyAndRetry && r.covered_by(&new.rule, &new.spec);
                match r.state {
                    State::Approved
                        if same_terms
                            && r.retry_used_ms.is_none()
                            && now <= r.decided_ms.unwrap_or(0) + r.retry_window_ms =>
                    {
                        r.retry_used_ms = Some(now);
                        store.save(
                            &r,
                            &Event {
                                at_ms: now,
                                event: "retry_used",
                                actor: format!("{}#{}", r.issuer, r.subject),
                                detail: json!({"session": new.session}),
                            },
                        )?;
                        drop(store);
                        self.changed(&r);
                        self.events.emit(
                            "approval_retry_used",
                            json!({"id": r.id, "session": new.session}),
                        );
                        return Ok(Gate::Pass(r));
                    }
                    State::Pending if same_terms && now < r.expires_ms => {
                        return Ok(Gate::Refused(r))
                    }
                    _ => {}
                }
            }
        }
        let who = format!("{}#{}", new.issuer, new.subject);
        if self.store().pending_of(&new.issuer, &new.subject)? >= MAX_PENDING_PER_IDENTITY {
            return Err(ApprovalError::TooManyPending(who));
        }
        let request = Request {
            id: format!("ar-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            state: State::Pending,
            created_ms: now,
            expires_ms: now + new.spec.timeout.as_millis() as i64,
            decided_ms: None,
            session: new.session,
            issuer: new.issuer,
            subject: new.subject,
            workload: new.workload,
            target: new.target,
            action: new.action,
            rule: new.rule,
            approvers: new.spec.approvers.clone(),
            quorum: new.spec.quorum,
            mode: new.spec.mode,
            retry_window_ms: new.spec.retry_window.as_millis() as i64,
            retry_used_ms: None,
            retry_key: new.retry_key,
            reason: None,
            votes: Vec::new(),
            trial_rows: new.trial_rows,
        };
        // Waiting for a decision before it can be made: one made the moment the request is
        // stored must find the session.
        let held = match request.mode {
            Mode::Hold => {
                let (tx, rx) = watch::channel(request.clone());
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(request.id.clone(), tx);
                Some(rx)
            }
            Mode::DenyAndRetry => None,
        };
        let saved = self.store().save(
            &request,
            &Event {
                at_ms: now,
                event: "requested",
                actor: format!("{}#{}", request.issuer, request.subject),
                detail: json!({
                    "session": request.session, "workload": request.workload,
                    "target": request.target, "statement": request.action.text,
                    "params": request.action.params, "class": request.action.class,
                    "rule": request.rule, "database": request.action.namespace,
                }),
            },
        );
        if let Err(e) = saved {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&request.id);
            return Err(e.into());
        }
        tracing::info!(id = request.id, rule = request.rule, "approval requested");
        self.changed(&request);
        self.events.emit(
            "approval_requested",
            json!({"id": request.id, "session": request.session, "rule": request.rule,
                   "mode": request.mode, "statement": request.action.text}),
        );
        self.notifier.announce("approval_requested", &request);
        self.expire_at(request.id.clone(), request.expires_ms);
        Ok(match held {
            None => Gate::Refused(request),
            Some(rx) => Gate::Held(Held {
                approvals: self.clone(),
                id: request.id,
                rx,
            }),
        })
    }

    /// Records one approver's verdict. Any eligible denial denies; approvals count once per
    /// approver until the quorum is reached.
    pub fn decide(
        &self,
        id: &str,
        approver: &Approver,
        verdict: Verdict,
        reason: Option<String>,
    ) -> Result<Request, ApprovalError> {
        let reason = reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if verdict == Verdict::Deny && reason.is_none() {
            return Err(ApprovalError::ReasonRequired);
        }
        let who = format!("{}#{}", approver.issuer(), approver.name());
        // One decision at a time: two approvers racing must not both see quorum - 1.
        let mut store = self.store();
        let mut r = store
            .get(id)?
            .ok_or_else(|| ApprovalError::UnknownRequest(id.to_string()))?;
        // Who may decide is checked first: for anyone outside its approver groups the request
        // does not exist (as in a list or a look-up), so they learn nothing of it at all.
        if let Approver::Oidc {
            issuer,
            subject,
            groups,
        } = approver
        {
            if !r.decidable_by(groups) {
                tracing::info!(
                    id,
                    by = who,
                    "a vote from outside the request's approver groups"
                );
                return Err(ApprovalError::UnknownRequest(r.id));
            }
            if *issuer == r.issuer && *subject == r.subject {
                return Err(ApprovalError::SelfApproval(who, r.id));
            }
        }
        if r.state != State::Pending {
            return Err(ApprovalError::NotPending(r.id, r.state.as_str()));
        }
        let now = now_ms();
        if now >= r.expires_ms {
            drop(store);
            self.finish(id, State::Expired, expired_reason(&r));
            return Err(ApprovalError::NotPending(id.to_string(), "expired"));
        }
        if verdict == Verdict::Approve
            && r.votes.iter().any(|v| {
                v.verdict == Verdict::Approve
                    && v.issuer == approver.issuer()
                    && v.approver == approver.name()
            })
        {
            return Err(ApprovalError::AlreadyCounted(who, r.id));
        }
        r.votes.push(Vote {
            approver: approver.name().to_string(),
            issuer: approver.issuer().to_string(),
            via: approver.via().to_string(),
            verdict,
            at_ms: now,
            reason: reason.clone(),
        });
        let done = match verdict {
            Verdict::Deny => Some(State::Denied),
            Verdict::Approve if r.approvals() >= r.quorum as usize => Some(State::Approved),
            Verdict::Approve => None,
        };
        if let Some(state) = done {
            r.state = state;
            r.decided_ms = Some(now);
            r.reason = match state {
                State::Denied => reason.clone(),
                _ => None,
            };
        }
        let event = match verdict {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        };
        store.save(
            &r,
            &Event {
                at_ms: now,
                event,
                actor: who.clone(),
                detail: json!({"via": approver.via(), "reason": reason,
                               "approvals": r.approvals(), "quorum": r.quorum,
                               "state": r.state.as_str()}),
            },
        )?;
        drop(store);
        self.changed(&r);
        tracing::info!(
            id,
            by = who,
            ?verdict,
            state = r.state.as_str(),
            "approval vote"
        );
        if done.is_some() {
            self.decided(&r, &who);
        }
        Ok(r)
    }

    /// Decisions another process stored for requests held here: after a handover the successor
    /// answers approvers, and this process (draining) holds statements of its own sessions.
    /// The deciding process announced them; here they only reach the held statements.
    pub fn take_decisions_from_store(&self) -> usize {
        let ids: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut delivered = 0;
        for id in ids {
            let r = match self.store().get(&id) {
                Ok(Some(r)) if r.state != State::Pending => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(id, "approval request unreadable while draining: {e}");
                    continue;
                }
            };
            let held = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(tx) = held {
                tracing::info!(id, state = r.state.as_str(), "decided by the successor");
                let _ = tx.send(r);
                delivered += 1;
            }
        }
        delivered
    }

    /// How many requests wait for a decision (for the metrics).
    pub fn pending_count(&self) -> Result<usize, ApprovalError> {
        Ok(self.store().pending()?)
    }

    /// Cancels a pending request (its session ended, the agent left).
    pub fn cancel(&self, id: &str, why: &str) {
        self.finish(id, State::Cancelled, why.to_string());
    }

    pub fn get(&self, id: &str) -> Result<Request, ApprovalError> {
        self.store()
            .get(id)?
            .ok_or_else(|| ApprovalError::UnknownRequest(id.to_string()))
    }

    /// Newest first, at most [`LIST_LIMIT`]; `None`: every state. With `groups`, only the
    /// requests one of them may decide.
    pub fn list(
        &self,
        state: Option<State>,
        groups: Option<&[String]>,
    ) -> Result<Vec<Request>, ApprovalError> {
        Ok(self.store().list(state, groups, LIST_LIMIT)?)
    }

    /// The approved statement was sent to the target (the trail says it ran, not just that it
    /// was allowed to).
    pub fn forwarded(&self, id: &str, session: &str) {
        let e = Event {
            at_ms: now_ms(),
            event: "forwarded",
            actor: "gateway".into(),
            detail: json!({"session": session}),
        };
        if let Err(err) = self.store().event(id, session, &e) {
            tracing::error!(id, "approval trail: forwarded not stored: {err}");
        }
    }

    fn expire_at(self: &Arc<Self>, id: String, at_ms: i64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = Arc::downgrade(self);
        rt.spawn(async move {
            let wait = (at_ms - now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if let Some(this) = this.upgrade() {
                let reason = match this.get(&id) {
                    Ok(r) if r.state == State::Pending => expired_reason(&r),
                    _ => return,
                };
                this.finish(&id, State::Expired, reason);
            }
        });
    }

    /// Ends a pending request without a vote (expiry, cancellation). A request already decided
    /// stays as it is.
    /// Ends a pending request as `state` (an outcome only the gateway decides: expired or
    /// cancelled), with the event of the same name.
    fn finish(&self, id: &str, state: State, reason: String) {
        let (event, actor) = (state.as_str(), "gateway".to_string());
        let mut store = self.store();
        let mut r = match store.get(id) {
            Ok(Some(r)) if r.state == State::Pending => r,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(id, "approval request unreadable; it stays pending: {e}");
                return;
            }
        };
        let now = now_ms();
        r.state = state;
        r.decided_ms = Some(now);
        r.reason = Some(reason.clone());
        let saved = store.save(
            &r,
            &Event {
                at_ms: now,
                event,
                actor: actor.clone(),
                detail: json!({"reason": reason}),
            },
        );
        drop(store);
        if let Err(e) = saved {
            // The held session is still told: it must not wait for a decision that came.
            tracing::error!(id, "approval request {event} but not stored: {e}");
        }
        self.changed(&r);
        self.decided(&r, &actor);
    }

    /// Tells the holding session, the event log and the webhooks.
    fn decided(&self, r: &Request, by: &str) {
        if let Some(tx) = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&r.id)
        {
            let _ = tx.send(r.clone());
        }
        tracing::info!(
            id = r.id,
            state = r.state.as_str(),
            by,
            "approval request decided"
        );
        self.events.emit(
            "approval_decided",
            json!({"id": r.id, "state": r.state.as_str(), "by": by, "reason": r.reason}),
        );
        self.notifier.announce("approval_decided", r);
    }
}

fn expired_reason(r: &Request) -> String {
    format!(
        "no decision within {} s",
        (r.expires_ms - r.created_ms) / 1000
    )
}

/// A statement held for a request. Dropping it while the request is pending cancels the
/// request: the session that would have run the statement is gone.
pub struct Held {
    approvals: Arc<Approvals>,
    id: String,
    rx: watch::Receiver<Request>,
}

impl Held {
    pub fn request(&self) -> Request {
        self.rx.borrow().clone()
    }

    /// The request once it is no longer pending.
    pub async fn decided(&mut self) -> Request {
        loop {
            {
                let r = self.rx.borrow_and_update();
                if r.state != State::Pending {
                    return r.clone();
                }
            }
            if self.rx.changed().await.is_err() {
                // The sender is dropped only after sending the final state.
                return self.rx.borrow().clone();
            }
        }
    }

    pub fn cancel(&self, why: &str) {
        self.approvals.cancel(&self.id, why);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.rx.borrow().state == State::Pending {
            let why = if self
                .approvals
                .stopping
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                "the gateway stopped (shutdown or restart) while the statement was held"
            } else {
                "the agent's session ended while the statement was held"
            };
            self.approvals.cancel(&self.id, why);
        }
    }
}
