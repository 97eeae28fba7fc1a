//! Running the binary under test: a builder for its environment, a handle on
//! the running process whose output is captured line by line (and teed to a
//! log file), and helpers to wait for its JSON log events.

use super::*;
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tempfile::TempDir;

/// How long `terminate()` gives gitreload to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How gitreload will be started: arguments and environment. The process gets
/// an empty environment except `PATH`, `HOME` (a fresh temp dir),
/// `RUST_BACKTRACE=1`, and what the test adds with `env` (which wins).
/// Reusable: `spawn` and `run_once` borrow it.
#[derive(Clone, Default)]
pub struct Gitreload {
    /// Variables the test sets, in order.
    envs: Vec<(OsString, OsString)>,
    /// Command-line arguments.
    args: Vec<OsString>,
    /// Working directory, if not the test's.
    cwd: Option<PathBuf>,
}

/// Which stream a captured line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One captured output line (without its newline).
#[derive(Clone, Debug)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
}

/// The finished run of [`Gitreload::run_once`].
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Every line of stdout and stderr that is a JSON object.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .filter_map(parse_object)
            .collect()
    }

    /// The JSON lines whose `event` is `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|v| v["event"] == name)
            .collect()
    }
}

impl Gitreload {
    pub fn new() -> Gitreload {
        Gitreload::default()
    }

    /// The binary cargo built for these tests.
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_gitreload")
    }

    /// Sets an environment variable (e.g. `GITRELOAD_REPO`).
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Gitreload {
        self.envs.push((key.into(), value.as_ref().into()));
        self
    }

    /// Appends a command-line argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Gitreload {
        self.args.push(arg.as_ref().into());
        self
    }

    /// Appends command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Gitreload {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().into()));
        self
    }

    /// Runs it in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Gitreload {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Starts gitreload with stdout and stderr captured by reader threads.
    pub fn spawn(&self) -> RunningGitreload {
        let dir = TempDir::new().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let log_path = dir.path().join("gitreload.log");
        let mut cmd = clean_command(Self::binary());
        cmd.env("HOME", &home).env("RUST_BACKTRACE", "1");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let captured = Arc::new(Captured {
            lines: Mutex::new(Vec::new()),
            open_streams: AtomicUsize::new(2),
            log: Mutex::new(File::create(&log_path).unwrap()),
        });
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, reader) in [
            (Stream::Stdout, Box::new(stdout) as Box<dyn Read + Send>),
            (Stream::Stderr, Box::new(stderr)),
        ] {
            let captured = Arc::clone(&captured);
            std::thread::Builder::new()
                .name(format!("gitreload-{stream:?}"))
                .spawn(move || captured.pump(stream, reader))
                .unwrap();
        }
        let proc = ChildGuard::adopt("gitreload", child, &log_path);
        RunningGitreload {
            proc,
            captured,
            dir,
        }
    }

    /// Starts gitreload and waits (up to [`super::WAIT`]) for its first
    /// `config deployed`: the opening of every scenario that changes
    /// something after a first good deploy.
    pub fn spawn_deployed(&self) -> RunningGitreload {
        let mut run = self.spawn();
        run.wait_for_event(super::WAIT, "config deployed");
        run
    }

    /// Runs gitreload to completion (e.g. a one-shot mode or `--help`); kills
    /// it and panics with its output if it is still running after `timeout`.
    #[track_caller]
    pub fn run_once(&self, timeout: Duration) -> Output {
        let mut run = self.spawn();
        run.wait_exit(timeout);
        run.output()
    }
}

/// Output shared between the reader threads and the test.
struct Captured {
    /// Every line so far, in arrival order (stdout and stderr interleaved).
    lines: Mutex<Vec<Line>>,
    /// Streams not yet at EOF.
    open_streams: AtomicUsize,
    /// The tee.
    log: Mutex<File>,
}

impl Captured {
    fn pump(&self, stream: Stream, reader: Box<dyn Read + Send>) {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let _ = writeln!(self.log.lock().unwrap(), "{text}");
                    self.lines.lock().unwrap().push(Line { stream, text });
                }
            }
        }
        self.open_streams.fetch_sub(1, Ordering::SeqCst);
    }

    fn drained(&self) -> bool {
        self.open_streams.load(Ordering::SeqCst) == 0
    }

    /// The last `n` lines, stderr ones marked, for panic messages.
    fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        let mut out = format!(
            "--- last {} of {} gitreload output lines ---\n",
            lines.len() - start,
            lines.len()
        );
        for line in &lines[start..] {
            if line.stream == Stream::Stderr {
                out.push_str("[stderr] ");
            }
            out.push_str(&line.text);
            out.push('\n');
        }
        out
    }
}

fn parse_object(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(Value::is_object)
}

/// A running gitreload. Gives its captured output (`lines`, `json_lines`,
/// `events`), bounded waits for a line or a log event (each panics with the
/// output tail, and fails fast if the process exited), and signals by PID.
/// Dropping it stops the process (SIGTERM, SIGKILL after 3 s).
pub struct RunningGitreload {
    /// The process.
    proc: ChildGuard,
    /// Its output.
    captured: Arc<Captured>,
    /// HOME and the tee log.
    dir: TempDir,
}

impl RunningGitreload {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The tee of its output.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// Every line so far (stdout and stderr, in arrival order).
    pub fn lines(&self) -> Vec<String> {
        self.captured
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.text.clone())
            .collect()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines_of(Stream::Stdout)
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines_of(Stream::Stderr)
    }

    fn lines_of(&self, stream: Stream) -> Vec<String> {
        let lines = self.captured.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text.clone())
            .collect()
    }

    /// Number of lines so far; pass it to `wait_for_event_after` to wait only
    /// for what comes next.
    pub fn cursor(&self) -> usize {
        self.captured.lines.lock().unwrap().len()
    }

    /// Every line (either stream) that is a JSON object.
    pub fn json_lines(&self) -> Vec<Value> {
        let lines = self.captured.lines.lock().unwrap();
        lines.iter().filter_map(|l| parse_object(&l.text)).collect()
    }

    /// The JSON lines whose `event` is `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|v| v["event"] == name)
            .collect()
    }

    pub fn count_events(&self, name: &str) -> usize {
        self.events(name).len()
    }

    /// The last `n` output lines, for messages.
    pub fn output_tail(&self, n: usize) -> String {
        self.captured.tail(n)
    }

    /// Waits for the first line (from the start) matching `pred`.
    #[track_caller]
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for(
            timeout,
            "an output line matching the predicate",
            0,
            |lines| lines.iter().find(|l| pred(&l.text)).map(|l| l.text.clone()),
        )
    }

    /// Waits for the first JSON event named `name` (from the start).
    #[track_caller]
    pub fn wait_for_event(&mut self, timeout: Duration, name: &str) -> Value {
        self.wait_for_event_after(0, timeout, name)
    }

    /// Waits for an event named `name` among the lines after `cursor` (see
    /// [`RunningGitreload::cursor`]).
    #[track_caller]
    pub fn wait_for_event_after(&mut self, cursor: usize, timeout: Duration, name: &str) -> Value {
        self.wait_for(timeout, &format!("event {name:?}"), cursor, |lines| {
            lines
                .iter()
                .find_map(|l| parse_object(&l.text).filter(|v| v["event"] == name))
        })
    }

    /// Waits until at least `n` events named `name` were logged; returns them.
    #[track_caller]
    pub fn wait_for_event_count(&mut self, timeout: Duration, name: &str, n: usize) -> Vec<Value> {
        self.wait_for_event_count_where(timeout, n, |v| v["event"] == name)
    }

    /// Waits until `n` JSON lines satisfy `pred`; returns all that do.
    #[track_caller]
    pub fn wait_for_event_count_where(
        &mut self,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_for(timeout, &format!("{n} matching events"), 0, |lines| {
            let events: Vec<Value> = lines
                .iter()
                .filter_map(|l| parse_object(&l.text))
                .filter(|v| pred(v))
                .collect();
            (events.len() >= n).then_some(events)
        })
    }

    /// Waits for the first JSON line for which `pred` is true; `what` names
    /// it in the panic message.
    #[track_caller]
    pub fn wait_for_event_where(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for(timeout, what, 0, |lines| {
            lines
                .iter()
                .find_map(|l| parse_object(&l.text).filter(|v| pred(v)))
        })
    }

    /// Polls `find` over the lines after `from` until it returns Some; panics
    /// on timeout, or as soon as gitreload exited without printing it.
    #[track_caller]
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        from: usize,
        mut find: impl FnMut(&[Line]) -> Option<T>,
    ) -> T {
        let log = self.proc.log_path().display().to_string();
        let (proc, captured) = (&mut self.proc, Arc::clone(&self.captured));
        let mut found = None;
        let mut exited = None;
        wait_until_or(
            &format!("gitreload to print {what}"),
            timeout,
            || {
                // Order matters: exit, then EOF, then the lines: if it exited
                // and both streams are drained, every line is in the list.
                let status = proc.exit_status();
                let drained = captured.drained();
                let lines = captured.lines.lock().unwrap();
                found = find(&lines[from.min(lines.len())..]);
                if found.is_none() && status.is_some() && drained {
                    exited = status;
                }
                found.is_some() || exited.is_some()
            },
            || format!("{}(log: {log})", self.captured.tail(60)),
        );
        match found {
            Some(v) => v,
            None => panic!(
                "gitreload exited with {} before it printed {what}\n{}",
                exited.unwrap(),
                self.captured.tail(60)
            ),
        }
    }

    /// Waits for the process to exit on its own (panics with the output if it
    /// runs longer than `timeout`), then for its output to be read.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.proc.wait_exit(timeout) {
            Some(status) => {
                self.drain();
                status
            }
            None => {
                self.proc.kill9();
                self.drain();
                panic!(
                    "gitreload still ran after {timeout:?}; killed it\n{}",
                    self.captured.tail(60)
                );
            }
        }
    }

    /// SIGTERM, and waits up to 10 s for a graceful exit (panics with the
    /// output otherwise); returns the exit status.
    #[track_caller]
    pub fn terminate(&mut self) -> ExitStatus {
        self.proc.signal(libc::SIGTERM);
        self.proc.signal(libc::SIGCONT);
        self.wait_exit(SHUTDOWN_TIMEOUT)
    }

    /// SIGKILL, as in a crash; returns the exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        let status = self.proc.kill9();
        self.drain();
        status
    }

    pub fn sigstop(&mut self) {
        self.proc.sigstop();
    }

    pub fn sigcont(&mut self) {
        self.proc.sigcont();
    }

    pub fn signal(&mut self, sig: libc::c_int) -> bool {
        self.proc.signal(sig)
    }

    /// Waits (2 s at most) for both streams to reach EOF. A child of gitreload
    /// that inherited them can keep them open; then we go on without.
    fn drain(&self) {
        for _ in 0..100 {
            if self.captured.drained() {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Everything captured so far, as an [`Output`]; the process must have
    /// exited (use after `wait_exit`, `terminate` or `kill9`).
    pub fn output(&mut self) -> Output {
        let status = self
            .proc
            .exit_status()
            .expect("output() needs gitreload to have exited");
        self.drain();
        Output {
            status,
            stdout: self
                .stdout_lines()
                .iter()
                .map(|l| format!("{l}\n"))
                .collect(),
            stderr: self
                .stderr_lines()
                .iter()
                .map(|l| format!("{l}\n"))
                .collect(),
        }
    }
}
