//! # gitreload
//!
//! Keeps an application's configuration directory (the shared config volume
//! of Prometheus or Alertmanager) equal to a path in a git repository, never
//! lets an invalid config onto it, and makes every replica reload it.
//!
//! ## The pipeline (one module per stage)
//!
//! ```text
//! settings ─▶ git ─▶ materialize ─▶ check ─▶ deploy ─▶ reload
//!  (env)   (mirror,  (commit tree   (promtool, (dest == (POST /-/reload
//!           fetch,    → staging,     amtool,    staged,  to every A record,
//!           resolve)  path rules,    command)   atomic)  retried)
//!                     secrets)
//!                         ▲
//!                 sync: the loop that runs the stages (timer, webhook, once)
//!          beside it: http (metrics, health, webhook), metrics, logging
//!
//! gitreload validate DIR: working tree ─▶ materialize ─▶ check (no deploy)
//! ```
//!
//! | module | what it does | data out |
//! |---|---|---|
//! | [`settings`] | reads and validates `GITRELOAD_*` | [`settings::Settings`] |
//! | [`git`] | private bare mirror in the state dir; fetch only the wanted ref (git:// on our own socket, smart HTTP on one kept client, both cut at the fetch deadline), resolve the ref; trees read on demand | [`git::Fetched`] (a [`git::CommitId`]) |
//! | [`credentials`] | SSH key and known hosts, HTTPS user + password file, CA file: prepared before each fetch; access failures explained | [`credentials::Session`] |
//! | [`materialize`] | makes the staging dir (kept between syncs, [`materialize::Staging`]) hold a commit's tree, writing only what changed, through [`confined`] handles; or writes a working tree; applies path rules (links judged against the whole tree), limits and secrets | [`materialize::Staged`] (dir + hash per file) |
//! | [`secrets`] | decrypts `.age` files, substitutes `${file:}`/`${env:}` references from the allowed sources | plaintext for staging, [`secrets::Redactions`] |
//! | [`check`] | runs the checker in the staging dir | pass, or [`check::CheckError`] with the output |
//! | [`deploy`] | makes the destination equal to the staged tree, through [`confined`] handles; restores managed directories replaced by links | [`deploy::Manifest`], [`deploy::Report`] |
//! | [`reload`] | rounds of reload requests to every resolved address; host names taken as ASCII DNS names (Swarm's `tasks.alertmanager_1`); every decision of a round in a pure state machine (`reload::round`), the task only does the I/O | [`reload::Progress`], [`reload::Refusal`] |
//! | [`drift`] | watches the destination for changes by others (its parent until deploy creates it; never writes) | a signal to look again |
//! | [`sync`] | the pipeline and its loop; readiness | [`sync::Outcome`] |
//! | [`validate`] | `gitreload validate`: stage and check a local checkout | [`validate::Report`] |
//! | [`http`] | `/metrics`, `/healthz`, `/readyz`, `POST /sync` (throttled); connection, header-time and body limits | a webhook wake-up of the loop |
//! | [`metrics`] | every exported metric, named once | |
//! | [`logging`] | structlog-style JSON lines | |
//! | [`redact`] | which parts of URLs and messages are secret; every known secret scrubbed from logs, errors, panics | |
//! | [`state`] | atomic JSON records in the state dir (0700, files 0600); the key of secret files' hashes | [`state::ContentKey`] |
//! | [`confined`] | directory handles for roots gitreload owns: every write, rename, chmod, chown and delete below them walks from a handle and never resolves through a symlink | [`confined::Dir`] |
//!
//! ## Invariants
//! - The destination only receives a staged tree that passed the checker;
//!   any failure leaves the last good config live, byte for byte. Drift
//!   repair and rollback stage the commit anew and run the checker on it
//!   like any new commit (its secrets may have changed since). Deploy
//!   hashes every byte it copies: a staged file changed after staging (by
//!   the checker) fails the deploy instead of reaching the volume.
//! - Only [`deploy`] writes to the destination (it alone creates it), and
//!   only paths it manages (recorded in the manifest); files others put
//!   there are never touched. Every look, write, rename, chmod, chown and
//!   delete below the destination goes through a [`confined`] handle and
//!   never resolves through a symbolic link, whoever put the link there (a
//!   commit, an earlier commit, someone else on the volume).
//! - Only [`git`] uses gix and the HTTP client that fetches; only
//!   [`reload`] and [`http`] touch the network besides the fetch. [`deploy`]
//!   never talks to the network. [`credentials`] never uses gix: it turns
//!   settings into git config strings and secrets read just now.
//! - The state dir is never the destination, inside it, nor around it,
//!   compared after resolving links and `..`; the mirror never stores the
//!   repository URL (it may carry credentials). The state dir is 0700 and
//!   every file gitreload writes in it 0600.
//! - Every write, rename, chmod and delete below the staging root goes
//!   through a [`confined`] handle: a link there (staged from an earlier
//!   commit, or made by a checker) never redirects a write.
//! - A symlink is staged only when, resolved through the whole tree of its
//!   commit, it stays inside it and passes through no other link
//!   ([`materialize::check_links`]).
//! - A rejected commit stays rejected across restarts until upstream moves
//!   (or the rules that judged it change; a missing secret is tried again
//!   by the next process); one the process died on twice while staging or
//!   checking it is rejected at the next start. Every entry, link blob and
//!   directory is bounded before it is held.
//! - A manifest or journal read back is acted on only if its commit is a
//!   commit id and every path in it passes the path rules
//!   ([`materialize::checked_path`], not hidden); otherwise it is set aside.
//! - No secret reaches a log line, an error, a metric label or the state dir:
//!   URLs pass through [`redact`] before they are shown. Decrypted and
//!   substituted content exists only in the staging dir (0700; secret files
//!   removed after each sync, the whole dir at start and at exit) and on
//!   the destination (with
//!   `GITRELOAD_SECRET_FILE_MODE`); the manifest names a secret file's
//!   content only by a keyed hash; the mirror holds only ciphertext, errors
//!   name a reference, never its value, and substituted values and every
//!   line and value of a decrypted plaintext are masked in the checker's
//!   output.
//! - `${file:}` and `${env:}` read only what `GITRELOAD_EXPAND_FILES` and
//!   `GITRELOAD_EXPAND_ENV` allow (nothing when unset), and never
//!   gitreload's own credentials, state dir, `/proc`, `/sys`, `/dev` or
//!   `GITRELOAD_*` variables ([`secrets::Sources`]).
//! - Every secret value (URL passwords, the password file each time it is
//!   read, the webhook secret) is remembered by [`redact`] and scrubbed from
//!   every log line and panic message; so is the value of a secret query
//!   parameter of a URL (`?token=`, ...). Credentials are never sent over
//!   plain http:// unless `GITRELOAD_ALLOW_INSECURE_HTTP=true`. The one secret the state dir may hold is a 0600 copy of
//!   an SSH key that ssh would refuse where it was mounted (`ssh/id`).
//! - Every loop is driven by a timer or an event; nothing busy-waits (a
//!   failing `accept` backs off).
//! - Everything the network can send is bounded before it is held: HTTP
//!   connections, header time, webhook bodies (size and time), webhook
//!   syncs (throttled), and fetches (only the wanted ref, ended at the fetch
//!   deadline).
//! - Running out of file descriptors, memory or disk space is a retried
//!   failure, never evidence that the mirror is damaged.

pub mod check;
pub mod confined;
pub mod credentials;
pub mod deploy;
pub mod drift;
pub mod git;
pub mod http;
pub mod logging;
pub mod materialize;
pub mod metrics;
pub mod redact;
pub mod reload;
pub mod secrets;
pub mod settings;
pub mod state;
pub mod sync;
pub mod validate;
