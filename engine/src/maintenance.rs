//! Repository maintenance: which blobs are used, `prune`, `check`, `repair index`.
//!
//! ## Why prune takes an exclusive lock
//! Backups hold a shared lock for their whole run, and prune an exclusive one, so a prune
//! never sees a pack that a running backup has uploaded but not yet indexed or referenced.
//! The two-phase alternative (mark now, delete after a grace period, as kopia does) lets
//! backups and prune overlap, but it needs every client to honour the grace period and
//! roughly synchronized clocks; a K3s nightly job runs backups and prune back to back from
//! one timer, so the lock costs nothing and keeps the invariant simple.
//!
//! ## Prune's crash-safe order
//! 1. repack: copy still-used blobs out of mostly-unused packs into new packs (indexed by
//!    their own new index files) — old and new copies coexist;
//! 2. write the complete new index; only its **last** file lists the old index files in
//!    `supersedes`, so a crash before that leaves the old index in force;
//! 3. delete the superseded index files;
//! 4. delete packs that no index file names any more.
//!
//! A kill at any point leaves every snapshot restorable; re-running prune finishes the job.

use std::collections::{HashMap, HashSet};

use cairn_format::{
    decode_pack_header, decode_sealed_header, header_span, open_blob_in_place, BlobType, FileKind,
    Id, IndexFile, IndexPack, NodeKind, PackEntry, Snapshot, Tree,
};
use parking_lot::Mutex;
use rayon::prelude::*;
use serde::Serialize;

use crate::index::MasterIndex;
use crate::packer::Packer;
use crate::progress::{interrupted, Progress};
use crate::repository::{verify_name, Repository};
use crate::{Error, Result};

/// Index files listing at most this many packs each.
const PACKS_PER_INDEX_FILE: usize = 256;

/// Every blob reachable from `roots` (tree ids), walking the trees level by level in parallel.
/// Memory: one 32-byte id (plus hash-set overhead, ~48 bytes) per used blob.
pub fn used_blobs(repo: &Repository, index: &MasterIndex, roots: &[Id]) -> Result<HashSet<Id>> {
    let mut used: HashSet<Id> = HashSet::new();
    let mut frontier: Vec<Id> = roots
        .iter()
        .copied()
        .filter(|id| used.insert(*id))
        .collect();
    while !frontier.is_empty() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let trees: Vec<Tree> = frontier
            .par_iter()
            .map(|id| repo.load_tree(index, id))
            .collect::<Result<_>>()?;
        let mut next = Vec::new();
        for t in &trees {
            for n in &t.nodes {
                for c in &n.content {
                    used.insert(*c);
                }
                if let Some(s) = n.subtree {
                    if used.insert(s) {
                        next.push(s);
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(used)
}

/// Prune options.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Tolerated unused bytes, as a fraction of the repository size after prune (0.05 = 5 %).
    pub max_unused: f64,
    /// Repack at most this many bytes of packs.
    pub max_repack_bytes: u64,
    /// Only report.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: 0.05,
            max_repack_bytes: u64::MAX,
            dry_run: false,
        }
    }
}

/// What prune did (or would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// Packs in the repository before.
    pub packs_total: u64,
    /// Bytes in packs before.
    pub bytes_total: u64,
    /// Used blobs.
    pub blobs_used: u64,
    /// Unused blobs.
    pub blobs_unused: u64,
    /// Packs with no used blob, deleted.
    pub packs_deleted: u64,
    /// Packs rewritten.
    pub packs_repacked: u64,
    /// Packs no index named (left by interrupted backups), deleted.
    pub packs_unreferenced: u64,
    /// Bytes of used blobs copied by repacking.
    pub bytes_repacked: u64,
    /// Bytes freed (deleted minus written).
    pub bytes_freed: u64,
    /// Unused bytes left in kept packs.
    pub bytes_unused_left: u64,
    /// Index files replaced.
    pub index_files_replaced: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Temporary files of interrupted writes removed (or, in a dry run, found).
    pub temp_files_removed: u64,
    /// Their bytes.
    pub temp_bytes_removed: u64,
    /// Stale or damaged locks removed (or, in a dry run, found).
    pub stale_locks_removed: u64,
}

/// What killed processes left behind: temporary files that no running writer owns, and
/// locks that nobody honours any more.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Temporary files whose writer is gone.
    pub temp_files: Vec<crate::backend::TempFile>,
    /// Stale or damaged locks.
    pub stale_locks: Vec<Id>,
}

impl Leftovers {
    /// Bytes of the temporary files.
    pub fn temp_bytes(&self) -> u64 {
        self.temp_files.iter().map(|t| t.size).sum()
    }
}

/// Temporary files of untagged (pre-writer-tag) versions are left alone for this long.
const UNTAGGED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Find [`Leftovers`]. A temporary file is tied to its writer by the tag in its name
/// ([`crate::util::writer_tag`]): it is kept while a live (not stale) lock has the same host
/// and pid, or while that process still runs on this host (lock-less writers such as
/// `key add`, and writers to other repositories sharing the local pack directory); otherwise
/// it is a leftover at once, whatever its age.
pub fn find_leftovers(repo: &Repository) -> Result<Leftovers> {
    let live: HashSet<String> = crate::lock::live_writers(repo)?
        .into_iter()
        .map(|(host, pid)| crate::util::writer_tag(&host, pid))
        .collect();
    let temp_files = repo
        .backend()
        .temp_files()?
        .into_iter()
        .filter(|t| match t.writer() {
            Some(tag) => !live.contains(tag) && !crate::util::local_writer_alive(tag),
            None => t.age > UNTAGGED_TEMP_AGE,
        })
        .collect();
    Ok(Leftovers {
        temp_files,
        stale_locks: crate::lock::stale_locks(repo)?,
    })
}

/// Remove what [`find_leftovers`] found; returns (temp files, their bytes, locks) removed.
pub fn remove_leftovers(repo: &Repository, l: &Leftovers) -> Result<(u64, u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for t in &l.temp_files {
        repo.backend().remove_temp(&t.path)?;
        files += 1;
        bytes += t.size;
    }
    for id in &l.stale_locks {
        repo.backend().delete(FileKind::Lock, &id.to_hex())?;
    }
    Ok((files, bytes, l.stale_locks.len() as u64))
}

struct PackUse {
    id: Id,
    size: u64,
    used_bytes: u64,
    unused_bytes: u64,
    used_blobs: Vec<PackEntry>,
}

/// Remove unreferenced data. The caller holds an **exclusive** lock.
pub fn prune(repo: &Repository, opts: &PruneOptions, progress: &Progress) -> Result<PruneReport> {
    // Loaded once: the merged map for lookups, the files themselves for per-pack accounting
    // and for the index that replaces them.
    let files = repo.load_index_files()?;
    let index = MasterIndex::from_files(&files);
    let snaps: Vec<(Id, Snapshot)> = repo.load_snapshots_strict()?;
    let roots: Vec<Id> = snaps.iter().map(|(_, s)| s.tree).collect();
    let used = used_blobs(repo, &index, &roots)?;
    for id in &used {
        if !index.contains(id) {
            return Err(Error::Integrity(format!(
                "blob {id} is used by a snapshot but not indexed; refusing to prune (run `cairn check`, then `cairn repair index`)"
            )));
        }
    }

    let stored: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let mut packs: HashMap<Id, PackUse> = HashMap::new();
    for pid in index.packs() {
        let Some(&size) = stored.get(&pid.to_hex()) else {
            return Err(Error::Integrity(format!(
                "pack {pid} is indexed but missing from storage; refusing to prune (run `cairn repair index`)"
            )));
        };
        packs.insert(
            *pid,
            PackUse {
                id: *pid,
                size,
                used_bytes: 0,
                unused_bytes: 0,
                used_blobs: Vec::new(),
            },
        );
    }
    // Walk the index files themselves (not the merged map) so that duplicate copies of a blob
    // in a second pack count as unused there.
    let mut seen_pack: HashSet<Id> = HashSet::new();
    let mut blobs_unused = 0u64;
    for p in files.iter().flat_map(|(_, f)| &f.packs) {
        let pid = p.id;
        if !seen_pack.insert(pid) {
            continue;
        }
        let Some(pu) = packs.get_mut(&pid) else {
            continue;
        };
        for &e in &p.blobs {
            let canonical = index
                .get(&e.id)
                .is_some_and(|l| index.pack_id(l) == pid && l.offset == e.offset);
            if canonical && used.contains(&e.id) {
                pu.used_bytes += u64::from(e.length);
                pu.used_blobs.push(e);
            } else {
                pu.unused_bytes += u64::from(e.length);
                blobs_unused += 1;
            }
        }
    }

    let mut report = PruneReport {
        packs_total: stored.len() as u64,
        bytes_total: stored.values().sum(),
        blobs_used: used.len() as u64,
        blobs_unused,
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };
    let indexed: HashSet<String> = index.packs().iter().map(Id::to_hex).collect();
    let unreferenced: Vec<(String, u64)> = stored
        .iter()
        .filter(|(n, _)| !indexed.contains(*n))
        .map(|(n, s)| (n.clone(), *s))
        .collect();
    report.packs_unreferenced = unreferenced.len() as u64;

    let mut delete: Vec<Id> = Vec::new();
    let mut partial: Vec<&PackUse> = Vec::new();
    for p in packs.values() {
        if p.used_blobs.is_empty() {
            delete.push(p.id);
        } else if p.unused_bytes > 0 {
            partial.push(p);
        }
    }
    report.packs_deleted = delete.len() as u64;
    // Repack the emptiest packs first until the unused share is within bounds.
    partial.sort_by(|a, b| {
        let ra = a.unused_bytes as f64 / a.size.max(1) as f64;
        let rb = b.unused_bytes as f64 / b.size.max(1) as f64;
        rb.total_cmp(&ra).then(a.id.cmp(&b.id))
    });
    let kept_size: u64 = packs
        .values()
        .filter(|p| !p.used_blobs.is_empty())
        .map(|p| p.size)
        .sum();
    let mut unused_left: u64 = partial.iter().map(|p| p.unused_bytes).sum();
    let mut repack: Vec<&PackUse> = Vec::new();
    let mut repack_bytes = 0u64;
    for p in &partial {
        let size_after = kept_size.saturating_sub(p.unused_bytes);
        if (unused_left as f64) <= opts.max_unused * size_after as f64 {
            break;
        }
        if repack_bytes + p.size > opts.max_repack_bytes {
            continue;
        }
        repack_bytes += p.size;
        unused_left -= p.unused_bytes;
        repack.push(p);
    }
    report.packs_repacked = repack.len() as u64;
    report.bytes_repacked = repack.iter().map(|p| p.used_bytes).sum();
    report.bytes_unused_left = unused_left;
    let deleted_bytes: u64 = delete.iter().map(|id| packs[id].size).sum::<u64>()
        + repack.iter().map(|p| p.size).sum::<u64>()
        + unreferenced.iter().map(|(_, s)| s).sum::<u64>();
    report.bytes_freed = deleted_bytes.saturating_sub(report.bytes_repacked);
    // Leftovers of killed processes: temporary files no live writer owns, stale locks.
    let leftovers = find_leftovers(repo)?;
    if opts.dry_run {
        report.temp_files_removed = leftovers.temp_files.len() as u64;
        report.temp_bytes_removed = leftovers.temp_bytes();
        report.stale_locks_removed = leftovers.stale_locks.len() as u64;
        return Ok(report);
    }
    (
        report.temp_files_removed,
        report.temp_bytes_removed,
        report.stale_locks_removed,
    ) = remove_leftovers(repo, &leftovers)?;
    if delete.is_empty() && repack.is_empty() && unreferenced.is_empty() {
        return Ok(report);
    }

    // 1. Repack.
    let repack_ids: HashSet<Id> = repack.iter().map(|p| p.id).collect();
    let delete_ids: HashSet<Id> = delete.iter().copied().collect();
    let mut kept = MasterIndex::default();
    let mut kept_packs: Vec<IndexPack> = Vec::new();
    for (_, f) in &files {
        for p in &f.packs {
            if repack_ids.contains(&p.id)
                || delete_ids.contains(&p.id)
                || kept_packs.iter().any(|k| k.id == p.id)
            {
                continue;
            }
            kept.add_pack(p);
            kept_packs.push(p.clone());
        }
    }
    let packer = Packer::new(repo, std::sync::Arc::new(kept));
    repack.par_iter().try_for_each(|p| -> Result<()> {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let mut data = repo.backend().get(FileKind::Pack, &p.id.to_hex())?;
        verify_name(FileKind::Pack, &p.id.to_hex(), &data)?;
        for e in &p.used_blobs {
            let a = e.offset as usize;
            let sealed = data
                .get_mut(a..a + e.length as usize)
                .ok_or_else(|| Error::Integrity(format!("pack {} truncated", p.id)))?;
            let plain = open_blob_in_place(repo.key(), e.blob_type, &e.id, sealed, e.raw_length)
                .map_err(|err| {
                    Error::Integrity(format!(
                        "pack {}: {err}; refusing to repack (run `cairn check --read-data`)",
                        p.id.short()
                    ))
                })?;
            packer.add(e.blob_type, e.id, &plain)?;
            Progress::add(&progress.bytes, u64::from(e.raw_length));
        }
        Ok(())
    })?;
    let new_packs = packer.finish()?;
    drop(packer);
    kept_packs.extend(new_packs);

    // 2.+3. The complete new index, then the old index files go.
    report.index_files_replaced = replace_index(repo, kept_packs)?;
    // 4. Packs nothing names any more.
    for id in delete.iter().chain(repack_ids.iter()) {
        repo.backend().delete(FileKind::Pack, &id.to_hex())?;
    }
    for (name, _) in &unreferenced {
        repo.backend().delete(FileKind::Pack, name)?;
    }
    Ok(report)
}

/// Which packs `check` reads completely.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Headers only.
    None,
    /// Every pack.
    All,
    /// Packs whose first id byte falls in bucket `n` of `t` (1-based): `--read-data-subset n/t`.
    Subset(u32, u32),
    /// A random fraction of packs.
    Fraction(f64),
}

/// Problems found by `check`.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Errors (the repository is damaged).
    pub errors: Vec<String>,
    /// Packs that no index names (harmless; prune removes them).
    pub unreferenced_packs: Vec<String>,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Packs whose header was checked.
    pub packs_checked: u64,
    /// Packs read completely.
    pub packs_read: u64,
    /// Blobs verified by reading.
    pub blobs_read: u64,
    /// Trees decoded.
    pub trees: u64,
    /// Temporary files left by killed processes (`prune` removes them).
    pub leftover_temp_files: u64,
    /// Their bytes.
    pub leftover_temp_bytes: u64,
    /// Stale or damaged locks (`prune` and `unlock` remove them).
    pub stale_locks: u64,
    /// What to run to repair what was found, in order.
    pub hints: Vec<String>,
}

/// Verify the repository's structure, and with `read_data` its contents.
pub fn check(repo: &Repository, read_data: ReadData, progress: &Progress) -> Result<CheckReport> {
    let errors = Mutex::new(Vec::<String>::new());
    let err = |m: String| errors.lock().push(m);
    let mut report = CheckReport::default();

    for o in repo.backend().list(FileKind::Key)? {
        match repo.backend().get(FileKind::Key, &o.name) {
            Ok(d) => {
                if let Err(e) = verify_name(FileKind::Key, &o.name, &d).and_then(|()| {
                    let kf = cairn_format::KeyFile::decode(&d)?;
                    Ok(kf.kdf.check_range()?)
                }) {
                    err(format!("key {}: {e}", o.name));
                }
            }
            Err(e) => err(format!("key {}: {e}", o.name)),
        }
    }

    // Index files: decode each; a damaged one is reported and the rest still checked.
    let mut index = MasterIndex::default();
    let mut entries_by_pack: HashMap<Id, Vec<PackEntry>> = HashMap::new();
    let ids = repo.list_ids(FileKind::Index)?;
    let loaded: Vec<(Id, Result<IndexFile>)> = ids
        .par_iter()
        .map(|id| (*id, repo.load::<IndexFile>(FileKind::Index, id)))
        .collect();
    let superseded: HashSet<Id> = loaded
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flat_map(|f| f.supersedes.iter().copied())
        .collect();
    let mut damaged_index = false;
    for (id, r) in loaded {
        let r = r.and_then(|f| {
            f.check_limits(repo.config())
                .map_err(Error::from)
                .map(|()| f)
        });
        match r {
            Ok(f) if !superseded.contains(&id) => {
                index.add_file(id, &f);
                for p in f.packs {
                    entries_by_pack.entry(p.id).or_default().extend(p.blobs);
                }
            }
            Ok(_) => {}
            Err(e) => {
                damaged_index = true;
                err(format!("index {}: {e}", id.short()));
            }
        }
    }
    let damaged_packs: Mutex<Vec<String>> = Mutex::new(Vec::new());

    // Packs: every indexed pack exists, its header agrees with the index, its size matches.
    let stored: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let indexed: HashSet<String> = entries_by_pack.keys().map(Id::to_hex).collect();
    report.unreferenced_packs = stored
        .keys()
        .filter(|n| !indexed.contains(*n))
        .cloned()
        .collect();
    report.unreferenced_packs.sort();
    let pack_list: Vec<(&Id, &Vec<PackEntry>)> = entries_by_pack.iter().collect();
    pack_list.par_iter().for_each(|(pid, entries)| {
        let name = pid.to_hex();
        let Some(&size) = stored.get(&name) else {
            err(format!("pack {name} is indexed but missing"));
            damaged_packs.lock().push(pid.short());
            return;
        };
        let header = read_pack_header(repo, &name, size);
        match header {
            Ok(h) => {
                let by_id: HashMap<Id, &PackEntry> = h.iter().map(|e| (e.id, e)).collect();
                for e in entries.iter() {
                    if by_id.get(&e.id).is_none_or(|x| **x != *e) {
                        err(format!(
                            "pack {}: index entry for blob {} does not match the pack header",
                            pid.short(),
                            e.id.short()
                        ));
                    }
                }
            }
            Err(e) => {
                err(format!("pack {}: header: {e}", pid.short()));
                damaged_packs.lock().push(pid.short());
            }
        }
        Progress::add(&progress.files, 1);
    });
    report.packs_checked = pack_list.len() as u64;

    // Snapshots and trees: everything they name decodes and is indexed.
    let mut roots = Vec::new();
    let mut damaged_snapshots = false;
    for id in repo.list_ids(FileKind::Snapshot)? {
        match repo.load::<Snapshot>(FileKind::Snapshot, &id) {
            Ok(s) => {
                roots.push((id, s.tree));
                report.snapshots += 1;
            }
            Err(e) => {
                damaged_snapshots = true;
                err(format!("snapshot {}: {e}", id.short()));
            }
        }
    }
    let mut incomplete_snapshots = false;
    let mut seen: HashSet<Id> = HashSet::new();
    let mut frontier: Vec<(Id, Id)> = roots.into_iter().filter(|(_, t)| seen.insert(*t)).collect();
    while !frontier.is_empty() {
        let results: Vec<(Id, Result<Tree>)> = frontier
            .par_iter()
            .map(|(snap, t)| {
                (
                    *snap,
                    repo.load_tree(&index, t).map_err(|e| {
                        Error::Integrity(format!(
                            "tree {} (snapshot {}): {e}",
                            t.short(),
                            snap.short()
                        ))
                    }),
                )
            })
            .collect();
        let mut next = Vec::new();
        for (snap, r) in results {
            match r {
                Ok(tree) => {
                    report.trees += 1;
                    for n in &tree.nodes {
                        let mut held = Some(0u64);
                        for c in &n.content {
                            match index.get(c) {
                                Some(l) if l.blob_type == BlobType::Data => {
                                    held = held.map(|h| h + u64::from(l.raw_length));
                                }
                                _ => {
                                    held = None;
                                    incomplete_snapshots = true;
                                    err(format!(
                                        "snapshot {}: file {:?}: data blob {} is not indexed",
                                        snap.short(),
                                        String::from_utf8_lossy(&n.name),
                                        c.short()
                                    ));
                                }
                            }
                        }
                        // A node's size must be what its blobs hold: restore sizes the file
                        // from it, and a lie would make it create a huge sparse file.
                        if let Some(h) = held.filter(|h| n.kind == NodeKind::File && *h != n.size) {
                            incomplete_snapshots = true;
                            err(format!(
                                "snapshot {}: file {:?}: size {} but its blobs hold {h} bytes",
                                snap.short(),
                                String::from_utf8_lossy(&n.name),
                                n.size
                            ));
                        }
                        if let Some(s) = n.subtree {
                            if seen.insert(s) {
                                next.push((snap, s));
                            }
                        }
                    }
                }
                Err(e) => {
                    incomplete_snapshots = true;
                    err(e.to_string());
                }
            }
        }
        frontier = next;
    }

    // Contents.
    let selected: Vec<&Id> = entries_by_pack
        .keys()
        .filter(|id| stored.contains_key(&id.to_hex()))
        .filter(|id| match read_data {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Subset(n, t) => u32::from(id.0[0]) * t / 256 == n - 1,
            ReadData::Fraction(f) => rand::random::<f64>() < f,
        })
        .collect();
    let blobs_read = std::sync::atomic::AtomicU64::new(0);
    selected.par_iter().for_each(|pid| {
        let name = pid.to_hex();
        let res = (|| -> Result<()> {
            let mut data = repo.backend().get(FileKind::Pack, &name)?;
            verify_name(FileKind::Pack, &name, &data)?;
            let header = decode_pack_header(repo.key(), &data)?;
            // The header checked that its entries tile the pack before it, so the blobs are
            // decrypted in place, without a copy each.
            for e in &header.entries {
                let a = e.offset as usize;
                open_blob_in_place(
                    repo.key(),
                    e.blob_type,
                    &e.id,
                    &mut data[a..a + e.length as usize],
                    e.raw_length,
                )
                .map_err(|x| Error::Integrity(format!("blob {}: {x}", e.id.short())))?;
                blobs_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Progress::add(&progress.bytes, data.len() as u64);
            Ok(())
        })();
        if let Err(e) = res {
            err(format!("pack {}: {e}", pid.short()));
            damaged_packs.lock().push(pid.short());
        }
    });
    // Reads cut short by Ctrl-C/SIGTERM (a remote backend gives up on them) are not damage.
    if interrupted() {
        return Err(Error::Interrupted);
    }
    report.packs_read = selected.len() as u64;
    report.blobs_read = blobs_read.into_inner();
    report.errors = errors.into_inner();
    report.errors.sort();
    let leftovers = find_leftovers(repo)?;
    report.leftover_temp_files = leftovers.temp_files.len() as u64;
    report.leftover_temp_bytes = leftovers.temp_bytes();
    report.stale_locks = leftovers.stale_locks.len() as u64;
    let mut damaged_packs = damaged_packs.into_inner();
    damaged_packs.sort();
    damaged_packs.dedup();
    report.hints = repair_hints(
        damaged_index,
        &damaged_packs,
        damaged_snapshots,
        incomplete_snapshots,
    );
    Ok(report)
}

/// The commands that repair what `check` found, in the order to run them.
fn repair_hints(
    damaged_index: bool,
    damaged_packs: &[String],
    damaged_snapshots: bool,
    incomplete_snapshots: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if damaged_index {
        out.push("`cairn repair index` rebuilds the index from the pack headers".to_owned());
    }
    if !damaged_packs.is_empty() {
        out.push(format!(
            "`cairn repair packs {}` salvages the intact blobs of the damaged packs and drops the lost ones from the index",
            damaged_packs.join(" ")
        ));
        out.push(
            "then a backup of the same sources stores again the lost data that still exists there"
                .to_owned(),
        );
    }
    if damaged_snapshots || incomplete_snapshots || !damaged_packs.is_empty() {
        out.push("`cairn repair snapshots --forget` removes damaged snapshot files and rewrites the snapshots around data that is lost".to_owned());
    }
    out
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

/// Rebuild the index from pack headers. The caller holds an exclusive lock.
pub fn repair_index(repo: &Repository, progress: &Progress) -> Result<RepairReport> {
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
                    id: Id::from_hex(&name)?,
                    blobs: entries,
                });
            }
            Err(e) => report.unreadable_packs.push(format!("{name}: {e}")),
        }
    }
    report.index_files_replaced = replace_index(repo, packs)?;
    Ok(report)
}

/// Replace the whole index by one listing exactly `packs`: write the new index files, the
/// last one naming every older index file in `supersedes`, then delete the older ones.
/// A crash before the last new file leaves the old index in force (new files only add
/// duplicates); a crash after it leaves superseded files that readers ignore. Returns how
/// many index files were replaced.
pub(crate) fn replace_index(repo: &Repository, packs: Vec<IndexPack>) -> Result<u64> {
    let old_files: Vec<Id> = repo.list_ids(FileKind::Index)?;
    // At most PACKS_PER_INDEX_FILE packs and a quarter of the format's blob limit per file.
    let mut chunks: Vec<Vec<IndexPack>> = vec![Vec::new()];
    let mut blobs = 0usize;
    for p in packs {
        let full = chunks.last().is_some_and(|c| {
            c.len() >= PACKS_PER_INDEX_FILE
                || (!c.is_empty() && blobs + p.blobs.len() > cairn_format::MAX_INDEX_BLOBS / 4)
        });
        if full {
            chunks.push(Vec::new());
            blobs = 0;
        }
        blobs += p.blobs.len();
        if let Some(c) = chunks.last_mut() {
            c.push(p);
        }
    }
    let last = chunks.len() - 1;
    let mut new_files = HashSet::new();
    for (i, packs) in chunks.into_iter().enumerate() {
        // Stopping before the last file leaves the old index in force (see above).
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let supersedes = if i == last {
            old_files.clone()
        } else {
            Vec::new()
        };
        new_files.insert(repo.save(FileKind::Index, &IndexFile { supersedes, packs })?);
    }
    for id in &old_files {
        if !new_files.contains(id) {
            repo.backend().delete(FileKind::Index, &id.to_hex())?;
        }
    }
    Ok(old_files.len() as u64)
}

/// Read and decode a pack's header with two ranged reads (trailer, then header).
fn read_pack_header(repo: &Repository, name: &str, size: u64) -> Result<Vec<PackEntry>> {
    if size < 12 {
        return Err(Error::Integrity("too short".into()));
    }
    let tail = repo
        .backend()
        .get_range(FileKind::Pack, name, size - 4, 4)?;
    let (start, len) = header_span(size, [tail[0], tail[1], tail[2], tail[3]])?;
    let sealed = repo.backend().get_range(FileKind::Pack, name, start, len)?;
    Ok(decode_sealed_header(repo.key(), &sealed, start)?.entries)
}
