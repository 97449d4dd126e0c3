//! The pods of this node, from the API server: a list, then a watch from its resourceVersion
//! (`fieldSelector=spec.nodeName=<node>`, so the gateway learns only its own node's pods), with
//! the gateway's own service-account token. Each change goes into the [`PodCache`]; a failure
//! or an expired watch (410) starts over with a new list after a short back-off. The watch runs
//! only while the policy has `pods:` workloads.
//!
//! A pod is normally in the cache before its first container starts: the watch delivers it when
//! it is bound to the node, before the kubelet creates its cgroup. Until then, or while the API
//! server cannot be reached and the pod was never seen, its cgroups are refused.

use std::{
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::pods::{selects_pods, PodCache, PodMeta};
use crate::{
    net::{
        http::{tls_config, HttpUrl},
        Netns, SocketFactory,
    },
    policy::Policy,
    record::EventSink,
};

const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A list must answer within this.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// The server ends each watch after this; a new one resumes from the last resourceVersion.
const WATCH_SECS: u64 = 240;
/// No byte for this long (the server's own end is due at `WATCH_SECS`): the watch is dead.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECS + 60);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const MAX_LIST: usize = 64 << 20;
const MAX_EVENT: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PodWatchError {
    #[error("Kubernetes API URL: {0}")]
    Url(String),
    #[error("reading the token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API server's CA: {0}")]
    Ca(String),
    #[error("connecting to the API server {0}: {1}")]
    Connect(String, String),
    #[error("API server: {0}")]
    Http(String),
    #[error("API server answered {status} to {what}")]
    Status { status: u16, what: &'static str },
    #[error("API server sent an answer that is not a pod list or watch event: {0}")]
    Decode(String),
    #[error("API server: the watch went quiet for {0:?}")]
    Idle(Duration),
}

/// Where the API server is and how the gateway authenticates to it.
#[derive(Debug, Clone)]
pub struct KubeApi {
    pub url: HttpUrl,
    /// Read again for every request: projected tokens are rotated by the kubelet.
    pub token_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
}

impl KubeApi {
    /// From `--kube-api` or, inside a pod, the service environment the kubelet sets; `None`
    /// when neither is there.
    pub fn configure(
        url: Option<String>,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        node: String,
    ) -> Result<Option<Self>, PodWatchError> {
        let url = match url {
            Some(u) => u,
            None => match (
                std::env::var("KUBERNETES_SERVICE_HOST"),
                std::env::var("KUBERNETES_SERVICE_PORT"),
            ) {
                (Ok(host), Ok(port)) if host.contains(':') => format!("https://[{host}]:{port}"),
                (Ok(host), Ok(port)) => format!("https://{host}:{port}"),
                _ => return Ok(None),
            },
        };
        let url = HttpUrl::parse(&url).map_err(|e| PodWatchError::Url(e.to_string()))?;
        let ca_file = ca_file.or_else(|| {
            Path::new(IN_CLUSTER_CA)
                .exists()
                .then(|| IN_CLUSTER_CA.into())
        });
        Ok(Some(Self {
            url,
            token_file: token_file.unwrap_or_else(|| IN_CLUSTER_TOKEN.into()),
            ca_file,
            node,
        }))
    }

    fn token(&self) -> Result<String, PodWatchError> {
        let err = |source| PodWatchError::Token {
            path: self.token_file.clone(),
            source,
        };
        let mut s = String::new();
        std::fs::File::open(&self.token_file)
            .map_err(err)?
            .take(64 * 1024)
            .read_to_string(&mut s)
            .map_err(err)?;
        Ok(s.trim().to_string())
    }

    fn pods_query(&self) -> String {
        format!(
            "/api/v1/pods?fieldSelector={}",
            encode(&format!("spec.nodeName={}", self.node))
        )
    }
}

pub struct PodWatch {
    pub api: Option<KubeApi>,
    pub cache: Arc<PodCache>,
    pub sockets: Arc<SocketFactory>,
    pub events: Arc<EventSink>,
}

enum WatchEnd {
    /// The server ended the watch: resume from here.
    Resume(String),
    /// 410 Gone: the resourceVersion is too old; list again.
    Expired,
    Stopped,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl PodWatch {
    /// Keeps the cache filled while the policy has `pods:` workloads, until `stop`.
    pub async fn run(
        self,
        mut policies: tokio::sync::watch::Receiver<Arc<Policy>>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_secs(1);
        let mut said_unconfigured = false;
        loop {
            while !selects_pods(&policies.borrow_and_update()) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = policies.changed() => if changed.is_err() { return },
                }
            }
            let Some(api) = &self.api else {
                if !said_unconfigured {
                    said_unconfigured = true;
                    tracing::error!("the policy selects pods, but no Kubernetes API server is configured (--kube-api, or KUBERNETES_SERVICE_HOST in a pod): every pod is refused");
                    self.events.emit(
                        "pod_watch_error",
                        json!({"error": "no Kubernetes API server configured"}),
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = policies.changed() => if changed.is_err() { return },
                }
                continue;
            };
            match self.list_and_watch(api, &stop, &mut backoff).await {
                Ok(()) => continue,
                Err(e) => {
                    tracing::warn!("pod watch: {e}; again in {backoff:?}");
                    self.events
                        .emit("pod_watch_error", json!({"error": e.to_string()}));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One list, then watches until the server says the version expired (`Ok`), an error, or
    /// `stop` (`Ok`).
    async fn list_and_watch(
        &self,
        api: &KubeApi,
        stop: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), PodWatchError> {
        let tls = match api.url.tls {
            true => Some(Arc::new(
                tls_config(api.ca_file.as_deref())
                    .map_err(|e| PodWatchError::Ca(format!("{e:?}")))?,
            )),
            false => None,
        };
        let (pods, mut rv) = tokio::time::timeout(LIST_TIMEOUT, self.list(api, tls.as_ref()))
            .await
            .map_err(|_| PodWatchError::Http(format!("list timed out after {LIST_TIMEOUT:?}")))??;
        let count = pods.len();
        self.cache.replace_all(pods);
        *backoff = Duration::from_secs(1);
        tracing::info!(pods = count, node = %api.node, "pods of this node listed");
        self.events
            .emit("pods_listed", json!({"pods": count, "node": api.node}));
        loop {
            match self.watch(api, tls.as_ref(), &rv, stop).await? {
                WatchEnd::Resume(next) => rv = next,
                WatchEnd::Expired | WatchEnd::Stopped => return Ok(()),
            }
        }
    }

    async fn list(
        &self,
        api: &KubeApi,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<(Vec<PodMeta>, String), PodWatchError> {
        let (resp, driver) = self.get(api, tls, &api.pods_query()).await?;
        let result = async {
            if resp.status() != hyper::StatusCode::OK {
                return Err(PodWatchError::Status {
                    status: resp.status().as_u16(),
                    what: "the pod list",
                });
            }
            let body = http_body_util::Limited::new(resp.into_body(), MAX_LIST)
                .collect()
                .await
                .map_err(|e| PodWatchError::Http(e.to_string()))?
                .to_bytes();
            let list: Value =
                serde_json::from_slice(&body).map_err(|e| PodWatchError::Decode(e.to_string()))?;
            let rv = list["metadata"]["resourceVersion"]
                .as_str()
                .filter(|r| !r.is_empty())
                .ok_or_else(|| PodWatchError::Decode("a list without resourceVersion".into()))?
                .to_string();
            let items = list["items"]
                .as_array()
                .ok_or_else(|| PodWatchError::Decode("a list without items".into()))?;
            let pods = items
                .iter()
                .filter_map(|p| pod_meta(p, &api.node))
                .collect();
            Ok((pods, rv))
        }
        .await;
        driver.abort();
        result
    }

    async fn watch(
        &self,
        api: &KubeApi,
        tls: Option<&Arc<rustls::ClientConfig>>,
        rv: &str,
        stop: &CancellationToken,
    ) -> Result<WatchEnd, PodWatchError> {
        let query = format!(
            "{}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECS}&resourceVersion={}",
            api.pods_query(),
            encode(rv)
        );
        let (resp, driver) = self.get(api, tls, &query).await?;
        let result = async {
            match resp.status().as_u16() {
                200 => {}
                410 => return Ok(WatchEnd::Expired),
                status => {
                    return Err(PodWatchError::Status {
                        status,
                        what: "the pod watch",
                    })
                }
            }
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            let mut rv = rv.to_string();
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => return Ok(WatchEnd::Stopped),
                    f = tokio::time::timeout(WATCH_IDLE, body.frame()) => f,
                };
                let frame = match frame {
                    Err(_) => return Err(PodWatchError::Idle(WATCH_IDLE)),
                    Ok(None) => return Ok(WatchEnd::Resume(rv)),
                    Ok(Some(f)) => f.map_err(|e| PodWatchError::Http(e.to_string()))?,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let event: Value = serde_json::from_slice(&line)
                        .map_err(|e| PodWatchError::Decode(e.to_string()))?;
                    if let Some(end) = self.apply(api, &event, &mut rv)? {
                        return Ok(end);
                    }
                }
                if buf.len() > MAX_EVENT {
                    return Err(PodWatchError::Decode(format!(
                        "a watch event over {MAX_EVENT} bytes"
                    )));
                }
            }
        }
        .await;
        driver.abort();
        result
    }

    /// One watch event into the cache; `Some` when the watch must end.
    fn apply(
        &self,
        api: &KubeApi,
        event: &Value,
        rv: &mut String,
    ) -> Result<Option<WatchEnd>, PodWatchError> {
        let object = &event["object"];
        let kind = event["type"].as_str().unwrap_or_default();
        if kind == "ERROR" {
            if object["code"].as_u64() == Some(410) {
                return Ok(Some(WatchEnd::Expired));
            }
            return Err(PodWatchError::Http(format!(
                "watch error: {}",
                object["message"].as_str().unwrap_or("(no message)")
            )));
        }
        if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
            *rv = v.to_string();
        }
        match kind {
            "ADDED" | "MODIFIED" => match pod_meta(object, &api.node) {
                Some(pod) => self.cache.upsert(pod),
                // Not a pod of this node after all (or without the fields a pod has): nothing
                // to say about it. A pod that was known and no longer reads as one is dropped.
                None => {
                    if let Some(uid) = object["metadata"]["uid"].as_str() {
                        self.cache.remove(uid);
                    }
                }
            },
            "DELETED" => {
                if let Some(uid) = object["metadata"]["uid"].as_str() {
                    self.cache.remove(uid);
                }
            }
            "BOOKMARK" => {}
            other => {
                return Err(PodWatchError::Decode(format!(
                    "unknown watch event type {other:?}"
                )))
            }
        }
        Ok(None)
    }

    /// A GET on a new connection (from the gateway's own namespace, registered as its own
    /// socket); the task driving the connection is aborted by the caller when done.
    async fn get(
        &self,
        api: &KubeApi,
        tls: Option<&Arc<rustls::ClientConfig>>,
        path_and_query: &str,
    ) -> Result<(hyper::Response<Incoming>, tokio::task::JoinHandle<()>), PodWatchError> {
        let url = &api.url;
        let connect = |e: String| PodWatchError::Connect(url.authority.clone(), e);
        let token = api.token()?;
        let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::lookup_host((url.host.as_str(), url.port)),
        )
        .await
        .map_err(|_| connect("resolving timed out".into()))?
        .map_err(|e| connect(e.to_string()))?
        .collect();
        let mut last = "no address".to_string();
        let mut tcp = None;
        for addr in addrs {
            match self
                .sockets
                .connect(addr, Netns::Gateway, CONNECT_TIMEOUT)
                .await
            {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let tcp = tcp.ok_or_else(|| connect(last))?;
        let io: Box<dyn Io> = match tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(url.host.clone())
                    .map_err(|e| connect(e.to_string()))?;
                Box::new(
                    tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
                    )
                    .await
                    .map_err(|_| connect("TLS handshake timed out".into()))?
                    .map_err(|e| connect(format!("TLS: {e}")))?,
                )
            }
            None => Box::new(tcp),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| PodWatchError::Http(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path_and_query)
            .header(hyper::header::HOST, url.authority.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "agentgate")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| PodWatchError::Http(e.to_string()))?;
        match tokio::time::timeout(LIST_TIMEOUT, sender.send_request(req)).await {
            Ok(Ok(resp)) => Ok((resp, driver)),
            Ok(Err(e)) => {
                driver.abort();
                Err(PodWatchError::Http(e.to_string()))
            }
            Err(_) => {
                driver.abort();
                Err(PodWatchError::Http("no answer".into()))
            }
        }
    }
}

/// What the gateway keeps of a pod, if it is one of `node`'s: a pod object without a UID,
/// namespace or name is not taken.
fn pod_meta(pod: &Value, node: &str) -> Option<PodMeta> {
    let meta = &pod["metadata"];
    let nonempty = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    if pod["spec"]["nodeName"].as_str() != Some(node) {
        return None;
    }
    let labels = match &meta["labels"] {
        Value::Object(m) => m
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => Default::default(),
    };
    Some(PodMeta {
        uid: nonempty(&meta["uid"])?,
        namespace: nonempty(&meta["namespace"])?,
        name: nonempty(&meta["name"])?,
        // The API server defaults it; an object without it would be the `default` account.
        service_account: nonempty(&pod["spec"]["serviceAccountName"])
            .unwrap_or_else(|| "default".into()),
        labels,
    })
}

/// Percent-encoding of a query value (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_of_other_nodes_and_incomplete_objects_are_not_taken() {
        let pod = json!({
            "metadata": {"uid": "u1", "namespace": "agents", "name": "a-0",
                          "labels": {"app": "agent", "n": 1}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "runner"}
        });
        let m = pod_meta(&pod, "node-1").unwrap();
        assert_eq!(
            (m.uid.as_str(), m.namespace.as_str(), m.name.as_str()),
            ("u1", "agents", "a-0")
        );
        assert_eq!(m.service_account, "runner");
        assert_eq!(
            m.labels.len(),
            1,
            "a label that is not a string is not taken"
        );
        assert!(pod_meta(&pod, "node-2").is_none());
        let mut no_uid = pod.clone();
        no_uid["metadata"]["uid"] = json!("");
        assert!(pod_meta(&no_uid, "node-1").is_none());
        let mut no_sa = pod.clone();
        no_sa["spec"]
            .as_object_mut()
            .unwrap()
            .remove("serviceAccountName");
        assert_eq!(
            pod_meta(&no_sa, "node-1").unwrap().service_account,
            "default"
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("spec.nodeName=n-1"), "spec.nodeName%3Dn-1");
        assert_eq!(encode("a&b c"), "a%26b%20c");
    }
}
