//! The words of one simple command: what a program word may be, and the wrappers and shells
//! whose options are read to find the command they run.

use super::{lex::Word, Invocation};

/// Shell builtins and keywords (they change the shell that runs the rest, or run strings),
/// and programs that run commands taken from their arguments or input.
const OPAQUE_PROGRAMS: &str = "
    if then else elif fi do done case esac while until for in function select coproc repeat
    foreach end
    alias unalias eval source builtin enable set unset shopt setopt unsetopt emulate trap
    declare typeset local export readonly let read mapfile readarray cd pushd popd dirs hash
    type ulimit umask wait jobs fg bg disown fc r history bind autoload zmodload functions
    sched caller return exit break continue shift getopts logout suspend compgen complete
    compopt zcompile zle
    xargs watch parallel";

/// A shell builtin or keyword, or a program that runs what its arguments or input say.
pub(super) fn is_opaque_program(name: &str) -> bool {
    OPAQUE_PROGRAMS.split_whitespace().any(|p| p == name)
}

/// Decoders that turn hidden text into something the next command of a pipe reads.
pub(super) fn is_decoder(inv: &Invocation) -> bool {
    let args = || inv.argv.iter().skip(1).map(String::as_str);
    let short_has =
        |c: char| args().any(|a| a.starts_with('-') && !a.starts_with("--") && a[1..].contains(c));
    match inv.program.as_str() {
        "base64" | "base32" | "basenc" => {
            short_has('d') || short_has('D') || args().any(|a| a == "--decode")
        }
        "xxd" => short_has('r') || args().any(|a| a == "-revert"),
        "uudecode" => true,
        "openssl" => args().any(|a| a == "-d" || a == "-base64" || a == "base64"),
        _ => false,
    }
}

/// `NAME=value` (or `NAME+=value`) with the name unquoted: a shell assignment.
pub(super) fn is_assignment(raw: &str) -> bool {
    let Some(eq) = raw.find('=') else {
        return false;
    };
    let name = raw[..eq].strip_suffix('+').unwrap_or(&raw[..eq]);
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn join(words: &[Word]) -> String {
    words
        .iter()
        .map(|w| w.value.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Directories whose programs are named by their basename in the normalized text.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

/// A program word that passed the checks.
pub(super) struct Program {
    /// The basename.
    pub name: String,
    /// As written (after quote removal).
    pub written: String,
    /// Bare, or in a system directory.
    pub trusted: bool,
}

pub(super) fn program_word(w: &Word) -> Result<Program, String> {
    let v = w.value.as_str();
    if w.expands.is_some() {
        return Err(format!(
            "the program word `{}` has a glob or brace the shell expands",
            w.raw
        ));
    }
    let (dir, base) = match v.rfind('/') {
        Some(0) => ("/", &v[1..]),
        Some(k) => (&v[..k], &v[k + 1..]),
        None => ("", v),
    };
    let mut chars = base.chars();
    let plain_name = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'));
    let plain_dir = dir
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-' | '/' | '~' | '@'));
    if !plain_name || !plain_dir {
        return Err(format!("`{v}` is not a plain program name or path"));
    }
    Ok(Program {
        name: base.to_string(),
        written: v.to_string(),
        trusted: dir.is_empty() || SYSTEM_DIRS.contains(&dir),
    })
}

/// A wrapper: runs the command after its options, which are read from fixed lists (anything
/// else is refused, so an option that changes what runs is never skipped over unread).
pub(super) struct Wrapper {
    name: &'static str,
    /// Short options without a value.
    flags: &'static str,
    /// Short options with a value (`-u root`, `-uroot`).
    with_value: &'static str,
    long_flags: &'static [&'static str],
    long_with_value: &'static [&'static str],
    /// Words between the options and the command (timeout's duration).
    positional: usize,
    /// Words with `=` before the command set the environment (`env`, `sudo`).
    assignments: bool,
    /// `-10` is an option (nice).
    numeric: bool,
    /// Without a command, the wrapper itself is the program (`env` prints the environment);
    /// otherwise that is opaque.
    alone: bool,
    /// Options that hand the command to a shell (`sudo -s`, `-i`), and their long forms.
    via_shell: &'static str,
    via_shell_long: &'static [&'static str],
}

const fn wrap(name: &'static str) -> Wrapper {
    Wrapper {
        name,
        flags: "",
        with_value: "",
        long_flags: &[],
        long_with_value: &[],
        positional: 0,
        assignments: false,
        numeric: false,
        alone: false,
        via_shell: "",
        via_shell_long: &[],
    }
}

const WRAPPERS: &[Wrapper] = &[
    Wrapper {
        // -R (chroot) and -D (chdir) change what a path names; -e, -l, -v, -K, -h are modes
        // that do not run the command: all refused.
        flags: "AbEHiknPSs",
        with_value: "CcgprTtUu",
        long_flags: &[
            "askpass",
            "background",
            "preserve-env",
            "set-home",
            "login",
            "non-interactive",
            "preserve-groups",
            "stdin",
            "shell",
            "reset-timestamp",
        ],
        long_with_value: &[
            "close-from",
            "login-class",
            "group",
            "prompt",
            "role",
            "type",
            "command-timeout",
            "other-user",
            "user",
        ],
        assignments: true,
        via_shell: "is",
        via_shell_long: &["login", "shell"],
        ..wrap("sudo")
    },
    Wrapper {
        flags: "n",
        with_value: "u",
        ..wrap("doas")
    },
    Wrapper {
        // -S splits a string into words, -C changes directory: refused.
        flags: "i0v",
        with_value: "u",
        long_flags: &["ignore-environment", "null", "debug"],
        long_with_value: &["unset"],
        assignments: true,
        alone: true,
        ..wrap("env")
    },
    Wrapper {
        alone: true,
        ..wrap("nohup")
    },
    Wrapper {
        flags: "fpv",
        with_value: "ks",
        long_flags: &["foreground", "preserve-status", "verbose"],
        long_with_value: &["kill-after", "signal"],
        positional: 1,
        ..wrap("timeout")
    },
    Wrapper {
        with_value: "n",
        long_with_value: &["adjustment"],
        numeric: true,
        alone: true,
        ..wrap("nice")
    },
    Wrapper {
        flags: "t",
        with_value: "cn",
        long_flags: &["ignore"],
        long_with_value: &["class", "classdata"],
        alone: true,
        ..wrap("ionice")
    },
    Wrapper {
        flags: "cfw",
        long_flags: &["ctty", "fork", "wait"],
        ..wrap("setsid")
    },
    Wrapper {
        with_value: "ioe",
        long_with_value: &["input", "output", "error"],
        ..wrap("stdbuf")
    },
    Wrapper {
        flags: "apqv",
        with_value: "fo",
        long_flags: &["append", "portability", "quiet", "verbose"],
        long_with_value: &["format", "output"],
        alone: true,
        ..wrap("time")
    },
    Wrapper {
        flags: "cl",
        with_value: "a",
        ..wrap("exec")
    },
    Wrapper {
        // -v and -V describe instead of running: refused.
        flags: "p",
        ..wrap("command")
    },
    Wrapper {
        alone: true,
        ..wrap("busybox")
    },
    wrap("noglob"),
    wrap("nocorrect"),
];

pub(super) fn wrapper(name: &str) -> Option<&'static Wrapper> {
    WRAPPERS.iter().find(|w| w.name == name)
}

/// `Some(true)`: a POSIX-like shell whose `-c` string is read; `Some(false)`: a shell of
/// another syntax.
pub(super) fn shell(name: &str) -> Option<bool> {
    const SH: &[&str] = &[
        "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "lksh", "pdksh", "oksh", "ash",
        "rbash", "yash", "posh",
    ];
    const OTHER: &[&str] = &["fish", "csh", "tcsh", "nu", "xonsh", "pwsh", "elvish", "rc"];
    if SH.contains(&name) {
        Some(true)
    } else if OTHER.contains(&name) {
        Some(false)
    } else {
        None
    }
}

pub(super) enum Unwrapped {
    /// The command starts after `used` words; the wrapper set `env`. `via_shell`: the wrapper
    /// runs it through a shell (`sudo -s`), which expands what `$` introduces.
    Command {
        used: usize,
        env: Vec<String>,
        via_shell: bool,
    },
    /// No command follows: the wrapper is the program.
    Alone,
}

/// Reads a wrapper's options (`words[0]` is the wrapper).
pub(super) fn unwrap(spec: &Wrapper, words: &[Word]) -> Result<Unwrapped, String> {
    let name = spec.name;
    let mut via_shell = false;
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let v = w.value.as_str();
        if v == "--" {
            i += 1;
            break;
        }
        if v == "-" && name == "env" {
            i += 1;
            continue;
        }
        if !v.starts_with('-') || v == "-" {
            break;
        }
        if let Some(long) = v.strip_prefix("--") {
            let (opt, has_value) = match long.split_once('=') {
                Some((o, _)) => (o, true),
                None => (long, false),
            };
            via_shell |= spec.via_shell_long.contains(&opt);
            if spec.long_flags.contains(&opt) || (has_value && spec.long_with_value.contains(&opt))
            {
                i += 1;
            } else if spec.long_with_value.contains(&opt) {
                i += 2;
            } else {
                return Err(format!(
                    "`{name} --{opt}` is an option the gateway does not read"
                ));
            }
            continue;
        }
        let cluster = &v[1..];
        if spec.numeric && cluster.bytes().all(|b| b.is_ascii_digit()) {
            i += 1;
            continue;
        }
        let mut step = 1;
        for (k, c) in cluster.char_indices() {
            if spec.flags.contains(c) {
                via_shell |= spec.via_shell.contains(c);
                continue;
            }
            if spec.with_value.contains(c) {
                if k + c.len_utf8() == cluster.len() {
                    step = 2;
                }
                break;
            }
            return Err(format!(
                "`{name} -{c}` is an option the gateway does not read"
            ));
        }
        i += step;
    }
    if i > words.len() {
        return Err(format!("`{name}`: an option without its value"));
    }
    i += spec.positional;
    let mut env = Vec::new();
    if spec.assignments {
        while let Some(w) = words.get(i).filter(|w| w.value.contains('=')) {
            env.push(w.value.clone());
            i += 1;
        }
    }
    if i < words.len() {
        Ok(Unwrapped::Command {
            used: i,
            env,
            via_shell,
        })
    } else if spec.alone {
        Ok(Unwrapped::Alone)
    } else {
        Err(format!("`{name}` without a command"))
    }
}

/// A POSIX shell's options up to its `-c` string; the string's index.
pub(super) fn shell_string(words: &[Word]) -> Result<usize, String> {
    let name = words.first().map(|w| w.value.as_str()).unwrap_or_default();
    let mut with_c = false;
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let v = w.value.as_str();
        if v == "--" || v == "-" {
            i += 1;
            break;
        }
        if !(v.starts_with('-') || v.starts_with('+')) {
            break;
        }
        if let Some(long) = v.strip_prefix("--") {
            const LONG: &[&str] = &[
                "login",
                "noprofile",
                "norc",
                "posix",
                "restricted",
                "verbose",
                "noediting",
            ];
            if !LONG.contains(&long) {
                return Err(format!(
                    "`{name} --{long}` is an option the gateway does not read"
                ));
            }
            i += 1;
            continue;
        }
        let mut step = 1;
        for c in v[1..].chars() {
            match c {
                'c' if v.starts_with('-') => with_c = true,
                'o' => step = 2,
                'i' => {
                    return Err(format!(
                        "`{name} -i` reads start-up files and expands aliases"
                    ))
                }
                's' => return Err(format!("`{name} -s` reads commands from its input")),
                c if "abefhklmnprtuvxBCEHPT".contains(c) => {}
                c => {
                    return Err(format!(
                        "`{name} -{c}` is an option the gateway does not read"
                    ))
                }
            }
        }
        i += step;
    }
    if !with_c {
        return Err(format!(
            "`{name}` without `-c` runs a script or reads commands from its input"
        ));
    }
    Ok(i)
}

/// `su`'s options (in any order, as getopt permutes them) and its `-c` string's index.
pub(super) fn su_string(words: &[Word]) -> Result<usize, String> {
    let mut command = None;
    let mut user = false;
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let v = w.value.as_str();
        if v == "-" {
            i += 1;
            continue;
        }
        if let Some(long) = v.strip_prefix("--") {
            let (opt, value) = match long.split_once('=') {
                Some((o, _)) => (o, true),
                None => (long, false),
            };
            match opt {
                "login" | "preserve-environment" | "pty" if !value => i += 1,
                "command" | "session-command" if value => {
                    return Err("`su --command=…`: write `su -c …`".into())
                }
                "command" | "session-command" => {
                    command = Some(i + 1);
                    i += 2;
                }
                "group" | "supp-group" | "whitelist-environment" => i += if value { 1 } else { 2 },
                _ => {
                    return Err(format!(
                        "`su --{opt}` is an option the gateway does not read"
                    ))
                }
            }
            continue;
        }
        if let Some(cluster) = v.strip_prefix('-') {
            let mut step = 1;
            for (k, c) in cluster.char_indices() {
                match c {
                    'l' | 'm' | 'p' | 'P' => {}
                    'c' if k + 1 == cluster.len() => {
                        command = Some(i + 1);
                        step = 2;
                    }
                    'g' | 'G' | 'w' if k + 1 == cluster.len() => step = 2,
                    'g' | 'G' | 'w' => break,
                    c => return Err(format!("`su -{c}` is an option the gateway does not read")),
                }
            }
            i += step;
            continue;
        }
        if user {
            return Err("arguments after su's user go to its shell".into());
        }
        user = true;
        i += 1;
    }
    command.ok_or_else(|| "`su` without `-c` starts a shell reading its input".to_string())
}
