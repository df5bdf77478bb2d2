//! `repair index`, `repair packs` and `repair snapshots`: the way out after data was lost or
//! damaged outside cairn.
//!
//! Once a pack is damaged or gone, the index still names its blobs, so every later backup
//! would deduplicate against them and produce snapshots that cannot be restored. The repair
//! path, in order (what `check` prints):
//! 1. [`repair_packs`] copies the intact blobs of damaged packs into new packs, writes an
//!    index without the damaged packs, and only then deletes them. Lost blobs are no longer
//!    indexed, so
//! 2. the next backup stores them again wherever the sources still have the data;
//! 3. [`repair_snapshots`] rewrites every snapshot whose trees name data that is still lost
//!    (files dropped, unreadable directories emptied), tags the result `repaired`, and with
//!    `forget` removes the originals and the snapshot files that no longer decode.
//!
//! Both take an exclusive lock (the caller's) and follow prune's crash-safe order: new data
//! and its index are durable before anything is deleted.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_format::{
    check_preamble, decode_sealed_header, header_span, BlobType, FileKind, Id, IndexFile,
    IndexPack, NodeKind, PackEntry, Snapshot, Tree, PREAMBLE_LEN,
};
use parking_lot::Mutex;
use rayon::prelude::*;
use serde::Serialize;

use crate::index::MasterIndex;
use crate::lock::ExclusiveLock;
use crate::packer::Packer;
use crate::progress::{interrupted, Progress};
use crate::repository::{verify_name, Repository};
use crate::{Error, Result};

/// Index files listing at most this many packs each (prune and repair).
const PACKS_PER_INDEX_FILE: usize = 256;

/// What `repair packs` did (or, in a dry run, would do).
#[derive(Debug, Default, Serialize)]
pub struct RepairPacksReport {
    /// Damaged or missing packs that were dropped from the index, with the reason.
    pub packs: Vec<(String, String)>,
    /// Intact blobs copied out of them into new packs.
    pub blobs_salvaged: u64,
    /// Blobs with no intact copy left: no longer indexed, so the next backup stores them again.
    pub blobs_lost: u64,
    /// Index files replaced.
    pub index_files_replaced: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// Drop damaged packs from the repository, keeping their intact blobs. With `only` empty,
/// every indexed pack is read and verified to find the damaged ones (like
/// `check --read-data`); otherwise exactly those packs are repaired (their intact blobs are
/// kept, whether or not they are damaged).
pub fn repair_packs(
    lock: &ExclusiveLock<'_>,
    only: &[Id],
    dry_run: bool,
    progress: &Progress,
) -> Result<RepairPacksReport> {
    let repo: &Repository = lock;
    let files = repo.load_index_files()?;
    let stored: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    // Every index entry of each pack (from the files, not the merged map: a pack's blob may
    // have its canonical copy elsewhere).
    let mut entries: HashMap<Id, Vec<cairn_format::PackEntry>> = HashMap::new();
    for p in files.iter().flat_map(|(_, f)| &f.packs) {
        entries
            .entry(p.id)
            .or_default()
            .extend(p.blobs.iter().copied());
    }
    let candidates: Vec<Id> = if only.is_empty() {
        entries.keys().copied().collect()
    } else {
        for id in only {
            if !entries.contains_key(id) && !stored.contains_key(&id.to_hex()) {
                return Err(Error::Invalid(format!(
                    "pack {id} is neither indexed nor stored"
                )));
            }
        }
        only.to_vec()
    };
    Progress::add(&progress.total_files, candidates.len() as u64);

    // What one pack holds: why it is damaged (if it is) and which blobs are intact. With a
    // packer, the intact blobs are copied into it as they are found, so memory holds one
    // pack at a time however many are damaged.
    struct Salvage {
        reason: Option<String>,
        intact: Vec<Id>,
        listed: Vec<cairn_format::PackEntry>,
    }
    let salvage = |pid: &Id, sink: Option<&Packer>| -> Result<Salvage> {
        let name = pid.to_hex();
        let mut out = Salvage {
            reason: None,
            intact: Vec::new(),
            listed: entries.get(pid).cloned().unwrap_or_default(),
        };
        if !stored.contains_key(&name) {
            out.reason = Some("missing from storage".into());
            return Ok(out);
        }
        let mut data = match repo.backend().get(FileKind::Pack, &name) {
            Ok(d) => d,
            Err(e) if e.is_damage() => {
                out.reason = Some(e.to_string());
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = verify_name(FileKind::Pack, &name, &data) {
            out.reason = Some(e.to_string());
        }
        // A pack no index names (one left by an interrupted run, named on the command line)
        // is salvaged by its own header.
        if out.listed.is_empty() {
            match cairn_format::decode_pack_header(repo.key(), &data) {
                Ok(h) => out.listed = h.entries,
                Err(e) => {
                    out.reason.get_or_insert_with(|| format!("header: {e}"));
                }
            }
        }
        // One pack may be listed by two index files (a replacement of the index that was
        // interrupted): each box is opened once, a group's blobs one after another.
        out.listed.sort_by_key(|e| (e.offset, e.group_offset, e.id));
        out.listed.dedup();
        let mut opener = repo.opener(*pid);
        for e in &out.listed {
            let a = e.offset as usize;
            let opened = data
                .get_mut(a..a + e.length as usize)
                .ok_or_else(|| Error::Integrity("truncated".into()))
                .and_then(|sealed| opener.open(e, sealed));
            match opened {
                Ok(plain) => {
                    if let Some(p) = sink {
                        p.add(e.blob_type, e.id, &plain)?;
                    }
                    out.intact.push(e.id);
                }
                Err(err) => {
                    out.reason
                        .get_or_insert_with(|| format!("blob {}: {err}", e.id.short()));
                }
            }
        }
        if only.contains(pid) && out.reason.is_none() {
            out.reason = Some("named on the command line".into());
        }
        Ok(out)
    };

    let mut report = RepairPacksReport {
        dry_run,
        ..RepairPacksReport::default()
    };
    // Find the damaged packs (in parallel; only their ids and blob lists are kept).
    let damaged: Mutex<Vec<(Id, Salvage)>> = Mutex::new(Vec::new());
    candidates.par_iter().try_for_each(|pid| -> Result<()> {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let s = salvage(pid, None)?;
        Progress::add(&progress.files, 1);
        if s.reason.is_some() {
            damaged.lock().push((*pid, s));
        }
        Ok(())
    })?;
    let mut damaged = damaged.into_inner();
    damaged.sort_by_key(|(id, _)| *id);
    if damaged.is_empty() {
        return Ok(report);
    }
    let dropped: HashSet<Id> = damaged.iter().map(|(id, _)| *id).collect();
    // What stays indexed: every pack but the damaged ones.
    // One record per pack: a live one if any file has one (a pack is live when any record
    // is), the fullest of them (a condemned record may list no blobs).
    let mut kept = MasterIndex::default();
    let mut kept_packs: Vec<IndexPack> = Vec::new();
    let mut at: HashMap<Id, usize> = HashMap::new();
    for p in files.iter().flat_map(|(_, f)| &f.packs) {
        if dropped.contains(&p.id) {
            continue;
        }
        match at.get(&p.id) {
            None => {
                at.insert(p.id, kept_packs.len());
                kept_packs.push(p.clone());
            }
            Some(&i) => {
                let have = &mut kept_packs[i];
                let better = match (have.condemned, p.condemned) {
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    _ => p.blobs.len() > have.blobs.len(),
                };
                if better {
                    *have = p.clone();
                }
            }
        }
    }
    for p in &kept_packs {
        kept.add_pack(p);
    }
    let intact_anywhere: HashSet<Id> = damaged
        .iter()
        .flat_map(|(_, s)| s.intact.iter().copied())
        .collect();
    let mut lost: HashSet<Id> = HashSet::new();
    for (pid, s) in &damaged {
        report
            .packs
            .push((pid.to_hex(), s.reason.clone().unwrap_or_default()));
        for e in &s.listed {
            if !intact_anywhere.contains(&e.id) && !kept.contains(&e.id) {
                lost.insert(e.id);
            }
        }
    }
    report.blobs_lost = lost.len() as u64;
    report.blobs_salvaged = intact_anywhere
        .iter()
        .filter(|id| !kept.contains(id))
        .count() as u64;
    if dry_run {
        return Ok(report);
    }
    let packer = Packer::new(repo, Arc::new(kept)).recording();
    // Copy the intact blobs, one damaged pack at a time. A blob that read fine a moment ago
    // and does not now (failing media) stops the repair before anything is deleted.
    for (pid, first) in &damaged {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let again = salvage(pid, Some(&packer))?;
        if let Some(gone) = first.intact.iter().find(|id| !again.intact.contains(id)) {
            return Err(Error::Integrity(format!(
                "pack {}: blob {} read intact a moment ago and not now (failing storage?); nothing was deleted, run `cairn repair packs` again",
                pid.short(),
                gone.short()
            )));
        }
    }
    kept_packs.extend(packer.finish()?);
    drop(packer);
    if interrupted() {
        return Err(Error::Interrupted);
    }
    // The index without the damaged packs is durable before they go.
    let old_files = repo.list_ids(FileKind::Index)?;
    replace_index(repo, &old_files, kept_packs)?;
    report.index_files_replaced = old_files.len() as u64;
    for (pid, _) in &damaged {
        repo.backend().delete(FileKind::Pack, &pid.to_hex())?;
    }
    Ok(report)
}

/// Options of `repair snapshots`.
#[derive(Debug, Clone, Default)]
pub struct RepairSnapshotsOptions {
    /// Remove the original of each rewritten snapshot, and snapshot files that do not decode.
    pub forget: bool,
    /// Only report.
    pub dry_run: bool,
}

/// What `repair snapshots` did (or would do).
#[derive(Debug, Default, Serialize)]
pub struct RepairSnapshotsReport {
    /// Snapshots read.
    pub snapshots: u64,
    /// (original, replacement) for each rewritten snapshot (replacement empty in a dry run).
    pub rewritten: Vec<(String, String)>,
    /// Snapshot files that do not decode, with the reason.
    pub damaged: Vec<(String, String)>,
    /// Snapshot files removed (damaged ones and, with `forget`, rewritten originals).
    pub removed: u64,
    /// Paths dropped from snapshots because their data is lost (first 1000).
    pub paths_dropped: Vec<String>,
    /// How many paths were dropped in all.
    pub paths_dropped_total: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// How one tree came out of the repair: its (possibly new) id and whether it changed.
#[derive(Clone, Copy)]
struct Fixed {
    id: Id,
    changed: bool,
}

struct SnapshotFixer<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    stored: HashSet<Id>,
    packer: Option<Packer>,
    memo: HashMap<Id, Fixed>,
    report: RepairSnapshotsReport,
}

impl SnapshotFixer<'_> {
    /// Whether a data blob can be read back: indexed as data, in a pack that exists.
    fn present(&self, id: &Id) -> Option<u64> {
        let loc = self.index.get(id)?;
        (loc.blob_type == BlobType::Data && self.stored.contains(&self.index.pack_id(&loc)))
            .then_some(u64::from(loc.raw_length))
    }

    /// A file's data blob ids, or None when a content list it names is lost or damaged.
    fn file_blobs<'c>(
        &self,
        content: &'c cairn_format::Content,
    ) -> Result<Option<std::borrow::Cow<'c, [Id]>>> {
        if let cairn_format::Content::Lists(lists) = content {
            if !lists.iter().all(|l| self.tree_readable(l)) {
                return Ok(None);
            }
        }
        match self.repo.file_blobs(self.index, content) {
            Ok(ids) => Ok(Some(ids)),
            Err(e) if e.is_damage() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn drop_path(&mut self, path: &Path, why: &str) {
        self.report.paths_dropped_total += 1;
        if self.report.paths_dropped.len() < 1000 {
            self.report
                .paths_dropped
                .push(format!("{}: {why}", path.display()));
        }
    }

    fn tree_readable(&self, id: &Id) -> bool {
        self.index.get(id).is_some_and(|l| {
            l.blob_type == BlobType::Tree && self.stored.contains(&self.index.pack_id(&l))
        })
    }

    /// The tree `id` with everything whose data is lost removed. Recursion depth is that of
    /// the snapshot; the stack grows on the heap as needed (trees may be crafted deep).
    fn fix(&mut self, id: Id, path: &Path) -> Result<Fixed> {
        if let Some(f) = self.memo.get(&id) {
            return Ok(*f);
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let tree = if self.tree_readable(&id) {
            match self.repo.load_tree(self.index, &id) {
                Ok(t) => Some(t),
                Err(e) if e.is_damage() => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let fixed = match tree {
            None => {
                self.drop_path(
                    path,
                    "directory listing lost; restored as an empty directory",
                );
                let id = self.store(Tree::default())?;
                Fixed { id, changed: true }
            }
            Some(tree) => {
                let mut changed = false;
                let mut nodes = Vec::with_capacity(tree.nodes.len());
                for mut n in tree.nodes {
                    let p = path.join(std::ffi::OsStr::from_bytes(&n.name));
                    match n.kind {
                        NodeKind::File => {
                            let held = match self.file_blobs(&n.content)? {
                                Some(ids) => {
                                    ids.iter().try_fold(0u64, |h, c| Some(h + self.present(c)?))
                                }
                                None => None,
                            };
                            match held {
                                Some(h) if h == n.size => nodes.push(n),
                                Some(h) => {
                                    self.drop_path(
                                        &p,
                                        &format!("size {} but its data holds {h} bytes", n.size),
                                    );
                                    changed = true;
                                }
                                None => {
                                    self.drop_path(&p, "data lost");
                                    changed = true;
                                }
                            }
                        }
                        NodeKind::Dir => {
                            let sub = n.subtree.unwrap_or_default();
                            let f = stacker::maybe_grow(64 << 10, 1 << 20, || self.fix(sub, &p))?;
                            if f.changed {
                                n.subtree = Some(f.id);
                                changed = true;
                            }
                            nodes.push(n);
                        }
                        _ => nodes.push(n),
                    }
                }
                if changed {
                    let id = self.store(Tree { nodes })?;
                    Fixed { id, changed: true }
                } else {
                    Fixed { id, changed: false }
                }
            }
        };
        self.memo.insert(id, fixed);
        Ok(fixed)
    }

    fn store(&mut self, mut tree: Tree) -> Result<Id> {
        tree.canonicalize();
        let bytes = tree.encode();
        match &self.packer {
            Some(p) => {
                let id = p.blob_id(&bytes);
                p.add(BlobType::Tree, id, &bytes)?;
                Ok(id)
            }
            // A dry run computes no ids it would not store; any id marks "changed".
            None => Ok(Id::of_object(&bytes)),
        }
    }
}

/// Rewrite snapshots around lost data, and (with `forget`) remove what cannot be read.
pub fn repair_snapshots(
    lock: &ExclusiveLock<'_>,
    opts: &RepairSnapshotsOptions,
    progress: &Progress,
) -> Result<RepairSnapshotsReport> {
    let repo: &Repository = lock;
    // A damaged index would make intact data look lost: repair it first.
    let index = repo.load_index_strict()?;
    let (snaps, damaged) = repo.load_snapshots_lenient()?;
    let stored: HashSet<Id> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|o| Id::from_hex(&o.name).ok())
        .collect();
    // Packs no index names may hold what the snapshots miss (an index file lost, not its
    // data): rewriting the snapshots around those blobs would drop them for good, and a
    // prune after it would delete the packs. Exclusive lock: no backup is writing any now.
    let unindexed: Vec<&Id> = stored
        .iter()
        .filter(|id| index.pack_number(id).is_none())
        .collect();
    if let Some(first) = unindexed.iter().min() {
        return Err(Error::Integrity(format!(
            "{} stored pack(s) are not indexed (e.g. {}); they may hold the data the snapshots miss: run `cairn repair index` first, then `cairn check`",
            unindexed.len(),
            first.short()
        )));
    }
    // What the packer may deduplicate against: blobs in packs that exist. A tree the
    // repair writes must not be "found" in a pack that is gone.
    let mut known = index.clone();
    known.retain_packs(|id| stored.contains(id));
    let mut fixer = SnapshotFixer {
        repo,
        index: &index,
        stored,
        packer: (!opts.dry_run).then(|| Packer::new(repo, Arc::new(known))),
        memo: HashMap::new(),
        report: RepairSnapshotsReport {
            dry_run: opts.dry_run,
            snapshots: snaps.len() as u64,
            damaged: damaged
                .iter()
                .map(|(id, e)| (id.to_hex(), e.to_string()))
                .collect(),
            ..RepairSnapshotsReport::default()
        },
    };
    Progress::add(&progress.total_files, snaps.len() as u64);
    let mut replaced: Vec<(Id, Snapshot)> = Vec::new();
    for (id, s) in &snaps {
        let root = PathBuf::from("/");
        let f = fixer.fix(s.tree, &root)?;
        if f.changed {
            let mut new = s.clone();
            new.tree = f.id;
            if !new.tags.iter().any(|t| t == "repaired") {
                new.tags.push("repaired".into());
                new.tags.sort();
            }
            replaced.push((*id, new));
        }
        Progress::add(&progress.files, 1);
    }
    let mut report = std::mem::take(&mut fixer.report);
    if let Some(p) = fixer.packer.take() {
        // Trees and their index are durable before a snapshot names them.
        p.finish()?;
    }
    if opts.dry_run {
        report.rewritten = replaced
            .iter()
            .map(|(old, _)| (old.to_hex(), String::new()))
            .collect();
        return Ok(report);
    }
    for (old, new) in &replaced {
        let new_id = repo.save(FileKind::Snapshot, new)?;
        report.rewritten.push((old.to_hex(), new_id.to_hex()));
    }
    if opts.forget {
        for (old, _) in &replaced {
            lock.delete_snapshot(old)?;
            report.removed += 1;
        }
        for (id, _) in &damaged {
            lock.delete_snapshot(id)?;
            report.removed += 1;
        }
    }
    Ok(report)
}

/// What `repair index` did.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// Packs indexed.
    pub packs: u64,
    /// Blobs indexed.
    pub blobs: u64,
    /// Packs whose header could not be read (left in place, not indexed).
    pub unreadable_packs: Vec<String>,
    /// Old index files replaced.
    pub index_files_replaced: u64,
}

/// Rebuild the index from pack headers.
pub fn repair_index(lock: &ExclusiveLock<'_>, progress: &Progress) -> Result<RepairReport> {
    let repo: &Repository = lock;
    let stored = repo.backend().list(FileKind::Pack)?;
    let results: Vec<(String, Result<Vec<PackEntry>>)> = stored
        .par_iter()
        .map(|o| {
            let r = read_pack_header(repo, &o.name, o.size);
            Progress::add(&progress.files, 1);
            (o.name.clone(), r)
        })
        .collect();
    // A header read cut short by Ctrl-C/SIGTERM would leave its pack out of the new index.
    if interrupted() {
        return Err(Error::Interrupted);
    }
    let mut report = RepairReport::default();
    let mut packs = Vec::new();
    for (name, r) in results {
        match r {
            Ok(entries) => {
                report.packs += 1;
                report.blobs += entries.len() as u64;
                packs.push(IndexPack {
                    condemned: None,
                    id: Id::from_hex(&name)?,
                    blobs: entries,
                });
            }
            // A pack that could not be read (permission denied, a network error) may be
            // intact: an index without it would make its blobs look lost.
            Err(e) if e.is_unreachable() => return Err(e),
            Err(e) => report.unreadable_packs.push(format!("{name}: {e}")),
        }
    }
    let old_files = repo.list_ids(FileKind::Index)?;
    replace_index(repo, &old_files, packs)?;
    report.index_files_replaced = old_files.len() as u64;
    Ok(report)
}

/// Replace the index files `old_files` by new ones listing exactly `packs`: write the new
/// files, the last one naming every old file in `supersedes`, then delete the old ones.
/// A crash before the last new file leaves the old files in force (new files only add
/// duplicates); a crash after it leaves superseded files that readers ignore. Only files
/// the caller read may be replaced: a file written meanwhile by a backup stays. Returns the
/// new files.
pub(crate) fn replace_index(
    repo: &Repository,
    old_files: &[Id],
    packs: impl IntoIterator<Item = IndexPack>,
) -> Result<Vec<Id>> {
    let mut new_files = Vec::new();
    // At most PACKS_PER_INDEX_FILE packs and BLOBS_PER_INDEX_FILE blobs per file.
    // Each full file is written as soon as the next pack does not fit, so only one file's
    // packs are in memory; the last one, written after the loop, carries `supersedes`.
    let mut chunk: Vec<IndexPack> = Vec::new();
    let mut blobs = 0usize;
    for p in packs {
        let full = chunk.len() >= PACKS_PER_INDEX_FILE
            || (!chunk.is_empty() && blobs + p.blobs.len() > crate::index::BLOBS_PER_INDEX_FILE);
        if full {
            // Stopping before the last file leaves the old index in force (see above).
            if interrupted() {
                return Err(Error::Interrupted);
            }
            let packs = std::mem::take(&mut chunk);
            new_files.push(repo.save_index(&IndexFile {
                supersedes: Vec::new(),
                packs,
            })?);
            blobs = 0;
        }
        blobs += p.blobs.len();
        chunk.push(p);
    }
    if interrupted() {
        return Err(Error::Interrupted);
    }
    new_files.push(repo.save_index(&IndexFile {
        supersedes: old_files.to_vec(),
        packs: chunk,
    })?);
    for id in old_files {
        if !new_files.contains(id) {
            repo.backend().delete(FileKind::Index, &id.to_hex())?;
        }
    }
    Ok(new_files)
}

/// Read and decode a pack's header with two ranged reads (trailer, then header).
pub(crate) fn read_pack_header(repo: &Repository, name: &str, size: u64) -> Result<Vec<PackEntry>> {
    if size < 12 {
        return Err(Error::Integrity("too short".into()));
    }
    let tail = repo
        .backend()
        .get_range(FileKind::Pack, name, size - 4, 4)?;
    let (start, len) = header_span(size, [tail[0], tail[1], tail[2], tail[3]])?;
    let pre = repo
        .backend()
        .get_range(FileKind::Pack, name, 0, PREAMBLE_LEN as u64)?;
    let (version, _) = check_preamble(&pre, FileKind::Pack)?;
    let sealed = repo.backend().get_range(FileKind::Pack, name, start, len)?;
    Ok(decode_sealed_header(repo.key(), version, &sealed, start)?.entries)
}
