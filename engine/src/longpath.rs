//! File-system calls on paths of any length.
//!
//! A directory tree may be deeper than `PATH_MAX` (4096 bytes) allows a path to name: any
//! user who can create directories under a backed-up path can build one, and a restore must
//! recreate what a backup stored. The kernel walks each path given to a system call anew,
//! so instead of handing it such a path, [`with`] hands it `/proc/self/fd/N/<rest>`, where
//! `N` is an open descriptor of an ancestor directory (an *anchor*) and `<rest>` is short.
//! That is `openat`-style relative walking for every call, including those (`lgetxattr`,
//! `utimensat` on a symlink, `mknod`) that have no `*at` form in the libraries we use.
//!
//! Anchors sit at fixed component boundaries (every ~2 KiB of path), so paths that share a
//! prefix share anchors; each anchor is opened relative to the one before it. A small cache
//! keeps them open (bounded: it is dropped whole when full). Paths up to [`DIRECT_MAX`] bytes,
//! i.e. practically all of them, are passed through untouched at no cost.
//!
//! Without `/proc` (an unusual container) long paths fail with an error naming the path,
//! as they did before; nothing else changes.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// Paths up to this many bytes are used as they are (well below `PATH_MAX`, leaving room for
/// the `/proc/self/fd/N/` prefix of relative ones).
pub const DIRECT_MAX: usize = 3072;
/// Anchors are placed so that no relative remainder exceeds this.
const SEGMENT: usize = 2048;
/// Open anchors kept at most.
const CACHE_MAX: usize = 256;

/// Open anchors, keyed by (the anchor they were opened from, or 0 for the first segment;
/// the segment's bytes), so a key is at most a segment long whatever the depth.
type Anchors = HashMap<(u64, Vec<u8>), (u64, Arc<OwnedFd>)>;

fn cache() -> &'static Mutex<(Anchors, u64)> {
    static C: OnceLock<Mutex<(Anchors, u64)>> = OnceLock::new();
    C.get_or_init(|| Mutex::new((HashMap::new(), 0)))
}

/// Byte offsets in `p` where anchors go: component boundaries, greedily every ≤ [`SEGMENT`]
/// bytes. Deterministic in the prefix, so paths with a common prefix share their anchors.
fn boundaries(p: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut seg_start = 0;
    let mut last_sep = 0;
    for (i, &b) in p.iter().enumerate() {
        if b == b'/' && i > 0 {
            if i - seg_start > SEGMENT && last_sep > seg_start {
                out.push(last_sep);
                seg_start = last_sep;
            }
            last_sep = i;
        }
    }
    if p.len() - seg_start > SEGMENT && last_sep > seg_start {
        out.push(last_sep);
    }
    out
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(p)
        .map(OwnedFd::from)
}

fn via(fd: &OwnedFd, rest: &[u8]) -> PathBuf {
    let mut s = format!("/proc/self/fd/{}/", fd.as_raw_fd()).into_bytes();
    s.extend_from_slice(rest.strip_prefix(b"/").unwrap_or(rest));
    PathBuf::from(std::ffi::OsString::from_vec(s))
}

/// The anchor for the prefix `p[..bounds[last]]`, opening (and caching) each anchor of the
/// chain that is not cached yet.
fn anchor(p: &[u8], bounds: &[usize]) -> io::Result<Arc<OwnedFd>> {
    let mut parent: Option<(u64, Arc<OwnedFd>)> = None;
    let mut start = 0;
    for &end in bounds {
        let seg = &p[start..end];
        let parent_id = parent.as_ref().map_or(0, |(id, _)| *id);
        let key = (parent_id, seg.to_vec());
        let cached = cache().lock().0.get(&key).cloned();
        let next = match cached {
            Some(hit) => hit,
            None => {
                let fd = match &parent {
                    None => open_dir(Path::new(std::ffi::OsStr::from_bytes(seg)))?,
                    Some((_, pfd)) => open_dir(&via(pfd, seg))?,
                };
                let fd = Arc::new(fd);
                let mut c = cache().lock();
                if c.0.len() >= CACHE_MAX {
                    c.0.clear();
                }
                c.1 += 1;
                let id = c.1;
                c.0.insert(key, (id, fd.clone()));
                (id, fd)
            }
        };
        parent = Some(next);
        start = end;
    }
    parent
        .map(|(_, fd)| fd)
        .ok_or_else(|| io::Error::other("no anchor for a short path"))
}

/// Run `f` with a path that names `p` and that the kernel accepts whatever `p`'s length.
pub fn with<T>(p: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    let b = p.as_os_str().as_bytes();
    if b.len() <= DIRECT_MAX {
        return f(p);
    }
    let bounds = boundaries(b);
    let Some(&last) = bounds.last() else {
        return f(p);
    };
    let fd = anchor(b, &bounds)?;
    // `fd` stays open until `f` is done with the path that names it.
    f(&via(&fd, &b[last..]))
}

/// Forget every cached anchor (after directories were removed or replaced).
pub fn clear_cache() {
    cache().lock().0.clear();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_keep_segments_short() {
        let comp = "d".repeat(100);
        let p: String = (0..200).map(|_| format!("/{comp}")).collect();
        let b = boundaries(p.as_bytes());
        let mut prev = 0;
        for &x in b.iter().chain(std::iter::once(&p.len())) {
            assert!(x - prev <= SEGMENT, "segment {} bytes", x - prev);
            assert!(x == p.len() || p.as_bytes()[x] == b'/');
            prev = x;
        }
        // Deterministic in the prefix.
        let longer = format!("{p}/more/and/more");
        let b2 = boundaries(longer.as_bytes());
        assert_eq!(&b2[..b.len()], &b[..]);
    }

    #[test]
    fn creates_and_reads_beyond_path_max() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = dir.path().to_path_buf();
        for i in 0..140 {
            p.push(format!("{i:03}-{}", "x".repeat(60)));
            with(&p, |q| std::fs::create_dir(q)).unwrap();
        }
        assert!(p.as_os_str().len() > 8000);
        let f = p.join("file");
        with(&f, |q| std::fs::write(q, b"deep")).unwrap();
        assert_eq!(with(&f, |q| std::fs::read(q)).unwrap(), b"deep");
        assert!(
            std::fs::read(&f).is_err(),
            "the plain path is too long for the kernel"
        );
    }
}
