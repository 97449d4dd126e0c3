//! Withdrawing access is atomic: once the gateway says a policy that withdraws a session's
//! access is applied (`policy_applied`), nothing more of that session reaches the target. Real
//! PostgreSQL, the real gateway, tokio-postgres agents in a managed cgroup whose connect() is
//! captured, the policy flipped many times under live traffic. Root required.
//!
//! What counts as a leak, exactly and without any timing allowance: a SELECT the server ran
//! (the agent got its row, with the server's `clock_timestamp()`) between the withdrawing
//! policy's `applied_ms` and the moment the test wrote the restoring policy, that the gateway
//! must have forwarded after `applied_ms`: because the agent sent it after, or because the
//! previous SELECT on the same connection already ran on the server after (the agents send one
//! Query at a time, so the next is forwarded only once the previous one ran). A SELECT forwarded
//! just before the policy was in force may start on the server a moment after: that one is not
//! a leak. The agents and the gateway share this machine's clock; `applied_ms` is truncated to
//! the millisecond, so "after" starts at the next millisecond.

use std::{
    io::{Read, Write},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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
    let allow_text = pg_policy(
        p.listen,
        &p.name,
        p.pg.port,
        &p.secret,
        &p.token.path,
        &opts,
    );
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

    // (agent, connection, sent_us, server_us), in the order each agent ran them.
    let mut ran = Vec::new();
    let mut failed = 0;
    for a in agents.iter_mut() {
        a.send_line("stop");
    }
    for (i, a) in agents.iter_mut().enumerate() {
        let line = a.wait_line(Duration::from_secs(60), |err, l| !err && l.starts_with('{'));
        let v: Value = serde_json::from_str(&line).expect("pg-agent loop output");
        failed += v["failed"].as_u64().unwrap();
        for r in v["ran"].as_array().unwrap() {
            let n = |k: usize| r[k].as_i64().unwrap();
            ran.push((i, n(0), n(1), n(2)));
        }
    }

    // The withdrawal window a time (us) falls in.
    let window = |t_us: i64| {
        windows.iter().position(|&(applied, restore)| {
            t_us >= (applied as i64 + 1) * 1000 && t_us < restore as i64 * 1000
        })
    };
    let mut leaked = Vec::new();
    let mut ran_after = 0;
    for (k, &(agent, conn, sent, server)) in ran.iter().enumerate() {
        let Some(w) = window(server) else { continue };
        ran_after += 1;
        let previous_ran_after = k > 0
            && ran[k - 1].0 == agent
            && ran[k - 1].1 == conn
            && window(ran[k - 1].3) == Some(w);
        if window(sent) == Some(w) || previous_ran_after {
            leaked.push(ran[k]);
        }
    }
    eprintln!(
        "{} SELECTs ran, {failed} ended in error; {ran_after} ran on the server after a withdrawal was in force, {} of them forwarded after it; sessions ended by each reload: {ended_by_reload:?}",
        ran.len(),
        leaked.len()
    );
    assert!(
        leaked.is_empty(),
        "{} SELECTs forwarded after the withdrawing policy was applied ran on the server (agent, connection, sent us, ran us; first: {:?}; windows (applied ms, restore ms) {:?})",
        leaked.len(),
        &leaked[..leaked.len().min(10)],
        windows
    );

    // Not vacuous: the agents ran statements between the flips, and every withdrawal ended
    // live sessions (each agent's session fails at least once per withdrawal).
    let between = ran
        .iter()
        .filter(|(_, _, sent, _)| {
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

/// An agent over plain TCP: sends a line (the time it is sent, in microseconds), waits for its
/// echo, again, reconnecting whenever the connection ends, until a line arrives on stdin; then
/// prints what it did.
const TCP_AGENT: &str = r#"
import json, socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
echoed = connects = ended = 0
while not stop.is_set():
    try:
        s = socket.create_connection((host, port), timeout=10)
    except OSError:
        time.sleep(0.02)
        continue
    connects += 1
    try:
        while not stop.is_set():
            s.sendall(b"%d\n" % (time.time_ns() // 1000))
            if not s.recv(64):
                raise OSError("closed")
            echoed += 1
    except OSError:
        ended += 1
        time.sleep(0.02)
    s.close()
print(json.dumps({"echoed": echoed, "connects": connects, "ended": ended}), flush=True)
"#;

/// What the TCP target received: (connection, sent_us as the agent wrote it, received_us).
type Received = Arc<Mutex<Vec<(usize, i64, i64)>>>;

/// The TCP target: echoes what it reads and notes each line with when it arrived.
fn echo_server(addr: &str) -> Received {
    let listener = std::net::TcpListener::bind(addr).expect("bind the echo target");
    let seen: Received = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (conn, s) in listener.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let at = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_micros() as i64;
                    for line in String::from_utf8_lossy(&buf[..n]).lines() {
                        let sent = line.trim().parse().unwrap_or(i64::MAX);
                        log.lock().unwrap().push((conn, sent, at));
                    }
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    seen
}

/// The same over an opaque TCP target: no chunk of a withdrawn session reaches the target after
/// `policy_applied`. A line the target received was forwarded after the withdrawal was in force
/// if the agent sent it after, or if it is the second line the target received on one
/// connection after (the agents send one line at a time and wait for its echo); the first may
/// have been forwarded just before.
#[test]
fn withdrawn_tcp_sessions_send_nothing_after_policy_applied() {
    const AGENTS: usize = 30;
    require_root();
    let name = unique("withdraw-tcp");
    // Dropped in reverse: the agents, the gateway, then the cgroups.
    let _anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let received = echo_server("127.0.0.2:19911");
    let token = TokenFile::valid("withdraw-tcp");
    let allow_text = policy(
        19910,
        &format!("/{name}/job-*"),
        "host",
        &["127.0.0.2"],
        19911,
        &token.path,
    );
    let deny_text = allow_text.replace(
        "  - name: agents-to-svc\n",
        "  - name: agents-to-svc\n    effect: deny\n",
    );
    assert_ne!(allow_text, deny_text);
    let gw = Gateway::start("withdraw-tcp", &allow_text);
    gw.wait_classified(&agent.rel);
    let live_path = gw.policy_dir().join("policy.yaml");
    let flip = |text: &str| {
        let before = gw.count("policy_applied");
        let tmp = live_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &live_path).unwrap();
        gw.wait_for(
            Duration::from_secs(15),
            |e| e["event"] == "policy_applied",
            before,
        )
    };
    let live = || gw.status()["sessions"].as_u64().unwrap_or(0);

    let mut agents: Vec<Bg> = (0..AGENTS)
        .map(|_| {
            let mut cmd = std::process::Command::new(python());
            cmd.args(["-c", TCP_AGENT, "127.0.0.2", "19911"]);
            Bg::spawn("tcp agent", cmd, &agent)
        })
        .collect();
    wait_until("all agents connected", Duration::from_secs(60), || {
        live() >= AGENTS as u64
    });
    let mut windows = Vec::new();
    let mut ended_by_reload = Vec::new();
    for _ in 0..FLIPS {
        let applied = flip(&deny_text);
        ended_by_reload.push(applied["sessions_ended"].clone());
        let applied_ms = applied["applied_ms"].as_u64().expect("applied_ms");
        std::thread::sleep(Duration::from_millis(300));
        let restore_written = now_ms();
        flip(&allow_text);
        windows.push((applied_ms, restore_written));
        wait_until("the agents reconnected", Duration::from_secs(60), || {
            live() >= AGENTS as u64
        });
    }
    let mut ended = 0;
    for a in agents.iter_mut() {
        a.send_line("stop");
    }
    for a in agents.iter_mut() {
        let line = a.wait_line(Duration::from_secs(60), |err, l| !err && l.starts_with('{'));
        let v: Value = serde_json::from_str(&line).expect("tcp agent output");
        ended += v["ended"].as_u64().unwrap();
    }

    let window = |t_us: i64| {
        windows.iter().position(|&(applied, restore)| {
            t_us >= (applied as i64 + 1) * 1000 && t_us < restore as i64 * 1000
        })
    };
    let received = received.lock().unwrap().clone();
    let mut first_seen = std::collections::HashSet::new();
    let (mut after, mut leaked) = (0, Vec::new());
    for &(conn, sent, at) in &received {
        let Some(w) = window(at) else { continue };
        after += 1;
        if !first_seen.insert((conn, w)) || window(sent) == Some(w) {
            leaked.push((conn, sent, at));
        }
    }
    eprintln!(
        "{} lines reached the target, {ended} connections ended; {after} reached it after a \
         withdrawal was in force, {} of them forwarded after it; sessions ended by each \
         reload: {ended_by_reload:?}",
        received.len(),
        leaked.len()
    );
    assert!(
        leaked.is_empty(),
        "{} lines forwarded after the withdrawing policy was applied reached the target \
         (connection, sent us, received us; first: {:?}; windows {:?})",
        leaked.len(),
        &leaked[..leaked.len().min(10)],
        windows
    );
    assert!(
        received
            .iter()
            .any(|&(_, _, at)| windows.iter().any(|&(_, r)| at > r as i64 * 1000)),
        "nothing reached the target after a restore"
    );
    assert!(
        ended as usize >= FLIPS * AGENTS / 2,
        "withdrawals ended only {ended} connections"
    );
    for (i, n) in ended_by_reload.iter().enumerate() {
        assert!(
            n.as_u64().unwrap_or(0) > 0,
            "withdrawal {i} ended no session by itself: {n}"
        );
    }
}
