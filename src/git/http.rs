//! Smart HTTP(S) for the mirror's fetches, on one HTTP client that lives as
//! long as the mirror.
//!
//! gix's own reqwest backend starts a thread and builds a new client (with
//! its own runtime thread, TLS configuration and connection pool) for every
//! fetch; for a sidecar that polls all day that is most of the cost of a
//! no-change poll. This backend keeps one client, so connections are kept
//! alive between polls and nothing is started per fetch.
//!
//! Promises:
//! - Requests go out exactly as gix's transport asks (its headers, its
//!   `Authorization` when it has credentials); a 401 is reported the way gix
//!   expects, so its credentials callback runs.
//! - Only the first request of a fetch (the ref advertisement) follows a
//!   redirect, never from https to http and never to another host (the
//!   credentials would follow it); later requests go to the redirected base.
//! - Every request is bounded by the client's timeouts and, with its whole
//!   response body, by the fetch's deadline: a server that trickles bytes
//!   cannot hold the fetch's thread or connection past
//!   `GITRELOAD_FETCH_TIMEOUT`.
//! - An `Authorization` header never goes over plain http:// unless the
//!   operator allowed it ([`Exchanges::allow_cleartext_credentials`], from
//!   `GITRELOAD_ALLOW_INSECURE_HTTP`). gix's own refusal is compiled out
//!   (its `http-client-insecure-credentials` feature), so this is the check.

use std::io::{self, BufRead, Cursor, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gix::protocol::transport::client::blocking_io::http::{
    GetResponse, Http, PostBodyDataKind, PostResponse,
};
use gix::protocol::transport::client::AuthenticationRequired;

/// Redirects followed for one request, at most.
const MAX_REDIRECTS: usize = 5;

/// One fetch's HTTP exchanges, on the mirror's shared client.
pub struct Exchanges {
    client: reqwest::blocking::Client,
    /// `http.extraHeader` lines from gix's options, sent with every request.
    extra_headers: Vec<String>,
    /// Set when the ref advertisement was redirected: where the repository
    /// really is.
    redirected_base: Option<String>,
    /// Whether the next request may follow a redirect (the first one only).
    first_request: bool,
    /// Whether credentials may be sent over plain http://.
    cleartext_credentials: bool,
    /// When the fetch must be over: each request, body included, ends by
    /// then.
    deadline: Instant,
}

impl Exchanges {
    pub fn new(client: reqwest::blocking::Client, deadline: Instant) -> Exchanges {
        Exchanges {
            client,
            extra_headers: Vec::new(),
            redirected_base: None,
            first_request: true,
            cleartext_credentials: false,
            deadline,
        }
    }

    /// Lets credentials go over plain http:// (`GITRELOAD_ALLOW_INSECURE_HTTP`).
    pub fn allow_cleartext_credentials(mut self, allow: bool) -> Exchanges {
        self.cleartext_credentials = allow;
        self
    }

    fn request(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        body: Option<Vec<u8>>,
    ) -> io::Result<reqwest::blocking::Response> {
        let mut map = reqwest::header::HeaderMap::new();
        let lines = headers
            .into_iter()
            .map(|h| h.as_ref().to_string())
            .chain(self.extra_headers.iter().cloned());
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                if let (Ok(name), Ok(value)) = (
                    reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()),
                    reqwest::header::HeaderValue::from_str(value.trim()),
                ) {
                    map.append(name, value);
                }
            }
        }
        // What follows the base: kept when a redirect moves the base.
        let tail = url.strip_prefix(base_url).unwrap_or("").to_string();
        let mut url = match &self.redirected_base {
            Some(base) => format!("{base}{}", url.strip_prefix(base_url).unwrap_or(url)),
            None => url.to_string(),
        };
        let may_follow = std::mem::replace(&mut self.first_request, false);
        for _ in 0..=MAX_REDIRECTS {
            if !self.cleartext_credentials
                && map.contains_key(reqwest::header::AUTHORIZATION)
                && !url.starts_with("https://")
            {
                // The wording is what gix says in this case, and what
                // `Credentials::explain` recognises.
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "Will not send credentials in clear text over http (set \
                     GITRELOAD_ALLOW_INSECURE_HTTP=true for a git server on a private network)",
                ));
            }
            let builder = match &body {
                Some(data) => self.client.post(&url).body(data.clone()),
                None => self.client.get(&url),
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the fetch timeout passed",
                ));
            }
            // A request's timeout covers its response body too.
            let response = builder
                .headers(map.clone())
                .timeout(left)
                .send()
                .map_err(io::Error::other)?;
            let status = response.status();
            if status.is_redirection() && may_follow {
                let next = redirect_target(&url, &response)?;
                let base = next.strip_suffix(tail.as_str()).ok_or_else(|| {
                    io::Error::other(format!(
                        "redirected to {} which does not end like the request did; set the new URL",
                        crate::redact::redact_url(&next)
                    ))
                })?;
                self.redirected_base = Some(base.to_string());
                url = next;
                continue;
            }
            if status == reqwest::StatusCode::UNAUTHORIZED {
                let www_authenticate = response
                    .headers()
                    .get_all(reqwest::header::WWW_AUTHENTICATE)
                    .iter()
                    .map(|value| value.as_bytes().into())
                    .collect();
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    AuthenticationRequired { www_authenticate },
                ));
            }
            if !status.is_success() {
                let kind = if status.is_server_error() {
                    io::ErrorKind::ConnectionAborted
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("Received HTTP status {}", status.as_str()),
                ));
            }
            return Ok(response);
        }
        Err(io::Error::other(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// Where a redirect leads, if it may be followed: same host and port, and
/// never from https down to http.
fn redirect_target(from: &str, response: &reqwest::blocking::Response) -> io::Result<String> {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .ok_or_else(|| io::Error::other("redirect without a Location"))?;
    let from = reqwest::Url::parse(from).map_err(io::Error::other)?;
    let to = from.join(location).map_err(io::Error::other)?;
    let downgrade = from.scheme() == "https" && to.scheme() != "https";
    let elsewhere = from.host_str() != to.host_str()
        || (from.port_or_known_default() != to.port_or_known_default()
            && from.scheme() == to.scheme());
    if downgrade || elsewhere {
        return Err(io::Error::other(format!(
            "redirected to {}; gitreload follows a redirect only on the same host and never from \
             https to http: set GITRELOAD_REPO to the new URL",
            crate::redact::redact_url(to.as_str())
        )));
    }
    Ok(to.to_string())
}

/// The response headers, one `name:value` line each, as gix reads them.
fn header_lines(response: &reqwest::blocking::Response) -> Vec<u8> {
    let mut lines = Vec::new();
    for (name, value) in response.headers() {
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.push(b':');
        lines.extend_from_slice(value.as_bytes());
        lines.push(b'\n');
    }
    lines
}

/// `Read` for a reader whose buffering is its `BufRead` side.
fn read_through_buffer(reader: &mut impl BufRead, buf: &mut [u8]) -> io::Result<usize> {
    let data = reader.fill_buf()?;
    let n = data.len().min(buf.len());
    buf[..n].copy_from_slice(&data[..n]);
    reader.consume(n);
    Ok(n)
}

/// A GET's headers: read already, or the error to report when gix reads
/// them.
pub enum Headers {
    Ready(Cursor<Vec<u8>>),
    Failed(Option<io::Error>),
    /// A POST's, known once its body is complete.
    Pending(Arc<Mutex<Post>>, Option<Cursor<Vec<u8>>>),
}

impl Read for Headers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_through_buffer(self, buf)
    }
}

impl BufRead for Headers {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Headers::Ready(cursor) => cursor.fill_buf(),
            Headers::Failed(error) => match error.take() {
                Some(e) => Err(e),
                None => Ok(&[]),
            },
            Headers::Pending(post, ready) => {
                if ready.is_none() {
                    let lines = post.lock().unwrap_or_else(|e| e.into_inner()).send()?;
                    *ready = Some(Cursor::new(lines));
                }
                ready.as_mut().expect("set above").fill_buf()
            }
        }
    }

    fn consume(&mut self, amount: usize) {
        match self {
            Headers::Ready(cursor) | Headers::Pending(_, Some(cursor)) => cursor.consume(amount),
            _ => {}
        }
    }
}

/// A response body, read as it arrives.
pub enum Body {
    Ready(io::BufReader<reqwest::blocking::Response>),
    Empty,
    /// A POST's, available once its body was sent.
    Pending(
        Arc<Mutex<Post>>,
        Option<io::BufReader<reqwest::blocking::Response>>,
    ),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_through_buffer(self, buf)
    }
}

impl BufRead for Body {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Body::Ready(reader) => reader.fill_buf(),
            Body::Empty => Ok(&[]),
            Body::Pending(post, reader) => {
                if reader.is_none() {
                    let mut post = post.lock().unwrap_or_else(|e| e.into_inner());
                    post.send()?;
                    *reader = post.response.take().map(io::BufReader::new);
                }
                match reader {
                    Some(r) => r.fill_buf(),
                    None => Ok(&[]),
                }
            }
        }
    }

    fn consume(&mut self, amount: usize) {
        match self {
            Body::Ready(reader) | Body::Pending(_, Some(reader)) => reader.consume(amount),
            _ => {}
        }
    }
}

/// A POST being written: gix writes the whole request body, then reads the
/// headers and the response body; the request is sent at the first read.
pub struct Post {
    exchanges: Option<Exchanges>,
    url: String,
    base_url: String,
    headers: Vec<String>,
    body: Vec<u8>,
    /// The headers once sent (or the error, reported once).
    sent: Option<io::Result<Vec<u8>>>,
    response: Option<reqwest::blocking::Response>,
}

impl Post {
    /// Sends the request (once) and returns the response's header lines.
    fn send(&mut self) -> io::Result<Vec<u8>> {
        if self.sent.is_none() {
            let mut exchanges = self.exchanges.take().expect("sent once");
            let result = exchanges.request(
                &self.url,
                &self.base_url,
                &self.headers,
                Some(std::mem::take(&mut self.body)),
            );
            self.sent = Some(match result {
                Ok(response) => {
                    let lines = header_lines(&response);
                    self.response = Some(response);
                    Ok(lines)
                }
                Err(e) => Err(e),
            });
        }
        match self.sent.as_mut().expect("set above") {
            Ok(lines) => Ok(lines.clone()),
            // The error itself the first time (gix looks inside it for
            // a 401), its kind after that.
            Err(e) => {
                let kind = e.kind();
                Err(std::mem::replace(e, io::Error::new(kind, "request failed")))
            }
        }
    }
}

/// What gix writes the POST body into.
pub struct PostBody(Arc<Mutex<Post>>);

impl Write for PostBody {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut post = self.0.lock().unwrap_or_else(|e| e.into_inner());
        post.body.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Http for Exchanges {
    type Headers = Headers;
    type ResponseBody = Body;
    type PostBody = PostBody;

    fn get(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::Result<GetResponse<Headers, Body>> {
        Ok(match self.request(url, base_url, headers, None) {
            Ok(response) => GetResponse {
                headers: Headers::Ready(Cursor::new(header_lines(&response))),
                body: Body::Ready(io::BufReader::new(response)),
            },
            Err(e) => GetResponse {
                headers: Headers::Failed(Some(e)),
                body: Body::Empty,
            },
        })
    }

    fn post(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        _body: PostBodyDataKind,
    ) -> gix::Result<PostResponse<Headers, Body, PostBody>> {
        // The exchanges move into the request until it is sent; later
        // requests of the same fetch get a copy carrying what the first
        // one learned (the redirected base).
        let exchanges = Exchanges {
            client: self.client.clone(),
            extra_headers: self.extra_headers.clone(),
            redirected_base: self.redirected_base.clone(),
            first_request: std::mem::replace(&mut self.first_request, false),
            cleartext_credentials: self.cleartext_credentials,
            deadline: self.deadline,
        };
        let post = Arc::new(Mutex::new(Post {
            exchanges: Some(exchanges),
            url: url.to_string(),
            base_url: base_url.to_string(),
            headers: headers
                .into_iter()
                .map(|h| h.as_ref().to_string())
                .collect(),
            body: Vec::new(),
            sent: None,
            response: None,
        }));
        Ok(PostResponse {
            post_body: PostBody(post.clone()),
            headers: Headers::Pending(post.clone(), None),
            body: Body::Pending(post, None),
        })
    }

    fn configure(&mut self, config: &dyn std::any::Any) -> gix::Result {
        use gix::protocol::transport::client::blocking_io::http::Options;
        if let Some(options) = config.downcast_ref::<Options>() {
            self.extra_headers = options.extra_headers.clone();
        }
        Ok(())
    }

    fn redirected_base_url(&self) -> Option<String> {
        self.redirected_base.clone()
    }
}
