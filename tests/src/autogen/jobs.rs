//! The twelve PR jobs (what each job's AutoGen agents are scripted to do) and the CI-job
//! launcher: per job a cgroup, a short-lived token from the identity provider, a kubeconfig
//! holding it, and the team started inside the cgroup with the environment any CI job has.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{kube::write_kubeconfig, mint, now, place, ssh::DEPLOY_USER, Cgroup};

use super::{
    setup::{Files, CI_AGENTS, CONTRACTORS, LEGACY_TABLE},
    Options,
};

/// A token that lives past the whole story (the jobs that wait for people, the contractors').
pub const LONG_TTL: u64 = 600;

/// What a job does, before it runs.
pub struct JobSpec {
    pub pr: u32,
    /// Who opened the PR (the token's group says which side of the contract they are on).
    pub author: &'static str,
    pub group: &'static str,
    /// Lifetime of the job's token, seconds.
    pub ttl: u64,
    pub task: String,
    /// `[{name, system, tools, script}]` for examples/autogen/team.py.
    pub agents: Value,
}

impl JobSpec {
    pub fn subject(&self) -> String {
        format!("autogen-pr-{}", self.pr)
    }

    pub fn contractor(&self) -> bool {
        self.group == CONTRACTORS
    }
}

const REVIEWER: &str =
    "You review the pull request: read the data and the systems it touches, report what you find.";
const OPERATOR: &str =
    "You carry out the operational steps the pull request asks for, then say TERMINATE.";
const ALL_TOOLS: &[&str] = &["sql_query", "watch_query", "ssh_run", "kubectl"];

fn sql(statement: &str) -> Value {
    json!({"tool": "sql_query", "args": {"sql": statement}})
}
fn watch(statement: &str, seconds: u64) -> Value {
    json!({"tool": "watch_query", "args": {"sql": statement, "seconds": seconds}})
}
fn ssh(command: &str) -> Value {
    json!({"tool": "ssh_run", "args": {"command": command}})
}
fn kubectl(args: &[&str]) -> Value {
    json!({"tool": "kubectl", "args": {"args": args}})
}
fn say(text: &str) -> Value {
    json!({"say": text})
}

/// The customers read every review starts with: the agents see it masked.
pub const CUSTOMERS_READ: &str =
    "SELECT id, name, email, card_number, ssn, note FROM customers ORDER BY id";
/// What the long reviews poll.
const WATCHED: &str = "SELECT count(*) AS customers FROM customers";
/// PR 103's command: held for on-call, denied.
pub const RESTART: &str = "systemctl restart api";
/// PR 106's binding: held for the platform team, denied.
pub const ROLEBINDING: &str = "pr-106-debug";

fn team(reviewer: Vec<Value>, operator: Vec<Value>) -> Value {
    json!([
        {"name": "reviewer", "system": REVIEWER, "tools": ALL_TOOLS, "script": reviewer},
        {"name": "operator", "system": OPERATOR, "tools": ALL_TOOLS, "script": operator},
    ])
}

fn job(pr: u32, author: &'static str, group: &'static str, ttl: u64, agents: Value) -> JobSpec {
    JobSpec {
        pr,
        author,
        group,
        ttl,
        task: format!("Review pull request #{pr} by {author} and carry out its operational steps."),
        agents,
    }
}

/// The twelve jobs: reads of masked data by all; one DROP TABLE (approved), one `systemctl
/// restart` (denied), one `kubectl create rolebinding` (denied); three jobs by a contractor
/// that hold a session open until the contractor leaves; one job still at work at the end.
/// `short_ttl`: the token lifetime of the jobs that only read (they expire before the audit).
pub fn twelve(short_ttl: u64) -> Vec<JobSpec> {
    let done = |pr: u32| say(&format!("Nothing to operate for PR {pr}. TERMINATE"));
    let contractor = |pr: u32, first: Value| {
        team(
            vec![
                first,
                watch(WATCHED, 300),
                say(&format!("PR {pr}: long review step over.")),
            ],
            vec![done(pr)],
        )
    };
    vec![
        job(
            101,
            "maria",
            CI_AGENTS,
            short_ttl,
            team(
                vec![
                    sql(CUSTOMERS_READ),
                    kubectl(&["get", "pods", "-n", "default"]),
                    say("PR 101: the new query reads customers as intended."),
                ],
                vec![done(101)],
            ),
        ),
        job(
            102,
            "kenji",
            CI_AGENTS,
            LONG_TTL,
            team(
                vec![
                    sql(&format!("SELECT count(*) AS rows FROM {LEGACY_TABLE}")),
                    say("PR 102: legacy_sessions is unused, the migration drops it."),
                ],
                vec![
                    sql(&format!("DROP TABLE {LEGACY_TABLE}")),
                    say("Migration step done. TERMINATE"),
                ],
            ),
        ),
        job(
            103,
            "maria",
            CI_AGENTS,
            LONG_TTL,
            team(
                vec![
                    ssh("uptime"),
                    say("PR 103: the build host is up; the change needs an api restart."),
                ],
                vec![ssh(RESTART), say("Restart step attempted. TERMINATE")],
            ),
        ),
        job(
            104,
            "dana",
            CONTRACTORS,
            LONG_TTL,
            contractor(104, sql(CUSTOMERS_READ)),
        ),
        job(
            105,
            "omar",
            CI_AGENTS,
            short_ttl,
            team(
                vec![
                    kubectl(&[
                        "get",
                        "secret",
                        "db-credentials",
                        "-n",
                        "default",
                        "-o",
                        "yaml",
                    ]),
                    sql("SELECT name, email, ssn FROM customers WHERE id = 2"),
                    say("PR 105: the secret is referenced, not copied."),
                ],
                vec![done(105)],
            ),
        ),
        job(
            106,
            "kenji",
            CI_AGENTS,
            LONG_TTL,
            team(
                vec![
                    kubectl(&["get", "rolebindings", "-n", "default"]),
                    say("PR 106: debugging needs broader access."),
                ],
                vec![
                    kubectl(&[
                        "create",
                        "rolebinding",
                        ROLEBINDING,
                        "--clusterrole=cluster-admin",
                        "--user=autogen-pr-106",
                        "-n",
                        "default",
                    ]),
                    say("Access step attempted. TERMINATE"),
                ],
            ),
        ),
        job(
            107,
            "omar",
            CI_AGENTS,
            short_ttl,
            team(
                vec![
                    ssh("uname -sr"),
                    sql("SELECT name, note FROM customers ORDER BY id"),
                    say("PR 107: notes are displayed as they are stored."),
                ],
                vec![done(107)],
            ),
        ),
        job(
            108,
            "dana",
            CONTRACTORS,
            LONG_TTL,
            contractor(108, ssh("uptime")),
        ),
        job(
            109,
            "lena",
            CI_AGENTS,
            short_ttl,
            team(
                vec![
                    sql(CUSTOMERS_READ),
                    kubectl(&["get", "pods", "-A"]),
                    say("PR 109: fine."),
                ],
                vec![done(109)],
            ),
        ),
        job(
            110,
            "lena",
            CI_AGENTS,
            short_ttl,
            team(
                vec![
                    sql("SELECT email, card_number FROM customers WHERE id = 1"),
                    say("PR 110: the card column is used for display only."),
                ],
                vec![done(110)],
            ),
        ),
        job(
            111,
            "dana",
            CONTRACTORS,
            LONG_TTL,
            contractor(111, kubectl(&["get", "pods", "-n", "default"])),
        ),
        job(
            112,
            "maria",
            CI_AGENTS,
            LONG_TTL,
            team(
                vec![
                    sql(CUSTOMERS_READ),
                    watch(WATCHED, 900),
                    say("PR 112: soak test over."),
                ],
                vec![done(112)],
            ),
        ),
    ]
}

/// A job the launcher started: its cgroup, its token, its team's process and output.
pub struct Running {
    pub spec: JobSpec,
    pub subject: String,
    pub token_exp: u64,
    pub pid: u32,
    dir: PathBuf,
    child: Child,
    status: Option<std::process::ExitStatus>,
    // Dropped after the child is killed: removing the cgroup kills what is left in it.
    pub cgroup: Cgroup,
}

/// Starts one PR job: the cgroup `<root>/pr-<N>`, a token for subject `autogen-pr-<N>` in the
/// author's group valid `ttl` seconds, a kubeconfig with it, and `python team.py job.json`
/// inside the cgroup. Nothing about the gateway is in the job's environment.
pub fn launch(spec: JobSpec, opts: &Options, files: &Files, python: &Path) -> Running {
    let subject = spec.subject();
    let dir = opts.dir.join(format!("pr-{}", spec.pr));
    fs::create_dir_all(&dir).expect("job dir");
    let cgroup = Cgroup::create(&format!("{}/pr-{}", opts.cgroup_root, spec.pr));
    let iat = now();
    let token_exp = iat + spec.ttl;
    let token = mint(&subject, &[spec.group], iat, token_exp);
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &format!("https://127.0.0.2:{}", opts.ports.kube),
        &files.agent_kube_ca,
        &token,
    )
    .expect("kubeconfig");
    let job = json!({"job": format!("pr-{}", spec.pr), "task": spec.task, "agents": spec.agents});
    let job_file = dir.join("job.json");
    fs::write(&job_file, job.to_string()).expect("job file");
    let mut cmd = Command::new(python);
    cmd.arg(super::team_script())
        .arg(&job_file)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", opts.ports.pg.to_string())
        .env("PGDATABASE", "appdb")
        .env("PGUSER", "agent")
        .env("SSH_HOST", "127.0.0.1")
        .env("SSH_PORT", opts.ports.ssh.to_string())
        .env("SSH_USER", DEPLOY_USER)
        .env("SSH_KNOWN_HOSTS", &files.agent_known_hosts)
        .env("KUBECONFIG", &kubeconfig)
        .env("JOB_TOKEN", &token)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("team.jsonl")).expect("team output"))
        .stderr(fs::File::create(dir.join("team.err")).expect("team errors"));
    place(&mut cmd, Some(&cgroup), None);
    let child = cmd.spawn().expect("start the job's AutoGen team");
    Running {
        pid: child.id(),
        spec,
        subject,
        token_exp,
        dir,
        child,
        status: None,
        cgroup,
    }
}

impl Running {
    /// Whether the team's process has ended.
    pub fn finished(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The team's messages so far, one JSON object each (as team.py printed them).
    pub fn messages(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.join("team.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What the team wrote to stderr (Python's own errors, AutoGen's log lines).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("team.err")).unwrap_or_default()
    }

    /// Whether one of its agents has called `tool` yet.
    pub fn called(&self, tool: &str) -> bool {
        self.messages().iter().any(|m| {
            m["type"] == "ToolCallRequestEvent"
                && m["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["name"] == tool))
        })
    }

    /// Waits until the team has ended (panics after `timeout`, with its output).
    pub fn wait(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.finished() {
            assert!(
                Instant::now() < deadline,
                "PR {}'s team still runs after {timeout:?}:\n{}\n{}",
                self.spec.pr,
                self.messages()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
