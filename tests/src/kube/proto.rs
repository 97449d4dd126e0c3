//! Kubernetes protobuf (placeholder until the conversions land).

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("kind {0:?} has no protobuf form in the stand-in")]
    Unsupported(String),
}

pub fn encode(v: &Value) -> Result<Vec<u8>, ProtoError> {
    Err(ProtoError::Unsupported(
        v.get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    ))
}

pub fn decode(_b: &[u8]) -> Result<Value, ProtoError> {
    Err(ProtoError::Unsupported(String::new()))
}

pub fn encode_watch_event(_t: &str, v: &Value) -> Result<Vec<u8>, ProtoError> {
    encode(v)
}
