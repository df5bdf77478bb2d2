//! Tree blobs: one directory's entries, sorted by raw name bytes.
//!
//! Encoding is deterministic (postcard of a sorted `Vec<Node>`, xattrs sorted by name), so an
//! unchanged directory yields a byte-identical tree blob, the same id, and no new storage.
//!
//! Format 4 lets a file with many blobs name **content lists** instead: tree-type blobs that
//! each hold a run of its data blob ids, cut where the ids themselves say
//! ([`content_list_runs`]), so a database whose pages change here and there stores the few
//! runs that changed instead of all of its ids again every night. A tree that names no list
//! keeps the version-1 encoding byte for byte (FORMAT.md §11.1).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{FormatError, Id};

/// The first bytes of a versioned metadata blob: `00`, a kind letter, the version (u16 LE).
/// A version-1 tree never starts with `00` unless it is the one byte `00` (no nodes, and
/// postcard refuses trailing bytes), so the two encodings cannot be confused.
const TREE_V4: [u8; 4] = [0, b'T', 4, 0];
/// The first bytes of a content-list blob (format 4).
const LIST_V4: [u8; 4] = [0, b'L', 4, 0];

/// The repository format version from which trees may name content lists.
pub const CONTENT_LISTS_VERSION: u16 = 4;
/// Ids one content list holds at most, for readers (writers stay at [`LIST_MAX_RUN`]).
pub const MAX_LIST_IDS: usize = 4096;
/// Data blob ids one file node may stand for, whether named directly or through lists: what
/// a version-1 tree of `MAX_TREE_LEN` could name directly. Resolving lists stops there, so a
/// hostile tree that names one list a million times cannot make a reader allocate without
/// bound.
pub const MAX_CONTENT_IDS: usize = crate::MAX_TREE_LEN as usize / 32;
/// Writer rule: a file with more data blobs than this names content lists instead.
pub const LIST_THRESHOLD: usize = 64;
/// Writer rule: a list holds at least this many ids (except a file's last one)...
pub const LIST_MIN_RUN: usize = 4;
/// ...and at most this many.
pub const LIST_MAX_RUN: usize = 64;
/// Writer rule: after the minimum, a list ends after an id whose last byte is a multiple of
/// this (ids are keyed hashes, so one in this many): about `LIST_MIN_RUN + LIST_SPACING`
/// ids a list.
pub const LIST_SPACING: u8 = 16;

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
    /// A file's data: its blob ids, or (format 4) the content lists that hold them.
    pub content: Content,
    /// Tree blob of a directory.
    pub subtree: Option<Id>,
}

/// A file's data as its node records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Data blob ids in order; the content is their concatenation.
    Blobs(Vec<Id>),
    /// Content-list blob ids in order (tree-type blobs, [`decode_content_list`]); the
    /// content is the concatenation of the data blobs the lists name, list after list.
    Lists(Vec<Id>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Blobs(Vec::new())
    }
}

impl Content {
    /// The ids the node names: data blobs or lists.
    pub fn refs(&self) -> &[Id] {
        match self {
            Content::Blobs(v) | Content::Lists(v) => v,
        }
    }

    /// The data blob ids, when the node names them directly.
    pub fn blobs(&self) -> Option<&[Id]> {
        match self {
            Content::Blobs(v) => Some(v),
            Content::Lists(_) => None,
        }
    }

    /// The content-list ids, when the node names lists.
    pub fn lists(&self) -> Option<&[Id]> {
        match self {
            Content::Lists(v) => Some(v),
            Content::Blobs(_) => None,
        }
    }

    /// Whether the node names nothing (an empty file, or not a file).
    pub fn is_empty(&self) -> bool {
        self.refs().is_empty()
    }
}

// On the wire a node's content is a list of ids either way; which kind they are is recorded
// once per tree (`Tree::encode`), so a version-1 tree's bytes do not change.
impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.refs().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Id>::deserialize(d).map(Content::Blobs)
    }
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
    ///
    /// A tree whose files all name their data blobs directly is encoded as in version 1; one
    /// with a node naming content lists as version 4: the marker, then the nodes, then the
    /// indices of those nodes.
    pub fn encode(&self) -> Vec<u8> {
        let indirect: Vec<u32> = (0..self.nodes.len())
            .filter(|&i| matches!(self.nodes[i].content, Content::Lists(_)))
            .map(|i| i as u32)
            .collect();
        if indirect.is_empty() {
            return crate::file::to_postcard(self);
        }
        let mut out = TREE_V4.to_vec();
        out.extend(crate::file::to_postcard(&(&self.nodes, &indirect)));
        out
    }

    /// Decode and check the invariants a restorer relies on: valid, sorted, unique names.
    pub fn decode(bytes: &[u8]) -> Result<Tree, FormatError> {
        let tree = if bytes.len() > 1 && bytes[0] == 0 {
            let body = versioned(bytes, TREE_V4, "tree")?;
            let (mut nodes, indirect): (Vec<Node>, Vec<u32>) =
                crate::file::from_postcard(body, "tree")?;
            // One encoding per tree: version 4 only where a node names lists.
            if indirect.is_empty() {
                return Err(malformed("tree", "version-4 tree naming no content list"));
            }
            if indirect.windows(2).any(|w| w[0] >= w[1]) {
                return Err(malformed("tree", "content-list nodes not in order"));
            }
            for &i in &indirect {
                let node = nodes
                    .get_mut(i as usize)
                    .ok_or_else(|| malformed("tree", "content-list node beyond the tree"))?;
                if node.kind != NodeKind::File || node.content.is_empty() {
                    return Err(malformed(
                        "tree",
                        "content lists on a non-file or an empty list",
                    ));
                }
                let ids = std::mem::take(&mut node.content);
                node.content = Content::Lists(match ids {
                    Content::Blobs(v) | Content::Lists(v) => v,
                });
            }
            Tree { nodes }
        } else {
            crate::file::from_postcard(bytes, "tree")?
        };
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

    /// Whether some node names content lists (the tree needs format 4).
    pub fn has_lists(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.content, Content::Lists(_)))
    }

    /// Find a node by name.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

fn malformed(what: &'static str, detail: &str) -> FormatError {
    FormatError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// The body of a versioned metadata blob after its four marker bytes, which must be `want`.
fn versioned<'a>(
    bytes: &'a [u8],
    want: [u8; 4],
    what: &'static str,
) -> Result<&'a [u8], FormatError> {
    if bytes.len() < 4 {
        return Err(FormatError::Truncated(what));
    }
    if bytes[1] != want[1] {
        return Err(malformed(what, "not this kind of metadata blob"));
    }
    let version = u16::from_le_bytes([bytes[2], bytes[3]]);
    if bytes[..4] != want {
        return Err(FormatError::UnsupportedVersion {
            kind: what,
            version,
            supported: crate::FORMAT_VERSION,
        });
    }
    Ok(&bytes[4..])
}

/// Encode a content list (format 4): the marker, then `postcard(Vec<Id>)`.
pub fn encode_content_list(ids: &[Id]) -> Vec<u8> {
    let mut out = LIST_V4.to_vec();
    out.extend(crate::file::to_postcard(&ids));
    out
}

/// Decode a content list: 1 to [`MAX_LIST_IDS`] ids.
pub fn decode_content_list(bytes: &[u8]) -> Result<Vec<Id>, FormatError> {
    let body = versioned(bytes, LIST_V4, "content list")?;
    // Checked before decoding: postcard would allocate what the length prefix claims.
    if body.len() > 3 + MAX_LIST_IDS * 32 {
        return Err(FormatError::TooLarge {
            what: "content list".into(),
            claimed: body.len() as u64,
            limit: (3 + MAX_LIST_IDS * 32) as u64,
        });
    }
    let ids: Vec<Id> = crate::file::from_postcard(body, "content list")?;
    if ids.is_empty() || ids.len() > MAX_LIST_IDS {
        return Err(malformed("content list", "not 1 to 4096 ids"));
    }
    // postcard also reads an overlong length varint (`81 00` for 1); refusing it keeps one
    // encoding, and so one id, per list. Ids have a fixed size, so the body's length tells.
    let prefix = if ids.len() < 0x80 { 1 } else { 2 };
    if body.len() != prefix + ids.len() * 32 {
        return Err(malformed(
            "content list",
            "length prefix is not the shortest varint",
        ));
    }
    Ok(ids)
}

/// Writer rule (not part of the format): cut a file's data blob ids into the runs its
/// content lists hold. A run ends after an id chosen by the id itself, so inserting or
/// replacing ids changes only the runs around them; the rest keep their bytes, their list
/// ids and their storage. Files of at most [`LIST_THRESHOLD`] blobs are not cut (`None`).
pub fn content_list_runs(ids: &[Id]) -> Option<Vec<&[Id]>> {
    if ids.len() <= LIST_THRESHOLD {
        return None;
    }
    let mut runs = Vec::with_capacity(ids.len() / (LIST_MIN_RUN + usize::from(LIST_SPACING)) + 1);
    let mut start = 0;
    for (i, id) in ids.iter().enumerate() {
        let len = i + 1 - start;
        if len >= LIST_MAX_RUN || (len >= LIST_MIN_RUN && id.0[31] % LIST_SPACING == 0) {
            runs.push(&ids[start..=i]);
            start = i + 1;
        }
    }
    if start < ids.len() {
        runs.push(&ids[start..]);
    }
    Some(runs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(i: u32) -> Id {
        Id(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    fn file(name: &[u8], content: Content) -> Node {
        Node {
            name: name.to_vec(),
            kind: NodeKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            mtime: FileTime::default(),
            atime: FileTime::default(),
            ctime: FileTime::default(),
            size: 1,
            inode: 1,
            device: 1,
            rdev: 0,
            links: 1,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            content,
            subtree: None,
        }
    }

    #[test]
    fn a_tree_without_lists_keeps_the_version_1_bytes() {
        let t = Tree {
            nodes: vec![file(b"a", Content::Blobs(vec![id(1), id(2)]))],
        };
        // postcard(Tree) as version 1 wrote it: no marker.
        assert_eq!(t.encode(), crate::file::to_postcard(&t));
        assert_ne!(t.encode()[0], 0);
        assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        assert_eq!(Tree::decode(&[0]).unwrap(), Tree::default());
    }

    #[test]
    fn a_tree_with_lists_round_trips_as_version_4() {
        let t = Tree {
            nodes: vec![
                file(b"a", Content::Blobs(vec![id(1)])),
                file(b"b", Content::Lists(vec![id(2), id(3)])),
                file(b"c", Content::Blobs(Vec::new())),
            ],
        };
        let bytes = t.encode();
        assert_eq!(bytes[..4], TREE_V4);
        let back = Tree::decode(&bytes).unwrap();
        assert_eq!(back, t);
        assert!(back.has_lists());
    }

    #[test]
    fn version_4_trees_that_break_a_rule_are_refused() {
        let encode = |nodes: &Vec<Node>, indirect: &[u32]| {
            let mut out = TREE_V4.to_vec();
            out.extend(crate::file::to_postcard(&(nodes, indirect)));
            out
        };
        let nodes = vec![
            file(b"a", Content::Blobs(vec![id(1)])),
            file(b"b", Content::Blobs(vec![id(2)])),
            file(b"e", Content::Blobs(Vec::new())),
        ];
        assert!(Tree::decode(&encode(&nodes, &[1])).is_ok());
        for bad in [&[][..], &[1, 1], &[1, 0], &[3], &[2]] {
            assert!(Tree::decode(&encode(&nodes, bad)).is_err(), "{bad:?}");
        }
        let mut dir = nodes.clone();
        dir[0].kind = NodeKind::Dir;
        dir[0].subtree = Some(id(9));
        assert!(Tree::decode(&encode(&dir, &[0])).is_err());
        // Another version, or a list where a tree was asked for.
        let mut v5 = encode(&nodes, &[1]);
        v5[2] = 5;
        assert!(matches!(
            Tree::decode(&v5),
            Err(FormatError::UnsupportedVersion { version: 5, .. })
        ));
        assert!(Tree::decode(&encode_content_list(&[id(1)])).is_err());
        assert!(Tree::decode(&[0, b'T', 4]).is_err());
    }

    #[test]
    fn content_lists_round_trip_and_refuse_what_is_not_one() {
        let ids: Vec<Id> = (0..5).map(id).collect();
        let bytes = encode_content_list(&ids);
        assert_eq!(decode_content_list(&bytes).unwrap(), ids);
        assert!(decode_content_list(&encode_content_list(&[])).is_err());
        let too_many: Vec<Id> = (0..MAX_LIST_IDS as u32 + 1).map(id).collect();
        assert!(decode_content_list(&encode_content_list(&too_many)).is_err());
        let tree = Tree {
            nodes: vec![file(b"a", Content::Lists(vec![id(1)]))],
        };
        assert!(decode_content_list(&tree.encode()).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_content_list(&trailing).is_err());
    }

    #[test]
    fn runs_tile_the_ids_within_their_bounds_and_change_only_locally() {
        let ids: Vec<Id> = (0..5000).map(id).collect();
        assert!(content_list_runs(&ids[..LIST_THRESHOLD]).is_none());
        let runs = content_list_runs(&ids).unwrap();
        assert_eq!(runs.concat(), ids);
        for r in &runs[..runs.len() - 1] {
            assert!((LIST_MIN_RUN..=LIST_MAX_RUN).contains(&r.len()));
        }
        let avg = ids.len() / runs.len();
        assert!((12..=28).contains(&avg), "average run {avg}");
        // Replace one id in the middle: every run but the one or two around it stays.
        let mut changed = ids.clone();
        changed[2500] = id(99_999);
        let after = content_list_runs(&changed).unwrap();
        let same = after.iter().filter(|r| runs.contains(r)).count();
        assert!(same + 3 >= runs.len(), "{same} of {} runs kept", runs.len());
        // Insert ids near the start: the runs after them come back.
        let mut inserted = ids.clone();
        inserted.splice(100..100, (0..7).map(|i| id(50_000 + i)));
        let after = content_list_runs(&inserted).unwrap();
        let same = after.iter().filter(|r| runs.contains(r)).count();
        assert!(same + 4 >= runs.len(), "{same} of {} runs kept", runs.len());
    }
}
