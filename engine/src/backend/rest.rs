//! `rest:http[s]://[user:password@]host[:port]/path`: a repository behind `cairn serve`
//! (restic's REST protocol, v2 listings, with cairn's object kinds).
//!
//! Credentials come from the URL, `CAIRN_REST_USERNAME` / `CAIRN_REST_PASSWORD`, or the
//! `rest.username` / `rest.password-file` options; a private CA from `rest.ca-file`. The
//! server says in every answer what the credential may do (`cairn-access`), so maintenance
//! that deletes can refuse to start on an append-only credential instead of failing
//! halfway. Requests that failed for a reason a retry can cure (no connection, a 5xx) are
//! retried with backoff; an answer of 401 or 403 never is.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use cairn_format::FileKind;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;

use super::{Backend, ObjectInfo};
use crate::{Error, Result};

/// A parsed `rest:` location and its options.
#[derive(Clone)]
pub struct RestConfig {
    /// `http[s]://host[:port]/path`, without credentials or a trailing slash.
    pub url: String,
    /// User name, if any.
    pub username: Option<String>,
    password: Option<String>,
    /// Extra CA certificates (PEM) trusted for this server.
    pub ca_file: Option<PathBuf>,
    /// Requests run at once.
    pub connections: usize,
    /// Retries of a failed request.
    pub retries: u32,
}

impl std::fmt::Debug for RestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("ca_file", &self.ca_file)
            .field("connections", &self.connections)
            .field("retries", &self.retries)
            .finish()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl RestConfig {
    /// Parse `rest:http[s]://[user[:password]@]host[:port][/path]`, then the `rest.*`
    /// options and the `CAIRN_REST_*` environment variables.
    pub fn parse(location: &str, options: &[(String, String)]) -> Result<RestConfig> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "invalid rest location {location:?}: {why} (use rest:https://host:port/path)"
            ))
        };
        let rest = location
            .strip_prefix("rest:")
            .ok_or_else(|| bad("no rest: prefix"))?;
        let mut url = reqwest::Url::parse(rest).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("no query or fragment may follow the path"));
        }
        let mut username = (!url.username().is_empty()).then(|| percent_decode(url.username()));
        let mut password = url.password().map(percent_decode);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if let Ok(u) = std::env::var("CAIRN_REST_USERNAME") {
            if username.is_none() && !u.is_empty() {
                username = Some(u);
            }
        }
        if let Ok(p) = std::env::var("CAIRN_REST_PASSWORD") {
            if password.is_none() && !p.is_empty() {
                password = Some(p);
            }
        }
        let mut cfg = RestConfig {
            url: url.as_str().trim_end_matches('/').to_owned(),
            username,
            password,
            ca_file: None,
            connections: 4,
            retries: 5,
        };
        for (k, v) in options {
            match k.as_str() {
                "rest.ca-file" => cfg.ca_file = Some(PathBuf::from(v)),
                "rest.username" => cfg.username = Some(v.clone()),
                "rest.password-file" => {
                    let text = std::fs::read_to_string(v).map_err(|e| Error::io(v, e))?;
                    cfg.password = Some(text.lines().next().unwrap_or_default().to_owned());
                }
                "rest.connections" => {
                    cfg.connections = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| {
                            Error::Invalid(format!("rest.connections={v}: expected 1 to 64"))
                        })?;
                }
                "rest.retries" => {
                    cfg.retries = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n <= 20)
                        .ok_or_else(|| {
                            Error::Invalid(format!("rest.retries={v}: expected 0 to 20"))
                        })?;
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "option {other} does not apply to a rest repository (rest.ca-file, rest.username, rest.password-file, rest.connections, rest.retries)"
                    )))
                }
            }
        }
        if cfg.password.is_some() && cfg.username.is_none() {
            return Err(bad("a password without a user name"));
        }
        Ok(cfg)
    }
}

/// A repository served by `cairn serve`.
#[derive(Debug)]
pub struct RestBackend {
    cfg: RestConfig,
    client: Client,
    /// What the server said this credential may do: 0 unknown, 1 full, 2 append-only.
    access: AtomicU8,
}

/// Bytes a listing may take: millions of objects, never unbounded.
const MAX_LISTING: u64 = 1 << 30;

impl RestBackend {
    /// A client for `cfg` (no request is sent yet).
    pub fn new(cfg: RestConfig) -> Result<RestBackend> {
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // A whole request, a pack upload included: generous, but a dead server is
            // noticed.
            .timeout(Duration::from_secs(900))
            .tcp_keepalive(Duration::from_secs(30))
            .pool_max_idle_per_host(cfg.connections.max(2))
            .http1_only()
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let certs = super::ca_certificates(ca)?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Invalid(format!("rest HTTP client: {e}")))?;
        Ok(RestBackend {
            cfg,
            client,
            access: AtomicU8::new(0),
        })
    }

    fn url(&self, kind: FileKind, name: &str) -> Result<String> {
        if kind == FileKind::Config {
            return Ok(format!("{}/config", self.cfg.url));
        }
        if !super::is_object_name(name) {
            return Err(Error::Invalid(format!("invalid object name {name:?}")));
        }
        Ok(format!("{}/{}/{name}", self.cfg.url, kind.dir()))
    }

    fn what(kind: FileKind, name: &str) -> String {
        format!("{} {}", kind.name(), &name[..name.len().min(12)])
    }

    /// Send the request `make` builds, retrying what a retry can cure. Every answer that
    /// arrives is returned (the caller judges 4xx); 5xx are retried first.
    fn send(&self, what: &str, make: &dyn Fn() -> Result<RequestBuilder>) -> Result<Response> {
        self.send_unless(what, make, None)
            .map(|r| r.expect("no `done` check was given"))
    }

    /// [`RestBackend::send`], asking `done` before each retry whether the request did its
    /// work after all (an upload whose answer was lost): then `None`.
    fn send_unless(
        &self,
        what: &str,
        make: &dyn Fn() -> Result<RequestBuilder>,
        done: Option<&dyn Fn() -> bool>,
    ) -> Result<Option<Response>> {
        let mut attempt = 0;
        loop {
            let mut req = make()?;
            if let Some(user) = &self.cfg.username {
                req = req.basic_auth(user, self.cfg.password.as_deref());
            }
            let failure = match req.send() {
                Ok(resp) => {
                    if let Some(a) = resp.headers().get("cairn-access") {
                        let v = match a.as_bytes() {
                            b"append-only" => 2,
                            _ => 1,
                        };
                        self.access.store(v, Ordering::Relaxed);
                    }
                    if !resp.status().is_server_error() {
                        return Ok(Some(resp));
                    }
                    let status = resp.status();
                    format!("{status}: {}", body_text(resp))
                }
                Err(e) => {
                    let msg = describe(&e);
                    if msg.contains("certificate") {
                        // Retrying cannot make the server's certificate trusted.
                        return Err(Error::Backend(format!(
                            "rest {what}: {msg} (for a private CA, give its certificate with -o rest.ca-file=FILE)"
                        )));
                    }
                    if e.is_builder() {
                        return Err(Error::Backend(format!("rest {what}: {msg}")));
                    }
                    msg
                }
            };
            if attempt >= self.cfg.retries {
                return Err(Error::Backend(format!(
                    "rest {what}: {failure} (after {attempt} retries)"
                )));
            }
            if done.is_some_and(|d| d()) {
                return Ok(None);
            }
            attempt += 1;
            let delay = Duration::from_millis(250 << attempt.min(6));
            tracing::warn!(
                "rest {what} failed ({failure}); retry {attempt} in {:.1}s",
                delay.as_secs_f64()
            );
            std::thread::sleep(delay);
        }
    }

    /// The error for an answer that is not what was asked for.
    fn refusal(&self, what: &str, resp: Response) -> Error {
        let status = resp.status();
        let msg = body_text(resp);
        match status {
            StatusCode::UNAUTHORIZED => Error::Denied(format!(
                "rest {what}: the server refused the credentials{} (401): {msg}",
                self.cfg
                    .username
                    .as_ref()
                    .map(|u| format!(" of {u:?}"))
                    .unwrap_or_else(|| " (none given: put them in the URL, CAIRN_REST_USERNAME/CAIRN_REST_PASSWORD or -o rest.username/rest.password-file)".into())
            )),
            StatusCode::FORBIDDEN => Error::Denied(format!("rest {what}: refused (403): {msg}")),
            _ => Error::Backend(format!("rest {what}: {status}: {msg}")),
        }
    }

    fn expect_ok(&self, what: &str, resp: Response) -> Result<Response> {
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.refusal(what, resp))
        }
    }

    fn put_body(
        &self,
        kind: FileKind,
        name: &str,
        len: u64,
        body: &dyn Fn() -> Result<reqwest::blocking::Body>,
    ) -> Result<()> {
        let url = self.url(kind, name)?;
        let what = format!("put {}", Self::what(kind, name));
        // Content-addressed objects are stored once: if the name exists, it holds these very
        // bytes (the server verified that they hash to it), whoever sent them — an attempt
        // of ours whose answer was lost, typically.
        let stored = || kind != FileKind::Config && self.stat(kind, name).ok() == Some(Some(len));
        let sent = self.send_unless(
            &what,
            &|| {
                Ok(self
                    .client
                    .post(&url)
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(body()?))
            },
            Some(&stored),
        );
        let resp = match sent {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ok(()),
            Err(e) => return if stored() { Ok(()) } else { Err(e) },
        };
        // An append-only credential may not write a name that exists.
        if resp.status() == StatusCode::FORBIDDEN && stored() {
            return Ok(());
        }
        self.expect_ok(&what, resp).map(drop)
    }
}

fn body_text(resp: Response) -> String {
    let mut s = String::new();
    let _ = resp.take(4096).read_to_string(&mut s);
    s.trim().to_owned()
}

/// A transport error with its causes (reqwest's own message is only the outermost).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg
}

/// A v2 listing, `[{"name": …, "size": …}, …]`; names that are not object names are
/// skipped (a server must never make a reader open something outside the layout).
fn parse_listing(body: &[u8]) -> std::result::Result<Vec<ObjectInfo>, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        name: String,
        size: u64,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(body).map_err(|e| format!("not a listing: {e}"))?;
    Ok(entries
        .into_iter()
        .filter(|e| super::is_object_name(&e.name))
        .map(|e| ObjectInfo {
            name: e.name,
            size: e.size,
        })
        .collect())
}

/// Fuzzing entry point: what a `rest:` server sends that the client decodes (a listing,
/// percent-encoded URL credentials).
pub fn fuzz_answer(data: &[u8]) {
    if let Ok(list) = parse_listing(data) {
        assert!(list.iter().all(|o| super::is_object_name(&o.name)));
    }
    let _ = percent_decode(&String::from_utf8_lossy(data));
}

/// Read a response body of at most `max` bytes.
fn read_limited(resp: Response, max: u64, what: &str) -> Result<Vec<u8>> {
    // What the server declares is only a hint: never allocate ahead more than 64 MiB on it.
    let hint = resp.content_length().unwrap_or(0).min(max).min(64 << 20);
    let mut data = Vec::with_capacity(hint as usize);
    resp.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::Backend(format!("rest {what}: reading the answer: {e}")))?;
    Ok(data)
}

impl Backend for RestBackend {
    fn location(&self) -> String {
        format!("rest:{}", self.cfg.url)
    }

    fn exists(&self) -> Result<bool> {
        let url = format!("{}/keys/", self.cfg.url);
        let resp = self.send("list keys", &|| Ok(self.client.get(&url)))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => Err(self.refusal("list keys", resp)),
        }
    }

    fn create(&self) -> Result<()> {
        let url = format!("{}/?create=true", self.cfg.url);
        let resp = self.send("create", &|| Ok(self.client.post(&url)))?;
        self.expect_ok("create", resp).map(drop)
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.put_body(kind, name, data.len() as u64, &|| {
            Ok(reqwest::blocking::Body::from(data.to_vec()))
        })
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path) -> Result<()> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        self.put_body(kind, name, len, &|| {
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            Ok(reqwest::blocking::Body::sized(f, len))
        })?;
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.get_max(kind, name, u64::MAX - 1)
    }

    fn get_max(&self, kind: FileKind, name: &str, max: u64) -> Result<Vec<u8>> {
        let url = self.url(kind, name)?;
        let what = format!("get {}", Self::what(kind, name));
        let resp = self.send(&what, &|| Ok(self.client.get(&url)))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::not_found(kind, name));
        }
        let resp = self.expect_ok(&what, resp)?;
        if let Some(n) = resp.content_length().filter(|n| *n > max) {
            return Err(super::too_large(kind, name, n, max));
        }
        let data = read_limited(resp, max, &what)?;
        if data.len() as u64 > max {
            return Err(super::too_large(kind, name, data.len() as u64, max));
        }
        Ok(data)
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let url = self.url(kind, name)?;
        let what = format!("get {} [{offset}+{len}]", Self::what(kind, name));
        let range = format!("bytes={offset}-{}", offset + len - 1);
        let resp = self.send(&what, &|| {
            Ok(self.client.get(&url).header(reqwest::header::RANGE, &range))
        })?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Err(Error::not_found(kind, name)),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(Error::Integrity(format!(
                    "{} is shorter than {} bytes",
                    Self::what(kind, name),
                    offset + len
                )))
            }
            StatusCode::PARTIAL_CONTENT => {}
            _ => return Err(self.refusal(&what, resp)),
        }
        let data = read_limited(resp, len, &what)?;
        if data.len() as u64 != len {
            return Err(Error::Integrity(format!(
                "{}: {} bytes read at {offset}, {len} expected",
                Self::what(kind, name),
                data.len()
            )));
        }
        Ok(data)
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        let url = self.url(kind, name)?;
        let what = format!("stat {}", Self::what(kind, name));
        let resp = self.send(&what, &|| Ok(self.client.head(&url)))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            // The header itself: for a HEAD answer the body's length (what
            // `content_length()` reports) is 0.
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| {
                        Error::Backend(format!("rest {what}: no Content-Length in the answer"))
                    })?,
            )),
            _ => Err(self.refusal(&what, resp)),
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        if kind == FileKind::Config {
            return super::list_config(self);
        }
        let url = format!("{}/{}/", self.cfg.url, kind.dir());
        let what = format!("list {}", kind.dir());
        let resp = self.send(&what, &|| {
            Ok(self
                .client
                .get(&url)
                .header(reqwest::header::ACCEPT, "application/vnd.x.restic.rest.v2"))
        })?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let resp = self.expect_ok(&what, resp)?;
        let body = read_limited(resp, MAX_LISTING, &what)?;
        if body.len() as u64 > MAX_LISTING {
            return Err(Error::Backend(format!(
                "rest {what}: the listing is larger than {MAX_LISTING} bytes"
            )));
        }
        parse_listing(&body).map_err(|e| Error::Backend(format!("rest {what}: {e}")))
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let url = self.url(kind, name)?;
        let what = format!("delete {}", Self::what(kind, name));
        let resp = self.send(&what, &|| Ok(self.client.delete(&url)))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.expect_ok(&what, resp).map(drop)
    }

    fn connections(&self) -> usize {
        self.cfg.connections
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn may_delete(&self) -> Result<bool> {
        if self.access.load(Ordering::Relaxed) == 0 {
            self.exists()?;
        }
        Ok(self.access.load(Ordering::Relaxed) != 2)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let c =
            RestConfig::parse("rest:https://node%2d1:p%40ss@backup.lan:8000/k3s/", &[]).unwrap();
        assert_eq!(c.url, "https://backup.lan:8000/k3s");
        assert_eq!(c.username.as_deref(), Some("node-1"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert!(!format!("{c:?}").contains("p@ss"));
        let c = RestConfig::parse(
            "rest:http://[::1]:8000/",
            &[("rest.connections".into(), "8".into())],
        )
        .unwrap();
        assert_eq!((c.url.as_str(), c.connections), ("http://[::1]:8000", 8));
        for bad in [
            "rest:ftp://host/x",
            "rest:https://",
            "rest:host:8000/x",
            "rest:https://host/x?y=1",
            "rest:https://:pw@host/x",
        ] {
            assert!(RestConfig::parse(bad, &[]).is_err(), "{bad}");
        }
        assert!(
            RestConfig::parse("rest:https://h/x", &[("s3.region".into(), "x".into())]).is_err()
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%"), "a b%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%é"), "%é");
    }
}
