//! What the gateway answers itself: refusals in the form the agent's client prints (a
//! Kubernetes `Status` for the Kubernetes profile, which kubectl shows as
//! `Error from server (Forbidden): …`; plain text otherwise), and the body type every answer
//! shares.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};
use serde::Serialize;

/// Errors of a body relayed from the target, or of the gateway's masking of it.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type AgentBody = BoxBody<Bytes, BodyError>;

pub fn full(bytes: impl Into<Bytes>) -> AgentBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// A Kubernetes `Status` (meta/v1), as the API server sends for errors.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    message: &'a str,
    reason: &'a str,
    code: u16,
}

#[derive(Serialize)]
struct Empty {}

/// Kubernetes' reason for a status code (`metav1.StatusReason`).
fn reason(code: StatusCode) -> &'static str {
    match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        StatusCode::GATEWAY_TIMEOUT => "Timeout",
        _ => "InternalError",
    }
}

/// The gateway's own answer: `message` in the agent's client's terms.
pub fn refusal(kubernetes: bool, code: StatusCode, message: &str) -> Response<AgentBody> {
    let (body, content_type) = if kubernetes {
        let status = Status {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message,
            reason: reason(code),
            code: code.as_u16(),
        };
        let body = serde_json::to_vec(&status).unwrap_or_else(|_| message.as_bytes().to_vec());
        (body, "application/json")
    } else {
        (
            format!("{message}\n").into_bytes(),
            "text/plain; charset=utf-8",
        )
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// A refusal after which the connection ends (the agent's login was refused, the target is
/// gone): `Connection: close` tells the client not to send more on it.
pub fn closing(mut response: Response<AgentBody>) -> Response<AgentBody> {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}
