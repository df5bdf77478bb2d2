//! The cairn repository format: every type that is stored, and its encoding. No I/O.
//!
//! A repository is a set of immutable objects, each named by the unkeyed BLAKE3 of its bytes:
//!
//! | object        | path                | content                                   |
//! |---------------|---------------------|-------------------------------------------|
//! | config        | `config`            | sealed [`Config`]                          |
//! | key           | `keys/<id>`         | [`KeyFile`]: the master key under a password |
//! | lock          | `locks/<id>`        | sealed [`Lock`]                            |
//! | snapshot      | `snapshots/<id>`    | sealed [`Snapshot`]                        |
//! | index         | `index/<id>`        | sealed [`IndexFile`]                       |
//! | pack          | `data/<xx>/<id>`    | sealed blobs + sealed [`PackHeader`]       |
//!
//! The byte-level specification is `FORMAT.md` next to this crate; `testdata/` holds golden
//! vectors that the tests check in both directions.

mod compress;
mod config;
mod crypto;
mod error;
mod file;
mod id;
mod index;
mod key;
mod lock;
mod pack;
pub mod pages;
mod snapshot;
mod tree;

pub use compress::{
    looks_incompressible, pack_payload, pack_payload_into, unpack_payload, unpack_payload_ref,
    FLAG_RAW, FLAG_ZSTD,
};
pub use config::{cdc_limits, ChunkerParams, Config};
pub use crypto::{
    open_in_place, open_with_key, seal_append, seal_with_nonce, KdfParams, MasterKey,
    DEFAULT_KDF_LANES, KDF_MAX_ITERATIONS, KDF_MAX_LANES, KDF_MAX_MEMORY_KIB, KDF_MAX_WORK,
    NONCE_LEN, SEAL_OVERHEAD, TAG_LEN,
};
pub use error::FormatError;
pub use file::{
    check_preamble, decode_sealed, encode_sealed, encode_sealed_with_nonce, from_postcard,
    knows_version, max_decoded_len, newest_version, object_version, preamble, preamble_of,
    to_postcard, FileKind, FORMAT_VERSION, MAGIC, MAX_CONFIG_LEN, MAX_INDEX_BLOBS, MAX_INDEX_LEN,
    MAX_LOCK_LEN, MAX_METADATA_LEN, MAX_SNAPSHOT_LEN, MAX_TREE_LEN, PREAMBLE_LEN,
};
pub use id::Id;
pub use index::{IndexFile, IndexPack};
pub use key::KeyFile;
pub use lock::{Lock, LockMode};
pub use pack::{
    blob_aad, blob_in_group, check_entry_limits, decode_pack_header, decode_sealed_header,
    finish_pack, finish_pack_with_nonce, group_aad, group_entries, header_span, open_blob,
    open_blob_in_place, open_group_in_place, pack_header_aad, pack_header_aad_of, seal_blob,
    seal_blob_into, seal_blob_with_nonce, seal_group_into, seal_group_with_nonce, BlobType,
    PackEntry, PackHeader, MAX_GROUP_BLOBS, MAX_GROUP_LEN, PACK_HEADER_LEVEL,
};
pub use pages::{
    default_page_rules, sqlite_cell_cuts, sqlite_window_cuts, PageFormat, PageRule, PageStrategy,
    BBOLT_CHUNKS, GIT_PACK_CHUNKS, SQLITE_MIN_PIECE, TEXT_CHUNKS,
};
pub use snapshot::{Snapshot, SnapshotSummary, Timestamp};
pub use tree::{
    content_list_runs, decode_content_list, encode_content_list, Content, FileTime, Node, NodeKind,
    Tree, Xattr, CONTENT_LISTS_VERSION, LIST_MAX_RUN, LIST_MIN_RUN, LIST_SPACING, LIST_THRESHOLD,
    MAX_CONTENT_IDS, MAX_LIST_IDS,
};

pub mod fuzz;
