//! What is known about a connection, filled in as the core and its protocol handler learn it,
//! and the typed events about it. Each event is its connection's facts plus what happened,
//! serialised once for the event file (and the record, and through the event file the
//! metrics); nothing is assembled from field names at the call sites.

use serde::Serialize;
use serde_json::Value;

use crate::policy::Protocol;

#[derive(Debug, Clone, Serialize)]
pub struct ConnFacts {
    /// The gateway's number for the connection.
    pub conn: u64,
    /// `host`, or `pod:<netns inode>`.
    pub listener: String,
    pub peer: String,
    /// Where the agent connected to (an alias of a local target included).
    pub original_dst: String,
    pub pid: u32,
    pub cgroup_id: u64,
    /// `None` when the cgroup was gone by the time the gateway looked (always serialised).
    pub cgroup: Option<String>,
    pub netns_cookie: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Where the target is dialled, when not at `original_dst` (an alias).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialled: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Who, once a token was verified.
    #[serde(flatten)]
    pub principal: Option<PrincipalFacts>,
    /// What the agent's client asked for at the protocol's own login.
    #[serde(flatten)]
    pub login: Option<LoginFacts>,
    /// The session id on record, once the session is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrincipalFacts {
    pub subject: String,
    pub issuer: String,
    pub groups: Vec<String>,
}

impl From<&crate::identity::Principal> for PrincipalFacts {
    fn from(p: &crate::identity::Principal) -> Self {
        Self {
            subject: p.subject.clone(),
            issuer: p.issuer.clone(),
            groups: p.groups.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoginFacts {
    pub client_user: Option<String>,
    /// The database, or the protocol's other namespace inside the target.
    pub database: Option<String>,
    pub client_tls: bool,
}

/// `refused`: why, and under which rule.
#[derive(Debug, Serialize)]
pub struct Refused<'a> {
    pub code: &'a str,
    pub reason: &'a str,
    pub rule: Option<&'a str>,
}

/// `allowed`: the rule, under the policy version the decision was made in.
#[derive(Debug, Serialize)]
pub struct Allowed<'a> {
    pub rule: &'a str,
    pub policy_version: &'a str,
}

/// `upstream_failed`.
#[derive(Debug, Serialize)]
pub struct UpstreamFailed<'a> {
    pub error: &'a str,
}

/// `cancel`: a protocol-level cancel request passed on (or not) to the target.
#[derive(Debug, Serialize)]
pub struct CancelForwarded {
    pub forwarded: bool,
    pub error: Option<String>,
}

/// `connection_close`.
#[derive(Debug, Serialize)]
pub struct Closed<'a> {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub error: Option<&'a str>,
    pub ended_by: Option<&'a str>,
    #[serde(flatten)]
    pub statements: Option<StatementCounts>,
}

/// What a statement-level protocol adds to `connection_close`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatementCounts {
    pub statements: u64,
    pub denied_statements: u64,
}

/// `refused` of a connection the kernel did not redirect (someone dialled a listener
/// directly): nothing is known about it but its socket.
#[derive(Debug, Serialize)]
pub struct NotRedirected {
    pub conn: u64,
    pub peer: String,
    pub listener: String,
    pub code: &'static str,
    pub reason: &'static str,
}

/// An event without connection facts, as one JSON object.
pub fn plain_event<T: Serialize>(detail: &T) -> Value {
    serde_json::to_value(detail)
        .unwrap_or_else(|e| serde_json::json!({"event_error": e.to_string()}))
}

/// No detail beyond the facts (`connection_open`).
#[derive(Debug, Serialize)]
pub struct Nothing {}

#[derive(Serialize)]
struct Event<'a, T: Serialize> {
    #[serde(flatten)]
    facts: &'a ConnFacts,
    #[serde(flatten)]
    detail: &'a T,
}

impl ConnFacts {
    /// The event object: these facts and `detail`, one JSON object.
    pub fn event<T: Serialize>(&self, detail: &T) -> Value {
        serde_json::to_value(Event {
            facts: self,
            detail,
        })
        // Only plain structs of strings and numbers are serialised here: this cannot fail,
        // and an event is never worth a panic.
        .unwrap_or_else(|e| serde_json::json!({"conn": self.conn, "event_error": e.to_string()}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ConnFacts {
        ConnFacts {
            conn: 7,
            listener: "host".into(),
            peer: "127.0.0.1:40000".into(),
            original_dst: "127.0.0.2:5432".into(),
            pid: 42,
            cgroup_id: 9,
            cgroup: None,
            netns_cookie: 1,
            workload: Some("ci".into()),
            dialled: None,
            target: Some("db".into()),
            protocol: Some(Protocol::Postgres),
            principal: None,
            login: None,
            session: None,
        }
    }

    /// The event objects keep the field names and shapes the event file has always had.
    #[test]
    fn events_keep_their_fields() {
        let mut f = facts();
        let v = f.event(&Refused {
            code: "denied",
            reason: "no",
            rule: None,
        });
        assert_eq!(v["conn"], 7);
        assert_eq!(v["cgroup"], Value::Null);
        assert!(v.as_object().unwrap().contains_key("cgroup"));
        assert!(!v.as_object().unwrap().contains_key("subject"));
        assert_eq!(v["protocol"], "postgres");
        assert_eq!(
            (v["code"].as_str(), v["rule"].clone()),
            (Some("denied"), Value::Null)
        );
        f.principal = Some(PrincipalFacts {
            subject: "s".into(),
            issuer: "i".into(),
            groups: vec!["g".into()],
        });
        f.login = Some(LoginFacts {
            client_user: Some("u".into()),
            database: None,
            client_tls: false,
        });
        f.session = Some("abc-7".into());
        let v = f.event(&Closed {
            bytes_up: 1,
            bytes_down: 2,
            duration_ms: 3,
            error: None,
            ended_by: Some("token expired"),
            statements: Some(StatementCounts {
                statements: 4,
                denied_statements: 1,
            }),
        });
        assert_eq!(v["subject"], "s");
        assert_eq!(v["groups"][0], "g");
        assert_eq!(v["client_user"], "u");
        assert_eq!(v["client_tls"], false);
        assert_eq!(v["session"], "abc-7");
        assert_eq!(v["statements"], 4);
        assert_eq!(v["denied_statements"], 1);
        assert_eq!(v["ended_by"], "token expired");
    }
}
