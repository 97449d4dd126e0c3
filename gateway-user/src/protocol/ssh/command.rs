//! Exec command lines as rules see them (placeholder until the parser lands: every command with
//! shell syntax beyond plain words is opaque).

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

#[derive(Debug, Clone, Default)]
pub struct ParsedCommand {
    pub text: String,
    pub program: String,
    pub opaque: Option<String>,
}

pub fn parse(command: &str) -> ParsedCommand {
    let opaque = command
        .chars()
        .any(|c| "$`;&|<>(){}\\'\"\n\r*?[]#~!".contains(c) || c.is_control())
        .then(|| "shell syntax".to_string());
    let words: Vec<&str> = command.split_whitespace().collect();
    let program = words
        .first()
        .map(|w| w.rsplit('/').next().unwrap_or(w).to_string())
        .unwrap_or_default();
    ParsedCommand {
        text: words.join(" "),
        program,
        opaque,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMatchDoc {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub programs: Vec<String>,
    #[serde(default)]
    pub patterns: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("bad glob `{0}`: {1}")]
    Glob(String, globset::Error),
    #[error("bad pattern `{0}`: {1}")]
    Regex(String, regex::Error),
}

#[derive(Debug, Clone)]
pub struct CommandMatch {
    allow: Vec<GlobMatcher>,
    deny: Vec<GlobMatcher>,
    programs: Vec<GlobMatcher>,
    patterns: Vec<regex::Regex>,
}

pub enum Verdict {
    Allowed,
    NotAllowed { why: String },
    Matched { why: String },
    NotMatched,
}

fn globs(list: Vec<String>) -> Result<Vec<GlobMatcher>, CommandError> {
    list.into_iter()
        .map(|g| {
            Glob::new(&g)
                .map(|x| x.compile_matcher())
                .map_err(|e| CommandError::Glob(g, e))
        })
        .collect()
}

impl CommandMatch {
    pub fn new(doc: CommandMatchDoc) -> Result<CommandMatch, CommandError> {
        Ok(CommandMatch {
            allow: globs(doc.allow)?,
            deny: globs(doc.deny)?,
            programs: globs(doc.programs)?,
            patterns: doc
                .patterns
                .into_iter()
                .map(|p| regex::Regex::new(&p).map_err(|e| CommandError::Regex(p, e)))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn verdict(&self, c: &ParsedCommand) -> Verdict {
        if let Some(why) = &c.opaque {
            let why = format!("`{}` cannot be judged ({why})", c.text);
            return if self.allow.is_empty() {
                Verdict::Matched { why }
            } else {
                Verdict::NotAllowed { why }
            };
        }
        if self.deny.iter().any(|g| g.is_match(&c.text))
            || self.programs.iter().any(|g| g.is_match(&c.program))
            || self.patterns.iter().any(|p| p.is_match(&c.text))
        {
            return Verdict::Matched {
                why: format!("`{}` is on its deny list", c.text),
            };
        }
        if !self.allow.is_empty() {
            if self.allow.iter().any(|g| g.is_match(&c.text)) {
                return Verdict::Allowed;
            }
            return Verdict::NotAllowed {
                why: format!("`{}` is not on its allow list", c.text),
            };
        }
        Verdict::NotMatched
    }
}
