//! Agent → target: each message judged (statement rules, masking's refusals, approvals, the
//! durable record) and forwarded, replaced by a refusal, or run as a trial; the names of
//! prepared statements and portals followed as the server holds them.

use super::{
    gate::{Action, Judged},
    *,
};

impl Upward<'_, '_> {
    /// Decides one message; returns what to forward. `from` and `to` are the agent's side and
    /// the target's: a statement held for approval flushes what was forwarded before it and
    /// watches for the agent leaving.
    pub(super) async fn inspect<R, W>(
        &mut self,
        frame: Frame,
        from: &mut BufReader<R>,
        to: &mut W,
    ) -> Result<Frame, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let bad = RelayError::Client;
        self.learn_parses();
        self.learn_binds();
        // A Query or FunctionCall may come inside an extended-protocol batch (asyncpg sends
        // Parse/Describe/Flush and then a Query): the server runs it, or skips it like the rest
        // of the batch after an error there; the downward side tells which (see `downward`).
        match frame.tag() {
            b'S' => {
                self.batch += 1;
                self.batch_open = false;
            }
            // Only an Execute can end a transaction block without a ReadyForQuery (asyncpg's
            // Parse/Describe/Flush before a Query leaves nothing open).
            b'E' => self.batch_open = true,
            b'c' | b'f' => self.copy_possible = false,
            _ => {}
        }
        match frame.tag() {
            b'Q' => {
                let text = Fields::new(&frame).cstr().map_err(bad)?.to_string();
                let classified = self.ctx.classifier.classify(&text);
                let params = Params::default();
                let action = Action {
                    stmt: RuleStatement::new(&classified, &text, canonical_statements),
                    classified: &classified,
                    text: &text,
                    params: &params,
                    copy: true,
                };
                // Once a `max_rows` trial touched too many rows (or could not be run), the
                // statement goes to people like any other: asked once more, never tried again.
                let mut tried = false;
                loop {
                    // Whether it is a write a trial can run is read (a parse) only when a
                    // `max_rows` approval asks, not for every Query.
                    self.triable = !tried;
                    let judged = self.judge(&action, from, to).await;
                    self.triable = false;
                    let Judged { mut refusal, copy } = judged?;
                    let rule = refusal.as_ref().map(|(r, _)| r.as_str());
                    let mut rec = self.statement("simple", &text, &classified, Vec::new(), rule);
                    self.intend(&mut rec, &classified, &mut refusal).await;
                    let limit = self.trial.take().filter(|_| refusal.is_none());
                    let forward = match refusal {
                        Some((rule, message)) => {
                            out::query(&self.deny(rule, classified.clone(), message)?)
                        }
                        None => frame.clone(),
                    };
                    let mut o = open(rec);
                    o.copy = copy.clone();
                    o.classified = Some(classified.clone());
                    let Some(limit) = limit else {
                        self.copy_possible |= may_copy(&text);
                        self.forget_if_renamed(&text);
                        self.push(Pending::Simple(o))?;
                        return Ok(forward);
                    };
                    match self.trial(forward, o, limit, to).await? {
                        // The agent has its answer from the trial itself.
                        trial::Tried::Ran => return Ok(Frame::nothing()),
                        trial::Tried::Over(rows) => self.trial_rows = rows,
                        trial::Tried::Untried(mut o) => {
                            o.rec.error = Some(
                                "not run: it could not be tried under max_rows; put to approvers"
                                    .into(),
                            );
                            self.ctx.recorder.record(Record::Statement(o.rec)).await;
                        }
                    }
                    tried = true;
                }
            }
            b'P' => {
                let mut f = Fields::new(&frame);
                let name = f.cstr().map_err(bad)?.to_string();
                let text = f.cstr().map_err(bad)?;
                let classified = self.ctx.classifier.classify(text);
                let denied =
                    self.decide(&RuleStatement::new(&classified, text, canonical_statements));
                let id = self.next_parse;
                self.next_parse += 1;
                let prepared = Arc::new(Prepared {
                    text: text.into(),
                    classified: classified.clone(),
                    parse: id,
                    batch: self.batch,
                });
                self.push(Pending::Parse(id))?;
                self.parses.insert(id, name.clone());
                if !self.statements.contains_key(&name) && self.statements.len() >= MAX_NAMED {
                    return Err(RelayError::TooManyNamed);
                }
                let candidates = self.statements.entry(name.clone()).or_default();
                // Until the server answers, a Parse may fail or be skipped and leave the older
                // text in place (a named statement that exists is not replaced either: 42P05).
                if candidates.len() >= MAX_CANDIDATES {
                    candidates.clear();
                    candidates.push(Prepared::unknown("re-prepared too often"));
                }
                candidates.push(prepared.clone());
                match denied {
                    Some(d) => {
                        self.record_denial(&prepared, Vec::new(), &d.rule).await;
                        let marker = self.deny(d.rule, classified, d.message)?;
                        Ok(Frame::build(b'P', |b| {
                            put_cstr(b, &name);
                            put_cstr(b, &marker);
                            b.put_i16(0);
                        }))
                    }
                    None => Ok(frame),
                }
            }
            b'B' => {
                let forward = self.bind(frame).await?;
                self.push(Pending::Bind(self.next_bind - 1))?;
                Ok(forward)
            }
            b'E' => {
                let portal = Fields::new(&frame).cstr().map_err(bad)?.to_string();
                // A named portal from an earlier batch may have been replaced behind the
                // gateway's back: SQL CLOSE and DECLARE, or a function opening a refcursor of
                // that name. Its rows are masked as those of an unknown statement.
                let replaceable = !portal.is_empty()
                    && self
                        .portals
                        .get(&portal)
                        .is_some_and(|p| p.batch < self.batch);
                let (statement, params) = match self.portals.get(&portal) {
                    // Refused at Bind (on record). In the Bind's batch the server skips this
                    // Execute, but after a Sync the name may still hold an older portal of the
                    // server's (a refused Bind leaves it, and ROLLBACK TO SAVEPOINT can undo the
                    // error): it is refused here too, never forwarded as sent.
                    Some(Portal {
                        denied: Some(rule),
                        statement,
                        params,
                        ..
                    }) => {
                        let (rule, params) = (rule.clone(), params.shown.clone());
                        let statement = statement
                            .clone()
                            .unwrap_or_else(|| Prepared::unknown("a portal refused at Bind"));
                        let rec = self.statement(
                            "extended",
                            &statement.text,
                            &statement.classified,
                            params,
                            Some(&rule),
                        );
                        let marker = self.deny(rule, statement.classified.clone(), None)?;
                        self.push(Pending::Execute(open(rec)))?;
                        return Ok(Frame::build(b'E', |b| {
                            put_cstr(b, &marker);
                            b.put_i32(0);
                        }));
                    }
                    // Bound in an earlier batch and not yet answered: if the server refuses that
                    // Bind, the name keeps its older portal, which this Execute would run. (A
                    // Bind in this batch is safe: if it fails, the server skips the Execute.)
                    Some(p)
                        if self
                            .open_binds
                            .get(&p.bind)
                            .is_some_and(|b| b.batch < self.batch) =>
                    {
                        (
                            Some(Prepared::unknown(
                                "a portal whose Bind the server has not answered yet",
                            )),
                            Params::default(),
                        )
                    }
                    Some(p) => (p.statement.clone(), p.params.clone()),
                    // A portal the gateway did not see bound (a SQL cursor was judged at its
                    // DECLARE, but the policy may have changed since): opaque.
                    None => (None, Params::default()),
                };
                let statement = statement
                    .unwrap_or_else(|| Prepared::unknown("a portal the gateway did not see bound"));
                // Judged once more: a portal bound before a reload runs under the new policy.
                let action = Action {
                    stmt: RuleStatement::new(
                        &statement.classified,
                        &statement.text,
                        canonical_statements,
                    ),
                    classified: &statement.classified,
                    text: &statement.text,
                    params: &params,
                    copy: true,
                };
                let Judged { refusal, copy } = self.judge(&action, from, to).await?;
                if let Some((rule, message)) = refusal {
                    self.record_denial(&statement, params.shown, &rule).await;
                    let marker = self.deny(rule, statement.classified.clone(), message)?;
                    return Ok(Frame::build(b'E', |b| {
                        put_cstr(b, &marker);
                        b.put_i32(0);
                    }));
                }
                let mut rec = self.statement(
                    "extended",
                    &statement.text,
                    &statement.classified,
                    params.shown,
                    None,
                );
                let mut refusal = None;
                self.intend(&mut rec, &statement.classified, &mut refusal)
                    .await;
                if let Some((rule, message)) = refusal {
                    rec.error_code = Some("42501".into());
                    rec.error = message.clone();
                    self.ctx.recorder.record(Record::Statement(rec)).await;
                    let marker = self.deny(rule, statement.classified.clone(), message)?;
                    return Ok(Frame::build(b'E', |b| {
                        put_cstr(b, &marker);
                        b.put_i32(0);
                    }));
                }
                if self.plan.get(self.ctx).is_some() {
                    // The rows of an Execute come without a description; a Describe of the
                    // portal right before it tells the gateway their columns and formats.
                    self.push(Pending::Describe)?;
                    self.prefix = Some(Frame::build(b'D', |b| {
                        b.put_u8(b'P');
                        put_cstr(b, &portal);
                    }));
                }
                let mut o = open(rec);
                o.copy = copy;
                o.classified = Some(if replaceable {
                    Arc::new(Classified::opaque(
                        "a named portal bound in an earlier batch (SQL or a function may have replaced it)",
                    ))
                } else {
                    statement.classified.clone()
                });
                self.forget_if_renamed(&statement.text);
                self.copy_possible |= may_copy(&statement.text);
                self.push(Pending::Execute(o))?;
                Ok(frame)
            }
            b'S' => {
                self.push(Pending::Sync {
                    during_copy: self.copy_possible,
                })?;
                Ok(frame)
            }
            b'C' => {
                let mut f = Fields::new(&frame);
                let kind = f.u8().map_err(bad)?;
                let name = f.cstr().map_err(bad)?;
                // Forgetting is safe even if the server skips the Close: a name the gateway does
                // not know is judged as opaque at Bind.
                match kind {
                    b'S' => self.statements.remove(name).map(|_| ()),
                    b'P' => self.portals.remove(name).map(|_| ()),
                    // The server refuses it and skips to Sync; the gateway would have to guess.
                    _ => {
                        return Err(RelayError::Client(CodecError::Malformed {
                            tag: 'C',
                            what: "Close of something other than a statement (S) or portal (P)",
                        }))
                    }
                };
                self.push(Pending::Close)?;
                Ok(frame)
            }
            b'F' => {
                // The function is named by OID and runs with arbitrary arguments: opaque. Its
                // OID and arguments are what people approve (and what a retry must repeat).
                let classified = Arc::new(Classified::opaque("FunctionCall message"));
                let mut f = Fields::new(&frame);
                let oid = f.i32().map_err(bad)? as u32;
                let plan = self.plan.get(self.ctx);
                let args = bind_params(&mut f, plan.as_deref()).map_err(bad)?;
                let text = format!("<FunctionCall of function oid {oid}>");
                let action = Action {
                    stmt: RuleStatement::new(&classified, &text, canonical_statements),
                    classified: &classified,
                    text: &text,
                    params: &args,
                    copy: false,
                };
                let Judged { mut refusal, .. } = self.judge(&action, from, to).await?;
                let rule = refusal.as_ref().map(|(r, _)| r.as_str());
                let mut rec = self.statement(
                    "function_call",
                    &text,
                    &classified,
                    args.shown.clone(),
                    rule,
                );
                self.intend(&mut rec, &classified, &mut refusal).await;
                let forward = match refusal {
                    Some((rule, message)) => out::query(&self.deny(rule, classified, message)?),
                    None => frame,
                };
                self.push(Pending::Call(open(rec)))?;
                Ok(forward)
            }
            b'D' => {
                self.push(Pending::ClientDescribe)?;
                Ok(frame)
            }
            b'H' | b'X' | b'd' | b'c' | b'f' => Ok(frame),
            other => Err(RelayError::UnknownMessage(other as char)),
        }
    }

    /// Judges the statement a Bind refers to, again, under the policy in force now (a reload
    /// applies to the next execution). The gateway cannot always know which text the server
    /// holds under a name (a Parse the server refused or skipped leaves the older one in
    /// place), so every text the name may stand for must pass; a name the gateway never saw
    /// (SQL `PREPARE`, or forgotten after a Close) is opaque.
    async fn bind(&mut self, frame: Frame) -> Result<Frame, RelayError> {
        let bad = RelayError::Client;
        let mut f = Fields::new(&frame);
        let portal = f.cstr().map_err(bad)?.to_string();
        let statement = f.cstr().map_err(bad)?.to_string();
        let plan = self.plan.get(self.ctx);
        let params = bind_params(&mut f, plan.as_deref()).map_err(bad)?;
        let candidates = match self.statements.get(&statement) {
            // A Bind in the batch of its statement's latest Parse runs only if that Parse
            // succeeds (after an error the server skips to Sync): that text alone counts.
            Some(c)
                if c.last()
                    .is_some_and(|p| p.parse != 0 && p.batch == self.batch) =>
            {
                c[c.len() - 1..].to_vec()
            }
            Some(c) if !c.is_empty() => c.clone(),
            _ => vec![Prepared::unknown(
                "a prepared statement the gateway did not see being prepared",
            )],
        };
        let denial = candidates.iter().find_map(|p| {
            self.decide(&RuleStatement::new(
                &p.classified,
                &p.text,
                canonical_statements,
            ))
            .map(|rule| (p.clone(), rule))
        });
        // The statement whose rows and COPY output are masked: when the server may hold any of
        // several texts, none can be trusted.
        let shown = match candidates.as_slice() {
            [one] => Some(one.clone()),
            _ => Some(Prepared::unknown(
                "the server may hold any of several texts under this name",
            )),
        };
        let mut forward = frame;
        if let Some((p, d)) = &denial {
            self.record_denial(p, params.shown.clone(), &d.rule).await;
            let marker = self.deny(d.rule.clone(), p.classified.clone(), d.message.clone())?;
            forward = Frame::build(b'B', |b| {
                put_cstr(b, &portal);
                put_cstr(b, &marker);
                b.put_i16(0);
                b.put_i16(0);
                b.put_i16(0);
            });
        }
        if !self.portals.contains_key(&portal) && self.portals.len() >= MAX_NAMED {
            return Err(RelayError::TooManyNamed);
        }
        let id = self.next_bind;
        self.next_bind += 1;
        let previous = self.portals.insert(
            portal.clone(),
            Portal {
                statement: shown,
                params,
                denied: denial.as_ref().map(|(_, d)| d.rule.clone()),
                bind: id,
                batch: self.batch,
            },
        );
        if self.open_binds.len() >= MAX_NAMED {
            return Err(RelayError::TooManyNamed);
        }
        self.open_binds.insert(
            id,
            OpenBind {
                portal,
                previous,
                batch: self.batch,
            },
        );
        Ok(forward)
    }

    /// SQL `PREPARE`, `DEALLOCATE` and `DISCARD` change what a statement name means on the
    /// server without a Parse the gateway sees: after a statement that may run one, every named
    /// statement the gateway knows is unknown (opaque at Bind) until it is parsed again.
    fn forget_if_renamed(&mut self, text: &str) {
        if [&b"prepare"[..], b"deallocate", b"discard"]
            .iter()
            .any(|w| contains_word(text, w))
        {
            for (name, candidates) in self.statements.iter_mut() {
                if !name.is_empty() {
                    candidates.clear();
                    candidates.push(Prepared::unknown(
                        "a statement name SQL PREPARE, DEALLOCATE or DISCARD may have changed",
                    ));
                }
            }
        }
    }

    /// Applies the server's answers to earlier Binds: a refused or skipped one leaves the portal
    /// its name held before (unless a later Bind of that name replaced it since; that one then
    /// falls back to the same earlier portal).
    fn learn_binds(&mut self) {
        if self.open_binds.is_empty() {
            return;
        }
        let answers: Vec<(u64, bool)> = std::mem::take(&mut *self.shared.bound());
        for (id, accepted) in answers {
            let Some(b) = self.open_binds.remove(&id) else {
                continue;
            };
            if accepted {
                continue;
            }
            if self.portals.get(&b.portal).is_some_and(|p| p.bind == id) {
                match b.previous {
                    Some(p) => self.portals.insert(b.portal, p),
                    None => self.portals.remove(&b.portal),
                };
            } else if let Some(later) = self
                .open_binds
                .values_mut()
                .find(|o| o.portal == b.portal && o.previous.as_ref().is_some_and(|p| p.bind == id))
            {
                later.previous = b.previous;
            }
        }
    }

    /// Applies the server's answers to earlier Parses: an accepted one is the text its name
    /// now holds (older candidates are gone), a refused or skipped one is no candidate.
    fn learn_parses(&mut self) {
        // Most messages come with no Parse waiting for its answer: skip the lock.
        if self.parses.is_empty() {
            return;
        }
        let answers: Vec<(u64, bool)> = std::mem::take(&mut *self.shared.parsed());
        for (id, accepted) in answers {
            let Some(name) = self.parses.remove(&id) else {
                continue;
            };
            if let Some(c) = self.statements.get_mut(&name) {
                if accepted {
                    c.retain(|p| p.parse >= id);
                } else {
                    c.retain(|p| p.parse != id);
                }
            }
        }
    }

    /// Under column rules, a write or DDL statement that would copy masked values into a
    /// table (where no mask rule names them), or a statement the gateway cannot read (which
    /// may hand them back any way it likes), is denied. Judged where a statement runs (Query,
    /// Execute); the tables it reads are resolved through the catalog, views and partitions
    /// included.
    pub(super) async fn mask_denial(
        &self,
        classified: &Classified,
    ) -> Result<Option<Denied>, RelayError> {
        let Some(plan) = self.plan.get(self.ctx).filter(|p| p.has_columns()) else {
            return Ok(None);
        };
        if classified.class == Class::Read {
            return Ok(None);
        }
        if classified.class == Class::Ddl {
            self.ctx.catalog.ddl_in_flight();
        }
        let rels = if classified.class == Class::Opaque
            || (classified.source_columns.is_empty() && classified.set_columns.is_empty())
        {
            Vec::new()
        } else if self.ctx.catalog.uncommitted_ddl() {
            // DDL of this session's open transaction (or of this very message) is invisible
            // to the gateway's catalog connection: the names cannot be resolved.
            vec![None]
        } else {
            resolve_tables(self.ctx, classified).await?
        };
        let Some(rule) = plan.copy_taint(classified, &rels) else {
            return Ok(None);
        };
        let what = if classified.class == Class::Opaque {
            // Say what made it unreadable: a plain SELECT calling set_config is not a DO block.
            let why = classified.note.as_deref().unwrap_or("unclassified");
            format!("the gateway cannot read this statement ({why}), so it may return masked values unmasked")
        } else {
            "this statement would copy masked values where no mask rule covers them".to_owned()
        };
        Ok(Some(Denied {
            rule: plan.rule_name(rule).to_string(),
            message: Some(format!(
                "agentgate: {what} (mask rule \"{}\")",
                plan.rule_name(rule)
            )),
        }))
    }

    /// Under a mask plan, how the COPY output of a statement is masked: `Ok(None)` when it is
    /// no COPY to the agent, `Err((rule, message))` when its output cannot be masked.
    pub(super) async fn copy_mask(
        &mut self,
        text: &str,
        c: &Classified,
    ) -> Result<Option<Arc<CopyMask>>, (String, String)> {
        let Some(plan) = self.plan.get(self.ctx) else {
            return Ok(None);
        };
        if !text
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"copy"))
        {
            return Ok(None);
        }
        let refuse =
            |rule: usize, why: &str| Err((plan.rule_name(rule).to_string(), why.to_string()));
        let lookup_failed = |e: &CatalogError| {
            tracing::warn!("COPY columns for masking: {e}");
            refuse(
                0,
                "the gateway cannot look up the tables of this COPY to mask its output",
            )
        };
        match copy_out(text) {
            CopyOut::No => Ok(None),
            CopyOut::Binary => refuse(0, "binary COPY output cannot be masked; use text format"),
            // Whether the lines may hold masked values is decided as for computed columns:
            // by the relations the statement reads, views and partitions included.
            CopyOut::Lines => match self.ctx.catalog.resolve(&table_names(c)).await {
                Ok(rels) => match plan.covering_rule(&rels) {
                    Some(r) => refuse(
                        r,
                        "the columns of COPY (query) or CSV output cannot be matched to mask rules; use SELECT, or text-format COPY of a table",
                    ),
                    None => Ok(Some(Arc::new(CopyMask::lines(plan.clone())))),
                },
                Err(e) => lookup_failed(&e),
            },
            CopyOut::Table {
                schema,
                table,
                columns,
                delimiter,
            } => match self.ctx.catalog.resolve(&[(schema, table)]).await.as_deref() {
                Ok([Some(rel)]) => {
                    let cols = columns.unwrap_or_else(|| rel.column_names());
                    Ok(Some(Arc::new(CopyMask::table(
                        plan.clone(),
                        rel,
                        &cols,
                        delimiter,
                    ))))
                }
                // Not found, or an unqualified name that several schemas have (the session's
                // search_path picks one): its columns are unknown unless none of them is masked.
                Ok(rels) => match plan.covering_rule(rels) {
                    Some(r) => refuse(r, "the gateway cannot tell which table this COPY reads (not found, or its name is in several schemas) to mask its output; qualify it with its schema"),
                    None => Ok(Some(Arc::new(CopyMask::lines(plan.clone())))),
                },
                Err(e) => lookup_failed(e),
            },
        }
    }
}
