//! Validate: `gitreload validate [DIR]`, the sidecar's gate run on a local
//! checkout before it is pushed (a pre-push hook, the config repository's
//! CI).
//!
//! Promises:
//! - The same rules as the sidecar: the working tree is staged by
//!   [`materialize::materialize_dir`] (path rules, limits, `.age`
//!   decryption, substitution) and checked by the same [`Checker`] in the
//!   staging directory. A checkout that passes here passes there, given the
//!   same secrets.
//! - A secret that is absent here (no identity for a `.age` file, a
//!   `${file:}` that does not exist, an unset `${env:}`) is replaced by
//!   [`crate::secrets::PLACEHOLDER`] and reported as a warning; a malformed
//!   reference or a ciphertext that does not decrypt is an error.
//! - Nothing is written but a private (0700) staging directory under the
//!   temp dir, removed before returning; the checkout is only read.

use std::path::{Path, PathBuf};

use crate::check::{CheckError, Checker};
use crate::materialize::{self, MaterializeError, Rules};
use crate::secrets::Mode;
use crate::settings::StagingSettings;

/// The result of validating a checkout.
#[derive(Debug)]
pub struct Report {
    /// Placeholders used, submodules skipped, patterns that matched nothing.
    pub warnings: Vec<String>,
    /// How many paths would be deployed.
    pub files: usize,
    /// What the checker runs, if one is configured.
    pub checker: Option<String>,
    /// `Ok` with the checker's output, or `Err` with why the checkout would
    /// be rejected. Substituted values are masked.
    pub verdict: Result<String, String>,
}

/// Stages `dir` (below `GITRELOAD_SUBDIR`) and runs the checker on it.
/// `Err` means it could not be validated at all (no such directory, I/O).
pub async fn validate(settings: &StagingSettings, dir: &Path) -> Result<Report, String> {
    let source = if settings.subdir.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(&settings.subdir)
    };
    if !source.is_dir() {
        let hint = if settings.subdir.is_empty() {
            String::new()
        } else {
            format!(" (GITRELOAD_SUBDIR={})", settings.subdir)
        };
        return Err(format!("{} is not a directory{hint}", source.display()));
    }
    // Nothing is kept: any key names the content for this run.
    let key = crate::state::ContentKey::random()
        .map_err(|e| format!("reading the kernel's random source: {e}"))?;
    let rules = Rules::from_settings(settings, Mode::Validate, key);
    let checker = Checker::from_settings(settings);
    let staging = staging_dir();
    let staged = {
        let (source, staging) = (source.clone(), staging.clone());
        tokio::task::spawn_blocking(move || materialize::materialize_dir(&source, &staging, &rules))
            .await
            .map_err(|e| format!("staging failed: {e}"))?
    };
    let checkout = match staged {
        Ok(c) => c,
        Err(
            MaterializeError::Rejected { path, reason }
            | MaterializeError::Unresolved { path, reason },
        ) => {
            return Ok(Report {
                warnings: Vec::new(),
                files: 0,
                checker: checker.map(|c| c.describe()),
                verdict: Err(format!("{path}: {reason}")),
            });
        }
        Err(e) => return Err(e.to_string()),
    };
    let verdict = match &checker {
        None => Ok(String::new()),
        Some(checker) => match checker.run(&checkout.dir).await {
            Ok(output) => Ok(checkout.redactions.apply(&output)),
            Err(CheckError::Rejected {
                checker,
                status,
                output,
            }) => Err(format!(
                "{checker} rejected the config ({status}):\n{}",
                checkout.redactions.apply(&output)
            )),
            Err(other) => Err(other.to_string()),
        },
    };
    let _ = std::fs::remove_dir_all(&checkout.dir);
    Ok(Report {
        warnings: checkout.warnings,
        files: checkout.files.len(),
        checker: checker.map(|c| c.describe()),
        verdict,
    })
}

/// A fresh path under the temp dir; `materialize_dir` creates it 0700 and
/// fails if it exists.
fn staging_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "gitreload-validate-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ))
}
