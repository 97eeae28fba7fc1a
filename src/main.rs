//! The gitreload binary: parses the command line, validates the settings,
//! and wires the stages together. All behaviour lives in the library.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::{watch, Notify};

use gitreload::http::{self, Server};
use gitreload::metrics::Metrics;
use gitreload::reload::{self, Reloader};
use gitreload::settings::{Settings, DEFAULT_LISTEN};
use gitreload::sync::{Health, Pipeline};

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
}

fn main() -> ExitCode {
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
    // Several TLS backends are linked in; choose one before any connection.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    gitreload::logging::init(&settings.log_level, settings.log_format);
    install_panic_hook();
    runtime.block_on(run(settings))
}

/// A panic is logged as one error event, its message scrubbed of every
/// remembered secret (the default hook would print it raw to stderr).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::error!(
            error = %gitreload::redact::scrub(&message),
            location = %location,
            thread = %thread,
            "panic"
        );
    }));
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
        r#ref = %field("ref"),
        subdir = %field("subdir"),
        dest = %field("dest"),
        state_dir = %field("state_dir"),
        interval = %field("interval"),
        check = %field("check"),
        targets = %field("targets"),
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

    let settings = Arc::new(settings);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        settings.stale_after,
        settings.fetch_timeout + settings.check_timeout + Duration::from_secs(60),
    ));
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing the step in flight");
        let _ = shutdown_tx.send(true);
    });

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
        if let Err(e) = std::fs::create_dir_all(&settings.state_dir) {
            eprintln!(
                "gitreload: cannot create {}: {e}",
                settings.state_dir.display()
            );
            return ExitCode::FAILURE;
        }
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
    pipeline.run(trigger).await;
    ExitCode::SUCCESS
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
