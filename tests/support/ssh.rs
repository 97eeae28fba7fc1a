//! An OpenSSH server for an [`Upstream`]: `sshd -D -e` on 127.0.0.1:PORT with
//! its own ed25519 host key, config, pid file and authorized_keys in a temp
//! dir, key authentication only. The login user is the one running the tests
//! (root in CI; sshd can only switch to another user as root), whose shell
//! runs `git-upload-pack` from its PATH.
//!
//! Gives the URL forms (`ssh://` on a free port, and scp-like, which cannot
//! carry a port, on port 22 of a random 127.x.y.z: root only), a
//! `known_hosts` line for both, an authorized client key pair and a second
//! key the server does not know, and `rotate_host_key()` for a changed host
//! key.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use tempfile::TempDir;

/// A running sshd serving the upstream's bare repository.
pub struct Sshd {
    /// The port it listens on (127.0.0.1).
    port: u16,
    /// A 127.x.y.z where it also listens on port 22 (when run as root).
    default_port_ip: Option<String>,
    /// The login user.
    user: String,
    /// Absolute path of the bare repository.
    repo_path: PathBuf,
    /// The sshd process.
    service: Service,
    /// Keys, config, logs, the alias HOME.
    dir: TempDir,
}

/// Runs `ssh-keygen` to make an ed25519 key pair at `path` (and `path.pub`).
pub fn make_key(path: &Path, comment: &str) {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    let out = clean_command("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen is not installed");
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A random 127.x.y.z whose port 22 is free right now (binding port 22
/// needs root; `None` otherwise).
fn free_port_22_ip() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    (0..50).find_map(|_| {
        let ip = format!(
            "127.{}.{}.{}",
            fastrand::u8(1..255),
            fastrand::u8(0..255),
            fastrand::u8(2..255)
        );
        TcpListener::bind((ip.as_str(), 22)).ok().map(|_| ip)
    })
}

/// The current user's name (`id -un`).
fn current_user() -> String {
    let out = clean_command("id").arg("-un").output().expect("id failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// Starts sshd for `up` and waits until it accepts connections.
    pub fn start(up: &Upstream) -> Sshd {
        let dir = TempDir::new().unwrap();
        let d = dir.path().to_path_buf();
        let port = free_port("127.0.0.1");
        let user = current_user();
        // The privilege separation directory sshd insists on.
        if unsafe { libc::geteuid() } == 0 {
            fs::create_dir_all("/run/sshd").unwrap();
            fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        }
        make_key(&d.join("host_key"), "gitreload-test-host");
        make_key(&d.join("client_key"), "gitreload-test-client");
        make_key(&d.join("other_key"), "gitreload-test-unauthorized");
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();

        let default_port_ip = free_port_22_ip();
        let second_listen = default_port_ip
            .as_ref()
            .map(|ip| format!("ListenAddress {ip}:22\n"))
            .unwrap_or_default();
        let config = format!(
            "ListenAddress 127.0.0.1:{port}
{second_listen}HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AllowUsers {user}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AcceptEnv GIT_PROTOCOL
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
LogLevel VERBOSE
",
            d = d.display()
        );
        fs::write(d.join("sshd_config"), config).unwrap();

        let service = Service::new(
            &format!("sshd 127.0.0.1:{port}"),
            &d.join("sshd.log"),
            Probe::Tcp(format!("127.0.0.1:{port}")),
            {
                let d = d.clone();
                move || {
                    let mut cmd = clean_command("/usr/sbin/sshd");
                    cmd.arg("-D").arg("-e").arg("-f").arg(d.join("sshd_config"));
                    cmd
                }
            },
        );
        let mut sshd = Sshd {
            port,
            default_port_ip,
            user,
            repo_path: up.bare_path().to_path_buf(),
            service,
            dir,
        };
        sshd.service.start();
        sshd
    }

    /// `ssh://USER@127.0.0.1:PORT/abs/path/upstream.git`.
    pub fn url(&self) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            self.repo_path.display()
        )
    }

    /// `USER@127.x.y.z:/abs/path/upstream.git` (port 22; needs root).
    pub fn scp_url(&self) -> String {
        let ip = self
            .default_port_ip
            .as_ref()
            .expect("the scp-like URL needs sshd on port 22, which needs root");
        format!("{}@{ip}:{}", self.user, self.repo_path.display())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `[127.0.0.1]:PORT[,127.x.y.z] ssh-ed25519 AAAA...` for a known_hosts
    /// file (both addresses of [`Sshd::url`] and [`Sshd::scp_url`]).
    pub fn known_hosts_line(&self) -> String {
        let public = fs::read_to_string(self.dir.path().join("host_key.pub")).unwrap();
        let mut parts = public.split_whitespace();
        let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
        let mut hosts = format!("[127.0.0.1]:{}", self.port);
        if let Some(ip) = &self.default_port_ip {
            hosts.push(',');
            hosts.push_str(ip);
        }
        format!("{hosts} {kind} {key}\n")
    }

    /// Writes a known_hosts file with this server's key to `path`.
    pub fn write_known_hosts(&self, path: &Path) {
        fs::write(path, self.known_hosts_line()).unwrap();
    }

    /// The private key the server accepts (mode 0600).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A private key the server does not accept (mode 0600).
    pub fn other_key_path(&self) -> PathBuf {
        self.dir.path().join("other_key")
    }

    /// Gives the server a new host key and restarts it on the same port:
    /// what a client sees after a reinstall, or from an impostor.
    pub fn rotate_host_key(&mut self) {
        make_key(&self.dir.path().join("host_key"), "gitreload-test-host-2");
        self.service.restart();
    }

    /// Stops sshd (connections are refused until `restart`).
    pub fn stop(&mut self) {
        self.service.stop();
    }

    pub fn restart(&mut self) {
        self.service.restart();
    }

    /// sshd's log (accepted and refused logins), for messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.service.log_tail(lines)
    }
}
