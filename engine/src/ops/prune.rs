//! `prune`: which blobs are used, and removing the rest; the leftovers of killed processes.
//!
//! ## Prune beside running backups (format 3)
//! Prune holds a maintenance lock, which coexists with the shared locks of backups, so it
//! must never delete a pack that a running backup may reference. It deletes in two phases
//! (FORMAT.md §15): a pack that no snapshot needs (or whose used blobs were just copied
//! elsewhere) is first **condemned** — its index record is rewritten with the time — and a
//! prune deletes it only when
//! - no snapshot needs a blob that only condemned packs hold (else the pack is **recovered**:
//!   its record is live again), and
//! - no live lock, as listed *before* the snapshots were, started earlier than the
//!   condemnation time plus [`PruneOptions::clock_skew`]: any operation that loaded the index
//!   before the mark existed is still running (and holds the deletion back) or has finished
//!   (and its snapshot was in the listing).
//!
//! Writers never deduplicate against condemned packs, and a backup commits its snapshot only
//! while its lock is certainly live ([`crate::lock::LockGuard::check_held`]). When nothing
//! else holds a lock and no snapshot appeared since the listing, the packs condemned in
//! this run are deleted at once (a quiet repository frees space in one run, as before).
//!
//! Repositories of format 1 and 2 have no condemned records: there prune's maintenance
//! lock is exclusive and what it would condemn is deleted at once.
//!
//! ## Prune's crash-safe order
//! 1. repack: copy still-used blobs out of mostly-unused packs into new packs (indexed by
//!    their own new index files) — old and new copies coexist;
//! 2. rewrite the index files whose records change (condemned, recovered, removed) and merge
//!    small ones; only the **last** new file lists the files it replaces in `supersedes`, so a
//!    crash before that leaves the old records in force;
//! 3. delete the superseded index files;
//! 4. delete packs that no index file names any more.
//!
//! A kill at any point leaves every snapshot restorable; re-running prune finishes the job.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cairn_format::{Content, FileKind, Id, IndexPack, Lock, PackEntry, Snapshot, Timestamp, Tree};
use rayon::prelude::*;
use serde::Serialize;

use crate::index::{entry_of, BlobSet, MasterIndex, PackShare, BLOBS_PER_INDEX_FILE};
use crate::lock::MaintenanceView;
use crate::ops::repair::replace_index;
use crate::packer::Packer;
use crate::progress::{interrupted, Progress};
use crate::repository::{verify_name, Repository};
use crate::util::now_timestamp;
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
        // Content lists (format 4) marked for the first time are read for their blobs, a
        // bounded batch at a time as trees are.
        let mut lists: Vec<Id> = Vec::new();
        for t in &trees {
            for n in &t.nodes {
                match &n.content {
                    Content::Blobs(ids) => {
                        for c in ids {
                            mark(&mut used, c)?;
                        }
                    }
                    Content::Lists(ls) => {
                        for l in ls {
                            if mark(&mut used, l)? {
                                lists.push(*l);
                            }
                        }
                    }
                }
                if let Some(s) = n.subtree {
                    if mark(&mut used, &s)? {
                        pending.push(s);
                    }
                }
            }
        }
        for chunk in lists.chunks(batch.max(1) * 16) {
            let loaded: Vec<Vec<Id>> = chunk
                .par_iter()
                .map(|l| repo.load_content_list(index, l))
                .collect::<Result<_>>()?;
            for c in loaded.iter().flatten() {
                mark(&mut used, c)?;
            }
        }
    }
    Ok(used)
}

/// Before a pack goes, its own header (authenticated with the repository key, in an object
/// whose name is its hash: nobody can have changed it) is read, and every used blob it lists
/// must have a copy elsewhere that this run reads and verifies — the index's word is not
/// enough. The index is metadata any writer can add to: a node with the password but an
/// append-only credential can write index files that supersede the real ones, or place used
/// blobs in packs of garbage, so that a prune on the server would otherwise delete the only
/// real copy (docs/serve.md, "Threat model"). Returns the packs (of `fate` Delete or Condemn,
/// repacked ones included, and of `unreferenced`) that fail this and must stay.
///
/// Cost: a header read per pack that goes (in parallel), plus a blob read for each used blob
/// such a header lists: none for a pack with no used blob or one repacked in this run (its
/// used blobs are copied from it, verified, by the repack); all of them for a pack an earlier
/// run repacked and condemned, which goes now. A pack whose header does not authenticate
/// holds nothing any reader could use and may go; a header that cannot be read (I/O,
/// network) stops the prune.
fn spare_what_the_index_hides(
    repo: &Repository,
    index: &MasterIndex,
    used: &BlobSet,
    stored: &HashMap<String, u64>,
    fate: &[Fate],
    unreferenced: &[(Id, u64)],
) -> Result<Vec<Id>> {
    // (pack name, size, its number in the index if it has one)
    let mut doomed: Vec<(Id, u64, Option<usize>)> = (0..fate.len())
        .filter(|&p| matches!(fate[p], Fate::Delete | Fate::Condemn))
        .filter_map(|p| {
            let id = index.packs()[p];
            stored.get(&id.to_hex()).map(|&size| (id, size, Some(p)))
        })
        .collect();
    doomed.extend(unreferenced.iter().map(|&(id, size)| (id, size, None)));
    if doomed.is_empty() {
        return Ok(Vec::new());
    }
    // Blob position -> whether its indexed copy verified (each read once).
    let verified: parking_lot::Mutex<HashMap<usize, bool>> =
        parking_lot::Mutex::new(HashMap::new());
    let verdicts: Vec<Result<bool>> = doomed
        .par_iter()
        .map(|&(id, size, p)| {
            let entries = match crate::ops::repair::read_pack_header(repo, &id.to_hex(), size) {
                Ok(e) => e,
                Err(Error::ObjectNotFound { .. }) => return Ok(true),
                Err(e) if e.is_damage() => {
                    tracing::warn!(
                        "pack {id}: its header does not authenticate ({e}); it holds nothing usable and goes"
                    );
                    return Ok(true);
                }
                Err(e) => return Err(e),
            };
            for e in entries {
                let Some(pos) = index.position(&e.id) else {
                    continue;
                };
                if !used.contains(pos) {
                    continue;
                }
                let (_, loc) = index.at(pos);
                if p == Some(loc.pack as usize) {
                    // The indexed copy is this pack's own: only a repack (which copies it,
                    // verified, before anything goes) lets it go.
                    if fate.get(loc.pack as usize) == Some(&Fate::Condemn) {
                        continue;
                    }
                    tracing::warn!(
                        "pack {id} is to go but holds the indexed copy of used blob {}: keeping it",
                        e.id
                    );
                    return Ok(false);
                }
                let known = verified.lock().get(&pos).copied();
                let ok = match known {
                    Some(ok) => ok,
                    None => {
                        let ok = match repo.read_blob(index, e.blob_type, &e.id) {
                            Ok(_) => true,
                            Err(err)
                                if err.is_damage()
                                    || matches!(err, Error::ObjectNotFound { .. }) =>
                            {
                                false
                            }
                            Err(err) => return Err(err),
                        };
                        verified.lock().insert(pos, ok);
                        ok
                    }
                };
                if !ok {
                    tracing::warn!(
                        "pack {id} holds used blob {} whose indexed copy in pack {} does not verify: keeping pack {id} (run `cairn check --read-data`)",
                        e.id,
                        index.packs()[loc.pack as usize]
                    );
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .collect();
    let mut spared = Vec::new();
    for (&(id, _, _), verdict) in doomed.iter().zip(verdicts) {
        if !verdict? {
            spared.push(id);
        }
    }
    Ok(spared)
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
    /// How far the clocks of hosts using the repository may disagree: a condemned pack is
    /// held back by every live lock that started before its condemnation time plus this.
    pub clock_skew: Duration,
    /// Trust the index about what packs that go hold, without reading their headers (see
    /// [`spare_what_the_index_hides`]): only for repositories whose every writer is trusted.
    pub trust_index: bool,
}

pub use crate::lock::DEFAULT_CLOCK_SKEW;

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: MaxUnused::Fraction(0.05),
            max_repack_bytes: u64::MAX,
            dry_run: false,
            clock_skew: DEFAULT_CLOCK_SKEW,
            trust_index: false,
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
    /// Indexed packs with no used blob deleted: condemned ones whose time had come (format
    /// 3), and, when nothing else ran, those this run condemned (before format 3: every pack
    /// with no used blob). Repacked and unreferenced packs are counted apart.
    pub packs_deleted: u64,
    /// Packs this run condemned (no used blob, repacked, or named by no index); with
    /// `packs_deleted` they may overlap when nothing else ran.
    pub packs_condemned: u64,
    /// Nothing else held a lock: what this run condemned was deleted at once (format 3).
    pub quiet: bool,
    /// Condemned packs a snapshot needs again (made live).
    pub packs_recovered: u64,
    /// What holds condemned packs back: the earliest-started live lock of another process
    /// (`user@host (pid N) since …`), if any.
    pub held_back_by: Option<String>,
    /// Condemned packs still waiting for their deletion (held back by running operations).
    pub packs_waiting: u64,
    /// Their bytes.
    pub bytes_waiting: u64,
    /// Packs rewritten.
    pub packs_repacked: u64,
    /// Packs no index named (left by interrupted backups, or being written by running ones):
    /// deleted before format 3, condemned since.
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
    /// Packs kept although the index says they can go: their own header lists a used blob
    /// whose copy elsewhere does not verify (a damaged or forged index; run `cairn check`).
    /// Not counted in `packs_unreferenced`, `packs_condemned` or `packs_repacked`.
    pub packs_spared: u64,
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
    find_leftovers_in(repo, crate::lock::survey(repo)?)
}

/// [`find_leftovers`] from a survey of the locks already read.
fn find_leftovers_in(repo: &Repository, survey: crate::lock::Survey) -> Result<Leftovers> {
    let stale_locks = survey.abandoned;
    let live: HashSet<String> = survey
        .live
        .iter()
        .map(|(_, l)| crate::util::writer_tag(&l.hostname, l.pid))
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
pub fn remove_leftovers(lock: MaintenanceView<'_>, l: &Leftovers) -> Result<(u64, u64, u64)> {
    let repo = lock.repo();
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

/// A live pack's use, for choosing what to repack.
struct PackUse {
    pack: u32,
    size: u64,
    used_bytes: u64,
    unused_bytes: u64,
}

/// What happens to a pack's index records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Unchanged (live, or condemned and still waiting).
    Keep,
    /// Condemned by this run: no used blob, or repacked.
    Condemn,
    /// Condemned before, needed by a snapshot again: live.
    Recover,
    /// Records removed and the pack deleted (or already gone).
    Delete,
}

/// Whether an object of `kind` that `known` lacks exists now. A listed object that is gone
/// (a listing that still names a deleted object) does not count.
fn appeared(repo: &Repository, kind: FileKind, known: &HashSet<Id>) -> Result<bool> {
    for id in repo.list_ids(kind)? {
        if !known.contains(&id) && repo.backend().stat(kind, &id.to_hex())?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Index files with fewer blobs than this are merged by prune once there are
/// [`MERGE_SMALL_FILES`] of them: every backup's last index file is small, and readers pay
/// per file.
const SMALL_FILE_BLOBS: u64 = (BLOBS_PER_INDEX_FILE / 8) as u64;
/// See [`SMALL_FILE_BLOBS`].
const MERGE_SMALL_FILES: usize = 16;

/// Remove unreferenced data (with `dry_run`: only compute what would go).
pub fn prune(
    lock: MaintenanceView<'_>,
    opts: &PruneOptions,
    progress: &Progress,
) -> Result<PruneReport> {
    let repo = lock.repo();
    let two_phase = repo.config().version >= 3;
    // Who is running, listed before the snapshots: an operation missing here has finished
    // (its snapshot is in the listing below) or starts after it (and sees this run's marks).
    let survey = crate::lock::survey_with_skew(repo, opts.clock_skew)?;
    let others: Vec<Lock> = survey
        .live
        .iter()
        .filter(|(_, l)| !lock.guard().owns(l))
        .map(|(_, l)| l.clone())
        .collect();
    // Snapshots before the index: a snapshot is written after its index files, so every
    // blob a listed snapshot uses is in the index loaded next.
    let snaps: Vec<(Id, Snapshot)> = repo.load_snapshots_strict()?;
    let snap_ids: HashSet<Id> = snaps.iter().map(|(id, _)| *id).collect();
    let mut index = repo.load_index_strict()?;
    let roots: Vec<Id> = snaps.iter().map(|(_, s)| s.tree).collect();
    let used = used_blobs(repo, &index, &roots)?;
    let now = now_timestamp();
    let skew = i64::try_from(opts.clock_skew.as_nanos()).unwrap_or(i64::MAX);
    // A lock written "later" than this host's clock plus the skew says the clocks disagree
    // by more than the skew allows: then no time comparison is trusted, and every condemned
    // pack waits while any other operation runs.
    let clocks_disagree = others
        .iter()
        .any(|l| l.time.unix_nanos > now.unix_nanos.saturating_add(skew));
    if clocks_disagree {
        tracing::warn!(
            "a lock of another host was written more than --clock-skew ({:?}) ahead of this host's clock: no condemned pack is deleted while other operations run (check the hosts' clocks)",
            opts.clock_skew
        );
    }
    // A condemned pack waits while an operation that may have loaded the index before its
    // mark is still running.
    let held_back = |t: Timestamp| {
        clocks_disagree
            || others
                .iter()
                .any(|l| l.started.unix_nanos < t.unix_nanos.saturating_add(skew))
    };

    let stored: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let n = index.packs().len();
    // Used blobs per pack, as the index resolves them (a copy in a live pack first).
    let mut share = vec![PackShare::default(); n];
    let mut used_count = vec![0u32; n];
    for pos in 0..index.len() {
        if used.contains(pos) {
            let (_, l) = index.at(pos);
            share[l.pack as usize].add(&l);
            used_count[l.pack as usize] += 1;
        }
    }
    let entries: u64 = index.pack_totals().iter().map(|t| u64::from(t.blobs)).sum();
    let mut report = PruneReport {
        packs_total: stored.len() as u64,
        bytes_total: stored.values().sum(),
        blobs_used: used.len() as u64,
        blobs_unused: entries - used.len() as u64,
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };

    let mut fate = vec![Fate::Keep; n];
    let mut live: Vec<PackUse> = Vec::new();
    for p in 0..n {
        let id = index.packs()[p];
        let size = stored.get(&id.to_hex()).copied();
        match (index.condemned_at(p as u32), size) {
            (None, None) => {
                return Err(Error::Integrity(format!(
                    "pack {id} is indexed but missing from storage; refusing to prune (run `cairn repair index`)"
                )))
            }
            (Some(_), None) if used_count[p] > 0 => {
                return Err(Error::Integrity(format!(
                    "pack {id} holds the only copy of {} used blobs but is gone from storage; refusing to prune (run `cairn check`, then `cairn repair packs`)",
                    used_count[p]
                )))
            }
            // Condemned and already gone (a listing that missed it, or deleted by hand): only
            // its records are left to remove.
            (Some(_), None) => fate[p] = Fate::Delete,
            (Some(_), Some(_)) if used_count[p] > 0 => fate[p] = Fate::Recover,
            (Some(t), Some(_)) => {
                if !two_phase || !held_back(t) {
                    fate[p] = Fate::Delete;
                }
            }
            (None, Some(_)) if used_count[p] == 0 => fate[p] = Fate::Condemn,
            (None, Some(size)) => {
                let t = &index.pack_totals()[p];
                let used_bytes = share[p].bytes(t);
                live.push(PackUse {
                    pack: p as u32,
                    size,
                    used_bytes,
                    unused_bytes: t.bytes.saturating_sub(used_bytes),
                });
            }
        }
    }
    let indexed: HashSet<String> = index.packs().iter().map(Id::to_hex).collect();
    let mut unreferenced: Vec<(Id, u64)> = stored
        .iter()
        .filter(|(name, _)| !indexed.contains(*name))
        .map(|(name, size)| Ok((Id::from_hex(name)?, *size)))
        .collect::<Result<_>>()?;
    unreferenced.sort();
    report.packs_unreferenced = unreferenced.len() as u64;

    // Repack the emptiest live packs first until the unused share is within bounds.
    let mut partial: Vec<&PackUse> = live.iter().filter(|p| p.unused_bytes > 0).collect();
    partial.sort_by(|a, b| {
        let ra = a.unused_bytes as f64 / a.size.max(1) as f64;
        let rb = b.unused_bytes as f64 / b.size.max(1) as f64;
        rb.total_cmp(&ra).then(a.pack.cmp(&b.pack))
    });
    let kept_size: u64 = live.iter().map(|p| p.size).sum();
    let mut unused_left: u64 = partial.iter().map(|p| p.unused_bytes).sum();
    let mut repack: Vec<u32> = Vec::new();
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
        report.bytes_repacked += p.used_bytes;
        repack.push(p.pack);
    }
    report.packs_repacked = repack.len() as u64;
    report.bytes_unused_left = unused_left;
    for &p in &repack {
        fate[p as usize] = Fate::Condemn;
    }
    // Before format 3 there are no marks: what would be condemned goes at once (nothing else
    // runs beside the exclusive lock).
    if !two_phase {
        for f in fate.iter_mut().filter(|f| **f == Fate::Condemn) {
            *f = Fate::Delete;
        }
    }
    if !opts.trust_index {
        let spared =
            spare_what_the_index_hides(repo, &index, &used, &stored, &fate, &unreferenced)?;
        report.packs_spared = spared.len() as u64;
        let spared_set: HashSet<Id> = spared.iter().copied().collect();
        for p in 0..n {
            if !spared_set.contains(&index.packs()[p]) {
                continue;
            }
            // Kept after all: live again (a condemned one recovered), and what the index
            // says is unused in it stays as unused space.
            fate[p] = if index.condemned_at(p as u32).is_some() {
                Fate::Recover
            } else {
                Fate::Keep
            };
            repack.retain(|&r| r as usize != p);
            let t = &index.pack_totals()[p];
            report.bytes_unused_left += t.bytes.saturating_sub(share[p].bytes(t));
        }
        unreferenced.retain(|(id, _)| !spared_set.contains(id));
        report.packs_repacked = repack.len() as u64;
        report.packs_unreferenced = unreferenced.len() as u64;
        report.bytes_repacked = repack
            .iter()
            .filter_map(|p| live.iter().find(|u| u.pack == *p))
            .map(|u| u.used_bytes)
            .sum();
    }
    let size_of = |p: usize| stored.get(&index.packs()[p].to_hex()).copied().unwrap_or(0);
    let count = |want: Fate| fate.iter().filter(|f| **f == want).count() as u64;
    let bytes = |want: Fate| {
        (0..n)
            .filter(|&p| fate[p] == want)
            .map(size_of)
            .sum::<u64>()
    };
    report.packs_condemned = count(Fate::Condemn)
        + if two_phase {
            unreferenced.len() as u64
        } else {
            0
        };
    report.packs_recovered = count(Fate::Recover);
    let unreferenced_bytes: u64 = unreferenced.iter().map(|(_, s)| s).sum();
    // What goes now, and what this run condemns that goes at once if nothing else runs.
    let mut freed = bytes(Fate::Delete) + if two_phase { 0 } else { unreferenced_bytes };
    let condemned_bytes = bytes(Fate::Condemn) + if two_phase { unreferenced_bytes } else { 0 };
    let waiting: Vec<usize> = (0..n)
        .filter(|&p| fate[p] == Fate::Keep && index.condemned_at(p as u32).is_some())
        .collect();
    report.packs_waiting = waiting.len() as u64;
    report.held_back_by = others.iter().min_by_key(|l| l.started).map(|l| {
        format!(
            "{} lock of {}@{} (pid {}) since {}",
            l.mode.name(),
            l.username,
            l.hostname,
            l.pid,
            crate::util::format_timestamp(&l.started)
        )
    });
    report.bytes_waiting = waiting.iter().map(|&p| size_of(p)).sum();
    // Indexed packs with no used blob: the repacked ones are counted as such.
    let unused_now = |want: Fate| {
        (0..n)
            .filter(|&p| fate[p] == want && !repack.contains(&(p as u32)))
            .count() as u64
    };
    report.packs_deleted = unused_now(Fate::Delete);
    let unused_condemned = unused_now(Fate::Condemn);

    // Leftovers of killed processes: temporary files no live writer owns, stale locks.
    let leftovers = find_leftovers_in(repo, survey)?;
    if opts.dry_run {
        if others.is_empty() {
            freed += condemned_bytes;
            report.packs_deleted += unused_condemned;
            report.quiet = true;
        } else {
            report.packs_waiting += report.packs_condemned;
            report.bytes_waiting += condemned_bytes;
        }
        report.bytes_freed = freed.saturating_sub(report.bytes_repacked);
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

    // Writers (this run's repack too) must not deduplicate against what goes. (The time
    // recorded is taken again below, when the marks are written.)
    for (p, f) in fate.iter().enumerate() {
        match f {
            Fate::Condemn | Fate::Delete => index.set_condemned(p as u32, Some(now)),
            Fate::Recover => index.set_condemned(p as u32, None),
            Fate::Keep => {}
        }
    }

    // Index files this run read or writes: any other one a quiet check finds was written
    // by someone else meanwhile.
    let mut ours: HashSet<Id> = index
        .files
        .iter()
        .chain(&index.superseded)
        .copied()
        .collect();
    // 1. Repack: the used blobs of each repacked pack, found in one pass over the index.
    let repack_set: HashSet<u32> = repack.iter().copied().collect();
    if !repack_set.is_empty() {
        let mut to_copy: HashMap<u32, Vec<PackEntry>> = HashMap::new();
        for pos in 0..index.len() {
            let (id, l) = index.at(pos);
            if used.contains(pos) && repack_set.contains(&l.pack) {
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
        let known = std::sync::Arc::new(index);
        let packer = Packer::new(repo, known.clone()).under(lock.guard());
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
        // The copies' packs and index files are durable before any record changes.
        packer.finish()?;
        ours.extend(packer.index_files());
        drop(packer);
        index = std::sync::Arc::try_unwrap(known)
            .map_err(|_| Error::Backend("the repacking packer outlived prune".into()))?;
    }

    drop(used);
    // 2.+3. Rewrite the index files whose records change. The condemnation time is taken
    // now, after the repack: an operation that started while it ran loaded the index before
    // the marks exist, and must hold their deletion back.
    let now = now_timestamp();
    for (p, f) in fate.iter().enumerate() {
        if *f == Fate::Condemn {
            index.set_condemned(p as u32, Some(now));
        }
    }
    let condemned_now: HashSet<Id> = (0..n)
        .filter(|&p| fate[p] == Fate::Condemn)
        .map(|p| index.packs()[p])
        .chain(
            two_phase
                .then(|| unreferenced.iter().map(|(id, _)| *id))
                .into_iter()
                .flatten(),
        )
        .collect();
    let new_unreferenced: Vec<IndexPack> = if two_phase {
        unreferenced
            .iter()
            .map(|(id, _)| IndexPack {
                id: *id,
                blobs: Vec::new(),
                condemned: Some(now),
            })
            .collect()
    } else {
        Vec::new()
    };
    let (mut old_files, rewrite) = files_to_rewrite(&index, &fate);
    let written = if old_files.is_empty() && new_unreferenced.is_empty() {
        Vec::new()
    } else {
        // The files the replaced ones superseded (left by a replacement that stopped before
        // deleting them) are superseded by the new last file too: otherwise they would be in
        // force again, with their stale records, once their superseder is deleted.
        old_files.extend(index.superseded.iter().copied());
        lock.guard().check_held()?;
        let records = index
            .index_packs()
            .filter(|ip| {
                index
                    .pack_number(&ip.id)
                    .is_some_and(|p| rewrite.contains(&p) && fate[p as usize] != Fate::Delete)
            })
            .chain(new_unreferenced);
        report.index_files_replaced = old_files.len() as u64;
        replace_index(repo, &old_files, records)?
    };
    // The marks count from the moment the last new file was written: when writing took
    // long, an operation that started after the recorded time plus the clock skew may still
    // have loaded the index before the marks took effect. They are then stamped again, one
    // file at a time (each a single short write).
    let slow = now_timestamp().unix_nanos.saturating_sub(now.unix_nanos) > skew / 2;
    let written = if two_phase && slow && !condemned_now.is_empty() {
        rewrite_records(lock, &written, &condemned_now, |mut records| {
            // As of the moment this file is written.
            let t = now_timestamp();
            for p in records.iter_mut().filter(|p| condemned_now.contains(&p.id)) {
                p.condemned = Some(t);
            }
            records
        })?
    } else {
        written
    };
    // Files a replacement that stopped early left behind (readers ignore them).
    for id in &index.superseded {
        repo.backend().delete(FileKind::Index, &id.to_hex())?;
    }
    let mut gone: Vec<Id> = (0..n)
        .filter(|&p| fate[p] == Fate::Delete)
        .map(|p| index.packs()[p])
        .collect();
    drop(index);

    // 4. Packs nothing names any more.
    if !two_phase {
        gone.extend(unreferenced.iter().map(|(id, _)| *id));
    }
    delete_packs(lock, &gone)?;

    // A quiet repository: nothing else holds a lock and no snapshot appeared since the
    // listing, so nothing can reference what this run condemned. It goes now.
    if two_phase && !condemned_now.is_empty() {
        let others_now = crate::lock::survey_with_skew(repo, opts.clock_skew)?
            .live
            .into_iter()
            .any(|(_, l)| !lock.guard().owns(&l));
        // A writer that finished meanwhile left a snapshot, or (failed after writing an
        // index file naming a pack this run found unreferenced) an index file.
        ours.extend(written.iter().copied());
        let new_snapshot = !others_now && appeared(repo, FileKind::Snapshot, &snap_ids)?;
        let new_index = !others_now && !new_snapshot && appeared(repo, FileKind::Index, &ours)?;
        if !others_now && !new_snapshot && !new_index {
            rewrite_records(lock, &written, &condemned_now, |records| {
                records
                    .into_iter()
                    .filter(|p| !condemned_now.contains(&p.id))
                    .collect()
            })?;
            let ids: Vec<Id> = condemned_now.iter().copied().collect();
            delete_packs(lock, &ids)?;
            freed += condemned_bytes;
            report.packs_deleted += unused_condemned;
            report.quiet = true;
        } else {
            report.packs_waiting += condemned_now.len() as u64;
            report.bytes_waiting += condemned_bytes;
        }
    }
    report.bytes_freed = freed.saturating_sub(report.bytes_repacked);
    Ok(report)
}

/// The index files whose records change with `fate` (a record's condemned flag differs from
/// its pack's new state, or its pack goes), plus the small files once there are enough of
/// them to merge; and the packs those files name, whose records are written anew.
fn files_to_rewrite(index: &MasterIndex, fate: &[Fate]) -> (Vec<Id>, HashSet<u32>) {
    let mut touched = Vec::new();
    let mut small = Vec::new();
    let mut packs = HashSet::new();
    for (file, records) in index.file_packs() {
        let changes = records.iter().any(|&(p, condemned)| {
            fate[p as usize] == Fate::Delete || condemned != index.condemned_at(p).is_some()
        });
        if changes {
            touched.push((*file, records));
        } else {
            let blobs: u64 = records
                .iter()
                .map(|&(p, _)| u64::from(index.pack_totals()[p as usize].blobs))
                .sum();
            if blobs < SMALL_FILE_BLOBS {
                small.push((*file, records));
            }
        }
    }
    if small.len() >= MERGE_SMALL_FILES {
        touched.extend(small);
    }
    let files = touched
        .iter()
        .map(|(file, records)| {
            packs.extend(records.iter().map(|&(p, _)| p));
            *file
        })
        .collect();
    (files, packs)
}

/// Delete packs whose records are gone, once this process's lock is certainly still live
/// (FORMAT.md §15). A pack already gone is fine ([`crate::Backend::delete`]).
fn delete_packs(lock: MaintenanceView<'_>, ids: &[Id]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    lock.guard().check_held()?;
    for id in ids {
        lock.repo().backend().delete(FileKind::Pack, &id.to_hex())?;
    }
    Ok(())
}

/// Replace, one at a time, each of this run's index files `written` that holds a record of a
/// pack in `packs` by `edit` of its records (what the file superseded stays superseded;
/// normally it is deleted already). Each write happens only while the lock is certainly
/// live. Returns the files now in force.
fn rewrite_records(
    lock: MaintenanceView<'_>,
    written: &[Id],
    packs: &HashSet<Id>,
    mut edit: impl FnMut(Vec<IndexPack>) -> Vec<IndexPack>,
) -> Result<Vec<Id>> {
    let repo = lock.repo();
    let mut out = Vec::new();
    for id in written {
        let file = repo.load_index_file(id)?;
        if !file.packs.iter().any(|p| packs.contains(&p.id)) {
            out.push(*id);
            continue;
        }
        let records = edit(file.packs);
        lock.guard().check_held()?;
        let mut old = vec![*id];
        old.extend(file.supersedes);
        out.extend(replace_index(repo, &old, records)?);
    }
    Ok(out)
}
