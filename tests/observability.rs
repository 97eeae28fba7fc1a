//! Observability and control: structlog JSON logs, metrics scraped for
//! real (and checked by promtool), health and readiness, and the webhook.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::sidecar::{prometheus_yml, Sidecar};
use support::*;

/// gitreload with its HTTP server on a free loopback port.
fn with_server(g: Gitreload) -> (Gitreload, String) {
    let addr = free_addr("127.0.0.1");
    (g.env("GITRELOAD_LISTEN", &addr), format!("http://{addr}"))
}

/// The value of one exact series (`name{labels}`) in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn series_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .collect()
}

fn scrape(base: &str) -> String {
    let (status, body) = http_get(&format!("{base}/metrics"));
    assert_eq!(status, 200);
    body
}

fn promtool_check_metrics(text: &str) {
    let out = output_with_stdin(
        Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sync_count(base: &str) -> f64 {
    let text = scrape(base);
    [
        "deployed",
        "unchanged",
        "fetch_failed",
        "check_failed",
        "deploy_failed",
    ]
    .iter()
    .filter_map(|r| sample(&text, &format!("gitreload_sync_total{{result=\"{r}\"}}")))
    .sum()
}

#[test]
fn every_log_line_is_structlog_json_with_the_four_keys_first() {
    let s = Sidecar::seeded();
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), prometheus_yml("zero")).unwrap();
    let prom = Prometheus::start("127.0.0.30", dir.path());
    let (g, base) = with_server(
        s.gitreload_file()
            .env("GITRELOAD_TARGETS", prom.reload_url())
            .env("GITRELOAD_CHECK", "prometheus"),
    );
    let mut run = g.spawn();
    run.wait_for_event(WAIT, "reload confirmed on every target");
    http_get(&format!("{base}/readyz"));
    http_get(&format!("{base}/nope"));
    run.wait_for_event_count(WAIT, "request", 2);
    assert!(run.terminate().success());

    let timestamp = |t: &str| {
        t.len() == 24
            && t.ends_with('Z')
            && t.as_bytes()[10] == b'T'
            && t.as_bytes()[19] == b'.'
            && humantime::parse_rfc3339(t).is_ok()
    };
    let lines = run.lines();
    assert!(lines.len() > 5);
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let keys: Vec<&String> = v.as_object().unwrap().keys().take(4).collect();
        assert_eq!(keys, ["event", "level", "logger", "timestamp"], "{line}");
        assert!(
            ["debug", "info", "warning", "error", "critical"]
                .contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(
            v["logger"].as_str().unwrap().starts_with("gitreload"),
            "{line}"
        );
        assert!(!v["logger"].as_str().unwrap().contains("::"), "{line}");
        assert!(timestamp(v["timestamp"].as_str().unwrap()), "{line}");
    }
    let deployed = &run.events("config deployed")[0];
    assert_eq!(deployed["logger"], "gitreload.deploy");
    assert!(
        deployed["files_written"].is_u64(),
        "numbers stay numbers: {deployed}"
    );
    assert_eq!(deployed["commit"].as_str().unwrap().len(), 7);
    let reloaded = &run.events("target reloaded")[0];
    assert_eq!(reloaded["logger"], "gitreload.reload");
    assert_eq!(reloaded["status"], 200);
    let access: Vec<Value> = run
        .json_lines()
        .into_iter()
        .filter(|v| v["logger"] == "gitreload.access")
        .collect();
    assert_eq!(access.len(), 2);
    for a in &access {
        for key in ["host", "user", "request", "referer", "agent"] {
            assert!(a[key].is_string(), "{key} missing: {a}");
        }
        assert!(
            a["status"].is_u64() && a["size"].is_u64() && a["duration_ms"].is_number(),
            "{a}"
        );
        assert_eq!(a["host"], "127.0.0.1");
    }
    assert_eq!(access[0]["request"], "GET /readyz HTTP/1.1");
    assert_eq!(access[1]["status"], 404);
}

#[test]
fn text_log_format_is_for_terminals() {
    let s = Sidecar::seeded();
    let out = s
        .gitreload_file()
        .env("GITRELOAD_LOG_FORMAT", "text")
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success());
    assert!(out.stdout.contains("config deployed"));
    assert!(serde_json::from_str::<Value>(out.stdout.lines().next().unwrap()).is_err());
}

#[test]
fn no_change_poll_is_debug_only() {
    let s = Sidecar::seeded();
    let out = s
        .gitreload_file()
        .env("GITRELOAD_LOG_LEVEL", "info")
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success());
    assert_eq!(out.events("config deployed").len(), 1, "{}", out.stdout);

    // The same commit again: this run's polls all take the no-change path,
    // as its own sync counter shows, and say nothing at info level.
    let (g, base) = with_server(s.gitreload_file().env("GITRELOAD_LOG_LEVEL", "info"));
    let mut run = g.spawn();
    let metrics = || {
        try_http_get(&format!("{base}/metrics"))
            .map(|(_, text)| text)
            .unwrap_or_default()
    };
    let series = |text: &str, result: &str| {
        sample(
            text,
            &format!("gitreload_sync_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    wait_until("two no-change polls", WAIT, || {
        series(&metrics(), "unchanged") >= 2.0
    });
    let text = metrics();
    assert_eq!(series(&text, "deployed"), 0.0, "{text}");
    assert!(run.terminate().success());
    assert!(
        run.events("no change").is_empty(),
        "{}",
        run.output_tail(20)
    );
    assert!(run.events("config deployed").is_empty());
    assert!(run.json_lines().iter().all(|v| v["level"] != "debug"));
}

#[test]
fn scrape_shows_deploys_rejections_and_failed_reloads_and_passes_promtool() {
    let s = Sidecar::seeded();
    let first = s.upstream.head();
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), prometheus_yml("zero")).unwrap();
    let mut prom = Prometheus::start("127.0.0.31", dir.path());
    let (g, base) = with_server(
        s.gitreload_file()
            .env("GITRELOAD_TARGETS", prom.reload_url())
            .env("GITRELOAD_RELOAD_TIMEOUT", "1s")
            .env("GITRELOAD_CHECK", "! grep -q broken prometheus.yml"),
    );
    let mut run = g.spawn();
    run.wait_for_event(WAIT, "reload confirmed on every target");
    let text = scrape(&base);
    assert_eq!(
        sample(&text, "gitreload_sync_total{result=\"deployed\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "gitreload_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
    let target = "127.0.0.31";
    let url = prom.reload_url();
    assert_eq!(
        sample(
            &text,
            &format!(
                "gitreload_reload_total{{url=\"{url}\",target=\"{target}\",result=\"success\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("gitreload_targets{{url=\"{url}\"}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("gitreload_target_pending{{url=\"{url}\",target=\"{target}\"}}")
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &text,
            "gitreload_files_changed_total{operation=\"written\"}"
        )
        .unwrap()
            >= 1.0
    );
    promtool_check_metrics(&text);

    s.upstream.write("prometheus.yml", "broken\n");
    let bad = s.upstream.commit_and_push("broken");
    run.wait_for_event(WAIT, "commit rejected");
    // The counter is bumped when the sync ends, just after the log line.
    wait_until("the rejection to be counted", WAIT, || {
        sample(
            &scrape(&base),
            "gitreload_sync_total{result=\"check_failed\"}",
        ) == Some(1.0)
    });
    let text = scrape(&base);
    assert_eq!(
        sample(&text, "gitreload_sync_total{result=\"check_failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        series_of(&text, "gitreload_rejected_commit_info"),
        [format!(
            "gitreload_rejected_commit_info{{commit=\"{bad}\"}} 1"
        )]
    );
    assert_eq!(
        series_of(&text, "gitreload_deployed_commit_info"),
        [format!(
            "gitreload_deployed_commit_info{{commit=\"{first}\",ref=\"refs/heads/main\"}} 1"
        )]
    );
    promtool_check_metrics(&text);

    prom.stop();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    let good = s.upstream.commit_and_push("good");
    run.wait_for_event_where(WAIT, "a failed reload", |v| {
        v["event"] == "target reload failed"
    });
    let text = scrape(&base);
    assert!(
        series_of(&text, "gitreload_rejected_commit_info").is_empty(),
        "{text}"
    );
    assert_eq!(
        series_of(&text, "gitreload_deployed_commit_info"),
        [format!(
            "gitreload_deployed_commit_info{{commit=\"{good}\",ref=\"refs/heads/main\"}} 1"
        )]
    );
    assert!(
        sample(
            &text,
            &format!(
                "gitreload_reload_total{{url=\"{url}\",target=\"{target}\",result=\"failure\"}}"
            )
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("gitreload_target_pending{{url=\"{url}\",target=\"{target}\"}}")
        ),
        Some(1.0)
    );
    assert!(sample(&text, "gitreload_last_deploy_timestamp_seconds").unwrap() > 1.7e9);
    assert!(
        sample(
            &text,
            "gitreload_stage_duration_seconds_count{stage=\"check\"}"
        )
        .unwrap()
            >= 2.0
    );
    promtool_check_metrics(&text);
    assert!(run.terminate().success());
}

#[test]
fn openmetrics_is_served_to_scrapers_that_ask_for_it() {
    let s = Sidecar::seeded();
    let (g, base) = with_server(s.gitreload_file());
    let mut run = g.spawn_deployed();
    let response = http_client()
        .get(format!("{base}/metrics"))
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(response.text().unwrap().ends_with("# EOF\n"));
    assert!(run.terminate().success());
}

#[test]
fn readyz_follows_first_sync_and_git_server_outages() {
    let s = Sidecar::seeded();
    let mut daemon = GitDaemon::start(&s.upstream);
    let (g, base) = with_server(
        s.gitreload(&daemon.url())
            .env("GITRELOAD_CHECK", "sleep 2")
            .env("GITRELOAD_STALE_AFTER", "1500ms"),
    );
    let mut run = g.spawn();
    wait_until("the server to answer", WAIT, || {
        try_http_get(&format!("{base}/readyz")).is_ok()
    });
    let (status, body) = http_get(&format!("{base}/readyz"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no validated config deployed yet"));
    assert_eq!(http_get(&format!("{base}/healthz")).0, 200);
    wait_until("readyz 200 after the first sync", WAIT, || {
        http_get(&format!("{base}/readyz")).0 == 200
    });

    daemon.stop();
    wait_until("readyz 503 once stale", WAIT, || {
        http_get(&format!("{base}/readyz")).0 == 503
    });
    assert!(http_get(&format!("{base}/readyz"))
        .1
        .contains("last successful poll"));
    assert_eq!(
        http_get(&format!("{base}/healthz")).0,
        200,
        "an outage is not a wedged loop"
    );
    daemon.restart();
    wait_until("readyz 200 after the server returns", WAIT, || {
        http_get(&format!("{base}/readyz")).0 == 200
    });
    assert!(run.count_events("fetch failed") >= 1);
    assert!(run.terminate().success());
}

#[test]
fn signed_webhook_syncs_now_and_bad_requests_are_refused() {
    let s = Sidecar::seeded();
    let secret = "webhook-secret-value";
    let (g, base) = with_server(
        s.gitreload_file()
            .env("GITRELOAD_INTERVAL", "1h")
            .env("GITRELOAD_WEBHOOK_SECRET", secret),
    );
    let mut run = g.spawn_deployed();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");

    let body = r#"{"ref":"refs/heads/main"}"#;
    let sync = format!("{base}/sync");
    let refused = [
        http_post(&sync, &[], body),
        http_post(
            &sync,
            &[(
                "X-Hub-Signature-256",
                &webhook_signature(b"wrong", body.as_bytes()),
            )],
            body,
        ),
        http_post(&sync, &[("X-Hub-Signature-256", "sha256=zz")], body),
        http_post(&sync, &[("X-Gitlab-Token", "wrong")], body),
    ];
    for (status, _) in &refused {
        assert_eq!(*status, 401);
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        s.dest_file("prometheus.yml"),
        prometheus_yml("one"),
        "a refused request triggered a sync"
    );
    let text = scrape(&base);
    assert_eq!(
        sample(
            &text,
            "gitreload_webhook_requests_total{result=\"unauthorized\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "gitreload_sync_total{result=\"deployed\"}"),
        Some(1.0)
    );

    let (status, _) = http_post(
        &sync,
        &[(
            "X-Hub-Signature-256",
            &webhook_signature(secret.as_bytes(), body.as_bytes()),
        )],
        body,
    );
    assert_eq!(status, 202);
    s.wait_dest_file(
        "prometheus.yml",
        &prometheus_yml("two"),
        Duration::from_secs(5),
    );

    s.upstream.write("prometheus.yml", prometheus_yml("three"));
    s.upstream.commit_and_push("three");
    let (status, _) = http_post(&sync, &[("X-Gitlab-Token", secret)], body);
    assert_eq!(status, 202);
    s.wait_dest_file(
        "prometheus.yml",
        &prometheus_yml("three"),
        Duration::from_secs(5),
    );
    assert!(run.terminate().success());
}

#[test]
fn webhook_secret_can_come_from_a_file() {
    let s = Sidecar::seeded();
    let file = s.scratch().join("secret");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let (g, base) = with_server(
        s.gitreload_file()
            .env("GITRELOAD_INTERVAL", "1h")
            .env("GITRELOAD_WEBHOOK_SECRET_FILE", &file),
    );
    let mut run = g.spawn_deployed();
    let sync = format!("{base}/sync");
    assert_eq!(
        http_post(&sync, &[("X-Gitlab-Token", "from-a-file")], "").0,
        202
    );
    assert_eq!(
        http_post(&sync, &[("X-Gitlab-Token", "from-a-fil")], "").0,
        401
    );
    assert!(run.terminate().success());
}

#[test]
fn hundred_concurrent_webhooks_cause_at_most_two_syncs_and_metrics_stay_responsive() {
    let s = Sidecar::seeded();
    let (g, base) = with_server(
        s.gitreload_file()
            .env("GITRELOAD_INTERVAL", "1h")
            .env("GITRELOAD_CHECK", "sleep 1"),
    );
    let mut run = g.spawn_deployed();
    let before = sync_count(&base);
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");

    let sync = format!("{base}/sync");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|_| scope.spawn(|| http_post(&sync, &[], "{}").0))
            .collect();
        // While the burst and the slow checker run, /metrics still answers.
        let started = std::time::Instant::now();
        let (status, _) = http_get(&format!("{base}/metrics"));
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "/metrics blocked for {:?}",
            started.elapsed()
        );
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    // Let any coalesced sync finish, then count.
    std::thread::sleep(Duration::from_millis(2500));
    let syncs = sync_count(&base) - before;
    assert!(
        (1.0..=2.0).contains(&syncs),
        "{syncs} syncs for 100 webhooks"
    );
    assert!(run.terminate().success());
}

#[test]
fn oversized_webhook_body_is_refused() {
    let s = Sidecar::seeded();
    let (g, base) = with_server(s.gitreload_file().env("GITRELOAD_INTERVAL", "1h"));
    let mut run = g.spawn_deployed();
    let big = "x".repeat(2 << 20);
    let (status, _) = http_post(&format!("{base}/sync"), &[], &big);
    assert_eq!(status, 413);
    assert!(run.terminate().success());
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let s = Sidecar::seeded();
    let (g, base) = with_server(s.gitreload_file());
    let mut run = g.spawn_deployed();
    assert_eq!(http_get(&format!("{base}/nope")).0, 404);
    assert_eq!(http_get(&format!("{base}/sync")).0, 405);
    assert_eq!(http_post(&format!("{base}/metrics"), &[], "").0, 405);
    assert!(run.terminate().success());
}

#[test]
fn healthcheck_subcommand_exits_0_when_ready_and_1_otherwise() {
    let s = Sidecar::seeded();
    let addr = free_addr("127.0.0.1");
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_LISTEN", &addr)
        .spawn_deployed();
    let check = |listen: &str| {
        Gitreload::new()
            .env("GITRELOAD_LISTEN", listen)
            .arg("healthcheck")
            .run_once(WAIT)
            .status
            .code()
    };
    assert_eq!(check(&addr), Some(0));
    let wildcard = addr.replace("127.0.0.1", "0.0.0.0");
    assert_eq!(
        check(&wildcard),
        Some(0),
        "a wildcard listen address is reached through loopback"
    );
    assert!(run.terminate().success());
    assert_eq!(check(&addr), Some(1));
}

#[test]
fn readyz_stays_503_while_the_only_commit_is_rejected() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", "broken\n");
    s.upstream.commit_and_push("broken");
    let (g, base) = with_server(s.gitreload_file().env("GITRELOAD_CHECK", "prometheus"));
    let mut run = g.spawn();
    run.wait_for_event(WAIT, "commit rejected");
    run.wait_for_event(WAIT, "newest commit is still the rejected one");
    let (status, body) = http_get(&format!("{base}/readyz"));
    assert_eq!(status, 503, "ready with nothing deployed: {body}");
    s.upstream.write("prometheus.yml", prometheus_yml("good"));
    s.upstream.commit_and_push("good");
    wait_until("ready once a good commit is live", WAIT, || {
        http_get(&format!("{base}/readyz")).0 == 200
    });
    assert!(run.terminate().success());
}
