//! gitreload's HTTP server as a client on the network sees it: raw bytes,
//! one connection per input, to the real server (`gitreload::http::Server`)
//! listening on loopback with a webhook secret.
//!
//! In the input, `{{token}}` stands for the secret and `{{sig}}` for
//! `sha256=` and the HMAC of everything after the first blank line, so the
//! fuzzer can build requests that prove the secret. Properties:
//! - The server never panics, never hangs on a request the client has
//!   finished sending (libFuzzer's -timeout catches that), and answers
//!   every connection with HTTP/1.x or closes it.
//! - No request is accepted (`202`) unless the input carried a placeholder:
//!   nothing but the secret or its HMAC opens the webhook, whatever the
//!   framing (duplicate headers, chunked bodies, pipelining, odd
//!   whitespace, other methods and paths).
#![no_main]

mod oracle;
use oracle::hmac_sha256;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

struct Fixture {
    addr: SocketAddr,
    secret: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut random = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .expect("random secret");
        let secret = hex::encode(random);
        // A free port on loopback, then the real server on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let server = gitreload::http::Server {
            metrics: Arc::new(gitreload::metrics::Metrics::new()),
            health: Arc::new(gitreload::sync::Health::new(
                Duration::from_secs(3600),
                Duration::from_secs(3600),
            )),
            trigger: Arc::new(tokio::sync::Notify::new()),
            webhook_secret: Some(gitreload::settings::Secret::new(secret.clone())),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                // Never sent: the server runs as long as the process.
                let (_keep, shutdown) = tokio::sync::watch::channel(false);
                let task = server.bind(addr, shutdown).await.expect("bind");
                ready_tx.send(()).expect("ready");
                let _ = task.await;
            });
        });
        ready_rx.recv().expect("server started");
        Fixture { addr, secret }
    })
}

/// Closes with a reset (SO_LINGER 0): thousands of connections a second
/// would otherwise leave as many sockets in TIME_WAIT and run out of ports.
fn close_without_time_wait(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor we own, with a value of the size
    // we pass.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn replace(haystack: &[u8], needle: &[u8], by: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(by);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let proves_secret = find(data, b"{{token}}").is_some() || find(data, b"{{sig}}").is_some();
    let request = replace(data, b"{{token}}", fixture.secret.as_bytes());
    let request = match find(&request, b"\r\n\r\n") {
        Some(end) => {
            let (head, body) = request.split_at(end + 4);
            let signature = format!(
                "sha256={}",
                hex::encode(hmac_sha256(fixture.secret.as_bytes(), body))
            );
            [
                replace(head, b"{{sig}}", signature.as_bytes()),
                body.to_vec(),
            ]
            .concat()
        }
        None => request,
    };

    let mut stream = TcpStream::connect(fixture.addr).expect("connect to the server");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(&request);
    let _ = stream.shutdown(Shutdown::Write);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    close_without_time_wait(stream);

    if !response.is_empty() {
        assert!(
            response.starts_with(b"HTTP/1."),
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&response)
        );
    }
    if !proves_secret {
        let accepted = response
            .windows(13)
            .any(|w| w.starts_with(b"HTTP/1.") && w.ends_with(b" 202 "));
        assert!(
            !accepted,
            "accepted without the secret: {:?} -> {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&response)
        );
    }
});
