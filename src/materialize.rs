//! Materialize: write the tree of one commit into a fresh staging directory,
//! applying the path rules, and describe every file by its content hash.
//!
//! Promises:
//! - The staging directory holds exactly what may be deployed: nothing whose
//!   name starts with `.` (at any depth), no submodule, no symlink that
//!   leaves the deployed tree, no name the destination filesystem cannot
//!   hold.
//! - A commit that breaks a rule is rejected as a whole, with the path at
//!   fault named; there is no partial staging.
//! - Limits (`max_files`, `max_file_size`) are enforced while reading, so a
//!   hostile commit cannot exhaust memory or disk.
//! - The returned [`Staged`] lists each file with its SHA-256, exec bit or
//!   link target: the deploy stage compares by these, never by mtime.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::git::{CommitId, Entry, GitError, Mirror};

/// The longest file name most Linux filesystems accept.
const NAME_MAX: usize = 255;

/// How one deployable path looks: what deploy compares and recreates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file; `executable` keeps git's 100755 mode.
    File { sha256: String, executable: bool },
    /// A symbolic link whose target stays inside the tree.
    Symlink { target: String },
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
}

/// Why a commit cannot be materialized.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error(transparent)]
    Git(#[from] GitError),
    /// The commit itself breaks a rule: it is rejected until upstream moves.
    #[error("commit {commit} rejected: {path}: {reason}")]
    Rejected {
        commit: String,
        path: String,
        reason: String,
    },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Limits applied while reading a commit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files: usize,
    pub max_file_size: u64,
}

/// Writes `commit` (below `subdir`) into `staging_root/<commit>`, replacing
/// whatever was there.
pub fn materialize(
    mirror: &Mirror,
    commit: &CommitId,
    subdir: &str,
    staging_root: &Path,
    limits: Limits,
) -> Result<Staged, MaterializeError> {
    let dir = staging_root.join(commit.as_str());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MaterializeError::Io { path, source }
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;

    let mut files = BTreeMap::new();
    let mut failure: Option<MaterializeError> = None;
    let reject = |path: &str, reason: String| MaterializeError::Rejected {
        commit: commit.to_string(),
        path: path.to_string(),
        reason,
    };
    let mut visit = |entry: Entry<'_>| -> Result<bool, MaterializeError> {
        match entry {
            Entry::Dir { path } => {
                let path =
                    checked_path(path).map_err(|r| reject(&String::from_utf8_lossy(path), r))?;
                if is_hidden(&path) {
                    return Ok(false);
                }
                let target = dir.join(&path);
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&target)
                    .map_err(io(&target))?;
                Ok(true)
            }
            Entry::Submodule { path } => {
                let path = String::from_utf8_lossy(path);
                if !is_hidden(&path) {
                    tracing::warn!(commit = %commit.short(), path = %path, "submodule skipped");
                }
                Ok(false)
            }
            Entry::Oversized { path, size } => {
                let path =
                    checked_path(path).map_err(|r| reject(&String::from_utf8_lossy(path), r))?;
                if is_hidden(&path) {
                    return Ok(false);
                }
                Err(reject(
                    &path,
                    format!(
                        "file is {size} bytes, over the limit of {} (GITRELOAD_MAX_FILE_SIZE)",
                        limits.max_file_size
                    ),
                ))
            }
            Entry::File {
                path,
                executable,
                data,
            } => {
                let path =
                    checked_path(path).map_err(|r| reject(&String::from_utf8_lossy(path), r))?;
                if is_hidden(&path) {
                    return Ok(false);
                }
                count(&files, limits, &path).map_err(|r| reject(&path, r))?;
                let target = dir.join(&path);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if executable { 0o700 } else { 0o600 })
                    .open(&target)
                    .map_err(io(&target))?;
                file.write_all(data).map_err(io(&target))?;
                let sha256 = hex::encode(Sha256::digest(data));
                files.insert(path, FileKind::File { sha256, executable });
                Ok(false)
            }
            Entry::Symlink { path, target } => {
                let path =
                    checked_path(path).map_err(|r| reject(&String::from_utf8_lossy(path), r))?;
                if is_hidden(&path) {
                    return Ok(false);
                }
                count(&files, limits, &path).map_err(|r| reject(&path, r))?;
                let target = std::str::from_utf8(target)
                    .map_err(|_| reject(&path, "symlink target is not valid UTF-8".into()))?;
                check_link(&path, target).map_err(|r| reject(&path, r))?;
                let link = dir.join(&path);
                std::os::unix::fs::symlink(target, &link).map_err(io(&link))?;
                files.insert(
                    path,
                    FileKind::Symlink {
                        target: target.to_string(),
                    },
                );
                Ok(false)
            }
        }
    };
    match mirror.walk_tree(commit, subdir, limits.max_file_size, &mut visit)? {
        Ok(()) => {}
        Err(e) => failure = Some(e),
    }
    if let Some(e) = failure {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(Staged {
        commit: commit.clone(),
        subdir: subdir.to_string(),
        dir,
        files,
    })
}

fn count(files: &BTreeMap<String, FileKind>, limits: Limits, _path: &str) -> Result<(), String> {
    if files.len() >= limits.max_files {
        return Err(format!(
            "commit has more than {} files (GITRELOAD_MAX_FILES)",
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

/// A symlink at `path` pointing to `target` must resolve inside the tree:
/// relative, and never climbing above the deployed root.
pub fn check_link(path: &str, target: &str) -> Result<(), String> {
    if target.starts_with('/') {
        return Err(format!(
            "symlink points outside the deployed tree (to {target})"
        ));
    }
    if target.is_empty() || target.contains('\0') {
        return Err("symlink has an empty or invalid target".into());
    }
    // `..` is allowed only as leading components: after a name, the name
    // might itself be a link (`d -> .`), and `d/..` would then climb out
    // physically while staying inside lexically.
    let mut depth: i64 = path.split('/').count() as i64 - 1;
    let mut seen_name = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if seen_name => {
                return Err(format!(
                    "symlink target {target} climbs with .. after a name; write it without"
                ));
            }
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!(
                        "symlink points outside the deployed tree (to {target})"
                    ));
                }
            }
            _ => seen_name = true,
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

    #[test]
    fn hidden_paths_at_any_depth() {
        assert!(is_hidden(".git"));
        assert!(is_hidden("rules/.hidden/x.yml"));
        assert!(!is_hidden("rules/x.yml"));
    }
}
