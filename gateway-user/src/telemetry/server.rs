//! The telemetry HTTP endpoint (`--metrics ADDR`): `GET /metrics` (Prometheus text format
//! 0.0.4), `/healthz` (the process answers: 200) and `/readyz` (200, or 503 with what is not
//! ready). Plain HTTP with hyper, like the admin API; read-only, no authentication, so it binds
//! to loopback unless `--metrics-public` says otherwise.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{
    metrics::Metrics,
    ready::{not_ready, Readiness},
};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--metrics {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--metrics {0}: not a loopback address; metrics name workloads and targets, so serving them beyond this host needs --metrics-public")]
    NotLoopback(SocketAddr),
}

/// Binds now, so that a bad or taken address fails the start.
pub async fn bind(addr: SocketAddr, public: bool) -> Result<TcpListener, TelemetryError> {
    if !public && !addr.ip().is_loopback() {
        return Err(TelemetryError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })
}

pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

pub async fn serve(endpoint: Arc<Endpoint>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("metrics accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(endpoint.handle(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

impl Endpoint {
    async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                // Collectors lock the record database and walk eBPF maps: off the runtime.
                let metrics = self.metrics.clone();
                match tokio::task::spawn_blocking(move || metrics.render()).await {
                    Ok(body) => text(
                        StatusCode::OK,
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        body,
                    ),
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        PLAIN,
                        format!("collecting metrics failed: {e}\n"),
                    ),
                }
            }
            "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
            "/readyz" => {
                let readiness = self.readiness.clone();
                let missing = tokio::task::spawn_blocking(move || not_ready(&readiness.facts()))
                    .await
                    .unwrap_or_else(|e| vec![format!("readiness check failed: {e}")]);
                if missing.is_empty() {
                    text(StatusCode::OK, PLAIN, "ready\n".into())
                } else {
                    let mut body = String::from("not ready:\n");
                    for m in missing {
                        body.push_str(&m.replace('\n', " "));
                        body.push('\n');
                    }
                    text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body)
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "not found: /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_public_address_unless_asked() {
        let addr: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            bind(addr, false).await,
            Err(TelemetryError::NotLoopback(_))
        ));
        assert!(bind("127.0.0.1:0".parse().unwrap(), false).await.is_ok());
    }

    #[tokio::test]
    async fn readyz_says_what_is_missing_then_ready() {
        let e = Endpoint {
            metrics: Arc::new(Metrics::new()),
            readiness: Readiness::new(),
        };
        let get = |path: &str| Request::get(path).body(()).unwrap();
        let r = e.handle(get("/readyz")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.handle(get("/healthz")).await.status(), StatusCode::OK);
        e.readiness.programs_attached();
        e.readiness.policy_in_force();
        e.readiness.listeners_open();
        assert_eq!(e.handle(get("/readyz")).await.status(), StatusCode::OK);
        assert_eq!(e.handle(get("/nope")).await.status(), StatusCode::NOT_FOUND);
        let m = e.handle(get("/metrics")).await;
        assert_eq!(m.status(), StatusCode::OK);
        assert!(m.headers()[hyper::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
    }
}
