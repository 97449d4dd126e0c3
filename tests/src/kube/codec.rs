//! Content negotiation and the wire forms: JSON, Kubernetes protobuf (the `k8s\0` magic and a
//! `runtime.Unknown` envelope, see [`super::proto`]) and `meta.k8s.io/v1` Tables, picked from
//! the Accept header in the client's order of preference, as the API server does.

use bytes::Bytes;
use serde_json::{json, Value};

pub const JSON: &str = "application/json";
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// What an answer is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Protobuf,
    /// `application/json;as=Table;v=v1;g=meta.k8s.io` (or v1beta1).
    TableJson,
}

impl Output {
    pub fn content_type(self) -> &'static str {
        match self {
            Output::Json => JSON,
            Output::Protobuf => PROTOBUF,
            Output::TableJson => "application/json;as=Table;v=v1;g=meta.k8s.io",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("only the following media types are accepted: application/json, application/vnd.kubernetes.protobuf, application/json;as=Table;v=v1;g=meta.k8s.io (asked for {0:?})")]
pub struct NotAcceptable(pub String);

/// The first media type of the Accept header that the stand-in can produce; no Accept header
/// means JSON. `table_ok`: the request is a get/list/watch of a resource (Tables exist only
/// there). Types with a q of 0 are skipped; otherwise the client's order decides (client-go
/// lists them in order of preference and sends no q-values).
pub fn negotiate(accept: Option<&str>, table_ok: bool) -> Result<Output, NotAcceptable> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Output::Json);
    };
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let mt = params.next().unwrap_or("").to_ascii_lowercase();
        let (mut as_, mut g, mut v, mut q0) = (None, None, None, false);
        for p in params {
            match p.split_once('=') {
                Some(("as", x)) => as_ = Some(x.to_string()),
                Some(("g", x)) => g = Some(x.to_string()),
                Some(("v", x)) => v = Some(x.to_string()),
                Some(("q", x)) => q0 = x.trim().parse::<f32>().is_ok_and(|q| q == 0.0),
                _ => {}
            }
        }
        if q0 {
            continue;
        }
        match (mt.as_str(), as_.as_deref()) {
            ("application/json" | "*/*" | "application/*", None) => return Ok(Output::Json),
            (PROTOBUF, None) => return Ok(Output::Protobuf),
            ("application/json", Some("Table"))
                if table_ok
                    && g.as_deref() == Some("meta.k8s.io")
                    && matches!(v.as_deref(), Some("v1" | "v1beta1")) =>
            {
                return Ok(Output::TableJson)
            }
            _ => {}
        }
    }
    Err(NotAcceptable(accept.to_string()))
}

/// How a request body is written, from its Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Protobuf,
    MergePatch,
    StrategicMergePatch,
    JsonPatch,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body's content type {0:?} is not supported by the stand-in")]
    Unsupported(String),
    #[error("the body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the protobuf body could not be decoded: {0}")]
    Protobuf(#[from] super::proto::ProtoError),
}

pub fn body_type(content_type: Option<&str>) -> Result<BodyType, DecodeError> {
    let ct = content_type.unwrap_or("");
    let mt = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Ok(match mt.as_str() {
        "application/json" => BodyType::Json,
        PROTOBUF => BodyType::Protobuf,
        "application/merge-patch+json" => BodyType::MergePatch,
        "application/strategic-merge-patch+json" => BodyType::StrategicMergePatch,
        "application/json-patch+json" => BodyType::JsonPatch,
        _ => return Err(DecodeError::Unsupported(ct.to_string())),
    })
}

/// A create/update body as a JSON object (protobuf bodies are converted).
pub fn decode_object(ty: BodyType, body: &[u8]) -> Result<Value, DecodeError> {
    match ty {
        BodyType::Protobuf => Ok(super::proto::decode(body)?),
        _ => Ok(serde_json::from_slice(body)?),
    }
}

/// An object, list or Status in the negotiated form. Protobuf for a kind the stand-in cannot
/// encode falls back to JSON (the real server does the same for types without protobuf, and
/// client-go always lists JSON after protobuf).
pub fn encode(out: Output, v: &Value) -> (Bytes, &'static str) {
    if out == Output::Protobuf {
        if let Ok(b) = super::proto::encode(v) {
            return (Bytes::from(b), PROTOBUF);
        }
    }
    let ct = if out == Output::TableJson && v.get("kind") == Some(&json!("Table")) {
        out.content_type()
    } else {
        JSON
    };
    (Bytes::from(serde_json::to_vec(v).unwrap_or_default()), ct)
}

/// A `Status` object, as the API server answers errors (and some deletes).
pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if code < 400 { "Success" } else { "Failure" },
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}
