//! `index/<id>`: which blobs each pack holds, so a reader never has to open pack headers.

use serde::{Deserialize, Serialize};

use crate::pack::PackEntry;
use crate::Id;

/// One pack's blobs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack's object name.
    pub id: Id,
    /// Its blobs, as in its header.
    pub blobs: Vec<PackEntry>,
}

/// An index file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexFile {
    /// Index files whose content this one replaces (written by prune and `repair index`);
    /// they may be deleted once this one is durable.
    pub supersedes: Vec<Id>,
    /// Packs.
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    /// Check every entry against the repository's limits ([`crate::Config::max_blob_len`]),
    /// so that no later read allocates what a hostile index claims.
    pub fn check_limits(&self, config: &crate::Config) -> Result<(), crate::FormatError> {
        let data = config.max_blob_len(crate::BlobType::Data);
        let tree = config.max_blob_len(crate::BlobType::Tree);
        for p in &self.packs {
            for e in &p.blobs {
                let max = match e.blob_type {
                    crate::BlobType::Data => data,
                    crate::BlobType::Tree => tree,
                };
                crate::pack::check_entry_limits(e, max)?;
            }
        }
        Ok(())
    }
}

impl IndexFile {
    /// Remove the entries that break the repository's limits; returns them with the reason.
    /// Lets a reader use the rest of an index file with one bad entry.
    pub fn drop_over_limit(
        &mut self,
        config: &crate::Config,
    ) -> Vec<(crate::PackEntry, crate::FormatError)> {
        let mut dropped = Vec::new();
        for p in &mut self.packs {
            p.blobs.retain(|e| {
                match crate::pack::check_entry_limits(e, config.max_blob_len(e.blob_type)) {
                    Ok(()) => true,
                    Err(err) => {
                        dropped.push((*e, err));
                        false
                    }
                }
            });
        }
        dropped
    }
}
