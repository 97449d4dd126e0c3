//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/agentgate";

#[derive(Debug, Parser)]
#[command(
    name = "agentgate",
    version,
    about = "A node-local gateway that AI agents cannot go around"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs, capture the policy's workloads and relay their connections.
    Run(Box<RunArgs>),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The running gateway: policy version in force, last reload error, live sessions.
    Status {
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Statements held for human approval: list, show, approve, deny (root, local socket).
    Approvals {
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET, global = true)]
        admin_socket: PathBuf,
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Sessions on record: list with filters, show one, replay what happened in it.
    Sessions {
        #[arg(long, default_value = crate::record::DEFAULT_RECORD_DB, global = true)]
        record_db: PathBuf,
        #[command(flatten)]
        central: CentralArgs,
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Every workload and identity seen: first/last seen, token expiry, live sessions, targets,
    /// privileged actions, status (active, idle, expired, revoked).
    Agents {
        #[arg(long, default_value = crate::record::DEFAULT_RECORD_DB)]
        record_db: PathBuf,
        #[command(flatten)]
        central: CentralArgs,
        /// Only the agents of this node (with --central).
        #[arg(long, requires = "central")]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Cut off an identity or a workload now: its live sessions end, new ones are refused
    /// (recorded); --lift undoes it, --list shows what is revoked.
    Revoke {
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// The token subject (`sub`) to revoke.
        #[arg(long, required_unless_present_any = ["workload", "list"])]
        identity: Option<String>,
        /// Only tokens of this issuer (with --identity).
        #[arg(long, requires = "identity")]
        issuer: Option<String>,
        /// The workload to revoke.
        #[arg(long)]
        workload: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Lift the revocation of exactly this identity/workload instead.
        #[arg(long)]
        lift: bool,
        /// Show the revocations in force.
        #[arg(long, conflicts_with_all = ["identity", "workload", "lift"])]
        list: bool,
        #[arg(long)]
        json: bool,
    },
    /// The audit record: verify its hash chain, export it for a SIEM.
    Audit {
        /// The gateway's record database (read-only here).
        #[arg(long, default_value = crate::record::DEFAULT_RECORD_DB, global = true)]
        record_db: PathBuf,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Detach the programs and remove every pinned object: workloads then connect directly.
    Uninstall {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// The cluster view: read the central audit store every node ships to, instead of this node's
/// record database.
#[derive(Debug, Clone, clap::Args)]
pub struct CentralArgs {
    /// Answer for every node from the central PostgreSQL the gateways' --audit-sink ships to:
    /// a libpq connection string without the password, checked as --audit-sink is (TLS off
    /// loopback). Read-only.
    #[arg(long, env = "AGENTGATE_CENTRAL", global = true)]
    pub central: Option<String>,
    /// File holding the central store's password (read with --central only).
    #[arg(long, env = "AGENTGATE_CENTRAL_PASSWORD_FILE", global = true)]
    pub central_password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory; prints each problem as file:line:column and exits 1 if any.
    Check { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Sessions, newest first.
    List {
        /// Part of the agent's subject (or issuer#subject).
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        workload: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// postgres or tcp.
        #[arg(long)]
        protocol: Option<String>,
        /// Sessions still open at or after this time (a date, unix ms, or 15m/6h/7d ago).
        #[arg(long)]
        since: Option<String>,
        /// Sessions that started at or before this time.
        #[arg(long)]
        until: Option<String>,
        /// live or closed.
        #[arg(long)]
        status: Option<String>,
        /// Sessions with a statement containing this text.
        #[arg(long)]
        statement: Option<String>,
        /// Only the sessions of this node (with --central).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One session: who, from where, to what, how it ended.
    Show {
        id: String,
        /// The session's node (with --central, when the id is on more than one).
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The session's timeline: statements with parameters, outcomes, timings and the masked
    /// rows kept, approvals, and how it ended. An SSH session with recorded shells or pty
    /// execs is played in the terminal instead (real timing), unless --timeline or --json.
    Replay {
        id: String,
        /// The session's node (with --central, when the id is on more than one).
        #[arg(long)]
        node: Option<String>,
        /// The timeline as JSON.
        #[arg(long)]
        json: bool,
        /// The timeline even when the session has recordings.
        #[arg(long, conflicts_with_all = ["channel", "speed", "fast"])]
        timeline: bool,
        /// Play only this channel (the request number `#` of its record); default: every
        /// recorded channel, one after the other.
        #[arg(long, conflicts_with = "json")]
        channel: Option<u64>,
        /// Play this many times faster (0.5 is half speed).
        #[arg(long, value_parser = parse_speed, conflicts_with_all = ["fast", "json"])]
        speed: Option<f64>,
        /// Play without pauses.
        #[arg(long, conflicts_with = "json")]
        fast: bool,
    },
    /// Write an SSH channel's recording as an asciicast v2 file (asciinema and other players
    /// open it).
    Export {
        id: String,
        /// The .cast file to write (created mode 0600: it holds what the session showed).
        #[arg(long)]
        cast: std::path::PathBuf,
        /// The channel (the request number of its record); needed when the session recorded
        /// more than one.
        #[arg(long)]
        channel: Option<u64>,
    },
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every record against the chain; names each edited, deleted or reordered record
    /// and exits 1 if there is any.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Records as JSON Lines, oldest first, with the hashes that chain them.
    Export {
        /// A date (2026-11-26, 2026-11-26T08:00:00, UTC), unix milliseconds, or a duration back
        /// from now (15m, 6h, 7d). Default: everything.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Requests, newest first: pending ones unless --all or --state.
    List {
        #[arg(long)]
        all: bool,
        /// pending, approved, denied, expired or cancelled.
        #[arg(long, conflicts_with = "all")]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One request in full.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (as root on this node: one approver toward the quorum).
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Deny a request; the agent gets the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory of policy YAML files.
    #[arg(long)]
    pub policies: PathBuf,
    /// bpffs directory for the pinned maps and links (kept across restarts: fail closed).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// cgroup v2 mount point (default: found in /proc/self/mountinfo).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Append connection and capture events as JSON lines to this file.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Unix socket of the local admin API (root only).
    #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,
    /// SQLite file that records every session and statement.
    #[arg(long, default_value = crate::record::DEFAULT_RECORD_DB)]
    pub record_db: PathBuf,
    /// Record nothing (the recorder discards): for measuring what recording costs, never for
    /// use.
    #[arg(long, hide = true)]
    pub record_off: bool,
    /// Delete records older than this many days (the chain stays verifiable from the oldest
    /// record kept).
    #[arg(long)]
    pub retain_days: Option<u64>,
    /// Keep the records under this many MiB, deleting the oldest.
    #[arg(long)]
    pub retain_mb: Option<u64>,
    /// Ship the audit journal to a central PostgreSQL: a libpq-style connection string without
    /// the password (`host=db.example port=5432 dbname=audit user=agentgate sslmode=require`).
    /// From the environment too: a DaemonSet sets it from an optional ConfigMap, so a node
    /// ships only where the cluster has one (deploy/daemonset.yaml).
    #[arg(long, env = "AGENTGATE_AUDIT_SINK")]
    pub audit_sink: Option<String>,
    /// File holding the central store's password.
    #[arg(
        long,
        env = "AGENTGATE_AUDIT_SINK_PASSWORD_FILE",
        requires = "audit_sink"
    )]
    pub audit_sink_password_file: Option<PathBuf>,
    /// This node's name in the central store and in the API server (`spec.nodeName` of its
    /// pods; default: the host name).
    #[arg(long, env = "AGENTGATE_NODE_NAME")]
    pub node_name: Option<String>,
    /// The node's cgroup namespace, entered at start when the gateway runs in another one (a
    /// container's): `/proc/<pid>/cgroup` of workloads then reads as full paths.
    #[arg(long, default_value = "/proc/1/ns/cgroup")]
    pub node_cgroupns: PathBuf,
    /// The Kubernetes API server, read for `pods:` workloads (the pods of this node). Default in
    /// a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    #[arg(long, env = "AGENTGATE_KUBE_API")]
    pub kube_api: Option<String>,
    /// The gateway's bearer token for the API server, read again on every reconnect (default:
    /// the pod's service-account token).
    #[arg(long)]
    pub kube_token_file: Option<PathBuf>,
    /// The API server's CA certificate, PEM (default: the pod's service-account CA, if there).
    #[arg(long)]
    pub kube_ca_file: Option<PathBuf>,
    /// Serve the HTTP admin API for approvers (OIDC bearer tokens) on this address. Plain HTTP
    /// only on loopback; elsewhere give --admin-http-cert and --admin-http-key.
    #[arg(long)]
    pub admin_http: Option<std::net::SocketAddr>,
    /// PEM certificate chain for the HTTP admin API (TLS).
    #[arg(long, requires = "admin_http_key")]
    pub admin_http_cert: Option<PathBuf>,
    /// PEM private key for the HTTP admin API (TLS).
    #[arg(long, requires = "admin_http_cert")]
    pub admin_http_key: Option<PathBuf>,
    /// On SIGTERM/SIGINT, wait this long for open connections before exiting.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz) over
    /// plain HTTP on this address, or `off`. Loopback only unless --metrics-public.
    #[arg(long, default_value = crate::telemetry::DEFAULT_METRICS)]
    pub metrics: crate::telemetry::MetricsListen,
    /// Allow --metrics on an address other than loopback (the metrics name workloads and
    /// targets; nothing else is exposed).
    #[arg(long)]
    pub metrics_public: bool,
    /// Format of the gateway's log on stderr: `text`, or `json` (one object per line, with the
    /// connection's span on every line of a connection).
    #[arg(long, value_enum, default_value_t)]
    pub log_format: crate::telemetry::LogFormat,
    /// Unix socket for upgrades without a gap (docs/kubernetes-deploy.md, Upgrades): a start
    /// asks it first, and if a gateway of the same pin directory answers there, takes its
    /// listening sockets over and lets it drain; otherwise starts afresh. Either way it then
    /// answers there for the next one. Default: `handover.sock` beside --admin-socket.
    #[arg(long)]
    pub handover_socket: Option<PathBuf>,
    /// Take over from the gateway answering on --handover-socket, or fail: never a fresh start.
    #[arg(long)]
    pub take_over: bool,
    /// Once this gateway has handed its sockets over and drained: `exit`, or `wait` for
    /// SIGTERM (in a Kubernetes pod: a container that exits is restarted, and would take the
    /// sockets back).
    #[arg(long, value_enum, default_value_t)]
    pub after_handover: crate::handover::AfterHandover,
}
