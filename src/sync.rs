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
//! - A rejected commit is not retried until upstream moves, even across a
//!   restart: the rejection is kept in the state dir (`rejected.json`),
//!   and a commit the process died on twice while staging or checking it
//!   (out of memory, say) is rejected at the next start (`attempt.json`).
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
use crate::materialize::{self, MaterializeError, Rules, Staged, Staging};
use crate::metrics::{Metrics, Stage, SyncResult};
use crate::reload::{Refusal, Reloader};
use crate::secrets::Mode;
use crate::settings::{DriftMode, Settings, StagingSettings};
use crate::state::{self, ContentKey};

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

    fn sync_ends(&self, success: bool, config_live: bool) {
        *self.sync_started.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if success {
            *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        if success && config_live {
            self.ready.store(true, Ordering::SeqCst);
        }
    }
}

/// Why a commit is staged and deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Upstream moved to it (or it is restaged with this process's secrets).
    Upstream,
    /// The live commit, put back over drift.
    Repair,
    /// The commit before one every replica refused.
    Rollback,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Upstream => "upstream",
            Why::Repair => "repair",
            Why::Rollback => "rollback",
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
    /// Path rules, limits and secrets for materializing a commit.
    rules: Arc<Rules>,
    records: Records,
    /// The staging directory kept between syncs; `None` only while
    /// [`Pipeline::on_staging`] lends it to a blocking task.
    staging: Option<Staging>,
    staging_root: PathBuf,
    /// What is live on the destination.
    deployed: Option<Arc<Manifest>>,
    /// Paths an interrupted deploy may have written.
    extra_managed: BTreeSet<String>,
    /// Rehash the destination at the next sync (after a crash, or without
    /// a manifest).
    full_verify: bool,
    /// The newest upstream commit, when it was rejected.
    rejected: Option<CommitId>,
    /// Where the rejection and the commit being staged are kept.
    rejection_file: PathBuf,
    attempt_file: PathBuf,
    /// Keys the hashes of secret files, and the settings' fingerprint.
    content_key: ContentKey,
    /// Drift last reported (with `GITRELOAD_DRIFT=report`), to say it once.
    reported_drift: Vec<String>,
    /// Materialize the live commit again at the next sync even if it did
    /// not change: its secrets (files, variables, identity) are read anew
    /// by a new process, and the live files hold the old values.
    restage: bool,
    metrics: Arc<Metrics>,
    reloader: Option<Reloader>,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
}

impl Pipeline {
    /// Prepares the pipeline from the state directory, which the caller
    /// holds with [`crate::state::lock_dir`]: loads the manifest,
    /// and if a deploy was cut off, cleans its leftovers and schedules a
    /// full verification.
    pub fn new(
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        reloader: Option<Reloader>,
        health: Arc<Health>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Pipeline, String> {
        state::create_private_dir(&settings.state_dir).map_err(|e| {
            format!(
                "cannot create state directory {}: {e}",
                settings.state_dir.display()
            )
        })?;
        let content_key =
            ContentKey::load_or_create(&settings.state_dir).map_err(|e| e.to_string())?;
        let mirror = Mirror::new(
            &settings.state_dir,
            settings.repo.clone(),
            settings.credentials.clone(),
            settings.fetch_timeout,
        );
        let stale = mirror.remove_stale_locks();
        if stale > 0 {
            tracing::warn!(
                target: "gitreload::git",
                files = stale as u64,
                "removed lock files a killed process left in the mirror"
            );
        }
        // A staging directory left by a crash may hold decrypted secrets.
        let staging_root = settings.state_dir.join("staging");
        if staging_root.symlink_metadata().is_ok() {
            materialize::remove_staging(&staging_root).map_err(|e| {
                format!(
                    "cannot remove the old staging directory {}: {e}",
                    staging_root.display()
                )
            })?;
        }
        let records = Records::in_dir(&settings.state_dir);
        let deployed = records.load_manifest().map(Arc::new);
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
        let restage = deployed.as_ref().is_some_and(|m| {
            m.files
                .values()
                .any(|f| matches!(f.kind, materialize::FileKind::File { secret: true, .. }))
        });
        let rules = Arc::new(Rules::from_settings(
            &settings.staging,
            Mode::Deploy,
            content_key,
        ));
        let rejection_file = settings.state_dir.join("rejected.json");
        let attempt_file = settings.state_dir.join("attempt.json");
        let fingerprint = rules_fingerprint(&settings.staging, &content_key);
        let rejected = remembered_rejection(&rejection_file, &attempt_file, &fingerprint);
        if let Some(r) = &rejected {
            metrics.set_rejected(Some(r.as_str()));
        }
        let checker = Checker::from_settings(&settings.staging);
        Ok(Pipeline {
            staging: Some(Staging::new(&staging_root)),
            staging_root,
            mirror: Arc::new(mirror),
            checker,
            rules,
            restage,
            records,
            deployed,
            extra_managed,
            full_verify,
            rejected,
            rejection_file,
            attempt_file,
            content_key,
            reported_drift: Vec::new(),
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
            secret_file_mode: self.settings.secret_file_mode,
            owner: self.settings.file_owner,
            content_key: self.content_key,
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
        // Ready means a validated config is live, not merely that the poll
        // worked: a rejected first commit leaves the process unready.
        self.health.sync_ends(
            outcome.is_success(),
            self.deployed.is_some() && self.extra_managed.is_empty(),
        );
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
                self.recover_mirror().await;
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
            .filter(|m| m.subdir == self.settings.staging.subdir)
            .map(|m| m.commit.clone());
        if live.as_ref() == Some(&fetched.commit) && self.restage {
            self.restage = false;
            tracing::info!(
                commit = %fetched.commit.short(),
                "live config holds secrets; staging it again with this process's secrets"
            );
            return self.deploy_fetched(&fetched).await;
        }
        if live.as_ref() == Some(&fetched.commit) {
            self.clear_rejection();
            let verify = if self.full_verify {
                Verify::Hash
            } else {
                Verify::Stamp
            };
            return match self.repair(verify).await {
                Some(outcome) => outcome,
                None => {
                    tracing::debug!(commit = %fetched.commit.short(), "no change");
                    Outcome::Unchanged
                }
            };
        }
        if self.rejected.as_ref() == Some(&fetched.commit) {
            tracing::debug!(commit = %fetched.commit.short(), "newest commit is still the rejected one");
            // A run with --once (cron) that met a commit an earlier run
            // rejected fails like the run that rejected it.
            if self.settings.once {
                tracing::error!(commit = %fetched.commit.short(), "newest commit was rejected by an earlier run; waiting for upstream to move");
                return Outcome::CheckFailed;
            }
            return Outcome::Unchanged;
        }
        self.deploy_fetched(&fetched).await
    }

    /// Checks and deploys a fetched commit, logs it and starts a reload.
    async fn deploy_fetched(&mut self, fetched: &Fetched) -> Outcome {
        let previous = self.deployed.as_ref().map(|m| m.commit.short().to_string());
        let began = Instant::now();
        let report = match self
            .deploy_commit(&fetched.commit, &fetched.resolved_ref, Why::Upstream)
            .await
        {
            Ok(report) => report,
            Err(outcome) => return outcome,
        };
        tracing::info!(
            target: "gitreload::deploy",
            commit = %fetched.commit.short(),
            previous = %previous.as_deref().unwrap_or(""),
            r#ref = %fetched.resolved_ref,
            files_written = report.written.len() as u64,
            files_deleted = report.deleted.len() as u64,
            written = %summarize(&report.written),
            deleted = %summarize(&report.deleted),
            duration_ms = began.elapsed().as_millis() as u64,
            "config deployed"
        );
        self.reload(&fetched.commit);
        Outcome::Deployed
    }

    fn reload(&self, commit: &CommitId) {
        if let Some(reloader) = &self.reloader {
            reloader.deployed(commit.as_str());
        }
    }

    /// Compares the destination with the manifest and, per `GITRELOAD_DRIFT`,
    /// restores what drifted. `None` when nothing drifted (or drift is off).
    async fn repair(&mut self, verify: Verify) -> Option<Outcome> {
        if self.settings.drift == DriftMode::Off && self.extra_managed.is_empty() {
            return None;
        }
        let manifest = self.deployed.clone()?;
        if manifest.subdir != self.settings.staging.subdir {
            return None;
        }
        let dest = self.settings.dest.clone();
        let options = self.deploy_options();
        let check = manifest.clone();
        let drifted =
            tokio::task::spawn_blocking(move || deploy::drifted(&dest, &check, verify, options))
                .await
                .unwrap_or_default();
        if verify == Verify::Hash {
            tracing::debug!(
                target: "gitreload::deploy",
                files = manifest.files.len() as u64,
                drifted = drifted.len() as u64,
                "destination verified"
            );
        }
        if drifted.is_empty() && self.extra_managed.is_empty() {
            self.full_verify = false;
            self.reported_drift.clear();
            return None;
        }
        if self.settings.drift == DriftMode::Report && self.extra_managed.is_empty() {
            if drifted != self.reported_drift {
                tracing::warn!(
                    target: "gitreload::deploy",
                    commit = %manifest.commit.short(),
                    paths = %summarize(&drifted),
                    files = drifted.len() as u64,
                    "drift detected; left as it is (GITRELOAD_DRIFT=report)"
                );
                self.reported_drift = drifted;
            }
            return None;
        }
        let report = match self
            .deploy_commit(&manifest.commit, &manifest.resolved_ref, Why::Repair)
            .await
        {
            Ok(report) => report,
            Err(outcome) => return Some(outcome),
        };
        if report.is_empty() {
            return None;
        }
        self.metrics.drift_repaired(drifted.len());
        tracing::warn!(
            target: "gitreload::deploy",
            commit = %manifest.commit.short(),
            paths = %summarize(&drifted),
            files = drifted.len() as u64,
            files_written = report.written.len() as u64,
            "drift repaired"
        );
        self.reload(&manifest.commit);
        Some(Outcome::Deployed)
    }

    /// Every replica refused the live commit although the one before had
    /// been accepted: put the previous commit back, reload, and reject the
    /// refused one until upstream moves.
    async fn roll_back(&mut self, refusal: Refusal) {
        let Some(manifest) = self.deployed.clone() else {
            return;
        };
        if manifest.commit.as_str() != refusal.commit {
            return; // A newer deploy already replaced it.
        }
        let Some(previous) = manifest.previous_commit.clone() else {
            tracing::error!(
                target: "gitreload::reload",
                commit = %manifest.commit.short(),
                target = %refusal.target,
                error = %refusal.error,
                "every target refused the config and there is no earlier commit to restore"
            );
            return;
        };
        match self
            .deploy_commit(&previous, &manifest.resolved_ref, Why::Rollback)
            .await
        {
            Ok(report) => {
                // The refused commit must not become the rollback target.
                if let Some(m) = &mut self.deployed {
                    let m = Arc::make_mut(m);
                    m.previous_commit = None;
                    if let Err(e) = crate::state::write(&self.records.manifest, m) {
                        tracing::warn!(error = %e, "cannot record the rollback");
                    }
                }
                self.reject(
                    &manifest.commit,
                    Some(format!("every target refused it ({})", refusal.target)),
                );
                tracing::error!(
                    target: "gitreload::reload",
                    commit = %manifest.commit.short(),
                    restored = %previous.short(),
                    target = %refusal.target,
                    error = %refusal.error,
                    files_written = report.written.len() as u64,
                    "commit rolled back: every target refused it"
                );
                self.reload(&previous);
            }
            Err(_) => {
                tracing::error!(
                    target: "gitreload::reload",
                    commit = %manifest.commit.short(),
                    restored = %previous.short(),
                    "rollback failed; the refused config stays live"
                );
            }
        }
    }

    /// After a failed fetch or read: if the mirror itself is damaged (a
    /// corrupt pack, a truncated fetch), discard it so the next fetch
    /// clones afresh instead of failing forever.
    async fn recover_mirror(&self) {
        let mirror = self.mirror.clone();
        let damaged = tokio::task::spawn_blocking(move || {
            if mirror.is_damaged() {
                mirror.discard().map(|_| true)
            } else {
                Ok(false)
            }
        })
        .await;
        match damaged {
            Ok(Ok(true)) => tracing::warn!(
                target: "gitreload::git",
                path = %self.mirror.path().display(),
                "mirror damaged; discarded, the next fetch clones afresh"
            ),
            Ok(Err(e)) => tracing::error!(
                target: "gitreload::git",
                path = %self.mirror.path().display(),
                error = %e,
                "mirror damaged and cannot be removed"
            ),
            _ => {}
        }
    }

    async fn fetch(&self) -> Result<Fetched, GitError> {
        let began = Instant::now();
        let mirror = self.mirror.clone();
        let wanted = self.settings.reference.clone();
        let interrupt = Arc::new(AtomicBool::new(false));
        let flag = interrupt.clone();
        let state_dir = self.settings.state_dir.clone();
        let job = tokio::task::spawn_blocking(move || {
            let fetched = mirror.fetch(wanted.as_deref(), &flag);
            // gix and ssh create files with the process umask.
            if let Err(e) = state::make_private(&state_dir, &["staging"]) {
                tracing::warn!(path = %state_dir.display(), error = %e, "cannot narrow the state directory's modes");
            }
            fetched
        });
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

    /// Materializes `commit`, checks it and deploys it. On failure the
    /// reason is logged and the sync's outcome returned. Whatever `why`,
    /// the checker runs: a repair or rollback stages the commit anew (its
    /// secrets are read again), so the bytes it would publish may not be
    /// the ones checked before.
    async fn deploy_commit(
        &mut self,
        commit: &CommitId,
        resolved_ref: &str,
        why: Why,
    ) -> Result<deploy::Report, Outcome> {
        if why == Why::Upstream {
            self.attempt_begins(commit);
        }
        let staged = self.materialize(commit).await;
        if staged.is_err() {
            self.attempt_over();
        }
        let staged = match staged {
            Ok(s) => s,
            Err(MaterializeError::Rejected { path, reason }) => {
                self.rejected_by_rules(commit, &path, &reason, true, why);
                return Err(Outcome::CheckFailed);
            }
            Err(MaterializeError::Unresolved { path, reason }) => {
                self.rejected_by_rules(commit, &path, &reason, false, why);
                return Err(Outcome::CheckFailed);
            }
            Err(MaterializeError::Git(e)) => {
                tracing::error!(target: "gitreload::git", commit = %commit.short(), error = %e, "cannot read commit");
                self.recover_mirror().await;
                return Err(Outcome::FetchFailed);
            }
            Err(e) => {
                tracing::error!(target: "gitreload::materialize", commit = %commit.short(), error = %e, "cannot stage commit");
                return Err(Outcome::DeployFailed);
            }
        };
        let result = self
            .check_and_deploy(commit, resolved_ref, staged, why)
            .await;
        // A failed deploy may have met a staged file that changed: the next
        // sync stages afresh. Plaintext never outlives the sync.
        let failed = matches!(result, Err(Outcome::DeployFailed));
        self.on_staging(move |staging| {
            if failed {
                staging.reset();
            } else {
                staging.discard_secrets();
            }
        })
        .await
        .ok();
        result
    }

    /// Runs `work` on the staging directory off the async runtime. When it
    /// panicked, the staging directory is started afresh.
    async fn on_staging<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Staging) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let mut staging = self
            .staging
            .take()
            .unwrap_or_else(|| Staging::new(&self.staging_root));
        let job = tokio::task::spawn_blocking(move || {
            let done = work(&mut staging);
            (staging, done)
        })
        .await;
        match job {
            Ok((staging, done)) => {
                self.staging = Some(staging);
                Ok(done)
            }
            Err(join) => {
                let mut fresh = Staging::new(&self.staging_root);
                fresh.reset();
                self.staging = Some(fresh);
                Err(join)
            }
        }
    }

    async fn materialize(&mut self, commit: &CommitId) -> Result<Staged, MaterializeError> {
        let began = Instant::now();
        let mirror = self.mirror.clone();
        let commit = commit.clone();
        let subdir = self.settings.staging.subdir.clone();
        let rules = self.rules.clone();
        let result = self
            .on_staging(move |staging| {
                materialize::materialize(&mirror, &commit, &subdir, staging, &rules)
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

    /// A path rule (or, not `kept`, a secret) rejected `commit`.
    fn rejected_by_rules(
        &mut self,
        commit: &CommitId,
        path: &str,
        reason: &str,
        kept: bool,
        why: Why,
    ) {
        tracing::error!(
            target: "gitreload::materialize",
            commit = %commit.short(),
            path = %path,
            reason = %reason,
            why = why.as_str(),
            "commit rejected"
        );
        if why == Why::Upstream {
            self.reject(commit, kept.then(|| format!("{path}: {reason}")));
        }
    }

    /// Rejects `commit` until upstream moves; with a reason, the rejection
    /// is kept in the state dir and survives a restart.
    fn reject(&mut self, commit: &CommitId, reason: Option<String>) {
        self.rejected = Some(commit.clone());
        self.metrics.set_rejected(Some(commit.as_str()));
        let Some(reason) = reason else { return };
        let record = Rejection {
            commit: commit.clone(),
            reason,
            rules: rules_fingerprint(&self.settings.staging, &self.content_key),
        };
        if let Err(e) = state::write(&self.rejection_file, &record) {
            tracing::warn!(error = %e, "cannot keep the rejection; a restart will try the commit again");
        }
    }

    fn clear_rejection(&mut self) {
        if self.rejected.take().is_some() {
            self.metrics.set_rejected(None);
        }
        if let Err(e) = state::remove(&self.rejection_file) {
            tracing::warn!(error = %e, "cannot remove the old rejection");
        }
    }

    /// Marks `commit` as being staged and checked until [`Self::attempt_over`]:
    /// a process that dies meanwhile leaves the mark for the next start.
    fn attempt_begins(&self, commit: &CommitId) {
        let deaths = match state::read::<Attempt>(&self.attempt_file) {
            Ok(Some(a)) if a.commit == *commit => a.deaths,
            _ => 0,
        };
        let record = Attempt {
            commit: commit.clone(),
            deaths,
        };
        if let Err(e) = state::write(&self.attempt_file, &record) {
            tracing::warn!(error = %e, "cannot mark the commit being staged");
        }
    }

    fn attempt_over(&self) {
        if let Err(e) = state::remove(&self.attempt_file) {
            tracing::warn!(error = %e, "cannot clear the mark of the commit staged");
        }
    }

    async fn check_and_deploy(
        &mut self,
        commit: &CommitId,
        resolved_ref: &str,
        staged: Staged,
        why: Why,
    ) -> Result<deploy::Report, Outcome> {
        if let Some(checker) = &self.checker {
            let began = Instant::now();
            let verdict = checker.run(&staged.dir).await;
            if let Some(staging) = &mut self.staging {
                staging.checked();
            }
            self.metrics.stage(Stage::check, began.elapsed());
            match verdict {
                Ok(output) => {
                    let output = staged.redactions.apply(&output);
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
                            (status.clone(), staged.redactions.apply(output))
                        }
                        other => (other.to_string(), String::new()),
                    };
                    tracing::error!(
                        target: "gitreload::check",
                        commit = %commit.short(),
                        checker = %checker.describe(),
                        status = %status,
                        output = %output,
                        why = why.as_str(),
                        "commit rejected"
                    );
                    // A repair or rollback that fails its check leaves the
                    // live commit as it is; only a new upstream commit is
                    // remembered as rejected. A checker that cannot start
                    // says nothing of the commit: remembered by this
                    // process only.
                    if why == Why::Upstream {
                        let reason = match &e {
                            CheckError::Spawn { .. } => None,
                            _ => Some(format!("{}: {status}", checker.describe())),
                        };
                        self.reject(commit, reason);
                    }
                    self.attempt_over();
                    return Err(Outcome::CheckFailed);
                }
            }
        }
        // What could exhaust memory (reading the tree, the checker) is
        // over; a death from here on is a cut-off deploy (the journal).
        self.attempt_over();
        if self.interrupted() {
            return Err(Outcome::Interrupted);
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
        let resolved = resolved_ref.to_string();
        let result = tokio::task::spawn_blocking(move || {
            deploy::deploy(
                &staged,
                &resolved,
                deploy::Destination {
                    dir: &dest,
                    records: &records,
                    options,
                },
                deploy::Known {
                    manifest: previous.as_deref(),
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
                return Err(Outcome::DeployFailed);
            }
            Err(join) => {
                tracing::error!(target: "gitreload::deploy", commit = %commit.short(), error = %join, "deploy failed");
                return Err(Outcome::DeployFailed);
            }
        };
        self.deployed = Some(Arc::new(manifest));
        self.extra_managed.clear();
        self.full_verify = false;
        self.clear_rejection();
        self.metrics.deployed(
            commit.as_str(),
            resolved_ref,
            report.written.len(),
            report.deleted.len(),
        );
        Ok(report)
    }

    /// Runs until shutdown: syncs on the interval (with jitter), when
    /// `events.sync_now` fires, and sooner after failures (backoff); checks
    /// for drift when the watch fires and fully every verify interval;
    /// rolls back when every replica refuses a new config.
    pub async fn run(mut self, mut events: Events) {
        let mut failures: u32 = 0;
        let mut shutdown = self.shutdown.clone();
        let mut next_sync = tokio::time::Instant::now();
        let mut next_verify = tokio::time::Instant::now() + self.settings.verify_interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_sync) => {}
                _ = events.sync_now.notified() => {
                    tracing::debug!("sync requested");
                }
                _ = events.drift.notified() => {
                    // Let a burst of writes settle, then compare.
                    tokio::time::sleep(DRIFT_SETTLE).await;
                    if !self.interrupted() {
                        self.repair(Verify::Stamp).await;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(next_verify) => {
                    next_verify = tokio::time::Instant::now() + self.settings.verify_interval;
                    self.repair(Verify::Hash).await;
                    continue;
                }
                Some(refusal) = recv(&mut events.refusals) => {
                    self.roll_back(refusal).await;
                    continue;
                }
                _ = shutdown.changed() => break,
            }
            let outcome = self.sync().await;
            if *shutdown.borrow() {
                break;
            }
            let delay = match outcome {
                Outcome::FetchFailed | Outcome::DeployFailed => {
                    failures += 1;
                    let delay = crate::reload::backoff(failures).min(self.settings.interval);
                    tracing::info!(
                        failures = failures as u64,
                        retry_in_ms = delay.as_millis() as u64,
                        "retry scheduled"
                    );
                    delay
                }
                _ => {
                    failures = 0;
                    jittered(self.settings.interval)
                }
            };
            next_sync = tokio::time::Instant::now() + delay;
        }
        tracing::info!("stopped");
    }
}

/// A rejected commit as kept in the state dir (`rejected.json`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Rejection {
    commit: CommitId,
    /// Why, without secrets: the path and rule, or the checker and status.
    reason: String,
    /// [`rules_fingerprint`] of the settings that judged it.
    rules: String,
}

/// The commit being staged and checked (`attempt.json`), and how many
/// processes died while doing so.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Attempt {
    commit: CommitId,
    deaths: u32,
}

/// A process that died this many times while staging and checking one
/// commit rejects it at the next start. One death may be an unrelated
/// `kill -9` or node failure; two in a row on the same commit are the
/// commit's doing (a tree or blob that exhausts memory, a checker that
/// does).
const DEATHS_BEFORE_REJECTION: u32 = 2;

/// What judged a commit: when an operator changes it (raises a limit,
/// changes the checker), a kept rejection no longer holds. Keyed, as the
/// checker command may hold a secret.
fn rules_fingerprint(staging: &StagingSettings, key: &ContentKey) -> String {
    let text = format!(
        "{:?}|{:?}|{:?}|{}|{}|{:?}|{}",
        staging.subdir,
        staging.check,
        staging.check_timeout,
        staging.max_files,
        staging.max_file_size,
        staging
            .expand
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>(),
        staging.age_identity.is_some(),
    );
    materialize::ContentHasher::of(text.as_bytes(), true, key)
}

/// At start: the rejected commit kept by an earlier process (while the
/// settings that judged it are unchanged), or the commit earlier processes
/// died on while staging it, now rejected.
fn remembered_rejection(
    rejection_file: &std::path::Path,
    attempt_file: &std::path::Path,
    fingerprint: &str,
) -> Option<CommitId> {
    if let Ok(Some(attempt)) = state::read::<Attempt>(attempt_file) {
        let deaths = attempt.deaths + 1;
        if deaths >= DEATHS_BEFORE_REJECTION {
            let reason = format!(
                "gitreload stopped {deaths} times while staging or checking it (out of memory?)"
            );
            tracing::error!(
                target: "gitreload::materialize",
                commit = %attempt.commit.short(),
                reason = %reason,
                "commit rejected"
            );
            let record = Rejection {
                commit: attempt.commit.clone(),
                reason,
                rules: fingerprint.to_string(),
            };
            if let Err(e) = state::write(rejection_file, &record) {
                tracing::warn!(error = %e, "cannot keep the rejection");
            }
            let _ = state::remove(attempt_file);
        } else {
            tracing::warn!(
                commit = %attempt.commit.short(),
                deaths = deaths as u64,
                "the previous process stopped while staging or checking this commit"
            );
            let record = Attempt {
                commit: attempt.commit,
                deaths,
            };
            if let Err(e) = state::write(attempt_file, &record) {
                tracing::warn!(error = %e, "cannot count the stop");
            }
        }
    }
    match state::read::<Rejection>(rejection_file) {
        Ok(Some(r)) if r.rules == fingerprint => {
            tracing::info!(
                commit = %r.commit.short(),
                reason = %r.reason,
                "commit rejected by an earlier process; waiting for upstream to move"
            );
            Some(r.commit)
        }
        Ok(Some(_)) => {
            tracing::info!("settings changed since a commit was rejected; it will be tried again");
            let _ = state::remove(rejection_file);
            None
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "rejection record ignored");
            None
        }
    }
}

/// How long the destination must be quiet after a change event before it
/// is compared with the manifest.
const DRIFT_SETTLE: Duration = Duration::from_millis(150);

/// What, besides the timer, makes the loop act.
pub struct Events {
    /// A webhook asked for a sync.
    pub sync_now: Arc<Notify>,
    /// The destination changed (see [`crate::drift`]).
    pub drift: Arc<Notify>,
    /// Every replica refused a new config (see [`crate::reload`]).
    pub refusals: Option<tokio::sync::mpsc::UnboundedReceiver<Refusal>>,
}

async fn recv(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Refusal>>) -> Option<Refusal> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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
