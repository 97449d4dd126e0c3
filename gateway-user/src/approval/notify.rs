//! Webhooks: every request and final decision is POSTed to the policy's approval webhooks,
//! retried with backoff. Delivery is advisory: a failure is logged and recorded as an event,
//! and never decides anything.

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::model::{Request, WebhookFormat};
use crate::{
    net::http::{self, HttpClient},
    policy::Policy,
    record::EventSink,
};

const ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Notifier {
    policy: watch::Receiver<Arc<Policy>>,
    http: HttpClient,
    events: Arc<EventSink>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Notifier {
    pub fn new(
        policy: watch::Receiver<Arc<Policy>>,
        http: HttpClient,
        events: Arc<EventSink>,
    ) -> Notifier {
        let tls = match http::tls_config(None) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!("webhook TLS unavailable, https webhooks will fail: {e:?}");
                None
            }
        };
        Notifier {
            policy,
            http,
            events,
            tls,
        }
    }

    /// Sends `event` for `r` to every webhook of the policy in force, each in its own task.
    pub fn announce(&self, event: &'static str, r: &Request) {
        // Outside the runtime (the process is exiting) nothing can be delivered any more.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (hooks, link) = {
            let p = self.policy.borrow();
            let link = p
                .console
                .as_ref()
                .and_then(|c| console_link(&c.redirect_url, &r.id));
            (p.gateway.approval_webhooks.clone(), link)
        };
        for hook in hooks {
            let body = match hook.format {
                WebhookFormat::Json => {
                    let mut body = json!({"event": event, "request": r});
                    if let Some(l) = &link {
                        body["console_url"] = json!(l);
                    }
                    body
                }
                WebhookFormat::Slack => slack(event, r, link.as_deref()),
            };
            let (http, tls) = (self.http.clone(), self.tls.clone());
            let (events, id) = (self.events.clone(), r.id.clone());
            rt.spawn(async move {
                deliver(&hook.url, body, &http, tls, &events, &id, event).await;
            });
        }
    }
}

async fn deliver(
    url: &str,
    body: Value,
    http: &HttpClient,
    tls: Option<Arc<rustls::ClientConfig>>,
    events: &EventSink,
    id: &str,
    event: &str,
) {
    let body = body.to_string();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let outcome = match http::HttpUrl::parse(url) {
            Ok(u) => http.post_json(&u, tls.as_ref(), body.clone()).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                events.emit(
                    "webhook_delivered",
                    json!({"id": id, "event": event, "url": url, "attempt": attempt, "status": status}),
                );
                return;
            }
            Ok(status) => {
                tracing::warn!(id, url, attempt, status, "approval webhook refused");
                events.emit(
                    "webhook_failed",
                    json!({"id": id, "event": event, "url": url, "attempt": attempt, "status": status}),
                );
            }
            Err(e) => {
                tracing::warn!(id, url, attempt, "approval webhook failed: {e}");
                events.emit(
                    "webhook_failed",
                    json!({"id": id, "event": event, "url": url, "attempt": attempt, "error": e.to_string()}),
                );
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    tracing::error!(
        id,
        url,
        "approval webhook given up after {ATTEMPTS} attempts"
    );
}

/// The request's page in the web console: `{origin}/console/#/approvals/{id}`, the origin
/// (scheme, host, port) being that of the console's sign-in callback.
fn console_link(redirect_url: &str, id: &str) -> Option<String> {
    let u = redirect_url.parse::<hyper::Uri>().ok()?;
    let (scheme, authority) = (u.scheme_str()?, u.authority()?);
    Some(format!("{scheme}://{authority}/console/#/approvals/{id}"))
}

/// Agent-controlled text for Slack's mrkdwn: `&`, `<` and `>` escaped (no mentions or links can
/// be forged) and code fences broken (the text cannot leave its code block).
fn slack_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace("```", "'''")
}

/// Statements longer than this are cut in Slack messages, saying so.
const SLACK_STATEMENT: usize = 2_000;

/// A Slack incoming-webhook message: a text fallback and a section with the details.
fn slack(event: &str, r: &Request, link: Option<&str>) -> Value {
    let head = match event {
        "approval_requested" => format!(
            ":hourglass: agentgate approval request `{}`: {} wants to run on `{}` database `{}` (waits for {})",
            r.id,
            slack_text(&r.subject),
            slack_text(&r.target),
            slack_text(&r.action.namespace),
            slack_text(&r.waits_for())
        ),
        _ => format!(
            "agentgate approval request `{}` is {}{}",
            r.id,
            r.state.as_str(),
            r.reason
                .as_deref()
                .map(|x| format!(": {}", slack_text(x)))
                .unwrap_or_default()
        ),
    };
    let total = r.action.text.chars().count();
    let shown: String = r.action.text.chars().take(SLACK_STATEMENT).collect();
    let mut statement = format!("```{}```", slack_text(&shown));
    if total > SLACK_STATEMENT {
        statement.push_str(&format!(
            "\n:warning: cut at {SLACK_STATEMENT} of {total} characters: read it all with `agentgate approvals show {}` before deciding",
            r.id
        ));
    }
    // The link is the policy's origin and the gateway's id: nothing of the agent's in it.
    let head = match link {
        Some(l) => format!("{head} · <{l}|open in the console>"),
        None => head,
    };
    json!({
        "text": format!("{head}\n{statement}"),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": head}},
            {"type": "section", "text": {"type": "mrkdwn", "text": statement}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "rule `{}` · workload `{}` · class `{}` · `agentgate approvals approve {}`",
                slack_text(&r.rule), slack_text(&r.workload), slack_text(&r.action.class), r.id)}]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_messages_cannot_be_steered_by_the_statement() {
        let r: Request = serde_json::from_value(json!({
            "id": "ar-000000000001", "state": "pending", "created_ms": 0, "expires_ms": 1,
            "decided_ms": null, "session": "s", "issuer": "i", "subject": "agent <!channel>",
            "workload": "w", "target": "pg", "database": "db", "protocol": "postgres",
            "statement": format!("SELECT 1 /* ``` <https://evil.example|approve> {} */; DROP TABLE t", " ".repeat(3000)),
            "params": [], "class": "ddl", "rule": "r", "approvers": ["dba"], "quorum": 1,
            "mode": "hold", "retry_window_ms": 0, "retry_used_ms": null, "reason": null, "votes": [],
        }))
        .unwrap();
        let m = slack("approval_requested", &r, None);
        let text = m["text"].as_str().unwrap();
        assert!(
            !text.contains("<!channel>") && !text.contains("<https://"),
            "{text}"
        );
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        // The statement's own fence is broken: exactly one code block, opened and closed.
        assert_eq!(text.matches("```").count(), 2, "{text}");
        assert!(text.contains("cut at 2000 of 3"), "{text}");
    }

    #[test]
    fn the_message_links_to_the_requests_console_page() {
        assert_eq!(
            console_link("https://gw.example:8443/console/callback?x=1", "ar-0001").as_deref(),
            Some("https://gw.example:8443/console/#/approvals/ar-0001")
        );
        assert_eq!(console_link("not a url", "ar-1"), None);
        let r: Request = serde_json::from_value(json!({
            "id": "ar-000000000001", "state": "pending", "created_ms": 0, "expires_ms": 1,
            "decided_ms": null, "session": "s", "issuer": "i", "subject": "a",
            "workload": "w", "target": "pg", "database": "db", "protocol": "postgres",
            "statement": "DROP TABLE t", "params": [], "class": "ddl", "rule": "r",
            "approvers": ["dba"], "quorum": 1, "mode": "hold", "retry_window_ms": 0,
            "retry_used_ms": null, "reason": null, "votes": [],
        }))
        .unwrap();
        let link = "https://gw.example/console/#/approvals/ar-000000000001";
        let m = slack("approval_requested", &r, Some(link));
        assert!(
            m["text"]
                .as_str()
                .unwrap()
                .contains(&format!("<{link}|open in the console>")),
            "{m}"
        );
    }
}
