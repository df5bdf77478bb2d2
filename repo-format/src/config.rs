//! `config`: the repository's parameters, sealed with the master key.

use serde::{Deserialize, Serialize};

use crate::FormatError;

/// FastCDC v2020 bounds (those of the reference `fastcdc` crate).
pub mod cdc_limits {
    /// Smallest allowed minimum chunk size.
    pub const MIN_MIN: u32 = 64;
    /// Largest allowed minimum chunk size.
    pub const MIN_MAX: u32 = 1_048_576;
    /// Smallest allowed average chunk size.
    pub const AVG_MIN: u32 = 256;
    /// Largest allowed average chunk size.
    pub const AVG_MAX: u32 = 4_194_304;
    /// Smallest allowed maximum chunk size.
    pub const MAX_MIN: u32 = 1024;
    /// Largest allowed maximum chunk size.
    pub const MAX_MAX: u32 = 16_777_216;
}

/// Content-defined chunking parameters: FastCDC as published in 2020, with the gear table
/// XORed with the master key's chunker seed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Minimum chunk size in bytes (even).
    pub min_size: u32,
    /// Target average (even).
    pub avg_size: u32,
    /// Maximum (even).
    pub max_size: u32,
    /// Normalization level 0..=3.
    pub normalization: u8,
}

impl ChunkerParams {
    /// 512 KiB / 1 MiB / 8 MiB, level 1: restic-sized chunks keep the index small on bulk data.
    pub fn default_bulk() -> ChunkerParams {
        ChunkerParams {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
            normalization: 1,
        }
    }

    /// Reject parameters the chunker cannot honour.
    pub fn validate(&self) -> Result<(), FormatError> {
        use cdc_limits::*;
        let ok = (MIN_MIN..=MIN_MAX).contains(&self.min_size)
            && (AVG_MIN..=AVG_MAX).contains(&self.avg_size)
            && (MAX_MIN..=MAX_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.min_size.is_multiple_of(2)
            && self.avg_size.is_multiple_of(2)
            && self.max_size.is_multiple_of(2)
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(FormatError::InvalidParameter(format!(
                "chunker parameters out of range: {self:?}"
            )))
        }
    }
}

/// The repository configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// Repository format version: 1, 2 (grouped blobs) or 3 (condemned packs, maintenance
    /// locks: prune beside running backups). Writers use the newest encoding
    /// of each object kind that this version allows (`object_version`).
    pub version: u16,
    /// Random repository id, used for the local cache directory and lock ownership.
    pub repo_id: [u8; 32],
    /// How file contents are cut into blobs.
    pub chunker: ChunkerParams,
    /// zstd level for blobs and metadata (0 = store uncompressed, 1..=22).
    pub compression_level: i32,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u32,
    /// How recognised database files are cut (see [`crate::pages`]); other files use
    /// `chunker`. Empty: every file uses `chunker`.
    pub page_rules: Vec<crate::PageRule>,
}

impl Config {
    /// The largest plaintext a blob of `blob_type` may have in this repository: for data, the
    /// largest chunk any cutting rule makes (pages are at most 64 KiB); for trees,
    /// [`crate::file::MAX_TREE_LEN`]. Readers refuse index entries that claim more.
    pub fn max_blob_len(&self, blob_type: crate::BlobType) -> u32 {
        match blob_type {
            crate::BlobType::Tree => crate::file::MAX_TREE_LEN,
            crate::BlobType::Data => self
                .page_rules
                .iter()
                .map(|r| match &r.strategy {
                    crate::PageStrategy::Cdc(p) => p.max_size,
                    crate::PageStrategy::Pages | crate::PageStrategy::SqliteCells { .. } => 1 << 16,
                })
                .fold(self.chunker.max_size, u32::max),
        }
    }

    /// Reject a config that would make the engine misbehave.
    pub fn validate(&self) -> Result<(), FormatError> {
        if !(1..=crate::FORMAT_VERSION).contains(&self.version) {
            return Err(FormatError::UnsupportedVersion {
                kind: "config",
                version: self.version,
                supported: crate::FORMAT_VERSION,
            });
        }
        self.chunker.validate()?;
        for (i, r) in self.page_rules.iter().enumerate() {
            match &r.strategy {
                crate::PageStrategy::Cdc(p) => p.validate()?,
                crate::PageStrategy::SqliteCells { min_piece } => {
                    if r.format != crate::PageFormat::Sqlite || !(16..=65536).contains(min_piece) {
                        return Err(FormatError::InvalidParameter(format!(
                            "page rule {:?} for {:?}",
                            r.strategy, r.format
                        )));
                    }
                }
                crate::PageStrategy::Pages if !r.format.has_pages() => {
                    return Err(FormatError::InvalidParameter(format!(
                        "page rule Pages for {:?}, which has no pages",
                        r.format
                    )));
                }
                crate::PageStrategy::Pages => {}
            }
            if self.page_rules[..i].iter().any(|o| o.format == r.format) {
                return Err(FormatError::InvalidParameter(format!(
                    "two page rules for {:?}",
                    r.format
                )));
            }
        }
        if !(0..=22).contains(&self.compression_level) {
            return Err(FormatError::InvalidParameter(format!(
                "compression level {}",
                self.compression_level
            )));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(FormatError::InvalidParameter(format!(
                "pack size {}",
                self.pack_size
            )));
        }
        Ok(())
    }
}
