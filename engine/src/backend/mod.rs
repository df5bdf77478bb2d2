//! Storage backends. The trait is shaped for object stores: whole-object put, get, ranged get,
//! list by kind, delete. No rename, no append, no listing-after-write assumptions, so S3
//! fits behind it without changing the engine.

mod local;
mod rest;
mod s3;
mod sftp;

use std::fmt::Debug;

use cairn_format::FileKind;

pub use local::LocalBackend;
pub use rest::{fuzz_answer as fuzz_rest_answer, RestBackend, RestConfig};
pub use s3::{RequestCounts, S3Backend, S3Config};
pub use sftp::{fuzz_reply as fuzz_sftp_reply, SftpBackend, SftpConfig};

use crate::Result;

/// The backend a repository location names: a directory (optionally `local:DIR`),
/// `s3:http[s]://host[:port]/bucket[/prefix]` (restic's `s3:host/bucket` means HTTPS) or
/// `sftp:[user@]host:/path` (`sftp://[user@]host[:port]//path`) or
/// `rest:http[s]://[user:password@]host[:port]/path` (`cairn serve`), configured by `options`
/// (`-o s3.*`, `-o sftp.*`, `-o rest.*`; none apply to a directory).
pub fn from_location(
    loc: &str,
    options: &[(String, String)],
) -> Result<std::sync::Arc<dyn Backend>> {
    if loc.starts_with("s3:") {
        let cfg = S3Config::parse(loc, options)?;
        return Ok(std::sync::Arc::new(S3Backend::new(cfg)?));
    }
    if loc.starts_with("rest:") {
        let cfg = RestConfig::parse(loc, options)?;
        return Ok(std::sync::Arc::new(RestBackend::new(cfg)?));
    }
    if loc.starts_with("sftp:") {
        let cfg = SftpConfig::parse(loc, options)?;
        return Ok(std::sync::Arc::new(SftpBackend::new(cfg)?));
    }
    let path = loc.strip_prefix("local:").unwrap_or(loc);
    if path.contains("://") {
        return Err(crate::Error::Invalid(format!(
            "unsupported repository location {loc:?}: use a directory, s3:http[s]://host/bucket[/prefix], sftp:user@host:/path or rest:https://host:port/path"
        )));
    }
    if let Some((k, _)) = options.first() {
        return Err(crate::Error::Invalid(format!(
            "option {k} does not apply to a local repository"
        )));
    }
    Ok(std::sync::Arc::new(LocalBackend::new(path)))
}

/// A stored object's name and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object name (64 hex digits, or `config`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Where a repository's objects live.
pub trait Backend: Send + Sync + Debug {
    /// A printable location.
    fn location(&self) -> String;
    /// Whether the repository location exists at all.
    fn exists(&self) -> Result<bool>;
    /// Prepare an empty repository layout (directories on disk; nothing on S3).
    fn create(&self) -> Result<()>;
    /// Store a whole object durably. Objects are immutable: a second put of the same name
    /// carries the same bytes.
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// Read a whole object.
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;
    /// Read a whole object that may be at most `max` bytes long: a larger one is refused
    /// (exit 13) instead of read. Backends that can see the size first override this.
    fn get_max(&self, kind: FileKind, name: &str, max: u64) -> Result<Vec<u8>> {
        let data = self.get(kind, name)?;
        if data.len() as u64 > max {
            return Err(too_large(kind, name, data.len() as u64, max));
        }
        Ok(data)
    }
    /// Read `len` bytes at `offset`.
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Size of an object, or `None` if absent.
    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>>;
    /// All objects of a kind.
    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>>;
    /// Remove an object (absent is not an error).
    fn delete(&self, kind: FileKind, name: &str) -> Result<()>;
    /// Store an object from a complete, fsynced local file, which is consumed. Backends that
    /// can do better than reading it back (a rename on the same file system, a streamed
    /// upload) override this.
    fn put_file(&self, kind: FileKind, name: &str, path: &std::path::Path) -> Result<()> {
        let data = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
        self.put(kind, name, &data)?;
        std::fs::remove_file(path).map_err(|e| crate::Error::io(path, e))
    }

    /// [`Backend::put_file`] for a pack that holds only tree blobs. Caching wrappers keep a
    /// copy, so that the next run reads the trees it just wrote (its parent snapshot's) from
    /// local disk.
    fn put_tree_pack_file(&self, name: &str, path: &std::path::Path) -> Result<()> {
        self.put_file(FileKind::Pack, name, path)
    }

    /// Where to create temporary files destined for [`Backend::put_file`].
    fn temp_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir()
    }

    /// Temporary files of writes in progress or interrupted (`.tmp-*` in the repository, or
    /// in the local directory where packs for a remote repository are assembled).
    fn temp_files(&self) -> Result<Vec<TempFile>> {
        Ok(Vec::new())
    }

    /// Remove one of [`Backend::temp_files`].
    fn remove_temp(&self, path: &std::path::Path) -> Result<()> {
        remove_local_temp(path)
    }

    /// How many requests it pays to run at once against this backend.
    fn connections(&self) -> usize {
        2
    }

    /// Read a range of a pack that holds only tree blobs. Caching wrappers keep such packs
    /// locally; everyone else reads the range.
    fn get_tree_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.get_range(FileKind::Pack, name, offset, len)
    }

    /// Whether reads cost network round trips (and a local metadata cache pays off).
    fn is_remote(&self) -> bool {
        false
    }

    /// A one-line summary of the requests sent so far, for backends that count them.
    fn request_summary(&self) -> Option<String> {
        None
    }

    /// Whether this backend's credential may delete and overwrite objects (an append-only
    /// credential of `cairn serve` may not).
    fn may_delete(&self) -> Result<bool> {
        Ok(true)
    }

    /// Bytes of objects of `kind` fetched from the repository so far, for caching backends
    /// (what was served from the cache is not counted).
    fn fetched_bytes(&self, _kind: FileKind) -> Option<u64> {
        None
    }
}

/// Whether `name` can be a repository object name: 64 lowercase hex digits (FORMAT.md §1).
/// Hex only, so it can never become a path outside the repository, whatever a user or a
/// listing supplies; exactly an id's length, so that a stray file (`locks/abcdef`, a
/// truncated copy's name) is not listed as an object that then fails to parse and stops
/// every command, `unlock` included.
pub(crate) fn is_object_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where an object lives relative to the repository root, the same on every backend:
/// `config`, `<kind dir>/<name>`, and `data/<first 2 hex>/<name>` for packs.
pub fn object_path(kind: FileKind, name: &str) -> Result<String> {
    if kind == FileKind::Config {
        return Ok("config".to_owned());
    }
    if !is_object_name(name) {
        return Err(crate::Error::Invalid(format!(
            "invalid object name {name:?}"
        )));
    }
    Ok(if kind == FileKind::Pack {
        format!("{}/{}/{name}", kind.dir(), &name[..2])
    } else {
        format!("{}/{name}", kind.dir())
    })
}

/// `list(Config)`: the config object, if `stat` finds it.
pub(crate) fn list_config(be: &dyn Backend) -> Result<Vec<ObjectInfo>> {
    Ok(be
        .stat(FileKind::Config, "config")?
        .map(|size| ObjectInfo {
            name: "config".into(),
            size,
        })
        .into_iter()
        .collect())
}

/// A temporary file (see [`Backend::temp_files`]).
#[derive(Clone, Debug)]
pub struct TempFile {
    /// Where it is.
    pub path: std::path::PathBuf,
    /// Its size.
    pub size: u64,
    /// Time since it was last written.
    pub age: std::time::Duration,
}

impl TempFile {
    /// The [`crate::util::writer_tag`] of the process that created it, if it has one.
    pub fn writer(&self) -> Option<&str> {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::util::temp_file_writer)
    }
}

/// Remove a local temporary file; one already gone is fine.
pub(crate) fn remove_local_temp(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::Error::io(path, e)),
    }
}

/// The `.tmp-*` files in `dirs`. Unreadable directories are skipped.
pub(crate) fn list_temp_files(dirs: impl IntoIterator<Item = std::path::PathBuf>) -> Vec<TempFile> {
    let now = std::time::SystemTime::now();
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            let age = m
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            out.push(TempFile {
                path: e.path(),
                size: m.len(),
                age,
            });
        }
    }
    out
}

/// Remove `.tmp-*` files older than `age` from `dirs` (left by killed writers); returns how
/// many were removed. Unreadable directories are skipped.
pub(crate) fn sweep_temp_files(
    dirs: impl IntoIterator<Item = std::path::PathBuf>,
    age: std::time::Duration,
) -> u64 {
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let stale = e.file_name().to_string_lossy().starts_with(".tmp-")
                && e.metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|a| a > age);
            if stale && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// The certificates of a PEM file given as `s3.ca-file` / `rest.ca-file` (a private CA):
/// a file without any is an error, not an empty trust list.
pub(crate) fn ca_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        crate::Error::Invalid(format!(
            "{}: not a PEM certificate file: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(crate::Error::Invalid(format!(
            "{}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The error for an object larger than the format allows for its kind.
pub(crate) fn too_large(kind: FileKind, name: &str, size: u64, max: u64) -> crate::Error {
    crate::Error::Format(cairn_format::FormatError::TooLarge {
        what: format!("{} {}", kind.name(), &name[..name.len().min(8)]),
        claimed: size,
        limit: max,
    })
}
