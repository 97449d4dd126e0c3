//! Kubernetes port-forwards (`pods/portforward`): refused unless an `effect: allow` rule with
//! `ports` allows every port they reach (docs/kubernetes.md, *Port-forward*), then relayed as
//! an opaque byte stream, on record with its ports, bytes each way and duration.
//!
//! Where the ports are: kubectl (1.32: SPDY tunnelled in WebSocket, subprotocol
//! `SPDY/3.1+portforward.k8s.io`; its fallback and older clients: `Upgrade: SPDY/3.1`) names
//! them only in the headers of each SPDY stream it opens, one pair of streams per local
//! connection, and sends no `ports` in the URL. So the request is judged when it comes (deny
//! and approval rules, an allowing rule for the pod, the query's ports if it has any), and
//! then every stream's port as its `SYN_STREAM` passes (spdy.rs), under the policy in force
//! then, before the frame reaches the API server; a stream to a port no rule allows, or a
//! frame the gateway cannot read, ends the forward. The WebSocket channel protocol
//! (`v4.channel.k8s.io`, `portforward.k8s.io`: other clients) takes its ports from the query
//! (`ports=`, repeated or comma-separated), so there they must all be given and allowed.
//!
//! The stream is ended on expiry, revocation and reload like an exec stream (it joins the
//! connection's relays, exec.rs, and ends with the session's `ended`).

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use hyper::{header, upgrade::OnUpgrade, HeaderMap};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use super::{
    exec::Relay,
    request_info::{self, RequestInfo},
    rules::{self, describe, HttpAction},
    spdy, ws,
};
use crate::{
    policy::{Policy, Who},
    protocol::action_gate::Judgement,
    record::{CommandOutput, Record, Recorder, Statement},
};

/// The rule name on record when no rule allows a port-forward at all.
pub const NO_RULE: &str = "(no rule allows port-forwards)";

/// How a port-forward's streams travel, as the agent asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `Upgrade: SPDY/3.1`: ports in each stream's headers.
    Spdy,
    /// WebSocket offering only `SPDY/3.1+…` subprotocols (kubectl 1.31+): SPDY inside.
    Tunnel,
    /// WebSocket with a channel subprotocol: the ports are the query's.
    Channels,
    /// No upgrade: no stream (the API server refuses it), judged as a request.
    None,
}

/// A `pods/portforward` request: its transport and the ports its query names.
#[derive(Debug, Clone)]
pub struct Asked {
    pub transport: Transport,
    pub ports: Vec<u16>,
}

impl Asked {
    /// The port-forward `info` is, if it is one; `Err` (why) when its query's ports cannot be
    /// read (refused: the server could read them otherwise than the gateway).
    pub fn of(
        info: Option<&RequestInfo>,
        query: &str,
        upgrade: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Option<Self>, String> {
        if !info.is_some_and(is_port_forward) {
            return Ok(None);
        }
        let transport = match upgrade {
            None => Transport::None,
            Some(u) if u.starts_with("spdy/") => Transport::Spdy,
            Some(_) => {
                let offered: Vec<String> = headers
                    .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .flat_map(|v| v.to_str().unwrap_or("?").split(','))
                    .map(|p| p.trim().to_ascii_lowercase())
                    .filter(|p| !p.is_empty())
                    .collect();
                if !offered.is_empty() && offered.iter().all(|p| p.starts_with("spdy/3.1+")) {
                    Transport::Tunnel
                } else {
                    Transport::Channels
                }
            }
        };
        Ok(Some(Self {
            transport,
            ports: query_ports(query)?,
        }))
    }
}

/// `pods/portforward` in the core group.
pub fn is_port_forward(info: &RequestInfo) -> bool {
    info.is_resource_request
        && info.api_group.is_empty()
        && info.resource == "pods"
        && info.subresource == "portforward"
}

/// The ports of a port-forward's query: `ports=` (the API server's `PodPortForwardOptions`)
/// and `port=` (the kubelet's own name), each repeated or comma-separated; `Err` on anything
/// that is not a port.
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let pairs = request_info::query_pairs(query)
        .map_err(|e| format!("agentgate: the port-forward's query cannot be read: {e}"))?;
    let mut ports = Vec::new();
    for (k, v) in pairs {
        if k != "ports" && k != "port" {
            continue;
        }
        for p in v.split(',') {
            let port = spdy::parse_port(p.as_bytes())
                .map_err(|e| format!("agentgate: the port-forward's query: {e}"))?;
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The request under the rules and, for a port-forward, the allowance: deny rules first (a
/// deny wins over any allowance), then a port-forward no allow rule covers is refused, then
/// the approval rules hold it.
pub fn judge<'p>(
    policy: &'p Policy,
    who: &Who<'_>,
    target: &str,
    action: &HttpAction<'_>,
    asked: Option<&Asked>,
) -> Judgement<'p> {
    let judged = rules::judge(policy, who, target, action);
    let (Some(asked), HttpAction::Kubernetes { info, .. }) = (asked, action) else {
        return judged;
    };
    if matches!(judged, Judgement::Denied { .. }) {
        return judged;
    }
    if asked.transport == Transport::Channels && asked.ports.is_empty() {
        return Judgement::Denied {
            rule: NO_RULE.into(),
            why: format!(
                "{}: a WebSocket port-forward that is not SPDY takes its ports from the query, and this one names none",
                describe(info)
            ),
        };
    }
    match allowed(policy, who, target, info, &asked.ports) {
        Ok(_) => judged,
        Err((rule, why)) => Judgement::Denied { rule, why },
    }
}

/// Whether allow rules cover a port-forward to `info` and every one of `ports` (none: the
/// ports come later, stream by stream): the names of the rules that do, or the refusal's rule
/// and why.
fn allowed(
    policy: &Policy,
    who: &Who<'_>,
    target: &str,
    info: &RequestInfo,
    ports: &[u16],
) -> Result<Vec<String>, (String, String)> {
    let covering: Vec<_> = rules::forward_allowances(policy, who, target)
        .into_iter()
        .filter(|(_, k)| k.covers(info))
        .collect();
    if covering.is_empty() {
        return Err((
            NO_RULE.into(),
            format!(
                "{}: port-forwards are refused unless a rule with `ports` allows them",
                describe(info)
            ),
        ));
    }
    let listed: BTreeSet<u16> = covering
        .iter()
        .flat_map(|(_, k)| k.ports.iter().flatten().copied())
        .collect();
    let names: Vec<String> = covering.iter().map(|(r, _)| r.name.clone()).collect();
    if let Some(p) = ports.iter().find(|p| !listed.contains(p)) {
        let allowed: Vec<String> = listed.iter().map(u16::to_string).collect();
        return Err((
            names.join(", "),
            format!(
                "{}: port {p} is not among the ports allowed ({})",
                describe(info),
                allowed.join(", ")
            ),
        ));
    }
    Ok(names)
}

/// Judges each stream's port while the forward runs, under the policy in force then.
pub struct PortJudge {
    pub policy: watch::Receiver<Arc<Policy>>,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub workload: String,
    pub target: String,
    pub info: RequestInfo,
}

impl PortJudge {
    /// `Err` (rule, why) when a deny rule now refuses the forward or no allow rule covers
    /// `port`. Approval rules are not asked again: the forward was approved before it began.
    fn port(&self, port: u16) -> Result<(), (String, String)> {
        let policy = self.policy.borrow().clone();
        let who = Who {
            issuer: &self.issuer,
            subject: &self.subject,
            groups: &self.groups,
            workload: &self.workload,
            login: None,
        };
        let action = HttpAction::Kubernetes {
            info: &self.info,
            exec: None,
        };
        if let Judgement::Denied { rule, why } = rules::judge(&policy, &who, &self.target, &action)
        {
            return Err((rule, why));
        }
        allowed(&policy, &who, &self.target, &self.info, &[port]).map(|_| ())
    }
}

/// How the relay reads the agent's bytes.
pub enum Inspect {
    /// SPDY frames (`Upgrade: SPDY/3.1`).
    Spdy(spdy::Reader),
    /// SPDY inside WebSocket binary messages.
    Tunnel(ws::Frames, spdy::Reader),
    /// The ports were the query's, judged before: the bytes are not read.
    Opaque,
    /// Not relayed at all: why.
    Refuse(String),
}

impl Inspect {
    /// The inspection for a forward the target agreed to, by the transport asked for and the
    /// subprotocol the target chose.
    pub fn new(asked: &Asked, chosen: Option<&str>) -> Self {
        let chosen = chosen.unwrap_or("").to_ascii_lowercase();
        match asked.transport {
            Transport::Spdy => Self::Spdy(spdy::Reader::default()),
            _ if chosen.starts_with("spdy/3.1+") => {
                Self::Tunnel(ws::Frames::default(), spdy::Reader::default())
            }
            Transport::Channels if !asked.ports.is_empty() => Self::Opaque,
            _ => Self::Refuse(format!(
                "the target chose the subprotocol `{chosen}`, whose ports the gateway cannot judge"
            )),
        }
    }

    /// The streams opened in `data` (the agent's next bytes); `Err` when they cannot be read.
    fn feed(&mut self, data: &[u8]) -> Result<Vec<spdy::NewStream>, String> {
        match self {
            Self::Opaque => Ok(Vec::new()),
            Self::Refuse(why) => Err(why.clone()),
            Self::Spdy(r) => r.feed(data).map_err(|e| e.to_string()),
            Self::Tunnel(frames, r) => {
                let mut opened = Vec::new();
                for m in frames.feed(data) {
                    // `Frames` splits off the first byte as a channel; a tunnel has none.
                    let mut payload = Vec::with_capacity(m.data.len() + 1);
                    payload.push(m.channel);
                    payload.extend_from_slice(&m.data);
                    opened.extend(r.feed(&payload).map_err(|e| e.to_string())?);
                }
                if frames.broken {
                    return Err("the tunnel is not WebSocket the gateway can read".into());
                }
                if frames.skipped > 0 {
                    return Err("a WebSocket message too large to read".into());
                }
                Ok(opened)
            }
        }
    }
}

/// What the relay needs besides the two upgrades.
pub struct Stream<'a> {
    pub recorder: &'a Recorder,
    pub rec: Statement,
    pub inspect: Inspect,
    /// The ports the query named (judged with the request; all a channel-protocol forward has).
    pub asked_ports: Vec<u16>,
    pub judge: PortJudge,
    /// Cancelled when the session ends (expiry, revocation, reload): the forward is cut.
    pub ended: CancellationToken,
    pub started: Instant,
}

pub fn relay<'a>(s: Stream<'a>, agent: OnUpgrade, target: OnUpgrade) -> Relay<'a> {
    Box::pin(run(s, agent, target))
}

enum End {
    Done,
    Refused(String, String),
    Unreadable(String),
    Cut,
}

async fn run(s: Stream<'_>, agent: OnUpgrade, target: OnUpgrade) {
    let Stream {
        recorder,
        mut rec,
        mut inspect,
        asked_ports,
        judge,
        ended,
        started,
    } = s;
    let (agent, target) = match tokio::try_join!(agent, target) {
        Ok(pair) => pair,
        Err(e) => {
            rec.error = Some(format!("the upgrade failed: {e}"));
            recorder.record(Record::Statement(rec)).await;
            return;
        }
    };
    let (mut agent_r, mut agent_w) = tokio::io::split(TokioIo::new(agent));
    let (mut target_r, mut target_w) = tokio::io::split(TokioIo::new(target));
    let mut ports: BTreeSet<u16> = asked_ports.into_iter().collect();
    let mut streams = 0u64;
    let mut bytes_up = 0u64;
    let mut bytes_down = 0u64;
    // The agent's bytes: each stream's port judged before the frame that opens it goes on.
    let up = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match agent_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let opened = match inspect.feed(&buf[..n]) {
                Ok(o) => o,
                Err(why) => return End::Unreadable(why),
            };
            for stream in opened {
                if let Err((rule, why)) = judge.port(stream.port) {
                    return End::Refused(rule, why);
                }
                streams += 1;
                ports.insert(stream.port);
            }
            if target_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
            bytes_up += n as u64;
        }
        let _ = target_w.shutdown().await;
        End::Done
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match target_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if agent_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
            bytes_down += n as u64;
        }
        let _ = agent_w.shutdown().await;
    };
    let end = {
        let mut up = std::pin::pin!(up);
        let mut down = std::pin::pin!(down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                e = &mut up, if !up_done => match e {
                    End::Done => up_done = true,
                    e => break e,
                },
                () = &mut down, if !down_done => down_done = true,
                () = ended.cancelled() => break End::Cut,
            }
            if up_done && down_done {
                break End::Done;
            }
        }
    };
    rec.duration_us = Some(started.elapsed().as_micros() as u64);
    rec.params = ports.iter().map(|p| Some(p.to_string())).collect();
    match end {
        End::Done => {}
        End::Cut => rec.error = Some("the session ended during the port-forward".into()),
        End::Refused(rule, why) => {
            rec.decision = "denied";
            rec.error = Some(format!(
                "{}; the port-forward was ended",
                crate::protocol::action_gate::denial(&rule, &why)
            ));
            rec.rule = Some(rule);
        }
        End::Unreadable(why) => {
            rec.decision = "denied";
            rec.rule = Some("(unreadable)".into());
            rec.error = Some(format!("agentgate: {why}; the port-forward was ended"));
        }
    }
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    rec.output = Some(CommandOutput {
        stdout: format!(
            "port-forward: ports [{}], {streams} streams, {bytes_up} bytes to the pod, {bytes_down} bytes back",
            list.join(", ")
        ),
        stderr: String::new(),
        cut: false,
        bytes: bytes_down,
    });
    recorder.record(Record::Statement(rec)).await;
}

#[cfg(test)]
#[path = "portforward_tests.rs"]
mod policy_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ports_are_read_as_the_server_reads_them() {
        assert_eq!(query_ports("").unwrap(), Vec::<u16>::new());
        assert_eq!(
            query_ports("ports=8080&ports=5432,22&port=9").unwrap(),
            vec![8080, 5432, 22, 9]
        );
        assert_eq!(query_ports("%70orts=80%2C81").unwrap(), vec![80, 81]);
        for bad in [
            "ports=",
            "ports=0",
            "ports=70000",
            "ports=80,",
            "ports=+80",
            "ports=x",
        ] {
            assert!(query_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_transport_is_what_the_agent_offered() {
        let info =
            request_info::resolve("GET", "/api/v1/namespaces/d/pods/p/portforward", None).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "SPDY/3.1+portforward.k8s.io".parse().unwrap(),
        );
        let asked = Asked::of(Some(&info), "", Some("websocket"), &h)
            .unwrap()
            .unwrap();
        assert_eq!(asked.transport, Transport::Tunnel);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "SPDY/3.1+portforward.k8s.io, v4.channel.k8s.io"
                .parse()
                .unwrap(),
        );
        let asked = Asked::of(Some(&info), "", Some("websocket"), &h)
            .unwrap()
            .unwrap();
        assert_eq!(asked.transport, Transport::Channels);
        // A channel protocol chosen where the query named no ports: not relayed.
        assert!(matches!(
            Inspect::new(&asked, Some("v4.channel.k8s.io")),
            Inspect::Refuse(_)
        ));
        let exec = request_info::resolve("GET", "/api/v1/namespaces/d/pods/p/exec", None).unwrap();
        assert!(Asked::of(Some(&exec), "", Some("websocket"), &h)
            .unwrap()
            .is_none());
    }
}
