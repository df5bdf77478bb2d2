//! Tree blobs: one directory's entries, sorted by raw name bytes.
//!
//! Encoding is deterministic (postcard of a sorted `Vec<Node>`, xattrs sorted by name), so an
//! unchanged directory yields a byte-identical tree blob, the same id, and no new storage.

use serde::{Deserialize, Serialize};

use crate::{FormatError, Id};

/// What a tree node is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// Regular file; `content` lists its data blobs.
    File,
    /// Directory; `subtree` is its tree blob.
    Dir,
    /// Symbolic link; `link_target` holds the raw target.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket (recorded, not recreated).
    Socket,
    /// Character device; `rdev` holds its number.
    CharDevice,
    /// Block device; `rdev` holds its number.
    BlockDevice,
}

/// A file time: whole seconds since the epoch and nanoseconds. File systems such as ext4
/// store times far beyond 2262, where nanoseconds in an `i64` would overflow.
#[derive(
    Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct FileTime {
    /// Seconds since 1970-01-01T00:00:00Z (negative before).
    pub secs: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

impl FileTime {
    /// From nanoseconds since the epoch (a snapshot's `Timestamp`), negative before it.
    pub fn from_unix_nanos(n: i64) -> FileTime {
        FileTime {
            secs: n.div_euclid(1_000_000_000),
            nanos: n.rem_euclid(1_000_000_000) as u32,
        }
    }
}

/// An extended attribute.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    /// Raw attribute name, e.g. `user.comment`.
    pub name: Vec<u8>,
    /// Raw value.
    pub value: Vec<u8>,
}

/// One entry of a directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    /// File name as raw bytes (non-UTF-8 names survive). Never empty, `.`, `..`, nor containing `/` or NUL.
    pub name: Vec<u8>,
    /// Node type.
    pub kind: NodeKind,
    /// `st_mode` permission and special bits (`& 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// Owner name at backup time ("" if unknown).
    pub user: String,
    /// Group name at backup time.
    pub group: String,
    /// Modification time.
    pub mtime: FileTime,
    /// Access time.
    pub atime: FileTime,
    /// Status change time.
    pub ctime: FileTime,
    /// Size in bytes (files: content length; symlinks: target length).
    pub size: u64,
    /// Inode number (change detection, hardlinks).
    pub inode: u64,
    /// `st_dev` of the file system the node was on (hardlinks are per device).
    pub device: u64,
    /// Device number for char/block devices.
    pub rdev: u64,
    /// Hard link count.
    pub links: u64,
    /// Symlink target, raw.
    pub link_target: Vec<u8>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
    /// Data blobs of a file, in order.
    pub content: Vec<Id>,
    /// Tree blob of a directory.
    pub subtree: Option<Id>,
}

impl Node {
    /// Whether `name` is acceptable as one path component.
    pub fn valid_name(name: &[u8]) -> bool {
        !name.is_empty()
            && name != b"."
            && name != b".."
            && !name.contains(&b'/')
            && !name.contains(&0)
    }
}

/// A directory listing.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tree {
    /// Entries sorted by `name` bytes, names unique.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Sort nodes and their xattrs so the encoding is canonical.
    pub fn canonicalize(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for n in &mut self.nodes {
            n.xattrs.sort();
        }
    }

    /// Encode (postcard). Call [`Tree::canonicalize`] first.
    pub fn encode(&self) -> Vec<u8> {
        crate::file::to_postcard(self)
    }

    /// Decode and check the invariants a restorer relies on: valid, sorted, unique names.
    pub fn decode(bytes: &[u8]) -> Result<Tree, FormatError> {
        let tree: Tree = crate::file::from_postcard(bytes, "tree")?;
        for w in tree.nodes.windows(2) {
            if w[0].name >= w[1].name {
                return Err(FormatError::Malformed {
                    what: "tree",
                    detail: "names not sorted or not unique".into(),
                });
            }
        }
        for n in &tree.nodes {
            if !Node::valid_name(&n.name) {
                return Err(FormatError::Malformed {
                    what: "tree",
                    detail: format!("invalid node name {:?}", String::from_utf8_lossy(&n.name)),
                });
            }
            for w in n.xattrs.windows(2) {
                if w[0].name >= w[1].name {
                    return Err(FormatError::Malformed {
                        what: "tree",
                        detail: "xattrs not sorted or not unique".into(),
                    });
                }
            }
            if [n.mtime, n.atime, n.ctime]
                .iter()
                .any(|t| t.nanos >= 1_000_000_000)
            {
                return Err(FormatError::Malformed {
                    what: "tree",
                    detail: "file time nanoseconds out of range".into(),
                });
            }
            if (n.kind == NodeKind::Dir) != n.subtree.is_some() {
                return Err(FormatError::Malformed {
                    what: "tree",
                    detail: "subtree on a non-directory or missing".into(),
                });
            }
        }
        Ok(tree)
    }

    /// Find a node by name.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}
