//! SSH's rule section, `commands:`: parsed here and registered with the policy loader
//! (`policy::section`), which knows it only by its key. What a parsed section sets off is
//! `rules.rs`.

use std::sync::Arc;

use linkme::distributed_slice;
use serde::Deserialize;

use super::{
    command::{CommandMatch, CommandMatchDoc},
    rules::CommandRule,
    sftp::SftpRule,
};
use crate::policy::{
    empty_list,
    section::{ActionMatcher, RawSection, RuleSection, SectionContext, RULE_SECTIONS},
    Effect, Protocol,
};

#[distributed_slice(RULE_SECTIONS)]
static COMMANDS: RuleSection = RuleSection {
    key: "commands",
    protocol: Protocol::Ssh,
    parse: parse_section,
};

impl ActionMatcher for CommandRule {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A command rule's section as written (docs/ssh.md): allow lists, deny lists, shells,
/// subsystems.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandsDoc {
    /// Globs over the normalized command: a command that matches none sets the rule off.
    #[serde(default, deserialize_with = "empty_list")]
    allow: Vec<String>,
    /// Globs over the normalized command: a command that matches one sets the rule off.
    #[serde(default, deserialize_with = "empty_list")]
    deny: Vec<String>,
    /// Globs over the program run (after `sudo`, `env`, `sh -c` … are unwrapped).
    #[serde(default, deserialize_with = "empty_list")]
    programs: Vec<String>,
    /// Regular expressions over the normalized command.
    #[serde(default, deserialize_with = "empty_list")]
    patterns: Vec<String>,
    /// Interactive shells pass this rule.
    #[serde(default)]
    shell: bool,
    /// Subsystems (`sftp`) that pass this rule.
    #[serde(default, deserialize_with = "empty_list")]
    subsystems: Vec<String>,
    /// Named destinations (`host:port`) the agent may forward to through the target.
    #[serde(default, deserialize_with = "empty_list")]
    forward: Vec<String>,
    /// Named addresses (`host:port` on the target) the agent may have the target listen on.
    #[serde(default, deserialize_with = "empty_list")]
    remote_forward: Vec<String>,
    /// Paths sftp's write-type operations may (not) touch; lets the sftp subsystem open.
    #[serde(default)]
    sftp: Option<SftpDoc>,
}

/// `commands: {sftp: {deny_write: [...], allow_write: [...]}}`: globs over the normalized
/// absolute path of every path a write-type sftp operation changes (docs/ssh.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SftpDoc {
    /// A path that matches one sets the rule off.
    #[serde(default, deserialize_with = "empty_list")]
    deny_write: Vec<String>,
    /// A path that matches none sets the rule off.
    #[serde(default, deserialize_with = "empty_list")]
    allow_write: Vec<String>,
}

/// A rule that lets things through (`effect: allow`, no approval) can only open shells and
/// subsystems: its lists would never set anything off.
fn parse_section(
    ctx: &SectionContext<'_>,
    raw: RawSection,
) -> Result<Arc<dyn ActionMatcher>, Vec<String>> {
    let mut c: CommandsDoc = raw.parse(ctx.rule, "commands")?;
    let rule = ctx.rule;
    let mut remote_forward = Vec::new();
    for d in std::mem::take(&mut c.remote_forward) {
        match super::forward::destination(&d) {
            Some(named) => remote_forward.push(named),
            None => {
                return Err(vec![format!(
                    "rule `{rule}`: commands.remote_forward: `{d}` is not `host:port` (a named address on the target, no globs)"
                )])
            }
        }
    }
    let mut forward = Vec::new();
    for d in std::mem::take(&mut c.forward) {
        match super::forward::destination(&d) {
            Some(named) => forward.push(named),
            None => {
                return Err(vec![format!(
                    "rule `{rule}`: commands.forward: `{d}` is not `host:port` (a named destination, no globs)"
                )])
            }
        }
    }
    let lists = !(c.allow.is_empty()
        && c.deny.is_empty()
        && c.programs.is_empty()
        && c.patterns.is_empty());
    let sftp = match &c.sftp {
        None => None,
        Some(d) if d.deny_write.is_empty() && d.allow_write.is_empty() => {
            return Err(vec![format!(
                "rule `{rule}`: `sftp` needs deny_write or allow_write"
            )])
        }
        Some(d) => match SftpRule::new(&d.deny_write, &d.allow_write) {
            Ok(r) => Some(r),
            Err(e) => return Err(vec![format!("rule `{rule}`: {e}")]),
        },
    };
    if ctx.effect == Effect::Allow && !ctx.approval && (lists || sftp.is_some()) {
        return Err(vec![format!(
            "rule `{rule}`: a command rule with `effect: allow` can only allow shells and subsystems; its command and sftp lists need `effect: deny` or `approval`"
        )]);
    }
    if ctx.approval && ctx.effect == Effect::Deny {
        return Err(vec![format!(
            "rule `{rule}`: approval rules have no effect (remove `effect`)"
        )]);
    }
    if !lists {
        if !c.shell
            && c.subsystems.is_empty()
            && forward.is_empty()
            && remote_forward.is_empty()
            && sftp.is_none()
        {
            return Err(vec![format!(
                "rule `{rule}`: `commands` needs at least one of allow, deny, programs, patterns, shell, subsystems, forward, remote_forward, sftp"
            )]);
        }
        return Ok(Arc::new(CommandRule {
            matcher: None,
            shell: c.shell,
            subsystems: c.subsystems,
            sftp,
            forward,
            remote_forward: remote_forward.clone(),
        }));
    }
    let doc = CommandMatchDoc {
        allow: c.allow,
        deny: c.deny,
        programs: c.programs,
        patterns: c.patterns,
    };
    match CommandMatch::new(&doc) {
        Ok(matcher) => Ok(Arc::new(CommandRule {
            matcher: Some(matcher),
            shell: c.shell,
            subsystems: c.subsystems,
            sftp,
            forward,
            remote_forward: remote_forward.clone(),
        })),
        Err(e) => Err(vec![format!("rule `{rule}`: {e}")]),
    }
}
