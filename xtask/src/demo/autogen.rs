//! `cargo xtask demo --story autogen`: the AutoGen story (docs/autogen.md), told by the same
//! code tests/tests/autogen_story.rs checks (`agentgate_tests::autogen`): twelve CI jobs' AutoGen
//! teams, each in its own cgroup with its own short-lived token, reach a database, a build host
//! and a Kubernetes API only through the gateway.

use agentgate_tests::autogen::{self, Options, Ports};

use crate::util;

pub fn run() -> anyhow::Result<()> {
    util::require_root("the demo")?;
    let bins = util::build(false)?;
    std::env::set_var("AGENTGATE_BIN", &bins.agentgate);
    std::env::set_var("AGENT_PROBE_BIN", &bins.probe);
    let story = autogen::run(&Options {
        tag: "autogen-demo".into(),
        // The test's ports (tests/tests/autogen_story.rs): run one or the other at a time.
        ports: Ports {
            gateway: 21060,
            pg: 21061,
            ssh: 21062,
            kube: 21063,
        },
        cgroup_root: "/agentgate-autogen".into(),
        dir: "/tmp/agentgate-autogen".into(),
        short_ttl: 60,
    });
    let unfinished: Vec<u32> = story
        .jobs
        .iter()
        .filter(|j| !j.finished && j.pr != 112)
        .map(|j| j.pr)
        .collect();
    if !unfinished.is_empty() {
        anyhow::bail!("jobs did not finish: {unfinished:?}");
    }
    Ok(())
}
