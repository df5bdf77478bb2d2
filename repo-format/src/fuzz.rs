//! Entry points shared by the `fuzz/` targets and the in-tree fuzz-smoke tests: each decodes
//! arbitrary bytes and must return an error, never panic, hang or allocate without bound.

use crate::{
    decode_pack_header, decode_sealed, open_blob, unpack_payload, BlobType, Config, FileKind, Id, IndexFile, KeyFile,
    Lock, MasterKey, Snapshot, Tree,
};

/// A fixed key, so the fuzzer can also reach past authentication when it learns a valid box.
pub fn fuzz_key() -> MasterKey {
    MasterKey { encryption: [7; 32], id_key: [9; 32], chunker_seed: 0x5eed }
}

/// Tree decoder.
pub fn tree(data: &[u8]) {
    let _ = Tree::decode(data);
}

/// Key file decoder (envelope only: running Argon2 per input would starve the fuzzer).
pub fn key_file(data: &[u8]) {
    let _ = KeyFile::decode(data);
}

/// Snapshot file decoder.
pub fn snapshot(data: &[u8]) {
    let _ = decode_sealed::<Snapshot>(&fuzz_key(), FileKind::Snapshot, data);
    // Also the plaintext decoder behind authentication.
    let _ = crate::from_postcard::<Snapshot>(data, "snapshot");
}

/// Index file decoder.
pub fn index(data: &[u8]) {
    let _ = decode_sealed::<IndexFile>(&fuzz_key(), FileKind::Index, data);
    let _ = crate::from_postcard::<IndexFile>(data, "index");
}

/// Config decoder.
pub fn config(data: &[u8]) {
    if let Ok(c) = decode_sealed::<Config>(&fuzz_key(), FileKind::Config, data) {
        let _ = c.validate();
    }
    if let Ok(c) = crate::from_postcard::<Config>(data, "config") {
        let _ = c.validate();
    }
    let _ = decode_sealed::<Lock>(&fuzz_key(), FileKind::Lock, data);
}

/// Pack header and blob decoders.
pub fn pack(data: &[u8]) {
    let key = fuzz_key();
    let _ = decode_pack_header(&key, data);
    let _ = crate::from_postcard::<crate::PackHeader>(data, "pack header");
    let _ = open_blob(&key, BlobType::Data, &Id::default(), data, 1 << 20);
    let _ = unpack_payload(data, 1 << 20, "fuzz");
}
