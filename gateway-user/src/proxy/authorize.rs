//! Deciding whether a captured connection may proceed: which workload sent it, its token, the
//! principal the token proves, and the rules of the policy in force. Every refusal carries a
//! reason code and a message; nothing here fails open.

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
};

use crate::{
    capture::workload_files,
    identity::{JwksSource, OwnSockets, Principal, ProviderConfig, TokenError, Verifier},
    policy::{Decision, Policy, Target, TokenSource, Who, Workload},
};

/// A refusal: `code` is stable for scripts and the audit store, `message` is for people.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub rule: Option<String>,
    /// Who was refused, when the token was valid and a rule said no.
    pub principal: Option<Box<Principal>>,
    /// Why the token was refused, when it was: what the agent is told comes from this.
    pub token: Option<Box<TokenError>>,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            rule: None,
            principal: None,
            token: None,
        }
    }

    /// A refused token: its machine code, its details for the operator, and the typed cause
    /// from which the agent's message is made.
    pub fn token(e: TokenError) -> Self {
        Self {
            token: Some(Box::new(e.clone())),
            ..Self::new(e.reason(), format!("token refused: {e}"))
        }
    }
}

pub struct Allowed {
    pub principal: Principal,
    pub rule: String,
}

/// Checks that the policy's identity providers can be built into a verifier: made by
/// `policy check`, at start, and before a reload is put in force.
pub fn check_providers(policy: &Policy) -> Result<(), String> {
    Verifier::new(provider_configs(policy)?)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The identity providers of a policy in the verifier's terms.
pub(crate) fn provider_configs(policy: &Policy) -> Result<Vec<ProviderConfig>, String> {
    policy
        .identity_providers
        .iter()
        .map(|p| {
            let algorithms = p
                .algorithms
                .iter()
                .map(|a| {
                    jsonwebtoken::Algorithm::from_str(a)
                        .map_err(|e| format!("identity provider `{}`: algorithm {a}: {e}", p.name))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ProviderConfig {
                name: p.name.clone(),
                issuer: p.issuer.clone(),
                audiences: p.audiences.clone(),
                jwks: match &p.jwks {
                    crate::policy::Jwks::File(f) => JwksSource::File(f.clone()),
                    crate::policy::Jwks::Url(u) => JwksSource::Url(u.clone()),
                    crate::policy::Jwks::Discovery => JwksSource::Discovery,
                },
                algorithms,
                groups_claim: p.groups_claim.clone(),
                clock_skew: p.clock_skew,
                max_lifetime: p.max_lifetime,
                ca_file: p.ca_file.clone(),
            })
        })
        .collect()
}

/// The verifier of the policy in force. Renewed when a policy is put in force (off the
/// connection path), keeping the key caches of providers whose settings did not change; `None`
/// (every token refused) if the new providers cannot be built.
pub struct Verifiers {
    current: Mutex<Option<Arc<Verifier>>>,
    own: Arc<dyn OwnSockets>,
}

impl Verifiers {
    pub fn new(policy: &Policy, own: Arc<dyn OwnSockets>) -> Self {
        let v = Self {
            current: Mutex::new(None),
            own,
        };
        v.renew(policy);
        v
    }

    pub fn renew(&self, policy: &Policy) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let built = provider_configs(policy).and_then(|configs| {
            match cur.as_ref() {
                Some(v) => v.renewed(configs),
                None => Verifier::new(configs).map(|v| v.with_own_sockets(self.own.clone())),
            }
            .map_err(|e| e.to_string())
        });
        *cur = match built {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                tracing::error!(version = %policy.version, "identity providers unusable, refusing every token: {e}");
                None
            }
        };
    }

    pub fn current(&self) -> Option<Arc<Verifier>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reads the workload's token from where the policy says it is (off the async runtime: a file
/// read can block).
pub async fn workload_token(
    workload: &Workload,
    target: &Target,
    pid: u32,
    cgroup: &str,
) -> Result<String, Refusal> {
    match &workload.token {
        TokenSource::Credential => Err(Refusal::new(
            "no_token",
            format!(
                "workload `{}` presents its token as the protocol credential, but target `{}` speaks {:?}, which carries none",
                workload.name, target.name, target.protocol()
            ),
        )),
        TokenSource::File(path) => {
            let (path, cgroup) = (path.clone(), cgroup.to_string());
            let bytes = tokio::task::spawn_blocking(move || workload_files::read(pid, &cgroup, &path))
                .await
                .map_err(|e| Refusal::new("no_token", format!("token file reader failed: {e}")))?
                .map_err(|e| Refusal::new("no_token", format!("token file: {e}")))?;
            String::from_utf8(bytes)
                .map(|s| s.trim().to_string())
                .map_err(|_| Refusal::new("no_token", "token file is not UTF-8"))
        }
    }
}

pub async fn authorize(
    policy: &Policy,
    verifiers: &Verifiers,
    workload: &Workload,
    target: &Target,
    token: &str,
    login: Option<&str>,
) -> Result<Allowed, Refusal> {
    let verifier = verifiers.current().ok_or_else(|| {
        Refusal::new(
            "identity_unavailable",
            "the policy's identity providers are unusable",
        )
    })?;
    let principal = verifier.verify(token).await.map_err(Refusal::token)?;
    let who = Who {
        issuer: &principal.issuer,
        subject: &principal.subject,
        groups: &principal.groups,
        workload: &workload.name,
        login,
    };
    match policy.decide(&who, &target.name) {
        Decision::Allow { rule } => Ok(Allowed { principal, rule }),
        Decision::Deny { rule, reason } => Err(Refusal {
            code: "denied",
            message: reason,
            rule,
            principal: Some(Box::new(principal)),
            token: None,
        }),
    }
}
