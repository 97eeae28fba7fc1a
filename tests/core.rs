//! The core pipeline against real git servers: from an upstream commit to a
//! validated config on the destination volume.

mod support;

use std::time::Duration;

use support::sidecar::{invalid_prometheus_yml, prometheus_yml, Sidecar};
use support::*;

fn assert_deployed_once(s: &Sidecar, url: &str) {
    let out = s.gitreload(url).arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    assert_eq!(s.dest_file("rules/alerts.yml"), "groups: []\n");
}

#[test]
fn repo_served_by_git_daemon_is_cloned_and_deployed() {
    let s = Sidecar::seeded_with_rules();
    let daemon = GitDaemon::start(&s.upstream);
    assert_deployed_once(&s, &daemon.url());
}

#[test]
fn repo_served_over_smart_http_is_cloned_and_deployed() {
    let s = Sidecar::seeded_with_rules();
    let http = SmartHttp::start(&s.upstream);
    assert_deployed_once(&s, &http.url());
}

#[test]
fn file_url_and_plain_path_repos_are_cloned_and_deployed() {
    let s = Sidecar::seeded_with_rules();
    assert_deployed_once(&s, &s.upstream.file_url());
    let t = Sidecar::seeded_with_rules();
    assert_deployed_once(&t, t.upstream.bare_path().to_str().unwrap());
}

#[test]
fn push_upstream_reaches_the_volume_within_one_interval() {
    let s = Sidecar::seeded_with_rules();
    let daemon = GitDaemon::start(&s.upstream);
    let mut run = s
        .gitreload(&daemon.url())
        .env("GITRELOAD_INTERVAL", "1s")
        .spawn_deployed();
    let cursor = run.cursor();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("second");
    let pushed = std::time::Instant::now();
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    // One interval plus the time of one sync.
    assert!(
        pushed.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        pushed.elapsed()
    );
    run.wait_for_event_after(cursor, WAIT, "config deployed");
    assert!(run.terminate().success());
}

#[test]
fn force_push_rewriting_history_is_followed() {
    let s = Sidecar::seeded_with_rules();
    let mut run = s.gitreload_file().spawn_deployed();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("second");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    // Rewrite: amend "second" into a different commit and force-push it.
    s.upstream
        .write("prometheus.yml", prometheus_yml("rewritten"));
    s.upstream
        .git(&["commit", "-q", "-a", "--amend", "-m", "rewritten"]);
    s.upstream.git(&["push", "-q", "--force", "origin", "main"]);
    s.wait_dest_file("prometheus.yml", &prometheus_yml("rewritten"), WAIT);
    assert!(run.terminate().success());
}

#[test]
fn force_pushing_an_older_commit_rolls_the_volume_back() {
    let s = Sidecar::seeded_with_rules();
    let first = s.upstream.head();
    let mut run = s.gitreload_file().spawn_deployed();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.write("rules/new.yml", "groups: []\n");
    s.upstream.commit_and_push("second");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    s.upstream.force_push_to(&first);
    s.wait_dest_file("prometheus.yml", &prometheus_yml("one"), WAIT);
    wait_until("rules/new.yml to be removed", WAIT, || {
        !s.dest().join("rules/new.yml").exists()
    });
    assert!(run.terminate().success());
}

#[test]
fn invalid_prometheus_config_never_reaches_the_volume() {
    let s = Sidecar::seeded_with_rules();
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_CHECK", "prometheus")
        .spawn_deployed();
    let before = std::fs::read(s.dest().join("prometheus.yml")).unwrap();

    s.upstream.write("prometheus.yml", invalid_prometheus_yml());
    let bad = s.upstream.commit_and_push("broken");
    let rejected = run.wait_for_event_where(WAIT, "the commit rejected by promtool", |v| {
        v["event"] == "commit rejected" && v["logger"] == "gitreload.check"
    });
    assert_eq!(rejected["commit"], bad[..7]);
    assert!(
        rejected["output"]
            .as_str()
            .unwrap()
            .contains("scrape_configz"),
        "{rejected}"
    );
    // Several more polls: the rejected commit is not retried, nothing changes.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        std::fs::read(s.dest().join("prometheus.yml")).unwrap(),
        before
    );
    assert_eq!(
        run.count_events("commit rejected"),
        1,
        "rejected commit retried"
    );

    s.upstream.write("prometheus.yml", prometheus_yml("fixed"));
    s.upstream.commit_and_push("fixed");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("fixed"), WAIT);
    assert!(run.terminate().success());
}

#[test]
fn checker_that_hangs_is_killed_and_the_commit_rejected() {
    let s = Sidecar::seeded_with_rules();
    let out = s
        .gitreload_file()
        .env("GITRELOAD_CHECK", "sleep 30")
        .env("GITRELOAD_CHECK_TIMEOUT", "500ms")
        .arg("--once")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("did not finish within 500ms"),
        "{}",
        out.stdout
    );
    assert!(!s.dest().join("prometheus.yml").exists());
}

#[test]
fn checker_runs_in_the_staging_directory_with_its_path_in_the_environment() {
    let s = Sidecar::seeded_with_rules();
    let seen = s.scratch().join("seen");
    let out = s
        .gitreload_file()
        .env(
            "GITRELOAD_CHECK",
            format!(
                "test \"$PWD\" = \"$GITRELOAD_STAGING_DIR\" && test -f prometheus.yml && pwd > {}",
                seen.display()
            ),
        )
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    let staging = std::fs::read_to_string(&seen).unwrap();
    assert!(
        staging.trim().starts_with(s.state().to_str().unwrap()),
        "{staging}"
    );
    assert!(
        !std::path::Path::new(staging.trim()).exists(),
        "staging dir left behind"
    );
}

#[test]
fn two_same_size_changes_within_one_second_are_both_deployed() {
    let s = Sidecar::seeded_with_rules();
    s.upstream.write("value.txt", "aaaa\n");
    s.upstream.commit_and_push("a");
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_INTERVAL", "100ms")
        .spawn();
    s.wait_dest_file("value.txt", "aaaa\n", WAIT);
    let mtime = || {
        std::fs::metadata(s.dest().join("value.txt"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let first_mtime = mtime();
    s.upstream.write("value.txt", "bbbb\n");
    s.upstream.commit_and_push("b");
    s.wait_dest_file("value.txt", "bbbb\n", WAIT);
    // Same size again, and the file's mtime second may not even change.
    s.upstream.write("value.txt", "cccc\n");
    s.upstream.commit_and_push("c");
    s.wait_dest_file("value.txt", "cccc\n", WAIT);
    assert!(mtime().duration_since(first_mtime).unwrap() < Duration::from_secs(5));
    assert!(run.terminate().success());
}

#[test]
fn removed_files_go_foreign_files_stay_and_dotfiles_never_appear() {
    let s = Sidecar::seeded_with_rules();
    s.upstream.write(".gitignore", "*.tmp\n");
    s.upstream.write(".github/workflows/ci.yml", "on: push\n");
    s.upstream.write("rules/.hidden.yml", "x\n");
    s.upstream.write("old.yml", "old\n");
    s.upstream.commit_and_push("with dotfiles");
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("foreign.txt"), "mine\n").unwrap();
    let mut run = s.gitreload_file().spawn();
    s.wait_dest_file("old.yml", "old\n", WAIT);
    s.upstream.remove("old.yml");
    s.upstream.commit_and_push("drop old");
    wait_until("old.yml to be removed", WAIT, || {
        !s.dest().join("old.yml").exists()
    });
    assert!(run.terminate().success());

    let tree = s.dest_tree();
    let names: Vec<&String> = tree.keys().collect();
    assert_eq!(
        names,
        ["foreign.txt", "prometheus.yml", "rules/alerts.yml"],
        "{tree:?}"
    );
    assert_eq!(tree["foreign.txt"], "mine\n");
}

#[test]
fn exec_bits_and_inside_symlinks_are_kept() {
    let s = Sidecar::seeded_with_rules();
    s.upstream.write_exec("hooks/run.sh", "#!/bin/sh\n");
    s.upstream.symlink("current.yml", "rules/alerts.yml");
    s.upstream.commit_and_push("exec and link");
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.dest().join("hooks/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let mode = std::fs::metadata(s.dest().join("prometheus.yml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(s.dest_tree()["current.yml"], "-> rules/alerts.yml");
}

#[test]
fn file_mode_setting_applies_to_created_files() {
    let s = Sidecar::seeded_with_rules();
    let out = s
        .gitreload_file()
        .env("GITRELOAD_FILE_MODE", "0640")
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.dest().join("prometheus.yml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn symlink_to_etc_passwd_rejects_the_commit_naming_the_path() {
    let s = Sidecar::seeded_with_rules();
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(out.status.success());
    let before = s.dest_tree();
    s.upstream.symlink("rules/passwd.yml", "/etc/passwd");
    s.upstream.write("prometheus.yml", prometheus_yml("evil"));
    s.upstream.commit_and_push("escape");
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let rejected = out.events("commit rejected");
    assert_eq!(rejected.len(), 1, "{}", out.stdout);
    assert_eq!(rejected[0]["path"], "rules/passwd.yml");
    assert!(rejected[0]["reason"]
        .as_str()
        .unwrap()
        .contains("/etc/passwd"));
    assert_eq!(
        s.dest_tree(),
        before,
        "something was deployed from the rejected commit"
    );
}

#[test]
fn ref_as_branch_tag_and_commit_id_each_deploy_the_right_content() {
    let s = Sidecar::seeded_with_rules();
    let first = s.upstream.head();
    s.upstream.tag("v1");
    s.upstream.git(&["push", "-q", "origin", "v1"]);
    s.upstream
        .write("prometheus.yml", prometheus_yml("production"));
    s.upstream.commit("production");
    s.upstream.push_branch("production");
    s.upstream.git(&["reset", "-q", "--hard", &first]);
    s.upstream
        .write("prometheus.yml", prometheus_yml("main-two"));
    s.upstream.commit_and_push("main two");

    let cases = [
        ("production", prometheus_yml("production")),
        ("v1", prometheus_yml("one")),
        (first.as_str(), prometheus_yml("one")),
        ("main", prometheus_yml("main-two")),
    ];
    for (reference, expected) in cases {
        let out = s
            .gitreload_file()
            .env("GITRELOAD_REF", reference)
            .arg("--once")
            .run_once(WAIT);
        assert!(out.status.success(), "{reference}: {}", out.stdout);
        assert_eq!(
            s.dest_file("prometheus.yml"),
            expected,
            "GITRELOAD_REF={reference}"
        );
    }
}

#[test]
fn default_ref_follows_the_remote_default_branch() {
    let s = Sidecar::seeded_with_rules();
    s.upstream.write("prometheus.yml", prometheus_yml("other"));
    s.upstream.commit("other");
    s.upstream.push_branch("other");
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    assert_eq!(out.events("config deployed")[0]["ref"], "refs/heads/main");
}

#[test]
fn missing_ref_fails_with_its_name_in_the_error() {
    let s = Sidecar::seeded_with_rules();
    let out = s
        .gitreload_file()
        .env("GITRELOAD_REF", "no-such-branch")
        .arg("--once")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(1));
    let failed = out.events("fetch failed");
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("\"no-such-branch\""),
        "{}",
        out.stdout
    );
    assert!(!s.dest().exists(), "destination created for a missing ref");

    let missing_commit = "0123456789abcdef0123456789abcdef01234567";
    let out = s
        .gitreload_file()
        .env("GITRELOAD_REF", missing_commit)
        .arg("--once")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.contains(missing_commit), "{}", out.stdout);
}

#[test]
fn subdir_deploys_only_that_directory() {
    let s = Sidecar::new();
    s.upstream
        .write("prometheus/prometheus.yml", prometheus_yml("p"));
    s.upstream
        .write("alertmanager/alertmanager.yml", "route: {}\n");
    s.upstream.commit_and_push("two apps");
    let out = s
        .gitreload_file()
        .env("GITRELOAD_SUBDIR", "prometheus")
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    let names: Vec<String> = s.dest_tree().into_keys().collect();
    assert_eq!(names, ["prometheus.yml"]);

    let out = s
        .gitreload_file()
        .env("GITRELOAD_SUBDIR", "nope")
        .arg("--once")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.contains("\\\"nope\\\" does not exist"),
        "{}",
        out.stdout
    );
}

#[test]
fn bad_environment_exits_2_naming_the_variable_before_touching_anything() {
    // Which variables are refused, and with what words, is the parser's
    // (tests/settings_errors.rs); here the binary's side of it.
    let s = Sidecar::seeded_with_rules();
    let out = Gitreload::new()
        .env("GITRELOAD_REPO", s.upstream.file_url())
        .env("GITRELOAD_DEST", s.dest())
        .env("GITRELOAD_STATE_DIR", s.state())
        .env("GITRELOAD_INTERVAL", "30")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "one line expected: {}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("GITRELOAD_INTERVAL=\"30\": expected a duration such as 500ms, 30s or 5m"),
        "{}",
        out.stderr
    );
    assert!(
        !s.dest().exists() && !s.state().exists(),
        "something was written"
    );
}

#[test]
fn password_in_repo_url_is_never_printed_in_a_settings_error() {
    let out = Gitreload::new()
        .env(
            "GITRELOAD_REPO",
            "https://user:hunter2-secret@127.0.0.1:1/x.git",
        )
        .env("GITRELOAD_DEST", "relative/dest")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("GITRELOAD_DEST"), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2"));
}

#[test]
fn legacy_cron_variables_are_accepted_with_a_deprecation_warning() {
    let s = Sidecar::seeded_with_rules();
    let out = Gitreload::new()
        .env("PROMETHEUS_CONFIG_REPO", s.upstream.file_url())
        .env("PROMETHEUS_CONFIG_DIR", s.dest())
        .env("GITRELOAD_STATE_DIR", s.state())
        .env("GITRELOAD_LISTEN", "off")
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    assert!(
        out.stdout
            .contains("PROMETHEUS_CONFIG_REPO is deprecated; set GITRELOAD_REPO"),
        "{}",
        out.stdout
    );
}

#[test]
fn restart_neither_reclones_nor_rewrites_identical_files() {
    let s = Sidecar::seeded_with_rules();
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(out.status.success());
    let inode = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(s.dest().join(p)).unwrap().ino()
    };
    let mirror_inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(s.state().join("mirror.git/HEAD"))
            .unwrap()
            .ino()
    };
    let before = (inode("prometheus.yml"), inode("rules/alerts.yml"));
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(out.status.success());
    assert!(out.events("config deployed").is_empty(), "{}", out.stdout);
    assert_eq!((inode("prometheus.yml"), inode("rules/alerts.yml")), before);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(s.state().join("mirror.git/HEAD"))
            .unwrap()
            .ino(),
        mirror_inode
    );
}

#[test]
fn lost_state_dir_is_rebuilt_without_rewriting_a_matching_volume() {
    let s = Sidecar::seeded_with_rules();
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(s.dest().join("prometheus.yml"))
            .unwrap()
            .ino()
    };
    let before = inode();
    std::fs::remove_dir_all(s.state()).unwrap();
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    assert_eq!(
        out.events("config deployed")[0]["files_written"],
        0,
        "{}",
        out.stdout
    );
    assert_eq!(inode(), before);
}

#[test]
fn kill9_during_a_large_deploy_is_completed_on_restart() {
    let s = Sidecar::new();
    for i in 0..2000 {
        s.upstream.write(
            &format!("targets/t{i:04}.yml"),
            format!("- targets: ['10.0.0.{}:9100']\n", i % 250),
        );
    }
    s.upstream.write("prometheus.yml", prometheus_yml("big"));
    s.upstream.commit_and_push("2000 files");
    let journal = s.state().join("deploy.journal");
    let mut run = s.gitreload_file().spawn();
    wait_until(
        "the deploy journal to appear",
        Duration::from_secs(60),
        || journal.exists(),
    );
    run.kill9();
    let partial = s.dest_tree().len();
    assert!(
        partial < 2001,
        "the deploy had already finished; the test proves nothing"
    );

    let out = s
        .gitreload_file()
        .arg("--once")
        .run_once(Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.stdout);
    assert!(
        out.stdout.contains("previous deploy was cut off"),
        "{}",
        out.stdout
    );
    let tree = s.dest_tree();
    assert_eq!(tree.len(), 2001);
    assert!(
        tree.keys().all(|k| !k.contains(".gitreload-")),
        "leftovers: {:?}",
        tree.keys()
            .filter(|k| k.contains(".gitreload-"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        tree["targets/t1999.yml"],
        "- targets: ['10.0.0.249:9100']\n"
    );
    assert!(!journal.exists());
}

#[test]
fn sigterm_stops_the_loop_cleanly() {
    let s = Sidecar::seeded_with_rules();
    let mut run = s.gitreload_file().spawn_deployed();
    let status = run.terminate();
    assert!(status.success(), "{status:?}");
    assert!(run.count_events("stopped") == 1, "{}", run.output_tail(5));
}

#[test]
fn mirror_is_rebuilt_before_its_packs_pile_up() {
    let s = Sidecar::seeded_with_rules();
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_INTERVAL", "100ms")
        .spawn_deployed();
    let packs = || {
        std::fs::read_dir(s.state().join("mirror.git/objects/pack"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                    .count()
            })
            .unwrap_or(0)
    };
    // Every fetch that brings objects adds a pack; gitreload does not repack.
    let mut most = 0;
    for i in 0..70 {
        s.upstream.write("counter.txt", format!("{i}\n"));
        s.upstream.commit_and_push(&format!("push {i}"));
        s.wait_dest_file("counter.txt", &format!("{i}\n"), WAIT);
        most = most.max(packs());
    }
    assert!(most <= 65, "{most} packs accumulated");
    assert!(
        run.count_events("compacting mirror") >= 1,
        "{}",
        run.output_tail(5)
    );
    assert!(packs() <= 10, "the rebuilt mirror has {} packs", packs());
    assert!(run.terminate().success());
}

#[test]
fn second_gitreload_on_the_same_state_dir_refuses_to_start() {
    let s = Sidecar::seeded_with_rules();
    let mut first = s
        .gitreload_file()
        .env("GITRELOAD_INTERVAL", "1h")
        .spawn_deployed();
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout
            .contains("another gitreload process uses this state directory"),
        "{}",
        out.stdout
    );
    assert!(first.terminate().success());
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
}

/// Every entry below `root`: files with their content, directories as
/// `dir/`, links as `-> target` (empty directories count).
fn entries(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut out = support::sidecar::tree(root);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .display()
                    .to_string();
                out.insert(format!("{rel}/"), String::new());
                stack.push(entry.path());
            }
        }
    }
    out
}

/// A running sidecar fed by `s`'s upstream over file://, syncing on POST.
fn on_demand(s: &Sidecar, check: Option<&str>) -> (RunningGitreload, String) {
    let listen = free_addr("127.0.0.1");
    let mut g = s
        .gitreload_file()
        .env("GITRELOAD_INTERVAL", "1h")
        .env("GITRELOAD_LISTEN", &listen)
        .env("GITRELOAD_LOG_LEVEL", "debug");
    if let Some(check) = check {
        g = g.env("GITRELOAD_CHECK", check);
    }
    let run = g.spawn_deployed();
    (run, format!("http://{listen}/sync"))
}

fn sync_now(run: &mut RunningGitreload, url: &str, event: &str) -> serde_json::Value {
    let cursor = run.cursor();
    let (status, body) = http_post(url, &[], "");
    assert_eq!(status, 202, "{body}");
    run.wait_for_event_after(cursor, WAIT, event)
}

#[test]
fn kept_staging_writes_only_what_changed_and_holds_exactly_the_new_tree() {
    let s = Sidecar::new();
    for i in 0..40 {
        s.upstream
            .write(&format!("rules/r{i:02}.yml"), format!("# {i}\n"));
    }
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.write("was_file", "a file\n");
    s.upstream.write("was_dir/inside.yml", "inside\n");
    s.upstream.write("gone/deep/x.yml", "x\n");
    s.upstream.commit_and_push("first");
    let (mut run, sync) = on_demand(&s, None);
    let first = run.events("commit staged");
    assert_eq!(first[0]["written"], 44, "{first:?}");

    // One file changed, one directory removed, a file turned into a
    // directory and a directory into a file.
    s.upstream.write("rules/r07.yml", "# seven\n");
    s.upstream.remove("gone");
    s.upstream.remove("was_file");
    s.upstream.write("was_file/now.yml", "now a directory\n");
    s.upstream.remove("was_dir");
    s.upstream.write("was_dir", "now a file\n");
    s.upstream.commit_and_push("second");
    let cursor = run.cursor();
    sync_now(&mut run, &sync, "config deployed");
    let staged = run.wait_for_event_after(cursor, WAIT, "commit staged");
    assert_eq!(staged["files"], 43, "{staged}");
    assert_eq!(staged["written"], 3, "{staged}");

    let dest = entries(&s.dest());
    assert_eq!(dest["rules/r07.yml"], "# seven\n");
    assert_eq!(dest["was_file/now.yml"], "now a directory\n");
    assert_eq!(dest["was_dir"], "now a file\n");
    assert!(!dest.contains_key("gone/"), "{dest:?}");
    assert_eq!(
        entries(&s.state().join("staging/tree")),
        dest,
        "the staging directory differs from the deployed tree"
    );
    assert!(run.terminate().success());
    assert!(
        !s.state().join("staging/tree").exists(),
        "staging left behind after exit"
    );
}

#[test]
fn what_a_checker_leaves_in_staging_is_cleared_before_the_next_check() {
    let s = Sidecar::seeded_with_rules();
    let first = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(first.status.success(), "{}", first.stdout);
    // Fails if it meets its own traces from the check before.
    let checker = "if [ -e stray.yml ] || grep -q tampered rules/alerts.yml; then \
                   echo 'traces of an earlier check'; exit 1; fi; \
                   touch stray.yml; echo '# tampered' >> rules/alerts.yml";
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("second");
    let (mut run, sync) = on_demand(&s, Some(checker));
    s.upstream.write("prometheus.yml", prometheus_yml("three"));
    s.upstream.commit_and_push("third");
    let deployed = sync_now(&mut run, &sync, "config deployed");
    assert_eq!(deployed["files_written"], 1, "{deployed}");
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("three"));
    assert_eq!(s.dest_file("rules/alerts.yml"), "groups: []\n");
    assert!(!s.dest().join("stray.yml").exists());
    assert!(
        run.events("commit rejected").is_empty(),
        "{:?}",
        run.lines()
    );
    assert!(run.terminate().success());
}

#[test]
fn checker_that_edits_a_staged_file_cannot_change_what_is_deployed() {
    let s = Sidecar::seeded_with_rules();
    let first = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(first.status.success(), "{}", first.stdout);
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("second");
    let out = s
        .gitreload_file()
        .env("GITRELOAD_CHECK", "echo '# tampered' >> prometheus.yml")
        .arg("--once")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("changed after it was staged"),
        "{}",
        out.stdout
    );
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
}

#[test]
fn directory_turned_file_replaces_ours_but_never_a_directory_holding_foreign_files() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.write("conf/a.yml", "a\n");
    s.upstream.write("local/b.yml", "b\n");
    s.upstream.commit_and_push("directories");
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    std::fs::write(s.dest().join("local/mine.yml"), "not gitreload's\n").unwrap();

    // `conf` holds only gitreload's files: it gives way.
    s.upstream.remove("conf");
    s.upstream.write("conf", "now a file\n");
    s.upstream.commit_and_push("conf is a file");
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    assert_eq!(s.dest_file("conf"), "now a file\n");

    // `local` holds a file someone else put there: it stays, and so does
    // the last good config.
    s.upstream.remove("local");
    s.upstream.write("local", "now a file\n");
    s.upstream.commit_and_push("local is a file");
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stdout.contains("remove it by hand"), "{}", out.stdout);
    assert_eq!(s.dest_file("local/b.yml"), "b\n");
    assert_eq!(s.dest_file("local/mine.yml"), "not gitreload's\n");
    assert_eq!(s.dest_file("conf"), "now a file\n");
}

/// A sidecar polling `url` every 200 ms, logging each `no change`.
fn polling_fast(s: &Sidecar, url: &str) -> RunningGitreload {
    s.gitreload(url)
        .env("GITRELOAD_INTERVAL", "200ms")
        .env("GITRELOAD_LOG_LEVEL", "debug")
        .spawn()
}

#[test]
fn polls_over_smart_http_keep_one_connection_alive() {
    let s = Sidecar::seeded_with_rules();
    let http = SmartHttp::start(&s.upstream);
    let mut run = polling_fast(&s, &http.url());
    run.wait_for_event_count(WAIT, "no change", 6);
    let polls: Vec<String> = http
        .requests()
        .into_iter()
        .filter(|r| r.contains(" GET /upstream.git/info/refs "))
        .collect();
    assert!(polls.len() >= 6, "{polls:?}");
    let connections: std::collections::BTreeSet<&str> =
        polls.iter().filter_map(|r| r.split(' ').next()).collect();
    assert!(
        connections.len() <= 2,
        "{} polls over {} connections: {polls:?}",
        polls.len(),
        connections.len()
    );
    assert!(run.terminate().success());
}

#[test]
fn repo_that_moved_is_followed_through_its_redirect() {
    let s = Sidecar::seeded_with_rules();
    let http = SmartHttp::start(&s.upstream);
    let out = s.gitreload(&http.moved_url()).arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    let requests = http.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains(" GET /moved/upstream.git/info/refs 301")),
        "{requests:?}"
    );
    // The rest of the fetch goes straight to where the repository is.
    assert!(
        requests
            .iter()
            .any(|r| r.contains(" POST /upstream.git/git-upload-pack 200")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("POST /moved/")),
        "{requests:?}"
    );

    // Through two redirects, the fetch still lands where the repository is.
    let t = Sidecar::seeded_with_rules();
    let http = SmartHttp::start(&t.upstream);
    let out = t
        .gitreload(&http.moved_twice_url())
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    assert_eq!(t.dest_file("prometheus.yml"), prometheus_yml("one"));
    let requests = http.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains(" POST /upstream.git/git-upload-pack 200")),
        "{requests:?}"
    );
}

/// Every file and directory below `root` with its modification time.
fn mtimes(root: &std::path::Path) -> std::collections::BTreeMap<String, std::time::SystemTime> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string();
            out.insert(rel, meta.modified().unwrap());
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

#[test]
fn no_change_polls_leave_the_mirror_untouched() {
    let s = Sidecar::seeded_with_rules();
    let daemon = GitDaemon::start(&s.upstream);
    let mut run = polling_fast(&s, &daemon.url());
    run.wait_for_event_count(WAIT, "no change", 2);
    let mirror = s.state().join("mirror.git");
    let before = mtimes(&mirror);
    let polls = run.count_events("no change");
    run.wait_for_event_count(WAIT, "no change", polls + 5);
    assert_eq!(
        mtimes(&mirror),
        before,
        "a no-change poll wrote to the mirror"
    );

    // A push is still fetched.
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("second");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    assert!(run.terminate().success());
}
