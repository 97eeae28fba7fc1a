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
//! - Nothing below the destination is reached through a symbolic link:
//!   every look, write, rename, chmod, chown and delete walks from a handle
//!   of the destination ([`crate::confined`]). A link of the last commit
//!   that stands where this commit needs a directory is ours: it is moved
//!   aside (and removed with the deploy) before anything is created there;
//!   a link someone put where a managed directory was is removed and the
//!   directory put back; any other link, or a file gitreload does not
//!   manage, in the way of a new path stops the deploy, naming it.
//! - The work is proportional to what changed, plus one `lstat` per managed
//!   file (spread over the cores) and the manifest.
//! - Files in the destination that gitreload did not put there are never
//!   touched. The manifest in the state directory records what it manages;
//!   a manifest or journal naming a path the path rules refuse is never
//!   acted on ([`Records`]).
//! - A deploy that fails midway (disk full, read-only volume, a foreign
//!   link in the way) is rolled back: renamed files are put back from
//!   hard-linked backups, new files and directories removed, temp files
//!   deleted; the destination is again the last good commit.
//! - A deploy cut off by a crash is detected on the next start through the
//!   journal: leftovers are cleaned and the next deploy rehashes everything.
//! - Secret files (decrypted or substituted, see [`crate::secrets`]) get
//!   `GITRELOAD_SECRET_FILE_MODE` instead of `GITRELOAD_FILE_MODE`.
//! - Only this stage creates the destination directory. It never talks to
//!   the network and never runs the checker.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::confined::{self, Dir, Kind, Meta};
use crate::git::CommitId;
use crate::materialize::{ContentHasher, FileKind, Staged, Stamp};
use crate::settings::Owner;
use crate::state::{self, ContentKey, StateError};

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
    /// Keys the hashes of secret files ([`ContentHasher`]).
    pub content_key: ContentKey,
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
    /// An operation below the destination failed or met a link.
    #[error("{source}")]
    Confined {
        source: confined::Error,
        rolled_back: bool,
    },
    #[error(
        "{path} is a directory in the destination but a file in commit {commit}; remove it by hand"
    )]
    Conflict { path: PathBuf, commit: String },
    /// Something gitreload does not manage stands where commit `commit`
    /// needs a directory for `wanted`.
    #[error("{path} is {what} that gitreload did not put there, in the way of {wanted} in commit {commit}; remove it by hand")]
    InTheWay {
        path: PathBuf,
        what: &'static str,
        wanted: String,
        commit: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

impl DeployError {
    fn rolled_back(self, done: bool) -> DeployError {
        match self {
            DeployError::Io {
                op, path, source, ..
            } => DeployError::Io {
                op,
                path,
                source,
                rolled_back: done,
            },
            DeployError::Confined { source, .. } => DeployError::Confined {
                source,
                rolled_back: done,
            },
            other => other,
        }
    }
}

impl From<confined::Error> for DeployError {
    fn from(source: confined::Error) -> DeployError {
        DeployError::Confined {
            source,
            rolled_back: true,
        }
    }
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

/// One applied change, kept to undo it. Paths are relative to the
/// destination.
enum Undo {
    /// `path` was replaced; the old entry is hard-linked at `backup`.
    Replaced { path: PathBuf, backup: PathBuf },
    /// `path` did not exist before.
    Created { path: PathBuf },
    /// The directory `path` did not exist before.
    CreatedDir { path: PathBuf },
    /// A managed entry was moved aside to make room (a directory that
    /// became a file, a file or link that became a directory).
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
    // The one place the destination is created (like `mkdir -p`).
    let root = Dir::create_root(dest, 0o777)?;
    let source = Dir::open_root(&staged.dir)?;
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
    let seen = compare_all(&root, &wanted, verify, options)
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
    // Only what is reachable without a link is ours to delete.
    let to_delete: Vec<&str> = managed
        .iter()
        .copied()
        .filter(|p| !staged.files.contains_key(*p))
        .filter(|p| matches!(root.stat(Path::new(p)), Ok(m) if m.kind != Kind::Dir))
        .collect();
    // The directories managed paths lived in: a link found at one of them
    // was put there in place of our directory.
    let managed_dirs: BTreeSet<&str> = managed.iter().flat_map(|p| ancestors(p)).collect();

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
        let plan = Plan {
            staged,
            source: &source,
            root: &root,
            to_delete: &to_delete,
            managed_dirs: &managed_dirs,
            options,
        };
        let mut done = Applied::default();
        let applied = plan.apply(&to_write, &mut done);
        let Applied {
            undo,
            mut dirs,
            moved_aside,
        } = done;
        if let Err(err) = applied {
            let rolled_back = rollback(undo, &root);
            if rolled_back {
                state::remove(&records.journal)?;
            }
            return Err(err.rolled_back(rolled_back));
        }
        // Deletes come last: if a write fails, nothing was lost yet.
        report.deleted.extend(moved_aside.iter().cloned());
        for path in to_delete
            .iter()
            .filter(|p| !moved_aside.iter().any(|m| m == *p))
        {
            match root.remove_file(Path::new(path)) {
                Ok(()) => report.deleted.push(path.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete file no longer in the commit")
                }
            }
            remove_empty_parents(&root, path, &staged.files);
            dirs.insert(parent_of(path).to_string());
        }
        for item in undo {
            if let Undo::Replaced { backup, .. } | Undo::MovedAside { backup, .. } = item {
                if let Err(e) = root.remove_tree(&backup) {
                    tracing::warn!(error = %e, "cannot remove a backup of the last deploy");
                }
            }
        }
        for dir in &dirs {
            match root.open_dir(Path::new(dir)) {
                Ok(handle) => handle
                    .sync()
                    .map_err(|e| DeployError::from(e).rolled_back(false))?,
                // Removed because it became empty.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(DeployError::from(e).rolled_back(false)),
            }
        }
        report.written = to_write.iter().map(|p| p.to_string()).collect();
    }

    let files: BTreeMap<String, Managed> = wanted
        .iter()
        .zip(seen)
        .map(|((path, kind, _), stamp)| {
            let stamp = stamp.or_else(|| root.stat(Path::new(path)).ok().map(|m| stamp_of(&m)));
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

/// The directory part of a `/`-separated relative path (`""` at the top).
fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// Every directory above a relative path: `a/b/c` gives `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

fn stamp_of(meta: &Meta) -> Stamp {
    Stamp {
        ino: meta.ino,
        size: meta.size,
        mtime_ns: meta.mtime_ns,
        ctime_ns: meta.ctime_ns,
    }
}

/// Directory handles for the comparison pass, opened once for the files
/// they hold (the paths come sorted, so a few handles cover a subtree).
struct Parents<'a> {
    root: &'a Dir,
    /// Recently used directories; `None`: not reachable without a link
    /// (or missing), so everything in it must be written.
    recent: Vec<(&'a str, Option<Dir>)>,
}

impl<'a> Parents<'a> {
    const KEPT: usize = 8;

    fn get(&mut self, parent: &'a str) -> Result<Option<&Dir>, DeployError> {
        if parent.is_empty() {
            return Ok(Some(self.root));
        }
        let at = match self.recent.iter().position(|(p, _)| *p == parent) {
            Some(at) => at,
            None => {
                let handle = match self.root.open_dir(Path::new(parent)) {
                    Ok(d) => Some(d),
                    Err(e) if e.is_not_found() || e.link().is_some() => None,
                    Err(e) => return Err(e.into()),
                };
                if self.recent.len() == Self::KEPT {
                    self.recent.remove(0);
                }
                self.recent.push((parent, handle));
                self.recent.len() - 1
            }
        };
        Ok(self.recent[at].1.as_ref())
    }
}

/// The stamp of the destination entry `name` in `dir` when it already is
/// `kind`; `None` when it must be written.
fn matches(
    dir: &Dir,
    name: &Path,
    kind: &FileKind,
    known: Option<&Managed>,
    verify: Verify,
    options: Options,
) -> Result<Option<Stamp>, DeployError> {
    let Some(meta) = dir.stat_if_any(name)? else {
        return Ok(None);
    };
    let stamp = stamp_of(&meta);
    let equal = match kind {
        FileKind::Symlink { target } => {
            meta.kind == Kind::Symlink
                && dir
                    .read_link(name)
                    .is_ok_and(|t| t.as_os_str() == target.as_str())
        }
        FileKind::File {
            sha256,
            executable,
            secret,
        } => {
            meta.kind == Kind::File
                && meta.mode == options.mode_of(*executable, *secret)
                && (matches!((verify, known), (Verify::Stamp, Some(k)) if k.kind == *kind && k.stamp == Some(stamp))
                    || hash_entry(dir, name, *secret, &options.content_key)
                        .is_ok_and(|h| h == *sha256))
        }
    };
    Ok(equal.then_some(stamp))
}

/// [`matches`] for every entry, in order, spread over the available cores:
/// the pass is one `lstat` (or a hash) per managed file.
fn compare_all(
    root: &Dir,
    wanted: &[(&str, &FileKind, Option<&Managed>)],
    verify: Verify,
    options: Options,
) -> Vec<Result<Option<Stamp>, DeployError>> {
    const PER_THREAD: usize = 1024;
    let compare = |part: &[(&str, &FileKind, Option<&Managed>)]| {
        let mut parents = Parents {
            root,
            recent: Vec::new(),
        };
        part.iter()
            .map(|&(path, kind, known)| {
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
                match parents.get(parent)? {
                    Some(dir) => matches(dir, Path::new(name), kind, known, verify, options),
                    None => Ok(None),
                }
            })
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

/// SHA-256 of the regular file `name` in `dir` (never through a link), hex.
/// Hashed as the manifest holds it ([`ContentHasher`]: keyed for secrets).
fn hash_entry(dir: &Dir, name: &Path, secret: bool, key: &ContentKey) -> std::io::Result<String> {
    let mut file = dir.open_file(name)?;
    let mut hasher = ContentHasher::new(secret, key);
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finish())
}

/// The name of gitreload's temp (`role` = `tmp`) or backup (`old`) entry
/// for `path`, in the same directory.
fn temp_name(path: &str, role: &str) -> PathBuf {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    Path::new(parent).join(leaf_name(Path::new(name), role))
}

/// [`temp_name`] without the directory.
fn leaf_name(name: &Path, role: &str) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let digest = hex::encode(&Sha256::digest(name.as_os_str().as_bytes())[..8]);
    PathBuf::from(format!("{LEFTOVER_PREFIX}{role}-{digest}"))
}

/// What [`Plan::apply`] did, to finish or undo it.
#[derive(Default)]
struct Applied {
    undo: Vec<Undo>,
    /// Directories whose entries changed (to fsync), relative.
    dirs: BTreeSet<String>,
    /// Managed paths removed by moving them (or a directory holding them)
    /// aside.
    moved_aside: Vec<String>,
}

/// One deploy's writes: what to write where, and what may be removed.
struct Plan<'a> {
    staged: &'a Staged,
    /// The staging directory, read without following links.
    source: &'a Dir,
    root: &'a Dir,
    /// Managed paths leaving with this commit, sorted.
    to_delete: &'a [&'a str],
    managed_dirs: &'a BTreeSet<&'a str>,
    options: Options,
}

impl Plan<'_> {
    fn apply(&self, to_write: &[&str], done: &mut Applied) -> Result<(), DeployError> {
        // The handles of the directory being written to and of its staged
        // twin, kept while consecutive paths share them (they come sorted):
        // each entry is then acted on by name, one syscall per step.
        let mut here: Option<(&str, Dir)> = None;
        let mut staged_here: Option<(&str, Dir)> = None;
        for path in to_write {
            let rel = Path::new(path);
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let name = Path::new(name);
            if here.as_ref().is_none_or(|(p, _)| *p != parent) {
                self.make_dirs(path, parent, done)?;
                here = Some((parent, self.root.open_dir(Path::new(parent))?));
            }
            let Some((_, dir)) = &here else {
                unreachable!("opened above")
            };
            let aside = |leaf: PathBuf| Path::new(parent).join(leaf);
            let mut existing = dir.stat_if_any(name)?;
            if existing.is_some_and(|m| m.kind == Kind::Dir) {
                // A directory of the last commit that became a file: it may go
                // if everything in it is gitreload's and leaves with this
                // commit. It is moved aside, so a failure can put it back.
                let Some(leaving) = managed_below(self.root, path, self.to_delete) else {
                    return Err(DeployError::Conflict {
                        path: self.root.root().join(rel),
                        commit: self.staged.commit.to_string(),
                    });
                };
                let backup = leaf_name(name, "old");
                dir.remove_tree(&backup)?;
                dir.rename(name, &backup)?;
                done.undo.push(Undo::MovedAside {
                    path: rel.to_path_buf(),
                    backup: aside(backup),
                });
                done.moved_aside.extend(leaving);
                existing = None;
            }
            let tmp = leaf_name(name, "tmp");
            let _ = dir.remove_file(&tmp);
            if let Err(e) = self.write_temp(path, dir, &tmp, &mut staged_here) {
                let _ = dir.remove_file(&tmp);
                return Err(e);
            }
            if existing.is_some() {
                // The entry itself (a link is linked, not followed).
                let backup = leaf_name(name, "old");
                let _ = dir.remove_tree(&backup);
                if let Err(e) = dir.hard_link(name, &backup) {
                    let _ = dir.remove_file(&tmp);
                    return Err(e.into());
                }
                done.undo.push(Undo::Replaced {
                    path: rel.to_path_buf(),
                    backup: aside(backup),
                });
            } else {
                done.undo.push(Undo::Created {
                    path: rel.to_path_buf(),
                });
            }
            if let Err(e) = dir.rename(&tmp, name) {
                let _ = dir.remove_file(&tmp);
                // The undo entry above refers to a rename that did not happen.
                if let Some(Undo::Replaced { backup, .. }) = done.undo.pop() {
                    let _ = self.root.remove_file(&backup);
                }
                return Err(e.into());
            }
            done.dirs.insert(parent.to_string());
        }
        Ok(())
    }

    /// Creates the directories of `dir` (on the way to `wanted`), one
    /// component at a time from the destination's handle. In the way of one:
    /// a managed file or link leaving with this commit is moved aside; a
    /// link where a managed directory was is removed; anything else stops
    /// the deploy.
    fn make_dirs(&self, wanted: &str, dir: &str, done: &mut Applied) -> Result<(), DeployError> {
        if dir.is_empty() || matches!(self.root.stat(Path::new(dir)), Ok(m) if m.kind == Kind::Dir)
        {
            return Ok(());
        }
        let mut end = 0;
        for name in dir.split('/') {
            end += name.len() + usize::from(end > 0);
            let current = &dir[..end];
            let rel = Path::new(current);
            match self.root.stat_if_any(rel)? {
                Some(Meta {
                    kind: Kind::Dir, ..
                }) => continue,
                None => {}
                Some(found) => {
                    if self.to_delete.binary_search(&current).is_ok() {
                        // Ours, leaving with this commit: moved aside, so a
                        // failure can put it back.
                        let backup = temp_name(current, "old");
                        self.root.remove_tree(&backup)?;
                        self.root.rename(rel, &backup)?;
                        done.undo.push(Undo::MovedAside {
                            path: rel.to_path_buf(),
                            backup,
                        });
                        done.moved_aside.push(current.to_string());
                    } else if found.kind == Kind::Symlink && self.managed_dirs.contains(current) {
                        tracing::warn!(
                            path = %self.root.root().join(rel).display(),
                            "a symbolic link replaced a managed directory; it is removed and the directory put back"
                        );
                        self.root.remove_file(rel)?;
                    } else {
                        return Err(DeployError::InTheWay {
                            path: self.root.root().join(rel),
                            what: if found.kind == Kind::Symlink {
                                "a symbolic link"
                            } else {
                                "a file"
                            },
                            wanted: wanted.to_string(),
                            commit: self.staged.commit.to_string(),
                        });
                    }
                }
            }
            if self.root.create_dir(rel, self.options.dir_mode())? {
                done.undo.push(Undo::CreatedDir {
                    path: rel.to_path_buf(),
                });
            }
            if let Some(Owner { uid, gid }) = self.options.owner {
                self.root.set_owner(rel, uid, gid)?;
            }
        }
        Ok(())
    }

    /// Writes the staged `path` to the temp entry `tmp`: a link, or a file
    /// copied, hashed, given its mode and owner, and fsynced.
    /// `dir` is the destination directory of `path`, `tmp` a name in it;
    /// `staged_here` keeps the staged twin's handle between calls.
    fn write_temp<'p>(
        &self,
        path: &'p str,
        dir: &Dir,
        tmp: &Path,
        staged_here: &mut Option<(&'p str, Dir)>,
    ) -> Result<(), DeployError> {
        let options = self.options;
        match &self.staged.files[path] {
            FileKind::Symlink { target } => dir.symlink(Path::new(target), tmp)?,
            FileKind::File {
                sha256,
                executable,
                secret,
            } => {
                let mode = options.mode_of(*executable, *secret);
                let full = self.root.root().join(path);
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
                if staged_here.as_ref().is_none_or(|(p, _)| *p != parent) {
                    *staged_here = Some((parent, self.source.open_dir(Path::new(parent))?));
                }
                let Some((_, source)) = staged_here.as_ref() else {
                    unreachable!("opened above")
                };
                let mut input = Hashing {
                    inner: source.open_file(Path::new(name))?,
                    hasher: ContentHasher::new(*secret, &options.content_key),
                };
                let mut output = dir.create_new_file(tmp, mode)?;
                std::io::copy(&mut input, &mut output).map_err(io("writing", &full, true))?;
                // The bytes deployed are the bytes the manifest names, even if
                // something (a checker) changed the staged copy.
                if input.hasher.finish() != *sha256 {
                    return Err(io("writing", &full, true)(std::io::Error::other(format!(
                        "its staged copy {} changed after it was staged (did the checker write to it?)",
                        self.source.root().join(path).display()
                    ))));
                }
                // The umask may have narrowed the mode given at creation.
                confined::set_mode(&output, mode).map_err(io("setting mode of", &full, true))?;
                if let Some(Owner { uid, gid }) = options.owner {
                    confined::set_owner(&output, uid, gid).map_err(io(
                        "setting owner of",
                        &full,
                        true,
                    ))?;
                }
                output
                    .flush()
                    .and_then(|()| output.sync_all())
                    .map_err(io("writing", &full, true))?;
            }
        }
        Ok(())
    }
}

/// The managed paths below the directory `rel` when every entry in it is
/// one of `to_delete`; `None` when it holds anything else (a file
/// gitreload does not manage, a link to a directory included).
fn managed_below(root: &Dir, rel: &str, to_delete: &[&str]) -> Option<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![rel.to_string()];
    while let Some(dir) = stack.pop() {
        let handle = root.open_dir(Path::new(&dir)).ok()?;
        for (name, kind) in handle.entries().ok()? {
            let name = name.into_string().ok()?;
            let path = format!("{dir}/{name}");
            if kind == Kind::Dir {
                stack.push(path);
            } else if to_delete.binary_search(&path.as_str()).is_ok() {
                found.push(path);
            } else {
                return None;
            }
        }
    }
    Some(found)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: ContentHasher,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Undoes applied changes, newest first. Returns false when something could
/// not be restored (the journal then stays, and the next start rehashes).
fn rollback(undo: Vec<Undo>, root: &Dir) -> bool {
    let mut complete = true;
    for item in undo.into_iter().rev() {
        let result = match &item {
            Undo::Replaced { path, backup } | Undo::MovedAside { path, backup } => {
                root.rename(backup, path)
            }
            Undo::Created { path } => root.remove_file(path),
            Undo::CreatedDir { path } => {
                // Left in place when someone put something in it meanwhile.
                if let Err(e) = root.remove_dir(path) {
                    tracing::debug!(error = %e, "directory of the failed deploy kept");
                }
                continue;
            }
        };
        if let Err(e) = result {
            complete = false;
            tracing::error!(error = %e, "rollback step failed");
        }
    }
    complete
}

/// Removes the directories above the removed `path` that became empty and
/// hold nothing of the commit.
fn remove_empty_parents(root: &Dir, removed: &str, keep: &BTreeMap<String, FileKind>) {
    let mut dir = parent_of(removed);
    while !dir.is_empty() {
        let prefix = format!("{dir}/");
        let kept = keep
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix));
        // Fails (and stops) when the directory holds anything else.
        if kept || root.remove_dir(Path::new(dir)).is_err() {
            break;
        }
        dir = parent_of(dir);
    }
}

/// Removes temp files and backups (files, or directories moved aside) a
/// crashed deploy left in `dest`. Returns how many were removed. Links are
/// never followed: the walk goes from directory handles.
pub fn remove_leftovers(dest: &Path) -> usize {
    let Ok(root) = Dir::open_root(dest) else {
        return 0;
    };
    let mut removed = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(dir) = root.open_dir(&rel) else {
            continue;
        };
        let Ok(entries) = dir.entries() else {
            continue;
        };
        for (name, kind) in entries {
            if name.to_string_lossy().starts_with(LEFTOVER_PREFIX) {
                // A directory is one moved aside to make room for a file.
                if dir.remove_tree(Path::new(&name)).is_ok() {
                    removed += 1;
                }
            } else if kind == Kind::Dir {
                stack.push(rel.join(&name));
            }
        }
    }
    removed
}

/// Managed paths whose destination entry no longer matches the manifest
/// (a path reached only through a link has drifted). With
/// [`Verify::Stamp`] a file whose stat stamp is unchanged is trusted.
pub fn drifted(dest: &Path, manifest: &Manifest, verify: Verify, options: Options) -> Vec<String> {
    let wanted: Vec<(&str, &FileKind, Option<&Managed>)> = manifest
        .files
        .iter()
        .map(|(path, managed)| (path.as_str(), &managed.kind, Some(managed)))
        .collect();
    let Ok(root) = Dir::open_root(dest) else {
        return manifest.files.keys().cloned().collect();
    };
    let seen = compare_all(&root, &wanted, verify, options);
    wanted
        .iter()
        .zip(seen)
        .filter(|(_, seen)| !matches!(seen, Ok(Some(_))))
        .map(|((path, _, _), _)| path.to_string())
        .collect()
}
