//! `agentgate run`: the start-up order matters for fail-closed behaviour.
//!
//! 1. load the programs, reuse the pinned maps (the previous run's classifications stay in force);
//! 2. open the host listeners;
//! 3. write targets and settings, classify every cgroup under the anchors, attach this
//!    generation's programs, then detach older generations (no uncovered instant);
//! 4. watch the cgroup tree and the policy directory; on SIGTERM/SIGINT stop accepting and drain.
//!
//! Upgrades (handover/): a start first asks `--handover-socket` whether a gateway serves. If one
//! does, this one takes its listening sockets (host, pods, metrics) instead of binding, leaves
//! the old one's live state alone (its hand-over records, open sessions and pending approvals),
//! starts accepting only once its own classification is in place, and then tells the old one to
//! stop accepting and drain. The pinned programs stay attached throughout.
//!
//! On exit nothing is detached: the pinned programs keep redirecting managed workloads to a
//! listener that is gone, so their connections to targets are refused until the next start.
//! `agentgate uninstall` is the way to let them through again.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::{
    admin,
    approval::{Approvals, Approver, Notifier},
    capture::{
        bind_loopback, CgroupFs, KubeApi, Listener, ListenerKind, PodCache, PodWatch, Reconciler,
        SpawnListener, WorkloadTable,
    },
    cli::RunArgs,
    ebpf::Kernel,
    handover,
    net::{http::HttpClient, Dialer, Netns, SocketFactory},
    policy::{self, Reloader},
    proxy::{check_providers, Proxy},
    record::{Db, EventSink, Recorder},
    telemetry::{MetricsListen, Telemetry},
};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let policy = policy::load_dir(&args.policies)
        .with_context(|| format!("policy {} is invalid", args.policies.display()))?;
    check_providers(&policy).map_err(anyhow::Error::msg)?;
    // Before the runtime starts any thread: a cgroup namespace is per thread.
    if crate::capture::enter_host_cgroupns(&args.node_cgroupns)? {
        tracing::info!("entered the node's cgroup namespace (the gateway's own was a container's)");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args, Arc::new(policy)))
}

async fn serve(args: RunArgs, initial: Arc<policy::Policy>) -> anyhow::Result<()> {
    // Pins this build cannot use end the start here, before any socket changes hands.
    crate::ebpf::check_layout(&args.pin_dir)?;
    let handover_socket =
        handover::socket_path(args.handover_socket.as_deref(), &args.admin_socket);
    let mut taken = handover::take_over(&handover_socket, &args.pin_dir)?;
    if taken.is_none() && args.take_over {
        anyhow::bail!(
            "--take-over: no gateway answers on {}",
            handover_socket.display()
        );
    }
    let taking_over = taken.is_some();
    // The metrics endpoint the old process serves is taken over too (probes reach one address
    // on the node), and served from here once the old process has stopped serving.
    let taken_metrics = taken
        .as_mut()
        .and_then(|t| t.take_metrics())
        .filter(|l| matches!(args.metrics, MetricsListen::At(a) if l.local_addr().ok() == Some(a)));
    // So is the admin HTTP listener: the port is held by the old process until it drains.
    let taken_admin_http = taken
        .as_mut()
        .and_then(|t| t.take_admin_http())
        .filter(|l| {
            args.admin_http
                .is_some_and(|a| l.local_addr().ok() == Some(a))
        });
    let mut telemetry = Telemetry::start(
        if taken_metrics.is_some() {
            MetricsListen::Off
        } else {
            args.metrics
        },
        args.metrics_public,
        &initial.version,
    )
    .await?;
    let metrics = telemetry.metrics.clone();
    let events = Arc::new(
        match &args.events {
            Some(p) => {
                EventSink::to_file(p).with_context(|| format!("event log {}", p.display()))?
            }
            None => EventSink::disabled(),
        }
        .with_metrics(metrics.clone()),
    );
    if let Some(t) = &taken {
        let sockets = t.count();
        tracing::info!(sockets, "taking over from the gateway serving on this node");
        events.emit(
            "taking_over",
            json!({"pid": std::process::id(), "sockets": sockets}),
        );
    }
    let db = Db::open(&args.record_db)
        .with_context(|| format!("record database {}", args.record_db.display()))?;
    // The old process's sessions are live (it drains them and records their ends).
    let orphans = if taking_over {
        0
    } else {
        Db::lock(&db)
            .close_orphans(crate::record::now_ms())
            .with_context(|| format!("record database {}", args.record_db.display()))?
    };
    if orphans > 0 {
        tracing::warn!(
            sessions = orphans,
            "sessions of a previous run had no recorded end; closed on record now"
        );
    }
    let recorder = if args.record_off {
        tracing::warn!("--record-off: sessions and statements are NOT recorded (benchmarks only)");
        Arc::new(Recorder::start_with(
            crate::record::NullStore,
            Some(metrics.clone()),
        ))
    } else {
        Recorder::sqlite(db.clone(), Some(metrics.clone()))
    };
    telemetry.watch_record(
        &recorder,
        (!args.record_off).then(|| args.record_db.clone()),
    );
    let sink_stop = CancellationToken::new();
    // Without a sink nothing holds retention back.
    let shipped = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let sink = match &args.audit_sink {
        Some(conninfo) => {
            shipped.store(0, std::sync::atomic::Ordering::Relaxed);
            telemetry.watch_sink(db.clone(), shipped.clone());
            let config = crate::record::sink::SinkConfig {
                conninfo: conninfo.clone(),
                password_file: args.audit_sink_password_file.clone(),
                node: args.node_name.clone().unwrap_or_else(node_name),
            };
            Some(
                crate::record::sink::Sink::new(config)
                    .map_err(|e| anyhow::anyhow!("--audit-sink: {e}"))?,
            )
        }
        None => None,
    };
    if args.retain_days.is_some() || args.retain_mb.is_some() {
        tokio::spawn(retain(
            db.clone(),
            args.retain_days,
            args.retain_mb.map(|mb| mb << 20),
            shipped.clone(),
        ));
    }
    let fs = CgroupFs::discover(args.cgroup_root.clone())?;
    let mut kernel = Kernel::load(&args.pin_dir)?;
    if let Some(logger) = kernel.take_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    let maps = kernel.maps();
    telemetry.watch_maps(&args.pin_dir);
    // Every socket the gateway opens comes from a `SocketFactory` over these maps, registered as
    // its own so that capture never redirects it (or, if that cannot be done, not connected at
    // all): this one, and the identity verifier's, which the proxy builds from `maps`.
    let sockets = Arc::new(SocketFactory::new(maps.clone()));
    let sink_task = sink.map(|sink| {
        tokio::spawn(sink.run(
            args.record_db.clone(),
            Dialer {
                sockets: sockets.clone(),
                netns: Netns::Gateway,
                timeout: Duration::from_secs(10),
            },
            shipped.clone(),
            sink_stop.clone(),
        ))
    });
    // Taking over, the records are the old process's pending accepts, on the very sockets this
    // one will accept from: not stale.
    let stale = if taking_over {
        0
    } else {
        maps.clear_handovers()
    };
    if stale > 0 {
        tracing::info!(stale, "dropped hand-over records of the previous run");
    }
    let (mut reloader, policies) = Reloader::new(
        args.policies.clone(),
        initial.clone(),
        events.clone(),
        Box::new(check_providers),
    );

    // Requests a previous run left pending are settled before any session can add new ones.
    let approvals = Approvals::open(
        db.clone(),
        Notifier::new(
            policies.clone(),
            HttpClient::new(sockets.clone()),
            events.clone(),
        ),
        events.clone(),
    )
    .with_context(|| format!("approval store {}", args.record_db.display()))?;
    if !taking_over {
        approvals
            .resume()
            .with_context(|| format!("approval store {}", args.record_db.display()))?;
    }
    telemetry.watch_approvals(&approvals);

    let kube_api = KubeApi::configure(
        args.kube_api.clone(),
        args.kube_token_file.clone(),
        args.kube_ca_file.clone(),
        args.node_name.clone().unwrap_or_else(node_name),
    )
    .map_err(|e| anyhow::anyhow!("--kube-api: {e}"))?;
    let pods = Arc::new(PodCache::default());
    let table = Arc::new(WorkloadTable::with_pods(pods.clone()));
    let gateway = &initial.gateway;
    let proxy = Arc::new(Proxy::new(
        policies.clone(),
        maps.clone(),
        table.clone(),
        events.clone(),
        Dialer {
            sockets: sockets.clone(),
            netns: Netns::Connection,
            timeout: Duration::from_millis(gateway.connect_timeout_ms),
        },
        crate::proxy::Oversight {
            recorder: recorder.clone(),
            approvals: approvals.clone(),
            revocations: crate::proxy::revocations::Revocations::load(db.clone())
                .with_context(|| format!("record database {}", args.record_db.display()))?,
        },
    ));
    // Every listener is registered for the next taker, and accepts only once the workloads
    // are classified (`accepting`): a connection waits in the queue rather than meet an empty
    // workload table (or, on a take-over, is accepted by the old process meanwhile).
    let registry = Arc::new(handover::Registry::default());
    let accepting = CancellationToken::new();
    let spawn: SpawnListener = {
        let (proxy, registry, accepting) = (proxy.clone(), registry.clone(), accepting.clone());
        Arc::new(move |l: Listener| {
            let role = match l.kind {
                ListenerKind::Host => handover::Role::Host,
                ListenerKind::Pod { netns_inode } => handover::Role::Pod { netns_inode },
            };
            let registered =
                handover::register_listener(&registry, role, l.local, l.netns_cookie, &l.inner);
            let (proxy, accepting) = (proxy.clone(), accepting.clone());
            tokio::spawn(async move {
                let _registered = registered;
                accepting.cancelled().await;
                proxy.serve(l).await
            })
        })
    };
    let mut host_ports = Vec::new();
    if let Some(t) = taken.as_mut() {
        for (meta, socket) in t.take_host() {
            host_ports.push(meta.local.port());
            spawn(Listener {
                inner: tokio::net::TcpListener::from_std(socket)?,
                local: meta.local,
                netns_cookie: meta.netns_cookie,
                kind: ListenerKind::Host,
                netns: None,
            });
        }
        t.stage_pods();
    }
    if !host_ports.contains(&gateway.listen_port) {
        for bound in bind_loopback(gateway.listen_port)? {
            spawn(bound.into_listener(ListenerKind::Host)?);
        }
    }
    telemetry.readiness.listeners_open();
    let mut reconciler =
        Reconciler::new(initial.clone(), kernel, fs, table, events.clone(), spawn)?;
    let replaced = reconciler.apply(initial.clone())?;
    let anchors: Vec<String> = reconciler
        .anchors()
        .iter()
        .map(|a| a.display().to_string())
        .collect();
    tracing::info!(?anchors, replaced, version = %initial.version, "capture attached");
    telemetry.capture_attached(reconciler.apply_error());
    accepting.cancel();
    if let Some(t) = taken.take() {
        match t.go() {
            Ok(pid) => {
                tracing::info!(
                    from_pid = pid,
                    "took over: the old gateway stops accepting and drains"
                );
                events.emit("taken_over", json!({"from_pid": pid}));
            }
            // It has the sockets either way; an old process that vanished drains nothing.
            Err(e) => tracing::warn!("took over, but the old gateway did not confirm: {e}"),
        }
        let unclaimed = handover::drop_unclaimed_pod_listeners();
        if unclaimed > 0 {
            tracing::info!(unclaimed, "pod listeners of pods gone meanwhile closed");
        }
        if let Some(l) = taken_metrics {
            telemetry.serve_taken(l)?;
        }
    }
    let _metrics_registered = telemetry.endpoint().and_then(|(addr, fd)| {
        handover::register_listener(&registry, handover::Role::Metrics, addr, 0, fd)
    });

    reloader.enforce_with(crate::proxy::enforcer(proxy.sessions.clone()));
    let stop = CancellationToken::new();
    let admin_listener = admin::bind(&args.admin_socket)?;
    // One handler for the Unix socket and the HTTP API.
    let admin = Arc::new(admin::Admin {
        approvals: approvals.clone(),
        node: Arc::new(admin::node::Gateway {
            proxy: proxy.clone(),
            policy: reloader.status(),
            capture_error: reconciler.apply_error(),
        }),
    });
    tokio::spawn(admin::serve(admin_listener, admin.clone(), stop.clone()));
    let handed = CancellationToken::new();
    handover::listen(&handover_socket)?.spawn(
        args.pin_dir.clone(),
        registry.clone(),
        handed.clone(),
        stop.clone(),
    )?;
    let _admin_http_registered = match args.admin_http {
        Some(addr) => {
            let api = Arc::new(admin::views::ConsoleApi::new(
                (!args.record_off).then(|| args.record_db.clone()),
                policies.clone(),
                reloader.status(),
                args.audit_sink.is_some().then(|| shipped.clone()),
                proxy.revocations.changes(),
            ));
            let listener = HttpAdminListener {
                addr,
                taken: taken_admin_http,
                registry: registry.clone(),
            };
            // The console's sign-in: on while the policy in force has a `console:` section.
            let console = crate::console::ConsoleAuth::new(
                policies.clone(),
                HttpClient::new(sockets.clone()),
                maps.clone(),
            );
            tokio::spawn(console.clone().follow_policy(policies.clone()));
            serve_http_admin(
                &args,
                listener,
                proxy.clone(),
                admin,
                api,
                console,
                stop.clone(),
            )
            .await?
        }
        None => None,
    };
    tokio::spawn(record_policies(policies.clone(), recorder.clone()));
    tokio::spawn(
        PodWatch {
            api: kube_api,
            cache: pods,
            sockets: sockets.clone(),
            events: events.clone(),
        }
        .run(policies.clone(), stop.clone()),
    );
    let watcher = tokio::spawn(reconciler.run(policies, stop.clone()));
    tokio::spawn(reloader.run(stop.clone()));
    tokio::spawn(proxy.clone().revalidate_on_change());
    tokio::spawn(crate::proxy::memory::return_freed_memory(
        proxy.sessions.clone(),
    ));
    events.emit(
        "ready",
        json!({"pid": std::process::id(), "anchors": anchors, "replaced_links": replaced,
               "listen_port": gateway.listen_port, "policy_version": initial.version}),
    );

    let mut signals = StopSignals::new()?;
    let handed_over = tokio::select! {
        _ = signals.recv() => false,
        _ = handed.cancelled() => true,
    };
    if handed_over {
        // The new process serves the probes from here on, and answers approvers.
        telemetry.stop();
        tokio::spawn(proxy.clone().follow_the_successor());
        events.emit("handed_over", json!({"pid": std::process::id()}));
    }
    tracing::info!(
        handed_over,
        "stopping: no new connections; draining open ones"
    );
    approvals.stopping();
    telemetry.readiness.listeners_closed();
    proxy.shutdown.cancel();
    stop.cancel();
    proxy.tracker.close();
    let drained = tokio::time::timeout(Duration::from_secs(args.drain_secs), proxy.tracker.wait())
        .await
        .is_ok();
    let _ = watcher.await;
    if tokio::time::timeout(Duration::from_secs(10), recorder.flush())
        .await
        .is_err()
    {
        tracing::error!("records still unwritten after 10 s (see the errors above); exiting");
    }
    sink_stop.cancel();
    if let Some(task) = sink_task {
        // What the recorder flushed last goes out too, if the central store answers.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if handed_over {
        // Both sockets are the new process's now.
        events.emit("stopped", json!({"drained": drained, "handed_over": true}));
        if args.after_handover == handover::AfterHandover::Wait {
            tracing::info!("handed over and drained; waiting for SIGTERM");
            signals.recv().await;
        }
    } else {
        let _ = std::fs::remove_file(&args.admin_socket);
        let _ = std::fs::remove_file(&handover_socket);
        events.emit("stopped", json!({"drained": drained}));
    }
    telemetry.stop();
    Ok(())
}

/// Where the HTTP admin API listens: `--admin-http`, on the socket a gateway handed over if
/// there is one, registered so that the next upgrade takes it in turn.
struct HttpAdminListener {
    addr: std::net::SocketAddr,
    taken: Option<std::net::TcpListener>,
    registry: Arc<handover::Registry>,
}

async fn serve_http_admin<C: crate::net::Connect + 'static>(
    args: &RunArgs,
    at: HttpAdminListener,
    proxy: Arc<Proxy<C>>,
    admin: Arc<admin::Admin>,
    api: Arc<admin::views::ConsoleApi>,
    console: Arc<crate::console::ConsoleAuth>,
    stop: CancellationToken,
) -> anyhow::Result<Option<handover::Registered>> {
    let addr = at.addr;
    let tls = match (&args.admin_http_cert, &args.admin_http_key) {
        (Some(cert), Some(key)) => Some(
            crate::protocol::postgres::tls::server_config(&crate::policy::ClientTls {
                cert_file: cert.clone(),
                key_file: key.clone(),
            })
            .map_err(|e| anyhow::anyhow!("admin HTTP TLS: {e}"))?,
        ),
        _ => None,
    };
    let (listener, acceptor) = admin::http::bind(addr, tls, at.taken).await?;
    let registered =
        handover::register_listener(&at.registry, handover::Role::AdminHttp, addr, 0, &listener);
    let authenticate: admin::http::Authenticate = Arc::new(move |token: String| {
        let proxy = proxy.clone();
        Box::pin(async move {
            let p = proxy
                .verify_person(&token)
                .await
                .map_err(|(code, message)| admin::http::Unauthorized { code, message })?;
            // The roles in force now: a reload that removes someone's group takes effect at
            // their next request.
            let role = proxy
                .policy
                .borrow()
                .console
                .as_ref()
                .map_or(policy::ConsoleRole::Approver, |c| c.role(&p.groups));
            Ok(admin::caller::Caller {
                approver: Approver::Oidc {
                    issuer: p.issuer,
                    subject: p.subject,
                    groups: p.groups,
                },
                role,
                via: admin::caller::Via::Bearer,
            })
        })
    });
    let admin = Arc::new(admin::http::HttpAdmin {
        admin,
        api,
        authenticate,
        console: Some(console),
    });
    tracing::info!(%addr, tls = acceptor.is_some(), "admin HTTP API listening");
    tokio::spawn(admin::http::serve(admin, listener, acceptor, stop));
    Ok(registered)
}

/// Each policy put in force is on record: which rules a session ran under can be looked up.
async fn record_policies(
    mut policies: tokio::sync::watch::Receiver<Arc<policy::Policy>>,
    recorder: Arc<Recorder>,
) {
    loop {
        let p = policies.borrow_and_update().clone();
        recorder
            .record(crate::record::Record::Event {
                kind: "policy",
                at_ms: crate::record::now_ms(),
                session: None,
                body: json!({
                    "version": p.version,
                    "rules": p.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                    "targets": p.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
                    "workloads": p.workloads.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
                }),
            })
            .await;
        if policies.changed().await.is_err() {
            return;
        }
    }
}

/// The host name, for the central audit store.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-node".into())
}

/// Applies the retention limits at start and every ten minutes, never deleting records the
/// central store does not have yet.
async fn retain(
    db: crate::record::SharedDb,
    days: Option<u64>,
    max_bytes: Option<u64>,
    shipped: Arc<std::sync::atomic::AtomicI64>,
) {
    loop {
        let db = db.clone();
        let limit = shipped.load(std::sync::atomic::Ordering::Relaxed);
        let pruned = tokio::task::spawn_blocking(move || {
            Db::lock(&db).retain(days, max_bytes, limit, crate::record::now_ms())
        })
        .await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(records = n, "retention: oldest records deleted"),
            Ok(Err(e)) => tracing::error!("retention: {e}"),
            Err(e) => tracing::error!("retention: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

/// SIGTERM and SIGINT, registered once: one that arrives while a handed-over gateway drains is
/// still there when it waits for it afterwards.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn forward_ebpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd for its whole life and never swaps it.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("eBPF log forwarding unavailable: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
