//! Confined: filesystem operations below a root gitreload owns (the
//! destination, the staging directory), that no symbolic link can redirect.
//!
//! A [`Dir`] is a directory handle. The root is opened once from the
//! operator's setting (that path is resolved once: it is configuration, not
//! content); everything below it is reached from handles only, never from
//! path strings:
//! - every relative path is walked from the handle with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//!   (one `O_NOFOLLOW | O_DIRECTORY` open per component where the kernel
//!   has no `openat2`): a link anywhere on the way, to anywhere, fails the
//!   operation with [`Error::LinkOnTheWay`] naming the link;
//! - the final component is acted on with a `*at` call relative to its
//!   parent's handle, never following it: `mkdirat`, `openat(O_NOFOLLOW)`
//!   (`O_CREAT | O_EXCL` for new files), `renameat`, `unlinkat`, `symlinkat`,
//!   `readlinkat`, `linkat` (links the entry itself), `fstatat` and
//!   `fchownat` with `AT_SYMLINK_NOFOLLOW`; modes and owners of open files
//!   are set on their descriptors;
//! - `..`, absolute and empty components are refused before any syscall
//!   ([`Error::BadPath`]), so nothing can climb out of the root lexically;
//! - [`Dir::remove_tree`] walks directories by handle and unlinks links
//!   without ever following them.
//!
//! Every error names the path (the root joined with the relative path) and
//! what was being done. Nothing here decides *whether* to replace a link:
//! callers see [`Error::LinkOnTheWay`] and [`Kind::Symlink`] and choose.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a confined operation failed. Every variant names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `link` (a prefix of `path`, or `path` itself where a directory was
    /// needed) is a symbolic link: gitreload does not go through it.
    #[error("{op} {}: {} is a symbolic link; gitreload never writes or reads through one", .root.join(.path).display(), .root.join(.link).display())]
    LinkOnTheWay {
        op: &'static str,
        root: Arc<Path>,
        path: PathBuf,
        link: PathBuf,
    },
    /// A component is `..`, absolute or otherwise not a plain name.
    #[error("{op} {:?} below {}: only plain relative names are allowed", .path, .root.display())]
    BadPath {
        op: &'static str,
        root: Arc<Path>,
        path: PathBuf,
    },
    #[error("{op} {}: {source}", .root.join(.path).display())]
    Io {
        op: &'static str,
        root: Arc<Path>,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// The path at fault, relative to the root.
    pub fn relative(&self) -> &Path {
        match self {
            Error::LinkOnTheWay { path, .. } | Error::BadPath { path, .. } => path,
            Error::Io { path, .. } => path,
        }
    }

    /// The path at fault, joined to the root.
    pub fn full_path(&self) -> PathBuf {
        match self {
            Error::LinkOnTheWay { root, path, .. }
            | Error::BadPath { root, path, .. }
            | Error::Io { root, path, .. } => root.join(path),
        }
    }

    /// The link that stopped the operation, relative to the root.
    pub fn link(&self) -> Option<&Path> {
        match self {
            Error::LinkOnTheWay { link, .. } => Some(link),
            _ => None,
        }
    }

    pub fn kind(&self) -> std::io::ErrorKind {
        match self {
            Error::Io { source, .. } => source.kind(),
            Error::LinkOnTheWay { .. } => std::io::ErrorKind::PermissionDenied,
            Error::BadPath { .. } => std::io::ErrorKind::InvalidInput,
        }
    }

    /// True when the entry (or a directory on its way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        )
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::new(e.kind(), e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What an entry is, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A fifo, socket or device: never opened.
    Other,
}

impl Kind {
    #[allow(clippy::unnecessary_cast)]
    fn of_stat(st: &rfs::Stat) -> Kind {
        Kind::of_mode(st.st_mode as u32)
    }

    fn of_mode(mode: u32) -> Kind {
        match rfs::FileType::from_raw_mode(mode as _) {
            rfs::FileType::RegularFile => Kind::File,
            rfs::FileType::Directory => Kind::Dir,
            rfs::FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// `lstat` of an entry: what deploy compares and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    // `struct stat`'s field types differ between architectures: the casts
    // are needed on some.
    #[allow(clippy::unnecessary_cast)]
    fn of(st: &rfs::Stat) -> Meta {
        Meta {
            kind: Kind::of_stat(st),
            mode: st.st_mode as u32 & 0o7777,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
        }
    }
}

/// A handle on a directory at or below a root, opened without following
/// any link below the root.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    root: Arc<Path>,
    /// This directory relative to the root (`""` for the root).
    rel: PathBuf,
}

/// A directory handle held for one operation: borrowed (the path had one
/// component) or opened for it.
enum Parent<'a> {
    This(&'a Dir),
    Opened(OwnedFd),
}

impl AsFd for Parent<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Parent::This(d) => d.fd.as_fd(),
            Parent::Opened(fd) => fd.as_fd(),
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Dir {
    /// Opens the root at `path`. The path is the operator's and is resolved
    /// once; the directory it names is then held by handle.
    pub fn open_root(path: &Path) -> Result<Dir> {
        let root: Arc<Path> = Arc::from(path);
        let io_err = |source: std::io::Error| Error::Io {
            op: "opening",
            root: root.clone(),
            path: PathBuf::new(),
            source,
        };
        let resolved = std::fs::canonicalize(path).map_err(io_err)?;
        let fd = rfs::open(&resolved, DIR_FLAGS, Mode::empty()).map_err(|e| io_err(e.into()))?;
        Ok(Dir {
            fd,
            root,
            rel: PathBuf::new(),
        })
    }

    /// Creates the root (and its missing parents, with `mode`) if needed,
    /// then opens it.
    pub fn create_root(path: &Path, mode: u32) -> Result<Dir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|source| Error::Io {
                op: "creating",
                root: Arc::from(path),
                path: PathBuf::new(),
                source,
            })?;
        Dir::open_root(path)
    }

    /// The root this handle was opened below.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This directory relative to the root.
    pub fn relative(&self) -> &Path {
        &self.rel
    }

    /// This directory's path (for messages; never used to reach it).
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    fn err(&self, op: &'static str, rel: &Path, source: impl Into<std::io::Error>) -> Error {
        Error::Io {
            op,
            root: self.root.clone(),
            path: self.rel.join(rel),
            source: source.into(),
        }
    }

    /// Checks that `rel` is made of plain names only; `allow_empty` for
    /// operations on this directory itself.
    fn check(&self, op: &'static str, rel: &Path, allow_empty: bool) -> Result<()> {
        let bad = || Error::BadPath {
            op,
            root: self.root.clone(),
            path: self.rel.join(rel),
        };
        if rel.as_os_str().is_empty() {
            return if allow_empty { Ok(()) } else { Err(bad()) };
        }
        for c in rel.components() {
            match c {
                Component::Normal(name) if !name.as_bytes().contains(&0) => {}
                Component::CurDir => {}
                _ => return Err(bad()),
            }
        }
        // `a/.` names `a`, not an entry in it.
        if rel.as_os_str().as_bytes().ends_with(b"/.") || rel == Path::new(".") {
            return Err(bad());
        }
        Ok(())
    }

    /// Opens the directory `rel` (below this one) without following links.
    fn open_below(&self, op: &'static str, rel: &Path) -> Result<OwnedFd> {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let mut tries = 0;
        loop {
            match rfs::openat2(&self.fd, rel, DIR_FLAGS, Mode::empty(), how) {
                Ok(fd) => return Ok(fd),
                // A rename elsewhere raced the lookup: the kernel asks to retry.
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                Err(Errno::NOSYS) | Err(Errno::PERM) => return self.walk(op, rel),
                Err(e @ (Errno::LOOP | Errno::NOTDIR | Errno::XDEV)) => {
                    return Err(self
                        .diagnose(op, rel)
                        .unwrap_or_else(|| self.err(op, rel, e)))
                }
                Err(e) => return Err(self.err(op, rel, e)),
            }
        }
    }

    /// Opens `rel` one `O_NOFOLLOW | O_DIRECTORY` component at a time (for
    /// kernels without `openat2`, or where seccomp refuses it).
    fn walk(&self, op: &'static str, rel: &Path) -> Result<OwnedFd> {
        let mut current: Option<OwnedFd> = None;
        let mut done = PathBuf::new();
        for c in rel.components() {
            let Component::Normal(name) = c else { continue };
            done.push(name);
            let at = match &current {
                Some(fd) => fd.as_fd(),
                None => self.fd.as_fd(),
            };
            match rfs::openat(at, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => current = Some(fd),
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    return Err(match rfs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if Kind::of_stat(&st) == Kind::Symlink => {
                            self.link_err(op, rel, &done)
                        }
                        _ => self.err(op, &done, e),
                    })
                }
                Err(e) => return Err(self.err(op, &done, e)),
            }
        }
        match current {
            Some(fd) => Ok(fd),
            None => rfs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
                .map_err(|e| self.err(op, rel, e)),
        }
    }

    fn link_err(&self, op: &'static str, rel: &Path, link: &Path) -> Error {
        Error::LinkOnTheWay {
            op,
            root: self.root.clone(),
            path: self.rel.join(rel),
            link: self.rel.join(link),
        }
    }

    /// After `openat2` refused `rel`: which component is a link (or not a
    /// directory)? `None` when the walk now succeeds (the tree changed).
    fn diagnose(&self, op: &'static str, rel: &Path) -> Option<Error> {
        self.walk(op, rel).err()
    }

    /// The parent of `rel` (opened, or this handle) and the final name.
    fn parent<'a>(&'a self, op: &'static str, rel: &'a Path) -> Result<(Parent<'a>, &'a OsStr)> {
        self.check(op, rel, false)?;
        let name = rel.file_name().ok_or_else(|| Error::BadPath {
            op,
            root: self.root.clone(),
            path: self.rel.join(rel),
        })?;
        match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() && p != Path::new(".") => {
                Ok((Parent::Opened(self.open_below(op, p)?), name))
            }
            _ => Ok((Parent::This(self), name)),
        }
    }

    /// Opens the existing directory `rel` below this one; `""` opens this
    /// directory again.
    pub fn open_dir(&self, rel: &Path) -> Result<Dir> {
        const OP: &str = "opening directory";
        self.check(OP, rel, true)?;
        let fd = if rel.as_os_str().is_empty() {
            rfs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
                .map_err(|e| self.err(OP, rel, e))?
        } else {
            self.open_below(OP, rel)?
        };
        Ok(Dir {
            fd,
            root: self.root.clone(),
            rel: self.rel.join(rel),
        })
    }

    /// `lstat` of `rel`: the entry itself, never what a link points to.
    pub fn stat(&self, rel: &Path) -> Result<Meta> {
        const OP: &str = "inspecting";
        let (parent, name) = self.parent(OP, rel)?;
        rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| Meta::of(&st))
            .map_err(|e| self.err(OP, rel, e))
    }

    /// [`Dir::stat`], with `None` when the entry is not there (or a file
    /// stands where one of its directories would be).
    pub fn stat_if_any(&self, rel: &Path) -> Result<Option<Meta>> {
        match self.stat(rel) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the directory `rel` with `mode` (the umask applies). Returns
    /// false when a directory was already there; a link or a file there is
    /// an error.
    pub fn create_dir(&self, rel: &Path, mode: u32) -> Result<bool> {
        const OP: &str = "creating directory";
        let (parent, name) = self.parent(OP, rel)?;
        match rfs::mkdirat(&parent, name, Mode::from_raw_mode(mode as _)) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match Kind::of_stat(&st) {
                    Kind::Dir => Ok(false),
                    Kind::Symlink => Err(self.link_err(OP, rel, rel)),
                    _ => Err(self.err(OP, rel, Errno::EXIST)),
                },
                Err(e) => Err(self.err(OP, rel, e)),
            },
            Err(e) => Err(self.err(OP, rel, e)),
        }
    }

    /// Creates every missing directory of `rel` (each with `mode`) and opens
    /// the last. A link on the way is an error, never followed.
    pub fn create_dir_all(&self, rel: &Path, mode: u32) -> Result<Dir> {
        self.check("creating directory", rel, true)?;
        let mut done = PathBuf::new();
        for c in rel.components() {
            let Component::Normal(name) = c else { continue };
            done.push(name);
            self.create_dir(&done, mode)?;
        }
        self.open_dir(rel)
    }

    /// Opens the regular file `rel` for reading. A link, fifo, socket or
    /// device there is refused (the open never blocks).
    pub fn open_file(&self, rel: &Path) -> Result<File> {
        const OP: &str = "reading";
        let (parent, name) = self.parent(OP, rel)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rfs::openat(&parent, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(self.link_err(OP, rel, rel)),
            Err(e) => return Err(self.err(OP, rel, e)),
        };
        let st = rfs::fstat(&fd).map_err(|e| self.err(OP, rel, e))?;
        if Kind::of_stat(&st) != Kind::File {
            return Err(self.err(OP, rel, std::io::Error::other("not a regular file")));
        }
        // Back to blocking reads (regular files ignore the flag anyway).
        let _ = rfs::fcntl_setfl(&fd, OFlags::empty());
        Ok(File::from(fd))
    }

    /// Creates the new regular file `rel` (`O_CREAT | O_EXCL | O_NOFOLLOW`)
    /// for writing, with `mode` (the umask applies; see [`set_mode`]).
    pub fn create_new_file(&self, rel: &Path, mode: u32) -> Result<File> {
        const OP: &str = "creating";
        let (parent, name) = self.parent(OP, rel)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rfs::openat(&parent, name, flags, Mode::from_raw_mode(mode as _))
            .map(File::from)
            .map_err(|e| self.err(OP, rel, e))
    }

    /// Creates the symbolic link `rel` pointing to `target` (the target is
    /// stored, never resolved here).
    pub fn symlink(&self, target: &Path, rel: &Path) -> Result<()> {
        const OP: &str = "creating link";
        let (parent, name) = self.parent(OP, rel)?;
        rfs::symlinkat(target, &parent, name).map_err(|e| self.err(OP, rel, e))
    }

    /// The target stored in the link `rel`.
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf> {
        const OP: &str = "reading link";
        let (parent, name) = self.parent(OP, rel)?;
        rfs::readlinkat(&parent, name, Vec::new())
            .map(|t| PathBuf::from(OsStr::from_bytes(t.as_bytes())))
            .map_err(|e| self.err(OP, rel, e))
    }

    /// Renames `from` to `to` (both below this directory), replacing `to`
    /// if the kernel allows. Neither final component is followed.
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        const OP: &str = "renaming";
        let (from_parent, from_name) = self.parent(OP, from)?;
        let (to_parent, to_name) = self.parent(OP, to)?;
        rfs::renameat(&from_parent, from_name, &to_parent, to_name)
            .map_err(|e| self.err(OP, from, e))
    }

    /// Hard-links the entry `from` (itself, even if it is a link) as `to`.
    pub fn hard_link(&self, from: &Path, to: &Path) -> Result<()> {
        const OP: &str = "linking";
        let (from_parent, from_name) = self.parent(OP, from)?;
        let (to_parent, to_name) = self.parent(OP, to)?;
        rfs::linkat(
            &from_parent,
            from_name,
            &to_parent,
            to_name,
            AtFlags::empty(),
        )
        .map_err(|e| self.err(OP, from, e))
    }

    /// Removes the non-directory `rel` (a link itself, not its target).
    pub fn remove_file(&self, rel: &Path) -> Result<()> {
        const OP: &str = "removing";
        let (parent, name) = self.parent(OP, rel)?;
        rfs::unlinkat(&parent, name, AtFlags::empty()).map_err(|e| self.err(OP, rel, e))
    }

    /// Removes the empty directory `rel`.
    pub fn remove_dir(&self, rel: &Path) -> Result<()> {
        const OP: &str = "removing directory";
        let (parent, name) = self.parent(OP, rel)?;
        rfs::unlinkat(&parent, name, AtFlags::REMOVEDIR).map_err(|e| self.err(OP, rel, e))
    }

    /// Removes `rel` whatever it is: a file, a link (never followed), or a
    /// directory with everything in it, walked by handle. One that is not
    /// there is fine.
    pub fn remove_tree(&self, rel: &Path) -> Result<()> {
        let meta = match self.stat_if_any(rel)? {
            Some(m) => m,
            None => return Ok(()),
        };
        if meta.kind != Kind::Dir {
            return match self.remove_file(rel) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
        }
        let dir = self.open_dir(rel)?;
        for (name, kind) in dir.entries()? {
            let name = Path::new(&name);
            if kind == Kind::Dir {
                dir.remove_tree(name)?;
            } else {
                match dir.remove_file(name) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
        }
        match self.remove_dir(rel) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The entries of this directory (without `.` and `..`), each with its
    /// kind as seen without following it.
    pub fn entries(&self) -> Result<Vec<(OsString, Kind)>> {
        const OP: &str = "listing";
        let here = Path::new("");
        let reader = rfs::Dir::read_from(&self.fd).map_err(|e| self.err(OP, here, e))?;
        let mut found = Vec::new();
        for entry in reader {
            let entry = entry.map_err(|e| self.err(OP, here, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_os_string();
            let kind = match entry.file_type() {
                rfs::FileType::RegularFile => Kind::File,
                rfs::FileType::Directory => Kind::Dir,
                rfs::FileType::Symlink => Kind::Symlink,
                rfs::FileType::Unknown => {
                    match rfs::statat(&self.fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => Kind::of_stat(&st),
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(self.err(OP, Path::new(&name), e)),
                    }
                }
                _ => Kind::Other,
            };
            found.push((name, kind));
        }
        Ok(found)
    }

    /// Sets the owner of the entry `rel` itself (a link is not followed).
    pub fn set_owner(&self, rel: &Path, uid: u32, gid: Option<u32>) -> Result<()> {
        const OP: &str = "setting owner of";
        let (parent, name) = self.parent(OP, rel)?;
        rfs::chownat(
            &parent,
            name,
            Some(rfs::Uid::from_raw(uid)),
            gid.map(rfs::Gid::from_raw),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err(OP, rel, e))
    }

    /// Sets the owner of this directory (on its handle).
    pub fn set_own_owner(&self, uid: u32, gid: Option<u32>) -> Result<()> {
        set_owner(&self.fd, uid, gid).map_err(|e| self.err("setting owner of", Path::new(""), e))
    }

    /// fsync of this directory: renames and unlinks in it survive a power
    /// loss.
    pub fn sync(&self) -> Result<()> {
        rfs::fsync(&self.fd).map_err(|e| self.err("syncing", Path::new(""), e))
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sets the permission bits of an open file (not narrowed by the umask).
pub fn set_mode(file: &impl AsFd, mode: u32) -> std::io::Result<()> {
    rfs::fchmod(file, Mode::from_raw_mode(mode as _)).map_err(Into::into)
}

/// Sets the owner of an open file or directory.
pub fn set_owner(file: &impl AsFd, uid: u32, gid: Option<u32>) -> std::io::Result<()> {
    rfs::fchown(
        file,
        Some(rfs::Uid::from_raw(uid)),
        gid.map(rfs::Gid::from_raw),
    )
    .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// `base/root` with `root/a` a link to `base/outside` (holding
    /// `victim`), and `root/d/` a real directory.
    struct Planted {
        _tmp: tempfile::TempDir,
        root: Dir,
        outside: PathBuf,
    }

    fn planted() -> Planted {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::create_dir_all(base.join("root/d")).unwrap();
        std::fs::create_dir_all(base.join("outside/sub")).unwrap();
        std::fs::write(base.join("outside/victim"), "keep").unwrap();
        std::fs::write(base.join("outside/sub/victim"), "keep").unwrap();
        std::os::unix::fs::symlink(base.join("outside"), base.join("root/a")).unwrap();
        // A relative link in the middle of a deeper path too.
        std::os::unix::fs::symlink("../../outside", base.join("root/d/up")).unwrap();
        let root = Dir::open_root(&base.join("root")).unwrap();
        Planted {
            outside: base.join("outside"),
            root,
            _tmp: tmp,
        }
    }

    fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = e.path().symlink_metadata().unwrap();
                let content = if m.is_file() {
                    std::fs::read(e.path()).unwrap()
                } else {
                    Vec::new()
                };
                if m.is_dir() {
                    stack.push(e.path());
                }
                out.push((e.path(), content));
            }
        }
        out.sort();
        out
    }

    fn assert_link_named(result: Result<impl std::fmt::Debug>, link: &str) {
        let err = result.expect_err("an operation through a link succeeded");
        assert_eq!(err.link(), Some(Path::new(link)), "{err}");
        assert!(err.to_string().contains(link), "{err}");
    }

    #[test]
    fn a_link_in_the_middle_of_a_path_stops_every_operation() {
        let p = planted();
        let before = listing(&p.outside);
        for link in ["a", "d/up"] {
            let through = |rest: &str| PathBuf::from(format!("{link}/{rest}"));
            let r = &p.root;
            assert_link_named(r.open_dir(&through("sub")), link);
            assert_link_named(r.stat(&through("victim")), link);
            assert_link_named(r.create_dir(&through("new"), 0o755), link);
            assert_link_named(r.create_dir_all(&through("new/deeper"), 0o755), link);
            assert_link_named(r.open_file(&through("victim")), link);
            assert_link_named(r.create_new_file(&through("new"), 0o644), link);
            assert_link_named(r.symlink(Path::new("x"), &through("new")), link);
            assert_link_named(r.read_link(&through("victim")), link);
            assert_link_named(r.rename(&through("victim"), Path::new("stolen")), link);
            assert_link_named(r.rename(Path::new("d"), &through("moved")), link);
            assert_link_named(r.hard_link(&through("victim"), Path::new("stolen")), link);
            assert_link_named(r.remove_file(&through("victim")), link);
            assert_link_named(r.remove_dir(&through("sub")), link);
            assert_link_named(r.remove_tree(&through("sub")), link);
            assert_link_named(r.set_owner(&through("victim"), 0, None), link);
            // The walk used where the kernel has no openat2.
            assert_link_named(r.walk("opening", &through("sub")).map(|_| ()), link);
        }
        assert_eq!(listing(&p.outside), before, "something outside changed");
    }

    #[test]
    fn the_link_itself_is_never_followed() {
        let p = planted();
        let before = listing(&p.outside);
        let r = &p.root;
        assert_eq!(r.stat(Path::new("a")).unwrap().kind, Kind::Symlink);
        assert_link_named(r.open_dir(Path::new("a")), "a");
        assert_link_named(r.open_file(Path::new("a")), "a");
        assert_link_named(r.create_dir(Path::new("a"), 0o755), "a");
        assert!(r.create_new_file(Path::new("a"), 0o644).is_err());
        assert_eq!(
            r.read_link(Path::new("d/up")).unwrap(),
            Path::new("../../outside")
        );
        // Removing a tree whose entries are links removes the links only.
        r.remove_tree(Path::new("d")).unwrap();
        r.remove_tree(Path::new("a")).unwrap();
        assert!(r.stat_if_any(Path::new("a")).unwrap().is_none());
        assert_eq!(listing(&p.outside), before, "something outside changed");
    }

    #[test]
    fn dot_dot_and_absolute_components_are_refused() {
        let p = planted();
        let before = listing(&p.outside);
        let r = &p.root;
        for bad in [
            "../outside/victim",
            "d/../../outside/victim",
            "/etc/passwd",
            "",
            ".",
            "d/.",
        ] {
            let bad = Path::new(bad);
            for result in [
                r.stat(bad).map(|_| ()),
                r.create_new_file(bad, 0o644).map(|_| ()),
                r.remove_file(bad),
                r.remove_tree(bad),
                r.symlink(Path::new("x"), bad),
                r.rename(bad, Path::new("x")),
            ] {
                let err = result.expect_err("a bad path was accepted");
                assert!(matches!(err, Error::BadPath { .. }), "{err}");
            }
        }
        assert!(matches!(
            r.open_dir(Path::new("..")),
            Err(Error::BadPath { .. })
        ));
        assert_eq!(listing(&p.outside), before, "something outside changed");
    }

    #[test]
    fn plain_operations_work_below_the_root() {
        let p = planted();
        let r = &p.root;
        let d = r.create_dir_all(Path::new("x/y"), 0o755).unwrap();
        assert_eq!(d.relative(), Path::new("x/y"));
        let mut f = r.create_new_file(Path::new("x/y/f"), 0o600).unwrap();
        f.write_all(b"hello").unwrap();
        set_mode(&f, 0o640).unwrap();
        drop(f);
        assert!(r.create_new_file(Path::new("x/y/f"), 0o600).is_err());
        let meta = r.stat(Path::new("x/y/f")).unwrap();
        assert_eq!((meta.kind, meta.mode, meta.size), (Kind::File, 0o640, 5));
        r.hard_link(Path::new("x/y/f"), Path::new("x/g")).unwrap();
        r.rename(Path::new("x/g"), Path::new("h")).unwrap();
        let mut text = String::new();
        r.open_file(Path::new("h"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello");
        r.symlink(Path::new("y/f"), Path::new("x/l")).unwrap();
        assert_eq!(r.read_link(Path::new("x/l")).unwrap(), Path::new("y/f"));
        let mut names: Vec<_> = d.entries().unwrap();
        names.sort();
        assert_eq!(names, vec![(OsString::from("f"), Kind::File)]);
        d.sync().unwrap();
        assert!(!r.create_dir(Path::new("x"), 0o755).unwrap());
        let err = r.stat(Path::new("x/nope")).unwrap_err();
        assert!(err.is_not_found());
        assert!(err.to_string().contains("x/nope"), "{err}");
        r.remove_tree(Path::new("x")).unwrap();
        r.remove_file(Path::new("h")).unwrap();
        assert!(r.stat_if_any(Path::new("x")).unwrap().is_none());
    }
}
