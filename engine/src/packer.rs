//! Pack assembly shared by all backup workers.
//!
//! Workers seal blobs in parallel (the CPU-heavy part) and only take a short lock to append
//! the sealed bytes to the open pack of that blob type. Open packs are temporary files (in
//! the repository itself for a local backend), hashed as they are written, so a pack costs
//! no memory: a finished pack is fsynced and handed to uploader threads over a bounded
//! channel, and the local backend publishes it with a rename.
//!
//! Small data blobs (database pages, SQLite cells, small files) are sealed in **groups**
//! when the repository's format allows it (version 2): each thread gathers the small blobs
//! it stores, in the order it stores them (a file's pages one after another), and seals
//! them as one compressed box once they reach [`GROUP_TARGET`] bytes. zstd then has the
//! neighbouring pages as context, which a 4 KiB page alone lacks; every blob keeps its own
//! id, index entry and deduplication. From format 5, small tree blobs (directory listings and
//! content lists) are grouped the same way, apart from data and in smaller groups
//! ([`TREE_GROUP_TARGET`]): a night's listings differ from the last night's mostly in a few
//! fields each, and compressed together they cost a third less than one by one.
//!
//! Crash safety comes from ordering: a pack is listed in an index file only after the
//! backend reported it durable, and the caller writes the snapshot only after [`Packer::finish`]
//! wrote the last index. A crash leaves at most unreferenced packs.

use std::sync::Arc;
use std::thread::JoinHandle;

use cairn_format::{
    finish_pack, group_entries, preamble_of, seal_blob_into, seal_group_into, BlobType, Content,
    FileKind, Id, IndexFile, IndexPack, PackEntry, PackHeader,
};
use crossbeam_channel::{bounded, Sender};
use parking_lot::Mutex;

use crate::index::{IdSet, MasterIndex};
use crate::repository::Repository;
use crate::{Error, Result};

/// Packs waiting for an uploader.
const QUEUE: usize = 2;
/// Packs listed per index file (a crash loses at most this many packs' worth of index,
/// i.e. that data is re-uploaded by the next backup).
const PACKS_PER_INDEX: usize = 64;
/// An index file is written once its packs hold this many blobs, whatever their count (see
/// `BLOBS_PER_INDEX_FILE`); one more pack of the smallest blobs stays far below the
/// format's limit.
const INDEX_FLUSH_BLOBS: usize = crate::index::BLOBS_PER_INDEX_FILE;

/// Data blobs up to this size are sealed in groups: page-sized and cell-sized chunks and
/// small files, which zstd compresses poorly alone. Larger blobs carry their own context.
pub const GROUP_BLOB_MAX: usize = 32 << 10;
/// A group is sealed once its blobs reach this many bytes (or the next blob would not fit in
/// the format's limit). Measured on the K3s week (medium, seed 1) and a small 4-night set
/// (seed 5), first night / growth of nights 2–N in MB: 256 KiB 371.3 / 176.5 and 28.1 / 14.1,
/// 512 KiB 368.8 / 173.9 and 27.6 / 13.4, 1 MiB 367.2 / 173.8 and 27.2 / 13.1. Reading one
/// blob of a group decompresses at most this much (about a millisecond).
pub const GROUP_TARGET: usize = cairn_format::MAX_GROUP_LEN as usize;
/// Tree groups (format 5) are sealed at this many bytes: readers walk trees in another order
/// than the backup wrote them (top-down against bottom-up), so a tree read that misses the
/// recent groups inflates a whole group. Measured on the K3s week (medium, seed 1), the new
/// trees and content lists of nights 2–7 in groups at level 3: 64 KiB 7.81 MB, 256 KiB 7.42
/// MB, 1 MiB 7.24 MB (alone: 9.73 MB plus 40 bytes of sealing each).
pub const TREE_GROUP_TARGET: usize = 256 << 10;
/// zstd level of data groups, at least. Only small blobs are grouped (database pages and
/// cells, small files), a small share of the bytes of most trees, so a level above the bulk
/// default costs little time overall: measured on the medium K3s week (fresh copy each night),
/// level 6 instead of 3 stored the first night in 365.1 instead of 368.4 MB and nights 2–7 in
/// 159.5 instead of 161.3 MB (levels 4 and 5 saved ~0.5 MB, 7 and 9 no more than 6), for 1.8
/// instead of 1.15 s on the first night (databases are a third of its bytes) and no
/// measurable difference on the later nights or the bench tree.
const DATA_GROUP_LEVEL_MIN: i32 = 6;
/// zstd level of tree groups, at least: trees are mostly random ids, level 9 stored the
/// same week's tree groups no smaller than level 3.
const TREE_GROUP_LEVEL_MIN: i32 = 3;
/// ... or holds the most blobs the format allows in one group.
const GROUP_MAX_BLOBS: usize = cairn_format::MAX_GROUP_BLOBS;

/// The small blobs one thread gathered and has not sealed yet.
#[derive(Default)]
struct Group {
    plain: Vec<u8>,
    blobs: Vec<(Id, u32)>,
}

thread_local! {
    /// Which of a packer's group slots this thread uses (assigned on first use).
    static GROUP_SLOT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The repository version from which tree blobs are grouped too (FORMAT.md §9.1).
const TREE_GROUPS_VERSION: u16 = 5;

/// Where per-type state sits in a packer's pairs (`open`, `groups`): data, then trees.
fn type_slot(blob_type: BlobType) -> usize {
    usize::from(blob_type == BlobType::Tree)
}

/// Group slots, or none when groups are not written: a slot per sealing thread, plus a few
/// for other threads (the tree writer, the caller), each holding up to a group's target.
fn group_slots(on: bool) -> Vec<Mutex<Group>> {
    if !on {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism().map_or(4, usize::from);
    (0..threads + 4).map(|_| Mutex::default()).collect()
}

/// The group slot of the calling thread: threads get distinct slots in turn, so that the
/// blobs of one thread, usually consecutive pieces of one file, are grouped together.
fn group_slot(slots: usize) -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    GROUP_SLOT.with(|s| {
        let n = s.get().unwrap_or_else(|| {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s.set(Some(n));
            n
        });
        n % slots
    })
}

thread_local! {
    /// Each sealing thread's blob buffer: reused, so a blob costs no allocation, and the pack
    /// lock is held only for the write.
    static SEAL_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct OpenPack {
    file: std::fs::File,
    path: std::path::PathBuf,
    hasher: blake3::Hasher,
    len: u64,
    entries: Vec<PackEntry>,
}

impl OpenPack {
    fn create(dir: &std::path::Path, version: u16) -> Result<OpenPack> {
        use rand::RngCore;
        let path = dir.join(format!(
            ".tmp-{}-pack-{:016x}",
            crate::util::my_writer_tag(),
            rand::rng().next_u64()
        ));
        // 0600 like every other repository object (`durable::write_atomic`).
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
        let mut p = OpenPack {
            file,
            path,
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        };
        p.write(&preamble_of(FileKind::Pack, version))?;
        Ok(p)
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        use std::io::Write;
        self.file
            .write_all(data)
            .map_err(|e| Error::io(&self.path, e))?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }
}

impl Drop for OpenPack {
    fn drop(&mut self) {
        // A pack that was never shipped (error, interrupt) leaves no temp file behind.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A finished pack on its way to the backend. The uploader fsyncs it: a flush to disk must
/// not stall a compute thread.
struct Finished {
    id: Id,
    file: std::fs::File,
    path: std::path::PathBuf,
    entries: Vec<PackEntry>,
}

/// Counters of what was written.
#[derive(Debug, Default, Clone, Copy)]
pub struct PackerStats {
    /// New data blobs.
    pub data_blobs: u64,
    /// New tree blobs.
    pub tree_blobs: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_added: u64,
    /// Sealed bytes of new blobs.
    pub bytes_packed: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// Index files written.
    pub index_files: u64,
}

/// Test hook: `CAIRN_FAILPOINT=abort-after-packs:N` aborts the process (no destructors, no
/// cleanup: like SIGKILL or a power cut) right after the N-th pack of a run was stored, so
/// crash tests land mid-upload deterministically whatever the machine's speed.
fn crash_point(packs_stored: u64) {
    static AFTER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let after = AFTER.get_or_init(|| {
        std::env::var("CAIRN_FAILPOINT")
            .ok()?
            .strip_prefix("abort-after-packs:")?
            .parse()
            .ok()
    });
    if after.is_some_and(|n| packs_stored >= n) {
        eprintln!("CAIRN_FAILPOINT: aborting after {packs_stored} packs");
        std::process::abort();
    }
}

struct Shared {
    repo: Repository,
    done: Mutex<Vec<IndexPack>>,
    error: Mutex<Option<Error>>,
    stats: Mutex<PackerStats>,
    /// The packs written, kept only for callers that write them into a new index
    /// ([`Packer::recording`]): a backup of a million files would hold ~50 MB here.
    indexed: Mutex<Option<Vec<IndexPack>>>,
    /// Packs per index file (see [`Packer::index_every`]).
    packs_per_index: std::sync::atomic::AtomicUsize,
    /// The index files written.
    index_files: Mutex<Vec<Id>>,
    /// The lock this packer writes under: no index file is written once it may have been
    /// taken for stale (a prune may have deleted the packs it would name, or condemned what
    /// they deduplicate against).
    watch: Mutex<Option<crate::lock::LockWatch>>,
}

impl Shared {
    fn fail(&self, e: Error) {
        let mut slot = self.error.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    fn flush_index(&self, force: bool) -> Result<()> {
        let packs = {
            let mut done = self.done.lock();
            // Also by blob count: packs of small blobs (database cells, small files) must not
            // make index files that readers need much memory to decode.
            let blobs: usize = done.iter().map(|p| p.blobs.len()).sum();
            if done.is_empty()
                || (!force
                    && done.len()
                        < self
                            .packs_per_index
                            .load(std::sync::atomic::Ordering::Relaxed)
                    && blobs < INDEX_FLUSH_BLOBS)
            {
                return Ok(());
            }
            std::mem::take(&mut *done)
        };
        let file = IndexFile {
            supersedes: Vec::new(),
            packs,
        };
        if let Some(w) = self.watch.lock().as_ref() {
            w.check()?;
        }
        let id = self.repo.save_index(&file)?;
        self.index_files.lock().push(id);
        self.stats.lock().index_files += 1;
        if let Some(v) = self.indexed.lock().as_mut() {
            v.extend(file.packs);
        }
        Ok(())
    }
}

/// Shared pack writer for one backup run.
pub struct Packer {
    shared: Arc<Shared>,
    known: Arc<MasterIndex>,
    /// Blobs this run stored or queued, sharded by their first byte for less contention.
    seen: Vec<Mutex<IdSet>>,
    open: [Mutex<Option<OpenPack>>; 2],
    tx: Mutex<Option<Sender<Finished>>>,
    temp_dir: std::path::PathBuf,
    uploaders: Mutex<Vec<JoinHandle<()>>>,
    pack_size: usize,
    level: i32,
    /// The format version of the packs written.
    version: u16,
    /// Per-thread groups of small blobs, by type (indexed by [`type_slot`], as `open`): data
    /// from format 2, trees and content lists from format 5; empty when the format has no
    /// groups of the type or compression is off (a group then saves only the per-blob sealing
    /// overhead).
    groups: [Vec<Mutex<Group>>; 2],
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("pack_size", &self.pack_size)
            .finish()
    }
}

impl Packer {
    /// A packer that skips blobs already in `known`. Public for the micro-benchmarks only:
    /// everything that writes to a repository goes through an operation (`crate::ops`),
    /// which holds the lock the write needs.
    pub fn new(repo: &Repository, known: Arc<MasterIndex>) -> Packer {
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            done: Mutex::default(),
            error: Mutex::default(),
            stats: Mutex::default(),
            indexed: Mutex::default(),
            packs_per_index: std::sync::atomic::AtomicUsize::new(PACKS_PER_INDEX),
            index_files: Mutex::new(Vec::new()),
            watch: Mutex::new(None),
        });
        let (tx, rx) = bounded::<Finished>(QUEUE);
        let uploaders = (0..repo.backend().connections().max(1))
            .map(|i| {
                let rx = rx.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-upload-{i}"))
                    .spawn(move || {
                        for f in rx {
                            let f: Finished = f;
                            if shared.error.lock().is_some() {
                                let _ = std::fs::remove_file(&f.path);
                                continue;
                            }
                            let trees = f
                                .entries
                                .first()
                                .is_some_and(|e| e.blob_type == BlobType::Tree);
                            let stored = f
                                .file
                                .sync_all()
                                .map_err(|e| Error::io(&f.path, e))
                                .and_then(|()| {
                                    let (backend, name) = (shared.repo.backend(), f.id.to_hex());
                                    if trees {
                                        backend.put_tree_pack_file(&name, &f.path)
                                    } else {
                                        backend.put_file(FileKind::Pack, &name, &f.path)
                                    }
                                });
                            match stored {
                                Ok(()) => {
                                    let packs = {
                                        let mut st = shared.stats.lock();
                                        st.packs += 1;
                                        st.packs
                                    };
                                    crash_point(packs);
                                    shared.done.lock().push(IndexPack::new(f.id, f.entries));
                                    if let Err(e) = shared.flush_index(false) {
                                        shared.fail(e);
                                    }
                                }
                                Err(e) => {
                                    let _ = std::fs::remove_file(&f.path);
                                    shared.fail(e);
                                }
                            }
                        }
                    })
                    .map_err(|e| Error::io("upload thread", e))
            })
            .collect::<Result<Vec<_>>>();
        let uploaders = match uploaders {
            Ok(u) => u,
            Err(e) => {
                shared.fail(e);
                Vec::new()
            }
        };
        Packer {
            shared,
            known,
            seen: (0..64).map(|_| Mutex::default()).collect(),
            open: [Mutex::default(), Mutex::default()],
            tx: Mutex::new(Some(tx)),
            temp_dir: repo.backend().temp_dir(),
            uploaders: Mutex::new(uploaders),
            pack_size: repo.config().pack_size as usize,
            level: repo.config().compression_level,
            version: repo.pack_version(),
            groups: [2, TREE_GROUPS_VERSION].map(|since| {
                group_slots(repo.pack_version() >= since && repo.config().compression_level != 0)
            }),
        }
    }

    /// Write an index file every `packs` packs instead of every 64: what an interrupted run
    /// stored is found by the next one only through an index file, so a long transfer
    /// (`copy`) indexes often, at the price of more, smaller index files.
    pub fn index_every(self, packs: usize) -> Packer {
        self.shared
            .packs_per_index
            .store(packs.max(1), std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Write index files only while `lock` has certainly stayed live.
    pub fn under(self, lock: &crate::lock::LockGuard) -> Packer {
        *self.shared.watch.lock() = Some(lock.watch());
        self
    }

    /// Keep the packs written, for [`Packer::finish`] to return.
    pub fn recording(self) -> Packer {
        *self.shared.indexed.lock() = Some(Vec::new());
        self
    }

    /// Whether `id` is stored already or queued in this run.
    pub fn has(&self, id: &Id) -> bool {
        self.known.contains(id) || self.seen[id.0[0] as usize % 64].lock().contains(id)
    }

    /// The blob id of `data` under the repository key.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        self.shared.repo.key().blob_id(data)
    }

    /// A file's data blob ids as its node will name them: directly, or in a repository of
    /// format 4 and for more than `LIST_THRESHOLD` blobs, through content lists, each stored
    /// as a tree-type blob unless it is known (FORMAT.md §11.1). Every id must be stored or
    /// known already: a list is only written over blobs the repository holds.
    pub fn content(&self, ids: Vec<Id>) -> Result<Content> {
        if self.shared.repo.config().version < cairn_format::CONTENT_LISTS_VERSION {
            return Ok(Content::Blobs(ids));
        }
        let Some(runs) = cairn_format::content_list_runs(&ids) else {
            return Ok(Content::Blobs(ids));
        };
        let mut lists = Vec::with_capacity(runs.len());
        for run in runs {
            let bytes = cairn_format::encode_content_list(run);
            let id = self.blob_id(&bytes);
            self.add(BlobType::Tree, id, &bytes)?;
            lists.push(id);
        }
        Ok(Content::Lists(lists))
    }

    /// Store a blob unless it is already known. Returns whether it was new.
    pub fn add(&self, blob_type: BlobType, id: Id, plaintext: &[u8]) -> Result<bool> {
        if let Some(e) = self.shared.error.lock().take() {
            return Err(e);
        }
        if self.known.contains(&id) || !self.seen[id.0[0] as usize % 64].lock().insert(id) {
            return Ok(false);
        }
        let groups = &self.groups[type_slot(blob_type)];
        if plaintext.len() <= GROUP_BLOB_MAX && !plaintext.is_empty() && !groups.is_empty() {
            let mut g = groups[group_slot(groups.len())].lock();
            // A group never exceeds the format's limit, whatever the target.
            if g.plain.len() + plaintext.len() > cairn_format::MAX_GROUP_LEN as usize {
                self.seal_group_or_fail(blob_type, &mut g)?;
            }
            let target = match blob_type {
                BlobType::Data => GROUP_TARGET,
                BlobType::Tree => TREE_GROUP_TARGET,
            };
            if g.plain.capacity() == 0 {
                // Exactly once: amortized doubling would keep up to twice the group per slot.
                g.plain.reserve_exact(target);
            }
            g.plain.extend_from_slice(plaintext);
            g.blobs.push((id, plaintext.len() as u32));
            if g.plain.len() >= target || g.blobs.len() >= GROUP_MAX_BLOBS {
                self.seal_group_or_fail(blob_type, &mut g)?;
            }
            return Ok(true);
        }
        // Trees are small and compress well at any level; data follows the repository setting.
        let level = if blob_type == BlobType::Tree {
            self.level.max(1)
        } else {
            self.level
        };
        SEAL_BUF.with(|buf| {
            let mut sealed = buf.borrow_mut();
            sealed.clear();
            seal_blob_into(
                self.shared.repo.key(),
                blob_type,
                &id,
                plaintext,
                level,
                &mut sealed,
            );
            self.append_one(blob_type, id, &sealed, plaintext.len())
        })?;
        Ok(true)
    }

    /// [`Packer::seal_group`] that, when it fails, also fails the packer: the group's blobs
    /// are already in the dedup set as stored, so no later `add` or `finish` may succeed.
    fn seal_group_or_fail(&self, blob_type: BlobType, g: &mut Group) -> Result<()> {
        self.seal_group(blob_type, g).inspect_err(|e| {
            self.shared.fail(Error::Backend(format!(
                "a group of small blobs was not stored: {e}"
            )));
        })
    }

    /// Seal a thread's gathered small blobs of `blob_type` as one group and append it to the
    /// open pack of that type.
    fn seal_group(&self, blob_type: BlobType, g: &mut Group) -> Result<()> {
        if g.blobs.is_empty() {
            return Ok(());
        }
        SEAL_BUF.with(|buf| {
            let mut sealed = buf.borrow_mut();
            sealed.clear();
            seal_group_into(
                self.shared.repo.key(),
                blob_type,
                &g.plain,
                self.level.max(match blob_type {
                    BlobType::Data => DATA_GROUP_LEVEL_MIN,
                    BlobType::Tree => TREE_GROUP_LEVEL_MIN,
                }),
                &mut sealed,
            );
            let length = sealed.len() as u32;
            self.append(blob_type, &sealed, |offset| {
                Ok(group_entries(
                    blob_type,
                    offset,
                    length,
                    g.blobs.iter().copied(),
                )?)
            })
        })?;
        g.plain.clear();
        g.blobs.clear();
        Ok(())
    }

    /// Write one sealed blob to the open pack of its type; ship the pack when it is full.
    fn append_one(
        &self,
        blob_type: BlobType,
        id: Id,
        sealed: &[u8],
        raw_length: usize,
    ) -> Result<()> {
        self.append(blob_type, sealed, |offset| {
            Ok(vec![PackEntry {
                blob_type,
                id,
                offset,
                length: sealed.len() as u32,
                raw_length: raw_length as u32,
                group_offset: None,
            }])
        })
    }

    /// Write one sealed box to the open pack of its type, listed by the entries `entries`
    /// makes for the box's offset; ship the pack when it is full.
    fn append(
        &self,
        blob_type: BlobType,
        sealed: &[u8],
        entries: impl FnOnce(u32) -> Result<Vec<PackEntry>>,
    ) -> Result<()> {
        let slot = type_slot(blob_type);
        let full = {
            let mut guard = self.open[slot].lock();
            if guard.is_none() {
                *guard = Some(OpenPack::create(&self.temp_dir, self.version)?);
            }
            let p = guard
                .as_mut()
                .ok_or_else(|| Error::Backend("no open pack".into()))?;
            // Listed before written: a box the header would not list breaks its tiling.
            let listed = entries(p.len as u32)?;
            p.write(sealed)?;
            let before = p.entries.len();
            p.entries.extend(listed);
            {
                let mut st = self.shared.stats.lock();
                let added = &p.entries[before..];
                match blob_type {
                    BlobType::Data => st.data_blobs += added.len() as u64,
                    BlobType::Tree => st.tree_blobs += added.len() as u64,
                }
                st.bytes_added += added.iter().map(|e| u64::from(e.raw_length)).sum::<u64>();
                st.bytes_packed += sealed.len() as u64;
            }
            if p.len >= self.pack_size as u64 {
                guard.take()
            } else {
                None
            }
        };
        if let Some(p) = full {
            self.ship(p)?;
        }
        Ok(())
    }

    fn ship(&self, mut p: OpenPack) -> Result<()> {
        let header = PackHeader {
            entries: std::mem::take(&mut p.entries),
        };
        let mut tail = Vec::new();
        finish_pack(self.shared.repo.key(), self.version, &mut tail, &header)?;
        p.write(&tail)?;
        let id = Id(*p.hasher.finalize().as_bytes());
        let file = p.file.try_clone().map_err(|e| Error::io(&p.path, e))?;
        let finished = Finished {
            id,
            file,
            path: p.path.clone(),
            entries: header.entries,
        };
        // Ownership of the temp file passes to the uploader.
        p.path = std::path::PathBuf::new();
        let tx = self.tx.lock().clone();
        match tx {
            Some(tx) => tx
                .send(finished)
                .map_err(|_| Error::Backend("upload threads stopped".into())),
            None => Err(Error::Backend("packer already finished".into())),
        }
    }

    /// The index files this packer wrote so far.
    pub fn index_files(&self) -> Vec<Id> {
        self.shared.index_files.lock().clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> PackerStats {
        *self.shared.stats.lock()
    }

    /// Flush the open packs, wait for every upload, write the last index file.
    /// Returns the packs this run added if the packer is [`Packer::recording`], else none.
    pub fn finish(&self) -> Result<Vec<IndexPack>> {
        for (blob_type, groups) in [BlobType::Data, BlobType::Tree]
            .into_iter()
            .zip(&self.groups)
        {
            for g in groups {
                self.seal_group(blob_type, &mut g.lock())?;
            }
        }
        for slot in &self.open {
            let p = slot.lock().take();
            if let Some(p) = p {
                if !p.entries.is_empty() {
                    self.ship(p)?;
                }
            }
        }
        drop(self.tx.lock().take());
        for h in self.uploaders.lock().drain(..) {
            if h.join().is_err() {
                self.shared
                    .fail(Error::Backend("an upload thread panicked".into()));
            }
        }
        if let Some(e) = self.shared.error.lock().take() {
            return Err(e);
        }
        self.shared.flush_index(true)?;
        Ok(self.shared.indexed.lock().take().unwrap_or_default())
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        // On an error path, stop the uploaders without writing anything more.
        drop(self.tx.lock().take());
        for h in self.uploaders.lock().drain(..) {
            let _ = h.join();
        }
    }
}
