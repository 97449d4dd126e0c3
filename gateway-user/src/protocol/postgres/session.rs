//! A PostgreSQL session: the agent's startup and token, the decision, the gateway's own login
//! upstream, then the statement-checking relay. Every refusal reaches the agent as a real
//! ErrorResponse with a SQLSTATE, and as an event with the reason.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use crate::{
    net::Connect,
    policy::{Protocol, TokenSource},
    protocol::postgres::{
        backend,
        cancel::{cancel_signal, CancelKeys, CancelTarget},
        classify::Classifier,
        codec::{self, out},
        frontend::{self, BoxIo, FrontendError, Hello},
        mask::catalog::{Catalog, Opener},
        relay::{self, Counters, Ended, SessionContext},
        tls,
    },
    protocol::{Connection, HandlerFuture, Outcome, ProtocolHandler, SessionEnd},
    proxy::{
        authorize,
        facts::{CancelForwarded, ConnFacts, LoginFacts, Nothing, StatementCounts, UpstreamFailed},
        session_id, Admitted, Placed, Proxy, Refusal,
    },
    record::Record,
};

/// An agent gets this long to finish the startup exchange (PostgreSQL's authentication_timeout
/// defaults to one minute).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The target's TLS handshake and authentication, on top of the TCP connect timeout.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Databases whose column origins are cached; beyond this the caches start again empty.
const MAX_CATALOGS: usize = 1_000;
/// Distinct statement texts whose classification is kept.
const CLASSIFIER_CACHE: usize = 10_000;

/// PostgreSQL's handler, with what its sessions share: the statement classifier's cache, the
/// cancel keys handed to agents, and the column origins used for masking.
pub struct PostgresHandler {
    classifier: Classifier,
    cancels: CancelKeys,
    /// Column origins for masking, per (target, address, database, upstream role).
    catalogs: std::sync::Mutex<std::collections::HashMap<CatalogKey, super::mask::catalog::Cache>>,
}

type CatalogKey = (String, SocketAddr, String, String);

impl Default for PostgresHandler {
    fn default() -> Self {
        Self {
            classifier: Classifier::new(CLASSIFIER_CACHE),
            cancels: CancelKeys::default(),
            catalogs: Default::default(),
        }
    }
}

impl<C: Connect> ProtocolHandler<C> for PostgresHandler {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn serve<'a>(&'a self, core: &'a Proxy<C>, conn: Connection<'a>) -> HandlerFuture<'a> {
        Box::pin(self.session(core, conn))
    }
}

impl PostgresHandler {
    async fn session<C: Connect>(&self, core: &Proxy<C>, conn: Connection<'_>) -> Outcome {
        let Connection {
            id,
            client,
            dst,
            pid,
            placed,
            facts: mut base,
        } = conn;
        let Some(pg) = placed.target.postgres().cloned() else {
            return self
                .refuse(
                    core,
                    &base,
                    Refusal::new("bad_target", "postgres target without settings"),
                )
                .await;
        };
        let client_tls = match pg.client_tls.as_ref().map(tls::server_config) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                // Agents that insist on TLS fail; the others are declined TLS as usual.
                tracing::error!(
                    "client TLS certificate of target `{}`: {e}",
                    placed.target.name
                );
                None
            }
            None => None,
        };
        let hello = tokio::time::timeout(
            STARTUP_TIMEOUT,
            frontend::accept(Box::new(client), client_tls),
        )
        .await;
        let startup = match hello {
            Ok(Ok(Hello::Startup(s))) => s,
            Ok(Ok(Hello::Cancel { pid: cpid, key })) => {
                return self.forward_cancel(core, (cpid, key), &placed, &base).await
            }
            Ok(Err(e)) => {
                return self
                    .refuse(
                        core,
                        &base,
                        Refusal::new("protocol", format!("startup: {e}")),
                    )
                    .await
            }
            Err(_) => {
                return self
                    .refuse(core, &base, Refusal::new("protocol", "startup timed out"))
                    .await
            }
        };
        base.login = Some(LoginFacts {
            client_user: startup.param("user").map(str::to_string),
            database: startup.param("database").map(str::to_string),
            client_tls: startup.tls,
        });
        let params = startup.params;
        let mut stream = startup.stream;
        if let Some(enc) = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("client_encoding"))
            .map(|(_, v)| v.clone())
            .filter(|v| !codec::lexer_safe("client_encoding", v))
        {
            let message = format!("agentgate: client_encoding {enc} is not supported (its multi-byte characters can hide quotes from the gateway's SQL parser); use UTF8");
            frontend::refuse(&mut stream, "0A000", &message).await;
            return self
                .refuse(core, &base, Refusal::new("unsafe_encoding", message))
                .await;
        }
        if startup_requests_replication(&params) {
            return self
                .refuse_pg(
                    core,
                    &mut stream,
                    &base,
                    Refusal::new("replication", "replication connections are not relayed"),
                )
                .await;
        }
        let token = match &placed.workload.token {
            TokenSource::Credential => {
                let asked = frontend::ask_password(&mut stream);
                match tokio::time::timeout(STARTUP_TIMEOUT, asked).await {
                    Ok(Ok(t)) => Ok(t),
                    Ok(Err(FrontendError::Token(e))) => Err(Refusal::token(e)),
                    Ok(Err(e)) => Err(Refusal::new("no_token", format!("password: {e}"))),
                    Err(_) => Err(Refusal::new(
                        "no_token",
                        "no password within the startup timeout",
                    )),
                }
            }
            TokenSource::File(_) => {
                authorize::workload_token(&placed.workload, &placed.target, pid, &placed.cgroup)
                    .await
            }
        };
        let admitted = match token {
            Ok(token) => core.admit(id, dst, placed, &token, None, &mut base).await,
            Err(r) => Err(r),
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(r) => return self.refuse_pg(core, &mut stream, &base, r).await,
        };
        core.emit_allowed(&base, &admitted);
        let password = match admitted.target.credential.as_ref().map(|c| c.resolve()) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                return self
                    .upstream_failed(core, &mut stream, &base, format!("target credential: {e}"))
                    .await
            }
            None => {
                return self
                    .upstream_failed(core, &mut stream, &base, "target has no credential".into())
                    .await
            }
        };
        // A target that accepts and then stalls must not hold the agent and its session slot.
        let login_timeout =
            Duration::from_millis(admitted.policy.gateway.connect_timeout_ms) + LOGIN_TIMEOUT;
        let login = backend::connect(&core.connector, dst, &pg, &password, &params);
        let upstream = match tokio::time::timeout(login_timeout, login).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                return self
                    .upstream_failed(core, &mut stream, &base, e.to_string())
                    .await
            }
            Err(_) => {
                let e = format!("the target did not finish the login within {login_timeout:?}");
                return self.upstream_failed(core, &mut stream, &base, e).await;
            }
        };
        drop(password);
        let (signal, cancels) = cancel_signal();
        let cancel = self.cancels.register(CancelTarget {
            dst,
            pid: upstream.pid,
            key: upstream.key,
            workload: admitted.grant.workload.clone(),
            signal,
        });
        // The session is on record before the agent is told it may start: nothing it does can
        // come before its opening in the record.
        let session = session_id(id);
        base.session = Some(session.clone());
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let database = pg
            .database
            .clone()
            .or_else(|| get("database"))
            .or_else(|| get("user"));
        core.recorder
            .record(Record::Open(admitted.session_open(
                &session,
                "postgres",
                pid,
                get("user"),
                database.clone(),
            )))
            .await;
        let mut greeting = vec![out::auth(0)];
        greeting.extend(upstream.greeting);
        greeting.push(out::backend_key(cancel.key.0, cancel.key.1));
        greeting.push(out::ready(b'I'));
        if let Err(e) = frontend::send(&mut stream, &greeting).await {
            tracing::info!("agent left during login: {e}");
            // Its opening is on record: so is its end.
            return Outcome::Closed(Box::new(super::super::SessionEnd {
                facts: base,
                started: Instant::now(),
                bytes_up: 0,
                bytes_down: 0,
                ended_by: None,
                error: Some(format!("the agent left during the login: {e}")),
                statements: None,
            }));
        }
        let key = (upstream.pid, upstream.key);
        self.pg_relay(
            core,
            stream,
            upstream.stream,
            key,
            cancels,
            &admitted,
            &pg,
            &params,
            base,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn pg_relay<C: Connect>(
        &self,
        core: &Proxy<C>,
        client: BoxIo,
        upstream: BoxIo,
        upstream_key: (i32, i32),
        cancels: tokio::sync::watch::Receiver<u64>,
        admitted: &Admitted<'_>,
        pg: &crate::policy::PostgresTarget,
        params: &[(String, String)],
        base: ConnFacts,
    ) -> Outcome {
        let g = &admitted.grant;
        let session = base.session.clone().unwrap_or_default();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let database = pg
            .database
            .clone()
            .or_else(|| get("database"))
            .or_else(|| get("user"));
        tracing::info!("relaying postgres");
        core.events.emit("connection_open", base.event(&Nothing {}));
        let started = Instant::now();
        let catalog = self.catalog(core, admitted, pg, params, g.dst);
        let ctx = SessionContext {
            session: session.clone(),
            issuer: g.issuer.clone(),
            subject: g.subject.clone(),
            groups: g.groups.clone(),
            workload: g.workload.clone(),
            target: g.target.clone(),
            policy: core.policy.clone(),
            classifier: &self.classifier,
            recorder: &core.recorder,
            max_message: pg.max_message_bytes,
            catalog: Arc::new(catalog),
            approvals: core.approvals.clone(),
            database: database.unwrap_or_default(),
            results_cap: relay::ResultsCap {
                rows: admitted.policy.gateway.record_result_rows,
                bytes: admitted.policy.gateway.record_result_bytes,
            },
            cancels,
            gate: admitted.guard.gate.clone(),
        };
        let counters = Counters::default();
        let idle = Duration::from_millis(admitted.policy.gateway.idle_timeout_ms);
        let expires = admitted.expires();
        let stop = async {
            tokio::select! {
                _ = tokio::time::sleep_until(expires) => "token expired".to_string(),
                _ = admitted.guard.stop.cancelled() => admitted.guard.reason().unwrap_or_else(|| "ended by the gateway".into()),
                _ = idle_for(&counters, idle) => format!("idle for {idle:?}"),
            }
        };
        let (result, mut client) = relay::relay(client, upstream, &ctx, &counters, stop).await;
        if !matches!(result, Ok(Ended::Client) | Ok(Ended::Upstream)) {
            // Closing the connection does not stop a statement the server is running (it
            // notices only when it next reads): cancel it, so an expired or revoked session
            // ends on the server too.
            if let Err(e) =
                backend::cancel(&core.connector, g.dst, upstream_key.0, upstream_key.1).await
            {
                tracing::warn!("cancel upstream statement: {e}");
            }
        }
        let (error, ended_by) = match &result {
            Ok(Ended::Stopped(why)) => {
                let msg = format!("agentgate: session ended: {why}");
                let _ =
                    frontend::send(&mut client, &[out::error("FATAL", "57P01", &msg, None)]).await;
                (None, Some(why.clone()))
            }
            Ok(Ended::Client) => (None, None),
            Ok(Ended::ClientGone) => (None, Some("agent closed without Terminate".to_string())),
            Ok(Ended::Upstream) => (None, Some("target closed".to_string())),
            Err(e) => {
                if let Some(f) = e.for_client() {
                    let _ = frontend::send(&mut client, &[f]).await;
                }
                (Some(e.to_string()), Some(e.ended_by().to_string()))
            }
        };
        Outcome::Closed(Box::new(SessionEnd {
            facts: base,
            started,
            bytes_up: counters.up.load(Ordering::Relaxed),
            bytes_down: counters.down.load(Ordering::Relaxed),
            ended_by,
            error,
            statements: Some(StatementCounts {
                statements: counters.statements.load(Ordering::Relaxed),
                denied_statements: counters.denied.load(Ordering::Relaxed),
            }),
        }))
    }

    /// The session's catalog handle: the shared origin cache of its database, and a way to
    /// open the gateway's own catalog connection with the session's target settings.
    fn catalog<C: Connect>(
        &self,
        core: &Proxy<C>,
        admitted: &Admitted<'_>,
        pg: &crate::policy::PostgresTarget,
        params: &[(String, String)],
        dst: SocketAddr,
    ) -> Catalog {
        let database = pg
            .database
            .clone()
            .or_else(|| param(params, "database"))
            .or_else(|| param(params, "user"))
            .unwrap_or_default();
        let key = (admitted.target.name.clone(), dst, database, pg.user.clone());
        let cache = {
            let mut all = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
            if all.len() > MAX_CATALOGS && !all.contains_key(&key) {
                all.clear();
            }
            all.entry(key).or_default().clone()
        };
        let connector = core.connector.clone();
        let credential = admitted.target.credential.clone();
        let (pg, params) = (pg.clone(), params.to_vec());
        let timeout =
            Duration::from_millis(admitted.policy.gateway.connect_timeout_ms) + LOGIN_TIMEOUT;
        let open: Opener = Arc::new(move || {
            let (connector, credential, pg, params) = (
                connector.clone(),
                credential.clone(),
                pg.clone(),
                params.clone(),
            );
            Box::pin(async move {
                let password = credential.ok_or("target has no credential")?.resolve()?;
                let login = backend::connect(&connector, dst, &pg, &password, &params);
                match tokio::time::timeout(timeout, login).await {
                    Ok(Ok(u)) => Ok(u.stream),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no login within {timeout:?}")),
                }
            })
        });
        Catalog::new(open, cache)
    }

    async fn forward_cancel<C: Connect>(
        &self,
        core: &Proxy<C>,
        (pid, key): (i32, i32),
        placed: &Placed<'_>,
        base: &ConnFacts,
    ) -> Outcome {
        let found = self.cancels.lookup(pid, key);
        match found {
            Some(t) if t.workload == placed.workload.name => {
                // A statement held for approval is withdrawn; one the server runs is cancelled
                // there (the agent cannot tell which it is, and both may be true).
                t.signal.send_modify(|n| *n += 1);
                let r = backend::cancel(&core.connector, t.dst, t.pid, t.key).await;
                let event = base.event(&CancelForwarded {
                    forwarded: r.is_ok(),
                    error: r.err().map(|e| e.to_string()),
                });
                core.events.emit("cancel", event);
                Outcome::NoSession
            }
            // Unknown keys and other workloads' keys are dropped without an answer, as
            // PostgreSQL does.
            _ => {
                self.refuse(
                    core,
                    base,
                    Refusal::new("bad_cancel", "cancel request with an unknown key"),
                )
                .await
            }
        }
    }

    /// Says why the connection was refused (event, record): no session.
    async fn refuse<C: Connect>(&self, core: &Proxy<C>, base: &ConnFacts, r: Refusal) -> Outcome {
        core.refuse(base, r).await;
        Outcome::NoSession
    }

    /// Like `refuse`, telling the agent too, as an ErrorResponse with a SQLSTATE.
    async fn refuse_pg<C: Connect>(
        &self,
        core: &Proxy<C>,
        stream: &mut BoxIo,
        base: &ConnFacts,
        r: Refusal,
    ) -> Outcome {
        let (code, message) = frontend::refusal_message(r.code, r.token.as_deref());
        frontend::refuse(stream, code, &message).await;
        self.refuse(core, base, r).await
    }

    async fn upstream_failed<C: Connect>(
        &self,
        core: &Proxy<C>,
        stream: &mut BoxIo,
        base: &ConnFacts,
        error: String,
    ) -> Outcome {
        tracing::warn!("upstream login: {error}");
        core.events.emit(
            "upstream_failed",
            base.event(&UpstreamFailed { error: &error }),
        );
        frontend::refuse(
            stream,
            "08004",
            "agentgate: the gateway could not log in to the target",
        )
        .await;
        Outcome::NoSession
    }
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn startup_requests_replication(params: &[(String, String)]) -> bool {
    params.iter().any(|(k, v)| {
        k == "replication"
            && !matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0"
            )
    })
}

/// Resolves once neither direction has moved a byte for `idle`.
async fn idle_for(counters: &Counters, idle: Duration) {
    let tick = idle.min(Duration::from_secs(1));
    let mut last = (0, 0);
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = (
            counters.up.load(Ordering::Relaxed),
            counters.down.load(Ordering::Relaxed),
        );
        if now != last || counters.held.load(Ordering::Relaxed) {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= idle {
            return;
        }
    }
}
