//! Metrics: gitreload's own Prometheus metrics. Names and labels are part
//! of the product (README documents each); this file is their one source.
//!
//! Promises:
//! - Exactly one `gitreload_deployed_commit_info` series once a commit is
//!   live; `gitreload_rejected_commit_info` only while the newest upstream
//!   commit is the rejected one.
//! - Series of reload targets that left DNS are removed.
//! - Label values never carry credentials: URLs are redacted before use.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Outcome of one sync, the `result` label of `gitreload_sync_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SyncResult {
    deployed,
    unchanged,
    fetch_failed,
    check_failed,
    deploy_failed,
}

/// A pipeline stage, the `stage` label of `gitreload_stage_duration_seconds`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Stage {
    fetch,
    materialize,
    check,
    deploy,
    reload,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Operation {
    written,
    deleted,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    success,
    failure,
}

/// Result of a webhook request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WebhookResult {
    accepted,
    unauthorized,
    too_large,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabel {
    result: SyncResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabel {
    result: WebhookResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: Stage,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: Operation,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabels {
    commit: String,
    r#ref: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabel {
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UrlLabel {
    url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    url: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    url: String,
    target: String,
    result: ReloadResult,
}

/// Every metric gitreload exports, behind one registry.
pub struct Metrics {
    registry: Registry,
    sync_total: Family<SyncLabel, Counter>,
    sync_duration: Histogram,
    stage_duration: Family<StageLabel, Histogram>,
    last_sync_success: Gauge<f64, AtomicU64>,
    last_deploy: Gauge<f64, AtomicU64>,
    deployed_commit: Family<CommitLabels, Gauge>,
    rejected_commit: Family<CommitLabel, Gauge>,
    files_changed: Family<OperationLabel, Counter>,
    reload_total: Family<ReloadLabels, Counter>,
    reload_duration: Histogram,
    targets: Family<UrlLabel, Gauge>,
    target_pending: Family<TargetLabels, Gauge>,
    webhook_requests: Family<WebhookLabel, Counter>,
    drift_repairs: Counter,
    /// Serialises info-series swaps so a scrape never sees two commits.
    info_lock: Mutex<()>,
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            sync_total: Family::default(),
            sync_duration: Histogram::new(exponential_buckets(0.005, 2.5, 12)),
            stage_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.5, 14))
            }),
            last_sync_success: Gauge::default(),
            last_deploy: Gauge::default(),
            deployed_commit: Family::default(),
            rejected_commit: Family::default(),
            files_changed: Family::default(),
            reload_total: Family::default(),
            reload_duration: Histogram::new(exponential_buckets(0.005, 2.5, 12)),
            targets: Family::default(),
            target_pending: Family::default(),
            webhook_requests: Family::default(),
            drift_repairs: Counter::default(),
            info_lock: Mutex::new(()),
        };
        // A gauge rather than an OpenMetrics info metric: `promtool check
        // metrics` (and Prometheus 2.x's text parser) rejects the info type.
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register(
            "gitreload_build_info",
            "Version of the running gitreload",
            build_info,
        );
        registry.register(
            "gitreload_sync",
            "Syncs by result (deployed, unchanged, fetch_failed, check_failed, deploy_failed)",
            m.sync_total.clone(),
        );
        registry.register(
            "gitreload_sync_duration_seconds",
            "Duration of a whole sync, fetch to deploy",
            m.sync_duration.clone(),
        );
        registry.register(
            "gitreload_stage_duration_seconds",
            "Duration of each pipeline stage",
            m.stage_duration.clone(),
        );
        registry.register(
            "gitreload_last_sync_success_timestamp_seconds",
            "Unix time of the last successful poll (deployed or unchanged)",
            m.last_sync_success.clone(),
        );
        registry.register(
            "gitreload_last_deploy_timestamp_seconds",
            "Unix time of the last deploy that changed the destination",
            m.last_deploy.clone(),
        );
        registry.register(
            "gitreload_deployed_commit_info",
            "The commit live on the destination, and the ref it came from",
            m.deployed_commit.clone(),
        );
        registry.register(
            "gitreload_rejected_commit_info",
            "The newest upstream commit, when it was rejected",
            m.rejected_commit.clone(),
        );
        registry.register(
            "gitreload_files_changed",
            "Files written to or deleted from the destination",
            m.files_changed.clone(),
        );
        registry.register(
            "gitreload_reload",
            "Reload requests by URL, target address and result",
            m.reload_total.clone(),
        );
        registry.register(
            "gitreload_reload_duration_seconds",
            "Duration of one reload request",
            m.reload_duration.clone(),
        );
        registry.register(
            "gitreload_targets",
            "Addresses the reload URL resolved to at the last resolution",
            m.targets.clone(),
        );
        registry.register(
            "gitreload_target_pending",
            "1 while a reload is owed to the target",
            m.target_pending.clone(),
        );
        registry.register(
            "gitreload_webhook_requests",
            "POST /sync requests by result",
            m.webhook_requests.clone(),
        );
        registry.register(
            "gitreload_drift_repairs",
            "Managed files restored after someone else changed them",
            m.drift_repairs.clone(),
        );
        // Every result starts at 0, so increase() sees the first event.
        for result in [
            SyncResult::deployed,
            SyncResult::unchanged,
            SyncResult::fetch_failed,
            SyncResult::check_failed,
            SyncResult::deploy_failed,
        ] {
            let _ = m.sync_total.get_or_create(&SyncLabel { result });
        }
        for result in [
            WebhookResult::accepted,
            WebhookResult::unauthorized,
            WebhookResult::too_large,
        ] {
            let _ = m.webhook_requests.get_or_create(&WebhookLabel { result });
        }
        for operation in [Operation::written, Operation::deleted] {
            let _ = m.files_changed.get_or_create(&OperationLabel { operation });
        }
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let _guard = self.info_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not
    /// ask for OpenMetrics (curl, `promtool check metrics`). The samples are
    /// the same; only counter metadata is named with its `_total` suffix and
    /// the `# EOF` marker is dropped.
    pub fn render_classic(&self) -> String {
        openmetrics_to_classic(&self.render())
    }

    pub fn sync_finished(&self, result: SyncResult, duration: Duration) {
        self.sync_total.get_or_create(&SyncLabel { result }).inc();
        self.sync_duration.observe(duration.as_secs_f64());
        if matches!(result, SyncResult::deployed | SyncResult::unchanged) {
            self.last_sync_success.set(now_seconds());
        }
    }

    pub fn stage(&self, stage: Stage, duration: Duration) {
        self.stage_duration
            .get_or_create(&StageLabel { stage })
            .observe(duration.as_secs_f64());
    }

    pub fn deployed(&self, commit: &str, reference: &str, written: usize, deleted: usize) {
        self.last_deploy.set(now_seconds());
        self.files_changed
            .get_or_create(&OperationLabel {
                operation: Operation::written,
            })
            .inc_by(written as u64);
        self.files_changed
            .get_or_create(&OperationLabel {
                operation: Operation::deleted,
            })
            .inc_by(deleted as u64);
        self.set_live(commit, reference);
    }

    /// Sets the one `deployed_commit_info` series.
    pub fn set_live(&self, commit: &str, reference: &str) {
        let _guard = self.info_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.deployed_commit.clear();
        self.deployed_commit
            .get_or_create(&CommitLabels {
                commit: commit.to_string(),
                r#ref: reference.to_string(),
            })
            .set(1);
    }

    /// `Some(commit)`: the newest upstream commit was rejected; `None`: the
    /// live commit is the newest.
    pub fn set_rejected(&self, commit: Option<&str>) {
        let _guard = self.info_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.rejected_commit.clear();
        if let Some(commit) = commit {
            self.rejected_commit
                .get_or_create(&CommitLabel {
                    commit: commit.to_string(),
                })
                .set(1);
        }
    }

    pub fn reload_attempt(&self, url: &str, target: &str, success: bool, duration: Duration) {
        let result = if success {
            ReloadResult::success
        } else {
            ReloadResult::failure
        };
        self.reload_total
            .get_or_create(&ReloadLabels {
                url: url.to_string(),
                target: target.to_string(),
                result,
            })
            .inc();
        self.reload_duration.observe(duration.as_secs_f64());
    }

    pub fn set_targets(&self, url: &str, count: usize) {
        self.targets
            .get_or_create(&UrlLabel {
                url: url.to_string(),
            })
            .set(count as i64);
    }

    pub fn set_pending(&self, url: &str, target: &str, pending: bool) {
        let labels = TargetLabels {
            url: url.to_string(),
            target: target.to_string(),
        };
        self.target_pending
            .get_or_create(&labels)
            .set(i64::from(pending));
    }

    /// Drops every series of a target that left DNS.
    pub fn forget_target(&self, url: &str, target: &str) {
        self.target_pending.remove(&TargetLabels {
            url: url.to_string(),
            target: target.to_string(),
        });
        for result in [ReloadResult::success, ReloadResult::failure] {
            self.reload_total.remove(&ReloadLabels {
                url: url.to_string(),
                target: target.to_string(),
                result,
            });
        }
    }

    pub fn webhook(&self, result: WebhookResult) {
        self.webhook_requests
            .get_or_create(&WebhookLabel { result })
            .inc();
    }

    pub fn drift_repaired(&self, files: usize) {
        self.drift_repairs.inc_by(files as u64);
    }
}

/// Converts prometheus-client's OpenMetrics output to text format 0.0.4.
fn openmetrics_to_classic(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_names_counter_metadata_with_total() {
        let m = Metrics::new();
        m.sync_finished(SyncResult::deployed, Duration::from_millis(5));
        let text = m.render_classic();
        assert!(
            text.contains("# TYPE gitreload_sync_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP gitreload_sync_total "), "{text}");
        assert!(text.contains("gitreload_sync_total{result=\"deployed\"} 1\n"));
        assert!(!text.contains("# EOF"));
    }
}
