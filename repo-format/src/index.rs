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
