//! The repositories on the server's disk: verified, durable writes; reads, listings and
//! deletes through the same layout code as the local backend.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_engine::backend::{object_path, Backend, LocalBackend, ObjectInfo};
use cairn_format::FileKind;

use crate::{Error, Result};

/// The repositories under one root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The first bytes are not a cairn object of the kind the name says.
    #[error("the body is not a cairn {0} object (wrong preamble)")]
    Preamble(&'static str),
    /// The BLAKE3 hash of the body is not the object's name.
    #[error("the body's BLAKE3 hash {0} is not the object's name")]
    Hash(String),
    /// Longer than the server accepts for the kind.
    #[error("the body is longer than the {0} bytes accepted for this kind")]
    TooLarge(u64),
    /// The body ended early or the connection broke.
    #[error("the upload was cut short: {0}")]
    Incomplete(String),
}

impl Store {
    /// Repositories under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The directory of repository `repo`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        if repo.is_empty() {
            self.root.clone()
        } else {
            self.root.join(repo)
        }
    }

    /// The local backend of repository `repo`.
    pub fn backend(&self, repo: &str) -> LocalBackend {
        LocalBackend::new(self.repo_dir(repo))
    }

    /// Where object `name` of `kind` lives.
    pub fn path(&self, repo: &str, kind: FileKind, name: &str) -> Result<PathBuf> {
        Ok(self.repo_dir(repo).join(object_path(kind, name)?))
    }

    /// Whether repository `repo` has a config (is a repository at all).
    pub fn is_repository(&self, repo: &str) -> bool {
        self.repo_dir(repo).join("config").is_file()
    }

    /// The repository that repository path `repo` would lie inside, if any.
    pub fn enclosing_repository(&self, repo: &str) -> Option<String> {
        let segs: Vec<&str> = if repo.is_empty() {
            Vec::new()
        } else {
            repo.split('/').collect()
        };
        (0..segs.len())
            .map(|n| segs[..n].join("/"))
            .find(|outer| self.is_repository(outer))
    }

    /// All objects of `kind`.
    pub fn list(&self, repo: &str, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        Ok(self.backend(repo).list(kind)?)
    }

    /// Lay out a new repository (idempotent).
    pub fn create(&self, repo: &str) -> Result<()> {
        Ok(self.backend(repo).create()?)
    }

    /// Remove an object; `false` if it was not there.
    pub fn delete(&self, repo: &str, kind: FileKind, name: &str) -> Result<bool> {
        let path = self.path(repo, kind, name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    cairn_engine::sync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Io {
                what: path.display().to_string(),
                source: e,
            }),
        }
    }

    /// Start an upload of object `name` of `kind` into repository `repo`, at most `max`
    /// bytes long.
    pub fn upload(&self, repo: &str, kind: FileKind, name: &str, max: u64) -> Result<Upload> {
        let dest = self.path(repo, kind, name)?;
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        if !dir.is_dir() {
            if !self.is_repository(repo) {
                return Err(Error::NoRepository(repo.to_owned()));
            }
            std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
                what: dir.display().to_string(),
                source: e,
            })?;
            // The new directories' entries must be as durable as the object stored in them.
            let top = self.repo_dir(repo);
            let mut d = dir.as_path();
            while d != top {
                let Some(parent) = d.parent() else { break };
                cairn_engine::sync_dir(parent)?;
                d = parent;
            }
        }
        // Named like every cairn writer's temporary files (FORMAT.md §1), so that `prune`
        // on this host knows whether the server that wrote one is still running.
        let temp = dir.join(format!(
            ".tmp-{}-serve-{:016x}",
            cairn_engine::util::my_writer_tag(),
            rand::random::<u64>()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| Error::Io {
                what: temp.display().to_string(),
                source: e,
            })?;
        Ok(Upload {
            kind,
            name: name.to_owned(),
            dest,
            temp: Some(temp),
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            head: Vec::with_capacity(8),
            len: 0,
            max,
        })
    }
}

/// An upload in progress: bytes go to a temporary file as they arrive, hashed on the way;
/// [`Upload::finish`] publishes the object only if it is what its name says. Dropped
/// unfinished, the temporary file is removed.
#[derive(Debug)]
pub struct Upload {
    kind: FileKind,
    name: String,
    dest: PathBuf,
    temp: Option<PathBuf>,
    file: std::io::BufWriter<std::fs::File>,
    hasher: blake3::Hasher,
    head: Vec<u8>,
    len: u64,
    max: u64,
}

/// The preamble every object starts with: `cairn`, the kind letter (FORMAT.md §2).
fn preamble_ok(kind: FileKind, head: &[u8]) -> bool {
    head.len() >= 6 && &head[..5] == b"cairn" && head[5] == kind.letter()
}

impl Upload {
    /// Append the next bytes of the body.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.len += chunk.len() as u64;
        if self.len > self.max {
            return Err(Error::Refused(Refusal::TooLarge(self.max)));
        }
        if self.head.len() < 8 {
            let take = (8 - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            if self.head.len() >= 6 && !preamble_ok(self.kind, &self.head) {
                return Err(Error::Refused(Refusal::Preamble(self.kind.name())));
            }
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).map_err(|e| self.io(e))
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::Io {
            what: self
                .temp
                .as_deref()
                .unwrap_or(Path::new("upload"))
                .display()
                .to_string(),
            source: e,
        }
    }

    /// Check the whole body, make it durable and publish it under its name. `replace`:
    /// an existing object may be replaced (otherwise it is kept and this upload dropped).
    /// Returns whether the object was written.
    pub fn finish(mut self, replace: bool) -> Result<bool> {
        if self.head.len() < 8 {
            return Err(Error::Refused(Refusal::Preamble(self.kind.name())));
        }
        if self.kind != FileKind::Config {
            let hash = self.hasher.finalize().to_hex().to_string();
            if hash != self.name {
                return Err(Error::Refused(Refusal::Hash(hash)));
            }
        }
        self.file.flush().map_err(|e| self.io(e))?;
        self.file.get_ref().sync_all().map_err(|e| self.io(e))?;
        let temp = self.temp.take().unwrap_or_default();
        let published = if replace {
            std::fs::rename(&temp, &self.dest)
        } else {
            // A hard link fails if the name exists: no window in which an existing object
            // could be replaced, whatever runs at the same time.
            std::fs::hard_link(&temp, &self.dest).and_then(|()| std::fs::remove_file(&temp))
        };
        match published {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&temp);
                return Ok(false);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(Error::Io {
                    what: self.dest.display().to_string(),
                    source: e,
                });
            }
        }
        if let Some(dir) = self.dest.parent() {
            cairn_engine::sync_dir(dir)?;
        }
        Ok(true)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn object(kind: FileKind, body: &[u8]) -> (String, Vec<u8>) {
        let mut data = b"cairn".to_vec();
        data.push(kind.letter());
        data.extend_from_slice(&3u16.to_le_bytes());
        data.extend_from_slice(body);
        (blake3::hash(&data).to_hex().to_string(), data)
    }

    #[test]
    fn uploads_are_verified_before_they_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.create("r").unwrap();
        std::fs::write(dir.path().join("r/config"), b"x").unwrap();
        let (name, data) = object(FileKind::Snapshot, b"hello");

        // Wrong kind letter: refused at the first bytes.
        let mut up = store.upload("r", FileKind::Index, &name, 1 << 20).unwrap();
        assert!(matches!(
            up.write(&data),
            Err(Error::Refused(Refusal::Preamble(_)))
        ));
        drop(up);
        // Right preamble, wrong name.
        let (other, _) = object(FileKind::Snapshot, b"other");
        let mut up = store
            .upload("r", FileKind::Snapshot, &other, 1 << 20)
            .unwrap();
        up.write(&data).unwrap();
        assert!(matches!(
            up.finish(false),
            Err(Error::Refused(Refusal::Hash(_)))
        ));
        // Too long.
        let mut up = store.upload("r", FileKind::Snapshot, &name, 10).unwrap();
        assert!(matches!(
            up.write(&data),
            Err(Error::Refused(Refusal::TooLarge(10)))
        ));
        drop(up);
        let listed = |d: &str| std::fs::read_dir(dir.path().join(d)).unwrap().count();
        assert_eq!(listed("r/snapshots"), 0, "nothing refused is left behind");
        assert_eq!(listed("r/index"), 0);

        // In pieces, then the same again: kept, not replaced.
        let mut up = store
            .upload("r", FileKind::Snapshot, &name, 1 << 20)
            .unwrap();
        for piece in data.chunks(3) {
            up.write(piece).unwrap();
        }
        assert!(up.finish(false).unwrap());
        let mut up = store
            .upload("r", FileKind::Snapshot, &name, 1 << 20)
            .unwrap();
        up.write(&data).unwrap();
        assert!(!up.finish(false).unwrap());
        assert_eq!(listed("r/snapshots"), 1);
        assert_eq!(store.list("r", FileKind::Snapshot).unwrap().len(), 1);
        assert!(store.delete("r", FileKind::Snapshot, &name).unwrap());
        assert!(!store.delete("r", FileKind::Snapshot, &name).unwrap());
    }
}
