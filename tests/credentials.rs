//! Private repositories: SSH keys and known hosts against a real sshd,
//! HTTPS basic auth with a password file behind nginx (rotation included),
//! TLS with a private CA, and no secret anywhere in gitreload's output,
//! metrics or state directory.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::sidecar::{prometheus_yml, Sidecar};
use support::*;

/// Writes `content` to `dir/name` with `mode`, replacing it atomically (as
/// Docker and Kubernetes do when a secret changes); returns the path.
fn secret_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The `error` field of every "fetch failed" event in `lines`.
fn fetch_errors(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|v| v["event"] == "fetch failed")
        .map(|v| v["error"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Runs `--once` and returns the output; asserts it failed with exit 1 and
/// logged exactly the fetch error it returns.
#[track_caller]
fn failed_once(g: Gitreload) -> (String, Output) {
    let out = g.arg("--once").run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let errors = fetch_errors(&out.json_lines());
    assert_eq!(errors.len(), 1, "{}\n{}", out.stdout, out.stderr);
    (errors[0].clone(), out)
}

/// Every output line is a JSON object: ssh's and the server's messages do
/// not leak onto stderr around the structured log.
#[track_caller]
fn assert_only_json(out: &Output) {
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            "not a JSON log line: {line:?}\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// SSH

/// gitreload on `sshd` with the accepted key (0600) and a known_hosts file.
fn over_ssh(s: &Sidecar, sshd: &Sshd, url: &str) -> Gitreload {
    let dir = s.scratch();
    let key = secret_file(
        &dir,
        "deploy_key",
        &std::fs::read(sshd.client_key_path()).unwrap(),
        0o600,
    );
    let known_hosts = dir.join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    s.gitreload(url)
        .env("GITRELOAD_SSH_KEY_FILE", &key)
        .env("GITRELOAD_SSH_KNOWN_HOSTS_FILE", &known_hosts)
}

#[test]
fn ssh_clone_and_update_work_with_the_right_key_and_known_hosts() {
    let s = Sidecar::seeded();
    let sshd = Sshd::start(&s.upstream);
    let mut run = over_ssh(&s, &sshd, &sshd.url()).spawn_deployed();
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));

    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    assert!(run.terminate().success());
    // A 0600 key is used where it is; no copy of it is made.
    assert!(!s.state().join("ssh/id").exists());
    assert_eq!(
        run.count_events("fetch failed"),
        0,
        "{}",
        run.output_tail(20)
    );
}

#[test]
fn scp_like_url_on_the_default_port_is_fetched() {
    let s = Sidecar::seeded();
    let sshd = Sshd::start(&s.upstream);
    let out = over_ssh(&s, &sshd, &sshd.scp_url())
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
}

#[test]
fn wrong_ssh_key_fails_with_an_authentication_error() {
    let s = Sidecar::seeded();
    let sshd = Sshd::start(&s.upstream);
    let key = secret_file(
        &s.scratch(),
        "wrong_key",
        &std::fs::read(sshd.other_key_path()).unwrap(),
        0o600,
    );
    let g = over_ssh(&s, &sshd, &sshd.url()).env("GITRELOAD_SSH_KEY_FILE", &key);
    let (error, out) = failed_once(g);
    assert!(
        error.contains("authentication refused by 127.0.0.1"),
        "{error}"
    );
    assert!(error.contains(key.to_str().unwrap()), "{error}");
    assert!(error.contains("publickey"), "{error}");
    assert_only_json(&out);
    assert!(!s.dest().join("prometheus.yml").exists());
}

#[test]
fn server_missing_from_known_hosts_is_refused_with_how_to_add_it() {
    let s = Sidecar::seeded();
    let sshd = Sshd::start(&s.upstream);
    let other_host = s.scratch().join("known_hosts_other");
    std::fs::write(&other_host, "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpXt3iRvJiu2Gkn0MNRSQIlRsrdkwPBO5Sz5vO2wY3B\n").unwrap();
    let g = over_ssh(&s, &sshd, &sshd.url()).env("GITRELOAD_SSH_KNOWN_HOSTS_FILE", &other_host);
    let (error, out) = failed_once(g);
    let port = sshd.port();
    assert!(
        error.contains(&format!("SSH host key of [127.0.0.1]:{port} is unknown")),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "ssh-keyscan -p {port} 127.0.0.1 >> {}",
            other_host.display()
        )),
        "{error}"
    );
    assert!(
        error.contains("GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS"),
        "{error}"
    );
    assert_only_json(&out);
    assert!(!s.dest().join("prometheus.yml").exists());
}

#[test]
fn unknown_host_is_trusted_on_first_use_only_with_the_opt_out_and_a_changed_key_still_refused() {
    let s = Sidecar::seeded();
    let mut sshd = Sshd::start(&s.upstream);
    let key = secret_file(
        &s.scratch(),
        "deploy_key",
        &std::fs::read(sshd.client_key_path()).unwrap(),
        0o600,
    );
    let mut run = s
        .gitreload(&sshd.url())
        .env("GITRELOAD_SSH_KEY_FILE", &key)
        .env("GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS", "true")
        .env("GITRELOAD_INTERVAL", "500ms")
        .spawn();
    let starting = run.wait_for_event(WAIT, "starting");
    assert_eq!(starting["ssh_accept_new_host_keys"], "true");
    run.wait_for_event_where(WAIT, "the opt-out warning", |v| {
        v["level"] == "warning"
            && v["event"]
                .as_str()
                .is_some_and(|e| e.contains("GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS=true"))
    });
    run.wait_for_event(WAIT, "config deployed");
    let trusted = run.wait_for_event(
        WAIT,
        "SSH host key trusted on first use (GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS)",
    );
    assert_eq!(trusted["host"], format!("[127.0.0.1]:{}", sshd.port()));
    let saved = std::fs::read_to_string(s.state().join("ssh/known_hosts")).unwrap();
    assert!(
        saved.contains(sshd.known_hosts_line().split(' ').nth(2).unwrap().trim()),
        "{saved}"
    );

    // The server now presents another key: trust on first use is over.
    let cursor = run.cursor();
    sshd.rotate_host_key();
    let failed = run.wait_for_event_after(cursor, WAIT, "fetch failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "SSH host key of [127.0.0.1]:{} has CHANGED",
            sshd.port()
        )),
        "{error}"
    );
    assert!(error.contains("SHA256:"), "{error}");
    assert!(error.contains("ssh-keygen -R"), "{error}");
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    assert!(run.terminate().success());
}

#[test]
fn changed_host_key_is_refused_and_the_live_config_kept() {
    let s = Sidecar::seeded();
    let mut sshd = Sshd::start(&s.upstream);
    let mut run = over_ssh(&s, &sshd, &sshd.url())
        .env("GITRELOAD_INTERVAL", "500ms")
        .spawn_deployed();
    let cursor = run.cursor();
    sshd.rotate_host_key();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    let failed = run.wait_for_event_after(cursor, WAIT, "fetch failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("has CHANGED"), "{error}");
    assert!(error.contains("known_hosts:1"), "{error}");
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    assert!(run.terminate().success());
}

#[test]
fn key_readable_by_others_is_copied_private_and_recopied_when_the_secret_changes() {
    let s = Sidecar::seeded();
    let sshd = Sshd::start(&s.upstream);
    let dir = s.scratch();
    // Docker secrets are 0444 by default; ssh refuses such a key. Written
    // with CRLF and no final newline, which ssh refuses too.
    let crlf = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        text.trim_end().replace('\n', "\r\n").into_bytes()
    };
    let key = secret_file(&dir, "docker_secret", &crlf(&sshd.client_key_path()), 0o444);
    let mut run = over_ssh(&s, &sshd, &sshd.url())
        .env("GITRELOAD_SSH_KEY_FILE", &key)
        .env("GITRELOAD_INTERVAL", "500ms")
        .spawn_deployed();
    let copied = run.wait_for_event(WAIT, "SSH key copied with mode 0600");
    assert!(
        copied["reason"].as_str().unwrap().contains("0444"),
        "{copied}"
    );
    let copy = s.state().join("ssh/id");
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The secret is replaced by a key the server does not accept: the copy
    // follows, and the fetch is refused.
    let cursor = run.cursor();
    secret_file(&dir, "docker_secret", &crlf(&sshd.other_key_path()), 0o444);
    let failed = run.wait_for_event_after(cursor, WAIT, "fetch failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("authentication refused"),
        "{failed}"
    );
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        std::fs::read_to_string(sshd.other_key_path()).unwrap()
    );
    assert!(run.terminate().success());
}

// ---------------------------------------------------------------------------
// HTTPS: basic auth with a password file, rotation, TLS with a private CA.
// Credentials only ever travel over TLS (gix and our settings refuse to send
// them over http://), so the basic-auth scenarios use the TLS listener.

/// nginx with TLS (private CA) and basic auth for `user` / `password`.
fn https_server(s: &Sidecar, user: &str, password: &str) -> SmartHttp {
    SmartHttp::start_with_tls(&s.upstream, Some((user, password)))
}

/// gitreload on the https URL as `user` with a password file holding
/// `password` (0444 and a final newline, as Docker secrets usually are) and
/// the server's CA.
fn with_login(s: &Sidecar, http: &SmartHttp, user: &str, password: &str) -> (Gitreload, PathBuf) {
    let file = secret_file(
        &s.scratch(),
        "git_token",
        format!("{password}\n").as_bytes(),
        0o444,
    );
    let g = s
        .gitreload(&http.https_url())
        .env("GITRELOAD_CA_FILE", http.ca_path())
        .env("GITRELOAD_USERNAME", user)
        .env("GITRELOAD_PASSWORD_FILE", &file);
    (g, file)
}

#[test]
fn password_file_authenticates_over_https_basic_auth() {
    let s = Sidecar::seeded();
    let http = https_server(&s, "deploy", "tok-right-1");
    let (g, file) = with_login(&s, &http, "deploy", "tok-right-1");
    let out = g.arg("--once").run_once(WAIT);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    let starting = &out.events("starting")[0];
    assert_eq!(starting["username"], "deploy");
    assert_eq!(
        starting["password"],
        format!("*** (from {})", file.display())
    );
}

#[test]
fn wrong_password_file_fails_with_an_authentication_error() {
    let s = Sidecar::seeded();
    let http = https_server(&s, "deploy", "tok-right-1");
    let (g, file) = with_login(&s, &http, "deploy", "tok-wrong-1");
    let (error, out) = failed_once(g);
    let host = http.https_url().split('/').nth(2).unwrap().to_string();
    assert!(
        error.contains(&format!("authentication refused by {host}")),
        "{error}"
    );
    assert!(error.contains("\"deploy\""), "{error}");
    assert!(error.contains(file.to_str().unwrap()), "{error}");
    assert!(!out.stdout.contains("tok-wrong-1") && !out.stderr.contains("tok-wrong-1"));
    assert_only_json(&out);
    assert!(!s.dest().join("prometheus.yml").exists());
}

#[test]
fn protected_repo_without_credentials_says_which_variables_to_set() {
    let s = Sidecar::seeded();
    let http = SmartHttp::start_with_basic_auth(&s.upstream, "deploy", "tok-right-1");
    let (error, _) = failed_once(s.gitreload(&http.url()));
    assert!(error.contains("requires authentication"), "{error}");
    assert!(
        error.contains("GITRELOAD_USERNAME and GITRELOAD_PASSWORD_FILE"),
        "{error}"
    );
}

#[test]
fn credentials_in_the_url_keep_working() {
    let s = Sidecar::seeded();
    let http = https_server(&s, "deploy", "tok-in-url-1");
    let out = s
        .gitreload(&http.https_url_with_credentials())
        .env("GITRELOAD_CA_FILE", http.ca_path())
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
}

#[test]
fn rotated_password_file_is_used_at_the_next_fetch_without_restart() {
    let s = Sidecar::seeded();
    let http = https_server(&s, "deploy", "tok-old-1");
    let (g, file) = with_login(&s, &http, "deploy", "tok-old-1");
    let mut run = g.env("GITRELOAD_INTERVAL", "300ms").spawn_deployed();
    let pid = run.pid();

    // The server rotates first: fetches fail until the secret follows.
    let cursor = run.cursor();
    http.set_password("tok-new-2");
    let failed = run.wait_for_event_after(cursor, WAIT, "fetch failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("authentication refused"),
        "{failed}"
    );
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    secret_file(file.parent().unwrap(), "git_token", b"tok-new-2\n", 0o444);
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), WAIT);
    assert_eq!(run.pid(), pid);
    assert!(run.is_running());
    assert!(run.terminate().success());
}

#[test]
fn private_ca_file_makes_https_work() {
    let s = Sidecar::seeded();
    let http = SmartHttp::start_with_tls(&s.upstream, None);
    let out = s
        .gitreload(&http.https_url())
        .env("GITRELOAD_CA_FILE", http.ca_path())
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    assert_eq!(
        out.events("starting")[0]["ca_file"],
        http.ca_path().to_str().unwrap()
    );
}

#[test]
fn https_with_a_private_ca_fails_clearly_without_the_ca_file() {
    let s = Sidecar::seeded();
    let http = SmartHttp::start_with_tls(&s.upstream, None);
    let host = http.https_url().split('/').nth(2).unwrap().to_string();
    let (error, out) = failed_once(s.gitreload(&http.https_url()));
    assert!(
        error.contains(&format!("TLS verification of {host} failed")),
        "{error}"
    );
    assert!(error.contains("GITRELOAD_CA_FILE"), "{error}");
    assert_only_json(&out);

    // Another CA's certificate is not enough either; the message names it.
    let other = s.scratch().join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    support::git::make_tls_certificates(&other);
    let (error, _) = failed_once(
        s.gitreload(&http.https_url())
            .env("GITRELOAD_CA_FILE", other.join("ca.pem")),
    );
    assert!(
        error.contains(&format!("TLS verification of {host} failed")),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "GITRELOAD_CA_FILE={}",
            other.join("ca.pem").display()
        )),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// Settings

#[test]
fn credential_settings_errors_name_the_variables_and_never_the_content() {
    // Every bad combination of credential settings is refused by the
    // parser (tests/settings_errors.rs); here the binary's side of one:
    // exit 2, one line naming the variable, the secret nowhere, nothing
    // written.
    let s = Sidecar::seeded();
    let secret = "content-of-a-secret-file-xyz";
    let out = Gitreload::new()
        .env("GITRELOAD_DEST", s.dest())
        .env("GITRELOAD_STATE_DIR", s.state())
        .env(
            "GITRELOAD_REPO",
            format!("http://deploy:{secret}@127.0.0.1:1/x.git"),
        )
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    for word in ["GITRELOAD_REPO", "only sent over https://"] {
        assert!(out.stderr.contains(word), "{word:?} not in {}", out.stderr);
    }
    assert!(!out.stderr.contains(secret), "{}", out.stderr);
    assert!(!out.stdout.contains(secret), "{}", out.stdout);
    assert!(!s.state().exists(), "state written");
}

// ---------------------------------------------------------------------------
// No leaks

/// Every file below `root` (recursively, symlinks not followed), as bytes.
fn all_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        visited += 1;
        assert!(visited < 10_000, "state dir walk did not end");
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn secrets_never_reach_logs_errors_metrics_or_the_state_dir() {
    let url_password = "Url-Pa55-leakcheck-7f3a";
    let file_password = "File-Tok-leakcheck-91c2";
    let rotated_password = "Rotated-Tok-leakcheck-5d0e";
    let webhook_secret = "Hook-Secret-leakcheck-22aa";
    let secrets = [
        url_password,
        file_password,
        rotated_password,
        webhook_secret,
    ];
    let mut captured: Vec<(String, String)> = Vec::new();

    // 1. Credentials in the URL: a success, then the server changes the
    //    password and every fetch is refused.
    let s = Sidecar::seeded();
    let http = https_server(&s, "deploy", url_password);
    let addr = free_addr("127.0.0.1");
    let mut run = s
        .gitreload(&http.https_url_with_credentials())
        .env("GITRELOAD_CA_FILE", http.ca_path())
        .env("GITRELOAD_LISTEN", &addr)
        .env("GITRELOAD_WEBHOOK_SECRET", webhook_secret)
        .env(
            "GITRELOAD_TARGETS",
            format!("http://reload:{webhook_secret}@127.0.0.1:1/-/reload"),
        )
        .spawn_deployed();
    let cursor = run.cursor();
    http.set_password("something-else");
    run.wait_for_event_after(cursor, WAIT, "fetch failed");
    let (status, metrics) = http_get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
    captured.push(("metrics (URL credentials)".into(), metrics));
    assert!(run.terminate().success());
    let out = run.output();
    captured.push(("stdout (URL credentials)".into(), out.stdout));
    captured.push(("stderr (URL credentials)".into(), out.stderr));
    for (path, bytes) in all_files(&s.state()) {
        captured.push((
            format!("state file {}", path.display()),
            String::from_utf8_lossy(&bytes).into(),
        ));
    }

    // 2. Password file: a success, refusals after the server rotates, a
    //    success once the file follows.
    let t = Sidecar::seeded();
    let http = https_server(&t, "deploy", file_password);
    let (g, file) = with_login(&t, &http, "deploy", file_password);
    let addr = free_addr("127.0.0.1");
    let hook_file = secret_file(&t.scratch(), "hook", webhook_secret.as_bytes(), 0o400);
    let mut run = g
        .env("GITRELOAD_LISTEN", &addr)
        .env("GITRELOAD_WEBHOOK_SECRET_FILE", &hook_file)
        .spawn_deployed();
    let cursor = run.cursor();
    http.set_password(rotated_password);
    run.wait_for_event_after(cursor, WAIT, "fetch failed");
    let cursor = run.cursor();
    t.upstream.write("prometheus.yml", prometheus_yml("two"));
    t.upstream.commit_and_push("two");
    secret_file(
        file.parent().unwrap(),
        "git_token",
        rotated_password.as_bytes(),
        0o444,
    );
    run.wait_for_event_after(cursor, WAIT, "config deployed");
    let (status, metrics) = http_get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
    captured.push(("metrics (password file)".into(), metrics));
    assert!(run.terminate().success());
    let out = run.output();
    assert!(
        out.stdout.contains("authentication refused"),
        "the refusals were logged: {}",
        out.stdout
    );
    captured.push(("stdout (password file)".into(), out.stdout));
    captured.push(("stderr (password file)".into(), out.stderr));
    for (path, bytes) in all_files(&t.state()) {
        captured.push((
            format!("state file {}", path.display()),
            String::from_utf8_lossy(&bytes).into(),
        ));
    }

    // 3. --help and a settings error with every secret set.
    let help = Gitreload::new()
        .env("GITRELOAD_REPO", http.https_url_with_credentials())
        .env("GITRELOAD_WEBHOOK_SECRET", webhook_secret)
        .arg("--help")
        .run_once(WAIT);
    captured.push(("--help".into(), help.stdout + &help.stderr));
    let bad = t
        .gitreload(&format!("https://deploy:{url_password}@127.0.0.1:1/x.git"))
        .env("GITRELOAD_USERNAME", "deploy")
        .env("GITRELOAD_PASSWORD_FILE", &file)
        .run_once(WAIT);
    assert_eq!(bad.status.code(), Some(2), "{}", bad.stderr);
    captured.push(("settings error".into(), bad.stdout + &bad.stderr));

    let mut leaks = Vec::new();
    for (what, text) in &captured {
        for secret in secrets {
            if contains(text.as_bytes(), secret) {
                leaks.push(format!("{secret} in {what}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
    assert!(
        captured.iter().any(|(w, _)| w.starts_with("state file")),
        "the state dirs were read"
    );
}
