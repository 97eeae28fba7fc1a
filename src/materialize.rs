//! Materialize: write a tree (the tree of one commit, or a working tree for
//! `gitreload validate`) into a staging directory, applying the path rules
//! and the secrets, and describe every file by its content hash.
//!
//! Promises:
//! - One [`Stager`] applies every rule, whatever the tree comes from: a
//!   commit in the mirror ([`materialize`]) or a directory on disk
//!   ([`materialize_dir`]). The rules are never written twice.
//! - The staging directory holds exactly what may be deployed: nothing whose
//!   name starts with `.` (at any depth), no submodule, no symlink that
//!   leaves the deployed tree, no name the destination filesystem cannot
//!   hold. `.age` files are decrypted and staged without the suffix; files
//!   matching `GITRELOAD_EXPAND` have their references substituted
//!   ([`crate::secrets`]). The checker therefore sees the real config.
//! - The sidecar keeps its staging directory between syncs ([`Staging`]):
//!   a file whose blob and mode are those already staged is not read,
//!   inflated, hashed or written again, so a one-file change costs one file
//!   whatever the size of the repository. What the tree no longer has is
//!   removed. Secret files are never reused: they are resolved anew each
//!   time (their inputs live outside git) and removed after each sync. After
//!   a checker ran, every kept entry is compared with its stat stamp and
//!   anything changed or added is put right before it is trusted.
//! - Every write, rename, chmod and delete below the staging root goes
//!   through [`crate::confined`] directory handles, never path strings: a
//!   link in the staging directory (one staged from an earlier commit, or
//!   one a checker made) can never redirect a write out of it.
//! - A tree that breaks a rule is rejected as a whole, with the path at
//!   fault named; there is no partial staging. After any failure the
//!   staging directory is removed, so no plaintext stays behind and the
//!   next sync starts afresh.
//! - Limits (`max_files`, `max_file_size`) are enforced while reading, so a
//!   hostile commit cannot exhaust memory or disk.
//! - The returned [`Staged`] lists each file with its content hash (of the
//!   final, decrypted and substituted content: SHA-256, or for a secret file
//!   HMAC-SHA256 under the state directory's [`ContentKey`], see
//!   [`ContentHasher`]), exec bit, secret flag or link target: the deploy
//!   stage compares by these, never by mtime.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::confined::{self, Dir, Kind};
use crate::git::{Blob, BlobId, CommitId, Content, Entry, GitError, Mirror};
use crate::secrets::{self, Findings, Redactions, Secrets};
use crate::state::ContentKey;

/// The longest file name most Linux filesystems accept.
const NAME_MAX: usize = 255;

/// How one deployable path looks: what deploy compares and recreates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file; `executable` keeps git's 100755 mode; `secret` marks
    /// a decrypted or substituted file (deployed with
    /// `GITRELOAD_SECRET_FILE_MODE`). `sha256` is the content's hash as
    /// [`ContentHasher`] makes it: for a secret file, keyed.
    File {
        sha256: String,
        executable: bool,
        #[serde(default)]
        secret: bool,
    },
    /// A symbolic link whose target stays inside the tree.
    Symlink { target: String },
}

/// A file as seen by `lstat`: equal stamps mean the file was not replaced
/// or written since (an unchanged file is recognised without reading it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl From<&confined::Meta> for Stamp {
    fn from(meta: &confined::Meta) -> Stamp {
        Stamp {
            ino: meta.ino,
            size: meta.size,
            mtime_ns: meta.mtime_ns,
            ctime_ns: meta.ctime_ns,
        }
    }
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        }
    }
}

/// A commit written out to a staging directory.
#[derive(Debug)]
pub struct Staged {
    pub commit: CommitId,
    /// The repository directory it was taken from (`""` = root).
    pub subdir: String,
    /// The staging directory (the checker's working directory).
    pub dir: PathBuf,
    /// Every deployable path, relative, `/`-separated.
    pub files: BTreeMap<String, FileKind>,
    /// Substituted values, to mask in the checker's output.
    pub redactions: Redactions,
}

/// A working tree written out to a staging directory (`gitreload validate`).
#[derive(Debug)]
pub struct Checkout {
    /// The staging directory (the checker's working directory).
    pub dir: PathBuf,
    /// Every deployable path, relative, `/`-separated.
    pub files: BTreeMap<String, FileKind>,
    /// Substituted values, to mask in the checker's output.
    pub redactions: Redactions,
    /// Things the user should know: placeholders used, submodules skipped,
    /// `GITRELOAD_EXPAND` patterns that matched nothing.
    pub warnings: Vec<String>,
}

/// Why a tree cannot be materialized.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error(transparent)]
    Git(#[from] GitError),
    /// The tree itself breaks a rule: a commit is rejected until upstream
    /// moves.
    #[error("{path}: {reason}")]
    Rejected { path: String, reason: String },
    /// A file's secrets cannot be resolved (an absent variable or file, an
    /// identity that does not decrypt it, a bad reference): rejected like
    /// [`MaterializeError::Rejected`], but the inputs live outside git, so
    /// a new process (started with new secrets) tries the commit again.
    #[error("{path}: {reason}")]
    Unresolved { path: String, reason: String },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The hash that names a file's content in [`FileKind::File`]: SHA-256, or
/// for a secret file HMAC-SHA256 under the state directory's key. The
/// manifest is readable by whoever reads the state dir (backups, support
/// bundles); a plain SHA-256 of a short password file would let them test
/// guesses offline. The keyed hash keeps deploy's comparison exact (same
/// key, same content, same hash), so secret files are still compared, not
/// rewritten every time.
pub enum ContentHasher {
    Plain(Sha256),
    Keyed(hmac::Hmac<Sha256>),
}

impl ContentHasher {
    pub fn new(secret: bool, key: &ContentKey) -> ContentHasher {
        use hmac::Mac;
        if secret {
            ContentHasher::Keyed(
                hmac::Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key"),
            )
        } else {
            ContentHasher::Plain(Sha256::new())
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        use hmac::Mac;
        match self {
            ContentHasher::Plain(h) => Digest::update(h, data),
            ContentHasher::Keyed(h) => h.update(data),
        }
    }

    /// The hash, hex.
    pub fn finish(self) -> String {
        use hmac::Mac;
        match self {
            ContentHasher::Plain(h) => hex::encode(h.finalize()),
            ContentHasher::Keyed(h) => hex::encode(h.finalize().into_bytes()),
        }
    }

    /// The hash of `data`.
    pub fn of(data: &[u8], secret: bool, key: &ContentKey) -> String {
        let mut hasher = ContentHasher::new(secret, key);
        hasher.update(data);
        hasher.finish()
    }
}

impl std::io::Write for ContentHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Limits applied while reading a tree.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files: usize,
    pub max_file_size: u64,
}

/// Everything that decides what a tree becomes in staging.
#[derive(Debug, Clone)]
pub struct Rules {
    pub limits: Limits,
    pub secrets: Secrets,
    /// Keys the hashes of secret files ([`ContentHasher`]).
    pub content_key: ContentKey,
}

impl Rules {
    /// The rules the settings ask for; `mode` says whether absent secrets
    /// reject (deploy) or become placeholders (validate); `content_key` is
    /// the state directory's (or a random one where nothing is kept).
    pub fn from_settings(
        settings: &crate::settings::StagingSettings,
        mode: secrets::Mode,
        content_key: ContentKey,
    ) -> Rules {
        Rules {
            content_key,
            limits: Limits {
                max_files: settings.max_files,
                max_file_size: settings.max_file_size,
            },
            secrets: Secrets {
                identities: settings.age_identity.clone(),
                expand: settings.expand.clone(),
                mode,
                max_file_size: settings.max_file_size,
                sources: settings.sources.clone(),
            },
        }
    }
}

/// The staging directory the sidecar keeps between syncs, and a record of
/// what it holds, so that the next commit only writes what differs.
///
/// Dropping it removes the directory.
#[derive(Debug)]
pub struct Staging {
    /// The staging root (`STATE_DIR/staging`): handles start from it.
    root: PathBuf,
    /// The tree itself (`root/tree`, the checker's working directory).
    dir: PathBuf,
    /// Every file and link in `dir`, by deployed path.
    held: BTreeMap<String, Held>,
    /// Every directory in `dir`, relative.
    dirs: BTreeSet<String>,
    /// A checker ran in `dir` since it was written: compare before reuse.
    touched: bool,
}

/// One staged file or link, as written.
#[derive(Debug, Clone)]
struct Held {
    /// The blob it was written from; `None` for what is never reused
    /// (secrets, links, working tree files).
    blob: Option<BlobId>,
    kind: FileKind,
    stamp: Stamp,
}

impl Staging {
    /// Staging at `root/tree`. Nothing is touched until the first
    /// [`materialize`]; whatever is there then is replaced.
    pub fn new(root: &Path) -> Staging {
        Staging {
            root: root.to_path_buf(),
            dir: root.join(TREE),
            held: BTreeMap::new(),
            dirs: BTreeSet::new(),
            // Unknown content: compare (and clear) before the first reuse.
            touched: true,
        }
    }

    /// A checker ran in the directory: its content is verified before the
    /// next materialize trusts it.
    pub fn checked(&mut self) {
        self.touched = true;
    }

    /// The tree's handle, opened from the staging root without following
    /// any link; `None` when there is no tree.
    fn open_tree(&self) -> confined::Result<Option<Dir>> {
        let root = match Dir::open_root(&self.root) {
            Ok(root) => root,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        match root.open_dir(Path::new(TREE)) {
            Ok(tree) => Ok(Some(tree)),
            Err(e) if e.is_not_found() => Ok(None),
            // A link or a file in its place: it holds nothing of ours.
            Err(_) if root.stat(Path::new(TREE))?.kind != Kind::Dir => {
                root.remove_file(Path::new(TREE))?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The tree's handle, created (0700) if needed. Anything else in its
    /// place (a link, a file) is removed, never followed.
    fn create_tree(&self) -> confined::Result<Dir> {
        let root = Dir::create_root(&self.root, 0o700)?;
        make_dir(&root, Path::new(TREE))?;
        root.open_dir(Path::new(TREE))
    }

    /// Removes the decrypted and substituted files, which must not outlive
    /// the sync that needed them.
    pub fn discard_secrets(&mut self) {
        let secret: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| matches!(h.kind, FileKind::File { secret: true, .. }))
            .map(|(path, _)| path.clone())
            .collect();
        if secret.is_empty() {
            return;
        }
        let removed = self.open_tree().and_then(|tree| {
            for path in &secret {
                if let Some(tree) = &tree {
                    tree.remove_tree(Path::new(path))?;
                }
                self.held.remove(path);
            }
            Ok(())
        });
        if let Err(e) = removed {
            tracing::warn!(error = %e, "cannot remove a staged secret; removing the staging directory");
            self.reset();
        }
    }

    /// Removes the directory and forgets what it held: the next
    /// materialize writes everything.
    pub fn reset(&mut self) {
        self.held.clear();
        self.dirs.clear();
        self.touched = true;
        if let Err(e) = self.remove_tree() {
            tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove the staging directory");
        }
    }

    fn remove_tree(&self) -> confined::Result<()> {
        match Dir::open_root(&self.root) {
            Ok(root) => root.remove_tree(Path::new(TREE)),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes the record true again after a checker ran: every entry on disk
    /// that is not recorded, or whose stamp changed, is removed (and
    /// rewritten by the walk that follows). Walked by handle: a link the
    /// checker made is seen and removed, never followed.
    fn verify(&mut self, tree: &Dir) -> confined::Result<()> {
        let mut seen_files = BTreeSet::new();
        let mut seen_dirs = BTreeSet::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = tree.open_dir(Path::new(&rel))?;
            for (name, kind) in dir.entries()? {
                let Some(name) = name.to_str() else {
                    dir.remove_tree(Path::new(&name))?;
                    continue;
                };
                let path = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                if kind == Kind::Dir {
                    if self.dirs.contains(&path) {
                        seen_dirs.insert(path.clone());
                        stack.push(path);
                    } else {
                        dir.remove_tree(Path::new(name))?;
                    }
                    continue;
                }
                let meta = dir.stat(Path::new(name))?;
                if meta.kind != Kind::Dir
                    && self
                        .held
                        .get(&path)
                        .is_some_and(|h| h.stamp == Stamp::from(&meta))
                {
                    seen_files.insert(path);
                } else {
                    dir.remove_tree(Path::new(name))?;
                }
            }
        }
        self.held.retain(|path, _| seen_files.contains(path));
        self.dirs = seen_dirs;
        self.touched = false;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = self.remove_tree();
    }
}

/// The name of the tree below the staging root.
const TREE: &str = "tree";

/// Removes the staging root `root` (what a crashed process left, perhaps
/// with decrypted secrets) from its parent's handle, never following a
/// link in it.
pub fn remove_staging(root: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (root.parent(), root.file_name()) else {
        return Ok(());
    };
    match Dir::open_root(parent) {
        Ok(dir) => Ok(dir.remove_tree(Path::new(name))?),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes `staging` hold `commit` (below `subdir`), writing only what
/// differs from what it held. On any error the staging directory is
/// removed.
pub fn materialize(
    mirror: &Mirror,
    commit: &CommitId,
    subdir: &str,
    staging: &mut Staging,
    rules: &Rules,
) -> Result<Staged, MaterializeError> {
    let result = stage_commit(mirror, commit, subdir, staging, rules);
    if result.is_err() {
        staging.reset();
    }
    result
}

fn stage_commit(
    mirror: &Mirror,
    commit: &CommitId,
    subdir: &str,
    staging: &mut Staging,
    rules: &Rules,
) -> Result<Staged, MaterializeError> {
    let dir = staging.dir.clone();
    if staging.touched {
        match staging.open_tree().map_err(confined_io)? {
            Some(tree) => staging.verify(&tree).map_err(confined_io)?,
            None => {
                staging.held.clear();
                staging.dirs.clear();
                staging.touched = false;
            }
        }
    }
    let tree = staging.create_tree().map_err(confined_io)?;
    let mut stager = Stager::new(&tree, rules, &staging.held);
    mirror
        .walk_tree(commit, subdir, rules.limits.max_file_size, &mut |entry| {
            stager.visit(entry)
        })
        .map_err(MaterializeError::from)
        .and_then(|visited| visited)?;
    let Stager {
        files,
        held,
        dirs,
        findings,
        notices,
        written,
        ..
    } = stager;
    check_links(&files, &dirs).map_err(|(path, reason)| reject(&path, reason))?;
    // What the new tree no longer has. A path that changed between file
    // and directory was already replaced by the walk.
    for path in staging.held.keys() {
        if !held.contains_key(path) && !dirs.contains(path) {
            tree.remove_tree(Path::new(path)).map_err(confined_io)?;
        }
    }
    for path in staging.dirs.iter().rev() {
        if !dirs.contains(path) && !held.contains_key(path) {
            tree.remove_tree(Path::new(path)).map_err(confined_io)?;
        }
    }
    staging.held = held;
    staging.dirs = dirs;
    for notice in notices {
        tracing::warn!(commit = %commit.short(), "{notice}");
    }
    tracing::debug!(
        commit = %commit.short(),
        files = files.len() as u64,
        written = written as u64,
        "commit staged"
    );
    Ok(Staged {
        commit: commit.clone(),
        subdir: subdir.to_string(),
        dir,
        files,
        redactions: findings.redactions,
    })
}

/// Writes the working tree at `source` into `staging` (created here, 0700;
/// its parent must exist), with the same rules as a commit. The files are
/// taken as they are on disk: untracked files count, `.git` and every other
/// dot-name is skipped, a directory holding `.git` is a submodule, a file
/// with any owner exec bit is executable, symlinks are not followed.
pub fn materialize_dir(
    source: &Path,
    staging: &Path,
    rules: &Rules,
) -> Result<Checkout, MaterializeError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(io(staging))?;
    let tree = Dir::open_root(staging).map_err(confined_io)?;
    let nothing_held = BTreeMap::new();
    let mut stager = Stager::new(&tree, rules, &nothing_held);
    let mut rel = Vec::new();
    let walked = walk_dir(source, &mut rel, rules.limits.max_file_size, &mut |entry| {
        stager.visit(entry)
    });
    let walked = walked.and_then(|()| {
        check_links(&stager.files, &stager.dirs).map_err(|(path, reason)| reject(&path, reason))
    });
    if let Err(e) = walked {
        drop(stager);
        let _ = remove_staging(staging);
        return Err(e);
    }
    let Stager {
        files,
        findings,
        notices: mut warnings,
        ..
    } = stager;
    warnings.extend(findings.placeholders);
    for (pattern, used) in rules.secrets.expand.iter().zip(&findings.patterns_used) {
        if !used {
            warnings.push(format!(
                "GITRELOAD_EXPAND pattern {:?} matches no file",
                pattern.as_str()
            ));
        }
    }
    Ok(Checkout {
        dir: staging.to_path_buf(),
        files,
        redactions: findings.redactions,
        warnings,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaterializeError {
    let path = path.to_path_buf();
    move |source| MaterializeError::Io { path, source }
}

fn confined_io(e: confined::Error) -> MaterializeError {
    MaterializeError::Io {
        path: e.full_path(),
        source: e.into(),
    }
}

/// An error writing `rel` into staging: a rejection when the filesystem
/// refuses the name or the entry for good (the same commit would fail the
/// same way at every retry, and on the destination), an I/O error
/// otherwise (a full disk, permissions: worth a retry).
fn written(rel: &str) -> impl FnOnce(confined::Error) -> MaterializeError {
    let rel = rel.to_string();
    move |e| {
        let permanent = match &e {
            confined::Error::Io { source, .. } => source.raw_os_error().filter(|code| {
                matches!(
                    *code,
                    libc::ENAMETOOLONG | libc::EILSEQ | libc::EINVAL | libc::EMLINK | libc::EFBIG
                )
            }),
            _ => None,
        };
        match permanent {
            Some(code) => MaterializeError::Rejected {
                path: rel,
                reason: format!(
                    "the filesystem refuses it: {}",
                    std::io::Error::from_raw_os_error(code)
                ),
            },
            None => confined_io(e),
        }
    }
}

fn reject(path: &str, reason: impl Into<String>) -> MaterializeError {
    MaterializeError::Rejected {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Applies the path rules, limits and secrets to the entries of one tree,
/// writing what may be deployed into the staging directory (unless the
/// directory already holds it).
struct Stager<'a> {
    /// The staging tree's handle: every write starts from it.
    dir: &'a Dir,
    rules: &'a Rules,
    /// What the directory held before this walk.
    previous: &'a BTreeMap<String, Held>,
    files: BTreeMap<String, FileKind>,
    /// What the directory holds after this walk.
    held: BTreeMap<String, Held>,
    dirs: BTreeSet<String>,
    written: usize,
    findings: Findings,
    /// Skipped submodules, to report.
    notices: Vec<String>,
}

impl<'a> Stager<'a> {
    fn new(dir: &'a Dir, rules: &'a Rules, previous: &'a BTreeMap<String, Held>) -> Stager<'a> {
        Stager {
            dir,
            rules,
            previous,
            files: BTreeMap::new(),
            held: BTreeMap::new(),
            dirs: BTreeSet::new(),
            written: 0,
            findings: Findings::default(),
            notices: Vec::new(),
        }
    }

    /// Handles one entry. For a directory, `Ok(true)` means descend.
    fn visit(&mut self, entry: Entry<'_>) -> Result<bool, MaterializeError> {
        let named =
            |path: &[u8]| checked_path(path).map_err(|r| reject(&String::from_utf8_lossy(path), r));
        match entry {
            Entry::Dir { path } => {
                let path = named(path)?;
                if is_hidden(&path) {
                    return Ok(false);
                }
                self.count(&path)?;
                self.ensure_free(&path, &path)?;
                make_dir(self.dir, Path::new(&path)).map_err(written(&path))?;
                self.dirs.insert(path);
                Ok(true)
            }
            Entry::Submodule { path } => {
                let path = String::from_utf8_lossy(path);
                if !is_hidden(&path) {
                    self.notices.push(format!("{path}: submodule skipped"));
                }
                Ok(false)
            }
            Entry::File {
                path,
                executable,
                blob,
            } => {
                let path = named(path)?;
                if is_hidden(&path) {
                    return Ok(false);
                }
                self.stage_file(path, executable, blob)?;
                Ok(false)
            }
            Entry::Symlink {
                path,
                target: mut blob,
            } => {
                let path = named(path)?;
                if is_hidden(&path) {
                    return Ok(false);
                }
                self.count(&path)?;
                let target = match blob.read()? {
                    Content::Data(data) => data,
                    Content::Oversized(size) => {
                        return Err(reject(
                            &path,
                            format!(
                                "symlink target is {size} bytes, over the limit of {} \
                                 (GITRELOAD_MAX_FILE_SIZE)",
                                self.rules.limits.max_file_size
                            ),
                        ))
                    }
                };
                let target = std::str::from_utf8(target)
                    .map_err(|_| reject(&path, "symlink target is not valid UTF-8"))?;
                check_link(&path, target).map_err(|r| reject(&path, r))?;
                self.ensure_free(&path, &path)?;
                let link = Path::new(&path);
                let stamp = replacing(self.dir, link, || {
                    self.dir.symlink(Path::new(target), link)?;
                    self.dir.stat(link).map(|meta| Stamp::from(&meta))
                })
                .map_err(written(&path))?;
                let kind = FileKind::Symlink {
                    target: target.to_string(),
                };
                self.keep(path, kind, None, stamp);
                self.written += 1;
                Ok(false)
            }
        }
    }

    fn stage_file(
        &mut self,
        path: String,
        executable: bool,
        mut blob: Blob<'_>,
    ) -> Result<(), MaterializeError> {
        self.count(&path)?;
        let (deployed, encrypted) = secrets::deployed_name(&path);
        let deployed = deployed.to_string();
        self.ensure_free(&path, &deployed)?;
        // A file holding secrets depends on more than its blob: resolve it
        // every time.
        let plain = !encrypted && !self.rules.secrets.expands(&deployed);
        let id = blob.id().filter(|_| plain);
        if let Some(held) = id.and_then(|id| {
            self.previous.get(&deployed).filter(|h| {
                h.blob == Some(id)
                    && matches!(h.kind, FileKind::File { executable: e, .. } if e == executable)
            })
        }) {
            self.files.insert(deployed.clone(), held.kind.clone());
            self.held.insert(deployed, held.clone());
            return Ok(());
        }
        let data = match blob.read()? {
            Content::Data(data) => data,
            Content::Oversized(size) => {
                return Err(reject(
                    &path,
                    format!(
                        "file is {size} bytes, over the limit of {} (GITRELOAD_MAX_FILE_SIZE)",
                        self.rules.limits.max_file_size
                    ),
                ))
            }
        };
        let resolved = self
            .rules
            .secrets
            .resolve(&path, data, &mut self.findings)
            .map_err(|reason| MaterializeError::Unresolved {
                path: path.clone(),
                reason,
            })?;
        let target = Path::new(&deployed);
        let stamp = replacing(self.dir, target, || {
            let mode = if executable { 0o700 } else { 0o600 };
            let mut file = self.dir.create_new_file(target, mode)?;
            let io = |source| confined::Error::Io {
                op: "writing",
                root: std::sync::Arc::from(self.dir.path().as_path()),
                path: target.to_path_buf(),
                source,
            };
            file.write_all(&resolved.data).map_err(io)?;
            file.metadata().map(|meta| Stamp::of(&meta)).map_err(io)
        })
        .map_err(written(&deployed))?;
        let kind = FileKind::File {
            sha256: ContentHasher::of(&resolved.data, resolved.secret, &self.rules.content_key),
            executable,
            secret: resolved.secret,
        };
        let blob = id.filter(|_| !resolved.secret);
        self.keep(deployed, kind, blob, stamp);
        self.written += 1;
        Ok(())
    }

    fn keep(&mut self, path: String, kind: FileKind, blob: Option<BlobId>, stamp: Stamp) {
        self.files.insert(path.clone(), kind.clone());
        self.held.insert(path, Held { blob, kind, stamp });
    }

    fn count(&self, path: &str) -> Result<(), MaterializeError> {
        count(self.files.len() + self.dirs.len(), self.rules.limits).map_err(|r| reject(path, r))
    }

    /// Rejects `path` when its deployed name is already taken in this tree:
    /// `x.yml` and `x.yml.age` (or a directory `x` and `x.age`).
    fn ensure_free(&self, path: &str, deployed: &str) -> Result<(), MaterializeError> {
        if !self.files.contains_key(deployed) && !self.dirs.contains(deployed) {
            return Ok(());
        }
        let plain = deployed;
        Err(reject(
            path,
            format!(
                "both {plain} and {plain}{} are in the tree, and the encrypted one is deployed \
                 as {plain}; keep only one",
                secrets::AGE_SUFFIX
            ),
        ))
    }
}

/// Creates `rel` below `tree` with `create`; when something from an
/// earlier tree is in the way (a file, a link, a directory), removes it
/// (a link itself, never what it points to) and creates again.
fn replacing<T>(
    tree: &Dir,
    rel: &Path,
    mut create: impl FnMut() -> confined::Result<T>,
) -> confined::Result<T> {
    match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tree.remove_tree(rel)?;
            create()
        }
        other => other,
    }
}

/// A staging directory at `rel` (0700), replacing a file or link from an
/// earlier tree; an existing directory is kept.
fn make_dir(tree: &Dir, rel: &Path) -> confined::Result<()> {
    match tree.create_dir(rel, 0o700) {
        Ok(_) => Ok(()),
        Err(e) => match tree.stat_if_any(rel)? {
            Some(meta) if meta.kind != Kind::Dir => {
                tree.remove_file(rel)?;
                tree.create_dir(rel, 0o700).map(|_| ())
            }
            _ => Err(e),
        },
    }
}

/// Walks a directory on disk like [`Mirror::walk_tree`] walks a commit,
/// handing the same [`Entry`] values to `visit`, in name order.
fn walk_dir(
    root: &Path,
    rel: &mut Vec<u8>,
    max_file_size: u64,
    visit: &mut dyn FnMut(Entry<'_>) -> Result<bool, MaterializeError>,
) -> Result<(), MaterializeError> {
    let dir = root.join(std::ffi::OsStr::from_bytes(rel));
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MaterializeError::Read { path, source }
    };
    let mut entries = std::fs::read_dir(&dir)
        .map_err(read(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(&dir))?;
    entries.sort();
    for name in entries {
        let base = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let full = dir.join(&name);
        let meta = full.symlink_metadata().map_err(read(&full))?;
        let kind = meta.file_type();
        let step = if kind.is_symlink() {
            let target = std::fs::read_link(&full).map_err(read(&full))?;
            visit(Entry::Symlink {
                path: rel,
                target: Blob::from_disk(Ok(target.as_os_str().as_bytes())),
            })
            .map(|_| ())
        } else if kind.is_dir() {
            if full.join(".git").symlink_metadata().is_ok() {
                visit(Entry::Submodule { path: rel }).map(|_| ())
            } else if visit(Entry::Dir { path: rel })? {
                walk_dir(root, rel, max_file_size, visit)
            } else {
                Ok(())
            }
        } else if kind.is_file() {
            let executable = meta.permissions().mode() & 0o100 != 0;
            let mut data = Vec::new();
            let content = if meta.len() > max_file_size {
                Err(meta.len())
            } else {
                std::fs::File::open(&full)
                    .and_then(|f| f.take(max_file_size + 1).read_to_end(&mut data))
                    .map_err(read(&full))?;
                Ok(data.as_slice())
            };
            visit(Entry::File {
                path: rel,
                executable,
                blob: Blob::from_disk(content),
            })
            .map(|_| ())
        } else {
            let path = String::from_utf8_lossy(rel).into_owned();
            if is_hidden(&path) {
                Ok(())
            } else {
                Err(reject(&path, "is not a regular file, directory or symlink"))
            }
        };
        rel.truncate(base);
        step?;
    }
    Ok(())
}

/// Files, links and directories all count: a tree of empty directories
/// costs as much to walk, write and compare as one of files.
fn count(entries: usize, limits: Limits) -> Result<(), String> {
    if entries >= limits.max_files {
        return Err(format!(
            "commit has more than {} entries, files, links and directories together \
             (GITRELOAD_MAX_FILES)",
            limits.max_files
        ));
    }
    Ok(())
}

/// True when any component of `path` starts with a dot: such entries
/// (`.git`, `.github`, `.gitignore`, ...) are never deployed.
pub fn is_hidden(path: &str) -> bool {
    path.split('/').any(|c| c.starts_with('.'))
}

/// Validates a tree path for the destination filesystem and returns it as
/// UTF-8. Git itself forbids `/` and NUL in names, but a crafted tree
/// object can hold anything.
pub fn checked_path(path: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(path).map_err(|_| "name is not valid UTF-8".to_string())?;
    for component in text.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(format!("invalid path component {component:?}"));
        }
        if component.contains('\0') {
            return Err("name contains a NUL byte".into());
        }
        if component.len() > NAME_MAX {
            return Err(format!("name is longer than {NAME_MAX} bytes"));
        }
    }
    Ok(text.to_string())
}

/// What a deployed path is, to resolve links through the whole tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node<'t> {
    Dir,
    File,
    Link(&'t str),
}

/// Judges every link against the tree as it will be on disk after the
/// deploy (`files` and `dirs` as staged), not one link at a time. Each
/// link's target is resolved from the link's directory, component by
/// component, through the tree's own directories: it is rejected, naming
/// the link, when it climbs above the deployed root, or when any component
/// but the last is not a directory of this tree (another link, a file, or
/// something the commit does not hold: the kernel would follow a link, or
/// whatever someone else put on the volume). The last component may be
/// anything (a link there is judged as a link of its own, so a chain of
/// links stays inside; a dangling link stays dangling). Also rejected: a
/// path below a file or a link of the same tree (a crafted tree can hold
/// both `d -> sub` and `d/x`).
pub fn check_links(
    files: &BTreeMap<String, FileKind>,
    dirs: &BTreeSet<String>,
) -> Result<(), (String, String)> {
    let mut nodes: BTreeMap<&str, Node<'_>> = BTreeMap::new();
    for dir in dirs {
        nodes.insert(dir, Node::Dir);
    }
    for (path, kind) in files {
        let node = match kind {
            FileKind::File { .. } => Node::File,
            FileKind::Symlink { target } => Node::Link(target),
        };
        if nodes.insert(path, node).is_some() {
            return Err((
                path.clone(),
                "is both a directory and a file or link".into(),
            ));
        }
    }
    for path in nodes.keys() {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let above = &path[..end];
            match nodes.get(above) {
                Some(Node::Dir) => {}
                Some(Node::File) => {
                    return Err((
                        above.to_string(),
                        format!("is a file and {path} is below it"),
                    ))
                }
                Some(Node::Link(_)) => {
                    return Err((
                        above.to_string(),
                        format!("is a symlink and {path} is below it"),
                    ))
                }
                None => return Err((path.to_string(), format!("{above} is not in the tree"))),
            }
            end += 1;
        }
    }
    for (path, node) in &nodes {
        let Node::Link(target) = node else { continue };
        resolve_link(path, target, &nodes).map_err(|why| (path.to_string(), why))?;
    }
    Ok(())
}

/// Resolves one link's target through `nodes` (see [`check_links`]).
fn resolve_link(path: &str, target: &str, nodes: &BTreeMap<&str, Node<'_>>) -> Result<(), String> {
    check_link(path, target)?;
    let mut at: Vec<&str> = path.split('/').collect();
    at.pop();
    let steps: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, step) in steps.iter().enumerate() {
        if *step == ".." {
            if at.pop().is_none() {
                return Err(format!(
                    "symlink points outside the deployed tree (to {target})"
                ));
            }
            continue;
        }
        at.push(step);
        if i + 1 == steps.len() {
            break;
        }
        let through = at.join("/");
        match nodes.get(through.as_str()) {
            Some(Node::Dir) => {}
            Some(Node::Link(_)) => {
                return Err(format!(
                    "symlink target {target} goes through {through}, a symlink; point at \
                     the directory itself"
                ))
            }
            Some(Node::File) => {
                return Err(format!(
                    "symlink target {target} goes through {through}, a file"
                ))
            }
            None => {
                return Err(format!(
                    "symlink target {target} goes through {through}, which is not a \
                     directory of this tree"
                ))
            }
        }
    }
    Ok(())
}

/// A symlink at `path` pointing to `target` must be relative, not empty,
/// and never climb above the deployed root as written. This looks at one
/// link alone; [`check_links`] judges it against the whole tree.
pub fn check_link(path: &str, target: &str) -> Result<(), String> {
    if target.starts_with('/') {
        return Err(format!(
            "symlink points outside the deployed tree (to {target})"
        ));
    }
    if target.is_empty() || target.contains('\0') {
        return Err("symlink has an empty or invalid target".into());
    }
    // Lexically only: whether a name before a `..` is a real directory
    // (and not a link, `d -> .`) is for [`check_links`] to say.
    let mut depth: i64 = path.split('/').count() as i64 - 1;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!(
                        "symlink points outside the deployed tree (to {target})"
                    ));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_stay_inside() {
        assert!(check_link("a", "b").is_ok());
        assert!(check_link("dir/a", "../b").is_ok());
        assert!(check_link("a", "../b").is_err());
        assert!(check_link("a", "/etc/passwd").is_err());
        assert!(check_link("dir/a", "x/../../../etc").is_err());
    }

    /// A tree as staged: `"path"` a file, `"path/"` a directory,
    /// `"path -> target"` a link.
    fn tree(entries: &[&str]) -> (BTreeMap<String, FileKind>, BTreeSet<String>) {
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        for entry in entries {
            if let Some((path, target)) = entry.split_once(" -> ") {
                files.insert(
                    path.to_string(),
                    FileKind::Symlink {
                        target: target.to_string(),
                    },
                );
            } else if let Some(dir) = entry.strip_suffix('/') {
                dirs.insert(dir.to_string());
            } else {
                files.insert(
                    entry.to_string(),
                    FileKind::File {
                        sha256: String::new(),
                        executable: false,
                        secret: false,
                    },
                );
            }
        }
        (files, dirs)
    }

    fn judged(entries: &[&str]) -> Result<(), String> {
        let (files, dirs) = tree(entries);
        check_links(&files, &dirs).map_err(|(path, why)| format!("{path}: {why}"))
    }

    #[test]
    fn links_are_judged_against_the_whole_tree() {
        // Inside, through real directories, chains and dangling ends.
        assert_eq!(judged(&["a -> b", "b -> c", "c"]), Ok(()));
        assert_eq!(
            judged(&["sub/", "sub/x", "sub/up -> ..", "y -> sub/x"]),
            Ok(())
        );
        assert_eq!(
            judged(&["sub/", "sub/deeper/", "l -> sub/deeper/../x"]),
            Ok(())
        );
        assert_eq!(judged(&["dangling -> nothing"]), Ok(()));
        // `a -> b`, `b -> ..`: b leaves, and is named.
        let err = judged(&["a -> b", "b -> .."]).unwrap_err();
        assert!(err.starts_with("b: "), "{err}");
        // Through another link, even one that stays inside.
        let err = judged(&["sub/", "sub/up -> ..", "a -> sub/up/x"]).unwrap_err();
        assert!(
            err.starts_with("a: ") && err.contains("sub/up, a symlink"),
            "{err}"
        );
        let err = judged(&["d -> .", "e -> d/../.."]).unwrap_err();
        assert!(err.starts_with("e: "), "{err}");
        // Through a file, or through something the commit does not hold.
        let err = judged(&["f", "a -> f/x"]).unwrap_err();
        assert!(err.contains("f, a file"), "{err}");
        let err = judged(&["a -> foreign/etc/passwd"]).unwrap_err();
        assert!(err.starts_with("a: ") && err.contains("foreign"), "{err}");
        let err = judged(&["a -> .git/config"]).unwrap_err();
        assert!(err.starts_with("a: "), "{err}");
        // Out by climbing.
        let err = judged(&["sub/", "sub/a -> ../../etc"]).unwrap_err();
        assert!(err.starts_with("sub/a: "), "{err}");
    }

    #[test]
    fn a_path_below_a_link_or_a_file_is_rejected_naming_it() {
        // `d -> sub` and `d/x` in one crafted tree.
        let err = judged(&["sub/", "d -> sub", "d/x"]).unwrap_err();
        assert!(err.starts_with("d: is a symlink and d/x"), "{err}");
        let err = judged(&["f", "f/x"]).unwrap_err();
        assert!(err.starts_with("f: is a file"), "{err}");
        // A name that is both a directory and a link.
        let (mut files, dirs) = tree(&["d/", "d/x"]);
        files.insert("d".into(), FileKind::Symlink { target: "x".into() });
        let err = check_links(&files, &dirs).unwrap_err();
        assert_eq!(err.0, "d");
    }

    #[test]
    fn a_name_the_filesystem_refuses_is_a_rejection() {
        let failed = |code| confined::Error::Io {
            op: "creating",
            root: std::sync::Arc::from(Path::new("/state/staging/tree")),
            path: PathBuf::from("x"),
            source: std::io::Error::from_raw_os_error(code),
        };
        for code in [libc::ENAMETOOLONG, libc::EILSEQ] {
            let err = written("x")(failed(code));
            assert!(
                matches!(&err, MaterializeError::Rejected { path, .. } if path == "x"),
                "{err}"
            );
        }
        let err = written("x")(failed(libc::ENOSPC));
        assert!(matches!(err, MaterializeError::Io { .. }), "{err}");
    }

    #[test]
    fn secret_hashes_are_keyed_and_plain_ones_are_sha256() {
        let key = ContentKey::random().unwrap();
        let plain = hex::encode(Sha256::digest(b"hunter2"));
        assert_eq!(ContentHasher::of(b"hunter2", false, &key), plain);
        let keyed = ContentHasher::of(b"hunter2", true, &key);
        assert_ne!(keyed, plain);
        assert_eq!(keyed, ContentHasher::of(b"hunter2", true, &key));
        assert_ne!(
            keyed,
            ContentHasher::of(b"hunter2", true, &ContentKey::random().unwrap())
        );
    }

    fn rules() -> Rules {
        Rules {
            limits: Limits {
                max_files: 100,
                max_file_size: 1 << 20,
            },
            secrets: Secrets::none(secrets::Mode::Deploy, 1 << 20),
            content_key: ContentKey::random().unwrap(),
        }
    }

    #[test]
    fn working_tree_follows_the_commit_rules() {
        let src = tempfile::TempDir::new().unwrap();
        let root = src.path();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/config"), "x").unwrap();
        std::fs::create_dir_all(root.join("rules/.hidden")).unwrap();
        std::fs::write(root.join("rules/a.yml"), "groups: []\n").unwrap();
        std::fs::write(root.join("rules/.hidden/b.yml"), "x").unwrap();
        std::fs::create_dir_all(root.join("vendored")).unwrap();
        std::fs::write(root.join("vendored/.git"), "gitdir: ../.git/modules/v").unwrap();
        std::os::unix::fs::symlink("rules/a.yml", root.join("link.yml")).unwrap();
        let out = tempfile::TempDir::new().unwrap();
        let staging = out.path().join("s");
        let checkout = materialize_dir(root, &staging, &rules()).unwrap();
        assert_eq!(
            checkout.files.keys().collect::<Vec<_>>(),
            ["link.yml", "rules/a.yml"]
        );
        assert_eq!(checkout.warnings, ["vendored: submodule skipped"]);
        let mode = std::fs::metadata(&staging).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        let err = materialize_dir(root, &out.path().join("t"), &rules()).unwrap_err();
        assert!(err.to_string().starts_with("escape: "), "{err}");
        assert!(!out.path().join("t").exists(), "failed staging left behind");
    }

    #[test]
    fn plain_and_encrypted_twins_are_rejected_naming_both() {
        let src = tempfile::TempDir::new().unwrap();
        std::fs::write(src.path().join("x.yml"), "a: 1\n").unwrap();
        std::fs::write(src.path().join("x.yml.age"), "not even age").unwrap();
        let out = tempfile::TempDir::new().unwrap();
        let err = materialize_dir(src.path(), &out.path().join("s"), &rules()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("both x.yml and x.yml.age"), "{text}");
    }

    #[test]
    fn hidden_paths_at_any_depth() {
        assert!(is_hidden(".git"));
        assert!(is_hidden("rules/.hidden/x.yml"));
        assert!(!is_hidden("rules/x.yml"));
    }
}
