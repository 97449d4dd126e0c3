//! Identity and policy enforcement end to end: tokens read from the workload's own filesystem,
//! refusals with their reasons, sessions that end at the token's `exp`, and live policy reload
//! under traffic. Root required (real eBPF, cgroups).

use std::{os::unix::fs::PermissionsExt, time::Duration};

use agentgate_tests::*;

/// The refusal the gateway logged for the agent process `pid`.
fn refusal_of(gw: &Gateway, pid: u32) -> serde_json::Value {
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "refused" && e["pid"] == pid,
        0,
    )
}

#[test]
fn token_from_the_workloads_file_decides() {
    let HostSetup {
        token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        gw,
    } = host_setup("tokenfile", 16901, 17901, &["127.0.0.2"]);

    // Valid: relayed, and the gateway knows who it was.
    let r = probe(Some(&agent), None, target.addr);
    assert!(r.greeting.starts_with("peer=") && !r.went_direct(), "{r:?}");
    let ev = gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "allowed" && e["pid"] == r.pid,
        0,
    );
    assert_eq!(s(&ev, "subject"), "agent-tokenfile");
    assert_eq!(s(&ev, "rule"), "agents-to-svc");
    assert_eq!(target.count(), 1);

    let cases: [(&str, Option<String>); 4] = [
        (
            "expired",
            Some(mint("agent-x", &["agents"], now() - 1200, now() - 600)),
        ),
        (
            "lifetime_too_long",
            Some(mint("agent-x", &["agents"], now(), now() + 3600)),
        ),
        (
            "denied",
            Some(mint("agent-x", &["other-team"], now(), now() + 600)),
        ),
        ("no_token", None),
    ];
    for (code, content) in cases {
        match &content {
            Some(t) => token.write(t),
            None => std::fs::remove_file(&token.path).unwrap(),
        }
        let r = probe(Some(&agent), None, target.addr);
        assert!(
            !r.greeting.starts_with("peer="),
            "{code}: the agent got through: {r:?}"
        );
        let ev = refusal_of(&gw, r.pid);
        assert_eq!(s(&ev, "code"), code, "{ev}");
        if code == "denied" {
            // A valid token the rules refuse: the event says whose it was.
            assert_eq!(s(&ev, "subject"), "agent-x", "{ev}");
        }
    }
    assert_eq!(
        target.count(),
        1,
        "no refused connection reached the target"
    );

    // The gateway reads the token as the agent would: a symlink to a file the agent's user may
    // not read (another agent's token, say) gets it nothing, though the gateway is root.
    let secret = TokenFile {
        path: token.path.with_extension("root-only"),
    };
    secret.write(&mint("agent-tokenfile", &["agents"], now(), now() + 600));
    std::fs::set_permissions(&secret.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = std::fs::remove_file(&token.path);
    std::os::unix::fs::symlink(&secret.path, &token.path).unwrap();
    let r = probe_as(Some(65534), Some(&agent), None, target.addr);
    assert!(!r.greeting.starts_with("peer="), "{r:?}");
    let ev = refusal_of(&gw, r.pid);
    assert_eq!(s(&ev, "code"), "no_token", "{ev}");
    assert!(
        s(&ev, "reason").contains("not readable by the workload"),
        "{ev}"
    );
    // The same link for a root agent, which may read the file: allowed.
    let r = probe(Some(&agent), None, target.addr);
    assert!(r.greeting.starts_with("peer="), "{r:?}");
    assert_eq!(target.count(), 2);
}

#[test]
fn a_session_ends_when_its_token_expires() {
    let HostSetup {
        token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        gw,
    } = host_setup("expiry", 16902, 17902, &["127.0.0.2"]);
    let exp = now() + 3;
    token.write(&mint("agent-expiry", &["agents"], now(), exp));
    let report = hold(&agent, target.addr, 20).join().unwrap();
    assert!(s(&report, "greeting").starts_with("peer="), "{report}");
    let ended_ms = report["ended_ms"].as_u64().unwrap();
    let exp_ms = exp * 1000;
    assert!(
        ended_ms + 50 >= exp_ms && ended_ms <= exp_ms + 1000,
        "session ended at {ended_ms}, token expired at {exp_ms}"
    );
    let ev = gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "connection_close",
        0,
    );
    assert_eq!(s(&ev, "ended_by"), "token expired", "{ev}");
    // What went through before the end is still accounted for: the target's greeting.
    assert!(ev["bytes_down"].as_u64().unwrap_or(0) > 0, "{ev}");
}

#[test]
fn reload_under_live_traffic() {
    let HostSetup {
        token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        gw,
    } = host_setup("reload", 16903, 17903, &["127.0.0.2"]);
    let live = gw.policy_dir().join("policy.yaml");
    let allow_text = std::fs::read_to_string(&live).unwrap();
    // The same policy with the rule turned into a deny: same principals, opposite effect.
    let deny_text = allow_text.replace(
        "  - name: agents-to-svc\n",
        "  - name: agents-to-svc\n    effect: deny\n",
    );
    assert_ne!(allow_text, deny_text);
    let versions = |text: &str| {
        let d = std::env::temp_dir().join(unique(&format!("reload-v-{}", text.len())));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("policy.yaml"), text).unwrap();
        let v = policy_version(&d);
        std::fs::remove_dir_all(&d).unwrap();
        v
    };
    let (allow_v, deny_v) = (versions(&allow_text), versions(&deny_text));
    assert_eq!(gw.status()["policy"]["version"], allow_v.as_str());

    // Sessions opened under the allowing policy, held open across the first flip to deny.
    let held: Vec<_> = (0..5).map(|_| hold(&agent, target.addr, 30)).collect();
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "connection_open",
        4,
    );

    // 100 connections while the policy flips 50 times. Each state stands 150 ms, longer than
    // the reload debounce, so every flip is put in force; the connections are spread over it.
    let results: Vec<ProbeResult> = std::thread::scope(|sc| {
        let traffic = sc.spawn(|| {
            (0..100)
                .map(|_| {
                    std::thread::sleep(Duration::from_millis(70));
                    probe(Some(&agent), None, target.addr)
                })
                .collect::<Vec<_>>()
        });
        for i in 0..50 {
            let text = if i % 2 == 0 { &deny_text } else { &allow_text };
            // Replaced in one step, the way a ConfigMap update lands.
            let tmp = live.with_extension("yaml.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &live).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
        traffic.join().unwrap()
    });
    // The last write (i = 49) was the allowing policy.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.status()["policy"]["version"] != allow_v.as_str() {
        assert!(
            std::time::Instant::now() < deadline,
            "the last policy never applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let flips = gw.count("policy_applied");
    // Each state stands longer than the debounce; allow for a loaded machine merging some.
    assert!(
        flips >= 25,
        "the policy must have flipped under traffic ({flips} applied)"
    );

    // The held sessions were ended by the first deny, soon after it was put in force.
    let events = gw.events();
    let first_deny_ms = events
        .iter()
        .find(|e| e["event"] == "policy_applied" && e["version"] == deny_v.as_str())
        // When it was swapped in (`applied_ms` is later: once the sessions it withdraws are
        // done forwarding), by which time sessions may already be ending.
        .and_then(|e| e["swapped_ms"].as_u64())
        .expect("the deny policy was applied");
    for h in held {
        let report = h.join().unwrap();
        let pid = report["pid"].as_u64().unwrap();
        let close = events
            .iter()
            .find(|e| e["event"] == "connection_close" && e["pid"] == pid)
            .unwrap_or_else(|| panic!("held session {pid} was not closed: {report}"));
        assert!(
            s(close, "ended_by").contains("no longer allows this session"),
            "{close}"
        );
        let ended = report["ended_ms"].as_u64().unwrap();
        assert!(
            ended >= first_deny_ms && ended < first_deny_ms + 1000,
            "held session {pid} ended at {ended}, deny applied at {first_deny_ms}"
        );
    }

    // No connection was let through under the deny policy.
    let allowed: Vec<_> = events.iter().filter(|e| e["event"] == "allowed").collect();
    assert!(
        allowed
            .iter()
            .all(|e| e["policy_version"] == allow_v.as_str()),
        "a connection was allowed under a policy that denies it"
    );
    // Each of the 100 was decided exactly once, and nothing went around the gateway.
    let (mut allowed_n, mut denied_n) = (0, 0);
    for r in &results {
        // The gateway's upstream socket may get the same ephemeral port as the agent's (their
        // destinations differ): only a connection the gateway never relayed went direct.
        assert!(
            !r.went_direct() || relayed(&events, r),
            "went around the gateway: {r:?}"
        );
        let decisions: Vec<_> = events
            .iter()
            .filter(|e| e["pid"] == r.pid && (e["event"] == "allowed" || e["event"] == "refused"))
            .collect();
        assert_eq!(decisions.len(), 1, "pid {}: {decisions:?}", r.pid);
        match s(decisions[0], "event") {
            "allowed" => allowed_n += 1,
            _ => {
                assert_eq!(s(decisions[0], "code"), "denied", "{}", decisions[0]);
                assert!(
                    !r.greeting.starts_with("peer="),
                    "refused yet relayed: {r:?}"
                );
                denied_n += 1;
            }
        }
    }
    assert!(
        allowed_n > 0 && denied_n > 0,
        "both policies were in force at times ({allowed_n} allowed, {denied_n} denied)"
    );
    assert_eq!(deny_v.len(), 16);

    // A broken file is refused whole: the last good policy stays, the error names file:line:col.
    std::fs::write(
        gw.policy_dir().join("zz-broken.yaml"),
        "version: 2\nrules:\n  - name: [\n",
    )
    .unwrap();
    gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "policy_refused",
        0,
    );
    let status = gw.status();
    assert_eq!(status["policy"]["version"], allow_v.as_str(), "{status}");
    let err = s(&status["policy"]["last_error"], "message").to_string();
    let at = err
        .split("zz-broken.yaml:")
        .nth(1)
        .unwrap_or_else(|| panic!("file not named: {err}"));
    let mut parts = at.split(':');
    let line: u32 = parts.next().and_then(|l| l.parse().ok()).expect("line");
    let col: u32 = parts.next().and_then(|c| c.parse().ok()).expect("column");
    assert!(line >= 3 && col >= 1, "{err}");
    let r = probe(Some(&agent), None, target.addr);
    assert!(
        r.greeting.starts_with("peer="),
        "last good policy still allows: {r:?}"
    );
    drop(token);
}

#[test]
fn a_workload_cannot_hold_more_sessions_than_its_share() {
    require_root();
    let name = unique("limit");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let target = TargetServer::start("127.0.0.2:17904".parse().unwrap());
    let token = TokenFile::valid("limit");
    let text = policy(
        16904,
        &format!("/{name}/job-*"),
        "host",
        &["127.0.0.2"],
        17904,
        &token.path,
    )
    .replace(
        "  listen_port: 16904\n",
        "  listen_port: 16904\n  max_connections_per_workload: 2\n",
    );
    let gw = Gateway::start("limit", &text);
    gw.wait_classified(&agent.rel);
    let held: Vec<_> = (0..2).map(|_| hold(&agent, target.addr, 3)).collect();
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "connection_open",
        1,
    );
    let r = probe(Some(&agent), None, target.addr);
    assert!(!r.greeting.starts_with("peer="), "{r:?}");
    assert_eq!(s(&refusal_of(&gw, r.pid), "code"), "limit");
    for h in held {
        h.join().unwrap();
    }
    // Once the held sessions are gone, there is room again.
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "connection_close",
        1,
    );
    let r = probe(Some(&agent), None, target.addr);
    assert!(r.greeting.starts_with("peer="), "{r:?}");
}

/// The gateway relayed this probe's connection: it saw the agent's pid from the agent's own
/// address.
fn relayed(events: &[serde_json::Value], r: &ProbeResult) -> bool {
    let Some(local) = r.local else {
        return false;
    };
    events.iter().any(|e| {
        e["event"] == "connection_open" && e["pid"] == r.pid && e["peer"] == local.to_string()
    })
}
