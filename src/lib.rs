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
//! | [`git`] | private bare mirror in the state dir; fetch (git:// on our own socket, smart HTTP on one kept client), resolve the ref; trees read on demand | [`git::Fetched`] (a [`git::CommitId`]) |
//! | [`credentials`] | SSH key and known hosts, HTTPS user + password file, CA file: prepared before each fetch; access failures explained | [`credentials::Session`] |
//! | [`materialize`] | makes the staging dir (kept between syncs, [`materialize::Staging`]) hold a commit's tree, writing only what changed; or writes a working tree; applies path rules, limits and secrets | [`materialize::Staged`] (dir + hash per file) |
//! | [`secrets`] | decrypts `.age` files, substitutes `${file:}`/`${env:}` references | plaintext for staging, [`secrets::Redactions`] |
//! | [`check`] | runs the checker in the staging dir | pass, or [`check::CheckError`] with the output |
//! | [`deploy`] | makes the destination equal to the staged tree | [`deploy::Manifest`], [`deploy::Report`] |
//! | [`reload`] | rounds of reload requests to every resolved address | [`reload::Progress`], [`reload::Refusal`] |
//! | [`drift`] | watches the destination for changes by others | a signal to look again |
//! | [`sync`] | the pipeline and its loop; readiness | [`sync::Outcome`] |
//! | [`validate`] | `gitreload validate`: stage and check a local checkout | [`validate::Report`] |
//! | [`http`] | `/metrics`, `/healthz`, `/readyz`, `POST /sync` | |
//! | [`metrics`] | every exported metric, named once | |
//! | [`logging`] | structlog-style JSON lines | |
//! | [`redact`] | which parts of URLs and messages are secret; every known secret scrubbed from logs, errors, panics | |
//! | [`state`] | atomic JSON records in the state dir | |
//!
//! ## Invariants
//! - The destination only receives a staged tree that passed the checker;
//!   any failure leaves the last good config live, byte for byte. Deploy
//!   hashes every byte it copies: a staged file changed after staging (by
//!   the checker) fails the deploy instead of reaching the volume.
//! - Only [`deploy`] writes to the destination, and only paths it manages
//!   (recorded in the manifest); files others put there are never touched.
//! - Only [`git`] uses gix and the HTTP client that fetches; only
//!   [`reload`] and [`http`] touch the network besides the fetch. [`deploy`]
//!   never talks to the network. [`credentials`] never uses gix: it turns
//!   settings into git config strings and secrets read just now.
//! - The state dir is never inside the destination; the mirror never stores
//!   the repository URL (it may carry credentials). A manifest or journal
//!   read back is acted on only if its commit is a commit id and every path
//!   in it passes the path rules ([`materialize::checked_path`], not
//!   hidden); otherwise it is set aside.
//! - No secret reaches a log line, an error, a metric label or the state dir:
//!   URLs pass through [`redact`] before they are shown. Decrypted and
//!   substituted content exists only in the staging dir (0700; secret files
//!   removed after each sync, the whole dir at start and at exit) and on
//!   the destination (with
//!   `GITRELOAD_SECRET_FILE_MODE`); the mirror holds only ciphertext, errors
//!   name a reference, never its value, and substituted values are masked
//!   in the checker's output.
//! - Every secret value (URL passwords, the password file each time it is
//!   read, the webhook secret) is remembered by [`redact`] and scrubbed from
//!   every log line and panic message; credentials are never sent over
//!   plain http://. The one secret the state dir may hold is a 0600 copy of
//!   an SSH key that ssh would refuse where it was mounted (`ssh/id`).
//! - Every loop is driven by a timer or an event; nothing busy-waits.

pub mod check;
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
