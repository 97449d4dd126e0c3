//! The AutoGen story end to end (issue 23): twelve PR jobs, each an unchanged AutoGen AgentChat
//! team (examples/autogen/team.py, on autogen-ext's replay client) in its own cgroup with its own
//! short-lived token, reach PostgreSQL, an SSH build host and a Kubernetes API only through the
//! gateway. Runs the same code as `cargo xtask demo --story autogen` (agentgate_tests::autogen)
//! and checks what the story must show: no raw personal data reached any agent, the three held
//! steps and their outcomes, the contractor's agents cut off mid-session by the reload, and the
//! inventory and records `agentgate agents` and `sessions` answer the audit with.
//!
//! Ports: 21060–21063 (gateway, PostgreSQL, sshd, the API stand-in on 127.0.0.2).

use agentgate_tests::{
    autogen::{self, setup::RAW_PII, JobOutcome, Options, Ports, Story},
    unique,
};
use serde_json::Value;

fn job(story: &Story, pr: u32) -> &JobOutcome {
    story
        .jobs
        .iter()
        .find(|j| j.pr == pr)
        .unwrap_or_else(|| panic!("no PR {pr}"))
}

/// The results the agents' tool calls returned, as AutoGen handed them over.
fn tool_results(j: &JobOutcome, tool: &str) -> Vec<String> {
    j.messages
        .iter()
        .filter(|m| m["type"] == "ToolCallExecutionEvent")
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["name"] == tool)
        .map(|c| c["content"].as_str().unwrap_or("").to_string())
        .collect()
}

fn agent(story: &Story, pr: u32) -> &Value {
    let subject = format!("autogen-pr-{pr}");
    story
        .agents
        .iter()
        .find(|a| a["subject"] == subject.as_str())
        .unwrap_or_else(|| panic!("{subject} not in `agentgate agents`: {:?}", story.agents))
}

fn request(story: &Story, pr: u32) -> &Value {
    let subject = format!("autogen-pr-{pr}");
    let found: Vec<&Value> = story
        .approvals
        .iter()
        .filter(|r| r["subject"] == subject.as_str())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{subject}'s requests: {:?}",
        story.approvals
    );
    found[0]
}

/// (subject, target, destination, text, decision, rule) of every action on record.
fn actions(story: &Story) -> Vec<[String; 6]> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    story
        .actions
        .iter()
        .map(|r| [s(&r[0]), s(&r[2]), s(&r[3]), s(&r[4]), s(&r[6]), s(&r[7])])
        .collect()
}

#[test]
fn the_autogen_story() {
    let tag = unique("autogen");
    let started = std::time::Instant::now();
    let story = autogen::run(&Options {
        tag: tag.clone(),
        ports: Ports {
            gateway: 21060,
            pg: 21061,
            ssh: 21062,
            kube: 21063,
        },
        cgroup_root: format!("/{tag}"),
        dir: std::env::temp_dir().join(&tag),
        short_ttl: 60,
    });
    eprintln!("the story took {:.0} s", started.elapsed().as_secs_f64());
    assert_eq!(story.jobs.len(), 12);

    // Every team ran to its end (PR 112 is still at work at the audit, by design).
    for j in story.jobs.iter().filter(|j| j.pr != 112) {
        assert!(
            j.finished && j.exit_code == Some(0),
            "PR {}: exit {:?}\n{:?}\n{}",
            j.pr,
            j.exit_code,
            j.messages,
            j.stderr
        );
        assert!(
            j.messages
                .iter()
                .any(|m| m["type"] == "TaskResult"
                    && m["stop_reason"] == "Text 'TERMINATE' mentioned"),
            "PR {} did not end its conversation: {:?}\n{}",
            j.pr,
            j.messages,
            j.stderr
        );
    }
    assert!(!job(&story, 112).finished, "PR 112 should still be at work");

    // No raw personal value reached any agent: not in the tool results AutoGen saw, not in
    // anything the agents said. And the rows did arrive, masked (so the check is not vacuous).
    for j in &story.jobs {
        let all = j
            .messages
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for raw in RAW_PII {
            assert!(
                !all.contains(raw),
                "PR {}'s agents saw {raw:?}:\n{all}",
                j.pr
            );
        }
    }
    for pr in [101, 104, 109, 112] {
        let rows = tool_results(job(&story, pr), "sql_query").join("\n");
        for shown in [
            "1 | Alice Martin | hmac:",
            "| ****1111 | ****6789 | prefers email, cc ****",
            "2 | Bob Chen | hmac:",
            "| ****4444 | ****4320 | call after 5pm",
            "| ****0005 | ****1120 | VIP since 2019",
        ] {
            assert!(
                rows.contains(shown),
                "PR {pr}'s read lacks {shown:?}:\n{rows}"
            );
        }
    }
    let secret = tool_results(job(&story, 105), "kubectl").join("\n");
    assert!(
        secret.contains("exit 0") && secret.contains("password:"),
        "PR 105's secret read: {secret}"
    );

    // The three held steps: one approved, two denied with reasons; what each agent was told.
    let drop = request(&story, 102);
    assert_eq!(drop["state"], "approved", "{drop}");
    assert_eq!(drop["target"], "app-db", "{drop}");
    assert_eq!(drop["statement"], "DROP TABLE legacy_sessions", "{drop}");
    assert_eq!(
        tool_results(job(&story, 102), "sql_query")
            .last()
            .map(String::as_str),
        Some("DROP TABLE")
    );
    assert!(
        !story.legacy_table_left,
        "the approved DROP TABLE did not run"
    );

    let restart = request(&story, 103);
    assert_eq!(restart["state"], "denied", "{restart}");
    assert_eq!(restart["target"], "build-host", "{restart}");
    assert_eq!(restart["statement"], "systemctl restart api", "{restart}");
    let reason = "restarts go through the deploy pipeline, not a review job";
    assert_eq!(restart["reason"], reason, "{restart}");
    let told = tool_results(job(&story, 103), "ssh_run").join("\n");
    assert!(
        told.contains("exit 126") && told.contains(reason),
        "PR 103's agent was told: {told}"
    );

    let binding = request(&story, 106);
    assert_eq!(binding["state"], "denied", "{binding}");
    assert_eq!(binding["target"], "cluster-api", "{binding}");
    let reason = "no cluster-admin bindings for agents; ask platform for a scoped role";
    assert_eq!(binding["reason"], reason, "{binding}");
    assert!(
        binding["statement"]
            .as_str()
            .unwrap_or("")
            .starts_with("POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings"),
        "{binding}"
    );
    let told = tool_results(job(&story, 106), "kubectl").join("\n");
    assert!(
        told.contains("exit 1") && told.contains(reason),
        "PR 106's agent was told: {told}"
    );
    assert!(!story.rolebinding_created, "the denied rolebinding exists");
    assert_eq!(
        story.approvals.len(),
        3,
        "only the three steps were held: {:?}",
        story.approvals
    );

    // The contractor's agents were cut off mid-session by the reload; PR 112's did not notice.
    assert_eq!(story.reload["event"], "policy_applied");
    for pr in [104, 108, 111] {
        let j = job(&story, pr);
        assert!(j.contractor);
        let watched = tool_results(j, "watch_query").join("\n");
        assert!(
            watched.starts_with("session ended after")
                && !watched.starts_with("session ended after 0 "),
            "PR {pr}'s long step was not cut off mid-session: {watched}"
        );
        let subject = format!("autogen-pr-{pr}");
        let cut = story
            .sessions
            .iter()
            .filter(|s| s["subject"] == subject.as_str() && s["target"] == "app-db")
            .find(|s| s["statements"].as_i64().unwrap_or(0) > 1)
            .unwrap_or_else(|| panic!("{subject}'s long session: {:?}", story.sessions));
        let why = format!("{} {}", cut["ended_by"], cut["error"]);
        assert!(
            cut["status"] != "live" && why.contains("policy"),
            "{subject}'s long session did not end by the policy change: {cut}"
        );
    }
    assert!(
        story
            .sessions
            .iter()
            .any(|s| s["subject"] == "autogen-pr-112" && s["status"] == "live"),
        "PR 112's session: {:?}",
        story.sessions
    );

    // The inventory: who is active, idle, expired, revoked; who did privileged things.
    let status = |pr: u32| {
        agent(&story, pr)["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(status(112), "active");
    for pr in [104, 108, 111] {
        assert_eq!(status(pr), "revoked", "PR {pr}");
    }
    for pr in [101, 105, 107, 109, 110] {
        assert_eq!(status(pr), "expired", "PR {pr}");
    }
    for pr in [102, 103, 106] {
        assert_eq!(status(pr), "idle", "PR {pr}");
    }
    assert_eq!(story.agents.len(), 12, "{:?}", story.agents);
    let count = |pr: u32, k: &str| agent(&story, pr)[k].as_i64().unwrap_or(-1);
    assert!(
        count(102, "privileged_actions") >= 1,
        "{}",
        agent(&story, 102)
    );
    assert_eq!(count(102, "denied"), 0);
    assert_eq!(count(103, "denied"), 1);
    assert_eq!(count(106, "denied"), 1);
    // Agents that only read (the database, or the cluster with `kubectl get`, discovery
    // included) did nothing privileged; the SSH command of PR 108 counts.
    assert!(
        count(108, "privileged_actions") >= 1,
        "{}",
        agent(&story, 108)
    );
    for pr in [104, 109, 110, 111, 112] {
        assert_eq!(count(pr, "privileged_actions"), 0, "{}", agent(&story, pr));
        assert_eq!(count(pr, "denied"), 0, "{}", agent(&story, pr));
    }

    // The records: which agent ran which command on which host.
    let acts = actions(&story);
    let has = |subject: &str, target: &str, dst: &str, text: &str, decision: &str| {
        acts.iter().any(|a| {
            a[0] == subject
                && a[1] == target
                && a[2] == dst
                && a[3].starts_with(text)
                && a[4] == decision
        })
    };
    for (subject, target, dst, text, decision) in [
        (
            "autogen-pr-102",
            "app-db",
            "127.0.0.1:21061",
            "DROP TABLE legacy_sessions",
            "approved",
        ),
        (
            "autogen-pr-103",
            "build-host",
            "127.0.0.1:21062",
            "systemctl restart api",
            "denied",
        ),
        (
            "autogen-pr-103",
            "build-host",
            "127.0.0.1:21062",
            "uptime",
            "allowed",
        ),
        (
            "autogen-pr-107",
            "build-host",
            "127.0.0.1:21062",
            "uname -sr",
            "allowed",
        ),
        (
            "autogen-pr-108",
            "build-host",
            "127.0.0.1:21062",
            "uptime",
            "allowed",
        ),
        (
            "autogen-pr-106",
            "cluster-api",
            "127.0.0.2:21063",
            "POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            "denied",
        ),
        (
            "autogen-pr-105",
            "cluster-api",
            "127.0.0.2:21063",
            "GET /api/v1/namespaces/default/secrets/db-credentials",
            "allowed",
        ),
        (
            "autogen-pr-101",
            "app-db",
            "127.0.0.1:21061",
            "SELECT id, name, email, card_number, ssn, note FROM customers",
            "allowed",
        ),
    ] {
        assert!(
            has(subject, target, dst, text, decision),
            "no record of {subject} running {text:?} on {target} ({dst}), {decision}: {acts:?}"
        );
    }
    // The denied ones never ran, the held rule is named.
    let restart = acts
        .iter()
        .find(|a| a[3] == "systemctl restart api")
        .expect("the restart on record");
    assert_eq!(restart[5], "restarts-need-oncall");
    // Every job is on record under its own identity.
    for j in &story.jobs {
        assert!(
            acts.iter().any(|a| a[0] == j.subject),
            "{} not on record",
            j.subject
        );
    }
}
