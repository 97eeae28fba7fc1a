//! The gitreload binary: parses the command line, validates the settings,
//! and wires the stages together. All behaviour lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::{watch, Notify};

use gitreload::http::{self, Server};
use gitreload::metrics::Metrics;
use gitreload::reload::{self, Reloader};
use gitreload::settings::{DriftMode, Settings, DEFAULT_LISTEN};
use gitreload::sync::{Events, Health, Pipeline};

/// Keeps a config directory in step with a git repository: fetch, validate,
/// deploy atomically, reload every replica. Configured by GITRELOAD_*
/// environment variables (see README).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Do one sync (and reload), then exit: 0 on success, 1 on failure.
    #[arg(long)]
    once: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the running instance is ready (GET /readyz), 1 otherwise.
    /// For a Docker HEALTHCHECK in an image without curl.
    Healthcheck,
    /// Check a local checkout as the sidecar checks a commit, before it is
    /// pushed: path rules, limits, .age decryption, substitution and the
    /// checker. Reads GITRELOAD_CHECK, CHECK_TIMEOUT, SUBDIR, EXPAND,
    /// EXPAND_FILES, EXPAND_ENV, AGE_IDENTITY_FILE, MAX_FILES and
    /// MAX_FILE_SIZE; secrets that are absent are replaced by a marked
    /// placeholder, with a warning each.
    /// Exit 0: valid; 1: invalid; 2: bad settings or no such directory.
    Validate {
        /// The checkout (working tree files as they are on disk).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gitreload: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck) = cli.command {
        let listen = std::env::var("GITRELOAD_LISTEN").unwrap_or_else(|_| DEFAULT_LISTEN.into());
        let Ok(addr) = listen.trim().parse() else {
            eprintln!(
                "gitreload: GITRELOAD_LISTEN={listen:?}: expected an address such as 0.0.0.0:9108"
            );
            return ExitCode::from(2);
        };
        return ExitCode::from(runtime.block_on(http::healthcheck(addr)) as u8);
    }
    if let Some(Command::Validate { dir }) = &cli.command {
        return validate(&runtime, dir);
    }
    let mut settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gitreload: {e}");
            return ExitCode::from(2);
        }
    };
    settings.once |= cli.once;
    for secret in settings.secrets() {
        gitreload::redact::remember(&secret);
    }
    // reqwest is built without a default crypto provider: choose ring
    // before any TLS connection (the https transport panics otherwise).
    let _ = rustls::crypto::ring::default_provider().install_default();
    gitreload::logging::init(&settings.log_level, settings.log_format);
    gitreload::logging::install_panic_hook();
    let code = runtime.block_on(run(settings));
    // A fetch abandoned at its timeout may still sit in a blocking read;
    // do not wait for it to exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

async fn run(settings: Settings) -> ExitCode {
    let summary = settings.summary();
    let field = |key: &str| {
        summary
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        repo = %field("repo"),
        username = %field("username"),
        password = %field("password"),
        ssh_key_file = %field("ssh_key_file"),
        ssh_known_hosts_file = %field("ssh_known_hosts_file"),
        ssh_accept_new_host_keys = %field("ssh_accept_new_host_keys"),
        ca_file = %field("ca_file"),
        allow_insecure_http = %field("allow_insecure_http"),
        r#ref = %field("ref"),
        subdir = %field("subdir"),
        dest = %field("dest"),
        state_dir = %field("state_dir"),
        interval = %field("interval"),
        check = %field("check"),
        targets = %field("targets"),
        expand = %field("expand"),
        expand_files = %field("expand_files"),
        expand_env = %field("expand_env"),
        age_identities = %field("age_identities"),
        listen = %field("listen"),
        webhook_secret = %field("webhook_secret"),
        once = settings.once,
        "starting"
    );
    for warning in &settings.deprecations {
        tracing::warn!(target: "gitreload::settings", "{warning}");
    }
    if settings.credentials.ssh_accept_new_host_keys {
        tracing::warn!(
            target: "gitreload::credentials",
            known_hosts = %settings.state_dir.join("ssh/known_hosts").display(),
            "GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS=true: the SSH host key of a server seen for the first time is trusted without verification"
        );
    }

    if settings.credentials.allow_insecure_http {
        tracing::warn!(
            target: "gitreload::credentials",
            repo = %settings.repo.redacted(),
            "GITRELOAD_ALLOW_INSECURE_HTTP=true: credentials for an http:// repository are sent unencrypted; anyone on the network path can read the password and serve a config of their own. Use it only for a git server on a private network"
        );
    }

    let settings = Arc::new(settings);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        settings.stale_after,
        settings.fetch_timeout + settings.staging.check_timeout + Duration::from_secs(60),
    ));
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing the step in flight");
        let _ = shutdown_tx.send(true);
    });

    if let Err(e) = gitreload::state::create_private_dir(&settings.state_dir) {
        tracing::error!(path = %settings.state_dir.display(), error = %e, "cannot create the state directory");
        return ExitCode::FAILURE;
    }
    // One process per state directory, taken before anything reads it.
    let _state_lock = match gitreload::state::lock_dir(&settings.state_dir) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };

    let reloader = if settings.targets.is_empty() {
        None
    } else {
        let config = reload::Config {
            urls: settings.targets.clone(),
            method: settings
                .reload_method
                .parse()
                .unwrap_or(hyper::Method::POST),
            timeout: settings.reload_timeout,
            dns_server: settings.dns_server,
            attempts: settings.once.then_some(settings.reload_attempts),
            state_file: settings.state_dir.join("reload.json"),
        };
        match Reloader::spawn(config, metrics.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the reloader");
                return ExitCode::FAILURE;
            }
        }
    };

    let mut pipeline = match Pipeline::new(
        settings.clone(),
        metrics.clone(),
        reloader.clone(),
        health.clone(),
        shutdown.clone(),
    ) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };

    if settings.once {
        let outcome = pipeline.sync().await;
        if !outcome.is_success() {
            return ExitCode::FAILURE;
        }
        if let Some(reloader) = &reloader {
            if !reloader.wait_finished().await {
                tracing::error!("not every target confirmed the reload");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }

    let trigger = Arc::new(Notify::new());
    if let Some(addr) = settings.listen {
        let server = Server {
            metrics: metrics.clone(),
            health: health.clone(),
            trigger: trigger.clone(),
            webhook_secret: settings.webhook_secret.clone(),
        };
        if let Err(e) = server.bind(addr, shutdown.clone()).await {
            tracing::error!(listen = %addr, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    }
    let drift = Arc::new(Notify::new());
    let _watch = match settings.drift {
        DriftMode::Off => None,
        _ => match gitreload::drift::watch(&settings.dest, drift.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                // The periodic verification still catches drift.
                tracing::warn!(error = %e, "drift watch unavailable");
                None
            }
        },
    };
    let events = Events {
        sync_now: trigger,
        drift,
        refusals: reloader.as_ref().and_then(|r| r.take_refusals()),
    };
    pipeline.run(events).await;
    ExitCode::SUCCESS
}

/// `gitreload validate DIR`: warnings and verdict for a person or a CI log.
fn validate(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> ExitCode {
    let settings = match Settings::for_validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gitreload: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(gitreload::validate::validate(&settings, dir)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gitreload validate: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let shown = dir.display();
    match (&report.verdict, &report.checker) {
        (Ok(output), checker) => {
            if !output.is_empty() {
                println!("{output}");
            }
            match checker {
                Some(c) => println!(
                    "gitreload validate: {shown}: valid ({} files, {c})",
                    report.files
                ),
                None => println!(
                    "gitreload validate: {shown}: path rules and secrets pass ({} files); \
                     GITRELOAD_CHECK is not set, so no checker ran",
                    report.files
                ),
            }
            ExitCode::SUCCESS
        }
        (Err(why), _) => {
            eprintln!("gitreload validate: {shown}: invalid: {why}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates an arena of its own (up to eight
/// per core); for a sidecar that allocates little, each is resident memory
/// that buys nothing. Two rather than one: one saved only 0.3 MiB more and
/// was no cheaper per poll (see README, Benchmarks). (musl has one
/// allocator and no such knob.)
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) only sets an allocator parameter; it is called
    // before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
