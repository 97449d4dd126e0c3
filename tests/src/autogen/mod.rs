//! The AutoGen story (issue 23, docs/autogen.md): twelve CI jobs, each an unchanged AutoGen
//! AgentChat team (examples/autogen/team.py) in its own cgroup with its own short-lived token,
//! reach a database, a build host and a Kubernetes API server only through one gateway.
//!
//! In order: the reviews read customers' data masked; PR 102's `DROP TABLE`, PR 103's
//! `systemctl restart` over SSH and PR 106's `kubectl create rolebinding` wait for people (one
//! approved, two denied with reasons); the contractor leaves: their group is taken out of the
//! policy (a live reload), which cuts their three agents off mid-session, and their identities
//! are revoked; the read-only jobs' tokens expire; then `agentgate agents` and `agentgate
//! sessions` answer which agents are active, idle, expired or revoked, which performed
//! privileged actions, and which ran which command on which host.
//!
//! `cargo xtask demo --story autogen` and tests/tests/autogen_story.rs both call [`run`]: it
//! prints the transcript and returns what happened ([`Story`]) for the test to check.

pub mod audit;
pub mod jobs;
pub mod setup;
pub mod transcript;
pub mod venv;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{now, record_query, require_root, Cgroup};

use self::{
    audit::{approvals, approvals_cli, decide, revoke},
    jobs::{launch, twelve, Running, RESTART, ROLEBINDING},
    setup::{World, CONTRACTORS, LEGACY_TABLE},
    transcript::{print_job, print_list},
};

/// TCP ports of the story's servers and gateway.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub gateway: u16,
    pub pg: u16,
    pub ssh: u16,
    /// The Kubernetes API stand-in, on 127.0.0.2.
    pub kube: u16,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Names the PostgreSQL server's and the gateway's directories.
    pub tag: String,
    pub ports: Ports,
    /// Under which cgroup the jobs' cgroups are made (`/agentgate-autogen`, say).
    pub cgroup_root: String,
    /// The story's files (policy inputs, job directories); removed afterwards.
    pub dir: PathBuf,
    /// Token lifetime of the read-only jobs, seconds: they have expired when the audit runs.
    pub short_ttl: u64,
}

/// What happened, for the test to check.
pub struct Story {
    pub jobs: Vec<JobOutcome>,
    /// `agentgate approvals list --all --json` at the end.
    pub approvals: Vec<Value>,
    /// `agentgate agents --json` at the end.
    pub agents: Vec<Value>,
    /// `agentgate sessions list --json` at the end.
    pub sessions: Vec<Value>,
    /// From the record: subject, protocol, target, original destination, statement/command
    /// text, class, decision, rule, error: every action of every session.
    pub actions: Vec<Vec<Value>>,
    /// The `policy_applied` event of the reload that removed the contractors' group.
    pub reload: Value,
    /// Whether the database still has the table PR 102 dropped, after the story.
    pub legacy_table_left: bool,
    /// Whether the API server has PR 106's rolebinding.
    pub rolebinding_created: bool,
}

/// One job as it ended (or, for the one still at work, as it was at the audit).
pub struct JobOutcome {
    pub pr: u32,
    pub subject: String,
    pub group: String,
    pub contractor: bool,
    pub token_exp: u64,
    pub messages: Vec<Value>,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub finished: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn example_dir() -> PathBuf {
    workspace_root().join("examples").join("autogen")
}

pub fn team_script() -> PathBuf {
    example_dir().join("team.py")
}

/// Runs the whole story; prints its transcript on stdout.
pub fn run(opts: &Options) -> Story {
    require_root();
    let started = Instant::now();
    let python = venv::python();
    println!(
        "== the example's Python packages (examples/autogen/requirements.txt, pinned) are in {}",
        python
            .parent()
            .and_then(Path::parent)
            .unwrap_or(&python)
            .display()
    );
    // Declared first so that it is removed last, after the gateway and the jobs' cgroups.
    let _anchor = Cgroup::create(&opts.cgroup_root);
    let _dir = RemoveDir(opts.dir.clone());
    let world = World::start(opts);
    println!(
        "== PostgreSQL on 127.0.0.1:{} (database appdb: customers with personal data, {LEGACY_TABLE}), \
         the build host's sshd on 127.0.0.1:{}, the Kubernetes API on 127.0.0.2:{}: the agents are given these addresses, nothing else",
        opts.ports.pg, opts.ports.ssh, opts.ports.kube
    );
    println!(
        "== agentgate (pid {}) with the team's policy: workload pr-jobs = cgroups {}/pr-*, token from the credential the client presents; \
         groups ci-agents and {CONTRACTORS} reach app-db, build-host and cluster-api; DDL waits for a DBA, systemctl for on-call, RBAC changes for platform; customers' PII masked",
        world.gw.pid(),
        opts.cgroup_root
    );

    println!("\n== the CI launcher starts twelve PR jobs: per job a cgroup, a token from the identity provider, a kubeconfig holding it, and the AutoGen team in the cgroup");
    let mut running: Vec<Running> = twelve(opts.short_ttl)
        .into_iter()
        .map(|spec| launch(spec, opts, &world.files, &python))
        .collect();
    let t0 = now();
    for j in &running {
        println!(
            "   PR {} by {:<5} group {:<16} cgroup {:<28} token sub={} valid {} s",
            j.spec.pr,
            j.spec.author,
            j.spec.group,
            j.cgroup.rel,
            j.subject,
            j.token_exp - t0
        );
    }

    held_for_people(&world, &running);

    println!("\n== the reviews and the held steps end; what each team's agents did and saw (tool results exactly as AutoGen handed them to the agents):");
    for j in running
        .iter_mut()
        .filter(|j| !j.spec.contractor() && j.spec.pr != 112)
    {
        j.wait(Duration::from_secs(180));
        print_job(j);
    }

    let reload = contractor_leaves(opts, &world, &mut running);

    let last = running
        .iter()
        .filter(|j| j.spec.ttl == opts.short_ttl)
        .map(|j| j.token_exp)
        .max()
        .unwrap_or(0);
    if now() <= last {
        println!(
            "\n== waiting {} s for the read-only jobs' tokens to expire (PR 112 is still at work)",
            last + 1 - now()
        );
    }
    while now() <= last {
        std::thread::sleep(Duration::from_millis(200));
    }

    let db = world.gw.record_db();
    println!("\n== the audit's three questions, answered from the record");
    println!("-- which agents are active, idle, expired or revoked, and which performed privileged actions:");
    println!("   $ agentgate agents");
    print_list(&audit::cli(&["agents", "--record-db"], &db, &[]));
    let agents = audit::json(&["agents", "--record-db"], &db, &["--json"]);
    println!("-- which agent executed which command on which host:");
    println!("   $ agentgate sessions list");
    print_list(&audit::cli(&["sessions", "--record-db"], &db, &["list"]));
    let sessions = audit::json(&["sessions", "--record-db"], &db, &["list", "--json"]);
    let actions = record_query(
        &db,
        "SELECT s.subject, s.protocol, s.target, s.original_dst, t.text, t.class, t.decision, \
                t.rule, t.error \
         FROM statements t JOIN sessions s ON s.id = t.session ORDER BY s.subject, t.started_ms",
    );
    transcript::print_actions(&actions);
    let approvals = approvals(&world.gw, true);
    let legacy_table_left = world
        .pg
        .sql_in(
            "appdb",
            &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{LEGACY_TABLE}';"),
        )
        .trim()
        == "1";
    let rolebinding_created = world
        .standin
        .get(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "default",
            ROLEBINDING,
        )
        .is_some();
    let jobs = running
        .iter_mut()
        .map(|j| JobOutcome {
            pr: j.spec.pr,
            subject: j.subject.clone(),
            group: j.spec.group.to_string(),
            contractor: j.spec.contractor(),
            token_exp: j.token_exp,
            finished: j.finished(),
            messages: j.messages(),
            stderr: j.stderr(),
            exit_code: j.exit_code(),
        })
        .collect();
    println!(
        "\n== done in {:.0} s: cleaning up (PR 112's team, the gateway, PostgreSQL, sshd, the API stand-in, cgroups, files)",
        started.elapsed().as_secs_f64()
    );
    Story {
        jobs,
        approvals,
        agents: agents.as_array().cloned().unwrap_or_default(),
        sessions: sessions.as_array().cloned().unwrap_or_default(),
        actions,
        reload,
        legacy_table_left,
        rolebinding_created,
    }
}

/// PR 102's DROP TABLE, PR 103's `systemctl restart` and PR 106's `kubectl create rolebinding`
/// wait on their connections; a DBA approves the first, on-call and platform deny the others,
/// with reasons, through `agentgate approvals` as root on the node.
fn held_for_people(world: &World, running: &[Running]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let pending = loop {
        let p = approvals(&world.gw, false);
        if p.len() >= 3 {
            break p;
        }
        if Instant::now() > deadline {
            let out: Vec<String> = running
                .iter()
                .map(|j| format!("PR {}: {:?}\n{}", j.spec.pr, j.messages(), j.stderr()))
                .collect();
            panic!(
                "three held requests expected, have {p:?}\n{}",
                out.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("\n== three agents' steps are held on their open connections; the approvers look:");
    println!("   $ agentgate approvals list");
    print_list(&approvals_cli(&world.gw, &["list"]));
    let by = |subject: &str| {
        pending
            .iter()
            .find(|r| r["subject"] == subject)
            .unwrap_or_else(|| panic!("no held request of {subject}: {pending:?}"))
    };
    let drop = by("autogen-pr-102");
    let restart = by("autogen-pr-103");
    let binding = by("autogen-pr-106");
    decide(
        &world.gw,
        drop,
        None,
        "a DBA: the migration in PR 102 drops a table nothing reads",
    );
    decide(
        &world.gw,
        restart,
        Some("restarts go through the deploy pipeline, not a review job"),
        &format!("on-call: `{RESTART}` from a review job"),
    );
    decide(
        &world.gw,
        binding,
        Some("no cluster-admin bindings for agents; ask platform for a scoped role"),
        "platform: a cluster-admin binding",
    );
}

/// The contractor's three agents hold sessions open (a long review step); the contractor
/// leaves: their group is removed from the policy, a live reload, and each live session of theirs
/// ends at once; then their identities are revoked so that the record says so for good.
fn contractor_leaves(opts: &Options, world: &World, running: &mut [Running]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let watching = |j: &Running| j.called("watch_query");
    while !running
        .iter()
        .filter(|j| j.spec.contractor() || j.spec.pr == 112)
        .all(watching)
    {
        assert!(
            Instant::now() < deadline,
            "the long review steps did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each long step's session live on record with a poll or two in it, so the cut lands
    // mid-session (on a slow machine the tool call may come well before its connection).
    let db = world.gw.record_db();
    let long: Vec<String> = running
        .iter()
        .filter(|j| j.spec.contractor() || j.spec.pr == 112)
        .map(|j| j.subject.clone())
        .collect();
    loop {
        let live = audit::json(
            &["sessions", "--record-db"],
            &db,
            &["list", "--status", "live", "--json"],
        );
        let polling = |subject: &String| {
            live.as_array().into_iter().flatten().any(|s| {
                s["subject"] == subject.as_str()
                    && s["target"] == "app-db"
                    && s["statements"].as_i64().unwrap_or(0) >= 2
            })
        };
        if long.iter().all(polling) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long review steps' sessions are not live: {live}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\n== the contractor (group {CONTRACTORS}) leaves while PRs 104, 108 and 111 are mid-review:");
    println!("   $ agentgate sessions list --status live");
    print_list(&audit::cli(
        &["sessions", "--record-db"],
        &world.gw.record_db(),
        &["list", "--status", "live"],
    ));
    println!("   the policy file is rewritten without {CONTRACTORS} in rules pr-jobs-to-db-and-cluster and pr-jobs-to-build-host (the gateway watches it):");
    let reload = world.drop_contractors(opts);
    println!(
        "   event policy_applied: version {}",
        reload["version"].as_str().unwrap_or("?")
    );
    for j in running.iter_mut().filter(|j| j.spec.contractor()) {
        j.wait(Duration::from_secs(60));
        print_job(j);
    }
    println!("   and their identities are revoked, so they stay out even if the group came back:");
    for j in running.iter().filter(|j| j.spec.contractor()) {
        let out = revoke(&world.gw, &j.subject, "contractor Acme offboarded");
        println!(
            "   $ agentgate revoke --identity {} --reason 'contractor Acme offboarded'",
            j.subject
        );
        print_list(&out);
    }
    reload
}

/// Removes the story's directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
