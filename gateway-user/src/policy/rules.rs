//! Who may reach which target. Default deny; a matching deny rule beats any allow rule.

use super::model::{Effect, Policy, Protocol, Rule};

/// The verified principal and where it connects from.
#[derive(Debug, Clone)]
pub struct Who<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub groups: &'a [String],
    pub workload: &'a str,
    /// The login asked for on the target, where the protocol has one (the SSH user name).
    pub login: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        rule: String,
    },
    Deny {
        rule: Option<String>,
        reason: String,
    },
}

#[cfg(test)]
impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

impl Rule {
    /// Whether the rule is about `who` on `target` (its `when` and `targets`).
    pub fn matches(&self, who: &Who<'_>, target: &str) -> bool {
        let targets_ok = self
            .targets
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == target));
        targets_ok
            && (self.workloads.is_empty() || self.workloads.iter().any(|w| w == who.workload))
            && (self.issuers.is_empty() || self.issuers.iter().any(|i| i == who.issuer))
            && (self.subjects.is_empty() || self.subjects.iter().any(|g| g.is_match(who.subject)))
            && (self.groups.is_empty() || self.groups.iter().any(|g| who.groups.contains(g)))
            && (self.logins.is_empty()
                || who
                    .login
                    .is_some_and(|l| self.logins.iter().any(|g| g.is_match(l))))
    }
}

impl Policy {
    pub fn decide(&self, who: &Who<'_>, target: &str) -> Decision {
        let mut allow = None;
        let connection_rules = self
            .rules
            .iter()
            .filter(|r| r.action.is_none() && r.mask.is_none());
        for rule in connection_rules.filter(|r| r.matches(who, target)) {
            match rule.effect {
                Effect::Deny => {
                    return Decision::Deny {
                        rule: Some(rule.name.clone()),
                        reason: format!("denied by rule `{}`", rule.name),
                    }
                }
                Effect::Allow => {
                    allow.get_or_insert_with(|| rule.name.clone());
                }
            }
        }
        match allow {
            Some(rule) => Decision::Allow { rule },
            None => Decision::Deny {
                rule: None,
                reason: "no rule allows this principal and workload to reach this target".into(),
            },
        }
    }
}

impl Policy {
    /// The mask rules that apply to `who` on `target`, in file order.
    pub fn mask_rules<'p>(
        &'p self,
        who: &'p Who<'_>,
        target: &'p str,
    ) -> impl Iterator<Item = &'p Rule> + 'p {
        self.rules
            .iter()
            .filter(move |r| r.mask.is_some() && r.matches(who, target))
    }

    /// The action rules of `protocol` that apply to `who` on `target`, in file order.
    pub fn action_rules(&self, who: &Who<'_>, target: &str, protocol: Protocol) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| {
                r.action.as_ref().is_some_and(|a| a.protocol == protocol) && r.matches(who, target)
            })
            .collect()
    }
}
