//! `cairn find PATTERN…`: which snapshots hold a file, and where.
//!
//! A pattern without `/` is a glob on the file name (`*.db`, `state.db`); one with `/` is a
//! path pattern in the include/exclude language (`/var/lib/**/token`). Snapshots are
//! searched in parallel, each tree walked iteratively; with name globs, a subtree found to
//! hold no match is remembered by id and not entered again in another snapshot, so a week
//! of nightly snapshots costs little more than one.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cairn_format::{FileTime, Id, Node, NodeKind, Snapshot};
use rayon::prelude::*;

use crate::pattern::Patterns;
use crate::progress::interrupted;
use crate::repository::Indexed;
use crate::{Error, Result};

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct FindOptions {
    /// Name globs and path patterns (any may match).
    pub patterns: Vec<String>,
    /// Compare names without regard to case.
    pub ignore_case: bool,
    /// Only nodes modified at or after this time.
    pub oldest: Option<FileTime>,
    /// Only nodes modified at or before this time.
    pub newest: Option<FileTime>,
}

struct Matcher {
    names: globset::GlobSet,
    paths: Option<Patterns>,
    oldest: Option<FileTime>,
    newest: Option<FileTime>,
}

impl Matcher {
    fn new(o: &FindOptions) -> Result<Matcher> {
        let mut names = globset::GlobSetBuilder::new();
        let mut paths = Vec::new();
        for p in &o.patterns {
            if p.contains('/') {
                paths.push(p.clone());
            } else {
                let g = globset::GlobBuilder::new(p)
                    .case_insensitive(o.ignore_case)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| Error::Invalid(format!("pattern {p:?}: {e}")))?;
                names.add(g);
            }
        }
        Ok(Matcher {
            names: names
                .build()
                .map_err(|e| Error::Invalid(format!("patterns: {e}")))?,
            paths: if paths.is_empty() {
                None
            } else {
                Some(Patterns::new(&paths)?)
            },
            oldest: o.oldest,
            newest: o.newest,
        })
    }

    fn matches(&self, path: &Path, n: &Node) -> bool {
        let name = OsStr::from_bytes(&n.name);
        let hit =
            self.names.is_match(name) || self.paths.as_ref().is_some_and(|p| p.matches(path, name));
        hit && self.oldest.is_none_or(|t| n.mtime >= t) && self.newest.is_none_or(|t| n.mtime <= t)
    }
}

/// Search `snaps`, calling `f(snapshot id, path, node)` for each match in path order;
/// returns the number of matches.
pub fn find(
    ix: &Indexed<'_>,
    snaps: &[(Id, Snapshot)],
    opts: &FindOptions,
    f: &mut dyn FnMut(&Id, &Path, &Node) -> Result<()>,
) -> Result<u64> {
    if opts.patterns.is_empty() {
        return Err(Error::Invalid("give at least one pattern".into()));
    }
    let m = Matcher::new(opts)?;
    // Subtrees without any match, by id: skipped in later snapshots (path patterns depend
    // on where a subtree sits, so only name globs may use this).
    let memo_ok = m.paths.is_none();
    let barren: parking_lot::Mutex<HashSet<Id>> = parking_lot::Mutex::new(HashSet::new());
    // Snapshots are searched in parallel, a few at a time (trees are read on every core,
    // through the cache for a remote repository); matches are reported in snapshot order.
    let mut total = 0u64;
    for batch in snaps.chunks(rayon::current_num_threads().max(1) * 2) {
        let found: Vec<Result<Vec<(PathBuf, Node)>>> = batch
            .par_iter()
            .map(|(_, s)| search(ix, s, &m, memo_ok, &barren))
            .collect();
        for ((id, _), hits) in batch.iter().zip(found) {
            for (p, n) in hits? {
                total += 1;
                f(id, &p, &n)?;
            }
        }
    }
    Ok(total)
}

/// One snapshot's matches, in path order.
fn search(
    ix: &Indexed<'_>,
    s: &Snapshot,
    m: &Matcher,
    memo_ok: bool,
    barren: &parking_lot::Mutex<HashSet<Id>>,
) -> Result<Vec<(PathBuf, Node)>> {
    let mut hits = Vec::new();
    let root = ix.load_tree(&s.tree)?;
    // (entries, next, path, tree id, whether anything below matched)
    let mut stack: Vec<(Vec<Node>, usize, PathBuf, Id, bool)> =
        vec![(root.nodes, 0, PathBuf::from("/"), s.tree, false)];
    while let Some(top) = stack.last_mut() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let Some(n) = top.0.get(top.1).cloned() else {
            let Some((_, _, _, tid, hit)) = stack.pop() else {
                break;
            };
            if memo_ok && !hit {
                barren.lock().insert(tid);
            }
            if hit {
                if let Some(parent) = stack.last_mut() {
                    parent.4 = true;
                }
            }
            continue;
        };
        top.1 += 1;
        let p = top.2.join(OsStr::from_bytes(&n.name));
        if m.matches(&p, &n) {
            top.4 = true;
            hits.push((p.clone(), n.clone()));
        }
        if n.kind == NodeKind::Dir {
            if let Some(sub) = n.subtree {
                if !(memo_ok && barren.lock().contains(&sub)) {
                    let t = ix.load_tree(&sub)?;
                    stack.push((t.nodes, 0, p, sub, false));
                }
            }
        }
    }
    Ok(hits)
}
