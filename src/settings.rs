//! Settings: every knob of gitreload, read from `GITRELOAD_*` environment
//! variables and validated before anything else happens.
//!
//! Promises:
//! - A bad, empty or missing value is one [`SettingsError`] whose text names
//!   the variable, says what is wrong and what form is expected, e.g.
//!   `GITRELOAD_INTERVAL="30": expected a duration such as 500ms, 30s or 5m`.
//! - Secret-bearing values (passwords in URLs, webhook secrets) never appear in
//!   an error or in [`Settings::summary`]; only `***` does. The age identity
//!   file is read and parsed here, so a bad one stops gitreload at start;
//!   errors about it name the variable and a line number, never a key.
//! - `gitreload validate` reads only the variables that decide how a tree is
//!   staged and checked ([`Settings::for_validate`]); both paths share them.
//! - Secret-bearing values (passwords in URLs, webhook secrets, the content
//!   of every `*_FILE`) never appear in an error or in [`Settings::summary`];
//!   only `***` or the file's path does. A `*_FILE` that cannot be read is an
//!   error naming the variable.
//! - The paths of every `*_FILE` setting and the state directory are handed
//!   to [`crate::secrets::Sources`] as never readable by `${file:}`, set or
//!   not used (`gitreload validate` does not read them otherwise), and
//!   neither list of allowed sources can name `/proc`, `/sys`, `/dev` or
//!   `GITRELOAD_*`.
//! - An unknown `GITRELOAD_*` variable is an error (a typo must not silently
//!   fall back to a default).
//! - The cron script's variables (`PROMETHEUS_CONFIG_REPO`, ...) are accepted
//!   when the new ones are absent; each use is reported as a deprecation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::credentials::{Credentials, CredentialsError, Login};
use crate::redact::{redact_url, RepoUrl};
use crate::secrets::{Identities, Sources};

/// Every variable gitreload reads, without the `GITRELOAD_` prefix.
/// README's table and the deploy files are tested against this list.
pub const VARIABLES: &[&str] = &[
    "REPO",
    "USERNAME",
    "PASSWORD_FILE",
    "SSH_KEY_FILE",
    "SSH_KNOWN_HOSTS_FILE",
    "SSH_ACCEPT_NEW_HOST_KEYS",
    "CA_FILE",
    "ALLOW_INSECURE_HTTP",
    "DEST",
    "REF",
    "SUBDIR",
    "STATE_DIR",
    "INTERVAL",
    "ONCE",
    "FETCH_TIMEOUT",
    "CHECK",
    "CHECK_TIMEOUT",
    "FILE_MODE",
    "FILE_OWNER",
    "MAX_FILES",
    "MAX_FILE_SIZE",
    "DRIFT",
    "VERIFY_INTERVAL",
    "EXPAND",
    "EXPAND_FILES",
    "EXPAND_ENV",
    "AGE_IDENTITY_FILE",
    "SECRET_FILE_MODE",
    "TARGETS",
    "RELOAD_METHOD",
    "RELOAD_TIMEOUT",
    "RELOAD_ATTEMPTS",
    "DNS_SERVER",
    "LISTEN",
    "STALE_AFTER",
    "WEBHOOK_SECRET",
    "WEBHOOK_SECRET_FILE",
    "LOG_LEVEL",
    "LOG_FORMAT",
];

/// The cron script's variables that gitreload still understands.
pub const LEGACY_VARIABLES: &[&str] = &[
    "PROMETHEUS_CONFIG_REPO",
    "PROMETHEUS_CONFIG_DIR",
    "PROMETHEUS_HOST_DNS",
    "PROMETHEUS_PORT",
    "PROMETHEUS_NOTIFY_PATH",
];

/// Private state unless `GITRELOAD_STATE_DIR` says otherwise.
const DEFAULT_STATE_DIR: &str = "/var/lib/gitreload";

/// Where the HTTP server listens unless `GITRELOAD_LISTEN` says otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9108";

/// A value that failed validation: which variable, and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{var} is not set: {expected}")]
    Missing { var: String, expected: String },
    #[error("{var}={shown}: {expected}")]
    Invalid {
        var: String,
        /// The value as it may be shown: quoted, or `***` for secrets.
        shown: String,
        expected: String,
    },
    #[error("{var} is not a gitreload variable{hint}")]
    Unknown { var: String, hint: String },
    #[error("reading the environment: {0}")]
    Environment(String),
}

/// Which checker gates a commit before it reaches the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckerKind {
    /// `promtool check config prometheus.yml`
    Prometheus,
    /// `amtool check-config alertmanager.yml`
    Alertmanager,
    /// Any shell command, run with `sh -c`.
    Command(String),
}

/// What to do when a managed file on the destination is changed by
/// someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftMode {
    /// Restore it from the deployed commit and reload.
    Repair,
    /// Log it, leave it.
    Report,
    /// Do not watch.
    Off,
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One structlog-style JSON object per line.
    Json,
    /// Human-readable lines for a terminal.
    Text,
}

/// Numeric owner applied to every file gitreload creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Upstream repository (credentials kept, redacted whenever shown).
    pub repo: RepoUrl,
    /// SSH key and known hosts, HTTPS login, CA: how to reach `repo`.
    pub credentials: Credentials,
    /// The shared volume to keep equal to the repository.
    pub dest: PathBuf,
    /// Branch, tag or full commit id; `None` follows the remote's HEAD.
    pub reference: Option<String>,
    /// How a tree is staged and checked (shared with `gitreload validate`).
    pub staging: StagingSettings,
    /// Private state: mirror, staging, manifest. Never the destination.
    pub state_dir: PathBuf,
    /// Time between polls.
    pub interval: Duration,
    /// Do one sync (and reload) and exit.
    pub once: bool,
    /// Longest a single fetch may take.
    pub fetch_timeout: Duration,
    /// Permission bits of deployed files (exec bits added for executables).
    pub file_mode: u32,
    /// Owner of deployed files, when set.
    pub file_owner: Option<Owner>,
    /// What to do about hand edits of managed files.
    pub drift: DriftMode,
    /// Period of the full re-verification of the destination by hash.
    pub verify_interval: Duration,
    /// Permission bits of decrypted or substituted files.
    pub secret_file_mode: u32,
    /// Reload URLs; each host is resolved to all its A records.
    pub targets: Vec<String>,
    /// HTTP method of the reload request.
    pub reload_method: String,
    /// Connect + response timeout of one reload request.
    pub reload_timeout: Duration,
    /// In `--once` mode: attempts per target before giving up.
    pub reload_attempts: u32,
    /// DNS server for target names instead of /etc/resolv.conf.
    pub dns_server: Option<SocketAddr>,
    /// Address of the HTTP server (metrics, health, webhook); `None` = off.
    pub listen: Option<SocketAddr>,
    /// Readiness fails when the last successful poll is older than this.
    pub stale_after: Duration,
    /// Secret for webhook signatures; `None` leaves POST /sync open.
    pub webhook_secret: Option<Secret>,
    /// `GITRELOAD_LOG_LEVEL`, as a tracing filter directive.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Deprecation warnings to log once logging is up.
    pub deprecations: Vec<String>,
}

/// How a tree is staged and checked: what the sidecar and `gitreload
/// validate` share, and nothing about where the tree comes from or goes to.
#[derive(Debug, Clone)]
pub struct StagingSettings {
    /// Only this directory of the repository is deployed (`""` = root).
    pub subdir: String,
    /// The gate a commit must pass; `None` checks only the path rules and
    /// secrets.
    pub check: Option<CheckerKind>,
    /// Longest the checker may run before it is killed.
    pub check_timeout: Duration,
    /// A commit with more files than this is rejected.
    pub max_files: usize,
    /// A commit with a file larger than this (bytes) is rejected.
    pub max_file_size: u64,
    /// Deployed paths whose `${file:}`/`${env:}` references are substituted.
    pub expand: Vec<glob::Pattern>,
    /// Identities that decrypt `.age` files; `None` rejects them.
    pub age_identity: Option<Identities>,
    /// What `${file:}` and `${env:}` may read (`GITRELOAD_EXPAND_FILES`,
    /// `GITRELOAD_EXPAND_ENV`), and gitreload's own files they never read.
    pub sources: Sources,
}

impl Settings {
    /// Every secret value the settings hold (URL password, webhook secret,
    /// the password as read at start), for [`crate::redact::remember`].
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self.repo.secrets().to_vec();
        for target in &self.targets {
            if let Ok(url) = RepoUrl::parse(target) {
                out.extend(url.secrets().iter().cloned());
            }
        }
        if let Some(s) = &self.webhook_secret {
            out.push(s.expose().to_string());
        }
        out
    }
}

/// A secret value: its `Debug` never shows the content.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The raw variables as envy collects them. Everything is a string here so
/// that parsing, and the error that names the variable, is ours.
#[derive(Debug, Default, Deserialize)]
struct Raw {
    repo: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    ssh_key_file: Option<String>,
    ssh_known_hosts_file: Option<String>,
    ssh_accept_new_host_keys: Option<String>,
    ca_file: Option<String>,
    allow_insecure_http: Option<String>,
    dest: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    subdir: Option<String>,
    state_dir: Option<String>,
    interval: Option<String>,
    once: Option<String>,
    fetch_timeout: Option<String>,
    check: Option<String>,
    check_timeout: Option<String>,
    file_mode: Option<String>,
    file_owner: Option<String>,
    max_files: Option<String>,
    max_file_size: Option<String>,
    drift: Option<String>,
    verify_interval: Option<String>,
    expand: Option<String>,
    expand_files: Option<String>,
    expand_env: Option<String>,
    age_identity_file: Option<String>,
    secret_file_mode: Option<String>,
    targets: Option<String>,
    reload_method: Option<String>,
    reload_timeout: Option<String>,
    reload_attempts: Option<String>,
    dns_server: Option<String>,
    listen: Option<String>,
    stale_after: Option<String>,
    webhook_secret: Option<String>,
    webhook_secret_file: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
}

/// The cron script's variables.
#[derive(Debug, Default, Deserialize)]
struct Legacy {
    prometheus_config_repo: Option<String>,
    prometheus_config_dir: Option<String>,
    prometheus_host_dns: Option<String>,
    prometheus_port: Option<String>,
    prometheus_notify_path: Option<String>,
}

const PREFIX: &str = "GITRELOAD_";
/// How GitHub, GitLab and Gitea access tokens begin.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "gldt-",
    "glcbt-",
];

/// Why credentials and http:// do not mix unless the operator says so.
const CLEARTEXT: &str =
    "credentials are only sent over https://, never in clear text over http://; use an https:// URL \
     (or, for a git server on a private network, set GITRELOAD_ALLOW_INSECURE_HTTP=true)";
const DURATION_FORM: &str = "expected a duration such as 500ms, 30s or 5m";

impl Settings {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Settings, SettingsError> {
        Settings::from_vars(std::env::vars_os().filter_map(|(k, v)| {
            // Non-UTF-8 variables cannot be ours; skip them.
            Some((k.into_string().ok()?, v.into_string().ok()?))
        }))
    }

    /// Validates the given variables (the environment, or a test's map).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let vars = known_vars(vars)?;
        let raw: Raw = envy::prefixed(PREFIX)
            .from_iter(vars.clone())
            .map_err(|e| SettingsError::Environment(e.to_string()))?;
        let legacy: Legacy =
            envy::from_iter(vars.clone()).map_err(|e| SettingsError::Environment(e.to_string()))?;
        build(raw, legacy)
    }

    /// Reads the variables `gitreload validate` uses (SUBDIR, CHECK,
    /// CHECK_TIMEOUT, MAX_FILES, MAX_FILE_SIZE, EXPAND, EXPAND_FILES,
    /// EXPAND_ENV, AGE_IDENTITY_FILE) from the process environment; REPO and
    /// DEST are not needed, and the other variables are not validated (the
    /// paths of the `*_FILE` ones and STATE_DIR are only kept out of
    /// substitution).
    pub fn for_validate() -> Result<StagingSettings, SettingsError> {
        Settings::for_validate_from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// [`Settings::for_validate`] on the given variables.
    pub fn for_validate_from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<StagingSettings, SettingsError> {
        let vars = known_vars(vars)?;
        let raw: Raw = envy::prefixed(PREFIX)
            .from_iter(vars)
            .map_err(|e| SettingsError::Environment(e.to_string()))?;
        staging(&raw)
    }

    /// The effective configuration as `key=value` pairs for the startup log,
    /// with every secret shown as `***`.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let d = |v: Duration| humantime::format_duration(v).to_string();
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("none".into(), |p| p.display().to_string())
        };
        let c = &self.credentials;
        let list = |l: &[glob::Pattern]| {
            if l.is_empty() {
                "none".to_string()
            } else {
                l.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",")
            }
        };
        vec![
            ("repo", self.repo.redacted()),
            (
                "username",
                c.login
                    .as_ref()
                    .map_or("none".into(), |l| l.username.clone()),
            ),
            (
                "password",
                c.login.as_ref().map_or("none".into(), |l| {
                    format!("*** (from {})", l.password_file.display())
                }),
            ),
            ("ssh_key_file", path(&c.ssh_key_file)),
            ("ssh_known_hosts_file", path(&c.ssh_known_hosts_file)),
            (
                "ssh_accept_new_host_keys",
                c.ssh_accept_new_host_keys.to_string(),
            ),
            ("ca_file", path(&c.ca_file)),
            ("allow_insecure_http", c.allow_insecure_http.to_string()),
            ("dest", self.dest.display().to_string()),
            (
                "ref",
                self.reference.clone().unwrap_or_else(|| "HEAD".into()),
            ),
            ("subdir", self.staging.subdir.clone()),
            ("state_dir", self.state_dir.display().to_string()),
            ("interval", d(self.interval)),
            (
                "check",
                match &self.staging.check {
                    None => "none".into(),
                    Some(CheckerKind::Prometheus) => "prometheus".into(),
                    Some(CheckerKind::Alertmanager) => "alertmanager".into(),
                    Some(CheckerKind::Command(c)) => c.clone(),
                },
            ),
            (
                "expand",
                self.staging
                    .expand
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("expand_files", list(&self.staging.sources.files)),
            ("expand_env", list(&self.staging.sources.env)),
            (
                "age_identities",
                self.staging
                    .age_identity
                    .as_ref()
                    .map_or("none".into(), |ids| ids.len().to_string()),
            ),
            (
                "targets",
                self.targets
                    .iter()
                    .map(|t| redact_url(t))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "listen",
                self.listen.map_or("off".into(), |a| a.to_string()),
            ),
            (
                "webhook_secret",
                if self.webhook_secret.is_some() {
                    "***"
                } else {
                    "none"
                }
                .into(),
            ),
        ]
    }
}

/// Kubernetes injects `<SERVICE>_PORT`, `<SERVICE>_SERVICE_HOST`, ... for
/// every Service in the namespace; a Service named `gitreload` must not
/// make the sidecar refuse to start.
fn is_service_link(rest: &str) -> bool {
    rest == "PORT" || rest.starts_with("PORT_") || rest.starts_with("SERVICE_")
}

/// The variables as a map, refusing unknown `GITRELOAD_*` names.
fn known_vars(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, SettingsError> {
    let vars: BTreeMap<String, String> = vars.into_iter().collect();
    for name in vars.keys() {
        if let Some(rest) = name.strip_prefix(PREFIX) {
            if !VARIABLES.contains(&rest) && !is_service_link(rest) {
                return Err(SettingsError::Unknown {
                    var: name.clone(),
                    hint: suggestion(rest),
                });
            }
        }
    }
    Ok(vars)
}

fn suggestion(rest: &str) -> String {
    let best = VARIABLES
        .iter()
        .map(|v| (edit_distance(rest, v), v))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, v)) => format!(" (did you mean {PREFIX}{v}?)"),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// One variable being validated: its full name and raw value.
struct Var<'a> {
    name: String,
    value: Option<&'a str>,
    secret: bool,
}

impl<'a> Var<'a> {
    fn new(suffix: &str, value: &'a Option<String>) -> Self {
        Var::named(format!("{PREFIX}{suffix}"), value)
    }

    fn named(name: String, value: &'a Option<String>) -> Self {
        Var {
            name,
            value: value.as_deref(),
            secret: false,
        }
    }

    fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    fn invalid(&self, expected: impl Into<String>) -> SettingsError {
        let value = self.value.unwrap_or("");
        let shown = if self.secret {
            "***".to_string()
        } else if value.contains("://") {
            format!("{:?}", redact_url(value))
        } else {
            format!("{value:?}")
        };
        SettingsError::Invalid {
            var: self.name.clone(),
            shown,
            expected: expected.into(),
        }
    }

    /// The value, or `None` when unset. Set-but-blank is an error: an empty
    /// value is almost always a templating mistake, not a wish for the default.
    fn get(&self, expected: &str) -> Result<Option<&'a str>, SettingsError> {
        match self.value {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Err(self.invalid(format!("empty; {expected}"))),
            Some(v) => Ok(Some(v.trim())),
        }
    }

    fn required(&self, expected: &str) -> Result<&'a str, SettingsError> {
        self.get(expected)?.ok_or_else(|| SettingsError::Missing {
            var: self.name.clone(),
            expected: expected.to_string(),
        })
    }

    fn parse<T>(
        &self,
        expected: &str,
        default: T,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, SettingsError> {
        match self.get(expected)? {
            None => Ok(default),
            Some(v) => parse(v).ok_or_else(|| self.invalid(expected)),
        }
    }

    fn duration(&self, default: Duration) -> Result<Duration, SettingsError> {
        self.parse(DURATION_FORM, default, parse_duration)
    }
}

/// Durations need a unit: `30` alone is refused, because the cron script's
/// users would read it as seconds and others as milliseconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if !text.chars().any(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    humantime::parse_duration(text).ok()
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `10MiB`, `512KiB`, `1048576`, `10MB` (decimal), `2GiB`.
pub fn parse_size(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let num: u64 = num.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    num.checked_mul(factor)
}

fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.len() < 3 || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

fn parse_owner(text: &str) -> Option<Owner> {
    let (uid, gid) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    Some(Owner {
        uid: uid.parse().ok()?,
        gid: match gid {
            Some(g) => Some(g.parse().ok()?),
            None => None,
        },
    })
}

fn parse_socket(text: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    text.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

/// A reload URL must be http(s) with a host; credentials are allowed (basic
/// auth to a proxy) and redacted whenever shown.
fn valid_target(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    !host.is_empty() && url.parse::<hyper::Uri>().is_ok()
}

/// The variables that decide how a tree is staged and checked; shared by
/// the sidecar and `gitreload validate`.
fn staging(raw: &Raw) -> Result<StagingSettings, SettingsError> {
    let subdir_v = Var::new("SUBDIR", &raw.subdir);
    let subdir = subdir_v
        .get("expected a directory inside the repository, such as prometheus")?
        .unwrap_or("")
        .trim_matches('/')
        .to_string();
    if subdir
        .split('/')
        .any(|c| c == ".." || c == "." || (c.is_empty() && !subdir.is_empty()))
    {
        return Err(subdir_v.invalid(
            "expected a relative directory inside the repository, without . or .. components",
        ));
    }

    let check = Var::new("CHECK", &raw.check)
        .get("expected prometheus, alertmanager or a shell command")?
        .map(|c| match c {
            "prometheus" => CheckerKind::Prometheus,
            "alertmanager" => CheckerKind::Alertmanager,
            other => CheckerKind::Command(other.to_string()),
        });
    let check_timeout =
        Var::new("CHECK_TIMEOUT", &raw.check_timeout).duration(Duration::from_secs(60))?;

    let max_files = Var::new("MAX_FILES", &raw.max_files).parse(
        "expected a positive whole number such as 10000",
        10_000usize,
        |t| t.parse().ok().filter(|n| *n > 0),
    )?;
    let max_file_size = Var::new("MAX_FILE_SIZE", &raw.max_file_size).parse(
        "expected a size such as 10MiB, 512KiB or 1048576",
        10 << 20,
        |t| parse_size(t).filter(|n| *n > 0),
    )?;

    let expand_v = Var::new("EXPAND", &raw.expand);
    let expand_form = "expected comma-separated glob patterns of deployed paths, such as alertmanager.yml,secrets/*.yml";
    let mut expand = Vec::new();
    if let Some(list) = expand_v.get(expand_form)? {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item.starts_with('/') {
                return Err(expand_v.invalid(format!(
                    "{item:?} is absolute; {expand_form} (relative to the deployed directory)"
                )));
            }
            let pattern = glob::Pattern::new(item)
                .map_err(|e| expand_v.invalid(format!("{item:?}: {}; {expand_form}", e.msg)))?;
            expand.push(pattern);
        }
    }

    let identity_v = Var::new("AGE_IDENTITY_FILE", &raw.age_identity_file);
    let age_identity = match identity_v
        .get("expected the path of an age identity file (from age-keygen), such as /run/secrets/age_identity")?
    {
        Some(path) => Some(
            Identities::from_file(std::path::Path::new(path))
                .map_err(|why| identity_v.invalid(why))?,
        ),
        None => None,
    };

    let sources = Sources {
        files: expand_files(&Var::new("EXPAND_FILES", &raw.expand_files))?,
        env: expand_env(&Var::new("EXPAND_ENV", &raw.expand_env))?,
        own: own_files(raw),
    };

    Ok(StagingSettings {
        subdir,
        check,
        check_timeout,
        max_files,
        max_file_size,
        expand,
        age_identity,
        sources,
    })
}

/// `GITRELOAD_EXPAND_FILES`: absolute globs of the files `${file:}` may read.
fn expand_files(v: &Var<'_>) -> Result<Vec<glob::Pattern>, SettingsError> {
    let form = "expected comma-separated absolute globs of secret files, such as \
                /run/secrets/alertmanager_*,/etc/gitreload/secrets/**";
    let mut out = Vec::new();
    for item in list_items(v.get(form)?) {
        if !item.starts_with('/') {
            return Err(v.invalid(format!("{item:?} is not absolute; {form}")));
        }
        let path = std::path::Path::new(item);
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(v.invalid(format!("{item:?} has a .. component; {form}")));
        }
        if let Some(dir) = crate::secrets::NEVER_READ
            .iter()
            .find(|d| path.starts_with(d))
        {
            return Err(v.invalid(format!(
                "{item:?} is under {dir}, which is never substituted; {form}"
            )));
        }
        let pattern = glob::Pattern::new(item)
            .map_err(|e| v.invalid(format!("{item:?}: {}; {form}", e.msg)))?;
        out.push(pattern);
    }
    Ok(out)
}

/// `GITRELOAD_EXPAND_ENV`: globs of the variables `${env:}` may read.
fn expand_env(v: &Var<'_>) -> Result<Vec<glob::Pattern>, SettingsError> {
    let form = "expected comma-separated variable names or globs, such as SLACK_API_URL,SMTP_*";
    let mut out = Vec::new();
    for item in list_items(v.get(form)?) {
        if item.starts_with(PREFIX) {
            return Err(v.invalid(format!(
                "{item:?}: gitreload's own variables are never substituted; {form}"
            )));
        }
        let valid = item.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '?' | '[' | ']' | '!' | '-')
        });
        if !valid {
            return Err(v.invalid(format!("{item:?} is not a variable name or glob; {form}")));
        }
        let pattern = glob::Pattern::new(item)
            .map_err(|e| v.invalid(format!("{item:?}: {}; {form}", e.msg)))?;
        out.push(pattern);
    }
    Ok(out)
}

fn list_items(list: Option<&str>) -> impl Iterator<Item = &str> {
    list.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// gitreload's own files, which `${file:}` never reads: the file of every
/// `*_FILE` setting (read or not: in `gitreload validate` the sidecar's
/// variables may be set without being used) and the state directory.
fn own_files(raw: &Raw) -> Vec<(String, PathBuf)> {
    let files = [
        ("PASSWORD_FILE", &raw.password_file),
        ("SSH_KEY_FILE", &raw.ssh_key_file),
        ("SSH_KNOWN_HOSTS_FILE", &raw.ssh_known_hosts_file),
        ("CA_FILE", &raw.ca_file),
        ("WEBHOOK_SECRET_FILE", &raw.webhook_secret_file),
        ("AGE_IDENTITY_FILE", &raw.age_identity_file),
    ];
    let state_dir = raw
        .state_dir
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_STATE_DIR);
    files
        .into_iter()
        .filter_map(|(name, value)| {
            let value = value.as_deref()?.trim();
            (!value.is_empty()).then_some((name, value))
        })
        .chain([("STATE_DIR", state_dir)])
        .map(|(name, value)| {
            (
                format!("{PREFIX}{name}"),
                std::path::absolute(value).unwrap_or_else(|_| PathBuf::from(value)),
            )
        })
        .collect()
}

/// A `*_FILE` variable: the path, made absolute, of a file that can be read
/// now. Neither the error nor anything else shows the content.
fn readable_file(v: &Var<'_>, expected: &str) -> Result<Option<(PathBuf, Vec<u8>)>, SettingsError> {
    let Some(text) = v.get(expected)? else {
        return Ok(None);
    };
    let path = std::path::absolute(text).unwrap_or_else(|_| PathBuf::from(text));
    match std::fs::read(&path) {
        Ok(content) => Ok(Some((path, content))),
        Err(e) => Err(v.invalid(format!("cannot read the file ({e}); {expected}"))),
    }
}

/// The credential variables, checked together: pairs that only work
/// together, and settings that do not apply to the repository's transport.
fn credentials(
    raw: &Raw,
    repo: &RepoUrl,
    allow_insecure_http: bool,
) -> Result<Credentials, SettingsError> {
    let user_v = Var::new("USERNAME", &raw.username);
    let password_v = Var::new("PASSWORD_FILE", &raw.password_file);
    let key_v = Var::new("SSH_KEY_FILE", &raw.ssh_key_file);
    let known_v = Var::new("SSH_KNOWN_HOSTS_FILE", &raw.ssh_known_hosts_file);
    let accept_v = Var::new("SSH_ACCEPT_NEW_HOST_KEYS", &raw.ssh_accept_new_host_keys);
    let ca_v = Var::new("CA_FILE", &raw.ca_file);

    let username =
        user_v.get("expected the user name for HTTPS, such as x-access-token or oauth2")?;
    if let Some(name) = username {
        // User names are logged; a token pasted here must not be.
        if TOKEN_PREFIXES.iter().any(|p| name.starts_with(p)) {
            crate::redact::remember(name);
            return Err(Var::new("USERNAME", &raw.username).secret().invalid(format!(
                "looks like an access token; put the token in the file named by \
                 {PREFIX}PASSWORD_FILE and a user name here (GitHub: x-access-token, GitLab: oauth2)"
            )));
        }
    }
    let password_expected =
        "expected the path of a file holding the password or token, such as /run/secrets/git_token";
    let password_file = password_v
        .get(password_expected)?
        .map(|t| std::path::absolute(t).unwrap_or_else(|_| PathBuf::from(t)));
    let login = match (username, password_file) {
        (Some(username), Some(password_file)) => {
            // Read now so a missing or empty secret stops gitreload at start;
            // it is read again before every fetch.
            crate::credentials::read_password(&password_file).map_err(|e| match e {
                CredentialsError::Unusable { problem, .. } => password_v.invalid(problem),
                CredentialsError::Read { source, .. } => password_v
                    .invalid(format!("cannot read the file ({source}); {password_expected}")),
                other => password_v.invalid(other.to_string()),
            })?;
            Some(Login {
                username: username.to_string(),
                password_file,
            })
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(SettingsError::Missing {
                var: format!("{PREFIX}PASSWORD_FILE"),
                expected: format!(
                    "{PREFIX}USERNAME is set; {PREFIX}USERNAME and {PREFIX}PASSWORD_FILE go together"
                ),
            })
        }
        (None, Some(_)) => {
            return Err(SettingsError::Missing {
                var: format!("{PREFIX}USERNAME"),
                expected: format!(
                    "{PREFIX}PASSWORD_FILE is set; {PREFIX}USERNAME and {PREFIX}PASSWORD_FILE go together \
                     (GitHub: x-access-token, GitLab: oauth2 or the deploy token's user)"
                ),
            })
        }
    };
    if login.is_some() {
        if !repo.is_http() {
            return Err(password_v.invalid(format!(
                "{PREFIX}USERNAME and {PREFIX}PASSWORD_FILE apply to https repositories only; \
                 {PREFIX}REPO is not one"
            )));
        }
        if repo.expose().starts_with("http://") && !allow_insecure_http {
            return Err(password_v.invalid(format!("{CLEARTEXT} ({PREFIX}REPO is http://)")));
        }
        if repo.has_credentials() {
            return Err(password_v.invalid(format!(
                "{PREFIX}REPO already carries credentials; set them in the URL or in \
                 {PREFIX}USERNAME and {PREFIX}PASSWORD_FILE, not both"
            )));
        }
    }

    let ssh_key = readable_file(
        &key_v,
        "expected the path of a private SSH key file, such as /run/secrets/deploy_key",
    )?;
    if let Some((_, content)) = &ssh_key {
        let text = String::from_utf8_lossy(content);
        if !(text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----")) {
            return Err(key_v.invalid(
                "the file is not a private key (no -----BEGIN ... PRIVATE KEY----- line; is it the .pub file?)",
            ));
        }
    }
    let known_hosts = readable_file(
        &known_v,
        "expected the path of a known_hosts file, such as the output of ssh-keyscan",
    )?;
    let accept_new = accept_v.parse("expected true or false", false, parse_bool)?;
    if !repo.is_ssh() {
        for (v, set) in [
            (&key_v, ssh_key.is_some()),
            (&known_v, known_hosts.is_some()),
            (&accept_v, accept_new),
        ] {
            if set {
                return Err(v.invalid(format!(
                    "applies to ssh repositories (ssh:// or git@host:path) only; {PREFIX}REPO is not one"
                )));
            }
        }
    }

    let ca = readable_file(
        &ca_v,
        "expected the path of a PEM file with the CA certificate(s) of the git server",
    )?;
    if let Some((_, content)) = &ca {
        if !String::from_utf8_lossy(content).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ca_v.invalid(
                "the file has no PEM certificate; expected -----BEGIN CERTIFICATE----- blocks",
            ));
        }
        if !repo.expose().starts_with("https://") {
            return Err(ca_v.invalid(format!(
                "applies to https:// repositories only; {PREFIX}REPO is not one"
            )));
        }
    }

    Ok(Credentials {
        ssh_key_file: ssh_key.map(|(p, _)| p),
        ssh_known_hosts_file: known_hosts.map(|(p, _)| p),
        ssh_accept_new_host_keys: accept_new,
        login,
        ca_file: ca.map(|(p, _)| p),
        allow_insecure_http,
    })
}

/// `path` as the kernel resolves it, component by component: each prefix
/// that exists is canonicalized (symlinks followed), so a `..` after it
/// climbs from where the link really leads; the part that does not exist
/// yet (and so holds no link) is taken as written.
fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                out.push(name);
                if let Ok(real) = out.canonicalize() {
                    out = real;
                }
            }
            // `out` holds no link: its parent is the physical one.
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn build(raw: Raw, legacy: Legacy) -> Result<Settings, SettingsError> {
    let mut deprecations = Vec::new();
    let mut legacy_fallback =
        |new: &str, new_value: &Option<String>, old: &str, old_value: &Option<String>| {
            if new_value.is_none() && old_value.is_some() {
                deprecations.push(format!("{old} is deprecated; set {PREFIX}{new} instead"));
                (old.to_string(), old_value.clone())
            } else {
                (format!("{PREFIX}{new}"), new_value.clone())
            }
        };

    let (repo_var, repo_value) = legacy_fallback(
        "REPO",
        &raw.repo,
        "PROMETHEUS_CONFIG_REPO",
        &legacy.prometheus_config_repo,
    );
    let (dest_var, dest_value) = legacy_fallback(
        "DEST",
        &raw.dest,
        "PROMETHEUS_CONFIG_DIR",
        &legacy.prometheus_config_dir,
    );

    let repo_v = Var::named(repo_var, &repo_value);
    let repo_text = repo_v.required(
        "expected a git URL (https://, ssh://, git@host:path, git://, file://) or a path",
    )?;
    let repo = RepoUrl::parse(repo_text).map_err(|why| repo_v.invalid(why))?;
    let allow_insecure_http = Var::new("ALLOW_INSECURE_HTTP", &raw.allow_insecure_http).parse(
        "expected true or false",
        false,
        parse_bool,
    )?;
    if repo.expose().starts_with("http://") && repo.has_credentials() && !allow_insecure_http {
        return Err(repo_v.invalid(CLEARTEXT));
    }
    let credentials = credentials(&raw, &repo, allow_insecure_http)?;

    let dest_v = Var::named(dest_var.clone(), &dest_value);
    let dest = PathBuf::from(
        dest_v.required("expected the directory to keep in step with the repository")?,
    );
    if !dest.is_absolute() {
        return Err(dest_v.invalid("expected an absolute path"));
    }

    let ref_v = Var::new("REF", &raw.reference);
    let reference = ref_v
        .get("expected a branch, a tag or a full commit id (unset follows the remote's default branch)")?
        .map(str::to_string);
    if let Some(r) = &reference {
        if r.contains(char::is_whitespace) || r.contains("..") || r.starts_with('-') {
            return Err(ref_v.invalid("expected a branch, a tag or a full commit id"));
        }
    }

    let staging = staging(&raw)?;

    let state_v = Var::new("STATE_DIR", &raw.state_dir);
    let state_dir = PathBuf::from(
        state_v
            .get("expected an absolute path")?
            .unwrap_or(DEFAULT_STATE_DIR),
    );
    if !state_dir.is_absolute() {
        return Err(state_v.invalid("expected an absolute path"));
    }
    // Compared as the kernel will resolve them: a symlinked or `..`-laden
    // DEST can name the state directory (or a directory around it) while
    // its text does not start with it.
    let (real_dest, real_state) = (resolved(&dest), resolved(&state_dir));
    if real_state.starts_with(&real_dest) || real_dest.starts_with(&real_state) {
        return Err(state_v.invalid(format!(
            "the state directory ({}) must not be {dest_var}'s directory ({}), inside it, nor contain it",
            real_state.display(),
            real_dest.display(),
        )));
    }

    let interval_v = Var::new("INTERVAL", &raw.interval);
    let interval = interval_v.duration(Duration::from_secs(30))?;
    if interval < Duration::from_millis(100) {
        return Err(interval_v.invalid("expected at least 100ms"));
    }
    let once = Var::new("ONCE", &raw.once).parse("expected true or false", false, parse_bool)?;
    let fetch_timeout =
        Var::new("FETCH_TIMEOUT", &raw.fetch_timeout).duration(Duration::from_secs(60))?;

    let file_mode = Var::new("FILE_MODE", &raw.file_mode).parse(
        "expected an octal mode such as 0644 or 0640",
        0o644,
        parse_mode,
    )?;
    let file_owner = Var::new("FILE_OWNER", &raw.file_owner).parse(
        "expected a numeric UID or UID:GID such as 65534:65534",
        None,
        |t| parse_owner(t).map(Some),
    )?;
    let secret_file_mode = Var::new("SECRET_FILE_MODE", &raw.secret_file_mode).parse(
        "expected an octal mode such as 0640 or 0600",
        0o640,
        parse_mode,
    )?;

    let drift = Var::new("DRIFT", &raw.drift).parse(
        "expected repair, report or off",
        DriftMode::Repair,
        |t| match t {
            "repair" => Some(DriftMode::Repair),
            "report" => Some(DriftMode::Report),
            "off" => Some(DriftMode::Off),
            _ => None,
        },
    )?;
    let verify_interval =
        Var::new("VERIFY_INTERVAL", &raw.verify_interval).duration(Duration::from_secs(600))?;

    // Reload targets, with the cron script's three variables as a fallback.
    let targets_v = Var::new("TARGETS", &raw.targets);
    let mut targets = Vec::new();
    if let Some(list) = targets_v
        .get("expected comma-separated URLs such as http://tasks.prometheus:9090/-/reload")?
    {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !valid_target(item) {
                return Err(targets_v.invalid(format!(
                    "{:?} is not an http(s) URL; expected URLs such as http://tasks.prometheus:9090/-/reload",
                    redact_url(item)
                )));
            }
            targets.push(item.to_string());
        }
    } else if let Some(host) = legacy
        .prometheus_host_dns
        .as_deref()
        .filter(|h| !h.trim().is_empty())
    {
        let port = legacy.prometheus_port.as_deref().unwrap_or("9090").trim();
        if port.parse::<u16>().is_err() {
            let v = Var::named("PROMETHEUS_PORT".into(), &legacy.prometheus_port);
            return Err(v.invalid("expected a port number such as 9090"));
        }
        let path = legacy
            .prometheus_notify_path
            .as_deref()
            .unwrap_or("/-/reload")
            .trim();
        let url = format!(
            "http://{}:{port}/{}",
            host.trim(),
            path.trim_start_matches('/')
        );
        if !valid_target(&url) {
            let v = Var::named("PROMETHEUS_HOST_DNS".into(), &legacy.prometheus_host_dns);
            return Err(v.invalid("expected a host name such as tasks.prometheus"));
        }
        deprecations.push(format!(
            "PROMETHEUS_HOST_DNS, PROMETHEUS_PORT and PROMETHEUS_NOTIFY_PATH are deprecated; set {PREFIX}TARGETS={url} instead"
        ));
        targets.push(url);
    }

    let method_v = Var::new("RELOAD_METHOD", &raw.reload_method);
    let reload_method = method_v
        .get("expected an HTTP method such as POST or PUT")?
        .unwrap_or("POST")
        .to_ascii_uppercase();
    if hyper::Method::from_bytes(reload_method.as_bytes()).is_err() {
        return Err(method_v.invalid("expected an HTTP method such as POST or PUT"));
    }
    let reload_timeout =
        Var::new("RELOAD_TIMEOUT", &raw.reload_timeout).duration(Duration::from_secs(10))?;
    let reload_attempts = Var::new("RELOAD_ATTEMPTS", &raw.reload_attempts).parse(
        "expected a positive whole number such as 5",
        5u32,
        |t| t.parse().ok().filter(|n| *n > 0),
    )?;
    let dns_server = Var::new("DNS_SERVER", &raw.dns_server).parse(
        "expected an IP address with an optional port, such as 127.0.0.11 or 10.0.0.2:53",
        None,
        |t| parse_socket(t, 53).map(Some),
    )?;

    let listen_v = Var::new("LISTEN", &raw.listen);
    let listen =
        match listen_v.get("expected an address such as 0.0.0.0:9108, or off")? {
            Some("off") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                listen_v.invalid("expected an address such as 0.0.0.0:9108, or off")
            })?),
            None => Some(DEFAULT_LISTEN.parse().expect("default listen address")),
        };
    let stale_after = Var::new("STALE_AFTER", &raw.stale_after).duration(interval * 5)?;

    let secret_v = Var::new("WEBHOOK_SECRET", &raw.webhook_secret).secret();
    let secret_file_v = Var::new("WEBHOOK_SECRET_FILE", &raw.webhook_secret_file);
    let webhook_secret = match (
        secret_v.get("expected the shared secret of the webhook")?,
        secret_file_v.get("expected the path of a file holding the webhook secret")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(secret_file_v.invalid(format!(
                "set either {PREFIX}WEBHOOK_SECRET or {PREFIX}WEBHOOK_SECRET_FILE, not both"
            )))
        }
        (Some(s), None) => Some(Secret::new(s.to_string())),
        (None, Some(path)) => {
            let content = std::fs::read_to_string(path)
                .map_err(|e| secret_file_v.invalid(format!("cannot read the file: {e}")))?;
            let content = content.trim_end_matches(['\n', '\r']).to_string();
            if content.is_empty() {
                return Err(secret_file_v.invalid("the file is empty; expected the webhook secret"));
            }
            Some(Secret::new(content))
        }
        (None, None) => None,
    };

    let level_v = Var::new("LOG_LEVEL", &raw.log_level);
    let log_level = level_v
        .get("expected debug, info, warning or error")?
        .unwrap_or("info")
        .to_ascii_lowercase();
    let log_level = match log_level.as_str() {
        "trace" | "debug" | "info" | "error" => log_level,
        "warning" | "warn" => "warn".to_string(),
        "critical" => "error".to_string(),
        _ => return Err(level_v.invalid("expected debug, info, warning or error")),
    };
    let format_v = Var::new("LOG_FORMAT", &raw.log_format);
    let log_format = match format_v.get("expected json or text")? {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(_) => return Err(format_v.invalid("expected json or text")),
    };

    Ok(Settings {
        repo,
        credentials,
        dest,
        reference,
        staging,
        state_dir,
        interval,
        once,
        fetch_timeout,
        file_mode,
        file_owner,
        drift,
        verify_interval,
        secret_file_mode,
        targets,
        reload_method,
        reload_timeout,
        reload_attempts,
        dns_server,
        listen,
        stale_after,
        webhook_secret,
        log_level,
        log_format,
        deprecations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A DEST that reaches the state directory through a symlink or `..`
    /// would let a commit overwrite the mirror's git config.
    #[test]
    fn dest_reaching_the_state_dir_through_a_link_or_dotdot_is_refused() {
        let root = tempfile::TempDir::new().unwrap();
        let state = root.path().join("state");
        std::fs::create_dir_all(state.join("mirror")).unwrap();
        std::os::unix::fs::symlink(&state, root.path().join("link")).unwrap();
        std::fs::create_dir_all(root.path().join("other")).unwrap();
        let state_text = state.to_str().unwrap();
        let link = root.path().join("link");
        let cases = [
            // The state dir itself, through a link.
            link.display().to_string(),
            // Inside it, through a link.
            link.join("mirror").display().to_string(),
            // Inside it, spelled with `..`.
            root.path()
                .join("other/../state/mirror")
                .display()
                .to_string(),
            // Containing it, spelled with `..` through the link.
            link.join("..").display().to_string(),
            // Inside it, through a link, below a part that does not exist.
            link.join("new/deeper").display().to_string(),
        ];
        for dest in cases {
            let err = Settings::from_vars(vars(&[
                ("GITRELOAD_REPO", "https://example.test/cfg.git"),
                ("GITRELOAD_DEST", &dest),
                ("GITRELOAD_STATE_DIR", state_text),
            ]))
            .expect_err(&dest)
            .to_string();
            assert!(
                err.contains("GITRELOAD_STATE_DIR") && err.contains("GITRELOAD_DEST"),
                "{dest}: {err}"
            );
        }
        let fine = root.path().join("other/../dest").display().to_string();
        let ok = Settings::from_vars(vars(&[
            ("GITRELOAD_REPO", "https://example.test/cfg.git"),
            ("GITRELOAD_DEST", &fine),
            ("GITRELOAD_STATE_DIR", state_text),
        ]));
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn interval_without_unit_names_the_variable_and_the_form() {
        let err = Settings::from_vars(vars(&[
            ("GITRELOAD_REPO", "https://example.test/cfg.git"),
            ("GITRELOAD_DEST", "/srv/cfg"),
            ("GITRELOAD_STATE_DIR", "/var/lib/x"),
            ("GITRELOAD_INTERVAL", "30"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"GITRELOAD_INTERVAL="30": expected a duration such as 500ms, 30s or 5m"#
        );
    }

    #[test]
    fn typo_suggests_the_real_variable() {
        let err = Settings::from_vars(vars(&[("GITRELOAD_INTERVL", "30s")])).unwrap_err();
        assert!(
            err.to_string().contains("did you mean GITRELOAD_INTERVAL"),
            "{err}"
        );
    }

    /// Asks serde which fields `T` deserializes, without any input.
    fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Fields(Option<&'static [&'static str]>);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                self.0 = Some(fields);
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields = Fields(None);
        let _ = T::deserialize(&mut fields);
        fields.0.expect("a struct")
    }

    #[test]
    fn variables_list_is_exactly_what_the_settings_read() {
        let mut read: Vec<String> = struct_fields::<Raw>()
            .iter()
            .map(|f| f.to_ascii_uppercase())
            .collect();
        let mut listed: Vec<String> = VARIABLES.iter().map(|v| v.to_string()).collect();
        read.sort();
        listed.sort();
        assert_eq!(read, listed);
        let mut legacy: Vec<String> = struct_fields::<Legacy>()
            .iter()
            .map(|f| f.to_ascii_uppercase())
            .collect();
        legacy.sort();
        let mut listed: Vec<String> = LEGACY_VARIABLES.iter().map(|v| v.to_string()).collect();
        listed.sort();
        assert_eq!(legacy, listed);
    }

    #[test]
    fn kubernetes_service_links_are_not_typos() {
        let result = Settings::from_vars(vars(&[
            ("GITRELOAD_REPO", "https://example.test/cfg.git"),
            ("GITRELOAD_DEST", "/srv/cfg"),
            ("GITRELOAD_PORT", "tcp://10.0.0.1:9108"),
            ("GITRELOAD_PORT_9108_TCP_ADDR", "10.0.0.1"),
            ("GITRELOAD_SERVICE_HOST", "10.0.0.1"),
        ]));
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn validate_needs_no_repo_nor_dest_and_still_refuses_typos() {
        let v = Settings::for_validate_from_vars(vars(&[
            ("GITRELOAD_CHECK", "prometheus"),
            ("GITRELOAD_EXPAND", "alertmanager.yml, secrets/*.yml"),
            ("GITRELOAD_SUBDIR", "/alertmanager/"),
        ]))
        .unwrap();
        assert_eq!(v.check, Some(CheckerKind::Prometheus));
        assert_eq!(v.subdir, "alertmanager");
        assert_eq!(
            v.expand.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["alertmanager.yml", "secrets/*.yml"]
        );
        assert!(v.age_identity.is_none());
        let err =
            Settings::for_validate_from_vars(vars(&[("GITRELOAD_EXPANDS", "x")])).unwrap_err();
        assert!(
            err.to_string().contains("did you mean GITRELOAD_EXPAND"),
            "{err}"
        );
    }

    #[test]
    fn secret_settings_name_the_variable() {
        let base = [
            ("GITRELOAD_REPO", "https://example.test/cfg.git"),
            ("GITRELOAD_DEST", "/srv/cfg"),
            ("GITRELOAD_STATE_DIR", "/var/lib/x"),
        ];
        let with = |extra: (&str, &str)| {
            let mut v = vars(&base);
            v.push((extra.0.to_string(), extra.1.to_string()));
            Settings::from_vars(v)
        };
        let ok = with(("GITRELOAD_INTERVAL", "30s")).unwrap();
        assert_eq!(ok.secret_file_mode, 0o640);
        assert!(ok.staging.expand.is_empty() && ok.staging.age_identity.is_none());
        let err = with(("GITRELOAD_EXPAND", "a/[b.yml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("GITRELOAD_EXPAND="), "{err}");
        let err = with(("GITRELOAD_EXPAND", "/etc/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute"), "{err}");
        let err = with(("GITRELOAD_SECRET_FILE_MODE", "640x"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("GITRELOAD_SECRET_FILE_MODE="), "{err}");
        let err = with(("GITRELOAD_AGE_IDENTITY_FILE", "/nonexistent/key"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("GITRELOAD_AGE_IDENTITY_FILE="), "{err}");
    }

    #[test]
    fn expand_sources_name_the_variable_and_keep_our_own_files_out() {
        let staging = |pairs: &[(&str, &str)]| Settings::for_validate_from_vars(vars(pairs));
        let ok = staging(&[
            (
                "GITRELOAD_EXPAND_FILES",
                "/run/secrets/alertmanager_*, /etc/s/**",
            ),
            ("GITRELOAD_EXPAND_ENV", "SLACK_*,SMTP_PASSWORD"),
            ("GITRELOAD_SSH_KEY_FILE", "/run/secrets/key"),
            ("GITRELOAD_STATE_DIR", "/srv/state"),
        ])
        .unwrap();
        assert_eq!(ok.sources.files.len(), 2);
        assert_eq!(ok.sources.env.len(), 2);
        assert_eq!(
            ok.sources.own,
            [
                (
                    "GITRELOAD_SSH_KEY_FILE".to_string(),
                    PathBuf::from("/run/secrets/key")
                ),
                (
                    "GITRELOAD_STATE_DIR".to_string(),
                    PathBuf::from("/srv/state")
                ),
            ]
        );
        let unset = staging(&[]).unwrap();
        assert!(unset.sources.files.is_empty() && unset.sources.env.is_empty());
        assert_eq!(unset.sources.own[0].1, PathBuf::from("/var/lib/gitreload"));
        for (var, value, why) in [
            ("GITRELOAD_EXPAND_FILES", "secrets/*", "not absolute"),
            (
                "GITRELOAD_EXPAND_FILES",
                "/proc/*/environ",
                "never substituted",
            ),
            ("GITRELOAD_EXPAND_FILES", "/run/../proc/x", ".."),
            ("GITRELOAD_EXPAND_FILES", "/run/[x", "/run/[x"),
            ("GITRELOAD_EXPAND_ENV", "GITRELOAD_*", "never substituted"),
            ("GITRELOAD_EXPAND_ENV", "A B", "not a variable name"),
        ] {
            let err = staging(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{var}=")), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn credentials_over_plain_http_need_the_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "pw\n").unwrap();
        let with = |extra: &[(&str, &str)]| {
            let mut v = vars(&[
                ("GITRELOAD_REPO", "http://git.internal:3000/o/r.git"),
                ("GITRELOAD_DEST", "/srv/cfg"),
                ("GITRELOAD_STATE_DIR", "/var/lib/x"),
                ("GITRELOAD_USERNAME", "deploy"),
                ("GITRELOAD_PASSWORD_FILE", file.to_str().unwrap()),
            ]);
            v.extend(vars(extra));
            Settings::from_vars(v)
        };
        let err = with(&[]).unwrap_err().to_string();
        assert!(err.contains("GITRELOAD_ALLOW_INSECURE_HTTP=true"), "{err}");
        let ok = with(&[("GITRELOAD_ALLOW_INSECURE_HTTP", "true")]).unwrap();
        assert!(ok.credentials.allow_insecure_http);
        let err = with(&[("GITRELOAD_ALLOW_INSECURE_HTTP", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("GITRELOAD_ALLOW_INSECURE_HTTP="), "{err}");
        let err = Settings::from_vars(vars(&[
            ("GITRELOAD_REPO", "http://u:pw@git.internal/o/r.git"),
            ("GITRELOAD_DEST", "/srv/cfg"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("GITRELOAD_REPO=") && !err.contains(":pw@"),
            "{err}"
        );
    }

    #[test]
    fn token_given_as_user_name_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "x-oauth-basic\n").unwrap();
        let err = Settings::from_vars(vars(&[
            ("GITRELOAD_REPO", "https://github.com/o/r.git"),
            ("GITRELOAD_DEST", "/srv/cfg"),
            ("GITRELOAD_STATE_DIR", "/var/lib/x"),
            ("GITRELOAD_USERNAME", "ghp_abcdefghijklmnop0123456789"),
            ("GITRELOAD_PASSWORD_FILE", file.to_str().unwrap()),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("GITRELOAD_USERNAME=***: looks like an access token"),
            "{err}"
        );
        assert!(!err.contains("ghp_abc"), "{err}");
    }

    #[test]
    fn sizes_and_modes_parse() {
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_mode("0640"), Some(0o640));
        assert_eq!(parse_mode("999"), None);
    }
}
