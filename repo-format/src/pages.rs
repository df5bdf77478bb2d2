//! Recognising page-structured database files by their first bytes, so that every client of
//! a repository cuts them the same way (the rules are part of the format; see FORMAT.md).
//!
//! Databases rewrite a few scattered pages a day. Cut into 1 MiB content-defined chunks,
//! almost every chunk of such a file changes every night; cut at page boundaries (or into
//! small content-defined chunks, for formats whose pages move), a night costs about what
//! actually changed.

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
}

/// How a recognised file is cut.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PageStrategy {
    /// One chunk per page, using the page size recorded in the file's own header.
    Pages,
    /// Content-defined chunks with these parameters (for formats whose pages move, such as
    /// bbolt after a defrag, or logs such as the WAL).
    Cdc(ChunkerParams),
}

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

/// Bytes of a file's head that [`detect`] looks at.
pub const DETECT_LEN: usize = 64;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Recognise a page format from the first bytes of a file (at least [`DETECT_LEN`] of them
/// when the file is that long) and its total length when known. Returns the format and its
/// page size.
pub fn detect(head: &[u8], len: Option<u64>) -> Option<(PageFormat, u32)> {
    if head.len() >= 18 && head.starts_with(b"SQLite format 3\0") {
        let raw = u16::from_be_bytes([head[16], head[17]]);
        let page = if raw == 1 { 65536 } else { u32::from(raw) };
        if page.is_power_of_two() && (512..=65536).contains(&page) {
            return Some((PageFormat::Sqlite, page));
        }
        return None;
    }
    if head.len() >= 28 && le32(head, 16) == 0xED0C_DAED && le32(head, 20) == 2 {
        let page = le32(head, 24);
        if page.is_power_of_two() && (512..=65536).contains(&page) {
            return Some((PageFormat::Bbolt, page));
        }
        return None;
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
        return None;
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
    None
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
    }

    #[test]
    fn ordinary_files_are_not_pages() {
        assert_eq!(
            detect(
                b"hello world, this is text and nothing else at all....",
                Some(50)
            ),
            None
        );
        assert_eq!(detect(&[0u8; 64], Some(8192)), None);
        assert_eq!(
            detect(b"SQLite format 3\0\x03\x00", Some(100)),
            None,
            "page size 768 is not a power of two"
        );
        assert_eq!(detect(&[], None), None);
    }
}
