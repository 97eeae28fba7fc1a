//! Secrets in the config repository: `.age` files encrypted with the real
//! `age` CLI and decrypted by gitreload, `${file:}`/`${env:}` substitution,
//! and `gitreload validate` on a local checkout. The plaintext is searched
//! for, byte for byte, everywhere gitreload keeps or shows things.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::sidecar::{invalid_prometheus_yml, prometheus_yml, Sidecar};
use support::*;

/// Distinctive secrets: if these bytes show up anywhere, something leaked.
const SLACK_TOKEN: &str = "gitreload-slack-token-3f9c1e7a0b";
const SMTP_PASSWORD: &str = "gitreload-smtp-password-8d2b64c1";

/// An age identity file holding two identities and comments (as a Docker
/// secret would), and the recipient of the second one.
struct Keys {
    identity_file: PathBuf,
    recipient: String,
}

impl Keys {
    fn new(dir: &Path) -> Keys {
        let other = dir.join("other.key");
        let mine = dir.join("mine.key");
        keygen(&other);
        let recipient = keygen(&mine);
        let identity_file = dir.join("identities.txt");
        let text = format!(
            "# gitreload test identities\n\n{}\n{}",
            std::fs::read_to_string(&other).unwrap(),
            std::fs::read_to_string(&mine).unwrap()
        );
        std::fs::write(&identity_file, text).unwrap();
        Keys {
            identity_file,
            recipient,
        }
    }

    /// Binary age file for our recipient.
    fn encrypt(&self, plaintext: &str) -> Vec<u8> {
        age_encrypt(&self.recipient, plaintext, false)
    }

    /// ASCII-armored age file for our recipient.
    fn encrypt_armored(&self, plaintext: &str) -> Vec<u8> {
        age_encrypt(&self.recipient, plaintext, true)
    }
}

/// `age-keygen -o path`; returns the recipient (`age-keygen -y`).
fn keygen(path: &Path) -> String {
    let out = clean_command("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .expect("age-keygen");
    assert!(out.status.success(), "{out:?}");
    let out = clean_command("age-keygen")
        .arg("-y")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An Alertmanager config whose receiver is `marker`, with a Slack URL
/// holding [`SLACK_TOKEN`] and an SMTP password taken from `password_file`.
fn am_yml(marker: &str, password_file: &Path) -> String {
    format!(
        "global:\n  smtp_smarthost: 'localhost:25'\n  smtp_from: 'alerts@example.test'\n  \
         smtp_auth_username: 'alerts'\n  smtp_auth_password: '${{file:{}}}'\n\
         route:\n  receiver: {marker}\nreceivers:\n  - name: {marker}\n    slack_configs:\n      \
         - api_url: 'https://hooks.slack.com/services/T000/B000/{SLACK_TOKEN}'\n        \
         channel: '#alerts'\n",
        password_file.display()
    )
}

/// The same config as gitreload should deploy it: the password substituted.
fn am_yml_deployed(marker: &str, password_file: &Path) -> String {
    am_yml(marker, password_file).replace(
        &format!("${{file:{}}}", password_file.display()),
        SMTP_PASSWORD,
    )
}

/// Every regular file below `root` whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &str) -> Vec<PathBuf> {
    let needle = needle.as_bytes();
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            visited += 1;
            assert!(visited < 100_000, "too many files below {}", root.display());
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(entry.path());
                }
            }
        }
    }
    found
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `GITRELOAD_EXPAND_FILES` allowing every file in the scratch directory,
/// by its path and by its resolved path (the temp dir may sit behind a link).
fn scratch_files(s: &Sidecar) -> String {
    let dir = s.scratch();
    format!(
        "{}/*,{}/*",
        dir.display(),
        dir.canonicalize().unwrap().display()
    )
}

/// A sidecar whose upstream holds an encrypted alertmanager.yml, with keys
/// and the SMTP password file in its scratch dir.
struct Secured {
    s: Sidecar,
    keys: Keys,
    password_file: PathBuf,
}

impl Secured {
    fn new() -> Secured {
        let s = Sidecar::new();
        let keys = Keys::new(&s.scratch());
        let password_file = s.scratch().join("smtp_password");
        std::fs::write(&password_file, format!("{SMTP_PASSWORD}\n")).unwrap();
        s.upstream.write(
            "alertmanager.yml.age",
            keys.encrypt(&am_yml("r-one", &password_file)),
        );
        s.upstream
            .write("templates/slack.tmpl", "{{ define \"x\" }}x{{ end }}\n");
        s.upstream.commit_and_push("one");
        Secured {
            s,
            keys,
            password_file,
        }
    }

    fn gitreload(&self) -> Gitreload {
        self.s
            .gitreload_file()
            .env("GITRELOAD_AGE_IDENTITY_FILE", &self.keys.identity_file)
            .env("GITRELOAD_EXPAND", "alertmanager.yml")
            .env("GITRELOAD_EXPAND_FILES", scratch_files(&self.s))
            .env("GITRELOAD_CHECK", "alertmanager")
    }

    /// Starts gitreload, waits for the first deploy, pushes what `bad`
    /// writes, and checks that the commit is rejected naming `path` with a
    /// reason containing each of `reason`, and that the destination stays
    /// exactly as it was.
    fn assert_rejected(&self, bad: impl FnOnce(&Secured), path: &str, reason: &[&str]) {
        let mut run = self.gitreload().spawn_deployed();
        let before = self.s.dest_tree();
        assert_eq!(
            before["alertmanager.yml"],
            am_yml_deployed("r-one", &self.password_file)
        );
        bad(self);
        let bad_commit = self.s.upstream.commit_and_push("bad");
        let rejected = run.wait_for_event_where(WAIT, "the bad commit rejected", |v| {
            v["event"] == "commit rejected" && v["logger"] == "gitreload.materialize"
        });
        assert_eq!(rejected["commit"], bad_commit[..7], "{rejected}");
        assert_eq!(rejected["path"], path, "{rejected}");
        let why = rejected["reason"].as_str().unwrap();
        for part in reason {
            assert!(why.contains(part), "reason {why:?} lacks {part:?}");
        }
        // Further polls change nothing and do not retry the commit.
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(
            self.s.dest_tree(),
            before,
            "the last good config was touched"
        );
        assert_eq!(
            run.count_events("commit rejected"),
            1,
            "rejected commit retried"
        );
        for line in run.lines() {
            assert!(
                !line.contains(SLACK_TOKEN) && !line.contains(SMTP_PASSWORD),
                "secret in the log: {line}"
            );
        }
        assert!(run.terminate().success());
    }
}

#[test]
fn encrypted_alertmanager_config_is_served_by_both_replicas_and_its_plaintext_leaks_nowhere() {
    let sec = Secured::new();
    let s = &sec.s;
    let once = sec.gitreload().arg("--once").run_once(WAIT);
    assert!(once.status.success(), "{}\n{}", once.stdout, once.stderr);
    let deployed = s.dest().join("alertmanager.yml");
    assert_eq!(
        s.dest_file("alertmanager.yml"),
        am_yml_deployed("r-one", &sec.password_file)
    );
    assert!(!s.dest().join("alertmanager.yml.age").exists());
    assert_eq!(mode_of(&deployed), 0o640, "secret file mode");
    assert_eq!(mode_of(&s.dest().join("templates/slack.tmpl")), 0o644);

    let ips = ["127.0.0.40", "127.0.0.41"];
    let port = free_port_on(&ips);
    let ams = Alertmanager::start_pair_on(ips, port, &s.dest());
    for am in &ams {
        assert!(am.config().contains("r-one"), "{}", am.config());
    }
    let listen = free_addr("127.0.0.1");
    let targets = ips
        .iter()
        .map(|ip| format!("http://{ip}:{port}/-/reload"))
        .collect::<Vec<_>>()
        .join(",");
    let mut run = sec
        .gitreload()
        .env("GITRELOAD_TARGETS", &targets)
        .env("GITRELOAD_RELOAD_TIMEOUT", "2s")
        .env("GITRELOAD_LISTEN", &listen)
        .spawn();

    // The second version is ASCII-armored: both forms are accepted.
    s.upstream.write(
        "alertmanager.yml.age",
        sec.keys
            .encrypt_armored(&am_yml("r-two", &sec.password_file)),
    );
    s.upstream.commit_and_push("two");
    for am in &ams {
        wait_until_or(
            &format!("Alertmanager {} to serve receiver r-two", am.addr()),
            WAIT,
            || am.config().contains("r-two"),
            || am.log_tail(20),
        );
        assert!(am.last_reload_successful());
    }
    run.wait_for_event(WAIT, "reload confirmed on every target");
    assert_eq!(
        s.dest_file("alertmanager.yml"),
        am_yml_deployed("r-two", &sec.password_file)
    );
    assert_eq!(mode_of(&deployed), 0o640);

    let (status, metrics) = http_get(&format!("http://{listen}/metrics"));
    assert_eq!(status, 200);
    assert!(metrics.contains("gitreload_"), "{metrics}");
    // The staging directory is kept between syncs, but not its plaintext.
    for secret in [SLACK_TOKEN, SMTP_PASSWORD] {
        let in_state = files_containing(&s.state(), secret);
        assert!(
            in_state.is_empty(),
            "{secret} in the state dir while running: {in_state:?}"
        );
    }
    assert!(run.terminate().success());

    // The scan does find plaintext where it belongs.
    assert_eq!(
        files_containing(&s.dest(), SLACK_TOKEN),
        vec![deployed.clone()]
    );
    let mut log = run.lines();
    log.extend(
        once.stdout
            .lines()
            .chain(once.stderr.lines())
            .map(String::from),
    );
    assert!(log.len() > 10, "{log:?}");
    for secret in [SLACK_TOKEN, SMTP_PASSWORD] {
        assert!(!metrics.contains(secret), "{secret} in /metrics");
        let in_state = files_containing(&s.state(), secret);
        assert!(
            in_state.is_empty(),
            "{secret} in the state dir: {in_state:?}"
        );
        for line in &log {
            assert!(!line.contains(secret), "{secret} in a log line: {line}");
        }
    }
    assert!(
        !s.state().join("staging").exists()
            || std::fs::read_dir(s.state().join("staging"))
                .unwrap()
                .next()
                .is_none(),
        "staging left behind"
    );
}

#[test]
fn rotated_secret_reaches_the_volume_when_gitreload_restarts_on_the_same_commit() {
    let sec = Secured::new();
    let first = sec.gitreload().arg("--once").run_once(WAIT);
    assert!(first.status.success(), "{}", first.stdout);
    std::fs::write(&sec.password_file, "rotated-password-value\n").unwrap();
    let second = sec.gitreload().arg("--once").run_once(WAIT);
    assert!(second.status.success(), "{}", second.stdout);
    let deployed = sec.s.dest_file("alertmanager.yml");
    assert!(
        deployed.contains("smtp_auth_password: 'rotated-password-value'"),
        "{deployed}"
    );
    assert_eq!(
        second.events("config deployed").len(),
        1,
        "{}",
        second.stdout
    );
}

#[test]
fn commit_encrypted_for_another_identity_is_rejected_naming_the_file() {
    let sec = Secured::new();
    let stranger = sec.s.scratch().join("stranger.key");
    let stranger_recipient = keygen(&stranger);
    sec.assert_rejected(
        |sec| {
            let text = am_yml("r-stranger", &sec.password_file);
            sec.s.upstream.write(
                "alertmanager.yml.age",
                age_encrypt(&stranger_recipient, &text, false),
            );
        },
        "alertmanager.yml.age",
        &["cannot decrypt", "GITRELOAD_AGE_IDENTITY_FILE"],
    );
}

#[test]
fn corrupt_ciphertext_is_rejected_naming_the_file() {
    let sec = Secured::new();
    sec.assert_rejected(
        |sec| {
            let mut data = sec.keys.encrypt(&am_yml("r-corrupt", &sec.password_file));
            let last = data.len() - 1;
            data[last] ^= 0x55;
            sec.s.upstream.write("alertmanager.yml.age", data);
        },
        "alertmanager.yml.age",
        &["damaged"],
    );
}

#[test]
fn missing_secret_file_is_rejected_naming_file_line_and_reference() {
    let sec = Secured::new();
    let missing = sec.s.scratch().join("no_such_secret");
    sec.assert_rejected(
        |sec| {
            sec.s.upstream.write(
                "alertmanager.yml.age",
                sec.keys.encrypt(&am_yml("r-missing", &missing)),
            );
        },
        "alertmanager.yml.age",
        &[
            "line 5",
            &format!("${{file:{}}}", missing.display()),
            "cannot read",
        ],
    );
}

#[test]
fn encrypted_file_without_identity_is_rejected_naming_the_file_and_the_variable() {
    let sec = Secured::new();
    let out = sec
        .s
        .gitreload_file()
        .env("GITRELOAD_EXPAND", "alertmanager.yml")
        .arg("--once")
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let rejected = out.events("commit rejected");
    assert_eq!(rejected.len(), 1, "{}", out.stdout);
    assert_eq!(rejected[0]["path"], "alertmanager.yml.age");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("GITRELOAD_AGE_IDENTITY_FILE is not set"),
        "{}",
        rejected[0]
    );
    assert!(sec.s.dest_tree().is_empty(), "{:?}", sec.s.dest_tree());
}

#[test]
fn plain_and_encrypted_twins_are_rejected_naming_both() {
    let sec = Secured::new();
    sec.s
        .upstream
        .write("alertmanager.yml", "route:\n  receiver: plain\n");
    sec.s.upstream.commit_and_push("twins");
    let out = sec.gitreload().arg("--once").run_once(WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let rejected = out.events("commit rejected");
    assert_eq!(rejected.len(), 1, "{}", out.stdout);
    let reason = rejected[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("alertmanager.yml and alertmanager.yml.age"),
        "{reason}"
    );
    assert!(sec.s.dest_tree().is_empty());
}

#[test]
fn substituted_file_gets_the_secret_mode_and_other_dollars_stay_as_written() {
    let s = Sidecar::new();
    let config = "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: node\n    \
                  authorization:\n      credentials: '${env:PROM_TOKEN}'\n    relabel_configs:\n      \
                  - source_labels: [__address__]\n        regex: '(.*):.*'\n        \
                  replacement: '${1}:9100'\n        target_label: __address__\n    \
                  static_configs:\n      - targets: ['127.0.0.1:9']\n# literal: $${env:PROM_TOKEN}\n";
    s.upstream.write("prometheus.yml", config);
    s.upstream.write(
        "rules/a.yml",
        "groups: []\n# ${env:PROM_TOKEN} not expanded here\n",
    );
    s.upstream.commit_and_push("token");
    let out = s
        .gitreload_file()
        .env("PROM_TOKEN", "t0ken-from-env")
        .env("GITRELOAD_EXPAND", "prometheus.yml")
        .env("GITRELOAD_EXPAND_ENV", "PROM_TOKEN")
        .env("GITRELOAD_SECRET_FILE_MODE", "0600")
        .env("GITRELOAD_CHECK", "prometheus")
        .arg("--once")
        .run_once(WAIT);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let deployed = s.dest_file("prometheus.yml");
    assert!(
        deployed.contains("credentials: 't0ken-from-env'"),
        "{deployed}"
    );
    assert!(deployed.contains("replacement: '${1}:9100'"), "{deployed}");
    assert!(
        deployed.contains("# literal: ${env:PROM_TOKEN}\n"),
        "{deployed}"
    );
    assert_eq!(mode_of(&s.dest().join("prometheus.yml")), 0o600);
    assert_eq!(
        s.dest_file("rules/a.yml"),
        "groups: []\n# ${env:PROM_TOKEN} not expanded here\n"
    );
    assert_eq!(mode_of(&s.dest().join("rules/a.yml")), 0o644);
    assert!(!out.stdout.contains("t0ken-from-env"), "{}", out.stdout);
}

#[test]
fn unreadable_identity_file_is_a_settings_error_that_never_shows_the_content() {
    let s = Sidecar::new();
    let bad = s.scratch().join("identity.txt");
    std::fs::write(
        &bad,
        "# comment\nAGE-SECRET-KEY-NOT-REALLY-secret-line-77\n",
    )
    .unwrap();
    // A missing file is refused the same way by the parser
    // (tests/settings_errors.rs); here the binary's side of one that has
    // content to leak.
    let out = s
        .gitreload_file()
        .env("GITRELOAD_AGE_IDENTITY_FILE", &bad)
        .run_once(WAIT);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("GITRELOAD_AGE_IDENTITY_FILE"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("secret-line-77"), "{}", out.stderr);
    assert!(!out.stdout.contains("secret-line-77"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------
// gitreload validate

/// `gitreload validate DIR` with only the given variables (no REPO, DEST).
fn validate(dir: &Path, envs: &[(&str, &str)]) -> Output {
    let mut g = Gitreload::new().arg("validate").arg(dir);
    for (k, v) in envs {
        g = g.env(k, v);
    }
    g.run_once(WAIT)
}

#[test]
fn validate_rejects_a_broken_prometheus_config_with_promtools_message() {
    let up = Upstream::new();
    up.write("prometheus.yml", invalid_prometheus_yml());
    let out = validate(up.work_path(), &[("GITRELOAD_CHECK", "prometheus")]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("field scrape_configz not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn validate_accepts_a_good_checkout() {
    let up = Upstream::new();
    up.write("prometheus.yml", prometheus_yml("good"));
    up.write("rules/a.yml", "groups: []\n");
    let out = validate(up.work_path(), &[("GITRELOAD_CHECK", "prometheus")]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("SUCCESS"), "{}", out.stdout);
    assert!(out.stdout.contains("valid (2 files"), "{}", out.stdout);
}

#[test]
fn validate_stands_marked_placeholders_in_for_absent_secrets() {
    let up = Upstream::new();
    let keys = Keys::new(up.base_dir());
    up.write(
        "prometheus.yml",
        "scrape_configs:\n  - job_name: x\n    authorization:\n      \
         credentials: '${env:PROM_TOKEN}'\n    static_configs:\n      - targets: ['127.0.0.1:9']\n",
    );
    up.write("secrets/token.age", keys.encrypt("s3cret\n"));
    let out = validate(
        up.work_path(),
        &[
            ("GITRELOAD_CHECK", "prometheus"),
            ("GITRELOAD_EXPAND", "prometheus.yml"),
            ("GITRELOAD_EXPAND_ENV", "PROM_TOKEN"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{}", out.stderr);
    assert!(warnings
        .iter()
        .all(|w| w.contains("gitreload-validate-placeholder")));
    assert!(out.stderr.contains("${env:PROM_TOKEN}"), "{}", out.stderr);
    assert!(out.stderr.contains("secrets/token.age"), "{}", out.stderr);
}

#[test]
fn validate_decrypts_with_an_identity_and_checks_the_plaintext() {
    let up = Upstream::new();
    let keys = Keys::new(up.base_dir());
    up.write(
        "alertmanager.yml.age",
        keys.encrypt("route:\n  receiver: nobody\nreceivers: []\n"),
    );
    let identity = keys.identity_file.to_str().unwrap();
    let out = validate(
        up.work_path(),
        &[
            ("GITRELOAD_CHECK", "alertmanager"),
            ("GITRELOAD_AGE_IDENTITY_FILE", identity),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    // The checker's verdict is shown; the values of the decrypted file in
    // it are masked like any other part of the plaintext.
    assert!(
        out.stderr.contains("undefined receiver \"***\""),
        "{}",
        out.stderr
    );

    up.write(
        "alertmanager.yml.age",
        keys.encrypt("route:\n  receiver: team\nreceivers:\n  - name: team\n"),
    );
    let out = validate(
        up.work_path(),
        &[
            ("GITRELOAD_CHECK", "alertmanager"),
            ("GITRELOAD_AGE_IDENTITY_FILE", identity),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// The examples in deploy/ for the config repository

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

#[test]
fn pre_push_hook_refuses_a_commit_the_sidecar_would_reject() {
    let up = Upstream::new();
    let hook = up.work_path().join(".git/hooks/pre-push");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::copy(example("pre-push"), &hook).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let push = || {
        up.git_command()
            .current_dir(up.work_path())
            .args(["push", "-q", "origin", "HEAD:refs/heads/main"])
            .env("GITRELOAD", Gitreload::binary())
            .env("GITRELOAD_CHECK", "prometheus")
            .output()
            .unwrap()
    };

    up.write("prometheus.yml", prometheus_yml("good"));
    let good = up.commit("good");
    let out = push();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("valid (1 files"), "{said}");
    assert_eq!(up.remote_head("main").as_deref(), Some(good.as_str()));

    up.write("prometheus.yml", invalid_prometheus_yml());
    up.commit("broken");
    // An untracked file in the working tree plays no part: the commit is checked.
    up.write("untracked.yml", "not: [valid");
    up.write("prometheus.yml", prometheus_yml("fixed but not committed"));
    let out = push();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("field scrape_configz not found"),
        "{stderr}"
    );
    assert!(stderr.contains("push refused"), "{stderr}");
    assert_eq!(up.remote_head("main").as_deref(), Some(good.as_str()));
}

/// Stands in for `docker run [opts] IMAGE ARGS...` of a gitreload image:
/// runs the gitreload binary under test with the `-e` variables, `-v`
/// mounts mapped back to the host paths, and the `GITRELOAD_CHECK` the
/// image variant sets (docker/Dockerfile). Unknown options or images fail,
/// so the example cannot drift from what this stand-in understands.
const DOCKER_STAND_IN: &str = r#"#!/bin/bash
set -euo pipefail
[ "${1:-}" = run ] || { echo "docker stand-in: only 'run' is known: $*" >&2; exit 125; }
shift
envs=() mounts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rm) shift ;;
    --network) [ "$2" = none ] || { echo "docker stand-in: network $2" >&2; exit 125; }; shift 2 ;;
    --user) shift 2 ;;
    -e) envs+=("$2"); shift 2 ;;
    -v) mounts+=("$2"); shift 2 ;;
    -*) echo "docker stand-in: unknown option $1" >&2; exit 125 ;;
    *) break ;;
  esac
done
case "$1" in
  gitreload:prometheus) check=prometheus ;;
  gitreload:alertmanager) check=alertmanager ;;
  *) echo "docker stand-in: unknown image $1" >&2; exit 125 ;;
esac
shift
host_path() {
  local value=$1 mount src dst
  for mount in "${mounts[@]}"; do
    IFS=: read -r src dst _ <<<"$mount"
    [ "$value" = "$dst" ] && { printf '%s' "$src"; return; }
  done
  printf '%s' "$value"
}
vars=()
for kv in "${envs[@]}"; do vars+=("${kv%%=*}=$(host_path "${kv#*=}")"); done
args=()
for a in "$@"; do args+=("$(host_path "$a")"); done
printf '%s\n' "$*" >>"$DOCKER_STAND_IN_LOG"
exec env -i PATH="$PATH" GITRELOAD_CHECK="$check" "${vars[@]}" "$GITRELOAD_BINARY" "${args[@]}"
"#;

/// What one matrix entry of the example workflow did.
struct CiRun {
    /// Exit code of each `run:` step, by step name.
    steps: Vec<(String, Option<i32>)>,
    output: String,
}

impl CiRun {
    fn code(&self, step_prefix: &str) -> Option<i32> {
        self.steps
            .iter()
            .find(|(name, _)| name.starts_with(step_prefix))
            .unwrap_or_else(|| panic!("no step {step_prefix:?} in {:?}", self.steps))
            .1
    }
}

/// Runs the `run:` steps of deploy/config-repo-ci.yml's validate job for
/// every matrix entry, as GitHub Actions would (`bash -eo pipefail`, the
/// step's `env:`, `${{ matrix.* }}` and `${{ secrets.* }}` filled in, steps
/// after a failure skipped unless `if: always()`), with `checkout` as the
/// workspace and `docker` standing in for the image. Returns each entry's
/// subdir and what its steps did.
fn run_ci_example(checkout: &Path, identity_secret: &str) -> Vec<(String, CiRun)> {
    let text = std::fs::read_to_string(example("config-repo-ci.yml")).unwrap();
    let ci: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let job = &ci["jobs"]["validate"];
    let matrix = job["strategy"]["matrix"]["include"].as_sequence().unwrap();
    assert!(!matrix.is_empty());
    let tools = tempfile::TempDir::new().unwrap();
    let docker = tools.path().join("bin/docker");
    std::fs::create_dir_all(docker.parent().unwrap()).unwrap();
    std::fs::write(&docker, DOCKER_STAND_IN).unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        docker.parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let mut runs = Vec::new();
    for entry in matrix {
        let subdir = entry["subdir"].as_str().unwrap().to_string();
        let fill = |text: &str| -> String {
            let mut out = String::new();
            let mut rest = text;
            while let Some(start) = rest.find("${{") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find("}}").expect("unclosed ${{") + start;
                let expr = rest[start + 3..end].trim();
                let value = match expr.split_once('.') {
                    Some(("matrix", key)) => entry[key]
                        .as_str()
                        .unwrap_or_else(|| panic!("matrix has no {key}"))
                        .to_string(),
                    Some(("secrets", "GITRELOAD_AGE_IDENTITY")) => identity_secret.to_string(),
                    _ => panic!("expression the test does not know: {expr}"),
                };
                out.push_str(&value);
                rest = &rest[end + 2..];
            }
            out + rest
        };
        let runner_temp = tools.path().join(format!("runner-temp-{subdir}"));
        std::fs::create_dir_all(&runner_temp).unwrap();
        let mut run = CiRun {
            steps: Vec::new(),
            output: String::new(),
        };
        let mut failed = false;
        for step in job["steps"].as_sequence().unwrap() {
            let Some(script) = step["run"].as_str() else {
                assert!(
                    step["uses"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("actions/checkout@")),
                    "a step the test cannot play: {step:?}"
                );
                continue;
            };
            match step["if"].as_str() {
                None if failed => continue,
                None => {}
                Some("always()") => {}
                Some(other) => panic!("condition the test does not know: {other}"),
            }
            let name = fill(step["name"].as_str().unwrap_or(script));
            let mut cmd = clean_command("bash");
            cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c"])
                .arg(fill(script))
                .current_dir(checkout)
                .env("PATH", &path)
                .env("RUNNER_TEMP", &runner_temp)
                .env("GITHUB_WORKSPACE", checkout)
                .env("GITRELOAD_BINARY", Gitreload::binary())
                .env("DOCKER_STAND_IN_LOG", tools.path().join("docker.log"));
            if let Some(env) = step["env"].as_mapping() {
                for (k, v) in env {
                    cmd.env(k.as_str().unwrap(), fill(v.as_str().unwrap()));
                }
            }
            let out = cmd.output().unwrap();
            run.output.push_str(&String::from_utf8_lossy(&out.stdout));
            run.output.push_str(&String::from_utf8_lossy(&out.stderr));
            failed |= !out.status.success();
            run.steps.push((name, out.status.code()));
        }
        assert!(
            !runner_temp.join("age").exists(),
            "the identity outlived the job"
        );
        runs.push((subdir, run));
    }
    runs
}

#[test]
fn config_repo_ci_example_runs_gitreload_validate_for_each_deployed_directory() {
    let up = Upstream::new();
    let keys = Keys::new(up.base_dir());
    up.write("prometheus/prometheus.yml", prometheus_yml("ci"));
    up.write(
        "alertmanager/alertmanager.yml",
        "route:\n  receiver: team\nreceivers:\n  - name: team\n",
    );
    let by_subdir = |runs: Vec<(String, CiRun)>| -> std::collections::BTreeMap<String, CiRun> {
        runs.into_iter().collect()
    };

    // Both directories valid: every entry passes, each checked by its own
    // image's checker below its own subdir.
    let runs = by_subdir(run_ci_example(up.work_path(), ""));
    assert_eq!(
        runs.keys().collect::<Vec<_>>(),
        ["alertmanager", "prometheus"]
    );
    for (subdir, run) in &runs {
        assert_eq!(
            run.code("gitreload validate"),
            Some(0),
            "{subdir}: {}",
            run.output
        );
        // One file: the entry validated its own directory, not the checkout.
        let checker = match subdir.as_str() {
            "prometheus" => "promtool check config prometheus.yml",
            _ => "amtool check-config alertmanager.yml",
        };
        assert!(
            run.output.contains(&format!("valid (1 files, {checker})")),
            "{subdir}: {}",
            run.output
        );
    }
    assert!(
        runs["prometheus"].output.contains("SUCCESS"),
        "{}",
        runs["prometheus"].output
    );

    // A broken Prometheus config fails the prometheus entry only, with
    // promtool's reason.
    up.write("prometheus/prometheus.yml", invalid_prometheus_yml());
    let runs = by_subdir(run_ci_example(up.work_path(), ""));
    let prometheus = &runs["prometheus"];
    assert_eq!(
        prometheus.code("gitreload validate"),
        Some(1),
        "{}",
        prometheus.output
    );
    assert!(
        prometheus.output.contains("field scrape_configz not found"),
        "{}",
        prometheus.output
    );
    assert_eq!(
        runs["alertmanager"].code("gitreload validate"),
        Some(0),
        "{}",
        runs["alertmanager"].output
    );
    up.write("prometheus/prometheus.yml", prometheus_yml("ci"));

    // An encrypted config: without the identity secret only a placeholder
    // stands in (and amtool refuses it); with it, the plaintext is checked,
    // and the identity is removed when the job ends.
    up.remove("alertmanager/alertmanager.yml");
    up.write(
        "alertmanager/alertmanager.yml.age",
        keys.encrypt("route:\n  receiver: nobody\nreceivers: []\n"),
    );
    let identity = std::fs::read_to_string(&keys.identity_file).unwrap();
    let runs = by_subdir(run_ci_example(up.work_path(), &identity));
    let alertmanager = &runs["alertmanager"];
    assert_eq!(
        alertmanager.code("gitreload validate"),
        Some(1),
        "{}",
        alertmanager.output
    );
    assert!(
        alertmanager
            .output
            // The receiver's name comes from the plaintext: masked.
            .contains("undefined receiver \"***\""),
        "the plaintext was not checked: {}",
        alertmanager.output
    );
    assert_eq!(alertmanager.code("remove the identity"), Some(0));
    up.write(
        "alertmanager/alertmanager.yml.age",
        keys.encrypt("route:\n  receiver: team\nreceivers:\n  - name: team\n"),
    );
    let runs = by_subdir(run_ci_example(up.work_path(), &identity));
    let alertmanager = &runs["alertmanager"];
    assert_eq!(
        alertmanager.code("gitreload validate"),
        Some(0),
        "{}",
        alertmanager.output
    );
    assert!(
        !alertmanager.output.contains("placeholder"),
        "{}",
        alertmanager.output
    );
    let runs = by_subdir(run_ci_example(up.work_path(), ""));
    let alertmanager = &runs["alertmanager"];
    assert!(
        alertmanager
            .output
            .contains("gitreload-validate-placeholder"),
        "{}",
        alertmanager.output
    );
}
