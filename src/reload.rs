//! Reload: after a deploy, make every replica of every target URL load the
//! new config, and keep at it until each one has.
//!
//! A *round* starts with each deploy. For each URL the host is resolved to
//! all its A records (an IP literal is one address); every address gets the
//! request concurrently, with the URL's Host header. The round is confirmed
//! when every address of every URL answered 2xx.
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

use std::collections::BTreeMap;
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

/// Longest wait between two attempts at one target.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// First retry delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How often names are re-resolved while a round is unconfirmed.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);
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
        let task = Task {
            urls,
            config,
            metrics,
            resolver: Arc::new(resolver),
            client,
            progress: progress_tx,
            round: None,
            round_no: 0,
            jobs: JoinSet::new(),
            last_confirmed: pending_record.as_ref().is_some_and(|r| r.confirmed),
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

/// Where one target (URL + address) stands in the current round.
#[derive(Debug, Clone)]
enum TargetState {
    /// Next attempt due at `at`; `failures` so far.
    Due {
        at: Instant,
        failures: u32,
    },
    InFlight {
        failures: u32,
    },
    Confirmed,
    GivenUp,
}

#[derive(Debug)]
struct UrlRound {
    targets: BTreeMap<IpAddr, TargetState>,
    /// Resolved at least once this round.
    resolved: bool,
    resolving: bool,
    next_resolve: Instant,
    resolve_failures: u32,
    given_up: bool,
}

struct Round {
    no: u64,
    commit: String,
    started: Instant,
    urls: Vec<UrlRound>,
    confirmed: bool,
    /// The round before this one was confirmed everywhere.
    previous_confirmed: bool,
    /// First-attempt outcome per target: `Some(failure)` or `None` (ok).
    first_outcomes: BTreeMap<(usize, IpAddr), Option<Failure>>,
    refusal_sent: bool,
}

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

struct Task {
    urls: Vec<Url>,
    config: Config,
    metrics: Arc<Metrics>,
    resolver: Arc<hickory_resolver::TokioResolver>,
    client: Client<HttpConnector, Empty<Bytes>>,
    progress: watch::Sender<Progress>,
    round: Option<Round>,
    round_no: u64,
    jobs: JoinSet<Done>,
    /// The last finished round was confirmed everywhere (from the state
    /// file at start).
    last_confirmed: bool,
    refusals: mpsc::UnboundedSender<Refusal>,
}

/// Backoff before attempt `failures + 1`: doubling from one second, capped,
/// with jitter in the upper half so replicas do not retry in lockstep.
pub fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<String>) {
        loop {
            self.dispatch();
            let wake = self.next_wake();
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
        self.round_no += 1;
        let now = Instant::now();
        if let Some(old) = &self.round {
            if !old.confirmed {
                tracing::info!(commit = %short(&old.commit), "pending reloads superseded by a newer deploy");
            }
        }
        let previous_confirmed = std::mem::replace(&mut self.last_confirmed, false);
        self.persist(&commit, false);
        self.round = Some(Round {
            no: self.round_no,
            commit,
            started: now,
            urls: self
                .urls
                .iter()
                .map(|_| UrlRound {
                    targets: BTreeMap::new(),
                    resolved: false,
                    resolving: false,
                    next_resolve: now,
                    resolve_failures: 0,
                    given_up: false,
                })
                .collect(),
            confirmed: false,
            previous_confirmed,
            first_outcomes: BTreeMap::new(),
            refusal_sent: false,
        });
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

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let Some(round) = &self.round else { return far };
        if round.confirmed {
            return far;
        }
        let mut wake = far;
        for url in &round.urls {
            if !url.resolving && !url.given_up {
                wake = wake.min(url.next_resolve);
            }
            for state in url.targets.values() {
                if let TargetState::Due { at, .. } = state {
                    wake = wake.min(*at);
                }
            }
        }
        wake
    }

    /// Starts every resolution and request that is due.
    fn dispatch(&mut self) {
        let Some(round) = &mut self.round else { return };
        if round.confirmed {
            return;
        }
        let now = Instant::now();
        let no = round.no;
        let mut resolve_due = Vec::new();
        let mut reload_due = Vec::new();
        for (index, url_round) in round.urls.iter_mut().enumerate() {
            if !url_round.resolving && !url_round.given_up && url_round.next_resolve <= now {
                url_round.resolving = true;
                resolve_due.push(index);
            }
            for (ip, state) in url_round.targets.iter_mut() {
                if let TargetState::Due { at, failures } = *state {
                    if at <= now {
                        *state = TargetState::InFlight { failures };
                        reload_due.push((index, *ip));
                    }
                }
            }
        }
        for index in resolve_due {
            let resolver = self.resolver.clone();
            let host = self.urls[index].host.clone();
            self.jobs.spawn(async move {
                Done::Resolved {
                    round: no,
                    url: index,
                    result: resolve(&resolver, &host).await,
                }
            });
        }
        for (index, ip) in reload_due {
            let request = self.request(index, ip);
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
                    round: no,
                    url: index,
                    ip,
                    result,
                    elapsed: started.elapsed(),
                }
            });
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

    fn record(&mut self, done: Done) {
        let Some(round) = &mut self.round else { return };
        match done {
            Done::Resolved {
                round: no,
                url,
                result,
            } => {
                if no != round.no {
                    return;
                }
                let label = &self.urls[url].label;
                let url_round = &mut round.urls[url];
                url_round.resolving = false;
                match result {
                    Ok(addresses) => {
                        url_round.resolved = true;
                        url_round.resolve_failures = 0;
                        url_round.next_resolve = Instant::now() + RESOLVE_EVERY;
                        self.metrics.set_targets(label, addresses.len());
                        let gone: Vec<IpAddr> = url_round
                            .targets
                            .keys()
                            .filter(|ip| !addresses.contains(ip))
                            .copied()
                            .collect();
                        for ip in gone {
                            let state = url_round.targets.remove(&ip);
                            self.metrics.forget_target(label, &ip.to_string());
                            if !matches!(state, Some(TargetState::Confirmed)) {
                                tracing::info!(url = %label, target = %ip, "target left DNS; its pending reload is dropped");
                            }
                        }
                        for ip in addresses {
                            url_round.targets.entry(ip).or_insert_with(|| {
                                self.metrics.set_pending(label, &ip.to_string(), true);
                                TargetState::Due {
                                    at: Instant::now(),
                                    failures: 0,
                                }
                            });
                        }
                    }
                    Err(error) => {
                        url_round.resolve_failures += 1;
                        let delay = backoff(url_round.resolve_failures);
                        url_round.next_resolve = Instant::now() + delay;
                        let give_up = self.config.attempts.is_some_and(|limit| {
                            url_round.resolve_failures >= limit && !url_round.resolved
                        });
                        url_round.given_up = give_up;
                        tracing::warn!(
                            url = %label,
                            host = %self.urls[url].host,
                            error = %error,
                            retry_in_ms = delay.as_millis() as u64,
                            given_up = give_up,
                            "cannot resolve reload target"
                        );
                    }
                }
            }
            Done::Reloaded {
                round: no,
                url,
                ip,
                result,
                elapsed,
            } => {
                let label = &self.urls[url].label;
                let target = ip.to_string();
                self.metrics
                    .reload_attempt(label, &target, result.is_ok(), elapsed);
                if no != round.no {
                    return;
                }
                let Some(state) = round.urls[url].targets.get_mut(&ip) else {
                    return;
                };
                let failures = match state {
                    TargetState::InFlight { failures } => *failures,
                    _ => return,
                };
                if failures == 0 {
                    round
                        .first_outcomes
                        .insert((url, ip), result.as_ref().err().cloned());
                }
                match result {
                    Ok(status) => {
                        *state = TargetState::Confirmed;
                        self.metrics.set_pending(label, &target, false);
                        tracing::info!(
                            url = %label,
                            target = %target,
                            status = status,
                            commit = %short(&round.commit),
                            duration_ms = elapsed.as_millis() as u64,
                            attempt = failures + 1,
                            "target reloaded"
                        );
                    }
                    Err(error) => {
                        let failures = failures + 1;
                        let give_up = self.config.attempts.is_some_and(|limit| failures >= limit);
                        let delay = backoff(failures);
                        *state = if give_up {
                            TargetState::GivenUp
                        } else {
                            TargetState::Due {
                                at: Instant::now() + delay,
                                failures,
                            }
                        };
                        tracing::warn!(
                            url = %label,
                            target = %target,
                            error = %error,
                            commit = %short(&round.commit),
                            attempt = failures,
                            retry_in_ms = if give_up { 0 } else { delay.as_millis() as u64 },
                            given_up = give_up,
                            "target reload failed"
                        );
                    }
                }
            }
        }
        self.check_refused();
        self.check_complete();
    }

    /// Sends a [`Refusal`] when every target of the round answered its
    /// first request with a failure status and the previous config had been
    /// accepted everywhere. One replica refusing while others accept is
    /// not a refusal: it stays pending.
    fn check_refused(&mut self) {
        let Some(round) = &mut self.round else { return };
        if round.refusal_sent || !round.previous_confirmed || round.confirmed {
            return;
        }
        let all_resolved = round.urls.iter().all(|u| u.resolved);
        let targets: Vec<(usize, IpAddr)> = round
            .urls
            .iter()
            .enumerate()
            .flat_map(|(i, u)| u.targets.keys().map(move |ip| (i, *ip)))
            .collect();
        if !all_resolved || targets.is_empty() {
            return;
        }
        let mut refusal = None;
        for key in &targets {
            match round.first_outcomes.get(key) {
                Some(Some(failure @ Failure::Status { .. })) => {
                    refusal.get_or_insert((key.1, failure.to_string()));
                }
                // Not answered yet, accepted, or unreachable: no verdict.
                _ => return,
            }
        }
        if let Some((ip, error)) = refusal {
            round.refusal_sent = true;
            let _ = self.refusals.send(Refusal {
                commit: round.commit.clone(),
                target: ip.to_string(),
                error,
            });
        }
    }

    fn check_complete(&mut self) {
        let Some(round) = &mut self.round else { return };
        if round.confirmed {
            return;
        }
        let all_confirmed = round.urls.iter().all(|u| {
            u.resolved
                && u.targets
                    .values()
                    .all(|t| matches!(t, TargetState::Confirmed))
        });
        if all_confirmed {
            round.confirmed = true;
            let elapsed = round.started.elapsed();
            self.metrics.stage(Stage::reload, elapsed);
            tracing::info!(
                commit = %short(&round.commit),
                targets = round.urls.iter().map(|u| u.targets.len()).sum::<usize>() as u64,
                duration_ms = elapsed.as_millis() as u64,
                "reload confirmed on every target"
            );
            let commit = round.commit.clone();
            self.last_confirmed = true;
            self.persist(&commit, true);
        }
        self.publish();
    }

    fn publish(&self) {
        let Some(round) = &self.round else { return };
        let finished = round.confirmed
            || round.urls.iter().all(|u| {
                u.given_up
                    || (u.resolved
                        && u.targets
                            .values()
                            .all(|t| matches!(t, TargetState::Confirmed | TargetState::GivenUp)))
            });
        let _ = self.progress.send(Progress {
            round: round.no,
            confirmed: round.confirmed,
            finished,
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
