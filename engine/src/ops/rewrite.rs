//! `cairn rewrite --exclude PATTERN`: take paths out of existing snapshots (the secret that
//! should never have been backed up). Each affected snapshot gets a new tree without the
//! excluded paths and is saved as a new snapshot (same time, host, paths and tags); the
//! originals are removed only with `forget`. Their data goes at the next `prune` once no
//! snapshot references it.
//!
//! Plan, then apply: the plan walks every snapshot's tree and says what would go; the apply
//! step stores the new trees (through the packer, so identical rewritten subtrees are stored
//! once), then the snapshots, then removes the originals. A crash before the last step
//! leaves originals and rewritten snapshots side by side, never neither.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_format::{BlobType, FileKind, Id, NodeKind, Snapshot, Tree};
use serde::Serialize;

use crate::lock::ExclusiveLock;
use crate::packer::Packer;
use crate::pattern::Patterns;
use crate::progress::interrupted;
use crate::repository::Repository;
use crate::{Error, Result};

/// What to take out.
#[derive(Debug, Clone, Default)]
pub struct RewriteOptions {
    /// Paths to remove (the include/exclude pattern language).
    pub excludes: Vec<String>,
    /// Remove the original snapshots.
    pub forget: bool,
    /// Plan only.
    pub dry_run: bool,
}

/// One snapshot rewritten (or that would be).
#[derive(Debug, Clone, Serialize)]
pub struct Rewritten {
    /// The original.
    pub old: String,
    /// The new snapshot (empty in a dry run).
    pub new: String,
    /// How many paths were removed from it.
    pub removed_count: u64,
    /// The first of them (at most [`SAMPLE`]).
    pub removed: Vec<String>,
}

/// Removed paths listed per snapshot; the rest are counted (excluding `*.log` from a year
/// of snapshots must not hold every path in memory).
pub const SAMPLE: usize = 100;

/// Paths removed below a tree: a count and the first few.
#[derive(Debug, Clone, Default)]
struct Removed {
    count: u64,
    sample: Vec<String>,
}

impl Removed {
    fn add(&mut self, p: String) {
        self.count += 1;
        if self.sample.len() < SAMPLE {
            self.sample.push(p);
        }
    }

    fn extend(&mut self, other: &Removed) {
        self.count += other.count;
        let room = SAMPLE.saturating_sub(self.sample.len());
        self.sample.extend(other.sample.iter().take(room).cloned());
    }
}

/// What `rewrite` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RewriteReport {
    /// Snapshots looked at.
    pub snapshots: u64,
    /// Those that changed.
    pub rewritten: Vec<Rewritten>,
    /// Originals removed (`forget`).
    pub forgotten: u64,
    /// A dry run.
    pub dry_run: bool,
}

struct Rewriter<'a> {
    repo: &'a Repository,
    index: &'a crate::MasterIndex,
    excludes: Patterns,
    packer: Option<Packer>,
    /// (tree, its path) → (new tree, paths removed below). Nightly snapshots share most
    /// subtrees at the same places, so each is walked once.
    memo: HashMap<(Id, PathBuf), (Id, Removed)>,
}

impl Rewriter<'_> {
    fn tree(&mut self, id: Id, path: &Path) -> Result<(Id, Removed)> {
        if let Some(hit) = self.memo.get(&(id, path.to_path_buf())) {
            return Ok(hit.clone());
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let tree = self.repo.load_tree(self.index, &id)?;
        let mut removed = Removed::default();
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for mut n in tree.nodes {
            let p = path.join(OsStr::from_bytes(&n.name));
            if self.excludes.matches(&p, OsStr::from_bytes(&n.name)) {
                removed.add(p.to_string_lossy().into_owned());
                continue;
            }
            if n.kind == NodeKind::Dir {
                if let Some(sub) = n.subtree {
                    let (new, below) = crate::ops::backup::deeper(|| self.tree(sub, &p))?;
                    n.subtree = Some(new);
                    removed.extend(&below);
                }
            }
            nodes.push(n);
        }
        let new = if removed.count == 0 {
            id
        } else {
            let mut t = Tree { nodes };
            t.canonicalize();
            let bytes = t.encode();
            match &self.packer {
                Some(p) => {
                    let nid = p.blob_id(&bytes);
                    p.add(BlobType::Tree, nid, &bytes)?;
                    nid
                }
                None => Id::of_object(&bytes),
            }
        };
        self.memo
            .insert((id, path.to_path_buf()), (new, removed.clone()));
        Ok((new, removed))
    }
}

/// Rewrite `snaps` without the paths `opts.excludes` names.
pub fn rewrite(
    lock: &ExclusiveLock<'_>,
    snaps: &[(Id, Snapshot)],
    opts: &RewriteOptions,
) -> Result<RewriteReport> {
    if opts.excludes.is_empty() {
        return Err(Error::Invalid(
            "nothing to remove: give --exclude PATTERN".into(),
        ));
    }
    let repo: &Repository = lock;
    let index = Arc::new(repo.load_index_for_writing()?);
    let mut rw = Rewriter {
        repo,
        index: &index,
        excludes: Patterns::new(&opts.excludes)?,
        packer: (!opts.dry_run).then(|| Packer::new(repo, index.clone())),
        memo: HashMap::new(),
    };
    let mut report = RewriteReport {
        snapshots: snaps.len() as u64,
        dry_run: opts.dry_run,
        ..RewriteReport::default()
    };
    let mut new_snaps = Vec::new();
    for (id, s) in snaps {
        let (tree, removed) = rw.tree(s.tree, Path::new("/"))?;
        if removed.count == 0 {
            continue;
        }
        let mut n = s.clone();
        n.tree = tree;
        n.excludes.extend(opts.excludes.iter().cloned());
        new_snaps.push((*id, n));
        report.rewritten.push(Rewritten {
            old: id.to_hex(),
            new: String::new(),
            removed_count: removed.count,
            removed: removed.sample,
        });
    }
    if opts.dry_run {
        return Ok(report);
    }
    if let Some(p) = rw.packer.take() {
        // Trees and their index are durable before a snapshot names them.
        p.finish()?;
    }
    for ((old, snap), entry) in new_snaps.iter().zip(report.rewritten.iter_mut()) {
        let new = repo.save(FileKind::Snapshot, snap)?;
        entry.new = new.to_hex();
        if opts.forget && new != *old {
            lock.delete_snapshot(old)?;
            report.forgotten += 1;
        }
    }
    Ok(report)
}
