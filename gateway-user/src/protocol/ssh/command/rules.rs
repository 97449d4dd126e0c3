//! A rule's `commands:` section: allow lists, deny lists, and the verdict over a parsed line.

use regex::Regex;
use serde::Deserialize;

use super::{lex, ParsedCommand};

/// A rule's `commands:` section as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMatchDoc {
    /// Globs over the normalized text: a line is allowed when every command of it matches one.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Globs over the normalized text: a command matching one matches the rule.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Globs over the program's basename, its path as written and the wrappers' names.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Regexes over the normalized text (not anchored).
    #[serde(default)]
    pub patterns: Vec<String>,
}

/// A bad `commands:` section; each error names the entry.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("commands: give at least one of allow, deny, programs, patterns")]
    Empty,
    #[error("commands.{list}: bad glob `{entry}`: {why}")]
    Glob {
        list: &'static str,
        entry: String,
        why: &'static str,
    },
    #[error("commands.patterns: an empty regex matches every command")]
    EmptyRegex,
    #[error("commands.patterns: bad regex `{entry}`: {source}")]
    Regex {
        entry: String,
        #[source]
        source: Box<regex::Error>,
    },
}

/// A rule's compiled `commands:` section.
#[derive(Debug, Clone)]
pub struct CommandMatch {
    allow: Vec<TextGlob>,
    deny: Vec<TextGlob>,
    programs: Vec<TextGlob>,
    patterns: Vec<Regex>,
}

/// What a `commands:` section says about a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An allow list is given and every command of the line matches it; no deny entry matches.
    Allowed,
    /// An allow list is given and the line is opaque or a command matches none of it: the
    /// rule applies (hold for approval or deny, per its effect).
    NotAllowed { why: String },
    /// A deny entry (`deny`, `programs`, `patterns`) matches, or the line is opaque: the rule
    /// applies.
    Matched { why: String },
    /// Only deny entries are given and none matches: the rule does not apply.
    NotMatched,
}

impl Verdict {
    /// The rule applies to the line (`NotAllowed` or `Matched`).
    pub fn applies(&self) -> bool {
        matches!(self, Verdict::NotAllowed { .. } | Verdict::Matched { .. })
    }

    /// Why the rule applies (for the stderr line and the record), if it does.
    pub fn why(&self) -> Option<&str> {
        match self {
            Verdict::NotAllowed { why } | Verdict::Matched { why } => Some(why),
            Verdict::Allowed | Verdict::NotMatched => None,
        }
    }
}

impl CommandMatch {
    pub fn new(doc: &CommandMatchDoc) -> Result<CommandMatch, CommandError> {
        if doc.allow.is_empty()
            && doc.deny.is_empty()
            && doc.programs.is_empty()
            && doc.patterns.is_empty()
        {
            return Err(CommandError::Empty);
        }
        let globs = |list: &'static str, entries: &[String]| {
            entries
                .iter()
                .map(|e| TextGlob::new(list, e))
                .collect::<Result<Vec<_>, _>>()
        };
        let programs = globs("programs", &doc.programs)?;
        if let Some(p) = doc.programs.iter().find(|p| p.trim().contains([' ', '\t'])) {
            return Err(CommandError::Glob {
                list: "programs",
                entry: p.clone(),
                why: "a program name has no spaces",
            });
        }
        let patterns = doc
            .patterns
            .iter()
            .map(|p| {
                if p.is_empty() {
                    // An empty regex matches every line: almost surely a mistake.
                    return Err(CommandError::EmptyRegex);
                }
                regex::RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| CommandError::Regex {
                        entry: p.clone(),
                        source: Box::new(e),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CommandMatch {
            allow: globs("allow", &doc.allow)?,
            deny: globs("deny", &doc.deny)?,
            programs,
            patterns,
        })
    }

    /// Judges a parsed line: deny entries first, then the allow list.
    pub fn verdict(&self, parsed: &ParsedCommand) -> Verdict {
        let denies =
            !(self.deny.is_empty() && self.programs.is_empty() && self.patterns.is_empty());
        if denies {
            if let Some(why) = self.deny_hit(parsed) {
                return Verdict::Matched { why };
            }
        }
        if self.allow.is_empty() {
            return Verdict::NotMatched;
        }
        match self.allow_miss(parsed) {
            Some(why) => Verdict::NotAllowed { why },
            None => Verdict::Allowed,
        }
    }

    fn deny_hit(&self, parsed: &ParsedCommand) -> Option<String> {
        if let Some(why) = unjudgeable(parsed) {
            return Some(why);
        }
        for inv in &parsed.commands {
            let written = inv.argv.first().map(String::as_str).unwrap_or_default();
            let names = || {
                [inv.program.as_str(), written]
                    .into_iter()
                    .chain(inv.wrappers())
            };
            for g in &self.programs {
                if let Some(n) = names().find(|n| g.regex.is_match(n)) {
                    return Some(format!("program `{n}` matches `{}`", g.source));
                }
            }
            let texts = [inv.text(), inv.plain_text()];
            for g in &self.deny {
                if let Some(t) = texts.iter().find(|t| g.regex.is_match(t)) {
                    return Some(format!("`{t}` matches `{}`", g.source));
                }
            }
            for r in &self.patterns {
                if let Some(t) = texts.iter().find(|t| r.is_match(t)) {
                    return Some(format!("`{t}` matches the pattern `{}`", r.as_str()));
                }
            }
        }
        None
    }

    fn allow_miss(&self, parsed: &ParsedCommand) -> Option<String> {
        if let Some(why) = unjudgeable(parsed) {
            return Some(why);
        }
        for inv in &parsed.commands {
            let text = inv.text();
            if let Some(w) = &inv.expands {
                return Some(format!(
                    "the shell expands `{w}` in `{text}` into other words (quote it)"
                ));
            }
            if let Some(r) = inv.redirects.first() {
                return Some(format!("`{text}` redirects `{r}` to or from a file"));
            }
            if !self.allow.iter().any(|g| g.matches_allow(&text)) {
                return Some(format!("`{text}` matches no allowed command"));
            }
        }
        None
    }
}

/// Why a line cannot be judged at all, if so.
fn unjudgeable(parsed: &ParsedCommand) -> Option<String> {
    if let Some(why) = &parsed.opaque {
        return Some(format!("cannot be judged: {why}"));
    }
    if parsed.commands.is_empty() {
        return Some("cannot be judged: no command".into());
    }
    None
}

/// A glob over a command's text (syntax in the module documentation).
#[derive(Debug, Clone)]
struct TextGlob {
    source: String,
    regex: Regex,
    /// The pattern spells out `..`.
    dot_dot: bool,
}

impl TextGlob {
    fn new(list: &'static str, entry: &str) -> Result<TextGlob, CommandError> {
        let err = |why| CommandError::Glob {
            list,
            entry: entry.to_string(),
            why,
        };
        let words: Vec<&str> = entry.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            return Err(err("empty"));
        }
        if entry.chars().any(|c| lex::forbidden_char(c).is_some()) {
            return Err(err("control, invisible or newline characters"));
        }
        let text = words.join(" ");
        let mut re = String::from("^(?s:");
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if chars.peek() == Some(&'*') {
                        while chars.peek() == Some(&'*') {
                            chars.next();
                        }
                        re.push_str(".*");
                    } else {
                        re.push_str("[^ ]*");
                    }
                }
                '?' => re.push_str("[^ ]"),
                '\\' => match chars.next() {
                    Some(e) => re.push_str(&regex::escape(e.encode_utf8(&mut [0; 4]))),
                    None => return Err(err("ends with a backslash")),
                },
                c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            }
        }
        re.push_str(")$");
        let regex = regex::RegexBuilder::new(&re)
            .size_limit(1 << 20)
            .build()
            .map_err(|_| err("too large"))?;
        Ok(TextGlob {
            source: text,
            regex,
            dot_dot: entry.contains(".."),
        })
    }

    /// An allow entry's match: a text that climbs out of a directory with `..` only matches a
    /// pattern that says `..` itself, so `cat /var/log/*` does not admit
    /// `cat /var/log/../../etc/shadow`.
    fn matches_allow(&self, text: &str) -> bool {
        let climbs = || text.split(' ').any(|w| w.split('/').any(|c| c == ".."));
        self.regex.is_match(text) && (self.dot_dot || !climbs())
    }
}
