//! The HTTP admin API's routes: which [`AdminRequest`] a method and path are, for a caller
//! already authenticated (`http.rs`).

use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use serde_json::Value;

use super::{api::StateFilter, caller::Caller, http::refuse, AdminRequest};
use crate::approval::Verdict;

/// Request bodies are a reason at most.
const MAX_BODY: usize = 64 * 1024;

/// The admin request an HTTP request is, or the answer that refuses it.
pub async fn route(
    req: Request<hyper::body::Incoming>,
    _caller: &Caller,
) -> Result<AdminRequest, Response<Full<Bytes>>> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let bad = |message: String| refuse(StatusCode::BAD_REQUEST, "bad_request", message);
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["v1", "approvals"]) => {
            let state = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("state="))
                .unwrap_or("pending");
            let state = StateFilter::parse(state).map_err(bad)?;
            Ok(AdminRequest::ApprovalsList { state })
        }
        (Method::GET, ["v1", "approvals", id]) => {
            Ok(AdminRequest::ApprovalsShow { id: id.to_string() })
        }
        (Method::POST, ["v1", "approvals", id, action]) => {
            let verdict = match *action {
                "approve" => Verdict::Approve,
                "deny" => Verdict::Deny,
                _ => {
                    return Err(refuse(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no such endpoint",
                    ))
                }
            };
            let id = id.to_string();
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Err(bad(e.to_string())),
            };
            let reason = if body.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(v) => v["reason"].as_str().map(str::to_string),
                    Err(e) => return Err(bad(format!("body is not JSON: {e}"))),
                }
            };
            Ok(AdminRequest::ApprovalsDecide {
                id,
                verdict,
                reason,
            })
        }
        _ => Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        )),
    }
}
