//! Hostile network: attacks on gitreload's HTTP port and on its fetch, each
//! test named for the attack it stops. The HTTP attacks come from raw TCP
//! clients in the test; the slow git servers are made here with std::net on
//! their own loopback addresses. Threads and sockets are counted in /proc.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::gitreload::http::MAX_CONNECTIONS;
use hmac::{Hmac, Mac};
use support::sidecar::{prometheus_yml, Sidecar};
use support::*;

const T: Duration = Duration::from_secs(30);

fn seeded() -> Sidecar {
    let s = Sidecar::new();
    s.upstream.write("prometheus.yml", prometheus_yml("one"));
    s.upstream.commit_and_push("one");
    s
}

/// gitreload with its HTTP server on a free loopback port, polling hourly
/// (only webhooks make it sync), started and with its first commit live.
fn serving(s: &Sidecar, extra: &[(&str, &str)]) -> (RunningGitreload, String) {
    let addr = free_addr("127.0.0.1");
    let mut g = s
        .gitreload_file()
        .env("GITRELOAD_LISTEN", &addr)
        .env("GITRELOAD_INTERVAL", "1h");
    for (k, v) in extra {
        g = g.env(k, v);
    }
    let mut run = g.spawn();
    run.wait_for_event(T, "config deployed");
    (run, addr)
}

/// How many sockets the process has open (from /proc/PID/fd).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// How many of the process's sockets (in /proc/PID/fd) are TCP
/// connections to `port` (their inodes in /proc/net/tcp).
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| {
                    let target = std::fs::read_link(fd.path()).ok()?;
                    let target = target.to_string_lossy();
                    Some(
                        target
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port)
                && fields.get(9).is_some_and(|i| inodes.iter().any(|x| x == i))
        })
        .count()
}

/// How many threads the process has (from /proc/PID/task).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.count())
        .unwrap_or(0)
}

/// Every sync the process finished, whatever its result.
fn sync_count(addr: &str) -> f64 {
    let (status, text) = http_get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with("gitreload_sync_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends `headers` (a request head, blank line included) on a raw
/// connection and returns the status line of the answer, or what happened.
fn raw_request(addr: &str, head: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Err(e) => return format!("no answer ({e})"),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .next()
        .unwrap_or("connection closed")
        .to_string()
}

/// Sends a burst of 100 webhook requests spread over about a second and
/// checks how many syncs they caused: at most two per second the burst
/// lasted (one at once, one at the end of the window).
fn burst_of_100_causes_at_most_two_syncs_a_second(addr: &str, headers: &[(&str, &str)]) {
    let url = format!("http://{addr}/sync");
    let before = sync_count(addr);
    let started = Instant::now();
    for _ in 0..100 {
        let (status, body) = http_post(&url, headers, "{}");
        assert_eq!(status, 202, "{body}");
        std::thread::sleep(Duration::from_millis(8));
    }
    let lasted = started.elapsed();
    wait_until("the webhook syncs to be counted", T, || {
        sync_count(addr) > before
    });
    // The sync scheduled for the end of the window, and its run.
    std::thread::sleep(Duration::from_millis(2500));
    let syncs = sync_count(addr) - before;
    // Sending 100 requests may take longer than a second on a loaded
    // machine: each second (or part) of the burst allows one more.
    let allowed = 1.0 + lasted.as_secs_f64().ceil().max(1.0);
    assert!(
        (1.0..=allowed).contains(&syncs),
        "{syncs} syncs for 100 webhooks sent in {lasted:?} (at most {allowed})"
    );
}

#[test]
fn slowloris_headers_are_cut_off_by_the_header_timeout() {
    let s = seeded();
    let (mut run, addr) = serving(&s, &[]);
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: gitreload\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // One header byte every half second, for up to three header timeouts.
    let started = Instant::now();
    let mut cut_off = None;
    for _ in 0..60 {
        if conn.write_all(b"x").is_err() {
            cut_off = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match conn.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // Closed (or answered with an error, then closed).
            _ => {
                cut_off = Some(started.elapsed());
                break;
            }
        }
    }
    assert!(
        cut_off.is_some(),
        "a client trickling its headers kept its connection for {:?}",
        started.elapsed()
    );
    assert_eq!(http_get(&format!("http://{addr}/healthz")).0, 200);
    assert!(run.terminate().success());
}

#[test]
fn connection_flood_is_capped() {
    let s = seeded();
    let (mut run, addr) = serving(&s, &[]);
    let pid = run.pid();
    let baseline = sockets(pid);
    let flood: Vec<TcpStream> = (0..MAX_CONNECTIONS * 3)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    wait_until(
        "gitreload to take connections up to its limit",
        Duration::from_secs(10),
        || sockets(pid) >= baseline + MAX_CONNECTIONS,
    );
    // Give the accept loop time to take more, were it unbounded.
    std::thread::sleep(Duration::from_secs(1));
    let held = sockets(pid).saturating_sub(baseline);
    assert!(
        held <= MAX_CONNECTIONS,
        "{held} sockets held for {} idle connections (limit {MAX_CONNECTIONS})",
        flood.len()
    );
    drop(flood);
    wait_until("the server to answer again", T, || {
        matches!(
            try_http_get(&format!("http://{addr}/healthz")),
            Ok((200, _))
        )
    });
    assert!(run.terminate().success());
}

#[test]
fn gitlab_token_is_checked_before_the_body_is_read() {
    let s = seeded();
    let secret = "gitlab-token-secret";
    let (mut run, addr) = serving(&s, &[("GITRELOAD_WEBHOOK_SECRET", secret)]);
    let huge = 1u64 << 30;
    // Headers only: a server that waited for this body would never answer.
    let wrong_token = format!(
        "POST /sync HTTP/1.1\r\nHost: gitreload\r\nX-Gitlab-Token: wrong\r\nContent-Length: {huge}\r\n\r\n"
    );
    let answer = raw_request(&addr, &wrong_token);
    assert!(answer.starts_with("HTTP/1.1 401"), "wrong token: {answer}");
    let unsigned =
        format!("POST /sync HTTP/1.1\r\nHost: gitreload\r\nContent-Length: {huge}\r\n\r\n");
    let answer = raw_request(&addr, &unsigned);
    assert!(answer.starts_with("HTTP/1.1 401"), "no signature: {answer}");
    // A signed request whose body could not be held: refused by its length.
    let signed = format!(
        "POST /sync HTTP/1.1\r\nHost: gitreload\r\nX-Hub-Signature-256: {}\r\nContent-Length: {huge}\r\n\r\n",
        signature(secret, "")
    );
    let answer = raw_request(&addr, &signed);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "huge signed body: {answer}"
    );
    assert!(run.terminate().success());
}

#[test]
fn webhook_burst_of_100_signed_requests_causes_at_most_two_syncs() {
    let s = seeded();
    let secret = "burst-secret";
    let (mut run, addr) = serving(&s, &[("GITRELOAD_WEBHOOK_SECRET", secret)]);
    let sig = signature(secret, "{}");
    burst_of_100_causes_at_most_two_syncs_a_second(&addr, &[("X-Hub-Signature-256", &sig)]);
    assert!(run.terminate().success());
}

#[test]
fn unsigned_webhook_is_throttled_and_the_open_endpoint_is_warned_about() {
    let s = seeded();
    let (mut run, addr) = serving(&s, &[]);
    let warned = run
        .json_lines()
        .into_iter()
        .filter(|v| v["level"] == "warning")
        .any(|v| {
            v["event"]
                .as_str()
                .is_some_and(|e| e.contains("POST /sync is open"))
        });
    assert!(
        warned,
        "no start-up warning about the open webhook\n{}",
        run.output_tail(30)
    );
    burst_of_100_causes_at_most_two_syncs_a_second(&addr, &[]);
    assert!(run.terminate().success());
}

/// Size in bytes of every file below `dir`.
fn du(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[test]
fn other_branches_and_tags_are_never_fetched() {
    let s = seeded();
    s.upstream.git(&["tag", "-a", "-m", "release", "release-1"]);
    s.upstream.git(&["push", "-q", "origin", "release-1"]);
    // Elsewhere: a 16 MiB incompressible blob on another branch...
    s.upstream.git(&["checkout", "-q", "-b", "huge"]);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let blob: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    s.upstream.write("huge.bin", &blob);
    s.upstream.commit("huge");
    s.upstream.push_branch("huge");
    let huge = s.upstream.head();
    s.upstream.git(&["checkout", "-q", "main"]);
    // ... and 20,000 tags on it, made in the upstream repository itself.
    let lines: String = (0..20_000)
        .map(|i| format!("create refs/tags/t{i:05} {huge}\n"))
        .collect();
    let mut update = s.upstream.git_command();
    update
        .current_dir(s.upstream.bare_path())
        .args(["update-ref", "--stdin"])
        .stdin(std::process::Stdio::piped());
    let mut child = update.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let daemon = GitDaemon::start(&s.upstream);

    let mirror = s.state().join("mirror.git");
    let mirror_refs = || {
        let mut git = s.upstream.git_command();
        git.current_dir(&mirror)
            .args(["for-each-ref", "--format=%(refname)"]);
        let out = git.output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    for (reference, expected_ref) in [
        (None, "refs/remotes/origin/HEAD"),
        (Some("main"), "refs/remotes/origin/main"),
        (Some("release-1"), "refs/tags/release-1"),
    ] {
        let mut g = s.gitreload(&daemon.url()).arg("--once");
        if let Some(r) = reference {
            g = g.env("GITRELOAD_REF", r);
        }
        let out = g.run_once(T);
        assert!(out.status.success(), "{reference:?}: {}", out.stdout);
        assert_eq!(s.dest_file("prometheus.yml"), prometheus_yml("one"));
        let refs = mirror_refs();
        assert!(
            refs.iter().any(|r| r == expected_ref),
            "{reference:?}: {refs:?}"
        );
        assert!(
            refs.len() <= 3 && !refs.iter().any(|r| r.starts_with("refs/tags/t")),
            "{reference:?}: the mirror holds {} refs: {:?}",
            refs.len(),
            &refs[..refs.len().min(5)]
        );
        let size = du(&mirror);
        assert!(
            size < 1 << 20,
            "{reference:?}: the mirror holds {size} bytes; the huge branch was fetched"
        );
    }
    // The annotated tag came with its tag object.
    let mut cat = s.upstream.git_command();
    cat.current_dir(&mirror)
        .args(["cat-file", "-t", "refs/tags/release-1"]);
    let kind = cat.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&kind.stdout).trim(), "tag");
}

/// A git server that answers every connection with the start of a packet
/// and then one byte every 200 ms, forever: a per-read timeout never fires.
struct TricklingServer {
    addr: String,
    /// Connections the server still holds (it notices a close when its
    /// next byte cannot be written).
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl TricklingServer {
    /// `greeting` is sent once the request arrived, then the trickle.
    fn start(ip: &str, greeting: &'static [u8]) -> TricklingServer {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, a, st) = (open.clone(), accepted.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            // Bounded: the test stops it, or ten minutes pass.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !st.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        o.fetch_add(1, Ordering::SeqCst);
                        let (o, st) = (o.clone(), st.clone());
                        handlers.push(std::thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_millis(500)))
                                .unwrap();
                            let mut buf = [0u8; 4096];
                            let _ = conn.read(&mut buf);
                            let mut ok = conn.write_all(greeting).is_ok();
                            for _ in 0..3000 {
                                if !ok || st.load(Ordering::SeqCst) {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(200));
                                ok = conn.write_all(b"a").is_ok();
                            }
                            o.fetch_sub(1, Ordering::SeqCst);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        TricklingServer {
            addr,
            open,
            accepted,
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl TricklingServer {
    fn port(&self) -> u16 {
        self.addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }
}

impl Drop for TricklingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// The child processes of `pid` (of all its threads), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Lets gitreload's fetch time out again and again (its server never
/// finishes an answer) and checks that neither its threads, its sockets
/// nor its child processes grow with the count. `server`, when the slow
/// server is ours, says how many connections reached it and are still
/// open.
fn timed_out_fetches_leave_nothing_behind(g: Gitreload, server: Option<&TricklingServer>) {
    let mut run = g.env("GITRELOAD_FETCH_TIMEOUT", "1s").spawn();
    let pid = run.pid();
    let timeouts = |run: &RunningGitreload| {
        run.events("fetch failed")
            .iter()
            .filter(|e| {
                e["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("did not finish"))
            })
            .count()
    };
    wait_until_or(
        "a first fetch to time out",
        T,
        || timeouts(&run) >= 1,
        || run.output_tail(20),
    );
    let (threads_then, sockets_then) = (threads(pid), sockets(pid));
    wait_until_or(
        "seven more fetches to time out",
        Duration::from_secs(60),
        || timeouts(&run) >= 8,
        || run.output_tail(20),
    );
    // What a fetch abandoned just now may still hold while it ends.
    std::thread::sleep(Duration::from_millis(500));
    let (threads_now, sockets_now) = (threads(pid), sockets(pid));
    assert!(
        threads_now <= threads_then + 2,
        "threads grew from {threads_then} to {threads_now} over 7 timed-out fetches"
    );
    if let Some(server) = server {
        let held = connections_to(pid, server.port());
        assert!(
            held <= 1,
            "{held} sockets to the slow server after 8 timed-out fetches (sockets in all: {sockets_then} then, {sockets_now} now)"
        );
    }
    let kids = children(pid);
    assert!(kids.len() <= 1, "child processes left: {kids:?}");
    if let Some(server) = server {
        assert!(
            server.accepted.load(Ordering::SeqCst) >= 8,
            "the fetches did not reach the slow server"
        );
        assert!(
            server.open.load(Ordering::SeqCst) <= 2,
            "the slow server still holds {} connections",
            server.open.load(Ordering::SeqCst)
        );
    }
    assert!(run.terminate().success());
}

#[test]
fn slow_git_server_cannot_pile_up_threads_or_sockets() {
    // A pkt-line announcing 65,516 bytes, which then come one at a time.
    let server = TricklingServer::start("127.0.0.5", b"fff0");
    let s = Sidecar::new();
    let g = s.gitreload(&format!("git://{}/config.git", server.addr));
    timed_out_fetches_leave_nothing_behind(g, Some(&server));
}

#[test]
fn slow_smart_http_server_cannot_pile_up_threads_or_sockets() {
    let server = TricklingServer::start(
        "127.0.0.6",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nContent-Length: 1000000\r\n\r\nfff0",
    );
    let s = Sidecar::new();
    let g = s.gitreload(&format!("http://{}/config.git", server.addr));
    timed_out_fetches_leave_nothing_behind(g, Some(&server));
}

#[test]
fn slow_ssh_server_cannot_pile_up_ssh_processes_or_threads() {
    // An `ssh` first on PATH that answers like a server that trickles.
    let s = Sidecar::new();
    let bin = s.scratch().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ssh = bin.join("ssh");
    std::fs::write(
        &ssh,
        "#!/bin/sh\nprintf fff0\ni=0\nwhile [ $i -lt 3000 ]; do sleep 0.2; printf a || exit 0; i=$((i+1)); done\n",
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let g = s
        .gitreload("ssh://git@127.0.0.1:2222/config.git")
        .env("PATH", path);
    timed_out_fetches_leave_nothing_behind(g, None);
}

/// Sets (with `Some`) and returns the previous RLIMIT_NOFILE of `pid`.
fn nofile_limit(pid: u32, new: Option<libc::rlimit>) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new_ptr = new
        .as_ref()
        .map_or(std::ptr::null(), |n| n as *const libc::rlimit);
    // SAFETY: prlimit reads `new` (or nothing) and writes `old`, both live
    // for the call; `pid` is our running child.
    let done = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, new_ptr, &mut old) };
    assert_eq!(
        done,
        0,
        "prlimit on {pid}: {}",
        std::io::Error::last_os_error()
    );
    old
}

#[test]
fn file_descriptor_exhaustion_is_not_a_damaged_mirror() {
    let s = seeded();
    let mut run = s.gitreload_file().spawn();
    run.wait_for_event(T, "config deployed");
    let pid = run.pid();
    let mirror = s.state().join("mirror.git");
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&mirror).unwrap());
    let mirror_inode = inode();

    // The lowest descriptor number free in gitreload: with that as its
    // limit, every new descriptor (file, pipe, socket) fails with EMFILE.
    let open: std::collections::BTreeSet<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    let current = nofile_limit(pid, None);
    nofile_limit(
        pid,
        Some(libc::rlimit {
            rlim_cur: lowest_free as libc::rlim_t,
            rlim_max: current.rlim_max,
        }),
    );

    let cursor = run.cursor();
    s.upstream.write("prometheus.yml", prometheus_yml("two"));
    s.upstream.commit_and_push("two");
    wait_until_or(
        "a sync to fail for want of file descriptors",
        T,
        || {
            run.lines()[cursor..]
                .iter()
                .any(|l| l.contains("retry scheduled"))
        },
        || run.output_tail(20),
    );
    nofile_limit(pid, Some(current));
    s.wait_dest_file("prometheus.yml", &prometheus_yml("two"), T);

    let misjudged: Vec<String> = run.lines()[cursor..]
        .iter()
        .filter(|l| l.contains("mirror damaged") || l.contains("mirror unreadable"))
        .cloned()
        .collect();
    assert!(
        misjudged.is_empty(),
        "running out of descriptors was taken for a damaged mirror: {misjudged:?}"
    );
    assert_eq!(inode(), mirror_inode, "the mirror was rebuilt");
    assert!(run.terminate().success());
}
