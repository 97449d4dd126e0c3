//! How `run` hooks the rest of the gateway to its metrics and readiness: one call per part, so
//! that `run` stays a list of start-up steps.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
};

use tokio_util::sync::CancellationToken;

use super::{
    metrics::MapLabel,
    server::{self, Endpoint, TelemetryError},
    Metrics, MetricsListen, Readiness,
};
use crate::{
    approval::Approvals,
    record::{Db, Recorder, SharedDb},
};

/// The gateway's metrics and readiness, and the endpoint serving them (if any).
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    stop: CancellationToken,
    /// The endpoint's listening socket (a duplicate), for a gateway that takes over (handover/).
    endpoint: Option<(SocketAddr, std::os::fd::OwnedFd)>,
}

impl Telemetry {
    /// Creates the metrics (also as the process-wide handle, see [`super::metrics::install`])
    /// and, unless `listen` is off, binds and serves the endpoint now: `/healthz` answers and
    /// `/readyz` says what is missing while the rest starts.
    pub async fn start(
        listen: MetricsListen,
        public: bool,
        policy_version: &str,
    ) -> Result<Telemetry, TelemetryError> {
        let metrics = Arc::new(Metrics::new());
        super::metrics::install(metrics.clone());
        metrics.policy_version(policy_version);
        let mut t = Telemetry {
            metrics,
            readiness: Readiness::new(),
            stop: CancellationToken::new(),
            endpoint: None,
        };
        if let MetricsListen::At(addr) = listen {
            let listener = server::bind(addr, public).await?;
            t.serve_on(addr, listener);
        }
        Ok(t)
    }

    /// Serves the endpoint on a listener taken over from the previous gateway process.
    pub fn serve_taken(&mut self, listener: std::net::TcpListener) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        self.serve_on(addr, listener);
        Ok(())
    }

    /// The endpoint's address and listening socket, if it serves one.
    pub fn endpoint(&self) -> Option<(SocketAddr, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd;
        self.endpoint.as_ref().map(|(a, fd)| (*a, fd.as_fd()))
    }

    fn serve_on(&mut self, addr: SocketAddr, listener: tokio::net::TcpListener) {
        use std::os::fd::AsFd;
        self.endpoint = listener
            .as_fd()
            .try_clone_to_owned()
            .map(|fd| (addr, fd))
            .ok();
        tracing::info!(%addr, "metrics, /healthz and /readyz listening");
        tokio::spawn(server::serve(
            Arc::new(Endpoint {
                metrics: self.metrics.clone(),
                readiness: self.readiness.clone(),
            }),
            listener,
            self.stop.clone(),
        ));
    }

    /// Stops serving (the very last step of `run`, so `/readyz` says "stopping" while draining).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The recorder's queue depth in the metrics; in the readiness, whether records can be
    /// written: the writer's last commit succeeded and the database file (`None` with
    /// `--record-off`) can be opened for writing, a cheap check that fails on a read-only file
    /// system or a file deleted under the gateway.
    pub fn watch_record(&self, recorder: &Arc<Recorder>, db_file: Option<PathBuf>) {
        let r = recorder.clone();
        self.metrics.on_scrape(move |m| {
            m.record_queue_depth.set(r.queue_depth() as i64);
        });
        let r = recorder.clone();
        self.readiness.check("record", move || {
            r.writable()?;
            if let Some(path) = &db_file {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("{} is not writable: {e}", path.display()))?;
            }
            Ok(())
        });
    }

    /// How far the central audit store is behind the journal: its last record's number minus
    /// the last one `shipped`.
    pub fn watch_sink(&self, db: SharedDb, shipped: Arc<AtomicI64>) {
        self.metrics.on_scrape(move |m| {
            let tip = Db::lock(&db).tip_seq();
            m.audit_sink_lag
                .set((tip - shipped.load(Ordering::Relaxed)).max(0));
        });
    }

    /// Entries and capacity of the per-socket eBPF maps pinned in `pin_dir`, at scrape time.
    pub fn watch_maps(&self, pin_dir: &Path) {
        match crate::ebpf::Occupancy::open(pin_dir) {
            Ok(occupancy) => self.metrics.on_scrape(move |m| {
                for fill in occupancy.count() {
                    let map = MapLabel {
                        map: fill.map.to_string(),
                    };
                    m.map_entries.get_or_create(&map).set(fill.entries as i64);
                    m.map_capacity.get_or_create(&map).set(fill.capacity as i64);
                }
            }),
            Err(e) => tracing::warn!("eBPF map occupancy will not be reported: {e}"),
        }
    }

    /// Requests waiting for a decision, from the store at scrape time (requests of a previous
    /// run included).
    pub fn watch_approvals(&self, approvals: &Arc<Approvals>) {
        let approvals = approvals.clone();
        self.metrics
            .on_scrape(move |m| match approvals.pending_count() {
                Ok(n) => {
                    m.approvals_pending.set(n as i64);
                }
                Err(e) => tracing::warn!("metrics: pending approvals: {e}"),
            });
    }

    /// Capture is attached and follows the policy in force, unless the reconciler's last
    /// attempt to apply a policy failed (`capture_error`).
    pub fn capture_attached(&self, capture_error: Arc<Mutex<Option<String>>>) {
        self.readiness.programs_attached();
        self.readiness.policy_in_force();
        self.readiness.check("capture", move || {
            match &*capture_error.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(e) => Err(format!("the policy in force is not fully applied: {e}")),
                None => Ok(()),
            }
        });
    }
}
