//! Reloading every replica: real dnsmasq answering several A records, real
//! Prometheus and Alertmanager processes on distinct 127.0.0.x addresses.
//! Every check of "reloaded" is made through the applications' own APIs.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::Value;
use support::sidecar::{invalid_prometheus_yml, prometheus_yml, Sidecar};
use support::*;

/// Two Prometheus replicas of `tasks.prometheus` on `ips`, sharing a port,
/// reading the sidecar's destination, with a DNS server naming them.
struct Fleet {
    sidecar: Sidecar,
    dns: Dns,
    proms: Vec<Prometheus>,
    port: u16,
}

impl Fleet {
    fn new(ips: [&str; 2]) -> Fleet {
        let sidecar = Sidecar::new();
        sidecar
            .upstream
            .write("prometheus.yml", prometheus_yml("one"));
        sidecar.upstream.commit_and_push("one");
        let out = sidecar.gitreload_file().arg("--once").run_once(WAIT);
        assert!(out.status.success(), "{}", out.stdout);
        let Replicas { proms, port, dns } =
            Replicas::start("tasks.prometheus", &ips, &sidecar.dest());
        Fleet {
            sidecar,
            dns,
            proms,
            port,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{name}:{}/-/reload", self.port)
    }

    fn gitreload(&self) -> Gitreload {
        self.sidecar
            .gitreload_file()
            .env("GITRELOAD_TARGETS", self.url("tasks.prometheus"))
            .env("GITRELOAD_DNS_SERVER", self.dns.server())
            .env("GITRELOAD_RELOAD_TIMEOUT", "1s")
    }

    fn push(&self, marker: &str) {
        self.sidecar
            .upstream
            .write("prometheus.yml", prometheus_yml(marker));
        self.sidecar.upstream.commit_and_push(marker);
    }
}

fn serves(app: &Prometheus, marker: &str) -> bool {
    app.config().contains(&format!("marker: {marker}"))
}

fn wait_serves(app: &Prometheus, marker: &str) {
    wait_until_or(
        &format!("Prometheus {} to serve marker {marker}", app.addr()),
        WAIT,
        || serves(app, marker),
        || app.log_tail(20),
    );
}

fn timestamp(event: &Value) -> SystemTime {
    humantime::parse_rfc3339(event["timestamp"].as_str().unwrap()).unwrap()
}

fn is_event_for(v: &Value, name: &str, target: &str) -> bool {
    v["event"] == name && v["target"] == target
}

#[test]
fn every_replica_of_prometheus_and_alertmanager_serves_the_new_config() {
    let s = Sidecar::new();
    let am_yml = |receiver: &str| {
        format!("route:\n  receiver: {receiver}\nreceivers:\n  - name: {receiver}\n")
    };
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.write("alertmanager.yml", am_yml("r-one"));
    s.upstream.commit_and_push("one");
    assert!(s
        .gitreload_file()
        .arg("--once")
        .run_once(WAIT)
        .status
        .success());

    let prom_port = free_port_on(&["127.0.0.2", "127.0.0.3"]);
    let am_port = free_port_on(&["127.0.0.4", "127.0.0.5"]);
    let proms = [
        Prometheus::start_on("127.0.0.2", prom_port, &s.dest()),
        Prometheus::start_on("127.0.0.3", prom_port, &s.dest()),
    ];
    let ams = Alertmanager::start_pair_on(["127.0.0.4", "127.0.0.5"], am_port, &s.dest());
    let dns = Dns::start(&[
        ("tasks.prometheus", "127.0.0.2"),
        ("tasks.prometheus", "127.0.0.3"),
        ("tasks.alertmanager", "127.0.0.4"),
        ("tasks.alertmanager", "127.0.0.5"),
    ]);
    let targets = format!(
        "http://tasks.prometheus:{prom_port}/-/reload,http://tasks.alertmanager:{am_port}/-/reload"
    );
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_TARGETS", &targets)
        .env("GITRELOAD_DNS_SERVER", dns.server())
        .env(
            "GITRELOAD_CHECK",
            "promtool check config prometheus.yml && amtool check-config alertmanager.yml",
        )
        .spawn();
    let reloaded_before: Vec<f64> = proms
        .iter()
        .map(|p| p.last_reload_success_timestamp())
        .collect();

    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.write("alertmanager.yml", am_yml("r-two"));
    s.upstream.commit_and_push("two");
    for p in &proms {
        wait_serves(p, "two");
    }
    for am in &ams {
        wait_until_or(
            &format!("Alertmanager {} to serve receiver r-two", am.addr()),
            WAIT,
            || am.config().contains("r-two"),
            || am.log_tail(20),
        );
    }
    for (p, before) in proms.iter().zip(reloaded_before) {
        assert!(p.last_reload_successful());
        assert!(p.last_reload_success_timestamp() >= before);
    }
    run.wait_for_event(WAIT, "reload confirmed on every target");
    let reloaded: std::collections::BTreeSet<String> = run
        .events("target reloaded")
        .iter()
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reloaded.into_iter().collect::<Vec<_>>(),
        ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    );
    assert!(run.terminate().success());
}

#[test]
fn stopped_replica_is_reloaded_once_it_is_back_and_then_left_alone() {
    let mut f = Fleet::new(["127.0.0.6", "127.0.0.7"]);
    let mut run = f.gitreload().spawn();
    f.proms[1].stop();
    f.push("two");
    wait_serves(&f.proms[0], "two");
    run.wait_for_event_where(WAIT, "a failed reload of the stopped replica", |v| {
        is_event_for(v, "target reload failed", "127.0.0.7")
    });
    f.proms[1].restart();
    run.wait_for_event_where(WAIT, "the returned replica reloaded", |v| {
        is_event_for(v, "target reloaded", "127.0.0.7")
    });
    run.wait_for_event(WAIT, "reload confirmed on every target");
    wait_serves(&f.proms[1], "two");
    let failures = run.count_events("target reload failed");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        run.count_events("target reload failed"),
        failures,
        "still retrying after success"
    );
    assert!(run.terminate().success());
}

#[test]
fn hung_replica_does_not_delay_the_other_and_is_reloaded_after_sigcont() {
    let mut f = Fleet::new(["127.0.0.8", "127.0.0.9"]);
    let mut run = f.gitreload().spawn();
    f.proms[1].sigstop();
    f.push("two");
    let deployed = run.wait_for_event(WAIT, "config deployed");
    let healthy = run.wait_for_event_where(WAIT, "the healthy replica reloaded", |v| {
        is_event_for(v, "target reloaded", "127.0.0.8")
    });
    let delay = timestamp(&healthy)
        .duration_since(timestamp(&deployed))
        .unwrap();
    assert!(
        delay < Duration::from_secs(1),
        "healthy replica waited {delay:?}"
    );
    assert!(serves(&f.proms[0], "two"));
    let hung = run.wait_for_event_where(WAIT, "the hung replica to time out", |v| {
        is_event_for(v, "target reload failed", "127.0.0.9")
    });
    assert!(
        hung["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 1s"),
        "{hung}"
    );
    f.proms[1].sigcont();
    run.wait_for_event_where(WAIT, "the resumed replica reloaded", |v| {
        is_event_for(v, "target reloaded", "127.0.0.9")
    });
    wait_serves(&f.proms[1], "two");
    assert!(run.terminate().success());
}

#[test]
fn replica_added_to_dns_gets_the_next_reload_and_removed_one_is_dropped() {
    let mut f = Fleet::new(["127.0.0.10", "127.0.0.11"]);
    f.dns.set_records(&[("tasks.prometheus", "127.0.0.10")]);
    let mut run = f.gitreload().spawn();
    f.push("two");
    wait_serves(&f.proms[0], "two");
    run.wait_for_event(WAIT, "reload confirmed on every target");
    assert!(
        !serves(&f.proms[1], "two"),
        "a replica outside DNS was reloaded"
    );

    f.dns.set_records(&[
        ("tasks.prometheus", "127.0.0.10"),
        ("tasks.prometheus", "127.0.0.11"),
    ]);
    f.push("three");
    wait_serves(&f.proms[0], "three");
    wait_serves(&f.proms[1], "three");

    // .10 hangs, so its reload stays pending; then it leaves DNS.
    f.proms[0].sigstop();
    let cursor = run.cursor();
    f.push("four");
    wait_serves(&f.proms[1], "four");
    run.wait_for_event_where(WAIT, "the hung replica to fail", |v| {
        is_event_for(v, "target reload failed", "127.0.0.10")
    });
    f.dns.set_records(&[("tasks.prometheus", "127.0.0.11")]);
    run.wait_for_event_where(WAIT, "the pending reload to be dropped", |v| {
        v["event"] == "target left DNS; its pending reload is dropped"
            && v["target"] == "127.0.0.10"
    });
    run.wait_for_event_after(cursor, WAIT, "reload confirmed on every target");
    let attempts = || {
        run.json_lines()
            .iter()
            .filter(|v| v["target"] == "127.0.0.10" && v["event"] == "target reload failed")
            .count()
    };
    let before = attempts();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        attempts(),
        before,
        "a target that left DNS is still contacted"
    );
    f.proms[0].sigcont();
    assert!(run.terminate().success());
}

#[test]
fn target_answering_500_is_retried_with_growing_delays() {
    let f = Fleet::new(["127.0.0.12", "127.0.0.13"]);
    // No checker: Prometheus itself refuses the config with a 500.
    let mut run = f.gitreload().spawn();
    f.sidecar
        .upstream
        .write("prometheus.yml", invalid_prometheus_yml());
    f.sidecar.upstream.commit_and_push("broken");
    let failures = run.wait_for_event_count_where(Duration::from_secs(30), 4, |v| {
        is_event_for(v, "target reload failed", "127.0.0.12")
    });
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.starts_with("HTTP 500"), "{error}");
    assert!(
        error.contains("scrape_configz"),
        "Prometheus's reason is missing: {error}"
    );
    let times: Vec<SystemTime> = failures.iter().map(timestamp).collect();
    let gaps: Vec<Duration> = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap())
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(400)),
        "tight loop: {gaps:?}"
    );
    assert!(gaps[2] > gaps[0], "delays do not grow: {gaps:?}");
    assert!(run.terminate().success());
}

#[test]
fn nxdomain_for_one_url_does_not_stop_the_other() {
    let f = Fleet::new(["127.0.0.14", "127.0.0.15"]);
    let targets = format!("{},{}", f.url("tasks.missing"), f.url("tasks.prometheus"));
    let mut run = f.gitreload().env("GITRELOAD_TARGETS", targets).spawn();
    f.push("two");
    wait_serves(&f.proms[0], "two");
    wait_serves(&f.proms[1], "two");
    let unresolved = run.wait_for_event(WAIT, "cannot resolve reload target");
    assert_eq!(unresolved["host"], "tasks.missing");
    assert!(run.terminate().success());
}

#[test]
fn once_mode_exits_0_only_when_every_target_confirmed() {
    let mut f = Fleet::new(["127.0.0.16", "127.0.0.17"]);
    f.push("two");
    let out = f.gitreload().arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    assert!(serves(&f.proms[0], "two") && serves(&f.proms[1], "two"));

    f.proms[1].stop();
    f.push("three");
    let out = f
        .gitreload()
        .env("GITRELOAD_RELOAD_ATTEMPTS", "2")
        .arg("--once")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(serves(&f.proms[0], "three"));
    assert!(out.stdout.contains("not every target confirmed the reload"));
}

#[test]
fn restart_resends_an_unconfirmed_round_and_nothing_after_a_confirmed_one() {
    let mut f = Fleet::new(["127.0.0.18", "127.0.0.19"]);
    let mut run = f.gitreload().spawn();
    f.proms[1].stop();
    f.push("two");
    wait_serves(&f.proms[0], "two");
    assert!(run.terminate().success());

    f.proms[1].restart();
    let before = f.proms[0].last_reload_success_timestamp();
    let mut run = f.gitreload().spawn();
    run.wait_for_event(
        WAIT,
        "reload of the last deploy was not confirmed before restart; reloading all targets",
    );
    run.wait_for_event(WAIT, "reload confirmed on every target");
    assert!(
        f.proms[0].last_reload_success_timestamp() > before,
        "the confirmed replica was not reloaded again"
    );
    assert!(run.terminate().success());

    let before: Vec<f64> = f
        .proms
        .iter()
        .map(|p| p.last_reload_success_timestamp())
        .collect();
    let mut run = f.gitreload().spawn();
    run.wait_for_event(WAIT, "no change");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(run.count_events("target reloaded"), 0);
    let after: Vec<f64> = f
        .proms
        .iter()
        .map(|p| p.last_reload_success_timestamp())
        .collect();
    assert_eq!(before, after, "a reload was sent after a confirmed round");
    assert!(run.terminate().success());
}

#[test]
fn legacy_cron_reload_variables_become_one_target() {
    let f = Fleet::new(["127.0.0.20", "127.0.0.21"]);
    f.push("two");
    let out = f
        .sidecar
        .gitreload_file()
        .env("GITRELOAD_DNS_SERVER", f.dns.server())
        .env("PROMETHEUS_HOST_DNS", "tasks.prometheus")
        .env("PROMETHEUS_PORT", f.port.to_string())
        .env("PROMETHEUS_NOTIFY_PATH", "/-/reload")
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("set GITRELOAD_TARGETS=http://tasks.prometheus:"),
        "{}",
        out.stdout
    );
    assert!(serves(&f.proms[0], "two") && serves(&f.proms[1], "two"));
}
