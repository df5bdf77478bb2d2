//! Packs: many sealed blobs, then a sealed header that lists them, then the header length.
//!
//! ```text
//! pack   = preamble("P") || blob_1 || … || blob_n || header || header_len (u32 LE)
//! blob_i = seal(aad = blob_aad(type, id), flag || zstd?(plaintext))
//! header = seal(aad = preamble || "header", flag || zstd?(postcard(PackHeader)))
//! ```
//! Blob ids are bound into the associated data, so a blob moved or swapped to another
//! index entry fails authentication.

use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use crate::compress::{pack_payload, pack_payload_into, unpack_payload, unpack_payload_ref};
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
    /// Offset of the sealed blob from the start of the pack file.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// The pack header.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackHeader {
    /// Entries in file order.
    pub entries: Vec<PackEntry>,
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
    // Room for the largest outcome (a raw payload) up front and exactly: `out` is a per-thread
    // buffer reused for every blob, and amortized growth would double it for the tag.
    out.reserve_exact(SEAL_OVERHEAD + 1 + plaintext.len());
    seal_append(
        &key.encryption,
        &random_nonce(),
        &blob_aad(blob_type, id),
        out,
        |o| pack_payload_into(plaintext, level, o),
    );
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
    seal_with_nonce(
        &key.encryption,
        nonce,
        &blob_aad(blob_type, id),
        &pack_payload(plaintext, level),
    )
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
    let actual = key.blob_id(&plain);
    if actual != *id {
        return Err(FormatError::IdMismatch {
            what,
            expected: id.to_hex(),
            actual: actual.to_hex(),
        });
    }
    if plain.len() != raw_length as usize {
        return Err(FormatError::LengthMismatch {
            what,
            expected: u64::from(raw_length),
            actual: plain.len() as u64,
        });
    }
    Ok(plain)
}

/// The longest postcard encoding of one [`PackEntry`]: type (1) + id (32) + three u32 varints (5 each).
const MAX_ENTRY_LEN: u64 = 1 + 32 + 3 * 5;

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

/// Associated data of a sealed pack header: the pack preamble followed by `"header"` (14 bytes).
pub fn pack_header_aad() -> Vec<u8> {
    // Scheme constant (pack preamble of version 1 + "header"), not derived from the build's
    // current version, for the same reason as in `blob_aad`.
    b"cairnP\x01\x00header".to_vec()
}

/// zstd level of pack headers, whatever the repository's compression setting.
pub const PACK_HEADER_LEVEL: i32 = 3;

/// Seal a pack header and append it and its length to `pack`, which must already hold the
/// preamble and the blobs.
pub fn finish_pack(key: &MasterKey, pack: &mut Vec<u8>, header: &PackHeader) {
    finish_pack_with_nonce(key, pack, header, &random_nonce());
}

/// [`finish_pack`] with an explicit nonce, for test vectors and reproducible fixtures.
pub fn finish_pack_with_nonce(
    key: &MasterKey,
    pack: &mut Vec<u8>,
    header: &PackHeader,
    nonce: &[u8; NONCE_LEN],
) {
    let payload = pack_payload(&to_postcard(header), PACK_HEADER_LEVEL);
    let sealed = seal_with_nonce(&key.encryption, nonce, &pack_header_aad(), &payload);
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
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
    check_preamble(pack, FileKind::Pack)?;
    if pack.len() < PREAMBLE_LEN + 4 {
        return Err(FormatError::Truncated("pack"));
    }
    let mut trailer = [0u8; 4];
    trailer.copy_from_slice(&pack[pack.len() - 4..]);
    let (start, len) = header_span(pack.len() as u64, trailer)?;
    decode_sealed_header(key, &pack[start as usize..(start + len) as usize], start)
}

/// Decode a sealed header alone (fetched with a range read); `header_start` is its offset,
/// which every blob must end before.
pub fn decode_sealed_header(
    key: &MasterKey,
    sealed: &[u8],
    header_start: u64,
) -> Result<PackHeader, FormatError> {
    let payload = key.open(&pack_header_aad(), sealed, "pack header")?;
    // Every entry covers at least one sealed byte of the pack before the header, so the
    // header cannot honestly hold more entries than that; each encodes in at most
    // MAX_ENTRY_LEN bytes. This bounds what a hostile header can make a reader allocate.
    let max_entries = header_start.saturating_sub(PREAMBLE_LEN as u64) / (SEAL_OVERHEAD as u64 + 1);
    let limit =
        (max_entries.saturating_mul(MAX_ENTRY_LEN) + 16).min(crate::file::MAX_METADATA_LEN as u64);
    let plain = unpack_payload(&payload, limit as usize, "pack header")?;
    let header: PackHeader = from_postcard(&plain, "pack header")?;
    let mut expected = PREAMBLE_LEN as u64;
    for e in &header.entries {
        if u64::from(e.offset) != expected || (e.length as usize) < SEAL_OVERHEAD + 1 {
            return Err(FormatError::Malformed {
                what: "pack header",
                detail: format!("entry {} at bad offset/length", e.id.short()),
            });
        }
        expected += u64::from(e.length);
    }
    if expected != header_start {
        return Err(FormatError::Malformed {
            what: "pack header",
            detail: "entries do not reach the header".into(),
        });
    }
    Ok(header)
}
