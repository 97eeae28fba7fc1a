//! Deploy: make the destination equal to a staged commit, touching only
//! what changed and only what gitreload manages.
//!
//! Promises:
//! - Files are compared by content (SHA-256), exec bit, permissions and link
//!   target; never by size and mtime. A stat stamp recorded at the last
//!   deploy lets an unchanged file be recognised without rehashing; any
//!   stamp mismatch falls back to hashing.
//! - Each changed file is written to a temp file in its own directory,
//!   fsynced, then renamed over the old one: a reader sees the old or the new
//!   content, never half of either. The bytes are hashed as they are
//!   copied: a staged file that no longer matches its recorded hash (a
//!   checker wrote to it) fails the deploy, which is rolled back.
//! - The work is proportional to what changed, plus one `lstat` per managed
//!   file (spread over the cores) and the manifest.
//! - Files in the destination that gitreload did not put there are never
//!   touched. The manifest in the state directory records what it manages;
//!   a manifest or journal naming a path the path rules refuse is never
//!   acted on ([`Records`]).
//! - A deploy that fails midway (disk full, read-only volume) is rolled
//!   back: renamed files are put back from hard-linked backups, new files
//!   removed, temp files deleted; the destination is again the last good
//!   commit.
//! - A deploy cut off by a crash is detected on the next start through the
//!   journal: leftovers are cleaned and the next deploy rehashes everything.
//! - Secret files (decrypted or substituted, see [`crate::secrets`]) get
//!   `GITRELOAD_SECRET_FILE_MODE` instead of `GITRELOAD_FILE_MODE`.
//! - This stage never talks to the network and never runs the checker.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::git::CommitId;
use crate::materialize::{FileKind, Staged, Stamp};
use crate::settings::Owner;
use crate::state::{self, StateError};

/// Prefix of gitreload's temp and backup files in the destination.
pub const LEFTOVER_PREFIX: &str = ".gitreload-";

/// One managed path as last deployed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Managed {
    #[serde(flatten)]
    pub kind: FileKind,
    pub stamp: Option<Stamp>,
}

/// What gitreload last deployed: the commit and every file it manages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub commit: CommitId,
    pub resolved_ref: String,
    /// The repository directory that was deployed (`GITRELOAD_SUBDIR`).
    #[serde(default)]
    pub subdir: String,
    /// The commit that was live before this one: where a rollback goes.
    #[serde(default)]
    pub previous_commit: Option<CommitId>,
    pub files: BTreeMap<String, Managed>,
}

/// Written before the first change to the destination, removed after the
/// manifest is saved: its presence means a deploy was cut off.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Journal {
    pub commit: CommitId,
    /// Every path the interrupted deploy may have written or still managed.
    pub paths: BTreeSet<String>,
}

/// How the destination is compared with the staged tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Trust the manifest's hash when the file's stat stamp is unchanged.
    Stamp,
    /// Hash every file (after a crash, when the manifest is lost, and on
    /// the periodic full verification).
    Hash,
}

/// Permissions and ownership of what gitreload creates.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub file_mode: u32,
    /// Mode of decrypted or substituted files (`GITRELOAD_SECRET_FILE_MODE`).
    pub secret_file_mode: u32,
    pub owner: Option<Owner>,
}

impl Options {
    /// The mode a file gets: the secret mode for secret files, exec bits
    /// added (where read is allowed) for executables.
    fn mode_of(&self, executable: bool, secret: bool) -> u32 {
        let base = if secret {
            self.secret_file_mode
        } else {
            self.file_mode
        };
        if executable {
            base | ((base & 0o444) >> 2)
        } else {
            base
        }
    }
    fn dir_mode(&self) -> u32 {
        self.file_mode | ((self.file_mode & 0o444) >> 2) | 0o700
    }
}

/// What a deploy changed.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub written: Vec<String>,
    pub deleted: Vec<String>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.deleted.is_empty()
    }
}

/// Why a deploy failed. The destination was rolled back unless
/// `rolled_back` says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
        rolled_back: bool,
    },
    #[error(
        "{path} is a directory in the destination but a file in commit {commit}; remove it by hand"
    )]
    Conflict { path: PathBuf, commit: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The files in the state directory that belong to this stage.
#[derive(Debug, Clone)]
pub struct Records {
    pub manifest: PathBuf,
    pub journal: PathBuf,
}

impl Records {
    pub fn in_dir(state_dir: &Path) -> Records {
        Records {
            manifest: state_dir.join("manifest.json"),
            journal: state_dir.join("deploy.journal"),
        }
    }

    /// The last manifest, or `None` when there is none (or it is unreadable
    /// or damaged, which is logged and then treated as none: the
    /// destination is rehashed). A manifest is damaged when its commit is
    /// not a commit id or a path breaks the path rules: acting on such a
    /// path could delete outside the destination.
    pub fn load_manifest(&self) -> Option<Manifest> {
        let damaged = |m: &Manifest| {
            CommitId::parse(m.commit.as_str()).is_none() || !m.files.keys().all(|p| deployable(p))
        };
        match state::read::<Manifest>(&self.manifest) {
            Ok(Some(m)) if damaged(&m) => {
                tracing::warn!(path = %self.manifest.display(), "manifest ignored: damaged (a commit id or path that gitreload never writes)");
                None
            }
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "manifest ignored");
                None
            }
        }
    }

    /// The journal of a deploy that was cut off, if any. An unreadable or
    /// damaged one (a path that breaks the path rules) still means a deploy
    /// was cut off, but none of its paths is trusted.
    pub fn load_journal(&self) -> Option<Journal> {
        let cut_off = || Journal {
            commit: CommitId::parse(&"0".repeat(40)).expect("zero id"),
            paths: BTreeSet::new(),
        };
        match state::read::<Journal>(&self.journal) {
            Ok(Some(j)) if !j.paths.iter().all(|p| deployable(p)) => {
                tracing::warn!(path = %self.journal.display(), "journal damaged (a path that gitreload never writes); treating the last deploy as cut off");
                Some(cut_off())
            }
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "journal unreadable; treating the last deploy as cut off");
                Some(cut_off())
            }
        }
    }
}

/// True when `path` passes the rules every staged path passed: the only
/// paths gitreload ever deploys, and so the only ones a record may name.
fn deployable(path: &str) -> bool {
    crate::materialize::checked_path(path.as_bytes()).is_ok()
        && !crate::materialize::is_hidden(path)
}

/// One applied change, kept to undo it.
enum Undo {
    /// `path` was replaced; the old entry is hard-linked at `backup`.
    Replaced { path: PathBuf, backup: PathBuf },
    /// `path` did not exist before.
    Created { path: PathBuf },
    /// A managed file was moved aside to make room for a directory.
    MovedAside { path: PathBuf, backup: PathBuf },
}

/// Where a deploy writes, and how.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub dir: &'a Path,
    pub records: &'a Records,
    pub options: Options,
}

/// What is known about the destination before a deploy.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// The last manifest, if any.
    pub manifest: Option<&'a Manifest>,
    /// Paths an interrupted deploy may have left.
    pub extra_managed: &'a BTreeSet<String>,
    pub verify: Verify,
}

/// Makes the destination equal to `staged`, recording the result as
/// coming from `resolved_ref`.
pub fn deploy(
    staged: &Staged,
    resolved_ref: &str,
    destination: Destination<'_>,
    known: Known<'_>,
) -> Result<(Manifest, Report), DeployError> {
    let Destination {
        dir: dest,
        records,
        options,
    } = destination;
    let Known {
        manifest: previous,
        extra_managed,
        verify,
    } = known;
    std::fs::create_dir_all(dest).map_err(io("creating", dest, true))?;
    let previous_files = previous.map(|m| &m.files);

    let wanted: Vec<(&str, &FileKind, Option<&Managed>)> = staged
        .files
        .iter()
        .map(|(path, kind)| {
            let known = previous_files.and_then(|f| f.get(path));
            (path.as_str(), kind, known)
        })
        .collect();
    // The stamps of entries found equal also go into the new manifest: an
    // unchanged file is looked at once.
    let seen = compare_all(dest, &wanted, verify, options)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let to_write: Vec<&str> = wanted
        .iter()
        .zip(&seen)
        .filter(|(_, stamp)| stamp.is_none())
        .map(|((path, _, _), _)| *path)
        .collect();
    let managed: BTreeSet<&str> = previous_files
        .into_iter()
        .flat_map(|f| f.keys())
        .chain(extra_managed.iter())
        .map(String::as_str)
        .collect();
    let to_delete: Vec<&str> = managed
        .iter()
        .copied()
        .filter(|p| !staged.files.contains_key(*p))
        .filter(|p| dest.join(p).symlink_metadata().is_ok_and(|m| !m.is_dir()))
        .collect();

    let mut report = Report::default();
    if !to_write.is_empty() || !to_delete.is_empty() {
        state::write(
            &records.journal,
            &Journal {
                commit: staged.commit.clone(),
                // With the manifest still on disk, these are every path
                // the destination may hold after a crash.
                paths: to_write
                    .iter()
                    .chain(&to_delete)
                    .map(|p| p.to_string())
                    .chain(extra_managed.iter().cloned())
                    .collect(),
            },
        )?;
        let mut done = Applied::default();
        let applied = apply(staged, dest, &to_write, &to_delete, options, &mut done);
        let Applied {
            undo,
            mut dirs,
            moved_aside,
        } = done;
        if let Err(err) = applied {
            let rolled_back = rollback(undo, dest);
            if rolled_back {
                state::remove(&records.journal)?;
            }
            return Err(match err {
                DeployError::Io {
                    op, path, source, ..
                } => DeployError::Io {
                    op,
                    path,
                    source,
                    rolled_back,
                },
                other => other,
            });
        }
        // Deletes come last: if a write fails, nothing was lost yet.
        report.deleted.extend(moved_aside.iter().cloned());
        for path in to_delete
            .iter()
            .filter(|p| !moved_aside.iter().any(|m| m == *p))
        {
            let full = dest.join(path);
            match std::fs::remove_file(&full) {
                Ok(()) => report.deleted.push(path.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %full.display(), error = %e, "cannot delete file no longer in the commit")
                }
            }
            remove_empty_parents(dest, &full, &staged.files);
            if let Some(parent) = full.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        for item in undo {
            if let Undo::Replaced { backup, .. } | Undo::MovedAside { backup, .. } = item {
                let _ = state::remove_tree(&backup);
            }
        }
        for dir in &dirs {
            if dir.exists() {
                state::sync_dir(dir).map_err(io("syncing", dir, false))?;
            }
        }
        report.written = to_write.iter().map(|p| p.to_string()).collect();
    }

    let files: BTreeMap<String, Managed> = wanted
        .iter()
        .zip(seen)
        .map(|((path, kind, _), stamp)| {
            let stamp = stamp.or_else(|| {
                dest.join(path)
                    .symlink_metadata()
                    .ok()
                    .map(|m| Stamp::of(&m))
            });
            let kind = (*kind).clone();
            (path.to_string(), Managed { kind, stamp })
        })
        .collect();
    let previous_commit = match previous {
        Some(p) if p.commit != staged.commit => Some(p.commit.clone()),
        Some(p) => p.previous_commit.clone(),
        None => None,
    };
    let manifest = Manifest {
        previous_commit,
        commit: staged.commit.clone(),
        resolved_ref: resolved_ref.to_string(),
        subdir: staged.subdir.clone(),
        files,
    };
    state::write(&records.manifest, &manifest)?;
    state::remove(&records.journal)?;
    Ok((manifest, report))
}

fn io(
    op: &'static str,
    path: &Path,
    rolled_back: bool,
) -> impl FnOnce(std::io::Error) -> DeployError {
    let path = path.to_path_buf();
    move |source| DeployError::Io {
        op,
        path,
        source,
        rolled_back,
    }
}

/// The stamp of the destination entry at `full` when it already is
/// `kind`; `None` when it must be written.
fn matches(
    full: &Path,
    kind: &FileKind,
    known: Option<&Managed>,
    verify: Verify,
    options: Options,
) -> Result<Option<Stamp>, DeployError> {
    let meta = match full.symlink_metadata() {
        Ok(m) => m,
        // NotADirectory: a file of the last commit stands where this
        // path's directory must go.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io("inspecting", full, true)(e)),
    };
    let stamp = Stamp::of(&meta);
    let equal = match kind {
        FileKind::Symlink { target } => {
            meta.file_type().is_symlink()
                && std::fs::read_link(full).is_ok_and(|t| t.as_os_str() == target.as_str())
        }
        FileKind::File {
            sha256,
            executable,
            secret,
        } => {
            meta.file_type().is_file()
                && meta.permissions().mode() & 0o7777 == options.mode_of(*executable, *secret)
                && (matches!((verify, known), (Verify::Stamp, Some(k)) if k.kind == *kind && k.stamp == Some(stamp))
                    || hash_file(full).is_ok_and(|h| h == *sha256))
        }
    };
    Ok(equal.then_some(stamp))
}

/// [`matches`] for every entry, in order, spread over the available cores:
/// the pass is one `lstat` (or a hash) per managed file.
fn compare_all(
    dest: &Path,
    wanted: &[(&str, &FileKind, Option<&Managed>)],
    verify: Verify,
    options: Options,
) -> Vec<Result<Option<Stamp>, DeployError>> {
    const PER_THREAD: usize = 1024;
    let compare = |part: &[(&str, &FileKind, Option<&Managed>)]| {
        part.iter()
            .map(|(path, kind, known)| matches(&dest.join(path), kind, *known, verify, options))
            .collect::<Vec<_>>()
    };
    if wanted.len() <= PER_THREAD {
        return compare(wanted);
    }
    // Asked once: on Linux the answer is read from cgroup files.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = cores.min(4).min(wanted.len().div_ceil(PER_THREAD));
    if threads <= 1 {
        return compare(wanted);
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = wanted
            .chunks(wanted.len().div_ceil(threads))
            .map(|part| scope.spawn(move || compare(part)))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// SHA-256 of a file, hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn temp_name(final_path: &Path, role: &str) -> PathBuf {
    let name = final_path
        .file_name()
        .unwrap_or_default()
        .as_encoded_bytes();
    let digest = hex::encode(&Sha256::digest(name)[..8]);
    final_path.with_file_name(format!("{LEFTOVER_PREFIX}{role}-{digest}"))
}

/// What [`apply`] did, to finish or undo it.
#[derive(Default)]
struct Applied {
    undo: Vec<Undo>,
    /// Directories whose entries changed (to fsync).
    dirs: BTreeSet<PathBuf>,
    /// Paths removed with a directory that was moved aside.
    moved_aside: Vec<String>,
}

fn apply(
    staged: &Staged,
    dest: &Path,
    to_write: &[&str],
    to_delete: &[&str],
    options: Options,
    done: &mut Applied,
) -> Result<(), DeployError> {
    let Applied {
        undo,
        dirs,
        moved_aside,
    } = done;
    for path in to_write {
        let full = dest.join(path);
        let parent = full.parent().unwrap_or(dest).to_path_buf();
        make_dirs(dest, &parent, to_delete, options, undo)?;
        let mut existing = full.symlink_metadata().ok();
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            // A directory of the last commit that became a file: it may go
            // if everything in it is gitreload's and leaves with this
            // commit. It is moved aside, so a failure can put it back.
            let leaving = managed_below(&full, path, to_delete);
            let Some(leaving) = leaving else {
                return Err(DeployError::Conflict {
                    path: full,
                    commit: staged.commit.to_string(),
                });
            };
            let backup = temp_name(&full, "old");
            state::remove_tree(&backup).map_err(io("removing", &backup, true))?;
            std::fs::rename(&full, &backup).map_err(io("moving aside", &full, true))?;
            undo.push(Undo::MovedAside {
                path: full.clone(),
                backup,
            });
            moved_aside.extend(leaving);
            existing = None;
        }
        let tmp = temp_name(&full, "tmp");
        let _ = std::fs::remove_file(&tmp);
        let result = write_temp(&staged.dir.join(path), &tmp, &staged.files[*path], options);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("writing", &full, true)(e));
        }
        if existing.is_some() {
            let backup = temp_name(&full, "old");
            let _ = std::fs::remove_file(&backup);
            if let Err(e) = std::fs::hard_link(&full, &backup) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("backing up", &full, true)(e));
            }
            undo.push(Undo::Replaced {
                path: full.clone(),
                backup,
            });
        } else {
            undo.push(Undo::Created { path: full.clone() });
        }
        if let Err(e) = std::fs::rename(&tmp, &full) {
            let _ = std::fs::remove_file(&tmp);
            // The undo entry above refers to a rename that did not happen.
            if let Some(Undo::Replaced { backup, .. }) = undo.pop() {
                let _ = std::fs::remove_file(backup);
            }
            return Err(io("renaming into place", &full, true)(e));
        }
        dirs.insert(parent);
    }
    Ok(())
}

/// The managed paths below the directory `dir` (`rel` in the destination)
/// when every entry in it is one of `to_delete`; `None` when it holds
/// anything else (a file gitreload does not manage).
fn managed_below(dir: &Path, rel: &str, to_delete: &[&str]) -> Option<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), rel.to_string())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()? {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let path = format!("{rel}/{name}");
            if entry.file_type().ok()?.is_dir() {
                stack.push((entry.path(), path));
            } else if to_delete.binary_search(&path.as_str()).is_ok() {
                found.push(path);
            } else {
                return None;
            }
        }
    }
    Some(found)
}

/// Creates the directories leading to `dir`. A managed file that stands
/// where a directory must go (and is no longer in the commit) is moved aside.
fn make_dirs(
    dest: &Path,
    dir: &Path,
    to_delete: &[&str],
    options: Options,
    undo: &mut Vec<Undo>,
) -> Result<(), DeployError> {
    if dir.is_dir() {
        return Ok(());
    }
    let relative = dir.strip_prefix(dest).unwrap_or(dir);
    let mut current = dest.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match current.symlink_metadata() {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                let rel = current.strip_prefix(dest).unwrap_or(&current);
                if !to_delete.contains(&rel.to_string_lossy().as_ref()) {
                    return Err(io("creating directory", &current, true)(
                        std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "a file that gitreload does not manage is in the way",
                        ),
                    ));
                }
                let backup = temp_name(&current, "old");
                std::fs::rename(&current, &backup).map_err(io("moving aside", &current, true))?;
                undo.push(Undo::MovedAside {
                    path: current.clone(),
                    backup,
                });
            }
            Err(_) => {}
        }
        std::fs::DirBuilder::new()
            .mode(options.dir_mode())
            .create(&current)
            .map_err(io("creating directory", &current, true))?;
        set_owner(&current, options.owner).map_err(io("setting owner of", &current, true))?;
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

fn write_temp(source: &Path, tmp: &Path, kind: &FileKind, options: Options) -> std::io::Result<()> {
    match kind {
        FileKind::Symlink { target } => std::os::unix::fs::symlink(target, tmp),
        FileKind::File {
            sha256,
            executable,
            secret,
        } => {
            let mode = options.mode_of(*executable, *secret);
            let mut input = Hashing {
                inner: File::open(source)?,
                hasher: Sha256::new(),
            };
            let mut output = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(tmp)?;
            std::io::copy(&mut input, &mut output)?;
            // The bytes deployed are the bytes the manifest names, even if
            // something (a checker) changed the staged copy.
            if hex::encode(input.hasher.finalize()) != *sha256 {
                return Err(std::io::Error::other(format!(
                    "its staged copy {} changed after it was staged (did the checker write to it?)",
                    source.display()
                )));
            }
            // The umask may have narrowed the mode given at creation.
            output.set_permissions(std::fs::Permissions::from_mode(mode))?;
            set_owner(tmp, options.owner)?;
            output.flush()?;
            output.sync_all()
        }
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn set_owner(path: &Path, owner: Option<Owner>) -> std::io::Result<()> {
    match owner {
        Some(o) => std::os::unix::fs::lchown(path, Some(o.uid), o.gid),
        None => Ok(()),
    }
}

/// Undoes applied changes, newest first. Returns false when something could
/// not be restored (the journal then stays, and the next start rehashes).
fn rollback(undo: Vec<Undo>, dest: &Path) -> bool {
    let mut complete = true;
    for item in undo.into_iter().rev() {
        let result = match &item {
            Undo::Replaced { path, backup } | Undo::MovedAside { path, backup } => {
                std::fs::rename(backup, path)
            }
            Undo::Created { path } => std::fs::remove_file(path),
        };
        if let Err(e) = result {
            complete = false;
            tracing::error!(dest = %dest.display(), error = %e, "rollback step failed");
        }
    }
    complete
}

fn remove_empty_parents(dest: &Path, removed: &Path, keep: &BTreeMap<String, FileKind>) {
    let mut dir = removed.parent();
    while let Some(d) = dir {
        if d == dest || !d.starts_with(dest) {
            break;
        }
        let rel = d
            .strip_prefix(dest)
            .unwrap_or(d)
            .to_string_lossy()
            .to_string();
        let prefix = format!("{rel}/");
        if keep.keys().any(|k| k.starts_with(&prefix)) {
            break;
        }
        // Fails (and stops) when the directory holds anything else.
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Removes temp files and backups (files, or directories moved aside) a
/// crashed deploy left in `dest`. Returns how many were removed. Symlinked
/// directories are not followed.
pub fn remove_leftovers(dest: &Path) -> usize {
    let mut removed = 0;
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(LEFTOVER_PREFIX) {
                // A directory is one moved aside to make room for a file.
                if state::remove_tree(&entry.path()).is_ok() {
                    removed += 1;
                }
            } else if kind.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    removed
}

/// Managed paths whose destination entry no longer matches the manifest.
/// With [`Verify::Stamp`] a file whose stat stamp is unchanged is trusted.
pub fn drifted(dest: &Path, manifest: &Manifest, verify: Verify, options: Options) -> Vec<String> {
    let wanted: Vec<(&str, &FileKind, Option<&Managed>)> = manifest
        .files
        .iter()
        .map(|(path, managed)| (path.as_str(), &managed.kind, Some(managed)))
        .collect();
    let seen = compare_all(dest, &wanted, verify, options);
    wanted
        .iter()
        .zip(seen)
        .filter(|(_, seen)| !matches!(seen, Ok(Some(_))))
        .map(|((path, _, _), _)| path.to_string())
        .collect()
}
