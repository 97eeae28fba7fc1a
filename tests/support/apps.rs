//! The applications gitreload reloads: real Prometheus and Alertmanager
//! processes on loopback addresses, reading their config from a directory
//! the test (or gitreload) writes.

use super::*;
use std::ops::{Deref, DerefMut};
use tempfile::TempDir;

/// What Prometheus and Alertmanager have in common: an HTTP server on
/// `ip:port` with `/-/ready`, `/-/reload`, `/metrics`, a private data dir, and
/// a process a test can stop, restart on the same address, kill or freeze.
/// `Prometheus` and `Alertmanager` deref to it.
pub struct App {
    /// Loopback address it listens on.
    ip: String,
    /// Web port.
    port: u16,
    /// Prefix of its `*_config_last_reload_*` metrics.
    metric_prefix: &'static str,
    /// The process.
    service: Service,
    /// Data dir and log.
    dir: TempDir,
}

impl App {
    fn new(
        name: &str,
        ip: &str,
        port: u16,
        metric_prefix: &'static str,
        dir: TempDir,
        command: impl Fn() -> Command + Send + Sync + 'static,
    ) -> App {
        let service = Service::new(
            &format!("{name} {ip}:{port}"),
            &dir.path().join(format!("{name}.log")),
            Probe::Http(format!("http://{ip}:{port}/-/ready")),
            command,
        );
        App {
            ip: ip.to_string(),
            port,
            metric_prefix,
            service,
            dir,
        }
    }

    /// `ip:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn ip(&self) -> &str {
        &self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    /// `http://ip:port/-/reload`.
    pub fn reload_url(&self) -> String {
        format!("{}/-/reload", self.url())
    }

    /// POSTs `/-/reload` (the reload happens inside the request): 200 with an
    /// empty body, or 500 with the error.
    pub fn reload(&self) -> (u16, String) {
        http_post(&self.reload_url(), &[], "")
    }

    /// The value of an unlabelled metric from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_get(&format!("{}/metrics", self.url()));
        assert_eq!(status, 200, "GET /metrics of {}", self.addr());
        body.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// `*_config_last_reload_success_timestamp_seconds`.
    pub fn last_reload_success_timestamp(&self) -> f64 {
        let name = format!(
            "{}_config_last_reload_success_timestamp_seconds",
            self.metric_prefix
        );
        self.metric(&name)
            .unwrap_or_else(|| panic!("{} has no {name}", self.addr()))
    }

    /// `*_config_last_reload_successful == 1`.
    pub fn last_reload_successful(&self) -> bool {
        let name = format!("{}_config_last_reload_successful", self.metric_prefix);
        self.metric(&name)
            .unwrap_or_else(|| panic!("{} has no {name}", self.addr()))
            == 1.0
    }

    /// Stops it (SIGTERM, SIGKILL after 3 s); the address refuses connections.
    pub fn stop(&mut self) {
        self.service.stop();
    }

    /// Starts it again on the same address with the same data dir and waits
    /// for `/-/ready`.
    pub fn restart(&mut self) {
        self.service.restart();
    }

    /// SIGKILL, as in a crash.
    pub fn kill9(&mut self) {
        self.service.kill9();
    }

    /// Freezes it: connections are accepted by the kernel but never answered.
    pub fn sigstop(&mut self) {
        self.service.sigstop();
    }

    pub fn sigcont(&mut self) {
        self.service.sigcont();
    }

    pub fn pid(&mut self) -> u32 {
        self.service.pid()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.service.log_tail(lines)
    }

    pub fn service(&mut self) -> &mut Service {
        &mut self.service
    }

    /// GET `path` as JSON, panicking unless it answers 200.
    fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(&format!("{}{path}", self.url()));
        assert_eq!(status, 200, "GET {path} of {}: {body}", self.addr());
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON ({e}): {body}"))
    }
}

/// Prometheus 2.42 with `--web.enable-lifecycle`, reading
/// `config_dir/prometheus.yml`, on `ip:<free port>`. Gives the live config
/// and the reload metrics, so a test can tell from outside that a reload
/// happened and what it loaded.
pub struct Prometheus(App);

impl Prometheus {
    /// Starts it and waits for `/-/ready`. `config_dir/prometheus.yml` must
    /// exist and be valid, or the start panics with Prometheus's log.
    pub fn start(ip: &str, config_dir: &Path) -> Prometheus {
        Self::start_on(ip, free_port(ip), config_dir)
    }

    /// Like [`Prometheus::start`], on a given port.
    pub fn start_on(ip: &str, port: u16, config_dir: &Path) -> Prometheus {
        let dir = TempDir::new().unwrap();
        let config = config_dir.join("prometheus.yml");
        let data = dir.path().join("data");
        let listen = format!("{ip}:{port}");
        let mut app = App::new("prometheus", ip, port, "prometheus", dir, move || {
            let mut cmd = clean_command("prometheus");
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!("--web.listen-address={listen}"))
                .arg("--web.enable-lifecycle")
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg("--log.level=warn");
            cmd
        });
        app.service.start();
        Prometheus(app)
    }

    /// The live config (`/api/v1/status/config`, `data.yaml`), re-serialised
    /// by Prometheus (comments gone, defaults filled in).
    pub fn config(&self) -> String {
        let v = self.get_json("/api/v1/status/config");
        v["data"]["yaml"]
            .as_str()
            .expect("no data.yaml in /api/v1/status/config")
            .to_string()
    }
}

impl Deref for Prometheus {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl DerefMut for Prometheus {
    fn deref_mut(&mut self) -> &mut App {
        &mut self.0
    }
}

/// Alertmanager 0.25 (`prometheus-alertmanager`), reading
/// `config_dir/alertmanager.yml`, on `ip:<free port>`; `/-/reload` needs no
/// flag. `start_pair` gives a gossiping pair on two loopback addresses.
pub struct Alertmanager {
    /// Web part.
    app: App,
    /// `ip:port` of its cluster listener, if clustered.
    cluster: Option<String>,
}

impl Alertmanager {
    /// One instance with clustering disabled.
    pub fn start(ip: &str, config_dir: &Path) -> Alertmanager {
        let mut am = Self::prepare(ip, free_port(ip), config_dir, None);
        am.app.service.start();
        am
    }

    /// Two instances on `ips[0]` and `ips[1]` (which must differ), each with
    /// its own cluster port and the other as `--cluster.peer`.
    pub fn start_pair(ips: [&str; 2], config_dir: &Path) -> [Alertmanager; 2] {
        Self::start_pair_on(ips, free_port_on(&ips), config_dir)
    }

    /// Like [`Alertmanager::start_pair`], both on web port `port`.
    pub fn start_pair_on(ips: [&str; 2], port: u16, config_dir: &Path) -> [Alertmanager; 2] {
        assert_ne!(ips[0], ips[1], "an Alertmanager pair needs two addresses");
        let cluster = [free_addr(ips[0]), free_addr(ips[1])];
        let mut a = Self::prepare(
            ips[0],
            port,
            config_dir,
            Some((cluster[0].clone(), cluster[1].clone())),
        );
        let mut b = Self::prepare(
            ips[1],
            port,
            config_dir,
            Some((cluster[1].clone(), cluster[0].clone())),
        );
        a.app.service.start();
        b.app.service.start();
        [a, b]
    }

    fn prepare(
        ip: &str,
        port: u16,
        config_dir: &Path,
        cluster: Option<(String, String)>,
    ) -> Alertmanager {
        let dir = TempDir::new().unwrap();
        let config = config_dir.join("alertmanager.yml");
        let data = dir.path().join("data");
        let listen = format!("{ip}:{port}");
        let cluster_args = match &cluster {
            Some((me, peer)) => vec![
                format!("--cluster.listen-address={me}"),
                format!("--cluster.peer={peer}"),
            ],
            None => vec!["--cluster.listen-address=".to_string()],
        };
        let app = App::new("alertmanager", ip, port, "alertmanager", dir, move || {
            let mut cmd = clean_command("prometheus-alertmanager");
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!("--web.listen-address={listen}"))
                .arg(format!("--storage.path={}", data.display()))
                .args(&cluster_args)
                .arg("--log.level=warn");
            cmd
        });
        Alertmanager {
            app,
            cluster: cluster.map(|(me, _)| me),
        }
    }

    /// The live config (`/api/v2/status`, `config.original`), re-serialised.
    pub fn config(&self) -> String {
        let v = self.get_json("/api/v2/status");
        v["config"]["original"]
            .as_str()
            .expect("no config.original in /api/v2/status")
            .to_string()
    }

    /// `ip:port` of the cluster listener, if clustered.
    pub fn cluster_addr(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// How many cluster members (itself included) it knows.
    pub fn cluster_peers(&self) -> usize {
        let v = self.get_json("/api/v2/status");
        v["cluster"]["peers"].as_array().map_or(0, |p| p.len())
    }
}

impl Deref for Alertmanager {
    type Target = App;
    fn deref(&self) -> &App {
        &self.app
    }
}

impl DerefMut for Alertmanager {
    fn deref_mut(&mut self) -> &mut App {
        &mut self.app
    }
}

/// Replicas of one Prometheus service as Swarm runs them: one process per
/// loopback address, all on one port, all reading `config_dir`, and a DNS
/// server answering `name` with every address.
pub struct Replicas {
    pub proms: Vec<Prometheus>,
    /// The port every replica listens on.
    pub port: u16,
    pub dns: Dns,
}

impl Replicas {
    pub fn start(name: &str, ips: &[&str], config_dir: &Path) -> Replicas {
        let port = free_port_on(ips);
        let proms = ips
            .iter()
            .map(|ip| Prometheus::start_on(ip, port, config_dir))
            .collect();
        let records: Vec<(&str, &str)> = ips.iter().map(|ip| (name, *ip)).collect();
        Replicas {
            proms,
            port,
            dns: Dns::start(&records),
        }
    }
}
