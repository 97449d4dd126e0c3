//! The protocol seam, proved with a toy: `protocol::toy::ToyHandler` (a line protocol that knows
//! nothing of PostgreSQL) is the only handler of a real core. The eBPF programs are loaded (not
//! attached) into a pin directory of the test's own, so the core's maps and the gateway's own
//! sockets are the kernel's; the record is SQLite in a temporary directory, the events go to a
//! file and feed the metrics, as `agentgate run` wires them. Each connection enters the core
//! where the listener hands it over (`handle`, with the original destination the kernel would
//! have left): placement, dispatch to the toy, the close on record and `connection_close` are
//! the core's.
//!
//! Needs root (eBPF); fails, never skips, without it.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::AtomicUsize,
};

use gateway_common::{dst_flags, v4_mapped};
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    task::JoinHandle,
};

use super::*;
use crate::{
    approval::Notifier,
    capture::CgroupInfo,
    ebpf::Kernel,
    net::{http::HttpClient, Dialer, Netns, SocketFactory},
    policy::test_support::{write, IDP, WORKLOAD},
    protocol::toy::{ToyHandler, ToyStats, DENY_RULE},
    record::{Db, SharedDb},
    telemetry::Metrics,
};

const RSA1: &str = include_str!("../identity/testdata/rsa1.pem");
const RSA2: &str = include_str!("../identity/testdata/rsa2.pem");
/// The identity provider's key id; the forged token claims it too.
const KID: &str = "toy-k1";
const ISSUER: &str = "https://idp.test";
/// A cgroup of the `ci` workload (`/agents/*`), as the reconciler would have classified it.
const CGROUP_ID: u64 = 0x70_7917;
const CGROUP: &str = "/agents/toy-agent";
const WAIT: Duration = Duration::from_secs(10);

/// As the end-to-end harness does (`agentgate_tests::require_root`): fail loudly, never skip.
fn require_root() {
    // SAFETY: trivial libc call.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid,
        0,
        "the toy protocol tests load eBPF programs: run them as root (`sudo -E cargo xtask test`); \
         they do not skip"
    );
}

/// A pin directory under /sys/fs/bpf of this test's own, removed on drop (also when the test
/// fails).
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/agentgate-toytest-{}-{tag}",
            std::process::id()
        ));
        remove_pins(&dir);
        PinDir(dir)
    }
}

fn remove_pins(dir: &Path) {
    if let Err(e) = crate::ebpf::uninstall(dir) {
        eprintln!("removing {}: {e}", dir.display());
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        remove_pins(&self.0);
    }
}

/// A target that answers each line with the line upper-cased.
struct Upper {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    lines: Arc<AtomicUsize>,
}

async fn upper_target() -> Upper {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(AtomicUsize::new(0));
    let (c, l) = (connections.clone(), lines.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let l = l.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r).lines();
                while let Ok(Some(line)) = r.next_line().await {
                    l.fetch_add(1, Ordering::Relaxed);
                    let out = format!("{}\n", line.to_uppercase());
                    if w.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upper {
        addr,
        connections,
        lines,
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token for `subject`, signed with `pem` under the provider's key id.
fn token(pem: &str, subject: &str) -> String {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_string());
    let t = now_s();
    let claims = json!({"iss": ISSUER, "aud": "agentgate", "sub": subject,
                        "groups": ["toy-users"], "iat": t, "exp": t + 600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The core with the toy as its only handler, over real kernel maps, record, events, metrics.
struct Rig {
    proxy: Arc<Proxy<Dialer>>,
    stats: Arc<ToyStats>,
    metrics: Arc<Metrics>,
    db: SharedDb,
    events: PathBuf,
    target: Upper,
    /// Keeps the policy channel open for the life of the core.
    _policy: watch::Sender<Arc<Policy>>,
    _kernel: Kernel,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(pins: &PinDir) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let target = upper_target().await;
        let key = EncodingKey::from_rsa_pem(RSA1.as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(KID.to_string());
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
        let policies = dir.path().join("policy");
        std::fs::create_dir(&policies).unwrap();
        write(
            &policies,
            "a-idp.yaml",
            &IDP.replace("/etc/jwks.json", &jwks.display().to_string()),
        );
        write(&policies, "b-workloads.yaml", WORKLOAD);
        write(
            &policies,
            "c-targets.yaml",
            &format!(
                "version: 2\ntargets:\n  - name: toy\n    protocol: tcp\n    addresses: [127.0.0.1]\n    ports: [{}]\n",
                target.addr.port()
            ),
        );
        write(
            &policies,
            "d-rules.yaml",
            "version: 2\nrules:\n  - name: ci-toy\n    when: {workloads: [ci]}\n    targets: [toy]\n",
        );
        let policy = Arc::new(crate::policy::load_dir(&policies).unwrap());
        let (policy_tx, policy_rx) = watch::channel(policy);

        let metrics = Arc::new(Metrics::new());
        let events_path = dir.path().join("events.jsonl");
        let events = Arc::new(
            EventSink::to_file(&events_path)
                .unwrap()
                .with_metrics(metrics.clone()),
        );
        let db = Db::open(&dir.path().join("record.db")).unwrap();
        let recorder = Recorder::sqlite(db.clone(), Some(metrics.clone()));
        let kernel = Kernel::load(&pins.0).unwrap();
        let maps = kernel.maps();
        let sockets = Arc::new(SocketFactory::new(maps.clone()));
        let approvals = Approvals::open(
            db.clone(),
            Notifier::new(
                policy_rx.clone(),
                HttpClient::new(sockets.clone()),
                events.clone(),
            ),
            events.clone(),
        )
        .unwrap();
        let table = Arc::new(WorkloadTable::default());
        table.replace(HashMap::from([(
            CGROUP_ID,
            CgroupInfo {
                id: CGROUP_ID,
                path: CGROUP.to_string(),
                workload: Some(0),
            },
        )]));
        let stats = Arc::new(ToyStats::default());
        let proxy = Arc::new(Proxy::with_handlers(
            policy_rx,
            maps,
            table,
            events,
            Dialer {
                sockets,
                netns: Netns::Connection,
                timeout: Duration::from_secs(5),
            },
            Oversight {
                recorder,
                approvals,
                revocations: revocations::Revocations::load(db.clone()).unwrap(),
            },
            vec![Box::new(ToyHandler {
                stats: stats.clone(),
            })],
        ));
        Rig {
            proxy,
            stats,
            metrics,
            db,
            events: events_path,
            target,
            _policy: policy_tx,
            _kernel: kernel,
            _dir: dir,
        }
    }

    /// An agent's connection to the toy target, accepted and handed to the core as `serve`
    /// does, with the original destination the kernel would have left for it.
    async fn connect(&self) -> (TcpStream, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let orig = OrigDst {
            addr: v4_mapped(Ipv4Addr::LOCALHOST.octets()),
            port: self.target.addr.port(),
            family: libc::AF_INET as u16,
            target_id: 0,
            pid: std::process::id(),
            flags: dst_flags::LOOPBACK,
            cgroup_id: CGROUP_ID,
            netns_cookie: 1,
            socket_cookie: 0,
            listen_port: listener.local_addr().unwrap().port(),
            _pad: [0; 6],
        };
        let proxy = self.proxy.clone();
        let task = self.proxy.tracker.spawn(async move {
            let upstream = crate::capture::upstream_netns(Some(&orig), None);
            crate::net::in_netns(
                upstream,
                proxy.handle(stream, peer, Some(orig), ListenerKind::Host),
            )
            .await
        });
        (agent, task)
    }

    /// Every event written so far.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.events)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// The value of the series whose line starts with `series`.
    fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics.render();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Every session on record, oldest first.
    async fn sessions(&self) -> Vec<SessionRow> {
        self.proxy.recorder.flush().await;
        let db = Db::lock(&self.db);
        let mut stmt = db
            .conn
            .prepare(
                "SELECT id, protocol, workload, target, subject, issuer, bytes_up, bytes_down,
                        ended_by, error, ended_ms IS NOT NULL FROM sessions ORDER BY started_ms",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(SessionRow {
                id: r.get(0)?,
                protocol: r.get(1)?,
                workload: r.get(2)?,
                target: r.get(3)?,
                subject: r.get(4)?,
                issuer: r.get(5)?,
                bytes_up: r.get(6)?,
                bytes_down: r.get(7)?,
                ended_by: r.get(8)?,
                error: r.get(9)?,
                ended: r.get(10)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// How many records of `kind` the journal holds.
    async fn journal_count(&self, kind: &str) -> i64 {
        self.proxy.recorder.flush().await;
        Db::lock(&self.db)
            .conn
            .query_row(
                "SELECT count(*) FROM audit_log WHERE kind = ?1",
                [kind],
                |r| r.get(0),
            )
            .unwrap()
    }
}

#[derive(Debug, PartialEq)]
struct SessionRow {
    id: String,
    protocol: String,
    workload: String,
    target: String,
    subject: String,
    issuer: String,
    bytes_up: Option<i64>,
    bytes_down: Option<i64>,
    ended_by: Option<String>,
    error: Option<String>,
    ended: bool,
}

/// Sends `line` and returns the one line the gateway answers (without its `\n`).
async fn ask<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    line: &str,
) -> String {
    w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, r.read_line(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(answer.ends_with('\n'), "cut answer {answer:?}");
    answer.pop();
    answer
}

async fn finished(task: JoinHandle<()>) {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the core finished the connection in time")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toy_session_is_admitted_relayed_and_closed_on_record() {
    require_root();
    let pins = PinDir::new("session");
    let rig = Rig::start(&pins).await;
    let (agent, task) = rig.connect().await;
    let (r, mut w) = agent.into_split();
    let mut r = BufReader::new(r);
    let jwt = token(RSA1, "agent-7");
    assert_eq!(ask(&mut r, &mut w, &format!("TOKEN {jwt}")).await, "OK");
    let mut up = 0;
    let mut down = "OK\n".len();
    for (line, answer) in [
        ("hello toy", "HELLO TOY"),
        ("deny this one", "DENIED"),
        ("second line", "SECOND LINE"),
    ] {
        assert_eq!(ask(&mut r, &mut w, line).await, answer);
        up += line.len() + 1;
        down += answer.len() + 1;
    }
    drop(w);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    finished(task).await;

    assert_eq!(rig.stats.sessions.load(Ordering::Relaxed), 1);
    assert_eq!(rig.stats.actions.load(Ordering::Relaxed), 3);
    // The denied line never reached the target.
    assert_eq!(rig.target.connections.load(Ordering::Relaxed), 1);
    assert_eq!(rig.target.lines.load(Ordering::Relaxed), 2);

    let sessions = rig.sessions().await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(
        (
            s.protocol.as_str(),
            s.workload.as_str(),
            s.target.as_str(),
            s.subject.as_str(),
            s.issuer.as_str()
        ),
        ("toy", "ci", "toy", "agent-7", ISSUER)
    );
    assert!(s.ended, "{s:?}");
    assert_eq!(
        (s.bytes_up, s.bytes_down),
        (Some(up as i64), Some(down as i64))
    );
    assert_eq!((&s.ended_by, &s.error), (&None, &None));
    // Each forwarded action's intent was on record before it went, and every action's outcome.
    assert_eq!(rig.journal_count("statement_intent").await, 2);
    let outcomes: Vec<(i64, String, String, Option<String>)> = {
        let db = Db::lock(&rig.db);
        let mut stmt = db
            .conn
            .prepare(
                "SELECT seq, text, decision, rule FROM statements WHERE session = ?1 ORDER BY seq",
            )
            .unwrap();
        stmt.query_map([&s.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    let rule = |r: &str| Some(r.to_string());
    assert_eq!(
        outcomes,
        vec![
            (1, "hello toy".into(), "allowed".into(), rule("ci-toy")),
            (2, "deny this one".into(), "denied".into(), rule(DENY_RULE)),
            (3, "second line".into(), "allowed".into(), rule("ci-toy")),
        ]
    );

    let allowed = rig.events_of("allowed");
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(
        (&allowed[0]["rule"], &allowed[0]["subject"]),
        (&json!("ci-toy"), &json!("agent-7"))
    );
    let closes = rig.events_of("connection_close");
    assert_eq!(closes.len(), 1, "{closes:?}");
    let c = &closes[0];
    assert_eq!(c["session"], json!(s.id));
    assert_eq!(
        (&c["workload"], &c["target"]),
        (&json!("ci"), &json!("toy"))
    );
    assert_eq!(c["subject"], json!("agent-7"));
    assert_eq!(
        (c["bytes_up"].as_u64(), c["bytes_down"].as_u64()),
        (Some(up as u64), Some(down as u64))
    );
    assert_eq!(
        (c["statements"].as_u64(), c["denied_statements"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(rig.events_of("refused").is_empty());

    let labels = r#"workload="ci",target="toy",protocol="tcp""#;
    assert_eq!(
        rig.metric(&format!(
            "agentgate_sessions_ended_total{{{labels},cause=\"client_closed\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(
        rig.metric(&format!("agentgate_sessions_live{{{labels}}}")),
        Some(0.0)
    );
    assert_eq!(
        rig.metric(&format!(
            "agentgate_connections_total{{{labels},decision=\"allowed\",code=\"\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(
        rig.metric(r#"agentgate_statements_total{class="opaque",decision="allowed"}"#),
        Some(2.0)
    );
    assert_eq!(
        rig.metric(r#"agentgate_statements_total{class="opaque",decision="denied"}"#),
        Some(1.0)
    );
    assert_eq!(rig.proxy.sessions.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toy_refuses_a_token_its_provider_did_not_sign() {
    require_root();
    let pins = PinDir::new("forged");
    let rig = Rig::start(&pins).await;
    let (agent, task) = rig.connect().await;
    let (r, mut w) = agent.into_split();
    let mut r = BufReader::new(r);
    // Signed with another key under the provider's key id; an action follows at once, which
    // must never be read.
    let forged = token(RSA2, "agent-7");
    w.write_all(format!("TOKEN {forged}\nhello toy\n").as_bytes())
        .await
        .unwrap();
    let mut told = String::new();
    tokio::time::timeout(WAIT, r.read_to_string(&mut told))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(told, "REFUSED bad_signature\n");
    finished(task).await;

    assert_eq!(rig.stats.sessions.load(Ordering::Relaxed), 0);
    assert_eq!(rig.stats.actions.load(Ordering::Relaxed), 0);
    assert_eq!(rig.target.connections.load(Ordering::Relaxed), 0);
    let refused = rig.events_of("refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["code"], json!("bad_signature"));
    assert_eq!(
        (&refused[0]["workload"], &refused[0]["target"]),
        (&json!("ci"), &json!("toy"))
    );
    assert_eq!(refused[0]["subject"], Value::Null);
    for kind in ["allowed", "connection_open", "connection_close"] {
        assert!(rig.events_of(kind).is_empty(), "{kind}");
    }
    assert!(rig.sessions().await.is_empty());
    assert_eq!(rig.journal_count("refused").await, 1);
    assert_eq!(rig.journal_count("statement_intent").await, 0);
    assert_eq!(
        rig.metric(
            r#"agentgate_connections_total{workload="ci",target="toy",protocol="tcp",decision="refused",code="bad_signature"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_a_live_toy_session() {
    require_root();
    let pins = PinDir::new("revoke");
    let rig = Rig::start(&pins).await;
    let (agent, task) = rig.connect().await;
    let (r, mut w) = agent.into_split();
    let mut r = BufReader::new(r);
    let jwt = token(RSA1, "agent-9");
    assert_eq!(ask(&mut r, &mut w, &format!("TOKEN {jwt}")).await, "OK");
    assert_eq!(ask(&mut r, &mut w, "still here").await, "STILL HERE");
    assert_eq!(rig.proxy.sessions.count(), 1);

    let ended = rig.proxy.revoke(revocations::Revocation {
        subject: Some("agent-9".into()),
        issuer: Some(ISSUER.into()),
        workload: None,
        reason: "toy test".into(),
        at_ms: crate::record::now_ms(),
        by: "tester".into(),
    });
    assert_eq!(ended, Ok(1));
    // The gateway ends the connection without the agent doing anything.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut rest))
        .await
        .expect("the revoked session ends")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    finished(task).await;

    let sessions = rig.sessions().await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert!(s.ended);
    assert_eq!(s.ended_by.as_deref(), Some("revoked by tester: toy test"));
    assert_eq!(
        (s.bytes_up, s.bytes_down),
        (
            Some("still here\n".len() as i64),
            Some("OK\nSTILL HERE\n".len() as i64)
        )
    );
    let closes = rig.events_of("connection_close");
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0]["ended_by"], json!("revoked by tester: toy test"));
    assert_eq!(
        rig.metric(
            r#"agentgate_sessions_ended_total{workload="ci",target="toy",protocol="tcp",cause="revoked"}"#
        ),
        Some(1.0)
    );
    assert_eq!(rig.proxy.sessions.count(), 0);

    // And a new connection under the revoked identity is refused before the action loop.
    let (agent, task) = rig.connect().await;
    let (r, mut w) = agent.into_split();
    let mut r = BufReader::new(r);
    w.write_all(format!("TOKEN {jwt}\n").as_bytes())
        .await
        .unwrap();
    let mut told = String::new();
    tokio::time::timeout(WAIT, r.read_to_string(&mut told))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(told, "REFUSED revoked\n");
    finished(task).await;
    assert_eq!(rig.stats.sessions.load(Ordering::Relaxed), 1);
    assert_eq!(rig.stats.actions.load(Ordering::Relaxed), 1);
}
