//! `prune`: which blobs are used, and removing the rest; the leftovers of killed processes.
//!
//! ## Why prune takes an exclusive lock
//! Backups hold a shared lock for their whole run, and prune an exclusive one, so a prune
//! never sees a pack that a running backup has uploaded but not yet indexed or referenced.
//! The two-phase alternative (mark now, delete after a grace period, as kopia does) lets
//! backups and prune overlap, but it needs every client to honour the grace period and
//! roughly synchronized clocks.
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

use cairn_format::{FileKind, Id, PackEntry, Snapshot, Tree};
use rayon::prelude::*;
use serde::Serialize;

use crate::index::{entry_of, BlobSet, MasterIndex, PackShare};
use crate::lock::ExclusiveLock;
use crate::ops::repair::replace_index;
use crate::packer::Packer;
use crate::progress::{interrupted, Progress};
use crate::repository::{verify_name, Repository};
use crate::{Error, Result};

/// Trees read at once while marking: enough to keep every core (or connection) busy, few
/// enough that the trees in memory stay a small constant.
pub(crate) fn trees_at_once(repo: &Repository) -> usize {
    (4 * rayon::current_num_threads()).max(2 * repo.backend().connections())
}

/// Every blob reachable from `roots` (tree ids), as positions in `index`: one bit per
/// indexed blob. Trees are read a bounded batch at a time, in parallel; a subtree already
/// marked is not entered again. A blob the trees name but the index lacks is an error.
pub fn used_blobs(repo: &Repository, index: &MasterIndex, roots: &[Id]) -> Result<BlobSet> {
    let mut used = BlobSet::new(index.len());
    let mark = |used: &mut BlobSet, id: &Id| -> Result<bool> {
        match index.position(id) {
            Some(p) => Ok(used.insert(p)),
            None => Err(Error::Integrity(format!(
                "blob {id} is used by a snapshot but not indexed; refusing to prune (run `cairn check`, then `cairn repair index`)"
            ))),
        }
    };
    let mut pending: Vec<Id> = Vec::new();
    for r in roots {
        if mark(&mut used, r)? {
            pending.push(*r);
        }
    }
    let batch = trees_at_once(repo);
    while !pending.is_empty() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let take = pending.split_off(pending.len().saturating_sub(batch));
        let trees: Vec<Tree> = take
            .par_iter()
            .map(|id| repo.load_tree(index, id))
            .collect::<Result<_>>()?;
        for t in &trees {
            for n in &t.nodes {
                for c in &n.content {
                    mark(&mut used, c)?;
                }
                if let Some(s) = n.subtree {
                    if mark(&mut used, &s)? {
                        pending.push(s);
                    }
                }
            }
        }
    }
    Ok(used)
}

/// How much unused space prune may leave in packs it keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxUnused {
    /// A fraction of the repository size after prune (0.05 = 5 %; infinite = unlimited).
    Fraction(f64),
    /// An absolute number of bytes.
    Bytes(u64),
}

/// Prune options.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Tolerated unused space.
    pub max_unused: MaxUnused,
    /// Repack at most this many bytes of packs.
    pub max_repack_bytes: u64,
    /// Only report.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: MaxUnused::Fraction(0.05),
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

/// Temporary files of another host's writer that holds no lock are left alone this long.
const UNLOCKED_REMOTE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Temporary files of untagged (pre-writer-tag) versions are left alone for this long.
const UNTAGGED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Find [`Leftovers`]. A temporary file is tied to its writer by the tag in its name
/// ([`crate::util::writer_tag`]): it is kept while a live (not stale) lock has the same host
/// and pid. Otherwise, a file of a process of this host is a leftover as soon as that
/// process is gone (this covers lock-less writers such as `key add`, and writers to other
/// repositories sharing the local pack directory); one of another host's process without a
/// lock after 15 minutes; an untagged one (older versions) after an hour.
pub fn find_leftovers(repo: &Repository) -> Result<Leftovers> {
    // Every lock is read once, for both questions.
    let (writers, stale_locks) = crate::lock::survey(repo)?;
    let live: HashSet<String> = writers
        .into_iter()
        .map(|(host, pid)| crate::util::writer_tag(&host, pid))
        .collect();
    let temp_files = repo
        .backend()
        .temp_files()?
        .into_iter()
        .filter(|t| match t.writer() {
            Some(tag) if live.contains(tag) => false,
            // A process of this host: its file goes as soon as the process is gone.
            Some(tag) if crate::util::writer_is_local(tag) => !crate::util::local_writer_alive(tag),
            // Another host's process without a lock: a writer that needs none (`key add`,
            // seconds) or one that died. A short floor spares the first.
            Some(_) => t.age > UNLOCKED_REMOTE_TEMP_AGE,
            None => t.age > UNTAGGED_TEMP_AGE,
        })
        .collect();
    Ok(Leftovers {
        temp_files,
        stale_locks,
    })
}

/// Remove what [`find_leftovers`] found; returns (temp files, their bytes, locks) removed.
pub fn remove_leftovers(lock: &ExclusiveLock<'_>, l: &Leftovers) -> Result<(u64, u64, u64)> {
    let repo: &Repository = lock;
    let (mut files, mut bytes) = (0, 0);
    for t in &l.temp_files {
        // One file that cannot be removed (another user's, in a shared temp directory)
        // must not stop the prune.
        match repo.backend().remove_temp(&t.path) {
            Ok(()) => {
                files += 1;
                bytes += t.size;
            }
            Err(e) => tracing::warn!("{e}; left in place"),
        }
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
    used_blobs: u32,
    /// What its used blobs account for.
    used: PackShare,
}

/// Remove unreferenced data (with `dry_run`: only compute what would go).
pub fn prune(
    lock: &ExclusiveLock<'_>,
    opts: &PruneOptions,
    progress: &Progress,
) -> Result<PruneReport> {
    let repo: &Repository = lock;
    let index = repo.load_index_strict()?;
    let snaps: Vec<(Id, Snapshot)> = repo.load_snapshots_strict()?;
    let roots: Vec<Id> = snaps.iter().map(|(_, s)| s.tree).collect();
    let used = used_blobs(repo, &index, &roots)?;

    let stored: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    // Per pack, by the index's pack numbers: what its index entries cover (duplicate copies
    // of a blob count as unused in every pack but the one the index resolves it to).
    let mut packs: Vec<PackUse> = index
        .packs()
        .iter()
        .zip(index.pack_totals())
        .map(|(pid, t)| match stored.get(&pid.to_hex()) {
            Some(&size) => Ok(PackUse {
                id: *pid,
                size,
                used_bytes: 0,
                used_blobs: 0,
                unused_bytes: t.bytes,
                used: PackShare::default(),
            }),
            None => Err(Error::Integrity(format!(
                "pack {pid} is indexed but missing from storage; refusing to prune (run `cairn repair index`)"
            ))),
        })
        .collect::<Result<_>>()?;
    for pos in 0..index.len() {
        if used.contains(pos) {
            let (_, l) = index.at(pos);
            let pu = &mut packs[l.pack as usize];
            pu.used.add(&l);
            pu.used_blobs += 1;
        }
    }
    for (pu, t) in packs.iter_mut().zip(index.pack_totals()) {
        pu.used_bytes = pu.used.bytes(t);
        pu.unused_bytes = t.bytes.saturating_sub(pu.used_bytes);
    }
    let entries: u64 = index.pack_totals().iter().map(|t| u64::from(t.blobs)).sum();
    let blobs_unused = entries - used.len() as u64;

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
    for p in &packs {
        if p.used_blobs == 0 {
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
        .iter()
        .filter(|p| p.used_blobs > 0)
        .map(|p| p.size)
        .sum();
    let mut unused_left: u64 = partial.iter().map(|p| p.unused_bytes).sum();
    let mut repack: Vec<&PackUse> = Vec::new();
    let mut repack_bytes = 0u64;
    for p in &partial {
        let size_after = kept_size.saturating_sub(p.unused_bytes);
        let tolerated = match opts.max_unused {
            MaxUnused::Fraction(f) => f * size_after as f64,
            MaxUnused::Bytes(b) => b as f64,
        };
        if (unused_left as f64) <= tolerated {
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
    let deleted_bytes: u64 = packs
        .iter()
        .filter(|p| p.used_blobs == 0)
        .map(|p| p.size)
        .sum::<u64>()
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
    ) = remove_leftovers(lock, &leftovers)?;
    if delete.is_empty() && repack.is_empty() && unreferenced.is_empty() {
        return Ok(report);
    }

    // 1. Repack: the used blobs of each repacked pack, found in one pass over the index.
    let repack_ids: HashSet<Id> = repack.iter().map(|p| p.id).collect();
    let delete_ids: HashSet<Id> = delete.iter().copied().collect();
    let mut to_copy: HashMap<u32, Vec<PackEntry>> = HashMap::new();
    for pos in 0..index.len() {
        let (id, l) = index.at(pos);
        if used.contains(pos) && repack_ids.contains(&index.pack_id(&l)) {
            to_copy.entry(l.pack).or_default().push(entry_of(id, &l));
        }
    }
    let mut to_copy: Vec<(Id, Vec<PackEntry>)> = to_copy
        .into_iter()
        .map(|(p, mut v)| {
            v.sort_by_key(|e| (e.offset, e.group_offset));
            (index.packs()[p as usize], v)
        })
        .collect();
    to_copy.sort_by_key(|(id, _)| *id);
    drop(used);
    let mut kept = index;
    kept.retain_packs(|id| !repack_ids.contains(id) && !delete_ids.contains(id));
    let kept = std::sync::Arc::new(kept);
    let packer = Packer::new(repo, kept.clone()).recording();
    to_copy
        .par_iter()
        .try_for_each(|(pid, blobs)| -> Result<()> {
            if interrupted() {
                return Err(Error::Interrupted);
            }
            let mut data = repo.backend().get(FileKind::Pack, &pid.to_hex())?;
            verify_name(FileKind::Pack, &pid.to_hex(), &data)?;
            let mut opener = repo.opener(*pid);
            for e in blobs {
                let a = e.offset as usize;
                let sealed = data
                    .get_mut(a..a + e.length as usize)
                    .ok_or_else(|| Error::Integrity(format!("pack {pid} truncated")))?;
                let plain = opener.open(e, sealed).map_err(|err| {
                    Error::Integrity(format!(
                        "{err}; refusing to repack (run `cairn check --read-data`)"
                    ))
                })?;
                packer.add(e.blob_type, e.id, &plain)?;
                Progress::add(&progress.bytes, u64::from(e.raw_length));
            }
            Ok(())
        })?;
    let new_packs = packer.finish()?;
    drop(packer);

    // 2.+3. The complete new index, then the old index files go.
    report.index_files_replaced = replace_index(repo, kept.index_packs().chain(new_packs))?;
    // 4. Packs nothing names any more.
    for id in delete.iter().chain(repack_ids.iter()) {
        repo.backend().delete(FileKind::Pack, &id.to_hex())?;
    }
    for (name, _) in &unreferenced {
        repo.backend().delete(FileKind::Pack, name)?;
    }
    Ok(report)
}
