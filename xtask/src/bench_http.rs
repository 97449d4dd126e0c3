//! The http section of `cargo xtask bench` (`--only http`): `protocol: http` targets, with and
//! without the `kubernetes` profile, side by side with the same clients going direct.
//!
//! - `kubectl get pods -n default` (the real kubectl, a new process and connection each): direct
//!   to the API-server stand-in (tests/src/kube, the release `kube-standin` binary) with the
//!   stand-in's CA and a token it accepts, vs through the gateway: kubectl in a captured cgroup
//!   with a kubeconfig naming the same address, the agentgate CA and a JWT, as in
//!   tests/tests/kube_gateway.rs. p50/p90 of `ROUND_TRIPS` runs per contender and repetition.
//! - A list of `BULK_PODS` pods (`curl` of `/api/v1/namespaces/default/pods`, JSON) from a second
//!   stand-in seeded with them: wall time direct vs through the gateway, and the gateway's peak
//!   RSS during its lists.
//! - Requests/s with keep-alive: `wrk` against nginx serving a small static file over TLS on
//!   loopback, direct vs through the gateway (`protocol: http`, no profile) vs HAProxy in TCP
//!   mode vs the gateway restarted with `--record-off` (what waiting for each request's intent
//!   to be on disk costs); the proxies' CPU per request.
//! - A watch through the gateway (`kubectl get pods --watch`) held for `WATCH_SECS` while pods are
//!   created and deleted through the stand-in's API at `CHURN_EVENTS_PER_SEC`: the gateway's RSS
//!   before, at its peak and after, and how many events reached kubectl.
//!
//! Measured in the order kubectl, list, watch, wrk: the wrk runs restart the gateway, so every
//! memory figure is of the one gateway process that served the first three.

use std::{
    cell::RefCell,
    fs,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use agentgate_tests::{
    fixtures, http::Ca, mint, now, place, ssh::TempDir, Cgroup, Gateway, AUDIENCE, ISSUER,
};
use anyhow::{bail, Context};
use serde_json::Value;

use crate::{
    baselines::Baseline,
    bench::{median, min_max},
    bench_ssh::{mib, percentiles, RssSampler},
    report::{first_line, md},
    util,
};

/// Ports of this section (bench only).
#[path = "bench_http_report.rs"]
mod report;
use report::{report, Report};

const STANDIN_PORT: u16 = 20850;
const BULK_PORT: u16 = 20851;
const NGINX_PORT: u16 = 20852;
const HAPROXY_PORT: u16 = 20853;
const LISTEN_PORT: u16 = 20854;
/// `kubectl get pods` runs per contender and repetition.
const ROUND_TRIPS: usize = 20;
/// Pods in the big list.
const BULK_PODS: usize = 10_000;
/// How long the watch is held while pods come and go.
const WATCH_SECS: u64 = 30;
/// Watch events per second the churn aims for (a create and a delete are two).
const CHURN_EVENTS_PER_SEC: usize = 400;
/// Pods created (and deleted) per `curl` of the churn, over one kept-alive connection.
const CHURN_BATCH: usize = 20;
/// Bytes of padding in each churned pod (an annotation), so a buffered stream would show.
const CHURN_PADDING: usize = 2048;
/// The static file wrk fetches.
const FILE_BYTES: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kube {
    Direct,
    Agentgate,
}

const KUBE: [Kube; 2] = [Kube::Direct, Kube::Agentgate];

impl Kube {
    fn label(self) -> &'static str {
        match self {
            Kube::Direct => "direct to the stand-in",
            Kube::Agentgate => "agentgate (`kubernetes` profile, impersonation)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Web {
    Direct,
    HaProxy,
    Agentgate,
    /// The gateway restarted with `--record-off` (the recorder discards, no request waits for
    /// its intent to be on disk): what the record costs. Not a way to deploy.
    AgentgateRecordOff,
}

const WEB: [Web; 4] = [
    Web::Direct,
    Web::HaProxy,
    Web::Agentgate,
    Web::AgentgateRecordOff,
];

impl Web {
    fn label(self) -> &'static str {
        match self {
            Web::Direct => "direct",
            Web::HaProxy => "HAProxy TCP",
            Web::Agentgate => "agentgate (`protocol: http`, TLS terminated)",
            Web::AgentgateRecordOff => "agentgate with `--record-off` (benchmarks only)",
        }
    }
}

/// The release `kube-standin` binary, run as its own process: the stand-in the bench measures
/// against must not be a debug build sharing the bench's process. Killed, its files removed, on
/// drop.
struct Standin {
    child: Child,
    url: String,
    ca: PathBuf,
    token: String,
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Standin {
    fn start(port: u16, bulk_pods: usize) -> anyhow::Result<Self> {
        let bin = agentgate_tests::agentgate_bin().with_file_name("kube-standin");
        let mut child = Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--bulk-pods", &bulk_pods.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let parsed: anyhow::Result<Value> = serde_json::from_str(&line)
            .with_context(|| format!("kube-standin on port {port} said {line:?}"));
        let v = match parsed {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let ca = PathBuf::from(field("ca"));
        let dir = ca.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self {
            child,
            url: field("url"),
            ca,
            token: field("token"),
            kubeconfig: PathBuf::from(field("kubeconfig")),
            dir,
        })
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.dir.starts_with(std::env::temp_dir()) && self.dir != std::env::temp_dir() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Debian's nginx serving `index.html` over TLS on 127.0.0.1:`port`, one worker, no access log,
/// keep-alive without a request limit. Killed on drop.
struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(dir: &Path, port: u16, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let www = dir.join("www");
        fs::create_dir_all(&www)?;
        fs::create_dir_all(dir.join("nginx-tmp"))?;
        fs::write(www.join("index.html"), "x".repeat(FILE_BYTES))?;
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/nginx-error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
                 \x20 default_type text/html;\n\
                 \x20 client_body_temp_path {d}/nginx-tmp/body;\n  proxy_temp_path {d}/nginx-tmp/proxy;\n\
                 \x20 fastcgi_temp_path {d}/nginx-tmp/fastcgi;\n  uwsgi_temp_path {d}/nginx-tmp/uwsgi;\n\
                 \x20 scgi_temp_path {d}/nginx-tmp/scgi;\n\
                 \x20 server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n\
                 \x20   ssl_certificate_key {key};\n    root {www};\n  }}\n}}\n",
                cert = cert.display(),
                key = key.display(),
                www = www.display(),
            ),
        )?;
        let mut child = Command::new("nginx")
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start nginx (installed by `cargo xtask setup`)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "nginx did not listen on {addr}:\n{}",
                    fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL to the master leaves its worker running: SIGTERM ends both.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the section needs. Fields drop in order: the gateway before the cgroups, the
/// servers before the directory holding their files.
struct Rig {
    gw: Gateway,
    _haproxy: Baseline,
    _nginx: Nginx,
    small: Standin,
    bulk: Standin,
    agent: Cgroup,
    _anchor: Cgroup,
    /// The CA the agents trust for the gateway's leaves.
    agent_ca: PathBuf,
    /// The agent's token (wrk's and curl's `Authorization`, the kubeconfig's token), renewed
    /// by [`Rig::renew_token`]: the identity provider takes tokens of at most 15 minutes.
    jwt: RefCell<String>,
    /// The agent's kubeconfig (the stand-in's address, the agentgate CA, the JWT).
    agent_kubeconfig: PathBuf,
    dir: TempDir,
}

impl Rig {
    fn start() -> anyhow::Result<Self> {
        // Not the gateway's name: Gateway::start empties the directory its name makes.
        let dir = TempDir::new("bench-http-files");
        let small = Standin::start(STANDIN_PORT, 0)?;
        let bulk = Standin::start(BULK_PORT, BULK_PODS)?;
        let agent_ca = Ca::new(&dir.join("agent"), "agentgate");
        let web_ca = Ca::new(&dir.join("web"), "web");
        let (cert, key) = web_ca.leaf("web", &["web.test"], &["127.0.0.1"]);
        let nginx = Nginx::start(dir.path(), NGINX_PORT, &cert, &key)?;
        let haproxy = Baseline::haproxy(HAPROXY_PORT, NGINX_PORT)?;
        let kube_credential = dir.join("kube-credential");
        fs::write(&kube_credential, &small.token)?;
        if bulk.token != small.token {
            bail!("the two stand-ins accept different gateway tokens");
        }
        let web_credential = dir.join("web-credential");
        fs::write(&web_credential, "bench-web-credential")?;
        let name = format!("agbench-http-{}", std::process::id());
        let anchor = Cgroup::create(&format!("/{name}"));
        let agent = Cgroup::create(&format!("/{name}/job-1"));
        let kube_target = |target: &str, port: u16, standin: &Standin| {
            format!(
                "  - name: {target}\n    protocol: http\n    addresses: [\"127.0.0.1\"]\n    ports: [{port}]\n\
                 \x20   credential: {{from: file, path: {credential}}}\n\
                 \x20   http:\n      profile: kubernetes\n\
                 \x20     tls: {{ca_cert: {ca_cert}, ca_key: {ca_key}, names: [kubernetes, kubernetes.default, kubernetes.default.svc]}}\n\
                 \x20     upstream_tls: {{mode: verify-full, ca_file: {ca}, server_name: kubernetes}}\n",
                credential = kube_credential.display(),
                ca_cert = agent_ca.cert.display(),
                ca_key = agent_ca.key.display(),
                ca = standin.ca.display(),
            )
        };
        let policy = format!(
            "version: 2\ngateway:\n  listen_port: {LISTEN_PORT}\n\
             identity_providers:\n  - name: bench-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
             \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
             workloads:\n  - name: agents\n    cgroup: \"/{name}/job-*\"\n    mode: host\n\
             \x20   token: {{from: credential}}\n\
             targets:\n{small}{bulk}\
             \x20 - name: web\n    protocol: http\n    addresses: [\"127.0.0.1\"]\n    ports: [{NGINX_PORT}]\n\
             \x20   credential: {{from: file, path: {web_credential}}}\n\
             \x20   http:\n      tls: {{ca_cert: {ca_cert}, ca_key: {ca_key}, names: [web.test]}}\n\
             \x20     upstream_tls: {{mode: verify-full, ca_file: {web_ca}, server_name: web.test}}\n\
             rules:\n  - name: agents-to-http\n    when: {{workloads: [agents], groups: [agents]}}\n\
             \x20   targets: [cluster-api, cluster-bulk, web]\n",
            jwks = fixtures().join("test-jwks.json").display(),
            small = kube_target("cluster-api", STANDIN_PORT, &small),
            bulk = kube_target("cluster-bulk", BULK_PORT, &bulk),
            web_credential = web_credential.display(),
            ca_cert = agent_ca.cert.display(),
            ca_key = agent_ca.key.display(),
            web_ca = web_ca.cert.display(),
        );
        let gw = Gateway::start("bench-http", &policy);
        gw.wait_classified(&agent.rel);
        let rig = Self {
            gw,
            _haproxy: haproxy,
            _nginx: nginx,
            small,
            bulk,
            agent,
            _anchor: anchor,
            agent_ca: agent_ca.cert.clone(),
            jwt: RefCell::new(String::new()),
            agent_kubeconfig: dir.join("agent.kubeconfig"),
            dir,
        };
        rig.renew_token()?;
        Ok(rig)
    }

    /// A fresh token for the agent, good for ten minutes (a repetition takes far less), and
    /// the agent's kubeconfig with it.
    fn renew_token(&self) -> anyhow::Result<()> {
        let jwt = mint("agent-bench-http", &["agents"], now(), now() + 600);
        agentgate_tests::kube::write_kubeconfig(
            &self.agent_kubeconfig,
            &self.small.url,
            &self.agent_ca,
            &jwt,
        )?;
        *self.jwt.borrow_mut() = jwt;
        Ok(())
    }

    /// `kubectl ARGS` as `who` runs it (each contender with its own discovery cache, warmed by
    /// the warm-up run).
    fn kubectl(&self, who: Kube, args: &[&str]) -> Command {
        let (kubeconfig, cache) = match who {
            Kube::Direct => (&self.small.kubeconfig, "kube-cache-direct"),
            Kube::Agentgate => (&self.agent_kubeconfig, "kube-cache-agent"),
        };
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join(cache))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null());
        if who == Kube::Agentgate {
            place(&mut cmd, Some(&self.agent), None);
        }
        cmd
    }

    /// `curl` of `path` on the bulk stand-in as `who`, the body into `out`.
    fn curl_list(&self, who: Kube, path: &str, out: &Path) -> Command {
        let (ca, token) = match who {
            Kube::Direct => (&self.bulk.ca, self.bulk.token.clone()),
            Kube::Agentgate => (&self.agent_ca, self.jwt.borrow().clone()),
        };
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "120", "--noproxy", "*", "--cacert"])
            .arg(ca)
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .args(["-H", "Accept: application/json", "-o"])
            .arg(out)
            .args([
                "-w",
                "%{http_code} %{time_total} %{size_download} %{http_version}",
            ])
            .arg(format!("{}{path}", self.bulk.url))
            .stdin(Stdio::null());
        if who == Kube::Agentgate {
            place(&mut cmd, Some(&self.agent), None);
        }
        cmd
    }
}

fn failed(what: &str, out: &Output) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(2000)
            .collect::<String>(),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Seconds one `kubectl get pods -n default` takes, start to exit.
fn round_trip(rig: &Rig, who: Kube) -> anyhow::Result<f64> {
    let mut cmd = rig.kubectl(
        who,
        &["--request-timeout=20s", "get", "pods", "-n", "default"],
    );
    let started = Instant::now();
    let out = cmd.output().context("run kubectl")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("web-0") {
        return Err(failed(&format!("{}: kubectl get pods", who.label()), &out));
    }
    Ok(secs)
}

/// One list of the bulk pods: curl's total time (s), the bytes received and the HTTP version
/// spoken (a real API server offers HTTP/2; the stand-in and the gateway speak HTTP/1.1).
fn list(rig: &Rig, who: Kube) -> anyhow::Result<(f64, u64, String)> {
    let body = rig.dir.join("list.json");
    let out = rig
        .curl_list(who, "/api/v1/namespaces/default/pods", &body)
        .output()
        .context("run curl")?;
    let w = String::from_utf8_lossy(&out.stdout).to_string();
    let mut parts = w.split_whitespace();
    let code = parts.next().unwrap_or("");
    let secs: f64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let bytes: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = parts.next().unwrap_or("?").to_string();
    if !out.status.success() || code != "200" {
        return Err(failed(
            &format!("{}: curl of the pod list", who.label()),
            &out,
        ));
    }
    let text = fs::read_to_string(&body).context("the list's body")?;
    let last = format!("bulk-{:05}", BULK_PODS - 1);
    if !text.contains(&last) {
        bail!(
            "{}: the list has no {last} ({bytes} bytes): {}",
            who.label(),
            text.chars().take(500).collect::<String>()
        );
    }
    let _ = fs::remove_file(&body);
    Ok((secs, bytes, version))
}

/// Runs the gateway with its recorder (`on`) or with `--record-off`, restarting it if it runs
/// the other way; returns once it has classified the agent's cgroup again.
fn gateway_recording(rig: &mut Rig, on: bool) -> anyhow::Result<()> {
    let want: Vec<String> = if on {
        Vec::new()
    } else {
        vec!["--record-off".into()]
    };
    if rig.gw.extra_args == want {
        return Ok(());
    }
    if rig.gw.terminate(Duration::from_secs(30)).is_none() {
        bail!("the gateway did not stop on SIGTERM within 30 s");
    }
    rig.gw.extra_args = want;
    let rel = rig.agent.rel.clone();
    let is_agent = |e: &Value| e["event"] == "cgroup" && e["cgroup"] == rel.as_str();
    let before = rig.gw.events().iter().filter(|e| is_agent(e)).count();
    rig.gw.start_again();
    rig.gw.wait_for(Duration::from_secs(15), is_agent, before);
    Ok(())
}

/// What one wrk run reports.
struct WrkRun {
    rps: f64,
    requests: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// wrk's `Socket errors:` line, if it printed one.
    socket_errors: Option<String>,
}

fn wrk(rig: &Rig, who: Web, secs: u64, conns: usize) -> anyhow::Result<WrkRun> {
    let port = match who {
        Web::Direct | Web::Agentgate | Web::AgentgateRecordOff => NGINX_PORT,
        Web::HaProxy => HAPROXY_PORT,
    };
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &conns.clamp(1, 2).to_string()])
        .args(["-c", &conns.to_string()])
        .args(["-d", &format!("{secs}s"), "--latency"])
        // Every contender sends the same request; only the gateway reads the token.
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", rig.jwt.borrow()))
        .arg(format!("https://127.0.0.1:{port}/index.html"))
        .stdin(Stdio::null());
    if matches!(who, Web::Agentgate | Web::AgentgateRecordOff) {
        place(&mut cmd, Some(&rig.agent), None);
    }
    let out = cmd
        .output()
        .context("run wrk (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        return Err(failed(&format!("{}: wrk", who.label()), &out));
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    parse_wrk(&text).with_context(|| format!("{}: wrk said:\n{text}", who.label()))
}

fn parse_wrk(text: &str) -> anyhow::Result<WrkRun> {
    let mut rps = None;
    let mut requests = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut socket_errors = None;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            requests = n.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = duration_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = duration_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            bail!("{} answers were not 2xx", v.trim());
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            socket_errors = Some(v.trim().to_string());
        }
    }
    let requests = requests.context("no `requests in` line")?;
    if requests < 1.0 {
        bail!("no request was answered");
    }
    Ok(WrkRun {
        rps: rps.context("no Requests/sec")?,
        requests,
        p50_ms: p50.context("no 50% latency")?,
        p99_ms: p99.context("no 99% latency")?,
        socket_errors,
    })
}

/// wrk's durations (`812.00us`, `1.23ms`, `2.01s`, `1.00m`) in ms.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        _ => return None,
    };
    Some(n * factor)
}

/// What the watch saw.
struct WatchRun {
    /// Events the churn caused (each create and each delete).
    emitted: u64,
    /// Lines kubectl printed after its initial list.
    received: u64,
    secs: f64,
    rss_start: u64,
    rss_peak: u64,
    rss_end: u64,
}

/// `kubectl get pods --watch` through the gateway for `WATCH_SECS` while pods come and go.
fn watch(rig: &Rig) -> anyhow::Result<WatchRun> {
    let pid = rig.gw.pid();
    let mut child = rig
        .kubectl(
            Kube::Agentgate,
            &["get", "pods", "-n", "default", "--watch", "-o", "name"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run kubectl --watch")?;
    let lines = Arc::new(AtomicU64::new(0));
    let reader = {
        let lines = lines.clone();
        let out = child.stdout.take().context("kubectl's stdout")?;
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                if l.is_err() {
                    break;
                }
                lines.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The initial list (the seed's pods) first: the watch is then established.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            return Err(failed("kubectl get pods --watch", &out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let initial = lines.load(Ordering::Relaxed);
    let rss_start = util::proc_stats(pid)?.rss_kib;
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let churned = churn(rig, Duration::from_secs(WATCH_SECS));
    let secs = started.elapsed().as_secs_f64();
    // Let the last events through before counting.
    let emitted = churned.as_ref().map_or(0, |n| n * 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines.load(Ordering::Relaxed) < initial + emitted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_peak = sampler.finish();
    let still_running = child.try_wait()?.is_none();
    let _ = child.kill();
    let out = child.wait_with_output()?;
    let _ = reader.join();
    let received = lines.load(Ordering::Relaxed).saturating_sub(initial);
    churned?;
    if !still_running {
        return Err(failed("kubectl get pods --watch ended early", &out));
    }
    // The connection's end reaches the gateway; give it a moment to let go of the session.
    std::thread::sleep(Duration::from_secs(2));
    let rss_end = util::proc_stats(pid)?.rss_kib;
    Ok(WatchRun {
        emitted,
        received,
        secs,
        rss_start,
        rss_peak,
        rss_end,
    })
}

/// Creates and deletes pods through the small stand-in's API (straight to it, as another
/// client of the API server would), `CHURN_BATCH` of each per `curl` over one kept-alive
/// connection, paced at `CHURN_EVENTS_PER_SEC`, for `how_long`. Returns the pods created.
fn churn(rig: &Rig, how_long: Duration) -> anyhow::Result<u64> {
    let started = Instant::now();
    let padding = "p".repeat(CHURN_PADDING);
    let base = format!("{}/api/v1/namespaces/default/pods", rig.small.url);
    let auth = format!("Authorization: Bearer {}", rig.small.token);
    let ca = rig.small.ca.to_string_lossy().to_string();
    let mut created: u64 = 0;
    while started.elapsed() < how_long {
        let mut cmd = Command::new("curl");
        for i in 0..CHURN_BATCH {
            let name = format!("churn-{:06}", created + i as u64);
            let body = format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"{name}\",\
                 \"annotations\":{{\"bench.agentgate.dev/padding\":\"{padding}\"}}}},\
                 \"spec\":{{\"containers\":[{{\"name\":\"main\",\"image\":\"busybox:1.36\"}}]}}}}"
            );
            if i > 0 {
                cmd.arg("--next");
            }
            let common = [
                "-sSf",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
                "--cacert",
                &ca,
                "-H",
                &auth,
            ];
            cmd.args(common)
                .args([
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    &body,
                ])
                .arg(&base);
            cmd.arg("--next")
                .args(common)
                .args(["-X", "DELETE"])
                .arg(format!("{base}/{name}"));
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("run curl (churn)")?;
        if !out.status.success() {
            return Err(failed("the churn's curl", &out));
        }
        created += CHURN_BATCH as u64;
        // Pace: the events so far should have taken this long.
        let due = Duration::from_secs_f64((created * 2) as f64 / CHURN_EVENTS_PER_SEC as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(created)
}

pub fn http(reps: usize, wrk_secs: u64, wrk_conns: usize) -> anyhow::Result<()> {
    let mut rig = Rig::start()?;
    let pid = rig.gw.pid();
    // Warm-up: one of each, so no contender pays for cold caches (kubectl's discovery cache,
    // the gateway's first leaf, the page cache).
    for who in KUBE {
        round_trip(&rig, who)?;
    }
    let warm = KUBE
        .iter()
        .map(|who| list(&rig, *who))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let list_bytes: Vec<u64> = warm.iter().map(|x| x.1).collect();
    let list_versions: Vec<String> = warm.iter().map(|x| x.2.clone()).collect();
    for who in [Web::Direct, Web::HaProxy, Web::Agentgate] {
        wrk(&rig, who, 1, wrk_conns)?;
    }
    let idle = util::proc_stats(pid)?.rss_kib;

    // 1. kubectl get pods.
    let mut rtt: Vec<Vec<(f64, f64)>> = vec![Vec::new(); KUBE.len()];
    let mut rtt_cpu = 0.0;
    for rep in 0..reps {
        rig.renew_token()?;
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); KUBE.len()];
        for n in 0..ROUND_TRIPS {
            // Alternate which goes first, so neither always runs on a warmer machine.
            for k in 0..KUBE.len() {
                let i = (k + n + rep) % KUBE.len();
                let before = util::proc_stats(pid)?.cpu_secs();
                times[i].push(round_trip(&rig, KUBE[i])?);
                if KUBE[i] == Kube::Agentgate {
                    rtt_cpu += util::proc_stats(pid)?.cpu_secs() - before;
                }
            }
        }
        for (i, t) in times.into_iter().enumerate() {
            rtt[i].push(percentiles(t));
        }
        eprintln!(
            "bench: http: kubectl round trips, repetition {}/{reps} done",
            rep + 1
        );
    }

    // 2. The big list.
    let mut lists: Vec<Vec<f64>> = vec![Vec::new(); KUBE.len()];
    let mut list_peak = 0;
    let list_start = util::proc_stats(pid)?.rss_kib;
    let mut list_cpu = Vec::new();
    for rep in 0..reps {
        rig.renew_token()?;
        for k in 0..KUBE.len() {
            let i = (k + rep) % KUBE.len();
            let who = KUBE[i];
            let sampler = (who == Kube::Agentgate).then(|| RssSampler::start(pid));
            let before = util::proc_stats(pid)?.cpu_secs();
            lists[i].push(list(&rig, who)?.0);
            if let Some(s) = sampler {
                list_peak = list_peak.max(s.finish());
                list_cpu.push(util::proc_stats(pid)?.cpu_secs() - before);
            }
        }
    }
    eprintln!("bench: http: lists done");

    // 3. The long watch (before the wrk runs, which restart the gateway: the memory figures
    // below are all of one gateway process).
    rig.renew_token()?;
    let w = watch(&rig)?;
    eprintln!(
        "bench: http: watch done ({} events, {} received)",
        w.emitted, w.received
    );
    let end = util::proc_stats(pid)?;

    // 4. wrk.
    let mut runs: Vec<Vec<WrkRun>> = (0..WEB.len()).map(|_| Vec::new()).collect();
    // Proxy CPU seconds per request, per contender (direct has none).
    let mut cpu_per_req: Vec<Vec<f64>> = vec![Vec::new(); WEB.len()];
    let haproxy_pid = rig._haproxy.pid();
    for rep in 0..reps {
        rig.renew_token()?;
        for k in 0..WEB.len() {
            let i = (k + rep) % WEB.len();
            let who = WEB[i];
            match who {
                Web::Agentgate => gateway_recording(&mut rig, true)?,
                Web::AgentgateRecordOff => gateway_recording(&mut rig, false)?,
                Web::Direct | Web::HaProxy => {}
            }
            let proxy = match who {
                Web::Direct => None,
                Web::HaProxy => Some(haproxy_pid),
                Web::Agentgate | Web::AgentgateRecordOff => Some(rig.gw.pid()),
            };
            let before = proxy
                .map(util::proc_stats)
                .transpose()?
                .map(|s| s.cpu_secs());
            let run = wrk(&rig, who, wrk_secs, wrk_conns)?;
            if let (Some(p), Some(b)) = (proxy, before) {
                cpu_per_req[i].push((util::proc_stats(p)?.cpu_secs() - b) / run.requests);
            }
            runs[i].push(run);
        }
        eprintln!(
            "bench: http: wrk repetition {}/{reps} done (agentgate {:.0} req/s, with --record-off {:.0})",
            rep + 1,
            runs[2].last().map_or(0.0, |r| r.rps),
            runs[3].last().map_or(0.0, |r| r.rps)
        );
    }
    let refused = rig
        .gw
        .events()
        .iter()
        .filter(|e| e["event"] == "upstream_failed" || e["event"] == "refused")
        .count();
    if refused > 0 {
        bail!("the gateway refused or failed {refused} sessions during the bench");
    }

    report(&Report {
        reps,
        wrk_secs,
        wrk_conns,
        rtt,
        rtt_cpu,
        lists,
        list_bytes,
        list_versions,
        list_start,
        list_peak,
        list_cpu,
        runs,
        cpu_per_req,
        watch: w,
        idle,
        end_rss: end.rss_kib,
        end_hwm: end.hwm_kib,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 5s test @ https://127.0.0.1:20852/index.html
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  512.00us  12.00ms   90.00%
    Req/Sec     8.00k   500.00     9.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.60ms
     99%    2.50s
  80000 requests in 5.00s, 90.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 0
Requests/sec:  16000.00
Transfer/sec:     18.00MB
";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.rps, 16000.0);
        assert_eq!(r.requests, 80000.0);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(r.p99_ms, 2500.0);
        assert_eq!(
            r.socket_errors.as_deref(),
            Some("connect 0, read 1, write 0, timeout 0")
        );
        let refused = text.replace(
            "  Socket errors",
            "  Non-2xx or 3xx responses: 12\n  Socket errors",
        );
        assert!(parse_wrk(&refused).is_err());
    }
}
