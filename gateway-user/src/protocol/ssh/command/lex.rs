//! Splitting an exec command line into words and operators the way a POSIX shell (bash, dash,
//! zsh, ksh) reads it, refusing everything whose result depends on the shell's state or
//! expansions.
//!
//! The lexer is deliberately narrower than a shell: where bash would expand something
//! (`$…`, backticks), start a compound command (`(`, `{` as a word is left to the caller), chain
//! commands in a way the caller does not split (`;`, `&`, newline), or read a comment, it
//! stops and says why: the caller then treats the whole line as opaque. `;`, `$` and backticks
//! are refused wherever they are outside single quotes (escaped or between double quotes too),
//! although bash would take some of those literally: escaping rules differ between shells, and
//! a literal `;` in a command someone approves is rare enough to hold for a human.

/// One word after quote removal, with what the shell would still do to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Word {
    /// The word after quote removal.
    pub value: String,
    /// The word as written (quotes and backslashes kept).
    pub raw: String,
    /// Some part of it was quoted or escaped.
    pub quoted: bool,
    /// An unquoted character the shell expands into file names or several words (`*`, `?`,
    /// `[`, `{`): the words the program gets are not the words written.
    pub expands: Option<char>,
}

/// A redirection: its operator as written (with a leading descriptor number) and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Redirect {
    pub op: String,
    pub target: Word,
}

impl Redirect {
    /// Duplicating or closing a descriptor (`2>&1`, `<&-`) or reading/writing `/dev/null`:
    /// no file is read or written.
    pub fn is_harmless(&self) -> bool {
        let t = &self.target.value;
        if self.op == "<<<" {
            return false;
        }
        if self.op.ends_with('&') {
            return t == "-" || (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
        }
        t == "/dev/null"
    }
}

impl std::fmt::Display for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.op, self.target.value)
    }
}

/// How one simple command is joined to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Joint {
    /// `|` or `|&`: its output is the next one's input.
    Pipe,
    /// `&&`
    And,
    /// `||`
    Or,
}

impl Joint {
    pub fn as_str(self) -> &'static str {
        match self {
            Joint::Pipe => "|",
            Joint::And => "&&",
            Joint::Or => "||",
        }
    }
}

/// One simple command: its words and redirections, and how it is joined to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Segment {
    pub words: Vec<Word>,
    pub redirects: Vec<Redirect>,
    /// `None` for the last command of the line.
    pub joint: Option<Joint>,
}

/// Characters that end an unquoted word.
fn is_operator(c: char) -> bool {
    matches!(c, '|' | '&' | ';' | '(' | ')' | '<' | '>')
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Characters that must not appear anywhere in a command line: they are not shell syntax a
/// person reads on an approval screen the way the shell reads it (control characters,
/// invisible and direction-changing characters), or they end a command (newline).
pub(super) fn forbidden_char(c: char) -> Option<&'static str> {
    match c {
        '\n' | '\r' => Some("a newline separates commands"),
        '\t' => None,
        c if c.is_control() => Some("a control character"),
        '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{feff}' => Some("an invisible or direction-changing character"),
        _ => None,
    }
}

/// Splits `line` into simple commands, or says why it cannot be judged.
pub(super) fn segments(line: &str) -> Result<Vec<Segment>, String> {
    if let Some((c, why)) = line.chars().find_map(|c| forbidden_char(c).map(|w| (c, w))) {
        return Err(format!("{why} ({:?})", c));
    }
    let mut lx = Lexer {
        chars: line.chars().collect(),
        at: 0,
    };
    let mut out = vec![Segment::default()];
    loop {
        lx.skip_blanks();
        let Some(c) = lx.peek() else { break };
        let seg = out.last_mut().expect("out starts non-empty and only grows");
        match c {
            ';' => return Err("`;` runs several commands".into()),
            '(' | ')' => {
                return Err("a subshell, process substitution or function (`(`, `)`)".into())
            }
            '|' | '&' => {
                lx.at += 1;
                let next = lx.peek();
                let joint = match (c, next) {
                    ('|', Some('|')) => {
                        lx.at += 1;
                        Joint::Or
                    }
                    ('|', Some('&')) => {
                        lx.at += 1;
                        Joint::Pipe
                    }
                    ('|', _) => Joint::Pipe,
                    ('&', Some('&')) => {
                        lx.at += 1;
                        Joint::And
                    }
                    ('&', Some('>')) => {
                        lx.at -= 1;
                        let r = lx.redirect(String::new())?;
                        seg.redirects.push(r);
                        continue;
                    }
                    _ => return Err("`&` runs a command in the background".into()),
                };
                if seg.words.is_empty() {
                    return Err(format!("`{}` without a command before it", joint.as_str()));
                }
                seg.joint = Some(joint);
                out.push(Segment::default());
            }
            '<' | '>' => {
                let r = lx.redirect(String::new())?;
                seg.redirects.push(r);
            }
            _ => match lx.word()? {
                WordOrFd::Word(w) => seg.words.push(w),
                WordOrFd::Fd(fd) => {
                    let r = lx.redirect(fd)?;
                    seg.redirects.push(r);
                }
            },
        }
    }
    let last = out.last().expect("out starts non-empty and only grows");
    if last.words.is_empty() {
        return Err(match out.len() {
            1 if last.redirects.is_empty() => "an empty command".into(),
            1 => "only redirections, no command".into(),
            _ => "a list or pipeline that ends without a command".into(),
        });
    }
    Ok(out)
}

enum WordOrFd {
    Word(Word),
    /// Digits written right before `<` or `>`: the descriptor the redirection is about.
    Fd(String),
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.at + n).copied()
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.at += 1;
        }
    }

    /// Reads a redirection operator at the cursor (after an optional descriptor number `fd`),
    /// and its target word.
    fn redirect(&mut self, fd: String) -> Result<Redirect, String> {
        let rest: String = self.chars[self.at..].iter().take(3).collect();
        let op = [
            "<<<", "&>>", "<<", ">>", ">|", "<>", ">&", "<&", "&>", "<", ">",
        ]
        .into_iter()
        .find(|op| rest.starts_with(op))
        .ok_or_else(|| "a redirection the gateway does not know".to_string())?;
        if op == "<<" {
            return Err("a here-document (`<<`)".into());
        }
        self.at += op.chars().count();
        if self.peek() == Some('(') {
            return Err("process substitution (`<(…)`, `>(…)`)".into());
        }
        self.skip_blanks();
        match self.peek() {
            Some(c) if !is_operator(c) => {}
            _ => return Err(format!("redirection `{op}` without a target")),
        }
        let target = match self.word()? {
            WordOrFd::Word(w) => w,
            WordOrFd::Fd(_) => return Err(format!("redirection `{op}` without a target")),
        };
        Ok(Redirect {
            op: format!("{fd}{op}"),
            target,
        })
    }

    /// Reads one word at the cursor (which is on a non-blank, non-operator character).
    fn word(&mut self) -> Result<WordOrFd, String> {
        let mut w = Word {
            value: String::new(),
            raw: String::new(),
            quoted: false,
            expands: None,
        };
        if self.peek() == Some('#') {
            return Err("a comment (`#`): not every login shell reads it as one".into());
        }
        while let Some(c) = self.peek() {
            if is_blank(c) {
                break;
            }
            if is_operator(c) {
                let digits =
                    !w.quoted && !w.value.is_empty() && w.value.bytes().all(|b| b.is_ascii_digit());
                if matches!(c, '<' | '>') && digits {
                    return Ok(WordOrFd::Fd(w.value));
                }
                if c == '&' && self.peek_at(1) == Some('>') && digits {
                    // `2&>x` is the word `2` and then `&>x` in bash; keep it simple: refuse.
                    return Err("a descriptor number before `&>`".into());
                }
                break;
            }
            self.at += 1;
            w.raw.push(c);
            match c {
                '\'' => {
                    w.quoted = true;
                    loop {
                        let Some(q) = self.peek() else {
                            return Err("an unbalanced single quote".into());
                        };
                        self.at += 1;
                        w.raw.push(q);
                        if q == '\'' {
                            break;
                        }
                        w.value.push(q);
                    }
                }
                '"' => {
                    w.quoted = true;
                    self.double_quoted(&mut w)?;
                }
                '\\' => {
                    w.quoted = true;
                    let Some(e) = self.peek() else {
                        return Err("a backslash at the end of the line".into());
                    };
                    refuse_outside_single_quotes(e)?;
                    self.at += 1;
                    w.raw.push(e);
                    w.value.push(e);
                }
                '*' | '?' | '[' | '{' | '}' => {
                    w.expands.get_or_insert(c);
                    w.value.push(c);
                }
                _ => {
                    refuse_outside_single_quotes(c)?;
                    w.value.push(c);
                }
            }
        }
        Ok(WordOrFd::Word(w))
    }

    /// The rest of a double-quoted part (the opening quote is read).
    fn double_quoted(&mut self, w: &mut Word) -> Result<(), String> {
        loop {
            let Some(c) = self.peek() else {
                return Err("an unbalanced double quote".into());
            };
            self.at += 1;
            w.raw.push(c);
            match c {
                '"' => return Ok(()),
                '\\' => {
                    let Some(e) = self.peek() else {
                        return Err("an unbalanced double quote".into());
                    };
                    refuse_outside_single_quotes(e)?;
                    self.at += 1;
                    w.raw.push(e);
                    // Between double quotes a backslash only escapes these; before anything
                    // else it is kept.
                    if !matches!(e, '"' | '\\') {
                        w.value.push('\\');
                    }
                    w.value.push(e);
                }
                _ => {
                    refuse_outside_single_quotes(c)?;
                    w.value.push(c);
                }
            }
        }
    }
}

/// `$` (every expansion: variables, `$IFS`, `${…}`, `$(…)`, `$((…))`, `$'…'`), backticks and
/// `;`, wherever they are outside single quotes.
fn refuse_outside_single_quotes(c: char) -> Result<(), String> {
    match c {
        '$' => Err("a shell expansion (`$`): variables, `$(…)`, `$IFS` tricks".into()),
        '`' => Err("command substitution (backticks)".into()),
        ';' => Err("`;` runs several commands".into()),
        _ => Ok(()),
    }
}
