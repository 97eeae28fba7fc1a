//! HTTP: gitreload's own server. Metrics, health, readiness, and the push
//! webhook that makes it sync now.
//!
//! Promises:
//! - `POST /sync` with a configured secret accepts only a valid
//!   `X-Hub-Signature-256` HMAC of the body (GitHub, Gitea; compared in
//!   constant time) or a matching `X-Gitlab-Token`; everything else is 401
//!   and counted. A token, or a missing signature, is judged from the
//!   headers alone: no body is read for it. Bodies over [`MAX_BODY`] are
//!   refused with 413 (by their `Content-Length` before anything is read),
//!   and a body must arrive whole within [`BODY_DEADLINE`] (408 otherwise).
//! - Webhook triggers are throttled ([`Throttle`]): the first request of a
//!   burst syncs at once, everything else arriving within the next
//!   [`WEBHOOK_WINDOW`] causes one more sync at most. Without a secret the
//!   endpoint is open, throttled the same way, and start-up warns about it.
//! - Bursts coalesce: a trigger is a single stored permit, so any number of
//!   requests during a sync cause one more sync.
//! - Bounded: at most [`MAX_CONNECTIONS`] connections are served at once
//!   (further ones wait in the kernel's accept queue, holding no file
//!   descriptor of ours, until one ends); a client must send a request's
//!   headers within [`HEADER_READ_TIMEOUT`], which also ends idle keep-alive
//!   connections. A failing `accept` (e.g. out of file descriptors) backs
//!   off from 100 ms to 1 s and is logged once per burst, never spun on.
//! - The server never waits on the pipeline: it stays responsive while a
//!   sync runs.
//! - Every request is logged by `gitreload.access` with the combined-log
//!   fields split out.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

use crate::metrics::{Metrics, WebhookResult};
use crate::settings::Secret;
use crate::sync::Health;

/// Largest webhook body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Most connections served at once. Prometheus scrapes, health probes and
/// webhooks need a handful; the rest of the room absorbs bursts.
pub const MAX_CONNECTIONS: usize = 64;

/// Longest a client may take to send a request's headers; also how long an
/// idle keep-alive connection is kept open (hyper starts the clock when it
/// waits for the next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send a whole webhook body.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// After the first sync of a webhook burst, at most one more within this.
pub const WEBHOOK_WINDOW: Duration = Duration::from_secs(1);

/// First and longest wait after a failed `accept`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

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
        let local = listener.local_addr()?;
        let server = Arc::new(self);
        tracing::info!(listen = %local, "http server listening");
        if server.webhook_secret.is_none() {
            tracing::warn!(
                target: "gitreload::http",
                listen = %local,
                "webhook endpoint POST /sync is open: without GITRELOAD_WEBHOOK_SECRET anyone who can reach this address can trigger syncs (at most one a second)"
            );
        }
        let trigger = ThrottledTrigger::new(server.trigger.clone());
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        Ok(tokio::spawn(async move {
            let mut backoff = AcceptBackoff::default();
            let mut at_limit = false;
            loop {
                // Taken before accepting: beyond the limit, connections wait
                // in the kernel's queue instead of in our file table.
                if limit.available_permits() == 0 && !at_limit {
                    at_limit = true;
                    tracing::warn!(
                        target: "gitreload::http",
                        limit = MAX_CONNECTIONS as u64,
                        "connection limit reached; new connections wait until one ends"
                    );
                }
                let permit = tokio::select! {
                    permit = limit.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = shutdown.changed() => return,
                };
                if limit.available_permits() > MAX_CONNECTIONS / 2 {
                    at_limit = false;
                }
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => {
                            if let Some(failures) = backoff.succeeded() {
                                tracing::info!(target: "gitreload::http", failures = failures as u64, "accepting connections again");
                            }
                            a
                        }
                        Err(e) => {
                            let (delay, first) = backoff.failed();
                            if first {
                                tracing::warn!(
                                    target: "gitreload::http",
                                    error = %e,
                                    "accept failed; retrying with backoff (logged once until it works again)"
                                );
                            }
                            drop(permit);
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => continue,
                                _ = shutdown.changed() => return,
                            }
                        }
                    },
                    _ = shutdown.changed() => return,
                };
                let server = server.clone();
                let trigger = trigger.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        let trigger = trigger.clone();
                        async move { Ok::<_, Infallible>(server.handle(req, peer, &trigger).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }))
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        trigger: &ThrottledTrigger,
    ) -> Response<Full<Bytes>> {
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
        let response = self.route(req, trigger).await;
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

    async fn route(
        &self,
        req: Request<Incoming>,
        trigger: &ThrottledTrigger,
    ) -> Response<Full<Bytes>> {
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
            _ => self.webhook(req, trigger).await,
        }
    }

    async fn webhook(
        &self,
        req: Request<Incoming>,
        trigger: &ThrottledTrigger,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let too_large = || {
            self.metrics.webhook(WebhookResult::too_large);
            text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")
        };
        let unauthorized = || {
            self.metrics.webhook(WebhookResult::unauthorized);
            tracing::warn!(target: "gitreload::http", "webhook refused: missing or invalid signature");
            text(StatusCode::UNAUTHORIZED, "invalid or missing signature\n")
        };
        if let Some(secret) = &self.webhook_secret {
            let signature = parts
                .headers
                .get("x-hub-signature-256")
                .and_then(|v| v.to_str().ok());
            let gitlab = parts.headers.get("x-gitlab-token").map(|v| v.as_bytes());
            match signature {
                // Judged from the headers alone: the body is never read.
                None => {
                    if !gitlab.is_some_and(|t| token_matches(secret.expose().as_bytes(), t)) {
                        return unauthorized();
                    }
                    if declared.is_some_and(|n| n > MAX_BODY as u64) {
                        return too_large();
                    }
                }
                Some(signature) => {
                    if declared.is_some_and(|n| n > MAX_BODY as u64) {
                        return too_large();
                    }
                    let body = match read_body(body).await {
                        Ok(b) => b,
                        Err(BodyError::TooLarge) => return too_large(),
                        Err(BodyError::TooSlow) => {
                            tracing::warn!(
                                target: "gitreload::http",
                                deadline_s = BODY_DEADLINE.as_secs(),
                                "webhook refused: the body did not arrive in time"
                            );
                            return text(StatusCode::REQUEST_TIMEOUT, "body too slow\n");
                        }
                    };
                    if !signature_matches(secret.expose().as_bytes(), &body, signature) {
                        return unauthorized();
                    }
                }
            }
        } else if declared.is_some_and(|n| n > MAX_BODY as u64) {
            // Nothing in an unsigned body matters; it is not read.
            return too_large();
        }
        self.metrics.webhook(WebhookResult::accepted);
        trigger.request();
        text(StatusCode::ACCEPTED, "sync scheduled\n")
    }
}

enum BodyError {
    TooLarge,
    TooSlow,
}

/// The whole body, at most [`MAX_BODY`] bytes, within [`BODY_DEADLINE`].
async fn read_body(body: Incoming) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(BODY_DEADLINE, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        // The client went away or sent a malformed body: as good as slow.
        Ok(Err(_)) | Err(_) => Err(BodyError::TooSlow),
    }
}

/// The webhook trigger as the loop receives it: [`Throttle`] decides when
/// a request may wake the loop's single stored permit.
#[derive(Clone)]
struct ThrottledTrigger {
    notify: Arc<Notify>,
    throttle: Arc<Mutex<Throttle>>,
}

impl ThrottledTrigger {
    fn new(notify: Arc<Notify>) -> ThrottledTrigger {
        ThrottledTrigger {
            notify,
            throttle: Arc::new(Mutex::new(Throttle::new(WEBHOOK_WINDOW))),
        }
    }

    fn request(&self) {
        let lock = || self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        let decision = lock().request(Instant::now());
        match decision {
            Decision::Now => self.notify.notify_one(),
            Decision::At(at) => {
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    this.throttle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .fired(Instant::now());
                    this.notify.notify_one();
                });
            }
            Decision::Scheduled => {}
        }
    }
}

/// What a webhook request does to the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wake it now: the first request of a burst.
    Now,
    /// Wake it at this time (the window after the last wake-up ends);
    /// requests until then join this wake-up.
    At(Instant),
    /// A wake-up is already scheduled; this request joins it.
    Scheduled,
}

/// The webhook throttle, a pure state machine (time is passed in): the
/// first request of a burst wakes the loop at once, and every request
/// within `window` of the last wake-up joins one more wake-up at the end of
/// that window. So any window of that length holds at most two wake-ups,
/// however many requests arrive and however they are spaced.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    /// When the loop was last woken.
    last_wake: Option<Instant>,
    /// The wake-up scheduled, if any.
    pending: Option<Instant>,
}

impl Throttle {
    pub fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            last_wake: None,
            pending: None,
        }
    }

    /// A request arrived at `now`.
    pub fn request(&mut self, now: Instant) -> Decision {
        if self.pending.is_some() {
            return Decision::Scheduled;
        }
        match self.last_wake {
            Some(last) if now < last + self.window => {
                let at = last + self.window;
                self.pending = Some(at);
                Decision::At(at)
            }
            _ => {
                self.last_wake = Some(now);
                Decision::Now
            }
        }
    }

    /// The scheduled wake-up happened at `now`.
    pub fn fired(&mut self, now: Instant) {
        self.pending = None;
        self.last_wake = Some(now);
    }
}

/// How `accept` failures are retried: 100 ms, doubling to 1 s, and only
/// the first failure of a burst is logged.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// After a failure: how long to wait, and whether it starts a burst.
    fn failed(&mut self) -> (Duration, bool) {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(16);
        let delay = ACCEPT_BACKOFF_MIN
            .saturating_mul(1 << doublings)
            .min(ACCEPT_BACKOFF_MAX);
        (delay, self.failures == 1)
    }

    /// After a success: the number of failures in the burst it ends.
    fn succeeded(&mut self) -> Option<u32> {
        (self.failures > 0).then(|| std::mem::take(&mut self.failures))
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
    match (signature, gitlab_token) {
        (Some(sig), _) => signature_matches(secret, body, sig),
        (None, Some(token)) => token_matches(secret, token),
        (None, None) => false,
    }
}

/// True when `signature` is `sha256=<hex>` of the body's HMAC under `secret`.
fn signature_matches(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_digest) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

/// True when GitLab's token equals `secret`: MACs of both values, compared
/// in constant time whatever the lengths.
fn token_matches(secret: &[u8], token: &[u8]) -> bool {
    let tag = |value: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
        mac.update(value);
        mac
    };
    tag(token)
        .verify(&tag(secret).finalize().into_bytes())
        .is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wakeups(throttle: &mut Throttle, arrivals: &[Instant]) -> Vec<Decision> {
        arrivals
            .iter()
            .map(|&t| throttle.request(t))
            .filter(|d| *d != Decision::Scheduled)
            .collect()
    }

    #[test]
    fn first_request_of_a_burst_wakes_at_once_and_the_rest_join_one_more() {
        let start = Instant::now();
        let mut throttle = Throttle::new(WEBHOOK_WINDOW);
        let arrivals: Vec<Instant> = (0..100)
            .map(|i| start + Duration::from_millis(i * 10))
            .collect();
        let decisions = wakeups(&mut throttle, &arrivals);
        assert_eq!(
            decisions,
            vec![Decision::Now, Decision::At(start + WEBHOOK_WINDOW)]
        );
    }

    #[test]
    fn any_spacing_within_a_window_gives_at_most_two_wakeups() {
        let start = Instant::now();
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            seed >> 33
        };
        for round in 0..200 {
            let mut throttle = Throttle::new(WEBHOOK_WINDOW);
            // Some rounds begin right after an earlier wake-up.
            if round % 2 == 1 {
                assert_eq!(
                    throttle.request(start - Duration::from_millis(next() % 1000)),
                    Decision::Now
                );
            }
            let mut offsets: Vec<u64> = (0..100).map(|_| next() % 1000).collect();
            offsets.sort_unstable();
            let mut woken = 0;
            let mut pending: Option<Instant> = None;
            for offset in offsets {
                let t = start + Duration::from_millis(offset);
                // A scheduled wake-up fires on time while the burst goes on.
                if let Some(at) = pending.filter(|at| *at <= t) {
                    throttle.fired(at);
                    pending = None;
                }
                match throttle.request(t) {
                    Decision::Now => woken += 1,
                    Decision::At(at) => {
                        woken += 1;
                        pending = Some(at);
                    }
                    Decision::Scheduled => {}
                }
            }
            assert!(woken <= 2, "{woken} wake-ups in round {round}");
        }
    }

    #[test]
    fn a_scheduled_wakeup_opens_a_new_window() {
        let start = Instant::now();
        let mut throttle = Throttle::new(WEBHOOK_WINDOW);
        assert_eq!(throttle.request(start), Decision::Now);
        let at = start + WEBHOOK_WINDOW;
        assert_eq!(
            throttle.request(start + Duration::from_millis(500)),
            Decision::At(at)
        );
        throttle.fired(at);
        // Within the window after the scheduled wake-up: one more, later.
        assert_eq!(
            throttle.request(at + Duration::from_millis(10)),
            Decision::At(at + WEBHOOK_WINDOW)
        );
        throttle.fired(at + WEBHOOK_WINDOW);
        // After a quiet window, a request wakes at once again.
        let later = at + WEBHOOK_WINDOW * 3;
        assert_eq!(throttle.request(later), Decision::Now);
    }

    #[test]
    fn accept_failures_back_off_to_a_second_and_log_once_per_burst() {
        let mut backoff = AcceptBackoff::default();
        let delays: Vec<(Duration, bool)> = (0..6).map(|_| backoff.failed()).collect();
        let ms: Vec<u128> = delays.iter().map(|(d, _)| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(delays.iter().filter(|(_, log)| *log).count(), 1);
        assert!(delays[0].1);
        assert_eq!(backoff.succeeded(), Some(6));
        assert_eq!(backoff.succeeded(), None);
        assert_eq!(backoff.failed(), (Duration::from_millis(100), true));
    }
}
