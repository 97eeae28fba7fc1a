//! Sync: the pipeline that runs the stages in order, and the loop that runs
//! the pipeline on a timer, on a webhook, or once.
//!
//! One sync: fetch -> (unchanged? verify the destination) -> materialize ->
//! check -> deploy -> start a reload round. Stages hand each other plain
//! data: a [`Fetched`](crate::git::Fetched) commit, a
//! [`Staged`](crate::materialize::Staged) tree, a deploy
//! [`Report`](crate::deploy::Report).
//!
//! Promises:
//! - The destination only ever receives a commit that passed the checker;
//!   every failure leaves the last good config live.
//! - A rejected commit is not retried until upstream moves.
//! - A shutdown request is honoured between stages; a deploy in flight is
//!   always finished.
//! - Failures are retried with exponential backoff capped at the interval.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::check::{CheckError, Checker};
use crate::deploy::{self, Manifest, Records, Verify};
use crate::git::{CommitId, Fetched, GitError, Mirror};
use crate::materialize::{self, Limits, MaterializeError, Staged};
use crate::metrics::{Metrics, Stage, SyncResult};
use crate::reload::Reloader;
use crate::settings::Settings;

/// What the HTTP server reports about the loop.
#[derive(Debug)]
pub struct Health {
    /// A validated config is on the destination (set by the first
    /// successful sync of this process).
    ready: AtomicBool,
    last_success: Mutex<Option<Instant>>,
    /// When the sync in flight started, if one is running.
    sync_started: Mutex<Option<Instant>>,
    stale_after: Duration,
    /// Longest a sync may take before the loop counts as wedged.
    wedged_after: Duration,
}

impl Health {
    pub fn new(stale_after: Duration, wedged_after: Duration) -> Health {
        Health {
            ready: AtomicBool::new(false),
            last_success: Mutex::new(None),
            sync_started: Mutex::new(None),
            stale_after,
            wedged_after,
        }
    }

    /// `Ok` when ready; otherwise the reason.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err("no validated config deployed yet".into());
        }
        let last = *self.last_success.lock().unwrap_or_else(|e| e.into_inner());
        match last {
            Some(t) if t.elapsed() > self.stale_after => Err(format!(
                "last successful poll was {}s ago (limit {}s)",
                t.elapsed().as_secs(),
                self.stale_after.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// `Ok` while the loop is alive; `Err` when a sync has run too long.
    pub fn liveness(&self) -> Result<(), String> {
        let started = *self.sync_started.lock().unwrap_or_else(|e| e.into_inner());
        match started {
            Some(t) if t.elapsed() > self.wedged_after => Err(format!(
                "a sync has been running for {}s",
                t.elapsed().as_secs()
            )),
            _ => Ok(()),
        }
    }

    fn sync_begins(&self) {
        *self.sync_started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn sync_ends(&self, success: bool) {
        *self.sync_started.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if success {
            self.ready.store(true, Ordering::SeqCst);
            *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
    }
}

/// The end of one sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Deployed,
    Unchanged,
    FetchFailed,
    CheckFailed,
    DeployFailed,
    /// Shutdown was requested between stages; nothing was changed.
    Interrupted,
}

impl Outcome {
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Deployed | Outcome::Unchanged)
    }
}

/// The pipeline and what it remembers between syncs.
pub struct Pipeline {
    settings: Arc<Settings>,
    mirror: Arc<Mirror>,
    checker: Option<Checker>,
    records: Records,
    staging_root: PathBuf,
    /// What is live on the destination.
    deployed: Option<Manifest>,
    /// Paths an interrupted deploy may have written.
    extra_managed: BTreeSet<String>,
    /// Rehash the destination at the next sync (after a crash, or without
    /// a manifest).
    full_verify: bool,
    /// The newest upstream commit, when it was rejected.
    rejected: Option<CommitId>,
    metrics: Arc<Metrics>,
    reloader: Option<Reloader>,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
}

impl Pipeline {
    /// Prepares the pipeline from the state directory: loads the manifest,
    /// and if a deploy was cut off, cleans its leftovers and schedules a
    /// full verification.
    pub fn new(
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        reloader: Option<Reloader>,
        health: Arc<Health>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Pipeline, String> {
        std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
            format!(
                "cannot create state directory {}: {e}",
                settings.state_dir.display()
            )
        })?;
        let mirror = Mirror::new(
            &settings.state_dir,
            settings.repo.clone(),
            settings.credentials.clone(),
        );
        let records = Records::in_dir(&settings.state_dir);
        let deployed = records.load_manifest();
        let mut full_verify = deployed.is_none();
        let mut extra_managed = BTreeSet::new();
        if let Some(journal) = records.load_journal() {
            let removed = deploy::remove_leftovers(&settings.dest);
            tracing::warn!(
                commit = %journal.commit.short(),
                leftovers_removed = removed as u64,
                "previous deploy was cut off; it will be completed"
            );
            extra_managed = journal.paths;
            full_verify = true;
        }
        if let Some(m) = &deployed {
            metrics.set_live(m.commit.as_str(), &m.resolved_ref);
        }
        let checker = settings
            .check
            .clone()
            .map(|kind| Checker::new(kind, settings.check_timeout));
        Ok(Pipeline {
            staging_root: settings.state_dir.join("staging"),
            mirror: Arc::new(mirror),
            checker,
            records,
            deployed,
            extra_managed,
            full_verify,
            rejected: None,
            metrics,
            reloader,
            health,
            shutdown,
            settings,
        })
    }

    fn deploy_options(&self) -> deploy::Options {
        deploy::Options {
            file_mode: self.settings.file_mode,
            owner: self.settings.file_owner,
        }
    }

    fn interrupted(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// One sync, from fetch to the start of the reload round.
    pub async fn sync(&mut self) -> Outcome {
        let started = Instant::now();
        self.health.sync_begins();
        let outcome = self.sync_stages().await;
        self.health.sync_ends(outcome.is_success());
        let result = match outcome {
            Outcome::Deployed => Some(SyncResult::deployed),
            Outcome::Unchanged => Some(SyncResult::unchanged),
            Outcome::FetchFailed => Some(SyncResult::fetch_failed),
            Outcome::CheckFailed => Some(SyncResult::check_failed),
            Outcome::DeployFailed => Some(SyncResult::deploy_failed),
            Outcome::Interrupted => None,
        };
        if let Some(result) = result {
            self.metrics.sync_finished(result, started.elapsed());
        }
        outcome
    }

    async fn sync_stages(&mut self) -> Outcome {
        let fetched = match self.fetch().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(target: "gitreload::git", error = %e, "fetch failed");
                return Outcome::FetchFailed;
            }
        };
        if self.interrupted() {
            return Outcome::Interrupted;
        }
        // The same commit from another directory is a different config.
        let live = self
            .deployed
            .as_ref()
            .filter(|m| m.subdir == self.settings.subdir)
            .map(|m| m.commit.clone());
        if live.as_ref() == Some(&fetched.commit) {
            self.rejected = None;
            self.metrics.set_rejected(None);
            let manifest = self.deployed.as_ref().expect("live commit has a manifest");
            let verify = if self.full_verify {
                Verify::Hash
            } else {
                Verify::Stamp
            };
            let dest = self.settings.dest.clone();
            let options = self.deploy_options();
            let manifest_copy = manifest.clone();
            let drifted = tokio::task::spawn_blocking(move || {
                deploy::drifted(&dest, &manifest_copy, verify, options)
            })
            .await
            .unwrap_or_default();
            if drifted.is_empty() && self.extra_managed.is_empty() {
                self.full_verify = false;
                tracing::debug!(commit = %fetched.commit.short(), "no change");
                return Outcome::Unchanged;
            }
            tracing::warn!(
                target: "gitreload::deploy",
                commit = %fetched.commit.short(),
                paths = %drifted.join(","),
                files = drifted.len() as u64,
                "destination differs from the deployed commit; restoring"
            );
            return self.stage_and_deploy(&fetched, false).await;
        }
        if self.rejected.as_ref() == Some(&fetched.commit) {
            tracing::debug!(commit = %fetched.commit.short(), "newest commit is still the rejected one");
            return Outcome::Unchanged;
        }
        self.stage_and_deploy(&fetched, true).await
    }

    async fn fetch(&self) -> Result<Fetched, GitError> {
        let began = Instant::now();
        let mirror = self.mirror.clone();
        let wanted = self.settings.reference.clone();
        let interrupt = Arc::new(AtomicBool::new(false));
        let flag = interrupt.clone();
        let job = tokio::task::spawn_blocking(move || mirror.fetch(wanted.as_deref(), &flag));
        let result = match tokio::time::timeout(self.settings.fetch_timeout, job).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(GitError::Fetch {
                url: self.mirror.url().redacted(),
                // A panic's message could quote anything; scrub it.
                message: crate::redact::scrub(&format!("fetch task failed: {join}")),
            }),
            Err(_) => {
                // gix checks the flag between reads; the thread ends on its own.
                interrupt.store(true, Ordering::SeqCst);
                Err(GitError::Timeout {
                    url: self.mirror.url().redacted(),
                    timeout: humantime::format_duration(self.settings.fetch_timeout).to_string(),
                })
            }
        };
        self.metrics.stage(Stage::fetch, began.elapsed());
        result
    }

    /// Materializes `fetched`, checks it (when `check`), deploys it and
    /// starts a reload round.
    async fn stage_and_deploy(&mut self, fetched: &Fetched, check: bool) -> Outcome {
        let commit = fetched.commit.clone();
        let staged = match self.materialize(&commit).await {
            Ok(s) => s,
            Err(MaterializeError::Rejected {
                commit: c,
                path,
                reason,
            }) => {
                tracing::error!(
                    target: "gitreload::materialize",
                    commit = %short(&c),
                    path = %path,
                    reason = %reason,
                    "commit rejected"
                );
                self.reject(&commit);
                return Outcome::CheckFailed;
            }
            Err(MaterializeError::Git(e)) => {
                tracing::error!(target: "gitreload::git", commit = %commit.short(), error = %e, "cannot read commit");
                return Outcome::FetchFailed;
            }
            Err(e) => {
                tracing::error!(target: "gitreload::materialize", commit = %commit.short(), error = %e, "cannot stage commit");
                return Outcome::DeployFailed;
            }
        };
        let dir = staged.dir.clone();
        let outcome = self.check_and_deploy(fetched, staged, check).await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        outcome
    }

    async fn materialize(&self, commit: &CommitId) -> Result<Staged, MaterializeError> {
        let began = Instant::now();
        let mirror = self.mirror.clone();
        let commit = commit.clone();
        let subdir = self.settings.subdir.clone();
        let root = self.staging_root.clone();
        let limits = Limits {
            max_files: self.settings.max_files,
            max_file_size: self.settings.max_file_size,
        };
        let result = tokio::task::spawn_blocking(move || {
            materialize::materialize(&mirror, &commit, &subdir, &root, limits)
        })
        .await
        .unwrap_or_else(|join| {
            Err(MaterializeError::Io {
                path: self.staging_root.clone(),
                source: std::io::Error::other(join.to_string()),
            })
        });
        self.metrics.stage(Stage::materialize, began.elapsed());
        result
    }

    fn reject(&mut self, commit: &CommitId) {
        self.rejected = Some(commit.clone());
        self.metrics.set_rejected(Some(commit.as_str()));
    }

    async fn check_and_deploy(
        &mut self,
        fetched: &Fetched,
        staged: Staged,
        check: bool,
    ) -> Outcome {
        let commit = &fetched.commit;
        if let (true, Some(checker)) = (check, &self.checker) {
            let began = Instant::now();
            let verdict = checker.run(&staged.dir).await;
            self.metrics.stage(Stage::check, began.elapsed());
            match verdict {
                Ok(output) => {
                    tracing::info!(
                        target: "gitreload::check",
                        commit = %commit.short(),
                        checker = %checker.describe(),
                        duration_ms = began.elapsed().as_millis() as u64,
                        output = %output,
                        "config valid"
                    );
                }
                Err(e) => {
                    let (status, output) = match &e {
                        CheckError::Rejected { status, output, .. } => {
                            (status.clone(), output.clone())
                        }
                        other => (other.to_string(), String::new()),
                    };
                    tracing::error!(
                        target: "gitreload::check",
                        commit = %commit.short(),
                        checker = %checker.describe(),
                        status = %status,
                        output = %output,
                        "commit rejected"
                    );
                    self.reject(commit);
                    return Outcome::CheckFailed;
                }
            }
        }
        if self.interrupted() {
            return Outcome::Interrupted;
        }

        let began = Instant::now();
        let verify = if self.full_verify {
            Verify::Hash
        } else {
            Verify::Stamp
        };
        let records = self.records.clone();
        let dest = self.settings.dest.clone();
        let previous = self.deployed.clone();
        let extra = self.extra_managed.clone();
        let options = self.deploy_options();
        let resolved_ref = fetched.resolved_ref.clone();
        let result = tokio::task::spawn_blocking(move || {
            deploy::deploy(
                &staged,
                &resolved_ref,
                deploy::Destination {
                    dir: &dest,
                    records: &records,
                    options,
                },
                deploy::Known {
                    manifest: previous.as_ref(),
                    extra_managed: &extra,
                    verify,
                },
            )
        })
        .await;
        self.metrics.stage(Stage::deploy, began.elapsed());
        let (manifest, report) = match result {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::error!(target: "gitreload::deploy", commit = %commit.short(), error = %e, "deploy failed");
                return Outcome::DeployFailed;
            }
            Err(join) => {
                tracing::error!(target: "gitreload::deploy", commit = %commit.short(), error = %join, "deploy failed");
                return Outcome::DeployFailed;
            }
        };
        let previous = self.deployed.as_ref().map(|m| m.commit.short().to_string());
        self.deployed = Some(manifest);
        self.extra_managed.clear();
        self.full_verify = false;
        self.rejected = None;
        self.metrics.set_rejected(None);
        self.metrics.deployed(
            commit.as_str(),
            &fetched.resolved_ref,
            report.written.len(),
            report.deleted.len(),
        );
        tracing::info!(
            target: "gitreload::deploy",
            commit = %commit.short(),
            previous = %previous.as_deref().unwrap_or(""),
            r#ref = %fetched.resolved_ref,
            files_written = report.written.len() as u64,
            files_deleted = report.deleted.len() as u64,
            written = %summarize(&report.written),
            deleted = %summarize(&report.deleted),
            duration_ms = began.elapsed().as_millis() as u64,
            "config deployed"
        );
        if let Some(reloader) = &self.reloader {
            if !report.is_empty() || previous.as_deref() != Some(commit.short()) {
                reloader.deployed(commit.as_str());
            }
        }
        Outcome::Deployed
    }

    /// Runs syncs until shutdown: on the interval (with jitter), when
    /// `trigger` fires, and sooner after failures (backoff).
    pub async fn run(mut self, trigger: Arc<Notify>) {
        let mut failures: u32 = 0;
        let mut shutdown = self.shutdown.clone();
        loop {
            let outcome = self.sync().await;
            if *shutdown.borrow() {
                break;
            }
            let delay = match outcome {
                Outcome::FetchFailed | Outcome::DeployFailed => {
                    failures += 1;
                    crate::reload::backoff(failures).min(self.settings.interval)
                }
                _ => {
                    failures = 0;
                    jittered(self.settings.interval)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = trigger.notified() => {
                    tracing::debug!("sync requested");
                }
                _ = shutdown.changed() => break,
            }
        }
        tracing::info!("stopped");
    }
}

fn short(commit: &str) -> &str {
    &commit[..7.min(commit.len())]
}

/// Up to ten paths, comma-separated, then a count of the rest.
fn summarize(paths: &[String]) -> String {
    let mut text = paths.iter().take(10).cloned().collect::<Vec<_>>().join(",");
    if paths.len() > 10 {
        text.push_str(&format!(",... ({} more)", paths.len() - 10));
    }
    text
}

/// The interval minus up to 10%, so sidecars started together drift apart.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 - fastrand::f64() * 0.1)
}
