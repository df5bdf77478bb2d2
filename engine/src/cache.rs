//! A local cache of a remote repository's metadata: snapshot files, index files and the
//! packs that hold tree blobs. `snapshots`, `ls`, `restore` of one file and incremental
//! backups then read them from local disk instead of downloading them on every run. What this
//! host writes (snapshots, index files, tree packs) enters the cache as it is uploaded, so the
//! nightly backup finds its parent's trees locally.
//!
//! The cache is never trusted: every object in a repository is named by the BLAKE3 hash of
//! its bytes, so a cached object is hashed before use and a mismatch (a torn write, a bit
//! flip, an edit) deletes the entry and falls back to the backend. What is served is then
//! authenticated by the repository as usual (AEAD on every file and blob). Entries whose
//! object is gone from the repository are dropped when the kind is listed.
//!
//! Layout: `<cache>/<repo id>/{snapshots,index,data}/<name>`, written as temp + rename.

use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_format::FileKind;
use parking_lot::Mutex;

use crate::backend::{Backend, ObjectInfo};
use crate::repository::verify_name;
use crate::{Error, Result};

/// The default cache directory: `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("cairn"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("cairn"))
}

/// A [`Backend`] wrapper that keeps verified copies of metadata objects on local disk.
#[derive(Debug)]
pub struct CachedBackend {
    inner: Arc<dyn Backend>,
    dir: PathBuf,
    /// Cached packs already hashed by this process (a pack is read many times).
    verified: Mutex<HashSet<String>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Bytes fetched from the repository: snapshots, index files.
    fetched: [AtomicU64; 2],
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn cached_kind(kind: FileKind) -> bool {
    matches!(kind, FileKind::Snapshot | FileKind::Index)
}

impl CachedBackend {
    /// Cache `inner` in `dir` (created if missing).
    pub fn new(inner: Arc<dyn Backend>, dir: PathBuf) -> Result<CachedBackend> {
        for sub in ["snapshots", "index", "data"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            // Temporary files a killed process left over an hour ago (a live one renames
            // its own within seconds).
            crate::backend::sweep_temp_files([d], std::time::Duration::from_secs(3600));
        }
        let tag = dir.join("CACHEDIR.TAG");
        if !tag.exists() {
            // Tells backup tools (cairn's own excludes included) to skip the cache.
            let _ = fs::write(
                &tag,
                "Signature: 8a477f597d28d172789f06886806bc55\n# cairn cache: safe to delete\n",
            );
        }
        Ok(CachedBackend {
            inner,
            dir,
            verified: Mutex::new(HashSet::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fetched: Default::default(),
        })
    }

    /// The cache directory of this repository.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn path(&self, kind: FileKind, name: &str) -> Option<PathBuf> {
        // Only names that are plain hex can become paths.
        if !crate::backend::is_object_name(name) {
            return None;
        }
        Some(self.dir.join(kind.dir()).join(name))
    }

    /// A verified cached copy, or `None` (a bad copy is removed).
    fn read_verified(&self, kind: FileKind, name: &str, path: &Path) -> Option<Vec<u8>> {
        let data = fs::read(path).ok()?;
        if verify_name(kind, name, &data).is_ok() {
            Some(data)
        } else {
            tracing::warn!("cache: {} is corrupt; fetching it again", path.display());
            let _ = fs::remove_file(path);
            None
        }
    }

    fn store(&self, path: &Path, data: &[u8]) {
        // Best effort: a cache that cannot be written only costs downloads.
        let tmp = temp_beside(path);
        if fs::write(&tmp, data).is_ok() && fs::rename(&tmp, path).is_ok() {
            return;
        }
        let _ = fs::remove_file(&tmp);
    }

    /// Forget cached objects of `kind` that the repository no longer has.
    fn retain(&self, kind: FileKind, present: &[ObjectInfo]) {
        let keep: HashSet<&str> = present.iter().map(|o| o.name.as_str()).collect();
        let Ok(rd) = fs::read_dir(self.dir.join(kind.dir())) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !keep.contains(name.as_ref()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// A range of a pack that holds tree blobs: served from a verified cached copy of the
    /// whole pack, downloaded on first use.
    fn tree_pack_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let Some(path) = self.path(FileKind::Pack, name) else {
            return self.inner.get_range(FileKind::Pack, name, offset, len);
        };
        let known_good = self.verified.lock().contains(name);
        if !known_good && path.exists() && self.read_verified(FileKind::Pack, name, &path).is_some()
        {
            self.verified.lock().insert(name.to_owned());
        }
        if self.verified.lock().contains(name) {
            if let Some(v) = read_range(&path, offset, len) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
            // Vanished or shrank under us (another process pruning the cache).
            self.verified.lock().remove(name);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.inner.get(FileKind::Pack, name)?;
        verify_name(FileKind::Pack, name, &data)?;
        self.store(&path, &data);
        self.verified.lock().insert(name.to_owned());
        let (start, end) = (offset as usize, (offset + len) as usize);
        data.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
            Error::truncated(
                FileKind::Pack,
                name,
                offset,
                len,
                data.len().saturating_sub(start),
            )
        })
    }
}

impl Drop for CachedBackend {
    fn drop(&mut self) {
        let (h, m) = self.stats();
        tracing::info!("cache {}: {h} hits, {m} misses", self.dir.display());
    }
}

/// A fresh temporary name in `path`'s directory (renamed over `path` once complete).
fn temp_beside(path: &Path) -> PathBuf {
    path.with_file_name(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

fn read_range(path: &Path, offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut f = fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 == len).then_some(buf)
}

impl Backend for CachedBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn exists(&self) -> Result<bool> {
        self.inner.exists()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.inner.put(kind, name, data)?;
        if cached_kind(kind) {
            if let Some(p) = self.path(kind, name) {
                self.store(&p, data);
            }
        }
        Ok(())
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path) -> Result<()> {
        self.inner.put_file(kind, name, path)
    }

    fn put_tree_pack_file(&self, name: &str, path: &Path) -> Result<()> {
        // Keep a copy before the upload consumes the file; it enters the cache only once the
        // upload succeeded (a failed one must not leave a pack the repository lacks).
        let cached = self.path(FileKind::Pack, name);
        let tmp = cached.as_deref().map(temp_beside).filter(|tmp| {
            let kept = fs::hard_link(path, tmp).is_ok() || fs::copy(path, tmp).is_ok();
            if !kept {
                // A copy that failed part-way (a full disk) leaves a partial file.
                let _ = fs::remove_file(tmp);
            }
            kept
        });
        let stored = self.inner.put_tree_pack_file(name, path);
        if let (Some(dest), Some(tmp)) = (cached, tmp) {
            if stored.is_ok() && fs::rename(&tmp, &dest).is_ok() {
                // This process wrote these bytes and named them by their hash; another
                // process hashes the file before its first use, like any cache entry.
                self.verified.lock().insert(name.to_owned());
            } else {
                let _ = fs::remove_file(&tmp);
            }
        }
        stored
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        if !cached_kind(kind) {
            return self.inner.get(kind, name);
        }
        let Some(path) = self.path(kind, name) else {
            return self.inner.get(kind, name);
        };
        if let Some(v) = self.read_verified(kind, name, &path) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.inner.get(kind, name)?;
        self.fetched[usize::from(kind == FileKind::Index)]
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // Only a verified object is cached; a bad one is the repository's problem to report.
        if verify_name(kind, name, &data).is_ok() {
            self.store(&path, &data);
        }
        Ok(data)
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.get_range(kind, name, offset, len)
    }

    fn get_tree_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.tree_pack_range(name, offset, len)
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        self.inner.stat(kind, name)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        let v = self.inner.list(kind)?;
        if cached_kind(kind) || kind == FileKind::Pack {
            self.retain(kind, &v);
        }
        Ok(v)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.inner.delete(kind, name)?;
        if let Some(p) = self.path(kind, name) {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cache: removing {}: {e}", p.display()),
            }
        }
        self.verified.lock().remove(name);
        Ok(())
    }

    fn temp_dir(&self) -> PathBuf {
        self.inner.temp_dir()
    }
    fn temp_files(&self) -> Result<Vec<crate::backend::TempFile>> {
        self.inner.temp_files()
    }
    fn remove_temp(&self, path: &Path) -> Result<()> {
        self.inner.remove_temp(path)
    }
    fn connections(&self) -> usize {
        self.inner.connections()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    fn may_delete(&self) -> Result<bool> {
        self.inner.may_delete()
    }

    fn fetched_bytes(&self, kind: FileKind) -> Option<u64> {
        cached_kind(kind)
            .then(|| self.fetched[usize::from(kind == FileKind::Index)].load(Ordering::Relaxed))
    }

    fn request_summary(&self) -> Option<String> {
        let (h, m) = self.stats();
        Some(match self.inner.request_summary() {
            Some(s) => format!("{s}; cache {h} hits, {m} misses"),
            None => format!("cache {h} hits, {m} misses"),
        })
    }
}
