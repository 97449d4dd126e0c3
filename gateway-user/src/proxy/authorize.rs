//! Deciding whether a captured connection may proceed: which workload sent it, its token, the
//! principal the token proves, and the rules of the policy in force. Every refusal carries a
//! reason code and a message; nothing here fails open.

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
};

use crate::{
    capture::workload_files,
    identity::{JwksSource, Principal, ProviderConfig, Verifier},
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
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            rule: None,
            principal: None,
        }
    }
}

pub struct Allowed {
    pub principal: Principal,
    pub rule: String,
}

/// The identity providers of a policy in the verifier's terms.
pub fn provider_configs(policy: &Policy) -> Result<Vec<ProviderConfig>, String> {
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

/// One verifier per policy version: a reload with changed providers starts with fresh key caches.
#[derive(Default)]
pub struct Verifiers {
    current: Mutex<Option<(String, Arc<Verifier>)>>,
}

impl Verifiers {
    pub fn for_policy(&self, policy: &Policy) -> Result<Arc<Verifier>, String> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, verifier)) = cur.as_ref() {
            if *v == policy.version {
                return Ok(verifier.clone());
            }
        }
        let verifier =
            Arc::new(Verifier::new(provider_configs(policy)?).map_err(|e| e.to_string())?);
        *cur = Some((policy.version.clone(), verifier.clone()));
        Ok(verifier)
    }
}

/// Reads the workload's token from where the policy says it is.
pub fn workload_token(
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
                workload.name, target.name, target.protocol
            ),
        )),
        TokenSource::File(path) => {
            let bytes = workload_files::read(pid, cgroup, path)
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
) -> Result<Allowed, Refusal> {
    let verifier = verifiers
        .for_policy(policy)
        .map_err(|e| Refusal::new("identity_unavailable", e))?;
    let principal = verifier
        .verify(token)
        .await
        .map_err(|e| Refusal::new(e.reason(), format!("token refused: {e}")))?;
    match decide(policy, &principal, &workload.name, &target.name) {
        Decision::Allow { rule } => Ok(Allowed { principal, rule }),
        Decision::Deny { rule, reason } => Err(Refusal {
            code: "denied",
            message: reason,
            rule,
            principal: Some(Box::new(principal)),
        }),
    }
}

pub fn decide(policy: &Policy, p: &Principal, workload: &str, target: &str) -> Decision {
    policy.decide(
        &Who {
            issuer: &p.issuer,
            subject: &p.subject,
            groups: &p.groups,
            workload,
        },
        target,
    )
}
