//! pods/exec (placeholder until the WebSocket lands).

use std::sync::Arc;

use hyper::{body::Incoming, header::HeaderMap, Request};

use super::server::{full, StandinResponse, State};

pub async fn upgrade(
    _state: &Arc<State>,
    _req: Request<Incoming>,
    _headers: &HeaderMap,
    _path: &str,
    _params: Vec<(String, String)>,
) -> StandinResponse {
    full(400, "application/json", "{}")
}
