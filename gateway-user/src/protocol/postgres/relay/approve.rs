//! Holding a statement for people: an approval request, the agent told at once, its leaving and
//! its CancelRequests watched while it waits, and the decision judged again under the policy in
//! force.

use super::*;

impl Upward<'_, '_> {
    /// Under an approval rule, asks people: `hold` waits here for their decision (the agent is
    /// told at once what it waits for), `deny_and_retry` refuses now unless this identical
    /// statement was approved. `Ok(None)`: it runs. Anything but an approval is a denial.
    pub(super) async fn approval<R, W>(
        &mut self,
        stmt: &RuleStatement<'_>,
        params: &Params,
        from: &mut BufReader<R>,
        to: &mut W,
    ) -> Result<Option<Denied>, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (classified, text) = (stmt.classified, stmt.text);
        let policy = self.ctx.policy.borrow().clone();
        let Some(rule) = policy.approval_required(&self.ctx.who(), &self.ctx.target, stmt) else {
            return Ok(None);
        };
        let Some(spec) = rule.approval.as_deref() else {
            return Ok(None);
        };
        let refuse = |message: String| {
            Ok(Some(Denied {
                rule: rule.name.clone(),
                message: Some(message),
            }))
        };
        // People approve what they are shown: a statement whose text or values the gateway
        // cannot show in full is refused, never put to them (nor keyed for a retry).
        if let Some(why) = unshowable(classified, text, params) {
            return refuse(format!(
                "agentgate: this statement needs approval (rule \"{}\"), but {why}; send its text with Parse/Query",
                rule.name
            ));
        }
        let (statement, recorded) = self.for_record(text, params.shown.clone());
        let new = NewRequest {
            session: self.ctx.session.clone(),
            issuer: self.ctx.issuer.clone(),
            subject: self.ctx.subject.clone(),
            workload: self.ctx.workload.clone(),
            target: self.ctx.target.clone(),
            action: Action {
                protocol: "postgres".into(),
                namespace: self.ctx.database.clone(),
                text: statement,
                params: recorded,
                class: classified.class.as_str().to_string(),
            },
            rule: rule.name.clone(),
            spec: spec.clone(),
            // Only a deny_and_retry request is ever looked up by its key.
            retry_key: match spec.mode {
                Mode::DenyAndRetry => retry_key(self.ctx, text, &params.digest),
                Mode::Hold => String::new(),
            },
            trial_rows: self.trial_rows.take(),
        };
        // Under `max_rows`, a write is tried first (see `trial`), unless it was tried already
        // (`new.trial_rows`: over the limit) or an approved retry of it waits.
        if let Some(limit) = spec.max_rows {
            if self.triable
                && trial::triable(text)
                && new.trial_rows.is_none()
                && !self.ctx.approvals.approved_retry_waiting(&new)
            {
                self.trial = Some(limit);
                return Ok(None);
            }
        }
        let mut held = match self.ctx.approvals.submit(new) {
            Ok(Gate::Held(held)) => held,
            Ok(Gate::Pass(r)) => {
                self.approved = Some(Approved::of(&r));
                return Ok(None);
            }
            Ok(Gate::Refused(r)) => {
                return refuse(format!(
                    "agentgate: approval required: request {} (rule \"{}\") waits for {}; once it is approved, retry the identical statement within {} s",
                    r.id,
                    r.rule,
                    r.waits_for(),
                    r.retry_window_ms / 1000
                ))
            }
            Err(e @ crate::approval::ApprovalError::TooManyPending(_)) => {
                tracing::debug!(rule = rule.name, "approval refused: {e}");
                return refuse(format!(
                    "agentgate: this statement needs approval (rule \"{}\"), but {e}; wait for decisions first",
                    rule.name
                ));
            }
            Err(e) => {
                tracing::error!(rule = rule.name, "approval request not stored: {e}");
                return refuse(format!(
                    "agentgate: this statement needs approval (rule \"{}\") but the request could not be stored",
                    rule.name
                ));
            }
        };
        let r = held.request();
        self.shared.tell_agent(out::notice_with_hint(
            "NOTICE",
            "00000",
            &format!(
                "agentgate: approval required: request {} (rule \"{}\") waits for {}; held for up to {} s",
                r.id,
                r.rule,
                r.waits_for(),
                (r.expires_ms - r.created_ms) / 1000
            ),
            &format!(
                "Approvers decide with `agentgate approvals approve|deny {}` on the gateway's node, or through its HTTP admin API.",
                r.id
            ),
        ));
        // What the agent sent before this statement runs now, not after the decision.
        to.flush()
            .await
            .map_err(|e| RelayError::Upstream(CodecError::Io(e)))?;
        struct Holding<'c>(&'c Counters);
        impl Drop for Holding<'_> {
            fn drop(&mut self) {
                self.0.held.store(false, Ordering::Relaxed);
            }
        }
        self.counters.held.store(true, Ordering::Relaxed);
        let _holding = Holding(self.counters);
        enum Woke {
            Decided(Box<crate::approval::Request>),
            AgentLeft(Option<CodecError>),
            AgentSent,
            Cancelled,
        }
        let mut cancels = self.ctx.cancels.clone();
        let cancels_before = *cancels.borrow_and_update();
        let cancelled = |id: &str| {
            format!("agentgate: request {id} withdrawn: canceling statement due to user request")
        };
        let decided = loop {
            let woke = tokio::select! {
                r = held.decided() => Woke::Decided(Box::new(r)),
                () = cancel_after(&mut cancels, cancels_before) => Woke::Cancelled,
                read = from.fill_buf() => match read {
                    Ok([]) => Woke::AgentLeft(None),
                    Ok(_) => Woke::AgentSent,
                    Err(e) => Woke::AgentLeft(Some(CodecError::Io(e))),
                },
            };
            match woke {
                Woke::Decided(r) => break r,
                // A CancelRequest withdraws the request: recorded as cancelled, the agent gets
                // 57014, and the statement never runs, whatever approvers do later.
                Woke::Cancelled => {
                    let id = held.request().id.clone();
                    held.cancel("the agent cancelled the statement (CancelRequest)");
                    self.next_refusal_code = Some(SQLSTATE_CANCELED);
                    return refuse(cancelled(&id));
                }
                // Pipelined messages (a Sync behind the Execute, say) are read off the socket
                // and wait their turn, so that the agent leaving stays visible behind them.
                Woke::AgentSent if self.queued_bytes >= MAX_QUEUED_WHILE_HELD => {
                    held.cancel("the agent sent too much behind its held statement");
                    return Err(RelayError::HeldBacklog);
                }
                Woke::AgentSent => match tokio::time::timeout(
                    PARTIAL_WHILE_HELD,
                    codec::read_frame(from, self.ctx.max_message),
                )
                .await
                {
                    Err(_) => {
                        held.cancel("the agent stalled in the middle of a message while its statement was held");
                        return Err(RelayError::StalledWhileHeld);
                    }
                    Ok(Ok(Some(f))) => {
                        self.counters
                            .up
                            .fetch_add(f.bytes.len() as u64, Ordering::Relaxed);
                        self.queued_bytes += f.bytes.len();
                        self.queued.push_back(f);
                    }
                    Ok(Ok(None)) => {
                        held.cancel("the agent disconnected while its statement was held");
                        return Err(RelayError::LeftWhileHeld);
                    }
                    Ok(Err(e)) => {
                        held.cancel("the agent's connection failed while its statement was held");
                        return Err(RelayError::Client(e));
                    }
                },
                Woke::AgentLeft(e) => {
                    held.cancel("the agent disconnected while its statement was held");
                    return Err(match e {
                        None => RelayError::LeftWhileHeld,
                        Some(e) => RelayError::Client(e),
                    });
                }
            }
        };
        // A cancel that came with the decision still counts: the agent stopped waiting.
        if *self.ctx.cancels.borrow() > cancels_before {
            self.next_refusal_code = Some(SQLSTATE_CANCELED);
            return refuse(cancelled(&decided.id));
        }
        match decided.state {
            State::Approved => {
                // The policy may have changed while it waited: it runs only if the approval
                // still covers the rule in force (Request::covered_by), or none applies now.
                if let Some(d) = self.decide(stmt) {
                    return Ok(Some(d));
                }
                if let Some(d) = self.mask_denial(classified).await? {
                    return Ok(Some(d));
                }
                let policy = self.ctx.policy.borrow().clone();
                if let Some(now) = policy.approval_required(&self.ctx.who(), &self.ctx.target, stmt)
                {
                    if !now
                        .approval
                        .as_deref()
                        .is_some_and(|spec| decided.covered_by(&now.name, spec))
                    {
                        return refuse(format!(
                            "agentgate: request {} was approved, but the policy changed while it waited (rule \"{}\" now applies); send the statement again",
                            decided.id, now.name
                        ));
                    }
                }
                self.approved = Some(Approved::of(&decided));
                Ok(None)
            }
            State::Denied => {
                let by = decided
                    .votes
                    .iter()
                    .rev()
                    .find(|v| v.verdict == crate::approval::Verdict::Deny)
                    .map(|v| v.approver.clone())
                    .unwrap_or_else(|| "an approver".into());
                refuse(format!(
                    "agentgate: request {} denied by {by}: {}",
                    decided.id,
                    decided.reason.as_deref().unwrap_or("no reason given")
                ))
            }
            State::Expired => refuse(format!(
                "agentgate: request {} expired: {}",
                decided.id,
                decided.reason.as_deref().unwrap_or("no decision in time")
            )),
            State::Cancelled | State::Pending => refuse(format!(
                "agentgate: request {} {}: {}",
                decided.id,
                decided.state.as_str(),
                decided.reason.as_deref().unwrap_or("")
            )),
        }
    }
}

/// PostgreSQL's `query_canceled`.
const SQLSTATE_CANCELED: &str = "57014";

/// Resolves once a CancelRequest beyond the first `before` reached the session; never, once
/// the session's cancel key is gone.
async fn cancel_after(cancels: &mut watch::Receiver<u64>, before: u64) {
    if cancels.wait_for(|n| *n > before).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// "The identical statement from the same identity": the principal, the target, the statement
/// as pg_query prints it back (case and spacing do not matter, constants do) and the parameters.
pub(super) fn retry_key(ctx: &SessionContext<'_>, text: &str, params: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let canonical = pg_query::parse(text, pg_query::ParserOptions::DEFAULT)
        .and_then(|tree| tree.deparse(Default::default()))
        .unwrap_or_else(|_| text.split_whitespace().collect::<Vec<_>>().join(" "));
    let mut h = Sha256::new();
    for part in [
        &ctx.issuer,
        &ctx.subject,
        &ctx.workload,
        &ctx.target,
        &ctx.database,
        &canonical,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(params);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a statement cannot be put to approvers as it will run, if it cannot.
pub(super) fn unshowable(c: &Classified, text: &str, params: &Params) -> Option<&'static str> {
    if text.trim().is_empty() {
        return Some("the gateway does not know its text (a statement prepared with SQL PREPARE or not seen prepared, a portal not seen bound, or a name that may stand for several texts)");
    }
    if c.note
        .as_deref()
        .is_some_and(|n| n.starts_with("EXECUTE of a prepared statement"))
    {
        return Some("SQL EXECUTE runs a prepared statement whose text is not in the query");
    }
    if params.cut {
        return Some("a parameter is too long to show in full");
    }
    None
}
