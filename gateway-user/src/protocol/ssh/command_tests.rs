use std::sync::LazyLock;

use proptest::prelude::*;

use super::*;

fn rule(yaml: &str) -> CommandMatch {
    let doc: CommandMatchDoc = serde_saphyr::from_str(yaml).expect("test YAML parses");
    CommandMatch::new(&doc).expect("test rule compiles")
}

// Compiled once: the property tests judge thousands of lines against them.
static DENY_RM: LazyLock<CommandMatch> = LazyLock::new(|| rule("programs: [rm]"));
static ALLOW: LazyLock<CommandMatch> =
    LazyLock::new(|| rule(r#"allow: ["systemctl status *", "systemctl restart api", "uptime"]"#));
static ALLOW_ALL: LazyLock<CommandMatch> =
    LazyLock::new(|| rule(r#"allow: ["**", "systemctl status *", "uptime"]"#));

fn deny_rm() -> &'static CommandMatch {
    &DENY_RM
}

fn allow_list() -> &'static CommandMatch {
    &ALLOW
}

fn verdict(m: &CommandMatch, line: &str) -> Verdict {
    m.verdict(&parse(line))
}

/// The disguises of issue 18, each meant to run `rm -rf /`.
const DISGUISES: &[&str] = &[
    r#"sh -c "$(printf 'rm -rf /')""#,
    "echo cm0gLXJmIC8K | base64 -d | sh",
    "alias x=rm; x -rf /",
    "r$IFS-rf$IFS/",
    "/bin/r''m -rf /",
    r"\rm -rf /",
    r#""rm" -rf /"#,
    "sudo -u root rm -rf /",
    "env X=1 rm -rf /",
    "bash -c 'rm -rf /'",
    "nohup rm -rf / &",
    "rm -rf / # comment",
    "uptime\nrm -rf /",
    "systemctl restart api; rm -rf /",
    // more of the same family
    "sudo bash -c 'cd / && rm -rf .'",
    "timeout 5 nice -n 10 /usr/bin/rm -rf /",
    "uptime && rm -rf /",
    "uptime || rm -rf /",
    "uptime | rm -rf /",
    "{rm,-rf,/}",
    "r? -rf /",
    "$'\\x72\\x6d' -rf /",
    "exec rm -rf /",
    "command rm -rf /",
    "su -c 'rm -rf /' root",
    "sudo su - root -c 'rm -rf /'",
    "sh -c 'sh -c \"rm -rf /\"'",
    "X=1 rm -rf /",
    "eval rm -rf /",
    "find / -exec rm -rf {} +",
    "echo / | xargs rm -rf",
    "rm -rf / 2>&1",
    "`echo rm` -rf /",
    "./rm -rf /",
    "/tmp/sudo rm -rf /",
    "doas rm -rf /",
    "env -S 'rm -rf /'",
    "sudo -s",
    "bash",
    "bash -i -c 'x -rf /'",
    "rm\t-rf /",
    "rm -rf /\u{202e}",
];

#[test]
fn disguises_match_a_deny_list() {
    let m = deny_rm();
    for line in DISGUISES {
        let v = verdict(m, line);
        assert!(
            matches!(v, Verdict::Matched { .. }),
            "{line:?}: {v:?} ({:?})",
            parse(line)
        );
    }
}

#[test]
fn disguises_are_not_allowed_by_an_allow_list() {
    let m = allow_list();
    for line in DISGUISES {
        let v = verdict(m, line);
        assert!(
            matches!(v, Verdict::NotAllowed { .. }),
            "{line:?}: {v:?} ({:?})",
            parse(line)
        );
    }
}

#[test]
fn plain_commands_are_allowed() {
    let m = allow_list();
    for line in [
        "systemctl restart api",
        "sudo systemctl restart api",
        "/usr/bin/uptime",
        "uptime",
        "systemctl status api",
        "systemctl status 'nginx.service'",
        "  systemctl   restart\tapi  ",
        "sudo -n -u root /bin/systemctl restart api",
        "bash -c 'systemctl restart api'",
        "sudo sh -lc \"uptime\"",
        "uptime && systemctl status api",
        "uptime 2>&1",
        "uptime >/dev/null 2>&1 </dev/null",
        "timeout 10 uptime",
        "nohup uptime",
        "exec uptime",
        "command -p uptime",
        "sudo -i uptime",
        "sudo -u sam systemctl status '$x'",
    ] {
        assert_eq!(
            verdict(m, line),
            Verdict::Allowed,
            "{line:?}: {:?}",
            parse(line)
        );
    }
    // The same commands do not match a deny list of rm.
    let d = deny_rm();
    for line in [
        "systemctl restart api",
        "sudo systemctl restart api",
        "uptime | uptime",
    ] {
        assert_eq!(verdict(d, line), Verdict::NotMatched, "{line:?}");
    }
}

/// Commands agents commonly run are read, not refused as opaque: each program is found.
#[test]
fn everyday_commands_are_read() {
    for (line, programs) in [
        ("ls -la /var/log", &["ls"][..]),
        (
            "ps aux | grep -v grep | grep nginx",
            &["ps", "grep", "grep"],
        ),
        (
            r#"journalctl -u api --since "1 hour ago" --no-pager"#,
            &["journalctl"],
        ),
        ("docker ps --format '{{.Names}}'", &["docker"]),
        ("awk '{print $1}' /etc/hosts", &["awk"]),
        (r#"find /var/log -name "*.log" -mtime +7"#, &["find"]),
        (
            "systemctl restart api 2>&1 | tail -n 5",
            &["systemctl", "tail"],
        ),
        ("sudo -n systemctl status nginx --no-pager", &["systemctl"]),
        (
            "curl -fsS http://127.0.0.1:8080/health || true",
            &["curl", "true"],
        ),
        ("python3 -c 'print(1+1)'", &["python3"]),
        ("date +%s", &["date"]),
        ("git -C /srv/app log --oneline -n 5", &["git"]),
    ] {
        let p = parse(line);
        assert_eq!(p.opaque, None, "{line:?}");
        let found: Vec<&str> = p.commands.iter().map(|c| c.program.as_str()).collect();
        assert_eq!(found, programs, "{line:?}");
    }
}

/// An allow entry is the whole command, not its beginning: a `text.starts_with(entry)` check
/// would allow every one of these.
#[test]
fn allow_entries_match_whole_commands() {
    let m = allow_list();
    for line in [
        "systemctl restart api-gateway",
        "systemctl restart api --now",
        "systemctl restart api x",
        "uptime --help",
        "uptimes",
        "systemctl restart api && rm -rf /",
        "systemctl status api --kill-whom=all",
        "systemctl status",
    ] {
        let v = verdict(m, line);
        assert!(matches!(v, Verdict::NotAllowed { .. }), "{line:?}: {v:?}");
    }
}

#[test]
fn what_parsing_finds() {
    let p = parse("sudo -u root env -i LANG=C /usr/bin/systemctl restart 'my api'");
    assert_eq!(p.opaque, None);
    assert_eq!(p.commands.len(), 1);
    let c = &p.commands[0];
    assert_eq!(c.program, "systemctl");
    assert_eq!(c.argv, ["/usr/bin/systemctl", "restart", "my api"]);
    assert_eq!(c.unwrapped, ["sudo -u root", "env -i LANG=C"]);
    assert_eq!(c.env, ["LANG=C"]);
    assert_eq!(c.text(), "LANG=C systemctl restart my api");
    assert_eq!(
        p.words,
        [
            "sudo",
            "-u",
            "root",
            "env",
            "-i",
            "LANG=C",
            "/usr/bin/systemctl",
            "restart",
            "my api"
        ]
    );

    let p = parse("bash -c 'cat /var/log/syslog | grep x' 2>/tmp/err");
    assert_eq!(p.opaque, None);
    let programs: Vec<&str> = p.commands.iter().map(|c| c.program.as_str()).collect();
    assert_eq!(programs, ["cat", "grep"]);
    for c in &p.commands {
        assert_eq!(c.unwrapped, ["bash -c"]);
        assert_eq!(c.redirects, ["2>/tmp/err"]);
    }
    assert_eq!(
        p.words,
        ["bash", "-c", "cat /var/log/syslog | grep x", "2>/tmp/err"]
    );
}

#[test]
fn opaque_reasons() {
    for (line, why) in [
        ("rm -rf / &", "background"),
        ("a; b", "`;`"),
        ("echo \"a;b\"", "`;`"),
        ("echo a\\;b", "`;`"),
        ("echo $HOME", "`$`"),
        ("echo \"${x}\"", "`$`"),
        ("echo `id`", "backticks"),
        ("echo 'unbalanced", "single quote"),
        ("echo \"unbalanced", "double quote"),
        ("(rm -rf /)", "subshell"),
        ("diff <(ls a) <(ls b)", "process substitution"),
        ("cat <<EOF", "here-document"),
        ("alias ll=ls", "builtin"),
        ("source /tmp/x", "builtin"),
        (". /tmp/x", "not a plain program"),
        ("PATH=/tmp", "only sets variables"),
        ("[[ -f x ]]", "program word `[[` has a glob"),
        ("! rm -rf /", "not a plain program"),
        ("=rm -rf /", "not a plain program"),
        ("fish -c 'rm -rf /'", "does not read"),
        ("sudo -R /tmp/root systemctl restart api", "`sudo -R`"),
        ("env -C /tmp ./x", "`env -C`"),
        ("bash script.sh", "without `-c`"),
        ("su root", "without `-c`"),
        ("", "empty command"),
        ("uptime |", "ends without a command"),
        ("| uptime", "without a command before"),
        ("echo a\0b", "control character"),
        ("uptime # why", "comment"),
        ("/tmp/bash -c uptime", "not run from a system directory"),
        ("env {X=1,rm,-rf,/}", "glob or brace"),
        ("sudo -u * rm", "glob or brace"),
        ("sudo -s echo '$HOME'", "expands `$`"),
        ("sudo --login echo '$HOME'", "expands `$`"),
        ("sudo -Es cat '/var/log/$X'", "expands `$`"),
    ] {
        let p = parse(line);
        let got = p.opaque.clone().unwrap_or_default();
        assert!(got.contains(why), "{line:?}: {got:?}");
    }
    assert_eq!(parse_bytes(b"uptime"), parse("uptime"));
    let latin1 = parse_bytes(b"rm -rf /\xff");
    assert!(latin1.opaque.unwrap_or_default().contains("UTF-8"));
    let long = format!("echo {}", "a".repeat(MAX_LEN));
    assert!(parse(&long).opaque.unwrap_or_default().contains("longer"));
    let deep = (0..=MAX_DEPTH).fold("uptime".to_string(), |s, _| {
        format!("sh -c {}", shell_quote(&s))
    });
    assert!(parse(&deep).opaque.unwrap_or_default().contains("nested"));
    let shallow = (0..MAX_DEPTH).fold("uptime".to_string(), |s, _| {
        format!("sh -c {}", shell_quote(&s))
    });
    assert_eq!(verdict(allow_list(), &shallow), Verdict::Allowed);
}

/// Lines as long as allowed, built to make the parser work hard: they are read (opaque or not)
/// in time linear in their length.
#[test]
fn long_lines_stay_cheap() {
    let started = std::time::Instant::now();
    let wrappers = format!("{}uptime", "nohup ".repeat(MAX_LEN / 6 - 2));
    assert!(parse(&wrappers)
        .opaque
        .unwrap_or_default()
        .contains("wrappers"));
    let piped = format!("{}uptime", "uptime|".repeat(MAX_LEN / 7 - 1));
    let p = parse(&piped);
    assert_eq!(p.opaque, None);
    assert_eq!(allow_list().verdict(&p), Verdict::Allowed);
    let nested = format!(
        "{}bash -c '{}uptime'",
        "nohup ".repeat(MAX_LAYERS - 1),
        "uptime|".repeat((MAX_LEN - 6 * MAX_LAYERS) / 7 - 10)
    );
    let p = parse(&nested);
    assert_eq!(p.opaque, None);
    assert_eq!(allow_list().verdict(&p), Verdict::Allowed);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn paths_outside_system_directories_keep_their_path() {
    let m = allow_list();
    for line in ["/tmp/systemctl restart api", "./uptime", "~/bin/uptime"] {
        let v = verdict(m, line);
        assert!(matches!(v, Verdict::NotAllowed { .. }), "{line:?}: {v:?}");
    }
    // A deny list still knows the program by its basename.
    assert!(verdict(deny_rm(), "/opt/x/rm -rf /").applies());
    let m = rule(r#"allow: ["/opt/app/bin/tool *"]"#);
    assert_eq!(verdict(&m, "/opt/app/bin/tool run"), Verdict::Allowed);
}

#[test]
fn environment_is_part_of_the_text() {
    let m = allow_list();
    for line in [
        "LD_PRELOAD=/tmp/x.so systemctl restart api",
        "env PATH=/tmp systemctl restart api",
        "sudo LD_LIBRARY_PATH=/tmp uptime",
    ] {
        let v = verdict(m, line);
        assert!(matches!(v, Verdict::NotAllowed { .. }), "{line:?}: {v:?}");
    }
    let m = rule(r#"allow: ["LANG=C systemctl status *"]"#);
    assert_eq!(verdict(&m, "LANG=C systemctl status api"), Verdict::Allowed);
    assert_eq!(
        verdict(&m, "env LANG=C systemctl status api"),
        Verdict::Allowed
    );
}

#[test]
fn glob_syntax() {
    let m = rule(r#"allow: ["cat /var/log/*", "journalctl **", "echo a\\*b", "ls ?"]"#);
    for (line, allowed) in [
        ("cat /var/log/syslog", true),
        ("cat /var/log/nginx/access.log", true),
        ("cat /var/log/syslog /etc/shadow", false),
        ("cat /var/log/../../etc/shadow", false),
        ("cat /var/log/", true),
        ("journalctl -u api --since today", true),
        ("journalctl", false),
        ("echo 'a*b'", true),
        ("echo 'axb'", false),
        ("ls a", true),
        ("ls ab", false),
        // unquoted globs are expanded by the shell into other words
        ("cat /var/log/*", false),
        ("cat '/var/log/*'", true),
        // redirections to files
        ("cat /var/log/syslog >/tmp/copy", false),
        ("cat /var/log/syslog </etc/shadow", false),
    ] {
        let v = verdict(&m, line);
        assert_eq!(v == Verdict::Allowed, allowed, "{line:?}: {v:?}");
    }
    let m = rule(r#"allow: ["cat /var/log/../log/*"]"#);
    assert_eq!(verdict(&m, "cat /var/log/../log/syslog"), Verdict::Allowed);
}

#[test]
fn deny_lists() {
    let m = rule(
        r#"
deny: ["systemctl stop **"]
programs: [sudo, "mkfs*"]
patterns: ['--force\b']
"#,
    );
    for (line, matched) in [
        ("systemctl stop api", true),
        ("/bin/systemctl stop api db", true),
        ("sudo uptime", true),
        ("mkfs.ext4 /dev/sda", true),
        ("git push --force", true),
        ("uptime | git push --force", true),
        ("systemctl start api", false),
        ("git push", false),
        ("echo $(x)", true),
    ] {
        let v = verdict(&m, line);
        assert_eq!(v.applies(), matched, "{line:?}: {v:?}");
        if !matched {
            assert_eq!(v, Verdict::NotMatched);
        }
    }
}

#[test]
fn allow_and_deny_together() {
    let m = rule(
        r#"
allow: ["systemctl **"]
deny: ["systemctl stop **"]
"#,
    );
    assert_eq!(verdict(&m, "systemctl restart api"), Verdict::Allowed);
    assert!(matches!(
        verdict(&m, "systemctl stop api"),
        Verdict::Matched { .. }
    ));
    let v = verdict(&m, "uptime");
    assert!(matches!(v, Verdict::NotAllowed { .. }));
    assert_eq!(v.why(), Some("`uptime` matches no allowed command"));
    assert_eq!(
        verdict(&m, "systemctl stop api").why(),
        Some("`systemctl stop api` matches `systemctl stop **`")
    );
    assert_eq!(Verdict::Allowed.why(), None);
}

#[test]
fn bad_entries_are_named() {
    for (yaml, needle) in [
        ("allow: ['']", "commands.allow: bad glob ``"),
        ("deny: ['rm \\']", "commands.deny: bad glob `rm \\`"),
        (
            "programs: ['rm -rf']",
            "commands.programs: bad glob `rm -rf`",
        ),
        ("patterns: ['(']", "commands.patterns: bad regex `(`"),
        ("patterns: ['']", "commands.patterns: an empty regex"),
        ("{}", "at least one"),
    ] {
        let doc: CommandMatchDoc = serde_saphyr::from_str(yaml).expect("YAML parses");
        let err = CommandMatch::new(&doc).expect_err(yaml).to_string();
        assert!(err.contains(needle), "{yaml}: {err}");
    }
    let unknown: Result<CommandMatchDoc, _> = serde_saphyr::from_str("allows: [uptime]");
    assert!(unknown.is_err());
}

/// Words the generator puts together: shell syntax around allowed commands.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("systemctl".to_string()),
        Just("status".to_string()),
        Just("restart".to_string()),
        Just("api".to_string()),
        Just("uptime".to_string()),
        Just("sudo".to_string()),
        Just("sh -c".to_string()),
        Just(" ".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("$(".to_string()),
        Just(")".to_string()),
        Just("`".to_string()),
        Just(";".to_string()),
        Just("&&".to_string()),
        Just("|".to_string()),
        Just("$".to_string()),
        Just("*".to_string()),
        "[ -~]{0,3}",
    ]
}

/// One word of mostly balanced quoting, with the interesting characters inside and outside
/// every kind of quote.
fn quoted_word() -> impl Strategy<Value = String> {
    let inside = || {
        prop_oneof![
            4 => "[a-z]{1,4}",
            1 => Just(" ".to_string()),
            1 => Just(";".to_string()),
            1 => Just("$(".to_string()),
            1 => Just(")".to_string()),
            1 => Just("`".to_string()),
            1 => Just("|".to_string()),
            1 => Just("&&".to_string()),
            1 => r"[*?#~={}<>\\\t!-]",
        ]
    };
    let part = prop_oneof![
        4 => "[a-z/.=#-]{1,6}",
        2 => proptest::collection::vec(inside(), 0..4).prop_map(|v| format!("'{}'", v.concat())),
        2 => proptest::collection::vec(prop_oneof![inside(), Just("'".to_string())], 0..4)
            .prop_map(|v| format!("\"{}\"", v.concat())),
        1 => r#"[;`$a-z*\\'" ]"#.prop_map(|c| format!("\\{c}")),
        1 => Just(";".to_string()),
        1 => Just("$(".to_string()),
    ];
    proptest::collection::vec(part, 1..4).prop_map(|p| p.concat())
}

/// A command line of such words, joined by blanks and operators.
fn quoted_line() -> impl Strategy<Value = String> {
    let joint = prop_oneof![
        6 => Just(" ".to_string()),
        1 => Just(" | ".to_string()),
        1 => Just(" && ".to_string()),
        1 => Just("; ".to_string()),
    ];
    (
        prop_oneof![Just("uptime"), Just("sudo uptime"), Just("sh -c")],
        proptest::collection::vec((joint, quoted_word()), 0..6),
    )
        .prop_map(|(start, rest)| {
            let mut line = start.to_string();
            for (j, w) in rest {
                line.push_str(&j);
                line.push_str(&w);
            }
            line
        })
}

/// The words of `line` as a real shell passes them to a program.
fn shell_words(shell: &str, line: &str) -> Vec<String> {
    let out = std::process::Command::new(shell)
        .arg("-c")
        .arg(format!("printf '%s\\0' {line}"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("the shell runs");
    assert!(out.status.success(), "{shell} {line:?}: {out:?}");
    let text = String::from_utf8(out.stdout).expect("ASCII in, ASCII out");
    let mut words: Vec<String> = text.split('\0').map(str::to_string).collect();
    assert_eq!(words.pop().as_deref(), Some(""), "{shell} {line:?}");
    words
}

/// Quote removal as the real shells do it: where the parser reads a line as one plain
/// command (nothing expanded, redirected or joined), its words are the words bash and dash
/// pass to the program.
#[test]
fn words_are_the_real_shells_words() {
    let judged = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(400));
    let line = (
        quoted_word(),
        proptest::collection::vec(quoted_word(), 0..4),
    )
        .prop_map(|(first, rest)| format!("echo {first} {}", rest.join("\t ")));
    runner
        .run(&line, |line| {
            let p = parse(&line);
            let plain = p.opaque.is_none()
                && p.commands.len() == 1
                && p.commands[0].unwrapped.is_empty()
                && p.commands[0].expands.is_none()
                && p.words.len() == p.commands[0].words.len();
            if !plain {
                return Ok(());
            }
            judged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for shell in ["bash", "dash"] {
                prop_assert_eq!(&shell_words(shell, &line), &p.words, "{} {:?}", shell, line);
            }
            Ok(())
        })
        .expect("the parser splits words as the shells do");
    // The generator must give the comparison something to compare.
    let judged = judged.into_inner();
    assert!(judged > 50, "only {judged} lines compared");
}

/// Whether `$(`, a backtick or `;` appears outside single quotes, by a scanner of its own.
fn has_substitution_or_semicolon(line: &str) -> bool {
    #[derive(PartialEq)]
    enum Q {
        None,
        Single,
        Double,
    }
    let chars: Vec<char> = line.chars().collect();
    let mut q = Q::None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if q != Q::Single && (c == '`' || c == ';' || (c == '$' && chars.get(i + 1) == Some(&'(')))
        {
            return true;
        }
        match (&q, c) {
            (Q::Single, '\'') => q = Q::None,
            (Q::Double, '"') => q = Q::None,
            (Q::None, '\'') => q = Q::Single,
            (Q::None, '"') => q = Q::Double,
            (Q::None | Q::Double, '\\') => {
                // The escaped character changes no quoting, but is still looked at above.
                if let Some(&e) = chars.get(i + 1) {
                    if e == '`' || e == ';' || (e == '$' && chars.get(i + 2) == Some(&'(')) {
                        return true;
                    }
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_input_panics(line in any::<String>()) {
        let p = parse(&line);
        let _ = allow_list().verdict(&p);
        let _ = deny_rm().verdict(&p);
        for c in &p.commands {
            let _ = c.text();
        }
    }

    #[test]
    fn no_shell_like_input_panics(parts in proptest::collection::vec(fragment(), 0..16)) {
        let line = parts.concat();
        let p = parse(&line);
        let _ = allow_list().verdict(&p);
    }

    #[test]
    fn substitutions_and_semicolons_are_never_allowed(line in quoted_line()) {
        let m = &*ALLOW_ALL;
        if has_substitution_or_semicolon(&line) {
            let v = m.verdict(&parse(&line));
            prop_assert!(v != Verdict::Allowed, "{:?} allowed", line);
        }
    }

    /// Anything opaque matches a deny list and is not allowed.
    #[test]
    fn opaque_is_never_allowed(parts in proptest::collection::vec(fragment(), 0..16)) {
        let line = parts.concat();
        let p = parse(&line);
        if p.opaque.is_some() {
            let allowed = allow_list().verdict(&p);
            let denied = deny_rm().verdict(&p);
            prop_assert!(matches!(allowed, Verdict::NotAllowed { .. }), "{:?}", allowed);
            prop_assert!(matches!(denied, Verdict::Matched { .. }), "{:?}", denied);
        }
    }
}
