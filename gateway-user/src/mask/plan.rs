//! The mask rules that apply to one session under one policy version, ready to use on values.

use std::{borrow::Cow, sync::Arc};

use super::{
    detect::{Detectors, Hit, Kind},
    rules::{BinaryPolicy, ColumnPattern, MaskKey, MaskSpec, Origin, Strategy, REDACTED},
};
use crate::policy::{Policy, Who};

pub struct Plan {
    rules: Vec<(String, Arc<MaskSpec>)>,
    /// Every column pattern with the index of its rule, in rule order.
    columns: Vec<(ColumnPattern, usize)>,
    /// Tagged with the index of their rule.
    detectors: Detectors,
    key: MaskKey,
}

impl Plan {
    /// The plan for `who` on `target`; `None` when no mask rule applies (the relay then does no
    /// masking work at all).
    pub fn build(policy: &Policy, who: &Who<'_>, target: &str) -> Option<Arc<Plan>> {
        let mut plan = Plan {
            rules: Vec::new(),
            columns: Vec::new(),
            detectors: Detectors::default(),
            key: MaskKey::new(policy.mask_key.as_deref().unwrap_or_default()),
        };
        for rule in policy.mask_rules(who, target) {
            let Some(spec) = rule.mask.clone() else {
                continue;
            };
            let i = plan.rules.len();
            for c in &spec.columns {
                plan.columns.push((c.clone(), i));
            }
            for d in &spec.detectors {
                plan.detectors.push(Kind::Builtin(*d), i);
            }
            for r in &spec.regexes {
                plan.detectors.push(Kind::Regex(r.clone()), i);
            }
            plan.rules.push((rule.name.clone(), spec));
        }
        (!plan.rules.is_empty()).then(|| Arc::new(plan))
    }

    pub fn has_columns(&self) -> bool {
        !self.columns.is_empty()
    }

    pub fn has_detectors(&self) -> bool {
        !self.detectors.is_empty()
    }

    /// The rule that masks a column of any of these origins (the first in file order).
    pub fn column_rule<'o>(
        &self,
        origins: impl IntoIterator<Item = Origin<'o>> + Clone,
    ) -> Option<usize> {
        self.columns
            .iter()
            .find(|(p, _)| origins.clone().into_iter().any(|o| p.matches(&o)))
            .map(|(_, i)| *i)
    }

    /// The rule of the first column pattern (in file order), if any rule masks columns: what
    /// masks a value whose origin cannot be known.
    pub fn first_column_rule(&self) -> Option<usize> {
        self.columns.first().map(|(_, r)| *r)
    }

    pub fn rule_name(&self, rule: usize) -> &str {
        &self.rules[rule].0
    }

    pub fn binary_policy(&self, rule: usize) -> BinaryPolicy {
        self.rules[rule].1.binary
    }

    /// A whole value hit by a column rule; `None` is NULL.
    pub fn mask_value(&self, rule: usize, value: &[u8]) -> Option<Vec<u8>> {
        self.rules[rule].1.strategy.apply(value, &self.key)
    }

    /// A value computed from a column of `rule`: redacted whole (NULL under `null`).
    pub fn mask_tainted(&self, rule: usize) -> Option<Vec<u8>> {
        match self.rules[rule].1.strategy {
            Strategy::Null => None,
            _ => Some(REDACTED.as_bytes().to_vec()),
        }
    }

    /// `text` with what the detectors find masked: `None` when nothing was found,
    /// `Some(None)` when a hit's rule nulls the whole value.
    pub fn detect(&self, text: &[u8], hits: &mut Vec<Hit>) -> Option<Option<Vec<u8>>> {
        self.detect_clean(text, hits, |r| r)
    }

    /// [`Plan::detect`], with each replacement passed through `clean` (COPY lines, where a
    /// replacement must not carry a separator).
    pub fn detect_clean(
        &self,
        text: &[u8],
        hits: &mut Vec<Hit>,
        clean: impl Fn(Vec<u8>) -> Vec<u8>,
    ) -> Option<Option<Vec<u8>>> {
        if self.detectors.is_empty() {
            return None;
        }
        hits.clear();
        self.detectors.scan(text, hits);
        if hits.is_empty() {
            return None;
        }
        if hits
            .iter()
            .any(|h| self.rules[h.tag].1.strategy == Strategy::Null)
        {
            return Some(None);
        }
        Some(Some(self.splice(text, hits, clean)))
    }

    /// `text` with every detector hit replaced, a NULL strategy giving `****` (a line of a
    /// COPY cannot be NULL as a whole); `None` when nothing was found.
    pub fn detect_in_line(
        &self,
        text: &[u8],
        hits: &mut Vec<Hit>,
        clean: impl Fn(Vec<u8>) -> Vec<u8>,
    ) -> Option<Vec<u8>> {
        hits.clear();
        self.detectors.scan(text, hits);
        (!hits.is_empty()).then(|| self.splice(text, hits, clean))
    }

    fn splice(&self, text: &[u8], hits: &[Hit], clean: impl Fn(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for h in hits {
            // Hits are sorted and disjoint; a detector that broke that promise must not panic
            // the relay, so anything out of order is skipped.
            if h.range.start < at || h.range.end > text.len() {
                continue;
            }
            out.extend_from_slice(&text[at..h.range.start]);
            let strategy = self.rules[h.tag].1.strategy;
            out.extend(clean(
                strategy.apply_in_text(&text[h.range.clone()], &self.key),
            ));
            at = h.range.end;
        }
        out.extend_from_slice(&text[at..]);
        out
    }

    /// `text` with what the detectors find masked, for texts where NULL cannot stand (errors,
    /// notices, the record).
    pub fn mask_str<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.mask_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(masked) => Cow::Owned(String::from_utf8_lossy(&masked).into_owned()),
        }
    }

    /// [`Plan::mask_str`] for bytes that need not be UTF-8: every detector hit replaced, a NULL
    /// strategy giving `****`. What [`super::stream::StreamScanner`] gives for the same bytes
    /// in chunks.
    pub fn mask_bytes<'t>(&self, text: &'t [u8]) -> Cow<'t, [u8]> {
        let mut hits = Vec::new();
        self.detectors.scan(text, &mut hits);
        if hits.is_empty() {
            return Cow::Borrowed(text);
        }
        Cow::Owned(self.splice(text, &hits, |r| r))
    }

    /// Appends the detectors' hits in `text` to `hits`, sorted and disjoint, each tagged with
    /// its rule (for [`Plan::put_masked`]).
    pub fn scan(&self, text: &[u8], hits: &mut Vec<Hit>) {
        self.detectors.scan(text, hits);
    }

    /// Appends the replacement of `value`, which `hit` found, to `out` (`****` for a NULL
    /// strategy: inside a text a NULL cannot stand).
    pub fn put_masked(&self, hit: &Hit, value: &[u8], out: &mut Vec<u8>) {
        let strategy = self.rules[hit.tag].1.strategy;
        out.extend(strategy.apply_in_text(value, &self.key));
    }
}

#[cfg(test)]
impl Plan {
    /// The plan, on target `t`, of a policy with these rules (YAML list items).
    pub fn for_tests(rules: &str) -> Arc<Plan> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("p.yaml"),
            format!(
                "version: 2\ngateway:\n  mask_key: {{from: env, name: AGENTGATE_TEST_PLAN_KEY}}\n\
                 identity_providers:\n  - name: i\n    issuer: i\n    audiences: [a]\n    jwks: {{from: file, path: /nonexistent}}\n    algorithms: [RS256]\n\
                 targets:\n  - name: t\n    protocol: postgres\n    addresses: [127.0.0.3]\n    ports: [5432]\n    credential: {{from: env, name: X}}\n    postgres: {{user: u, upstream_tls: {{mode: disable}}}}\n\
                 rules:\n{rules}"
            ),
        )
        .expect("write policy");
        std::env::set_var("AGENTGATE_TEST_PLAN_KEY", "0123456789abcdef-test");
        let policy = crate::policy::load_dir(dir.path()).expect("policy");
        let who = Who {
            issuer: "i",
            subject: "a",
            groups: &[],
            workload: "w",
            login: None,
        };
        Plan::build(&policy, &who, "t").expect("a mask plan")
    }
}
