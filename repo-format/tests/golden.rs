//! Golden vectors of format v1, checked in both directions.
//!
//! - Encode: the fixed inputs below (fixed master key, nonces, salt, cheap Argon2id cost)
//!   encode to exactly the bytes stored in `testdata/vectors.json`.
//! - Decode: the stored bytes decode (and open, with the fixed key) to exactly the fixed values,
//!   and the `reject/` vectors are refused with the expected error.
//!
//! The annotated hex dumps in `FORMAT.md` (between `<!-- BEGIN GENERATED name -->` and
//! `<!-- END GENERATED name -->`) are generated here too, and checked to be up to date.
//!
//! `CAIRN_BLESS=1 cargo test -p cairn-format --test golden` rewrites both files. Blessing a
//! changed byte of an existing vector is a FORMAT CHANGE: it needs a new `FORMAT_VERSION`
//! (and readers that keep decoding v1), never a silent re-bless.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;

use cairn_format::{
    blob_aad, blob_in_group, check_preamble, decode_pack_header, decode_sealed,
    encode_sealed_with_nonce, finish_pack_with_nonce, from_postcard, group_aad, group_entries,
    open_blob, open_group_in_place, open_with_key, pack_header_aad, pack_header_aad_of, preamble,
    preamble_of, seal_blob_with_nonce, seal_group_with_nonce, to_postcard, BlobType, ChunkerParams,
    Config, Content, FileKind, FormatError, Id, IndexFile, IndexPack, KdfParams, KeyFile, Lock,
    LockMode, MasterKey, Node, NodeKind, PackEntry, PackHeader, Snapshot, SnapshotSummary,
    Timestamp, Tree, Xattr, FORMAT_VERSION, NONCE_LEN, PREAMBLE_LEN, TAG_LEN,
};
use serde::Serialize;
use serde_json::{json, Value};

const BLESS_HINT: &str = "If this change is intended, run `CAIRN_BLESS=1 cargo test -p cairn-format --test golden` \
and commit testdata/vectors.json and FORMAT.md. A changed byte in an existing vector is a FORMAT CHANGE: \
bump FORMAT_VERSION and keep decoding v1 instead of re-blessing v1 bytes.";

// ---------------------------------------------------------------------------------------------
// Fixed inputs
// ---------------------------------------------------------------------------------------------

/// `start, start+1, …, start+31`.
fn seq(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn nonce(tag: u8) -> [u8; NONCE_LEN] {
    [tag; NONCE_LEN]
}

const PASSWORD: &[u8] = b"cairn-golden-v1";
/// The version of the vectors below that existing repositories hold; version 2's own
/// vectors (groups) are named `*-v2`.
const V1: u16 = 1;
const N_BLOB_DATA: u8 = 0xb1;
const N_BLOB_TREE: u8 = 0xb2;
const N_PACK_HEADER: u8 = 0xb3;
const N_CONFIG: u8 = 0xc0;
const N_KEY: u8 = 0xc1;
const N_LOCK: u8 = 0xc2;
const N_SNAPSHOT: u8 = 0xc3;
const N_SNAPSHOT_ZSTD: u8 = 0xc4;
const N_INDEX: u8 = 0xc5;
const N_GROUP: u8 = 0xd1;
const N_BLOB_V2: u8 = 0xd2;
const N_PACK_HEADER_V2: u8 = 0xd3;
const N_INDEX_V2: u8 = 0xd4;
const N_LOCK_V3: u8 = 0xe1;
const N_INDEX_V3: u8 = 0xe2;
const N_GROUP_V5: u8 = 0xf1;
const N_PACK_HEADER_V5: u8 = 0xf2;
const N_INDEX_V5: u8 = 0xf3;

/// 2024-05-01 03:00:00 +02:00.
fn time() -> Timestamp {
    Timestamp {
        unix_nanos: 1_714_525_200_000_000_000,
        utc_offset_secs: 7200,
    }
}

struct Fx {
    key: MasterKey,
    hello: Vec<u8>,
    hello_id: Id,
    tree: Tree,
    tree_bytes: Vec<u8>,
    tree_id: Id,
    blob_hello: Vec<u8>,
    blob_tree: Vec<u8>,
    header: PackHeader,
    pack: Vec<u8>,
    pack_id: Id,
    index: IndexFile,
    snapshot: Snapshot,
    config: Config,
    lock: Lock,
    keyfile: KeyFile,
}

fn fixture() -> Fx {
    let key = MasterKey {
        encryption: seq(0x00),
        id_key: seq(0x20),
        chunker_seed: 0x0123_4567_89ab_cdef,
    };
    let hello = b"hello world\n".to_vec();
    let hello_id = key.blob_id(&hello);
    let mut tree = Tree {
        nodes: vec![Node {
            name: b"hello.txt".to_vec(),
            kind: NodeKind::File,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            user: "alice".into(),
            group: "alice".into(),
            mtime: cairn_format::FileTime {
                secs: 1_714_525_200,
                nanos: 0,
            },
            atime: cairn_format::FileTime {
                secs: 1_714_525_201,
                nanos: 500_000_000,
            },
            ctime: cairn_format::FileTime {
                secs: 1_714_525_200,
                nanos: 0,
            },
            size: hello.len() as u64,
            inode: 1234,
            device: 2049,
            rdev: 0,
            links: 1,
            link_target: Vec::new(),
            xattrs: vec![Xattr {
                name: b"user.note".to_vec(),
                value: b"hi".to_vec(),
            }],
            content: Content::Blobs(vec![hello_id]),
            subtree: None,
        }],
    };
    tree.canonicalize();
    let tree_bytes = tree.encode();
    let tree_id = key.blob_id(&tree_bytes);

    let blob_hello = seal_blob_with_nonce(
        &key,
        BlobType::Data,
        &hello_id,
        &hello,
        0,
        &nonce(N_BLOB_DATA),
    );
    let blob_tree = seal_blob_with_nonce(
        &key,
        BlobType::Tree,
        &tree_id,
        &tree_bytes,
        0,
        &nonce(N_BLOB_TREE),
    );
    let mut pack = preamble(FileKind::Pack).to_vec();
    let mut entries = Vec::new();
    for (t, id, plain, sealed) in [
        (BlobType::Data, hello_id, &hello, &blob_hello),
        (BlobType::Tree, tree_id, &tree_bytes, &blob_tree),
    ] {
        entries.push(PackEntry {
            blob_type: t,
            id,
            offset: pack.len() as u32,
            length: sealed.len() as u32,
            raw_length: plain.len() as u32,
            group_offset: None,
        });
        pack.extend_from_slice(sealed);
    }
    let header = PackHeader { entries };
    finish_pack_with_nonce(&key, 1, &mut pack, &header, &nonce(N_PACK_HEADER)).unwrap();
    let pack_id = Id::of_object(&pack);

    let index = IndexFile {
        supersedes: Vec::new(),
        packs: vec![IndexPack::new(pack_id, header.entries.clone())],
    };
    let snapshot = Snapshot {
        time: time(),
        parent: Some(Id([0x77; 32])),
        tree: tree_id,
        paths: vec![b"/home/alice".to_vec()],
        hostname: "fixture".into(),
        username: "alice".into(),
        uid: 1000,
        gid: 1000,
        tags: vec!["daily".into()],
        excludes: vec!["*.tmp".into()],
        program_version: "cairn 0.1.0".into(),
        summary: Some(SnapshotSummary {
            backup_start: time(),
            backup_end: Timestamp {
                unix_nanos: time().unix_nanos + 2_000_000_000,
                utc_offset_secs: 7200,
            },
            files_new: 1,
            files_changed: 0,
            files_unmodified: 0,
            dirs_new: 1,
            dirs_changed: 0,
            dirs_unmodified: 0,
            data_blobs: 1,
            tree_blobs: 1,
            data_added: (hello.len() + tree_bytes.len()) as u64,
            data_added_packed: (blob_hello.len() + blob_tree.len()) as u64,
            total_files_processed: 1,
            total_bytes_processed: hello.len() as u64,
            errors: 0,
        }),
    };
    let config = Config {
        version: V1,
        repo_id: seq(0x60),
        chunker: ChunkerParams::default_bulk(),
        compression_level: 3,
        pack_size: 16 << 20,
        page_rules: first_page_rules(),
    };
    let lock = Lock {
        time: time(),
        started: Timestamp::default(),
        mode: LockMode::Shared,
        hostname: "fixture".into(),
        username: "alice".into(),
        pid: 4242,
    };
    let kdf = KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
        salt: seq(0x40),
    };
    let keyfile = KeyFile::wrap(
        &key,
        PASSWORD,
        kdf,
        time(),
        "fixture".into(),
        "alice".into(),
        nonce(N_KEY),
    )
    .unwrap();
    Fx {
        key,
        hello,
        hello_id,
        tree,
        tree_bytes,
        tree_id,
        blob_hello,
        blob_tree,
        header,
        pack,
        pack_id,
        index,
        snapshot,
        config,
        lock,
        keyfile,
    }
}

/// Version 2: a pack holding a group of two data blobs and a data blob alone, and the
/// index file listing it.
struct FxV2 {
    pieces: [Vec<u8>; 3],
    group: Vec<u8>,
    blob: Vec<u8>,
    header: PackHeader,
    pack: Vec<u8>,
    pack_id: Id,
    index: IndexFile,
}

const V2: u16 = 2;

fn fixture_v2(fx: &Fx) -> FxV2 {
    let key = &fx.key;
    let pieces = [
        b"hello world\n".to_vec(),
        b"hello again, world\n".to_vec(),
        b"a blob alone\n".to_vec(),
    ];
    let group = seal_group_with_nonce(
        key,
        BlobType::Data,
        &pieces[..2].concat(),
        0,
        &nonce(N_GROUP),
    );
    let alone_id = key.blob_id(&pieces[2]);
    let blob = seal_blob_with_nonce(
        key,
        BlobType::Data,
        &alone_id,
        &pieces[2],
        0,
        &nonce(N_BLOB_V2),
    );
    let mut pack = preamble_of(FileKind::Pack, V2).to_vec();
    let mut entries = group_entries(
        BlobType::Data,
        pack.len() as u32,
        group.len() as u32,
        pieces[..2].iter().map(|p| (key.blob_id(p), p.len() as u32)),
    )
    .unwrap();
    pack.extend_from_slice(&group);
    entries.push(PackEntry {
        blob_type: BlobType::Data,
        id: alone_id,
        offset: pack.len() as u32,
        length: blob.len() as u32,
        raw_length: pieces[2].len() as u32,
        group_offset: None,
    });
    pack.extend_from_slice(&blob);
    let header = PackHeader { entries };
    finish_pack_with_nonce(key, V2, &mut pack, &header, &nonce(N_PACK_HEADER_V2)).unwrap();
    let pack_id = Id::of_object(&pack);
    let index = IndexFile {
        supersedes: vec![Id([0x55; 32])],
        packs: vec![IndexPack::new(pack_id, header.entries.clone())],
    };
    FxV2 {
        pieces,
        group,
        blob,
        header,
        pack,
        pack_id,
        index,
    }
}

const V5: u16 = 5;

/// Version 5's pack: the content list and the tree of version 4 in one tree group (stored
/// raw, so the bytes show), and an index file listing the pack.
struct FxV5 {
    pieces: [Vec<u8>; 2],
    group: Vec<u8>,
    header: PackHeader,
    pack: Vec<u8>,
    index: IndexFile,
}

fn fixture_v5(fx: &Fx) -> FxV5 {
    let key = &fx.key;
    let (list, _, tree) = fixture_v4(fx);
    let pieces = [list, tree.encode()];
    let group = seal_group_with_nonce(key, BlobType::Tree, &pieces.concat(), 0, &nonce(N_GROUP_V5));
    let mut pack = preamble_of(FileKind::Pack, V5).to_vec();
    let entries = group_entries(
        BlobType::Tree,
        pack.len() as u32,
        group.len() as u32,
        pieces.iter().map(|p| (key.blob_id(p), p.len() as u32)),
    )
    .unwrap();
    pack.extend_from_slice(&group);
    let header = PackHeader { entries };
    finish_pack_with_nonce(key, V5, &mut pack, &header, &nonce(N_PACK_HEADER_V5)).unwrap();
    let pack_id = Id::of_object(&pack);
    let index = IndexFile {
        supersedes: Vec::new(),
        packs: vec![IndexPack::new(pack_id, header.entries.clone())],
    };
    FxV5 {
        pieces,
        group,
        header,
        pack,
        index,
    }
}

/// The vectors of version 5's addition: groups of tree blobs.
fn vectors_v5(fx: &Fx, out: &mut Vec<Vector>) {
    assert_eq!(cairn_format::FORMAT_VERSION, V5);
    let v = fixture_v5(fx);
    out.push(preamble_vector("preamble/pack-v5", FileKind::Pack, V5));
    out.push(preamble_vector("preamble/index-v5", FileKind::Index, V5));
    out.push(aad_vector(
        "aad/group-tree",
        "tree group AAD: \"cairnG\" || 02 00 || 'T'",
        group_aad(BlobType::Tree).to_vec(),
    ));
    {
        let key = fx.key.clone();
        let header = v.header.clone();
        let pieces = v.pieces.clone();
        out.push(vector(
            "group/trees-v5",
            format!(
                "seal(nonce = {N_GROUP_V5:02x}×24, aad = aad/group-tree, 0x00 || content-list-v4 || tree-v4): \
                 a group of two tree blobs"
            ),
            v.group.clone(),
            None,
            Box::new(move |b| {
                let group = open_group_in_place(&key, BlobType::Tree, &mut b.to_vec())
                    .map_err(|e| e.to_string())?
                    .into_owned();
                for (e, want) in header.entries.iter().zip(&pieces) {
                    same("grouped tree", blob_in_group(&key, e, &group).map(<[u8]>::to_vec), want)?;
                }
                if open_group_in_place(&key, BlobType::Data, &mut b.to_vec()).is_ok() {
                    return Err("a tree group opened as a data group".into());
                }
                Ok(())
            }),
        ));
    }
    let want = v.header.clone();
    out.push(vector(
        "postcard/pack_header-v5",
        "postcard of the v5 pack header: one TreeGroup unit (variant 2: offset, length, blobs as \
         (id, raw_length))",
        v.header.encode(V5).unwrap(),
        json_of(&want),
        Box::new(move |b| same("postcard/pack_header-v5", PackHeader::decode(V5, b), &want)),
    ));
    out.push(vector(
        "reject/pack_header-v5-as-v2",
        "postcard/pack_header-v5 read as a version-2 header: refused (no tree groups before 5)",
        v.header.encode(V5).unwrap(),
        None,
        Box::new(|b| {
            refused(PackHeader::decode(V2, b), |e| {
                matches!(e, FormatError::Malformed { .. })
            })
        }),
    ));
    {
        let key = fx.key.clone();
        let header = v.header.clone();
        let pieces = v.pieces.clone();
        out.push(vector(
            "pack/trees-v5",
            format!(
                "preamble v5 || group/trees-v5 || seal(nonce = {N_PACK_HEADER_V5:02x}×24, aad = \"cairnP\" 05 00 \"header\", \
                 0x00 || postcard/pack_header-v5) || u32 LE length"
            ),
            v.pack.clone(),
            json_of(&v.header),
            Box::new(move |b| {
                same("pack header", decode_pack_header(&key, b), &header)?;
                let e = &header.entries[0];
                let sealed = &b[e.offset as usize..(e.offset + e.length) as usize];
                let group = open_group_in_place(&key, BlobType::Tree, &mut sealed.to_vec())
                    .map_err(|e| e.to_string())?
                    .into_owned();
                for (e, want) in header.entries.iter().zip(&pieces) {
                    same("pack blob", blob_in_group(&key, e, &group).map(<[u8]>::to_vec), want)?;
                }
                Ok(())
            }),
        ));
    }
    out.push(object_id_vector(
        "object_id/pack-v5",
        "unkeyed BLAKE3 of pack/trees-v5".into(),
        v.pack.clone(),
    ));
    let want = v.index.clone();
    out.push(vector(
        "postcard/index-v5",
        "postcard(IndexFile) of version 5 listing pack/trees-v5: as version 3, with version-5 units",
        v.index.encode(V5).unwrap(),
        json_of(&want),
        Box::new(move |b| same("postcard/index-v5", IndexFile::decode(V5, b), &want)),
    ));
    let key = fx.key.clone();
    let want = v.index.clone();
    out.push(vector(
        "sealed/index-v5",
        format!(
            "preamble index v5 || seal(nonce = {N_INDEX_V5:02x}×24, 0x00 || postcard/index-v5)"
        ),
        v.index
            .encode_sealed_with_nonce(&fx.key, V5, 0, &nonce(N_INDEX_V5))
            .unwrap(),
        json_of(&want),
        Box::new(move |b| same("sealed index v5", IndexFile::decode_sealed(&key, b), &want)),
    ));
}

const V3: u16 = 3;

/// Version 3's fixtures: a maintenance lock, and an index file with a live pack (the v2 pack),
/// a condemned pack with its blobs, and a condemned pack no index named (no blobs).
fn fixture_v3(fx: &Fx) -> (Lock, IndexFile) {
    let v = fixture_v2(fx);
    let lock = Lock {
        time: time(),
        started: Timestamp {
            unix_nanos: time().unix_nanos - 3_600_000_000_000,
            utc_offset_secs: time().utc_offset_secs,
        },
        mode: LockMode::Maintenance,
        ..fx.lock.clone()
    };
    let condemned = Timestamp {
        unix_nanos: time().unix_nanos - 86_400_000_000_000,
        utc_offset_secs: 0,
    };
    let index = IndexFile {
        supersedes: vec![Id([0x55; 32])],
        packs: vec![
            IndexPack::new(v.pack_id, v.header.entries.clone()),
            IndexPack {
                id: fx.index.packs[0].id,
                blobs: fx.index.packs[0].blobs.clone(),
                condemned: Some(condemned),
            },
            IndexPack {
                id: Id([0x66; 32]),
                blobs: Vec::new(),
                condemned: Some(condemned),
            },
        ],
    };
    (lock, index)
}

const V4: u16 = 4;

/// Version 4's content list and a tree naming it beside the version-1 fixture's file node:
/// `twice.txt` is `hello world\n` twice, named through one list.
fn fixture_v4(fx: &Fx) -> (Vec<u8>, Id, Tree) {
    let list = cairn_format::encode_content_list(&[fx.hello_id, fx.hello_id]);
    let list_id = fx.key.blob_id(&list);
    let mut twice = fx.tree.nodes[0].clone();
    twice.name = b"twice.txt".to_vec();
    twice.size = 24;
    twice.inode += 1;
    twice.xattrs.clear();
    twice.content = Content::Lists(vec![list_id]);
    let mut tree = fx.tree.clone();
    tree.nodes.push(twice);
    tree.canonicalize();
    (list, list_id, tree)
}

/// The vectors of version 4's additions: content lists and the trees that name them.
fn vectors_v4(fx: &Fx, out: &mut Vec<Vector>) {
    let (list, list_id, tree) = fixture_v4(fx);
    const { assert!(cairn_format::FORMAT_VERSION >= V4) };
    let want = vec![fx.hello_id, fx.hello_id];
    out.push(vector(
        "content-list-v4",
        "a content list: 00 'L' 04 00 || postcard(Vec<Id>), the plaintext of a tree-type blob",
        list.clone(),
        json_of(&want),
        Box::new(move |b| same("content list", cairn_format::decode_content_list(b), &want)),
    ));
    let key = fx.key.clone();
    out.push(vector(
        "blob-id/content-list-v4",
        "keyed BLAKE3 (id_key) of content-list-v4: the id a tree names it by",
        list_id.0.to_vec(),
        None,
        Box::new(move |b| {
            if b == key.blob_id(&list).0 {
                Ok(())
            } else {
                Err("content list id differs".into())
            }
        }),
    ));
    let bytes = tree.encode();
    let want = tree.clone();
    out.push(vector(
        "tree-v4",
        "a tree naming a content list: 00 'T' 04 00 || postcard(nodes) || postcard(Vec<u32>: \
         the nodes whose content ids are lists)",
        bytes.clone(),
        json_of(&want),
        Box::new(move |b| same("tree v4", Tree::decode(b), &want)),
    ));
    // What version 4 readers refuse.
    let mut no_lists = bytes[..4].to_vec();
    no_lists.extend(to_postcard(&(&fx.tree.nodes, Vec::<u32>::new())));
    out.push(vector(
        "reject/tree-v4-without-lists",
        "a version-4 tree naming no content list: refused (such a tree has one encoding, version 1)",
        no_lists,
        None,
        Box::new(|b| refused(Tree::decode(b), |e| matches!(e, FormatError::Malformed { .. }))),
    ));
    let mut v5 = bytes.clone();
    v5[2] = 5;
    out.push(vector(
        "reject/tree-v5",
        "tree-v4 marked version 5: refused (tree encodings stop at version 4; version 5 changed packs)",
        v5,
        None,
        Box::new(|b| {
            refused(Tree::decode(b), |e| {
                matches!(e, FormatError::UnsupportedVersion { version: 5, .. })
            })
        }),
    ));
    let mut on_dir = bytes[..4].to_vec();
    let mut dir = fx.tree.nodes[0].clone();
    dir.kind = NodeKind::Dir;
    dir.subtree = Some(list_id);
    dir.content = Content::Blobs(vec![list_id]);
    on_dir.extend(to_postcard(&(vec![dir], vec![0u32])));
    out.push(vector(
        "reject/tree-v4-lists-on-dir",
        "a version-4 tree whose content-list node is a directory: refused",
        on_dir,
        None,
        Box::new(|b| {
            refused(Tree::decode(b), |e| {
                matches!(e, FormatError::Malformed { .. })
            })
        }),
    ));
    // The crash input the content_list fuzz target found: a one-id list whose length is
    // the overlong varint `81 00`.
    let mut overlong = cairn_format::encode_content_list(&[list_id]);
    overlong.splice(4..5, [0x81, 0x00]);
    out.push(vector(
        "reject/content-list-overlong-length",
        "a content list whose id count is an overlong varint (81 00 for 1): refused, one encoding per list",
        overlong,
        None,
        Box::new(|b| {
            refused(cairn_format::decode_content_list(b), |e| {
                matches!(e, FormatError::Malformed { .. })
            })
        }),
    ));
    out.push(vector(
        "reject/content-list-empty",
        "a content list of no ids: refused",
        cairn_format::encode_content_list(&[]),
        None,
        Box::new(|b| {
            refused(cairn_format::decode_content_list(b), |e| {
                matches!(e, FormatError::Malformed { .. })
            })
        }),
    ));
}

/// The vectors of version 3's additions.
fn vectors_v3(fx: &Fx, out: &mut Vec<Vector>) {
    let (lock, index) = fixture_v3(fx);
    out.push(preamble_vector("preamble/index-v3", FileKind::Index, V3));
    out.push(preamble_vector("preamble/lock-v3", FileKind::Lock, V3));
    {
        let want = lock.clone();
        out.push(vector(
            "postcard/lock-v3",
            "postcard of a version-3 lock: time, started, mode (LockMode variant index), hostname, username, pid",
            lock.encode(V3).unwrap(),
            json_of(&json!({
                "time": lock.time,
                "started": lock.started,
                "mode": "Maintenance",
                "hostname": lock.hostname,
                "username": lock.username,
                "pid": lock.pid,
            })),
            Box::new(move |b| same("postcard/lock-v3", Lock::decode(V3, b), &want)),
        ));
        let want = lock.clone();
        let key = fx.key.clone();
        out.push(vector(
            "sealed/lock-v3",
            format!(
                "preamble v3 || seal(nonce = {N_LOCK_V3:02x}×24, aad = preamble, 0x00 || postcard/lock-v3)"
            ),
            lock.encode_sealed_with_nonce(&fx.key, V3, 0, &nonce(N_LOCK_V3)).unwrap(),
            None,
            Box::new(move |b| same("sealed/lock-v3", Lock::decode_sealed(&key, b), &want)),
        ));
    }
    {
        let want = index.clone();
        out.push(vector(
            "postcard/index-v3",
            "postcard of a version-3 index file: supersedes, then per pack (id, condemned: \
             Option<Timestamp>, units); a live pack, a condemned one, a condemned one without blobs",
            index.encode(V3).unwrap(),
            json_of(&index),
            Box::new(move |b| same("postcard/index-v3", IndexFile::decode(V3, b), &want)),
        ));
        let want = index.clone();
        let key = fx.key.clone();
        out.push(vector(
            "sealed/index-v3",
            format!(
                "preamble v3 || seal(nonce = {N_INDEX_V3:02x}×24, aad = preamble, 0x00 || postcard/index-v3)"
            ),
            index.encode_sealed_with_nonce(&fx.key, V3, 0, &nonce(N_INDEX_V3)).unwrap(),
            None,
            Box::new(move |b| same("sealed/index-v3", IndexFile::decode_sealed(&key, b), &want)),
        ));
    }
    // What version 3 readers refuse.
    {
        let key = fx.key.clone();
        let mut lock_v2 = lock
            .encode_sealed_with_nonce(&fx.key, V3, 0, &nonce(N_LOCK_V3))
            .unwrap();
        lock_v2[6..8].copy_from_slice(&2u16.to_le_bytes());
        out.push(vector(
            "reject/lock-v2",
            "sealed/lock-v3 with version 2: locks have versions 1 and 3 only, refused before decryption",
            lock_v2,
            None,
            Box::new(move |b| {
                refused(Lock::decode_sealed(&key, b), |e| {
                    matches!(e, FormatError::UnsupportedVersion { version: 2, .. })
                })
            }),
        ));
        // [supersedes: 0][packs: 1][id: 32 bytes][condemned: None][units: 0]
        let mut live_empty = vec![0x00, 0x01];
        live_empty.extend_from_slice(&[0x66; 32]);
        live_empty.extend_from_slice(&[0x00, 0x00]);
        out.push(vector(
            "reject/index-v3-live-empty",
            "postcard of a v3 index file with a live pack record listing no blobs: refused \
             (only a condemned record may be empty)",
            live_empty,
            None,
            Box::new(|b| {
                refused(IndexFile::decode(V3, b), |e| {
                    matches!(e, FormatError::Malformed { .. })
                })
            }),
        ));
        let v2_index = fixture_v2(fx).index;
        let condemned = index.clone();
        out.push(vector(
            "reject/index-v2-condemned",
            "a condemned pack cannot be written as version 2 (nor 1): the encoder refuses",
            v2_index.encode(V2).unwrap(),
            None,
            Box::new(move |_| {
                refused(condemned.encode(V2), |e| {
                    matches!(e, FormatError::InvalidParameter(_))
                })
            }),
        ));
    }
}

/// The vectors of version 2's additions.
fn vectors_v2(fx: &Fx, out: &mut Vec<Vector>) {
    let v = fixture_v2(fx);
    out.push(preamble_vector("preamble/index-v2", FileKind::Index, V2));
    out.push(preamble_vector("preamble/pack-v2", FileKind::Pack, V2));
    out.push(aad_vector(
        "aad/group",
        "group AAD: \"cairnG\" || 02 00 || 'D'",
        group_aad(BlobType::Data).to_vec(),
    ));
    out.push(aad_vector(
        "aad/pack-header-v2",
        "pack header AAD of version 2: \"cairnP\" 02 00 \"header\"",
        pack_header_aad_of(V2),
    ));
    {
        let key = fx.key.clone();
        let header = v.header.clone();
        let pieces = v.pieces.clone();
        out.push(vector(
            "group/hello-v2",
            format!(
                "seal(nonce = {N_GROUP:02x}×24, aad = aad/group, 0x00 || \"hello world\\n\" || \"hello again, world\\n\"): \
                 a group of two data blobs"
            ),
            v.group.clone(),
            None,
            Box::new(move |b| {
                let group = open_group_in_place(&key, BlobType::Data, &mut b.to_vec())
                    .map_err(|e| e.to_string())?
                    .into_owned();
                for (e, want) in header.entries.iter().zip(&pieces).take(2) {
                    same("grouped blob", blob_in_group(&key, e, &group).map(<[u8]>::to_vec), want)?;
                }
                Ok(())
            }),
        ));
    }
    {
        let want = v.header.clone();
        out.push(vector(
            "postcard/pack_header-v2",
            "postcard of the v2 pack header: units, a Group (variant 1: offset, length, blobs as \
             (id, raw_length)) then a Blob (variant 0: a v1 entry)",
            v.header.encode(V2).unwrap(),
            json_of(&want),
            Box::new(move |b| same("postcard/pack_header-v2", PackHeader::decode(V2, b), &want)),
        ));
        let want = v.index.clone();
        out.push(vector(
            "postcard/index-v2",
            "postcard(IndexFile) of version 2 listing pack/tiny-v2 (supersedes one file 55×32)",
            v.index.encode(V2).unwrap(),
            json_of(&want),
            Box::new(move |b| same("postcard/index-v2", IndexFile::decode(V2, b), &want)),
        ));
    }
    {
        let key = fx.key.clone();
        let header = v.header.clone();
        let pieces = v.pieces.clone();
        out.push(vector(
            "pack/tiny-v2",
            format!(
                "preamble v2 || group/hello-v2 || seal(nonce = {N_BLOB_V2:02x}×24, blob_aad(Data, id), 0x00 || \"a blob alone\\n\") \
                 || seal(nonce = {N_PACK_HEADER_V2:02x}×24, aad = aad/pack-header-v2, 0x00 || postcard/pack_header-v2) || u32 LE length"
            ),
            v.pack.clone(),
            json_of(&v.header),
            Box::new(move |b| {
                same("pack header", decode_pack_header(&key, b), &header)?;
                let mut opened: Option<Vec<u8>> = None;
                for (e, want) in header.entries.iter().zip(&pieces) {
                    let sealed = &b[e.offset as usize..(e.offset + e.length) as usize];
                    let got = match e.group_offset {
                        None => open_blob(&key, e.blob_type, &e.id, sealed, e.raw_length),
                        Some(_) => {
                            if opened.is_none() {
                                opened = Some(
                                    open_group_in_place(&key, e.blob_type, &mut sealed.to_vec())
                                        .map_err(|e| e.to_string())?
                                        .into_owned(),
                                );
                            }
                            blob_in_group(&key, e, opened.as_deref().unwrap_or_default()).map(<[u8]>::to_vec)
                        }
                    };
                    same("pack blob", got, want)?;
                }
                Ok(())
            }),
        ));
        out.push(object_id_vector(
            "object_id/pack-v2",
            "unkeyed BLAKE3 of pack/tiny-v2".into(),
            v.pack.clone(),
        ));
    }
    {
        let key = fx.key.clone();
        let want = v.index.clone();
        out.push(vector(
            "sealed/index-v2",
            format!(
                "preamble v2 || seal(nonce = {N_INDEX_V2:02x}×24, aad = preamble, 0x00 || postcard/index-v2)"
            ),
            v.index.encode_sealed_with_nonce(&fx.key, V2, 0, &nonce(N_INDEX_V2)).unwrap(),
            None,
            Box::new(move |b| same("sealed/index-v2", IndexFile::decode_sealed(&key, b), &want)),
        ));
    }
    // What version 2 readers refuse.
    {
        let key = fx.key.clone();
        let mut as_v1 = v.pack.clone();
        as_v1[6..8].copy_from_slice(&1u16.to_le_bytes());
        out.push(vector(
            "reject/pack-v2-as-v1",
            "pack/tiny-v2 with its preamble version changed to 1: the header's AAD names its \
             version, so it does not open as a version-1 header",
            as_v1,
            None,
            Box::new(move |b| {
                refused(decode_pack_header(&key, b), |e| {
                    matches!(e, FormatError::Authentication(_))
                })
            }),
        ));
        // A Group unit with no blobs: [units: 1][variant 1][offset 8][length 41][blobs: 0].
        out.push(vector(
            "reject/pack_header-v2-empty-group",
            "postcard of a v2 header whose one unit is a group without blobs: refused",
            vec![0x01, 0x01, 0x08, 0x29, 0x00],
            None,
            Box::new(|b| {
                refused(PackHeader::decode(V2, b), |e| {
                    matches!(e, FormatError::Malformed { .. })
                })
            }),
        ));
        let key = fx.key.clone();
        let mut index_v4 = v
            .index
            .encode_sealed_with_nonce(&fx.key, V2, 0, &nonce(N_INDEX_V2))
            .unwrap();
        index_v4[6..8].copy_from_slice(&4u16.to_le_bytes());
        out.push(vector(
            "reject/index-v4",
            "sealed/index-v2 with version 4: refused before decryption (upgrade cairn)",
            index_v4,
            None,
            Box::new(move |b| {
                refused(IndexFile::decode_sealed(&key, b), |e| {
                    matches!(e, FormatError::UnsupportedVersion { version: 4, .. })
                })
            }),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Vectors
// ---------------------------------------------------------------------------------------------

type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

struct Vector {
    name: &'static str,
    note: String,
    bytes: Vec<u8>,
    value: Option<Value>,
    /// False only where the encoder's output is not part of the format (zstd's compressed
    /// bytes may change with the zstd library); such vectors are checked in the decode direction.
    encode_exact: bool,
    check: Check,
}

fn vector(
    name: &'static str,
    note: impl Into<String>,
    bytes: Vec<u8>,
    value: Option<Value>,
    check: Check,
) -> Vector {
    Vector {
        name,
        note: note.into(),
        bytes,
        value,
        encode_exact: true,
        check,
    }
}

/// The preamble of `kind` at `version`, which `check_preamble` must read as exactly that.
fn preamble_vector(name: &'static str, kind: FileKind, version: u16) -> Vector {
    vector(
        name,
        format!(
            "\"cairn\" || '{}' || u16 LE version {version}",
            kind.letter() as char
        ),
        preamble_of(kind, version).to_vec(),
        None,
        Box::new(move |b| match check_preamble(b, kind) {
            Ok((v, [])) if v == version => Ok(()),
            other => Err(format!("check_preamble gave {other:?}")),
        }),
    )
}

/// An associated-data constant: the bytes the format's function builds, checked against
/// those stored.
fn aad_vector(name: &'static str, note: &'static str, aad: Vec<u8>) -> Vector {
    let want = aad.clone();
    vector(
        name,
        note,
        aad,
        None,
        Box::new(move |b| {
            if b == want {
                Ok(())
            } else {
                Err("aad differs".into())
            }
        }),
    )
}

/// The vector of an object's name: the unkeyed BLAKE3 of its stored bytes.
fn object_id_vector(name: &'static str, note: String, object: Vec<u8>) -> Vector {
    let id = Id::of_object(&object);
    vector(
        name,
        note,
        id.0.to_vec(),
        None,
        Box::new(move |b| {
            if b == Id::of_object(&object).0 {
                Ok(())
            } else {
                Err("object id differs".into())
            }
        }),
    )
}

fn same<T: PartialEq + Debug>(
    what: &str,
    got: Result<T, FormatError>,
    want: &T,
) -> Result<(), String> {
    match got {
        Ok(g) if g == *want => Ok(()),
        Ok(g) => Err(format!("{what}: decoded {g:?}, expected {want:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn refused<T: Debug>(
    got: Result<T, FormatError>,
    ok: fn(&FormatError) -> bool,
) -> Result<(), String> {
    match got {
        Err(e) if ok(&e) => Ok(()),
        Err(e) => Err(format!("refused with an unexpected error: {e:?}")),
        Ok(v) => Err(format!("accepted: {v:?}")),
    }
}

fn json_of<T: Serialize>(v: &T) -> Option<Value> {
    Some(serde_json::to_value(v).unwrap())
}

fn sealed_file<T>(fx: &Fx, kind: FileKind, value: &T, level: i32, n: u8) -> Vec<u8>
where
    T: Serialize,
{
    encode_sealed_with_nonce(&fx.key, kind, value, level, &nonce(n))
}

/// The page rules of the first v1 repositories (SQLite cut per page). Frozen: the fixture
/// config and its dump in FORMAT.md use them, whatever `default_page_rules` becomes.
/// sealed/index: the index file listing the tiny pack, version 1, stored raw.
fn index_file(fx: &Fx) -> Vec<u8> {
    fx.index
        .encode_sealed_with_nonce(&fx.key, V1, 0, &nonce(N_INDEX))
        .unwrap()
}

fn first_page_rules() -> Vec<cairn_format::PageRule> {
    use cairn_format::{PageFormat, PageRule, PageStrategy};
    let small = ChunkerParams {
        min_size: 2 << 10,
        avg_size: 8 << 10,
        max_size: 32 << 10,
        normalization: 1,
    };
    vec![
        PageRule {
            format: PageFormat::Sqlite,
            strategy: PageStrategy::Pages,
        },
        PageRule {
            format: PageFormat::PostgresRelation,
            strategy: PageStrategy::Pages,
        },
        PageRule {
            format: PageFormat::Bbolt,
            strategy: PageStrategy::Cdc(small.clone()),
        },
        PageRule {
            format: PageFormat::PostgresWal,
            strategy: PageStrategy::Cdc(small),
        },
    ]
}

/// The page rules new repositories got from SQLite cells (PageStrategy variant 2) until text
/// and git packs got rules of their own. Frozen, like [`first_page_rules`].
fn sqlite_cells_page_rules() -> Vec<cairn_format::PageRule> {
    use cairn_format::{PageFormat, PageStrategy};
    let mut rules = first_page_rules();
    for r in &mut rules {
        if r.format == PageFormat::Sqlite {
            r.strategy = PageStrategy::SqliteCells { min_piece: 256 };
        }
    }
    rules
}

fn vectors(fx: &Fx) -> Vec<Vector> {
    let mut out = Vec::new();
    for kind in FileKind::ALL {
        let name: &'static str = match kind {
            FileKind::Config => "preamble/config",
            FileKind::Key => "preamble/key",
            FileKind::Lock => "preamble/lock",
            FileKind::Snapshot => "preamble/snapshot",
            FileKind::Index => "preamble/index",
            FileKind::Pack => "preamble/pack",
        };
        out.push(preamble_vector(name, kind, V1));
    }

    let key = fx.key.clone();
    out.push(vector(
        "master_key/postcard",
        "postcard(MasterKey): encryption [u8;32] = 00..1f, id_key [u8;32] = 20..3f, chunker_seed u64 varint \
         0x0123456789abcdef. The plaintext inside every key file's `wrapped` box.",
        to_postcard(&fx.key),
        None,
        Box::new(move |b| {
            let got: MasterKey = from_postcard(b, "master key").map_err(|e| e.to_string())?;
            if got == key {
                Ok(())
            } else {
                Err("decoded a different master key".into())
            }
        }),
    ));

    for (name, plain, id) in [
        ("blob_id/data-hello", fx.hello.clone(), fx.hello_id),
        ("blob_id/tree", fx.tree_bytes.clone(), fx.tree_id),
        ("blob_id/empty", Vec::new(), fx.key.blob_id(b"")),
    ] {
        let key = fx.key.clone();
        out.push(vector(
            name,
            format!(
                "keyed BLAKE3 (key = id_key) of the {}-byte plaintext {}",
                plain.len(),
                hex::encode(&plain)
            ),
            id.0.to_vec(),
            None,
            Box::new(move |b| {
                if b == key.blob_id(&plain).0 {
                    Ok(())
                } else {
                    Err("blob id differs".into())
                }
            }),
        ));
    }

    out.push(aad_vector(
        "aad/blob-data-hello",
        "blob AAD: \"cairnB\" || u16 LE version || 'D' || blob id",
        blob_aad(BlobType::Data, &fx.hello_id).to_vec(),
    ));
    out.push(aad_vector(
        "aad/pack-header",
        "pack header AAD: pack preamble || \"header\"",
        pack_header_aad(),
    ));

    // Plaintext postcard of every stored type.
    macro_rules! postcard_vector {
        ($name:literal, $ty:ty, $value:expr, $note:expr) => {{
            let want: $ty = $value;
            out.push(vector(
                $name,
                $note,
                to_postcard(&want),
                json_of(&want),
                Box::new(move |b| same($name, from_postcard::<$ty>(b, $name), &want)),
            ));
        }};
    }
    postcard_vector!(
        "postcard/config",
        Config,
        fx.config.clone(),
        "postcard(Config) of the fixed config"
    );
    postcard_vector!(
        "postcard/config-sqlite-cells",
        Config,
        Config {
            page_rules: sqlite_cells_page_rules(),
            ..fx.config.clone()
        },
        "postcard(Config) of the fixed config with Sqlite -> SqliteCells { min_piece: 256 } \
         (PageStrategy variant 2)"
    );
    // The rules new repositories got before SQLite pieces of 1 KiB and bbolt chunks of
    // 4 KiB: frozen here, as such configs exist.
    let mut text_rules = cairn_format::default_page_rules();
    for r in &mut text_rules {
        match (&r.format, &mut r.strategy) {
            (_, cairn_format::PageStrategy::SqliteCells { min_piece }) => *min_piece = 256,
            (cairn_format::PageFormat::Bbolt, cairn_format::PageStrategy::Cdc(p)) => {
                (p.min_size, p.avg_size, p.max_size) = (2 << 10, 8 << 10, 32 << 10);
            }
            _ => {}
        }
    }
    postcard_vector!(
        "postcard/config-text-rules",
        Config,
        Config {
            page_rules: text_rules,
            ..fx.config.clone()
        },
        "postcard(Config) of the fixed config with the page rules new repositories got \
         before SQLite pieces became 1 KiB and bbolt chunks 4 KiB: SqliteCells { 256 }, plus GitPack (PageFormat \
         variant 4) -> Cdc { 16 KiB, 64 KiB, 256 KiB, normalization 1 } and Text (variant 5) \
         -> Cdc { 128 KiB, 512 KiB, 2 MiB, 1 }"
    );
    postcard_vector!(
        "postcard/config-default-rules",
        Config,
        Config {
            page_rules: cairn_format::default_page_rules(),
            ..fx.config.clone()
        },
        "postcard(Config) of the fixed config with the page rules new repositories get: as \
         config-text-rules, with SqliteCells { min_piece: 1024 } and Bbolt -> Cdc { 1 KiB, 4 KiB, \
         16 KiB, normalization 1 }"
    );
    {
        let want = fx.lock.clone();
        out.push(vector(
            "postcard/lock",
            "postcard(Lock)",
            fx.lock.encode(V1).unwrap(),
            Some(json!({
                "exclusive": false,
                "hostname": fx.lock.hostname,
                "pid": fx.lock.pid,
                "time": fx.lock.time,
                "username": fx.lock.username,
            })),
            Box::new(move |b| same("postcard/lock", Lock::decode(V1, b), &want)),
        ));
    }
    postcard_vector!(
        "postcard/snapshot",
        Snapshot,
        fx.snapshot.clone(),
        "postcard(Snapshot)"
    );
    {
        let want = fx.index.clone();
        out.push(vector(
            "postcard/index",
            "postcard(IndexFile) listing the tiny pack",
            fx.index.encode(V1).unwrap(),
            json_of(&want),
            Box::new(move |b| same("postcard/index", IndexFile::decode(V1, b), &want)),
        ));
        let want = fx.header.clone();
        out.push(vector(
            "postcard/pack_header",
            "postcard(PackHeader) of the tiny pack",
            fx.header.encode(V1).unwrap(),
            json_of(&want),
            Box::new(move |b| same("postcard/pack_header", PackHeader::decode(V1, b), &want)),
        ));
    }
    postcard_vector!(
        "postcard/key_file",
        KeyFile,
        fx.keyfile.clone(),
        "postcard(KeyFile), i.e. the key file without its preamble"
    );
    {
        let want = fx.tree.clone();
        out.push(vector(
            "postcard/tree",
            "postcard(Tree) with one file node: the plaintext of the tree blob",
            fx.tree_bytes.clone(),
            json_of(&want),
            Box::new(move |b| same("tree", Tree::decode(b), &want)),
        ));
    }

    // Sealed files.
    macro_rules! sealed_vector {
        ($name:literal, $kind:expr, $ty:ty, $value:expr, $level:expr, $n:expr) => {{
            let want: $ty = $value;
            let key = fx.key.clone();
            let bytes = sealed_file(fx, $kind, &want, $level, $n);
            let mut v = vector(
                $name,
                format!(
                    "preamble || seal(key = encryption key, nonce = {:02x}×24, aad = preamble, {}) (zstd level {})",
                    $n,
                    if $level == 0 { "0x00 || postcard" } else { "0x01 || zstd(postcard)" },
                    $level
                ),
                bytes,
                None,
                Box::new(move |b| {
                    same($name, decode_sealed::<$ty>(&key, $kind, b), &want)?;
                    let payload = open_with_key(&key.encryption, &b[..PREAMBLE_LEN], &b[PREAMBLE_LEN..], "x")
                        .map_err(|e| e.to_string())?;
                    let want_flag = u8::from($level != 0);
                    if payload[0] != want_flag {
                        return Err(format!("compression flag {} instead of {want_flag}", payload[0]));
                    }
                    Ok(())
                }),
            );
            v.encode_exact = $level == 0;
            if !v.encode_exact {
                v.note.push_str(
                    "; decode-only: the zstd encoder's bytes are not part of the format, any valid frame is",
                );
            }
            out.push(v);
        }};
    }
    sealed_vector!(
        "sealed/config",
        FileKind::Config,
        Config,
        fx.config.clone(),
        0,
        N_CONFIG
    );
    {
        let want = fx.lock.clone();
        let key = fx.key.clone();
        out.push(vector(
            "sealed/lock",
            format!(
                "preamble || seal(key = encryption key, nonce = {N_LOCK:02x}×24, aad = preamble, 0x00 || postcard) (zstd level 0)"
            ),
            fx.lock
                .encode_sealed_with_nonce(&fx.key, V1, 0, &nonce(N_LOCK))
                .unwrap(),
            None,
            Box::new(move |b| same("sealed/lock", Lock::decode_sealed(&key, b), &want)),
        ));
    }
    sealed_vector!(
        "sealed/snapshot",
        FileKind::Snapshot,
        Snapshot,
        fx.snapshot.clone(),
        0,
        N_SNAPSHOT
    );
    sealed_vector!(
        "sealed/snapshot-zstd",
        FileKind::Snapshot,
        Snapshot,
        fx.snapshot.clone(),
        3,
        N_SNAPSHOT_ZSTD
    );
    {
        let want = fx.index.clone();
        let key = fx.key.clone();
        out.push(vector(
            "sealed/index",
            format!(
                "preamble || seal(key = encryption key, nonce = {N_INDEX:02x}×24, aad = preamble, 0x00 || postcard) (zstd level 0)"
            ),
            index_file(fx),
            None,
            Box::new(move |b| same("sealed/index", IndexFile::decode_sealed(&key, b), &want)),
        ));
    }

    for (name, kind, level, n) in [
        ("object_id/config", FileKind::Config, 0, N_CONFIG),
        ("object_id/snapshot", FileKind::Snapshot, 0, N_SNAPSHOT),
        ("object_id/index", FileKind::Index, 0, N_INDEX),
    ] {
        let file = match kind {
            FileKind::Config => sealed_file(fx, kind, &fx.config, level, n),
            FileKind::Snapshot => sealed_file(fx, kind, &fx.snapshot, level, n),
            _ => index_file(fx),
        };
        out.push(object_id_vector(
            name,
            format!(
                "unkeyed BLAKE3 of the stored bytes of sealed/{}: the object's file name",
                kind.name()
            ),
            file,
        ));
    }
    out.push(object_id_vector(
        "object_id/pack",
        "unkeyed BLAKE3 of pack/tiny: the pack's name (stored as data/<first 2 hex digits>/<name>)"
            .into(),
        fx.pack.clone(),
    ));

    // Blobs and the pack.
    for (name, t, id, plain, sealed, n) in [
        (
            "blob/data-hello",
            BlobType::Data,
            fx.hello_id,
            fx.hello.clone(),
            fx.blob_hello.clone(),
            N_BLOB_DATA,
        ),
        (
            "blob/tree",
            BlobType::Tree,
            fx.tree_id,
            fx.tree_bytes.clone(),
            fx.blob_tree.clone(),
            N_BLOB_TREE,
        ),
    ] {
        let key = fx.key.clone();
        out.push(vector(
            name,
            format!("seal(nonce = {n:02x}×24, aad = blob_aad({t:?}, id), 0x00 || plaintext)"),
            sealed,
            None,
            Box::new(move |b| same(name, open_blob(&key, t, &id, b, plain.len() as u32), &plain)),
        ));
    }
    {
        let key = fx.key.clone();
        let header = fx.header.clone();
        let blobs = [fx.hello.clone(), fx.tree_bytes.clone()];
        out.push(vector(
            "pack/tiny",
            format!(
                "preamble || blob/data-hello || blob/tree || seal(nonce = {N_PACK_HEADER:02x}×24, aad = aad/pack-header, \
                 0x00 || postcard/pack_header) || u32 LE sealed header length"
            ),
            fx.pack.clone(),
            json_of(&fx.header),
            Box::new(move |b| {
                same("pack header", decode_pack_header(&key, b), &header)?;
                for (e, want) in header.entries.iter().zip(&blobs) {
                    let sealed = &b[e.offset as usize..(e.offset + e.length) as usize];
                    same("pack blob", open_blob(&key, e.blob_type, &e.id, sealed, e.raw_length), want)?;
                }
                Ok(())
            }),
        ));
    }

    // Key file and KDF.
    {
        let want = fx.keyfile.clone();
        let key = fx.key.clone();
        out.push(vector(
            "key_file",
            format!(
                "preamble || postcard(KeyFile); password {:?}, Argon2id 8 MiB / 1 pass / 1 lane, salt 40..5f, \
                 wrap nonce {N_KEY:02x}×24",
                String::from_utf8_lossy(PASSWORD)
            ),
            fx.keyfile.encode(),
            json_of(&fx.keyfile),
            Box::new(move |b| {
                same("key file", KeyFile::decode(b), &want)?;
                let got = KeyFile::decode(b).unwrap().unwrap_key(PASSWORD).map_err(|e| e.to_string())?;
                if got != key {
                    return Err("unwrapped a different master key".into());
                }
                refused(KeyFile::decode(b).unwrap().unwrap_key(b"wrong"), |e| matches!(e, FormatError::WrongPassword))
            }),
        ));
        let kdf = fx.keyfile.kdf.clone();
        out.push(vector(
            "kdf/argon2id-kek",
            format!(
                "Argon2id v0x13 (password {:?}, salt 40..5f, m = 8192 KiB, t = 1, p = 1, 32-byte output): the key-wrapping key",
                String::from_utf8_lossy(PASSWORD)
            ),
            fx.keyfile.kdf.derive(PASSWORD).unwrap().to_vec(),
            None,
            Box::new(move |b| if b == kdf.derive(PASSWORD).unwrap() { Ok(()) } else { Err("kek differs".into()) }),
        ));
    }

    // Inputs every reader must refuse.
    let config_file = sealed_file(fx, FileKind::Config, &fx.config, 0, N_CONFIG);
    let snapshot_file = sealed_file(fx, FileKind::Snapshot, &fx.snapshot, 0, N_SNAPSHOT);
    let mut v2 = config_file.clone();
    v2[6..8].copy_from_slice(&2u16.to_le_bytes());
    let mut v0 = config_file.clone();
    v0[6..8].copy_from_slice(&0u16.to_le_bytes());
    let mut magic = config_file.clone();
    magic[..5].copy_from_slice(b"cairm");
    let mut swapped = snapshot_file.clone();
    swapped[5] = b'I';
    let mut trailing = fx.tree_bytes.clone();
    trailing.push(0);
    let mut two = fx.tree.clone();
    let mut second = two.nodes[0].clone();
    second.name = b"a.txt".to_vec();
    two.nodes.push(second);
    let unsorted = to_postcard(&two);
    let key = fx.key.clone();
    let k2 = key.clone();
    let k3 = key.clone();
    let k4 = key.clone();
    let k5 = key.clone();
    out.push(vector(
        "reject/version-2",
        "sealed/config with version 2 in its preamble: refused as unsupported before any decryption",
        v2,
        None,
        Box::new(move |b| {
            refused(decode_sealed::<Config>(&key, FileKind::Config, b), |e| {
                matches!(e, FormatError::UnsupportedVersion { version: 2, .. })
            })
        }),
    ));
    out.push(vector(
        "reject/version-0",
        "sealed/config with version 0: refused",
        v0,
        None,
        Box::new(move |b| {
            refused(decode_sealed::<Config>(&k2, FileKind::Config, b), |e| {
                matches!(e, FormatError::UnsupportedVersion { version: 0, .. })
            })
        }),
    ));
    out.push(vector(
        "reject/bad-magic",
        "sealed/config starting with \"cairm\": refused",
        magic,
        None,
        Box::new(move |b| {
            refused(decode_sealed::<Config>(&k3, FileKind::Config, b), |e| {
                matches!(e, FormatError::BadMagic { .. })
            })
        }),
    ));
    out.push(vector(
        "reject/kind-swapped",
        "sealed/snapshot with its kind letter changed to 'I': as an index it fails authentication \
         (the preamble is the AAD); as a snapshot it is the wrong kind",
        swapped,
        None,
        Box::new(move |b| {
            refused(IndexFile::decode_sealed(&k4, b), |e| {
                matches!(e, FormatError::Authentication(_))
            })?;
            refused(decode_sealed::<Snapshot>(&k4, FileKind::Snapshot, b), |e| {
                matches!(e, FormatError::WrongKind { .. })
            })
        }),
    ));
    out.push(vector(
        "reject/tree-trailing-byte",
        "postcard/tree followed by one 0x00: trailing bytes are refused",
        trailing,
        None,
        Box::new(|b| {
            refused(Tree::decode(b), |e| {
                matches!(e, FormatError::Malformed { .. })
            })
        }),
    ));
    out.push(vector(
        "reject/tree-unsorted",
        "a tree whose nodes \"hello.txt\", \"a.txt\" are not sorted by name bytes: refused",
        unsorted,
        None,
        Box::new(|b| {
            refused(Tree::decode(b), |e| {
                matches!(e, FormatError::Malformed { .. })
            })
        }),
    ));
    let moved = fx.blob_hello.clone();
    let hello_id = fx.hello_id;
    out.push(vector(
        "reject/blob-as-tree",
        "blob/data-hello opened as a tree blob of the same id: authentication fails (type byte in the AAD)",
        moved,
        None,
        Box::new(move |b| {
            refused(open_blob(&k5, BlobType::Tree, &hello_id, b, 12), |e| matches!(e, FormatError::Authentication(_)))
        }),
    ));
    vectors_v2(fx, &mut out);
    vectors_v3(fx, &mut out);
    vectors_v4(fx, &mut out);
    vectors_v5(fx, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// vectors.json
// ---------------------------------------------------------------------------------------------

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blessing() -> bool {
    std::env::var_os("CAIRN_BLESS").is_some_and(|v| v == "1")
}

/// One vector per block; `value` on one line so the file diffs well.
fn render_vectors_json(
    fx: &Fx,
    vectors: &[Vector],
    stored_hex: &BTreeMap<String, String>,
) -> String {
    let mut s = String::new();
    s.push_str("{\n");
    let comment = [
        "Golden vectors of the cairn repository format v1. Generated by repo-format/tests/golden.rs; do not edit.",
        "Checked both ways by `cargo test -p cairn-format --test golden`: the fixed inputs encode to `hex`, and `hex` decodes to the fixed values.",
        "Regenerate with CAIRN_BLESS=1 only for new vectors: a changed byte in an existing vector is a FORMAT CHANGE (bump FORMAT_VERSION).",
        "`value` is the decoded value as JSON (ids as hex, byte strings as arrays of numbers), for reading only.",
        "`encode_exact: false`: only the decode direction is checked (zstd's output bytes are not part of the format).",
    ];
    s.push_str(&format!(
        "  \"comment\": {},\n",
        serde_json::to_string(&comment).unwrap()
    ));
    s.push_str(&format!("  \"format_version\": {FORMAT_VERSION},\n"));
    let inputs = json!({
        "master_key": {
            "encryption": hex::encode(fx.key.encryption),
            "id_key": hex::encode(fx.key.id_key),
            "chunker_seed": format!("{:#018x}", fx.key.chunker_seed),
        },
        "password": String::from_utf8_lossy(PASSWORD),
        "nonces": "each sealed vector's note names its nonce: one byte repeated 24 times",
    });
    s.push_str(&format!(
        "  \"inputs\": {},\n",
        serde_json::to_string(&inputs).unwrap()
    ));
    s.push_str("  \"vectors\": [\n");
    for (i, v) in vectors.iter().enumerate() {
        let hex = if v.encode_exact {
            hex::encode(&v.bytes)
        } else {
            stored_hex
                .get(v.name)
                .cloned()
                .unwrap_or_else(|| hex::encode(&v.bytes))
        };
        s.push_str("    {\n");
        s.push_str(&format!(
            "      \"name\": {},\n",
            serde_json::to_string(v.name).unwrap()
        ));
        s.push_str(&format!(
            "      \"note\": {},\n",
            serde_json::to_string(&v.note).unwrap()
        ));
        s.push_str(&format!("      \"len\": {},\n", hex.len() / 2));
        if !v.encode_exact {
            s.push_str("      \"encode_exact\": false,\n");
        }
        if let Some(val) = &v.value {
            s.push_str(&format!(
                "      \"value\": {},\n",
                serde_json::to_string(val).unwrap()
            ));
        }
        s.push_str(&format!("      \"hex\": \"{hex}\"\n"));
        s.push_str(if i + 1 == vectors.len() {
            "    }\n"
        } else {
            "    },\n"
        });
    }
    s.push_str("  ]\n}\n");
    s
}

fn read_stored() -> Result<(String, BTreeMap<String, String>), String> {
    let path = crate_dir().join("testdata/vectors.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let mut map = BTreeMap::new();
    for item in v["vectors"].as_array().ok_or("no vectors array")? {
        let name = item["name"]
            .as_str()
            .ok_or("vector without name")?
            .to_owned();
        let hex = item["hex"].as_str().ok_or("vector without hex")?.to_owned();
        if map.insert(name.clone(), hex).is_some() {
            return Err(format!("duplicate vector {name}"));
        }
    }
    Ok((text, map))
}

// ---------------------------------------------------------------------------------------------
// Annotated dumps for FORMAT.md
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Dump {
    rows: Vec<(String, Vec<u8>)>,
}

impl Dump {
    fn raw(&mut self, label: impl Into<String>, bytes: &[u8]) -> &mut Self {
        self.rows.push((label.into(), bytes.to_vec()));
        self
    }

    /// A postcard-encoded field.
    fn pc<T: Serialize>(&mut self, label: impl Into<String>, v: &T) -> &mut Self {
        let b = to_postcard(v);
        self.raw(label, &b)
    }

    fn len(&mut self, field: &str, n: usize) -> &mut Self {
        self.pc(format!("{field}: length {n} (varint)"), &n)
    }

    fn bytes_field(&mut self, field: &str, b: &[u8]) -> &mut Self {
        self.len(field, b.len());
        if !b.is_empty() {
            self.raw(format!("{field}: {:?}", String::from_utf8_lossy(b)), b);
        }
        self
    }

    fn uint(&mut self, field: &str, ty: &str, v: u64) -> &mut Self {
        self.pc(format!("{field}: {ty} varint = {v}"), &v)
    }

    fn int(&mut self, field: &str, ty: &str, v: i64) -> &mut Self {
        self.pc(format!("{field}: {ty} zigzag varint = {v}"), &v)
    }

    fn id(&mut self, field: &str, id: &Id) -> &mut Self {
        self.raw(format!("{field}: Id, 32 raw bytes"), &id.0)
    }

    fn timestamp(&mut self, field: &str, t: &Timestamp) -> &mut Self {
        self.int(&format!("{field}.unix_nanos"), "i64", t.unix_nanos);
        self.pc(
            format!(
                "{field}.utc_offset_secs: i32 zigzag varint = {}",
                t.utc_offset_secs
            ),
            &t.utc_offset_secs,
        )
    }

    fn preamble(&mut self, kind: FileKind) -> &mut Self {
        let p = preamble(kind);
        self.raw("magic \"cairn\"", &p[..5]);
        self.raw(
            format!("kind '{}' ({})", kind.letter() as char, kind.name()),
            &p[5..6],
        );
        self.raw(format!("version {V1} (u16 LE)"), &p[6..8])
    }

    fn sealed_box(&mut self, what: &str, sealed: &[u8]) -> &mut Self {
        let n = sealed.len();
        self.raw(format!("{what}: nonce (24)"), &sealed[..NONCE_LEN]);
        self.raw(
            format!("{what}: ciphertext ({} bytes)", n - NONCE_LEN - TAG_LEN),
            &sealed[NONCE_LEN..n - TAG_LEN],
        );
        self.raw(format!("{what}: Poly1305 tag (16)"), &sealed[n - TAG_LEN..])
    }

    fn bytes(&self) -> Vec<u8> {
        self.rows
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    }

    fn render(&self) -> String {
        let mut s =
            String::from("offset  bytes                                            field\n");
        let mut off = 0usize;
        for (label, b) in &self.rows {
            let lines: Vec<&[u8]> = if b.is_empty() {
                vec![&[][..]]
            } else {
                b.chunks(16).collect()
            };
            let n = lines.len();
            for (i, chunk) in lines.iter().enumerate() {
                // Long fields: first three rows, an ellipsis row, the last row.
                if n > 8 && (3..n - 1).contains(&i) {
                    if i == 3 {
                        s.push_str(&format!("{:<55}  ({} more bytes)\n", "  …", (n - 4) * 16));
                    }
                    continue;
                }
                let hexs: Vec<String> = chunk.iter().map(|x| format!("{x:02x}")).collect();
                let text = if i == 0 { label.as_str() } else { "" };
                s.push_str(
                    format!("{:06x}  {:<47}  {}", off + i * 16, hexs.join(" "), text).trim_end(),
                );
                s.push('\n');
            }
            off += b.len();
        }
        s.push_str(&format!("({off} bytes)\n"));
        s
    }

    /// Render after checking the annotation reproduces `whole` byte for byte.
    fn checked(&self, what: &str, whole: &[u8]) -> String {
        assert_eq!(
            hex::encode(self.bytes()),
            hex::encode(whole),
            "annotation of {what} does not match its encoding"
        );
        self.render()
    }
}

fn dump_config(d: &mut Dump, c: &Config) {
    d.uint("version", "u16", u64::from(c.version));
    d.raw("repo_id: [u8; 32], 32 raw bytes", &c.repo_id);
    d.uint("chunker.min_size", "u32", u64::from(c.chunker.min_size));
    d.uint("chunker.avg_size", "u32", u64::from(c.chunker.avg_size));
    d.uint("chunker.max_size", "u32", u64::from(c.chunker.max_size));
    d.pc(
        format!(
            "chunker.normalization: u8, one raw byte = {}",
            c.chunker.normalization
        ),
        &c.chunker.normalization,
    );
    d.pc(
        format!(
            "compression_level: i32 zigzag varint = {}",
            c.compression_level
        ),
        &c.compression_level,
    );
    d.uint("pack_size", "u32", u64::from(c.pack_size));
    d.len("page_rules", c.page_rules.len());
    for (i, r) in c.page_rules.iter().enumerate() {
        d.pc(
            format!(
                "page_rules[{i}].format: PageFormat variant = {:?}",
                r.format
            ),
            &r.format,
        );
        d.pc(
            format!("page_rules[{i}].strategy: PageStrategy = {:?}", r.strategy),
            &r.strategy,
        );
    }
}

fn dump_node(d: &mut Dump, n: &Node) {
    d.bytes_field("name", &n.name);
    d.pc(
        format!("kind: NodeKind variant index (varint) = {:?}", n.kind),
        &n.kind,
    );
    d.pc(format!("mode: u32 varint = {:#o}", n.mode), &n.mode);
    d.uint("uid", "u32", u64::from(n.uid));
    d.uint("gid", "u32", u64::from(n.gid));
    d.bytes_field("user", n.user.as_bytes());
    d.bytes_field("group", n.group.as_bytes());
    for (label, t) in [("mtime", n.mtime), ("atime", n.atime), ("ctime", n.ctime)] {
        d.int(&format!("{label}.secs"), "i64", t.secs);
        d.uint(&format!("{label}.nanos"), "u32", u64::from(t.nanos));
    }
    d.uint("size", "u64", n.size);
    d.uint("inode", "u64", n.inode);
    d.uint("device", "u64", n.device);
    d.uint("rdev", "u64", n.rdev);
    d.uint("links", "u64", n.links);
    d.bytes_field("link_target", &n.link_target);
    d.len("xattrs", n.xattrs.len());
    for (i, x) in n.xattrs.iter().enumerate() {
        d.bytes_field(&format!("xattrs[{i}].name"), &x.name);
        d.bytes_field(&format!("xattrs[{i}].value"), &x.value);
    }
    d.len("content", n.content.refs().len());
    let what = match n.content {
        Content::Blobs(_) => "",
        Content::Lists(_) => " of a content list",
    };
    for (i, id) in n.content.refs().iter().enumerate() {
        d.id(&format!("content[{i}]{what}"), id);
    }
    match &n.subtree {
        None => d.raw("subtree: Option<Id> = None (tag 0)", &[0]),
        Some(id) => d.raw("subtree: Some (tag 1)", &[1]).id("subtree", id),
    };
}

fn dump_entries(d: &mut Dump, field: &str, entries: &[PackEntry]) {
    d.len(field, entries.len());
    for (i, e) in entries.iter().enumerate() {
        dump_entry(d, &format!("{field}[{i}]"), e);
    }
}

/// One entry's version-1 fields.
fn dump_entry(d: &mut Dump, at: &str, e: &PackEntry) {
    d.pc(
        format!("{at}.blob_type: BlobType variant index = {:?}", e.blob_type),
        &e.blob_type,
    );
    d.id(&format!("{at}.id"), &e.id);
    d.uint(&format!("{at}.offset"), "u32", u64::from(e.offset));
    d.uint(&format!("{at}.length"), "u32", u64::from(e.length));
    d.uint(&format!("{at}.raw_length"), "u32", u64::from(e.raw_length));
}

fn dump_snapshot(d: &mut Dump, s: &Snapshot) {
    d.timestamp("time", &s.time);
    match &s.parent {
        None => d.raw("parent: None (tag 0)", &[0]),
        Some(id) => d.raw("parent: Some (tag 1)", &[1]).id("parent", id),
    };
    d.id("tree", &s.tree);
    d.len("paths", s.paths.len());
    for (i, p) in s.paths.iter().enumerate() {
        d.bytes_field(&format!("paths[{i}]"), p);
    }
    d.bytes_field("hostname", s.hostname.as_bytes());
    d.bytes_field("username", s.username.as_bytes());
    d.uint("uid", "u32", u64::from(s.uid));
    d.uint("gid", "u32", u64::from(s.gid));
    d.len("tags", s.tags.len());
    for (i, t) in s.tags.iter().enumerate() {
        d.bytes_field(&format!("tags[{i}]"), t.as_bytes());
    }
    d.len("excludes", s.excludes.len());
    for (i, t) in s.excludes.iter().enumerate() {
        d.bytes_field(&format!("excludes[{i}]"), t.as_bytes());
    }
    d.bytes_field("program_version", s.program_version.as_bytes());
    match &s.summary {
        None => {
            d.raw("summary: None (tag 0)", &[0]);
        }
        Some(m) => {
            d.raw("summary: Some (tag 1)", &[1]);
            d.timestamp("summary.backup_start", &m.backup_start);
            d.timestamp("summary.backup_end", &m.backup_end);
            for (name, v) in [
                ("files_new", m.files_new),
                ("files_changed", m.files_changed),
                ("files_unmodified", m.files_unmodified),
                ("dirs_new", m.dirs_new),
                ("dirs_changed", m.dirs_changed),
                ("dirs_unmodified", m.dirs_unmodified),
                ("data_blobs", m.data_blobs),
                ("tree_blobs", m.tree_blobs),
                ("data_added", m.data_added),
                ("data_added_packed", m.data_added_packed),
                ("total_files_processed", m.total_files_processed),
                ("total_bytes_processed", m.total_bytes_processed),
                ("errors", m.errors),
            ] {
                d.uint(&format!("summary.{name}"), "u64", v);
            }
        }
    }
}

fn examples(fx: &Fx) -> BTreeMap<&'static str, String> {
    let mut ex = BTreeMap::new();

    let mut d = Dump::default();
    for kind in FileKind::ALL {
        d.raw(format!("{} preamble", kind.name()), &preamble(kind));
    }
    ex.insert("preambles", d.render());

    let mut d = Dump::default();
    d.len("nodes", fx.tree.nodes.len());
    dump_node(&mut d, &fx.tree.nodes[0]);
    ex.insert("tree", d.checked("tree", &fx.tree_bytes));

    let mut d = Dump::default();
    dump_config(&mut d, &fx.config);
    ex.insert(
        "config-postcard",
        d.checked("config", &to_postcard(&fx.config)),
    );

    let file = sealed_file(fx, FileKind::Config, &fx.config, 0, N_CONFIG);
    let mut d = Dump::default();
    d.preamble(FileKind::Config)
        .sealed_box("sealed", &file[PREAMBLE_LEN..]);
    let mut plain = Dump::default();
    plain.raw("flag 0x00: not compressed", &[0]);
    dump_config(&mut plain, &fx.config);
    let payload = open_with_key(
        &fx.key.encryption,
        &file[..PREAMBLE_LEN],
        &file[PREAMBLE_LEN..],
        "config",
    )
    .unwrap();
    ex.insert(
        "config-sealed",
        format!(
            "{}\nthe ciphertext opens to this payload:\n\n{}\nfile name: `config` (not content-addressed); its BLAKE3 would be {}\n",
            d.checked("sealed config", &file),
            plain.checked("config payload", &payload),
            Id::of_object(&file)
        ),
    );

    let mut d = Dump::default();
    d.raw("\"cairnB\"", b"cairnB")
        .raw(format!("version {V1} (u16 LE)"), &V1.to_le_bytes())
        .raw("blob type 'D' (data; 'T' for tree)", b"D")
        .id(
            "blob id = keyed BLAKE3(id_key, \"hello world\\n\")",
            &fx.hello_id,
        );
    let aad = d.checked("blob aad", &blob_aad(BlobType::Data, &fx.hello_id));
    let mut d = Dump::default();
    d.sealed_box("blob", &fx.blob_hello);
    let mut p = Dump::default();
    p.raw("flag 0x00: not compressed", &[0])
        .raw("plaintext \"hello world\\n\"", &fx.hello);
    let payload = open_with_key(
        &fx.key.encryption,
        &blob_aad(BlobType::Data, &fx.hello_id),
        &fx.blob_hello,
        "blob",
    )
    .unwrap();
    ex.insert(
        "blob",
        format!(
            "associated data:\n\n{aad}\nsealed blob (nonce b1×24):\n\n{}\npayload:\n\n{}",
            d.checked("sealed blob", &fx.blob_hello),
            p.checked("blob payload", &payload)
        ),
    );

    let mut d = Dump::default();
    d.preamble(FileKind::Pack);
    d.sealed_box("blob 0 (data, hello)", &fx.blob_hello);
    d.sealed_box("blob 1 (tree)", &fx.blob_tree);
    let hstart = PREAMBLE_LEN + fx.blob_hello.len() + fx.blob_tree.len();
    let hlen = fx.pack.len() - 4 - hstart;
    d.sealed_box("header", &fx.pack[hstart..hstart + hlen]);
    d.raw(
        format!("header length: u32 LE = {hlen}"),
        &fx.pack[fx.pack.len() - 4..],
    );
    let mut h = Dump::default();
    h.raw("flag 0x00 (zstd did not shrink it)", &[0]);
    dump_entries(&mut h, "entries", &fx.header.entries);
    let payload = open_with_key(
        &fx.key.encryption,
        &pack_header_aad(),
        &fx.pack[hstart..hstart + hlen],
        "h",
    )
    .unwrap();
    ex.insert(
        "pack",
        format!(
            "{}\nthe header opens (aad = \"cairnP\" 01 00 \"header\") to:\n\n{}\npack name: {}\nstored at: data/{}/{}\n",
            d.checked("pack", &fx.pack),
            h.checked("pack header payload", &payload),
            fx.pack_id,
            &fx.pack_id.to_hex()[..2],
            fx.pack_id
        ),
    );

    let mut d = Dump::default();
    d.raw("flag 0x00: not compressed", &[0]);
    d.len("supersedes", fx.index.supersedes.len());
    d.len("packs", fx.index.packs.len());
    d.id("packs[0].id (the pack's name)", &fx.index.packs[0].id);
    dump_entries(&mut d, "packs[0].blobs", &fx.index.packs[0].blobs);
    let mut want = vec![0u8];
    want.extend(fx.index.encode(V1).unwrap());
    ex.insert("index-payload", d.checked("index payload", &want));

    let v = fixture_v2(fx);
    let mut d = Dump::default();
    d.raw("magic \"cairn\"", b"cairn")
        .raw("kind 'P' (pack)", b"P")
        .raw("version 2 (u16 LE)", &V2.to_le_bytes());
    d.sealed_box("group (blobs 0 and 1)", &v.group);
    d.sealed_box("blob 2 (alone)", &v.blob);
    let hstart = PREAMBLE_LEN + v.group.len() + v.blob.len();
    let hlen = v.pack.len() - 4 - hstart;
    d.sealed_box("header", &v.pack[hstart..hstart + hlen]);
    d.raw(
        format!("header length: u32 LE = {hlen}"),
        &v.pack[v.pack.len() - 4..],
    );
    let mut h = Dump::default();
    h.raw("flag 0x00 (zstd did not shrink it)", &[0]);
    h.len("units", 2);
    h.raw("units[0]: Unit variant index 1 = Group", &[1]);
    h.uint(
        "units[0].offset",
        "u32",
        u64::from(v.header.entries[0].offset),
    );
    h.uint(
        "units[0].length",
        "u32",
        u64::from(v.header.entries[0].length),
    );
    h.len("units[0].blobs", 2);
    for (i, e) in v.header.entries[..2].iter().enumerate() {
        h.id(&format!("units[0].blobs[{i}].0 (id)"), &e.id);
        h.uint(
            &format!("units[0].blobs[{i}].1 (raw_length)"),
            "u32",
            u64::from(e.raw_length),
        );
    }
    h.raw("units[1]: Unit variant index 0 = Blob", &[0]);
    dump_entry(&mut h, "units[1]", &v.header.entries[2]);
    let payload = open_with_key(
        &fx.key.encryption,
        &pack_header_aad_of(V2),
        &v.pack[hstart..hstart + hlen],
        "h",
    )
    .unwrap();
    let mut g = Dump::default();
    g.raw("flag 0x00: not compressed", &[0]);
    g.raw("blob 0 at group offset 0: \"hello world\\n\"", &v.pieces[0]);
    g.raw(
        format!(
            "blob 1 at group offset {}: \"hello again, world\\n\"",
            v.pieces[0].len()
        ),
        &v.pieces[1],
    );
    let group_payload = open_with_key(
        &fx.key.encryption,
        &group_aad(BlobType::Data),
        &v.group,
        "g",
    )
    .unwrap();
    ex.insert(
        "pack-v2",
        format!(
            "{}\nthe group opens (aad = \"cairnG\" 02 00 'D') to:\n\n{}\nthe header opens (aad = \"cairnP\" 02 00 \"header\") to:\n\n{}\npack name: {}\n",
            d.checked("pack v2", &v.pack),
            g.checked("group payload", &group_payload),
            h.checked("pack v2 header payload", &payload),
            v.pack_id,
        ),
    );

    let v5 = fixture_v5(fx);
    let mut d = Dump::default();
    d.raw("magic \"cairn\"", b"cairn")
        .raw("kind 'P' (pack)", b"P")
        .raw("version 5 (u16 LE)", &V5.to_le_bytes());
    d.sealed_box("tree group (blobs 0 and 1)", &v5.group);
    let hstart = PREAMBLE_LEN + v5.group.len();
    let hlen = v5.pack.len() - 4 - hstart;
    d.sealed_box("header", &v5.pack[hstart..hstart + hlen]);
    d.raw(
        format!("header length: u32 LE = {hlen}"),
        &v5.pack[v5.pack.len() - 4..],
    );
    let mut h = Dump::default();
    h.raw("flag 0x00 (zstd did not shrink it)", &[0]);
    h.len("units", 1);
    h.raw("units[0]: Unit variant index 2 = TreeGroup", &[2]);
    h.uint(
        "units[0].offset",
        "u32",
        u64::from(v5.header.entries[0].offset),
    );
    h.uint(
        "units[0].length",
        "u32",
        u64::from(v5.header.entries[0].length),
    );
    h.len("units[0].blobs", 2);
    for (i, e) in v5.header.entries.iter().enumerate() {
        h.id(&format!("units[0].blobs[{i}].0 (id)"), &e.id);
        h.uint(
            &format!("units[0].blobs[{i}].1 (raw_length)"),
            "u32",
            u64::from(e.raw_length),
        );
    }
    let payload = open_with_key(
        &fx.key.encryption,
        &pack_header_aad_of(V5),
        &v5.pack[hstart..hstart + hlen],
        "h",
    )
    .unwrap();
    let mut g = Dump::default();
    g.raw("flag 0x00: not compressed", &[0]);
    g.raw("blob 0 at group offset 0: content-list-v4", &v5.pieces[0]);
    g.raw(
        format!("blob 1 at group offset {}: tree-v4", v5.pieces[0].len()),
        &v5.pieces[1],
    );
    let group_payload = open_with_key(
        &fx.key.encryption,
        &group_aad(BlobType::Tree),
        &v5.group,
        "g",
    )
    .unwrap();
    ex.insert(
        "pack-v5",
        format!(
            "{}\nthe group opens (aad = \"cairnG\" 02 00 'T') to:\n\n{}\nthe header opens (aad = \"cairnP\" 05 00 \"header\") to:\n\n{}\npack name: {}\n",
            d.checked("pack v5", &v5.pack),
            g.checked("tree group payload", &group_payload),
            h.checked("pack v5 header payload", &payload),
            Id::of_object(&v5.pack),
        ),
    );

    let mut d = Dump::default();
    d.raw("flag 0x00: not compressed", &[0]);
    dump_snapshot(&mut d, &fx.snapshot);
    let mut want = vec![0u8];
    want.extend(to_postcard(&fx.snapshot));
    ex.insert("snapshot-payload", d.checked("snapshot payload", &want));

    let mut d = Dump::default();
    let exclusive = fx.lock.mode != LockMode::Shared;
    d.timestamp("time", &fx.lock.time)
        .pc(format!("exclusive: bool = {exclusive}"), &exclusive)
        .bytes_field("hostname", fx.lock.hostname.as_bytes())
        .bytes_field("username", fx.lock.username.as_bytes())
        .uint("pid", "u32", u64::from(fx.lock.pid));
    ex.insert(
        "lock-postcard",
        d.checked("lock", &fx.lock.encode(V1).unwrap()),
    );

    let (lock3, index3) = fixture_v3(fx);
    let mut d = Dump::default();
    d.timestamp("time", &lock3.time)
        .timestamp("started", &lock3.started)
        .pc("mode: LockMode variant index = Maintenance", &1u8)
        .bytes_field("hostname", lock3.hostname.as_bytes())
        .bytes_field("username", lock3.username.as_bytes())
        .uint("pid", "u32", u64::from(lock3.pid));
    ex.insert(
        "lock-postcard-v3",
        d.checked("lock v3", &lock3.encode(V3).unwrap()),
    );

    let mut d = Dump::default();
    d.len("supersedes", index3.supersedes.len());
    for (i, s) in index3.supersedes.iter().enumerate() {
        d.id(&format!("supersedes[{i}]"), s);
    }
    d.len("packs", index3.packs.len());
    for (i, p) in index3.packs.iter().enumerate() {
        d.id(&format!("packs[{i}].id"), &p.id);
        match &p.condemned {
            None => {
                d.raw(format!("packs[{i}].condemned: None"), &[0]);
            }
            Some(t) => {
                d.raw(format!("packs[{i}].condemned: Some"), &[1]);
                d.timestamp(&format!("packs[{i}].condemned"), t);
            }
        }
        let units = PackHeader {
            entries: p.blobs.clone(),
        }
        .encode(V2)
        .unwrap();
        d.raw(format!("packs[{i}].units (as in a v2 pack header)"), &units);
    }
    ex.insert(
        "index-v3-postcard",
        d.checked("index v3", &index3.encode(V3).unwrap()),
    );

    let (list, list_id, tree4) = fixture_v4(fx);
    let mut d = Dump::default();
    d.raw("marker: 00 'L', version 4 (u16 LE)", &list[..4])
        .len("ids", 2)
        .id("ids[0]", &fx.hello_id)
        .id("ids[1]", &fx.hello_id);
    ex.insert(
        "content-list-v4",
        format!(
            "{}
blob id (keyed BLAKE3): {}",
            d.checked("content list", &list),
            list_id.to_hex()
        ),
    );
    let mut d = Dump::default();
    let bytes4 = tree4.encode();
    d.raw("marker: 00 'T', version 4 (u16 LE)", &bytes4[..4]);
    d.len("nodes", tree4.nodes.len());
    for n in &tree4.nodes {
        dump_node(&mut d, n);
    }
    d.len("indirect", 1)
        .uint("indirect[0]: node index", "u32", 1);
    ex.insert("tree-v4", d.checked("tree v4", &bytes4));

    let kf = &fx.keyfile;
    let mut d = Dump::default();
    d.preamble(FileKind::Key)
        .timestamp("created", &kf.created)
        .bytes_field("hostname", kf.hostname.as_bytes())
        .bytes_field("username", kf.username.as_bytes())
        .uint("kdf.memory_kib", "u32", u64::from(kf.kdf.memory_kib))
        .uint("kdf.iterations", "u32", u64::from(kf.kdf.iterations))
        .uint("kdf.parallelism", "u32", u64::from(kf.kdf.parallelism))
        .raw("kdf.salt: [u8; 32], 32 raw bytes", &kf.kdf.salt)
        .len("wrapped", kf.wrapped.len())
        .sealed_box("wrapped", &kf.wrapped);
    let mut m = Dump::default();
    m.raw("encryption: [u8; 32]", &fx.key.encryption)
        .raw("id_key: [u8; 32]", &fx.key.id_key)
        .uint("chunker_seed", "u64", fx.key.chunker_seed);
    let kek = kf.kdf.derive(PASSWORD).unwrap();
    ex.insert(
        "key-file",
        format!(
            "{}\nkey-wrapping key = Argon2id(password \"cairn-golden-v1\", salt, m = 8192 KiB, t = 1, p = 1) =\n{}\n\n\
             `wrapped` opens (aad = \"cairnK\" 01 00) to postcard(MasterKey), without a flag byte:\n\n{}",
            d.checked("key file", &kf.encode()),
            hex::encode(kek),
            m.checked("master key", &kf.unwrap_key(PASSWORD).map(|k| to_postcard(&k)).unwrap())
        ),
    );
    ex
}

/// Replace every generated block of FORMAT.md; returns the new text.
fn render_format_md(text: &str, ex: &BTreeMap<&'static str, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    let mut used = Vec::new();
    while let Some(start) = rest.find("<!-- BEGIN GENERATED ") {
        let after = &rest[start..];
        let name_end = after
            .find(" -->")
            .ok_or("unterminated BEGIN GENERATED marker")?;
        let name = &after["<!-- BEGIN GENERATED ".len()..name_end];
        let end_marker = format!("<!-- END GENERATED {name} -->");
        let end = after
            .find(&end_marker)
            .ok_or_else(|| format!("no {end_marker}"))?;
        let body = ex
            .get(name)
            .ok_or_else(|| format!("FORMAT.md asks for unknown example {name:?}"))?;
        out.push_str(&rest[..start]);
        out.push_str(&after[..name_end + 4]);
        out.push_str("\n```text\n");
        out.push_str(body);
        out.push_str("```\n");
        out.push_str(&end_marker);
        used.push(name.to_owned());
        rest = &after[end + end_marker.len()..];
    }
    out.push_str(rest);
    for name in ex.keys() {
        if !used.iter().any(|u| u == name) {
            return Err(format!("example {name:?} is not used in FORMAT.md"));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn golden_vectors_are_up_to_date() {
    let fx = fixture();
    let vectors = vectors(&fx);
    // The pack header vector must not depend on the zstd encoder.
    let hstart = fx.pack.len()
        - 4
        - u32::from_le_bytes(fx.pack[fx.pack.len() - 4..].try_into().unwrap()) as usize;
    let payload = open_with_key(
        &fx.key.encryption,
        &pack_header_aad(),
        &fx.pack[hstart..fx.pack.len() - 4],
        "h",
    )
    .unwrap();
    assert_eq!(
        payload[0], 0,
        "the fixed pack header got compressed: choose inputs zstd cannot shrink"
    );

    // Every vector decodes as expected from the bytes just encoded (sanity of the fixture).
    for v in &vectors {
        if let Err(e) = (v.check)(&v.bytes) {
            panic!("vector {} fails its own check: {e}", v.name);
        }
    }

    let path = crate_dir().join("testdata/vectors.json");
    if blessing() {
        let stored = read_stored().map(|(_, m)| m).unwrap_or_default();
        // Decode-only vectors keep their stored bytes as long as those still decode.
        let keep: BTreeMap<String, String> = vectors
            .iter()
            .filter(|v| !v.encode_exact)
            .filter_map(|v| {
                let h = stored.get(v.name)?;
                let b = hex::decode(h).ok()?;
                (v.check)(&b)
                    .is_ok()
                    .then(|| (v.name.to_owned(), h.clone()))
            })
            .collect();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, render_vectors_json(&fx, &vectors, &keep)).unwrap();
        eprintln!("blessed {}", path.display());
        return;
    }

    let (text, stored) = read_stored().unwrap_or_else(|e| panic!("{e}\n{BLESS_HINT}"));
    let mut problems = Vec::new();
    for v in &vectors {
        let Some(h) = stored.get(v.name) else {
            problems.push(format!("{}: missing from vectors.json", v.name));
            continue;
        };
        let Ok(bytes) = hex::decode(h) else {
            problems.push(format!("{}: stored hex is not hex", v.name));
            continue;
        };
        // Encode direction.
        if v.encode_exact && bytes != v.bytes {
            let at = bytes
                .iter()
                .zip(&v.bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(bytes.len().min(v.bytes.len()));
            problems.push(format!(
                "{}: encoding changed (first difference at byte {at}; stored {} bytes, now {} bytes)",
                v.name,
                bytes.len(),
                v.bytes.len()
            ));
        }
        // Decode direction, from the stored bytes.
        if let Err(e) = (v.check)(&bytes) {
            problems.push(format!(
                "{}: stored bytes do not decode as expected: {e}",
                v.name
            ));
        }
    }
    for name in stored.keys() {
        if !vectors.iter().any(|v| v.name == name) {
            problems.push(format!("{name}: in vectors.json but no longer generated"));
        }
    }
    if problems.is_empty() && text != render_vectors_json(&fx, &vectors, &stored) {
        problems
            .push("vectors.json differs from its regeneration (notes, values or layout)".into());
    }
    assert!(
        problems.is_empty(),
        "golden vectors out of date:\n  {}\n{BLESS_HINT}",
        problems.join("\n  ")
    );
}

#[test]
fn format_md_examples_are_up_to_date() {
    let fx = fixture();
    let path = crate_dir().join("FORMAT.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let new = render_format_md(&text, &examples(&fx)).unwrap_or_else(|e| panic!("FORMAT.md: {e}"));
    if blessing() {
        if new != text {
            std::fs::write(&path, new).unwrap();
            eprintln!("blessed {}", path.display());
        }
        return;
    }
    if new != text {
        let line = text
            .lines()
            .zip(new.lines())
            .position(|(a, b)| a != b)
            .map_or(0, |i| i + 1);
        panic!("the generated hex dumps in FORMAT.md are out of date (first difference at line {line}).\n{BLESS_HINT}");
    }
}

#[test]
fn fixed_key_file_opens_and_decodes() {
    // The key file vector also works through the public decode path as the engine uses it.
    let fx = fixture();
    let bytes = fx.keyfile.encode();
    assert_eq!(&bytes[..PREAMBLE_LEN], &preamble(FileKind::Key));
    let kf = KeyFile::decode(&bytes).unwrap();
    assert!(kf.unwrap_key(PASSWORD).unwrap() == fx.key);
}

/// The key-wrapping KDF with 4 lanes (the default since keys stopped using 1), against
/// values computed by the reference implementation's CLI (Debian `argon2` 20190702:
/// `echo -n cairn-golden-v1 | argon2 '@ABC…^_' -id -t T -k M -p P -l 32 -r`). The 1-lane
/// value is FORMAT.md's key-file example, which the same command reproduces.
#[test]
fn argon2id_matches_the_reference_implementation() {
    let salt: [u8; 32] = std::array::from_fn(|i| 0x40 + i as u8);
    for (memory_kib, iterations, parallelism, want) in [
        (
            8192,
            1,
            1,
            "0fa3fcf3b74bf1821c1bc5462e0487893f3c3440258b79ad4a7c4a274eb27f7e",
        ),
        (
            8192,
            1,
            4,
            "be01b1eeda29cfc0c2252819216fc1fc0edd1373af43a3f565e26bef77669302",
        ),
        (
            65536,
            3,
            4,
            "792082cbfd520db670c5ef5c69962d41bd0e4379998f651e74319fd25226837b",
        ),
    ] {
        let params = cairn_format::KdfParams {
            memory_kib,
            iterations,
            parallelism,
            salt,
        };
        let got = params.derive(b"cairn-golden-v1").unwrap();
        assert_eq!(
            hex::encode(got),
            want,
            "m={memory_kib} t={iterations} p={parallelism}"
        );
    }
    let default = cairn_format::KdfParams::new_default();
    assert_eq!(
        (default.memory_kib, default.iterations, default.parallelism),
        (65536, 3, 4),
        "the default changed: add its reference value above"
    );
}
