//! Proves the fixtures in `tests/support/` work against the real peers, so a
//! failing scenario test points at gitreload, not at its test harness.

mod support;

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;

/// `git clone URL` into a fresh dir with the upstream's clean git
/// environment; returns the clone's `README` or the error text.
fn clone_readme(up: &Upstream, url: &str) -> Result<String, String> {
    let dest = TempDir::new().unwrap();
    let out = up
        .git_command()
        .args(["clone", "-q", url])
        .arg(dest.path().join("c"))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(fs::read_to_string(dest.path().join("c/README")).unwrap())
}

fn ls_remote_ok(up: &Upstream, url: &str) -> bool {
    up.git_command()
        .args(["ls-remote", url])
        .output()
        .unwrap()
        .status
        .success()
}

fn upstream_with_readme(text: &str) -> (Upstream, String) {
    let up = Upstream::new();
    up.write("README", text);
    up.write_exec("bin/check.sh", "#!/bin/sh\nexit 0\n");
    up.symlink("link", "README");
    let id = up.commit_and_push("first");
    assert_eq!(id.len(), 40);
    assert_eq!(up.remote_head("main").as_deref(), Some(id.as_str()));
    (up, id)
}

#[test]
fn upstream_history_can_be_rewritten() {
    let (up, first) = upstream_with_readme("v1\n");
    up.write("README", "v2\n");
    up.remove("link");
    let second = up.commit_and_push("second");
    assert_ne!(first, second);
    up.tag("v2");
    up.push_branch("feature");
    assert_eq!(up.remote_head("feature").as_deref(), Some(second.as_str()));
    up.force_push_to(&first);
    assert_eq!(up.remote_head("main").as_deref(), Some(first.as_str()));
    assert_eq!(clone_readme(&up, &up.file_url()).unwrap(), "v1\n");

    let (other, _) = upstream_with_readme("inner\n");
    up.add_submodule(&other.file_url(), "sub");
    up.commit_and_push("with a submodule");
    assert!(up
        .git(&["ls-tree", "HEAD", "sub"])
        .starts_with("160000 commit"));
}

#[test]
fn git_daemon_serves_a_clone_and_can_go_down() {
    let (up, _) = upstream_with_readme("over git://\n");
    let mut daemon = GitDaemon::start(&up);
    assert!(daemon.url().starts_with("git://127.0.0.1:"));
    assert_eq!(clone_readme(&up, &daemon.url()).unwrap(), "over git://\n");

    daemon.stop();
    assert!(
        !ls_remote_ok(&up, &daemon.url()),
        "ls-remote worked while the daemon was stopped"
    );
    daemon.restart();
    assert!(ls_remote_ok(&up, &daemon.url()));
}

#[test]
fn smart_http_serves_a_clone() {
    let (up, _) = upstream_with_readme("over http\n");
    let mut http = SmartHttp::start(&up);
    assert_eq!(
        clone_readme(&up, &http.url()).unwrap(),
        "over http\n",
        "{}",
        http.logs()
    );
    // protocol v2 reaches git-http-backend (gix's shallow fetch needs it).
    let out = up
        .git_command()
        .env("GIT_TRACE_PACKET", "1")
        .args(["-c", "protocol.version=2", "ls-remote", &http.url()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version 2"),
        "no protocol v2 over smart HTTP"
    );

    http.stop();
    assert!(!ls_remote_ok(&up, &http.url()));
    http.restart();
    assert!(ls_remote_ok(&up, &http.url()));
}

#[test]
fn smart_http_basic_auth_password_can_change() {
    let (up, _) = upstream_with_readme("secret\n");
    let http = SmartHttp::start_with_basic_auth(&up, "reader", "s3cret");
    let (status, _) = http_get(&format!("{}/info/refs?service=git-upload-pack", http.url()));
    assert_eq!(status, 401);
    assert!(!ls_remote_ok(&up, &http.url()));
    assert_eq!(
        clone_readme(&up, &http.url_with_credentials()).unwrap(),
        "secret\n",
        "{}",
        http.logs()
    );

    http.set_password("rotated");
    assert!(
        !ls_remote_ok(&up, &http.url_with_credentials()),
        "old password still accepted"
    );
    let rotated = http.url_with_credentials().replace("s3cret", "rotated");
    assert!(ls_remote_ok(&up, &rotated));
}

/// `git clone` of `url` with `GIT_SSH_COMMAND` set to `ssh_command`.
fn clone_readme_over_ssh(up: &Upstream, url: &str, ssh_command: &str) -> Result<String, String> {
    let dest = TempDir::new().unwrap();
    let out = up
        .git_command()
        .env("GIT_SSH_COMMAND", ssh_command)
        .args(["clone", "-q", url])
        .arg(dest.path().join("c"))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(fs::read_to_string(dest.path().join("c/README")).unwrap())
}

#[test]
fn sshd_serves_the_upstream_to_the_client_key_only_and_can_change_its_host_key() {
    let (up, _) = upstream_with_readme("over ssh\n");
    let mut sshd = Sshd::start(&up);
    let dir = TempDir::new().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let ssh = |key: &Path| {
        format!(
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none \
             -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null \
             -o UserKnownHostsFile={} -i {}",
            known_hosts.display(),
            key.display()
        )
    };
    let client = ssh(&sshd.client_key_path());
    for url in [sshd.url(), sshd.scp_url()] {
        assert_eq!(
            clone_readme_over_ssh(&up, &url, &client),
            Ok("over ssh\n".to_string()),
            "{url}\n{}",
            sshd.log_tail(20)
        );
    }
    let refused = clone_readme_over_ssh(&up, &sshd.url(), &ssh(&sshd.other_key_path()));
    assert!(refused.unwrap_err().contains("Permission denied"));

    sshd.rotate_host_key();
    let changed = clone_readme_over_ssh(&up, &sshd.url(), &client).unwrap_err();
    assert!(
        changed.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{changed}"
    );
    sshd.write_known_hosts(&known_hosts);
    assert!(clone_readme_over_ssh(&up, &sshd.url(), &client).is_ok());
}

#[test]
fn smart_http_tls_listener_is_trusted_with_its_private_ca_only() {
    let (up, _) = upstream_with_readme("over tls\n");
    let http = SmartHttp::start_with_tls(&up, Some(("reader", "s3cret")));
    let with_ca = |ca: Option<&Path>| {
        let dest = TempDir::new().unwrap();
        let mut cmd = up.git_command();
        if let Some(ca) = ca {
            cmd.env("GIT_SSL_CAINFO", ca);
        }
        cmd.args(["clone", "-q", &http.https_url_with_credentials()])
            .arg(dest.path().join("c"))
            .output()
            .unwrap()
    };
    let out = with_ca(Some(&http.ca_path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_ca(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate"));
    // The plain listener still serves, behind the same basic auth.
    assert!(ls_remote_ok(&up, &http.url_with_credentials()));
}

#[test]
fn dnsmasq_answers_several_a_records_nxdomain_and_changes() {
    let mut dns = Dns::start(&[
        ("tasks.prometheus", "127.0.0.2"),
        ("tasks.prometheus", "127.0.0.3"),
    ]);
    let two = vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
    assert_eq!(dns.resolve_a("tasks.prometheus"), Ok(two));
    assert_eq!(
        dns.resolve_a("unknown.example"),
        Err(support::dns::NXDOMAIN)
    );
    assert_eq!(dns.resolve_a("unknown"), Err(support::dns::NXDOMAIN));

    dns.set_records(&[
        ("tasks.prometheus", "127.0.0.4"),
        ("tasks.alertmanager", "127.0.0.5"),
    ]);
    assert_eq!(
        query_a(&dns.server(), "tasks.prometheus"),
        Ok(vec![Ipv4Addr::new(127, 0, 0, 4)])
    );
    assert_eq!(
        dns.resolve_a("tasks.alertmanager"),
        Ok(vec![Ipv4Addr::new(127, 0, 0, 5)])
    );

    dns.set_records(&[]);
    assert_eq!(
        dns.resolve_a("tasks.prometheus"),
        Err(support::dns::NXDOMAIN)
    );
}

fn write_prometheus_config(dir: &Path, version: &str) {
    let yml = format!(
        "global:\n  scrape_interval: 1m\n  external_labels:\n    config_version: \"{version}\"\n"
    );
    fs::write(dir.join("prometheus.yml"), yml).unwrap();
}

#[test]
fn two_prometheus_reload_a_changed_config() {
    let config = TempDir::new().unwrap();
    write_prometheus_config(config.path(), "one");
    let mut proms = [
        Prometheus::start("127.0.0.2", config.path()),
        Prometheus::start("127.0.0.3", config.path()),
    ];
    assert!(proms[0].addr().starts_with("127.0.0.2:"));
    assert!(proms[1].addr().starts_with("127.0.0.3:"));
    let before: Vec<f64> = proms
        .iter()
        .map(|p| p.last_reload_success_timestamp())
        .collect();
    for p in &proms {
        assert!(p.config().contains("config_version: one"), "{}", p.config());
    }

    write_prometheus_config(config.path(), "two");
    for (p, before) in proms.iter().zip(&before) {
        let (status, body) = http_post(&p.reload_url(), &[], "");
        assert_eq!((status, body.as_str()), (200, ""));
        assert!(p.config().contains("config_version: two"), "{}", p.config());
        assert!(p.last_reload_successful());
        assert!(p.last_reload_success_timestamp() > *before);
    }

    fs::write(config.path().join("prometheus.yml"), "global: [not a map\n").unwrap();
    let (status, body) = proms[0].reload();
    assert_eq!(status, 500, "{body}");
    assert!(!proms[0].last_reload_successful());

    // Outage and restart on the same address.
    write_prometheus_config(config.path(), "three");
    let addr = proms[1].addr();
    proms[1].stop();
    assert!(try_http_get(&format!("http://{addr}/-/ready")).is_err());
    proms[1].restart();
    assert_eq!(proms[1].addr(), addr);
    assert!(proms[1].config().contains("config_version: three"));

    // A frozen Prometheus accepts connections but answers nothing.
    proms[1].sigstop();
    let started = Instant::now();
    assert!(try_http_get(&format!("http://{addr}/-/ready")).is_err());
    assert!(started.elapsed() >= Duration::from_secs(4));
    proms[1].sigcont();
    assert_eq!(http_get(&format!("http://{addr}/-/ready")).0, 200);
}

fn write_alertmanager_config(dir: &Path, group_wait: &str) {
    let yml = format!(
        "route:\n  receiver: default\n  group_wait: {group_wait}\nreceivers:\n- name: default\n"
    );
    fs::write(dir.join("alertmanager.yml"), yml).unwrap();
}

#[test]
fn alertmanager_pair_starts_and_reloads() {
    let config = TempDir::new().unwrap();
    write_alertmanager_config(config.path(), "7s");
    let pair = Alertmanager::start_pair(["127.0.0.2", "127.0.0.3"], config.path());
    for am in &pair {
        assert!(am.config().contains("group_wait: 7s"), "{}", am.config());
    }
    wait_until(
        "the Alertmanagers to see each other",
        Duration::from_secs(15),
        || pair.iter().all(|am| am.cluster_peers() == 2),
    );

    write_alertmanager_config(config.path(), "11s");
    for am in &pair {
        let before = am.last_reload_success_timestamp();
        assert_eq!(am.reload(), (200, String::new()));
        assert!(am.config().contains("group_wait: 11s"), "{}", am.config());
        assert!(am.last_reload_successful());
        assert!(am.last_reload_success_timestamp() > before);
    }
    let started = Instant::now();
    drop(pair);
    eprintln!(
        "stopping the Alertmanager pair took {:?}",
        started.elapsed()
    );

    let single = Alertmanager::start("127.0.0.4", config.path());
    assert_eq!(single.cluster_addr(), None);
    assert_eq!(single.reload().0, 200);
    assert!(single.config().contains("group_wait: 11s"));
}

fn proc_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn child_guard_stops_its_process_on_drop() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("sleep.log");
    let guard = ChildGuard::spawn("sleep", Command::new("sleep").arg("30"), &log);
    let pid = guard.pid();
    assert!(proc_exists(pid));
    drop(guard);
    assert!(
        !proc_exists(pid),
        "process {pid} survived the drop of its guard"
    );
}

#[test]
fn child_guard_kills_a_process_that_ignores_sigterm() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("stubborn.log");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' TERM; echo ready; exec sleep 30"]);
    let mut guard = ChildGuard::spawn("stubborn", &mut cmd, &log);
    wait_until("the shell to set its trap", Duration::from_secs(5), || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
    });
    let pid = guard.pid();
    guard.sigstop();
    let started = Instant::now();
    let status = guard.stop();
    assert!(
        started.elapsed() >= STOP_GRACE,
        "SIGTERM should have been ignored"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(!proc_exists(pid));
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port("127.0.0.2")).collect();
    let mut unique = ports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ports.len());
    std::net::TcpListener::bind(("127.0.0.2", ports[0])).unwrap();
}

#[test]
fn gitreload_binary_runs_with_help() {
    let out = Gitreload::new()
        .arg("--help")
        .run_once(Duration::from_secs(20));
    assert!(out.status.success(), "gitreload --help failed: {out:?}");
}

#[test]
#[should_panic(expected = "exited with")]
fn waiting_for_an_event_fails_fast_when_gitreload_exits() {
    let mut run = Gitreload::new().arg("--help").spawn();
    run.wait_for_event(Duration::from_secs(20), "an event that never comes");
}
