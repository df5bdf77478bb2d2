//! File-system metadata: from `lstat` to a tree node, and back onto a restored file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use cairn_format::{FileTime, Node, NodeKind, Xattr};
use parking_lot::Mutex;

use crate::{Error, Result};

/// uid/gid → name caches (NSS lookups are slow and the same few ids repeat).
#[derive(Debug, Default)]
pub struct NameCache {
    users: Mutex<HashMap<u32, String>>,
    groups: Mutex<HashMap<u32, String>>,
}

impl NameCache {
    /// The user name of `uid` ("" if none).
    pub fn user(&self, uid: u32) -> String {
        self.users
            .lock()
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_default()
            })
            .clone()
    }

    /// The group name of `gid` ("" if none).
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .lock()
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_default()
            })
            .clone()
    }
}

fn ft(secs: i64, nsec: i64) -> FileTime {
    FileTime {
        secs,
        nanos: nsec.clamp(0, 999_999_999) as u32,
    }
}

/// The node kind of `meta`.
pub fn kind_of(meta: &Metadata) -> NodeKind {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_socket() {
        NodeKind::Socket
    } else if t.is_char_device() {
        NodeKind::CharDevice
    } else if t.is_block_device() {
        NodeKind::BlockDevice
    } else {
        NodeKind::File
    }
}

/// A node for `path` from its `lstat` metadata; content and subtree are filled in later.
///
/// `previous` is the same entry in the parent snapshot. If its inode and change time are
/// unchanged, its xattrs and symlink target are reused instead of read again: setting an
/// xattr updates the change time, and a symlink's target cannot change in place. That saves
/// a `listxattr` path walk per entry on an unchanged tree.
///
/// `file_xattrs_later`: a regular file whose xattrs cannot be reused gets none here, and the
/// caller reads them from the file once it has opened it ([`read_file_xattrs`]), which saves
/// the path walk of a `listxattr` by name for every file a backup reads. Whether they were
/// left out is [`xattrs_pending`].
pub fn node_from_meta(
    name: &OsStr,
    path: &Path,
    meta: &Metadata,
    names: &NameCache,
    previous: Option<&Node>,
    file_xattrs_later: bool,
) -> Result<Node> {
    let kind = kind_of(meta);
    let ctime = ft(meta.ctime(), meta.ctime_nsec());
    let unchanged = previous.filter(|p| same_inode_unchanged(p, kind, meta, ctime));
    let link_target = if let Some(p) = unchanged {
        p.link_target.clone()
    } else if kind == NodeKind::Symlink {
        crate::longpath::with(path, |q| std::fs::read_link(q))
            .map_err(|e| Error::io(path, e))?
            .as_os_str()
            .as_bytes()
            .to_vec()
    } else {
        Vec::new()
    };
    Ok(Node {
        name: name.as_bytes().to_vec(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user: names.user(meta.uid()),
        group: names.group(meta.gid()),
        mtime: ft(meta.mtime(), meta.mtime_nsec()),
        atime: ft(meta.atime(), meta.atime_nsec()),
        ctime,
        size: if kind == NodeKind::File || kind == NodeKind::Symlink {
            meta.size()
        } else {
            0
        },
        inode: meta.ino(),
        device: meta.dev(),
        rdev: if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
            meta.rdev()
        } else {
            0
        },
        links: meta.nlink(),
        link_target,
        xattrs: match unchanged {
            Some(p) => p.xattrs.clone(),
            None if file_xattrs_later && kind == NodeKind::File => Vec::new(),
            None => read_xattrs(path),
        },
        content: cairn_format::Content::default(),
        subtree: None,
    })
}

/// Whether `previous` is the same inode as `meta` describes, not changed since (its xattrs and
/// symlink target still hold).
fn same_inode_unchanged(previous: &Node, kind: NodeKind, meta: &Metadata, ctime: FileTime) -> bool {
    previous.kind == kind
        && previous.inode == meta.ino()
        && previous.device == meta.dev()
        && previous.ctime == ctime
}

/// Whether [`node_from_meta`] with `file_xattrs_later` left a regular file's xattrs for the
/// caller to read.
pub fn xattrs_pending(meta: &Metadata, previous: Option<&Node>) -> bool {
    let kind = kind_of(meta);
    kind == NodeKind::File
        && !previous.is_some_and(|p| {
            same_inode_unchanged(p, kind, meta, ft(meta.ctime(), meta.ctime_nsec()))
        })
}

/// Extended attributes of an open file: [`read_xattrs`] without a path walk.
pub fn read_file_xattrs(file: &std::fs::File) -> Vec<Xattr> {
    use xattr::FileExt;
    collect_xattrs(file.list_xattr(), |n| file.get_xattr(n))
}

/// The sorted xattrs whose `names` were listed, each value read with `get`; a name whose value
/// is gone by then is left out, and a listing that failed (no xattr support) yields none.
fn collect_xattrs<N: Iterator<Item = std::ffi::OsString>>(
    names: std::io::Result<N>,
    get: impl Fn(&OsStr) -> std::io::Result<Option<Vec<u8>>>,
) -> Vec<Xattr> {
    let Ok(names) = names else {
        return Vec::new();
    };
    let mut out: Vec<Xattr> = names
        .filter_map(|n| {
            let value = get(&n).ok().flatten()?;
            Some(Xattr {
                name: n.as_bytes().to_vec(),
                value,
            })
        })
        .collect();
    out.sort();
    out
}

/// Extended attributes of `path` itself (not of a symlink's target). File systems without
/// xattr support simply yield none.
pub fn read_xattrs(path: &Path) -> Vec<Xattr> {
    crate::longpath::with(path, |q| {
        Ok(collect_xattrs(xattr::list(q), |n| xattr::get(q, n)))
    })
    .unwrap_or_default()
}

/// Open a file for reading without updating its access time (`O_NOATIME`).
///
/// A backup is not a use of the data: tools that age files out by atime (`systemd-tmpfiles`,
/// `tmpwatch`) must see the same atimes after it, and the atime a node records would
/// otherwise be the previous backup's read, so the next night's tree would differ. The kernel
/// allows the flag to the file's owner and to `CAP_FOWNER`; anyone else gets `EPERM`, and the
/// file is then opened as usual.
pub fn open_source(path: &Path) -> std::io::Result<std::fs::File> {
    open_noatime(path, 0)
}

/// Open `path` read-only with `flags` and `O_NOATIME`, or without `O_NOATIME` where the
/// kernel refuses it (`EPERM`: neither the owner nor `CAP_FOWNER`).
fn open_noatime(path: &Path, flags: libc::c_int) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |noatime| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | noatime)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    }
}

/// The names in directory `path` (without `.` and `..`), read without updating the
/// directory's access time (see [`open_source`]; relatime would otherwise refresh it every
/// night, and the directory's node in its parent's tree with it, so every tree up to the
/// root would be stored again).
pub fn list_dir(path: &Path) -> std::io::Result<DirNames> {
    let f = open_noatime(path, libc::O_DIRECTORY)?;
    let dir = nix::dir::Dir::from_fd(f.into()).map_err(std::io::Error::from)?;
    Ok(DirNames(dir.into_iter()))
}

/// Iterator over the names [`list_dir`] reads.
#[derive(Debug)]
pub struct DirNames(nix::dir::OwningIter);

impl Iterator for DirNames {
    type Item = std::io::Result<std::ffi::OsString>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = match self.0.next()? {
                Ok(e) => e,
                Err(e) => return Some(Err(e.into())),
            };
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                return Some(Ok(OsStr::from_bytes(name).to_owned()));
            }
        }
    }
}

/// An xattr that could not be restored. The privileged namespaces (`trusted.*`,
/// `security.*`) refused to an unprivileged restore are skipped, as restic does: the user
/// cannot have them. Anything else (no room for it, a file system without xattrs, a value
/// too large) fails the file: a restore that reports success must be faithful.
fn xattr_not_set(path: &Path, name: &[u8], e: std::io::Error) -> Result<()> {
    let privileged = name.starts_with(b"trusted.") || name.starts_with(b"security.");
    let refused = matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES));
    if privileged && refused {
        tracing::debug!(
            "xattr {:?} on {}: {e}",
            String::from_utf8_lossy(name),
            path.display()
        );
        return Ok(());
    }
    Err(Error::io(
        path,
        std::io::Error::new(
            e.kind(),
            format!(
                "extended attribute {:?} not restored: {e}",
                String::from_utf8_lossy(name)
            ),
        ),
    ))
}

/// Whether this process may chown (root, or CAP_CHOWN).
pub fn can_chown() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Apply owner, mode, xattrs and times of `node` to the restored `path`, in that order
/// (chown clears set-uid bits, so mode comes after; times last because the others touch ctime
/// but xattr writes may touch mtime on some file systems).
pub fn apply_metadata(path: &Path, node: &Node, chown: bool) -> Result<()> {
    crate::longpath::with(path, |p| {
        apply_metadata_short(p, node, chown).map_err(std::io::Error::other)
    })
    .map_err(|e| match e.downcast::<Error>() {
        Ok(inner) => inner,
        Err(e) => Error::io(path, e),
    })
}

fn apply_metadata_short(path: &Path, node: &Node, chown: bool) -> Result<()> {
    if chown {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
            .map_err(|e| Error::io(path, e))?;
    }
    if node.kind != NodeKind::Symlink {
        // chmod follows symlinks: a symlink where the snapshot has something else (put
        // there after the restore planned, or left by an overwrite mode) must not pass the
        // snapshot's mode (setuid bits included) on to whatever it points at.
        let on_disk = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        if on_disk.file_type().is_symlink() {
            return Err(Error::Invalid(format!(
                "{} is a symlink where the snapshot has a {:?}: its mode was not set",
                path.display(),
                node.kind
            )));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
            .map_err(|e| Error::io(path, e))?;
    }
    for x in &node.xattrs {
        let name = OsStr::from_bytes(&x.name);
        if let Err(e) = xattr::set(path, name, &x.value) {
            xattr_not_set(path, &x.name, e)?;
        }
    }
    let mtime = filetime::FileTime::from_unix_time(node.mtime.secs, node.mtime.nanos);
    let atime = filetime::FileTime::from_unix_time(node.atime.secs, node.atime.nanos);
    filetime::set_symlink_file_times(path, atime, mtime).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// [`apply_metadata`] through an open regular file: owner, mode, xattrs, then times, with no
/// path lookup (restore sets the metadata of each file it has just written through the
/// descriptor it wrote with). `path` is for messages only.
pub fn apply_metadata_fd(f: &std::fs::File, path: &Path, node: &Node, chown: bool) -> Result<()> {
    use std::os::fd::AsFd;
    let io = |e| Error::io(path, e);
    if chown {
        std::os::unix::fs::fchown(f.as_fd(), Some(node.uid), Some(node.gid)).map_err(io)?;
    }
    // After chown, which clears setuid/setgid bits.
    f.set_permissions(std::fs::Permissions::from_mode(node.mode & 0o7777))
        .map_err(io)?;
    for x in &node.xattrs {
        let name = OsStr::from_bytes(&x.name);
        if let Err(e) = xattr::FileExt::set_xattr(f, name, &x.value) {
            xattr_not_set(path, &x.name, e)?;
        }
    }
    let mtime = filetime::FileTime::from_unix_time(node.mtime.secs, node.mtime.nanos);
    let atime = filetime::FileTime::from_unix_time(node.atime.secs, node.atime.nanos);
    filetime::set_file_handle_times(f, Some(atime), Some(mtime)).map_err(io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_privileged_xattrs_refused_to_a_user_are_skipped() {
        let p = Path::new("/r/f");
        let errno = std::io::Error::from_raw_os_error;
        for name in [&b"trusted.x"[..], b"security.capability"] {
            for e in [libc::EPERM, libc::EACCES] {
                assert!(xattr_not_set(p, name, errno(e)).is_ok());
            }
            // A file system that cannot hold it loses it: not skipped.
            assert!(xattr_not_set(p, name, errno(libc::EOPNOTSUPP)).is_err());
        }
        for e in [libc::ENOSPC, libc::E2BIG, libc::EOPNOTSUPP, libc::EPERM] {
            let err = xattr_not_set(p, b"user.big", errno(e)).unwrap_err();
            assert!(err.to_string().contains("user.big"), "{err}");
        }
    }
}
