//! `check`: verify the repository's structure, and with `--read-data` its contents; say
//! what to run to repair what was found.

use std::collections::{HashMap, HashSet};

use cairn_format::{
    decode_pack_header, BlobType, Content, FileKind, Id, NodeKind, PackEntry, Snapshot, Tree,
};
use parking_lot::Mutex;
use rayon::prelude::*;
use serde::Serialize;

use crate::lock::SharedLock;
use crate::ops::prune::find_leftovers;
use crate::ops::repair::read_pack_header;
use crate::progress::{interrupted, Progress};
use crate::repository::{verify_name, Repository};
use crate::{Error, Result};

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
    /// Packs that no index names (harmless: left by an interrupted backup, or being written
    /// by a running one; prune condemns them).
    pub unreferenced_packs: Vec<String>,
    /// Packs a prune condemned and a later prune deletes (format 3, FORMAT.md §10).
    pub condemned_packs: u64,
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
    /// Content lists (format 4) decoded.
    pub content_lists: u64,
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
pub fn check(
    lock: &SharedLock<'_>,
    read_data: ReadData,
    progress: &Progress,
) -> Result<CheckReport> {
    let repo: &Repository = lock;
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

    // Index files: decoded and merged one by one; a damaged one is reported and the rest
    // still checked.
    let (index, damaged) = repo.load_index_lenient()?;
    let damaged_index = !damaged.is_empty();
    for (id, e) in damaged {
        err(format!("index {}: {e}", id.short()));
    }
    let damaged_packs: Mutex<Vec<String>> = Mutex::new(Vec::new());

    // Packs: every indexed pack exists, its header agrees with the index, its size matches.
    let stored: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let indexed: HashSet<String> = index.packs().iter().map(Id::to_hex).collect();
    report.unreferenced_packs = stored
        .keys()
        .filter(|n| !indexed.contains(*n))
        .cloned()
        .collect();
    report.unreferenced_packs.sort();
    // A condemned pack may be deleted by a prune running beside this check: missing, it is
    // an error only if a snapshot needs it (found below, with the trees).
    let condemned = |pid: &Id| {
        index
            .pack_number(pid)
            .is_some_and(|p| index.condemned_at(p).is_some())
    };
    let mut gone: HashSet<u32> = HashSet::new();
    for (p, pid) in index.packs().iter().enumerate() {
        let name = pid.to_hex();
        if condemned(pid) {
            report.condemned_packs += 1;
        }
        if !stored.contains_key(&name) {
            if condemned(pid) {
                gone.insert(p as u32);
                continue;
            }
            err(format!("pack {name} is indexed but missing"));
            // In full: `repair packs` resolves short ids only among stored packs.
            damaged_packs.lock().push(name);
        }
    }
    let deleted_meanwhile =
        |pid: &Id, e: &Error| matches!(e, Error::ObjectNotFound { .. }) && condemned(pid);
    // A pack that could not be read (permission denied, a network error) says nothing about
    // its data: reported as damage, it would lead to `repair packs`, which drops its blobs.
    // The first such error ends the check instead.
    let unreadable: Mutex<Option<Error>> = Mutex::new(None);
    // One pack's entries at a time (every copy of each blob), from the merged index.
    index.index_packs().par_bridge().for_each(|p| {
        let (pid, entries) = (&p.id, &p.blobs);
        let name = pid.to_hex();
        let Some(&size) = stored.get(&name) else {
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
            Err(e) if deleted_meanwhile(pid, &e) => {}
            Err(e) if e.is_unreachable() => {
                unreadable.lock().get_or_insert(e);
            }
            Err(e) => {
                err(format!("pack {}: header: {e}", pid.short()));
                damaged_packs.lock().push(pid.short());
            }
        }
        Progress::add(&progress.files, 1);
    });
    report.packs_checked = index.packs().len() as u64;

    // Snapshots and trees: everything they name decodes and is indexed.
    let mut roots = Vec::new();
    let mut damaged_snapshots = false;
    for id in repo.list_ids(FileKind::Snapshot)? {
        match repo.load::<Snapshot>(FileKind::Snapshot, &id) {
            Ok(s) => {
                roots.push((id, s.tree));
                report.snapshots += 1;
            }
            // Removed by a forget running beside this check.
            Err(Error::ObjectNotFound { .. }) => {}
            Err(e) => {
                damaged_snapshots = true;
                err(format!("snapshot {}: {e}", id.short()));
            }
        }
    }
    let mut incomplete_snapshots = false;
    // Trees: a bounded batch at a time (memory stays flat however many there are); a tree
    // reached twice is checked once (marked by its index position; one not indexed is an
    // error when it is read).
    let mut seen = crate::index::BlobSet::new(index.len());
    let mut seen_unindexed: HashSet<Id> = HashSet::new();
    let mut first_visit = |id: &Id| match index.position(id) {
        Some(p) => seen.insert(p),
        None => seen_unindexed.insert(*id),
    };
    let mut pending: Vec<(Id, Id)> = roots.into_iter().filter(|(_, t)| first_visit(t)).collect();
    let batch = crate::ops::prune::trees_at_once(repo);
    // What a data blob adds to its file: its length, or None (reported, naming `whose`)
    // when it is missing.
    let not_indexed = std::sync::atomic::AtomicBool::new(false);
    let blob_bytes = |c: &Id, whose: &dyn Fn() -> String| -> Option<u64> {
        match index.get(c) {
            Some(l) if gone.contains(&l.pack) => {
                err(format!(
                    "{}: data blob {} is only in pack {}, which a prune deleted",
                    whose(),
                    c.short(),
                    index.packs()[l.pack as usize].short()
                ));
                None
            }
            Some(l) if l.blob_type == BlobType::Data => Some(u64::from(l.raw_length)),
            _ => {
                not_indexed.store(true, std::sync::atomic::Ordering::Relaxed);
                err(format!(
                    "{}: data blob {} is not indexed",
                    whose(),
                    c.short()
                ));
                None
            }
        }
    };
    let mut lists: HashMap<Id, Option<u64>> = HashMap::new();
    // Lists that did not read, and why until that is reported: with the first snapshot
    // naming them that still exists (a forget and prune beside this check may remove a
    // snapshot and its lists).
    let mut unread: HashMap<Id, Option<String>> = HashMap::new();
    while !pending.is_empty() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let frontier = pending.split_off(pending.len().saturating_sub(batch));
        let results: Vec<(Id, Result<Tree>)> = frontier
            .par_iter()
            .map(|(snap, t)| {
                (
                    *snap,
                    repo.load_tree(&index, t).map_err(|e| {
                        if index.get(t).is_none() {
                            not_indexed.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        Error::Integrity(format!(
                            "tree {} (snapshot {}): {e}",
                            t.short(),
                            snap.short()
                        ))
                    }),
                )
            })
            .collect();
        // Content lists (format 4) the batch names: each read once, in parallel, and its
        // blobs checked once; `lists` keeps what they hold (None: damaged, reported).
        let wanted: HashSet<Id> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|t| &t.nodes)
            .filter_map(|n| n.content.lists())
            .flatten()
            .filter(|l| !lists.contains_key(*l))
            .copied()
            .collect();
        let loaded: Vec<(Id, Result<Vec<Id>>)> = wanted
            .into_par_iter()
            .map(|l| (l, repo.load_content_list(&index, &l)))
            .collect();
        for (l, r) in loaded {
            report.content_lists += 1;
            let held = match r {
                Ok(ids) => ids
                    .iter()
                    .map(|c| blob_bytes(c, &|| format!("content list {}", l.short())))
                    .fold(Some(0), add_held),
                Err(e) => {
                    unread.insert(l, Some(format!("content list {}: {e}", l.short())));
                    None
                }
            };
            lists.insert(l, held);
        }
        for (snap, r) in results {
            match r {
                Ok(tree) => {
                    report.trees += 1;
                    for n in &tree.nodes {
                        let file = || {
                            format!(
                                "snapshot {}: file {:?}",
                                snap.short(),
                                String::from_utf8_lossy(&n.name)
                            )
                        };
                        let held: Option<u64> = match &n.content {
                            Content::Blobs(ids) => ids
                                .iter()
                                .map(|c| blob_bytes(c, &file))
                                .fold(Some(0), add_held),
                            Content::Lists(ls) => {
                                if ls.iter().any(|l| unread.contains_key(l)) {
                                    // Not damage if a forget removed the snapshot meanwhile.
                                    if repo
                                        .backend()
                                        .stat(FileKind::Snapshot, &snap.to_hex())?
                                        .is_none()
                                    {
                                        continue;
                                    }
                                    for l in ls {
                                        if let Some(m) = unread.get_mut(l).and_then(Option::take) {
                                            err(format!("{}: {m}", file()));
                                        }
                                    }
                                }
                                ls.iter()
                                    .map(|l| lists.get(l).copied().flatten())
                                    .fold(Some(0), add_held)
                            }
                        };
                        if held.is_none() {
                            incomplete_snapshots = true;
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
                            if first_visit(&s) {
                                pending.push((snap, s));
                            }
                        }
                    }
                }
                Err(e) => {
                    // A snapshot a forget removed meanwhile may lose its trees to the prune
                    // after it: not damage.
                    if repo
                        .backend()
                        .stat(FileKind::Snapshot, &snap.to_hex())?
                        .is_none()
                    {
                        continue;
                    }
                    incomplete_snapshots = true;
                    err(e.to_string());
                }
            }
        }
    }

    // Contents.
    let selected: Vec<&Id> = index
        .packs()
        .iter()
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
            let mut opener = repo.opener(**pid);
            for (i, e) in header.entries.iter().enumerate() {
                let a = e.offset as usize;
                opener.open(e, &mut data[a..a + e.length as usize])?;
                blobs_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A group decodes to exactly its blobs, nothing after the last one.
                let last_of_group = e.grouped()
                    && header
                        .entries
                        .get(i + 1)
                        .is_none_or(|n| n.offset != e.offset);
                if last_of_group {
                    let end = e.group_offset.unwrap_or(0) as usize + e.raw_length as usize;
                    if opener.group_len() != Some(end) {
                        return Err(Error::Integrity(format!(
                            "the group at offset {} decodes to {:?} bytes, its blobs end at {end}",
                            e.offset,
                            opener.group_len()
                        )));
                    }
                }
            }
            Progress::add(&progress.bytes, data.len() as u64);
            Ok(())
        })();
        match res {
            Ok(()) => {}
            Err(e) if deleted_meanwhile(pid, &e) => {}
            Err(e) if e.is_unreachable() => {
                unreadable.lock().get_or_insert(e);
            }
            Err(e) => {
                err(format!("pack {}: {e}", pid.short()));
                damaged_packs.lock().push(pid.short());
            }
        }
    });
    // Reads cut short by Ctrl-C/SIGTERM (a remote backend gives up on them) are not damage.
    if interrupted() {
        return Err(Error::Interrupted);
    }
    if let Some(e) = unreadable.into_inner() {
        return Err(e);
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
        not_indexed.into_inner() && !report.unreferenced_packs.is_empty(),
        &damaged_packs,
        damaged_snapshots,
        incomplete_snapshots,
    );
    Ok(report)
}

/// The commands that repair what `check` found, in the order to run them.
///
/// `unindexed_missing`: snapshots name blobs the index lacks while packs that no index names
/// are stored. Those packs may hold the blobs (an index file was lost, not the data), so the
/// only safe step is to index them and check again: the repairs that follow a real loss
/// (`repair snapshots --forget`, and prune after it) would drop data that is still there.
fn repair_hints(
    damaged_index: bool,
    unindexed_missing: bool,
    damaged_packs: &[String],
    damaged_snapshots: bool,
    incomplete_snapshots: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if unindexed_missing {
        out.push("`cairn repair index` indexes the stored packs that no index names: the blobs reported missing may be in them".to_owned());
        out.push(
            "then `cairn check` again, before any other repair (each repair after that assumes what is still missing is lost)"
                .to_owned(),
        );
        return out;
    }
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

/// Sum what a file's blobs hold, every one of them looked at (each missing one is reported),
/// None if any is missing.
fn add_held(total: Option<u64>, blob: Option<u64>) -> Option<u64> {
    Some(total? + blob?)
}
