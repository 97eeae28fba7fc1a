//! Reload: after a deploy, make every replica of every target URL load the
//! new config, and keep at it until each one has.
//!
//! A *round* starts with each deploy. For each URL the host is resolved to
//! all its A records (an IP literal is one address); every address gets the
//! request concurrently, with the URL's Host header. The round is confirmed
//! when every address of every URL answered 2xx.
//!
//! Every decision of a round (what is due, what an answer or a resolution
//! changes, when a round is refused or confirmed, how long to back off) is
//! made by the pure state machine in `round`, which returns what to do;
//! the task here only resolves, sends, logs, counts and persists.
//!
//! Promises:
//! - No target waits for another: requests run as independent tasks, each
//!   bounded by the reload timeout (connect and response).
//! - A failed target stays pending and is retried with exponential backoff
//!   (jitter, capped at [`MAX_BACKOFF`]) until it succeeds, leaves DNS, or a
//!   newer round supersedes it.
//! - While a round is unconfirmed, names are re-resolved: new addresses are
//!   reloaded too, vanished ones are dropped with their metric series.
//! - A DNS failure affects only its URL, and is retried the same way.
//! - The round's confirmation is persisted, so a restart re-sends a round
//!   that was not confirmed, and sends nothing otherwise.
//! - Resolution never caches answers: each resolution sees the current
//!   replica set.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::metrics::{Metrics, Stage};
use crate::redact::redact_url;
use crate::state;

mod round;

use round::{Effect, Job, Rounds};

/// Longest wait between two attempts at one target.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Bytes of a failure response kept for the log.
const BODY_EXCERPT: usize = 512;

/// Reload settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub urls: Vec<String>,
    pub method: hyper::Method,
    pub timeout: Duration,
    pub dns_server: Option<SocketAddr>,
    /// Give up on a target after this many failed attempts (`--once`);
    /// `None` retries forever.
    pub attempts: Option<u32>,
    pub state_file: PathBuf,
}

/// A reload URL split for the request.
#[derive(Debug, Clone)]
struct Url {
    /// Redacted, for logs and labels.
    label: String,
    host: String,
    port: u16,
    /// Path and query, e.g. `/-/reload`.
    path: String,
    /// Value of the Host header.
    authority: String,
    /// `Authorization` header when the URL carries user-info.
    authorization: Option<String>,
}

impl Url {
    fn parse(raw: &str) -> Result<Url, String> {
        let uri: hyper::Uri = raw.parse().map_err(|e| format!("{e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// reload URLs are supported".into());
        }
        let authority = uri.authority().ok_or("no host")?.as_str();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let host = uri
            .host()
            .ok_or("no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let authorization = userinfo.map(|u| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(u)
            )
        });
        Ok(Url {
            label: redact_url(raw),
            host,
            port,
            path: uri.path_and_query().map_or("/".into(), |p| p.to_string()),
            authority: hostport.to_string(),
            authorization,
        })
    }
}

/// Why one reload request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The application answered with a non-2xx status: it refused the
    /// config (Prometheus says why in the body).
    Status { code: u16, body: String },
    /// No answer: refused connection, timeout, reset.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { code, body } => write!(f, "HTTP {code}: {body}"),
            Failure::Transport(e) => f.write_str(e),
        }
    }
}

/// Every replica refused the config of `commit` on its first attempt,
/// while the config before it had been accepted everywhere: the pipeline
/// rolls back.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub commit: String,
    /// One refusing target and its answer, for the log.
    pub target: String,
    pub error: String,
}

/// What the persisted record says about the last round.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub commit: String,
    pub confirmed: bool,
}

/// Progress of the current round, published to whoever waits on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Round number (0 = no round yet).
    pub round: u64,
    /// Every target confirmed.
    pub confirmed: bool,
    /// Every target either confirmed or given up (`--once`); true with
    /// `confirmed` false means some target was given up on.
    pub finished: bool,
}

/// The handle the pipeline uses to start rounds and follow them.
#[derive(Clone)]
pub struct Reloader {
    tx: mpsc::UnboundedSender<String>,
    refusals: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<Refusal>>>>,
    progress: watch::Receiver<Progress>,
    /// Rounds requested so far; the task numbers rounds the same way.
    requested: Arc<std::sync::atomic::AtomicU64>,
}

impl Reloader {
    /// Starts the reload task. If the state shows an unconfirmed round from
    /// before a restart, it is sent again.
    pub fn spawn(config: Config, metrics: Arc<Metrics>) -> Result<Reloader, String> {
        let urls = config
            .urls
            .iter()
            .map(|u| Url::parse(u).map_err(|e| format!("reload URL {}: {e}", redact_url(u))))
            .collect::<Result<Vec<_>, _>>()?;
        let resolver = build_resolver(config.dns_server)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let (tx, rx) = mpsc::unbounded_channel();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let (refusal_tx, refusal_rx) = mpsc::unbounded_channel();
        let pending_record: Option<Record> = state::read(&config.state_file).ok().flatten();
        let rounds = Rounds::new(
            urls.len(),
            config.attempts,
            pending_record.as_ref().is_some_and(|r| r.confirmed),
        );
        let task = Task {
            urls,
            config,
            metrics,
            resolver: Arc::new(resolver),
            client,
            progress: progress_tx,
            rounds,
            jobs: JoinSet::new(),
            refusals: refusal_tx,
        };
        tokio::spawn(task.run(rx));
        let reloader = Reloader {
            tx,
            refusals: Arc::new(std::sync::Mutex::new(Some(refusal_rx))),
            progress,
            requested: Arc::default(),
        };
        if let Some(record) = pending_record.filter(|r| !r.confirmed) {
            tracing::info!(commit = %short(&record.commit), "reload of the last deploy was not confirmed before restart; reloading all targets");
            reloader.deployed(&record.commit);
        }
        Ok(reloader)
    }

    /// A deploy happened: start a new round (superseding any pending one).
    pub fn deployed(&self, commit: &str) {
        self.requested
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.tx.send(commit.to_string());
    }

    /// The stream of refusals (every replica rejected a new config). Can be
    /// taken once.
    pub fn take_refusals(&self) -> Option<mpsc::UnboundedReceiver<Refusal>> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The round counter and its state, to wait on.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until the newest round is finished (every target confirmed,
    /// or given up with `attempts`). Returns true when all confirmed.
    pub async fn wait_finished(&self) -> bool {
        let mut rx = self.progress.clone();
        let wanted = self.requested.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            {
                let p = rx.borrow_and_update();
                if p.round >= wanted && (p.finished || wanted == 0) {
                    return p.confirmed || wanted == 0;
                }
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..7.min(commit.len())]
}

fn build_resolver(server: Option<SocketAddr>) -> Result<hickory_resolver::TokioResolver, String> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut builder = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            hickory_resolver::Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => hickory_resolver::Resolver::builder_tokio()
            .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?,
    };
    let options = builder.options_mut();
    // Docker's DNS answers with long TTLs; a cache would hide new replicas.
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    builder
        .build()
        .map_err(|e| format!("building the DNS resolver: {e}"))
}

/// Backoff before attempt `failures + 1`: doubling from one second, capped
/// at [`MAX_BACKOFF`], with random jitter in the upper half so that
/// replicas (and fetches) do not retry in lockstep.
pub fn backoff(failures: u32) -> Duration {
    round::backoff(failures, fastrand::f64())
}

/// A finished job: what the task hands back to the round.
enum Done {
    Resolved {
        round: u64,
        url: usize,
        result: Result<Vec<IpAddr>, String>,
    },
    Reloaded {
        round: u64,
        url: usize,
        ip: IpAddr,
        result: Result<u16, Failure>,
        elapsed: Duration,
    },
}

/// The reload task: runs the jobs [`Rounds`] asks for, and logs, counts
/// and persists what its transitions report. Every decision is the
/// round's.
struct Task {
    urls: Vec<Url>,
    config: Config,
    metrics: Arc<Metrics>,
    resolver: Arc<hickory_resolver::TokioResolver>,
    client: Client<HttpConnector, Empty<Bytes>>,
    progress: watch::Sender<Progress>,
    rounds: Rounds,
    jobs: JoinSet<Done>,
    refusals: mpsc::UnboundedSender<Refusal>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<String>) {
        loop {
            self.dispatch();
            let wake = self
                .rounds
                .next_wake()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                commit = rx.recv() => match commit {
                    Some(commit) => self.start_round(commit),
                    None => return,
                },
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if let Ok(done) = done {
                        self.record(done);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn start_round(&mut self, commit: String) {
        let started = self.rounds.start(commit.clone(), Instant::now());
        if let Some(old) = started.superseded {
            tracing::info!(commit = %short(&old), "pending reloads superseded by a newer deploy");
        }
        self.persist(&commit, false);
        self.publish();
    }

    fn persist(&self, commit: &str, confirmed: bool) {
        let record = Record {
            commit: commit.to_string(),
            confirmed,
        };
        if let Err(e) = state::write(&self.config.state_file, &record) {
            tracing::warn!(error = %e, "cannot record reload progress");
        }
    }

    /// Starts every resolution and request that is due.
    fn dispatch(&mut self) {
        for job in self.rounds.due(Instant::now()) {
            match job {
                Job::Resolve { round, url } => {
                    let resolver = self.resolver.clone();
                    let host = self.urls[url].host.clone();
                    self.jobs.spawn(async move {
                        Done::Resolved {
                            round,
                            url,
                            result: resolve(&resolver, &host).await,
                        }
                    });
                }
                Job::Reload { round, url, ip } => {
                    let request = self.request(url, ip);
                    let timeout = self.config.timeout;
                    self.jobs.spawn(async move {
                        let started = Instant::now();
                        let result = match tokio::time::timeout(timeout, request).await {
                            Ok(r) => r,
                            Err(_) => Err(Failure::Transport(format!(
                                "no answer within {}",
                                humantime::format_duration(timeout)
                            ))),
                        };
                        Done::Reloaded {
                            round,
                            url,
                            ip,
                            result,
                            elapsed: started.elapsed(),
                        }
                    });
                }
            }
        }
    }

    fn request(
        &self,
        index: usize,
        ip: IpAddr,
    ) -> impl std::future::Future<Output = Result<u16, Failure>> + Send + 'static {
        let url = &self.urls[index];
        let addr = SocketAddr::new(ip, url.port);
        let uri = format!("http://{addr}{}", url.path);
        let mut builder = hyper::Request::builder()
            .method(self.config.method.clone())
            .uri(uri)
            .header(hyper::header::HOST, url.authority.as_str())
            .header(
                hyper::header::USER_AGENT,
                concat!("gitreload/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &url.authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, auth.as_str());
        }
        let request = builder.body(Empty::<Bytes>::new());
        let client = self.client.clone();
        async move {
            let request = request.map_err(|e| Failure::Transport(e.to_string()))?;
            let response = client
                .request(request)
                .await
                .map_err(|e| Failure::Transport(crate::git::describe(&e)))?;
            let status = response.status();
            if status.is_success() {
                return Ok(status.as_u16());
            }
            let body = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT)])
                .trim()
                .to_string();
            Err(Failure::Status {
                code: status.as_u16(),
                body: excerpt,
            })
        }
    }

    /// Hands a finished job to the round and carries out what it says.
    fn record(&mut self, done: Done) {
        let (effects, elapsed) = match done {
            Done::Resolved { round, url, result } => (
                self.rounds
                    .resolved(round, url, result, Instant::now(), fastrand::f64()),
                Duration::ZERO,
            ),
            Done::Reloaded {
                round,
                url,
                ip,
                result,
                elapsed,
            } => {
                // Every answer counts, even one for a superseded round.
                self.metrics.reload_attempt(
                    &self.urls[url].label,
                    &ip.to_string(),
                    result.is_ok(),
                    elapsed,
                );
                let effects =
                    self.rounds
                        .reloaded(round, url, ip, result, Instant::now(), fastrand::f64());
                (effects, elapsed)
            }
        };
        for effect in effects {
            self.apply(effect, elapsed);
        }
        self.publish();
    }

    /// Logs, counts or persists one effect; `elapsed` is the duration of
    /// the request that caused it.
    fn apply(&self, effect: Effect, elapsed: Duration) {
        let commit = short(self.rounds.commit().unwrap_or_default());
        match effect {
            Effect::Resolved { url, count } => {
                self.metrics.set_targets(&self.urls[url].label, count);
            }
            Effect::Joined { url, ip } => {
                self.metrics
                    .set_pending(&self.urls[url].label, &ip.to_string(), true);
            }
            Effect::Left {
                url,
                ip,
                was_pending,
            } => {
                let label = &self.urls[url].label;
                self.metrics.forget_target(label, &ip.to_string());
                if was_pending {
                    tracing::info!(url = %label, target = %ip, "target left DNS; its pending reload is dropped");
                }
            }
            Effect::ResolveFailed {
                url,
                error,
                retry_in,
                given_up,
            } => {
                tracing::warn!(
                    url = %self.urls[url].label,
                    host = %self.urls[url].host,
                    error = %error,
                    retry_in_ms = retry_in.as_millis() as u64,
                    given_up = given_up,
                    "cannot resolve reload target"
                );
            }
            Effect::Reloaded {
                url,
                ip,
                status,
                attempt,
            } => {
                let label = &self.urls[url].label;
                self.metrics.set_pending(label, &ip.to_string(), false);
                tracing::info!(
                    url = %label,
                    target = %ip,
                    status = status,
                    commit = %commit,
                    duration_ms = elapsed.as_millis() as u64,
                    attempt = attempt,
                    "target reloaded"
                );
            }
            Effect::ReloadFailed {
                url,
                ip,
                error,
                attempt,
                retry_in,
            } => {
                tracing::warn!(
                    url = %self.urls[url].label,
                    target = %ip,
                    error = %error,
                    commit = %commit,
                    attempt = attempt,
                    retry_in_ms = retry_in.map_or(0, |d| d.as_millis() as u64),
                    given_up = retry_in.is_none(),
                    "target reload failed"
                );
            }
            Effect::Refused { ip, error } => {
                let _ = self.refusals.send(Refusal {
                    commit: self.rounds.commit().unwrap_or_default().to_string(),
                    target: ip.to_string(),
                    error,
                });
            }
            Effect::Confirmed { targets, duration } => {
                self.metrics.stage(Stage::reload, duration);
                tracing::info!(
                    commit = %commit,
                    targets = targets as u64,
                    duration_ms = duration.as_millis() as u64,
                    "reload confirmed on every target"
                );
                self.persist(self.rounds.commit().unwrap_or_default(), true);
            }
        }
    }

    fn publish(&self) {
        let Some(progress) = self.rounds.progress() else {
            return;
        };
        self.progress.send_if_modified(|current| {
            let changed = *current != progress;
            *current = progress;
            changed
        });
    }
}

/// The DNS name to look up for a target's host. Parsed as plain ASCII:
/// hickory's default (`&str` as a name) runs IDNA, whose rules refuse `_`,
/// and Swarm's service names, hence `tasks.alertmanager_1`, are full of it.
fn dns_name(host: &str) -> Result<hickory_resolver::proto::rr::Name, String> {
    hickory_resolver::proto::rr::Name::from_ascii(host)
        .map_err(|e| format!("{host} is not a DNS name: {e}"))
}

async fn resolve(
    resolver: &hickory_resolver::TokioResolver,
    host: &str,
) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    use hickory_resolver::proto::rr::{RData, RecordType};
    let lookup = resolver
        .lookup(dns_name(host)?, RecordType::A)
        .await
        .map_err(|e| e.to_string())?;
    let mut addresses: Vec<IpAddr> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(format!("{host} has no A records"));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::dns_name;

    #[test]
    fn swarm_service_names_with_underscores_resolve_as_dns_names() {
        // What hickory does with a bare &str: IDNA refuses the underscore.
        assert!(hickory_resolver::proto::rr::Name::from_utf8("tasks.alertmanager_1").is_err());
        let name = dns_name("tasks.alertmanager_1").unwrap();
        assert_eq!(name.to_ascii(), "tasks.alertmanager_1");
        assert!(dns_name("tasks.prometheus").is_ok());
    }
}
