//! End-to-end benchmark of gitreload: how fast a pushed change is live
//! everywhere, and what gitreload costs while nothing changes.
//!
//! Everything runs against real peers on 127.0.0.0/8 (the fixtures of
//! `tests/support`): git daemon and smart HTTP (nginx + fcgiwrap), dnsmasq,
//! two Prometheus replicas, and a small HTTP responder written here for the
//! fan-out. gitreload is the release binary, run as a process. Figures are
//! observed from outside where possible: Prometheus's own API, the
//! destination's files, `/proc`, the arrival of requests at the targets;
//! gitreload's metrics only split a sync into stages.
//!
//! ```text
//! cargo bench --bench pipeline                   # everything, final trial counts
//! cargo bench --bench pipeline -- quick          # a few trials each (development)
//! cargo bench --bench pipeline -- push idle      # only these sections
//! cargo bench --bench pipeline -- scale 10000    # one repository size
//! ```
//! Sections: `push` (push to live), `idle` (cost of no-change polls),
//! `scale` (repository size), `fanout` (reload of many targets). The table
//! printed at the end lists every figure with its target.
//!
//! Every process started here is stopped when its fixture is dropped, and
//! every wait is bounded in time and count.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::sidecar::{prometheus_yml, Sidecar};
use support::*;

/// Longest any single wait in a trial may take.
const WAIT: Duration = Duration::from_secs(30);

fn main() {
    let plan = Plan::from_args();
    let started = Instant::now();
    let mut report = Report::default();
    let load_at_start = load_average();
    eprintln!("{}", machine());
    eprintln!("load average at start: {load_at_start}");
    for (name, section) in [
        ("push", push_to_live as fn(&Plan, &mut Report)),
        ("idle", idle_cost),
        ("scale", repo_size),
        ("fanout", fan_out),
    ] {
        if plan.runs(name) {
            let began = Instant::now();
            eprintln!("== {name}");
            section(&plan, &mut report);
            eprintln!("== {name} took {:.1?}", began.elapsed());
        }
    }
    println!();
    println!("{}", machine());
    println!(
        "load average at start / end: {} / {}; benchmark took {:.0?}{}",
        load_at_start,
        load_average(),
        started.elapsed(),
        if plan.quick {
            " (quick: few trials, not for publishing)"
        } else {
            ""
        }
    );
    println!();
    report.print();
}

// ---------------------------------------------------------------------------
// Plan and report

/// What to run, from the command line (cargo adds `--bench`).
struct Plan {
    quick: bool,
    sections: Vec<String>,
    /// Repository sizes for `scale` given as numbers (default: all).
    sizes: Vec<usize>,
}

impl Plan {
    fn from_args() -> Plan {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Plan {
            quick: args.iter().any(|a| a == "quick"),
            sizes: args.iter().filter_map(|a| a.parse().ok()).collect(),
            sections: args
                .into_iter()
                .filter(|a| !a.starts_with('-') && a != "quick" && a.parse::<usize>().is_err())
                .collect(),
        }
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|s| s == section)
    }

    /// `full` trials, or `quick` with the `quick` argument.
    fn trials(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// min / median / p95 / max of a sample, nearest-rank percentiles.
#[derive(Clone, Copy, Debug)]
struct Stats {
    n: usize,
    min: f64,
    median: f64,
    p95: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        assert!(!values.is_empty(), "no values");
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            n: v.len(),
            min: v[0],
            median: rank(0.5),
            p95: rank(0.95),
            max: v[v.len() - 1],
        }
    }
}

/// A figure's unit, for formatting.
#[derive(Clone, Copy)]
enum Unit {
    Ms,
    MiB,
}

fn fmt(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Ms if value < 10.0 => format!("{value:.2} ms"),
        Unit::Ms => format!("{value:.0} ms"),
        Unit::MiB => format!("{value:.1} MiB"),
    }
}

/// Every figure the table shows, as its first column reads; `{name}`
/// stands for the part filled in at run time (transport, tree size, target
/// count, number of polls). Rows are named only through [`figure`], so this
/// list is the whole set; tests/docs.rs reads it to check README's table.
const FIGURES: &[&str] = &[
    "push → live on both Prometheus replicas, webhook, no checker, {transport}",
    "  of which `{stage}` stage, {transport} (gitreload's histogram, mean)",
    "`promtool check config` on its own (the checker's time)",
    "push → live, webhook, `GITRELOAD_CHECK=prometheus`, smart HTTP",
    "push → live, polling `GITRELOAD_INTERVAL=1s`, no checker, smart HTTP",
    "Prometheus's own `POST /-/reload` (asked directly)",
    "idle: CPU per no-change poll over {transport}, process + children (/proc/PID/stat, {polls} polls)",
    "  same, live threads' schedstat (ns resolution), {transport}",
    "  of which children (cutime+cstime), {transport}",
    "  no-change fetch wall time over {transport} (gitreload's histogram, mean)",
    "idle: resident memory after {polls} polls, {transport} (VmRSS)",
    "  peak resident memory (VmHWM), {transport}",
    "  of which anonymous (RssAnon: heap, stacks), {transport}",
    "  of which file-backed (RssFile: pages of the binary and libc), {transport}",
    "  private to gitreload (USS: RSS less the pages it shares, such as libc's), {transport}",
    "initial sync, {label}: start → last file on the destination",
    "  `{stage}` stage, initial sync, {label}",
    "one-file change, {label}: push → file on the destination, no checker",
    "  `{stage}` stage, one-file change, {label}",
    "  whole sync (gitreload_sync_duration_seconds), one-file change, {label}",
    "  peak resident memory (VmHWM), {label}",
    "fan-out, 100 healthy + 1 hung target: file on disk → last healthy request arrives",
    "  same, gitreload's logs: `config deployed` → last healthy `target reloaded`",
    "fan-out, {n} healthy target(s): file on disk → last request arrives",
    "  same, gitreload's logs: `config deployed` → `reload confirmed on every target`, {n}",
];

/// The name of a row: `template` (one of [`FIGURES`]) with each `{name}`
/// replaced by its value in `parts`.
fn figure(template: &str, parts: &[(&str, &dyn std::fmt::Display)]) -> String {
    assert!(
        FIGURES.contains(&template),
        "figure {template:?} is not in FIGURES"
    );
    let mut name = template.to_string();
    for (key, value) in parts {
        name = name.replace(&format!("{{{key}}}"), &value.to_string());
    }
    assert!(
        !name.contains('{'),
        "figure {name:?} has a part left unfilled"
    );
    name
}

/// One row of the final table.
struct Row {
    figure: String,
    /// `Ok(stats)` for a sample, `Err(value)` for a single figure.
    value: Result<Stats, f64>,
    unit: Unit,
    target: String,
    /// `Some(true)` hit, `Some(false)` miss, `None` no target.
    hit: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn sample(
        &mut self,
        figure: &str,
        values: &[f64],
        unit: Unit,
        target: &str,
        hit: impl FnOnce(&Stats) -> bool,
    ) -> Stats {
        let stats = Stats::of(values);
        let verdict = (!target.is_empty()).then(|| hit(&stats));
        eprintln!(
            "  {figure}: median {} (min {}, p95 {}, max {}, n={})",
            fmt(stats.median, unit),
            fmt(stats.min, unit),
            fmt(stats.p95, unit),
            fmt(stats.max, unit),
            stats.n
        );
        self.rows.push(Row {
            figure: figure.to_string(),
            value: Ok(stats),
            unit,
            target: target.to_string(),
            hit: verdict,
        });
        stats
    }

    fn single(&mut self, figure: &str, value: f64, unit: Unit, target: &str, hit: Option<bool>) {
        eprintln!("  {figure}: {}", fmt(value, unit));
        self.rows.push(Row {
            figure: figure.to_string(),
            value: Err(value),
            unit,
            target: target.to_string(),
            hit,
        });
    }

    fn print(&self) {
        println!("| figure | median | p95 | min | max | n | target | |");
        println!("|---|---:|---:|---:|---:|---:|---|---|");
        for row in &self.rows {
            let (median, p95, min, max, n) = match row.value {
                Ok(s) => (
                    fmt(s.median, row.unit),
                    fmt(s.p95, row.unit),
                    fmt(s.min, row.unit),
                    fmt(s.max, row.unit),
                    s.n.to_string(),
                ),
                Err(v) => (
                    fmt(v, row.unit),
                    String::new(),
                    String::new(),
                    String::new(),
                    "1".into(),
                ),
            };
            let verdict = match row.hit {
                Some(true) => "hit",
                Some(false) => "**miss**",
                None => "",
            };
            let target = if row.target.is_empty() {
                "—"
            } else {
                &row.target
            };
            println!(
                "| {} | {median} | {p95} | {min} | {max} | {n} | {target} | {verdict} |",
                row.figure
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Observing from outside

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: {cores} CPUs ({cpu}), Linux {}, gitreload {}",
        kernel.trim(),
        Gitreload::binary()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A keep-alive HTTP client for tight polling (the fixtures' client opens
/// a connection per request).
fn poll_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("cannot build the polling client")
}

/// Polls `url` every millisecond until its body contains `needle`;
/// returns when it first did, or `None` after `timeout`.
fn poll_body(
    client: &reqwest::blocking::Client,
    url: &str,
    needle: &str,
    timeout: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    let max_polls = timeout.as_millis() as usize + 10;
    for _ in 0..max_polls {
        if let Ok(resp) = client.get(url).send() {
            if resp.text().is_ok_and(|body| body.contains(needle)) {
                return Some(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Waits (polling every millisecond) until `path` holds exactly `content`;
/// returns when it first did.
fn wait_file(path: &Path, content: &[u8], timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    let max_polls = timeout.as_millis() as usize + 10;
    for _ in 0..max_polls {
        if std::fs::read(path).is_ok_and(|c| c == content) {
            return Instant::now();
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!(
        "{} did not get the expected content within {timeout:?}",
        path.display()
    );
}

/// gitreload's /metrics (Prometheus text format).
fn scrape(base: &str) -> String {
    let (status, body) = http_get(&format!("{base}/metrics"));
    assert_eq!(status, 200, "GET {base}/metrics");
    body
}

/// The value of one exact series (`name{labels}`), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn stage_sum(text: &str, stage: &str) -> f64 {
    sample(
        text,
        &format!("gitreload_stage_duration_seconds_sum{{stage=\"{stage}\"}}"),
    )
}

fn stage_count(text: &str, stage: &str) -> f64 {
    sample(
        text,
        &format!("gitreload_stage_duration_seconds_count{{stage=\"{stage}\"}}"),
    )
}

fn unchanged_polls(base: &str) -> f64 {
    sample(&scrape(base), "gitreload_sync_total{result=\"unchanged\"}")
}

/// Mean duration (ms) of `stage` between two scrapes.
fn stage_mean_ms(before: &str, after: &str, stage: &str) -> Option<f64> {
    let n = stage_count(after, stage) - stage_count(before, stage);
    (n > 0.0).then(|| (stage_sum(after, stage) - stage_sum(before, stage)) * 1000.0 / n)
}

/// Waits until GET /readyz answers 200.
fn wait_ready(base: &str, run: &mut RunningGitreload) {
    let url = format!("{base}/readyz");
    wait_until_or(
        "gitreload to be ready",
        Duration::from_secs(120),
        || matches!(try_http_get(&url), Ok((200, _))),
        || run.output_tail(30),
    );
}

fn post_sync(base: &str) {
    let (status, body) = http_post(&format!("{base}/sync"), &[], "");
    assert_eq!(status, 202, "POST /sync: {body}");
}

fn log_time(event: &Value) -> SystemTime {
    humantime::parse_rfc3339(event["timestamp"].as_str().expect("timestamp"))
        .expect("RFC 3339 timestamp")
}

fn log_delta_ms(from: &Value, to: &Value) -> f64 {
    match log_time(to).duration_since(log_time(from)) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

/// CPU time of a process from /proc: its own (all threads, dead ones too),
/// its reaped children's, and the live threads' schedstat (ns resolution).
#[derive(Clone, Copy, Debug)]
struct Cpu {
    own_ticks: u64,
    children_ticks: u64,
    threads_ns: u64,
}

fn cpu_of(pid: u32) -> Cpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<u64> = stat
        .rsplit_once(") ")
        .expect("stat format")
        .1
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let mut threads_ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let path = task.expect("task entry").path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            threads_ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Cpu {
        own_ticks: fields[0] + fields[1],
        children_ticks: fields[2] + fields[3],
        threads_ns,
    }
}

fn clock_ticks_per_second() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// A `kB` field of /proc/PID/status, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Private_Clean + Private_Dirty of /proc/PID/smaps_rollup, in MiB: the
/// memory that would be freed if the process exited.
fn private_mib(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kb: f64 = text
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum();
    kb / 1024.0
}

fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// 1. Push to live

/// Two Prometheus replicas of `tasks.prometheus` on distinct addresses,
/// one port, reading the sidecar's destination; git daemon and smart HTTP
/// serving the config repository; dnsmasq.
struct Fleet {
    sidecar: Sidecar,
    daemon: GitDaemon,
    http: SmartHttp,
    dns: Dns,
    proms: Vec<Prometheus>,
    port: u16,
}

impl Fleet {
    fn start() -> Fleet {
        let ips = ["127.0.3.1", "127.0.3.2"];
        let sidecar = Sidecar::new();
        sidecar
            .upstream
            .write("prometheus.yml", prometheus_yml("seed"));
        sidecar.upstream.commit_and_push("seed");
        let out = sidecar.gitreload_file().arg("--once").run_once(WAIT);
        assert!(out.status.success(), "seeding failed: {}", out.stdout);
        let Replicas { proms, port, dns } =
            Replicas::start("tasks.prometheus", &ips, &sidecar.dest());
        let daemon = GitDaemon::start(&sidecar.upstream);
        let http = SmartHttp::start(&sidecar.upstream);
        Fleet {
            sidecar,
            daemon,
            http,
            dns,
            proms,
            port,
        }
    }

    /// gitreload fetching `repo`, reloading both replicas, with its HTTP
    /// server.
    fn gitreload(&self, repo: &str, interval: &str) -> (Gitreload, String) {
        let listen = free_addr("127.0.0.1");
        let g = self
            .sidecar
            .gitreload(repo)
            .env("GITRELOAD_INTERVAL", interval)
            .env("GITRELOAD_LISTEN", &listen)
            .env("GITRELOAD_LOG_LEVEL", "info")
            .env(
                "GITRELOAD_TARGETS",
                format!("http://tasks.prometheus:{}/-/reload", self.port),
            )
            .env("GITRELOAD_DNS_SERVER", self.dns.server());
        (g, format!("http://{listen}"))
    }

    /// Commits a config with `marker` (not pushed yet).
    fn commit(&self, marker: &str) {
        self.sidecar
            .upstream
            .write("prometheus.yml", prometheus_yml(marker));
        self.sidecar.upstream.commit(marker);
    }

    /// From `t0` until every replica's `/api/v1/status/config` shows
    /// `marker`: the latest of the replicas' times.
    fn wait_live(&self, client: &reqwest::blocking::Client, marker: &str, t0: Instant) -> f64 {
        let needle = format!("marker: {marker}");
        let seen: Vec<Option<Instant>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .proms
                .iter()
                .map(|p| {
                    let url = format!("{}/api/v1/status/config", p.url());
                    let needle = &needle;
                    scope.spawn(move || poll_body(client, &url, needle, WAIT))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let latest = seen
            .iter()
            .map(|t| t.unwrap_or_else(|| panic!("a replica never served {marker}")))
            .max()
            .unwrap();
        ms(latest - t0)
    }

    /// `trials` pushes, each followed at once by `POST /sync` (the timer is
    /// out of play): push → live on both replicas, and gitreload's metrics
    /// scraped before and after.
    fn webhook_trials(
        &self,
        client: &reqwest::blocking::Client,
        g: Gitreload,
        base: &str,
        prefix: char,
        trials: usize,
    ) -> (Vec<f64>, String, String) {
        let mut run = g.spawn();
        wait_ready(base, &mut run);
        let before = scrape(base);
        let mut live = Vec::new();
        for i in 0..trials {
            let marker = format!("{prefix}{i:03}");
            self.commit(&marker);
            let confirmed = run.count_events("reload confirmed on every target");
            self.sidecar.upstream.push();
            let t0 = Instant::now();
            post_sync(base);
            live.push(self.wait_live(client, &marker, t0));
            run.wait_for_event_count(WAIT, "reload confirmed on every target", confirmed + 1);
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = scrape(base);
        run.terminate();
        (live, before, after)
    }
}

fn push_to_live(plan: &Plan, report: &mut Report) {
    let fleet = Fleet::start();
    let client = poll_client();
    let trials = plan.trials(20, 4);

    for (transport, url, prefix) in [
        ("smart HTTP", fleet.http.url(), 'h'),
        ("git://", fleet.daemon.url(), 'w'),
    ] {
        let (g, base) = fleet.gitreload(&url, "1h");
        let (live, before, after) = fleet.webhook_trials(&client, g, &base, prefix, trials);
        report.sample(
            &figure(
                "push → live on both Prometheus replicas, webhook, no checker, {transport}",
                &[("transport", &transport)],
            ),
            &live,
            Unit::Ms,
            "median < 100 ms",
            |s| s.median < 100.0,
        );
        for stage in ["fetch", "materialize", "deploy", "reload"] {
            if let Some(mean) = stage_mean_ms(&before, &after, stage) {
                report.single(
                    &figure(
                        "  of which `{stage}` stage, {transport} (gitreload's histogram, mean)",
                        &[("stage", &stage), ("transport", &transport)],
                    ),
                    mean,
                    Unit::Ms,
                    "",
                    None,
                );
            }
        }
    }

    // The checker's own time: promtool on the same config, run directly.
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), prometheus_yml("check")).unwrap();
    let mut promtool = Vec::new();
    for _ in 0..plan.trials(10, 3) {
        let began = Instant::now();
        let out = clean_command("promtool")
            .args(["check", "config", "prometheus.yml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("promtool");
        promtool.push(ms(began.elapsed()));
        assert!(out.success(), "promtool rejected the benchmark config");
    }
    let promtool = report.sample(
        &figure(
            "`promtool check config` on its own (the checker's time)",
            &[],
        ),
        &promtool,
        Unit::Ms,
        "",
        |_| true,
    );

    // Webhook with promtool as the checker.
    let (g, base) = fleet.gitreload(&fleet.http.url(), "1h");
    let g = g.env("GITRELOAD_CHECK", "prometheus");
    let (checked, _, _) = fleet.webhook_trials(&client, g, &base, 'c', plan.trials(10, 3));
    let budget = 100.0 + promtool.median;
    report.sample(
        &figure(
            "push → live, webhook, `GITRELOAD_CHECK=prometheus`, smart HTTP",
            &[],
        ),
        &checked,
        Unit::Ms,
        &format!("median < 100 ms + promtool's median = {budget:.0} ms"),
        |s| s.median < budget,
    );

    // Polling every second. Pushes are spread over the poll period: each
    // one waits a different fraction of the interval after the last one
    // went live.
    let (g, base) = fleet.gitreload(&fleet.http.url(), "1s");
    let mut run = g.spawn();
    wait_ready(&base, &mut run);
    let mut polling = Vec::new();
    for i in 0..trials {
        let marker = format!("p{i:03}");
        fleet.commit(&marker);
        std::thread::sleep(Duration::from_millis((i * 1000 / trials) as u64));
        fleet.sidecar.upstream.push();
        let t0 = Instant::now();
        polling.push(fleet.wait_live(&client, &marker, t0));
    }
    run.terminate();
    report.sample(
        &figure(
            "push → live, polling `GITRELOAD_INTERVAL=1s`, no checker, smart HTTP",
            &[],
        ),
        &polling,
        Unit::Ms,
        "median < 700 ms",
        |s| s.median < 700.0,
    );

    // Prometheus's own reload, asked directly: a floor under every figure.
    let url = format!("{}/-/reload", fleet.proms[0].url());
    let mut reloads = Vec::new();
    for _ in 0..plan.trials(10, 3) {
        let began = Instant::now();
        let resp = client.post(&url).send().expect("POST /-/reload");
        assert!(resp.status().is_success(), "Prometheus refused a reload");
        reloads.push(ms(began.elapsed()));
    }
    report.sample(
        &figure("Prometheus's own `POST /-/reload` (asked directly)", &[]),
        &reloads,
        Unit::Ms,
        "",
        |_| true,
    );
}

// ---------------------------------------------------------------------------
// 2. Idle cost

/// A small, typical config repository: prometheus.yml and a few rule files.
fn seed_config(up: &Upstream) {
    up.write("prometheus.yml", prometheus_yml("idle"));
    for i in 0..10 {
        up.write(&format!("rules/r{i:02}.yml"), rules_file(i, 0));
    }
    up.commit_and_push("config");
}

fn idle_cost(plan: &Plan, report: &mut Report) {
    let polls = plan.trials(60, 20) as f64;
    let long_polls = plan.trials(120, 30) as f64;
    for transport in ["git://", "smart HTTP"] {
        let s = Sidecar::new();
        seed_config(&s.upstream);
        let (_daemon, _http, url) = if transport == "git://" {
            let d = GitDaemon::start(&s.upstream);
            let url = d.url();
            (Some(d), None, url)
        } else {
            let h = SmartHttp::start(&s.upstream);
            let url = h.url();
            (None, Some(h), url)
        };
        let listen = free_addr("127.0.0.1");
        let base = format!("http://{listen}");
        let mut run = s
            .gitreload(&url)
            .env("GITRELOAD_INTERVAL", "100ms")
            .env("GITRELOAD_LISTEN", &listen)
            .env("GITRELOAD_LOG_LEVEL", "info")
            .spawn();
        run.wait_for_event(WAIT, "config deployed");
        wait_until("a few no-change polls", WAIT, || {
            unchanged_polls(&base) >= 3.0
        });
        let pid = run.pid();

        // One poll takes the interval plus the fetch: measure the period, so
        // the window holds about `polls` polls. The scrapes that count them
        // sit outside the CPU readings.
        let (a, began) = (unchanged_polls(&base), Instant::now());
        std::thread::sleep(Duration::from_secs(2));
        let period = began.elapsed().as_secs_f64() / (unchanged_polls(&base) - a).max(1.0);
        let first = scrape(&base);
        let cpu0 = cpu_of(pid);
        std::thread::sleep(Duration::from_secs_f64(polls * period));
        let cpu1 = cpu_of(pid);
        let last = scrape(&base);
        let unchanged = "gitreload_sync_total{result=\"unchanged\"}";
        let n = sample(&last, unchanged) - sample(&first, unchanged);
        assert!(n > 0.0, "no polls counted");
        let tick_ms = 1000.0 / clock_ticks_per_second();
        let own = (cpu1.own_ticks - cpu0.own_ticks) as f64 * tick_ms;
        let children = (cpu1.children_ticks - cpu0.children_ticks) as f64 * tick_ms;
        let threads = (cpu1.threads_ns.saturating_sub(cpu0.threads_ns)) as f64 / 1e6;
        report.single(
            &figure(
                "idle: CPU per no-change poll over {transport}, process + children (/proc/PID/stat, {polls} polls)",
                &[("transport", &transport), ("polls", &format!("{n:.0}"))],
            ),
            (own + children) / n,
            Unit::Ms,
            "< 2 ms",
            Some((own + children) / n < 2.0),
        );
        report.single(
            &figure(
                "  same, live threads' schedstat (ns resolution), {transport}",
                &[("transport", &transport)],
            ),
            threads / n,
            Unit::Ms,
            "",
            None,
        );
        report.single(
            &figure(
                "  of which children (cutime+cstime), {transport}",
                &[("transport", &transport)],
            ),
            children / n,
            Unit::Ms,
            "",
            None,
        );

        if let Some(fetch) = stage_mean_ms(&first, &last, "fetch") {
            report.single(
                &figure(
                    "  no-change fetch wall time over {transport} (gitreload's histogram, mean)",
                    &[("transport", &transport)],
                ),
                fetch,
                Unit::Ms,
                "",
                None,
            );
        }

        wait_until("the hour-equivalent of polls", WAIT * 2, || {
            unchanged_polls(&base) >= long_polls
        });
        let rss = status_mib(pid, "VmRSS");
        let hwm = status_mib(pid, "VmHWM");
        eprintln!(
            "  threads: {}, polls so far: {}",
            status_field(pid, "Threads"),
            unchanged_polls(&base)
        );
        report.single(
            &figure(
                "idle: resident memory after {polls} polls, {transport} (VmRSS)",
                &[
                    ("polls", &format!("{long_polls:.0}")),
                    ("transport", &transport),
                ],
            ),
            rss,
            Unit::MiB,
            "< 10 MB",
            Some(rss * 1.048_576 < 10.0),
        );
        report.single(
            &figure(
                "  peak resident memory (VmHWM), {transport}",
                &[("transport", &transport)],
            ),
            hwm,
            Unit::MiB,
            "",
            None,
        );
        report.single(
            &figure(
                "  of which anonymous (RssAnon: heap, stacks), {transport}",
                &[("transport", &transport)],
            ),
            status_mib(pid, "RssAnon"),
            Unit::MiB,
            "",
            None,
        );
        report.single(
            &figure(
                "  of which file-backed (RssFile: pages of the binary and libc), {transport}",
                &[("transport", &transport)],
            ),
            status_mib(pid, "RssFile"),
            Unit::MiB,
            "",
            None,
        );
        report.single(
            &figure(
                "  private to gitreload (USS: RSS less the pages it shares, such as libc's), {transport}",
                &[("transport", &transport)],
            ),
            private_mib(pid),
            Unit::MiB,
            "",
            None,
        );
        run.terminate();
    }
}

// ---------------------------------------------------------------------------
// 3. Repository size

/// A rules file of about 2 KB, distinct for each `(index, version)`.
fn rules_file(index: usize, version: usize) -> String {
    let mut x = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((version as u64) << 32);
    let mut text = format!(
        "# generated rules file {index}, version {version}\ngroups:\n  - name: group_{index}\n    rules:\n"
    );
    while text.len() < 2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push_str(&format!(
            "      - record: job:metric_{:08x}:rate5m\n        expr: sum by (job) (rate(metric_{:06x}_total[5m]))\n",
            x as u32,
            (x >> 40) as u32
        ));
    }
    text
}

fn file_path(index: usize) -> String {
    format!("d{:04}/f{index:06}.yml", index / 100)
}

/// Writes commits straight into the upstream bare repository with `git
/// fast-import` (a work tree of 50,000 files takes minutes to `git add`
/// and push). `files` are `(path, content)`; `parent` continues `main`.
fn fast_import(up: &Upstream, files: &[(String, String)], parent: bool, message: &str) {
    let mut stream = Vec::with_capacity(files.len() * 2200);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    write!(
        stream,
        "commit refs/heads/main\ncommitter Bench <bench@gitreload.invalid> {now} +0000\ndata {}\n{message}\n",
        message.len()
    )
    .unwrap();
    if parent {
        stream.extend_from_slice(b"from refs/heads/main^0\n");
    }
    for (path, content) in files {
        write!(stream, "M 100644 inline {path}\ndata {}\n", content.len()).unwrap();
        stream.extend_from_slice(content.as_bytes());
        stream.push(b'\n');
    }
    stream.extend_from_slice(b"done\n");
    let mut cmd = up.git_command();
    cmd.arg("--git-dir")
        .arg(up.bare_path())
        .args(["fast-import", "--quiet", "--done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("git fast-import");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&stream));
    let out = child.wait_with_output().expect("git fast-import");
    writer.join().unwrap().expect("writing to git fast-import");
    assert!(
        out.status.success(),
        "git fast-import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn repo_size(plan: &Plan, report: &mut Report) {
    for (files, changes) in [
        (100, plan.trials(10, 3)),
        (10_000, plan.trials(10, 3)),
        (50_000, plan.trials(5, 2)),
    ] {
        if !plan.sizes.is_empty() && !plan.sizes.contains(&files) {
            continue;
        }
        eprintln!("  {files} files");
        let s = Sidecar::new();
        let began = Instant::now();
        let all: Vec<(String, String)> = (0..files)
            .map(|i| (file_path(i), rules_file(i, 0)))
            .collect();
        fast_import(&s.upstream, &all, false, "many files");
        drop(all);
        // The server sends stored objects as they are rather than searching
        // for deltas (as a packed production server would).
        s.upstream.git(&[
            "--git-dir",
            s.upstream.bare_path().to_str().unwrap(),
            "config",
            "pack.window",
            "0",
        ]);
        eprintln!("  repository written in {:.1?}", began.elapsed());
        let daemon = GitDaemon::start(&s.upstream);
        let listen = free_addr("127.0.0.1");
        let base = format!("http://{listen}");
        let g = s
            .gitreload(&daemon.url())
            .env("GITRELOAD_INTERVAL", "1h")
            .env("GITRELOAD_LISTEN", &listen)
            .env("GITRELOAD_LOG_LEVEL", "info")
            .env(
                "GITRELOAD_MAX_FILES",
                (files + 1000).max(10_000).to_string(),
            );

        let last = file_path(files - 1);
        let t0 = Instant::now();
        let mut run = g.spawn();
        let done = wait_file(
            &s.dest().join(&last),
            rules_file(files - 1, 0).as_bytes(),
            Duration::from_secs(600),
        );
        let initial = ms(done - t0);
        run.wait_for_event(WAIT, "config deployed");
        let first = scrape(&base);
        let label = format!("{files} files");
        report.single(
            &figure(
                "initial sync, {label}: start → last file on the destination",
                &[("label", &label)],
            ),
            initial,
            Unit::Ms,
            "",
            None,
        );
        for stage in ["fetch", "materialize", "deploy"] {
            report.single(
                &figure(
                    "  `{stage}` stage, initial sync, {label}",
                    &[("stage", &stage), ("label", &label)],
                ),
                stage_sum(&first, stage) * 1000.0,
                Unit::Ms,
                "",
                None,
            );
        }

        let changed = files / 2;
        let path = file_path(changed);
        let mut wall = Vec::new();
        let mut stages: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for version in 1..=changes {
            std::thread::sleep(Duration::from_millis(300)); // drift check settles
            let before = scrape(&base);
            let deployed = run.count_events("config deployed");
            let content = rules_file(changed, version);
            fast_import(
                &s.upstream,
                &[(path.clone(), content.clone())],
                true,
                "one file",
            );
            let t0 = Instant::now();
            post_sync(&base);
            let done = wait_file(&s.dest().join(&path), content.as_bytes(), WAIT);
            wall.push(ms(done - t0));
            run.wait_for_event_count(WAIT, "config deployed", deployed + 1);
            let after = scrape(&base);
            for stage in ["fetch", "materialize", "deploy"] {
                if let Some(v) = stage_mean_ms(&before, &after, stage) {
                    stages.entry(stage).or_default().push(v);
                }
            }
            let sync = (sample(&after, "gitreload_sync_duration_seconds_sum")
                - sample(&before, "gitreload_sync_duration_seconds_sum"))
                * 1000.0;
            stages.entry("sync").or_default().push(sync);
        }
        let big = files == 10_000;
        report.sample(
            &figure(
                "one-file change, {label}: push → file on the destination, no checker",
                &[("label", &label)],
            ),
            &wall,
            Unit::Ms,
            if big { "median < 200 ms" } else { "" },
            |s| s.median < 200.0,
        );
        for stage in ["fetch", "materialize", "deploy"] {
            let target = if big && stage == "deploy" {
                "median < 50 ms"
            } else {
                ""
            };
            report.sample(
                &figure(
                    "  `{stage}` stage, one-file change, {label}",
                    &[("stage", &stage), ("label", &label)],
                ),
                &stages[stage],
                Unit::Ms,
                target,
                |s| s.median < 50.0,
            );
        }
        report.sample(
            &figure(
                "  whole sync (gitreload_sync_duration_seconds), one-file change, {label}",
                &[("label", &label)],
            ),
            &stages["sync"],
            Unit::Ms,
            "",
            |_| true,
        );
        report.single(
            &figure(
                "  peak resident memory (VmHWM), {label}",
                &[("label", &label)],
            ),
            status_mib(run.pid(), "VmHWM"),
            Unit::MiB,
            "",
            None,
        );
        run.terminate();
    }
}

// ---------------------------------------------------------------------------
// 4. Fan-out

/// Cheap reload targets: one listener per address, all on one port. A
/// healthy one reads the request, records when it arrived, answers 200; a
/// hung one accepts and never answers.
struct Targets {
    arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
    addrs: Vec<String>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Targets {
    fn start(ips: &[String], port: u16, hung: &[String]) -> Targets {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut addrs = Vec::new();
        for ip in ips.iter().chain(hung) {
            let listener = TcpListener::bind((ip.as_str(), port))
                .unwrap_or_else(|e| panic!("cannot listen on {ip}:{port}: {e}"));
            let is_hung = hung.contains(ip);
            let (arrivals, stop, ip) = (arrivals.clone(), stop.clone(), ip.clone());
            addrs.push(format!("{ip}:{port}"));
            threads.push(std::thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    if is_hung {
                        held.push(stream);
                        continue;
                    }
                    if read_request_head(&mut stream) {
                        arrivals.lock().unwrap().push((ip.clone(), Instant::now()));
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }));
        }
        Targets {
            arrivals,
            stop,
            addrs,
            threads,
        }
    }

    fn clear(&self) {
        self.arrivals.lock().unwrap().clear();
    }

    /// Waits until requests arrived from `n` distinct addresses among
    /// `ips`; returns the last arrival.
    fn wait_arrivals(&self, ips: &[String], timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        for _ in 0..timeout.as_millis() + 10 {
            {
                let arrivals = self.arrivals.lock().unwrap();
                let mut seen: BTreeMap<&str, Instant> = BTreeMap::new();
                for (ip, at) in arrivals.iter() {
                    if ips.contains(ip) {
                        seen.entry(ip.as_str()).or_insert(*at);
                    }
                }
                if seen.len() == ips.len() {
                    return *seen.values().max().unwrap();
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!(
            "only {} of {} targets got a request within {timeout:?}",
            self.arrivals.lock().unwrap().len(),
            ips.len()
        );
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for addr in &self.addrs {
            let _ = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads up to the end of an HTTP request head (bounded); true if complete.
fn read_request_head(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while buf.len() < 16 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
    }
    false
}

fn fan_out(plan: &Plan, report: &mut Report) {
    let healthy: Vec<String> = (1..=100).map(|i| format!("127.0.1.{i}")).collect();
    let hung = vec!["127.0.1.101".to_string()];
    let all: Vec<&str> = healthy.iter().chain(&hung).map(String::as_str).collect();
    let port = free_port_on(&all);
    let targets = Targets::start(&healthy, port, &hung);
    let mut records: Vec<(&str, &str)> = Vec::new();
    for ip in &healthy[..1] {
        records.push(("tasks.one", ip));
    }
    for ip in &healthy[..10] {
        records.push(("tasks.ten", ip));
    }
    for ip in healthy.iter().chain(&hung) {
        if !hung.contains(ip) {
            records.push(("tasks.hundred", ip));
        }
        records.push(("tasks.hung", ip));
    }
    let dns = Dns::start(&records);

    let s = Sidecar::new();
    s.upstream.write("app.yml", "version: 0\n");
    s.upstream.commit_and_push("v0");
    let daemon = GitDaemon::start(&s.upstream);
    let mut version = 0;
    let cases: [(&str, usize, bool); 4] = [
        ("tasks.one", 1, false),
        ("tasks.ten", 10, false),
        ("tasks.hundred", 100, false),
        ("tasks.hung", 100, true),
    ];
    let mut healthy_100 = None;
    for (name, n, with_hung) in cases {
        let listen = free_addr("127.0.0.1");
        let base = format!("http://{listen}");
        let mut run = s
            .gitreload(&daemon.url())
            .env("GITRELOAD_INTERVAL", "1h")
            .env("GITRELOAD_LISTEN", &listen)
            .env("GITRELOAD_LOG_LEVEL", "info")
            .env(
                "GITRELOAD_TARGETS",
                format!("http://{name}:{port}/-/reload"),
            )
            .env("GITRELOAD_DNS_SERVER", dns.server())
            .env("GITRELOAD_RELOAD_TIMEOUT", "10s")
            .spawn();
        wait_ready(&base, &mut run);
        let ips = &healthy[..n];
        let mut outside = Vec::new();
        let mut logged = Vec::new();
        for _ in 0..plan.trials(10, 3) {
            version += 1;
            let content = format!("version: {version}\n");
            s.upstream.write("app.yml", &content);
            let commit = s.upstream.commit(&format!("v{version}"));
            let deployed = run.count_events("config deployed");
            let confirmed = run.count_events("reload confirmed on every target");
            targets.clear();
            s.upstream.push();
            post_sync(&base);
            let on_disk = wait_file(&s.dest().join("app.yml"), content.as_bytes(), WAIT);
            let last = targets.wait_arrivals(ips, WAIT);
            outside.push(ms(last.saturating_duration_since(on_disk)));
            let deploy_event = run
                .wait_for_event_count(WAIT, "config deployed", deployed + 1)
                .pop()
                .unwrap();
            let short = &commit[..7];
            let end = if with_hung {
                run.wait_for_event_count_where(WAIT, n, |v| {
                    v["event"] == "target reloaded" && v["commit"] == short
                })
                .pop()
                .unwrap()
            } else {
                run.wait_for_event_count(WAIT, "reload confirmed on every target", confirmed + 1)
                    .pop()
                    .unwrap()
            };
            logged.push(log_delta_ms(&deploy_event, &end));
            std::thread::sleep(Duration::from_millis(150));
        }
        run.terminate();
        if with_hung {
            let base_median: f64 = healthy_100.unwrap_or(f64::NAN);
            let budget = base_median + 10.0;
            report.sample(
                &figure(
                "fan-out, 100 healthy + 1 hung target: file on disk → last healthy request arrives",
                &[],
            ),
                &outside,
                Unit::Ms,
                &format!("median ≤ healthy-100 median + 10 ms = {budget:.0} ms"),
                |s| s.median <= budget,
            );
            report.sample(
                &figure(
                    "  same, gitreload's logs: `config deployed` → last healthy `target reloaded`",
                    &[],
                ),
                &logged,
                Unit::Ms,
                "",
                |_| true,
            );
        } else {
            let stats = report.sample(
                &figure(
                    "fan-out, {n} healthy target(s): file on disk → last request arrives",
                    &[("n", &n)],
                ),
                &outside,
                Unit::Ms,
                if n == 100 { "median < 200 ms" } else { "" },
                |s| s.median < 200.0,
            );
            if n == 100 {
                healthy_100 = Some(stats.median);
            }
            report.sample(
                &figure(
                "  same, gitreload's logs: `config deployed` → `reload confirmed on every target`, {n}",
                &[("n", &n)],
            ),
                &logged,
                Unit::Ms,
                "",
                |_| true,
            );
        }
    }
    drop(targets);
}
