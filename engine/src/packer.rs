//! Pack assembly shared by all backup workers.
//!
//! Workers seal blobs in parallel (the CPU-heavy part) and only take a short lock to append
//! the sealed bytes to the open pack of that blob type. A full pack is handed to uploader
//! threads over a bounded channel, which is what bounds memory: at most
//! `2 open packs + QUEUE + uploaders` packs of `pack_size` bytes exist at once.
//!
//! Crash safety comes from ordering: a pack is listed in an index file only after the
//! backend reported it durable, and the caller writes the snapshot only after [`Packer::finish`]
//! wrote the last index. A crash leaves at most unreferenced packs.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::JoinHandle;

use cairn_format::{finish_pack, preamble, seal_blob, BlobType, FileKind, Id, IndexFile, IndexPack, PackEntry, PackHeader};
use crossbeam_channel::{bounded, Sender};
use parking_lot::Mutex;

use crate::index::MasterIndex;
use crate::repository::Repository;
use crate::{Error, Result};

/// Packs waiting for an uploader.
const QUEUE: usize = 2;
/// Packs listed per index file (a crash loses at most this many packs' worth of index,
/// i.e. that data is re-uploaded by the next backup).
const PACKS_PER_INDEX: usize = 64;

#[derive(Default)]
struct OpenPack {
    buf: Vec<u8>,
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

struct Shared {
    repo: Repository,
    done: Mutex<Vec<IndexPack>>,
    error: Mutex<Option<Error>>,
    stats: Mutex<PackerStats>,
    indexed: Mutex<Vec<IndexPack>>,
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
            if done.is_empty() || (!force && done.len() < PACKS_PER_INDEX) {
                return Ok(());
            }
            std::mem::take(&mut *done)
        };
        let file = IndexFile { supersedes: Vec::new(), packs };
        self.repo.save(FileKind::Index, &file)?;
        self.stats.lock().index_files += 1;
        self.indexed.lock().extend(file.packs);
        Ok(())
    }
}

/// Shared pack writer for one backup run.
pub struct Packer {
    shared: Arc<Shared>,
    known: Arc<MasterIndex>,
    seen: Vec<Mutex<HashSet<Id>>>,
    open: [Mutex<OpenPack>; 2],
    tx: Mutex<Option<Sender<(Vec<u8>, Vec<PackEntry>)>>>,
    uploaders: Mutex<Vec<JoinHandle<()>>>,
    pack_size: usize,
    level: i32,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer").field("pack_size", &self.pack_size).finish()
    }
}

impl Packer {
    /// A packer that skips blobs already in `known`.
    pub fn new(repo: &Repository, known: Arc<MasterIndex>) -> Packer {
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            done: Mutex::default(),
            error: Mutex::default(),
            stats: Mutex::default(),
            indexed: Mutex::default(),
        });
        let (tx, rx) = bounded::<(Vec<u8>, Vec<PackEntry>)>(QUEUE);
        let uploaders = (0..repo.backend().connections().max(1))
            .map(|i| {
                let rx = rx.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-upload-{i}"))
                    .spawn(move || {
                        for (data, entries) in rx {
                            if shared.error.lock().is_some() {
                                continue;
                            }
                            let id = Id::of_object(&data);
                            match shared.repo.backend().put(FileKind::Pack, &id.to_hex(), &data) {
                                Ok(()) => {
                                    shared.stats.lock().packs += 1;
                                    shared.done.lock().push(IndexPack { id, blobs: entries });
                                    if let Err(e) = shared.flush_index(false) {
                                        shared.fail(e);
                                    }
                                }
                                Err(e) => shared.fail(e),
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
            uploaders: Mutex::new(uploaders),
            pack_size: repo.config().pack_size as usize,
            level: repo.config().compression_level,
        }
    }

    /// Whether `id` is stored already or queued in this run.
    pub fn has(&self, id: &Id) -> bool {
        self.known.contains(id) || self.seen[id.0[0] as usize % 64].lock().contains(id)
    }

    /// The blob id of `data` under the repository key.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        self.shared.repo.key().blob_id(data)
    }

    /// Store a blob unless it is already known. Returns whether it was new.
    pub fn add(&self, blob_type: BlobType, id: Id, plaintext: &[u8]) -> Result<bool> {
        if let Some(e) = self.shared.error.lock().take() {
            return Err(e);
        }
        if self.known.contains(&id) || !self.seen[id.0[0] as usize % 64].lock().insert(id) {
            return Ok(false);
        }
        // Trees are small and compress well at any level; data follows the repository setting.
        let level = if blob_type == BlobType::Tree { self.level.max(1) } else { self.level };
        let sealed = seal_blob(self.shared.repo.key(), blob_type, &id, plaintext, level);
        {
            let mut st = self.shared.stats.lock();
            match blob_type {
                BlobType::Data => st.data_blobs += 1,
                BlobType::Tree => st.tree_blobs += 1,
            }
            st.bytes_added += plaintext.len() as u64;
            st.bytes_packed += sealed.len() as u64;
        }
        let slot = usize::from(blob_type == BlobType::Tree);
        let full = {
            let mut p = self.open[slot].lock();
            if p.buf.is_empty() {
                p.buf.reserve(self.pack_size.min(64 << 20) + sealed.len());
                p.buf.extend_from_slice(&preamble(FileKind::Pack));
            }
            let offset = p.buf.len() as u32;
            p.buf.extend_from_slice(&sealed);
            p.entries.push(PackEntry {
                blob_type,
                id,
                offset,
                length: sealed.len() as u32,
                raw_length: plaintext.len() as u32,
            });
            if p.buf.len() >= self.pack_size {
                Some(std::mem::take(&mut *p))
            } else {
                None
            }
        };
        if let Some(p) = full {
            self.ship(p)?;
        }
        Ok(true)
    }

    fn ship(&self, mut p: OpenPack) -> Result<()> {
        finish_pack(self.shared.repo.key(), &mut p.buf, &PackHeader { entries: p.entries.clone() });
        let tx = self.tx.lock().clone();
        match tx {
            Some(tx) => tx.send((p.buf, p.entries)).map_err(|_| Error::Backend("upload threads stopped".into())),
            None => Err(Error::Backend("packer already finished".into())),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PackerStats {
        *self.shared.stats.lock()
    }

    /// Flush the open packs, wait for every upload, write the last index file.
    /// Returns the packs this run added.
    pub fn finish(&self) -> Result<Vec<IndexPack>> {
        for slot in &self.open {
            let p = std::mem::take(&mut *slot.lock());
            if !p.entries.is_empty() {
                self.ship(p)?;
            }
        }
        drop(self.tx.lock().take());
        for h in self.uploaders.lock().drain(..) {
            if h.join().is_err() {
                self.shared.fail(Error::Backend("an upload thread panicked".into()));
            }
        }
        if let Some(e) = self.shared.error.lock().take() {
            return Err(e);
        }
        self.shared.flush_index(true)?;
        Ok(std::mem::take(&mut *self.shared.indexed.lock()))
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
