//! SSH's rule matcher: which command rules a channel's request sets off.
//!
//! A rule's `commands:` section ([`CommandRule`]) is set off by an exec whose command its
//! matcher does not allow (an allow list) or matches (a deny list); by an interactive shell
//! unless it says `shell: true` (what is typed into a shell cannot be judged command by
//! command); by a subsystem it does not list. Then, as for SQL statements: a deny rule set off
//! refuses; otherwise the first approval rule set off (file order) holds the request for people.
//! A shell needs a rule that allows it: with no command rule in scope, shells are refused.

use super::aliases;
use super::channel::Request;
use super::command::{self, CommandMatch, Verdict};
use super::sftp::SftpRule;
use crate::policy::{Effect, Policy, Protocol, Rule, Who};

/// A rule's `commands:` section, as loaded.
#[derive(Debug, Clone)]
pub struct CommandRule {
    /// The exec matcher; `None` when the rule only opens shells or subsystems (no lists).
    pub matcher: Option<CommandMatch>,
    /// Interactive shells pass this rule.
    pub shell: bool,
    /// Subsystems (`sftp`) that pass this rule.
    pub subsystems: Vec<String>,
    /// Which paths sftp's write-type operations may touch; a rule with it lets the sftp
    /// subsystem open (its operations are judged instead).
    pub sftp: Option<SftpRule>,
    /// Destinations (`host:port`, host lower-case) the agent may open direct-tcpip channels
    /// to (`ssh -L`, `ssh -W`); see `forward.rs`.
    pub forward: Vec<String>,
    /// Addresses (`host:port` on the target) the agent may ask the target to listen on and
    /// forward back (`ssh -R`); see `forward.rs`.
    pub remote_forward: Vec<String>,
}

/// The command rules in scope for `who` on `target`, in file order, with their sections.
pub fn command_rules<'p>(
    policy: &'p Policy,
    who: &Who<'_>,
    target: &str,
) -> Vec<(&'p Rule, &'p CommandRule)> {
    policy
        .action_rules(who, target, Protocol::Ssh)
        .into_iter()
        .filter_map(|r| Some((r, r.action.as_ref()?.matcher::<CommandRule>()?)))
        .collect()
}

pub use crate::protocol::action_gate::Judgement;

/// Whether `rule` is set off by `request`, and why.
fn sets_off(rule: &CommandRule, request: &Request) -> Option<String> {
    match request {
        Request::Shell => (!rule.shell).then(|| "an interactive shell".to_string()),
        Request::Subsystem(name) => (!rule.subsystems.iter().any(|s| s == name)
            && (name != SFTP || rule.sftp.is_none()))
        .then(|| format!("subsystem `{name}`")),
        // Every path the operation changes is judged; one set off sets the rule off.
        Request::Sftp(op) => {
            let paths = rule.sftp.as_ref()?;
            op.paths.iter().find_map(|p| paths.sets_off(p))
        }
        Request::Exec(cmd) => {
            // Another name for the sftp subsystem or for a shell is judged as that too (see
            // `aliases`): a rule refusing it is not passed by spelling it as an exec.
            if aliases::runs_sftp_server(cmd) {
                if let Some(why) = sets_off(rule, &Request::Subsystem(SFTP.into())) {
                    return Some(format!("`{cmd}` runs the sftp server: {why}"));
                }
            }
            if aliases::runs_a_shell(cmd) {
                if let Some(why) = sets_off(rule, &Request::Shell) {
                    return Some(format!("`{cmd}` starts {why}"));
                }
            }
            let verdict: Verdict = rule
                .matcher
                .as_ref()?
                .verdict(&command::parse_bytes(cmd.as_bytes()));
            verdict
                .applies()
                .then(|| verdict.why().unwrap_or("it cannot be judged").to_string())
        }
    }
}

const SFTP: &str = "sftp";

/// Judges `request` under the command rules of `policy` that apply to `who` on `target`.
pub fn judge<'p>(
    policy: &'p Policy,
    who: &Who<'_>,
    target: &str,
    request: &Request,
) -> Judgement<'p> {
    let mut approval = None;
    let mut shell_allowed = false;
    for (rule, commands) in command_rules(policy, who, target) {
        shell_allowed |= commands.shell;
        let Some(why) = sets_off(commands, request) else {
            continue;
        };
        if rule.approval.is_some() {
            approval.get_or_insert((rule, why));
        } else if rule.effect == Effect::Deny {
            return Judgement::Denied {
                rule: rule.name.clone(),
                why,
            };
        }
    }
    if let Some((rule, why)) = approval {
        return Judgement::Approval { rule, why };
    }
    let shell = match request {
        Request::Shell => true,
        Request::Exec(cmd) => aliases::runs_a_shell(cmd),
        Request::Subsystem(_) | Request::Sftp(_) => false,
    };
    if shell && !shell_allowed {
        return Judgement::Denied {
            rule: "(no rule allows shells)".into(),
            why: "an interactive shell, which needs a rule with `commands: {shell: true}`".into(),
        };
    }
    Judgement::Allowed
}
