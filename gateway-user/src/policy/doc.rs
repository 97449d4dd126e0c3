//! The YAML documents exactly as written in a policy file. Every struct refuses unknown keys, and
//! values with a fixed syntax (addresses, algorithms) are checked while parsing so that an error
//! carries the line and column of the offending value.

use ipnet::IpNet;
use serde::Deserialize;

use super::model::{Mode, Protocol};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDoc {
    pub version: u32,
    #[serde(default)]
    pub gateway: Option<GatewayDoc>,
    #[serde(default, deserialize_with = "empty_list")]
    pub identity_providers: Vec<ProviderDoc>,
    #[serde(default, deserialize_with = "empty_list")]
    pub workloads: Vec<WorkloadDoc>,
    #[serde(default, deserialize_with = "empty_list")]
    pub targets: Vec<TargetDoc>,
    #[serde(default, deserialize_with = "empty_list")]
    pub rules: Vec<RuleDoc>,
    /// The web console: who signs in through which provider, and what each group may see.
    #[serde(default)]
    pub console: Option<ConsoleDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleDoc {
    /// A name from `identity_providers`: its issuer's discovery document gives the endpoints.
    pub identity_provider: String,
    pub client_id: String,
    /// Omitted: a public client (PKCE alone, as for a single-page app).
    #[serde(default)]
    pub client_secret: Option<SecretDoc>,
    /// This console's callback, exactly as registered at the provider
    /// (`https://<admin-http>/console/callback`).
    pub redirect_url: String,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub session_ttl_secs: Option<u64>,
    /// Groups that read sessions, agents, audit status and the policy.
    #[serde(default, deserialize_with = "empty_list")]
    pub auditors: Vec<String>,
    /// Groups that may also revoke and lift revocations.
    #[serde(default, deserialize_with = "empty_list")]
    pub admins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayDoc {
    pub listen_port: Option<u16>,
    pub connect_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_workload: Option<usize>,
    /// Key of the `hash` mask strategy.
    #[serde(default)]
    pub mask_key: Option<SecretDoc>,
    /// Where approval requests and decisions are announced.
    #[serde(default, deserialize_with = "empty_list")]
    pub approval_webhooks: Vec<WebhookDoc>,
    /// How much of each result the record keeps.
    #[serde(default)]
    pub record_results: Option<RecordResultsDoc>,
    /// The secret (32 bytes or more) SSH targets' host keys are derived from.
    #[serde(default)]
    pub ssh_host_key_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordResultsDoc {
    pub max_rows: usize,
    pub max_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDoc {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksDoc,
    pub algorithms: Vec<Algorithm>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_secs: u64,
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_clock_skew() -> u64 {
    30
}
fn default_max_lifetime() -> u64 {
    900
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum JwksDoc {
    /// A JWKS JSON file on the gateway's node, re-read on refresh.
    File { path: String },
    /// A JWKS URL (https, or http on loopback).
    Url { url: String },
    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`.
    Discovery,
}

/// A JWS algorithm the policy allows. Only asymmetric ones: a shared secret would let anyone who
/// can read the policy mint tokens, and `none` is no signature at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Algorithm(pub &'static str);

pub const ALLOWED_ALGORITHMS: [&str; 10] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "EDDSA",
];

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match ALLOWED_ALGORITHMS.iter().find(|a| **a == s) {
            Some(&"EDDSA") => Ok(Algorithm("EdDSA")),
            Some(a) => Ok(Algorithm(a)),
            None if s.starts_with("HS") || s.eq_ignore_ascii_case("none") => {
                Err(serde::de::Error::custom(format!(
                    "algorithm `{s}` is not allowed: only asymmetric algorithms (RS*, PS*, ES256, ES384, EdDSA)"
                )))
            }
            None => Err(serde::de::Error::custom(format!(
                "unknown algorithm `{s}` (allowed: RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadDoc {
    pub name: String,
    /// Required, except with `pods:` (then the kubelet's root cgroups, both drivers).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Required, except with `pods:` (always `pod`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Kubernetes pods, selected by what the API server says about them.
    #[serde(default)]
    pub pods: Option<PodsDoc>,
    pub token: TokenDoc,
}

/// Which pods a workload selects; every list given must match, an empty or missing one
/// matches anything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsDoc {
    #[serde(default, deserialize_with = "empty_list")]
    pub namespaces: Vec<String>,
    #[serde(default, deserialize_with = "empty_list")]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Where a workload's identity token comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum TokenDoc {
    /// The protocol's own credential (a password or bearer that is a JWT).
    Credential,
    /// A file inside the workload's filesystem, e.g. a projected service-account token.
    File { path: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDoc {
    pub name: String,
    pub protocol: Protocol,
    pub addresses: Vec<Address>,
    pub ports: Vec<u16>,
    #[serde(default)]
    pub credential: Option<SecretDoc>,
    #[serde(default)]
    pub udp: super::model::UdpPolicy,
    #[serde(default)]
    pub postgres: Option<PostgresDoc>,
    #[serde(default)]
    pub ssh: Option<SshDoc>,
    #[serde(default)]
    pub http: Option<HttpDoc>,
}

/// An HTTP target's settings (docs/http.md, docs/kubernetes.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDoc {
    #[serde(default)]
    pub profile: Option<super::model::HttpProfile>,
    /// The CA whose leaf certificates the agents see; absent: agents speak plain HTTP.
    #[serde(default)]
    pub tls: Option<HttpServerTlsDoc>,
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsDoc>,
    #[serde(default)]
    pub upstream_client_tls: Option<ClientTlsDoc>,
    #[serde(default)]
    pub upstream_identity: Option<super::model::UpstreamIdentity>,
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    #[serde(default)]
    pub login_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerTlsDoc {
    pub ca_cert: String,
    pub ca_key: String,
    #[serde(default, deserialize_with = "empty_list")]
    pub names: Vec<String>,
}

/// An SSH target's keys (docs/ssh.md). Exactly one of `host_ca_key` / `host_key`, and of
/// `user_ca_key` / `private_key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshDoc {
    /// Signs the per-target host certificates the agents' clients see.
    #[serde(default)]
    pub host_ca_key: Option<String>,
    /// Host names the certificate names besides the target's addresses.
    #[serde(default, deserialize_with = "empty_list")]
    pub host_names: Vec<String>,
    /// The target's own host key, imported, for clients that pin it.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Signs the per-session user certificates the gateway logs in upstream with.
    #[serde(default)]
    pub user_ca_key: Option<String>,
    /// A static key the gateway logs in upstream with.
    #[serde(default)]
    pub private_key: Option<String>,
    /// The target's host key as known_hosts lines (plain or `@cert-authority`).
    pub known_hosts: String,
    #[serde(default)]
    pub user_cert_ttl_secs: Option<u64>,
    /// Seconds an agent has to log in (default 20).
    #[serde(default)]
    pub login_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresDoc {
    pub user: String,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsDoc>,
    #[serde(default)]
    pub client_tls: Option<ClientTlsDoc>,
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum UpstreamTlsDoc {
    Disable,
    VerifyFull {
        #[serde(default)]
        ca_file: Option<String>,
        #[serde(default)]
        server_name: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsDoc {
    pub cert_file: String,
    pub key_file: String,
}

/// Where the gateway finds the upstream credential of a target. The agent never sees it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretDoc {
    Env { name: String },
    File { path: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    pub name: String,
    #[serde(default)]
    pub effect: Effect,
    #[serde(default)]
    pub when: WhenDoc,
    /// Target names, or `"*"` for every target.
    pub targets: Vec<String>,
    /// PostgreSQL's action section (protocol/postgres/rules.rs): which statements the rule
    /// denies or holds inside sessions that connection rules allowed.
    #[serde(default)]
    pub statements: Option<super::section::RawSection>,
    /// Makes this a mask rule: values it matches are masked in what the target sends back.
    #[serde(default)]
    pub mask: Option<MaskDoc>,
    /// With `statements` or `commands`: matching actions wait for people to approve them
    /// instead of being denied.
    #[serde(default)]
    pub approval: Option<ApprovalDoc>,
    /// SSH's action section (protocol/ssh/rules.rs): which execs, shells and subsystems.
    #[serde(default)]
    pub commands: Option<super::section::RawSection>,
    /// HTTP's action section (protocol/http/rules.rs): which requests.
    #[serde(default)]
    pub requests: Option<super::section::RawSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDoc {
    /// Groups (from the approver token's groups claim) whose members may decide.
    pub approvers: Vec<String>,
    #[serde(default = "default_quorum")]
    pub quorum: u32,
    #[serde(default = "default_approval_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub mode: crate::approval::Mode,
    #[serde(default)]
    pub retry_window_secs: Option<u64>,
    /// Run a write first (rolled back if it touches more rows) and ask people only when it
    /// touches more than this many rows.
    #[serde(default)]
    pub max_rows: Option<u64>,
}

fn default_quorum() -> u32 {
    1
}
fn default_approval_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDoc {
    pub url: String,
    #[serde(default)]
    pub format: crate::approval::WebhookFormat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskDoc {
    #[serde(default, deserialize_with = "empty_list")]
    pub columns: Vec<ColumnDoc>,
    #[serde(default, deserialize_with = "empty_list")]
    pub detectors: Vec<crate::mask::detect::Builtin>,
    #[serde(default, deserialize_with = "empty_list")]
    pub regexes: Vec<RegexDoc>,
    #[serde(default)]
    pub strategy: StrategyDoc,
    #[serde(default)]
    pub keep_last: Option<usize>,
    #[serde(default)]
    pub binary: crate::mask::rules::BinaryPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyDoc {
    #[default]
    Redact,
    Partial,
    Hash,
    Null,
}

/// A column pattern, checked while parsing so that a bad one is reported at its line.
#[derive(Debug, Clone)]
pub struct ColumnDoc(pub crate::mask::rules::ColumnPattern);

impl<'de> Deserialize<'de> for ColumnDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::mask::rules::ColumnPattern::parse(&s)
            .map(ColumnDoc)
            .map_err(serde::de::Error::custom)
    }
}

/// A custom detector's regular expression, compiled while parsing (errors carry the line).
#[derive(Debug, Clone)]
pub struct RegexDoc(pub regex::bytes::Regex);

impl<'de> Deserialize<'de> for RegexDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("empty regex"));
        }
        regex::bytes::RegexBuilder::new(&s)
            .size_limit(1 << 20)
            .build()
            .map(RegexDoc)
            .map_err(|e| serde::de::Error::custom(format!("bad regex `{s}`: {e}")))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

/// Who a rule is about. Each list that is given must match (AND); within a list any entry may
/// match (OR). An empty `when` matches everyone with a valid token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenDoc {
    #[serde(default, deserialize_with = "empty_list")]
    pub workloads: Vec<String>,
    #[serde(default, deserialize_with = "empty_list")]
    pub issuers: Vec<String>,
    /// Globs over the token's `sub`.
    #[serde(default, deserialize_with = "empty_list")]
    pub subjects: Vec<String>,
    #[serde(default, deserialize_with = "empty_list")]
    pub groups: Vec<String>,
    /// Globs over the login asked for on the target (the SSH user name).
    #[serde(default, deserialize_with = "empty_list")]
    pub logins: Vec<String>,
}

/// An address or CIDR, checked while parsing so that a bad one is reported at its line.
#[derive(Debug, Clone, Copy)]
pub struct Address(pub IpNet);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_address(&s)
            .map(Address)
            .map_err(serde::de::Error::custom)
    }
}

fn parse_address(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set; did you mean `{}`?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
}

/// An empty value (`rules:` with nothing after it, every entry commented out) is an empty list,
/// as it was when the files were read with serde_yaml.
pub fn empty_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}
