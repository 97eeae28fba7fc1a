//! Someone who can push to the config repository tries to make gitreload
//! hand out what it keeps: its own credentials, its environment, files the
//! operator never meant as config material, the plaintext of encrypted
//! files through the checker's output; and secrets in URLs, or sent in
//! clear text. Each test is named for the attack it stops, and runs the
//! real binary against real peers (git over file://, smart HTTP behind
//! nginx, sshd, amtool).

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::sidecar::{prometheus_yml, Sidecar};
use support::*;

const T: Duration = Duration::from_secs(30);

/// Distinctive values: if these bytes show up where they must not, the
/// attack worked.
const SMTP_PASSWORD: &str = "hunter2-smtp-8d2b64c1";
const SLACK_TOKEN: &str = "slacktok-3f9c1e7a0b";
const WEBHOOK_SECRET: &str = "webhook-secret-77aa01fe";

/// An Alertmanager config whose SMTP password is `password` (a value or a
/// reference) and whose Slack URL is `slack_url`.
fn am_yml(password: &str, slack_url: &str) -> String {
    format!(
        "global:\n  smtp_smarthost: 'localhost:25'\n  smtp_from: 'alerts@example.test'\n  \
         smtp_auth_username: 'alerts'\n  smtp_auth_password: '{password}'\n\
         route:\n  receiver: ops\nreceivers:\n  - name: ops\n    slack_configs:\n      \
         - api_url: '{slack_url}'\n        channel: '#alerts'\n"
    )
}

fn good_slack_url() -> String {
    format!("https://hooks.slack.com/services/T000/B000/{SLACK_TOKEN}")
}

/// A sidecar whose first commit (a plain prometheus.yml) is deployed by a
/// `--once` run, so that a later rejection can be seen to change nothing.
fn deployed(g: impl Fn(&Sidecar) -> Gitreload) -> Sidecar {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    let out = g(&s).arg("--once").run_once(T);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    s
}

/// Pushes `alertmanager.yml` with `content`, runs `--once`, and returns the
/// reason of the materialize stage's rejection (which must name the file).
/// The destination must be as it was, and no log line may hold any of
/// `never`.
#[track_caller]
fn rejected(s: &Sidecar, g: Gitreload, content: &str, never: &[&str]) -> String {
    let before = s.dest_tree();
    s.upstream.write("alertmanager.yml", content);
    s.upstream.commit_and_push("hostile");
    let out = g.arg("--once").run_once(T);
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let events = out.events("commit rejected");
    assert_eq!(events.len(), 1, "{all}");
    assert_eq!(events[0]["path"], "alertmanager.yml", "{all}");
    assert_eq!(s.dest_tree(), before, "the destination changed: {all}");
    for secret in never {
        assert!(!all.contains(secret), "{secret} in the output: {all}");
    }
    events[0]["reason"].as_str().unwrap().to_string()
}

/// A scratch file `name` holding `content`.
fn scratch_file(s: &Sidecar, name: &str, content: &str) -> PathBuf {
    let path = s.scratch().join(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&path, content).unwrap();
    path
}

/// The scratch dir as the kernel names it (the allow list is matched on
/// resolved paths, and the temp dir may sit behind a link).
fn real_scratch(s: &Sidecar) -> PathBuf {
    s.scratch().canonicalize().unwrap()
}

// ---------------------------------------------------------------------------
// `${file:}`: only what the operator allowed, never gitreload's own files.

#[test]
fn file_reference_to_the_ssh_key_is_refused() {
    let s = Sidecar::new();
    let sshd = Sshd::start(&s.upstream);
    let key = scratch_file(
        &s,
        "secrets/gitreload_ssh_key",
        &std::fs::read_to_string(sshd.client_key_path()).unwrap(),
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let known_hosts = s.scratch().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let dir = real_scratch(&s).join("secrets");
    let g = || {
        s.gitreload(&sshd.url())
            .env("GITRELOAD_SSH_KEY_FILE", &key)
            .env("GITRELOAD_SSH_KNOWN_HOSTS_FILE", &known_hosts)
            .env("GITRELOAD_EXPAND", "alertmanager.yml")
            // The operator allowed the whole secrets directory, where the
            // key also lives.
            .env("GITRELOAD_EXPAND_FILES", format!("{}/*", dir.display()))
    };
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    let out = g().arg("--once").run_once(T);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);

    let reference = format!("${{file:{}}}", dir.join("gitreload_ssh_key").display());
    let reason = rejected(
        &s,
        g(),
        &am_yml(&reference, &good_slack_url()),
        &["PRIVATE KEY", "OPENSSH"],
    );
    assert!(reason.contains(&reference), "{reason}");
    assert!(reason.contains("GITRELOAD_SSH_KEY_FILE"), "{reason}");
    assert!(!s.dest().join("alertmanager.yml").exists());
}

#[test]
fn file_reference_through_a_symlink_to_proc_is_refused() {
    // /proc/self/environ holds every setting, the webhook secret included.
    // Refused whatever the list says, even when it allows every file.
    let g = |s: &Sidecar| {
        s.gitreload_file()
            .env("GITRELOAD_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("GITRELOAD_EXPAND", "alertmanager.yml")
            .env("GITRELOAD_EXPAND_FILES", "/**")
    };
    let s = deployed(g);
    let link = real_scratch(&s).join("secrets/environ");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
    let reference = format!("${{file:{}}}", link.display());
    let reason = rejected(
        &s,
        g(&s),
        &am_yml(&reference, &good_slack_url()),
        &[WEBHOOK_SECRET],
    );
    assert!(reason.contains(&reference), "{reason}");
    assert!(reason.contains("/proc"), "{reason}");

    // Written directly, it is refused before the filesystem is looked at.
    let reason = rejected(
        &s,
        g(&s),
        &am_yml("${file:/proc/self/environ}", &good_slack_url()),
        &[WEBHOOK_SECRET],
    );
    assert!(
        reason.contains("/proc, /sys and /dev are never substituted"),
        "{reason}"
    );
}

#[test]
fn file_reference_hard_linked_to_the_webhook_secret_is_refused() {
    let secret_file = |s: &Sidecar| real_scratch(s).join("own/webhook_secret");
    let g = |s: &Sidecar| {
        s.gitreload_file()
            .env("GITRELOAD_WEBHOOK_SECRET_FILE", secret_file(s))
            .env("GITRELOAD_EXPAND", "alertmanager.yml")
            .env(
                "GITRELOAD_EXPAND_FILES",
                format!("{}/secrets/*", real_scratch(s).display()),
            )
    };
    let s = Sidecar::new();
    scratch_file(&s, "own/webhook_secret", WEBHOOK_SECRET);
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    assert!(g(&s).arg("--once").run_once(T).status.success());

    // Another name for the same file, inside the allowed directory: the
    // path matches, the inode is gitreload's.
    let alias = real_scratch(&s).join("secrets/smtp_password");
    std::fs::create_dir_all(alias.parent().unwrap()).unwrap();
    std::fs::hard_link(secret_file(&s), &alias).unwrap();
    let reference = format!("${{file:{}}}", alias.display());
    let reason = rejected(
        &s,
        g(&s),
        &am_yml(&reference, &good_slack_url()),
        &[WEBHOOK_SECRET],
    );
    assert!(reason.contains("GITRELOAD_WEBHOOK_SECRET_FILE"), "{reason}");

    // And a symbolic link to the age identity is refused by its path.
    let keys = s.scratch().join("own/age_identity");
    let out = clean_command("age-keygen")
        .arg("-o")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let link = real_scratch(&s).join("secrets/key_link");
    std::os::unix::fs::symlink(&keys, &link).unwrap();
    let reference = format!("${{file:{}}}", link.display());
    let reason = rejected(
        &s,
        g(&s).env("GITRELOAD_AGE_IDENTITY_FILE", &keys),
        &am_yml(&reference, &good_slack_url()),
        &["AGE-SECRET-KEY"],
    );
    assert!(reason.contains("GITRELOAD_AGE_IDENTITY_FILE"), "{reason}");
}

#[test]
fn file_reference_outside_the_allowed_files_is_refused() {
    let g = |s: &Sidecar| {
        s.gitreload_file()
            .env("GITRELOAD_EXPAND", "alertmanager.yml")
            .env(
                "GITRELOAD_EXPAND_FILES",
                format!("{}/secrets/alertmanager_*", real_scratch(s).display()),
            )
    };
    let s = deployed(g);
    let allowed = scratch_file(&s, "secrets/alertmanager_smtp", SMTP_PASSWORD);
    let other = scratch_file(&s, "secrets/database_password", "db-password-5e5e5e");
    let allowed = allowed.canonicalize().unwrap();
    let other = other.canonicalize().unwrap();

    let reference = format!("${{file:{}}}", other.display());
    let reason = rejected(
        &s,
        g(&s),
        &am_yml(&reference, &good_slack_url()),
        &["db-password-5e5e5e"],
    );
    assert!(reason.contains(&reference), "{reason}");
    assert!(
        reason.contains("not allowed by GITRELOAD_EXPAND_FILES"),
        "{reason}"
    );

    // A link with an allowed name to a file that is not allowed.
    let link = allowed.with_file_name("alertmanager_link");
    std::os::unix::fs::symlink(&other, &link).unwrap();
    let reference = format!("${{file:{}}}", link.display());
    let reason = rejected(
        &s,
        g(&s),
        &am_yml(&reference, &good_slack_url()),
        &["db-password-5e5e5e"],
    );
    assert!(reason.contains("resolves to"), "{reason}");

    // Without the variable nothing is allowed, and the error says what to set.
    let reason = rejected(
        &s,
        s.gitreload_file()
            .env("GITRELOAD_EXPAND", "alertmanager.yml"),
        &am_yml(
            &format!("${{file:{}}}", allowed.display()),
            &good_slack_url(),
        ),
        &[SMTP_PASSWORD],
    );
    assert!(
        reason.contains("GITRELOAD_EXPAND_FILES is not set"),
        "{reason}"
    );

    // The allowed file is substituted.
    s.upstream.write(
        "alertmanager.yml",
        am_yml(
            &format!("${{file:{}}}", allowed.display()),
            &good_slack_url(),
        ) + "# allowed\n",
    );
    s.upstream.commit_and_push("allowed");
    let out = g(&s).arg("--once").run_once(T);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(s.dest_file("alertmanager.yml").contains(SMTP_PASSWORD));
}

// ---------------------------------------------------------------------------
// `${env:}`: only allowed names, never gitreload's own.

#[test]
fn env_reference_to_gitreload_variables_is_refused() {
    // Even with every name allowed.
    let g = |s: &Sidecar| {
        s.gitreload_file()
            .env("GITRELOAD_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("GITRELOAD_EXPAND", "alertmanager.yml")
            .env("GITRELOAD_EXPAND_ENV", "*")
    };
    let s = deployed(g);
    let reason = rejected(
        &s,
        g(&s),
        &am_yml("${env:GITRELOAD_WEBHOOK_SECRET}", &good_slack_url()),
        &[WEBHOOK_SECRET],
    );
    assert!(
        reason.contains("${env:GITRELOAD_WEBHOOK_SECRET}"),
        "{reason}"
    );
    assert!(reason.contains("gitreload's own variables"), "{reason}");

    // A list naming gitreload's variables is a settings error.
    let out = s
        .gitreload_file()
        .env("GITRELOAD_EXPAND_ENV", "SLACK_*,GITRELOAD_*")
        .arg("--once")
        .run_once(T);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("GITRELOAD_EXPAND_ENV="),
        "{}",
        out.stderr
    );
}

#[test]
fn env_reference_outside_the_allowed_names_is_refused() {
    let g = |s: &Sidecar| {
        s.gitreload_file()
            .env("CLOUD_SECRET_ACCESS_KEY", "cloud-key-9a9a9a9a")
            .env("SLACK_URL", good_slack_url())
            .env("GITRELOAD_EXPAND", "alertmanager.yml")
            .env("GITRELOAD_EXPAND_ENV", "SLACK_*")
    };
    let s = deployed(g);
    let reason = rejected(
        &s,
        g(&s),
        &am_yml("${env:CLOUD_SECRET_ACCESS_KEY}", "${env:SLACK_URL}"),
        &["cloud-key-9a9a9a9a"],
    );
    assert!(
        reason.contains("${env:CLOUD_SECRET_ACCESS_KEY}"),
        "{reason}"
    );
    assert!(
        reason.contains("not allowed by GITRELOAD_EXPAND_ENV=SLACK_*"),
        "{reason}"
    );

    let reason = rejected(
        &s,
        s.gitreload_file()
            .env("SLACK_URL", good_slack_url())
            .env("GITRELOAD_EXPAND", "alertmanager.yml"),
        &am_yml("plain", "${env:SLACK_URL}"),
        &[SLACK_TOKEN],
    );
    assert!(
        reason.contains("GITRELOAD_EXPAND_ENV is not set"),
        "{reason}"
    );
}

// ---------------------------------------------------------------------------
// The checker's output: decrypted plaintext is masked.

/// `age-keygen -o path`; returns the recipient.
fn keygen(path: &Path) -> String {
    let out = clean_command("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = clean_command("age-keygen")
        .arg("-y")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn encrypted_config_rejected_by_the_checker_does_not_log_its_plaintext() {
    let s = Sidecar::new();
    let identity = s.scratch().join("age_identity");
    let recipient = keygen(&identity);
    let g = || {
        s.gitreload_file()
            .env("GITRELOAD_AGE_IDENTITY_FILE", &identity)
            .env("GITRELOAD_CHECK", "alertmanager")
    };
    s.upstream.write(
        "alertmanager.yml.age",
        age_encrypt(&recipient, &am_yml(SMTP_PASSWORD, &good_slack_url()), false),
    );
    s.upstream.commit_and_push("good");
    let out = g().arg("--once").run_once(T);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let before = s.dest_tree();

    // A stray space in the Slack URL: amtool quotes the whole URL, token
    // and all. Then the password typed on the wrong line: amtool quotes
    // its first seven characters.
    let broken = [
        (
            am_yml(
                SMTP_PASSWORD,
                &format!("https://hooks.slack.com /services/T000/B000/{SLACK_TOKEN}"),
            ),
            "invalid character",
        ),
        (
            am_yml(SMTP_PASSWORD, &good_slack_url()).replace(
                "  smtp_from: 'alerts@example.test'\n",
                &format!("  smtp_require_tls: {SMTP_PASSWORD}\n"),
            ),
            "cannot unmarshal",
        ),
    ];
    for (plaintext, error) in broken {
        s.upstream.write(
            "alertmanager.yml.age",
            age_encrypt(&recipient, &plaintext, false),
        );
        s.upstream.commit_and_push("broken");
        let out = g().arg("--once").run_once(T);
        let all = format!("{}\n{}", out.stdout, out.stderr);
        assert_eq!(out.status.code(), Some(1), "{all}");
        let rejected = out.events("commit rejected");
        assert_eq!(rejected.len(), 1, "{all}");
        let output = rejected[0]["output"].as_str().unwrap();
        assert!(
            output.contains(error),
            "the checker's error is lost: {output}"
        );
        for secret in [SMTP_PASSWORD, SLACK_TOKEN, &SMTP_PASSWORD[..7]] {
            assert!(!all.contains(secret), "{secret} in the log: {all}");
        }
        assert_eq!(s.dest_tree(), before);
    }
}

// ---------------------------------------------------------------------------
// Secrets in URLs' query strings.

#[test]
fn query_string_token_is_redacted_in_logs() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    let http = SmartHttp::start_with_tls(&s.upstream, None);
    let token = "glpat-querytoken-0b0b0b0b";
    let url = format!("{}?private_token={token}", http.https_url());
    let out = s
        .gitreload(&url)
        .env("GITRELOAD_CA_FILE", http.ca_path())
        .arg("--once")
        .run_once(T);
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert!(!all.contains(token), "the token in the log: {all}");
    let starting = out.events("starting");
    assert_eq!(starting.len(), 1, "{all}");
    assert!(
        starting[0]["repo"]
            .as_str()
            .unwrap()
            .ends_with("?private_token=***"),
        "{all}"
    );
}

#[test]
fn query_string_token_of_a_reload_target_is_redacted_in_logs_and_metrics() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    let token = "reload-token-1c1c1c1c";
    // Nothing listens there: every reload fails and is logged with its URL.
    let target = format!(
        "http://127.0.0.1:{}/-/reload?Access_Token={token}",
        free_port("127.0.0.1")
    );
    let listen = free_addr("127.0.0.1");
    let mut run = s
        .gitreload_file()
        .env("GITRELOAD_TARGETS", &target)
        .env("GITRELOAD_RELOAD_TIMEOUT", "1s")
        .env("GITRELOAD_LISTEN", &listen)
        .spawn();
    let failed = run.wait_for_event(T, "target reload failed");
    let (status, metrics) = http_get(&format!("http://{listen}/metrics"));
    assert_eq!(status, 200);
    run.terminate();
    let log = run.lines().join("\n");
    assert!(!log.contains(token), "the token in the log: {log}");
    assert!(!metrics.contains(token), "the token in /metrics: {metrics}");
    assert!(failed.to_string().contains("Access_Token=***"), "{failed}");
    assert!(metrics.contains("Access_Token=***"), "{metrics}");
}

// ---------------------------------------------------------------------------
// Credentials over plain http://.

#[test]
fn credentials_over_plain_http_are_refused_unless_allowed() {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    let http = SmartHttp::start_with_basic_auth(&s.upstream, "deploy", "tok-plain-42");
    let password = scratch_file(&s, "password", "tok-plain-42\n");
    let login = |g: Gitreload| {
        g.env("GITRELOAD_USERNAME", "deploy")
            .env("GITRELOAD_PASSWORD_FILE", &password)
    };

    let out = login(s.gitreload(&http.url())).arg("--once").run_once(T);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("GITRELOAD_ALLOW_INSECURE_HTTP=true"),
        "{}",
        out.stderr
    );
    assert!(http.requests().is_empty(), "a request was sent");

    let out = login(s.gitreload(&http.url()))
        .env("GITRELOAD_ALLOW_INSECURE_HTTP", "true")
        .arg("--once")
        .run_once(T);
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert!(out.status.success(), "{all}");
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
    let warned = out.json_lines().into_iter().any(|v| {
        v["level"] == "warning"
            && v["event"]
                .as_str()
                .unwrap_or("")
                .contains("sent unencrypted")
    });
    assert!(warned, "no warning at start: {all}");
    assert!(!all.contains("tok-plain-42"), "{all}");

    // Credentials in the URL work the same way.
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    let out = s
        .gitreload(&http.url_with_credentials())
        .env("GITRELOAD_ALLOW_INSECURE_HTTP", "true")
        .arg("--once")
        .run_once(T);
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert!(out.status.success(), "{all}");
    assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("two"));
    assert!(!all.contains("tok-plain-42"), "{all}");
}

// ---------------------------------------------------------------------------
// Substitution bounded while it runs.

#[test]
fn substitution_amplification_stops_at_the_size_limit() {
    // 20,000 references to a 1 MiB value would make 20 GiB. gitreload runs
    // with 1 GiB of address space: it survives only if it stops early.
    let dir = tempfile::TempDir::new().unwrap();
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(&checkout).unwrap();
    let value = dir.path().join("big");
    std::fs::write(&value, vec![b'x'; (1 << 20) - 16]).unwrap();
    let value = value.canonicalize().unwrap();
    let line = format!("a: ${{file:{}}}\n", value.display());
    std::fs::write(checkout.join("alertmanager.yml"), line.repeat(20_000)).unwrap();
    let mut cmd = clean_command(Gitreload::binary());
    cmd.arg("validate")
        .arg(&checkout)
        .env("HOME", dir.path())
        .env("MALLOC_ARENA_MAX", "2")
        .env("GITRELOAD_EXPAND", "alertmanager.yml")
        .env("GITRELOAD_EXPAND_FILES", value.to_str().unwrap())
        .env("GITRELOAD_MAX_FILE_SIZE", "2MiB");
    // SAFETY: setrlimit(2) between fork and exec touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let all = format!("{stdout}\n{stderr}");
    assert!(all.contains("alertmanager.yml"), "{all}");
    assert!(all.contains("line 3"), "{all}");
    assert!(all.contains("GITRELOAD_MAX_FILE_SIZE"), "{all}");
}
