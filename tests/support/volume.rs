//! Deploys driven through the library: a destination volume, a state dir
//! and a sentinel tree beside them (outside the destination) in one temp
//! dir; commits given as `path -> File(content) | Link(target)`, staged into
//! a fresh directory and deployed by `gitreload::deploy::deploy`, the code
//! the sidecar runs.
//!
//! - `Volume::new()`: `dest()`, `state()`, `outside()` (the sentinel tree,
//!   seeded with a few files and directories), `outside_snapshot()`
//!   (everything but the destination and the state dir), `deploy(&Commit) ->
//!   Result<Report, String>`, `manifest()`, `drift_repair() -> Result<..>`
//!   (compares with the manifest and redeploys the live commit, as the
//!   sidecar's drift repair does), `snapshot(dir)` (a tree read without
//!   following links), `escaping_links()` (links on the destination whose
//!   target resolves outside it), `managed_tree()`.

use ::gitreload::deploy::{self, Destination, Known, Manifest, Options, Records, Report, Verify};
use ::gitreload::git::CommitId;
use ::gitreload::materialize::{FileKind, Staged};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// One entry of a commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    File(String),
    Link(String),
}

/// A commit's deployable tree: path -> entry.
pub type Commit = BTreeMap<String, Entry>;

/// Builds a commit from `(path, entry)` pairs.
pub fn commit(entries: &[(&str, Entry)]) -> Commit {
    entries
        .iter()
        .map(|(p, e)| (p.to_string(), e.clone()))
        .collect()
}

pub fn file(content: &str) -> Entry {
    Entry::File(content.to_string())
}

pub fn link(target: &str) -> Entry {
    Entry::Link(target.to_string())
}

/// A destination, a state dir and a sentinel tree in one temp dir.
pub struct Volume {
    dirs: TempDir,
    serial: usize,
}

/// How deep the volume sits in its temp dir: a link that climbs out of the
/// destination (on broken code) still lands inside the temp dir.
const NESTING: &str = "w1/w2/w3";

impl Volume {
    pub fn new() -> Volume {
        // tmpfs where there is one: deploys fsync, and a property test
        // deploys thousands of times.
        let shm = Path::new("/dev/shm");
        let dirs = if shm.is_dir() {
            TempDir::new_in(shm).unwrap()
        } else {
            TempDir::new().unwrap()
        };
        let volume = Volume { dirs, serial: 0 };
        let outside = volume.outside();
        for dir in ["keep", "b", "c/a"] {
            std::fs::create_dir_all(outside.join(dir)).unwrap();
        }
        for f in ["victim", "keep/victim", "a", "b/c", "c/a/b"] {
            std::fs::write(outside.join(f), "sentinel\n").unwrap();
        }
        volume
    }

    /// The directory holding `dest`, `state` and `outside`.
    pub fn base(&self) -> PathBuf {
        self.dirs.path().join(NESTING)
    }

    pub fn dest(&self) -> PathBuf {
        self.base().join("dest")
    }

    pub fn state(&self) -> PathBuf {
        self.base().join("state")
    }

    /// The sentinel tree beside the destination.
    pub fn outside(&self) -> PathBuf {
        self.base().join("outside")
    }

    /// Everything in the temp dir except the destination, the state dir
    /// and staging dirs: what no deploy may change.
    pub fn outside_snapshot(&self) -> Commit {
        let base = format!("{NESTING}/");
        snapshot(self.dirs.path())
            .into_iter()
            .filter(|(path, _)| {
                let Some(rest) = path.strip_prefix(&base) else {
                    return true;
                };
                !["dest/", "state/", "staging-"]
                    .iter()
                    .any(|p| rest.starts_with(p))
                    && rest != "dest"
                    && rest != "state"
            })
            .collect()
    }

    pub fn options() -> Options {
        Options {
            file_mode: 0o644,
            secret_file_mode: 0o600,
            owner: None,
            content_key: gitreload::state::ContentKey::from_bytes([7; 32]),
        }
    }

    fn records(&self) -> Records {
        std::fs::create_dir_all(self.state()).unwrap();
        Records::in_dir(&self.state())
    }

    /// The last manifest, if any.
    pub fn manifest(&self) -> Option<Manifest> {
        self.records().load_manifest()
    }

    /// Writes `commit` into a fresh staging directory, as materialize does.
    pub fn stage(&mut self, commit: &Commit) -> Staged {
        self.serial += 1;
        let dir = self.base().join(format!("staging-{}", self.serial));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = BTreeMap::new();
        for (path, entry) in commit {
            let full = dir.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            let kind = match entry {
                Entry::File(content) => {
                    std::fs::write(&full, content).unwrap();
                    FileKind::File {
                        sha256: hex::encode(sha2::Sha256::digest(content.as_bytes())),
                        executable: false,
                        secret: false,
                    }
                }
                Entry::Link(target) => {
                    std::os::unix::fs::symlink(target, &full).unwrap();
                    FileKind::Symlink {
                        target: target.clone(),
                    }
                }
            };
            files.insert(path.clone(), kind);
        }
        let id = format!("{:040x}", self.serial);
        Staged {
            commit: CommitId::parse(&id).unwrap(),
            subdir: String::new(),
            dir,
            files,
            redactions: Default::default(),
        }
    }

    fn deploy_staged(&self, staged: &Staged, verify: Verify) -> Result<Report, String> {
        let records = self.records();
        let previous = records.load_manifest();
        let extra = std::collections::BTreeSet::new();
        let result = deploy::deploy(
            staged,
            "refs/heads/main",
            Destination {
                dir: &self.dest(),
                records: &records,
                options: Volume::options(),
            },
            Known {
                manifest: previous.as_ref(),
                extra_managed: &extra,
                verify,
            },
        );
        let _ = std::fs::remove_dir_all(&staged.dir);
        result.map(|(_, report)| report).map_err(|e| e.to_string())
    }

    /// Deploys `commit` as the sidecar would after staging and checking it.
    pub fn deploy(&mut self, commit: &Commit) -> Result<Report, String> {
        let staged = self.stage(commit);
        self.deploy_staged(&staged, Verify::Stamp)
    }

    /// The sidecar's drift repair: what drifted from the manifest, and the
    /// live commit deployed again (`commit` is the live commit's tree).
    pub fn drift_repair(&mut self, commit: &Commit) -> (Vec<String>, Result<Report, String>) {
        let manifest = self.manifest().expect("a live commit");
        let drifted = deploy::drifted(&self.dest(), &manifest, Verify::Stamp, Volume::options());
        let staged = self.stage(commit);
        (drifted, self.deploy_staged(&staged, Verify::Stamp))
    }

    /// The destination as `path -> entry` for every path of the manifest
    /// that is on disk, read without following links.
    pub fn managed_tree(&self) -> Commit {
        let Some(manifest) = self.manifest() else {
            return Commit::new();
        };
        let snapshot = snapshot(&self.dest());
        manifest
            .files
            .keys()
            .filter_map(|p| snapshot.get(p).map(|e| (p.clone(), e.clone())))
            .collect()
    }

    /// Links on the destination whose target, resolved, is not inside it.
    pub fn escaping_links(&self) -> Vec<String> {
        let dest = std::fs::canonicalize(self.dest()).unwrap();
        snapshot(&dest)
            .into_iter()
            .filter(|(_, e)| matches!(e, Entry::Link(_)))
            .filter(|(path, _)| match std::fs::canonicalize(dest.join(path)) {
                Ok(resolved) => !resolved.starts_with(&dest),
                // Dangling: judged by its text, lexically.
                Err(_) => {
                    let target = std::fs::read_link(dest.join(path)).unwrap();
                    let mut depth = path.matches('/').count() as i64;
                    target.is_absolute()
                        || target.components().any(|c| {
                            match c {
                                std::path::Component::ParentDir => depth -= 1,
                                std::path::Component::Normal(_) => depth += 1,
                                _ => {}
                            }
                            depth < 0
                        })
                }
            })
            .map(|(path, _)| path)
            .collect()
    }
}

/// Everything below `dir` as `path -> entry`, links not followed;
/// directories appear as `Entry::File("<dir>")`.
pub fn snapshot(dir: &Path) -> Commit {
    let mut out = Commit::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = e.file_type().unwrap();
            let entry = if kind.is_symlink() {
                Entry::Link(
                    std::fs::read_link(e.path())
                        .unwrap()
                        .to_string_lossy()
                        .into(),
                )
            } else if kind.is_dir() {
                stack.push((e.path(), path.clone()));
                Entry::File("<dir>".into())
            } else {
                Entry::File(std::fs::read_to_string(e.path()).unwrap_or_default())
            };
            out.insert(path, entry);
        }
    }
    out
}
