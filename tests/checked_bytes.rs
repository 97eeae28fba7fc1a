//! Nothing reaches the volume that the checker did not pass in that exact
//! form, whatever starts the deploy: a new commit, a drift repair or a
//! rollback. A `${file:}` secret that changes after a commit was checked
//! makes the commit's staged bytes different; repair and rollback must not
//! publish those bytes unchecked.

mod support;

use std::path::{Path, PathBuf};

use support::sidecar::{invalid_prometheus_yml, prometheus_yml, Sidecar};
use support::*;

/// A checker that records every `app.yml` it passes, refuses one holding
/// `REFUSE`, and (to change a secret between a check and a rollback)
/// rewrites the secret when the commit it checks carries `rollback-me`.
struct RecordingChecker {
    script: PathBuf,
    passed: PathBuf,
    secret: PathBuf,
}

impl RecordingChecker {
    fn new(scratch: &Path) -> RecordingChecker {
        let script = scratch.join("checker.sh");
        let passed = scratch.join("passed.log");
        let secret = scratch.join("secret-value");
        std::fs::write(
            &script,
            format!(
                "if grep -q REFUSE app.yml; then echo refused >&2; exit 1; fi\n\
                 cat app.yml >> '{passed}'\n\
                 if grep -q rollback-me prometheus.yml; then printf changed-after-check > '{secret}'; fi\n",
                passed = passed.display(),
                secret = secret.display()
            ),
        )
        .unwrap();
        std::fs::write(&passed, "").unwrap();
        RecordingChecker {
            script,
            passed,
            secret,
        }
    }

    fn set_secret(&self, value: &str) {
        std::fs::write(&self.secret, value).unwrap();
    }

    /// Every `app.yml` content the checker passed.
    fn passed(&self) -> String {
        std::fs::read_to_string(&self.passed).unwrap()
    }

    fn assert_passed(&self, content: &str) {
        assert!(
            self.passed().contains(content),
            "{content:?} is on the volume but the checker never passed it; it passed:\n{}",
            self.passed()
        );
    }
}

/// A scenario whose `app.yml` takes its value from the checker's secret.
fn scenario() -> (Sidecar, RecordingChecker) {
    let s = Sidecar::new();
    let checker = RecordingChecker::new(&s.scratch());
    checker.set_secret("first");
    s.upstream.write(
        "app.yml",
        format!("value: ${{file:{}}}\n", checker.secret.display()),
    );
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    (s, checker)
}

fn gitreload(s: &Sidecar, checker: &RecordingChecker) -> support::gitreload::Gitreload {
    s.gitreload_file()
        .env("GITRELOAD_EXPAND", "app.yml")
        .env(
            "GITRELOAD_EXPAND_FILES",
            checker.secret.display().to_string(),
        )
        .env(
            "GITRELOAD_CHECK",
            format!("sh {}", checker.script.display()),
        )
        .env("GITRELOAD_INTERVAL", "1h")
}

#[test]
fn drift_repair_after_a_secret_changed_deploys_only_checked_bytes() {
    let (s, checker) = scenario();
    let mut run = gitreload(&s, &checker).spawn_deployed();
    assert_eq!(s.dest_file("app.yml"), "value: first\n");
    checker.assert_passed("value: first\n");

    // The secret changes; a hand edit makes gitreload restage the commit.
    checker.set_secret("second");
    std::fs::write(s.dest().join("app.yml"), "hand edit\n").unwrap();
    run.wait_for_event(WAIT, "drift repaired");
    assert_eq!(s.dest_file("app.yml"), "value: second\n");
    checker.assert_passed("value: second\n");

    // A secret the checker refuses is never published by a repair.
    let cursor = run.cursor();
    checker.set_secret("REFUSE");
    std::fs::write(s.dest().join("app.yml"), "hand edit again\n").unwrap();
    run.wait_for_event_after(cursor, WAIT, "commit rejected");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(s.dest_file("app.yml"), "hand edit again\n");
    assert!(run.terminate().success());
}

#[test]
fn rollback_after_a_secret_changed_deploys_only_checked_bytes() {
    let (s, checker) = scenario();
    assert!(gitreload(&s, &checker)
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());
    let port = free_port_on(&["127.0.0.92"]);
    let prom = Prometheus::start_on("127.0.0.92", port, &s.dest());
    let mut run = gitreload(&s, &checker)
        .env("GITRELOAD_TARGETS", prom.reload_url())
        .env("GITRELOAD_INTERVAL", "300ms")
        .spawn();
    run.wait_for_event(WAIT, "reload confirmed on every target");

    // Passed by the checker (which then changes the secret), refused by
    // Prometheus: the rollback restages commit one with the new secret.
    s.upstream.write(
        "prometheus.yml",
        format!("{}# rollback-me\n", invalid_prometheus_yml()),
    );
    s.upstream.commit_and_push("refused by prometheus");
    run.wait_for_event(WAIT, "commit rolled back: every target refused it");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("one"), WAIT);
    assert_eq!(s.dest_file("app.yml"), "value: changed-after-check\n");
    checker.assert_passed("value: changed-after-check\n");
    assert!(run.terminate().success());
}
