//! The metadata cache: hits avoid the backend, a corrupt entry is detected, refetched and
//! repaired, entries of deleted objects go away, and tree packs are served by range.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_engine::cache::CachedBackend;
use cairn_engine::{Backend, LocalBackend, ObjectInfo, Result};
use cairn_format::{FileKind, Id};

/// A local backend that counts reads, standing in for a remote one.
#[derive(Debug)]
struct CountingBackend {
    inner: LocalBackend,
    reads: AtomicUsize,
}

impl Backend for CountingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn exists(&self) -> Result<bool> {
        self.inner.exists()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_range(kind, name, offset, len)
    }
    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        self.inner.stat(kind, name)
    }
    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.inner.delete(kind, name)
    }
    fn is_remote(&self) -> bool {
        true
    }
}

fn object(seed: u8, len: usize) -> (String, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    (Id::of_object(&data).to_hex(), data)
}

fn flip(path: &Path) {
    let mut d = std::fs::read(path).unwrap();
    let mid = d.len() / 2;
    d[mid] ^= 1;
    std::fs::write(path, d).unwrap();
}

#[test]
fn cache_serves_verified_copies_and_repairs_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let local = LocalBackend::new(tmp.path().join("repo"));
    local.create().unwrap();
    let counting = Arc::new(CountingBackend {
        inner: local,
        reads: AtomicUsize::new(0),
    });
    let cache_dir = tmp.path().join("cache");
    let cached = CachedBackend::new(counting.clone(), cache_dir.clone()).unwrap();
    let reads = || counting.reads.load(Ordering::SeqCst);

    // Written through the cache: the first read is already local.
    let (idx, idx_data) = object(1, 5000);
    cached.put(FileKind::Index, &idx, &idx_data).unwrap();
    assert_eq!(cached.get(FileKind::Index, &idx).unwrap(), idx_data);
    assert_eq!(reads(), 0);

    // Written by someone else: fetched once, then local.
    let (snap, snap_data) = object(2, 300);
    counting.put(FileKind::Snapshot, &snap, &snap_data).unwrap();
    for _ in 0..3 {
        assert_eq!(cached.get(FileKind::Snapshot, &snap).unwrap(), snap_data);
    }
    assert_eq!(reads(), 1);

    // A corrupt cache entry is never served: refetched and repaired.
    let entry = cache_dir.join("snapshots").join(&snap);
    flip(&entry);
    assert_eq!(cached.get(FileKind::Snapshot, &snap).unwrap(), snap_data);
    assert_eq!(reads(), 2);
    assert_eq!(std::fs::read(&entry).unwrap(), snap_data);
    // A truncated one too.
    std::fs::write(&entry, &snap_data[..10]).unwrap();
    assert_eq!(cached.get(FileKind::Snapshot, &snap).unwrap(), snap_data);
    assert_eq!(reads(), 3);

    // Objects removed from the repository leave the cache when their kind is listed.
    counting.delete(FileKind::Snapshot, &snap).unwrap();
    assert!(cached.list(FileKind::Snapshot).unwrap().is_empty());
    assert!(!entry.exists());

    // Tree packs: downloaded whole once, then ranges are served locally.
    let (pack, pack_data) = object(3, 100_000);
    counting.put(FileKind::Pack, &pack, &pack_data).unwrap();
    let before = reads();
    assert_eq!(
        cached.get_tree_range(&pack, 1000, 500).unwrap(),
        &pack_data[1000..1500]
    );
    assert_eq!(
        cached.get_tree_range(&pack, 99_000, 1000).unwrap(),
        &pack_data[99_000..]
    );
    assert_eq!(reads(), before + 1);

    // A new process (nothing verified yet) finds the cached pack corrupt and refetches it.
    drop(cached);
    flip(&cache_dir.join("data").join(&pack));
    let cached = CachedBackend::new(counting.clone(), cache_dir.clone()).unwrap();
    assert_eq!(
        cached.get_tree_range(&pack, 50_000, 10).unwrap(),
        &pack_data[50_000..50_010]
    );
    assert_eq!(reads(), before + 2);
    assert_eq!(
        std::fs::read(cache_dir.join("data").join(&pack)).unwrap(),
        pack_data
    );

    // A tree pack this process uploads is kept: reading it back costs no download. The
    // upload consumed the file it came from.
    let (written, written_data) = object(4, 70_000);
    let file = tmp.path().join("outgoing-pack");
    std::fs::write(&file, &written_data).unwrap();
    cached.put_tree_pack_file(&written, &file).unwrap();
    assert!(!file.exists());
    let before = reads();
    assert_eq!(
        cached.get_tree_range(&written, 60_000, 100).unwrap(),
        &written_data[60_000..60_100]
    );
    assert_eq!(
        reads(),
        before,
        "a tree pack written through the cache was downloaded"
    );
    assert_eq!(
        counting.get(FileKind::Pack, &written).unwrap(),
        written_data
    );

    // Deleting through the cache removes the entry; a range beyond the end is an error.
    assert!(cached.get_tree_range(&pack, 99_990, 100).is_err());
    cached.delete(FileKind::Pack, &pack).unwrap();
    assert!(!cache_dir.join("data").join(&pack).exists());
}
