//! Packs: many sealed blobs, then a sealed header that lists them, then the header length.
//!
//! ```text
//! pack   = preamble("P") || blob_1 || … || blob_n || header || header_len (u32 LE)
//! blob_i = seal(aad = blob_aad(type, id), flag || zstd?(plaintext))
//! header = seal(aad = preamble || "header", flag || zstd?(postcard(PackHeader)))
//! ```
//! Blob ids are bound into the associated data, so a blob moved or swapped to another
//! index entry fails authentication.
//!
//! Version 2 adds **groups**: several small data blobs compressed and sealed as one box
//! (`seal(aad = group_aad(type), flag || zstd?(blob_1 || … || blob_k))`), so that a 4 KiB database
//! page is compressed with its neighbours as context instead of alone. Each blob keeps its
//! own id and index entry; its entry names the group's box (`offset`, `length`) and where
//! the blob starts inside the decoded group (`group_offset`). Version 5 groups small tree
//! blobs the same way (`group_aad(BlobType::Tree)`, a `TreeGroup` unit), never mixed with
//! data in one group.

use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use crate::compress::{pack_payload, pack_payload_into_with, unpack_payload, unpack_payload_ref};
use crate::crypto::{
    open_in_place, random_nonce, seal_append, seal_with_nonce, MasterKey, NONCE_LEN, SEAL_OVERHEAD,
};
use crate::file::{check_preamble, from_postcard, to_postcard, FileKind, PREAMBLE_LEN};
use crate::{FormatError, Id};

/// Data or tree.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobType {
    /// File content.
    Data,
    /// A directory's [`crate::Tree`].
    Tree,
}

impl BlobType {
    fn byte(self) -> u8 {
        match self {
            BlobType::Data => b'D',
            BlobType::Tree => b'T',
        }
    }
}

/// One blob's place in a pack.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackEntry {
    /// Data or tree.
    pub blob_type: BlobType,
    /// Keyed BLAKE3 of the plaintext.
    pub id: Id,
    /// Offset of the sealed blob (or of its group's sealed box) from the start of the pack.
    pub offset: u32,
    /// Sealed length (of the blob, or of its whole group).
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
    /// `Some(start)`: the blob is sealed in a group (format version 2) and starts `start`
    /// bytes into the group's decoded plaintext. `None`: sealed alone.
    pub group_offset: Option<u32>,
}

impl PackEntry {
    /// Whether the blob is sealed in a group with others.
    pub fn grouped(&self) -> bool {
        self.group_offset.is_some()
    }
}

/// The pack header.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackHeader {
    /// Entries in file order.
    pub entries: Vec<PackEntry>,
}

impl PackHeader {
    /// The postcard encoding of this header in format `version` (the plaintext that
    /// [`finish_pack`] compresses and seals). Fails for what `version` cannot express.
    pub fn encode(&self, version: u16) -> Result<Vec<u8>, FormatError> {
        encode_header(version, self)
    }

    /// Decode a header's postcard encoding of format `version` (no tiling checks: those
    /// need the pack, see [`decode_pack_header`]).
    pub fn decode(version: u16, plain: &[u8]) -> Result<PackHeader, FormatError> {
        decode_header(version, plain)
    }
}

/// Largest decoded group (format version 2): 1 MiB. Readers refuse entries that claim a
/// place beyond it, so reading one grouped blob never inflates more than this.
pub const MAX_GROUP_LEN: u32 = 1 << 20;
/// Most blobs one group may hold.
pub const MAX_GROUP_BLOBS: usize = 4096;

/// The encodings of version 1, where no blob is grouped: the same fields without
/// `group_offset`.
pub(crate) mod v1 {
    use serde::{Deserialize, Serialize};

    use super::{BlobType, PackEntry};
    use crate::{FormatError, Id};

    #[derive(Clone, Copy, Serialize, Deserialize)]
    pub(crate) struct Entry {
        blob_type: BlobType,
        id: Id,
        offset: u32,
        length: u32,
        raw_length: u32,
    }

    impl From<Entry> for PackEntry {
        fn from(e: Entry) -> PackEntry {
            PackEntry {
                blob_type: e.blob_type,
                id: e.id,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                group_offset: None,
            }
        }
    }

    impl TryFrom<&PackEntry> for Entry {
        type Error = FormatError;

        fn try_from(e: &PackEntry) -> Result<Entry, FormatError> {
            if e.grouped() {
                return Err(FormatError::InvalidParameter(format!(
                    "blob {} is grouped, which format version 1 cannot express",
                    e.id.short()
                )));
            }
            Ok(Entry {
                blob_type: e.blob_type,
                id: e.id,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
            })
        }
    }

    impl super::Wire for Entry {
        fn encode(entries: &[PackEntry]) -> Result<Vec<Entry>, FormatError> {
            entries.iter().map(Entry::try_from).collect()
        }

        fn decode(list: Vec<Entry>) -> Result<Vec<PackEntry>, FormatError> {
            Ok(list.into_iter().map(PackEntry::from).collect())
        }
    }
}

/// The encoding of versions 2 and 5: a list of sealed boxes ("units"), each a blob alone or
/// a group. A group states its box once and each blob's id and length; where a blob starts
/// inside the group follows from the lengths before it. Version 2 groups only data blobs;
/// version 5 adds groups of tree blobs (a variant of its own, so a version-2 reader refuses
/// them as malformed instead of taking them for data).
pub(crate) mod v2 {
    use serde::{Deserialize, Serialize};

    use super::{v1, BlobType, PackEntry};
    use crate::{FormatError, Id};

    #[derive(Serialize, Deserialize)]
    pub(crate) enum Unit {
        /// A blob sealed alone (the fields of a version-1 entry).
        Blob(v1::Entry),
        /// Data blobs sealed together: the box's offset and length, then the blobs in the
        /// order of their plaintext in the group.
        Group {
            offset: u32,
            length: u32,
            blobs: Vec<(Id, u32)>,
        },
        /// Version 5: tree blobs (trees and content lists) sealed together, as `Group`.
        TreeGroup {
            offset: u32,
            length: u32,
            blobs: Vec<(Id, u32)>,
        },
    }

    /// A group unit seen through [`Unit::group_mut`]: its blob type, its box (offset, length)
    /// and its blobs.
    type GroupMut<'a> = (BlobType, (u32, u32), &'a mut Vec<(Id, u32)>);

    impl Unit {
        /// The group this unit is, if it is one (`None` for a blob alone).
        fn group_mut(&mut self) -> Option<GroupMut<'_>> {
            match self {
                Unit::Blob(_) => None,
                Unit::Group {
                    offset,
                    length,
                    blobs,
                } => Some((BlobType::Data, (*offset, *length), blobs)),
                Unit::TreeGroup {
                    offset,
                    length,
                    blobs,
                } => Some((BlobType::Tree, (*offset, *length), blobs)),
            }
        }
    }

    impl super::Wire for Unit {
        fn encode(entries: &[PackEntry]) -> Result<Vec<Unit>, FormatError> {
            units(entries, false)
        }

        fn decode(list: Vec<Unit>) -> Result<Vec<PackEntry>, FormatError> {
            entries(list, false)
        }
    }

    /// The units of version 5, which may group tree blobs.
    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    pub(crate) struct Unit5(Unit);

    impl super::Wire for Unit5 {
        fn encode(entries: &[PackEntry]) -> Result<Vec<Unit5>, FormatError> {
            Ok(units(entries, true)?.into_iter().map(Unit5).collect())
        }

        fn decode(list: Vec<Unit5>) -> Result<Vec<PackEntry>, FormatError> {
            entries(list.into_iter().map(|u| u.0).collect(), true)
        }
    }

    /// The units of `entries` (which must list each group's blobs together, in order);
    /// `trees` says whether tree blobs may be grouped (version 5).
    fn units(entries: &[PackEntry], trees: bool) -> Result<Vec<Unit>, FormatError> {
        let mut out: Vec<Unit> = Vec::new();
        let mut next = 0u64;
        for e in entries {
            let Some(start) = e.group_offset else {
                out.push(Unit::Blob(v1::Entry::try_from(e)?));
                continue;
            };
            let bad = || {
                FormatError::InvalidParameter(format!(
                    "grouped blob {} out of order in its group",
                    e.id.short()
                ))
            };
            if e.blob_type == BlobType::Tree && !trees {
                return Err(FormatError::InvalidParameter(format!(
                    "tree blob {} is grouped, which needs format version 5",
                    e.id.short()
                )));
            }
            match out.last_mut().and_then(Unit::group_mut) {
                Some((blob_type, span, blobs)) if span == (e.offset, e.length) => {
                    if u64::from(start) != next || blob_type != e.blob_type {
                        return Err(bad());
                    }
                    blobs.push((e.id, e.raw_length));
                }
                _ => {
                    if start != 0 {
                        return Err(bad());
                    }
                    let (offset, length, blobs) = (e.offset, e.length, vec![(e.id, e.raw_length)]);
                    out.push(match e.blob_type {
                        BlobType::Data => Unit::Group {
                            offset,
                            length,
                            blobs,
                        },
                        BlobType::Tree => Unit::TreeGroup {
                            offset,
                            length,
                            blobs,
                        },
                    });
                }
            }
            next = u64::from(start) + u64::from(e.raw_length);
        }
        Ok(out)
    }

    /// The entries of `units`, each group's blobs with their place in it.
    fn entries(units: Vec<Unit>, trees: bool) -> Result<Vec<PackEntry>, FormatError> {
        let mut out: Vec<PackEntry> = Vec::with_capacity(units.len());
        for u in units {
            // Two units naming one box would not encode back the same (`units` would see
            // one group): refused, so that decoding and encoding are exact inverses.
            let (offset, length) = match &u {
                Unit::Blob(e) => {
                    let e = PackEntry::from(*e);
                    (e.offset, e.length)
                }
                Unit::Group { offset, length, .. } | Unit::TreeGroup { offset, length, .. } => {
                    (*offset, *length)
                }
            };
            if out
                .last()
                .is_some_and(|p| p.offset == offset && p.length == length)
            {
                return Err(FormatError::Malformed {
                    what: "pack entries",
                    detail: format!("two units name the box at offset {offset}"),
                });
            }
            let (blob_type, blobs) = match u {
                Unit::Blob(e) => {
                    out.push(PackEntry::from(e));
                    continue;
                }
                Unit::Group { blobs, .. } => (BlobType::Data, blobs),
                Unit::TreeGroup { .. } if !trees => {
                    return Err(FormatError::Malformed {
                        what: "pack entries",
                        detail: "a group of tree blobs before format version 5".into(),
                    });
                }
                Unit::TreeGroup { blobs, .. } => (BlobType::Tree, blobs),
            };
            if blobs.is_empty() || blobs.len() > crate::MAX_GROUP_BLOBS {
                return Err(FormatError::Malformed {
                    what: "pack entries",
                    detail: format!("a group of {} blobs", blobs.len()),
                });
            }
            out.extend(super::group_entries(blob_type, offset, length, blobs)?);
        }
        Ok(out)
    }
}

/// How one format version encodes a pack's list of entries: the whole of a pack header, and
/// each pack of an index file.
pub(crate) trait Wire: Sized + Serialize + serde::de::DeserializeOwned {
    /// The wire form of `entries` (fails for what this version cannot express).
    fn encode(entries: &[PackEntry]) -> Result<Vec<Self>, FormatError>;
    /// The entries a decoded wire list stands for.
    fn decode(list: Vec<Self>) -> Result<Vec<PackEntry>, FormatError>;
}

/// The entries of a group whose box is at `offset` (sealed `length` bytes) and whose blobs,
/// `(id, raw_length)` in plaintext order, follow one another: each starts where the previous
/// one ended. The one place that computes `group_offset`.
pub fn group_entries(
    blob_type: BlobType,
    offset: u32,
    length: u32,
    blobs: impl IntoIterator<Item = (Id, u32)>,
) -> Result<Vec<PackEntry>, FormatError> {
    let mut start = 0u32;
    blobs
        .into_iter()
        .map(|(id, raw_length)| {
            let e = PackEntry {
                blob_type,
                id,
                offset,
                length,
                raw_length,
                group_offset: Some(start),
            };
            start = start
                .checked_add(raw_length)
                .ok_or(FormatError::Malformed {
                    what: "pack entries",
                    detail: "a group longer than 4 GiB".into(),
                })?;
            Ok(e)
        })
        .collect()
}

/// The postcard bytes of a pack header in format `version`.
fn encode_header(version: u16, header: &PackHeader) -> Result<Vec<u8>, FormatError> {
    fn encode<W: Wire>(header: &PackHeader) -> Result<Vec<u8>, FormatError> {
        Ok(to_postcard(&W::encode(&header.entries)?))
    }
    match version {
        1 => encode::<v1::Entry>(header),
        2 => encode::<v2::Unit>(header),
        5 => encode::<v2::Unit5>(header),
        v => Err(unknown_version(v)),
    }
}

/// Decode a pack header's postcard bytes of format `version`.
fn decode_header(version: u16, plain: &[u8]) -> Result<PackHeader, FormatError> {
    fn decode<W: Wire>(plain: &[u8]) -> Result<PackHeader, FormatError> {
        Ok(PackHeader {
            entries: W::decode(from_postcard::<Vec<W>>(plain, "pack header")?)?,
        })
    }
    match version {
        1 => decode::<v1::Entry>(plain),
        2 => decode::<v2::Unit>(plain),
        5 => decode::<v2::Unit5>(plain),
        v => Err(unknown_version(v)),
    }
}

/// The error for an encoding version this build does not know.
pub(crate) fn unknown_version(version: u16) -> FormatError {
    FormatError::UnsupportedVersion {
        kind: "pack, index or lock",
        version,
        supported: crate::FORMAT_VERSION,
    }
}

/// Associated data of a sealed blob: `"cairnB" || version u16 LE || type || id`.
pub fn blob_aad(blob_type: BlobType, id: &Id) -> [u8; 41] {
    let mut aad = [0u8; 41];
    aad[..6].copy_from_slice(b"cairnB");
    // The version of the blob sealing scheme, fixed at 1: a later format that keeps this
    // scheme must still build this exact AAD to open v1 blobs.
    aad[6..8].copy_from_slice(&1u16.to_le_bytes());
    aad[8] = blob_type.byte();
    aad[9..].copy_from_slice(&id.0);
    aad
}

/// Seal one blob's plaintext. Compression level 0 stores it raw.
pub fn seal_blob(
    key: &MasterKey,
    blob_type: BlobType,
    id: &Id,
    plaintext: &[u8],
    level: i32,
) -> Vec<u8> {
    let mut out = Vec::new();
    seal_blob_into(key, blob_type, id, plaintext, level, &mut out);
    out
}

/// [`seal_blob`] appended to `out`, compressing and encrypting in place: the packer reuses one
/// buffer per thread instead of allocating and copying each blob three times.
pub fn seal_blob_into(
    key: &MasterKey,
    blob_type: BlobType,
    id: &Id,
    plaintext: &[u8],
    level: i32,
    out: &mut Vec<u8>,
) {
    let estimate = blob_type != BlobType::Tree;
    seal_payload_into(
        key,
        &blob_aad(blob_type, id),
        plaintext,
        level,
        estimate,
        out,
    );
}

/// Compress and seal under `aad` with a fresh nonce, appended to `out` and encrypted in place.
/// `estimate`: whether incompressible-looking input skips zstd (not for trees, see
/// [`pack_payload_into_with`]).
fn seal_payload_into(
    key: &MasterKey,
    aad: &[u8],
    plaintext: &[u8],
    level: i32,
    estimate: bool,
    out: &mut Vec<u8>,
) {
    // Room for the largest outcome (a raw payload) up front and exactly: `out` is a per-thread
    // buffer reused for every blob, and amortized growth would double it for the tag.
    out.reserve_exact(SEAL_OVERHEAD + 1 + plaintext.len());
    seal_append(&key.encryption, &random_nonce(), aad, out, |o| {
        pack_payload_into_with(plaintext, level, estimate, o)
    });
}

/// [`seal_blob`] with an explicit nonce, for test vectors and reproducible fixtures.
pub fn seal_blob_with_nonce(
    key: &MasterKey,
    blob_type: BlobType,
    id: &Id,
    plaintext: &[u8],
    level: i32,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let estimate = blob_type != BlobType::Tree;
    seal_payload_with_nonce(
        key,
        &blob_aad(blob_type, id),
        plaintext,
        level,
        estimate,
        nonce,
    )
}

/// Compress (flag byte + zstd at `level`) and seal under `aad` with an explicit nonce.
fn seal_payload_with_nonce(
    key: &MasterKey,
    aad: &[u8],
    plaintext: &[u8],
    level: i32,
    estimate: bool,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let mut payload = Vec::new();
    pack_payload_into_with(plaintext, level, estimate, &mut payload);
    seal_with_nonce(&key.encryption, nonce, aad, &payload)
}

/// Open a sealed blob and verify that its plaintext hashes to `id`.
pub fn open_blob(
    key: &MasterKey,
    blob_type: BlobType,
    id: &Id,
    sealed: &[u8],
    raw_length: u32,
) -> Result<Vec<u8>, FormatError> {
    let mut buf = sealed.to_vec();
    open_blob_in_place(key, blob_type, id, &mut buf, raw_length).map(Cow::into_owned)
}

/// [`open_blob`] that decrypts in `sealed` itself and borrows the plaintext from it when the
/// blob was stored raw: restore and `check --read-data` read whole spans of packs and need
/// no copy per blob. On failure the contents of `sealed` are unspecified.
pub fn open_blob_in_place<'a>(
    key: &MasterKey,
    blob_type: BlobType,
    id: &Id,
    sealed: &'a mut [u8],
    raw_length: u32,
) -> Result<Cow<'a, [u8]>, FormatError> {
    let what = format!("{blob_type:?} blob {}", id.short());
    let payload = open_in_place(&key.encryption, &blob_aad(blob_type, id), sealed, &what)?;
    let plain = unpack_payload_ref(payload, raw_length as usize, &what)?;
    check_plaintext(key, id, &plain, || what.clone())?;
    if plain.len() != raw_length as usize {
        return Err(FormatError::LengthMismatch {
            what,
            expected: u64::from(raw_length),
            actual: plain.len() as u64,
        });
    }
    Ok(plain)
}

/// A blob's plaintext must hash to its id (under the id key), wherever it was stored.
fn check_plaintext(
    key: &MasterKey,
    id: &Id,
    plain: &[u8],
    what: impl FnOnce() -> String,
) -> Result<(), FormatError> {
    let actual = key.blob_id(plain);
    if actual != *id {
        return Err(FormatError::IdMismatch {
            what: what(),
            expected: id.to_hex(),
            actual: actual.to_hex(),
        });
    }
    Ok(())
}

/// Associated data of a sealed group: `"cairnG" || 02 00 || type` (`D` since format
/// version 2, `T` since 5), so a group of one type cannot be opened as the other's. Each
/// blob inside is still verified against its own id.
pub fn group_aad(blob_type: BlobType) -> [u8; 9] {
    let mut aad = *b"cairnG\x02\x00D";
    aad[8] = blob_type.byte();
    aad
}

/// Seal the concatenated plaintexts of a group's blobs, appended to `out`. Data groups
/// first estimate whether they compress; tree groups (ids and names) always try, as tree
/// blobs alone do (`pack_payload_into_with`).
pub fn seal_group_into(
    key: &MasterKey,
    blob_type: BlobType,
    plaintext: &[u8],
    level: i32,
    out: &mut Vec<u8>,
) {
    let estimate = blob_type == BlobType::Data;
    seal_payload_into(key, &group_aad(blob_type), plaintext, level, estimate, out);
}

/// [`seal_group_into`] with an explicit nonce, for test vectors and reproducible fixtures.
pub fn seal_group_with_nonce(
    key: &MasterKey,
    blob_type: BlobType,
    plaintext: &[u8],
    level: i32,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let estimate = blob_type == BlobType::Data;
    seal_payload_with_nonce(
        key,
        &group_aad(blob_type),
        plaintext,
        level,
        estimate,
        nonce,
    )
}

/// Open a sealed group in place and decompress it (at most [`MAX_GROUP_LEN`] bytes).
pub fn open_group_in_place<'a>(
    key: &MasterKey,
    blob_type: BlobType,
    sealed: &'a mut [u8],
) -> Result<Cow<'a, [u8]>, FormatError> {
    let payload = open_in_place(&key.encryption, &group_aad(blob_type), sealed, "blob group")?;
    unpack_payload_ref(payload, MAX_GROUP_LEN as usize, "blob group")
}

/// The blob `e` names inside its opened group, verified against its id and length.
pub fn blob_in_group<'a>(
    key: &MasterKey,
    e: &PackEntry,
    group: &'a [u8],
) -> Result<&'a [u8], FormatError> {
    let what = || format!("{:?} blob {}", e.blob_type, e.id.short());
    let start = e.group_offset.unwrap_or(0) as usize;
    let plain = start
        .checked_add(e.raw_length as usize)
        .and_then(|end| group.get(start..end))
        .ok_or_else(|| FormatError::LengthMismatch {
            what: what(),
            expected: start as u64 + u64::from(e.raw_length),
            actual: group.len() as u64,
        })?;
    check_plaintext(key, &e.id, plain, what)?;
    Ok(plain)
}

/// The longest postcard encoding of one version-1 [`PackEntry`]: type (1) + id (32) + three
/// u32 varints (5 each).
const MAX_ENTRY_LEN: u64 = 1 + 32 + 3 * 5;
/// Version 2: an entry is at most a `Blob` unit (a variant byte + a version-1 entry); a
/// group adds at most its variant byte, offset, length and blob count (1 + 3 × 5) once.
const MAX_UNIT_LEN: u64 = 1 + MAX_ENTRY_LEN;
const MAX_GROUP_HEAD_LEN: u64 = 1 + 3 * 5;

/// Check an index entry's claims against the format's limits before anything is allocated
/// for it: its plaintext at most `max_raw` bytes (FORMAT.md, "Limits"), and its sealed length
/// at most what sealing `max_raw` bytes stored raw takes (compression is only kept when it
/// shrinks, so a sealed blob is never longer than that).
pub fn check_entry_limits(e: &PackEntry, max_raw: u32) -> Result<(), FormatError> {
    let what = || format!("{:?} blob {}", e.blob_type, e.id.short());
    if e.raw_length > max_raw {
        return Err(FormatError::TooLarge {
            what: what(),
            claimed: u64::from(e.raw_length),
            limit: u64::from(max_raw),
        });
    }
    if let Some(start) = e.group_offset {
        // A group's box holds at most MAX_GROUP_LEN plaintext bytes (data groups since format
        // 2, tree groups since 5; which versions may name them is the decoders' business).
        let end = u64::from(start) + u64::from(e.raw_length);
        if e.raw_length == 0
            || end > u64::from(MAX_GROUP_LEN)
            || u64::from(e.length) > u64::from(MAX_GROUP_LEN) + 1 + SEAL_OVERHEAD as u64
            || (e.length as usize) < SEAL_OVERHEAD + 1
        {
            return Err(FormatError::Malformed {
                what: "index entry",
                detail: format!(
                    "{} claims bytes {start}..{end} of a group of sealed length {}",
                    what(),
                    e.length
                ),
            });
        }
        return Ok(());
    }
    let max_sealed = u64::from(e.raw_length) + 1 + SEAL_OVERHEAD as u64;
    if u64::from(e.length) > max_sealed || (e.length as usize) < SEAL_OVERHEAD + 1 {
        return Err(FormatError::Malformed {
            what: "index entry",
            detail: format!(
                "{} has sealed length {} for {} plaintext bytes",
                what(),
                e.length,
                e.raw_length
            ),
        });
    }
    Ok(())
}

/// Associated data of a sealed version-1 pack header: the pack preamble followed by
/// `"header"` (14 bytes).
pub fn pack_header_aad() -> Vec<u8> {
    pack_header_aad_of(1)
}

/// Associated data of a sealed pack header of format `version`: the pack preamble of that
/// version followed by `"header"`, so a header cannot be decoded as another version's.
pub fn pack_header_aad_of(version: u16) -> Vec<u8> {
    let mut aad = b"cairnP\x01\x00header".to_vec();
    aad[6..8].copy_from_slice(&version.to_le_bytes());
    aad
}

/// zstd level of pack headers, whatever the repository's compression setting.
pub const PACK_HEADER_LEVEL: i32 = 3;

/// Seal a pack header of format `version` (that of the pack's preamble) and append it and
/// its length to `pack`, which must already hold the preamble and the blobs. Fails only for
/// a header that `version` cannot express (grouped blobs in version 1).
pub fn finish_pack(
    key: &MasterKey,
    version: u16,
    pack: &mut Vec<u8>,
    header: &PackHeader,
) -> Result<(), FormatError> {
    finish_pack_with_nonce(key, version, pack, header, &random_nonce())
}

/// [`finish_pack`] with an explicit nonce, for test vectors and reproducible fixtures.
pub fn finish_pack_with_nonce(
    key: &MasterKey,
    version: u16,
    pack: &mut Vec<u8>,
    header: &PackHeader,
    nonce: &[u8; NONCE_LEN],
) -> Result<(), FormatError> {
    let payload = pack_payload(&encode_header(version, header)?, PACK_HEADER_LEVEL);
    let sealed = seal_with_nonce(
        &key.encryption,
        nonce,
        &pack_header_aad_of(version),
        &payload,
    );
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    Ok(())
}

/// Where the sealed header sits, given the pack's total length and its last 4 bytes.
pub fn header_span(pack_len: u64, trailer: [u8; 4]) -> Result<(u64, u64), FormatError> {
    let hlen = u64::from(u32::from_le_bytes(trailer));
    if hlen < SEAL_OVERHEAD as u64 || hlen + 4 + PREAMBLE_LEN as u64 > pack_len {
        return Err(FormatError::Malformed {
            what: "pack",
            detail: format!("header length {hlen} does not fit a pack of {pack_len} bytes"),
        });
    }
    Ok((pack_len - 4 - hlen, hlen))
}

/// Decode a pack's header from the whole pack bytes, and check every entry fits before it.
pub fn decode_pack_header(key: &MasterKey, pack: &[u8]) -> Result<PackHeader, FormatError> {
    let (version, _) = check_preamble(pack, FileKind::Pack)?;
    if pack.len() < PREAMBLE_LEN + 4 {
        return Err(FormatError::Truncated("pack"));
    }
    let mut trailer = [0u8; 4];
    trailer.copy_from_slice(&pack[pack.len() - 4..]);
    let (start, len) = header_span(pack.len() as u64, trailer)?;
    decode_sealed_header(
        key,
        version,
        &pack[start as usize..(start + len) as usize],
        start,
    )
}

/// Decode a sealed header alone (fetched with a range read); `version` is the pack's
/// (from its preamble), `header_start` the header's offset, which every blob must end before.
pub fn decode_sealed_header(
    key: &MasterKey,
    version: u16,
    sealed: &[u8],
    header_start: u64,
) -> Result<PackHeader, FormatError> {
    let payload = key.open(&pack_header_aad_of(version), sealed, "pack header")?;
    // Every sealed box covers at least one sealed byte of the pack before the header, and
    // a group holds at most MAX_GROUP_BLOBS blobs, so the header cannot honestly hold more
    // entries than that; each encodes in at most MAX_ENTRY_LEN bytes. This bounds what a
    // hostile header can make a reader allocate.
    let boxes = header_start.saturating_sub(PREAMBLE_LEN as u64) / (SEAL_OVERHEAD as u64 + 1);
    let bound = if version == 1 {
        boxes.saturating_mul(MAX_ENTRY_LEN)
    } else {
        boxes
            .saturating_mul(MAX_GROUP_BLOBS as u64)
            .saturating_mul(MAX_UNIT_LEN)
            .saturating_add(boxes.saturating_mul(MAX_GROUP_HEAD_LEN))
    };
    let limit = (bound + 16).min(crate::file::MAX_METADATA_LEN as u64);
    let plain = unpack_payload(&payload, limit as usize, "pack header")?;
    let header = decode_header(version, &plain)?;
    check_tiling(&header.entries, header_start)?;
    Ok(header)
}

/// The entries of a pack header must tile the pack exactly: each sealed box (a blob, or a
/// group shared by consecutive entries) starts where the previous one ended, and the blobs
/// of a group tile its plaintext from 0 in order.
fn check_tiling(entries: &[PackEntry], header_start: u64) -> Result<(), FormatError> {
    let bad = |e: &PackEntry, why: &str| FormatError::Malformed {
        what: "pack header",
        detail: format!("entry {}: {why}", e.id.short()),
    };
    let mut expected = PREAMBLE_LEN as u64;
    // The group being walked: (its box's offset, length, next blob's start, blobs so far).
    let mut group: Option<(u32, u32, u64, usize)> = None;
    for e in entries {
        if let Some((off, len, next, n)) = group {
            if e.offset == off && e.length == len {
                let Some(start) = e.group_offset else {
                    return Err(bad(e, "a blob alone shares a group's box"));
                };
                if u64::from(start) != next || n >= MAX_GROUP_BLOBS {
                    return Err(bad(e, "blobs do not tile their group"));
                }
                check_entry_limits(e, u32::MAX)?;
                group = Some((off, len, next + u64::from(e.raw_length), n + 1));
                continue;
            }
        }
        group = None;
        if u64::from(e.offset) != expected || (e.length as usize) < SEAL_OVERHEAD + 1 {
            return Err(bad(e, "bad offset/length"));
        }
        if let Some(start) = e.group_offset {
            if start != 0 {
                return Err(bad(e, "a group does not start with its first blob"));
            }
            check_entry_limits(e, u32::MAX)?;
            group = Some((e.offset, e.length, u64::from(e.raw_length), 1));
        }
        expected += u64::from(e.length);
    }
    if expected != header_start {
        return Err(FormatError::Malformed {
            what: "pack header",
            detail: "entries do not reach the header".into(),
        });
    }
    Ok(())
}
