//! `cargo xtask demo`: an agent in a fresh cgroup reaches a TCP service only through the gateway.

use std::time::Duration;

use agentgate_tests::{fixtures, mint, now, probe, s, Cgroup, Gateway, TargetServer};

use crate::util;

const POLICY: &str = include_str!("../../policies/demo/demo.yaml");

pub fn run() -> anyhow::Result<()> {
    util::require_root("the demo")?;
    let bins = util::build(false)?;
    std::env::set_var("AGENTGATE_BIN", &bins.agentgate);
    std::env::set_var("AGENT_PROBE_BIN", &bins.probe);

    // Declared first so that it is removed last, after the gateway and the agent's cgroup.
    let _anchor = Cgroup::adopt("/agentgate-demo");
    let _files = DemoFiles::create()?;
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
        "\n== done: {} connections reached the service; cleaning up (cgroups, pinned programs)",
        service.count()
    );
    Ok(())
}

/// The identity provider's keys and the agent's token, where policies/demo/demo.yaml expects them.
struct DemoFiles(std::path::PathBuf);

impl DemoFiles {
    fn create() -> anyhow::Result<Self> {
        let dir = std::path::PathBuf::from("/tmp/agentgate-demo");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(fixtures().join("test-jwks.json"), dir.join("jwks.json"))?;
        std::fs::write(
            dir.join("agent-token"),
            mint("code-review-agent-1", &["demo-agents"], now(), now() + 600),
        )?;
        println!("== an OIDC token for subject code-review-agent-1 (group demo-agents, 10 min) is in /tmp/agentgate-demo/agent-token");
        Ok(Self(dir))
    }
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn show(a: Option<std::net::SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
}
