//! Reading a policy directory: YAML syntax, schema and cross-file checks, each error with the
//! file and, where the YAML parser knows it, the line and column.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use globset::GlobBuilder;
use ipnet::IpNet;
use serde::Deserialize;

use super::model::{GatewaySettings, Mode, Policy, Protocol, Target, Workload};

pub const SUPPORTED_VERSION: u32 = 1;

/// One problem found in a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => {
                write!(f, "{}:{}:{}: {}", self.file.display(), l, c, self.message)
            }
            _ => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("policy directory {0} holds no .yaml or .yml file")]
    Empty(PathBuf),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    version: u32,
    #[serde(default)]
    gateway: Option<GatewayDoc>,
    #[serde(default)]
    workloads: Vec<WorkloadDoc>,
    #[serde(default)]
    targets: Vec<TargetDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayDoc {
    listen_port: Option<u16>,
    bypass_mark: Option<u32>,
    connect_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadDoc {
    name: String,
    cgroup: String,
    mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetDoc {
    name: String,
    protocol: Protocol,
    addresses: Vec<Address>,
    ports: Vec<u16>,
}

/// An address or CIDR, checked while parsing so that a bad one is reported at its line.
#[derive(Debug, Clone, Copy)]
struct Address(IpNet);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_address(&s)
            .map(Address)
            .map_err(serde::de::Error::custom)
    }
}

fn parse_address(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set; did you mean `{}`?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
}

/// Loads and validates every `*.yaml` / `*.yml` file in `dir` (sorted by name).
pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| PolicyError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::Empty(dir.to_path_buf()));
    }
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_file(&file, &text) {
                Ok(doc) => docs.push((file, doc)),
                Err(p) => problems.push(p),
            },
            Err(e) => problems.push(Problem {
                file,
                line: None,
                column: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(PolicyError::Invalid(problems));
    }
    merge(docs).map_err(PolicyError::Invalid)
}

fn parse_file(file: &Path, text: &str) -> Result<FileDoc, Problem> {
    let problem = |line, column, message| Problem {
        file: file.to_path_buf(),
        line,
        column,
        message,
    };
    let doc: FileDoc = serde_yaml::from_str(text).map_err(|e| {
        let loc = e.location();
        problem(
            loc.as_ref().map(|l| l.line()),
            loc.as_ref().map(|l| l.column()),
            name_the_entry(text, &e.to_string()),
        )
    })?;
    if doc.version != SUPPORTED_VERSION {
        return Err(problem(
            Some(1),
            Some(1),
            format!(
                "unsupported policy version {} (this gateway reads version {SUPPORTED_VERSION})",
                doc.version
            ),
        ));
    }
    Ok(doc)
}

/// serde_yaml reports a path such as `targets[1].addresses[0]: ...`; say which target that is by
/// name, since that is what a person looks for in the file.
fn name_the_entry(text: &str, message: &str) -> String {
    let Some((section, rest)) = message.split_once('[') else {
        return message.to_string();
    };
    if section != "targets" && section != "workloads" {
        return message.to_string();
    }
    let Some(index) = rest
        .split_once(']')
        .and_then(|(i, _)| i.parse::<usize>().ok())
    else {
        return message.to_string();
    };
    let name = serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|v| {
            v.get(section)?
                .get(index)?
                .get("name")?
                .as_str()
                .map(str::to_string)
        });
    match name {
        Some(name) => format!("{} `{name}`: {message}", &section[..section.len() - 1]),
        None => message.to_string(),
    }
}

fn merge(docs: Vec<(PathBuf, FileDoc)>) -> Result<Policy, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut policy = Policy::default();
    let mut gateway_from: Option<PathBuf> = None;
    let mut names: HashMap<(&'static str, String), PathBuf> = HashMap::new();
    let mut claimed: HashMap<(IpNet, u16), String> = HashMap::new();
    let problem = |file: &Path, message: String| Problem {
        file: file.to_path_buf(),
        line: None,
        column: None,
        message,
    };

    for (file, doc) in docs {
        if let Some(g) = doc.gateway {
            if let Some(first) = &gateway_from {
                problems.push(problem(
                    &file,
                    format!(
                        "`gateway` settings are already given in {}; keep them in one file",
                        first.display()
                    ),
                ));
            } else {
                let d = GatewaySettings::default();
                policy.gateway = GatewaySettings {
                    listen_port: g.listen_port.unwrap_or(d.listen_port),
                    bypass_mark: g.bypass_mark.unwrap_or(d.bypass_mark),
                    connect_timeout_ms: g.connect_timeout_ms.unwrap_or(d.connect_timeout_ms),
                    idle_timeout_ms: g.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
                };
                if policy.gateway.listen_port == 0 {
                    problems.push(problem(&file, "gateway.listen_port must not be 0".into()));
                }
                if policy.gateway.bypass_mark == 0 {
                    problems.push(problem(&file, "gateway.bypass_mark must not be 0".into()));
                }
                gateway_from = Some(file.clone());
            }
        }
        for w in doc.workloads {
            if let Some(first) = names.insert(("workload", w.name.clone()), file.clone()) {
                problems.push(problem(
                    &file,
                    format!(
                        "workload `{}` is already defined in {}",
                        w.name,
                        first.display()
                    ),
                ));
            }
            if !w.cgroup.starts_with('/') {
                problems.push(problem(
                    &file,
                    format!(
                        "workload `{}`: cgroup `{}` must be an absolute path below the cgroup v2 mount (start with `/`)",
                        w.name, w.cgroup
                    ),
                ));
                continue;
            }
            match GlobBuilder::new(&w.cgroup).literal_separator(true).build() {
                Ok(glob) => policy.workloads.push(Workload {
                    name: w.name,
                    matcher: glob.compile_matcher(),
                    cgroup: w.cgroup,
                    mode: w.mode,
                }),
                Err(e) => problems.push(problem(
                    &file,
                    format!("workload `{}`: bad cgroup glob: {e}", w.name),
                )),
            }
        }
        for t in doc.targets {
            if let Some(first) = names.insert(("target", t.name.clone()), file.clone()) {
                problems.push(problem(
                    &file,
                    format!(
                        "target `{}` is already defined in {}",
                        t.name,
                        first.display()
                    ),
                ));
            }
            if t.addresses.is_empty() || t.ports.is_empty() {
                problems.push(problem(
                    &file,
                    format!(
                        "target `{}` needs at least one address and one port",
                        t.name
                    ),
                ));
            }
            if t.ports.contains(&0) {
                problems.push(problem(
                    &file,
                    format!("target `{}`: port 0 is not a destination", t.name),
                ));
            }
            for a in &t.addresses {
                for p in &t.ports {
                    if let Some(other) = claimed.insert((a.0, *p), t.name.clone()) {
                        if other != t.name {
                            problems.push(problem(
                                &file,
                                format!(
                                    "target `{}`: {}:{p} is already claimed by target `{other}`",
                                    t.name, a.0
                                ),
                            ));
                        }
                    }
                }
            }
            policy.targets.push(Target {
                name: t.name,
                protocol: t.protocol,
                addresses: t.addresses.into_iter().map(|a| a.0).collect(),
                ports: t.ports,
                source: file.clone(),
            });
        }
    }
    // A target on the listener's own loopback port would send the gateway's relay into itself.
    let listen = policy.gateway.listen_port;
    for t in &policy.targets {
        if t.ports.contains(&listen) && t.addresses.iter().any(|n| n.addr().is_loopback()) {
            problems.push(problem(
                &t.source,
                format!(
                    "target `{}` covers the gateway listener (loopback port {listen})",
                    t.name
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agentgate-policy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn merges_files_and_matches() {
        let d = tmpdir("ok");
        write(
            &d,
            "a.yaml",
            "version: 1\nworkloads:\n  - name: ci\n    cgroup: /agents/*\n    mode: host\n",
        );
        write(
            &d,
            "b.yml",
            "version: 1\ntargets:\n  - name: db\n    protocol: tcp\n    addresses: [127.0.0.2, '::1', 127.0.8.0/24]\n    ports: [5432]\n",
        );
        let p = load_dir(&d).unwrap();
        assert_eq!(p.workloads.len(), 1);
        assert_eq!(p.workload_for("/agents/job-1").unwrap().1.name, "ci");
        assert!(p.workload_for("/agents/job-1/sub").is_none());
        assert!(p.workload_for("/other").is_none());
        let t = |s: &str| {
            p.target_for(s.parse().unwrap())
                .map(|(_, t)| t.name.clone())
        };
        assert_eq!(t("127.0.0.2:5432").as_deref(), Some("db"));
        assert_eq!(t("[::ffff:127.0.8.9]:5432").as_deref(), Some("db"));
        assert_eq!(t("[::1]:5432").as_deref(), Some("db"));
        assert_eq!(t("127.0.0.2:5433"), None);
        assert_eq!(t("127.0.0.3:5432"), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn syntax_error_has_file_line_column() {
        let d = tmpdir("syntax");
        write(
            &d,
            "bad.yaml",
            "version: 1\ntargets:\n  - name: db\n    ports: [5432\n",
        );
        let err = load_dir(&d).unwrap_err().to_string();
        let path = d.join("bad.yaml");
        assert!(
            err.starts_with(&format!("{}:", path.display())),
            "error names the file: {err}"
        );
        let rest = &err[path.display().to_string().len() + 1..];
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts.next().unwrap().parse().expect("line number");
        let col: usize = parts.next().unwrap().parse().expect("column number");
        assert!(line >= 4 && col >= 1, "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_address_names_target_and_line() {
        let d = tmpdir("addr");
        write(
            &d,
            "t.yaml",
            "version: 1\ntargets:\n  - name: fine\n    protocol: tcp\n    addresses: [127.0.0.2]\n    ports: [1]\n  - name: broken-db\n    protocol: tcp\n    addresses: [127.0.0.2, 127.0.0.999]\n    ports: [5432]\n",
        );
        let err = load_dir(&d).unwrap_err().to_string();
        assert!(err.contains("t.yaml:9:"), "{err}");
        assert!(err.contains("`broken-db`"), "{err}");
        assert!(err.contains("127.0.0.999"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unknown_keys_duplicates_and_versions_are_refused() {
        let d = tmpdir("misc");
        write(&d, "a.yaml", "version: 1\nworkloads:\n  - name: w\n    cgroup: /a/*\n    mode: host\n    colour: red\n");
        let err = load_dir(&d).unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("a.yaml:6:"), "{err}");
        write(&d, "a.yaml", "version: 2\n");
        assert!(load_dir(&d)
            .unwrap_err()
            .to_string()
            .contains("unsupported policy version 2"));
        write(
            &d,
            "a.yaml",
            "version: 1\nworkloads:\n  - name: w\n    cgroup: /a/*\n    mode: host\n",
        );
        write(
            &d,
            "b.yaml",
            "version: 1\nworkloads:\n  - name: w\n    cgroup: /b/*\n    mode: pod\n",
        );
        let err = load_dir(&d).unwrap_err().to_string();
        assert!(err.contains("workload `w` is already defined"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn target_on_listener_port_is_refused() {
        let d = tmpdir("loop");
        write(&d, "a.yaml", "version: 1\ngateway:\n  listen_port: 15001\ntargets:\n  - name: self\n    protocol: tcp\n    addresses: [127.0.0.0/8]\n    ports: [15001]\n");
        let err = load_dir(&d).unwrap_err().to_string();
        assert!(err.contains("covers the gateway listener"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
