//! S3-compatible object storage (AWS S3, MinIO, Garage, Ceph RGW) through OpenDAL's S3
//! service.
//!
//! Why OpenDAL: a maintained, Apache-governed client with SigV4 signing, the standard AWS
//! credential chain (environment variables, `~/.aws/credentials` and `~/.aws/config`
//! profiles, SSO, web identity), ranged reads, paginated listing and retry/timeout/
//! concurrency layers. It is async; the [`Backend`] trait is blocking because the engine's
//! parallelism is rayon and plain threads, so this backend owns a small tokio runtime and
//! blocks on it from the calling thread (many threads may block on it at once).
//!
//! Layout under `bucket/prefix/`: `config`, `keys/<id>`, `locks/<id>`, `snapshots/<id>`,
//! `index/<id>`, `data/<2 hex>/<id>` (as on disk). Every object is written by one PUT of
//! its complete bytes, so a reader sees either no object or all of it: nothing relies on
//! rename, append, or create-if-absent (Garage ignores `If-None-Match`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_format::FileKind;
use opendal::layers::{ConcurrentLimitLayer, RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};

use super::{Backend, ObjectInfo};
use crate::progress::interrupted;
use crate::{Error, Result};

/// How long a delete may still take once the user has interrupted (see `S3Backend::block`).
const DELETE_GRACE: Duration = Duration::from_secs(10);

/// Where and how to reach an S3 bucket. Built from a `s3:` URL plus `-o s3.*` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http[s]://host[:port]`.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// SigV4 region; `None`: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Virtual-host addressing (`bucket.host`) instead of path style (`host/bucket`).
    pub virtual_host: bool,
    /// PEM file with extra CA certificates (a private MinIO/Ceph CA).
    pub ca_file: Option<PathBuf>,
    /// AWS profile to use from the shared config/credentials files.
    pub profile: Option<String>,
    /// Concurrent requests.
    pub connections: usize,
    /// Ask the EC2 instance metadata service for credentials (off unless on EC2: it costs
    /// a timeout everywhere else).
    pub ec2_metadata: bool,
    /// Attempts per request before giving up (transient errors and throttling).
    pub retries: usize,
}

impl S3Config {
    /// Parse `s3:http[s]://host[:port]/bucket[/prefix]` or restic's `s3:host/bucket[/prefix]`
    /// (HTTPS), then apply `options` (`s3.region`, `s3.bucket-lookup=path|dns`,
    /// `s3.ca-file`, `s3.profile`, `s3.connections`, `s3.ec2-metadata`, `s3.retries`).
    pub fn parse(location: &str, options: &[(String, String)]) -> Result<S3Config> {
        let rest = location
            .strip_prefix("s3:")
            .ok_or_else(|| Error::Invalid(format!("{location:?} is not an s3: location")))?;
        let (scheme, rest) = if let Some(r) = rest.strip_prefix("https://") {
            ("https", r)
        } else if let Some(r) = rest.strip_prefix("http://") {
            ("http", r)
        } else if rest.contains("://") {
            return Err(Error::Invalid(format!(
                "{location:?}: only http:// and https:// endpoints are supported"
            )));
        } else {
            ("https", rest)
        };
        let mut parts = rest.trim_end_matches('/').splitn(3, '/');
        let host = parts.next().unwrap_or_default();
        let bucket = parts.next().unwrap_or_default();
        let prefix = parts.next().unwrap_or_default().trim_matches('/');
        if host.is_empty() || bucket.is_empty() {
            return Err(Error::Invalid(format!(
                "{location:?}: expected s3:http[s]://host[:port]/bucket[/prefix]"
            )));
        }
        let mut cfg = S3Config {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            region: None,
            virtual_host: false,
            ca_file: None,
            profile: None,
            connections: 5,
            ec2_metadata: false,
            retries: 8,
        };
        for (k, v) in options {
            let Some(k) = k.strip_prefix("s3.") else {
                continue;
            };
            let bad = || Error::Invalid(format!("option s3.{k}: invalid value {v:?}"));
            match k {
                "region" => cfg.region = Some(v.clone()),
                "bucket-lookup" => {
                    cfg.virtual_host = match v.as_str() {
                        "path" | "auto" => false,
                        "dns" => true,
                        _ => return Err(bad()),
                    }
                }
                "ca-file" => cfg.ca_file = Some(PathBuf::from(v)),
                "profile" => cfg.profile = Some(v.clone()),
                "connections" => {
                    cfg.connections = v.parse().ok().filter(|n| (1..=256).contains(n)).ok_or_else(bad)?
                }
                "retries" => cfg.retries = v.parse().ok().filter(|n| *n <= 100).ok_or_else(bad)?,
                "ec2-metadata" => cfg.ec2_metadata = parse_bool(v).ok_or_else(bad)?,
                _ => {
                    return Err(Error::Invalid(format!(
                        "unknown option s3.{k} (known: s3.region, s3.bucket-lookup, s3.ca-file, s3.profile, s3.connections, s3.retries, s3.ec2-metadata)"
                    )))
                }
            }
        }
        Ok(cfg)
    }
}

/// One line for an OpenDAL error: its kind and message, then the S3 error code and message
/// or the innermost cause (a refused connection, a TLS failure), without the request dump.
fn describe(e: &opendal::Error) -> String {
    if let Some(code) = quoted_field(e.message(), "code") {
        let msg = quoted_field(e.message(), "message").unwrap_or_default();
        return format!("{code}: {msg} ({})", e.kind());
    }
    let mut out = format!("{} ({})", e.message(), e.kind());
    let mut cause = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(c) = cause {
        let text = c.to_string();
        if let Some(code) = quoted_field(&text, "code") {
            out.push_str(": ");
            out.push_str(&code);
            if let Some(msg) = quoted_field(&text, "message") {
                out.push_str(": ");
                out.push_str(&msg);
            }
            return out;
        }
        innermost = Some(text);
        cause = c.source();
    }
    if let Some(t) = innermost {
        out.push_str(": ");
        out.push_str(&t);
    }
    out
}

/// `field: "value"` out of a Debug dump.
fn quoted_field(text: &str, field: &str) -> Option<String> {
    let start = text.find(&format!("{field}: \""))? + field.len() + 3;
    let end = text[start..].find('"')?;
    Some(text[start..start + end].to_owned())
}

/// The bytes of a response without a second copy when the body arrived contiguous.
fn into_vec(buf: opendal::Buffer) -> Vec<u8> {
    Vec::from(buf.to_bytes())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Requests sent, by operation (retries included), for benchmarks and `--verbose`.
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// PUT object.
    pub put: AtomicU64,
    /// GET object (whole or ranged).
    pub get: AtomicU64,
    /// HEAD object.
    pub head: AtomicU64,
    /// LIST pages.
    pub list: AtomicU64,
    /// DELETE object.
    pub delete: AtomicU64,
    /// Bytes uploaded.
    pub bytes_up: AtomicU64,
    /// Bytes downloaded.
    pub bytes_down: AtomicU64,
}

/// A repository in an S3 bucket (under an optional prefix).
#[derive(Debug)]
pub struct S3Backend {
    cfg: S3Config,
    op: Operator,
    rt: tokio::runtime::Runtime,
    counts: RequestCounts,
}

impl S3Backend {
    /// Connect (lazily: nothing is sent until the first request).
    pub fn new(cfg: S3Config) -> Result<S3Backend> {
        let region = cfg
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_owned());
        let mut b = opendal::services::S3::default()
            .endpoint(&cfg.endpoint)
            .bucket(&cfg.bucket)
            .root(&format!("/{}", cfg.prefix))
            .region(&region);
        if cfg.virtual_host {
            b = b.enable_virtual_host_style();
        }
        if let Some(p) = &cfg.profile {
            b = b.profile(p);
        }
        if !cfg.ec2_metadata {
            b = b.disable_ec2_metadata();
        }
        let invalid = |e: opendal::Error| Error::Invalid(format!("s3 configuration: {e}"));
        let mut op = Operator::new(b).map_err(invalid)?;
        if let Some(ca) = &cfg.ca_file {
            let certs = super::ca_certificates(ca)?;
            let mut client = reqwest::Client::builder();
            for c in certs {
                client = client.add_root_certificate(c);
            }
            let client = client
                .build()
                .map_err(|e| Error::Invalid(format!("s3 HTTP client: {e}")))?;
            let transport = opendal::HttpTransporter::new(
                opendal_http_transport_reqwest::ReqwestTransport::new(client),
            );
            let ctx = op.base_context().with_http_transport(transport);
            op = op.with_context(ctx);
        }
        // Layer order: retries wrap timeouts (a hung request is retried), the concurrency
        // limit sits outermost so that a retrying request keeps its slot.
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_io_timeout(Duration::from_secs(60)),
            )
            .layer(
                RetryLayer::new()
                    .with_notify(|ev: opendal::layers::RetryEvent<'_>| {
                        tracing::warn!(
                            "s3 {:?} failed ({}); retry {} in {:.1}s",
                            ev.op,
                            describe(ev.err),
                            ev.attempt,
                            ev.retry_after.as_secs_f64()
                        );
                    })
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(20))
                    .with_max_times(cfg.retries),
            )
            .layer(ConcurrentLimitLayer::new(cfg.connections));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        Ok(S3Backend {
            cfg,
            op,
            rt,
            counts: RequestCounts::default(),
        })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// Requests sent so far.
    pub fn counts(&self) -> &RequestCounts {
        &self.counts
    }

    fn key(kind: FileKind, name: &str) -> Result<String> {
        super::object_path(kind, name)
    }

    fn err(&self, what: &str, key: &str, e: opendal::Error) -> Error {
        let url = format!("{}/{key}", self.location_url());
        let text = describe(&e);
        let hint = if text.contains("NoSuchBucket") {
            " (the bucket does not exist: create it first)"
        } else if e.kind() == ErrorKind::PermissionDenied {
            " (access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile, and the key's permissions on the bucket)"
        } else if text.contains("AuthorizationHeaderMalformed") || text.contains("region") {
            " (wrong region? set AWS_DEFAULT_REGION or -o s3.region=…)"
        } else if text.contains("certificate") {
            " (the server's TLS certificate is not trusted: for a private CA pass it with -o s3.ca-file=PATH)"
        } else if e.kind() == ErrorKind::ConfigInvalid {
            " (check the s3 URL and options)"
        } else {
            ""
        };
        Error::Backend(format!("{what} {url}: {text}{hint}"))
    }

    /// Run a request, or give it up `grace` after the user interrupts (Ctrl-C, SIGTERM): with
    /// retries a request against an unreachable endpoint can wait minutes in back-off.
    /// Dropping the future cancels it; a PUT that never completed leaves no object (one PUT
    /// per object). Reads and writes get no grace; deletes get [`DELETE_GRACE`], so that the
    /// lock removal on the way out still happens but a dead endpoint cannot hold the exit for
    /// retries × 120 s (a lock left behind is stale after its timeout, or at once on the same
    /// host, whose process is gone).
    fn block<F: std::future::IntoFuture>(&self, f: F, grace: Duration) -> Result<F::Output> {
        self.rt.block_on(async {
            let mut work = std::pin::pin!(f.into_future());
            let mut since: Option<std::time::Instant> = None;
            loop {
                match tokio::time::timeout(Duration::from_millis(100), &mut work).await {
                    Ok(out) => return Ok(out),
                    Err(_) if interrupted() => {
                        let t = *since.get_or_insert_with(std::time::Instant::now);
                        if t.elapsed() >= grace {
                            return Err(Error::Interrupted);
                        }
                    }
                    Err(_) => {}
                }
            }
        })
    }

    fn location_url(&self) -> String {
        let mut s = format!("s3:{}/{}", self.cfg.endpoint, self.cfg.bucket);
        if !self.cfg.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.cfg.prefix);
        }
        s
    }

    /// Whether the bucket is reachable; `Ok(false)` if it does not exist.
    fn put_owned(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        let key = Self::key(kind, name)?;
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        self.counts
            .bytes_up
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.block(self.op.write(&key, data), Duration::ZERO)?
            .map(|_| ())
            .map_err(|e| self.err("put", &key, e))
    }

    fn bucket_exists(&self) -> Result<bool> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        match self.block(self.op.list_with("").limit(1), Duration::ZERO)? {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err("list", "", e)),
        }
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.location_url()
    }

    fn exists(&self) -> Result<bool> {
        // A bucket with no config under the prefix is an empty location, not an error:
        // `probe` then says "not a repository" and `init` can create one there.
        self.bucket_exists()
    }

    fn create(&self) -> Result<()> {
        if !self.bucket_exists()? {
            return Err(Error::Backend(format!(
                "bucket {} does not exist at {}: create it first (cairn does not create buckets)",
                self.cfg.bucket, self.cfg.endpoint
            )));
        }
        Ok(())
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.put_owned(kind, name, data.to_vec())
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path) -> Result<()> {
        // One PUT of the whole pack (no multipart: a reader must never see part of it).
        // The buffer is handed to the client, not copied.
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.put_owned(kind, name, data)?;
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let key = Self::key(kind, name)?;
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        match self.block(self.op.read(&key), Duration::ZERO)? {
            Ok(buf) => {
                let v = into_vec(buf);
                self.counts
                    .bytes_down
                    .fetch_add(v.len() as u64, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::not_found(kind, name)),
            Err(e) => Err(self.err("get", &key, e)),
        }
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let key = Self::key(kind, name)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let v = match self.block(
            self.op.read_with(&key).range(offset..offset + len),
            Duration::ZERO,
        )? {
            Ok(buf) => into_vec(buf),
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(Error::not_found(kind, name)),
            Err(e) if e.kind() == ErrorKind::RangeNotSatisfied => Vec::new(),
            Err(e) => return Err(self.err("get", &key, e)),
        };
        self.counts
            .bytes_down
            .fetch_add(v.len() as u64, Ordering::Relaxed);
        if v.len() as u64 != len {
            return Err(Error::truncated(kind, name, offset, len, v.len()));
        }
        Ok(v)
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        let key = Self::key(kind, name)?;
        self.counts.head.fetch_add(1, Ordering::Relaxed);
        match self.block(self.op.stat(&key), Duration::ZERO)? {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("head", &key, e)),
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        if kind == FileKind::Config {
            return super::list_config(self);
        }
        let dir = format!("{}/", kind.dir());
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let entries = match self.block(self.op.list_with(&dir).recursive(true), Duration::ZERO)? {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.err("list", &dir, e)),
        };
        // A list request returns up to 1000 keys.
        self.counts
            .list
            .fetch_add((entries.len() as u64) / 1000, Ordering::Relaxed);
        let mut out: Vec<ObjectInfo> = entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .filter_map(|e| {
                let name = e.name().trim_end_matches('/');
                let name = name.rsplit('/').next().unwrap_or(name);
                super::is_object_name(name).then(|| ObjectInfo {
                    name: name.to_owned(),
                    size: e.metadata().content_length(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let key = Self::key(kind, name)?;
        self.counts.delete.fetch_add(1, Ordering::Relaxed);
        match self.block(self.op.delete(&key), DELETE_GRACE)? {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", &key, e)),
        }
    }

    fn connections(&self) -> usize {
        self.cfg.connections
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn temp_dir(&self) -> PathBuf {
        // Packs are assembled locally and uploaded by one PUT. A killed run leaves its open
        // packs here; `prune` removes those of writers that are gone (`temp_files`).
        let d = std::env::temp_dir().join("cairn-packs");
        let _ = std::fs::create_dir_all(&d);
        d
    }

    fn temp_files(&self) -> Result<Vec<super::TempFile>> {
        Ok(super::list_temp_files([self.temp_dir()]))
    }

    fn request_summary(&self) -> Option<String> {
        let c = &self.counts;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(format!(
            "s3 requests: {} PUT, {} GET, {} HEAD, {} LIST, {} DELETE; {} bytes up, {} down",
            g(&c.put),
            g(&c.get),
            g(&c.head),
            g(&c.list),
            g(&c.delete),
            g(&c.bytes_up),
            g(&c.bytes_down)
        ))
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        if let Some(s) = self.request_summary() {
            tracing::info!("{s}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_style_urls() {
        let c = S3Config::parse("s3:http://127.0.0.1:3900/backups/k3s/prod", &[]).unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:3900");
        assert_eq!(c.bucket, "backups");
        assert_eq!(c.prefix, "k3s/prod");
        let c = S3Config::parse("s3:s3.amazonaws.com/bucket", &[]).unwrap();
        assert_eq!(c.endpoint, "https://s3.amazonaws.com");
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", ""));
        let c = S3Config::parse("s3:https://minio:9000/b/", &[]).unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("b", ""));
        for bad in [
            "s3:",
            "s3:http://host",
            "s3:ftp://h/b",
            "/tmp/x",
            "s3:http:///b",
        ] {
            assert!(S3Config::parse(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_apply_and_unknown_ones_are_refused() {
        let o = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let c = S3Config::parse(
            "s3:http://h/b",
            &[
                o("s3.region", "garage"),
                o("s3.bucket-lookup", "dns"),
                o("s3.connections", "16"),
                o("s3.ec2-metadata", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.region.as_deref(), Some("garage"));
        assert!(c.virtual_host && c.ec2_metadata);
        assert_eq!(c.connections, 16);
        assert!(S3Config::parse("s3:http://h/b", &[o("s3.nope", "1")]).is_err());
        assert!(S3Config::parse("s3:http://h/b", &[o("s3.connections", "0")]).is_err());
        assert!(S3Config::parse("s3:http://h/b", &[o("s3.bucket-lookup", "x")]).is_err());
    }
}
