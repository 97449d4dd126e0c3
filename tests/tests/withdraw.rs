//! Withdrawing access is atomic: once the gateway says a policy that withdraws a session's
//! access is applied (`policy_applied`), nothing more of that session reaches the target. Real
//! PostgreSQL, the real gateway, tokio-postgres agents in a managed cgroup whose connect() is
//! captured, the policy flipped many times under live traffic. Root required.
//!
//! What counts as a leak, without any timing allowance: a SELECT that the server ran (the agent
//! got its row, with the server's `clock_timestamp()`) although the agent sent it after the
//! withdrawing policy's `applied_ms` and before the test wrote the restoring policy. The agent
//! and the gateway share this machine's clock; `applied_ms` is truncated to the millisecond, so
//! "after" starts at the next millisecond.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentgate_tests::{bg::Bg, pg::*, *};
use serde_json::Value;

const SESSIONS: usize = 50;
const FLIPS: usize = 20;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Replaces the policy file in one step (as a ConfigMap update lands) and waits for the gateway
/// to apply it; returns the `policy_applied` event.
fn flip(p: &PgGateway, text: &str) -> Value {
    let live = p.gw.policy_dir().join("policy.yaml");
    let before = p.gw.count("policy_applied");
    let tmp = live.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    p.gw.wait_for(
        Duration::from_secs(15),
        |e| e["event"] == "policy_applied",
        before,
    )
}

/// Live sessions the gateway holds (its status).
fn live_sessions(p: &PgGateway) -> u64 {
    p.gw.status()["sessions"].as_u64().unwrap_or(0)
}

#[test]
fn withdrawn_postgres_sessions_run_nothing_after_policy_applied() {
    let opts = PgTargetOptions::default();
    let p = PgGateway::start("withdraw", 19900, 19901, PgOptions::default(), &opts);
    let allow_text = pg_policy(p.listen, &p.name, p.pg.port, &p.secret, &p.token.path, &opts);
    // The same policy with the agents' rule turned into a deny: their access is withdrawn.
    let deny_text = allow_text.replace(
        "  - name: agents-to-pg\n",
        "  - name: agents-to-pg\n    effect: deny\n",
    );
    assert_ne!(allow_text, deny_text);

    let mut agents: Vec<Bg> = (0..SESSIONS)
        .map(|i| {
            let conn = p.agent_conninfo(&agent_jwt(&format!("withdraw-{i}")), "disable");
            let mut cmd = std::process::Command::new(pg_agent_bin());
            cmd.args(["loop", &conn, "600"]);
            Bg::spawn("pg-agent loop", cmd, &p.agent)
        })
        .collect();
    wait_until("all agents connected", Duration::from_secs(60), || {
        live_sessions(&p) >= SESSIONS as u64
    });

    // (withdrawing policy applied, restoring policy written), in ms.
    let mut windows = Vec::new();
    let mut ended_by_reload = Vec::new();
    for _ in 0..FLIPS {
        let applied = flip(&p, &deny_text);
        let applied_ms = applied["applied_ms"].as_u64().expect("applied_ms");
        ended_by_reload.push(applied["sessions_ended"].clone());
        // The agents keep sending (and reconnecting, refused) while access is withdrawn.
        std::thread::sleep(Duration::from_millis(300));
        let restore_written = now_ms();
        flip(&p, &allow_text);
        windows.push((applied_ms, restore_written));
        wait_until("the agents reconnected", Duration::from_secs(60), || {
            live_sessions(&p) >= SESSIONS as u64
        });
    }

    let mut ran = Vec::new();
    let mut failed = 0;
    for a in agents.iter_mut() {
        a.send_line("stop");
    }
    for a in agents.iter_mut() {
        let line = a.wait_line(Duration::from_secs(60), |err, l| {
            !err && l.starts_with('{')
        });
        let v: Value = serde_json::from_str(&line).expect("pg-agent loop output");
        failed += v["failed"].as_u64().unwrap();
        for r in v["ran"].as_array().unwrap() {
            ran.push((r[0].as_i64().unwrap(), r[1].as_i64().unwrap()));
        }
    }

    let within = |t_us: i64| {
        windows.iter().any(|&(applied, restore)| {
            t_us >= (applied as i64 + 1) * 1000 && t_us < restore as i64 * 1000
        })
    };
    // Sent after the withdrawal was in force, and yet run by the server.
    let leaked: Vec<_> = ran.iter().filter(|(sent, _)| within(*sent)).collect();
    // Run by the server (its clock) after the withdrawal was in force: for information; a
    // statement forwarded just before may start on the server a moment after.
    let ran_after = ran.iter().filter(|(_, server)| within(*server)).count();
    eprintln!(
        "{} SELECTs ran, {failed} ended in error; {} sent after a withdrawal was in force; \
         {ran_after} ran on the server after it; sessions ended by each reload: {ended_by_reload:?}",
        ran.len(),
        leaked.len()
    );
    assert!(
        leaked.is_empty(),
        "{} SELECTs sent after the withdrawing policy was applied ran on the server \
         (first: {:?}; windows {:?})",
        leaked.len(),
        &leaked[..leaked.len().min(10)],
        windows
    );

    // Not vacuous: the agents ran statements between the flips, and every withdrawal ended
    // live sessions (each agent's session fails at least once per withdrawal).
    let between = ran
        .iter()
        .filter(|(sent, _)| {
            windows
                .iter()
                .any(|&(_, restore)| *sent > restore as i64 * 1000)
        })
        .count();
    assert!(between > 0, "no statement ran after a restore");
    assert!(
        failed as usize >= FLIPS * SESSIONS / 2,
        "withdrawals ended only {failed} sessions"
    );
    for (i, ended) in ended_by_reload.iter().enumerate() {
        assert!(
            ended.as_u64().unwrap_or(0) > 0,
            "withdrawal {i} ended no session by itself: {ended}"
        );
    }
}
