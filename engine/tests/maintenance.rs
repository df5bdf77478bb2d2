//! Prune crash safety (a backend that fails at every possible write), prune racing backups,
//! and `check` naming each kind of corruption.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_engine::ops::backup::backup;
use cairn_engine::ops::check::{check, ReadData};
use cairn_engine::ops::prune::{prune, MaxUnused, PruneOptions};
use cairn_engine::ops::restore::restore;
use cairn_engine::{
    Backend, BackupOptions, Error, InitOptions, LocalBackend, ObjectInfo, Progress, Repository,
    RestoreOptions, Result, SharedLock,
};

/// Locks in these tests never wait.
const NO_WAIT: std::time::Duration = std::time::Duration::ZERO;
use cairn_format::{ChunkerParams, FileKind, KdfParams};
use rand::{Rng, RngCore, SeedableRng};

/// What a test backend does besides passing every call through to a local repository.
trait Hook: Send + Sync + std::fmt::Debug {
    /// Before a put or a delete.
    fn before_write(&self, _kind: FileKind) -> Result<()> {
        Ok(())
    }
    /// Before a get, with the repository underneath.
    fn before_get(&self, _inner: &LocalBackend, _kind: FileKind, _name: &str) -> Result<()> {
        Ok(())
    }
    /// After a listing.
    fn listed(&self, _kind: FileKind, _objects: &mut Vec<ObjectInfo>) {}
}

/// A local repository behind a [`Hook`].
#[derive(Debug)]
struct Hooked<H> {
    inner: LocalBackend,
    hook: H,
}

impl<H: Hook> Hooked<H> {
    fn new(dir: &Path, hook: H) -> Arc<Hooked<H>> {
        Arc::new(Hooked {
            inner: LocalBackend::new(dir),
            hook,
        })
    }
}

impl<H: Hook> Backend for Hooked<H> {
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
        self.hook.before_write(kind)?;
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.hook.before_get(&self.inner, kind, name)?;
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.get_range(kind, name, offset, len)
    }
    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        self.inner.stat(kind, name)
    }
    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        let mut v = self.inner.list(kind)?;
        self.hook.listed(kind, &mut v);
        Ok(v)
    }
    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.hook.before_write(kind)?;
        self.inner.delete(kind, name)
    }
}

/// Fails the `fail_at`-th mutating call (put/delete) and every one after it, like a process
/// killed at that point.
#[derive(Debug)]
struct Failing {
    ops: AtomicUsize,
    fail_at: usize,
}

impl Failing {
    fn at(fail_at: usize) -> Failing {
        Failing {
            ops: AtomicUsize::new(0),
            fail_at,
        }
    }
}

impl Hook for Failing {
    fn before_write(&self, kind: FileKind) -> Result<()> {
        // Locks are not part of the data path; failing them would only stop prune at start.
        if kind != FileKind::Lock && self.ops.fetch_add(1, Ordering::SeqCst) >= self.fail_at {
            return Err(Error::Backend("injected failure".into()));
        }
        Ok(())
    }
}

const PW: &[u8] = b"test";

fn small_repo(dir: &Path) -> Repository {
    let opts = InitOptions {
        chunker: ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
            normalization: 1,
        },
        compression_level: 1,
        pack_size: 1 << 20,
        kdf: KdfParams::new(8 * 1024, 1, 1),
        page_rules: cairn_format::default_page_rules(),
        same_blobs_as: None,
        format_version: cairn_format::FORMAT_VERSION,
    };
    Repository::init(Arc::new(LocalBackend::new(dir)), PW, opts).unwrap()
}

fn reopen(dir: &Path) -> Repository {
    Repository::open(Arc::new(LocalBackend::new(dir)), PW).unwrap()
}

fn write_files(src: &Path, seed: u64, names: std::ops::Range<usize>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in names {
        let mut data = vec![0u8; rng.random_range(50_000..250_000)];
        rng.fill_bytes(&mut data);
        std::fs::write(src.join(format!("f{i:03}")), data).unwrap();
    }
}

fn snapshot_of(src: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn do_backup(repo: &Repository, src: &Path) -> cairn_format::Id {
    do_backup_locked(&repo.lock_shared(NO_WAIT).unwrap(), src)
}

fn do_backup_locked(lock: &SharedLock<'_>, src: &Path) -> cairn_format::Id {
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        stdin: None,
        staged: None,
        tags: vec![],
        host: Some("test".into()),
        time: None,
        parent: None,
        force: false,
        excludes: vec![],
        one_file_system: false,
    };
    backup(lock, opts, &Progress::default(), &|w| {
        panic!("unexpected warning {w}")
    })
    .unwrap()
    .id
}

fn restored(
    repo: &Repository,
    snap: &cairn_format::Id,
    src: &Path,
    into: &Path,
) -> BTreeMap<String, Vec<u8>> {
    let ix = repo.indexed().unwrap();
    let s: cairn_format::Snapshot = repo.load(FileKind::Snapshot, snap).unwrap();
    let sub = src.strip_prefix("/").unwrap();
    let opts = RestoreOptions {
        target: into.to_path_buf(),
        ..RestoreOptions::default()
    };
    let lock = repo.lock_shared(NO_WAIT).unwrap();
    let r = restore(&lock, &ix, &s.tree, sub, &opts, &Progress::default()).unwrap();
    assert!(r.failed.is_empty(), "restore failures: {:?}", r.failed);
    snapshot_of(into)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).unwrap();
        let dst = to.join(rel);
        if e.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else {
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(&e, &dst).unwrap();
        }
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            out.extend(walk(&e));
        }
    }
    out
}

/// A repository with three snapshots where the first two are forgotten, so prune has packs
/// to delete and packs to repack. Returns (repo dir, src dir, kept snapshot, its content).
struct Fixture {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    src: PathBuf,
    kept: cairn_format::Id,
    content: BTreeMap<String, Vec<u8>>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let repo = small_repo(&repo_dir);
    write_files(&src, 1, 0..40);
    let a = do_backup(&repo, &src);
    for i in (0..40).step_by(2) {
        std::fs::remove_file(src.join(format!("f{i:03}"))).unwrap();
    }
    write_files(&src, 2, 40..50);
    let b = do_backup(&repo, &src);
    for i in (1..20).step_by(2) {
        std::fs::remove_file(src.join(format!("f{i:03}"))).unwrap();
    }
    write_files(&src, 3, 50..55);
    let c = do_backup(&repo, &src);
    {
        let lock = repo.lock_exclusive(NO_WAIT).unwrap();
        lock.delete_snapshot(&a).unwrap();
        lock.delete_snapshot(&b).unwrap();
    }
    let content = snapshot_of(&src);
    Fixture {
        _tmp: tmp,
        repo: repo_dir,
        src,
        kept: c,
        content,
    }
}

fn assert_healthy(repo: &Repository, fx: &Fixture, restore_into: &Path) {
    let report = check(
        &repo.lock_shared(NO_WAIT).unwrap(),
        ReadData::All,
        &Progress::default(),
    )
    .unwrap();
    assert!(
        report.errors.is_empty(),
        "check errors: {:?}",
        report.errors
    );
    assert_eq!(restored(repo, &fx.kept, &fx.src, restore_into), fx.content);
}

#[test]
fn prune_killed_at_every_write_loses_nothing() {
    killed_at_every_write(false);
}

/// The two-phase path: another process holds a shared lock (a backup running beside the
/// prune), so prune condemns instead of deleting; killed at every write of that prune, then
/// of the prune that deletes once the other process is gone.
#[test]
fn condemning_prune_killed_at_every_write_loses_nothing() {
    killed_at_every_write(true);
}

fn killed_at_every_write(beside_a_backup: bool) {
    let fx = fixture();
    let opts = PruneOptions {
        max_unused: MaxUnused::Fraction(0.0),
        ..PruneOptions::default()
    };
    // A shared lock of "another process": a second handle of this process, taken before the
    // prune (its start time differs from the prune's own lock).
    let other = |dir: &Path| beside_a_backup.then(|| reopen(dir));

    // Count the writes of a complete prune on a copy.
    let probe = tempfile::tempdir().unwrap();
    copy_dir(&fx.repo, probe.path());
    let be = Hooked::new(probe.path(), Failing::at(usize::MAX));
    let repo = Repository::open(be.clone(), PW).unwrap();
    let holder = other(probe.path());
    let held = holder.as_ref().map(|r| r.lock_shared(NO_WAIT).unwrap());
    let report = prune(
        repo.lock_maintenance(NO_WAIT).unwrap().as_maintenance(),
        &opts,
        &Progress::default(),
    )
    .unwrap();
    if beside_a_backup {
        assert!(
            report.packs_deleted == 0 && report.packs_condemned > 0 && report.packs_repacked > 0,
            "beside a running backup prune condemns and repacks, deletes nothing: {report:?}"
        );
    } else {
        assert!(
            report.packs_deleted > 0 && report.packs_repacked > 0,
            "fixture must exercise delete and repack: {report:?}"
        );
    }
    drop(held);
    let total = be.hook.ops.load(Ordering::SeqCst);
    assert!(total >= 5, "expected several writes, got {total}");

    for fail_at in 0..total {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        copy_dir(&fx.repo, &dir);
        let be = Hooked::new(&dir, Failing::at(fail_at));
        let holder = other(&dir);
        let held = holder.as_ref().map(|r| r.lock_shared(NO_WAIT).unwrap());
        let repo = Repository::open(be, PW).unwrap();
        let err = repo
            .lock_maintenance(NO_WAIT)
            .and_then(|lock| prune(lock.as_maintenance(), &opts, &Progress::default()));
        assert!(
            err.is_err(),
            "prune with failure at write {fail_at} should fail"
        );
        // The failed run could not delete its lock either; a killed process's lock would be
        // stale (dead pid), this one belongs to the live test process: remove it by hand
        // (keeping the other process's lock, which is live).
        let keep: Vec<_> = match &held {
            Some(_) => reopen(&dir)
                .list_ids(FileKind::Lock)
                .unwrap()
                .into_iter()
                .filter(|id| {
                    reopen(&dir)
                        .load_lock(id)
                        .is_ok_and(|l| l.mode == cairn_format::LockMode::Shared)
                })
                .collect(),
            None => Vec::new(),
        };
        for l in std::fs::read_dir(dir.join("locks")).unwrap() {
            let l = l.unwrap();
            let name = l.file_name().to_string_lossy().into_owned();
            if !keep.iter().any(|id| id.to_hex() == name) {
                std::fs::remove_file(l.path()).unwrap();
            }
        }

        // Interrupted: every snapshot still restores exactly and check passes.
        let repo = reopen(&dir);
        assert_healthy(&repo, &fx, &tmp.path().join("r1"));
        // Re-running prune finishes the job: beside the other process, it condemns what is
        // left and deletes nothing; once it is gone, the next prune deletes.
        let again = prune(
            repo.lock_maintenance(NO_WAIT).unwrap().as_maintenance(),
            &opts,
            &Progress::default(),
        )
        .unwrap();
        assert!(!again.dry_run);
        if held.is_some() {
            assert_eq!(again.packs_deleted, 0, "{again:?}");
            assert_healthy(&repo, &fx, &tmp.path().join("r2"));
            drop(held);
            prune(
                repo.lock_maintenance(NO_WAIT).unwrap().as_maintenance(),
                &opts,
                &Progress::default(),
            )
            .unwrap();
        }
        let after = check(
            &repo.lock_shared(NO_WAIT).unwrap(),
            ReadData::All,
            &Progress::default(),
        )
        .unwrap();
        assert!(
            after.unreferenced_packs.is_empty() && after.condemned_packs == 0,
            "leftovers after the last prune at {fail_at}: {:?}, {} condemned",
            after.unreferenced_packs,
            after.condemned_packs
        );
        assert_healthy(&repo, &fx, &tmp.path().join("r3"));
    }
}

#[test]
fn prune_and_backups_racing_never_lose_referenced_data() {
    let fx = fixture();
    let dir = fx.repo.clone();
    let src = fx.src.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backups = {
        let (dir, src, stop) = (dir.clone(), src.clone(), stop.clone());
        std::thread::spawn(move || {
            let repo = reopen(&dir);
            let mut done = 0;
            let mut round = 100;
            while !stop.load(Ordering::Relaxed) || done < 3 {
                write_files(&src, round, round as usize..round as usize + 2);
                round += 1;
                match repo.lock_shared(NO_WAIT) {
                    Ok(g) => {
                        do_backup_locked(&g, &src);
                        drop(g);
                        done += 1;
                        // Give the pruner a window, as separate nightly jobs do.
                        std::thread::sleep(std::time::Duration::from_millis(15));
                    }
                    Err(Error::Locked(_)) => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            done
        })
    };
    let repo = reopen(&dir);
    let mut prunes = 0;
    let started = std::time::Instant::now();
    while prunes < 3 && started.elapsed() < std::time::Duration::from_secs(120) {
        match repo.lock_maintenance(NO_WAIT) {
            Ok(g) => {
                // Forget all but the newest snapshot, then prune.
                let snaps = repo.load_snapshots().unwrap();
                for (id, _) in snaps.iter().take(snaps.len().saturating_sub(1)) {
                    g.delete_snapshot(id).unwrap();
                }
                prune(
                    g.as_maintenance(),
                    &PruneOptions {
                        max_unused: MaxUnused::Fraction(0.0),
                        ..PruneOptions::default()
                    },
                    &Progress::default(),
                )
                .unwrap();
                prunes += 1;
            }
            Err(Error::Locked(_)) => std::thread::sleep(std::time::Duration::from_millis(3)),
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let backups_done = backups.join().unwrap();
    assert!(
        prunes > 0 && backups_done >= 3,
        "both sides must have run: {prunes} prunes, {backups_done} backups"
    );

    let repo = reopen(&dir);
    let report = check(
        &repo.lock_shared(NO_WAIT).unwrap(),
        ReadData::All,
        &Progress::default(),
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // Every remaining snapshot restores completely.
    let tmp = tempfile::tempdir().unwrap();
    for (i, (id, _)) in repo.load_snapshots().unwrap().iter().enumerate() {
        let files = restored(&repo, id, &src, &tmp.path().join(i.to_string()));
        assert!(!files.is_empty());
    }
    // The newest one equals the source as it is now.
    let (last, _) = repo.load_snapshots().unwrap().pop().unwrap();
    assert_eq!(
        restored(&repo, &last, &src, &tmp.path().join("last")),
        snapshot_of(&src)
    );
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

fn first_file(dir: &Path) -> PathBuf {
    walk(dir).into_iter().find(|p| p.is_file()).unwrap()
}

#[test]
fn check_names_each_corrupt_object() {
    let fx = fixture();
    let repo = reopen(&fx.repo);
    assert!(check(
        &repo.lock_shared(NO_WAIT).unwrap(),
        ReadData::All,
        &Progress::default()
    )
    .unwrap()
    .errors
    .is_empty());

    // A pack: only --read-data sees a flipped byte in a blob.
    let pack = walk(&fx.repo.join("data"))
        .into_iter()
        .find(|p| p.is_file())
        .unwrap();
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();
    flip_byte(&pack, 200);
    let r = check(
        &repo.lock_shared(NO_WAIT).unwrap(),
        ReadData::All,
        &Progress::default(),
    )
    .unwrap();
    assert!(
        r.errors.iter().any(|e| e.contains(&pack_name[..8])),
        "pack {pack_name} not named: {:?}",
        r.errors
    );

    // An index file.
    let index = first_file(&fx.repo.join("index"));
    let index_name = index.file_name().unwrap().to_string_lossy().into_owned();
    flip_byte(&index, 50);
    let r = check(
        &repo.lock_shared(NO_WAIT).unwrap(),
        ReadData::None,
        &Progress::default(),
    )
    .unwrap();
    assert!(
        r.errors.iter().any(|e| e.contains(&index_name[..8])),
        "index {index_name} not named: {:?}",
        r.errors
    );

    // A snapshot.
    let snap = first_file(&fx.repo.join("snapshots"));
    let snap_name = snap.file_name().unwrap().to_string_lossy().into_owned();
    flip_byte(&snap, 40);
    let r = check(
        &repo.lock_shared(NO_WAIT).unwrap(),
        ReadData::None,
        &Progress::default(),
    )
    .unwrap();
    assert!(
        r.errors.iter().any(|e| e.contains(&snap_name[..8])),
        "snapshot {snap_name} not named: {:?}",
        r.errors
    );
}

#[test]
fn repair_index_rebuilds_a_lost_index() {
    let fx = fixture();
    let repo = reopen(&fx.repo);
    let be = LocalBackend::new(&fx.repo);
    for id in repo.list_ids(FileKind::Index).unwrap() {
        be.delete(FileKind::Index, &id.to_hex()).unwrap();
    }
    let broken = check(
        &repo.lock_shared(NO_WAIT).unwrap(),
        ReadData::None,
        &Progress::default(),
    )
    .unwrap();
    assert!(
        !broken.errors.is_empty(),
        "check must notice the missing index"
    );
    let r = cairn_engine::ops::repair::repair_index(
        &repo.lock_exclusive(NO_WAIT).unwrap(),
        &Progress::default(),
    )
    .unwrap();
    assert!(r.packs > 0 && r.unreadable_packs.is_empty());
    let tmp = tempfile::tempdir().unwrap();
    assert_healthy(&repo, &fx, tmp.path());
}

/// Replaces the one listed lock by another when it is first read: a holder's refresh between
/// a reader's listing and its read.
#[derive(Debug)]
struct Refreshing(std::sync::Mutex<Option<(String, String, Vec<u8>)>>);

impl Hook for Refreshing {
    fn before_get(&self, inner: &LocalBackend, kind: FileKind, name: &str) -> Result<()> {
        let mut r = self.0.lock().unwrap();
        if kind == FileKind::Lock && r.as_ref().is_some_and(|(old, _, _)| old == name) {
            let (old, new, bytes) = r.take().unwrap();
            inner.put(FileKind::Lock, &new, &bytes)?;
            inner.delete(FileKind::Lock, &old)?;
        }
        Ok(())
    }
}

#[test]
fn a_lock_refreshed_while_prune_reads_the_locks_still_holds_deletions_back() {
    let fx = fixture();
    // Two lock objects of "another process": the listed one, and its refresh.
    let holder = reopen(&fx.repo);
    let first = holder.lock_shared(NO_WAIT).unwrap();
    let locks = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("locks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let [a] = locks(&fx.repo).try_into().unwrap();
    let a_bytes = std::fs::read(&a).unwrap();
    std::fs::remove_file(&a).unwrap();
    let second = holder.lock_shared(NO_WAIT).unwrap();
    let [b] = locks(&fx.repo).try_into().unwrap();
    let b_bytes = std::fs::read(&b).unwrap();
    std::fs::remove_file(&b).unwrap();
    std::mem::forget(first);
    std::mem::forget(second);
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(&a, &a_bytes).unwrap();
    let be = Hooked::new(
        &fx.repo,
        Refreshing(std::sync::Mutex::new(Some((name(&a), name(&b), b_bytes)))),
    );
    let repo = Repository::open(be, PW).unwrap();
    let report = prune(
        repo.lock_maintenance(NO_WAIT).unwrap().as_maintenance(),
        &PruneOptions {
            max_unused: MaxUnused::Fraction(0.0),
            ..PruneOptions::default()
        },
        &Progress::default(),
    )
    .unwrap();
    assert!(
        report.packs_deleted == 0 && report.packs_condemned > 0,
        "the refreshed lock must hold deletions back: {report:?}"
    );
    assert!(
        report.held_back_by.is_some(),
        "the refreshed lock must be seen: {report:?}"
    );
}

/// Lists a lock, an index file and a snapshot that are gone (a Garage node that rejoined
/// keeps naming objects deleted while it was away): readers skip them instead of listing
/// again for ever.
#[derive(Debug)]
struct Ghosts;

const GHOST: &str = "00000000000000000000000000000000000000000000000000000000000000ab";

impl Hook for Ghosts {
    fn listed(&self, kind: FileKind, objects: &mut Vec<ObjectInfo>) {
        if matches!(kind, FileKind::Lock | FileKind::Index | FileKind::Snapshot) {
            objects.push(ObjectInfo {
                name: GHOST.into(),
                size: 100,
            });
        }
    }
}

#[test]
fn objects_a_listing_keeps_naming_after_their_deletion_are_skipped() {
    let fx = fixture();
    let repo = Repository::open(Hooked::new(&fx.repo, Ghosts), PW).unwrap();
    let lock = repo.lock_shared(NO_WAIT).unwrap();
    drop(lock);
    let report = prune(
        repo.lock_maintenance(NO_WAIT).unwrap().as_maintenance(),
        &PruneOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert!(report.quiet, "{report:?}");
    assert_healthy(&repo, &fx, &tempfile::tempdir().unwrap().path().join("r"));
}

/// What a node with the password but an append-only credential can still write: an index
/// file that supersedes the real ones and places blobs of one pack in a pack of garbage. A
/// prune that took the index's word would delete the only real copy; prune reads the headers
/// of the packs it is about to delete and keeps that one.
///
/// `split`: only half of the victim's data blobs move, and the victim gets a bogus unused
/// entry, so that prune would repack it (copying only the blobs still placed in it) and then
/// delete it. Otherwise all of its blobs move: the victim is a pack no index names.
fn forged_index_case(split: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    std::fs::create_dir_all(&src).unwrap();
    let repo = small_repo(&dir);
    let be = LocalBackend::new(&dir);
    write_files(&src, 42, 0..12);
    let snap = do_backup(&repo, &src);
    let expected = snapshot_of(&src);

    let files = repo.load_index_files().unwrap();
    let mut packs: Vec<cairn_format::IndexPack> =
        files.iter().flat_map(|(_, f)| f.packs.clone()).collect();
    let victim = packs
        .iter()
        .position(|p| {
            p.blobs
                .iter()
                .filter(|b| b.blob_type == cairn_format::BlobType::Data)
                .map(|b| b.offset)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= 2
        })
        .unwrap();
    let victim_id = packs[victim].id;
    let victim_size = std::fs::metadata(
        dir.join("data")
            .join(&victim_id.to_hex()[..2])
            .join(victim_id.to_hex()),
    )
    .unwrap()
    .len();
    // A pack of garbage (right preamble, right name: the server stores it).
    let mut garbage = b"cairnP\x03\x00".to_vec();
    garbage.resize(victim_size as usize, 0x5a);
    let forged_pack = cairn_format::Id::of_object(&garbage);
    be.put(FileKind::Pack, &forged_pack.to_hex(), &garbage)
        .unwrap();
    let blobs = packs[victim].blobs.clone();
    if split {
        // Whole boxes move (a group's blobs stay together and in order): the second half
        // of the pack's boxes, by offset.
        let boxes: Vec<u32> = blobs
            .iter()
            .map(|b| b.offset)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let moved_boxes: std::collections::HashSet<u32> =
            boxes[boxes.len() / 2..].iter().copied().collect();
        let (moved, kept): (Vec<_>, Vec<_>) = blobs
            .into_iter()
            .partition(|b| moved_boxes.contains(&b.offset));
        assert!(!moved.is_empty() && !kept.is_empty());
        let mut blobs = kept;
        blobs.push(cairn_format::PackEntry {
            blob_type: cairn_format::BlobType::Data,
            id: cairn_format::Id::of_object(b"nobody uses this"),
            offset: 8,
            length: 64,
            raw_length: 32,
            group_offset: None,
        });
        packs[victim] = cairn_format::IndexPack::new(victim_id, blobs);
        packs.push(cairn_format::IndexPack::new(forged_pack, moved));
    } else {
        packs[victim] = cairn_format::IndexPack::new(forged_pack, blobs);
    }
    let forged = cairn_format::IndexFile {
        supersedes: files.iter().map(|(id, _)| *id).collect(),
        packs,
    };
    let version = cairn_format::object_version(FileKind::Index, repo.config().version);
    let bytes = forged.encode_sealed(repo.key(), version, 1).unwrap();
    be.put(
        FileKind::Index,
        &cairn_format::Id::of_object(&bytes).to_hex(),
        &bytes,
    )
    .unwrap();

    let repo = reopen(&dir);
    let run = |trust_index: bool, dry_run: bool| {
        let opts = PruneOptions {
            max_unused: MaxUnused::Fraction(0.0),
            dry_run,
            trust_index,
            ..PruneOptions::default()
        };
        let lock = repo.lock_maintenance(NO_WAIT).unwrap();
        prune(lock.as_maintenance(), &opts, &Progress::default()).unwrap()
    };
    // Taking the index's word, the victim goes: unreferenced, or repacked without the
    // blobs placed elsewhere.
    let trusting = run(true, true);
    if split {
        assert!(trusting.packs_repacked >= 1, "{trusting:?}");
    } else {
        assert_eq!(trusting.packs_unreferenced, 1, "{trusting:?}");
    }
    assert_eq!(trusting.packs_spared, 0);
    // Reading its header first, it stays.
    let r = run(false, false);
    assert_eq!(r.packs_spared, 1, "{r:?}");
    assert_eq!(r.packs_unreferenced, 0, "{r:?}");
    assert!(be
        .stat(FileKind::Pack, &victim_id.to_hex())
        .unwrap()
        .is_some());
    // The damage is visible to check, and `repair index` (which reads pack headers) puts
    // the real pack back; then everything restores.
    let broken = check(
        &repo.lock_shared(NO_WAIT).unwrap(),
        ReadData::All,
        &Progress::default(),
    )
    .unwrap();
    assert!(!broken.errors.is_empty());
    be.delete(FileKind::Pack, &forged_pack.to_hex()).unwrap();
    cairn_engine::ops::repair::repair_index(
        &repo.lock_exclusive(NO_WAIT).unwrap(),
        &Progress::default(),
    )
    .unwrap();
    let repo = reopen(&dir);
    let out = tmp.path().join("out");
    assert_eq!(restored(&repo, &snap, &src, &out), expected);
}

#[test]
fn a_forged_index_does_not_make_prune_delete_real_data() {
    forged_index_case(false);
}

#[test]
fn a_forged_index_does_not_make_prune_repack_away_real_data() {
    forged_index_case(true);
}
