//! Fixtures for integration tests: real peers on 127.0.0.0/8, no mocks.
//!
//! Use it from a test file with `mod support;` and `use support::*;`.
//! Every fixture lives in its own `tempfile::TempDir`, picks its ports at run
//! time and stops its processes by PID when dropped (SIGTERM, up to 3 s, then
//! SIGKILL, then reap), so tests may run in parallel threads and binaries.
//! Every wait is bounded and panics with a message naming what it waited for
//! and the tail of the process's log.
//!
//! # API
//!
//! Basics (this file):
//! - `WAIT`: how long a test waits for one thing gitreload should do (an
//!   event, a file, an exit); `POLL`, `STOP_GRACE`, `READY_TIMEOUT`.
//! - `free_port(ip: &str) -> u16`: a TCP+UDP port free on `ip` (127.x only),
//!   never handed out twice in one test binary; `free_port_on(&[ip])`: one
//!   port free on every address; `free_addr(ip) -> String` gives
//!   `"ip:port"`; `tcp_accepts(addr) -> bool`.
//! - `wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool)`:
//!   polls every 20 ms; `wait_until_or(what, timeout, f, context)` adds
//!   `context()` to the panic message.
//! - `ChildGuard`: `spawn(name, &mut Command, log: &Path)`, `adopt(name,
//!   Child, log)`, `name()`, `pid()`, `is_running()`, `exit_status()`,
//!   `stop() -> ExitStatus`, `stop_within(grace)`, `kill9()`, `sigstop()`,
//!   `sigcont()`, `signal(sig)`, `wait_exit(timeout) -> Option<ExitStatus>`,
//!   `log_path()`, `log_tail(lines)`. Drop stops the process.
//! - `Service`: a restartable `ChildGuard` with a readiness `Probe`:
//!   `new(...)`, `start()`, `stop()`, `restart()`, `kill9()`, `sigstop()`,
//!   `sigcont()`, `signal(sig)`, `guard()`, `pid()`, `is_running()`,
//!   `log_path()`, `log_tail(lines)`.
//! - `clean_command(program) -> Command`: empty environment plus `PATH`.
//! - `file_tail(path, lines)`, `thread_states(pid) -> Vec<char>`.
//! - HTTP (reqwest::blocking, no proxy, no pooling, 5 s timeout;
//!   `http_client()`): `http_get(url) -> (u16, String)`, `http_post(url,
//!   headers: &[(&str, &str)], body: &str) -> (u16, String)`, and
//!   `try_http_get` / `try_http_post` returning `Result<_, String>` instead
//!   of panicking on a transport error. URLs must point at 127.x /
//!   localhost.
//! - `webhook_signature(secret, body) -> String`: the
//!   `X-Hub-Signature-256` value (`sha256=` + hex HMAC-SHA256) a webhook
//!   sender computes.
//!
//! A scenario (`sidecar.rs`):
//! - `Sidecar::new()`: an `upstream` (pub field), a destination and a state
//!   dir; `Sidecar::seeded()` (one commit: a valid `prometheus.yml`,
//!   marker `one`) and `Sidecar::seeded_with_rules()` (the same plus
//!   `rules/alerts.yml`).
//! - `gitreload(repo_url) -> Gitreload` (JSON logs at debug, no HTTP
//!   server, 300 ms interval), `gitreload_file()` (the upstream's file://
//!   URL), `dest()`, `state()`, `scratch()`, `dest_tree()`,
//!   `dest_file(path)`, `wait_dest_file(path, content, timeout)`.
//! - `tree(root) -> BTreeMap<path, content>`, `prometheus_yml(marker)`,
//!   `invalid_prometheus_yml()`.
//!
//! Git (`git.rs`):
//! - `Upstream::new()`: bare `upstream.git` + work clone, branch `main`.
//!   `write(path, content)`, `write_exec`, `symlink(path, target)`,
//!   `remove(path)`, `add_submodule(url, path)`, `commit(msg) -> String`,
//!   `commit_and_push(msg) -> String`, `push()`, `push_branch(name)`,
//!   `force_push_to(commit)`, `tag(name)`, `head() -> String`,
//!   `remote_head(branch) -> Option<String>`, `git(args) -> String`,
//!   `git_command() -> Command`, `bare_path()`, `base_dir()`, `work_path()`,
//!   `home()`, `file_url()`.
//! - `GitDaemon::start(&Upstream)`: `url()`, `port()`, `stop()`,
//!   `restart()`, `service()`.
//! - `SmartHttp::start(&Upstream)`, `SmartHttp::start_with_basic_auth(&up,
//!   user, password)`, `SmartHttp::start_with_tls(&up, Option<(user,
//!   password)>)`: `url()`, `url_with_credentials()`, `moved_url()` and
//!   `moved_twice_url()` (redirects), `requests()` (access log), `port()`,
//!   `https_url()`, `https_url_with_credentials()` and `ca_path()` (TLS with
//!   a private CA, certificate for 127.0.0.1), `set_password(password)`,
//!   `stop()`, `restart()` (nginx only), `nginx()`, `logs()`.
//! - `git_exec_path()`, `git_command_in(home) -> Command`, `run_git(cmd)`,
//!   `make_tls_certificates(dir)`.
//!
//! SSH (`ssh.rs`):
//! - `Sshd::start(&Upstream)`: sshd on 127.0.0.1:PORT, key auth only, login
//!   as the current user. `url()` (`ssh://user@127.0.0.1:PORT/abs/upstream.git`),
//!   `scp_url()` (`user@127.x.y.z:/abs/...`: sshd also listens on port 22 of
//!   a random loopback address when run as root), `port()`,
//!   `known_hosts_line()`, `write_known_hosts(path)`, `client_key_path()`
//!   (accepted), `other_key_path()` (refused), `rotate_host_key()`,
//!   `stop()`, `restart()`, `log_tail(n)`. `make_key(path, comment)` makes
//!   a key pair.
//!
//! DNS (`dns.rs`):
//! - `Dns::start(&[(name, ip)])`: dnsmasq; `set_records(&[(name, ip)])`
//!   (SIGHUP, returns once the answers changed), `server() -> String`,
//!   `port()`, `service()`, `resolve_a(name) -> Result<Vec<Ipv4Addr>, u8>`
//!   (sorted; Err is the rcode, `NXDOMAIN` = 3).
//! - `query_a(server: &str, name) -> Result<Vec<Ipv4Addr>, u8>`.
//!
//! Apps (`apps.rs`):
//! - `Prometheus::start(ip, config_dir)` (reads `config_dir/prometheus.yml`)
//!   and `Prometheus::start_on(ip, port, config_dir)`: `addr()`, `ip()`,
//!   `port()`, `url()`, `reload_url()`, `reload() -> (u16, String)`,
//!   `config() -> String`, `metric(name) -> Option<f64>`,
//!   `last_reload_success_timestamp() -> f64`, `last_reload_successful() ->
//!   bool`, `stop()`, `restart()`, `kill9()`, `sigstop()`, `sigcont()`,
//!   `pid()`, `log_tail(n)`, `service()`.
//! - `Alertmanager::start_pair([ip_a, ip_b], config_dir) -> [Alertmanager;
//!   2]`, `start_pair_on(ips, port, config_dir)` and
//!   `Alertmanager::start(ip, config_dir)` (no cluster) (reads
//!   `config_dir/alertmanager.yml`): the same methods, plus
//!   `cluster_addr()` and `cluster_peers() -> usize`.
//! - `Replicas::start(name, &[ip], config_dir)`: one Prometheus per
//!   address on one shared port, and a `Dns` naming them all: fields
//!   `proms`, `port`, `dns`.
//!
//! The binary under test (`gitreload.rs`):
//! - `Gitreload::new().env(k, v).arg(a).args(..).current_dir(d)...`;
//!   `Gitreload::binary()`; `spawn() -> RunningGitreload`;
//!   `spawn_deployed()` (spawn, then wait up to `WAIT` for the first
//!   `config deployed`); `run_once(timeout) -> Output { status, stdout,
//!   stderr }` with `json_lines()` and `events(name)`.
//! - `RunningGitreload`: `lines()`, `stdout_lines()`, `stderr_lines()`,
//!   `cursor()`, `wait_for_line(timeout, pred) -> String`, `json_lines()`,
//!   `events(name)`, `count_events(name)`, `output_tail(n)`,
//!   `wait_for_event(timeout, name)`, `wait_for_event_after(cursor,
//!   timeout, name)`, `wait_for_event_count(timeout, name, n) ->
//!   Vec<Value>`, `wait_for_event_count_where(timeout, n, pred)`,
//!   `wait_for_event_where(timeout, what, pred)`, `wait_exit(timeout) ->
//!   ExitStatus`, `terminate() -> ExitStatus`, `kill9()`, `sigstop()`,
//!   `sigcont()`, `signal(sig)`, `pid()`, `is_running()`, `log_path()`,
//!   `output()`.
//!
//! Library deploys (`volume.rs`): `Volume::new()` (destination, state and a
//! sentinel tree beside them), `deploy(&Commit)`, `drift_repair(&Commit)`,
//! `escaping_links()`, `managed_tree()`, `snapshot(dir)`.
#![allow(dead_code)]
#![allow(unused_imports)]

pub mod apps;
pub mod dns;
pub mod git;
pub mod gitreload;
pub mod sidecar;
pub mod ssh;
pub mod volume;

pub use apps::{Alertmanager, Prometheus, Replicas};
pub use dns::{query_a, Dns};
pub use git::{GitDaemon, SmartHttp, Upstream};
pub use gitreload::{Gitreload, Output, RunningGitreload};
pub use ssh::Sshd;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often wait loops poll.
pub const POLL: Duration = Duration::from_millis(20);
/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a peer gets to become ready after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for one thing gitreload should do (an event, a
/// file on the destination, an exit): a bound for slow shared machines,
/// never a speed target.
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Waiting

/// Polls `f` every 20 ms until it returns true; panics naming `what` once
/// `timeout` has passed (or the poll count for it is used up).
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    wait_until_or(what, timeout, f, String::new)
}

/// Like [`wait_until`], and adds `context()` (e.g. a log tail) to the panic.
#[track_caller]
pub fn wait_until_or(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let start = Instant::now();
    let max_polls = timeout.as_millis() / POLL.as_millis() + 2;
    let mut polls = 0u128;
    loop {
        if f() {
            return;
        }
        polls += 1;
        if start.elapsed() >= timeout || polls >= max_polls {
            panic!(
                "timed out after {:.1?} ({polls} polls) waiting for {what}\n{}",
                start.elapsed(),
                context()
            );
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// Ports

/// Returns a port that is free for both TCP and UDP on `ip` right now (found
/// by binding `ip:0`) and that no other fixture in this test binary got.
/// `ip` must be a loopback address (127.x.y.z).
pub fn free_port(ip: &str) -> u16 {
    assert!(
        ip.starts_with("127."),
        "fixtures only use 127.0.0.0/8, got {ip}"
    );
    static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("cannot bind a TCP port on {ip}: {e}"));
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        if UdpSocket::bind((ip, port)).is_err() {
            continue;
        }
        if TAKEN.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("found no free port on {ip} in 100 tries");
}

/// A port free for TCP and UDP on every one of `ips` (replicas of one
/// service share a port, as in Swarm), never handed out twice.
pub fn free_port_on(ips: &[&str]) -> u16 {
    for _ in 0..100 {
        let port = free_port(ips[0]);
        let free_everywhere = ips[1..].iter().all(|ip| {
            TcpListener::bind((*ip, port)).is_ok() && UdpSocket::bind((*ip, port)).is_ok()
        });
        if free_everywhere {
            return port;
        }
    }
    panic!("found no port free on all of {ips:?} in 100 tries");
}

/// `"ip:port"` with a port from [`free_port`].
pub fn free_addr(ip: &str) -> String {
    format!("{ip}:{}", free_port(ip))
}

/// True when something accepts TCP connections on `addr`.
pub fn tcp_accepts(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("tcp_accepts wants ip:port");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

// ---------------------------------------------------------------------------
// Processes

/// A `Command` with an empty environment except `PATH`, so nothing from the
/// developer's shell (proxies, GIT_DIR, ...) leaks into a peer.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
    );
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` with `input` on its standard input; returns its output
/// (stdout and stderr captured).
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `age -r recipient [-a]` on `plaintext`.
pub fn age_encrypt(recipient: &str, plaintext: &str, armor: bool) -> Vec<u8> {
    let mut cmd = clean_command("age");
    cmd.args(["-r", recipient]);
    if armor {
        cmd.arg("-a");
    }
    let out = output_with_stdin(&mut cmd, plaintext.as_bytes());
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// The last `lines` lines of a log file (lossy UTF-8), for panic messages.
pub fn file_tail(path: &Path, lines: usize) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last lines of {} ---\n{}",
        path.display(),
        all[start..].join("\n")
    )
}

/// The state letter (R, S, T, Z, ...) of each thread of `pid`, from
/// `/proc/PID/task/*/stat`; empty if the process is gone.
pub fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
        .collect()
}

/// Owns one child process and the log file its output goes to. Gives a test
/// signals by PID (`stop`, `kill9`, `sigstop`, `sigcont`) that are never sent
/// once the child has been reaped, and stops the process when dropped.
pub struct ChildGuard {
    /// Short name for messages ("prometheus 127.0.0.2:9090").
    name: String,
    /// The process.
    child: Child,
    /// Where its stdout and stderr go (or a tee of them).
    log: PathBuf,
    /// Exit status once reaped.
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> ChildGuard {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Self::adopt(name, child, log)
    }

    /// Takes ownership of an already spawned child whose output ends up in
    /// `log` (used for display only).
    pub fn adopt(name: &str, child: Child, log: &Path) -> ChildGuard {
        ChildGuard {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    /// The exit status if the process has exited (reaps it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait failed");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `sig` if the process has not been reaped yet (so never to a
    /// recycled PID). Returns whether it was sent.
    pub fn signal(&mut self, sig: libc::c_int) -> bool {
        if self.exit_status().is_some() {
            return false;
        }
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) == 0 }
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers
    /// nothing. Returns once every thread of it is stopped (SIGSTOP is
    /// delivered asynchronously; a running thread could still answer).
    #[track_caller]
    pub fn sigstop(&mut self) {
        if self.signal(libc::SIGSTOP) {
            let pid = self.pid();
            let what = format!("every thread of {} (pid {pid}) to be stopped", self.name);
            wait_until(&what, Duration::from_secs(5), || {
                thread_states(pid).iter().all(|&s| s == 'T' || s == 'Z')
            });
        }
    }

    /// Thaws a process frozen by [`ChildGuard::sigstop`]; returns once no
    /// thread of it is stopped.
    #[track_caller]
    pub fn sigcont(&mut self) {
        if self.signal(libc::SIGCONT) {
            let pid = self.pid();
            let what = format!("every thread of {} (pid {pid}) to run again", self.name);
            wait_until(&what, Duration::from_secs(5), || {
                !thread_states(pid).contains(&'T')
            });
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / 10 + 2;
        for _ in 0..max_polls {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.exit_status()
    }

    /// SIGTERM (plus SIGCONT in case it is frozen), up to 3 s to exit, then
    /// SIGKILL; reaps the process and returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_within(STOP_GRACE)
    }

    /// [`ChildGuard::stop`] with a chosen grace period before SIGKILL.
    pub fn stop_within(&mut self, grace: Duration) -> ExitStatus {
        if self.signal(libc::SIGTERM) {
            self.signal(libc::SIGCONT);
        }
        match self.wait_exit(grace) {
            Some(status) => status,
            None => self.kill9(),
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        let status = self.child.wait().expect("wait after SIGKILL failed");
        self.status = Some(status);
        status
    }
}

impl Drop for ChildGuard {
    /// Like `stop`, but never panics (it may run while a test unwinds).
    fn drop(&mut self) {
        if self.status.is_some() || !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.pid() as libc::pid_t;
        unsafe {
            libc::kill(pid, libc::SIGTERM);
            libc::kill(pid, libc::SIGCONT);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// How a [`Service`] tells that it is ready after a start.
#[derive(Clone, Debug)]
pub enum Probe {
    /// Something accepts TCP connections on this `ip:port`.
    Tcp(String),
    /// A GET of this URL answers 200.
    Http(String),
    /// This path exists (e.g. a unix socket).
    Path(PathBuf),
}

impl Probe {
    fn ready(&self) -> bool {
        match self {
            Probe::Tcp(addr) => tcp_accepts(addr),
            Probe::Http(url) => matches!(try_http_get(url), Ok((200, _))),
            Probe::Path(path) => path.exists(),
        }
    }
}

/// A long-running peer that a test can stop and start again with the same
/// command line (same address, same data directory): the unit behind
/// `GitDaemon`, `SmartHttp`, `Dns`, `Prometheus` and `Alertmanager`.
pub struct Service {
    /// Name for messages.
    name: String,
    /// Builds the command line for each start.
    command: Box<dyn Fn() -> Command + Send + Sync>,
    /// Log file shared by every start (appended).
    log: PathBuf,
    /// Readiness check after each start.
    probe: Probe,
    /// The running process, if started.
    proc: Option<ChildGuard>,
}

impl Service {
    /// A service that is not started yet.
    pub fn new(
        name: &str,
        log: &Path,
        probe: Probe,
        command: impl Fn() -> Command + Send + Sync + 'static,
    ) -> Service {
        Service {
            name: name.to_string(),
            command: Box::new(command),
            log: log.to_path_buf(),
            probe,
            proc: None,
        }
    }

    /// Starts the process and waits (30 s at most) until the probe passes;
    /// panics with the log tail if it exits first or never gets ready.
    #[track_caller]
    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "{} is already running", self.name);
        let mut cmd = (self.command)();
        let mut guard = ChildGuard::spawn(&self.name, &mut cmd, &self.log);
        let probe = self.probe.clone();
        let mut exited = None;
        let what = format!("{} to be ready ({probe:?})", self.name);
        let log = self.log.clone();
        wait_until_or(
            &what,
            READY_TIMEOUT,
            || {
                if let Some(status) = guard.exit_status() {
                    exited = Some(status);
                    return true;
                }
                probe.ready()
            },
            || file_tail(&log, 40),
        );
        if let Some(status) = exited {
            panic!(
                "{} exited during start-up with {status}\n{}",
                self.name,
                file_tail(&self.log, 40)
            );
        }
        self.proc = Some(guard);
    }

    /// Stops the process (SIGTERM, then SIGKILL after 3 s) if it runs.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.proc.take().map(|mut p| p.stop())
    }

    /// Stops the process if it runs, then starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// SIGKILL, as in a crash.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        self.proc.take().map(|mut p| p.kill9())
    }

    pub fn guard(&mut self) -> &mut ChildGuard {
        let name = &self.name;
        self.proc
            .as_mut()
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    pub fn pid(&mut self) -> u32 {
        self.guard().pid()
    }

    pub fn sigstop(&mut self) {
        self.guard().sigstop()
    }

    pub fn sigcont(&mut self) {
        self.guard().sigcont()
    }

    pub fn signal(&mut self, sig: libc::c_int) -> bool {
        self.guard().signal(sig)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// The shared blocking client: no proxy, no idle connections kept (peers get
/// restarted under it), 2 s to connect, 5 s per request.
pub fn http_client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        // reqwest is built without a default TLS provider, as in gitreload.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::blocking::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("cannot build the HTTP client")
    })
}

fn assert_loopback_url(url: &str) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    assert!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "tests only send traffic to loopback addresses, not {url}"
    );
}

/// GET `url`; Err describes a transport error (refused, timeout, ...).
pub fn try_http_get(url: &str) -> Result<(u16, String), String> {
    assert_loopback_url(url);
    let resp = http_client()
        .get(url)
        .send()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .map_err(|e| format!("GET {url}: reading body: {e}"))?;
    Ok((status, body))
}

/// GET `url` and return (status, body); panics on a transport error.
#[track_caller]
pub fn http_get(url: &str) -> (u16, String) {
    try_http_get(url).unwrap_or_else(|e| panic!("{e}"))
}

/// POST `body` with `headers` to `url`; Err describes a transport error.
pub fn try_http_post(
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    assert_loopback_url(url);
    let mut req = http_client().post(url).body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .map_err(|e| format!("POST {url}: reading body: {e}"))?;
    Ok((status, body))
}

/// The `X-Hub-Signature-256` value GitHub sends with `body`: `sha256=`
/// and the hex HMAC-SHA256 of the body under `secret`.
pub fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POST and return (status, body); panics on a transport error.
#[track_caller]
pub fn http_post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    try_http_post(url, headers, body).unwrap_or_else(|e| panic!("{e}"))
}
