//! `stats`: what the repository holds, and what killed processes left behind.

use cairn_format::{BlobType, FileKind};
use serde::Serialize;

use crate::index::PackShare;
use crate::ops::prune::find_leftovers;
use crate::repository::Repository;
use crate::Result;

/// Counts and sizes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Snapshots.
    pub snapshots: u64,
    /// Packs.
    pub packs: u64,
    /// Bytes in packs.
    pub pack_bytes: u64,
    /// Blobs in the index.
    pub blobs: u64,
    /// Data blobs.
    pub data_blobs: u64,
    /// Tree blobs.
    pub tree_blobs: u64,
    /// Plaintext bytes of all blobs.
    pub raw_bytes: u64,
    /// Stored (compressed, sealed) bytes of all blobs.
    pub stored_bytes: u64,
    /// Memory the index takes when loaded (one map entry per blob, see `index.rs`).
    pub index_memory_bytes: u64,
    /// Temporary files left by killed processes.
    pub leftover_temp_files: u64,
    /// Their bytes.
    pub leftover_temp_bytes: u64,
    /// Stale or damaged locks.
    pub stale_locks: u64,
}

/// Compute [`Stats`].
pub fn stats(repo: &Repository) -> Result<Stats> {
    let index = repo.load_index()?;
    let packs = repo.list(FileKind::Pack)?;
    let mut s = Stats {
        snapshots: repo.list(FileKind::Snapshot)?.len() as u64,
        packs: packs.len() as u64,
        pack_bytes: packs.iter().map(|o| o.size).sum(),
        ..Stats::default()
    };
    let mut stored = vec![PackShare::default(); index.packs().len()];
    for (_, loc) in index.iter() {
        match loc.blob_type {
            BlobType::Data => s.data_blobs += 1,
            BlobType::Tree => s.tree_blobs += 1,
        }
        s.raw_bytes += u64::from(loc.raw_length);
        stored[loc.pack as usize].add(&loc);
    }
    s.stored_bytes = stored
        .iter()
        .zip(index.pack_totals())
        .map(|(share, t)| share.bytes(t))
        .sum();
    s.blobs = s.data_blobs + s.tree_blobs;
    // The master index's sorted array and bucket table (~8 blobs a bucket).
    s.index_memory_bytes = s.blobs * crate::index::BYTES_PER_BLOB as u64 + s.blobs / 2;
    let l = find_leftovers(repo)?;
    s.leftover_temp_files = l.temp_files.len() as u64;
    s.leftover_temp_bytes = l.temp_bytes();
    s.stale_locks = l.stale_locks.len() as u64;
    Ok(s)
}
