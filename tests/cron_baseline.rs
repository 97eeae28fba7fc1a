//! The baseline: the cron script gitreload replaces (`tests/cron/sync.sh`),
//! run against the same real servers, so README's account of what it gets
//! wrong is measured rather than claimed. Each test pins down one failure;
//! the matching gitreload behaviour is tested in core.rs and reload.rs.

mod support;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use support::sidecar::{invalid_prometheus_yml, prometheus_yml, Sidecar};
use support::*;

/// One cron job: its clone, the volume it writes, and where it reloads.
struct Cron {
    sidecar: Sidecar,
    dns: Dns,
    port: u16,
}

impl Cron {
    fn new(ips: &[&str]) -> Cron {
        let sidecar = Sidecar::new();
        sidecar
            .upstream
            .write("prometheus.yml", prometheus_yml("one"));
        sidecar.upstream.commit_and_push("one");
        std::fs::create_dir_all(sidecar.dest()).unwrap();
        let records: Vec<(&str, &str)> = ips.iter().map(|ip| ("tasks.prometheus", *ip)).collect();
        let dns = Dns::start(&records);
        let port = free_port_on(ips);
        Cron { sidecar, dns, port }
    }

    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cron/sync.sh")
    }

    /// Runs the script once; `None` if it was still running after `limit`
    /// (it is then killed).
    fn run(&self, limit: Duration) -> Option<(ExitStatus, String)> {
        let mut cmd = clean_command("bash");
        cmd.arg(Self::script())
            .env("HOME", self.sidecar.scratch())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("WORK_DIR", self.sidecar.scratch())
            .env("PROMETHEUS_CONFIG_REPO", self.sidecar.upstream.file_url())
            .env("PROMETHEUS_CONFIG_DIR", self.sidecar.dest())
            .env("PROMETHEUS_HOST_DNS", "tasks.prometheus")
            .env("PROMETHEUS_PORT", self.port.to_string())
            .env("PROMETHEUS_NOTIFY_PATH", "/-/reload")
            .env("DNS_SERVER", "127.0.0.1")
            .env("DNS_PORT", self.dns.port().to_string());
        let log = self
            .sidecar
            .scratch()
            .join(format!("cron-{}.log", fastrand_id()));
        let mut child = ChildGuard::spawn("cron script", &mut cmd, &log);
        let status = child.wait_exit(limit)?;
        Some((status, std::fs::read_to_string(&log).unwrap_or_default()))
    }
}

fn fastrand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn cron_script_publishes_an_invalid_config_and_reports_success() {
    let cron = Cron::new(&["127.0.0.60"]);
    assert!(cron.run(WAIT).unwrap().0.success());
    let prom = Prometheus::start_on("127.0.0.60", cron.port, &cron.sidecar.dest());
    cron.sidecar
        .upstream
        .write("prometheus.yml", invalid_prometheus_yml());
    cron.sidecar.upstream.commit_and_push("broken");
    let (status, output) = cron.run(WAIT).unwrap();
    assert!(status.success(), "{output}");
    assert!(output.contains("config synced"), "{output}");
    assert_eq!(
        cron.sidecar.dest_file("prometheus.yml"),
        invalid_prometheus_yml(),
        "the invalid file is on the volume"
    );
    assert!(
        !prom.last_reload_successful(),
        "Prometheus refused it, the script did not notice"
    );
}

#[test]
fn cron_script_never_updates_again_after_a_force_push() {
    let cron = Cron::new(&["127.0.0.61"]);
    let first = cron.sidecar.upstream.head();
    cron.sidecar
        .upstream
        .write("prometheus.yml", prometheus_yml("two"));
    cron.sidecar.upstream.commit_and_push("two");
    assert!(cron.run(WAIT).unwrap().0.success());
    // Upstream rewrites history, then moves on.
    cron.sidecar.upstream.force_push_to(&first);
    cron.sidecar
        .upstream
        .write("prometheus.yml", prometheus_yml("three"));
    cron.sidecar.upstream.commit_and_push("three");
    for _ in 0..3 {
        let (status, _) = cron.run(WAIT).unwrap();
        assert!(status.success(), "and it still reports success");
    }
    assert_eq!(
        cron.sidecar.dest_file("prometheus.yml"),
        prometheus_yml("two"),
        "stuck on the old config"
    );
}

#[test]
fn cron_script_skips_a_same_size_change_within_one_second() {
    let cron = Cron::new(&["127.0.0.62"]);
    assert!(cron.run(WAIT).unwrap().0.success());
    // Two same-size versions synced within one wall-clock second; retry
    // when a second boundary falls between them or a busy machine made
    // the two runs take too long.
    let mut skipped = false;
    for attempt in 0..20 {
        let next_second = 1_000_000_000 - (fastrand_id() % 1_000_000_000) as u64;
        std::thread::sleep(Duration::from_nanos(next_second));
        let started = Instant::now();
        cron.sidecar
            .upstream
            .write("value.txt", format!("a{attempt}a\n"));
        cron.sidecar.upstream.commit_and_push("a");
        assert!(cron.run(WAIT).unwrap().0.success());
        cron.sidecar
            .upstream
            .write("value.txt", format!("b{attempt}b\n"));
        cron.sidecar.upstream.commit_and_push("b");
        assert!(cron.run(WAIT).unwrap().0.success());
        if started.elapsed() < Duration::from_millis(900) {
            skipped = cron.sidecar.dest_file("value.txt") == format!("a{attempt}a\n");
            break;
        }
    }
    assert!(skipped, "the second version reached the volume");
}

#[test]
fn cron_script_blocks_on_a_hung_replica_and_never_retries_a_down_one() {
    let cron = Cron::new(&["127.0.0.63", "127.0.0.64"]);
    assert!(cron.run(WAIT).unwrap().0.success());
    let mut proms = [
        Prometheus::start_on("127.0.0.63", cron.port, &cron.sidecar.dest()),
        Prometheus::start_on("127.0.0.64", cron.port, &cron.sidecar.dest()),
    ];
    // Down during the deploy: no error, no retry on the next runs.
    proms[1].stop();
    cron.sidecar
        .upstream
        .write("prometheus.yml", prometheus_yml("two"));
    cron.sidecar.upstream.commit_and_push("two");
    assert!(cron.run(WAIT).unwrap().0.success());
    proms[1].restart();
    let reloads_before = proms[1].metric("prometheus_config_last_reload_success_timestamp_seconds");
    assert!(cron.run(WAIT).unwrap().0.success());
    assert_eq!(
        proms[1].metric("prometheus_config_last_reload_success_timestamp_seconds"),
        reloads_before,
        "the replica that was down got a reload after all"
    );

    // Hung: curl has no timeout, so the job never finishes.
    proms[0].sigstop();
    cron.sidecar
        .upstream
        .write("prometheus.yml", prometheus_yml("three"));
    cron.sidecar.upstream.commit_and_push("three");
    assert!(
        cron.run(Duration::from_secs(5)).is_none(),
        "the script finished despite a hung replica"
    );
    proms[0].sigcont();
}
