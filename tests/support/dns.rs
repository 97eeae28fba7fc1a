//! DNS fixture: a private dnsmasq on 127.0.0.1:PORT that answers A records
//! from a hosts file a test can rewrite at run time, and NXDOMAIN for every
//! other name (nothing is forwarded). Plus a tiny A-record client.

use super::*;
use std::fs;
use std::net::Ipv4Addr;
use tempfile::TempDir;

/// DNS rcode for "no such name".
pub const NXDOMAIN: u8 = 3;

/// dnsmasq serving the A records a test gives (several per name allowed; the
/// order of answers rotates). Gives `server()` for the resolver under test,
/// `set_records` to change the answers while it runs, and `resolve_a` to see
/// what it answers.
pub struct Dns {
    /// UDP and TCP port on 127.0.0.1.
    port: u16,
    /// Records as last set, to know which answers must change.
    records: Vec<(String, String)>,
    /// The dnsmasq process.
    service: Service,
    /// Config, hosts file, log.
    dir: TempDir,
}

impl Dns {
    /// Starts dnsmasq answering `records` (`(name, ipv4)` pairs).
    pub fn start(records: &[(&str, &str)]) -> Dns {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let port = free_port("127.0.0.1");
        write_hosts(d, records);
        let conf = format!(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address=127.0.0.1\nport={port}\n\
             local-ttl=0\naddn-hosts={hosts}\nlocal=/#/\n{user}\
             edns-packet-max=4096\n\
             pid-file={d}/dnsmasq.pid\nlog-facility=-\nlog-queries\n",
            // As root, dnsmasq drops to `nobody`, who could not re-read the
            // hosts file in our 0700 temp dir on SIGHUP.
            user = if unsafe { libc::geteuid() } == 0 {
                "user=root\ngroup=root\n"
            } else {
                ""
            },
            hosts = d.join("hosts").display(),
            d = d.display(),
        );
        fs::write(d.join("dnsmasq.conf"), conf).unwrap();
        let conf_path = d.join("dnsmasq.conf");
        let mut service = Service::new(
            &format!("dnsmasq 127.0.0.1:{port}"),
            &d.join("dnsmasq.log"),
            Probe::Tcp(format!("127.0.0.1:{port}")),
            move || {
                let mut cmd = clean_command("dnsmasq");
                cmd.arg("--keep-in-foreground")
                    .arg(format!("--conf-file={}", conf_path.display()));
                cmd
            },
        );
        service.start();
        let dns = Dns {
            port,
            records: owned(records),
            service,
            dir,
        };
        dns.wait_for_answers(records, &[]);
        dns
    }

    /// `127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces all records, tells dnsmasq (SIGHUP) and returns once its
    /// answers match (names no longer listed answer NXDOMAIN).
    pub fn set_records(&mut self, records: &[(&str, &str)]) {
        write_hosts(self.dir.path(), records);
        self.service.signal(libc::SIGHUP);
        let old = std::mem::replace(&mut self.records, owned(records));
        let old_names: Vec<&str> = old.iter().map(|(n, _)| n.as_str()).collect();
        self.wait_for_answers(records, &old_names);
    }

    /// What dnsmasq answers now for `name` (A records, sorted), or the rcode.
    pub fn resolve_a(&self, name: &str) -> Result<Vec<Ipv4Addr>, u8> {
        query_a(&self.server(), name)
    }

    /// The dnsmasq process, e.g. to stop or freeze it.
    pub fn service(&mut self) -> &mut Service {
        &mut self.service
    }

    fn wait_for_answers(&self, records: &[(&str, &str)], gone: &[&str]) {
        let mut names: Vec<&str> = records.iter().map(|(n, _)| *n).collect();
        names.extend(gone);
        names.sort();
        names.dedup();
        for name in names {
            let mut want: Vec<Ipv4Addr> = records
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, ip)| ip.parse().unwrap())
                .collect();
            want.sort();
            let want = if want.is_empty() {
                Err(NXDOMAIN)
            } else {
                Ok(want)
            };
            let got = std::cell::RefCell::new(None);
            wait_until_or(
                &format!("dnsmasq to answer {want:?} for {name}"),
                Duration::from_secs(10),
                || {
                    let answer = self.resolve_a(name);
                    let ok = answer == want;
                    *got.borrow_mut() = Some(answer);
                    ok
                },
                || {
                    format!(
                        "last answer: {:?}\n{}",
                        got.borrow(),
                        self.service.log_tail(20)
                    )
                },
            );
        }
    }
}

fn owned(records: &[(&str, &str)]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|(n, ip)| (n.to_string(), ip.to_string()))
        .collect()
}

/// Writes `dir/hosts` atomically (`IP NAME` per record).
fn write_hosts(dir: &Path, records: &[(&str, &str)]) {
    let mut text = String::new();
    for (name, ip) in records {
        let _: Ipv4Addr = ip
            .parse()
            .unwrap_or_else(|_| panic!("{ip} is not an IPv4 address"));
        text.push_str(&format!("{ip} {name}\n"));
    }
    fs::write(dir.join("hosts.tmp"), text).unwrap();
    fs::rename(dir.join("hosts.tmp"), dir.join("hosts")).unwrap();
}

/// Asks `server` (`ip:port`, loopback) over UDP (EDNS0, 4096-byte answers)
/// for the A records of `name`.
/// Ok: the addresses, sorted (maybe empty for NODATA). Err: the rcode
/// (3 = NXDOMAIN), or 255 when no answer came within 1 s (after 3 tries).
pub fn query_a(server: &str, name: &str) -> Result<Vec<Ipv4Addr>, u8> {
    assert!(
        server.starts_with("127."),
        "DNS queries only go to loopback, not {server}"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let id = (nanos ^ std::process::id()) as u16;
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]); // RD; 1 question, 1 additional
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
                                           // EDNS0 OPT record offering a 4096-byte answer: without it dnsmasq cuts
                                           // a name with many A records (100 targets) to 512 bytes
                                           // (and without edns-packet-max above, to 1232).
    q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(350)))
        .unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        sock.send_to(&q, server).unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let r = &buf[..n];
        if n < 12 || r[0..2] != id.to_be_bytes() {
            continue;
        }
        let rcode = r[3] & 0x0f;
        if rcode != 0 {
            return Err(rcode);
        }
        let ancount = u16::from_be_bytes([r[6], r[7]]) as usize;
        let mut pos = 12;
        pos = skip_name(r, pos) + 4; // the question
        let mut ips = Vec::new();
        for _ in 0..ancount {
            pos = skip_name(r, pos);
            let rtype = u16::from_be_bytes([r[pos], r[pos + 1]]);
            let rdlen = u16::from_be_bytes([r[pos + 8], r[pos + 9]]) as usize;
            pos += 10;
            if rtype == 1 && rdlen == 4 {
                ips.push(Ipv4Addr::new(r[pos], r[pos + 1], r[pos + 2], r[pos + 3]));
            }
            pos += rdlen;
        }
        ips.sort();
        return Ok(ips);
    }
    Err(255)
}

/// Position after the (possibly compressed) name starting at `pos`.
fn skip_name(r: &[u8], mut pos: usize) -> usize {
    loop {
        let len = r[pos];
        if len == 0 {
            return pos + 1;
        }
        if len & 0xc0 == 0xc0 {
            return pos + 2;
        }
        pos += 1 + len as usize;
    }
}
