//! `cairn copy`: snapshots from one repository into another (local ↔ S3, either way: the
//! 3-2-1 rule), re-encrypted for the destination.
//!
//! When the destination was created with `init --copy-chunker-params --from-repo SRC`, both
//! name blobs alike: a blob the destination holds is recognised by its id and never read
//! from the source, and trees and snapshots keep their ids. Otherwise every blob of a
//! snapshot not yet copied is read once, named with the destination's key, and stored
//! unless the destination has it; trees are re-encoded with the new ids.
//!
//! Every tree of a snapshot to copy is walked (trees are small, and a remote source
//! serves them from its cache); a data blob the destination has is never read.
//!
//! A snapshot already in the destination (same time, host, user, paths, tags, excludes, and
//! tree where ids are shared) is skipped, so a second `copy` sends nothing, while a snapshot
//! changed by `rewrite` or `tag` is copied again. Blobs go through the destination's packer,
//! which writes an index file after every pack: an interrupted copy leaves durable, indexed packs that the
//! next copy finds, and it re-sends only the pack that was in flight. Snapshots are written last,
//! each after everything it references.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_format::{BlobType, Content, FileKind, Id, Node, NodeKind, Snapshot, Tree};
use parking_lot::Mutex;
use rayon::prelude::*;
use serde::Serialize;

use crate::lock::SharedLock;
use crate::packer::Packer;
use crate::progress::{interrupted, Progress};
use crate::repository::{Indexed, Repository};
use crate::{Error, Result};

/// What `copy` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// (source id, destination id) of each snapshot copied.
    pub copied: Vec<(String, String)>,
    /// Snapshots the destination had already.
    pub skipped: u64,
    /// Blobs stored in the destination.
    pub blobs_sent: u64,
    /// Blobs the destination had already.
    pub blobs_present: u64,
    /// Plaintext bytes of the blobs sent.
    pub bytes_sent: u64,
    /// Blobs read from the source.
    pub blobs_read: u64,
    /// The two repositories name blobs alike (`init --copy-chunker-params`), and trees were
    /// copied as they are (not when the source names content lists, format 4, and the
    /// destination is older).
    pub same_ids: bool,
}

/// The identity of a snapshot across repositories: time, host, user, paths, tags and
/// excludes (a `rewrite` or `tag` keeps the time: the changed snapshot must still be copied,
/// or an offsite copy would keep the secret that was rewritten away), and the tree when both
/// repositories name blobs alike.
type Identity = (
    i64,
    String,
    String,
    Vec<Vec<u8>>,
    Vec<String>,
    Vec<String>,
    Option<Id>,
);

fn identity(s: &Snapshot, same_ids: bool) -> Identity {
    (
        s.time.unix_nanos,
        s.hostname.clone(),
        s.username.clone(),
        s.paths.clone(),
        s.tags.clone(),
        s.excludes.clone(),
        same_ids.then_some(s.tree),
    )
}

struct Copier<'a, 'r> {
    src: &'a Indexed<'r>,
    dst: &'a Repository,
    packer: Packer,
    same_ids: bool,
    /// Source id → destination id (only when ids differ), trees and data alike.
    map: Mutex<HashMap<Id, Id>>,
    /// Trees already copied in this run (source ids).
    trees_done: Mutex<HashSet<Id>>,
    sent: AtomicU64,
    present: AtomicU64,
    read: AtomicU64,
    bytes: AtomicU64,
    progress: &'a Progress,
}

impl Copier<'_, '_> {
    fn blob(&self, t: BlobType, id: &Id) -> Result<Id> {
        if self.same_ids {
            if self.packer.has(id) {
                self.present.fetch_add(1, Ordering::Relaxed);
                return Ok(*id);
            }
        } else if let Some(m) = self.map.lock().get(id) {
            return Ok(*m);
        }
        let plain = self.src.read_blob(t, id)?;
        self.read.fetch_add(1, Ordering::Relaxed);
        let nid = if self.same_ids {
            *id
        } else {
            self.dst.key().blob_id(&plain)
        };
        if self.packer.add(t, nid, &plain)? {
            self.sent.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(plain.len() as u64, Ordering::Relaxed);
            Progress::add(&self.progress.bytes, plain.len() as u64);
        } else {
            self.present.fetch_add(1, Ordering::Relaxed);
        }
        if !self.same_ids {
            self.map.lock().insert(*id, nid);
        }
        Ok(nid)
    }

    /// Copy a content list and its blobs (ids alike in both repositories). A list the
    /// destination holds does not prove that its blobs are there, so each is looked up.
    fn list(&self, id: &Id) -> Result<()> {
        if self.trees_done.lock().contains(id) {
            return Ok(());
        }
        for c in self.src.load_content_list(id)? {
            self.blob(BlobType::Data, &c)?;
        }
        self.blob(BlobType::Tree, id)?;
        self.trees_done.lock().insert(*id);
        Ok(())
    }

    /// Copy the tree `id` and everything below; its id in the destination.
    fn tree(&self, id: &Id) -> Result<Id> {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        // A tree the destination holds does not prove that everything below it is there
        // (an interrupted run may have stored a tree before the data its files name): every
        // tree is walked, every data blob looked up by id.
        if self.same_ids {
            if self.trees_done.lock().contains(id) {
                return Ok(*id);
            }
        } else if let Some(m) = self.map.lock().get(id) {
            return Ok(*m);
        }
        let tree = self.src.load_tree(id)?;
        let nodes: Vec<Node> = tree
            .nodes
            .into_par_iter()
            .map(|mut n| -> Result<Node> {
                match n.kind {
                    NodeKind::File => {
                        if self.same_ids {
                            // The tree is stored as the source has it: its lists too.
                            match &n.content {
                                Content::Blobs(ids) => {
                                    for c in ids {
                                        self.blob(BlobType::Data, c)?;
                                    }
                                }
                                Content::Lists(lists) => {
                                    for l in lists {
                                        self.list(l)?;
                                    }
                                }
                            }
                        } else {
                            let ids = self
                                .src
                                .file_blobs(&n.content)?
                                .iter()
                                .map(|c| self.blob(BlobType::Data, c))
                                .collect::<Result<_>>()?;
                            // Named as the destination's format names a file of this many
                            // blobs: lists where it has them.
                            n.content = self.packer.content(ids)?;
                        }
                        Progress::add(&self.progress.files, 1);
                    }
                    NodeKind::Dir => {
                        if let Some(sub) = n.subtree {
                            n.subtree = Some(crate::ops::backup::deeper(|| self.tree(&sub))?);
                        }
                    }
                    _ => {}
                }
                Ok(n)
            })
            .collect::<Result<_>>()?;
        let nid = if self.same_ids {
            // Same ids below, so the same bytes: store the tree as the source has it.
            self.blob(BlobType::Tree, id)?;
            self.trees_done.lock().insert(*id);
            *id
        } else {
            let mut t = Tree { nodes };
            t.canonicalize();
            let bytes = t.encode();
            let nid = self.dst.key().blob_id(&bytes);
            if self.packer.add(BlobType::Tree, nid, &bytes)? {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            self.map.lock().insert(*id, nid);
            nid
        };
        Ok(nid)
    }
}

/// Copy `snaps` (from `src`) into the repository `dst` holds a shared lock on.
pub fn copy(
    src: &Indexed<'_>,
    dst: &SharedLock<'_>,
    snaps: &[(Id, Snapshot)],
    progress: &Progress,
) -> Result<CopyReport> {
    let dst_repo: &Repository = dst;
    if src.repo().config().repo_id == dst_repo.config().repo_id {
        return Err(Error::Invalid(
            "source and destination are the same repository".into(),
        ));
    }
    // Trees are stored as the source has them only where the destination can read them: a
    // destination older than content lists gets them re-encoded (and new ids) instead.
    let lists = cairn_format::CONTENT_LISTS_VERSION;
    let same_ids = src.repo().key().id_key == dst_repo.key().id_key
        && (dst_repo.config().version >= lists || src.repo().config().version < lists);
    let existing: HashSet<Identity> = dst_repo
        .load_snapshots()?
        .iter()
        .map(|(_, s)| identity(s, same_ids))
        .collect();
    let index = Arc::new(dst_repo.load_index_for_writing()?);
    let c = Copier {
        src,
        dst: dst_repo,
        // An index file after every pack: a copy interrupted after hours re-sends nothing it
        // had stored (only the pack in flight). The many small index files are merged by
        // the next prune.
        packer: Packer::new(dst_repo, index)
            .index_every(1)
            .under(dst.guard()?),
        same_ids,
        map: Mutex::new(HashMap::new()),
        trees_done: Mutex::new(HashSet::new()),
        sent: AtomicU64::new(0),
        present: AtomicU64::new(0),
        read: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        progress,
    };
    let mut report = CopyReport {
        same_ids,
        ..CopyReport::default()
    };
    let mut todo = Vec::new();
    for (id, s) in snaps {
        if existing.contains(&identity(s, same_ids)) {
            report.skipped += 1;
            continue;
        }
        let tree = c.tree(&s.tree)?;
        let mut n = s.clone();
        n.tree = tree;
        n.parent = None;
        todo.push((*id, n));
    }
    // Everything the snapshots reference is durable and indexed before they are written.
    c.packer.finish()?;
    for (old, s) in todo {
        // As a backup does: committed only while the lock is certainly live.
        dst.guard()?.check_held()?;
        let new = dst_repo.save(FileKind::Snapshot, &s)?;
        report.copied.push((old.to_hex(), new.to_hex()));
    }
    report.blobs_sent = c.sent.load(Ordering::Relaxed);
    report.blobs_present = c.present.load(Ordering::Relaxed);
    report.blobs_read = c.read.load(Ordering::Relaxed);
    report.bytes_sent = c.bytes.load(Ordering::Relaxed);
    Ok(report)
}
