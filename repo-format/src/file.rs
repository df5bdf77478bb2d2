//! The framing shared by every repository file: an 8-byte preamble, then a sealed payload.
//!
//! ```text
//! preamble = "cairn" (5 bytes) || kind (1 ASCII byte) || version (u16 little-endian)
//! file     = preamble || nonce (24) || ciphertext || tag (16)        (config, snapshot, index, lock)
//! ```
//! The preamble is the AEAD associated data, so a snapshot cannot be passed off as an index,
//! and a version byte cannot be changed without detection.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::compress::{pack_payload, unpack_payload};
use crate::crypto::{random_nonce, seal_with_nonce, MasterKey, NONCE_LEN};
use crate::FormatError;

/// The magic bytes every cairn file starts with.
pub const MAGIC: &[u8; 5] = b"cairn";
/// Length of the preamble.
pub const PREAMBLE_LEN: usize = 8;
/// The newest repository format version this build writes and reads (`Config::version`).
///
/// Objects carry the version of their own kind's encoding, numbered by the repository
/// version that introduced it: version 2 changed packs and index files (grouped blobs),
/// version 3 index files (condemned packs) and locks (modes, start time); the other kinds are
/// still written as version 1. Version 4 changed no object's encoding: it lets tree blobs name
/// content lists (FORMAT.md §11.1), which only a version-4 repository may hold. Version 5
/// changed packs and index files again: tree blobs may be grouped (FORMAT.md §9.1).
pub const FORMAT_VERSION: u16 = 5;

/// The newest version of `kind`'s encoding this build reads.
pub fn newest_version(kind: FileKind) -> u16 {
    match kind {
        FileKind::Index | FileKind::Pack => 5,
        FileKind::Lock => 3,
        FileKind::Config | FileKind::Key | FileKind::Snapshot => 1,
    }
}

/// Whether `version` is an encoding of `kind` that this build knows. A kind's versions are
/// the repository versions that changed it, so they can have gaps (locks: 1 and 3).
pub fn knows_version(kind: FileKind, version: u16) -> bool {
    match kind {
        FileKind::Lock => matches!(version, 1 | 3),
        FileKind::Pack => matches!(version, 1 | 2 | 5),
        FileKind::Index => matches!(version, 1 | 2 | 3 | 5),
        _ => (1..=newest_version(kind)).contains(&version),
    }
}

/// The version a writer uses for an object of `kind` in a repository of format
/// `repo_version`: the newest encoding of the kind that the repository's version allows.
pub fn object_version(kind: FileKind, repo_version: u16) -> u16 {
    (1..=newest_version(kind).min(repo_version))
        .rev()
        .find(|v| knows_version(kind, *v))
        .unwrap_or(1)
}

/// Upper bound for any decoded metadata payload: the largest of the per-kind limits of
/// [`max_decoded_len`].
pub const MAX_METADATA_LEN: usize = MAX_INDEX_LEN;

/// Largest decoded index file (FORMAT.md, "Limits"). Writers start a new index file long
/// before this (see `MAX_INDEX_BLOBS`).
pub const MAX_INDEX_LEN: usize = 256 << 20;
/// Largest decoded snapshot: paths, tags and excludes of one backup.
pub const MAX_SNAPSHOT_LEN: usize = 16 << 20;
/// Largest decoded config.
pub const MAX_CONFIG_LEN: usize = 1 << 20;
/// Largest decoded lock.
pub const MAX_LOCK_LEN: usize = 64 << 10;
/// Largest decoded tree blob: one directory's listing, including the blob ids of its files
/// (a 64 GiB database of 8 KiB pages alone takes 264 MiB), so the limit is generous; writers
/// refuse to store a larger one.
pub const MAX_TREE_LEN: u32 = 1 << 30;
/// Blobs one index file lists at most (≈ 48 bytes each when encoded, so ≤ 96 MiB).
pub const MAX_INDEX_BLOBS: usize = 2_000_000;

/// The most bytes a sealed file of `kind` may decode to. A hostile zstd frame that claims
/// more is refused before it is inflated past this.
pub fn max_decoded_len(kind: FileKind) -> usize {
    match kind {
        FileKind::Config => MAX_CONFIG_LEN,
        FileKind::Lock => MAX_LOCK_LEN,
        FileKind::Snapshot => MAX_SNAPSHOT_LEN,
        FileKind::Index | FileKind::Key | FileKind::Pack => MAX_INDEX_LEN,
    }
}

/// What a repository file is. The byte is the kind letter in the preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    /// `config`: repository parameters.
    Config,
    /// `keys/<id>`: a password-wrapped master key.
    Key,
    /// `locks/<id>`.
    Lock,
    /// `snapshots/<id>`.
    Snapshot,
    /// `index/<id>`.
    Index,
    /// `data/<xx>/<id>`: a pack.
    Pack,
}

impl FileKind {
    /// All kinds, in the order a repository is listed.
    pub const ALL: [FileKind; 6] = [
        FileKind::Config,
        FileKind::Key,
        FileKind::Lock,
        FileKind::Snapshot,
        FileKind::Index,
        FileKind::Pack,
    ];

    /// The preamble letter.
    pub fn letter(self) -> u8 {
        match self {
            FileKind::Config => b'C',
            FileKind::Key => b'K',
            FileKind::Lock => b'L',
            FileKind::Snapshot => b'S',
            FileKind::Index => b'I',
            FileKind::Pack => b'P',
        }
    }

    /// Human name.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Config => "config",
            FileKind::Key => "key",
            FileKind::Lock => "lock",
            FileKind::Snapshot => "snapshot",
            FileKind::Index => "index",
            FileKind::Pack => "pack",
        }
    }

    /// Directory of this kind inside the repository (`""` for the config file).
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Lock => "locks",
            FileKind::Snapshot => "snapshots",
            FileKind::Index => "index",
            FileKind::Pack => "data",
        }
    }

    fn from_letter(b: u8) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|k| k.letter() == b)
    }
}

/// The 8-byte preamble of a version-1 file of `kind`.
pub fn preamble(kind: FileKind) -> [u8; PREAMBLE_LEN] {
    preamble_of(kind, 1)
}

/// The 8-byte preamble of a file of `kind` at `version`.
pub fn preamble_of(kind: FileKind, version: u16) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..5].copy_from_slice(MAGIC);
    p[5] = kind.letter();
    p[6..8].copy_from_slice(&version.to_le_bytes());
    p
}

/// Check the preamble of `data` and return the version and the rest.
pub fn check_preamble(data: &[u8], kind: FileKind) -> Result<(u16, &[u8]), FormatError> {
    if data.len() < PREAMBLE_LEN {
        if data.len() >= 5 && &data[..5] != MAGIC {
            return Err(FormatError::BadMagic {
                expected: kind.name(),
            });
        }
        return Err(FormatError::Truncated(kind.name()));
    }
    if &data[..5] != MAGIC {
        return Err(FormatError::BadMagic {
            expected: kind.name(),
        });
    }
    if data[5] != kind.letter() {
        let found = FileKind::from_letter(data[5]).map_or_else(
            || format!("unknown ({:#04x})", data[5]),
            |k| k.name().into(),
        );
        return Err(FormatError::WrongKind {
            expected: kind.name(),
            found,
        });
    }
    let version = u16::from_le_bytes([data[6], data[7]]);
    if !knows_version(kind, version) {
        return Err(FormatError::UnsupportedVersion {
            kind: kind.name(),
            version,
            supported: newest_version(kind),
        });
    }
    Ok((version, &data[PREAMBLE_LEN..]))
}

/// Serialize with postcard.
pub fn to_postcard<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on types serde cannot express (maps with non-string keys are fine,
    // unsized sequences are not used here), so an error would be a bug in the type definitions.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Deserialize with postcard, refusing trailing bytes.
pub fn from_postcard<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, FormatError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| FormatError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(FormatError::Malformed {
            what,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

/// Encode a sealed file: preamble, then `seal(aad = preamble, flag || zstd?(postcard(value)))`.
pub fn encode_sealed<T: Serialize>(
    key: &MasterKey,
    kind: FileKind,
    value: &T,
    level: i32,
) -> Vec<u8> {
    encode_sealed_with_nonce(key, kind, value, level, &random_nonce())
}

/// [`encode_sealed`] with an explicit nonce, for test vectors and reproducible fixtures.
///
/// Never reuse a nonce with the same key for different content: writers use [`encode_sealed`].
pub fn encode_sealed_with_nonce<T: Serialize>(
    key: &MasterKey,
    kind: FileKind,
    value: &T,
    level: i32,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    debug_assert!(
        kind != FileKind::Index && kind != FileKind::Lock,
        "index files and locks have their own encoders (IndexFile, Lock::encode_sealed)"
    );
    seal_file(key, kind, 1, &to_postcard(value), level, nonce)
}

/// Seal already encoded bytes as a file of `kind` at `version`: the preamble is the AEAD's
/// associated data.
pub(crate) fn seal_file(
    key: &MasterKey,
    kind: FileKind,
    version: u16,
    encoded: &[u8],
    level: i32,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let pre = preamble_of(kind, version);
    let payload = pack_payload(encoded, level);
    let sealed = seal_with_nonce(&key.encryption, nonce, &pre, &payload);
    let mut out = Vec::with_capacity(PREAMBLE_LEN + sealed.len());
    out.extend_from_slice(&pre);
    out.extend_from_slice(&sealed);
    out
}

/// Open a sealed file of `kind`: its version and decoded (decompressed) payload.
pub(crate) fn open_file(
    key: &MasterKey,
    kind: FileKind,
    data: &[u8],
) -> Result<(u16, Vec<u8>), FormatError> {
    let (version, body) = check_preamble(data, kind)?;
    let payload = key.open(&data[..PREAMBLE_LEN], body, kind.name())?;
    Ok((
        version,
        unpack_payload(&payload, max_decoded_len(kind), kind.name())?,
    ))
}

/// Decode a file written by [`encode_sealed`].
pub fn decode_sealed<T: DeserializeOwned>(
    key: &MasterKey,
    kind: FileKind,
    data: &[u8],
) -> Result<T, FormatError> {
    if kind == FileKind::Index || kind == FileKind::Lock {
        // Index files and locks have their own encodings per version.
        return Err(FormatError::InvalidParameter(format!(
            "{} files are decoded by their own type's decode_sealed",
            kind.name()
        )));
    }
    let (version, plain) = open_file(key, kind, data)?;
    if version != 1 {
        // Only index files, locks and packs have later versions, each with its own decoder
        // (`IndexFile::decode_sealed`, `Lock::decode_sealed`, `decode_pack_header`).
        return Err(FormatError::UnsupportedVersion {
            kind: kind.name(),
            version,
            supported: 1,
        });
    }
    from_postcard(&plain, kind.name())
}
