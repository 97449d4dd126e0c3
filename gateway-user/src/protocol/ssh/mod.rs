//! SSH targets: the gateway terminates the agent's SSH (russh server, [`agent`]), admits the
//! agent by its token (the workload's file, or the JWT as password / keyboard-interactive
//! answer), logs in to the target itself with a credential the agent never holds
//! ([`upstream`]), and serves each session channel through the gate ([`channel`], [`gate`]):
//! every exec, shell and subsystem is judged, held for approval where a rule says so, on record
//! before it runs, and recorded with its exit status and output; shells and execs with a pty
//! also as asciicast events ([`cast`]).

mod agent;
pub(crate) mod aliases;
pub(crate) mod cast;
mod channel;
pub mod command;
mod forward;
mod gate;
pub mod keys;
mod killable;
mod mask;
mod rule_section;
pub mod rules;
mod sftp;
mod upstream;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures_util::{stream::FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::agent::{AgentEvent, AgentSide, Credential};
use super::{Connection, HandlerFuture, Outcome, ProtocolHandler, SessionEnd};
use crate::{
    approval::Approvals,
    net::Connect,
    policy::{Policy, Protocol, SshHostKey, Target, TokenSource, Who},
    proxy::{
        authorize,
        facts::{Nothing, StatementCounts, UpstreamFailed},
        session_id, Proxy, Refusal,
    },
    record::{Record, Recorder, Statement},
};

/// A channel's task, borrowing the session.
type ChannelTask<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Channels one connection may have open at once (OpenSSH's sshd allows 10 sessions by
/// default): each holds buffers and a channel to the target.
const MAX_CHANNELS: usize = 64;
/// How long a refused agent's connection stays up for the refusal to reach it.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// Host certificates are made this long-lived, and renewed at half their life.
const HOST_CERT_LIFE: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct SshHandler {
    /// Server configurations (host key and certificate) per target and address.
    configs: Mutex<HashMap<String, (Instant, Arc<russh::server::Config>)>>,
}

impl<C: Connect> ProtocolHandler<C> for SshHandler {
    fn protocol(&self) -> Protocol {
        Protocol::Ssh
    }

    fn serve<'a>(&'a self, core: &'a Proxy<C>, conn: Connection<'a>) -> HandlerFuture<'a> {
        Box::pin(serve(self, core, conn))
    }
}

/// What a session's channels share.
pub struct Ctx<'a> {
    pub recorder: &'a Recorder,
    pub approvals: &'a Arc<Approvals>,
    pub policy: watch::Receiver<Arc<Policy>>,
    pub session: String,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub workload: String,
    pub target: String,
    pub login: String,
    pub record_bytes: usize,
    pub seq: AtomicU64,
    pub denied: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Cancelled when the session ends (the agent left, expiry, revocation, reload).
    pub ended: CancellationToken,
    /// The session's gate: forwards in progress, re-authorization under a new policy.
    pub gate: Arc<crate::proxy::Gate>,
}

impl Ctx<'_> {
    pub fn who(&self) -> Who<'_> {
        Who {
            issuer: &self.issuer,
            subject: &self.subject,
            groups: &self.groups,
            workload: &self.workload,
            login: Some(&self.login),
        }
    }

    /// A request's record, before the gate's decision.
    fn statement(&self, request: &channel::Request, started_ms: i64) -> Statement {
        Statement {
            session: self.session.clone(),
            seq: self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            started_ms,
            kind: request.kind(),
            text: request.text(),
            params: Vec::new(),
            class: request.kind().to_string(),
            // Every SSH request runs something on the host or opens a way to it.
            privileged: true,
            tables: Vec::new(),
            functions: Vec::new(),
            decision: "allowed",
            rule: None,
            duration_us: None,
            rows: None,
            error_code: None,
            error: None,
            results: None,
            results_cut: false,
            exit_status: None,
            output: None,
        }
    }
}

impl SshHandler {
    /// The host key (and certificate) the agent sees for `target`, dialled at `dialled`.
    fn server_config(
        &self,
        policy: &Policy,
        target: &Target,
        dialled: SocketAddr,
    ) -> Result<Arc<russh::server::Config>, keys::KeyError> {
        let Some(ssh) = target.ssh() else {
            return Err(keys::KeyError::Certificate("not an ssh target".into()));
        };
        let ip = crate::policy::canonical_ip(dialled.ip());
        let cache_key = format!("{}\0{:?}\0{ip}", target.name, ssh.host_key);
        if let Some((made, c)) = lock(&self.configs).get(&cache_key) {
            if made.elapsed() < HOST_CERT_LIFE / 2 {
                return Ok(c.clone());
            }
        }
        let (key, certificates) = match &ssh.host_key {
            SshHostKey::Imported { key } => (keys::load_private_key(key)?, Vec::new()),
            SshHostKey::Certified { ca_key, names } => {
                let secret_path = policy.gateway.ssh_host_key_secret.as_ref().ok_or_else(|| {
                    keys::KeyError::Certificate("gateway.ssh_host_key_secret is not set".into())
                })?;
                let secret = keys::load_secret(secret_path)?;
                let key = keys::derive_host_key(&secret, &target.name);
                let ca = keys::load_private_key(ca_key)?;
                let mut principals = vec![target.name.clone()];
                principals.extend(names.iter().cloned());
                principals.push(ip.to_string());
                for net in &target.addresses {
                    if net.prefix_len() == net.max_prefix_len() {
                        principals.push(net.addr().to_string());
                    }
                }
                principals.dedup();
                let cert = keys::host_certificate(
                    &ca,
                    key.public_key(),
                    &principals,
                    SystemTime::now(),
                    HOST_CERT_LIFE,
                )?;
                (key, vec![cert])
            }
        };
        let config = Arc::new(russh::server::Config {
            keys: vec![key],
            certificates,
            // The token is verified, not guessed at: no need to slow every refusal down.
            auth_rejection_time: Duration::from_millis(50),
            auth_rejection_time_initial: Some(Duration::ZERO),
            max_auth_attempts: 6,
            inactivity_timeout: None,
            nodelay: true,
            // No compression toward the agent (a local hop): besides the CPU, russh starts the
            // delayed `zlib@openssh.com` only after the agent's first packet past the login,
            // so the disconnect that carries a refused login's reason (sent right after
            // `USERAUTH_SUCCESS`, see `agent`) would reach a client that compresses (asyncssh)
            // uncompressed, and be lost as a decompression error.
            preferred: russh::Preferred {
                compression: std::borrow::Cow::Borrowed(&[russh::compression::NONE]),
                ..Default::default()
            },
            ..Default::default()
        });
        lock(&self.configs).insert(cache_key, (Instant::now(), config.clone()));
        Ok(config)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A channel or request the handler refused (forwarding, agent, X11), on record.
async fn record_refused(ctx: &Ctx<'_>, what: String) {
    tracing::info!("refused: {what}");
    ctx.recorder
        .record(Record::Event {
            kind: "ssh_refused",
            at_ms: crate::record::now_ms(),
            session: Some(ctx.session.clone()),
            body: serde_json::json!({ "what": what }),
        })
        .await;
}

async fn serve<C: Connect>(h: &SshHandler, core: &Proxy<C>, conn: Connection<'_>) -> Outcome {
    let Connection {
        id,
        client,
        dst,
        pid,
        placed,
        mut facts,
    } = conn;
    let Some(ssh) = placed.target.ssh().cloned() else {
        core.refuse(&facts, Refusal::new("bad_target", "not an ssh target"))
            .await;
        return Outcome::NoSession;
    };
    let config = match h.server_config(&placed.policy, &placed.target, dst) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("ssh host key for target {}: {e}", placed.target.name);
            let why = format!("the gateway's host key for this target is unusable: {e}");
            core.refuse(&facts, Refusal::new("bad_target", why)).await;
            return Outcome::NoSession;
        }
    };
    let token_file = matches!(placed.workload.token, TokenSource::File(_));
    let (events_tx, mut events) = mpsc::channel(16);
    // One deadline for the whole login: the version line, the key exchange and the login.
    let deadline = tokio::time::Instant::now() + ssh.login_timeout;
    // russh's task for the agent's connection ends when this session does, whatever it waits
    // for (see `killable`).
    let cut = CancellationToken::new();
    let _cut_when_done = cut.clone().drop_guard();
    let client = killable::Killable::new(client, &cut);
    let running = match tokio::time::timeout_at(
        deadline,
        russh::server::run_stream(config, client, AgentSide::new(events_tx, token_file)),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::info!("ssh handshake with the agent: {e}");
            return Outcome::NoSession;
        }
        Err(_) => {
            let why = "the agent sent no SSH version line in time";
            core.refuse(&facts, Refusal::new("timeout", why)).await;
            return Outcome::NoSession;
        }
    };
    let handle = running.handle();
    let disconnect = |why: String| {
        let handle = handle.clone();
        async move {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, why, String::new())
                .await;
        }
    };

    // The login: one attempt is put to the core, answered only once the target accepted the
    // gateway's own login for it, so an agent never sees a session the target refused.
    let deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(deadline);
    let (user, credential, reply) = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(AgentEvent::Login { user, credential, reply }) => break (user, credential, reply),
                Some(_) => continue,
                None => return Outcome::NoSession,
            },
            () = &mut deadline => {
                disconnect("agentgate: no login in time".into()).await;
                core.refuse(&facts, Refusal::new("timeout", "the agent did not log in in time")).await;
                return Outcome::NoSession;
            }
        }
    };
    facts.login = Some(crate::proxy::facts::LoginFacts {
        client_user: Some(user.clone()),
        database: None,
        client_tls: false,
    });
    let token = match credential {
        Credential::Secret(t) => Ok(t),
        Credential::None => {
            authorize::workload_token(&placed.workload, &placed.target, pid, &placed.cgroup).await
        }
    };
    let admitted = match token {
        Ok(token) => {
            core.admit(id, dst, placed, &token, Some(&user), &mut facts)
                .await
        }
        Err(r) => Err(r),
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(r) => {
            // The agent's client shows this reason (the disconnect that ends the login).
            let _ = reply.send(Err(format!("agentgate: {}", r.message)));
            core.refuse(&facts, r).await;
            // The refusal reaches the agent before the connection is cut.
            let _ = tokio::time::timeout(REFUSAL_GRACE, running).await;
            return Outcome::NoSession;
        }
    };
    core.emit_allowed(&facts, &admitted);
    let session = session_id(id);
    let target_name = admitted.target.name.clone();
    let g = &admitted.grant;
    let rules_who = Who {
        issuer: &g.issuer,
        subject: &g.subject,
        groups: &g.groups,
        workload: &g.workload,
        login: Some(&user),
    };
    let who = upstream::LoginFor {
        login: &user,
        issuer: &admitted.grant.issuer,
        subject: &admitted.grant.subject,
        session: &session,
        forwarding: forward::any_allowed(&admitted.policy, &rules_who, &target_name),
    };
    let (forwarded_tx, mut forwarded) = mpsc::channel::<upstream::Forwarded>(16);
    let target = match core.connector.connect(dst).await {
        Ok(stream) => upstream::login(stream, &target_name, &ssh, dst, &who, forwarded_tx)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("upstream: {e}");
            let _ = reply.send(Err(format!(
                "agentgate: the gateway could not log in to the target: {e}"
            )));
            let event = facts.event(&UpstreamFailed { error: &e });
            core.events.emit("upstream_failed", event);
            let _ = tokio::time::timeout(REFUSAL_GRACE, running).await;
            return Outcome::NoSession;
        }
    };
    core.recorder
        .record(Record::Open(admitted.session_open(
            &session,
            "ssh",
            pid,
            Some(user.clone()),
            None,
        )))
        .await;
    facts.session = Some(session.clone());
    core.events
        .emit("connection_open", facts.event(&Nothing {}));
    let _ = reply.send(Ok(()));
    tracing::info!(login = user, "ssh session");

    let ctx = Ctx {
        recorder: &core.recorder,
        approvals: &core.approvals,
        policy: core.policy.clone(),
        session,
        issuer: admitted.grant.issuer.clone(),
        subject: admitted.grant.subject.clone(),
        groups: admitted.grant.groups.clone(),
        workload: admitted.grant.workload.clone(),
        target: target_name,
        login: user,
        record_bytes: admitted.policy.gateway.record_result_bytes,
        seq: AtomicU64::new(0),
        denied: AtomicU64::new(0),
        bytes_up: AtomicU64::new(0),
        bytes_down: AtomicU64::new(0),
        ended: CancellationToken::new(),
        gate: admitted.guard.gate.clone(),
    };
    let started = Instant::now();
    let expires = admitted.expires();
    let mut channels = FuturesUnordered::new();
    let mut running = running;
    let mut agent_gone = false;
    let (ended_by, error) = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(AgentEvent::Session { reply, .. }) if channels.len() >= MAX_CHANNELS => {
                    reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
                    record_refused(&ctx, format!("a channel beyond {MAX_CHANNELS} open at once")).await;
                }
                Some(AgentEvent::Forward { reply, host, port, .. }) if channels.len() >= MAX_CHANNELS => {
                    reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
                    record_refused(&ctx, format!("port forwarding to {host}:{port} beyond {MAX_CHANNELS} channels open at once")).await;
                }
                Some(AgentEvent::Session { channel, reply }) => {
                    reply.accept().await;
                    channels.push(Box::pin(channel::serve(&ctx, channel, &target)) as ChannelTask<'_>);
                }
                Some(AgentEvent::Forward { channel, reply, host, port }) => {
                    let policy = ctx.policy.borrow().clone();
                    match forward::allowed_by(&policy, &ctx.who(), &ctx.target, &host, port) {
                        Some(rule) => channels.push(Box::pin(forward::serve(
                            &ctx, channel, reply, &target, (host, port, rule),
                        ))),
                        None => {
                            reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
                            record_refused(&ctx, format!("port forwarding to {host}:{port}")).await;
                        }
                    }
                }
                Some(AgentEvent::Refused { what }) => record_refused(&ctx, what).await,
                Some(AgentEvent::RemoteForward { address, port, reply }) => {
                    let bound = forward::remote(&ctx, &target, &address, port).await;
                    let _ = reply.send(bound);
                }
                Some(AgentEvent::Login { reply, .. }) => {
                    let _ = reply.send(Err("agentgate: already logged in".into()));
                }
                None => break (None, None),
            },
            Some(f) = forwarded.recv() => {
                let upstream::Forwarded { channel, connected, originator } = f;
                let what = format!(
                    "forwarded-tcpip {}:{} from {}:{}",
                    connected.0, connected.1, originator.0, originator.1
                );
                let to_agent = handle
                    .channel_open_forwarded_tcpip(connected.0, connected.1, originator.0, originator.1)
                    .await;
                channels.push(Box::pin(forward::serve_remote(&ctx, channel, to_agent, what)));
            }
            Some(()) = channels.next(), if !channels.is_empty() => {}
            r = &mut running => {
                agent_gone = true;
                break (None, r.err().map(|e| e.to_string()));
            }
            () = tokio::time::sleep_until(expires) => break (Some("token expired".to_string()), None),
            () = admitted.guard.stop.cancelled() => break (admitted.guard.reason(), None),
        }
    };
    ctx.ended.cancel();
    // What the agent asked for just before it left (`ssh -W` opens a forwarding channel and
    // hangs up as soon as it is refused) may still wait in the queue when the connection's
    // end wins the select above: a refusal must be on record all the same.
    events.close();
    while let Ok(ev) = events.try_recv() {
        match ev {
            AgentEvent::Refused { what } => record_refused(&ctx, what).await,
            AgentEvent::Login { reply, .. } => {
                let _ = reply.send(Err("agentgate: the session ended".into()));
            }
            AgentEvent::RemoteForward { reply, .. } => {
                let _ = reply.send(None);
            }
            // Dropping the handle refuses the channel.
            AgentEvent::Session { .. } => {}
            AgentEvent::Forward { host, port, .. } => {
                record_refused(
                    &ctx,
                    format!("port forwarding to {host}:{port} (the session ended)"),
                )
                .await
            }
        }
    }
    if let Some(why) = &ended_by {
        disconnect(format!("agentgate: session ended: {why}")).await;
    }
    // Channels still open are ended with the session; their records are written as they end.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while channels.next().await.is_some() {}
    })
    .await;
    drop(channels);
    let _ = target
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    // The agent's side gets a moment to send its disconnect before the connection is cut.
    if !agent_gone {
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut running).await;
    }
    let statements = ctx.seq.load(std::sync::atomic::Ordering::Relaxed);
    let denied = ctx.denied.load(std::sync::atomic::Ordering::Relaxed);
    Outcome::Closed(Box::new(SessionEnd {
        facts,
        started,
        bytes_up: ctx.bytes_up.load(std::sync::atomic::Ordering::Relaxed),
        bytes_down: ctx.bytes_down.load(std::sync::atomic::Ordering::Relaxed),
        ended_by,
        error,
        statements: Some(StatementCounts {
            statements,
            denied_statements: denied,
        }),
    }))
}
