//! The one durable-write path for whole files: repository metadata objects, and files the
//! job writes (metrics), go through [`write_atomic`] / [`write_atomic_mode`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::RngCore;

use crate::{Error, Result};

/// Write `data` to `path` so that after a crash `path` either does not exist or holds exactly
/// `data`: write a temp file in the same directory, fsync it, rename it into place, fsync the
/// directory (the rename itself is only durable once the directory entry is).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, 0o600)
}

/// [`write_atomic`] with file mode `mode` (e.g. 0644 for a metrics file that node-exporter,
/// running as nobody, must read).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no parent", path.display())))?;
    // Named after the writer, so that `prune` can tell a live writer's file from a leftover.
    let tmp = dir.join(format!(
        ".tmp-{}-{:016x}",
        crate::util::my_writer_tag(),
        rand::rng().next_u64()
    ));
    let res = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(data).map_err(|e| Error::io(&tmp, e))?;
        // The umask may have taken group/other bits away; a mode that grants them is meant.
        if mode & 0o077 != 0 {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(|e| Error::io(&tmp, e))?;
        }
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(dir)
    })();
    if res.is_err() {
        // Leave no partial temp file behind (a full disk must not leak space).
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// fsync a directory so entries created or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
