//! The HTTP admin API's routes, for a caller already authenticated (`http.rs`): the approvals
//! (any approver, for the requests of their groups), the live events, and the console's
//! read-outs of the record and the policy (auditors) and revocations (auditors read, admins
//! make and lift). Every role is checked here, on every request, before any input is read:
//! someone without the role learns nothing but that (403 `forbidden`).
//!
//! - `GET /v1/approvals[?state=]`, `GET /v1/approvals/{id}`, `POST /v1/approvals/{id}/approve`,
//!   `POST /v1/approvals/{id}/deny`
//! - `GET /v1/events` (server-sent events; `events.rs`)
//! - `GET /v1/sessions`, `/v1/sessions/{id}`, `/timeline`, `/cast`, `/export` (`data.rs`)
//! - `GET /v1/agents` (with its `series`: `series.rs`)
//! - `GET /v1/revocations`, `POST /v1/revocations`, `POST /v1/revocations/lift`
//! - `GET /v1/audit`, `GET /v1/policy` (`views.rs`)
//!
//! docs/audit.md ("HTTP API") lists each with its role and its JSON.

// A refusal is the answer itself, returned at once with `?` (never kept or passed far): its
// size does not matter.
#![allow(clippy::result_large_err)]

use std::{convert::Infallible, sync::Arc};

use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{
    api::StateFilter,
    caller::Caller,
    data::{self, SessionFilter},
    events,
    http::{refusal, refuse, reply},
    query::{self, Params},
    series,
    views::ConsoleApi,
    Admin, AdminRequest,
};
use crate::{
    approval::{Approver, Verdict},
    audit::AuditError,
    policy::ConsoleRole,
};

/// Every answer's body: whole (JSON, a file) or streamed (the events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Request bodies are a reason and a few names at most.
const MAX_BODY: usize = 64 * 1024;
/// Sessions per page: 50 unless asked, at most 500.
const SESSIONS_PAGE: (usize, usize) = (50, 500);
/// Timeline events per page: 1,000 unless asked, at most 10,000.
const TIMELINE_PAGE: (usize, usize) = (1_000, 10_000);

pub fn whole(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

/// The answer to an HTTP request from `caller`.
pub async fn route(
    req: Request<hyper::body::Incoming>,
    caller: &Caller,
    admin: &Arc<Admin>,
    api: &Arc<ConsoleApi>,
) -> Response<Body> {
    match answer(req, caller, admin, api).await {
        Ok(r) | Err(r) => r,
    }
}

type Answer = Result<Response<Body>, Response<Body>>;

fn bad(e: impl std::fmt::Display) -> Response<Body> {
    refuse(StatusCode::BAD_REQUEST, "bad_request", e)
}

fn not_found() -> Response<Body> {
    refuse(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// 403 unless the caller has `role` or more.
fn need(caller: &Caller, role: ConsoleRole) -> Result<(), Response<Body>> {
    if caller.at_least(role) {
        Ok(())
    } else {
        let name = match role {
            ConsoleRole::Approver => "approver",
            ConsoleRole::Auditor => "auditor",
            ConsoleRole::Admin => "admin",
        };
        Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the console role `{name}` (policy console.auditors / console.admins)"
            ),
        ))
    }
}

/// A read of the record that found nothing is a 404; other failures are the server's.
fn record_error(e: AuditError) -> Response<Body> {
    match e {
        AuditError::Usage(m) => refuse(StatusCode::NOT_FOUND, "not_found", m),
        e => {
            tracing::warn!("console API: record read: {e}");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "record_error",
                "the record could not be read",
            )
        }
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    caller: &Caller,
    admin: &Arc<Admin>,
    api: &Arc<ConsoleApi>,
) -> Answer {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["v1", "approvals"]) => {
            let p = Params::parse(&query, &["state"]).map_err(bad)?;
            let state = StateFilter::parse(&p.text("state").unwrap_or_else(|| "pending".into()))
                .map_err(bad)?;
            handle(admin, caller, AdminRequest::ApprovalsList { state })
        }
        (Method::GET, ["v1", "approvals", id]) => {
            let id = query::id(id).map_err(bad)?.to_string();
            handle(admin, caller, AdminRequest::ApprovalsShow { id })
        }
        (Method::POST, ["v1", "approvals", id, action]) => {
            let verdict = match *action {
                "approve" => Verdict::Approve,
                "deny" => Verdict::Deny,
                _ => return Err(not_found()),
            };
            let id = query::id(id).map_err(bad)?.to_string();
            let body = json_body(req).await?;
            let reason = body["reason"].as_str().map(str::to_string);
            handle(
                admin,
                caller,
                AdminRequest::ApprovalsDecide {
                    id,
                    verdict,
                    reason,
                },
            )
        }
        (Method::GET, ["v1", "events"]) => {
            Params::parse(&query, &[]).map_err(bad)?;
            let Approver::Oidc { groups, .. } = &caller.approver else {
                return Err(not_found());
            };
            let revocations = caller
                .at_least(ConsoleRole::Auditor)
                .then(|| api.revocations.subscribe());
            Ok(events::stream(
                admin.approvals.subscribe(),
                revocations,
                groups.clone(),
            ))
        }
        (Method::GET, ["v1", "sessions"]) => {
            need(caller, ConsoleRole::Auditor)?;
            let f = session_filter(&query).map_err(bad)?;
            let (sessions, truncated) = api
                .read(move |c| data::sessions(c, &f))
                .await
                .map_err(record_error)?;
            Ok(reply(
                StatusCode::OK,
                json!({"sessions": sessions, "truncated": truncated}),
            ))
        }
        (Method::GET, ["v1", "sessions", id, rest @ ..]) => {
            need(caller, ConsoleRole::Auditor)?;
            let id = query::id(id).map_err(bad)?.to_string();
            session(api, id, rest, &query).await
        }
        (Method::GET, ["v1", "agents"]) => {
            need(caller, ConsoleRole::Auditor)?;
            Params::parse(&query, &[]).map_err(bad)?;
            let now = crate::record::now_ms();
            let (agents, series) = api
                .read(move |c| Ok((crate::audit::agents::list(c, now)?, series::series(c, now)?)))
                .await
                .map_err(record_error)?;
            Ok(reply(
                StatusCode::OK,
                json!({"agents": agents, "series": series}),
            ))
        }
        (Method::GET, ["v1", "revocations"]) => {
            need(caller, ConsoleRole::Auditor)?;
            Params::parse(&query, &[]).map_err(bad)?;
            handle(admin, caller, AdminRequest::Revocations {})
        }
        (Method::POST, ["v1", "revocations", rest @ ..]) => {
            need(caller, ConsoleRole::Admin)?;
            let lift = match rest {
                [] => false,
                ["lift"] => true,
                _ => return Err(not_found()),
            };
            let body = json_body(req).await?;
            let field = |k: &str| -> Result<Option<String>, Response<Body>> {
                match &body[k] {
                    Value::Null => Ok(None),
                    Value::String(s) => Ok(Some(s.clone())),
                    _ => Err(bad(format!("`{k}` must be a string"))),
                }
            };
            if let Some(k) = body.as_object().and_then(|o| {
                o.keys()
                    .find(|k| !["subject", "issuer", "workload", "reason"].contains(&k.as_str()))
            }) {
                return Err(bad(format!("unknown field `{k}`")));
            }
            let (subject, issuer, workload, reason) = (
                field("subject")?,
                field("issuer")?,
                field("workload")?,
                field("reason")?,
            );
            if !lift && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return Err(bad("give a reason: it is on record with the revocation"));
            }
            let req = AdminRequest::revocation(lift, subject, issuer, workload, reason);
            handle(admin, caller, req)
        }
        (Method::GET, ["v1", "audit"]) => {
            need(caller, ConsoleRole::Auditor)?;
            Params::parse(&query, &[]).map_err(bad)?;
            let v = api.audit().await.map_err(record_error)?;
            Ok(reply(StatusCode::OK, v))
        }
        (Method::GET, ["v1", "policy"]) => {
            need(caller, ConsoleRole::Auditor)?;
            Params::parse(&query, &[]).map_err(bad)?;
            Ok(reply(StatusCode::OK, api.policy()))
        }
        _ => Err(not_found()),
    }
}

/// `/v1/sessions/{id}[/timeline|/cast|/export]`.
async fn session(api: &Arc<ConsoleApi>, id: String, rest: &[&str], query: &str) -> Answer {
    match rest {
        [] => {
            Params::parse(query, &[]).map_err(bad)?;
            let v = api
                .read(move |c| crate::audit::sessions::show(c, &id))
                .await
                .map_err(record_error)?;
            Ok(reply(StatusCode::OK, v))
        }
        ["timeline"] => {
            let p = Params::parse(query, &["after", "limit"]).map_err(bad)?;
            let after = p.int("after").map_err(bad)?.unwrap_or(0);
            let limit = p
                .limit("limit", TIMELINE_PAGE.0, TIMELINE_PAGE.1)
                .map_err(bad)?;
            let v = api
                .read(move |c| data::timeline(c, &id, after, limit))
                .await
                .map_err(record_error)?;
            Ok(reply(StatusCode::OK, v))
        }
        ["cast"] => {
            let p = Params::parse(query, &["channel"]).map_err(bad)?;
            let channel = match p.int("channel").map_err(bad)? {
                Some(c) if c < 0 => return Err(bad("`channel` must not be negative")),
                c => c.map(|c| c as u64),
            };
            let cast = {
                let id = id.clone();
                api.read(move |c| data::cast(c, &id, channel))
                    .await
                    .map_err(record_error)?
            };
            let Some(cast) = cast else {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("session `{id}` has no terminal recording"),
                ));
            };
            let mut r = Response::new(whole(cast));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-asciicast"),
            );
            Ok(r)
        }
        ["export"] => {
            Params::parse(query, &[]).map_err(bad)?;
            let v = {
                let id = id.clone();
                api.read(move |c| data::export(c, &id))
                    .await
                    .map_err(record_error)?
            };
            let mut r = reply(StatusCode::OK, v);
            // The id is checked (`query::id`): nothing in it can end the header's value.
            let disposition = format!("attachment; filename=\"agentgate-session-{id}.json\"");
            if let Ok(v) = hyper::header::HeaderValue::from_str(&disposition) {
                r.headers_mut()
                    .insert(hyper::header::CONTENT_DISPOSITION, v);
            }
            Ok(r)
        }
        _ => Err(not_found()),
    }
}

fn session_filter(query: &str) -> Result<SessionFilter, query::QueryError> {
    let p = Params::parse(
        query,
        &[
            "identity",
            "workload",
            "target",
            "protocol",
            "since_ms",
            "until_ms",
            "status",
            "denied",
            "approvals",
            "limit",
            "before",
        ],
    )?;
    Ok(SessionFilter {
        identity: p.text("identity"),
        workload: p.text("workload"),
        target: p.text("target"),
        protocol: p.choice("protocol", &["postgres", "ssh", "http", "tcp"])?,
        since_ms: p.int("since_ms")?,
        until_ms: p.int("until_ms")?,
        before_ms: p.int("before")?,
        status: p.choice("status", &["live", "closed"])?,
        denied: p.flag("denied")?,
        approvals: p.flag("approvals")?,
        limit: p.limit("limit", SESSIONS_PAGE.0, SESSIONS_PAGE.1)?,
    })
}

/// A JSON object body (empty is `{}`).
async fn json_body(req: Request<hyper::body::Incoming>) -> Result<Value, Response<Body>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(bad(e)),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(bad("body must be a JSON object")),
        Err(e) => Err(bad(format!("body is not JSON: {e}"))),
    }
}

/// An admin request answered by the one handler, as the caller with their console role.
fn handle(admin: &Admin, caller: &Caller, req: AdminRequest) -> Answer {
    match admin.handle_as(req, &caller.approver, caller.role) {
        Ok(answer) => match serde_json::to_value(&answer) {
            Ok(body) => Ok(reply(StatusCode::OK, body)),
            Err(e) => Err(refusal(&super::Refusal::Unencodable(e.to_string()))),
        },
        Err(e) => Err(refusal(&e)),
    }
}
