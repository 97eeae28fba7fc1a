//! Git source: a private bare mirror of the upstream repository, kept in
//! the state directory, and read-only access to the trees of its commits.
//!
//! Promises:
//! - Nothing outside this module touches gix.
//! - Every fetch uses forced refspecs and the wanted ref is resolved from
//!   what the remote advertises *now*, so a force-push, a history rewrite or
//!   a rollback upstream is followed exactly, and a branch deleted upstream
//!   is reported as missing instead of served from a stale local ref.
//! - Only the wanted ref is fetched ([`refspecs_for`]): the branch, the tag
//!   (with its tag object) or the commit, never other branches or tags (no
//!   tag following), so a huge blob or thousands of tags elsewhere in the
//!   repository cost nothing. A pinned commit is asked for by its id; only
//!   a server that refuses that (protocol v0/v1 without
//!   `uploadpack.allowReachableSHA1InWant`) gets the old request for every
//!   branch and tag.
//! - A fetch ends by `GITRELOAD_FETCH_TIMEOUT` on its own: git:// reads and
//!   writes, and every smart HTTP request with its body, are cut at the
//!   fetch's deadline, so an abandoned fetch closes its socket and frees its
//!   thread even against a server that trickles bytes.
//! - Running out of file descriptors, memory or disk space is a plain,
//!   retried failure: a mirror is judged damaged (and rebuilt or discarded)
//!   only on evidence read from it, never because a file could not be
//!   opened.
//! - The mirror never stores the URL (which may carry credentials): the
//!   remote is anonymous, given at each fetch. Credentials are prepared anew
//!   for every fetch by [`crate::credentials`] (the password file re-read, the
//!   ssh command given as a config override, never written to the mirror);
//!   https always goes through our credentials callback, so no git credential
//!   helper or prompt is ever run.
//! - A fetch error carries no secret: the URL is redacted, the text scrubbed
//!   of every remembered secret, and a refused login, an unknown or changed
//!   host key or a failed TLS verification is explained by
//!   [`crate::credentials::Credentials::explain`].
//! - The mirror does not grow without bound: once it holds more than
//!   [`MAX_PACKS`] packs it is rebuilt by a fresh fetch and swapped in; a
//!   mirror that cannot be opened is rebuilt the same way.
//! - Blocking: every function here blocks; callers run them off the async
//!   runtime.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use gix::objs::tree::EntryKind;
use gix::prelude::FindExt;
use gix::protocol::transport::client::blocking_io::http::Transport as HttpTransport;
use gix::protocol::transport::client::blocking_io::Transport;
use gix::protocol::transport::client::git::{blocking_io as git_daemon, ConnectMode};
use gix::remote::Direction;

use crate::credentials::{Credentials, CredentialsError, Session};
use crate::redact::{self, RepoUrl};

mod http;

/// How long connecting to a git server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an idle HTTP connection to the git server is kept for reuse.
const HTTP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(50);

/// A mirror with more packs than this is rebuilt (every fetch that brings
/// objects adds one pack, and gix does not repack).
pub const MAX_PACKS: usize = 64;

/// Every branch and tag: only for a pinned commit that the server would not
/// hand out by its id.
const ALL_REFSPECS: &[&str] = &[
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
];

/// The forced refspecs that fetch `wanted` and nothing else: the remote's
/// HEAD, a branch or tag by short name (whichever exists), a full ref name,
/// or a commit by its id.
pub fn refspecs_for(wanted: Option<&str>) -> Vec<String> {
    match wanted {
        None => vec!["+HEAD:refs/remotes/origin/HEAD".into()],
        Some(id) if CommitId::parse(id).is_some() => {
            let id = id.to_ascii_lowercase();
            vec![format!("+{id}:refs/pinned/{id}")]
        }
        Some(full) => match full.strip_prefix("refs/heads/") {
            Some(branch) => vec![format!("+{full}:refs/remotes/origin/{branch}")],
            None if full.starts_with("refs/") => vec![format!("+{full}:{full}")],
            None => vec![
                format!("+refs/heads/{full}:refs/remotes/origin/{full}"),
                format!("+refs/tags/{full}:refs/tags/{full}"),
            ],
        },
    }
}

/// A full commit id, 40 hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CommitId(String);

impl CommitId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 7 digits, as git shows them.
    pub fn short(&self) -> &str {
        &self.0[..7.min(self.0.len())]
    }
    fn oid(&self) -> Result<gix::ObjectId, GitError> {
        gix::ObjectId::from_hex(self.0.as_bytes()).map_err(|_| GitError::Read {
            commit: self.0.clone(),
            message: "not a valid commit id".into(),
        })
    }
    /// Parses a full 40-digit hex id.
    pub fn parse(text: &str) -> Option<CommitId> {
        (text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| CommitId(text.to_ascii_lowercase()))
    }
}

impl std::fmt::Display for CommitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for CommitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What went wrong in the git stage. URLs are always shown redacted.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot prepare the mirror at {path}: {message}")]
    Mirror { path: PathBuf, message: String },
    #[error("fetch from {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("fetch from {url} failed: {source}")]
    Access {
        url: String,
        #[source]
        source: CredentialsError,
    },
    #[error("fetch from {url} did not finish within {timeout}")]
    Timeout { url: String, timeout: String },
    #[error(
        "ref {reference:?} does not exist at {url} (expected a branch, a tag or a full commit id)"
    )]
    RefNotFound { reference: String, url: String },
    #[error("commit {commit} is not reachable from any branch or tag of {url}")]
    CommitNotFound { commit: String, url: String },
    #[error("{url} has no default branch (its HEAD is unborn); set GITRELOAD_REF")]
    NoDefaultBranch { url: String },
    #[error("reading commit {commit}: {message}")]
    Read { commit: String, message: String },
    #[error("reading blob {blob}: {message}")]
    ReadBlob { blob: String, message: String },
    #[error("directory {subdir:?} does not exist in commit {commit}")]
    SubdirMissing { subdir: String, commit: String },
}

/// The result of a fetch: which commit the wanted ref points to now.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub commit: CommitId,
    /// The full name of the ref that was resolved (`refs/heads/main`), or
    /// the commit id itself when a commit was asked for.
    pub resolved_ref: String,
}

/// One entry of a tree, handed to the visitor of [`Mirror::walk_tree`] (and,
/// for a working tree, by [`crate::materialize::materialize_dir`]). Paths are
/// relative, `/`-separated bytes as stored; nothing here is a gix type.
pub enum Entry<'a> {
    /// A directory; the visitor says whether to descend into it.
    Dir { path: &'a [u8] },
    /// A regular file; its content is read only when the visitor asks.
    File {
        path: &'a [u8],
        executable: bool,
        blob: Blob<'a>,
    },
    /// A symbolic link; its target (as stored) is read only when asked.
    Symlink { path: &'a [u8], target: Blob<'a> },
    /// A submodule (a commit inside the tree); never materialized.
    Submodule { path: &'a [u8] },
}

/// The id of a blob in the mirror: equal ids mean equal content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobId(gix::ObjectId);

/// A file's content, read on demand: a visitor that already holds the
/// content of [`Blob::id`] never pays for reading and inflating it.
pub struct Blob<'a>(BlobSource<'a>);

enum BlobSource<'a> {
    /// Bytes already in memory (a working tree file); no id.
    Bytes(&'a [u8]),
    /// A file on disk larger than the walk's limit; not read.
    TooLarge(u64),
    /// A blob in the mirror, read into `buf` when asked.
    Mirror {
        repo: &'a gix::Repository,
        buf: &'a mut Vec<u8>,
        id: gix::ObjectId,
        max_size: u64,
    },
}

/// What [`Blob::read`] found.
pub enum Content<'b> {
    Data(&'b [u8]),
    /// Larger than the walk's limit; the content was not read.
    Oversized(u64),
}

impl<'a> Blob<'a> {
    /// Content already read (from a working tree), or `size` when it was
    /// over the limit and left unread.
    pub fn from_disk(data: Result<&'a [u8], u64>) -> Blob<'a> {
        Blob(match data {
            Ok(bytes) => BlobSource::Bytes(bytes),
            Err(size) => BlobSource::TooLarge(size),
        })
    }

    /// The blob's id when it comes from the mirror.
    pub fn id(&self) -> Option<BlobId> {
        match &self.0 {
            BlobSource::Mirror { id, .. } => Some(BlobId(*id)),
            _ => None,
        }
    }

    /// The content, unless it is larger than the walk's limit.
    pub fn read(&mut self) -> Result<Content<'_>, GitError> {
        match &mut self.0 {
            BlobSource::Bytes(bytes) => Ok(Content::Data(bytes)),
            BlobSource::TooLarge(size) => Ok(Content::Oversized(*size)),
            BlobSource::Mirror {
                repo,
                buf,
                id,
                max_size,
            } => {
                let error = |e: &dyn std::error::Error| GitError::ReadBlob {
                    blob: id.to_string(),
                    message: describe(e),
                };
                let size = repo.find_header(*id).map_err(|e| error(&e))?.size();
                if size > *max_size {
                    return Ok(Content::Oversized(size));
                }
                let blob = repo.objects.find_blob(id, buf).map_err(|e| error(&e))?;
                Ok(Content::Data(blob.data))
            }
        }
    }
}

/// The private bare mirror.
pub struct Mirror {
    path: PathBuf,
    /// The state directory (ssh's files live in `ssh/` beside the mirror).
    state_dir: PathBuf,
    url: RepoUrl,
    /// How to authenticate to `url` and verify it.
    credentials: Credentials,
    /// Longest one fetch may take (`GITRELOAD_FETCH_TIMEOUT`): every read,
    /// write, request and child process of a fetch ends by then.
    io_timeout: std::time::Duration,
    /// The HTTP client kept between fetches, with the CA certificates it
    /// was built with.
    #[allow(clippy::type_complexity)]
    http_client: std::sync::Mutex<Option<(Option<Vec<u8>>, reqwest::blocking::Client)>>,
}

impl Mirror {
    /// A mirror at `state_dir/mirror.git` of `url`. Nothing is touched yet.
    /// `io_timeout` bounds each fetch as a whole (see [`Mirror::fetch`]).
    pub fn new(
        state_dir: &Path,
        url: RepoUrl,
        credentials: Credentials,
        io_timeout: std::time::Duration,
    ) -> Mirror {
        Mirror {
            path: state_dir.join("mirror.git"),
            state_dir: state_dir.to_path_buf(),
            url,
            credentials,
            io_timeout,
            http_client: std::sync::Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn url(&self) -> &RepoUrl {
        &self.url
    }

    /// Fetches from upstream and resolves `wanted` (branch, tag, full
    /// commit id, or `None` for the remote's HEAD). Creates the mirror on
    /// first use and rebuilds it when it is unreadable or has grown too many
    /// packs. Returns within about `io_timeout`, whatever the server does:
    /// its connections are closed and its child processes killed by then.
    pub fn fetch(&self, wanted: Option<&str>, interrupt: &AtomicBool) -> Result<Fetched, GitError> {
        let fetch = Attempt {
            wanted,
            interrupt,
            deadline: Instant::now() + self.io_timeout,
        };
        let result = self.fetch_before(&fetch);
        // Whatever broke off at the deadline (a read, a request, a killed
        // ssh) failed because time ran out: say so.
        match result {
            Err(GitError::Fetch { .. } | GitError::Access { .. })
                if Instant::now() >= fetch.deadline =>
            {
                Err(GitError::Timeout {
                    url: self.url.redacted(),
                    timeout: humantime::format_duration(self.io_timeout).to_string(),
                })
            }
            other => other,
        }
    }

    /// [`Mirror::fetch`] within `fetch.deadline`.
    fn fetch_before(&self, fetch: &Attempt<'_>) -> Result<Fetched, GitError> {
        let session = self
            .credentials
            .prepare(&self.state_dir, &self.url)
            .map_err(|source| GitError::Access {
                url: self.url.redacted(),
                source,
            })?;
        let repo = match open_repo(&self.path, &session.config) {
            Ok(repo) => repo,
            // Out of file descriptors or memory: the mirror is not at fault.
            Err(e) if self.path.exists() && out_of_resources(&e) => {
                return Err(self.mirror_error(describe(&e)))
            }
            Err(_) if self.path.exists() => {
                tracing::warn!(path = %self.path.display(), "mirror unreadable, rebuilding");
                return self.rebuild(&session, fetch);
            }
            Err(_) => self.init(&self.path, &session.config)?,
        };
        let fetched = self.fetch_into(&repo, &session, fetch)?;
        if count_packs(&self.path) > MAX_PACKS {
            tracing::info!(path = %self.path.display(), "compacting mirror");
            return self.rebuild(&session, fetch);
        }
        Ok(fetched)
    }

    /// Fetches into a fresh mirror beside the current one and swaps it in,
    /// so a failed rebuild leaves the old mirror in place.
    fn rebuild(&self, session: &Session, fetch: &Attempt<'_>) -> Result<Fetched, GitError> {
        let fresh = self.path.with_extension("new");
        let old = self.path.with_extension("old");
        let _ = std::fs::remove_dir_all(&fresh);
        let _ = std::fs::remove_dir_all(&old);
        let repo = self.init(&fresh, &session.config)?;
        let fetched = self.fetch_into(&repo, session, fetch)?;
        drop(repo);
        let swap = || -> std::io::Result<()> {
            if self.path.exists() {
                std::fs::rename(&self.path, &old)?;
            }
            std::fs::rename(&fresh, &self.path)?;
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        };
        swap().map_err(|e| self.mirror_error(format!("swapping in the rebuilt mirror: {e}")))?;
        Ok(fetched)
    }

    fn mirror_error(&self, message: String) -> GitError {
        GitError::Mirror {
            path: self.path.clone(),
            message,
        }
    }

    /// Opens the mirror at `path`; `config` (`key=value`) overrides the
    /// repository's configuration in memory only.
    fn open_with(&self, path: &Path, config: &[String]) -> Result<gix::Repository, GitError> {
        open_repo(path, config).map_err(|e| self.mirror_error(describe(&e)))
    }

    fn open(&self) -> Result<gix::Repository, GitError> {
        self.open_with(&self.path, &[])
    }

    fn init(&self, path: &Path, config: &[String]) -> Result<gix::Repository, GitError> {
        std::fs::create_dir_all(path).map_err(|e| self.mirror_error(e.to_string()))?;
        gix::init_bare(path).map_err(|e| self.mirror_error(describe(&e)))?;
        self.open_with(path, config)
    }

    /// A fetch error without secrets, explained when it is about access.
    fn fetch_error(&self, session: &Session, e: &dyn std::error::Error) -> GitError {
        let url = self.url.redacted();
        let message = redact::scrub(&self.url.scrub(&describe(e)));
        match self.credentials.explain(session, &self.url, &message) {
            Some(source) => GitError::Access { url, source },
            None => GitError::Fetch { url, message },
        }
    }

    fn fetch_into(
        &self,
        repo: &gix::Repository,
        session: &Session,
        fetch: &Attempt<'_>,
    ) -> Result<Fetched, GitError> {
        let specs = refspecs_for(fetch.wanted);
        let mut result = self.fetch_refs(repo, session, &specs, fetch);
        let pinned = fetch.wanted.is_some_and(|w| CommitId::parse(w).is_some());
        if pinned && matches!(result, Err(GitError::Fetch { .. })) {
            // A server that hands out only advertised objects: look for the
            // commit in every branch and tag, as git does.
            *self.http_client.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let all: Vec<String> = ALL_REFSPECS.iter().map(|s| s.to_string()).collect();
            result = self.fetch_refs(repo, session, &all, fetch);
        }
        match &result {
            Ok(_) => self.credentials.succeeded(session),
            // A fresh client (and connections) for the next attempt.
            Err(_) => *self.http_client.lock().unwrap_or_else(|e| e.into_inner()) = None,
        }
        let refs = result?;
        self.resolve(repo, &refs, fetch.wanted)
    }

    /// Connects with this session's credentials, fetches, and returns what
    /// the remote advertised.
    fn fetch_refs(
        &self,
        repo: &gix::Repository,
        session: &Session,
        specs: &[String],
        fetch: &Attempt<'_>,
    ) -> Result<Vec<gix::protocol::handshake::Ref>, GitError> {
        let remote = repo
            .remote_at(self.url.expose())
            .and_then(|r| r.with_refspecs(specs.iter().map(String::as_str), Direction::Fetch))
            .map_err(|e| self.fetch_error(session, &e))?
            // Tags that point into the fetched history are not wanted
            // either: with thousands of them, listing alone costs.
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let login = session.login.clone();
        let own = if self.url.is_http() {
            let client = self.http_client(session)?;
            self.http_transport(&remote, client, fetch.deadline)
                .map(Some)
        } else {
            self.git_daemon_transport(&remote, fetch.deadline)
        };
        let own = own.map_err(|e| self.fetch_error(session, e.as_ref()))?;
        // Declared before the connection, so it outlives it (see its docs).
        let _watchdog;
        let connection = match own {
            Some(transport) => remote.to_connection_with_transport(transport),
            None => {
                _watchdog = ChildWatchdog::start(fetch.deadline);
                remote
                    .connect(Direction::Fetch)
                    .map_err(|e| self.fetch_error(session, &e))?
            }
        };
        let connection = connection
            // Asked only when the server answers 401; never runs a helper
            // program or a prompt. `None` makes gix report that no
            // credentials exist, which `explain` turns into advice.
            .with_credentials(move |action| {
                use gix::credentials::helper::{Action, NextAction};
                Ok(match (action, &login) {
                    (Action::Get(context), Some((username, password))) => {
                        Some(gix::credentials::protocol::Outcome {
                            identity: gix::sec::identity::Account {
                                username: username.clone(),
                                password: password.expose().to_string(),
                                oauth_refresh_token: None,
                            },
                            next: NextAction::from(context),
                        })
                    }
                    _ => None,
                })
            });
        let prepared = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| self.fetch_error(session, &e))?;
        // Nothing moved upstream (the common poll): no negotiation and no
        // ref transaction.
        if up_to_date(repo, prepared.ref_map()) {
            return Ok(prepared.ref_map().remote_refs.clone());
        }
        let outcome = prepared
            .receive(gix::progress::Discard, fetch.interrupt)
            .map_err(|e| self.fetch_error(session, &e))?;
        Ok(outcome.ref_map.remote_refs)
    }

    /// For a git:// remote, a transport on a socket of our own: with
    /// `TCP_NODELAY`, because the protocol sends each request as several
    /// small writes and Nagle's algorithm would hold each one back until
    /// the server's delayed ACK (40 ms per exchange); and with read and
    /// write timeouts up to the fetch's `deadline` ([`DeadlineStream`]), so
    /// an abandoned fetch cannot keep its thread blocked. `None` for every
    /// other scheme, which gix connects itself.
    fn git_daemon_transport(
        &self,
        remote: &gix::Remote<'_>,
        deadline: Instant,
    ) -> Result<Option<Box<dyn Transport + Send>>, BoxError> {
        if !self.url.expose().starts_with("git://") {
            return Ok(None);
        }
        let (url, version) = remote.sanitized_url_and_version(Direction::Fetch)?;
        let host = url.host().ok_or("the URL has no host")?.to_string();
        let port = url.port;
        let address =
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port.unwrap_or(9418)))?
                .next()
                .ok_or("the host has no address")?;
        let left = deadline.saturating_duration_since(Instant::now());
        let stream = std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT.min(left))?;
        stream.set_nodelay(true)?;
        let reader = DeadlineStream {
            stream: stream.try_clone()?,
            deadline,
        };
        // gix writes each pkt-line on its own and flushes at the end of a
        // request: one segment a request instead of one a line.
        let writer = std::io::BufWriter::new(DeadlineStream { stream, deadline });
        Ok(Some(Box::new(git_daemon::Connection::new(
            reader,
            writer,
            version,
            url.path.clone(),
            Some((host, port)),
            ConnectMode::Daemon,
            false,
        ))))
    }

    /// A smart HTTP(S) transport on `client` (see [`http`]).
    fn http_transport(
        &self,
        remote: &gix::Remote<'_>,
        client: reqwest::blocking::Client,
        deadline: Instant,
    ) -> Result<Box<dyn Transport + Send>, BoxError> {
        let (url, version) = remote.sanitized_url_and_version(Direction::Fetch)?;
        Ok(Box::new(HttpTransport::new_http(
            http::Exchanges::new(client, deadline)
                .allow_cleartext_credentials(self.credentials.allow_insecure_http),
            url,
            version,
            false,
        )))
    }

    /// The mirror's kept HTTP client, built on first use and again when the
    /// `GITRELOAD_CA_FILE` certificates changed or a fetch failed.
    fn http_client(&self, session: &Session) -> Result<reqwest::blocking::Client, GitError> {
        let ca = session.ca.as_ref().map(|(_, pem)| pem.clone());
        let mut kept = self.http_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((key, client)) = kept.as_ref() {
            if *key == ca {
                return Ok(client.clone());
            }
        }
        let client = self.build_http_client(session)?;
        *kept = Some((ca, client.clone()));
        Ok(client)
    }

    /// The HTTP client: the system's roots plus the certificates of
    /// `GITRELOAD_CA_FILE` (added to the roots, not replacing them), bounded
    /// by the fetch timeout, redirects left to [`http`].
    fn build_http_client(&self, session: &Session) -> Result<reqwest::blocking::Client, GitError> {
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(self.io_timeout)
            // Below the 60 s or more that git servers and their proxies
            // keep an idle connection, so a poll does not meet one the
            // server is closing.
            .pool_idle_timeout(HTTP_IDLE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some((path, pem)) = &session.ca {
            let access = |problem: String| GitError::Access {
                url: self.url.redacted(),
                source: CredentialsError::Unusable {
                    var: "GITRELOAD_CA_FILE",
                    path: path.to_path_buf(),
                    problem,
                },
            };
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| access(format!("has no usable PEM certificate ({e})")))?;
            if certs.is_empty() {
                return Err(access("has no PEM certificate".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        builder.build().map_err(|e| GitError::Fetch {
            url: self.url.redacted(),
            message: format!("cannot set up the HTTP client: {}", describe(&e)),
        })
    }

    fn resolve(
        &self,
        repo: &gix::Repository,
        refs: &[gix::protocol::handshake::Ref],
        wanted: Option<&str>,
    ) -> Result<Fetched, GitError> {
        use gix::protocol::handshake::Ref;
        let url = self.url.redacted();
        let (name, object) = match wanted {
            Some(text) if CommitId::parse(text).is_some() => {
                let commit = CommitId::parse(text).expect("checked");
                let oid = commit.oid()?;
                let found = repo
                    .find_object(oid)
                    .ok()
                    .and_then(|o| o.peel_to_commit().ok())
                    .is_some();
                if !found {
                    return Err(GitError::CommitNotFound {
                        commit: commit.to_string(),
                        url,
                    });
                }
                return Ok(Fetched {
                    resolved_ref: commit.to_string(),
                    commit,
                });
            }
            Some(text) => {
                let candidates: Vec<String> = if text.starts_with("refs/") {
                    vec![text.to_string()]
                } else {
                    vec![format!("refs/heads/{text}"), format!("refs/tags/{text}")]
                };
                let found = candidates.iter().find_map(|c| {
                    refs.iter().find_map(|r| match r {
                        Ref::Direct {
                            full_ref_name,
                            object,
                        } if full_ref_name == c.as_str() => Some((c.clone(), *object)),
                        Ref::Peeled {
                            full_ref_name,
                            object,
                            ..
                        } if full_ref_name == c.as_str() => Some((c.clone(), *object)),
                        Ref::Symbolic {
                            full_ref_name,
                            object,
                            ..
                        } if full_ref_name == c.as_str() => Some((c.clone(), *object)),
                        _ => None,
                    })
                });
                found.ok_or_else(|| GitError::RefNotFound {
                    reference: text.to_string(),
                    url,
                })?
            }
            None => refs
                .iter()
                .find_map(|r| match r {
                    Ref::Symbolic {
                        full_ref_name,
                        target,
                        object,
                        ..
                    } if full_ref_name == "HEAD" => Some((target.to_string(), *object)),
                    Ref::Direct {
                        full_ref_name,
                        object,
                    } if full_ref_name == "HEAD" => Some(("HEAD".to_string(), *object)),
                    _ => None,
                })
                .ok_or(GitError::NoDefaultBranch { url })?,
        };
        let commit = repo
            .find_object(object)
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| GitError::Read {
                commit: object.to_string(),
                message: describe(&e),
            })?;
        Ok(Fetched {
            commit: CommitId(commit.id.to_string()),
            resolved_ref: name,
        })
    }

    /// True when the mirror exists but cannot be read: it does not open, or
    /// a ref's commit or that commit's root tree is missing or corrupt (a
    /// damaged pack, a truncated fetch). A missing mirror is not damaged.
    pub fn is_damaged(&self) -> bool {
        if !self.path.exists() {
            return false;
        }
        // A judgement needs files opened: when none can be, the mirror is
        // not at fault and is left alone.
        if let Err(e) = std::fs::File::open(self.path.join("HEAD")) {
            if out_of_resources(&e) {
                tracing::warn!(
                    target: "gitreload::git",
                    path = %self.path.display(),
                    error = %e,
                    "cannot check the mirror: out of resources; it is kept"
                );
                return false;
            }
        }
        // Damaged only when the failure is not the system running out.
        let damaged = |e: &(dyn std::error::Error + 'static)| !out_of_resources(e);
        let repo = match open_repo(&self.path, &[]) {
            Ok(repo) => repo,
            Err(e) => return damaged(&e),
        };
        let platform = match repo.references() {
            Ok(p) => p,
            Err(e) => return damaged(&e),
        };
        let refs = match platform.all() {
            Ok(r) => r,
            Err(e) => return damaged(&e),
        };
        for reference in refs {
            let mut reference = match reference {
                Ok(r) => r,
                Err(e) => return damaged(&e),
            };
            let id = match reference.peel_to_id() {
                Ok(id) => id,
                Err(e) => return damaged(&e),
            };
            let object = match id.object() {
                Ok(o) => o,
                Err(e) => return damaged(&e),
            };
            // Tags may name trees or blobs; only a commit has a tree to read.
            if let Ok(commit) = object.try_into_commit() {
                if let Err(e) = commit.tree() {
                    return damaged(&e);
                }
            }
        }
        false
    }

    /// Removes lock and temp files a killed process left in the mirror (a
    /// ref's `.lock`, an unfinished pack). Only safe while this process
    /// holds the state directory (see [`crate::state::lock_dir`]). Returns
    /// how many were removed.
    pub fn remove_stale_locks(&self) -> usize {
        let mut removed = 0;
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                } else if (name.ends_with(".lock") || name.starts_with("tmp_"))
                    && std::fs::remove_file(&path).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Removes the mirror, so the next fetch clones afresh.
    pub fn discard(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// True when the mirror holds `commit` (e.g. to restore an earlier
    /// deploy without the network).
    pub fn has_commit(&self, commit: &CommitId) -> bool {
        let Ok(repo) = self.open() else { return false };
        let Ok(oid) = commit.oid() else { return false };
        let found = repo
            .find_object(oid)
            .ok()
            .and_then(|o| o.peel_to_commit().ok())
            .is_some();
        found
    }

    /// Walks the tree of `commit` below `subdir` (`""` = root), depth first
    /// in tree order, calling `visit` for each entry. A file's blob is read
    /// only if the visitor asks; one larger than `max_blob_size` is then
    /// reported as [`Content::Oversized`] without being inflated. For
    /// [`Entry::Dir`] the visitor's `Ok(false)` skips the directory.
    pub fn walk_tree<E>(
        &self,
        commit: &CommitId,
        subdir: &str,
        max_blob_size: u64,
        visit: &mut dyn FnMut(Entry<'_>) -> Result<bool, E>,
    ) -> Result<Result<(), E>, GitError> {
        let read_error = |message: String| GitError::Read {
            commit: commit.to_string(),
            message,
        };
        let repo = self.open()?;
        let object = repo
            .find_object(commit.oid()?)
            .map_err(|e| read_error(describe(&e)))?;
        let tree = object
            .peel_to_commit()
            .and_then(|c| c.tree())
            .map_err(|e| read_error(describe(&e)))?;
        let root = if subdir.is_empty() {
            tree.id
        } else {
            let entry = tree
                .lookup_entry_by_path(subdir)
                .map_err(|e| read_error(describe(&e)))?;
            match entry {
                Some(e) if e.mode().is_tree() => e.object_id(),
                _ => {
                    return Err(GitError::SubdirMissing {
                        subdir: subdir.to_string(),
                        commit: commit.to_string(),
                    })
                }
            }
        };
        let mut walker = Walker {
            repo: &repo,
            tree_buf: Vec::new(),
            blob_buf: Vec::new(),
            max_blob_size,
        };
        let mut path = gix::bstr::BString::default();
        walker
            .walk(root, &mut path, visit)
            .map_err(|e| read_error(describe(e.as_ref())))
    }
}

struct Walker<'r> {
    repo: &'r gix::Repository,
    tree_buf: Vec<u8>,
    blob_buf: Vec<u8>,
    max_blob_size: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Walker<'_> {
    fn walk<E>(
        &mut self,
        tree: gix::ObjectId,
        path: &mut gix::bstr::BString,
        visit: &mut dyn FnMut(Entry<'_>) -> Result<bool, E>,
    ) -> Result<Result<(), E>, BoxError> {
        let entries: Vec<(EntryKind, gix::bstr::BString, gix::ObjectId)> = {
            let tree = self.repo.objects.find_tree(&tree, &mut self.tree_buf)?;
            tree.entries
                .iter()
                .map(|e| (e.mode.kind(), e.filename.to_owned(), e.oid.to_owned()))
                .collect()
        };
        for (kind, name, oid) in entries {
            let base_len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let step = match kind {
                EntryKind::Tree => match visit(Entry::Dir {
                    path: path.as_slice(),
                }) {
                    Ok(true) => self.walk(oid, path, visit)?,
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                },
                EntryKind::Blob | EntryKind::BlobExecutable => visit(Entry::File {
                    path: path.as_slice(),
                    executable: kind == EntryKind::BlobExecutable,
                    blob: Blob(BlobSource::Mirror {
                        repo: self.repo,
                        buf: &mut self.blob_buf,
                        id: oid,
                        max_size: self.max_blob_size,
                    }),
                })
                .map(|_| ()),
                // Read only when asked, after its size: a link's target is
                // a blob like any other, and may be as large.
                EntryKind::Link => visit(Entry::Symlink {
                    path: path.as_slice(),
                    target: Blob(BlobSource::Mirror {
                        repo: self.repo,
                        buf: &mut self.blob_buf,
                        id: oid,
                        max_size: self.max_blob_size,
                    }),
                })
                .map(|_| ()),
                EntryKind::Commit => visit(Entry::Submodule {
                    path: path.as_slice(),
                })
                .map(|_| ()),
            };
            path.truncate(base_len);
            if let Err(e) = step {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

/// True when every ref the fetch maps already points where the remote's
/// does (and every unmapped advertised object is present): a fetch would
/// bring nothing.
fn up_to_date(repo: &gix::Repository, map: &gix::remote::fetch::RefMap) -> bool {
    use gix::bstr::ByteSlice;
    map.mappings.iter().all(|mapping| {
        let Some(id) = mapping.remote.as_id() else {
            return true; // unborn
        };
        match &mapping.local {
            Some(local) => repo
                .try_find_reference(local.as_bstr())
                .ok()
                .flatten()
                .is_some_and(|r| r.target().try_id() == Some(id)),
            None => repo.has_object(id),
        }
    })
}

/// One fetch: what it wants and until when it may run.
struct Attempt<'a> {
    wanted: Option<&'a str>,
    interrupt: &'a AtomicBool,
    /// When `GITRELOAD_FETCH_TIMEOUT` ends this fetch; no read or write on
    /// its connections outlives it.
    deadline: Instant,
}

/// A git:// socket whose every read and write ends by `deadline`: the
/// socket timeout is the time left, and once it is gone the socket is shut
/// down. A per-read timeout alone would let a server that trickles a byte
/// at a time hold the fetch's thread and socket forever.
struct DeadlineStream {
    stream: std::net::TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    /// The time left, or the error that ends the fetch.
    fn left(&self) -> std::io::Result<std::time::Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            return Err(timed_out(std::io::ErrorKind::TimedOut.into()));
        }
        Ok(left)
    }
}

/// A socket timeout (which the kernel reports as `EAGAIN`) as what it
/// means here: the socket's timeout is the time left, so the deadline
/// passed.
fn timed_out(e: std::io::Error) -> std::io::Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the fetch timeout passed")
        }
        _ => e,
    }
}

impl std::io::Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf).map_err(timed_out)
    }
}

impl std::io::Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Ends a fetch that runs through a child process (ssh, or `git
/// upload-pack` for a local path) at its deadline: gix reads the child's
/// output without a timeout, so a server that trickles bytes would hold the
/// fetch's thread, and the child, forever. At the deadline the children
/// this thread started are killed; the read then ends and gix reaps them.
/// (gix does not tell us the child's id: Linux lists a thread's children in
/// `/proc/self/task/TID/children`.)
struct ChildWatchdog {
    /// Dropped when the fetch is over: the watchdog then ends at once.
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChildWatchdog {
    /// Watches the children the calling thread will start.
    fn start(deadline: Instant) -> ChildWatchdog {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fetch-deadline".into())
            .spawn(move || {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(left) {
                    let children =
                        std::fs::read_to_string(format!("/proc/self/task/{tid}/children"))
                            .unwrap_or_default();
                    for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
                        // Our own child, not reaped yet (gix waits for it
                        // only after its output ends): the id is not reused.
                        // SAFETY: kill(2) has no memory effects.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    if !children.trim().is_empty() {
                        tracing::warn!(
                            target: "gitreload::git",
                            "fetch timeout passed; its ssh or upload-pack process was killed"
                        );
                    }
                }
            })
            .ok();
        ChildWatchdog {
            done: Some(done),
            thread,
        }
    }
}

impl Drop for ChildWatchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens the repository at `path`; `config` (`key=value`) overrides its
/// configuration in memory only.
fn open_repo(path: &Path, config: &[String]) -> Result<gix::Repository, gix::Error> {
    let options =
        gix::open::Options::isolated().config_overrides(config.iter().map(String::as_str));
    gix::open_opts(path, options)
}

/// The system errors that say nothing about the mirror: out of file
/// descriptors (per process or system-wide), memory or disk space.
const RESOURCE_ERRORS: [i32; 4] = [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOSPC];

/// True when `error` or one of its causes is the system running out of a
/// resource ([`RESOURCE_ERRORS`]). gix does not always keep the
/// `io::Error` as a cause, so its text is checked too.
fn out_of_resources(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .raw_os_error()
                .is_some_and(|c| RESOURCE_ERRORS.contains(&c))
            {
                return true;
            }
        }
        current = e.source();
    }
    let text = describe(error);
    RESOURCE_ERRORS.iter().any(|&code| {
        let marker = format!(" (os error {code})");
        let shown = std::io::Error::from_raw_os_error(code).to_string();
        text.contains(&marker)
            || shown
                .strip_suffix(&marker)
                .is_some_and(|t| text.contains(t))
    })
}

fn count_packs(mirror: &Path) -> usize {
    std::fs::read_dir(mirror.join("objects/pack"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0)
}

/// An error and its causes on one line, without repeats.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_wanted_ref_is_in_the_refspecs() {
        assert_eq!(refspecs_for(None), ["+HEAD:refs/remotes/origin/HEAD"]);
        assert_eq!(
            refspecs_for(Some("main")),
            [
                "+refs/heads/main:refs/remotes/origin/main",
                "+refs/tags/main:refs/tags/main"
            ]
        );
        assert_eq!(
            refspecs_for(Some("refs/heads/release/1")),
            ["+refs/heads/release/1:refs/remotes/origin/release/1"]
        );
        assert_eq!(
            refspecs_for(Some("refs/tags/v1")),
            ["+refs/tags/v1:refs/tags/v1"]
        );
        let id = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(
            refspecs_for(Some(id)),
            [format!("+{0}:refs/pinned/{0}", id.to_ascii_lowercase())]
        );
        for wanted in [None, Some("main"), Some("refs/tags/v1"), Some(id)] {
            for spec in refspecs_for(wanted) {
                assert!(spec.starts_with('+'), "{spec} is not forced");
                assert!(!spec.contains('*'), "{spec} fetches more than one ref");
            }
        }
    }

    #[test]
    fn running_out_of_descriptors_memory_or_space_is_not_damage() {
        for code in RESOURCE_ERRORS {
            let error = std::io::Error::from_raw_os_error(code);
            assert!(out_of_resources(&error), "{error}");
            // Only the text survives in some gix errors.
            let wrapped = GitError::Mirror {
                path: "/m".into(),
                message: format!("opening HEAD: {error}"),
            };
            assert!(out_of_resources(&wrapped), "{wrapped}");
        }
        for code in [libc::ENOENT, libc::EIO, libc::EACCES] {
            let error = std::io::Error::from_raw_os_error(code);
            assert!(!out_of_resources(&error), "{error}");
        }
        let corrupt = GitError::Read {
            commit: "c".into(),
            message: "object is corrupt".into(),
        };
        assert!(!out_of_resources(&corrupt));
    }
}
