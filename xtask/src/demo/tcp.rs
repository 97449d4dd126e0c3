//! Scene one: an agent reaches a plain TCP service only through the gateway.

use std::time::Duration;

use agentgate_tests::{mint, now, probe, s, Cgroup, Gateway, TargetServer};

use super::output::show;

const POLICY: &str = include_str!("../../../policies/demo/demo.yaml");

/// An agent reaches a plain TCP service only through the gateway (policies/demo/demo.yaml).
pub(super) fn tcp_service() -> anyhow::Result<()> {
    let service = TargetServer::start("127.0.0.2:7432".parse()?);
    println!("== a TCP service listens on 127.0.0.2:7432 (it greets each client with the address it sees)");

    let mut gw = Gateway::start("demo", POLICY);
    println!(
        "== agentgate runs (pid {}) with policies/demo/demo.yaml",
        gw.pid()
    );
    let agent = Cgroup::create("/agentgate-demo/agent-1");
    let ev = gw.wait_classified(&agent.rel);
    println!(
        "== a CI job creates cgroup {} -> gateway classifies it: workload {}",
        agent.rel,
        s(&ev, "workload")
    );

    let r = probe(Some(&agent), None, service.addr);
    println!(
        "\n-- agent in {} connects to 127.0.0.2:7432, unmodified:",
        agent.rel
    );
    println!(
        "   its socket: local {}, getpeername() {}",
        show(r.local),
        show(r.peer)
    );
    println!("   the service says: {}", r.greeting);
    let ev = gw.connection_of(r.pid);
    println!(
        "   the gateway recorded: conn {} from pid {} cgroup {} (workload {}) as {} to {} via target `{}`",
        ev["conn"],
        ev["pid"],
        s(&ev, "cgroup"),
        s(&ev, "workload"),
        s(&ev, "subject"),
        s(&ev, "original_dst"),
        s(&ev, "target")
    );
    println!(
        "   => {}",
        if r.went_direct() {
            "WENT DIRECT (capture failed)"
        } else {
            "went through the gateway: the service saw the gateway's socket, not the agent's"
        }
    );

    let r = probe(None, None, service.addr);
    println!("\n-- a process outside managed cgroups connects to the same service:");
    println!(
        "   local {}, the service says: {} => {}",
        show(r.local),
        r.greeting,
        if r.went_direct() {
            "direct, untouched"
        } else {
            "CAPTURED (wrong)"
        }
    );

    println!("\n-- the agent's token is swapped for one of group `contractors` (valid, signed, not allowed):");
    std::fs::write(
        "/tmp/agentgate-demo/agent-token",
        mint("contractor-agent-9", &["contractors"], now(), now() + 600),
    )?;
    let r = probe(Some(&agent), None, service.addr);
    let ev = gw.wait_for(
        std::time::Duration::from_secs(5),
        |e| e["event"] == "refused" && e["pid"] == r.pid,
        0,
    );
    println!(
        "   the agent's connection is closed before any byte reaches the service; the gateway logged: {} ({}): {}",
        s(&ev, "code"),
        s(&ev, "subject"),
        s(&ev, "reason")
    );
    std::fs::write(
        "/tmp/agentgate-demo/agent-token",
        mint("code-review-agent-1", &["demo-agents"], now(), now() + 600),
    )?;

    println!("\n-- the gateway is killed with SIGKILL (crash, upgrade):");
    gw.kill9();
    let r = probe(Some(&agent), None, service.addr);
    println!(
        "   the agent's connect(): {} => fail closed, nothing reached the service directly",
        r.errno
            .map(|e| std::io::Error::from_raw_os_error(e).to_string())
            .unwrap_or_else(|| format!("CONNECTED ({})", r.greeting))
    );
    gw.restart();
    std::thread::sleep(Duration::from_millis(100));
    let r = probe(Some(&agent), None, service.addr);
    println!(
        "   after restart: the service says {} (through the gateway: {})",
        r.greeting,
        !r.went_direct()
    );
    println!(
        "\n== {} connections reached the service; stopping this gateway (agent cgroup, pinned programs removed)",
        service.count()
    );
    Ok(())
}
