//! `agentgate run`: the start-up order matters for fail-closed behaviour.
//!
//! 1. load the programs, reuse the pinned maps (the previous run's classifications stay in force);
//! 2. write targets and settings, open the host listeners;
//! 3. classify every cgroup under the anchors;
//! 4. attach this generation's programs, then detach older generations (no uncovered instant);
//! 5. watch the cgroup tree; on SIGTERM/SIGINT stop accepting and drain.
//!
//! On exit nothing is detached: the pinned programs keep redirecting managed workloads to a
//! listener that is gone, so their connections to targets are refused until the next start.
//! `agentgate uninstall` is the way to let them through again.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use gateway_common::Config;
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::{
    capture::{bind_loopback, CgroupFs, ListenerKind, Reconciler, SpawnListener, WorkloadTable},
    cli::RunArgs,
    ebpf::{target_entries, Kernel},
    policy,
    proxy::Proxy,
    record::EventSink,
    upstream::MarkedConnector,
};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let policy = policy::load_dir(&args.policies)
        .with_context(|| format!("policy {} is invalid", args.policies.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args, Arc::new(policy)))
}

async fn serve(args: RunArgs, policy: Arc<policy::Policy>) -> anyhow::Result<()> {
    let events = Arc::new(match &args.events {
        Some(p) => EventSink::to_file(p).with_context(|| format!("event log {}", p.display()))?,
        None => EventSink::disabled(),
    });
    let fs = CgroupFs::discover(args.cgroup_root.clone())?;
    let mut kernel = Kernel::load(&args.pin_dir)?;
    if let Some(logger) = kernel.take_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    let maps = kernel.maps();
    maps.set_config(Config {
        bypass_mark: policy.gateway.bypass_mark,
        _pad: 0,
    })?;
    maps.sync_targets(&target_entries(&policy))?;

    let table = Arc::new(WorkloadTable::default());
    let proxy = Arc::new(Proxy::new(
        policy.clone(),
        maps.clone(),
        table.clone(),
        events.clone(),
        MarkedConnector {
            mark: policy.gateway.bypass_mark,
            timeout: Duration::from_millis(policy.gateway.connect_timeout_ms),
        },
    ));
    for bound in bind_loopback(policy.gateway.listen_port)? {
        let listener = bound.into_listener(ListenerKind::Host)?;
        tokio::spawn(proxy.clone().serve(listener));
    }
    let spawn: SpawnListener = {
        let proxy = proxy.clone();
        Arc::new(move |l| tokio::spawn(proxy.clone().serve(l)))
    };
    let mut reconciler = Reconciler::new(policy.clone(), fs, maps, table, events.clone(), spawn)?;
    reconciler.reconcile()?;
    let mut anchor_ids = Vec::new();
    for anchor in reconciler.anchors() {
        let id = CgroupFs::id(anchor).with_context(|| anchor.display().to_string())?;
        kernel.attach(id, anchor)?;
        anchor_ids.push(id);
    }
    let replaced = kernel.detach_except(&anchor_ids)?;
    let anchors: Vec<String> = reconciler
        .anchors()
        .iter()
        .map(|a| a.display().to_string())
        .collect();
    tracing::info!(?anchors, replaced, "capture attached");
    events.emit(
        "ready",
        json!({"pid": std::process::id(), "anchors": anchors, "replaced_links": replaced,
               "listen_port": policy.gateway.listen_port}),
    );

    let stop = CancellationToken::new();
    let watcher = tokio::spawn(reconciler.run(stop.clone()));
    wait_for_signal().await?;
    tracing::info!("stopping: no new connections; draining open ones");
    proxy.shutdown.cancel();
    stop.cancel();
    proxy.tracker.close();
    let drained = tokio::time::timeout(Duration::from_secs(args.drain_secs), proxy.tracker.wait())
        .await
        .is_ok();
    let _ = watcher.await;
    events.emit("stopped", json!({"drained": drained}));
    drop(kernel);
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
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
