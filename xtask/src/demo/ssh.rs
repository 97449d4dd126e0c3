//! Scene three: an agent's unmodified `ssh` to a throwaway OpenSSH server goes through the
//! gateway (policies/demo-ssh/ssh.yaml). The agent trusts the gateway's host CA with one
//! known_hosts line and holds no key; the gateway logs in to the target with a per-session user
//! certificate naming the agent. Its `systemctl` waits for a person, who approves it through
//! `agentgate approvals`; its `rm -rf` (and a disguised one) is refused with exit status 126;
//! `agentgate sessions` shows what the record DB keeps of it.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use agentgate_tests::{
    place, s,
    ssh::{self, Sshd, SshdOptions, DEPLOY_USER},
    Cgroup, Gateway,
};
use anyhow::{bail, Context};
use serde_json::Value;

use super::{
    approvals::approvals_cli,
    background::Background,
    output::print_indented,
    record::{record_cli, record_json_until},
    DEMO_DIR,
};

const SSH_POLICY: &str = include_str!("../../../policies/demo-ssh/ssh.yaml");
/// Where policies/demo-ssh/ssh.yaml expects the target (its gateway listens on 20520).
const SSHD_PORT: u16 = 20522;
/// The subject of the agent's token (DemoFiles writes it).
const SUBJECT: &str = "code-review-agent-1";
/// What stands for `systemctl restart api`: harmless, and it is the real systemctl.
const HELD: &str = "systemctl --version";

/// The files ssh.yaml names, under /tmp/agentgate-demo/ssh (removed with DEMO_DIR).
struct SshFiles {
    host_ca: ssh::KeyPair,
    user_ca: ssh::KeyPair,
    target_host_key: ssh::KeyPair,
    agent_known_hosts: PathBuf,
}

impl SshFiles {
    fn create() -> anyhow::Result<Self> {
        let dir = Path::new(DEMO_DIR).join("ssh");
        fs::create_dir_all(&dir)?;
        // sshd reads the user CA's public half as root, the agent its known_hosts as itself.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let host_ca = ssh::keygen(&dir.join("host-ca"), "agentgate host CA (demo)");
        let user_ca = ssh::keygen(&dir.join("user-ca"), "agentgate user CA (demo)");
        let target_host_key = ssh::keygen(&dir.join("target-host-key"), "build-host-7");
        let mut secret = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .context("read /dev/urandom")?;
        let path = dir.join("host-secret");
        fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&secret))
            .with_context(|| format!("write {}", path.display()))?;
        ssh::write_known_hosts(
            &dir.join("target-known-hosts"),
            &[ssh::known_hosts_plain(
                "127.0.0.1",
                SSHD_PORT,
                &target_host_key.public_line(),
            )],
        );
        let agent_known_hosts = dir.join("agent-known-hosts");
        ssh::write_known_hosts(
            &agent_known_hosts,
            &[ssh::known_hosts_ca("*", &host_ca.public_line())],
        );
        Ok(Self {
            host_ca,
            user_ca,
            target_host_key,
            agent_known_hosts,
        })
    }
}

/// The login the demo logs in as; removed at the end if the demo created it.
struct DemoLogin {
    created: bool,
}

impl DemoLogin {
    fn ensure() -> Self {
        let existed = Command::new("id")
            .args(["-u", DEPLOY_USER])
            .output()
            .is_ok_and(|o| o.status.success());
        ssh::ensure_user(DEPLOY_USER);
        Self { created: !existed }
    }
}

impl Drop for DemoLogin {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("userdel").args(["-r", DEPLOY_USER]).output();
        }
    }
}

/// An agent's `ssh` through the gateway: one command allowed, one held and approved, an `rm -rf`
/// refused (plainly and disguised), then the record.
pub(super) fn ssh() -> anyhow::Result<()> {
    // Locals drop in reverse order: the gateway first, then the agent's cgroup, the server, the
    // login.
    let _login = DemoLogin::ensure();
    let files = SshFiles::create()?;
    let sshd = Sshd::start(
        SSHD_PORT,
        SshdOptions {
            user_ca: Some(files.user_ca.private.clone()),
            host_key: Some(files.target_host_key.private.clone()),
            ..SshdOptions::default()
        },
    );
    println!(
        "\n== a throwaway OpenSSH server (Debian's sshd) on 127.0.0.1:{SSHD_PORT}, standing for build-host-7: it trusts one user CA (TrustedUserCAKeys {}) whose private key only agentgate holds; login {DEPLOY_USER}",
        files.user_ca.public.display()
    );
    let agent = Cgroup::create("/agentgate-demo/ssh-agent-1");
    let gw = Gateway::start("demo-ssh", SSH_POLICY);
    println!(
        "== a third agentgate runs (pid {}) with policies/demo-ssh/ssh.yaml: SSH target build-host, host certificates from the host CA {}, logins by per-session user certificates; rule no-rm refuses rm, rule restarts-need-approval holds systemctl for a person",
        gw.pid(),
        files.host_ca.private.display()
    );
    let ev = gw.wait_classified(&agent.rel);
    println!(
        "== the agent's cgroup {} -> gateway classifies it: workload {}",
        agent.rel,
        s(&ev, "workload")
    );
    let known = fs::read_to_string(&files.agent_known_hosts)?;
    println!(
        "\n-- the agent's whole SSH trust: one known_hosts line, no private key of its own ({}):",
        files.agent_known_hosts.display()
    );
    print_indented(&known);
    println!(
        "   below, SSH=\"ssh -F /dev/null -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o BatchMode=yes -o IdentitiesOnly=yes\"",
        files.agent_known_hosts.display()
    );

    let run = |command: &str| -> anyhow::Result<Output> {
        println!(
            "   $ $SSH -p {SSHD_PORT} {DEPLOY_USER}@127.0.0.1 {}",
            quoted(command)
        );
        let out = agent_ssh(&agent, &files.agent_known_hosts, command)
            .output()
            .context("run ssh")?;
        print_output(&out);
        Ok(out)
    };

    println!(
        "\n-- agent in {} (subject {SUBJECT}) runs plain ssh to the server's own address:",
        agent.rel
    );
    let out = run("uptime")?;
    let accepted = sshd.wait_log("Accepted publickey", Duration::from_secs(10));
    println!("   the target's own auth log:");
    print_indented(accepted.trim());
    println!(
        "   => {}",
        if out.status.success()
            && accepted.contains(&format!(
                "ID agentgate:{}#{SUBJECT}",
                agentgate_tests::ISSUER
            ))
        {
            "StrictHostKeyChecking=yes passed on the CA line alone; the target let in a certificate the gateway made for this session, whose key id names the agent"
        } else {
            "the command did NOT run, or the target's log does not name the agent (wrong)"
        }
    );

    held_and_approved(&gw, &agent, &files.agent_known_hosts)?;

    let doomed = Path::new(DEMO_DIR).join("srv-api");
    fs::create_dir_all(doomed.join("releases"))?;
    println!(
        "\n-- the agent tries to remove {} (rule no-rm), plainly and disguised:",
        doomed.display()
    );
    let plain = run(&format!("rm -rf {}", doomed.display()))?;
    let disguised = run(&format!(
        "sh -c \"$(printf 'rm -rf {}')\"",
        doomed.display()
    ))?;
    let named = |o: &Output| String::from_utf8_lossy(&o.stderr).contains("refused by rule");
    println!(
        "   => {}; {} is still there: {}",
        if plain.status.code() == Some(126)
            && disguised.status.code() == Some(126)
            && named(&plain)
            && named(&disguised)
        {
            "both refused at the gateway with exit status 126 and the rule named (the disguised one because what it runs cannot be known: an opaque command sets off every command rule)"
        } else {
            "NOT both refused with 126 (wrong)"
        },
        doomed.display(),
        if doomed.join("releases").exists() {
            "yes"
        } else {
            "NO (wrong)"
        }
    );

    ssh_record(&gw)
}

/// The agent's `systemctl` waits for a person; root approves it through `agentgate approvals`.
fn held_and_approved(gw: &Gateway, agent: &Cgroup, known_hosts: &Path) -> anyhow::Result<()> {
    let sock = gw.admin_socket();
    println!(
        "\n-- the agent runs `{HELD}` (standing for `systemctl restart api`) in the background; rule restarts-need-approval holds it:"
    );
    println!(
        "   $ $SSH -p {SSHD_PORT} {DEPLOY_USER}@127.0.0.1 {} &",
        quoted(HELD)
    );
    let mut held = Background::spawn(agent_ssh(agent, known_hosts, HELD), "", "ssh-held.out")?;
    let request = pending(&sock, &mut held)?;
    let id = s(&request, "id").to_string();
    let so_far = held.wait_output(|o| o.contains(&id), Duration::from_secs(5))?;
    println!(
        "   as root on this host (SOCK={}, the gateway's admin socket):",
        sock.display()
    );
    println!("   $ agentgate approvals list --admin-socket $SOCK");
    print_indented(&approvals_cli(&sock, &["list"])?);
    println!("   the agent's ssh so far (stdout and stderr):");
    print_indented(&so_far);
    let waiting = held.running()?;
    println!(
        "   => {}",
        if waiting && so_far.contains("approval required") {
            format!("the agent was told at once (a stderr line naming request {id}) and its ssh waits; nothing has reached the target")
        } else {
            "the agent got NO approval-required notice, or its ssh does not wait (wrong)".into()
        }
    );
    println!("   $ agentgate approvals approve {id} --admin-socket $SOCK");
    let answer = approvals_cli(&sock, &["approve", &id])?;
    println!("     {}", answer.lines().next().unwrap_or(""));
    let out = held.finish(Duration::from_secs(15))?;
    println!("   the agent's ssh, to its end:");
    print_indented(&out);
    println!(
        "   => {}",
        if out.contains("systemd ") {
            "approved by root, the command ran on the target and the agent got its output"
        } else {
            "did NOT run after the approval (wrong)"
        }
    );
    Ok(())
}

/// What the record DB keeps of the agent's SSH sessions, read with `agentgate sessions`.
fn ssh_record(gw: &Gateway) -> anyhow::Result<()> {
    let db = gw.record_db();
    let list_args = [
        "sessions",
        "list",
        "--identity",
        SUBJECT,
        "--protocol",
        "ssh",
    ];
    // The recorder writes off the data path: wait until the four sessions' closes are on record.
    let sessions = record_json_until(&db, &list_args, |v| {
        v.as_array()
            .is_some_and(|a| a.len() == 4 && a.iter().all(|x| x["status"] == "closed"))
    })?;
    println!(
        "\n-- the record (DB={}): each ssh connection is a session, each exec in it a record",
        db.display()
    );
    println!("   $ agentgate sessions list --identity {SUBJECT} --protocol ssh --record-db $DB");
    print_indented(&record_cli(&db, &list_args)?.1);
    let list = sessions.as_array().cloned().unwrap_or_default();
    println!(
        "   => {}",
        if list.len() == 4 && list.iter().all(|x| x["status"] == "closed") {
            "the agent's 4 ssh sessions, newest first, all closed"
        } else {
            "NOT the agent's 4 ssh sessions (wrong)"
        }
    );
    for (what, needle, expected) in [
        (
            "the approved systemctl",
            "systemctl",
            "approved by restarts-need-approval",
        ),
        ("the refused rm", "rm -rf", "denied by no-rm"),
    ] {
        let Some(id) = list
            .iter()
            .rev()
            .find(|x| session_has(&db, x, needle))
            .and_then(|x| x["session"].as_str())
        else {
            println!("   no session with {needle:?} on record (wrong)");
            continue;
        };
        println!("\n   $ agentgate sessions replay {id} --record-db $DB        ({what})");
        let replay = record_cli(&db, &["sessions", "replay", id])?.1;
        print_indented(&replay);
        println!(
            "   => {}",
            if replay.contains(expected) {
                format!("on record: who, from which workload and pid, as which login, the command, {expected}")
            } else {
                format!("the record does NOT say {expected:?} (wrong)")
            }
        );
    }
    println!("\n   $ agentgate audit verify --record-db $DB");
    let (verified, out) = record_cli(&db, &["audit", "verify"])?;
    print_indented(&out);
    println!(
        "   => {}",
        if verified && out.contains("the chain is intact") {
            "every SSH session, command and approval of this gateway is a record of its hash chain, and none was edited, deleted or reordered"
        } else {
            "the chain does NOT verify (wrong)"
        }
    );
    println!(
        "\n== stopping the SSH gateway, the server and the agent's cgroup; removing the keys, CAs and secret"
    );
    Ok(())
}

/// Whether the session `x` (a `sessions list --json` entry) has a command containing `needle`.
fn session_has(db: &Path, x: &Value, needle: &str) -> bool {
    let Some(id) = x["session"].as_str() else {
        return false;
    };
    record_cli(db, &["sessions", "replay", id, "--json"])
        .ok()
        .and_then(|(_, out)| serde_json::from_str::<Value>(&out).ok())
        .and_then(|v| v.as_array().cloned())
        .is_some_and(|events| {
            events
                .iter()
                .any(|e| s(&e["body"], "text").contains(needle))
        })
}

/// The agent's `ssh -p SSHD_PORT -l agdeploy 127.0.0.1 COMMAND`, in its cgroup, trusting only
/// `known_hosts`.
fn agent_ssh(agent: &Cgroup, known_hosts: &Path, command: &str) -> Command {
    let mut cmd = ssh::ssh_command(known_hosts, SSHD_PORT, DEPLOY_USER, &[]);
    cmd.arg(command);
    place(&mut cmd, Some(agent), None);
    cmd
}

/// `text` as one shell word: in single quotes, each `'` in it as `'\''`.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn print_output(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.trim().is_empty() {
        print_indented(&stdout);
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("     (stderr) {}", line.trim_end());
    }
    println!(
        "     (exit status {})",
        out.status
            .code()
            .map_or_else(|| "none: killed".into(), |c| c.to_string())
    );
}

/// Polls `agentgate approvals list --json` (15 s) until a pending request runs `systemctl`.
fn pending(sock: &Path, agent: &mut Background) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list: Value = serde_json::from_str(&approvals_cli(sock, &["list", "--json"])?)?;
        if let Some(r) = list["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["state"] == "pending" && s(r, "statement") == HELD)
        {
            return Ok(r.clone());
        }
        if !agent.running()? {
            bail!(
                "the agent's ssh ended before its request was pending:\n{}",
                agent.output()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "no pending request for {HELD:?} after 15 s; the agent's ssh so far:\n{}",
                agent.output()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
