//! Policy directories for unit tests, shared by the loader's tests and the protocols' tests of
//! their rule matchers.

use std::path::{Path, PathBuf};

use super::Who;

/// An agent of the `ci` workload with no groups (the statement and mask rule tests).
pub(crate) const CI_AGENT: Who<'static> = Who {
    issuer: "https://idp.test",
    subject: "a",
    groups: &[],
    workload: "ci",
    login: None,
};

pub(crate) fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

pub(crate) fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentgate-policy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub(crate) const IDP: &str = "version: 2\nidentity_providers:\n  - name: corp\n    issuer: https://idp.test\n    audiences: [agentgate]\n    jwks: {from: file, path: /etc/jwks.json}\n    algorithms: [RS256, ES256]\n";
pub(crate) const WORKLOAD: &str = "version: 2\nworkloads:\n  - name: ci\n    cgroup: /agents/*\n    mode: host\n    token: {from: file, path: /run/token}\n";
pub(crate) const TARGET: &str = "version: 2\ntargets:\n  - name: db\n    protocol: tcp\n    addresses: [127.0.0.2, '::1', 127.0.8.0/24]\n    ports: [5432]\n    credential: {from: env, name: DB_PASSWORD}\n";

pub(crate) fn valid_dir(tag: &str, rules: &str) -> PathBuf {
    let d = tmpdir(tag);
    write(&d, "a-idp.yaml", IDP);
    write(&d, "b-workloads.yaml", WORKLOAD);
    write(&d, "c-targets.yml", TARGET);
    write(&d, "d-rules.yaml", &format!("version: 2\nrules:\n{rules}"));
    d
}

/// A PostgreSQL target `pg` on loopback.
pub(crate) const PG_TARGET: &str = "version: 2\ntargets:\n  - name: pg\n    protocol: postgres\n    addresses: [127.0.0.3]\n    ports: [5432]\n    credential: {from: env, name: PG_PASSWORD}\n    postgres: {user: agentgate, upstream_tls: {mode: disable}}\n";
