//! A rule's protocol section (`statements:` for PostgreSQL, `commands:` for SSH, …): what the
//! protocol's actions a rule is about. policy/ knows each section only by its key and its
//! protocol; the protocol's folder parses it and matches actions against it. Protocols register
//! their sections in [`RULE_SECTIONS`] (a link-time list, so that policy/ imports no protocol
//! and a new protocol's section is one `#[distributed_slice]` item in its own folder).

use std::{any::Any, fmt, sync::Arc};

use serde::Deserialize;

use super::model::{Effect, Protocol};

/// A parsed protocol section of a rule. Protocol code recovers its own type with
/// [`RuleAction::matcher`].
pub trait ActionMatcher: fmt::Debug + Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
}

/// What a section parser knows of the rule around it.
pub struct SectionContext<'a> {
    pub rule: &'a str,
    pub effect: Effect,
    /// The rule has an `approval:` part: matching actions wait for people.
    pub approval: bool,
}

/// A section parsed, or each problem as a whole message (naming the rule).
pub type Parsed = Result<Arc<dyn ActionMatcher>, Vec<String>>;

/// One protocol's rule section.
pub struct RuleSection {
    /// The key in a rule (`statements`).
    pub key: &'static str,
    pub protocol: Protocol,
    pub parse: fn(&SectionContext<'_>, RawSection) -> Parsed,
}

/// Every protocol's rule sections, registered by the protocols.
#[linkme::distributed_slice]
pub static RULE_SECTIONS: [RuleSection];

/// The section for `key`, if a protocol registered one.
pub fn section(key: &str) -> Option<&'static RuleSection> {
    RULE_SECTIONS.iter().find(|s| s.key == key)
}

/// A section as written, kept as a tree until its protocol parses it.
#[derive(Debug, Clone)]
pub struct RawSection(pub serde_json::Value);

impl<'de> Deserialize<'de> for RawSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(RawSection)
    }
}

impl RawSection {
    /// The section as the protocol's own document type; an error names the section.
    pub fn parse<T: serde::de::DeserializeOwned>(
        self,
        rule: &str,
        key: &str,
    ) -> Result<T, Vec<String>> {
        serde_json::from_value(self.0).map_err(|e| vec![format!("rule `{rule}`: {key}: {e}")])
    }
}

/// A rule's protocol section, parsed.
#[derive(Debug, Clone)]
pub struct RuleAction {
    pub key: &'static str,
    pub protocol: Protocol,
    matcher: Arc<dyn ActionMatcher>,
}

impl RuleAction {
    pub fn new(section: &RuleSection, matcher: Arc<dyn ActionMatcher>) -> Self {
        Self {
            key: section.key,
            protocol: section.protocol,
            matcher,
        }
    }

    /// The protocol's own matcher, if it is a `T`.
    pub fn matcher<T: 'static>(&self) -> Option<&T> {
        self.matcher.as_any().downcast_ref::<T>()
    }
}
