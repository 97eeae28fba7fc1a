//! A gitreload scenario: an upstream repo, a destination volume and a state
//! directory in temp dirs, plus the environment that points gitreload at
//! them; and helpers to read the destination as a test sees it.

use super::*;
use std::collections::BTreeMap;
use tempfile::TempDir;

/// An upstream, a destination and a state dir for one test.
pub struct Sidecar {
    pub upstream: Upstream,
    dirs: TempDir,
}

impl Sidecar {
    pub fn new() -> Sidecar {
        Sidecar {
            upstream: Upstream::new(),
            dirs: TempDir::new().unwrap(),
        }
    }

    /// A scenario whose upstream holds one commit: a valid `prometheus.yml`
    /// (marker `one`).
    pub fn seeded() -> Sidecar {
        let s = Sidecar::new();
        s.upstream.write("prometheus.yml", prometheus_yml("one"));
        s.upstream.commit_and_push("one");
        s
    }

    /// Like [`Sidecar::seeded`], with an empty rules file
    /// `rules/alerts.yml` (`groups: []`) in the same commit: two files in
    /// two directories.
    pub fn seeded_with_rules() -> Sidecar {
        let s = Sidecar::new();
        s.upstream.write("prometheus.yml", prometheus_yml("one"));
        s.upstream.write("rules/alerts.yml", "groups: []\n");
        s.upstream.commit_and_push("one");
        s
    }

    /// The shared volume gitreload keeps in step.
    pub fn dest(&self) -> PathBuf {
        self.dirs.path().join("dest")
    }

    /// gitreload's private state.
    pub fn state(&self) -> PathBuf {
        self.dirs.path().join("state")
    }

    /// A scratch directory for the test's own files.
    pub fn scratch(&self) -> PathBuf {
        let p = self.dirs.path().join("scratch");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// gitreload pointed at `repo_url`, this dest and state, JSON logs, no
    /// HTTP server, a short interval.
    pub fn gitreload(&self, repo_url: &str) -> Gitreload {
        Gitreload::new()
            .env("GITRELOAD_REPO", repo_url)
            .env("GITRELOAD_DEST", self.dest())
            .env("GITRELOAD_STATE_DIR", self.state())
            .env("GITRELOAD_INTERVAL", "300ms")
            .env("GITRELOAD_LISTEN", "off")
            .env("GITRELOAD_LOG_LEVEL", "debug")
    }

    /// gitreload on the upstream's file:// URL.
    pub fn gitreload_file(&self) -> Gitreload {
        self.gitreload(&self.upstream.file_url())
    }

    /// The destination as `path -> content` (`-> target` for symlinks).
    pub fn dest_tree(&self) -> BTreeMap<String, String> {
        tree(&self.dest())
    }

    /// Content of one destination file ("" when missing).
    pub fn dest_file(&self, path: &str) -> String {
        std::fs::read_to_string(self.dest().join(path)).unwrap_or_default()
    }

    /// Waits until the destination file has exactly `content`.
    pub fn wait_dest_file(&self, path: &str, content: &str, timeout: Duration) {
        let full = self.dest().join(path);
        wait_until(
            &format!("{} to hold {content:?}", full.display()),
            timeout,
            || std::fs::read_to_string(&full).is_ok_and(|c| c == content),
        );
    }
}

/// Every entry below `root` as `relative path -> content`; symlinks as
/// `-> target`; directories are implied.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("-> {}", target.display()));
            } else if kind.is_dir() {
                stack.push(path);
            } else {
                out.insert(
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string(),
                );
            }
        }
    }
    out
}

/// A valid Prometheus config; `marker` makes each version distinct.
pub fn prometheus_yml(marker: &str) -> String {
    format!(
        "global:\n  scrape_interval: 15s\n  external_labels:\n    marker: {marker}\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:9']\n"
    )
}

/// A Prometheus config promtool rejects (unknown field).
pub fn invalid_prometheus_yml() -> String {
    "global:\n  scrape_interval: 15s\nscrape_configz:\n  - job_name: broken\n".to_string()
}
