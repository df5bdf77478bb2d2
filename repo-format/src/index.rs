//! `index/<id>`: which blobs each pack holds, so a reader never has to open pack headers.

use serde::{Deserialize, Serialize};

use crate::pack::{PackEntry, Wire};
use crate::{FormatError, Id, Timestamp};

/// One pack's blobs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack's object name.
    pub id: Id,
    /// Its blobs, as in its header.
    pub blobs: Vec<PackEntry>,
    /// Version 3: when a prune condemned the pack (no snapshot used it, or its used blobs were
    /// copied elsewhere). A pack every record of which is condemned is not deduplicated
    /// against, and is deleted by a later prune (FORMAT.md §10, §15). A condemned record may
    /// list no blobs: a pack no index named when it was condemned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condemned: Option<Timestamp>,
}

impl IndexPack {
    /// A live record of a pack and its blobs.
    pub fn new(id: Id, blobs: Vec<PackEntry>) -> IndexPack {
        IndexPack {
            id,
            blobs,
            condemned: None,
        }
    }
}

/// An index file as one format version stores it: each pack's id, then its entries in that
/// version's wire form ([`Wire`]).
#[derive(Serialize, Deserialize)]
#[serde(bound = "W: Wire")]
struct WireFile<W> {
    supersedes: Vec<Id>,
    packs: Vec<(Id, Vec<W>)>,
}

/// A version-3 index file: each pack's id, its condemnation time, then its units (version
/// 5: units that may group tree blobs).
#[derive(Serialize, Deserialize)]
#[serde(bound = "W: Wire")]
struct WireFile3<W> {
    supersedes: Vec<Id>,
    packs: Vec<(Id, Option<Timestamp>, Vec<W>)>,
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
    /// The postcard encoding of this index file in format `version`. Fails only for
    /// what `version` cannot express (grouped blobs in version 1, condemned packs before
    /// version 3).
    pub fn encode(&self, version: u16) -> Result<Vec<u8>, crate::FormatError> {
        fn encode<W: Wire>(f: &IndexFile) -> Result<Vec<u8>, crate::FormatError> {
            let packs = f
                .packs
                .iter()
                .map(|p| match p.condemned {
                    Some(_) => Err(FormatError::InvalidParameter(
                        "condemned packs need repository format version 3".into(),
                    )),
                    None => Ok((p.id, W::encode(&p.blobs)?)),
                })
                .collect::<Result<_, crate::FormatError>>()?;
            Ok(crate::file::to_postcard(&WireFile::<W> {
                supersedes: f.supersedes.clone(),
                packs,
            }))
        }
        match version {
            1 => encode::<crate::pack::v1::Entry>(self),
            2 => encode::<crate::pack::v2::Unit>(self),
            3 => encode3::<crate::pack::v2::Unit>(self),
            5 => encode3::<crate::pack::v2::Unit5>(self),
            v => Err(crate::pack::unknown_version(v)),
        }
    }

    /// Decode the postcard encoding of an index file of format `version`.
    pub fn decode(version: u16, plain: &[u8]) -> Result<IndexFile, crate::FormatError> {
        fn decode<W: Wire>(plain: &[u8]) -> Result<IndexFile, crate::FormatError> {
            let f: WireFile<W> = crate::file::from_postcard(plain, "index")?;
            Ok(IndexFile {
                supersedes: f.supersedes,
                packs: f
                    .packs
                    .into_iter()
                    .map(|(id, list)| Ok(IndexPack::new(id, W::decode(list)?)))
                    .collect::<Result<_, crate::FormatError>>()?,
            })
        }
        match version {
            1 => decode::<crate::pack::v1::Entry>(plain),
            2 => decode::<crate::pack::v2::Unit>(plain),
            3 => decode3::<crate::pack::v2::Unit>(plain),
            5 => decode3::<crate::pack::v2::Unit5>(plain),
            v => Err(crate::pack::unknown_version(v)),
        }
    }

    /// Encode and seal this index file at format `version` (the repository's).
    pub fn encode_sealed(
        &self,
        key: &crate::MasterKey,
        version: u16,
        level: i32,
    ) -> Result<Vec<u8>, crate::FormatError> {
        self.encode_sealed_with_nonce(key, version, level, &crate::crypto::random_nonce())
    }

    /// [`IndexFile::encode_sealed`] with an explicit nonce, for test vectors and fixtures.
    pub fn encode_sealed_with_nonce(
        &self,
        key: &crate::MasterKey,
        version: u16,
        level: i32,
        nonce: &[u8; crate::NONCE_LEN],
    ) -> Result<Vec<u8>, crate::FormatError> {
        Ok(crate::file::seal_file(
            key,
            crate::FileKind::Index,
            version,
            &self.encode(version)?,
            level,
            nonce,
        ))
    }

    /// Open and decode a sealed index file of either version.
    pub fn decode_sealed(
        key: &crate::MasterKey,
        data: &[u8],
    ) -> Result<IndexFile, crate::FormatError> {
        let (version, plain) = crate::file::open_file(key, crate::FileKind::Index, data)?;
        IndexFile::decode(version, &plain)
    }

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

/// The encoding of versions 3 and 5 (which differ only in their units).
fn encode3<W: Wire>(f: &IndexFile) -> Result<Vec<u8>, FormatError> {
    let packs = f
        .packs
        .iter()
        .map(|p| Ok((p.id, p.condemned, W::encode(&p.blobs)?)))
        .collect::<Result<_, FormatError>>()?;
    Ok(crate::file::to_postcard(&WireFile3::<W> {
        supersedes: f.supersedes.clone(),
        packs,
    }))
}

/// Decode an index file of version 3 or 5.
fn decode3<W: Wire>(plain: &[u8]) -> Result<IndexFile, FormatError> {
    let f: WireFile3<W> = crate::file::from_postcard(plain, "index")?;
    Ok(IndexFile {
        supersedes: f.supersedes,
        packs: f
            .packs
            .into_iter()
            .map(|(id, condemned, units)| {
                let blobs = W::decode(units)?;
                if condemned.is_none() && blobs.is_empty() {
                    // Only a condemned record may name a pack without its blobs; a live one
                    // would hide the pack's content.
                    return Err(FormatError::Malformed {
                        what: "index",
                        detail: format!("live record of pack {id} lists no blobs"),
                    });
                }
                Ok(IndexPack {
                    id,
                    blobs,
                    condemned,
                })
            })
            .collect::<Result<_, FormatError>>()?,
    })
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
