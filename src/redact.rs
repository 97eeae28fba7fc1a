//! Redaction: the one place that knows which parts of a URL or a message are
//! secret, so that logs, errors and metric labels never carry them.
//!
//! Promises:
//! - [`RepoUrl::redacted`] and [`redact_url`] never return a password, an
//!   HTTP user-info (a token is often passed as the user name) or the value
//!   of a secret-bearing query or fragment parameter (`?token=`,
//!   `?private_token=`, `?sig=`, ...: see [`is_secret_parameter`]), and
//!   [`RepoUrl::scrub`] removes every secret part of the URL from free text,
//!   such as an error message from the git transport.
//! - Every secret handed to [`remember`] (URL passwords, the content of
//!   `GITRELOAD_PASSWORD_FILE` each time it is read, the webhook secret) is
//!   replaced by `***` in whatever passes through [`scrub`]: error texts, the
//!   log writer, the panic hook. A rotated password is added, the old one
//!   kept (it may still be valid elsewhere).

use std::sync::RwLock;

/// Secrets known to this process, each with the forms it may take in output
/// (as is, JSON-escaped, percent-encoded), longest first.
static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// At most this many forms are kept; the oldest go first (a password file
/// rotated every minute for a year must not grow the list without bound).
const MAX_KNOWN: usize = 256;

/// Registers `secret` so that [`scrub`] hides it from now on. Empty strings
/// are ignored; registering the same secret again is cheap.
pub fn remember(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let mut forms = vec![secret.to_string()];
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json[1..json.len() - 1].to_string());
    }
    forms.push(percent_encode(secret));
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    let mut changed = false;
    for form in forms {
        if !known.contains(&form) {
            known.push(form);
            changed = true;
        }
    }
    if changed {
        let excess = known.len().saturating_sub(MAX_KNOWN);
        known.drain(..excess);
        // Longest first, so a secret that contains another is replaced whole.
        known.sort_by_key(|f| std::cmp::Reverse(f.len()));
    }
}

/// `text` with every [remembered](remember) secret replaced by `***`.
pub fn scrub(text: &str) -> String {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in known.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// True when no secret has been registered (the log writer's fast path).
pub fn nothing_known() -> bool {
    KNOWN.read().map(|k| k.is_empty()).unwrap_or(false)
}

/// The upstream repository's URL, with its credentials kept for use and
/// hidden from every rendering.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoUrl {
    raw: String,
    /// Substrings that must never be shown (password, token user-info, and
    /// their percent-decoded forms).
    secrets: Vec<String>,
}

impl RepoUrl {
    /// Accepts https://, http://, ssh://, git://, file:// URLs, scp-like
    /// `user@host:path`, and absolute local paths.
    pub fn parse(text: &str) -> Result<RepoUrl, String> {
        let text = text.trim();
        let kind = classify(text)
            .ok_or("expected a git URL (https://, ssh://, git@host:path, git://, file://) or an absolute path")?;
        if kind == Kind::Url {
            let rest = text.split_once("://").map(|(_, r)| r).unwrap_or("");
            let authority = rest.split('/').next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            let scheme = text.split("://").next().unwrap_or("");
            if host.is_empty() && scheme != "file" {
                return Err(format!("expected a host after {scheme}://"));
            }
        }
        let mut secrets = Vec::new();
        if let Some((scheme, userinfo)) = userinfo(text) {
            let secret_part = match userinfo.split_once(':') {
                Some((_, password)) => password,
                // A token is often given as the only user-info on https.
                None if scheme.starts_with("http") => userinfo,
                None => "",
            };
            if !secret_part.is_empty() {
                secrets.push(secret_part.to_string());
                if let Some(decoded) = percent_decode(secret_part) {
                    if decoded != secret_part {
                        secrets.push(decoded);
                    }
                }
            }
        }
        for value in secret_parameter_values(text) {
            if !value.is_empty() && !secrets.iter().any(|s| s == value) {
                secrets.push(value.to_string());
                if let Some(decoded) = percent_decode(value) {
                    if decoded != value && !decoded.is_empty() {
                        secrets.push(decoded);
                    }
                }
            }
        }
        Ok(RepoUrl {
            raw: text.to_string(),
            secrets,
        })
    }

    /// The URL with its credentials, for the git transport only.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL as it may be shown.
    pub fn redacted(&self) -> String {
        redact_url(&self.raw)
    }

    /// True when the URL is served by ssh (ssh:// or scp-like).
    pub fn is_ssh(&self) -> bool {
        self.raw.starts_with("ssh://") || classify(&self.raw) == Some(Kind::ScpLike)
    }

    /// True for http:// and https://.
    pub fn is_http(&self) -> bool {
        self.raw.starts_with("http://") || self.raw.starts_with("https://")
    }

    /// The secret parts of this URL (password, token user-info, secret
    /// query parameters), for [`remember`].
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// True when the URL carries a password, an HTTP token or a secret
    /// query parameter.
    pub fn has_credentials(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// The host, and the port when the URL gives one; `None` for local paths.
    /// For scp-like URLs the host may be an alias from the ssh config.
    pub fn host_port(&self) -> Option<(String, Option<u16>)> {
        let authority = match classify(&self.raw)? {
            Kind::Path => return None,
            Kind::ScpLike => self.raw.split_once(':')?.0,
            Kind::Url => {
                let (scheme, rest) = self.raw.split_once("://")?;
                if scheme == "file" {
                    return None;
                }
                rest.split(['/', '?', '#']).next()?
            }
        };
        let host_port = authority.rsplit('@').next()?;
        if let Some(rest) = host_port.strip_prefix('[') {
            // [::1]:2222
            let (host, after) = rest.split_once(']')?;
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return Some((host.to_string(), port));
        }
        match host_port.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => {
                Some((host.to_string(), port.parse().ok()))
            }
            _ => Some((host_port.to_string(), None)),
        }
    }

    /// Removes every secret part of this URL from `text`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.raw, &self.redacted());
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }
}

impl std::fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoUrl({})", self.redacted())
    }
}

impl std::fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Url,
    ScpLike,
    Path,
}

fn classify(text: &str) -> Option<Kind> {
    if let Some((scheme, _)) = text.split_once("://") {
        return matches!(
            scheme,
            "https" | "http" | "ssh" | "git" | "file" | "git+ssh" | "ssh+git"
        )
        .then_some(Kind::Url);
    }
    if text.starts_with('/') {
        return Some(Kind::Path);
    }
    // scp-like: [user@]host:path, where the host part has no slash.
    let (host, path) = text.split_once(':')?;
    (!host.is_empty() && !host.contains('/') && !path.is_empty()).then_some(Kind::ScpLike)
}

/// `(scheme, userinfo)` of a `scheme://userinfo@host/...` URL.
fn userinfo(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _host) = authority.rsplit_once('@')?;
    Some((scheme, userinfo))
}

/// The URL with any password replaced by `***`; for http(s) the whole
/// user-info goes, since tokens are often passed as the user name. The
/// values of secret query and fragment parameters become `***` too.
pub fn redact_url(url: &str) -> String {
    let url = redact_parameters(url);
    let Some((scheme, info)) = userinfo(&url) else {
        return url;
    };
    let shown = if scheme.starts_with("http") {
        "***".to_string()
    } else {
        match info.split_once(':') {
            Some((user, _)) => format!("{user}:***"),
            None => info.to_string(),
        }
    };
    let prefix_len = scheme.len() + 3;
    format!(
        "{}{}{}",
        &url[..prefix_len],
        shown,
        &url[prefix_len + info.len()..]
    )
}

/// Query parameter names that carry a credential, compared without case:
/// the tokens of GitHub, GitLab, Gitea and OAuth, signatures of signed URLs
/// (S3, GCS, Azure SAS), API keys and passwords.
const SECRET_PARAMETERS: &[&str] = &[
    "token",
    "access_token",
    "private_token",
    "id_token",
    "refresh_token",
    "job_token",
    "auth",
    "authorization",
    "password",
    "passwd",
    "pass",
    "pwd",
    "secret",
    "client_secret",
    "key",
    "apikey",
    "api_key",
    "sig",
    "signature",
    "code",
    "jwt",
    "session",
    "sessionid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
];

/// True for a query or fragment parameter whose value is a secret: a name
/// of [`SECRET_PARAMETERS`], or one that says so (contains `token`,
/// `secret`, `passw`, `signature` or `credential`, or ends in `key`),
/// without regard to case or percent-encoding.
pub fn is_secret_parameter(name: &str) -> bool {
    let name = percent_decode(name)
        .unwrap_or_else(|| name.to_string())
        .to_ascii_lowercase();
    SECRET_PARAMETERS.contains(&name.as_str())
        || ["token", "secret", "passw", "signature", "credential"]
            .iter()
            .any(|w| name.contains(w))
        || name.ends_with("key")
}

/// The query (after `?`) and the fragment (after `#`) of a URL, as byte
/// ranges of `url`.
fn parameter_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let fragment = url.find('#');
    let before_fragment = fragment.unwrap_or(url.len());
    if let Some(q) = url[..before_fragment].find('?') {
        ranges.push(q + 1..before_fragment);
    }
    if let Some(f) = fragment {
        ranges.push(f + 1..url.len());
    }
    ranges
}

/// The values of the secret parameters of `url` (as written, not decoded).
fn secret_parameter_values(url: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for range in parameter_ranges(url) {
        for pair in url[range].split(['&', ';']) {
            if let Some((name, value)) = pair.split_once('=') {
                if is_secret_parameter(name) {
                    out.push(value);
                }
            }
        }
    }
    out
}

/// `url` with the value of every secret query or fragment parameter
/// replaced by `***`.
fn redact_parameters(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut copied = 0;
    for range in parameter_ranges(url) {
        let mut at = range.start;
        for pair in url[range.clone()].split(['&', ';']) {
            if let Some((name, value)) = pair.split_once('=') {
                if is_secret_parameter(name) && !value.is_empty() {
                    let value_start = at + name.len() + 1;
                    out.push_str(&url[copied..value_start]);
                    out.push_str("***");
                    copied = value_start + value.len();
                }
            }
            at += pair.len() + 1;
        }
    }
    out.push_str(&url[copied..]);
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986), the way
/// a password is written into a URL.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_hidden() {
        assert_eq!(
            redact_url("https://user:s3cret@git.example/cfg.git"),
            "https://***@git.example/cfg.git"
        );
        assert_eq!(
            redact_url("https://ghp_token@git.example/cfg.git"),
            "https://***@git.example/cfg.git"
        );
        assert_eq!(
            redact_url("ssh://git:pw@host:22/cfg.git"),
            "ssh://git:***@host:22/cfg.git"
        );
        assert_eq!(redact_url("git@host:cfg.git"), "git@host:cfg.git");
        let url = RepoUrl::parse("https://u:p%40ss@h/x.git").unwrap();
        assert_eq!(
            url.scrub("failed for https://u:p%40ss@h/x.git with p@ss"),
            "failed for https://***@h/x.git with ***"
        );
    }

    #[test]
    fn secret_query_parameters_are_hidden_whatever_their_case() {
        assert_eq!(
            redact_url("https://git.example/cfg.git?private_token=glpat-abc&ref=main"),
            "https://git.example/cfg.git?private_token=***&ref=main"
        );
        assert_eq!(
            redact_url("http://u:p@h:9090/-/reload?Token=t1;ACCESS_TOKEN=t2&x=1#sig=s3"),
            "http://***@h:9090/-/reload?Token=***;ACCESS_TOKEN=***&x=1#sig=***"
        );
        assert_eq!(
            redact_url("https://s3.example/b/o?X-Amz-Signature=abc&X-Amz-Credential=AK%2F1&a=b"),
            "https://s3.example/b/o?X-Amz-Signature=***&X-Amz-Credential=***&a=b"
        );
        for name in [
            "token",
            "TOKEN",
            "private_token",
            "access_token",
            "password",
            "secret",
            "key",
            "api_key",
            "apiKey",
            "sig",
            "client_secret",
            "my_token",
            "p%61ssword",
        ] {
            assert!(is_secret_parameter(name), "{name}");
        }
        for name in ["ref", "branch", "service", "page", "monkey_business"] {
            assert!(!is_secret_parameter(name), "{name}");
        }
        // Nothing to hide: unchanged, even when odd.
        for url in [
            "https://h/x.git",
            "https://h/x.git?",
            "https://h/x.git?token",
            "https://h/x.git?token=",
            "https://h/x.git?=v&&a=b#",
        ] {
            assert_eq!(redact_url(url), url);
        }
        let url = RepoUrl::parse("https://h/x.git?private_token=glp%2Bat").unwrap();
        assert!(url.has_credentials());
        assert_eq!(url.secrets(), ["glp%2Bat", "glp+at"]);
        assert_eq!(
            url.scrub("fetch of https://h/x.git?private_token=glp%2Bat failed: glp+at"),
            "fetch of https://h/x.git?private_token=*** failed: ***"
        );
        assert_eq!(format!("{url}"), "https://h/x.git?private_token=***");
    }

    #[test]
    fn remembered_secrets_are_scrubbed_in_every_form() {
        remember("t0k\"en/with+odd");
        let text = r#"plain t0k"en/with+odd json t0k\"en/with+odd url t0k%22en%2Fwith%2Bodd"#;
        assert_eq!(scrub(text), "plain *** json *** url ***");
        assert_eq!(scrub("nothing secret here"), "nothing secret here");
    }

    #[test]
    fn host_and_port_come_from_every_url_form() {
        let hp = |u: &str| RepoUrl::parse(u).unwrap().host_port();
        assert_eq!(
            hp("ssh://git@127.0.0.1:2222/x.git"),
            Some(("127.0.0.1".into(), Some(2222)))
        );
        assert_eq!(
            hp("git@github.com:o/r.git"),
            Some(("github.com".into(), None))
        );
        assert_eq!(
            hp("https://u:p@git.example:8443/x.git"),
            Some(("git.example".into(), Some(8443)))
        );
        assert_eq!(hp("https://[::1]/x.git"), Some(("::1".into(), None)));
        assert_eq!(hp("/srv/x.git"), None);
        assert_eq!(hp("file:///srv/x.git"), None);
    }

    #[test]
    fn url_forms_are_recognised() {
        for ok in [
            "https://h/x.git",
            "ssh://git@h:2222/x.git",
            "git@h:x.git",
            "git://127.0.0.1:9418/x.git",
            "file:///srv/x.git",
            "/srv/x.git",
        ] {
            assert!(RepoUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["ftp://h/x", "relative/path", "https:///x"] {
            assert!(RepoUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
