//! Secrets in a config repository: files encrypted with age, and
//! `${file:...}` / `${env:...}` references substituted while staging.
//!
//! A file whose name ends in `.age` is decrypted with the identities of
//! `GITRELOAD_AGE_IDENTITY_FILE` and deployed without the suffix. In a file
//! whose deployed path matches `GITRELOAD_EXPAND`, `${file:/ABS/PATH}` becomes
//! that file's content (trailing newlines trimmed) and `${env:NAME}` the
//! variable's value; `$${file:` and `$${env:` stand for a literal `${file:`
//! and `${env:`. Any other `$` or `${...}` (Prometheus' `${1}` in relabel
//! replacements, for one) is left exactly as written. Values are inserted
//! once, never expanded again.
//!
//! A reference reads only what the operator allowed: `${file:}` a file whose
//! path, as written and once every link in it is resolved, matches
//! `GITRELOAD_EXPAND_FILES`; `${env:}` a variable whose name matches
//! `GITRELOAD_EXPAND_ENV`. Unset lists allow nothing.
//!
//! Promises:
//! - A plaintext or a substituted value never appears in an error, a log
//!   line or a metric: errors name the file, the line and the reference as
//!   written, never what it resolved to. Values are kept as [`Redactions`] so
//!   the checker's output can be masked before it is logged.
//! - Decryption either yields the whole plaintext (bounded by
//!   `GITRELOAD_MAX_FILE_SIZE`) or fails; a partial plaintext is never used.
//! - `${env:GITRELOAD_...}` is refused, and so is `${file:}` of gitreload's
//!   own credentials (the file of every `*_FILE` setting, by path and by
//!   inode, so a link or a hard link to one is caught), of its state
//!   directory, and of anything under `/proc`, `/sys` or `/dev`, whatever
//!   the allow lists say. The file is opened without following a link
//!   (`O_NOFOLLOW`, after resolving the path) and must be a regular file.
//! - Decrypted plaintext is registered line by line and value by value in
//!   the [`Redactions`] (see [`Redactions::add_plaintext`]).
//! - Substitution stops as soon as its output passes
//!   `GITRELOAD_MAX_FILE_SIZE`; the whole output is never built first.
//! - In [`Mode::Validate`] (`gitreload validate`), a secret that is absent
//!   (no identity for a `.age` file, an unreadable file, an unset variable)
//!   is replaced by [`PLACEHOLDER`] and reported, so a checkout can be
//!   checked without the production secrets. Malformed references, and
//!   references the allow lists refuse, still fail.
//! - Nothing here writes a file; the materialize stage decides where the
//!   result goes.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::settings::Secret;

/// Suffix of an encrypted file; the deployed name is the name without it.
pub const AGE_SUFFIX: &str = ".age";

/// The stand-in `gitreload validate` uses for a secret it does not have.
/// URL-shaped, so fields that want a URL (Slack, webhooks) accept it, and
/// obviously fake (`.invalid` is a reserved top-level domain).
pub const PLACEHOLDER: &str = "https://gitreload-validate-placeholder.invalid/";

/// Largest identity file read (age's own limit is 16 MiB; a real one is a
/// few hundred bytes).
const IDENTITY_FILE_LIMIT: u64 = 1 << 20;

/// The age identities that decrypt `.age` files. `Debug` shows only how
/// many there are.
#[derive(Clone)]
pub struct Identities {
    keys: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    /// The file they were read from (never substituted into a config).
    path: PathBuf,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identities({} from {})",
            self.keys.len(),
            self.path.display()
        )
    }
}

impl Identities {
    /// Reads an identity file as `age-keygen` writes it: one
    /// `AGE-SECRET-KEY-1...` per line, `#` comments and blank lines allowed,
    /// several identities allowed. The error never quotes the file.
    pub fn from_file(path: &Path) -> Result<Identities, String> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(IDENTITY_FILE_LIMIT + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read the file: {e}"))?;
        if bytes.len() as u64 > IDENTITY_FILE_LIMIT {
            return Err("the file is larger than 1 MiB; expected age identities".into());
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            "the file is not UTF-8 text; expected age identities (AGE-SECRET-KEY-1...)".to_string()
        })?;
        // Tolerate CRLF and indentation; keep the line count for messages.
        let cleaned: String = text
            .lines()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join("\n");
        let file = age::IdentityFile::from_buffer(cleaned.as_bytes()).map_err(|e| {
            format!(
                "{e}; expected age X25519 identities (AGE-SECRET-KEY-1..., as written by \
                 age-keygen or rage-keygen; SSH keys and plugins are not supported)"
            )
        })?;
        let keys = file
            .into_identities()
            .map_err(|e| format!("cannot use the identities: {e}"))?;
        if keys.is_empty() {
            return Err(
                "the file holds no age identity; expected a line AGE-SECRET-KEY-1... (from age-keygen)"
                    .into(),
            );
        }
        Ok(Identities {
            keys: Arc::new(keys),
            path: path.to_path_buf(),
        })
    }

    /// How many identities were read.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The identity file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decrypts an age file (binary or ASCII-armored). The plaintext is
    /// returned whole or not at all; more than `limit` bytes is an error.
    pub fn decrypt(&self, ciphertext: &[u8], limit: u64) -> Result<Vec<u8>, String> {
        let decryptor = age::Decryptor::new(age::armor::ArmoredReader::new(ciphertext))
            .map_err(|e| format!("not a valid age file: {}", one_line(&e.to_string())))?;
        let mut stream = decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| {
                format!(
                    "cannot decrypt with the identities in GITRELOAD_AGE_IDENTITY_FILE: {}",
                    one_line(&e.to_string())
                )
            })?;
        let mut plaintext = Vec::new();
        let read = (&mut stream).take(limit + 1).read_to_end(&mut plaintext);
        if let Err(e) = read {
            wipe(&mut plaintext);
            return Err(format!(
                "the ciphertext is damaged: {}",
                one_line(&e.to_string())
            ));
        }
        if plaintext.len() as u64 > limit {
            wipe(&mut plaintext);
            return Err(format!(
                "decrypts to more than {limit} bytes (GITRELOAD_MAX_FILE_SIZE)"
            ));
        }
        Ok(plaintext)
    }
}

/// Only checks that `data` is a well-formed age file (its header); used
/// when there is no identity to decrypt with.
pub fn check_age_format(data: &[u8]) -> Result<(), String> {
    age::Decryptor::new(age::armor::ArmoredReader::new(data))
        .map(|_| ())
        .map_err(|e| format!("not a valid age file: {}", one_line(&e.to_string())))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn wipe(buffer: &mut [u8]) {
    buffer.iter_mut().for_each(|b| *b = 0);
}

/// Whether absent secrets fail the tree or are replaced by [`PLACEHOLDER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The sidecar: every secret must resolve, or the commit is rejected.
    Deploy,
    /// `gitreload validate`: absent secrets become placeholders.
    Validate,
}

/// How secrets are treated while a tree is staged.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Decrypts `.age` files; `None` rejects them (or, validating, stands
    /// a placeholder in).
    pub identities: Option<Identities>,
    /// Deployed paths whose `${file:}`/`${env:}` references are substituted.
    pub expand: Vec<glob::Pattern>,
    pub mode: Mode,
    /// Largest file a `${file:}` reference may read, and largest result of
    /// a substitution.
    pub max_file_size: u64,
    /// What references may read.
    pub sources: Sources,
}

/// Directories `${file:}` never reads, whatever `GITRELOAD_EXPAND_FILES`
/// says: process memory and environments (`/proc/self/environ` holds
/// gitreload's own settings), kernel state, devices (`/dev/zero` never
/// ends, `/dev/fd/N` are gitreload's open files). None is config material.
pub const NEVER_READ: [&str; 3] = ["/proc", "/sys", "/dev"];

/// What `${file:}` and `${env:}` references may read.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `GITRELOAD_EXPAND_FILES`: absolute globs; empty allows no file.
    pub files: Vec<glob::Pattern>,
    /// `GITRELOAD_EXPAND_ENV`: globs of variable names; empty allows none.
    pub env: Vec<glob::Pattern>,
    /// gitreload's own files, never read: each `*_FILE` setting's file
    /// (with the variable's name, for the error) and the state directory
    /// (everything below it).
    pub own: Vec<(String, PathBuf)>,
}

/// Case-sensitive glob matching where `*` stays within one path component;
/// `**` crosses components, including Kubernetes' `..data` links.
const PATH_MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Sources {
    /// Why `${env:name}` may not be read, if it may not.
    fn refuse_env(&self, name: &str) -> Result<(), String> {
        if name.starts_with("GITRELOAD_") {
            return Err("gitreload's own variables are never substituted".into());
        }
        if self.env.is_empty() {
            return Err(format!(
                "is not allowed: GITRELOAD_EXPAND_ENV is not set; set it to the variables \
                 substitution may read, such as GITRELOAD_EXPAND_ENV={name}"
            ));
        }
        if !self.env.iter().any(|p| p.matches_with(name, PATH_MATCH)) {
            return Err(format!(
                "is not allowed by GITRELOAD_EXPAND_ENV={}",
                patterns(&self.env)
            ));
        }
        Ok(())
    }

    /// Why the file `${file:path}` names may not be read, judged on the
    /// path as written, before anything on the filesystem is looked at.
    fn refuse_written(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = NEVER_READ.iter().find(|d| path.starts_with(d)) {
            return Err(format!(
                "is under {dir}; /proc, /sys and /dev are never substituted"
            ));
        }
        self.refuse_own(path)?;
        if self.files.is_empty() {
            return Err(
                "is not allowed: GITRELOAD_EXPAND_FILES is not set; set it to the secret files \
                 substitution may read, such as GITRELOAD_EXPAND_FILES=/run/secrets/alertmanager_*"
                    .into(),
            );
        }
        if !self.allows(path) {
            return Err(format!(
                "is not allowed by GITRELOAD_EXPAND_FILES={}",
                patterns(&self.files)
            ));
        }
        Ok(())
    }

    /// Why the file a reference resolves to (every link followed) may not
    /// be read.
    fn refuse_resolved(&self, written: &Path, resolved: &Path) -> Result<(), String> {
        let shown = |why: String| {
            if resolved == written {
                why
            } else {
                format!("resolves to {}, which {why}", resolved.display())
            }
        };
        if let Some(dir) = NEVER_READ.iter().find(|d| resolved.starts_with(d)) {
            return Err(shown(format!(
                "is under {dir}; /proc, /sys and /dev are never substituted"
            )));
        }
        self.refuse_own(resolved).map_err(shown)?;
        if !self.allows(resolved) {
            return Err(shown(format!(
                "is not allowed by GITRELOAD_EXPAND_FILES={}",
                patterns(&self.files)
            )));
        }
        Ok(())
    }

    fn allows(&self, path: &Path) -> bool {
        path.to_str()
            .is_some_and(|p| self.files.iter().any(|g| g.matches_with(p, PATH_MATCH)))
    }

    /// Refuses `path` when it is one of gitreload's own files or below its
    /// state directory, by path (as given and resolved) and by inode.
    fn refuse_own(&self, path: &Path) -> Result<(), String> {
        for (var, own) in &self.own {
            let resolved = own.canonicalize().ok();
            let hit = |p: &Path| {
                p.starts_with(own) || resolved.as_ref().is_some_and(|r| p.starts_with(r))
            };
            if hit(path) {
                return Err(format!(
                    "is gitreload's own {} ({var}); it is never substituted",
                    if var == "GITRELOAD_STATE_DIR" {
                        "state"
                    } else {
                        "credential"
                    }
                ));
            }
        }
        Ok(())
    }

    /// Refuses an opened file that is one of gitreload's own files under
    /// another name (a hard link, a bind mount).
    fn refuse_own_inode(&self, meta: &std::fs::Metadata) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        for (var, own) in &self.own {
            if let Ok(m) = std::fs::metadata(own) {
                if m.is_file() && m.dev() == meta.dev() && m.ino() == meta.ino() {
                    return Err(format!(
                        "is gitreload's own credential ({var}) under another name; it is never substituted"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn patterns(list: &[glob::Pattern]) -> String {
    list.iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// What staging learned about secrets, beyond the files themselves.
#[derive(Debug, Default)]
pub struct Findings {
    /// Values to mask in the checker's output.
    pub redactions: Redactions,
    /// One line per placeholder used (validate mode only).
    pub placeholders: Vec<String>,
    /// Which `expand` patterns matched at least one file.
    pub patterns_used: Vec<bool>,
}

/// A file's final content and whether it holds secrets.
pub struct Resolved<'a> {
    pub data: std::borrow::Cow<'a, [u8]>,
    /// Decrypted, or at least one reference substituted.
    pub secret: bool,
}

/// The deployed name of a tree path: without [`AGE_SUFFIX`] when it has one.
/// Returns the name and whether the file is encrypted.
pub fn deployed_name(path: &str) -> (&str, bool) {
    match path.strip_suffix(AGE_SUFFIX) {
        Some(name) if !name.is_empty() && !name.ends_with('/') => (name, true),
        _ => (path, false),
    }
}

impl Secrets {
    /// No identities, no expansion.
    pub fn none(mode: Mode, max_file_size: u64) -> Secrets {
        Secrets {
            identities: None,
            expand: Vec::new(),
            mode,
            max_file_size,
            sources: Sources::default(),
        }
    }

    /// True when the file deployed at `deployed` has its references
    /// substituted: its content depends on more than its blob.
    pub fn expands(&self, deployed: &str) -> bool {
        self.expand_pattern(deployed).is_some()
    }

    /// Index of the first `expand` pattern that matches the deployed path.
    fn expand_pattern(&self, deployed: &str) -> Option<usize> {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.expand
            .iter()
            .position(|p| p.matches_with(deployed, options))
    }

    /// Decrypts (for `.age` paths) and substitutes (for paths matching
    /// `expand`) the content of the tree file `path`. `Err` is the reason
    /// the tree is rejected; it never contains a secret value.
    pub fn resolve<'a>(
        &self,
        path: &str,
        data: &'a [u8],
        findings: &mut Findings,
    ) -> Result<Resolved<'a>, String> {
        let (deployed, encrypted) = deployed_name(path);
        let mut content = std::borrow::Cow::Borrowed(data);
        if encrypted {
            content = std::borrow::Cow::Owned(self.decrypt(path, data, findings)?);
        }
        let mut secret = encrypted;
        if findings.patterns_used.len() < self.expand.len() {
            findings.patterns_used.resize(self.expand.len(), false);
        }
        if let Some(index) = self.expand_pattern(deployed) {
            findings.patterns_used[index] = true;
            let expanded = substitute(&content, self.max_file_size, |reference| {
                self.lookup(path, reference, findings)
            })
            .map_err(|e| e.to_string())?;
            if expanded.substituted > 0 {
                secret = true;
                content = std::borrow::Cow::Owned(expanded.content);
            }
        }
        Ok(Resolved {
            data: content,
            secret,
        })
    }

    fn decrypt(&self, path: &str, data: &[u8], findings: &mut Findings) -> Result<Vec<u8>, String> {
        match (&self.identities, self.mode) {
            (Some(ids), _) => {
                let plaintext = ids.decrypt(data, self.max_file_size)?;
                findings.redactions.add_plaintext(&plaintext);
                Ok(plaintext)
            }
            (None, Mode::Deploy) => Err(
                "is encrypted with age, but GITRELOAD_AGE_IDENTITY_FILE is not set; \
                 give gitreload the identity (e.g. a Docker secret) to decrypt it"
                    .into(),
            ),
            (None, Mode::Validate) => {
                check_age_format(data)?;
                let (deployed, _) = deployed_name(path);
                findings.placeholders.push(format!(
                    "{path}: not decrypted (GITRELOAD_AGE_IDENTITY_FILE is not set); \
                     {deployed} holds the placeholder {PLACEHOLDER}"
                ));
                Ok(format!("{PLACEHOLDER}\n").into_bytes())
            }
        }
    }

    /// The value of one reference, or the placeholder when validating. A
    /// reference the allow lists refuse fails in both modes; one that is
    /// allowed but absent becomes the placeholder when validating.
    fn lookup(
        &self,
        path: &str,
        reference: Reference<'_>,
        findings: &mut Findings,
    ) -> Result<Vec<u8>, String> {
        let value = match reference {
            Reference::File(file) => {
                let file = Path::new(file);
                self.sources.refuse_written(file)?;
                if let Some(ids) = &self.identities {
                    if same_file(ids.path(), file) {
                        return Err(
                            "is gitreload's own credential (GITRELOAD_AGE_IDENTITY_FILE); \
                                    it is never substituted"
                                .into(),
                        );
                    }
                }
                match file.canonicalize() {
                    Err(e) => Err(format!("cannot read {}: {e}", file.display())),
                    Ok(resolved) => {
                        self.sources.refuse_resolved(file, &resolved)?;
                        read_secret_file(&resolved, self.max_file_size, &self.sources)?
                    }
                }
            }
            Reference::Env(name) => {
                self.sources.refuse_env(name)?;
                match std::env::var_os(name) {
                    Some(v) => Ok(std::os::unix::ffi::OsStringExt::into_vec(v)),
                    None => Err(format!("environment variable {name} is not set")),
                }
            }
        };
        let value = value.and_then(|v| {
            if v.is_empty() {
                Err("the value is empty".to_string())
            } else {
                Ok(v)
            }
        });
        match (value, self.mode) {
            (Ok(v), _) => {
                findings
                    .redactions
                    .add(String::from_utf8_lossy(&v).into_owned());
                Ok(v)
            }
            (Err(why), Mode::Deploy) => Err(why),
            (Err(why), Mode::Validate) => {
                findings
                    .placeholders
                    .push(format!("{path}: {reference}: {why}; using {PLACEHOLDER}"));
                Ok(PLACEHOLDER.as_bytes().to_vec())
            }
        }
    }
}

/// Content of a `${file:}` reference whose path is already resolved,
/// trailing newlines trimmed. The outer `Err` is a refusal (fails in every
/// mode), the inner one an absence (a placeholder when validating).
///
/// The last component is opened with `O_NOFOLLOW`: a link swapped in after
/// the path was resolved and judged is not followed. `O_NONBLOCK` keeps a
/// FIFO from hanging the open; only a regular file is read.
#[allow(clippy::type_complexity)]
fn read_secret_file(
    path: &Path,
    limit: u64,
    sources: &Sources,
) -> Result<Result<Vec<u8>, String>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!(
                "{} became a symbolic link while it was read; refused",
                path.display()
            ))
        }
        Err(e) => return Ok(Err(format!("cannot read {}: {e}", path.display()))),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Ok(Err(format!("cannot read {}: {e}", path.display()))),
    };
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    sources.refuse_own_inode(&meta)?;
    let mut value = Vec::new();
    if let Err(e) = file.take(limit + 1).read_to_end(&mut value) {
        wipe(&mut value);
        return Ok(Err(format!("cannot read {}: {e}", path.display())));
    }
    if value.len() as u64 > limit {
        wipe(&mut value);
        return Ok(Err(format!(
            "{} is larger than {limit} bytes (GITRELOAD_MAX_FILE_SIZE)",
            path.display()
        )));
    }
    while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        value.pop();
    }
    Ok(Ok(value))
}

fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Secret values to mask in text that leaves gitreload (the checker's
/// output). `Debug` shows none of them.
#[derive(Default, Clone)]
pub struct Redactions(std::collections::BTreeSet<String>);

impl std::fmt::Debug for Redactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Each value shows as `***` (the Debug of [`Secret`]).
        let hidden: Vec<Secret> = self.0.iter().map(|_| Secret::new(String::new())).collect();
        f.debug_tuple("Redactions").field(&hidden).finish()
    }
}

/// Shorter parts of a decrypted plaintext are not masked on their own:
/// they are the words and numbers checker output is made of (`true`, `5m`,
/// `default`), and a credential that short is no credential.
pub const MIN_MASKED_LEN: usize = 6;

impl Redactions {
    pub fn add(&mut self, value: String) {
        let value = value.trim();
        if !value.is_empty() {
            self.0.insert(value.to_string());
        }
    }

    /// Registers what a checker may quote from a decrypted file. Masking the
    /// plaintext whole would catch nothing (a checker prints lines and
    /// values, never the whole file), and the file's secret parts cannot be
    /// told from the rest (a Slack URL is a secret, its key `api_url` says
    /// nothing), so every part a checker may quote is masked:
    /// - every line, trimmed (a checker that echoes the offending line);
    /// - every value: what follows the first `:` or `=` of a line, or a
    ///   `- ` list item, unquoted (YAML errors quote the value alone);
    /// - for a value longer than 10 bytes, its first 7 bytes followed by
    ///   `...`: the YAML library of promtool and amtool quotes a value it
    ///   cannot convert that way (`` cannot unmarshal !!str `hunter2...` ``).
    ///
    /// Parts shorter than [`MIN_MASKED_LEN`] are left (see there).
    pub fn add_plaintext(&mut self, plaintext: &[u8]) {
        let text = String::from_utf8_lossy(plaintext);
        for line in text.lines() {
            let line = line.trim();
            self.add_part(line);
            let item = line.strip_prefix("- ").unwrap_or(line);
            let value = match item.find([':', '=']) {
                Some(at) => &item[at + 1..],
                None if item.len() < line.len() => item,
                None => continue,
            };
            let value = value.trim().trim_end_matches(',').trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(value);
            self.add_part(value);
            if value.len() > 10 && value.is_char_boundary(7) {
                self.add_part(&format!("{}...", &value[..7]));
            }
        }
    }

    fn add_part(&mut self, part: &str) {
        if part.len() >= MIN_MASKED_LEN {
            self.add(part.to_string());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every known value replaced by `***` (longest first, so a
    /// value containing another is masked whole).
    pub fn apply(&self, text: &str) -> String {
        let mut values: Vec<&str> = self.0.iter().map(String::as_str).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for v in values {
            if out.contains(v) {
                out = out.replace(v, "***");
            }
        }
        out
    }
}

/// A reference found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference<'a> {
    /// `${file:/abs/path}`
    File(&'a str),
    /// `${env:NAME}`
    Env(&'a str),
}

impl std::fmt::Display for Reference<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::File(p) => write!(f, "${{file:{p}}}"),
            Reference::Env(n) => write!(f, "${{env:{n}}}"),
        }
    }
}

/// Why a file's references could not all be substituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reference}: {reason}")]
pub struct SubstituteError {
    /// 1-based line of the reference.
    pub line: usize,
    /// The reference as written (never its value).
    pub reference: String,
    pub reason: String,
}

/// A file after substitution.
#[derive(Debug)]
pub struct Substituted {
    pub content: Vec<u8>,
    /// How many references were replaced.
    pub substituted: usize,
}

const OPENERS: [&[u8]; 2] = [b"${file:", b"${env:"];

/// Replaces every `${file:PATH}` and `${env:NAME}` in `text` by what
/// `resolve` returns; `$${file:`/`$${env:` become a literal `${file:`/`${env:`.
/// A reference must close on its own line; PATH must be absolute and
/// without `.`/`..` components; NAME is `[A-Za-z_][A-Za-z0-9_]*`.
///
/// The output never grows past `limit` bytes: the first value that would
/// take it there stops the substitution (a few references to a large
/// value must not build gigabytes before the size is checked).
pub fn substitute(
    text: &[u8],
    limit: u64,
    mut resolve: impl FnMut(Reference<'_>) -> Result<Vec<u8>, String>,
) -> Result<Substituted, SubstituteError> {
    let mut out = Vec::with_capacity(text.len());
    let mut line = 1;
    let mut substituted = 0;
    let mut i = 0;
    let opens_at = |at: usize| OPENERS.iter().any(|o| text[at..].starts_with(o));
    while i < text.len() {
        let byte = text[i];
        if byte == b'$' && text.get(i + 1) == Some(&b'$') && opens_at(i + 1) {
            // `$${` -> literal `${`; the rest is copied as plain text.
            out.extend_from_slice(b"${");
            i += 3;
            continue;
        }
        if byte == b'$' && opens_at(i) {
            let end = text[i..]
                .iter()
                .position(|b| *b == b'}' || *b == b'\n')
                .map(|p| i + p);
            let fail = |reference: String, reason: String| SubstituteError {
                line,
                reference,
                reason,
            };
            let Some(end) = end.filter(|e| text[*e] == b'}') else {
                let stop = text[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(text.len(), |p| i + p);
                return Err(fail(
                    String::from_utf8_lossy(&text[i..stop.min(i + 80)]).into_owned(),
                    "is not closed by } on the same line".into(),
                ));
            };
            let whole = &text[i..=end];
            let shown = String::from_utf8_lossy(whole).into_owned();
            let body = std::str::from_utf8(&whole[2..whole.len() - 1])
                .map_err(|_| fail(shown.clone(), "is not valid UTF-8".into()))?;
            let reference = parse_reference(body).map_err(|why| fail(shown.clone(), why))?;
            let mut value = resolve(reference).map_err(|why| fail(shown.clone(), why))?;
            if (out.len() + value.len()) as u64 > limit {
                wipe(&mut value);
                wipe(&mut out);
                return Err(fail(
                    shown,
                    format!(
                        "makes the file larger than {limit} bytes (GITRELOAD_MAX_FILE_SIZE); \
                         substitution stopped here"
                    ),
                ));
            }
            out.extend_from_slice(&value);
            wipe(&mut value);
            substituted += 1;
            i = end + 1;
            continue;
        }
        if byte == b'\n' {
            line += 1;
        }
        out.push(byte);
        i += 1;
    }
    if out.len() as u64 > limit {
        wipe(&mut out);
        return Err(SubstituteError {
            line,
            reference: String::new(),
            reason: format!("is larger than {limit} bytes (GITRELOAD_MAX_FILE_SIZE)"),
        });
    }
    Ok(Substituted {
        content: out,
        substituted,
    })
}

fn parse_reference(body: &str) -> Result<Reference<'_>, String> {
    if let Some(path) = body.strip_prefix("file:") {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err("expected an absolute path, such as ${file:/run/secrets/NAME}".into());
        }
        if p.components()
            .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
            || path.contains("/./")
            || path.ends_with("/.")
        {
            return Err("expected a path without . or .. components".into());
        }
        return Ok(Reference::File(path));
    }
    let name = body.strip_prefix("env:").unwrap_or(body);
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err("expected a variable name such as ${env:SLACK_API_URL}".into());
    }
    Ok(Reference::Env(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<String, SubstituteError> {
        substitute(text.as_bytes(), 1 << 20, |r| match r {
            Reference::Env("TOKEN") => Ok(b"t0k3n".to_vec()),
            Reference::File("/run/secrets/slack") => Ok(b"https://hooks.example/x".to_vec()),
            other => Err(format!("{other} is unknown")),
        })
        .map(|s| String::from_utf8(s.content).unwrap())
    }

    #[test]
    fn references_are_replaced_and_other_dollars_kept() {
        assert_eq!(
            run("a: ${env:TOKEN}\nb: ${file:/run/secrets/slack}\nc: ${1}:9100 $2 $$x ${other}\n")
                .unwrap(),
            "a: t0k3n\nb: https://hooks.example/x\nc: ${1}:9100 $2 $$x ${other}\n"
        );
    }

    #[test]
    fn doubled_dollar_escapes_a_reference() {
        assert_eq!(
            run("x: $${env:TOKEN} $${file:/a} $$${env:TOKEN}\n").unwrap(),
            "x: ${env:TOKEN} ${file:/a} $${env:TOKEN}\n"
        );
    }

    #[test]
    fn errors_name_line_and_reference_but_no_value() {
        let e = run("a: ${env:TOKEN}\n\nb: ${env:MISSING}\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.reference, "${env:MISSING}");
        assert!(!e.to_string().contains("t0k3n"), "{e}");
        assert_eq!(run("a: ${env:TOKEN\n").unwrap_err().line, 1);
        assert!(run("a: ${file:relative}\n").is_err());
        assert!(run("a: ${file:/run/../etc/shadow}\n").is_err());
        assert!(run("a: ${env:9x}\n").is_err());
    }

    #[test]
    fn redactions_mask_longest_first() {
        let mut r = Redactions::default();
        r.add("abc".into());
        r.add("abcdef".into());
        assert_eq!(r.apply("x abcdef y abc"), "x *** y ***");
        assert_eq!(format!("{r:?}"), "Redactions([***, ***])");
    }

    #[test]
    fn deployed_name_drops_the_suffix() {
        assert_eq!(
            deployed_name("a/alertmanager.yml.age"),
            ("a/alertmanager.yml", true)
        );
        assert_eq!(deployed_name("plain.yml"), ("plain.yml", false));
    }

    #[test]
    fn expand_globs_match_deployed_paths() {
        let s = Secrets {
            expand: ["alertmanager.yml", "secrets/*.yml", "**/x.yml"]
                .iter()
                .map(|p| glob::Pattern::new(p).unwrap())
                .collect(),
            ..Secrets::none(Mode::Deploy, 1 << 20)
        };
        assert_eq!(s.expand_pattern("alertmanager.yml"), Some(0));
        assert_eq!(s.expand_pattern("secrets/a.yml"), Some(1));
        assert_eq!(s.expand_pattern("secrets/deep/a.yml"), None);
        assert_eq!(s.expand_pattern("x.yml"), Some(2));
        assert_eq!(s.expand_pattern("a/b/x.yml"), Some(2));
        assert_eq!(s.expand_pattern("prometheus.yml"), None);
    }

    #[test]
    fn age_round_trip_with_several_identities_and_comments() {
        let dir = tempfile::TempDir::new().unwrap();
        let other = age::x25519::Identity::generate();
        let mine = age::x25519::Identity::generate();
        let file = dir.path().join("identity.txt");
        std::fs::write(
            &file,
            format!(
                "# created: now\r\n# public key: {}\r\n{}\r\n\n  {}\n",
                mine.to_public(),
                other.to_string().expose_secret(),
                mine.to_string().expose_secret()
            ),
        )
        .unwrap();
        let ids = Identities::from_file(&file).unwrap();
        assert_eq!(ids.len(), 2);
        let ciphertext = age::encrypt(&mine.to_public(), b"secret: yes\n").unwrap();
        assert_eq!(ids.decrypt(&ciphertext, 1024).unwrap(), b"secret: yes\n");
        assert!(ids.decrypt(&ciphertext, 4).is_err());
        let mut corrupt = ciphertext.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let err = ids.decrypt(&corrupt, 1024).unwrap_err();
        assert!(!err.contains("secret: yes"), "{err}");

        std::fs::write(&file, "# only a comment\nnot a key\n").unwrap();
        let err = Identities::from_file(&file).unwrap_err();
        assert!(
            err.contains("line 2") && !err.contains("not a key"),
            "{err}"
        );
    }

    #[test]
    fn substitution_stops_at_the_first_value_past_the_limit() {
        let text = "x: ${env:BIG}\n".repeat(1000);
        let mut calls = 0;
        let err = substitute(text.as_bytes(), 10_000, |_| {
            calls += 1;
            Ok(vec![b'v'; 4000])
        })
        .unwrap_err();
        assert_eq!(calls, 3, "substitution went on past the limit");
        assert_eq!((err.line, err.reference.as_str()), (3, "${env:BIG}"));
        assert!(err.reason.contains("GITRELOAD_MAX_FILE_SIZE"), "{err}");
        let ok = substitute(b"a ${env:X} b", 9, |_| Ok(b"12345".to_vec())).unwrap();
        assert_eq!(ok.content, b"a 12345 b");
        assert!(substitute(b"a ${env:X} b", 8, |_| Ok(b"12345".to_vec())).is_err());
    }

    #[test]
    fn decrypted_lines_values_and_quoted_prefixes_are_masked() {
        let mut r = Redactions::default();
        r.add_plaintext(
            b"global:\n  smtp_auth_password: 'hunter2-horse-battery'\n  resolve_timeout: 5m\n\
              receivers:\n  - name: default\n    slack_configs:\n      - api_url: \"https://hooks.example/T0/B0/xyz\"\n\
              TOKEN=abcdef123\n  - list-item-secret\n",
        );
        let out = r.apply(
            "line 2: cannot unmarshal !!str `hunter2...` into bool\n\
             echo:   smtp_auth_password: 'hunter2-horse-battery'\n\
             value hunter2-horse-battery, url https://hooks.example/T0/B0/xyz, env abcdef123, \
             item list-item-secret, timeout 5m, key smtp_auth_password",
        );
        for leaked in ["hunter2", "hooks.example", "abcdef123", "list-item-secret"] {
            assert!(!out.contains(leaked), "{leaked} in {out}");
        }
        // Short values and bare keys stay readable.
        assert!(
            out.contains("timeout 5m") && out.contains("key smtp_auth_password"),
            "{out}"
        );
        assert!(
            out.contains("line 2: cannot unmarshal !!str `***` into bool"),
            "{out}"
        );
    }

    fn sources(dir: &Path) -> Sources {
        Sources {
            files: vec![glob::Pattern::new(&format!("{}/allowed/*", dir.display())).unwrap()],
            env: vec![glob::Pattern::new("SLACK_*").unwrap()],
            own: vec![
                ("GITRELOAD_SSH_KEY_FILE".into(), dir.join("key")),
                ("GITRELOAD_STATE_DIR".into(), dir.join("state")),
            ],
        }
    }

    /// Runs the policy and the read the way `lookup` does: `Err` is a
    /// refusal, `Ok(Err)` an absence.
    fn read(sources: &Sources, file: &Path) -> Result<Result<Vec<u8>, String>, String> {
        sources.refuse_written(file)?;
        match file.canonicalize() {
            Err(e) => Ok(Err(e.to_string())),
            Ok(resolved) => {
                sources.refuse_resolved(file, &resolved)?;
                read_secret_file(&resolved, 1 << 20, sources)
            }
        }
    }

    #[test]
    fn file_references_read_only_allowed_files_and_never_our_own() {
        let tmp = tempfile::TempDir::new().unwrap();
        // Canonical, so that the allow list matches resolved paths here too.
        let dir = tmp.path().canonicalize().unwrap();
        let allowed = dir.join("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(dir.join("key"), "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        std::fs::write(dir.join("state/id"), "copy of the key\n").unwrap();
        std::fs::write(allowed.join("slack"), "https://hooks.example/x\n").unwrap();
        std::fs::write(dir.join("elsewhere"), "not config\n").unwrap();
        let s = sources(&dir);

        assert_eq!(
            read(&s, &allowed.join("slack")).unwrap().unwrap(),
            b"https://hooks.example/x"
        );
        let refused = |name: &str, target: &Path, why: &str| {
            let link = allowed.join(name);
            let _ = std::os::unix::fs::symlink(target, &link);
            let err = read(&s, &link).expect_err(name);
            assert!(err.contains(why), "{name}: {err}");
        };
        refused("environ", Path::new("/proc/self/environ"), "/proc");
        refused("mem", Path::new("/dev/zero"), "/dev");
        refused("key_link", &dir.join("key"), "GITRELOAD_SSH_KEY_FILE");
        refused("state_link", &dir.join("state/id"), "GITRELOAD_STATE_DIR");
        refused("out", &dir.join("elsewhere"), "GITRELOAD_EXPAND_FILES");
        std::fs::hard_link(dir.join("key"), allowed.join("hard")).unwrap();
        let err = read(&s, &allowed.join("hard")).unwrap_err();
        assert!(err.contains("GITRELOAD_SSH_KEY_FILE"), "{err}");
        // Judged on the path as written first: no look at the filesystem.
        let err = read(&s, Path::new("/proc/self/environ")).unwrap_err();
        assert!(err.contains("/proc"), "{err}");
        let err = read(&s, &dir.join("elsewhere")).unwrap_err();
        assert!(
            err.contains("not allowed by GITRELOAD_EXPAND_FILES"),
            "{err}"
        );
        let err = read(&s, &dir.join("key")).unwrap_err();
        assert!(err.contains("GITRELOAD_SSH_KEY_FILE"), "{err}");
        // A FIFO would block a read for ever; only regular files are read.
        let fifo = allowed.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read(&s, &fifo).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        // Allowed but absent: an absence, not a refusal.
        assert!(read(&s, &allowed.join("missing")).unwrap().is_err());
        let none = Sources::default();
        let err = read(&none, &allowed.join("slack")).unwrap_err();
        assert!(err.contains("GITRELOAD_EXPAND_FILES is not set"), "{err}");
    }

    #[test]
    fn star_stays_in_one_directory_and_double_star_covers_kubernetes_links() {
        let all = glob::Pattern::new("/etc/s/**").unwrap();
        assert!(all.matches_with("/etc/s/token", PATH_MATCH));
        assert!(all.matches_with("/etc/s/..2024_01_01_00_00_00.1/token", PATH_MATCH));
        let one = glob::Pattern::new("/run/secrets/am_*").unwrap();
        assert!(one.matches_with("/run/secrets/am_smtp", PATH_MATCH));
        assert!(!one.matches_with("/run/secrets/am_dir/inner", PATH_MATCH));
        assert!(!one.matches_with("/run/secrets/gitreload_key", PATH_MATCH));
    }

    #[test]
    fn env_references_read_only_allowed_names_and_never_ours() {
        let s = sources(Path::new("/nonexistent"));
        assert!(s.refuse_env("SLACK_URL").is_ok());
        let err = s.refuse_env("GITRELOAD_WEBHOOK_SECRET").unwrap_err();
        assert!(err.contains("gitreload's own variables"), "{err}");
        let err = s.refuse_env("AWS_SECRET_ACCESS_KEY").unwrap_err();
        assert!(err.contains("GITRELOAD_EXPAND_ENV=SLACK_*"), "{err}");
        let err = Sources::default().refuse_env("SLACK_URL").unwrap_err();
        assert!(err.contains("GITRELOAD_EXPAND_ENV is not set"), "{err}");
        // Even a list that allows everything never allows ours.
        let all = Sources {
            env: vec![glob::Pattern::new("*").unwrap()],
            ..Sources::default()
        };
        assert!(all.refuse_env("GITRELOAD_PASSWORD_FILE").is_err());
        assert!(all.refuse_env("HOME").is_ok());
    }

    use age::secrecy::ExposeSecret;
}
