//! `cairn diff A B`: what changed between two snapshots (or two directories in them).
//!
//! Both trees are walked together in name order; a directory whose tree id is the same on
//! both sides is identical and not entered (the common case: most of a nightly backup is
//! unchanged), so the cost follows the size of the change, not of the snapshot. Memory is
//! one tree per level of the current path on each side.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cairn_format::{Content, Id, Node, NodeKind, Tree};
use serde::Serialize;

use crate::progress::interrupted;
use crate::repository::Indexed;
use crate::{Error, Result};

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in B.
    Added,
    /// Only in A.
    Removed,
    /// Content differs (files), or target (symlinks), or device number.
    Modified,
    /// A file became a directory, a symlink, …
    TypeChanged,
    /// Same content; mode, owner, mtime or xattrs differ.
    Metadata,
}

impl Change {
    /// restic's one-letter code (`T` for a type change, `U` for metadata only).
    pub fn code(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::TypeChanged => 'T',
            Change::Metadata => 'U',
        }
    }
}

/// One changed path.
#[derive(Debug, Clone, Serialize)]
pub struct DiffEntry {
    /// Path (inside the compared directories).
    pub path: PathBuf,
    /// How it changed.
    pub change: Change,
    /// Kind in B (in A if removed).
    pub kind: NodeKind,
    /// Size in A (0 if absent or not a file).
    pub size_before: u64,
    /// Size in B.
    pub size_after: u64,
}

/// Totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffStats {
    /// Files and other non-directories added.
    pub files_added: u64,
    /// … removed.
    pub files_removed: u64,
    /// … with changed content.
    pub files_modified: u64,
    /// … whose type changed.
    pub type_changed: u64,
    /// … with changed metadata only.
    pub metadata_changed: u64,
    /// Directories added.
    pub dirs_added: u64,
    /// Directories removed.
    pub dirs_removed: u64,
    /// Bytes of content in added files (and the new side of modified ones).
    pub bytes_added: u64,
    /// Bytes of content in removed files (and the old side of modified ones).
    pub bytes_removed: u64,
}

fn size(n: &Node) -> u64 {
    if n.kind == NodeKind::File {
        n.size
    } else {
        0
    }
}

struct Differ<'a, 'r> {
    ix: &'a Indexed<'r>,
    stats: DiffStats,
    metadata: bool,
    f: &'a mut dyn FnMut(&DiffEntry) -> Result<()>,
}

impl Differ<'_, '_> {
    fn emit(
        &mut self,
        path: PathBuf,
        change: Change,
        a: Option<&Node>,
        b: Option<&Node>,
    ) -> Result<()> {
        let kind = b.or(a).map_or(NodeKind::File, |n| n.kind);
        let (sa, sb) = (a.map_or(0, size), b.map_or(0, size));
        let dir = kind == NodeKind::Dir;
        match change {
            Change::Added if dir => self.stats.dirs_added += 1,
            Change::Added => self.stats.files_added += 1,
            Change::Removed if dir => self.stats.dirs_removed += 1,
            Change::Removed => self.stats.files_removed += 1,
            Change::Modified => self.stats.files_modified += 1,
            Change::TypeChanged => self.stats.type_changed += 1,
            Change::Metadata => self.stats.metadata_changed += 1,
        }
        if change != Change::Metadata {
            self.stats.bytes_added += sb;
            self.stats.bytes_removed += sa;
        }
        (self.f)(&DiffEntry {
            path,
            change,
            kind,
            size_before: sa,
            size_after: sb,
        })
    }

    fn tree(&self, n: &Node) -> Result<Tree> {
        match n.subtree {
            Some(id) => self.ix.load_tree(&id),
            None => Ok(Tree::default()),
        }
    }

    /// Everything under a directory present on one side only.
    fn one_side(&mut self, dir: &Path, n: &Node, change: Change) -> Result<()> {
        let tree = self.tree(n)?;
        for c in &tree.nodes {
            if interrupted() {
                return Err(Error::Interrupted);
            }
            let p = dir.join(OsStr::from_bytes(&c.name));
            let (a, b) = if change == Change::Added {
                (None, Some(c))
            } else {
                (Some(c), None)
            };
            self.emit(p.clone(), change, a, b)?;
            if c.kind == NodeKind::Dir {
                crate::ops::backup::deeper(|| self.one_side(&p, c, change))?;
            }
        }
        Ok(())
    }

    fn trees(&mut self, dir: &Path, a: &Tree, b: &Tree) -> Result<()> {
        let (mut i, mut j) = (0, 0);
        while i < a.nodes.len() || j < b.nodes.len() {
            if interrupted() {
                return Err(Error::Interrupted);
            }
            let (na, nb) = (a.nodes.get(i), b.nodes.get(j));
            let order = match (na, nb) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let x = &a.nodes[i];
                    let p = dir.join(OsStr::from_bytes(&x.name));
                    self.emit(p.clone(), Change::Removed, Some(x), None)?;
                    if x.kind == NodeKind::Dir {
                        crate::ops::backup::deeper(|| self.one_side(&p, x, Change::Removed))?;
                    }
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let y = &b.nodes[j];
                    let p = dir.join(OsStr::from_bytes(&y.name));
                    self.emit(p.clone(), Change::Added, None, Some(y))?;
                    if y.kind == NodeKind::Dir {
                        crate::ops::backup::deeper(|| self.one_side(&p, y, Change::Added))?;
                    }
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (&a.nodes[i], &b.nodes[j]);
                    let p = dir.join(OsStr::from_bytes(&x.name));
                    self.pair(&p, x, y)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    fn pair(&mut self, p: &Path, x: &Node, y: &Node) -> Result<()> {
        if x.kind != y.kind {
            self.emit(p.to_path_buf(), Change::TypeChanged, Some(x), Some(y))?;
            // What was inside a directory that is now something else is gone, and the
            // reverse: list it like restic does.
            if x.kind == NodeKind::Dir {
                crate::ops::backup::deeper(|| self.one_side(p, x, Change::Removed))?;
            }
            if y.kind == NodeKind::Dir {
                crate::ops::backup::deeper(|| self.one_side(p, y, Change::Added))?;
            }
            return Ok(());
        }
        let meta = x.mode != y.mode
            || x.uid != y.uid
            || x.gid != y.gid
            || x.mtime != y.mtime
            || x.xattrs != y.xattrs;
        if x.kind == NodeKind::Dir {
            if x.subtree != y.subtree {
                // Both sides are read at once (two cores, or two requests to a remote).
                let ix = self.ix;
                let load = |n: &Node| match n.subtree {
                    Some(id) => ix.load_tree(&id),
                    None => Ok(Tree::default()),
                };
                let (ta, tb) = rayon::join(|| load(x), || load(y));
                let (ta, tb) = (ta?, tb?);
                crate::ops::backup::deeper(|| self.trees(p, &ta, &tb))?;
            }
            if meta && self.metadata {
                self.emit(p.to_path_buf(), Change::Metadata, Some(x), Some(y))?;
            }
            return Ok(());
        }
        // The same file may be named by blobs in one snapshot and by content lists in the
        // other (across a migration to format 4), or by lists cut otherwise: what counts is
        // the blobs.
        let same_data = match (&x.content, &y.content) {
            (Content::Blobs(a), Content::Blobs(b)) => a == b,
            (a, b) => a == b || self.ix.file_blobs(a)? == self.ix.file_blobs(b)?,
        };
        let content =
            !same_data || x.size != y.size || x.link_target != y.link_target || x.rdev != y.rdev;
        if content {
            self.emit(p.to_path_buf(), Change::Modified, Some(x), Some(y))?;
        } else if meta && self.metadata {
            self.emit(p.to_path_buf(), Change::Metadata, Some(x), Some(y))?;
        }
        Ok(())
    }
}

/// Compare the directory trees `a` and `b`, calling `f` for every difference in path
/// order. `metadata`: report metadata-only changes too.
pub fn diff(
    ix: &Indexed<'_>,
    a: &Id,
    b: &Id,
    metadata: bool,
    f: &mut dyn FnMut(&DiffEntry) -> Result<()>,
) -> Result<DiffStats> {
    let mut d = Differ {
        ix,
        stats: DiffStats::default(),
        metadata,
        f,
    };
    if a != b {
        let (ta, tb) = rayon::join(|| ix.load_tree(a), || ix.load_tree(b));
        let (ta, tb) = (ta?, tb?);
        d.trees(Path::new("/"), &ta, &tb)?;
    }
    Ok(d.stats)
}
