//! The in-memory master index: blob id → where it is stored.
//!
//! Memory: 48 bytes per blob in one array sorted by id (no hash-table slack, no per-entry
//! allocation), a bucket table of 4 bytes per ~8 blobs that narrows each lookup to a few
//! entries, and ~60 bytes per pack. A million blobs take ~50 MB. The array is built once
//! ([`IndexBuilder`]); blobs added later (prune's repack, `repair`) go to a small hash
//! map that is merged into the array when it grows.
//!
//! Because the array is sorted and free of duplicates, a blob's position in it is a dense
//! number: prune and check mark used blobs in a bit set of one bit per blob
//! ([`MasterIndex::position`]).
//!
//! Packs are live or condemned (format 3, FORMAT.md §10): a pack is condemned when every
//! record in force that names it is. A blob resolves to a copy in a live pack when there is
//! one; [`MasterIndex::contains`], what writers deduplicate against, is true only then.

use std::collections::{HashMap, HashSet};

use cairn_format::{BlobType, Id, IndexFile, IndexPack, PackEntry, Timestamp};

/// Where one blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// Index into [`MasterIndex::packs`].
    pub pack: u32,
    /// Data or tree.
    pub blob_type: BlobType,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
    /// Where the blob starts in its group's plaintext, if it is sealed in a group
    /// (`offset` and `length` are then the group's).
    pub group_offset: Option<u32>,
}

/// Blobs per index file written: a reader decodes one whole file at a time (one per
/// thread), so this bounds the transient memory of loading an index (~4 MB a file)
/// however large the repository; 16 files for a million blobs.
pub const BLOBS_PER_INDEX_FILE: usize = 1 << 16;

/// The high bit of [`Slot::pack`] marks a tree blob; packs are numbered below the two flags.
const TREE_BIT: u32 = 1 << 31;
/// The next bit marks a blob sealed in a group ([`Slot::a`] and [`Slot::b`] then hold three
/// narrower fields).
const GROUP_BIT: u32 = 1 << 30;
const PACK_MASK: u32 = GROUP_BIT - 1;
/// Widths of a grouped blob's fields in `a | b << 32`: its group's sealed length and its own
/// plaintext length (each at most `MAX_GROUP_LEN + 1 + SEAL_OVERHEAD`, under 2^21), and where
/// it starts in the group's plaintext (below `MAX_GROUP_LEN` = 2^20).
const GROUP_LEN_BITS: u32 = 22;
const GROUP_START_BITS: u32 = 20;

/// One blob, packed into 48 bytes: its id and 16 bytes of location. A blob sealed alone
/// keeps its sealed and plaintext lengths in `a` and `b`; a grouped blob's lengths are
/// bounded by the group size, which leaves room for its offset in the group. (One flat
/// 20-byte location took 52 bytes a blob: 4 MB more per million blobs.)
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: Id,
    /// Pack number, [`TREE_BIT`] and [`GROUP_BIT`].
    pack: u32,
    offset: u32,
    a: u32,
    b: u32,
}

/// What the index holds per blob in memory (its sorted array's element).
pub const BYTES_PER_BLOB: usize = std::mem::size_of::<Slot>();
const _: () = assert!(BYTES_PER_BLOB == 48);

impl Slot {
    fn new(id: Id, pack: u32, e: &PackEntry) -> Slot {
        Slot::at(
            id,
            &BlobLocation {
                pack,
                blob_type: e.blob_type,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                group_offset: e.group_offset,
            },
        )
    }

    /// Every location enters the index checked against the format's limits
    /// (`check_entry_limits`, when index files and pack headers are decoded; the packer's
    /// own entries are within them), which bound a grouped blob's fields to their widths
    /// here; a pack number beyond 2^30 would need 32 GiB of pack ids first.
    fn at(id: Id, l: &BlobLocation) -> Slot {
        debug_assert!(l.pack <= PACK_MASK, "pack number {} out of range", l.pack);
        let mut pack = l.pack & PACK_MASK;
        if l.blob_type == BlobType::Tree {
            pack |= TREE_BIT;
        }
        let (a, b) = match l.group_offset {
            None => (l.length, l.raw_length),
            Some(start) => {
                let len_max = (1u64 << GROUP_LEN_BITS) - 1;
                debug_assert!(
                    u64::from(l.length) <= len_max
                        && u64::from(l.raw_length) <= len_max
                        && u64::from(start) < 1 << GROUP_START_BITS,
                    "grouped blob beyond the format's limits: {l:?}"
                );
                pack |= GROUP_BIT;
                let w = u64::from(l.length).min(len_max)
                    | u64::from(l.raw_length).min(len_max) << GROUP_LEN_BITS
                    | u64::from(start) << (2 * GROUP_LEN_BITS);
                (w as u32, (w >> 32) as u32)
            }
        };
        Slot {
            id,
            pack,
            offset: l.offset,
            a,
            b,
        }
    }

    fn pack(&self) -> u32 {
        self.pack & PACK_MASK
    }

    /// A grouped blob's (group sealed length, own plaintext length, start in the group),
    /// unpacked from `a` and `b` as [`Slot::at`] packed them.
    fn grouped(&self) -> Option<(u32, u32, u32)> {
        (self.pack & GROUP_BIT != 0).then(|| {
            let w = u64::from(self.a) | u64::from(self.b) << 32;
            let mask = (1u64 << GROUP_LEN_BITS) - 1;
            (
                (w & mask) as u32,
                ((w >> GROUP_LEN_BITS) & mask) as u32,
                (w >> (2 * GROUP_LEN_BITS)) as u32,
            )
        })
    }

    /// Where the blob starts in its group's plaintext (`None`: sealed alone); orders a
    /// pack's blobs like the pack header does.
    fn group(&self) -> Option<u32> {
        self.grouped().map(|(_, _, start)| start)
    }

    fn location(&self) -> BlobLocation {
        let (length, raw_length, group_offset) = match self.grouped() {
            Some((length, raw, start)) => (length, raw, Some(start)),
            None => (self.a, self.b, None),
        };
        BlobLocation {
            pack: self.pack(),
            blob_type: if self.pack & TREE_BIT != 0 {
                BlobType::Tree
            } else {
                BlobType::Data
            },
            offset: self.offset,
            length,
            raw_length,
            group_offset,
        }
    }

    /// The same slot in pack `p` (renumbering keeps the flags).
    fn renumbered(mut self, p: u32) -> Slot {
        self.pack = (self.pack & !PACK_MASK) | p;
        self
    }
}

impl PackTotals {
    fn count(&mut self, l: &BlobLocation) {
        self.blobs += 1;
        match l.group_offset {
            None => self.bytes += u64::from(l.length),
            Some(start) => {
                self.grouped_raw += u64::from(l.raw_length);
                // A group's box is counted once, with its first blob.
                if start == 0 {
                    self.bytes += u64::from(l.length);
                    self.grouped_bytes += u64::from(l.length);
                }
            }
        }
    }
}

/// The sealed bytes some of one pack's blobs account for: blobs alone by their length,
/// grouped blobs by their plaintext's share of the pack's groups (a group is kept or
/// dropped whole). Summed exactly and divided once, so all of a pack's blobs account for
/// exactly its [`PackTotals::bytes`] (prune weighs a pack's unused space with this).
#[derive(Clone, Copy, Debug, Default)]
pub struct PackShare {
    alone: u64,
    grouped_raw: u64,
}

impl PackShare {
    /// Count a blob of the pack.
    pub fn add(&mut self, l: &BlobLocation) {
        match l.group_offset {
            None => self.alone += u64::from(l.length),
            Some(_) => self.grouped_raw += u64::from(l.raw_length),
        }
    }

    /// The sealed bytes of the blobs counted, in a pack of totals `t`.
    pub fn bytes(&self, t: &PackTotals) -> u64 {
        let grouped = u128::from(self.grouped_raw) * u128::from(t.grouped_bytes)
            / u128::from(t.grouped_raw.max(1));
        self.alone + grouped as u64
    }
}

/// Per pack: how many index entries name it and how many sealed bytes they cover, counted
/// before duplicates are dropped (prune's accounting of a pack's unused space).
#[derive(Clone, Copy, Debug, Default)]
pub struct PackTotals {
    /// Index entries in this pack.
    pub blobs: u32,
    /// Sealed bytes they cover (each group's box once).
    pub bytes: u64,
    /// Plaintext bytes of the grouped blobs.
    pub grouped_raw: u64,
    /// Sealed bytes of the groups.
    pub grouped_bytes: u64,
}

/// All index files merged.
#[derive(Debug, Default, Clone)]
pub struct MasterIndex {
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    totals: Vec<PackTotals>,
    /// Sorted by id, one entry per id.
    sorted: Vec<Slot>,
    /// `buckets[b]..buckets[b + 1]`: the range of `sorted` whose ids start with the
    /// `shift`-bit prefix `b`.
    buckets: Vec<u32>,
    bucket_bits: u32,
    /// Blobs added after the array was built, not yet merged into it.
    recent: HashMap<Id, BlobLocation>,
    /// Further copies of blobs indexed in another pack too (left by interrupted or
    /// concurrent writers; rare). Lookups never return them, but they stay part of what
    /// the index says each pack holds: prune counts them as unused space, check compares
    /// them with the pack headers, and a rewritten index keeps them.
    dups: Vec<Slot>,
    /// Per pack: when it was condemned, if every record naming it is condemned.
    condemned: Vec<Option<Timestamp>>,
    /// Index files that were loaded (by name), except superseded ones.
    pub files: Vec<Id>,
    /// Index files that were loaded but another one supersedes (left by a replacement that
    /// stopped before deleting them): readers ignore them, prune deletes them.
    pub superseded: Vec<Id>,
    /// Per loaded file (parallel to `files`): the packs it names, each with whether its
    /// record there is condemned. Prune rewrites exactly the files that name a pack whose
    /// record changes.
    file_packs: Vec<Vec<(u32, bool)>>,
}

/// Collects index files, then builds a [`MasterIndex`] in one sort. Holds 48 bytes per
/// index entry and no index file: callers add each file as it is decoded and drop it.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    slots: Vec<Slot>,
    files: Vec<FileRecord>,
}

#[derive(Debug)]
struct FileRecord {
    id: Id,
    /// Its entries: `slots[start..end]`.
    start: usize,
    end: usize,
    supersedes: Vec<Id>,
    /// Packs it names (indices into `packs`), with their records' condemnation times.
    packs: Vec<(u32, Option<Timestamp>)>,
}

impl IndexBuilder {
    /// An empty builder.
    pub fn new() -> IndexBuilder {
        IndexBuilder::default()
    }

    /// Add an index file (in any order: the result does not depend on it).
    pub fn add_file(&mut self, name: Id, file: &IndexFile) {
        let start = self.slots.len();
        // Exactly: amortized doubling would leave up to half the array unused at its peak,
        // and growing a large allocation is a remap, not a copy.
        self.slots
            .reserve_exact(file.packs.iter().map(|p| p.blobs.len()).sum());
        let mut packs = Vec::with_capacity(file.packs.len());
        for p in &file.packs {
            let pack = self.pack(&p.id);
            packs.push((pack, p.condemned));
            self.slots
                .extend(p.blobs.iter().map(|e| Slot::new(e.id, pack, e)));
        }
        self.files.push(FileRecord {
            id: name,
            start,
            end: self.slots.len(),
            supersedes: file.supersedes.clone(),
            packs,
        });
    }

    fn pack(&mut self, id: &Id) -> u32 {
        intern_pack(&mut self.packs, &mut self.pack_pos, id).0
    }

    /// The merged index. Files another file lists in `supersedes` (replaced by prune or
    /// repair; a crash may have left them behind) are left out, and so are packs only they
    /// name. Of several entries for one blob the one in the pack with the smallest id is
    /// kept: any copy is valid, and the choice must not depend on load order.
    pub fn finish(self) -> MasterIndex {
        let IndexBuilder {
            packs,
            slots: mut all,
            mut files,
            ..
        } = self;
        let superseded: HashSet<Id> = files
            .iter()
            .flat_map(|f| f.supersedes.iter().copied())
            .collect();
        let superseded_loaded: Vec<Id> = files
            .iter()
            .filter(|f| superseded.contains(&f.id))
            .map(|f| f.id)
            .collect();
        if !superseded_loaded.is_empty() {
            // Drop the superseded files' entries in place (ranges are disjoint).
            files.sort_by_key(|f| f.start);
            let mut keep = vec![true; all.len()];
            for f in files.iter().filter(|f| superseded.contains(&f.id)) {
                keep[f.start..f.end].iter_mut().for_each(|k| *k = false);
            }
            let mut i = 0;
            all.retain(|_| {
                i += 1;
                keep[i - 1]
            });
            files.retain(|f| !superseded.contains(&f.id));
        }

        // Packs that a file in force names, renumbered densely; a pack is condemned when
        // every record naming it is (at the latest of their times).
        let mut named = vec![false; packs.len()];
        let mut status: Vec<Option<Timestamp>> = vec![None; packs.len()];
        let mut live = vec![false; packs.len()];
        for f in &files {
            for &(p, condemned) in &f.packs {
                named[p as usize] = true;
                match condemned {
                    None => live[p as usize] = true,
                    Some(t) => {
                        let s = &mut status[p as usize];
                        *s = Some(s.map_or(t, |old: Timestamp| old.max(t)));
                    }
                }
            }
        }
        let mut idx = MasterIndex::default();
        let mut renumber = vec![u32::MAX; packs.len()];
        for (i, id) in packs.iter().enumerate() {
            if named[i] {
                renumber[i] = idx.packs.len() as u32;
                idx.pack_pos.insert(*id, idx.packs.len() as u32);
                idx.packs.push(*id);
                idx.condemned.push(if live[i] { None } else { status[i] });
            }
        }
        for s in &mut all {
            *s = s.renumbered(renumber[s.pack() as usize]);
        }
        let pack_ids = &idx.packs;
        let condemned = &idx.condemned;
        // Of several copies, one in a live pack comes first: it is the one lookups return.
        all.sort_unstable_by(|a, b| {
            a.id.cmp(&b.id)
                .then_with(|| {
                    condemned[a.pack() as usize]
                        .is_some()
                        .cmp(&condemned[b.pack() as usize].is_some())
                })
                .then_with(|| pack_ids[a.pack() as usize].cmp(&pack_ids[b.pack() as usize]))
                .then(a.offset.cmp(&b.offset))
        });
        // The same entry listed twice (one pack in two index files: a replacement of the
        // index that stopped before its last file) is one entry.
        all.dedup_by(|later, first| {
            later.id == first.id && later.pack() == first.pack() && later.offset == first.offset
        });
        let mut dups = Vec::new();
        let mut prev: Option<Id> = None;
        all.retain(|s| {
            let first = prev != Some(s.id);
            prev = Some(s.id);
            if !first {
                dups.push(*s);
            }
            first
        });
        all.shrink_to_fit();
        idx.sorted = all;
        idx.dups = dups;
        idx.totals = vec![PackTotals::default(); idx.packs.len()];
        for s in idx.sorted.iter().chain(&idx.dups) {
            idx.totals[s.pack() as usize].count(&s.location());
        }
        idx.file_packs = files
            .iter()
            .map(|f| {
                f.packs
                    .iter()
                    .map(|&(p, c)| (renumber[p as usize], c.is_some()))
                    .collect()
            })
            .collect();
        idx.files = files.into_iter().map(|f| f.id).collect();
        idx.superseded = superseded_loaded;
        idx.rebuild_buckets();
        idx
    }
}

impl MasterIndex {
    /// Merge index files (none superseding another).
    pub fn from_files(files: &[(Id, IndexFile)]) -> MasterIndex {
        let mut b = IndexBuilder::new();
        for (id, f) in files {
            b.add_file(*id, f);
        }
        b.finish()
    }

    fn rebuild_buckets(&mut self) {
        // About eight blobs per bucket: a lookup is one bucket read and a short search.
        let n = self.sorted.len();
        let bits = (usize::BITS - (n / 8).leading_zeros()).min(24);
        self.bucket_bits = bits;
        let count = 1usize << bits;
        let mut buckets = Vec::with_capacity(count + 1);
        let mut pos = 0usize;
        for b in 0..count {
            while pos < n && (self.prefix(&self.sorted[pos].id) as usize) < b {
                pos += 1;
            }
            buckets.push(pos as u32);
        }
        buckets.push(n as u32);
        self.buckets = buckets;
    }

    fn prefix(&self, id: &Id) -> u32 {
        if self.bucket_bits == 0 {
            return 0;
        }
        let head = u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
        head >> (32 - self.bucket_bits)
    }

    /// Position of a blob in the sorted array (see [`MasterIndex::position`]).
    fn find(&self, id: &Id) -> Option<usize> {
        if self.sorted.is_empty() {
            return None;
        }
        let b = self.prefix(id) as usize;
        let (lo, hi) = (self.buckets[b] as usize, self.buckets[b + 1] as usize);
        self.sorted[lo..hi]
            .binary_search_by(|s| s.id.cmp(id))
            .ok()
            .map(|i| lo + i)
    }

    /// Add every pack of an index file.
    pub fn add_file(&mut self, name: Id, file: &IndexFile) {
        self.files.push(name);
        for p in &file.packs {
            self.add_pack(p);
        }
        self.file_packs.push(
            file.packs
                .iter()
                .map(|p| (self.pack_pos[&p.id], p.condemned.is_some()))
                .collect(),
        );
    }

    /// Add one pack's blobs. A blob already indexed keeps its location, unless only a
    /// condemned pack held it and this one is live.
    pub fn add_pack(&mut self, p: &IndexPack) {
        let (pack, new) = intern_pack(&mut self.packs, &mut self.pack_pos, &p.id);
        if new {
            self.totals.push(PackTotals::default());
            self.condemned.push(p.condemned);
        } else {
            // Live if any record is; condemned at the latest of the records' times.
            let c = &mut self.condemned[pack as usize];
            *c = match (*c, p.condemned) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        let live = self.condemned[pack as usize].is_none();
        for e in &p.blobs {
            let slot = Slot::new(e.id, pack, e);
            self.totals[pack as usize].count(&slot.location());
            match self.get(&e.id) {
                None => {
                    self.recent.insert(e.id, slot.location());
                }
                Some(old) if live && self.condemned[old.pack as usize].is_some() => {
                    // The live copy becomes the one lookups return.
                    self.dups.push(Slot::at(e.id, &old));
                    match self.find(&e.id) {
                        Some(i) => self.sorted[i] = slot,
                        None => {
                            self.recent.insert(e.id, slot.location());
                        }
                    }
                }
                Some(_) => self.dups.push(slot),
            }
        }
        if self.recent.len() > 4096 && self.recent.len() > self.sorted.len() / 4 {
            self.merge_recent();
        }
    }

    /// Move the blobs added since the build into the sorted array.
    fn merge_recent(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let add: Vec<Slot> = self
            .recent
            .drain()
            .map(|(id, l)| Slot::at(id, &l))
            .collect();
        self.sorted = merge_sorted(std::mem::take(&mut self.sorted), add, |s| s.id);
        self.rebuild_buckets();
    }

    /// Fold later additions into the sorted array, so that [`MasterIndex::position`] covers
    /// every blob.
    pub fn compact(&mut self) {
        self.merge_recent();
    }

    fn find_sorted(&self, id: &Id) -> Option<usize> {
        self.sorted.binary_search_by(|s| s.id.cmp(id)).ok()
    }

    /// Keep only the blobs of the packs `keep` accepts (and only those packs), renumbering
    /// packs. A blob whose indexed copy is in a dropped pack is then found in a kept pack
    /// that holds another copy, if any (callers use this to deduplicate against, or read
    /// from, what certainly exists).
    pub fn retain_packs(&mut self, keep: impl Fn(&Id) -> bool) {
        self.compact();
        let mut renumber = vec![u32::MAX; self.packs.len()];
        let (mut packs, mut totals, mut condemned) = (Vec::new(), Vec::new(), Vec::new());
        for (i, id) in self.packs.iter().enumerate() {
            if keep(id) {
                renumber[i] = packs.len() as u32;
                packs.push(*id);
                totals.push(self.totals[i]);
                condemned.push(self.condemned[i]);
            }
        }
        for f in &mut self.file_packs {
            f.retain_mut(|(p, _)| {
                *p = renumber[*p as usize];
                *p != u32::MAX
            });
        }
        let keep_slot = |s: &mut Slot| {
            let p = renumber[s.pack() as usize];
            if p != u32::MAX {
                *s = s.renumbered(p);
            }
            p != u32::MAX
        };
        self.sorted.retain_mut(keep_slot);
        self.dups.retain_mut(keep_slot);
        // A copy whose indexed twin was in a dropped pack is now the blob's location (a
        // live one rather than a condemned one).
        let dups = std::mem::take(&mut self.dups);
        let mut promoted: HashMap<Id, BlobLocation> = HashMap::new();
        for d in dups {
            if self.find_sorted(&d.id).is_some() {
                self.dups.push(d);
                continue;
            }
            match promoted.get(&d.id) {
                Some(p)
                    if !(condemned[p.pack as usize].is_some()
                        && condemned[d.pack() as usize].is_none()) =>
                {
                    self.dups.push(d)
                }
                Some(p) => {
                    self.dups.push(Slot::at(d.id, p));
                    promoted.insert(d.id, d.location());
                }
                None => {
                    promoted.insert(d.id, d.location());
                }
            }
        }
        self.recent.extend(promoted);
        self.pack_pos = packs
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect();
        self.packs = packs;
        self.totals = totals;
        self.condemned = condemned;
        self.rebuild_buckets();
        self.merge_recent();
    }

    /// Look a blob up: its copy in a live pack if there is one, else in a condemned pack
    /// (still readable until a prune deletes it).
    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        match self.find(id) {
            Some(i) => Some(self.sorted[i].location()),
            None => self.recent.get(id).copied(),
        }
    }

    /// Whether a live pack holds the blob: what writers deduplicate against. A blob held
    /// only by condemned packs is stored again (a prune may delete those packs).
    pub fn contains(&self, id: &Id) -> bool {
        self.get(id)
            .is_some_and(|l| self.condemned[l.pack as usize].is_none())
    }

    /// Set pack number `pack`'s state in memory (prune, before it writes it): condemned at
    /// `t`, or live. Lookups keep their copies; [`MasterIndex::contains`] follows at once.
    pub fn set_condemned(&mut self, pack: u32, t: Option<Timestamp>) {
        self.condemned[pack as usize] = t;
    }

    /// When pack number `pack` was condemned, if it is (FORMAT.md §10).
    pub fn condemned_at(&self, pack: u32) -> Option<Timestamp> {
        self.condemned[pack as usize]
    }

    /// The pack number of a pack id.
    pub fn pack_number(&self, id: &Id) -> Option<u32> {
        self.pack_pos.get(id).copied()
    }

    /// Per loaded index file: the packs it names, with whether its record is condemned.
    pub fn file_packs(&self) -> impl Iterator<Item = (&Id, &[(u32, bool)])> {
        self.files
            .iter()
            .zip(self.file_packs.iter().map(Vec::as_slice))
    }

    /// A blob's dense number in `0..len()`, for bit sets over the index. Only for an index
    /// without later additions ([`MasterIndex::compact`] folds them in).
    pub fn position(&self, id: &Id) -> Option<usize> {
        debug_assert!(self.recent.is_empty());
        self.find(id)
    }

    /// The blob at a position.
    pub fn at(&self, pos: usize) -> (Id, BlobLocation) {
        let s = &self.sorted[pos];
        (s.id, s.location())
    }

    /// The pack name for a location.
    pub fn pack_id(&self, loc: &BlobLocation) -> Id {
        self.packs[loc.pack as usize]
    }

    /// All packs.
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// What the index files say each pack holds (duplicates included), by pack number.
    pub fn pack_totals(&self) -> &[PackTotals] {
        &self.totals
    }

    /// Number of blobs (each counted once, however many copies are stored).
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// No blobs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterate blobs (sorted by id, then the later additions).
    pub fn iter(&self) -> impl Iterator<Item = (Id, BlobLocation)> + '_ {
        self.sorted
            .iter()
            .map(|s| (s.id, s.location()))
            .chain(self.recent.iter().map(|(id, l)| (*id, *l)))
    }

    /// The index's content as index-file packs, each pack's blobs by offset (further copies
    /// of a blob included): what prune and repair write as the new index, and what check
    /// compares with the pack headers. Built one pack at a time from a 4-byte-per-blob order.
    pub fn index_packs(&self) -> impl Iterator<Item = IndexPack> + '_ {
        let n = self.sorted.len();
        let slot = move |i: u32| -> &Slot {
            let i = i as usize;
            if i < n {
                &self.sorted[i]
            } else {
                &self.dups[i - n]
            }
        };
        let mut by_pack: Vec<u32> = (0..(n + self.dups.len()) as u32).collect();
        by_pack.sort_unstable_by_key(|&i| {
            let s = slot(i);
            (s.pack(), s.offset, s.group().unwrap_or(u32::MAX))
        });
        let recent: Vec<(Id, BlobLocation)> = self.recent.iter().map(|(i, l)| (*i, *l)).collect();
        let mut recent_by_pack: HashMap<u32, Vec<PackEntry>> = HashMap::new();
        for (id, l) in recent {
            recent_by_pack
                .entry(l.pack)
                .or_default()
                .push(entry_of(id, &l));
        }
        let mut pos = 0usize;
        (0..self.packs.len() as u32).filter_map(move |p| {
            let mut blobs: Vec<PackEntry> = Vec::new();
            while pos < by_pack.len() && slot(by_pack[pos]).pack() == p {
                let s = slot(by_pack[pos]);
                blobs.push(entry_of(s.id, &s.location()));
                pos += 1;
            }
            if let Some(more) = recent_by_pack.remove(&p) {
                blobs.extend(more);
                blobs.sort_by_key(|e| (e.offset, e.group_offset));
            }
            let condemned = self.condemned[p as usize];
            // A condemned pack that no index named lists no blobs, and is kept all the same.
            (!blobs.is_empty() || condemned.is_some()).then(|| IndexPack {
                id: self.packs[p as usize],
                blobs,
                condemned,
            })
        })
    }

    /// Reconstruct a pack entry.
    pub fn entry(&self, id: &Id) -> Option<PackEntry> {
        self.get(id).map(|l| entry_of(*id, &l))
    }
}

/// The index entry of blob `id` at `l`.
pub(crate) fn entry_of(id: Id, l: &BlobLocation) -> PackEntry {
    PackEntry {
        blob_type: l.blob_type,
        id,
        offset: l.offset,
        length: l.length,
        raw_length: l.raw_length,
        group_offset: l.group_offset,
    }
}

/// `sorted` (ordered by `key`) with `add` (any order) merged in, in one pass: how both the
/// index and the id set fold their recent additions into their sorted arrays.
fn merge_sorted<T, K: Ord>(sorted: Vec<T>, mut add: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    add.sort_unstable_by_key(&key);
    let mut merged = Vec::with_capacity(sorted.len() + add.len());
    let (mut a, mut b) = (sorted.into_iter().peekable(), add.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => key(x) <= key(y),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        merged.extend(if take_a { a.next() } else { b.next() });
    }
    merged
}

/// The number of pack `id` in `packs`, added if new; whether it was.
fn intern_pack(packs: &mut Vec<Id>, pos: &mut HashMap<Id, u32>, id: &Id) -> (u32, bool) {
    match pos.get(id) {
        Some(&i) => (i, false),
        None => {
            let i = packs.len() as u32;
            packs.push(*id);
            pos.insert(*id, i);
            (i, true)
        }
    }
}

/// A set of blob ids in ~32–41 bytes each: a sorted array plus a small hash set of recent
/// insertions, merged into the array once it holds an eighth as many. (A hash set of 32-byte
/// ids alone takes 36–72 bytes each, depending on where its size falls between two powers of
/// two: a backup of a million new blobs held 69 MB in its dedup set.)
#[derive(Debug, Default)]
pub struct IdSet {
    sorted: Vec<Id>,
    recent: HashSet<Id>,
}

impl IdSet {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: &Id) -> bool {
        self.recent.contains(id) || self.sorted.binary_search(id).is_ok()
    }

    /// Add `id`; whether it was new.
    pub fn insert(&mut self, id: Id) -> bool {
        if self.sorted.binary_search(&id).is_ok() || !self.recent.insert(id) {
            return false;
        }
        if self.recent.len() >= (self.sorted.len() / 8).max(1024) {
            let add: Vec<Id> = self.recent.drain().collect();
            self.sorted = merge_sorted(std::mem::take(&mut self.sorted), add, |id| *id);
        }
        true
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// No ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A set of index positions, one bit each: "used" marks over a million blobs take 128 KB.
#[derive(Debug, Clone, Default)]
pub struct BlobSet {
    words: Vec<u64>,
    count: usize,
}

impl BlobSet {
    /// A set for an index of `len` blobs.
    pub fn new(len: usize) -> BlobSet {
        BlobSet {
            words: vec![0; len.div_ceil(64)],
            count: 0,
        }
    }

    /// Add a position; whether it was new.
    pub fn insert(&mut self, pos: usize) -> bool {
        let (w, b) = (pos / 64, 1u64 << (pos % 64));
        let new = self.words[w] & b == 0;
        self.words[w] |= b;
        self.count += usize::from(new);
        new
    }

    /// Whether a position is in the set.
    pub fn contains(&self, pos: usize) -> bool {
        self.words[pos / 64] & (1u64 << (pos % 64)) != 0
    }

    /// Number of positions in the set.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Nothing in the set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(n: u32) -> Id {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        // Spread the prefix like a hash would, so buckets are exercised.
        Id(*blake3::hash(&b).as_bytes())
    }

    fn pack(p: u32, blobs: std::ops::Range<u32>) -> IndexPack {
        IndexPack {
            condemned: None,
            id: id(1_000_000 + p),
            blobs: blobs
                .enumerate()
                .map(|(i, b)| PackEntry {
                    blob_type: if b % 7 == 0 {
                        BlobType::Tree
                    } else {
                        BlobType::Data
                    },
                    id: id(b),
                    offset: i as u32 * 100,
                    length: 100,
                    raw_length: 90 + b,
                    group_offset: None,
                })
                .collect(),
        }
    }

    fn file(packs: Vec<IndexPack>, supersedes: Vec<Id>) -> IndexFile {
        IndexFile { supersedes, packs }
    }

    #[test]
    fn a_location_packs_into_its_slot_and_back_at_the_format_limits() {
        use cairn_format::{check_entry_limits, MAX_GROUP_LEN, SEAL_OVERHEAD};
        let group_len = MAX_GROUP_LEN + 1 + SEAL_OVERHEAD as u32;
        let mut cases = vec![
            // Alone: every field at its widest.
            (BlobType::Data, PACK_MASK, u32::MAX, u32::MAX - 1, None),
            (BlobType::Tree, 0, SEAL_OVERHEAD as u32 + 1, 0, None),
            (BlobType::Data, PACK_MASK, 7, 3, None),
            // Grouped: the longest group, the last byte of it, the first byte.
            (BlobType::Data, 3, group_len, 1, Some(MAX_GROUP_LEN - 1)),
            (BlobType::Data, PACK_MASK, group_len, MAX_GROUP_LEN, Some(0)),
            (BlobType::Data, 0, SEAL_OVERHEAD as u32 + 1, 1, Some(0)),
        ];
        for i in 0..1000u32 {
            let h = *blake3::hash(&i.to_le_bytes()).as_bytes();
            let w = |k: usize| u32::from_le_bytes([h[k], h[k + 1], h[k + 2], h[k + 3]]);
            let raw = w(0) % MAX_GROUP_LEN + 1;
            let start = w(4) % (MAX_GROUP_LEN - raw + 1);
            let len = SEAL_OVERHEAD as u32 + 1 + w(8) % MAX_GROUP_LEN;
            cases.push((BlobType::Data, w(12) & PACK_MASK, len, raw, Some(start)));
            cases.push((BlobType::Tree, w(16) & PACK_MASK, w(20), w(24), None));
        }
        for (n, (blob_type, pack, length, raw_length, group_offset)) in
            cases.into_iter().enumerate()
        {
            let l = BlobLocation {
                pack,
                blob_type,
                offset: n as u32 * 977,
                length,
                raw_length,
                group_offset,
            };
            if group_offset.is_some() {
                // Only what the format's limits admit reaches the index.
                check_entry_limits(&entry_of(id(1), &l), u32::MAX).unwrap();
            }
            let s = Slot::at(id(n as u32), &l);
            assert_eq!(s.location(), l);
            assert_eq!(s.group(), group_offset);
            assert_eq!(s.renumbered(5).location(), BlobLocation { pack: 5, ..l });
        }
    }

    #[test]
    fn lookups_match_a_hash_map_at_every_size() {
        for n in [0u32, 1, 7, 8, 9, 100, 5000] {
            let f = file(vec![pack(0, 0..n / 2), pack(1, n / 2..n)], vec![]);
            let idx = MasterIndex::from_files(&[(id(9_999_999), f.clone())]);
            assert_eq!(idx.len(), n as usize);
            for p in &f.packs {
                for e in &p.blobs {
                    let l = idx.get(&e.id).unwrap();
                    assert_eq!(idx.pack_id(&l), p.id);
                    assert_eq!(idx.entry(&e.id), Some(*e));
                    let pos = idx.position(&e.id).unwrap();
                    assert_eq!(idx.at(pos).0, e.id);
                }
            }
            assert!(!idx.contains(&id(n + 1)));
        }
    }

    #[test]
    fn duplicates_resolve_the_same_way_in_any_order() {
        let a = (id(1), file(vec![pack(0, 0..10)], vec![]));
        let b = (id(2), file(vec![pack(1, 5..15)], vec![]));
        let x = MasterIndex::from_files(&[a.clone(), b.clone()]);
        let y = MasterIndex::from_files(&[b, a]);
        assert_eq!(x.len(), 15);
        for n in 0..15 {
            let (lx, ly) = (x.get(&id(n)).unwrap(), y.get(&id(n)).unwrap());
            assert_eq!(x.pack_id(&lx), y.pack_id(&ly));
        }
        // Totals count every entry, further copies included, and a rewritten index keeps them.
        let total: u32 = x.pack_totals().iter().map(|t| t.blobs).sum();
        assert_eq!(total, 20);
        assert_eq!(x.index_packs().map(|p| p.blobs.len()).sum::<usize>(), 20);
        // One pack listed by two index files in force counts once.
        let twice = MasterIndex::from_files(&[
            (id(1), file(vec![pack(0, 0..10)], vec![])),
            (id(2), file(vec![pack(0, 0..10)], vec![])),
        ]);
        assert_eq!(twice.pack_totals()[0].blobs, 10);
        assert_eq!(
            twice.index_packs().map(|p| p.blobs.len()).sum::<usize>(),
            10
        );
    }

    #[test]
    fn superseded_files_and_their_packs_are_left_out() {
        let old = (id(1), file(vec![pack(0, 0..10), pack(1, 10..20)], vec![]));
        let new = (id(2), file(vec![pack(1, 10..18)], vec![id(1)]));
        let idx = MasterIndex::from_files(&[old, new]);
        assert_eq!(idx.files, vec![id(2)]);
        assert_eq!(idx.packs(), &[id(1_000_001)]);
        assert_eq!(idx.len(), 8);
        assert!(!idx.contains(&id(3)) && !idx.contains(&id(19)) && idx.contains(&id(17)));
    }

    #[test]
    fn later_additions_merge_and_packs_can_be_dropped() {
        let mut idx = MasterIndex::from_files(&[(id(1), file(vec![pack(0, 0..100)], vec![]))]);
        for p in 1..80 {
            idx.add_pack(&pack(p, p * 100..p * 100 + 100));
        }
        // Re-adding a known blob keeps its first location (the copy is kept aside).
        idx.add_pack(&pack(500, 0..3));
        assert_eq!(idx.pack_id(&idx.get(&id(1)).unwrap()), id(1_000_000));
        assert_eq!(idx.len(), 8000);
        idx.compact();
        assert!(idx.position(&id(7999)).is_some());
        let written: usize = idx.index_packs().map(|p| p.blobs.len()).sum();
        assert_eq!(written, 8003);
        idx.retain_packs(|p| *p != id(1_000_000));
        // Blobs 0..3 survive through their copies in pack 500.
        assert_eq!(idx.len(), 7903);
        assert_eq!(idx.pack_id(&idx.get(&id(1)).unwrap()), id(1_000_500));
        idx.retain_packs(|p| *p != id(1_000_500));
        assert_eq!(idx.len(), 7900);
        assert!(idx.get(&id(1)).is_none() && idx.get(&id(150)).is_some());
        for p in idx.index_packs() {
            assert!(p.blobs.windows(2).all(|w| w[0].offset < w[1].offset));
            for e in &p.blobs {
                assert_eq!(idx.pack_id(&idx.get(&e.id).unwrap()), p.id);
            }
        }
    }

    #[test]
    fn id_set_matches_a_hash_set() {
        let mut set = IdSet::default();
        let mut reference = HashSet::new();
        for n in 0..20_000u32 {
            let x = id(n % 15_000);
            assert_eq!(set.insert(x), reference.insert(x));
        }
        assert_eq!(set.len(), 15_000);
        assert!((0..15_000).all(|n| set.contains(&id(n))));
        assert!(!set.contains(&id(15_001)));
    }

    #[test]
    fn blob_set_counts() {
        let mut s = BlobSet::new(130);
        assert!(s.insert(0) && s.insert(129) && !s.insert(129));
        assert!(s.contains(129) && !s.contains(64));
        assert_eq!(s.len(), 2);
    }

    fn condemned(mut p: IndexPack, secs: i64) -> IndexPack {
        p.condemned = Some(Timestamp {
            unix_nanos: secs * 1_000_000_000,
            utc_offset_secs: 0,
        });
        p
    }

    #[test]
    fn a_live_copy_wins_and_condemned_packs_are_not_deduplicated_against() {
        // Pack 0 holds blobs 0..10, condemned; pack 1 (live) holds copies of 5..10 and 10..12.
        // Pack ids are chosen so that the condemned one sorts first by id too.
        let mut a = condemned(pack(0, 0..10), 100);
        let mut b = pack(1, 5..12);
        if a.id > b.id {
            std::mem::swap(&mut a.id, &mut b.id);
        }
        let idx =
            MasterIndex::from_files(&[(id(9_000_001), file(vec![a.clone(), b.clone()], vec![]))]);
        let (pa, pb) = (
            idx.pack_number(&a.id).unwrap(),
            idx.pack_number(&b.id).unwrap(),
        );
        assert!(idx.condemned_at(pa).is_some() && idx.condemned_at(pb).is_none());
        for n in 0..12 {
            let l = idx.get(&id(n)).unwrap();
            // Copies in the live pack resolve there; the rest stay readable where they are.
            assert_eq!(l.pack, if n >= 5 { pb } else { pa }, "blob {n}");
            assert_eq!(idx.contains(&id(n)), n >= 5, "blob {n}");
        }
        // Both packs keep every entry they hold (a rewrite lists them all).
        let back: Vec<IndexPack> = idx.index_packs().collect();
        assert_eq!(back.len(), 2);
        let ra = back.iter().find(|p| p.id == a.id).unwrap();
        assert_eq!(ra.blobs.len(), 10);
        assert_eq!(ra.condemned, a.condemned);
    }

    #[test]
    fn a_pack_is_condemned_only_when_every_record_is() {
        let p = pack(0, 0..4);
        // Condemned in one file, live in another: live.
        let idx = MasterIndex::from_files(&[
            (id(9_000_001), file(vec![condemned(p.clone(), 5)], vec![])),
            (id(9_000_002), file(vec![p.clone()], vec![])),
        ]);
        assert_eq!(idx.condemned_at(0), None);
        assert!(idx.contains(&id(1)));
        let per_file: Vec<(Id, Vec<(u32, bool)>)> =
            idx.file_packs().map(|(f, r)| (*f, r.to_vec())).collect();
        assert_eq!(per_file.len(), 2);
        assert!(per_file.iter().any(|(_, r)| r == &[(0, true)]));
        assert!(per_file.iter().any(|(_, r)| r == &[(0, false)]));
        // Condemned twice: the later time counts. A condemned record without blobs (a pack
        // no index named) is a pack of the index all the same.
        let empty = IndexPack {
            id: id(7_777),
            blobs: Vec::new(),
            condemned: None,
        };
        let idx = MasterIndex::from_files(&[
            (id(9_000_001), file(vec![condemned(p.clone(), 5)], vec![])),
            (
                id(9_000_002),
                file(vec![condemned(p, 9), condemned(empty.clone(), 3)], vec![]),
            ),
        ]);
        assert_eq!(idx.condemned_at(0).unwrap().unix_nanos, 9_000_000_000);
        assert!(!idx.contains(&id(1)) && idx.get(&id(1)).is_some());
        let n = idx.pack_number(&empty.id).unwrap();
        assert_eq!(idx.condemned_at(n).unwrap().unix_nanos, 3_000_000_000);
        assert!(idx
            .index_packs()
            .any(|p| p.id == empty.id && p.blobs.is_empty()));
    }

    #[test]
    fn a_live_pack_added_later_takes_over_from_a_condemned_copy() {
        let mut idx = MasterIndex::from_files(&[(
            id(9_000_001),
            file(vec![condemned(pack(0, 0..6), 5)], vec![]),
        )]);
        assert!(!idx.contains(&id(2)));
        // A backup (or prune's repack) stores blobs 2..4 again in a new live pack.
        let again = pack(1, 2..4);
        idx.add_pack(&again);
        let live = idx.pack_number(&again.id).unwrap();
        for n in 2..4 {
            assert!(idx.contains(&id(n)));
            assert_eq!(idx.get(&id(n)).unwrap().pack, live);
        }
        assert!(!idx.contains(&id(5)));
        // Prune's in-memory decisions: recovering makes a pack's blobs count as stored.
        idx.set_condemned(0, None);
        assert!(idx.contains(&id(5)));
    }
}
