//! State: the small JSON records gitreload keeps in its private state
//! directory (manifest, deploy journal, reload confirmation), written so
//! that a crash at any instant leaves either the old or the new record.

use std::io::Write;
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
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
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
