//! SSH exec commands: what the remote login shell would run, and the rules over it.
//!
//! An exec request carries one string that the target's sshd hands to the user's login shell
//! (`$SHELL -c "…"`). [`parse`] reads it the way a POSIX shell (bash, dash, zsh, ksh) would and
//! finds the programs it runs; [`CommandMatch`] is a rule's `commands:` section judging that.
//! Login shells of another syntax (fish, csh) are not modelled: on such targets use allow
//! lists only, whose refusals do not depend on reading the text the same way.
//!
//! # What parsing does
//! - Quotes and backslashes are removed (`"rm"`, `\rm`, `r''m` are `rm`).
//! - A line of several commands joined by `|`, `|&`, `&&` or `||` is split: each command is
//!   judged ([`ParsedCommand::commands`]). `;`, `&` (background) and newlines are not split:
//!   the whole line is opaque.
//! - Wrappers are unwrapped, each recorded in [`Invocation::unwrapped`]: `sudo`, `doas`, `env`,
//!   `nohup`, `timeout`, `nice`, `ionice`, `setsid`, `stdbuf`, `time`, `exec`, `command`,
//!   `busybox`, zsh's `noglob`/`nocorrect`, and `NAME=value` assignments; the shells' `-c`
//!   string (`sh`, `bash`, `dash`, `zsh`, `ksh`, …) and `su -c` are parsed in turn, at most
//!   [`MAX_DEPTH`] deep. A wrapper's options are read from a fixed list per wrapper: an option
//!   not on it makes the command opaque (`sudo -R` chroot, `env -S`, `env -C` …).
//! - The program is the basename of the remaining first word (`/usr/bin/systemctl` is
//!   `systemctl`).
//!
//! # Opaque
//! A command is opaque ([`ParsedCommand::opaque`], [`Invocation::opaque`]) when it cannot be
//! shown to be plain program invocations: any `$` (variables, `$IFS`, `${…}`, `$(…)`,
//! `$'…'`), backticks or `;` outside single quotes (even escaped or double-quoted), `&`,
//! newlines, comments, subshells and process substitution (`(`, `)`), here-documents,
//! unbalanced quotes, control and invisible characters, more than [`MAX_LEN`] bytes; a
//! program word that is not a plain name or path (globs, braces, `=cmd`, `!`, `{`, `[[`);
//! shell builtins and reserved words (`alias`, `eval`, `source`, `.`, `export`, `cd`, …:
//! they change the shell that runs the rest, and aliases or functions defined on the target
//! cannot be known); programs that run other commands from their arguments or input (`xargs`,
//! `watch`, `parallel`, `find -exec`, a shell without `-c` or reading its input, `sudo -s`
//! without a command, a decoder such as `base64 -d` feeding a pipe); a wrapper or shell run
//! from a path outside the system directories (`/tmp/sudo` is not sudo); a glob or brace among
//! a wrapper's own words; `$` in a command `sudo -s`/`-i` hands to a shell (sudo escapes
//! everything else); a command that only sets variables (`PATH=/tmp && …`); more than
//! [`MAX_LAYERS`] wrappers.
//!
//! # What rules see
//! [`Invocation::text`] is the normalized text: the environment assignments of every layer
//! (`NAME=value`, in order), then the program, then its arguments, joined by single spaces. The
//! program is written as its basename when it was given bare or from a system directory
//! (`/bin`, `/sbin`, `/usr/bin`, `/usr/sbin`, `/usr/local/bin`, `/usr/local/sbin`), and as
//! written otherwise, so `allow: ["systemctl restart api"]` does not admit
//! `/tmp/systemctl restart api`. Assignments stay in the text because they change what the
//! program does (`LD_PRELOAD=…`, `PATH=…`). Wrappers (`sudo -u root`, `bash -c`) do not.
//!
//! A line is allowed when every command of it is plain (not opaque), has no redirection to or
//! from a file ([`Invocation::redirects`]: `2>&1` and `/dev/null` are fine), has no unquoted
//! glob or brace the shell would expand ([`Invocation::expands`]: what the program reads,
//! writes or is given is then not what the text shows, as with `tar *` and a file named
//! `--checkpoint-action=…`), and its text matches an `allow` entry.
//! A line matches the deny side when it is opaque, or when for any of its commands the program
//! (basename, path as written, or a wrapper's name) matches `programs`, or the text (also
//! without assignments, with the program's basename) matches `deny` or `patterns`. Deny lists
//! are a speed bump: a program that runs other code (`perl -e`, `python -c`, `flock -c`,
//! `ssh other-host`) is judged as that program.
//!
//! Glob syntax (`allow`, `deny`, `programs`): the pattern matches the whole text. `*` matches
//! any run of characters except a space (it stays within one word, and crosses `/`); `**`
//! matches any run of characters, spaces included (any number of words); `?` matches one
//! character except a space; `\` makes the next character literal; every other character,
//! `[` included, is literal; blanks in a pattern stand for the single space between words.
//! So `systemctl status *` matches `systemctl status api` but neither `systemctl status` nor
//! `systemctl status api --now` (write `systemctl status **` for any arguments), and
//! `systemctl restart api` does not match `systemctl restart api-gateway`. For `allow`, a
//! text with a `..` path component (`cat /var/log/../../etc/shadow`) only matches a
//! pattern that spells `..` out. `patterns` are regexes over the text, not anchored.

mod lex;
mod rules;
mod words;

pub use rules::{CommandMatch, CommandMatchDoc, Verdict};

use lex::{Joint, Segment, Word};
use words::{
    is_assignment, is_decoder, is_opaque_program, join, program_word, shell, shell_string,
    su_string, unwrap, wrapper, Program, Unwrapped,
};

/// Longer command lines are opaque.
pub const MAX_LEN: usize = 64 * 1024;

/// How many shells deep (`sh -c "bash -c '…'"`) a command line is read before it is opaque.
pub const MAX_DEPTH: usize = 8;

/// How many layers (wrappers and shells) a command is unwrapped through before it is opaque.
pub const MAX_LAYERS: usize = 32;

/// An exec command line as the remote login shell would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCommand {
    /// The line's words after quote removal, with the joining operators (`|`, `&&`, `||`) and
    /// redirections as their own entries; empty when the line could not be split.
    pub words: Vec<String>,
    /// The simple commands the line runs, in order, wrappers and `sh -c` strings unwrapped:
    /// each is judged on its own.
    pub commands: Vec<Invocation>,
    /// Why the line cannot be shown to be plain program invocations: the line's own reason or
    /// the first of its commands'. An opaque command is never allowed and always matches a
    /// deny list.
    pub opaque: Option<String>,
}

/// One program the line runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The simple command's words after quote removal, wrappers included (for a command from
    /// an `sh -c` string, the words of that string's command).
    pub words: Vec<String>,
    /// The program's basename (`systemctl` for `/usr/bin/systemctl`); empty when opaque
    /// before it was found.
    pub program: String,
    /// The unwrapped command: the program word as written, then its arguments.
    pub argv: Vec<String>,
    /// The layers removed, outermost first, each as its words (`sudo -u root`, `env -i`,
    /// `bash -c`).
    pub unwrapped: Vec<String>,
    /// `NAME=value` set for the program by the line (assignments, `env`, `sudo`), in order.
    pub env: Vec<String>,
    /// Redirections to or from files (`>out`, `<in`, `<<<word`); descriptor duplication
    /// (`2>&1`) and `/dev/null` are left out.
    pub redirects: Vec<String>,
    /// A word (as written) with an unquoted glob or brace the shell expands into file names
    /// or several words: the program does not get the words written.
    pub expands: Option<String>,
    pub opaque: Option<String>,
    /// The program as the normalized text shows it (see the module documentation).
    shown: String,
}

impl Invocation {
    fn new(words: &[Word], ctx: &Ctx) -> Invocation {
        Invocation {
            words: words.iter().map(|w| w.value.clone()).collect(),
            program: String::new(),
            argv: Vec::new(),
            unwrapped: ctx.layers.clone(),
            env: ctx.env.clone(),
            redirects: ctx.redirects.clone(),
            expands: ctx.expands.clone(),
            opaque: None,
            shown: String::new(),
        }
    }

    fn opaque(mut self, why: impl Into<String>) -> Invocation {
        self.opaque = Some(why.into());
        self
    }

    /// The normalized text rules match: assignments, the program (basename when bare or from
    /// a system directory, as written otherwise), its arguments, joined by single spaces.
    pub fn text(&self) -> String {
        let args = self.argv.iter().skip(1).map(String::as_str);
        let parts: Vec<&str> = self
            .env
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.shown.as_str()))
            .chain(args)
            .collect();
        parts.join(" ")
    }

    /// The program's basename and its arguments, without assignments: what a deny list also
    /// looks at.
    fn plain_text(&self) -> String {
        let args = self.argv.iter().skip(1).map(String::as_str);
        std::iter::once(self.program.as_str())
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The basenames of the wrappers removed (`sudo`, `bash`).
    fn wrappers(&self) -> impl Iterator<Item = &str> {
        self.unwrapped.iter().filter_map(|l| {
            let first = l.split(' ').next()?;
            Some(first.rsplit('/').next().unwrap_or(first))
        })
    }
}

/// Reads an exec command line. Never fails: what cannot be read is opaque.
pub fn parse(command: &str) -> ParsedCommand {
    if command.len() > MAX_LEN {
        return ParsedCommand {
            words: Vec::new(),
            commands: Vec::new(),
            opaque: Some(format!("longer than {MAX_LEN} bytes")),
        };
    }
    let segments = match lex::segments(command) {
        Ok(s) => s,
        Err(why) => {
            return ParsedCommand {
                words: Vec::new(),
                commands: Vec::new(),
                opaque: Some(why),
            }
        }
    };
    let mut words = Vec::new();
    for s in &segments {
        words.extend(s.words.iter().map(|w| w.value.clone()));
        words.extend(s.redirects.iter().map(|r| r.to_string()));
        words.extend(s.joint.map(|j| j.as_str().to_string()));
    }
    let mut commands = Vec::new();
    line(&segments, &Ctx::default(), &mut commands);
    let opaque = commands.iter().find_map(|c| c.opaque.clone());
    ParsedCommand {
        words,
        commands,
        opaque,
    }
}

/// Reads an exec command line as the SSH request carries it (bytes): a line that is not UTF-8
/// is opaque.
pub fn parse_bytes(command: &[u8]) -> ParsedCommand {
    match std::str::from_utf8(command) {
        Ok(text) => parse(text),
        Err(_) => ParsedCommand {
            words: Vec::new(),
            commands: Vec::new(),
            opaque: Some("not UTF-8 text".into()),
        },
    }
}

/// What the layers around a command (wrappers, `sh -c`) give it.
#[derive(Debug, Clone, Default)]
struct Ctx {
    depth: usize,
    layers: Vec<String>,
    env: Vec<String>,
    redirects: Vec<String>,
    expands: Option<String>,
}

/// Resolves a line's simple commands into `out`.
fn line(segments: &[Segment], ctx: &Ctx, out: &mut Vec<Invocation>) {
    for seg in segments {
        let first = out.len();
        let mut ctx = ctx.clone();
        ctx.redirects.extend(
            seg.redirects
                .iter()
                .filter(|r| !r.is_harmless())
                .map(|r| r.to_string()),
        );
        if ctx.expands.is_none() {
            let mut raw = seg
                .words
                .iter()
                .chain(seg.redirects.iter().map(|r| &r.target));
            ctx.expands = raw.find(|w| w.expands.is_some()).map(|w| w.raw.clone());
        }
        simple(&seg.words, ctx, out);
        // A decoder feeding a pipe: what it decodes is what the next command gets, and that
        // may be a script.
        if seg.joint == Some(Joint::Pipe) {
            for inv in &mut out[first..] {
                if inv.opaque.is_none() && is_decoder(inv) {
                    inv.opaque = Some(format!(
                        "`{}` decodes something hidden into a pipe",
                        inv.text()
                    ));
                }
            }
        }
    }
}

/// Resolves one simple command (wrappers unwrapped, `sh -c` strings read) into `out`.
fn simple(words: &[Word], mut ctx: Ctx, out: &mut Vec<Invocation>) {
    // Assignments only count before the first command word: after a wrapper, `X=1` is the
    // program's name (and not a plain one).
    let mut i = 0;
    while i < words.len() && is_assignment(&words[i].raw) {
        ctx.env.push(words[i].value.clone());
        i += 1;
    }
    loop {
        let rest = &words[i..];
        // Built only when pushed: a line of many wrappers must not copy its words per layer.
        let inv = |ctx: &Ctx| Invocation::new(words, ctx);
        let Some(first) = rest.first() else {
            out.push(
                inv(&ctx).opaque("a command that only sets variables changes the shell's state"),
            );
            return;
        };
        let prog = match program_word(first) {
            Ok(p) => p,
            Err(why) => {
                out.push(inv(&ctx).opaque(why));
                return;
            }
        };
        let name = prog.name.as_str();
        let is_layer = wrapper(name).is_some() || shell(name).is_some() || name == "su";
        if is_layer && !prog.trusted {
            out.push(inv(&ctx).opaque(format!(
                "`{}` is named like `{name}` but is not run from a system directory",
                prog.written
            )));
            return;
        }
        if is_layer && ctx.layers.len() >= MAX_LAYERS {
            out.push(inv(&ctx).opaque(format!("more than {MAX_LAYERS} wrappers or shells")));
            return;
        }
        if let Some(spec) = wrapper(name) {
            let unwrapped = unwrap(spec, rest);
            // A glob or brace among a wrapper's own words can turn them into options, a
            // program or its arguments (`env {X=1,rm,-rf,/}`): which program runs is unknown.
            let own = match &unwrapped {
                Ok(Unwrapped::Command { used, .. }) => &rest[..*used],
                _ => rest,
            };
            if let Some(w) = own.iter().find(|w| w.expands.is_some()) {
                out.push(inv(&ctx).opaque(format!(
                    "`{}` in `{name}`'s words has a glob or brace the shell expands",
                    w.raw
                )));
                return;
            }
            match unwrapped {
                Ok(Unwrapped::Command {
                    used,
                    env,
                    via_shell,
                }) => {
                    // `sudo -s` escapes every character of the command for its shell but `$`.
                    if via_shell && rest[used..].iter().any(|w| w.value.contains('$')) {
                        out.push(inv(&ctx).opaque(format!(
                            "`{}` runs the command through a shell that expands `$`",
                            join(&rest[..used])
                        )));
                        return;
                    }
                    ctx.layers.push(join(&rest[..used]));
                    ctx.env.extend(env);
                    i += used;
                    continue;
                }
                Ok(Unwrapped::Alone) => {}
                Err(why) => {
                    out.push(inv(&ctx).opaque(why));
                    return;
                }
            }
        } else if let Some(sh_like) = shell(name) {
            let found = if sh_like {
                shell_string(rest)
            } else {
                Err(format!(
                    "`{name}` is a shell whose syntax the gateway does not read"
                ))
            };
            let inv = inv(&ctx);
            inner(found, rest, ctx, inv, out);
            return;
        } else if name == "su" {
            let inv = inv(&ctx);
            inner(su_string(rest), rest, ctx, inv, out);
            return;
        }
        out.push(program(inv(&ctx), prog, rest));
        return;
    }
}

/// Reads the command string a shell or `su` was given (`found`: how many words the layer
/// took and the string's index), or records why it cannot be read.
fn inner(
    found: Result<usize, String>,
    words: &[Word],
    mut ctx: Ctx,
    inv: Invocation,
    out: &mut Vec<Invocation>,
) {
    let at = match found {
        Ok(at) => at,
        Err(why) => {
            out.push(inv.opaque(why));
            return;
        }
    };
    let Some(string) = words.get(at) else {
        out.push(inv.opaque("`-c` without a command string"));
        return;
    };
    if string.expands.is_some() {
        out.push(inv.opaque("the command string has a glob the shell expands"));
        return;
    }
    if ctx.depth + 1 > MAX_DEPTH {
        out.push(inv.opaque(format!("shells nested more than {MAX_DEPTH} deep")));
        return;
    }
    ctx.depth += 1;
    ctx.layers.push(join(&words[..at]));
    match lex::segments(&string.value) {
        Ok(segments) => line(&segments, &ctx, out),
        Err(why) => out.push(Invocation::new(&[], &ctx).opaque(why)),
    }
}

/// A plain program: the end of unwrapping.
fn program(mut inv: Invocation, prog: Program, words: &[Word]) -> Invocation {
    inv.program = prog.name.clone();
    inv.shown = if prog.trusted {
        prog.name.clone()
    } else {
        prog.written.clone()
    };
    inv.argv = words.iter().map(|w| w.value.clone()).collect();
    let name = prog.name.as_str();
    if is_opaque_program(name) {
        return inv.opaque(format!(
            "`{name}` is a shell builtin or keyword, or runs commands from its arguments or input"
        ));
    }
    if name == "find" {
        let exec = ["-exec", "-execdir", "-ok", "-okdir"];
        if let Some(a) = inv.argv.iter().find(|a| exec.contains(&a.as_str())) {
            let a = a.clone();
            return inv.opaque(format!("`find {a}` runs other commands"));
        }
    }
    inv
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
