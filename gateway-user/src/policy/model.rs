//! The validated, merged policy as the rest of the gateway sees it.

use std::{path::PathBuf, time::Duration};

use globset::GlobMatcher;
use ipnet::IpNet;
use serde::Deserialize;

/// How a managed workload's connections reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The workload shares the host network namespace: redirect to the host loopback listener.
    Host,
    /// The workload has its own network namespace: the gateway opens a listener inside it.
    Pod,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes, relayed both ways.
    Tcp,
    /// PostgreSQL wire protocol: the gateway authenticates the agent, logs in upstream with the
    /// target's credential, and controls and records every statement.
    Postgres,
    /// SSH: the gateway terminates the agent's SSH, logs in upstream with a credential it
    /// holds, and controls and records every channel and command.
    Ssh,
    /// HTTP(S), with an optional profile (`kubernetes`): the gateway terminates the agent's TLS,
    /// judges and records every request, and forwards it with a credential it holds.
    Http,
}

/// What the kernel does with UDP from managed workloads to a target's addresses and ports. The
/// gateway proxies TCP only; a UDP service sharing a target's address and port would otherwise
/// be reachable directly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpPolicy {
    /// Not touched (the default: most targets have no UDP service, and DNS-like services on a
    /// target's port would break).
    #[default]
    Pass,
    /// Refused (`EPERM` on `connect()` and `sendto()`), from managed and not yet classified
    /// cgroups, to the target's addresses and, for a local target, every local alias of its ports.
    Refuse,
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    /// The glob as written, relative to the cgroup v2 mount, starting with `/`.
    pub cgroup: String,
    pub matcher: GlobMatcher,
    pub mode: Mode,
    pub token: TokenSource,
    /// Kubernetes pods: the cgroup glob then matches the kubelet's root cgroup(s), and a cgroup
    /// below it is this workload's when its pod is one the selector picks (capture/pods.rs).
    pub pods: Option<PodSelector>,
}

/// Pods by namespace, service account and labels; each part given must match (an empty part
/// matches any pod).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSelector {
    pub namespaces: Vec<String>,
    /// Service account names (in the pod's own namespace).
    pub service_accounts: Vec<String>,
    /// Every label here, with exactly this value.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl PodSelector {
    pub fn matches(
        &self,
        namespace: &str,
        service_account: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            && (self.service_accounts.is_empty()
                || self.service_accounts.iter().any(|s| s == service_account))
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

/// Where a workload's identity token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The protocol's credential (PostgreSQL password, SSH password, HTTP bearer).
    Credential,
    /// A path inside the workload's own filesystem, read through `/proc/<pid>/root`.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// The protocol, with its protocol-specific settings.
    pub settings: TargetSettings,
    pub addresses: Vec<IpNet>,
    pub ports: Vec<u16>,
    pub credential: Option<Secret>,
    pub udp: UdpPolicy,
    pub source: PathBuf,
}

/// A target's protocol and what the gateway needs to speak it: one variant per protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSettings {
    Tcp,
    Postgres(PostgresTarget),
    Ssh(SshTarget),
    Http(HttpTarget),
}

impl TargetSettings {
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Tcp => Protocol::Tcp,
            Self::Postgres(_) => Protocol::Postgres,
            Self::Ssh(_) => Protocol::Ssh,
            Self::Http(_) => Protocol::Http,
        }
    }
}

impl Target {
    pub fn protocol(&self) -> Protocol {
        self.settings.protocol()
    }

    /// The PostgreSQL settings of a `postgres` target.
    pub fn postgres(&self) -> Option<&PostgresTarget> {
        match &self.settings {
            TargetSettings::Postgres(pg) => Some(pg),
            _ => None,
        }
    }

    /// The SSH settings of an `ssh` target.
    pub fn ssh(&self) -> Option<&SshTarget> {
        match &self.settings {
            TargetSettings::Ssh(ssh) => Some(ssh),
            _ => None,
        }
    }

    /// The HTTP settings of an `http` target.
    pub fn http(&self) -> Option<&HttpTarget> {
        match &self.settings {
            TargetSettings::Http(http) => Some(http),
            _ => None,
        }
    }
}

/// How the gateway speaks HTTP to the agents of a target and to the target (docs/http.md,
/// docs/kubernetes.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub profile: HttpProfile,
    /// The agents' TLS, terminated by the gateway; `None`: agents speak plain HTTP.
    pub tls: Option<HttpServerTls>,
    pub upstream_tls: UpstreamTls,
    /// A client certificate the gateway presents upstream (a Kubernetes API server's admin
    /// certificate, say), besides or instead of the target's `credential`.
    pub upstream_client_tls: Option<ClientTls>,
    pub upstream_identity: UpstreamIdentity,
    /// Request bodies longer than this are refused (they are judged and recorded whole).
    pub max_body_bytes: usize,
    /// The TLS handshake and the first request must arrive within this.
    pub login_timeout: Duration,
}

/// What the gateway understands of a target's requests beyond method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpProfile {
    /// Any HTTP service: rules over methods and paths.
    Plain,
    /// A Kubernetes API server: requests classified as Kubernetes does (verb, group, resource,
    /// namespace, name), Secret values masked, impersonation upstream.
    Kubernetes,
}

/// The certificate authority whose leaf certificates the gateway shows the agents, for the
/// target's names and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpServerTls {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// DNS names (and addresses) the leaf names besides the target's own addresses.
    pub names: Vec<String>,
}

/// Whose identity the target sees on a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamIdentity {
    /// The gateway's credential plus `Impersonate-User`/`-Group`/`-Extra-` naming the agent
    /// (Kubernetes): the server's RBAC and audit log see the agent.
    Impersonate,
    /// The gateway's credential only (or none): the agent's `Authorization` never leaves.
    Credential,
    /// The agent's own `Authorization` header, forwarded as it came.
    PassThrough,
}

/// How the gateway speaks SSH to the agents of a target and to the target itself. Key files are
/// read when a session needs them (docs/ssh.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub host_key: SshHostKey,
    pub upstream_auth: SshUpstreamAuth,
    /// The target's host key (plain or `@cert-authority` lines): checked, fail closed.
    pub known_hosts: PathBuf,
    /// How long a per-session user certificate is valid (`SshUpstreamAuth::UserCa`).
    pub user_cert_ttl: Duration,
    /// An agent that has not logged in by then (version line, key exchange, login) is dropped:
    /// a slow or silent client must not hold a session slot.
    pub login_timeout: Duration,
}

/// The host key the agent's client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshHostKey {
    /// A per-target key derived from the gateway's secret, with a short-lived host certificate
    /// signed by this CA for the target's names and addresses.
    Certified { ca_key: PathBuf, names: Vec<String> },
    /// The target's own host key, imported by the operator, for clients that pin it.
    Imported { key: PathBuf },
}

/// The credential the gateway logs in upstream with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshUpstreamAuth {
    /// A per-session user certificate signed by a CA the target trusts (`TrustedUserCAKeys`).
    UserCa { ca_key: PathBuf },
    /// A static private key the target lists in `authorized_keys`.
    StaticKey { key: PathBuf },
}

/// How the gateway speaks to a PostgreSQL target and to the agents that reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// The upstream role the gateway logs in as, with the target's credential.
    pub user: String,
    /// Forces this database; `None` keeps the one the agent asked for.
    pub database: Option<String>,
    pub upstream_tls: UpstreamTls,
    /// The gateway's own certificate for agents that insist on TLS; `None` declines TLS (the
    /// hop never leaves the node).
    pub client_tls: Option<ClientTls>,
    /// Larger protocol messages end the session with an error.
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plaintext: for loopback targets only (checked when loading).
    Disable,
    /// TLS (the default), certificate chain checked against `ca_file` and name against
    /// `server_name` (or the destination address when unset).
    VerifyFull {
        /// `None`: the public web PKI roots.
        ca_file: Option<PathBuf>,
        server_name: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The upstream credential of a target, resolved when a connection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Env(String),
    File(PathBuf),
}

impl Secret {
    /// The credential's value, read now: a rotated file or changed variable is picked up by the
    /// next connection.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Secret::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwks {
    File(PathBuf),
    Url(String),
    Discovery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProvider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: Jwks,
    /// JWS algorithm names, asymmetric only (checked when parsing).
    pub algorithms: Vec<&'static str>,
    pub groups_claim: String,
    pub clock_skew: Duration,
    pub max_lifetime: Duration,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    pub workloads: Vec<String>,
    pub issuers: Vec<String>,
    pub subjects: Vec<GlobMatcher>,
    pub groups: Vec<String>,
    /// Globs over the login asked for on the target (the SSH user name); empty: any login. A
    /// rule with logins matches only sessions that name one (SSH).
    pub logins: Vec<GlobMatcher>,
    /// Target names; `None` means every target.
    pub targets: Option<Vec<String>>,
    /// Set on action rules: a protocol's section (`statements:` for PostgreSQL, `commands:` for
    /// SSH) saying which actions inside allowed sessions the rule denies or holds; they play no
    /// part in deciding connections.
    pub action: Option<super::section::RuleAction>,
    /// Set on mask rules: they mask values in sessions that connection rules allowed, and play
    /// no part in deciding connections or actions.
    pub mask: Option<std::sync::Arc<crate::mask::rules::MaskSpec>>,
    /// Set on approval rules (with an action section): matching actions wait for people to
    /// approve them.
    pub approval: Option<std::sync::Arc<crate::approval::ApprovalSpec>>,
    pub source: PathBuf,
}

pub use super::doc::Effect;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Port of the loopback listener, on the host and inside each pod network namespace.
    pub listen_port: u16,
    /// Give up on an upstream that does not accept within this many milliseconds.
    pub connect_timeout_ms: u64,
    /// Close a relayed connection after this long with no bytes in either direction.
    pub idle_timeout_ms: u64,
    /// Live sessions the gateway holds at most, and per workload.
    pub max_connections: usize,
    pub max_connections_per_workload: usize,
    pub approval_webhooks: Vec<crate::approval::Webhook>,
    /// The first rows of each statement's result (as sent, masked) kept on record.
    pub record_result_rows: usize,
    pub record_result_bytes: usize,
    /// The secret SSH targets' per-target host keys are derived from (the same on every node).
    pub ssh_host_key_secret: Option<PathBuf>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen_port: 15001,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 3_600_000,
            max_connections: 10_000,
            max_connections_per_workload: 1_000,
            approval_webhooks: Vec::new(),
            record_result_rows: 20,
            record_result_bytes: 16 * 1024,
            ssh_host_key_secret: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Short content hash of the files this policy was read from.
    pub version: String,
    pub gateway: GatewaySettings,
    pub identity_providers: Vec<IdentityProvider>,
    pub workloads: Vec<Workload>,
    pub targets: Vec<Target>,
    pub rules: Vec<Rule>,
    /// Key of the `hash` mask strategy, read when the policy was loaded.
    pub mask_key: Option<std::sync::Arc<[u8]>>,
    /// The web console's sign-in and roles; `None`: no console sign-in (the bearer API stays).
    pub console: Option<Console>,
}

/// The web console (policy `console:`). Approvers are still chosen per rule by group; these
/// roles cover what is not an approval.
// Read by the console's sign-in and API (issue 22), which land next.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Console {
    /// Name of the identity provider people sign in with (one of `identity_providers`).
    pub identity_provider: String,
    pub client_id: String,
    /// Read when the policy was loaded; `None` for a public client.
    pub client_secret: Option<String>,
    pub redirect_url: String,
    /// Always includes `openid`.
    pub scopes: Vec<String>,
    pub session_ttl: Duration,
    pub auditors: Vec<String>,
    pub admins: Vec<String>,
}

/// What a signed-in person may do beyond deciding the approvals of their groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    /// Approvals of their groups only.
    Approver,
    /// Also reads sessions, agents, audit status and the policy.
    Auditor,
    /// Also revokes and lifts revocations.
    Admin,
}

impl Console {
    /// The role of someone in `groups` (admins are auditors too).
    pub fn role(&self, groups: &[String]) -> ConsoleRole {
        let any = |of: &[String]| groups.iter().any(|g| of.contains(g));
        if any(&self.admins) {
            ConsoleRole::Admin
        } else if any(&self.auditors) {
            ConsoleRole::Auditor
        } else {
            ConsoleRole::Approver
        }
    }
}

impl Policy {
    /// The first workload (in file order) whose glob matches `cgroup_path` itself.
    #[cfg(test)]
    pub fn workload_for(&self, cgroup_path: &str) -> Option<(usize, &Workload)> {
        self.workloads
            .iter()
            .enumerate()
            .find(|(_, w)| w.matcher.is_match(cgroup_path))
    }

    /// The target a connection to `dst` was meant for, if any.
    pub fn target_for(&self, dst: std::net::SocketAddr) -> Option<(usize, &Target)> {
        let ip = canonical_ip(dst.ip());
        self.targets.iter().enumerate().find(|(_, t)| {
            t.ports.contains(&dst.port()) && t.addresses.iter().any(|net| net.contains(&ip))
        })
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    }
}
