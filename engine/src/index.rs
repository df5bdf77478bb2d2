//! The in-memory master index: blob id → where it is stored.
//!
//! Memory: one hash-map entry per blob (32-byte id + 20-byte location, ~72 bytes with
//! hashbrown's overhead at its load factor), plus 32 bytes per pack.

use std::collections::HashMap;

use cairn_format::{BlobType, Id, IndexFile, IndexPack, PackEntry};

/// Where one blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// Index into [`MasterIndex::packs`].
    pub pack: u32,
    /// Data or tree.
    pub blob_type: BlobType,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// All index files merged.
#[derive(Debug, Default, Clone)]
pub struct MasterIndex {
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    blobs: HashMap<Id, BlobLocation>,
    /// Index files that were loaded (by name).
    pub files: Vec<Id>,
}

impl MasterIndex {
    /// Merge index files, in order.
    pub fn from_files(files: &[(Id, IndexFile)]) -> MasterIndex {
        let mut idx = MasterIndex::default();
        for (id, f) in files {
            idx.add_file(*id, f);
        }
        idx
    }

    /// Merge index files, keeping only the packs `exists` accepts: what to deduplicate
    /// against when the index may name packs that are gone.
    pub fn from_files_where(
        files: &[(Id, IndexFile)],
        exists: impl Fn(&Id) -> bool,
    ) -> MasterIndex {
        let mut idx = MasterIndex::default();
        for p in files.iter().flat_map(|(_, f)| &f.packs) {
            if exists(&p.id) {
                idx.add_pack(p);
            }
        }
        idx
    }

    /// Add every pack of an index file.
    pub fn add_file(&mut self, name: Id, file: &IndexFile) {
        self.files.push(name);
        for p in &file.packs {
            self.add_pack(p);
        }
    }

    /// Add one pack's blobs. A blob already indexed elsewhere keeps its first location.
    pub fn add_pack(&mut self, p: &IndexPack) {
        let pack = match self.pack_pos.get(&p.id) {
            Some(&i) => i,
            None => {
                let i = self.packs.len() as u32;
                self.packs.push(p.id);
                self.pack_pos.insert(p.id, i);
                i
            }
        };
        for e in &p.blobs {
            self.blobs.entry(e.id).or_insert(BlobLocation {
                pack,
                blob_type: e.blob_type,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
            });
        }
    }

    /// Look a blob up.
    pub fn get(&self, id: &Id) -> Option<&BlobLocation> {
        self.blobs.get(id)
    }

    /// Whether a blob is stored.
    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    /// The pack name for a location.
    pub fn pack_id(&self, loc: &BlobLocation) -> Id {
        self.packs[loc.pack as usize]
    }

    /// All packs.
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// No blobs.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Iterate blobs.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, &BlobLocation)> {
        self.blobs.iter()
    }

    /// Reconstruct a pack entry.
    pub fn entry(&self, id: &Id) -> Option<PackEntry> {
        self.blobs.get(id).map(|l| PackEntry {
            blob_type: l.blob_type,
            id: *id,
            offset: l.offset,
            length: l.length,
            raw_length: l.raw_length,
        })
    }
}
