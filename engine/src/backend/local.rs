use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cairn_format::FileKind;

use super::{Backend, ObjectInfo};
use crate::durable::{sync_dir, write_atomic};
use crate::{Error, Result};

/// A repository in a local (or NFS-mounted) directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend rooted at `root` (not created until [`Backend::create`]).
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: FileKind, name: &str) -> Result<PathBuf> {
        Ok(self.root.join(super::object_path(kind, name)?))
    }
}

fn map_read_err(kind: FileKind, name: &str, path: &Path, e: io::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::not_found(kind, name)
    } else {
        Error::io(path, e)
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn exists(&self) -> Result<bool> {
        match fs::metadata(&self.root) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&self.root, e)),
        }
    }

    fn create(&self) -> Result<()> {
        fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        for kind in [
            FileKind::Key,
            FileKind::Lock,
            FileKind::Snapshot,
            FileKind::Index,
            FileKind::Pack,
        ] {
            let d = self.root.join(kind.dir());
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let data = self.root.join("data");
        for i in 0..=255u8 {
            let d = data.join(format!("{i:02x}"));
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        sync_dir(&data)?;
        sync_dir(&self.root)
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(kind, name)?;
        if let Some(parent) = path.parent() {
            if !parent.is_dir() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        write_atomic(&path, data)
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path) -> Result<()> {
        // The temp file lives in the repository (see `temp_dir`) and was fsynced by the
        // writer: a rename and a directory fsync make it durable under its final name.
        let dest = self.path(kind, name)?;
        if let Some(parent) = dest.parent() {
            if !parent.is_dir() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        fs::rename(path, &dest).map_err(|e| Error::io(&dest, e))?;
        sync_dir(dest.parent().unwrap_or(&self.root))
    }

    fn temp_dir(&self) -> PathBuf {
        // Inside the repository, so that publishing a pack is a rename on one file system.
        // Names start with '.', which listings skip; `prune` removes stale ones.
        self.root.join("data")
    }

    fn temp_files(&self) -> Result<Vec<super::TempFile>> {
        let mut dirs = vec![self.root.clone()];
        for kind in [
            FileKind::Key,
            FileKind::Lock,
            FileKind::Snapshot,
            FileKind::Index,
            FileKind::Pack,
        ] {
            dirs.push(self.root.join(kind.dir()));
        }
        for i in 0..=255u8 {
            dirs.push(self.root.join("data").join(format!("{i:02x}")));
        }
        Ok(super::list_temp_files(dirs))
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let path = self.path(kind, name)?;
        fs::read(&path).map_err(|e| map_read_err(kind, name, &path, e))
    }

    fn get_max(&self, kind: FileKind, name: &str, max: u64) -> Result<Vec<u8>> {
        let path = self.path(kind, name)?;
        let f = File::open(&path).map_err(|e| map_read_err(kind, name, &path, e))?;
        let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len > max {
            return Err(super::too_large(kind, name, len, max));
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(&path, e))?;
        if buf.len() as u64 > max {
            return Err(super::too_large(kind, name, buf.len() as u64, max));
        }
        Ok(buf)
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path(kind, name)?;
        let mut f = File::open(&path).map_err(|e| map_read_err(kind, name, &path, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(&path, e))?;
        let mut buf = Vec::with_capacity(len as usize);
        f.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(&path, e))?;
        if buf.len() as u64 != len {
            return Err(Error::truncated(kind, name, offset, len, buf.len()));
        }
        Ok(buf)
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        let path = self.path(kind, name)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        if kind == FileKind::Config {
            return super::list_config(self);
        }
        let dir = self.root.join(kind.dir());
        let mut out = Vec::new();
        let mut dirs = vec![dir.clone()];
        if kind == FileKind::Pack {
            dirs.clear();
            for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                let e = e.map_err(|e| Error::io(&dir, e))?;
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push(e.path());
                }
            }
        }
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&d, e)),
            };
            for e in rd {
                let e = e.map_err(|e| Error::io(&d, e))?;
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                // Temp files of an interrupted write are not objects.
                if !super::is_object_name(name) {
                    continue;
                }
                // Deleted between the listing and this look (a prune or a released lock,
                // from another process): not an object any more.
                let size = match e.metadata() {
                    // A directory is no object, whatever its name (a symlink to a pack is).
                    Ok(m) if m.is_dir() => continue,
                    Ok(m) => m.len(),
                    Err(err) if err.kind() == ErrorKind::NotFound => continue,
                    Err(err) => return Err(Error::io(e.path(), err)),
                };
                out.push(ObjectInfo {
                    name: name.to_owned(),
                    size,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let path = self.path(kind, name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}
