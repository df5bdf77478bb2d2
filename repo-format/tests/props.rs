//! Property tests of the format: roundtrips, canonical trees, tamper detection, binding of
//! blobs to their id and type, kind confusion, wrong keys.
//!
//! "Tamper" properties flip *every* byte of an encoded object (with a random non-zero XOR) and
//! try every truncation: decoding must fail with an error — never succeed with other content,
//! never panic.

#![allow(clippy::unwrap_used)]

use cairn_format::{
    decode_pack_header, decode_sealed, encode_sealed, finish_pack, from_postcard, open_blob,
    preamble, seal_blob, to_postcard, BlobType, ChunkerParams, Config, Content, FileKind,
    FormatError, Id, IndexFile, IndexPack, KdfParams, KeyFile, Lock, LockMode, MasterKey, Node,
    NodeKind, PackEntry, PackHeader, Snapshot, SnapshotSummary, Timestamp, Tree, Xattr,
    PREAMBLE_LEN,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `prop_assert!` for conditions that contain braces (which `prop_assert!` would take as a
/// format string).
macro_rules! check {
    ($cond:expr) => {
        prop_assert!($cond, "{}", stringify!($cond))
    };
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn id() -> impl Strategy<Value = Id> {
    any::<[u8; 32]>().prop_map(Id)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), any::<i32>()).prop_map(|(unix_nanos, utc_offset_secs)| Timestamp {
        unix_nanos,
        utc_offset_secs,
    })
}

fn master_key() -> impl Strategy<Value = MasterKey> {
    (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u64>()).prop_map(
        |(encryption, id_key, chunker_seed)| MasterKey {
            encryption,
            id_key,
            chunker_seed,
        },
    )
}

fn chunker() -> impl Strategy<Value = ChunkerParams> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u8>()).prop_map(
        |(min_size, avg_size, max_size, normalization)| ChunkerParams {
            min_size,
            avg_size,
            max_size,
            normalization,
        },
    )
}

fn config() -> impl Strategy<Value = Config> {
    (
        any::<u16>(),
        any::<[u8; 32]>(),
        chunker(),
        any::<i32>(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(
            |(version, repo_id, chunker, compression_level, pack_size, rules)| Config {
                version,
                repo_id,
                chunker,
                compression_level,
                pack_size,
                page_rules: if rules {
                    cairn_format::default_page_rules()
                } else {
                    Vec::new()
                },
            },
        )
}

fn kdf() -> impl Strategy<Value = KdfParams> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<[u8; 32]>()).prop_map(
        |(memory_kib, iterations, parallelism, salt)| KdfParams {
            memory_kib,
            iterations,
            parallelism,
            salt,
        },
    )
}

fn key_file() -> impl Strategy<Value = KeyFile> {
    (timestamp(), text(), text(), kdf(), bytes(120)).prop_map(
        |(created, hostname, username, kdf, wrapped)| KeyFile {
            created,
            hostname,
            username,
            kdf,
            wrapped,
        },
    )
}

fn lock() -> impl Strategy<Value = Lock> {
    let mode = prop_oneof![
        Just(LockMode::Shared),
        Just(LockMode::Maintenance),
        Just(LockMode::Exclusive)
    ];
    (timestamp(), timestamp(), mode, text(), text(), any::<u32>()).prop_map(
        |(time, started, mode, hostname, username, pid)| Lock {
            time,
            started,
            mode,
            hostname,
            username,
            pid,
        },
    )
}

fn blob_type() -> impl Strategy<Value = BlobType> {
    prop_oneof![Just(BlobType::Data), Just(BlobType::Tree)]
}

fn pack_entry() -> impl Strategy<Value = PackEntry> {
    (blob_type(), id(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(blob_type, id, offset, length, raw_length)| PackEntry {
            blob_type,
            id,
            offset,
            length,
            raw_length,
            group_offset: None,
        },
    )
}

fn pack_header() -> impl Strategy<Value = PackHeader> {
    vec(pack_entry(), 0..5).prop_map(|entries| PackHeader { entries })
}

fn index_file() -> impl Strategy<Value = IndexFile> {
    let pack = (id(), vec(pack_entry(), 1..4), option::of(timestamp())).prop_map(
        |(id, blobs, condemned)| IndexPack {
            id,
            blobs,
            condemned,
        },
    );
    (vec(id(), 0..3), vec(pack, 0..3))
        .prop_map(|(supersedes, packs)| IndexFile { supersedes, packs })
}

fn summary() -> impl Strategy<Value = SnapshotSummary> {
    (timestamp(), timestamp(), any::<[u64; 13]>()).prop_map(|(backup_start, backup_end, c)| {
        SnapshotSummary {
            backup_start,
            backup_end,
            files_new: c[0],
            files_changed: c[1],
            files_unmodified: c[2],
            dirs_new: c[3],
            dirs_changed: c[4],
            dirs_unmodified: c[5],
            data_blobs: c[6],
            tree_blobs: c[7],
            data_added: c[8],
            data_added_packed: c[9],
            total_files_processed: c[10],
            total_bytes_processed: c[11],
            errors: c[12],
        }
    })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        (
            timestamp(),
            proptest::option::of(id()),
            id(),
            vec(bytes(20), 0..3),
            text(),
            text(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            vec(text(), 0..3),
            vec(text(), 0..3),
            text(),
            proptest::option::of(summary()),
        ),
    )
        .prop_map(
            |(
                (time, parent, tree, paths, hostname, username),
                (uid, gid, tags, excludes, program_version, summary),
            )| Snapshot {
                time,
                parent,
                tree,
                paths,
                hostname,
                username,
                uid,
                gid,
                tags,
                excludes,
                program_version,
                summary,
            },
        )
}

fn node_kind() -> impl Strategy<Value = NodeKind> {
    prop_oneof![
        Just(NodeKind::File),
        Just(NodeKind::Dir),
        Just(NodeKind::Symlink),
        Just(NodeKind::Fifo),
        Just(NodeKind::Socket),
        Just(NodeKind::CharDevice),
        Just(NodeKind::BlockDevice),
    ]
}

fn xattr() -> impl Strategy<Value = Xattr> {
    (bytes(10), bytes(10)).prop_map(|(name, value)| Xattr { name, value })
}

/// Any node, names not necessarily valid.
fn node() -> impl Strategy<Value = Node> {
    (
        (
            bytes(12),
            node_kind(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            text(),
            text(),
        ),
        (
            file_time(),
            file_time(),
            file_time(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            bytes(16),
            vec(xattr(), 0..3),
            vec(id(), 0..3),
            proptest::option::of(id()),
        ),
    )
        .prop_map(
            |(
                (name, kind, mode, uid, gid, user, group),
                (mtime, atime, ctime, size, inode, device, rdev, links),
                (link_target, xattrs, content, subtree),
            )| Node {
                name,
                kind,
                mode,
                uid,
                gid,
                user,
                group,
                mtime,
                atime,
                ctime,
                size,
                inode,
                device,
                rdev,
                links,
                link_target,
                xattrs,
                content: Content::Blobs(content),
                subtree,
            },
        )
}

/// A node that passes [`Tree::decode`]'s checks (valid name, subtree iff directory).
fn valid_node() -> impl Strategy<Value = Node> {
    (node(), vec(any::<u8>(), 1..12), id(), any::<bool>()).prop_map(|(mut n, name, sub, lists)| {
        n.name = name
            .into_iter()
            .map(|b| if b == b'/' || b == 0 { b'x' } else { b })
            .collect();
        if n.name == b"." || n.name == b".." {
            n.name.push(b'x');
        }
        n.subtree = (n.kind == NodeKind::Dir).then_some(sub);
        // Format 4: a file may name content lists instead of blobs.
        if lists && n.kind == NodeKind::File && !n.content.is_empty() {
            n.content = Content::Lists(n.content.refs().to_vec());
        }
        n
    })
}

/// A canonical, valid tree.
fn valid_tree() -> impl Strategy<Value = Tree> {
    vec(valid_node(), 0..6).prop_map(|mut nodes| {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        let mut t = Tree { nodes };
        t.canonicalize();
        // Canonical trees have unique xattr names per node.
        for n in &mut t.nodes {
            n.xattrs.dedup_by(|a, b| a.name == b.name);
        }
        t
    })
}

fn sealed_kind() -> impl Strategy<Value = FileKind> {
    prop_oneof![
        Just(FileKind::Config),
        Just(FileKind::Lock),
        Just(FileKind::Snapshot),
        Just(FileKind::Index)
    ]
}

fn level() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), Just(1), Just(3)]
}

/// Any value of a sealed file kind.
#[derive(Debug, Clone)]
enum Sealed {
    Config(Config),
    Lock(Lock),
    Snapshot(Box<Snapshot>),
    Index(IndexFile),
}

fn sealed_value() -> impl Strategy<Value = Sealed> {
    prop_oneof![
        config().prop_map(Sealed::Config),
        lock().prop_map(Sealed::Lock),
        snapshot().prop_map(|s| Sealed::Snapshot(Box::new(s))),
        index_file().prop_map(Sealed::Index),
    ]
}

impl Sealed {
    fn kind(&self) -> FileKind {
        match self {
            Sealed::Config(_) => FileKind::Config,
            Sealed::Lock(_) => FileKind::Lock,
            Sealed::Snapshot(_) => FileKind::Snapshot,
            Sealed::Index(_) => FileKind::Index,
        }
    }

    fn encode(&self, key: &MasterKey, level: i32) -> Vec<u8> {
        match self {
            Sealed::Config(v) => encode_sealed(key, FileKind::Config, v, level),
            Sealed::Lock(v) => v.encode_sealed(key, 3, level).unwrap(),
            Sealed::Snapshot(v) => encode_sealed(key, FileKind::Snapshot, &**v, level),
            // Every index version that can hold the file: the level picks one.
            Sealed::Index(v) => {
                let any_condemned = v.packs.iter().any(|p| p.condemned.is_some());
                let version = if any_condemned {
                    3
                } else {
                    1 + (level % 3) as u16
                };
                v.encode_sealed(key, version, level).unwrap()
            }
        }
    }

    /// Decode `data` as this value's kind: `Ok(true)` if it decodes to this very value,
    /// `Ok(false)` if to another value.
    fn decode_same(&self, key: &MasterKey, data: &[u8]) -> Result<bool, FormatError> {
        Ok(match self {
            Sealed::Config(v) => decode_sealed::<Config>(key, FileKind::Config, data)? == *v,
            Sealed::Lock(v) => Lock::decode_sealed(key, data)? == *v,
            Sealed::Snapshot(v) => decode_sealed::<Snapshot>(key, FileKind::Snapshot, data)? == **v,
            Sealed::Index(v) => IndexFile::decode_sealed(key, data)? == *v,
        })
    }
}

/// Decode `data` as `kind`, whatever its type.
fn decode_as(key: &MasterKey, kind: FileKind, data: &[u8]) -> Result<(), FormatError> {
    match kind {
        FileKind::Config => decode_sealed::<Config>(key, kind, data).map(drop),
        FileKind::Lock => Lock::decode_sealed(key, data).map(drop),
        FileKind::Snapshot => decode_sealed::<Snapshot>(key, kind, data).map(drop),
        FileKind::Index => IndexFile::decode_sealed(key, data).map(drop),
        FileKind::Key => KeyFile::decode(data).map(drop),
        FileKind::Pack => decode_pack_header(key, data).map(drop),
    }
}

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    v: &T,
) -> Result<(), TestCaseError> {
    let bytes = to_postcard(v);
    let back: T = from_postcard(&bytes, "value").map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, v);
    // Trailing bytes are refused.
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert!(from_postcard::<T>(&longer, "value").is_err());
    Ok(())
}

/// A pseudo-random non-zero XOR mask for position `i`, derived from `seed`.
fn mask(seed: u64, i: usize) -> u8 {
    let x = seed
        .wrapping_add(i as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((x >> 56) as u8).max(1)
}

/// Build a pack from blobs; returns the pack and its header.
fn build_pack(key: &MasterKey, blobs: &[(BlobType, Vec<u8>)], level: i32) -> (Vec<u8>, PackHeader) {
    let mut pack = preamble(FileKind::Pack).to_vec();
    let mut entries = Vec::new();
    for (t, plain) in blobs {
        let id = key.blob_id(plain);
        let sealed = seal_blob(key, *t, &id, plain, level);
        entries.push(PackEntry {
            blob_type: *t,
            id,
            offset: pack.len() as u32,
            length: sealed.len() as u32,
            raw_length: plain.len() as u32,
            group_offset: None,
        });
        pack.extend_from_slice(&sealed);
    }
    let header = PackHeader { entries };
    finish_pack(key, 1, &mut pack, &header).unwrap();
    (pack, header)
}

/// Read a pack the way a checker does: header, then every blob it lists.
fn read_pack(key: &MasterKey, pack: &[u8]) -> Result<Vec<Vec<u8>>, FormatError> {
    let h = decode_pack_header(key, pack)?;
    h.entries
        .iter()
        .map(|e| {
            open_blob(
                key,
                e.blob_type,
                &e.id,
                &pack[e.offset as usize..(e.offset + e.length) as usize],
                e.raw_length,
            )
        })
        .collect()
}

/// Build a pack of `version` (2 or 5): runs of consecutive blobs with the same tag (and more
/// than one blob) are sealed as groups, the others alone. In version 5, blobs tagged 1 are
/// tree blobs (so their runs are tree groups).
fn build_pack_v2(
    key: &MasterKey,
    version: u16,
    blobs: &[(u8, Vec<u8>)],
    level: i32,
) -> (Vec<u8>, PackHeader) {
    let blob_type = |tag: u8| {
        if version >= 5 && tag == 1 {
            BlobType::Tree
        } else {
            BlobType::Data
        }
    };
    let mut pack = cairn_format::preamble_of(FileKind::Pack, version).to_vec();
    let mut entries = Vec::new();
    let mut i = 0;
    while i < blobs.len() {
        let mut j = i + 1;
        while j < blobs.len() && blobs[j].0 == blobs[i].0 {
            j += 1;
        }
        let run = &blobs[i..j];
        let t = blob_type(run[0].0);
        if run.len() == 1 {
            let plain = &run[0].1;
            let id = key.blob_id(plain);
            let sealed = seal_blob(key, t, &id, plain, level);
            entries.push(PackEntry {
                blob_type: t,
                id,
                offset: pack.len() as u32,
                length: sealed.len() as u32,
                raw_length: plain.len() as u32,
                group_offset: None,
            });
            pack.extend_from_slice(&sealed);
        } else {
            let all: Vec<u8> = run.iter().flat_map(|(_, p)| p.iter().copied()).collect();
            let mut sealed = Vec::new();
            cairn_format::seal_group_into(key, t, &all, level, &mut sealed);
            entries.extend(
                cairn_format::group_entries(
                    t,
                    pack.len() as u32,
                    sealed.len() as u32,
                    run.iter().map(|(_, p)| (key.blob_id(p), p.len() as u32)),
                )
                .unwrap(),
            );
            pack.extend_from_slice(&sealed);
        }
        i = j;
    }
    let header = PackHeader { entries };
    finish_pack(key, version, &mut pack, &header).unwrap();
    (pack, header)
}

/// Read a version-2 pack the way a checker does: every blob, each group opened once.
fn read_pack_v2(key: &MasterKey, pack: &[u8]) -> Result<Vec<Vec<u8>>, FormatError> {
    let h = decode_pack_header(key, pack)?;
    let mut group: Option<(u32, Vec<u8>)> = None;
    let mut out = Vec::new();
    for e in &h.entries {
        let sealed = &pack[e.offset as usize..(e.offset + e.length) as usize];
        match e.group_offset {
            None => out.push(open_blob(key, e.blob_type, &e.id, sealed, e.raw_length)?),
            Some(_) => {
                if group.as_ref().is_none_or(|(o, _)| *o != e.offset) {
                    let g =
                        cairn_format::open_group_in_place(key, e.blob_type, &mut sealed.to_vec())?
                            .into_owned();
                    group = Some((e.offset, g));
                }
                let g = group
                    .as_ref()
                    .map(|(_, g)| g.as_slice())
                    .unwrap_or_default();
                out.push(cairn_format::blob_in_group(key, e, g)?.to_vec());
            }
        }
    }
    Ok(out)
}

fn cheap_kdf(salt: [u8; 32]) -> KdfParams {
    KdfParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
        salt,
    }
}

// ---------------------------------------------------------------------------------------------
// Roundtrips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_type_roundtrips_through_postcard(
        c in config(), k in key_file(), l in lock(), h in pack_header(), i in index_file(),
        s in snapshot(), n in node(), m in master_key(), t in valid_tree(), x in xattr(), ts in timestamp(),
    ) {
        roundtrip(&c)?;
        roundtrip(&c.chunker)?;
        roundtrip(&k)?;
        roundtrip(&k.kdf)?;
        for version in [1, 3] {
            let back = Lock::decode(version, &l.encode(version).unwrap()).unwrap();
            if version == 3 {
                prop_assert_eq!(&back, &l);
            } else {
                // Version 1 keeps no start time and knows no maintenance mode.
                prop_assert_eq!(back.time, l.time);
                prop_assert_eq!(back.mode == LockMode::Shared, l.mode == LockMode::Shared);
                prop_assert_eq!(&back.hostname, &l.hostname);
            }
        }
        roundtrip(&h)?;
        // Index files are stored only through their versioned wire forms.
        for version in [3, 5] {
            let back = IndexFile::decode(version, &i.encode(version).unwrap()).unwrap();
            prop_assert_eq!(&back, &i);
        }
        roundtrip(&s)?;
        roundtrip(&s.summary)?;
        roundtrip(&n)?;
        roundtrip(&n.kind)?;
        roundtrip(&x)?;
        roundtrip(&ts)?;
        roundtrip(&Id(m.id_key))?;
        let mb = to_postcard(&m);
        prop_assert!(from_postcard::<MasterKey>(&mb, "master key").unwrap() == m);
        prop_assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        prop_assert_eq!(KeyFile::decode(&k.encode()).unwrap(), k);
    }

    #[test]
    fn sealed_files_roundtrip(v in sealed_value(), key in master_key(), lvl in level()) {
        let data = v.encode(&key, lvl);
        let version = u16::from_le_bytes([data[6], data[7]]);
        prop_assert_eq!(&data[..PREAMBLE_LEN], &cairn_format::preamble_of(v.kind(), version)[..]);
        prop_assert!(version == 1 || matches!(v.kind(), FileKind::Index | FileKind::Lock));
        prop_assert!(v.decode_same(&key, &data).unwrap());
    }

    #[test]
    fn blobs_and_packs_roundtrip(
        key in master_key(),
        blobs in vec((blob_type(), prop_oneof![bytes(300), (any::<u8>(), 0usize..5000).prop_map(|(b, n)| vec![b; n])]), 0..5),
        lvl in level(),
    ) {
        let (pack, header) = build_pack(&key, &blobs, lvl);
        prop_assert_eq!(decode_pack_header(&key, &pack).unwrap(), header);
        let got = read_pack(&key, &pack).unwrap();
        let want: Vec<Vec<u8>> = blobs.iter().map(|(_, b)| b.clone()).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn key_file_wraps_and_unwraps(key in master_key(), pw in bytes(20), other in bytes(20), salt in any::<[u8; 32]>()) {
        let kf = KeyFile::wrap(&key, &pw, cheap_kdf(salt), Timestamp::default(), "h".into(), "u".into(), [1; 24]).unwrap();
        let back = KeyFile::decode(&kf.encode()).unwrap();
        prop_assert!(back.unwrap_key(&pw).unwrap() == key);
        if other != pw {
            check!(matches!(back.unwrap_key(&other), Err(FormatError::WrongPassword)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trees: canonical encoding and decoder validation
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn tree_encoding_is_deterministic_after_canonicalize(t in valid_tree(), seed in any::<u64>()) {
        // Any permutation of the nodes and of each node's xattrs canonicalizes to the same bytes.
        let mut shuffled = t.clone();
        let n = shuffled.nodes.len();
        for i in (1..n).rev() {
            shuffled.nodes.swap(i, (mask(seed, i) as usize) % (i + 1));
        }
        for node in &mut shuffled.nodes {
            node.xattrs.reverse();
        }
        shuffled.canonicalize();
        prop_assert_eq!(shuffled.encode(), t.encode());
        let decoded = Tree::decode(&t.encode()).unwrap();
        prop_assert_eq!(decoded.encode(), t.encode());
        for node in &t.nodes {
            prop_assert_eq!(t.get(&node.name), Some(node));
        }
    }

    #[test]
    fn tree_decoder_refuses_invalid_trees(t in valid_tree(), pick in any::<prop::sample::Index>(), bad in 0u8..6) {
        prop_assume!(!t.nodes.is_empty());
        let mut t = t;
        let i = pick.index(t.nodes.len());
        match bad {
            // Unsorted (needs two nodes; with one, the last arm applies).
            0 if t.nodes.len() >= 2 => t.nodes.swap(0, 1),
            // Duplicate name.
            1 => { let dup = t.nodes[i].clone(); t.nodes.insert(i, dup); }
            // Invalid names.
            2 => t.nodes[i].name = Vec::new(),
            3 => t.nodes[i].name = if i % 2 == 0 { b"..".to_vec() } else { b"a/b".to_vec() },
            4 => t.nodes[i].name.push(0),
            // Subtree on a non-directory / missing on a directory.
            _ => {
                let n = &mut t.nodes[i];
                if n.kind == NodeKind::Dir { n.subtree = None } else { n.subtree = Some(Id([5; 32])) }
            }
        }
        // Encode as is (no canonicalize): the decoder must refuse it.
        let bytes = to_postcard(&t);
        prop_assert!(matches!(Tree::decode(&bytes), Err(FormatError::Malformed { .. })), "accepted {:?}", t);
    }
}

// ---------------------------------------------------------------------------------------------
// Tamper detection
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn tampered_sealed_files_are_refused(v in sealed_value(), key in master_key(), lvl in level(), seed in any::<u64>()) {
        let data = v.encode(&key, lvl);
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= mask(seed, i);
            prop_assert!(v.decode_same(&key, &bad).is_err(), "flip at {} of {} accepted", i, data.len());
        }
        for len in 0..data.len() {
            prop_assert!(v.decode_same(&key, &data[..len]).is_err(), "truncation to {} accepted", len);
        }
        let mut longer = data.clone();
        longer.push(mask(seed, 0));
        prop_assert!(v.decode_same(&key, &longer).is_err());
    }

    #[test]
    fn tampered_blobs_are_refused(key in master_key(), t in blob_type(), plain in bytes(200), lvl in level(), seed in any::<u64>()) {
        let id = key.blob_id(&plain);
        let sealed = seal_blob(&key, t, &id, &plain, lvl);
        let raw = plain.len() as u32;
        prop_assert_eq!(open_blob(&key, t, &id, &sealed, raw).unwrap(), plain);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= mask(seed, i);
            prop_assert!(open_blob(&key, t, &id, &bad, raw).is_err(), "flip at {} accepted", i);
        }
        for len in 0..sealed.len() {
            prop_assert!(open_blob(&key, t, &id, &sealed[..len], raw).is_err(), "truncation to {} accepted", len);
        }
        // A wrong raw length is refused too.
        prop_assert!(open_blob(&key, t, &id, &sealed, raw + 1).is_err());
    }

    #[test]
    fn tampered_packs_are_refused(
        key in master_key(),
        blobs in vec((blob_type(), bytes(100)), 0..4),
        lvl in level(),
        seed in any::<u64>(),
    ) {
        let (pack, _) = build_pack(&key, &blobs, lvl);
        let header_start = pack.len() - 4 - u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
        for i in 0..pack.len() {
            let mut bad = pack.clone();
            bad[i] ^= mask(seed, i);
            prop_assert!(read_pack(&key, &bad).is_err(), "flip at {} of {} accepted", i, pack.len());
            // The pack header alone (preamble, header, trailer) detects its own bytes.
            if i < PREAMBLE_LEN || i >= header_start {
                prop_assert!(decode_pack_header(&key, &bad).is_err(), "header flip at {} accepted", i);
            }
        }
        for len in 0..pack.len() {
            prop_assert!(decode_pack_header(&key, &pack[..len]).is_err(), "truncation to {} accepted", len);
        }
    }

    #[test]
    fn packs_with_groups_roundtrip_and_refuse_tampering(
        key in master_key(),
        blobs in vec((0u8..3, vec(any::<u8>(), 1..80)), 1..7),
        lvl in level(),
        seed in any::<u64>(),
        version in prop_oneof![Just(2u16), Just(5u16)],
    ) {
        // Distinct contents: a pack never holds one blob twice.
        let mut blobs = blobs;
        for (i, (_, b)) in blobs.iter_mut().enumerate() {
            b.push(i as u8);
        }
        let (pack, header) = build_pack_v2(&key, version, &blobs, lvl);
        let want: Vec<Vec<u8>> = blobs.iter().map(|(_, b)| b.clone()).collect();
        prop_assert_eq!(read_pack_v2(&key, &pack).unwrap(), want);
        // The header's units survive re-encoding, and version 1 cannot express groups.
        prop_assert_eq!(PackHeader::decode(version, &header.encode(version).unwrap()).unwrap(), header.clone());
        if header.entries.iter().any(|e| e.group_offset.is_some()) {
            prop_assert!(header.encode(1).is_err());
        }
        // Version 2 cannot express a group of trees, and refuses one written by version 5.
        if header.entries.iter().any(|e| e.group_offset.is_some() && e.blob_type == BlobType::Tree) {
            prop_assert!(header.encode(2).is_err());
            prop_assert!(PackHeader::decode(2, &header.encode(5).unwrap()).is_err());
        } else {
            prop_assert_eq!(header.encode(2).unwrap(), header.encode(5).unwrap());
        }
        for i in 0..pack.len() {
            let mut bad = pack.clone();
            bad[i] ^= mask(seed, i);
            prop_assert!(read_pack_v2(&key, &bad).is_err(), "flip at {} of {} accepted", i, pack.len());
        }
        for len in 0..pack.len() {
            prop_assert!(decode_pack_header(&key, &pack[..len]).is_err(), "truncation to {} accepted", len);
        }
    }

    #[test]
    fn tampered_key_files_never_yield_another_key(
        key in master_key(), pw in bytes(16), salt in any::<[u8; 32]>(), host in text(), seed in any::<u64>(),
    ) {
        let kf = KeyFile::wrap(&key, &pw, cheap_kdf(salt), Timestamp::default(), host, "u".into(), [2; 24]).unwrap();
        let data = kf.encode();
        // created, hostname and username are not authenticated (FORMAT.md §16): a flip there may
        // decode to other metadata, but never to another master key. From the KDF parameters on,
        // every flip must fail.
        let meta_end = PREAMBLE_LEN + to_postcard(&(kf.created, &kf.hostname, &kf.username)).len();
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= mask(seed, i);
            let res = KeyFile::decode(&bad).and_then(|k| k.unwrap_key(&pw));
            match res {
                Err(_) => {}
                Ok(k) => {
                    prop_assert!(k == key, "flip at {} unwrapped another master key", i);
                    prop_assert!(i >= PREAMBLE_LEN && i < meta_end, "flip at {} (kdf/wrapped) accepted", i);
                }
            }
        }
        for len in 0..data.len() {
            prop_assert!(KeyFile::decode(&data[..len]).is_err(), "truncation to {} accepted", len);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Binding: ids, types, kinds, keys
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_blob_opens_only_as_its_own_id_and_type(key in master_key(), t in blob_type(), a in bytes(100), b in bytes(100), lvl in level()) {
        let id_a = key.blob_id(&a);
        let id_b = key.blob_id(&b);
        let sealed = seal_blob(&key, t, &id_a, &a, lvl);
        let other_type = if t == BlobType::Data { BlobType::Tree } else { BlobType::Data };
        check!(matches!(open_blob(&key, other_type, &id_a, &sealed, a.len() as u32), Err(FormatError::Authentication(_))));
        if id_a != id_b {
            check!(matches!(open_blob(&key, t, &id_b, &sealed, a.len() as u32), Err(FormatError::Authentication(_))));
            prop_assert!(open_blob(&key, t, &id_b, &sealed, b.len() as u32).is_err());
        }
        // A blob sealed under a wrong id claim (id not of its content) is caught after opening.
        let wrong = seal_blob(&key, t, &id_b, &a, lvl);
        if id_a != id_b {
            check!(matches!(open_blob(&key, t, &id_b, &wrong, a.len() as u32), Err(FormatError::IdMismatch { .. })));
        }
    }

    #[test]
    fn files_do_not_decode_as_another_kind(v in sealed_value(), key in master_key(), other in sealed_kind(), lvl in level()) {
        prop_assume!(other != v.kind());
        let data = v.encode(&key, lvl);
        check!(matches!(decode_as(&key, other, &data), Err(FormatError::WrongKind { .. })));
        prop_assert!(decode_as(&key, FileKind::Key, &data).is_err());
        prop_assert!(decode_as(&key, FileKind::Pack, &data).is_err());
        // Relabelled to the other kind, the preamble no longer matches the AAD.
        let mut relabelled = data.clone();
        relabelled[5] = other.letter();
        // (A version-2 or -3 object relabelled as a kind without that version is refused
        // earlier.)
        check!(matches!(
            decode_as(&key, other, &relabelled),
            Err(FormatError::Authentication(_) | FormatError::UnsupportedVersion { version: 2 | 3, .. })
        ));
        // A newer version is refused before decryption.
        let newer = cairn_format::newest_version(v.kind()) + 1;
        let mut next = data.clone();
        next[6..8].copy_from_slice(&newer.to_le_bytes());
        check!(matches!(v.decode_same(&key, &next), Err(FormatError::UnsupportedVersion { version, .. }) if version == newer));
    }

    #[test]
    fn snapshot_is_not_an_index(s in snapshot(), key in master_key()) {
        let data = encode_sealed(&key, FileKind::Snapshot, &s, 3);
        check!(matches!(
            IndexFile::decode_sealed(&key, &data),
            Err(FormatError::WrongKind { expected: "index", .. })
        ));
        let mut relabelled = data.clone();
        relabelled[5] = b'I';
        check!(matches!(IndexFile::decode_sealed(&key, &relabelled), Err(FormatError::Authentication(_))));
    }

    #[test]
    fn wrong_key_fails_everywhere(v in sealed_value(), key in master_key(), wrong in master_key(), plain in bytes(64), lvl in level()) {
        prop_assume!(key.encryption != wrong.encryption);
        let data = v.encode(&key, lvl);
        check!(matches!(v.decode_same(&wrong, &data), Err(FormatError::Authentication(_))));
        let id = key.blob_id(&plain);
        let sealed = seal_blob(&key, BlobType::Data, &id, &plain, lvl);
        check!(matches!(open_blob(&wrong, BlobType::Data, &id, &sealed, plain.len() as u32), Err(FormatError::Authentication(_))));
        let (pack, _) = build_pack(&key, &[(BlobType::Data, plain.clone())], lvl);
        check!(matches!(decode_pack_header(&wrong, &pack), Err(FormatError::Authentication(_))));
    }
}

#[test]
fn wrong_password_and_wrong_kdf_fail() {
    let key = MasterKey {
        encryption: [1; 32],
        id_key: [2; 32],
        chunker_seed: 3,
    };
    let kf = KeyFile::wrap(
        &key,
        b"right",
        cheap_kdf([4; 32]),
        Timestamp::default(),
        "h".into(),
        "u".into(),
        [5; 24],
    )
    .unwrap();
    assert!(matches!(
        kf.unwrap_key(b"wrong"),
        Err(FormatError::WrongPassword)
    ));
    let mut other_salt = kf.clone();
    other_salt.kdf.salt[0] ^= 1;
    assert!(matches!(
        other_salt.unwrap_key(b"right"),
        Err(FormatError::WrongPassword)
    ));
    let mut costly = kf.clone();
    costly.kdf.memory_kib = u32::MAX;
    assert!(matches!(
        costly.unwrap_key(b"right"),
        Err(FormatError::InvalidParameter(_))
    ));
    let mut passes = kf;
    passes.kdf.iterations = 1001;
    assert!(matches!(
        passes.unwrap_key(b"right"),
        Err(FormatError::InvalidParameter(_))
    ));
}

#[test]
fn two_units_naming_one_box_are_refused() {
    // [units: 2] [Group, offset 8, length 72, 1 blob: id 01×32, 12] twice: decoding this and
    // encoding it again would not give the same bytes (one group of two blobs).
    let mut unit = vec![0x01, 0x08, 0x48, 0x01];
    unit.extend_from_slice(&[1; 32]);
    unit.push(12);
    let mut twice = vec![0x02];
    twice.extend_from_slice(&unit);
    twice.extend_from_slice(&unit);
    assert!(matches!(
        PackHeader::decode(2, &twice),
        Err(FormatError::Malformed { .. })
    ));
    let mut once = vec![0x01];
    once.extend_from_slice(&unit);
    let h = PackHeader::decode(2, &once).unwrap();
    assert_eq!(h.encode(2).unwrap(), once);
    assert!(PackHeader::decode(3, &once).is_err());
}

#[test]
fn preamble_checks() {
    use cairn_format::check_preamble;
    for kind in FileKind::ALL {
        let p = preamble(kind);
        assert_eq!(check_preamble(&p, kind).unwrap(), (1, &[][..]));
        for len in 0..p.len() {
            assert!(check_preamble(&p[..len], kind).is_err());
        }
        for v in [
            0u16,
            cairn_format::newest_version(kind) + 1,
            0x100,
            u16::MAX,
        ] {
            let mut q = p;
            q[6..8].copy_from_slice(&v.to_le_bytes());
            assert!(matches!(
                check_preamble(&q, kind),
                Err(FormatError::UnsupportedVersion { .. })
            ));
        }
        let mut q = p;
        q[0] = b'C';
        assert!(matches!(
            check_preamble(&q, kind),
            Err(FormatError::BadMagic { .. })
        ));
        let mut q = p;
        q[5] = b'?';
        assert!(matches!(
            check_preamble(&q, kind),
            Err(FormatError::WrongKind { .. })
        ));
    }
}

fn file_time() -> impl Strategy<Value = cairn_format::FileTime> {
    (any::<i64>(), 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| cairn_format::FileTime { secs, nanos })
}

// ---------------------------------------------------------------------------------------------
// The AEAD against an independent implementation
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The sealing construction (HChaCha20 + AWS-LC's ChaCha20-Poly1305) is XChaCha20-Poly1305
    /// byte for byte: the portable RustCrypto crate seals the same bytes and opens ours.
    #[test]
    fn xchacha_matches_the_portable_crate(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        aad in bytes(64),
        plain in bytes(5000),
    ) {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let oracle = chacha20poly1305::XChaCha20Poly1305::new(&key.into());
        let ct = oracle
            .encrypt(&nonce.into(), Payload { msg: &plain, aad: &aad })
            .unwrap();
        let ours = cairn_format::seal_with_nonce(&key, &nonce, &aad, &plain);
        prop_assert_eq!(&ours[..24], &nonce[..]);
        prop_assert_eq!(&ours[24..], &ct[..]);
        let mut buf = ours.clone();
        let opened = cairn_format::open_in_place(&key, &aad, &mut buf, "x").unwrap();
        prop_assert_eq!(opened, &plain[..]);
        let back = oracle
            .decrypt(&nonce.into(), Payload { msg: &ours[24..], aad: &aad })
            .unwrap();
        prop_assert_eq!(back, plain);
    }

    /// Appending a blob to a buffer that already holds bytes seals exactly what `seal_blob`
    /// seals, and opening in place returns the plaintext whether it was compressed or not.
    #[test]
    fn blob_sealed_into_a_buffer_opens_in_place(
        key in master_key(),
        prefix in bytes(100),
        plain in prop_oneof![bytes(3000), vec(0u8..4, 0..70_000)],
        lvl in level(),
        tree in any::<bool>(),
    ) {
        let t = if tree { BlobType::Tree } else { BlobType::Data };
        let id = key.blob_id(&plain);
        let mut buf = prefix.clone();
        cairn_format::seal_blob_into(&key, t, &id, &plain, lvl, &mut buf);
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
        let sealed = buf[prefix.len()..].to_vec();
        prop_assert_eq!(open_blob(&key, t, &id, &sealed, plain.len() as u32).unwrap(), plain.clone());
        let mut inplace = sealed.clone();
        let got = cairn_format::open_blob_in_place(&key, t, &id, &mut inplace, plain.len() as u32).unwrap();
        prop_assert_eq!(&got[..], &plain[..]);
        // The wrong type, id or length never opens.
        let other = if tree { BlobType::Data } else { BlobType::Tree };
        let mut again = sealed.clone();
        check!(cairn_format::open_blob_in_place(&key, other, &id, &mut again, plain.len() as u32).is_err());
        let mut again = sealed;
        check!(cairn_format::open_blob_in_place(&key, t, &id, &mut again, plain.len() as u32 + 1).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever a page holds (damaged b-tree headers, cell pointers past the end, varints
    /// that run off the page), the SQLite cell cutter returns ascending cuts inside the page.
    #[test]
    fn sqlite_cell_cuts_stay_inside_any_page(
        kind in prop_oneof![Just(2u8), Just(5), Just(10), Just(13), any::<u8>()],
        cells in 0u16..40,
        pointers in vec(any::<u16>(), 0..40),
        body in bytes(8192),
        page_log in 9u32..14,
        reserved in 0usize..64,
        min_piece in 16usize..1024,
        first in any::<bool>(),
    ) {
        let size = 1usize << page_log;
        let mut page = body;
        page.resize(size, 0xA5);
        let h = if first { 100 } else { 0 };
        if first {
            page[..16].copy_from_slice(b"SQLite format 3\0");
        }
        page[h] = kind;
        page[h + 3..h + 5].copy_from_slice(&cells.to_be_bytes());
        for (i, p) in pointers.iter().enumerate() {
            let at = h + 12 + 2 * i;
            if at + 2 <= size {
                page[at..at + 2].copy_from_slice(&(p % size as u16).to_be_bytes());
            }
        }
        let mut out = vec![7];
        cairn_format::sqlite_cell_cuts(&page, size - reserved, min_piece, 1000, &mut out);
        check!(out[0] == 7);
        check!(out[1..].iter().all(|&c| c > 1000 && c < 1000 + size));
        check!(out[1..].windows(2).all(|w| w[0] < w[1]));
    }
}
