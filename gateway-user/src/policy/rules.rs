//! Who may reach which target. Default deny; a matching deny rule beats any allow rule.

use super::model::{Class, Effect, NamePattern, Policy, Rule, StatementMatch};
use crate::statement::{Classified, TableRef};

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
    fn matches(&self, who: &Who<'_>, target: &str) -> bool {
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
            .filter(|r| r.statements.is_none() && r.mask.is_none() && r.commands.is_none());
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

    /// The command rules that apply to `who` on `target`, in file order.
    pub fn command_rules(&self, who: &Who<'_>, target: &str) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.commands.is_some() && r.matches(who, target))
            .collect()
    }

    /// The first statement rule that denies `stmt` for `who` on `target`, if any. An opaque
    /// statement (DO block, parse error, …) cannot be shown not to match, so every statement
    /// rule that applies to the principal denies it.
    pub fn statement_denied<'p>(
        &'p self,
        who: &Who<'_>,
        target: &str,
        stmt: &Statement<'_>,
    ) -> Option<&'p Rule> {
        self.first_statement_rule(who, target, stmt, false)
    }

    /// The first approval rule (in file order) that holds `stmt` for `who` on `target`.
    pub fn approval_required<'p>(
        &'p self,
        who: &Who<'_>,
        target: &str,
        stmt: &Statement<'_>,
    ) -> Option<&'p Rule> {
        self.first_statement_rule(who, target, stmt, true)
    }

    /// The first statement rule matching `stmt` for `who` on `target` among the approval rules
    /// (`approval`) or the deny rules (not `approval`).
    fn first_statement_rule<'p>(
        &'p self,
        who: &Who<'_>,
        target: &str,
        stmt: &Statement<'_>,
        approval: bool,
    ) -> Option<&'p Rule> {
        self.rules.iter().find(|r| {
            r.approval.is_some() == approval
                && r.statements
                    .as_ref()
                    .is_some_and(|m| r.matches(who, target) && m.matches(stmt))
        })
    }
}

/// The protocol's canonical form of an action's text, one entry per statement (or command) in
/// it: what `patterns` match, so that comments, case and spacing cannot hide a match. `None`
/// when the text cannot be read: a pattern then cannot be shown not to match.
pub type Canonicalize = fn(&str) -> Option<Vec<String>>;

/// A statement as the rules see it: its classification and, for `patterns`, its canonical
/// form, made once on first use by the protocol's `Canonicalize`.
pub struct Statement<'a> {
    pub classified: &'a Classified,
    pub text: &'a str,
    canonicalize: Canonicalize,
    // A lock, not a cell: the relay keeps one across awaits in a task that must be Send.
    canonical: std::sync::OnceLock<Option<Vec<String>>>,
}

impl<'a> Statement<'a> {
    pub fn new(classified: &'a Classified, text: &'a str, canonicalize: Canonicalize) -> Self {
        Statement {
            classified,
            text,
            canonicalize,
            canonical: std::sync::OnceLock::new(),
        }
    }

    fn canonical(&self) -> Option<&[String]> {
        self.canonical
            .get_or_init(|| (self.canonicalize)(self.text))
            .as_deref()
    }
}

impl StatementMatch {
    fn matches(&self, statement: &Statement<'_>) -> bool {
        let stmt = statement.classified;
        if stmt.class == Class::Opaque {
            return true;
        }
        let listed = (self.classes.is_empty() || self.classes.contains(&stmt.class))
            && (self.tables.is_empty()
                || stmt
                    .tables
                    .iter()
                    .any(|t| self.tables.iter().any(|p| p.matches_table(t))))
            && (self.functions.is_empty()
                || stmt
                    .functions
                    .iter()
                    .any(|f| self.functions.iter().any(|p| p.matches_qualified(f))));
        // Last: patterns cost a parse and print-back of the statement.
        listed
            && (self.patterns.is_empty()
                || statement.canonical().is_none_or(|stmts| {
                    stmts
                        .iter()
                        .any(|s| self.patterns.iter().any(|p| p.is_match(s)))
                }))
    }
}

impl NamePattern {
    fn matches_table(&self, t: &TableRef) -> bool {
        self.matches_parts(t.schema.as_deref(), &t.name)
    }

    /// `schema.name` or `name`, as the classifier lists functions.
    fn matches_qualified(&self, f: &str) -> bool {
        match f.rsplit_once('.') {
            Some((schema, name)) => self.matches_parts(Some(schema), name),
            None => self.matches_parts(None, f),
        }
    }

    fn matches_parts(&self, schema: Option<&str>, name: &str) -> bool {
        let schema_ok = match (&self.schema, schema) {
            (None, _) | (Some(_), None) => true,
            (Some(p), Some(s)) => p.is_match(s),
        };
        schema_ok && self.name.is_match(name)
    }
}
