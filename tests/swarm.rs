//! The Swarm end-to-end suite: `docker/Dockerfile`'s images and
//! `deploy/stack.yml` itself, deployed with `docker stack deploy` on a
//! single-node swarm this suite initialises, and every promise of the stack
//! judged from outside the containers: Prometheus' and Alertmanager's HTTP
//! APIs queried from a probe container on the stack's overlay network,
//! `docker service ps`, `docker inspect` health, the files on the volumes.
//!
//! It runs without a registry. The base images come from Debian's packages
//! (`.ci/swarm-images`: debootstrap, `docker import`, stand-ins for
//! prom/prometheus and prom/alertmanager); gitreload's images are the
//! Dockerfile's `prometheus` and `alertmanager` targets, built by the legacy
//! builder from those bases and the binary cargo built for the tests.
//!
//! A plain `main` (`harness = false`): the scenarios share one swarm and run
//! in order, each timed; every name the suite creates (stacks, secrets,
//! volumes, images, the swarm itself) starts with this run's id and is
//! removed by that name at the end, whether the scenarios passed, failed or
//! panicked. Nothing is pruned. The closing line is `N passed, N failed`.
//!
//! Needs root (debootstrap) and a Docker engine that is not in a swarm. On a
//! machine without Docker it fails, naming what is missing.
//! `SWARM_SUITE=skip` skips it with a line saying so, except when
//! `CI=true`, where it always runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest any single docker command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest a scenario waits for Swarm to converge on one condition.
const CONVERGE: Duration = Duration::from_secs(150);
/// Poll period of the convergence loops (each poll is a `docker exec`).
const POLL: Duration = Duration::from_millis(500);

/// Services of deploy/stack.yml, and the two the override adds.
const SERVICES: &[&str] = &[
    "prometheus",
    "gitreload_prometheus",
    "alertmanager_1",
    "alertmanager_2",
    "gitreload_alertmanager",
    "gitserver",
    "probe",
];
/// Volumes of deploy/stack.yml (checked against the file at start).
const VOLUMES: &[&str] = &[
    "prometheus_config",
    "prometheus_data",
    "alertmanager_config",
    "alertmanager_1_data",
    "alertmanager_2_data",
    "gitreload_prometheus_state",
    "gitreload_alertmanager_state",
];
type Outcome = Result<(), String>;

fn main() {
    let started = Instant::now();
    if std::env::var("SWARM_SUITE").as_deref() == Ok("skip")
        && std::env::var("CI").as_deref() != Ok("true")
    {
        println!("swarm suite skipped (SWARM_SUITE=skip); CI=true always runs it");
        return;
    }
    let result = std::panic::catch_unwind(run);
    let (passed, failed) = match result {
        Ok(counts) => counts,
        Err(_) => {
            eprintln!(
                "swarm suite: aborted by a panic (see above); everything it made was removed"
            );
            (0, 1)
        }
    };
    println!(
        "swarm suite: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Runs every phase; returns (passed, failed). The [`Cleanup`] guard
/// removes what was made when this returns or unwinds.
fn run() -> (usize, usize) {
    if let Err(e) = preflight() {
        eprintln!("swarm suite cannot run: {e}");
        return (0, 1);
    }
    let run_id = format!(
        "grsw{:x}{:04x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            & 0xffff
    );
    let dir = tempfile::Builder::new()
        .prefix(&format!("{run_id}-"))
        .tempdir()
        .expect("temp dir");
    let mut cleanup = Cleanup::new(&run_id);
    let mut report = Report::default();

    // Phase: images.
    let t = Instant::now();
    let bases = match build_images(&run_id, dir.path(), &mut cleanup) {
        Ok(bases) => {
            report.phase("image build", t);
            bases
        }
        Err(e) => {
            report.phase("image build (failed)", t);
            eprintln!("image build failed: {e}");
            return report.finish_with_failure();
        }
    };

    // Phase: swarm init and the fixtures (keys, repository, secrets).
    let t = Instant::now();
    let mut suite = match Suite::start(&run_id, &bases, dir.path(), cleanup) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("swarm setup failed: {e}");
            return report.finish_with_failure();
        }
    };
    report.phase("swarm init + fixtures", t);

    type Scenario = (&'static str, fn(&mut Suite) -> Outcome);
    let scenarios: &[Scenario] = &[
        (
            "deploy_from_empty_swarm_starts_every_application_on_its_first_validated_config",
            Suite::deploy_from_empty_swarm,
        ),
        (
            "scaled_prometheus_push_reaches_both_replicas_and_one_alertmanager_change_both_services",
            Suite::push_reaches_every_replica,
        ),
        (
            "invalid_prometheus_yml_never_reaches_the_volume_and_is_named_in_metrics_and_logs",
            Suite::invalid_config_is_rejected,
        ),
        (
            "killed_prometheus_task_restarts_on_the_last_good_config",
            Suite::killed_prometheus_restarts_on_last_good,
        ),
        (
            "killed_gitreload_task_restarts_without_reclone_rewrite_or_repeated_reload",
            Suite::killed_gitreload_restarts_quietly,
        ),
        (
            "signed_webhook_from_the_overlay_syncs_and_unsigned_gets_401",
            Suite::webhook_from_the_overlay,
        ),
        (
            "third_prometheus_replica_starts_on_the_current_config",
            Suite::scale_to_three,
        ),
        (
            "either_start_order_on_an_empty_config_volume_works",
            Suite::start_order,
        ),
    ];
    let mut deployed = true;
    for (name, scenario) in scenarios {
        if !deployed {
            println!("FAILED {name}: not run, the stack never came up");
            report.failed += 1;
            continue;
        }
        println!("--- {name}");
        let t = Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut suite)))
                .unwrap_or_else(|p| Err(panic_text(&p)));
        match outcome {
            Ok(()) => {
                println!("ok {name} ({:.1} s)", t.elapsed().as_secs_f64());
                report.passed += 1;
            }
            Err(e) => {
                println!("FAILED {name} ({:.1} s): {e}", t.elapsed().as_secs_f64());
                suite.diagnose();
                report.failed += 1;
                if report.passed == 0 {
                    deployed = false;
                }
            }
        }
        report.timings.push((name.to_string(), t.elapsed()));
    }
    for (what, value) in &suite.measured {
        println!("measured: {what}: {value}");
    }

    let t = Instant::now();
    drop(suite);
    report.phase("teardown", t);
    report.print();
    (report.passed, report.failed)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
    timings: Vec<(String, Duration)>,
}

impl Report {
    fn phase(&mut self, name: &str, since: Instant) {
        println!("phase {name}: {:.1} s", since.elapsed().as_secs_f64());
        self.timings.push((name.to_string(), since.elapsed()));
    }

    fn finish_with_failure(&mut self) -> (usize, usize) {
        self.failed += 1;
        (self.passed, self.failed)
    }

    fn print(&self) {
        println!("durations:");
        for (name, d) in &self.timings {
            println!("  {:>7.1} s  {name}", d.as_secs_f64());
        }
    }
}

// ---------------------------------------------------------------------------
// Commands

/// Runs `program args`, killing it after `timeout`; Ok(stdout) on exit 0,
/// Err naming the command with its stderr and stdout otherwise.
fn run_cmd(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<String, String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut out = tempfile::tempfile().map_err(|e| e.to_string())?;
    let mut err = tempfile::tempfile().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input)
            .map_err(|e| format!("`{shown}`: writing stdin: {e}"))?;
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("`{shown}` did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |f: &mut fs::File| {
        use std::io::Seek;
        let mut s = String::new();
        f.seek(std::io::SeekFrom::Start(0)).ok();
        f.read_to_string(&mut s).ok();
        s
    };
    let stdout = read(&mut out);
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{shown}` failed ({status}): {}{}",
            read(&mut err).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim())
            }
        ))
    }
}

/// Runs a long command with its output shown as it comes, killed after
/// `timeout`.
fn run_streaming(program: &str, args: &[&str], timeout: Duration) -> Outcome {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return ensure(status.success(), || format!("`{shown}` failed ({status})"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("`{shown}` did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    run_cmd("docker", args, None, COMMAND_TIMEOUT)
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["-C", dir.to_str().unwrap()];
    full.extend_from_slice(args);
    run_cmd("git", &full, None, COMMAND_TIMEOUT)
}

/// Polls `f` until it returns Some or `timeout` passes; the error names
/// `what` and the last reason `f` gave.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(last) => {
                if start.elapsed() >= timeout {
                    return Err(format!(
                        "timed out after {:.0?} waiting for {what}; last: {last}",
                        start.elapsed()
                    ));
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

// ---------------------------------------------------------------------------
// Preflight and images

fn preflight() -> Result<(), String> {
    let version = docker(&["version", "--format", "{{.Server.Version}}"]).map_err(|e| {
        format!("no usable Docker engine (the suite needs one; install docker.io and start dockerd): {e}")
    })?;
    println!("docker engine {}", version.trim());
    let uid = run_cmd("id", &["-u"], None, COMMAND_TIMEOUT)?;
    if uid.trim() != "0" {
        return Err("must run as root (debootstrap builds the base images)".into());
    }
    for tool in ["debootstrap", "ssh-keygen", "git"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            return Err(format!(
                "{tool} is not installed (bash .ci/test-all installs it)"
            ));
        }
    }
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    if state.trim() != "inactive" {
        return Err(format!(
            "this engine is already in a swarm (state {}); the suite only runs on an engine it can \
             init a swarm on and leave again",
            state.trim()
        ));
    }
    // The volumes the suite removes are the ones the stack declares.
    let stack: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(repo_root().join("deploy/stack.yml")).unwrap())
            .map_err(|e| e.to_string())?;
    let declared: Vec<&str> = stack["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    if declared != VOLUMES {
        return Err(format!(
            "deploy/stack.yml declares volumes {declared:?}; the suite knows {VOLUMES:?}"
        ));
    }
    Ok(())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn image(run: &str, what: &str) -> String {
    format!("{run}-{what}")
}

/// Builds the Debian bases and stand-ins (.ci/swarm-images), then the
/// Dockerfile's `prometheus` and `alertmanager` targets from them and the
/// test binary, with the legacy builder and no pull.
///
/// For work on the suite itself, `SWARM_BASE_IMAGES=PREFIX` uses
/// the images an earlier `.ci/swarm-images PREFIX` made (and leaves them);
/// ignored when `CI=true`, which always builds from scratch.
fn build_images(run: &str, dir: &Path, cleanup: &mut Cleanup) -> Result<String, String> {
    let reuse = std::env::var("SWARM_BASE_IMAGES")
        .ok()
        .filter(|p| !p.is_empty() && std::env::var("CI").as_deref() != Ok("true"));
    let bases = match reuse {
        Some(prefix) => {
            println!("reusing base images {prefix}-* (SWARM_BASE_IMAGES)");
            prefix
        }
        None => {
            for what in ["base", "prometheus", "alertmanager", "gitserver"] {
                cleanup.images.push(image(run, what));
            }
            let script = repo_root().join(".ci/swarm-images");
            run_streaming(
                "bash",
                &[script.to_str().unwrap(), run],
                Duration::from_secs(1500),
            )?;
            run.to_string()
        }
    };
    let context = dir.join("image-context");
    fs::create_dir(&context).map_err(|e| e.to_string())?;
    fs::copy(env!("CARGO_BIN_EXE_gitreload"), context.join("gitreload"))
        .map_err(|e| format!("copying the test binary: {e}"))?;
    // Without its debug sections the test binary is a quarter of the size,
    // and every layer holding it is written faster. Unstripped if strip
    // is missing: slower, same result.
    if let Err(e) = run_cmd(
        "strip",
        &["--strip-debug", context.join("gitreload").to_str().unwrap()],
        None,
        COMMAND_TIMEOUT,
    ) {
        println!("binary not stripped: {e}");
    }
    let dockerfile = repo_root().join("docker/Dockerfile");
    let mut base_ids = Vec::new();
    for what in ["base", "prometheus", "alertmanager"] {
        let id = docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &image(&bases, what),
        ])?;
        base_ids.push(id.trim().trim_start_matches("sha256:").to_string());
    }
    for target in ["prometheus", "alertmanager"] {
        let t = Instant::now();
        let name = image(run, &format!("gitreload-{target}"));
        cleanup.images.push(name.clone());
        let base = image(&bases, "base");
        let args = [
            "build",
            "-f",
            dockerfile.to_str().unwrap(),
            "--target",
            target,
            "--build-arg",
            &format!("RUST_IMAGE={base}"),
            "--build-arg",
            &format!("RUNTIME_IMAGE={base}"),
            "--build-arg",
            &format!("PROMETHEUS_IMAGE={}", image(&bases, "prometheus")),
            "--build-arg",
            &format!("ALERTMANAGER_IMAGE={}", image(&bases, "alertmanager")),
            "--build-arg",
            "GITRELOAD_PREBUILT=gitreload",
            "-t",
            &name,
            context.to_str().unwrap(),
        ];
        let out = run_cmd_env(
            "docker",
            &args,
            &[("DOCKER_BUILDKIT", "0")],
            Duration::from_secs(900),
        )?;
        // The legacy builder leaves each earlier stage's image behind,
        // untagged: remember every image id it printed, to remove them,
        // except the bases it started from (removed by name when this run
        // made them, left alone when reused).
        cleanup.image_ids.extend(
            out.lines()
                .filter_map(|l| l.trim().strip_prefix("---> "))
                .filter(|id| id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()))
                .filter(|id| !base_ids.iter().any(|b| b.starts_with(id)))
                .map(String::from),
        );
        println!(
            "built {name} from docker/Dockerfile --target {target}: {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    for name in &cleanup.images {
        let size = docker(&["image", "inspect", "--format", "{{.Size}}", name])?;
        let bytes: f64 = size.trim().parse().unwrap_or(0.0);
        println!("image {name}: {:.0} MB", bytes / 1e6);
    }
    Ok(bases)
}

fn run_cmd_env(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, String> {
    // run_cmd with a few variables set: through env(1), so one code path
    // handles the timeout.
    let mut full: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    full.push(program.into());
    full.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    run_cmd("env", &refs, None, timeout)
}

// ---------------------------------------------------------------------------
// Cleanup

/// Everything the suite made, removed by name on drop (in reverse order of
/// creation): stacks (and the volumes they leave), secrets, the swarm, the
/// network the swarm made, images.
struct Cleanup {
    run: String,
    stacks: Vec<String>,
    secrets: Vec<String>,
    swarm: bool,
    gwbridge_was_there: bool,
    images: Vec<String>,
    /// Image ids the builds printed (stages' images the legacy builder
    /// keeps untagged).
    image_ids: Vec<String>,
}

impl Cleanup {
    fn new(run: &str) -> Self {
        Cleanup {
            run: run.into(),
            stacks: Vec::new(),
            secrets: Vec::new(),
            swarm: false,
            gwbridge_was_there: true,
            images: Vec::new(),
            image_ids: Vec::new(),
        }
    }
}

/// Removes one stack and waits (bounded) until its containers and network
/// are gone, then removes its volumes by name.
fn remove_stack(stack: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = docker(&["stack", "rm", stack]) {
        problems.push(e);
    }
    let gone = wait_for(
        &format!("stack {stack}'s containers to go"),
        Duration::from_secs(90),
        || {
            let left = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.stack.namespace={stack}"),
            ])?;
            if left.trim().is_empty() {
                Ok(())
            } else {
                Err(format!("{} containers left", left.lines().count()))
            }
        },
    );
    if let Err(e) = gone {
        problems.push(e);
    }
    let network = format!("{stack}_monitoring");
    let _ = wait_for(
        &format!("network {network} to go"),
        Duration::from_secs(60),
        || match docker(&["network", "inspect", &network]) {
            Ok(_) => Err("still there".into()),
            Err(_) => Ok(()),
        },
    );
    for volume in VOLUMES {
        let name = format!("{stack}_{volume}");
        if docker(&["volume", "inspect", &name]).is_err() {
            continue;
        }
        if let Err(e) = wait_for(
            &format!("volume {name} to be removed"),
            Duration::from_secs(60),
            || docker(&["volume", "rm", &name]).map(|_| ()),
        ) {
            problems.push(e);
        }
    }
    problems
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        for stack in self.stacks.drain(..).rev() {
            problems.extend(remove_stack(&stack));
        }
        for secret in self.secrets.drain(..) {
            if let Err(e) = docker(&["secret", "rm", &secret]) {
                problems.push(e);
            }
        }
        if self.swarm {
            if let Err(e) = docker(&["swarm", "leave", "--force"]) {
                problems.push(e);
            }
            // swarm init made docker_gwbridge; leaving keeps it.
            if !self.gwbridge_was_there {
                let _ = wait_for(
                    "docker_gwbridge to be removable",
                    Duration::from_secs(30),
                    || docker(&["network", "rm", "docker_gwbridge"]).map(|_| ()),
                )
                .map_err(|e| problems.push(e));
            }
        }
        for image in self.images.drain(..).rev() {
            if docker(&["image", "inspect", &image]).is_ok() {
                if let Err(e) = docker(&["image", "rm", &image]) {
                    problems.push(e);
                }
            }
        }
        // Newest first, so children go before their parents; ids already
        // removed with a tagged child are skipped.
        for id in self.image_ids.drain(..).rev() {
            if docker(&["image", "inspect", &id]).is_ok() {
                if let Err(e) = docker(&["image", "rm", &id]) {
                    problems.push(e);
                }
            }
        }
        if problems.is_empty() {
            println!("teardown: everything named {}* removed", self.run);
        } else {
            for p in problems {
                eprintln!("teardown problem: {p}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The suite's fixtures

struct Suite {
    run: String,
    dir: PathBuf,
    stack: String,
    /// The work clone the suite commits in and pushes from.
    work: PathBuf,
    webhook_secret: String,
    override_file: PathBuf,
    revision: u32,
    /// Commit ids by revision marker.
    commits: BTreeMap<String, String>,
    measured: Vec<(String, String)>,
    /// Dropped with the suite: removes everything, by name.
    cleanup: Cleanup,
}

/// One Prometheus config revision: its marker in external_labels.
fn prom_marker(rev: &str) -> String {
    format!("revision: {rev}")
}

impl Suite {
    fn cleanup(&mut self) -> &mut Cleanup {
        &mut self.cleanup
    }

    /// Takes the cleanup guard: on an error it is dropped here, removing
    /// what was made so far.
    fn start(run: &str, bases: &str, dir: &Path, mut cleanup: Cleanup) -> Result<Suite, String> {
        // Swarm init on loopback: this engine accepts 127.0.0.1 as the
        // advertise address for a single node, so no interface is needed.
        cleanup.gwbridge_was_there = docker(&["network", "inspect", "docker_gwbridge"]).is_ok();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().unwrap().port()
        };
        let listen = format!("127.0.0.1:{port}");
        docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            &listen,
        ])?;
        cleanup.swarm = true;
        let node = docker(&["info", "--format", "{{.Swarm.NodeID}}"])?;
        // Step 1 of the stack's instructions: label the node.
        docker(&[
            "node",
            "update",
            "--label-add",
            "prometheus=true",
            "--label-add",
            "alertmanager=true",
            node.trim(),
        ])?;

        // Keys: the deploy key gitreload uses, the git server's host key.
        for key in ["deploy_key", "host_key"] {
            run_cmd(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    key,
                    "-f",
                    dir.join(key).to_str().unwrap(),
                ],
                None,
                COMMAND_TIMEOUT,
            )?;
        }
        let host_pub = fs::read_to_string(dir.join("host_key.pub")).map_err(|e| e.to_string())?;
        let known_hosts = format!(
            "gitserver {}\n",
            host_pub
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        );
        fs::write(dir.join("known_hosts"), &known_hosts).map_err(|e| e.to_string())?;
        let webhook_secret = format!("{run}-{:016x}", fastrand::u64(..));

        // Step 2: the external secrets (this run's names, mapped to the
        // stack's in the override).
        for (secret, content) in [
            (
                "gitreload_ssh_key",
                fs::read(dir.join("deploy_key")).unwrap(),
            ),
            ("gitreload_known_hosts", known_hosts.clone().into_bytes()),
            (
                "gitreload_webhook_secret",
                webhook_secret.clone().into_bytes(),
            ),
        ] {
            let name = format!("{run}-{secret}");
            cleanup.secrets.push(name.clone());
            run_cmd(
                "docker",
                &["secret", "create", &name, "-"],
                Some(&content),
                COMMAND_TIMEOUT,
            )?;
        }

        // The config repository: bare on a directory the git server
        // bind-mounts, a work clone here; first commit is the example
        // config with revision markers.
        let git_dir = dir.join("git");
        fs::create_dir(&git_dir).map_err(|e| e.to_string())?;
        run_cmd(
            "git",
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                git_dir.join("config.git").to_str().unwrap(),
            ],
            None,
            COMMAND_TIMEOUT,
        )?;
        let work = dir.join("work");
        run_cmd(
            "git",
            &[
                "clone",
                "-q",
                git_dir.join("config.git").to_str().unwrap(),
                work.to_str().unwrap(),
            ],
            None,
            COMMAND_TIMEOUT,
        )?;
        for (k, v) in [
            ("user.name", "swarm suite"),
            ("user.email", "swarm@example.invalid"),
            ("commit.gpgsign", "false"),
        ] {
            git(&work, &["config", k, v])?;
        }
        git(&work, &["checkout", "-q", "-b", "main"])?;
        copy_dir(&repo_root().join("deploy/example-config"), &work)?;

        let override_file = dir.join("override.yml");
        fs::write(&override_file, override_yaml(run, bases, dir)).map_err(|e| e.to_string())?;

        let mut suite = Suite {
            run: run.into(),
            dir: dir.into(),
            stack: run.into(),
            work,
            webhook_secret,
            override_file,
            revision: 0,
            commits: BTreeMap::new(),
            measured: Vec::new(),
            cleanup,
        };
        suite.commit_revision("first", true)?;
        Ok(suite)
    }

    // --- the config repository

    /// Writes revision `rev` (a marker in Prometheus' external_labels and a
    /// distinct resolve_timeout in Alertmanager's global section), commits
    /// and pushes it. Returns the commit id.
    fn commit_revision(&mut self, message: &str, alertmanager_too: bool) -> Result<String, String> {
        self.revision += 1;
        let rev = format!("rev{}", self.revision);
        let prom = self.work.join("prometheus/prometheus.yml");
        let text = fs::read_to_string(&prom).map_err(|e| e.to_string())?;
        let text = set_marker(
            &text,
            "    cluster: swarm-example\n",
            &format!("    {}\n", prom_marker(&rev)),
        );
        fs::write(&prom, text).map_err(|e| e.to_string())?;
        if alertmanager_too {
            let am = self.work.join("alertmanager/alertmanager.yml");
            let text = fs::read_to_string(&am).map_err(|e| e.to_string())?;
            let text = replace_line_starting(
                &text,
                "  resolve_timeout:",
                &format!("  resolve_timeout: {}m", 4 + self.revision),
            );
            fs::write(&am, text).map_err(|e| e.to_string())?;
        }
        self.push(&format!("{message} ({rev})"), &rev)
    }

    fn push(&mut self, message: &str, rev: &str) -> Result<String, String> {
        git(&self.work, &["add", "-A"])?;
        git(&self.work, &["commit", "-q", "-m", message])?;
        git(&self.work, &["push", "-q", "origin", "main"])?;
        let id = git(&self.work, &["rev-parse", "HEAD"])?.trim().to_string();
        self.commits.insert(rev.into(), id.clone());
        Ok(id)
    }

    fn current_rev(&self) -> String {
        format!("rev{}", self.revision)
    }

    fn am_marker(&self, revision: u32) -> String {
        format!("resolve_timeout: {}m", 4 + revision)
    }

    // --- looking at the stack

    fn service(&self, name: &str) -> String {
        format!("{}_{name}", self.stack)
    }

    /// Running containers of a service (ids).
    fn containers(&self, service: &str) -> Result<Vec<String>, String> {
        Ok(docker(&[
            "ps",
            "-q",
            "--filter",
            &format!(
                "label=com.docker.swarm.service.name={}",
                self.service(service)
            ),
        ])?
        .lines()
        .map(String::from)
        .collect())
    }

    fn probe(&self) -> Result<String, String> {
        self.containers("probe")?
            .into_iter()
            .next()
            .ok_or_else(|| "the probe container is not running".to_string())
    }

    /// Runs a shell script in the probe container on the overlay network.
    fn in_probe(&self, script: &str) -> Result<String, String> {
        let probe = self.probe()?;
        docker(&["exec", &probe, "sh", "-c", script])
    }

    /// A records of `name` as the probe sees them (Swarm's DNS).
    fn resolve(&self, name: &str) -> Result<Vec<String>, String> {
        let out = self.in_probe(&format!(
            "getent ahostsv4 {name} | awk '{{print $1}}' | sort -u"
        ))?;
        Ok(out.lines().map(String::from).collect())
    }

    /// One HTTP request from the probe: (status, body).
    fn http(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Result<(u16, String), String> {
        let mut script = format!("curl -sS -m 5 -o /tmp/body -w '%{{http_code}}' -X {method}");
        for (k, v) in headers {
            let _ = write!(script, " -H '{k}: {v}'");
        }
        if !body.is_empty() {
            let _ = write!(script, " --data-binary '{body}'");
        }
        let _ = write!(script, " '{url}'; echo; cat /tmp/body");
        let out = self.in_probe(&script)?;
        let (status, rest) = out.split_once('\n').unwrap_or((&out, ""));
        let status = status
            .trim()
            .parse()
            .map_err(|_| format!("{method} {url}: no status in {out:?}"))?;
        Ok((status, rest.to_string()))
    }

    fn get_ok(&self, url: &str) -> Result<String, String> {
        match self.http("GET", url, &[], "")? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("GET {url}: {status} {}", body.trim())),
        }
    }

    /// The revision marker each Prometheus replica (every address of
    /// tasks.prometheus) serves as its live config.
    fn prometheus_revisions(&self) -> Result<BTreeMap<String, String>, String> {
        let mut live = BTreeMap::new();
        for ip in self.resolve("tasks.prometheus")? {
            let body = self
                .get_ok(&format!("http://{ip}:9090/api/v1/status/config"))
                .unwrap_or_default();
            let rev = body
                .split("revision: ")
                .nth(1)
                .map(|r| {
                    r.chars()
                        .take_while(|c| c.is_ascii_alphanumeric())
                        .collect()
                })
                .unwrap_or_else(|| "none".to_string());
            live.insert(ip, rev);
        }
        Ok(live)
    }

    /// Waits until exactly `replicas` Prometheus replicas are ready and all
    /// serve `rev`.
    fn wait_prometheus(
        &self,
        replicas: usize,
        rev: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        wait_for(
            &format!("{replicas} Prometheus replicas serving {rev}"),
            CONVERGE,
            || {
                let live = self.prometheus_revisions()?;
                if live.len() == replicas && live.values().all(|r| r == rev) {
                    for ip in live.keys() {
                        self.get_ok(&format!("http://{ip}:9090/-/ready"))?;
                    }
                    Ok(live)
                } else {
                    Err(format!("{live:?}"))
                }
            },
        )
    }

    /// Alertmanager's /api/v2/status of one service's task.
    fn alertmanager_status(&self, service: &str) -> Result<serde_json::Value, String> {
        let body = self.get_ok(&format!("http://tasks.{service}:9093/api/v2/status"))?;
        serde_json::from_str(&body).map_err(|e| format!("{service} status: {e}: {body}"))
    }

    fn wait_alertmanagers(&self, revision: u32) -> Outcome {
        let marker = self.am_marker(revision);
        for service in ["alertmanager_1", "alertmanager_2"] {
            wait_for(
                &format!("{service} ready with `{marker}`"),
                CONVERGE,
                || {
                    self.get_ok(&format!("http://tasks.{service}:9093/-/ready"))?;
                    let status = self.alertmanager_status(service)?;
                    let original = status["config"]["original"].as_str().unwrap_or("");
                    ensure(original.contains(&marker), || {
                        format!("{service} config has no `{marker}`")
                    })
                },
            )?;
        }
        Ok(())
    }

    /// gitreload's /metrics for one of its services, from the probe.
    fn gitreload_metrics(&self, service: &str) -> Result<String, String> {
        self.get_ok(&format!("http://tasks.{service}:9108/metrics"))
    }

    fn signed_sync(&self, service: &str) -> Result<(u16, String), String> {
        let body = r#"{"ref":"refs/heads/main"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(self.webhook_secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        self.http(
            "POST",
            &format!("http://tasks.{service}:9108/sync"),
            &[
                ("X-Hub-Signature-256", signature),
                ("Content-Type", "application/json".into()),
            ],
            body,
        )
    }

    fn volume_dir(&self, volume: &str) -> Result<PathBuf, String> {
        let name = format!("{}_{volume}", self.stack);
        let out = docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &name])?;
        Ok(PathBuf::from(out.trim()))
    }

    /// Prints `docker service ps --no-trunc` and the logs of every service.
    fn diagnose(&self) {
        for service in SERVICES {
            let name = self.service(service);
            match docker(&["service", "ps", "--no-trunc", &name]) {
                Ok(out) => println!("$ docker service ps --no-trunc {name}\n{out}"),
                Err(e) => println!("{e}"),
            }
            match docker(&["service", "logs", "--no-trunc", "--tail", "40", &name]) {
                Ok(out) => println!("$ docker service logs --tail 40 {name}\n{out}"),
                Err(e) => println!("{e}"),
            }
        }
    }

    fn deploy(&mut self, stack: &str, extra: Option<&Path>) -> Outcome {
        self.cleanup().stacks.push(stack.into());
        let file = repo_root().join("deploy/stack.yml");
        let mut args = vec![
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            file.to_str().unwrap(),
            "-c",
            self.override_file.to_str().unwrap(),
        ];
        if let Some(extra) = extra {
            args.push("-c");
            args.push(extra.to_str().unwrap());
        }
        args.push(stack);
        docker(&args).map(|_| ())
    }

    fn health(container: &str) -> Result<String, String> {
        Ok(
            docker(&["inspect", "--format", "{{.State.Health.Status}}", container])?
                .trim()
                .to_string(),
        )
    }

    // --- scenarios

    fn deploy_from_empty_swarm(&mut self) -> Outcome {
        let services = docker(&["service", "ls", "-q"])?;
        ensure(services.trim().is_empty(), || {
            format!("swarm not empty: {services}")
        })?;
        let started = Instant::now();
        let stack = self.stack.clone();
        self.deploy(&stack, None)?;
        let rev = self.current_rev();
        wait_for("Prometheus serving the first commit", CONVERGE, || {
            let live = self.prometheus_revisions()?;
            ensure(live.values().any(|r| *r == rev), || format!("{live:?}"))
        })?;
        self.measured.push((
            "docker stack deploy -> first config live on Prometheus".into(),
            format!("{:.1} s", started.elapsed().as_secs_f64()),
        ));
        self.wait_prometheus(1, &rev)?;
        self.wait_alertmanagers(self.revision)?;
        self.measured.push((
            "docker stack deploy -> both Alertmanagers on the first config".into(),
            format!("{:.1} s", started.elapsed().as_secs_f64()),
        ));
        // The first config each application runs is the commit gitreload
        // checked: reload confirmed, the commit is the deployed one.
        let first = self.commits[&rev].clone();
        for service in ["gitreload_prometheus", "gitreload_alertmanager"] {
            wait_for(
                &format!("{service} reporting {first} deployed"),
                CONVERGE,
                || {
                    let m = self.gitreload_metrics(service)?;
                    ensure(
                        m.contains(&format!(
                            "gitreload_deployed_commit_info{{commit=\"{first}\""
                        )),
                        || {
                            m.lines()
                                .filter(|l| l.contains("commit"))
                                .collect::<Vec<_>>()
                                .join("\n")
                        },
                    )
                },
            )?;
        }
        let live = self.get_ok("http://tasks.prometheus:9090/api/v1/query?query=prometheus_config_last_reload_successful")?;
        ensure(live.contains("\"1\"]"), || {
            format!("last reload not successful: {live}")
        })?;
        // The Alertmanagers see each other.
        for service in ["alertmanager_1", "alertmanager_2"] {
            wait_for(
                &format!("{service} to have 2 cluster peers"),
                CONVERGE,
                || {
                    let status = self.alertmanager_status(service)?;
                    let peers = status["cluster"]["peers"]
                        .as_array()
                        .map(Vec::len)
                        .unwrap_or(0);
                    ensure(peers == 2 && status["cluster"]["status"] == "ready", || {
                        format!("{}", status["cluster"])
                    })
                },
            )?;
        }
        // Every gitreload task is healthy through the image's HEALTHCHECK.
        for service in ["gitreload_prometheus", "gitreload_alertmanager"] {
            wait_for(&format!("{service} healthy"), CONVERGE, || {
                let ids = self.containers(service)?;
                ensure(ids.len() == 1, || format!("{} containers", ids.len()))?;
                let health = Self::health(&ids[0])?;
                ensure(health == "healthy", || health)
            })?;
        }
        let cmd = docker(&[
            "inspect",
            "--format",
            "{{json .Config.Healthcheck.Test}} {{.Config.User}}",
            &self.containers("gitreload_prometheus")?[0],
        ])?;
        println!("gitreload task healthcheck and user: {}", cmd.trim());
        self.measured.push((
            "docker stack deploy -> every gitreload task healthy".into(),
            format!("{:.1} s", started.elapsed().as_secs_f64()),
        ));
        Ok(())
    }

    fn push_reaches_every_replica(&mut self) -> Outcome {
        docker(&[
            "service",
            "scale",
            "--detach",
            &format!("{}=2", self.service("prometheus")),
        ])?;
        let old = self.current_rev();
        self.wait_prometheus(2, &old)?;
        let pushed = Instant::now();
        self.commit_revision("both replicas", true)?;
        let rev = self.current_rev();
        // As a git host's push hook would: one signed POST per sidecar.
        for service in ["gitreload_prometheus", "gitreload_alertmanager"] {
            let (status, body) = self.signed_sync(service)?;
            ensure((200..300).contains(&status), || {
                format!("{service}: {status} {body}")
            })?;
        }
        let live = self.wait_prometheus(2, &rev)?;
        self.measured.push((
            "push -> live on both Prometheus replicas (tasks.prometheus, webhook)".into(),
            format!("{:.1} s", pushed.elapsed().as_secs_f64()),
        ));
        println!("replicas: {live:?}");
        self.wait_alertmanagers(self.revision)?;
        self.measured.push((
            "push -> live on both Alertmanager services".into(),
            format!("{:.1} s", pushed.elapsed().as_secs_f64()),
        ));
        // Each replica was reloaded by address.
        let m = self.gitreload_metrics("gitreload_prometheus")?;
        for ip in live.keys() {
            ensure(
                m.lines().any(|l| {
                    l.starts_with("gitreload_reload_total")
                        && l.contains(&format!("target=\"{ip}\""))
                        && l.contains("result=\"success\"")
                }),
                || format!("no successful reload of {ip} in\n{m}"),
            )?;
        }
        Ok(())
    }

    fn invalid_config_is_rejected(&mut self) -> Outcome {
        let good = self.current_rev();
        let volume = self.volume_dir("prometheus_config")?;
        let before =
            fs::read_to_string(volume.join("prometheus.yml")).map_err(|e| e.to_string())?;
        let prom = self.work.join("prometheus/prometheus.yml");
        let text = fs::read_to_string(&prom).unwrap();
        fs::write(
            &prom,
            text.replace(
                "scrape_interval: 15s",
                "scrape_interval: fifteen-seconds-invalid",
            ),
        )
        .unwrap();
        let bad = self.push("an invalid scrape_interval", "invalid")?;
        let short = &bad[..7];
        let (status, body) = self.signed_sync("gitreload_prometheus")?;
        ensure((200..300).contains(&status), || format!("{status} {body}"))?;
        wait_for(
            "gitreload_rejected_commit_info naming the commit",
            CONVERGE,
            || {
                let m = self.gitreload_metrics("gitreload_prometheus")?;
                ensure(
                    m.lines().any(|l| {
                        l.starts_with("gitreload_rejected_commit_info") && l.contains(short)
                    }),
                    || "not yet".into(),
                )
            },
        )?;
        let logs = docker(&[
            "service",
            "logs",
            "--raw",
            "--no-trunc",
            &self.service("gitreload_prometheus"),
        ])?;
        let line = logs
            .lines()
            .find(|l| l.contains(short))
            .ok_or_else(|| format!("no log line names {short}:\n{}", tail(&logs, 20)))?;
        println!("log: {}", truncate(line, 300));
        // Never on the volume; both replicas keep the last good config.
        let after = fs::read_to_string(volume.join("prometheus.yml")).map_err(|e| e.to_string())?;
        ensure(after == before, || {
            "prometheus.yml on the volume changed".into()
        })?;
        ensure(!after.contains("fifteen-seconds-invalid"), || {
            "the invalid config reached the volume".into()
        })?;
        self.wait_prometheus(2, &good)?;
        let q = self.get_ok("http://tasks.prometheus:9090/api/v1/query?query=prometheus_config_last_reload_successful")?;
        ensure(!q.contains("\"0\"]"), || {
            format!("a replica's last reload failed: {q}")
        })?;
        // The work tree goes back to the good text for what follows.
        fs::write(&prom, text).unwrap();
        Ok(())
    }

    fn killed_prometheus_restarts_on_last_good(&mut self) -> Outcome {
        let good = self.current_rev();
        let victims = self.containers("prometheus")?;
        ensure(victims.len() == 2, || {
            format!("{} Prometheus containers", victims.len())
        })?;
        docker(&["kill", &victims[0]])?;
        wait_for(
            "Swarm to replace the killed Prometheus task",
            CONVERGE,
            || {
                let now = self.containers("prometheus")?;
                ensure(now.len() == 2 && !now.contains(&victims[0]), || {
                    format!("{now:?}")
                })
            },
        )?;
        // The replacement reads the volume: the last good config, though
        // the newest upstream commit is the rejected one.
        self.wait_prometheus(2, &good)?;
        let ps = docker(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.CurrentState}} {{.Error}}",
            &self.service("prometheus"),
        ])?;
        println!("{}", ps.trim());
        Ok(())
    }

    fn killed_gitreload_restarts_quietly(&mut self) -> Outcome {
        // First a good commit after the rejected one, confirmed everywhere.
        self.commit_revision("fixed", false)?;
        let rev = self.current_rev();
        let (status, _) = self.signed_sync("gitreload_prometheus")?;
        ensure((200..300).contains(&status), || format!("sync: {status}"))?;
        self.wait_prometheus(2, &rev)?;
        wait_for("the reload round confirmed", CONVERGE, || {
            let m = self.gitreload_metrics("gitreload_prometheus")?;
            let pending: Vec<&str> = m
                .lines()
                .filter(|l| l.starts_with("gitreload_target_pending{") && !l.ends_with(" 0"))
                .collect();
            ensure(pending.is_empty(), || pending.join("\n"))
        })?;
        let config = self.volume_dir("prometheus_config")?;
        let state = self.volume_dir("gitreload_prometheus_state")?;
        let files_before = snapshot(&config)?;
        let mirror_before = snapshot(&state.join("mirror.git/objects/pack"))?;
        let mirror_inode = fs::metadata(state.join("mirror.git"))
            .map_err(|e| e.to_string())?
            .ino();
        let victim = self.containers("gitreload_prometheus")?;
        ensure(victim.len() == 1, || format!("{victim:?}"))?;
        docker(&["kill", &victim[0]])?;
        let replacement = wait_for("Swarm to restart gitreload_prometheus", CONVERGE, || {
            let now = self.containers("gitreload_prometheus")?;
            ensure(now.len() == 1 && now[0] != victim[0], || format!("{now:?}"))?;
            Ok(now[0].clone())
        })?;
        // Its first poll done (the sync loop runs at start).
        let m = wait_for("the new task's first successful poll", CONVERGE, || {
            let m = self.gitreload_metrics("gitreload_prometheus")?;
            let polled = m.lines().any(|l| {
                l.starts_with("gitreload_last_sync_success_timestamp_seconds ")
                    && !l.ends_with(" 0")
                    && !l.ends_with(" 0.0")
            });
            ensure(polled, || "no successful poll yet".into())?;
            Ok(m)
        })?;
        let reloads: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("gitreload_reload_total{") && !l.ends_with(" 0"))
            .collect();
        ensure(reloads.is_empty(), || {
            format!("the confirmed round was reloaded again: {reloads:?}")
        })?;
        let logs = docker(&["logs", &replacement]).unwrap_or_default();
        ensure(!logs.contains("reloading all targets"), || {
            "the restart reloaded the targets".into()
        })?;
        ensure(snapshot(&config)? == files_before, || {
            "a file on the config volume was rewritten".into()
        })?;
        ensure(
            snapshot(&state.join("mirror.git/objects/pack"))? == mirror_before,
            || "the mirror's packs changed (re-clone or fetch of known objects)".into(),
        )?;
        let inode = fs::metadata(state.join("mirror.git"))
            .map_err(|e| e.to_string())?
            .ino();
        ensure(inode == mirror_inode, || {
            "mirror.git was recreated (re-clone)".into()
        })?;
        Ok(())
    }

    fn webhook_from_the_overlay(&mut self) -> Outcome {
        let accepted = |m: &str, result: &str| -> f64 {
            m.lines()
                .find(|l| {
                    l.starts_with("gitreload_webhook_requests_total{")
                        && l.contains(&format!("result=\"{result}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        let m0 = self.gitreload_metrics("gitreload_prometheus")?;
        let (status, body) = self.http(
            "POST",
            "http://tasks.gitreload_prometheus:9108/sync",
            &[("Content-Type", "application/json".into())],
            r#"{"ref":"refs/heads/main"}"#,
        )?;
        ensure(status == 401, || {
            format!("unsigned POST /sync: {status} {body}")
        })?;
        let (status, body) = self.http(
            "POST",
            "http://tasks.gitreload_prometheus:9108/sync",
            &[("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))],
            r#"{"ref":"refs/heads/main"}"#,
        )?;
        ensure(status == 401, || {
            format!("wrongly signed POST /sync: {status} {body}")
        })?;
        self.commit_revision("webhook", false)?;
        let rev = self.current_rev();
        let (status, body) = self.signed_sync("gitreload_prometheus")?;
        ensure((200..300).contains(&status), || {
            format!("signed POST /sync: {status} {body}")
        })?;
        self.wait_prometheus(2, &rev)?;
        let m1 = self.gitreload_metrics("gitreload_prometheus")?;
        ensure(
            accepted(&m1, "accepted") >= accepted(&m0, "accepted") + 1.0,
            || format!("accepted webhook not counted:\n{m1}"),
        )?;
        ensure(
            accepted(&m1, "unauthorized") >= accepted(&m0, "unauthorized") + 2.0,
            || "unauthorized webhooks not counted".into(),
        )?;
        Ok(())
    }

    fn scale_to_three(&mut self) -> Outcome {
        let rev = self.current_rev();
        docker(&[
            "service",
            "scale",
            "--detach",
            &format!("{}=3", self.service("prometheus")),
        ])?;
        let live = self.wait_prometheus(3, &rev)?;
        println!("replicas: {live:?}");
        Ok(())
    }

    /// A second stack on fresh volumes: Prometheus mounts its empty config
    /// volume before gitreload exists; gitreload_alertmanager writes its
    /// volume before either Alertmanager exists.
    fn start_order(&mut self) -> Outcome {
        // The first stack is done with; the second needs the node's CPU.
        let first = self.stack.clone();
        let problems = remove_stack(&first);
        self.cleanup().stacks.retain(|s| *s != first);
        ensure(problems.is_empty(), || problems.join("\n"))?;

        let stack = format!("{}o", self.run);
        self.stack = stack.clone();
        let held = self.dir.join("order.yml");
        fs::write(
            &held,
            "version: \"3.8\"\nservices:\n  gitreload_prometheus:\n    deploy:\n      replicas: 0\n  \
             alertmanager_1:\n    deploy:\n      replicas: 0\n  alertmanager_2:\n    deploy:\n      replicas: 0\n",
        )
        .unwrap();
        self.deploy(&stack, Some(&held))?;
        let rev = self.current_rev();

        // Application first: Prometheus has started (and exited, no config)
        // on the empty volume; its nocopy mount left the volume root's.
        wait_for(
            "Prometheus to have run on the empty volume",
            CONVERGE,
            || {
                let ps = docker(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!(
                        "label=com.docker.swarm.service.name={}",
                        self.service("prometheus")
                    ),
                    "--filter",
                    "status=exited",
                ])?;
                ensure(!ps.trim().is_empty(), || {
                    "no exited Prometheus container yet".into()
                })
            },
        )?;
        let config = self.volume_dir("prometheus_config")?;
        let meta = fs::metadata(&config).map_err(|e| e.to_string())?;
        println!(
            "prometheus_config before gitreload: uid {} mode {:o}, {} entries",
            meta.uid(),
            meta.mode() & 0o7777,
            fs::read_dir(&config).map(|d| d.count()).unwrap_or(0)
        );
        docker(&[
            "service",
            "scale",
            "--detach",
            &format!("{}=1", self.service("gitreload_prometheus")),
        ])?;
        self.wait_prometheus(1, &rev)?;
        let meta = fs::metadata(config.join("prometheus.yml")).map_err(|e| e.to_string())?;
        println!(
            "prometheus.yml on the volume: uid {} mode {:o}",
            meta.uid(),
            meta.mode() & 0o7777
        );

        // gitreload first: it writes the empty volume, then the
        // Alertmanagers start on it.
        let am = self.volume_dir("alertmanager_config")?;
        wait_for(
            "gitreload_alertmanager to deploy onto its empty volume",
            CONVERGE,
            || {
                ensure(am.join("alertmanager.yml").is_file(), || {
                    "no alertmanager.yml yet".into()
                })
            },
        )?;
        let meta = fs::metadata(&am).map_err(|e| e.to_string())?;
        println!(
            "alertmanager_config after gitreload alone: uid {} mode {:o}",
            meta.uid(),
            meta.mode() & 0o7777
        );
        for service in ["alertmanager_1", "alertmanager_2"] {
            docker(&[
                "service",
                "scale",
                "--detach",
                &format!("{}=1", self.service(service)),
            ])?;
        }
        self.wait_alertmanagers(self.last_am_revision())?;
        Ok(())
    }

    /// The revision whose Alertmanager marker is in the newest commit.
    fn last_am_revision(&self) -> u32 {
        let text = fs::read_to_string(self.work.join("alertmanager/alertmanager.yml")).unwrap();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("resolve_timeout: "))
            .and_then(|v| v.trim_end_matches('m').parse::<u32>().ok())
            .map(|m| m - 4)
            .unwrap_or(0)
    }
}

/// The second compose file: what the suite must change (images, the
/// repository URL, this run's secret names) and what it adds (the git
/// server and the probe). Everything else is deploy/stack.yml's own.
fn override_yaml(run: &str, bases: &str, dir: &Path) -> String {
    let git = dir.join("git");
    format!(
        r#"version: "3.8"
services:
  prometheus:
    image: {bases}-prometheus
  alertmanager_1:
    image: {bases}-alertmanager
  alertmanager_2:
    image: {bases}-alertmanager
  gitreload_prometheus:
    image: {run}-gitreload-prometheus
    environment:
      GITRELOAD_REPO: ssh://git@gitserver/srv/git/config.git
  gitreload_alertmanager:
    image: {run}-gitreload-alertmanager
    environment:
      GITRELOAD_REPO: ssh://git@gitserver/srv/git/config.git
  # Services of its own, so no VIP is involved (see README: this kernel
  # has no IPVS): the name answers with the task's address.
  gitserver:
    image: {bases}-gitserver
    deploy:
      endpoint_mode: dnsrr
    volumes:
      - type: bind
        source: {git}
        target: /srv/git
        read_only: true
    secrets:
      - source: git_host_key
        uid: "0"
        gid: "0"
        mode: 0400
      - source: git_authorized_keys
        mode: 0444
    networks:
      - monitoring
  probe:
    image: {bases}-base
    command: ["sleep", "infinity"]
    deploy:
      endpoint_mode: dnsrr
    networks:
      - monitoring
secrets:
  gitreload_ssh_key:
    external: true
    name: {run}-gitreload_ssh_key
  gitreload_known_hosts:
    external: true
    name: {run}-gitreload_known_hosts
  gitreload_webhook_secret:
    external: true
    name: {run}-gitreload_webhook_secret
  git_host_key:
    file: {host_key}
  git_authorized_keys:
    file: {client_pub}
"#,
        git = git.display(),
        host_key = dir.join("host_key").display(),
        client_pub = dir.join("deploy_key.pub").display(),
    )
}

// ---------------------------------------------------------------------------
// Small helpers

fn copy_dir(from: &Path, to: &Path) -> Outcome {
    for entry in fs::read_dir(from).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            fs::create_dir_all(&target).map_err(|e| e.to_string())?;
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Puts `marker` on the line after `anchor`, replacing a previous marker.
fn set_marker(text: &str, anchor: &str, marker: &str) -> String {
    let mut out = String::new();
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        if line == anchor {
            if lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("revision: "))
            {
                lines.next();
            }
            out.push_str(marker);
        }
    }
    assert!(out.contains(marker), "anchor {anchor:?} not found");
    out
}

fn replace_line_starting(text: &str, prefix: &str, with: &str) -> String {
    let out: Vec<&str> = text
        .lines()
        .map(|l| if l.starts_with(prefix) { with } else { l })
        .collect();
    assert!(out.contains(&with), "no line starts with {prefix:?}");
    out.join("\n") + "\n"
}

/// (path, inode, mtime in ns) of every file below `dir`, sorted.
fn snapshot(dir: &Path) -> Result<Vec<(PathBuf, u64, i128)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let entry = entry.map_err(|e| e.to_string())?;
            let meta = entry.metadata().map_err(|e| e.to_string())?;
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((
                entry.path(),
                meta.ino(),
                meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ));
        }
    }
    out.sort();
    Ok(out)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
