//! Credentials: how gitreload proves who it is to the git server and checks
//! who the server is (SSH key and known hosts, HTTPS user and password file,
//! a private CA), and how a failure of either is told to the user.
//!
//! Promises:
//! - The content of a secret file never appears in an error, a log line or a
//!   git config value; only its path does.
//! - `GITRELOAD_PASSWORD_FILE` is read again before every fetch, so a rotated
//!   Docker secret is used at the next fetch without a restart. Each value
//!   read is handed to [`redact::remember`], so it is scrubbed from all
//!   output.
//! - ssh never prompts (batch mode), uses only the configured key (no agent,
//!   no default identities) and refuses unknown or changed host keys, unless
//!   `GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS` is set: then an unknown key is
//!   trusted on first use, saved to `STATE_DIR/ssh/known_hosts` and logged;
//!   a changed key is still refused.
//! - A key file ssh would refuse (readable by group or others, CRLF line
//!   ends, no final newline: all common with Docker secrets) is copied to
//!   `STATE_DIR/ssh/id` with mode 0600, and copied again when the source
//!   changes.
//! - ssh's own messages go to `STATE_DIR/ssh/ssh.log` (cleared before each
//!   fetch), never to gitreload's stderr; a failure is explained from them:
//!   authentication refused, unknown or changed host key (which host, how to
//!   add it), TLS verification failed (which host, which CA file).
//! - Credentials go over plain `http://` only with
//!   `GITRELOAD_ALLOW_INSECURE_HTTP=true` ([`Credentials::allow_insecure_http`]);
//!   the settings refuse the combination otherwise, and the HTTP transport
//!   refuses to send an `Authorization` header over http:// as well.
//! - Nothing here uses gix: settings in, git config strings, secrets read
//!   just now and explanations out.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::redact::{self, RepoUrl};
use crate::settings::Secret;

/// Longest ssh may take to open the TCP connection and finish the key
/// exchange (the fetch timeout bounds the whole fetch; this keeps a stuck
/// ssh process from outliving it by minutes).
const SSH_CONNECT_TIMEOUT_SECS: u32 = 30;

/// How gitreload authenticates to the git server and verifies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Private key for ssh (`GITRELOAD_SSH_KEY_FILE`).
    pub ssh_key_file: Option<PathBuf>,
    /// The server's host key(s) (`GITRELOAD_SSH_KNOWN_HOSTS_FILE`); unset
    /// uses ssh's defaults (`~/.ssh/known_hosts`, `/etc/ssh/ssh_known_hosts`).
    pub ssh_known_hosts_file: Option<PathBuf>,
    /// Trust an unknown host key on first use (`GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS`).
    pub ssh_accept_new_host_keys: bool,
    /// HTTP(S) basic-auth user and the file holding its password or token.
    pub login: Option<Login>,
    /// Extra CA certificates (PEM) trusted for https (`GITRELOAD_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Credentials may go over plain `http://`
    /// (`GITRELOAD_ALLOW_INSECURE_HTTP`, for a git server on a private
    /// network); otherwise they are sent over https only.
    pub allow_insecure_http: bool,
}

/// `GITRELOAD_USERNAME` and `GITRELOAD_PASSWORD_FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name; not a secret (`x-access-token`, `oauth2`, ...).
    pub username: String,
    /// The file with the password or token, read before every fetch.
    pub password_file: PathBuf,
}

/// What one fetch presents, prepared just before it.
#[derive(Debug, Default)]
pub struct Session {
    /// Git config overrides for the transport (`core.sshCommand=...`,
    /// `ssh.variant=ssh`), as `key=value`.
    pub config: Vec<String>,
    /// The user and the password as read just now.
    pub login: Option<(String, Secret)>,
    /// The CA bundle as read just now: (path, PEM bytes).
    pub ca: Option<(PathBuf, Vec<u8>)>,
    /// Where ssh writes its messages during this fetch.
    ssh_log: Option<PathBuf>,
}

/// A credential that cannot be used, or a fetch refused because of one.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {var}={}: {source}", .path.display())]
    Read {
        var: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{var}={} {problem}", .path.display())]
    Unusable {
        var: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("cannot prepare {}: {source}", .path.display())]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("authentication refused by {host}: {detail}")]
    AuthRefused { host: String, detail: String },
    #[error("{host} requires authentication: {hint}")]
    AuthRequired { host: String, hint: String },
    #[error("SSH host key of {host} is unknown: {hint}")]
    UnknownHostKey { host: String, hint: String },
    #[error("SSH host key of {host} has CHANGED: {hint}")]
    HostKeyChanged { host: String, hint: String },
    #[error("TLS verification of {host} failed ({reason}): {hint}")]
    Tls {
        host: String,
        reason: String,
        hint: String,
    },
    #[error("{host} answered {status}: {hint}")]
    Refused {
        host: String,
        status: &'static str,
        hint: String,
    },
    #[error("ssh: {0}")]
    Ssh(String),
}

impl Credentials {
    /// Prepares one fetch of `url`: for ssh, the ssh command (with the key
    /// copied if ssh would refuse it, and a fresh log); for http(s), the
    /// password and the CA bundle read now.
    pub fn prepare(&self, state_dir: &Path, url: &RepoUrl) -> Result<Session, CredentialsError> {
        let mut session = Session::default();
        if url.is_ssh() {
            let (command, log) = self.ssh_command(&state_dir.join("ssh"))?;
            session.config = vec![
                format!("core.sshCommand={command}"),
                "ssh.variant=ssh".into(),
            ];
            session.ssh_log = Some(log);
        }
        if let Some(login) = &self.login {
            let password = read_password(&login.password_file)?;
            session.login = Some((login.username.clone(), password));
        }
        if let Some(path) = &self.ca_file {
            let pem = fs::read(path).map_err(|source| CredentialsError::Read {
                var: "GITRELOAD_CA_FILE",
                path: path.clone(),
                source,
            })?;
            session.ca = Some((path.clone(), pem));
        }
        Ok(session)
    }

    /// The `core.sshCommand` for this fetch and the log it writes to.
    /// Every option is given with `-o`, which wins over any ssh config file.
    fn ssh_command(&self, dir: &Path) -> Result<(String, PathBuf), CredentialsError> {
        let prepare_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CredentialsError::Prepare { path, source }
        };
        fs::create_dir_all(dir).map_err(prepare_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(prepare_err(dir))?;
        let log = dir.join("ssh.log");
        fs::write(&log, b"").map_err(prepare_err(&log))?;

        let mut options = vec![
            "BatchMode=yes".to_string(),
            format!("ConnectTimeout={SSH_CONNECT_TIMEOUT_SECS}"),
            "ServerAliveInterval=15".into(),
            "ServerAliveCountMax=3".into(),
        ];
        if let Some(key) = &self.ssh_key_file {
            let key = usable_key(key, dir)?;
            options.push(format!("IdentityFile={}", ssh_path(&key)?));
            options.push("IdentitiesOnly=yes".into());
            options.push("IdentityAgent=none".into());
        }
        let mut known_hosts = Vec::new();
        if self.ssh_accept_new_host_keys {
            // ssh adds new keys to the first file: ours, never the secret.
            known_hosts.push(ssh_path(&dir.join("known_hosts"))?);
        }
        if let Some(file) = &self.ssh_known_hosts_file {
            known_hosts.push(ssh_path(file)?);
        }
        if !known_hosts.is_empty() {
            options.push(format!("UserKnownHostsFile={}", known_hosts.join(" ")));
            options.push("GlobalKnownHostsFile=/dev/null".into());
        }
        options.push(format!(
            "StrictHostKeyChecking={}",
            if self.ssh_accept_new_host_keys {
                "accept-new"
            } else {
                "yes"
            }
        ));
        let mut command = String::from("exec ssh");
        for option in &options {
            command.push_str(" -o ");
            command.push_str(&shell_quote(option));
        }
        // gix appends nothing when "$@" is present; stderr (ssh's messages
        // and the server's) goes to the log, not to our structured output.
        command.push_str(" \"$@\" 2>>");
        command.push_str(&shell_quote(&path_text(&log)?));
        Ok((command, log))
    }

    /// Explains a failed fetch of `url` from ssh's log and the transport's
    /// error text (already scrubbed); `None` when nothing is recognised.
    pub fn explain(
        &self,
        session: &Session,
        url: &RepoUrl,
        error: &str,
    ) -> Option<CredentialsError> {
        if let Some(log) = &session.ssh_log {
            let text = fs::read_to_string(log).unwrap_or_default();
            let text = redact::scrub(&text);
            if let Some(e) = self.explain_ssh(&text, url) {
                return Some(e);
            }
        }
        if url.is_http() {
            return self.explain_http(session, url, error);
        }
        None
    }

    fn explain_ssh(&self, log: &str, url: &RepoUrl) -> Option<CredentialsError> {
        let lines: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let find = |needle: &str| lines.iter().find(|l| l.contains(needle)).copied();
        let url_host = || match url.host_port() {
            Some((host, Some(port))) => format!("[{host}]:{port}"),
            Some((host, None)) => host,
            None => url.redacted(),
        };
        let known_hosts_text = || match (&self.ssh_known_hosts_file, self.ssh_accept_new_host_keys)
        {
            (Some(file), _) => format!("GITRELOAD_SSH_KNOWN_HOSTS_FILE={}", file.display()),
            (None, true) => "the state directory's ssh/known_hosts".to_string(),
            (None, false) => "~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts".to_string(),
        };

        if let Some(line) = find("has changed and you have requested strict checking") {
            let host = between(line, "Host key for ", " has changed").unwrap_or_else(url_host);
            let fingerprint = lines
                .iter()
                .find(|l| l.starts_with("SHA256:"))
                .map(|l| l.trim_end_matches('.').to_string())
                .unwrap_or_else(|| "unknown".into());
            let offending = find("Offending ")
                .and_then(|l| l.split(" key in ").nth(1))
                .unwrap_or("the known_hosts file")
                .to_string();
            let (name, port) = split_host(&host);
            let file = offending
                .rsplit_once(':')
                .map_or(offending.as_str(), |(f, _)| f);
            return Some(CredentialsError::HostKeyChanged {
                hint: format!(
                    "the server now presents {fingerprint}, which does not match {offending}. \
                     Either the server was reinstalled or someone is intercepting the connection. \
                     Only if the change is expected, replace the entry: ssh-keygen -R '{host}' -f {file}; \
                     then {}",
                    keyscan(&name, port, file)
                ),
                host,
            });
        }
        if let Some(line) =
            find("host key is known for").or_else(|| find("Host key verification failed"))
        {
            let host = between(line, "is known for ", " and you have").unwrap_or_else(url_host);
            let (name, port) = split_host(&host);
            let hint = match &self.ssh_known_hosts_file {
                Some(file) => format!(
                    "it is not in {}. Add it (and compare its fingerprint with the server's): {}; \
                     or set GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS=true to trust it on first use",
                    known_hosts_text(),
                    keyscan(&name, port, &file.display().to_string())
                ),
                None => format!(
                    "it is not in {}. Put the output of `ssh-keyscan{} {name}` (after comparing its \
                     fingerprint with the server's) in a file and set GITRELOAD_SSH_KNOWN_HOSTS_FILE \
                     to it, or set GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS=true to trust it on first use",
                    known_hosts_text(),
                    port.map(|p| format!(" -p {p}")).unwrap_or_default()
                ),
            };
            return Some(CredentialsError::UnknownHostKey { host, hint });
        }
        if let Some(line) = find("Load key ") {
            let problem = line.rsplit(": ").next().unwrap_or(line);
            let path = self.ssh_key_file.clone().unwrap_or_default();
            return Some(CredentialsError::Unusable {
                var: "GITRELOAD_SSH_KEY_FILE",
                path,
                problem: format!(
                    "cannot be used by ssh ({problem}); expected an OpenSSH or PEM private key without a passphrase"
                ),
            });
        }
        if let Some(line) = find("Permission denied") {
            let user_host = line.split(": Permission denied").next().unwrap_or("");
            let host = user_host
                .rsplit('@')
                .next()
                .filter(|h| !h.is_empty() && *h != line);
            let host = host.map(str::to_string).unwrap_or_else(url_host);
            let key = match &self.ssh_key_file {
                Some(file) => format!("the key in GITRELOAD_SSH_KEY_FILE={}", file.display()),
                None => "ssh's default keys (set GITRELOAD_SSH_KEY_FILE)".to_string(),
            };
            let detail =
                format!(
                "the server did not accept {key} for {} ({}); add its public key to the server \
                 (deploy key, or authorized_keys of that user)",
                if user_host.contains('@') {
                    format!("user {}", user_host.rsplit_once('@').map_or("", |(u, _)| u))
                } else {
                    "the login".to_string()
                },
                line.trim_start_matches(user_host).trim_start_matches(": ").trim_end_matches('.')
            );
            return Some(CredentialsError::AuthRefused { host, detail });
        }
        if lines.is_empty() {
            return None;
        }
        let tail: Vec<&str> = lines[lines.len().saturating_sub(3)..]
            .iter()
            .map(|l| l.trim_start_matches("ssh: "))
            .collect();
        Some(CredentialsError::Ssh(tail.join("; ")))
    }

    fn explain_http(
        &self,
        session: &Session,
        url: &RepoUrl,
        error: &str,
    ) -> Option<CredentialsError> {
        let host = match url.host_port() {
            Some((host, Some(port))) => format!("{host}:{port}"),
            Some((host, None)) => host,
            None => url.redacted(),
        };
        if error.contains("in clear text over http") {
            // Settings refuse this at start; a redirect can still get here.
            return Some(CredentialsError::AuthRequired {
                host,
                hint: "credentials are only sent over https://, never in clear text over http://; \
                       use an https:// URL (or, for a git server on a private network, set \
                       GITRELOAD_ALLOW_INSECURE_HTTP=true)"
                    .into(),
            });
        }
        if error.contains("were not accepted by the remote")
            || error.contains("No credentials were returned")
        {
            let detail = match (&self.login, url.has_credentials()) {
                (Some(login), _) => format!(
                    "user {:?} with the password in GITRELOAD_PASSWORD_FILE={} was not accepted; \
                     check the token and its scopes (read access to the repository)",
                    login.username,
                    login.password_file.display()
                ),
                (None, true) => "the credentials in GITRELOAD_REPO were not accepted".to_string(),
                (None, false) => {
                    return Some(CredentialsError::AuthRequired {
                        host,
                        hint: "set GITRELOAD_USERNAME and GITRELOAD_PASSWORD_FILE (a token works as password)"
                            .into(),
                    })
                }
            };
            return Some(CredentialsError::AuthRefused { host, detail });
        }
        let has_credentials = self.login.is_some() || url.has_credentials();
        if error.contains("Received HTTP status 403") {
            return Some(CredentialsError::Refused {
                host,
                status: "403 Forbidden",
                hint: if has_credentials {
                    "the credentials were accepted but give no read access to this repository \
                     (token scopes, deploy token or project membership)"
                } else {
                    "set GITRELOAD_USERNAME and GITRELOAD_PASSWORD_FILE with an account that may read it"
                }
                .into(),
            });
        }
        if error.contains("Received HTTP status 404") {
            return Some(CredentialsError::Refused {
                host,
                status: "404 Not Found",
                hint: "check the repository URL; GitHub and others also answer 404 for a private \
                       repository the credentials may not read"
                    .into(),
            });
        }
        let lower = error.to_ascii_lowercase();
        if lower.contains("invalid peer certificate") || lower.contains("certificate verify failed")
        {
            let reason = between(error, "invalid peer certificate: ", ":")
                .or_else(|| between(error, "invalid peer certificate: ", ")"))
                .unwrap_or_else(|| "certificate not trusted".into());
            let reason = reason.trim().to_string();
            let hint = match (&session.ca, reason.as_str()) {
                (_, r) if r.contains("NotValidForName") => {
                    format!("the server's certificate is not valid for {host}; use a URL with a name the certificate lists")
                }
                (Some((path, _)), _) => format!(
                    "the server's certificate is not signed by a CA in GITRELOAD_CA_FILE={}",
                    path.display()
                ),
                (None, _) => "the server's certificate is not signed by a CA this system trusts; \
                     for a private CA set GITRELOAD_CA_FILE to its certificate (PEM)"
                    .to_string(),
            };
            return Some(CredentialsError::Tls { host, reason, hint });
        }
        None
    }

    /// After a successful fetch: logs host keys ssh trusted on first use.
    pub fn succeeded(&self, session: &Session) {
        let Some(log) = &session.ssh_log else { return };
        let Ok(text) = fs::read_to_string(log) else {
            return;
        };
        for line in text.lines().filter(|l| l.contains("Permanently added")) {
            let host = between(line, "added '", "'").unwrap_or_default();
            let kind = between(line, "(", ")").unwrap_or_default();
            tracing::warn!(
                host = %host,
                key_type = %kind,
                known_hosts = %log.with_file_name("known_hosts").display(),
                "SSH host key trusted on first use (GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS)"
            );
        }
    }
}

/// Reads the password file: trailing line breaks removed (`echo token >
/// file` is the usual way to make one); empty or several lines is an error.
/// The value is registered with [`redact::remember`] before anything else.
pub fn read_password(path: &Path) -> Result<Secret, CredentialsError> {
    let var = "GITRELOAD_PASSWORD_FILE";
    let text = fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        var,
        path: path.to_path_buf(),
        source,
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    redact::remember(password);
    let unusable = |problem: &str| CredentialsError::Unusable {
        var,
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    if password.is_empty() {
        return Err(unusable("is empty; expected the password or token"));
    }
    if password.contains(['\n', '\r']) {
        return Err(unusable(
            "has more than one line; expected only the password or token",
        ));
    }
    Ok(Secret::new(password.to_string()))
}

/// The key ssh should read: `source` itself, or a private 0600 copy in `dir`
/// when ssh would refuse the source (too open, CRLF, no final newline).
fn usable_key(source: &Path, dir: &Path) -> Result<PathBuf, CredentialsError> {
    let read_err = |e| CredentialsError::Read {
        var: "GITRELOAD_SSH_KEY_FILE",
        path: source.to_path_buf(),
        source: e,
    };
    let mode = fs::metadata(source).map_err(read_err)?.permissions().mode();
    let original = fs::read(source).map_err(read_err)?;
    let mut key = original.clone();
    if key.contains(&b'\r') {
        key.retain(|b| *b != b'\r');
    }
    if key.last() != Some(&b'\n') {
        key.push(b'\n');
    }
    let copy = dir.join("id");
    if mode & 0o077 == 0 && key == original {
        let _ = fs::remove_file(&copy);
        return Ok(source.to_path_buf());
    }
    let current = fs::read(&copy).ok();
    let copy_mode = fs::metadata(&copy)
        .map(|m| m.permissions().mode() & 0o777)
        .ok();
    if current.as_deref() == Some(key.as_slice()) && copy_mode == Some(0o600) {
        return Ok(copy);
    }
    let tmp = dir.join("id.tmp");
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&key)?;
        file.sync_all()?;
        fs::rename(&tmp, &copy)
    };
    write().map_err(|source| CredentialsError::Prepare {
        path: copy.clone(),
        source,
    })?;
    let why = if mode & 0o077 != 0 {
        format!(
            "its mode {:04o} lets others read it, which ssh refuses",
            mode & 0o7777
        )
    } else {
        "its line ends or final newline are not what ssh reads".to_string()
    };
    tracing::info!(
        key_file = %source.display(),
        copy = %copy.display(),
        reason = %why,
        "SSH key copied with mode 0600"
    );
    Ok(copy)
}

/// `path` as one token of an ssh option: `%` doubled (ssh expands `%x`),
/// double-quoted when it has blanks.
fn ssh_path(path: &Path) -> Result<String, CredentialsError> {
    let text = path_text(path)?.replace('%', "%%");
    Ok(if text.contains([' ', '\t']) {
        format!("\"{text}\"")
    } else {
        text
    })
}

/// The path as UTF-8 text safe to put into a shell word and an ssh option.
fn path_text(path: &Path) -> Result<String, CredentialsError> {
    let unusable = || CredentialsError::Prepare {
        path: path.to_path_buf(),
        source: std::io::Error::other(
            "the path cannot be passed to ssh: it is not UTF-8 or has a quote or line break",
        ),
    };
    let text = path.to_str().ok_or_else(unusable)?;
    if text.contains(['\'', '"', '\n', '\r', '\\']) {
        return Err(unusable());
    }
    Ok(text.to_string())
}

/// Single-quotes `word` for `sh` (it never contains `'`, see [`path_text`]).
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The text between the first `start` and the next `end` after it.
fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let rest = text.split_once(start)?.1;
    Some(
        rest.split_once(end)
            .map_or(rest, |(inside, _)| inside)
            .to_string(),
    )
}

/// `[127.0.0.1]:2222` -> (`127.0.0.1`, Some(2222)); `github.com` -> (it, None).
fn split_host(host: &str) -> (String, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((name, port)) = rest.split_once("]:") {
            return (name.to_string(), port.parse().ok());
        }
    }
    (host.to_string(), None)
}

/// The command that adds a host's keys to `file`.
fn keyscan(host: &str, port: Option<u16>, file: &str) -> String {
    match port {
        Some(p) => format!("ssh-keyscan -p {p} {host} >> {file}"),
        None => format!("ssh-keyscan {host} >> {file}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh_url() -> RepoUrl {
        RepoUrl::parse("ssh://git@127.0.0.1:2222/srv/cfg.git").unwrap()
    }

    #[test]
    fn unknown_host_key_says_which_host_and_how_to_add_it() {
        let creds = Credentials {
            ssh_known_hosts_file: Some("/run/secrets/known_hosts".into()),
            ..Default::default()
        };
        let log = "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\nHost key verification failed.\n";
        let e = creds.explain_ssh(log, &ssh_url()).unwrap().to_string();
        assert!(
            e.starts_with("SSH host key of [127.0.0.1]:2222 is unknown"),
            "{e}"
        );
        assert!(
            e.contains("ssh-keyscan -p 2222 127.0.0.1 >> /run/secrets/known_hosts"),
            "{e}"
        );
        assert!(e.contains("GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS=true"), "{e}");
    }

    #[test]
    fn changed_host_key_names_fingerprint_and_offending_line() {
        let creds = Credentials::default();
        let log = "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nThe fingerprint for the ED25519 key sent by the remote host is\nSHA256:abc.\nOffending ED25519 key in /kh:3\nHost key for [127.0.0.1]:2222 has changed and you have requested strict checking.\nHost key verification failed.\n";
        let e = creds.explain_ssh(log, &ssh_url()).unwrap().to_string();
        assert!(
            e.starts_with("SSH host key of [127.0.0.1]:2222 has CHANGED"),
            "{e}"
        );
        assert!(e.contains("SHA256:abc") && e.contains("/kh:3"), "{e}");
        assert!(e.contains("ssh-keygen -R '[127.0.0.1]:2222' -f /kh"), "{e}");
    }

    #[test]
    fn refused_key_is_an_authentication_error_naming_user_and_key() {
        let creds = Credentials {
            ssh_key_file: Some("/run/secrets/deploy_key".into()),
            ..Default::default()
        };
        let log = "git@127.0.0.1: Permission denied (publickey).\n";
        let e = creds.explain_ssh(log, &ssh_url()).unwrap().to_string();
        assert!(e.starts_with("authentication refused by 127.0.0.1"), "{e}");
        assert!(
            e.contains("user git") && e.contains("/run/secrets/deploy_key"),
            "{e}"
        );
    }

    #[test]
    fn http_statuses_are_explained() {
        let url = RepoUrl::parse("https://git.example/cfg.git").unwrap();
        let session = Session::default();
        let creds = Credentials {
            login: Some(Login {
                username: "x-access-token".into(),
                password_file: "/run/secrets/token".into(),
            }),
            ..Default::default()
        };
        let e = creds
            .explain_http(
                &session,
                &url,
                "Transport handshake failed: Received HTTP status 403",
            )
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("git.example answered 403 Forbidden: the credentials were accepted"),
            "{e}"
        );
        let e = creds
            .explain_http(&session, &url, "x: Credentials provided for \"https://git.example/cfg.git\" were not accepted by the remote")
            .unwrap()
            .to_string();
        assert!(
            e.contains("user \"x-access-token\"") && e.contains("/run/secrets/token"),
            "{e}"
        );
        let e = Credentials::default()
            .explain_http(&session, &url, "invalid peer certificate: UnknownIssuer")
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("TLS verification of git.example failed (UnknownIssuer)"),
            "{e}"
        );
    }

    #[test]
    fn ssh_command_quotes_paths_and_keeps_stderr_out_of_our_output() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials {
            ssh_known_hosts_file: Some("/run/my secrets/kh".into()),
            ssh_accept_new_host_keys: true,
            ..Default::default()
        };
        let (cmd, log) = creds.ssh_command(dir.path()).unwrap();
        assert!(cmd.starts_with("exec ssh -o 'BatchMode=yes'"), "{cmd}");
        assert!(
            cmd.contains(&format!(
                "'UserKnownHostsFile={}/known_hosts \"/run/my secrets/kh\"'",
                dir.path().display()
            )),
            "{cmd}"
        );
        assert!(cmd.contains("'StrictHostKeyChecking=accept-new'"), "{cmd}");
        assert!(
            cmd.ends_with(&format!("\"$@\" 2>>'{}'", log.display())),
            "{cmd}"
        );
    }

    #[test]
    fn key_readable_by_others_is_copied_private_and_recopied_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("key");
        fs::write(
            &src,
            "-----BEGIN OPENSSH PRIVATE KEY-----\r\nAAAA\r\n-----END OPENSSH PRIVATE KEY-----",
        )
        .unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o444)).unwrap();
        let used = usable_key(&src, dir.path()).unwrap();
        assert_eq!(used, dir.path().join("id"));
        assert_eq!(
            fs::metadata(&used).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(&used).unwrap(),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
        );
        fs::set_permissions(&src, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&src, "-----BEGIN OPENSSH PRIVATE KEY-----\nBBBB\n").unwrap();
        let used = usable_key(&src, dir.path()).unwrap();
        assert!(fs::read_to_string(&used).unwrap().contains("BBBB"));
        fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(usable_key(&src, dir.path()).unwrap(), src);
        assert!(!dir.path().join("id").exists(), "stale copy removed");
    }

    #[test]
    fn password_file_is_trimmed_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        fs::write(&file, "ghp_unit_test_token_1\n").unwrap();
        let pw = read_password(&file).unwrap();
        assert_eq!(pw.expose(), "ghp_unit_test_token_1");
        assert_eq!(redact::scrub("x ghp_unit_test_token_1 y"), "x *** y");
        fs::write(&file, "\n").unwrap();
        let e = read_password(&file).unwrap_err().to_string();
        assert!(
            e.contains("GITRELOAD_PASSWORD_FILE=") && e.contains("is empty"),
            "{e}"
        );
    }
}
