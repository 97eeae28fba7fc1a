//! State: the small JSON records gitreload keeps in its private state
//! directory (manifest, deploy journal, reload confirmation, rejected
//! commit), written so that a crash at any instant leaves either the old or
//! the new record.
//!
//! Promises: the state directory is 0700 and every file gitreload writes in
//! it 0600 ([`create_private_dir`], [`write`], [`make_private`] for what
//! other code (gix, ssh) creates with the process umask). It holds no plain
//! hash of a secret: [`ContentKey`] keys the hashes of secret files.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An I/O problem with a state file, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {message}")]
pub struct StateError {
    pub path: PathBuf,
    pub message: String,
}

/// Reads a JSON record; `Ok(None)` when the file does not exist. A file
/// that cannot be parsed is an error (the caller decides to start over).
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StateError {
                path: path.into(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StateError {
            path: path.into(),
            message: format!("unreadable ({e})"),
        })
}

/// Writes a JSON record atomically: temp file, fsync, rename, fsync dir.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let err = |e: std::io::Error| StateError {
        path: path.into(),
        message: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(value).map_err(|e| StateError {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(err)?;
    // A temp file left by an older version may have a wider mode.
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(err)?;
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(err)
}

/// Removes a record; a missing file is fine.
pub fn remove(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError {
            path: path.into(),
            message: e.to_string(),
        }),
    }
}

/// Removes a file, link or directory tree; one that is not there is fine.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        // NotADirectory: a parent became a file, so the path cannot exist.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// fsync of a directory, so that renames inside it survive a power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Holds the state directory for this process: a second gitreload on the
/// same state directory would corrupt the mirror and the manifest.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Takes an exclusive, non-blocking `flock` on `dir/gitreload.lock`. The
/// kernel releases it when the process dies, even by `kill -9`.
pub fn lock_dir(dir: &Path) -> Result<DirLock, StateError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("gitreload.lock");
    let err = |message: String| StateError {
        path: path.clone(),
        message,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|e| err(e.to_string()))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(err(
            "another gitreload process uses this state directory; give each its own GITRELOAD_STATE_DIR".into(),
        ));
    }
    Ok(DirLock { _file: file })
}

/// The mode of the state directory and of every directory in it.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file gitreload writes in the state directory.
pub const FILE_MODE: u32 = 0o600;

/// Creates the state directory (and missing parents) 0700, and narrows an
/// existing one to 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Takes the group and other bits off every file and directory below `dir`
/// (and `dir` itself), except the top-level entries named in `skip`. Code
/// that gitreload does not control (gix writing the mirror, ssh's log)
/// creates files with the process umask, which must stay as it is for the
/// destination. Links are never followed (a chmod would follow them).
/// Returns how many entries were narrowed.
pub fn make_private(dir: &Path, skip: &[&str]) -> std::io::Result<usize> {
    let mut narrowed = 0;
    let mut stack = vec![(dir.to_path_buf(), true)];
    while let Some((path, top)) = stack.pop() {
        let meta = match path.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))?;
            narrowed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                if top && skip.iter().any(|s| entry.file_name() == *s) {
                    continue;
                }
                stack.push((entry.path(), false));
            }
        }
    }
    Ok(narrowed)
}

/// The key of the keyed hashes of secret files (HMAC-SHA256): 32 random
/// bytes made once per state directory (`content.key`, 0600). A plain
/// SHA-256 of a secret would let anyone who reads the manifest test guesses
/// of a password offline; the keyed hash is as exact for comparing files,
/// and useless without the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ContentKey([u8; 32]);

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(***)")
    }
}

impl ContentKey {
    /// The state directory's key, made on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<ContentKey, StateError> {
        let path = state_dir.join("content.key");
        let err = |e: std::io::Error| StateError {
            path: path.clone(),
            message: e.to_string(),
        };
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0; 32];
                key.copy_from_slice(&bytes);
                return Ok(ContentKey(key));
            }
            // Unreadable as a key: make a new one (secret files then
            // compare unequal once and are rewritten).
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let key = ContentKey::random().map_err(err)?;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(&key.0).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        sync_dir(state_dir).map_err(err)?;
        Ok(key)
    }

    /// A key from the kernel's random source, for a process that keeps no
    /// state (`gitreload validate`, tests).
    pub fn random() -> std::io::Result<ContentKey> {
        let mut key = [0u8; 32];
        let mut filled = 0;
        while filled < key.len() {
            // SAFETY: getrandom(2) writes at most `len - filled` bytes into
            // the rest of our own buffer.
            let n = unsafe {
                libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            filled += n as usize;
        }
        Ok(ContentKey(key))
    }

    /// A key given whole (tests that compare hashes across calls).
    pub fn from_bytes(key: [u8; 32]) -> ContentKey {
        ContentKey(key)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_the_key_are_private() {
        let dir = tempfile::TempDir::new().unwrap();
        let state = dir.path().join("state");
        create_private_dir(&state).unwrap();
        write(&state.join("x.json"), &1).unwrap();
        let key = ContentKey::load_or_create(&state).unwrap();
        assert_eq!(key, ContentKey::load_or_create(&state).unwrap());
        assert_ne!(key, ContentKey::random().unwrap());
        for path in [
            state.clone(),
            state.join("x.json"),
            state.join("content.key"),
        ] {
            let mode = path.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{}: {mode:o}", path.display());
        }
    }

    #[test]
    fn make_private_narrows_without_following_links() {
        let dir = tempfile::TempDir::new().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("mirror/refs")).unwrap();
        std::fs::write(state.join("mirror/refs/x"), "x").unwrap();
        std::fs::set_permissions(
            state.join("mirror/refs/x"),
            std::fs::Permissions::from_mode(0o664),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, state.join("mirror/link")).unwrap();
        make_private(&state, &[]).unwrap();
        let mode = |p: &Path| p.symlink_metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join("mirror/refs/x")), 0o600);
        assert_eq!(mode(&state.join("mirror")) & 0o077, 0);
        assert_eq!(mode(&outside), 0o644, "followed a link");
    }
}
