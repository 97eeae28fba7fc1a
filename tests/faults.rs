//! Nothing lost, nothing broken: hand edits, refusing applications,
//! hostile commits, full and read-only volumes, crashes and git server
//! faults, each made to happen for real.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::sidecar::{invalid_prometheus_yml, prometheus_yml, tree, Sidecar};
use support::*;

fn timestamp(event: &Value) -> SystemTime {
    humantime::parse_rfc3339(event["timestamp"].as_str().unwrap()).unwrap()
}

/// A TCP server on loopback that treats every connection with `answer`,
/// until dropped (and at most 2 minutes).
struct FakeServer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(ip: &str, answer: fn(std::net::TcpStream)) -> FakeServer {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || answer(stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request head, then answers 500 with a reason, like an
/// application refusing a config.
fn answer_500(mut stream: std::net::TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.read(&mut buf);
    let body = "refused: unknown field";
    let _ = write!(
        stream,
        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Accepts and says nothing, holding the connection for a minute.
fn answer_nothing(stream: std::net::TcpStream) {
    std::thread::sleep(Duration::from_secs(60));
    drop(stream);
}

/// Answers anything with bytes that are not the git protocol.
fn answer_garbage(mut stream: std::net::TcpStream) {
    let mut buf = [0u8; 1024];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.read(&mut buf);
    let _ = stream.write_all(b"zzzz\x00\xff\xfe not git at all \r\n\r\n");
}

// ---------------------------------------------------------------------------
// Drift

#[test]
fn edited_deleted_and_replaced_files_are_repaired_and_targets_reloaded() {
    let s = Sidecar::seeded_with_rules();
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), prometheus_yml("zero")).unwrap();
    let prom = Prometheus::start("127.0.0.50", dir.path());
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_INTERVAL", "1h")
        .env("GITRELOAD_TARGETS", prom.reload_url())
        .spawn();
    run.wait_for_event(WAIT, "reload confirmed on every target");
    let dest = s.dest();
    std::fs::write(dest.join("mine.txt"), "user file\n").unwrap();

    type BreakIt<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, BreakIt); 3] = [
        (
            "edited",
            Box::new(|| std::fs::write(dest.join("prometheus.yml"), "hand edit\n").unwrap()),
        ),
        (
            "deleted",
            Box::new(|| std::fs::remove_file(dest.join("rules/alerts.yml")).unwrap()),
        ),
        (
            "replaced",
            Box::new(|| {
                std::fs::write(dest.join("new.yml"), "other\n").unwrap();
                std::fs::rename(dest.join("new.yml"), dest.join("prometheus.yml")).unwrap();
            }),
        ),
    ];
    for (what, break_it) in cases {
        let cursor = run.cursor();
        let reloads = run.count_events("target reloaded");
        break_it();
        wait_until(
            &format!("the {what} file to be repaired"),
            Duration::from_secs(2),
            || {
                std::fs::read_to_string(dest.join("prometheus.yml"))
                    .is_ok_and(|c| c == prometheus_yml("one"))
                    && std::fs::read_to_string(dest.join("rules/alerts.yml"))
                        .is_ok_and(|c| c == "groups: []\n")
            },
        );
        let repaired = run.wait_for_event_after(cursor, WAIT, "drift repaired");
        assert!(
            repaired["paths"].as_str().unwrap().contains(".yml"),
            "{repaired}"
        );
        run.wait_for_event_count(WAIT, "target reloaded", reloads + 1);
    }
    assert_eq!(
        std::fs::read_to_string(dest.join("mine.txt")).unwrap(),
        "user file\n"
    );
    assert_eq!(run.count_events("drift repaired"), 3);
    let (_, metrics) = http_get(&format!("{}/metrics", prom.url()));
    assert!(metrics.contains("prometheus_config_last_reload_successful 1"));
    assert!(run.terminate().success());
}

#[test]
fn drift_report_mode_logs_once_and_leaves_the_edit() {
    let s = Sidecar::seeded_with_rules();
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_DRIFT", "report")
        .env("GITRELOAD_INTERVAL", "200ms")
        .spawn_deployed();
    std::fs::write(s.dest().join("prometheus.yml"), "hand edit\n").unwrap();
    run.wait_for_event(
        WAIT,
        "drift detected; left as it is (GITRELOAD_DRIFT=report)",
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(s.dest_file("prometheus.yml"), "hand edit\n");
    assert_eq!(
        run.count_events("drift detected; left as it is (GITRELOAD_DRIFT=report)"),
        1
    );
    assert_eq!(run.count_events("drift repaired"), 0);
    assert!(run.terminate().success());
}

#[test]
fn full_verification_by_hash_runs_every_verify_interval() {
    let s = Sidecar::seeded_with_rules();
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_INTERVAL", "1h")
        .env("GITRELOAD_VERIFY_INTERVAL", "300ms")
        .spawn_deployed();
    let verified = run.wait_for_event_count(WAIT, "destination verified", 3);
    assert_eq!(verified[0]["files"], 2, "{}", verified[0]);
    assert_eq!(verified[0]["drifted"], 0);
    assert!(run.terminate().success());
}

// ---------------------------------------------------------------------------
// The application refuses what the checker accepted

#[test]
fn config_every_prometheus_refuses_is_rolled_back_on_the_volume() {
    let s = Sidecar::seeded_with_rules();
    let port = free_port_on(&["127.0.0.51", "127.0.0.52"]);
    let proms = [
        Prometheus::start_on("127.0.0.51", port, &{
            assert!(s
                .gitreload_file()
                .arg("--once")
                .run_once(WAIT)
                .status
                .success());
            s.dest()
        }),
        Prometheus::start_on("127.0.0.52", port, &s.dest()),
    ];
    let targets = proms
        .iter()
        .map(|p| p.reload_url())
        .collect::<Vec<_>>()
        .join(",");
    let addr = free_addr("127.0.0.1");
    let mut run = s
        .gitreload_file()
        // A checker that accepts anything: version skew in miniature.
        .env("GITRELOAD_CHECK", "true")
        .env("GITRELOAD_TARGETS", &targets)
        .env("GITRELOAD_LISTEN", &addr)
        .spawn();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    run.wait_for_event(WAIT, "reload confirmed on every target");

    s.upstream.write("prometheus.yml", invalid_prometheus_yml());
    let bad = s
        .upstream
        .commit_and_push("accepted by the checker, refused by Prometheus");
    let rolled = run.wait_for_event(WAIT, "commit rolled back: every target refused it");
    assert_eq!(rolled["commit"], bad[..7]);
    assert!(
        rolled["error"].as_str().unwrap().contains("HTTP 500"),
        "{rolled}"
    );
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    for p in &proms {
        assert!(
            p.config().contains("marker: two"),
            "{} serves something else",
            p.addr()
        );
        // The rollback's own reload clears the failed-reload state.
        wait_until(
            &format!("{} to reload the restored config", p.addr()),
            WAIT,
            || p.last_reload_successful(),
        );
    }
    let (_, metrics) = http_get(&format!("http://{addr}/metrics"));
    assert!(
        metrics.contains(&format!(
            "gitreload_rejected_commit_info{{commit=\"{bad}\"}} 1"
        )),
        "{metrics}"
    );
    // The refused commit is not retried until upstream moves.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        run.count_events("commit rolled back: every target refused it"),
        1
    );
    s.upstream.write("prometheus.yml", prometheus_yml("three"));
    s.upstream.commit_and_push("three");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("three"), WAIT);
    assert!(run.terminate().success());
}

#[test]
fn one_replica_refusing_while_another_accepts_is_not_a_rollback() {
    let s = Sidecar::seeded_with_rules();
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    let prom = Prometheus::start("127.0.0.53", &s.dest());
    let refusing = FakeServer::start("127.0.0.54", answer_500);
    let targets = format!("{},http://{}/-/reload", prom.reload_url(), refusing.addr);
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_TARGETS", &targets)
        .spawn();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    run.wait_for_event_count_where(WAIT, 2, |v| {
        v["event"] == "target reload failed" && v["target"] == "127.0.0.54"
    });
    assert_eq!(
        run.count_events("commit rolled back: every target refused it"),
        0
    );
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("two"));
    assert!(prom.config().contains("marker: two"));
    assert!(run.terminate().success());
}

// ---------------------------------------------------------------------------
// Hostile or broken content

fn assert_rejected(s: &Sidecar, env: &[(&str, &str)], path: &str, reason: &str) {
    let before = s.dest_tree();
    let mut g = s.gitreload_file();
    for (k, v) in env {
        g = g.env(k, v);
    }
    let out = g.arg("--once").run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let rejected = out.events("commit rejected");
    assert_eq!(rejected.len(), 1, "{}", out.stdout);
    assert_eq!(rejected[0]["path"], path, "{}", out.stdout);
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains(reason),
        "{}",
        rejected[0]
    );
    assert_eq!(s.dest_tree(), before, "something was deployed");
}

#[test]
fn file_over_the_size_limit_rejects_the_commit() {
    let s = Sidecar::seeded_with_rules();
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    s.upstream.write("big/blob.bin", "x".repeat(4096));
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("big");
    assert_rejected(
        &s,
        &[("GITRELOAD_MAX_FILE_SIZE", "1KiB")],
        "big/blob.bin",
        "over the limit of 1024",
    );
}

#[test]
fn too_many_files_reject_the_commit() {
    let s = Sidecar::seeded_with_rules();
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    for i in 0..5 {
        s.upstream.write(&format!("many/{i}.yml"), "x\n");
    }
    s.upstream.commit_and_push("many");
    // Tree order, directories count: `many` and many/0..2 are the first
    // four entries; many/3 is one too many.
    assert_rejected(
        &s,
        &[("GITRELOAD_MAX_FILES", "4")],
        "many/3.yml",
        "more than 4 entries",
    );
}

/// Commits a tree that holds `name` (raw bytes) as a file, built with git
/// plumbing, since no filesystem would let the work tree hold it.
fn commit_raw_name(s: &Sidecar, name: &[u8]) {
    let up = &s.upstream;
    let blob = up
        .git(&["hash-object", "-w", "prometheus.yml"])
        .trim()
        .to_string();
    let head_tree = up.git(&["rev-parse", "HEAD^{tree}"]).trim().to_string();
    let mut entries: Vec<u8> = up.git(&["ls-tree", &head_tree]).into_bytes();
    entries.push(b'\n');
    entries.extend_from_slice(format!("100644 blob {blob}\t").as_bytes());
    entries.extend_from_slice(name);
    entries.push(b'\n');
    let tree = up.mktree(&entries);
    let head = up.head();
    let commit = up
        .git(&["commit-tree", &tree, "-p", &head, "-m", "raw name"])
        .trim()
        .to_string();
    up.git(&["update-ref", "refs/heads/main", &commit]);
    up.push();
}

#[test]
fn names_the_filesystem_cannot_hold_reject_the_commit() {
    let s = Sidecar::seeded_with_rules();
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    let long = "n".repeat(300);
    commit_raw_name(&s, long.as_bytes());
    assert_rejected(&s, &[], &long, "longer than 255 bytes");

    let t = Sidecar::seeded_with_rules();
    assert!(t
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    commit_raw_name(&t, b"bad-\xff-name.yml");
    let before = t.dest_tree();
    let out = t.gitreload_file().arg("--once").run_once(WAIT);
    assert_eq!(out.status.code(), Some(1));
    let rejected = &out.events("commit rejected")[0];
    assert!(
        rejected["path"].as_str().unwrap().starts_with("bad-"),
        "{rejected}"
    );
    assert!(rejected["reason"]
        .as_str()
        .unwrap()
        .contains("not valid UTF-8"));
    assert_eq!(t.dest_tree(), before);
}

#[test]
fn symlink_climbing_out_through_a_directory_link_is_rejected() {
    let s = Sidecar::seeded_with_rules();
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    s.upstream.symlink("here", ".");
    s.upstream.symlink("escape.yml", "here/../../etc/passwd");
    s.upstream.commit_and_push("escape through a link");
    assert_rejected(&s, &[], "escape.yml", "outside the deployed tree");
}

#[test]
fn damaged_mirror_is_discarded_and_cloned_afresh() {
    let s = Sidecar::seeded_with_rules();
    let mut run = s.gitreload_file().spawn_deployed();
    assert!(run.terminate().success());
    // Overwrite every object store file of the mirror with garbage.
    let objects = s.state().join("mirror.git/objects");
    for (path, _) in tree(&objects) {
        let full = objects.join(&path);
        let len = std::fs::metadata(&full).unwrap().len() as usize;
        std::fs::write(&full, vec![0x5a; len.max(1)]).unwrap();
    }
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    let mut run = s.gitreload_file().spawn();
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    assert!(
        run.count_events("mirror damaged; discarded, the next fetch clones afresh") >= 1,
        "{}",
        run.output_tail(20)
    );
    assert!(run.terminate().success());
}

// ---------------------------------------------------------------------------
// Resource faults

/// A tmpfs of `size` mounted at `path`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = clean_command("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs (tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path.to_path_buf())
    }

    fn remount(&self, option: &str) {
        let out = clean_command("mount")
            .args(["-o", &format!("remount,{option}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = clean_command("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn volume_that_fills_up_midway_keeps_the_previous_commit() {
    let s = Sidecar::seeded_with_rules();
    let _fs = Tmpfs::mount(&s.dest(), "256k");
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    let before = s.dest_tree();
    // "a" sorts first and fits; "z" cannot fit once "a" is written.
    s.upstream.write("a.yml", "a\n".repeat(10));
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.write("z-huge.bin", "z".repeat(400 << 10));
    s.upstream.commit_and_push("too big for the volume");
    let out = s.gitreload_file().arg("--once").run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let failed = &out.events("deploy failed")[0];
    assert!(
        failed["error"].as_str().unwrap().contains("z-huge.bin"),
        "{failed}"
    );
    assert_eq!(
        s.dest_tree(),
        before,
        "the volume is not the last good commit"
    );
}

#[test]
fn read_only_volume_fails_the_deploy_and_it_is_retried_later() {
    let s = Sidecar::seeded_with_rules();
    let fs = Tmpfs::mount(&s.dest(), "1m");
    let mut run = s.gitreload_file().spawn_deployed();
    let before = s.dest_tree();
    fs.remount("ro");
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    run.wait_for_event(WAIT, "deploy failed");
    run.wait_for_event(WAIT, "retry scheduled");
    assert_eq!(s.dest_tree(), before);
    fs.remount("rw");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    assert!(tree(&s.dest()).keys().all(|k| !k.contains(".gitreload-")));
    assert!(run.terminate().success());
}

#[test]
fn kill9_at_random_points_during_50_deploys_always_leaves_a_whole_commit() {
    let s = Sidecar::new();
    let version = |v: usize| {
        for i in 0..200 {
            s.upstream.write(
                &format!("files/f{i:03}.yml"),
                format!("version: {v}\nfile: {i}\n"),
            );
        }
        s.upstream
            .write("prometheus.yml", prometheus_yml(&v.to_string()));
        if v % 2 == 1 {
            s.upstream.write("odd-only.yml", "odd\n");
        } else if s.upstream.work_path().join("odd-only.yml").exists() {
            s.upstream.remove("odd-only.yml");
        }
        s.upstream.commit_and_push(&format!("version {v}"));
    };
    let mut killed_mid_deploy = 0;
    for round in 0..50 {
        version(round);
        let journal = s.state().join("deploy.journal");
        let mut run = s.gitreload_file().spawn();
        if round % 2 == 0 {
            // Anywhere in the run's start, fetch and deploy.
            std::thread::sleep(Duration::from_millis(fastrand_ms(round)));
        } else {
            // Inside the deploy, however slow the machine is to get there.
            let deadline = Instant::now() + WAIT;
            while !journal.exists() && run.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        if journal.exists() {
            killed_mid_deploy += 1;
        }
        run.kill9();
        let out = s.gitreload_file().arg("--once").run_once(WAIT);
        assert!(out.status.success(), "round {round}: {}", out.stdout);
        let dest = s.dest_tree();
        assert!(
            dest.keys().all(|k| !k.contains(".gitreload-")),
            "round {round}: temp files left"
        );
        assert_eq!(
            dest["prometheus.yml"],
            prometheus_yml(&round.to_string()),
            "round {round}"
        );
        assert!(dest
            .iter()
            .filter(|(k, _)| k.starts_with("files/"))
            .all(|(_, v)| v.starts_with(&format!("version: {round}\n"))));
        assert_eq!(
            dest.contains_key("odd-only.yml"),
            round % 2 == 1,
            "round {round}"
        );
        assert_eq!(
            dest.len(),
            201 + usize::from(round % 2 == 1),
            "round {round}"
        );
    }
    assert!(
        killed_mid_deploy >= 3,
        "only {killed_mid_deploy} of 50 kills landed mid-deploy"
    );
}

/// A kill delay that spreads over a run's start, fetch and deploy.
fn fastrand_ms(round: usize) -> u64 {
    // A fixed spread (no RNG dependency): 0..=390 ms, in a shuffled order.
    ((round * 37) % 40) as u64 * 10
}

// ---------------------------------------------------------------------------
// Git server faults

#[test]
fn git_daemon_outage_backs_off_and_the_pending_push_lands_on_return() {
    let s = Sidecar::seeded_with_rules();
    let mut daemon = GitDaemon::start(&s.upstream);
    let addr = free_addr("127.0.0.1");
    let mut run = s
        .gitreload(&daemon.url())
        .env("GITRELOAD_INTERVAL", "20s")
        .env("GITRELOAD_STALE_AFTER", "2s")
        .env("GITRELOAD_LISTEN", &addr)
        .spawn_deployed();
    daemon.stop();
    // A webhook makes the first failure happen now rather than in 20 s.
    http_post(&format!("http://{addr}/sync"), &[], "");
    let failures = run.wait_for_event_count(WAIT, "fetch failed", 4);
    let gaps: Vec<Duration> = failures
        .windows(2)
        .map(|w| timestamp(&w[1]).duration_since(timestamp(&w[0])).unwrap())
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(400)),
        "tight loop: {gaps:?}"
    );
    assert!(gaps[2] > gaps[0], "no backoff: {gaps:?}");
    wait_until("readiness to degrade", WAIT, || {
        http_get(&format!("http://{addr}/readyz")).0 == 503
    });
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("pushed during the outage");
    daemon.restart();
    s.wait_dest_file(
        "prometheus.yml",
        &prometheus_yml("two"),
        Duration::from_secs(30),
    );
    wait_until("readiness to recover", WAIT, || {
        http_get(&format!("http://{addr}/readyz")).0 == 200
    });
    assert!(run.is_running(), "gitreload crashed");
    assert!(run.terminate().success());
}

#[test]
fn silent_git_server_fails_within_the_fetch_timeout() {
    let s = Sidecar::seeded_with_rules();
    let server = FakeServer::start("127.0.0.1", answer_nothing);
    let started = Instant::now();
    let out = s
        .gitreload(&format!("git://{}/upstream.git", server.addr))
        .env("GITRELOAD_FETCH_TIMEOUT", "1s")
        .arg("--once")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let failed = &out.events("fetch failed")[0];
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("did not finish within 1s"),
        "{failed}"
    );
}

#[test]
fn git_server_answering_garbage_fails_cleanly() {
    let s = Sidecar::seeded_with_rules();
    let server = FakeServer::start("127.0.0.1", answer_garbage);
    for url in [
        format!("git://{}/upstream.git", server.addr),
        format!("http://{}/upstream.git", server.addr),
    ] {
        let out = s
            .gitreload(&url)
            .env("GITRELOAD_FETCH_TIMEOUT", "5s")
            .arg("--once")
            .run_once(WAIT);
        assert_eq!(out.status.code(), Some(1), "{url}: {}", out.stdout);
        assert_eq!(out.events("fetch failed").len(), 1, "{url}: {}", out.stdout);
        assert!(!s.dest().exists());
    }
}
