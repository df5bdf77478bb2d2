//! Recognising files by their first bytes (page-structured databases, git packs, text), so
//! that every client of a repository cuts them the same way (the rules are part of the
//! format; see FORMAT.md).
//!
//! Databases rewrite a few scattered pages a day. Cut into 1 MiB content-defined chunks,
//! almost every chunk of such a file changes every night; cut at page boundaries (or into
//! small content-defined chunks, for formats whose pages move), a night costs about what
//! actually changed. Text (logs that grow by appending, YAML and JSON exports) and git packs
//! (rewritten by `git gc` around mostly unchanged objects) change in small places too, and get
//! smaller content-defined chunks than bulk data.

use serde::{Deserialize, Serialize};

use crate::ChunkerParams;

/// A page-structured file format recognised by magic bytes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum PageFormat {
    /// SQLite 3 database (also K3s/kine `state.db`): `"SQLite format 3\0"`, page size at 16.
    Sqlite,
    /// bbolt (etcd, K3s etcd snapshots): meta page magic `0xED0CDAED` at offset 16.
    Bbolt,
    /// PostgreSQL relation segment (heap, index): 8 KiB pages with a valid page header.
    PostgresRelation,
    /// PostgreSQL WAL segment: long page header magic `0xD1xx` with `XLP_LONG_HEADER`.
    PostgresWal,
    /// git pack file: `"PACK"` and version 2 or 3 (big-endian u32 at 4). No pages: only `Cdc`
    /// rules apply.
    GitPack,
    /// Text: the first 64 bytes are printable ASCII, UTF-8 bytes (≥ 0x80), TAB, LF, CR or ESC
    /// (coloured logs). No pages: only `Cdc` rules apply.
    Text,
}

impl PageFormat {
    /// Whether the format has pages (so that `Pages` and `SqliteCells` rules make sense).
    pub fn has_pages(self) -> bool {
        !matches!(self, PageFormat::GitPack | PageFormat::Text)
    }
}

/// How a recognised file is cut.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PageStrategy {
    /// One chunk per page, using the page size recorded in the file's own header.
    Pages,
    /// Content-defined chunks with these parameters (for formats whose pages move, such as
    /// bbolt after a defrag, or logs such as the WAL).
    Cdc(ChunkerParams),
    /// SQLite only: cut at page boundaries and, inside b-tree pages, around every cell (a row
    /// or index record) of at least `min_piece` bytes; overflow pages after their 4-byte
    /// next-page pointer. A `VACUUM` moves rows to other pages and rewrites every page, but
    /// the rows themselves stay byte-identical and keep deduplicating. See [`sqlite_cell_cuts`].
    SqliteCells {
        /// Smallest piece that becomes a chunk of its own; smaller neighbours stay together.
        min_piece: u32,
    },
}

/// The `min_piece` of the default `SqliteCells` rule. Small pieces are stored in groups
/// (compressed together, so their size costs no compression), but each still costs ~100 B
/// of metadata (its index entry and pack-header entry, and its id in the file's content
/// list), which a piece must save by deduplicating; measured on the K3s weeks at three
/// seeds and scales (`docs/chunking.md`), 1 KiB and 2 KiB both stored less than 256 B,
/// within noise of each other; 1 KiB keeps more of a vacuumed table's rows apart.
pub const SQLITE_MIN_PIECE: u32 = 1024;

/// One chunking rule of the repository config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageRule {
    /// Which format.
    pub format: PageFormat,
    /// How to cut it.
    pub strategy: PageStrategy,
}

/// The rules new repositories get: chosen by measuring nightly growth on the K3s dataset
/// (`docs/chunking.md`).
pub fn default_page_rules() -> Vec<PageRule> {
    let small = ChunkerParams {
        min_size: 2 << 10,
        avg_size: 8 << 10,
        max_size: 32 << 10,
        normalization: 1,
    };
    vec![
        PageRule {
            format: PageFormat::Sqlite,
            strategy: PageStrategy::SqliteCells {
                min_piece: SQLITE_MIN_PIECE,
            },
        },
        PageRule {
            format: PageFormat::PostgresRelation,
            strategy: PageStrategy::Pages,
        },
        PageRule {
            format: PageFormat::Bbolt,
            strategy: PageStrategy::Cdc(BBOLT_CHUNKS),
        },
        PageRule {
            format: PageFormat::PostgresWal,
            strategy: PageStrategy::Cdc(small),
        },
        PageRule {
            format: PageFormat::GitPack,
            strategy: PageStrategy::Cdc(GIT_PACK_CHUNKS),
        },
        PageRule {
            format: PageFormat::Text,
            strategy: PageStrategy::Cdc(TEXT_CHUNKS),
        },
    ]
}

/// The chunking of bbolt files (etcd snapshots) in new repositories: content-defined (etcd
/// renumbers every page when it defragments), 4 KiB on average. It was 8 KiB while every
/// blob was compressed alone; in groups a chunk costs only its metadata, and 4 KiB stored
/// 12–15 % less of the etcd snapshots' growth on the medium K3s weeks (seeds 1 and 3) and
/// 7 % less on the small one, for the same first night (`docs/chunking.md`).
pub const BBOLT_CHUNKS: ChunkerParams = ChunkerParams {
    min_size: 1 << 10,
    avg_size: 4 << 10,
    max_size: 16 << 10,
    normalization: 1,
};

/// The chunking of text in new repositories: 512 KiB on average (128 KiB minimum), so that a
/// log's appended tail costs its new lines plus about half a chunk. Smaller chunks saved
/// little more on the K3s week (growth over nights 2–7: 64 KiB 184.8 MB, 512 KiB 187.5 MB,
/// bulk chunking 196.8 MB) but cost compression, as each blob is compressed alone: the
/// benchmark's 2 GB tree, whose 1 GB mixed file starts with text, packs into 643 MB with bulk
/// chunks, 680 MB with 64 KiB text chunks and 648 MB with 512 KiB ones.
pub const TEXT_CHUNKS: ChunkerParams = ChunkerParams {
    min_size: 128 << 10,
    avg_size: 512 << 10,
    max_size: 2 << 20,
    normalization: 1,
};

/// The chunking of git packs in new repositories: 64 KiB on average. `git gc` rewrites a pack
/// around mostly unchanged (already compressed) objects, so small pieces dedup and cost no
/// compression.
pub const GIT_PACK_CHUNKS: ChunkerParams = ChunkerParams {
    min_size: 16 << 10,
    avg_size: 64 << 10,
    max_size: 256 << 10,
    normalization: 1,
};

/// Bytes of a file's head that [`detect`] looks at.
pub const DETECT_LEN: usize = 64;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Recognise a page format from the first bytes of a file (at least [`DETECT_LEN`] of them
/// when the file is that long) and its total length when known. Returns the format and its
/// page size (0 for formats without pages, see [`PageFormat::has_pages`]).
///
/// The formats are tried in FORMAT.md §14.1's order and the first that matches wins: a head
/// that looks like the start of one format but fails its checks is still tested for the
/// others.
pub fn detect(head: &[u8], len: Option<u64>) -> Option<(PageFormat, u32)> {
    if head.len() >= 18 && head.starts_with(b"SQLite format 3\0") {
        let raw = u16::from_be_bytes([head[16], head[17]]);
        let page = if raw == 1 { 65536 } else { u32::from(raw) };
        if page.is_power_of_two() && (512..=65536).contains(&page) {
            return Some((PageFormat::Sqlite, page));
        }
    }
    if head.len() >= 28 && le32(head, 16) == 0xED0C_DAED && le32(head, 20) == 2 {
        let page = le32(head, 24);
        if page.is_power_of_two() && (512..=65536).contains(&page) {
            return Some((PageFormat::Bbolt, page));
        }
    }
    if head.len() >= 40 && head[1] == 0xD1 && le16(head, 2) & 0x0002 != 0 {
        let seg = le32(head, 32);
        let block = le32(head, 36);
        let len_ok = len.is_none_or(|l| l == u64::from(seg));
        if block.is_power_of_two()
            && (1024..=65536).contains(&block)
            && seg.is_power_of_two()
            && seg >= block
            && len_ok
        {
            return Some((PageFormat::PostgresWal, block));
        }
    }
    if head.len() >= 24 {
        let size_version = le16(head, 18);
        let page = u32::from(size_version & 0xFF00);
        let version = size_version & 0x00FF;
        let (lower, upper, special) = (
            u32::from(le16(head, 12)),
            u32::from(le16(head, 14)),
            u32::from(le16(head, 16)),
        );
        // Page layout version 4 (PostgreSQL ≥ 8.3); the file must be whole pages.
        if version == 4
            && page.is_power_of_two()
            && (1024..=32768).contains(&page)
            && (24..=upper).contains(&lower)
            && upper <= special
            && special <= page
            && len.is_some_and(|l| l > 0 && l % u64::from(page) == 0)
        {
            return Some((PageFormat::PostgresRelation, page));
        }
    }
    if head.len() >= 8 && head.starts_with(b"PACK") && matches!(be32(head, 4), 2 | 3) {
        return Some((PageFormat::GitPack, 0));
    }
    if head.len() >= DETECT_LEN && head[..DETECT_LEN].iter().all(|&b| is_text_byte(b)) {
        return Some((PageFormat::Text, 0));
    }
    None
}

/// A byte that text may hold: printable ASCII, any byte of a UTF-8 sequence, TAB, LF, CR, ESC.
fn is_text_byte(b: u8) -> bool {
    matches!(b, 0x20..=0x7e | 0x80..=0xff | b'\t' | b'\n' | b'\r' | 0x1b)
}

/// A SQLite varint (big-endian groups of 7 bits, the 9th byte contributes 8) at `at`.
fn sqlite_varint(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(at + i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), at + 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, at + i + 1));
        }
    }
    None
}

/// The end of the b-tree cell of page type `kind` that starts at `start`, per the SQLite file
/// format (§1.6 "B-tree Pages"): local payload, then a 4-byte overflow page number if the
/// payload spills. `None` when the cell does not fit the page.
fn sqlite_cell_end(page: &[u8], kind: u8, start: usize, usable: usize) -> Option<usize> {
    let mut at = start;
    if kind == 2 || kind == 5 {
        at += 4; // left child page number
    }
    if kind == 5 {
        return sqlite_varint(page, at)
            .map(|(_, end)| end)
            .filter(|&e| e <= usable);
    }
    let (payload, next) = sqlite_varint(page, at)?;
    at = next;
    if kind == 13 {
        at = sqlite_varint(page, at)?.1; // rowid
    }
    let u = usable as u64;
    let max_local = if kind == 13 {
        u - 35
    } else {
        (u - 12) * 64 / 255 - 23
    };
    let local = if payload <= max_local {
        payload
    } else {
        let min_local = (u - 12) * 32 / 255 - 23;
        let k = min_local + (payload - min_local) % (u - 4);
        if k <= max_local {
            k
        } else {
            min_local
        }
    };
    let spill = if local < payload { 4 } else { 0 };
    let end = (at as u64).checked_add(local + spill)?;
    (end <= u).then_some(end as usize)
}

/// Cut points inside one SQLite page under [`PageStrategy::SqliteCells`], as offsets in
/// `1..page.len()` in ascending order, each plus `base`, appended to `out`. `usable` is the
/// page size minus the reserved bytes (byte 20 of the database header).
///
/// The pieces of a page are: its header and cell-pointer array, the unallocated gap, each
/// cell, and any free space between cells. Pieces of at least `min_piece` bytes become chunks
/// of their own; runs of smaller neighbours are joined into one chunk. A page that is not a
/// b-tree page (overflow, freelist, or damaged) is cut after its first 4 bytes, the next-page
/// pointer that changes whenever pages are renumbered. The result depends only on the page's
/// bytes, so every writer cuts alike; a malformed page merely dedups worse.
pub fn sqlite_cell_cuts(
    page: &[u8],
    usable: usize,
    min_piece: usize,
    base: usize,
    out: &mut Vec<usize>,
) {
    let size = page.len();
    let usable = usable.min(size);
    let header_at = if page.starts_with(b"SQLite format 3\0") {
        100
    } else {
        0
    };
    let mut points = vec![0, size];
    let kind = page.get(header_at).copied().unwrap_or(0);
    let header_len = if kind == 2 || kind == 5 { 12 } else { 8 };
    let pointers_end = header_at + header_len + 2 * usize::from(be16(page, header_at + 3));
    if matches!(kind, 2 | 5 | 10 | 13) && usable >= 480 && pointers_end <= usable {
        points.push(pointers_end);
        for p in (header_at + header_len..pointers_end).step_by(2) {
            let start = usize::from(be16(page, p));
            if start < pointers_end || start >= usable {
                continue;
            }
            if let Some(end) = sqlite_cell_end(page, kind, start, usable) {
                points.push(start);
                points.push(end);
            }
        }
    } else if size > 4 {
        points.push(4);
    }
    points.sort_unstable();
    points.dedup();
    let first = out.len();
    let push = |at: usize, out: &mut Vec<usize>| {
        if at > 0 && at < size && out[first..].last().is_none_or(|&l| l < base + at) {
            out.push(base + at);
        }
    };
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b - a >= min_piece {
            push(a, out);
            push(b, out);
        }
    }
}

/// The chunk ends of `buf`, a run of a SQLite file starting at a page boundary, under
/// [`PageStrategy::SqliteCells`]: every whole page's cell cuts ([`sqlite_cell_cuts`]) and its
/// end; at `eof`, a trailing partial page is one chunk. Without `eof` the last end is the last
/// whole page's, so the next run again starts at a page boundary.
pub fn sqlite_window_cuts(
    buf: &[u8],
    page: usize,
    usable: usize,
    min_piece: usize,
    eof: bool,
) -> Vec<usize> {
    let mut out = Vec::new();
    for start in (0..buf.len() / page).map(|i| i * page) {
        sqlite_cell_cuts(
            &buf[start..start + page],
            usable,
            min_piece,
            start,
            &mut out,
        );
        out.push(start + page);
    }
    if eof && !buf.len().is_multiple_of(page) {
        out.push(buf.len());
    }
    out
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(x) => u16::from_be_bytes([x[0], x[1]]),
        None => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_format() {
        let mut sqlite = b"SQLite format 3\0".to_vec();
        sqlite.extend_from_slice(&[0x10, 0x00]);
        sqlite.resize(100, 0);
        assert_eq!(
            detect(&sqlite, Some(8192)),
            Some((PageFormat::Sqlite, 4096))
        );
        let mut s64 = sqlite.clone();
        s64[16..18].copy_from_slice(&[0, 1]);
        assert_eq!(detect(&s64, None), Some((PageFormat::Sqlite, 65536)));

        let mut bolt = vec![0u8; 64];
        bolt[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        bolt[20..24].copy_from_slice(&2u32.to_le_bytes());
        bolt[24..28].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(
            detect(&bolt, Some(1 << 20)),
            Some((PageFormat::Bbolt, 4096))
        );

        // A PostgreSQL 16 WAL segment header, as written by the K3s dataset generator.
        let wal = hex::decode(
            "13d10200010000000000001c0300000000000000000000005a4c55df185350650000000100200000",
        )
        .unwrap_or_default();
        assert_eq!(
            detect(&wal, Some(16 << 20)),
            Some((PageFormat::PostgresWal, 8192))
        );
        assert_eq!(
            detect(&wal, Some(1000)),
            None,
            "a WAL header on a file of another size is not a segment"
        );

        let pg =
            hex::decode("000000002aad5001000000001c01b0010020042000000000").unwrap_or_default();
        assert_eq!(
            detect(&pg, Some(8192 * 3)),
            Some((PageFormat::PostgresRelation, 8192))
        );
        assert_eq!(detect(&pg, Some(8193)), None);
        assert_eq!(detect(&pg, None), None);

        // `git gc` output: "PACK", version 2, object count.
        let mut pack = b"PACK\0\0\0\x02\0\0\x01\x2c".to_vec();
        pack.resize(64, 0x9c);
        assert_eq!(detect(&pack, Some(1 << 20)), Some((PageFormat::GitPack, 0)));
        pack[7] = 4;
        assert_eq!(detect(&pack, Some(1 << 20)), None, "no git pack version 4");

        let log = b"2026-11-21T03:00:01.123Z \x1b[32mINFO\x1b[0m server: listening on :8080\n\tcaf\xc3\xa9 ok\r\n";
        assert_eq!(detect(log, None), Some((PageFormat::Text, 0)));
        // Byte 1 = 0xD1 with bit 0x02 in byte 2 starts like a WAL header ("[тест]" in
        // UTF-8); it fails the WAL checks and is then recognised as text.
        let mut cyrillic = "[тест] журнал: ".repeat(4).into_bytes();
        cyrillic.truncate(64);
        assert_eq!(cyrillic[1], 0xD1);
        assert_eq!(detect(&cyrillic, None), Some((PageFormat::Text, 0)));
        let yaml =
            b"apiVersion: v1\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n";
        assert_eq!(detect(yaml, Some(80 << 20)), Some((PageFormat::Text, 0)));
    }

    #[test]
    fn binary_is_not_text() {
        let text = [b'a'; 64];
        assert_eq!(detect(&text, None), Some((PageFormat::Text, 0)));
        // One control byte anywhere in the first 64 bytes (NUL, BEL, form feed, DEL…) and
        // it is bulk data: a JPEG, gzip or ELF header always has one.
        for bad in [0x00u8, 0x07, 0x0c, 0x1f, 0x7f] {
            for at in [0, 31, 63] {
                let mut b = text;
                b[at] = bad;
                assert_eq!(detect(&b, None), None, "byte {bad:#x} at {at}");
            }
        }
        // Only the first 64 bytes count: text that turns binary later is still text.
        let mut longer = text.to_vec();
        longer.push(0);
        assert_eq!(detect(&longer, None), Some((PageFormat::Text, 0)));
        // Shorter than 64 bytes: one chunk anyway, nothing to recognise.
        assert_eq!(detect(&text[..63], Some(63)), None);
    }

    #[test]
    fn ordinary_binary_files_are_not_recognised() {
        assert_eq!(detect(&[0u8; 64], Some(8192)), None);
        assert_eq!(
            detect(b"SQLite format 3\0\x03\x00", Some(100)),
            None,
            "page size 768 is not a power of two"
        );
        assert_eq!(detect(&[], None), None);
    }

    /// Cut a whole SQLite file as the engine does: by cells of at least `min_piece` bytes,
    /// or (`None`) one chunk per page.
    fn sqlite_chunks(data: &[u8], cells: Option<u32>) -> Vec<&[u8]> {
        let (format, page) = detect(&data[..DETECT_LEN], Some(data.len() as u64)).unwrap();
        assert_eq!(format, PageFormat::Sqlite);
        let page = page as usize;
        let usable = page - usize::from(data[20]);
        let cuts = if let Some(min_piece) = cells {
            sqlite_window_cuts(data, page, usable, min_piece as usize, true)
        } else {
            (1..=data.len() / page).map(|i| i * page).collect()
        };
        assert!(cuts.windows(2).all(|w| w[0] < w[1]), "cuts not ascending");
        // Every page end is a cut, so each cell cut lies inside its own page.
        assert!((1..=data.len() / page).all(|i| cuts.binary_search(&(i * page)).is_ok()));
        let mut out = Vec::new();
        let mut s = 0;
        for c in cuts {
            out.push(&data[s..c]);
            s = c;
        }
        assert_eq!(out.concat(), data);
        out
    }

    /// Share of `new`'s bytes that lie in chunks `old` already has.
    fn shared(old: &[&[u8]], new: &[&[u8]]) -> f64 {
        let known: std::collections::HashSet<&[u8]> = old.iter().copied().collect();
        let hit: usize = new
            .iter()
            .filter(|c| known.contains(*c))
            .map(|c| c.len())
            .sum();
        hit as f64 / new.iter().map(|c| c.len()).sum::<usize>() as f64
    }

    #[test]
    fn sqlite_rows_still_dedup_after_vacuum() {
        // testdata/sqlite/make.py: a third of the rows deleted, three updated, VACUUM.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/sqlite/");
        let before = std::fs::read(format!("{dir}before.db")).unwrap();
        let after = std::fs::read(format!("{dir}after.db")).unwrap();
        let cut = |min_piece| {
            shared(
                &sqlite_chunks(&before, min_piece),
                &sqlite_chunks(&after, min_piece),
            )
        };
        let (pages, cells, default) = (cut(None), cut(Some(256)), cut(Some(SQLITE_MIN_PIECE)));
        // VACUUM moves rows to other pages and renumbers them: most whole pages never match
        // again (0.31 of the bytes here), while the rows inside them (all but three
        // unchanged) do: 0.78 with every cell of 256 B or more cut out, 0.71 with the
        // default's 1 KiB (rows below it stay with their neighbours).
        assert!(pages < 0.4, "pages shared {pages:.2}");
        assert!(cells > 0.75, "cells shared {cells:.2} (pages {pages:.2})");
        assert!(default > 0.7, "default cells shared {default:.2}");
        // An unchanged database cuts identically.
        let d = Some(SQLITE_MIN_PIECE);
        assert_eq!(sqlite_chunks(&before, d), sqlite_chunks(&before.clone(), d));
    }

    #[test]
    fn sqlite_varints() {
        assert_eq!(sqlite_varint(&[0x05], 0), Some((5, 1)));
        assert_eq!(sqlite_varint(&[0x81, 0x00], 0), Some((128, 2)));
        assert_eq!(sqlite_varint(&[0xff; 9], 0), Some((u64::MAX, 9)));
        assert_eq!(sqlite_varint(&[0x81], 0), None);
    }
}
