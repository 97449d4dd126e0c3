//! Execs that are another kind of request by another name, which the rules judge as that kind
//! too: the sftp server run by its path is the sftp subsystem, and a shell started without a
//! command string (`ssh host bash`, `ssh -t host sudo -i`, `… | ssh host sh`) is an interactive
//! shell whatever the client called it. Without this, a rule set refusing sftp or shells is
//! passed by spelling the request as an exec.
//!
//! Deliberately simple word matching, wider rather than narrower: a false match only judges a
//! command under the stricter kind (refused where sftp or shells are not allowed).

/// Whether any word of `cmd` names the sftp server program (`sftp-server`, at any path; behind
/// `exec`, `env`, `nice` or in a copy `cp …/sftp-server /tmp/x` it is the same server).
pub fn runs_sftp_server(cmd: &str) -> bool {
    words(cmd).any(|w| base(w) == "sftp-server")
}

/// Shells whose commands come from their input or a script when no `-c` is given.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "lksh", "pdksh", "oksh", "ash", "rbash",
    "yash", "posh", "fish", "csh", "tcsh", "busybox", "nu", "xonsh", "pwsh", "elvish", "rc",
];

/// Words that run the command after them (with their options), skipped to find the program.
const WRAPPERS: &[&str] = &[
    "env", "exec", "command", "builtin", "nohup", "nice", "ionice", "time", "stdbuf", "setsid",
    "sudo", "doas", "chroot", "timeout", "unbuffer", "script", "runuser",
];

/// Wrapper options whose value is the next word (sudo's user, group, host, prompt, …; nice's
/// and timeout's numbers).
const VALUE_OPTIONS: &[&str] = &[
    "-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-n", "-k",
];

/// Whether `cmd` starts a shell that takes its commands from its input or a script rather than
/// from the command line: a shell program with no `-c` option, or `su` / `sudo -i` / `sudo -s`
/// / `login` with nothing to run.
pub fn runs_a_shell(cmd: &str) -> bool {
    let mut rest = words(cmd).peekable();
    let mut sudo_shell = false;
    let mut wrapped = false;
    while let Some(w) = rest.peek().copied() {
        let name = base(w);
        if WRAPPERS.contains(&name) {
            wrapped = true;
        } else if w.starts_with('-') || w.contains('=') || (wrapped && is_number(w)) {
            // An option of a wrapper (`sudo -i`, `nice -n`), an assignment, a count (`timeout 5`).
            if matches!(name, "-i" | "-s" | "--login" | "--shell") {
                sudo_shell = true;
            }
            if VALUE_OPTIONS.contains(&w) {
                // `sudo -u root bash`: the option's value is not the program.
                rest.next();
            }
        } else {
            break;
        }
        rest.next();
    }
    let Some(program) = rest.next() else {
        // Only wrappers: `sudo -i`, `sudo -s` start the login shell; `env` alone prints.
        return sudo_shell;
    };
    let name = base(program);
    if matches!(name, "su" | "login" | "machinectl") {
        return true;
    }
    if !SHELLS.contains(&name) {
        return false;
    }
    // `bash -c '…'`, `sh -ec '…'`, `zsh -lc '…'`: the command is on the line, judged as such.
    !rest.any(|w| {
        w == "--command" || (w.starts_with('-') && !w.starts_with("--") && w[1..].contains('c'))
    })
}

fn words(cmd: &str) -> impl Iterator<Item = &str> {
    cmd.split(|c: char| c.is_whitespace() || ";&|<>()`'\"".contains(c))
        .filter(|w| !w.is_empty())
}

fn base(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

fn is_number(w: &str) -> bool {
    w.chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == 's')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_without_a_command_string() {
        for cmd in [
            "bash",
            "/bin/bash -i",
            "sh -s arg",
            "bash -l",
            "bash script.sh",
            "env TERM=xterm bash",
            "exec /usr/bin/zsh",
            "sudo -i",
            "sudo -s",
            "sudo bash",
            "sudo -u root bash",
            "nice -n 5 sh",
            "timeout 30 bash",
            "su",
            "su - root",
            "busybox sh",
            "  bash  ",
        ] {
            assert!(runs_a_shell(cmd), "{cmd}");
        }
        for cmd in [
            "echo bash",
            "bash -c 'uptime'",
            "sh -ec true",
            "zsh -lc true",
            "env",
            "sudo systemctl restart api",
            "ls /bin/bash",
            "",
            "uptime",
        ] {
            assert!(!runs_a_shell(cmd), "{cmd}");
        }
    }

    #[test]
    fn the_sftp_server_by_path() {
        assert!(runs_sftp_server("/usr/lib/openssh/sftp-server"));
        assert!(runs_sftp_server(
            "env /usr/lib/openssh/sftp-server -l DEBUG"
        ));
        assert!(runs_sftp_server("exec sftp-server"));
        assert!(!runs_sftp_server("sftp"));
        assert!(!runs_sftp_server("echo sftp-server.log"));
    }
}
