//! The AutoGen story end to end (issue 23): twelve PR jobs, each an unchanged AutoGen AgentChat
//! team in its own cgroup, reach PostgreSQL, an SSH build host and a Kubernetes API only through
//! the gateway. Runs the same code as `cargo xtask demo --story autogen`
//! (agentgate_tests::autogen) and checks what it must show.
//!
//! Ports: 21060–21063 (gateway, PostgreSQL, sshd, the API stand-in on 127.0.0.2).

use agentgate_tests::{
    autogen::{self, Options, Ports},
    unique,
};

#[test]
fn the_autogen_story() {
    let tag = unique("autogen");
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
    assert_eq!(story.jobs.len(), 12);
}
