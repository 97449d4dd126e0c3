//! Target → agent: the server's answers, paired with what was sent (the pending queue), masked,
//! rewritten for denials and recorded.

use super::*;

/// Target → agent: forwards everything, rewrites the server's errors for denied statements and
/// completes the statement records.
pub(super) async fn downward<R, W>(
    ctx: &SessionContext<'_>,
    shared: &Shared,
    counters: &Counters,
    mut from: BufReader<R>,
    to: &mut W,
) -> Result<Ended, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |e| RelayError::Client(CodecError::Io(e));
    let mut masking = Masking::default();
    let mut kept = Kept::default();
    // An extended-protocol message failed: the server skips every message up to the next Sync,
    // a Query or FunctionCall sent inside the batch too.
    let mut skipping_to_sync = false;
    let mut held = trial::Held::default();
    // The statement at the front started COPY FROM STDIN (CopyInResponse): Syncs the agent sent
    // during it were ignored by the server (see `Pending::Sync`).
    let mut copy_in = false;
    loop {
        // Between the target's messages, the gateway's own for the agent (an approval notice
        // while a statement is held) go out at once.
        if from.buffer().is_empty() {
            let notice = tokio::select! {
                biased;
                _ = shared.notice_ready.notified() => true,
                r = from.fill_buf() => {
                    r.map_err(|e| RelayError::Upstream(CodecError::Io(e)))?;
                    false
                }
            };
            if notice {
                for n in shared.take_notices() {
                    to.write_all(&n.bytes).await.map_err(io)?;
                }
                to.flush().await.map_err(io)?;
                continue;
            }
        }
        let Some(mut frame) = codec::read_frame(&mut from, ctx.max_message)
            .await
            .map_err(RelayError::Upstream)?
        else {
            to.flush().await.map_err(io)?;
            return Ok(Ended::Upstream);
        };
        counters
            .down
            .fetch_add(frame.bytes.len() as u64, Ordering::Relaxed);
        let mut done = Vec::new();
        let mut forward = true;
        // Frames for the agent before this one (a trial's answer released by its decision).
        let mut before: Vec<Frame> = Vec::new();
        let holding = {
            let q = shared.pending();
            // Fail closed: an answer that fits nothing sent means the pairing of answers and
            // statements (masking, denials, the record) is lost.
            if let Some(what) = out_of_step(&frame, &q) {
                return Err(RelayError::OutOfStep(what));
            }
            match q.front() {
                Some(Pending::Trial { .. }) => Holding::Trial,
                Some(Pending::Own(_)) => Holding::Own,
                _ => Holding::Nothing,
            }
        };
        match frame.tag() {
            // The gateway's own rows (a trial's count) are neither masked nor the agent's.
            b'D' if matches!(holding, Holding::Own) => {}
            b'D' => {
                if let Some(new) = masking.row(ctx, &frame).map_err(RelayError::Upstream)? {
                    frame = new;
                }
                kept.row(ctx.results_cap, &frame);
            }
            b'd' => {
                if let Some(new) = masking.copy_data(&frame) {
                    frame = new;
                }
            }
            b'T' | b'n' => {
                let (front, classified) = {
                    let mut q = shared.pending();
                    let front = match q.front() {
                        Some(Pending::Describe) => {
                            q.pop_front();
                            Describer::Gateway
                        }
                        Some(Pending::ClientDescribe) => {
                            q.pop_front();
                            Describer::Agent
                        }
                        Some(Pending::Simple(_))
                        | Some(Pending::Call(_))
                        | Some(Pending::Trial { .. }) => Describer::Query,
                        _ => Describer::Agent,
                    };
                    // The statement the rows belong to (after the gateway's Describe: the
                    // Execute it was sent for).
                    let classified = match q.front() {
                        Some(Pending::Simple(o))
                        | Some(Pending::Execute(o))
                        | Some(Pending::Trial { open: o, .. }) => o.classified.clone(),
                        _ => None,
                    };
                    (front, classified)
                };
                // The agent's own Describe of a statement says nothing of the formats its
                // rows will have; only a query's description and the gateway's own count.
                if front != Describer::Agent {
                    masking.describe(ctx, &frame, classified.as_deref()).await?;
                }
                forward = front != Describer::Gateway;
            }
            b'H' => {
                let planned = match shared.pending().front() {
                    Some(Pending::Simple(o)) | Some(Pending::Execute(o)) => Some(o.copy.clone()),
                    _ => None,
                };
                masking.copy_out(ctx, planned.flatten())?;
            }
            b'c' => masking.copy = None,
            b'G' => copy_in = true,
            b'3' => {
                let mut q = shared.pending();
                if let Some(Pending::Close) = q.front() {
                    q.pop_front();
                }
            }
            b'1' => {
                let mut q = shared.pending();
                if let Some(Pending::Parse(id)) = q.front() {
                    shared.parsed().push((*id, true));
                    q.pop_front();
                }
            }
            b'2' => {
                let mut q = shared.pending();
                if let Some(Pending::Bind(id)) = q.front() {
                    shared.bound().push((*id, true));
                    q.pop_front();
                }
            }
            b'C' => {
                masking.end_of_result();
                let rows = command_rows(&frame);
                let mut q = shared.pending();
                let ddl = match q.front() {
                    Some(Pending::Execute(o)) | Some(Pending::Simple(o)) => o.rec.class == "ddl",
                    _ => false,
                };
                if ddl {
                    // A rename or a redefined view changes what column origins mean.
                    ctx.catalog.invalidate();
                    masking.ddl_in_transaction = true;
                }
                match q.front_mut() {
                    Some(Pending::Execute(_)) => {
                        if let Some(Pending::Execute(mut o)) = q.pop_front() {
                            o.rec.rows = rows;
                            done.push(o);
                        }
                        drop_ignored_syncs(&mut q, &mut copy_in, false)?;
                    }
                    Some(Pending::Simple(o))
                    | Some(Pending::Call(o))
                    | Some(Pending::Trial { open: o, .. }) => {
                        if let Some(r) = rows {
                            o.rec.rows = Some(o.rec.rows.unwrap_or(0).saturating_add(r));
                        }
                    }
                    _ => {}
                }
            }
            b'I' | b's' => {
                masking.end_of_result();
                let mut q = shared.pending();
                if let Some(Pending::Execute(_)) = q.front() {
                    if let Some(Pending::Execute(mut o)) = q.pop_front() {
                        o.rec.rows = Some(0).filter(|_| frame.tag() == b'I').or(o.rec.rows);
                        done.push(o);
                    }
                }
            }
            b'N' => {
                let notice = Notice::parse(&frame).map_err(RelayError::Upstream)?;
                let raised_by = |judged| raiser(&shared.pending(), judged);
                if let Some((new, _)) = masking.notice(ctx, b'N', &notice, raised_by).await {
                    frame = new;
                }
            }
            b'E' => {
                masking.end_of_result();
                let notice = Notice::parse(&frame).map_err(RelayError::Upstream)?;
                let raised_by = |judged| raiser(&shared.pending(), judged);
                let (code, message) = match denial_of(shared, &notice) {
                    Some(d) => {
                        let message = d.message.unwrap_or_else(|| denial_message(&d.rule));
                        let message = if message.starts_with("agentgate:") {
                            message
                        } else {
                            format!("agentgate: {message} (rule \"{}\")", d.rule)
                        };
                        let detail = describe(&d.classified);
                        frame = out::error("ERROR", d.code, &message, Some(&detail));
                        (d.code.to_string(), message)
                    }
                    None => match masking.notice(ctx, b'E', &notice, raised_by).await {
                        Some((new, masked)) => {
                            frame = new;
                            (masked.sqlstate().to_string(), masked.message().to_string())
                        }
                        None => (notice.sqlstate().to_string(), notice.message().to_string()),
                    },
                };
                let mut q = shared.pending();
                // The error of a Parse, Bind or Describe (the gateway's or the agent's) ends the
                // batch; the statement it was for is recorded with it.
                let mut extended = false;
                while let Some(
                    Pending::Parse(_)
                    | Pending::Bind(_)
                    | Pending::Close
                    | Pending::Describe
                    | Pending::ClientDescribe,
                ) = q.front()
                {
                    extended = true;
                    match q.pop_front() {
                        Some(Pending::Parse(id)) => shared.parsed().push((id, false)),
                        Some(Pending::Bind(id)) => shared.bound().push((id, false)),
                        _ => {}
                    }
                }
                match q.front_mut() {
                    Some(Pending::Execute(_)) => {
                        extended = true;
                        if let Some(Pending::Execute(mut o)) = q.pop_front() {
                            o.rec.error_code = Some(code);
                            o.rec.error = Some(message);
                            done.push(o);
                        }
                        drop_ignored_syncs(&mut q, &mut copy_in, true)?;
                    }
                    // The first error of a Query is its outcome; a Query behind a failed
                    // message of its batch is skipped, not failed.
                    Some(Pending::Simple(o))
                    | Some(Pending::Call(o))
                    | Some(Pending::Trial { open: o, .. })
                        if !extended && o.rec.error.is_none() =>
                    {
                        o.rec.error_code = Some(code);
                        o.rec.error = Some(message);
                    }
                    // The COMMIT that ends a trial failed (a deferred constraint): the
                    // statement's outcome is that error.
                    Some(Pending::Own(trial::Finish::Deliver)) => {
                        if let Some(o) = held.open.as_mut().filter(|o| o.rec.error.is_none()) {
                            o.rec.error_code = Some(code);
                            o.rec.error = Some(message);
                        }
                    }
                    _ => {}
                }
                if extended {
                    skipping_to_sync = true;
                    shared.skipping.store(true, Ordering::Relaxed);
                }
            }
            b'S' => {
                // However a setting changed (SET, set_config in a function, ALTER ROLE … SET
                // in force at login), the session cannot go on once SQL text would be read
                // differently by the server than by the gateway.
                let (name, value) =
                    codec::parameter_status(&frame).map_err(RelayError::Upstream)?;
                if !codec::lexer_safe(&name, &value) {
                    return Err(RelayError::UnsafeSetting(name, value));
                }
                // A reported setting can carry a value (application_name set from a column).
                if let Some(plan) = masking.plan.get(ctx) {
                    let masked = plan.mask_str(&value);
                    if masked != value {
                        frame = Frame::build(b'S', |b| {
                            put_cstr(b, &name);
                            put_cstr(b, &masked);
                        });
                    }
                }
            }
            b'V' => {
                // A FunctionCall's result (allowed only when no column rule applies): a value
                // the detectors flag is not sent at all.
                if let Some(plan) = masking.plan.get(ctx) {
                    let mut f = Fields::new(&frame);
                    let len = f.i32().map_err(RelayError::Upstream)?;
                    if len > 0 {
                        let value = f.take(len as usize).map_err(RelayError::Upstream)?;
                        if plan.detect(value, &mut masking.hits).is_some() {
                            frame = Frame::build(b'V', |b| b.put_i32(-1));
                        }
                    }
                }
            }
            b'A' => {
                // A notification's payload is any text another session (or this one) chose.
                if let Some(plan) = masking.plan.get(ctx) {
                    let mut f = Fields::new(&frame);
                    let pid = f.i32().map_err(RelayError::Upstream)?;
                    let channel = f.cstr().map_err(RelayError::Upstream)?;
                    let payload = f.cstr().map_err(RelayError::Upstream)?;
                    let (c, p) = (plan.mask_str(channel), plan.mask_str(payload));
                    if c != channel || p != payload {
                        frame = Frame::build(b'A', |b| {
                            b.put_i32(pid);
                            put_cstr(b, &c);
                            put_cstr(b, &p);
                        });
                    }
                }
            }
            b'Z' => {
                masking.end_of_result();
                if frame.body().first() == Some(&b'I') {
                    masking.ddl_in_transaction = false;
                }
                shared.status.store(
                    frame.body().first().copied().unwrap_or(b'E'),
                    Ordering::Relaxed,
                );
                let mut q = shared.pending();
                // While skipping, this ReadyForQuery answers the Sync: everything before it was
                // skipped, Queries included. Otherwise it ends a Query, or a batch's Sync.
                let skipped = std::mem::take(&mut skipping_to_sync);
                shared.skipping.store(false, Ordering::Relaxed);
                if matches!(q.front(), Some(Pending::Trial { .. } | Pending::Own(_))) {
                    // A trial's answer, or the gateway's own statement around it (`trial`).
                    if let Some(p) = q.pop_front() {
                        forward = held.answered(p, shared, &mut before, &mut done);
                    }
                } else {
                    while let Some(p) = q.pop_front() {
                        match p {
                            Pending::Describe | Pending::ClientDescribe | Pending::Close => {}
                            Pending::Bind(id) => shared.bound().push((id, false)),
                            // Skipped after an error in its batch.
                            Pending::Parse(id) => shared.parsed().push((id, false)),
                            Pending::Execute(mut o) => {
                                // Skipped by the server after an earlier error in the batch.
                                o.rec.error = Some(NOT_EXECUTED.into());
                                done.push(o);
                            }
                            Pending::Simple(mut o) | Pending::Call(mut o) if skipped => {
                                o.rec.error = Some(NOT_EXECUTED.into());
                                done.push(o);
                            }
                            Pending::Simple(o) | Pending::Call(o) => {
                                let failed = o.rec.error.is_some();
                                done.push(o);
                                drop_ignored_syncs(&mut q, &mut copy_in, failed)?;
                                break;
                            }
                            Pending::Sync { .. } => break,
                            // Not reached (a trial starts only with nothing pending): left for
                            // the ReadyForQuery that is its own.
                            p @ (Pending::Trial { .. } | Pending::Own(_)) => {
                                q.push_front(p);
                                break;
                            }
                        }
                    }
                }
                if frame.body().first() == Some(&b'I') && q.is_empty() {
                    ctx.catalog.idle();
                }
            }
            _ => {}
        }
        // A trial's answer waits for the gateway's decision; the answers to the gateway's own
        // statements are its own (settings and notifications still reach the agent).
        if frame.tag() != b'Z' && forward {
            match holding {
                Holding::Trial => {
                    held.frames.push(frame.clone());
                    forward = false;
                }
                Holding::Own if !matches!(frame.tag(), b'S' | b'A') => {
                    match frame.tag() {
                        b'E' => held.errors.push(frame.clone()),
                        b'D' => held.count = trial::changed_of(&frame),
                        _ => {}
                    }
                    forward = false;
                }
                _ => {}
            }
        }
        for f in before {
            to.write_all(&f.bytes).await.map_err(io)?;
        }
        if forward {
            to.write_all(&frame.bytes).await.map_err(io)?;
        }
        for mut o in done {
            // Rows arrive before the completion of the statement they belong to.
            kept.hand_to(&mut o.rec);
            o.rec.duration_us = Some(o.started.elapsed().as_micros() as u64);
            ctx.recorder.record(Record::Statement(o.rec)).await;
        }
        if from.buffer().is_empty() {
            to.flush().await.map_err(io)?;
        }
    }
}

/// Whose answer the target is sending (see [`trial`]).
enum Holding {
    Nothing,
    Trial,
    Own,
}

/// After a statement that ran COPY FROM STDIN ended: the Syncs the agent sent during the copy
/// got no answer (the server ignores them in copy-in mode) and leave the queue. If the COPY
/// failed, the server may have left copy-in mode before reading them (an error before the
/// first row, or at a bad row) and answered them: which ones it answered cannot be known, so
/// the session ends rather than guess (fail closed).
fn drop_ignored_syncs(
    q: &mut VecDeque<Pending>,
    copy_in: &mut bool,
    failed: bool,
) -> Result<(), RelayError> {
    if std::mem::take(copy_in) {
        if failed && matches!(q.front(), Some(Pending::Sync { during_copy: true })) {
            return Err(RelayError::OutOfStep(
                "a Sync sent during a COPY FROM STDIN that failed",
            ));
        }
        while let Some(Pending::Sync { during_copy: true }) = q.front() {
            q.pop_front();
        }
    }
    Ok(())
}

/// `Some(what)` when `frame` answers nothing at the front of `q` (see [`RelayError::OutOfStep`]).
fn out_of_step(frame: &Frame, q: &VecDeque<Pending>) -> Option<&'static str> {
    use Pending as P;
    let front = q.front();
    let statement = matches!(
        front,
        Some(P::Simple(_) | P::Execute(_) | P::Trial { .. } | P::Own(_))
    );
    let fits = match frame.tag() {
        b'1' => matches!(front, Some(P::Parse(_))),
        b'2' => matches!(front, Some(P::Bind(_))),
        b'3' => matches!(front, Some(P::Close)),
        b'D' | b'C' | b'd' | b'c' | b'H' | b'G' | b'W' | b'I' => statement,
        b's' => matches!(front, Some(P::Execute(_))),
        b'T' => {
            statement && !matches!(front, Some(P::Execute(_)))
                || matches!(front, Some(P::Describe | P::ClientDescribe | P::Call(_)))
        }
        b'n' => matches!(front, Some(P::Describe | P::ClientDescribe)),
        b't' => matches!(front, Some(P::ClientDescribe)),
        b'V' => matches!(front, Some(P::Call(_))),
        b'Z' => q.iter().any(|p| {
            matches!(
                p,
                P::Simple(_) | P::Call(_) | P::Sync { .. } | P::Trial { .. } | P::Own(_)
            )
        }),
        // An error with nothing sent is only the server ending the session.
        b'E' => {
            front.is_some() || {
                let f = frame.body();
                f.windows(7).any(|w| w == b"SFATAL\0") || f.windows(7).any(|w| w == b"SPANIC\0")
            }
        }
        _ => true,
    };
    (!fits).then(|| match frame.tag() {
        b'1' => "ParseComplete",
        b'2' => "BindComplete",
        b'3' => "CloseComplete",
        b'D' => "DataRow",
        b'C' => "CommandComplete",
        b'T' => "RowDescription",
        b'n' => "NoData",
        b't' => "ParameterDescription",
        b'V' => "FunctionCallResponse",
        b'Z' => "ReadyForQuery",
        b'E' => "ErrorResponse",
        b's' => "PortalSuspended",
        _ => "a COPY or empty-query answer",
    })
}

/// The outcome of a statement the server skipped after an earlier message of its batch failed.
const NOT_EXECUTED: &str = "not executed: an earlier message of the batch failed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Describer {
    /// The gateway's Describe before an Execute.
    Gateway,
    /// The agent's Describe.
    Agent,
    /// A simple Query (or FunctionCall) describing its own result.
    Query,
}

/// What the rows now arriving are, for masking.
#[derive(Default)]
enum Rows {
    /// No description seen for them.
    #[default]
    Undescribed,
    /// Described, and nothing in them is masked.
    Plain,
    Masked(ResultMask),
}

/// The downward side's masking state.
#[derive(Default)]
struct Masking {
    /// The session ran DDL in the open transaction: the gateway's own catalog connection
    /// cannot see it, so column origins are not known until the transaction ends.
    ddl_in_transaction: bool,
    plan: PlanCache,
    rows: Rows,
    copy: Option<Arc<CopyMask>>,
    hits: Vec<Hit>,
    texts: TextGuard,
}

impl Masking {
    fn end_of_result(&mut self) {
        self.rows = Rows::Undescribed;
        self.copy = None;
    }

    /// A RowDescription (or NoData) for the rows that follow.
    async fn describe(
        &mut self,
        ctx: &SessionContext<'_>,
        frame: &Frame,
        statement: Option<&Classified>,
    ) -> Result<(), RelayError> {
        self.rows = Rows::Plain;
        let Some(plan) = self.plan.get(ctx) else {
            return Ok(());
        };
        if frame.tag() != b'T' {
            return Ok(());
        }
        if self.ddl_in_transaction && plan.has_columns() {
            self.rows = Rows::Masked(ResultMask::unknown(plan));
            return Ok(());
        }
        let fields = row::fields(frame).map_err(RelayError::Upstream)?;
        let needed = row::origins_needed(&fields);
        let relations = if plan.has_columns() && !needed.is_empty() {
            ctx.catalog.relations(&needed).await.map_err(|e| {
                RelayError::Unmaskable(format!("cannot resolve column origins for masking: {e}"))
            })?
        } else {
            HashMap::new()
        };
        // Rows of a statement the gateway did not see are judged as if it could output anything.
        let unknown = Classified::opaque("rows of an unknown statement");
        let statement = statement.unwrap_or(&unknown);
        let expressions = fields.iter().any(|f| f.table == 0 || f.attnum <= 0);
        let taint = if !plan.has_columns() || !expressions {
            None
        } else {
            let rels = if statement.output_columns.is_empty() {
                Vec::new()
            } else {
                resolve_tables(ctx, statement).await?
            };
            plan.output_taint(statement, &rels)
        };
        let mask = ResultMask::new(plan, &fields, &relations, taint)
            .map_err(|e| RelayError::Unmaskable(e.to_string()))?;
        if !mask.is_noop() {
            self.rows = Rows::Masked(mask);
        }
        Ok(())
    }

    fn row(
        &mut self,
        ctx: &SessionContext<'_>,
        frame: &Frame,
    ) -> Result<Option<Frame>, CodecError> {
        match &self.rows {
            Rows::Plain => Ok(None),
            // Masked under the plan of its description, even if a reload came in between.
            Rows::Masked(m) => m.apply(frame, &mut self.hits),
            // Rows of an Execute sent while no mask rule applied; a reload applies from the
            // next result on, unless it came between the statement and its first row (then
            // nothing is known of the columns: every value is nulled).
            Rows::Undescribed => match self.plan.get(ctx) {
                Some(plan) => {
                    let mask = ResultMask::unknown(plan);
                    let masked = mask.apply(frame, &mut self.hits);
                    self.rows = Rows::Masked(mask);
                    masked
                }
                None => {
                    self.rows = Rows::Plain;
                    Ok(None)
                }
            },
        }
    }

    fn copy_out(
        &mut self,
        ctx: &SessionContext<'_>,
        planned: Option<Arc<CopyMask>>,
    ) -> Result<(), RelayError> {
        self.copy = planned;
        if self.copy.is_none() && self.plan.get(ctx).is_some() {
            return Err(RelayError::Unmaskable(
                "COPY output that was not planned for masking (the policy changed while it ran)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn copy_data(&mut self, frame: &Frame) -> Option<Frame> {
        let copy = self.copy.clone()?;
        let line = copy.apply(frame.body(), &mut self.hits)?;
        Some(Frame::build(b'd', |b| b.put_slice(&line)))
    }

    /// An error or notice: hidden whole when it may come from a masked column (see
    /// [`crate::protocol::postgres::mask::hide`]), else with the values it quotes masked. `raiser` says what it
    /// comes from (given the statement run already judged), looked up only under column rules.
    async fn notice(
        &mut self,
        ctx: &SessionContext<'_>,
        tag: u8,
        notice: &Notice,
        raiser: impl FnOnce(Option<u64>) -> Raiser,
    ) -> Option<(Frame, Notice)> {
        let plan = self.plan.get(ctx)?;
        if plan.has_columns() {
            let raiser = raiser(self.texts.judged(&plan));
            let ddl = self.ddl_in_transaction;
            if self.texts.hides(&plan, &ctx.catalog, &raiser, ddl).await {
                return Some(hide_notice(tag, notice));
            }
        }
        mask_notice(&plan, tag, notice)
    }
}

/// What an error or notice arriving now comes from: the message at the front of the queue,
/// which the server is answering. A Bind's is judged by the Execute behind it in its batch
/// (binding plans the statement); a Sync first is the end of a batch, where the server commits.
/// The text of the `judged` statement run is not copied again.
fn raiser(q: &VecDeque<Pending>, judged: Option<u64>) -> Raiser {
    let statement = |o: &Open| match &o.classified {
        Some(c) => Raiser::Statement {
            seq: o.rec.seq,
            classified: c.clone(),
            text: (judged != Some(o.rec.seq)).then(|| o.rec.text.clone()),
        },
        None => Raiser::Unknown,
    };
    match q.front() {
        None => Raiser::Idle,
        Some(Pending::Parse(_) | Pending::Describe | Pending::ClientDescribe) => Raiser::Preparing,
        Some(
            Pending::Simple(o)
            | Pending::Execute(o)
            | Pending::Call(o)
            | Pending::Trial { open: o, .. },
        ) => statement(o),
        Some(Pending::Own(_)) => Raiser::Unknown,
        Some(Pending::Sync { .. } | Pending::Close) => Raiser::Unknown,
        Some(Pending::Bind(_)) => q
            .iter()
            .skip(1)
            .find(|p| !matches!(p, Pending::Describe | Pending::ClientDescribe))
            .and_then(|p| match p {
                Pending::Execute(o) => Some(statement(o)),
                _ => None,
            })
            .unwrap_or(Raiser::Unknown),
    }
}

/// The denial an error stands for, if it is the failure of one of this session's substitutes.
pub(super) fn denial_of(shared: &Shared, notice: &Notice) -> Option<Denial> {
    let message = notice.message();
    let at = message.find(&shared.marker)? + shared.marker.len();
    let hex = message.get(at..at + 16)?;
    let key = u64::from_str_radix(hex, 16).ok()?;
    shared.denials().remove(&key)
}

fn describe(c: &Classified) -> String {
    let mut s = format!("statement class: {}", c.class.as_str());
    if !c.tables.is_empty() {
        let t: Vec<String> = c.tables.iter().map(|t| t.to_string()).collect();
        s.push_str(&format!("; tables: {}", t.join(", ")));
    }
    if c.class == Class::Opaque {
        if let Some(n) = &c.note {
            s.push_str(&format!("; {n}"));
        }
    }
    s
}

/// The row count at the end of a CommandComplete tag (`SELECT 3`, `INSERT 0 5`, `COPY 10`).
pub(super) fn command_rows(frame: &Frame) -> Option<u64> {
    let tag = Fields::new(frame).cstr().ok()?;
    let last = tag.rsplit(' ').next()?;
    if tag.contains(' ') {
        last.parse().ok()
    } else {
        None
    }
}
