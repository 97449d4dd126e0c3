//! A rule's protocol section (`statements:`, `commands:`): handed to the parser its protocol
//! registered (`policy::section`), and checked against the rule's other parts.

use std::path::Path;

use super::super::section::{self, RawSection, RuleAction, SectionContext, RULE_SECTIONS};
use super::Merger;

impl Merger {
    /// The rule's one action section, parsed; problems are reported, and `None` then.
    pub(super) fn action_section<const N: usize>(
        &mut self,
        file: &Path,
        ctx: &SectionContext<'_>,
        raw: [(&'static str, Option<RawSection>); N],
        has_mask: bool,
    ) -> Option<RuleAction> {
        let rule = ctx.rule;
        let mut actions = Vec::new();
        for (key, raw) in raw {
            let Some(raw) = raw else { continue };
            let Some(section) = section::section(key) else {
                self.problem(file, format!("rule `{rule}`: no protocol reads `{key}`"));
                continue;
            };
            match (section.parse)(ctx, raw) {
                Ok(m) => actions.push(RuleAction::new(section, m)),
                Err(problems) => {
                    for p in problems {
                        self.problem(file, p);
                    }
                }
            }
        }
        if ctx.approval && actions.is_empty() {
            self.problem(
                file,
                format!(
                    "rule `{rule}`: `approval` needs {} (which actions wait for approval)",
                    section_keys()
                ),
            );
        }
        if actions.len() > 1 || (!actions.is_empty() && has_mask) {
            self.problem(
                file,
                format!(
                    "rule `{rule}`: a rule has `mask` or one of {}, not several",
                    section_keys()
                ),
            );
        }
        actions.pop()
    }
}

/// The registered action sections' keys, in protocol order: "`statements` or `commands`".
fn section_keys() -> String {
    let mut sections: Vec<_> = RULE_SECTIONS.iter().collect();
    sections.sort_by_key(|s| s.protocol);
    let keys: Vec<String> = sections.iter().map(|s| format!("`{}`", s.key)).collect();
    keys.join(" or ")
}
