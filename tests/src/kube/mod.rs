//! A small, strict Kubernetes API server stand-in for the tests (no real API server can be
//! installed on these machines). The real `kubectl` 1.32 and the Python `kubernetes` client
//! talk to it unchanged; the gateway's tests put the gateway between them.
//!
//! What it serves (in memory, seeded with [`store::seed`]): discovery (legacy and aggregated
//! v2), namespaces, pods (+ `pods/log`, `pods/exec` over WebSocket), secrets, configmaps,
//! rolebindings and clusterrolebindings with get/list/watch/create/update/patch/delete/
//! deletecollection, Tables for `kubectl get`, JSON and protobuf. Errors are `Status` objects.
//!
//! Strict: every request needs a bearer token or a client certificate the stand-in issued;
//! impersonation headers only from the gateway's credential (403 otherwise); unknown paths,
//! upgrades and content types are refused with a clear `Status`. Every request is logged
//! ([`RequestLog`]) so a test can assert what reached the API server.
//!
//! See docs/kubernetes-standin.md for what kubectl sends per command.

pub mod api;
pub mod codec;
pub mod discovery;
pub mod exec;
pub mod log;
pub mod openapi;
pub mod patch;
pub mod portforward;
pub mod proto;
pub mod select;
pub mod server;
pub mod spdy;
pub mod store;
pub mod table;
pub mod tls;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use serde_json::Value;
use tokio::sync::oneshot;

pub use log::{token_fingerprint, ExecRecord, ForwardRecord, LogEntry, RequestLog};
pub use tls::ClientCert;

/// How to start a stand-in.
#[derive(Clone, Debug)]
pub struct StandinOptions {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// The gateway's bearer token (the only token whose impersonation headers are honoured).
    pub gateway_token: String,
    pub gateway_user: String,
    /// Tokens accepted for pass-through mode: token -> (user, groups); they may not impersonate.
    pub agent_tokens: HashMap<String, (String, Vec<String>)>,
    /// Client-certificate users allowed to impersonate (the gateway with a client cert).
    pub impersonating_cert_users: Vec<String>,
    /// Extra DNS names and addresses for the server certificate (localhost, 127.0.0.1, ::1 and
    /// the in-cluster names `kubernetes`, `kubernetes.default(.svc(.cluster.local))` are always in).
    pub extra_names: Vec<String>,
    /// Answer aggregated discovery when asked (kubectl then skips the per-group requests).
    pub aggregated_discovery: bool,
    /// Seed this many extra pods `bulk-NNNNN` in `default` (list benchmarks).
    pub bulk_pods: usize,
    /// Also append the request log to this JSON-lines file.
    pub log_file: Option<PathBuf>,
    /// `pods/portforward`: a pod's port (any pod) -> the loopback address it is forwarded to.
    /// A port not here is answered as one nothing listens on; only loopback addresses.
    pub forward_ports: Vec<(u16, SocketAddr)>,
}

impl Default for StandinOptions {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("addr"),
            gateway_token: "gateway-token-0f1e2d3c4b5a".into(),
            gateway_user: "system:serviceaccount:agentgate:gateway".into(),
            agent_tokens: HashMap::new(),
            impersonating_cert_users: Vec::new(),
            extra_names: Vec::new(),
            aggregated_discovery: true,
            bulk_pods: 0,
            log_file: None,
            forward_ports: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A running stand-in: its own thread and tokio runtime, stopped and its files removed on drop.
pub struct KubeStandin {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed the server's certificate (and client certificates), PEM file.
    pub ca_path: PathBuf,
    pub ca_pem: String,
    pub gateway_token: String,
    pub log: RequestLog,
    /// A directory for this stand-in's files (CA, kubeconfigs the test writes there).
    pub dir: PathBuf,
    ca: Arc<tls::StandinCa>,
    store: Arc<Mutex<store::Store>>,
    forward_ports: Arc<Mutex<HashMap<u16, SocketAddr>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KubeStandin {
    pub fn start(opts: StandinOptions) -> Result<Self, StandinError> {
        let dir = std::env::temp_dir().join(format!(
            "kube-standin-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (port, to) in &opts.forward_ports {
            loopback_only(*port, *to)?;
        }
        std::fs::create_dir_all(dir.join("exec"))?;
        let ca = Arc::new(tls::StandinCa::new()?);
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, &ca.ca_pem)?;
        let mut names: Vec<String> = [
            "localhost",
            "127.0.0.1",
            "::1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.extend(opts.extra_names.iter().cloned());
        let tls_config = ca.server_config(&names)?;
        let std_listener = std::net::TcpListener::bind(opts.listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let mut st = store::Store::new();
        store::seed(&mut st);
        store::seed_bulk(&mut st, opts.bulk_pods);
        let store = Arc::new(Mutex::new(st));
        let forward_ports = Arc::new(Mutex::new(opts.forward_ports.iter().copied().collect()));
        let log = RequestLog::new(opts.log_file.as_deref())?;
        let state = Arc::new(server::State {
            auth: server::AuthConfig {
                gateway_token: opts.gateway_token.clone(),
                gateway_user: opts.gateway_user.clone(),
                agent_tokens: opts.agent_tokens.clone(),
                impersonating_cert_users: opts.impersonating_cert_users.clone(),
            },
            ca: ca.clone(),
            store: store.clone(),
            log: log.clone(),
            server_addr: addr.to_string(),
            aggregated_discovery: opts.aggregated_discovery,
            exec_dir: dir.join("exec"),
            forward_ports: forward_ports.clone(),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("kube-standin")
            .build()?;
        let thread = std::thread::Builder::new()
            .name("kube-standin".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = server::serve(listener, tls_config, state) => {}
                        _ = stop_rx => {}
                    }
                });
                // Ends held-open watches and exec sessions (their children are killed on drop).
                rt.shutdown_timeout(std::time::Duration::from_millis(200));
            })?;
        let url = format!("https://{addr}");
        Ok(Self {
            addr,
            url,
            ca_path,
            ca_pem: ca.ca_pem.clone(),
            gateway_token: opts.gateway_token,
            log,
            dir,
            ca,
            store,
            forward_ports,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A client certificate the stand-in accepts as `user` in `groups`.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Result<ClientCert, StandinError> {
        Ok(self.ca.issue_client_cert(user, groups)?)
    }

    /// Write a kubeconfig in this stand-in's directory that talks straight to it with `token`.
    pub fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(name);
        write_kubeconfig(&path, &self.url, &self.ca_path, token).expect("write kubeconfig");
        path
    }

    /// From now on, port-forwards to `port` of any pod go to `to` (a loopback address).
    pub fn forward_port(&self, port: u16, to: SocketAddr) -> Result<(), StandinError> {
        loopback_only(port, to)?;
        self.forward_ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port, to);
        Ok(())
    }

    /// The object as stored (JSON), if it exists.
    pub fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let def = store::resource(group, plural)?;
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(def, ns, name)
            .cloned()
    }

    /// Create an object directly (as another client would), e.g. while a test watches.
    pub fn create(&self, group: &str, plural: &str, ns: &str, obj: Value) -> Result<Value, String> {
        let def = store::resource(group, plural).ok_or_else(|| format!("no resource {plural}"))?;
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .create(def, ns, obj)
            .map_err(|e| e.to_string())
    }

    /// Replace an object directly (a label change, as `kubectl label` would make it); watchers
    /// see a MODIFIED event.
    pub fn update(
        &self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        obj: Value,
    ) -> Result<Value, String> {
        let def = store::resource(group, plural).ok_or_else(|| format!("no resource {plural}"))?;
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(def, ns, name, obj)
            .map_err(|e| e.to_string())
    }

    /// Delete an object directly.
    pub fn delete(&self, group: &str, plural: &str, ns: &str, name: &str) -> Result<Value, String> {
        let def = store::resource(group, plural).ok_or_else(|| format!("no resource {plural}"))?;
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delete(def, ns, name)
            .map_err(|e| e.to_string())
    }
}

/// The stand-in forwards only to this machine: tests talk only to loopback.
fn loopback_only(port: u16, to: SocketAddr) -> Result<(), StandinError> {
    if to.ip().is_loopback() {
        return Ok(());
    }
    Err(StandinError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("forward_ports: port {port} -> {to} is not a loopback address"),
    )))
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for KubeStandin {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn yaml_str(s: &str) -> String {
    // JSON strings are YAML strings.
    serde_json::to_string(s).unwrap_or_default()
}

/// A kubeconfig with one cluster (`server`, CA file `ca`), one user (bearer `token`) and a
/// current context using them, namespace `default`.
pub fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: agent\n  user:\n    token: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: agent\n    namespace: default\ncurrent-context: standin\n",
        yaml_str(server),
        yaml_str(&ca.to_string_lossy()),
        yaml_str(token),
    );
    std::fs::write(path, text)
}

/// Like [`write_kubeconfig`] with a client certificate and key instead of a token.
pub fn write_kubeconfig_cert(
    path: &Path,
    server: &str,
    ca: &Path,
    cert: &ClientCert,
) -> std::io::Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: agent\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: agent\n    namespace: default\ncurrent-context: standin\n",
        yaml_str(server),
        yaml_str(&ca.to_string_lossy()),
        b64(&cert.cert_pem),
        b64(&cert.key_pem),
    );
    std::fs::write(path, text)
}
