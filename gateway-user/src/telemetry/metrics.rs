//! The gateway's metrics, in one [`Metrics`] shared as `Arc<Metrics>`. Label values come from
//! small fixed sets (decisions, codes, classes, causes, outcomes) or from the policy's own names
//! (workloads, targets, protocols): never subjects, tokens, addresses or statement texts.
//!
//! Most values are fed as things happen (the event sink, the recorder, the approval service);
//! the gauges that describe a state (queue depth, map occupancy, pending approvals, sink lag)
//! are read when scraped, by the collectors registered with [`Metrics::on_scrape`].

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};
use serde_json::Value;

use super::cause::EndCause;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub workload: String,
    pub target: String,
    pub protocol: String,
    /// `allowed` or `refused`.
    pub decision: String,
    /// The refusal's code (`unmanaged`, `denied`, `expired`, …); empty when allowed.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub workload: String,
    pub target: String,
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub workload: String,
    pub target: String,
    pub protocol: String,
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: String,
}

// Labels from fixed sets are `&'static str`: counting a statement allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabels {
    pub class: &'static str,
    /// `allowed`, `denied` or `approved`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A collector run at scrape time, before the registry is encoded.
type Collect = Box<dyn Fn(&Metrics) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnectionLabels, Counter>,
    pub sessions_live: Family<SessionLabels, Gauge>,
    pub sessions_ended: Family<EndLabels, Counter>,
    pub session_duration: HistogramFamily<ProtocolLabel>,
    pub statements: Family<StatementLabels, Counter>,
    pub approvals_requested: Counter,
    pub approvals_decided: Family<OutcomeLabel, Counter>,
    pub approvals_pending: Gauge,
    pub mask_rows_rewritten: Counter,
    pub record_queue_depth: Gauge,
    pub record_commit: Histogram,
    pub record_commit_failures: Counter,
    pub audit_sink_lag: Gauge,
    pub policy_info: Family<VersionLabel, Gauge>,
    pub policy_reloads: Family<ResultLabel, Counter>,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    pub token_verifications: Family<OutcomeLabel, Counter>,
    collectors: Mutex<Vec<Collect>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn session_duration_histogram() -> Histogram {
    // 10 ms to about 3 hours.
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("agentgate"),
            connections: Family::default(),
            sessions_live: Family::default(),
            sessions_ended: Family::default(),
            session_duration: Family::new_with_constructor(session_duration_histogram),
            statements: Family::default(),
            approvals_requested: Counter::default(),
            approvals_decided: Family::default(),
            approvals_pending: Gauge::default(),
            mask_rows_rewritten: Counter::default(),
            record_queue_depth: Gauge::default(),
            // 0.25 ms to about 4 s: a commit with synchronous=FULL is an fsync or two.
            record_commit: Histogram::new(exponential_buckets(0.00025, 2.0, 15)),
            record_commit_failures: Counter::default(),
            audit_sink_lag: Gauge::default(),
            policy_info: Family::default(),
            policy_reloads: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            token_verifications: Family::default(),
            collectors: Mutex::new(Vec::new()),
        };
        let r = &mut m.registry;
        r.register(
            "connections",
            "Captured connections by workload, target, protocol and decision (allowed, or refused with its code)",
            m.connections.clone(),
        );
        r.register(
            "sessions_live",
            "Sessions relaying now, by workload, target and protocol",
            m.sessions_live.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions ended, by workload, target, protocol and cause",
            m.sessions_ended.clone(),
        );
        r.register_with_unit(
            "session_duration",
            "How long sessions lasted, by protocol",
            Unit::Seconds,
            m.session_duration.clone(),
        );
        r.register(
            "statements",
            "Actions on record (PostgreSQL statements by class, SSH requests by kind), by decision",
            m.statements.clone(),
        );
        r.register(
            "approvals_requested",
            "Approval requests made",
            m.approvals_requested.clone(),
        );
        r.register(
            "approvals_decided",
            "Approval requests decided, by outcome (approved, denied, expired, cancelled)",
            m.approvals_decided.clone(),
        );
        r.register(
            "approvals_pending",
            "Approval requests waiting for a decision",
            m.approvals_pending.clone(),
        );
        r.register(
            "mask_rows_rewritten",
            "Result rows and COPY lines whose values masking changed",
            m.mask_rows_rewritten.clone(),
        );
        r.register(
            "record_queue_depth",
            "Records queued for the record database, not yet written",
            m.record_queue_depth.clone(),
        );
        r.register_with_unit(
            "record_commit",
            "Time to write and commit one batch of records",
            Unit::Seconds,
            m.record_commit.clone(),
        );
        r.register(
            "record_commit_failures",
            "Batches of records that could not be committed (each is retried)",
            m.record_commit_failures.clone(),
        );
        r.register(
            "audit_sink_lag_records",
            "Records of the local journal not yet shipped to the central audit store",
            m.audit_sink_lag.clone(),
        );
        r.register(
            "policy_info",
            "The policy version in force (value 1)",
            m.policy_info.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reloads by result (applied, refused)",
            m.policy_reloads.clone(),
        );
        r.register(
            "ebpf_map_entries",
            "Entries of the per-socket eBPF maps, counted at scrape time",
            m.map_entries.clone(),
        );
        r.register(
            "ebpf_map_capacity",
            "Capacity (max_entries) of the per-socket eBPF maps",
            m.map_capacity.clone(),
        );
        r.register(
            "token_verifications",
            "OIDC token verifications by outcome (ok, or the refusal's reason code)",
            m.token_verifications.clone(),
        );
        m
    }

    /// Runs `collect` at every scrape, before encoding (from a blocking thread: it may lock the
    /// record database or walk an eBPF map).
    pub fn on_scrape(&self, collect: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.collectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(collect));
    }

    /// Collects the scrape-time values and encodes everything in the Prometheus text format.
    pub fn render(&self) -> String {
        for c in self
            .collectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            c(self);
        }
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }

    /// The policy in force is `version` (only that version's series is left).
    pub fn policy_version(&self, version: &str) {
        self.policy_info.clear();
        self.policy_info
            .get_or_create(&VersionLabel {
                version: version.to_string(),
            })
            .set(1);
    }

    /// A statement on record.
    pub fn statement(&self, class: &str, decision: &str) {
        self.statements
            .get_or_create(&StatementLabels {
                class: bounded_class(class),
                decision: bounded(decision, &["allowed", "denied", "approved"]),
            })
            .inc();
    }

    /// A token verification: `Ok`, or the verifier's reason code.
    pub fn token_verified(&self, outcome: Result<(), &'static str>) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(code) => code,
        };
        self.token_verifications
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// One event of the event sink (see [`crate::record::EventSink`]): the connection,
    /// session, policy and approval metrics are derived from these.
    pub fn event(&self, event: &str, fields: &Value) {
        let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or_default();
        let session = || SessionLabels {
            workload: text("workload").to_string(),
            target: text("target").to_string(),
            protocol: text("protocol").to_string(),
        };
        match event {
            "allowed" | "refused" => {
                let s = session();
                self.connections
                    .get_or_create(&ConnectionLabels {
                        workload: s.workload,
                        target: s.target,
                        protocol: s.protocol,
                        decision: event.to_string(),
                        code: text("code").to_string(),
                    })
                    .inc();
            }
            "connection_open" => {
                self.sessions_live.get_or_create(&session()).inc();
            }
            "connection_close" => {
                let s = session();
                self.sessions_live.get_or_create(&s).dec();
                let cause = EndCause::of(
                    fields.get("ended_by").and_then(Value::as_str),
                    fields.get("error").and_then(Value::as_str),
                );
                if let Some(ms) = fields.get("duration_ms").and_then(Value::as_u64) {
                    self.session_duration
                        .get_or_create(&ProtocolLabel {
                            protocol: s.protocol.clone(),
                        })
                        .observe(ms as f64 / 1000.0);
                }
                self.sessions_ended
                    .get_or_create(&EndLabels {
                        workload: s.workload,
                        target: s.target,
                        protocol: s.protocol,
                        cause: cause.as_str().to_string(),
                    })
                    .inc();
            }
            "policy_applied" => {
                self.reload("applied");
                self.policy_version(text("version"));
            }
            "policy_refused" => self.reload("refused"),
            "approval_requested" => {
                self.approvals_requested.inc();
            }
            "approval_decided" => {
                let outcome = bounded(
                    text("state"),
                    &["approved", "denied", "expired", "cancelled"],
                );
                self.approvals_decided
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc();
            }
            _ => {}
        }
    }

    fn reload(&self, result: &'static str) {
        self.policy_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// `value` if it is one of `known`, else `other`: a label value never comes from free text.
fn bounded(value: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or("other")
}

/// The classes actions are recorded under: PostgreSQL's statement classes and SSH's request
/// kinds.
const SSH_CLASSES: &[&str] = &["exec", "shell", "subsystem", "forward", "sftp"];

fn bounded_class(class: &str) -> &'static str {
    crate::statement::Class::ALL
        .iter()
        .map(|c| c.as_str())
        .chain(SSH_CLASSES.iter().copied())
        .find(|c| *c == class)
        .unwrap_or("other")
}

/// The process-wide metrics, for the few places deep inside the data path (token verification,
/// masking) that have no handle to pass one through without changing the proxy's and the
/// protocol handlers' constructors. Set once by `run`; unset (nothing counted) in unit tests and
/// the other commands.
static GLOBAL: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();

pub fn install(m: Arc<Metrics>) {
    let _ = GLOBAL.set(m);
}

/// Runs `f` with the process-wide metrics, if `run` installed them.
pub fn with(f: impl FnOnce(&Metrics)) {
    if let Some(m) = GLOBAL.get() {
        f(m)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn connection_events_move_the_connection_and_session_series() {
        let m = Metrics::new();
        let base = json!({"workload": "w", "target": "t", "protocol": "postgres",
                          "subject": "alice", "peer": "127.0.0.1:5"});
        m.event("allowed", &base);
        m.event("refused", &json!({"code": "unmanaged"}));
        m.event("connection_open", &base);
        let text = m.render();
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_connections_total{workload="w",target="t",protocol="postgres",decision="allowed",code=""}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_connections_total{workload="",target="",protocol="",decision="refused",code="unmanaged"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_sessions_live{workload="w",target="t",protocol="postgres"}"#
            ),
            Some(1.0)
        );
        let mut close = base.clone();
        close["ended_by"] = json!("revoked by root: because");
        close["duration_ms"] = json!(1500);
        m.event("connection_close", &close);
        let text = m.render();
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_sessions_live{workload="w",target="t",protocol="postgres"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_sessions_ended_total{workload="w",target="t",protocol="postgres",cause="revoked"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_session_duration_seconds_sum{protocol="postgres"}"#
            ),
            Some(1.5)
        );
        // Free texts of the events never become label values.
        for secret in ["alice", "127.0.0.1", "because", "root"] {
            assert!(!text.contains(secret), "{secret} leaked into\n{text}");
        }
    }

    #[test]
    fn policy_info_keeps_only_the_version_in_force() {
        let m = Metrics::new();
        m.policy_version("v1");
        m.event("policy_applied", &json!({"version": "v2"}));
        m.event("policy_refused", &json!({"error": "x"}));
        let text = m.render();
        assert!(!text.contains(r#"version="v1""#), "{text}");
        assert_eq!(
            line_value(&text, r#"agentgate_policy_info{version="v2"}"#),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, r#"agentgate_policy_reloads_total{result="refused"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn unknown_classes_decisions_and_outcomes_become_other() {
        let m = Metrics::new();
        m.statement("SELECT * FROM secrets", "maybe");
        m.statement("read", "allowed");
        m.statement("exec", "denied");
        m.event("approval_decided", &json!({"state": "weird"}));
        let text = m.render();
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_statements_total{class="exec",decision="denied"}"#
            ),
            Some(1.0),
            "SSH requests count by their kind: {text}"
        );
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_statements_total{class="other",decision="other"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_statements_total{class="read",decision="allowed"}"#
            ),
            Some(1.0)
        );
        assert!(!text.contains("secrets"));
        assert_eq!(
            line_value(
                &text,
                r#"agentgate_approvals_decided_total{outcome="other"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn scrape_time_collectors_run_before_encoding() {
        let m = Metrics::new();
        let n = Arc::new(std::sync::atomic::AtomicI64::new(7));
        let seen = n.clone();
        m.on_scrape(move |m| {
            m.record_queue_depth
                .set(seen.load(std::sync::atomic::Ordering::Relaxed));
        });
        assert_eq!(
            line_value(&m.render(), "agentgate_record_queue_depth "),
            Some(7.0)
        );
        n.store(3, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            line_value(&m.render(), "agentgate_record_queue_depth "),
            Some(3.0)
        );
    }
}
