//! What a rule's `sftp:` section says about a path: the path normalized (absolute, no `..`)
//! and the `deny_write` / `allow_write` globs over it.
//!
//! sftp-server resolves a relative path against the login's home directory, which the gateway
//! cannot know for certain, and `..` against whatever the directories (and symlinks) on the
//! target are: such a path cannot be shown not to match, so it sets off every rule with an
//! `sftp:` section (fail closed). `.` components and repeated slashes change nothing and are
//! dropped. Symlinks already on the target are not followed (the gateway does not see them):
//! see docs/ssh.md.

use regex::Regex;

#[derive(Debug, thiserror::Error)]
pub enum PathRuleError {
    #[error("sftp {list} entry `{entry}` is not an absolute path glob (it must start with `/`)")]
    NotAbsolute { list: &'static str, entry: String },
    #[error("sftp {list} entry `{entry}`: {source}")]
    Glob {
        list: &'static str,
        entry: String,
        source: regex::Error,
    },
}

/// A path as an sftp request names it: what the record shows, and the normalized absolute path
/// or why it cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpPath {
    pub shown: String,
    pub normalized: Result<String, String>,
}

impl SftpPath {
    pub fn from_wire(raw: &[u8]) -> SftpPath {
        let shown = String::from_utf8_lossy(raw).into_owned();
        SftpPath {
            normalized: normalize(raw),
            shown,
        }
    }

    /// A path the gateway could not learn (a handle it never saw opened).
    pub fn unknown(shown: String, why: String) -> SftpPath {
        SftpPath {
            shown,
            normalized: Err(why),
        }
    }
}

/// The absolute path without `.` components and repeated slashes, or why it cannot be judged.
pub fn normalize(raw: &[u8]) -> Result<String, String> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err("a path that is not UTF-8".into());
    };
    if text.chars().any(|c| c.is_control()) {
        return Err(format!("a path with control characters ({text:?})"));
    }
    if !text.starts_with('/') {
        return Err(format!(
            "a relative path (`{text}`), which the target resolves against a home directory the gateway does not know"
        ));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "a path with `..` (`{text}`), which the target resolves through its own directories"
                ))
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// A rule's `sftp:` section: which paths write-type operations may touch.
#[derive(Debug, Clone)]
pub struct SftpRule {
    deny_write: Vec<PathGlob>,
    allow_write: Vec<PathGlob>,
}

impl SftpRule {
    pub fn new(deny_write: &[String], allow_write: &[String]) -> Result<SftpRule, PathRuleError> {
        let list = |name, entries: &[String]| -> Result<Vec<PathGlob>, PathRuleError> {
            entries.iter().map(|e| PathGlob::new(name, e)).collect()
        };
        Ok(SftpRule {
            deny_write: list("deny_write", deny_write)?,
            allow_write: list("allow_write", allow_write)?,
        })
    }

    /// Whether a write-type operation on `path` sets this rule off, and why.
    pub fn sets_off(&self, path: &SftpPath) -> Option<String> {
        let p = match &path.normalized {
            Ok(p) => p,
            Err(why) => return Some(format!("{why}: it cannot be judged")),
        };
        if let Some(g) = self.deny_write.iter().find(|g| g.matches(p)) {
            return Some(format!("`{p}` matches deny_write `{}`", g.entry));
        }
        if !self.allow_write.is_empty() && !self.allow_write.iter().any(|g| g.matches(p)) {
            return Some(format!("`{p}` is not in allow_write"));
        }
        None
    }
}

/// A glob over a normalized absolute path: `*` matches within one component, `**` across
/// components, `?` one character other than `/`, `\` escapes; a trailing `/**` also matches
/// the directory itself (`/etc/**` covers `rmdir /etc` and `rename /etc …`).
#[derive(Debug, Clone)]
struct PathGlob {
    entry: String,
    re: Regex,
}

impl PathGlob {
    fn new(list: &'static str, entry: &str) -> Result<PathGlob, PathRuleError> {
        if !entry.starts_with('/') {
            return Err(PathRuleError::NotAbsolute {
                list,
                entry: entry.into(),
            });
        }
        let (body, subtree) = match entry.strip_suffix("/**") {
            Some(b) if !b.ends_with('\\') => (b, true),
            _ => (entry, false),
        };
        let mut re = String::from("^");
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        re.push_str(&regex::escape(&n.to_string()));
                    }
                }
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    re.push_str(".*");
                }
                '*' => re.push_str("[^/]*"),
                '?' => re.push_str("[^/]"),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        if subtree {
            re.push_str("(?:/.*)?");
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|source| PathRuleError::Glob {
            list,
            entry: entry.into(),
            source,
        })?;
        Ok(PathGlob {
            entry: entry.into(),
            re,
        })
    }

    fn matches(&self, path: &str) -> bool {
        // A glob written with a trailing slash means the same path.
        self.re.is_match(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(deny: &[&str], allow: &[&str]) -> SftpRule {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        SftpRule::new(&s(deny), &s(allow)).unwrap()
    }

    fn off(r: &SftpRule, p: &str) -> bool {
        r.sets_off(&SftpPath::from_wire(p.as_bytes())).is_some()
    }

    #[test]
    fn normalizes_or_refuses() {
        assert_eq!(normalize(b"/etc//./passwd/").unwrap(), "/etc/passwd");
        assert_eq!(normalize(b"/").unwrap(), "/");
        assert!(normalize(b"etc/passwd").is_err());
        assert!(normalize(b"").is_err());
        assert!(normalize(b"/srv/../etc/passwd").is_err());
        assert!(normalize(b"/srv/..").is_err());
        assert!(normalize(b"/srv/\xff").is_err());
        assert!(normalize(b"/srv/a\nb").is_err());
    }

    #[test]
    fn deny_and_allow_lists() {
        let r = rule(&["/etc/**", "/root/*.key"], &[]);
        assert!(off(&r, "/etc/passwd"));
        assert!(off(&r, "/etc/ssh/sshd_config"));
        assert!(off(&r, "/etc"));
        assert!(off(&r, "//etc/./x"));
        assert!(!off(&r, "/etcetera/x"));
        assert!(off(&r, "/root/a.key"));
        assert!(!off(&r, "/root/sub/a.key"));
        assert!(!off(&r, "/srv/x"));
        // Unjudgeable paths set a deny list off too.
        assert!(off(&r, "x"));
        assert!(off(&r, "/srv/../etc/passwd"));

        let a = rule(&[], &["/srv/deploy/**", "/tmp/*.log"]);
        assert!(!off(&a, "/srv/deploy/a/b"));
        assert!(!off(&a, "/srv/deploy"));
        assert!(off(&a, "/srv/deployx"));
        assert!(!off(&a, "/tmp/x.log"));
        assert!(off(&a, "/tmp/d/x.log"));
        assert!(off(&a, "deploy/x"));
        assert!(off(&a, "/srv/deploy/../../etc/x"));
    }

    #[test]
    fn globs_escape_and_must_be_absolute() {
        let r = rule(&["/a\\*b", "/q?"], &[]);
        assert!(off(&r, "/a*b"));
        assert!(!off(&r, "/axb"));
        assert!(off(&r, "/qx"));
        assert!(!off(&r, "/q/"));
        assert!(SftpRule::new(&["etc/**".into()], &[]).is_err());
    }
}
