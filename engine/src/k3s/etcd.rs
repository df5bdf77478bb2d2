//! Verifying an etcd snapshot before it is stored as good, and after it is restored.
//!
//! `etcdctl snapshot save` (and `k3s etcd-snapshot save`) writes etcd's bbolt database and
//! appends the SHA-256 of it; `etcdctl snapshot restore` refuses a file whose trailer is
//! missing or wrong ("snapshot missing hash"). A snapshot is accepted here when:
//! - its length is the database (a multiple of 512 bytes) plus the 32-byte trailer, and the
//!   trailer is the SHA-256 of the database;
//! - the database's two bbolt meta pages (page 0 and 1) carry the bbolt magic, version 2, a
//!   power-of-two page size, and a valid FNV-1a checksum (at least one of them, as bbolt
//!   itself needs), and the newest valid one's high-water mark, root and freelist pages lie
//!   within the file.
//!
//! K3s's zip-compressed snapshots (`--etcd-snapshot-compress`, a `.zip` holding one snapshot
//! file) are recognised by their content, and the snapshot inside is verified the same way
//! while it is inflated (streaming; the zip's CRC-32 is checked too).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::{Error, Result};

/// bbolt's magic number.
const BOLT_MAGIC: u32 = 0xED0C_DAED;
/// bbolt's data file version.
const BOLT_VERSION: u32 = 2;
/// Size of a bbolt page header (id u64, flags u16, count u16, overflow u32).
const PAGE_HEADER: usize = 16;
/// Bytes of the meta struct covered by its checksum (magic … txid).
const META_SUMMED: usize = 56;

/// What a verified snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EtcdSnapshotInfo {
    /// Bytes of the bbolt database (without the trailer).
    pub db_bytes: u64,
    /// bbolt page size.
    pub page_size: u32,
    /// Pages in use (the meta page's high-water mark).
    pub pages: u64,
    /// It came in a K3s `.zip`.
    pub compressed: bool,
    /// Transaction id of the newest valid meta page.
    pub txid: u64,
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A meta page's (page size, root, freelist, high-water mark, txid), if it is valid.
fn meta(page: &[u8]) -> std::result::Result<(u32, u64, u64, u64, u64), String> {
    if page.len() < PAGE_HEADER + META_SUMMED + 8 {
        return Err("too short for a bbolt meta page".into());
    }
    let m = &page[PAGE_HEADER..];
    if le32(m, 0) != BOLT_MAGIC {
        return Err("no bbolt magic".into());
    }
    if le32(m, 4) != BOLT_VERSION {
        return Err(format!("bbolt version {}, not {BOLT_VERSION}", le32(m, 4)));
    }
    if le64(m, META_SUMMED) != fnv1a64(&m[..META_SUMMED]) {
        return Err("meta page checksum mismatch".into());
    }
    let page_size = le32(m, 8);
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return Err(format!("page size {page_size}"));
    }
    Ok((
        page_size,
        le64(m, 16),
        le64(m, 32),
        le64(m, 40),
        le64(m, 48),
    ))
}

/// Verify the etcd snapshot at `path`, plain or K3s-zipped (see the module documentation).
/// Reads the file once, streaming; memory is two pages whatever its size.
pub fn verify_etcd_snapshot(path: &Path) -> Result<EtcdSnapshotInfo> {
    let mut f = crate::fsmeta::open_source(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    if n == 4 && magic == *b"PK\x03\x04" {
        return verify_zipped(f, path);
    }
    verify_etcd_snapshot_from(&mut f, len, path)
}

/// [`verify_etcd_snapshot`] of bytes in memory (plain or zipped); `name` for messages.
pub fn verify_etcd_snapshot_bytes(data: &[u8], name: &Path) -> Result<EtcdSnapshotInfo> {
    if data.starts_with(b"PK\x03\x04") {
        return verify_zipped(std::io::Cursor::new(data), name);
    }
    verify_etcd_snapshot_from(&mut std::io::Cursor::new(data), data.len() as u64, name)
}

/// A K3s compressed snapshot: a zip archive with exactly one file, the snapshot.
fn verify_zipped<R: Read + Seek>(f: R, path: &Path) -> Result<EtcdSnapshotInfo> {
    let bad = |why: String| {
        Error::Invalid(format!(
            "{} is not a valid compressed etcd snapshot: {why}",
            path.display()
        ))
    };
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
    if zip.len() != 1 {
        return Err(bad(format!(
            "it holds {} files; K3s writes exactly one",
            zip.len()
        )));
    }
    let mut entry = zip.by_index(0).map_err(|e| bad(e.to_string()))?;
    let len = entry.size();
    let inner = path.join(entry.name().map(|n| n.into_owned()).unwrap_or_default());
    let info = verify_etcd_snapshot_from(&mut entry, len, &inner)?;
    Ok(EtcdSnapshotInfo {
        compressed: true,
        ..info
    })
}

/// [`verify_etcd_snapshot`] of `len` bytes read from `f` (`path` names it in messages).
/// Never panics, whatever the bytes (property-tested).
pub fn verify_etcd_snapshot_from(
    f: &mut dyn Read,
    len: u64,
    path: &Path,
) -> Result<EtcdSnapshotInfo> {
    let bad = |why: String| {
        Error::Invalid(format!(
            "{} is not a valid etcd snapshot: {why}",
            path.display()
        ))
    };
    if len < 32 + 2 * 512 || len % 512 != 32 {
        return Err(bad(format!(
            "{len} bytes is not a bbolt database plus etcd's 32-byte SHA-256 trailer (snapshot missing hash: truncated, or not written by `etcdctl snapshot save`)"
        )));
    }
    let db_len = len - 32;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut head = Vec::with_capacity(2 * 65536);
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut trailer = Vec::with_capacity(32);
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let db_part = (db_len.saturating_sub(done) as usize).min(n);
        ctx.update(&chunk[..db_part]);
        if head.len() < 2 * 65536 {
            let want = (2 * 65536 - head.len()).min(db_part);
            head.extend_from_slice(&chunk[..want]);
        }
        trailer.extend_from_slice(&chunk[db_part..]);
        done += n as u64;
        if trailer.len() > 32 {
            // The file grew while it was read: not a finished snapshot.
            return Err(bad("it changed while it was read".into()));
        }
    }
    if done != len || trailer.len() != 32 {
        return Err(bad("it changed while it was read".into()));
    }
    if ctx.finish().as_ref() != trailer.as_slice() {
        return Err(bad(
            "its SHA-256 trailer does not match its content (damaged or truncated)".into(),
        ));
    }
    // Meta page 0 sits at offset 0; page 1 at one page size, which page 0 (or, if page 0 is
    // damaged, the usual 4096) gives.
    let m0 = meta(&head);
    let ps1 = m0.as_ref().map_or(4096, |m| m.0) as usize;
    let m1 = head
        .get(ps1..)
        .ok_or_else(|| "too short".to_string())
        .and_then(meta);
    let best = match (m0, m1) {
        (Ok(a), Ok(b)) => {
            if b.4 > a.4 {
                b
            } else {
                a
            }
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => a,
        (Err(e), Err(_)) => return Err(bad(format!("no valid bbolt meta page ({e})"))),
    };
    let (page_size, root, freelist, pages, txid) = best;
    let in_file = pages.saturating_mul(u64::from(page_size));
    if pages < 4 || in_file > db_len || root >= pages || (freelist >= pages && freelist != u64::MAX)
    {
        return Err(bad(format!(
            "bbolt meta page claims {pages} pages of {page_size} bytes (root {root}, freelist {freelist}) in a {db_len}-byte database"
        )));
    }
    Ok(EtcdSnapshotInfo {
        db_bytes: db_len,
        page_size,
        pages,
        txid,
        compressed: false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::*;

    /// A minimal well-formed snapshot: `pages` bbolt pages with two meta pages, plus the
    /// trailer.
    pub(crate) fn snapshot(pages: u64) -> Vec<u8> {
        let ps = 4096usize;
        let mut db = vec![0u8; ps * pages as usize];
        for (i, txid) in [(0usize, 1u64), (1, 2)] {
            let p = &mut db[i * ps..(i + 1) * ps];
            p[0..8].copy_from_slice(&(i as u64).to_le_bytes());
            p[8..10].copy_from_slice(&4u16.to_le_bytes());
            let m = &mut p[PAGE_HEADER..];
            m[0..4].copy_from_slice(&BOLT_MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&BOLT_VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(ps as u32).to_le_bytes());
            m[16..24].copy_from_slice(&3u64.to_le_bytes());
            m[32..40].copy_from_slice(&2u64.to_le_bytes());
            m[40..48].copy_from_slice(&pages.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..META_SUMMED]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
        }
        for (i, b) in db[2 * ps..].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &db);
        db.extend_from_slice(h.as_ref());
        db
    }

    fn check(bytes: &[u8]) -> Result<EtcdSnapshotInfo> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snap");
        std::fs::write(&p, bytes).unwrap();
        verify_etcd_snapshot(&p)
    }

    #[test]
    fn a_good_snapshot_passes() {
        let info = check(&snapshot(8)).unwrap();
        assert_eq!(info.pages, 8);
        assert_eq!(info.txid, 2);
    }

    #[test]
    fn truncated_flipped_and_hashless_snapshots_fail() {
        let good = snapshot(8);
        let truncated = &good[..good.len() / 2];
        assert!(check(truncated)
            .unwrap_err()
            .to_string()
            .contains("missing hash"));
        let mut flipped = good.clone();
        flipped[3 * 4096 + 5] ^= 1;
        assert!(check(&flipped).unwrap_err().to_string().contains("SHA-256"));
        let hashless = &good[..good.len() - 32];
        assert!(check(hashless).is_err());
        // A trailer that matches, over a database whose meta pages are both broken.
        let mut db = good[..good.len() - 32].to_vec();
        db[PAGE_HEADER] ^= 1;
        db[4096 + PAGE_HEADER] ^= 1;
        let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &db);
        db.extend_from_slice(h.as_ref());
        assert!(check(&db).unwrap_err().to_string().contains("meta page"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// Hostile bytes: never a panic, and anything accepted really has a matching trailer.
        #[test]
        fn arbitrary_bytes_never_panic(
            mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            meta_at in 0usize..2,
            fix_trailer in proptest::prelude::any::<bool>(),
        ) {
            // Often make it look like a snapshot, so the deeper checks run too.
            if fix_trailer && data.len() >= 2 * 4096 {
                let keep = (data.len() - 32) / 512 * 512;
                data.truncate(keep.max(1024));
                if meta_at == 1 {
                    data[PAGE_HEADER..PAGE_HEADER + 4].copy_from_slice(&BOLT_MAGIC.to_le_bytes());
                }
                let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
                data.extend_from_slice(h.as_ref());
            }
            let r = verify_etcd_snapshot_from(
                &mut std::io::Cursor::new(&data),
                data.len() as u64,
                Path::new("fuzz"),
            );
            if r.is_ok() {
                let db = &data[..data.len() - 32];
                let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, db);
                proptest::prop_assert_eq!(h.as_ref(), &data[data.len() - 32..]);
            }
        }
    }

    #[test]
    fn one_damaged_meta_page_is_tolerated_as_bbolt_does() {
        let good = snapshot(8);
        let mut db = good[..good.len() - 32].to_vec();
        db[4096 + PAGE_HEADER + 20] ^= 1; // page 1's root: checksum now wrong
        let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &db);
        db.extend_from_slice(h.as_ref());
        assert_eq!(check(&db).unwrap().txid, 1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod zip_tests {
    use super::tests::snapshot;
    use super::*;
    use std::io::Write;

    fn zipped(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in files {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn check(bytes: &[u8]) -> Result<EtcdSnapshotInfo> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("on-demand-server-1700000000.zip");
        std::fs::write(&p, bytes).unwrap();
        verify_etcd_snapshot(&p)
    }

    #[test]
    fn a_zipped_snapshot_is_verified_inside() {
        let good = snapshot(8);
        let info = check(&zipped(&[("on-demand-server-1700000000", &good)])).unwrap();
        assert!(info.compressed);
        assert_eq!(info.pages, 8);

        let truncated = &good[..good.len() - 600];
        let e = check(&zipped(&[("s", truncated)])).unwrap_err().to_string();
        assert!(e.contains("missing hash"), "{e}");

        let mut flipped = good.clone();
        flipped[5 * 4096] ^= 0x40;
        let e = check(&zipped(&[("s", &flipped)])).unwrap_err().to_string();
        assert!(e.contains("SHA-256"), "{e}");

        let e = check(&zipped(&[("a", &good), ("b", &good)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 files"), "{e}");

        // A damaged archive (its deflate stream cut short) fails as well.
        let z = zipped(&[("s", &good)]);
        let mut cut = z.clone();
        cut.truncate(z.len() / 2);
        assert!(check(&cut).is_err());
        let mut bitrot = z;
        bitrot[200] ^= 0xff;
        assert!(check(&bitrot).is_err());
    }
}
