//! Entry points shared by the `fuzz/` targets and the in-tree fuzz-smoke tests: each decodes
//! arbitrary bytes and must return an error, never panic, hang or allocate without bound.
//!
//! Besides "no panic", some entry points check decoder invariants and panic when one breaks
//! (that is a finding): a decoded value re-encodes and decodes to itself, and every entry of a
//! decoded pack header lies inside the pack.
//!
//! [`seed_corpus`] gives valid encodings (sealed with [`fuzz_key`]) to start fuzzing from.

use crate::{
    blob_in_group, decode_pack_header, decode_sealed, decode_sealed_header,
    encode_sealed_with_nonce, finish_pack_with_nonce, header_span, open_blob, open_group_in_place,
    preamble, preamble_of, seal_blob_with_nonce, seal_group_with_nonce, to_postcard,
    unpack_payload, BlobType, ChunkerParams, Config, Content, FileKind, FileTime, Id, IndexFile,
    IndexPack, KdfParams, KeyFile, Lock, MasterKey, Node, NodeKind, PackEntry, PackHeader,
    Snapshot, SnapshotSummary, Timestamp, Tree, Xattr, NONCE_LEN,
};

/// A fixed key, so the fuzzer can also reach past authentication when it learns a valid box.
pub fn fuzz_key() -> MasterKey {
    MasterKey {
        encryption: [7; 32],
        id_key: [9; 32],
        chunker_seed: 0x5eed,
    }
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every fuzz target: its name (the file in `fuzz/fuzz_targets/` and the corpus directory)
/// and its entry point.
pub const TARGETS: [(&str, Target); 9] = [
    ("pack_header", pack_header),
    ("blob_group", blob_group),
    ("index", index),
    ("tree", tree),
    ("content_list", content_list),
    ("snapshot", snapshot),
    ("key", key),
    ("config", config),
    ("sqlite_pages", sqlite_pages),
];

/// The SQLite cell cutter on arbitrary file bytes (it parses page structures of files being
/// backed up, which are as untrusted as repository bytes), as the engine runs it on a whole
/// file: ascending cuts that include every page boundary and end at the file's end.
pub fn sqlite_pages(data: &[u8]) {
    let head = &data[..data.len().min(crate::pages::DETECT_LEN)];
    let page = match crate::pages::detect(head, None) {
        Some((crate::PageFormat::Sqlite, p)) => p as usize,
        _ => 512,
    };
    let usable = page.saturating_sub(usize::from(data.get(20).copied().unwrap_or(0)));
    let cuts = crate::sqlite_window_cuts(data, page, usable, 256, true);
    assert!(cuts.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(cuts.last().copied().unwrap_or(0), data.len());
    // Every page boundary is a cut: no chunk spans two pages.
    assert!((1..=data.len() / page).all(|i| cuts.binary_search(&(i * page)).is_ok()));
}

/// A two-page SQLite file of 512-byte pages: page 1 (the database header and a table leaf
/// with two cells) and a table leaf whose one cell spills to an overflow page.
fn sqlite_seed() -> Vec<u8> {
    let mut db = vec![0u8; 1536];
    db[..16].copy_from_slice(b"SQLite format 3\0");
    db[16..18].copy_from_slice(&512u16.to_be_bytes());
    // Page 1: b-tree header at 100, type 13 (table leaf), 2 cells at 400 and 300.
    db[100] = 13;
    db[103..105].copy_from_slice(&2u16.to_be_bytes());
    db[108..110].copy_from_slice(&400u16.to_be_bytes());
    db[110..112].copy_from_slice(&300u16.to_be_bytes());
    for (at, len) in [(400usize, 90u8), (300, 80)] {
        db[at] = len; // payload size
        db[at + 1] = 1; // rowid
        db[at + 2..at + 2 + usize::from(len)].fill(0x41);
    }
    // Page 2: one cell of 600 payload bytes (varint 0x84 0x58), spilling to page 3.
    db[512] = 13;
    db[515..517].copy_from_slice(&1u16.to_be_bytes());
    db[520..522].copy_from_slice(&40u16.to_be_bytes());
    db[512 + 40..512 + 43].copy_from_slice(&[0x84, 0x58, 0x02]);
    db[1024..1028].copy_from_slice(&0u32.to_be_bytes());
    db[1028..].fill(0x42);
    db
}

/// Tree decoder. A tree that decodes must re-encode to a tree that decodes to itself.
pub fn tree(data: &[u8]) {
    if let Ok(t) = Tree::decode(data) {
        let again = Tree::decode(&t.encode());
        assert!(
            matches!(again, Ok(ref u) if *u == t),
            "decoded tree does not survive re-encoding"
        );
    }
}

/// Content-list decoder (format 4). A list that decodes re-encodes to the same bytes: one
/// encoding per list, as for trees.
pub fn content_list(data: &[u8]) {
    if let Ok(ids) = crate::decode_content_list(data) {
        assert!(
            crate::encode_content_list(&ids) == data,
            "decoded content list does not re-encode to its bytes"
        );
    }
}

/// Key file decoder (envelope only: running Argon2 per input would starve the fuzzer).
pub fn key_file(data: &[u8]) {
    let _ = KeyFile::decode(data);
}

/// Key file decoder, plus unwrapping when the KDF parameters are cheap (a few KiB, ≤ 2 passes),
/// which exercises the Argon2 parameter checks and the wrapped-key path.
pub fn key(data: &[u8]) {
    if let Ok(kf) = KeyFile::decode(data) {
        let again = KeyFile::decode(&kf.encode());
        assert!(
            matches!(again, Ok(ref k) if *k == kf),
            "decoded key file does not survive re-encoding"
        );
        // The documented range is what derivation accepts: nothing outside it is ever run.
        let in_range = kf.kdf.check_range().is_ok();
        if !in_range {
            assert!(
                kf.kdf.derive(b"fuzz").is_err(),
                "an out-of-range KDF was derived"
            );
        }
        if in_range && kf.kdf.memory_kib <= 64 && kf.kdf.iterations <= 2 && kf.kdf.parallelism <= 2
        {
            let _ = kf.unwrap_key(b"fuzz");
        }
    }
}

/// Snapshot file decoder.
pub fn snapshot(data: &[u8]) {
    let _ = decode_sealed::<Snapshot>(&fuzz_key(), FileKind::Snapshot, data);
    // Also the plaintext decoder behind authentication.
    roundtrip::<Snapshot>(data, "snapshot");
}

/// Index file decoder (every version).
pub fn index(data: &[u8]) {
    let config = fuzz_config();
    if let Ok(f) = IndexFile::decode_sealed(&fuzz_key(), data) {
        index_limits(&f, &config);
    }
    for version in [1, 2, 3, 5] {
        if let Ok(f) = IndexFile::decode(version, data) {
            index_limits(&f, &config);
            let again = f
                .encode(version)
                .and_then(|b| IndexFile::decode(version, &b));
            assert!(
                matches!(again, Ok(ref g) if *g == f),
                "decoded index (v{version}) does not survive re-encoding"
            );
        }
    }
}

/// A repository config with the default rules, as new repositories get.
fn fuzz_config() -> Config {
    Config {
        version: crate::FORMAT_VERSION,
        repo_id: [0; 32],
        chunker: crate::ChunkerParams::default_bulk(),
        compression_level: 2,
        pack_size: 16 << 20,
        page_rules: crate::default_page_rules(),
    }
}

/// An index that passes the limit check claims nothing a reader could not afford.
fn index_limits(f: &IndexFile, config: &Config) {
    if f.check_limits(config).is_ok() {
        for e in f.packs.iter().flat_map(|p| &p.blobs) {
            let max = config.max_blob_len(e.blob_type);
            assert!(
                e.raw_length <= max,
                "accepted raw length {} > {max}",
                e.raw_length
            );
            let (covers, start) = match e.group_offset {
                Some(start) => (crate::MAX_GROUP_LEN, u64::from(start)),
                None => (e.raw_length, 0),
            };
            assert!(
                u64::from(e.length) <= u64::from(covers) + 1 + crate::SEAL_OVERHEAD as u64,
                "accepted sealed length {} for raw {}",
                e.length,
                e.raw_length
            );
            assert!(
                start + u64::from(e.raw_length) <= u64::from(crate::MAX_GROUP_LEN)
                    || e.group_offset.is_none(),
                "accepted a blob beyond the group limit"
            );
        }
    }
}

/// Config decoder (and the lock decoder, the other small sealed file).
pub fn config(data: &[u8]) {
    let limits = |c: &Config| {
        if c.validate().is_ok() {
            let data = c.max_blob_len(BlobType::Data);
            assert!(
                data >= c.chunker.max_size && data <= 16 << 20,
                "data limit {data}"
            );
            assert_eq!(c.max_blob_len(BlobType::Tree), crate::MAX_TREE_LEN);
        }
    };
    if let Ok(c) = decode_sealed::<Config>(&fuzz_key(), FileKind::Config, data) {
        limits(&c);
    }
    if let Ok(c) = crate::from_postcard::<Config>(data, "config") {
        limits(&c);
    }
    let _ = Lock::decode_sealed(&fuzz_key(), data);
    for version in [1, 3] {
        if let Ok(l) = Lock::decode(version, data) {
            let again = l.encode(version).and_then(|b| Lock::decode(version, &b));
            assert!(
                matches!(again, Ok(ref m) if *m == l),
                "decoded lock (v{version}) does not survive re-encoding"
            );
        }
    }
}

/// Pack header and blob decoders.
pub fn pack(data: &[u8]) {
    let key = fuzz_key();
    let _ = decode_pack_header(&key, data);
    for version in [1, 2, 5] {
        if let Ok(h) = PackHeader::decode(version, data) {
            let again = h
                .encode(version)
                .and_then(|b| PackHeader::decode(version, &b));
            assert!(
                matches!(again, Ok(ref g) if *g == h),
                "decoded pack header (v{version}) does not survive re-encoding"
            );
        }
    }
    let _ = open_blob(&key, BlobType::Data, &Id::default(), data, 1 << 20);
    for blob_type in [BlobType::Data, BlobType::Tree] {
        let _ = open_group_in_place(&key, blob_type, &mut data.to_vec());
    }
    let _ = unpack_payload(data, 1 << 20, "fuzz");
}

/// A sealed group and one entry's claims on it: the first 8 bytes are the entry's
/// `group_offset` and `raw_length` (u32 LE), the rest the sealed box (a data group, or a tree
/// group when that fails to open). A group decodes to at most `MAX_GROUP_LEN` bytes, and a
/// blob taken from it is exactly the bytes claimed.
pub fn blob_group(data: &[u8]) {
    let key = fuzz_key();
    let (head, sealed) = data.split_at(data.len().min(8));
    let word = |i: usize| {
        head.get(i..i + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let sealed_len = sealed.len() as u32;
    for blob_type in [BlobType::Data, BlobType::Tree] {
        let mut sealed = sealed.to_vec();
        let Ok(group) = open_group_in_place(&key, blob_type, &mut sealed) else {
            continue;
        };
        assert!(
            group.len() <= crate::MAX_GROUP_LEN as usize,
            "group over the limit"
        );
        let (start, raw) = (word(0), word(4));
        let e = PackEntry {
            blob_type,
            id: key.blob_id(group.get(start as usize..).unwrap_or_default()),
            offset: 8,
            length: sealed_len,
            raw_length: raw,
            group_offset: Some(start),
        };
        if let Ok(blob) = blob_in_group(&key, &e, &group) {
            assert_eq!(blob.len(), raw as usize, "blob of the wrong length");
        }
    }
}

/// Pack decoder as a reader uses it: header from the whole pack, then every blob it lists.
/// Every entry of a header that decodes must lie inside the pack, before the header; the
/// blobs of a group must lie inside its decoded plaintext.
pub fn pack_header(data: &[u8]) {
    pack(data);
    let key = fuzz_key();
    if let Ok(h) = decode_pack_header(&key, data) {
        // Every sealed box covers at least one sealed byte, and a group holds at most
        // MAX_GROUP_BLOBS blobs: the header-size bound holds.
        let boxes = data.len() as u64 / (crate::SEAL_OVERHEAD as u64 + 1);
        assert!(
            h.entries.len() as u64 <= boxes * crate::MAX_GROUP_BLOBS as u64,
            "more entries than the pack has room for"
        );
        let mut trailer = [0u8; 4];
        trailer.copy_from_slice(&data[data.len() - 4..]);
        let (start, _) =
            header_span(data.len() as u64, trailer).expect("header_span refused a decoded pack");
        let mut group: Option<(u32, Vec<u8>)> = None;
        for e in &h.entries {
            let end = u64::from(e.offset) + u64::from(e.length);
            assert!(
                end <= start,
                "pack header entry reaches past the header start"
            );
            let sealed = &data[e.offset as usize..end as usize];
            match e.group_offset {
                None => {
                    let _ = open_blob(&key, e.blob_type, &e.id, sealed, e.raw_length);
                }
                Some(at) => {
                    assert!(
                        u64::from(at) + u64::from(e.raw_length) <= u64::from(crate::MAX_GROUP_LEN),
                        "grouped blob beyond the group limit"
                    );
                    if group.as_ref().is_none_or(|(o, _)| *o != e.offset) {
                        let opened = open_group_in_place(&key, e.blob_type, &mut sealed.to_vec())
                            .map(|g| g.into_owned())
                            .unwrap_or_default();
                        group = Some((e.offset, opened));
                    }
                    if let Some((_, g)) = &group {
                        let _ = blob_in_group(&key, e, g);
                    }
                }
            }
        }
    }
    // The range-read path: the input taken as a sealed header alone, of any version.
    for version in [1, 2, 5] {
        let _ = decode_sealed_header(&key, version, data, data.len() as u64);
    }
}

/// Decode `T` from plaintext postcard; a value that decodes must re-encode and decode to itself.
fn roundtrip<T>(data: &[u8], what: &'static str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = crate::from_postcard::<T>(data, what) {
        let again = crate::from_postcard::<T>(&to_postcard(&v), what);
        assert!(
            matches!(again, Ok(ref u) if *u == v),
            "decoded {what} does not survive re-encoding"
        );
    }
}

fn nonce(tag: u8) -> [u8; NONCE_LEN] {
    [tag; NONCE_LEN]
}

fn ts(unix_secs: i64, utc_offset_secs: i32) -> Timestamp {
    Timestamp {
        unix_nanos: unix_secs * 1_000_000_000 + 123_456_789,
        utc_offset_secs,
    }
}

fn sample_node(name: &[u8], kind: NodeKind, content: Content, subtree: Option<Id>) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 100,
        user: "alice".into(),
        group: "users".into(),
        mtime: FileTime {
            secs: 1_714_532_400,
            nanos: 0,
        },
        atime: FileTime {
            secs: 1_714_532_401,
            nanos: 0,
        },
        ctime: FileTime {
            secs: -1,
            nanos: 999_999_995,
        },
        size: 12,
        inode: 4242,
        device: 2049,
        rdev: 0,
        links: 1,
        link_target: if kind == NodeKind::Symlink {
            b"target".to_vec()
        } else {
            Vec::new()
        },
        xattrs: vec![Xattr {
            name: b"user.a".to_vec(),
            value: b"1".to_vec(),
        }],
        content,
        subtree,
    }
}

/// Valid encodings, sealed with [`fuzz_key`] and fixed nonces: `(target name, bytes)`, several
/// per target. Deterministic, so a seed corpus can be rebuilt at any time.
pub fn seed_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let key = fuzz_key();
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();

    // A tiny consistent repository: one data blob, one tree, one pack, index, snapshot.
    let hello = b"hello, fuzzer\n".to_vec();
    let data_id = key.blob_id(&hello);
    let mut tree = Tree {
        nodes: vec![
            sample_node(
                b"hello.txt",
                NodeKind::File,
                Content::Blobs(vec![data_id]),
                None,
            ),
            sample_node(b"link", NodeKind::Symlink, Content::default(), None),
            sample_node(b"sub", NodeKind::Dir, Content::default(), Some(Id([3; 32]))),
            sample_node(b"\xffnot-utf8", NodeKind::Fifo, Content::default(), None),
        ],
    };
    tree.canonicalize();
    let tree_bytes = tree.encode();
    let tree_id = key.blob_id(&tree_bytes);
    out.push(("tree", tree_bytes.clone()));
    out.push(("tree", Tree::default().encode()));
    // Format 4: a file naming content lists beside one naming its blob, and the lists.
    let list = crate::encode_content_list(&[data_id, data_id, Id([7; 32])]);
    let list_id = key.blob_id(&list);
    let mut v4 = tree.clone();
    let mut big = sample_node(
        b"big.db",
        NodeKind::File,
        Content::Lists(vec![list_id, list_id]),
        None,
    );
    big.size = 28;
    v4.nodes.push(big);
    v4.canonicalize();
    out.push(("tree", v4.encode()));
    out.push(("content_list", list));
    out.push(("content_list", crate::encode_content_list(&[Id([9; 32])])));

    let mut pack = preamble(FileKind::Pack).to_vec();
    let mut entries = Vec::new();
    for (i, (t, id, plain, level)) in [
        (BlobType::Data, data_id, &hello, 0),
        (BlobType::Tree, tree_id, &tree_bytes, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let sealed = seal_blob_with_nonce(&key, t, &id, plain, level, &nonce(0x10 + i as u8));
        entries.push(PackEntry {
            blob_type: t,
            id,
            offset: pack.len() as u32,
            length: sealed.len() as u32,
            raw_length: plain.len() as u32,
            group_offset: None,
        });
        pack.extend_from_slice(&sealed);
    }
    let header = PackHeader {
        entries: entries.clone(),
    };
    let _ = finish_pack_with_nonce(&key, 1, &mut pack, &header, &nonce(0x20));
    let pack_id = Id::of_object(&pack);
    out.push(("pack_header", pack));
    if let Ok(plain) = header.encode(1) {
        out.push(("pack_header", plain));
    }
    let mut empty_pack = preamble(FileKind::Pack).to_vec();
    let _ = finish_pack_with_nonce(
        &key,
        1,
        &mut empty_pack,
        &PackHeader::default(),
        &nonce(0x21),
    );
    out.push(("pack_header", empty_pack));

    // Version 2: a group of three small blobs, then a blob alone.
    let pieces: [&[u8]; 3] = [
        b"page one, page one\n",
        b"page two, page two\n",
        b"page 3\n",
    ];
    let mut v2 = preamble_of(FileKind::Pack, 2).to_vec();
    let group: Vec<u8> = pieces.concat();
    let sealed_group = seal_group_with_nonce(&key, BlobType::Data, &group, 3, &nonce(0x22));
    let mut v2_entries = crate::group_entries(
        BlobType::Data,
        v2.len() as u32,
        sealed_group.len() as u32,
        pieces.iter().map(|p| (key.blob_id(p), p.len() as u32)),
    )
    .unwrap_or_default();
    // The second blob's claims, then the group.
    let mut blob_seed = (pieces[0].len() as u32).to_le_bytes().to_vec();
    blob_seed.extend_from_slice(&(pieces[1].len() as u32).to_le_bytes());
    blob_seed.extend_from_slice(&sealed_group);
    out.push(("blob_group", blob_seed));
    v2.extend_from_slice(&sealed_group);
    let sealed = seal_blob_with_nonce(&key, BlobType::Data, &data_id, &hello, 0, &nonce(0x23));
    v2_entries.push(PackEntry {
        blob_type: BlobType::Data,
        id: data_id,
        offset: v2.len() as u32,
        length: sealed.len() as u32,
        raw_length: hello.len() as u32,
        group_offset: None,
    });
    v2.extend_from_slice(&sealed);
    let v2_header = PackHeader {
        entries: v2_entries.clone(),
    };
    let _ = finish_pack_with_nonce(&key, 2, &mut v2, &v2_header, &nonce(0x24));
    let v2_id = Id::of_object(&v2);
    out.push(("pack_header", v2));
    if let Ok(plain) = v2_header.encode(2) {
        out.push(("pack_header", plain));
    }

    let index_file = IndexFile {
        supersedes: vec![Id([1; 32])],
        packs: vec![IndexPack::new(pack_id, entries)],
    };
    if let Ok(bytes) = index_file.encode_sealed_with_nonce(&key, 1, 0, &nonce(0x30)) {
        out.push(("index", bytes));
    }
    if let Ok(bytes) = index_file.encode_sealed_with_nonce(&key, 1, 3, &nonce(0x31)) {
        out.push(("index", bytes));
    }
    if let Ok(plain) = index_file.encode(1) {
        out.push(("index", plain));
    }
    let v2_index = IndexFile {
        supersedes: Vec::new(),
        packs: vec![IndexPack::new(v2_id, v2_entries.clone())],
    };
    if let Ok(bytes) = v2_index.encode_sealed_with_nonce(&key, 2, 3, &nonce(0x32)) {
        out.push(("index", bytes));
    }
    if let Ok(plain) = v2_index.encode(2) {
        out.push(("index", plain));
    }
    // Version 3: a live pack, a condemned one, and a condemned one without blobs.
    let v3_index = IndexFile {
        supersedes: vec![Id([1; 32])],
        packs: vec![
            IndexPack::new(v2_id, v2_entries.clone()),
            IndexPack {
                id: Id([3; 32]),
                blobs: v2_entries,
                condemned: Some(ts(1_714_532_400, 0)),
            },
            IndexPack {
                id: Id([4; 32]),
                blobs: Vec::new(),
                condemned: Some(ts(1_714_532_401, 0)),
            },
        ],
    };
    if let Ok(bytes) = v3_index.encode_sealed_with_nonce(&key, 3, 3, &nonce(0x33)) {
        out.push(("index", bytes));
    }
    if let Ok(plain) = v3_index.encode(3) {
        out.push(("index", plain));
    }

    // Version 5: a group of two tree blobs (the tree above and an empty one), then the v2
    // pack's data group.
    let trees = [tree_bytes.clone(), Tree::default().encode()];
    let tree_group: Vec<u8> = trees.concat();
    let sealed_trees = seal_group_with_nonce(&key, BlobType::Tree, &tree_group, 3, &nonce(0x34));
    let mut v5 = preamble_of(FileKind::Pack, 5).to_vec();
    let mut v5_entries = crate::group_entries(
        BlobType::Tree,
        v5.len() as u32,
        sealed_trees.len() as u32,
        trees.iter().map(|t| (key.blob_id(t), t.len() as u32)),
    )
    .unwrap_or_default();
    v5.extend_from_slice(&sealed_trees);
    let mut tree_seed = 0u32.to_le_bytes().to_vec();
    tree_seed.extend_from_slice(&(trees[0].len() as u32).to_le_bytes());
    tree_seed.extend_from_slice(&sealed_trees);
    out.push(("blob_group", tree_seed));
    v5_entries.extend(
        crate::group_entries(
            BlobType::Data,
            v5.len() as u32,
            sealed_group.len() as u32,
            pieces.iter().map(|p| (key.blob_id(p), p.len() as u32)),
        )
        .unwrap_or_default(),
    );
    v5.extend_from_slice(&sealed_group);
    let v5_header = PackHeader {
        entries: v5_entries.clone(),
    };
    let _ = finish_pack_with_nonce(&key, 5, &mut v5, &v5_header, &nonce(0x35));
    let v5_id = Id::of_object(&v5);
    out.push(("pack_header", v5));
    if let Ok(plain) = v5_header.encode(5) {
        out.push(("pack_header", plain));
    }
    let v5_index = IndexFile {
        supersedes: Vec::new(),
        packs: vec![IndexPack::new(v5_id, v5_entries)],
    };
    if let Ok(bytes) = v5_index.encode_sealed_with_nonce(&key, 5, 3, &nonce(0x36)) {
        out.push(("index", bytes));
    }
    if let Ok(plain) = v5_index.encode(5) {
        out.push(("index", plain));
    }

    let snap = Snapshot {
        time: ts(1_714_532_400, 7200),
        parent: Some(Id([2; 32])),
        tree: tree_id,
        paths: vec![b"/home/alice".to_vec(), b"/etc".to_vec()],
        hostname: "fuzzhost".into(),
        username: "alice".into(),
        uid: 1000,
        gid: 100,
        tags: vec!["daily".into()],
        excludes: vec!["*.tmp".into()],
        program_version: "cairn 0.1.0".into(),
        summary: Some(SnapshotSummary {
            files_new: 1,
            data_blobs: 1,
            tree_blobs: 1,
            ..SnapshotSummary::default()
        }),
    };
    out.push((
        "snapshot",
        encode_sealed_with_nonce(&key, FileKind::Snapshot, &snap, 0, &nonce(0x40)),
    ));
    out.push(("snapshot", to_postcard(&snap)));

    let config = Config {
        version: 1,
        repo_id: [0xab; 32],
        chunker: ChunkerParams::default_bulk(),
        compression_level: 3,
        pack_size: 16 << 20,
        page_rules: crate::default_page_rules(),
    };
    out.push((
        "config",
        encode_sealed_with_nonce(&key, FileKind::Config, &config, 0, &nonce(0x50)),
    ));
    out.push(("config", to_postcard(&config)));
    out.push(("sqlite_pages", sqlite_seed()));
    let lock = Lock {
        time: ts(1_714_532_400, 0),
        started: ts(1_714_532_000, 0),
        mode: crate::LockMode::Maintenance,
        hostname: "fuzzhost".into(),
        username: "alice".into(),
        pid: 4242,
    };
    for (version, n) in [(1, 0x51), (3, 0x52)] {
        if let Ok(bytes) = lock.encode_sealed_with_nonce(&key, version, 0, &nonce(n)) {
            out.push(("config", bytes));
        }
        if let Ok(plain) = lock.encode(version) {
            out.push(("config", plain));
        }
    }

    // The cheapest Argon2id cost there is, so the `key` target can unwrap it.
    let kdf = KdfParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
        salt: [0x5a; 32],
    };
    if let Ok(kf) = KeyFile::wrap(
        &key,
        b"fuzz",
        kdf,
        ts(1_714_532_400, 0),
        "fuzzhost".into(),
        "alice".into(),
        nonce(0x60),
    ) {
        out.push(("key", kf.encode()));
    }
    out
}
