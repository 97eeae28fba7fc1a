//! HTTP: gitreload's own server. Metrics, health, readiness, and the push
//! webhook that makes it sync now.
//!
//! Promises:
//! - `POST /sync` with a configured secret accepts only a valid
//!   `X-Hub-Signature-256` HMAC of the body (GitHub, Gitea; compared in
//!   constant time) or a matching `X-Gitlab-Token`; everything else is 401
//!   and counted. Bodies over [`MAX_BODY`] are refused with 413.
//! - Bursts coalesce: a trigger is a single stored permit, so any number of
//!   requests during a sync cause one more sync.
//! - The server never waits on the pipeline: it stays responsive while a
//!   sync runs.
//! - Every request is logged by `gitreload.access` with the combined-log
//!   fields split out.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::metrics::{Metrics, WebhookResult};
use crate::settings::Secret;
use crate::sync::Health;

/// Largest webhook body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// What the handlers need.
pub struct Server {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub trigger: Arc<Notify>,
    pub webhook_secret: Option<Secret>,
}

impl Server {
    /// Binds `addr` and serves until `shutdown` turns true. Binding errors
    /// are returned before anything is served.
    pub async fn bind(
        self,
        addr: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = TcpListener::bind(addr).await?;
        let server = Arc::new(self);
        tracing::info!(listen = %listener.local_addr()?, "http server listening");
        Ok(tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    },
                    _ = shutdown.changed() => return,
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }))
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let request_line = format!(
            "{} {} {:?}",
            req.method(),
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
            req.version()
        );
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let referer = header("referer");
        let agent = header("user-agent");
        let response = self.route(req).await;
        let size = response.body().size_hint_exact();
        tracing::info!(
            target: "gitreload.access",
            host = %peer.ip(),
            user = "-",
            request = %request_line,
            status = response.status().as_u16(),
            size = size,
            referer = %referer,
            agent = %agent,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let allowed = match path.as_str() {
            "/metrics" | "/healthz" | "/readyz" => Method::GET,
            "/sync" => Method::POST,
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let method = req.method().clone();
        if method != allowed && !(allowed == Method::GET && method == Method::HEAD) {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response.headers_mut().insert(
                hyper::header::ALLOW,
                HeaderValue::from_static(if allowed == Method::GET {
                    "GET, HEAD"
                } else {
                    "POST"
                }),
            );
            return response;
        }
        match path.as_str() {
            "/metrics" => {
                let wants_openmetrics = req
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                let (body, content_type) = if wants_openmetrics {
                    (
                        self.metrics.render(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                } else {
                    (
                        self.metrics.render_classic(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                };
                let mut response = text(StatusCode::OK, body);
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                response
            }
            "/healthz" => match self.health.liveness() {
                Ok(()) => text(StatusCode::OK, "ok\n"),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            "/readyz" => match self.health.readiness() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            _ => self.webhook(req).await,
        }
    }

    async fn webhook(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                self.metrics.webhook(WebhookResult::too_large);
                return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
            }
        };
        if let Some(secret) = &self.webhook_secret {
            let signature = parts
                .headers
                .get("x-hub-signature-256")
                .and_then(|v| v.to_str().ok());
            let gitlab = parts.headers.get("x-gitlab-token").map(|v| v.as_bytes());
            if !authorized(secret.expose().as_bytes(), &body, signature, gitlab) {
                self.metrics.webhook(WebhookResult::unauthorized);
                tracing::warn!(target: "gitreload::http", "webhook refused: missing or invalid signature");
                return text(StatusCode::UNAUTHORIZED, "invalid or missing signature\n");
            }
        }
        self.metrics.webhook(WebhookResult::accepted);
        self.trigger.notify_one();
        text(StatusCode::ACCEPTED, "sync scheduled\n")
    }
}

/// True when the request proves knowledge of `secret`: a GitHub/Gitea
/// `sha256=<hex>` HMAC of the body, or GitLab's token header.
pub fn authorized(
    secret: &[u8],
    body: &[u8],
    signature: Option<&str>,
    gitlab_token: Option<&[u8]>,
) -> bool {
    if let Some(sig) = signature {
        let Some(hex_digest) = sig.trim().strip_prefix("sha256=") else {
            return false;
        };
        let Ok(expected) = hex::decode(hex_digest) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
        mac.update(body);
        // verify_slice compares in constant time.
        return mac.verify_slice(&expected).is_ok();
    }
    if let Some(token) = gitlab_token {
        // MACs of both values, compared in constant time whatever the lengths.
        let tag = |value: &[u8]| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
            mac.update(value);
            mac
        };
        return tag(token)
            .verify(&tag(secret).finalize().into_bytes())
            .is_ok();
    }
    false
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

trait ExactSize {
    fn size_hint_exact(&self) -> u64;
}

impl ExactSize for Full<Bytes> {
    fn size_hint_exact(&self) -> u64 {
        hyper::body::Body::size_hint(self).exact().unwrap_or(0)
    }
}

/// `gitreload healthcheck`: asks the running instance's `/readyz`.
/// Returns the process exit code (0 ready, 1 otherwise).
pub async fn healthcheck(addr: SocketAddr) -> i32 {
    // A wildcard listen address is reached through loopback.
    let addr = match addr.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(
            if ip.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        ),
        _ => addr,
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let uri = format!("http://{addr}/readyz");
    let request = match Request::get(uri).body(http_body_util::Empty::new()) {
        Ok(r) => r,
        Err(_) => return 1,
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            eprint!("{} {}", status.as_u16(), String::from_utf8_lossy(&body));
            i32::from(!status.is_success())
        }
        Ok(Err(e)) => {
            eprintln!("cannot reach {addr}: {e}");
            1
        }
        Err(_) => {
            eprintln!("no answer from {addr} within 5s");
            1
        }
    }
}
