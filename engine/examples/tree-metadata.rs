//! Measuring aid for the tree-format work of docs/chunking.md ("What is left"): walks every
//! snapshot of a repository in time order and prints, per night and for nights 2..N, what
//! the night's new trees cost as stored today, and what they would cost sealed in groups
//! and with long content lists cut into content-defined, deduplicated sub-lists.
//!
//! `cargo run --release --example tree-metadata -p cairn-engine -- REPO PASSWORD_FILE`
//!
//! Costs count the tree bytes as stored (a group's box once) plus [`PER_BLOB`] bytes of index
//! entry and pack header for every new blob. In a repository of format 4, "stored" includes the content
//! lists the trees name, and the models start from the trees with those lists resolved. Groups are modelled as the night's tree plaintexts, in walk
//! order, compressed in 1 MiB pieces at zstd level 3 (what data groups use). A last model
//! compresses the stored tree blobs in 256 KiB pieces (format 5's tree groups) at level 9
//! against a dictionary: the first night's tree blobs, concatenated (what "tree groups
//! against a dictionary" would store, before the dictionary's own cost).

use std::collections::HashSet;

use cairn_engine::{backend, Repository};
use cairn_format::{BlobType, Content, Id, NodeKind, Tree};

/// Index entry (~35 bytes) plus pack-header entry (~35 bytes) of one blob.
const PER_BLOB: u64 = 70;
/// Average sub-list lengths tried, in ids.
const SUBLIST_AVG: [u32; 4] = [8, 16, 32, 64];
/// zstd levels tried for trees sealed one by one.
const LEVELS: [i32; 4] = [2, 3, 9, 19];
const GROUP: usize = 1 << 20;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, location, password_file] = &args[..] else {
        return Err("usage: tree-metadata REPO PASSWORD_FILE".into());
    };
    let password = std::fs::read_to_string(password_file)?;
    let repo = Repository::open(
        backend::from_location(location, &[])?,
        password.trim_end_matches('\n').as_bytes(),
    )?;
    let indexed = repo.indexed()?;
    let mut snapshots = repo.load_snapshots()?;
    snapshots.sort_by_key(|(_, s)| s.time);

    let mut seen_trees: HashSet<Id> = HashSet::new();
    // Boxes counted so far: a group's box (format 5: tree groups) holds many tree blobs, and
    // every one of their index entries names the whole box.
    let mut boxes: HashSet<(u32, u32)> = HashSet::new();
    let mut seen_lists: Vec<HashSet<Id>> = vec![HashSet::new(); SUBLIST_AVG.len()];
    let mut totals = Night::default();
    // The first night's stored tree blobs, in walk order: the dictionary of the last model.
    let mut first_night: Vec<u8> = Vec::new();
    for (night, (_, snapshot)) in snapshots.iter().enumerate() {
        let mut n = Night::default();
        let mut plain_all = Vec::new();
        // What this repository stored (trees as they are, lists too), for grouping it.
        let mut plain_stored = Vec::new();
        let mut plain_with_refs: Vec<Vec<u8>> = vec![Vec::new(); SUBLIST_AVG.len()];
        let mut stack = vec![snapshot.tree];
        while let Some(id) = stack.pop() {
            if !seen_trees.insert(id) {
                continue;
            }
            let location = indexed
                .index()
                .get(&id)
                .ok_or_else(|| format!("tree {id} is not in the index"))?;
            let mut tree = indexed.load_tree(&id)?;
            n.trees += 1;
            if boxes.insert((location.pack, location.offset)) {
                n.stored += u64::from(location.length);
            }
            plain_stored.extend_from_slice(&tree.encode());
            for node in &mut tree.nodes {
                if let Content::Lists(lists) = &node.content {
                    for l in lists {
                        if seen_trees.insert(*l) {
                            let at = indexed.index().get(l).ok_or("list not indexed")?;
                            if boxes.insert((at.pack, at.offset)) {
                                n.stored += u64::from(at.length);
                            }
                            n.stored_lists += 1;
                            plain_stored.extend(indexed.read_blob(BlobType::Tree, l)?);
                        }
                    }
                    node.content = Content::Blobs(indexed.file_blobs(&node.content)?.into_owned());
                }
            }
            let plain = tree.encode();
            for (k, level) in LEVELS.iter().enumerate() {
                n.alone[k] += zstd::bulk::compress(&plain, *level)?.len() as u64;
            }
            plain_all.extend_from_slice(&plain);
            for node in &tree.nodes {
                n.id_bytes += 32 * node.content.refs().len() as u64;
                if node.kind == NodeKind::Dir {
                    stack.extend(node.subtree);
                }
            }
            for (k, avg) in SUBLIST_AVG.iter().enumerate() {
                let t = with_sublists(&tree, *avg, &mut seen_lists[k], &mut n.lists[k]);
                plain_with_refs[k].extend_from_slice(&t.encode());
            }
        }
        n.grouped = grouped_size(&plain_all)?;
        n.grouped_stored = grouped_size(&plain_stored)?;
        if night == 0 {
            first_night = plain_stored.clone();
        } else {
            n.against_first = against_dictionary(&plain_stored, &first_night)?;
        }
        for (k, p) in plain_with_refs.iter().enumerate() {
            n.grouped_refs[k] = grouped_size(p)?;
        }
        n.print(&format!("night {}", night + 1));
        if night > 0 {
            totals.add(&n);
        }
    }
    totals.print(&format!("nights 2-{}", snapshots.len()));
    Ok(())
}

/// `tree` with every content list of at least `2 * avg` ids replaced by the ids of its
/// sub-lists. A sub-list ends after an id whose first four bytes are 0 modulo `avg` (ids are
/// keyed hashes, so the cut points are content-defined), at least `avg / 4` and at most
/// `4 * avg` ids long. New sub-lists are counted in `new`.
fn with_sublists(tree: &Tree, avg: u32, seen: &mut HashSet<Id>, new: &mut Lists) -> Tree {
    let mut t = tree.clone();
    for node in &mut t.nodes {
        let ids = node.content.refs().to_vec();
        if ids.len() < 2 * avg as usize {
            continue;
        }
        let mut refs = Vec::new();
        let mut start = 0;
        for (i, id) in ids.iter().enumerate() {
            let len = (i + 1 - start) as u32;
            let h = u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
            if (len >= avg / 4 && h % avg == 0) || len >= 4 * avg || i + 1 == ids.len() {
                let mut hasher = blake3::Hasher::new();
                for id in &ids[start..=i] {
                    hasher.update(&id.0);
                }
                let list = Id(*hasher.finalize().as_bytes());
                if seen.insert(list) {
                    new.blobs += 1;
                    new.bytes += 32 * u64::from(len);
                }
                refs.push(list);
                start = i + 1;
            }
        }
        node.content = Content::Lists(refs);
    }
    t
}

/// `plain` in 256 KiB pieces at level 9, each compressed with `dict` as a raw-content
/// dictionary (its last 8 MiB; the window reaches all of it).
fn against_dictionary(plain: &[u8], dict: &[u8]) -> Result<u64, Error> {
    let dict = &dict[dict.len().saturating_sub(8 << 20)..];
    let mut c = zstd::bulk::Compressor::with_dictionary(9, dict)?;
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(24))?;
    let mut total = 0;
    for piece in plain.chunks(256 << 10) {
        total += c.compress(piece)?.len() as u64;
    }
    Ok(total)
}

fn grouped_size(plain: &[u8]) -> Result<u64, Error> {
    let mut total = 0;
    for piece in plain.chunks(GROUP) {
        total += zstd::bulk::compress(piece, 3)?.len() as u64;
    }
    Ok(total)
}

#[derive(Clone, Copy, Default)]
struct Lists {
    blobs: u64,
    bytes: u64,
}

#[derive(Default)]
struct Night {
    trees: u64,
    /// Content lists (format 4) first named this night.
    stored_lists: u64,
    stored: u64,
    id_bytes: u64,
    alone: [u64; LEVELS.len()],
    grouped: u64,
    grouped_stored: u64,
    /// Nights 2..N: the stored tree blobs against the first night's (see the module doc).
    against_first: u64,
    grouped_refs: [u64; SUBLIST_AVG.len()],
    lists: [Lists; SUBLIST_AVG.len()],
}

impl Night {
    fn add(&mut self, o: &Night) {
        self.trees += o.trees;
        self.stored_lists += o.stored_lists;
        self.stored += o.stored;
        self.id_bytes += o.id_bytes;
        self.grouped += o.grouped;
        self.grouped_stored += o.grouped_stored;
        self.against_first += o.against_first;
        for k in 0..LEVELS.len() {
            self.alone[k] += o.alone[k];
        }
        for k in 0..SUBLIST_AVG.len() {
            self.grouped_refs[k] += o.grouped_refs[k];
            self.lists[k].blobs += o.lists[k].blobs;
            self.lists[k].bytes += o.lists[k].bytes;
        }
    }

    fn print(&self, what: &str) {
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "{what}: {} new trees and {} new content lists, {:.2} MB of ids in the trees resolved; as stored {:.2} MB (+ index and headers: {:.2} MB)",
            self.trees,
            self.stored_lists,
            mb(self.id_bytes),
            mb(self.stored),
            mb(self.stored + PER_BLOB * (self.trees + self.stored_lists))
        );
        let alone: Vec<String> = LEVELS
            .iter()
            .zip(self.alone)
            .map(|(l, b)| format!("level {l} {:.2}", mb(b)))
            .collect();
        println!("  trees alone, compressed only: {} MB", alone.join(", "));
        if self.stored_lists > 0 {
            println!(
                "  as stored (trees and content lists) in groups: {:.2} MB",
                mb(self.grouped_stored + PER_BLOB * (self.trees + self.stored_lists))
            );
        }
        if self.against_first > 0 {
            println!(
                "  stored tree blobs in 256 KiB groups at level 9 against the first night's: {:.2} MB (+ index and headers: {:.2} MB)",
                mb(self.against_first),
                mb(self.against_first + PER_BLOB * (self.trees + self.stored_lists))
            );
        }
        println!(
            "  trees in groups: {:.2} MB",
            mb(self.grouped + PER_BLOB * self.trees)
        );
        for (k, avg) in SUBLIST_AVG.iter().enumerate() {
            let l = self.lists[k];
            println!(
                "  groups + sub-lists of ~{avg} ids: {:.2} MB ({} new sub-lists, {:.2} MB of them)",
                mb(self.grouped_refs[k] + l.bytes + PER_BLOB * (self.trees + l.blobs)),
                l.blobs,
                mb(l.bytes)
            );
        }
    }
}
