//! Check: the gate between a staged commit and the destination.
//!
//! Promises:
//! - The checker runs with the staging directory as working directory and
//!   `GITRELOAD_STAGING_DIR` in its environment, never against the live
//!   destination.
//! - It runs in its own process group under a timeout; on timeout the whole
//!   group is killed, so a checker's children cannot outlive it.
//! - A non-zero exit, a signal, a timeout or a checker that cannot be started
//!   all reject; only exit status 0 lets the commit through. The combined
//!   output is kept (trimmed) for the log.
//! - Output is trimmed at a line boundary, so that what is kept holds whole
//!   lines only: the caller masks secret values and plaintext lines in it
//!   ([`crate::secrets::Redactions`]), and half a value would escape the
//!   mask.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::settings::CheckerKind;

/// Most bytes of checker output kept for the log event.
pub const OUTPUT_LIMIT: usize = 4096;

/// Why the checker refused a commit (or could not run).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{checker} rejected the config ({status}): {output}")]
    Rejected {
        checker: String,
        status: String,
        output: String,
    },
    #[error("{checker} did not finish within {timeout}; killed")]
    Timeout { checker: String, timeout: String },
    #[error("cannot start {checker}: {source}")]
    Spawn {
        checker: String,
        source: std::io::Error,
    },
}

impl CheckError {
    /// The checker's output, when it produced any.
    pub fn output(&self) -> &str {
        match self {
            CheckError::Rejected { output, .. } => output,
            _ => "",
        }
    }
}

/// A configured checker.
#[derive(Debug, Clone)]
pub struct Checker {
    kind: CheckerKind,
    timeout: Duration,
}

impl Checker {
    pub fn new(kind: CheckerKind, timeout: Duration) -> Checker {
        Checker { kind, timeout }
    }

    /// The checker the settings ask for, if any.
    pub fn from_settings(settings: &crate::settings::StagingSettings) -> Option<Checker> {
        settings
            .check
            .clone()
            .map(|kind| Checker::new(kind, settings.check_timeout))
    }

    /// What the checker runs, as shown in logs.
    pub fn describe(&self) -> String {
        match &self.kind {
            CheckerKind::Prometheus => "promtool check config prometheus.yml".into(),
            CheckerKind::Alertmanager => "amtool check-config alertmanager.yml".into(),
            CheckerKind::Command(c) => c.clone(),
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = match &self.kind {
            CheckerKind::Prometheus => {
                let mut c = tokio::process::Command::new("promtool");
                c.args(["check", "config", "prometheus.yml"]);
                c
            }
            CheckerKind::Alertmanager => {
                let mut c = tokio::process::Command::new("amtool");
                c.args(["check-config", "alertmanager.yml"]);
                c
            }
            CheckerKind::Command(line) => {
                let mut c = tokio::process::Command::new("/bin/sh");
                c.args(["-c", line]);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Runs the checker on `staging`. `Ok` returns the (trimmed) output.
    pub async fn run(&self, staging: &Path) -> Result<String, CheckError> {
        let checker = self.describe();
        let mut child = self
            .command()
            .current_dir(staging)
            .env("GITRELOAD_STAGING_DIR", staging)
            .spawn()
            .map_err(|source| CheckError::Spawn {
                checker: checker.clone(),
                source,
            })?;
        let pid = child.id();
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (_, _, status) = tokio::join!(
                stdout.read_to_end(&mut out),
                stderr.read_to_end(&mut err),
                child.wait()
            );
            out.extend_from_slice(&err);
            (status, out)
        };
        let (status, output) = match tokio::time::timeout(self.timeout, collect).await {
            Ok(result) => result,
            Err(_) => {
                kill_group(pid);
                return Err(CheckError::Timeout {
                    checker,
                    timeout: humantime::format_duration(self.timeout).to_string(),
                });
            }
        };
        let output = trim_output(&output);
        match status {
            Ok(s) if s.success() => Ok(output),
            Ok(s) => Err(CheckError::Rejected {
                checker,
                status: s.to_string(),
                output,
            }),
            Err(source) => Err(CheckError::Spawn { checker, source }),
        }
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child's process group; no memory involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// The output as one string, at most [`OUTPUT_LIMIT`] bytes (the end is
/// kept: checkers print the verdict last), starting at the beginning of a
/// line (when the kept part has a line break): a cut through a line could
/// leave the tail of a secret that masking no longer recognises.
pub fn trim_output(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= OUTPUT_LIMIT {
        return text.to_string();
    }
    let mut start = text.len() - OUTPUT_LIMIT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if let Some(newline) = text[start..].find('\n') {
        start += newline + 1;
    }
    format!("...\n{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_keeps_whole_lines_from_the_end() {
        let secret_line = format!("password: {}", "s".repeat(200));
        let mut output = String::new();
        while output.len() < OUTPUT_LIMIT - 100 {
            output.push_str("line of checker output\n");
        }
        let output = format!("{secret_line}\n{output}FAILED: verdict\n");
        let kept = trim_output(output.as_bytes());
        assert!(kept.len() <= OUTPUT_LIMIT + 4, "{}", kept.len());
        assert!(kept.starts_with("...\nline of checker output\n"), "{kept}");
        assert!(kept.ends_with("FAILED: verdict"), "{kept}");
        assert!(!kept.contains("sss"), "half a line was kept: {kept}");
        assert_eq!(trim_output(b"  short\n"), "short");
    }
}
