//! Redaction: the one place that knows which parts of a URL or a message are
//! secret, so that logs, errors and metric labels never carry them.
//!
//! Promise: [`RepoUrl::redacted`] and [`redact_url`] never return a password
//! or an HTTP user-info (a token is often passed as the user name), and
//! [`RepoUrl::scrub`] removes every secret part of the URL from free text,
//! such as an error message from the git transport.

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
/// user-info goes, since tokens are often passed as the user name.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, info)) = userinfo(url) else {
        return url.to_string();
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
