//! Writes stay on the destination: links planted by a commit, by an earlier
//! commit or by someone else on the volume never redirect a write, rename
//! or delete of gitreload's to a place outside it.

mod support;

use std::path::Path;
use std::time::Duration;

use support::sidecar::{prometheus_yml, Sidecar};
use support::volume::{commit, file, link, snapshot, Volume};
use support::*;

const T: Duration = Duration::from_secs(30);

/// A sentinel tree beside the destination, read back later to prove that
/// nothing in it changed.
fn sentinel(dir: &Path) -> std::path::PathBuf {
    let sentinel = dir.join("sentinel");
    std::fs::create_dir_all(sentinel.join("inner")).unwrap();
    std::fs::write(sentinel.join("alerts.yml"), "sentinel\n").unwrap();
    std::fs::write(sentinel.join("inner/file"), "sentinel\n").unwrap();
    sentinel
}

/// Commit 1 holds `d/a -> ..` (the destination itself: allowed). Commit 2
/// makes `d/a` a directory holding `x -> ..` (`d`: allowed) and writes
/// below `x/`. Written through the old `d/a`, the new link lands at the top
/// as `x -> ..`, the volume's parent, and the files below `x/` would be
/// written there, over the sentinel beside the destination.
#[test]
fn two_commit_link_escape_writes_nothing_outside_the_destination() {
    let mut volume = Volume::new();
    let before = volume.outside_snapshot();
    let first = commit(&[
        ("prometheus.yml", file("one\n")),
        ("d/a", link("..")),
        ("d/keep", file("keep\n")),
    ]);
    volume.deploy(&first).unwrap();
    let second = commit(&[
        ("prometheus.yml", file("two\n")),
        ("d/a/x", link("..")),
        ("d/keep", file("keep\n")),
        ("x/outside/victim", file("overwritten\n")),
        ("x/outside/pwned", file("written outside\n")),
    ]);
    let result = volume.deploy(&second);

    assert_eq!(
        volume.outside_snapshot(),
        before,
        "something outside the destination changed"
    );
    assert_eq!(volume.escaping_links(), Vec::<String>::new());
    result.unwrap();
    assert_eq!(volume.managed_tree(), second);
    assert!(volume
        .dest()
        .join("d/a")
        .symlink_metadata()
        .unwrap()
        .is_dir());
}

/// Someone on the volume replaces the managed directory `rules/` by a link
/// to a directory outside. The next commit changes a file in it: the link
/// is removed, `rules/` is a directory again with the commit's files, and
/// nothing is written through the link.
#[test]
fn managed_directory_replaced_by_a_link_is_put_back_without_writing_through_it() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.write("rules/alerts.yml", "groups: []\n");
    s.upstream.commit_and_push("one");
    let sentinel = sentinel(&s.scratch());
    let before = snapshot(&sentinel);
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_INTERVAL", "300ms")
        .spawn();
    run.wait_for_event(T, "config deployed");

    let rules = s.dest().join("rules");
    std::fs::remove_dir_all(&rules).unwrap();
    std::os::unix::fs::symlink(&sentinel, &rules).unwrap();
    s.upstream
        .write("rules/alerts.yml", "groups: [{name: two, rules: []}]\n");
    s.upstream.write("rules/more.yml", "groups: []\n");
    s.upstream.commit_and_push("two");

    wait_until_or(
        "rules/ to be a directory holding commit two",
        T,
        || {
            rules.symlink_metadata().is_ok_and(|m| m.is_dir())
                && s.dest_file("rules/alerts.yml") == "groups: [{name: two, rules: []}]\n"
                && s.dest_file("rules/more.yml") == "groups: []\n"
        },
        || run.output_tail(30),
    );
    assert_eq!(
        snapshot(&sentinel),
        before,
        "the sentinel was written through the link"
    );
    assert!(run.terminate().success());
    assert_eq!(
        snapshot(&sentinel),
        before,
        "the sentinel was written through the link"
    );
}

/// The same with no new commit: the drift repair itself puts `rules/` back.
#[test]
fn drift_repair_puts_back_a_managed_directory_replaced_by_a_link() {
    let mut volume = Volume::new();
    let tree = commit(&[
        ("prometheus.yml", file("one\n")),
        ("rules/alerts.yml", file("groups: []\n")),
        ("rules/more.yml", file("groups: []\n")),
    ]);
    volume.deploy(&tree).unwrap();
    let before = snapshot(&volume.outside());
    let rules = volume.dest().join("rules");
    std::fs::remove_dir_all(&rules).unwrap();
    std::os::unix::fs::symlink(volume.outside(), &rules).unwrap();
    let (drifted, repaired) = volume.drift_repair(&tree);
    assert_eq!(
        snapshot(&volume.outside()),
        before,
        "written through the link"
    );
    assert_eq!(drifted, vec!["rules/alerts.yml", "rules/more.yml"]);
    repaired.unwrap();
    assert!(rules.symlink_metadata().unwrap().is_dir());
    assert_eq!(volume.managed_tree(), tree);
}

/// A link gitreload did not make stands where a new commit needs a
/// directory: the deploy stops, naming it, and the last good config stays
/// live, byte for byte.
#[test]
fn foreign_link_in_the_way_of_a_new_path_stops_the_deploy_and_names_it() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    let out = s.gitreload_file().arg("--once").run_once(T);
    assert!(out.status.success(), "{}", out.stdout);
    let sentinel = sentinel(&s.scratch());
    let before = snapshot(&sentinel);
    let live = snapshot(&s.dest());
    std::os::unix::fs::symlink(&sentinel, s.dest().join("rules")).unwrap();

    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.write("rules/alerts.yml", "groups: []\n");
    s.upstream.commit_and_push("two");
    let out = s.gitreload_file().arg("--once").run_once(T);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let failed = out.events("deploy failed");
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    let error = failed[0]["error"].as_str().unwrap();
    let named = s.dest().join("rules");
    assert!(
        error.contains(&format!("{} is a symbolic link", named.display())),
        "{error}"
    );
    assert_eq!(snapshot(&sentinel), before, "written through the link");
    let mut now = snapshot(&s.dest());
    assert_eq!(
        now.remove("rules"),
        Some(link(&sentinel.display().to_string())),
        "the foreign link is not gitreload's to remove"
    );
    assert_eq!(now, live, "the last good config is not live");
}
