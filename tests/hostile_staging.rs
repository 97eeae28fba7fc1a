//! A hostile commit against the staging directory and the state dir: what
//! a commit can make gitreload hold, write, remember and retry. Each test
//! is named for the attack it stops, with the real binary and a real
//! upstream.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::sidecar::{prometheus_yml, Sidecar};

const T: Duration = Duration::from_secs(30);

/// Every file and directory below `root` (links not followed).
fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(entry.path());
            }
        }
        out.push((path, meta));
    }
    out
}

/// How many times the checker script ran.
fn runs(count: &Path) -> usize {
    std::fs::read_to_string(count)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// A checker that counts its runs in `count`, then does `then`.
fn counting_checker(count: &Path, then: &str) -> String {
    format!("echo run >> '{}'; {then}", count.display())
}

// ---------------------------------------------------------------------------
// The state dir

/// Others on the machine (a sidecar's neighbours, a backup agent) must not
/// read the mirror (its git config decides the ssh command), the manifest
/// or the keys.
#[test]
fn state_dir_gives_nothing_to_group_or_others() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    let out = s.gitreload_file().arg("--once").run_once(T);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let open: Vec<String> = walk(&s.state())
        .into_iter()
        .filter(|(_, meta)| !meta.file_type().is_symlink())
        .filter(|(_, meta)| meta.permissions().mode() & 0o077 != 0)
        .map(|(path, meta)| format!("{} {:o}", path.display(), meta.permissions().mode()))
        .collect();
    assert!(open.is_empty(), "readable by group or others: {open:#?}");
}

/// Whoever reads the manifest (a backup, a support bundle) must not be
/// able to test guesses of a substituted password against its hash.
#[test]
fn manifest_gives_no_plain_hash_to_test_a_secret_against() {
    let s = Sidecar::new();
    s.upstream.write(
        "prometheus.yml",
        "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: node\n    \
         authorization:\n      credentials: '${env:PROM_TOKEN}'\n    \
         static_configs:\n      - targets: ['127.0.0.1:9']\n",
    );
    s.upstream.write("rules.yml", "groups: []\n");
    s.upstream.commit_and_push("token");
    let run = || {
        s.gitreload_file()
            .env("PROM_TOKEN", "hunter2")
            .env("GITRELOAD_EXPAND", "prometheus.yml")
            .env("GITRELOAD_EXPAND_ENV", "PROM_TOKEN")
            .arg("--once")
            .run_once(T)
    };
    let out = run();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let deployed = std::fs::read(s.dest().join("prometheus.yml")).unwrap();
    assert!(String::from_utf8_lossy(&deployed).contains("hunter2"));
    let plain = hex::encode(Sha256::digest(&deployed));
    for (path, meta) in walk(&s.state()) {
        if !meta.is_file() {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string();
        assert!(
            !text.contains(&plain),
            "{} holds the plain SHA-256 of a secret file",
            path.display()
        );
    }
    // The plain file keeps its plain hash.
    let manifest = std::fs::read_to_string(s.state().join("manifest.json")).unwrap();
    let rules = hex::encode(Sha256::digest(b"groups: []\n"));
    assert!(manifest.contains(&rules), "{manifest}");

    // The keyed hash compares exactly: a new process stages the secret
    // again and finds the destination already equal.
    let out = run();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let deployed = out.events("config deployed");
    assert_eq!(deployed.len(), 1, "{}", out.stdout);
    assert_eq!(deployed[0]["files_written"], 0, "{}", out.stdout);
}

/// GITRELOAD_DEST naming the state dir through a symlink would let every
/// deploy overwrite the mirror's git config (which chooses the ssh command).
#[test]
fn dest_through_a_link_into_the_state_dir_is_a_settings_error() {
    let s = Sidecar::new();
    std::fs::create_dir_all(s.state().join("mirror")).unwrap();
    let link = s.scratch().join("volume");
    std::os::unix::fs::symlink(s.state(), &link).unwrap();
    for dest in [link.join("mirror"), s.scratch().join("../state")] {
        let out = s
            .gitreload_file()
            .env("GITRELOAD_DEST", &dest)
            .arg("--once")
            .run_once(T);
        assert_eq!(out.status.code(), Some(2), "{}\n{}", out.stdout, out.stderr);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("GITRELOAD_DEST") && text.contains("GITRELOAD_STATE_DIR"),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Rejections that stay rejected

/// A commit that fails the checker must not run the checker again (nor
/// reach the volume) just because the process restarted.
#[test]
fn rejected_commit_is_not_checked_again_after_a_restart() {
    let s = Sidecar::new();
    s.upstream
        .write("prometheus.yml", prometheus_yml("refused"));
    s.upstream.commit_and_push("refused");
    let count = s.scratch().join("checks");
    let check = counting_checker(&count, "exit 1");
    let mut g = s.gitreload_file().env("GITRELOAD_CHECK", &check).spawn();
    g.wait_for_event(T, "commit rejected");
    g.terminate();
    assert_eq!(runs(&count), 1);

    let mut g = s.gitreload_file().env("GITRELOAD_CHECK", &check).spawn();
    // Several polls, each of which would have checked the commit again.
    g.wait_for_event_count(T, "newest commit is still the rejected one", 3);
    g.terminate();
    assert_eq!(runs(&count), 1, "{}", g.output_tail(30));
    assert!(s.dest_tree().is_empty());

    // Upstream moves: the new commit is checked.
    s.upstream.write("prometheus.yml", prometheus_yml("fixed"));
    s.upstream.commit_and_push("fixed");
    let check = counting_checker(&count, "exit 0");
    let out = s
        .gitreload_file()
        .env("GITRELOAD_CHECK", &check)
        .arg("--once")
        .run_once(T);
    assert!(out.status.success(), "{}", out.stdout);
    assert_eq!(runs(&count), 2);
    assert!(!s.state().join("rejected.json").exists());
}

/// A commit that kills gitreload while it is staged or checked (a tree or
/// blob that exhausts memory, here a checker that kills its parent) must not
/// put the sidecar in a crash loop: after two deaths it is rejected.
#[test]
fn commit_that_kills_gitreload_twice_is_not_tried_a_third_time() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("deadly"));
    s.upstream.commit_and_push("deadly");
    let count = s.scratch().join("checks");
    let check = counting_checker(&count, "kill -9 $PPID; exit 1");
    for _ in 0..2 {
        let mut g = s.gitreload_file().env("GITRELOAD_CHECK", &check).spawn();
        g.wait_exit(T);
    }
    assert_eq!(runs(&count), 2);
    let mut g = s.gitreload_file().env("GITRELOAD_CHECK", &check).spawn();
    let rejected = g.wait_for_event(T, "commit rejected");
    assert!(
        rejected["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stopped 2 times")),
        "{rejected}"
    );
    g.wait_for_event_count(T, "newest commit is still the rejected one", 2);
    assert!(g.is_running());
    g.terminate();
    assert_eq!(runs(&count), 2);
}

// ---------------------------------------------------------------------------
// Sizes checked before content is held

/// A symlink's target is a blob: a huge one must be refused by its size,
/// like a file's.
#[test]
fn symlink_blob_over_the_size_limit_is_rejected() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.symlink("long", &"x".repeat(300));
    s.upstream.commit_and_push("long link");
    let out = s
        .gitreload_file()
        .env("GITRELOAD_MAX_FILE_SIZE", "200")
        .arg("--once")
        .run_once(T);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let rejected = out.events("commit rejected");
    assert_eq!(rejected.len(), 1, "{}", out.stdout);
    assert_eq!(rejected[0]["path"], "long");
    let reason = rejected[0]["reason"].as_str().unwrap();
    assert!(reason.contains("GITRELOAD_MAX_FILE_SIZE"), "{reason}");
    assert!(s.dest_tree().is_empty());
}

/// Empty directories cost as much as files to write and compare: a tree of
/// thousands of them must not slip under GITRELOAD_MAX_FILES.
#[test]
fn directories_count_against_max_files() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    let mut deep = String::from("d");
    for _ in 0..6 {
        deep.push_str("/d");
    }
    std::fs::create_dir_all(s.upstream.work_path().join(&deep)).unwrap();
    s.upstream.write(&format!("{deep}/keep"), "x");
    s.upstream.commit_and_push("deep");
    let out = s
        .gitreload_file()
        .env("GITRELOAD_MAX_FILES", "5")
        .arg("--once")
        .run_once(T);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let rejected = out.events("commit rejected");
    assert_eq!(rejected.len(), 1, "{}", out.stdout);
    let reason = rejected[0]["reason"].as_str().unwrap();
    assert!(reason.contains("GITRELOAD_MAX_FILES"), "{reason}");
}

/// A path the filesystem refuses (here longer than PATH_MAX, built with
/// git's plumbing) fails the same way at every retry: it must reject the
/// commit, naming the path, not be retried forever as an I/O error.
#[test]
fn name_the_filesystem_refuses_rejects_the_commit() {
    let s = Sidecar::new();
    let up = &s.upstream;
    let mktree = |line: String| -> String { up.mktree(line.as_bytes()) };
    let blob = {
        up.write("seed", "deep\n");
        up.git(&["hash-object", "-w", "seed"]).trim().to_string()
    };
    let name = "n".repeat(250);
    let mut tree = mktree(format!("100644 blob {blob}\tfile\n"));
    for _ in 0..20 {
        tree = mktree(format!("040000 tree {tree}\t{name}\n"));
    }
    let root = mktree(format!("040000 tree {tree}\tdeep\n"));
    let commit = up
        .git(&["commit-tree", &root, "-m", "deep"])
        .trim()
        .to_string();
    up.git(&["push", "-q", "origin", &format!("{commit}:refs/heads/main")]);

    let mut g = s.gitreload_file().spawn();
    let rejected = g.wait_for_event(T, "commit rejected");
    let path = rejected["path"].as_str().unwrap();
    assert!(path.starts_with("deep/nnn"), "{rejected}");
    assert!(
        rejected["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refuses")),
        "{rejected}"
    );
    g.terminate();
}

/// A link whose target goes through something the commit does not hold as
/// a directory (here a link someone else put on the volume) would lead the
/// application wherever that thing points.
#[test]
fn link_through_a_path_the_commit_does_not_hold_is_rejected() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.symlink("passwd", "foreign/etc/passwd");
    s.upstream.commit_and_push("through foreign");
    let out = s.gitreload_file().arg("--once").run_once(T);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let rejected = out.events("commit rejected");
    assert_eq!(rejected.len(), 1, "{}", out.stdout);
    assert_eq!(rejected[0]["path"], "passwd");
    assert!(s.dest_tree().is_empty());
}

// ---------------------------------------------------------------------------
// Writes confined to the staging root

/// A checker (or anything it runs) that swaps the staging tree for a link
/// to another directory must not make the next sync delete that
/// directory's files and write the next commit into it.
#[test]
fn checker_that_swaps_the_staging_tree_for_a_link_cannot_redirect_writes() {
    let s = Sidecar::new();
    let sentinel = s.scratch().join("sentinel");
    std::fs::create_dir_all(&sentinel).unwrap();
    std::fs::write(sentinel.join("keep.txt"), "precious\n").unwrap();
    let before = support::sidecar::tree(&sentinel);
    let flag = s.scratch().join("swapped");
    let check = format!(
        "if [ ! -e '{flag}' ]; then touch '{flag}'; cd .. && mv tree tree.old && \
         ln -s '{sentinel}' tree; exit 1; fi; exit 0",
        flag = flag.display(),
        sentinel = sentinel.display()
    );
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    let mut g = s.gitreload_file().env("GITRELOAD_CHECK", &check).spawn();
    g.wait_for_event(T, "commit rejected");
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.write("rules/a.yml", "groups: []\n");
    s.upstream.commit_and_push("two");
    g.wait_for_event(T, "config deployed");
    g.terminate();
    assert_eq!(
        support::sidecar::tree(&sentinel),
        before,
        "{}",
        g.output_tail(30)
    );
    assert!(s.dest_file("prometheus.yml").contains("marker: two"));
}

/// A commit rejected for a secret the process lacks (an unset variable)
/// is tried again by a process started with it: the fix lives outside git,
/// and a restart is how an operator supplies it.
#[test]
fn commit_rejected_for_a_missing_secret_is_tried_again_after_a_restart() {
    let s = Sidecar::new();
    s.upstream.write(
        "prometheus.yml",
        "global:\n  scrape_interval: 15s\n  external_labels:\n    token: '${env:PROM_TOKEN}'\n",
    );
    s.upstream.commit_and_push("token");
    let run = |token: Option<&str>| {
        let mut g = s
            .gitreload_file()
            .env("GITRELOAD_EXPAND", "prometheus.yml")
            .env("GITRELOAD_EXPAND_ENV", "PROM_TOKEN")
            .arg("--once");
        if let Some(t) = token {
            g = g.env("PROM_TOKEN", t);
        }
        g.run_once(T)
    };
    let out = run(None);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert_eq!(out.events("commit rejected").len(), 1, "{}", out.stdout);
    let out = run(Some("now-set"));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(s.dest_file("prometheus.yml").contains("now-set"));
}
