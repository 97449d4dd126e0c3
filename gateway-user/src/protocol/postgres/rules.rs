//! PostgreSQL's rule section, `statements:`: which statements a rule denies or holds for
//! approval (classes, tables, functions, patterns over the canonical text), parsed here and
//! registered with the policy loader (`policy::section`), which knows it only by its key.

use std::sync::Arc;

use globset::GlobMatcher;
use linkme::distributed_slice;
use serde::Deserialize;

use super::classify::{Class, Classified, TableRef};
use crate::policy::{
    empty_list, glob_ci,
    section::{ActionMatcher, RawSection, RuleSection, SectionContext, RULE_SECTIONS},
    Effect, Policy, Protocol, Rule, Who,
};

#[distributed_slice(RULE_SECTIONS)]
static STATEMENTS: RuleSection = RuleSection {
    key: "statements",
    protocol: Protocol::Postgres,
    parse: parse_section,
};

/// Which statements a statement rule is about. Every list that is given must match (AND);
/// within a list any entry may match (OR).
#[derive(Debug, Clone)]
pub struct StatementMatch {
    pub classes: Vec<Class>,
    pub tables: Vec<NamePattern>,
    pub functions: Vec<NamePattern>,
    /// Over the normalized statement text.
    pub patterns: Vec<regex::Regex>,
}

impl ActionMatcher for StatementMatch {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `name` or `schema.name`, each part a glob. A pattern without a schema matches the name in
/// every schema; an unqualified name in a statement matches every schema of a pattern (the
/// session's search_path is not known, so fail closed).
#[derive(Debug, Clone)]
pub struct NamePattern {
    pub schema: Option<GlobMatcher>,
    pub name: GlobMatcher,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementsDoc {
    #[serde(default, deserialize_with = "empty_list")]
    pub classes: Vec<Class>,
    #[serde(default, deserialize_with = "empty_list")]
    pub tables: Vec<String>,
    #[serde(default, deserialize_with = "empty_list")]
    pub functions: Vec<String>,
    /// Regexes over the normalized statement (constants replaced by `$1`, `$2`, …).
    #[serde(default, deserialize_with = "empty_list")]
    pub patterns: Vec<StatementRegexDoc>,
}

#[derive(Debug, Clone)]
pub struct StatementRegexDoc(pub regex::Regex);

impl<'de> Deserialize<'de> for StatementRegexDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("empty pattern"));
        }
        regex::RegexBuilder::new(&s)
            .size_limit(1 << 20)
            .build()
            .map(StatementRegexDoc)
            .map_err(|e| serde::de::Error::custom(format!("bad pattern `{s}`: {e}")))
    }
}

fn parse_section(
    ctx: &SectionContext<'_>,
    raw: RawSection,
) -> Result<Arc<dyn ActionMatcher>, Vec<String>> {
    let s: StatementsDoc = raw.parse(ctx.rule, "statements")?;
    let rule = ctx.rule;
    let mut problems = Vec::new();
    if ctx.approval && ctx.effect == Effect::Deny {
        problems.push(format!(
            "rule `{rule}`: approval rules have no effect (remove `effect`)"
        ));
    }
    if !ctx.approval && ctx.effect != Effect::Deny {
        problems.push(format!(
            "rule `{rule}`: statement rules can only deny (statements in an allowed session are allowed unless a statement rule denies them)"
        ));
    }
    if s.classes.is_empty()
        && s.tables.is_empty()
        && s.functions.is_empty()
        && s.patterns.is_empty()
    {
        problems.push(format!(
            "rule `{rule}`: `statements` needs at least one of classes, tables, functions, patterns"
        ));
    }
    let mut patterns = |list: Vec<String>, what: &str| -> Vec<NamePattern> {
        let mut out = Vec::new();
        for text in list {
            let (schema, name) = match text.rsplit_once('.') {
                Some((s, n)) => (Some(s), n),
                None => (None, text.as_str()),
            };
            let built = schema
                .map(|s| glob_ci(s).map(Some))
                .unwrap_or(Ok(None))
                .and_then(|schema| glob_ci(name).map(|name| (schema, name)));
            match built {
                Ok((schema, name)) if !text.is_empty() => out.push(NamePattern { schema, name }),
                Ok(_) => problems.push(format!("rule `{rule}`: empty {what} pattern")),
                Err(e) => problems.push(format!("rule `{rule}`: bad {what} pattern `{text}`: {e}")),
            }
        }
        out
    };
    let tables = patterns(s.tables, "table");
    let functions = patterns(s.functions, "function");
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Arc::new(StatementMatch {
        classes: s.classes,
        tables,
        functions,
        patterns: s.patterns.into_iter().map(|p| p.0).collect(),
    }))
}

/// The statement rules of a policy, as PostgreSQL's relay asks about them.
pub trait StatementRules {
    /// The first statement rule that denies `stmt` for `who` on `target`, if any. An opaque
    /// statement (DO block, parse error, …) cannot be shown not to match, so every statement
    /// rule that applies to the principal denies it.
    fn statement_denied<'p>(
        &'p self,
        who: &Who<'_>,
        target: &str,
        stmt: &Statement<'_>,
    ) -> Option<&'p Rule>;

    /// The first approval rule (in file order) that holds `stmt` for `who` on `target`.
    fn approval_required<'p>(
        &'p self,
        who: &Who<'_>,
        target: &str,
        stmt: &Statement<'_>,
    ) -> Option<&'p Rule>;
}

impl StatementRules for Policy {
    fn statement_denied<'p>(
        &'p self,
        who: &Who<'_>,
        target: &str,
        stmt: &Statement<'_>,
    ) -> Option<&'p Rule> {
        first_statement_rule(self, who, target, stmt, false)
    }

    fn approval_required<'p>(
        &'p self,
        who: &Who<'_>,
        target: &str,
        stmt: &Statement<'_>,
    ) -> Option<&'p Rule> {
        first_statement_rule(self, who, target, stmt, true)
    }
}

/// The first statement rule matching `stmt` for `who` on `target` among the approval rules
/// (`approval`) or the deny rules (not `approval`).
fn first_statement_rule<'p>(
    policy: &'p Policy,
    who: &Who<'_>,
    target: &str,
    stmt: &Statement<'_>,
    approval: bool,
) -> Option<&'p Rule> {
    policy.rules.iter().find(|r| {
        r.approval.is_some() == approval
            && r.action
                .as_ref()
                .and_then(|a| a.matcher::<StatementMatch>())
                .is_some_and(|m| r.matches(who, target) && m.matches(stmt))
    })
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
