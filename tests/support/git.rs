//! Git fixtures: an upstream repository a test edits and pushes to, and the
//! two network servers that serve it (git daemon, smart HTTP via nginx).
//!
//! All git commands run through the `git` CLI with an empty environment, a
//! private `HOME` (so no user or system config leaks in), a fixed identity
//! and `main` as the default branch.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use tempfile::TempDir;

/// `$(git --exec-path)`: where `git-daemon` and `git-http-backend` live.
pub fn git_exec_path() -> &'static Path {
    static EXEC_PATH: OnceLock<PathBuf> = OnceLock::new();
    EXEC_PATH.get_or_init(|| {
        let out = clean_command("git")
            .arg("--exec-path")
            .output()
            .expect("git is not installed");
        assert!(out.status.success(), "git --exec-path failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The git config every fixture's private `HOME` gets.
const GITCONFIG: &str = "\
[user]
\tname = Gitreload Test
\temail = test@gitreload.invalid
[init]
\tdefaultBranch = main
[protocol \"file\"]
\tallow = always
[safe]
\tdirectory = *
[advice]
\tdetachedHead = false
[commit]
\tgpgsign = false
";

/// Makes `dir/home` with a `.gitconfig` and returns its path.
fn make_home(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    fs::create_dir_all(&home).unwrap();
    fs::write(home.join(".gitconfig"), GITCONFIG).unwrap();
    home
}

/// A `git` command with a clean environment and `home` as `HOME`.
pub fn git_command_in(home: &Path) -> Command {
    let mut cmd = clean_command("git");
    cmd.env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Gitreload Test")
        .env("GIT_AUTHOR_EMAIL", "test@gitreload.invalid")
        .env("GIT_COMMITTER_NAME", "Gitreload Test")
        .env("GIT_COMMITTER_EMAIL", "test@gitreload.invalid");
    cmd
}

/// Runs `cmd`, panics with its stderr if it fails, returns trimmed stdout.
pub fn run_git(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The repository gitreload follows: a bare `upstream.git` in a temp dir and a
/// work clone (branch `main`) that a test writes files into, commits and
/// pushes from. Gives the repo as a path, a `file://` URL, and the base
/// directory that `GitDaemon` and `SmartHttp` export.
pub struct Upstream {
    /// Private HOME with the fixture's `.gitconfig`.
    home: PathBuf,
    /// The bare repository `<dir>/repos/upstream.git`.
    bare: PathBuf,
    /// The work clone `<dir>/work`.
    work: PathBuf,
    /// Owns everything above.
    dir: TempDir,
}

impl Upstream {
    /// An empty bare repository and an empty work clone on `main`.
    pub fn new() -> Upstream {
        let dir = TempDir::new().unwrap();
        let home = make_home(dir.path());
        let bare = dir.path().join("repos").join("upstream.git");
        let work = dir.path().join("work");
        let up = Upstream {
            home,
            bare,
            work,
            dir,
        };
        let mut init = up.git_command();
        init.args(["init", "-q", "--bare", "-b", "main"])
            .arg(&up.bare);
        run_git(init);
        let mut init = up.git_command();
        init.args(["init", "-q", "-b", "main"]).arg(&up.work);
        run_git(init);
        up.git(&["remote", "add", "origin", up.bare.to_str().unwrap()]);
        up
    }

    /// A `git` command with this fixture's clean environment (cwd: the temp
    /// dir), e.g. for a test's own `git clone`.
    pub fn git_command(&self) -> Command {
        let mut cmd = git_command_in(&self.home);
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// `git mktree` in the work clone on raw `entries` (names may be any
    /// bytes git accepts); returns the new tree's id.
    pub fn mktree(&self, entries: &[u8]) -> String {
        let mut cmd = self.git_command();
        cmd.current_dir(&self.work).arg("mktree");
        let out = super::output_with_stdin(&mut cmd, entries);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Runs `git ARGS` in the work clone and returns trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let mut cmd = self.git_command();
        cmd.current_dir(&self.work).args(args);
        run_git(cmd)
    }

    fn work_file(&self, path: &str) -> PathBuf {
        let p = self.work.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        p
    }

    /// Writes a file (creating parent directories) in the work clone.
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) {
        fs::write(self.work_file(path), content).unwrap();
    }

    /// Writes an executable (0755) file in the work clone.
    pub fn write_exec(&self, path: &str, content: impl AsRef<[u8]>) {
        let p = self.work_file(path);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Creates (or replaces) a symlink `path -> target` in the work clone.
    pub fn symlink(&self, path: &str, target: &str) {
        let p = self.work_file(path);
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p).unwrap();
    }

    /// Removes a file, symlink or directory from the work clone.
    pub fn remove(&self, path: &str) {
        let p = self.work.join(path);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p).unwrap(),
            Ok(_) => fs::remove_file(&p).unwrap(),
            Err(e) => panic!("cannot remove {}: {e}", p.display()),
        }
    }

    /// Adds `url` as a submodule at `path` (file:// URLs are allowed).
    pub fn add_submodule(&self, url: &str, path: &str) {
        self.git(&["submodule", "add", "-q", url, path]);
    }

    /// `git add -A` and commit (empty commits allowed); returns the full id.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "--no-verify", "-m", msg]);
        self.head()
    }

    /// [`Upstream::commit`] then [`Upstream::push`]; returns the commit id.
    pub fn commit_and_push(&self, msg: &str) -> String {
        let id = self.commit(msg);
        self.push();
        id
    }

    /// Pushes the work clone's HEAD to `main` (fast-forward only).
    pub fn push(&self) {
        self.git(&["push", "-q", "origin", "HEAD:refs/heads/main"]);
    }

    /// Pushes the work clone's HEAD to branch `name` (forced).
    pub fn push_branch(&self, name: &str) {
        self.git(&[
            "push",
            "-q",
            "-f",
            "origin",
            &format!("HEAD:refs/heads/{name}"),
        ]);
    }

    /// Rewrites history: resets the work clone to `commit` and force-pushes
    /// it to `main`.
    pub fn force_push_to(&self, commit: &str) {
        self.git(&["reset", "-q", "--hard", commit]);
        self.git(&["push", "-q", "-f", "origin", "HEAD:refs/heads/main"]);
    }

    /// Tags HEAD as `name` (lightweight, moved if it exists) and pushes it.
    pub fn tag(&self, name: &str) {
        self.git(&["tag", "-f", name]);
        self.git(&["push", "-q", "-f", "origin", &format!("refs/tags/{name}")]);
    }

    /// The work clone's HEAD commit id.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// The commit id of `branch` in the bare repository, if it exists.
    pub fn remote_head(&self, branch: &str) -> Option<String> {
        let out = self
            .git_command()
            .arg("--git-dir")
            .arg(&self.bare)
            .args([
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}"),
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The bare repository `…/repos/upstream.git`.
    pub fn bare_path(&self) -> &Path {
        &self.bare
    }

    /// The directory holding `upstream.git` (what the servers export).
    pub fn base_dir(&self) -> &Path {
        self.bare.parent().unwrap()
    }

    /// The work clone.
    pub fn work_path(&self) -> &Path {
        &self.work
    }

    /// The private HOME with the fixture's `.gitconfig`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `file:///…/upstream.git`.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }
}

/// `git daemon` exporting an [`Upstream`] on `git://127.0.0.1:PORT/upstream.git`.
/// The PID kept is the daemon's own; `stop()` / `restart()` give outages on
/// the same port.
pub struct GitDaemon {
    /// The port it listens on (127.0.0.1).
    port: u16,
    /// The daemon process.
    service: Service,
    /// Log and HOME.
    _dir: TempDir,
}

impl GitDaemon {
    /// Starts the daemon and waits until it accepts connections.
    pub fn start(up: &Upstream) -> GitDaemon {
        let dir = TempDir::new().unwrap();
        let home = make_home(dir.path());
        let port = free_port("127.0.0.1");
        let base = up.base_dir().to_path_buf();
        let program = git_exec_path().join("git-daemon");
        let mut service = Service::new(
            &format!("git-daemon 127.0.0.1:{port}"),
            &dir.path().join("git-daemon.log"),
            Probe::Tcp(format!("127.0.0.1:{port}")),
            move || {
                let mut cmd = clean_command(&program);
                cmd.env("HOME", &home)
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .args([
                        "--reuseaddr",
                        "--export-all",
                        "--informative-errors",
                        "--verbose",
                        "--log-destination=stderr",
                        "--listen=127.0.0.1",
                        &format!("--port={port}"),
                        &format!("--base-path={}", base.display()),
                    ]);
                cmd
            },
        );
        service.start();
        GitDaemon {
            port,
            service,
            _dir: dir,
        }
    }

    /// `git://127.0.0.1:PORT/upstream.git`.
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/upstream.git", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the daemon (connections are refused until `restart`).
    pub fn stop(&mut self) {
        self.service.stop();
    }

    /// Starts the daemon again on the same port.
    pub fn restart(&mut self) {
        self.service.restart();
    }

    pub fn service(&mut self) -> &mut Service {
        &mut self.service
    }
}

/// Smart HTTP for an [`Upstream`]: nginx (private prefix, config, pid and temp
/// paths, `daemon off`) on 127.0.0.1:PORT, passing every request to fcgiwrap
/// on a unix socket, which runs `git http-backend`. Optional basic auth whose
/// password a test can change while it runs, and an optional TLS listener
/// with a certificate for 127.0.0.1 from a private CA made for it.
pub struct SmartHttp {
    /// The port nginx listens on (127.0.0.1).
    port: u16,
    /// The TLS port, if enabled (same server, same auth).
    tls_port: Option<u16>,
    /// Basic-auth user and password, if enabled.
    auth: Option<(String, String)>,
    /// nginx master (stopped first).
    nginx: Service,
    /// fcgiwrap, one process (`-c 1`, so SIGTERM leaves no orphans).
    fcgiwrap: Service,
    /// Config, logs, socket, htpasswd.
    dir: TempDir,
}

impl SmartHttp {
    /// Serves `http://127.0.0.1:PORT/upstream.git` without authentication.
    pub fn start(up: &Upstream) -> SmartHttp {
        Self::start_inner(up, None, false)
    }

    /// Serves it behind basic auth for `user` / `password`.
    pub fn start_with_basic_auth(up: &Upstream, user: &str, password: &str) -> SmartHttp {
        Self::start_inner(up, Some((user.to_string(), password.to_string())), false)
    }

    /// Also serves `https://127.0.0.1:TLS_PORT/upstream.git` with a server
    /// certificate signed by a private CA (`ca_path()`), optionally behind
    /// basic auth.
    pub fn start_with_tls(up: &Upstream, auth: Option<(&str, &str)>) -> SmartHttp {
        let auth = auth.map(|(u, p)| (u.to_string(), p.to_string()));
        Self::start_inner(up, auth, true)
    }

    fn start_inner(up: &Upstream, auth: Option<(String, String)>, tls: bool) -> SmartHttp {
        let dir = TempDir::new().unwrap();
        let d = dir.path().to_path_buf();
        let home = make_home(&d);
        let port = free_port("127.0.0.1");
        let tls_port = tls.then(|| free_port("127.0.0.1"));
        let tls_lines = match tls_port {
            Some(tls_port) => {
                make_tls_certificates(&d);
                format!(
                    "listen 127.0.0.1:{tls_port} ssl;\n    ssl_certificate {d}/server.pem;\n    ssl_certificate_key {d}/server.key;",
                    d = d.display()
                )
            }
            None => String::new(),
        };
        for sub in ["tmp", "logs"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let socket = d.join("fcgiwrap.sock");

        let mut fcgiwrap = Service::new(
            &format!("fcgiwrap for smart HTTP on port {port}"),
            &d.join("fcgiwrap.log"),
            Probe::Path(socket.clone()),
            {
                let socket = socket.clone();
                move || {
                    let _ = fs::remove_file(&socket);
                    let mut cmd = clean_command("fcgiwrap");
                    cmd.arg("-c")
                        .arg("1")
                        .arg("-s")
                        .arg(format!("unix:{}", socket.display()));
                    cmd
                }
            },
        );
        fcgiwrap.start();

        let auth_lines = match &auth {
            Some(_) => format!(
                "auth_basic \"git\";\n      auth_basic_user_file {};",
                d.join("htpasswd").display()
            ),
            None => String::new(),
        };
        let user_line = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            r#"{user_line}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
  # The connection number first: tests count connections per fetch.
  log_format conn '$connection $request_method $uri $status';
  access_log {d}/logs/access.log conn;
  client_body_temp_path {d}/tmp/body;
  fastcgi_temp_path {d}/tmp/fastcgi;
  proxy_temp_path {d}/tmp/proxy;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    {tls_lines}
    # The repository as if it had moved: /moved/X answers 301 to /X, and
    # /moved-twice/X to /moved/X.
    location ~ ^/moved/(.*)$ {{
      return 301 /$1$is_args$args;
    }}
    location ~ ^/moved-twice/(.*)$ {{
      return 301 /moved/$1$is_args$args;
    }}
    location / {{
      {auth_lines}
      client_max_body_size 0;
      fastcgi_pass unix:{socket};
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {root};
      fastcgi_param GIT_HTTP_EXPORT_ALL 1;
      fastcgi_param GIT_CONFIG_NOSYSTEM 1;
      fastcgi_param HOME {home};
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_param PATH_INFO $uri;
      fastcgi_param QUERY_STRING $query_string;
      fastcgi_param REQUEST_METHOD $request_method;
      fastcgi_param CONTENT_TYPE $content_type;
      fastcgi_param CONTENT_LENGTH $content_length;
      fastcgi_param REMOTE_ADDR $remote_addr;
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param SERVER_PROTOCOL $server_protocol;
      fastcgi_param GATEWAY_INTERFACE CGI/1.1;
    }}
  }}
}}
"#,
            d = d.display(),
            socket = socket.display(),
            backend = git_exec_path().join("git-http-backend").display(),
            root = up.base_dir().display(),
            home = home.display(),
        );
        fs::write(d.join("nginx.conf"), conf).unwrap();

        let nginx_log = d.join("nginx.log");
        let nginx = Service::new(
            &format!("nginx smart HTTP 127.0.0.1:{port}"),
            &nginx_log,
            Probe::Tcp(format!("127.0.0.1:{port}")),
            {
                let d = d.clone();
                move || {
                    let mut cmd = clean_command("nginx");
                    cmd.arg("-p").arg(&d);
                    cmd.arg("-c").arg(d.join("nginx.conf"));
                    cmd.arg("-e").arg(d.join("logs/error.log"));
                    cmd
                }
            },
        );
        let mut http = SmartHttp {
            port,
            tls_port,
            auth,
            nginx,
            fcgiwrap,
            dir,
        };
        if let Some((_, password)) = http.auth.clone() {
            http.set_password(&password);
        }
        http.nginx.start();
        http
    }

    /// `http://127.0.0.1:PORT/upstream.git` (no credentials in it).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/upstream.git", self.port)
    }

    /// A URL that answers with a redirect to [`SmartHttp::url`].
    pub fn moved_url(&self) -> String {
        format!("http://127.0.0.1:{}/moved/upstream.git", self.port)
    }

    /// A URL that redirects to [`SmartHttp::moved_url`].
    pub fn moved_twice_url(&self) -> String {
        format!("http://127.0.0.1:{}/moved-twice/upstream.git", self.port)
    }

    /// The access log: one `connection method uri status` line a request.
    pub fn requests(&self) -> Vec<String> {
        let log = self.dir.path().join("logs/access.log");
        fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT/upstream.git` with the password
    /// given at start (not the one set later).
    pub fn url_with_credentials(&self) -> String {
        let (user, password) = self.auth.as_ref().expect("basic auth is not enabled");
        format!(
            "http://{user}:{password}@127.0.0.1:{}/upstream.git",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:TLS_PORT/upstream.git` (TLS must be enabled).
    pub fn https_url(&self) -> String {
        let port = self.tls_port.expect("TLS is not enabled");
        format!("https://127.0.0.1:{port}/upstream.git")
    }

    /// `https://USER:PASSWORD@127.0.0.1:TLS_PORT/upstream.git` with the
    /// password given at start.
    pub fn https_url_with_credentials(&self) -> String {
        let (user, password) = self.auth.as_ref().expect("basic auth is not enabled");
        let port = self.tls_port.expect("TLS is not enabled");
        format!("https://{user}:{password}@127.0.0.1:{port}/upstream.git")
    }

    /// The private CA's certificate (PEM) that signed the server's.
    pub fn ca_path(&self) -> PathBuf {
        assert!(self.tls_port.is_some(), "TLS is not enabled");
        self.dir.path().join("ca.pem")
    }

    /// Changes the accepted password (nginx reads the file on every request).
    pub fn set_password(&self, password: &str) {
        let (user, _) = self.auth.as_ref().expect("basic auth is not enabled");
        let tmp = self.dir.path().join("htpasswd.tmp");
        fs::write(&tmp, format!("{user}:{{PLAIN}}{password}\n")).unwrap();
        fs::rename(&tmp, self.dir.path().join("htpasswd")).unwrap();
    }

    /// Stops nginx (connections are refused until `restart`).
    pub fn stop(&mut self) {
        self.nginx.stop();
    }

    /// Starts nginx again on the same port.
    pub fn restart(&mut self) {
        self.nginx.restart();
    }

    /// nginx, e.g. to `sigstop()` it (a server that accepts but never answers).
    pub fn nginx(&mut self) -> &mut Service {
        &mut self.nginx
    }

    /// nginx's error log and fcgiwrap's log, for debugging.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            file_tail(&self.dir.path().join("logs/error.log"), 30),
            file_tail(&self.dir.path().join("fcgiwrap.log"), 30)
        )
    }
}

/// Makes `dir/ca.pem` (a private CA) and `dir/server.pem` + `server.key` (a
/// certificate for IP 127.0.0.1 signed by it) with `openssl`.
pub fn make_tls_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = clean_command("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is not installed");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3",
        "-subj",
        "/CN=gitreload test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&csr);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "3",
        "-extfile",
        "server.ext",
    ]);
}
